"""A/B benchmark of the generated C between two revisions of spidec, in one run.

    python bench/c_ab.py --base d6d6ee3 [--head HEAD] [--samples 2000] [--rounds 3]

For each revision: a wheel of that revision's tree (git worktree), installed into a private folder;
the same models (the digits example, the MNIST feedback MLP, LeNet-F) compiled with it to C and
built with the same Makefile flags; then their host trainers train the same samples, one epoch,
alternating A and B, best of ``rounds`` (this machine is shared and noisy: only ratios measured in
one run mean anything). With ``--instructions`` (valgrind), also the exact instruction count of
training ``--instr-samples`` samples, built for generic x86-64: a deterministic comparison.
Prints a table and writes bench/results/c_ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from spidec.backends.c.board import parse_line

from spidec.data import digits, mnist, write_spds

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name: (data set, how the model is made, batch sizes)
    "digits_fb": ("digits", "onnx", (1, 64)),
    "mnist_mlp_fb": ("mnist", "torch", (1, 64)),
    "lenet_f": ("mnist", "torch", (1,)),
}
COMPILE = """
import sys
sys.path.insert(0, {examples!r})
import spidec
name, out = sys.argv[1], sys.argv[2]
if name == "digits_fb":
    g = spidec.load({onnx!r})
else:
    from export import build
    g = spidec.from_torch(build(name), name=name)
spidec.compile(g, target="c", out=out, T=30, T_back=100)
"""


def run(cmd: list[str], **kw) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return done.stdout


def install(rev: str, tmp: Path) -> Path:
    """A private install of spidec at ``rev`` (its tree from git, built into a wheel)."""
    tree, site = tmp / f"tree_{rev}", tmp / f"site_{rev}"
    run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), rev])
    try:
        run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target",
             str(site), str(tree)])
    finally:
        run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)])
    return site


def rate(exe: Path, data: Path, batch: int, epochs: int) -> float:
    """Samples per second over ``epochs`` epochs (a small data set is repeated so that a measurement
    lasts long enough to mean something)."""
    out = run([str(exe), "train", "--train", str(data), "--epochs", str(epochs), "--batch", str(batch), "--quiet"])
    lines = [parse_line(ln) for ln in out.splitlines() if ln.startswith("epoch ")]
    return sum(f["samples_per_s"] * f["seconds"] for f in lines) / sum(f["seconds"] for f in lines)


def instructions(out: Path, data: Path, batch: int) -> int:
    """Instructions executed by training ``data`` once (callgrind), built without -march=native."""
    generic = out.parent / (out.name + "_generic")
    if not generic.exists():
        shutil.copytree(out, generic, ignore=shutil.ignore_patterns("train", "*.so"))
        run(["make", "-s", "-C", str(generic), "train", "ARCH="])
    done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={generic}/cg.out",
                           str(generic / "train"), "train", "--train", str(data), "--epochs", "1", "--batch",
                           str(batch), "--quiet"], capture_output=True, text=True)
    line = next(ln for ln in done.stderr.splitlines() if "Collected" in ln)
    return int(line.split(":")[-1])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="revision A (e.g. a commit before a change)")
    ap.add_argument("--head", default="HEAD", help="revision B (default HEAD)")
    ap.add_argument("--samples", type=int, default=2000, help="training samples per measurement (LeNet: / 30)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--instructions", action="store_true", help="also count instructions with valgrind")
    ap.add_argument("--instr-samples", type=int, default=100, help="samples of the instruction count (default 100)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "c_ab.json"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        sites = {rev: install(rev, tmp) for rev in (args.base, args.head)}
        sets = {"digits": digits(), "mnist": mnist()}
        for name, (data, _, batches) in MODELS.items():
            ds = sets[data]
            n = args.samples if name != "lenet_f" else max(64, args.samples // 30)
            epochs = max(1, -(-n // len(ds.y_train)))  # a small set is trained several epochs
            n = min(n, len(ds.y_train))
            spds = tmp / f"{name}.spds"
            write_spds(spds, ds.x_train[:n].reshape(n, -1).astype(np.float32), ds.y_train[:n], 10)
            small = tmp / f"{name}_small.spds"
            k = min(args.instr_samples, n)
            write_spds(small, ds.x_train[:k].reshape(k, -1).astype(np.float32), ds.y_train[:k], 10)
            exes = {}
            for rev, site in sites.items():
                out = tmp / f"{name}_{rev}"
                env = {**os.environ, "PYTHONPATH": str(site)}
                run([sys.executable, "-c", COMPILE.format(examples=str(ROOT / "examples"),
                                                          onnx=str(ROOT / "examples" / "digits_fb.onnx")),
                     name, str(out)], env=env)
                run(["make", "-C", str(out), "train"])
                exes[rev] = out / "train"
            for batch in batches:
                best = {rev: 0.0 for rev in exes}
                for _ in range(args.rounds):  # alternate, so drifts in the machine's load hit both
                    for rev, exe in exes.items():
                        best[rev] = max(best[rev], rate(exe, spds, batch, epochs))
                a, b = best[args.base], best[args.head]
                if args.instructions:
                    ins = {rev: instructions(exe.parent, small, batch) for rev, exe in exes.items()}
                    extra = {"instr_samples": k, "base_instructions": ins[args.base],
                             "head_instructions": ins[args.head]}
                else:
                    extra = {}
                rows.append({**extra, "model": name, "batch": batch, "samples": n * epochs, "base": args.base,
                             "head": args.head, "base_samples_per_s": a, "head_samples_per_s": b,
                             "head_over_base": b / a})
                print(rows[-1], flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    head = f"{'model':13s} {'batch':>5s} {args.base[:10]:>12s} {args.head[:10]:>12s} {'B/A':>6s}"
    if args.instructions:
        head += f" {'instructions A':>15s} {'instructions B':>15s} {'B/A':>8s}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        line = (f"{r['model']:13s} {r['batch']:5d} {r['base_samples_per_s']:12.1f} {r['head_samples_per_s']:12.1f} "
                f"{r['head_over_base']:6.3f}")
        if args.instructions:
            line += (f" {r['base_instructions']:15,d} {r['head_instructions']:15,d} "
                     f"{r['head_instructions'] / r['base_instructions']:8.5f}")
        print(line)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
