"""Benchmark of compile time against graph size: it must grow linearly with the number of layers.

    python bench/compile_time.py [--layers 250,500,1000] [--width 16] [--targets sim,c] [--profile N]

The model is a chain of N dense layers (x -> p0 -> ... -> p{N-1} -> readout, each with a bias)
closed by one feedback synapse p{N-1} -> p0 (delay 1), narrow (--width neurons a layer) so that
the time is the compiler's bookkeeping, not arithmetic on weights. For each N and target: the
passes (spiking, spide, schedule, lower) and the backend's emit into a temporary folder, each timed
once (the best of --repeat), and the text form's round trip of the training graph (print, parse:
what ``spidec compile model.spir`` of a trained graph reads). Prints a table and writes
bench/results/compile_time.json; the last column is milliseconds per layer, flat when compile time
is linear. ``--profile N`` prints a cProfile of one compile of N layers instead. Compare ratios
within one run, not figures across machines.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import print_table, write_results  # (bench/, this script's folder)
from spidec.backends import get

import spidec
from spidec import passes
from spidec.ops import Dense

ROOT = Path(__file__).resolve().parents[1]


def chain(layers: int, width: int = 16, seed: int = 0) -> spidec.Graph:
    """``layers`` dense populations in a chain, the last fed back to the first."""
    rng = np.random.default_rng(seed)
    g = spidec.Graph(f"chain{layers}")
    g.add_input("x", (width,))
    prev = "x"
    for k in range(layers):
        g.add_population(f"p{k}", (width,), bias=np.zeros(width, np.float32))
        g.add_synapse(prev, f"p{k}", Dense(rng.uniform(-0.3, 0.3, (width, width)).astype(np.float32)),
                      name=f"fc{k}")
        prev = f"p{k}"
    g.add_synapse(prev, "p0", Dense(rng.uniform(-0.1, 0.1, (width, width)).astype(np.float32)), delay=1, name="fb")
    g.add_readout("y", (10,), bias=np.zeros(10, np.float32))
    g.add_synapse(prev, "y", Dense(rng.uniform(-0.3, 0.3, (10, width)).astype(np.float32)), name="out")
    return g.validate()


def compile_once(layers: int, width: int, target: str) -> tuple[float, float]:
    """Seconds of (passes, emit) for one compile."""
    g = chain(layers, width)
    t0 = time.perf_counter()
    t = passes.run(g, T=8, T_back=8)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        get(target).emit(t, out)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def text_round_trip(layers: int, width: int) -> float:
    """Seconds to print and parse the training graph of ``layers`` layers."""
    t = passes.run(chain(layers, width), T=8, T_back=8)
    t0 = time.perf_counter()
    back = spidec.loads(*spidec.dumps(t))
    dt = time.perf_counter() - t0
    assert back == t
    return dt


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="250,500,1000", help="comma-separated chain lengths")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--targets", default="sim,c")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="profile one compile of N layers per target")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "compile_time.json"))
    args = ap.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]

    if args.profile:
        for target in targets:
            prof = cProfile.Profile()
            prof.runcall(compile_once, args.profile, args.width, target)
            print(f"== {target}, {args.profile} layers")
            pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        return 0

    rows = []
    for n in (int(s) for s in args.layers.split(",")):
        for target in targets:
            runs = [compile_once(n, args.width, target) for _ in range(args.repeat)]
            p, e = min(runs, key=sum)
            rows.append({"layers": n, "target": target, "passes_s": p, "emit_s": e, "total_s": p + e,
                         "per_layer_ms": 1e3 * (p + e) / n})
        t = min(text_round_trip(n, args.width) for _ in range(args.repeat))
        rows.append({"layers": n, "target": "text", "passes_s": 0.0, "emit_s": t, "total_s": t,
                     "per_layer_ms": 1e3 * t / n})

    header = ["layers", "target", "passes", "emit / text", "total", "per layer"]
    table = [[str(r["layers"]), r["target"], f"{r['passes_s']:.2f} s", f"{r['emit_s']:.2f} s",
              f"{r['total_s']:.2f} s", f"{r['per_layer_ms']:.2f} ms"] for r in rows]
    print_table(header, table)
    write_results(args.out, rows, spidec=spidec.__version__, width=args.width)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
