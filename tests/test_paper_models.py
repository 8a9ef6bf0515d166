"""The SPIDE authors' models of examples/models.py (``PAPER``), checked against the authors' structure.

The expected structure below is written out from the authors' code (pkuxmq/SPIDE-FSNN:
models/snn_spide_*.py, modules/snn_modules.py and the cfg dicts of mnist_lenet.py,
mnist_convnetf.py, cifar_alexnetf.py, cifar_cifarnetf.py, dvs_cifar_convnetf.py), so that CI needs
no copy of it. Units: the authors' synapses act on spikes with reset V = vth - u_rest = 2; spidec's
are rate units, W_r = W / V, so an authors' spiking pool (average pool of spikes, weight 1) is the
synapse ``avgpool2d |> scale(1/V)``.

Every model lowers through the torch frontend and compiles to ``sim``; to ``c`` each distinct class
compiles once (CIFAR-100 CIFARNet-F is CIFAR-10 CIFARNet-F with 100 classes) and the smallest, the
LeNet, is also built with make and run. The C backend takes constant inputs only, so the DVS model
(one frame a step) is a strict xfail there.
"""

from __future__ import annotations

import math
import operator
import sys

import numpy as np
import pytest
from conftest import EXAMPLES

import spidec
from spidec import SpidecError
from spidec import reference as ref

torch = pytest.importorskip("torch", reason="the paper models are PyTorch modules (torch extra)")
from torch import fx, nn  # noqa: E402

sys.path.insert(0, str(EXAMPLES))
from models import PAPER, PAPER_V, paper_options  # noqa: E402

V = 2.0  # the authors' vth - u_rest (vth 1, u_rest -1)


# ------------------------------------------------------------------ the authors' structure, written out
def conv(cout, cin, k, s, p, out):
    return ("conv2d", (cout, cin, k, k), (s, s), (p, p), out)


def convt(cin, cout, k, s, p, op, out):
    return ("conv_transpose2d", (cin, cout, k, k), (s, s), (p, p), (op, op), out)


def pool(out):  # the authors' SNNPooling: AvgPool2d((2, 2), stride=(2, 2)), weight 1 on spikes
    return [("avgpool2d", (2, 2), (2, 2), (0, 0), out), ("scale", 1 / V, out)]


def flatten(n):
    return ("flatten", (n,))


def dense(nout, nin):
    return ("dense", (nout, nin), (nout,))


def cifar(c, classes):
    """models/snn_spide_cifar.py: network_x conv3 s2 p1, network_s1..s4 conv3 (s1, s2, s1, s1) p1,
    feedback network_s5 convT3 s2 p1 op1 (no bias), classifier on the last layer (f_type 'last')."""
    c0, c1, c2, c3, c4 = c
    return dict(
        inputs={"x": (3, 32, 32)},
        populations={"layer0": ((c0, 16, 16), (c0,)), "layer1": ((c1, 16, 16), (c1,)),
                     "layer2": ((c2, 8, 8), (c2,)), "layer3": ((c3, 8, 8), (c3,)), "z": ((c4, 8, 8), (c4,))},
        readouts={"logits": (classes,)},
        synapses=[
            ("network_x", "x", "layer0", 0, [conv(c0, 3, 3, 2, 1, (c0, 16, 16))]),
            ("network_s5", "z", "layer0", 1, [convt(c4, c0, 3, 2, 1, 1, (c0, 16, 16))]),
            ("network_s1", "layer0", "layer1", 0, [conv(c1, c0, 3, 1, 1, (c1, 16, 16))]),
            ("network_s2", "layer1", "layer2", 0, [conv(c2, c1, 3, 2, 1, (c2, 8, 8))]),
            ("network_s3", "layer2", "layer3", 0, [conv(c3, c2, 3, 1, 1, (c3, 8, 8))]),
            ("network_s4", "layer3", "z", 0, [conv(c4, c3, 3, 1, 1, (c4, 8, 8))]),
            ("classifier", "z", "logits", 0, [flatten(c4 * 64), dense(classes, c4 * 64)]),
        ],
        init="default", feedback=("network_s5", 2.0),
    )


