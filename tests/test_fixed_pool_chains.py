"""Fixed point through ``avgpool2d |> (views) |> dense / conv2d`` op chains between populations (issue 17;
spidec.fixed, "Op chains"): the pool's coefficients at their own 2^F_P, the learnable tensor at the
destination's scale, each entry of the synapse's matrix ``sum_o round_shift(W'[j, o] P[o], F_P)``. The host C
build equals spidec.fixed.FixedModel bit for bit sample by sample in both update modes, FixedModel's matrix
over 2^F_dst is the float chain within the stated rounding, the Cortex-M4 image under QEMU equals the host,
and fixed point trains such a net as the float runtime does.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import conv_feedback
from test_fixed import _lockstep, board_equals_host, board_tools  # noqa: F401 (a fixture)

from spidec import AvgPool2d, Conv2d, Dense, Flatten, Graph, Reshape, Scale, data, passes
from spidec.errors import SpidecError
from spidec.fixed import FixedModel, normal_form, pool_chain, pool_frac, quantize


def pool_dense_net(seed: int = 0, odd: bool = False) -> Graph:
    """img[1,8,8] -conv3 p1-> c1[4,8,8] (per-channel bias) -avgpool 2 |> flatten |> dense-> h[24] (full bias),
    feedback h -> c1 (dense |> reshape, delayed), a readout of h: "pool then classifier layer" of an ordinary
    conv net with a population between. ``odd``: a 3x3 pool, stride 2, padding 1 without the padding in the
    divisor (three coefficients) and a gain of 1.5 folded into the chain."""
    from spidec import Scale

    rng = np.random.default_rng(seed)
    g = Graph("pool_dense")
    g.add_input("img", [1, 8, 8])
    g.add_population("c1", [4, 8, 8], bias=rng.uniform(-0.1, 0.2, 4))
    g.add_population("h", [24], bias=rng.uniform(-0.1, 0.2, 24))
    g.add_readout("y", [10], bias=rng.uniform(-0.1, 0.1, 10))
    g.add_synapse("img", "c1", Conv2d(rng.uniform(-0.3, 0.5, (4, 1, 3, 3)), padding=1), name="conv1")
    pool = [AvgPool2d(3, 2, 1, count_include_pad=False), Scale(1.5)] if odd else [AvgPool2d(2)]
    g.add_synapse("c1", "h", [*pool, Flatten(), Dense(rng.uniform(-0.3, 0.4, (24, 64)))], name="pd")
    w = rng.standard_normal((256, 24))
    g.add_synapse("h", "c1", [Dense(0.8 * w / np.linalg.norm(w)), Reshape((4, 8, 8))], delay=1, name="fb")
    g.add_synapse("h", "y", Dense(rng.uniform(-0.4, 0.4, (10, 24))), name="cls")
    return g.validate()


def pool_readout_net(seed: int = 0) -> Graph:
    """img[1,8,8] -conv3 p1-> c1[4,8,8] -avgpool 2-> c2[4,4,4] (a population, feedback c2 -> c1) and the readout
    through avgpool2d |> flatten |> dense from c1 (the pooled counts) next to a plain dense one from c2."""
    rng = np.random.default_rng(seed)
    g = Graph("pool_readout")
    g.add_input("img", [1, 8, 8])
    g.add_population("c1", [4, 8, 8], bias=rng.uniform(-0.1, 0.2, 4))
    g.add_population("c2", [4, 4, 4], bias=rng.uniform(-0.1, 0.2, 4))
    g.add_readout("y", [10], bias=rng.uniform(-0.1, 0.1, 10))
    g.add_synapse("img", "c1", Conv2d(rng.uniform(-0.3, 0.5, (4, 1, 3, 3)), padding=1), name="conv1")
    g.add_synapse("c1", "c2", AvgPool2d(2), name="pool")
    w = rng.standard_normal((256, 64))
    g.add_synapse("c2", "c1", [Flatten(), Dense(0.8 * w / np.linalg.norm(w)), Reshape((4, 8, 8))], delay=1,
                  name="fb")
    g.add_synapse("c1", "y", [AvgPool2d(2), Flatten(), Dense(rng.uniform(-0.4, 0.4, (10, 64)))], name="pcls")
    g.add_synapse("c2", "y", [Flatten(), Dense(rng.uniform(-0.4, 0.4, (10, 64)))], name="cls")
    return g.validate()


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.digits()


def _conv_fb_data(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, 36)).astype(np.float32), rng.integers(0, 5, n)


def _graphs():
    return {"dense": passes.run(pool_dense_net(), T=16, T_back=24, sf=20),
            "odd": passes.run(pool_dense_net(odd=True), T=16, T_back=24, sf=20),
            "conv": passes.run(conv_feedback(), T=16, T_back=24, sf=20),
            "readout": passes.run(pool_readout_net(), T=16, T_back=24, sf=20)}


@pytest.mark.parametrize("kind", ["dense", "odd", "conv"])
def test_matrix_is_the_float_chain(kind):
    """FixedModel's M over 2^F_dst equals the float op chain (``op.apply`` on the identity) with the integer
    W: |M / 2^F - chain(W_q / 2^F)| <= (number of windows holding i, each rounding by half a unit) / 2^F
    plus the coefficient's rounding |W_q| 2^-(F_P + 1) per window over 2^F."""
    g = quantize(_graphs()[kind])
    syn_name = "pool_conv" if kind == "conv" else "pd"
    ch = {c.name: c for c in normal_form(g, g.program).chains}[syn_name]
    assert ch.kernel == ("pool_conv" if kind == "conv" else "pool_dense")
    fm = FixedModel(g)
    fm._restrict()
    F = g.quant.pop_frac[ch.dst]
    fp = pool_frac(g, ch)
    A, _, _, _ = pool_chain(g, ch)
    M = fm._syn(syn_name) / 2.0**F
    from dataclasses import replace

    syn = g.synapse(syn_name).synapse
    w = fm.w[ch.weight] / 2.0**F
    ops = [replace(op, weight=w.reshape(op.weight.shape)) if op.kind in ("dense", "conv2d") else op
           for op in syn.ops]
    n_in = A.shape[1]
    x = np.eye(n_in).reshape((n_in,) + tuple(g.node(ch.src).shape))
    for op in ops:
        x = op.apply(x)
    exact = x.reshape(n_in, -1).T  # (every op of the chain, its scales included)
    windows = A.sum(axis=0)  # per input: the windows holding it
    wmax = np.abs(fm.w[ch.weight]).max()
    tol = windows[None, :] * (0.5 + wmax * 2.0 ** -(fp + 1)) / 2.0**F
    err = np.abs(M - exact)
    assert (err <= tol + 1e-12).all(), (err.max(), tol.max())
    assert err.max() > 0  # (the rounding is real, not a copy of the float matrix)


