"""Benchmark of the exact reference (spidec.reference): how long the oracle takes.

    python bench/reference_solver.py [--batch 64] [--repeat 3]

For each example model: the equilibrium (fixed-point sweeps to tol 1e-10) and the implicit
gradient with the dense direct solve and with matrix-free GMRES, batch of inputs (digits test
samples for the digits model; uniform random inputs in [0, 1) otherwise). Prints a table and writes
bench/results/reference_solver.json. Times are the best of --repeat runs on this machine; compare
ratios within one run, not absolute figures across machines.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _report import print_table, write_results  # (bench/, this script's folder)

import spidec
from spidec import reference as ref
from spidec.data import digits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from export import build  # noqa: E402


def best_of(repeat: int, fn):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "reference_solver.json"))
    args = ap.parse_args(argv)

    rows = []
    for name in ("digits_fb", "mnist_mlp_fb"):
        g = spidec.from_torch(build(name), name=name)
        rng = np.random.default_rng(0)
        if name == "digits_fb":
            ds = digits()
            x, y = ds.x_test[: args.batch], ds.y_test[: args.batch]
        else:
            x = rng.random((args.batch,) + g.inputs[0].shape)
            y = rng.integers(0, 10, args.batch)
        t_eq, eq = best_of(args.repeat, lambda g=g, x=x: ref.equilibrium(g, x))
        _, dy = ref.loss(g, eq.outputs, y)

        def backward(method, g=g, eq=eq, dy=dy):
            return ref.implicit_backward(g, eq, dy, method=method)

        t_dense, gd = best_of(args.repeat, lambda: backward("dense"))
        t_gmres, gg = best_of(args.repeat, lambda: backward("gmres"))
        diff = max(float(np.max(np.abs(gd.params[k] - gg.params[k])) / (np.max(np.abs(gd.params[k])) + 1e-30))
                   for k in gd.params)
        rows.append({
            "model": name, "neurons": sum(p.size for p in g.populations), "batch": args.batch,
            "iterations": eq.iterations, "residual": eq.residual,
            "equilibrium_s": t_eq, "grad_dense_s": t_dense, "grad_gmres_s": t_gmres,
            "samples_per_s_dense": args.batch / (t_eq + t_dense),
            "samples_per_s_gmres": args.batch / (t_eq + t_gmres),
            "dense_vs_gmres_max_rel_diff": diff,
        })

    header = ["model", "neurons", "batch", "iters", "equilibrium", "grad dense", "grad gmres",
              "samples/s (dense)", "samples/s (gmres)", "dense~gmres"]
    table = [[r["model"], str(r["neurons"]), str(r["batch"]), str(r["iterations"]),
              f"{1e3 * r['equilibrium_s']:.1f} ms", f"{1e3 * r['grad_dense_s']:.1f} ms",
              f"{1e3 * r['grad_gmres_s']:.1f} ms", f"{r['samples_per_s_dense']:.0f}",
              f"{r['samples_per_s_gmres']:.0f}", f"{r['dense_vs_gmres_max_rel_diff']:.1e}"] for r in rows]
    print_table(header, table)
    write_results(args.out, rows, numpy=np.__version__, spidec=spidec.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
