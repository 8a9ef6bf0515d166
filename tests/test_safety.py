"""Crafted files (issue 18): a checkpoint that would run code when unpickled, and data sets whose
class count or labels fall outside what the C runtime indexes. Each ends as one clear error with
nothing run and nothing read out of bounds."""

from __future__ import annotations

import os
import struct
import subprocess
import zlib

import numpy as np
import pytest
import torch
from conftest import EXAMPLES

import spidec
from spidec import SpidecError
from spidec.data import SPDS_MAGIC, SPDS_VERSION, pack, read_spds, write_spds
from spidec.report import report_dir


class _Payload:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_checkpoint(path, marker) -> None:
    torch.save({"graph_hash": "x", "epoch": 1, "tensors": _Payload(str(marker)), "history": []}, path)


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "sim"
    art = spidec.compile(spidec.load(EXAMPLES / "digits_fb.spir"), target="sim", out=out, T=12, T_back=20)
    assert art.run_cli("--data", "digits", "--epochs", "1", "--quiet", "--limit-train", "120",
                       "--limit-test", "60") == 0
    return art


def test_report_does_not_unpickle_a_crafted_checkpoint(sim_run, tmp_path):
    run = tmp_path / "shared_run"
    run.mkdir()
    for name in ("model.spir", "weights.npz"):
        (run / name).write_bytes((sim_run.out / name).read_bytes())
    marker = tmp_path / "ran"
    _evil_checkpoint(run / "checkpoint.pt", marker)
    with pytest.raises(SpidecError, match="not a checkpoint spidec can read safely") as e:
        report_dir(run)
    assert "\n" not in str(e.value) and not marker.exists()
    # the sim program's own checkpoint still reports
    (run / "checkpoint.pt").write_bytes((sim_run.out / "checkpoint.pt").read_bytes())
    assert report_dir(run)


