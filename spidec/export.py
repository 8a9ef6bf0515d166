"""Exporters: a (trained) spidec model out to NIR, ONNX and a PyTorch ``state_dict``.

    spidec.to_nir(g, "model.nir", dt=1e-4, delays="explicit")
    spidec.to_onnx(g, "model.onnx")                 # one step of the equilibrium map
    spidec.to_torch(g, "model.pt", module=None)     # a state_dict (IR names, or the module's names)
    g, weights = spidec.export.load_build("build/sim")   # a build folder with its trained weights

``spidec export BUILD_OR_MODEL --to nir|onnx|torch -o OUT`` is the command-line form.

Units of the NIR file (NIR stores no time step; the file is written for ``dt`` and says so in its
metadata ``spidec.dt``). A spidec population computes rates ``a = clamp(I, 0, 1)`` from the current
``I = sum_k W_k a_k + b`` in rate units; its spiking form adds ``V I`` per step (``V = vth - u_rest``),
spikes at ``vth`` and subtracts ``V``, so its rate is ``I``. A NIR IF node integrates
``dv/dt = r I``, i.e. ``v += r dt I`` per step of ``dt``; with a spike at ``v_threshold`` and reset by
subtraction of ``v_threshold - v_reset`` its rate per step is ``r dt I / (v_threshold - v_reset)``.
spidec writes

    IF:  v_threshold = vth, v_reset = 0, r = vth / dt
         (rate gain r dt / (v_threshold - v_reset) = 1)
    LIF: v_threshold = vth, v_reset = 0, v_leak = 0, tau = dt / (1 - leak), r = vth tau / dt
         (Euler: v <- (1 - dt/tau) v + (dt/tau) r I = leak v + vth I, the snnTorch convention
          r = tau/dt; rate gain r dt / (tau (v_threshold - v_reset)) = 1)

so the gain is exactly 1: every weight and bias is written unchanged (the NIR Affine/Conv2d weight
multiplies spikes, the spidec weight rates, and a rate is a spike average). The reset is by
subtraction (node metadata ``spidec.reset = subtract``; NIR 1.0 has no field for it, and snnTorch
and Sinabs write a subtractive reset as ``v_reset = 0`` too). spidec's rounding offset
(``u_rest = -vth``: the membrane starts half a reset below threshold) has no NIR field either: it is
kept in the node metadata (``spidec.vth``, ``spidec.u_rest``, ``spidec.leak``), and a NIR simulator
that starts at 0 floors where spidec rounds (rate error at most 1/T).

Structure. Inputs become ``Input`` nodes, populations IF/LIF nodes, readouts ``Output`` nodes (NIR
sums the edges into a node, as spidec sums synapses). A synapse becomes one NIR node per op, named
after the synapse (``fc_in``; ``conv.0``, ``conv.1`` for a chain): dense -> ``Linear`` (``Affine``
when it carries a bias), conv2d -> ``Conv2d`` (bias zeros unless it carries one), avgpool2d ->
``AvgPool2d``, flatten (and a reshape to one axis) -> ``Flatten(start_dim=0)`` (per sample), scale
-> ``Scale`` (the factor over the whole shape). The bias of a population or readout is carried by
the last op of one synapse into it (an undelayed one first) when that op is dense, or conv2d with a
per-channel bias. A delayed synapse (``delay=1``) gets a ``Delay`` node of ``dt`` right after its
source with ``delays="explicit"``; with ``delays="implicit"`` the cycle is written plain, which
NIRTorch and most NIR importers read as the previous step's output on the back edge.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SpidecError
from .fileio import atomic_write
from .ir import Graph, Input, Population
from .ops import AvgPool2d, Conv2d, ConvTranspose2d, Dense, Flatten, LinearOp, Pad, Reshape, Scale, Zero, fmt_shape

DELAYS = ("explicit", "implicit")
FORMATS = ("nir", "onnx", "torch")


# ====================================================================== the forward graph

def forward_graph(g: Graph) -> Graph:
    """The model of ``g`` without what the passes added (simulation, training, step program), with
    the weights the programs compute with (a norm-restricted feedback weight at its effective
    value, see :func:`spidec.reference.effective`)."""
    from .reference import effective

    g = effective(g)
    out = Graph(g.name)
    for node in g.nodes:
        out.add(node)
    for e in g.synapses():
        out.add_synapse(e.src, e.dst, e.synapse.ops, delay=e.synapse.delay, name=e.name,
                        dropout=e.synapse.dropout, dropout_bias=e.synapse.dropout_bias)
    return out.validate()


def _bias_carriers(g: Graph) -> dict[str, str]:
    """``{node: synapse}``: the synapse whose last op carries the bias of each biased population
    or readout (NIR has no bias node). Refuses a bias that no op can carry."""
    carriers: dict[str, str] = {}
    for node in g.nodes:
        if isinstance(node, Input) or node.bias is None:
            continue
        kind = "population" if isinstance(node, Population) else "readout"
        fits, why = [], []
        for e in sorted(g.in_synapses(node.name), key=lambda e: e.synapse.delay):  # undelayed first
            last = e.synapse.ops[-1]
            if isinstance(last, Dense):
                fits.append(e.name)
            elif isinstance(last, Conv2d):
                if node.bias.shape == (last.weight.shape[0],):
                    fits.append(e.name)
                else:
                    why.append(f"its bias {fmt_shape(node.bias.shape)} is not one per channel as NIR's Conv2d "
                               f"bias (from '{e.name}')")
        if not fits:
            detail = f" ({why[0]})" if why else ""
            raise SpidecError(f"{kind} '{node.name}' has a bias but no synapse into it ends in a dense or conv2d op "
                              f"to carry it{detail}: NIR has no bias node", node=node.name)
        carriers[node.name] = fits[0]
    return carriers


# ====================================================================== NIR

def _nir() -> Any:
    try:
        import nir
    except ImportError:
        raise SpidecError("NIR export needs the nir package: pip install 'spidec[nir]' (or pip install "
                          "'nir>=1.0.8,<2')") from None
    return nir


def _neuron_node(nir: Any, p: Population, dt: float) -> Any:
    n = p.neuron

    def full(v: float) -> np.ndarray:
        return np.full(p.shape, v, dtype=np.float64)

    meta = {"spidec.reset": "subtract", "spidec.vth": n.vth, "spidec.u_rest": float(n.u_rest),  # type: ignore[arg-type]
            "spidec.leak": n.leak, "spidec.model": n.model}
    if n.model == "IF":
        return nir.IF(r=full(n.vth / dt), v_threshold=full(n.vth), v_reset=full(0.0), metadata=meta)
    tau = dt / (1.0 - n.leak)
    return nir.LIF(tau=full(tau), r=full(n.vth * tau / dt), v_leak=full(0.0), v_threshold=full(n.vth),
                   v_reset=full(0.0), metadata=meta)


def _op_node(nir: Any, op: LinearOp, shape_in: tuple[int, ...], bias: np.ndarray | None, where: str) -> Any:
    meta: dict[str, Any] = {}
    if getattr(op, "trainable", True) is False:
        meta["spidec.trainable"] = 0
    if isinstance(op, Dense):
        if bias is not None:
            return nir.Affine(weight=op.weight, bias=np.asarray(bias, dtype=op.weight.dtype), metadata=meta)
        return nir.Linear(weight=op.weight, metadata=meta)
    if isinstance(op, Conv2d):
        b = np.zeros(op.weight.shape[0], op.weight.dtype) if bias is None else np.asarray(bias, op.weight.dtype)
        meta["spidec.carries_bias"] = int(bias is not None)
        return nir.Conv2d(input_shape=tuple(int(s) for s in shape_in[1:]), weight=op.weight, stride=op.stride,
                          padding=op.padding, dilation=(1, 1), groups=1, bias=b, metadata=meta)
    if isinstance(op, AvgPool2d):
        if op.padding != (0, 0) and not op.count_include_pad:
            raise SpidecError(f"{where}: avgpool2d with padding and count_include_pad=false has no NIR node (NIR's "
                              f"AvgPool2d divides by the kernel size everywhere)")
        return nir.AvgPool2d(kernel_size=np.array(op.kernel), stride=np.array(op.stride),
                             padding=np.array(op.padding))
    if isinstance(op, Flatten) or (isinstance(op, Reshape) and op.shape == (math.prod(shape_in),)):
        return nir.Flatten(input_type={"input": np.array(shape_in)}, start_dim=0, end_dim=-1, metadata=meta)
    if isinstance(op, Reshape):
        raise SpidecError(f"{where}: reshape {fmt_shape(shape_in)} -> {fmt_shape(op.shape)} is no flatten: NIR "
                          f"has Flatten only")
    if isinstance(op, Scale):
        if isinstance(op.factor, np.ndarray):
            factor = np.ascontiguousarray(np.broadcast_to(op.factor, shape_in))
        else:
            factor = np.full(shape_in, op.factor, dtype=np.float32)
            meta["spidec.scalar"] = 1
        return nir.Scale(scale=factor, metadata=meta)
    if isinstance(op, ConvTranspose2d):
        raise SpidecError(f"{where}: conv_transpose2d has no NIR node (NIR 1.0 has no transposed convolution)")
    if isinstance(op, Pad):
        raise SpidecError(f"{where}: pad has no NIR node (NIR pads only inside Conv2d and AvgPool2d)")
    if isinstance(op, Zero):
        raise SpidecError(f"{where}: the zero op has no NIR node (remove the synapse: it carries no current)")
    raise SpidecError(f"{where}: {op.kind} has no NIR node")  # pragma: no cover - every op kind is above


def nir_graph(g: Graph, *, dt: float = 1e-4, delays: str = "explicit") -> Any:
    """``g`` (its forward model, see :func:`forward_graph`) as a ``nir.NIRGraph`` (see the module
    docstring for the units and the structure)."""
    nir = _nir()
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise SpidecError(f"dt must be a positive number of seconds, got {dt!r}")
    dt = float(dt)
    if delays not in DELAYS:
        raise SpidecError(f"delays must be one of {', '.join(DELAYS)}, got {delays!r}")
    from . import __version__

    g = forward_graph(g)
    carriers = _bias_carriers(g)
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    for node in g.nodes:
        if isinstance(node, Input):
            nodes[node.name] = nir.Input(input_type={"input": np.array(node.shape)})
        elif isinstance(node, Population):
            nodes[node.name] = _neuron_node(nir, node, dt)
        else:
            nodes[node.name] = nir.Output(output_type={"output": np.array(node.shape)},
                                          metadata={"spidec.readout": 1, "spidec.loss": node.loss})
    for e in g.synapses():
        src, dst = g.node(e.src), g.node(e.dst)
        shapes = e.synapse.shapes(src.shape)
        ops = e.synapse.ops
        prev = e.src
        if e.synapse.delay and delays == "explicit":
            name = f"{e.name}.delay"
            nodes[name] = nir.Delay(delay=np.full(src.shape, dt, dtype=np.float64),
                                    metadata={"spidec.steps": 1})
            edges.append((prev, name))
            prev = name
        for i, op in enumerate(ops):
            name = e.name if len(ops) == 1 else f"{e.name}.{i}"
            carry = carriers.get(e.dst) == e.name and i == len(ops) - 1
            where = f"synapse '{e.name}'" + (f", op {i}" if len(ops) > 1 else "")
            nodes[name] = _op_node(nir, op, shapes[i], dst.bias if carry else None, where)  # type: ignore[union-attr]
            edges.append((prev, name))
            prev = name
        edges.append((prev, e.dst))
    meta = {"spidec.version": __version__, "spidec.model": g.name, "spidec.dt": dt, "spidec.reset": "subtract",
            "spidec.delays": delays,
            "spidec.units": "IF r = vth/dt, v_threshold = vth, v_reset = 0; LIF tau = dt/(1-leak), r = vth*tau/dt; "
                            "rate gain 1, weights and biases in spidec's rate units; reset by subtraction"}
    try:
        return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=True)
    except Exception as e:  # a bug here, not the user's: say what NIR objected to
        raise SpidecError(f"NIR refused the exported graph of '{g.name}': {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from None


def nir_bytes(g: Graph, *, dt: float = 1e-4, delays: str = "explicit") -> bytes:
    """The NIR file of ``g`` as bytes, checked by reading it back with ``nir.read`` (type checks on)."""
    nir = _nir()
    graph = nir_graph(g, dt=dt, delays=delays)
    buf = io.BytesIO()
    nir.write(buf, graph)
    data = buf.getvalue()
    try:
        nir.read(io.BytesIO(data))
    except Exception as e:  # pragma: no cover - would be a bug of this exporter
        raise SpidecError(f"nir.read refuses the file written for '{g.name}': {type(e).__name__}: {e}") from None
    return data


def to_nir(g: Graph, path: str | Path, *, dt: float = 1e-4, delays: str = "explicit") -> Path:
    """Write ``g`` (trained weights as they are in the graph) as a NIR file, atomically.

    ``dt``: the time step the file is written for (NIR stores none; kept in the metadata).
    ``delays``: ``explicit`` writes a ``Delay`` node of one step on each delayed synapse,
    ``implicit`` the plain cycle. Returns the path."""
    data = nir_bytes(g, dt=dt, delays=delays)
    path = Path(path)
    atomic_write(path, lambda f: f.write(data))
    return path


# ====================================================================== ONNX and torch

def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise SpidecError("this export needs PyTorch: pip install 'spidec[torch]'") from None
    return torch


@dataclass(frozen=True)
class StepIO:
    """The names of the one-step map: data inputs, state inputs (the populations that feed back
    through a delayed synapse) with their outputs, and the readouts."""

    inputs: tuple[str, ...]
    state: tuple[tuple[str, str], ...]  # (state input = population name, its output)
    readouts: tuple[str, ...]

    @property
    def input_names(self) -> list[str]:
        return [*self.inputs, *(s for s, _ in self.state)]

    @property
    def output_names(self) -> list[str]:
        return [*(o for _, o in self.state), *self.readouts]


def step_io(g: Graph) -> StepIO:
    taken = {n.name for n in g.nodes} | {e.name for e in g.synapses()}
    state = []
    for e in g.synapses():
        if e.synapse.delay and e.src not in [s for s, _ in state]:
            if isinstance(g.node(e.src), Input):
                raise SpidecError(f"synapse '{e.name}' delays an input: a one-step map has no state for it; "
                                  f"the ONNX and torch exports need delayed synapses from populations", node=e.name)
            out = f"{e.src}_next"
            while out in taken:
                out += "_"
            taken.add(out)
            state.append((e.src, out))
    return StepIO(tuple(n.name for n in g.inputs), tuple(state), tuple(n.name for n in g.readouts))


def step_module(g: Graph) -> Any:
    """A ``torch.nn.Module`` computing one step of ``g``'s equilibrium map:
    ``forward(*inputs, *state) -> (*state_next, *readouts)`` (see :func:`step_io`); its buffers
    are the graph's tensors."""
    torch = _torch()
    import torch.nn.functional as F

    g = forward_graph(g)
    io_ = step_io(g)
    carriers = _bias_carriers_loose(g)
    names = {name: f"t{i}" for i, name in enumerate(g.parameters(learnable_only=False))}

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name, key in names.items():
                self.register_buffer(key, torch.from_numpy(np.array(g.tensor(name))))

        def t(self, name: str) -> Any:
            return getattr(self, names[name])

        def chain(self, e: Any, x: Any) -> Any:
            ops = e.synapse.ops
            counts: dict[str, int] = {}
            for op in ops:
                for f in op.tensors():
                    counts[f] = counts.get(f, 0) + 1

            def tensor(i: int, f: str) -> Any:
                return self.t(f"{e.name}.{f}" if counts[f] == 1 else f"{e.name}.{i}.{f}")

            for i, op in enumerate(ops):
                bias = None
                if i == len(ops) - 1 and carriers.get(e.dst) == e.name:
                    bias = self.t(f"{e.dst}.bias")
                if isinstance(op, Dense):
                    x = F.linear(x, tensor(i, "weight"), bias)
                    bias = None
                elif isinstance(op, Conv2d):
                    x = F.conv2d(x, tensor(i, "weight"), bias, stride=op.stride, padding=op.padding)
                    bias = None
                elif isinstance(op, ConvTranspose2d):
                    x = F.conv_transpose2d(x, tensor(i, "weight"), None, stride=op.stride, padding=op.padding,
                                           output_padding=op.output_padding)
                elif isinstance(op, AvgPool2d):
                    x = F.avg_pool2d(x, op.kernel, op.stride, op.padding, count_include_pad=op.count_include_pad)
                elif isinstance(op, Flatten):
                    x = torch.flatten(x, 1)
                elif isinstance(op, Reshape):
                    x = x.reshape((-1, *op.shape))
                elif isinstance(op, Pad):
                    pads: list[int] = []
                    for a, b in reversed(op.pads):
                        pads += [a, b]
                    x = F.pad(x, pads)
                elif isinstance(op, Scale):
                    x = x * (tensor(i, "factor") if isinstance(op.factor, np.ndarray) else op.factor)
                else:
                    raise SpidecError(f"synapse '{e.name}': the {op.kind} op has no ONNX/torch form here")
            return x

        def forward(self, *args: Any) -> Any:
            values = dict(zip(io_.input_names, args))
            prev = {s: values[s] for s, _ in io_.state}
            for name in g.step_order():
                node = g.node(name)
                cur = None
                for e in g.in_synapses(name):
                    x = prev[e.src] if e.synapse.delay else values[e.src]
                    y = self.chain(e, x)
                    cur = y if cur is None else cur + y
                if node.bias is not None and name not in carriers:  # type: ignore[union-attr]
                    b = self.t(f"{name}.bias")
                    if b.dim() == 1 and len(node.shape) == 3:
                        b = b.reshape(-1, 1, 1)
                    cur = cur + b
                values[name] = torch.clamp(cur, 0.0, 1.0) if isinstance(node, Population) else cur
            return tuple(values[s] for s, _ in io_.state) + tuple(values[r] for r in io_.readouts)

    module = Step().eval()
    module.spidec_io = io_  # type: ignore[assignment]
    return module


