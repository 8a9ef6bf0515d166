"""Backends: the lowered training graph (its step program, :mod:`spidec.program`) into programs
that run and train it.

Installed as ``spidec.backends``; each backend is its own package (module plus jinja2 templates)
that reads only the step program and offers:

* ``emit(graph, out, ...) -> artifact`` (the artifact has ``next_steps()``; it writes the build
  manifest ``spidec.json`` with :func:`spidec.runs.write_manifest`),
* ``train_build(out, opts, say)`` and ``TRAIN_OPTIONS`` for ``spidec train`` (:mod:`spidec.runs`).

Registering a backend is one entry in ``TARGETS``. Every backend is tested against
:mod:`spidec.reference` and against the others (``tests/test_conformance.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jinja2

from ..errors import SpidecError


class Target(NamedTuple):
    description: str
    module: str  # import path of the backend package

    def __str__(self) -> str:
        return self.description


TARGETS: dict[str, Target] = {
    "sim": Target("PyTorch simulator program (CPU/CUDA, torchrun)", "spidec.backends.sim"),
    "c": Target("C99 program that trains on the device (host executable, shared library, Cortex-M boards)",
                "spidec.backends.c"),
    "lava": Target("Lava Processes trained in Lava's simulator (optional extra: spidec[lava])", "spidec.backends.lava"),
}


def environment(templates: Path, **filters: Callable[..., Any]) -> jinja2.Environment:
    """The one jinja2 set-up of every backend's templates: undefined names are errors, block tags
    leave no blank lines, files keep their final newline."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(filters)
    return env


def get(target: str) -> Any:
    """The backend module for ``target``."""
    if target not in TARGETS:
        raise SpidecError(f"unknown target '{target}'; spidec compiles to: "
                          + ", ".join(f"{k} ({v})" for k, v in TARGETS.items()))
    return importlib.import_module(TARGETS[target].module)


__all__ = ["TARGETS", "Target", "environment", "get"]
