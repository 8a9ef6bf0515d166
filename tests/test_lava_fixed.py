"""The Lava target in fixed point (issue 17): ``spidec.compile(q, "lava", out, fixed=True)`` of a
quantized graph emits fixed_pt process models whose integer arithmetic is spidec.fixed.FixedModel's
(hence the fixed-point C runtime's) bit for bit. Every check is exact (np.testing.assert_array_equal
on integers): spike counts, masks, integer logits, loss gradients, ternary sums and firing counts of
every sample, and the integer weights and momentum buffers after every sample and step, in both
update modes, for a dense feedback net, a two-population net with a same-step synapse, LIF neurons
and couples, and a feedback weight over its norm bound (the reparametrisation's k). Sizes are tiny:
Lava runs a process per population and synapse."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import EXAMPLES, dense_feedback

import spidec
from spidec import SpidecError
from spidec.fixed import FixedModel

pytest.importorskip("lava", reason="Lava is an optional extra (the test command installs it)")
from spidec.backends import lava as lava_backend
from test_lava_more import chain_net


def _samples(g: spidec.Graph, n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, *g.inputs[0].shape)), rng.integers(0, g.readouts[0].shape[0], n)


def _lockstep(q: spidec.Graph, out, x: np.ndarray, y: np.ndarray, batch: int = 2) -> dict[str, int]:
    """Train the Lava fixed_pt network and FixedModel side by side, sample by sample: every integer
    of both stages and of the updates must be equal. Returns what was exercised (for the caller to
    require: neurons inside the mask, ternary spikes, weights moved)."""
    art = spidec.compile(q, "lava", out, fixed=True)
    text = (art.out / "processes_fixed.py").read_text()
    assert '@tag("fixed_pt")' in text and "floating_pt" not in text
    net, fm = art.load(), FixedModel(q)
    seen = {"inside": 0, "ternary": 0, "moved": 0, "pushed": 0}
    w0 = {n: w.copy() for n, w in fm.w.items()}
    try:
        lm = net.model
        for k in range(len(y)):
            loss_lava = net.learn(x[k], y[k], batch)
            assert loss_lava == fm.learn(x[k], int(y[k]), batch)
            np.testing.assert_array_equal(lm.xq, fm.xq)
            np.testing.assert_array_equal(lm.logits_q, fm.logits_q)
            np.testing.assert_array_equal(lm.dls, fm.dls)
            for name in fm.cnt:
                np.testing.assert_array_equal(lm.cnt[name], fm.cnt[name], err_msg=f"counts of {name}, sample {k}")
                np.testing.assert_array_equal(lm.mask[name], fm.mask[name], err_msg=name)
                np.testing.assert_array_equal(lm.sb[name], fm.sb[name], err_msg=f"couple sums of {name}, sample {k}")
                seen["inside"] += int(fm.mask[name].sum())
                seen["ternary"] += int(lm.fired[name].sum())
            if (k + 1) % batch == 0:
                net.step(0.1)
                fm.step(0.1)
            for name in fm.w:  # online: every sample moves them; momentum: every step
                np.testing.assert_array_equal(lm.w[name], fm.w[name], err_msg=f"weights {name}, sample {k}")
            for name in fm.m:  # (the learnable tensors; fm.w also holds frozen ones, e.g. a pool's gain)
                np.testing.assert_array_equal(lm.m[name], fm.m[name], err_msg=f"momentum {name}, sample {k}")
        seen["moved"] = sum(int(not np.array_equal(fm.w[n], w0[n])) for n in fm.w)
        seen["pushed"] = sum(1 for (stage, _), e in lm._sent.items() if stage == "forward")
        # the matrices the synapse processes hold are the stages' matrices of the last sample
        # (FixedModel._syn: a dense weight, a pool's or a conv's integer matrix; transposed backward)
        for syn, d in lm.fw.items():
            np.testing.assert_array_equal(d.weights.get(), lm._syn(syn), err_msg=syn)
        for syn, d in lm.bw.items():
            np.testing.assert_array_equal(d.weights.get(), lm._syn(syn).T, err_msg=syn)
    finally:
        net.close()
    return seen


@pytest.mark.parametrize("update", ["momentum", "online"])
def test_dense_feedback_equals_fixed_model_bit_for_bit(tmp_path, update):
    g = spidec.passes.run(dense_feedback(), T=16, T_back=24, sf=20.0)
    q = spidec.passes.quantize(g, update=update)
    x, y = _samples(g, 6)
    seen = _lockstep(q, tmp_path / "lava", x, y)
    assert seen["inside"] >= 10 and seen["ternary"] >= 10, seen
    assert seen["moved"] == len(q.program.quant.tensors), seen  # every learnable tensor moved


@pytest.mark.parametrize("update", ["momentum", "online"])
def test_same_step_synapse_equals_fixed_model_bit_for_bit(tmp_path, update):
    g = spidec.passes.run(chain_net(), T=20, T_back=30, sf=20.0)
    assert [ch.delay for ch in g.program.chains if ch.src == "h1" and ch.dst == "h2"] == [0]
    q = spidec.passes.quantize(g, update=update)
    x, y = _samples(g, 6)
    seen = _lockstep(q, tmp_path / "lava", x, y)
    assert seen["inside"] >= 10 and seen["ternary"] >= 10, seen
    assert seen["moved"] == len(q.program.quant.tensors), seen


@pytest.mark.parametrize("update", ["momentum", "online"])
def test_lif_equals_fixed_model_bit_for_bit(tmp_path, update):
    """LIF (leak 0.9) in both stages: the Q15 leak with round half up on membranes, couple
    potentials, leak-weighted counts and ternary sums, as FixedModel."""
    g = spidec.passes.run(chain_net(), neuron="LIF", leak=0.9, T=20, T_back=30, sf=20.0)
    q = spidec.passes.quantize(g, update=update)
    assert all(qp.leak_q15 and qp.cleak_q15 for qp in q.program.quant.populations)
    x, y = _samples(g, 4)
    seen = _lockstep(q, tmp_path / "lava", x, y)
    assert seen["inside"] >= 10 and seen["ternary"] >= 10, seen


def test_float_and_fixed_networks_in_one_process(tmp_path):
    """A float network loaded first (its module `processes`), then a fixed one of the same graph
    (its own module `processes_fixed`): both run, the fixed one still bit for bit."""
    g = spidec.passes.run(dense_feedback(), T=16, T_back=24, sf=20.0)
    x, y = _samples(g, 2)
    net = lava_backend.emit(g, tmp_path / "float").load()
    try:
        rates, _ = net.forward(x[0])
        assert rates["h"].max() > 0
    finally:
        net.close()
    _lockstep(spidec.passes.quantize(g), tmp_path / "fixed", x, y)


def test_restricted_feedback_weight_reads_k_as_fixed_model(tmp_path):
    """A feedback weight 1.5x over its bound (the authors' reparametrisation): both stages read
    E = (W k) >> 16, so the Lava synapse processes get new weights whenever W moves."""
    g = spidec.passes.run(dense_feedback(), T=16, T_back=24, sf=20.0)
    assert g.training.optimizer.feedback_norm_mode == "reparam"
    (fb,) = [n for n, qt in spidec.passes.quantize(g).program.quant.tensors.items() if qt.feedback]
    bound = g.program.restricted("reparam")[fb]
    w = g.tensor(fb)
    q = spidec.passes.quantize(g.with_tensors({fb: w * (1.5 * bound / np.linalg.norm(w))}), update="momentum")
    fm = FixedModel(q)
    fm.forward(np.zeros(q.inputs[0].shape))
    assert fm.k[fb] < 1 << 16  # the restriction is active
    x, y = _samples(g, 4, seed=3)
    _lockstep(q, tmp_path / "lava", x, y)


def test_a_training_epoch_through_the_artifact_equals_fixed_model(tmp_path):
    """digits_fb (64 -> 128 with feedback -> 10) through the artifact's train (its permutation and
    learning rate) on 12 digits, then evaluate: the weights and the loss are FixedModel's."""
    from spidec.data import digits

    g = spidec.passes.run(spidec.load(EXAMPLES / "digits_fb.spir"), T=12, T_back=20, sf=20.0)
    q = spidec.passes.quantize(g)
    art = spidec.compile(q, "lava", tmp_path / "lava", fixed=True)
    ds = digits()
    x, y = ds.x_train[:12].reshape(12, -1).astype(np.float64), ds.y_train[:12]
    try:
        hist = art.train(x, y, epochs=1, batch=4, seed=5)
        fm = FixedModel(q)
        loss, ok = fm.train_epoch(x, y, np.random.default_rng(5).permutation(12), 4, q.training.optimizer.lr)
        assert hist[0]["train_loss"] == loss / 12 and hist[0]["train_accuracy"] == ok / 12
        lava_w = art.get_weights()
        for name, w in fm.weights().items():
            np.testing.assert_array_equal(lava_w[name], w, err_msg=name)
        assert art.evaluate(x, y)["accuracy"] == fm.evaluate(x, y)
    finally:
        art.close()


