"""The ``c`` backend: a training graph into C99 that trains the network on the device it runs on.

    art = emit(g, "build/")          # model.c + the runtime + a Makefile
    rt = art.build()                 # make; a ctypes handle on the shared library
    rt.train(x, y, epochs=5); rt.evaluate(x_test, y_test)

The folder holds ``model.c`` (sizes as constants, state in static arrays, the schedule unrolled,
the initial weights as initialised arrays), a copy of ``runtime/`` (``spide.h`` and the shared
sources: data-set and checkpoint files, the training loop, the command-line program) and a
``Makefile`` that builds the host executable ``train`` (``train``/``eval``/``predict``/``info``)
and the shared library. Same graph, same bytes.

Supported: synapses made of one dense, conv, transposed-conv or average-pooling op with
flatten/reshape and constant scalar scales around it (or no weight: an identity with a scale),
IF/LIF populations of any shape with full or per-channel biases, one data input (constant
encoding) and one cross-entropy readout; other ops are refused with a message.

A graph that went through the ``quantize`` pass (``g.quant``) gets the integer-only runtime of
``templates/fixed.c.j2`` instead (``spidec.fixed`` describes its arithmetic; dense synapses and IF
neurons), and ``emit(..., board=...)`` adds a Cortex-M image (``board.py``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from ...errors import SpidecError
from ...ir import Graph, Input, Population, code_name
from ...ops import AvgPool2d, Conv2d, ConvTranspose2d, Dense, Flatten, Reshape, Scale
from ...text import dumps
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


class _Chain:
    """A synapse reduced to ``factor * OP``: one dense, conv, transposed-conv or average-pooling op
    (or none: an identity), with flatten/reshape (no-ops on flat memory) and scalar scales around."""

    def __init__(self, g: Graph, syn: str) -> None:
        e = g.synapse(syn)
        self.name = e.name
        self.factor = 1.0
        self.weight: str | None = None
        self.op: Any = None
        slots = {(s.owner, s.op, s.field): n for n, s in g.tensor_slots().items()}
        shapes = e.synapse.shapes(g.node(e.src).shape)
        self.shape_in, self.shape_out = shapes[0], shapes[-1]
        for i, op in enumerate(e.synapse.ops):
            if isinstance(op, (Flatten, Reshape)):
                continue
            if isinstance(op, Scale) and isinstance(op.factor, float):
                self.factor *= op.factor
            elif isinstance(op, (Dense, Conv2d, ConvTranspose2d, AvgPool2d)) and self.op is None:
                self.op, self.shape_in, self.shape_out = op, shapes[i], shapes[i + 1]
                if not isinstance(op, AvgPool2d):
                    self.weight = slots[(e.name, i, "weight")]
            else:
                what = f"a second weighted op ({op.kind})" if self.op is not None else f"op {op.kind}"
                raise SpidecError(f"synapse '{e.name}': the C backend does not support {what} yet (it reads one "
                                  "dense, conv2d, conv_transpose2d or avgpool2d op with flatten/reshape and scalar "
                                  "scales around it)", hint="use --target sim for this model")

    def kernel(self) -> dict[str, Any]:
        """What the kernel templates need (kernels.c.j2)."""
        op = self.op
        s: dict[str, Any] = {"name": self.name, "c": code_name(self.name),
                             "n": math.prod(self.shape_in), "m": math.prod(self.shape_out),
                             "w": _cname(self.weight) if self.weight else None}
        if op is None:
            return {**s, "kind": "identity"}
        if isinstance(op, Dense):
            return {**s, "kind": "dense"}
        ci, h, wd = self.shape_in
        co, ho, wo = self.shape_out
        geo = {"ci": ci, "h": h, "wd": wd, "co": co, "ho": ho, "wo": wo}
        if isinstance(op, AvgPool2d):
            kh, kw = op.kernel
            inv = 1.0 / np.broadcast_to(np.asarray(op._divisor(self.shape_in), np.float64), (ho, wo))
            return {**s, **geo, "kind": "pool", "kh": kh, "kw": kw, "sh": op.stride[0], "sw": op.stride[1],
                    "ph": op.padding[0], "pw": op.padding[1], "inv": ", ".join(_c_float(v) for v in inv.ravel())}
        kh, kw = op.kernel
        return {**s, **geo, "size": int(op.weight.size), "kind": "conv" if isinstance(op, Conv2d) else "convt",
                "kh": kh, "kw": kw, "sh": op.stride[0], "sw": op.stride[1], "ph": op.padding[0], "pw": op.padding[1]}


def context(g: Graph) -> dict[str, Any]:
    from ... import __version__

    if g.simulation is None or g.training is None or g.schedule is None:
        raise SpidecError("the c backend needs a training graph; run the passes first: spidec.passes.run(g)")
    if g.simulation.encoding != "constant":
        raise SpidecError("the c backend reads constant input currents only", hint="use --target sim for temporal "
                          "inputs")
    if len(g.inputs) != 1:
        raise SpidecError(f"the c backend trains models with one data input, this one has {len(g.inputs)}")
    if len(g.readouts) != 1 or g.readouts[0].loss != "cross_entropy":
        raise SpidecError("the c backend trains one cross-entropy readout (a classifier)")
    t, sched = g.training, g.schedule
    n = {node.name: math.prod(node.shape) for node in g.nodes}
    cvar = {p.name: code_name(p.name) for p in g.populations}
    chains = {e.name: _Chain(g, e.name) for e in g.synapses()}
    readout = g.readouts[0]
    # forward spikes add W's columns: dense weights keep a transposed copy (conv kernels keep
    # permuted copies, see kernels.c.j2)
    transposed = {c.weight for c in chains.values() if isinstance(c.op, Dense)}
    feedback = {c.weight for e, c in chains.items() if c.weight and g.synapse(e).synapse.delay}
    tensors = []
    for name, slot in g.tensor_slots().items():
        arr = g.tensor(name).astype(np.float32)
        values = np.char.mod("%.9g", arr.ravel())
        lines = [", ".join(values[i: i + 8]) for i in range(0, len(values), 8)]
        tensors.append({"name": name, "c": _cname(name), "size": int(arr.size), "learnable": slot.learnable,
                        "shape": list(arr.shape) if arr.ndim == 2 else [int(arr.size)],
                        "transposed": name in transposed, "feedback": name in feedback and slot.learnable,
                        "init": "    " + ",\n    ".join(lines)})
    pops = []
    for p in sched.forward:
        node = g.node(p)
        feeds = []
        for e in g.in_synapses(p):
            c = chains[e.name]
            kind = "input" if isinstance(g.node(e.src), Input) else ("delayed" if e.synapse.delay else "now")
            feeds.append({"kind": kind, "syn": e.name, "s": c.kernel()["c"], "factor": c.factor,
                          "src_c": cvar.get(e.src)})
        nrn = node.neuron
        couple = t.couple_of(p)
        pops.append({"name": p, "c": cvar[p], "n": n[p], "V": nrn.V, "vth": nrn.vth, "leak": nrn.leak,
                     "norm": float(g.simulation.T) if nrn.leak == 1.0 else
                     (1 - nrn.leak ** g.simulation.T) / (1 - nrn.leak),
                     "bias": _cname(f"{p}.bias") if node.bias is not None else None, "feeds": feeds,
                     # a per-channel bias of a [C, H, W] population: (C, H*W)
                     "bias_pc": (node.shape[0], n[p] // node.shape[0]) if node.bias is not None
                     and node.bias.shape != node.shape else None,
                     "delayed": p in sched.delayed, "couple": couple.name, "cvth": couple.vth, "S": couple.S,
                     "cleak": couple.leak, "norm_b": float(t.T_back) if couple.leak == 1.0 else
                     (1 - couple.leak ** t.T_back) / (1 - couple.leak),
                     "bdelayed": couple.name in sched.delayed_back})
    by = {p["name"]: p for p in pops}
    back = []
    for cname in sched.backward:
        p = by[next(c.of for c in t.couples if c.name == cname)]
        bfeeds = [{"syn": b.forward, "s": chains[b.forward].kernel()["c"], "factor": chains[b.forward].factor,
                   "src_c": cvar[b.gate], "delayed": bool(b.delay)} for b in t.backward if b.dst == cname]
        injections = [{"s": chains[i.forward].kernel()["c"], "factor": chains[i.forward].factor}
                      for i in t.injections if i.couple == cname]
        back.append({**p, "bfeeds": bfeeds, "injections": injections})
    rfeeds = []
    for e in g.in_synapses(readout.name):
        c = chains[e.name]
        if not isinstance(g.node(e.src), Population):
            raise SpidecError(f"readout synapse '{e.name}' reads an input; the c backend's readout reads populations")
        rfeeds.append({"s": c.kernel()["c"], "factor": c.factor, "pre": f"a_{cvar[e.src]}"})
    updates = []
    for u in t.updates:
        c = _cname(u.tensor)
        if u.kind in ("local", "delta"):
            e = g.synapse(u.synapse)  # type: ignore[arg-type]
            ch = chains[e.name]
            pre = "x_in" if isinstance(g.node(e.src), Input) else f"a_{cvar[e.src]}"
            post = f"post_{cvar[e.dst]}" if u.kind == "local" else "dlogits"
            updates.append({"tensor": u.tensor, "kind": u.kind, "c": c, "s": ch.kernel()["c"],
                            "pre": pre, "post": post, "factor": ch.factor,
                            "what": f"{u.kind} rule through {e.name} ({e.src} -> {e.dst})"})
        else:
            post = "dlogits" if u.kind == "delta_bias" else f"post_{cvar[u.gate]}"  # type: ignore[index]
            rows = n[u.post] if u.kind == "delta_bias" else n[u.gate]  # type: ignore[index]
            owner = g.node(u.post if u.kind == "delta_bias" else u.gate)  # type: ignore[arg-type]
            per = (owner.shape[0], rows // owner.shape[0]) if g.tensor(u.tensor).shape != owner.shape else None
            updates.append({"tensor": u.tensor, "kind": u.kind, "c": c, "rows": rows, "post": post, "per_channel": per,
                            "what": f"{u.kind} rule" + (" (one value per channel)" if per else "")})
    text, _ = dumps(g, inline_max=0)
    return {
        "version": __version__, "model": g.name, "hash": hashlib.sha256(text.encode()).hexdigest()[:16],
        "T": g.simulation.T, "T_back": t.T_back, "sf": t.sf, "opt": t.optimizer,
        "n_inputs": n[g.inputs[0].name], "n_classes": n[readout.name], "tensors": tensors, "pops": pops,
        "back": back, "updates": updates, "synapses": [c.kernel() for c in chains.values()],
        "readout": {"name": readout.name, "bias": _cname(f"{readout.name}.bias") if readout.bias is not None else None,
                    "feeds": rfeeds},
    }


def fixed_context(g: Graph) -> dict[str, Any]:
    """What fixed.c.j2 needs: context(g) plus the quantize pass's scales (spidec.fixed)."""
    from ... import fixed as fx

    q = fx.quantization_of(g)
    ctx = fx._structure(g)
    text, _ = dumps(g, inline_max=0)
    ctx["hash"] = hashlib.sha256((text + repr(q)).encode()).hexdigest()[:16]
    weights = fx.integer_weights(g)  # exactly as the numpy model holds them
    weight_of = {e.name: fx.synapse_weight(g, e.name) for e in g.synapses()}
    syn = {e.name: e for e in g.synapses()}
    for p in ctx["pops"]:
        if p["n"] >= 32768:
            raise SpidecError(f"population '{p['name']}': fixed point indexes neurons with int16, {p['n']} is too many")
    tensors = []
    for t in ctx["tensors"]:
        w = weights[t["name"]].ravel()
        qt = q.tensors.get(t["name"])
        values = [str(int(v)) for v in w]
        lines = [", ".join(values[i: i + 16]) for i in range(0, len(values), 16)]
        tensors.append({**t, "init": "    " + ",\n    ".join(lines), "frac": q.frac[t["name"]],
                        "unit": qt.unit if qt else 0.0, "lr_shift": qt.lr_shift if qt else 0,
                        "lr_c": qt.lr_c.hex() if qt else "0.0",
                        "wdl_c": (qt.wdl_c * q.wd_period).hex() if qt else "0.0",
                        "wd_mult": qt.wd_mult if qt else 0, "wd_shift": qt.wd_shift if qt else 0,
                        "salt": qt.salt if qt else 0, "salt_wd": (qt.salt ^ 0x5BD1E995) if qt else 0,
                        "feedback": bool(qt and qt.feedback),
                        "R": math.floor(ctx["opt"].feedback_norm * 2 ** q.frac[t["name"]] + 0.5)})
    cname = {p["name"]: p["c"] for p in ctx["pops"]}
    n_of = {p["name"]: p["n"] for p in ctx["pops"]}
    pops = []
    for p in ctx["pops"]:
        name = p["name"]
        ifeeds = [{"w": _cname(weight_of[f["syn"]]), "n": ctx["n_inputs"]} for f in p["feeds"] if f["kind"] == "input"]
        pfeeds = [{"w": _cname(weight_of[f["syn"]]), "n": n_of[syn[f["syn"]].src], "src_c": f["src_c"],
                   "syn": f["syn"], "delayed": f["kind"] == "delayed"} for f in p["feeds"] if f["kind"] != "input"]
        pops.append({**p, "frac": q.pop_frac[name], "bp": q.couple_frac[name], "th": fx.threshold(p, q),
                     "cth": fx.couple_threshold(p, q), "kmax": q.k_max[name], "gmax": q.g_max[name],
                     "si": 2 ** (q.couple_frac[name] + round(math.log2(p["S"]))),
                     "ifeeds": ifeeds, "pfeeds": pfeeds})
    by = {p["name"]: p for p in pops}
    back = []
    for c in ctx["back"]:
        p = by[c["name"]]
        bfeeds = [{"w": _cname(weight_of[f["syn"]]), "syn": f["syn"], "src_c": f["src_c"], "delayed": f["delayed"],
                   "shift": p["bp"] - q.pop_frac[syn[f["syn"]].dst]
                   + round(math.log2(by[syn[f["syn"]].dst]["S"]))} for f in c["bfeeds"]]
        injections = [{"w": _cname(weight_of[e.name])} for e in g.in_synapses(g.readouts[0].name) if e.src == c["name"]]
        back.append({**p, "bfeeds": bfeeds, "injections": injections, "ishift": q.readout_frac + fx.Q - p["bp"]})
    ro = g.readouts[0]
    rfeeds = [{"w": _cname(weight_of[e.name]), "n": n_of[e.src], "src_c": cname[e.src]} for e in g.in_synapses(ro.name)]
    updates = []
    for u in g.training.updates:  # type: ignore[union-attr]
        c = _cname(u.tensor)
        if u.kind in ("local", "delta"):
            e = syn[u.synapse]  # type: ignore[index]
            pre = f"cnt_{cname[e.src]}" if e.src in cname else "xq"
            cols = n_of.get(e.src, ctx["n_inputs"])
            if u.kind == "local":
                rows, post = n_of[e.dst], f"m_{cname[e.dst]}[k] ? sb_{cname[e.dst]}[k] : 0"
            else:
                rows, post = ctx["n_classes"], "dls[k]"
            updates.append({"tensor": u.tensor, "kind": u.kind, "c": c, "rows": rows, "cols": cols, "pre": pre,
                            "post": post})
        elif u.kind == "bias":
            gc = cname[u.gate]  # type: ignore[index]
            updates.append({"tensor": u.tensor, "kind": u.kind, "c": c, "rows": n_of[u.gate],  # type: ignore[index]
                            "post": f"m_{gc}[k] ? sb_{gc}[k] : 0"})
        else:
            updates.append({"tensor": u.tensor, "kind": u.kind, "c": c, "rows": ctx["n_classes"], "post": "dls[k]"})
    return {**ctx, "q": q, "tensors": tensors, "tmap": {t["name"]: t for t in tensors}, "pops": pops, "back": back,
            "readout": {"bias": _cname(f"{ro.name}.bias") if ro.bias is not None else None, "feeds": rfeeds},
            "updates": updates, "w_max": fx.W_MAX, "log2e": fx.LOG2E_Q16,
            "exp2": ", ".join(str(v) for v in fx.EXP2_TABLE), "sf_q16": (float(ctx["sf"]) * 2.0**fx.Q).hex()}


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["f"] = _c_float
    return env


