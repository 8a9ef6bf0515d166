"""Frontends: ONNX (both torch exporters, and hand-written graphs) and PyTorch (torch.fx) into the IR.

Numbers are checked against independent oracles: onnxruntime for what an ONNX model means, the
torch module itself for the PyTorch frontend. The models compute in float32 and the reference in
float64; float32 sums of a few thousand terms of size <= 1 carry errors ~1e-6, hence atol 1e-5.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
from conftest import EXAMPLES

import spidec
from spidec import SpidecError, SpidecWarning
from spidec import reference as ref

torch = pytest.importorskip("torch", reason="the torch extra is needed for the frontend tests")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle for ONNX models (test extra)")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

sys.path.insert(0, str(EXAMPLES))
from export import build, export_onnx  # noqa: E402
from models import EXAMPLES as MODELS  # noqa: E402

ATOL = 1e-5
NAMES = sorted(MODELS)


def has_onnxscript() -> bool:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


EXPORTERS = ["legacy", pytest.param("dynamo", marks=pytest.mark.skipif(
    not has_onnxscript(), reason="the dynamo exporter needs onnxscript (test extra)"))]


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    cache = {}

    def get(name: str, exporter: str):
        if (name, exporter) not in cache:
            cache[(name, exporter)] = export_onnx(build(name), out / f"{name}_{exporter}.onnx",
                                                  dynamo=exporter == "dynamo")
        return cache[(name, exporter)]

    return get


def sample(module, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.random((batch, *s)).astype(np.float32) for k, s in module.spidec_inputs.items()}


def data_inputs(feed):
    return {k: v for k, v in feed.items() if k != "z"}


def iterate_to_equilibrium(step_fn, feed, tol=1e-7, max_iter=500):
    z = np.zeros_like(feed["z"])
    for _ in range(max_iter):
        z_next, logits = step_fn({**feed, "z": z})
        if np.max(np.abs(z_next - z)) < tol:
            return z_next, logits
        z = z_next
    raise AssertionError("the model did not settle")


def ort_step(path):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda feed: sess.run(["z_next", "logits"], feed)


def torch_step(module):
    def run(feed):
        with torch.no_grad():
            z_next, logits = module(*(torch.from_numpy(feed[k]) for k in module.spidec_inputs))
        return z_next.numpy(), logits.numpy()

    return run


def check_step_and_equilibrium(g, step_fn, feed):
    rates, outs = ref.step(g, data_inputs(feed), {"z": feed["z"]})
    z_next, logits = step_fn(feed)
    np.testing.assert_allclose(rates["z"], z_next, atol=ATOL)
    np.testing.assert_allclose(outs["logits"], logits, atol=ATOL)
    eq = ref.equilibrium(g, data_inputs(feed))
    z_star, logits_star = iterate_to_equilibrium(step_fn, feed)
    np.testing.assert_allclose(eq.rates["z"], z_star, atol=ATOL)
    np.testing.assert_allclose(eq.outputs["logits"], logits_star, atol=ATOL)
    active = np.mean([np.mean((a > 0) & (a < 1)) for a in eq.rates.values()])
    assert active > 0.1, "the comparison must exercise unsaturated neurons"


# ------------------------------------------------------------------ the examples

@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", NAMES)
def test_onnx_examples_match_onnxruntime(name, exporter, onnx_files):
    path = onnx_files(name, exporter)
    g = spidec.load(path)
    check_step_and_equilibrium(g, ort_step(path), sample(build(name)))


@pytest.mark.parametrize("opset", [11, 13, 17, 20])
def test_legacy_exporter_opsets(opset, tmp_path):
    """The legacy exporter writes Clip bounds, pads and reshapes differently across opsets."""
    module = build("lenet_f")
    path = export_onnx(module, tmp_path / f"lenet_{opset}.onnx", opset=opset)
    assert onnx.load(str(path)).opset_import[0].version == opset
    g = spidec.load(path)
    feed = sample(module, batch=2, seed=opset)
    rates, outs = ref.step(g, data_inputs(feed), {"z": feed["z"]})
    z_next, logits = ort_step(path)(feed)
    np.testing.assert_allclose(rates["z"], z_next, atol=ATOL)
    np.testing.assert_allclose(outs["logits"], logits, atol=ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_torch_examples_match_the_module(name):
    module = build(name)
    g = spidec.from_torch(module)
    assert any(e.synapse.delay for e in g.synapses())
    check_step_and_equilibrium(g, torch_step(module), sample(module, seed=1))


@pytest.mark.parametrize("name", NAMES)
def test_torch_and_both_exporters_give_the_same_ir(name, onnx_files):
    module = build(name)
    graphs = [spidec.from_torch(module), spidec.load(onnx_files(name, "legacy"))]
    if has_onnxscript():
        graphs.append(spidec.load(onnx_files(name, "dynamo")))
    canon = [g.canonical() for g in graphs]
    texts = [str(c) for c in canon]
    assert all(t == texts[0] for t in texts), "\n\n".join(texts)
    for c in canon[1:]:  # exporters fold BatchNorm in float32 themselves: equal up to float32 rounding
        for n, t in canon[0].parameters().items():
            np.testing.assert_allclose(c.tensor(n), t, rtol=1e-5, atol=1e-7)
    x = data_inputs(sample(module, seed=2))
    eqs = [ref.equilibrium(g, x) for g in graphs]
    for eq in eqs[1:]:
        np.testing.assert_allclose(eq.outputs["logits"], eqs[0].outputs["logits"], atol=1e-6)
        np.testing.assert_allclose(eq.rates["z"], eqs[0].rates["z"], atol=1e-6)


def test_state_pairing_from_metadata_and_by_argument(tmp_path, onnx_files):
    model = onnx.load(str(onnx_files("digits_fb", "legacy")))
    for o in model.graph.output:  # rename the state output so that the naming convention cannot pair it
        if o.name == "z_next":
            o.name = "hidden"
    for n in model.graph.node:
        n.output[:] = ["hidden" if o == "z_next" else o for o in n.output]
        n.input[:] = ["hidden" if o == "z_next" else o for o in n.input]
    with pytest.raises(SpidecError, match=r"state input 'z': has no matching output 'z_next'.*hidden, logits"):
        spidec.frontends.onnx.load_onnx(model)  # the metadata still says z:z_next
    del model.metadata_props[:]
    with pytest.raises(SpidecError, match=r"state pairing is ambiguous: input 'z' and output 'hidden'"):
        spidec.frontends.onnx.load_onnx(model)  # nothing pairs z with hidden: refused (issue 18), not read silently
    g0 = spidec.frontends.onnx.load_onnx(model, state={})  # said to have no state: z is a second data input
    assert [i.name for i in g0.inputs] == ["x", "z"] and not any(e.synapse.delay for e in g0.synapses())
    g = spidec.frontends.onnx.load_onnx(model, state="z:hidden")
    assert g.synapse("fb").synapse.delay == 1
    helper.set_model_props(model, {"spidec.state": "z:hidden"})
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert spidec.load(path).canonical() == g.canonical()


def test_examples_dir_models_load_through_the_cli(run_cli):
    code, out, err = run_cli("inspect", "--torch", str(EXAMPLES / "models.py") + ":ConvNetF", "--no-text")
    assert code == 0, err
    assert "fb       z -> act1     1      conv_transpose2d" in out
    code, out, err = run_cli("inspect", str(EXAMPLES / "digits_fb.onnx"), "--no-text")
    assert code == 0 and "fb       z -> z       1" in out


# ------------------------------------------------------------------ hand-written ONNX graphs

def make_model(nodes, inputs, outputs, inits=(), opset=17, metadata=None, batch="N"):
    def vi(name, shape):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, *shape])

    graph = helper.make_graph(nodes, "g", [vi(n, s) for n, s in inputs], [vi(n, s) for n, s in outputs],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, metadata)
    return model


def check_against_ort(model, shapes, batch=4, seed=0):
    g = spidec.frontends.onnx.load_onnx(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feed = {n: rng.random((batch, *s)).astype(np.float32) for n, s in shapes.items()}
    outs = sess.run(None, feed)
    names = [o.name for o in model.graph.output]
    rates, readouts = ref.step(g, {k: v for k, v in feed.items() if k in {i.name for i in g.inputs}},
                               {"z": feed["z"]} if "z" in feed else None)
    for name, want in zip(names, outs):
        got = rates["z"] if name == "z_next" else readouts[name]
        np.testing.assert_allclose(got, want, atol=ATOL, err_msg=name)
    return g


def rnd(*shape, seed=0, scale=0.5):
    return (np.random.default_rng(seed + sum(shape)).standard_normal(shape) * scale).astype(np.float32)


def test_conv_batchnorm_pad_pools_matmul_clip_opset11():
    c = helper.make_node
    nodes = [
        c("Pad", ["x", "pads"], ["xp"], mode="constant"),
        c("Conv", ["xp", "w1", "b1"], ["c1"], pads=[1, 0, 0, 1], strides=[1, 1]),  # asymmetric pads
        c("BatchNormalization", ["c1", "g", "bb", "m", "v"], ["bn"], epsilon=1e-3),
        c("AveragePool", ["bn"], ["ap"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1]),
        c("Constant", [], ["lo"], value=numpy_helper.from_array(np.array(0, np.float32))),
        c("Constant", [], ["hi"], value=numpy_helper.from_array(np.array(1, np.float32))),
        c("Clip", ["ap", "lo", "hi"], ["a1"]),
        c("GlobalAveragePool", ["a1"], ["gp"]),
        c("Flatten", ["gp"], ["f"], axis=1),
        c("MatMul", ["f", "w2"], ["mm"]),
        c("MatMul", ["z", "wz"], ["fb"]),
        c("Add", ["mm", "b2"], ["mb"]),
        c("Add", ["mb", "fb"], ["pre"]),
        c("Clip", ["pre", "lo", "hi"], ["z_next"]),
        c("Gemm", ["z_next", "w3", "b3"], ["logits"], transB=1, alpha=0.5, beta=2.0),
    ]
    inits = {"pads": np.array([0, 0, 1, 1, 0, 0, 0, 0], np.int64), "w1": rnd(3, 2, 3, 3), "b1": rnd(3),
             "g": 1 + rnd(3) * 0.2, "bb": rnd(3), "m": rnd(3) * 0.1, "v": 0.5 + np.abs(rnd(3)),
             "w2": rnd(3, 5), "wz": rnd(5, 5, scale=0.2), "b2": rnd(5) + 0.3, "w3": rnd(4, 5), "b3": rnd(4)}
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 7, 6]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("z_next", TensorProto.FLOAT, ["N", 5]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    g = check_against_ort(model, {"x": (2, 7, 6), "z": (5,)})
    kinds = [op.kind for e in g.synapses() for op in e.synapse.ops]
    assert "pad" in kinds and "avgpool2d" in kinds and "scale" not in kinds  # BatchNorm folded into conv


def test_arithmetic_reshape_chain_and_other_clamps():
    c = helper.make_node
    nodes = [
        c("Gemm", ["x", "w1"], ["g1"], transB=1),
        c("Mul", ["g1", "k"], ["g2"]),  # per-feature constant
        c("Div", ["g2", "two"], ["g3"]),
        c("Sub", ["g3", "off"], ["g4"]),
        c("Neg", ["g4"], ["g5"]),
        c("Sum", ["g5", "g1", "off"], ["g6"]),
        c("HardSigmoid", ["g6"], ["a"], alpha=0.3, beta=0.4),
        c("Dropout", ["a"], ["ad"]),
        c("Identity", ["ad"], ["ai"]),
        c("Shape", ["ai"], ["sh"]),
        c("Gather", ["sh", "zero"], ["n"], axis=0),
        c("Unsqueeze", ["n", "axes0"], ["n1"]),
        c("Concat", ["n1", "dims"], ["target"], axis=0),
        c("Reshape", ["ai", "target"], ["r"]),  # [N, 2, 3], like x.view(x.size(0), 2, 3)
        c("Flatten", ["r"], ["rf"], axis=1),
        c("MatMul", ["z", "wz"], ["fb"]),
        c("Add", ["rf", "fb"], ["pre"]),
        c("Max", ["pre", "zero_f"], ["m0"]),
        c("Min", ["m0", "one_f"], ["z_next"]),  # clamp written as Max/Min
        c("Relu", ["z_next"], ["h"]),
        c("Gemm", ["h", "w3"], ["y"], transB=1),
        c("Softmax", ["y"], ["probs"], axis=1),
    ]
    inits = {"w1": rnd(6, 4), "k": rnd(6) + 1.0, "two": np.array(2.0, np.float32), "off": rnd(6) * 0.1,
             "zero": np.array(0, np.int64), "axes0": np.array([0], np.int64), "dims": np.array([2, 3], np.int64),
             "wz": rnd(6, 6, scale=0.2), "zero_f": np.array(0.0, np.float32), "one_f": np.array(1.0, np.float32),
             "w3": rnd(3, 6)}
    model = make_model(nodes, [("x", (4,)), ("z", (6,))], [("z_next", (6,)), ("probs", (3,))], inits.items(),
                       opset=13)
    for init in model.graph.initializer:
        if init.name in ("zero", "axes0", "dims"):
            init.CopyFrom(numpy_helper.from_array(inits[init.name], init.name))
    with pytest.warns(SpidecWarning) as record:
        g = spidec.frontends.onnx.load_onnx(model)
    messages = " ".join(str(w.message) for w in record)
    assert "ReLU is read as a population" in messages and "Softmax on this output is dropped" in messages
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    feed = {"x": rng.random((5, 4)).astype(np.float32), "z": rng.random((5, 6)).astype(np.float32)}
    z_next, probs = sess.run(None, feed)
    rates, outs = ref.step(g, {"x": feed["x"]}, {"z": feed["z"]})
    np.testing.assert_allclose(rates["z"], z_next, atol=ATOL)
    logits = outs["probs"]
    soft = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(soft / soft.sum(1, keepdims=True), probs, atol=ATOL)
    assert len(g.populations) == 3  # hardsigmoid, max/min clamp, relu


def test_fixed_batch_dimension_and_same_padding():
    c = helper.make_node
    nodes = [c("Conv", ["x", "w"], ["c1"], auto_pad="SAME_UPPER", strides=[2, 2]),
             c("Clip", ["c1", "lo", "hi"], ["a"]),
             c("Flatten", ["a"], ["f"]),
             c("Gemm", ["f", "w2"], ["y"], transB=1)]
    inits = {"w": rnd(2, 1, 3, 3), "w2": rnd(2, 18), "lo": np.array(0, np.float32), "hi": np.array(1, np.float32)}
    model = make_model(nodes, [("x", (1, 5, 5))], [("y", (2,))], inits.items(), batch=4)
    g = check_against_ort(model, {"x": (1, 5, 5)}, batch=4)
    assert g.synapses()[0].synapse.ops[0].padding == (1, 1)


# ------------------------------------------------------------------ refusals that teach

def refused(model, *words, **kw):
    with pytest.raises(SpidecError) as e:
        spidec.frontends.onnx.load_onnx(model, **kw)
    msg = str(e.value)
    for w in words:
        assert w in msg, msg
    assert "\n" not in msg
    return msg


def loop_model(middle, extra_inits=None, out_name="z_next", metadata=None):
    """x -> Gemm -> (+ z @ W) -> middle nodes -> out_name."""
    c = helper.make_node
    nodes = [c("Gemm", ["x", "w1"], ["g"], transB=1), c("MatMul", ["z", "wz"], ["fb"]), c("Add", ["g", "fb"], ["s"]),
             *middle]
    inits = {"w1": rnd(4, 3), "wz": rnd(4, 4, scale=0.2), "lo": np.array(0, np.float32),
             "hi": np.array(1, np.float32), **(extra_inits or {})}
    return make_model(nodes, [("x", (3,)), ("z", (4,))], [(out_name, (4,))], inits.items(), metadata=metadata)


def test_refuses_maxpool_naming_node_and_fix():
    c = helper.make_node
    model = make_model([c("MaxPool", ["x"], ["m"], kernel_shape=[2, 2], name="pool1"),
                        c("Clip", ["m", "lo", "hi"], ["y"])], [("x", (1, 4, 4))], [("y", (1, 2, 2))],
                       {"lo": np.array(0, np.float32), "hi": np.array(1, np.float32)}.items())
    refused(model, "node 'pool1' (MaxPool)", "use AveragePool")


@pytest.mark.parametrize("op, fix", [("Sigmoid", "Hardtanh(0, 1)"), ("Tanh", "Hardtanh(0, 1)")])
def test_refuses_sigmoid_and_tanh_inside_the_loop(op, fix):
    refused(loop_model([helper.make_node(op, ["s"], ["z_next"], name="act")]), f"node 'act' ({op})", fix)


def test_refuses_softmax_inside_the_loop():
    c = helper.make_node
    model = loop_model([c("Softmax", ["s"], ["sm"], name="sm"), c("Clip", ["sm", "lo", "hi"], ["z_next"], name="cl")])
    refused(model, "node 'cl' (Clip)", "(Softmax)", "apply softmax outside the model")


def test_refuses_a_state_input_without_matching_output():
    model = loop_model([helper.make_node("Clip", ["s", "lo", "hi"], ["h"])], out_name="h",
                       metadata={"spidec.state": "z:z_next"})
    refused(model, "state input 'z'", "has no matching output 'z_next'", "outputs are: h", "spidec.state")
    refused(model, "state input 'z'", "has no matching output 'nope'", state={"z": "nope"})


def test_refuses_a_product_of_two_signals():
    c = helper.make_node
    model = loop_model([c("Mul", ["s", "s"], ["sq"], name="square"), c("Clip", ["sq", "lo", "hi"], ["z_next"])])
    refused(model, "node 'square' (Mul)", "multiplies two signals", "linear")


def test_refuses_a_feedback_loop_without_population():
    model = loop_model([helper.make_node("Identity", ["s"], ["z_next"])])
    refused(model, "output 'z_next'", "no population", "clamp(0, 1)")


def test_refuses_other_clip_bounds():
    model = loop_model([helper.make_node("Clip", ["s", "hi", "hi"], ["z_next"], name="c")])
    refused(model, "node 'c' (Clip)", "clamp(x, 0, 1)")


def test_refuses_unknown_ops_and_listing_the_supported_ones():
    model = loop_model([helper.make_node("Erf", ["s"], ["e"], name="erf"), helper.make_node(
        "Clip", ["e", "lo", "hi"], ["z_next"])])
    refused(model, "node 'erf' (Erf)", "not supported", "Conv", "Gemm")


def test_bad_onnx_files(tmp_path, onnx_files):
    data = onnx_files("digits_fb", "legacy").read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 3])
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "text.onnx").write_text("this is not protobuf at all\n" * 10)
    for name, words in (("trunc", "not a valid ONNX model"), ("empty", "empty"), ("text", "not a valid ONNX")):
        with pytest.raises(SpidecError, match=words):
            spidec.load(tmp_path / f"{name}.onnx")
    model = loop_model([helper.make_node("Clip", ["s", "lo", "hi"], ["z_next"])])
    model.opset_import[0].version = 9
    refused(model, "opset 9 is not supported", "11-22")
    model = loop_model([helper.make_node("Clip", ["s", "lo", "hi"], ["z_next"])])
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "features"
    refused(model, "input 'x' has a dynamic dimension 1", "only the batch")


# ------------------------------------------------------------------ the PyTorch frontend's own forms

class Functional(nn.Module):
    """Functional forms: F.linear, torch.clamp, +, *, view(x.size(0), -1), F.avg_pool2d, BatchNorm2d,
    F.hardtanh, dropout, a feedback matmul, and an nn.ReLU."""

    spidec_inputs = {"x": (1, 6, 6), "z": (8,)}
    spidec_state = {"z": 0}
    spidec_outputs = ("z_next", "logits")

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 3, padding="same")
        self.bn = nn.BatchNorm2d(3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2, generator=g)
            self.bn.running_var.uniform_(0.5, 2.0, generator=g)
        self.w = nn.Parameter(torch.randn(8, 48, generator=g) * 0.3)
        self.b = nn.Parameter(torch.randn(8, generator=g) * 0.1 + 0.3)
        self.fb = nn.Parameter(torch.randn(8, 8, generator=g) * 0.1)
        self.relu = nn.ReLU()
        self.out = nn.Linear(8, 3)
        self.eval()

    def forward(self, x, z):
        c = torch.clamp(self.bn(self.conv(x)), 0.0, 1.0)
        p = F.avg_pool2d(c, 2, stride=2, padding=1, count_include_pad=False)
        h = F.linear(p.view(p.size(0), -1), self.w, self.b) + 0.5 * (z @ self.fb.T) - 0.1
        z_next = F.hardtanh(h, 0.0, 1.0)
        r = self.relu(z_next * 0.5)  # below 1: ReLU and the population's clamp(0, 1) agree
        return z_next, self.out(F.dropout(r, 0.2, self.training))


def test_torch_functional_forms_match_the_module():
    module = Functional()
    with pytest.warns(SpidecWarning, match="ReLU"):
        g = spidec.from_torch(module)
    assert [p.name for p in g.populations] == ["clamp", "z", "relu"]
    check_step_and_equilibrium(g, torch_step(module), sample(module, batch=5))


class Bad(nn.Module):
    spidec_inputs = {"x": (4,), "z": (4,)}
    spidec_outputs = ("z_next", "y")

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.lin = nn.Linear(4, 4)
        self.pool = nn.MaxPool2d(2)
        self.sig = nn.Sigmoid()

    def forward(self, x, z):
        h = self.lin(x) + z
        if self.kind == "maxpool":
            h = self.pool(h.view(h.size(0), 1, 2, 2)).flatten(1).repeat(1, 4)
        elif self.kind == "sigmoid":
            h = self.sig(h)
        elif self.kind == "softmax":
            h = torch.softmax(h, dim=1)
        elif self.kind == "product":
            h = h * self.lin(z)
        elif self.kind == "cat":
            h = torch.cat([h, h], 1)[:, :4]
        elif self.kind == "partial_flatten":
            h = h.view(h.size(0), 2, 2, 1).flatten(1, 2).flatten(1)
        z_next = h if self.kind == "linear_loop" else torch.clamp(h, 0, 1)
        return z_next, self.lin(z_next)


@pytest.mark.parametrize("kind, words", [
    ("maxpool", ["node 'pool' (MaxPool2d)", "nn.AvgPool2d"]),
    ("sigmoid", ["node 'sig' (Sigmoid)", "nn.Hardtanh(0, 1)"]),
    ("softmax", ["(Softmax)", "apply softmax outside"]),
    ("product", ["multiplies two signals"]),
    ("cat", ["concatenation is not supported", "own synapse"]),
    ("partial_flatten", ["flattens only part of the sample"]),  # x.flatten(1, 2): it used to flatten all
    ("linear_loop", ["output 'z_next'", "no population", "clamp(0, 1)"]),
])
def test_torch_refusals_name_the_node_and_the_fix(kind, words):
    with pytest.raises(SpidecError) as e:
        spidec.from_torch(Bad(kind))
    for w in words:
        assert w in str(e.value), str(e.value)


def test_torch_state_without_output_and_untraceable_modules():
    with pytest.raises(SpidecError, match="state input 'z': has no matching output 'h_next'"):
        spidec.from_torch(Bad("plain"), state={"z": "h_next"})

    class Branchy(nn.Module):
        def forward(self, x, z):
            if x.sum() > 0:
                return torch.clamp(x, 0, 1), x
            return x, x

    with pytest.raises(SpidecError, match=r"torch\.fx cannot trace Branchy\.forward"):
        spidec.from_torch(Branchy(), inputs={"x": (2,), "z": (2,)})
    with pytest.raises(SpidecError, match="no shape given for the forward argument"):
        spidec.from_torch(Functional(), inputs={"x": (1, 6, 6)})


def test_warnings_are_spidec_warnings():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        spidec.from_torch(Functional())
    assert record and all(issubclass(w.category, SpidecWarning) for w in record)
