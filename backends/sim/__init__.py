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
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from ...errors import SpidecError
from ...ir import Graph, Input, Population, code_name
from ...ops import AvgPool2d, Conv2d, ConvTranspose2d, Dense, Flatten, LinearOp, Pad, Reshape, Scale, Shape, Zero
from ...text import dumps

TEMPLATES = Path(__file__).with_name("templates")




class _Codegen:
    """Python/torch expressions for every op of the graph; constant tensors become buffers."""

    def __init__(self, g: Graph) -> None:
        self.g = g
        self.buffers: dict[str, np.ndarray] = {}  # buffer name -> value (constants that are no parameter)
        self.tensor_attr = {name: "p_" + code_name(name) for name in g.parameters(learnable_only=False)}
        self.slot_names = {(s.owner, s.op, s.field): n for n, s in g.tensor_slots().items()}

    def tensor(self, syn: str, i: int, field: str) -> str:
        return "self." + self.tensor_attr[self.slot_names[(syn, i, field)]]

    def const(self, base: str, value: np.ndarray) -> str:
        name = "c_" + code_name(base)
        self.buffers[name] = value
        return "self." + name

    # ---------------------------------------------------------------- one op
    def apply(self, syn: str, i: int, op: LinearOp, x: str, shape_in: Shape) -> str:
        if isinstance(op, Dense):
            return f"F.linear({x}, {self.tensor(syn, i, 'weight')})"
        if isinstance(op, Conv2d):
            return f"F.conv2d({x}, {self.tensor(syn, i, 'weight')}, stride={op.stride}, padding={op.padding})"
        if isinstance(op, ConvTranspose2d):
            return (f"F.conv_transpose2d({x}, {self.tensor(syn, i, 'weight')}, stride={op.stride}, "
                    f"padding={op.padding}, output_padding={op.output_padding})")
        if isinstance(op, AvgPool2d):
            return (f"F.avg_pool2d({x}, {op.kernel}, {op.stride}, {op.padding}, "
                    f"count_include_pad={op.count_include_pad})")
        if isinstance(op, Reshape):
            return f"{x}.reshape({x}.shape[0], *{op.shape})"
        if isinstance(op, Flatten):
            return f"{x}.flatten(1)"
        if isinstance(op, Pad):
            pads = [p for pair in reversed(op.pads) for p in pair]
            return f"F.pad({x}, {pads})"
        if isinstance(op, Scale):
            if isinstance(op.factor, float):
                return f"({x} * {op.factor!r})"
            return f"({x} * {self.tensor(syn, i, 'factor')})"
        if isinstance(op, Zero):
            return f"{x}.new_zeros(({x}.shape[0], *{op.shape}))"
        raise SpidecError(f"the sim backend has no code for op {op.kind}")  # pragma: no cover

    def adjoint(self, syn: str, i: int, op: LinearOp, y: str, shape_in: Shape) -> str:
        shape_out = op.shape_out(shape_in)
        if isinstance(op, Dense):
            return f"({y} @ {self.tensor(syn, i, 'weight')})"
        if isinstance(op, Conv2d):
            out_pad = tuple(n - ((o - 1) * s - 2 * p + k) for n, o, s, p, k in
                            zip(shape_in[1:], shape_out[1:], op.stride, op.padding, op.kernel))
            return (f"F.conv_transpose2d({y}, {self.tensor(syn, i, 'weight')}, stride={op.stride}, "
                    f"padding={op.padding}, output_padding={out_pad})")
        if isinstance(op, ConvTranspose2d):
            return f"F.conv2d({y}, {self.tensor(syn, i, 'weight')}, stride={op.stride}, padding={op.padding})"
        if isinstance(op, AvgPool2d):
            c = shape_in[0]
            out_pad = tuple(n - ((o - 1) * s - 2 * p + k) for n, o, s, p, k in
                            zip(shape_in[1:], shape_out[1:], op.stride, op.padding, op.kernel))
            ones = self.const(f"ones_{syn}_{i}", np.ones((c, 1, *op.kernel), np.float32))
            div = op._divisor(shape_in)
            div_text = repr(float(div)) if isinstance(div, float) else self.const(
                f"div_{syn}_{i}", np.asarray(div, np.float32))
            return (f"F.conv_transpose2d({y} / {div_text}, {ones}, stride={op.stride}, padding={op.padding}, "
                    f"output_padding={out_pad}, groups={c})")
        if isinstance(op, (Reshape, Flatten)):
            return f"{y}.reshape({y}.shape[0], *{tuple(shape_in)})"
        if isinstance(op, Pad):
            index = ", ".join(f"{a}:{a + s}" for (a, _), s in zip(op.pads, shape_in))
            return f"{y}[:, {index}]"
        if isinstance(op, Scale):
            return self.apply(syn, i, op, y, shape_out)
        if isinstance(op, Zero):
            return f"{y}.new_zeros(({y}.shape[0], *{tuple(shape_in)}))"
        raise SpidecError(f"the sim backend has no adjoint for op {op.kind}")  # pragma: no cover

    def grad(self, syn: str, i: int, op: LinearOp, post: str, pre: str) -> str:
        w = self.tensor(syn, i, "weight")
        if isinstance(op, Dense):
            return f"{post}.t() @ {pre}"
        if isinstance(op, Conv2d):
            return (f"torch.nn.grad.conv2d_weight({pre}, {w}.shape, {post}, stride={op.stride}, "
                    f"padding={op.padding})")
        if isinstance(op, ConvTranspose2d):
            return (f"torch.nn.grad.conv2d_weight({post}, {w}.shape, {pre}, stride={op.stride}, "
                    f"padding={op.padding})")
        raise SpidecError(f"the sim backend cannot train op {op.kind}")  # pragma: no cover

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


