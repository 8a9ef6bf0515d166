"""PyTorch frontend: a ``torch.nn.Module`` whose ``forward`` is one step of a feedback network,
traced with ``torch.fx`` and lowered into the spidec IR.

    g = spidec.from_torch(Cell(), inputs={"x": (64,), "z": (128,)}, state={"z": "z_next"},
                          outputs=["z_next", "logits"])

``inputs`` gives every ``forward`` argument's per-sample shape (no batch dimension); ``state``
pairs each state argument with the output that feeds it back (an output name, or an index into the
returned tuple); ``outputs`` names the returned values. A module may carry the three as class
attributes ``spidec_inputs``, ``spidec_state`` and ``spidec_outputs``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import SpidecError
from ..ir import Graph
from ._lower import Affine, Const, Lowering, Value

BATCH = -1  # what x.size(0) / x.shape[0] stands for while tracing: the batch, kept symbolic


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


class _TorchLowering:
    def __init__(self, module: Any, inputs: Mapping[str, Sequence[int]], state: Mapping[str, Any],
                 outputs: Sequence[str] | None, name: str) -> None:
        import torch
        import torch.fx

        self.torch = torch
        self.module = module
        self.source = f"{type(module).__module__}.{type(module).__qualname__}"
        try:
            self.traced = torch.fx.symbolic_trace(module)
        except Exception as e:
            raise SpidecError(f"torch.fx cannot trace {type(module).__name__}.forward ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160]})", file=self.source,
                              hint="remove data-dependent control flow from forward, or export to ONNX and load "
                              "the .onnx file") from None
        self.inputs = {k: tuple(int(s) for s in v) for k, v in inputs.items()}
        self.output_names = list(outputs) if outputs is not None else None
        self.state = dict(state)
        self.low = Lowering(name, self.source)
        self.env: dict[Any, Any] = {}
        if module.training and any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))
                                   for m in module.modules()):
            self.low.warn("module", "is in training mode; BatchNorm is read with its running statistics "
                          "(eval semantics): call .eval() first")

    # ------------------------------------------------------------------ helpers
    def where(self, node: Any) -> str:
        if node.op == "call_module":
            return f"node '{node.target}' ({type(self.module.get_submodule(node.target)).__name__})"
        target = getattr(node.target, "__name__", str(node.target))
        return f"node '{node.name}' ({target})"

    def value(self, a: Any) -> Any:
        torch = self.torch
        if isinstance(a, torch.fx.Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self.value(x) for x in a)
        if isinstance(a, torch.Tensor):
            return Const(_np(a))
        return a

    def args(self, node: Any) -> tuple[list[Any], dict[str, Any]]:
        return [self.value(a) for a in node.args], {k: self.value(v) for k, v in node.kwargs.items()}

    def const(self, v: Any, where: str, what: str) -> np.ndarray:
        if isinstance(v, Const):
            return v.value
        raise self.low.error(where, f"its {what} must be a constant (a parameter or buffer)")

    def state_names(self) -> dict[Any, str]:
        """fx node feeding a state output -> the state argument's name (to name its population)."""
        out_node = next(n for n in self.traced.graph.nodes if n.op == "output")
        result = out_node.args[0]
        items = list(result) if isinstance(result, (tuple, list)) else [result]
        names = self.output_names or [f"out{i}" for i in range(len(items))]
        by_name = dict(zip(names, items))
        found = {}
        for s, out in self.state.items():
            key = names[out] if isinstance(out, int) and out < len(names) else out
            node = by_name.get(key)
            if node is not None:
                found[node] = s
        return found

    # ------------------------------------------------------------------ the walk
    def run(self) -> Graph:
        torch = self.torch
        placeholders = [n.target for n in self.traced.graph.nodes if n.op == "placeholder"]
        missing = [p for p in placeholders if p not in self.inputs]
        if missing:
            raise SpidecError(f"no shape given for the forward argument(s) {', '.join(missing)}", file=self.source,
                              hint="pass inputs={'" + missing[0] + "': (per-sample shape)} or set spidec_inputs")
        extra = [k for k in self.inputs if k not in placeholders]
        if extra:
            raise SpidecError(f"inputs names {', '.join(extra)}, which forward does not take (it takes "
                              f"{', '.join(placeholders)})", file=self.source)
        if not self.state and self.output_names:  # the naming convention: z pairs with z_next
            self.state = {p: f"{p}_next" for p in self.inputs if f"{p}_next" in self.output_names}
        self.pop_names = self.state_names()
        for node in self.traced.graph.nodes:
            where = self.where(node)
            if node.op == "placeholder":
                shape = self.inputs[node.target]
                self.env[node] = (self.low.add_state(node.target, shape) if node.target in self.state
                                  else self.low.add_input(node.target, shape))
            elif node.op == "get_attr":
                obj = self.traced
                for part in node.target.split("."):
                    obj = getattr(obj, part)
                self.env[node] = Const(_np(obj)) if isinstance(obj, torch.Tensor) else obj
            elif node.op == "call_module":
                self.env[node] = self.call_module(node, self.traced.get_submodule(node.target), where)
            elif node.op == "call_function":
                self.env[node] = self.call_function(node, where)
            elif node.op == "call_method":
                self.env[node] = self.call_method(node, where)
            elif node.op == "output":
                return self.finish(node)
        raise SpidecError("the traced graph has no output", file=self.source)  # pragma: no cover

    def finish(self, node: Any) -> Graph:
        result = self.value(node.args[0])
        items = list(result) if isinstance(result, (tuple, list)) else [result]
        names = self.output_names or [f"out{i}" for i in range(len(items))]
        if len(names) != len(items):
            raise SpidecError(f"forward returns {len(items)} values but {len(names)} output names are given",
                              file=self.source)
        pairs = {}
        for s, out in self.state.items():
            if isinstance(out, int):
                if not 0 <= out < len(names):
                    raise SpidecError(f"state '{s}' is paired with output index {out}, but forward returns "
                                      f"{len(names)} values", file=self.source)
                out = names[out]
            pairs[s] = out
        return self.low.finish(dict(zip(names, items)), pairs, output_order=names)

    def population(self, node: Any, v: Value, where: str) -> Affine:
        hint = self.pop_names.get(node) or (node.target if node.op == "call_module" else node.name)
        return self.low.population(v, hint, where)

    def clamp(self, node: Any, v: Value, lo: Any, hi: Any, where: str) -> Any:
        if isinstance(v, Const):
            return Const(np.clip(v.value, lo, hi))
        if lo == 0 and hi == 1:
            return self.population(node, v, where)
        if lo == 0 and hi is None:
            return self.relu(node, v, where)
        raise self.low.error(where, f"clamps to [{lo}, {hi}]; a population's rate is clamp(x, 0, 1)",
                             hint="write torch.clamp(x, 0, 1) or nn.Hardtanh(0, 1); scale the input current "
                             "instead of the bounds")

    def relu(self, node: Any, v: Value, where: str) -> Affine:
        self.low.warn(where, "ReLU is read as a population clamp(x, 0, 1): spike rates saturate at 1 (write "
                      "nn.Hardtanh(0, 1) / torch.clamp(x, 0, 1) to say so and silence this warning)")
        return self.population(node, v, where)

    def hardsigmoid(self, node: Any, v: Value, where: str) -> Affine:
        a = self.low.expect_affine(self.low.scale(v, 1.0 / 6.0, where), where)
        return self.population(node, self.low.add_offset(a, np.array(0.5, np.float32), where), where)

    def refuse(self, where: str, what: str) -> SpidecError:
        return self.low.error(where, what)

    # ------------------------------------------------------------------ modules
    def call_module(self, node: Any, m: Any, where: str) -> Any:
        nn = self.torch.nn
        args, _ = self.args(node)
        x = args[0] if args else None
        label = node.target
        if isinstance(m, nn.Linear):
            return self.low.dense(x, _np(m.weight), None if m.bias is None else _np(m.bias), where, label)
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros":
                raise self.low.error(where, f"pads in mode '{m.padding_mode}'; only zero padding is linear")
            self.check_conv(m.dilation, m.groups, where)
            pads = self.conv_pads(m.padding, m.kernel_size, m.stride, where)
            return self.low.conv2d(x, _np(m.weight), None if m.bias is None else _np(m.bias), _pair(m.stride),
                                   pads, where, label)
        if isinstance(m, nn.ConvTranspose2d):
            self.check_conv(m.dilation, m.groups, where)
            return self.low.conv_transpose2d(x, _np(m.weight), None if m.bias is None else _np(m.bias),
                                             _pair(m.stride), _pair(m.padding), _pair(m.output_padding), where,
                                             label)
        if isinstance(m, nn.AvgPool2d):
            return self.avgpool(x, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                                m.divisor_override, where)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return self.adaptive_avgpool(x, m.output_size, where)
        if isinstance(m, nn.Flatten):
            if m.end_dim not in (-1,):
                raise self.low.error(where, "flattens only part of the sample (end_dim != -1)")
            return self.low.flatten(x, m.start_dim, where)
        if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)):
            return x
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.running_mean is None:
                raise self.low.error(where, "has no running statistics (track_running_stats=False)")
            scale = _np(m.weight) if m.weight is not None else np.ones(m.num_features, np.float32)
            bias = _np(m.bias) if m.bias is not None else np.zeros(m.num_features, np.float32)
            return self.low.batchnorm(x, scale, bias, _np(m.running_mean), _np(m.running_var), m.eps, where)
        if isinstance(m, nn.Hardtanh):
            return self.clamp(node, x, m.min_val, m.max_val, where)
        if isinstance(m, nn.ReLU):
            return self.relu(node, x, where)
        if isinstance(m, nn.Hardsigmoid):
            return self.hardsigmoid(node, x, where)
        if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
            return self.low.pending("softmax", x, where)
        if isinstance(m, (nn.MaxPool2d, nn.MaxPool1d, nn.AdaptiveMaxPool2d)):
            raise self.refuse(where, "max pooling is not linear; use nn.AvgPool2d instead")
        if isinstance(m, (nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Softplus, nn.ReLU6,
                          nn.Hardswish)):
            raise self.refuse(where, f"{type(m).__name__} is not a spiking rate; populations are clamp(x, 0, 1): "
                              "use nn.Hardtanh(0, 1)")
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)):
            raise self.refuse(where, f"{type(m).__name__} is not linear; use BatchNorm (folded) or none")
        raise self.refuse(where, f"module type {type(m).__name__} is not supported; spidec reads nn.Linear, "
                          "Conv2d, ConvTranspose2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, Dropout, Identity, "
                          "BatchNorm1d/2d (eval), Hardtanh(0, 1), ReLU, Hardsigmoid")

    def check_conv(self, dilation: Any, groups: int, where: str) -> None:
        if _pair(dilation) != (1, 1):
            raise self.low.error(where, "convolution with dilation is not supported", hint="use dilation=1")
        if groups != 1:
            raise self.low.error(where, f"grouped convolution (groups={groups}) is not supported",
                                 hint="use groups=1")

    def conv_pads(self, padding: Any, kernel: Any, stride: Any, where: str) -> tuple[int, int, int, int]:
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            kh, kw = _pair(kernel)
            top, left = (kh - 1) // 2, (kw - 1) // 2
            return (top, left, kh - 1 - top, kw - 1 - left)
        ph, pw = _pair(padding)
        return (ph, pw, ph, pw)

    def avgpool(self, x: Value, kernel: Any, stride: Any, padding: Any, ceil_mode: bool, count_include_pad: bool,
                divisor_override: Any, where: str) -> Affine:
        if ceil_mode:
            raise self.low.error(where, "ceil_mode=True is not supported", hint="use ceil_mode=False")
        if divisor_override is not None:
            raise self.low.error(where, "divisor_override is not supported")
        stride = kernel if stride in (None, []) else stride
        return self.low.avgpool2d(x, _pair(kernel), _pair(stride), _pair(padding), bool(count_include_pad), where)

    def adaptive_avgpool(self, x: Value, output_size: Any, where: str) -> Affine:
        a = self.low.expect_affine(x, where)
        if len(a.shape) != 3:
            raise self.low.error(where, "spidec reads adaptive average pooling on [C, H, W]")
        oh, ow = _pair(output_size if output_size is not None else a.shape[1:])
        h, w = a.shape[1:]
        if h % oh or w % ow:
            raise self.low.error(where, f"adaptive pooling {h}x{w} -> {oh}x{ow} has uneven windows",
                                 hint="choose an output size that divides the input")
        return self.low.avgpool2d(a, (h // oh, w // ow), (h // oh, w // ow), (0, 0), True, where)

    # ------------------------------------------------------------------ functions and methods
    def call_function(self, node: Any, where: str) -> Any:
        torch = self.torch
        F = torch.nn.functional
        fn = node.target
        args, kw = self.args(node)

        def arg(i: int, name: str, default: Any = None) -> Any:
            return args[i] if len(args) > i else kw.get(name, default)

        handler = self.functions().get(fn)
        if handler is not None:
            return handler(node, arg, where)
        if fn is getattr:
            obj, attr = args[0], args[1]
            if attr == "shape" and isinstance(obj, (Affine, Const)):
                return (BATCH, *obj.shape) if isinstance(obj, Affine) else tuple(obj.value.shape)
            if attr in ("T", "mT") and isinstance(obj, Const):
                return Const(np.ascontiguousarray(obj.value.T))
            raise self.low.error(where, f"reads attribute '{attr}' of a traced value")
        if fn is operator.getitem:
            obj, idx = args[0], args[1]
            if isinstance(obj, (tuple, list)):
                return obj[idx]
            if isinstance(obj, Const):
                return Const(np.asarray(obj.value[idx]))
            raise self.low.error(where, "indexes the network's signal; slicing is not a synapse op",
                                 hint="slice the weights instead")
        if fn in (F.max_pool2d, F.max_pool1d, F.adaptive_max_pool2d):
            raise self.refuse(where, "max pooling is not linear; use F.avg_pool2d instead")
        if fn in (torch.sigmoid, torch.tanh, F.sigmoid, F.tanh, F.gelu, F.silu, F.elu, F.leaky_relu, F.softplus,
                  torch.exp, torch.log, torch.abs, torch.sqrt, F.relu6, F.hardswish):
            raise self.refuse(where, f"{getattr(fn, '__name__', fn)} is not linear and not a spiking rate; "
                              "populations are clamp(x, 0, 1)")
        if fn in (torch.cat, torch.stack):
            raise self.refuse(where, "concatenation is not supported: give each part its own synapse and add "
                              "the currents")
        raise self.refuse(where, f"function {getattr(fn, '__name__', fn)} is not supported between populations")

    def functions(self) -> dict[Callable, Callable]:
        torch = self.torch
        F = torch.nn.functional
        low = self.low

        def linear(node, arg, where):
            w, b = arg(1, "weight"), arg(2, "bias")
            return low.dense(arg(0, "input"), self.const(w, where, "weight"),
                             None if b is None else self.const(b, where, "bias"), where, node.name)

        def conv2d(node, arg, where):
            self.check_conv(arg(5, "dilation", 1), arg(6, "groups", 1), where)
            w, b = self.const(arg(1, "weight"), where, "weight"), arg(2, "bias")
            pads = self.conv_pads(arg(4, "padding", 0), w.shape[2:], arg(3, "stride", 1), where)
            return low.conv2d(arg(0, "input"), w, None if b is None else self.const(b, where, "bias"),
                              _pair(arg(3, "stride", 1)), pads, where, node.name)

        def conv_transpose2d(node, arg, where):
            self.check_conv(arg(7, "dilation", 1), arg(6, "groups", 1), where)
            b = arg(2, "bias")
            return low.conv_transpose2d(arg(0, "input"), self.const(arg(1, "weight"), where, "weight"),
                                        None if b is None else self.const(b, where, "bias"),
                                        _pair(arg(3, "stride", 1)), _pair(arg(4, "padding", 0)),
                                        _pair(arg(5, "output_padding", 0)), where, node.name)

        def avg_pool2d(node, arg, where):
            return self.avgpool(arg(0, "input"), arg(1, "kernel_size"), arg(2, "stride"), arg(3, "padding", 0),
                                arg(4, "ceil_mode", False), arg(5, "count_include_pad", True),
                                arg(6, "divisor_override"), where)

        def adaptive_avg_pool2d(node, arg, where):
            return self.adaptive_avgpool(arg(0, "input"), arg(1, "output_size"), where)

        def flatten(node, arg, where):
            if arg(2, "end_dim", -1) != -1:
                raise low.error(where, "flattens only part of the sample (end_dim != -1)")
            return low.flatten(arg(0, "input"), arg(1, "start_dim", 0), where)

        def clamp(node, arg, where):
            return self.clamp(node, arg(0, "input"), arg(1, "min"), arg(2, "max"), where)

        def hardtanh(node, arg, where):
            return self.clamp(node, arg(0, "input"), arg(1, "min_val", -1.0), arg(2, "max_val", 1.0), where)

        def relu(node, arg, where):
            return self.relu(node, arg(0, "input"), where)

        def hardsigmoid(node, arg, where):
            return self.hardsigmoid(node, arg(0, "input"), where)

        def dropout(node, arg, where):
            return arg(0, "input")

        def add(node, arg, where):
            a, b = arg(0, "input"), arg(1, "other")
            alpha = arg(2, "alpha", 1)
            if alpha != 1:
                b = low.scale(self.as_value(b), alpha, where)
            return self.binary(a, b, where, "add")

        def sub(node, arg, where):
            return self.binary(arg(0, "input"), low.scale(self.as_value(arg(1, "other")), -1.0, where), where,
                               "add")

        def mul(node, arg, where):
            return self.binary(arg(0, "input"), arg(1, "other"), where, "mul")

        def div(node, arg, where):
            a, b = arg(0, "input"), arg(1, "other")
            if isinstance(b, (int, float)):
                return low.scale(a, 1.0 / b, where)
            if isinstance(b, Const):
                return low.scale(a, 1.0 / b.value.astype(np.float64), where)
            raise low.error(where, "divides by a signal; only division by constants is linear")

        def neg(node, arg, where):
            return low.scale(arg(0, "input"), -1.0, where)

        def matmul(node, arg, where):
            a, w = arg(0, "input"), arg(1, "other")
            if not isinstance(w, Const):
                raise low.error(where, "multiplies by a non-constant matrix; synapse weights must be constants")
            return low.dense(a, w.value.T, None, where, node.name)

        def softmax(node, arg, where):
            return low.pending("softmax", arg(0, "input"), where)

        return {
            F.linear: linear, F.conv2d: conv2d, torch.conv2d: conv2d, F.conv_transpose2d: conv_transpose2d,
            torch.conv_transpose2d: conv_transpose2d, F.avg_pool2d: avg_pool2d,
            F.adaptive_avg_pool2d: adaptive_avg_pool2d, torch.flatten: flatten, torch.clamp: clamp,
            torch.clip: clamp, F.hardtanh: hardtanh, F.relu: relu, torch.relu: relu, F.hardsigmoid: hardsigmoid,
            F.dropout: dropout, F.dropout2d: dropout, operator.add: add, torch.add: add, operator.sub: sub,
            torch.sub: sub, operator.mul: mul, torch.mul: mul, operator.truediv: div, torch.div: div,
            operator.neg: neg, torch.neg: neg, operator.matmul: matmul, torch.matmul: matmul,
            F.softmax: softmax, F.log_softmax: softmax, torch.softmax: softmax,
        }

    def as_value(self, v: Any) -> Any:
        return Const(np.asarray(v, np.float32)) if isinstance(v, (int, float)) else v

    def binary(self, a: Any, b: Any, where: str, op: str) -> Any:
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return a + b if op == "add" else a * b
        a, b = self.as_value(a), self.as_value(b)
        return self.low.add(a, b, where) if op == "add" else self.low.mul(a, b, where)

    def call_method(self, node: Any, where: str) -> Any:
        args, kw = self.args(node)
        obj, name = args[0], node.target
        rest = args[1:]

        def arg(i: int, key: str, default: Any = None) -> Any:
            return rest[i] if len(rest) > i else kw.get(key, default)

        low = self.low
        if name in ("clamp", "clip"):
            return self.clamp(node, obj, arg(0, "min"), arg(1, "max"), where)
        if name == "relu":
            return self.relu(node, obj, where)
        if name in ("view", "reshape"):
            target = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
            return low.reshape(obj, [BATCH if t is BATCH else t for t in target], where)
        if name == "flatten":
            return low.flatten(obj, arg(0, "start_dim", 0), where)
        if name == "size":
            shape = (BATCH, *obj.shape) if isinstance(obj, Affine) else tuple(obj.value.shape)
            dim = arg(0, "dim")
            return shape if dim is None else shape[dim]
        if name in ("contiguous", "float", "clone", "detach"):
            return obj
        if name in ("add", "sub", "mul", "div", "__add__", "__mul__"):
            fake = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
                    "__add__": operator.add, "__mul__": operator.mul}[name]
            handler = self.functions()[fake]
            return handler(node, lambda i, k, d=None: ([obj, *rest][i] if len(rest) + 1 > i else kw.get(k, d)),
                           where)
        if name in ("softmax", "log_softmax"):
            return low.pending("softmax", obj, where)
        if name in ("sigmoid", "tanh", "exp", "log", "abs", "sqrt"):
            raise self.refuse(where, f"{name} is not linear and not a spiking rate; populations are clamp(x, 0, 1)")
        raise self.refuse(where, f"method .{name}() is not supported between populations")


def from_torch(module: Any, inputs: Mapping[str, Sequence[int]] | None = None,
               state: Mapping[str, Any] | None = None, outputs: Sequence[str] | None = None, *,
               name: str | None = None) -> Graph:
    """Lower a PyTorch module (one step of the equilibrium map) into the IR; see the module docs."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is an optional extra
        raise SpidecError("from_torch needs PyTorch: pip install 'spidec[torch]'") from None
    if not isinstance(module, torch.nn.Module):
        raise SpidecError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")
    inputs = inputs if inputs is not None else getattr(module, "spidec_inputs", None)
    if inputs is None:
        raise SpidecError(f"no input shapes for {type(module).__name__}",
                          hint="pass inputs={'x': (per-sample shape), ...} or set spidec_inputs on the class")
    state = state if state is not None else getattr(module, "spidec_state", {})
    outputs = outputs if outputs is not None else getattr(module, "spidec_outputs", None)
    with torch.no_grad():
        return _TorchLowering(module, inputs, state, outputs, name or type(module).__name__).run()


__all__ = ["from_torch"]
