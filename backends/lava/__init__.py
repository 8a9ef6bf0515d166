"""The ``lava`` backend: a training graph as Lava Processes that train in Lava's simulator.

    art = emit(g, "build/lava")      # processes.py, network.py, train.py, config.json, weights.npz
    net = art.load()                 # the emitted Network (needs lava-nc: pip install 'spidec[lava]')
    net.train_epoch(x, y); net.evaluate(x_test, y_test); net.close()

Lava (lava-nc 0.10.0) is archived upstream: it is an optional extra and ``lava_shim.py`` (a copy of
:mod:`spidec.backends.lava.shim`) makes it import on Python 3.11.

Synapses between populations, and when they deliver. Lava's Python runtime runs every process's
``run_spk`` of a time step concurrently and a port's ``recv`` blocks until each connected sender
has sent *that step's* message; Lava's own Dense sends the current computed in the previous step
before it receives (so that loops cannot deadlock): a one-step delay, which is exactly the model's
delayed (feedback) synapse, and such synapses stay Lava Dense processes. An undelayed synapse is
a ``SameStepDense`` process of the generated processes.py that receives the sender's spikes and
sends ``W s`` in the same step, so the receiving population integrates them in the step they were
fired, as in the sim and c targets (no pipeline delay, the same spike counts). That cannot
deadlock because the undelayed synapses of a model form no cycle (the check pass refuses one):
every chain of same-step receives ends at a delayed Dense or at a population's constant current.
The backward stage is the same graph transposed: the transpose of an undelayed synapse is a
``SameStepDense`` from the successor's couple to the predecessor's, of a delayed one a Dense.

Host transfers: Lava's ``Var.set``/``get`` move one element per message (about 20 us: 0.24 s for
LeNet-F's first population of 11760 neurons, 3 s of every sample's state and 19 s for one learning
step's weights), so the generated processes take each sample's state (a population's bias, a
couple's bias and mask, the zeroing of u, counts and delayed currents) and the stepped tensors (an
op chain's, a SameStepDense's matrix) as one array through a host pipe (an external InPort, as
Lava's Injector), and send their counts back through another (an external OutPort, as the
Extractor), on a one-element ``command`` Var that the process model handles in Lava's
``on_var_update`` callback, before the next run (processes.py states the protocol). Only Lava's
own Dense (delayed dense synapses) is still set element by element. LeNet-F: 0.5 s forward, about
1 s per training sample, 0.08 s per learning step.

Neurons: IF or LIF (the leak as in the sim program: u = leak (u - V s) after the spike, counts
and couple sums leak-weighted, rates over the program's norms), the bias full or per channel
(broadcast over H*W on the host: the constant current is computed there once per sample).

Op chains (conv, transposed conv, pooling, pad, tensor scales, zero: any chain of spidec.ops): a
synapse between populations that is not one dense weight is a ``ChainSynapse`` process of the
generated processes.py, which *applies the chain* to each step's spike vector: spidec.ops' own
``apply`` in the forward process, the reversed ``adjoint``s in the backward one (the transpose
exactly), times the chain's factor (its scalar scales folded in); delayed in Lava Dense's order
(the previous step's current sent first), undelayed as SameStepDense. No dense matrix is built: the
earlier delivery as the chain's n_out x n_in matrix (applied to the identity, refused over 64M
entries) held 35M float64 entries for LeNet-F's pool1 alone, twice, and multiplied them all every
step; the chain costs its own work per step (a conv: Ho*Wo*Cout*Cin*kh*kw multiply-adds). Measured
per step (numpy, this machine): LeNet-F's pool1 0.16 ms as a chain, 21 ms as its matrix; conv2
2.9 ms against 19 ms. A tiny chain is faster as a matrix (conv_feedback's 27 x 108 pool |> conv:
3.5 us against 126 us), but both are below Lava's own cost of a process step (about 0.5 ms), so
one path serves every chain. Memory bound: each chain process holds its tensors and, per
step, the im2col copy of a conv's windows (Ho*Wo*Cin*kh*kw float64: LeNet-F's conv2 196 x 375,
0.6 MB), so a model is bounded by its tensors and activations, as in the sim target, not by
n_out*n_in. The chain's tensors are one flat Var ``tensors`` of each process (the effective ones: a
reparametrised feedback weight restricted to its bound); after every learning step (and
``set_tensors``) the host sets them into both processes of chains that hold a learnable tensor
(frozen chains keep theirs), and the process rebuilds its ops when the Var was set. A learnable
op's gradient is its true gradient, as the sim program computes it: ``op.grad`` of (post carried
back through the adjoints of the later ops, pre carried forward through the earlier ops), times the
chain's factor. Input synapses and readouts need no process: the host applies their chains (and the
readout's adjoint) to each sample directly. The emitted network and processes import
:mod:`spidec.ops` only when the model has an op chain (a dense-only model's build runs without
spidec, as before).

Fixed point (``spidec.compile(q, "lava", out, fixed=True)``, ``--target lava --fixed``: a graph the
quantize pass annotated): processes_fixed.py holds fixed_pt process models (FixedPopulation,
FixedCouple, FixedDense) whose per-step integer arithmetic is spidec.fixed.FixedModel's (and the
fixed-point C runtime's) bit for bit, in both update modes, IF and LIF. The generated network.py
subclasses FixedModel and replaces only its two spiking loops (``spikes``, ``ternary``) by Lava runs,
so the host's once-per-sample work (input currents, integer readout and softmax, loss injection) and
the local updates are FixedModel's own code: on Loihi 2 the learning engines would take the local
update; the spiking stages are what run as Lava processes. The synapses are FixedDense processes,
not Lava's Dense, whose fixed_pt model truncates weights to 8 bits (Loihi 2's synapse format) while
the pass holds int16 weights. Every synapse between populations, whatever its kind (dense, average
pooling, conv, transposed conv), is one FixedDense holding the integer matrix FixedModel itself
multiplies, ``FixedModel._syn(name)``: the restricted dense weight, a pool's ``pool_matrix`` (the
coefficient ``P[o]`` at every tap of window ``o``, at the destination's scale) or a conv's
``conv_matrix`` (``M[o, i] = W[t(o, i)]``, rebuilt from the restricted kernel each sample), and its
backward FixedDense the transpose with FixedModel's shift (``B_src - F_dst + log2 S_dst``, the same for
every kind, since a pool's and a conv's entries are at the destination's scale as a dense weight's).
``_syn`` is the single source: a synapse kind FixedModel learns to run later runs here unchanged.
Before each stage the matrices that changed since the processes last received them (learnable dense
weights and conv kernels after a step, online after every sample, a reparametrised feedback's
restriction) are written into the processes. Cost: the dense equivalent of a pool or conv, n_out x
n_in int32 per stage (FixedModel holds it too, in int64, and a conv's tap index: 16 bytes an entry
for a pool, 24 for a conv, e.g. 0.5 GiB for LeNet-F's pool1 of 11760 x 2940; fixed point targets
small models, and only spidec.limits' model bounds apply), where the C runtime walks the windows and
taps. Input synapses (dense, conv, pool) need no process: FixedModel's ``currents`` computes them on
the host once per sample. The chains fixed point reduces (``spidec.fixed.normal_form``: pad |>
conv2d, avgpool2d |> tensor scale, zero synapses) arrive as those kinds, and an avgpool2d |> dense / conv2d
chain between populations as its matrix ``sum_o round_shift(W'[j, o] P[o], F_P)`` (into the readout it is
FixedModel's host readout). What fixed point cannot express (dropout, other op chains, a bare pool into the
readout) is refused by the quantize pass's checks
in one line, before a file is written.

The backend reads models with one constant data input and one cross-entropy readout, computed on
the host, and whose populations form one network (Lava runs the processes connected to the one it
is asked to run). Other models are refused with a message naming the synapse or population.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...artifact import Artifact
from ...errors import SpidecError
from ...fileio import BuildFiles
from ...ir import Graph
from ...program import BiasRule, Chain, ReadoutBiasRule, ReadoutWeightRule, WeightRule, lowered, require_program
from ...runs import write_manifest
from ...text import dumps
from .. import environment

TEMPLATES = Path(__file__).with_name("templates")


def _json_arg(value: Any) -> Any:
    """An op argument as JSON (pairs, shapes and pads as lists)."""
    if isinstance(value, tuple):
        return [_json_arg(v) for v in value]
    return value


def _synapse(g: Graph, ch: Chain, slots: dict[tuple[str, int | None, str], str]) -> dict[str, Any]:
    """A synapse as the network reads it: ``weight`` and ``factor`` for one dense weight (with
    shape-only ops; ``ops`` None), otherwise ``ops``: its chain ``factor x ops`` (the scalar scales
    folded into ``factor``) as spidec.ops kinds, arguments and tensor names, on ``shape_in`` (the
    source node's shape). Between populations an op chain is a ChainSynapse process that applies
    it to each step's spikes (see the module docstring)."""
    e = g.synapse(ch.name)
    shape_in = tuple(g.node(e.src).shape)
    if ch.kernel == "dense":
        return {"name": ch.name, "weight": ch.weight, "factor": ch.factor, "ops": None, "shape_in": list(shape_in)}
    ops = []
    for i in ch.ops:
        op = e.synapse.ops[i]
        held = op.tensors()
        ops.append({"kind": op.kind,
                    "args": {a.name: _json_arg(getattr(op, a.name)) for a in op.args if a.name not in held},
                    "tensors": {f: slots[(ch.name, i, f)] for f in held}})
    return {"name": ch.name, "weight": None, "factor": ch.factor, "ops": ops, "shape_in": list(shape_in)}


def _connected(pops: list[dict[str, Any]], between: list[dict[str, Any]]) -> None:
    """Refuse populations that no synapse joins to the first one: the emitted network runs the
    Lava processes connected to the first population (forward) and to its couple (backward)."""
    reached, todo = set(), [pops[0]["name"]]
    while todo:
        n = todo.pop()
        if n not in reached:
            reached.add(n)
            todo += [r["dst"] if r["src"] == n else r["src"] for r in between if n in (r["src"], r["dst"])]
    alone = [p["name"] for p in pops if p["name"] not in reached]
    if alone:
        raise SpidecError(f"population '{alone[0]}' is joined to population '{pops[0]['name']}' by no chain of "
                          "synapses; the lava backend runs one connected network", hint="use --target sim or c")


def config(g: Graph) -> dict[str, Any]:
    """What the Lava templates (and config.json) need, read from the step program."""
    from ... import __version__

    prog = require_program(g, "the lava backend")
    if prog.encoding != "constant" or len(prog.inputs) != 1:
        raise SpidecError("the lava backend reads one data input as a constant current")
    if len(prog.readouts) != 1 or prog.readouts[0].loss != "cross_entropy":
        raise SpidecError("the lava backend trains one cross-entropy readout")
    pops, between, inputs = [], [], []
    names = {p.name for p in prog.populations}
    for p in prog.populations:
        c = prog.couple_of(p.name)
        # IF or LIF (leak 1: IF); the rates divide the leak-weighted counts by the program's norms
        pops.append({"name": p.name, "n": p.size, "V": p.V, "vth": p.vth, "leak": p.leak, "norm": p.norm,
                     "bias": p.bias, "bias_channels": p.bias_channels, "couple": c.name, "S": c.S,
                     "vth_back": c.vth, "leak_back": c.leak, "norm_back": c.norm})
    slots = {(s.owner, s.op, s.field): n for n, s in g.tensor_slots().items()}
    for ch in prog.chains:
        if ch.dropout:
            raise SpidecError(f"synapse '{ch.name}' has dropout (p = {ch.dropout}); the lava backend does not run "
                              "dropout yet", hint="use --target sim or c, or export the model in eval mode")
        if ch.dst not in names:
            continue
        syn = _synapse(g, ch, slots)
        if ch.src in names:
            between.append({**syn, "src": ch.src, "dst": ch.dst, "delayed": bool(ch.delay)})
        else:
            inputs.append({**syn, "dst": ch.dst})
    _connected(pops, between)
    ro = prog.readouts[0]
    rsyn = []
    for f in ro.feeds:
        if f.src not in names:
            raise SpidecError("the lava backend's readout reads populations only")
        rsyn.append({**_synapse(g, prog.chain(f.syn), slots), "src": f.src})
    opt = prog.optimizer
    kinds = {WeightRule: "local", BiasRule: "bias", ReadoutWeightRule: "delta", ReadoutBiasRule: "delta_bias"}
    updates = []
    for r in prog.rules:
        u = {"tensor": r.tensor, "kind": kinds[type(r)], "synapse": getattr(r, "syn", None), "post": None,
             "gate": getattr(r, "gate", None), "scale": getattr(r, "scale", 1.0),
             "channels": getattr(r, "channels", 0)}
        u["post"] = r.post if isinstance(r, (WeightRule, BiasRule)) else r.node  # type: ignore[union-attr]
        updates.append(u)
    return {
        "version": __version__, "model": prog.model, "hash": prog.build_hash,
        "T": prog.T, "T_back": prog.T_back, "sf": prog.sf, "input": prog.inputs[0].name,
        "optimizer": {"lr": opt.lr, "momentum": opt.momentum, "weight_decay": opt.weight_decay,
                      "milestones": list(opt.milestones), "gamma": opt.gamma,
                      "reparam": prog.restricted("reparam"), "project": prog.restricted("project")},
        "populations": pops, "between": between, "input_synapses": inputs,
        "readout": {"name": ro.name, "n": ro.size, "bias": ro.bias, "synapses": rsyn},
        "updates": updates,
        "learnable": [r.tensor for r in prog.rules],
    }


# fixed point: a quantized graph (spidec.compile(..., fixed=True), --target lava --fixed) runs the
# quantize pass's integer arithmetic in fixed_pt process models (see emit)
FIXED_POINT = True


def emit(g: Graph, out: str | Path, board: str | None = None) -> LavaArtifact:
    """Write the Lava program of training graph ``g`` into ``out``: floating_pt processes, or, when
    the quantize pass ran (``g.quant``, as the c backend decides), fixed_pt processes whose integer
    arithmetic is :class:`spidec.fixed.FixedModel`'s bit for bit (processes_fixed.py.j2,
    network_fixed.py.j2: the spiking stages in Lava, the once-per-sample host work and the local
    updates by FixedModel's own code; pool and conv synapses as FixedModel._syn's integer matrices).
    What fixed point cannot express (dropout, op chains other than spidec.fixed.normal_form's, ...) the
    quantize pass refuses in one line; ``board`` (Cortex-M images) is the c target's."""
    if board is not None:
        raise SpidecError(f"board '{board}' is a Cortex-M image of the c target; the lava target builds no boards",
                          hint="use --target c --board BOARD, or --target lava --fixed")
    fixed = g.quant is not None
    g = lowered(g, "the lava backend")
    cfg = config(g)
    if fixed:
        from ...fixed import FixedModel

        # (the checks of fixed point, before a file is written: whatever FixedModel runs, the fixed_pt
        # processes run, each synapse between populations as FixedModel._syn's integer matrix)
        FixedModel(g)
        cfg["fixed"] = {"update": g.quant.update}
    out = Path(out)
    env = environment(TEMPLATES)
    suffix = "_fixed" if fixed else ""
    with BuildFiles(out) as files:  # all or nothing, never through a symbolic link
        # (the fixed processes' module has its own name: the networks import it by name from
        # their folder, and a float build's `processes` may already be imported in this process)
        files.write_text(f"processes{suffix}.py", env.get_template(f"processes{suffix}.py.j2").render(**cfg))
        files.write_text("network.py", env.get_template(f"network{suffix}.py.j2").render(
            **cfg, update=g.quant.update if fixed else None))
        files.write_text("train.py", env.get_template("train.py.j2").render(**cfg))
        files.copy(Path(__file__).with_name("shim.py"), "lava_shim.py")
        files.write_text("config.json", json.dumps(cfg, indent=1) + "\n")
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in g.parameters(learnable_only=False).items()})
        files.write_bytes("weights.npz", buf.getvalue())
        files.write_text("model.spir", dumps(g, inline_max=0, tensors_file="weights.npz")[0])
    write_manifest(out, "lava", g.program)
    return LavaArtifact(out, g)


