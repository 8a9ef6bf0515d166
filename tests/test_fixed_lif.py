"""Fixed point with LIF neurons (spidec.fixed, "LIF"): Q15 leaks with round-half-up, leak-weighted
counts and ternary sums at 2^cnt_frac / 2^sb_frac. The numpy model and the integer C runtime agree
bit for bit (both update modes, one and two layers); the proofs of the IF bounds still hold; a LIF
model trained on the Cortex-M4 under QEMU ends with the host's weights; LIF digits learn in one
online epoch about as well as the float C runtime does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import dense_feedback
from spidec.backends.c import board as brd
from spidec.backends.c import emit, epoch_order, read_weights_dump
from spidec.frontends.onnx import load_onnx
from test_fixed import _lockstep, board_tools, deep_dense  # noqa: F401 (a fixture)

from spidec import data, passes
from spidec.errors import SpidecError
from spidec.fixed import I32, NORM_CAP, FixedModel, count_scale, leak_mul, leak_q15, quantize, weighted_norm

ROOT = Path(__file__).resolve().parents[1]


def test_leak_multiply_never_grows_and_norms():
    """The proof's lemma, exhaustively over small values and at the int32 edges, for leaks across (0, 1)."""
    v = np.concatenate([np.arange(-70000, 70001), [I32, -I32, I32 - 1, -I32 + 1]]).astype(np.int64)
    for leak in (2.0**-15, 0.1, 0.5, 0.9, 0.95, 0.999, 1 - 2.0**-15):
        lq = leak_q15(leak)
        assert 0 < lq < 2**15
        m = leak_mul(v, lq)
        assert np.all(np.abs(m) <= np.abs(v)), leak
        assert np.all(np.diff(leak_mul(np.arange(-70000, 70001), lq)) >= 0)  # monotone
        assert np.all(np.abs(m - v * (lq / 2**15)) <= 0.5)  # round half up: within half a unit
    for leak, T in ((0.9, 30), (0.5, 30), (0.99, 100), (0.95, 5)):
        lq, frac, norm = count_scale(leak, T)
        assert norm == weighted_norm(lq, T, frac) <= NORM_CAP < weighted_norm(lq, T, frac + 1) or frac == 15
        exact = (1 - leak**T) / (1 - leak) * 2**frac  # the float runtime's RATE_NORM, at the same scale
        assert abs(norm - exact) <= 1 / (1 - leak) + 1, (leak, T, norm, exact)
    assert count_scale(1.0, 30) == (0, 0, 30)  # IF: plain counts over T


def test_lif_scales_and_proofs():
    g = quantize(passes.run(deep_dense(), neuron="LIF", leak=0.9, T=20, T_back=30, sf=40))
    q = g.quant
    for qp in q.populations:
        assert qp.leak_q15 == leak_q15(0.9) and qp.cleak_q15 == leak_q15(0.9)
        assert qp.norm_q == weighted_norm(qp.leak_q15, 20, qp.cnt_frac) <= NORM_CAP
        assert qp.norm_b_q == weighted_norm(qp.cleak_q15, 30, qp.sb_frac) <= NORM_CAP
        assert qp.u_bound <= I32 and qp.ub_bound <= I32
    # the program prints and parses with its LIF scales; an IF program prints none of them
    from spidec.program import quant_lines

    assert "leak_q15=" in "\n".join(quant_lines(q))
    assert "leak_q15=" not in "\n".join(quant_lines(quantize(passes.run(deep_dense())).quant))
    # a leak that Q15 cannot hold is refused
    with pytest.raises(SpidecError, match="Q15"):
        quantize(passes.run(deep_dense(), neuron="LIF", leak=1e-6))


def test_lif_membranes_stay_within_the_if_bounds():
    """Drive the numpy model hard (inputs far beyond input_max): |u| and |ub| never pass the proven
    bounds (the model computes in int64, so an int32 overflow would show as a value beyond)."""
    g = quantize(passes.run(deep_dense(), neuron="LIF", leak=0.8, T=20, T_back=30, sf=40), input_max=1.0)
    fm = FixedModel(g)
    rng = np.random.default_rng(1)
    for x in (np.full(10, 1e6), np.full(10, -1e6), rng.uniform(-50, 50, 10)):
        fm.learn(x, 1, 1)
        for qp in g.quant.populations:
            assert np.abs(fm.cnt[qp.name]).max() <= qp.norm_q and np.abs(fm.sb[qp.name]).max() <= qp.norm_b_q


