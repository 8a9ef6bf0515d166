"""Files and the command line (issue 18): where ``spidec compile`` may write and how (never into a
folder of other files without --force, never through a symbolic link, all or nothing), file-system
failures, non-UTF-8 paths and names read from files as one escaped line, and board runs under QEMU
that stop at --timeout, take --limit-train/--limit-test, draw the host trainer's sample order and
say whether the model fits the part."""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, ROOT
from spidec.backends.c import board as brd
from spidec.backends.c import epoch_order

import spidec
from spidec import SpidecError, fileio
from spidec.data import read_spds
from spidec.errors import printable

SPIR = str(EXAMPLES / "digits_fb.spir")
ONNX = str(EXAMPLES / "digits_fb.onnx")


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (links as their target text) by relative path."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(folder))] = b"-> " + os.fsencode(os.readlink(p))
        elif p.is_file():
            out[str(p.relative_to(folder))] = p.read_bytes()
    return out


def _one_line(err: str) -> str:
    assert err.startswith("spidec: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------ where compile writes


def test_compile_refuses_a_folder_of_other_files_and_never_follows_a_link(run_cli, tmp_path):
    out, target = tmp_path / "mine", tmp_path / "precious.spir"
    out.mkdir()
    target.write_text("the user's own model\n")
    (out / "model.spir").symlink_to(target)
    (out / "notes.txt").write_text("notes\n")
    before = _snapshot(out)
    code, _, err = run_cli("compile", SPIR, "-o", str(out))
    assert code == 1 and "--force" in _one_line(err) and "'notes.txt'" in err
    assert _snapshot(out) == before and target.read_text() == "the user's own model\n"
    # the Python API has the same rule
    with pytest.raises(SpidecError, match="holds other files"):
        spidec.compile(spidec.load(SPIR), target="sim", out=out)
    assert _snapshot(out) == before
    # --force writes, and replaces the link by the build's file instead of writing through it
    code, _, err = run_cli("compile", SPIR, "-o", str(out), "--force", "--quiet")
    assert code == 0, err
    assert target.read_text() == "the user's own model\n"
    assert not (out / "model.spir").is_symlink() and "population" in (out / "model.spir").read_text()
    assert (out / "notes.txt").read_text() == "notes\n"
    assert (out / fileio.BUILD_MARKER).read_text() == f"spidec {spidec.__version__}\n"
    # a new folder, an empty one and a file given as the folder
    (tmp_path / "empty").mkdir()
    for name in ("new/deeper", "empty"):
        assert run_cli("compile", SPIR, "-o", str(tmp_path / name), "--quiet")[0] == 0
    (tmp_path / "afile").write_text("x")
    code, _, err = run_cli("compile", SPIR, "-o", str(tmp_path / "afile"))
    assert code == 1 and "is a file" in _one_line(err) and (tmp_path / "afile").read_text() == "x"


def test_recompiling_a_build_keeps_the_users_files_and_replaces_links(run_cli, tmp_path):
    out, outside = tmp_path / "b", tmp_path / "outside.py"
    g = spidec.load(SPIR)
    spidec.compile(g, target="c", out=out, T=8, T_back=10)
    assert "simulate T=8 " in (out / "model.spir").read_text()
    # what a user keeps in a build folder: checkpoints, logs, results, a data folder
    (out / "checkpoint.bin").write_bytes(b"SPCK trained for days")
    (out / "logs").mkdir()
    (out / "logs" / "run.log").write_text("epoch 1 ...\n")
    (out / "results.json").write_text("{}\n")
    outside.write_text("# not spidec's\n")
    (out / "model.c").unlink()
    (out / "model.c").symlink_to(outside)
    (out / "runtime" / "include").rename(tmp_path / "include_elsewhere")
    (out / "runtime" / "include").symlink_to(tmp_path / "include_elsewhere")
    elsewhere = _snapshot(tmp_path / "include_elsewhere")
    spidec.compile(g, target="c", out=out, T=12, T_back=10)
    assert (out / "checkpoint.bin").read_bytes() == b"SPCK trained for days"
    assert (out / "logs" / "run.log").read_text() == "epoch 1 ...\n" and (out / "results.json").exists()
    assert outside.read_text() == "# not spidec's\n" and not (out / "model.c").is_symlink()
    assert "simulate T=12 " in (out / "model.spir").read_text()
    assert not (out / "runtime" / "include").is_symlink() and (out / "runtime" / "include" / "spide.h").is_file()
    assert _snapshot(tmp_path / "include_elsewhere") == elsewhere  # nothing written through the linked folder
    assert not [p for p in out.rglob(".*.tmp")]  # no temporary file left
    # a build of a spidec from before the marker (it has its manifest) is still a build
    (out / fileio.BUILD_MARKER).unlink()
    assert run_cli("compile", SPIR, "--target", "c", "-o", str(out), "--quiet")[0] == 0
    assert (out / fileio.BUILD_MARKER).is_file()
    # an output folder given as a link (a build on another disk) stays a link: the build lands there
    (tmp_path / "big_disk").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "big_disk")
    assert run_cli("compile", SPIR, "-o", str(tmp_path / "linked"), "--quiet")[0] == 0
    assert (tmp_path / "linked").is_symlink() and (tmp_path / "big_disk" / "model.py").is_file()
    # the listing names spidec's files, not its marker
    code, text, _ = run_cli("compile", SPIR, "--target", "c", "-o", str(out), "--json")
    assert code == 0 and ".spidec-build" not in json.loads(text)["files"]


