"""``spidec.compile``: a model graph into a training program for a target."""

from __future__ import annotations

import os
from typing import Any

from .ir import Graph


def compile(g: Graph, target: str = "sim", out: str | os.PathLike = "build", *, fixed: bool = False,
            board: str | None = None, quantize: dict[str, Any] | None = None, force: bool = False,
            **options: Any) -> Any:
    """Run the passes (``spiking``, ``spide``, ``schedule``; ``options`` go to the pass that takes
    them, e.g. ``T=30, T_back=100, sf=100, lr=0.1``) and emit the ``target``'s program into ``out``.

    A graph that already went through the passes (e.g. a training graph loaded from ``.spir``) is
    compiled as it is when no options are given.

    ``out`` is a new or empty folder, or one spidec compiled into before (its marker file
    ``.spidec-build``): spidec's files there are replaced, everything else (checkpoints, logs,
    results) is kept. Any other folder is refused unless ``force``. Files are written all or nothing
    and never through a symbolic link (:class:`spidec.fileio.BuildFiles`).

    Returns the backend's artifact (for ``sim``: ``.load()`` the network, ``.run_cli(*cli_args)``;
    every artifact has the spidec.artifact.Artifact methods).
    """
    from . import passes
    from .backends import TARGETS, get
    from .errors import SpidecError
    from .fileio import check_build_dir

    backend = get(target)
    check_build_dir(out, force)
    if options or g.schedule is None:  # (a training graph without its step program: the backend lowers it)
        g = passes.run(g, **options)
    fixed = fixed or board is not None or quantize is not None
    if fixed:  # a backend that builds fixed point (and boards) says so: FIXED_POINT = True
        if not getattr(backend, "FIXED_POINT", False):
            able = [t for t in TARGETS if getattr(get(t), "FIXED_POINT", False)] if target in TARGETS else []
            main = [t for t in able if getattr(get(t), "BOARDS", None)] or able or ["c"]  # (boards: c only)
            also = [t for t in able if t not in main]
            more = f" (fixed point also for {', '.join(also)})" if also else ""
            raise SpidecError(f"fixed point and boards are for the {', '.join(main)} target{more}, not {target}",
                              hint=f"add --target {main[0]}")
        if quantize is not None or g.quant is None:  # (a quantized graph keeps its scales and update mode)
            g = passes.quantize(g, **(quantize or {}))
        return backend.emit(g, out, board=board)
    return backend.emit(g, out)
