"""An independent numpy re-implementation of one SPIDE training step, in the authors' units.

Written from the paper (Xiao et al., "SPIDE: A purely spike-based method for training feedback
spiking neural networks", Neural Networks 2023, arXiv 2302.00232) and ``/work/shared/SPIDE.md``, not
from spidec's passes or backends: it is the oracle ``tests/test_paper_step.py`` holds the compiled
programs to. Nothing here imports spidec.

Units (the authors'): a weight acts on spikes. ``V = vth - u_rest = 2 vth`` (``u_rest = -vth``),
``S = 2 vth_b``. A layer's membrane integrates, every step, its bias plus the currents of its
synapses (the input synapse reads the constant input ``x``). An average-pooling synapse is the
authors' pooling layer: the next spiking layer is driven by ``avgpool(s)`` with weight 1 in spike
units (no bias, nothing learnable).

Forward (T steps; per step the layers in the given order)::

    u += b + sum_syn N(src);  s = [u >= vth];  u -= V s          (LIF: u <- lam (u + I - V s))

``src`` is ``x`` for the input synapse, this step's spikes for a feed-forward synapse (its source
layer comes earlier in the order) and the previous step's spikes for a feedback synapse
(``delay=1``; zero at the first step). Rates ``a = count / T`` (LIF: leak-weighted), masks
``m = 1[0 < a < 1]`` (the norm ``sum_t lam^(T-1-t)`` is summed exactly like the counts, so a
neuron that fires every step has a rate of exactly 1 and no mask, as in exact arithmetic; the
closed form ``(1 - lam^T) / (1 - lam)`` can round the rate to just below 1), logits
``W_c a_out + b_c``, loss the batch-mean cross-entropy.

Backward (T_b steps of ternary couples; per step the layers in *reverse* order)::

    u += [p is the output layer] g + sum_{syn p->q} (1/V) N^T (m_q * sb_q);  sb = S([u >= vth_b] - [u <= -vth_b]);
    u -= sb                                                       (LIF: then u <- lam u)

with ``g = sf W_c^T (softmax - onehot) / B`` injected every step. Order and delays mirror the
forward schedule, which is what SPIDE.md's linear system asks of a causal spiking solver::

    beta_{n-1} = g + (1/V) N_{n-1}^T D_0 beta_0,    beta_k = (1/V) N_k^T D_{k+1} beta_{k+1}:

a feed-forward synapse p -> q (q after p in the forward order) makes p's couple read q's ternary
spikes *of the same step*, so q's couple must run first: the reverse layer order; a feedback
synapse (delay 1) makes p's couple read q's spikes *of the previous step* (SPIDE.md: "the feedback
synapse's transpose carries the one-step delay"), exactly as its forward reads the previous
step's spikes. ``beta = sum(sb) / T_b`` (LIF: leak-weighted like the forward rate).

Gradients (two-stage average firing rates), for a synapse p -> q with weight N:
``dN = (1/V) sum_batch (m_q beta_q) (x) a_p`` (conv: the correlation; input synapse: ``a_p = x``),
``db_q = (1/V) sum (m_q beta_q)`` (per-channel biases summed over positions). Readout: ``sf`` times
the delta rule's gradient of the mean loss. SGD as torch.optim.SGD on the sf-scaled loss:
``d = grad + wd W; buf = d (first step) or momentum buf + d; W -= (lr / sf) buf``.

Feedback-norm restriction (the authors' ``weight_frob_norm_restriction`` reparametrisation, with
the exact Frobenius norm in place of their 64-sample estimate): the stored raw weight ``W_raw`` of
every feedback synapse is used as ``W_eff = c W_raw`` with ``c = min(1, r / ||W_raw||_F)``,
computed once per batch before the forward stage and used in both stages; the gradient of
``W_raw`` is ``c dW_eff``; decay and momentum act on ``W_raw``. ``r = 0`` means no restriction.

Precision: float64 throughout. The compiled programs run in float32 and each sums in its own
order (torch's matrix products, the C runtime's event-driven columns), so no float32 emulation
here would reproduce their rounding bit for bit; float64 is the exact value both round around.
Spike decisions can only differ where a membrane lies within float32 rounding (~1e-6) of a
threshold; :attr:`Trace.margin` reports the smallest non-zero distance met, so such a tie is
recognisable. Exact ties are structural and exact in every precision (pooled spikes, 1/8 of a
ternary spike: dyadic values) and are excluded from the margin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# ---------------------------------------------------------------------------------------------- structure


@dataclass
class Layer:
    """A spiking layer. ``bias``: None (no bias: the authors' pooling layers), the layer's full
    shape, or one value per channel (``(C,)`` for a ``(C, H, W)`` layer)."""

    name: str
    shape: tuple[int, ...]
    bias: str | None = None  # parameter name


@dataclass
class Synapse:
    """``kind``: ``dense`` (weight ``[n_post, n_pre]`` on the flattened source, reshaped to the
    target's shape), ``conv`` (weight ``[O, C, k, k]``, ``stride``, ``padding``) or ``pool`` (a
    ``k x k`` average with stride ``k``, weight 1 in spike units, nothing learnable). ``pre`` is a
    layer's name or the input's (``Net.input``)."""

    name: str
    pre: str
    post: str
    kind: str
    weight: str | None = None  # parameter name
    stride: int = 1
    padding: int = 0
    k: int = 2
    delay: int = 0


@dataclass
class Net:
    input: str
    input_shape: tuple[int, ...]
    layers: list[Layer]  # forward order
    synapses: list[Synapse]
    readout_from: str
    readout_weight: str  # [classes, numel(out)]
    readout_bias: str
    T: int = 30
    T_b: int = 100
    vth: float = 1.0
    vth_b: float = 0.5
    leak: float = 1.0  # 1: IF

    @property
    def V(self) -> float:
        return 2.0 * self.vth

    @property
    def S(self) -> float:
        return 2.0 * self.vth_b

    def layer(self, name: str) -> Layer:
        return next(lay for lay in self.layers if lay.name == name)

    def feedback_weights(self) -> list[str]:
        return [s.weight for s in self.synapses if s.delay and s.weight is not None]


# ---------------------------------------------------------------------------------------------- ops


def _windows(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    """[B, C, H, W] -> [B, C, Ho, Wo, k, k] (a view)."""
    B, C, H, W = x.shape
    Ho, Wo = (H - k) // stride + 1, (W - k) // stride + 1
    sb, sc, sh, sw = x.strides
    return np.lib.stride_tricks.as_strided(x, (B, C, Ho, Wo, k, k), (sb, sc, sh * stride, sw * stride, sh, sw),
                                           writeable=False)


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, padding: int) -> np.ndarray:
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    return np.einsum("bchwij,ocij->bohw", _windows(xp, w.shape[2], stride), w, optimize=True)


def conv2d_adjoint(y: np.ndarray, w: np.ndarray, stride: int, padding: int, in_hw: tuple[int, int]) -> np.ndarray:
    """The exact adjoint of :func:`conv2d` (conv_transpose2d with the output padding that gives
    back the input size: stride - 1 for the 'same'-style convolutions of the tests)."""
    B, _, Ho, Wo = y.shape
    H, W = in_hw
    k = w.shape[2]
    out = np.zeros((B, w.shape[1], H + 2 * padding, W + 2 * padding))
    for i in range(k):
        for j in range(k):
            out[:, :, i: i + stride * Ho: stride, j: j + stride * Wo: stride] += np.einsum("bohw,oc->bchw", y,
                                                                                       w[:, :, i, j])
    return out[:, :, padding: padding + H, padding: padding + W]


def conv2d_weight_grad(pre: np.ndarray, post: np.ndarray, k: int, stride: int, padding: int) -> np.ndarray:
    """sum_b sum_{y,x} post[b,o,y,x] pre_padded[b,c,y*s+i,x*s+j]: the correlation."""
    xp = np.pad(pre, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    return np.einsum("bchwij,bohw->ocij", _windows(xp, k, stride), post, optimize=True)


def avgpool(x: np.ndarray, k: int) -> np.ndarray:
    return _windows(x, k, k).mean(axis=(4, 5))


def avgpool_adjoint(y: np.ndarray, k: int, in_hw: tuple[int, int]) -> np.ndarray:
    """Spread each value / k^2 over its window (zero where no window reaches)."""
    B, C, Ho, Wo = y.shape
    out = np.zeros((B, C, *in_hw))
    out[:, :, : Ho * k, : Wo * k] = np.repeat(np.repeat(y, k, axis=2), k, axis=3) / (k * k)
    return out


# ---------------------------------------------------------------------------------------------- the step


@dataclass
class Trace:
    """What one step computed (every array float64, batch first)."""

    counts: dict[str, np.ndarray] = field(default_factory=dict)  # spike counts (LIF: leak-weighted)
    rates: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    logits: np.ndarray | None = None
    loss: float = 0.0
    g: np.ndarray | None = None  # injected into the output layer's couples
    sums: dict[str, np.ndarray] = field(default_factory=dict)  # ternary spike sums per couple, units of S
    beta: dict[str, np.ndarray] = field(default_factory=dict)
    grads: dict[str, np.ndarray] = field(default_factory=dict)  # of the stored (raw) tensors, sf-scaled loss
    scale: dict[str, float] = field(default_factory=dict)  # feedback-norm factor c per feedback weight
    margin: float = np.inf  # smallest non-zero |u - threshold| met in either stage


class PaperSPIDE:
    """``params``: every tensor by name, in the authors' units (float64 copies are kept);
    ``train_step`` applies one SGD step (with its momentum buffers) and returns the :class:`Trace`."""

    def __init__(self, net: Net, params: dict[str, np.ndarray], *, sf: float = 100.0, lr: float = 0.1,
                 momentum: float = 0.9, weight_decay: float = 5e-4, feedback_norm: float = 0.0) -> None:
        self.net = net
        self.params = {k: np.array(v, np.float64) for k, v in params.items()}
        self.sf, self.lr, self.momentum, self.wd, self.r = sf, lr, momentum, weight_decay, feedback_norm
        self.bufs: dict[str, np.ndarray] = {}

    # -- helpers
    def _effective(self) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        w, scale = dict(self.params), {}
        for name in self.net.feedback_weights():
            norm = float(np.sqrt(np.sum(self.params[name] ** 2)))
            c = min(1.0, self.r / norm) if self.r > 0 and norm > 0 else 1.0
            scale[name] = c
            w[name] = c * self.params[name]
        return w, scale

    def _bias(self, lay: Layer, w: dict[str, np.ndarray]) -> np.ndarray | float:
        if lay.bias is None:
            return 0.0
        b = w[lay.bias]
        if b.shape != lay.shape:  # per channel
            return b.reshape(b.shape[0], *([1] * (len(lay.shape) - 1)))
        return b

    def _apply(self, syn: Synapse, src: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
        """The synapse's current from source values ``src`` [B, *pre shape] (no bias)."""
        B, post = src.shape[0], self.net.layer(syn.post).shape
        if syn.kind == "dense":
            return (src.reshape(B, -1) @ w[syn.weight].T).reshape(B, *post)
        if syn.kind == "conv":
            return conv2d(src, w[syn.weight], syn.stride, syn.padding).reshape(B, *post)
        if syn.kind == "pool":
            return avgpool(src, syn.k).reshape(B, *post)
        raise ValueError(syn.kind)

    def _adjoint(self, syn: Synapse, y: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
        """N^T y, y [B, *post shape] -> [B, *pre shape] (the linear part: no bias)."""
        B, pre = y.shape[0], self.net.layer(syn.pre).shape
        if syn.kind == "dense":
            return (y.reshape(B, -1) @ w[syn.weight]).reshape(B, *pre)
        if syn.kind == "conv":
            return conv2d_adjoint(y, w[syn.weight], syn.stride, syn.padding, pre[1:])
        if syn.kind == "pool":
            return avgpool_adjoint(y, syn.k, pre[1:])
        raise ValueError(syn.kind)

    @staticmethod
    def _margin(u: np.ndarray, thr: float, m: float) -> float:
        d = np.abs(u - thr)
        d = d[d > 0]
        return min(m, float(d.min())) if d.size else m

    # -- stages
    def forward(self, x: np.ndarray, w: dict[str, np.ndarray] | None = None, tr: Trace | None = None) -> Trace:
        net, tr = self.net, tr or Trace()
        w = w if w is not None else self._effective()[0]
        x = np.asarray(x, np.float64)
        B, V, lam = x.shape[0], net.V, net.leak
        u = {lay.name: np.zeros((B, *lay.shape)) for lay in net.layers}
        cnt = {lay.name: np.zeros((B, *lay.shape)) for lay in net.layers}
        prev = {lay.name: np.zeros((B, *lay.shape)) for lay in net.layers}
        # the constant part of each layer's current: bias and input synapses
        const = {}
        for lay in net.layers:
            c = np.zeros((B, *lay.shape)) + self._bias(lay, w)
            for syn in net.synapses:
                if syn.post == lay.name and syn.pre == net.input:
                    c = c + self._apply(syn, x, w)
            const[lay.name] = c
        norm = 0.0  # the leak-weighted count of a neuron that fires every step, summed like the counts
        for t in range(net.T):
            norm = norm + lam ** (net.T - 1 - t)
            now = {}
            for lay in net.layers:
                cur = const[lay.name].copy()
                for syn in net.synapses:
                    if syn.post != lay.name or syn.pre == net.input:
                        continue
                    src = prev[syn.pre] if syn.delay else now[syn.pre]
                    cur += self._apply(syn, src, w)
                v = u[lay.name] + cur
                tr.margin = self._margin(v, net.vth, tr.margin)
                s = (v >= net.vth).astype(np.float64)
                u[lay.name] = lam * (v - V * s)
                cnt[lay.name] = cnt[lay.name] + (lam ** (net.T - 1 - t)) * s
                now[lay.name] = s
            prev = now
        for lay in net.layers:
            a = cnt[lay.name] / norm
            tr.counts[lay.name] = cnt[lay.name]
            tr.rates[lay.name] = a
            tr.masks[lay.name] = ((a > 0) & (a < 1)).astype(np.float64)
        a_out = tr.rates[net.readout_from].reshape(B, -1)
        tr.logits = a_out @ w[net.readout_weight].T + w[net.readout_bias]
        return tr

    def loss_grad(self, tr: Trace, y: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
        """Mean cross-entropy; returns sf * dL/dlogits [B, classes] and sets tr.loss, tr.g."""
        z = tr.logits - tr.logits.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        B = len(y)
        tr.loss = float(-np.mean(np.log(p[np.arange(B), y])))
        onehot = np.zeros_like(p)
        onehot[np.arange(B), y] = 1.0
        dlog = self.sf * (p - onehot) / B
        tr.g = (dlog @ w[self.net.readout_weight]).reshape(B, *self.net.layer(self.net.readout_from).shape)
        return dlog

    def backward(self, tr: Trace, w: dict[str, np.ndarray]) -> Trace:
        net = self.net
        B, V, S, lam = tr.g.shape[0], net.V, net.S, net.leak
        u = {lay.name: np.zeros((B, *lay.shape)) for lay in net.layers}
        sums = {lay.name: np.zeros((B, *lay.shape)) for lay in net.layers}
        prev = {lay.name: np.zeros((B, *lay.shape)) for lay in net.layers}
        norm = 0.0
        for t in range(net.T_b):
            norm = norm + lam ** (net.T_b - 1 - t)
            now = {}
            for lay in reversed(net.layers):
                cur = tr.g.copy() if lay.name == net.readout_from else np.zeros((B, *lay.shape))
                for syn in net.synapses:
                    if syn.pre != lay.name:
                        continue
                    src = prev[syn.post] if syn.delay else now[syn.post]
                    cur += self._adjoint(syn, tr.masks[syn.post] * src, w) / V
                v = u[lay.name] + cur
                tr.margin = self._margin(v, net.vth_b, tr.margin)
                tr.margin = self._margin(v, -net.vth_b, tr.margin)
                sb = S * ((v >= net.vth_b).astype(np.float64) - (v <= -net.vth_b).astype(np.float64))
                u[lay.name] = lam * (v - sb)
                sums[lay.name] = sums[lay.name] + (lam ** (net.T_b - 1 - t)) * sb
                now[lay.name] = sb
            prev = now
        for lay in net.layers:
            tr.sums[lay.name] = sums[lay.name] / S
            tr.beta[lay.name] = sums[lay.name] / norm
        return tr

    def gradients(self, tr: Trace, x: np.ndarray, dlog: np.ndarray, scale: dict[str, float]) -> dict[str, np.ndarray]:
        net, V = self.net, self.net.V
        x = np.asarray(x, np.float64)
        B = x.shape[0]
        post = {lay.name: tr.masks[lay.name] * tr.beta[lay.name] for lay in net.layers}
        G = {}
        for lay in net.layers:
            if lay.bias is None:
                continue
            p = post[lay.name]
            shape = self.params[lay.bias].shape
            G[lay.bias] = (p.sum(axis=0) if shape == lay.shape else p.sum(axis=(0, *range(2, p.ndim)))) / V
        for syn in net.synapses:
            if syn.weight is None:
                continue
            pre = x if syn.pre == net.input else tr.rates[syn.pre]
            q = post[syn.post]
            if syn.kind == "dense":
                gw = q.reshape(B, -1).T @ pre.reshape(B, -1) / V
            else:
                gw = conv2d_weight_grad(pre, q, self.params[syn.weight].shape[2], syn.stride, syn.padding) / V
            G[syn.weight] = scale.get(syn.weight, 1.0) * gw  # d(c W_raw): c dW_eff (c held fixed)
        a_out = tr.rates[net.readout_from].reshape(B, -1)
        G[net.readout_weight] = dlog.T @ a_out
        G[net.readout_bias] = dlog.sum(axis=0)
        return G

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float | None = None) -> Trace:
        y = np.asarray(y, np.int64)
        w, scale = self._effective()
        tr = self.forward(x, w)
        tr.scale = scale
        dlog = self.loss_grad(tr, y, w)
        self.backward(tr, w)
        tr.grads = self.gradients(tr, x, dlog, scale)
        lr_eff = (self.lr if lr is None else lr) / self.sf
        for name, gr in tr.grads.items():
            d = gr + self.wd * self.params[name]
            self.bufs[name] = d if name not in self.bufs else self.momentum * self.bufs[name] + d
            self.params[name] = self.params[name] - lr_eff * self.bufs[name]
        return tr


__all__ = ["Layer", "Net", "PaperSPIDE", "Synapse", "Trace", "avgpool", "avgpool_adjoint", "conv2d",
           "conv2d_adjoint", "conv2d_weight_grad"]
