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


def _integer_epochs(*axes: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    for a in axes:
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
    _integer_epochs(a1, a2)
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
    _integer_epochs(a1, a2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_raster(forward: dict[str, np.ndarray], backward: dict[str, np.ndarray], path: Path,
                max_neurons: int = 80) -> Path:
    """``forward``: population -> spikes [T, N]; ``backward``: couple -> ternary spikes [T_back, N]."""
    plt = _plt()
    rows = len(forward)
    fig, axes = plt.subplots(rows, 2, figsize=(11, 2.6 * rows), squeeze=False)
    rng = np.random.default_rng(0)
    for k, ((p, s), (c, b)) in enumerate(zip(forward.items(), backward.items())):
        n = s.shape[1]
        pick = np.sort(rng.choice(n, size=min(n, max_neurons), replace=False))
        t, i = np.nonzero(s[:, pick])
        axes[k, 0].scatter(t, i, s=4, c="black", marker="|")
        axes[k, 0].set_title(f"{p}: forward spikes ({len(pick)} of {n} neurons)")
        axes[k, 0].set_xlim(-0.5, s.shape[0] - 0.5)
        axes[k, 0].set_ylabel("neuron")
        bb = b[:, pick]
        tp, ip = np.nonzero(bb > 0)
        tn, i_n = np.nonzero(bb < 0)
        axes[k, 1].scatter(tp, ip, s=4, c="tab:blue", marker="|", label="+1")
        axes[k, 1].scatter(tn, i_n, s=4, c="tab:red", marker="|", label="-1")
        axes[k, 1].set_title(f"{c}: ternary backward spikes")
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
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * (len(order) + 1)), 4.2))

    def arrow(a: str, b: str, **kw: Any) -> None:
        (x0, y0), (x1, y1) = pos[a], pos[b]
        props = {"arrowstyle": "-|>", "lw": 1.4, **kw}
        if a == b:  # a self-loop: an arc above a population, below a couple
            up = 1.0 if y0 >= 0 else -1.0
            ax.annotate("", xy=(x0 + 0.14, y0 + 0.22 * up), xytext=(x0 - 0.14, y0 + 0.22 * up),
                        arrowprops={**props, "connectionstyle": f"arc3,rad={-2.2 * up}"})
            return
        rad = 0.35 if x1 < x0 else 0.0
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops={**props, "shrinkA": 16, "shrinkB": 16, "connectionstyle": f"arc3,rad={rad}"})

    for e in g.synapses():
        arrow(e.src, e.dst, color="black", linestyle="--" if e.synapse.delay else "-")
    if g.training:
        for b in g.training.backward:
            arrow(b.src, b.dst, color="tab:red", linestyle="--" if b.delay else "-")
        for inj in g.training.injections:
            arrow(inj.readout, inj.couple, color="tab:orange")
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
    ax.set_ylim(-2.4, max(1.0, len(g.inputs) - 0.2))
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


def report_dir(run: Path, data: str | None = None) -> list[Path]:
    """``spidec report RUN``: the plots of a demo run (run.json) or of a trained sim program."""
    from .text import load

    run = Path(run)
    spir = run / "model.spir"
    if not spir.exists():
        raise SpidecError(f"{run} holds no model.spir: pass a folder written by spidec demo, spidec compile or "
                          "spidec train")
    g = load(spir)
    history = json.loads((run / "history.json").read_text()) if (run / "history.json").exists() else []
    tensors = None
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
    elif history:  # a demo run: model.spir holds the trained weights
        tensors = g.parameters(learnable_only=False)
    meta = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    sample = None
    name = data or meta.get("data")
    if tensors is not None and name:
        from .data import load as load_data

        ds = load_data(name).reshaped(g.inputs[0].shape)
        sample = (ds.x_test[0], int(ds.y_test[0]))
    return write_report(run, g, history, tensors, sample)


__all__ = ["dense_work", "energy", "energy_text", "plot_curves", "plot_graph", "plot_raster", "plot_rates",
           "report_dir", "spike_record", "write_report"]
