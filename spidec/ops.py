"""Linear operators: what a synapse is made of.

A synapse is a chain of linear ops from one node's spikes (or rates) to another node's input
current. Every op works on batched numpy arrays ``[B, *shape]`` and knows

* ``shape_out(shape_in)``: the per-sample output shape, or a :class:`SpidecError` saying why the
  input shape does not fit;
* ``apply(x)``: the forward map;
* ``adjoint(y, shape_in)``: the transposed map, exactly (``<A x, y> == <x, A^T y>``); the backward
  synapse of SPIDE is the reversed chain of adjoints, so this one rule replaces every hand-written
  backward path;
* ``grad(post, pre)`` for ops with learnable tensors: ``d<post, A(pre)>/d(tensor)``, summed over
  the batch (dense: the outer product, conv: the correlation).

Ops are frozen values; their tensors are read-only copies, so passes can share them safely.
Affine offsets (biases) never live in an op: they belong to the population the synapse feeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .errors import SpidecError

Shape = tuple[int, ...]

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def fmt_shape(shape: Shape) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def as_tensor(value: Any, what: str, ndim: int | None = None) -> np.ndarray:
    """A read-only float array copy of ``value``; integer input is promoted to float64."""
    arr = np.array(value, copy=True)
    if arr.dtype.kind in "iub":
        arr = arr.astype(np.float64)
    if arr.dtype.type not in FLOAT_DTYPES:
        raise SpidecError(f"{what} must be a float tensor, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise SpidecError(f"{what} must have {ndim} dimensions, got shape {fmt_shape(arr.shape)}")
    arr.setflags(write=False)
    return arr


def _pair(value: Any, what: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise SpidecError(f"{what} must be an integer or a pair of integers, got {value!r}") from None
    if a < minimum or b < minimum:
        raise SpidecError(f"{what} must be >= {minimum}, got {[a, b]}")
    return (a, b)


def values_equal(a: Any, b: Any) -> bool:
    """Equality that treats arrays as values (shape, dtype and every element)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and bool(np.array_equal(a, b))
        )
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


