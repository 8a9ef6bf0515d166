"""Pass options, declared once: in the pass signatures.

A pass parameter is written ``T: Annotated[int, Opt("forward time steps")] = 30``; the command
line's option groups (flags, types, choices, help texts with their defaults) are generated from
those signatures by :func:`add_arguments`, and :func:`collect` reads them back. Nothing else
repeats a pass option or its default.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Opt:
    """How a pass parameter appears on the command line."""

    help: str
    choices: tuple[str, ...] | None = None
    flag: str | None = None  # default: --name with '_' as '-'
    default_text: str | None = None  # what the help says when the default is None


@dataclass(frozen=True)
class OptionSpec:
    name: str
    flag: str
    kind: Any  # int, float, str or "ints" (a comma-separated list)
    default: Any
    opt: Opt


def _kind(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (
        typing.Union, getattr(__import__("types"), "UnionType", None)) else [tp]
    base = args[0]
    if typing.get_origin(base) in (tuple, Sequence, list) or base in (tuple, list):
        return "ints"
    return base


def specs(fn: Callable[..., Any]) -> list[OptionSpec]:
    """The annotated options of pass ``fn``, in signature order."""
    hints = typing.get_type_hints(fn, vars(sys.modules[fn.__module__]), include_extras=True)
    out = []
    for name, param in inspect.signature(fn).parameters.items():
        hint = hints.get(name)
        if typing.get_origin(hint) is not typing.Annotated:
            continue
        base, *meta = typing.get_args(hint)
        opt = next((m for m in meta if isinstance(m, Opt)), None)
        if opt is None:
            continue
        flag = opt.flag or "--" + name.replace("_", "-")
        out.append(OptionSpec(name, flag, _kind(base), param.default, opt))
    return out


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def _default_text(s: OptionSpec) -> str:
    if s.default is None:
        return s.opt.default_text or "kept"
    if isinstance(s.default, tuple):
        return ",".join(map(str, s.default)) or "none"
    return f"{s.default:g}" if isinstance(s.default, float) else str(s.default)


def add_arguments(group: Any, fns: Sequence[Callable[..., Any]], skip: Sequence[str] = ()) -> list[str]:
    """Add the options of passes ``fns`` to an argparse group (every default None, so that only
    what the user gave reaches the passes); returns their destinations."""
    dests = []
    for fn in fns:
        for s in specs(fn):
            if s.name in skip or s.name in dests:
                continue
            kw: dict[str, Any] = {"dest": s.name, "default": None,
                                  "help": f"{s.opt.help} (default: {_default_text(s)})"}
            if s.opt.choices:
                kw["choices"] = list(s.opt.choices)
            elif s.kind == "ints":
                kw["type"] = _ints
            elif s.kind in (int, float):
                kw["type"] = s.kind
            group.add_argument(s.flag, **kw)
            dests.append(s.name)
    return dests


def collect(args: argparse.Namespace, fns: Sequence[Callable[..., Any]]) -> dict[str, Any]:
    """The options of passes ``fns`` that were given on the command line."""
    names = {s.name for fn in fns for s in specs(fn)}
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


__all__ = ["Opt", "OptionSpec", "add_arguments", "collect", "specs"]
