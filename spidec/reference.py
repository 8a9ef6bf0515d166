"""The exact rate-space reference: the oracle every backend is tested against.

Forward: the equilibrium ``a* = clamp(W a* + F x + b, 0, 1)`` of every population, found by damped
fixed-point iteration in the order a time step updates the network (undelayed synapses read this
sweep's rates, delayed ones the previous sweep's), with a convergence check that fails loudly
when the feedback loop does not contract. Every population is modelled by this IF rate equation,
whatever its neuron: the leak of a LIF population is ignored (its spikes approximate the equilibrium
as SPIDE's leak-weighted average rate, not as spike count / T; ``spidec reference`` warns).

Backward: the exact implicit gradient. With ``m = 1[0 < a* < 1]`` and ``g = dL/da*`` (from the
readouts' loss), ``delta`` solves ``delta = g + W^T (m * delta)`` — by a direct dense solve for
small networks, by GMRES on the matrix-free operator (the synapses' adjoint chains) for large
ones — and every parameter's gradient follows from its synapse's ``grad(post=m*delta, pre=a)``.
Everything runs in float64 whatever the graph's dtype. A training graph whose feedback weights are
norm-restricted by reparametrisation is evaluated with their effective (restricted) values, as the
programs run it (:func:`effective`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import SpidecError, SpidecWarning
from .ir import Graph, Input, Population, Readout
from .ops import Shape, fmt_shape

DENSE_MAX_NEURONS = 3000  # above this, method="auto" solves the backward system matrix-free (GMRES)
DENSE_BATCH_BYTES = 256 << 20  # memory for the stacked per-sample matrices of one dense solve


def effective(g: Graph) -> Graph:
    """The graph as the compiled programs compute with it: under the authors' feedback-norm
    reparametrisation (``feedback_norm_mode=reparam``) every feedback weight above its bound
    ``feedback_norm / V`` (rate units) is scaled down to it; otherwise ``g`` itself. Gradients of
    such a weight are then those of its effective value, as the programs' local rules compute."""
    t = g.training
    if t is None or t.optimizer.feedback_norm <= 0 or t.optimizer.feedback_norm_mode != "reparam":
        return g
    new = {}
    for u in t.updates:
        if u.kind == "local" and u.synapse and g.synapse(u.synapse).synapse.delay:
            bound = t.optimizer.feedback_norm / g.node(u.gate).neuron.V  # type: ignore[arg-type, union-attr]
            w = np.asarray(g.tensor(u.tensor), dtype=np.float64)
            norm = float(np.linalg.norm(w))
            if norm > bound:
                new[u.tensor] = (w * (bound / norm)).astype(g.tensor(u.tensor).dtype)
    return g.with_tensors(new) if new else g


@dataclass
class Equilibrium:
    """Equilibrium rates of every population and the readouts' outputs at it."""

    inputs: dict[str, np.ndarray]
    rates: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    iterations: int
    residual: float  # max |clamp(W a + F x + b) - a| at the returned rates
    converged: bool

    def masks(self) -> dict[str, np.ndarray]:
        """``m = 1[0 < a < 1]`` per population: the clamp's derivative (strict)."""
        return {p: ((a > 0) & (a < 1)).astype(np.float64) for p, a in self.rates.items()}

    @property
    def batch(self) -> int:
        return next(iter(self.inputs.values())).shape[0]


@dataclass
class Gradients:
    """The implicit gradient of a loss through the equilibrium."""

    loss: float | None
    params: dict[str, np.ndarray]  # by tensor name (g.parameters()), batch-summed
    delta: dict[str, np.ndarray]  # dL/da* per population (the total derivative, delta above)
    inputs: dict[str, np.ndarray]  # dL/dx per input
    outputs: dict[str, np.ndarray]  # dL/dy per readout
    equilibrium: Equilibrium


# ============================================================== inputs