# ------------------------------------------------------------------ file-system failures


def test_a_full_disk_leaves_the_previous_build_whole(tmp_path):
    """The file-size limit makes the kernel refuse a write (EFBIG), as a full disk (ENOSPC) would:
    one line, and every file of the earlier build as it was (no truncated model.c or weights.c)."""
    out = tmp_path / "c"
    spidec.compile(spidec.load(SPIR), target="c", out=out, T=8, T_back=10)
    before = _snapshot(out)
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
            "from spidec.cli import main\n"
            f"sys.exit(main(['compile', {SPIR!r}, '--target', 'c', '-o', {str(out)!r}, '--T', '12']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert re.fullmatch(r"spidec: error: cannot write \S+/weights\.c: \[Errno 27\] File too large\n", done.stderr)
    assert _snapshot(out) == before


def test_read_only_file_system_is_one_line_and_changes_nothing(run_cli, tmp_path, monkeypatch):
    out = tmp_path / "c"
    assert run_cli("compile", SPIR, "--target", "c", "-o", str(out), "--quiet")[0] == 0
    before = _snapshot(out)

    def read_only(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), src)

    monkeypatch.setattr(fileio.os, "replace", read_only)
    code, _, err = run_cli("compile", SPIR, "--target", "c", "-o", str(out), "--T", "12")
    assert code == 1 and re.fullmatch(r"spidec: error: cannot write \S+: \[Errno 30\] Read-only file system\n", err)
    assert _snapshot(out) == before  # (the staged files are removed again)
    code, _, err = run_cli("dataset", "pack", "digits", "-o", str(tmp_path / "data"))
    assert code == 1 and "digits.train.spds: [Errno 30] Read-only file system" in _one_line(err)
    assert not list((tmp_path / "data").iterdir())


def test_an_os_error_outside_spidecs_writers_is_one_line(run_cli, tmp_path, monkeypatch):
    from spidec import cli

    def full(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x\x1by"))

    monkeypatch.setattr(cli, "cmd_report", full)
    code, _, err = run_cli("report", str(tmp_path))
    assert code == 1 and err == f"spidec: error: {tmp_path}/x\\x1by: [Errno 28] No space left on device\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder (the test above covers it)")
