"""Benchmark of the emitted sim program: training-step throughput and MNIST accuracy.

    python bench/sim_throughput.py [--epochs 3] [--skip-accuracy]

One training step = the forward stage (T = 30) + the ternary backward stage (T_back = 100) + the
local updates and SGD, on MNIST images, float32, on this machine's CPU (torch's default threads),
best of 3 windows of 2 s.
Reported beside the costs of the authors' PyTorch implementation on a 2-core CPU from SPIDE.md. Then
the MNIST MLP with self-feedback is trained for --epochs epochs on the 60,000 training images and
tested on the 10,000 test images. Prints a table, writes bench/results/sim_throughput.json.
Compare ratios within one run; absolute figures move with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import spidec
from spidec.data import mnist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from export import build  # noqa: E402

# samples/s of one training step of the authors' implementation (SPIDE.md, 2-core CPU)
REFERENCE = {"mnist_mlp_fb": {1: 139, 64: 2677}, "lenet_f": {1: 8.7, 64: 39}}


def throughput(art, x: np.ndarray, y: np.ndarray, batch: int, seconds: float = 2.0, windows: int = 3) -> float:
    """Best of ``windows`` measurement windows (this machine is shared and noisy)."""
    net, m = art.load(), art.module()
    xb, yb = torch.from_numpy(x[:batch]), torch.from_numpy(y[:batch])
    m.train_step(net, {"x": xb}, yb, 0.01)  # warm-up
    best = 0.0
    for _ in range(windows):
        steps, t0 = 0, time.perf_counter()
        while True:
            m.train_step(net, {"x": xb}, yb, 0.01)
            steps += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds and steps >= 2:
                break
        best = max(best, steps * batch / elapsed)
    return best


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3, help="MNIST training epochs of the MLP (default 3)")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sim_throughput.json"))
    args = ap.parse_args(argv)
    ds = mnist()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("mnist_mlp_fb", "lenet_f"):
            art = spidec.compile(spidec.from_torch(build(name), name=name), out=Path(tmp) / name, T=30, T_back=100)
            for batch in (1, 64):
                sps = throughput(art, ds.x_train, ds.y_train, batch)
                ref = REFERENCE[name][batch]
                rows.append({"model": name, "batch": batch, "samples_per_s": sps, "reference_samples_per_s": ref,
                             "speedup": sps / ref})
                print(f"{name:13s} batch {batch:3d}: {sps:9.1f} samples/s  (reference {ref:7.1f}, x{sps / ref:.2f})",
                      flush=True)
        accuracy = None
        if not args.skip_accuracy:
            art = spidec.compile(spidec.from_torch(build("mnist_mlp_fb"), name="mnist_mlp_fb"),
                                 out=Path(tmp) / "mlp_train")
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, str(art.out / "train.py"), "--data", "mnist", "--epochs",
                                   str(args.epochs), "--batch", "64", "--device", "cpu", "--json"],
                                  capture_output=True, text=True, check=True)
            accuracy = json.loads(done.stdout.strip().splitlines()[-1])
            accuracy["wall_seconds"] = time.perf_counter() - t0
            accuracy["history"] = json.loads((art.out / "history.json").read_text())
    print()
    print(f"{'model':13s}  {'batch':>5s}  {'spidec sim':>12s}  {'reference':>10s}  {'ratio':>6s}")
    for r in rows:
        print(f"{r['model']:13s}  {r['batch']:5d}  {r['samples_per_s']:12.1f}  {r['reference_samples_per_s']:10.1f}  "
              f"{r['speedup']:6.2f}")
    if accuracy is not None:
        print(f"\nMNIST MLP with self-feedback, {args.epochs} epochs (60k train / 10k test): test accuracy "
              f"{100 * accuracy['test_accuracy']:.2f}% in {accuracy['wall_seconds']:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "spidec": spidec.__version__,
                               "throughput": rows, "mnist_mlp": accuracy}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