def test_cli_compiles_lava_fixed_and_float_builds_stay_as_they_were(tmp_path, run_cli):
    """``--target lava --fixed`` writes the fixed_pt program (quantized model.spir); without
    --fixed the float program's files are the floating_pt ones, equal to a float build of the
    same graph through the Python API."""
    model = str(EXAMPLES / "digits_fb.spir")
    rc, _, err = run_cli("compile", model, "--target", "lava", "--fixed", "--update", "online",
                           "-o", str(tmp_path / "fx"), "--T", "8", "--T-back", "10")
    assert rc == 0, err
    proc = (tmp_path / "fx" / "processes_fixed.py").read_text()
    assert not (tmp_path / "fx" / "processes.py").exists()
    assert proc.count('@tag("fixed_pt")') == 3 and "FixedDense" in proc
    assert "LavaFixedModel" in (tmp_path / "fx" / "network.py").read_text()
    assert spidec.text.load(tmp_path / "fx" / "model.spir").quant.update == "online"
    rc, out, err = run_cli("train", str(tmp_path / "fx"), "--epochs", "1", "--limit-train", "8", "--limit-test", "8",
                           "--batch", "4")
    assert rc == 0 and out.startswith("epoch   1 ") and "test acc" in out, (out, err)
    rc, _, err = run_cli("compile", model, "--target", "lava", "--fixed", "--report", "-o", str(tmp_path / "r"))
    assert rc != 0 and "--report plans the memory of a microcontroller build, not of the lava target" in err
    rc, _, err = run_cli("compile", model, "--target", "lava", "-o", str(tmp_path / "fl"), "--T", "8", "--T-back", "10")
    assert rc == 0, err
    g = spidec.passes.run(spidec.load(EXAMPLES / "digits_fb.spir"), T=8, T_back=10)
    lava_backend.emit(g, tmp_path / "api")
    for name in ("processes.py", "network.py", "train.py", "config.json"):
        assert (tmp_path / "fl" / name).read_bytes() == (tmp_path / "api" / name).read_bytes(), name
    assert '@tag("fixed_pt")' not in (tmp_path / "fl" / "processes.py").read_text()


