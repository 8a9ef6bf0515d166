"""The ``c`` backend: a training graph into C (C11 on a host, C99 on a board) that trains the network
on the device it runs on.

    art = emit(g, "build/")          # model.c, weights.c, the runtime, a Makefile, spidec.json
    rt = art.build()                 # make; a ctypes handle on the shared library
    rt.train(x, y, epochs=5); rt.evaluate(x_test, y_test)   # (or the same on art: spidec.artifact)

Everything is read from the step program (``g.program``). The folder holds ``model.c`` (sizes as
constants, state in static arrays declared from the buffer plan, thread-local in float builds so
the runtime's threads each learn their own samples; the schedule unrolled; the synapse kernels from
``C_KERNELS``), ``weights.c`` (the initial tensors), a copy of ``runtime/``
(``spide.h`` and the shared sources: data-set and checkpoint files, the training loop, the
command-line program) and a
``Makefile`` that builds the host executable ``train`` (``train``/``eval``/``predict``/``info``)
and the shared library. Same graph, same bytes.

Supported: synapses made of any chain of the IR's linear ops (dense, conv, transposed conv,
average pooling, pad, scalar and tensor scales, flatten/reshape, zero; at most one learnable op:
see :func:`chain_kernel`), IF/LIF populations of any shape with full or per-channel biases, one
data input (constant encoding) and one cross-entropy readout; other ops are refused with a message.

A graph that went through the ``quantize`` pass (``g.quant``) gets the integer-only runtime of
``templates/fixed.c.j2`` instead (both extend ``templates/base.c.j2``; ``spidec.fixed`` describes its
arithmetic; dense synapses and IF neurons), and ``emit(..., board=...)`` adds a Cortex-M image (``board.py``).
"""

from __future__ import annotations

import ctypes
import json
import math
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import jinja2
import numpy as np

from ...artifact import Artifact
from ...errors import SpidecError
from ...fileio import BuildFiles, write_text
from ...ir import Graph, code_name, short_name
from ...masks import dropout_sites
from ...ops import OPS
from ...program import BiasRule, Chain, Program, ReadoutWeightRule, WeightRule, lowered, require_program
from ...runs import write_manifest
from ...text import dumps
from .. import environment
from .board import BOARD_MAKEFILE, BOARDS

TEMPLATES = Path(__file__).with_name("templates")


def _c_float(v: float) -> str:
    s = f"{float(np.float32(v)):.9g}"
    if not any(ch in s for ch in ".en"):
        s += ".0"
    return s + "f"


def _cname(name: str) -> str:
    return "t_" + code_name(name)


def _runtime_dir() -> Path:
    from ...runtime import ROOT

    if not (ROOT / "include" / "spide.h").exists():  # pragma: no cover - a broken installation
        raise SpidecError(f"the C runtime sources are missing from {ROOT}")
    return ROOT


# ---------------------------------------------------------------------------------------------- the op table
# The C kernel of each kind of synapse (the step program's Chain.kernel, which an op class names
# with its ``kernel`` attribute): the jinja macro that writes the synapse's functions (fw_, fwv_,
# bw_, bwv_, gr_: see kernels.c.j2), the template values it needs besides the sizes, and what it
# keeps. A new op is one entry here plus its macro (in kernels.c.j2, or ``source`` for a kernel
# defined elsewhere).


class CKernel(NamedTuple):
    macro: str
    geometry: Callable[[Graph, Chain, Any], dict[str, Any]] | None = None
    source: str | None = None  # jinja text defining ``macro`` (default: kernels.c.j2)
    refresh: bool = False  # keeps permuted weight copies: refresh_S() after every weight change
    transposed: bool = False  # keeps W^T (W's columns contiguous) for the forward scatter


def _window(g: Graph, ch: Chain, op: Any) -> dict[str, Any]:
    ci, h, wd = ch.shape_in
    co, ho, wo = ch.shape_out
    return {"ci": ci, "h": h, "wd": wd, "co": co, "ho": ho, "wo": wo, "kh": op.kernel[0], "kw": op.kernel[1],
            "sh": op.stride[0], "sw": op.stride[1], "ph": op.padding[0], "pw": op.padding[1]}


