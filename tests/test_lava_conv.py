"""The Lava target on op-chain synapses (issue 17): conv, transposed conv, pooling, tensor scales
and views between populations, delivered as the chain's dense matrix (built by applying the chain
to the identity), the backward stage through its transpose, the learnable op stepped by its true
gradient through the ops around it and the matrix rebuilt. Checked against the sim backend in
float64 with the tolerances of test_lava_more (one spike per neuron for a float64 threshold tie
under another summation order, stepped tensors to rtol 1e-9); every size is tiny (Lava is slow)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import spidec
from spidec import SpidecError

pytest.importorskip("lava", reason="Lava is an optional extra (the test command installs it)")
torch = pytest.importorskip("torch")
from conftest import conv_feedback  # noqa: E402
from spidec.backends import lava as lava_backend  # noqa: E402
from test_lava_more import _both, _stages_equal_sim, _training_equals_sim  # noqa: E402


def convt_chain_net(seed: int = 5) -> spidec.Graph:
    """img[1,6,6] -conv3 p1-> c1[2,6,6] -avgpool2 |> conv3 p1-> c2[2,3,3] (the learnable conv after a
    pool: its pre goes through the pool), a delayed feedback c2 -> c1 through a learnable
    conv_transpose2d (stride 2) |> a per-channel tensor scale (its post comes back through the
    scale's adjoint), and a readout through avgpool3 |> flatten |> dense (a chain readout)."""
    rng = np.random.default_rng(seed)
    g = spidec.Graph("convt_chain")
    g.add_input("img", [1, 6, 6])
    g.add_population("c1", [2, 6, 6], bias=np.array([0.15, 0.05]))
    g.add_population("c2", [2, 3, 3], bias=rng.uniform(-0.1, 0.2, (2, 3, 3)))
    g.add_readout("y", [3])
    g.add_synapse("img", "c1", spidec.Conv2d(rng.uniform(-0.9, 0.9, (2, 1, 3, 3)), padding=1), name="conv1")
    g.add_synapse("c1", "c2", [spidec.AvgPool2d(2), spidec.Conv2d(rng.uniform(-0.8, 0.9, (2, 2, 3, 3)), padding=1)],
                  name="pool_conv")
    g.add_synapse("c2", "c1", [spidec.ConvTranspose2d(rng.uniform(-0.5, 0.5, (2, 2, 2, 2)), stride=2),
                               spidec.Scale(np.array([1.2, 0.8]).reshape(2, 1, 1))], delay=1, name="fb")
    g.add_synapse("c2", "y", [spidec.AvgPool2d(3), spidec.Flatten(), spidec.Dense(rng.uniform(-2, 2, (3, 2)))],
                  name="cls")
    return g.validate()


def _data(g: spidec.Graph, n: int = 4, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, *g.inputs[0].shape)), rng.integers(0, g.readouts[0].shape[0], n)


def _matrices_are_the_chains(g: spidec.Graph, net) -> None:
    """Each op chain's processes hold factor x the chain of the network's current tensors (forward)
    and its transpose (backward): checked on random vectors against spidec.ops directly. (A
    feedback weight over the norm bound is read through its restricted copy, factor ``net.c``.)"""
    rng = np.random.default_rng(7)
    g2 = g.with_tensors({k: v * net.c.get(k, 1.0) for k, v in net.tensors().items()})
    for r in net.cfg["between"]:
        if r["ops"] is None:
            continue
        e = g2.synapse(r["name"])
        shapes = e.synapse.shapes(g2.node(e.src).shape)
        v = rng.standard_normal((1, *shapes[0]))
        h = v
        for op in e.synapse.ops:
            h = op.apply(h)
        m = net.fw[r["name"]].weights.get()
        np.testing.assert_allclose(m @ v.reshape(-1), h.reshape(-1), rtol=1e-12, atol=1e-12, err_msg=r["name"])
        np.testing.assert_array_equal(net.bw[r["name"]].weights.get(), m.T)


@pytest.mark.parametrize("build", [conv_feedback, convt_chain_net], ids=["conv_feedback", "convt_chain"])
def test_op_chains_spike_and_train_as_sim(build, tmp_path):
    g = spidec.passes.run(build(), sf=20.0, T=30, T_back=60)
    kinds = {ch.kernel for ch in g.program.chains}
    assert kinds & {"conv", "chain", "convt"}, kinds
    net, snet, sprog = _both(g, tmp_path)
    try:
        x, y = _data(g)
        _matrices_are_the_chains(g, net)
        assert _stages_equal_sim(g, net, snet, sprog, x, y, reach_back=True) >= 8
        _training_equals_sim(net, snet, sprog, x, y, inp=g.inputs[0].name)
        # the stepped tensors are in the processes: the matrices rebuilt, both stages still as sim's
        _matrices_are_the_chains(g, net)
        assert _stages_equal_sim(g, net, snet, sprog, x, y, reach_back=True) >= 8
    finally:
        net.close()


def test_set_tensors_rebuilds_a_frozen_chain(tmp_path):
    """A frozen op chain (pool |> conv with trainable=False) keeps its matrix across a learning step
    (it is not rebuilt) and set_tensors rebuilds it."""
    g0 = conv_feedback()
    e = g0.synapse("pool_conv")
    ops = tuple(op.replace(trainable=False) if isinstance(op, spidec.Conv2d) else op for op in e.synapse.ops)
    g0.replace_synapse("pool_conv", dataclasses.replace(e.synapse, ops=ops))
    g = spidec.passes.run(g0, sf=20.0, T=30, T_back=60)
    net = lava_backend.emit(g, tmp_path / "lava").load()
    try:
        assert "pool_conv.weight" not in net.cfg["learnable"]
        m = net.fw["pool_conv"].weights.get()
        x, y = _data(g, 2)
        net.learn(x[0], y[0], 1)
        net.step(0.1)
        np.testing.assert_array_equal(net.fw["pool_conv"].weights.get(), m)
        net.set_tensors({"pool_conv.weight": net.tensors()["pool_conv.weight"] * 0.5})
        np.testing.assert_allclose(net.fw["pool_conv"].weights.get(), 0.5 * m, rtol=1e-12, atol=1e-15)
        _matrices_are_the_chains(g, net)
    finally:
        net.close()


def test_a_chain_over_the_matrix_limit_is_refused_naming_it(tmp_path, monkeypatch):
    """The dense matrix of pool_conv is 27 x 108 = 2916 entries: under a limit of 2000 it is refused
    at compile time in one line naming the synapse and its size, and nothing is written."""
    monkeypatch.setattr(lava_backend, "MAX_MATRIX_ENTRIES", 2000)
    with pytest.raises(SpidecError, match=r"^synapse 'pool_conv': the lava backend delivers its op chain as a dense "
                                          r"27 x 108 matrix \(2916 entries\), over its limit of 2000") as e:
        lava_backend.emit(spidec.passes.run(conv_feedback()), tmp_path / "lava")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "lava").exists()
