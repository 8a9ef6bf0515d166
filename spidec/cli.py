"""The ``spidec`` command line.

Exit codes: 0 success, 1 a user error (bad model, bad file, bad input: one line on stderr),
2 bad command-line usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import __version__
from .backends import TARGETS
from .errors import SpidecError, printable
from .ir import Graph, Input, Population, Readout
from .ops import fmt_shape
from .passes import PIPELINE
from .text import _plural

EPILOG_INSPECT = """examples:
  spidec inspect examples/digits_fb.spir
  spidec inspect examples/digits_fb.onnx --no-text        # the tables only
  spidec inspect model.onnx --state z:z_next              # pair a state input explicitly
  spidec inspect --torch examples/models.py:ConvNetF
  spidec inspect --torch cell.py:Cell --input x:64 --input z:128 --outputs z_next,logits
"""

EPILOG_REFERENCE = """examples:
  spidec reference examples/digits_fb.spir --data digits --batch 32
  spidec reference examples/digits_fb.onnx --batch 4 --seed 1 --json
  spidec reference --torch examples/models.py:LeNetF --batch 2
"""


EPILOG_EXPORT = """examples:
  spidec export build/sim --to nir -o digits.nir              # trained weights (build/sim/checkpoint.pt)
  spidec export build/sim --to nir --delays implicit --dt 1e-3 -o digits.nir
  spidec export examples/digits_fb.spir --to onnx -o digits.onnx
  spidec export build/sim --to torch --torch examples/models.py:DigitsFB -o digits.pt   # the module's names
