"""The step program: the contract between the passes and the backends.

The ``lower`` pass (:func:`lower`) turns a training graph (after ``spiking``, ``spide`` and
``schedule``) into a :class:`Program`: a typed, backend-neutral description of one training sample
that every backend reads instead of rebuilding it from the graph:

* every synapse as a :class:`Chain`: ``factor x`` its op chain, with the one op that does the work
  when there is one (``kernel``: dense, conv, convt, pool, identity; ``chain`` otherwise);
* every population as a :class:`PopulationStep` in forward order: its feeds classified as
  ``input`` (a constant current once per sample), ``now`` (same-step spikes) and ``delayed``
  (last step's spikes), its neuron and the normalisation of its spike count into a rate;
* every couple as a :class:`CoupleStep` in backward order: the transposed feeds of its successors'
  gated ternary spikes and the readouts' loss injections;
* one typed update rule per learnable tensor: :class:`WeightRule` (local: post couple's rate times
  mask, outer product with the pre node's rate), :class:`BiasRule`, :class:`ReadoutWeightRule`
  and :class:`ReadoutBiasRule` (the readout's delta rule);
* the buffer plan (:class:`Buffer`): every state array of the arithmetic, with element type and
  length, which the C backend declares and the board memory report prices.

``quantize`` annotates the program with a :class:`Quantization` (fixed-point scales and bounds)
and the integer buffer plan. The program prints and parses with the rest of the text form
(``lower KIND key=value ...`` statements): ``parse(print(g)) == g`` holds after every pass.
"""

from __future__ import annotations

import functools
import hashlib
import math
import sys
import types
import typing
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Union

from .errors import SpidecError
from .ir import Graph, Input, Population, code_name
from .ops import Scale
from .training import F32_MAX, Optimizer

FEED_KINDS = ("input", "now", "delayed")
STAGES = ("model", "forward", "backward", "update")
DTYPES = {"f32": 4, "f64": 8, "i64": 8, "u64": 8, "i32": 4, "i16": 2, "i8": 1, "u8": 1, "idx": 4}


# ---------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Chain:
    """Synapse ``name`` (``src -> dst``) reduced to ``factor x ops``.

    ``factor`` is the product of its scalar scales; ``ops`` the indices (into the IR synapse's op
    chain) of every other op. When those are one dense / conv2d / conv_transpose2d / avgpool2d op
    (or none) with flatten/reshape views around it, ``kernel`` names it (``identity`` for none),
    ``kernel_op`` is its index, ``weight`` its tensor and ``shape_in``/``shape_out`` its shapes;
    otherwise ``kernel`` is ``chain`` and the shapes are the synapse's.
    """

    name: str
    src: str
    dst: str
    delay: int
    factor: float
    ops: tuple[int, ...]
    kernel: str
    kernel_op: int | None
    weight: str | None
    shape_in: tuple[int, ...]
    shape_out: tuple[int, ...]
    learnable: bool  # the synapse holds a tensor that training updates
    dropout: float = 0.0  # variational dropout on its output (training; see spidec.ir.Synapse)
    dropout_bias: bool = False  # the mask scales the destination's bias too

    @property
    def n_in(self) -> int:
        return math.prod(self.shape_in)

    @property
    def n_out(self) -> int:
        return math.prod(self.shape_out)


@dataclass(frozen=True)
class Feed:
    """Synapse ``syn`` into a population or readout from ``src``: ``input`` (a data input, a
    constant current computed once per sample), ``now`` (this step's spikes) or ``delayed``."""

    syn: str
    src: str
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in FEED_KINDS:
            raise SpidecError(f"feed through '{self.syn}': kind must be one of {', '.join(FEED_KINDS)}")


@dataclass(frozen=True)
class InputStep:
    name: str
    size: int
    shape: tuple[int, ...]
    rate: bool  # a learnable synapse reads its (time-averaged) value as a pre rate


@dataclass(frozen=True)
class PopulationStep:
    """One population's forward step: ``u += V I`` (LIF: ``u = leak (u + V I - V s)``), spike at
    ``vth``, reset by ``V``; its rate is the (leak-weighted) spike count over ``norm``.
    ``bias_channels`` is C for a per-channel bias of a [C, H, W] population (0: a full bias)."""

    name: str
    size: int
    shape: tuple[int, ...]
    model: str
    vth: float
    V: float
    leak: float
    norm: float
    bias: str | None
    bias_channels: int
    feeds: tuple[Feed, ...]
    keep_prev: bool  # a delayed synapse reads its last step's spikes
    ternary: str  # its ternary couple (the field cannot be called couple: a statement keyword)


@dataclass(frozen=True)
class BackFeed:
    """The transpose of forward synapse ``syn`` from the couple of ``gate`` (its ternary spikes
    gated by ``gate``'s mask), ``delayed`` when the forward synapse is."""

    syn: str
    gate: str
    src: str  # the sending couple
    delayed: bool


