"""NIR graphs (Neuromorphic Intermediate Representation, ``nir`` 1.0.8) into the spidec IR.

``spidec.from_nir(path_or_graph, dt=None, name=None)`` reads a ``.nir`` file (HDF5, written by
``nir.write``) or a ``nir.NIRGraph`` and returns a validated :class:`~spidec.ir.Graph`. NIR is how
snnTorch, Norse, Sinabs, Rockpool, SpikingJelly and Lava exchange networks; it needs the optional
``nir`` package (``pip install 'spidec[nir]'``).

What is read exactly: ``Input``; ``Affine``/``Linear`` (a dense synapse; the bias goes into the
population or readout it feeds); ``Conv2d`` (groups 1, dilation 1; 'same' padding with stride 1,
an even kernel padded like PyTorch); ``AvgPool2d``; ``SumPool2d`` (an average pool times k*k);
``Flatten`` (per-sample dimensions, as NIR's type inference reads them); ``Scale``; a ``Delay`` of
one time step (a ``delay=1`` synapse); nested graphs (inlined, their nodes named ``sub.node``);
an ``Output`` after a linear chain (a readout).

Units. spidec's population rate is ``clamp(W_r a + b_r, 0, 1)`` (rate units); its spiking neuron
adds ``V * I_r`` per step, fires at ``vth`` and subtracts ``V``, so its rate is ``I_r`` clamped. A
NIR ``IF`` integrates ``dv/dt = r I``; one Euler step of length ``dt`` adds ``r dt I``, and with the
reset read as a subtraction of ``v_threshold - v_reset`` it fires at the rate
``r dt I / (v_threshold - v_reset)``, clamped to one spike a step. So every synapse into the
population and its bias are multiplied by the rate gain

    IF:       g = r dt / (v_threshold - v_reset)
    LIF:      g = r dt / (tau (v_threshold - v_reset)),   leak = 1 - dt / tau,
              plus the bias dt v_leak / (tau (v_threshold - v_reset))
    CubaLIF:  g = w_in r dt / (tau_mem (v_threshold - v_reset))   (tau_syn dropped: the synaptic
              current is taken at its steady state w_in I), leak = 1 - dt / tau_mem

(elementwise; ``tau`` must be one value per node, giving ``leak`` in (0, 1]). NIR stores no time
step: pass ``dt`` (seconds). Without it, an ``IF`` with ``r = 1`` is read per step (``dt = 1``
time unit, as Sinabs and Norse write it) and a ``Delay`` of 1 is one step; everything else that
needs ``dt`` is refused. snnTorch exports assume ``dt = 1e-4`` (``r = tau / dt``), SpikingJelly
writes ``IF r = 1 / dt``. A file written by :func:`spidec.to_nir` records its ``dt`` and thresholds
(metadata ``spidec.dt``, ``spidec.vth``), which are used when no ``dt`` is given.

Accepted with one :class:`~spidec.SpidecWarning` each, naming the node: every IF/LIF/CubaLIF (its
mapping and gain); NIR's reset to ``v_reset``, read as a subtraction (once per graph); a cycle
without a ``Delay`` node, read as a one-step delay on its *back edge*; an ``Output`` that reads
spikes (their rates become the logits); an ``LI``/``CubaLI`` feeding an ``Output`` (its steady
state ``v_leak + r w_in I`` is the readout).

The back edge of a cycle without a Delay is chosen deterministically: a depth-first search over
the populations, started from those an input feeds and then from the rest, visiting nodes and
their successors in the NIR graph's node order (alphabetical for a file read by ``nir.read``); a
synapse that reaches a population on the current search path closes a cycle and reads the
previous step's spikes. (NIRTorch's interpreter reads such an edge the same way.)

Refused with a :class:`~spidec.SpidecError` naming the node and the fix: parameters that need
``dt`` when none is given, a Delay other than one step, a loop of linear nodes only, ``I``,
``Threshold``, ``Conv1d``, grouped or dilated convolutions, an LI feeding anything but an Output,
non-uniform time constants, ``v_threshold <= v_reset``, an unreadable file (nir's error in one
line).
"""

from __future__ import annotations

import faulthandler
import math
import os
import pickle
import select
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SpidecError, SpidecWarning
from ..ir import Graph, Neuron, Population
from ..limits import check_neurons, size_of
from ..ops import AvgPool2d, Conv2d, Dense, Flatten, LinearOp, Reshape, Scale, Shape, fmt_shape
from ._lower import sanitize, simplify, unique_name

INSTALL = "pip install 'spidec[nir]'"
EXPORTERS = ("snnTorch exports assume dt = 1e-4 s (LIF tau = dt/(1-beta), r = tau/dt); SpikingJelly writes "
             "IF r = 1/dt; Sinabs and Norse write IF r = 1, one step per time unit")
SPIKING = ("IF", "LIF", "CubaLIF")
LEAKY_INTEGRATORS = ("LI", "CubaLI")
LINEAR = ("Affine", "Linear", "Conv2d", "AvgPool2d", "SumPool2d", "Flatten", "Scale", "Delay")
REFUSED = {
    "I": ("an integrator without a threshold has no rate", "use IF (an integrator that fires)"),
    "Threshold": ("a threshold without a membrane has no rate equilibrium", "use IF or LIF neurons"),
    "Conv1d": ("spidec convolves in 2-D only", "export the layer as a Conv2d on [C, 1, L] (kernel 1 x k)"),
}
DTYPE = np.float32
READ_TIMEOUT = 60.0  # seconds for nir.read on one file
MAX_SIZE = 1 << 26  # values per sample of one node: more is a corrupt file, not a network
_READ_ERRORS = (ValueError, TypeError, IndexError, KeyError, AttributeError, ZeroDivisionError, OverflowError,
                FloatingPointError, AssertionError)


