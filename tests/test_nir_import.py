"""The NIR reader (spidec.from_nir, issue 16): the NIR paper's graphs, the rate units against a
step-by-step simulation of NIR's IF dynamics, the exporters of snnTorch, Sinabs and SpikingJelly,
every refusal with its message, and fuzzing (only SpidecErrors come out).

The NIR paper's files live in ../shared/data/nir beside the repository (BSD-3, see its README).
"""

from __future__ import annotations

import io
import re
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spidec
from spidec import AvgPool2d, Conv2d, Dense, Flatten, SpidecError, SpidecWarning, Synapse

nir = pytest.importorskip("nir", reason="the NIR reader needs the nir package (pip install 'spidec[nir]')")

PAPER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nir"
CSNN = PAPER / "02_cnn_cnn_sinabs.nir"
BRAILLE = [PAPER / "03_rnn_braille_noDelay_bias_zero.nir", PAPER / "03_rnn_braille_noDelay_noBias_subtract.nir"]
needs_paper = pytest.mark.skipif(not CSNN.exists(), reason=f"the NIR paper's graphs are not at {PAPER}")


def read(source, **kwargs):
    """from_nir, returning (graph, warning messages)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = spidec.from_nir(source, **kwargs)
    return g, [str(w.message) for w in caught if issubclass(w.category, SpidecWarning)]


def f32(a):
    return np.asarray(a, dtype=np.float32)


def inp(n):
    return nir.Input(input_type={"input": np.array(n if isinstance(n, (list, tuple)) else [n])})


def out(n):
    return nir.Output(output_type={"output": np.array([n])})


def if_node(n, r=1.0, thr=1.0, reset=0.0):
    return nir.IF(r=np.full(n, r), v_threshold=np.full(n, thr), v_reset=np.full(n, reset))


def lif_node(n, tau=1e-3, r=10.0, thr=1.0, v_leak=0.0):
    return nir.LIF(tau=np.full(n, tau) if np.ndim(tau) == 0 else np.asarray(tau), r=np.full(n, r),
                   v_leak=np.full(n, v_leak), v_threshold=np.full(n, thr), v_reset=np.zeros(n))


def affine(n_out, n_in, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    return nir.Affine(weight=f32(rng.normal(0, scale, (n_out, n_in))), bias=f32(rng.uniform(-0.1, 0.2, n_out)))


def graph(nodes, edges):
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def mlp(hidden):
    """input(4) -> fc -> hidden -> fo -> output(3)."""
    return graph({"input": inp(4), "fc": affine(5, 4), "h": hidden, "fo": affine(3, 5, 1), "output": out(3)},
                 [("input", "fc"), ("fc", "h"), ("h", "fo"), ("fo", "output")])


# ------------------------------------------------------------------ the NIR paper's graphs

def fold_pools(g: spidec.Graph) -> spidec.Graph:
    """The same forward map with every ``avgpool2d(2) |> conv2d`` and ``avgpool2d(2) |> flatten |>
    dense`` synapse written as one weighted op (a conv with the pool folded into a 2k x 2k kernel of
    stride 2s, a dense on the unpooled input): the C backend reads one weighted op per synapse."""
    out = g.copy()
    for e in g.synapses():
        ops = e.synapse.ops
        if len(ops) < 2 or not isinstance(ops[0], AvgPool2d):
            continue
        pool, rest, shape_in = ops[0], ops[1:], g.node(e.src).shape
        assert pool.kernel == pool.stride == (2, 2) and pool.padding == (0, 0)
        if len(rest) == 1 and isinstance(rest[0], Conv2d):
            c = rest[0]
            w = np.repeat(np.repeat(c.weight, 2, axis=2), 2, axis=3) / 4.0
            new = (Conv2d(w.astype(c.weight.dtype), tuple(2 * s for s in c.stride), tuple(2 * p for p in c.padding)),)
        else:
            assert len(rest) == 2 and isinstance(rest[0], Flatten) and isinstance(rest[1], Dense)
            d, mid = rest[1], pool.shape_out(shape_in)
            w = pool.adjoint(d.weight.astype(np.float64).reshape(-1, *mid), shape_in).reshape(len(d.weight), -1)
            new = (Flatten(), Dense(w.astype(d.weight.dtype)))
        out.replace_synapse(e.name, Synapse(new, e.synapse.delay))
    return out.validate()


def event_frames(n, steps, seed=0):
    """Synthetic N-MNIST-like event frames [n, steps, 2, 34, 34] (0/1 events, a class pattern each)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    proto = rng.random((10, 2, 34, 34)) * 0.3
    return (rng.random((n, steps, 2, 34, 34)) < proto[y][:, None]).astype(np.float32), y


@needs_paper
def test_the_paper_csnn_reads_exactly_with_one_warning_per_neuron_node():
    g, warned = read(CSNN)
    assert [p.shape for p in sorted(g.populations, key=lambda p: int(p.name[2:]))] == [
        (16, 16, 16), (16, 16, 16), (8, 8, 8), (256,), (10,)]
    assert g.inputs[0].shape == (2, 34, 34) and g.readouts[0].shape == (10,)
    # Sinabs writes IF r = 1, v_threshold 1, v_reset 0: the rate gain is 1 and the weights are the file's;
    # a SumPool2d is an average pool times k*k, folded into the next weight
    src = nir.read(str(CSNN))
    np.testing.assert_array_equal(g.tensor("s_0.weight"), src.nodes["0"].weight)
    np.testing.assert_allclose(g.tensor("s_5.weight"), 4 * src.nodes["5"].weight, rtol=1e-6)
    assert [op.kind for op in g.synapse("s_9").synapse.ops] == ["avgpool2d", "flatten", "dense"]
    assert sum("(IF): read as spidec's IF neuron" in w and "= 1 (dt = 1 step" in w for w in warned) == 5
    assert sum("reset to v_reset" in w for w in warned) == 1
    assert sum("node 'output' (Output): reads the spikes of '12'" in w for w in warned) == 1
    assert len(warned) == 7


