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

import hashlib
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import networkx as nx
import numpy as np

from .errors import SpidecError
from .limits import check_elements, check_neurons, size_of
from .ops import LinearOp, Shape, ValueEq, as_tensor, fmt_shape, values_equal
from .training import F32_MAX, Schedule, Simulation, Training, finite_f32

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # (\Z, not $: "net\n" is no name; match() = fullmatch())
MAX_NAME = 128  # characters of a node, synapse or graph name (the C library's file name is lib{graph}.so)
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


def short_name(name: str, limit: int = MAX_NAME) -> str:
    """``name``, or when longer than ``limit`` its head and a hash of the whole (deterministic, distinct
    for distinct names): the frontends' names from a model's long node paths."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[:limit - 9]}_{digest}"


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        shown = repr(name[:60] + "...") if isinstance(name, str) and len(name) > 60 else repr(name)
        raise SpidecError(f"{what} name {shown} is not an identifier (letters, digits and '_', "
                          f"not starting with a digit)")
    if len(name) > MAX_NAME:
        raise SpidecError(f"{what} name {name[:40]!r}... has {len(name)} characters; names have at most {MAX_NAME}")
    return name


def _shape(shape: Iterable[int], what: str) -> Shape:
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise SpidecError(f"{what} shape must be a list of integers, got {shape!r}") from None
    if not out or any(s < 1 for s in out):
        raise SpidecError(f"{what} shape {list(out)} must be a non-empty list of positive sizes")
    check_neurons(size_of(out), f"{what} of shape {fmt_shape(out)}")  # (before anything of that size exists)
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
        # what the queries derive from the structure (tensor slots, synapse positions), rebuilt after
        # a change through the methods below: passes and backends ask for every tensor by name, and
        # a per-call rebuild made compiling quadratic in the graph's size
        self._derived: dict[str, Any] = {}
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
        self._derived.clear()
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
            base = short_name(f"{src}_{dst}", MAX_NAME - 8)
            name, k = base, 1
            while name in self._g or name in self._synapses:
                k += 1
                name = f"{base}_{k}"
        _check_name(name, "synapse")
        self._claim(name)
        syn = Synapse(tuple([ops] if isinstance(ops, LinearOp) else ops), delay, dropout, dropout_bias)
        self._g.add_edge(src, dst, key=name, obj=syn)
        self._synapses[name] = (src, dst)
        self._derived.clear()
        self.program = None
        return name

    def _refuse_edit_of_training_graph(self, what: str) -> None:
        if self.training is not None:  # (its couples, backward synapses and updates name what is removed)
            raise SpidecError(f"cannot remove {what} from '{self.name}': the graph went through the passes, and "
                              "its training structure refers to the forward graph",
                              hint="edit the forward graph (spidec.export.forward_graph(g), or before the passes) "
                                   "and run the passes again")

    def remove_synapse(self, name: str) -> Synapse:
        """Remove the synapse ``name``; returns it. The graph may then need :meth:`validate` (a node
        left without input is refused there). Graphs after the spide pass refuse (edit the forward graph)."""
        src, dst = self._endpoints(name)
        self._refuse_edit_of_training_graph(f"synapse '{name}'")
        syn = self.synapse(name).synapse
        self._g.remove_edge(src, dst, key=name)
        del self._synapses[name]
        self._derived.clear()
        self.schedule = None  # (a step order computed with the synapse)
        self.program = None
        return syn

    def remove_node(self, name: str) -> list[str]:
        """Remove the node ``name`` and every synapse into or out of it; returns those synapses' names."""
        self.node(name)
        self._refuse_edit_of_training_graph(f"node '{name}'")
        gone = [s for s, ends in self._synapses.items() if name in ends]
        for s in gone:
            self.remove_synapse(s)
        self._g.remove_node(name)
        self._derived.clear()
        return gone

    def _check_index(self) -> None:
        """The synapse index agrees with the networkx graph: an edge or node removed or added through
        ``g.nx`` behind the Graph's back is one clear error, not a KeyError later."""
        edges = {k: (u, v) for u, v, k in self._g.edges(keys=True)}
        fix = "edit the graph through its methods (add_synapse, remove_synapse, remove_node), not g.nx"
        for name, ends in self._synapses.items():
            if edges.get(name) != ends:
                raise SpidecError(f"synapse '{name}' ({ends[0]} -> {ends[1]}) is gone from g.nx: the graph was edited "
                                  "through g.nx inconsistently", node=name, hint=fix)
        for name, (u, v) in edges.items():
            if name not in self._synapses:
                raise SpidecError(f"g.nx holds an edge '{name}' ({u} -> {v}) that is no synapse of the graph: it was "
                                  "edited through g.nx inconsistently", node=name, hint=fix)
            if not isinstance(self._g.edges[u, v, name].get("obj"), Synapse):
                raise SpidecError(f"synapse '{name}' has no Synapse in g.nx (edge attribute 'obj')", node=name,
                                  hint=fix)
        for n, data in self._g.nodes(data=True):
            if not isinstance(data.get("obj"), (Input, Population, Readout)) or data["obj"].name != n:
                raise SpidecError(f"g.nx holds a node '{n}' without its Input/Population/Readout (node attribute "
                                  "'obj'): the graph was edited through g.nx inconsistently", node=str(n), hint=fix)

    def replace_node(self, node: Node) -> None:
        """Replace the node of the same name (same kind)."""
        old = self.node(node.name)
        if type(old) is not type(node):
            raise SpidecError(f"cannot replace {type(old).__name__} '{node.name}' by a "
                              f"{type(node).__name__}", node=node.name)
        self._g.nodes[node.name]["obj"] = node
        self._derived.clear()
        self.program = None  # (compile lowers a training graph again when it has no program)

    def replace_synapse(self, name: str, synapse: Synapse) -> None:
        src, dst = self._endpoints(name)
        self._g.edges[src, dst, name]["obj"] = synapse
        self._derived.clear()
        self.program = None

    def copy(self) -> Graph:
        """A new graph sharing the (immutable) nodes and synapses."""
        g = Graph(self.name)
        g._g = self._g.copy()
        g._synapses = dict(self._synapses)
        g._derived = dict(self._derived)  # the same structure (the values are never mutated)
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
        try:
            return Edge(name, src, dst, self._g.edges[src, dst, name]["obj"])
        except KeyError:
            self._check_index()  # (names what g.nx lost)
            raise

    def synapses(self) -> list[Edge]:
        return [self.synapse(name) for name in self._synapses]

    def _position(self) -> dict[str, int]:
        pos = self._derived.get("position")
        if pos is None:
            pos = self._derived["position"] = {name: k for k, name in enumerate(self._synapses)}
        return pos

    def _edges(self, keys: Iterable[str]) -> list[Edge]:
        return [self.synapse(name) for name in sorted(keys, key=self._position().__getitem__)]

    def in_synapses(self, node: str) -> list[Edge]:
        """The synapses into ``node``, in text order."""
        return self._edges(k for _, _, k in self._g.in_edges(node, keys=True)) if node in self._g else []

    def out_synapses(self, node: str) -> list[Edge]:
        """The synapses out of ``node``, in text order."""
        return self._edges(k for _, _, k in self._g.out_edges(node, keys=True)) if node in self._g else []

    def __contains__(self, name: object) -> bool:
        return name in self._g or name in self._synapses

    # ----------------------------------------------------------------- validation
    def validate(self) -> Graph:
        """Check the graph is well formed; raise a :class:`SpidecError` naming the node otherwise.

        Checks: inputs have no incoming and readouts no outgoing synapse; every population and
        readout is fed; shapes agree along every synapse; biases have the right shape; every tensor
        is finite; every cycle has a delayed synapse. Returns ``self``.
        """
        self._check_index()
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
                if sum(1 for f in self.in_synapses(e.dst) if f.synapse.dropout_bias) > 1:
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
        self._check_size()
        if self.training is not None:
            self._check_training(self.training)
        return self

    def _check_size(self) -> None:
        """The model within :mod:`spidec.limits`: its neurons and its tensors' elements together."""
        check_neurons(sum(size_of(n.shape) for n in self.nodes), f"model '{self.name}' (all its nodes together)")
        check_elements(sum(int(t.size) for t in self.parameters(learnable_only=False).values()),
                       f"model '{self.name}' (all its tensors together)")

    def _check_training(self, t: Training) -> None:
        """The training structure is exactly the one the spide pass derives from this graph, up to
        what a user may set (couple thresholds and leaks, ``T_back``, ``sf``, the optimiser) and the
        order of its statements: one couple per population, one backward synapse per synapse
        between populations, one injection per synapse from a population into a readout and one
        update per learnable tensor, each with the names, gate and delay its synapse or tensor
        dictates; then the schedule. A structure that does not fit its graph is refused: the
        backends trust it (a weight rule on another synapse's tensor would index past its buffer)."""
        taken = set(self._g.nodes) | set(self._synapses)
        pops = {p.name: p for p in self.populations}
        of: dict[str, str] = {}  # population -> its couple
        for c in t.couples:
            self._claim_training_name(c.name, "couple", taken)
            if c.of not in pops:
                raise SpidecError(f"couple '{c.name}' is of '{c.of}', which is not a population", node=c.name)
            if c.of in of:
                raise SpidecError(f"population '{c.of}' has two couples, '{of[c.of]}' and '{c.name}'", node=c.name)
            of[c.of] = c.name
            _f32_at(c.S, f"couple '{c.name}': its spike size 2 vth", c.name)
        missing = [p for p in pops if p not in of]
        if missing:
            raise SpidecError(f"population(s) {', '.join(missing)} have no couple", node=missing[0],
                              hint=f"add a line: couple {missing[0]}_couple: {missing[0]} vth=0.5")
        self._check_f32_settings()
        edges = self.synapses()
        inner = {e.name: e for e in edges if e.src in pops and e.dst in pops}
        seen: dict[str, str] = {}
        for b in t.backward:
            self._claim_training_name(b.name, "backward synapse", taken)
            e = inner.get(b.forward)
            if e is None:
                why = "joins no two populations (only those have a transpose between couples)" \
                    if b.forward in self._synapses else "is no synapse of the graph"
                raise SpidecError(f"backward synapse '{b.name}' is the transpose of '{b.forward}', which {why}",
                                  node=b.name)
            if b.forward in seen:
                raise SpidecError(f"synapse '{b.forward}' has two backward synapses, '{seen[b.forward]}' and "
                                  f"'{b.name}'", node=b.name)
            seen[b.forward] = b.name
            if (b.src, b.dst, b.gate, b.delay) != (of[e.dst], of[e.src], e.dst, e.synapse.delay):
                raise SpidecError(f"backward synapse '{b.name}' must run {of[e.dst]} -> {of[e.src]} "
                                  f"gate={e.dst} delay={e.synapse.delay}, the transpose of '{b.forward}'",
                                  node=b.name)
        missing = [n for n in inner if n not in seen]
        if missing:
            e = inner[missing[0]]
            raise SpidecError(f"synapse '{e.name}' has no backward synapse (the transpose between couples)",
                              node=e.name, hint=f"add a line: backward {e.name}_T: {of[e.dst]} -> {of[e.src]} "
                              f"gate={e.dst}{' delay=1' if e.synapse.delay else ''} = transpose({e.name})")
        outs = {e.name: e for e in edges if e.src in pops and isinstance(self.node(e.dst), Readout)}
        injected: set[str] = set()
        for inj in t.injections:
            e = outs.get(inj.forward)
            if e is None:
                raise SpidecError(f"injection through '{inj.forward}': it must be a synapse from a population "
                                  f"into a readout", node=inj.forward if inj.forward in self else None)
            if inj.forward in injected:
                raise SpidecError(f"the loss gradient is injected twice through '{inj.forward}'", node=inj.forward)
            injected.add(inj.forward)
            if (inj.readout, inj.couple) != (e.dst, of[e.src]):
                raise SpidecError(f"injection through '{inj.forward}' must run {e.dst} -> {of[e.src]}",
                                  node=inj.forward)
        missing = [n for n in outs if n not in injected]
        if missing:
            e = outs[missing[0]]
            raise SpidecError(f"synapse '{e.name}' into readout '{e.dst}' has no loss injection", node=e.name,
                              hint=f"add a line: inject {e.dst} -> {of[e.src]} = transpose({e.name})")
        self._check_updates(t, of)
        if self.schedule is not None:
            self._check_schedule(t, self.schedule, of)

    @staticmethod
    def _claim_training_name(name: str, what: str, taken: set[str]) -> None:
        if name in taken:
            raise SpidecError(f"{what} '{name}' has the name of a node, synapse or couple", node=name)
        taken.add(name)

    def _check_f32_settings(self) -> None:
        """Every number a training graph hands the programs is a finite float32 (they print it as
        a float32 constant: an overflow would read ``inf``): neurons, scalar factors, tensors."""
        for p in self.populations:
            n = p.neuron
            for what, v in (("vth", n.vth), ("u_rest", n.u_rest), ("leak", n.leak), ("reset vth - u_rest", n.V)):
                _f32_at(v, f"population '{p.name}': neuron {what}", p.name)
        wide = [(f"bias of '{n.name}'", n.name, n.bias) for n in self.nodes if getattr(n, "bias", None) is not None]
        for e in self.synapses():
            for i, op in enumerate(e.synapse.ops):
                for arg in op.args:
                    v = getattr(op, arg.name)
                    if isinstance(v, float):
                        _f32_at(v, f"synapse '{e.name}', op {i} ({op.kind}): {arg.name}", e.name)
                wide += [(f"synapse '{e.name}', op {i} ({op.kind}): {k}", e.name, v) for k, v in op.tensors().items()]
        for what, node, v in wide:
            if v.size and v.dtype.itemsize > 4 and float(np.max(np.abs(v))) > F32_MAX:
                raise SpidecError(f"{what} holds values beyond the float32 range (|x| > {F32_MAX:.4g}) the programs "
                                  "compute in", node=node)

    def _check_updates(self, t: Training, of: dict[str, str]) -> None:
        """One update per learnable tensor, of the kind and with the names its place dictates."""
        slots = self.tensor_slots()
        want: dict[str, tuple[str, str | None, str | None, str | None]] = {}  # tensor: (kind, synapse, post, gate)
        for tname, slot in slots.items():
            if not slot.learnable:
                continue
            if slot.op is None:  # a bias
                node = slot.owner
                want[tname] = ("bias", None, of[node], node) if node in of else ("delta_bias", None, node, None)
                continue
            dst = self._synapses[slot.owner][1]
            want[tname] = ("local", slot.owner, of[dst], dst) if dst in of else ("delta", slot.owner, dst, None)
        done: set[str] = set()
        for u in t.updates:
            if u.tensor not in want:
                why = "is not learnable (its op has trainable=false)" if u.tensor in slots else \
                    "is no tensor of the graph"
                raise SpidecError(f"update of '{u.tensor}', which {why}")
            if u.tensor in done:
                raise SpidecError(f"'{u.tensor}' has two update rules; a tensor learns by one")
            done.add(u.tensor)
            if (u.kind, u.synapse, u.post, u.gate) != want[u.tensor]:
                raise SpidecError(f"update of '{u.tensor}' must be {_update_text(*want[u.tensor])}, not "
                                  f"{_update_text(u.kind, u.synapse, u.post, u.gate)}")
        missing = [n for n in want if n not in done]
        if missing:
            raise SpidecError(f"learnable tensor(s) {', '.join(missing)} have no update rule",
                              hint=f"add a line: update @{missing[0]} = {_update_text(*want[missing[0]])} (to keep a "
                              "weight fixed, give its op trainable=false)")

    def _check_schedule(self, t: Training, s: Schedule, of: dict[str, str]) -> None:
        """The schedule lists every population (couple) once, in an order where whatever a node
        reads in the same step comes before it, and exactly the nodes whose last-step spikes a
        delayed synapse reads."""
        edges = self.synapses()
        pops = [p.name for p in self.populations]
        _check_listing(s.forward, pops, "forward_order", "population")
        pos = {n: i for i, n in enumerate(s.forward)}
        for e in edges:
            if not e.synapse.delay and e.src in pos and e.dst in pos and pos[e.src] > pos[e.dst]:
                raise SpidecError(f"schedule forward_order puts '{e.dst}' before '{e.src}', which feeds it in the "
                                  f"same step through '{e.name}'", hint="run the schedule pass again")
        _check_listing(s.backward, list(of.values()), "backward_order", "couple")
        pos = {n: i for i, n in enumerate(s.backward)}
        for b in t.backward:
            if not b.delay and pos[b.src] > pos[b.dst]:
                raise SpidecError(f"schedule backward_order puts '{b.dst}' before '{b.src}', which feeds it in the "
                                  f"same step through '{b.name}'", hint="run the schedule pass again")
        sends = {e.src for e in edges if e.synapse.delay}
        _check_listing(s.delayed, [p for p in pops if p in sends], "delayed", "population read by a delayed synapse",
                       exact=True)
        sends = {b.src for b in t.backward if b.delay}
        _check_listing(s.delayed_back, [c for c in of.values() if c in sends], "delayed_back",
                       "couple read by a delayed backward synapse", exact=True)

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
        return dict(self._slots())

    def _slots(self) -> dict[str, TensorSlot]:
        """:meth:`tensor_slots`, computed once per structure (not to be mutated)."""
        slots = self._derived.get("slots")
        if slots is None:
            slots = self._derived["slots"] = self._compute_slots()
        return slots

    def _compute_slots(self) -> dict[str, TensorSlot]:
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
        slot = self._slots().get(name)
        if slot is None:
            raise SpidecError(f"no tensor named '{name}'")
        if slot.op is None:
            return getattr(self.node(slot.owner), slot.field)
        return getattr(self.synapse(slot.owner).synapse.ops[slot.op], slot.field)

    def parameters(self, learnable_only: bool = True) -> dict[str, np.ndarray]:
        """Named tensors (the learnable ones by default)."""
        return {name: self.tensor(name) for name, slot in self._slots().items()
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


def _f32_at(value: float, what: str, node: str) -> None:
    try:
        finite_f32(value, what)
    except SpidecError as e:
        raise SpidecError(e.message, node=node) from None  # (the text form names the node's line)


def _update_text(kind: str, synapse: str | None, post: str | None, gate: str | None) -> str:
    args = ", ".join(f"{k}={v}" for k, v in (("synapse", synapse), ("post", post), ("gate", gate)) if v)
    return f"{kind}({args})"


def _check_listing(names: tuple[str, ...], want: list[str], what: str, kind: str, exact: bool = False) -> None:
    """``names`` (a schedule list) holds each of ``want`` once and nothing else."""
    listed = f"schedule {what}=[{', '.join(names)}]"
    seen: set[str] = set()
    wanted = set(want)
    for n in names:
        if n in seen:
            raise SpidecError(f"{listed} lists '{n}' twice", hint="run the schedule pass again")
        if n not in wanted:
            raise SpidecError(f"{listed} lists '{n}', which is no {kind}" + (f"; it must list exactly "
                              f"[{', '.join(want)}]" if exact else ""), hint="run the schedule pass again")
        seen.add(n)
    missing = [n for n in want if n not in seen]
    if missing:
        raise SpidecError(f"{listed} misses {', '.join(repr(n) for n in missing)}", hint="run the schedule pass again")


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
    "short_name",
    "values_equal",
]
