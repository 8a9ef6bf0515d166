"""The Lava target in fixed point with average pooling, conv and transposed-conv synapses between
populations, and conv / pool from the input and op chains (issue 17): each such synapse is a
FixedDense process holding FixedModel._syn's integer matrix (a pool's P[o] at every tap, a conv's
M[o, i] = W[t(o, i)] from the restricted kernel) and
its backward twin the transpose with FixedModel's shift, so the Lava fixed_pt network is
spidec.fixed.FixedModel bit for bit: counts, masks, integer logits, ternary sums and firing counts of
every sample, integer weights and momentum after every sample and step (both update modes, IF and
LIF), and after each learning step the processes hold the new conv matrices. Every check is exact
(np.testing.assert_array_equal on integers). Sizes are tiny: Lava runs a process per population
and synapse."""

from __future__ import annotations

import numpy as np
import pytest
from test_fixed_convw import conv_net

import spidec
from spidec import AvgPool2d, Conv2d, ConvTranspose2d, Dense, Flatten, Graph, Reshape, Scale, SpidecError, passes
from spidec.fixed import FixedModel

pytest.importorskip("lava", reason="Lava is an optional extra (the test command installs it)")
from test_lava_fixed import _lockstep, _samples


def pool_conv_net(seed: int = 0, fb_scale: float = 0.8) -> Graph:
    """x[64] -dense-> p1[4,6,6] -conv 3x3 pad 1-> p2[6,6,6] -avgpool 3x3 s2 p1 (no padding in the
    divisor: 4, 6 or 9 taps) x 1.5-> p3[6,3,3], a delayed feedback p3 -> p1 through a convT 2x2
    stride 2 of Frobenius norm ``fb_scale`` (6: over the reparametrisation's bound, restricted), per-channel
    biases, a readout of p3. The conv and the pool are same-step synapses, the convT a delayed one."""
    rng = np.random.default_rng(seed)
    g = Graph("pool_conv_fb")
    g.add_input("x", [64])
    g.add_population("p1", [4, 6, 6], bias=rng.uniform(-0.1, 0.2, 4))
    g.add_population("p2", [6, 6, 6], bias=rng.uniform(-0.1, 0.2, 6))
    g.add_population("p3", [6, 3, 3], bias=rng.uniform(-0.1, 0.2, 6))
    g.add_readout("y", [10], bias=rng.uniform(-0.1, 0.1, 10))
    g.add_synapse("x", "p1", [Dense(rng.uniform(-0.3, 0.4, (144, 64))), Reshape((4, 6, 6))], name="inp")
    g.add_synapse("p1", "p2", Conv2d(rng.uniform(-0.25, 0.35, (6, 4, 3, 3)), padding=1), name="conv")
    g.add_synapse("p2", "p3", [AvgPool2d(3, stride=2, padding=1, count_include_pad=False), Scale(1.5)], name="pool")
    w = rng.standard_normal((6, 4, 2, 2))
    g.add_synapse("p3", "p1", ConvTranspose2d(fb_scale * w / np.linalg.norm(w), stride=2), delay=1, name="fb")
    g.add_synapse("p3", "y", [Flatten(), Dense(rng.uniform(-0.4, 0.4, (10, 54)))], name="cls")
    return g.validate()


def _run(q: Graph, tmp_path, n: int = 6, batch: int = 2) -> dict[str, int]:
    """_lockstep (every integer equal, sample by sample; at the end the processes of both stages hold
    the last sample's matrices), then: neurons inside their masks and ternary spikes were exercised,
    every tensor learned, and the last sample's conv / convT matrices are not the initial ones, so the
    processes did read new matrices after the learning steps."""
    kinds = {ch.name: ch.kernel for ch in q.program.chains}
    fm = FixedModel(q)
    fm._restrict()
    first = {syn: fm._syn(syn).copy() for syn, kind in kinds.items() if kind in ("conv", "convt")}
    x, y = _samples(q, n)
    seen = _lockstep(q, tmp_path / "lava", x, y, batch=batch)
    assert seen["inside"] >= 50 and seen["ternary"] >= 50, seen
    assert seen["moved"] == len(q.program.quant.tensors), seen  # the kernels and per-channel biases too
    fm2 = FixedModel(q)  # (FixedModel's run of the same samples: the matrices the processes held last)
    for k in range(n):
        fm2.learn(x[k], int(y[k]), batch)
        if (k + 1) % batch == 0:
            fm2.step(0.1)
    for syn, m in first.items():
        assert not np.array_equal(fm2._syn(syn), m), syn
    return seen


@pytest.mark.parametrize("update", ["momentum", "online"])
def test_pool_conv_convt_equal_fixed_model_bit_for_bit(tmp_path, update):
    g = passes.run(pool_conv_net(), T=16, T_back=24, sf=20.0)
    assert [(ch.name, ch.kernel, ch.delay) for ch in g.program.chains if ch.kernel != "dense"] == [
        ("conv", "conv", 0), ("pool", "pool", 0), ("fb", "convt", 1)]
    _run(passes.quantize(g, update=update), tmp_path)