@needs_paper
def test_the_paper_csnn_trains_in_sim_on_event_frames(tmp_path):
    """One SPIDE step of the sim program on 32 samples of 8 event frames each (256 frames): the
    program reads time-varying input [B, T, 2, 34, 34] step by step."""
    torch = pytest.importorskip("torch")
    g, _ = read(CSNN)
    frames, y = event_frames(32, 8)
    art = spidec.compile(g, "sim", tmp_path / "sim", T=8, T_back=16)
    net, m = art.load(), art.module()
    before = {k: v.copy() for k, v in net.tensors().items()}
    r = m.train_step(net, {"input": torch.from_numpy(frames)}, torch.from_numpy(y), 0.05, 32)
    assert np.isfinite(float(r["loss"]))
    changed = [k for k, v in net.tensors().items() if not np.array_equal(v, before[k])]
    assert {"s_0.weight", "s_2.weight", "s_5.weight", "s_9.weight", "s_11.weight"} <= set(changed)


@needs_paper
@pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None, reason="needs a C compiler and make")
def test_the_paper_csnn_compiles_to_c_and_trains_an_epoch(tmp_path):
    """The C program feeds a constant input current: the frames' time-averaged event rate. Its
    kernels read one weighted op per synapse, so the pools are folded into the next weight first
    (the same forward map: equal equilibria)."""
    g, _ = read(CSNN)
    c = fold_pools(g)
    frames, y = event_frames(256, 8, seed=1)
    x = frames.mean(1)
    a, b = spidec.reference.equilibrium(g, x[:8]), spidec.reference.equilibrium(c, x[:8])
    for p in a.rates:
        np.testing.assert_allclose(a.rates[p], b.rates[p], atol=1e-9)
    assert max(float(r.mean()) for r in a.rates.values()) > 0  # the input drives the network
    rt = spidec.compile(c, "c", tmp_path / "c", T=8, T_back=16).build()
    before = rt.get_weights()
    hist = rt.train(x, y, epochs=1, batch=32)
    assert len(hist) == 1 and np.isfinite(hist[0]["loss"])
    after = rt.get_weights()
    assert any(not np.array_equal(after[k], before[k]) for k in ("s_0.weight", "s_2.weight", "s_9.weight"))


@needs_paper
@pytest.mark.parametrize("path", BRAILLE, ids=lambda p: p.stem)
def test_the_braille_graphs_read_with_dt_and_compile_to_sim(path, tmp_path):
    g, warned = read(path, dt=1e-4)
    rec = g.synapse("lif1_w_rec")
    assert (rec.src, rec.dst, rec.synapse.delay) == ("lif1_lif", "lif1_lif", 1)
    assert all(e.synapse.delay == 0 for e in g.synapses() if e.name != "lif1_w_rec")
    src = nir.read(str(path))
    lif = src.nodes["lif1.lif"]
    leak = 1 - 1e-4 / float(lif.tau_mem[0])
    assert g.node("lif1_lif").neuron.model == "LIF" and g.node("lif1_lif").neuron.leak == pytest.approx(leak)
    gain = float(lif.w_in[0] * lif.r[0] * 1e-4 / lif.tau_mem[0])  # v_threshold 1, v_reset 0
    np.testing.assert_allclose(g.tensor("fc1.weight"), gain * src.nodes["fc1"].weight, rtol=1e-5)
    assert sum("tau_syn dropped" in w for w in warned) == 2
    assert sum("has no Delay node: its back edge 'lif1.lif' -> 'lif1.lif' through 'lif1.w_rec'" in w
               for w in warned) == 1
    pytest.importorskip("torch")
    art = spidec.compile(g, "sim", tmp_path / "sim", T=16, T_back=16)
    rates = art.rates(np.random.default_rng(0).random((4, 12)).astype(np.float32))
    assert set(rates) == {"lif1_lif", "lif2"} and all(np.all((r >= 0) & (r <= 1 + 1e-6)) for r in rates.values())


@needs_paper
def test_the_cli_reads_nir_files_with_dt(run_cli):
    code, text, _ = run_cli("inspect", str(BRAILLE[0]), "--dt", "1e-4")
    assert code == 0 and "lif1_w_rec: lif1_lif -> lif1_lif delay=1" in text
    code, _, err = run_cli("inspect", str(BRAILLE[0]))
    last = err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("spidec: error: ") and "needs dt" in last and "--dt SECONDS" in last
    code, text, _ = run_cli("reference", str(CSNN), "--batch", "2")
    assert code == 0
    code, _, err = run_cli("inspect", str(Path(__file__).resolve().parents[1] / "examples" / "digits_fb.spir"),
                           "--dt", "1e-4")
    assert code == 1 and "--dt applies to NIR files" in err


# ------------------------------------------------------------------ units: the rate equilibrium

