"""Export: a (trained) model out to NIR (``spidec.to_nir``), ONNX and a torch state_dict, and
``spidec export BUILD_OR_MODEL``. Every NIR file is read back by ``nir.read`` (type checks on), by
spidec's NIR reader (same canonical IR, same equilibrium) and, where nirtorch is installed, run
step by step by NIRTorch's interpreter against spidec's exact equilibrium."""

from __future__ import annotations

import json
import shutil
import sys
import warnings

import numpy as np
import pytest
from conftest import EXAMPLES

import spidec
from spidec import AvgPool2d, Conv2d, ConvTranspose2d, Dense, Flatten, Graph, Neuron, Pad, Reshape, Scale, SpidecError
from spidec.cli import main
from spidec.export import forward_graph, load_build, nir_graph, state_dict, to_onnx, to_torch

nir = pytest.importorskip("nir", reason="NIR export needs the nir package (pip install 'spidec[nir]')")
torch = pytest.importorskip("torch", reason="the example modules, ONNX and torch exports need PyTorch")
sys.path.insert(0, str(EXAMPLES))
from models import DigitsFB, LeNetF, MnistMlpFB  # noqa: E402

HAS_READER = hasattr(spidec, "from_nir")
needs_reader = pytest.mark.skipif(not HAS_READER, reason="spidec.from_nir (the NIR reader) does not exist yet")
F32 = np.float32


def _digits() -> Graph:
    return spidec.load(EXAMPLES / "digits_fb.spir")


def _mnist_mlp() -> Graph:
    torch.manual_seed(0)
    return spidec.from_torch(MnistMlpFB().eval())


def _conv() -> Graph:
    """Every op NIR can hold: conv2d (per-channel bias), avgpool2d, scale, flatten, dense, LIF and IF
    neurons with other thresholds, a delayed feedback and a readout."""
    rng = np.random.default_rng(0)

    def u(*shape: int, s: float = 0.5) -> np.ndarray:
        return rng.uniform(-s, s, size=shape).astype(F32)

    g = Graph("conv_nir")
    g.add_input("img", [1, 8, 8])
    g.add_population("c", [4, 8, 8], Neuron("LIF", vth=0.5, leak=0.75), bias=u(4, s=0.2))
    g.add_population("h", [16], Neuron("IF", vth=2.0), bias=u(16, s=0.2))
    g.add_readout("y", [5], bias=u(5))
    g.add_synapse("img", "c", Conv2d(u(4, 1, 3, 3, s=0.9), padding=(1, 1)), name="conv")
    g.add_synapse("c", "h", [AvgPool2d(2), Scale(0.5), Flatten(), Dense(u(16, 64, s=0.3))], name="down")
    w = rng.standard_normal((16, 16)).astype(F32)
    g.add_synapse("h", "h", Dense(w * F32(0.8 / np.linalg.norm(w))), delay=1, name="fb")
    g.add_synapse("h", "y", Dense(u(5, 16)), name="cls")
    return g.validate()


MODELS = {"digits": _digits, "mnist_mlp": _mnist_mlp, "conv": _conv}


def _read(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reader's SpidecWarnings (IF read as spidec's neuron, ...)
        return spidec.from_nir(path, **kw)


def _x(g: Graph, batch: int = 6, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n.name: rng.uniform(0, 1, (batch, *n.shape)) for n in g.inputs}


# ====================================================================== the NIR file

@pytest.mark.parametrize("delays", ["explicit", "implicit"])
@pytest.mark.parametrize("model", list(MODELS))
def test_every_file_is_read_by_nir_read_with_type_checks(model, delays, tmp_path):
    g = MODELS[model]()
    path = spidec.to_nir(g, tmp_path / "m.nir", delays=delays)
    read = nir.read(path, type_check=True)
    kinds = {name: type(n).__name__ for name, n in read.nodes.items()}
    for p in g.populations:
        assert kinds[p.name] == p.neuron.model
    assert [k for k in kinds.values() if k == "Delay"] == (["Delay"] if delays == "explicit" else [])
    assert read.metadata["spidec.dt"] == 1e-4 and read.metadata["spidec.reset"] == "subtract"
    assert [p.name for p in tmp_path.iterdir()] == ["m.nir"]  # no temporary file left behind


