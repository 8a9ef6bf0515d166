"""Size limits of a model, checked before anything is allocated for it.

A crafted file can declare sizes far beyond what it holds (a 4 MB ``.npz`` whose array header says
4 GiB, an ONNX ``ConstantOfShape`` of [100000, 100000], a Conv with ``pads=1e9``, a one-line
``.spir`` population of 2e7 neurons): every reader checks the declared size against these limits
before numpy allocates, and refuses with one line naming the tensor or node.

The defaults are generous for real models (the SPIDE authors' largest, the CIFAR CifarNet-F, has
about 230 thousand neurons and 15 million parameters). Raise them for a bigger model with the
environment variables ``SPIDEC_MAX_NEURONS`` / ``SPIDEC_MAX_PARAMETERS`` or from Python::

    with spidec.limits.override(neurons=10**8):
        g = spidec.load("huge.onnx")
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from .errors import SpidecError

MAX_NEURONS = 1 << 24  # 16,777,216 values per sample in the whole model (inputs, populations, readouts)
MAX_PARAMETERS = 1 << 28  # 268,435,456 tensor elements in the whole model (1 GiB of float32)
ENV = {"neurons": "SPIDEC_MAX_NEURONS", "parameters": "SPIDEC_MAX_PARAMETERS"}
_DEFAULTS = {"neurons": MAX_NEURONS, "parameters": MAX_PARAMETERS}
_override: dict[str, int] = {}


def _limit(kind: str) -> int:
    if kind in _override:
        return _override[kind]
    raw = os.environ.get(ENV[kind])
    if raw is None or not raw.strip():
        return _DEFAULTS[kind]
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise SpidecError(f"{ENV[kind]}={raw[:40]!r} is not a positive integer")
    return value


def max_neurons() -> int:
    """Values per sample a model may have (all its nodes together)."""
    return _limit("neurons")


def max_parameters() -> int:
    """Tensor elements a model may hold (all its tensors together; also any one constant)."""
    return _limit("parameters")


@contextmanager
def override(*, neurons: int | None = None, parameters: int | None = None) -> Iterator[None]:
    """Use other limits inside the ``with`` block (this process, every thread)."""
    new = {k: int(v) for k, v in (("neurons", neurons), ("parameters", parameters)) if v is not None}
    for k, v in new.items():
        if v < 1:
            raise SpidecError(f"the {k} limit must be a positive integer, got {v}")
    old = dict(_override)
    _override.update(new)
    try:
        yield
    finally:
        _override.clear()
        _override.update(old)


def size_of(shape: Iterable[int]) -> int:
    """Elements of ``shape`` (exact: Python integers do not overflow)."""
    return math.prod(int(s) for s in shape)


def _refuse(kind: str, what: str, count: int, limit: int, file: str | None, node: str | None) -> SpidecError:
    unit = "neurons" if kind == "neurons" else "elements"
    return SpidecError(f"{what} has {count:,} {unit}, more than the limit of {limit:,} per model", file=file,
                       node=node, hint=f"if the model is meant to be this big, set {ENV[kind]} (or use "
                       f"spidec.limits.override({kind}=N))")


def check_neurons(count: int, what: str, *, file: str | None = None, node: str | None = None) -> None:
    """Refuse ``count`` neurons (values per sample) of ``what`` beyond :func:`max_neurons`."""
    limit = max_neurons()
    if count > limit:
        raise _refuse("neurons", what, count, limit, file, node)


def check_elements(count: int, what: str, *, file: str | None = None, node: str | None = None) -> None:
    """Refuse a tensor (or the model's tensors together) of ``count`` elements beyond :func:`max_parameters`."""
    limit = max_parameters()
    if count > limit:
        raise _refuse("parameters", what, count, limit, file, node)


__all__ = ["ENV", "MAX_NEURONS", "MAX_PARAMETERS", "check_elements", "check_neurons", "max_neurons",
           "max_parameters", "override", "size_of"]