def _bias_carriers_loose(g: Graph) -> dict[str, str]:
    """Like :func:`_bias_carriers`, but a bias no op can carry is simply added (ONNX has Add)."""
    out = {}
    for node in g.nodes:
        if isinstance(node, Input) or node.bias is None:
            continue
        for e in sorted(g.in_synapses(node.name), key=lambda e: e.synapse.delay):
            last = e.synapse.ops[-1]
            if isinstance(last, Dense) or (isinstance(last, Conv2d) and node.bias.shape == (last.weight.shape[0],)):
                out[node.name] = e.name
                break
    return out


def onnx_bytes(g: Graph, *, opset: int | None = None) -> bytes:
    """One step of ``g``'s equilibrium map as an ONNX model (PyTorch's exporter, a dynamic batch,
    ``metadata_props`` ``spidec.state`` pairing each state input with its output), as bytes."""
    torch = _torch()
    try:
        import onnx
    except ImportError:
        raise SpidecError("ONNX export needs the onnx package: pip install onnx") from None
    import tempfile
    import warnings

    module = step_module(g)
    io_: StepIO = module.spidec_io
    fg = forward_graph(g)
    shapes = {n.name: n.shape for n in fg.nodes}
    args = tuple(torch.rand((2, *shapes[n])) for n in io_.input_names)
    kwargs: dict[str, Any] = {"input_names": io_.input_names, "output_names": io_.output_names,
                              "dynamic_axes": {k: {0: "batch"} for k in io_.input_names + io_.output_names}}
    if opset is not None:
        kwargs["opset_version"] = opset
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(module, args, str(path), dynamo=False, **kwargs)
            except Exception as e:
                raise SpidecError(f"PyTorch's ONNX exporter failed on '{g.name}': {type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}") from None
        proto = onnx.load(str(path))
    props = {"spidec.model": g.name}
    if io_.state:
        props["spidec.state"] = ",".join(f"{s}:{o}" for s, o in io_.state)
    neurons = sorted({f"{n.neuron.model}(vth={n.neuron.vth}, u_rest={n.neuron.u_rest}, leak={n.neuron.leak})"
                      for n in fg.populations})
    if neurons:
        props["spidec.neurons"] = "; ".join(neurons)
    onnx.helper.set_model_props(proto, props)
    proto.producer_name = "spidec"
    return proto.SerializeToString()