EXPECTED = {
    # models/snn_spide_mnist_lenet.py: network_x conv5 1->15 p2 (stride_x 1), p1 pool, s1 conv5 15->40
    # (SNNConv's default padding (5-1)//2 = 2), p2 pool, s2 FC 1960->300, s3 SNNZero (no feedback)
    "mnist_lenet": dict(
        inputs={"x": (1, 28, 28)},
        populations={"layer0": ((15, 28, 28), (15,)), "layer1": ((15, 14, 14), None),
                     "layer2": ((40, 14, 14), (40,)), "layer3": ((40, 7, 7), None), "layer4": ((300,), (300,))},
        readouts={"logits": (10,)},
        synapses=[
            ("network_x", "x", "layer0", 0, [conv(15, 1, 5, 1, 2, (15, 28, 28))]),
            ("layer0_layer1", "layer0", "layer1", 0, pool((15, 14, 14))),
            ("network_s1", "layer1", "layer2", 0, [conv(40, 15, 5, 1, 2, (40, 14, 14))]),
            ("layer2_layer3", "layer2", "layer3", 0, pool((40, 7, 7))),
            ("network_s2", "layer3", "layer4", 0, [flatten(1960), dense(300, 1960)]),
            ("classifier", "layer4", "logits", 0, [dense(10, 300)]),
        ],
        init="kaiming", feedback=None,
    ),
    # models/snn_spide_mnist.py + mnist_convnetf.py: c_hidden = c_s1 = 64, kernel 5, stride_x 2, padding_x 2
    "mnist_convnetf": dict(
        inputs={"x": (1, 28, 28)},
        populations={"layer0": ((64, 14, 14), (64,)), "layer1": ((64, 7, 7), (64,)), "z": ((64, 7, 7), (64,))},
        readouts={"logits": (10,)},
        synapses=[
            ("network_x", "x", "layer0", 0, [conv(64, 1, 5, 2, 2, (64, 14, 14))]),
            ("network_s3", "z", "layer0", 1, [convt(64, 64, 3, 2, 1, 1, (64, 14, 14))]),
            ("network_s1", "layer0", "layer1", 0, [conv(64, 64, 5, 2, 2, (64, 7, 7))]),
            ("network_s2", "layer1", "z", 0, [conv(64, 64, 5, 1, 2, (64, 7, 7))]),
            ("classifier", "z", "logits", 0, [flatten(3136), dense(10, 3136)]),
        ],
        init="kaiming", feedback=("network_s3", 2.0),
    ),
    "cifar10_alexnetf": cifar((96, 256, 384, 384, 256), 10),
    "cifar10_cifarnetf": cifar((128, 256, 512, 1024, 512), 10),
    "cifar100_cifarnetf": cifar((128, 256, 512, 1024, 512), 100),
    # models/snn_spide_dvscifar.py + dvs_cifar_convnetf.py: one layer, conv9 2->512 s2 p4 from the frame,
    # self-feedback conv5 512->512 p2 without bias, _wnorm(norm_range=10)
    "dvs_convnetf": dict(
        inputs={"x": (2, 48, 48)},
        populations={"z": ((512, 24, 24), (512,))},
        readouts={"logits": (10,)},
        synapses=[
            ("network_x", "x", "z", 0, [conv(512, 2, 9, 2, 4, (512, 24, 24))]),
            ("network_s", "z", "z", 1, [conv(512, 512, 5, 1, 2, (512, 24, 24))]),
            ("classifier", "z", "logits", 0, [flatten(294912), dense(10, 294912)]),
        ],
        init="kaiming", feedback=("network_s", 10.0),
    ),
}

