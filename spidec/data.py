"""Data sets for demos and tests.

``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, shipped inside the scikit-learn
wheel, so nothing is downloaded), scaled to [0, 1], with a fixed stratified train/test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SpidecError


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int

    def reshaped(self, shape: tuple[int, ...]) -> Dataset:
        """The same data with every sample reshaped to ``shape`` (e.g. [64] -> [1, 8, 8])."""
        size = int(np.prod(self.x_train.shape[1:]))
        if int(np.prod(shape)) != size:
            raise SpidecError(f"data set '{self.name}' has samples of {size} values; the model's input "
                              f"shape {list(shape)} holds {int(np.prod(shape))}")
        return Dataset(self.name, self.x_train.reshape((-1,) + tuple(shape)), self.y_train,
                       self.x_test.reshape((-1,) + tuple(shape)), self.y_test, self.classes)


def digits(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits, values in [0, 1], a stratified split fixed by ``seed``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        raise SpidecError("the digits data set needs scikit-learn (pip install scikit-learn)") from None
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in range(10):  # stratified: the same fraction of every class in the test set
        idx = np.flatnonzero(y == c)
        test[rng.choice(idx, size=round(len(idx) * test_fraction), replace=False)] = True
    return Dataset("digits", x[~test], y[~test], x[test], y[test], 10)


DATASETS = {"digits": digits}


def load(name: str) -> Dataset:
    try:
        return DATASETS[name]()
    except KeyError:
        raise SpidecError(f"unknown data set '{name}'; available: {', '.join(DATASETS)}") from None