def _batch_inputs(g: Graph, inputs: Any) -> dict[str, np.ndarray]:
    names = [n.name for n in g.inputs]
    if not isinstance(inputs, Mapping):
        if len(names) != 1:
            raise SpidecError(f"the graph has {len(names)} inputs ({', '.join(names) or 'none'}); "
                              f"pass a dict of arrays by input name")
        inputs = {names[0]: inputs}
    extra = set(inputs) - set(names)
    missing = [n for n in names if n not in inputs]
    if extra or missing:
        raise SpidecError(f"inputs do not match the graph: missing {missing or 'none'}, "
                          f"unknown {sorted(extra) or 'none'}")
    out, batch = {}, None
    for node in g.inputs:
        x = np.asarray(inputs[node.name], dtype=np.float64)
        if x.shape[1:] != node.shape:
            if x.shape == node.shape:
                raise SpidecError(f"input '{node.name}' needs a batch dimension: shape [B, "
                                  f"{', '.join(map(str, node.shape))}], got {fmt_shape(x.shape)}",
                                  hint="use x[None] for one sample")
            raise SpidecError(f"input '{node.name}' expects shape [B, {', '.join(map(str, node.shape))}], "
                              f"got {fmt_shape(x.shape)}")
        if batch is not None and x.shape[0] != batch:
            raise SpidecError(f"inputs disagree on the batch size ({batch} and {x.shape[0]})")
        if x.shape[0] == 0:
            raise SpidecError(f"input '{node.name}' is an empty batch")
        if not np.all(np.isfinite(x)):
            raise SpidecError(f"input '{node.name}' holds NaN or inf values")
        batch = x.shape[0]
        out[node.name] = x
    return out


def _bias(node: Population | Readout) -> np.ndarray | float:
    if node.bias is None:
        return 0.0
    b = node.bias.astype(np.float64)
    if b.shape != node.shape:  # per-channel bias of a [C, H, W] population
        b = b.reshape((-1,) + (1,) * (len(node.shape) - 1))
    return b