class ValueEq:
    """Dataclass mix-in: field-wise equality with arrays compared as values."""

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        return all(values_equal(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Arg:
    """One argument of an op in the text form: ``kind`` tells how it is written and read."""

    name: str
    kind: str  # tensor | scalar_or_tensor | pair | shape | pads | bool
    default: Any = None
    required: bool = False


class LinearOp(ValueEq):
    """Base class of every linear op (see the module docstring for the contract)."""

    kind: ClassVar[str] = ""
    args: ClassVar[tuple[Arg, ...]] = ()
    # step_kernel: the step program's name for a synapse whose work is this one op (Chain.kernel);
    # None: only as part of a longer chain. ``view``: a reshape that is a no-op on flat memory.
    step_kernel: ClassVar[str | None] = None
    view: ClassVar[bool] = False

    def shape_out(self, shape_in: Shape) -> Shape:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def adjoint(self, y: np.ndarray, shape_in: Shape) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def tensors(self) -> dict[str, np.ndarray]:
        """Every array this op holds (learnable or not), by field name."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), np.ndarray)}

    def learnable(self) -> tuple[str, ...]:
        """Names of the tensors that training updates."""
        return ()

    def grad(self, post: np.ndarray, pre: np.ndarray) -> dict[str, np.ndarray]:
        """Gradient of ``sum(post * apply(pre))`` w.r.t. each learnable tensor, summed over batch."""
        return {}

    def replace(self, **changes: Any) -> LinearOp:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return type(self)(**values)

    def num_parameters(self) -> int:
        t = self.tensors()
        return sum(int(t[name].size) for name in self.learnable())


@dataclass(frozen=True, eq=False)
class Dense(LinearOp):
    """``y = W x`` with ``W`` of shape ``[out, in]`` on inputs of shape ``[in]``."""

    weight: np.ndarray
    trainable: bool = True
    kind: ClassVar[str] = "dense"
    step_kernel: ClassVar[str | None] = "dense"
    args: ClassVar[tuple[Arg, ...]] = (Arg("weight", "tensor", required=True), Arg("trainable", "bool", True))

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", as_tensor(self.weight, "dense weight", ndim=2))
        object.__setattr__(self, "trainable", bool(self.trainable))

    def shape_out(self, shape_in: Shape) -> Shape:
        n_out, n_in = self.weight.shape
        if tuple(shape_in) != (n_in,):
            raise SpidecError(f"dense with weight {fmt_shape(self.weight.shape)} expects input shape "
                              f"[{n_in}], got {fmt_shape(shape_in)}",
                              hint="insert a flatten before it" if len(shape_in) > 1 else None)
        return (n_out,)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight.T

    def adjoint(self, y: np.ndarray, shape_in: Shape) -> np.ndarray:
        return y @ self.weight

    def learnable(self) -> tuple[str, ...]:
        return ("weight",) if self.trainable else ()

    def grad(self, post: np.ndarray, pre: np.ndarray) -> dict[str, np.ndarray]:
        return {"weight": post.T @ pre} if self.trainable else {}


def _conv_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def _windows(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int]) -> np.ndarray:
    """``[B, C, Ho, Wo, kh, kw]`` view of the zero-padded input's receptive fields."""
    if p != (0, 0):
        x = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    win = sliding_window_view(x, k, axis=(2, 3))
    return win[:, :, :: s[0], :: s[1]]


def _scatter_windows(cols: np.ndarray, shape_in: Shape, k: tuple[int, int], s: tuple[int, int],
                     p: tuple[int, int]) -> np.ndarray:
    """Adjoint of :func:`_windows`: add ``cols [B, C, Ho, Wo, kh, kw]`` back onto the input grid."""
    b, c, ho, wo = cols.shape[:4]
    _, h, w = shape_in
    xp = np.zeros((b, c, h + 2 * p[0], w + 2 * p[1]), dtype=cols.dtype)
    for i in range(k[0]):
        for j in range(k[1]):
            xp[:, :, i: i + s[0] * (ho - 1) + 1: s[0], j: j + s[1] * (wo - 1) + 1: s[1]] += cols[..., i, j]
    return xp[:, :, p[0]: p[0] + h, p[1]: p[1] + w]


def _conv(x: np.ndarray, w: np.ndarray, s: tuple[int, int], p: tuple[int, int]) -> np.ndarray:
    """Cross-correlation of ``x [B, Cin, H, W]`` with ``w [Cout, Cin, kh, kw]``."""
    win = _windows(x, (w.shape[2], w.shape[3]), s, p)
    out = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))  # [B, Ho, Wo, Cout]
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _conv_adjoint(y: np.ndarray, w: np.ndarray, shape_in: Shape, s: tuple[int, int],
                  p: tuple[int, int]) -> np.ndarray:
    """Adjoint of :func:`_conv` onto an input of per-sample shape ``shape_in``."""
    cols = np.tensordot(y, w, axes=([1], [0]))  # [B, Ho, Wo, Cin, kh, kw]
    return _scatter_windows(cols.transpose(0, 3, 1, 2, 4, 5), shape_in, (w.shape[2], w.shape[3]), s, p)


def _conv_grad(post: np.ndarray, pre: np.ndarray, k: tuple[int, int], s: tuple[int, int],
               p: tuple[int, int]) -> np.ndarray:
    """``d<post, conv_w(pre)>/dw``, batch-summed: ``[Cout, Cin, kh, kw]``."""
    win = _windows(pre, k, s, p)  # [B, Cin, Ho, Wo, kh, kw]
    return np.tensordot(post, win, axes=([0, 2, 3], [0, 2, 3]))