def test_explicit_delays_write_a_delay_node_implicit_ones_the_plain_cycle(tmp_path):
    g = _digits()
    exp = nir.read(spidec.to_nir(g, tmp_path / "e.nir", dt=1e-3, delays="explicit"))
    imp = nir.read(spidec.to_nir(g, tmp_path / "i.nir", dt=1e-3, delays="implicit"))
    assert {("z", "fb.delay"), ("fb.delay", "fb"), ("fb", "z")} <= set(exp.edges)
    assert isinstance(exp.nodes["fb.delay"], nir.Delay)
    np.testing.assert_array_equal(exp.nodes["fb.delay"].delay, np.full((128,), 1e-3))  # one step of dt
    assert {("z", "fb"), ("fb", "z")} <= set(imp.edges) and "fb.delay" not in imp.nodes
    assert sorted(set(exp.nodes) - {"fb.delay"}) == sorted(imp.nodes)


def test_units_give_rate_gain_one_and_the_biases_ride_on_affine_and_conv(tmp_path):
    g = _conv()
    dt = 2e-4
    read = nir.read(spidec.to_nir(g, tmp_path / "c.nir", dt=dt))
    h, c = read.nodes["h"], read.nodes["c"]
    assert isinstance(h, nir.IF) and isinstance(c, nir.LIF)
    np.testing.assert_allclose(h.r * dt / (h.v_threshold - h.v_reset), 1.0, rtol=1e-12)  # IF gain
    np.testing.assert_array_equal(h.v_threshold, 2.0)
    np.testing.assert_array_equal(h.v_reset, 0.0)
    np.testing.assert_allclose(1 - dt / c.tau, 0.75, rtol=1e-12)  # leak = 1 - dt/tau
    np.testing.assert_allclose(c.r * dt / (c.tau * (c.v_threshold - c.v_reset)), 1.0, rtol=1e-12)  # LIF gain
    assert c.metadata["spidec.reset"] == "subtract" and c.metadata["spidec.u_rest"] == -0.5
    np.testing.assert_array_equal(read.nodes["conv"].bias, g.node("c").bias)  # per-channel bias on the Conv2d
    np.testing.assert_array_equal(read.nodes["down.3"].bias, g.node("h").bias)  # the Affine carries h.bias
    assert isinstance(read.nodes["fb"], nir.Linear)  # the feedback carries no bias (the undelayed synapse does)
    assert isinstance(read.nodes["down.0"], nir.AvgPool2d) and isinstance(read.nodes["down.2"], nir.Flatten)
    np.testing.assert_array_equal(read.nodes["down.1"].scale, np.full((4, 4, 4), 0.5))
    np.testing.assert_array_equal(read.nodes["cls"].weight, g.synapse("cls").synapse.ops[0].weight)


def _refusals() -> list[tuple[str, Graph, str]]:
    rng = np.random.default_rng(0)
    cases = []

    def base(name: str) -> Graph:
        g = Graph(name)
        g.add_input("x", [2, 4, 4])
        return g

    g = base("convt")
    g.add_population("p", [2, 8, 8])
    g.add_synapse("x", "p", ConvTranspose2d(rng.normal(size=(2, 2, 2, 2)), stride=2), name="up")
    cases.append(("conv_transpose2d", g, "synapse 'up': conv_transpose2d has no NIR node"))
    g = base("pad")
    g.add_population("p", [2, 6, 6])
    g.add_synapse("x", "p", Pad(((0, 0), (1, 1), (1, 1))), name="padded")
    cases.append(("pad", g, "synapse 'padded': pad has no NIR node"))
    g = base("reshape")
    g.add_population("p", [4, 2, 4])
    g.add_synapse("x", "p", Reshape((4, 2, 4)), name="r")
    cases.append(("reshape", g, "synapse 'r': reshape [2, 4, 4] -> [4, 2, 4] is no flatten: NIR has Flatten only"))
    g = base("bias")
    g.add_population("p", [2, 2, 2], bias=np.ones(2))
    g.add_synapse("x", "p", AvgPool2d(2), name="pool")
    cases.append(("bias without carrier", g, "population 'p' has a bias but no synapse into it ends in a dense or "
                  "conv2d op to carry it: NIR has no bias node"))
    g = base("bias_full")
    g.add_population("p", [3, 4, 4], bias=np.ones((3, 4, 4)))
    g.add_synapse("x", "p", Conv2d(rng.normal(size=(3, 2, 3, 3)), padding=1), name="conv")
    cases.append(("conv bias per position", g, "population 'p' has a bias but no synapse into it ends in a dense or "
                  "conv2d op to carry it (its bias [3, 4, 4] is not one per channel as NIR's Conv2d bias (from "
                  "'conv')): NIR has no bias node"))
    g = base("readout_bias")
    g.add_readout("y", [32], bias=np.ones(32))
    g.add_synapse("x", "y", Flatten(), name="flat")
    cases.append(("readout bias", g, "readout 'y' has a bias but no synapse into it ends in a dense or conv2d op "
                  "to carry it: NIR has no bias node"))
    g = base("avgpool_pad")
    g.add_population("p", [2, 3, 3])
    g.add_synapse("x", "p", AvgPool2d(2, 2, padding=1, count_include_pad=False), name="pool")
    cases.append(("avgpool excluding pads", g, "synapse 'pool': avgpool2d with padding and count_include_pad=false "
                  "has no NIR node"))
    return cases