@dataclass
class LavaArtifact(Artifact):
    """The Lava program ``emit`` wrote; the :class:`~spidec.artifact.Artifact` methods run on one
    loaded ``Network`` (``close()`` stops its Lava runtimes)."""

    out: Path
    graph: Graph
    target = "lava"
    _net: Any = None

    def build(self) -> Any:
        if self._net is None:
            self._net = self.load()
        return self._net

    def close(self) -> None:
        if self._net is not None:
            self._net.close()
            self._net = None

    def train(self, x: Any, y: Any, *, epochs: int = 1, batch: int = 8, lr: float | None = None,
              seed: int = 0, **opts: Any) -> list[dict]:
        given = [k for k, v in opts.items() if v]
        if given:
            raise SpidecError(f"the lava target does not take {given[0]} yet (the compiled milestones and the data "
                              "as given)", hint="train with the sim or c target")
        net = self.build()
        x = np.asarray(x, np.float64).reshape(len(y), -1)
        rng = np.random.default_rng(seed)
        history = []
        for epoch in range(epochs):
            r = net.train_epoch(x, np.asarray(y), batch, lr=_lr_at(net.cfg, epoch, lr), perm=rng.permutation(len(y)))
            history.append({"epoch": epoch + 1, "train_loss": r["loss"], "train_accuracy": r["accuracy"]})
        return history

    def evaluate(self, x: Any, y: Any) -> dict:
        return self.build().evaluate(np.asarray(x, np.float64).reshape(len(y), -1), np.asarray(y))

    def rates(self, x: Any) -> dict[str, np.ndarray]:
        net = self.build()
        x = np.asarray(x, np.float64)
        per = [net.forward(xi)[0] for xi in x.reshape(len(x), -1)]
        return {name: np.stack([r[name] for r in per]).reshape(len(x), *shape) for name, shape in self._populations()}

    def get_weights(self) -> dict[str, np.ndarray]:
        return self.build().tensors()

    def set_weights(self, values: dict[str, Any]) -> None:
        try:
            self.build().set_tensors(values)
        except (KeyError, ValueError) as e:
            raise SpidecError(str(e).strip("'\"")) from None

    def load(self) -> Any:
        """The emitted Network (imports Lava)."""
        try:
            import lava  # noqa: F401
        except ImportError:
            raise SpidecError("the lava backend's program needs Lava: pip install 'spidec[lava]' (see the "
                              "README for the install recipe on Python 3.11)") from None
        name = f"spidec_lava_{hashlib.sha1(str(self.out.resolve()).encode()).hexdigest()[:10]}"
        spec = importlib.util.spec_from_file_location(name, self.out / "network.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module.Network(self.out)

    def next_steps(self) -> str:
        return f"train it: spidec train {self.out} --data digits --epochs 1 (needs Lava, see the README)"


def _lr_at(cfg: dict[str, Any], epoch: int, lr: float | None) -> float:
    """The learning rate of an epoch: the model's (or ``lr``) times gamma at each milestone passed."""
    opt = cfg["optimizer"]
    base = opt["lr"] if lr is None else lr
    return base * opt.get("gamma", 0.1) ** sum(1 for m in opt.get("milestones", ()) if epoch >= m)


# what `spidec train` takes for a lava build besides the common options (spidec.runs)
TRAIN_OPTIONS = ("limit_train", "limit_test", "data_dir")


def train_build(out: Path, opts: Any, say: Any) -> dict[str, Any]:
    """``spidec train`` of a lava build: in this process, the epoch lines as on every target."""
    import time

    from ...data import load
    from ...runs import epoch_line
    from ...text import load as load_model

    ds = load(opts.data, opts.data_dir)  # (spidec.data: every named data set and .npz, as every target reads them)
    g = load_model(out / "model.spir")
    ds = ds.reshaped(g.inputs[0].shape)  # (samples of another size: one line, not a numpy error in the network)
    classes = g.readouts[0].shape[0]
    if ds.classes > classes:
        raise SpidecError(f"data set '{ds.name}' has labels up to {ds.classes - 1}; the model's readout "
                          f"'{g.readouts[0].name}' has {classes} classes")
    x, y = ds.x_train.reshape(len(ds.x_train), -1), ds.y_train
    xt, yt = ds.x_test.reshape(len(ds.x_test), -1), ds.y_test
    if opts.limit_test:
        xt, yt = xt[: opts.limit_test], yt[: opts.limit_test]
    net = LavaArtifact(out, None).load()  # type: ignore[arg-type]
    epochs = []
    try:
        rng = np.random.default_rng(opts.seed)
        for epoch in range(opts.epochs if opts.epochs is not None else 1):
            perm = rng.permutation(len(y))[: opts.limit_train or len(y)]
            t0 = time.monotonic()
            lr = _lr_at(net.cfg, epoch, opts.lr)
            r = net.train_epoch(x, y, opts.batch or 8, lr=lr, perm=perm)
            entry = {"epoch": epoch + 1, "lr": lr,
                     "train_loss": r["loss"], "train_accuracy": r["accuracy"],
                     "test_accuracy": net.evaluate(xt, yt)["accuracy"], "seconds": time.monotonic() - t0}
            epochs.append(entry)
            say(epoch_line(entry))
    finally:
        net.close()
    return {"epochs": epochs}


__all__ = ["FIXED_POINT", "TRAIN_OPTIONS", "LavaArtifact", "config", "emit", "train_build"]
