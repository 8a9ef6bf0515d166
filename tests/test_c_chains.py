"""Op chains in the float C backend (backends/c ``chain_kernel``): synapses of several linear ops
(``avgpool2d |> flatten |> dense``, ``pad |> conv2d``, ``avgpool2d |> scale(tensor)``, a feedback
``dense |> reshape |> conv_transpose2d |> pad``, ``avgpool2d |> conv2d |> scale``) compiled to C,
built and run against the sim program and spidec.reference under the conformance suite's
tolerances (tests/test_conformance.py ``TOLERANCE``): forward counts, logits, one learn step's
gradients, and the weights after a few SGD steps.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import conv_feedback
from test_conformance import REFERENCE, TARGETS, TOLERANCE, cosine

import spidec
from spidec import AvgPool2d, Conv2d, ConvTranspose2d, Dense, Flatten, Graph, Pad, Reshape, Scale, SpidecError, passes
from spidec import reference as ref
from spidec.program import ReadoutBiasRule, ReadoutWeightRule

pytestmark = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None,
                                reason="the C backend needs a C compiler (cc) and make")
torch = pytest.importorskip("torch", reason="the chains are compared with the sim backend")

T, T_BACK, SF, BATCH = 30, 100, 5.0, 8


def _u(rng: np.random.Generator, *shape: int, s: float = 0.5) -> np.ndarray:
    return rng.uniform(-s, s, shape)


def pool_fc(seed: int = 0) -> Graph:
    """An ordinary conv net's head: img[1,8,8] -conv3 p1-> c1[4,8,8] -avgpool2 |> flatten |> dense->
    h[10], feedback h -> c1 through dense |> reshape (delayed), and a readout of c1 through its own
    avgpool2 |> flatten |> dense (a chain under the readout's delta rule and loss injection)."""
    rng = np.random.default_rng(seed)
    g = Graph("pool_fc")
    g.add_input("img", [1, 8, 8])
    g.add_population("c1", [4, 8, 8], bias=_u(rng, 4, s=0.2) + 0.1)
    g.add_population("h", [10], bias=_u(rng, 10, s=0.2) + 0.1)
    g.add_readout("y", [3], bias=_u(rng, 3))
    g.add_synapse("img", "c1", Conv2d(_u(rng, 4, 1, 3, 3, s=1.0), 1, 1), name="conv1")
    g.add_synapse("c1", "h", [AvgPool2d(2), Flatten(), Dense(_u(rng, 10, 64, s=0.5))], name="pool_fc")
    g.add_synapse("h", "c1", [Dense(_u(rng, 256, 10, s=0.3)), Reshape((4, 8, 8))], delay=1, name="fb")
    g.add_synapse("c1", "y", [AvgPool2d(2), Flatten(), Dense(_u(rng, 3, 64, s=0.8))], name="cls_c1")
    g.add_synapse("h", "y", Dense(_u(rng, 3, 10, s=1.0)), name="cls")
    return g.validate()


def pad_scale(seed: int = 0) -> Graph:
    """Pads and tensor scales: img[1,6,6] -pad 1 |> conv3-> c1[3,6,6] -avgpool2 |> scale[3,1,1] |>
    flatten |> dense |> scale 1.5-> h[8] -> y, and the feedback h -> c1 through dense |> reshape |>
    a frozen conv_transpose2d (stride 2) |> pad (the learnable dense first, two links after it)."""
    rng = np.random.default_rng(seed)
    g = Graph("pad_scale")
    g.add_input("img", [1, 6, 6])
    g.add_population("c1", [3, 6, 6], bias=_u(rng, 3, 6, 6, s=0.2) + 0.1)
    g.add_population("h", [8], bias=_u(rng, 8, s=0.2) + 0.1)
    g.add_readout("y", [3], bias=_u(rng, 3))
    g.add_synapse("img", "c1", [Pad(((0, 0), (1, 1), (1, 1))), Conv2d(_u(rng, 3, 1, 3, 3, s=1.0))], name="conv1")
    g.add_synapse("c1", "h", [AvgPool2d(2), Scale(_u(rng, 3, 1, 1, s=0.5) + 1.0), Flatten(),
                              Dense(_u(rng, 8, 27, s=0.5)), Scale(1.5)], name="pool_fc")
    g.add_synapse("h", "c1", [Dense(_u(rng, 12, 8, s=0.4)), Reshape((3, 2, 2)),
                              ConvTranspose2d(_u(rng, 3, 3, 2, 2, s=0.6), 2, trainable=False),
                              Pad(((0, 0), (1, 1), (1, 1)))], delay=1, name="fb")
    g.add_synapse("h", "y", Dense(_u(rng, 3, 8, s=1.0)), name="cls")
    return g.validate()


GRAPHS = {"pool_fc": pool_fc, "pad_scale": pad_scale,
          # conftest's conv_feedback: avgpool2d |> conv2d |> scale into a LIF population
          "conv_fb": conv_feedback}


class Lab:
    def __init__(self, tmp) -> None:
        self.tmp, self.cache = tmp, {}

    def graph(self, name: str) -> Graph:
        if ("g", name) not in self.cache:
            self.cache["g", name] = passes.run(GRAPHS[name](), T=T, T_back=T_BACK, sf=SF)
        return self.cache["g", name]

    def data(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        g = self.graph(name)
        rng = np.random.default_rng(1)
        return rng.random((BATCH, *g.inputs[0].shape)), rng.integers(0, g.readouts[0].shape[0], BATCH)

    def handle(self, target: str, name: str):
        if (target, name) not in self.cache:
            t = TARGETS[target]
            self.cache[target, name] = t.load(t.compile(self.graph(name), self.tmp / f"{target}-{name}"))
        return self.cache[target, name]

    def run(self, target: str, name: str):
        if ("run", target, name) not in self.cache:
            self.cache["run", target, name] = TARGETS[target].run(self.handle(target, name), self.graph(name),
                                                                  *self.data(name))
        return self.cache["run", target, name]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return Lab(tmp_path_factory.mktemp("chains"))


def _flat(d: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([v.reshape(len(v), -1) for v in d.values()], axis=1)


@pytest.mark.parametrize("name", list(GRAPHS))
def test_chains_compile_to_c_with_the_first_link_event_driven(name, lab):
    g = lab.graph(name)
    art = spidec.compile(g, target="c", out=lab.tmp / f"code-{name}")
    code = (art.out / "model.c").read_text()
    chains = [ch for ch in g.program.chains if ch.kernel == "chain"]
    assert chains
    for ch in chains:
        first = next(i for i in ch.ops if not g.synapse(ch.name).synapse.ops[i].view)
        assert f"static inline void fw_{ch.name}(" in code
        assert f"    fw_{ch.name}_op{first}(" in code  # the source's spikes through the first link's scatter


@pytest.mark.parametrize("name", list(GRAPHS))
def test_chain_models_match_sim_f32(name, lab):
    """The conformance suite's (c, sim_f32) tolerances: >= 99.9% of counts equal, logits to 1e-4,
    each learn-step gradient with cosine >= 0.999 and relative L2 difference <= 5%."""
    tol = TOLERANCE["c", "sim_f32"]
    c, s = lab.run("c", name), lab.run("sim_f32", name)
    same = np.mean(np.abs(_flat(c.counts) - _flat(s.counts)) < 1e-3)
    assert same >= tol["counts_agree"], same
    np.testing.assert_allclose(c.logits, s.logits, rtol=tol["logits_tol"], atol=tol["logits_tol"])
    assert set(s.grads) <= set(c.grads)
    for k in set(c.grads) - set(s.grads):  # frozen tensors (the C runtime lists every tensor)
        assert not np.any(c.grads[k]), k
    for k in s.grads:
        assert cosine(c.grads[k], s.grads[k]) >= tol["grad_cos"], k
        rel = np.linalg.norm(c.grads[k] - s.grads[k]) / np.linalg.norm(s.grads[k])
        assert rel <= tol["grad_rtol"], (k, rel)


# (conv_fb is left out: its backward stage differs between sim in float64 and in float32, by up to
# 43 ternary spikes per couple of c1 on this batch, with equal forward counts; the C runtime equals
# sim_f32 there (gradients within 1e-7, test above), sim in float64 matches the reference (cosine
# >= 0.988), float32 does not (c1.bias 0.40): a float32 property of that LIF graph, not of chains)
@pytest.mark.parametrize("name", ["pool_fc", "pad_scale"])
def test_chain_models_match_the_reference(name, lab):
    """The suite's tolerances against the exact equilibrium and implicit gradient: mean |a - a*|
    <= 0.015, gradient cosine >= 0.85 (local rules) and >= 0.999 (readout rules)."""
    tol = TOLERANCE["c", REFERENCE]
    g = lab.graph(name)
    x, y = lab.data(name)
    r = ref.gradients(g, x, y)
    run = lab.run("c", name)
    exact = {p: r.equilibrium.rates[p].reshape(len(x), -1) for p in run.rates}
    mae = float(np.mean(np.abs(_flat(run.rates) - _flat(exact))))
    assert mae <= tol["rates_mae"], mae
    readout = {u.tensor for u in g.program.rules if isinstance(u, (ReadoutWeightRule, ReadoutBiasRule))}
    assert set(r.params) <= set(run.grads)
    for k, v in r.params.items():
        bound = tol["readout_cos"] if k in readout else tol["grad_cos"]
        assert cosine(run.grads[k], SF * v) >= bound, k


@pytest.mark.parametrize("name", list(GRAPHS))
def test_chain_training_steps_match_sim(name, lab, tmp_path):
    """Three SGD steps of 4 samples each (momentum, weight decay, the norm restriction of the
    feedback weights) in C and in the sim program: every tensor's change from the initial weights
    with cosine >= 0.999 and relative difference <= 5% (the learn step's tolerances)."""
    g = lab.graph(name)
    rt = spidec.compile(g, target="c", out=tmp_path / "c").build()
    sim = spidec.compile(g, target="sim", out=tmp_path / "sim")
    net, prog = sim.load(), sim.module()
    tol = TOLERANCE["c", "sim_f32"]
    rng = np.random.default_rng(2)
    x = rng.random((12, *g.inputs[0].shape)).astype(np.float32)
    y = rng.integers(0, g.readouts[0].shape[0], 12)
    before = rt.get_weights()
    for b in range(3):
        xb, yb = x[4 * b: 4 * b + 4], y[4 * b: 4 * b + 4]
        rt.learn_batch(xb, yb)
        rt.step(0.05)
        prog.train_step(net, {g.inputs[0].name: torch.from_numpy(xb)}, torch.from_numpy(yb), 0.05)
    after_sim, after_c = net.tensors(), rt.get_weights()
    moved = 0
    for k in before:
        da, db = np.asarray(after_sim[k]).ravel() - before[k], after_c[k] - before[k]
        if not np.any(da):
            assert not np.any(db), k  # a frozen tensor
            continue
        moved += 1
        assert cosine(da, db) >= tol["grad_cos"], k
        assert np.linalg.norm(da - db) / np.linalg.norm(da) <= tol["grad_rtol"], k
    assert moved >= 4


def test_fixed_point_refuses_a_chain():
    from spidec.fixed import quantize

    rng = np.random.default_rng(0)
    g = Graph("dense_chain")
    g.add_input("x", [6])
    g.add_population("h", [10], bias=_u(rng, 10, s=0.2))
    g.add_readout("y", [3])
    g.add_synapse("x", "h", [Dense(_u(rng, 8, 6)), Pad(((1, 1),))], name="in_pad")
    g.add_synapse("h", "h", Dense(_u(rng, 10, 10, s=0.2)), delay=1, name="fb")
    g.add_synapse("h", "y", Dense(_u(rng, 3, 10)), name="cls")
    g = passes.run(g.validate(), T=T, T_back=T_BACK, sf=SF)
    with pytest.raises(SpidecError, match=r"synapse 'in_pad': fixed point cannot run the op chain dense \|> pad"):
        quantize(g)


def test_two_learnable_ops_in_one_synapse_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    g = Graph("two_dense")
    g.add_input("x", [6])
    g.add_population("h", [5], bias=_u(rng, 5, s=0.2))
    g.add_readout("y", [3])
    g.add_synapse("x", "h", [Dense(_u(rng, 8, 6)), Dense(_u(rng, 5, 8))], name="deep")
    g.add_synapse("h", "h", Dense(_u(rng, 5, 5, s=0.2)), delay=1, name="fb")
    g.add_synapse("h", "y", Dense(_u(rng, 3, 5)), name="cls")
    with pytest.raises(SpidecError, match=r"synapse 'deep': the C backend trains one learnable op per synapse, "
                                          r"this one has 2 \(dense, dense\)"):
        spidec.compile(passes.run(g.validate()), target="c", out=tmp_path / "c")