@pytest.mark.parametrize("case", _refusals(), ids=lambda c: c[0])
def test_what_nir_cannot_hold_is_refused_in_one_line_and_nothing_is_written(case, tmp_path):
    _, g, message = case
    path = tmp_path / "m.nir"
    path.write_bytes(b"the previous file")
    with pytest.raises(SpidecError) as err:
        spidec.to_nir(g, path)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert path.read_bytes() == b"the previous file" and len(list(tmp_path.iterdir())) == 1


def test_bad_arguments_are_refused(tmp_path):
    g = _digits()
    with pytest.raises(SpidecError, match="delays must be one of explicit, implicit"):
        spidec.to_nir(g, tmp_path / "m.nir", delays="sometimes")
    with pytest.raises(SpidecError, match="dt must be a positive number"):
        spidec.to_nir(g, tmp_path / "m.nir", dt=0.0)


# ====================================================================== round trips through spidec's reader

@needs_reader
@pytest.mark.parametrize("delays", ["explicit", "implicit"])
@pytest.mark.parametrize("model", ["digits", "mnist_mlp", "conv"])
def test_round_trip_gives_the_same_canonical_ir_and_equilibrium(model, delays, tmp_path):
    g = MODELS[model]()
    back = _read(spidec.to_nir(g, tmp_path / "m.nir", dt=1e-4, delays=delays), dt=1e-4)
    gc, bc = forward_graph(g).canonical(), back.canonical()  # (names by structure: p0, p1, r0 ...)
    if model == "conv":
        # what spidec's reader makes of the file is its own business beyond the rates: it reads every
        # threshold as vth = 1 (rates do not depend on it; the file keeps vth in v_threshold and in
        # the metadata spidec.vth) and may fold a Scale into the dense after it
        for p, q in zip(gc.populations, bc.populations):
            assert (p.name, p.shape, p.neuron.model, p.neuron.leak) == (q.name, q.shape, q.neuron.model, q.neuron.leak)
            np.testing.assert_array_equal(p.bias, q.bias)
        assert [(e.name, e.src, e.dst, e.synapse.delay) for e in gc.synapses()] == \
            [(e.name, e.src, e.dst, e.synapse.delay) for e in bc.synapses()]
    else:
        assert bc == gc
    x = _x(gc)
    a, b = spidec.reference.equilibrium(gc, x), spidec.reference.equilibrium(bc, x)
    assert a.rates.keys() == b.rates.keys() and a.outputs.keys() == b.outputs.keys()
    for k in a.rates:
        np.testing.assert_allclose(a.rates[k], b.rates[k], rtol=0, atol=0 if model != "conv" else 1e-9)
    for k in a.outputs:
        np.testing.assert_allclose(a.outputs[k], b.outputs[k], rtol=0, atol=0 if model != "conv" else 1e-9)


