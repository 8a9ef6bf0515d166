"""Build the example models of examples/ as .spir files (IR text + .npz tensors).

    python examples/build_examples.py          # rewrites examples/*.spir and *.npz

Weights are initialised as PyTorch initialises nn.Linear (uniform +-1/sqrt(fan_in)), float32, from
a fixed seed, so the files are reproducible byte for byte. The feedback weight is rescaled to
Frobenius norm 1 (below SPIDE's restriction of 2) so that the loop contracts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import spidec

HERE = Path(__file__).resolve().parent


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def feedback_mlp(name: str, n_in: int, n_hidden: int, n_out: int, seed: int, fb_norm: float = 1.0) -> spidec.Graph:
    """``x -> h`` with a delayed self-feedback ``h -> h`` and a readout ``h -> y``."""
    rng = np.random.default_rng(seed)
    g = spidec.Graph(name)
    g.add_input("x", [n_in])
    g.add_population("h", [n_hidden], spidec.Neuron("IF", vth=1.0), bias=_uniform(rng, (n_hidden,), n_in))
    g.add_readout("y", [n_out], bias=_uniform(rng, (n_out,), n_hidden))
    g.add_synapse("x", "h", spidec.Dense(_uniform(rng, (n_hidden, n_in), n_in)), name="x_h")
    fb = _uniform(rng, (n_hidden, n_hidden), n_hidden)
    fb *= np.float32(fb_norm / np.linalg.norm(fb))
    g.add_synapse("h", "h", spidec.Dense(fb), delay=1, name="h_h")
    g.add_synapse("h", "y", spidec.Dense(_uniform(rng, (n_out, n_hidden), n_hidden)), name="h_y")
    return g.validate()


EXAMPLES = {
    # the 8x8 digits: 64 -> 128 hidden with hidden->hidden feedback -> 10
    "digits_fb": lambda: feedback_mlp("digits_fb", 64, 128, 10, seed=1),
    # MNIST: 784 -> 256 with self-feedback -> 10 (the FC model of SPIDE.md's cost table)
    "mnist_mlp_fb": lambda: feedback_mlp("mnist_mlp_fb", 784, 256, 10, seed=2),
}


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else HERE
    for name, build in EXAMPLES.items():
        path = spidec.save(build(), out / f"{name}.spir")
        print(f"wrote {path} and {path.with_suffix('.npz').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