"""


def _table(rows: list[list[str]], header: list[str]) -> str:
    cols = [header] + rows
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cols]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    """``x:1x28x28`` or ``x:1,28,28`` -> ("x", (1, 28, 28))."""
    name, _, dims = text.partition(":")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if not name or not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME:SHAPE like x:1x28x28, got {text!r}")
    return name, shape


def _pairs_arg(text: str) -> dict[str, str]:
    if text.strip().lower() == "none":  # (the model has no state: an ONNX model's names are not read for one)
        return {}
    pairs = {}
    for item in filter(None, text.split(",")):
        a, sep, b = item.partition(":")
        if not sep or not a or not b:
            raise argparse.ArgumentTypeError(f"expected STATE:OUTPUT pairs like z:z_next, got {text!r}")
        pairs[a.strip()] = b.strip()
    return pairs


def _load_torch_class(spec: str, dropout: bool = False, seed: int = 0) -> object:
    """``path/to/module.py:ClassName`` -> an instance (constructed without arguments, in eval mode),
    its initial weights drawn with torch seeded by ``seed``: the same module every time."""
    import importlib.util
    from pathlib import Path

    path, sep, cls_name = spec.rpartition(":")
    if not sep or not path or not cls_name:
        raise SpidecError(f"--torch expects FILE.py:ClassName, got {spec!r}")
    file = Path(path)
    if not file.is_file():
        raise SpidecError(f"file {path!r} not found")
    sys.path.insert(0, str(file.resolve().parent))  # so the module can import its neighbours
    try:
        module_spec = importlib.util.spec_from_file_location(file.stem, file)
        module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    except SpidecError:
        raise
    except Exception as e:
        raise SpidecError(f"importing {path} failed: {type(e).__name__}: {e}") from None
    finally:
        sys.path.pop(0)
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise SpidecError(f"{path} defines no '{cls_name}'")
    try:
        try:
            import torch
        except ImportError:  # pragma: no cover - a --torch module needs torch
            instance = cls()
        else:  # (fork_rng: the caller's random state is left as it was)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                instance = cls()
    except Exception as e:
        raise SpidecError(f"{cls_name}() failed: {type(e).__name__}: {e}",
                          hint="the class must be constructible without arguments") from None
    if hasattr(instance, "eval"):
        instance.eval()  # BatchNorm folds its running statistics
        if dropout:  # ... while Dropout layers stay in training mode: spidec trains with them
            import torch

            for m in instance.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.train()
    return instance


def _load(args: argparse.Namespace) -> Graph:
    state = args.state  # (None: not given; {}: --state none)
    if getattr(args, "dt", None) is not None and not (args.file or "").lower().endswith(".nir") \
            and getattr(args, "to", None) != "nir":  # (export --to nir writes at --dt)
        raise SpidecError("--dt applies to NIR files (.nir) only")
    if args.torch:
        if args.file:
            raise SpidecError("give either a model file or --torch FILE.py:ClassName, not both")
        from .frontends.torch import from_torch

        inputs = dict(args.input) if args.input else None
        outputs = args.outputs.split(",") if args.outputs else None
        module = _load_torch_class(args.torch, getattr(args, "dropout", False), getattr(args, "torch_seed", None) or 0)
        return from_torch(module, inputs, state, outputs)
    if not args.file:
        raise SpidecError("no model given: pass a .spir/.onnx/.nir file or --torch FILE.py:ClassName")
    if args.input or args.outputs:
        raise SpidecError("--input and --outputs apply to --torch models only")
    if getattr(args, "torch_seed", None) is not None:
        raise SpidecError("--seed applies to --torch models only (it seeds the module's initial weights)")
    from .frontends import load

    if args.file.lower().endswith(".nir"):
        if state is not None:
            raise SpidecError("--state applies to ONNX and --torch models only")
        return load(args.file, dt=args.dt)
    if state is not None:
        if not args.file.lower().endswith(".onnx"):
            raise SpidecError("--state applies to ONNX and --torch models only")
        return load(args.file, state=state)
    return load(args.file)


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", help="model file (.spir, .onnx or .nir)")
    p.add_argument("--torch", metavar="FILE.py:CLASS", help="a PyTorch module class (constructed without "
                   "arguments) instead of a file")
    p.add_argument("--dropout", action="store_true", help="--torch: read its nn.Dropout layers in training mode "
                   "(variational dropout on the synapse each follows; default: eval mode, no dropout)")
    p.add_argument("--input", action="append", type=_shape_arg, metavar="NAME:SHAPE",
                   help="--torch: per-sample shape of a forward argument, e.g. x:1x28x28 (repeatable; default: "
                   "the class's spidec_inputs)")
    p.add_argument("--state", type=_pairs_arg, metavar="STATE:OUTPUT[,...]",
                   help="pair state inputs with outputs, e.g. z:z_next (default: metadata spidec.state or the "
                   "NAME/NAME_next convention); 'none': the model has no state")
    p.add_argument("--outputs", metavar="NAME[,...]", help="--torch: names of forward's returned values")
    p.add_argument("--dt", type=float, metavar="SECONDS", help="NIR files: the time step the file's time constants "
                   "refer to (NIR stores none; snnTorch exports assume 1e-4); export --to nir: the one written")


def summary(g: Graph) -> str:
    """The tables ``spidec inspect`` prints: nodes, synapses, step order."""
    head = (f"{g.name}: {_plural(len(g.inputs), 'input')}, {_plural(len(g.populations), 'population')}, "
            f"{_plural(len(g.readouts), 'readout')}, {_plural(len(g.synapses()), 'synapse')}, "
            f"{g.num_parameters():,} parameters, {sum(p.size for p in g.populations):,} neurons")
    node_rows = []
    for n in g.nodes:
        if isinstance(n, Input):
            node_rows.append([n.name, "input", fmt_shape(n.shape), "", "", ""])
        elif isinstance(n, Population):
            nm = n.neuron
            neuron = f"{nm.model} vth={nm.vth:g} u_rest={nm.u_rest:g}"
            if nm.model == "LIF":
                neuron += f" leak={nm.leak:g}"
            bias = fmt_shape(n.bias.shape) if n.bias is not None else "-"
            node_rows.append([n.name, "population", fmt_shape(n.shape), f"{n.size:,}", neuron, bias])
        elif isinstance(n, Readout):
            bias = fmt_shape(n.bias.shape) if n.bias is not None else "-"
            node_rows.append([n.name, "readout", fmt_shape(n.shape), "", f"loss={n.loss}", bias])
    syn_rows = []
    for e in g.synapses():
        shapes = e.synapse.shapes(g.node(e.src).shape)
        syn_rows.append([e.name, f"{e.src} -> {e.dst}", str(e.synapse.delay),
                         " |> ".join(op.kind for op in e.synapse.ops),
                         f"{fmt_shape(shapes[0])} -> {fmt_shape(shapes[-1])}", f"{e.synapse.num_parameters():,}"])
    feedback = [f"{e.name} ({e.src} -> {e.dst})" for e in g.synapses() if e.synapse.delay]
    parts = [head, "", _table(node_rows, ["node", "kind", "shape", "neurons", "neuron", "bias"]), "",
             _table(syn_rows, ["synapse", "edge", "delay", "ops", "shapes", "params"]), "",
             f"step order: {', '.join(g.step_order())}",
             f"feedback (delayed) synapses: {', '.join(feedback) or 'none'}"]
    return "\n".join(parts)


def _pass_arguments(p: argparse.ArgumentParser) -> None:
    """The pass options, generated from the pass signatures (spidec.options)."""
    from .options import add_arguments

    grp = p.add_argument_group("pass options (defaults: SPIDE's reference settings; a model that went through the "
                               "passes keeps its own)")
    add_arguments(grp, list(PIPELINE.values()))


def _pass_options(args: argparse.Namespace) -> dict:
    from .options import collect

    return collect(args, list(PIPELINE.values()))


def cmd_inspect(args: argparse.Namespace) -> int:
    g = _load(args)
    if args.after:
        from . import passes

        g = passes.run(g, upto=None if args.after == "quantize" else args.after, **_pass_options(args))
        if args.after == "quantize":
            g = passes.quantize(g)
    elif _pass_options(args):
        raise SpidecError("pass options need --after PASS (or use spidec compile)")
    if args.json:
        from .text import dumps

        print(json.dumps({
            "name": g.name, "parameters": g.num_parameters(), "step_order": g.step_order(),
            "nodes": [{"name": n.name, "kind": type(n).__name__.lower(), "shape": list(n.shape)} for n in g.nodes],
            "synapses": [{"name": e.name, "src": e.src, "dst": e.dst, "delay": e.synapse.delay,
                          "ops": [op.kind for op in e.synapse.ops], "parameters": e.synapse.num_parameters()}
                         for e in g.synapses()],
            "text": dumps(g, inline_max=0)[0]}, indent=2))
        return 0
    print(summary(g))
    if g.quant is not None:
        print(g.quant.describe())
    if not args.no_text:
        print("\n" + str(g), end="")
    return 0


def _reference_inputs(g: Graph, args: argparse.Namespace) -> tuple[dict[str, np.ndarray], np.ndarray | None, str]:
    rng = np.random.default_rng(args.seed)
    if args.data == "random":
        x = {i.name: rng.random((args.batch,) + i.shape) for i in g.inputs}
        labels = None
        ro = g.readouts
        if len(ro) == 1 and ro[0].loss == "cross_entropy":
            labels = rng.integers(0, ro[0].shape[0], size=args.batch)
        return x, labels, f"{args.batch} random inputs (uniform in [0, 1), seed {args.seed})"
    from .data import load as load_data

    if len(g.inputs) != 1:
        raise SpidecError(f"--data {args.data} feeds one input, but the graph has {len(g.inputs)}")
    ds = load_data(args.data).reshaped(g.inputs[0].shape)
    idx = rng.choice(len(ds.y_test), size=min(args.batch, len(ds.y_test)), replace=False)
    return ({g.inputs[0].name: ds.x_test[idx]}, ds.y_test[idx],
            f"{len(idx)} {args.data} test samples (seed {args.seed})")


def cmd_reference(args: argparse.Namespace) -> int:
    from . import reference as ref

    g = _load(args)
    x, labels, what = _reference_inputs(g, args)
    eq = ref.equilibrium(g, x, tol=args.tol, damping=args.damping)
    report: dict[str, Any] = {
        "model": g.name, "inputs": what, "iterations": eq.iterations, "residual": eq.residual,
        "populations": {}, "readouts": {}, "gradients": {},
    }
    lif = [f"{p.name} (leak {p.neuron.leak:g})" for p in g.populations if p.neuron.model == "LIF"]
    if lif:  # the rate equation has no leak: say what it is the equilibrium of
        report["warnings"] = [
            f"LIF population{'s' if len(lif) > 1 else ''} {', '.join(lif)}: the reference solves the IF rate "
            "equation a = clamp(W a + F x + b, 0, 1), leak ignored; a LIF population's spikes approximate it as "
            "SPIDE's leak-weighted average rate, not as spike count / T (which the leak lowers)"]
        for w in report["warnings"]:
            print(f"spidec: warning: {w}", file=sys.stderr)
    for p, a in eq.rates.items():
        report["populations"][p] = {
            "neurons": int(np.prod(a.shape[1:])), "mean_rate": float(a.mean()),
            "silent": float((a <= 0).mean()), "active": float(((a > 0) & (a < 1)).mean()),
            "saturated": float((a >= 1).mean()),
        }
    grads = None
    if labels is not None and g.readouts:
        value, dL_dy = ref.loss(g, eq.outputs, labels)
        grads = ref.implicit_backward(g, eq, dL_dy, method=args.method, loss_value=value)
        r = g.readouts[0]
        acc = float((eq.outputs[r.name].argmax(axis=1) == labels).mean()) if r.loss == "cross_entropy" else None
        report["readouts"][r.name] = {"loss": value, "kind": r.loss, "accuracy": acc}
        for name, gr in grads.params.items():
            report["gradients"][name] = {"shape": list(gr.shape), "norm": float(np.linalg.norm(gr)),
                                         "max_abs": float(np.abs(gr).max())}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"reference equilibrium of {g.name} on {what}:")
    print(f"converged in {eq.iterations} iterations, residual {eq.residual:.2e}\n")
    rows = [[p, f"{s['neurons']:,}", f"{s['mean_rate']:.4f}", f"{100 * s['silent']:.1f}%",
             f"{100 * s['active']:.1f}%", f"{100 * s['saturated']:.1f}%"] for p, s in report["populations"].items()]
    print(_table(rows, ["population", "neurons", "mean rate", "a = 0", "0 < a < 1", "a = 1"]))
    for r, s in report["readouts"].items():
        acc = f", accuracy {100 * s['accuracy']:.1f}%" if s["accuracy"] is not None else ""
        print(f"\nreadout {r}: {s['kind']} loss {s['loss']:.4f}{acc} (untrained weights give chance level)")
    if grads is not None:
        print("\nexact implicit gradient (delta = g + W^T (m * delta), solved exactly):")
        rows = [[n, fmt_shape(tuple(s["shape"])), f"{s['norm']:.4e}", f"{s['max_abs']:.4e}"]
                for n, s in report["gradients"].items()]
        print(_table(rows, ["tensor", "shape", "norm", "max |grad|"]))
    return 0


EPILOG_COMPILE = """examples:
  spidec compile examples/digits_fb.onnx --target sim -o build/
  spidec compile --torch examples/models.py:ConvNetF -o build/ --T 30 --T-back 100 --sf 100 --lr 0.05
  spidec train build/ --data digits --epochs 20
  spidec compile examples/digits_fb.onnx --target c --fixed -o build/fixed      # integer-only, host
  spidec compile examples/digits_fb.onnx --target c --board mps2-an386 --update online --report -o build/m4
  spidec train build/m4 --epochs 1                                               # train on the Cortex-M4
