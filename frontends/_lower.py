"""Lowering of a traced model (one step of the equilibrium map) into the IR, shared by the ONNX and
PyTorch frontends.

A frontend walks its model's ops in order and keeps, for every tensor, either a ``Const`` (weights,
shapes) or an ``Affine`` value: a sum of *terms* (a source node's rates through a chain of linear
ops) plus a constant offset, per sample. Linear ops extend the chains; a ``clamp(., 0, 1)`` turns
an ``Affine`` into a new population whose incoming synapses are the terms and whose bias is the
offset. At the end, each state input ``z`` is closed into a delayed loop from the population that
produces its paired output ``z_next``; the other outputs become readouts.

Everything that is not linear between populations is refused with a :class:`SpidecError` naming
the model's node, the op, and what to write instead.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SpidecError, SpidecWarning
from ..ir import MAX_NAME, Graph, Neuron, fresh_name, short_name
from ..limits import check_elements, check_neurons, size_of
from ..ops import AvgPool2d, Conv2d, ConvTranspose2d, Dense, Flatten, LinearOp, Pad, Reshape, Scale, Shape, fmt_shape


@dataclass(frozen=True)
class Term:
    """A source's rates (or data) through a chain of linear ops."""

    src: str
    ops: tuple[LinearOp, ...]
    label: str | None = None  # name hint for the synapse (the weight's name in the model)
    dropout: float = 0.0  # a variational dropout mask on the synapse's output
    dropout_bias: bool = False  # the mask also scales the destination's bias (dropout over W x + b)


@dataclass(frozen=True)
class Affine:
    """``sum(term.ops(term.src)) + offset`` with per-sample ``shape``."""

    shape: Shape
    terms: tuple[Term, ...]
    offset: np.ndarray | None = None  # full per-sample shape
    channel_offset: bool = False  # the offset is one value per channel (a conv bias), keep it so
    offset_dropout: bool = False  # the offset sits under a term's dropout mask


@dataclass(frozen=True)
class Const:
    value: np.ndarray


@dataclass(frozen=True)
class Pending:
    """A value that is only allowed as a model output (Softmax on logits) or as part of a clamp
    written as Min/Max; anything else using it is refused."""

    kind: str  # "softmax" | "min1" | "max0"
    inner: Affine
    node: str


Value = Affine | Const | Pending


def sanitize(name: str, fallback: str = "n") -> str:
    """An IR identifier from a model's name (``/fc1/Gemm`` -> ``fc1_Gemm``, ``fc1.weight`` -> ``fc1``)."""
    name = re.sub(r"\.(weight|bias)$", "", name)
    out = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")
    if not out:
        out = fallback
    if out[0].isdigit():
        out = f"{fallback}_{out}"
    return short_name(out, MAX_NAME - 8)  # (room for fresh_name's _2, _3 ...)


def unique_name(hint: str, fallback: str, taken: set[str]) -> str:
    """A valid IR name from ``hint`` (``fallback`` when nothing usable is left), ``_2``, ``_3`` ...
    appended until it is not in ``taken``; it is added to ``taken``."""
    return fresh_name(sanitize(hint, fallback), taken)


def _channel_constant(offset: np.ndarray) -> bool:
    return offset.ndim == 3 and bool(np.all(offset == offset[:, :1, :1]))


