"""The ``schedule`` pass: the order of each stage's step and its delays."""

from __future__ import annotations

from ..errors import SpidecError
from ..ir import Graph, Input, Population
from ..training import Schedule


def schedule(g: Graph) -> Graph:
    """Fix the step order (forward: topological over undelayed synapses; backward: its reverse) and
    which populations/couples must keep last step's spikes for delayed synapses. (The state each
    stage keeps is the step program's buffer plan: the ``lower`` pass.)"""
    if g.training is None:
        raise SpidecError("the schedule pass needs the spide pass first")
    t = g.training
    forward = tuple(n for n in g.step_order() if isinstance(g.node(n), Population))
    couple = {c.of: c.name for c in t.couples}
    backward = tuple(couple[p] for p in reversed(forward))
    sends_delayed = {e.src for e in g.synapses() if e.synapse.delay}
    delayed = tuple(p for p in forward if p in sends_delayed)
    sends_delayed_back = {b.src for b in t.backward if b.delay}
    delayed_back = tuple(c for c in backward if c in sends_delayed_back)
    out = g.copy()
    out.schedule = Schedule(forward, backward, delayed, delayed_back)
    out.program = None
    assert all(not isinstance(g.node(n), Input) for n in forward)
    return out.validate()