MAKEFILE = """# Generated by spidec: builds the host trainer and the shared library of model '{name}'.
#   make              train (train/eval/predict/info) and lib{name}.so
#   make sanitize     train-san, under AddressSanitizer and UndefinedBehaviorSanitizer
CC ?= cc
ARCH ?= -march=native
CFLAGS ?= -std=c99 -O3 $(ARCH) -ffp-contract=off -Wall -Wextra -Werror
SRC = model.c runtime/src/spide_io.c runtime/src/spide_train.c
INC = -Iruntime/include

all: train lib{name}.so

train: $(SRC) runtime/src/spide_main.c runtime/include/spide.h
\t$(CC) $(CFLAGS) $(INC) -o $@ $(SRC) runtime/src/spide_main.c -lm

lib{name}.so: $(SRC) runtime/include/spide.h
\t$(CC) $(CFLAGS) $(INC) -fPIC -shared -o $@ $(SRC) -lm

sanitize: train-san

train-san: $(SRC) runtime/src/spide_main.c runtime/include/spide.h
\t$(CC) -std=c99 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all \\
\t\t-ffp-contract=off -Wall -Wextra -Werror $(INC) -o $@ $(SRC) runtime/src/spide_main.c -lm

clean:
\trm -f train train-san lib{name}.so

.PHONY: all sanitize clean
"""