def to_onnx(g: Graph, path: str | Path, *, opset: int | None = None) -> Path:
    """Write one step of ``g``'s equilibrium map as ONNX (inputs: the data inputs, then one state
    input per population that feeds back, named after it; outputs: ``NAME_next`` per state, then
    the readouts), atomically. spidec's ONNX frontend reads it back to the same graph (neuron
    parameters other than the defaults are not part of ONNX: they are listed in
    ``metadata_props`` ``spidec.neurons``)."""
    data = onnx_bytes(g, opset=opset)
    path = Path(path)
    atomic_write(path, lambda f: f.write(data))
    return path


def state_dict(g: Graph, module: Any = None) -> dict[str, Any]:
    """``g``'s tensors as a dict of torch tensors: keyed by IR tensor name, or, given ``module`` (an
    instance of the torch module ``g`` was lowered from, any weights), by that module's
    ``state_dict`` keys so that ``module.load_state_dict(sd)`` (strict) loads the trained weights.

    A module entry is matched to the IR tensor that ``spidec.from_torch(module)`` gives the same
    values (the frontend keeps weights as they are and moves a synapse's bias to its population);
    an entry the frontend folded or summed (BatchNorm, two biases into one population) has no IR
    tensor of its own and is refused."""
    torch = _torch()
    g = forward_graph(g)
    tensors = g.parameters(learnable_only=False)
    if module is None:
        return {name: torch.from_numpy(np.array(t)) for name, t in tensors.items()}
    from .frontends.torch import from_torch

    init = forward_graph(from_torch(module))
    mine = {n: np.asarray(t) for n, t in init.parameters(learnable_only=False).items()}
    if set(mine) != set(tensors) or any(mine[n].shape != tensors[n].shape for n in mine):
        raise SpidecError(f"the model's tensors ({', '.join(tensors)}) are not those of {type(module).__name__} "
                          f"lowered by spidec ({', '.join(mine)})", hint="pass the module the model came from")
    out = {}
    used: set[str] = set()
    for key, value in module.state_dict().items():
        v = value.detach().cpu().numpy()
        if key in mine and mine[key].shape == v.shape and np.array_equal(mine[key], v):
            match = [key]
        else:
            match = [n for n, t in mine.items() if t.shape == v.shape and np.array_equal(t, v) and n not in used]
            if len(match) > 1:  # equal values (zeros): prefer the tensor named like the entry's module
                owner = key.rpartition(".")[0]
                named = [n for n in match if n.startswith(owner + ".")]
                match = named if len(named) == 1 else match
        if len(match) != 1:
            why = "no" if not match else f"{len(match)} ({', '.join(match)})"
            raise SpidecError(f"{type(module).__name__}.{key} has {why} IR tensor of its own (the frontend folds "
                              f"BatchNorm and sums the biases into one population)",
                              hint="export --to torch without the module to get the IR's tensor names")
        used.add(match[0])
        out[key] = torch.from_numpy(np.array(tensors[match[0]], dtype=v.dtype))
    return out