def test_what_lava_fixed_point_cannot_express_is_one_line(tmp_path):
    """Dropout, avgpool |> dense from the input and boards: one SpidecError line naming the thing, nothing
    written (pooling, conv and avgpool |> dense / conv between populations run: tests/test_lava_fixed_conv.py,
    tests/test_fixed_pool_chains.py)."""
    torch = pytest.importorskip("torch")  # noqa: F841
    from test_lava_fixed_conv import _pool_dense_in
    from test_training import DropNet

    cases = [
        (spidec.passes.run(spidec.from_torch(DropNet())), {}, r"synapse '.*': fixed point does not run dropout"),
        (spidec.passes.run(_pool_dense_in()), {}, r"synapse 'pin': fixed point runs avgpool2d \|> dense from a "
         r"population"),
        (spidec.passes.run(dense_feedback()), {"board": "mps2-an386"},
         r"board 'mps2-an386' is a Cortex-M image of the c target; the lava target builds no boards"),
    ]
    for k, (g, kw, msg) in enumerate(cases):
        with pytest.raises(SpidecError, match=msg) as e:
            spidec.compile(g, "lava", tmp_path / f"b{k}", fixed=True, **kw)
        assert "\n" not in str(e.value), str(e.value)
        assert not (tmp_path / f"b{k}" / "processes_fixed.py").exists()
