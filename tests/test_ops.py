"""LinearOps: exact adjoints, gradients, shapes, and agreement with PyTorch's definitions.

Tolerance: in float64 a dot product of n terms is exact to about n * 2^-53 of the sum of |terms|;
for the sizes drawn here (<= a few thousand terms of order 1) that is below 1e-12, so requiring
|<A x, y> - <x, A^T y>| <= 1e-10 * (1 + |A x| |y|) leaves a wide margin while any indexing mistake
(one misplaced element) breaks it by orders of magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spidec import AvgPool2d, Conv2d, ConvTranspose2d, Dense, Flatten, Pad, Reshape, Scale, SpidecError, Zero

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def dense_case(draw):
    n_out, n_in = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    return Dense(rng.standard_normal((n_out, n_in))), (n_in,), rng


@st.composite
def conv_case(draw):
    cin, cout = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 9))
    w = draw(st.integers(max(1, kw - 2 * pw), 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    return Conv2d(rng.standard_normal((cout, cin, kh, kw)), (sh, sw), (ph, pw)), (cin, h, w), rng


@st.composite
def conv_transpose_case(draw):
    cin, cout = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, (kh - 1) // 2)), draw(st.integers(0, (kw - 1) // 2))
    oh, ow = draw(st.integers(0, sh - 1)), draw(st.integers(0, sw - 1))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    return ConvTranspose2d(rng.standard_normal((cin, cout, kh, kw)), (sh, sw), (ph, pw), (oh, ow)), (cin, h, w), rng


@st.composite
def pool_case(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    c = draw(st.integers(1, 3))
    h = draw(st.integers(max(1, kh - 2 * ph), 9))
    w = draw(st.integers(max(1, kw - 2 * pw), 9))
    include = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    return AvgPool2d((kh, kw), (sh, sw), (ph, pw), include), (c, h, w), rng


@st.composite
def shape_op_case(draw):
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    kind = draw(st.sampled_from(["reshape", "flatten", "pad", "scale", "scale_tensor", "zero"]))
    if kind == "reshape":
        op = Reshape((int(np.prod(shape)),) if len(shape) > 1 else (1, shape[0]))
    elif kind == "flatten":
        op = Flatten()
    elif kind == "pad":
        op = Pad(tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in shape))
    elif kind == "scale":
        op = Scale(draw(st.floats(-3, 3, allow_nan=False)))
    elif kind == "scale_tensor":  # broadcast over the leading axes, like a per-channel constant
        op = Scale(rng.standard_normal(shape[1:] or (1,)) if len(shape) > 1 else rng.standard_normal(shape))
    else:
        op = Zero(tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))))
    return op, shape, rng


def check_adjoint(op, shape_in, rng, batch=2):
    shape_out = op.shape_out(shape_in)
    x = rng.standard_normal((batch,) + shape_in)
    y = rng.standard_normal((batch,) + tuple(shape_out))
    ax = op.apply(x)
    assert ax.shape == (batch,) + tuple(shape_out)
    aty = op.adjoint(y, shape_in)
    assert aty.shape == (batch,) + shape_in
    lhs, rhs = float(np.sum(ax * y)), float(np.sum(x * aty))
    assert abs(lhs - rhs) <= 1e-10 * (1 + np.linalg.norm(ax) * np.linalg.norm(y)), (lhs, rhs)
    # linearity, so that the adjoint identity above is meaningful
    x2 = rng.standard_normal(x.shape)
    np.testing.assert_allclose(op.apply(2.0 * x - x2), 2.0 * ax - op.apply(x2), rtol=1e-12, atol=1e-12)


def check_grad(op, shape_in, rng, batch=3):
    """Every op is linear in its weight: <post, A_W(pre)> == <grad(post, pre), W> exactly, and a
    perturbation E changes <post, A(pre)> by exactly <grad, E>."""
    shape_out = op.shape_out(shape_in)
    pre = rng.standard_normal((batch,) + shape_in)
    post = rng.standard_normal((batch,) + tuple(shape_out))
    grad = op.grad(post, pre)["weight"]
    assert grad.shape == op.weight.shape
    f0 = float(np.sum(post * op.apply(pre)))
    assert abs(f0 - float(np.sum(grad * op.weight))) <= 1e-10 * (1 + abs(f0) + np.abs(grad).sum())
    e = rng.standard_normal(op.weight.shape)
    f1 = float(np.sum(post * op.replace(weight=op.weight + e).apply(pre)))
    assert abs((f1 - f0) - float(np.sum(grad * e))) <= 1e-9 * (1 + abs(f1) + abs(f0))


@SETTINGS
@given(dense_case())
def test_dense_adjoint_and_grad(case):
    check_adjoint(*case)
    check_grad(*case)


@SETTINGS
@given(conv_case())
def test_conv2d_adjoint_and_grad(case):
    check_adjoint(*case)
    check_grad(*case)


@SETTINGS
@given(conv_transpose_case())
def test_conv_transpose2d_adjoint_and_grad(case):
    check_adjoint(*case)
    check_grad(*case)


@SETTINGS
@given(pool_case())
def test_avgpool2d_adjoint(case):
    check_adjoint(*case)


@SETTINGS
@given(shape_op_case())
def test_shape_and_scale_ops_adjoint(case):
    check_adjoint(*case)


def test_frozen_tensors_are_read_only_copies():
    w = np.ones((2, 3))
    op = Dense(w)
    w[0, 0] = 5.0
    assert op.weight[0, 0] == 1.0
    with pytest.raises(ValueError):
        op.weight[0, 0] = 2.0


def test_ops_compare_as_values():
    w = np.arange(6.0).reshape(2, 3)
    assert Dense(w) == Dense(w.copy())
    assert Dense(w) != Dense(w.astype(np.float32))
    assert Dense(w) != Dense(w, trainable=False)
    assert Conv2d(np.ones((1, 1, 2, 2)), 1, 0) == Conv2d(np.ones((1, 1, 2, 2)), (1, 1), (0, 0))
    assert Scale(2) == Scale(2.0)


@pytest.mark.parametrize(
    "op, shape, message",
    [
        (Dense(np.ones((3, 4))), (5,), "expects input shape [4]"),
        (Dense(np.ones((3, 4))), (2, 2), "insert a flatten"),
        (Conv2d(np.ones((2, 3, 3, 3))), (2, 8, 8), "[3, H, W]"),
        (Conv2d(np.ones((2, 1, 5, 5))), (1, 3, 3), "larger than the padded input"),
        (AvgPool2d(2), (4, 4), "[C, H, W]"),
        (Reshape((5, 2)), (3, 3), "cannot reshape [3, 3] (9 elements)"),
        (Pad(((1, 1),)), (2, 2), "has 1 [before, after] pairs"),
        (Scale(np.ones(3)), (2, 4), "does not broadcast"),
    ],
)
def test_shape_errors_say_why(op, shape, message):
    with pytest.raises(SpidecError) as e:
        op.shape_out(shape)
    assert message in str(e.value)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Dense(np.ones(3)), "2 dimensions"),
        (lambda: Conv2d(np.ones((2, 2, 3))), "4 dimensions"),
        (lambda: Conv2d(np.ones((1, 1, 3, 3)), stride=0), "stride must be >= 1"),
        (lambda: AvgPool2d(2, padding=2), "at most half the kernel"),
        (lambda: Pad(((1, -1),)), ">= 0"),
        (lambda: Scale(float("nan")), "finite"),
        (lambda: Dense(np.array([["a"]])), "float tensor"),
    ],
)
def test_bad_op_arguments(build, message):
    with pytest.raises(SpidecError) as e:
        build()
    assert message in str(e.value)


# ---------------------------------------------------------------- PyTorch's definitions
torch = pytest.importorskip("torch", reason="torch (the 'torch' extra) is needed to compare with PyTorch")
F = torch.nn.functional


@settings(max_examples=40, deadline=None)
@given(conv_case())
def test_conv2d_matches_torch(case):
    op, shape, rng = case
    x = rng.standard_normal((2,) + shape)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(op.weight.copy()), stride=op.stride, padding=op.padding)
    np.testing.assert_allclose(op.apply(x), ref.numpy(), rtol=1e-10, atol=1e-10)
    # the adjoint is conv_transpose2d with the output_padding that restores the input size
    y = rng.standard_normal((2,) + op.shape_out(shape))
    out_pad = tuple(int(s - ((o - 1) * st - 2 * p + k)) for s, o, st, p, k in
                    zip(shape[1:], y.shape[2:], op.stride, op.padding, op.kernel))
    if all(0 <= a < max(st, 1) for a, st in zip(out_pad, op.stride)):
        ref_t = F.conv_transpose2d(torch.from_numpy(y), torch.from_numpy(op.weight.copy()), stride=op.stride,
                                   padding=op.padding, output_padding=out_pad)
        np.testing.assert_allclose(op.adjoint(y, shape), ref_t.numpy(), rtol=1e-10, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(conv_transpose_case())
def test_conv_transpose2d_matches_torch(case):
    op, shape, rng = case
    x = rng.standard_normal((2,) + shape)
    ref = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(op.weight.copy()), stride=op.stride,
                             padding=op.padding, output_padding=op.output_padding)
    np.testing.assert_allclose(op.apply(x), ref.numpy(), rtol=1e-10, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(pool_case())
def test_avgpool2d_matches_torch(case):
    op, shape, rng = case
    x = rng.standard_normal((2,) + shape)
    ref = F.avg_pool2d(torch.from_numpy(x), op.kernel, op.stride, op.padding,
                       count_include_pad=op.count_include_pad)
    np.testing.assert_allclose(op.apply(x), ref.numpy(), rtol=1e-10, atol=1e-10)