@pytest.mark.parametrize(("kind", "update"), [("dense", "momentum"), ("dense", "online"), ("odd", "momentum"),
                                              ("conv", "momentum"), ("conv", "online"),
                                              ("readout", "momentum"), ("readout", "online")])
def test_c_equals_numpy_model(digits, tmp_path, kind, update):
    """Counts, ternary sums, logits, momentum and weights of the host C build equal FixedModel's after every
    sample / step; the chain's weight learns (its gradient: post (x) the pooled counts P[o] sum_window cnt)."""
    g = quantize(_graphs()[kind], update=update)
    x, y = (digits.x_train, digits.y_train) if kind != "conv" else _conv_fb_data()
    batch, steps = (4, 3) if update == "momentum" else (1, 12)
    before = FixedModel(g).w
    fm = _lockstep(g, x, y, tmp_path / "c", batch=batch, steps=steps)
    name = {"conv": "pool_conv.weight", "readout": "pcls.weight"}.get(kind, "pd.weight")
    assert not np.array_equal(fm.w[name], before[name])
    assert all(c.sum() > 0 for c in fm.cnt.values()) and all(np.abs(s).sum() > 0 for s in fm.sb.values())
    assert "avgpool |>" in (tmp_path / "c" / "model.c").read_text()


def test_refusals():
    """A chain from the input is refused in one line naming the synapse."""
    rng = np.random.default_rng(0)
    g = Graph("bad")
    g.add_input("img", [1, 8, 8])
    g.add_population("h", [6])
    g.add_readout("y", [3])
    g.add_synapse("img", "h", [AvgPool2d(2), Flatten(), Dense(rng.uniform(-1, 1, (6, 16)))], name="pin")
    g.add_synapse("h", "y", Dense(rng.uniform(-1, 1, (3, 6))))
    with pytest.raises(SpidecError, match=r"synapse 'pin': fixed point runs avgpool2d \|> dense from a population "
                                          r"\(into a population or the readout\), not from the input"):
        quantize(passes.run(g.validate()))
    # a reshape between the pool and a conv (the conv would read another image than the pooled one), and a
    # gain that rounds to zero: one line each, not a wrong matrix or a ZeroDivisionError (review findings)
    for name, ops, msg in (
            ("pc", [AvgPool2d(2), Reshape((16, 2, 2)), Conv2d(rng.uniform(-0.3, 0.5, (2, 16, 1, 1)))],
             r"synapse 'pc': fixed point cannot run the op chain avgpool2d \|> reshape \|> conv2d"),
            ("pz", [AvgPool2d(2), Scale(0.0), Flatten(), Dense(rng.uniform(-1, 1, (8, 64)))],
             r"synapse 'pz': the pool's gain rounds to 0 in fixed point")):
        h = Graph("bad2")
        h.add_input("img", [1, 8, 8])
        h.add_population("c1", [4, 8, 8], bias=np.full(4, 0.3))
        h.add_population("c2", [2, 2, 2])
        h.add_readout("y", [3])
        h.add_synapse("img", "c1", Conv2d(rng.uniform(-0.3, 0.5, (4, 1, 3, 3)), padding=1), name="conv1")
        h.add_synapse("c1", "c2", [*ops, Reshape((2, 2, 2))] if name == "pz" else ops, name=name)
        h.add_synapse("c2", "y", [Flatten(), Dense(rng.uniform(-0.4, 0.4, (3, 8)))], name="cls")
        with pytest.raises(SpidecError, match=msg) as e:
            quantize(passes.run(h.validate()))
        assert "\n" not in str(e.value)


