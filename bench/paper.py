"""Reproduce a row of the SPIDE paper: one of the authors' models (examples/models.py PAPER) with
their hyperparameters, compiled by spidec and trained by a spidec trainer; test accuracy and time
per epoch go to a table and to bench/results/paper_<model>_<target>.json (with the machine).

Run by hand (not in CI): a full MNIST LeNet run is 60 epochs of 60,000 samples.

    python bench/paper.py                                   # MNIST LeNet, C host trainer, 60 epochs
    python bench/paper.py --epochs 1                        # one epoch (about 25 min on 2 cores)
    python bench/paper.py --epochs 2 --limit-train 6000     # a subset (its first N samples)
    python bench/paper.py --model mnist_convnetf --target sim --device cuda
    python bench/paper.py --model cifar10_alexnetf --data-dir ~/data   # the cifar-10-python.tar.gz there

The model is built with ``torch.manual_seed(--seed)`` (the authors' initialisation, converted to
rate units); the data are shuffled with the same seed; the learning rate follows the authors'
milestones (and warm-up), with their augmentation and normalisation where they use them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "examples"))


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch
    from models import PAPER, paper_options

    import spidec
    from spidec.augment import format_normalize
    from spidec.data import load
    from spidec.runs import TrainOptions, train_build

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mnist_lenet", choices=sorted(PAPER))
    ap.add_argument("--target", default="c", choices=["c", "sim"])
    ap.add_argument("--epochs", type=int, default=None, help="default: the authors' (60 for the LeNet)")
    ap.add_argument("--batch", type=int, default=None, help="default: the authors' (128)")
    ap.add_argument("--limit-train", type=int, default=None, help="train on the first N samples")
    ap.add_argument("--limit-test", type=int, default=None, help="test on the first N samples")
    ap.add_argument("--data-dir", default=None, help="folder of the CIFAR / CIFAR10-DVS files")
    ap.add_argument("--device", default=None, help="sim: cpu, cuda ...")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--build", default=None, help="build folder (default: a temporary one)")
    ap.add_argument("--out", default=None, help="results file (default: bench/results/paper_MODEL_TARGET.json)")
    args = ap.parse_args(argv)

    cls, settings = PAPER[args.model]
    epochs = args.epochs if args.epochs is not None else settings["epochs"]
    batch = args.batch or settings["batch"]
    torch.manual_seed(args.seed)
    model = cls(classes=settings["classes"]) if "classes" in settings else cls()
    g = spidec.from_torch(model)
    build = Path(args.build or tempfile.mkdtemp(prefix=f"spidec-paper-{args.model}-"))
    options = paper_options(args.model)
    spidec.compile(g, args.target, build / args.target, **options)

    ds = load(settings["dataset"], args.data_dir) if args.data_dir else load(settings["dataset"])
    data = settings["dataset"]
    if args.limit_train or args.limit_test:
        sub = build / f"{data.replace('-', '_')}_subset.npz"
        n, m = args.limit_train or len(ds.y_train), args.limit_test or len(ds.y_test)
        np.savez(sub, x_train=ds.x_train[:n], y_train=ds.y_train[:n], x_test=ds.x_test[:m], y_test=ds.y_test[:m])
        data = str(sub)
    # spidec's mnist loader normalises (0.1307, 0.3081) itself, as the authors' script does
    normalize = None
    if settings.get("mean") is not None and settings["dataset"] != "mnist":
        normalize = format_normalize((settings["mean"], settings["std"]))
    augment = settings.get("augmentation") or ""
    opts = TrainOptions(data=data, epochs=epochs, batch=batch, seed=args.seed, quiet=False,
                        warmup=int(settings.get("warmup_iters") or 0), augment=augment, normalize=normalize,
                        data_dir=args.data_dir if not (args.limit_train or args.limit_test) else None,
                        device=args.device if args.target == "sim" else None)
    print(f"{args.model} on {args.target}: {len(ds.y_train) if not args.limit_train else args.limit_train} "
          f"training samples, batch {batch}, {epochs} epochs, options {options}", flush=True)
    t0 = time.monotonic()
    summary = train_build(build / args.target, opts, say=lambda line: print(line, flush=True))
    rows = summary["epochs"]
    print("\n| epoch | lr | train acc | test acc | seconds | samples/s |\n| --- | --- | --- | --- | --- | --- |")
    n_train = args.limit_train or len(ds.y_train)
    for r in rows:
        secs = r.get("seconds") or float("nan")
        print(f"| {r['epoch']} | {r.get('lr', float('nan')):.4g} | {r.get('train_accuracy', float('nan')):.4f} | "
              f"{r.get('test_accuracy', float('nan')):.4f} | {secs:.0f} | {n_train / secs:.1f} |")
    result = {"model": args.model, "target": args.target, "settings": {k: (list(v) if isinstance(v, tuple) else v)
                                                                      for k, v in settings.items()},
              "options": options, "epochs_run": len(rows), "batch": batch, "train_samples": n_train,
              "test_samples": args.limit_test or len(ds.y_test), "history": rows,
              "best_test_accuracy": max((r.get("test_accuracy") or 0.0) for r in rows) if rows else None,
              "wall_seconds": time.monotonic() - t0,
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpus": os.cpu_count(), "python": platform.python_version(),
                          "torch": torch.__version__, "device": args.device or "cpu"},
              "spidec": spidec.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = Path(args.out or HERE / "results" / f"paper_{args.model}_{args.target}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
