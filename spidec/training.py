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

What a user may edit are the settings (couple thresholds and leaks, ``T``, ``T_back``, ``sf``, the
optimiser: finite float32 numbers, at most ``MAX_STEPS`` steps) and the order of the statements;
``Graph.validate`` refuses a structure or schedule that is not the one its graph dictates.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import SpidecError

ENCODINGS = ("constant", "temporal")
UPDATE_KINDS = ("local", "bias", "delta", "delta_bias")
# The most time steps a stage may take: the float programs count spikes in float32 (exact up to
# 2**24), every runtime loops over steps with an int and multiplies counts of T steps into int64
# work counters; 10**6 steps keep all of that exact with room to spare (SPIDE uses 30 and 100-250).
MAX_STEPS = 1_000_000
MAX_EPOCH = 2**31 - 1  # learning-rate milestones are C ints
F32_MAX = 3.4028234663852886e38


def finite_f32(value: object, what: str) -> float:
    """``value`` as a float, or a SpidecError unless it is a finite number within float32 range
    (the programs hold every setting as float32: an overflow would print as ``inf``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, numbers.Real)):
        raise SpidecError(f"{what} must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        raise SpidecError(f"{what} must be a number, got {value!r}") from None
    if not (math.isfinite(out) and abs(out) <= F32_MAX):
        raise SpidecError(f"{what} must be a finite float32 number, got {out}")
    return out


def count(value: object, what: str, low: int = 1, high: int = MAX_STEPS) -> int:
    """``value`` as an int in ``[low, high]`` (an integer, not a float or bool), or a SpidecError."""
    wanted = f"a positive integer up to {high:,}" if low == 1 else f"an integer from {low} to {high:,}"
    if isinstance(value, bool) or not isinstance(value, (int, numbers.Integral)) or not low <= int(value) <= high:
        raise SpidecError(f"{what} must be {wanted}, got {value!r}")
    return int(value)


def _name(value: object, what: str) -> str:
    from .ir import NAME_RE  # (the graph's one rule for names; spidec.ir imports this module)

    if not isinstance(value, str) or not NAME_RE.match(value):
        raise SpidecError(f"{what} {value!r} is not a name (letters, digits and '_', not starting with a digit)")
    return value


@dataclass(frozen=True)
class Simulation:
    """Forward stage: ``T`` steps; inputs as a constant current, or ``temporal`` (``[B, T, ...]``)."""

    T: int = 30
    encoding: str = "constant"

    def __post_init__(self) -> None:
        object.__setattr__(self, "T", count(self.T, "T (forward time steps)"))
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
        _name(self.name, "couple name")
        _name(self.of, f"couple '{self.name}': population")
        vth = finite_f32(self.vth, f"couple '{self.name}': vth")
        u_rest = -vth if self.u_rest is None else finite_f32(self.u_rest, f"couple '{self.name}': u_rest")
        object.__setattr__(self, "vth", vth)
        object.__setattr__(self, "u_rest", u_rest)
        object.__setattr__(self, "leak", finite_f32(self.leak, f"couple '{self.name}': leak"))
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

    def __post_init__(self) -> None:
        _name(self.name, "backward synapse name")
        for f in ("src", "dst", "forward", "gate"):
            _name(getattr(self, f), f"backward synapse '{self.name}': {f}")
        object.__setattr__(self, "delay", count(self.delay, f"backward synapse '{self.name}': delay", 0, 1))


@dataclass(frozen=True)
class Injection:
    """Readout ``readout``'s scaled loss gradient through the transpose of ``forward`` into ``couple``."""

    readout: str
    couple: str
    forward: str

    def __post_init__(self) -> None:
        for f in ("readout", "couple", "forward"):
            _name(getattr(self, f), f"injection through '{self.forward}': {f}")


@dataclass(frozen=True)
class Update:
    """How tensor ``tensor`` learns (see the module docstring for the kinds)."""

    tensor: str
    kind: str
    synapse: str | None = None  # local, delta: the synapse holding the tensor
    post: str | None = None  # local, bias: the couple whose rate drives it; delta*: the readout
    gate: str | None = None  # local, bias: the population whose mask gates it

    def __post_init__(self) -> None:
        if not isinstance(self.tensor, str):
            raise SpidecError(f"an update names a tensor, got {self.tensor!r}")
        if self.kind not in UPDATE_KINDS:
            raise SpidecError(f"update of {self.tensor}: unknown rule '{self.kind}' (one of {', '.join(UPDATE_KINDS)})")
        for f in ("synapse", "post", "gate"):
            if getattr(self, f) is not None:
                _name(getattr(self, f), f"update of {self.tensor}: {f}")


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
            object.__setattr__(self, name, finite_f32(getattr(self, name), f"optimiser setting {name}"))
        if isinstance(self.milestones, (str, bytes)) or not isinstance(self.milestones, Iterable):
            raise SpidecError(f"optimiser setting milestones must be a list of epochs, got {self.milestones!r}")
        milestones = tuple(count(m, "a learning-rate milestone (an epoch)", 0, MAX_EPOCH) for m in self.milestones)
        if list(milestones) != sorted(milestones):  # (what every trainer's --lr-schedule reads back)
            raise SpidecError(f"learning-rate milestones must be increasing epochs, got {list(milestones)}")
        object.__setattr__(self, "milestones", milestones)
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
        object.__setattr__(self, "T_back", count(self.T_back, "T_back (backward time steps)"))
        object.__setattr__(self, "sf", finite_f32(self.sf, "the scale factor sf"))
        if not self.sf > 0:
            raise SpidecError(f"the scale factor sf must be a positive finite number, got {self.sf}")
        for what, cls in (("couples", Couple), ("backward", BackwardSynapse), ("injections", Injection),
                          ("updates", Update)):
            items = getattr(self, what)
            if not isinstance(items, tuple) or not all(isinstance(x, cls) for x in items):
                raise SpidecError(f"training {what} must be a tuple of {cls.__name__}s")
        if not isinstance(self.optimizer, Optimizer):
            raise SpidecError(f"the training optimizer must be an Optimizer, got {self.optimizer!r}")

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

    def __post_init__(self) -> None:
        for f in ("forward", "backward", "delayed", "delayed_back"):
            names = getattr(self, f)
            text = f"{f}_order" if f in ("forward", "backward") else f
            if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
                raise SpidecError(f"schedule {text} must be a list of names, got {names!r}")
            names = tuple(names)
            for n in names:
                _name(n, f"schedule {text}: entry")
            object.__setattr__(self, f, names)


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
