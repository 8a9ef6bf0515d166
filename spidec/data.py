"""Data sets for demos, tests and training; nothing is downloaded.

``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, shipped inside the scikit-learn
wheel), scaled to [0, 1], with a fixed stratified train/test split.
``mnist``: the complete MNIST (60,000 + 10,000 images, shipped with spidec in
``spidec/datasets/mnist``, checksums verified on load), normalised with mean 0.1307 and std 0.3081
as in SPIDE's reference scripts, shape [1, 28, 28].
``cifar10`` / ``cifar100``: CIFAR-10 (50,000 + 10,000 images, 10 classes) and CIFAR-100 (fine
labels, 100 classes) read from a local copy of the official python archives, given with
``--data-dir DIR`` (``load(name, data_dir)``): DIR holds the extracted ``cifar-10-batches-py/``
(``cifar-100-python/``) folder or the ``cifar-10-python.tar.gz`` (``cifar-100-python.tar.gz``)
archive as published at https://www.cs.toronto.edu/~kriz/cifar.html, or DIR is that folder or
archive itself. Every file's MD5 is checked against :data:`CIFAR_MD5` (the values torchvision
publishes) and the pickles are read with an unpickler that refuses every global a CIFAR batch
does not hold, so a planted pickle cannot run code. Samples are float32 in [0, 1] (byte / 255, as
torchvision's ``ToTensor``), shape [3, 32, 32] (R, G, B planes, as the archives store them);
they are *not* normalised: normalisation is a separate step (``spidec.augment``), for which
:data:`CIFAR10_MEAN` / :data:`CIFAR10_STD` (also the CIFAR-100 constants) hold the values SPIDE's
CIFAR scripts use.
``cifar10-dvs``: CIFAR10-DVS as event-count frames from a local folder (layout in
:func:`cifar10_dvs`), resized to 48x48, samples [T, 2, 48, 48] (time first, spidec's layout of
time-varying inputs).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import re
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        for x in (self.x_train, self.x_test):
            size = int(np.prod(x.shape[1:]))
            if int(np.prod(shape)) != size:
                raise SpidecError(f"data set '{self.name}' has {'training' if x is self.x_train else 'test'} "
                                  f"samples of {size} values; the model's input shape {list(shape)} holds "
                                  f"{int(np.prod(shape))}")
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


# ------------------------------------------------------------------ CIFAR-10 / CIFAR-100
# Per-channel statistics of SPIDE's CIFAR scripts (cifar_alexnetf.py, cifar_cifarnetf.py):
# transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)), used for CIFAR-10 and CIFAR-100 alike.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = CIFAR10_MEAN
CIFAR100_STD = CIFAR10_STD

# MD5 of every official file, keyed by its path inside the archive (and the archives by name), as published by
# torchvision (torchvision/datasets/cifar.py). Tests substitute their own (monkeypatch, or ``checksums=``).
CIFAR_MD5: dict[str, str] = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
    "cifar-10-batches-py/batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
    "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "cifar-100-python/meta": "7973b15100ade9c7d40fb424638fde48",
}


@dataclass(frozen=True)
class _CifarLayout:
    title: str
    folder: str
    archive: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: str
    names_key: str
    classes: int

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, *self.test, self.meta)

    def expected(self) -> str:
        return (f"{self.folder}/ holding {', '.join(self.files)} (or the archive {self.archive})")


_CIFAR = {
    "cifar10": _CifarLayout("CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                            tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
                            "labels", "label_names", 10),
    "cifar100": _CifarLayout("CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",),
                             "meta", "fine_labels", "fine_label_names", 100),
}


class _RefusedGlobal(Exception):
    pass


def _bytes_no_args(*args: Any) -> bytes:
    # Python 3's protocol-2 pickles write b"" as bytes(); any argument (bytes(10**12)) is refused
    if args:
        raise _RefusedGlobal("builtins.bytes with arguments")
    return b""


def _latin1_encode(text: Any, encoding: Any = "utf-8", *args: Any) -> bytes:
    # Python 3's protocol-2 pickles write bytes as _codecs.encode(str, 'latin1'); nothing else is accepted
    if args or not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _RefusedGlobal(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _pickle_allowed() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray as ma
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core import multiarray as ma  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): _latin1_encode,
                                           ("__builtin__", "bytes"): _bytes_no_args,
                                           ("builtins", "bytes"): _bytes_no_args}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = ma._reconstruct
        allowed[(module, "scalar")] = ma.scalar
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Resolves only the globals a CIFAR batch references (numpy's array and dtype reconstruction, and the
    byte-string helpers of Python 3's protocol 2); anything else is refused before it can be called."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if _CifarUnpickler._allowed is None:
            _CifarUnpickler._allowed = _pickle_allowed()
        obj = _CifarUnpickler._allowed.get((module, name))
        if obj is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise _RefusedGlobal("a persistent id")


def _unpickle(raw: bytes, where: str) -> dict[str, Any]:
    """A CIFAR pickle (a dict of bytes, lists and arrays) read without running anything it names."""
    try:
        obj = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _RefusedGlobal as e:
        raise SpidecError(f"{where}: refused to unpickle: it references {e}, which a CIFAR file never holds "
                          "(the file is not the official one)") from None
    except Exception as e:  # any malformed pickle: truncated, bad opcode, bad numpy state
        raise SpidecError(f"{where}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise SpidecError(f"{where}: holds a {type(obj).__name__}, not the dict of a CIFAR file")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _md5(data: bytes | Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    if isinstance(data, Path):
        with data.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        h.update(data)
    return h.hexdigest()


def _cifar_files(layout: _CifarLayout, root: Path, sums: Mapping[str, str]) -> dict[str, bytes]:
    """The raw bytes of every file of ``layout`` (by name), from the folder or the archive, checksums verified."""

    def expected_md5(key: str) -> str:
        try:
            return sums[key]
        except KeyError:
            raise SpidecError(f"no checksum known for {key}") from None

    def check(where: str, key: str, actual: str) -> None:
        if actual != expected_md5(key):
            raise SpidecError(f"{where} is corrupt or not the official file: its md5 is {actual}, expected "
                              f"{expected_md5(key)}", hint=f"restore it from {layout.archive}")

    if root.is_file() and root.name.endswith((".tar.gz", ".tgz")):
        archive: Path | None = root
    elif root.name == layout.folder and root.is_dir():
        archive, folder = None, root
    elif (root / layout.folder).is_dir():
        archive, folder = None, root / layout.folder
    elif (root / layout.archive).is_file():
        archive = root / layout.archive
    else:
        raise SpidecError(f"{layout.title} not found in {str(root)!r}: expected {layout.expected()}")
    out: dict[str, bytes] = {}
    if archive is None:
        for name in layout.files:
            path = folder / name
            try:
                raw = path.read_bytes()
            except (FileNotFoundError, IsADirectoryError):
                raise SpidecError(f"{layout.title} file {str(path)!r} not found (expected md5 "
                                  f"{expected_md5(f'{layout.folder}/{name}')}); the folder must hold "
                                  f"{', '.join(layout.files)}") from None
            check(repr(str(path)), f"{layout.folder}/{name}", _md5(raw))
            out[name] = raw
        return out
    check(repr(str(archive)), layout.archive, _md5(archive))
    wanted = {f"{layout.folder}/{name}": name for name in layout.files}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                key = member.name[2:] if member.name.startswith("./") else member.name
                if key in wanted and member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None  # a regular file
                    raw = f.read()
                    check(f"{str(archive)!r} member {key}", key, _md5(raw))
                    out[wanted[key]] = raw
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SpidecError(f"{str(archive)!r}: not a readable .tar.gz ({e})") from None
    for key, name in wanted.items():
        if name not in out:
            raise SpidecError(f"{layout.title} archive {str(archive)!r} lacks {key} (expected md5 "
                              f"{expected_md5(key)}); it must hold {', '.join(wanted)}")
    return out


def _cifar_part(layout: _CifarLayout, files: dict[str, bytes], names: tuple[str, ...],
                where: Callable[[str], str]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in names:
        d = _unpickle(files[name], where(name))
        data, labels = d.get("data"), d.get(layout.label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise SpidecError(f"{where(name)}: 'data' is not a uint8 array of rows of 3072 bytes")
        try:
            y = np.asarray(labels, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise SpidecError(f"{where(name)}: '{layout.label_key}' is not a list of integers") from None
        if len(y) != len(data):
            raise SpidecError(f"{where(name)}: {len(data)} images but {len(y)} '{layout.label_key}'")
        if len(y) and (y.min() < 0 or y.max() >= layout.classes):
            raise SpidecError(f"{where(name)}: labels must lie in 0..{layout.classes - 1}")
        xs.append(data)
        ys.append(y)
    x = np.concatenate(xs).reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)
    return x, np.concatenate(ys)


def _cifar(key: str, root: str | os.PathLike, checksums: Mapping[str, str] | None) -> Dataset:
    layout = _CIFAR[key]
    root = Path(root)
    files = _cifar_files(layout, root, CIFAR_MD5 if checksums is None else checksums)

    def where(name: str) -> str:
        return f"{layout.title} file {name} in {str(root)!r}"

    meta = _unpickle(files[layout.meta], where(layout.meta))
    names = meta.get(layout.names_key)
    if not isinstance(names, list) or len(names) != layout.classes:
        raise SpidecError(f"{where(layout.meta)}: '{layout.names_key}' is not a list of {layout.classes} names")
    x_train, y_train = _cifar_part(layout, files, layout.train, where)
    x_test, y_test = _cifar_part(layout, files, layout.test, where)
    return Dataset(key, x_train, y_train, x_test, y_test, layout.classes)


def cifar10(root: str | os.PathLike, checksums: Mapping[str, str] | None = None) -> Dataset:
    """CIFAR-10 from ``root``: the folder holding ``cifar-10-batches-py/`` (data_batch_1..5, test_batch,
    batches.meta) or ``cifar-10-python.tar.gz`` (read in place, nothing extracted), or that folder or archive
    itself. MD5s are checked against ``checksums`` (default :data:`CIFAR_MD5`). x: float32 [N, 3, 32, 32] in
    [0, 1], not normalised; y: int64; 50,000 training and 10,000 test images in the files' order."""
    return _cifar("cifar10", root, checksums)