def _import_nir() -> Any:
    try:
        import nir
    except ImportError:
        raise SpidecError(f"reading NIR graphs needs the nir package: {INSTALL}") from None
    return nir


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def from_nir(source: Any, *, dt: float | None = None, name: str | None = None) -> Graph:
    """Read a NIR graph (a ``.nir`` file or a ``nir.NIRGraph``) into the spidec IR.

    ``dt``: the simulation time step in seconds that the NIR time constants refer to (NIR stores
    none; snnTorch assumes 1e-4). ``name``: the graph's name (default: the file's stem).
    See the module docstring for what is read exactly, approximated (with a warning) or refused.
    """
    nir = _import_nir()
    if dt is not None:
        try:
            dt = float(dt)
        except (TypeError, ValueError):
            raise SpidecError(f"dt must be a time step in seconds, got {dt!r}") from None
        if not (math.isfinite(dt) and dt > 0):
            raise SpidecError(f"dt must be a positive time step in seconds, got {dt}")
    if isinstance(source, nir.NIRGraph):
        graph, where, stem = source, None, "nir_model"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        where, stem = str(path), path.stem
        if not path.is_file():
            raise SpidecError("NIR file not found", file=where)
        graph = _read_file(nir, path)
        if not isinstance(graph, nir.NIRGraph):
            raise SpidecError(f"the file holds a {type(graph).__name__}, not a NIR graph", file=where)
    else:
        raise SpidecError(f"from_nir reads a .nir file or a nir.NIRGraph, got {type(source).__name__}")
    meta = getattr(graph, "metadata", None) or {}
    if dt is None and "spidec.dt" in meta:  # a file spidec.to_nir wrote says its time step
        try:
            dt = float(np.asarray(meta["spidec.dt"]).reshape(()))
        except (TypeError, ValueError):
            dt = None
        if dt is not None and not (math.isfinite(dt) and dt > 0):
            dt = None
    reader = _Reader(graph, dt, where, sanitize(name or stem, "model"), nir.NIRGraph)
    try:
        g = reader.run()
    except RecursionError:
        raise SpidecError("the NIR graph is nested or chained too deeply to read", file=where) from None
    for message in reader.warnings:  # only for a graph that was read: a refusal stays one line
        warnings.warn(message, SpidecWarning, stacklevel=3)
    return g


