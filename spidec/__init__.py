"""spidec: compile feedback spiking neural networks into programs that train themselves with spikes.

The method is SPIDE (spike-based implicit differentiation on the equilibrium state, Xiao et al.,
Neural Networks 2023). This package holds the core: the IR (:mod:`spidec.ir`, ops in
:mod:`spidec.ops`), its text form (:mod:`spidec.text`), the exact rate-space reference
(:mod:`spidec.reference`) and the CLI; frontends and backends live in ``spidec.frontends`` and
``spidec.backends``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from . import ops, passes, reference
from .compile import compile
from .errors import SpidecError, SpidecWarning
from .ir import Graph, Input, Neuron, Population, Readout, Synapse
from .ops import AvgPool2d, Conv2d, ConvTranspose2d, Dense, Flatten, LinearOp, Pad, Reshape, Scale, Zero
from .text import dumps, loads, save

try:
    __version__ = _version("spidec")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"


def parse(text: str, tensors: dict | None = None, **kwargs) -> Graph:
    """Parse the IR text form (see :func:`spidec.text.loads`)."""
    return loads(text, tensors, **kwargs)


def from_torch(module, inputs=None, state=None, outputs=None, **kwargs) -> Graph:
    """Lower a PyTorch module (one step of the feedback network) into the IR
    (see :func:`spidec.frontends.torch.from_torch`)."""
    from .frontends.torch import from_torch as _from_torch

    return _from_torch(module, inputs, state, outputs, **kwargs)


def from_nir(source, *, dt=None, name=None) -> Graph:
    """Read a NIR graph (a ``.nir`` file or a ``nir.NIRGraph``) into the IR; ``dt`` is the time step in
    seconds its time constants refer to (see :func:`spidec.frontends.nir.from_nir`)."""
    from .frontends.nir import from_nir as _from_nir

    return _from_nir(source, dt=dt, name=name)


def to_nir(g: Graph, path, *, dt: float = 1e-4, delays: str = "explicit"):
    """Write ``g`` (a model with its trained weights) as a NIR file for time step ``dt``; ``delays``:
    ``explicit`` (a Delay node of one step on each delayed synapse) or ``implicit`` (the plain cycle).
    See :mod:`spidec.export` for the units."""
    from .export import to_nir as _to_nir

    return _to_nir(g, path, dt=dt, delays=delays)


def load(path, **kwargs) -> Graph:
    """Load a model file into the IR; the frontend is chosen by the file's extension."""
    from .frontends import load as _load

    return _load(path, **kwargs)


__all__ = [
    "AvgPool2d",
    "Conv2d",
    "ConvTranspose2d",
    "Dense",
    "Flatten",
    "Graph",
    "Input",
    "LinearOp",
    "Neuron",
    "Pad",
    "Population",
    "Readout",
    "Reshape",
    "Scale",
    "SpidecError",
    "SpidecWarning",
    "Synapse",
    "Zero",
    "__version__",
    "compile",
    "dumps",
    "from_nir",
    "from_torch",
    "load",
    "loads",
    "ops",
    "parse",
    "passes",
    "reference",
    "save",
    "to_nir",
]