def test_fixed_trains_as_float(digits, tmp_path, capsys):
    """Two epochs, batch 16, the model's SGD: float C against fixed-point C on pool_dense_net."""
    from test_fixed_chains import float_and_fixed_agree

    float_and_fixed_agree(passes.run(pool_dense_net(), T=30, T_back=60), digits, tmp_path, capsys, "avgpool |> dense")


def test_qemu_m4_trains_the_pool_dense_net_to_the_host_weights(board_tools, digits, tmp_path):  # noqa: F811
    """The Cortex-M4 image (online updates, batch 1): 30 samples, weights equal to the host build's bit for
    bit, every learnable tensor moved; the memory plan matches the image (board_equals_host)."""
    g = quantize(passes.run(pool_dense_net(), T=16, T_back=24, sf=20), update="online")
    moved = board_equals_host(g, tmp_path, digits.x_train[:30], digits.y_train[:30], digits.x_test[:20],
                              digits.y_test[:20])
    assert moved == len(g.quant.tensors)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_lava_fixed_equals_numpy_model(tmp_path, kind):
    """Lava's fixed_pt network takes the chain through FixedModel._syn (M as one FixedDense and its
    transpose): every integer equal to FixedModel sample by sample (test_lava_fixed._lockstep), the chain's
    weight moved."""
    pytest.importorskip("lava", reason="Lava is an optional extra (the test command installs it)")
    from test_lava_fixed import _lockstep as lava_lockstep
    from test_lava_fixed import _samples

    q = quantize(_graphs()[kind], update="momentum")
    x, y = _samples(q, 4)
    seen = lava_lockstep(q, tmp_path / "lava", x, y, batch=2)
    assert seen["ternary"] > 0 and seen["moved"] >= 1, seen
