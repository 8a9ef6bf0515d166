"""ONNX frontend: one step of a feedback network, as written by ``torch.onnx.export`` (legacy and
dynamo exporters) or by hand, into the spidec IR.

    g = spidec.load("model.onnx")                     # state pairs: metadata or names
    g = load_onnx("model.onnx", state={"z": "z_next"})

The model has data inputs, state inputs and outputs. A state input ``z`` is paired with the
output named in the metadata key ``spidec.state`` (``"z:z_next,z2:z2_next"``), or else with the
output ``z_next``. The dimension 0 of every input is the batch (fixed or symbolic); the others
must be fixed. Opsets 11 to 22 of the default domain are read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SpidecError
from ..ir import Graph
from ..ops import Pad, fmt_shape
from ._lower import Const, Lowering, Pending, Value

OPSET_MIN, OPSET_MAX = 11, 22
STATE_KEY = "spidec.state"

NOT_LINEAR = {
    "MaxPool": "max pooling is not linear; use AveragePool (nn.AvgPool2d) instead",
    "GlobalMaxPool": "max pooling is not linear; use GlobalAveragePool (nn.AdaptiveAvgPool2d(1)) instead",
    "LpPool": "Lp pooling is not linear; use AveragePool instead",
    "Sigmoid": "a sigmoid is not a spiking rate; populations are clamp(x, 0, 1) (nn.Hardtanh(0, 1))",
    "Tanh": "tanh is not a spiking rate; populations are clamp(x, 0, 1) (nn.Hardtanh(0, 1))",
    "HardSwish": "hardswish is not a spiking rate; populations are clamp(x, 0, 1)",
    "LeakyRelu": "a leaky ReLU is not a spiking rate; populations are clamp(x, 0, 1)",
    "Elu": "ELU is not a spiking rate; populations are clamp(x, 0, 1)",
    "Selu": "SELU is not a spiking rate; populations are clamp(x, 0, 1)",
    "Gelu": "GELU is not a spiking rate; populations are clamp(x, 0, 1)",
    "Softplus": "softplus is not a spiking rate; populations are clamp(x, 0, 1)",
    "Exp": "exp is not linear; only linear ops may stand between populations",
    "Log": "log is not linear; only linear ops may stand between populations",
    "Sqrt": "sqrt is not linear; only linear ops may stand between populations",
    "Pow": "pow is not linear; only linear ops may stand between populations",
    "Abs": "abs is not linear; only linear ops may stand between populations",
    "LayerNormalization": "layer normalisation is not linear; use BatchNorm (folded into the conv/linear) or none",
    "InstanceNormalization": "instance normalisation is not linear; use BatchNorm or none",
    "LRN": "local response normalisation is not linear",
}


def _where(node: Any) -> str:
    return f"node '{node.name or (node.output[0] if node.output else '?')}' ({node.op_type})"


def _hint_from_node(node: Any) -> str:
    """``/act1/Clip`` -> ``act1``; otherwise the output tensor's name."""
    if node.name.startswith("/"):
        parts = [p for p in node.name.split("/") if p]
        if len(parts) > 1:
            return "_".join(parts[:-1])
        return parts[0] if parts else node.output[0]
    return node.output[0] if node.output else node.name