@dataclass(frozen=True)
class CoupleStep:
    """The ternary couple of population ``of``: threshold ``vth``, spikes of ``+-S``, reset by
    subtraction, ``leak`` (LIF); beta is the spike sum over ``norm``. ``injections`` are the
    synapses into readouts whose transposes carry the scaled loss gradient every step."""

    name: str
    of: str
    size: int
    vth: float
    S: float
    leak: float
    norm: float
    feeds: tuple[BackFeed, ...]
    injections: tuple[str, ...]
    keep_prev: bool


@dataclass(frozen=True)
class ReadoutStep:
    name: str
    size: int
    shape: tuple[int, ...]
    loss: str
    bias: str | None
    feeds: tuple[Feed, ...]


@dataclass(frozen=True)
class WeightRule:
    """Local rule of a weight of ``syn`` into population ``gate``: ``G += scale * (m_gate *
    beta_post) (x) rate(pre)`` through the synapse's weight gradient. ``scale`` is ``1 / V**2``
    of the gate population: the tensor is kept in rate units (``W_r = W / V``) and the step must
    move it as the authors' step moves ``W`` (see :class:`spidec.training.Optimizer`).
    ``feedback`` marks a delayed synapse; ``bound`` is the Frobenius bound of the feedback norm
    restriction in rate units (``r / V``; 0: none), applied as the optimiser's mode says."""

    tensor: str
    syn: str
    pre: str
    post: str  # the couple whose rate drives it
    gate: str
    feedback: bool
    scale: float = 1.0
    bound: float = 0.0


@dataclass(frozen=True)
class BiasRule:
    """``G += scale * (m_gate * beta_post)`` (summed per channel), ``scale = 1 / V**2`` as for
    weights."""

    tensor: str
    gate: str
    post: str
    channels: int  # per-channel bias of a [C, H, W] population: C; else 0
    scale: float = 1.0


@dataclass(frozen=True)
class ReadoutWeightRule:
    """The readout's delta rule: ``G += dL/dlogits (x) rate(pre)``."""

    tensor: str
    syn: str
    pre: str
    node: str  # the readout (a field cannot be called readout: a statement keyword)


@dataclass(frozen=True)
class ReadoutBiasRule:
    tensor: str
    node: str  # the readout


Rule = WeightRule | BiasRule | ReadoutWeightRule | ReadoutBiasRule


@dataclass(frozen=True)
class Buffer:
    """A state array: ``size`` elements of ``dtype`` (``idx``: a neuron index of a spike list),
    kept for ``stage``, belonging to node or tensor ``of`` (empty: the model), grouped into
    ``part`` for memory reports."""

    name: str
    dtype: str
    size: int
    stage: str
    of: str
    part: str
    what: str
    scalar: bool = False  # one value (a count), not an array of size 1

    def __post_init__(self) -> None:
        if self.scalar and self.size != 1:
            raise SpidecError(f"buffer '{self.name}': a scalar has size 1")
        if self.dtype not in DTYPES:
            raise SpidecError(f"buffer '{self.name}': unknown element type {self.dtype!r}")
        if self.stage not in STAGES:
            raise SpidecError(f"buffer '{self.name}': unknown stage {self.stage!r}")

    @property
    def nbytes(self) -> int:
        return DTYPES[self.dtype] * self.size


# -- fixed point (what the quantize pass adds; spidec.fixed describes the arithmetic)


@dataclass(frozen=True)
class QPopulation:
    """Scales of population ``name``: weights/membrane ``2**frac``, its couple ``2**couple_frac``,
    the proven bounds of the constant current (``k_max``) and the loss injection (``g_max``), and
    the worst-case membrane and couple potential they allow (``u_bound``, ``ub_bound``)."""

    name: str
    frac: int
    couple_frac: int
    k_max: int
    g_max: int
    u_bound: int
    ub_bound: int
    # LIF (spidec.fixed): the leaks in Q15 (0: IF, no leak), the fraction bits of the leak-weighted
    # count and ternary sum, and their integer norms (the weighted count of a spike every step)
    leak_q15: int = 0
    cnt_frac: int = 0
    norm_q: int = 0
    cleak_q15: int = 0
    sb_frac: int = 0
    norm_b_q: int = 0


LIF_FIELDS = ("leak_q15", "cnt_frac", "norm_q", "cleak_q15", "sb_frac", "norm_b_q")


def _is_lif(p: QPopulation) -> bool:
    return any(getattr(p, f) for f in LIF_FIELDS)


def _qpop_dict(p: QPopulation) -> dict[str, Any]:
    """A QPopulation as JSON: an IF population's (all-zero) LIF fields left out, as before LIF."""
    d = asdict(p)
    return d if _is_lif(p) else {k: v for k, v in d.items() if k not in LIF_FIELDS}


