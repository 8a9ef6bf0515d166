"""The text form of the IR (``.spir``): print any graph, parse it back exactly.

Tensors live in a sidecar ``.npz`` referenced by name (``@h.bias``), or inline for tiny ones
(``f32[0.5, -1.0]``). Floats are written in their shortest round-trip form, so
``loads(*dumps(g)) == g`` holds bit for bit. The grammar is ``spir.lark`` beside this file.

    text, tensors = dumps(g)           # text and the tensors it references
    g2 = loads(text, tensors)          # == g
    save(g, "model.spir")              # writes model.spir + model.npz (atomically)
    g3 = load("model.spir")
"""

from __future__ import annotations

import gc
import json
import os
import re
import zipfile
from collections import ChainMap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import lark
import numpy as np

from .errors import SpidecError
from .fileio import atomic_write
from .ir import Graph, Input, Neuron, Population, Readout
from .limits import check_elements, size_of
from .ops import OPS, LinearOp, fmt_shape
from .program import check_program

VERSION = 1
DTYPE_TAGS = {"f16": np.float16, "f32": np.float32, "f64": np.float64}
TAG_OF = {np.dtype(v): k for k, v in DTYPE_TAGS.items()}

# How the parser's terminals are named in "expected ..." messages.
TERMINAL_WORDS = {
    "NAME": "a name", "INT": "an integer", "SIGNED_NUMBER": "a number", "STRING": "a quoted string",
    "REF": "a tensor reference like @name", "$END": "end of file",
}


@lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    grammar = (Path(__file__).with_name("spir.lark")).read_text()
    return lark.Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False)


# ============================================================== printing

NAME_RE_TEXT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # (\Z, not $: "a\n" is printed quoted)


def _num(v: float) -> str:
    return repr(float(v))


def _array_text(a: np.ndarray) -> str:
    tag = TAG_OF[a.dtype]
    to_str = a.dtype.type

    def rec(x: np.ndarray) -> str:
        if x.ndim == 1:
            return "[" + ", ".join(str(to_str(v)) for v in x) + "]"
        return "[" + ", ".join(rec(s) for s in x) + "]"

    return tag + rec(a)


class _Printer:
    def __init__(self, g: Graph, inline_max: int) -> None:
        self.g = g
        self.inline_max = inline_max
        self.tensors: dict[str, np.ndarray] = {}
        self.names = {(s.owner, s.op, s.field): name for name, s in g.tensor_slots().items()}

    def tensor(self, owner: str, op: int | None, fieldname: str, value: np.ndarray) -> str:
        if value.ndim >= 1 and 0 < value.size <= self.inline_max:
            return _array_text(value)
        name = self.names[(owner, op, fieldname)]
        self.tensors[name] = value
        return "@" + name

    def op(self, owner: str, i: int, op: LinearOp) -> str:
        parts = []
        for k, arg in enumerate(op.args):
            v = getattr(op, arg.name)
            if not arg.required and _same(v, arg.default):
                continue
            if arg.kind == "tensor" or (arg.kind == "scalar_or_tensor" and isinstance(v, np.ndarray)):
                text = self.tensor(owner, i, arg.name, v)
            elif arg.kind == "scalar_or_tensor":
                text = _num(v)
            elif arg.kind == "bool":
                text = "true" if v else "false"
            elif arg.kind == "pads":
                text = "[" + ", ".join(f"[{a}, {b}]" for a, b in v) + "]"
            else:  # pair, shape
                text = "[" + ", ".join(str(int(x)) for x in v) + "]"
            parts.append(text if arg.required and k == 0 else f"{arg.name}={text}")
        return op.kind + (f"({', '.join(parts)})" if parts else "")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return tuple(a) == tuple(b)
    return a == b


def _neuron_text(n: Neuron) -> str:
    text = f"{n.model}(vth={_num(n.vth)}, u_rest={_num(n.u_rest)}"  # type: ignore[arg-type]
    if n.model == "LIF":
        text += f", leak={_num(n.leak)}"
    return text + ")"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _pad_comment(line: str, comment: str, width: int = 64) -> str:
    return f"{line.ljust(width)}  # {comment}" if len(line) < width else f"{line}  # {comment}"