def cifar100(root: str | os.PathLike, checksums: Mapping[str, str] | None = None) -> Dataset:
    """CIFAR-100 (the 100 fine labels) from ``root``: the folder holding ``cifar-100-python/`` (train, test,
    meta) or ``cifar-100-python.tar.gz``, or that folder or archive itself; otherwise as :func:`cifar10`."""
    return _cifar("cifar100", root, checksums)


# ------------------------------------------------------------------ CIFAR10-DVS
# The class names and label order of SPIDE's CIFAR10-DVS loader (datasets/cifar10_dvs.py, labels_dict).
CIFAR10_DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The statistics SPIDE's dvs_cifar_convnetf.py names in a commented-out Normalize: the authors do not normalise.
CIFAR10_DVS_MEAN = (0.2728, 0.1295)
CIFAR10_DVS_STD = (0.2225, 0.1290)


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of Pillow's BILINEAR resampling (a triangle filter, widened by the scale when
    shrinking, i.e. antialiased), computed in float64 as Pillow's ``precompute_coeffs`` does."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        t = np.abs((np.arange(lo, hi) - center + 0.5) / filterscale)
        k = np.where(t < 1.0, 1.0 - t, 0.0)
        if k.sum() != 0:
            k = k / k.sum()
        w[i, lo:hi] = k
    return w


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """Frames [..., H, W] resized to [..., size, size] with Pillow's antialiased BILINEAR filter in floating
    point: horizontal pass first, then vertical, each rounded to float32 (as Pillow resizes a float image);
    frames already size x size are returned unchanged."""
    frames = np.asarray(frames, dtype=np.float32)
    h, w = frames.shape[-2:]
    if (h, w) == (size, size):
        return frames
    if w != size:
        frames = (frames.astype(np.float64) @ _resize_weights(w, size).T).astype(np.float32)
    if h != size:
        frames = (_resize_weights(h, size) @ frames.astype(np.float64)).astype(np.float32)
    return frames