def test_sim_resume_does_not_unpickle_a_crafted_checkpoint(sim_run, tmp_path, capsys):
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.pt"
    _evil_checkpoint(bad, marker)
    code = sim_run.run_cli("--data", "digits", "--epochs", "2", "--quiet", "--limit-train", "60",
                           "--checkpoint", str(bad), "--resume")
    assert code != 0 and not marker.exists()
    assert "unreadable" in capsys.readouterr().err
    # the checkpoint it writes is plain tensors (weights_only loads it without allow-lists) ...
    state = torch.load(sim_run.out / "checkpoint.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state["tensors"].values())
    # ... and one of an older spidec (numpy arrays) still resumes
    old = tmp_path / "old.pt"
    torch.save({**state, "tensors": {k: v.numpy() for k, v in state["tensors"].items()},
                "momentum": {k: v.numpy() for k, v in state["momentum"].items()}}, old)
    assert sim_run.run_cli("--data", "digits", "--epochs", "2", "--quiet", "--limit-train", "60",
                           "--limit-test", "30", "--checkpoint", str(old), "--resume") == 0


def _spds(path, x: np.ndarray, y: np.ndarray, classes: int) -> None:
    """A data-set file with a valid CRC and whatever header fields the test wants."""
    head = SPDS_MAGIC + struct.pack(f"<III{x.ndim - 1}IQI", SPDS_VERSION, 1, x.ndim - 1, *x.shape[1:], len(x), classes)
    body = head + x.astype("<f4").tobytes() + y.astype("<i4").tobytes()
    path.write_bytes(body + struct.pack("<I", zlib.crc32(body)))


def test_class_counts_past_int_max_are_refused(tmp_path):
    x = np.zeros((4, 64), np.float32)
    with pytest.raises(SpidecError, match=r"must lie in 0\.\.3"):  # a label past the classes
        write_spds(tmp_path / "a.spds", x, np.array([0, 1, 2, 2**31 - 1]), 4)
    with pytest.raises(SpidecError, match="classes is outside"):
        write_spds(tmp_path / "a.spds", x, np.array([0, 1, 2, 2**31 - 1]), 2**31)
    with pytest.raises(SpidecError, match="must lie in"):  # 2^32 + 1 would wrap to 1 in int32
        write_spds(tmp_path / "a.spds", x, np.array([0, 1, 2, 2**32 + 1]), 4)
    with pytest.raises(SpidecError, match="must be integers"):
        write_spds(tmp_path / "a.spds", x, np.array(["a", "b", "c", "d"]), 4)
    # spidec dataset pack of an .npz with one label 2^31 - 1: 2^31 classes, refused
    npz = tmp_path / "big.npz"
    np.savez(npz, x_train=x, y_train=np.array([0, 1, 2, 2**31 - 1]), x_test=x[:2], y_test=np.array([0, 1]))
    with pytest.raises(SpidecError, match="classes is outside"):
        pack(str(npz), tmp_path / "out")
    for bad in ({"y_train": np.array([], np.int64)}, {"y_train": np.array(["a"] * 4)}):
        np.savez(npz, **{"x_train": x, "y_train": np.array([0, 1, 2, 3]), "x_test": x[:2], "y_test": np.array([0, 1]),
                         **bad})
        with pytest.raises(SpidecError, match=r"empty|must be integers"):
            pack(str(npz), tmp_path / "out")
    # a crafted file (valid CRC) read back by Python and by the C runtime
    crafted = tmp_path / "crafted.spds"
    _spds(crafted, x, np.array([0, 1, 2, 2**31 - 1]), 2**31)
    with pytest.raises(SpidecError, match="classes is outside"):
        read_spds(crafted)
    art = spidec.compile(spidec.load(EXAMPLES / "digits_fb.spir"), target="c", out=tmp_path / "c", T=8, T_back=10)
    art.build()
    for cmd in (["train", "--train", str(crafted), "--quiet"], ["eval", "--test", str(crafted)]):
        done = subprocess.run([str(art.executable), *cmd], capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and "2147483648 classes is outside" in done.stderr, (cmd, done.stderr)
    # labels past the model's classes through the Python API: one error, nothing indexed
    rt = art.runtime()
    with pytest.raises(SpidecError, match="the model's classes"):
        rt.train(x, np.array([0, 1, 2, 10]), epochs=1, batch=2)
    with pytest.raises(SpidecError, match="integer labels"):
        rt.evaluate(x, np.array([0.5, 1, 2, 3]))


def test_a_checkpoint_epoch_out_of_range_is_refused(tmp_path):
    """A CRC-valid checkpoint whose epoch is 2^31 - 1 (a resume would replay 2^31 shuffles) or
    2^32 - 1 (printed as -1): one error line, exit 1, the model untouched."""
    art = spidec.compile(spidec.load(EXAMPLES / "digits_fb.spir"), target="c", out=tmp_path / "c", T=8, T_back=10)
    art.build()
    x, y = np.random.default_rng(0).random((16, 64), np.float32), np.arange(16) % 10
    data = write_spds(tmp_path / "d.spds", x, y, 10)
    ck = tmp_path / "ck.bin"
    run = [str(art.executable), "train", "--train", str(data), "--epochs", "1", "--checkpoint", str(ck), "--quiet"]
    assert subprocess.run(run, capture_output=True, timeout=60).returncode == 0
    raw = bytearray(ck.read_bytes())
    for epoch in (2**31 - 1, 2**32 - 1):
        raw[24:28] = struct.pack("<I", epoch)
        raw[-4:] = struct.pack("<I", zlib.crc32(bytes(raw[:-4])))
        ck.write_bytes(bytes(raw))
        done = subprocess.run([*run[:4], "--epochs", "2", "--checkpoint", str(ck), "--resume", "--quiet"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and f"epoch {epoch} is outside 0..1000000" in done.stderr, done.stderr
    done = subprocess.run([*run[:4], "--epochs", "2000000"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--epochs 0..1000000" in done.stderr


def test_cli_output_paths_and_devices_are_one_line_errors(run_cli, tmp_path):
    """-o an existing file, --checkpoint/--log/--save-weights a folder, --device nonsense, and cuda
    on a torch without CUDA: one line each (no traceback), and no stray temporary file left."""
    afile, adir = tmp_path / "afile", tmp_path / "adir"
    afile.write_text("mine")
    adir.mkdir()
    code, _, err = run_cli("compile", str(EXAMPLES / "digits_fb.spir"), "--target", "sim", "-o", str(afile))
    assert code != 0 and "is a file" in err and "Traceback" not in err and afile.read_text() == "mine"
    build = tmp_path / "sim"
    assert run_cli("compile", str(EXAMPLES / "digits_fb.spir"), "--target", "sim", "-o", str(build))[0] == 0
    base = ("train", str(build), "--data", "digits", "--epochs", "1", "--limit-train", "40", "--limit-test", "20")
    cases = [(("--checkpoint", str(adir)), "is a folder"), (("--log", str(adir)), "is a folder"),
             (("--save-weights", str(adir)), "is a folder"), (("--device", "nonsense"), "is not a device")]
    if not torch.cuda.is_available():
        cases.append((("--device", "cuda"), "no usable CUDA"))
    for extra, says in cases:
        code, _, err = run_cli(*base, *extra)
        assert code != 0 and says in err and "Traceback" not in err, (extra, err)
        assert len(err.strip().splitlines()) <= 2, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile", "sim"]  # no stray temp files
    assert list(adir.iterdir()) == []
