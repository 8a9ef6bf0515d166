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

# ------------------------------------------------------------------ the C runtime's data-set files
SPDS_MAGIC, SPDS_VERSION = b"SPDS", 1


def write_spds(path: str | os.PathLike, x: np.ndarray, y: np.ndarray, classes: int) -> Path:
    """Write samples ``x`` (any per-sample shape) and labels ``y`` in the runtime's format
    (runtime/include/spide.h), atomically."""
    import struct
    import zlib

    from .fileio import atomic_write

    x = np.ascontiguousarray(np.asarray(x, dtype="<f4"))
    y = np.ascontiguousarray(np.asarray(y, dtype="<i4"))
    if x.ndim < 2 or len(x) != len(y) or len(x) == 0:
        raise SpidecError(f"need a non-empty batch of samples and as many labels, got {x.shape} and {y.shape}")
    if not np.all(np.isfinite(x)):
        raise SpidecError("the samples hold NaN or inf values")
    if y.min() < 0 or y.max() >= classes:
        raise SpidecError(f"labels must lie in 0..{classes - 1}, got {int(y.min())}..{int(y.max())}")
    head = SPDS_MAGIC + struct.pack(f"<III{x.ndim - 1}IQI", SPDS_VERSION, 1, x.ndim - 1, *x.shape[1:], len(x), classes)
    body = head + x.tobytes() + y.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(body + struct.pack("<I", zlib.crc32(body))))
    return path


def read_spds(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, int]:
    """Read a runtime data-set file back: (x, y, classes), with the same checks as the C reader."""
    import struct
    import zlib

    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpidecError(f"data file {str(path)!r} not found") from None
    if len(raw) < 36 or raw[:4] != SPDS_MAGIC:
        raise SpidecError(f"{path}: not a spidec data set (bad magic or too short)")
    if zlib.crc32(raw[:-4]) != struct.unpack("<I", raw[-4:])[0]:
        raise SpidecError(f"{path}: CRC mismatch: the file is corrupt or truncated")
    version, dtype, ndim = struct.unpack("<III", raw[4:16])
    if version != SPDS_VERSION or dtype != 1 or not 1 <= ndim <= 8:
        raise SpidecError(f"{path}: unsupported version {version}, dtype {dtype} or {ndim} dimensions")
    dims = struct.unpack(f"<{ndim}I", raw[16: 16 + 4 * ndim])
    count, classes = struct.unpack("<QI", raw[16 + 4 * ndim: 28 + 4 * ndim])
    off, size = 28 + 4 * ndim, int(np.prod(dims))
    if len(raw) != off + 4 * count * size + 4 * count + 4:
        raise SpidecError(f"{path}: {count} samples of {size} values do not fit the file's {len(raw)} bytes")
    if count == 0:
        raise SpidecError(f"{path}: the data set is empty")
    x = np.frombuffer(raw, "<f4", count * size, off).reshape((count, *dims))
    y = np.frombuffer(raw, "<i4", count, off + 4 * count * size)
    bad = np.flatnonzero((y < 0) | (y >= classes))
    if bad.size:
        raise SpidecError(f"{path}: label {int(y[bad[0]])} of sample {int(bad[0])} is outside 0..{classes - 1}")
    if not np.all(np.isfinite(x)):
        raise SpidecError(f"{path}: the samples hold NaN or inf values")
    return x.copy(), y.astype(np.int64), classes


def pack(source: str, out_dir: str | os.PathLike) -> list[Path]:
    """``spidec dataset pack``: a named data set or an ``.npz`` (x_train, y_train, x_test, y_test)
    into ``NAME.train.spds`` and ``NAME.test.spds``."""
    out_dir = Path(out_dir)
    ds = load(source)
    return [write_spds(out_dir / f"{ds.name}.train.spds", ds.x_train, ds.y_train, ds.classes),
            write_spds(out_dir / f"{ds.name}.test.spds", ds.x_test, ds.y_test, ds.classes)]


def data_name(source: str) -> str:
    """The name a data set's files get: ``digits``, or ``mine`` for ``path/mine.npz``."""
    return Path(source).stem if source.endswith(".npz") else source


def load(name: str) -> Dataset:
    """A named data set (digits, mnist) or an ``.npz`` with x_train, y_train, x_test, y_test."""
    if name.endswith(".npz"):
        try:
            with np.load(name, allow_pickle=False) as z:
                parts = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        except FileNotFoundError:
            raise SpidecError(f"data file {name!r} not found") from None
        except KeyError as e:
            raise SpidecError(f"{name} lacks the array {e} (needs x_train, y_train, x_test, y_test)") from None
        except (ValueError, OSError) as e:
            raise SpidecError(f"{name}: not a readable .npz ({e})") from None
        classes = int(max(parts["y_train"].max(), parts["y_test"].max())) + 1
        return Dataset(data_name(name), parts["x_train"], parts["y_train"], parts["x_test"], parts["y_test"], classes)
    try:
        return DATASETS[name]()
    except KeyError:
        raise SpidecError(f"unknown data set '{name}'; available: {', '.join(DATASETS)}") from None