class _Net:
    """The graph prepared for repeated evaluation."""

    def __init__(self, g: Graph) -> None:
        g.validate()
        self.g = g
        self.pops = [n for n in g.step_order() if isinstance(g.node(n), Population)]
        self.nodes = {n.name: n for n in g.nodes}
        self.feeds = {n: [(e.src, e.synapse) for e in g.in_synapses(n)] for n in self.nodes}
        self.bias = {n: _bias(node) for n, node in self.nodes.items() if not isinstance(node, Input)}

    def current(self, node: str, now: dict[str, np.ndarray], before: dict[str, np.ndarray]) -> np.ndarray:
        """Input current of ``node``: undelayed synapses read ``now``, delayed ones ``before``."""
        z: Any = self.bias[node]
        for src, syn in self.feeds[node]:
            z = z + syn.apply(before[src] if syn.delay else now[src])
        return z

    def start(self, x: dict[str, np.ndarray], given: Mapping[str, np.ndarray] | None, what: str
              ) -> dict[str, np.ndarray]:
        """Inputs plus every population's starting rates (``given`` ones, zeros otherwise)."""
        batch = next(iter(x.values())).shape[0]
        values: dict[str, np.ndarray] = dict(x)
        for p in self.pops:
            shape = (batch,) + self.nodes[p].shape
            if given is not None and p in given:
                a0 = np.asarray(given[p], dtype=np.float64)
                if a0.shape != shape:
                    raise SpidecError(f"{what} of '{p}' have shape {fmt_shape(a0.shape)}, expected {fmt_shape(shape)}")
                values[p] = a0
            else:
                values[p] = np.zeros(shape)
        return values

    def sweep(self, values: dict[str, np.ndarray], damping: float = 1.0) -> float:
        """One time step in place: populations in step order, delayed synapses reading the rates
        from before the step. Returns the largest change of a rate."""
        before = dict(values)
        change = 0.0
        for p in self.pops:
            f = np.clip(self.current(p, values, before), 0, 1)
            new = f if damping == 1 else before[p] + damping * (f - before[p])
            new = np.broadcast_to(new, before[p].shape)
            change = max(change, float(np.max(np.abs(new - before[p]))))
            values[p] = new
        return change

    def residual(self, values: dict[str, np.ndarray]) -> float:
        return max((float(np.max(np.abs(np.clip(self.current(p, values, values), 0, 1) - values[p])))
                    for p in self.pops), default=0.0)

    def outputs(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {r.name: np.broadcast_to(self.current(r.name, values, values),
                                        (next(iter(values.values())).shape[0],) + r.shape).copy()
                for r in self.g.readouts}


# ============================================================== forward

def equilibrium(g: Graph, inputs: Any, *, tol: float = 1e-10, max_iter: int = 10_000,
                damping: float = 1.0, patience: int = 500, init: Mapping[str, np.ndarray] | None = None,
                strict: bool = True) -> Equilibrium:
    """The rate equilibrium of ``g`` for a batch of inputs (an array, or a dict by input name).

    Iterates ``a <- (1 - damping) a + damping clamp(W a + F x + b, 0, 1)`` in step order until the
    largest change falls to ``tol``. Raises a :class:`SpidecError` with the measured residual when
    the change has not improved for ``patience`` sweeps or ``max_iter`` is reached (``strict``;
    otherwise warns with the same message and returns with ``converged=False``).
    """
    if not 0 < damping <= 1:
        raise SpidecError(f"damping must lie in (0, 1], got {damping}")
    g = effective(g)
    net = _Net(g)
    x = _batch_inputs(g, inputs)
    values = net.start(x, init, "initial rates")
    for p in net.pops:
        values[p] = np.clip(values[p], 0, 1)
    best, best_it, change, it = math.inf, 0, math.inf, 0
    converged = not net.pops
    for it in range(1, max_iter + 1):
        if converged:
            break
        change = net.sweep(values, damping)
        if change <= tol:
            converged = True
            break
        if change < best * 0.999:
            best, best_it = change, it
        elif it - best_it >= patience:
            break
    residual = net.residual(values)
    if not converged:
        loop = _feedback_description(g)
        problem = SpidecError(
            f"the equilibrium did not settle: the rates still change by {change:.3g} after {it} "
            f"iterations (best {best:.3g}, residual {residual:.3g}); the feedback loop {loop} does not "
            f"contract",
            hint="restrict the feedback weights' norm (SPIDE rescales the feedback weight to Frobenius "
                 "norm <= 2), or pass damping=0.5 for an oscillating loop")
        if strict:
            raise problem
        warnings.warn(str(problem), SpidecWarning, stacklevel=2)
    rates = {p: np.array(values[p]) for p in net.pops}
    return Equilibrium(x, rates, net.outputs(values), it, residual, converged)


def step(g: Graph, inputs: Any, rates: Mapping[str, np.ndarray] | None = None
         ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One application of the step map: every population once, in step order; delayed synapses
    read ``rates`` (the previous step's, zeros where not given). Returns the new rates and the
    readouts' outputs: what a frontend's model computes in one call of ``forward(x, z)``."""
    net = _Net(g)
    values = net.start(_batch_inputs(g, inputs), rates, "previous rates")
    net.sweep(values)
    return {p: np.array(values[p]) for p in net.pops}, net.outputs(values)


def _feedback_description(g: Graph) -> str:
    delayed = [e for e in g.synapses() if e.synapse.delay]
    if not delayed:
        return "(none: the graph has no delayed synapse)"
    return "through " + ", ".join(f"'{e.name}' ({e.src} -> {e.dst})" for e in delayed)


# ============================================================== loss

def loss(g: Graph, outputs: Mapping[str, np.ndarray], targets: Any) -> tuple[float, dict[str, np.ndarray]]:
    """Loss of the readouts (summed over readouts, averaged over the batch) and ``dL/dy``.

    ``cross_entropy``: integer class labels ``[B]``; ``mse``: ``0.5 * sum((y - t)^2) / B`` with
    targets of the readout's shape.
    """
    readouts = g.readouts
    if not readouts:
        raise SpidecError("the graph has no readout, so there is no loss",
                          hint="add a readout, or give dL/da directly to implicit_backward")
    if not isinstance(targets, Mapping):
        if len(readouts) != 1:
            raise SpidecError(f"the graph has {len(readouts)} readouts; pass targets as a dict by name")
        targets = {readouts[0].name: targets}
    total, grads = 0.0, {}
    for r in readouts:
        if r.name not in targets:
            raise SpidecError(f"no targets for readout '{r.name}'")
        y = outputs[r.name]
        batch = y.shape[0]
        t = np.asarray(targets[r.name])
        if r.loss == "cross_entropy":
            if t.shape != (batch,) or t.dtype.kind not in "iu":
                raise SpidecError(f"readout '{r.name}' (cross_entropy) needs integer labels of shape "
                                  f"[{batch}], got {t.dtype} {fmt_shape(t.shape)}")
            if t.min() < 0 or t.max() >= r.shape[0]:
                raise SpidecError(f"readout '{r.name}' has {r.shape[0]} classes; labels must lie in "
                                  f"0..{r.shape[0] - 1}, got {int(t.min())}..{int(t.max())}")
            shifted = y - y.max(axis=1, keepdims=True)
            logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            total += float(-logp[np.arange(batch), t].mean())
            d = np.exp(logp)
            d[np.arange(batch), t] -= 1.0
            grads[r.name] = d / batch
        else:
            t = t.astype(np.float64)
            if t.shape != y.shape:
                raise SpidecError(f"readout '{r.name}' (mse) needs targets of shape {fmt_shape(y.shape)}, "
                                  f"got {fmt_shape(t.shape)}")
            diff = y - t
            total += float(0.5 * np.sum(diff * diff) / batch)
            grads[r.name] = diff / batch
    return total, grads


# ============================================================== backward

def _solve_dense(net: _Net, masks: dict[str, np.ndarray], rhs: dict[str, np.ndarray],
                 sizes: dict[str, int]) -> dict[str, np.ndarray]:
    offsets, n = {}, 0
    for p in net.pops:
        offsets[p], n = n, n + sizes[p]
    W = np.zeros((n, n))  # W[q, p]: d current_q / d a_p over every population-to-population synapse
    for q in net.pops:
        for src, syn in net.feeds[q]:
            if src not in offsets:
                continue
            basis = np.eye(sizes[src]).reshape((sizes[src],) + net.nodes[src].shape)
            block = syn.apply(basis).reshape(sizes[src], sizes[q])
            W[offsets[q]: offsets[q] + sizes[q], offsets[src]: offsets[src] + sizes[src]] += block.T
    batch = next(iter(rhs.values())).shape[0]
    G = np.concatenate([rhs[p].reshape(batch, -1) for p in net.pops], axis=1)
    M = np.concatenate([masks[p].reshape(batch, -1) for p in net.pops], axis=1)
    delta = np.empty_like(G)
    WT, eye = W.T, np.eye(n)
    chunk = max(1, DENSE_BATCH_BYTES // (8 * n * n))  # samples per batched LAPACK call
    for b0 in range(0, batch, chunk):
        A = eye[None] - WT[None] * M[b0: b0 + chunk, None, :]  # I - W^T diag(m_b), one per sample
        try:
            delta[b0: b0 + chunk] = np.linalg.solve(A, G[b0: b0 + chunk, :, None])[..., 0]
        except np.linalg.LinAlgError:
            raise SpidecError("the implicit-gradient system I - W^T diag(m) is singular: the feedback "
                              "loop has gain 1 on the unsaturated neurons",
                              hint="restrict the feedback weights' norm") from None
    return {p: delta[:, offsets[p]: offsets[p] + sizes[p]].reshape((batch,) + net.nodes[p].shape)
            for p in net.pops}


def _transpose_apply(net: _Net, masks: dict[str, np.ndarray], delta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``W^T (m * delta)`` per population."""
    out = {p: np.zeros_like(delta[p]) for p in net.pops}
    for q in net.pops:
        post = masks[q] * delta[q]
        for src, syn in net.feeds[q]:
            if src in out:
                out[src] += syn.adjoint(post, net.nodes[src].shape)
    return out


def _solve_gmres(net: _Net, masks: dict[str, np.ndarray], rhs: dict[str, np.ndarray],
                 sizes: dict[str, int], rtol: float = 1e-12) -> dict[str, np.ndarray]:
    from scipy.sparse.linalg import LinearOperator, gmres

    n = sum(sizes.values())
    batch = next(iter(rhs.values())).shape[0]
    shapes: dict[str, Shape] = {p: net.nodes[p].shape for p in net.pops}

    def split(v: np.ndarray) -> dict[str, np.ndarray]:
        out, k = {}, 0
        for p in net.pops:
            out[p] = v[k: k + sizes[p]].reshape((1,) + shapes[p])
            k += sizes[p]
        return out

    def join(d: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([d[p].reshape(-1) for p in net.pops])

    result = {p: np.empty((batch,) + shapes[p]) for p in net.pops}
    for b in range(batch):
        mb = {p: masks[p][b: b + 1] for p in net.pops}
        g_b = join({p: rhs[p][b: b + 1] for p in net.pops})
        if not np.any(g_b):
            for p in net.pops:
                result[p][b] = 0.0
            continue
        op = LinearOperator((n, n), matvec=lambda v, mb=mb: v - join(_transpose_apply(net, mb, split(v))),
                            dtype=np.float64)
        sol, info = gmres(op, g_b, rtol=rtol, atol=0.0, restart=min(n, 200), maxiter=50)
        resid = np.linalg.norm(op.matvec(sol) - g_b) / np.linalg.norm(g_b)
        if info != 0 or resid > 1e3 * rtol:
            raise SpidecError(f"the implicit-gradient system did not solve (GMRES relative residual "
                              f"{resid:.3g} for sample {b}); the feedback loop may not contract",
                              hint="restrict the feedback weights' norm, or use method='dense'")
        for p, v in split(sol).items():
            result[p][b] = v[0]
    return result


def implicit_backward(g: Graph, eq: Equilibrium, dL_dy: Mapping[str, np.ndarray] | None = None,
                      dL_da: Mapping[str, np.ndarray] | None = None, *, method: str = "auto",
                      loss_value: float | None = None) -> Gradients:
    """The exact implicit gradient at ``eq`` for output gradients ``dL_dy`` (by readout) and/or
    direct gradients ``dL_da`` (by population). ``method``: ``dense``, ``gmres`` or ``auto``."""
    if method not in ("auto", "dense", "gmres"):
        raise SpidecError(f"unknown method {method!r}; use auto, dense or gmres")
    g = effective(g)
    net = _Net(g)
    dL_dy = {k: np.asarray(v, dtype=np.float64) for k, v in (dL_dy or {}).items()}
    dL_da = {k: np.asarray(v, dtype=np.float64) for k, v in (dL_da or {}).items()}
    batch = eq.batch
    for name, arr in list(dL_dy.items()) + list(dL_da.items()):
        node = net.nodes.get(name)
        kind = Readout if name in dL_dy else Population
        if not isinstance(node, kind):
            raise SpidecError(f"gradient given for '{name}', which is not a {kind.__name__.lower()} of the graph")
        if arr.shape != (batch,) + node.shape:
            raise SpidecError(f"gradient for '{name}' has shape {fmt_shape(arr.shape)}, expected "
                              f"{fmt_shape((batch,) + node.shape)}")
    values = {**eq.inputs, **eq.rates}
    masks = eq.masks()
    sizes = {p: math.prod(net.nodes[p].shape) for p in net.pops}
    rhs = {p: dL_da.get(p, np.zeros((batch,) + net.nodes[p].shape)).copy() for p in net.pops}
    for r, dy in dL_dy.items():
        for src, syn in net.feeds[r]:
            if src in rhs:
                rhs[src] += syn.adjoint(dy, net.nodes[src].shape)
    if not net.pops:
        delta = {}
    elif method == "dense" or (method == "auto" and sum(sizes.values()) <= DENSE_MAX_NEURONS):
        delta = _solve_dense(net, masks, rhs, sizes)
    else:
        delta = _solve_gmres(net, masks, rhs, sizes)

    post = {p: masks[p] * delta[p] for p in net.pops}
    for r in g.readouts:
        post[r.name] = dL_dy.get(r.name, np.zeros((batch,) + r.shape))
    names = {(s.owner, s.op, s.field): n for n, s in g.tensor_slots().items() if s.learnable}
    params: dict[str, np.ndarray] = {}
    input_grads = {i.name: np.zeros((batch,) + i.shape) for i in g.inputs}
    for e in g.synapses():
        for i, grads in e.synapse.grads(post[e.dst], values[e.src]).items():
            for fieldname, grad in grads.items():
                params[names[(e.name, i, fieldname)]] = grad
        if e.src in input_grads:
            input_grads[e.src] += e.synapse.adjoint(post[e.dst], net.nodes[e.src].shape)
    for node in g.nodes:
        if isinstance(node, (Population, Readout)) and node.bias is not None:
            gb = post[node.name].sum(axis=0)
            if node.bias.shape != node.shape:
                gb = gb.reshape(node.bias.shape[0], -1).sum(axis=1)
            params[f"{node.name}.bias"] = gb
    ordered = {n: params[n] for n in g.parameters() if n in params}
    return Gradients(loss_value, ordered, delta, input_grads, dict(dL_dy), eq)


def gradients(g: Graph, inputs: Any, targets: Any, *, method: str = "auto", **eq_options: Any) -> Gradients:
    """Equilibrium, loss and exact implicit gradient of every learnable tensor, in one call."""
    eq = equilibrium(g, inputs, **eq_options)
    value, dL_dy = loss(g, eq.outputs, targets)
    return implicit_backward(g, eq, dL_dy, method=method, loss_value=value)


def loss_at(g: Graph, inputs: Any, targets: Any, **eq_options: Any) -> float:
    """The loss at the equilibrium (no gradient): what finite differences perturb."""
    eq = equilibrium(g, inputs, **eq_options)
    return loss(g, eq.outputs, targets)[0]


__all__ = ["Equilibrium", "Gradients", "equilibrium", "gradients", "implicit_backward", "loss", "loss_at", "step"]