def _dvs_read(path: Path) -> np.ndarray:
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise SpidecError(f"{path}: a single array (.npy), not an .npz holding 'frames'")
        with z:
            keys = list(z.keys())
            key = "frames" if "frames" in keys else "arr_0" if "arr_0" in keys else None
            if key is None:
                raise SpidecError(f"{path}: holds {keys or 'no arrays'}, expected an array 'frames' (or 'arr_0')")
            frames = z[key]
    except (ValueError, OSError, EOFError, KeyError) as e:
        raise SpidecError(f"{path}: not a readable .npz ({e})") from None
    if frames.ndim != 4 or frames.shape[1] != 2:
        raise SpidecError(f"{path}: frames of shape {list(frames.shape)}; expected [T, 2, H, W] (rank 4, "
                          "2 polarities)")
    if frames.dtype.kind not in "biuf":
        raise SpidecError(f"{path}: frames of dtype {frames.dtype}; expected numbers (event counts)")
    if frames.dtype.kind == "f" and not np.all(np.isfinite(frames)):
        raise SpidecError(f"{path}: the frames hold NaN or inf values")
    return frames


def cifar10_dvs(root: str | os.PathLike, size: int = 48, clip: bool = True, split_ratio: float = 0.9) -> Dataset:
    """CIFAR10-DVS event-count frames from the local folder ``root``, in either layout:

    * split folders: ``root/train/<class>/*.npz`` and ``root/test/<class>/*.npz``;
    * SPIDE's converter output (the ``frames_num_<T>_split_by_number_normalization_None`` folder its
      ``datasets/cifar10_dvs.py`` writes): ``root/<class>/*.npz`` (``cifar10_<class>_<i>.npz``); the first
      ``int(split_ratio * n)`` files of every class (in natural order of their names: i = 0..899 of 1,000) are
      the training set, the rest the test set, as in the authors' loader.

    ``<class>`` is each of :data:`CIFAR10_DVS_CLASSES` (airplane .. truck, labels 0..9); every class folder must
    exist and hold at least one ``.npz``. Each ``.npz`` holds one sample, the array ``frames`` (or ``arr_0``, the
    name the authors' converter gives it) of shape [T, 2, H, W]: T frames of per-pixel event counts, one plane
    per polarity, T the same for every file. Files are read in class order, then natural name order.

    Producing it from the raw ``.aedat`` recordings (offline; nothing is downloaded here): run the authors'
    ``CIFAR10DVS(root, train=True, use_frame=True, frames_num=T, split_by='number', normalization=None)``
    once and point ``root`` at the frames folder it writes; or integrate the events yourself, e.g. with tonic
    (``tonic.transforms.ToFrame(sensor_size=(128, 128, 2), n_event_bins=T)`` gives [T, 2, 128, 128] counts;
    tonic's event reader may orient x and polarity differently from the authors', who use x -> 127 - x and
    p -> 1 - p), and save each sample with ``np.savez(path, frames=frames)``.

    Processing (SPIDE's dvs_cifar_convnetf.py: ToPILImage, Resize(48), ToTensor, no Normalize, T = 30
    frames split by event number): counts are clipped to [0, 1] when ``clip`` (the authors' ToPILImage
    multiplies by 255 and casts to uint8, so count 1 gives 1.0 and a count c >= 2 wraps to (256 - c) / 255,
    within (c - 1) / 255 of the clipped value), then every frame is resized to ``size`` x ``size`` with
    Pillow's antialiased bilinear filter (:func:`resize_frames`, the filter torchvision's Resize uses on PIL
    images; square frames give the same size as Resize(48)). Differences from the authors: arithmetic is
    float, not 8-bit (no rounding to 1/255 after each pass), and the two polarities are resized
    independently, whereas Pillow resizes a 2-channel ('LA') image with premultiplied alpha, which makes the
    authors' channel 0 about resize(c0 * c1) / resize(c1). The authors' training augmentation (Padding(4) +
    RandomCrop(48), the same window for every frame, no flip) is ``--augment crop4`` (``spidec.augment``).

    x: float32 [N, T, 2, size, size] (time first: the authors' model permutes to time last); y: int64. The
    whole data set (10,000 samples of 30 frames) takes about 5.5 GB as float32.
    """
    root = Path(root)
    if not root.is_dir():
        raise SpidecError(f"CIFAR10-DVS folder {str(root)!r} not found")
    layout = ("root/train/<class>/*.npz and root/test/<class>/*.npz, or the authors' frames folder "
              "root/<class>/cifar10_<class>_<i>.npz, for the classes " + ", ".join(CIFAR10_DVS_CLASSES))

    def class_files(folder: Path) -> list[Path]:
        if not folder.is_dir():
            raise SpidecError(f"CIFAR10-DVS class folder {str(folder)!r} not found (expected {layout})")
        files = sorted((p for p in folder.iterdir() if p.suffix == ".npz" and p.is_file()),
                       key=lambda p: _natural_key(p.name))
        if not files:
            raise SpidecError(f"CIFAR10-DVS class folder {str(folder)!r} holds no .npz files")
        return files

    train: list[tuple[Path, int]] = []
    test: list[tuple[Path, int]] = []
    if (root / "train").is_dir() or (root / "test").is_dir():
        for split, out in (("train", train), ("test", test)):
            if not (root / split).is_dir():
                raise SpidecError(f"CIFAR10-DVS folder {str(root / split)!r} not found (expected {layout})")
            for label, name in enumerate(CIFAR10_DVS_CLASSES):
                out.extend((p, label) for p in class_files(root / split / name))
    elif any((root / name).is_dir() for name in CIFAR10_DVS_CLASSES):
        if not 0.0 < split_ratio < 1.0:
            raise SpidecError(f"split_ratio must lie strictly between 0 and 1, got {split_ratio}")
        for label, name in enumerate(CIFAR10_DVS_CLASSES):
            files = class_files(root / name)
            n_train = int(split_ratio * len(files))
            train.extend((p, label) for p in files[:n_train])
            test.extend((p, label) for p in files[n_train:])
    else:
        raise SpidecError(f"{str(root)!r} holds no CIFAR10-DVS frames: expected {layout}")
    if not train or not test:
        raise SpidecError(f"CIFAR10-DVS in {str(root)!r}: the {'training' if not train else 'test'} set is empty "
                          f"(every class needs at least 2 files to split)")

    steps: list[int] = []

    def read(items: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
        x: np.ndarray | None = None
        for i, (path, _) in enumerate(items):
            frames = _dvs_read(path)
            if not steps:
                steps.append(frames.shape[0])
            if frames.shape[0] != steps[0]:
                raise SpidecError(f"{path}: {frames.shape[0]} frames, but {items[0][0] if i else 'the others'} "
                                  f"have {steps[0]}: every sample needs the same T")
            frames = frames.astype(np.float32)
            if clip:
                frames = np.clip(frames, 0.0, 1.0)
            if x is None:
                x = np.empty((len(items), steps[0], 2, size, size), dtype=np.float32)
            x[i] = resize_frames(frames, size)
        assert x is not None
        return x, np.array([label for _, label in items], dtype=np.int64)

    x_train, y_train = read(train)
    x_test, y_test = read(test)
    return Dataset("cifar10-dvs", x_train, y_train, x_test, y_test, 10)


DATASETS: dict[str, Callable[[], Dataset]] = {"digits": digits, "mnist": mnist}
# data sets read from a folder the user gives (--data-dir DIR): loader and what the folder must hold
DIR_DATASETS: dict[str, tuple[Callable[[Path], Dataset], str]] = {
    "cifar10": (cifar10, "cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta) or cifar-10-python.tar.gz"),
    "cifar100": (cifar100, "cifar-100-python/ (train, test, meta) or cifar-100-python.tar.gz"),
    "cifar10-dvs": (cifar10_dvs, "train/<class>/*.npz and test/<class>/*.npz (or the authors' frames folder "
                    "<class>/*.npz), each an array 'frames' [T, 2, H, W] of event counts"),
}

# ------------------------------------------------------------------ the C runtime's data-set files
SPDS_MAGIC, SPDS_VERSION = b"SPDS", 1
# version 2 adds unlabeled files (classes 0, no label array: what the C program's predict reads); labelled
# files are still written as version 1, which every runtime and board reader takes
SPDS_VERSION_UNLABELED = 2


SPDS_MAX_CLASSES = 2**31 - 1  # the C runtime holds classes and labels as int


def write_spds(path: str | os.PathLike, x: np.ndarray, y: np.ndarray | None, classes: int = 0) -> Path:
    """Write samples ``x`` (any per-sample shape) and labels ``y`` in the runtime's format
    (runtime/include/spide.h), atomically; ``y=None`` (and ``classes`` 0): samples without labels,
    which the C program's ``predict`` reads (train and eval refuse them)."""
    import struct
    import zlib

    from .fileio import atomic_write

    try:
        x = np.ascontiguousarray(np.asarray(x, dtype="<f4"))
    except (TypeError, ValueError):
        raise SpidecError(f"the samples must be numbers, got {np.asarray(x).dtype}") from None
    if y is None:
        if classes:
            raise SpidecError(f"samples without labels have no classes, got classes={classes}")
        if x.ndim < 2 or len(x) == 0:
            raise SpidecError(f"need a non-empty batch of samples, got {x.shape}")
    else:
        y = np.asarray(y)
        if y.dtype.kind not in "iub":
            raise SpidecError(f"the labels must be integers, got {y.dtype}")
        if x.ndim < 2 or len(x) != len(y) or len(x) == 0:
            raise SpidecError(f"need a non-empty batch of samples and as many labels, got {x.shape} and {y.shape}")
    if not np.all(np.isfinite(x)):
        raise SpidecError("the samples hold NaN or inf values")
    if y is not None and not 1 <= classes <= SPDS_MAX_CLASSES:
        raise SpidecError(f"{classes} classes is outside 1..{SPDS_MAX_CLASSES} (the runtime reads labels as int32)")
    if y is not None and (y.min() < 0 or y.max() >= classes):  # (before the int32 cast, which would wrap)
        raise SpidecError(f"labels must lie in 0..{classes - 1}, got {int(y.min())}..{int(y.max())}")
    labels = b"" if y is None else np.ascontiguousarray(y.astype("<i4")).tobytes()
    version = SPDS_VERSION if y is not None else SPDS_VERSION_UNLABELED
    head = SPDS_MAGIC + struct.pack(f"<III{x.ndim - 1}IQI", version, 1, x.ndim - 1, *x.shape[1:], len(x), classes)
    body = head + x.tobytes() + labels
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(body + struct.pack("<I", zlib.crc32(body))))
    return path