def to_torch(g: Graph, path: str | Path, module: Any = None) -> Path:
    """Write :func:`state_dict` of ``g`` with ``torch.save``, atomically."""
    torch = _torch()
    sd = state_dict(g, module)
    buf = io.BytesIO()
    torch.save(sd, buf)
    path = Path(path)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path


# ====================================================================== build folders

def _read_c_checkpoint(path: Path, g: Graph, build_hash: str | None) -> tuple[dict[str, np.ndarray], int]:
    """A C runtime checkpoint (``SPCK``: version, model hash, epoch, float count, [version 2: the
    position in the epoch, 16 bytes], every tensor in the training graph's tensor order then every
    momentum buffer, CRC32) -> tensors, epoch (the epochs complete)."""
    raw = path.read_bytes()
    if len(raw) < 40 or raw[:4] != b"SPCK":
        raise SpidecError(f"{path}: not a spidec C checkpoint")
    if zlib.crc32(raw[:-4]) != struct.unpack("<I", raw[-4:])[0]:
        raise SpidecError(f"{path}: CRC mismatch: the checkpoint is corrupt or truncated")
    version, = struct.unpack("<I", raw[4:8])
    if version not in (1, 2):
        raise SpidecError(f"{path}: checkpoint format version {version}, this spidec reads 1 and 2")
    hash_ = raw[8:24].decode("ascii", "replace")
    if build_hash is not None and hash_ != build_hash:
        raise SpidecError(f"{path}: the checkpoint belongs to another model (hash {hash_}, this build {build_hash})")
    epoch, = struct.unpack("<I", raw[24:28])
    n, = struct.unpack("<Q", raw[28:36])
    slots = g.tensor_slots()
    sizes = {name: int(g.tensor(name).size) for name in slots}
    want = sum(sizes.values()) + sum(s for name, s in sizes.items() if slots[name].learnable)
    head = 36 if version == 1 else 52  # (version 2: samples done, correct, loss of the epoch in progress)
    if n != want or len(raw) != head + 4 * n + 4:
        raise SpidecError(f"{path}: the checkpoint holds {n} values, this build's model needs {want}")
    flat = np.frombuffer(raw[head: head + 4 * n], "<f4")
    out, k = {}, 0
    for name, size in sizes.items():
        out[name] = flat[k: k + size].reshape(g.tensor(name).shape).copy()
        if not np.isfinite(out[name]).all():  # (the runtime never writes one; its reader refuses one too)
            raise SpidecError(f"{path}: tensor {name} holds NaN or inf (a diverged run?): refused")
        k += size
    return out, int(epoch)