# dropout module -> (the synapse module whose output it masks, p), from the authors' SNNConv/SNNFC/
# SNNConvTranspose(dropout=...) arguments
_CIFAR_DROPS = ("x", "s1", "s2", "s3", "s4", "s5")
DROPOUT = {
    "mnist_lenet": {"drop_s2": ("network_s2", 0.5)},
    "mnist_convnetf": {f"drop_{k}": (f"network_{k}", 0.2) for k in ("x", "s1", "s2", "s3")},
    "cifar10_alexnetf": {f"drop_{k}": (f"network_{k}", 0.2) for k in _CIFAR_DROPS},
    "cifar10_cifarnetf": {f"drop_{k}": (f"network_{k}", 0.25) for k in _CIFAR_DROPS},
    "cifar100_cifarnetf": {f"drop_{k}": (f"network_{k}", 0.25) for k in _CIFAR_DROPS},
    "dvs_convnetf": {},
}

# the authors' script defaults (argparse) and their README's sf for CIFAR-100
SETTINGS = {
    #                    T  T_back  sf     lr    epochs milestones   warm-up norm_range dataset
    "mnist_lenet":        (30, 100, 100.0, 0.1,  60,  (20, 40),      0,   0.0,  "mnist"),
    "mnist_convnetf":     (30, 100, 100.0, 0.05, 100, (30, 60, 90),  0,   2.0,  "mnist"),
    "cifar10_alexnetf":   (30, 250, 400.0, 0.05, 100, (50, 75),      400, 2.0,  "cifar10"),
    "cifar10_cifarnetf":  (30, 250, 400.0, 0.05, 100, (50, 75),      400, 2.0,  "cifar10"),
    "cifar100_cifarnetf": (30, 250, 500.0, 0.05, 100, (50, 75),      400, 2.0,  "cifar100"),
    "dvs_convnetf":       (30, 250, 400.0, 0.05, 70,  (50,),         0,   10.0, "cifar10-dvs"),
}

NAMES = list(EXPECTED)


_cache: dict = {}


def model(name):
    """The module (seed 0, eval mode) and its lowering, built once per name."""
    if name not in _cache:
        cls, s = PAPER[name]
        torch.manual_seed(0)
        m = cls(classes=s["classes"]).eval()
        _cache[name] = (m, spidec.from_torch(m, name=name))
    return _cache[name]


def describe(op, shape_out):
    kind = op.kind
    if kind == "conv2d":
        return (kind, tuple(op.weight.shape), op.stride, op.padding, shape_out)
    if kind == "conv_transpose2d":
        return (kind, tuple(op.weight.shape), op.stride, op.padding, op.output_padding, shape_out)
    if kind == "avgpool2d":
        return (kind, op.kernel, op.stride, op.padding, shape_out)
    if kind == "scale":
        return (kind, op.factor, shape_out)
    if kind == "dense":
        return (kind, tuple(op.weight.shape), shape_out)
    return (kind, shape_out)


# ------------------------------------------------------------------ structure
def test_every_paper_model_is_checked():
    assert set(PAPER) == set(EXPECTED) == set(DROPOUT) == set(SETTINGS)


@pytest.mark.parametrize("name", NAMES)
def test_structure_layer_by_layer(name):
    exp = EXPECTED[name]
    _, g = model(name)
    assert {i.name: i.shape for i in g.inputs} == exp["inputs"]
    pops = {p.name: (p.shape, None if p.bias is None else p.bias.shape) for p in g.populations}
    assert pops == exp["populations"]
    assert {r.name: r.shape for r in g.readouts} == exp["readouts"]
    got = []
    for e in g.synapses():
        shapes = e.synapse.shapes(g.node(e.src).shape)
        got.append((e.name, e.src, e.dst, e.synapse.delay,
                    [describe(op, s) for op, s in zip(e.synapse.ops, shapes[1:])]))
    assert sorted(got) == sorted(exp["synapses"])
    delayed = [e.name for e in g.synapses() if e.synapse.delay]
    assert delayed == ([] if exp["feedback"] is None else [exp["feedback"][0]])


