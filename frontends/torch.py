"""PyTorch frontend: a ``torch.nn.Module`` whose ``forward`` is one step of a feedback network,
traced with ``torch.fx`` and lowered into the spidec IR.

    g = spidec.from_torch(Cell(), inputs={"x": (64,), "z": (128,)}, state={"z": "z_next"},
                          outputs=["z_next", "logits"])

``inputs`` gives every ``forward`` argument's per-sample shape (no batch dimension); ``state``
pairs each state argument with the output that feeds it back (an output name, or an index into the
returned tuple); ``outputs`` names the returned values. A module may carry the three as class
attributes ``spidec_inputs``, ``spidec_state`` and ``spidec_outputs``.

Each op is lowered by a handler in one of three tables, filled by decorators as in the ONNX
frontend: ``MODULES`` (``call_module`` nodes, by ``torch.nn`` class), ``FUNCTIONS``
(``call_function`` nodes: ``torch.clamp``, ``F.relu``, ``operator.add``, ...) and ``METHODS``
(``call_method`` nodes: ``"view"``, ``"flatten"``, ...). Supporting an op is one handler and its
registration::

    @handles_function("F.some_op", "torch.some_op")   # keys: "nn.X", "F.x", "torch.x" or a callable
    @handles_method("some_op")                         # x.some_op(...): a(0, "input") is x
    def _some_op(c, node, a, where):                   # a(i, "keyword", default) reads an argument
        return c.low.scale(a(0, "input"), 2.0, where)  # the lowered value, or raise c.low.error(where, ...)
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from ..errors import SpidecError
from ..ir import Graph
from ._lower import Affine, Const, Lowering, Value

BATCH = -1  # what x.size(0) / x.shape[0] stands for while tracing: the batch, kept symbolic


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def _target_name(node: Any) -> str:
    """``torch.sigmoid`` -> ``sigmoid``; a method's target is its name already."""
    return getattr(node.target, "__name__", node.target)


class _Args:
    """A call's evaluated arguments. fx keeps them as the user wrote them, positional or by keyword,
    so a handler asks for both: ``a(1, "weight")`` is the second positional argument, else the keyword.

    For a method call, position 0 is the tensor itself: ``x.clamp(0, 1)`` reads like
    ``torch.clamp(x, 0, 1)``, so one handler serves both forms.
    """

    def __init__(self, pos: list[Any], kw: dict[str, Any]) -> None:
        self.pos, self.kw = pos, kw

    def __call__(self, i: int, name: str, default: Any = None) -> Any:
        return self.pos[i] if len(self.pos) > i else self.kw.get(name, default)


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

    def args(self, node: Any) -> _Args:
        return _Args([self.value(a) for a in node.args], {k: self.value(v) for k, v in node.kwargs.items()})

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

    # ------------------------------------------------------------------ dispatch to the handlers
    def call_module(self, node: Any, m: Any, where: str) -> Any:
        args = self.args(node)
        x = args.pos[0] if args.pos else None
        modules, _ = _tables()
        for cls in type(m).__mro__:  # isinstance semantics: a subclass is read as the class it extends
            handler = modules.get(cls)
            if handler is not None:
                return handler(self, node, m, x, where)
        raise self.low.error(where, f"module type {type(m).__name__} is not supported; spidec reads nn.Linear, "
                             "Conv2d, ConvTranspose2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, Dropout, Identity, "
                             "BatchNorm1d/2d (eval), Hardtanh(0, 1), ReLU, Hardsigmoid")

    def call_function(self, node: Any, where: str) -> Any:
        args = self.args(node)
        _, functions = _tables()
        handler = functions.get(node.target)
        if handler is None:
            raise self.low.error(where, f"function {_target_name(node)} is not supported between populations")
        return handler(self, node, args, where)

    def call_method(self, node: Any, where: str) -> Any:
        args = self.args(node)
        handler = METHODS.get(node.target)
        if handler is None:
            raise self.low.error(where, f"method .{node.target}() is not supported between populations")
        return handler(self, node, args, where)

    # ------------------------------------------------------------------ lowering shared by the handlers
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

    def as_value(self, v: Any) -> Any:
        return Const(np.asarray(v, np.float32)) if isinstance(v, (int, float)) else v

    def binary(self, a: Any, b: Any, where: str, op: str) -> Any:
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return a + b if op == "add" else a * b
        a, b = self.as_value(a), self.as_value(b)
        return self.low.add(a, b, where) if op == "add" else self.low.mul(a, b, where)