def emit(g: Graph, out: str | Path, board: str | None = None) -> CArtifact:
    """Write the C sources for training graph ``g`` into ``out`` (fixed point when the quantize
    pass ran: ``g.quant``); ``board`` (one of ``BOARDS``) adds the startup code, linker script and
    Makefile targets of that Cortex-M board (fixed point only)."""
    if board is not None:
        if board not in BOARDS:
            raise SpidecError(f"unknown board '{board}'; the boards are: {', '.join(BOARDS)}")
        if getattr(g, "quant", None) is None:
            raise SpidecError("a board build is fixed point: run the quantize pass first (spidec compile --board "
                              "does) ")
    fixed = getattr(g, "quant", None) is not None
    ctx = fixed_context(g) if fixed else context(g)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    template = "fixed.c.j2" if fixed else "model.c.j2"
    (out / "model.c").write_text(_env().get_template(template).render(**ctx))
    rt = _runtime_dir()
    for sub in ("include", "src"):
        (out / "runtime" / sub).mkdir(parents=True, exist_ok=True)
        for f in sorted((rt / sub).iterdir()):
            if f.suffix in (".c", ".h"):
                shutil.copyfile(f, out / "runtime" / sub / f.name)
    makefile = MAKEFILE.format(name=_lib_name(g))
    if board is not None:
        (out / "runtime" / "board").mkdir(parents=True, exist_ok=True)
        for f in sorted((rt / "board").iterdir()):
            if f.suffix in (".c", ".h", ".ld"):
                shutil.copyfile(f, out / "runtime" / "board" / f.name)
        makefile += BOARD_MAKEFILE.format(board=board, n_inputs=ctx["n_inputs"], **BOARDS[board])
        from .board import memory_plan

        (out / "board.json").write_text(json.dumps({"board": board, **BOARDS[board], "model": g.name,
                                                    "hash": ctx["hash"], "n_inputs": ctx["n_inputs"],
                                                    "update": g.quant.update, "plan": memory_plan(ctx)}, indent=1))
    (out / "Makefile").write_text(makefile)
    text, _ = dumps(g, inline_max=0)
    (out / "model.spir").write_text(text)
    if fixed:  # the scales the quantize pass chose (the text form does not carry them)
        (out / "quantization.json").write_text(json.dumps(dataclasses.asdict(g.quant), indent=1))
    return CArtifact(out, g, board)


