"""Fixed point of conv2d and conv_transpose2d synapses between populations (issue 17): the int16 kernel
at the destination's scale is the dense integer matrix of its taps in spidec.fixed.FixedModel, the
integer C runtime scatters spikes through the taps (and ternary spikes through the transposed taps) and
learns each tap from its correlation sum, bit for bit as FixedModel does, with the quantize pass's
overflow bounds counted from the taps, on the host and on the Cortex-M4 under QEMU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from spidec.backends.c import emit
from test_fixed import _lockstep, board_equals_host, board_tools  # noqa: F401 (a fixture)

from spidec import Conv2d, ConvTranspose2d, Dense, Flatten, Graph, Reshape, data, passes
from spidec.errors import SpidecError
from spidec.fixed import I32, W_MAX, FixedModel, conv_grad, conv_matrix, conv_taps, quantize


def conv_net(seed: int = 0, stride: bool = False, dense_fb: bool = False) -> Graph:
    """x[64] -dense-> p1[4,6,6] (per-channel bias) -conv 3x3 pad 1-> p2[6,6,6] (per-channel bias), a
    delayed feedback p2 -> p1 through a convT 3x3 pad 1 (or flatten |> dense |> reshape), a readout of
    p2. ``stride``: the conv has stride 2 (p2 [6,3,3]) and the convT stride 2, output_padding 1."""
    rng = np.random.default_rng(seed)
    g = Graph("conv_w")
    g.add_input("x", [64])
    g.add_population("p1", [4, 6, 6], bias=rng.uniform(-0.1, 0.2, 4))
    h2 = 3 if stride else 6
    g.add_population("p2", [6, h2, h2], bias=rng.uniform(-0.1, 0.2, 6))
    g.add_readout("y", [10], bias=rng.uniform(-0.1, 0.1, 10))
    g.add_synapse("x", "p1", [Dense(rng.uniform(-0.3, 0.4, (144, 64))), Reshape((4, 6, 6))], name="inp")
    s = 2 if stride else 1
    g.add_synapse("p1", "p2", Conv2d(rng.uniform(-0.25, 0.35, (6, 4, 3, 3)), stride=s, padding=1), name="conv")
    if dense_fb:
        w = rng.standard_normal((144, 6 * h2 * h2))
        g.add_synapse("p2", "p1", [Flatten(), Dense(w / np.linalg.norm(w)), Reshape((4, 6, 6))], delay=1, name="fb")
    else:
        w = rng.standard_normal((6, 4, 3, 3))
        g.add_synapse("p2", "p1", ConvTranspose2d(0.8 * w / np.linalg.norm(w), stride=s, padding=1,
                                                  output_padding=s - 1), delay=1, name="fb")
    g.add_synapse("p2", "y", [Flatten(), Dense(rng.uniform(-0.4, 0.4, (10, 6 * h2 * h2)))], name="cls")
    return g.validate()


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.digits()


def _chain(g: Graph, name: str):
    return next(ch for ch in g.program.chains if ch.name == name)


@pytest.mark.parametrize("stride", [False, True])
def test_tap_matrix_is_the_float_op(stride):
    """conv_matrix(taps, W) applied to a vector is the op itself (conv and convT, padding, stride 2,
    output_padding): the dense twin FixedModel multiplies; conv_grad is its adjoint, the op's grad."""
    g = passes.run(conv_net(stride=stride), T=16, T_back=24)
    rng = np.random.default_rng(1)
    for name in ("conv", "fb"):
        ch = _chain(g, name)
        op = g.synapse(name).synapse.ops[ch.kernel_op]
        taps = conv_taps(g, ch)
        kernel = rng.integers(-50, 50, op.weight.shape)
        x = rng.integers(-3, 4, ch.n_in)
        exact = type(op)(kernel.astype(np.float64), stride=op.stride, padding=op.padding,
                         **({"output_padding": op.output_padding} if name == "fb" else {}))
        np.testing.assert_array_equal(conv_matrix(taps, kernel) @ x,
                                      exact.apply(x.reshape((1,) + ch.shape_in).astype(np.float64)).ravel())
        post = rng.integers(-5, 6, ch.n_out)
        G = conv_grad(taps, post, x, kernel.size).reshape(kernel.shape)
        ref = exact.grad(post.reshape((1,) + ch.shape_out).astype(np.float64),
                         x.reshape((1,) + ch.shape_in).astype(np.float64))
        np.testing.assert_array_equal(G, ref["weight"])


