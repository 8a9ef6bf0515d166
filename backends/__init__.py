"""Backends: the training graph into programs that run and train it.

Installed as ``spidec.backends``; each backend is one module plus its jinja2 templates:

* ``sim`` -- a self-contained PyTorch program (CPU/CUDA, ``torchrun`` data parallelism)

The C runtime and Lava backends join here (see the project's issues). Every backend is tested
against :mod:`spidec.reference` and against the others.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import SpidecError

TARGETS: dict[str, str] = {
    "sim": "PyTorch simulator program (CPU/CUDA, torchrun)",
    "c": "C99 program that trains on the device (host executable and shared library)",
    "lava": "Lava Processes trained in Lava's simulator (optional extra: spidec[lava])",
}


def get(target: str) -> Any:
    """The backend module for ``target`` (it has ``emit(graph, out) -> artifact``)."""
    if target not in TARGETS:
        raise SpidecError(f"unknown target '{target}'; spidec compiles to: "
                          + ", ".join(f"{k} ({v})" for k, v in TARGETS.items()))
    return importlib.import_module(f"{__name__}.{target}")
