"""Data sets for demos, tests and training; nothing is downloaded.

``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, shipped inside the scikit-learn
wheel), scaled to [0, 1], with a fixed stratified train/test split.
``mnist``: the complete MNIST (60,000 + 10,000 images, shipped with spidec in
``spidec/datasets/mnist``, checksums verified on load), normalised with mean 0.1307 and std 0.3081
as in SPIDE's reference scripts, shape [1, 28, 28].
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SpidecError

MNIST_DIR = Path(__file__).with_name("datasets") / "mnist"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


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


def read_idx(path: Path, expected_sha256: str | None = None) -> np.ndarray:
    """An IDX file (gzip or raw) as a uint8 array, its checksum verified when given."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpidecError(f"data file {str(path)!r} not found") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise SpidecError(f"data file {str(path)!r} is not a readable gzip file ({e})") from None
    if expected_sha256 is not None and hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise SpidecError(f"data file {str(path)!r} is corrupt: its sha256 does not match SHA256SUMS.raw",
                          hint="restore it from the spidec distribution")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SpidecError(f"data file {str(path)!r} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise SpidecError(f"data file {str(path)!r} is truncated")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(dims)):
        raise SpidecError(f"data file {str(path)!r} holds {len(raw) - header} bytes of data, its header "
                          f"announces {int(np.prod(dims))}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def mnist(root: str | os.PathLike | None = None) -> Dataset:
    """MNIST from ``root`` (default: the copy shipped with spidec), checksums verified."""
    root = Path(root) if root is not None else MNIST_DIR
    sums_file = root / "SHA256SUMS.raw"
    try:
        sums = dict(reversed(line.split()) for line in sums_file.read_text().splitlines() if line.strip())
    except FileNotFoundError:
        raise SpidecError(f"{sums_file} not found: the MNIST folder is incomplete") from None

    def part(name: str) -> np.ndarray:
        return read_idx(root / f"{name}.gz", sums.get(name))

    def images(name: str) -> np.ndarray:
        x = part(name).astype(np.float32) / 255.0
        return ((x - MNIST_MEAN) / MNIST_STD)[:, None, :, :]

    return Dataset("mnist", images("train-images-idx3-ubyte"), part("train-labels-idx1-ubyte").astype(np.int64),
                   images("t10k-images-idx3-ubyte"), part("t10k-labels-idx1-ubyte").astype(np.int64), 10)


DATASETS = {"digits": digits, "mnist": mnist}


def load(name: str) -> Dataset:
    try:
        return DATASETS[name]()
    except KeyError:
        raise SpidecError(f"unknown data set '{name}'; available: {', '.join(DATASETS)}") from None
