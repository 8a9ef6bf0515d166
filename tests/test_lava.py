"""The Lava backend against the sim backend: forward spikes, ternary backward spikes and one
training step, then a short training run. Both compute in float64 here (Lava's floating_pt
models use float64 arrays), so spike counts agree exactly unless a float summation order flips
a threshold tie: the tolerance is one spike per neuron, as the issue allows."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import EXAMPLES

import spidec
from spidec import SpidecError

pytest.importorskip("lava", reason="Lava is an optional extra (the test command installs it)")
torch = pytest.importorskip("torch")
from spidec.backends import lava as lava_backend  # noqa: E402

from spidec.data import digits  # noqa: E402


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    out = tmp_path_factory.mktemp("lava")
    g = spidec.passes.run(spidec.load(EXAMPLES / "digits_fb.spir"), sf=20.0)
    art = lava_backend.emit(g, out / "lava")
    net = art.load()
    sim = spidec.compile(g, target="sim", out=out / "sim")
    yield g, net, sim, art
    net.close()


def test_forward_and_backward_spikes_equal_the_sim_backend(programs):
    g, net, sim, _ = programs
    snet, prog = sim.load(dtype=torch.float64), sim.module()
    ds = digits()
    x, y = ds.x_test[:6].astype(np.float64), ds.y_test[:6]
    fwd = snet.forward_stage({"x": torch.from_numpy(x)})
    _, dy, _ = prog.loss_and_grad(fwd, torch.from_numpy(y), len(y))
    bwd = snet.backward_stage(fwd, dy)
    for k in range(len(x)):
        rates, logits = net.forward(x[k])
        assert np.max(np.abs(rates["z"] - fwd["a_z"].numpy()[k])) * g.simulation.T <= 1.0 + 1e-9
        np.testing.assert_allclose(logits, fwd["y_logits"].numpy()[k], atol=1e-9)
        beta, fired = net.backward(rates, dy["logits"].numpy()[k])
        assert np.max(np.abs(beta["z"] - bwd["beta_z"].numpy()[k])) * g.training.T_back <= 1.0 + 1e-9
        np.testing.assert_allclose(fired["z"], bwd["rate_z"].numpy()[k], atol=1.0 / g.training.T_back + 1e-12)


def test_one_training_step_equals_the_sim_backend(programs):
    _, _, sim, art = programs
    snet, prog = sim.load(dtype=torch.float64), sim.module()
    ds = digits()
    x, y = ds.x_train[:4].astype(np.float64), ds.y_train[:4]
    lava_net = art.load()  # a fresh network with the initial weights
    try:
        before = lava_net.tensors()
        for k in range(len(x)):
            lava_net.learn(x[k], y[k], len(x))
        lava_net.step(0.1)
        prog.train_step(snet, {"x": torch.from_numpy(x)}, torch.from_numpy(y), 0.1)
        after_sim, after_lava = snet.tensors(), lava_net.tensors()
        for name in before:
            np.testing.assert_allclose(after_lava[name], after_sim[name], rtol=1e-9, atol=1e-12, err_msg=name)
        assert any(not np.allclose(after_lava[n], before[n]) for n in before)
    finally:
        lava_net.close()


def test_restricted_feedback_and_the_authors_step_as_in_sim(tmp_path):
    """A feedback weight 1.5x over its bound (the authors' reparametrisation: both stages read it
    scaled by c = 2/3, its raw gradient is c times the effective one's) and the 1/V^2 step of every
    population tensor: two steps in Lava equal the sim program's."""
    g = spidec.passes.run(spidec.load(EXAMPLES / "digits_fb.spir"), sf=20.0)
    w = g.tensor("fb.weight")
    g = g.with_tensors({"fb.weight": w * (1.5 / np.linalg.norm(w))})
    net = lava_backend.emit(g, tmp_path / "lava").load()
    sim = spidec.compile(g, target="sim", out=tmp_path / "sim")
    snet, prog = sim.load(dtype=torch.float64), sim.module()
    ds = digits()
    try:
        for b in range(2):
            x, y = ds.x_train[4 * b: 4 * b + 4].astype(np.float64), ds.y_train[4 * b: 4 * b + 4]
            for k in range(len(x)):
                net.learn(x[k], y[k], len(x))
            net.step(0.1)
            prog.train_step(snet, {"x": torch.from_numpy(x)}, torch.from_numpy(y), 0.1)
        assert abs(net.c["fb.weight"] - 1.0 / np.linalg.norm(net.tensors()["fb.weight"])) < 1e-12
        after_sim, after_lava = snet.tensors(), net.tensors()
        for name in after_sim:
            np.testing.assert_allclose(after_lava[name], after_sim[name], rtol=1e-9, atol=1e-12, err_msg=name)
    finally:
        net.close()
    with pytest.raises(SpidecError, match="does not run dropout"):
        from test_training import DropNet

        lava_backend.emit(spidec.passes.run(spidec.from_torch(DropNet())), tmp_path / "drop")


def test_short_training_run_beats_chance_by_far(programs):
    _, net, _, _ = programs
    ds = digits()
    x, y = ds.x_train.reshape(len(ds.x_train), -1), ds.y_train
    xt, yt = ds.x_test[:150], ds.y_test[:150]
    before = net.evaluate(xt, yt)["accuracy"]
    net.train_epoch(x, y, batch=8, perm=np.random.default_rng(0).permutation(len(y))[:240])
    after = net.evaluate(xt, yt)["accuracy"]
    assert after >= 0.6 and after > before + 0.3, (before, after)  # chance is 0.1


def test_models_lava_cannot_express_are_refused(tmp_path):
    """Undelayed synapses between populations compile now (tests/test_lava_more.py); populations
    that no synapse joins cannot run as one Lava network."""
    rng = np.random.default_rng(0)
    g = spidec.Graph("apart")
    g.add_input("x", [3])
    g.add_population("a", [4])
    g.add_population("b", [4])
    g.add_readout("y", [2])
    for p in "ab":
        g.add_synapse("x", p, spidec.Dense(rng.random((4, 3))))
        g.add_synapse(p, p, spidec.Dense(rng.random((4, 4)) * 0.1), delay=1)
        g.add_synapse(p, "y", spidec.Dense(rng.random((2, 4))))
    with pytest.raises(SpidecError, match=r"population 'b' is joined to population 'a' by no chain of synapses"):
        lava_backend.emit(spidec.passes.run(g), tmp_path)