def test_the_equilibrium_equals_a_step_by_step_simulation_of_nir_if_neurons():
    """A digits-sized IF MLP with feedback written with the nir API (Affine -> IF, IF -> Affine -> IF
    back edge, Affine -> Output), with gains other than 1 (r, dt, v_threshold, v_reset): spidec's
    exact equilibrium equals the NIR network's rates, simulated by Euler steps of dv = r dt I with
    reset by subtraction and the back edge reading the previous step, at T = 1000."""
    from spidec.data import digits

    rng = np.random.default_rng(3)
    x = digits().x_test[:64].reshape(64, -1).astype(np.float64)
    n_in, n1, n2, n_out, dt = 64, 32, 16, 10, 1e-3
    w1, b1 = f32(3 * 1.5 * rng.normal(0, 1 / 8, (n1, n_in))), f32(3 * rng.uniform(0, 0.3, n1))
    w2, b2 = f32(1.5 * rng.normal(0, 1 / np.sqrt(n1), (n2, n1))), f32(rng.uniform(0, 0.2, n2))
    wf, bf = f32(3 * 0.3 * rng.normal(0, 1 / 4, (n1, n2))), f32(3 * rng.uniform(-0.1, 0.1, n1))
    wo = f32(rng.normal(0, 0.5, (n_out, n2)))
    h1 = dict(r=np.full(n1, 500.0), v_threshold=np.full(n1, 2.0), v_reset=np.full(n1, 0.5))  # gain 1/3
    h2 = dict(r=np.full(n2, 1000.0), v_threshold=np.full(n2, 1.0), v_reset=np.zeros(n2))  # gain 1
    g = graph({"input": inp(n_in), "fc1": nir.Affine(weight=w1, bias=b1), "h1": nir.IF(**h1),
               "fc2": nir.Affine(weight=w2, bias=b2), "h2": nir.IF(**h2), "fb": nir.Affine(weight=wf, bias=bf),
               "fo": nir.Affine(weight=wo, bias=f32(np.zeros(n_out))), "output": out(n_out)},
              [("input", "fc1"), ("fc1", "h1"), ("h1", "fc2"), ("fc2", "h2"), ("h2", "fb"), ("fb", "h1"),
               ("h2", "fo"), ("fo", "output")])
    sg, warned = read(g, dt=dt)
    assert sg.synapse("fb").synapse.delay == 1 and any("back edge 'h2' -> 'h1' through 'fb'" in w for w in warned)
    eq = spidec.reference.equilibrium(sg, x)

    v1, v2 = np.zeros((64, n1)), np.zeros((64, n2))
    s2, c1, c2, T = np.zeros((64, n2)), np.zeros((64, n1)), np.zeros((64, n2)), 1000
    w1, b1, w2, b2, wf, bf = (a.astype(np.float64) for a in (w1, b1, w2, b2, wf, bf))
    for _ in range(T):
        v1 += h1["r"] * dt * (x @ w1.T + b1 + s2 @ wf.T + bf)
        s1 = (v1 > h1["v_threshold"]).astype(float)
        v1 -= (h1["v_threshold"] - h1["v_reset"]) * s1
        v2 += h2["r"] * dt * (s1 @ w2.T + b2)
        s2 = (v2 > h2["v_threshold"]).astype(float)
        v2 -= (h2["v_threshold"] - h2["v_reset"]) * s2
        c1, c2 = c1 + s1, c2 + s2
    err = np.concatenate([np.abs(c1 / T - eq.rates["h1"]).ravel(), np.abs(c2 / T - eq.rates["h2"]).ravel()])
    inside = np.concatenate([((r > 0) & (r < 1)).ravel() for r in eq.rates.values()])
    assert inside.mean() > 0.3  # a test of the gains, not of saturated or silent neurons
    assert err.mean() < 2e-3 and err.max() < 1e-2, (err.mean(), err.max())  # measured 5e-4, 3.4e-3


def test_lif_and_cubalif_gains_leaks_and_v_leak_bias():
    g, warned = read(mlp(lif_node(5, tau=5e-4, r=5.0, thr=2.0, v_leak=0.4)), dt=1e-4)
    h = g.node("h")
    assert h.neuron.model == "LIF" and h.neuron.leak == pytest.approx(0.8)
    gain = 5.0 * 1e-4 / (5e-4 * 2.0)  # r dt / (tau (v_threshold - v_reset))
    src = affine(5, 4)
    np.testing.assert_allclose(g.tensor("fc.weight"), gain * src.weight, rtol=1e-6)
    np.testing.assert_allclose(h.bias, gain * src.bias + 1e-4 * 0.4 / (5e-4 * 2.0), rtol=1e-6)
    assert any("(LIF): read as spidec's LIF neuron (leak 1 - dt/tau = 0.8)" in w for w in warned)
    cuba = nir.CubaLIF(tau_syn=np.full(5, 2e-4), tau_mem=np.full(5, 1e-3), r=np.full(5, 10.0), v_leak=np.zeros(5),
                       v_threshold=np.ones(5), v_reset=np.zeros(5), w_in=np.full(5, 2.0))
    g, warned = read(mlp(cuba), dt=1e-4)
    np.testing.assert_allclose(g.tensor("fc.weight"), 2.0 * src.weight, rtol=1e-6)  # w_in r dt / tau_mem = 2
    assert g.node("h").neuron.leak == pytest.approx(0.9)
    assert any("tau_syn dropped" in w and "node 'h' (CubaLIF)" in w for w in warned)