def test_lenet_has_no_feedback_and_no_state():
    """The authors' network_s3 is SNNZero: no feedback; the model takes x only and returns logits."""
    m, g = model("mnist_lenet")
    assert m.spidec_state == {} and list(m.spidec_inputs) == ["x"] and m.spidec_outputs == ("logits",)
    assert not any(e.synapse.delay for e in g.synapses())
    assert g.step_order()[:5] == ["layer0", "layer1", "layer2", "layer3", "layer4"]


def test_pool_synapses_have_rate_gain_one_over_V():
    """An authors' pool is an average of spikes with weight 1, reset V: in rates avgpool / V."""
    assert PAPER_V == V
    _, g = model("mnist_lenet")
    rng = np.random.default_rng(0)
    for name, src in (("layer0_layer1", "layer0"), ("layer2_layer3", "layer2")):
        syn = g.synapse(name).synapse
        factors = [op.factor for op in syn.ops if op.kind == "scale"]
        assert factors == [0.5] and math.prod(factors) == 1 / V
        shape = g.node(src).shape
        np.testing.assert_array_equal(syn.apply(np.ones((1, *shape))), np.full((1, shape[0], *(s // 2 for s in
                                                                                    shape[1:])), 1 / V))
        a = rng.random((2, *shape))
        pooled = a.reshape(2, shape[0], shape[1] // 2, 2, shape[2] // 2, 2).mean(axis=(3, 5))
        np.testing.assert_allclose(syn.apply(a), pooled / V, rtol=1e-12)


# ------------------------------------------------------------------ initialisation (the numbers)
def _layers(m):
    return {n: mod for n, mod in m.named_modules() if n.startswith("network_") and hasattr(mod, "weight")}


@pytest.mark.parametrize("name", NAMES)
def test_initialisation_in_rate_units(name):
    """The authors' init divided by V: kaiming_normal_(fan_in) or their 'default' (every output
    unit's weights of norm 1), biases 0, a transposed-conv feedback times 0.1, the feedback Frobenius
    norm at most r (their units), the readout nn.Linear's default; the IR holds the module's numbers."""
    exp = EXPECTED[name]
    m, g = model(name)
    for lname, layer in _layers(m).items():
        w = layer.weight.detach().double()
        np.testing.assert_array_equal(g.tensor(f"{lname}.weight"), layer.weight.detach().numpy())
        if layer.bias is not None:
            assert not layer.bias.detach().any(), f"{lname}: the authors zero the biases"
        transposed = isinstance(layer, nn.ConvTranspose2d)
        gain = 0.1 if transposed else 1.0
        if exp["feedback"] and lname == exp["feedback"][0]:
            r = exp["feedback"][1]
            assert float(w.norm()) * V <= r * (1 + 1e-6)
            if exp["init"] == "kaiming" and not transposed:  # DVS: kaiming's norm ~32 is cut to r = 10
                assert float(w.norm()) * V == pytest.approx(r, rel=1e-6)
                continue
        if exp["init"] == "kaiming":
            fan_in = w[0].numel() if not transposed else w.shape[1] * w[0, 0].numel()  # torch's fan_in
            std = math.sqrt(2.0 / fan_in) * gain / V
            assert float(w.std()) == pytest.approx(std, rel=0.1), lname
        else:
            per_unit = w.transpose(0, 1) if transposed else w
            norms = per_unit.reshape(per_unit.shape[0], -1).norm(dim=1)
            np.testing.assert_allclose(norms.numpy(), gain / V, rtol=1e-5, err_msg=lname)
    k = 1 / math.sqrt(m.classifier.in_features)  # nn.Linear's default: uniform(-1/sqrt(in), 1/sqrt(in))
    top = float(m.classifier.weight.detach().abs().max())
    assert 0.9 * k < top <= k
    np.testing.assert_array_equal(g.tensor("classifier.weight"), m.classifier.weight.detach().numpy())


# ------------------------------------------------------------------ dropout: where the authors put it
@pytest.mark.parametrize("name", NAMES)
def test_dropout_masks_the_synapse_output(name):
    """VariationalHidDropout2d in SNNConv/SNNFC/SNNConvTranspose multiplies the layer's output
    (after conv/fc, before the neuron): each nn.Dropout reads exactly that synapse module."""
    m, _ = model(name)
    traced = fx.symbolic_trace(m)
    found = {}
    for node in traced.graph.nodes:
        if node.op == "call_module" and isinstance(traced.get_submodule(node.target), nn.Dropout):
            src = node.args[0]
            assert src.op == "call_module", node.target
            found[node.target] = (src.target, traced.get_submodule(node.target).p)
            for user in node.users:  # the masked current goes into a sum or straight into the population
                assert user.target in (operator.add, torch.add) or isinstance(
                    traced.get_submodule(user.target), nn.Hardtanh), (node.target, user)
    assert found == DROPOUT[name]


NO_IR_DROPOUT = "dropout" not in spidec.Synapse.__dataclass_fields__


def lowered_for_training(name):
    """The lowering of the module in training mode: the frontend reads nn.Dropout only then."""
    cls, s = PAPER[name]
    torch.manual_seed(0)
    return spidec.from_torch(cls(classes=s["classes"]).train(), name=name)


@pytest.mark.skipif(NO_IR_DROPOUT, reason="this spidec's IR has no synapse dropout: Dropout is read as identity")
@pytest.mark.parametrize("name", ["mnist_lenet", "mnist_convnetf", "cifar10_alexnetf"])
def test_dropout_reaches_the_ir(name):
    """In training mode each masked synapse carries its p, and its bias sits under the mask where
    the synapse has one, as in the authors' drop(W x + b); in eval mode there is none."""
    g = lowered_for_training(name)
    m, g_eval = model(name)
    assert {e.name: e.synapse.dropout for e in g.synapses() if e.synapse.dropout} == dict(DROPOUT[name].values())
    for e in g.synapses():
        if e.synapse.dropout:
            assert e.synapse.dropout_bias == (getattr(m.get_submodule(e.name), "bias", None) is not None), e.name
    assert not any(e.synapse.dropout for e in g_eval.synapses())


@pytest.mark.skipif(NO_IR_DROPOUT, reason="this spidec's IR has no synapse dropout: Dropout is read as identity")
def test_convnetf_with_dropout_compiles(tmp_path):
    g = lowered_for_training("mnist_convnetf")
    for target in ("sim", "c"):
        spidec.compile(g, target=target, out=tmp_path / target, **paper_options("mnist_convnetf"))


# ------------------------------------------------------------------ the lowering computes the module
@pytest.mark.parametrize("name", ["mnist_lenet", "mnist_convnetf", "cifar10_alexnetf"])
def test_lowering_computes_the_module(name):
    """One step of the lowered graph (spidec.reference, float64) equals the module's step (eval)."""
    m, g = model(name)
    rng = np.random.default_rng(1)
    feed = {k: rng.standard_normal((2, *s)).astype(np.float32) for k, s in m.spidec_inputs.items()}
    if "z" in feed:
        feed["z"] = rng.random(feed["z"].shape).astype(np.float32)
    rates, outs = ref.step(g, {"x": feed["x"]}, {"z": feed["z"]} if "z" in feed else {})
    with torch.no_grad():
        got = m(*(torch.from_numpy(feed[k]) for k in m.spidec_inputs))
    logits = got[1] if isinstance(got, tuple) else got
    np.testing.assert_allclose(outs["logits"], logits.numpy(), atol=1e-4)
    if isinstance(got, tuple):
        np.testing.assert_allclose(rates["z"], got[0].numpy(), atol=1e-5)
    active = np.mean([np.mean((a > 0) & (a < 1)) for a in rates.values()])
    assert active > 0.01, "the comparison must exercise unsaturated neurons"


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize("name", NAMES)
def test_settings_are_the_authors(name):
    s = PAPER[name][1]
    T, T_back, sf, lr, epochs, milestones, warmup, r, dataset = SETTINGS[name]
    assert (s["T"], s["T_back"], s["sf"], s["lr"], s["epochs"], tuple(s["milestones"]), s["warmup_iters"],
            s["norm_range"], s["dataset"]) == (T, T_back, sf, lr, epochs, milestones, warmup, r, dataset)
    assert (s["vth"], s["vth_back"], s["momentum"], s["weight_decay"], s["gamma"], s["batch"], s["leak"]) == (
        1.0, 0.5, 0.9, 5e-4, 0.1, 128, None)
    assert {k: p for k, p in s["dropout"].items() if p} == dict(DROPOUT[name].values())
    assert s["init"] == EXPECTED[name]["init"]
    assert s["encoding"] == ("temporal" if name.startswith("dvs") else "constant")
    assert s["classes"] == EXPECTED[name]["readouts"]["logits"][0]
    for key in ("mean", "std", "augmentation"):
        assert key in s
    known = {o for p in spidec.passes.PIPELINE for o in spidec.passes.options_of(p)}
    assert set(paper_options(name)) <= known


# ------------------------------------------------------------------ compiling
@pytest.mark.parametrize("name", NAMES)
def test_compiles_to_sim(name, tmp_path):
    _, g = model(name)
    art = spidec.compile(g, target="sim", out=tmp_path / "sim", **paper_options(name))
    t = art.graph.training
    assert art.graph.simulation.T == 30 and art.graph.simulation.encoding == PAPER[name][1]["encoding"]
    assert (t.T_back, t.sf) == (PAPER[name][1]["T_back"], PAPER[name][1]["sf"])
    assert {c.of for c in t.couples} == set(EXPECTED[name]["populations"])


def test_convnetf_compiles_to_c_builds_and_runs(tmp_path):
    """The smallest paper model with a feedback through make, its C forward stage against the sim
    backend's (ConvNet-F sits at the float32 noise floor, see tests/test_c.py: >= 99% equal counts)."""
    _, g = model("mnist_convnetf")
    opts = paper_options("mnist_convnetf")
    rt = spidec.compile(g, target="c", out=tmp_path / "c", **opts).build()
    sim = spidec.compile(g, target="sim", out=tmp_path / "sim", **opts)
    x = np.random.default_rng(2).standard_normal((4, 1, 28, 28)).astype(np.float32)
    fwd = sim.load().forward_stage({"x": torch.from_numpy(x)})
    order = sim.graph.schedule.forward
    counts = np.concatenate([fwd[f"a_{p}"].numpy().reshape(len(x), -1) for p in order], axis=1) * rt.T
    assert np.mean(np.abs(counts - rt.counts(x)) < 0.5) >= 0.99
    assert rt.forward(x).shape == (4, 10)


@pytest.mark.parametrize("name", ["mnist_lenet", "cifar10_alexnetf",
                                  pytest.param("cifar10_cifarnetf", marks=pytest.mark.slow)])
def test_compiles_to_c(name, tmp_path):
    """Compiling is enough for the others (the C backend writes every weight as C text: CIFARNet-F
    takes ~20 s to emit)."""
    _, g = model(name)
    art = spidec.compile(g, target="c", out=tmp_path / "c", **paper_options(name))
    assert (tmp_path / "c" / "Makefile").is_file() and (tmp_path / "c" / "model.c").is_file()
    assert art.out == tmp_path / "c"


@pytest.mark.xfail(strict=True, raises=SpidecError, reason="the c backend reads constant input currents only; "
                   "the DVS model takes one frame a step (encoding temporal)")
def test_dvs_compiles_to_c(tmp_path):
    _, g = model("dvs_convnetf")
    spidec.compile(g, target="c", out=tmp_path / "c", **paper_options("dvs_convnetf"))


def test_cli_reads_a_paper_model(run_cli):
    code, out, err = run_cli("inspect", "--torch", str(EXAMPLES / "models.py") + ":PaperMnistLeNet", "--no-text")
    assert code == 0, err
    assert "layer0_layer1" in out and "avgpool2d" in out