def dumps(g: Graph, *, inline_max: int = 8, tensors_file: str | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """Print ``g``; return the text and the tensors it references by name.

    Tensors with at most ``inline_max`` elements are written inline. ``tensors_file`` is named in a
    ``tensors "..."`` statement when given (``save`` does this).
    """
    g.validate()
    p = _Printer(g, inline_max)
    body: list[str] = []
    for node in g.nodes:
        if isinstance(node, Input):
            body.append(f"input {node.name} {fmt_shape(node.shape)}")
            continue
        line = f"{'population' if isinstance(node, Population) else 'readout'} {node.name} {fmt_shape(node.shape)}"
        if isinstance(node, Population):
            line += f" neuron={_neuron_text(node.neuron)}"
        if node.bias is not None:
            line += f" bias={p.tensor(node.name, None, 'bias', node.bias)}"
        if isinstance(node, Readout):
            line += f" loss={node.loss}"
        size = int(np.prod(node.shape))
        body.append(_pad_comment(line, f"{size:,} {'neurons' if isinstance(node, Population) else 'outputs'}"))
    if g.synapses():
        body.append("")
    for e in g.synapses():
        chain = " |> ".join(p.op(e.name, i, op) for i, op in enumerate(e.synapse.ops))
        delay = " delay=1" if e.synapse.delay else ""
        if e.synapse.dropout:
            delay += f" dropout={_num(e.synapse.dropout)}" + (" dropout_bias=1" if e.synapse.dropout_bias else "")
        line = f"synapse {e.name}: {e.src} -> {e.dst}{delay} = {chain}"
        shapes = e.synapse.shapes(g.node(e.src).shape)
        comment = f"{fmt_shape(shapes[0])} -> {fmt_shape(shapes[-1])}"
        if e.synapse.num_parameters():
            comment += f", {e.synapse.num_parameters():,} params"
        body.append(_pad_comment(line, comment))
    counts = ", ".join(_plural(n, w) for n, w in ((len(g.inputs), "input"), (len(g.populations), "population"),
                                                   (len(g.readouts), "readout"), (len(g.synapses()), "synapse")))
    body.extend(_pass_lines(g))
    head = [
        f"# spidec IR: {counts}, {g.num_parameters():,} parameters",
        f"spir {VERSION}",
        f"graph {g.name}",
    ]
    if tensors_file is not None and p.tensors:
        head.append(f"tensors {json.dumps(tensors_file)}")
    return "\n".join(head + [""] + body) + "\n", p.tensors


def _names(xs: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(xs) + "]"


def _pass_lines(g: Graph) -> list[str]:
    """The statements of what the passes added (simulation, training, schedule)."""
    out: list[str] = []
    if g.simulation is not None:
        out += ["", f"simulate T={g.simulation.T} encoding={g.simulation.encoding}"]
    t = g.training
    if t is not None:
        opt = t.optimizer
        out += ["", f"train T_back={t.T_back} sf={_num(t.sf)} optimizer=sgd(lr={_num(opt.lr)}, "
                f"momentum={_num(opt.momentum)}, weight_decay={_num(opt.weight_decay)}, "
                f"milestones=[{', '.join(map(str, opt.milestones))}], gamma={_num(opt.gamma)}, "
                f"feedback_norm={_num(opt.feedback_norm)}, feedback_norm_mode={opt.feedback_norm_mode})"]
        for c in t.couples:
            line = f"couple {c.name}: {c.of} vth={_num(c.vth)} u_rest={_num(c.u_rest)}"  # type: ignore[arg-type]
            out.append(_pad_comment(line + (f" leak={_num(c.leak)}" if c.leak != 1.0 else ""),
                                    "ternary neuron couple (-1/0/+1 spikes)"))
        for b in t.backward:
            line = f"backward {b.name}: {b.src} -> {b.dst} gate={b.gate}{' delay=1' if b.delay else ''} " \
                   f"= transpose({b.forward})"
            out.append(_pad_comment(line, f"m({b.gate}) * spikes through {b.forward}^T"))
        for i in t.injections:
            out.append(_pad_comment(f"inject {i.readout} -> {i.couple} = transpose({i.forward})",
                                    f"sf * dL/d{i.readout} every backward step"))
        for u in t.updates:
            args = [f"{k}={v}" for k, v in (("synapse", u.synapse), ("post", u.post), ("gate", u.gate)) if v]
            out.append(f"update @{u.tensor} = {u.kind}({', '.join(args)})")
    s = g.schedule
    if s is not None:
        # (option names must not be statement keywords such as "backward": hence *_order)
        out += ["", f"schedule forward_order={_names(s.forward)} backward_order={_names(s.backward)} "
                f"delayed={_names(s.delayed)} delayed_back={_names(s.delayed_back)}"]
    if g.program is not None:
        from .program import program_lines

        out += ["", "# the step program (lower pass): what every backend reads"] + program_lines(g.program)
    return out


# ============================================================== parsing

@dataclass(frozen=True)
class _Ref:
    name: str


@dataclass(frozen=True)
class _Ident:
    name: str


@dataclass(frozen=True)
class _Call:
    name: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class _Typed:
    tag: str
    items: list[Any]


def _terminal_words(names: set[str]) -> str:
    parser = _parser()
    words = set()
    for name in names:
        if name in TERMINAL_WORDS:
            words.add(TERMINAL_WORDS[name])
            continue
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:
            words.add(name)
            continue
        words.add(repr(pattern.value) if pattern.type == "str" else name.lower())
    return ", ".join(sorted(words))


def _lark_error(e: lark.exceptions.UnexpectedInput, text: str, source: str) -> SpidecError:
    line, col = getattr(e, "line", None), getattr(e, "column", None)
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream is not None and e.pos_in_stream < len(text) else "?"
        msg = f"unexpected character {ch!r}"
        if e.allowed:
            msg += f"; expected {_terminal_words(set(e.allowed))}"
    elif isinstance(e, lark.exceptions.UnexpectedToken):
        tok = e.token
        if tok.type == "$END":
            msg = "unexpected end of file"
            lines = text.splitlines() or [""]
            line, col = len(lines), len(lines[-1]) + 1
        else:
            msg = f"unexpected {tok.value!r}"
        msg += f"; expected {_terminal_words(set(e.expected))}"
    else:  # UnexpectedEOF
        msg = f"unexpected end of file; expected {_terminal_words(set(getattr(e, 'expected', [])))}"
    if line is not None and line < 0:
        line, col = None, None
    return SpidecError(msg, file=source, line=line, column=col)


class _NpzTensors(Mapping[str, np.ndarray]):
    """The arrays of a ``.npz``, each read when the text refers to it, after its header's shape and
    type are checked: an array the model does not use costs nothing, and one that declares more
    elements than :mod:`spidec.limits` allows is refused before a byte of it is read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path)
        self.members = {n[:-4]: n for n in self.zip.namelist() if n.endswith(".npy")}
        self.read: dict[str, np.ndarray] = {}  # (a tensor referred to twice is one array, as before)

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.read:
            return self.read[name]
        member = self.members[name]
        where = f"tensor @{name} in {self.path.name}"
        try:
            with self.zip.open(member) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise SpidecError(f"{where} is stored in .npy format {version[0]}.{version[1]}, which spidec "
                                      "does not read", hint="save it with numpy.savez")
            if dtype.kind != "f":
                raise SpidecError(f"{where} has dtype {dtype}; spidec tensors are floats")
            check_elements(size_of(shape), f"{where} (shape {fmt_shape(tuple(shape))})")
            with self.zip.open(member) as f:
                arr = self.read[name] = np.lib.format.read_array(f, allow_pickle=False)
                return arr
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise SpidecError(f"{where} is not readable ({str(e)[:120]})") from None

    def __contains__(self, name: object) -> bool:
        return name in self.members

    def __iter__(self) -> Iterator[str]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def close(self) -> None:
        self.zip.close()


class _Reader:
    def __init__(self, text: str, tensors: dict[str, np.ndarray] | None, source: str,
                 base_dir: Path | None) -> None:
        self.text = text
        self.source = source
        self.base_dir = base_dir
        self.tensors: Mapping[str, Any] | None = dict(tensors) if tensors is not None else None
        self.tensors_origin = "the tensors given" if tensors is not None else None
        self.npz: list[_NpzTensors] = []  # the tensors statements' files, read array by array
        self.lines: dict[str, int] = {}

    def error(self, tree: Any, message: str, hint: str | None = None) -> SpidecError:
        meta = getattr(tree, "meta", None)
        line = getattr(meta, "line", None) if meta is not None and not getattr(meta, "empty", True) else None
        col = getattr(meta, "column", None) if line is not None else None
        if isinstance(tree, lark.Token):
            line, col = tree.line, tree.column
        return SpidecError(message, file=self.source, line=line, column=col, hint=hint)

    # ---------------------------------------------------------- values
    def string(self, tok: Any) -> str:
        """A quoted string token (JSON escapes); control characters are refused."""
        try:
            return json.loads(str(tok))
        except ValueError as e:
            raise self.error(tok, f"bad string {str(tok)[:40]!r} ({e.msg})") from None

    def value(self, t: Any) -> Any:
        if isinstance(t, lark.Token):
            if t.type == "NAME":
                return _Ident(str(t))
            raise self.error(t, f"unexpected {t!s}")  # pragma: no cover - grammar guarantees
        kind = t.data
        if kind == "number":
            s = str(t.children[0])
            return int(s) if s.lstrip("+-").isdigit() else float(s)
        if kind == "string":
            return self.string(t.children[0])
        if kind == "ref":
            return _Ref(str(t.children[0])[1:])
        if kind == "list":
            return [self.value(c) for c in t.children]
        if kind == "ident":
            return _Ident(str(t.children[0]))
        if kind == "typed":
            return _Typed(str(t.children[0]), self.value(t.children[1]))
        if kind == "call":
            args, kwargs = self.args(t.children[1:])
            return _Call(str(t.children[0]), tuple(args), tuple(kwargs))
        raise self.error(t, f"unexpected {kind}")  # pragma: no cover

    def args(self, children: list[Any]) -> tuple[list[tuple[Any, Any]], list[tuple[str, Any, Any]]]:
        args, kwargs = [], []
        for a in children:
            if a.data == "positional":
                if kwargs:
                    raise self.error(a, "a positional argument cannot follow a keyword argument")
                args.append((self.value(a.children[0]), a))
            else:
                name = str(a.children[0])
                if any(k == name for k, _, _ in kwargs):
                    raise self.error(a, f"argument '{name}' is given twice")
                kwargs.append((name, self.value(a.children[1]), a))
        return args, kwargs

    def load_tensors_file(self, tree: Any, name: str) -> None:
        folder = self.base_dir if self.base_dir is not None else Path(".")
        path = folder / name
        # confined to the model's folder (as ONNX external data is): a shared .spir must not read
        # /etc/... or ../other_project/secret.npz, nor escape through a symlink
        try:
            inside = not Path(name).is_absolute() and path.resolve().is_relative_to(folder.resolve())
        except (OSError, ValueError, RuntimeError) as e:  # (a NUL byte, a symlink loop)
            raise self.error(tree, f"tensors file {name!r} is not a usable path ({e})") from None
        if not inside:
            raise self.error(tree, f"tensors file {name!r} lies outside the model's folder; spidec reads a .spir "
                             "file's tensors from its folder (or below it) only",
                             hint="give a path relative to the .spir file, e.g. tensors \"model.npz\"")
        try:
            npz = _NpzTensors(path)
        except FileNotFoundError:
            raise self.error(tree, f"tensors file {str(path)!r} not found",
                             hint="keep the .npz beside the .spir file") from None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise self.error(tree, f"tensors file {str(path)!r} is not a readable .npz ({e})") from None
        self.npz.append(npz)
        if self.tensors is None:
            self.tensors, self.tensors_origin = npz, repr(path.name)
        else:  # tensors passed explicitly (or an earlier file) take precedence
            self.tensors = ChainMap(self.tensors, npz)  # type: ignore[arg-type]

    def close(self) -> None:
        for npz in self.npz:
            npz.close()

    def tensor(self, v: Any, where: Any, what: str) -> np.ndarray:
        if isinstance(v, _Ref):
            if self.tensors is None:
                raise self.error(where, f"{what} refers to tensor @{v.name}, but no tensors are given",
                                 hint='add a line tensors "model.npz" or pass tensors=')
            if v.name not in self.tensors:
                raise self.error(where, f"{what} refers to tensor @{v.name}, which {self.tensors_origin} "
                                 f"does not contain")
            try:
                arr = np.asarray(self.tensors[v.name])
            except SpidecError as e:
                raise self.error(where, e.message, e.hint) from None
            if arr.dtype.kind not in "f":
                raise self.error(where, f"tensor @{v.name} has dtype {arr.dtype}; spidec tensors are floats")
            return arr
        if isinstance(v, _Typed):
            if v.tag not in DTYPE_TAGS:
                raise self.error(where, f"unknown tensor type '{v.tag}'; use one of {', '.join(DTYPE_TAGS)}")
            return self._literal(v.items, DTYPE_TAGS[v.tag], where, what)
        if isinstance(v, list):
            return self._literal(v, np.float64, where, what)
        raise self.error(where, f"{what} must be a tensor (@name or a list of numbers)")

    def _literal(self, items: list[Any], dtype: Any, where: Any, what: str) -> np.ndarray:
        def check(x: Any) -> None:
            if isinstance(x, list):
                for y in x:
                    check(y)
            elif not isinstance(x, (int, float)):
                raise self.error(where, f"{what}: a tensor literal holds only numbers")

        check(items)
        try:
            arr = np.array(items, dtype=dtype)
        except ValueError:
            raise self.error(where, f"{what}: the nested lists of a tensor literal must be rectangular") from None
        return arr

    def _ints(self, v: Any, where: Any, what: str) -> list[int]:
        if isinstance(v, int) and not isinstance(v, bool):
            return [v]
        if isinstance(v, list) and all(isinstance(x, int) for x in v):
            return list(v)
        raise self.error(where, f"{what} must be an integer or a list of integers")

    def convert(self, kind: str, v: Any, where: Any, what: str) -> Any:
        if kind == "tensor":
            return self.tensor(v, where, what)
        if kind == "scalar_or_tensor":
            return float(v) if isinstance(v, (int, float)) else self.tensor(v, where, what)
        if kind == "bool":
            if isinstance(v, _Ident) and v.name in ("true", "false"):
                return v.name == "true"
            raise self.error(where, f"{what} must be true or false")
        if kind == "pair":
            xs = self._ints(v, where, what)
            if len(xs) not in (1, 2):
                raise self.error(where, f"{what} must be an integer or a pair [a, b]")
            return (xs[0], xs[-1])
        if kind == "shape":
            if not isinstance(v, list):
                raise self.error(where, f"{what} must be a list of sizes like [4, 8]")
            return tuple(self._ints(v, where, what))
        if kind == "pads":
            if not (isinstance(v, list) and all(isinstance(p, list) and len(p) == 2 and
                                                all(isinstance(x, int) for x in p) for p in v)):
                raise self.error(where, f"{what} must be a list of [before, after] pairs")
            return tuple((a, b) for a, b in v)
        raise AssertionError(kind)  # pragma: no cover

    # ---------------------------------------------------------- statements
    def op(self, t: Any) -> LinearOp:
        name = str(t.children[0])
        cls = OPS.get(name)
        if cls is None:
            raise self.error(t, f"unknown op '{name}'; spidec ops are: {', '.join(OPS)}")
        args, kwargs = self.args(t.children[1:])
        spec = {a.name: a for a in cls.args}
        if len(args) > len(cls.args):
            raise self.error(t, f"{name} takes at most {len(cls.args)} positional arguments, got {len(args)}")
        values: dict[str, Any] = {}
        for (v, where), a in zip(args, cls.args):
            values[a.name] = self.convert(a.kind, v, where, f"{name} {a.name}")
        for k, v, where in kwargs:
            if k not in spec:
                known = ", ".join(spec) or "none"
                raise self.error(where, f"{name} has no argument '{k}'; its arguments are: {known}")
            if k in values:
                raise self.error(where, f"{name} argument '{k}' is given twice")
            values[k] = self.convert(spec[k].kind, v, where, f"{name} {k}")
        for a in cls.args:
            if a.required and a.name not in values:
                raise self.error(t, f"{name} needs its argument '{a.name}'")
        try:
            return cls(**values)
        except SpidecError as e:
            raise self.error(t, e.message, e.hint) from None

    def options(self, children: list[Any], allowed: tuple[str, ...] | None, stmt: str) -> dict[str, tuple[Any, Any]]:
        """``key=value`` options (``allowed``: the keys a statement takes; None: any, checked later)."""
        out: dict[str, tuple[Any, Any]] = {}
        for o in children:
            name = str(o.children[0])
            if allowed is not None and name not in allowed:
                raise self.error(o, f"{stmt} has no option '{name}'; its options are: {', '.join(allowed)}")
            if name in out:
                raise self.error(o, f"option '{name}' is given twice")
            out[name] = (self.value(o.children[1]), o)
        return out

    def neuron(self, v: Any, where: Any) -> Neuron:
        if not isinstance(v, _Call) or v.name not in ("IF", "LIF"):
            raise self.error(where, "neuron must be IF(...) or LIF(...)",
                             hint="e.g. neuron=IF(vth=1.0, u_rest=-1.0)")
        if v.args:
            raise self.error(where, "neuron parameters are keyword arguments: vth=, u_rest=, leak=")
        params = {}
        for k, x, w in v.kwargs:
            if k not in ("vth", "u_rest", "leak"):
                raise self.error(w, f"{v.name} has no parameter '{k}'; its parameters are: vth, u_rest, leak")
            if not isinstance(x, (int, float)):
                raise self.error(w, f"neuron parameter {k} must be a number")
            params[k] = float(x)
        try:
            return Neuron(v.name, **params)
        except SpidecError as e:
            raise self.error(where, e.message, e.hint) from None

    def shape(self, t: Any, what: str) -> tuple[int, ...]:
        v = self.value(t)
        if not (isinstance(v, list) and v and all(isinstance(x, int) and x > 0 for x in v)):
            raise self.error(t, f"{what} shape must be a list of positive sizes like [64] or [1, 28, 28]")
        return tuple(v)

    def read(self) -> Graph:
        try:
            tree = _parser().parse(self.text)
        except lark.exceptions.UnexpectedInput as e:
            raise _lark_error(e, self.text, self.source) from None
        stmts = tree.children
        name = "model"
        for s in stmts:
            if s.data == "version_stmt":
                if int(s.children[0]) != VERSION:
                    raise self.error(s, f"spir version {s.children[0]} is not supported (this spidec reads "
                                     f"version {VERSION})")
            elif s.data == "graph_stmt":
                name = str(s.children[0])
            elif s.data == "tensors_stmt":
                self.load_tensors_file(s, self.string(s.children[0]))
        g = Graph(name)
        for s in stmts:
            if s.data in ("input_stmt", "population_stmt", "readout_stmt"):
                self.node_stmt(g, s)
        for s in stmts:
            if s.data == "synapse_stmt":
                self.synapse_stmt(g, s)
        self.pass_stmts(g, stmts)
        try:
            g.validate()
            check_program(g)
        except SpidecError as e:
            line = self.lines.get(e.node) if e.node else None
            raise SpidecError(e.message, file=self.source, line=line, node=e.node, hint=e.hint) from None
        return g

    # ---------------------------------------------------------- what the passes add
    def _kw(self, s: Any, children: list[Any], spec: dict[str, type], stmt: str) -> dict[str, Any]:
        """Options of a pass statement, converted to the types in ``spec``."""
        opts = self.options(children, tuple(spec), stmt)
        out: dict[str, Any] = {}
        for k, (v, where) in opts.items():
            want = spec[k]
            if want is str and isinstance(v, (_Ident, str)):
                out[k] = v.name if isinstance(v, _Ident) else v
            elif want is int and isinstance(v, int):
                out[k] = v
            elif want is float and isinstance(v, (int, float)):
                out[k] = float(v)
            elif want is list and isinstance(v, list) and all(isinstance(x, (_Ident, str)) for x in v):
                out[k] = [x.name if isinstance(x, _Ident) else x for x in v]
            elif want is _Call and isinstance(v, _Call):
                out[k] = v
            else:
                raise self.error(where, f"{stmt} option {k} has the wrong kind of value")
        return out

    def _transpose_of(self, op: Any) -> str:
        name = str(op.children[0])
        args = op.children[1:]
        if name != "transpose" or len(args) != 1 or args[0].data != "positional":
            raise self.error(op, "expected transpose(SYNAPSE)")
        v = self.value(args[0].children[0])
        if not isinstance(v, _Ident):
            raise self.error(op, "expected transpose(SYNAPSE) with a synapse name")
        return v.name

    def pass_stmts(self, g: Graph, stmts: list[Any]) -> None:
        from .program import read_program
        from .training import (
            BackwardSynapse,
            Couple,
            Injection,
            Optimizer,
            Schedule,
            Simulation,
            Training,
            Update,
        )

        couples, backward, injections, updates = [], [], [], []
        records: list[tuple[str, dict[str, Any]]] = []
        train: dict[str, Any] | None = None
        sched: dict[str, Any] | None = None
        once: dict[str, int] = {}
        at: int | None = None  # the line of the statement being read (what an error in it names)
        try:
            for s in stmts:
                kind, at = s.data, s.meta.line
                if kind in ("simulate_stmt", "train_stmt", "schedule_stmt"):  # one each: never a silent override
                    if kind in once:
                        raise self.error(s, f"a second '{kind[:-5]}' statement (the first is on line {once[kind]})")
                    once[kind] = s.meta.line
                if kind == "simulate_stmt":
                    g.simulation = Simulation(**self._kw(s, s.children, {"T": int, "encoding": str}, "simulate"))
                elif kind == "couple_stmt":
                    kw = self._kw(s, s.children[2:], {"vth": float, "u_rest": float, "leak": float}, "couple")
                    couples.append(Couple(str(s.children[0]), str(s.children[1]), **kw))
                    self.lines.setdefault(str(s.children[0]), s.meta.line)  # (what validate's errors name)
                elif kind == "backward_stmt":
                    name, src, dst = (str(c) for c in s.children[:3])
                    kw = self._kw(s, s.children[3:-1], {"gate": str, "delay": int}, "backward")
                    backward.append(BackwardSynapse(name, src, dst, self._transpose_of(s.children[-1]),
                                                    kw.get("gate", ""), kw.get("delay", 0)))
                    self.lines.setdefault(name, s.meta.line)
                elif kind == "inject_stmt":
                    injections.append(Injection(str(s.children[0]), str(s.children[1]),
                                                self._transpose_of(s.children[2])))
                elif kind == "update_stmt":
                    op = s.children[1]
                    args, kwargs = self.args(op.children[1:])
                    if args:
                        raise self.error(op, "update rules take keyword arguments: synapse=, post=, gate=")
                    kw = {}
                    for k, v, where in kwargs:
                        if k not in ("synapse", "post", "gate") or not isinstance(v, _Ident):
                            raise self.error(where, f"update rule argument {k} must be one of synapse, post, gate "
                                             "with a name")
                        kw[k] = v.name
                    updates.append(Update(str(s.children[0])[1:], str(op.children[0]), **kw))
                elif kind == "train_stmt":
                    train = self._kw(s, s.children, {"T_back": int, "sf": float, "optimizer": _Call}, "train")
                elif kind == "schedule_stmt":
                    sched = self._kw(s, s.children, {k: list for k in ("forward_order", "backward_order", "delayed",
                                                                         "delayed_back")}, "schedule")
                elif kind == "lower_stmt":
                    opts = self.options(s.children[1:], None, "lower")
                    records.append((str(s.children[0]), {k: v for k, (v, _) in opts.items()}))
            at = once.get("train_stmt")
            if train is not None or couples:
                train = train or {}
                opt = train.pop("optimizer", None)
                optimizer = Optimizer()
                if opt is not None:
                    if opt.name != "sgd" or opt.args:
                        raise SpidecError("optimizer must be sgd(lr=..., momentum=..., ...)")
                    optimizer = Optimizer(**{k: (tuple(v) if isinstance(v, list) else v.name if isinstance(v, _Ident)
                                                 else v) for k, v, _ in opt.kwargs})
                g.training = Training(couples=tuple(couples), backward=tuple(backward), injections=tuple(injections),
                                      updates=tuple(updates), optimizer=optimizer, **train)
            at = once.get("schedule_stmt")
            if sched is not None:
                keys = ("forward_order", "backward_order", "delayed", "delayed_back")
                if set(sched) != set(keys):
                    raise SpidecError(f"the schedule statement needs {', '.join(keys)} (it misses "
                                      f"{', '.join(k for k in keys if k not in sched)})",
                                      hint="run the schedule pass again")
                g.schedule = Schedule(**{k.replace("_order", ""): tuple(v) for k, v in sched.items()})
            at = None
            g.program = read_program(records)
        except SpidecError as e:
            if e.line is not None:
                raise
            raise SpidecError(e.message, file=self.source, line=at, hint=e.hint) from None
        except TypeError as e:
            raise SpidecError(f"bad training settings: {e}", file=self.source, line=at) from None

    def _declare(self, s: Any, g: Graph, name: str) -> None:
        if name in g:
            raise self.error(s, f"'{name}' is declared twice (first on line {self.lines.get(name)})")
        self.lines[name] = s.meta.line

    def node_stmt(self, g: Graph, s: Any) -> None:
        name = str(s.children[0])
        self._declare(s, g, name)
        shape = self.shape(s.children[1], f"{s.data.split('_')[0]} '{name}'")
        try:
            if s.data == "input_stmt":
                g.add_input(name, shape)
                return
            if s.data == "population_stmt":
                opts = self.options(s.children[2:], ("neuron", "bias"), "population")
                neuron = self.neuron(*opts["neuron"]) if "neuron" in opts else Neuron()
                bias = self.tensor(*opts["bias"], f"bias of '{name}'") if "bias" in opts else None
                g.add_population(name, shape, neuron, bias)
                return
            opts = self.options(s.children[2:], ("bias", "loss"), "readout")
            bias = self.tensor(*opts["bias"], f"bias of '{name}'") if "bias" in opts else None
            loss = "cross_entropy"
            if "loss" in opts:
                v, where = opts["loss"]
                if not isinstance(v, _Ident):
                    raise self.error(where, "loss must be a name like cross_entropy or mse")
                loss = v.name
            g.add_readout(name, shape, bias, loss)
        except SpidecError as e:
            if e.line is not None:
                raise
            raise self.error(s, e.message, e.hint) from None

    def synapse_stmt(self, g: Graph, s: Any) -> None:
        name, src, dst = (str(c) for c in s.children[:3])
        self._declare(s, g, name)
        for end, tok in ((src, s.children[1]), (dst, s.children[2])):
            if not g.nx.has_node(end):
                raise self.error(tok, f"synapse '{name}' refers to '{end}', which is not a declared node")
        opts = self.options([c for c in s.children[3:] if c.data == "option"], ("delay", "dropout", "dropout_bias"),
                            "synapse")
        delay, dropout, dropout_bias = 0, 0.0, False
        if "dropout_bias" in opts:
            v, where = opts["dropout_bias"]
            if v not in (0, 1) or isinstance(v, float):
                raise self.error(where, "dropout_bias must be 0 or 1")
            dropout_bias = bool(v)
        if "delay" in opts:
            v, where = opts["delay"]
            if v not in (0, 1) or isinstance(v, float):
                raise self.error(where, "delay must be 0 or 1")
            delay = int(v)
        if "dropout" in opts:
            v, where = opts["dropout"]
            if not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise self.error(where, "dropout must be a probability in [0, 1)")
            dropout = float(v)
        chain = next(c for c in s.children[3:] if c.data == "chain")
        ops = [self.op(o) for o in chain.children]
        try:
            g.add_synapse(src, dst, ops, delay=delay, name=name, dropout=dropout, dropout_bias=dropout_bias)
        except SpidecError as e:
            raise self.error(s, e.message, e.hint) from None


def loads(text: str, tensors: dict[str, np.ndarray] | None = None, *, source: str = "<text>",
          base_dir: str | os.PathLike | None = None) -> Graph:
    """Parse the text form. ``tensors`` resolves ``@name`` references (a ``tensors "file.npz"``
    statement is read relative to ``base_dir``). Errors carry line and column."""
    reader = _Reader(text, tensors, source, Path(base_dir) if base_dir is not None else None)
    # the parse tree is millions of small objects and holds no garbage cycles: the cyclic collector's
    # passes over it, more of them the bigger the file, doubled the time of a large training graph
    collecting = gc.isenabled()
    gc.disable()
    try:
        return reader.read()
    finally:
        if collecting:
            gc.enable()
        reader.close()


def save(g: Graph, path: str | os.PathLike, *, inline_max: int = 8) -> Path:
    """Write ``path`` (.spir) and its tensors beside it (same stem, .npz); both atomically."""
    path = Path(path)
    if path.suffix != ".spir":
        path = path.with_suffix(path.suffix + ".spir") if path.suffix else path.with_suffix(".spir")
    npz = path.with_suffix(".npz")
    text, tensors = dumps(g, inline_max=inline_max, tensors_file=npz.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tensors:
        atomic_write(npz, lambda f: np.savez(f, **tensors))
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


def load(path: str | os.PathLike, tensors: dict[str, np.ndarray] | None = None) -> Graph:
    """Read a ``.spir`` file (and the ``.npz`` it names)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpidecError(f"file {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpidecError(f"cannot read {str(path)!r}: {e}") from None
    return loads(text, tensors, source=str(path), base_dir=path.parent)


__all__ = ["dumps", "load", "loads", "save"]
