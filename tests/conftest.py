"""Shared graph builders for the tests (all float64 unless said otherwise)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import spidec
from spidec import AvgPool2d, Conv2d, Dense, Flatten, Graph, Neuron, Reshape, Scale

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"  # imported by the test modules


def _u(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    return rng.uniform(-scale, scale, size=shape)


def _norm_to(w: np.ndarray, norm: float) -> np.ndarray:
    return w * (norm / np.linalg.norm(w))


def dense_feedback(seed: int = 0) -> Graph:
    """x[6] -> h[8] with delayed self-feedback, -> readout[4]."""
    rng = np.random.default_rng(seed)
    g = Graph("dense_fb")
    g.add_input("x", [6])
    g.add_population("h", [8], bias=_u(rng, (8,), 0.3))
    g.add_readout("y", [4], bias=_u(rng, (4,), 0.3))
    g.add_synapse("x", "h", Dense(_u(rng, (8, 6), 0.8)))
    g.add_synapse("h", "h", Dense(_norm_to(rng.standard_normal((8, 8)), 1.2)), delay=1)
    g.add_synapse("h", "y", Dense(_u(rng, (4, 8), 1.0)))
    return g.validate()


def conv_feedback(seed: int = 0) -> Graph:
    """img[1,6,6] -conv3 p1-> c1[3,6,6] -avgpool2-> c2[3,3,3] (per-channel bias) with a feedback
    c2 -> c1 through flatten |> dense |> reshape, and a readout from c2."""
    rng = np.random.default_rng(seed)
    g = Graph("conv_fb")
    g.add_input("img", [1, 6, 6])
    g.add_population("c1", [3, 6, 6], bias=_u(rng, (3,), 0.2))
    g.add_population("c2", [3, 3, 3], Neuron("LIF", vth=0.5, leak=0.9), bias=_u(rng, (3,), 0.2))
    g.add_readout("y", [5])
    g.add_synapse("img", "c1", Conv2d(_u(rng, (3, 1, 3, 3), 0.9), stride=1, padding=1), name="conv1")
    g.add_synapse("c1", "c2", [AvgPool2d(2), Conv2d(_u(rng, (3, 3, 3, 3), 0.7), padding=1), Scale(1.5)],
                  name="pool_conv")
    g.add_synapse("c2", "c1", [Flatten(), Dense(_norm_to(rng.standard_normal((108, 27)), 1.5)),
                               Reshape((3, 6, 6))], delay=1, name="fb")
    g.add_synapse("c2", "y", [Flatten(), Dense(_u(rng, (5, 27), 0.8))], name="cls")
    return g.validate()


def two_feedback(seed: int = 0) -> Graph:
    """x -> a -> b -> c with two feedback edges (c -> a and b -> b), two inputs and a skip x2 -> c."""
    rng = np.random.default_rng(seed)
    g = Graph("two_fb")
    g.add_input("x", [5])
    g.add_input("x2", [3])
    for name, n in (("a", 7), ("b", 6), ("c", 5)):
        g.add_population(name, [n], bias=_u(rng, (n,), 0.3))
    g.add_readout("y", [3], bias=_u(rng, (3,), 0.2))
    g.add_synapse("x", "a", Dense(_u(rng, (7, 5), 0.9)))
    g.add_synapse("a", "b", Dense(_u(rng, (6, 7), 0.8)))
    g.add_synapse("b", "c", Dense(_u(rng, (5, 6), 0.8)))
    g.add_synapse("x2", "c", [Scale(0.5), Dense(_u(rng, (5, 3), 0.8))])
    g.add_synapse("c", "a", Dense(_norm_to(rng.standard_normal((7, 5)), 1.0)), delay=1)
    g.add_synapse("b", "b", Dense(_norm_to(rng.standard_normal((6, 6)), 0.8)), delay=1)
    g.add_synapse("c", "y", Dense(_u(rng, (3, 5), 1.0)))
    return g.validate()


GRAPHS = {"dense_feedback": dense_feedback, "conv_feedback": conv_feedback, "two_feedback": two_feedback}


def random_inputs(g: Graph, batch: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i.name: rng.random((batch,) + i.shape) for i in g.inputs}


@pytest.fixture
def examples_dir() -> Path:
    return EXAMPLES


@pytest.fixture
def run_cli(capsys):
    """Run the CLI in process; returns (exit code, stdout, stderr)."""
    from spidec.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse usage errors and --version
            code = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


__all__ = ["GRAPHS", "conv_feedback", "dense_feedback", "random_inputs", "spidec", "sys", "two_feedback"]
