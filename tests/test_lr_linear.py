"""--lr-schedule linear:K (issue 17): the rate falls in K equal steps over the run, batch ``it`` of
``total`` at ``lr * (1 - floor(K * it / total) / K)``; the same floats in spidec.schedule, the
host C trainer, the board program under QEMU and the sim program."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES
from spidec.backends.c import TrainOpts, emit, epoch_order, read_weights_dump

import spidec
from spidec import data
from spidec.errors import SpidecError
from spidec.schedule import canonical_schedule, lr_at, parse_schedule

needs_cc = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None,
                              reason="the C backend needs a C compiler (cc) and make")
N = 256  # digits samples: 4 chunks of 64 (online updates decay every 64 steps of an epoch: chunks start in phase)


def test_lr_at_falls_in_k_steps_over_the_run():
    sched = parse_schedule("linear:4")
    assert sched == ("linear", (4,), 1.0)
    got = [lr_at(sched, 0.1, 0, 1, i, total=8) for i in range(8)]
    assert got == [0.1, 0.1, 0.1 * 0.75, 0.1 * 0.75, 0.1 * 0.5, 0.1 * 0.5, 0.1 * 0.25, 0.1 * 0.25]
    # two epochs of 5 batches: total 10, K 3 -> floor(3 * it / 10)
    sched = parse_schedule("linear:3")
    assert [lr_at(sched, 1.0, it // 5, 2, it, total=10) for it in range(10)] == \
        [1.0] * 4 + [1.0 - 1 / 3] * 3 + [1.0 - 2 / 3] * 3
    assert lr_at(sched, 0.5, 0, 1, 0, warmup=4, total=10) == 0.5 * 1 / 4  # warmup multiplies
    assert lr_at(parse_schedule("linear:1"), 0.3, 0, 1, 99, total=100) == 0.3
    assert lr_at(sched, 0.3, 0, 1, 5) == 0.3  # no total: no fall
    for bad in ("linear", "linear:0", "linear:-2", "linear:x", "linear:2:3"):
        with pytest.raises(SpidecError, match="lr-schedule"):
            parse_schedule(bad)


@needs_cc
def test_specs_reach_the_c_programs_in_the_spelling_they_parse():
    """The Python parser accepts case and spaces; the C trainers get the plain spelling (review finding: a
    spec that passed validation then stopped the host trainer or the board with exit 2). K must fit a C int
    (ctypes wrapped 2^32 + 1 to 1)."""
    from spidec.backends.c import _trainer_args

    from spidec.runs import TrainOptions

    assert canonical_schedule(" LINEAR: 10 ") == "linear:10"
    assert canonical_schedule("multistep:3") == "multistep:3:0.1"
    assert canonical_schedule("Cosine") == "cosine"
    args = _trainer_args(TrainOptions(lr_schedule="Linear:4"))
    assert args[args.index("--lr-schedule") + 1] == "linear:4"
    for bad in ("linear:1_0", f"linear:{2**32 + 1}", "linear:-3"):
        with pytest.raises(SpidecError, match=r"linear:K needs an integer K in 1\.\.2"):
            parse_schedule(bad)


def test_c_schedule_lr_equals_python(tmp_path):
    rt = spidec.compile(spidec.load(EXAMPLES / "digits_fb.spir"), target="c", out=tmp_path / "c").runtime()
    rt.lib.spide_schedule_lr.argtypes = [ctypes.POINTER(TrainOpts), ctypes.c_int, ctypes.c_long]
    rt.lib.spide_schedule_lr.restype = ctypes.c_float
    for k, total, warmup in ((10, 1437, 0), (4, 7, 3), (3, 100, 0)):
        opts = TrainOpts(lr=0.0375, epochs=1, warmup=warmup, total=total)
        opts.set_schedule(f"linear:{k}")
        for it in range(total):
            want = np.float32(lr_at(parse_schedule(f"linear:{k}"), float(np.float32(0.0375)), 0, 1, it, warmup, total))
            assert rt.lib.spide_schedule_lr(ctypes.byref(opts), 0, it) == want, (k, total, it)


def _reference(rt, x, y, seed: int, batch: int, lr: float) -> dict[str, np.ndarray]:
    """One epoch as 4 train_epoch calls over consecutive quarters of the host order, at lr * (1 - k/4)."""
    order = epoch_order(seed, 0, len(y))
    q = len(y) // 4
    for k in range(4):
        rt.train_epoch(x, y, order[k * q:(k + 1) * q], batch=batch, lr=lr * (1 - k / 4))
    return {n: v.copy() for n, v in (rt.qweights() if rt.fixed else rt.get_weights()).items()}


def _executable_weights(rt, out: Path, ckpt: Path) -> dict[str, np.ndarray]:
    epoch, err = ctypes.c_int(0), ctypes.create_string_buffer(512)
    assert rt.lib.spide_checkpoint_load(str(ckpt).encode(), ctypes.byref(epoch), err, 512) == 0, err.value
    assert epoch.value == 1
    return rt.qweights() if rt.fixed else rt.get_weights()


def _host_train(out: Path, tmp: Path, *flags: str) -> Path:
    subprocess.run(["make", "-C", str(out), "train"], check=True, capture_output=True, timeout=300)
    ck = tmp / "host.bin"
    done = subprocess.run([str(out / "train"), "train", "--train", str(tmp / "tr.spds"), "--epochs", "1",
                           "--lr-schedule", "linear:4", "--checkpoint", str(ck), "--quiet", *flags],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return ck


@needs_cc
@pytest.mark.parametrize("kind", ["fixed_online_batch1", "float_momentum_batch4"])
def test_host_trainer_linear_equals_chunked_reference(kind, tmp_path):
    ds = data.digits()
    x, y = ds.x_train[:N].astype(np.float32), ds.y_train[:N]
    data.write_spds(tmp_path / "tr.spds", x, y, 10)
    g = spidec.load(EXAMPLES / "digits_fb.spir")
    fixed = kind.startswith("fixed")
    art = spidec.compile(g, target="c", out=tmp_path / "c", T=8, T_back=10,
                         **({"quantize": {"update": "online"}} if fixed else {}))
    batch, lr, seed = (1, 0.05, 3) if fixed else (4, 0.1, 4)
    ck = _host_train(art.out, tmp_path, "--batch", str(batch), "--lr", repr(lr), "--seed", str(seed), "--threads", "2")
    rt = art.runtime()
    assert rt.fixed == fixed
    lr32 = float(np.float32(lr))
    init = {n: v.copy() for n, v in (rt.qweights() if fixed else rt.get_weights()).items()}
    want = _reference(rt, x, y, seed, batch, lr32)
    got = _executable_weights(rt, art.out, ck)
    assert any(not np.array_equal(want[n], init[n]) for n in want)
    for n in want:
        np.testing.assert_array_equal(got[n], want[n], err_msg=n)
    # and not what a constant rate gives
    if not fixed:
        const = subprocess.run([str(art.out / "train"), "train", "--train", str(tmp_path / "tr.spds"), "--epochs", "1",
                                "--batch", "4", "--lr", repr(lr), "--seed", "4", "--checkpoint",
                                str(tmp_path / "c.bin"), "--quiet"], capture_output=True, text=True, timeout=300)
        assert const.returncode == 0
        other = _executable_weights(rt, art.out, tmp_path / "c.bin")
        assert any(not np.array_equal(other[n], want[n]) for n in want)


@needs_cc
def test_host_trainer_refuses_a_bad_linear_spec(tmp_path):
    art = spidec.compile(spidec.load(EXAMPLES / "digits_fb.spir"), target="c", out=tmp_path / "c", T=8, T_back=10)
    subprocess.run(["make", "-C", str(art.out), "train"], check=True, capture_output=True, timeout=300)
    data.write_spds(tmp_path / "d.spds", np.zeros((4, 64), np.float32), np.arange(4), 10)
    for bad in ("linear:0", "linear:", "linear:3x"):
        done = subprocess.run([str(art.out / "train"), "train", "--train", str(tmp_path / "d.spds"), "--lr-schedule",
                               bad], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and f"--lr-schedule {bad}" in done.stderr and done.stderr.count("\n") == 1


def test_board_linear_equals_host_executable(tmp_path):
    from spidec.backends.c import board as brd

    if brd.missing_tools():
        pytest.skip(f"missing {', '.join(brd.missing_tools())}")
    from spidec.frontends.onnx import load_onnx

    from spidec import passes
    from spidec.fixed import quantize

    g = quantize(passes.run(load_onnx(EXAMPLES / "digits_fb.onnx"), sf=10), update="online")
    ds = data.digits()
    x, y = ds.x_train[:N].astype(np.float32), ds.y_train[:N]
    out = tmp_path / "m4"
    emit(g, out, board="mps2-an386")
    data.write_spds(out / "tr.spds", x, y, 10)
    data.write_spds(out / "te.spds", ds.x_test[:50], ds.y_test[:50], 10)
    data.write_spds(tmp_path / "tr.spds", x, y, 10)
    r = brd.run_qemu(out, ["train", "tr.spds", "te.spds", "--epochs", "1", "--batch", "1", "--seed", "5",
                           "--lr-schedule", "linear:4", "--out", "w.bin"], timeout=600)
    assert len(r["epochs"]) == 2
    rt = emit(g, tmp_path / "host").build()
    ck = _host_train(tmp_path / "host", tmp_path, "--batch", "1", "--seed", "5")
    host = _executable_weights(rt, tmp_path / "host", ck)
    _, dump = read_weights_dump(out / "w.bin")
    for i, name in enumerate(rt.tensor_names):
        np.testing.assert_array_equal(dump[i], host[name], err_msg=name)
    # the host executable is the chunked reference (test above); the board's rate did fall: a constant run differs
    rt2 = emit(g, tmp_path / "host2").build()
    rt2.train_epoch(x, y, epoch_order(5, 0, N), batch=1, lr=rt2.lr)
    assert any(not np.array_equal(dump[i], rt2.qweights()[n]) for i, n in enumerate(rt2.tensor_names))
    # a board takes linear:K only
    with pytest.raises(SpidecError, match="exited with 2"):
        brd.run_qemu(out, ["train", "tr.spds", "te.spds", "--lr-schedule", "cosine"], timeout=120)


def test_sim_program_linear_rates(tmp_path, capsys):
    art = spidec.compile(spidec.load(EXAMPLES / "digits_fb.spir"), target="sim", out=tmp_path / "sim")
    log = tmp_path / "h.json"
    assert art.run_cli("--data", "digits", "--limit-train", "64", "--limit-test", "16", "--batch", "16", "--epochs",
                       "2", "--lr", "0.2", "--lr-schedule", "linear:4", "--log", str(log), "--quiet",
                       "--device", "cpu") == 0
    history = json.loads(log.read_text())
    # 4 batches an epoch, total 8: the last batch of epoch 1 is it 3 (floor(12/8) = 1), of epoch 2 it 7 (3)
    assert [h["lr"] for h in history] == [0.2 * 0.75, 0.2 * 0.25]
    # every batch of the run: the program's schedule is spidec.schedule's
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("sim_train_linear", art.out / "train.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    lr_of = mod.schedule(argparse.Namespace(lr_schedule="linear:4", warmup=0, lr=0.2, epochs=2))
    assert [lr_of(it // 4, it, 8) for it in range(8)] == [0.2 * (1 - (4 * it // 8) / 4) for it in range(8)]
    # the Python API trainer reads the same spec
    with pytest.raises(SpidecError, match="unknown --lr-schedule"):
        art.train(data.digits().x_train[:8], data.digits().y_train[:8], lr_schedule="linear4")