def test_a_read_only_folder_is_one_line(run_cli, tmp_path):  # pragma: no cover - not run as root
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        code, _, err = run_cli("compile", SPIR, "-o", str(out / "b"))
        assert code == 1 and "cannot write" in _one_line(err) and "Permission denied" in err
    finally:
        out.chmod(0o755)


def test_non_utf8_paths_print_without_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "PYTHONPATH": str(ROOT)}
    base = os.fsencode(tmp_path)
    spidec_cli = [sys.executable, "-m", "spidec.cli"]
    done = subprocess.run([*spidec_cli, "compile", SPIR, "-o", base + b"/\xffdir"], capture_output=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert b"\\udcffdir/" in done.stdout and (tmp_path / os.fsdecode(b"\xffdir") / "model.py").is_file()
    done = subprocess.run([*spidec_cli, "compile", base + b"/\xffnone.spir"], capture_output=True, env=env,
                          timeout=300)
    assert done.returncode == 1 and done.stderr.count(b"\n") == 1 and b"\\udcffnone.spir" in done.stderr


# ------------------------------------------------------------------ names read from files


def test_control_characters_from_a_model_file_are_escaped(run_cli, tmp_path):
    onnx = pytest.importorskip("onnx")
    m = onnx.load(ONNX)
    clip = next(n for n in m.graph.node if n.op_type == "Clip")
    clip.op_type = "Sig\x1b[2Jmoid\nspidec: all good"
    clip.name = "/act/\x1b[31mClip\u202e"
    onnx.save(m, str(tmp_path / "evil.onnx"))
    code, _, err = run_cli("compile", str(tmp_path / "evil.onnx"), "-o", str(tmp_path / "b"))
    assert code == 1 and "\x1b" not in _one_line(err) and "\u202e" not in err
    assert "Sig\\x1b[2Jmoid\\nspidec: all good" in err and "\\x1b[31mClip\\u202e" in err
    assert not (tmp_path / "b").exists()
    # a warning naming a node is escaped too (a ReLU read as clamp(0, 1))
    clip.op_type, clip.name = "Relu", "/act/\x1b]0;pwned\x07Relu"
    del clip.input[1:]
    onnx.save(m, str(tmp_path / "relu.onnx"))
    with pytest.warns(spidec.SpidecWarning) as caught:
        spidec.load(str(tmp_path / "relu.onnx"))
    text = " ".join(str(w.message) for w in caught)
    assert "\\x1b]0;pwned\\x07Relu" in text and "\x1b" not in text and "\x07" not in text


def test_spidec_error_is_one_escaped_line_and_a_tools_output_below_it():
    e = SpidecError("bad \x07name", node="a\nb", hint="fix \x9b it")
    assert str(e) == "node 'a\\nb': bad \\x07name (hint: fix \\x9b it)"
    e = SpidecError("building the C program failed:", detail="model.c:1: error: x\n\tmore \x1b[0m\n")
    assert str(e) == "building the C program failed:\nmodel.c:1: error: x\n\tmore \\x1b[0m"
    assert str(e.located(file="f.onnx")).startswith("f.onnx: building") and "\n\tmore" in str(e)
    assert printable("caf\u00e9 \udcff") == "caf\u00e9 \\udcff"


def test_pack_of_empty_or_string_labelled_data_is_one_line(run_cli, tmp_path):
    x = np.zeros((3, 4), np.float32)
    for name, y in (("empty", np.zeros(0, np.int64)), ("strings", np.array(["a", "b", "c"]))):
        np.savez(tmp_path / f"{name}.npz", x_train=x[: len(y)], y_train=y, x_test=x, y_test=np.array([0, 1, 1]))
        code, _, err = run_cli("dataset", "pack", str(tmp_path / f"{name}.npz"), "-o", str(tmp_path / "d"))
        assert code == 1 and re.search("empty|must be integers", _one_line(err))
    assert not (tmp_path / "d").exists() or not list((tmp_path / "d").iterdir())


# ------------------------------------------------------------------ spidec run / train of c builds


@pytest.fixture(scope="module")
def c_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_files") / "c"
    spidec.compile(spidec.load(SPIR), target="c", out=out)
    return out


def _summary(run_cli, *args):
    code, text, err = run_cli(*args, "--json")
    assert code == 0, err
    return json.loads(text.splitlines()[-1])


def test_run_uses_the_executables_own_batch(run_cli, c_build):
    """spidec run passes no --batch of its own: the host executable's default (64, what the
    compiled sf is meant for) applies, as it does for spidec train and for the program by hand."""
    acc = {b: _summary(run_cli, "run", str(c_build), "--epochs", "1", *(("--batch", b) if b else ()))["test_accuracy"]
           for b in (None, "64", "1")}
    assert acc[None] == acc["64"] != acc["1"], acc
    assert _summary(run_cli, "train", str(c_build), "--epochs", "1")["test_accuracy"] == acc[None]


def test_limits_on_a_c_build_take_the_first_samples(run_cli, c_build):
    s = _summary(run_cli, "train", str(c_build), "--epochs", "1", "--limit-train", "100", "--limit-test", "30")
    x, y, classes = read_spds(c_build / "data" / "digits.train.first100.spds")
    full_x, full_y, _ = read_spds(c_build / "data" / "digits.train.spds")
    assert len(y) == 100 and np.array_equal(x, full_x[:100]) and np.array_equal(y, full_y[:100]) and classes == 10
    assert len(read_spds(c_build / "data" / "digits.test.first30.spds")[1]) == 30
    assert abs(s["test_accuracy"] * 30 - round(s["test_accuracy"] * 30)) < 0.01  # a count of 30 samples
    for flag, value in (("--limit-train", "0"), ("--limit-test", "-3")):
        code, _, err = run_cli("train", str(c_build), flag, value)
        assert code == 1 and f"{flag} must be at least 1" in _one_line(err)


def test_the_c_runtime_and_python_draw_the_same_sample_orders(c_build):
    """spide_order / spide_order_index (the host executable's and the board program's order, the
    board's computed position by position with no index array) against epoch_order."""
    art = spidec.compile(spidec.load(SPIR), target="c", out=c_build)
    lib = art.build().lib
    lib.spide_order.argtypes = [ctypes.c_uint64, ctypes.c_uint32, ctypes.POINTER(ctypes.c_int32), ctypes.c_int]
    lib.spide_order_index.restype = ctypes.c_uint32
    lib.spide_order_index.argtypes = [ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32]
    for seed in (0, 5, 2**64 - 1):
        for n in (1, 2, 3, 7, 16, 17, 1437, 60000):
            for e in (0, 1, 2**31 - 1):
                perm = (ctypes.c_int32 * n)()
                lib.spide_order(seed, e, perm, n)
                ref = epoch_order(seed, e, n)
                assert list(perm) == ref.tolist(), (seed, n, e)
                assert sorted(ref.tolist()) == list(range(n))  # a permutation
                assert lib.spide_order_index(seed, e, n, n - 1) == ref[-1]
    a, b, c = epoch_order(5, 0, 1437), epoch_order(5, 1, 1437), epoch_order(6, 1, 1437)
    assert (a != b).mean() > 0.99 and (b != c).mean() > 0.99
    # a shuffle, not a near-identity: positions move about n/3 on average, as uniform ones do
    assert abs(np.abs(a - np.arange(1437)).mean() / 1437 - 1 / 3) < 0.05


# ------------------------------------------------------------------ boards


def test_the_board_table_is_the_linker_scripts_and_the_verdict_counts(tmp_path):
    ld = (ROOT / "runtime" / "board" / "link.ld").read_text()
    size = {m[1]: int(m[2]) << {"K": 10, "M": 20}[m[3]]
            for m in re.finditer(r"(FLASH|RAM)\s.*LENGTH = (\d+)([KM])", ld)}
    for b in brd.BOARDS.values():
        assert (b["ram_bytes"], b["flash_bytes"]) == (size["RAM"], size["FLASH"])
    plan = [{"part": "weights", "symbols": {"w": 10 << 20}, "ram": 10 << 20, "flash": 3 << 20},
            {"part": "momentum", "symbols": {"m": 7 << 20}, "ram": 7 << 20, "flash": 0}]
    text = brd.format_report(plan, board="mps2-an385")
    assert "does not fit mps2-an385 (Cortex-M3): over its RAM by 1,024 KiB;" in text
    v = brd.fits("mps2-an386", (16 << 20) + 1, 5 << 20)
    assert not v["fits"] and v["over"] == {"ram": 1, "flash": 1 << 20}
    assert "over its RAM by 1 KiB and flash by 1,024 KiB" in brd.fits_line(v)
    assert brd.fits("mps2-an386", 16 << 20, 4 << 20)["fits"]


def test_compile_report_says_whether_the_board_fits(run_cli, tmp_path):
    out = tmp_path / "m4"
    code, text, err = run_cli("compile", ONNX, "--board", "mps2-an386", "--report", "-o", str(out))
    assert code == 0, err
    line = next(t for t in text.splitlines() if "fit" in t)
    assert line.startswith("fits mps2-an386 (Cortex-M4F): RAM ") and "of 16,384.0 KiB" in line
    report = json.loads((out / "memory.json").read_text())
    assert report["fits"]["fits"] and report["fits"]["ram_bytes"] == 16 << 20
    assert report["fits"]["ram"] == brd.report_totals(report["plan"], report["check"])[0]


@pytest.fixture(scope="module")
def board_build(tmp_path_factory):
    missing = brd.missing_tools()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the board tests; missing {', '.join(missing)}")
        pytest.skip(f"missing {', '.join(missing)}: {brd.INSTALL_HINT}")
    out = tmp_path_factory.mktemp("cli_board") / "m4"
    spidec.compile(spidec.passes.run(spidec.load(ONNX)), target="c", out=out, board="mps2-an386")
    brd.build(out)
    return out


def test_board_timeout_stops_qemu_and_exits_nonzero(run_cli, board_build):
    (board_build / "run-mps2-an386.json").unlink(missing_ok=True)
    t0 = time.monotonic()
    code, _, err = run_cli("run", str(board_build), "--qemu", "--timeout", "2")  # a whole digits epoch: minutes
    took = time.monotonic() - t0
    assert code == 1 and "QEMU ran past the timeout of 2 s and was stopped" in _one_line(err)
    assert took < 30, took
    assert not (board_build / "run-mps2-an386.json").exists()
    code, _, err = run_cli("run", str(board_build), "--qemu", "--timeout", "nan")
    assert code == 1 and "--timeout must be a positive number" in _one_line(err)


def test_board_and_host_runs_with_one_seed_see_one_order(run_cli, board_build):
    """--limit-train/--limit-test on the board, and the same training as the host executable of the
    same build (bit-identical fixed point: equal losses and accuracies only in the same order)."""
    common = ("--limit-train", "150", "--limit-test", "60", "--batch", "8", "--epochs", "2")
    board = {s: _summary(run_cli, "run", str(board_build), "--qemu", "--seed", s, *common) for s in ("3", "4")}
    host = {s: _summary(run_cli, "run", str(board_build), "--seed", s, *common) for s in ("3", "4")}
    result = json.loads((board_build / "run-mps2-an386.json").read_text())
    assert [e["samples"] for e in result["epochs"]] == [60, 150, 150]
    assert result["memory"]["fits"]["fits"]
    for s in ("3", "4"):
        assert len(board[s]["epochs"]) == len(host[s]["epochs"]) == 2
        for b, h in zip(board[s]["epochs"], host[s]["epochs"]):
            for key in ("train_loss", "train_accuracy", "test_accuracy"):
                assert math.isclose(b[key], h[key], abs_tol=1e-4), (s, key, b, h)
    assert board["3"]["epochs"][0]["train_loss"] != board["4"]["epochs"][0]["train_loss"]  # the seed matters
