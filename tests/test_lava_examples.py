"""The examples LeNet-F and ConvNet-F (examples/models.py) compiled to the Lava target and run in
Lava's simulator on MNIST (issue 17): their conv, pool and transposed-conv synapses are ChainSynapse
processes that apply the op chain to each step's spikes (no dense matrix: LeNet-F's pool1 alone
was a 11760 x 2940 matrix). Checked against the sim backend in float64 with test_lava_more's
tolerances: every population's forward and backward spike counts within one spike per neuron (a
float64 threshold tie can flip under another summation order: the chain sums in numpy's order,
the sim program in torch's; no flip is expected, it is the bound), the logits to 1e-9, and one
training step of two samples to rtol 1e-9. Sizes for 2 cores: LeNet-F as it is, ConvNet-F with 8
channels (its structure; 64 channels is bench/lava_examples.py's), two samples each, the passes'
T 30 and T_back 100. The full-size throughput and accuracy: bench/lava_examples.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import spidec
from spidec.data import mnist

pytest.importorskip("lava", reason="Lava is an optional extra (the test command installs it)")
torch = pytest.importorskip("torch")
from test_lava_more import _both, _stages_equal_sim, _training_equals_sim  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from models import EXAMPLES  # noqa: E402


def example(name: str, **kwargs) -> spidec.Graph:
    """The example in eval mode (ConvNet-F's dropout is the identity then: the lava target runs no
    dropout), through the passes with their defaults."""
    torch.manual_seed(0)
    return spidec.passes.run(spidec.from_torch(EXAMPLES[name](**kwargs).eval(), name=name))


def _mnist(n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    ds = mnist()
    return ds.x_train[:n].astype(np.float64), ds.y_train[:n]


@pytest.mark.parametrize("name, kwargs", [("lenet_f", {}), ("convnet_f", {"channels": 8})],
                         ids=["lenet_f", "convnet_f8"])
def test_example_spikes_and_trains_in_lava_as_in_sim(name, kwargs, tmp_path):
    g = example(name, **kwargs)
    chains = {ch.name: ch.kernel for ch in g.program.chains if ch.src in {p.name for p in g.program.populations}}
    assert {"conv", "convt", "pool"} & set(chains.values()), chains
    net, snet, sprog = _both(g, tmp_path)
    try:
        assert {type(net.fw[c]).__name__ for c, k in chains.items() if k != "dense"} == {"ChainSynapse"}
        x, y = _mnist()
        assert _stages_equal_sim(g, net, snet, sprog, x, y, reach_back=True) >= 100
        _training_equals_sim(net, snet, sprog, x, y, steps=1, inp=g.inputs[0].name)
    finally:
        net.close()