# ================================================================ op handlers
ModuleHandler = Callable[[_TorchLowering, Any, Any, Any, str], Any]  # (c, node, module, input, where)
CallHandler = Callable[[_TorchLowering, Any, _Args, str], Any]  # (c, node, arguments, where)
_H = TypeVar("_H", ModuleHandler, CallHandler)

# Keys name torch objects as "nn.Linear", "F.relu" or "torch.clamp" (resolved by _tables, so that
# importing this module does not import torch, an optional extra); other callables (operator.add,
# getattr) are keys as they are. METHODS is keyed by the method's name.
MODULES: dict[str, ModuleHandler] = {}
FUNCTIONS: dict[str | Callable[..., Any], CallHandler] = {}
METHODS: dict[str, CallHandler] = {}


@functools.cache
def _tables() -> tuple[dict[type, ModuleHandler], dict[Any, CallHandler]]:
    """``MODULES`` and ``FUNCTIONS`` keyed by the torch objects themselves, as fx nodes name them."""
    import torch

    roots = {"torch": torch, "nn": torch.nn, "F": torch.nn.functional}

    def resolve(key: Any) -> Any:
        if not isinstance(key, str):
            return key
        root, _, attr = key.partition(".")
        return getattr(roots[root], attr)

    return ({resolve(k): h for k, h in MODULES.items()}, {resolve(k): h for k, h in FUNCTIONS.items()})


def _registrar(table: dict[Any, _H]) -> Callable[..., Callable[[_H], _H]]:
    def handles(*keys: Any) -> Callable[[_H], _H]:
        def deco(fn: _H) -> _H:
            for key in keys:
                table[key] = fn
            _tables.cache_clear()  # a handler registered after a first from_torch call is seen too
            return fn

        return deco

    return handles


handles_module = _registrar(MODULES)
handles_function = _registrar(FUNCTIONS)
handles_method = _registrar(METHODS)


# ---------------------------------------------------------------- modules
@handles_module("nn.Linear")
def _nn_linear(c: _TorchLowering, node: Any, m: Any, x: Any, where: str) -> Any:
    return c.low.dense(x, _np(m.weight), None if m.bias is None else _np(m.bias), where, node.target)


@handles_module("nn.Conv2d")
def _nn_conv2d(c: _TorchLowering, node: Any, m: Any, x: Any, where: str) -> Any:
    if m.padding_mode != "zeros":
        raise c.low.error(where, f"pads in mode '{m.padding_mode}'; only zero padding is linear")
    c.check_conv(m.dilation, m.groups, where)
    pads = c.conv_pads(m.padding, m.kernel_size, m.stride, where)
    return c.low.conv2d(x, _np(m.weight), None if m.bias is None else _np(m.bias), _pair(m.stride), pads, where,
                        node.target)


@handles_module("nn.ConvTranspose2d")
def _nn_conv_transpose2d(c: _TorchLowering, node: Any, m: Any, x: Any, where: str) -> Any:
    c.check_conv(m.dilation, m.groups, where)
    return c.low.conv_transpose2d(x, _np(m.weight), None if m.bias is None else _np(m.bias), _pair(m.stride),
                                  _pair(m.padding), _pair(m.output_padding), where, node.target)


@handles_module("nn.AvgPool2d")
def _nn_avgpool2d(c: _TorchLowering, node: Any, m: Any, x: Any, where: str) -> Any:
    return c.avgpool(x, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override,
                     where)


@handles_module("nn.AdaptiveAvgPool2d")
def _nn_adaptive_avgpool2d(c: _TorchLowering, node: Any, m: Any, x: Any, where: str) -> Any:
    return c.adaptive_avgpool(x, m.output_size, where)


