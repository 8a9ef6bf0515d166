"""Benchmark of the Lava target on the examples LeNet-F and ConvNet-F (full size) against the sim target.

    python bench/lava_examples.py [--train 200] [--test 100] [--batch 16] [--models lenet_f,convnet_f]
                                  [--sizes convnet_f=16:16] [--convnet-channels 64]

Each model (examples/models.py, eval mode, the passes' defaults: T 30, T_back 100) is compiled to
lava and to sim (float64, so that both compute the same numbers) and trained on the same first
--train MNIST training images in the same order, batches of --batch, the model's learning rate:
Lava's Network.learn/step and the sim program's train_step. Prints per model and target: training
samples/s; test accuracy on the first --test MNIST test images before and after; and, after
training, the mean |rate_lava - rate_sim| per population on those test images (each target's rates
from its own trained weights: a threshold tie that flips in one target moves the other's steps too).
Op chains run in Lava as ChainSynapse processes (the chain applied to each step's spikes; see the
lava backend's docstring). Writes bench/results/lava_examples.json. Lava runs one OS process per
Lava process: samples/s move with the machine's load.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from spidec.backends import lava as lava_backend

import spidec
from spidec.data import mnist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import print_table, write_results  # noqa: E402
from models import EXAMPLES  # noqa: E402


def compiled(name: str, channels: int = 64) -> spidec.Graph:
    torch.manual_seed(0)
    model = EXAMPLES[name](channels=channels) if name == "convnet_f" else EXAMPLES[name]()
    return spidec.passes.run(spidec.from_torch(model.eval(), name=name))


def lava_run(g, out, x, y, xt, yt, batch):
    net = lava_backend.emit(g, out).load()
    try:
        before = net.evaluate(xt, yt)["accuracy"]
        t0 = time.perf_counter()
        net.train_epoch(x, y, batch, perm=np.arange(len(y)))
        rate = len(y) / (time.perf_counter() - t0)
        per = [net.forward(xi) for xi in xt]
    finally:
        net.close()
    rates = {n: np.stack([r[n] for r, _ in per]) for n in per[0][0]}
    after = float(np.mean(np.argmax(np.stack([lo for _, lo in per]), 1) == yt))
    return rate, before, after, rates


def sim_run(g, out, x, y, xt, yt, batch):
    art = spidec.compile(g, target="sim", out=out)
    snet, prog = art.load(dtype=torch.float64), art.module()
    inp, ro = g.inputs[0].name, g.readouts[0].name
    lr = g.program.optimizer.lr

    def forward(xs):
        with torch.no_grad():
            return snet.forward_stage({inp: torch.from_numpy(xs.reshape(len(xs), *g.inputs[0].shape))})

    before = float(np.mean(np.argmax(forward(xt)[f"y_{ro}"].numpy(), 1) == yt))
    t0 = time.perf_counter()
    for s in range(0, len(y), batch):
        xb = x[s:s + batch].reshape(-1, *g.inputs[0].shape)
        prog.train_step(snet, {inp: torch.from_numpy(xb)}, torch.from_numpy(y[s:s + batch]), lr)
    rate = len(y) / (time.perf_counter() - t0)
    fwd = forward(xt)
    rates = {p.name: fwd[f"a_{p.name}"].numpy().reshape(len(xt), -1) for p in g.program.populations}
    after = float(np.mean(np.argmax(fwd[f"y_{ro}"].numpy(), 1) == yt))
    return rate, before, after, rates


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=200, help="MNIST training images (default 200)")
    ap.add_argument("--test", type=int, default=100, help="MNIST test images (default 100)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--models", default="lenet_f,convnet_f")
    ap.add_argument("--sizes", default="", help="per-model TRAIN:TEST, e.g. convnet_f=16:16 (Lava runs ConvNet-F's "
                    "64-channel convs at about 0.07 samples/s on 2 loaded cores)")
    ap.add_argument("--convnet-channels", type=int, default=64, help="ConvNet-F's channels (the paper's 64; 16 "
                    "runs a few hundred samples in minutes)")
    args = ap.parse_args(argv)
    ds = mnist()
    sizes = {k: tuple(int(n) for n in v.split(":")) for k, v in (kv.split("=") for kv in args.sizes.split(",") if kv)}
    rows, table = [], []
    for name in args.models.split(","):
        n, nt = sizes.get(name, (args.train, args.test))
        x, y = ds.x_train[:n].reshape(n, -1).astype(np.float64), ds.y_train[:n]
        xt, yt = ds.x_test[:nt].reshape(nt, -1).astype(np.float64), ds.y_test[:nt]
        g = compiled(name, args.convnet_channels)
        with tempfile.TemporaryDirectory() as tmp:
            lv = lava_run(g, Path(tmp) / "lava", x, y, xt, yt, args.batch)
            sm = sim_run(g, Path(tmp) / "sim", x, y, xt, yt, args.batch)
        diff = {pop: float(np.mean(np.abs(lv[3][pop] - sm[3][pop]))) for pop in lv[3]}
        for target, (rate, before, after, _) in (("lava", lv), ("sim", sm)):
            rows.append({"model": name, "channels": args.convnet_channels if name == "convnet_f" else None,
                         "target": target, "train": n, "test": nt, "samples_per_s": rate,
                         "accuracy_before": before,
                         "accuracy_after": after, "mean_abs_rate_diff": diff})
            label = name if name != "convnet_f" else f"{name} (c {args.convnet_channels})"
            table.append([label, target, f"{n}/{nt}", f"{rate:.2f}", f"{100 * before:.1f}%", f"{100 * after:.1f}%",
                          " ".join(f"{pop} {d:.2e}" for pop, d in diff.items()) if target == "lava" else ""])
        print(f"{name} done", flush=True)
    print_table(["model", "target", "train/test", "train samples/s", "test acc before", "test acc after",
                 "mean |rate_lava - rate_sim| per population (test)"], table)
    write_results(ROOT / "bench" / "results" / "lava_examples.json", rows, batch=args.batch, T=g.simulation.T,
                  T_back=g.training.T_back, torch_threads=torch.get_num_threads())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