"""

EPILOG_TRAIN = """examples:
  spidec train build/sim --data digits --epochs 20
  spidec train build/sim --data mnist --epochs 5 --batch 128 --device cuda
  spidec train build/sim --data digits --resume    # continue from build/sim/checkpoint.pt
  spidec train build/c --data digits --epochs 5    # a c build's host executable
  spidec train build/m4 --epochs 1                 # a board build under QEMU, digits streamed from here
  spidec train build/m4 --data mnist --batch 1 --out weights.bin
  spidec train build/lava --epochs 1 --limit-train 300
"""


def _quant_options(args: argparse.Namespace) -> dict | None:
    from .options import collect
    from .passes import quantize

    opts = collect(args, [quantize])
    return opts if (opts or args.fixed or args.board) else None


def _boards() -> dict[str, str]:
    """Every board a backend builds for (its BOARDS), with that backend's target."""
    from .backends import TARGETS, get

    return {b: t for t in TARGETS for b in getattr(get(t), "BOARDS", {})}


def _board_target(board: str) -> str:
    return _boards()[board]


def cmd_compile(args: argparse.Namespace) -> int:
    from .backends import get
    from .compile import compile as compile_graph

    g = _load(args)
    if args.target is None:  # fixed point and boards: the target that builds them
        args.target = _board_target(args.board) if args.board else ("c" if args.fixed else "sim")
    if args.report and not (args.fixed or args.board):
        raise SpidecError("--report plans the memory of a fixed-point build", hint="add --fixed or --board BOARD")
    if args.report and not getattr(get(args.target), "BOARDS", None):  # (the lava target's fixed point has no plan)
        raise SpidecError(f"--report plans the memory of a microcontroller build, not of the {args.target} target",
                          hint="use --target c")
    art = compile_graph(g, target=args.target, out=args.out, board=args.board, quantize=_quant_options(args),
                        force=args.force, **_pass_options(args))
    if args.report:
        art.memory_report(quiet=args.quiet or args.json)
    written = sorted(p.name for p in art.out.iterdir() if p.is_file() and not p.name.startswith("."))
    files = printable(", ".join(written))
    t = art.graph.training
    if args.json:
        print(json.dumps({"model": art.graph.name, "target": args.target, "out": str(art.out), "files": written}))
        return 0
    if args.quiet:
        return 0
    print(f"compiled {art.graph.name} for target {args.target} into {art.out}/ ({files})")
    if t is not None and art.graph.simulation is not None:
        print(f"T={art.graph.simulation.T} T_back={t.T_back} sf={t.sf:g} lr={t.optimizer.lr:g} "
              f"momentum={t.optimizer.momentum:g} weight_decay={t.optimizer.weight_decay:g}; "
              f"{len(t.couples)} couples, {len(t.backward)} backward synapses, {len(t.updates)} update rules")
        prog = art.graph.program
        bounded = prog.restricted(t.optimizer.feedback_norm_mode) if prog is not None else {}
        if bounded:
            how = ("by the authors' reparametrisation (the stages read it scaled down)"
                   if t.optimizer.feedback_norm_mode == "reparam" else "by projection after every step")
            print(f"feedback norm: {', '.join(bounded)} bounded to Frobenius norm {t.optimizer.feedback_norm:g} "
                  f"(authors' units) {how}")
        dropped = [f"{e.name} p={e.synapse.dropout:g}" for e in art.graph.synapses() if e.synapse.dropout]
        if dropped:
            print(f"dropout (training only, one mask per sample for both stages): {', '.join(dropped)}")
    if getattr(art.graph, "quant", None) is not None:
        print(art.graph.quant.describe())
    print(art.next_steps())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """``spidec train BUILD`` (and its alias ``spidec run``): any target's build, one output shape."""
    from .runs import TrainOptions, train_build

    values = {f: getattr(args, f) for f in TrainOptions.__dataclass_fields__ if hasattr(args, f)
              and getattr(args, f) is not None}
    values["extra"] = tuple(getattr(args, "extra", ()))
    summary = train_build(args.build, TrainOptions(**values), say=print)
    if args.json:
        print(json.dumps(summary, default=str))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """``spidec run``: ``spidec train`` with the build's own defaults (the host executable's batch
    of 64, for which the compiled sf is meant: it no longer forces batch 1), except that a board
    build runs its host executable unless --qemu."""
    from pathlib import Path

    from .runs import read_manifest

    build = Path(args.build)
    if build.is_dir():
        info = read_manifest(build)
        if info["target"] == "c" and info.get("board") and not args.qemu:
            args.host = True
    return cmd_train(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    summary = run_demo(args.model, data=args.data, epochs=args.epochs, batch=args.batch, out=args.out,
                       quiet=args.quiet or args.json, progress=None, dt=args.dt, data_dir=args.data_dir)
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import report_dir

    def note(text: str) -> None:
        if not args.quiet:
            print(f"spidec: note: {text}", file=sys.stderr)

    for path in report_dir(args.run, data=args.data, data_dir=args.data_dir, note=note):
        if not args.quiet:
            print(f"wrote {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``spidec export BUILD_OR_MODEL --to nir|onnx|torch -o OUT``."""
    from pathlib import Path

    from .export import export, forward_graph, load_build

    dt = args.dt if args.dt is not None else 1e-4
    if args.file and Path(args.file).is_dir():  # a build folder: its latest weights
        if args.dt is not None and args.to != "nir":
            raise SpidecError("--dt applies to NIR files (.nir) only")
        g, weights = load_build(args.file, args.checkpoint)
        module = _load_torch_class(args.torch) if args.torch else None
    else:
        if args.checkpoint:
            raise SpidecError("--checkpoint applies to build folders only")
        if args.dt is not None and not (args.file or "").lower().endswith(".nir"):
            args.dt = None  # the time step the NIR file is written for, not one to read the model with
        g = forward_graph(_load(args))
        weights = f"the weights of {args.file or args.torch}"
        module = _load_torch_class(args.torch) if args.torch and args.to == "torch" else None
    if args.to != "nir" and args.delays is not None:
        raise SpidecError("--delays applies to --to nir only")
    path = export(g, args.to, args.out, dt=dt, delays=args.delays or "explicit", module=module)
    if args.json:
        print(json.dumps({"model": g.name, "format": args.to, "out": str(path), "weights": weights,
                          **({"dt": dt, "delays": args.delays or "explicit"} if args.to == "nir" else {})}))
    elif not args.quiet:
        extra = f", dt={dt:g} s, {args.delays or 'explicit'} delays" if args.to == "nir" else ""
        print(f"wrote {path} ({args.to}{extra}) from {weights}")
    return 0


def cmd_dataset(args: argparse.Namespace) -> int:
    from .data import pack

    paths = pack(args.source, args.out, args.data_dir)
    if args.json:
        print(json.dumps([str(p) for p in paths]))
    elif not args.quiet:
        for path in paths:
            print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spidec",
        description="Compile feedback spiking neural networks into programs that train themselves with "
                    "spikes (SPIDE).",
        epilog="exit codes: 0 ok, 1 error in the model/data/files (one line on stderr), 2 bad usage, "
               "130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"spidec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("inspect", help="print a model's IR, shapes and parameter counts",
                       description="Load a model and print its nodes, synapses, step order and IR text.",
                       epilog=EPILOG_INSPECT, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_arguments(p)
    p.add_argument("--no-text", action="store_true", help="print the tables only, not the IR text")
    p.add_argument("--json", action="store_true", help="print the nodes, synapses and IR text as JSON")
    p.add_argument("--after", choices=[*PIPELINE, "quantize"],
                   help="run the passes up to this one and print the result (quantize: all, then the "
                        "fixed-point scales of --fixed, with their default options)")
    _pass_arguments(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("compile", help="compile a model into a training program",
                       description="Run the passes (spiking, spide, schedule) and emit a program that trains the "
                                   "network with spikes.",
                       epilog=EPILOG_COMPILE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_arguments(p)
    p.add_argument("--target", choices=list(TARGETS),
                   help="what to emit: sim (default), c or lava (c with --fixed or --board; lava takes --fixed too)")
    p.add_argument("--seed", dest="torch_seed", type=int, help="--torch: the seed of the module's initial weights "
                   "(default 0: the same weights at every compile)")
    p.add_argument("-o", "--out", default="build", help="output folder (default: build): new, empty or an earlier "
                   "build (its files are replaced, checkpoints and results kept)")
    p.add_argument("--force", action="store_true", help="write into an output folder that holds other files")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    fx = p.add_argument_group("fixed point (targets c and lava) and microcontrollers (target c)")
    fx.add_argument("--fixed", action="store_true", help="integer-only fixed-point runtime (the quantize pass; "
                    "--target lava: Lava fixed_pt processes)")
    fx.add_argument("--board", choices=list(_boards()),
                    help="also emit a Cortex-M image: mps2-an386 (M4F) or mps2-an385 (M3); implies --fixed")
    from .options import add_arguments
    from .passes import quantize

    add_arguments(fx, [quantize])
    fx.add_argument("--report", action="store_true",
                    help="print RAM and flash by part from the plan (and check it against the built image)")
    _pass_arguments(p)
    p.set_defaults(func=cmd_compile)

    for verb in ("train", "run"):
        p = sub.add_parser(verb, help="train a compiled build, any target" if verb == "train" else
                           "the same as spidec train (kept for scripts)",
                           description="Train what spidec compile wrote, whatever the target: a sim build (its "
                                       "PyTorch program, here), a c build (the host executable), a board build (its "
                                       "Cortex-M image under qemu-system-arm with -icount shift=0, the data streamed "
                                       "from here through semihosting; --host for the host executable) or a lava "
                                       "build (Lava's simulator). Every target prints the same epoch lines; --json "
                                       "prints the summary. An option a target cannot honour is refused.",
                           epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("build", help="folder written by spidec compile")
        p.add_argument("--data", default="digits", help="digits, mnist, cifar10, cifar100, cifar10-dvs (these three "
                                                        "with --data-dir) or FILE.npz with x_train, y_train, x_test, "
                                                        "y_test (default: digits)")
        p.add_argument("--epochs", type=int, help="epochs (default: the target's: 20 sim, 1 c, board and lava)")
        p.add_argument("--batch", type=int, help="batch size (default: the build's: 64 sim and c, 1 board under "
                       "QEMU, 8 lava)")
        p.add_argument("--lr", type=float, help="learning rate (default: the model's)")
        p.add_argument("--seed", type=int, default=0, help="sample-order seed (default 0)")
        p.add_argument("--checkpoint", help="checkpoint file (sim, c host)")
        p.add_argument("--resume", action="store_true", help="continue from the checkpoint (sim, c host)")
        p.add_argument("--limit-train", dest="limit_train", type=int, help="use N training samples (sim, c and "
                       "board: the first N; lava)")
        p.add_argument("--limit-test", dest="limit_test", type=int, help="use N test samples (sim, c and board: the "
                       "first N; lava)")
        p.add_argument("--device", help="sim: cpu, cuda, cuda:1 ... (default: cuda if available)")
        p.add_argument("--qemu", action="store_true", help="board builds: under QEMU (their default)")
        p.add_argument("--host", action="store_true", help="board builds: the host executable instead of QEMU")
        p.add_argument("--out", help="board builds: write the trained weights to this file (relative to BUILD)")
        p.add_argument("--timeout", type=float, help="board builds: stop QEMU after this many seconds (an error: "
                       "exit 1)")
        p.add_argument("--lr-schedule", dest="lr_schedule", help="sim, c host: multistep:E1,E2:GAMMA, cosine, "
                       "constant or linear:K (c board too: linear:K; default: the model's milestones)")
        p.add_argument("--warmup", type=int, default=0, help="sim, c host: ramp the learning rate over N batches")
        p.add_argument("--augment", default="", help="sim, c host: crop4,flip (random 4-pixel-padded crops, "
                       "horizontal flips)")
        p.add_argument("--normalize", help="sim, c host: per-channel input normalisation MEAN,..;STD,.. or "
                       "cifar10 / cifar100")
        p.add_argument("--data-dir", dest="data_dir", help="the folder of the cifar10, cifar100 or cifar10-dvs "
                       "files (nothing is downloaded)")
        p.add_argument("--threads", type=int, help="c host: the samples of a batch on N threads, the same weights "
                       "for any N (default: the cores available); sim: torch's CPU threads (default: torch's)")
        p.add_argument("--quiet", action="store_true", help="print nothing but errors")
        p.add_argument("--json", action="store_true", help="print the summary as JSON")
        p.set_defaults(func=cmd_train if verb == "train" else cmd_run)

    p = sub.add_parser("demo", help="the main job: compile a feedback net to C and train it with spikes here",
                       description="Load a model (default: a built-in feedback MLP for the data), check it against "
                                   "the exact reference, compile it to C, train it with spikes on this CPU, and write "
                                   "history, trained weights, the energy estimate and plots.",
                       epilog="examples:\n  spidec demo\n  spidec demo examples/digits_fb.onnx --out build/demo\n"
                              "  spidec demo --data mnist --epochs 3\n  spidec demo --epochs 2 --json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="model file (.onnx, .spir, .nir); default: built in")
    p.add_argument("--dt", type=float, metavar="SECONDS", help="NIR files: the time step the file's time constants "
                   "refer to (NIR stores none; snnTorch exports assume 1e-4)")
    p.add_argument("--data", default="digits", help="digits, mnist, cifar10, cifar100, cifar10-dvs (these three with "
                   "--data-dir) or FILE.npz with x_train, y_train, x_test, y_test (default: digits)")
    p.add_argument("--data-dir", dest="data_dir", help="the folder of the cifar10, cifar100 or cifar10-dvs files")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: 20 digits, 3 mnist, else 5)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default: 64)")
    p.add_argument("--out", default="build/demo", help="output folder (default: build/demo)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("report", help="plots of a training run",
                       description="Write curves.png, rates.png, raster.png and graph.png into a run folder (a demo "
                                   "run, or a compiled sim or c build after spidec train); a plot it cannot draw is "
                                   "said in a note on stderr.",
                       epilog="examples:\n  spidec report build/demo\n  spidec report build/sim --data digits",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder")
    p.add_argument("--data", default=None, help="data set for the spike raster: digits, mnist, FILE.npz ... "
                   "(default: the run's: a demo's, or the test data a c build was trained on)")
    p.add_argument("--data-dir", dest="data_dir", help="the folder of the cifar10, cifar100 or cifar10-dvs files")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("dataset", help="data-set files for the C runtime",
                       description="spidec dataset pack SOURCE -o DIR: write SOURCE (digits, mnist, cifar10, "
                                   "cifar100, cifar10-dvs with --data-dir, or an .npz with x_train, y_train, x_test, "
                                   "y_test) as DIR/NAME.train.spds and NAME.test.spds, the binary format the C runtime "
                                   "reads (magic, version, shape, count, CRC); an .npz holding x (and y) alone as "
                                   "DIR/NAME.spds, without labels when it has no y: what the C program's predict "
                                   "reads.",
                       epilog="examples:\n  spidec dataset pack digits -o data\n  spidec dataset pack mnist -o data\n"
                              "  spidec dataset pack my_data.npz -o data --json\n"
                              "  spidec dataset pack new_samples.npz -o data     # x only: data/new_samples.spds\n"
                              "  build/c/train predict --data data/new_samples.spds --checkpoint ck.bin",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = dsub.add_parser("pack", help="write a data set in the runtime's format")
    q.add_argument("source", help="digits, mnist, cifar10, cifar100, cifar10-dvs or FILE.npz")
    q.add_argument("-o", "--out", default="data", help="output folder (default: data)")
    q.add_argument("--data-dir", dest="data_dir", help="the folder of the cifar10, cifar100 or cifar10-dvs files "
                   "(nothing is downloaded)")
    q.add_argument("--quiet", action="store_true", help="print nothing but errors")
    q.add_argument("--json", action="store_true", help="print the written paths as JSON")
    q.set_defaults(func=cmd_dataset)

    p = sub.add_parser("export", help="write a model or a trained build as NIR, ONNX or a torch state_dict",
                       description="Write a model file, a --torch module or a build folder (its latest weights: the "
                                   "checkpoint if there is one, else the compiled initial weights) as NIR (IF/LIF "
                                   "nodes with rate gain 1 at --dt, reset by subtraction; see spidec.export), ONNX "
                                   "(one step of the equilibrium map: inputs and state in, NAME_next and readouts out) "
                                   "or a "
                                   "PyTorch state_dict (torch.save of a dict of tensors, keyed by the IR's tensor "
                                   "names, or by the module's own names with --torch FILE.py:CLASS).",
                       epilog=EPILOG_EXPORT, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_arguments(p)
    p.add_argument("--to", required=True, choices=["nir", "onnx", "torch"], help="the format to write")
    p.add_argument("-o", "--out", required=True, help="the file to write")
    p.add_argument("--delays", choices=["explicit", "implicit"], help="--to nir: a Delay node on each feedback "
                   "synapse (explicit, default) or the plain cycle (implicit, as snnTorch writes recurrence)")
    p.add_argument("--checkpoint", help="a build folder: the weights file (default: its checkpoint.pt or "
                   "checkpoint.bin if any)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("reference", help="exact rate-space equilibrium and implicit gradient",
                       description="Solve the model's rate equilibrium a* = clamp(W a* + F x + b, 0, 1) "
                                   "exactly and, with labels, the exact implicit gradient of the loss.",
                       epilog=EPILOG_REFERENCE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_arguments(p)
    p.add_argument("--data", default="random",
                   help="inputs: random values, or test samples of a data set: digits, mnist or FILE.npz with x_train, "
                        "y_train, x_test, y_test (default: random)")
    p.add_argument("--batch", type=int, default=16, help="number of samples (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--tol", type=float, default=1e-10, help="convergence tolerance (default: 1e-10)")
    p.add_argument("--damping", type=float, default=1.0, help="fixed-point damping in (0, 1] (default: 1)")
    p.add_argument("--method", default="auto", choices=["auto", "dense", "gmres"],
                   help="linear solver of the implicit gradient (default: auto)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_reference)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # only the trainer takes options it does not know itself (a sim build's train.py does)
        if getattr(args, "func", None) not in (cmd_train, cmd_run):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.extra = extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "batch", None) is not None and args.batch < 1:
        parser.error("--batch must be at least 1")
    # a path that is not UTF-8 (its bytes are surrogates in Python) is echoed as \udcff, not a traceback
    strict = [s for s in (sys.stdout, sys.stderr) if getattr(s, "errors", None) == "strict"
              and hasattr(s, "reconfigure")]
    for stream in strict:
        stream.reconfigure(errors="backslashreplace")
    try:
        return args.func(args)
    except SpidecError as e:
        print(f"spidec: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("spidec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head & co.
        return 0
    except OSError as e:  # the file system refused (full, read-only, no permission): one line, no traceback
        from .fileio import os_error_text

        where = f"{os.fsdecode(e.filename)}: " if e.filename is not None else ""
        print(f"spidec: error: {printable(where + os_error_text(e))}", file=sys.stderr)
        return 1
    finally:
        for stream in strict:
            try:
                stream.reconfigure(errors="strict")
            except (OSError, ValueError):  # (a closed or broken pipe)
                pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
