"""Benchmark of the microcontroller target: the digits model and the MNIST example trained
integer-only on Cortex-M boards under QEMU.

    python bench/mcu.py [--epochs 1] [--models digits,mnist,mnist_mcu_conv] [--mnist-train 60000]
                        [--mnist-test 10000]

MNIST (examples/models.py: mnist_mcu, 784 -> 128 with feedback -> 10, online updates at batch 1 with
MCU_SETTINGS) runs on the Cortex-M4F only, streamed from the host sample by sample; a full epoch is
about half an hour of QEMU. Goal (issue 17): RAM <= 256 KiB, flash <= 1 MiB, >= 97% after one epoch.
The convolutional MNIST example (mnist_mcu_conv: conv5 s2 8 channels with a convT feedback, avgpool,
readout; MCU_CONV_SETTINGS) trains with the rate falling linearly over the epoch (MCU_CONV_SCHEDULE,
``--lr-schedule linear:10`` of the board trainer; its best constant rate, 0.02, reached 96.73% on
the host). A full epoch is about 20 minutes of QEMU (~14 M instructions per sample).

For the Cortex-M4F (mps2-an386) and the Cortex-M3 (mps2-an385), with online updates (no buffers:
the small-device setting) and with the model's SGD with momentum (an int32 buffer per weight):
flash and RAM (the compiler's plan, checked symbol by symbol against the image; the stack and heap
as measured on the board), instructions per training sample and per inference (SysTick under
`qemu-system-arm -icount shift=0`, where one instruction is one virtual nanosecond: exact and
repeatable, calibrated on a loop of known length), synaptic events and synaptic operations per
sample (a synaptic event delivers one weight column or row; an operation is one of its additions),
and test accuracy after the epochs. Goal (issue 6): training state <= 64 KiB RAM, image <= 128 KiB.
Prints a table, writes bench/results/mcu.json. Instruction counts are deterministic; QEMU models no
cycle timing, so they are not cycles.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

from spidec.backends.c import board as brd
from spidec.backends.c import emit
from spidec.frontends.onnx import load_onnx

import spidec
from spidec import passes
from spidec.data import load, pack, write_spds
from spidec.fixed import quantize

ROOT = Path(__file__).resolve().parents[1]


def measure(model, name: str, board: str, update: str, batch: int, options: dict, out: Path, train: str,
            test: str, epochs: int, lr_schedule: str | None = None) -> dict:
    """Build ``model`` for ``board``, train it under QEMU on the packed files (``lr_schedule``: the board
    trainer's ``--lr-schedule linear:K``; None: the compiled schedule), and read the memory plan against
    the image: one table row."""
    emit(quantize(passes.run(model, **options), update=update), out, board=board)
    args = ["train", train, test, "--epochs", str(epochs), "--batch", str(batch)]
    args += ["--lr-schedule", lr_schedule] if lr_schedule else []
    lr = options.get("lr")
    r = brd.run_qemu(out, args, progress=True)
    info = brd.board_info(out)
    check = brd.check_plan(info["plan"], out / f"spide-{board}.elf")
    state = sum(p["ram"] for p in info["plan"] if p["symbols"] and p["part"] != "sample buffer")
    ram = check["size"]["static_ram"] + r["heap_used"] + r["stack_used"]
    last = r["epochs"][-1]
    parts = {p["part"]: p["ram"] for p in info["plan"] if p["part"] != "stack (budget)"}
    parts["runtime + newlib"] = check["runtime_static_ram"]
    parts["heap (measured)"] = r["heap_used"]
    parts["stack (measured)"] = r["stack_used"]
    return {"model": name, "ram_parts": parts, "board": board, "cpu": brd.BOARDS[board]["cpu"], "update": update,
            "batch": batch, "sf": options["sf"], "lr": lr, "lr_schedule": lr_schedule or "constant",
            "T": options.get("T"), "T_back": options.get("T_back"),
            "flash_bytes": check["size"]["flash"], "static_ram_bytes": check["size"]["static_ram"],
            "training_state_bytes": state, "heap_bytes": r["heap_used"], "stack_bytes": r["stack_used"],
            "ram_bytes": ram, "plan_matches_image": not check["mismatches"],
            "instructions_per_sample": last["instructions_per_sample"],
            "instructions_per_inference": r["epochs"][0]["instructions_per_inference"],
            "events_per_sample": last["events_per_sample"], "synops_per_sample": last["synops_per_sample"],
            "instructions_per_synop": last["instructions_per_sample"] / last["synops_per_sample"],
            "test_accuracy_before": r["epochs"][0]["test_accuracy"], "test_accuracy": last["test_accuracy"],
            "epochs": epochs}


MODELS = ("digits", "mnist", "mnist_mcu_conv")  # mnist: the MLP example mnist_mcu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--models", default=",".join(MODELS), help=f"some of {', '.join(MODELS)} (default: all)")
    ap.add_argument("--mnist-train", type=int, default=60000, help="MNIST training samples (default: all 60,000)")
    ap.add_argument("--mnist-test", type=int, default=10000, help="MNIST test samples (default: all 10,000)")
    args = ap.parse_args(argv)
    missing = brd.missing_tools()
    if missing:
        print(f"error: missing {', '.join(missing)}; {brd.INSTALL_HINT}", file=sys.stderr)
        return 1
    models = set(args.models.split(","))
    unknown = models - set(MODELS)
    if unknown:
        ap.error(f"unknown model(s) {', '.join(sorted(unknown))}; choose from {', '.join(MODELS)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        if "digits" in models:
            model = load_onnx(ROOT / "examples" / "digits_fb.onnx")
            pack("digits", data_dir)
            for board in ("mps2-an386", "mps2-an385"):
                # sf = 100 is SPIDE's setting for batch 128; at batch 1 the loss gradient is 128x larger per
                # sample and the couples saturate: sf = 10 fires fewer events and learns faster
                for update, batch, sf in (("online", 1, 100.0), ("online", 1, 10.0), ("momentum", 16, 100.0)):
                    out = Path(tmp) / f"digits-{board}-{update}-{sf:g}"
                    out.mkdir()
                    (out / "data").symlink_to(data_dir)
                    rows.append(measure(model, "digits", board, update, batch, {"sf": sf}, out,
                                        "data/digits.train.spds", "data/digits.test.spds", args.epochs))
        mnist_models = [m for m in ("mnist", "mnist_mcu_conv") if m in models]
        if mnist_models:  # the microcontroller MNIST examples, streamed sample by sample from the host
            sys.path.insert(0, str(ROOT / "examples"))
            from export import build
            from models import MCU_CONV_SCHEDULE, MCU_CONV_SETTINGS, MCU_SETTINGS

            ds = load("mnist")
            n = min(args.mnist_train, len(ds.y_train))
            n_test = min(args.mnist_test, len(ds.y_test))
            data_dir.mkdir(exist_ok=True)
            write_spds(data_dir / "mnist.train.spds", ds.x_train[:n], ds.y_train[:n], ds.classes)
            write_spds(data_dir / "mnist.test.spds", ds.x_test[:n_test], ds.y_test[:n_test], ds.classes)
            for key in mnist_models:
                name = "mnist_mcu" if key == "mnist" else key
                settings, schedule = ((MCU_SETTINGS, None) if key == "mnist" else
                                      (MCU_CONV_SETTINGS, MCU_CONV_SCHEDULE))
                out = Path(tmp) / f"{name}-mps2-an386-online"
                out.mkdir()
                (out / "data").symlink_to(data_dir)
                rows.append(measure(spidec.from_torch(build(name)), name, "mps2-an386", "online", 1, settings, out,
                                    "data/mnist.train.spds", "data/mnist.test.spds", args.epochs, schedule)
                            | {"train_samples": n, "test_samples": n_test})
    head = ("model", "board", "update", "flash KiB", "RAM KiB", "state KiB", "insn/sample", "insn/inference",
            "events/sample", "synops/sample", "insn/synop", "test acc")
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for r in rows:
        print(" | ".join([r["model"], f"{r['board']} ({r['cpu']})",
                          f"{r['update']} (batch {r['batch']}, sf {r['sf']:g}"
                          + (f", lr {r['lr']:g}" if r.get("lr") else "")
                          + (f", {r['lr_schedule']}" if r.get("lr_schedule", "constant") != "constant" else "") + ")",
                          f"{r['flash_bytes'] / 1024:.1f}", f"{r['ram_bytes'] / 1024:.1f}",
                          f"{r['training_state_bytes'] / 1024:.1f}", f"{r['instructions_per_sample'] / 1e6:.2f} M",
                          f"{r['instructions_per_inference'] / 1e3:.0f} k", f"{r['events_per_sample']:.0f}",
                          f"{r['synops_per_sample'] / 1e3:.0f} k", f"{r['instructions_per_synop']:.2f}",
                          f"{100 * r['test_accuracy_before']:.1f}% -> {100 * r['test_accuracy']:.1f}%"]))
    print("RAM = data + bss of the image + heap and stack measured on the board; state = the model's arrays "
          "(weights, momentum, membranes, spikes, counts). Goals: digits RAM <= 64 KiB and flash <= 128 KiB "
          "(issue 6); MNIST RAM <= 256 KiB and flash <= 1 MiB, >= 97% after one epoch (issue 17).")
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    name = "mcu.json" if models == set(MODELS) else f"mcu_{'_'.join(sorted(models))}.json"
    (res / name).write_text(json.dumps({"machine": platform.platform(), "rows": rows}, indent=1))
    plot(rows, res / name.replace(".json", ".png"))
    print(f"wrote {res / name} and {res / name.replace('.json', '.png')}")
    return 0


def plot(rows: list[dict], path: Path) -> None:
    """RAM by part (stacked) against the 64 KiB goal, and instructions per sample beside the events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.get('model', 'digits')}\n{r['cpu']}\n{r['update']}\nbatch {r['batch']}, sf {r['sf']:g}"
              for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5.2))
    bottom = [0.0] * len(rows)
    for part in rows[0]["ram_parts"]:
        vals = [r["ram_parts"].get(part, 0) / 1024 for r in rows]
        ax1.bar(labels, vals, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, r in enumerate(rows):  # each model's goal over its own bar
        goal = 256 if r.get("model", "").startswith("mnist") else 64
        ax1.plot([i - 0.45, i + 0.45], [goal, goal], color="k", ls="--", lw=1)
    ax1.text(-0.4, 70, "goal: 64 KiB (digits), 256 KiB (MNIST)", ha="left")
    ax1.set_ylabel("RAM (KiB)")
    ax1.set_title("RAM by part")
    ax1.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, 0.93))
    ax1.tick_params(axis="x", labelsize=7)
    ax2.bar(labels, [r["instructions_per_sample"] / 1e6 for r in rows], color="tab:blue")
    ax2.set_ylabel("instructions per training sample (M)")
    tw = ax2.twinx()
    tw.plot(labels, [r["events_per_sample"] for r in rows], "o-", color="tab:red")
    tw.set_ylabel("synaptic events per sample", color="tab:red")
    ax2.set_title("work per training sample (QEMU -icount)")
    ax2.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