@pytest.mark.parametrize("update", ["momentum", "online"])
def test_c_equals_numpy_model_bit_for_bit_lif_dense_feedback(tmp_path, update):
    g = quantize(passes.run(dense_feedback(), neuron="LIF", leak=0.9, T=20, T_back=30, sf=20), update=update)
    assert g.quant.populations[0].leak_q15
    rng = np.random.default_rng(5)
    x, y = rng.uniform(0, 1, (40, 6)).astype(np.float32), rng.integers(0, 4, 40)
    _lockstep(g, x, y, tmp_path / "c", batch=1 if update == "online" else 4, steps=12)


@pytest.mark.parametrize("update", ["momentum", "online"])
def test_c_equals_numpy_model_bit_for_bit_lif_two_layers(tmp_path, update):
    """Same-step and delayed synapses, two injections, saturating inputs, a strong leak (0.7)."""
    g = quantize(passes.run(deep_dense(), neuron="LIF", leak=0.7, T=12, T_back=20, sf=40), update=update)
    rng = np.random.default_rng(3)
    x = rng.uniform(-3, 3, (40, 10)).astype(np.float32)
    y = rng.integers(0, 4, 40)
    fm = _lockstep(g, x, y, tmp_path / "c", batch=4, steps=8)
    assert any(fm.cnt[p].max() > 0 for p in fm.cnt)


def _digits_lif(**kw):
    return passes.run(load_onnx(ROOT / "examples" / "digits_fb.onnx"), neuron="LIF", leak=0.9, **kw)


def test_lif_digits_online_epoch_close_to_float(tmp_path):
    """One online epoch (batch 1) of LIF digits: fixed point within 5 points of the float C runtime
    trained on the same order at batch 1 (the float runtime's SGD with momentum, as the model has it).
    Measured at seed 0: float 0.878, fixed 0.907 (IF online digits: 0.867); both runs are deterministic."""
    ds = data.digits()
    g = _digits_lif(sf=10)
    accs = {}
    for kind, gg in (("float", g), ("fixed", quantize(g, update="online"))):
        rt = emit(gg, tmp_path / kind).build()
        rt.train_epoch(ds.x_train, ds.y_train, epoch_order(0, 0, len(ds.y_train)), batch=1, lr=rt.lr)
        accs[kind] = rt.evaluate(ds.x_test, ds.y_test)["accuracy"]
    assert accs["fixed"] >= 0.8 and accs["fixed"] >= accs["float"] - 0.05, accs


def test_qemu_m4_trains_lif_to_the_host_weights(board_tools, tmp_path):  # noqa: F811
    """LIF digits on the Cortex-M4 (online updates, a shortened epoch of 120 samples): the weights
    it ends with are the host fixed-point build's, bit for bit."""
    ds = data.digits()
    g = quantize(_digits_lif(sf=10), update="online")
    out = tmp_path / "m4"
    emit(g, out, board="mps2-an386")
    n = 120
    data.write_spds(out / "tr.spds", ds.x_train[:n], ds.y_train[:n], 10)
    data.write_spds(out / "te.spds", ds.x_test[:40], ds.y_test[:40], 10)
    result = brd.run_qemu(out, ["train", "tr.spds", "te.spds", "--epochs", "1", "--batch", "1", "--out", "w.bin"],
                          timeout=300)
    assert result["board"] == "mps2-an386" and len(result["epochs"]) == 2
    rt = emit(g, tmp_path / "host").build()
    rt.train_epoch(ds.x_train[:n], ds.y_train[:n], epoch_order(0, 0, n), batch=1, lr=rt.lr)
    h, dump = read_weights_dump(out / "w.bin")
    assert h == rt.hash
    for i, name in enumerate(rt.tensor_names):
        np.testing.assert_array_equal(dump[i], rt.qweights()[name], err_msg=name)