@dataclass(frozen=True)
class QTensor:
    """How one tensor is held and learns: ``W_q = W * 2**frac`` (int16)."""

    name: str
    frac: int
    learnable: bool
    unit: float = 0.0  # float gradient of one unit of the integer gradient / momentum
    lr_shift: int = 0
    lr_c: float = 0.0  # lr_mult = floor(lr * lr_c + 0.5)
    wd_mult: int = 0
    wd_shift: int = 0
    wdl_c: float = 0.0  # online weight decay: mult = floor(lr * wdl_c + 0.5), shift 32
    salt: int = 0
    feedback: bool = False
    size: int = 0  # elements a conv kernel holds (0: the chain's n_in * n_out, a bias's size)


@dataclass(frozen=True)
class Quantization:
    """The scales the ``quantize`` pass chose (see :mod:`spidec.fixed`)."""

    update: str
    input_frac: int
    input_bits: int
    readout_frac: int
    momentum_q15: int
    wd_period: int = 1  # online updates: weight decay every wd_period steps, wd_period times as strong
    populations: tuple[QPopulation, ...] = ()
    qtensors: tuple[QTensor, ...] = ()

    # views by name (what the arithmetic reads)
    @property
    def pop_frac(self) -> dict[str, int]:
        return {p.name: p.frac for p in self.populations}

    @property
    def couple_frac(self) -> dict[str, int]:
        return {p.name: p.couple_frac for p in self.populations}

    @property
    def k_max(self) -> dict[str, int]:
        return {p.name: p.k_max for p in self.populations}

    @property
    def g_max(self) -> dict[str, int]:
        return {p.name: p.g_max for p in self.populations}

    @property
    def frac(self) -> dict[str, int]:
        return {t.name: t.frac for t in self.qtensors}

    @property
    def tensors(self) -> dict[str, QTensor]:
        """The learnable tensors' rules, by name."""
        return {t.name: t for t in self.qtensors if t.learnable}

    @property
    def bounds(self) -> dict[str, dict[str, int]]:
        """Worst-case |membrane| (``u``) and |couple potential| (``ub``) of every population."""
        return {p.name: {"u": p.u_bound, "ub": p.ub_bound} for p in self.populations}

    def as_json(self) -> dict[str, Any]:
        """A JSON view (``quantization.json`` beside a fixed-point build)."""
        head = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("populations", "qtensors")}
        return {**head, "frac": self.frac, "pop_frac": self.pop_frac, "couple_frac": self.couple_frac,
                "k_max": self.k_max, "g_max": self.g_max, "bounds": self.bounds,
                "populations": [_qpop_dict(p) for p in self.populations],
                "tensors": {n: asdict(t) for n, t in self.tensors.items()},  # the learnable ones, as before
                "frozen": [t.name for t in self.qtensors if not t.learnable]}

    def describe(self) -> str:
        from .fixed import I32

        lines = [f"fixed point ({self.update} updates): input x * 2^{self.input_frac} in "
                 f"{self.input_bits} bits, weights int16, membranes int32"]
        for p in self.populations:
            lines.append(f"  population {p.name}: weights/membrane 2^{p.frac}, couple 2^{p.couple_frac}, "
                         f"|K| <= {p.k_max}, |g| <= {p.g_max}; worst |u| {p.u_bound:,}, "
                         f"worst |ub| {p.ub_bound:,} (int32 limit {I32:,})")
        lines.append(f"  readout: 2^{self.readout_frac}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Program:
    """One training sample of graph ``model``, lowered (see the module docstring)."""

    model: str
    hash: str  # of the training graph (and of the fixed-point scales once quantized)
    T: int
    T_back: int
    sf: float
    encoding: str
    optimizer: Optimizer
    inputs: tuple[InputStep, ...] = ()
    chains: tuple[Chain, ...] = ()
    populations: tuple[PopulationStep, ...] = ()
    couples: tuple[CoupleStep, ...] = ()
    readouts: tuple[ReadoutStep, ...] = ()
    rules: tuple[Rule, ...] = ()
    buffers: tuple[Buffer, ...] = ()
    quant: Quantization | None = None

    # -- look-ups (by dictionaries built once: the backends look up every population's couple)
    @functools.cached_property
    def _index(self) -> dict[str, dict[str, Any]]:
        index: dict[str, dict[str, Any]] = {"chain": {}, "population": {}, "couple": {}, "rule": {}}
        for key, items, attr in (("chain", self.chains, "name"), ("population", self.populations, "name"),
                                 ("couple", self.couples, "of"), ("rule", self.rules, "tensor")):
            for item in items:
                index[key].setdefault(getattr(item, attr), item)  # (the first, as a scan would find)
        return index

    def chain(self, name: str) -> Chain:
        try:
            return self._index["chain"][name]
        except KeyError:
            raise SpidecError(f"the step program has no synapse '{name}'") from None

    def population(self, name: str) -> PopulationStep:
        try:
            return self._index["population"][name]
        except KeyError:
            raise SpidecError(f"the step program has no population '{name}'") from None

    def couple_of(self, population: str) -> CoupleStep:
        try:
            return self._index["couple"][population]
        except KeyError:
            raise SpidecError(f"population '{population}' has no couple in the step program") from None

    def rule(self, tensor: str) -> Rule:
        try:
            return self._index["rule"][tensor]
        except KeyError:
            raise SpidecError(f"the step program has no update rule of '{tensor}'") from None

    def buffers_of(self, stage: str | None = None, part: str | None = None) -> list[Buffer]:
        return [b for b in self.buffers if (stage is None or b.stage == stage) and (part is None or b.part == part)]

    @property
    def size(self) -> dict[str, int]:
        """Neurons (or values) of every node by name."""
        out = {i.name: i.size for i in self.inputs}
        out.update({p.name: p.size for p in self.populations})
        out.update({r.name: r.size for r in self.readouts})
        return out

    @property
    def feedback_tensors(self) -> tuple[str, ...]:
        return tuple(r.tensor for r in self.rules if isinstance(r, WeightRule) and r.feedback)

    def restricted(self, mode: str) -> dict[str, float]:
        """Feedback tensors whose norm restriction acts in ``mode`` (reparam, project): their
        Frobenius bound in rate units."""
        if self.optimizer.feedback_norm_mode != mode:
            return {}
        return {r.tensor: r.bound for r in self.rules if isinstance(r, WeightRule) and r.bound > 0}

    @property
    def fixed(self) -> bool:
        return self.quant is not None

    @property
    def build_hash(self) -> str:
        """The identity of a build: the training graph's hash, with the fixed-point scales when
        quantized (what generated files, checkpoints and weight dumps carry)."""
        if self.quant is None:
            return self.hash
        return graph_hash(self.hash + "\n".join(quant_lines(self.quant)))


def require_program(g: Graph, who: str) -> Program:
    """``g``'s step program, or an error naming the passes that have not run (``who``: the asker)."""
    prog = getattr(g, "program", None)
    if prog is None and g.training is not None and g.simulation is not None and g.schedule is not None:
        return lower(g).program  # a training graph that was edited or read without its program
    if prog is None:
        missing = [n for n, v in (("spiking", g.simulation), ("spide", g.training), ("schedule", g.schedule),
                                  ("lower", None)) if v is None]
        raise SpidecError(f"{who} needs a lowered training graph; run the passes first ({', '.join(missing)} "
                          "missing): spidec.passes.run(g)")
    return prog


def lowered(g: Graph, who: str) -> Graph:
    """``g`` with its step program: as it is, or lowered now (a training graph edited or read
    without one); an error naming the missing passes otherwise."""
    if getattr(g, "program", None) is not None:
        return g
    out = g.copy()
    out.program = require_program(g, who)
    return out


def graph_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- lowering


def _chain(g: Graph, name: str, learnable: set[str], tensors_of: dict[str, dict[tuple[int | None, str], str]]) -> Chain:
    """``tensors_of``: per owner (synapse or node) its tensors' names by (op, field)."""
    e = g.synapse(name)
    mine = tensors_of.get(e.name, {})
    shapes = e.synapse.shapes(g.node(e.src).shape)
    factor, ops, work = 1.0, [], []
    for i, op in enumerate(e.synapse.ops):
        if isinstance(op, Scale) and isinstance(op.factor, float):
            factor *= op.factor
            continue
        ops.append(i)
        if not op.view:
            work.append(i)
    kernel, kop, weight = "chain", None, None
    shape_in, shape_out = shapes[0], shapes[-1]
    if not work:
        kernel = "identity"
    elif len(work) == 1 and e.synapse.ops[work[0]].step_kernel is not None:
        kop = work[0]
        kernel = e.synapse.ops[kop].step_kernel  # type: ignore[assignment]
        shape_in, shape_out = shapes[kop], shapes[kop + 1]
        weight = mine.get((kop, "weight"))
    owned = set(mine.values())
    return Chain(e.name, e.src, e.dst, e.synapse.delay, factor, tuple(ops), kernel, kop, weight,
                 tuple(shape_in), tuple(shape_out), bool(owned & learnable), e.synapse.dropout,
                 e.synapse.dropout_bias)


def _norm(leak: float, steps: int) -> float:
    return float(steps) if leak == 1.0 else (1 - leak**steps) / (1 - leak)


def spike_lists(p: PopulationStep, index: str) -> list[Buffer]:
    """A population's event lists (the same in both arithmetics but for the index type): this
    step's spikes and, when a delayed synapse reads them, last step's."""
    c, n = code_name(p.name), p.size
    out = [Buffer(f"s_{c}", index, n, "forward", p.name, "spike buffers", "indices of this step's spikes"),
           Buffer(f"ns_{c}", index, 1, "forward", p.name, "spike buffers", "how many of them", scalar=True)]
    if p.keep_prev:
        out += [Buffer(f"ps_{c}", index, n, "forward", p.name, "spike buffers",
                       "indices of last step's spikes (delayed synapses read them)"),
                Buffer(f"nps_{c}", index, 1, "forward", p.name, "spike buffers", "how many of them", scalar=True)]
    return out


def ternary_lists(cp: CoupleStep, index: str, sign: str) -> list[Buffer]:
    """A couple's gated ternary event lists with their signs, this step's and (delayed) last step's."""
    c, n = code_name(cp.of), cp.size
    out = [Buffer(f"ts_{c}", index, n, "backward", cp.name, "spike buffers",
                  "indices of this step's gated ternary spikes"),
           Buffer(f"nts_{c}", index, 1, "backward", cp.name, "spike buffers", "how many of them", scalar=True),
           Buffer(f"tv_{c}", sign, n, "backward", cp.name, "spike buffers", "their signs (+1 / -1), by index")]
    if cp.keep_prev:
        out += [Buffer(f"pts_{c}", index, n, "backward", cp.name, "spike buffers",
                       "last step's gated ternary spikes (delayed transposes read them)"),
                Buffer(f"npts_{c}", index, 1, "backward", cp.name, "spike buffers", "how many of them", scalar=True),
                Buffer(f"ptv_{c}", sign, n, "backward", cp.name, "spike buffers", "their signs")]
    return out


def float_buffers(prog: Program) -> tuple[Buffer, ...]:
    """The state of the float arithmetic (what the float C runtime declares)."""
    out: list[Buffer] = []
    add = out.append
    nc = sum(r.size for r in prog.readouts)
    add(Buffer("logits", "f32", nc, "model", "", "other model state", "the readout's logits of the last sample"))
    add(Buffer("dlogits", "f32", nc, "backward", "", "other model state",
               "sf * dL/dlogits / B: the loss gradient injected into the couples"))
    add(Buffer("events", "u64", 1, "model", "", "other model state", "spikes of the last sample", scalar=True))
    add(Buffer("synops", "u64", 3, "model", "", "other model state",
               "spike-driven synaptic operations of the forward, backward, update stages (energy estimate)"))
    add(Buffer("macs", "u64", 3, "model", "", "other model state", "multiply-accumulates of the same stages"))
    for p in prog.populations:
        c, n = code_name(p.name), p.size
        add(Buffer(f"u_{c}", "f32", n, "forward", p.name, "membranes", "membrane potential"))
        add(Buffer(f"K_{c}", "f32", n, "forward", p.name, "membranes",
                   "constant input current: bias and input synapses, once per sample"))
        add(Buffer(f"cnt_{c}", "f32", n, "forward", p.name, "rates and counts",
                   "spike count (leak-weighted for LIF)"))
        add(Buffer(f"a_{c}", "f32", n, "forward", p.name, "rates and counts", "forward rate: count / norm"))
        add(Buffer(f"m_{c}", "u8", n, "forward", p.name, "rates and counts", "mask m = [0 < a < 1]"))
        out += spike_lists(p, "idx")
    for cp in prog.couples:
        c, n = code_name(cp.of), cp.size
        add(Buffer(f"ub_{c}", "f32", n, "backward", cp.name, "membranes", "couple potential"))
        add(Buffer(f"g_{c}", "f32", n, "backward", cp.name, "membranes",
                   "injected loss gradient, once per sample"))
        add(Buffer(f"sb_{c}", "f32", n, "backward", cp.name, "rates and counts",
                   "ternary spike sum (leak-weighted for LIF): beta * norm_back"))
        add(Buffer(f"post_{c}", "f32", n, "backward", cp.name, "rates and counts",
                   "m * beta: what the local updates read"))
        add(Buffer(f"nb_{c}", "f32", n, "backward", cp.name, "rates and counts", "ternary spikes fired (either sign)"))
        out += ternary_lists(cp, "idx", "f32")
    return tuple(out)


def float_program(prog: Program) -> Program:
    """``prog`` without its fixed-point annotation (float arithmetic and its buffers)."""
    return replace(prog, quant=None, buffers=float_buffers(prog))


def lower(g: Graph) -> Graph:
    """The ``lower`` pass: attach the step program (``g.program``) of training graph ``g``."""
    if g.simulation is None or g.training is None or g.schedule is None:
        missing = [n for n, v in (("spiking", g.simulation), ("spide", g.training), ("schedule", g.schedule))
                   if v is None]
        raise SpidecError(f"the lower pass needs the {', '.join(missing)} pass(es) first")
    from .text import dumps

    base = g.copy()
    base.program = None
    text = dumps(base, inline_max=0)[0]  # (first: it validates, so what follows may trust the training structure)
    t, sim, sched = g.training, g.simulation, g.schedule
    learnable = set(g.parameters())
    tensors_of: dict[str, dict[tuple[int | None, str], str]] = {}
    for tname, slot in g.tensor_slots().items():
        tensors_of.setdefault(slot.owner, {})[(slot.op, slot.field)] = tname
    chains = tuple(_chain(g, e.name, learnable, tensors_of) for e in g.synapses())
    syn = {e.name: e for e in g.synapses()}

    def feeds_of(node: str) -> tuple[Feed, ...]:
        out = []
        for e in g.in_synapses(node):
            kind = "input" if isinstance(g.node(e.src), Input) else ("delayed" if e.synapse.delay else "now")
            out.append(Feed(e.name, e.src, kind))
        return tuple(out)

    couple = {c.of: c for c in t.couples}
    pops = []
    for name in sched.forward:
        p = g.node(name)
        assert isinstance(p, Population)
        n = p.neuron
        channels = p.bias.shape[0] if p.bias is not None and p.bias.shape != p.shape else 0
        pops.append(PopulationStep(name, p.size, p.shape, n.model, n.vth, n.V, n.leak, _norm(n.leak, sim.T),
                                   f"{name}.bias" if p.bias is not None else None, int(channels),
                                   feeds_of(name), name in sched.delayed, couple[name].name))
    by_couple = {c.name: c for c in t.couples}
    couples = []
    for cname in sched.backward:
        c = by_couple[cname]
        bfeeds = tuple(BackFeed(b.forward, b.gate, b.src, bool(b.delay)) for b in t.backward if b.dst == cname)
        inj = tuple(i.forward for i in t.injections if i.couple == cname)
        couples.append(CoupleStep(cname, c.of, g.node(c.of).size, c.vth, c.S, c.leak, _norm(c.leak, t.T_back),  # type: ignore[union-attr]
                                  bfeeds, inj, cname in sched.delayed_back))
    readouts = tuple(ReadoutStep(r.name, math.prod(r.shape), r.shape, r.loss,
                                 f"{r.name}.bias" if r.bias is not None else None, feeds_of(r.name))
                     for r in g.readouts)
    rules: list[Rule] = []
    pop_names = {p.name for p in g.populations}
    for u in t.updates:  # (a training graph read from text may name anything: refuse, never crash)
        if u.kind in ("local", "delta") and u.synapse not in syn:
            raise SpidecError(f"update of {u.tensor}: the graph has no synapse '{u.synapse}'")
        if u.kind in ("local", "bias") and u.gate not in pop_names:
            raise SpidecError(f"update of {u.tensor}: gate '{u.gate}' is not a population of the graph")
        if u.kind == "local":
            e = syn[u.synapse]  # type: ignore[index]
            V = g.node(u.gate).neuron.V  # type: ignore[arg-type, union-attr]
            fb = bool(e.synapse.delay)
            bound = t.optimizer.feedback_norm / V if fb and t.optimizer.feedback_norm > 0 else 0.0
            rules.append(WeightRule(u.tensor, e.name, e.src, u.post, u.gate, fb,  # type: ignore[arg-type]
                                    1.0 / (V * V), bound))
        elif u.kind == "bias":
            node = g.node(u.gate)  # type: ignore[arg-type]
            channels = node.shape[0] if g.tensor(u.tensor).shape != node.shape else 0
            V = node.neuron.V  # type: ignore[union-attr]
            rules.append(BiasRule(u.tensor, u.gate, u.post, int(channels), 1.0 / (V * V)))  # type: ignore[arg-type]
        elif u.kind == "delta":
            e = syn[u.synapse]  # type: ignore[index]
            rules.append(ReadoutWeightRule(u.tensor, e.name, e.src, e.dst))
        else:
            rules.append(ReadoutBiasRule(u.tensor, u.post))  # type: ignore[arg-type]
    rate_inputs = {e.src for e in g.synapses() if isinstance(g.node(e.src), Input)}
    inputs = tuple(InputStep(i.name, math.prod(i.shape), i.shape, i.name in rate_inputs) for i in g.inputs)
    prog = Program(g.name, graph_hash(text), sim.T, t.T_back, t.sf, sim.encoding,
                   t.optimizer, inputs, chains, tuple(pops), tuple(couples), readouts, tuple(rules))
    prog = replace(prog, buffers=float_buffers(prog))
    _check_f32(prog)
    out = g.copy()
    out.program = prog
    return out


def _check_f32(v: Any, where: str = "") -> None:
    """Every float of a step program record is a finite float32 (the backends print them as
    float32 constants; a derived value such as ``1 / V**2`` may overflow where its settings did not)."""
    if isinstance(v, float):
        if not (math.isfinite(v) and abs(v) <= F32_MAX):
            raise SpidecError(f"the step program's {where} is {v}, beyond the finite float32 numbers the programs "
                              "compute in", hint="bring the settings it derives from into a sane range")
    elif isinstance(v, tuple):
        for x in v:
            _check_f32(x, where)
    elif type(v) in KIND_OF:
        for f in fields(v):
            x = getattr(v, f.name)
            if isinstance(x, (float, tuple)) or type(x) in KIND_OF:
                name = getattr(v, "name", None) or getattr(v, "tensor", None)
                _check_f32(x, f"{KIND_OF[type(v)]}{f' {name}' if name else ''} {f.name}")


def check_program(g: Graph) -> None:
    """The step program read with ``g`` belongs to it: the same training graph (its hash) and the
    same names. A program left behind by an edit of the graph is refused rather than trusted."""
    prog = g.program
    if prog is None:
        return
    if g.training is None or g.simulation is None or g.schedule is None:
        raise SpidecError("the step program ('lower' statements) needs the training graph it was lowered from "
                          "(simulate, train, couple, ... and schedule statements)")
    fresh = lower(g.copy())
    if fresh.program.hash != prog.hash:
        raise SpidecError(f"the step program was lowered from another training graph (hash {prog.hash}, this graph "
                          f"{fresh.program.hash})", hint="delete the 'lower' statements or run the lower pass again")
    for name in ("model", "T", "T_back", "sf", "encoding", "optimizer", "inputs", "chains", "populations", "couples",
                 "readouts", "rules"):
        if getattr(fresh.program, name) != getattr(prog, name):
            raise SpidecError(f"the step program's {name} do not match the training graph",
                              hint="delete the 'lower' statements or run the lower pass again")
    if prog.quant is None:
        planned = float_buffers(prog)
    else:
        from .fixed import fixed_buffers

        q = prog.quant
        if [p.name for p in q.populations] != [p.name for p in prog.populations]:
            raise SpidecError("the fixed-point scales name other populations than the step program",
                              hint="delete the 'lower quantization/qpopulation/qtensor' statements or quantize again")
        tensors = set(g.tensor_slots())
        if {t.name for t in q.qtensors} != tensors or {t.name for t in q.qtensors if t.learnable} != {
                r.tensor for r in prog.rules}:
            raise SpidecError("the fixed-point scales do not cover exactly the graph's tensors",
                              hint="delete the 'lower quantization/qpopulation/qtensor' statements or quantize again")
        if q.update not in ("momentum", "online"):
            raise SpidecError(f"unknown fixed-point update rule {q.update!r}")
        planned = fixed_buffers(prog, q.update, g)
    if prog.buffers != planned:
        raise SpidecError("the step program's buffer plan is not the one its arithmetic keeps",
                          hint="delete the 'lower state' statements or run the lower pass again")


# ---------------------------------------------------------------------------------------------- text form

# record kinds of the text form: ``lower KIND key=value ...`` (Program: ``lower program``)
RECORDS: dict[str, type] = {
    "program": Program, "input_step": InputStep, "chain": Chain, "population_step": PopulationStep,
    "couple_step": CoupleStep, "readout_step": ReadoutStep, "weight_rule": WeightRule, "bias_rule": BiasRule,
    "readout_weight_rule": ReadoutWeightRule, "readout_bias_rule": ReadoutBiasRule, "state": Buffer,
    "quantization": Quantization, "qpopulation": QPopulation, "qtensor": QTensor,
}
# nested records, written as calls inside a statement
CALLS: dict[str, type] = {"feed": Feed, "back_feed": BackFeed, "sgd": Optimizer}
KIND_OF = {v: k for k, v in {**RECORDS, **CALLS}.items()}
# the Program's (and Quantization's) collections, each printed as one statement per item
COLLECTIONS = {Program: ("inputs", "chains", "populations", "couples", "readouts", "rules", "buffers"),
               Quantization: ("populations", "qtensors")}


# fields whose name is a statement keyword of the grammar get another name in the text form
TEXT_NAMES = {"update": "update_rule"}
FIELD_NAMES = {v: k for k, v in TEXT_NAMES.items()}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The field types of record class ``cls`` (resolved once: reading a step program asks per record)."""
    return typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))


def _fmt(v: Any) -> str:
    from .text import NAME_RE_TEXT, _num

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _num(v)
    if isinstance(v, str):
        import json

        return v if NAME_RE_TEXT.match(v) and v not in ("true", "false", "none") else json.dumps(v)
    if isinstance(v, tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if type(v) in KIND_OF:
        return f"{KIND_OF[type(v)]}({_fields_text(v, sep=', ')})"
    raise TypeError(f"cannot print {v!r}")  # pragma: no cover


def _fields_text(obj: Any, sep: str = " ", skip: tuple[str, ...] = ()) -> str:
    parts = []
    for f in fields(obj):
        if f.name in skip:
            continue
        v = getattr(obj, f.name)
        parts.append(f"{TEXT_NAMES.get(f.name, f.name)}={'none' if v is None else _fmt(v)}")
    return sep.join(parts)


def program_lines(prog: Program) -> list[str]:
    """The ``lower`` statements of a step program."""
    lines = [f"lower program {_fields_text(prog, skip=COLLECTIONS[Program] + ('quant',))}"]
    for coll in COLLECTIONS[Program]:
        for item in getattr(prog, coll):
            lines.append(f"lower {KIND_OF[type(item)]} {_fields_text(item)}")
    if prog.quant is not None:
        lines += quant_lines(prog.quant)
    return lines


def quant_lines(q: Quantization) -> list[str]:
    lines = [f"lower quantization {_fields_text(q, skip=COLLECTIONS[Quantization])}"]
    for coll in COLLECTIONS[Quantization]:
        for item in getattr(q, coll):
            skip = LIF_FIELDS if isinstance(item, QPopulation) and not _is_lif(item) else ()
            if isinstance(item, QTensor) and not item.size:  # (only conv kernels say it: earlier builds' hashes stay)
                skip = ("size",)
            lines.append(f"lower {KIND_OF[type(item)]} {_fields_text(item, skip=skip)}")
    return lines


def _convert(tp: Any, v: Any, what: str) -> Any:
    """A parsed value (numbers, strings, idents, lists, calls: spidec.text's value objects) as ``tp``."""
    from .text import _Call, _Ident, _Ref

    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if isinstance(v, _Ident) and v.name == "none":
            return None
        if len(args) == 1:
            return _convert(args[0], v, what)
        for a in args:  # a union of records: the call's name decides
            if isinstance(v, _Call) and CALLS.get(v.name) is a:
                return _convert(a, v, what)
        raise SpidecError(f"{what}: cannot read {v!r}")
    if origin is tuple:
        if not isinstance(v, list):
            raise SpidecError(f"{what} must be a list")
        inner = typing.get_args(tp)[0]
        return tuple(_convert(inner, x, what) for x in v)
    if tp is bool:
        if isinstance(v, _Ident) and v.name in ("true", "false"):
            return v.name == "true"
        raise SpidecError(f"{what} must be true or false")
    if tp is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        raise SpidecError(f"{what} must be an integer")
    if tp is float:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        raise SpidecError(f"{what} must be a number")
    if tp is str:
        if isinstance(v, (_Ident, _Ref)):
            return v.name
        if isinstance(v, str):
            return v
        raise SpidecError(f"{what} must be a name or a string")
    if isinstance(tp, type) and tp in KIND_OF:
        if not isinstance(v, _Call) or CALLS.get(v.name) is not tp or v.args:
            raise SpidecError(f"{what} must be {KIND_OF[tp]}(key=value, ...)")
        return make_record(tp, {k: x for k, x, _ in v.kwargs}, what)
    raise SpidecError(f"{what}: unsupported type {tp!r}")  # pragma: no cover


def make_record(cls: type, values: dict[str, Any], what: str) -> Any:
    hints = _hints(cls)
    values = {FIELD_NAMES.get(k, k): v for k, v in values.items()}
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise SpidecError(f"{what}: unknown field(s) {', '.join(unknown)} (the fields are {', '.join(sorted(names))})")
    kwargs = {k: _convert(hints[k], v, f"{what} field {k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise SpidecError(f"{what}: {e}") from None


def read_program(records: list[tuple[str, dict[str, Any]]]) -> Program | None:
    """Rebuild a Program from its ``lower`` statements, in order (``(kind, options)`` pairs)."""
    if not records:
        return None
    head: dict[str, Any] | None = None
    qhead: dict[str, Any] | None = None
    items: dict[str, list[Any]] = {c: [] for c in COLLECTIONS[Program]}
    qitems: dict[str, list[Any]] = {c: [] for c in COLLECTIONS[Quantization]}
    slot = {Program: {InputStep: "inputs", Chain: "chains", PopulationStep: "populations", CoupleStep: "couples",
                      ReadoutStep: "readouts", WeightRule: "rules", BiasRule: "rules", ReadoutWeightRule: "rules",
                      ReadoutBiasRule: "rules", Buffer: "buffers"},
            Quantization: {QPopulation: "populations", QTensor: "qtensors"}}
    for kind, values in records:
        cls = RECORDS.get(kind)
        if cls is None:
            raise SpidecError(f"unknown step-program record 'lower {kind}'; the records are: {', '.join(RECORDS)}")
        if cls is Program:
            if head is not None:
                raise SpidecError("the step program is given twice (two 'lower program' statements)")
            head = values
        elif cls is Quantization:
            if qhead is not None:
                raise SpidecError("the fixed-point scales are given twice (two 'lower quantization' statements)")
            qhead = values
        elif cls in slot[Program]:
            items[slot[Program][cls]].append(make_record(cls, values, f"lower {kind}"))
        else:
            qitems[slot[Quantization][cls]].append(make_record(cls, values, f"lower {kind}"))
    if head is None:
        raise SpidecError("'lower' records without a 'lower program' statement")
    quant = None
    if qhead is not None:
        quant = replace(make_record(Quantization, qhead, "lower quantization"),
                        **{k: tuple(v) for k, v in qitems.items()})
    prog = make_record(Program, head, "lower program")
    return replace(prog, quant=quant, **{k: tuple(v) for k, v in items.items()})


__all__ = [
    "BackFeed",
    "BiasRule",
    "Buffer",
    "Chain",
    "CoupleStep",
    "Feed",
    "InputStep",
    "PopulationStep",
    "Program",
    "QPopulation",
    "QTensor",
    "Quantization",
    "ReadoutBiasRule",
    "ReadoutStep",
    "ReadoutWeightRule",
    "Rule",
    "WeightRule",
    "check_program",
    "float_buffers",
    "float_program",
    "graph_hash",
    "lower",
    "lowered",
    "program_lines",
    "read_program",
    "require_program",
    "spike_lists",
    "ternary_lists",
]
