"""CIFAR-10 / CIFAR-100 (official python archives, folder or .tar.gz) and CIFAR10-DVS frame folders, on
synthetic files in the exact formats, with their checksums substituted for the official ones."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from spidec import data
from spidec.data import CIFAR10_DVS_CLASSES, cifar10, cifar10_dvs, cifar100, load, resize_frames
from spidec.errors import SpidecError

CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


def md5(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


def dump(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)  # the originals are protocol-2 pickles


def make_cifar10(tmp: Path, per_batch: int = 3, seed: int = 0) -> tuple[Path, dict[str, str], dict]:
    """``tmp/cifar-10-batches-py`` with small batches, its md5s, and the arrays written."""
    rng = np.random.default_rng(seed)
    folder = tmp / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    sums, written = {}, {}
    for name in CIFAR10_FILES:
        if name == "batches.meta":
            obj = {b"num_cases_per_batch": per_batch, b"num_vis": 3072,
                   b"label_names": [c.encode() for c in CIFAR10_DVS_CLASSES]}
        else:
            x = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
            y = [int(v) for v in rng.integers(0, 10, size=per_batch)]
            obj = {b"batch_label": name.encode(), b"labels": y, b"data": x,
                   b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}
            written[name] = (x, y)
        raw = dump(obj)
        (folder / name).write_bytes(raw)
        sums[f"cifar-10-batches-py/{name}"] = md5(raw)
    return folder, sums, written


def make_tar(folder: Path, archive: Path, skip: str | None = None) -> str:
    with tarfile.open(archive, "w:gz") as tar:
        for f in sorted(folder.iterdir()):
            if f.name != skip:
                tar.add(f, arcname=f"{folder.name}/{f.name}")
    return md5(archive.read_bytes())


def expected_x(written: dict, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([written[n][0] for n in names])
    y = np.concatenate([written[n][1] for n in names])
    return x, y


def test_cifar10_folder(tmp_path):
    folder, sums, written = make_cifar10(tmp_path)
    for root in (tmp_path, folder):  # the folder holding it, or the folder itself
        ds = cifar10(root, checksums=sums)
        assert ds.name == "cifar10" and ds.classes == 10
        assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
        assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
        raw, y = expected_x(written, CIFAR10_FILES[:5])
        np.testing.assert_array_equal(ds.y_train, y)  # batches 1..5 in order
        np.testing.assert_array_equal(ds.y_test, written["test_batch"][1])
        # rows are the R, G and B planes of 32x32, row-major; values byte / 255 in float32
        n, c, i, j = 7, 2, 5, 30
        assert ds.x_train[n, c, i, j] == np.float32(raw[n, c * 1024 + i * 32 + j]) / np.float32(255)
        np.testing.assert_array_equal(ds.x_train.reshape(15, -1), raw.astype(np.float32) / np.float32(255))
        assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_cifar10_tar_gz_and_load(tmp_path, monkeypatch):
    folder, sums, written = make_cifar10(tmp_path / "src")
    (tmp_path / "d").mkdir()
    archive = tmp_path / "d" / "cifar-10-python.tar.gz"
    sums["cifar-10-python.tar.gz"] = make_tar(folder, archive)
    monkeypatch.setattr(data, "CIFAR_MD5", sums)
    for root in (tmp_path / "d", archive):
        ds = load("cifar10", root)
        raw, y = expected_x(written, CIFAR10_FILES[:5])
        np.testing.assert_array_equal(ds.x_train.reshape(15, -1), raw.astype(np.float32) / np.float32(255))
        np.testing.assert_array_equal(ds.y_train, y)
        np.testing.assert_array_equal(ds.y_test, written["test_batch"][1])
    with pytest.raises(SpidecError, match=r"--data-dir DIR.*cifar-10-batches-py"):
        load("cifar10")
    with pytest.raises(SpidecError, match=r"--data-dir DIR.*cifar-100-python"):
        load("cifar100")
    with pytest.raises(SpidecError, match="--data-dir DIR"):
        load("cifar10-dvs")


def test_cifar10_corrupt_and_missing_files(tmp_path):
    folder, sums, _ = make_cifar10(tmp_path)
    raw = bytearray((folder / "data_batch_3").read_bytes())
    raw[-100] ^= 1
    (folder / "data_batch_3").write_bytes(bytes(raw))
    with pytest.raises(SpidecError) as e:
        cifar10(tmp_path, checksums=sums)
    msg = str(e.value)
    assert "data_batch_3" in msg and sums["cifar-10-batches-py/data_batch_3"] in msg and "\n" not in msg
    # the official checksums are the default
    with pytest.raises(SpidecError, match="c99cafc152244af753f735de768cd75f"):
        cifar10(tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(SpidecError) as e:
        cifar10(tmp_path, checksums={**sums, "cifar-10-batches-py/data_batch_3": md5(bytes(raw))})
    msg = str(e.value)
    assert "test_batch" in msg and "not found" in msg and sums["cifar-10-batches-py/test_batch"] in msg
    assert "data_batch_1, data_batch_2" in msg and "batches.meta" in msg and "\n" not in msg
    with pytest.raises(SpidecError, match=r"CIFAR-10 not found.*cifar-10-python.tar.gz"):
        cifar10(tmp_path / "elsewhere", checksums=sums)


def test_cifar10_tar_gz_corrupt_or_incomplete(tmp_path):
    folder, sums, _ = make_cifar10(tmp_path / "src")
    (tmp_path / "d").mkdir()
    archive = tmp_path / "d" / "cifar-10-python.tar.gz"
    make_tar(folder, archive)
    with pytest.raises(SpidecError) as e:  # the official md5 of the archive
        cifar10(tmp_path / "d", checksums={**sums, "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"})
    assert "cifar-10-python.tar.gz" in str(e.value) and "c58f30108f718f92721af3b95e74349a" in str(e.value)
    sums["cifar-10-python.tar.gz"] = make_tar(folder, archive, skip="data_batch_4")
    with pytest.raises(SpidecError) as e:
        cifar10(tmp_path / "d", checksums=sums)
    assert "lacks cifar-10-batches-py/data_batch_4" in str(e.value)
    assert sums["cifar-10-batches-py/data_batch_4"] in str(e.value)


def test_forbidden_pickle_is_refused_without_running_it(tmp_path):
    folder, sums, _ = make_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    for payload in ({b"data": Evil()}, Evil()):
        raw = dump(payload)
        (folder / "data_batch_2").write_bytes(raw)
        with pytest.raises(SpidecError, match=r"refused to unpickle.*(posix|nt|os)\.system"):
            cifar10(tmp_path, checksums={**sums, "cifar-10-batches-py/data_batch_2": md5(raw)})
        assert not marker.exists()
    # a codec other than latin1 through _codecs.encode, and a huge bytes(n), are refused too
    raw = pickle.dumps({b"x": 1}, protocol=2).replace(b"latin1", b"utf_32")
    raw2 = b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R."
    for bad in (raw, raw2):
        (folder / "data_batch_2").write_bytes(bad)
        with pytest.raises(SpidecError, match="refused to unpickle"):
            cifar10(tmp_path, checksums={**sums, "cifar-10-batches-py/data_batch_2": md5(bad)})


def test_malformed_batches(tmp_path):
    folder, sums, _ = make_cifar10(tmp_path)
    for obj, words in (([1, 2], "not the dict"), ({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]},
                                                  "3072"),
                       ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1"),
                       ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, "0..9")):
        raw = dump(obj)
        (folder / "data_batch_1").write_bytes(raw)
        with pytest.raises(SpidecError, match=words):
            cifar10(tmp_path, checksums={**sums, "cifar-10-batches-py/data_batch_1": md5(raw)})
    raw = b"\x80\x02}q\x00"  # truncated
    (folder / "data_batch_1").write_bytes(raw)
    with pytest.raises(SpidecError, match="not a readable CIFAR pickle"):
        cifar10(tmp_path, checksums={**sums, "cifar-10-batches-py/data_batch_1": md5(raw)})


def py2_pickle(obj) -> bytes:
    """What Python 2's cPickle.dump(obj, f, 2) wrote for the CIFAR batches: str as (SHORT_)BINSTRING,
    arrays through numpy.core.multiarray._reconstruct with their bytes as a str."""
    out = bytearray(b"\x80\x02")

    def s(b: bytes) -> None:
        out.extend((b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<I", len(b))) + b)

    def w(o) -> None:
        if isinstance(o, bytes):
            s(o)
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif o is None:
            out.extend(b"N")
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                w(v)
            out.extend(b"e")
        elif isinstance(o, tuple):
            out.extend(b"(")
            for v in o:
                w(v)
            out.extend(b"t")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                w(k)
                w(v)
            out.extend(b"u")
        elif isinstance(o, np.ndarray):
            assert o.dtype == np.uint8
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            w((0,))
            s(b"b")
            out.extend(b"\x87R(")  # TUPLE3 REDUCE, then the state
            w(1)
            w(tuple(o.shape))
            out.extend(b"cnumpy\ndtype\n")
            w((b"u1", 0, 1))
            out.extend(b"R")
            w((3, b"|", None, None, None, -1, -1, 0))
            out.extend(b"b")  # BUILD the dtype
            w(False)
            s(o.tobytes())
            out.extend(b"tb")  # the state tuple, BUILD the array
        else:
            raise TypeError(type(o))

    w(obj)
    out.extend(b".")
    return bytes(out)


def test_python2_pickles_as_published(tmp_path):
    folder, sums, _ = make_cifar10(tmp_path)
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    raw = py2_pickle({b"batch_label": b"testing batch 1 of 1", b"labels": [3, 1, 4, 1], b"data": x,
                      b"filenames": [b"a.png", b"b.png", b"c.png", b"d.png"]})
    (folder / "test_batch").write_bytes(raw)
    ds = cifar10(tmp_path, checksums={**sums, "cifar-10-batches-py/test_batch": md5(raw)})
    np.testing.assert_array_equal(ds.y_test, [3, 1, 4, 1])
    np.testing.assert_array_equal(ds.x_test.reshape(4, -1), x.astype(np.float32) / np.float32(255))


def test_cifar100_folder_and_tar(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "src" / "cifar-100-python"
    folder.mkdir(parents=True)
    sums, written = {}, {}
    for name, n in (("train", 6), ("test", 4)):
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        coarse = [int(v) for v in rng.integers(0, 20, size=n)]
        written[name] = (x, fine)
        raw = dump({b"filenames": [b"f"] * n, b"batch_label": name.encode(), b"fine_labels": fine,
                    b"coarse_labels": coarse, b"data": x})
        (folder / name).write_bytes(raw)
        sums[f"cifar-100-python/{name}"] = md5(raw)
    raw = dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"s{i}".encode() for i in range(20)]})
    (folder / "meta").write_bytes(raw)
    sums["cifar-100-python/meta"] = md5(raw)
    (tmp_path / "d").mkdir()
    sums["cifar-100-python.tar.gz"] = make_tar(folder, tmp_path / "d" / "cifar-100-python.tar.gz")
    for root in (tmp_path / "src", folder, tmp_path / "d"):
        ds = cifar100(root, checksums=sums)
        assert ds.name == "cifar100" and ds.classes == 100
        assert ds.x_train.shape == (6, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
        np.testing.assert_array_equal(ds.y_train, written["train"][1])  # the fine labels
        np.testing.assert_array_equal(ds.y_test, written["test"][1])
        np.testing.assert_array_equal(ds.x_test.reshape(4, -1), written["test"][0] / np.float32(255))
    (folder / "meta").unlink()
    with pytest.raises(SpidecError) as e:
        cifar100(tmp_path / "src", checksums=sums)
    assert "meta" in str(e.value) and sums["cifar-100-python/meta"] in str(e.value)


def test_cifar_constants():
    assert data.CIFAR10_MEAN == (0.4914, 0.4822, 0.4465) and data.CIFAR10_STD == (0.2023, 0.1994, 0.2010)
    assert data.CIFAR100_MEAN == data.CIFAR10_MEAN and data.CIFAR100_STD == data.CIFAR10_STD
    assert data.CIFAR_MD5["cifar-10-python.tar.gz"] == "c58f30108f718f92721af3b95e74349a"
    assert data.CIFAR_MD5["cifar-100-python.tar.gz"] == "eb9058c3a382ffc7106e4002c42a8d85"


# ------------------------------------------------------------------ CIFAR10-DVS
def write_frames(path: Path, frames: np.ndarray, key: str = "frames") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{key: frames})


def test_dvs_split_folders(tmp_path):
    rng = np.random.default_rng(2)
    written = {}
    for split, n in (("train", 3), ("test", 1)):
        for c in CIFAR10_DVS_CLASSES:
            for i in (2, 10, 1)[:n]:  # natural order: 1, 2, 10
                f = rng.integers(0, 4, size=(3, 2, 96, 96)).astype(np.int16)
                write_frames(tmp_path / split / c / f"s_{i}.npz", f)
                written[(split, c, i)] = f
    ds = cifar10_dvs(tmp_path)
    assert ds.name == "cifar10-dvs" and ds.classes == 10
    assert ds.x_train.shape == (30, 3, 2, 48, 48) and ds.x_test.shape == (10, 3, 2, 48, 48)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.y_train, np.repeat(np.arange(10), 3))
    np.testing.assert_array_equal(ds.y_test, np.arange(10))
    # class 'cat' (label 3), files in natural order 1, 2, 10; counts clipped to [0, 1] before resizing
    for k, i in enumerate((1, 2, 10)):
        want = resize_frames(np.clip(written[("train", "cat", i)], 0, 1).astype(np.float32), 48)
        np.testing.assert_array_equal(ds.x_train[9 + k], want)
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    raw = load("cifar10-dvs", tmp_path)
    np.testing.assert_array_equal(raw.x_test, ds.x_test)
    unclipped = cifar10_dvs(tmp_path, clip=False)
    assert unclipped.x_train.max() > 1.0


def test_dvs_authors_layout(tmp_path):
    rng = np.random.default_rng(3)
    for c in CIFAR10_DVS_CLASSES:
        for i in range(10):
            f = np.full((2, 2, 48, 48), i, dtype=np.float64)  # the authors' converter saves float64 as arr_0
            f[0, 1, 0, 0] = rng.random()
            write_frames(tmp_path / c / f"cifar10_{c}_{i}.npz", f, key="arr_0")
    ds = cifar10_dvs(tmp_path, clip=False)
    assert ds.x_train.shape == (90, 2, 2, 48, 48) and ds.x_test.shape == (10, 2, 2, 48, 48)
    # the first 90% of each class (i = 0..8) train, the rest (i = 9) test; 48x48 frames are not resampled
    np.testing.assert_array_equal(ds.x_train[:9, 1, 0, 5, 5], np.arange(9))
    np.testing.assert_array_equal(ds.x_test[:, 1, 0, 5, 5], np.full(10, 9))
    np.testing.assert_array_equal(ds.y_train, np.repeat(np.arange(10), 9))


def test_dvs_resize_is_pillows_bilinear():
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(4)
    for h, w in ((128, 128), (96, 96), (40, 60)):
        img = rng.random((h, w)).astype(np.float32)
        want = np.asarray(pil.fromarray(img, mode="F").resize((48, 48), pil.BILINEAR))
        got = resize_frames(img[None, None], 48)[0, 0]
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    # an exact multiple is a triangle filter, e.g. 96 -> 48: weights 1/8, 3/8, 3/8, 1/8
    row = np.zeros((1, 96), np.float32)
    row[0, 10] = 1
    np.testing.assert_allclose(resize_frames(np.repeat(row, 48, 0)[None], 48)[0, 0, 4:7], [0.125, 0.375, 0])


def test_dvs_errors(tmp_path):
    with pytest.raises(SpidecError, match="not found"):
        cifar10_dvs(tmp_path / "nope")
    with pytest.raises(SpidecError, match=r"holds no CIFAR10-DVS frames.*train/<class>"):
        cifar10_dvs(tmp_path)
    good = np.zeros((2, 2, 48, 48), np.uint8)
    for split in ("train", "test"):
        for c in CIFAR10_DVS_CLASSES:
            write_frames(tmp_path / split / c / "a.npz", good)
    (tmp_path / "test" / "dog" / "a.npz").unlink()
    with pytest.raises(SpidecError, match=r"class folder .*test.dog.* holds no \.npz"):
        cifar10_dvs(tmp_path)
    (tmp_path / "test" / "dog").rmdir()
    with pytest.raises(SpidecError, match=r"class folder .*test.dog.* not found"):
        cifar10_dvs(tmp_path)
    write_frames(tmp_path / "test" / "dog" / "a.npz", good[0])
    with pytest.raises(SpidecError, match=r"a\.npz: frames of shape \[2, 48, 48\].*\[T, 2, H, W\]"):
        cifar10_dvs(tmp_path)
    write_frames(tmp_path / "test" / "dog" / "a.npz", np.zeros((3, 2, 48, 48)))
    with pytest.raises(SpidecError, match=r"3 frames.*same T"):
        cifar10_dvs(tmp_path)
    write_frames(tmp_path / "test" / "dog" / "a.npz", good, key="events")
    with pytest.raises(SpidecError, match="expected an array 'frames'"):
        cifar10_dvs(tmp_path)
    (tmp_path / "test" / "dog" / "a.npz").write_bytes(b"junk")
    with pytest.raises(SpidecError, match=r"not a readable .npz"):
        cifar10_dvs(tmp_path)
    np.save(tmp_path / "test" / "dog" / "a.npy", good)
    (tmp_path / "test" / "dog" / "a.npy").replace(tmp_path / "test" / "dog" / "a.npz")
    with pytest.raises(SpidecError, match=r"a single array \(\.npy\)"):
        cifar10_dvs(tmp_path)
    shutil.rmtree(tmp_path / "test")
    with pytest.raises(SpidecError, match=r"test' not found"):
        cifar10_dvs(tmp_path)


def test_existing_loaders_unchanged(tmp_path):
    d = load("digits")
    assert d.name == "digits" and d.x_train.shape[1:] == (64,)
    with pytest.raises(SpidecError, match="unknown data set 'cifar'"):
        load("cifar")
    buf = io.BytesIO()
    np.savez(buf, x_train=np.zeros((2, 3)), y_train=np.array([0, 1]), x_test=np.zeros((1, 3)), y_test=np.array([1]))
    (tmp_path / "mine.npz").write_bytes(buf.getvalue())
    assert load(str(tmp_path / "mine.npz")).classes == 2
