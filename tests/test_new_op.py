"""Adding a linear op: the op class (with its OPS registration for the text form), one entry in
the sim backend's op table and one in the C backend's kernel table with its macro. The toy op
below lives in its own module and is registered for the test only; the sim and C programs built
with it must agree with the exact reference and with each other."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from conftest import _u

import spidec
from spidec import Dense, Graph
from spidec import reference as ref

TOY = '''
from dataclasses import dataclass
from typing import ClassVar
from spidec.ops import LinearOp

@dataclass(frozen=True, eq=False)
class Negate(LinearOp):
    """y = -x: a linear op with no tensor."""
    kind: ClassVar[str] = "negate"
    step_kernel: ClassVar[str] = "negate"

    def shape_out(self, shape_in):
        return tuple(shape_in)

    def apply(self, x):
        return -x

    def adjoint(self, y, shape_in):
        return -y

NEGATE_C = """
{% macro negate(s) %}
/* synapse {{ s.name }}: y = -x ({{ s.n }} values) */
static inline void fw_{{ s.c }}(float *restrict dst, const int *restrict idx, int n, float a) {
    for (int e = 0; e < n; e++) dst[idx[e]] -= a;
    synops[0] += (uint64_t)n;
}
static inline void fwv_{{ s.c }}(float *restrict dst, const float *restrict src, float a) {
    for (int i = 0; i < {{ s.n }}; i++) dst[i] -= a * src[i];
}
static inline void bw_{{ s.c }}(float *restrict dst, const int *restrict idx, const float *restrict val, int n,
                                float a) {
    for (int e = 0; e < n; e++) dst[idx[e]] -= a * val[e];
    synops[1] += (uint64_t)n;
}
static inline void bwv_{{ s.c }}(float *restrict dst, const float *restrict src, float a) {
    for (int k = 0; k < {{ s.n }}; k++) dst[k] -= a * src[k];
}
{% endmacro %}
"""

def register(setitem):
    """The three registrations: the text form, the sim emitter, the C kernel."""
    from spidec.ops import OPS
    from spidec.backends.sim import SIM_OPS, SimOp
    from spidec.backends.c import C_KERNELS, CKernel

    setitem(OPS, "negate", Negate)
    setitem(SIM_OPS, Negate, SimOp(lambda cg, syn, i, op, x, s: f"(-{x})", lambda cg, syn, i, op, y, s: f"(-{y})"))
    setitem(C_KERNELS, "negate", CKernel("negate", source=NEGATE_C))
'''


@pytest.fixture
def negate(tmp_path, monkeypatch):
    path = tmp_path / "toy_negate.py"
    path.write_text(TOY)
    spec = importlib.util.spec_from_file_location("toy_negate", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.register(monkeypatch.setitem)
    return mod.Negate


def graph(Negate) -> Graph:
    rng = np.random.default_rng(3)
    g = Graph("negated")
    g.add_input("x", [5])
    g.add_population("a", [6], bias=_u(rng, (6,), 0.2))
    g.add_population("b", [6], bias=np.full(6, 0.8))
    g.add_readout("y", [3])
    g.add_synapse("x", "a", Dense(_u(rng, (6, 5), 0.8)))
    g.add_synapse("a", "b", Negate(), name="neg")
    g.add_synapse("b", "a", Dense(_u(rng, (6, 6), 0.4)), delay=1)
    g.add_synapse("b", "y", Dense(_u(rng, (3, 6), 1.0)))
    return g.validate()


def test_a_new_op_in_its_own_module_runs_on_sim_and_c(negate, tmp_path):
    pytest.importorskip("torch")
    g = graph(negate)
    text, tensors = spidec.text.dumps(g, inline_max=0)
    assert "= negate" in text and spidec.text.loads(text, tensors) == g  # the text form reads it
    t = spidec.passes.run(g)
    assert t.program.chain("neg").kernel == "negate"
    x = np.random.default_rng(0).uniform(0, 1, (16, 5))
    exact = ref.equilibrium(ref.effective(t).astype(np.float64), {"x": x}).rates  # (feedback as restricted)
    sim = spidec.compile(t, target="sim", out=tmp_path / "sim")
    c = spidec.compile(t, target="c", out=tmp_path / "c")
    assert "y = -x" in (Path(c.out) / "model.c").read_text()
    r_sim, r_c = sim.rates(x), c.rates(x)
    for p in ("a", "b"):
        # spike rates against the exact equilibrium: T=30 rounding (1/60 per step, compounded)
        assert np.abs(r_sim[p] - exact[p]).mean() < 0.02, p
        # the same float32 spikes in both programs, but for threshold ties (1/30)
        assert np.abs(r_c[p] - r_sim[p]).max() <= 1 / 30 + 1e-6, p
    assert r_sim["b"].mean() > 0.05  # the negated path carries spikes