@dataclass
class SimArtifact:
    """What ``emit`` wrote, with helpers to run it in process."""

    out: Path
    graph: Graph

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

    def train(self, *args: str) -> int:
        """Run the emitted ``train.py`` CLI in process (same arguments as on the command line)."""
        name = f"spidec_sim_train_{hashlib.sha1(str(self.out.resolve()).encode()).hexdigest()[:10]}"
        spec = importlib.util.spec_from_file_location(name, self.out / "train.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module.main(list(args))


def _require_passes(g: Graph) -> None:
    if g.simulation is None or g.training is None or g.schedule is None:
        missing = [n for n, v in (("spiking", g.simulation), ("spide", g.training), ("schedule", g.schedule))
                   if v is None]
        raise SpidecError(f"the sim backend needs a training graph; run the passes first ({', '.join(missing)} "
                          "missing): spidec.passes.run(g)")


def context(g: Graph) -> dict[str, Any]:
    """Everything the templates need, as plain values and code lines."""
    from ... import __version__

    _require_passes(g)
    cg = _Codegen(g)
    t, sim, sched = g.training, g.simulation, g.schedule
    assert t is not None and sim is not None and sched is not None
    couple = {c.of: c for c in t.couples}
    synapses = []
    needs_adjoint = {b.forward for b in t.backward} | {i.forward for i in t.injections}
    for e in g.synapses():
        synapses.append({"name": e.name, "var": code_name(e.name), "src": e.src, "dst": e.dst,
                         "fw": cg.chain(e.name, "x"),
                         "bw": cg.chain(e.name, "y", backward=True) if e.name in needs_adjoint else None})
    pops = []
    for name in sched.forward:
        p = g.node(name)
        assert isinstance(p, Population)
        feeds = []
        for e in g.in_synapses(name):
            src = g.node(e.src)
            if isinstance(src, Input):
                kind = "input"
            else:
                kind = "delayed" if e.synapse.delay else "now"
            feeds.append({"syn": code_name(e.name), "src": code_name(e.src), "kind": kind})
        n = p.neuron
        bias = None
        if p.bias is not None:
            bias = "self." + cg.tensor_attr[f"{name}.bias"]
            if p.bias.shape != p.shape:
                bias += f".view({p.bias.shape[0]}, *{(1,) * (len(p.shape) - 1)})"
        lam = n.leak
        norm = float(sim.T) if lam == 1.0 else (1 - lam ** sim.T) / (1 - lam)
        c = couple[name]
        norm_b = float(t.T_back) if c.leak == 1.0 else (1 - c.leak ** t.T_back) / (1 - c.leak)
        pops.append({"name": name, "var": code_name(name), "shape": list(p.shape), "vth": n.vth, "V": n.V, "leak": lam,
                     "norm": norm, "bias": bias, "feeds": feeds, "delayed": name in sched.delayed,
                     "couple": c.name, "cvar": code_name(c.name), "cvth": c.vth, "S": c.S, "cleak": c.leak,
                     "norm_b": norm_b})
    by_name = {p["name"]: p for p in pops}
    back_order = []
    for cname in sched.backward:
        c = next(x for x in t.couples if x.name == cname)
        p = by_name[c.of]
        feeds = []
        for b in t.backward:
            if b.dst == cname:
                q = by_name[b.gate]
                feeds.append({"syn": code_name(b.forward), "gate": q["var"], "src": q["cvar"],
                              "delayed": bool(b.delay)})
        injections = [{"rvar": code_name(i.readout), "syn": code_name(i.forward)}
                      for i in t.injections if i.couple == cname]
        back_order.append({**p, "bfeeds": feeds, "injections": injections,
                           "bdelayed": cname in sched.delayed_back})
    readouts = []
    for r in g.readouts:
        feeds = []
        for e in g.in_synapses(r.name):
            src = g.node(e.src)
            var = ("xr_" if isinstance(src, Input) else "a_") + code_name(e.src)
            feeds.append({"syn": code_name(e.name), "src": var})
        readouts.append({"name": r.name, "var": code_name(r.name), "loss": r.loss, "shape": list(r.shape),
                         "bias": ("self." + cg.tensor_attr[f"{r.name}.bias"]) if r.bias is not None else None,
                         "feeds": feeds})
    updates = []
    for u in t.updates:
        attr = cg.tensor_attr[u.tensor]
        if u.kind in ("local", "delta"):
            e = g.synapse(u.synapse)  # type: ignore[arg-type]
            src = g.node(e.src)
            pre = ("xr_" if isinstance(src, Input) else "a_") + code_name(e.src)
            post = (f"post_{code_name(e.dst)}" if u.kind == "local" else f"dy_{code_name(e.dst)}")
            for tname, lines in cg.grads(e.name, post, pre):
                if tname == u.tensor:
                    updates.append({"tensor": u.tensor, "attr": attr, "kind": u.kind, "lines": lines,
                                    "what": f"{u.kind} rule through synapse {e.name} ({e.src} -> {e.dst})"})
        else:
            node = g.node(u.post if u.kind == "delta_bias" else u.gate)  # type: ignore[arg-type]
            src = (f"dy_{code_name(node.name)}" if u.kind == "delta_bias" else f"post_{code_name(node.name)}")
            bias = g.tensor(u.tensor)
            dims = [0] + list(range(2, 1 + len(node.shape))) if bias.shape != node.shape else [0]
            updates.append({"tensor": u.tensor, "attr": attr, "kind": u.kind,
                            "lines": [f"gw = {src}.sum(dim={tuple(dims)})"], "what": f"{u.kind} rule of {node.name}"})
    feedback = sorted({n for n, s in g.tensor_slots().items()
                       if s.learnable and s.op is not None and g.synapse(s.owner).synapse.delay})
    params = [{"name": n, "attr": cg.tensor_attr[n], "learnable": n in g.parameters()}
              for n in g.parameters(learnable_only=False)]
    text, _ = dumps(g, inline_max=0)
    return {
        "version": __version__, "model": g.name, "graph_hash": hashlib.sha256(text.encode()).hexdigest()[:16],
        "T": sim.T, "T_back": t.T_back, "sf": t.sf, "encoding": sim.encoding, "opt": t.optimizer,
        "inputs": [{"name": i.name, "var": code_name(i.name), "shape": list(i.shape)} for i in g.inputs],
        "synapses": synapses, "pops": pops, "back": back_order, "readouts": readouts, "updates": updates,
        "params": params,
        "buffers": sorted(cg.buffers), "feedback": [cg.tensor_attr[n] for n in feedback],
        "classes": g.readouts[0].shape[0] if g.readouts and g.readouts[0].loss == "cross_entropy" else None,
        "_buffers": cg.buffers,
    }


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["tuple"] = lambda xs: repr(tuple(int(x) for x in xs))
    return env


def emit(g: Graph, out: str | Path) -> SimArtifact:
    """Write the PyTorch training program for training graph ``g`` into folder ``out``."""
    ctx = context(g)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = _env()
    for name in ("model.py", "train.py"):
        (out / name).write_text(env.get_template(name + ".j2").render(**ctx))
    tensors = {n: np.asarray(v) for n, v in g.parameters(learnable_only=False).items()}
    tensors.update({f"__const__{k}": v for k, v in ctx["_buffers"].items()})
    with open(out / "weights.npz", "wb") as f:
        np.savez(f, **tensors)
    text, _ = dumps(g, inline_max=0, tensors_file="weights.npz")
    (out / "model.spir").write_text(text)
    return SimArtifact(out, g)


__all__ = ["SimArtifact", "context", "emit"]