def _numpy_globals() -> list[Any]:
    """What unpickling numpy arrays and scalars needs (no code runs: torch's weights_only loader)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1
        from numpy.core import multiarray  # type: ignore[no-redef]
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtypes]


def _c_build_graph(out: Path) -> Graph:
    """The training graph of a c build: its model.spir (which names no tensors file) with the
    initial tensors of its weights.c (fixed point: the int16 values times 2^-F)."""
    import re

    from .text import loads

    text = (out / "model.spir").read_text()
    wfile = out / "weights.c"
    if not wfile.is_file():
        raise SpidecError(f"{str(out)!r} holds no weights.c: compile the model into it again")
    nodes = {m[1]: tuple(int(v) for v in m[2].split(",")) for m in
             re.finditer(r"^(?:population|readout) (\w+) \[([\d, ]+)\]", text, re.M)}
    tensors = {}
    pat = re.compile(r"/\* (\S+): ([\d x]+?)(?:, scale 2\^(-?\d+))? \*/\s*(?:float|int16_t) \w+\[(\d+)\] = \{(.*?)\};",
                     re.S)
    for m in pat.finditer(wfile.read_text()):
        name, shape, frac, body = m[1], tuple(int(v) for v in m[2].split(" x ")), m[3], m[5]
        values = np.array(body.replace(",", " ").split(), dtype=np.float64)
        if frac is not None:
            values = values / 2.0 ** int(frac)
        owner = name[: -len(".bias")] if name.endswith(".bias") else None
        if owner in nodes and values.size == math.prod(nodes[owner]) and len(shape) == 1:
            shape = nodes[owner]
        elif len(shape) == 1 and not name.endswith(".bias") and re.search(rf"conv\w*\(@{re.escape(name)}\b", text):
            raise SpidecError(f"{out}/weights.c keeps the conv weight {name} flat, without its kernel shape: "
                              f"export the model file instead (spidec export MODEL), or a sim build of it")
        tensors[name] = values.reshape(shape).astype(np.float32)
    return loads(text, tensors)


def load_build(folder: str | Path, checkpoint: str | Path | None = None) -> tuple[Graph, str]:
    """The model of a build folder with its latest weights: ``checkpoint`` if given, else the
    build's own checkpoint (sim: ``checkpoint.pt``; c: ``checkpoint.bin``, what ``spidec train
    BUILD --checkpoint checkpoint.bin`` writes) when there is one, else the compiled initial weights
    (``model.spir``). Returns the forward graph and a line saying which weights it holds."""
    from .runs import read_manifest
    from .text import load

    out = Path(folder)
    info = read_manifest(out)
    spir = out / "model.spir"
    if not spir.is_file():
        raise SpidecError(f"{str(out)!r} holds no model.spir", hint="compile the model again into it")
    target = info["target"]
    g = _c_build_graph(out) if target == "c" else load(spir)
    default = {"sim": out / "checkpoint.pt", "c": out / "checkpoint.bin"}.get(target)
    ckpt = Path(checkpoint) if checkpoint is not None else default
    if checkpoint is not None and not ckpt.is_file():  # type: ignore[union-attr]
        raise SpidecError(f"checkpoint {str(checkpoint)!r} not found")
    if ckpt is None or not ckpt.is_file():
        return forward_graph(g), f"the compiled initial weights of {out} (no checkpoint: not trained, or trained " \
                                 f"without one)"
    if ckpt.suffix == ".pt" or (target == "sim" and ckpt.suffix != ".bin"):
        torch = _torch()
        try:
            with torch.serialization.safe_globals(_numpy_globals()):  # the sim checkpoint holds numpy arrays
                state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as e:
            raise SpidecError(f"checkpoint {str(ckpt)!r} is unreadable ({type(e).__name__})") from None
        if not isinstance(state, dict) or "tensors" not in state:
            raise SpidecError(f"{ckpt}: not a spidec sim checkpoint (no tensors)")
        if info.get("hash") is not None and state.get("graph_hash") not in (None, info["hash"]):
            raise SpidecError(f"{ckpt}: the checkpoint belongs to another model or compilation ({state.get('model')})")
        tensors = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
                   for k, v in state["tensors"].items()}
        epoch = state.get("epoch")
    else:
        tensors, epoch = _read_c_checkpoint(ckpt, g, info.get("hash"))
    slots = g.tensor_slots()
    unknown = sorted(set(tensors) - set(slots))
    if unknown:
        raise SpidecError(f"{ckpt}: tensor {unknown[0]} is not in {spir}")
    values = {k: v.astype(g.tensor(k).dtype).reshape(g.tensor(k).shape) for k, v in tensors.items()}
    when = f" after epoch {epoch}" if epoch is not None else ""
    return forward_graph(g.with_tensors(values)), f"the trained weights of {ckpt}{when}"


def export(g: Graph, to: str, out: str | Path, *, dt: float = 1e-4, delays: str = "explicit",
           module: Any = None) -> Path:
    """Write ``g`` to ``out`` in format ``to`` (``nir``, ``onnx`` or ``torch``)."""
    if to == "nir":
        if module is not None:
            raise SpidecError("a source module names the tensors of --to torch only")
        return to_nir(g, out, dt=dt, delays=delays)
    if to == "onnx":
        if module is not None:
            raise SpidecError("a source module names the tensors of --to torch only")
        return to_onnx(g, out)
    if to == "torch":
        return to_torch(g, out, module)
    raise SpidecError(f"unknown export format {to!r}; choose one of {', '.join(FORMATS)}")


__all__ = ["DELAYS", "FORMATS", "StepIO", "export", "forward_graph", "load_build", "nir_bytes", "nir_graph",
           "onnx_bytes", "state_dict", "step_io", "step_module", "to_nir", "to_onnx", "to_torch"]
