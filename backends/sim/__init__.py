"""The ``sim`` backend: a training graph into a self-contained, readable PyTorch program.

    art = emit(g, "build/")        # g: after the spiking, spide and schedule passes
    net = art.load()               # the emitted Net, imported in process
    art.train(data="digits", epochs=5)

The output folder holds ``model.py`` (the network's forward stage, ternary backward stage, local
updates and SGD, unrolled per population and synapse), ``weights.npz`` (the initial tensors by
name), ``train.py`` (a CLI: data, epochs, progress, checkpoints, ``torchrun`` data parallelism) and
``model.spir`` (the training graph the code was generated from). Generated code is deterministic:
the same graph gives the same bytes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jinja2
import numpy as np

from ...artifact import Artifact
from ...errors import SpidecError
from ...fileio import BuildFiles
from ...ir import Graph, code_name
from ...masks import dropout_sites
from ...ops import AvgPool2d, Conv2d, ConvTranspose2d, Dense, Flatten, LinearOp, Pad, Reshape, Scale, Shape, Zero
from ...program import BiasRule, ReadoutWeightRule, WeightRule, lowered, require_program
from ...runs import write_manifest
from ...schedule import default_schedule
from ...text import dumps
from .. import environment

TEMPLATES = Path(__file__).with_name("templates")




class _Codegen:
    """Python/torch expressions for every op of the graph; constant tensors become buffers."""

    def __init__(self, g: Graph, effective: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.g = g
        self.buffers: dict[str, np.ndarray] = {}  # buffer name -> value (constants that are no parameter)
        self.tensor_attr = {name: "p_" + code_name(name) for name in g.parameters(learnable_only=False)}
        self.slot_names = {(s.owner, s.op, s.field): n for n, s in g.tensor_slots().items()}
        self.effective = effective  # tensors the stages read through their norm-restricted copy

    def tensor(self, syn: str, i: int, field: str) -> str:
        name = self.slot_names[(syn, i, field)]
        return ("self.e_" if name in self.effective else "self.") + self.tensor_attr[name]

    def const(self, base: str, value: np.ndarray) -> str:
        name = "c_" + code_name(base)
        self.buffers[name] = value
        return "self." + name

    # ---------------------------------------------------------------- one op (through SIM_OPS)
    def _entry(self, op: LinearOp) -> SimOp:
        entry = SIM_OPS.get(type(op))
        if entry is None:
            raise SpidecError(f"the sim backend has no code for op {op.kind}")
        return entry

    def apply(self, syn: str, i: int, op: LinearOp, x: str, shape_in: Shape) -> str:
        return self._entry(op).apply(self, syn, i, op, x, shape_in)

    def adjoint(self, syn: str, i: int, op: LinearOp, y: str, shape_in: Shape) -> str:
        return self._entry(op).adjoint(self, syn, i, op, y, shape_in)

    def grad(self, syn: str, i: int, op: LinearOp, post: str, pre: str) -> str:
        entry = self._entry(op)
        if entry.grad is None:
            raise SpidecError(f"the sim backend cannot train op {op.kind}")
        return entry.grad(self, syn, i, op, post, pre)

    # ---------------------------------------------------------------- chains
    def chain(self, syn: str, x: str, backward: bool = False) -> list[str]:
        """Statements computing ``h`` = the synapse applied to ``x`` (or its adjoint applied to ``x``)."""
        e = self.g.synapse(syn)
        shapes = e.synapse.shapes(self.g.node(e.src).shape)
        lines, cur = [], x
        ops = list(enumerate(e.synapse.ops))
        for i, op in (reversed(ops) if backward else ops):
            expr = self.adjoint(syn, i, op, cur, shapes[i]) if backward else self.apply(syn, i, op, cur, shapes[i])
            lines.append(f"h = {expr}")
            cur = "h"
        return lines

    def grads(self, syn: str, post: str, pre: str) -> list[tuple[str, list[str]]]:
        """For each learnable op of the synapse: (tensor name, statements leaving its gradient in ``gw``)."""
        e = self.g.synapse(syn)
        shapes = e.synapse.shapes(self.g.node(e.src).shape)
        out = []
        for i, op in enumerate(e.synapse.ops):
            if not op.learnable():
                continue
            lines, cur_pre = [], pre
            for j in range(i):
                lines.append(f"hp = {self.apply(syn, j, e.synapse.ops[j], cur_pre, shapes[j])}")
                cur_pre = "hp"
            cur_post = post
            for j in range(len(e.synapse.ops) - 1, i, -1):
                lines.append(f"hq = {self.adjoint(syn, j, e.synapse.ops[j], cur_post, shapes[j])}")
                cur_post = "hq"
            lines.append(f"gw = {self.grad(syn, i, op, cur_post, cur_pre)}")
            out.append((self.slot_names[(syn, i, "weight")], lines))
        return out


# ---------------------------------------------------------------------------------------------- the op table
# Each linear op's torch code: apply(cg, syn, i, op, x, shape_in) and adjoint(cg, syn, i, op, y,
# shape_in) return an expression; grad(cg, syn, i, op, post, pre) the weight gradient of a
# learnable op. A new op is one entry here (and its class in spidec.ops).


class SimOp(NamedTuple):
    apply: Callable[..., str]
    adjoint: Callable[..., str]
    grad: Callable[..., str] | None = None


def _out_pad(op: Any, shape_in: Shape) -> tuple[int, ...]:
    shape_out = op.shape_out(shape_in)
    return tuple(n - ((o - 1) * s - 2 * p + k) for n, o, s, p, k in
                 zip(shape_in[1:], shape_out[1:], op.stride, op.padding, op.kernel))


def _pool_adjoint(cg: _Codegen, syn: str, i: int, op: AvgPool2d, y: str, shape_in: Shape) -> str:
    c = shape_in[0]
    ones = cg.const(f"ones_{syn}_{i}", np.ones((c, 1, *op.kernel), np.float32))
    div = op._divisor(shape_in)
    div_text = repr(float(div)) if isinstance(div, float) else cg.const(f"div_{syn}_{i}", np.asarray(div, np.float32))
    return (f"F.conv_transpose2d({y} / {div_text}, {ones}, stride={op.stride}, padding={op.padding}, "
            f"output_padding={_out_pad(op, shape_in)}, groups={c})")


def _scale(cg: _Codegen, syn: str, i: int, op: Scale, x: str, shape_in: Shape) -> str:
    if isinstance(op.factor, float):
        return f"({x} * {op.factor!r})"
    return f"({x} * {cg.tensor(syn, i, 'factor')})"


def _view_back(cg: _Codegen, syn: str, i: int, op: Any, y: str, shape_in: Shape) -> str:
    return f"{y}.reshape({y}.shape[0], *{tuple(shape_in)})"


SIM_OPS: dict[type, SimOp] = {
    Dense: SimOp(
        lambda cg, syn, i, op, x, s: f"F.linear({x}, {cg.tensor(syn, i, 'weight')})",
        lambda cg, syn, i, op, y, s: f"({y} @ {cg.tensor(syn, i, 'weight')})",
        lambda cg, syn, i, op, post, pre: f"{post}.t() @ {pre}"),
    Conv2d: SimOp(
        lambda cg, syn, i, op, x, s: (f"F.conv2d({x}, {cg.tensor(syn, i, 'weight')}, stride={op.stride}, "
                                      f"padding={op.padding})"),
        lambda cg, syn, i, op, y, s: (f"F.conv_transpose2d({y}, {cg.tensor(syn, i, 'weight')}, stride={op.stride}, "
                                      f"padding={op.padding}, output_padding={_out_pad(op, s)})"),
        lambda cg, syn, i, op, post, pre: (f"torch.nn.grad.conv2d_weight({pre}, {cg.tensor(syn, i, 'weight')}.shape, "
                                           f"{post}, stride={op.stride}, padding={op.padding})")),
    ConvTranspose2d: SimOp(
        lambda cg, syn, i, op, x, s: (f"F.conv_transpose2d({x}, {cg.tensor(syn, i, 'weight')}, stride={op.stride}, "
                                      f"padding={op.padding}, output_padding={op.output_padding})"),
        lambda cg, syn, i, op, y, s: (f"F.conv2d({y}, {cg.tensor(syn, i, 'weight')}, stride={op.stride}, "
                                      f"padding={op.padding})"),
        lambda cg, syn, i, op, post, pre: (f"torch.nn.grad.conv2d_weight({post}, {cg.tensor(syn, i, 'weight')}.shape, "
                                           f"{pre}, stride={op.stride}, padding={op.padding})")),
    AvgPool2d: SimOp(
        lambda cg, syn, i, op, x, s: (f"F.avg_pool2d({x}, {op.kernel}, {op.stride}, {op.padding}, "
                                      f"count_include_pad={op.count_include_pad})"),
        _pool_adjoint),
    Reshape: SimOp(lambda cg, syn, i, op, x, s: f"{x}.reshape({x}.shape[0], *{op.shape})", _view_back),
    Flatten: SimOp(lambda cg, syn, i, op, x, s: f"{x}.flatten(1)", _view_back),
    Pad: SimOp(
        lambda cg, syn, i, op, x, s: f"F.pad({x}, {[p for pair in reversed(op.pads) for p in pair]})",
        lambda cg, syn, i, op, y, s: f"{y}[:, {', '.join(f'{a}:{a + n}' for (a, _), n in zip(op.pads, s))}]"),
    Scale: SimOp(_scale, lambda cg, syn, i, op, y, s: _scale(cg, syn, i, op, y, op.shape_out(s))),
    Zero: SimOp(
        lambda cg, syn, i, op, x, s: f"{x}.new_zeros(({x}.shape[0], *{op.shape}))",
        lambda cg, syn, i, op, y, s: f"{y}.new_zeros(({y}.shape[0], *{tuple(s)}))"),
}


@dataclass
class SimArtifact(Artifact):
    """What ``emit`` wrote, with helpers to run it in process (the :class:`~spidec.artifact.Artifact`
    method set on a float32 CPU ``Net``; ``load`` for another device or dtype)."""

    out: Path
    graph: Graph
    target = "sim"
    _net: Any = None
    _module: Any = None

    @property
    def model_path(self) -> Path:
        return self.out / "model.py"

    def module(self) -> Any:
        """The emitted ``model.py`` imported as a fresh module."""
        name = f"spidec_sim_{hashlib.sha1(str(self.out.resolve()).encode()).hexdigest()[:10]}"
        spec = importlib.util.spec_from_file_location(name, self.model_path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module

    def load(self, device: str = "cpu", dtype: Any = None) -> Any:
        """A ``Net`` with the emitted initial weights."""
        m = self.module()
        kwargs = {"device": device}
        if dtype is not None:
            kwargs["dtype"] = dtype
        return m.Net(self.out / "weights.npz", **kwargs)

    # -- the Artifact method set
    def build(self) -> Any:
        """The emitted ``Net`` (float32, CPU), loaded once."""
        if self._net is None:
            self._module = self.module()
            self._net = self._module.Net(self.out / "weights.npz")
        return self._net

    def _x(self, x: Any) -> np.ndarray:
        """Samples (numpy, or torch on any device) as float32 [N, *sample shape], finite."""
        import torch

        self.build()
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.asarray(x, np.float32)
        try:
            x = x.reshape(-1, *self._module.sample_shape(x))  # (frames of a temporal model kept)
        except ValueError as e:
            raise SpidecError(str(e)) from None
        if not np.all(np.isfinite(x)):
            raise SpidecError("the samples hold NaN or inf values")
        return x

    def _y(self, y: Any, n: int) -> np.ndarray:
        """Labels as train.py takes them: 1-D integers in the model's classes, one per sample."""
        try:
            return self._module.labels(y, n, "the")
        except ValueError as e:
            raise SpidecError(str(e)) from None

    def _input(self, x: Any) -> dict[str, Any]:
        import torch

        net = self.build()
        name = next(iter(self._module.INPUTS))
        return {name: torch.as_tensor(self._x(x), dtype=net.dtype_)}

    def train(self, x: Any, y: Any, *, epochs: int = 1, batch: int = 64, lr: float | None = None,
              seed: int = 0, lr_schedule: str | None = None, warmup: int = 0, augment: str = "",
              normalize: str | None = None) -> list[dict]:
        """As train.py trains: ``lr_schedule`` (spidec.schedule; default the model's own),
        ``warmup`` batches, ``augment`` and ``normalize`` (spidec.augment; test data must then be
        normalised by the caller), dropout keys of (seed, epoch, sample index)."""
        import math

        import torch

        from ...artifact import epochs_of
        from ...augment import apply, parse_augment, parse_normalize
        from ...schedule import lr_at, parse_schedule

        net = self.build()
        m = self._module
        if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise SpidecError(f"lr must be a positive number, got {lr!r}")
        if epochs < 0 or batch < 1 or warmup < 0:
            raise SpidecError(f"epochs must be >= 0, batch >= 1 and warmup >= 0 (got {epochs}, {batch}, {warmup})")
        x_all = self._x(x)
        y_all = self._y(y, len(x_all))
        yt = torch.as_tensor(y_all, dtype=torch.long)
        sched = parse_schedule(lr_schedule or m.DEFAULT_SCHEDULE)
        aug = parse_augment(augment)
        norm = parse_normalize(normalize) if normalize else None
        per_epoch = -(-len(yt) // batch)
        count = [0]
        good: dict = {}  # the weights and momentum as the current epoch began: restored if training diverges

        def step(idx: Any, total: int, epoch: int) -> tuple[float, int]:
            if count[0] % per_epoch == 0:
                good.update(epoch=epoch, tensors=net.tensors(), momentum=net.optimizer_state())
            xb = x_all[idx]
            if aug.enabled or norm is not None:
                xb = apply(xb, idx, epoch, seed, aug, norm)
            it = epoch * per_epoch + count[0] % per_epoch
            count[0] += 1
            rate = lr_at(sched, lr or m.LR, epoch, epochs, it, warmup, epochs * per_epoch)
            keys = m.sample_keys(seed, epoch, idx) if m.DROPOUT else None
            r = m.train_step(net, self._input(xb), yt[idx], rate, total, keys=keys)
            bad = None if math.isfinite(r["loss"]) else f"the loss is {r['loss']}"
            bad = bad or (None if (t := net.nonfinite()) is None else f"{t} holds NaN or inf after its step")
            if bad:
                net.set_tensors(good["tensors"])
                net.set_optimizer_state(good["momentum"])
                raise SpidecError(f"training diverged at epoch {epoch + 1}, batch {(count[0] - 1) % per_epoch + 1}: "
                                  f"{bad} (learning rate {rate:g} too high?); the weights are restored to the start "
                                  f"of epoch {good['epoch'] + 1}")
            return float(r["loss"]), int(r["correct"])

        return epochs_of(x_all, y_all, epochs, batch, seed, step)

    def evaluate(self, x: Any, y: Any) -> dict:
        import torch

        net = self.build()
        inputs = self._input(x)
        y = self._y(y, len(next(iter(inputs.values()))))
        return self._module.evaluate(net, inputs, torch.as_tensor(y, dtype=torch.long))

    def rates(self, x: Any) -> dict[str, np.ndarray]:
        import torch

        net = self.build()
        with torch.no_grad():
            fwd = net.forward_stage(self._input(x))
        return {p: fwd["a_" + key].cpu().numpy() for p, key in self._module.POPULATIONS.items()}

    def get_weights(self) -> dict[str, np.ndarray]:
        return self.build().tensors()

    def set_weights(self, values: dict[str, Any]) -> None:
        net = self.build()
        current = net.tensors()
        for name, value in values.items():
            if name not in current:
                raise SpidecError(f"no tensor named '{name}'; the model has: {', '.join(current)}")
            if np.shape(value) != current[name].shape:
                raise SpidecError(f"tensor '{name}' has shape {list(current[name].shape)}, got {list(np.shape(value))}")
        net.set_tensors(values)

    def run_cli(self, *args: str) -> int:
        """Run the emitted ``train.py`` CLI in process (same arguments as on the command line)."""
        name = f"spidec_sim_train_{hashlib.sha1(str(self.out.resolve()).encode()).hexdigest()[:10]}"
        spec = importlib.util.spec_from_file_location(name, self.out / "train.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module.main(list(args))

    def next_steps(self) -> str:
        return f"train it: spidec train {self.out} --data digits"


def _masks_source() -> str:
    """spidec.masks' functions, copied into the emitted program (it runs without spidec)."""
    import inspect

    from ... import masks

    return "\n\n".join([f"DROPOUT_SALT = {masks.DROPOUT_SALT:#x}"] + [
        inspect.getsource(f) for f in (masks.mix64, masks.sample_keys, masks.dropout_mask)])


def context(g: Graph) -> dict[str, Any]:
    """Everything the templates need, as plain values and code lines, read from the step program."""
    from ... import __version__

    prog = require_program(g, "the sim backend")
    reparam = prog.restricted("reparam")
    cg = _Codegen(g, set(reparam))
    chains = {ch.name: ch for ch in prog.chains}
    needs_adjoint = {f.syn for c in prog.couples for f in c.feeds} | {s for c in prog.couples for s in c.injections}
    synapses = [{"name": ch.name, "var": code_name(ch.name), "src": ch.src, "dst": ch.dst,
                 "fw": cg.chain(ch.name, "x"),
                 "bw": cg.chain(ch.name, "y", backward=True) if ch.name in needs_adjoint else None}
                for ch in prog.chains]
    pops = []
    for p in prog.populations:
        c = prog.couple_of(p.name)
        bias = None
        if p.bias:
            bias = "self." + cg.tensor_attr[p.bias]
            if p.bias_channels:
                bias += f".view({p.bias_channels}, *{(1,) * (len(p.shape) - 1)})"
        feeds = [{"syn": code_name(f.syn), "src": code_name(f.src), "kind": f.kind,
                  "drop": chains[f.syn].dropout > 0} for f in p.feeds]
        bias_drop = next((code_name(f.syn) for f in p.feeds if chains[f.syn].dropout_bias), None)
        pops.append({"name": p.name, "var": code_name(p.name), "shape": list(p.shape), "vth": p.vth, "V": p.V,
                     "leak": p.leak, "norm": p.norm, "bias": bias, "feeds": feeds, "delayed": p.keep_prev,
                     "couple": c.name, "cvar": code_name(c.name), "cvth": c.vth, "S": c.S, "cleak": c.leak,
                     "norm_b": c.norm, "bias_drop": bias_drop})
    by_name = {p["name"]: p for p in pops}
    back_order = []
    for c in prog.couples:
        feeds = [{"syn": code_name(f.syn), "gate": by_name[f.gate]["var"], "src": by_name[f.gate]["cvar"],
                  "delayed": f.delayed, "drop": chains[f.syn].dropout > 0} for f in c.feeds]
        injections = [{"rvar": code_name(chains[s].dst), "syn": code_name(s)} for s in c.injections]
        back_order.append({**by_name[c.of], "bfeeds": feeds, "injections": injections, "bdelayed": c.keep_prev})
    pop_names = set(by_name)

    def rate(node: str) -> str:
        return ("a_" if node in pop_names else "xr_") + code_name(node)

    readouts = [{"name": r.name, "var": code_name(r.name), "loss": r.loss, "shape": list(r.shape),
                 "bias": ("self." + cg.tensor_attr[r.bias]) if r.bias else None,
                 "feeds": [{"syn": code_name(f.syn), "src": rate(f.src)} for f in r.feeds]}
                for r in prog.readouts]
    updates = []
    for r in prog.rules:
        attr = cg.tensor_attr[r.tensor]
        if isinstance(r, (WeightRule, ReadoutWeightRule)):
            ch = chains[r.syn]
            kind = "local" if isinstance(r, WeightRule) else "delta"
            post = f"post_{code_name(ch.dst)}" if kind == "local" else f"dy_{code_name(ch.dst)}"
            for tname, lines in cg.grads(ch.name, post, rate(ch.src)):
                if tname == r.tensor:
                    scale = r.scale if isinstance(r, WeightRule) else 1.0
                    updates.append({"tensor": r.tensor, "attr": attr, "kind": kind, "lines": lines, "scale": scale,
                                    "what": f"{kind} rule through synapse {ch.name} ({ch.src} -> {ch.dst})"})
        else:
            local = isinstance(r, BiasRule)
            node = r.gate if local else r.node  # type: ignore[union-attr]
            src = f"post_{code_name(node)}" if local else f"dy_{code_name(node)}"
            ndim = len(prog.population(node).shape) if local else len(next(x for x in prog.readouts
                                                                              if x.name == node).shape)
            dims = [0] + list(range(2, 1 + ndim)) if local and r.channels else [0]  # type: ignore[union-attr]
            kind = "bias" if local else "delta_bias"
            updates.append({"tensor": r.tensor, "attr": attr, "kind": kind, "scale": r.scale if local else 1.0,  # type: ignore[union-attr]
                            "lines": [f"gw = {src}.sum(dim={tuple(dims)})"], "what": f"{kind} rule of {node}"})
    learnable = g.parameters()
    params = [{"name": n, "attr": cg.tensor_attr[n], "learnable": n in learnable}
              for n in g.parameters(learnable_only=False)]
    return {
        "version": __version__, "model": prog.model, "graph_hash": prog.build_hash,
        "T": prog.T, "T_back": prog.T_back, "sf": prog.sf, "encoding": prog.encoding, "opt": prog.optimizer,
        "inputs": [{"name": i.name, "var": code_name(i.name), "shape": list(i.shape)} for i in prog.inputs],
        "synapses": synapses, "pops": pops, "back": back_order, "readouts": readouts, "updates": updates,
        "params": params,
        "buffers": sorted(cg.buffers),
        "masks_source": _masks_source(),
        "default_schedule": default_schedule(prog.optimizer.milestones, prog.optimizer.gamma),
        "dropout": [{"var": code_name(ch.name), "name": ch.name, "id": k, "p": ch.dropout, "threshold": thr,
                     "scale": repr(scale), "shape": list(g.node(ch.dst).shape)}
                    for k, ch, thr, scale in dropout_sites(prog.chains)],
        "reparam": [{"attr": cg.tensor_attr[n], "bound": b} for n, b in sorted(reparam.items())],
        "project": [{"attr": cg.tensor_attr[n], "bound": b} for n, b in sorted(prog.restricted("project").items())],
        "classes": prog.readouts[0].shape[0] if prog.readouts and prog.readouts[0].loss == "cross_entropy" else None,
        "_buffers": cg.buffers,
    }


def _env() -> jinja2.Environment:
    return environment(TEMPLATES, tuple=lambda xs: repr(tuple(int(x) for x in xs)))


def emit(g: Graph, out: str | Path) -> SimArtifact:
    """Write the PyTorch training program for training graph ``g`` into folder ``out``."""
    if g.quant is not None:  # fixed-point scales are the c backend's business: a float program here
        g = g.copy()
    g = lowered(g, "the sim backend")
    ctx = context(g)
    out = Path(out)
    env = _env()
    with BuildFiles(out) as files:  # all or nothing, never through a symbolic link
        for name in ("model.py", "train.py"):
            files.write_text(name, env.get_template(name + ".j2").render(**ctx))
        tensors = {n: np.asarray(v) for n, v in g.parameters(learnable_only=False).items()}
        tensors.update({f"__const__{k}": v for k, v in ctx["_buffers"].items()})
        buf = io.BytesIO()
        np.savez(buf, **tensors)
        files.write_bytes("weights.npz", buf.getvalue())
        text, _ = dumps(g, inline_max=0, tensors_file="weights.npz")
        files.write_text("model.spir", text)
    write_manifest(out, "sim", g.program)
    return SimArtifact(out, g)


# what `spidec train` takes for a sim build besides the common options (spidec.runs)
TRAIN_OPTIONS = ("checkpoint", "resume", "limit_train", "limit_test", "device", "extra", "lr_schedule", "warmup",
                 "augment", "normalize", "data_dir", "threads")


def train_build(out: Path, opts: Any, say: Any) -> dict[str, Any]:
    """``spidec train`` of a sim build: its train.py in this process (it prints the epoch lines)."""
    import json

    args = ["--data", opts.data, "--seed", str(opts.seed)]
    for flag, v in (("--epochs", opts.epochs), ("--batch", opts.batch), ("--lr", opts.lr),
                    ("--checkpoint", opts.checkpoint), ("--limit-train", opts.limit_train),
                    ("--limit-test", opts.limit_test), ("--device", opts.device),
                    ("--lr-schedule", opts.lr_schedule), ("--warmup", opts.warmup or None),
                    ("--augment", opts.augment or None), ("--normalize", opts.normalize),
                    ("--data-dir", opts.data_dir), ("--threads", opts.threads)):
        if v is not None:
            args += [flag, str(v)]
    if opts.resume:
        args.append("--resume")
    if opts.quiet or opts.json:
        args.append("--quiet")
    args += list(opts.extra)
    log = out / "history.json"
    before = log.stat().st_mtime_ns if log.exists() else None
    try:
        code = SimArtifact(out, None).run_cli(*args)  # type: ignore[arg-type]
    except SystemExit:  # train.py's own argument errors (it printed its usage)
        raise SpidecError(f"the sim build's train.py refused its arguments: {' '.join(args)}") from None
    if code != 0:
        why = ": training diverged, see its message above" if code == 3 else ""
        raise SpidecError(f"training the sim build in {out} failed (train.py exited with {code}{why})")
    history = json.loads(log.read_text()) if log.exists() and log.stat().st_mtime_ns != before else []
    return {"epochs": history}


__all__ = ["TRAIN_OPTIONS", "SimArtifact", "context", "emit", "train_build"]
