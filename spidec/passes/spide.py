"""The ``spide`` pass: ternary neuron couples, backward synapses, loss injection, local updates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from ..errors import SpidecError
from ..ir import Graph, Population, Readout, fresh_name
from ..options import Opt
from ..training import FEEDBACK_NORM_MODES, BackwardSynapse, Couple, Injection, Optimizer, Training, Update


def spide(g: Graph,
          T_back: Annotated[int, Opt("backward time steps")] = 100,
          vth_back: Annotated[float, Opt("couple threshold")] = 0.5,
          sf: Annotated[float, Opt("loss scale factor")] = 100.0,
          lr: Annotated[float, Opt("learning rate")] = 0.1,
          momentum: Annotated[float, Opt("SGD momentum")] = 0.9,
          weight_decay: Annotated[float, Opt("weight decay")] = 5e-4,
          milestones: Annotated[Sequence[int], Opt("epochs where the learning rate is multiplied by --gamma, "
                                                   "e.g. 20,40")] = (),
          gamma: Annotated[float, Opt("learning-rate decay at each milestone")] = 0.1,
          feedback_norm: Annotated[float, Opt("Frobenius-norm bound r of feedback weights in the authors' units "
                                              "(weights acting on spikes: 2 in SPIDE's MNIST/CIFAR models, 10 for "
                                              "DVS), 0 for none")] = 2.0,
          feedback_norm_mode: Annotated[str, Opt("how the bound acts: reparam (the authors' reparametrisation: a raw "
                                                 "weight, scaled to norm <= r at each forward stage) or project (the "
                                                 "stored weight is scaled down after each step; what fixed point "
                                                 "runs)", choices=FEEDBACK_NORM_MODES)] = "reparam") -> Graph:
    """Add the SPIDE training structure (see :mod:`spidec.training`): per population a ternary
    couple (threshold ``vth_back``, ``T_back`` steps, the population's leak), the transposed
    synapses between couples gated by the post population's mask, the readouts' scaled loss
    gradient (``sf``) injected through the transposed readout synapses, an update rule for every
    learnable tensor, and the optimiser (reference settings of SPIDE: SGD lr 0.1, momentum 0.9,
    weight decay 5e-4, sf 100)."""
    if g.simulation is None:
        raise SpidecError("the spide pass needs the spiking pass first (it fixes the neurons and T)")
    if not g.readouts:
        raise SpidecError("the graph has no readout: there is no loss to train on",
                          hint="return logits from the model (a linear map of population rates)")
    out = g.copy()
    taken = {n.name for n in g.nodes} | {e.name for e in g.synapses()}

    def fresh(base: str) -> str:
        return fresh_name(base, taken, sep="")

    couples = {p.name: Couple(fresh(f"{p.name}_couple"), p.name, vth_back, -vth_back, p.neuron.leak)
               for p in g.populations}
    backward, injections = [], []
    for e in g.synapses():
        src, dst = g.node(e.src), g.node(e.dst)
        if isinstance(src, Population) and isinstance(dst, Population):
            backward.append(BackwardSynapse(fresh(f"{e.name}_T"), couples[e.dst].name, couples[e.src].name, e.name,
                                            e.dst, e.synapse.delay))
        elif isinstance(src, Population) and isinstance(dst, Readout):
            injections.append(Injection(e.dst, couples[e.src].name, e.name))
    updates = []
    for tname, slot in g.tensor_slots().items():
        if not slot.learnable:
            continue
        if slot.op is None:  # a bias
            node = g.node(slot.owner)
            if isinstance(node, Population):
                updates.append(Update(tname, "bias", post=couples[node.name].name, gate=node.name))
            else:
                updates.append(Update(tname, "delta_bias", post=node.name))
            continue
        e = g.synapse(slot.owner)
        if isinstance(g.node(e.dst), Population):
            updates.append(Update(tname, "local", synapse=e.name, post=couples[e.dst].name, gate=e.dst))
        else:
            updates.append(Update(tname, "delta", synapse=e.name, post=e.dst))
    out.training = Training(T_back, sf, tuple(couples.values()), tuple(backward), tuple(injections),
                            tuple(updates), Optimizer(lr, momentum, weight_decay, milestones, gamma,
                                                      feedback_norm, feedback_norm_mode))
    out.schedule = None
    out.program = None
    return out.validate()
