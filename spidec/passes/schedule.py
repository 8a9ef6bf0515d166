"""The ``schedule`` pass: the order of each stage's step, its delays and its buffers."""

from __future__ import annotations

from ..errors import SpidecError
from ..ir import Graph, Input, Population
from ..training import Buffer, Schedule


def schedule(g: Graph) -> Graph:
    """Fix the step order (forward: topological over undelayed synapses; backward: its reverse),
    which populations/couples must keep last step's spikes for delayed synapses, and the buffers."""
    if g.training is None:
        raise SpidecError("the schedule pass needs the spide pass first")
    t = g.training
    forward = tuple(n for n in g.step_order() if isinstance(g.node(n), Population))
    couple = {c.of: c.name for c in t.couples}
    backward = tuple(couple[p] for p in reversed(forward))
    delayed = tuple(p for p in forward if any(e.synapse.delay and e.src == p for e in g.synapses()))
    delayed_back = tuple(c for c in backward if any(b.delay and b.src == c for b in t.backward))
    buffers: list[Buffer] = []
    for i in g.inputs:
        if any(e.src == i.name for e in g.synapses()):
            buffers.append(Buffer(f"{i.name}_rate", "forward", i.shape, "time-averaged input (pre rate of updates)"))
    for p in forward:
        shape = g.node(p).shape
        buffers += [Buffer(f"{p}_u", "forward", shape, "membrane potential"),
                    Buffer(f"{p}_count", "forward", shape, "spike count (rate = count / T)")]
        if p in delayed:
            buffers.append(Buffer(f"{p}_prev", "forward", shape, "last step's spikes (delayed synapses)"))
    for c in backward:
        shape = g.node(next(x.of for x in t.couples if x.name == c)).shape
        buffers += [Buffer(f"{c}_u", "backward", shape, "couple potential"),
                    Buffer(f"{c}_sum", "backward", shape, "ternary spike sum (beta = sum / T_back)")]
        if c in delayed_back:
            buffers.append(Buffer(f"{c}_prev", "backward", shape, "last step's ternary spikes"))
    for tname in g.parameters():
        buffers.append(Buffer(f"{tname.replace('.', '_')}_momentum", "update", g.tensor(tname).shape, "SGD momentum"))
    out = g.copy()
    out.schedule = Schedule(forward, backward, delayed, delayed_back, tuple(buffers))
    assert all(not isinstance(g.node(n), Input) for n in forward)
    return out.validate()
