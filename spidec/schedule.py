"""Learning-rate schedules of every trainer (sim program, C host executable, Python API).

``--lr-schedule`` takes:

* ``multistep:E1,E2,...:GAMMA`` the rate times ``GAMMA`` at each epoch ``Ei`` passed (the SPIDE
  authors' ``adjust_learning_rate``; ``:GAMMA`` may be left out: 0.1); a model compiled with
  ``--milestones`` uses that schedule unless told otherwise;
* ``cosine`` ``lr * (1 + cos(pi * epoch / epochs)) / 2`` per epoch (``CosineAnnealingLR`` with
  ``T_max = epochs``, ``eta_min = 0``);
* ``constant``;
* ``linear:K`` (K an integer >= 1) the rate falls in ``K`` equal steps over the whole run: batch
  ``it`` (counted from the start of training, of ``total = epochs * batches_per_epoch``) trains at
  ``lr * (1 - floor(K * it / total) / K)`` (issue 17: one MNIST epoch at batch 1 on the board's
  fixed-point arithmetic reaches 97.8% with ``linear:10``, 96.7% at the best constant rate). Like
  every ``--lr-schedule`` it replaces the compiled milestones; on one epoch at batch 1, position
  ``i`` of ``n`` trains at ``lr * (1 - floor(K*i/n)/K)``. Computed in double, ``floor`` as an
  integer division, so Python, the C host trainer and the board program give the same float.

``--warmup N`` then ramps the first ``N`` batches of the run linearly, ``lr * (i + 1) / N`` for
batch ``i`` counted from the start of training (the authors' ``adjust_warmup_lr``). The rate is a
pure function of (epoch, batch), so a resumed run continues exactly. The C runtime implements the
same formulas (runtime/src/spide_train.c: spide_schedule_lr; the board program
runtime/board/spide_board.c takes ``--lr-schedule linear:K`` only); the sim programs call
:func:`lr_at`. The parsed form of ``linear:K`` is ``("linear", (K,), 1.0)``.
"""

from __future__ import annotations

import math

from .errors import SpidecError


def parse_schedule(spec: str) -> tuple[str, tuple[int, ...], float]:
    """``(kind, milestones, gamma)`` of a schedule spec (see the module docstring)."""
    parts = spec.strip().split(":")
    kind = parts[0].strip().lower()
    if kind in ("constant", "cosine") and len(parts) == 1:
        return kind, (), 1.0
    if kind == "linear" and len(parts) == 2:
        k = parts[1].strip()
        steps = int(k) if k.isascii() and k.isdigit() else 0  # (digits only, as the C trainers parse it)
        if not 1 <= steps <= 2**31 - 1:
            raise SpidecError(f"--lr-schedule {spec!r}: linear:K needs an integer K in 1..2^31-1 (the number of "
                              "steps)")
        return kind, (steps,), 1.0
    if kind == "multistep" and len(parts) in (2, 3):
        try:
            milestones = tuple(int(m) for m in parts[1].split(",") if m.strip())
            gamma = float(parts[2]) if len(parts) == 3 else 0.1
        except ValueError:
            raise SpidecError(f"--lr-schedule {spec!r}: milestones are epochs (integers) and gamma a number") from None
        if any(m < 0 for m in milestones) or list(milestones) != sorted(milestones):
            raise SpidecError(f"--lr-schedule {spec!r}: milestones must be increasing epochs >= 0")
        if not (math.isfinite(gamma) and gamma > 0):
            raise SpidecError(f"--lr-schedule {spec!r}: gamma must be a positive number")
        return kind, milestones, gamma
    raise SpidecError(f"unknown --lr-schedule {spec!r}", hint="multistep:20,40:0.1, cosine, constant or linear:10")


def canonical_schedule(spec: str) -> str:
    """``spec`` as the C trainers parse it (lower case, no spaces: ``LINEAR: 10`` -> ``linear:10``)."""
    kind, milestones, gamma = parse_schedule(spec)
    if kind == "linear":
        return f"linear:{milestones[0]}"
    if kind == "multistep":
        return f"multistep:{','.join(str(m) for m in milestones)}:{gamma!r}"
    return kind


def lr_at(schedule: tuple[str, tuple[int, ...], float], lr: float, epoch: int, epochs: int, iteration: int = 0,
          warmup: int = 0, total: int = 0) -> float:
    """The learning rate of batch ``iteration`` (counted from the start of training) in ``epoch``
    (from 0) of ``epochs``; ``total``: the run's batches (``epochs * batches_per_epoch``), which
    ``linear:K`` falls over (0: no fall)."""
    kind, milestones, gamma = schedule
    if kind == "multistep":
        rate = lr * gamma ** sum(1 for m in milestones if epoch >= m)
    elif kind == "cosine":
        rate = lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    elif kind == "linear" and total > 0:
        k = milestones[0]
        rate = lr * (1.0 - (k * iteration // total) / k)
    else:
        rate = lr
    if warmup > 0 and iteration < warmup:
        rate = rate * (iteration + 1) / warmup
    return rate


def default_schedule(milestones: tuple[int, ...], gamma: float) -> str:
    """The spec of a compiled model's own schedule."""
    return f"multistep:{','.join(map(str, milestones))}:{gamma!r}" if milestones else "constant"