def read_spds(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Read a runtime data-set file back: (x, y, classes), with the same checks as the C reader
    (a file without labels: y None, classes 0)."""
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
    if version not in (SPDS_VERSION, SPDS_VERSION_UNLABELED) or dtype != 1 or not 1 <= ndim <= 8:
        raise SpidecError(f"{path}: unsupported version {version}, dtype {dtype} or {ndim} dimensions")
    if len(raw) < 32 + 4 * ndim:
        raise SpidecError(f"{path}: truncated header")
    dims = struct.unpack(f"<{ndim}I", raw[16: 16 + 4 * ndim])
    count, classes = struct.unpack("<QI", raw[16 + 4 * ndim: 28 + 4 * ndim])
    off, size = 28 + 4 * ndim, int(np.prod(dims))
    labelled = classes != 0 or version == SPDS_VERSION  # (version 1 has labels: its classes 0 is refused below)
    if len(raw) != off + 4 * count * size + (4 * count if labelled else 0) + 4:
        raise SpidecError(f"{path}: {count} samples of {size} values do not fit the file's {len(raw)} bytes")
    if count == 0:
        raise SpidecError(f"{path}: the data set is empty")
    if labelled and not 1 <= classes <= SPDS_MAX_CLASSES:
        raise SpidecError(f"{path}: {classes} classes is outside 1..{SPDS_MAX_CLASSES}")
    x = np.frombuffer(raw, "<f4", count * size, off).reshape((count, *dims))
    if not labelled:
        if not np.all(np.isfinite(x)):
            raise SpidecError(f"{path}: the samples hold NaN or inf values")
        return x.copy(), None, 0
    y = np.frombuffer(raw, "<i4", count, off + 4 * count * size)
    bad = np.flatnonzero((y < 0) | (y >= classes))
    if bad.size:
        raise SpidecError(f"{path}: label {int(y[bad[0]])} of sample {int(bad[0])} is outside 0..{classes - 1}")
    if not np.all(np.isfinite(x)):
        raise SpidecError(f"{path}: the samples hold NaN or inf values")
    return x.copy(), y.astype(np.int64), classes


def pack(source: str, out_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """``spidec dataset pack``: a named data set or an ``.npz`` (x_train, y_train, x_test, y_test)
    into ``NAME.train.spds`` and ``NAME.test.spds`` (``data_dir`` as for :func:`load`); an ``.npz``
    holding ``x`` (and no split) into one ``NAME.spds``: labelled when it also holds ``y``, else
    samples without labels for the C program's ``predict``."""
    out_dir = Path(out_dir)
    if source.endswith(".npz"):
        arrays = _npz_arrays(source)
        if "x" in arrays and not any(k in arrays for k in NPZ_SPLIT):
            if set(arrays) - {"x", "y"}:
                raise SpidecError(f"{source} holds {', '.join(arrays)}; expected {NPZ_HOLDS}")
            x = arrays["x"]
            y = _check_split(source, x, arrays.get("y"), "x", "y", "sample")
            classes = 0 if y is None else int(y.max()) + 1
            return [write_spds(out_dir / f"{data_name(source)}.spds", x, y, classes)]
    ds = load(source, data_dir)
    return [write_spds(out_dir / f"{ds.name}.train.spds", ds.x_train, ds.y_train, ds.classes),
            write_spds(out_dir / f"{ds.name}.test.spds", ds.x_test, ds.y_test, ds.classes)]


NPZ_SPLIT = ("x_train", "y_train", "x_test", "y_test")
NPZ_HOLDS = "x_train, y_train, x_test, y_test to train on, or x (samples without labels) or x and y to pack"


def _npz_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (no pickles), the way every command and API reads one."""
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise SpidecError(f"data file {str(path)!r} not found") from None
    except (ValueError, OSError, EOFError) as e:
        raise SpidecError(f"{path}: not a readable .npz ({e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise SpidecError(f"{path}: a single array (.npy), not an .npz archive of named arrays: {NPZ_HOLDS}")
    try:
        with z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, KeyError) as e:
        raise SpidecError(f"{path}: not a readable .npz ({e})") from None


def _check_split(path: str | os.PathLike, x: np.ndarray, y: np.ndarray | None, xname: str, yname: str,
                 what: str) -> np.ndarray | None:
    """Checks samples ``x`` and labels ``y`` of one set; returns the labels as int64 (floats that
    hold whole numbers, as np.zeros gives, are labels too)."""
    if x.ndim < 2:
        raise SpidecError(f"{path}: {xname} of shape {list(x.shape)}: expected samples [N, ...], one per row")
    if len(x) == 0:
        raise SpidecError(f"{path}: the {what} set is empty ({xname} holds no samples)")
    if x.dtype.kind not in "biuf":
        raise SpidecError(f"{path}: the samples {xname} must be numbers, got {x.dtype}")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise SpidecError(f"{path}: the samples {xname} hold NaN or inf values")
    if y is None:
        return None
    if y.size == 0:
        raise SpidecError(f"{path}: {yname} is empty")
    whole = y.dtype.kind == "f" and bool(np.all(np.isfinite(y))) and bool(np.all(y == np.round(y)))
    if y.dtype.kind not in "iub" and not whole:
        raise SpidecError(f"{path}: the labels {yname} must be integers, got {y.dtype}")
    if y.ndim != 1 or len(y) != len(x):
        raise SpidecError(f"{path}: {yname} of shape {list(y.shape)} for {len(x)} samples in {xname}: expected "
                          f"one label per sample, shape [{len(x)}]")
    if y.min() < 0:
        raise SpidecError(f"{path}: {yname} holds the label {int(y.min())}; labels are classes 0, 1, ...")
    if y.max() > SPDS_MAX_CLASSES:
        raise SpidecError(f"{path}: {yname} holds the label {int(y.max())}, past {SPDS_MAX_CLASSES} classes")
    return y.astype(np.int64)


def read_npz(path: str | os.PathLike) -> Dataset:
    """A data set from an ``.npz`` holding ``x_train``, ``y_train``, ``x_test``, ``y_test`` (samples
    [N, ...], integer labels [N]); classes: the largest label + 1. The one reader of ``.npz`` data
    behind :func:`load`, ``spidec train``/``run``/``demo``/``report``, ``dataset pack`` and Lava."""
    arrays = _npz_arrays(path)
    missing = [k for k in NPZ_SPLIT if k not in arrays]
    if missing:
        held = ", ".join(arrays) or "no arrays"
        if "x" in arrays and not any(k in arrays for k in NPZ_SPLIT):
            raise SpidecError(f"{path} holds samples without a training/test split ({held}): training needs "
                              f"x_train, y_train, x_test, y_test",
                              hint=f"spidec dataset pack {path} writes its samples for the C program's predict")
        raise SpidecError(f"{path} lacks {', '.join(missing)}: it holds {held}; expected {NPZ_HOLDS}")
    for split, what in (("train", "training"), ("test", "test")):
        arrays[f"y_{split}"] = _check_split(path, arrays[f"x_{split}"], arrays[f"y_{split}"], f"x_{split}",
                                            f"y_{split}", what)
    classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    return Dataset(data_name(str(path)), arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                   classes)


def data_name(source: str) -> str:
    """The name a data set's files get: ``digits``, or ``mine`` for ``path/mine.npz``."""
    return Path(source).stem if source.endswith(".npz") else source


def load(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """A named data set or an ``.npz`` with x_train, y_train, x_test, y_test.

    digits and mnist need no ``data_dir`` (mnist reads ``data_dir`` instead of its shipped copy when given);
    cifar10, cifar100 and cifar10-dvs are read from ``data_dir`` (the CLI's ``--data-dir DIR``), see
    :data:`DIR_DATASETS` for what it must hold."""
    if name.endswith(".npz"):
        return read_npz(name)
    if name in DIR_DATASETS:
        loader, holds = DIR_DATASETS[name]
        if data_dir is None:
            raise SpidecError(f"data set '{name}' is read from a local copy: give --data-dir DIR, a folder holding "
                              f"{holds}", hint="nothing is downloaded")
        return loader(Path(data_dir))
    if name == "mnist" and data_dir is not None:
        return mnist(data_dir)
    try:
        return DATASETS[name]()
    except KeyError:
        raise SpidecError(f"unknown data set '{name}'; available: {', '.join([*DATASETS, *DIR_DATASETS])} "
                          "or a .npz file") from None
