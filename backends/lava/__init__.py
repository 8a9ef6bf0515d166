"""The ``lava`` backend: a training graph as Lava Processes that train in Lava's simulator.

    art = emit(g, "build/lava")      # processes.py, network.py, train.py, config.json, weights.npz
    net = art.load()                 # the emitted Network (needs lava-nc: pip install 'spidec[lava]')
    net.train_epoch(x, y); net.evaluate(x_test, y_test); net.close()

Lava (lava-nc 0.10.0) is archived upstream: it is an optional extra and ``lava_shim.py`` (a copy of
:mod:`spidec.backends.lava.shim`) makes it import on Python 3.11. Lava's Dense process delivers a
spike one step after it was sent, which is exactly the model's delayed (feedback) synapse; the
backend therefore reads models whose synapses between populations are all delayed (the feedback
MLPs), with dense weights and one input and one readout, computed on the host. Other models are
refused with a message.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from ...errors import SpidecError
from ...ir import Graph, Input, Population, Readout
from ...ops import Dense, Flatten, Reshape, Scale
from ...text import dumps

TEMPLATES = Path(__file__).with_name("templates")


def _chain(g: Graph, name: str) -> tuple[str, float]:
    """(weight tensor, scalar factor) of a synapse that is one dense weight with shape-only ops."""
    e = g.synapse(name)
    slots = {(s.owner, s.op, s.field): n for n, s in g.tensor_slots().items()}
    weight, factor = None, 1.0
    for i, op in enumerate(e.synapse.ops):
        if isinstance(op, (Flatten, Reshape)):
            continue
        if isinstance(op, Scale) and isinstance(op.factor, float):
            factor *= op.factor
        elif isinstance(op, Dense) and weight is None:
            weight = slots[(e.name, i, "weight")]
        else:
            raise SpidecError(f"synapse '{name}': the lava backend reads one dense weight per synapse, not "
                              f"{op.kind}", hint="use --target sim or c for this model")
    if weight is None:
        raise SpidecError(f"synapse '{name}' has no weight; the lava backend needs one")
    return weight, factor


def config(g: Graph) -> dict[str, Any]:
    from ... import __version__

    if g.simulation is None or g.training is None or g.schedule is None:
        raise SpidecError("the lava backend needs a training graph; run the passes first: spidec.passes.run(g)")
    if g.simulation.encoding != "constant" or len(g.inputs) != 1:
        raise SpidecError("the lava backend reads one data input as a constant current")
    if len(g.readouts) != 1 or g.readouts[0].loss != "cross_entropy":
        raise SpidecError("the lava backend trains one cross-entropy readout")
    t = g.training
    pops, recurrent, inputs = [], [], []
    for p in g.populations:
        n = p.neuron
        if n.model != "IF":
            raise SpidecError(f"population '{p.name}' is LIF; the lava backend has IF models only")
        if p.bias is not None and p.bias.shape != p.shape:
            raise SpidecError(f"population '{p.name}' has a per-channel bias; the lava backend needs a full one")
        c = t.couple_of(p.name)
        pops.append({"name": p.name, "n": p.size, "V": n.V, "vth": n.vth, "bias": f"{p.name}.bias"
                     if p.bias is not None else None, "couple": c.name, "S": c.S, "vth_back": c.vth})
    for e in g.synapses():
        src, dst = g.node(e.src), g.node(e.dst)
        weight, factor = _chain(g, e.name)
        if isinstance(src, Population) and isinstance(dst, Population):
            if not e.synapse.delay:
                raise SpidecError(f"synapse '{e.name}' ({e.src} -> {e.dst}) is not delayed; Lava's Dense delivers "
                                  "spikes one step later, so the lava backend reads delayed (feedback) synapses "
                                  "between populations only", hint="use --target sim or c for this model")
            recurrent.append({"name": e.name, "src": e.src, "dst": e.dst, "weight": weight, "factor": factor})
        elif isinstance(src, Input) and isinstance(dst, Population):
            inputs.append({"name": e.name, "dst": e.dst, "weight": weight, "factor": factor})
    fed = {r["dst"] for r in recurrent}
    if any(p["name"] not in fed for p in pops):
        raise SpidecError("every population needs a feedback synapse into it for the lava backend "
                          f"({', '.join(p['name'] for p in pops if p['name'] not in fed)} has none)")
    ro: Readout = g.readouts[0]
    rsyn = []
    for e in g.in_synapses(ro.name):
        weight, factor = _chain(g, e.name)
        if not isinstance(g.node(e.src), Population):
            raise SpidecError("the lava backend's readout reads populations only")
        rsyn.append({"name": e.name, "src": e.src, "weight": weight, "factor": factor})
    opt = t.optimizer
    text, _ = dumps(g, inline_max=0)
    return {
        "version": __version__, "model": g.name, "hash": hashlib.sha256(text.encode()).hexdigest()[:16],
        "T": g.simulation.T, "T_back": t.T_back, "sf": t.sf, "input": g.inputs[0].name,
        "optimizer": {"lr": opt.lr, "momentum": opt.momentum, "weight_decay": opt.weight_decay,
                      "feedback_norm": opt.feedback_norm},
        "populations": pops, "recurrent": recurrent, "input_synapses": inputs,
        "readout": {"name": ro.name, "n": int(np.prod(ro.shape)), "bias": f"{ro.name}.bias" if ro.bias is not None
                    else None, "synapses": rsyn},
        "updates": [{"tensor": u.tensor, "kind": u.kind, "synapse": u.synapse, "post": u.post, "gate": u.gate}
                    for u in t.updates],
        "learnable": list(g.parameters()),
        "feedback_tensors": sorted({r["weight"] for r in recurrent}),
    }


def emit(g: Graph, out: str | Path) -> LavaArtifact:
    cfg = config(g)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    for name in ("processes.py", "network.py", "train.py"):
        (out / name).write_text(env.get_template(name + ".j2").render(**cfg))
    shutil.copyfile(Path(__file__).with_name("shim.py"), out / "lava_shim.py")
    (out / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    with open(out / "weights.npz", "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in g.parameters(learnable_only=False).items()})
    (out / "model.spir").write_text(dumps(g, inline_max=0, tensors_file="weights.npz")[0])
    return LavaArtifact(out, g)


@dataclass
class LavaArtifact:
    out: Path
    graph: Graph

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


__all__ = ["LavaArtifact", "config", "emit"]
