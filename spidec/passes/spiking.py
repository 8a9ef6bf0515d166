"""The ``spiking`` pass: how the forward stage spikes."""

from __future__ import annotations

from typing import Annotated

from ..errors import SpidecError
from ..ir import Graph, Neuron, Population
from ..options import Opt
from ..training import ENCODINGS, Simulation


def spiking(g: Graph,
            T: Annotated[int, Opt("forward time steps")] = 30,
            neuron: Annotated[str | None, Opt("neuron model of every population", choices=("IF", "LIF"))] = None,
            vth: Annotated[float | None, Opt("forward threshold", default_text="kept, 1.0")] = None,
            leak: Annotated[float | None, Opt("LIF leak in (0, 1)")] = None,
            encoding: Annotated[str, Opt("input encoding", choices=ENCODINGS)] = "constant") -> Graph:
    """Simulate the forward stage for ``T`` steps with IF/LIF neurons and the SPIDE reset.

    Each population keeps its neuron unless ``neuron`` (``IF``/``LIF``), ``vth`` or ``leak`` is
    given; ``u_rest`` is ``-vth`` (reset by subtraction of ``V = 2 vth``: rounding the rate). The
    backends scale every input current by ``V``, so that spike rates approximate the IR's
    rate-space equilibrium ``clamp(W a + F x + b, 0, 1)`` for any ``vth``. ``encoding``:
    ``constant`` (the input is a constant current every step) or ``temporal`` (inputs of shape
    ``[B, T, ...]``, e.g. event data; the local updates use the time-averaged input).
    """
    g.validate()
    out = g.copy()
    for node in g.populations:
        n = node.neuron
        model = neuron or n.model
        new_leak = leak if leak is not None else (n.leak if model == "LIF" else 1.0)
        if model == "LIF" and new_leak == 1.0 and leak is None and n.model != "LIF":
            raise SpidecError("neuron=LIF needs a leak < 1 (e.g. leak=0.9)")
        new_vth = vth if vth is not None else n.vth
        new = Neuron(model, new_vth, -new_vth, new_leak)
        out.replace_node(Population(node.name, node.shape, new, node.bias))
    out.simulation = Simulation(T, encoding)  # (it checks T: an integer in range)
    out.training = None  # the training structure depends on the neurons: the spide pass rebuilds it
    out.schedule = None
    out.program = None
    return out.validate()
