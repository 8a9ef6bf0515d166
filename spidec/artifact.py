"""The one method set of every backend's artifact (what ``spidec.compile`` returns).

    art = spidec.compile(g, target=..., out="build/")
    art.build()                         # compile / load the program (cached); the target's handle
    art.train(x, y, epochs=1, batch=64) # [{"epoch", "train_loss", "train_accuracy"}, ...]
    art.evaluate(x, y)                  # {"accuracy": ..., "loss": ... (where the target reports it)}
    art.rates(x)                        # {population: forward rates [B, *shape]}
    art.get_weights(); art.set_weights({name: array})   # by IR name, in the IR's shapes
    art.next_steps()                    # what to run next, one line

Every target implements these on its own handle; a target that cannot do one raises a
:class:`~spidec.SpidecError` saying so.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SpidecError


class Artifact(ABC):
    """Base of the backends' artifacts: ``out`` (the build folder) and ``graph`` (the lowered
    training graph it was emitted from; None for a build opened from its folder)."""

    target = ""
    out: Path
    graph: Any

    @abstractmethod
    def build(self) -> Any: ...

    @abstractmethod
    def train(self, x: Any, y: Any, *, epochs: int = 1, batch: int = 64, lr: float | None = None,
              seed: int = 0, **opts: Any) -> list[dict]:
        """Train in place; ``opts`` (sim and c): ``lr_schedule`` (spidec.schedule), ``warmup``
        (batches), ``augment`` and ``normalize`` (spidec.augment)."""

    @abstractmethod
    def evaluate(self, x: Any, y: Any) -> dict: ...

    @abstractmethod
    def rates(self, x: Any) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def get_weights(self) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def set_weights(self, values: dict[str, Any]) -> None: ...

    @abstractmethod
    def next_steps(self) -> str: ...

    # -- shared helpers
    def _shapes(self) -> dict[str, tuple[int, ...]]:
        if self.graph is None:
            raise SpidecError(f"this {self.target} artifact was opened without its graph; compile it again")
        return {n: tuple(t.shape) for n, t in self.graph.parameters(learnable_only=False).items()}

    def _populations(self) -> list[tuple[str, tuple[int, ...]]]:
        if self.graph is None or self.graph.program is None:
            raise SpidecError(f"this {self.target} artifact was opened without its graph; compile it again")
        return [(p.name, p.shape) for p in self.graph.program.populations]


def epochs_of(x: Any, y: Any, epochs: int, batch: int, seed: int, step: Any) -> list[dict]:
    """The shared epoch loop of in-process trainers: ``step(idx, batch_total) -> (loss sum,
    correct)`` over a seeded permutation; one history entry per epoch."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(epochs):
        perm = rng.permutation(len(y))
        loss = correct = 0.0
        for i in range(0, len(perm), batch):
            idx = perm[i: i + batch]
            l_, c = step(idx, len(idx), epoch)
            loss, correct = loss + l_, correct + c
        history.append({"epoch": epoch + 1, "train_loss": loss / len(y), "train_accuracy": correct / len(y)})
    return history


__all__ = ["Artifact", "epochs_of"]
