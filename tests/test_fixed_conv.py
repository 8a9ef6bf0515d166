"""Fixed point beyond dense synapses (issue 17): average pooling between populations and per-channel
biases run in the integer C runtime bit for bit as spidec.fixed.FixedModel computes them, with the
quantize pass's overflow bounds, on the host and on the Cortex-M4 under QEMU; the pooled model trains
as well in fixed point as in float. (Conv and convT: test_fixed_convw; conv and pool from the input and
op chains: test_fixed_chains.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from spidec.backends.c import emit
from test_fixed import _lockstep, board_equals_host, board_tools  # noqa: F401 (a fixture)

from spidec import AvgPool2d, Conv2d, Dense, Flatten, Graph, Reshape, Scale, data, passes
from spidec.errors import SpidecError
from spidec.fixed import I32, FixedModel, normal_form, pool_geometry, pool_matrix, pool_weights, quantize


def pool_net(seed: int = 0, odd: bool = False) -> Graph:
    """x[64] -> c1[4,8,8] (per-channel bias) -avgpool-> c2[4,4,4] (per-channel bias), feedback c2 -> c1
    (flatten |> dense |> reshape, delayed), a readout of c2. ``odd``: a 3x3 pool, stride 2, padding 1
    without the padding in the divisor (4, 6 or 9 taps: three coefficients) and a gain of 1.5."""
    rng = np.random.default_rng(seed)
    g = Graph("pool_fb")
    g.add_input("x", [64])
    g.add_population("c1", [4, 8, 8], bias=rng.uniform(-0.1, 0.2, 4))
    g.add_population("c2", [4, 4, 4], bias=rng.uniform(-0.1, 0.2, 4))
    g.add_readout("y", [10], bias=rng.uniform(-0.1, 0.1, 10))
    g.add_synapse("x", "c1", [Dense(rng.uniform(-0.3, 0.4, (256, 64))), Reshape((4, 8, 8))], name="inp")
    pool = [AvgPool2d(3, stride=2, padding=1, count_include_pad=False), Scale(1.5)] if odd else AvgPool2d(2)
    g.add_synapse("c1", "c2", pool, name="pool")
    w = rng.standard_normal((256, 64))
    g.add_synapse("c2", "c1", [Flatten(), Dense(w / np.linalg.norm(w)), Reshape((4, 8, 8))], delay=1, name="fb")
    g.add_synapse("c2", "y", [Flatten(), Dense(rng.uniform(-0.5, 0.5, (10, 64)))], name="cls")
    return g.validate()


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.digits()


def _pool_chain(g: Graph):
    return next(ch for ch in g.program.chains if ch.kernel == "pool")


@pytest.mark.parametrize("odd", [False, True])
def test_pool_coefficients_are_the_float_pool_rounded(odd):
    """pool_matrix / 2^F is the float pool (gain included) to half a unit: the dense matrix of the op."""
    g = quantize(passes.run(pool_net(odd=odd), T=16, T_back=24))
    ch = _pool_chain(g)
    F = g.quant.pop_frac["c2"]
    op = g.synapse("pool").synapse.ops[ch.kernel_op]
    eye = np.eye(ch.n_in).reshape((ch.n_in,) + ch.shape_in)
    exact = ch.factor * op.apply(eye).reshape(ch.n_in, ch.n_out).T  # [n_out, n_in]
    P = pool_matrix(g, ch, F)
    assert np.array_equal(P != 0, exact != 0)
    assert np.abs(P / 2.0**F - exact).max() <= 2.0 ** -(F + 1)
    assert len(set(pool_weights(g, ch, F).tolist())) == (3 if odd else 1)  # 1.5/4, 1.5/6, 1.5/9 | 1/4
    if not odd:
        assert set(pool_weights(g, ch, F).tolist()) == {2 ** (F - 2)}  # 1/4 is exact


def test_bounds_of_pooling_are_proved(odd=True):
    """The worst case of a pool is all of a window's inputs spiking in one step (forward) and every
    window holding an input firing (backward); the membrane bounds fit int32."""
    g = quantize(passes.run(pool_net(odd=odd), T=16, T_back=24))
    q, ch = g.quant, _pool_chain(g)
    geo = pool_geometry(g, ch)
    pmax = int(np.abs(pool_weights(g, ch, q.pop_frac["c2"])).max())
    assert geo["pf"] == 4
    fp = q.pop_frac["c2"]
    assert q.bounds["c2"]["u"] == 16 * (q.k_max["c2"] + 9 * pmax + 2**fp)  # the pool is c2's only spike feed
    bp, S = q.couple_frac["c1"], g.program.couple_of("c1").S
    shift = bp - fp + round(math.log2(g.program.couple_of("c2").S))
    assert q.bounds["c1"]["ub"] == 24 * (q.g_max["c1"] + 4 * (pmax << shift) + 2 ** (bp + round(math.log2(S))))
    for p, b in q.bounds.items():
        assert b["u"] <= I32 and b["ub"] <= I32, (p, b)


@pytest.mark.parametrize(("update", "odd"), [("momentum", False), ("momentum", True), ("online", False),
                                             ("online", True)])
def test_c_equals_numpy_model_with_pooling_and_channel_biases(digits, tmp_path, update, odd):
    """Counts, ternary sums, logits, momentum and weights of the host C build equal FixedModel's after
    every sample / step (the per-channel biases learn: their gradient is the channel's sum)."""
    g = quantize(passes.run(pool_net(odd=odd), T=16, T_back=24, sf=20), update=update)
    batch, steps = (4, 4) if update == "momentum" else (1, 12)
    before = FixedModel(g).w
    fm = _lockstep(g, digits.x_train, digits.y_train, tmp_path / "c", batch=batch, steps=steps)
    for bias in ("c1.bias", "c2.bias"):
        assert fm.w[bias].shape == (4,) and not np.array_equal(fm.w[bias], before[bias]), bias
    assert all(c.sum() > 0 for c in fm.cnt.values()) and all(np.abs(s).sum() > 0 for s in fm.sb.values())
    assert "P_pool[" in (tmp_path / "c" / "model.c").read_text()


def test_fixed_rates_follow_the_float_runtime(digits, tmp_path):
    """The integer forward stage of the pooled model (per-channel biases, pool coefficients rounded to
    2^-F) against the float C runtime's: the same spike counts up to a few boundary cases (measured
    over 20 samples, 320 neurons each: mean |rate difference| 6e-5, 0.09% of the counts off by one
    spike, none by two; the bounds leave room for float rounding on other machines)."""
    g0 = passes.run(pool_net(odd=True), T=16, T_back=24)
    fm = FixedModel(quantize(g0))
    rt = emit(g0, tmp_path / "float").build()
    diffs = []
    for k in range(20):
        fm.forward(digits.x_train[k])
        fixed = np.concatenate([fm.cnt[p.name] for p in fm.pops]) / 16
        diffs.append(np.abs(fixed - rt.rates(digits.x_train[k:k + 1])[0]))
    d = np.concatenate(diffs)
    assert d.mean() < 0.002 and (d > 1.5 / 16).mean() < 0.005, (d.mean(), (d > 1.5 / 16).mean())


def test_refusals_name_the_synapse():
    """A bare pool into the readout stays refused (from the input it runs: tests/test_fixed_chains.py; before the
    readout's dense: tests/test_fixed_pool_chains.py)."""
    rng = np.random.default_rng(0)
    h = Graph("pool_in")
    h.add_input("img", [1, 4, 4])
    h.add_population("a", [1, 2, 2])
    h.add_readout("y", [3])
    h.add_synapse("img", "a", AvgPool2d(2), name="pin")
    h.add_synapse("a", "a", [Flatten(), Dense(0.1 * rng.standard_normal((4, 4))), Reshape((1, 2, 2))], delay=1)
    h.add_synapse("a", "y", [AvgPool2d(2), Flatten(), Scale(3.0), Dense(rng.standard_normal((3, 1)))], name="pout")
    # avgpool |> flatten |> scale |> dense into the readout runs (tests/test_fixed_pool_chains.py) ...
    q = quantize(passes.run(h.validate()))
    assert {ch.name: ch.kernel for ch in normal_form(q, q.program).chains}["pout"] == "pool_dense"
    # ... a bare pool into the readout does not
    b = Graph("pool_out")
    b.add_input("img", [1, 4, 4])
    b.add_population("a", [4, 2, 2])
    b.add_readout("y", [4])
    b.add_synapse("img", "a", Conv2d(rng.uniform(-1, 1, (4, 1, 2, 2)), stride=2), name="cin")
    b.add_synapse("a", "a", [Flatten(), Dense(0.1 * rng.standard_normal((16, 16))), Reshape((4, 2, 2))], delay=1)
    b.add_synapse("a", "y", [AvgPool2d(2), Flatten()], name="pout")
    with pytest.raises(SpidecError, match=r"synapse 'pout': fixed point pools into populations only"):
        quantize(passes.run(b.validate()))


def test_fixed_pool_training_within_three_points_of_float(digits, tmp_path):
    """Two epochs, batch 16, the model's SGD: float C against fixed-point C on the pooled model (both
    pools). Measured: 90.0 / 90.2% and 87.6 / 88.2% (the fixed build's stochastic rounding and 2^-F
    weights shift single samples of a 450-sample test set, 0.22 points each; the runs are still
    moving after two epochs, hence three points rather than the two of the 20-epoch dense test)."""
    for odd in (False, True):
        g0 = passes.run(pool_net(odd=odd), T=30, T_back=60)
        accs = {}
        for kind, g in (("float", g0), ("fixed", quantize(g0, update="momentum"))):
            rt = emit(g, tmp_path / f"{kind}{int(odd)}").build()
            rt.train(digits.x_train, digits.y_train, epochs=2, batch=16, seed=0)
            accs[kind] = rt.evaluate(digits.x_test, digits.y_test)["accuracy"]
        assert accs["float"] > 0.8, accs
        assert abs(accs["fixed"] - accs["float"]) <= 0.03, (odd, accs)


def test_qemu_m4_trains_the_pooled_model_to_the_host_weights(board_tools, digits, tmp_path):  # noqa: F811
    """The Cortex-M4 image (online updates, batch 1) of the pooled model with per-channel biases: 60
    samples, weights equal to the host build's bit for bit; the memory plan (the pool tables are
    constants in flash, no new RAM) matches the image symbol by symbol."""
    g = quantize(passes.run(pool_net(odd=True), T=16, T_back=24, sf=20), update="online")
    n = 60
    moved = board_equals_host(g, tmp_path, digits.x_train[:n], digits.y_train[:n], digits.x_test[:30],
                              digits.y_test[:30])
    assert moved == len(FixedModel(g).w)  # every tensor (the per-channel biases too) learned