def test_lif_pool_conv_convt_equal_fixed_model_bit_for_bit(tmp_path):
    """LIF (leak 0.9) neurons and couples through the pool, conv and convT matrices."""
    g = passes.run(pool_conv_net(), neuron="LIF", leak=0.9, T=16, T_back=24, sf=20.0)
    q = passes.quantize(g, update="momentum")
    assert all(qp.leak_q15 and qp.cleak_q15 for qp in q.program.quant.populations)
    _run(q, tmp_path, n=4)


def test_restricted_convt_feedback_reads_k_as_fixed_model(tmp_path):
    """A convT feedback kernel 6 / 2 = 3x over its bound (the authors' reparametrisation): both stages
    read the matrix of E = (W k) >> 16, rebuilt (and pushed to the processes) whenever W moves."""
    g = passes.run(pool_conv_net(fb_scale=6.0), T=16, T_back=24, sf=20.0)
    q = passes.quantize(g, update="online")
    fm = FixedModel(q)
    fm.forward(np.zeros(64))
    assert fm.k["fb.weight"] < 1 << 16  # the restriction is active
    _run(q, tmp_path, n=4, batch=1)


def test_strided_conv_and_convt_with_output_padding(tmp_path):
    """test_fixed_convw's conv_net with stride 2: conv 3x3 s2 p1 [4,6,6] -> [6,3,3] and the feedback
    convT 3x3 s2 p1 output_padding 1 back (both learnable kernels)."""
    q = passes.quantize(passes.run(conv_net(stride=True), T=16, T_back=24, sf=20.0), update="momentum")
    _run(q, tmp_path, n=4)


@pytest.mark.parametrize("kind", ["pad", "pool"])
def test_conv_and_pool_from_the_input_and_chains_equal_fixed_model(tmp_path, kind):
    """test_fixed_chains' nets: pad |> conv2d (pad: a learnable conv from the input, an avgpool |> tensor
    scale between populations and a zero synapse into the readout) or an avgpool from the input (pool):
    the host computes the input currents with FixedModel's own code, the processes hold _syn's matrices."""
    from test_fixed_chains import chain_net

    q = passes.quantize(passes.run(chain_net(kind), T=16, T_back=24, sf=20.0), update="momentum")
    _run(q, tmp_path, n=6 if kind == "pad" else 16)  # (pool: 20 neurons; >= 50 inside their masks)


def _pool_dense_in() -> Graph:
    """img[1,4,4] -avgpool2d |> flatten |> dense-> a[6] (self-feedback) -> y[4]: the chain from the input."""
    rng = np.random.default_rng(1)
    h = Graph("pool_dense_in")
    h.add_input("img", [1, 4, 4])
    h.add_population("a", [6])
    h.add_readout("y", [4])
    h.add_synapse("img", "a", [AvgPool2d(2), Flatten(), Dense(rng.uniform(-1, 1, (6, 4)))], name="pin")
    h.add_synapse("a", "a", Dense(0.1 * rng.standard_normal((6, 6))), delay=1)
    h.add_synapse("a", "y", Dense(rng.uniform(-1, 1, (4, 6))))
    return h.validate()


def test_what_still_cannot_run_is_one_line(tmp_path):
    """A bare pool into the readout and avgpool |> dense from the input (refused by fixed point's checks;
    avgpool |> dense / conv between populations and avgpool |> dense into the readout run:
    tests/test_fixed_pool_chains.py): one SpidecError line naming the synapse, nothing written."""
    rng = np.random.default_rng(0)
    h = Graph("pool_out")
    h.add_input("img", [1, 4, 4])
    h.add_population("a", [4, 2, 2])
    h.add_readout("y", [4])
    h.add_synapse("img", "a", Conv2d(rng.uniform(-1, 1, (4, 1, 2, 2)), stride=2), name="cin")
    h.add_synapse("a", "a", [Flatten(), Dense(0.1 * rng.standard_normal((16, 16))), Reshape((4, 2, 2))], delay=1)
    h.add_synapse("a", "y", [AvgPool2d(2), Flatten()], name="pout")
    cases = [(h.validate(), r"synapse 'pout': fixed point pools into populations only"),
             (_pool_dense_in(), r"synapse 'pin': fixed point runs avgpool2d \|> dense from a population")]
    for k, (g, msg) in enumerate(cases):
        with pytest.raises(SpidecError, match=msg) as e:
            spidec.compile(passes.run(g), "lava", tmp_path / f"b{k}", fixed=True)
        assert "\n" not in str(e.value), str(e.value)
        assert not (tmp_path / f"b{k}" / "processes_fixed.py").exists()
