"""What the passes add to a forward graph: the spiking simulation, the SPIDE training structure and
the step schedule. Each is a frozen value attached to the :class:`~spidec.ir.Graph`
(``g.simulation``, ``g.training``, ``g.schedule``), printed and parsed by the text form.

The training structure is explicit, so a backend only reads it and a user can see (and edit) it:

* a ternary neuron **couple** per population (threshold ``vth``, reset ``u_rest = -vth``);
* a **backward synapse** per forward synapse between populations: the transposed chain of that
  synapse, from the post population's couple to the pre population's couple, gated by the post
  population's mask ``m = 1[0 < a < 1]``, with the forward synapse's delay;
* an **injection** per synapse into a readout: the readout's scaled loss gradient carried back by
  the transposed synapse into the couple of the population it reads, every backward step;
* an **update** rule per learnable tensor: ``local`` (post couple's rate times mask, outer product
  with the pre node's forward rate, through the synapse's weight gradient), ``bias`` (the post
  couple's rate times mask), ``delta`` and ``delta_bias`` (a readout's loss gradient);
* the **optimiser**: SGD with momentum and weight decay on the ``sf``-scaled loss with ``lr/sf``,
  a step learning-rate schedule and the norm restriction of feedback weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import SpidecError

ENCODINGS = ("constant", "temporal")
UPDATE_KINDS = ("local", "bias", "delta", "delta_bias")


@dataclass(frozen=True)
class Simulation:
    """Forward stage: ``T`` steps; inputs as a constant current, or ``temporal`` (``[B, T, ...]``)."""

    T: int = 30
    encoding: str = "constant"

    def __post_init__(self) -> None:
        if not isinstance(self.T, int) or isinstance(self.T, bool) or self.T < 1:
            raise SpidecError(f"T (forward time steps) must be a positive integer, got {self.T!r}")
        if self.encoding not in ENCODINGS:
            raise SpidecError(f"encoding must be one of {', '.join(ENCODINGS)}, got {self.encoding!r}")


@dataclass(frozen=True)
class Couple:
    """The ternary neuron couple of population ``of``: one signed neuron firing -1/0/+1 (times
    ``S = vth - u_rest``), threshold ``vth``, reset by subtraction; ``leak < 1`` for LIF."""

    name: str
    of: str
    vth: float = 0.5
    u_rest: float | None = None
    leak: float = 1.0

    def __post_init__(self) -> None:
        vth = float(self.vth)
        u_rest = -vth if self.u_rest is None else float(self.u_rest)
        object.__setattr__(self, "vth", vth)
        object.__setattr__(self, "u_rest", u_rest)
        object.__setattr__(self, "leak", float(self.leak))
        if not vth > 0:
            raise SpidecError(f"couple '{self.name}': vth must be positive, got {vth}")
        if u_rest != -vth:
            raise SpidecError(f"couple '{self.name}': a ternary couple is symmetric, u_rest must be -vth = {-vth}")
        if not 0 < self.leak <= 1:
            raise SpidecError(f"couple '{self.name}': leak must lie in (0, 1], got {self.leak}")

    @property
    def S(self) -> float:
        return self.vth - float(self.u_rest)  # type: ignore[arg-type]


@dataclass(frozen=True)
class BackwardSynapse:
    """``src`` couple -> ``dst`` couple through the transpose of forward synapse ``forward``,
    gated by population ``gate``'s mask, reading ``src``'s spikes ``delay`` steps back."""

    name: str
    src: str
    dst: str
    forward: str
    gate: str
    delay: int = 0


@dataclass(frozen=True)
class Injection:
    """Readout ``readout``'s scaled loss gradient through the transpose of ``forward`` into ``couple``."""

    readout: str
    couple: str
    forward: str


@dataclass(frozen=True)
class Update:
    """How tensor ``tensor`` learns (see the module docstring for the kinds)."""

    tensor: str
    kind: str
    synapse: str | None = None  # local, delta: the synapse holding the tensor
    post: str | None = None  # local, bias: the couple whose rate drives it; delta*: the readout
    gate: str | None = None  # local, bias: the population whose mask gates it

    def __post_init__(self) -> None:
        if self.kind not in UPDATE_KINDS:
            raise SpidecError(f"update of {self.tensor}: unknown rule '{self.kind}' (one of {', '.join(UPDATE_KINDS)})")