@dataclass(frozen=True, eq=False)
class Conv2d(LinearOp):
    """2-D cross-correlation (PyTorch/ONNX ``Conv``), weight ``[Cout, Cin, kh, kw]``, no groups."""

    weight: np.ndarray
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    trainable: bool = True
    kind: ClassVar[str] = "conv2d"
    step_kernel: ClassVar[str | None] = "conv"
    args: ClassVar[tuple[Arg, ...]] = (
        Arg("weight", "tensor", required=True),
        Arg("stride", "pair", (1, 1)),
        Arg("padding", "pair", (0, 0)),
        Arg("trainable", "bool", True),
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", as_tensor(self.weight, "conv2d weight", ndim=4))
        object.__setattr__(self, "stride", _pair(self.stride, "conv2d stride", 1))
        object.__setattr__(self, "padding", _pair(self.padding, "conv2d padding", 0))
        object.__setattr__(self, "trainable", bool(self.trainable))

    @property
    def kernel(self) -> tuple[int, int]:
        return (int(self.weight.shape[2]), int(self.weight.shape[3]))

    def shape_out(self, shape_in: Shape) -> Shape:
        cout, cin, kh, kw = self.weight.shape
        if len(shape_in) != 3 or shape_in[0] != cin:
            raise SpidecError(f"conv2d with weight {fmt_shape(self.weight.shape)} expects input shape "
                              f"[{cin}, H, W], got {fmt_shape(shape_in)}")
        _, h, w = shape_in
        (sh, sw), (ph, pw) = self.stride, self.padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise SpidecError(f"conv2d kernel {kh}x{kw} is larger than the padded input "
                              f"{h + 2 * ph}x{w + 2 * pw}")
        return (int(cout), _conv_out(h, kh, sh, ph), _conv_out(w, kw, sw, pw))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return _conv(x, self.weight, self.stride, self.padding)

    def adjoint(self, y: np.ndarray, shape_in: Shape) -> np.ndarray:
        return _conv_adjoint(y, self.weight, shape_in, self.stride, self.padding)

    def learnable(self) -> tuple[str, ...]:
        return ("weight",) if self.trainable else ()

    def grad(self, post: np.ndarray, pre: np.ndarray) -> dict[str, np.ndarray]:
        if not self.trainable:
            return {}
        return {"weight": _conv_grad(post, pre, self.kernel, self.stride, self.padding)}


@dataclass(frozen=True, eq=False)
class ConvTranspose2d(LinearOp):
    """Transposed 2-D convolution (PyTorch/ONNX ``ConvTranspose``), weight ``[Cin, Cout, kh, kw]``:
    exactly the adjoint of ``Conv2d`` with the same weight, stride and padding, on an output
    enlarged by ``output_padding`` (< stride). SPIDE's ConvNet-F uses it for the feedback."""

    weight: np.ndarray
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    output_padding: tuple[int, int] = (0, 0)
    trainable: bool = True
    kind: ClassVar[str] = "conv_transpose2d"
    step_kernel: ClassVar[str | None] = "convt"
    args: ClassVar[tuple[Arg, ...]] = (
        Arg("weight", "tensor", required=True),
        Arg("stride", "pair", (1, 1)),
        Arg("padding", "pair", (0, 0)),
        Arg("output_padding", "pair", (0, 0)),
        Arg("trainable", "bool", True),
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", as_tensor(self.weight, "conv_transpose2d weight", ndim=4))
        object.__setattr__(self, "stride", _pair(self.stride, "conv_transpose2d stride", 1))
        object.__setattr__(self, "padding", _pair(self.padding, "conv_transpose2d padding", 0))
        object.__setattr__(self, "output_padding", _pair(self.output_padding, "conv_transpose2d output_padding", 0))
        object.__setattr__(self, "trainable", bool(self.trainable))
        if any(o >= s for o, s in zip(self.output_padding, self.stride)):
            raise SpidecError(f"conv_transpose2d output_padding {list(self.output_padding)} must be smaller "
                              f"than the stride {list(self.stride)}")

    @property
    def kernel(self) -> tuple[int, int]:
        return (int(self.weight.shape[2]), int(self.weight.shape[3]))

    def shape_out(self, shape_in: Shape) -> Shape:
        cin, cout = self.weight.shape[:2]
        if len(shape_in) != 3 or shape_in[0] != cin:
            raise SpidecError(f"conv_transpose2d with weight {fmt_shape(self.weight.shape)} expects input "
                              f"shape [{cin}, H, W], got {fmt_shape(shape_in)}")
        out = tuple((n - 1) * s - 2 * p + k + o for n, s, p, k, o in
                    zip(shape_in[1:], self.stride, self.padding, self.kernel, self.output_padding))
        if min(out) < 1:
            raise SpidecError(f"conv_transpose2d padding {list(self.padding)} leaves no output for input "
                              f"{fmt_shape(shape_in)}")
        return (int(cout), int(out[0]), int(out[1]))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return _conv_adjoint(x, self.weight, self.shape_out(x.shape[1:]), self.stride, self.padding)

    def adjoint(self, y: np.ndarray, shape_in: Shape) -> np.ndarray:
        return _conv(y, self.weight, self.stride, self.padding)

    def learnable(self) -> tuple[str, ...]:
        return ("weight",) if self.trainable else ()

    def grad(self, post: np.ndarray, pre: np.ndarray) -> dict[str, np.ndarray]:
        # <post, T_W pre> = <C_W post, pre>: the conv weight gradient with the roles swapped
        if not self.trainable:
            return {}
        return {"weight": _conv_grad(pre, post, self.kernel, self.stride, self.padding)}


@dataclass(frozen=True, eq=False)
class AvgPool2d(LinearOp):
    """Average pooling per channel. ``count_include_pad`` as in PyTorch (ONNX's default is False)."""

    kernel: tuple[int, int]
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] = (0, 0)
    count_include_pad: bool = True
    kind: ClassVar[str] = "avgpool2d"
    step_kernel: ClassVar[str | None] = "pool"
    args: ClassVar[tuple[Arg, ...]] = (
        Arg("kernel", "pair", required=True),
        Arg("stride", "pair", None),
        Arg("padding", "pair", (0, 0)),
        Arg("count_include_pad", "bool", True),
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel", _pair(self.kernel, "avgpool2d kernel", 1))
        stride = self.kernel if self.stride is None else self.stride
        object.__setattr__(self, "stride", _pair(stride, "avgpool2d stride", 1))
        object.__setattr__(self, "padding", _pair(self.padding, "avgpool2d padding", 0))
        object.__setattr__(self, "count_include_pad", bool(self.count_include_pad))
        if self.padding[0] * 2 > self.kernel[0] or self.padding[1] * 2 > self.kernel[1]:
            raise SpidecError(f"avgpool2d padding {list(self.padding)} must be at most half the kernel "
                              f"{list(self.kernel)}")

    def shape_out(self, shape_in: Shape) -> Shape:
        if len(shape_in) != 3:
            raise SpidecError(f"avgpool2d expects input shape [C, H, W], got {fmt_shape(shape_in)}")
        c, h, w = shape_in
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise SpidecError(f"avgpool2d kernel {kh}x{kw} is larger than the padded input "
                              f"{h + 2 * ph}x{w + 2 * pw}")
        return (c, _conv_out(h, kh, sh, ph), _conv_out(w, kw, sw, pw))

    def _divisor(self, shape_in: Shape) -> np.ndarray | float:
        if self.count_include_pad or self.padding == (0, 0):
            return float(self.kernel[0] * self.kernel[1])
        ones = np.ones((1, 1) + tuple(shape_in[1:]))
        return _windows(ones, self.kernel, self.stride, self.padding).sum(axis=(-2, -1))[0, 0]

    def apply(self, x: np.ndarray) -> np.ndarray:
        win = _windows(x, self.kernel, self.stride, self.padding)
        return win.sum(axis=(-2, -1)) / self._divisor(x.shape[1:])

    def adjoint(self, y: np.ndarray, shape_in: Shape) -> np.ndarray:
        z = y / self._divisor(shape_in)
        cols = np.broadcast_to(z[..., None, None], z.shape + self.kernel)
        return _scatter_windows(cols, shape_in, self.kernel, self.stride, self.padding)


@dataclass(frozen=True, eq=False)
class Reshape(LinearOp):
    """Reshape each sample to ``shape`` (same number of elements, C order)."""

    shape: tuple[int, ...]
    kind: ClassVar[str] = "reshape"
    view: ClassVar[bool] = True
    args: ClassVar[tuple[Arg, ...]] = (Arg("shape", "shape", required=True),)

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if not shape or any(s < 1 for s in shape):
            raise SpidecError(f"reshape target {list(shape)} must be a non-empty list of positive sizes")
        object.__setattr__(self, "shape", shape)

    def shape_out(self, shape_in: Shape) -> Shape:
        if math.prod(shape_in) != math.prod(self.shape):
            raise SpidecError(f"cannot reshape {fmt_shape(shape_in)} ({math.prod(shape_in)} elements) to "
                              f"{fmt_shape(self.shape)} ({math.prod(self.shape)} elements)")
        return self.shape

    def apply(self, x: np.ndarray) -> np.ndarray:
        return x.reshape((x.shape[0],) + self.shape)

    def adjoint(self, y: np.ndarray, shape_in: Shape) -> np.ndarray:
        return y.reshape((y.shape[0],) + tuple(shape_in))


@dataclass(frozen=True, eq=False)
class Flatten(LinearOp):
    """Flatten each sample to one dimension (torch ``flatten(1)``, ONNX ``Flatten(axis=1)``)."""

    kind: ClassVar[str] = "flatten"
    view: ClassVar[bool] = True

    def shape_out(self, shape_in: Shape) -> Shape:
        return (math.prod(shape_in),)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0], -1)

    def adjoint(self, y: np.ndarray, shape_in: Shape) -> np.ndarray:
        return y.reshape((y.shape[0],) + tuple(shape_in))


