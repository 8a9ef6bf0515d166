"""Reports of a training run: plots a person would rather look at than read, and the energy
estimate.

    spidec report RUN_DIR            # RUN_DIR: a demo run, or a compiled sim program after training

Writes ``curves.png`` (loss, accuracy per epoch), ``rates.png`` (forward and backward firing rates
per population over training), ``raster.png`` (one sample's forward spikes and ternary backward
spikes) and ``graph.png`` (the training graph: forward, feedback, backward paths and couples).

Energy: the work of one training sample is counted by the C runtime (spike-driven accumulates and
multiply-accumulates per stage) and priced with the 45 nm figures of M. Horowitz, "Computing's
energy problem (and what we can do about it)", ISSCC 2014: a 32-bit float add 0.9 pJ, a 32-bit
float multiply 3.7 pJ (so a multiply-accumulate 4.6 pJ). The comparison is the same schedule done
densely (every weight applied at every step, as a non-event-driven implementation does). Memory
traffic is not priced: both columns would pay it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SpidecError
from .ir import Graph, Input, Population, code_name
from .ops import AvgPool2d, Conv2d, ConvTranspose2d, Dense, LinearOp

PJ_ADD = 0.9  # 32-bit float add, 45 nm (Horowitz, ISSCC 2014)
PJ_MULT = 3.7  # 32-bit float multiply, 45 nm (idem)
PJ_MAC = PJ_ADD + PJ_MULT
SOURCE = 'M. Horowitz, "Computing\'s energy problem (and what we can do about it)", ISSCC 2014 (45 nm)'


# ================================================================== energy

def _op_macs(op: LinearOp, shape_in: tuple[int, ...]) -> int:
    """Multiply-accumulates of one dense application of ``op``."""
    out = op.shape_out(shape_in)
    if isinstance(op, Dense):
        return int(op.weight.size)
    if isinstance(op, Conv2d):
        return int(math.prod(out) * op.weight.shape[1] * op.weight.shape[2] * op.weight.shape[3])
    if isinstance(op, ConvTranspose2d):
        return int(math.prod(shape_in) * op.weight.shape[1] * op.weight.shape[2] * op.weight.shape[3])
    if isinstance(op, AvgPool2d):
        return int(math.prod(out) * op.kernel[0] * op.kernel[1])
    return 0


def dense_work(g: Graph) -> dict[str, int]:
    """MACs of one training sample when every weight is applied at every step (no event sparsity),
    and every weight's update term is computed (no masked rows skipped)."""
    if g.simulation is None or g.training is None:
        raise SpidecError("the energy estimate needs the training graph (after the passes)")
    T, Tb = g.simulation.T, g.training.T_back
    fwd = bwd = 0
    for e in g.synapses():
        shapes = e.synapse.shapes(g.node(e.src).shape)
        macs = sum(_op_macs(op, s) for op, s in zip(e.synapse.ops, shapes[:-1]))
        src, dst = g.node(e.src), g.node(e.dst)
        if isinstance(src, Population) and isinstance(dst, Population):
            fwd += T * macs
            bwd += Tb * macs
        else:  # input currents and readouts: once per sample (injection: once per sample too)
            fwd += macs
            if isinstance(src, Population):
                bwd += macs
    return {"forward": fwd, "backward": bwd, "update": g.num_parameters()}  # every weight's outer-product term


def energy(g: Graph, work: dict[str, dict[str, int]], samples: int, batch: int) -> dict[str, Any]:
    """Per-sample operations and energy (pJ) from the C runtime's counters over ``samples``
    training samples, beside the dense schedule."""
    per = {kind: {s: v / samples for s, v in d.items()} for kind, d in work.items()}
    opt_macs = 3 * g.num_parameters() / batch  # d = G + wd W; buf = m buf + d; W -= f buf, once per batch
    spiking = {s: per["synops"][s] * PJ_ADD + per["macs"][s] * PJ_MAC for s in ("forward", "backward", "update")}
    spiking["update"] += opt_macs * PJ_MAC
    dense = dense_work(g)
    dense_pj = {s: v * PJ_MAC for s, v in dense.items()}
    dense_pj["update"] += opt_macs * PJ_MAC  # both pay the optimiser's step
    return {
        "source": SOURCE, "pJ_per_add": PJ_ADD, "pJ_per_mac": PJ_MAC, "batch": batch,
        "synops_per_sample": per["synops"], "macs_per_sample": {**per["macs"],
                                                                "optimizer": opt_macs},
        "spiking_pJ_per_sample": spiking, "spiking_uJ_per_sample": sum(spiking.values()) / 1e6,
        "dense_macs_per_sample": dense, "dense_pJ_per_sample": dense_pj,
        "dense_uJ_per_sample": sum(dense_pj.values()) / 1e6,
        "ratio": sum(dense_pj.values()) / max(sum(spiking.values()), 1e-12),
    }