@needs_reader
def test_a_file_written_for_another_dt_reads_back_at_that_dt(tmp_path):
    g = _digits()
    back = _read(spidec.to_nir(g, tmp_path / "m.nir", dt=1e-3), dt=1e-3)  # (the file says spidec.dt = 1e-3)
    assert back.canonical() == g.canonical()


def _train_sim_build(tmp_path):
    from spidec.runs import TrainOptions, train_build

    out = tmp_path / "sim"
    spidec.compile(_digits(), target="sim", out=out)
    summary = train_build(out, TrainOptions(epochs=1, quiet=True, device="cpu"))
    return out, summary


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A sim build of the digits example trained one epoch (its checkpoint.pt)."""
    return _train_sim_build(tmp_path_factory.mktemp("trained"))


@needs_reader
def test_a_trained_model_exported_and_read_back_evaluates_to_the_same_accuracy(trained, tmp_path, capsys):
    from spidec.data import load as load_data

    out, summary = trained
    assert main(["export", str(out), "--to", "nir", "-o", str(tmp_path / "t.nir")]) == 0
    said = capsys.readouterr().out
    assert f"from the trained weights of {out / 'checkpoint.pt'} after epoch 1" in said
    g, _ = load_build(out)
    assert not np.array_equal(g.tensor("fb.weight"), _digits().tensor("fb.weight"))  # trained: they moved
    back = _read(tmp_path / "t.nir", dt=1e-4)
    assert back.canonical() == g.canonical()
    ds = load_data("digits")
    acc = {}
    for key, model in (("build", g), ("nir", back)):
        art = spidec.compile(model, target="sim", out=tmp_path / key)
        acc[key] = art.evaluate(ds.x_test.reshape(len(ds.x_test), -1), ds.y_test)["accuracy"]
    assert acc["build"] == acc["nir"]
    assert abs(acc["nir"] - summary["test_accuracy"]) < 0.01  # (the build's own evaluation in train.py)


@needs_reader
@pytest.mark.skipif(not (shutil.which("gcc") or shutil.which("cc")) or not shutil.which("make"),
                    reason="the c target needs a C compiler and make")
def test_a_trained_c_build_exports_from_its_checkpoint_bin_to_the_same_accuracy(tmp_path, capsys):
    from spidec.data import load as load_data

    out = tmp_path / "c"
    assert main(["compile", str(EXAMPLES / "digits_fb.spir"), "--target", "c", "-o", str(out), "--quiet"]) == 0
    assert main(["train", str(out), "--epochs", "1", "--checkpoint", str(out / "checkpoint.bin"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["export", str(out), "--to", "nir", "-o", str(tmp_path / "c.nir")]) == 0
    assert f"from the trained weights of {out / 'checkpoint.bin'} after epoch 1" in capsys.readouterr().out
    g, _ = load_build(out)
    back = _read(tmp_path / "c.nir", dt=1e-4)
    assert back.canonical() == g.canonical()
    ds = load_data("digits")
    art = spidec.compile(back, target="c", out=tmp_path / "back")
    assert art.evaluate(ds.x_test.reshape(len(ds.x_test), -1), ds.y_test)["accuracy"] == pytest.approx(
        summary["test_accuracy"], abs=1e-4)  # (the trainer prints 4 decimals)


def test_a_build_without_checkpoint_exports_its_initial_weights(tmp_path, capsys):
    out = tmp_path / "sim"
    spidec.compile(_digits(), target="sim", out=out)
    assert main(["export", str(out), "--to", "nir", "-o", str(tmp_path / "i.nir"), "--delays", "implicit"]) == 0
    assert "from the compiled initial weights of" in capsys.readouterr().out
    g, weights = load_build(out)
    assert g.canonical() == _digits().canonical() and "no checkpoint" in weights
    assert nir.read(tmp_path / "i.nir").metadata["spidec.delays"] == "implicit"


# ====================================================================== NIRTorch's interpreter

class _SubtractiveIF(torch.nn.Module):
    """A NIR IF/LIF node as NIRTorch runs it, one Euler step of dt, resetting by subtraction of
    v_threshold - v_reset (what spidec writes; see spidec.export); counts its spikes."""

    def __init__(self, node, dt: float) -> None:
        super().__init__()
        leak = isinstance(node, nir.LIF)

        def f(a):
            return torch.from_numpy(np.asarray(a, np.float64))

        self.dt, self.leak = dt, leak
        self.r, self.th, self.vr = f(node.r), f(node.v_threshold), f(node.v_reset)
        self.tau = f(node.tau) if leak else None
        self.count = None

    def forward(self, x, state=None):
        v = torch.zeros_like(x) if state is None else state
        if self.leak:
            v = v + self.dt / self.tau * (-v + self.r * x)
        else:
            v = v + self.r * self.dt * x
        s = (v > self.th).to(x.dtype)
        v = v - s * (self.th - self.vr)
        self.count = s if self.count is None else self.count + s
        return s, v


def test_nirtorch_runs_the_implicit_file_to_spidecs_equilibrium_rates(tmp_path):
    nirtorch = pytest.importorskip("nirtorch", reason="nirtorch is not installed")
    g, dt, T = _digits(), 1e-4, 1000
    graph = nir.read(spidec.to_nir(g, tmp_path / "d.nir", dt=dt, delays="implicit"))
    neurons = {}

    def neuron(node):
        neurons[len(neurons)] = m = _SubtractiveIF(node, dt)
        return m

    def linear(node, bias=None):
        m = torch.nn.Linear(node.weight.shape[1], node.weight.shape[0], bias=bias is not None).double()
        m.weight.data = torch.from_numpy(node.weight).double()
        if bias is not None:  # (nirtorch 2.6's default Affine map drops the bias)
            m.bias.data = torch.from_numpy(bias).double()
        return m

    net = nirtorch.nir_to_torch(graph, {nir.IF: neuron, nir.LIF: neuron, nir.Linear: linear,
                                        nir.Affine: lambda n: linear(n, n.bias)}, dtype=torch.float64)
    from spidec.data import load as load_data

    x = load_data("digits").x_test[:32].reshape(32, -1).astype(np.float64)
    eq = spidec.reference.equilibrium(g, x)
    state, logits, threads = None, 0.0, torch.get_num_threads()
    torch.set_num_threads(1)  # (1000 small steps: threads only add overhead on 2 shared cores)
    try:
        with torch.no_grad():
            for _ in range(T):
                out, state = net(torch.from_numpy(x), state)
                logits = logits + out
    finally:
        torch.set_num_threads(threads)
    (z,) = neurons.values()
    err = np.abs(z.count.numpy() / T - eq.rates["z"])
    assert err.mean() < 2e-3 and err.max() < 5e-3, (err.mean(), err.max())  # measured: mean 2.6e-4, max 1.1e-3
    assert np.abs(logits.numpy() / T - eq.outputs["logits"]).max() < 5e-3


# ====================================================================== ONNX and torch

@pytest.mark.parametrize("model", ["digits", "mnist_mlp", "lenet_f", "conv"])
def test_onnx_export_reads_back_to_the_same_canonical_ir(model, tmp_path):
    if model == "lenet_f":
        torch.manual_seed(0)
        g = spidec.from_torch(LeNetF().eval())  # conv, avgpool, a conv_transpose2d feedback, BatchNorm folded
    else:
        g = MODELS[model]()
    path = to_onnx(g, tmp_path / "m.onnx")
    back = spidec.load(path)
    fg = forward_graph(g)
    if model == "conv":  # ONNX keeps no neuron parameters (they are in metadata_props spidec.neurons)
        fg = fg.copy()
        for p in fg.populations:
            fg.replace_node(type(p)(p.name, p.shape, Neuron(), p.bias))
    assert back.canonical() == fg.canonical()
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["spidec.state"] in ("z:z_next", "h:h_next") or model == "lenet_f"


def test_cli_exports_onnx_and_a_state_dict_with_ir_names(tmp_path, capsys):
    spir = str(EXAMPLES / "digits_fb.spir")
    assert main(["export", spir, "--to", "onnx", "-o", str(tmp_path / "d.onnx")]) == 0
    assert spidec.load(tmp_path / "d.onnx").canonical() == _digits().canonical()
    assert main(["export", spir, "--to", "torch", "-o", str(tmp_path / "d.pt"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["format"] == "torch" and info["weights"] == f"the weights of {spir}"
    sd = torch.load(tmp_path / "d.pt", weights_only=True)
    assert set(sd) == set(_digits().parameters(learnable_only=False))
    np.testing.assert_array_equal(sd["fb.weight"].numpy(), _digits().tensor("fb.weight"))


@pytest.mark.parametrize("cls", [DigitsFB, MnistMlpFB])
def test_the_state_dict_loads_into_the_source_module_strictly(cls, tmp_path):
    torch.manual_seed(0)
    source = cls().eval()
    g = spidec.from_torch(source)
    trained = g.with_tensors({n: t + F32(0.25) for n, t in g.parameters().items()})  # "trained" weights
    fresh = cls()  # another instance: its own random weights, the same names
    fresh.load_state_dict(torch.load(to_torch(trained, tmp_path / "m.pt", fresh), weights_only=True), strict=True)
    x = {k: torch.rand(3, *s) for k, s in cls.spidec_inputs.items()}
    ref = spidec.reference.equilibrium(trained, {"x": x["x"].numpy().astype(np.float64)})
    with torch.no_grad():  # the module's fixed point with the loaded weights is the trained graph's
        z = torch.zeros(3, *cls.spidec_inputs["z"])
        for _ in range(100):
            z, logits = fresh(x["x"], z)
    np.testing.assert_allclose(logits.numpy(), ref.outputs["logits"], atol=1e-4)


def test_a_folded_parameter_has_no_state_dict_entry(tmp_path):
    torch.manual_seed(0)
    g = spidec.from_torch(LeNetF().eval())
    with pytest.raises(SpidecError, match=r"LeNetF\.conv2\.weight has no IR tensor of its own"):
        state_dict(g, LeNetF())


def test_cli_state_dict_of_a_trained_build_with_the_modules_names(trained, tmp_path, capsys):
    out, _ = trained
    pt = tmp_path / "d.pt"
    assert main(["export", str(out), "--to", "torch", "--torch", f"{EXAMPLES / 'models.py'}:DigitsFB",
                 "-o", str(pt)]) == 0
    assert "from the trained weights of" in capsys.readouterr().out
    sd = torch.load(pt, weights_only=True)
    DigitsFB().load_state_dict(sd, strict=True)
    g, _ = load_build(out)
    np.testing.assert_array_equal(sd["fc_in.bias"].numpy(), g.tensor("z.bias"))


def test_cli_errors_are_one_line(tmp_path, capsys):
    spir = str(EXAMPLES / "digits_fb.spir")
    assert main(["export", spir, "--to", "onnx", "--delays", "implicit", "-o", str(tmp_path / "x.onnx")]) == 1
    assert main(["export", spir, "--to", "nir", "--checkpoint", "c.pt", "-o", str(tmp_path / "x.nir")]) == 1
    assert main(["export", str(tmp_path), "--to", "nir", "-o", str(tmp_path / "x.nir")]) == 1  # no build here
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "spidec: error: --delays applies to --to nir only"
    assert err[1] == "spidec: error: --checkpoint applies to build folders only"
    assert err[2].startswith("spidec: error: ") and "holds no compiled program" in err[2]
    assert len(err) == 3
    g = Graph("up")
    g.add_input("x", [2, 4, 4])
    g.add_population("p", [2, 8, 8])
    g.add_synapse("x", "p", ConvTranspose2d(np.ones((2, 2, 2, 2)), stride=2), name="up")
    spidec.save(g, tmp_path / "up.spir")
    assert main(["export", str(tmp_path / "up.spir"), "--to", "nir", "-o", str(tmp_path / "up.nir")]) == 1
    assert capsys.readouterr().err.strip() == ("spidec: error: synapse 'up': conv_transpose2d has no NIR node "
                                               "(NIR 1.0 has no transposed convolution)")


def test_nir_graph_is_what_the_file_holds():
    g = _digits()
    graph = nir_graph(g, delays="implicit")
    assert sorted(graph.nodes) == ["fb", "fc_in", "logits", "readout", "x", "z"]
    np.testing.assert_array_equal(graph.nodes["fc_in"].bias, g.node("z").bias)