@handles_module("nn.Flatten")
def _nn_flatten(c: _TorchLowering, node: Any, m: Any, x: Any, where: str) -> Any:
    if m.end_dim not in (-1,):
        raise c.low.error(where, "flattens only part of the sample (end_dim != -1)")
    return c.low.flatten(x, m.start_dim, where)


@handles_module("nn.Identity")
def _nn_identity(c: _TorchLowering, node: Any, m: Any, x: Any, where: str) -> Any:
    return x


@handles_module("nn.Dropout")
def _nn_dropout(c: _TorchLowering, node: Any, m: Any, x: Any, where: str) -> Any:
    """In training mode: variational dropout on the synapse it follows (one mask per sample for
    both stages); in eval mode: nothing."""
    return c.low.dropout(x, float(m.p), where) if m.training else x


@handles_module("nn.Dropout1d", "nn.Dropout2d")
def _nn_channel_dropout(c: _TorchLowering, node: Any, m: Any, x: Any, where: str) -> Any:
    if m.training and m.p > 0:
        raise c.low.error(where, f"{type(m).__name__} drops whole channels; spidec's dropout masks elements "
                          "(the SPIDE authors' VariationalHidDropout2d(spatial=False))", hint="use nn.Dropout, or "
                          "call .eval() on this module")
    return x


@handles_module("nn.BatchNorm1d", "nn.BatchNorm2d")
def _nn_batchnorm(c: _TorchLowering, node: Any, m: Any, x: Any, where: str) -> Any:
    if m.running_mean is None:
        raise c.low.error(where, "has no running statistics (track_running_stats=False)")
    scale = _np(m.weight) if m.weight is not None else np.ones(m.num_features, np.float32)
    bias = _np(m.bias) if m.bias is not None else np.zeros(m.num_features, np.float32)
    return c.low.batchnorm(x, scale, bias, _np(m.running_mean), _np(m.running_var), m.eps, where)


@handles_module("nn.Hardtanh")  # nn.ReLU6 too: it is a Hardtanh(0, 6), refused for its bounds
def _nn_hardtanh(c: _TorchLowering, node: Any, m: Any, x: Any, where: str) -> Any:
    return c.clamp(node, x, m.min_val, m.max_val, where)


@handles_module("nn.ReLU")
def _nn_relu(c: _TorchLowering, node: Any, m: Any, x: Any, where: str) -> Any:
    return c.relu(node, x, where)


@handles_module("nn.Hardsigmoid")
def _nn_hardsigmoid(c: _TorchLowering, node: Any, m: Any, x: Any, where: str) -> Any:
    return c.hardsigmoid(node, x, where)


@handles_module("nn.Softmax", "nn.LogSoftmax")
def _nn_softmax(c: _TorchLowering, node: Any, m: Any, x: Any, where: str) -> Any:
    return c.low.pending("softmax", x, where)


# Refusals: modules that look usable but are not linear, with what to write instead.
@handles_module("nn.MaxPool2d", "nn.MaxPool1d", "nn.AdaptiveMaxPool2d")
def _nn_max_pool(c: _TorchLowering, node: Any, m: Any, x: Any, where: str) -> Any:
    raise c.low.error(where, "max pooling is not linear; use nn.AvgPool2d instead")


@handles_module("nn.Sigmoid", "nn.Tanh", "nn.GELU", "nn.SiLU", "nn.ELU", "nn.LeakyReLU", "nn.Softplus",
                "nn.Hardswish")
def _nn_not_a_rate(c: _TorchLowering, node: Any, m: Any, x: Any, where: str) -> Any:
    raise c.low.error(where, f"{type(m).__name__} is not a spiking rate; populations are clamp(x, 0, 1): "
                      "use nn.Hardtanh(0, 1)")


@handles_module("nn.LayerNorm", "nn.GroupNorm", "nn.InstanceNorm2d")
def _nn_norm(c: _TorchLowering, node: Any, m: Any, x: Any, where: str) -> Any:
    raise c.low.error(where, f"{type(m).__name__} is not linear; use BatchNorm (folded) or none")