def energy_text(e: dict[str, Any]) -> str:
    lines = [f"energy per training sample (batch {e['batch']}; {e['pJ_per_add']:.1f} pJ per add, "
             f"{e['pJ_per_mac']:.1f} pJ per multiply-accumulate; {e['source']}):",
             f"  {'stage':9s} {'spike ops':>11s} {'MACs':>11s} {'spiking':>11s}   {'dense MACs':>12s} {'dense':>11s}"]
    for s in ("forward", "backward", "update"):
        lines.append(f"  {s:9s} {e['synops_per_sample'][s]:11.3g} {e['macs_per_sample'][s]:11.3g} "
                     f"{e['spiking_pJ_per_sample'][s] / 1e6:9.3f} uJ   {e['dense_macs_per_sample'][s]:12.3g} "
                     f"{e['dense_pJ_per_sample'][s] / 1e6:8.3f} uJ")
    lines.append(f"  total: {e['spiking_uJ_per_sample']:.3f} uJ with spikes, {e['dense_uJ_per_sample']:.3f} uJ dense "
                 f"({e['ratio']:.1f}x)")
    return "\n".join(lines)


# ================================================================== plots

def _plt() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        raise SpidecError("plots need matplotlib: pip install matplotlib") from None
    return plt


def _integer_epochs(epochs: list[int], *axes: Any) -> None:
    """Whole epochs on the x axis: every epoch when there are few (MaxNLocator's integer mode falls
    back to fractional ticks on a span under one epoch, e.g. a single epoch), else integer ticks."""
    from matplotlib.ticker import MaxNLocator

    for a in axes:
        if len(epochs) <= 12:
            a.set_xticks(sorted(set(epochs)))
            if len(set(epochs)) == 1:
                a.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
        else:
            a.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_curves(history: list[dict], path: Path) -> Path:
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    if "test_loss" in history[0]:
        a1.plot(epochs, [h["test_loss"] for h in history], "s--", label="test loss")
    a1.set_xlabel("epoch")
    a1.set_ylabel("cross-entropy")
    a1.set_title("loss")
    a1.legend()
    a2.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train")
    a2.plot(epochs, [100 * h["test_accuracy"] for h in history], "s-", label="test")
    a2.set_xlabel("epoch")
    a2.set_ylabel("accuracy (%)")
    a2.set_title("accuracy")
    a2.legend()
    _integer_epochs(epochs, a1, a2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rates(history: list[dict], path: Path) -> Path:
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for p in history[0]["forward_rate"]:
        a1.plot(epochs, [h["forward_rate"][p] for h in history], "o-", label=p)
    for c in history[0]["backward_rate"]:
        a2.plot(epochs, [h["backward_rate"][c] for h in history], "o-", label=c)
    a1.set_title("forward firing rate (spikes per neuron per step)")
    a2.set_title("backward firing rate (ternary spikes per couple per step)")
    for a in (a1, a2):
        a.set_xlabel("epoch")
        a.legend(fontsize=8)
    _integer_epochs(epochs, a1, a2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def raster_neurons(n: int, max_neurons: int = 80) -> tuple[np.ndarray, str]:
    """The neurons a raster shows of a population of ``n`` (flat indices, C order): all, or one in
    every k from 0, and the words that say which."""
    step = max(1, -(-n // max_neurons))
    pick = np.arange(0, n, step)
    if step == 1:
        return pick, f"all {n} neurons"
    return pick, f"neurons 0, {step}, {2 * step}, ..., {int(pick[-1])}: one in {step}, {len(pick)} of {n}"


def plot_raster(forward: dict[str, np.ndarray], backward: dict[str, np.ndarray], path: Path,
                max_neurons: int = 80) -> Path:
    """``forward``: population -> spikes [T, N]; ``backward``: couple -> ternary spikes [T_back, N].
    A population of more than ``max_neurons`` shows one neuron in k (:func:`raster_neurons`), each
    at its own index (flat, C order) on the y axis; the titles say which."""
    plt = _plt()
    rows = len(forward)
    fig, axes = plt.subplots(rows, 2, figsize=(11, 2.6 * rows), squeeze=False)
    for k, ((p, s), (c, b)) in enumerate(zip(forward.items(), backward.items())):
        n = s.shape[1]
        pick, which = raster_neurons(n, max_neurons)
        t, i = np.nonzero(s[:, pick])
        axes[k, 0].scatter(t, pick[i], s=4, c="black", marker="|")
        axes[k, 0].set_title(f"{p}: forward spikes ({which})", fontsize=9)
        axes[k, 0].set_xlim(-0.5, s.shape[0] - 0.5)
        axes[k, 0].set_ylabel("neuron")
        bb = b[:, pick]
        tp, ip = np.nonzero(bb > 0)
        tn, i_n = np.nonzero(bb < 0)
        axes[k, 1].scatter(tp, pick[ip], s=4, c="tab:blue", marker="|", label="+1")
        axes[k, 1].scatter(tn, pick[i_n], s=4, c="tab:red", marker="|", label="-1")
        axes[k, 1].set_title(f"{c}: ternary backward spikes (the same neurons' couples)", fontsize=9)
        for a in axes[k]:
            a.set_ylim(-0.5 - 0.01 * n, n - 0.5 + 0.01 * n)
        axes[k, 1].set_xlim(-0.5, b.shape[0] - 0.5)
        axes[k, 1].legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("forward time step")
    axes[-1, 1].set_xlabel("backward time step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_graph(g: Graph, path: Path) -> Path:
    """The training graph: inputs, populations and readouts left to right in step order, couples
    below their populations; forward synapses black, feedback dashed, backward paths red,
    loss injection orange."""
    plt = _plt()
    order = g.step_order()
    pos: dict[str, tuple[float, float]] = {}
    for k, i in enumerate(g.inputs):
        pos[i.name] = (0.0, float(k))
    for k, n in enumerate(order):
        pos[n] = (float(k + 1), 0.0)
    couples = {c.of: c.name for c in g.training.couples} if g.training else {}
    for p, c in couples.items():
        pos[c] = (pos[p][0], -1.6)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * (len(order) + 1)), 4.6))
    drawn: dict[tuple[str, str], int] = {}  # arrows so far between the same two nodes (either way)

    def arrow(a: str, b: str, gid: str, delayed: bool = False, **kw: Any) -> None:
        """One arrow with a filled head (visible on a dashed line too). Straight only when undelayed
        between neighbours; a delayed arrow or one that skips a column bows away from the other row
        (above the populations, below the couples), and each further arrow between the same two
        nodes bows further, so no two arrows coincide."""
        (x0, y0), (x1, y1) = pos[a], pos[b]
        props = {"arrowstyle": "-|>", "mutation_scale": 14, "lw": 1.4, "linestyle": "--" if delayed else "-", **kw}
        k = drawn.get((min(a, b), max(a, b)), 0)
        drawn[(min(a, b), max(a, b))] = k + 1
        up = 1.0 if y0 >= 0 else -1.0  # bow away from the other row
        if a == b:  # a self-loop: an arc above a population, below a couple
            w = 0.14 + 0.08 * k
            ax.annotate("", xy=(x0 + w, y0 + 0.22 * up), xytext=(x0 - w, y0 + 0.22 * up), gid=gid,
                        arrowprops={**props, "connectionstyle": f"arc3,rad={-2.2 * up}"})
            return
        straight = y0 == y1 and abs(x1 - x0) == 1 and not delayed and k == 0
        if y0 != y1:  # between rows (loss injection) or from a second input
            rad = 0.0 if k == 0 and not delayed else 0.25 * (k + 1)
        elif straight:
            rad = 0.0
        else:  # arc3 bends to the right of the travel direction for rad > 0
            side = 1.0 if x1 < x0 else -1.0  # right of a leftward arrow is up, of a rightward one down
            rad = side * up * (0.35 + 0.2 * k)
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), gid=gid,
                    arrowprops={**props, "shrinkA": 16, "shrinkB": 16, "connectionstyle": f"arc3,rad={rad:g}"})

    for e in g.synapses():
        arrow(e.src, e.dst, f"synapse:{e.name}", bool(e.synapse.delay), color="black")
    if g.training:
        for b in g.training.backward:
            arrow(b.src, b.dst, f"backward:{b.name}", bool(b.delay), color="tab:red")
        for inj in g.training.injections:
            arrow(inj.readout, inj.couple, f"injection:{inj.forward}", color="tab:orange")
    for name, (x, y) in pos.items():
        if name in couples.values():
            style = {"boxstyle": "round", "fc": "#fde0dc", "ec": "tab:red"}
        elif isinstance(g.node(name), Input):
            style = {"boxstyle": "round", "fc": "#e8e8e8", "ec": "gray"}
        elif isinstance(g.node(name), Population):
            style = {"boxstyle": "circle", "fc": "#dbe9f6", "ec": "tab:blue"}
        else:
            style = {"boxstyle": "square", "fc": "#e5f5e0", "ec": "tab:green"}
        label = name if name in couples.values() else f"{name}\n{list(g.node(name).shape)}"
        ax.text(x, y, label, ha="center", va="center", fontsize=8, bbox=style)
    ax.set_xlim(-0.8, len(order) + 0.8)
    ax.set_ylim(-2.7, max(1.3, len(g.inputs) - 0.2))
    ax.axis("off")
    ax.set_title(f"{g.name}: forward (black, feedback dashed), backward through couples (red), loss (orange)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def spike_record(g: Graph, tensors: dict[str, np.ndarray], x: np.ndarray, label: int, workdir: Path
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One sample's spikes of both stages, simulated by the sim backend with ``tensors``."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        raise SpidecError("the spike raster runs the sim backend, which needs PyTorch") from None
    from .backends import sim

    art = sim.emit(g, workdir)
    net, prog = art.load(), art.module()
    net.set_tensors(tensors)
    inp = {g.inputs[0].name: torch.from_numpy(np.asarray(x, np.float32)[None])}
    fwd = net.forward_stage(inp, record=True)
    _, dy, _ = prog.loss_and_grad(fwd, torch.tensor([int(label)]), 1)
    bwd = net.backward_stage(fwd, dy, record=True)
    fw = {p.name: fwd["spikes_" + code_name(p.name)][:, 0].reshape(g.simulation.T, -1).numpy()
          for p in g.populations}
    bw = {g.training.couple_of(p.name).name:
          bwd["tern_" + code_name(p.name)][:, 0].reshape(g.training.T_back, -1).numpy() for p in g.populations}
    return fw, bw


def write_report(run: Path, g: Graph, history: list[dict], tensors: dict[str, np.ndarray] | None = None,
                 sample: tuple[np.ndarray, int] | None = None) -> list[Path]:
    """Every plot that the available data allows, into ``run``."""
    run.mkdir(parents=True, exist_ok=True)
    out = [plot_graph(g, run / "graph.png")]
    if history:
        out += [plot_curves(history, run / "curves.png"), plot_rates(history, run / "rates.png")]
    if tensors is not None and sample is not None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:  # the sim program that records the spikes
            fw, bw = spike_record(g, tensors, sample[0], sample[1], Path(tmp))
        out.append(plot_raster(fw, bw, run / "raster.png"))
    return out


def _sample_of_build(run: Path, g: Graph) -> tuple[tuple[np.ndarray, int] | None, str | None]:
    """A c build's data as ``spidec train`` packed it (``data/NAME.test.spds``, the newest): its
    first labelled test sample, and the file it came from."""
    from .data import read_spds

    files = sorted((run / "data").glob("*.test.spds"), key=lambda p: p.stat().st_mtime, reverse=True)
    for f in files:
        x, y, _ = read_spds(f)
        if y is not None and int(np.prod(x.shape[1:])) == int(np.prod(g.inputs[0].shape)):
            return (x[0].reshape(g.inputs[0].shape), int(y[0])), str(f)
    return None, None


def report_dir(run: Path, data: str | None = None, data_dir: str | Path | None = None,
               note: Callable[[str], None] | None = None) -> list[Path]:
    """``spidec report RUN``: the plots of a demo run (run.json), of a sim program after training
    (checkpoint.pt) or of a c build (its model.spir and weights.c; trained weights from
    checkpoint.bin when ``spidec train BUILD --checkpoint BUILD/checkpoint.bin`` wrote one). The raster's
    sample: ``data`` (``data_dir`` as for :func:`spidec.data.load`), else the run's data set
    (a demo's run.json; a c build's packed test file). Each plot it cannot draw is said in one line
    to ``note`` (default: a :class:`SpidecWarning`), never skipped silently."""
    import warnings

    from .errors import SpidecWarning
    from .text import load

    def say(text: str) -> None:
        if note is not None:
            note(text)
        else:
            warnings.warn(text, SpidecWarning, stacklevel=3)

    run = Path(run)
    spir = run / "model.spir"
    if not spir.exists():
        raise SpidecError(f"{run} holds no model.spir: pass a folder written by spidec demo, spidec compile or "
                          "spidec train")
    from .runs import MANIFEST, read_manifest

    target = read_manifest(run).get("target") if (run / MANIFEST).is_file() else None
    history = json.loads((run / "history.json").read_text()) if (run / "history.json").exists() else []
    meta = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    tensors = None
    weights = ""
    if target == "c":  # model.spir names no tensors file: the initial weights are in weights.c
        from .export import _c_build_graph, _read_c_checkpoint

        g = _c_build_graph(run)
        if (run / "checkpoint.bin").is_file():
            tensors, _ = _read_c_checkpoint(run / "checkpoint.bin", g, read_manifest(run).get("hash"))
        else:
            tensors = g.parameters(learnable_only=False)
            weights = (f" of the compiled initial weights (no checkpoint.bin: spidec train {run} --checkpoint "
                       f"{run / 'checkpoint.bin'} keeps the trained ones)")
        if not history:
            say("curves.png and rates.png skipped: a c build keeps no history.json (its epoch lines are what "
                "spidec train printed)")
    else:
        g = load(spir)
    if (run / "checkpoint.pt").exists():  # a trained sim program: its model.spir holds the initial weights
        import torch

        from .export import _numpy_globals

        try:  # weights_only: a shared run folder's checkpoint cannot run code when read
            with torch.serialization.safe_globals(_numpy_globals()):
                state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
            tensors = {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in state["tensors"].items()}
        except Exception as e:
            raise SpidecError(f"{run / 'checkpoint.pt'} is not a checkpoint spidec can read safely "
                              f"({type(e).__name__}); nothing in it was run") from None
    elif history and target is None:  # a demo run: model.spir holds the trained weights
        tensors = g.parameters(learnable_only=False)
    if target not in (None, "c") and not history:
        say(f"curves.png and rates.png skipped: {run} holds no history.json (train it first: spidec train {run})")
    sample = None
    name = data or meta.get("data")
    if tensors is None:
        say(f"raster.png skipped: {run} holds no trained weights (no checkpoint)")
    elif name:
        from .data import load as load_data

        ds = load_data(name, data_dir or (meta.get("data_dir") if not data else None)).reshaped(g.inputs[0].shape)
        sample = (ds.x_test[0], int(ds.y_test[0]))
    elif target == "c":
        sample, source = _sample_of_build(run, g)
        if sample is not None:
            say(f"raster.png: the first sample of {source} (the test data spidec train packed for the build)")
        else:
            say("raster.png skipped: it needs a sample, and the build holds no packed test data (data/*.test.spds): "
                "give --data NAME")
    else:
        say("raster.png skipped: it needs a sample and the run does not record its data set: give --data NAME "
            "(digits, mnist, FILE.npz ...)")
    if weights and sample is not None:
        say("raster.png shows the spikes" + weights)
    if g.program is not None and g.program.quant is not None and sample is not None:
        say("raster.png simulates the fixed-point build's weights in float: the integer runtime's spikes may differ "
            "slightly")
    return write_report(run, g, history, tensors, sample)

__all__ = ["dense_work", "energy", "energy_text", "plot_curves", "plot_graph", "plot_raster", "plot_rates",
           "raster_neurons", "report_dir", "spike_record", "write_report"]