def test_bounds_of_convolutions_are_proved():
    """A conv's worst step is every input its output reads spiking (3x3x4 = 36 inside the image, not
    n_src = 144); a convT's every (input, tap) pair reaching one output; the membranes fit int32."""
    g = quantize(passes.run(conv_net(stride=True), T=16, T_back=24))
    q, prog = g.quant, g.program
    fan_conv_fw = int((conv_taps(g, _chain(g, "conv")) >= 0).sum(axis=1).max())
    fan_fb_fw = int((conv_taps(g, _chain(g, "fb")) >= 0).sum(axis=1).max())
    fan_conv_bw = int((conv_taps(g, _chain(g, "conv")) >= 0).sum(axis=0).max())
    fan_fb_bw = int((conv_taps(g, _chain(g, "fb")) >= 0).sum(axis=0).max())
    assert fan_conv_fw == 36 and fan_conv_bw == 6 * 4  # stride 2: one input is in at most 2x2 windows
    assert fan_fb_fw == 6 * 4 and fan_fb_bw == 36  # the convT is the conv's transpose
    fp2, fp1 = q.pop_frac["p2"], q.pop_frac["p1"]
    assert q.bounds["p2"]["u"] == 16 * (q.k_max["p2"] + fan_conv_fw * W_MAX + 2**fp2)
    assert q.bounds["p1"]["u"] == 16 * (q.k_max["p1"] + fan_fb_fw * W_MAX + 2**fp1)
    bp1 = q.couple_frac["p1"]
    sh = bp1 - fp2 + round(math.log2(prog.couple_of("p2").S))
    assert q.bounds["p1"]["ub"] == 24 * (q.g_max["p1"] + fan_conv_bw * (W_MAX << sh)
                                         + 2 ** (bp1 + round(math.log2(prog.couple_of("p1").S))))
    for p, b in q.bounds.items():
        assert b["u"] <= I32 and b["ub"] <= I32, (p, b)


@pytest.mark.parametrize(("update", "stride", "dense_fb"), [("momentum", False, False), ("online", False, False),
                                                            ("momentum", True, False), ("online", True, True)])
def test_c_equals_numpy_model_with_convolutions(digits, tmp_path, update, stride, dense_fb):
    """Counts, ternary sums, logits, momentum and weights of the host C build equal FixedModel's after
    every sample / step; both kernels (conv forward, convT feedback) and the channel biases learn."""
    g = quantize(passes.run(conv_net(stride=stride, dense_fb=dense_fb), T=16, T_back=24, sf=20), update=update)
    batch, steps = (4, 4) if update == "momentum" else (1, 12)
    before = FixedModel(g).w
    fm = _lockstep(g, digits.x_train, digits.y_train, tmp_path / "c", batch=batch, steps=steps)
    for name in ("conv.weight", "p1.bias", "p2.bias") + (() if dense_fb else ("fb.weight",)):
        assert not np.array_equal(fm.w[name], before[name]), name
    assert all(c.sum() > 0 for c in fm.cnt.values()) and all(np.abs(s).sum() > 0 for s in fm.sb.values())


def test_refusals_name_the_synapse():
    """A conv into the readout stays refused (a conv from the input runs: tests/test_fixed_chains.py)."""
    rng = np.random.default_rng(0)
    r = Graph("conv_out")
    r.add_input("x", [8])
    r.add_population("a", [2, 2, 2])
    r.add_readout("y", [3])
    r.add_synapse("x", "a", [Dense(rng.standard_normal((8, 8))), Reshape((2, 2, 2))])
    r.add_synapse("a", "y", [Conv2d(rng.uniform(-1, 1, (3, 2, 2, 2))), Flatten()], name="cout")
    with pytest.raises(SpidecError, match="synapse 'cout': fixed point runs conv into populations only"):
        quantize(passes.run(r.validate()))


def test_fixed_conv_training_within_three_points_of_float(digits, tmp_path):
    """Two epochs, batch 16, the model's SGD: float C against fixed-point C on the conv model (convT
    feedback). The fixed build's stochastic rounding and 2^-F kernels shift single samples of the
    450-sample test set (0.22 points each) and the runs still move after two epochs: three points,
    as for the pooled model (tests/test_fixed_conv.py)."""
    g0 = passes.run(conv_net(), T=30, T_back=60)
    accs = {}
    for kind, g in (("float", g0), ("fixed", quantize(g0, update="momentum"))):
        rt = emit(g, tmp_path / kind).build()
        rt.train(digits.x_train, digits.y_train, epochs=2, batch=16, seed=0)
        accs[kind] = rt.evaluate(digits.x_test, digits.y_test)["accuracy"]
    assert accs["float"] > 0.8, accs
    assert abs(accs["fixed"] - accs["float"]) <= 0.03, accs
    print(f"conv model, 2 digits epochs at batch 16: float {accs['float']:.4f}, fixed {accs['fixed']:.4f}")


def test_qemu_m4_trains_the_conv_model_to_the_host_weights(board_tools, digits, tmp_path):  # noqa: F811
    """The Cortex-M4 image (online updates, batch 1) of the conv model: 40 samples, weights equal to the
    host build's bit for bit; the memory plan (kernels are weights, no new buffers) matches the image."""
    g = quantize(passes.run(conv_net(stride=True), T=16, T_back=24, sf=20), update="online")
    n = 40
    moved = board_equals_host(g, tmp_path, digits.x_train[:n], digits.y_train[:n], digits.x_test[:20],
                              digits.y_test[:20])
    assert moved == len(FixedModel(g).w)
