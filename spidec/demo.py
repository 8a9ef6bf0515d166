"""The main job, end to end: a feedback network compiled to C and trained with spikes on this CPU.

    spidec demo                                  # the digits, a built-in feedback MLP
    spidec demo examples/digits_fb.onnx          # a model file (.onnx, .spir)
    spidec demo --data mnist --epochs 3          # MNIST (shipped with spidec)

Steps: load the model, check its rates against the exact reference, compile it to C (the ``c``
backend), build it, train it epoch by epoch through the compiled library (the same code the
``train`` executable runs), and write into the output folder: ``history.json``, ``model.spir`` +
``model.npz`` (the training graph with the trained tensors), ``summary.json`` (accuracy, firing
rates, the energy estimate) and the plots of :mod:`spidec.report`.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SpidecError
from .ir import Graph, Neuron

DEFAULT_EPOCHS = {"digits": 20, "mnist": 3}
BUILTIN = {"digits": ((64,), 128), "mnist": ((1, 28, 28), 256)}  # per-sample shape, hidden neurons


def builtin_model(data: str, seed: int = 0, shape: tuple[int, ...] | None = None, classes: int = 10) -> Graph:
    """A feedback MLP for ``data``: input -> hidden with delayed hidden->hidden feedback -> 10,
    initialised like PyTorch's nn.Linear, the feedback weight at Frobenius norm 1. Other data
    (an ``.npz``, CIFAR ...): give its per-sample ``shape`` and ``classes`` (hidden: 128 neurons
    for up to 256 inputs, else 256)."""
    from .data import data_name
    from .ir import code_name
    from .ops import Dense, Flatten

    if data in BUILTIN:
        shape, hidden = BUILTIN[data]
        classes = 10
    elif shape is None:
        raise SpidecError(f"no built-in model for data set {data!r} without its sample shape",
                          hint="pass shape= (and classes=), or give a model file")
    else:
        shape = tuple(int(d) for d in shape)
        hidden = 128 if int(np.prod(shape)) <= 256 else 256
        classes = max(2, int(classes))
    n_in = int(np.prod(shape))
    rng = np.random.default_rng(seed)

    def u(*s: int, fan_in: int) -> np.ndarray:
        return rng.uniform(-1 / np.sqrt(fan_in), 1 / np.sqrt(fan_in), s).astype(np.float32)

    base = code_name(data_name(data))
    g = Graph(f"{base if base[:1].isalpha() else 'data_' + base}_fb")
    g.add_input("x", shape)
    g.add_population("z", [hidden], Neuron("IF", 1.0), bias=u(hidden, fan_in=n_in))
    g.add_readout("logits", [classes], bias=u(classes, fan_in=hidden))
    fc = [Dense(u(hidden, n_in, fan_in=n_in))]
    g.add_synapse("x", "z", [Flatten(), *fc] if len(shape) > 1 else fc, name="fc_in")
    fb = rng.standard_normal((hidden, hidden)).astype(np.float32)
    g.add_synapse("z", "z", Dense(fb / np.linalg.norm(fb)), delay=1, name="fb")
    g.add_synapse("z", "logits", Dense(u(classes, hidden, fan_in=hidden)), name="readout")
    return g.validate()


def _bar(label: str, enabled: bool) -> tuple[Any, Callable[[], None]]:
    """A ctypes progress callback drawing a bar on stderr."""
    state = {"last": 0.0}

    @ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_double, ctypes.c_int)
    def progress(done: int, total: int, loss: float, correct: int) -> None:
        now = time.monotonic()
        if not enabled or (done < total and now - state["last"] < 0.2):
            return
        state["last"] = now
        filled = int(30 * done / max(total, 1))
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} "
                         f"loss {loss / max(done, 1):.4f} acc {correct / max(done, 1):.3f} ")
        sys.stderr.flush()

    def close() -> None:
        if enabled:
            sys.stderr.write("\n")

    return progress, close


def run_demo(model: str | None = None, data: str = "digits", epochs: int | None = None, batch: int = 64,
             out: str | Path = "build/demo", quiet: bool = False, progress: bool | None = None,
             log: Callable[[str], None] = print, dt: float | None = None,
             data_dir: str | Path | None = None) -> dict[str, Any]:
    """Compile, train and report; returns the summary (also written to ``out/summary.json``).
    ``data``: what :func:`spidec.data.load` reads (a named data set, ``data_dir`` for those read from
    a folder, or an ``.npz`` with x_train, y_train, x_test, y_test). ``dt``: the time step of a NIR
    model file (see ``spidec.from_nir``)."""
    from . import passes, reference
    from .backends import c as cback
    from .data import load as load_data
    from .frontends import load as load_model
    from .report import energy, energy_text, write_report
    from .text import save

    say = (lambda s: None) if quiet else log
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if dt is not None and not (model and str(model).lower().endswith(".nir")):
        raise SpidecError("--dt applies to NIR files (.nir) only")
    epochs = DEFAULT_EPOCHS.get(data, 5) if epochs is None else epochs
    if epochs < 0 or batch < 1:
        raise SpidecError("epochs must be >= 0 and batch >= 1")
    ds = load_data(data, data_dir)
    g = ((load_model(model, dt=dt) if dt is not None else load_model(model)) if model else
         builtin_model(data, shape=ds.x_train.shape[1:], classes=ds.classes))
    ds = ds.reshaped(g.inputs[0].shape)
    say(f"model {g.name}: {len(g.populations)} population(s), {sum(p.size for p in g.populations):,} neurons, "
        f"{g.num_parameters():,} parameters; data {data}: {len(ds.y_train):,} training, "
        f"{len(ds.y_test):,} test samples")

    eq = reference.equilibrium(g, ds.x_test[:16])
    say("exact equilibrium of 16 test samples: " + ", ".join(
        f"{p} mean rate {a.mean():.3f}" for p, a in eq.rates.items()) + f" (residual {eq.residual:.1e})")

    t0 = time.monotonic()
    tg = passes.run(g)
    rt = cback.emit(tg, out / "c").build()
    say(f"compiled to C and built in {time.monotonic() - t0:.1f} s: {out / 'c'}/ (model.c, train, lib{rt.name}.so)")

    order = tg.schedule.forward
    sizes = [tg.node(p).size for p in order]
    couples = [tg.training.couple_of(p).name for p in order]
    probe = np.ascontiguousarray(ds.x_test[:64].reshape(min(64, len(ds.x_test)), -1), dtype=np.float32)
    history: list[dict[str, Any]] = []
    work_total: dict[str, dict[str, int]] = {"synops": {}, "macs": {}}
    trained = 0
    show = (not quiet and sys.stderr.isatty()) if progress is None else progress
    x_train = np.ascontiguousarray(ds.x_train.reshape(len(ds.x_train), -1), dtype=np.float32)
    y_train = np.ascontiguousarray(ds.y_train, dtype=np.int32)
    rng = np.random.default_rng(0)
    rt.take_work()
    for epoch in range(epochs):
        t1 = time.monotonic()
        perm = np.ascontiguousarray(rng.permutation(len(y_train)).astype(np.int32))
        correct = ctypes.c_int(0)
        cb, close = _bar(f"epoch {epoch + 1}/{epochs}", show)
        lr = rt.lib.spide_lr_at(epoch, ctypes.c_float(rt.lr))
        rt.lib.spide_begin_epoch()
        loss = rt.lib.spide_train_epoch(x_train, y_train, len(y_train), perm, batch, ctypes.c_float(lr),
                                        ctypes.byref(correct), ctypes.cast(cb, ctypes.c_void_p))
        close()
        seconds = time.monotonic() - t1
        work = rt.take_work()
        for kind in work:
            for s, v in work[kind].items():
                work_total[kind][s] = work_total[kind].get(s, 0) + v
        trained += len(y_train)
        test = rt.evaluate(ds.x_test, ds.y_test)
        rates = rt.rates(probe).mean(axis=0)
        back = np.zeros(sum(sizes))
        for k in range(len(probe)):  # backward passes on the probe (loss scaled as in training)
            rt.lib.spide_learn(probe[k], int(ds.y_test[k]), batch)
            back += rt.back_counts() / tg.training.T_back / len(probe)
        rt.lib.spide_zero_grads()
        rt.take_work()
        split = np.cumsum([0, *sizes])
        entry = {"epoch": epoch + 1, "lr": float(lr), "train_loss": loss / len(y_train),
                 "train_accuracy": correct.value / len(y_train), "test_loss": test["loss"],
                 "test_accuracy": test["accuracy"], "seconds": seconds, "samples_per_s": len(y_train) / seconds,
                 "forward_rate": {p: float(rates[split[k]: split[k + 1]].mean()) for k, p in enumerate(order)},
                 "backward_rate": {c: float(back[split[k]: split[k + 1]].mean()) for k, c in enumerate(couples)}}
        history.append(entry)
        say(f"epoch {epoch + 1:3d}  loss {entry['train_loss']:.4f}  train acc {entry['train_accuracy']:.4f}  "
            f"test acc {entry['test_accuracy']:.4f}  {entry['samples_per_s']:.0f} samples/s  rates "
            + " ".join(f"{p}={v:.3f}" for p, v in entry["forward_rate"].items()) + " | "
            + " ".join(f"{c}={v:.3f}" for c, v in entry["backward_rate"].items()))

    tensors = {name: w.reshape(tg.tensor(name).shape) for name, w in rt.get_weights().items()}
    trained_graph = tg.with_tensors(tensors)
    save(trained_graph, out / "model.spir")  # the training graph with the trained tensors (model.npz)
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    # (an .npz by its absolute path: spidec report finds it from any folder)
    source = str(Path(data).resolve()) if data.endswith(".npz") else data
    (out / "run.json").write_text(json.dumps({"model": g.name, "data": source, "target": "c",
                                              **({"data_dir": str(Path(data_dir).resolve())} if data_dir else {})})
                                  + "\n")
    summary: dict[str, Any] = {"model": g.name, "data": data, "epochs": epochs, "batch": batch,
                               "test_accuracy": history[-1]["test_accuracy"] if history else None,
                               "history": history}
    if trained:
        summary["energy"] = energy(tg, work_total, trained, batch)
        say(energy_text(summary["energy"]))
    plots = write_report(out, trained_graph, history, tensors, (ds.x_test[0], int(ds.y_test[0])))
    summary["plots"] = [str(p) for p in plots]
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if history:
        say(f"test accuracy {100 * history[-1]['test_accuracy']:.2f}% after {epochs} epochs; "
            f"plots: {', '.join(p.name for p in plots)} in {out}/")
    return summary


__all__ = ["DEFAULT_EPOCHS", "builtin_model", "run_demo"]
