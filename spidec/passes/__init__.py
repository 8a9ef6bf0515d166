"""Passes: pure ``Graph -> Graph`` functions (the input graph is never changed), composable into
pipelines. ``PIPELINE`` is the order ``spidec compile`` runs them in; ``run(g, upto=NAME)`` stops
after the named pass (what ``spidec inspect --after NAME`` prints).

* ``spiking``  -- neuron models, thresholds, ``T`` forward steps, input encoding
* ``spide``    -- ternary couples, backward synapses, loss injection, local update rules, optimiser
* ``schedule`` -- per-step order of both stages and their delays
* ``lower``    -- the step program: what every backend reads (:mod:`spidec.program`)

and, on request after them, ``quantize`` (fixed-point scales: :mod:`spidec.fixed`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ..errors import SpidecError
from ..ir import Graph
from .lower import lower
from .quantize import quantize
from .schedule import schedule
from .spide import spide
from .spiking import spiking

PIPELINE: dict[str, Callable[..., Graph]] = {"spiking": spiking, "spide": spide, "schedule": schedule,
                                             "lower": lower}


def options_of(name: str) -> list[str]:
    return [p for p in inspect.signature(PIPELINE[name]).parameters if p != "g"]


def kept_options(g: Graph) -> dict[str, Any]:
    """The pass options a graph that already went through the passes holds (its simulation and
    training settings): what running the passes on it again keeps unless an option is given."""
    kept: dict[str, Any] = {}
    if g.simulation is not None:
        kept.update(T=g.simulation.T, encoding=g.simulation.encoding)
    t = g.training
    if t is not None:
        o = t.optimizer
        kept.update(T_back=t.T_back, sf=t.sf, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                    milestones=tuple(o.milestones), gamma=o.gamma, feedback_norm=o.feedback_norm,
                    feedback_norm_mode=o.feedback_norm_mode)
        thresholds = {c.vth for c in t.couples}
        if len(thresholds) == 1:  # (the spide pass gives every couple the same threshold)
            kept["vth_back"] = thresholds.pop()
    return kept


def run(g: Graph, upto: str | None = None, **options: Any) -> Graph:
    """Run the pipeline (up to and including ``upto``); each option goes to the pass that takes it.
    On a graph that already went through the passes, every option not given keeps the graph's value
    (:func:`kept_options`: ``run(trained, T=40)`` changes T only), not the pass's default."""
    if upto is not None and upto not in PIPELINE:
        raise SpidecError(f"unknown pass '{upto}'; the passes are: {', '.join(PIPELINE)}")
    known = {o for name in PIPELINE for o in options_of(name)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SpidecError(f"unknown pass option(s) {', '.join(unknown)}; the options are: {', '.join(sorted(known))}")
    options = {**{k: v for k, v in kept_options(g).items() if k in known}, **options}
    for name, fn in PIPELINE.items():
        g = fn(g, **{k: v for k, v in options.items() if k in options_of(name)})
        if name == upto:
            break
    return g


__all__ = ["PIPELINE", "lower", "quantize", "run", "schedule", "spide", "spiking"]