def _lanes(c: int) -> int:
    """Channels padded so a spike's vector of them fills whole SIMD registers (8 or 16 floats)."""
    return c if c < 4 else -(-c // 8) * 8 if c <= 8 else -(-c // 16) * 16


def _conv(g: Graph, ch: Chain, op: Any) -> dict[str, Any]:
    geo = _window(g, ch, op)
    return {**geo, "size": int(op.weight.size), "cip": _lanes(geo["ci"]), "cop": _lanes(geo["co"])}


def _pool(g: Graph, ch: Chain, op: Any) -> dict[str, Any]:
    geo = _window(g, ch, op)
    inv = 1.0 / np.broadcast_to(np.asarray(op._divisor(ch.shape_in), np.float64), (geo["ho"], geo["wo"]))
    windows = -(-geo["kh"] // geo["sh"]) * -(-geo["kw"] // geo["sw"])  # the most windows one input is in
    return {**geo, "inv": ", ".join(_c_float(v) for v in inv.ravel()), "pf": windows}


def _axes(shape: tuple[int, ...]) -> list[int]:
    """The flat-index divisor of each axis of a C-order array of ``shape``."""
    return [math.prod(shape[k + 1:]) for k in range(len(shape))]


def _pad(g: Graph, ch: Chain, op: Any) -> dict[str, Any]:
    # per axis: (input divisor, input size, output divisor, zeros before); flat index i of the
    # input lands at sum_k ((i / id_k) % s_k + b_k) * od_k of the output
    axes = [{"id": i_d, "s": n, "od": o_d, "os": no, "b": b} for i_d, n, o_d, no, (b, _) in
            zip(_axes(ch.shape_in), ch.shape_in, _axes(ch.shape_out), ch.shape_out, op.pads)]
    return {"axes": axes, "out": " + ".join(f"((i / {a['id']}) % {a['s']} + {a['b']}) * {a['od']}" for a in axes)}


def _tensor_scale(g: Graph, ch: Chain, op: Any) -> dict[str, Any]:
    # the factor tensor broadcast to the input shape (right-aligned, numpy rules): element i of the
    # input is scaled by factor[sum over the factor's non-broadcast axes of coordinate_k * stride_k]
    shape = ch.shape_in
    f = (1,) * (len(shape) - op.factor.ndim) + tuple(op.factor.shape)
    terms = [f"((i / {d}) % {n}) * {fs}" for d, n, fn, fs in zip(_axes(shape), shape, f, _axes(f)) if fn > 1]
    return {"fidx": " + ".join(terms) or "0"}


C_KERNELS: dict[str, CKernel] = {
    "dense": CKernel("dense", transposed=True),
    "identity": CKernel("identity"),
    "conv": CKernel("conv", _conv, refresh=True),
    "convt": CKernel("convt", _conv, refresh=True),
    "pool": CKernel("pool", _pool, refresh=True),
    # ops that only come as links of a chain (chain_kernel; no Chain.kernel names them)
    "pad": CKernel("pad", _pad),
    "scale": CKernel("tensor_scale", _tensor_scale),
    "zero": CKernel("zero"),
}


def kernel(g: Graph, ch: Chain, env: jinja2.Environment | None = None) -> dict[str, Any]:
    """What one synapse's kernel needs, and its C code (``code``), from the op table."""
    entry = C_KERNELS.get(ch.kernel)
    if entry is None:
        return chain_kernel(g, ch, env)
    s: dict[str, Any] = {"name": ch.name, "c": code_name(ch.name), "n": ch.n_in, "m": ch.n_out,
                         "w": _cname(ch.weight) if ch.weight else None, "kind": ch.kernel,
                         "refresh": entry.refresh, "transposed": entry.transposed, "lazy": False}
    if entry.geometry is not None:
        op = g.synapse(ch.name).synapse.ops[ch.kernel_op]  # type: ignore[index]
        s.update(entry.geometry(g, ch, op))
    s["code"] = kernel_code(s, env)
    return s


# The op kinds a chain's links may be (op.kind -> C_KERNELS key); views (flatten, reshape) are no
# code on flat memory and scalar scales are folded into the chain's factor by the step program.
CHAIN_LINKS = {cls.kind: cls.step_kernel for cls in OPS.values() if cls.step_kernel in C_KERNELS}
CHAIN_LINKS.update(pad="pad", scale="scale", zero="zero")


def chain_kernel(g: Graph, ch: Chain, env: jinja2.Environment | None = None) -> dict[str, Any]:
    """The kernel of a synapse whose op chain is not one op (``Chain.kernel == "chain"``): e.g.
    ``avgpool2d |> flatten |> dense`` (a pool before a classifier layer), ``pad |> conv2d``,
    ``avgpool2d |> scale(tensor)``. Each non-view op ("link") gets the kernel of the op table it
    would have alone (its own shapes, the name ``<synapse>_op<i>``), and the chain's macro
    (kernels.c.j2, ``chain``) composes their fw_/fwv_/bw_/bwv_/gr_ through small thread-local float
    buffers, one between two links (the output of link k is the input of link k+1):

    * forward spikes go through the first link's event scatter (fw_), each later link scatters
      the nonzero values of the buffer before it (fwv_), the last one into the destination;
    * the backward stage is the transposed chain: the last link's ternary scatter (bw_), then the
      earlier links' transposes in reverse order (bwv_);
    * the gradient of the one learnable link L is gr_L(G, post', pre') with pre' = the links
      before L applied to the pre rates and post' = the transposes of the links after L applied
      to the couple's masked sums, as the sim program computes it (its ``grads``).

    The chain's factor (its scalar scales, the step program's ``Chain.factor``) is applied by the
    last link, every earlier one runs at 1; where the IR has the scale, in the middle of the chain,
    the float32 results differ by rounding only. At most one op may be learnable (one gradient
    per synapse: ``gr_``), any number may be frozen."""
    e = g.synapse(ch.name)
    ops = e.synapse.ops
    shapes = e.synapse.shapes(g.node(e.src).shape)
    tensor_of = {(sl.op, sl.field): name for name, sl in g.tensor_slots().items() if sl.owner == e.name}
    c = code_name(ch.name)
    links = [i for i in ch.ops if not ops[i].view]
    odd = [ops[i].kind for i in links if ops[i].kind not in CHAIN_LINKS]
    if odd:
        raise SpidecError(f"synapse '{ch.name}': the C backend does not support op {odd[0]} yet",
                          hint="use --target sim for this model")
    learn = [i for i in links if ops[i].learnable()]
    if len(learn) > 1:
        raise SpidecError(f"synapse '{ch.name}': the C backend trains one learnable op per synapse, this one has "
                          f"{len(learn)} ({', '.join(ops[i].kind for i in learn)})",
                          hint="freeze all but one (trainable false), split the synapse with a population, or "
                          "use --target sim")
    parts = []
    for i in links:
        op, kind = ops[i], CHAIN_LINKS[ops[i].kind]
        w = tensor_of.get((i, "weight")) or tensor_of.get((i, "factor"))
        link = replace(ch, name=f"{ch.name} op {i} ({op.kind})", kernel=kind, kernel_op=i, weight=w,
                       shape_in=tuple(shapes[i]), shape_out=tuple(shapes[i + 1]))
        entry = C_KERNELS[kind]
        p: dict[str, Any] = {"name": link.name, "c": f"{c}_op{i}", "n": link.n_in, "m": link.n_out,
                             "w": _cname(w) if w else None, "tensor": w, "kind": kind, "refresh": entry.refresh,
                             "transposed": entry.transposed, "lazy": False, "learn": i in learn}
        if entry.geometry is not None:
            p.update(entry.geometry(g, link, op))
        p["code"] = kernel_code(p, env)
        parts.append(p)
    kinds = " |> ".join(ops[i].kind for i in ch.ops)
    s: dict[str, Any] = {"name": ch.name, "c": c, "n": ch.n_in, "m": ch.n_out, "w": None, "kind": "chain",
                         "ops": kinds, "parts": parts, "refresh": any(p["refresh"] for p in parts),
                         "transposed": False, "lazy": False,
                         "tensors_T": [p["tensor"] for p in parts if p["transposed"]],
                         "learn": next((k for k, p in enumerate(parts) if p["learn"]), None)}
    s["code"] = kernel_code(s, env)
    return s


def kernel_code(s: dict[str, Any], env: jinja2.Environment | None = None) -> str:
    """The C code of one synapse's kernel from its description ``s`` (see :func:`kernel`)."""
    if s["kind"] == "chain":
        return str((env or _env()).get_template("kernels.c.j2").module.chain(s))
    entry = C_KERNELS[s["kind"]]
    env = env or _env()
    module = env.from_string(entry.source).module if entry.source else env.get_template("kernels.c.j2").module
    return str(getattr(module, entry.macro)(s))


def _unique_names(kernels: dict[str, dict[str, Any]]) -> None:
    """The C names of the synapses and of their chains' links are distinct (a synapse code-named
    like another one's link, ``<synapse>_op<i>``, would define its functions twice)."""
    seen: dict[str, str] = {}
    for s in kernels.values():
        for k in [s, *s.get("parts", ())]:
            if k["c"] in seen and seen[k["c"]] != k["name"]:
                raise SpidecError(f"synapse '{s['name']}': its C name {k['c']} is that of {seen[k['c']]} too",
                                  hint="rename one of the synapses")
            seen[k["c"]] = k["name"]


def _check(prog: Program, fixed: bool = False) -> None:
    """What the C runtime reads: one data input as a constant current, one cross-entropy readout fed
    by populations."""
    if prog.encoding != "constant":
        raise SpidecError("the c backend reads constant input currents only", hint="use --target sim for temporal "
                          "inputs")
    if len(prog.inputs) != 1:
        raise SpidecError(f"the c backend trains models with one data input, this one has {len(prog.inputs)}")
    if len(prog.readouts) != 1 or prog.readouts[0].loss != "cross_entropy":
        raise SpidecError("the c backend trains one cross-entropy readout (a classifier)")
    pops = {p.name for p in prog.populations}
    for f in prog.readouts[0].feeds:
        if f.src not in pops:
            raise SpidecError(f"readout synapse '{f.syn}' reads an input; the c backend's readout reads populations")


def _tensor_lines(values: list[str], per_line: int) -> str:
    return "    " + ",\n    ".join(", ".join(values[i: i + per_line]) for i in range(0, len(values), per_line))


def _lazy_tensors(prog: Program, kernels: dict[str, dict[str, Any]], reparam: dict, project: dict) -> set[str]:
    """The weights the float runtime steps lazily (model.c.j2, lz_step): learnable dense weights of
    one input synapse each, which only the forward stage's input currents read (no backward row
    reads; no norm restriction, which needs every element each step). A step then costs the
    columns of the nonzero inputs, not the whole matrix: at batch 1 most of an image is zero."""
    inputs = {i.name for i in prog.inputs}
    uses = Counter(ch.weight for ch in prog.chains if ch.weight)
    learnable = {r.tensor for r in prog.rules if isinstance(r, WeightRule)}
    return {ch.weight for ch in prog.chains
            if ch.weight and ch.src in inputs and kernels[ch.name]["kind"] == "dense" and uses[ch.weight] == 1
            and ch.weight in learnable and ch.weight not in reparam and ch.weight not in project}


def context(g: Graph) -> dict[str, Any]:
    """What model.c.j2 needs, read from the step program (``g.program``)."""
    from ... import __version__

    prog = require_program(g, "the c backend")
    _check(prog)
    chains = {ch.name: ch for ch in prog.chains}
    env = _env()
    kernels = {ch.name: kernel(g, ch, env) for ch in prog.chains}
    n = prog.size
    cvar = {p.name: code_name(p.name) for p in prog.populations}
    # forward spikes add W's columns: dense weights keep a transposed copy (conv kernels keep
    # permuted copies, see kernels.c.j2)
    transposed = {ch.weight for ch in prog.chains if kernels[ch.name]["transposed"]}
    transposed |= {t for s in kernels.values() for t in s.get("tensors_T", ())}  # (dense links of chains)
    _unique_names(kernels)
    reparam, project = prog.restricted("reparam"), prog.restricted("project")
    scale = {r.tensor: r.scale for r in prog.rules if isinstance(r, (WeightRule, BiasRule))}
    for s in kernels.values():  # the stages read a norm-restricted weight through its effective copy
        if s["w"] and any(_cname(t) == s["w"] for t in reparam):
            s.update(w=s["w"] + "_E")
            s["code"] = kernel_code(s, env)
        elif any(p["tensor"] in reparam for p in s.get("parts", ())):  # (a restricted weight in a chain)
            for p in s["parts"]:
                if p["tensor"] in reparam:
                    p.update(w=p["w"] + "_E")
                    p["code"] = kernel_code(p, env)
            s["code"] = kernel_code(s, env)
    lazy = _lazy_tensors(prog, kernels, reparam, project)
    lazy_c = {_cname(t) for t in lazy}
    for s in kernels.values():
        if s["w"] in lazy_c:
            s.update(lazy=True)
            s["code"] = kernel_code(s, env)
    tensors = []
    for name, slot in g.tensor_slots().items():
        arr = g.tensor(name).astype(np.float32)
        c = _cname(name)
        tensors.append({"name": name, "c": c, "size": int(arr.size), "learnable": slot.learnable,
                        "shape": list(arr.shape) if arr.ndim == 2 else [int(arr.size)],
                        "transposed": name in transposed, "lazy": name in lazy,
                        "e": c + "_E" if name in reparam else c, "reparam": reparam.get(name, 0.0),
                        "project": project.get(name, 0.0), "gscale": scale.get(name, 1.0),
                        "init": _tensor_lines(list(np.char.mod("%.9g", arr.ravel())), 8)})
    pops = []
    for p in prog.populations:
        c = prog.couple_of(p.name)
        feeds = [{"kind": f.kind, "syn": f.syn, "s": kernels[f.syn]["c"], "factor": chains[f.syn].factor,
                  "src_c": cvar.get(f.src), "drop": chains[f.syn].dropout > 0} for f in p.feeds]
        bias_drop = next((kernels[f.syn]["c"] for f in p.feeds if chains[f.syn].dropout_bias), None)
        pops.append({"name": p.name, "c": cvar[p.name], "n": p.size, "V": p.V, "vth": p.vth, "leak": p.leak,
                     "norm": p.norm, "bias": _cname(p.bias) if p.bias else None, "feeds": feeds,
                     # a per-channel bias of a [C, H, W] population: (C, H*W)
                     "bias_pc": (p.bias_channels, p.size // p.bias_channels) if p.bias_channels else None,
                     "delayed": p.keep_prev, "couple": c.name, "cvth": c.vth, "S": c.S, "cleak": c.leak,
                     "norm_b": c.norm, "bdelayed": c.keep_prev, "bias_drop": bias_drop})
    by = {p["name"]: p for p in pops}
    back = []
    for c in prog.couples:
        bfeeds = [{"syn": f.syn, "s": kernels[f.syn]["c"], "factor": chains[f.syn].factor, "src_c": cvar[f.gate],
                   "delayed": f.delayed, "drop": chains[f.syn].dropout > 0} for f in c.feeds]
        injections = [{"s": kernels[syn]["c"], "factor": chains[syn].factor} for syn in c.injections]
        back.append({**by[c.of], "bfeeds": bfeeds, "injections": injections})
    readout = prog.readouts[0]
    rfeeds = [{"s": kernels[f.syn]["c"], "factor": chains[f.syn].factor, "pre": f"a_{cvar[f.src]}"}
              for f in readout.feeds]
    updates = []
    for r in prog.rules:
        c = _cname(r.tensor)
        if isinstance(r, (WeightRule, ReadoutWeightRule)):
            ch = chains[r.syn]
            pre = "x_in" if r.pre not in cvar else f"a_{cvar[r.pre]}"
            local = isinstance(r, WeightRule)
            post = f"post_{cvar[ch.dst]}" if local else "dlogits"
            kind = "local" if local else "delta"
            updates.append({"tensor": r.tensor, "kind": kind, "c": c, "s": kernels[ch.name]["c"], "pre": pre,
                            "post": post, "factor": ch.factor,
                            "what": f"{kind} rule through {ch.name} ({ch.src} -> {ch.dst})"})
        else:
            local = isinstance(r, BiasRule)
            owner = r.gate if local else r.node  # type: ignore[union-attr]
            rows = n[owner]
            channels = r.channels if local else 0  # type: ignore[union-attr]
            per = (channels, rows // channels) if channels else None
            updates.append({"tensor": r.tensor, "kind": "bias" if local else "delta_bias", "c": c, "rows": rows,
                            "post": f"post_{cvar[owner]}" if local else "dlogits", "per_channel": per,
                            "what": ("bias" if local else "delta_bias") + " rule"
                            + (" (one value per channel)" if per else "")})
    return {
        "version": __version__, "model": prog.model, "hash": prog.build_hash,
        "T": prog.T, "T_back": prog.T_back, "sf": prog.sf, "opt": prog.optimizer,
        "n_inputs": prog.inputs[0].size, "n_classes": readout.size, "input_shape": list(prog.inputs[0].shape),
        "tensors": tensors, "pops": pops, "lazy": bool(lazy),
        "back": back, "updates": updates, "synapses": list(kernels.values()),
        "readout": {"name": readout.name, "bias": _cname(readout.bias) if readout.bias else None, "feeds": rfeeds},
        "buffers": _declared(prog),
        "dropout": [{"name": ch.name, "s": kernels[ch.name]["c"], "id": k, "p": ch.dropout, "n": n[ch.dst],
                     "threshold": thr, "scale": scale,
                     "back": any(f.syn == ch.name for cp in prog.couples for f in cp.feeds)}
                    for k, ch, thr, scale in dropout_sites(prog.chains)],
    }


CTYPES = {"f32": "float", "f64": "double", "i64": "int64_t", "u64": "uint64_t", "i32": "int32_t", "i16": "int16_t",
          "i8": "int8_t", "u8": "unsigned char", "idx": "int"}


def _declared(prog: Program) -> list[dict[str, Any]]:
    """The buffer plan as C declarations, grouped by the node they belong to."""
    out = []
    for b in prog.buffers:
        if b.part == "weights" or b.name in ("nzi", "lr_now"):
            continue  # declared by the template: weights with their initial values, nzi in forward(),
            # lr_now with the model's learning rate
        out.append({"name": b.name, "ctype": CTYPES[b.dtype], "size": b.size, "scalar": b.scalar,
                    "what": b.what, "of": b.of, "stage": b.stage})
    return out


def _lif(qp: Any, prog: Program) -> dict[str, Any]:
    """A population's leak constants for fixed.c.j2 (spidec.fixed: Q15 leaks, weighted counts at
    2^cnt_frac and ternary sums at 2^sb_frac); IF (no leak) gives lq = clq = 0."""
    from ... import fixed as fx

    return {"lq": qp.leak_q15, "one": 2**qp.cnt_frac, "norm": fx.norm_of(qp, prog.T),
            "clq": qp.cleak_q15, "oneb": 2**qp.sb_frac, "normb": fx.norm_b_of(qp, prog.T_back)}


def fixed_context(g: Graph) -> dict[str, Any]:
    """What fixed.c.j2 needs: context(g) plus the quantize pass's scales (spidec.fixed)."""
    from ... import fixed as fx

    q = fx.quantization_of(g)
    prog = fx._structure(g)
    ctx = context(g)
    weights = fx.integer_weights(g)  # exactly as the numpy model holds them
    chains = {ch.name: ch for ch in prog.chains}
    for p in prog.populations:
        if p.size >= 32768:
            raise SpidecError(f"population '{p.name}': fixed point indexes neurons with int16, {p.size} is too many")
    qt_all = {t.name: t for t in q.qtensors}
    tensors = []
    for t in ctx["tensors"]:
        w = weights[t["name"]].ravel()
        qt = q.tensors.get(t["name"])
        tensors.append({**t, "init": _tensor_lines([str(int(v)) for v in w], 16), "frac": qt_all[t["name"]].frac,
                        "unit": qt.unit if qt else 0.0, "lr_shift": qt.lr_shift if qt else 0,
                        "lr_c": qt.lr_c.hex() if qt else "0.0",
                        "wdl_c": (qt.wdl_c * q.wd_period).hex() if qt else "0.0",
                        "wd_mult": qt.wd_mult if qt else 0, "wd_shift": qt.wd_shift if qt else 0,
                        "salt": qt.salt if qt else 0, "salt_wd": (qt.salt ^ 0x5BD1E995) if qt else 0,
                        "feedback": bool(qt and qt.feedback),
                        "reparam": bool(qt and qt.feedback) and prog.optimizer.feedback_norm_mode == "reparam",
                        "project": bool(qt and qt.feedback) and prog.optimizer.feedback_norm_mode == "project",
                        "R": fx.feedback_bound(prog, t["name"], qt_all[t["name"]].frac) if qt and qt.feedback
                        else 0})
    cname = {p.name: code_name(p.name) for p in prog.populations}
    n_of = prog.size
    reparam = {t["name"] for t in tensors if t["reparam"]}

    def _k(name: str) -> str | None:  # a reparametrised weight's Q16 factor: the stages scale it as they read
        return "k_" + _cname(name) if name in reparam else None

    def _plain(feeds: list[dict], where: str) -> list[dict]:
        for f in feeds:
            if f["w"] in {_cname(t) for t in reparam}:
                raise SpidecError(f"fixed point: the norm-restricted weight {f['w']} feeds {where}, where only "
                                  "population-to-population synapses can be restricted")
        return feeds
    S = {c.of: c.S for c in prog.couples}
    steps = {p.name: p for p in prog.populations}
    qpop = {qp.name: qp for qp in q.populations}
    # average pooling: its integer coefficients P[o] (spidec.fixed.pool_weights) as a const table per
    # synapse, in flash on a board; the stages walk the windows as the float kernel's tables do. A tensor
    # gain (avgpool2d |> scale) has one coefficient per output, channel included ("full": P[c * ho * wo + o])
    pools = {}
    for ch in prog.chains:
        if ch.kernel == "pool":
            P = fx.pool_weights(g, ch, q.pop_frac[ch.dst])
            geo = fx.pool_geometry(g, ch)
            full = P.size != geo["ho"] * geo["wo"]
            pools[ch.name] = {**geo, "c": code_name(ch.name), "name": ch.name, "P": ", ".join(str(int(v)) for v in P),
                              "full": full, "nP": P.size, "po": f"c * {geo['ho'] * geo['wo']} + o" if full else "o",
                              "pj": "j" if full else "o"}
    # conv / convT: the int16 kernel (learnable, or frozen) walked tap by tap (spidec.fixed: "Convolutions")
    convs = {ch.name: {**fx.conv_geometry(g, ch), "kind": ch.kernel, "c": code_name(ch.name), "name": ch.name,
                       "w": _cname(ch.weight), "k": _k(ch.weight)}
             for ch in prog.chains if ch.kernel in ("conv", "convt")}
    # avgpool2d |> dense / conv2d (spidec.fixed: "Op chains"): the pool's coefficients P at their own 2^F_P as
    # a const table, the learnable W (dense [n_out, n_pool] or a conv kernel) at the destination's scale;
    # the stages compute each entry round_shift(W'[j, o] P[o], F_P) as they walk (no dense M in RAM)
    pchains = {}
    for ch in prog.chains:
        if ch.kernel in fx.POOLED:
            pc, lp = fx.pool_part(g, ch), fx.learn_part(g, ch)
            fp = fx.pool_frac(g, ch)
            P = fx.pool_weights(g, pc, fp)
            geo = fx.pool_geometry(g, pc)
            full = P.size != geo["ho"] * geo["wo"]
            pchains[ch.name] = {
                "pool": {**geo, "c": code_name(ch.name), "name": ch.name, "P": ", ".join(str(int(v)) for v in P),
                         "full": full, "nP": P.size, "po": f"c * {geo['ho'] * geo['wo']} + o" if full else "o"},
                "fp": fp, "half": 1 << (fp - 1) if fp else 0, "dense": ch.kernel == "pool_dense",
                "n_pool": pc.n_out, "n_out": ch.n_out, "w": _cname(ch.weight), "name": ch.name,
                "cv": None if ch.kernel == "pool_dense" else {**fx.conv_geometry(g, lp), "kind": "conv"}}
    pops = []
    for p in ctx["pops"]:
        name = p["name"]
        step, couple = steps[name], prog.couple_of(name)
        ifeeds = _plain([{"w": _cname(chains[f.syn].weight), "n": ctx["n_inputs"]}
                         for f in step.feeds if f.kind == "input" and f.syn not in pools and f.syn not in convs],
                        "a population from the input")
        # conv / pool from the input: each output gathers its taps / window of x_q (int64, see fixed.c.j2)
        icfeeds = [{"conv": convs.get(f.syn), "pool": pools.get(f.syn), "syn": f.syn,
                    "macs": int((fx.conv_taps(g, chains[f.syn]) >= 0).sum()) if f.syn in convs else step.size}
                   for f in step.feeds if f.kind == "input" and (f.syn in pools or f.syn in convs)]
        pfeeds = [{"w": _cname(chains[f.syn].weight), "k": _k(chains[f.syn].weight), "n": n_of[f.src],
                   "src_c": cname[f.src], "syn": f.syn, "delayed": f.kind == "delayed", "pool": pools.get(f.syn),
                   "conv": convs.get(f.syn), "pc": pchains.get(f.syn)}
                  if f.syn not in pools else {"pool": pools[f.syn], "src_c": cname[f.src], "syn": f.syn,
                                              "delayed": f.kind == "delayed", "pc": None}
                  for f in step.feeds if f.kind != "input"]
        pops.append({**p, "frac": q.pop_frac[name], "bp": q.couple_frac[name], "th": fx.threshold(step, q),
                     "cth": fx.couple_threshold(couple, q), "kmax": q.k_max[name], "gmax": q.g_max[name],
                     "si": 2 ** (q.couple_frac[name] + round(math.log2(couple.S))),
                     "ifeeds": ifeeds, "icfeeds": icfeeds, "pfeeds": pfeeds, **_lif(qpop[name], prog)})
    by = {p["name"]: p for p in pops}
    back = []
    for c in prog.couples:
        p = by[c.of]
        bfeeds = [{"w": _cname(chains[f.syn].weight) if f.syn not in pools else None,
                   "k": _k(chains[f.syn].weight) if f.syn not in pools else None, "syn": f.syn,
                   "src_c": cname[f.gate], "delayed": f.delayed, "pool": pools.get(f.syn), "conv": convs.get(f.syn),
                   "pc": pchains.get(f.syn),
                   "shift": p["bp"] - q.pop_frac[f.gate] + round(math.log2(S[f.gate]))} for f in c.feeds]
        injections = _plain([{"w": _cname(chains[syn].weight), "pc": pchains.get(syn)} for syn in c.injections],
                            "a readout")
        fpi = max([pchains[syn]["fp"] for syn in c.injections if syn in pchains] + [0])  # (fx.injection_frac)
        back.append({**p, "bfeeds": bfeeds, "injections": injections, "fpi": fpi,
                     "ishift": q.readout_frac + fx.Q + fpi - p["bp"]})
    ro = prog.readouts[0]
    rfeeds = _plain([{"w": _cname(chains[f.syn].weight), "n": n_of[f.src], "src_c": cname[f.src], "syn": f.syn,
                      "pc": pchains.get(f.syn)}
                     for f in ro.feeds], "a readout")
    updates = []
    for r in prog.rules:
        c = _cname(r.tensor)
        if isinstance(r, WeightRule) and r.syn in pchains:  # the adjoint on the pooled counts pre' (at 2^F_P)
            pcx = pchains[r.syn]
            upd = {"tensor": r.tensor, "c": c, "pc": pcx, "src": f"cnt_{cname[r.pre]}", "pre": f"pp_{pcx['pool']['c']}",
                   "m": f"m_{cname[r.gate]}", "sb": f"sb_{cname[r.gate]}"}
            if pcx["dense"]:
                updates.append({**upd, "kind": "pool_local", "rows": n_of[r.gate], "cols": pcx["n_pool"],
                                "post": f"m_{cname[r.gate]}[k] ? sb_{cname[r.gate]}[k] : 0"})
            else:
                updates.append({**upd, "kind": "pool_local", "cv": pcx["cv"]})
        elif isinstance(r, WeightRule) and r.syn in convs:  # a kernel: each tap's correlation sum
            updates.append({"tensor": r.tensor, "kind": "conv_local", "c": c, "cv": convs[r.syn],
                            "pre": f"cnt_{cname[r.pre]}" if r.pre in cname else "xq", "m": f"m_{cname[r.gate]}",
                            "sb": f"sb_{cname[r.gate]}"})
        elif isinstance(r, WeightRule):
            pre = f"cnt_{cname[r.pre]}" if r.pre in cname else "xq"
            updates.append({"tensor": r.tensor, "kind": "local", "c": c, "rows": n_of[r.gate],
                            "cols": n_of.get(r.pre, ctx["n_inputs"]), "pre": pre,
                            "post": f"m_{cname[r.gate]}[k] ? sb_{cname[r.gate]}[k] : 0"})
        elif isinstance(r, ReadoutWeightRule) and r.syn in pchains:  # dls (x) pre' (at 2^F_P)
            pcx = pchains[r.syn]
            updates.append({"tensor": r.tensor, "c": c, "pc": pcx, "src": f"cnt_{cname[r.pre]}",
                            "pre": f"pp_{pcx['pool']['c']}", "kind": "pool_local", "rows": ctx["n_classes"],
                            "cols": pcx["n_pool"], "post": "dls[k]"})
        elif isinstance(r, ReadoutWeightRule):
            updates.append({"tensor": r.tensor, "kind": "delta", "c": c, "rows": ctx["n_classes"],
                            "cols": n_of[r.pre], "pre": f"cnt_{cname[r.pre]}", "post": "dls[k]"})
        elif isinstance(r, BiasRule):
            gc = cname[r.gate]
            updates.append({"tensor": r.tensor, "kind": "bias_pc" if r.channels else "bias", "c": c,
                            "rows": r.channels or n_of[r.gate], "hw": n_of[r.gate] // r.channels if r.channels else 1,
                            "post": f"m_{gc}[k] ? sb_{gc}[k] : 0"})
        else:
            updates.append({"tensor": r.tensor, "kind": "delta_bias", "c": c, "rows": ctx["n_classes"],
                            "post": "dls[k]"})
    return {**ctx, "q": q, "tensors": tensors, "tmap": {t["name"]: t for t in tensors}, "pops": pops, "back": back,
            "readout": {"bias": _cname(ro.bias) if ro.bias else None, "feeds": rfeeds,
                        "norm": "T_STEPS" if all(not qpop[f.src].leak_q15 for f in ro.feeds)
                        else str(fx.readout_norm(prog, q.populations))},
            "updates": updates, "pools": list(pools.values()), "pchains": list(pchains.values()),
            "w_max": fx.W_MAX, "log2e": fx.LOG2E_Q16,
            "exp2": ", ".join(str(v) for v in fx.EXP2_TABLE), "sf_q16": (float(ctx["sf"]) * 2.0**fx.Q).hex(),
            "plan": prog.buffers}


def _env() -> jinja2.Environment:
    return environment(TEMPLATES, f=_c_float)


MAKEFILE = """# Generated by spidec from model '{name}' (training graph {hash}):
# builds the host trainer and the shared library.
#   make              train (train/eval/predict/info) and lib{name}.so
#   make sanitize     train-san, under AddressSanitizer and UndefinedBehaviorSanitizer
#   make THREADS=-DSPIDE_NO_THREADS   a single-threaded runtime (no pthreads; --threads is then 1)
CC ?= cc
ARCH ?= -march=native
CFLAGS ?= -std=c11 -O3 $(ARCH) -ffp-contract=off -Wall -Wextra -Werror
THREADS ?= -pthread
# the shared library reaches its thread-local state through TLS descriptors where the compiler has
# them (x86-64 gcc: -mtls-dialect=gnu2): the default, a call to __tls_get_addr at every access,
# costs a third of the speed; the executable's thread-local state needs no call
TLS_SO ?= $(shell $(CC) -mtls-dialect=gnu2 -fPIC -x c -c -o /dev/null /dev/null 2>/dev/null && echo -mtls-dialect=gnu2)
SRC = model.c weights.c runtime/src/spide_io.c runtime/src/spide_train.c
INC = -Iruntime/include

all: train lib{name}.so

train: $(SRC) runtime/src/spide_main.c runtime/include/spide.h
\t$(CC) $(CFLAGS) $(THREADS) $(INC) -o $@ $(SRC) runtime/src/spide_main.c -lm

lib{name}.so: $(SRC) runtime/include/spide.h
\t$(CC) $(CFLAGS) $(THREADS) $(TLS_SO) $(INC) -fPIC -shared -o $@ $(SRC) -lm

sanitize: train-san

train-san: $(SRC) runtime/src/spide_main.c runtime/include/spide.h
\t$(CC) -std=c11 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all \\
\t\t-ffp-contract=off -Wall -Wextra -Werror $(THREADS) $(INC) -o $@ $(SRC) runtime/src/spide_main.c -lm

clean:
\trm -f train train-san lib{name}.so

.PHONY: all sanitize clean
"""


def emit(g: Graph, out: str | Path, board: str | None = None) -> CArtifact:
    """Write the C sources for training graph ``g`` into ``out`` (fixed point when the quantize
    pass ran: ``g.quant``); ``board`` (one of ``BOARDS``) adds the startup code, linker script and
    Makefile targets of that Cortex-M board (fixed point only)."""
    g = lowered(g, "the c backend")
    if board is not None:
        if board not in BOARDS:
            raise SpidecError(f"unknown board '{board}'; the boards are: {', '.join(BOARDS)}")
        if g.quant is None:
            raise SpidecError("a board build is fixed point: run the quantize pass first (spidec compile --board "
                              "does) ")
    fixed = g.quant is not None
    ctx = fixed_context(g) if fixed else context(g)
    out = Path(out)
    template = "fixed.c.j2" if fixed else "model.c.j2"
    env = _env()
    model_c = env.get_template(template).render(**ctx, fixed=fixed)
    weights_c = env.get_template("weights.c.j2").render(**ctx, fixed=fixed)
    check_static_size(g.program, model_c, weights_c)  # (before a file is written)
    with BuildFiles(out) as files:  # all or nothing (a full disk leaves no truncated model.c), no symlink followed
        files.write_text("model.c", model_c)
        files.write_text("weights.c", weights_c)
        rt = _runtime_dir()
        for sub in ("include", "src"):
            for f in sorted((rt / sub).iterdir()):
                if f.suffix in (".c", ".h"):
                    files.copy(f, f"runtime/{sub}/{f.name}")
        makefile = MAKEFILE.format(name=_lib_name(g), hash=ctx["hash"])
        if board is not None:
            for f in sorted((rt / "board").iterdir()):
                if f.suffix in (".c", ".h", ".ld"):
                    files.copy(f, f"runtime/board/{f.name}")
            makefile += BOARD_MAKEFILE.format(board=board, n_inputs=ctx["n_inputs"], **BOARDS[board])
            from .board import memory_plan

            files.write_text("board.json", json.dumps({"board": board, **BOARDS[board], "model": g.name,
                                                       "hash": ctx["hash"], "n_inputs": ctx["n_inputs"],
                                                       "update": g.quant.update, "plan": memory_plan(g.program)},
                                                      indent=1))
        files.write_text("Makefile", makefile)
        text, _ = dumps(g, inline_max=0)
        files.write_text("model.spir", text)
        if fixed:  # the scales the quantize pass chose (model.spir holds them too, as lower statements)
            files.write_text("quantization.json", json.dumps(g.quant.as_json(), indent=1))
    write_manifest(out, "c", g.program, **({"board": board} if board else {}))
    return CArtifact(out, g, board)


def _lib_name(g: Graph) -> str:
    return short_name(code_name(g.name), 64)  # (lib{name}.so stays a short file name)


# The static arrays of the generated program (file-scope declarations, state and weights): x86-64's
# default code model addresses its static data and its thread-local block with 32-bit offsets, so
# each must stay under 2 GiB or the link fails ("relocation truncated to fit"); spike lists index
# with int. 16 MiB are left for the runtime's own statics and the code.
STATIC_LIMIT = 2**31 - 2**24
_ELEM_BYTES = {"float": 4, "double": 8, "int": 4, "long": 8, "short": 2, "char": 1, "unsigned char": 1,
               "signed char": 1, "size_t": 8, "int8_t": 1, "uint8_t": 1, "int16_t": 2, "uint16_t": 2,
               "int32_t": 4, "uint32_t": 4, "int64_t": 8, "uint64_t": 8}
_DECL = re.compile(r"^(?:static\s+)?(?P<tls>SPIDE_LOCAL\s+)?(?:const\s+)?"
                   r"(?P<type>unsigned char|signed char|[A-Za-z_][A-Za-z0-9_]*)\s+(?P<decl>[^;={(]*)", re.M)
_ARRAY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\[(\d+)\]")


def static_bytes(*sources: str) -> tuple[int, int]:
    """Bytes of the file-scope arrays the C ``sources`` define: (thread-local, other static)."""
    tls = other = 0
    for src in sources:
        for m in _DECL.finditer(src):
            size = _ELEM_BYTES.get(m["type"])
            if size is None:
                continue
            n = size * sum(int(k) for _, k in _ARRAY.findall(m["decl"]))
            if m["tls"]:
                tls += n
            else:
                other += n
    return tls, other


def check_static_size(prog: Program, *sources: str) -> None:
    """Refuse a model whose C program could not be linked: its static arrays past 2 GiB."""
    tls, other = static_bytes(*sources)
    if max(tls, other) <= STATIC_LIMIT:
        return
    big = max(prog.populations, key=lambda p: p.size, default=None)
    which = f"; the largest population is '{big.name}' with {big.size:,} neurons" if big is not None else ""
    what = "per-thread state" if tls >= other else "weights and shared state"
    raise SpidecError(f"the C program's static arrays ({what}) would take {max(tls, other) / 2**30:.1f} GiB, more "
                      f"than the 2 GiB a C program's static data can address{which}",
                      node=big.name if big is not None else None,
                      hint="use --target sim, or make the model smaller")


@dataclass
class CArtifact(Artifact):
    """The C sources ``emit`` wrote. ``build()`` runs make and returns the ctypes handle
    (:class:`CRuntime`); the :class:`~spidec.artifact.Artifact` methods run on that handle, built
    once (the host build: a board image trains with ``spidec train``)."""

    out: Path
    graph: Graph
    board: str | None = None
    target = "c"
    _rt: Any = None

    def build(self, *, sanitize: bool = False, quiet: bool = True) -> CRuntime:
        """Run ``make`` (gcc/cc); return a ctypes handle on the shared library. ``sanitize`` also
        builds ``train-san`` (AddressSanitizer and UndefinedBehaviorSanitizer)."""
        target = ["all", "sanitize"] if sanitize else ["all"]
        done = subprocess.run(["make", "-C", str(self.out), *target], capture_output=True, text=True)
        if done.returncode != 0:
            raise SpidecError("building the C program failed:", detail=done.stdout[-2000:] + done.stderr[-4000:])
        if not quiet:
            print(done.stdout)
        self._rt = CRuntime(self.out / f"lib{_lib_name(self.graph)}.so")
        return self._rt

    def memory_report(self, quiet: bool = False) -> dict[str, Any]:
        """``spidec compile --report``: the fixed-point build's RAM and flash by part from the buffer
        plan, checked against the board image when there is one, and against the board's RAM and
        flash (``fits``); written to memory.json."""
        from . import board as brd

        plan = brd.memory_plan(self.graph.program)
        check = None
        if self.board is not None and not brd.missing_tools():
            check = brd.check_plan(plan, brd.build(self.out))
        report = {"plan": plan, "check": check}
        if self.board is not None:
            report["fits"] = brd.fits(self.board, *brd.report_totals(plan, check))
        write_text(self.out / "memory.json", json.dumps(report, indent=1, default=str))
        if not quiet:
            print(brd.format_report(plan, check, board=self.board))
            if self.board is None:
                print("(plan only: add --board to build the image and check it)")
            elif check is None:
                print(f"(plan only: {brd.INSTALL_HINT})")
        return report

    def runtime(self) -> CRuntime:
        return self._rt if self._rt is not None else self.build()

    def train(self, x: Any, y: Any, *, epochs: int = 1, batch: int = 64, lr: float | None = None,
              seed: int = 0, **opts: Any) -> list[dict]:
        history = self.runtime().train(x, y, epochs=epochs, batch=batch, lr=lr, seed=seed, **opts)
        return [{"epoch": h["epoch"], "train_loss": h["loss"], "train_accuracy": h["train_accuracy"]}
                for h in history]

    def evaluate(self, x: Any, y: Any) -> dict:
        return self.runtime().evaluate(x, y)

    def rates(self, x: Any) -> dict[str, np.ndarray]:
        flat = self.runtime().rates(x)
        out, k = {}, 0
        for name, shape in self._populations():  # the runtime concatenates them in forward order
            n = math.prod(shape)
            out[name] = flat[:, k: k + n].reshape(len(flat), *shape)
            k += n
        return out

    def get_weights(self) -> dict[str, np.ndarray]:
        shapes = self._shapes()
        return {n: w.reshape(shapes[n]) for n, w in self.runtime().get_weights().items()}

    def set_weights(self, values: dict[str, Any]) -> None:
        self.runtime().set_weights(values)

    @property
    def executable(self) -> Path:
        return self.out / "train"

    def next_steps(self) -> str:
        if self.board is not None:
            return f"train it on the board under QEMU: spidec train {self.out} --epochs 1"
        return f"build and train it: spidec train {self.out} --data digits --epochs 1  (or make -C {self.out})"


# the c backend builds fixed point and boards (spidec.compile(..., fixed=True, board=...))
FIXED_POINT = True

# what `spidec train` takes for a c build besides the common options (spidec.runs)
TRAIN_OPTIONS = ("checkpoint", "resume", "qemu", "host", "out", "timeout", "lr_schedule", "warmup", "augment",
                 "normalize", "data_dir", "threads", "limit_train", "limit_test")


def _data_files(out: Path, data: str, data_dir: str | None = None, limit_train: int | None = None,
                limit_test: int | None = None) -> tuple[Path, Path]:
    from ... import data as data_mod

    ddir = out / "data"
    name = data_mod.data_name(data)
    train, test = ddir / f"{name}.train.spds", ddir / f"{name}.test.spds"
    if data.endswith(".npz") or not (train.exists() and test.exists()):  # a file may have changed
        data_mod.pack(data, ddir, data_dir)
    return _first(train, limit_train), _first(test, limit_test)


def _first(path: Path, limit: int | None) -> Path:
    """--limit-train/--limit-test: the first ``limit`` samples of data file ``path`` (those a sim
    build's limits take) in a file beside it; ``path`` itself when it holds no more."""
    if not limit:
        return path
    from ... import data as data_mod

    x, y, classes = data_mod.read_spds(path)
    if limit >= len(y):
        return path
    return data_mod.write_spds(path.with_name(path.name.replace(".spds", f".first{limit}.spds")), x[:limit],
                               y[:limit], classes)


def train_build(out: Path, opts: Any, say: Any) -> dict[str, Any]:
    """``spidec train`` of a c build: the board image under QEMU (board builds, unless ``host``),
    else the host executable; the epoch lines as on every target."""
    from ...runs import epoch_line, read_manifest
    from . import board as brd

    board = read_manifest(out).get("board")
    if opts.qemu and opts.host:
        raise SpidecError("--qemu and --host exclude each other")
    if opts.qemu and board is None:
        raise SpidecError(f"{str(out)!r} is no board build", hint="compile with --board mps2-an386")
    train, test = _data_files(out, opts.data, opts.data_dir, opts.limit_train, opts.limit_test)
    if board is not None and not opts.host:
        if opts.lr_schedule:  # the board program takes linear:K only (runtime/board/spide_board.c)
            from ...schedule import parse_schedule

            if parse_schedule(opts.lr_schedule)[0] != "linear":
                raise SpidecError(f"--lr-schedule {opts.lr_schedule}: a board program runs its compiled schedule "
                                  "or linear:K", hint="add --host for the others")
        for o in ("augment", "normalize"):
            if getattr(opts, o):
                raise SpidecError(f"--{o.replace('_', '-')} is for the host trainer; the board program runs the "
                                  "compiled schedule on the data as packed", hint="add --host")
        if opts.warmup:
            raise SpidecError("--warmup is for the host trainer", hint="add --host")
        if opts.threads is not None:
            raise SpidecError("--threads is for the host trainer (a board runs one thread)", hint="add --host")
        return _train_board(out, opts, say, train, test)
    for o in ("out", "timeout"):
        if getattr(opts, o) is not None:
            raise SpidecError(f"--{o} is for board builds under QEMU")
    done = subprocess.run(["make", "-C", str(out), "train"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SpidecError("building the host program failed:", detail=done.stderr[-3000:])
    cmd = [str(out / "train"), "train", "--train", str(train), "--test", str(test), *_trainer_args(opts)]
    if opts.checkpoint:
        cmd += ["--checkpoint", opts.checkpoint]
    if opts.resume:
        cmd.append("--resume")
    if opts.threads is not None:
        cmd += ["--threads", str(opts.threads)]
    if opts.quiet or opts.json or not sys.stderr.isatty():
        cmd.append("--quiet")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    epochs = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("epoch "):
            entry = _epoch_entry(brd.parse_line(line))
            epochs.append(entry)
            say(epoch_line(entry))
    if proc.wait() != 0:
        why = " (training diverged: see its message above)" if proc.returncode == 3 else ""
        raise SpidecError(f"the host trainer of {out} exited with {proc.returncode}{why}")
    return {"epochs": epochs}


def _trainer_args(opts: Any) -> list[str]:
    """The options the host trainer and the board program share. The batch size is passed only when
    given: each program's own default applies (the host executable's 64, for which the compiled
    sf is meant; a board's 1), the same as running the program by hand."""
    args = ["--epochs", str(opts.epochs if opts.epochs is not None else 1), "--seed", str(opts.seed)]
    if opts.batch is not None:
        args += ["--batch", str(opts.batch)]
    from ...schedule import canonical_schedule

    schedule = getattr(opts, "lr_schedule", None)
    schedule = canonical_schedule(schedule) if schedule else None  # (the programs parse the plain spelling only)
    for flag, v in (("--lr-schedule", schedule), ("--warmup", getattr(opts, "warmup", 0)),
                    ("--augment", getattr(opts, "augment", "")), ("--normalize", _normalize_text(opts))):
        if v:
            args += [flag, str(v)]
    return args + (["--lr", repr(opts.lr)] if opts.lr is not None else [])


def _normalize_text(opts: Any) -> str | None:
    """--normalize as the C trainer reads it (MEAN,..;STD,..; presets resolved here)."""
    spec = getattr(opts, "normalize", None)
    if not spec:
        return None
    from ...augment import format_normalize, parse_normalize

    return format_normalize(parse_normalize(spec))


def _epoch_entry(f: dict[str, Any]) -> dict[str, Any]:
    """An epoch line of the host trainer or the board program (board.parse_line) as an entry of
    spidec train's history: the common keys, and what else the line measured."""
    entry = {"epoch": f["epoch"], "lr": f.get("lr"), "train_loss": f.get("loss"),
             "train_accuracy": f.get("train_accuracy"), "test_accuracy": f.get("test_accuracy")}
    return {**entry, **{k: v for k, v in f.items() if k not in (*entry, "loss")}}


def _train_board(out: Path, opts: Any, say: Any, train: Path, test: Path) -> dict[str, Any]:
    from ...runs import epoch_line
    from . import board as brd

    if opts.checkpoint or opts.resume:
        raise SpidecError("a board build keeps no checkpoint (use --out to write the trained weights)")
    argv = ["train", str(train.relative_to(out)), str(test.relative_to(out)), *_trainer_args(opts)]
    if opts.out:
        argv += ["--out", opts.out]

    def echo(line: str) -> None:
        if line.startswith("epoch "):
            f = brd.parse_line(line)
            if f.get("epoch", 0) >= 1:
                say(epoch_line(_epoch_entry(f)))
            else:
                say(f"before training: test acc {f.get('test_accuracy', float('nan')):.4f}  "
                    f"{f.get('instructions_per_inference', 0):,.0f} instructions/inference")

    result = brd.run_qemu(out, argv, timeout=opts.timeout, echo=echo,
                          progress=not (opts.quiet or opts.json) and sys.stderr.isatty())
    wanted = opts.epochs if opts.epochs is not None else 1
    ran = [e["epoch"] for e in result["epochs"] if e.get("epoch", 0) >= 1]
    if len(ran) != wanted:  # (a board program that stopped early yet exited 0: no result to keep)
        raise SpidecError(f"the board program stopped after {len(ran)} of {wanted} epochs")
    info = brd.board_info(out)
    check = brd.check_plan(info["plan"], out / f"spide-{info['board']}.elf")
    result["memory"] = {"check": check, "stack_used": result.get("stack_used"), "heap_used": result.get("heap_used")}
    measured = {k: result[k] for k in ("stack_used", "heap_used") if k in result}
    result["memory"]["fits"] = brd.fits(info["board"], *brd.report_totals(info["plan"], check, measured))
    write_text(out / f"run-{info['board']}.json", json.dumps(result, indent=1, default=str))
    say(brd.format_report(info["plan"], check, measured, board=info["board"]))
    epochs = [_epoch_entry(e) for e in result["epochs"] if e["epoch"] >= 1]
    return {**{k: v for k, v in result.items() if k != "epochs"}, "epochs": epochs}


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The sample order of epoch ``epoch`` (0, 1, ...) for ``--seed seed`` on every C trainer, the
    host executable and a board alike (spide_order_index in spide_train.c, which a board computes
    position by position): a 4-round Feistel permutation of the smallest even number of bits
    holding ``n``, keyed by splitmix64 of (seed, epoch), cycle-walked into [0, n)."""
    from ...masks import mix64

    if n <= 1:
        return np.zeros(n, np.int32)
    bits = 2
    while bits < 32 and (1 << bits) < n:
        bits += 2
    h = np.uint64(bits // 2)
    mask = np.uint64((1 << (bits // 2)) - 1)
    key = mix64(mix64(np.uint64(seed & (2**64 - 1))) ^ np.uint64((epoch << 32 | 0x5EED) & (2**64 - 1)))
    x = np.arange(n, dtype=np.uint64)
    todo = np.ones(n, bool)
    while todo.any():  # cycle-walking: positions whose image falls past n go round again
        hi, lo = x[todo] >> h, x[todo] & mask
        for rnd in range(4):
            f = mix64(key ^ np.uint64(rnd << 40) ^ lo) & mask
            hi, lo = lo, hi ^ f
        x[todo] = hi << h | lo
        todo = x >= np.uint64(n)
    return x.astype(np.int32)


def read_weights_dump(path: str | Path) -> tuple[str, dict[int, np.ndarray]]:
    """A board's weight dump (``--out W.bin``): the model hash and every tensor's raw values, by index."""
    raw = Path(path).read_bytes()
    if len(raw) < 28 or raw[:4] != b"SPQW":
        raise SpidecError(f"{path}: not a spidec weight dump")
    hash_ = raw[4:20].decode("ascii", "replace")
    version, count = np.frombuffer(raw[20:28], "<u4")
    if version != 1:
        raise SpidecError(f"{path}: weight dump version {version}, this spidec reads 1")
    off, out = 28, {}
    for i in range(int(count)):
        if off + 8 > len(raw):
            raise SpidecError(f"{path}: truncated")
        size, nbytes = (int(v) for v in np.frombuffer(raw[off: off + 8], "<u4"))
        off += 8
        dtype = {2: "<i2", 4: "<f4"}.get(nbytes)
        if dtype is None or off + size * nbytes > len(raw):
            raise SpidecError(f"{path}: bad tensor record {i}")
        out[i] = np.frombuffer(raw[off: off + size * nbytes], dtype).copy()
        off += size * nbytes
    return hash_, out


class _Info(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("hash", ctypes.c_char_p), ("n_inputs", ctypes.c_int),
                ("n_classes", ctypes.c_int), ("n_tensors", ctypes.c_int), ("T", ctypes.c_int),
                ("T_back", ctypes.c_int), ("lr", ctypes.c_float), ("sf", ctypes.c_float),
                ("fixed", ctypes.c_int)]


class TrainOpts(ctypes.Structure):
    """spide_train_opts_t (runtime/include/spide.h)."""

    _fields_ = [("lr", ctypes.c_float), ("schedule", ctypes.c_int), ("milestones", ctypes.POINTER(ctypes.c_int)),
                ("n_milestones", ctypes.c_int), ("gamma", ctypes.c_float), ("epoch", ctypes.c_int),
                ("epochs", ctypes.c_int), ("iteration", ctypes.c_long), ("warmup", ctypes.c_int),
                ("seed", ctypes.c_uint64), ("crop", ctypes.c_int), ("flip", ctypes.c_int),
                ("mean", ctypes.POINTER(ctypes.c_float)), ("std", ctypes.POINTER(ctypes.c_float)),
                ("n_stats", ctypes.c_int), ("steps", ctypes.c_int), ("total", ctypes.c_long)]

    SCHEDULES = {"constant": 1, "multistep": 2, "cosine": 3, "linear": 4}  # spide.h SPIDE_LR_* (0: the model's own)

    def set_schedule(self, spec: str) -> Any:
        """Set an ``--lr-schedule`` spec (spidec.schedule); returns the milestone array the struct
        points into (keep it alive while the struct is used)."""
        from ...schedule import parse_schedule

        kind, milestones, gamma = parse_schedule(spec)
        if kind == "linear":  # (K in the milestones' place: spidec.schedule; the caller sets total)
            self.schedule, self.steps = self.SCHEDULES[kind], milestones[0]
            return None
        ms = (ctypes.c_int * max(1, len(milestones)))(*milestones)
        self.schedule, self.milestones = self.SCHEDULES[kind], ctypes.cast(ms, ctypes.POINTER(ctypes.c_int))
        self.n_milestones, self.gamma = len(milestones), gamma
        return ms


class CRuntime:
    """A loaded model library: numpy in, numpy out."""

    def __init__(self, path: Path) -> None:
        self.lib = lib = ctypes.CDLL(str(path))
        f32p = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
        i32p = np.ctypeslib.ndpointer(np.int32, flags="C_CONTIGUOUS")
        lib.spide_info.restype = ctypes.POINTER(_Info)
        lib.spide_tensor_name.restype = ctypes.c_char_p
        lib.spide_tensor_size.restype = ctypes.c_size_t
        for fn in ("spide_get_tensor", "spide_set_tensor", "spide_get_grad", "spide_get_momentum",
                   "spide_set_momentum"):
            getattr(lib, fn).argtypes = [ctypes.c_int, f32p]
        lib.spide_forward.argtypes = [f32p]
        lib.spide_forward.restype = ctypes.POINTER(ctypes.c_float)
        lib.spide_learn.argtypes = [f32p, ctypes.c_int, ctypes.c_int]
        lib.spide_learn.restype = ctypes.c_float
        lib.spide_step.argtypes = [ctypes.c_float]
        lib.spide_set_lr.argtypes = [ctypes.c_float]
        lib.spide_begin_epoch.argtypes = []
        for fn in ("spide_get_qtensor", "spide_get_qmomentum"):
            getattr(lib, fn).argtypes = [ctypes.c_int, i32p]
        lib.spide_get_counts.argtypes = [f32p]
        self._has_rates = hasattr(lib, "spide_get_rates")  # (a library built before spidec exported it)
        if self._has_rates:
            lib.spide_get_rates.argtypes = [f32p]
        lib.spide_get_back_sums.argtypes = [f32p]
        lib.spide_get_back_counts.argtypes = [f32p]
        lib.spide_take_events.restype = ctypes.c_uint64
        lib.spide_take_work.argtypes = [np.ctypeslib.ndpointer(np.uint64, flags="C_CONTIGUOUS")]
        lib.spide_lr_at.argtypes = [ctypes.c_int, ctypes.c_float]
        lib.spide_lr_at.restype = ctypes.c_float
        lib.spide_train_epoch.argtypes = [f32p, i32p, ctypes.c_int, i32p, ctypes.c_int, ctypes.c_float,
                                          ctypes.POINTER(ctypes.c_int), ctypes.c_void_p]
        lib.spide_train_epoch.restype = ctypes.c_double
        lib.spide_train.argtypes = [f32p, i32p, ctypes.c_int, i32p, ctypes.c_int, ctypes.POINTER(TrainOpts),
                                    ctypes.POINTER(ctypes.c_int), ctypes.c_void_p]
        lib.spide_train.restype = ctypes.c_double
        lib.spide_evaluate.argtypes = [f32p, i32p, ctypes.c_int, ctypes.POINTER(ctypes.c_double)]
        lib.spide_evaluate.restype = ctypes.c_double
        self._has_threads = hasattr(lib, "spide_set_threads")  # (a library built before spidec had threads)
        if self._has_threads:
            lib.spide_set_threads.argtypes = [ctypes.c_int]
            lib.spide_threads.restype = ctypes.c_int
        self._has_divergence = hasattr(lib, "spide_divergence")  # (a library built before the runtime checked)
        if self._has_divergence:
            lib.spide_divergence.argtypes = [ctypes.POINTER(ctypes.c_double)]
            lib.spide_divergence.restype = ctypes.c_long
            lib.spide_nonfinite_tensor.argtypes = [ctypes.POINTER(ctypes.c_int)]
            lib.spide_nonfinite_tensor.restype = ctypes.c_int
        info = lib.spide_info().contents
        self.name, self.hash = info.name.decode(), info.hash.decode()
        self.n_inputs, self.n_classes, self.T, self.T_back = info.n_inputs, info.n_classes, info.T, info.T_back
        self.lr, self.sf = float(info.lr), float(info.sf)
        self.fixed = bool(info.fixed)
        self.tensor_names = [lib.spide_tensor_name(i).decode() for i in range(info.n_tensors)]
        self.sizes = [int(lib.spide_tensor_size(i)) for i in range(info.n_tensors)]

    def _y(self, y: Any, n: int) -> np.ndarray:
        """Labels as int32, each a class of the model's readout (the runtime indexes the logits with them)."""
        y = np.asarray(y)
        if y.dtype.kind not in "iub" or y.shape != (n,):
            raise SpidecError(f"need {n} integer labels, got an array of {y.dtype} and shape {y.shape}")
        if n and (y.min() < 0 or y.max() >= self.n_classes):
            raise SpidecError(f"labels must lie in 0..{self.n_classes - 1} (the model's classes), "
                              f"got {int(y.min())}..{int(y.max())}")
        return np.ascontiguousarray(y.astype(np.int32))

    def _x(self, x: Any) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(-1, self.n_inputs))

    def _per_tensor(self, getter: Any) -> dict[str, np.ndarray]:
        out = {}
        for i, (name, size) in enumerate(zip(self.tensor_names, self.sizes)):
            out[name] = buf = np.empty(size, np.float32)
            getter(i, buf)
        return out

    def _per_neuron(self, getter: Any) -> np.ndarray:
        out = np.empty(self.lib.spide_neurons(), np.float32)
        getter(out)
        return out

    def get_weights(self) -> dict[str, np.ndarray]:
        """Every tensor, flat, by its IR name."""
        return self._per_tensor(self.lib.spide_get_tensor)

    def qweights(self) -> dict[str, np.ndarray]:
        """Fixed-point models: every tensor as its integers (W * 2**frac)."""
        return self._per_tensor_int(self.lib.spide_get_qtensor)

    def qmomentum(self) -> dict[str, np.ndarray]:
        """Fixed-point models: the int32 momentum buffers (zeros for online updates)."""
        return self._per_tensor_int(self.lib.spide_get_qmomentum)

    def _per_tensor_int(self, getter: Any) -> dict[str, np.ndarray]:
        if not self.fixed:
            raise SpidecError("this model is not fixed point (compile with --fixed)")
        out = {}
        for i, (name, size) in enumerate(zip(self.tensor_names, self.sizes)):
            out[name] = buf = np.empty(size, np.int32)
            getter(i, buf)
        return out

    @staticmethod
    def _lr(lr: Any) -> float:
        """A learning rate the runtime can step with: a finite float32 > 0."""
        try:
            v = float(lr)
        except (TypeError, ValueError):
            raise SpidecError(f"the learning rate must be a number, got {lr!r}") from None
        if not (math.isfinite(v) and 0 < v <= 1e30 and np.float32(v) > 0):
            raise SpidecError(f"the learning rate must be a finite number > 0 (at most 1e30), got {v}")
        return v

    def _check_finite(self, where: str, lr: float) -> None:
        """SpidecError when a tensor or momentum buffer holds NaN or inf (the weights diverged)."""
        if not self._has_divergence:
            return
        mom = ctypes.c_int(0)
        i = self.lib.spide_nonfinite_tensor(ctypes.byref(mom))
        if i >= 0:
            what = "the momentum of tensor" if mom.value else "tensor"
            raise SpidecError(f"training diverged {where}: {what} '{self.tensor_names[i]}' holds NaN or inf "
                              f"(learning rate {lr:g} too high?)")

    def _diverged_loss(self, epoch: int | None, first_batch: int, lr: float) -> SpidecError:
        """The error of a pass spide_train stopped on a non-finite loss (SPIDE_DIVERGED)."""
        bad = ctypes.c_double(float("nan"))
        it = self.lib.spide_divergence(ctypes.byref(bad)) if self._has_divergence else first_batch
        at = "" if epoch is None else f"epoch {epoch + 1}, "
        return SpidecError(f"training diverged at {at}batch {it - first_batch + 1}: the loss is {bad.value} "
                           f"(learning rate {lr:g} too high?)")

    def set_lr(self, lr: float) -> None:
        self.lib.spide_set_lr(ctypes.c_float(self._lr(lr)))

    def set_threads(self, n: int | None) -> None:
        """Threads of train and evaluate (None or <= 0: the cores available, the default). The
        weights are bit-identical for any number; fixed-point models run on one thread."""
        if self._has_threads:
            self.lib.spide_set_threads(0 if n is None else int(n))

    @property
    def threads(self) -> int:
        """The threads train will use (1 for a fixed-point model or a library without threads)."""
        return int(self.lib.spide_threads()) if self._has_threads else 1

    def grads(self) -> dict[str, np.ndarray]:
        """The accumulated local gradient estimates G (spide_learn since the last step)."""
        return self._per_tensor(self.lib.spide_get_grad)

    def momentum(self) -> dict[str, np.ndarray]:
        """The SGD momentum buffers, flat, by tensor name (zeros for frozen tensors)."""
        return self._per_tensor(self.lib.spide_get_momentum)

    def set_momentum(self, values: dict[str, np.ndarray]) -> None:
        """Set momentum buffers (as a checkpoint does); e.g. zeros to restart the optimiser."""
        self._set_per_tensor(values, self.lib.spide_set_momentum)

    def set_weights(self, values: dict[str, np.ndarray]) -> None:
        self._set_per_tensor(values, self.lib.spide_set_tensor)

    def _set_per_tensor(self, values: dict[str, np.ndarray], setter: Any) -> None:
        for name, value in values.items():
            if name not in self.tensor_names:
                raise SpidecError(f"no tensor named '{name}'; the model has: {', '.join(self.tensor_names)}")
            i = self.tensor_names.index(name)
            arr = np.ascontiguousarray(np.asarray(value, np.float32).ravel())
            if arr.size != self.sizes[i]:
                raise SpidecError(f"tensor '{name}' holds {self.sizes[i]} values, got {arr.size}")
            setter(i, arr)

    def forward(self, x: Any) -> np.ndarray:
        """Logits of each sample."""
        x = self._x(x)
        out = np.empty((len(x), self.n_classes), np.float32)
        for k in range(len(x)):
            out[k] = np.ctypeslib.as_array(self.lib.spide_forward(x[k]), (self.n_classes,))
        return out

    def counts(self, x: Any) -> np.ndarray:
        """Forward spike counts of every neuron (populations concatenated), per sample."""
        x = self._x(x)
        n = self.lib.spide_neurons()
        out = np.empty((len(x), n), np.float32)
        for k in range(len(x)):
            self.lib.spide_forward(x[k])
            self.lib.spide_get_counts(out[k])
        return out

    def rates(self, x: Any) -> np.ndarray:
        """Forward rates of every neuron (populations concatenated), per sample: count / T, and for
        LIF the leak-weighted count over its norm (what the local updates read)."""
        if not self._has_rates:
            return self.counts(x) / self.T
        x = self._x(x)
        out = np.empty((len(x), self.lib.spide_neurons()), np.float32)
        for k in range(len(x)):
            self.lib.spide_forward(x[k])
            self.lib.spide_get_rates(out[k])
        return out

    def learn_batch(self, x: Any, y: Any) -> float:
        """Accumulate the local updates of a batch (no step); returns the summed loss."""
        x = self._x(x)
        y = self._y(y, len(x))
        loss = float(sum(self.lib.spide_learn(x[k], int(y[k]), len(x)) for k in range(len(x))))
        if not math.isfinite(loss):
            self.lib.spide_zero_grads()  # (this batch's gradients dropped, as spide_train drops them)
            raise SpidecError(f"training diverged: the loss of this batch is {loss} (learning rate too high?)")
        return loss

    def take_work(self) -> dict[str, dict[str, int]]:
        """Work since the last call: spike-driven synaptic operations and multiply-accumulates per
        stage (forward, backward, update); resets the counters."""
        out = np.zeros(6, np.uint64)
        self.lib.spide_take_work(out)
        stages = ("forward", "backward", "update")
        return {"synops": {s: int(out[k]) for k, s in enumerate(stages)},
                "macs": {s: int(out[3 + k]) for k, s in enumerate(stages)}}

    def back_sums(self) -> np.ndarray:
        """Ternary spike sums of the last backward stage (beta * T_back), couples concatenated."""
        return self._per_neuron(self.lib.spide_get_back_sums)

    def back_counts(self) -> np.ndarray:
        """Ternary spikes (either sign) of each couple in the last backward stage."""
        return self._per_neuron(self.lib.spide_get_back_counts)

    def step(self, lr: float | None = None) -> None:
        self.lib.spide_step(ctypes.c_float(self.lr if lr is None else self._lr(lr)))

    def train(self, x: Any, y: Any, *, epochs: int = 1, batch: int = 64, lr: float | None = None,
              seed: int = 0, lr_schedule: str | None = None, warmup: int = 0, augment: str = "",
              normalize: str | None = None, threads: int | None = None) -> list[dict]:
        """``epochs`` over (x, y) in seeded orders, as the host trainer runs them (see
        spide_train in spide.h): ``lr_schedule`` (spidec.schedule; default the model's own),
        ``warmup`` batches, ``augment`` and ``normalize`` (spidec.augment; the model's test data
        must then be normalised by the caller); ``threads`` (see :meth:`set_threads`; None keeps
        the current setting) changes the speed, never the result."""
        from ...augment import parse_augment, parse_normalize

        if threads is not None:
            self.set_threads(threads)
        x = self._x(x)
        y = self._y(y, len(x))
        opts = TrainOpts(lr=self.lr if lr is None else self._lr(lr), seed=seed, epochs=epochs, warmup=warmup)
        keep: list[Any] = []  # arrays the struct points into
        if lr_schedule is not None:
            keep.append(opts.set_schedule(lr_schedule))
        if augment:
            aug = parse_augment(augment)
            opts.crop, opts.flip = aug.pad, int(aug.flip)
        if normalize:
            mean, std = parse_normalize(normalize)
            m, sd = (ctypes.c_float * len(mean))(*mean), (ctypes.c_float * len(std))(*std)
            keep += [m, sd]
            opts.mean, opts.std, opts.n_stats = ctypes.cast(m, ctypes.POINTER(ctypes.c_float)), \
                ctypes.cast(sd, ctypes.POINTER(ctypes.c_float)), len(mean)
        rng = np.random.default_rng(seed)
        per_epoch = -(-len(y) // batch)
        opts.total = epochs * per_epoch  # (linear:K falls over the whole run)
        history = []
        for epoch in range(epochs):
            perm = np.ascontiguousarray(rng.permutation(len(y)).astype(np.int32))
            correct = ctypes.c_int(0)
            opts.epoch, opts.iteration = epoch, epoch * per_epoch
            self.lib.spide_begin_epoch()
            loss = self.lib.spide_train(x, y, len(y), perm, batch, ctypes.byref(opts), ctypes.byref(correct), None)
            if loss == -2.0:  # SPIDE_DIVERGED
                raise self._diverged_loss(epoch, epoch * per_epoch, opts.lr)
            if loss < 0:
                raise SpidecError("the C trainer could not augment these samples (an image-shaped input is needed)")
            self._check_finite(f"in epoch {epoch + 1}", opts.lr)
            history.append({"epoch": epoch + 1, "loss": loss / len(y), "train_accuracy": correct.value / len(y)})
        return history

    def train_epoch(self, x: Any, y: Any, order: Any, *, batch: int = 64, lr: float | None = None) -> dict:
        """One epoch in the given sample order (e.g. :func:`epoch_order`, what a board uses)."""
        x = self._x(x)
        y = self._y(y, len(x))
        perm = np.ascontiguousarray(np.asarray(order, np.int32))
        correct = ctypes.c_int(0)
        lr = self.lr if lr is None else self._lr(lr)
        self.lib.spide_begin_epoch()
        loss = self.lib.spide_train_epoch(x, y, len(perm), perm, batch, ctypes.c_float(lr), ctypes.byref(correct), None)
        if loss == -2.0:  # SPIDE_DIVERGED
            raise self._diverged_loss(None, 0, lr)
        self._check_finite("in this epoch", lr)
        return {"loss": loss / len(perm), "train_accuracy": correct.value / len(perm)}

    def evaluate(self, x: Any, y: Any) -> dict:
        x = self._x(x)
        y = self._y(y, len(x))
        loss = ctypes.c_double(0.0)
        acc = self.lib.spide_evaluate(x, y, len(y), ctypes.byref(loss))
        return {"accuracy": acc, "loss": loss.value}


__all__ = ["BOARDS", "TRAIN_OPTIONS", "CArtifact", "CRuntime", "context", "emit", "epoch_order", "fixed_context",
           "read_weights_dump", "train_build"]