def test_exact_nodes_delay_scale_pools_flatten_same_padding_and_nested_graphs():
    rng = np.random.default_rng(0)
    conv = nir.Conv2d(input_shape=(6, 6), weight=f32(rng.normal(0, 0.3, (3, 2, 2, 2))), stride=1, padding="same",
                      dilation=1, groups=1, bias=f32([0.1, 0.2, 0.3]))
    nodes = {"input": inp([2, 6, 6]), "conv": conv, "a": if_node([3, 6, 6], r=1e3),
             "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
             "flat": nir.Flatten(input_type={"input": np.array([3, 3, 3])}, start_dim=0, end_dim=-1),
             "scale": nir.Scale(scale=np.full(27, 0.5)),
             "sub": graph({"input": inp(27), "fc": affine(6, 27, 2), "output": out(6)},
                          [("input", "fc"), ("fc", "output")]),
             "b": if_node(6, r=1e3), "rec": nir.Linear(weight=f32(rng.normal(0, 0.2, (6, 6)))),
             "delay": nir.Delay(delay=np.full(6, 1e-3)), "fo": affine(4, 6, 3), "output": out(4)}
    edges = [("input", "conv"), ("conv", "a"), ("a", "pool"), ("pool", "flat"), ("flat", "scale"), ("scale", "sub"),
             ("sub", "b"), ("b", "rec"), ("rec", "delay"), ("delay", "b"), ("b", "fo"), ("fo", "output")]
    g, warned = read(graph(nodes, edges), dt=1e-3)
    assert not any("Delay node" in w for w in warned)  # the explicit Delay closes the loop
    assert g.synapse("rec").synapse.delay == 1
    assert [op.kind for op in g.synapse("conv").synapse.ops] == ["pad", "conv2d"]  # 'same' with an even kernel
    assert [op.kind for op in g.synapse("sub_fc").synapse.ops] == ["avgpool2d", "flatten", "dense"]
    np.testing.assert_allclose(g.tensor("sub_fc.weight"), 4 * 0.5 * nodes["sub"].nodes["fc"].weight, rtol=1e-6)
    # r dt = 1: gain 1, the conv's bias one value per channel
    np.testing.assert_allclose(g.node("a").bias, [0.1, 0.2, 0.3], rtol=1e-6)
    np.testing.assert_allclose(g.tensor("conv.weight"), conv.weight, rtol=1e-6)
    x = rng.random((3, 2, 6, 6))
    rates = spidec.reference.equilibrium(g, x).rates
    assert set(rates) == {"a", "b"}


def test_a_cycle_without_delay_breaks_at_the_back_edge_of_a_depth_first_search():
    """a -> b -> c -> a: the search from the input visits a, b, c; c -> a closes the cycle."""
    nodes = {"input": inp(3), "fi": affine(4, 3), "a": if_node(4), "ab": affine(4, 4, 1), "b": if_node(4),
             "bc": affine(4, 4, 2), "c": if_node(4), "ca": affine(4, 4, 3, scale=0.2), "fo": affine(2, 4, 4),
             "output": out(2)}
    edges = [("input", "fi"), ("fi", "a"), ("a", "ab"), ("ab", "b"), ("b", "bc"), ("bc", "c"), ("c", "ca"),
             ("ca", "a"), ("c", "fo"), ("fo", "output")]
    g, warned = read(graph(nodes, edges))
    assert {e.name: e.synapse.delay for e in g.synapses()} == {"fi": 0, "ca": 1, "ab": 0, "bc": 0, "fo": 0}
    assert [w for w in warned if "Delay" in w] == [
        "node 'a' (IF): the cycle through 'c' -> 'a' has no Delay node: its back edge 'c' -> 'a' through 'ca' (the "
        "edge that closes the cycle in a depth-first search from the inputs, in the graph's node order) reads the "
        "previous step's spikes (a delay=1 synapse, as NIRTorch reads it)"]
    # the same graph read twice, and with its edges in another order: the same choice
    g2, _ = read(graph(nodes, edges[::-1]))
    assert {e.name: e.synapse.delay for e in g2.synapses()} == {e.name: e.synapse.delay for e in g.synapses()}


def test_leaky_integrators_before_an_output_are_read_at_their_steady_state():
    li = nir.LI(tau=np.full(3, 1e-3), r=np.full(3, 2.0), v_leak=np.full(3, 0.5))
    nodes = {"input": inp(4), "fc": affine(5, 4), "h": if_node(5), "fo": affine(3, 5, 1), "li": li, "output": out(3)}
    g, warned = read(graph(nodes, [("input", "fc"), ("fc", "h"), ("h", "fo"), ("fo", "li"), ("li", "output")]))
    np.testing.assert_allclose(g.tensor("fo.weight"), 2.0 * nodes["fo"].weight, rtol=1e-6)
    np.testing.assert_allclose(g.node("output").bias, 2.0 * nodes["fo"].bias + 0.5, rtol=1e-6)
    assert any("node 'li' (LI): a leaky integrator before an Output is read at its steady state v_leak + r I" in w
               for w in warned)
    cuba = nir.CubaLI(tau_syn=np.full(3, 1e-3), tau_mem=np.full(3, 1e-3), r=np.full(3, 2.0), v_leak=np.zeros(3),
                      w_in=np.full(3, 1.5))
    nodes["li"] = cuba
    g, warned = read(graph(nodes, [("input", "fc"), ("fc", "h"), ("h", "fo"), ("fo", "li"), ("li", "output")]))
    np.testing.assert_allclose(g.tensor("fo.weight"), 3.0 * nodes["fo"].weight, rtol=1e-6)
    assert any("(CubaLI)" in w and "v_leak + r w_in I" in w for w in warned)


