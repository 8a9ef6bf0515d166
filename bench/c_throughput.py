"""Benchmark of the C backend: on-device training speed, one core.

    python bench/c_throughput.py [--samples 3000]

Training samples per second (forward T = 30, backward T_back = 100, local updates and SGD) on MNIST
images, at batch 1 (online, as on a device) and batch 64, single thread: the compiled C program
(through its shared library), the emitted PyTorch program with torch.set_num_threads(1), and the
authors' implementation from SPIDE.md (2-core CPU figures). Also the synaptic events (weight
columns/rows or kernel patches delivered by spikes) per second. Prints a table, writes
bench/results/c_throughput.json. Compare ratios within one run: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import spidec
from spidec.data import mnist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from export import build  # noqa: E402

REFERENCE = {"mnist_mlp_fb": {1: 139, 64: 2677}, "lenet_f": {1: 8.7, 64: 39}}


def c_rate(rt, x, y, batch: int, n: int) -> tuple[float, float]:
    """(samples/s, synaptic events/s), best of 3 runs over n samples."""
    best = (0.0, 0.0)
    rt.train(x[:batch], y[:batch], epochs=1, batch=batch)  # warm-up
    for _ in range(3):
        rt.lib.spide_take_events()
        t0 = time.perf_counter()
        rt.train(x[:n], y[:n], epochs=1, batch=batch, lr=0.01)
        dt = time.perf_counter() - t0
        events = rt.lib.spide_take_events()
        if n / dt > best[0]:
            best = (n / dt, events / dt)
    return best


def sim_rate(art, x, y, batch: int, seconds: float = 2.0) -> float:
    net, m = art.load(), art.module()
    xb, yb = torch.from_numpy(x[:batch]), torch.from_numpy(y[:batch])
    m.train_step(net, {"x": xb}, yb, 0.01)
    best = 0.0
    for _ in range(3):
        steps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            m.train_step(net, {"x": xb}, yb, 0.01)
            steps += 1
        best = max(best, steps * batch / (time.perf_counter() - t0))
    return best


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=3000, help="training samples per C measurement (default 3000)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "c_throughput.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ds = mnist()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("mnist_mlp_fb", "lenet_f"):
            g = spidec.from_torch(build(name), name=name)
            sim = spidec.compile(g, target="sim", out=Path(tmp) / f"{name}_sim", T=30, T_back=100)
            rt = spidec.compile(g, target="c", out=Path(tmp) / f"{name}_c", T=30, T_back=100).build()
            for batch in (1, 64):
                ref = REFERENCE[name][batch]
                n = args.samples if name == "mnist_mlp_fb" else max(batch, args.samples // 30)
                c_sps, c_eps = c_rate(rt, ds.x_train, ds.y_train, batch, n)
                s_sps = sim_rate(sim, ds.x_train, ds.y_train, batch)
                rows.append({"model": name, "batch": batch, "c_samples_per_s": c_sps, "c_events_per_s": c_eps,
                             "sim_1thread_samples_per_s": s_sps, "reference_samples_per_s": ref,
                             "c_over_reference": c_sps / ref if c_sps else None,
                             "c_over_sim": c_sps / s_sps if c_sps else None})
                print(rows[-1], flush=True)
    print()
    head = (f"{'model':13s} {'batch':>5s} {'C (1 core)':>11s} {'events/s':>9s} {'sim (1 thr)':>11s} "
            f"{'reference':>10s} {'C/ref':>6s} {'C/sim':>6s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        c = f"{r['c_samples_per_s']:11.1f}" if r["c_samples_per_s"] else f"{'n/a (conv)':>11s}"
        ev = f"{r['c_events_per_s']:9.3g}" if r["c_events_per_s"] else f"{'-':>9s}"
        ratio = f"{r['c_over_reference']:6.1f}" if r["c_over_reference"] else f"{'-':>6s}"
        vs_sim = f"{r['c_over_sim']:6.1f}" if r["c_over_sim"] else f"{'-':>6s}"
        print(f"{r['model']:13s} {r['batch']:5d} {c} {ev} {r['sim_1thread_samples_per_s']:11.1f} "
              f"{r['reference_samples_per_s']:10.1f} {ratio} {vs_sim}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "processor": platform.processor(),
                               "spidec": spidec.__version__, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
