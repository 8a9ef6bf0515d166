"""The convolutional microcontroller MNIST example (examples/models.py: mnist_mcu_conv, issue 17):
compiled for the Cortex-M4F board it fits, its plan agrees with the image, and trained under QEMU
it ends with the host fixed-point build's weights bit for bit; on the host it learns MNIST.
(One full epoch on the board: python bench/mcu.py --models mnist_mcu_conv.)"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from spidec.backends.c import board as brd
from spidec.backends.c import emit, epoch_order, read_weights_dump
from spidec.frontends.onnx import load_onnx
from test_fixed import board_tools  # noqa: F401 (a fixture)

from spidec import data, passes
from spidec.fixed import quantize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from export import build, export_onnx  # noqa: E402
from models import MCU_CONV_SCHEDULE, MCU_CONV_SETTINGS  # noqa: E402


def _opts(settings: dict) -> list[str]:
    return ["--T", str(settings["T"]), "--T-back", str(settings["T_back"]), "--sf", str(settings["sf"]),
            "--lr", str(settings["lr"])]


def test_qemu_m4_trains_the_conv_mnist_example_like_the_host(board_tools, tmp_path, capsys):  # noqa: F811
    """spidec compile of mnist_mcu_conv's ONNX --board mps2-an386 --report: it fits 256 KiB of RAM and
    1 MiB of flash (measured: 75.5 KiB and 59.7 KiB), the plan agrees with the image symbol by symbol;
    640 streamed MNIST samples trained under QEMU with the board trainer's --lr-schedule linear:10 end
    with the host fixed-point build's weights (the same ten rates by hand), bit for bit, and its test
    accuracy (6% -> 84% on 100 test images, 10.8 M instructions per training sample, measured)."""
    from spidec.cli import main

    onnx_path = export_onnx(build("mnist_mcu_conv"), tmp_path / "mnist_mcu_conv.onnx")
    out = tmp_path / "m4"
    assert main(["compile", str(onnx_path), "--board", "mps2-an386", "--update", "online",
                 *_opts(MCU_CONV_SETTINGS), "--report", "-o", str(out)]) == 0
    report = capsys.readouterr().out
    assert "the plan agrees symbol by symbol" in report, report
    info = brd.board_info(out)
    check = brd.check_plan(info["plan"], out / "spide-mps2-an386.elf")
    assert not check["mismatches"], check["mismatches"]
    assert check["size"]["flash"] <= 1 << 20 and check["size"]["static_ram"] + brd.STACK_BUDGET <= 256 * 1024, \
        (check["size"], report)
    weights = sum(p["ram"] for p in info["plan"] if p["part"] == "weights")
    assert weights < 10 * 1024, weights  # 8,788 bytes: the conv from the image shares its 200 weights
    ds = data.load("mnist")
    n_train, n_test = 640, 100  # (tenths of 64 samples: online weight decay runs every P <= 64 steps, its phase
    # restarting with each train_epoch call below, so the chunked reference keeps the board's phase)
    data.write_spds(out / "train.spds", ds.x_train[:n_train], ds.y_train[:n_train], 10)
    data.write_spds(out / "test.spds", ds.x_test[:n_test], ds.y_test[:n_test], 10)
    r = brd.run_qemu(out, ["train", "train.spds", "test.spds", "--epochs", "1", "--batch", "1", "--out", "w.bin",
                           "--lr-schedule", MCU_CONV_SCHEDULE], timeout=600)
    first, last = r["epochs"][0], r["epochs"][-1]
    assert check["size"]["static_ram"] + r["heap_used"] + r["stack_used"] <= 256 * 1024
    assert r["stack_used"] <= brd.STACK_BUDGET
    assert last["instructions_per_sample"] > 0 and last["synops_per_sample"] > 0
    rt = emit(quantize(passes.run(load_onnx(onnx_path), **MCU_CONV_SETTINGS), update="online"),
              tmp_path / "host").build()
    assert abs(rt.evaluate(ds.x_test[:n_test], ds.y_test[:n_test])["accuracy"] - first["test_accuracy"]) < 1e-4
    order = epoch_order(0, 0, n_train)  # linear:10 by hand: the k-th tenth of the order at lr (1 - k/10)
    for k in range(10):
        rt.train_epoch(ds.x_train[:n_train], ds.y_train[:n_train], order[k * n_train // 10:(k + 1) * n_train // 10],
                       batch=1, lr=MCU_CONV_SETTINGS["lr"] * (1 - k / 10))
    h, dump = read_weights_dump(out / "w.bin")
    assert h == rt.hash
    qw = rt.qweights()
    for i, name in enumerate(rt.tensor_names):
        np.testing.assert_array_equal(dump[i], qw[name], err_msg=name)
    assert abs(rt.evaluate(ds.x_test[:n_test], ds.y_test[:n_test])["accuracy"] - last["test_accuracy"]) < 1e-4
    print(f"mnist_mcu_conv under QEMU, 640 samples: {100 * first['test_accuracy']:.0f}% -> "
          f"{100 * last['test_accuracy']:.0f}%, {last['instructions_per_sample'] / 1e6:.1f} M instructions/sample")
    assert first["test_accuracy"] < 0.3 and last["test_accuracy"] >= 0.5, (first, last)


def test_host_fixed_point_learns_mnist(tmp_path):
    """The host fixed-point build (bit-identical to the board) of mnist_mcu_conv learns MNIST: 5,000
    training samples online at batch 1 with the rate falling linearly in 10 steps from
    MCU_CONV_SETTINGS' lr 0.1 (MCU_CONV_SCHEDULE, done here as 10 calls to train_epoch over the
    consecutive tenths of the epoch's order) reach 93.75% on the first 2,000 test images (10.95%
    before; 89.55% at the constant lr 0.02); one full epoch reaches 97.83% (see the model's docstring).
    About 5 s of training."""
    pytest.importorskip("torch")
    import spidec

    ds = data.load("mnist")
    n, n_test = 5000, 2000
    rt = emit(quantize(passes.run(spidec.from_torch(build("mnist_mcu_conv")), **MCU_CONV_SETTINGS),
                       update="online"), tmp_path / "host").build()
    assert rt.evaluate(ds.x_test[:n_test], ds.y_test[:n_test])["accuracy"] < 0.3
    order = epoch_order(0, 0, n)
    for k in range(10):
        rt.train_epoch(ds.x_train[:n], ds.y_train[:n], order[k * n // 10:(k + 1) * n // 10], batch=1,
                       lr=MCU_CONV_SETTINGS["lr"] * (1 - k / 10))
    acc = rt.evaluate(ds.x_test[:n_test], ds.y_test[:n_test])["accuracy"]
    assert acc > 0.9, acc