@dataclass(frozen=True, eq=False)
class Pad(LinearOp):
    """Zero padding: ``pads[i] = (before, after)`` for each per-sample axis."""

    pads: tuple[tuple[int, int], ...]
    kind: ClassVar[str] = "pad"
    args: ClassVar[tuple[Arg, ...]] = (Arg("pads", "pads", required=True),)

    def __post_init__(self) -> None:
        try:
            pads = tuple((int(a), int(b)) for a, b in self.pads)
        except (TypeError, ValueError):
            raise SpidecError(f"pad expects a list of [before, after] pairs, got {self.pads!r}") from None
        if any(a < 0 or b < 0 for a, b in pads):
            raise SpidecError(f"pad amounts must be >= 0, got {[list(p) for p in pads]}")
        object.__setattr__(self, "pads", pads)

    def shape_out(self, shape_in: Shape) -> Shape:
        if len(self.pads) != len(shape_in):
            raise SpidecError(f"pad has {len(self.pads)} [before, after] pairs but its input "
                              f"{fmt_shape(shape_in)} has {len(shape_in)} axes")
        return tuple(s + a + b for s, (a, b) in zip(shape_in, self.pads))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.pad(x, ((0, 0),) + self.pads)

    def adjoint(self, y: np.ndarray, shape_in: Shape) -> np.ndarray:
        index = (slice(None),) + tuple(slice(a, a + s) for (a, _), s in zip(self.pads, shape_in))
        return y[index]