def _lib_name(g: Graph) -> str:
    return code_name(g.name)


@dataclass
class CArtifact:
    out: Path
    graph: Graph
    board: str | None = None

    def build(self, *, sanitize: bool = False, quiet: bool = True) -> CRuntime:
        """Run ``make`` (gcc/cc); return a ctypes handle on the shared library. ``sanitize`` also
        builds ``train-san`` (AddressSanitizer and UndefinedBehaviorSanitizer)."""
        target = ["all", "sanitize"] if sanitize else ["all"]
        done = subprocess.run(["make", "-C", str(self.out), *target], capture_output=True, text=True)
        if done.returncode != 0:
            raise SpidecError(f"building the C program failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
        if not quiet:
            print(done.stdout)
        return CRuntime(self.out / f"lib{_lib_name(self.graph)}.so")

    @property
    def executable(self) -> Path:
        return self.out / "train"


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The sample order of an epoch on a board (spide_epoch_order in spide_train.c): sample k is
    ``(a k + b) mod n`` with ``a`` coprime to ``n``; ``a``, ``b`` from xorshift64* of (seed, epoch)."""
    mask = (1 << 64) - 1
    s = ((seed * 0x9E3779B97F4A7C15) ^ ((epoch + 1) * 0xD1B54A32D192ED03)) & mask or 1

    def nxt() -> int:
        nonlocal s
        s ^= s >> 12
        s ^= (s << 25) & mask
        s ^= s >> 27
        return (s * 2685821657736338717) & mask

    a, b = 1, 0
    if n > 1:
        a = 1 + nxt() % (n - 1)
        while math.gcd(a, n) != 1:
            a = 1 + nxt() % (n - 1)
        b = nxt() % n
    return ((a * np.arange(n, dtype=np.int64) + b) % n).astype(np.int32)


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
        lib.spide_get_back_sums.argtypes = [f32p]
        lib.spide_get_back_counts.argtypes = [f32p]
        lib.spide_take_events.restype = ctypes.c_uint64
        lib.spide_take_work.argtypes = [np.ctypeslib.ndpointer(np.uint64, flags="C_CONTIGUOUS")]
        lib.spide_lr_at.argtypes = [ctypes.c_int, ctypes.c_float]
        lib.spide_lr_at.restype = ctypes.c_float
        lib.spide_train_epoch.argtypes = [f32p, i32p, ctypes.c_int, i32p, ctypes.c_int, ctypes.c_float,
                                          ctypes.POINTER(ctypes.c_int), ctypes.c_void_p]
        lib.spide_train_epoch.restype = ctypes.c_double
        lib.spide_evaluate.argtypes = [f32p, i32p, ctypes.c_int, ctypes.POINTER(ctypes.c_double)]
        lib.spide_evaluate.restype = ctypes.c_double
        info = lib.spide_info().contents
        self.name, self.hash = info.name.decode(), info.hash.decode()
        self.n_inputs, self.n_classes, self.T, self.T_back = info.n_inputs, info.n_classes, info.T, info.T_back
        self.lr, self.sf = float(info.lr), float(info.sf)
        self.fixed = bool(info.fixed)
        self.tensor_names = [lib.spide_tensor_name(i).decode() for i in range(info.n_tensors)]
        self.sizes = [int(lib.spide_tensor_size(i)) for i in range(info.n_tensors)]

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

    def set_lr(self, lr: float) -> None:
        self.lib.spide_set_lr(ctypes.c_float(lr))

    def grads(self) -> dict[str, np.ndarray]:
        """The accumulated local gradient estimates G (spide_learn since the last step)."""
        return self._per_tensor(self.lib.spide_get_grad)

    def set_weights(self, values: dict[str, np.ndarray]) -> None:
        for name, value in values.items():
            if name not in self.tensor_names:
                raise SpidecError(f"no tensor named '{name}'; the model has: {', '.join(self.tensor_names)}")
            i = self.tensor_names.index(name)
            arr = np.ascontiguousarray(np.asarray(value, np.float32).ravel())
            if arr.size != self.sizes[i]:
                raise SpidecError(f"tensor '{name}' holds {self.sizes[i]} values, got {arr.size}")
            self.lib.spide_set_tensor(i, arr)

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
        return self.counts(x) / self.T

    def learn_batch(self, x: Any, y: Any) -> float:
        """Accumulate the local updates of a batch (no step); returns the summed loss."""
        x = self._x(x)
        y = np.asarray(y, np.int64)
        return float(sum(self.lib.spide_learn(x[k], int(y[k]), len(x)) for k in range(len(x))))

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
        self.lib.spide_step(ctypes.c_float(self.lr if lr is None else lr))

    def train(self, x: Any, y: Any, *, epochs: int = 1, batch: int = 64, lr: float | None = None,
              seed: int = 0) -> list[dict]:
        x = self._x(x)
        y = np.ascontiguousarray(np.asarray(y, np.int32))
        rng = np.random.default_rng(seed)
        history = []
        for epoch in range(epochs):
            perm = np.ascontiguousarray(rng.permutation(len(y)).astype(np.int32))
            correct = ctypes.c_int(0)
            lr_e = self.lib.spide_lr_at(epoch, ctypes.c_float(self.lr if lr is None else lr))
            self.lib.spide_begin_epoch()
            loss = self.lib.spide_train_epoch(x, y, len(y), perm, batch, ctypes.c_float(lr_e),
                                              ctypes.byref(correct), None)
            history.append({"epoch": epoch + 1, "loss": loss / len(y), "train_accuracy": correct.value / len(y)})
        return history

    def train_epoch(self, x: Any, y: Any, order: Any, *, batch: int = 64, lr: float | None = None) -> dict:
        """One epoch in the given sample order (e.g. :func:`epoch_order`, what a board uses)."""
        x = self._x(x)
        y = np.ascontiguousarray(np.asarray(y, np.int32))
        perm = np.ascontiguousarray(np.asarray(order, np.int32))
        correct = ctypes.c_int(0)
        self.lib.spide_begin_epoch()
        loss = self.lib.spide_train_epoch(x, y, len(perm), perm, batch, ctypes.c_float(self.lr if lr is None else lr),
                                          ctypes.byref(correct), None)
        return {"loss": loss / len(perm), "train_accuracy": correct.value / len(perm)}

    def evaluate(self, x: Any, y: Any) -> dict:
        x = self._x(x)
        y = np.ascontiguousarray(np.asarray(y, np.int32))
        loss = ctypes.c_double(0.0)
        acc = self.lib.spide_evaluate(x, y, len(y), ctypes.byref(loss))
        return {"accuracy": acc, "loss": loss.value}


__all__ = ["BOARDS", "CArtifact", "CRuntime", "context", "emit", "epoch_order", "fixed_context", "read_weights_dump"]