def _read_model(model: Any) -> tuple[Any, str]:
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "<onnx model>"
    if isinstance(model, (bytes, bytearray)):
        data, source = bytes(model), "<onnx bytes>"
    else:
        path = Path(model)
        source = str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise SpidecError(f"file {source!r} not found") from None
        except OSError as e:
            raise SpidecError(f"cannot read {source!r}: {e}") from None
    if not data:
        raise SpidecError("the file is empty, not an ONNX model", file=source)
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf raises DecodeError and friends for truncated or foreign files
        raise SpidecError(f"not a valid ONNX model ({type(e).__name__}: {str(e)[:120]})", file=source,
                          hint="export it again with torch.onnx.export") from None
    if not isinstance(model, (bytes, bytearray)) and any(
            t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        try:  # weights in a side file (the dynamo exporter's default): read them from beside the model
            onnx.external_data_helper.load_external_data_for_model(proto, str(Path(model).parent))
        except Exception as e:
            raise SpidecError(f"cannot read the model's external weight data ({str(e)[:160]})", file=source,
                              hint="keep the .onnx.data file beside the model, or export with "
                              "external_data=False") from None
    if not proto.graph.node and not proto.graph.output:
        raise SpidecError("not a valid ONNX model (no graph)", file=source)
    return proto, source


def _opset(proto: Any, source: str) -> int:
    version = None
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            version = int(imp.version)
    if version is None:
        raise SpidecError("the model imports no opset of the default ONNX domain", file=source)
    if not OPSET_MIN <= version <= OPSET_MAX:
        raise SpidecError(f"opset {version} is not supported (spidec reads opsets {OPSET_MIN}-{OPSET_MAX})",
                          file=source, hint=f"export with opset_version={min(max(version, OPSET_MIN), 20)}")
    return version


def _state_pairs(proto: Any, state: Any, inputs: list[str], outputs: list[str], source: str) -> dict[str, str]:
    if state is None:
        for prop in proto.metadata_props:
            if prop.key == STATE_KEY:
                state = prop.value
    if isinstance(state, str):
        pairs = {}
        for item in filter(None, (s.strip() for s in state.split(","))):
            if ":" not in item:
                raise SpidecError(f"{STATE_KEY} entry {item!r} must read 'state_input:output'", file=source)
            # (at the first ':' after which an input's name ends: exporters' names hold '::')
            cut = next((k for k, ch in enumerate(item) if ch == ":" and item[:k].strip() in inputs), item.index(":"))
            pairs[item[:cut].strip()] = item[cut + 1:].strip()
        return pairs
    if state is not None:
        return dict(state)
    return {i: f"{i}_next" for i in inputs if f"{i}_next" in outputs}


class _OnnxLowering:
    def __init__(self, proto: Any, source: str, state: Any) -> None:
        from onnx import numpy_helper

        self.proto = proto
        self.graph = proto.graph
        self.source = source
        self.opset = _opset(proto, source)
        self.numpy_helper = numpy_helper
        self.values: dict[str, Value] = {}
        for init in self.graph.initializer:
            self.values[init.name] = Const(numpy_helper.to_array(init))
        self.input_names = [i.name for i in self.graph.input if i.name not in self.values]
        self.output_names = [o.name for o in self.graph.output]
        self.pairs = _state_pairs(proto, state, self.input_names, self.output_names, source)
        # pairs by name only (neither given nor in the metadata): check nothing looks left unpaired
        self.pairs_by_name = state is None and not any(p.key == STATE_KEY for p in proto.metadata_props)
        name = self.graph.name if self.graph.name and self.graph.name not in ("main_graph", "torch_jit") else \
            Path(source).stem
        self.low = Lowering(name, source)
        self.state_outputs = {out: s for s, out in self.pairs.items()}

    # ------------------------------------------------------------ inputs
    def read_inputs(self) -> None:
        from onnx import TensorProto

        for vi in self.graph.input:
            if vi.name in self.values:
                continue
            tt = vi.type.tensor_type
            if tt.elem_type not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
                raise SpidecError(f"input '{vi.name}' is not a float tensor", file=self.source)
            dims = list(tt.shape.dim)
            if len(dims) < 2:
                raise SpidecError(f"input '{vi.name}' needs a batch dimension and at least one more "
                                  f"(got {len(dims)} dimensions)", file=self.source)
            shape = []
            for k, d in enumerate(dims[1:], start=1):
                if not d.HasField("dim_value") or d.dim_value < 1:
                    raise SpidecError(f"input '{vi.name}' has a dynamic dimension {k} "
                                      f"('{d.dim_param or '?'}'); only the batch (dimension 0) may be dynamic",
                                      file=self.source, hint="export with fixed sample shapes")
                shape.append(int(d.dim_value))
            if vi.name in self.pairs:
                self.values[vi.name] = self.low.add_state(vi.name, tuple(shape))
            else:
                self.values[vi.name] = self.low.add_input(vi.name, tuple(shape))

    # ------------------------------------------------------------ helpers
    def attrs(self, node: Any) -> dict[str, Any]:
        from onnx import helper

        out = {}
        for a in node.attribute:
            v = helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode()
            out[a.name] = v
        return out

    def const(self, v: Value | None, where: str, what: str) -> np.ndarray:
        if isinstance(v, Const):
            return v.value
        raise self.low.error(where, f"its {what} must be a constant (an initializer or Constant)")

    def weight_label(self, node: Any, k: int) -> str:
        name = node.input[k] if len(node.input) > k else ""
        if name and not name.startswith("onnx::") and name in {i.name for i in self.graph.initializer}:
            return name
        return _hint_from_node(node)

    # ------------------------------------------------------------ the walk
    def run(self) -> Graph:
        self.read_inputs()
        for node in self.graph.node:
            where = _where(node)
            if node.domain not in ("", "ai.onnx"):
                raise self.low.error(where, f"belongs to the custom domain '{node.domain}', which spidec cannot read")
            ins: list[Value | None] = []
            for name in node.input:
                if not name:
                    ins.append(None)
                elif name in self.values:
                    ins.append(self.values[name])
                else:
                    raise self.low.error(where, f"reads '{name}', which nothing produced before it (the graph is "
                                         f"not topologically sorted or is truncated)")
            handler = HANDLERS.get(node.op_type)
            if handler is None:
                if node.op_type in NOT_LINEAR:
                    raise self.low.error(where, NOT_LINEAR[node.op_type])
                raise self.low.error(where, f"op '{node.op_type}' is not supported; spidec reads {SUPPORTED}")
            try:
                outs = handler(self, node, ins, self.attrs(node), where)
            except SpidecError:
                raise
            except (IndexError, KeyError, ValueError, TypeError, ArithmeticError, AttributeError) as e:
                # a node whose inputs or attributes do not fit its op (the file is malformed, or of
                # a form spidec does not read): say which node, never crash
                raise self.low.error(where, f"cannot read this node: it has {len(node.input)} input(s) and "
                                     f"attributes {sorted(a.name for a in node.attribute)} "
                                     f"({type(e).__name__}: {str(e)[:120]})",
                                     hint="check the model with onnx.checker.check_model") from None
            if not isinstance(outs, list):
                outs = [outs]
            for name, v in zip(node.output, outs):
                if name:
                    self.values[name] = v
        outputs = {}
        for name in self.output_names:
            if name not in self.values:
                raise SpidecError(f"output '{name}' is produced by no node", file=self.source)
            outputs[name] = self.values[name]
        if self.pairs_by_name:
            self.check_unpaired(outputs)
        return self.low.finish(outputs, self.pairs, output_order=self.output_names)

    def check_unpaired(self, outputs: dict[str, Value]) -> None:
        """Refuse a model whose state pairing is ambiguous: an exporter without ``input_names`` /
        ``output_names`` writes ``onnx::Gemm_0`` or ``14``, so a state ``z`` and its next value go
        unpaired and would load silently as a data input and a second readout (no feedback at all).
        Ambiguous: an unpaired input and an unpaired output that is a population's rates of the same
        shape, with another input left to carry the data."""
        paired_out = set(self.pairs.values())
        unpaired_in = [i for i in self.input_names if i not in self.pairs]
        if len(unpaired_in) < 2:
            return
        candidates = []
        for out, v in outputs.items():
            if out in paired_out or self.low.rates_of(v) is None:
                continue
            candidates += [(i, out) for i in unpaired_in if self.values[i].shape == v.shape]  # type: ignore[union-attr]
        if not candidates:
            return
        i, out = candidates[0]
        which = ", ".join(f"{a}:{b}" for a, b in candidates[:4]) + (" ..." if len(candidates) > 4 else "")
        cli = f"pass --state {i}:{out}" if ":" not in i + out else f"pass state={{{i!r}: {out!r}}} in Python"
        raise SpidecError(f"the state pairing is ambiguous: input '{i}' and output '{out}' (a population's rates, both "
                          f"of shape {fmt_shape(outputs[out].shape)}) look like a state and its next value, but no "
                          f"name pairs them (candidates: {which})", file=self.source,
                          hint=f"export with input_names/output_names such as 'z' and 'z_next', set the metadata "
                          f"spidec.state = \"{i}:{out}\", or {cli}; --state none (state={{}}) reads the model "
                          "without feedback")


# ================================================================ op handlers
Handler = Callable[[_OnnxLowering, Any, list, dict, str], Any]
HANDLERS: dict[str, Handler] = {}


def handles(*ops: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for op in ops:
            HANDLERS[op] = fn
        return fn

    return deco


@handles("Constant")
def _constant(c, node, ins, attrs, where):
    from onnx import numpy_helper

    if "value" in attrs:
        return Const(numpy_helper.to_array(attrs["value"]))
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in attrs:
            return Const(np.array(attrs[key], dtype=dtype))
    raise c.low.error(where, "has a kind of constant spidec does not read (sparse or string)")


@handles("Identity")
def _identity(c, node, ins, attrs, where):
    return ins[0]


@handles("Dropout")
def _dropout(c, node, ins, attrs, where):
    """Identity in inference mode; with ``training_mode`` true (opset 12+), variational dropout of
    ratio ``ratio`` (attribute before opset 12) on the synapse it follows."""
    training = len(ins) > 2 and isinstance(ins[2], Const) and bool(np.asarray(ins[2].value).reshape(()))
    if len(ins) > 2 and ins[2] is not None and not isinstance(ins[2], Const):
        raise c.low.error(where, "training_mode must be a constant")
    if training:
        ratio = float(np.asarray(ins[1].value).reshape(())) if len(ins) > 1 and isinstance(ins[1], Const) else \
            float(attrs.get("ratio", 0.5))
        out = c.low.dropout(ins[0], float(f"{ratio:.7g}"), where)  # (a float32 constant: 0.3, not 0.30000001)
    else:
        out = ins[0]
    if len(node.output) > 1 and node.output[1]:
        return [out, Const(np.ones(1, dtype=bool))]
    return out


@handles("Cast")
def _cast(c, node, ins, attrs, where):
    from onnx import helper

    dtype = helper.tensor_dtype_to_np_dtype(attrs["to"])
    if isinstance(ins[0], Const):
        return Const(ins[0].value.astype(dtype))
    if np.dtype(dtype).kind != "f":
        raise c.low.error(where, f"casts the network's signal to {np.dtype(dtype)}; rates are floats")
    return ins[0]


@handles("Shape")
def _shape(c, node, ins, attrs, where):
    v = ins[0]
    full = np.array(v.value.shape if isinstance(v, Const) else (-1, *v.shape), dtype=np.int64)
    start, end = attrs.get("start", 0), attrs.get("end", None)
    return Const(full[start:end])


@handles("Gather")
def _gather(c, node, ins, attrs, where):
    data = c.const(ins[0], where, "data")
    indices, axis = c.const(ins[1], where, "indices"), attrs.get("axis", 0)
    if -data.ndim <= axis < data.ndim:  # (else numpy's own error follows)
        k = axis % data.ndim
        c.low.check_const(data.shape[:k] + np.shape(indices) + data.shape[k + 1:], where)
    return Const(np.take(data, indices, axis=axis))


@handles("Unsqueeze")
def _unsqueeze(c, node, ins, attrs, where):
    data = c.const(ins[0], where, "data")
    axes = attrs["axes"] if "axes" in attrs else c.const(ins[1], where, "axes").tolist()
    out = data
    for ax in sorted(int(a) % (data.ndim + len(axes)) for a in axes):
        out = np.expand_dims(out, ax)
    return Const(out)


@handles("Squeeze")
def _squeeze(c, node, ins, attrs, where):
    data = c.const(ins[0], where, "data")
    axes = attrs.get("axes") if "axes" in attrs else (
        c.const(ins[1], where, "axes").tolist() if len(ins) > 1 and ins[1] is not None else None)
    return Const(np.squeeze(data, axis=tuple(axes) if axes is not None else None))


@handles("Concat")
def _concat(c, node, ins, attrs, where):
    return Const(np.concatenate([c.const(v, where, "inputs") for v in ins], axis=attrs["axis"]))


@handles("Slice")
def _slice(c, node, ins, attrs, where):
    data = c.const(ins[0], where, "data")
    starts, ends = c.const(ins[1], where, "starts"), c.const(ins[2], where, "ends")
    axes = c.const(ins[3], where, "axes") if len(ins) > 3 and ins[3] is not None else range(len(starts))
    steps = c.const(ins[4], where, "steps") if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    index = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[int(a)] = slice(int(s), int(e), int(st))
    return Const(data[tuple(index)])


@handles("ConstantOfShape")
def _constant_of_shape(c, node, ins, attrs, where):
    from onnx import numpy_helper

    value = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
    shape = tuple(int(d) for d in np.asarray(c.const(ins[0], where, "shape")).reshape(-1))
    if any(d < 0 for d in shape):
        raise c.low.error(where, f"has a negative size in its shape {list(shape)}")
    c.low.check_const(shape, where)
    return Const(np.full(shape, value.reshape(-1)[0], dtype=value.dtype))


@handles("Transpose")
def _transpose(c, node, ins, attrs, where):
    if isinstance(ins[0], Const):
        return Const(np.transpose(ins[0].value, attrs.get("perm")))
    a = c.low.expect_affine(ins[0], where)
    perm = attrs.get("perm")
    if perm is not None and list(perm) == list(range(len(a.shape) + 1)):
        return a
    raise c.low.error(where, "transposes the network's signal; spidec's synapses keep the sample layout",
                      hint="transpose the weights instead")


@handles("Reshape")
def _reshape(c, node, ins, attrs, where):
    target = c.const(ins[1], where, "target shape")
    if isinstance(ins[0], Const):
        return Const(np.reshape(ins[0].value, [d if d != 0 else ins[0].value.shape[i]
                                               for i, d in enumerate(target.tolist())]))
    return c.low.reshape(ins[0], target, where)


@handles("Flatten")
def _flatten(c, node, ins, attrs, where):
    axis = attrs.get("axis", 1)
    if isinstance(ins[0], Const):
        v = ins[0].value
        return Const(v.reshape(math.prod(v.shape[:axis]), -1))
    return c.low.flatten(ins[0], axis, where)


@handles("Gemm")
def _gemm(c, node, ins, attrs, where):
    if attrs.get("transA", 0):
        raise c.low.error(where, "transposes its signal input (transA=1)")
    b = c.const(ins[1], where, "weight B")
    w = b if attrs.get("transB", 0) else b.T  # [out, in]
    w = w * np.asarray(attrs.get("alpha", 1.0), dtype=w.dtype)
    bias = None
    if len(ins) > 2 and ins[2] is not None:
        bias = c.const(ins[2], where, "bias C") * np.asarray(attrs.get("beta", 1.0), dtype=w.dtype)
    return c.low.dense(ins[0], w, bias, where, c.weight_label(node, 1))


@handles("MatMul")
def _matmul(c, node, ins, attrs, where):
    if isinstance(ins[0], Const) and isinstance(ins[1], Const):
        a, b = np.asarray(ins[0].value), np.asarray(ins[1].value)
        if a.ndim >= 2 and b.ndim >= 2:  # (an outer product [n, 1] @ [1, n] is n^2 from 2n values)
            try:
                batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            except ValueError:
                batch = None  # (numpy's own error follows)
            if batch is not None:
                c.low.check_const(batch + (a.shape[-2], b.shape[-1]), where)
        return Const(a @ b)
    if not isinstance(ins[1], Const):
        raise c.low.error(where, "multiplies the network's signal by a non-constant matrix; synapse weights must "
                          "be constants (a product of two signals is not linear)")
    w = ins[1].value
    if w.ndim != 2:
        raise c.low.error(where, f"multiplies by a tensor of shape {list(w.shape)}; spidec reads x @ W with a "
                          "matrix W")
    return c.low.dense(ins[0], w.T, None, where, c.weight_label(node, 1))


@handles("Add", "Sum")
def _add(c, node, ins, attrs, where):
    out = ins[0]
    for v in ins[1:]:
        out = c.low.add(out, v, where)
    return out


@handles("Sub")
def _sub(c, node, ins, attrs, where):
    return c.low.add(ins[0], c.low.scale(ins[1], -1.0, where), where)


@handles("Neg")
def _neg(c, node, ins, attrs, where):
    return c.low.scale(ins[0], -1.0, where)


@handles("Mul")
def _mul(c, node, ins, attrs, where):
    return c.low.mul(ins[0], ins[1], where)


@handles("Div")
def _div(c, node, ins, attrs, where):
    a, b = ins
    if isinstance(a, Const) and isinstance(b, Const):
        c.low.check_broadcast(where, a.value, b.value)
        return Const(a.value / b.value)
    if not isinstance(b, Const):
        raise c.low.error(where, "divides by a signal; only division by constants is linear")
    if np.any(b.value == 0):
        raise c.low.error(where, "divides by zero")
    return c.low.scale(a, 1.0 / b.value.astype(np.float64), where)


def _check_conv_attrs(c, attrs: dict, where: str, kind: str) -> None:
    if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise c.low.error(where, f"{kind} with dilation is not supported", hint="use dilation 1")
    if attrs.get("group", 1) != 1:
        raise c.low.error(where, f"grouped {kind} (group={attrs['group']}) is not supported", hint="use groups=1")


def _auto_pad(c, attrs: dict, shape: tuple[int, ...], kernel: tuple[int, int], strides: list[int],
              where: str) -> list[int]:
    mode = attrs.get("auto_pad", "NOTSET")
    if mode in ("NOTSET", ""):
        return list(attrs.get("pads", [0, 0, 0, 0]))
    if mode == "VALID":
        return [0, 0, 0, 0]
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for n, k, s in zip(shape[1:], kernel, strides):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            small, big = total // 2, total - total // 2
            begin.append(small if mode == "SAME_UPPER" else big)
            end.append(big if mode == "SAME_UPPER" else small)
        return begin + end
    raise c.low.error(where, f"auto_pad={mode} is not supported")


@handles("Conv")
def _conv(c, node, ins, attrs, where):
    a = c.low.expect_affine(ins[0], where)
    w = c.const(ins[1], where, "weight")
    _check_conv_attrs(c, attrs, where, "convolution")
    strides = list(attrs.get("strides", [1, 1]))
    pads = _auto_pad(c, attrs, a.shape, tuple(w.shape[2:]), strides, where)
    bias = c.const(ins[2], where, "bias") if len(ins) > 2 and ins[2] is not None else None
    return c.low.conv2d(a, w, bias, tuple(strides), tuple(pads), where, c.weight_label(node, 1))


@handles("ConvTranspose")
def _conv_transpose(c, node, ins, attrs, where):
    w = c.const(ins[1], where, "weight")
    _check_conv_attrs(c, attrs, where, "transposed convolution")
    if "output_shape" in attrs or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
        raise c.low.error(where, "output_shape/auto_pad are not supported", hint="give pads and output_padding")
    top, left, bottom, right = (list(attrs.get("pads", [0, 0, 0, 0])) + [0, 0, 0, 0])[:4]
    if (top, left) != (bottom, right):
        raise c.low.error(where, f"has asymmetric pads {[top, left, bottom, right]}")
    bias = c.const(ins[2], where, "bias") if len(ins) > 2 and ins[2] is not None else None
    return c.low.conv_transpose2d(ins[0], w, bias, tuple(attrs.get("strides", [1, 1])), (top, left),
                                  tuple(attrs.get("output_padding", [0, 0])), where, c.weight_label(node, 1))


@handles("AveragePool")
def _avgpool(c, node, ins, attrs, where):
    a = c.low.expect_affine(ins[0], where)
    kernel = tuple(attrs["kernel_shape"])
    if len(kernel) != 2:
        raise c.low.error(where, "spidec reads 2-D average pooling on [C, H, W]")
    if attrs.get("ceil_mode", 0):
        raise c.low.error(where, "ceil_mode=1 is not supported", hint="use ceil_mode=False")
    if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise c.low.error(where, "dilated pooling is not supported")
    strides = list(attrs.get("strides", [1, 1]))
    pads = _auto_pad(c, attrs, a.shape, kernel, strides, where)
    if pads[:2] != pads[2:]:
        raise c.low.error(where, f"has asymmetric pads {pads}")
    return c.low.avgpool2d(a, kernel, tuple(strides), tuple(pads[:2]), bool(attrs.get("count_include_pad", 0)),
                           where)


@handles("GlobalAveragePool")
def _global_avgpool(c, node, ins, attrs, where):
    a = c.low.expect_affine(ins[0], where)
    if len(a.shape) != 3:
        raise c.low.error(where, "spidec reads global average pooling on [C, H, W]")
    return c.low.avgpool2d(a, a.shape[1:], None, (0, 0), True, where)


@handles("Pad")
def _pad(c, node, ins, attrs, where):
    mode = attrs.get("mode", "constant")
    if mode != "constant":
        raise c.low.error(where, f"pads in mode '{mode}'; only zero (constant) padding is linear")
    a = c.low.expect_affine(ins[0], where)
    pads = list(attrs["pads"]) if "pads" in attrs else c.const(ins[1], where, "pads").tolist()
    if len(ins) > 2 and ins[2] is not None and np.any(c.const(ins[2], where, "constant value") != 0):
        raise c.low.error(where, "pads with a non-zero value; only zero padding is linear")
    ndim = len(a.shape) + 1
    axes = list(range(ndim))
    if len(ins) > 3 and ins[3] is not None:
        axes = [int(x) % ndim for x in c.const(ins[3], where, "axes")]
    full = [[0, 0] for _ in range(ndim)]
    for k, ax in enumerate(axes):
        full[ax] = [int(pads[k]), int(pads[k + len(axes)])]
    if full[0] != [0, 0]:
        raise c.low.error(where, "pads the batch dimension")
    if any(p < 0 for pair in full for p in pair):
        raise c.low.error(where, "has negative pads (cropping)", hint="crop with a slice of the weights instead")
    return c.low.linear(a, Pad(tuple(tuple(p) for p in full[1:])), where)


@handles("BatchNormalization")
def _batchnorm(c, node, ins, attrs, where):
    if attrs.get("training_mode", 0):
        raise c.low.error(where, "is in training mode", hint="export the model in eval() mode")
    scale, bias, mean, var = (c.const(v, where, what) for v, what in
                              zip(ins[1:5], ("scale", "bias", "mean", "variance")))
    return c.low.batchnorm(ins[0], scale, bias, mean, var, attrs.get("epsilon", 1e-5), where)


def _clip_bounds(c, node, ins, attrs, where) -> tuple[float | None, float | None]:
    if c.opset < 11 or "min" in attrs or "max" in attrs:
        return attrs.get("min"), attrs.get("max")
    lo = float(c.const(ins[1], where, "min").reshape(())) if len(ins) > 1 and ins[1] is not None else None
    hi = float(c.const(ins[2], where, "max").reshape(())) if len(ins) > 2 and ins[2] is not None else None
    return lo, hi


def _population_name(c, node) -> str:
    out = node.output[0]
    if out in c.state_outputs:
        return c.state_outputs[out]
    return _hint_from_node(node)


@handles("Clip")
def _clip(c, node, ins, attrs, where):
    if isinstance(ins[0], Const):
        lo, hi = _clip_bounds(c, node, ins, attrs, where)
        return Const(np.clip(ins[0].value, lo, hi))
    lo, hi = _clip_bounds(c, node, ins, attrs, where)
    if lo == 0 and hi == 1:
        return c.low.population(ins[0], _population_name(c, node), where)
    if lo == 0 and hi is None:
        return _relu(c, node, ins, attrs, where)
    raise c.low.error(where, f"clips to [{lo}, {hi}]; a population's rate is clamp(x, 0, 1)",
                      hint="write Clip(0, 1): torch.clamp(x, 0, 1) or nn.Hardtanh(0, 1); scale the input "
                      "current instead of the bounds")


@handles("Relu")
def _relu(c, node, ins, attrs, where):
    c.low.warn(where, "ReLU is read as a population clamp(x, 0, 1): spike rates saturate at 1 (write Clip(0, 1) "
               "/ nn.Hardtanh(0, 1) to say so and silence this warning)")
    return c.low.population(ins[0], _population_name(c, node), where)


@handles("HardSigmoid")
def _hardsigmoid(c, node, ins, attrs, where):
    a = c.low.scale(ins[0], attrs.get("alpha", 0.2), where)
    a = c.low.add_offset(c.low.expect_affine(a, where), np.array(attrs.get("beta", 0.5), dtype=np.float32), where)
    return c.low.population(a, _population_name(c, node), where)


def _scalar_const(v: Value | None) -> float | None:
    if isinstance(v, Const) and v.value.size == 1:
        return float(v.value.reshape(()))
    return None


@handles("Min", "Max")
def _min_max(c, node, ins, attrs, where):
    if all(isinstance(v, Const) for v in ins):
        c.low.check_broadcast(where, *(v.value for v in ins))
        fn = np.minimum if node.op_type == "Min" else np.maximum
        out = ins[0].value
        for v in ins[1:]:
            out = fn(out, v.value)
        return Const(out)
    if len(ins) != 2:
        raise c.low.error(where, f"{node.op_type} of several signals is not linear")
    a, b = ins if not isinstance(ins[0], Const) else (ins[1], ins[0])
    bound = _scalar_const(b)
    want = 1.0 if node.op_type == "Min" else 0.0
    if bound != want:
        raise c.low.error(where, f"{node.op_type} with {bound if bound is not None else 'a signal'} is not a "
                          "clamp(0, 1)", hint="populations are clamp(x, 0, 1); write Clip(0, 1)")
    if isinstance(a, Pending) and a.kind == ("max0" if node.op_type == "Min" else "min1"):
        return c.low.population(a.inner, _population_name(c, node), where)
    return c.low.pending("min1" if node.op_type == "Min" else "max0", a, where)


@handles("Softmax", "LogSoftmax")
def _softmax(c, node, ins, attrs, where):
    return c.low.pending("softmax", ins[0], where)


SUPPORTED = ", ".join(sorted(set(HANDLERS) - {"Constant", "Identity"})) + " (plus Constant and Identity)"


def load_onnx(model: str | os.PathLike | bytes | Any, *, state: dict[str, str] | str | None = None) -> Graph:
    """Lower an ONNX model (path, bytes or ``onnx.ModelProto``) into the IR.

    ``state`` pairs state inputs with outputs (``{"z": "z_next"}`` or ``"z:z_next"``); by default
    the metadata key ``spidec.state`` or the ``NAME``/``NAME_next`` naming convention decides.
    """
    proto, source = _read_model(model)
    try:
        return _OnnxLowering(proto, source, state).run()
    except SpidecError:
        raise
    except (IndexError, KeyError, ValueError, TypeError, AttributeError, UnicodeError) as e:
        # protobuf accepts files that are not well-formed models (names that are not text, missing
        # fields): refuse them in one line rather than with a traceback
        raise SpidecError(f"the model is malformed ({type(e).__name__}: {str(e)[:160]})", file=source,
                          hint="check it with onnx.checker.check_model, or export it again") from None


__all__ = ["load_onnx"]