# ---------------------------------------------------------------- functions (and the methods that mean the same)
@handles_function("F.linear")
def _linear(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    w, b = a(1, "weight"), a(2, "bias")
    return c.low.dense(a(0, "input"), c.const(w, where, "weight"),
                       None if b is None else c.const(b, where, "bias"), where, node.name)


@handles_function("F.conv2d", "torch.conv2d")
def _conv2d(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    c.check_conv(a(5, "dilation", 1), a(6, "groups", 1), where)
    w, b = c.const(a(1, "weight"), where, "weight"), a(2, "bias")
    pads = c.conv_pads(a(4, "padding", 0), w.shape[2:], a(3, "stride", 1), where)
    return c.low.conv2d(a(0, "input"), w, None if b is None else c.const(b, where, "bias"),
                        _pair(a(3, "stride", 1)), pads, where, node.name)


@handles_function("F.conv_transpose2d", "torch.conv_transpose2d")
def _conv_transpose2d(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    c.check_conv(a(7, "dilation", 1), a(6, "groups", 1), where)
    b = a(2, "bias")
    return c.low.conv_transpose2d(a(0, "input"), c.const(a(1, "weight"), where, "weight"),
                                  None if b is None else c.const(b, where, "bias"), _pair(a(3, "stride", 1)),
                                  _pair(a(4, "padding", 0)), _pair(a(5, "output_padding", 0)), where, node.name)


@handles_function("F.avg_pool2d")
def _avg_pool2d(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    return c.avgpool(a(0, "input"), a(1, "kernel_size"), a(2, "stride"), a(3, "padding", 0),
                     a(4, "ceil_mode", False), a(5, "count_include_pad", True), a(6, "divisor_override"), where)


@handles_function("F.adaptive_avg_pool2d")
def _adaptive_avg_pool2d(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    return c.adaptive_avgpool(a(0, "input"), a(1, "output_size"), where)


@handles_function("torch.flatten")
def _flatten(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    if a(2, "end_dim", -1) != -1:
        raise c.low.error(where, "flattens only part of the sample (end_dim != -1)")
    return c.low.flatten(a(0, "input"), a(1, "start_dim", 0), where)


@handles_function("torch.clamp", "torch.clip")
@handles_method("clamp", "clip")
def _clamp(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    return c.clamp(node, a(0, "input"), a(1, "min"), a(2, "max"), where)


@handles_function("F.hardtanh")
def _hardtanh(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    return c.clamp(node, a(0, "input"), a(1, "min_val", -1.0), a(2, "max_val", 1.0), where)


@handles_function("F.relu", "torch.relu")
@handles_method("relu")
def _relu(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    return c.relu(node, a(0, "input"), where)


@handles_function("F.hardsigmoid")
def _hardsigmoid(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    return c.hardsigmoid(node, a(0, "input"), where)


@handles_function("F.dropout")
def _f_dropout(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    x = a(0, "input")
    p, training = a(1, "p", 0.5), a(2, "training", True)
    return c.low.dropout(x, float(p), where) if training else x


@handles_function("F.dropout2d")
def _f_dropout2d(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    if a(2, "training", True) and a(1, "p", 0.5):
        raise c.low.error(where, "dropout2d drops whole channels; spidec's dropout masks elements", hint="use "
                          "F.dropout")
    return a(0, "input")


@handles_method("contiguous", "float", "clone", "detach")
def _passthrough(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    return a(0, "input")


@handles_function(operator.add, "torch.add")
@handles_method("add", "__add__")
def _add(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    x, y = a(0, "input"), a(1, "other")
    alpha = a(2, "alpha", 1)
    if alpha != 1:
        y = c.low.scale(c.as_value(y), alpha, where)
    return c.binary(x, y, where, "add")


@handles_function(operator.sub, "torch.sub")
@handles_method("sub")
def _sub(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    return c.binary(a(0, "input"), c.low.scale(c.as_value(a(1, "other")), -1.0, where), where, "add")


@handles_function(operator.mul, "torch.mul")
@handles_method("mul", "__mul__")
def _mul(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    return c.binary(a(0, "input"), a(1, "other"), where, "mul")


@handles_function(operator.truediv, "torch.div")
@handles_method("div")
def _div(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    x, y = a(0, "input"), a(1, "other")
    if isinstance(y, (int, float)):
        return c.low.scale(x, 1.0 / y, where)
    if isinstance(y, Const):
        return c.low.scale(x, 1.0 / y.value.astype(np.float64), where)
    raise c.low.error(where, "divides by a signal; only division by constants is linear")


@handles_function(operator.neg, "torch.neg")
def _neg(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    return c.low.scale(a(0, "input"), -1.0, where)


@handles_function(operator.matmul, "torch.matmul")
def _matmul(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    x, w = a(0, "input"), a(1, "other")
    if not isinstance(w, Const):
        raise c.low.error(where, "multiplies by a non-constant matrix; synapse weights must be constants")
    return c.low.dense(x, w.value.T, None, where, node.name)


@handles_function("F.softmax", "F.log_softmax", "torch.softmax")
@handles_method("softmax", "log_softmax")
def _softmax(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    return c.low.pending("softmax", a(0, "input"), where)


@handles_function(getattr)
def _getattr(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    obj, attr = a.pos[0], a.pos[1]
    if attr == "shape" and isinstance(obj, (Affine, Const)):
        return (BATCH, *obj.shape) if isinstance(obj, Affine) else tuple(obj.value.shape)
    if attr in ("T", "mT") and isinstance(obj, Const):
        return Const(np.ascontiguousarray(obj.value.T))
    raise c.low.error(where, f"reads attribute '{attr}' of a traced value")


@handles_function(operator.getitem)
def _getitem(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    obj, idx = a.pos[0], a.pos[1]
    if isinstance(obj, (tuple, list)):
        return obj[idx]
    if isinstance(obj, Const):
        return Const(np.asarray(obj.value[idx]))
    raise c.low.error(where, "indexes the network's signal; slicing is not a synapse op",
                      hint="slice the weights instead")


# Refusals: functions that look usable but are not linear, with what to write instead.
@handles_function("F.max_pool2d", "F.max_pool1d", "F.adaptive_max_pool2d")
def _max_pool(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    raise c.low.error(where, "max pooling is not linear; use F.avg_pool2d instead")


@handles_function("torch.sigmoid", "torch.tanh", "F.sigmoid", "F.tanh", "F.gelu", "F.silu", "F.elu", "F.leaky_relu",
                  "F.softplus", "torch.exp", "torch.log", "torch.abs", "torch.sqrt", "F.relu6", "F.hardswish")
@handles_method("sigmoid", "tanh", "exp", "log", "abs", "sqrt")
def _not_linear(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    raise c.low.error(where, f"{_target_name(node)} is not linear and not a spiking rate; populations are "
                      "clamp(x, 0, 1)")


@handles_function("torch.cat", "torch.stack")
def _concat(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    raise c.low.error(where, "concatenation is not supported: give each part its own synapse and add the currents")


# ---------------------------------------------------------------- methods only
@handles_method("view", "reshape")
def _view(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    rest = a.pos[1:]  # x.view(b, -1) or x.view((b, -1)); x.size(0) already reads as BATCH
    target = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
    return c.low.reshape(a.pos[0], list(target), where)


@handles_method("flatten")
def _flatten_method(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    if a(2, "end_dim", -1) != -1:  # x.flatten(1, 2) used to flatten everything silently
        raise c.low.error(where, "flattens only part of the sample (end_dim != -1)")
    return c.low.flatten(a.pos[0], a(1, "start_dim", 0), where)


@handles_method("size")
def _size(c: _TorchLowering, node: Any, a: _Args, where: str) -> Any:
    obj = a.pos[0]
    shape = (BATCH, *obj.shape) if isinstance(obj, Affine) else tuple(obj.value.shape)
    dim = a(1, "dim")
    return shape if dim is None else shape[dim]


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