@dataclass
class Lowering:
    """Builds the IR while a frontend walks its model. ``where(node)`` texts name the model's node
    in messages (e.g. ``node '/fc1/Gemm' (Gemm)``)."""

    graph_name: str
    source: str  # file or module name, for messages
    dtype: Any = np.float32
    graph: Graph = field(init=False)
    states: dict[str, Shape] = field(default_factory=dict)
    _names: set[str] = field(default_factory=set)
    _pops: dict[str, tuple[Affine, str]] = field(default_factory=dict)  # name -> (drive, where)

    def __post_init__(self) -> None:
        self.graph = Graph(sanitize(self.graph_name, "model"))

    # ------------------------------------------------------------- errors
    def error(self, where: str, message: str, hint: str | None = None) -> SpidecError:
        return SpidecError(f"{where}: {message}", file=self.source, hint=hint)

    def warn(self, where: str, message: str) -> None:
        warnings.warn(f"{self.source}: {where}: {message}", SpidecWarning, stacklevel=3)

    def unique(self, hint: str, fallback: str) -> str:
        return unique_name(hint, fallback, self._names)

    # ------------------------------------------------------------- sizes (spidec.limits), before numpy allocates
    def check_signal(self, shape: Any, where: str) -> None:
        """A signal of per-sample ``shape`` (what a population of it would hold) within the neuron limit."""
        try:
            check_neurons(size_of(shape), f"its output of shape {fmt_shape(tuple(shape))}")
        except SpidecError as e:
            raise self.error(where, e.message, e.hint) from None

    def check_const(self, shape: Any, where: str) -> None:
        """A constant of ``shape`` (about to be computed) within the parameter limit."""
        try:
            check_elements(size_of(shape), f"its constant result of shape {fmt_shape(tuple(shape))}")
        except SpidecError as e:
            raise self.error(where, e.message, e.hint) from None

    def check_broadcast(self, where: str, *values: Any) -> None:
        """The broadcast of constant ``values`` within the parameter limit."""
        try:
            shape = np.broadcast_shapes(*(np.shape(v) for v in values))
        except ValueError:
            return  # (numpy's own error follows: the node's operands do not fit)
        self.check_const(shape, where)

    # ------------------------------------------------------------- sources
    def add_input(self, name: str, shape: Shape) -> Affine:
        node = self.unique(name, "x")
        self.graph.add_input(node, shape)
        return Affine(tuple(shape), (Term(node, ()),))

    def add_state(self, name: str, shape: Shape) -> Affine:
        """A state input: resolved at :meth:`finish` to the population producing its output."""
        key = f"state:{name}"
        self.states[name] = tuple(shape)
        return Affine(tuple(shape), (Term(key, ()),))

    # ------------------------------------------------------------- algebra
    def expect_affine(self, v: Value, where: str, what: str = "input") -> Affine:
        if isinstance(v, Affine):
            return v
        if isinstance(v, Pending):
            if v.kind == "softmax":
                raise self.error(where, f"uses the output of {v.node} (Softmax) inside the network; a softmax is "
                                 "not a neuron", hint="apply softmax outside the model: spidec's readout trains "
                                 "with cross-entropy on the logits")
            raise self.error(where, f"uses a half-written clamp from {v.node}; a population is clamp(x, 0, 1)",
                             hint="write Clip(0, 1) / torch.clamp(x, 0, 1) / nn.Hardtanh(0, 1)")
        raise self.error(where, f"its {what} is a constant; spidec needs it to depend on the network's inputs")

    def linear(self, v: Value, op: LinearOp, where: str, label: str | None = None) -> Affine:
        a = self.expect_affine(v, where)
        if any(t.dropout for t in a.terms):
            raise self.error(where, f"applies {op.kind} after a Dropout; spidec's dropout masks a synapse's output, so "
                             "it must come after the synapse's last linear op", hint="move the Dropout after "
                             "this op (directly before the sum or the clamp)")
        try:
            shape = tuple(op.shape_out(a.shape))
        except SpidecError as e:
            raise self.error(where, e.message, e.hint) from None
        self.check_signal(shape, where)
        terms = tuple(Term(t.src, (*t.ops, op), t.label or label) for t in a.terms)
        offset, channel = None, False
        if a.offset is not None:
            offset = op.apply(a.offset[None])[0]
            channel = a.channel_offset and len(shape) == 3 and _channel_constant(offset)
        return Affine(shape, terms, offset, channel)

    def add(self, a: Value, b: Value, where: str) -> Value:
        if isinstance(a, Const) and isinstance(b, Const):
            self.check_broadcast(where, a.value, b.value)
            return Const(a.value + b.value)
        if isinstance(a, Const):
            a, b = b, a
        a = self.expect_affine(a, where)
        if isinstance(b, Const):
            return self.add_offset(a, b.value, where)
        b = self.expect_affine(b, where)
        if (a.offset_dropout and b.offset is not None) or (b.offset_dropout and a.offset is not None):
            raise self.error(where, "adds a bias to a dropped-out biased term; spidec can mask a population's "
                             "bias only when all of it sits under one Dropout", hint="give only one of the "
                             "summed layers a bias")
        if a.shape != b.shape:
            raise self.error(where, f"adds shapes {fmt_shape(a.shape)} and {fmt_shape(b.shape)}; spidec adds "
                             f"currents of equal shape only")
        if a.offset is None:
            offset, channel = b.offset, b.channel_offset
        elif b.offset is None:
            offset, channel = a.offset, a.channel_offset
        else:
            offset, channel = a.offset + b.offset, a.channel_offset and b.channel_offset
        return Affine(a.shape, a.terms + b.terms, offset, channel, a.offset_dropout or b.offset_dropout)

    def dropout(self, v: Value, p: float, where: str) -> Value:
        """Variational dropout (training mode) on a synapse's output: the SPIDE authors' dropout on
        a layer's output (``W x + b``: the mask scales the bias too)."""
        if not 0.0 <= p < 1.0:
            raise self.error(where, f"dropout probability {p} is outside [0, 1)")
        if p == 0.0 or isinstance(v, Const):
            return v
        a = self.expect_affine(v, where)
        if len(a.terms) != 1:
            raise self.error(where, f"drops out a sum of {len(a.terms)} synapses; spidec masks one synapse's output "
                             "(as the SPIDE authors' dropout masks one layer's output)",
                             hint="apply a Dropout to each linear map before summing")
        t = a.terms[0]
        if t.dropout:
            raise self.error(where, "applies a second Dropout to the same synapse", hint="use one Dropout")
        term = Term(t.src, t.ops, t.label, p, a.offset is not None)
        return Affine(a.shape, (term,), a.offset, a.channel_offset, a.offset is not None)

    def per_sample(self, c: np.ndarray, shape: Shape, where: str, what: str) -> np.ndarray:
        """A constant operand broadcast against ``[B, *shape]``, without its batch axis."""
        c = np.asarray(c)
        if c.ndim == len(shape) + 1:
            if c.shape[0] != 1:
                raise self.error(where, f"its constant {what} varies over the batch (shape {fmt_shape(c.shape)})")
            c = c[0]
        try:
            out = np.broadcast_shapes(c.shape, shape)
        except ValueError:
            out = None
        if out != tuple(shape):
            raise self.error(where, f"its constant {what} of shape {fmt_shape(c.shape)} does not broadcast to "
                             f"the signal's shape {fmt_shape(shape)}")
        return c

    def add_offset(self, a: Affine, c: np.ndarray, where: str) -> Affine:
        if a.offset_dropout:
            raise self.error(where, "adds a constant to a dropped-out biased term; spidec can mask a population's "
                             "bias only when all of it sits under one Dropout")
        c = self.per_sample(c, a.shape, where, "addend")
        full = np.broadcast_to(c.astype(self.dtype), a.shape)
        channel = len(a.shape) == 3 and c.ndim == 3 and c.shape[1:] == (1, 1)
        if a.offset is None:
            return Affine(a.shape, a.terms, np.array(full), channel)
        return Affine(a.shape, a.terms, a.offset + full, a.channel_offset and channel)

    def mul(self, a: Value, b: Value, where: str) -> Value:
        """A product: linear only when one factor is a constant."""
        if isinstance(a, Const) and isinstance(b, Const):
            self.check_broadcast(where, a.value, b.value)
            return Const(a.value * b.value)
        if isinstance(a, Const):
            a, b = b, a
        if not isinstance(b, Const):
            raise self.error(where, "multiplies two signals; only linear ops (products with constants) may stand "
                             "between populations")
        return self.scale(a, b.value, where)

    def scale(self, v: Value, c: Any, where: str) -> Value:
        if isinstance(v, Const):
            self.check_broadcast(where, v.value, c)
            return Const(v.value * c)
        a = self.expect_affine(v, where)
        c = np.asarray(c, dtype=np.float64)
        if c.size == 1:
            factor: Any = float(c.reshape(()))
        else:
            factor = self.per_sample(c, a.shape, where, "factor").astype(self.dtype)
        return self.linear(a, Scale(factor), where)

    # ------------------------------------------------------------- layers both frontends share
    def dense(self, v: Value, weight: np.ndarray, bias: np.ndarray | None, where: str,
              label: str | None = None) -> Affine:
        """``x @ weight.T + bias`` with ``weight [out, in]`` on samples of shape ``[in]``."""
        a = self.expect_affine(v, where)
        if weight.ndim != 2 or len(a.shape) != 1:
            raise self.error(where, f"applies a weight of shape {fmt_shape(weight.shape)} to samples of shape "
                             f"{fmt_shape(a.shape)}; spidec reads linear layers on [batch, n]",
                             hint="flatten before the linear layer")
        out = self.linear(a, Dense(np.ascontiguousarray(weight)), where, label)
        return out if bias is None else self.add_offset(out, bias, where)

    def conv2d(self, v: Value, weight: np.ndarray, bias: np.ndarray | None, stride: Any,
               pads: tuple[int, int, int, int], where: str, label: str | None = None) -> Affine:
        """2-D convolution with ``pads = (top, left, bottom, right)``; asymmetric pads become a
        ``pad`` op in front of a symmetrically padded conv."""
        a = self.expect_affine(v, where)
        if weight.ndim != 4 or len(a.shape) != 3:
            raise self.error(where, f"applies a conv weight of shape {fmt_shape(weight.shape)} to samples of "
                             f"shape {fmt_shape(a.shape)}; spidec reads 2-D convolutions on [C, H, W]")
        top, left, bottom, right = pads
        sym = (min(top, bottom), min(left, right))
        extra = ((0, 0), (top - sym[0], bottom - sym[0]), (left - sym[1], right - sym[1]))
        if any(p for pair in extra for p in pair):
            a = self.linear(a, Pad(extra), where)
        out = self.linear(a, Conv2d(weight, stride, sym), where, label)
        return out if bias is None else self.add_offset(out, np.asarray(bias).reshape(-1, 1, 1), where)

    def conv_transpose2d(self, v: Value, weight: np.ndarray, bias: np.ndarray | None, stride: Any,
                         padding: Any, output_padding: Any, where: str, label: str | None = None) -> Affine:
        a = self.expect_affine(v, where)
        if weight.ndim != 4 or len(a.shape) != 3:
            raise self.error(where, "spidec reads 2-D transposed convolutions on [C, H, W]")
        try:
            op = ConvTranspose2d(weight, stride, padding, output_padding)
        except SpidecError as e:
            raise self.error(where, e.message, e.hint) from None
        out = self.linear(a, op, where, label)
        return out if bias is None else self.add_offset(out, np.asarray(bias).reshape(-1, 1, 1), where)

    def avgpool2d(self, v: Value, kernel: Any, stride: Any, padding: Any, count_include_pad: bool,
                  where: str) -> Affine:
        a = self.expect_affine(v, where)
        if len(a.shape) != 3:
            raise self.error(where, f"pools samples of shape {fmt_shape(a.shape)}; spidec reads 2-D average "
                             "pooling on [C, H, W]")
        try:
            op = AvgPool2d(kernel, stride, padding, count_include_pad)
        except SpidecError as e:
            raise self.error(where, e.message, e.hint) from None
        return self.linear(a, op, where)

    def reshape(self, v: Value, target: Any, where: str) -> Affine:
        """Reshape to ``target`` given with its batch dimension first (-1, 0 or any size: the batch
        stays dimension 0); ``0`` copies the input's size, one ``-1`` is inferred."""
        a = self.expect_affine(v, where)
        target = [int(t) for t in target]
        if len(target) < 2:
            raise self.error(where, f"reshapes to {target}, which merges the batch dimension into the sample",
                             hint="keep dimension 0 as the batch: x.reshape(x.shape[0], -1)")
        per = [a.shape[i] if t == 0 and i < len(a.shape) else t for i, t in enumerate(target[1:])]
        size = math.prod(a.shape)
        if per.count(-1) > 1:
            raise self.error(where, f"reshape target {target} has more than one unknown size")
        if -1 in per:
            known = math.prod(p for p in per if p != -1)
            if known == 0 or size % known:
                raise self.error(where, f"cannot reshape a sample of shape {list(a.shape)} to {target[1:]}")
            per[per.index(-1)] = size // known
        if math.prod(per) != size:
            raise self.error(where, f"reshapes a sample of {size} values to {per}; the batch dimension must "
                             "stay dimension 0", hint="reshape with x.reshape(x.shape[0], ...)")
        return self._to_shape(a, tuple(per), where)

    def flatten(self, v: Value, start_dim: int, where: str) -> Affine:
        a = self.expect_affine(v, where)
        if start_dim < 0:
            start_dim += len(a.shape) + 1
        if start_dim != 1:
            raise self.error(where, f"flattens from dimension {start_dim}; spidec keeps dimension 0 as the batch "
                             "and flattens the rest", hint="use torch.flatten(x, 1) / Flatten(axis=1)")
        return self._to_shape(a, (math.prod(a.shape),), where)

    def _to_shape(self, a: Affine, shape: tuple[int, ...], where: str) -> Affine:
        if shape == a.shape:
            return a
        return self.linear(a, Flatten() if len(shape) == 1 else Reshape(shape), where)

    def batchnorm(self, v: Value, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray,
                  eps: float, where: str) -> Affine:
        """Inference batch norm as a per-channel scale and offset; the scale is folded into the
        preceding conv/linear weight when the synapse is built (see :func:`simplify`)."""
        a = self.expect_affine(v, where)
        s = np.asarray(scale, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
        t = np.asarray(bias, np.float64) - np.asarray(mean, np.float64) * s
        if s.shape != (a.shape[0],):
            raise self.error(where, f"normalises {s.shape[0] if s.ndim else 1} channels of samples shaped "
                             f"{fmt_shape(a.shape)}")
        shape = (-1,) + (1,) * (len(a.shape) - 1)
        out = self.expect_affine(self.scale(a, s.reshape(shape), where), where)
        return self.add_offset(out, t.reshape(shape), where)

    # ------------------------------------------------------------- populations
    def population(self, v: Value, name_hint: str, where: str, neuron: Neuron | None = None) -> Affine:
        a = self.expect_affine(v, where)
        if not a.terms:
            raise self.error(where, "clamps a constant; a population needs an input current")
        name = self.unique(name_hint, "p")
        self._pops[name] = (a, where)
        return Affine(a.shape, (Term(name, ()),))

    def rates_of(self, v: Value) -> str | None:
        """The population whose rates ``v`` is exactly (a clamp's output, unchanged), or None."""
        if isinstance(v, Affine) and len(v.terms) == 1 and not v.terms[0].ops and v.offset is None \
                and v.terms[0].src in self._pops:
            return v.terms[0].src
        return None

    def pending(self, kind: str, v: Value, where: str) -> Pending:
        return Pending(kind, self.expect_affine(v, where), where)

    # ------------------------------------------------------------- finishing
    def finish(self, outputs: dict[str, Value], state_pairs: dict[str, str], *, output_order: list[str]) -> Graph:
        """Close the state loops, add populations, synapses and readouts; return the validated IR.

        ``state_pairs`` maps a state input to the output that feeds it back.
        """
        state_pop: dict[str, str] = {}
        for s, out in state_pairs.items():
            if s not in self.states:
                raise self.error(f"state pairing {s}:{out}", f"'{s}' is not an input of the model")
            if out not in outputs:
                raise self.error(f"state input '{s}'", f"has no matching output '{out}' (the model's outputs are: "
                                 f"{', '.join(output_order)})", hint=f"return the state's next value as '{out}', or "
                                 f"pair '{s}' with another output (ONNX metadata spidec.state = \"{s}:OUT\"; "
                                 f"from_torch(..., state={{'{s}': 'OUT'}}))")
            v = outputs[out]
            where = f"output '{out}' (state of '{s}')"
            if isinstance(v, Affine) and any(t.src.startswith("state:") for t in v.terms):
                raise self.error(where, f"depends on state '{s}' through linear ops only: the feedback loop has "
                                 "no population", hint="put a clamp(0, 1) (a population) inside the loop")
            if not (isinstance(v, Affine) and len(v.terms) == 1 and not v.terms[0].ops and v.offset is None
                    and v.terms[0].src in self._pops):
                raise self.error(where, "is not the rates of a population: a state output must be the output of a "
                                 "clamp(0, 1)", hint="return the clamped tensor itself; move the linear ops "
                                 "after it into the next step (into the synapses that read the state)")
            if self.states[s] != v.shape:
                raise self.error(where, f"has shape {fmt_shape(v.shape)} but state input '{s}' has "
                                 f"{fmt_shape(self.states[s])}")
            state_pop[f"state:{s}"] = v.terms[0].src

        def resolve(t: Term) -> tuple[str, int]:
            if t.src.startswith("state:"):
                return state_pop[t.src], 1
            return t.src, 0

        g = self.graph
        for name, (a, _) in self._pops.items():
            g.add_population(name, a.shape, Neuron(), self._bias(a))
        for name, (a, _) in self._pops.items():
            self._synapses(name, a, resolve)
        for out in output_order:
            if out in state_pairs.values():
                continue
            v = outputs[out]
            where = f"output '{out}'"
            if isinstance(v, Pending) and v.kind == "softmax":
                self.warn(where, "the Softmax on this output is dropped: spidec's readout trains with "
                          "cross-entropy on the logits")
                v = v.inner
            if isinstance(v, Const):
                raise self.error(where, "is a constant; outputs must read the network's populations")
            a = self.expect_affine(v, where, "value")
            if not any(resolve(t)[0] in self._pops for t in a.terms):
                raise self.error(where, "does not depend on any population; a readout reads population rates",
                                 hint="put a clamp(0, 1) between the inputs and this output")
            loss = "cross_entropy" if len(a.shape) == 1 else "mse"
            name = self.unique(out, "y")
            g.add_readout(name, a.shape, None if a.offset is None else a.offset.astype(self.dtype), loss)
            self._synapses(name, a, resolve)
        try:
            return g.validate()
        except SpidecError as e:
            raise SpidecError(e.message, file=self.source, node=e.node, hint=e.hint) from None

    def _bias(self, a: Affine) -> np.ndarray | None:
        if a.offset is None:
            return None
        if a.channel_offset and len(a.shape) == 3:
            return np.ascontiguousarray(a.offset[:, 0, 0]).astype(self.dtype)
        return np.asarray(a.offset, dtype=self.dtype)

    def _synapses(self, dst: str, a: Affine, resolve: Any) -> None:
        for t in a.terms:
            if t.dropout and dst not in self._pops:
                raise self.error(f"output '{dst}'", "reads a dropped-out term; spidec trains dropout on synapses "
                                 "into populations, not on the readout", hint="remove the Dropout before the "
                                 "classifier, or put it before a population")
            src, delay = resolve(t)
            ops = simplify(t.ops) or (Scale(1.0),)
            label = t.label if t.label else f"{src}_{dst}"
            name = self.unique(label, "s")
            self.graph.add_synapse(src, dst, ops, delay=delay, name=name, dropout=t.dropout,
                                   dropout_bias=t.dropout_bias)


def simplify(ops: tuple[LinearOp, ...]) -> tuple[LinearOp, ...]:
    """Fold constant scales into the neighbouring weight (BatchNorm folding, ``alpha`` of Gemm) and
    merge consecutive scales, so the IR holds the weights training will update."""
    out: list[LinearOp] = []
    for op in ops:
        prev = out[-1] if out else None
        if isinstance(op, Scale) and isinstance(prev, Scale):
            out[-1] = Scale(_mul(prev.factor, op.factor))
            continue
        if isinstance(op, Scale) and isinstance(prev, Dense):
            f = op.factor
            if isinstance(f, float) or f.shape in ((prev.weight.shape[0],), (1,)):
                col = f if isinstance(f, float) else np.asarray(f).reshape(-1, 1)
                out[-1] = prev.replace(weight=(prev.weight * col).astype(prev.weight.dtype))
                continue
        if isinstance(op, Scale) and isinstance(prev, (Conv2d, ConvTranspose2d)):
            f = op.factor
            cout_axis = 0 if isinstance(prev, Conv2d) else 1
            cout = prev.weight.shape[cout_axis]
            if isinstance(f, float) or (f.ndim == 3 and f.shape[1:] == (1, 1) and f.shape[0] in (1, cout)):
                if isinstance(f, float):
                    w = prev.weight * f
                else:
                    shape = [1, 1, 1, 1]
                    shape[cout_axis] = f.shape[0]
                    w = prev.weight * np.asarray(f).reshape(shape)
                out[-1] = prev.replace(weight=w.astype(prev.weight.dtype))
                continue
        if isinstance(op, Dense) and isinstance(prev, Scale) and isinstance(prev.factor, float):
            out[-1] = op.replace(weight=(op.weight * prev.factor).astype(op.weight.dtype))
            continue
        out.append(op)
    if len(out) > 1:
        out = [op for op in out if not (isinstance(op, Scale) and isinstance(op.factor, float) and op.factor == 1.0)]
    return tuple(out)


def _mul(a: Any, b: Any) -> Any:
    if isinstance(a, float) and isinstance(b, float):
        return a * b
    return np.asarray(a) * np.asarray(b)


__all__ = ["Affine", "Const", "Lowering", "Pending", "Term", "sanitize", "simplify"]