def _read_file(nir: Any, path: Path) -> Any:
    """``nir.read(path)``, in a forked child where the system has fork: HDF5 can loop forever or
    crash on a corrupt file (found by fuzzing), and a child can be stopped after
    :data:`READ_TIMEOUT` seconds. Every failure is one SpidecError line."""
    hint = "a .nir file is the HDF5 file nir.write writes (nir 1.0.8)"
    if not hasattr(os, "fork"):
        try:
            return nir.read(str(path))
        except Exception as e:  # nir and h5py raise anything on a broken file: one line, no traceback
            raise SpidecError(f"cannot read the NIR file ({_one_line(e)})", file=str(path), hint=hint) from None
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: read, send the graph (or the error's line) back, exit without cleanup
        code = 0
        try:
            os.close(rfd)
            faulthandler.disable()  # a crash is reported by the parent, in one line
            try:
                payload = pickle.dumps(("graph", nir.read(str(path))))
            except BaseException as e:
                payload = pickle.dumps(("error", _one_line(e)))
            with os.fdopen(wfd, "wb") as f:
                f.write(payload)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    chunks, deadline, status = [], time.monotonic() + READ_TIMEOUT, None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([rfd], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                raise SpidecError(f"reading the NIR file did not finish within {READ_TIMEOUT:g} s (HDF5 loops on "
                                  "some corrupt files)", file=str(path), hint=hint)
            chunk = os.read(rfd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(rfd)
        status = os.waitpid(pid, 0)[1]
    if not chunks:
        why = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit status {os.WEXITSTATUS(status)}"
        raise SpidecError(f"cannot read the NIR file (the HDF5 reader crashed: {why})", file=str(path), hint=hint)
    kind, value = pickle.loads(b"".join(chunks))  # written by the child above, never by the file
    if kind == "error":
        raise SpidecError(f"cannot read the NIR file ({value})", file=str(path), hint=hint)
    return value


def load_nir(path: str | os.PathLike, *, dt: float | None = None, name: str | None = None) -> Graph:
    """``spidec.load`` for ``.nir`` files."""
    return from_nir(path, dt=dt, name=name)


# ------------------------------------------------------------------ values

@dataclass(frozen=True)
class _Term:
    """A source's output (an input's value, a population's spikes) through linear ops."""

    src: str  # spidec node name
    ops: tuple[LinearOp, ...]
    delay: int
    via: tuple[str, ...]  # the NIR nodes it passes through (names of synapses, messages)


@dataclass(frozen=True)
class _Value:
    """``sum of terms + offset`` of per-sample ``shape``."""

    shape: Shape
    terms: tuple[_Term, ...]
    offset: np.ndarray | None  # float64, full shape


@dataclass
class _Pop:
    name: str  # spidec population name
    drive: _Value
    neuron: Neuron
    gain: np.ndarray  # float64, population shape
    bias: np.ndarray | None  # extra bias in rate units (LIF v_leak)


def _kind(node: Any) -> str:
    return type(node).__name__


def _array(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


def _str(value: Any) -> str | None:
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf8", "replace")
    if isinstance(value, (str, np.str_)):
        return str(value)
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "SUO":
        return _str(value.item())
    return None


def _ints(value: Any, n: int, what: str) -> tuple[int, ...]:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf" or arr.size not in (1, n):
        raise ValueError(f"{what} must be an integer or {n} integers, got {value!r}")
    flat = np.broadcast_to(arr.reshape(-1), (n,)) if arr.size == 1 else arr.reshape(-1)
    if not np.all(np.isfinite(flat)) or np.any(flat != np.round(flat)):
        raise ValueError(f"{what} must hold integers, got {value!r}")
    return tuple(int(v) for v in flat)


class _Reader:
    def __init__(self, graph: Any, dt: float | None, where: str | None, name: str, graph_type: type) -> None:
        self.source = graph
        self.dt = dt
        self.where = where
        self.name = name
        self.graph_type = graph_type
        self.nodes: dict[str, Any] = {}  # flattened NIR node name -> node
        self.kinds: dict[str, str] = {}  # its class name; "pass" for a nested graph's Input/Output
        self.preds: dict[str, list[str]] = {}
        self.succs: dict[str, list[str]] = {}
        self.values: dict[str, _Value] = {}
        self.pops: dict[str, _Pop] = {}  # NIR neuron node -> population
        self.names: set[str] = set()
        self.spidec_name: dict[str, str] = {}  # NIR input/neuron/output node -> spidec node
        self.nir_name: dict[str, str] = {}  # the reverse
        self.shapes: dict[str, Shape] = {}  # NIR neuron node -> population shape
        self.reading: set[str] = set()
        self.warnings: list[str] = []

    # -------------------------------------------------------------- messages
    def error(self, node: str | None, message: str, hint: str | None = None) -> SpidecError:
        return SpidecError(message, file=self.where, node=node, hint=hint)

    def warn(self, message: str) -> None:
        self.warnings.append((f"{self.where}: " if self.where else "") + message)

    def label(self, node: str) -> str:
        kind = self.kinds[node]
        return f"node '{node}' ({kind})" if kind != "pass" else f"node '{node}'"

    def unique(self, hint: str, fallback: str) -> str:
        return unique_name(hint, fallback, self.names)

    # -------------------------------------------------------------- structure
    def _flatten(self, graph: Any, prefix: str, depth: int) -> tuple[list[str], list[str]]:
        """Inline ``graph`` under ``prefix``; return its Input and Output node names."""
        where = f"the nested graph '{prefix.rstrip('.')}'" if prefix else "the NIR graph"
        if depth > 16:
            raise self.error(None, f"{where} is nested more than 16 levels deep")
        nodes = getattr(graph, "nodes", None)
        edges = getattr(graph, "edges", None)
        if not isinstance(nodes, dict) or edges is None:
            raise self.error(None, f"{where} has no nodes and edges")
        ends: dict[str, tuple[list[str], list[str]]] = {}
        ins, outs = [], []
        for key, node in nodes.items():
            if not isinstance(key, str) or not key:
                raise self.error(None, f"{where} has a node named {key!r}; NIR node names are non-empty strings")
            full = prefix + key
            if isinstance(node, self.graph_type):
                ends[key] = self._flatten(node, full + ".", depth + 1)
                continue
            if full in self.nodes:
                raise self.error(full, "is named twice once nested graphs are inlined", hint="rename one of them")
            kind = _kind(node)
            if prefix and kind in ("Input", "Output"):
                kind = "pass"  # a nested graph's ends only pass values through
                (ins if _kind(node) == "Input" else outs).append(full)
            self.nodes[full], self.kinds[full] = node, kind
            self.preds[full], self.succs[full] = [], []

        def resolve(end: Any, as_src: bool) -> list[str]:
            end = _str(end) if not isinstance(end, str) else end
            if end in ends:
                return ends[end][1] if as_src else ends[end][0]
            if end is not None and end in nodes:
                return [prefix + end]
            if end is not None and prefix + end in self.nodes:  # "sub.node" into a nested graph
                return [prefix + end]
            raise self.error(None, f"{where} has an edge {'from' if as_src else 'to'} {end!r}, which is no node "
                             "of the graph")

        seen = set()
        for edge in edges:
            try:
                a, b = edge
            except (TypeError, ValueError):
                raise self.error(None, f"{where} has an edge {edge!r}, expected (source, target)") from None
            for src in resolve(a, True):
                for dst in resolve(b, False):
                    if (src, dst) in seen:
                        raise self.error(dst, f"receives the edge from '{src}' twice", hint="remove the duplicate")
                    seen.add((src, dst))
                    self.preds[dst].append(src)
                    self.succs[src].append(dst)
        return ins, outs

    def _check_structure(self) -> None:
        for n, kind in self.kinds.items():
            if kind in REFUSED:
                why, fix = REFUSED[kind]
                raise self.error(n, f"is a NIR {kind}: {why}", hint=fix)
            if kind not in (*SPIKING, *LEAKY_INTEGRATORS, *LINEAR, "Input", "Output", "pass"):
                raise self.error(n, f"is a NIR {kind}, which spidec does not read", hint="spidec reads Input, "
                                 "Output, Affine, Linear, Conv2d, AvgPool2d, SumPool2d, Flatten, Scale, Delay, IF, "
                                 "LIF, CubaLIF and LI/CubaLI before an Output")
            if kind == "Input" and self.preds[n]:
                raise self.error(n, f"is an Input but receives edges from {', '.join(self.preds[n])}")
            if kind == "Output" and self.succs[n]:
                raise self.error(n, f"is an Output but feeds {', '.join(self.succs[n])}",
                                 hint="read the node before the Output instead")
            if kind in LEAKY_INTEGRATORS:
                others = [s for s in self.succs[n] if self.kinds[s] != "Output"]
                if others:
                    raise self.error(n, f"is a NIR {kind} (a leaky integrator without spikes) feeding "
                                     f"{', '.join(repr(s) for s in others)}; spidec reads it only as a readout "
                                     "before an Output", hint="use a spiking LIF/CubaLIF there, or feed the "
                                     "Output directly")
        if not any(k == "Input" for k in self.kinds.values()):
            raise self.error(None, "the NIR graph has no Input node")
        if not any(k == "Output" for k in self.kinds.values()):
            raise self.error(None, "the NIR graph has no Output node; spidec trains a readout",
                             hint="add an Output after the last layer")

    # -------------------------------------------------------------- values
    def value(self, n: str, stack: tuple[str, ...] = ()) -> _Value:
        if n in self.values:
            return self.values[n]
        kind = self.kinds[n]
        if kind in SPIKING:  # a population's spikes; its drive is read separately
            v = _Value(self.shape_of_pop(n), (_Term(self.spidec_name[n], (), 0, ()),), None)
            self.values[n] = v
            return v
        if n in stack:
            loop = [*stack[stack.index(n):], n]
            raise self.error(n, f"lies on a loop of linear nodes only ({' -> '.join(loop)}): a loop without a "
                             "neuron has no rate equilibrium", hint="put a spiking neuron (IF/LIF) in the loop")
        try:
            v = self._value(n, kind, (*stack, n))
        except SpidecError:
            raise
        except (*_READ_ERRORS, MemoryError) as e:
            raise self.error(n, f"cannot read its {kind} parameters ({_one_line(e)})") from None
        self.values[n] = v
        return v

    def inputs_of(self, n: str, stack: tuple[str, ...]) -> _Value:
        preds = self.preds[n]
        if not preds:
            raise self.error(n, f"{self.label(n)} has no input", hint="connect it, or remove it")
        vals = [self.value(p, stack) for p in preds]
        shape = vals[0].shape
        for p, v in zip(preds, vals):
            if v.shape != shape:
                raise self.error(n, f"sums inputs of shapes {fmt_shape(shape)} ('{preds[0]}') and "
                                 f"{fmt_shape(v.shape)} ('{p}'); NIR adds inputs of equal shape")
        offsets = [v.offset for v in vals if v.offset is not None]
        offset = sum(offsets[1:], offsets[0]) if offsets else None
        return _Value(shape, tuple(t for v in vals for t in v.terms), offset)

    def linear(self, v: _Value, op: LinearOp, n: str) -> _Value:
        try:
            shape = tuple(op.shape_out(v.shape))
            check_neurons(size_of(shape), f"its output of shape {fmt_shape(shape)}")  # (before numpy allocates it)
        except SpidecError as e:
            raise self.error(n, f"{self.label(n)}: {e.message}", e.hint) from None
        terms = tuple(_Term(t.src, (*t.ops, op), t.delay, (*t.via, n)) for t in v.terms)
        offset = None if v.offset is None else op.apply(v.offset[None].astype(np.float64))[0]
        return _Value(shape, terms, offset)

    def _value(self, n: str, kind: str, stack: tuple[str, ...]) -> _Value:
        node = self.nodes[n]
        if kind == "Input":
            return _Value(self.input_shape(n), (_Term(self.spidec_name[n], (), 0, ()),), None)
        v = self.inputs_of(n, stack)
        if kind in ("pass", "Output"):
            return v
        if kind in ("Affine", "Linear"):
            w = _array(node.weight)
            if w.ndim != 2:
                raise self.error(n, f"{self.label(n)} has a weight of shape {fmt_shape(w.shape)}; spidec reads "
                                 "[out, in] matrices")
            if len(v.shape) != 1:
                batch = len(v.shape) == 2 and v.shape[0] == 1
                raise self.error(n, f"{self.label(n)} applies a weight of shape {fmt_shape(w.shape)} to samples "
                                 f"of shape {fmt_shape(v.shape)}; spidec reads dense layers on [n]",
                                 hint="the shapes seem to hold a batch dimension: export without it (snnTorch: "
                                 "export_to_nir(net, sample, ignore_dims=[0]))" if batch else
                                 "add a Flatten before it")
            out = self.linear(v, Dense(w.astype(DTYPE)), n)
            if kind == "Affine" and getattr(node, "bias", None) is not None:
                b = np.broadcast_to(_array(node.bias), out.shape)
                out = _Value(out.shape, out.terms, b.copy() if out.offset is None else out.offset + b)
            return out
        if kind == "Conv2d":
            return self.conv2d(n, node, v)
        if kind in ("AvgPool2d", "SumPool2d"):
            k = _ints(node.kernel_size, 2, "kernel_size")
            s = _ints(node.stride, 2, "stride") if getattr(node, "stride", None) is not None else k
            p = _ints(node.padding, 2, "padding") if getattr(node, "padding", None) is not None else (0, 0)
            try:
                op = AvgPool2d(k, s, p, True)
            except SpidecError as e:
                raise self.error(n, f"{self.label(n)}: {e.message}", e.hint) from None
            out = self.linear(v, op, n)
            return out if kind == "AvgPool2d" else self.linear(out, Scale(float(k[0] * k[1])), n)
        if kind == "Flatten":
            return self.flatten(n, node, v)
        if kind == "Scale":
            f = _array(node.scale)
            if not np.all(np.isfinite(f)):
                raise self.error(n, f"{self.label(n)} holds NaN or inf factors")
            out = self.linear(v, Scale(f.astype(DTYPE)) if f.ndim else Scale(float(f)), n)  # checks the shape
            if f.size and np.all(f == f.reshape(-1)[0]):  # one factor: a scalar, folded into the next weight
                terms = tuple(_Term(t.src, (*t.ops[:-1], Scale(float(f.reshape(-1)[0]))), t.delay, t.via)
                              for t in out.terms)
                out = _Value(out.shape, terms, out.offset)
            return out
        if kind == "Delay":
            return self.delay(n, node, v)
        raise AssertionError(f"unhandled NIR node kind {kind}")  # pragma: no cover - _check_structure

    def conv2d(self, n: str, node: Any, v: _Value) -> _Value:
        w = _array(node.weight)
        if w.ndim != 4:
            raise self.error(n, f"{self.label(n)} has a weight of shape {fmt_shape(w.shape)}; a 2-D convolution's "
                             "weight is [C_out, C_in, kh, kw]")
        groups = int(np.asarray(getattr(node, "groups", 1)).reshape(()))
        dilation = _ints(getattr(node, "dilation", 1), 2, "dilation")
        if groups != 1 or dilation != (1, 1):
            raise self.error(n, f"{self.label(n)} is a {'grouped' if groups != 1 else 'dilated'} convolution "
                             f"(groups={groups}, dilation={list(dilation)}); spidec's conv2d has groups 1 and "
                             "dilation 1", hint="export the layer as a dense convolution (groups=1) without "
                             "dilation")
        stride = _ints(node.stride, 2, "stride")
        kh, kw = int(w.shape[2]), int(w.shape[3])
        pad_text = _str(node.padding)
        if pad_text == "valid":
            pads = (0, 0, 0, 0)
        elif pad_text == "same":
            if stride != (1, 1):
                raise self.error(n, f"{self.label(n)} pads 'same' with stride {list(stride)}",
                                 hint="export explicit padding")
            top, left = (kh - 1) // 2, (kw - 1) // 2
            pads = (top, left, kh - 1 - top, kw - 1 - left)
        elif pad_text is not None:
            raise self.error(n, f"{self.label(n)} has padding {pad_text!r}; NIR pads 'same', 'valid' or by integers")
        else:
            ph, pw = _ints(node.padding, 2, "padding")
            pads = (ph, pw, ph, pw)
        if min(pads) < 0 or min(stride) < 1:
            raise self.error(n, f"{self.label(n)} has stride {list(stride)} and padding {list(pads)}")
        top, left, bottom, right = pads
        if (top, left) != (bottom, right):  # an even kernel padded 'same': zero-pad the extra row/column
            from ..ops import Pad

            v = self.linear(v, Pad(((0, 0), (0, bottom - top), (0, right - left))), n)
        try:
            op = Conv2d(w.astype(DTYPE), stride, (top, left))
        except SpidecError as e:
            raise self.error(n, f"{self.label(n)}: {e.message}", e.hint) from None
        out = self.linear(v, op, n)
        bias = getattr(node, "bias", None)
        if bias is not None and np.asarray(bias).size:
            b = np.broadcast_to(_array(bias).reshape(-1, 1, 1), out.shape)
            out = _Value(out.shape, out.terms, b.copy() if out.offset is None else out.offset + b)
        return out

    def flatten(self, n: str, node: Any, v: _Value) -> _Value:
        nd = len(v.shape)
        start = int(np.asarray(node.start_dim).reshape(()))
        end = int(np.asarray(node.end_dim).reshape(()))
        start, end = start + nd if start < 0 else start, end + nd if end < 0 else end
        if not 0 <= start <= end < nd:
            raise self.error(n, f"{self.label(n)} flattens dimensions {int(node.start_dim)}..{int(node.end_dim)} "
                             f"of samples shaped {fmt_shape(v.shape)} (NIR's dimensions are per sample)")
        shape = v.shape[:start] + (math.prod(v.shape[start:end + 1]),) + v.shape[end + 1:]
        if shape == v.shape:
            return v
        return self.linear(v, Flatten() if len(shape) == 1 else Reshape(shape), n)

    def delay(self, n: str, node: Any, v: _Value) -> _Value:
        d = _array(node.delay)
        step = 1.0 if self.dt is None else self.dt
        if d.size == 0 or not np.all(np.isfinite(d)) or not np.allclose(d, step, rtol=1e-6, atol=0):
            got = f"{d.reshape(-1)[0]:g}" if d.size and np.all(d == d.reshape(-1)[0]) else \
                f"{d.min():g}..{d.max():g}" if d.size else "nothing"
            raise self.error(n, f"{self.label(n)} delays by {got}, not one time step "
                             f"({'dt = ' + format(self.dt, 'g') if self.dt else '1 without dt'}); spidec's "
                             "synapses delay by 0 or 1 step", hint="pass the dt the delay was written for "
                             "(--dt SECONDS), or use one-step delays" if self.dt is None else
                             "use one-step delays (chain populations for longer ones)")
        terms = []
        for t in v.terms:
            if t.delay >= 1:
                raise self.error(n, f"{self.label(n)} delays a signal that is already delayed (from '{t.src}'): "
                                 "two steps", hint="spidec's synapses delay by 0 or 1 step")
            if self.kinds.get(self.nir_of(t.src)) == "Input":
                raise self.error(n, f"{self.label(n)} delays the input '{t.src}'; spidec feeds inputs without delay",
                                 hint="remove the Delay (delays belong on recurrent synapses)")
            terms.append(_Term(t.src, t.ops, t.delay + 1, (*t.via, n)))
        return _Value(v.shape, tuple(terms), v.offset)

    def nir_of(self, spidec: str) -> str | None:
        return self.nir_name.get(spidec)

    def input_shape(self, n: str) -> Shape:
        t = getattr(self.nodes[n], "input_type", None)
        shape = t.get("input") if isinstance(t, dict) else None
        try:
            out = tuple(int(s) for s in np.asarray(shape).reshape(-1)) if shape is not None else None
        except (TypeError, ValueError):
            out = None
        if not out or any(s < 1 for s in out):
            raise self.error(n, f"Input '{n}' has no valid shape ({shape!r})", hint="give the Input node its "
                             "per-sample input_type")
        if math.prod(out) > MAX_SIZE:
            raise self.error(n, f"Input '{n}' has {math.prod(out):,} values per sample, more than spidec reads "
                             f"({MAX_SIZE:,})")
        return out

    # -------------------------------------------------------------- neurons
    def shape_of_pop(self, n: str) -> Shape:
        """A population's shape: its parameters' shape, else its input type, else its input's shape."""
        if n in self.shapes:
            return self.shapes[n]
        node, shape = self.nodes[n], None
        for p in ("v_threshold", "r", "tau", "tau_mem"):
            a = getattr(node, p, None)
            if a is not None and np.ndim(a) > 0:
                shape = tuple(int(s) for s in np.shape(a))
                break
        if shape is None:
            t = getattr(node, "input_type", None)
            given = t.get("input") if isinstance(t, dict) else None
            if given is not None and np.ndim(given) == 1 and np.size(given) > 0:
                shape = tuple(int(s) for s in np.asarray(given))
        if shape is None:
            if n in self.reading:
                raise self.error(n, f"{self.label(n)} lies on a cycle and its shape is unknown (scalar "
                                 "parameters, no input type)", hint="give the neuron parameters of its full shape")
            self.reading.add(n)
            try:
                shape = self.inputs_of(n, ()).shape
            finally:
                self.reading.discard(n)
        if not shape or any(s < 1 for s in shape) or math.prod(shape) > MAX_SIZE:
            raise self.error(n, f"{self.label(n)} has the shape {list(shape)}")
        self.shapes[n] = shape
        return shape

    def params(self, n: str, shape: Shape, *names: str) -> list[np.ndarray]:
        node, out = self.nodes[n], []
        for p in names:
            raw = getattr(node, p, None)
            if raw is None:
                raise self.error(n, f"{self.label(n)} has no {p}")
            a = _array(raw)
            try:
                a = np.broadcast_to(a, shape)
            except ValueError:
                raise self.error(n, f"{self.label(n)}: its {p} has shape {fmt_shape(a.shape)} but its input "
                                 f"current has shape {fmt_shape(shape)}") from None
            if not np.all(np.isfinite(a)):
                raise self.error(n, f"{self.label(n)}: its {p} holds NaN or inf values")
            out.append(a)
        return out

    def need_dt(self, n: str, what: str) -> SpidecError:
        return self.error(n, f"{self.label(n)}: {what}, and NIR stores no time step: spidec needs dt to read it "
                          f"({EXPORTERS})", hint="pass the exporter's time step: --dt SECONDS, or "
                          "spidec.from_nir(path, dt=SECONDS)")

    def time_constant(self, n: str, tau: np.ndarray, what: str) -> float:
        if self.dt is None:
            raise self.need_dt(n, f"its {what} is in seconds")
        if not np.all(tau == tau.reshape(-1)[0]):
            raise self.error(n, f"{self.label(n)} has non-uniform time constants ({what} {tau.min():g}.."
                             f"{tau.max():g}); a spidec population has one leak",
                             hint="use one time constant per layer, or split the layer")
        value = float(tau.reshape(-1)[0])
        leak = 1.0 - self.dt / value if value > 0 else -math.inf
        if not 0.0 < leak <= 1.0:
            raise self.error(n, f"{self.label(n)}: {what} = {value:g} with dt = {self.dt:g} gives the leak "
                             f"1 - dt/{what} = {leak:g}, outside (0, 1]", hint=f"{what} must exceed dt")
        return leak

    def spidec_vth(self, n: str) -> float:
        """The threshold a file spidec wrote records (``spidec.vth``; rates do not depend on it);
        1 otherwise."""
        try:
            v = float(np.asarray((getattr(self.nodes[n], "metadata", None) or {}).get("spidec.vth", 1.0)).reshape(()))
        except (TypeError, ValueError):
            return 1.0
        return v if math.isfinite(v) and v > 0 else 1.0

    def neuron(self, n: str, drive: _Value) -> _Pop:
        kind, shape = self.kinds[n], drive.shape
        try:
            thr, reset = self.params(n, shape, "v_threshold", "v_reset")
        except _READ_ERRORS as e:
            raise self.error(n, f"cannot read its {kind} parameters ({_one_line(e)})") from None
        span = thr - reset
        if np.any(span <= 0):
            raise self.error(n, f"{self.label(n)} has v_threshold <= v_reset (v_threshold - v_reset as low as "
                             f"{span.min():g}); its neurons would fire forever", hint="v_threshold must exceed "
                             "v_reset")
        extra = None
        if kind == "IF":
            (r,) = self.params(n, shape, "r")
            if self.dt is None and not np.all(r == 1):
                raise self.need_dt(n, f"its r = {r.reshape(-1)[0]:g} is per second (the per-step gain is r dt)")
            step = 1.0 if self.dt is None else self.dt
            gain = r * step / span
            neuron, how = Neuron(vth=self.spidec_vth(n)), "spidec's IF neuron"
        else:
            tau_name = "tau" if kind == "LIF" else "tau_mem"
            r, tau, v_leak = self.params(n, shape, "r", tau_name, "v_leak")
            leak = self.time_constant(n, tau, tau_name)
            dt = float(self.dt)  # type: ignore[arg-type]
            gain = r * dt / (tau * span)
            if kind == "CubaLIF":
                (w_in,) = self.params(n, shape, "w_in")
                gain = gain * w_in
            if np.any(v_leak != 0):
                extra = dt * v_leak / (tau * span)
            vth = self.spidec_vth(n)
            neuron = Neuron(vth=vth) if leak == 1.0 else Neuron("LIF", vth=vth, leak=leak)
            how = f"spidec's {neuron.model} neuron (leak 1 - dt/{tau_name} = {leak:.6g})"
        formula = {"IF": "r dt / (v_threshold - v_reset)", "LIF": "r dt / (tau (v_threshold - v_reset))",
                   "CubaLIF": "w_in r dt / (tau_mem (v_threshold - v_reset))"}[kind]
        g = f"{gain.reshape(-1)[0]:.6g}" if np.all(gain == gain.reshape(-1)[0]) else \
            f"{gain.min():.4g}..{gain.max():.4g}"
        dt_text = "dt = 1 step (no dt given)" if self.dt is None else f"dt = {self.dt:g} s"
        syn = "; tau_syn dropped: the synaptic current is taken at its steady state w_in I" \
            if kind == "CubaLIF" else ""
        self.warn(f"node '{n}' ({kind}): read as {how}, its input currents scaled by the rate gain {formula} = {g} "
                  f"({dt_text}){syn}")
        return _Pop(self.spidec_name[n], drive, neuron, gain, extra)

    # -------------------------------------------------------------- the whole graph
    def run(self) -> Graph:
        self._flatten(self.source, "", 0)
        self._check_structure()
        order = list(self.nodes)
        for n in order:  # node names first, so that synapse names never take them
            kind = self.kinds[n]
            if kind == "Input":
                self.spidec_name[n] = self.unique(n, "x")
            elif kind in SPIKING:
                self.spidec_name[n] = self.unique(n, "p")
            elif kind == "Output":
                self.spidec_name[n] = self.unique(n, "y")
        self.nir_name = {s: k for k, s in self.spidec_name.items()}
        neurons = [n for n in order if self.kinds[n] in SPIKING]
        for n in neurons:  # a population's value for its consumers is its own term: no recursion here
            drive = self.inputs_of(n, ())
            shape = self.shape_of_pop(n)
            if drive.shape != shape:
                raise self.error(n, f"{self.label(n)} has neurons of shape {fmt_shape(shape)} but an input current "
                                 f"of shape {fmt_shape(drive.shape)}")
            try:
                self.pops[n] = self.neuron(n, drive)
            except _READ_ERRORS as e:
                raise self.error(n, f"cannot read its {self.kinds[n]} parameters ({_one_line(e)})") from None
        if neurons:
            self.warn(f"NIR's {', '.join(sorted({self.kinds[n] for n in neurons}))} neurons reset to v_reset; spidec "
                      "resets by subtracting v_threshold - v_reset, as snnTorch and Sinabs do while writing "
                      "v_reset = 0: the reset is read as a subtraction (the only reading under which spike rates "
                      "reach the rate equilibrium)")
        readouts = {}
        for n in order:
            if self.kinds[n] == "Output":
                readouts[n] = self._readout(n)
        self._break_cycles(neurons)
        return self._build(order, neurons, readouts)

    def _readout(self, n: str) -> _Value:
        vals, spikes = [], []
        for p in self.preds[n]:
            kind = self.kinds[p]
            if kind in LEAKY_INTEGRATORS:
                vals.append(self._steady_state(p))
            else:
                v = self.value(p)
                vals.append(v)
                spikes += [p for t in v.terms if not t.ops and self.nir_of(t.src) in self.pops]
        if not vals:
            raise self.error(n, f"Output '{n}' has no input", hint="connect the last layer to it")
        shape = vals[0].shape
        if any(v.shape != shape for v in vals):
            raise self.error(n, f"Output '{n}' sums inputs of different shapes "
                             f"({', '.join(fmt_shape(v.shape) for v in vals)})")
        offsets = [v.offset for v in vals if v.offset is not None]
        value = _Value(shape, tuple(t for v in vals for t in v.terms),
                       sum(offsets[1:], offsets[0]) if offsets else None)
        if not any(self.nir_of(t.src) in self.pops for t in value.terms):
            raise self.error(n, f"Output '{n}' reads no spiking neuron; a spidec readout reads population rates",
                             hint="put an IF/LIF layer before the Output")
        if spikes:
            self.warn(f"node '{n}' (Output): reads the spikes of {', '.join(repr(s) for s in dict.fromkeys(spikes))} "
                      "directly: their rates become the readout's logits")
        return value

    def _steady_state(self, n: str) -> _Value:
        kind = self.kinds[n]
        try:
            v = self.inputs_of(n, ())
            r, v_leak = self.params(n, v.shape, "r", "v_leak")
            gain = r * (self.params(n, v.shape, "w_in")[0] if kind == "CubaLI" else 1.0)
        except SpidecError:
            raise
        except _READ_ERRORS as e:
            raise self.error(n, f"cannot read its {kind} parameters ({_one_line(e)})") from None
        factor: Any = float(gain.reshape(-1)[0]) if np.all(gain == gain.reshape(-1)[0]) else gain.astype(DTYPE)
        out = self.linear(v, Scale(factor), n)
        offset = v_leak if out.offset is None else out.offset + v_leak
        formula = "v_leak + r w_in I" if kind == "CubaLI" else "v_leak + r I"
        self.warn(f"node '{n}' ({kind}): a leaky integrator before an Output is read at its steady state "
                  f"{formula} (its time constants do not change the steady state)")
        return _Value(out.shape, out.terms, offset if np.any(offset != 0) else out.offset)

    def _break_cycles(self, neurons: list[str]) -> None:
        """Give the back edges of cycles without a Delay a one-step delay (see the module docstring)."""
        index = {n: i for i, n in enumerate(self.nodes)}
        by_name = {p.name: n for n, p in self.pops.items()}
        succ: dict[str, set[str]] = {n: set() for n in neurons}
        for n in neurons:
            for t in self.pops[n].drive.terms:
                if t.delay == 0 and t.src in by_name:
                    succ[by_name[t.src]].add(n)
        ordered = {n: sorted(s, key=index.__getitem__) for n, s in succ.items()}
        fed = [n for n in neurons if any(t.src not in by_name for t in self.pops[n].drive.terms)]
        back: set[tuple[str, str]] = set()
        visited: set[str] = set()
        for start in [*fed, *neurons]:
            if start in visited:
                continue
            visited.add(start)
            path, stack = {start}, [(start, iter(ordered[start]))]
            while stack:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    stack.pop()
                    path.discard(node)
                elif nxt in path:
                    back.add((node, nxt))
                elif nxt not in visited:
                    visited.add(nxt)
                    path.add(nxt)
                    stack.append((nxt, iter(ordered[nxt])))
        for n in neurons:
            pop = self.pops[n]
            terms = []
            for t in pop.drive.terms:
                if t.delay == 0 and t.src in by_name and (by_name[t.src], n) in back:
                    via = f" through {', '.join(repr(v) for v in t.via)}" if t.via else ""
                    self.warn(f"node '{n}' ({self.kinds[n]}): the cycle through '{by_name[t.src]}' -> '{n}' has no "
                              f"Delay node: its back edge '{by_name[t.src]}' -> '{n}'{via} (the edge that closes the "
                              "cycle in a depth-first search from the inputs, in the graph's node order) reads the "
                              "previous step's spikes (a delay=1 synapse, as NIRTorch reads it)")
                    t = _Term(t.src, t.ops, 1, t.via)
                terms.append(t)
            pop.drive = _Value(pop.drive.shape, tuple(terms), pop.drive.offset)

    def _build(self, order: list[str], neurons: list[str], readouts: dict[str, _Value]) -> Graph:
        g = Graph(self.name)
        for n in order:
            if self.kinds[n] == "Input":
                g.add_input(self.spidec_name[n], self.input_shape(n))
        for n in neurons:
            pop = self.pops[n]
            bias = None
            if pop.drive.offset is not None:
                bias = pop.drive.offset * pop.gain
            if pop.bias is not None:
                bias = pop.bias if bias is None else bias + pop.bias
            g.add(Population(pop.name, pop.drive.shape, pop.neuron, _bias(bias, pop.drive.shape)))
        for n, v in readouts.items():
            loss = "cross_entropy" if len(v.shape) == 1 else "mse"
            bias = None if v.offset is None else v.offset.astype(DTYPE)
            g.add_readout(self.spidec_name[n], v.shape, bias, loss)
        for n in neurons:
            pop = self.pops[n]
            gain = _gain_op(pop.gain)
            for t in pop.drive.terms:
                self._synapse(g, t, pop.name, (*t.ops, gain) if gain is not None else t.ops)
        for n, v in readouts.items():
            for t in v.terms:
                self._synapse(g, t, self.spidec_name[n], t.ops)
        try:
            return g.validate()
        except SpidecError as e:
            raise SpidecError(e.message, file=self.where, node=e.node, hint=e.hint) from None

    def _synapse(self, g: Graph, t: _Term, dst: str, ops: tuple[LinearOp, ...]) -> None:
        weighted = [v for v in t.via if self.kinds.get(v) in ("Affine", "Linear", "Conv2d")]
        label = weighted[0] if weighted else f"{t.src}_{dst}"
        name = self.unique(label, "s")
        try:
            g.add_synapse(t.src, dst, _fold(ops), delay=t.delay, name=name)
        except SpidecError as e:
            raise SpidecError(e.message, file=self.where, node=t.via[-1] if t.via else dst, hint=e.hint) from None


def _gain_op(gain: np.ndarray) -> Scale | None:
    first = float(gain.reshape(-1)[0])
    if np.all(gain == first):
        return None if first == 1.0 else Scale(first)
    if gain.ndim == 3 and np.all(gain == gain[:, :1, :1]):  # per channel: folds into a conv weight
        return Scale(np.ascontiguousarray(gain[:, :1, :1]).astype(DTYPE))
    return Scale(gain.astype(DTYPE))  # per neuron ([n]: folds into a dense weight's rows)


def _bias(bias: np.ndarray | None, shape: Shape) -> np.ndarray | None:
    if bias is None:
        return None
    bias = np.broadcast_to(bias, shape)
    if len(shape) == 3 and np.all(bias == bias[:, :1, :1]):
        return np.ascontiguousarray(bias[:, 0, 0]).astype(DTYPE)
    return np.ascontiguousarray(bias).astype(DTYPE)


def _fold(ops: tuple[LinearOp, ...]) -> tuple[LinearOp, ...]:
    """``simplify`` the chain, then fold every scalar scale into its first weight (a scalar commutes
    with every linear op), so the trained tensor carries the rate gain."""
    rest, factor = [], 1.0
    for op in simplify(tuple(ops)):
        if isinstance(op, Scale) and isinstance(op.factor, float):
            factor *= op.factor
        else:
            rest.append(op)
    if factor != 1.0:
        for i, op in enumerate(rest):
            if isinstance(op, (Dense, Conv2d)):
                rest[i] = op.replace(weight=(op.weight * factor).astype(op.weight.dtype))
                break
        else:
            for i, op in enumerate(rest):
                if isinstance(op, Scale):
                    rest[i] = Scale((np.asarray(op.factor) * factor).astype(DTYPE))
                    break
            else:
                rest.append(Scale(factor))
    return tuple(rest) or (Scale(1.0),)


__all__ = ["from_nir", "load_nir"]