FEEDBACK_NORM_MODES = ("reparam", "project")


@dataclass(frozen=True)
class Optimizer:
    """SGD on the ``sf``-scaled loss with ``lr/sf``, exactly the SPIDE authors' step in their units
    (weights acting on spikes): ``d = grad + wd W; buf = momentum buf + d; W -= lr/sf * buf``,
    the learning rate multiplied by ``gamma`` at each epoch of ``milestones``.

    spidec keeps population tensors in rate units (``W_r = W / V``), so the lowering scales their
    local gradient by ``1 / V**2`` (the rule's ``scale``); the step above, taken on ``W_r``, then
    moves ``V W_r`` exactly as the authors' step moves ``W``.

    ``feedback_norm`` (``r``, in the authors' units: 2 in their MNIST/CIFAR models, 10 for DVS, 0:
    off) bounds the Frobenius norm of every feedback (delayed) weight:

    * ``reparam`` (the authors' ``weight_frob_norm_restriction``): the stored weight is a raw
      parameter; each forward stage uses ``W_raw * min(1, r / ||V W_raw||)`` in both stages, and
      the raw weight's gradient is that factor times the effective weight's (decay and momentum act
      on the raw weight). spidec computes the exact norm where the authors estimate it from 64
      random projections.
    * ``project``: after every step the stored weight itself is scaled down to norm ``r`` (the
      integer-friendly variant the fixed-point runtime uses: no second copy of the weight)."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    feedback_norm: float = 2.0
    feedback_norm_mode: str = "reparam"

    def __post_init__(self) -> None:
        for name in ("lr", "momentum", "weight_decay", "gamma", "feedback_norm"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or abs(value) > 3.0e38:  # (the programs hold them as float32)
                raise SpidecError(f"optimiser setting {name} must be a finite float32 number, got {value}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        if self.lr <= 0 or not 0 <= self.momentum < 1 or self.weight_decay < 0 or self.feedback_norm < 0 \
                or self.gamma <= 0 or any(m < 0 for m in self.milestones):
            raise SpidecError(f"optimiser settings out of range (lr > 0, 0 <= momentum < 1, weight_decay >= 0, "
                              f"gamma > 0, feedback_norm >= 0, milestones >= 0): {self}")
        if self.feedback_norm_mode not in FEEDBACK_NORM_MODES:
            raise SpidecError(f"feedback_norm_mode must be one of {', '.join(FEEDBACK_NORM_MODES)}, "
                              f"got {self.feedback_norm_mode!r}")

    def lr_at(self, epoch: int) -> float:
        return self.lr * self.gamma ** sum(1 for m in self.milestones if epoch >= m)


@dataclass(frozen=True)
class Training:
    T_back: int = 100
    sf: float = 100.0
    couples: tuple[Couple, ...] = ()
    backward: tuple[BackwardSynapse, ...] = ()
    injections: tuple[Injection, ...] = ()
    updates: tuple[Update, ...] = ()
    optimizer: Optimizer = field(default_factory=Optimizer)

    def __post_init__(self) -> None:
        if not isinstance(self.T_back, int) or self.T_back < 1:
            raise SpidecError(f"T_back (backward time steps) must be a positive integer, got {self.T_back!r}")
        object.__setattr__(self, "sf", float(self.sf))
        if not (math.isfinite(self.sf) and 0 < self.sf <= 3.0e38):
            raise SpidecError(f"the scale factor sf must be a positive finite number, got {self.sf}")

    def couple_of(self, population: str) -> Couple:
        for c in self.couples:
            if c.of == population:
                return c
        raise SpidecError(f"population '{population}' has no couple")


@dataclass(frozen=True)
class Schedule:
    forward: tuple[str, ...]  # populations, in the order a forward step updates them
    backward: tuple[str, ...]  # couples, in the order a backward step updates them
    delayed: tuple[str, ...]  # populations whose previous-step spikes a delayed synapse reads
    delayed_back: tuple[str, ...]  # couples likewise in the backward stage


__all__ = [
    "BackwardSynapse",
    "Couple",
    "Injection",
    "Optimizer",
    "Schedule",
    "Simulation",
    "Training",
    "Update",
]