# ------------------------------------------------------------------ exporters

def test_snntorch_rleaky_recurrent_mlp_imports():
    torch = pytest.importorskip("torch")
    snn = pytest.importorskip("snntorch")
    from snntorch.export_nir import export_to_nir

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(12, 20)
            self.lif1 = snn.RLeaky(beta=torch.full((20,), 0.9), linear_features=20, threshold=torch.ones(20),
                                   reset_mechanism="subtract")
            self.fc2 = torch.nn.Linear(20, 5)
            self.lif2 = snn.Leaky(beta=torch.full((5,), 0.8), threshold=torch.ones(5), reset_mechanism="subtract")

        def forward(self, x):
            spk1, mem1 = self.lif1.init_rleaky()
            spk1, mem1 = self.lif1(self.fc1(x), spk1, mem1)
            return self.lif2(self.fc2(spk1), self.lif2.init_leaky())

    torch.manual_seed(0)
    net = Net()
    g, warned = read(export_to_nir(net, torch.zeros(1, 12), ignore_dims=[0]), dt=1e-4)
    rec = g.synapse("lif1_w_rec")
    assert (rec.src, rec.dst, rec.synapse.delay) == ("lif1_lif", "lif1_lif", 1)
    # snnTorch: r = tau/dt, so the gain r dt / tau is 1 and the weights are the module's; leak = beta
    np.testing.assert_allclose(g.tensor("fc1.weight"), net.fc1.weight.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(g.tensor("lif1_w_rec.weight"), net.lif1.recurrent.weight.detach().numpy(), rtol=1e-6)
    assert g.node("lif1_lif").neuron.leak == pytest.approx(0.9, rel=1e-6)
    np.testing.assert_allclose(g.node("lif1_lif").bias, (net.fc1.bias + net.lif1.recurrent.bias).detach().numpy(),
                               rtol=1e-5)
    assert any("back edge 'lif1.lif' -> 'lif1.lif'" in w for w in warned)


def test_snntorch_conv_net_imports():
    torch = pytest.importorskip("torch")
    snn = pytest.importorskip("snntorch")
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        snn.Leaky(beta=torch.full((4, 8, 8), 0.9), threshold=torch.ones(4, 8, 8), init_hidden=True,
                  reset_mechanism="subtract"),
        torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(64, 10),
        snn.Leaky(beta=torch.full((10,), 0.9), threshold=torch.ones(10), init_hidden=True, output=True,
                  reset_mechanism="subtract"))
    g, _ = read(export_to_nir(net, torch.zeros(1, 1, 8, 8), ignore_dims=[0]), dt=1e-4)
    assert [p.shape for p in g.populations] == [(4, 8, 8), (10,)]
    kinds = {e.dst: [op.kind for op in e.synapse.ops] for e in g.synapses()}
    assert kinds[g.populations[1].name] == ["avgpool2d", "flatten", "dense"]
    # snnTorch: r = tau/dt, so the gain r dt / tau is 1 and the weights are the module's
    np.testing.assert_allclose(g.tensor("s_0.weight"), net[0].weight.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(g.node("p_1").bias, net[0].bias.detach().numpy(), rtol=1e-6)


def test_sinabs_export_imports_without_dt():
    torch = pytest.importorskip("torch")
    sinabs = pytest.importorskip("sinabs")
    import sinabs.layers as sl

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), sl.IAFSqueeze(batch_size=1), sl.SumPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(64, 10), sl.IAFSqueeze(batch_size=1))
    g, warned = read(sinabs.to_nir(net, torch.zeros(1, 2, 8, 8)))
    assert [p.shape for p in g.populations] == [(4, 8, 8), (10,)]
    np.testing.assert_allclose(g.tensor("s_0.weight"), net[0].weight.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(g.tensor("s_4.weight"), 4 * net[4].weight.detach().numpy(), rtol=1e-6)  # SumPool
    assert sum("rate gain r dt / (v_threshold - v_reset) = 1" in w for w in warned) == 2


def test_spikingjelly_export_imports_with_its_dt():
    torch = pytest.importorskip("torch")
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import layer, neuron
    from spikingjelly.activation_based.nir_exchange.to_nir import export_to_nir

    torch.manual_seed(0)
    net = torch.nn.Sequential(layer.Linear(12, 16), neuron.IFNode(v_reset=0.0), layer.Linear(16, 5),
                              neuron.LIFNode(tau=2.0, v_reset=0.0))
    exported = export_to_nir(net, torch.zeros(1, 12), dt=1e-4)
    g, _ = read(exported, dt=1e-4)
    # SpikingJelly: IF r = 1/dt (gain 1); LIF tau = 2 dt, r = 1 (decay_input): gain 1/2, leak 1/2
    np.testing.assert_allclose(g.tensor("s_0.weight"), net[0].weight.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(g.tensor("s_2.weight"), 0.5 * net[2].weight.detach().numpy(), rtol=1e-6)
    assert g.node("p_3").neuron.leak == pytest.approx(0.5)
    with pytest.raises(SpidecError, match=r"node '_1' \(IF\): its r = 10000 is per second .*SpikingJelly writes "
                       r"IF r = 1/dt.*--dt SECONDS"):
        spidec.from_nir(exported)


# ------------------------------------------------------------------ refusals

def refused(source, pattern, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SpidecError, match=pattern) as info:
            spidec.from_nir(source, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_without_the_nir_package_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "nir", None)
    refused("model.nir", re.escape("reading NIR graphs needs the nir package: pip install 'spidec[nir]'"))


def test_refusal_parameters_that_need_dt():
    refused(mlp(lif_node(5)), r"node 'h' \(LIF\): its tau is in seconds, and NIR stores no time step: spidec "
            r"needs dt .*snnTorch exports assume dt = 1e-4.*SpikingJelly writes IF r = 1/dt; Sinabs and Norse write "
            r"IF r = 1.*\(hint: pass the exporter's time step: --dt SECONDS")
    refused(mlp(if_node(5, r=1e4)), r"node 'h' \(IF\): its r = 10000 is per second \(the per-step gain is r dt\)")


def test_refusal_delay_other_than_one_step():
    def delayed(d):
        return graph({"input": inp(3), "fi": affine(4, 3), "a": if_node(4), "rec": affine(4, 4, 1),
                      "delay": nir.Delay(delay=np.full(4, d)), "fo": affine(2, 4), "output": out(2)},
                     [("input", "fi"), ("fi", "a"), ("a", "rec"), ("rec", "delay"), ("delay", "a"), ("a", "fo"),
                      ("fo", "output")])

    refused(delayed(2e-3), r"node 'delay' \(Delay\) delays by 0.002, not one time step \(dt = 0.001\)", dt=1e-3)
    refused(delayed(2.0), r"delays by 2, not one time step \(1 without dt\).*hint: pass the dt")
    assert read(delayed(1e-3), dt=1e-3)[0].synapse("rec").synapse.delay == 1
    two = graph({"input": inp(3), "fi": affine(4, 3), "a": if_node(4), "d1": nir.Delay(delay=np.ones(4)),
                 "d2": nir.Delay(delay=np.ones(4)), "fo": affine(2, 4), "output": out(2)},
                [("input", "fi"), ("fi", "a"), ("a", "d1"), ("d1", "d2"), ("d2", "a"), ("a", "fo"), ("fo", "output")])
    refused(two, r"node 'd2' \(Delay\) delays a signal that is already delayed")


def test_refusal_a_loop_of_linear_nodes_only():
    g = graph({"input": inp(3), "fi": affine(3, 3), "loop": affine(3, 3, 1), "h": if_node(3), "fo": affine(2, 3),
               "output": out(2)},
              [("input", "fi"), ("fi", "loop"), ("loop", "fi"), ("fi", "h"), ("h", "fo"), ("fo", "output")])
    refused(g, r"lies on a loop of linear nodes only \((fi -> loop -> fi|loop -> fi -> loop)\).*hint: put a spiking "
            r"neuron")


@pytest.mark.parametrize("node,pattern", [
    (nir.I(r=np.ones(5)), r"node 'h': is a NIR I: an integrator without a threshold"),
    (nir.Threshold(threshold=np.ones(5)), r"node 'h': is a NIR Threshold"),
])
def test_refusal_i_and_threshold(node, pattern):
    refused(mlp(node), pattern)


def test_refusal_conv1d_grouped_and_dilated_convolutions():
    c1 = nir.Conv1d(input_shape=8, weight=f32(np.ones((2, 1, 3))), stride=1, padding=1, dilation=1, groups=1,
                    bias=f32(np.zeros(2)))
    g = graph({"input": inp([1, 8]), "c": c1, "h": if_node([2, 8]), "f": nir.Flatten(
        input_type={"input": np.array([2, 8])}, start_dim=0, end_dim=-1), "fo": affine(2, 16), "output": out(2)},
        [("input", "c"), ("c", "h"), ("h", "f"), ("f", "fo"), ("fo", "output")])
    refused(g, r"node 'c': is a NIR Conv1d: spidec convolves in 2-D only \(hint: export the layer as a Conv2d")

    def conv(groups, dilation):
        c = nir.Conv2d(input_shape=(6, 6), weight=f32(np.ones((2, 2 // groups, 3, 3))), stride=1, padding=0,
                       dilation=dilation, groups=groups, bias=f32(np.zeros(2)))
        return graph({"input": inp([2, 6, 6]), "c": c, "h": if_node([2, 6 - 2 * dilation, 6 - 2 * dilation]),
                      "f": nir.Flatten(input_type={"input": np.array([2, 6 - 2 * dilation, 6 - 2 * dilation])},
                                       start_dim=0, end_dim=-1),
                      "fo": affine(2, 2 * (6 - 2 * dilation) ** 2), "output": out(2)},
                     [("input", "c"), ("c", "h"), ("h", "f"), ("f", "fo"), ("fo", "output")])

    refused(conv(2, 1), r"node 'c' \(Conv2d\) is a grouped convolution \(groups=2, dilation=\[1, 1\]\).*hint: "
            r"export the layer as a dense convolution")
    refused(conv(1, 2), r"node 'c' \(Conv2d\) is a dilated convolution \(groups=1, dilation=\[2, 2\]\)")


def test_refusal_li_feeding_other_nodes():
    li = nir.LI(tau=np.full(5, 1e-3), r=np.ones(5), v_leak=np.zeros(5))
    refused(mlp(li), r"node 'h': is a NIR LI \(a leaky integrator without spikes\) feeding 'fo'; spidec reads it "
            r"only as a readout before an Output")


def test_refusal_non_uniform_time_constants_and_leaks_outside_0_1():
    refused(mlp(lif_node(5, tau=np.linspace(1e-3, 2e-3, 5))), r"node 'h' \(LIF\) has non-uniform time constants "
            r"\(tau 0.001..0.002\); a spidec population has one leak", dt=1e-4)
    refused(mlp(lif_node(5, tau=5e-5)), r"tau = 5e-05 with dt = 0.0001 gives the leak 1 - dt/tau = -1, outside "
            r"\(0, 1\]", dt=1e-4)


def test_refusal_v_threshold_not_above_v_reset():
    refused(mlp(if_node(5, thr=0.5, reset=0.5)), r"node 'h' \(IF\) has v_threshold <= v_reset.*hint: v_threshold "
            r"must exceed v_reset")


def test_refusal_unreadable_files(tmp_path):
    bad = tmp_path / "bad.nir"
    bad.write_bytes(b"not an HDF5 file")
    msg = refused(bad, r"bad.nir: cannot read the NIR file \(\w+Error: .*\) \(hint: a .nir file is the HDF5 file")
    assert msg.count("\n") == 0
    refused(tmp_path / "missing.nir", r"missing.nir: NIR file not found")
    refused(42, r"from_nir reads a .nir file or a nir.NIRGraph, got int")
    refused(mlp(if_node(5)), r"dt must be a positive time step in seconds, got -1", dt=-1)


# byte edits of _valid_file_bytes() (found by the fuzz test) on which HDF5 loops forever reading the edges
HDF5_LOOP = [(149, 130), (203, 255), (243, 199), (419, 129), (1752, 127), (4004, 237), (4502, 255), (26560, 57),
             (33467, 27), (37493, 33)]


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="the reader isolates nir.read by fork")
def test_a_file_that_hangs_or_crashes_the_hdf5_reader_is_refused(tmp_path, monkeypatch):
    import os
    import signal
    import time

    from spidec.frontends import nir as reader

    monkeypatch.setattr(reader, "READ_TIMEOUT", 2.0)
    raw = bytearray(_valid_file_bytes())
    for at, value in HDF5_LOOP:
        raw[at] = value
    path = tmp_path / "loop.nir"
    path.write_bytes(bytes(raw))
    only_spidec_errors(path)  # (HDF5 1.14 loops on it: the child is stopped after READ_TIMEOUT)
    good = tmp_path / "good.nir"
    good.write_bytes(_valid_file_bytes())
    monkeypatch.setattr(nir, "read", lambda *a, **k: time.sleep(30))
    refused(good, r"good.nir: reading the NIR file did not finish within 2 s")
    monkeypatch.setattr(nir, "read", lambda *a, **k: os.kill(os.getpid(), signal.SIGSEGV))
    refused(good, r"good.nir: cannot read the NIR file \(the HDF5 reader crashed: signal 11\)")


def test_refusal_graphs_without_inputs_or_outputs_and_bad_edges():
    refused(graph({"input": inp(4), "fc": affine(5, 4), "h": if_node(5)}, [("input", "fc"), ("fc", "h")]),
            r"the NIR graph has no Output node; spidec trains a readout")
    refused(graph({"input": inp(4), "fc": affine(5, 4), "h": if_node(5), "output": out(5)},
                  [("input", "fc"), ("fc", "h"), ("h", "nowhere"), ("h", "output")]),
            r"the NIR graph has an edge to 'nowhere', which is no node of the graph")
    refused(graph({"input": inp(4), "fc": affine(3, 4), "output": out(3)}, [("input", "fc"), ("fc", "output")]),
            r"Output 'output' reads no spiking neuron")
    refused(graph({"input": inp(4), "fc": affine(5, 3), "h": if_node(5), "output": out(5)},
                  [("input", "fc"), ("fc", "h"), ("h", "output")]),
            r"node 'fc' \(Affine\): dense with weight \[5, 3\] expects input shape \[3\], got \[4\]")


# ------------------------------------------------------------------ fuzzing: only SpidecErrors

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def only_spidec_errors(source, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            g = spidec.from_nir(source, **kwargs)
        except SpidecError as e:
            assert str(e) and "\n" not in str(e)
        else:
            assert isinstance(g, spidec.Graph)


def _valid_file_bytes() -> bytes:
    buf = io.BytesIO()
    nir.write(buf, mlp(if_node(5)))
    return buf.getvalue()


@FUZZ
@given(st.data())
def test_fuzz_corrupted_hdf5_files(tmp_path_factory, data):
    import h5py

    raw = bytearray(_valid_file_bytes())
    path = tmp_path_factory.mktemp("fuzz") / "f.nir"
    how = data.draw(st.sampled_from(["flip", "truncate", "edit"]))
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 16))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        path.write_bytes(bytes(raw))
    elif how == "truncate":
        path.write_bytes(bytes(raw[: data.draw(st.integers(0, len(raw) - 1))]))
    else:  # a well-formed HDF5 file with one dataset deleted or replaced
        path.write_bytes(bytes(raw))
        with h5py.File(path, "r+") as f:
            names = []
            f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            name = data.draw(st.sampled_from(sorted(names)))
            del f[name]
            value = data.draw(st.sampled_from([None, "text", "shape", "nan", "big"]))
            if value == "text":
                f[name] = b"Conv1d"
            elif value == "shape":
                f[name] = np.ones(data.draw(st.lists(st.integers(0, 3), max_size=3)))
            elif value == "nan":
                f[name] = np.full(5, np.nan)
            elif value == "big":
                f[name] = np.array([10**9, 10**9])
    only_spidec_errors(path, dt=data.draw(st.sampled_from([None, 1e-4])))


def _random_node(rng, kind, n, tame=False):
    """A node of ``kind`` with random parameters; ``tame``: of shape [n] with plausible values."""
    shape = (n,) if tame or rng.random() < 0.8 else (int(rng.integers(1, 4)), n, n)

    def arr(lo=-1.0, hi=2.0):
        if tame:
            return rng.uniform(max(lo, 0.0), hi, shape)
        a = rng.uniform(lo, hi, shape if rng.random() < 0.9 else (int(rng.integers(1, 5)),))
        if rng.random() < 0.05:
            a.flat[0] = np.nan
        return a

    m = n if tame else int(rng.integers(1, 6))
    if kind == "Affine":
        return nir.Affine(weight=f32(rng.normal(size=(m, n))), bias=f32(rng.normal(size=m)))
    if kind == "Linear":
        return nir.Linear(weight=f32(rng.normal(size=(m, n))))
    if kind == "IF":
        return nir.IF(r=arr(0, 2), v_threshold=arr(1, 2) if tame else arr(), v_reset=arr(-1, 1) * (not tame))
    if kind == "LIF":
        return nir.LIF(tau=np.full(shape, 2e-3) if tame else arr(0, 1e-3), r=arr(), v_leak=arr(),
                       v_threshold=arr(1, 2) if tame else arr(), v_reset=arr(-1, 0) * (not tame))
    if kind == "CubaLIF":
        return nir.CubaLIF(tau_syn=arr(0, 1e-3), tau_mem=arr(0, 1e-3), r=arr(), v_leak=arr(), v_threshold=arr(),
                           v_reset=arr(-1, 0), w_in=arr())
    if kind == "LI":
        return nir.LI(tau=arr(0, 1e-3), r=arr(), v_leak=arr())
    if kind == "Scale":
        return nir.Scale(scale=arr())
    if kind == "Delay":
        return nir.Delay(delay=np.full(shape, 1e-3 if tame else [1e-4, 1.0, 2.0][int(rng.integers(3))]))
    if kind == "Flatten":
        return nir.Flatten(input_type={"input": np.array(shape)}, start_dim=int(rng.integers(-2, 3)),
                           end_dim=int(rng.integers(-2, 3)))
    if kind == "Conv2d":
        k = int(rng.integers(1, 4))
        return nir.Conv2d(input_shape=None, weight=f32(rng.normal(size=(m, int(rng.integers(1, 4)), k, k))),
                          stride=int(rng.integers(1, 3)), padding=["same", "valid", 0, 1][int(rng.integers(4))],
                          dilation=int(rng.integers(1, 3)), groups=1, bias=f32(rng.normal(size=m)))
    if kind in ("SumPool2d", "AvgPool2d"):
        k = int(rng.integers(1, 4))
        return getattr(nir, kind)(kernel_size=np.array([k, k]), stride=np.array([k, k]),
                                  padding=np.array([int(rng.integers(0, 2))] * 2))
    if kind == "Threshold":
        return nir.Threshold(threshold=arr())
    if kind == "Input":
        return nir.Input(input_type={"input": np.array(shape)})
    if kind == "Output":
        return nir.Output(output_type={"output": np.array(shape)})
    if kind == "Graph":
        return graph({"input": inp(n), "fc": affine(n, n, int(rng.integers(100))), "output": out(n)},
                     [("input", "fc"), ("fc", "output")])
    raise AssertionError(kind)


KINDS = ["Affine", "Linear", "IF", "LIF", "CubaLIF", "LI", "Scale", "Delay", "Flatten", "Conv2d", "SumPool2d",
         "AvgPool2d", "Threshold", "Input", "Output", "Graph"]
TAME = ["Affine", "Linear", "IF", "LIF", "Scale", "Delay", "Graph"]


def random_graph(seed):
    """A chain input -> middle nodes -> output with extra edges among the middle nodes (cycles); every
    other seed ``tame`` (plausible parameters of one shape), the others wild (NaN, odd shapes, nodes
    spidec refuses, now and then an edge into an Input or out of an Output)."""
    rng = np.random.default_rng(seed)
    n, tame = int(rng.integers(1, 5)), seed % 2 == 0
    kinds = TAME if tame else KINDS
    middle = {}
    for i in range(int(rng.integers(1, 7))):
        kind = kinds[int(rng.integers(len(kinds)))] if rng.random() < 0.6 else ["Affine", "IF"][i % 2]
        try:
            middle[f"n{i}"] = _random_node(rng, kind, n, tame)
        except Exception:  # the nir API refused the parameters itself: not this test's subject
            continue
    nodes = {"input": nir.Input(input_type={"input": np.array([n])}), **middle,
             "output": nir.Output(output_type={"output": np.array([n])})}
    names, ends = list(nodes), [*middle, "output"]
    edges = [(names[i], names[i + 1]) for i in range(len(names) - 1) if tame or rng.random() < 0.9]
    for _ in range(int(rng.integers(0, 4)) if middle else 0):
        edges.append((list(middle)[int(rng.integers(len(middle)))], ends[int(rng.integers(len(ends)))]))
    if not tame and rng.random() < 0.1:
        edges.append((names[int(rng.integers(len(names)))], names[int(rng.integers(len(names)))]))
    return nir.NIRGraph(nodes=nodes, edges=list(dict.fromkeys(edges)), type_check=False)


@FUZZ
@given(st.integers(0, 2**32 - 1))
def test_fuzz_random_small_graphs_built_with_the_nir_api(seed):
    only_spidec_errors(random_graph(seed), dt=1e-3 if seed % 4 == 0 else [None, 1e-4][seed % 4 // 2])
