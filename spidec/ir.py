"""The spiking IR: a graph of inputs, neuron populations and readouts joined by linear synapses.

Semantics (rate space, see DESIGN.md): the input current of a population is the sum, over its
incoming synapses, of the synapse's op chain applied to the source's rates (an input's value for an
``Input``), plus the population's bias; its rate is ``clamp(current, 0, 1)``. A readout is the same
sum without the clamp. A synapse with ``delay=1`` reads the previous time step's spikes: every cycle
of the graph must contain one, so that a time step has a well-defined order.

Nodes and synapses share one namespace of identifiers. Every tensor of the graph has a stable name
(``h.bias``, ``fc1.weight``, ``fc1.2.weight`` when a chain holds two weights): the text form, the
parameter dictionaries and the gradients all use those names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import networkx as nx
import numpy as np

from .errors import SpidecError
from .ops import LinearOp, Shape, ValueEq, as_tensor, fmt_shape, values_equal
from .training import Schedule, Simulation, Training

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LOSSES = ("cross_entropy", "mse")


def code_name(name: str) -> str:
    """``name`` as an identifier of generated code (every character that is no letter or digit
    becomes ``_``): the one rule the backends and the reports share."""
    return "".join(c if c.isalnum() else "_" for c in name)


def fresh_name(base: str, taken: set[str], sep: str = "_") -> str:
    """``base``, or ``base`` + ``sep`` + 2, 3 ... until it is not in ``taken``; it is added to ``taken``."""
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}{sep}{k}"
    taken.add(name)
    return name


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SpidecError(f"{what} name {name!r} is not an identifier (letters, digits and '_', "
                          f"not starting with a digit)")
    return name


def _shape(shape: Iterable[int], what: str) -> Shape:
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise SpidecError(f"{what} shape must be a list of integers, got {shape!r}") from None
    if not out or any(s < 1 for s in out):
        raise SpidecError(f"{what} shape {list(out)} must be a non-empty list of positive sizes")
    return out


@dataclass(frozen=True)
class Neuron:
    """Spiking neuron model of a population.

    ``IF``: integrate and fire. ``LIF``: leaky, ``u <- leak * (u + I - V s)``. The SPIDE reset
    subtracts ``V = vth - u_rest`` after a spike; ``u_rest`` defaults to ``-vth`` (rounding rather
    than flooring the rate).
    """

    model: str = "IF"
    vth: float = 1.0
    u_rest: float | None = None
    leak: float = 1.0

    def __post_init__(self) -> None:
        if self.model not in ("IF", "LIF"):
            raise SpidecError(f"neuron model must be IF or LIF, got {self.model!r}")
        vth = float(self.vth)
        u_rest = -vth if self.u_rest is None else float(self.u_rest)
        leak = float(self.leak)
        object.__setattr__(self, "vth", vth)
        object.__setattr__(self, "u_rest", u_rest)
        object.__setattr__(self, "leak", leak)
        if not (math.isfinite(vth) and vth > 0):
            raise SpidecError(f"neuron threshold vth must be a positive number, got {vth}")
        if not (math.isfinite(u_rest) and u_rest < vth):
            raise SpidecError(f"neuron u_rest must be below vth={vth}, got {u_rest}")
        if self.model == "IF" and leak != 1.0:
            raise SpidecError(f"an IF neuron has no leak (leak=1), got leak={leak}; use LIF")
        if not (0.0 < leak <= 1.0):
            raise SpidecError(f"LIF leak must lie in (0, 1], got {leak}")

    @property
    def V(self) -> float:
        """The reset amount ``vth - u_rest`` (2 vth with the SPIDE reset)."""
        return self.vth - float(self.u_rest)  # type: ignore[arg-type]


@dataclass(frozen=True, eq=False)
class Input(ValueEq):
    """A data input of per-sample ``shape`` (no batch dimension)."""

    name: str
    shape: Shape

    def __post_init__(self) -> None:
        _check_name(self.name, "input")
        object.__setattr__(self, "shape", _shape(self.shape, f"input '{self.name}'"))


def _bias(bias: Any, name: str) -> np.ndarray | None:
    return None if bias is None else as_tensor(bias, f"bias of '{name}'")


@dataclass(frozen=True, eq=False)
class Population(ValueEq):
    """Neurons of per-sample ``shape`` with rate ``clamp(sum of currents + bias, 0, 1)``.

    ``bias`` has the population's shape, or ``[C]`` (one per channel) for a ``[C, H, W]``
    population; ``None`` means no bias.
    """

    name: str
    shape: Shape
    neuron: Neuron = field(default_factory=Neuron)
    bias: np.ndarray | None = None

    def __post_init__(self) -> None:
        _check_name(self.name, "population")
        object.__setattr__(self, "shape", _shape(self.shape, f"population '{self.name}'"))
        object.__setattr__(self, "bias", _bias(self.bias, self.name))
        if not isinstance(self.neuron, Neuron):
            raise SpidecError(f"population '{self.name}': neuron must be a Neuron, got {self.neuron!r}")

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, eq=False)
class Readout(ValueEq):
    """A linear output (logits): the sum of its incoming currents plus bias, trained by its own
    delta rule; ``loss`` is what training minimises on it."""

    name: str
    shape: Shape
    bias: np.ndarray | None = None
    loss: str = "cross_entropy"

    def __post_init__(self) -> None:
        _check_name(self.name, "readout")
        object.__setattr__(self, "shape", _shape(self.shape, f"readout '{self.name}'"))
        object.__setattr__(self, "bias", _bias(self.bias, self.name))
        if self.loss not in LOSSES:
            raise SpidecError(f"readout '{self.name}': unknown loss {self.loss!r}; "
                              f"choose one of {', '.join(LOSSES)}")
        if self.loss == "cross_entropy" and len(self.shape) != 1:
            raise SpidecError(f"readout '{self.name}': cross_entropy needs a shape [classes], "
                              f"got {fmt_shape(self.shape)}", hint="flatten before the readout")


Node = Input | Population | Readout


@dataclass(frozen=True, eq=False)
class Synapse(ValueEq):
    """A chain of linear ops from a node's output to another node's input current.

    ``delay=1`` makes the synapse read the previous time step (feedback edges). ``dropout=p``
    (training only) multiplies the synapse's output by a variational mask: one Bernoulli(1-p)/(1-p)
    value per output element and sample, drawn before the forward stage and used in every forward
    step and, on the transposed path, every backward step (not in the local update), as the SPIDE
    authors' ``VariationalHidDropout2d(spatial=False)`` on a layer's output; ``dropout_bias`` says
    the destination population's bias sits under the same mask (the authors' ``drop(W x + b)``).
    """

    ops: tuple[LinearOp, ...]
    delay: int = 0
    dropout: float = 0.0
    dropout_bias: bool = False  # the mask also scales the destination population's bias

    def __post_init__(self) -> None:
        ops = tuple(self.ops)
        if not ops:
            raise SpidecError("a synapse needs at least one op (use scale(1.0) for identity)")
        for op in ops:
            if not isinstance(op, LinearOp):
                raise SpidecError(f"synapse ops must be LinearOps, got {op!r}")
        if self.delay not in (0, 1) or isinstance(self.delay, bool):
            raise SpidecError(f"synapse delay must be 0 or 1, got {self.delay!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= float(self.dropout) < 1.0:
            raise SpidecError(f"synapse dropout must be a probability in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "ops", ops)
        object.__setattr__(self, "delay", int(self.delay))
        object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "dropout_bias", bool(self.dropout_bias) and self.dropout > 0)

    def shapes(self, shape_in: Shape) -> list[Shape]:
        """Shapes between the ops: ``[shape_in, after op 0, ..., after op n-1]``."""
        out = [tuple(shape_in)]
        for i, op in enumerate(self.ops):
            try:
                out.append(tuple(op.shape_out(out[-1])))
            except SpidecError as e:
                raise SpidecError(f"op {i} ({op.kind}): {e.message}", hint=e.hint) from None
        return out

    def apply(self, x: np.ndarray) -> np.ndarray:
        for op in self.ops:
            x = op.apply(x)
        return x

    def adjoint(self, y: np.ndarray, shape_in: Shape) -> np.ndarray:
        shapes = self.shapes(shape_in)
        for op, s in zip(reversed(self.ops), reversed(shapes[:-1])):
            y = op.adjoint(y, s)
        return y

    def grads(self, post: np.ndarray, pre: np.ndarray) -> dict[int, dict[str, np.ndarray]]:
        """``{op index: {tensor: gradient}}`` of ``sum(post * apply(pre))``, batch-summed."""
        learn = [i for i, op in enumerate(self.ops) if op.learnable()]
        if not learn:
            return {}
        shapes = self.shapes(tuple(pre.shape[1:]))
        xs = [pre]  # xs[i]: the input of op i, needed up to the last learnable op
        for op in self.ops[: learn[-1]]:
            xs.append(op.apply(xs[-1]))
        out: dict[int, dict[str, np.ndarray]] = {}
        y = post  # gradient w.r.t. the output of op i
        for i in range(len(self.ops) - 1, learn[0] - 1, -1):
            if i in learn:
                out[i] = self.ops[i].grad(y, xs[i])
            if i > learn[0]:
                y = self.ops[i].adjoint(y, shapes[i])
        return out

    def num_parameters(self) -> int:
        return sum(op.num_parameters() for op in self.ops)


class Edge(NamedTuple):
    name: str
    src: str
    dst: str
    synapse: Synapse


class TensorSlot(NamedTuple):
    """Where a named tensor lives: on a node (``bias``) or on op ``op`` of a synapse."""

    owner: str
    op: int | None
    field: str
    learnable: bool


class Graph:
    """A spiking network: ``Input``/``Population``/``Readout`` nodes and ``Synapse`` edges, kept in a
    ``networkx.MultiDiGraph`` (node key: name; edge key: synapse name)."""

    def __init__(self, name: str = "model") -> None:
        self.name = _check_name(name, "graph")
        self._g = nx.MultiDiGraph()
        self._synapses: dict[str, tuple[str, str]] = {}  # insertion order = text order
        # what the passes add (see spidec.training): None on a plain forward graph
        self.simulation: Simulation | None = None
        self.training: Training | None = None
        self.schedule: Schedule | None = None
        # what the lower pass adds: the step program (spidec.program.Program) every backend reads;
        # the quantize pass annotates it with fixed-point scales (Program.quant)
        self.program: Any = None

    # ----------------------------------------------------------------- building
    @property
    def nx(self) -> nx.MultiDiGraph:
        """The underlying networkx graph (node attr ``obj``: the node; edge attr ``obj``: the synapse)."""
        return self._g

    def _claim(self, name: str) -> None:
        if name in self._g or name in self._synapses:
            raise SpidecError(f"name '{name}' is used twice; nodes and synapses need distinct names",
                              node=name)

    def add(self, node: Node) -> Node:
        if not isinstance(node, (Input, Population, Readout)):
            raise SpidecError(f"not a node: {node!r}")
        self._claim(node.name)
        self._g.add_node(node.name, obj=node)
        self.program = None  # the step program describes the graph as it was lowered
        return node

    def add_input(self, name: str, shape: Iterable[int]) -> Input:
        return self.add(Input(name, tuple(shape)))  # type: ignore[return-value]

    def add_population(self, name: str, shape: Iterable[int], neuron: Neuron | None = None,
                       bias: Any = None) -> Population:
        return self.add(Population(name, tuple(shape), neuron or Neuron(), bias))  # type: ignore[return-value]

    def add_readout(self, name: str, shape: Iterable[int], bias: Any = None,
                    loss: str = "cross_entropy") -> Readout:
        return self.add(Readout(name, tuple(shape), bias, loss))  # type: ignore[return-value]

    def add_synapse(self, src: str, dst: str, ops: LinearOp | Iterable[LinearOp], *, delay: int = 0,
                    name: str | None = None, dropout: float = 0.0, dropout_bias: bool = False) -> str:
        """Add a synapse ``src -> dst``; returns its name (``src_dst`` unless given)."""
        for end in (src, dst):
            if end not in self._g:
                raise SpidecError(f"synapse {src} -> {dst}: no node named '{end}'", node=end)
        if name is None:
            name, k = f"{src}_{dst}", 1
            while name in self._g or name in self._synapses:
                k += 1
                name = f"{src}_{dst}_{k}"
        _check_name(name, "synapse")
        self._claim(name)
        syn = Synapse(tuple([ops] if isinstance(ops, LinearOp) else ops), delay, dropout, dropout_bias)
        self._g.add_edge(src, dst, key=name, obj=syn)
        self._synapses[name] = (src, dst)
        self.program = None
        return name

    def replace_node(self, node: Node) -> None:
        """Replace the node of the same name (same kind)."""
        old = self.node(node.name)
        if type(old) is not type(node):
            raise SpidecError(f"cannot replace {type(old).__name__} '{node.name}' by a "
                              f"{type(node).__name__}", node=node.name)
        self._g.nodes[node.name]["obj"] = node
        self.program = None  # (compile lowers a training graph again when it has no program)

    def replace_synapse(self, name: str, synapse: Synapse) -> None:
        src, dst = self._endpoints(name)
        self._g.edges[src, dst, name]["obj"] = synapse
        self.program = None

    def copy(self) -> Graph:
        """A new graph sharing the (immutable) nodes and synapses."""
        g = Graph(self.name)
        g._g = self._g.copy()
        g._synapses = dict(self._synapses)
        g.simulation, g.training, g.schedule = self.simulation, self.training, self.schedule
        g.program = self.program
        if self.program is not None and self.program.quant is not None:
            # fixed-point scales are not carried: they were chosen for this graph's weights, which
            # the copy's user is about to change (re-run quantize)
            from .program import float_program

            g.program = float_program(self.program)
        return g

    @property
    def quant(self) -> Any:
        """The fixed-point scales of the step program (``spidec.program.Quantization``), or None."""
        return None if self.program is None else self.program.quant

    # ----------------------------------------------------------------- queries
    def _endpoints(self, name: str) -> tuple[str, str]:
        try:
            return self._synapses[name]
        except KeyError:
            raise SpidecError(f"no synapse named '{name}'") from None

    def node(self, name: str) -> Node:
        try:
            return self._g.nodes[name]["obj"]
        except KeyError:
            raise SpidecError(f"no node named '{name}'") from None

    @property
    def nodes(self) -> list[Node]:
        return [d["obj"] for _, d in self._g.nodes(data=True)]

    @property
    def inputs(self) -> list[Input]:
        return [n for n in self.nodes if isinstance(n, Input)]

    @property
    def populations(self) -> list[Population]:
        return [n for n in self.nodes if isinstance(n, Population)]

    @property
    def readouts(self) -> list[Readout]:
        return [n for n in self.nodes if isinstance(n, Readout)]

    def synapse(self, name: str) -> Edge:
        src, dst = self._endpoints(name)
        return Edge(name, src, dst, self._g.edges[src, dst, name]["obj"])

    def synapses(self) -> list[Edge]:
        return [self.synapse(name) for name in self._synapses]

    def in_synapses(self, node: str) -> list[Edge]:
        return [e for e in self.synapses() if e.dst == node]

    def out_synapses(self, node: str) -> list[Edge]:
        return [e for e in self.synapses() if e.src == node]

    def __contains__(self, name: object) -> bool:
        return name in self._g or name in self._synapses

    # ----------------------------------------------------------------- validation
    def validate(self) -> Graph:
        """Check the graph is well formed; raise a :class:`SpidecError` naming the node otherwise.

        Checks: inputs have no incoming and readouts no outgoing synapse; every population and
        readout is fed; shapes agree along every synapse; biases have the right shape; every tensor
        is finite; every cycle has a delayed synapse. Returns ``self``.
        """
        for node in self.nodes:
            if isinstance(node, Population):
                self._check_bias(node)
            if isinstance(node, Readout) and node.bias is not None:
                self._check_bias(node)
        for e in self.synapses():
            src, dst = self.node(e.src), self.node(e.dst)
            if isinstance(dst, Input):
                raise SpidecError(f"synapse '{e.name}' ends at input '{dst.name}': inputs take no "
                                  f"current; feed a population instead", node=e.name)
            if isinstance(src, Readout):
                raise SpidecError(f"synapse '{e.name}' starts at readout '{src.name}': readouts are "
                                  f"outputs; read the population that feeds the readout instead",
                                  node=e.name)
            try:
                shapes = e.synapse.shapes(src.shape)
            except SpidecError as err:
                raise SpidecError(f"synapse '{e.name}' ({e.src} {fmt_shape(src.shape)} -> {e.dst}): "
                                  f"{err.message}", node=e.name, hint=err.hint) from None
            if shapes[-1] != dst.shape:
                raise SpidecError(f"synapse '{e.name}' delivers shape {fmt_shape(shapes[-1])} to "
                                  f"'{e.dst}' of shape {fmt_shape(dst.shape)}", node=e.name)
            if e.synapse.dropout and not isinstance(dst, Population):
                raise SpidecError(f"synapse '{e.name}' has dropout but ends at readout '{e.dst}': dropout masks "
                                  "synapses into populations", node=e.name)
            if e.synapse.dropout_bias:
                if dst.bias is None:  # type: ignore[union-attr]
                    raise SpidecError(f"synapse '{e.name}': dropout_bias, but population '{e.dst}' has no bias",
                                      node=e.name)
                if sum(1 for f in self.synapses() if f.dst == e.dst and f.synapse.dropout_bias) > 1:
                    raise SpidecError(f"population '{e.dst}': more than one synapse's dropout mask scales its "
                                      "bias", node=e.dst)
            for i, op in enumerate(e.synapse.ops):
                for tname, t in op.tensors().items():
                    if not np.all(np.isfinite(t)):
                        raise SpidecError(f"synapse '{e.name}', op {i} ({op.kind}): {tname} holds "
                                          f"NaN or inf values", node=e.name)
        for node in self.nodes:
            if isinstance(node, (Population, Readout)) and not any(True for _ in self._g.predecessors(node.name)):
                kind = "population" if isinstance(node, Population) else "readout"
                raise SpidecError(f"{kind} '{node.name}' has no incoming synapse: it would never "
                                  f"receive a current (add a synapse into it or remove it)",
                                  node=node.name)
        undelayed = nx.DiGraph()
        undelayed.add_nodes_from(self._g.nodes)
        undelayed.add_edges_from((e.src, e.dst) for e in self.synapses() if e.synapse.delay == 0)
        try:
            cycle = nx.find_cycle(undelayed)
        except nx.NetworkXNoCycle:
            cycle = None
        if cycle:
            path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
            names = [e.name for e in self.synapses()
                     if e.synapse.delay == 0 and (e.src, e.dst) in set(cycle)]
            raise SpidecError(f"the cycle {path} has no delayed synapse, so a time step has no order",
                              node=cycle[0][0],
                              hint=f"mark its feedback synapse ({', '.join(names)}) with delay=1")
        if self.training is not None:
            self._check_training(self.training)
        return self

    def _check_training(self, t: Training) -> None:
        """The training structure refers to this graph consistently (names, gates, delays)."""
        couples = {c.name: c for c in t.couples}
        of = {c.of: c.name for c in t.couples}
        for c in t.couples:
            if c.name in self:
                raise SpidecError(f"couple '{c.name}' has the name of a node or synapse", node=c.name)
            if not isinstance(self.node(c.of) if c.of in self._g else None, Population):
                raise SpidecError(f"couple '{c.name}' is of '{c.of}', which is not a population", node=c.name)
        if len(couples) != len(t.couples) or len(of) != len(t.couples):
            raise SpidecError("two couples share a name or a population")
        missing = [p.name for p in self.populations if p.name not in of]
        if missing:
            raise SpidecError(f"population(s) {', '.join(missing)} have no couple", node=missing[0])
        for b in t.backward:
            e = self.synapse(b.forward)
            if (b.src, b.dst, b.gate, b.delay) != (of.get(e.dst), of.get(e.src), e.dst, e.synapse.delay):
                raise SpidecError(f"backward synapse '{b.name}' must run {of.get(e.dst)} -> {of.get(e.src)} "
                                  f"gate={e.dst} delay={e.synapse.delay}, the transpose of '{b.forward}'",
                                  node=b.name)
        for inj in t.injections:
            e = self.synapse(inj.forward)
            if (inj.readout, inj.couple) != (e.dst, of.get(e.src)) or not isinstance(self.node(e.dst), Readout):
                raise SpidecError(f"injection through '{inj.forward}' must run {e.dst} -> {of.get(e.src)}",
                                  node=inj.forward)
        slots = self.tensor_slots()
        for u in t.updates:
            if u.tensor not in slots or not slots[u.tensor].learnable:
                raise SpidecError(f"update of '{u.tensor}', which is not a learnable tensor of the graph")

    def _check_bias(self, node: Population | Readout) -> None:
        b = node.bias
        if b is None:
            return
        per_channel = isinstance(node, Population) and len(node.shape) == 3 and b.shape == node.shape[:1]
        if b.shape != node.shape and not per_channel:
            extra = f" or [{node.shape[0]}] (per channel)" if len(node.shape) == 3 else ""
            raise SpidecError(f"bias of '{node.name}' has shape {fmt_shape(b.shape)}, expected "
                              f"{fmt_shape(node.shape)}{extra}", node=node.name)
        if not np.all(np.isfinite(b)):
            raise SpidecError(f"bias of '{node.name}' holds NaN or inf values", node=node.name)

    def step_order(self) -> list[str]:
        """Populations and readouts in the order a time step updates them (topological over the
        undelayed synapses, ties broken by insertion order)."""
        undelayed = nx.DiGraph()
        undelayed.add_nodes_from(self._g.nodes)
        undelayed.add_edges_from((e.src, e.dst) for e in self.synapses() if e.synapse.delay == 0)
        index = {n: i for i, n in enumerate(self._g.nodes)}
        order = nx.lexicographical_topological_sort(undelayed, key=index.__getitem__)
        return [n for n in order if not isinstance(self.node(n), Input)]

    # ----------------------------------------------------------------- tensors
    def tensor_slots(self) -> dict[str, TensorSlot]:
        """Every tensor of the graph by its stable name, in text order."""
        slots: dict[str, TensorSlot] = {}
        for node in self.nodes:
            if isinstance(node, (Population, Readout)) and node.bias is not None:
                slots[f"{node.name}.bias"] = TensorSlot(node.name, None, "bias", True)
        for e in self.synapses():
            counts: dict[str, int] = {}
            for op in e.synapse.ops:
                for f in op.tensors():
                    counts[f] = counts.get(f, 0) + 1
            for i, op in enumerate(e.synapse.ops):
                learn = set(op.learnable())
                for f in op.tensors():
                    tname = f"{e.name}.{f}" if counts[f] == 1 else f"{e.name}.{i}.{f}"
                    slots[tname] = TensorSlot(e.name, i, f, f in learn)
        return slots

    def tensor(self, name: str) -> np.ndarray:
        slot = self.tensor_slots().get(name)
        if slot is None:
            raise SpidecError(f"no tensor named '{name}'")
        if slot.op is None:
            return getattr(self.node(slot.owner), slot.field)
        return getattr(self.synapse(slot.owner).synapse.ops[slot.op], slot.field)

    def parameters(self, learnable_only: bool = True) -> dict[str, np.ndarray]:
        """Named tensors (the learnable ones by default)."""
        return {name: self.tensor(name) for name, slot in self.tensor_slots().items()
                if slot.learnable or not learnable_only}

    def num_parameters(self) -> int:
        return sum(int(t.size) for t in self.parameters().values())

    def with_tensors(self, values: dict[str, Any]) -> Graph:
        """A copy with the named tensors replaced (same shapes required)."""
        slots = self.tensor_slots()
        g = self.copy()
        program = g.program  # (copy already dropped fixed-point scales chosen for the old values)
        for name, value in values.items():
            slot = slots.get(name)
            if slot is None:
                raise SpidecError(f"no tensor named '{name}'; the graph has: {', '.join(slots)}")
            old = self.tensor(name)
            new = np.asarray(value)
            if new.shape != old.shape:
                raise SpidecError(f"tensor '{name}' has shape {fmt_shape(old.shape)}, the new value "
                                  f"{fmt_shape(new.shape)}", node=slot.owner)
            if slot.op is None:
                node = g.node(slot.owner)
                g.replace_node(type(node)(**{**{f.name: getattr(node, f.name) for f in fields(node)},
                                             slot.field: new}))
            else:
                syn = g.synapse(slot.owner).synapse
                ops = list(syn.ops)
                ops[slot.op] = ops[slot.op].replace(**{slot.field: new})
                g.replace_synapse(slot.owner, Synapse(tuple(ops), syn.delay, syn.dropout, syn.dropout_bias))
        g.program = program  # new values, the same structure: the step program still describes it
        return g

    def astype(self, dtype: Any) -> Graph:
        """A copy with every tensor cast to ``dtype`` (e.g. float64 for exact checks)."""
        return self.with_tensors({k: v.astype(dtype) for k, v in self.parameters(False).items()})

    def canonical(self) -> Graph:
        """The same network with names that depend only on its structure: inputs ``in0..`` in order,
        populations ``p0..`` and readouts ``r0..`` in step order, synapses ``s0..`` by (target,
        source, ops). Two frontends' lowerings of one model compare equal after this."""
        order = {n: i for i, n in enumerate(self.step_order())}
        names: dict[str, str] = {}
        for k, node in enumerate(self.inputs):
            names[node.name] = f"in{k}"
        pops = sorted(self.populations, key=lambda n: order[n.name])
        for k, node in enumerate(pops):
            names[node.name] = f"p{k}"
        for k, node in enumerate(sorted(self.readouts, key=lambda n: order[n.name])):
            names[node.name] = f"r{k}"
        edges = sorted(self.synapses(), key=lambda e: (
            (0 if isinstance(self.node(e.dst), Population) else 1), names[e.dst], names[e.src], e.synapse.delay,
            tuple(op.kind for op in e.synapse.ops)))
        for k, e in enumerate(edges):
            names[e.name] = f"s{k}"
        g = Graph("model")
        for node in [*self.inputs, *pops, *sorted(self.readouts, key=lambda n: order[n.name])]:
            values = {f.name: getattr(node, f.name) for f in fields(node)}
            values["name"] = names[node.name]
            g.add(type(node)(**values))
        for e in edges:
            g.add_synapse(names[e.src], names[e.dst], e.synapse.ops, delay=e.synapse.delay, name=names[e.name],
                          dropout=e.synapse.dropout, dropout_bias=e.synapse.dropout_bias)
        return g

    # ----------------------------------------------------------------- comparison and printing
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        if self.name != other.name or list(self._g.nodes) != list(other._g.nodes):
            return False
        if list(self._synapses.items()) != list(other._synapses.items()):
            return False
        if (self.simulation, self.training, self.schedule, self.program) != (
                other.simulation, other.training, other.schedule, other.program):
            return False
        return all(self.node(n) == other.node(n) for n in self._g.nodes) and all(
            a.synapse == b.synapse for a, b in zip(self.synapses(), other.synapses()))

    __hash__ = None  # type: ignore[assignment]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __str__(self) -> str:
        from .text import dumps

        return dumps(self, inline_max=0)[0]

    def __repr__(self) -> str:
        return (f"<Graph {self.name}: {len(self.inputs)} inputs, {len(self.populations)} populations, "
                f"{len(self.readouts)} readouts, {len(self._synapses)} synapses, "
                f"{self.num_parameters():,} parameters>")


__all__ = [
    "Edge",
    "Graph",
    "Input",
    "Neuron",
    "Node",
    "Population",
    "Readout",
    "Synapse",
    "TensorSlot",
    "code_name",
    "fresh_name",
    "values_equal",
]