@dataclass(frozen=True, eq=False)
class Scale(LinearOp):
    """Multiplication by a constant: a scalar, or a tensor that broadcasts to the sample shape."""

    factor: float | np.ndarray
    kind: ClassVar[str] = "scale"
    args: ClassVar[tuple[Arg, ...]] = (Arg("factor", "scalar_or_tensor", required=True),)

    def __post_init__(self) -> None:
        factor = self.factor
        if isinstance(factor, np.ndarray) and factor.ndim == 0:
            factor = factor.item()
        if isinstance(factor, (int, float, np.integer, np.floating)):
            factor = float(factor)
            if not math.isfinite(factor):
                raise SpidecError(f"scale factor must be finite, got {factor}")
        else:
            factor = as_tensor(factor, "scale factor")
        object.__setattr__(self, "factor", factor)

    def shape_out(self, shape_in: Shape) -> Shape:
        if isinstance(self.factor, np.ndarray):
            try:
                out = np.broadcast_shapes(self.factor.shape, tuple(shape_in))
            except ValueError:
                out = None
            if out != tuple(shape_in):
                raise SpidecError(f"scale tensor of shape {fmt_shape(self.factor.shape)} does not "
                                  f"broadcast to its input {fmt_shape(shape_in)}")
        return tuple(shape_in)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return x * self.factor

    def adjoint(self, y: np.ndarray, shape_in: Shape) -> np.ndarray:
        return y * self.factor


@dataclass(frozen=True, eq=False)
class Zero(LinearOp):
    """The zero map onto ``shape`` (keeps a connection's shape where its current is known to vanish)."""

    shape: tuple[int, ...]
    kind: ClassVar[str] = "zero"
    args: ClassVar[tuple[Arg, ...]] = (Arg("shape", "shape", required=True),)

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if not shape or any(s < 1 for s in shape):
            raise SpidecError(f"zero shape {list(shape)} must be a non-empty list of positive sizes")
        object.__setattr__(self, "shape", shape)

    def shape_out(self, shape_in: Shape) -> Shape:
        return self.shape

    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.zeros((x.shape[0],) + self.shape, dtype=x.dtype)

    def adjoint(self, y: np.ndarray, shape_in: Shape) -> np.ndarray:
        return np.zeros((y.shape[0],) + tuple(shape_in), dtype=y.dtype)


OPS: dict[str, type[LinearOp]] = {
    cls.kind: cls for cls in (Dense, Conv2d, ConvTranspose2d, AvgPool2d, Reshape, Flatten, Pad, Scale, Zero)
}
