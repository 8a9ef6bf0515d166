"""The Lava target on op-chain synapses (issue 17): conv, transposed conv, pooling, tensor scales
and views between populations, delivered by ChainSynapse processes that apply the chain (spidec.ops'
apply forward, adjoint backward) to each step's spikes, the learnable op stepped by its true
gradient through the ops around it and its tensors set into the processes. Checked against the sim
backend in float64 with the tolerances of test_lava_more (one spike per neuron for a float64
threshold tie under another summation order, stepped tensors to rtol 1e-9); every size is tiny
(Lava is slow). The examples LeNet-F and ConvNet-F: test_lava_examples.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import spidec

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


def _chains_hold_the_tensors(g: spidec.Graph, net) -> None:
    """Each op chain's two processes hold the network's current tensors of the chain, flat in op
    order (a feedback weight over the norm bound through its restricted copy, factor ``net.c``)."""
    now = net.tensors()
    for r in net.cfg["between"]:
        if r["ops"] is None:
            continue
        flat = np.concatenate([now[t].reshape(-1) * net.c.get(t, 1.0) for o in r["ops"] for t in o["tensors"].values()]
                              or [np.zeros(1)])
        for proc in (net.fw[r["name"]], net.bw[r["name"]]):
            np.testing.assert_allclose(proc.tensors.get(), flat, rtol=1e-15, atol=0, err_msg=r["name"])


@pytest.mark.parametrize("build", [conv_feedback, convt_chain_net], ids=["conv_feedback", "convt_chain"])
def test_op_chains_spike_and_train_as_sim(build, tmp_path):
    g = spidec.passes.run(build(), sf=20.0, T=30, T_back=60)
    kinds = {ch.kernel for ch in g.program.chains}
    assert kinds & {"conv", "chain", "convt"}, kinds
    net, snet, sprog = _both(g, tmp_path)
    try:
        x, y = _data(g)
        _chains_hold_the_tensors(g, net)
        assert _stages_equal_sim(g, net, snet, sprog, x, y, reach_back=True) >= 8
        _training_equals_sim(net, snet, sprog, x, y, inp=g.inputs[0].name)
        # the stepped tensors are in the processes: both stages still as sim's
        _chains_hold_the_tensors(g, net)
        assert _stages_equal_sim(g, net, snet, sprog, x, y, reach_back=True) >= 8
    finally:
        net.close()


def test_set_tensors_rebuilds_a_frozen_chain(tmp_path):
    """A frozen op chain (pool |> conv with trainable=False) keeps its tensors across a learning step
    (they are not set again) and set_tensors sets them."""
    g0 = conv_feedback()
    e = g0.synapse("pool_conv")
    ops = tuple(op.replace(trainable=False) if isinstance(op, spidec.Conv2d) else op for op in e.synapse.ops)
    g0.replace_synapse("pool_conv", dataclasses.replace(e.synapse, ops=ops))
    g = spidec.passes.run(g0, sf=20.0, T=30, T_back=60)
    net = lava_backend.emit(g, tmp_path / "lava").load()
    try:
        assert "pool_conv.weight" not in net.cfg["learnable"]
        m = net.fw["pool_conv"].tensors.get()
        x, y = _data(g, 2)
        net.learn(x[0], y[0], 1)
        net.step(0.1)
        np.testing.assert_array_equal(net.fw["pool_conv"].tensors.get(), m)
        net.set_tensors({"pool_conv.weight": net.tensors()["pool_conv.weight"] * 0.5})
        np.testing.assert_allclose(net.fw["pool_conv"].tensors.get(), 0.5 * m, rtol=1e-15, atol=0)
        _chains_hold_the_tensors(g, net)
        # and the processes deliver the halved conv: both stages as the sim program's with it
        sim = spidec.compile(g.with_tensors(net.tensors()), target="sim", out=tmp_path / "sim")
        assert _stages_equal_sim(g, net, sim.load(dtype=torch.float64), sim.module(), x, y, reach_back=True) >= 1
    finally:
        net.close()
