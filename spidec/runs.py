"""``spidec train BUILD``: one verb that trains what any target wrote.

Every backend's ``emit`` writes ``spidec.json`` (the build manifest: target, model, hash, board)
into its folder; ``train_build`` reads it and hands a :class:`TrainOptions` to that backend's
``train_build(out, opts, say)``, which trains and returns one entry per epoch (``epoch``,
``train_loss``, ``train_accuracy``, ``test_accuracy``, ``seconds`` where known). The epoch lines
and the ``--json`` summary therefore have the same shape on every target. An option a target
cannot honour is refused in one line (its backend's ``TRAIN_OPTIONS`` lists what it takes).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import SpidecError

MANIFEST = "spidec.json"


@dataclass(frozen=True)
class TrainOptions:
    """Options shared by every target (None: the target's default)."""

    data: str = "digits"
    epochs: int | None = None
    batch: int | None = None
    lr: float | None = None
    seed: int = 0
    checkpoint: str | None = None
    resume: bool = False
    limit_train: int | None = None
    limit_test: int | None = None
    device: str | None = None  # sim: cpu, cuda, ...
    qemu: bool = False  # board builds: under QEMU (their default)
    host: bool = False  # board builds: the host executable instead
    out: str | None = None  # board builds: write the trained weights here
    timeout: float | None = None
    quiet: bool = False
    json: bool = False
    lr_schedule: str | None = None  # sim, c host, a board (linear:K only): spidec.schedule spec
    warmup: int = 0  # sim, c host: linear warm-up batches
    augment: str = ""  # sim, c host: spidec.augment spec (crop4,flip)
    normalize: str | None = None  # sim, c host: MEAN,..;STD,.. (or cifar10, cifar100)
    data_dir: str | None = None  # cifar10, cifar100, cifar10-dvs: the folder of their files
    threads: int | None = None  # c host: the trainer's threads (default: the cores); sim: torch's (its default)
    extra: tuple[str, ...] = ()  # sim: further options of its train.py (--dtype, --steps, --save-weights ...)

    def given(self) -> set[str]:
        """The options set away from their defaults."""
        return {f.name for f in fields(self) if getattr(self, f.name) != f.default}


COMMON = {"data", "epochs", "batch", "lr", "seed", "quiet", "json"}


def write_manifest(out: Path, target: str, prog: Any, **extra: Any) -> None:
    """The build manifest every backend writes beside what it emits."""
    from . import __version__
    from .fileio import write_text

    write_text(out / MANIFEST, json.dumps({"target": target, "model": prog.model, "hash": prog.build_hash,
                                           "fixed": prog.quant is not None, "spidec": __version__, **extra},
                                          indent=1) + "\n")


def read_manifest(out: Path) -> dict[str, Any]:
    """The manifest of build folder ``out`` (builds from before manifests: guessed from their files)."""
    path = out / MANIFEST
    if path.is_file():
        try:
            info = json.loads(path.read_text())
        except ValueError as e:
            raise SpidecError(f"{path}: not a spidec build manifest ({e})") from None
        if not isinstance(info, dict) or "target" not in info:
            raise SpidecError(f"{path}: not a spidec build manifest (no target)")
        return info
    if (out / "model.c").is_file():
        return {"target": "c", **({"board": json.loads((out / "board.json").read_text())["board"]}
                                  if (out / "board.json").is_file() else {})}
    if (out / "network.py").is_file():
        return {"target": "lava"}
    if (out / "train.py").is_file():
        return {"target": "sim"}
    raise SpidecError(f"{str(out)!r} holds no compiled program (no {MANIFEST})",
                      hint=f"compile first: spidec compile MODEL -o {out}")


def epoch_line(e: dict[str, Any]) -> str:
    """One epoch, the same words on every target."""
    parts = [f"epoch {e['epoch']:3d}"]
    if e.get("lr") is not None:
        parts.append(f"lr {e['lr']:.4g}")
    for key, word in (("train_loss", "loss"), ("train_accuracy", "train acc"), ("test_accuracy", "test acc")):
        if e.get(key) is not None:
            parts.append(f"{word} {e[key]:.4f}")
    if e.get("seconds") is not None:
        parts.append(f"({e['seconds']:.1f}s)")
    if e.get("samples_per_s") is not None:
        parts.append(f"{e['samples_per_s']:,.0f} samples/s")
    if e.get("instructions_per_sample") is not None:  # a board under QEMU counts instructions exactly
        parts.append(f"{e['instructions_per_sample']:,.0f} instructions/sample")
    return "  ".join(parts)


def train_build(build: str | Path, opts: TrainOptions, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the build in folder ``build`` with ``opts``; returns the summary (``target``,
    ``epochs``, ``test_accuracy`` and what the target adds)."""
    from .backends import get

    out = Path(build)
    if not out.is_dir():
        raise SpidecError(f"{str(build)!r} is not a folder written by spidec compile",
                          hint=f"spidec compile MODEL -o {build}")
    info = read_manifest(out)
    backend = get(info["target"])
    takes = COMMON | set(getattr(backend, "TRAIN_OPTIONS", ()))
    if opts.epochs is not None and opts.epochs < 0:
        raise SpidecError(f"--epochs must be at least 0, got {opts.epochs}")
    if opts.batch is not None and opts.batch < 1:
        raise SpidecError(f"--batch must be at least 1, got {opts.batch}")
    from .data import DIR_DATASETS

    if opts.data in DIR_DATASETS and not opts.data_dir:
        raise SpidecError(f"--data {opts.data} is read from your copy: add --data-dir DIR, a folder holding "
                          f"{DIR_DATASETS[opts.data][1]} (nothing is downloaded)")
    if opts.warmup < 0:
        raise SpidecError(f"--warmup must be at least 0, got {opts.warmup}")
    for flag in ("limit_train", "limit_test"):
        if getattr(opts, flag) is not None and getattr(opts, flag) < 1:
            raise SpidecError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(opts, flag)}")
    if opts.timeout is not None and not (math.isfinite(opts.timeout) and opts.timeout > 0):
        raise SpidecError(f"--timeout must be a positive number of seconds, got {opts.timeout}")
    if opts.threads is not None and opts.threads < 1:
        raise SpidecError(f"--threads must be at least 1, got {opts.threads}")
    if opts.lr is not None and not (math.isfinite(opts.lr) and opts.lr > 0):
        raise SpidecError(f"--lr must be a positive number, got {opts.lr}")
    if opts.lr_schedule is not None:
        from .schedule import parse_schedule

        parse_schedule(opts.lr_schedule)
    if opts.augment or opts.normalize:
        from .augment import parse_augment, parse_normalize

        parse_augment(opts.augment)
        if opts.normalize:
            parse_normalize(opts.normalize)
    if opts.extra and "extra" not in takes:
        raise SpidecError(f"the {info['target']} target does not know {' '.join(opts.extra)}")
    refused = sorted(opts.given() - takes - {"extra"})
    if refused:
        raise SpidecError(f"the {info['target']} target cannot honour --{refused[0].replace('_', '-')}"
                          f" (it takes: {', '.join('--' + o.replace('_', '-') for o in sorted(takes))})")
    quiet = opts.quiet or opts.json
    summary = backend.train_build(out, opts, (lambda _line: None) if quiet else say)
    summary = {"target": info["target"], "build": str(out), **summary}
    epochs = summary.get("epochs") or []
    if epochs and "test_accuracy" not in summary:
        summary["test_accuracy"] = epochs[-1].get("test_accuracy")
    return summary


__all__ = ["MANIFEST", "TrainOptions", "epoch_line", "read_manifest", "train_build", "write_manifest"]
