"""Fixed-point SPIDE: integer-only training that a microcontroller without an FPU can run.

``quantize(g)`` (the ``quantize`` pass) chooses every scale; :class:`FixedModel` is the numpy model
of the arithmetic, bit for bit what the fixed-point C runtime (``spidec compile --target c
--fixed`` or ``--board ...``) computes. Everything below is integer arithmetic; ``>>`` is an
arithmetic (flooring) shift, ``round_shift(v, s) = (v + 2**(s-1)) >> s`` rounds half up.

Scales (``F``: fractional bits, a real value ``r`` is held as ``round(r * 2**F)``)
  * the weights into population ``p`` and ``p``'s bias share ``F_p`` (int16); ``p``'s membrane
    is held in rate units (``u / V``) at the same scale (int32), so a spike adds a weight column
    unchanged, the threshold is ``round(vth / V * 2**F_p)`` and the reset subtracts ``2**F_p``;
  * the readout's weights and bias have their own ``F_c``;
  * the input is quantised once per sample, ``x_q = clamp(round(x * 2**F_x), +-(2**(bits-1) - 1))``;
  * ``p``'s ternary couple is held at ``B_p = max F_q`` over the populations ``q`` it sends to
    (so a backward event adds a weight row shifted left by ``B_p - F_q``), ``S`` at ``S * 2**B_p``.
  ``F_p`` and ``F_c`` are the largest that keep ``headroom`` times the largest weight in int16.

Per sample (IF neurons, constant input):
  * ``K_p = bias + round_shift(sum_i W[:, i] x_q[i], F_x)``, clamped to ``+-k_max`` (the only
    multiplications of the forward stage, once per sample); ``T`` steps of ``u += K_p``, plus the
    columns of this step's (or the delayed synapse's last step's) spikes; ``s = u >= th``;
    ``u -= 2**F_p * s``; ``cnt += s``. Mask ``m = 0 < cnt < T``.
  * readout ``L = T * b + W_c @ cnt`` (scale ``2**F_c * T``); integer softmax: ``d = ((max L - L)
    << 16) // (T << F_c)``, ``exp(-d)`` as ``2**(-d log2 e)`` from a 257-entry Q16 table with linear
    interpolation, ``p = (e << 16) // sum e``; ``dl = p - onehot * 2**16``, scaled by ``sf / B``:
    ``dls = round_shift(dl * floor(sf / B * 2**16 + 0.5), 16)`` (Q16 of the float ``dlogits``).
  * couple injection ``g = W_c^T dls`` brought to ``2**B_p`` by a rounding shift, clamped to
    ``+-g_max``; ``T_back`` steps of ``ub += g`` plus ``+-`` the shifted weight rows of the gated
    ternary spikes; ``v = [ub >= th_b] - [ub <= -th_b]``; ``ub -= v * S``; ``sb += v``.
  * local gradient of the sample, exact integers: ``post = m * sb``; weights ``post ⊗ cnt`` (or
    ``⊗ x_q`` from the input), bias ``post``; readout ``dls ⊗ cnt`` and ``dls``. One unit of it is
    worth ``unit`` of the float gradient (``S / (T_back T)``, ``S / (T_back 2**F_x)``,
    ``S / T_back``, ``1 / (2**16 T)``, ``2**-16``).

LIF (a population or couple with ``leak < 1``; all the rest as above): the leak is held as
``lq = round(leak * 2**15)`` (0 < lq < 2**15 or refused) and applied as ``leak_mul(v) = (v * lq + 2**14)
>> 15`` (round half up, an int64 product), the float runtime's order of operations:
  * forward, each step: ``u += K`` and the spike columns; ``s = u >= th``; ``u = leak_mul(u - 2**F_p * s)``;
    ``cnt = leak_mul(cnt) + 2**C_p * s``: the leak-weighted count at scale ``2**C_p`` (``cnt_frac``);
  * backward, each step: ``ub += g`` and the rows; ``v`` as above; ``ub = leak_mul(ub - v * S)``;
    ``sb = leak_mul(sb) + 2**D_p * v`` (``sb_frac``);
  * rate 1 is the integer ``N_p`` (``norm_q``) that the same recurrence gives for a spike every step
    (``weighted_norm``; ``T`` for IF), beta's 1 likewise ``NB_p`` (``norm_b_q``; ``T_back`` for IF):
    the mask is ``0 < cnt < N_p``, the readout is ``L = N b + W_c @ cnt`` at scale ``2**F_c * N`` (the
    populations it reads must share one leak, hence one ``N``), and the gradient units read ``N_p``
    and ``NB_p`` where IF reads ``T`` and ``T_back``. ``C_p`` and ``D_p`` are the largest that keep
    ``N_p, NB_p <= 2**10`` (``NORM_CAP``): counts stay int16 (``|cnt| <= N_p``, ``|sb| <= NB_p``, by
    monotonicity of ``leak_mul``), a count's resolution is at most 2^-9 of rate 1 (IF at T = 30:
    1/30), and the gradient products ``post * cnt`` stay within ``2**20`` per sample as IF's do for
    ``T, T_back <= 2**10``. (A readout gradient summed over a batch is at most ``sf * 2**16 * N``:
    below 2^31 for ``sf < 32``, beyond that only a degenerate batch saturates the int32 momentum.)
  * the bounds: ``leak_mul`` never increases ``|v|`` (``v >= 0``: ``floor(v lq / 2^15 + 1/2) <= v``;
    ``v < 0``: ``v <= floor(v lq / 2^15 + 1/2) <= 0``), so by induction over the steps the IF bounds
    below (the worst step's additions times the steps) bound ``|u|`` and ``|ub|`` under a leak too.
  The leak's rounding makes each weighted count differ from ``round(sum leak^k s * 2**C_p)`` by at most
  ``1 / (1 - leak)`` units (half a unit per step, geometrically damped).

Updates (``update``):
  * ``momentum`` (SGD with momentum, the model's optimiser): an int32 buffer ``M`` per tensor
    accumulates the samples' gradients (saturating); the step adds ``round_shift(W * wd_mult,
    wd_shift)`` (weight decay), subtracts ``sr(M * lr_mult, lr_shift)`` from ``W`` (saturating to
    int16) and keeps ``M = round_shift(M * round(momentum * 2**15), 15)`` for the next batch.
  * ``online`` (no buffers: the state of a small device): each sample's gradient is applied at once,
    ``W -= sr(G * lr_mult, lr_shift)``, only the rows it touches; weight decay (a pass over every
    weight) comes every ``wd_period`` steps with ``wd_period`` times the strength, the period
    restarted at each epoch (``spide_begin_epoch``).
  ``sr`` is stochastic rounding ``(v + r) >> s`` with ``r`` the top ``s`` bits of a 32-bit hash of
  (tensor, index, W, M or G): a generator seeded by the state itself, so a resumed run continues
  identically. ``lr_mult = floor(lr * c + 0.5)`` with ``c = unit * 2**(F + lr_shift) / sf`` a double.
  Feedback weights are bounded to Frobenius norm ``R = round(bound * 2**F)`` (the rule's rate-unit
  bound ``feedback_norm / V``) with ``k = (R << 16) // isqrt(sum W**2)`` when ``sum W**2 > R**2``
  (else ``k = 2**16``): ``project`` sets ``W = (W * k) >> 16`` after each step; ``reparam`` (the
  authors') keeps ``W`` and lets both stages read ``E = (W * k) >> 16``, and each sample's gradient
  of ``W`` is ``round_shift(G * k, 16)``.

Average pooling (a synapse of one avgpool2d op between populations, with any scalar gain ``g``):
its coefficient ``g / divisor(o)`` of window ``o`` is held once per output position as the integer
``P[o] = floor(g / divisor(o) * 2**F_dst + 0.5)`` (round half up; ``pool_weights``), at the scale of
the destination's weights, so it is an int16 "weight" shared by the window's taps and channels: a
forward spike adds ``P[o]`` to every window ``o`` that holds it, a ternary spike of output ``j`` adds
``+-P[o(j)]`` (shifted as a dense row) to every input of its window (``pool_matrix`` is the dense
equivalent the numpy model multiplies). Not learnable; ``F_dst`` is capped so ``max |P| <= W_MAX``.
Bounds: one step adds at most ``kh kw max|P|`` to a destination membrane (all of a window's inputs
spike) and at most ``pf max|P| << shift`` to a source couple (``pf = ceil(kh/sh) ceil(kw/sw)``, the
most windows one input lies in), in place of the dense ``n_src W_MAX`` and ``n_dst W_MAX << shift``.
A per-channel bias ``b[c]`` of a ``[C, H, W]`` population is held like a full one (int16 at ``F_p``):
``K[c*H*W + i] = b[c] + ...``; its gradient is the channel's sum ``sum_i post[c*H*W + i]`` (the
adjoint of the broadcast), exact in int64, at the full bias's unit.

Convolutions (a synapse of one conv2d or conv_transpose2d op between populations, no scale): the
kernel is an int16 tensor at the destination's ``F_p``, learnable with the same headroom as a dense
weight. Every (output ``o``, input ``i``) pair is reached by at most one tap ``t(o, i)``, so the synapse
is exactly the dense integer matrix ``M[o, i] = W[t(o, i)]`` (0 where no tap reaches: padding, stride
gaps; ``conv_taps`` gives ``t``, ``conv_matrix`` builds ``M`` from the (restricted) kernel, which the
numpy model multiplies): a forward spike adds ``M[:, i]`` (the C runtime walks the kernel taps of
input ``i``), a ternary spike adds ``+-M[j, :]`` shifted as a dense row (the transposed taps). The
kernel's gradient is the adjoint of that gather, ``G[t] = sum_{t(o, i) = t} post[o] pre[i]`` (a
correlation over positions, exact in int64), then the dense rule's ``apply`` per tap. A reparametrised
conv kernel is restricted elementwise before the gather (``E = (W k) >> 16``), as a dense weight.
Bounds: one step adds at most ``fan_in W_MAX`` to a destination membrane, ``fan_in`` the most inputs
one output reads (``kh kw C_in`` inside the image for conv; for convT the most (input, tap) pairs
reaching one output), and at most ``fan_out W_MAX << shift`` to a source couple (``fan_out`` the most
outputs one input reaches), both counted exactly from ``t``, in place of ``n_src`` and ``n_dst``.
Refused: a convT from the input, a conv or a pool into the readout (alone or before a dense: "Op chains").

From the input (conv2d or average pooling from the data input, the constant-current path): ``M`` the
synapse's integer dense equivalent (``conv_matrix`` of the kernel at the destination's ``F_p``, or
``pool_matrix``), ``K_p = bias + round_shift(M x_q, F_x)`` once per sample as for a dense input weight
(the C runtime gathers each output's taps / window of ``x_q``: every product of int16s is below 2^30,
summed in int64, then clamped to ``k_max`` as a dense input's current). The kernel's gradient is
``G[t] = sum_{t(o, i) = t} post[o] x_q[i]`` (``conv_grad`` with ``pre = x_q``), one unit worth the
dense input weight's ``S / (T_back 2**F_x)``; the kernel counts in ``F_p`` as a dense input weight
does (the input's current is clamped, so the membrane bounds read only the spike feeds).

Op chains (``normal_form``: the one reading that ``quantize``, the numpy model, the C context and
the board's memory plan share; views and scalar scales are already folded by the step program):
  * ``pad |> conv2d``, a zero pad of the spatial axes (asymmetric allowed): the conv over the pad's
    input with the pad's top / left added to its padding offsets, the output shape the chain's: the
    same integer matrix (the padded border holds zeros, so those taps reach no input);
  * ``avgpool2d |> scale(tensor)`` (any broadcast to the output; views between allowed): one
    coefficient per output ``P[j] = floor(s[j] / divisor(j) * 2**F_dst + 0.5)`` (``n_out`` int16
    entries; a scalar gain keeps the ``[ho * wo]`` table). The scale tensor stays a frozen int16 tensor
    at its own fraction for the tensor interface only (``spide_get_tensor``); the stages read ``P``;
  * ``zero`` (no tensor): dropped with its feeds and readout injections: it adds nothing forward and
    nothing backward (the float C backend's zero kernel emits no code either);
  * ``avgpool2d |> (views, a scale) |> dense`` or ``|> conv2d`` between populations (kernel ``pool_dense`` /
    ``pool_conv``: "pool then classifier layer" as an ordinary conv net lowers it, conftest's ``pool_conv``).
    The pool's coefficients are held at their own scale ``F_P``: ``P[o] = floor(g[o] / divisor(o) * 2**F_P +
    0.5)`` per pooled value ``o`` (``g`` the chain's scalar gain times any tensor scale, as ``pool_scale``),
    ``F_P`` the largest (<= 15) keeping a window's coefficients ``kh kw max|P| <= 2**10`` (POOL_WINDOW: 10
    for a plain pool, so ``P`` resolves a coefficient to 2^-10 of the window's sum, finer than a count's
    1/T, and the gradient below stays within int32 as a dense one does: ``post * pre'`` per sample at most
    ``NB N 2**10``). The learnable tensor ``W`` (dense ``[n_out, n_pool]`` or a conv kernel) is at the
    destination's ``F_dst`` as any weight (same headroom). The synapse's integer matrix is
    ``M[j, i] = sum over windows o holding i of round_shift(W'[j, o] * P[o], F_P)``, ``W'`` the dense weight
    or ``conv_matrix`` of the (restricted) kernel on the pooled image (``pool_chain_matrix``). FixedModel
    holds ``M`` (``_syn``: the Lava fixed target runs it as it is); the C runtime computes the entries as
    it walks, no ``M`` in RAM: a forward spike of input ``i`` adds, for each window ``o`` holding ``i``,
    ``round_shift(W'[:, o] * P[o], F_P)`` to the destination (a dense column, or the conv's taps of pooled
    position ``o``); a ternary spike of output ``j`` adds, for each pooled ``o`` (dense: all; conv: the
    transposed taps of ``j``), ``+-round_shift(W'[j, o] * P[o], F_P)`` shifted as a dense row to every input
    of window ``o``. ``|W' P| < 2**30`` (int16 times int16): exact in int32. The gradient of ``W`` is the
    adjoint on the pooled pre: ``pre'[o] = P[o] * sum_{i in window o} cnt[i]`` (exact, at ``2**F_P`` times
    a count), ``G = post ⊗ pre'`` (dense) or ``conv_grad(taps, post, pre')`` (conv), one unit worth the dense
    rule's ``unit * 2**-F_P``; then the rule's apply (momentum / online, stochastic rounding) unchanged. The
    C runtime builds ``pre'`` in ``pp_<synapse>``, a static ``int32[n_pool]`` of the buffer plan (so the
    board's memory report prices it; the stack budget stays the fixed 2 KiB), during the update. Bounds
    (``pool_chain_bounds``): each entry ``|round_shift(W P[o], F_P)| <= (W_MAX |P[o]| >> F_P) + 1``; one
    step adds at most the sum of those over every (window, input) pair an output reads to a destination
    membrane, and over every (output, window) pair an input feeds to a source couple (a conv's taps
    counted exactly), in place of ``fan * W_MAX``. ``M`` over ``2**F_dst`` is the float chain with the
    integer ``W`` within ``(1/2 + max|W_q| 2**-(F_P+1))`` units per window holding ``i`` (one rounding of
    the product, and of the coefficient). Refused: from the input or into the readout (put a population
    between), a conv2d one into the readout, and a reparametrised (norm-restricted) feedback weight in such a
    chain;
  * ``avgpool2d |> (views) |> dense`` from a population into the readout: the logits ``L = N b + W_c @ cnt``
    read ``round_shift(W_c @ pre', F_P)`` for that feed (``pre'`` the pooled counts as above; exact in int64,
    one rounding per feed and class), its gradient is ``dls ⊗ pre'`` at the readout unit times ``2**-F_P``, and
    the couple injection ``W_c^T dls`` becomes the adjoint through the pool: for each input ``i``,
    ``sum over windows o holding i of P[o] (W_c^T dls)[o]``, summed with the couple's other injections at
    ``2**F_I`` (``F_I`` the largest ``F_P`` among them, 0 without: ``injection_frac``; plain injections shifted
    up by ``F_I``) and brought to ``2**B_p`` by one rounding shift of ``F_C + 16 + F_I - B_p``, then clamped as
    before. The C runtime holds ``pre'`` (``pp_<synapse>``, ``int32[n_pool]``) and ``W_c^T dls``
    (``ti_<synapse>``, ``int64[n_pool]``) as static buffers of the plan;
  * anything else (a scale before a conv, a dense |> pad, two learnable ops ...) is refused naming the
    synapse and its op chain.

Overflow: int32 membranes cannot overflow because ``k_max`` and ``g_max`` are chosen from the
int16 weight range, the layer sizes and ``T`` so that the worst case fits (``bounds``), with or
without a leak (LIF above); buffers and weights saturate.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Annotated, Any

import numpy as np

from .errors import SpidecError
from .ir import Graph, code_name
from .options import Opt
from .program import (
    BiasRule,
    Buffer,
    Chain,
    CoupleStep,
    PopulationStep,
    Program,
    QPopulation,
    QTensor,
    Quantization,
    ReadoutWeightRule,
    WeightRule,
    float_program,
    lowered,
    require_program,
    spike_lists,
    ternary_lists,
)

W_MAX = 32767
I32 = 2**31 - 1
Q = 16  # softmax / loss-gradient fraction bits
LOG2E_Q16 = 94548  # round(log2(e) * 2**16)
EXP2_TABLE = tuple(math.floor(65536 * 2.0 ** (-i / 256) + 0.5) for i in range(257))
UPDATES = ("momentum", "online")
POOLED = ("pool_dense", "pool_conv")  # the normal form's avgpool2d |> dense / conv2d chains ("Op chains")
POOL_WINDOW = 2**10  # a chain's pool fraction F_P keeps kh kw max|P| (a window's coefficients) at or below this


def _exponent(x: float) -> int:
    return math.floor(math.log2(x))


NORM_CAP = 2**10  # a LIF count's integer norm stays at or below this (see "LIF" in the docstring)


def leak_q15(leak: float) -> int:
    """The leak as a Q15 integer ``round(leak * 2**15)``."""
    return math.floor(leak * 2**15 + 0.5)


def leak_mul(v: Any, lq: int) -> Any:
    """``leak * v`` in integers: ``round_shift(v * lq, 15)`` (round half up). Never grows ``|v|``
    for ``0 < lq < 2**15``: ``v >= 0`` gives ``floor(v lq / 2^15 + 1/2) <= v`` and ``v < 0`` gives
    ``v <= floor(v lq / 2^15 + 1/2) <= 0``; and it is monotone in ``v``."""
    return (v * lq + (1 << 14)) >> 15


def weighted_norm(lq: int, steps: int, frac: int) -> int:
    """The leak-weighted count of a spike at every one of ``steps`` steps, at scale ``2**frac``, by
    the very recurrence the runtime runs (``c <- leak_mul(c) + 2**frac``, leak applied after the
    add): the integer that stands for rate 1."""
    c = 0
    for _ in range(steps):
        c = leak_mul(c, lq) + (1 << frac)
    return c


def count_scale(leak: float, steps: int) -> tuple[int, int, int]:
    """``(leak_q15, frac, norm)`` of a leak-weighted count over ``steps``: ``frac`` the largest (<= 15)
    whose integer norm is at most NORM_CAP (or 0); ``(0, 0, steps)`` for no leak (IF: plain counts)."""
    if leak == 1.0:
        return 0, 0, steps
    lq = leak_q15(leak)
    frac = 0
    while frac < 15 and weighted_norm(lq, steps, frac + 1) <= NORM_CAP:
        frac += 1
    return lq, frac, weighted_norm(lq, steps, frac)


def _slot(g: Graph, syn: str, op: int, field: str) -> str | None:
    """The name of the tensor held in ``field`` of op ``op`` of synapse ``syn`` (None: a constant)."""
    return next((n for n, s in g.tensor_slots().items() if s.owner == syn and s.op == op and s.field == field), None)


def normal_form(g: Graph, prog: Program) -> Program:
    """Step program ``prog`` of ``g`` with every op chain reduced to a kernel fixed point runs (see
    "Op chains" in the module docstring), the one reading of the synapses that ``quantize``,
    :class:`FixedModel`, the C context and the board's memory plan share:

    * ``pad |> conv2d`` (a zero pad of the two spatial axes, either side): the conv (``kernel`` "conv",
      ``kernel_op`` the conv) over the pad's input, the pad's top / left folded into the conv's padding
      offsets by :func:`conv_geometry` (the same integer matrix: the padded border holds zeros);
    * ``avgpool2d |> scale(tensor)`` (views between them allowed): the pool, its gain the tensor
      broadcast to the output (:func:`pool_scale`), a coefficient per output;
    * a ``zero`` synapse (no tensor): dropped with its feeds, transposes and readout injections (it
      adds nothing forward and nothing backward; the float C backend's zero kernel emits no code);
    * ``avgpool2d |> (views, a scale) |> dense / conv2d``: kernel ``pool_dense`` / ``pool_conv``, ``kernel_op``
      the pool, ``weight`` the learnable op's tensor, ``shape_in`` the pool's input, ``shape_out`` the chain's
      output (:func:`pool_part` and :func:`learn_part` split it).

    Any other chain (``kernel == "chain"``) is refused naming the synapse and its ops. The graph's own
    ``g.program`` keeps the chains as lowered (the text format and the float backends read them)."""
    chains, dropped = [], set()
    for ch in prog.chains:
        if ch.kernel != "chain":
            chains.append(ch)
            continue
        syn = g.synapse(ch.name).synapse
        shapes = syn.shapes(g.node(ch.src).shape)
        work = [i for i in ch.ops if not syn.ops[i].view]
        kinds = [syn.ops[i].kind for i in work]
        owned = [n for n, s in g.tensor_slots().items() if s.owner == ch.name]
        if kinds == ["zero"] and not owned:
            dropped.add(ch.name)
            continue
        if kinds == ["pad", "conv2d"] and work[1] == work[0] + 1:
            pads = syn.ops[work[0]].pads
            if len(pads) == 3 and pads[0] == (0, 0):
                chains.append(replace(ch, kernel="conv", kernel_op=work[1], weight=_slot(g, ch.name, work[1], "weight"),
                                      shape_in=tuple(shapes[work[0]]), shape_out=tuple(shapes[work[1] + 1])))
                continue
        learn = work[-1] if work else -1
        if (len(kinds) >= 2 and kinds[0] == "avgpool2d" and kinds[-1] in ("dense", "conv2d")
                and kinds[1:-1] in ([], ["scale"])  # avgpool2d |> (views, a gain) |> dense / conv2d
                and (kinds[-1] == "dense" or tuple(shapes[work[0] + 1]) == tuple(shapes[learn]))):
            # (a conv reads the pooled image as it is: a reshape between them is refused below)
            chains.append(replace(ch, kernel="pool_dense" if kinds[-1] == "dense" else "pool_conv", kernel_op=work[0],
                                  weight=_slot(g, ch.name, learn, "weight"), shape_in=tuple(shapes[work[0]]),
                                  shape_out=tuple(shapes[learn + 1])))
            continue
        if kinds == ["avgpool2d", "scale"]:
            chains.append(replace(ch, kernel="pool", kernel_op=work[0], weight=None,
                                  shape_in=tuple(shapes[work[0]]), shape_out=tuple(shapes[work[0] + 1])))
            continue
        names = " |> ".join(syn.ops[i].kind for i in ch.ops)
        raise SpidecError(f"synapse '{ch.name}': fixed point cannot run the op chain {names} (it runs one dense, "
                          "conv2d, conv_transpose2d or avgpool2d op, pad |> conv2d, avgpool2d |> scale, "
                          "avgpool2d |> dense / conv2d, or zero)",
                          hint="use the float C backend (drop --fixed) for other chains")
    if not dropped:
        return replace(prog, chains=tuple(chains))
    pops = tuple(replace(p, feeds=tuple(f for f in p.feeds if f.syn not in dropped)) for p in prog.populations)
    couples = tuple(replace(c, feeds=tuple(f for f in c.feeds if f.syn not in dropped),
                            injections=tuple(s for s in c.injections if s not in dropped)) for c in prog.couples)
    readouts = tuple(replace(r, feeds=tuple(f for f in r.feeds if f.syn not in dropped)) for r in prog.readouts)
    return replace(prog, chains=tuple(chains), populations=pops, couples=couples, readouts=readouts)


def _structure(g: Graph) -> Program:
    """The step program of ``g`` in its fixed-point normal form (:func:`normal_form`), checked against what
    fixed point supports (dense synapses without scale, average pooling with any scalar or tensor gain,
    conv / convT between populations, conv2d (after a zero pad) and average pooling from the input, IF or
    LIF neurons with a Q15 leak, full or per-channel biases, couples with a power-of-two S, one input, one
    cross-entropy readout)."""
    prog = normal_form(g, require_program(g, "quantize"))
    if prog.encoding != "constant" or len(prog.inputs) != 1:
        raise SpidecError("fixed point reads one data input as a constant current")
    if len(prog.readouts) != 1 or prog.readouts[0].loss != "cross_entropy":
        raise SpidecError("fixed point trains one cross-entropy readout (a classifier)")
    for p in prog.populations:
        c = prog.couple_of(p.name)
        for what, leak in ((f"population '{p.name}'", p.leak), (f"couple of '{p.name}'", c.leak)):
            if leak != 1.0 and not 0 < leak_q15(leak) < 2**15:
                raise SpidecError(f"{what}: leak {leak} is 0 or 1 in Q15 (fixed point holds the leak as "
                                  "round(leak * 2^15))", hint="use leak=1 (IF) or a leak in (2^-16, 1 - 2^-16)")
        if c.S <= 0 or 2.0 ** round(math.log2(c.S)) != c.S:
            raise SpidecError(f"couple of '{p.name}': fixed point needs S = 2 vth_b to be a power of two, got {c.S}")
    ro = prog.readouts[0]
    pops = {p.name for p in prog.populations}
    inputs = {i.name for i in prog.inputs}
    read = {f.src for f in ro.feeds}
    if len({p.leak for p in prog.populations if p.name in read}) > 1:
        raise SpidecError(f"readout '{ro.name}': fixed point needs the populations it reads to share one leak "
                          "(their counts are summed at one rate norm)")
    for ch in prog.chains:
        if ch.dropout:
            raise SpidecError(f"synapse '{ch.name}': fixed point does not run dropout yet (p = {ch.dropout})",
                              hint="train with dropout on the float C or sim target, or export the model "
                              "with its Dropout in eval mode")
        into_pop = ch.dst in pops and (ch.src in pops or ch.src in inputs)
        pool_ok = ch.kernel == "pool" and into_pop
        if ch.kernel == "pool" and not pool_ok:
            raise SpidecError(f"synapse '{ch.name}': fixed point pools into populations only (from a population "
                              "or the input, not into a readout)", hint="put a population between the pool and "
                              "the readout")
        if ch.kernel == "convt" and not (ch.src in pops and ch.dst in pops):
            raise SpidecError(f"synapse '{ch.name}': fixed point runs convt between populations only (not "
                              "from an input or into a readout)", hint="use a dense synapse there, or the float "
                              "C backend (drop --fixed)")
        if ch.kernel == "conv" and not into_pop:
            raise SpidecError(f"synapse '{ch.name}': fixed point runs conv into populations only (not into a "
                              "readout)", hint="use a dense synapse there, or the float C backend (drop --fixed)")
        to_readout = ch.kernel == "pool_dense" and ch.src in pops and ch.dst in {r.name for r in prog.readouts}
        if ch.kernel in POOLED and not (ch.src in pops and ch.dst in pops) and not to_readout:
            where = ("from a population (into a population or the readout), not from the input" if ch.kernel ==
                     "pool_dense" else "between populations only (not from the input or into the readout)")
            raise SpidecError(f"synapse '{ch.name}': fixed point runs avgpool2d |> {ch.kernel[5:]} {where}",
                              hint="put a population between")
        if ch.kernel in POOLED and ch.weight in prog.restricted(prog.optimizer.feedback_norm_mode) and \
                prog.optimizer.feedback_norm_mode == "reparam":
            raise SpidecError(f"synapse '{ch.name}': fixed point cannot restrict (reparam) the weight of an avgpool2d "
                              f"|> {ch.kernel[5:]} chain", hint="use feedback_norm_mode 'project' or a plain dense "
                              "feedback synapse")
        if ch.kernel not in ("dense", "pool", "conv", "convt", *POOLED):
            raise SpidecError(f"synapse '{ch.name}': fixed point supports dense synapses only, not {ch.kernel} "
                              "(and average pooling, conv and transposed conv between populations)",
                              hint="use the float C backend (drop --fixed) for identity synapses and op chains")
        if ch.factor != 1.0 and not pool_ok and ch.kernel not in POOLED:  # (a chain's gain is in its P)
            raise SpidecError(f"synapse '{ch.name}': fixed point needs weights without a scale factor "
                              f"(got {ch.factor})")
        if ch.src in {r.name for r in prog.readouts} or (ch.dst in {r.name for r in prog.readouts}
                                                         and ch.src not in {p.name for p in prog.populations}):
            raise SpidecError(f"synapse '{ch.name}': the fixed-point readout reads populations only")
    return prog


def fixed_buffers(prog: Program, update: str, g: Graph) -> tuple[Buffer, ...]:
    """The state of the integer arithmetic (what fixed.c.j2 declares and the board report prices) of
    ``g``'s step program ``prog``."""
    out: list[Buffer] = []
    add = out.append
    ni, nc = prog.inputs[0].size, prog.readouts[0].size
    inputs = {i.name for i in prog.inputs}
    dense_in = any(ch.kernel == "dense" and ch.src in inputs for ch in prog.chains)
    for name in (*(r.tensor for r in prog.rules), *_frozen(prog)):
        size = prog_tensor_size(prog, name)
        c = "t_" + code_name(name)
        add(Buffer(c, "i16", size, "update", name, "weights", "weights W * 2^F (initial values in flash)"))
        if update == "momentum" and name in {r.tensor for r in prog.rules}:
            add(Buffer(c + "_M", "i32", size, "update", name, "momentum",
                       "momentum buffer: the batch's gradients accumulate here"))
    for p in prog.populations:
        c, n = code_name(p.name), p.size
        add(Buffer(f"u_{c}", "i32", n, "forward", p.name, "membranes", "membrane potential, rate units * 2^F"))
        add(Buffer(f"K_{c}", "i32", n, "forward", p.name, "membranes",
                   "constant input current (bias + input weights), once per sample"))
        add(Buffer(f"cnt_{c}", "i16", n, "forward", p.name, "rates and counts", "spike count"))
        add(Buffer(f"m_{c}", "u8", n, "forward", p.name, "rates and counts", "mask m = [0 < cnt < T]"))
        out += spike_lists(p, "i16")
    for cp in prog.couples:
        c, n = code_name(cp.of), cp.size
        add(Buffer(f"ub_{c}", "i32", n, "backward", cp.name, "membranes", "couple potential * 2^B"))
        add(Buffer(f"g_{c}", "i32", n, "backward", cp.name, "membranes",
                   "injected loss gradient * 2^B, once per sample"))
        add(Buffer(f"sb_{c}", "i16", n, "backward", cp.name, "rates and counts", "ternary spike sum"))
        add(Buffer(f"nb_{c}", "i16", n, "backward", cp.name, "rates and counts",
                   "ternary spikes fired (either sign)"))
        out += ternary_lists(cp, "i16", "i8")
    readout = {r.name for r in prog.readouts}
    for ch in normal_form(g, prog).chains:  # avgpool |> dense / conv2d: the pooled values ("Op chains")
        if ch.kernel in POOLED and (ch.learnable or ch.dst in readout):  # (read by its update or the readout)
            c, n = code_name(ch.name), pool_part(g, ch).n_out
            add(Buffer(f"pp_{c}", "i32", n, "update", ch.name, "rates and counts",
                       "pooled counts pre' = P * (window sums), at 2^F_P"))
            if ch.dst in readout:
                add(Buffer(f"ti_{c}", "i64", n, "backward", ch.name, "membranes",
                           "W_c^T dls of each pooled value, once per sample"))
    for name, dtype, size, what in (
            ("xq", "i16", ni, "the quantised input x * 2^F_X"), ("nzi", "i16", ni if dense_in else 0,
                                                                "indices of its non-zero values"),
            ("Lq", "i64", nc, "integer logits, scale 2^F_C * T"),
            ("dls", "i32", nc, "Q16 loss gradient sf/B * (softmax - onehot)"),
            ("logits", "f32", nc, "the logits as floats (the spide.h interface)"),
            ("events", "u64", 1, "spikes of the last sample"),  # (a scalar: see below)
            ("synops", "u64", 3, "spike-driven synaptic operations per stage"),
            ("macs", "u64", 3, "multiply-accumulates per stage")):
        if size:  # (nzi: only for dense weights from the input; conv and pool feeds gather their taps)
            add(Buffer(name, dtype, size, "model", "", "other model state", what, scalar=name == "events"))
    if update == "online":  # the samples' learning rate (momentum updates read it at the step)
        add(Buffer("lr_now", "f32", 1, "model", "", "other model state", "the learning rate of the samples",
                   scalar=True))
    return tuple(out)


def _frozen(prog: Program) -> list[str]:
    learn = {r.tensor for r in prog.rules}
    names = [ch.weight for ch in prog.chains if ch.weight and ch.weight not in learn]
    names += [p.bias for p in prog.populations if p.bias and p.bias not in learn]
    names += [r.bias for r in prog.readouts if r.bias and r.bias not in learn]
    # then every other frozen tensor of the scales (a pool's tensor gain, a frozen pad |> conv2d kernel)
    names += [t.name for t in (prog.quant.qtensors if prog.quant else ()) if not t.learnable and t.name not in names]
    return names  # type: ignore[return-value]


def prog_tensor_size(prog: Program, name: str) -> int:
    q = prog.quant
    for qt in q.qtensors if q else ():
        if qt.name == name and qt.size:  # a conv kernel (its size is not the chain's)
            return qt.size
    for ch in prog.chains:
        if ch.weight == name:
            return ch.n_in * ch.n_out
    for p in prog.populations:
        if p.bias == name:
            return p.bias_channels or p.size
    for r in prog.readouts:
        if r.bias == name:
            return r.size
    raise SpidecError(f"no tensor '{name}' in the step program")


def pool_geometry(g: Graph, ch: Chain) -> dict[str, int]:
    """The window geometry of pooling synapse ``ch`` (the float C backend's ``_window`` keys), with
    ``pf``: the most windows one input lies in."""
    op = g.synapse(ch.name).synapse.ops[ch.kernel_op]  # type: ignore[index]
    ci, h, wd = ch.shape_in
    co, ho, wo = ch.shape_out
    (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
    return {"ci": ci, "h": h, "wd": wd, "co": co, "ho": ho, "wo": wo, "kh": kh, "kw": kw, "sh": sh, "sw": sw,
            "ph": ph, "pw": pw, "pf": -(-kh // sh) * -(-kw // sw)}


def pool_scale(g: Graph, ch: Chain) -> np.ndarray | None:
    """The tensor gain of an ``avgpool2d |> scale(tensor)`` synapse broadcast to its output, flat
    ([n_out], float64; the views between them keep the flat order), or None for a scalar gain."""
    syn = g.synapse(ch.name).synapse
    after = [i for i in ch.ops if i > ch.kernel_op and syn.ops[i].kind == "scale"]  # type: ignore[operator]
    if not after:
        return None
    i = after[0]
    name = _slot(g, ch.name, i, "factor")
    factor = g.tensor(name) if name else syn.ops[i].factor
    shape = syn.shapes(g.node(ch.src).shape)[i]
    return np.broadcast_to(np.asarray(factor, np.float64), tuple(shape)).ravel()


def pool_coefficients(g: Graph, ch: Chain) -> np.ndarray:
    """``g / divisor(o)`` per output position ``o`` of pooling synapse ``ch`` (float64): ``[ho * wo]`` for
    a scalar gain ``g``, ``[n_out]`` (``g[o] / divisor(o)`` over every channel) for a tensor gain."""
    op = g.synapse(ch.name).synapse.ops[ch.kernel_op]  # type: ignore[index]
    geo = pool_geometry(g, ch)
    div = np.broadcast_to(np.asarray(op._divisor(ch.shape_in), np.float64), (geo["ho"], geo["wo"]))
    scale = pool_scale(g, ch)
    if scale is None:
        return (ch.factor / div).ravel()
    return ch.factor * scale / np.broadcast_to(div, (geo["co"], geo["ho"], geo["wo"])).ravel()


def pool_weights(g: Graph, ch: Chain, frac: int) -> np.ndarray:
    """The pool's integer coefficients ``P[o] = floor(g / divisor(o) * 2**frac + 0.5)`` (int64, [ho * wo],
    or [n_out] for a tensor gain: see :func:`pool_coefficients`)."""
    return np.floor(pool_coefficients(g, ch) * 2.0**frac + 0.5).astype(np.int64)


def pool_matrix(g: Graph, ch: Chain, frac: int) -> np.ndarray:
    """The dense equivalent of pooling synapse ``ch`` in integers ([n_out, n_in]): ``P[o]`` at every tap
    of window ``o`` of every channel (the numpy model multiplies it; the C runtime walks the windows)."""
    geo = pool_geometry(g, ch)
    P = pool_weights(g, ch, frac)
    if P.size == geo["ho"] * geo["wo"]:  # a scalar gain: one coefficient per position, the same in every channel
        P = np.tile(P, geo["co"])
    return pool_windows(g, ch) * P[:, None]


def pool_windows(g: Graph, ch: Chain) -> np.ndarray:
    """``A[o, i] = 1`` where input ``i`` lies in window ``o`` of pooling synapse ``ch`` ([n_out, n_in], int64;
    ``pool_matrix`` is ``A`` times each window's coefficient)."""
    geo = pool_geometry(g, ch)
    h, wd, ho, wo = geo["h"], geo["wd"], geo["ho"], geo["wo"]
    out = np.zeros((ch.n_out, ch.n_in), np.int64)
    for c in range(geo["co"]):
        for oy in range(ho):
            for ox in range(wo):
                j = (c * ho + oy) * wo + ox
                for ky in range(geo["kh"]):
                    y = oy * geo["sh"] - geo["ph"] + ky
                    for kx in range(geo["kw"]):
                        x = ox * geo["sw"] - geo["pw"] + kx
                        if 0 <= y < h and 0 <= x < wd:
                            out[j, (c * h + y) * wd + x] = 1
    return out


def pool_part(g: Graph, ch: Chain) -> Chain:
    """The pool of an ``avgpool2d |> dense / conv2d`` chain (kernel ``pool_dense`` / ``pool_conv``) as a pooling
    synapse of its own (kernel "pool", output the pooled shape, gain ``ch.factor`` and any tensor scale before
    the learnable op): what :func:`pool_geometry`, :func:`pool_weights`, :func:`pool_windows` read."""
    syn = g.synapse(ch.name).synapse
    shapes = syn.shapes(g.node(ch.src).shape)
    learn = [i for i in ch.ops if syn.ops[i].kind in ("dense", "conv2d")][-1]
    ops = tuple(i for i in ch.ops if i < learn)
    return replace(ch, kernel="pool", weight=None, ops=ops, shape_out=tuple(shapes[ch.kernel_op + 1]))  # type: ignore[operator]


def learn_part(g: Graph, ch: Chain) -> Chain:
    """The learnable op of an ``avgpool2d |> dense / conv2d`` chain alone, on the pooled values (kernel "dense"
    or "conv", no gain): :func:`conv_taps` reads it for a conv."""
    syn = g.synapse(ch.name).synapse
    shapes = syn.shapes(g.node(ch.src).shape)
    learn = [i for i in ch.ops if syn.ops[i].kind in ("dense", "conv2d")][-1]
    return replace(ch, kernel="dense" if ch.kernel == "pool_dense" else "conv", kernel_op=learn, factor=1.0,
                   ops=(learn,), shape_in=tuple(shapes[ch.kernel_op + 1]), shape_out=tuple(shapes[learn + 1]))  # type: ignore[operator]


def pool_frac(g: Graph, ch: Chain) -> int:
    """``F_P`` of an ``avgpool2d |> dense / conv2d`` chain: the largest (<= 15) keeping a window's coefficients
    ``kh kw max|P|`` at or below POOL_WINDOW (see "Op chains")."""
    pc = pool_part(g, ch)
    geo = pool_geometry(g, pc)
    big = float(np.max(np.abs(pool_coefficients(g, pc)))) * geo["kh"] * geo["kw"]
    fp = max(0, min(15, _exponent(POOL_WINDOW / big))) if big > 0 else 0
    P = np.abs(pool_weights(g, pc, fp))
    if not P.any() or P.max() > W_MAX:
        raise SpidecError(f"synapse '{ch.name}': the pool's gain {'rounds to 0' if not P.any() else 'is too large'} in "
                          f"fixed point (coefficients up to {float(np.max(np.abs(pool_coefficients(g, pc)))):.3g}, "
                          f"held as integers at 2^{fp} below {W_MAX + 1})", hint="remove the synapse or rescale "
                          "its gain and the weight after it")
    return fp


def pool_chain(g: Graph, ch: Chain) -> tuple[np.ndarray, np.ndarray, int, np.ndarray | None]:
    """``(A, P, F_P, taps)`` of an ``avgpool2d |> dense / conv2d`` chain: the windows ``A`` [n_pool, n_in], the
    coefficient of every pooled value ``P`` [n_pool] (int64, at ``2**F_P``), and for a conv its taps over
    the pooled image ([n_out, n_pool]; None for dense)."""
    pc = pool_part(g, ch)
    fp = pool_frac(g, ch)
    P = pool_weights(g, pc, fp)
    geo = pool_geometry(g, pc)
    if P.size != pc.n_out:  # a scalar gain: the [ho * wo] table repeats over the channels
        P = np.tile(P, geo["co"])
    taps = conv_taps(g, learn_part(g, ch)) if ch.kernel == "pool_conv" else None
    return pool_windows(g, pc), P, fp, taps


def pool_chain_matrix(A: np.ndarray, P: np.ndarray, fp: int, taps: np.ndarray | None, w: np.ndarray) -> np.ndarray:
    """``M[j, i] = sum_{o holding i} round_shift(W'[j, o] * P[o], F_P)`` ([n_out, n_in], int64), ``W'`` the
    (restricted) dense weight or ``conv_matrix(taps, kernel)``."""
    wp = conv_matrix(taps, w) if taps is not None else np.asarray(w, np.int64).reshape(-1, P.size)
    return round_shift(wp * P[None, :], fp) @ A


def pool_chain_bounds(g: Graph, ch: Chain) -> tuple[int, int]:
    """The most one step's spikes add through chain ``ch`` (``avgpool2d |> dense / conv2d``) to one destination
    membrane, and one step's ternary events (unshifted) to one source couple, for any int16 ``W``: each term
    ``|round_shift(W P[o], F_P)| <= (W_MAX |P[o]| >> F_P) + 1``, counted over the (output, window, input)
    triples that meet (a conv's taps counted exactly)."""
    A, P, fp, taps = pool_chain(g, ch)
    c = (W_MAX * np.abs(P) >> fp) + 1
    reach = (taps >= 0).astype(np.int64) if taps is not None else np.ones((ch.n_out, P.size), np.int64)
    fwd = int((reach @ (A.sum(axis=1) * c)).max())  # output j: every input of every window it reads
    bwd = int((A.T @ (c * reach.sum(axis=0))).max())  # input i: every output reading a window holding it
    return fwd, bwd


def conv_geometry(g: Graph, ch: Chain) -> dict[str, int]:
    """The geometry of conv / convT synapse ``ch`` (the float C backend's ``_window`` keys). A zero pad
    before the conv (``pad |> conv2d``, see :func:`normal_form`) moves the input by its top / left
    amounts: ``ph``, ``pw`` are the conv's padding plus those (the bottom / right come with the output
    shape), ``h``, ``wd`` the unpadded input's."""
    syn = g.synapse(ch.name).synapse
    op = syn.ops[ch.kernel_op]  # type: ignore[index]
    ci, h, wd = ch.shape_in
    co, ho, wo = ch.shape_out
    (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
    before = ch.kernel_op - 1  # type: ignore[operator]
    if before in ch.ops and syn.ops[before].kind == "pad":
        ph, pw = ph + syn.ops[before].pads[1][0], pw + syn.ops[before].pads[2][0]
    return {"ci": ci, "h": h, "wd": wd, "co": co, "ho": ho, "wo": wo, "kh": kh, "kw": kw, "sh": sh, "sw": sw,
            "ph": ph, "pw": pw}


def conv_taps(g: Graph, ch: Chain) -> np.ndarray:
    """``t(o, i)``: the flat kernel index of the one tap joining output ``o`` and input ``i`` of conv /
    convT synapse ``ch``, -1 where none does ([n_out, n_in], int64). Conv: kernel ``[co, ci, kh, kw]``,
    input ``(ci, oy*sh - ph + ky, ox*sw - pw + kx)``; convT: kernel ``[ci, co, kh, kw]``, output
    ``(co, y*sh - ph + ky, x*sw - pw + kx)`` (the float kernels' geometry)."""
    geo = conv_geometry(g, ch)
    ci, h, wd, co, ho, wo = (geo[k] for k in ("ci", "h", "wd", "co", "ho", "wo"))
    kh, kw, sh, sw, ph, pw = (geo[k] for k in ("kh", "kw", "sh", "sw", "ph", "pw"))
    out = np.full((ch.n_out, ch.n_in), -1, np.int64)
    for ky in range(kh):
        for kx in range(kw):
            # (small-image position pairs (a, b): a the strided side, b = a*s - p + k on the other)
            if ch.kernel == "conv":
                a_y, a_x, big_h, big_w = np.arange(ho), np.arange(wo), h, wd
            else:
                a_y, a_x, big_h, big_w = np.arange(h), np.arange(wd), ho, wo
            by, bx = a_y * sh - ph + ky, a_x * sw - pw + kx
            vy, vx = (by >= 0) & (by < big_h), (bx >= 0) & (bx < big_w)
            ay, ax = np.meshgrid(a_y[vy], a_x[vx], indexing="ij")
            yy, xx = np.meshgrid(by[vy], bx[vx], indexing="ij")
            for c_o in range(co):
                for c_i in range(ci):
                    if ch.kernel == "conv":
                        o = (c_o * ho + ay) * wo + ax
                        i = (c_i * h + yy) * wd + xx
                        t = ((c_o * ci + c_i) * kh + ky) * kw + kx
                    else:
                        i = (c_i * h + ay) * wd + ax
                        o = (c_o * ho + yy) * wo + xx
                        t = ((c_i * co + c_o) * kh + ky) * kw + kx
                    out[o.ravel(), i.ravel()] = t
    return out


def conv_matrix(taps: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The dense integer matrix ``M[o, i] = kernel[t(o, i)]`` (0 where no tap joins them)."""
    flat = np.asarray(kernel, np.int64).ravel()
    return np.where(taps >= 0, flat[np.maximum(taps, 0)], 0)


def conv_grad(taps: np.ndarray, post: np.ndarray, pre: np.ndarray, size: int) -> np.ndarray:
    """``G[t] = sum_{t(o, i) = t} post[o] pre[i]`` in int64 (the adjoint of ``conv_matrix``)."""
    outer = np.outer(np.asarray(post, np.int64), np.asarray(pre, np.int64))
    on = taps >= 0
    G = np.zeros(size, np.int64)
    np.add.at(G, taps[on], outer[on])
    return G


def quantize(g: Graph, *,
             update: Annotated[str | None, Opt("fixed-point updates: momentum (the model's SGD, a buffer per weight) "
                                               "or online (each sample's update at once, no buffers)",
                                               choices=UPDATES, default_text="momentum when the model has "
                                               "momentum")] = None,
             input_max: Annotated[float, Opt("largest |input| to represent")] = 1.0,
             input_bits: Annotated[int, Opt("bits of the quantised input")] = 8,
             headroom: Annotated[float, Opt("how far weights may grow before they saturate")] = 8.0,
             weight_range: Annotated[float, Opt("every scale covers at least +-this weight")] = 1.0,
             x: np.ndarray | None = None,
             seed: Annotated[int, Opt("salt of the stochastic rounding", flag="--rounding-seed")] = 0) -> Graph:
    """The ``quantize`` pass: annotate the step program of training graph ``g`` with fixed-point
    scales (see the module docstring) and the integer buffer plan. ``x`` (samples) or ``input_max``
    bounds the input; ``headroom`` is how far the largest weight may grow before it saturates, and
    every scale covers at least ``+-weight_range`` (weights grow several times over in training);
    ``update`` is ``momentum`` (the model's optimiser, default when it has momentum) or ``online``;
    ``seed`` salts the stochastic rounding."""
    g = lowered(g, "quantize")  # (a training graph read or edited without its step program)
    prog = _structure(g)
    prog = float_program(prog)
    T, T_back, sf, opt = prog.T, prog.T_back, prog.sf, prog.optimizer
    update = update or ("momentum" if opt.momentum > 0 else "online")
    if update not in UPDATES:
        raise SpidecError(f"update must be one of {', '.join(UPDATES)}, got {update!r}")
    if T >= 2**15 or T_back >= 2**15:
        raise SpidecError(f"fixed point counts spikes in int16: T and T_back must be below 32768, got {T} and "
                          f"{T_back}")
    if not 2 <= input_bits <= 16:
        raise SpidecError(f"input_bits must lie in 2..16, got {input_bits}")
    if not headroom >= 1 or not weight_range > 0:
        raise SpidecError(f"headroom must be >= 1 and weight_range > 0, got {headroom} and {weight_range}")
    if not 0 < sf < 2**15:
        raise SpidecError(f"fixed point needs 0 < sf < 32768 (the loss gradient is a Q16 int32), got {sf}")
    if x is not None:
        input_max = float(np.max(np.abs(np.asarray(x, np.float64)))) if np.size(x) else 1.0
    if not (input_max > 0 and math.isfinite(input_max)):
        raise SpidecError(f"input_max must be a positive number, got {input_max}")
    xq_max = 2 ** (input_bits - 1) - 1
    fx = max(0, min(24, _exponent(xq_max / input_max)))

    def frac_for(names: list[str], pool: float = 0.0) -> int:
        big = max([float(np.max(np.abs(g.tensor(n)))) for n in names if g.tensor(n).size] + [1e-3])
        f = max(0, min(24, _exponent(W_MAX / max(headroom * big, weight_range))))
        # a pool coefficient never grows (not learnable): it needs only to fit int16 itself
        return min(f, _exponent(W_MAX / pool)) if pool > 0 else f

    pops = {p.name: p for p in prog.populations}
    S = {p: prog.couple_of(p).S for p in pops}
    n = {p: pops[p].size for p in pops}
    chains = prog.chains
    into: dict[str, list[str]] = {p: [] for p in pops}
    pooled: dict[str, float] = {p: 0.0 for p in pops}  # the largest pool coefficient into each population
    for ch in chains:
        if ch.dst in pops and ch.kernel == "pool":
            pooled[ch.dst] = max(pooled[ch.dst], float(np.max(np.abs(pool_coefficients(g, ch)))))
        elif ch.dst in pops:
            into[ch.dst].append(ch.weight)  # type: ignore[arg-type]
    pop_frac = {p: frac_for(into[p] + ([pops[p].bias] if pops[p].bias else []), pooled[p]) for p in pops}

    def most(ch: Chain) -> int:  # the most one spike (forward) or event (backward) adds through ch per neuron
        if ch.kernel != "pool":
            return W_MAX
        return int(np.max(np.abs(pool_weights(g, ch, pop_frac[ch.dst]))))

    taps = {ch.name: conv_taps(g, ch) >= 0 for ch in chains if ch.kernel in ("conv", "convt")}

    pooled_bounds = {ch.name: pool_chain_bounds(g, ch) for ch in chains if ch.kernel in POOLED}

    def adds(ch: Chain, forward: bool) -> int:  # the most one step adds through ch to one neuron (unshifted)
        if ch.name in pooled_bounds:
            return pooled_bounds[ch.name][0 if forward else 1]
        return fan(ch, forward) * most(ch)

    def fan(ch: Chain, forward: bool) -> int:  # how many of those can meet in one neuron in one step
        if ch.name in taps:  # the taps that meet in one output (forward) / input (backward), counted
            return int(taps[ch.name].sum(axis=1 if forward else 0).max())
        if ch.kernel != "pool":
            return n[ch.src] if forward else n[ch.dst]
        geo = pool_geometry(g, ch)
        return geo["kh"] * geo["kw"] if forward else geo["pf"]
    ro = prog.readouts[0]
    readout_frac = frac_for([ch.weight for ch in chains if ch.dst == ro.name]  # type: ignore[misc]
                            + ([ro.bias] if ro.bias else []))
    couple_frac = {}
    for p in pops:
        outs = [pop_frac[ch.dst] for ch in chains if ch.src == p and ch.dst in pops]
        couple_frac[p] = max(outs) if outs else pop_frac[p]
        if S[p] * 2 ** couple_frac[p] < 2:
            raise SpidecError(f"couple of '{p}': S = {S[p]} is below two units at scale 2^{couple_frac[p]}")
    qpops = []
    for p in pops:
        fp = pop_frac[p]
        events = sum(adds(ch, True) for ch in chains if ch.dst == p and ch.src in pops)
        room = I32 // T - events - 2**fp
        k_max = min(2 ** (fp + 10), room)
        if k_max < 2 ** (fp + 1):
            raise SpidecError(f"population '{p}': int32 membranes cannot be proven safe ({T} steps of "
                              f"{events:,} from spikes); lower headroom or T")
        bp = couple_frac[p]
        sh = round(math.log2(S[p]))
        bev = sum(adds(ch, False) << (bp - pop_frac[ch.dst] + round(math.log2(S[ch.dst])))
                  for ch in chains if ch.src == p and ch.dst in pops)
        room_b = I32 // T_back - bev - (2 ** (bp + sh))
        g_max = min(2 ** (bp + sh + 10), room_b)
        if g_max < 2 ** (bp + sh + 1):
            raise SpidecError(f"couple of '{p}': int32 couple potentials cannot be proven safe ({T_back} steps of "
                              f"{bev:,} from ternary spikes); lower headroom or T_back")
        # LIF: the leak multiply never grows |u| (leak_mul), so the IF bounds above, sums of the
        # worst step's additions over the steps, still bound |u| and |ub| (induction on the steps)
        lq, cf, nq = count_scale(pops[p].leak, T)
        clq, sbf, nbq = count_scale(prog.couple_of(p).leak, T_back)
        lif = {} if not (lq or clq) else {"leak_q15": lq, "cnt_frac": cf, "norm_q": nq, "cleak_q15": clq,
                                          "sb_frac": sbf, "norm_b_q": nbq}
        qpops.append(QPopulation(p, fp, bp, k_max, g_max, T * (k_max + events + 2**fp),
                                 T_back * (g_max + bev + 2 ** (bp + sh)), **lif))
    qp_of = {qp.name: qp for qp in qpops}
    N = {p: norm_of(qp_of[p], T) for p in pops}  # the integers standing for rate 1 (T for IF)
    NB = {p: norm_b_of(qp_of[p], T_back) for p in pops}  # and for beta's 1 (T_back for IF)
    RN = readout_norm(prog, qpops)
    # every tensor's fraction bits; the gradient units and step multipliers of the learnable ones
    frac_of: dict[str, int] = {}
    for ch in chains:
        if ch.weight:
            frac_of[ch.weight] = pop_frac[ch.dst] if ch.dst in pops else readout_frac
    for p in pops.values():
        if p.bias:
            frac_of[p.bias] = pop_frac[p.name]
    if ro.bias:
        frac_of[ro.bias] = readout_frac
    rules = {r.tensor: (k, r) for k, r in enumerate(prog.rules)}
    ksize = {ch.weight: int(g.tensor(ch.weight).size) for ch in chains if ch.kernel in ("conv", "convt", *POOLED)}
    fp_of = {ch.name: pool_frac(g, ch) for ch in chains if ch.kernel in POOLED}  # gradient at 2^F_P more
    restricted = prog.restricted(opt.feedback_norm_mode)
    qtensors = []
    for name, f in frac_of.items():
        if name not in rules:
            qtensors.append(QTensor(name, f, False, size=ksize.get(name, 0)))
            continue
        k, r = rules[name]
        # one unit of the integer gradient in rate units, with the rule's 1/V^2 (the authors' step)
        if isinstance(r, WeightRule):
            unit = S[r.gate] / (NB[r.gate] * (N[r.pre] if r.pre in pops else 2**fx)) * r.scale
            unit *= 2.0 ** -fp_of.get(r.syn, 0)  # (1: exact, so other rules keep their unit bit for bit)
        elif isinstance(r, BiasRule):
            unit = S[r.gate] / NB[r.gate] * r.scale
        elif isinstance(r, ReadoutWeightRule):
            unit = 1.0 / (2**Q * RN) * 2.0 ** -fp_of.get(r.syn, 0)
        else:
            unit = 1.0 / 2**Q
        scale = opt.lr / sf * unit * 2**f
        lr_shift = max(0, min(32, 30 - math.ceil(math.log2(scale))))
        wd = opt.weight_decay / (2**f * unit)  # weight decay in gradient units per weight unit
        wd_shift = max(0, min(40, 20 - math.ceil(math.log2(wd)))) if wd > 0 else 0
        qtensors.append(QTensor(
            name=name, frac=f, learnable=True, unit=unit, lr_shift=lr_shift, lr_c=unit * 2.0 ** (f + lr_shift) / sf,
            wd_mult=math.floor(wd * 2**wd_shift + 0.5) if wd > 0 else 0, wd_shift=wd_shift,
            wdl_c=opt.weight_decay / sf * 2.0**32,
            salt=(0x9E3779B1 * (k + 1) + 0x85EBCA77 * int(seed)) & 0xFFFFFFFF,
            feedback=name in restricted, size=ksize.get(name, 0)))
    # online updates: weight decay touches every weight; apply it every P steps (P times as strong,
    # P a power of two <= 64 keeping one application below 2^-8 of a weight), restarted each epoch
    period = 1
    while period < 64 and opt.lr * opt.weight_decay / sf * period * 2 <= 2.0**-8:
        period *= 2
    for name in g.tensor_slots():  # held for the tensor interface only, e.g. a pool's tensor gain (in P)
        if name not in frac_of:
            qtensors.append(QTensor(name, frac_for([name]), False, size=int(g.tensor(name).size)))
    qz = Quantization(update=update, input_frac=fx, input_bits=input_bits, readout_frac=readout_frac,
                      momentum_q15=math.floor(opt.momentum * 2**15 + 0.5),
                      wd_period=period if update == "online" else 1, populations=tuple(qpops),
                      qtensors=tuple(qtensors))
    out = g.copy()  # (the graph keeps its program as lowered: the normal form is re-derived by _structure)
    out.program = replace(float_program(g.program), quant=qz)
    out.program = replace(out.program, buffers=fixed_buffers(out.program, update, out))
    return out


def norm_of(qp: QPopulation, T: int) -> int:
    """The integer count that stands for rate 1: ``T`` (IF), the LIF weighted norm at ``2**cnt_frac``."""
    return qp.norm_q if qp.leak_q15 else T


def norm_b_of(qp: QPopulation, T_back: int) -> int:
    return qp.norm_b_q if qp.cleak_q15 else T_back


def readout_norm(prog: Program, qpops: Any) -> int:
    """The common count norm of the populations the readout reads (``_structure`` checks they share a leak)."""
    by = {qp.name: qp for qp in qpops}
    return max(norm_of(by[f.src], prog.T) for f in prog.readouts[0].feeds)


def integer_weights(g: Graph) -> dict[str, np.ndarray]:
    """Every tensor of a quantized graph as int16 values (int64 arrays): ``round(W * 2**frac)``, saturated."""
    q = quantization_of(g)
    frac = q.frac
    return {name: np.clip(np.floor(g.tensor(name).astype(np.float64) * 2.0 ** frac[name] + 0.5), -W_MAX, W_MAX
                          ).astype(np.int64) for name in g.tensor_slots()}


def threshold(p: PopulationStep, q: Quantization) -> int:
    """Forward threshold of population ``p`` in its membrane units (rate units times 2**F_p)."""
    return math.floor(p.vth / p.V * 2 ** q.pop_frac[p.name] + 0.5)


def couple_threshold(c: CoupleStep, q: Quantization) -> int:
    return math.floor(c.vth * 2 ** q.couple_frac[c.of] + 0.5)


def quantization_of(g: Graph) -> Quantization:
    q = getattr(g, "program", None) and g.program.quant
    if q is None:
        raise SpidecError("this graph has no fixed-point scales; run spidec.passes.quantize(g) first")
    return q


# ---------------------------------------------------------------------------------------------- helpers


def round_shift(v: Any, s: int) -> Any:
    if s <= 0:
        return v << (-s)
    return (v + (1 << (s - 1))) >> s


def hash32(x: np.ndarray) -> np.ndarray:
    """lowbias32 (Wellons), on uint64 arrays holding 32-bit values."""
    m = np.uint64(0xFFFFFFFF)
    x = x & m
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & m
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & m
    x ^= x >> np.uint64(16)
    return x


def stochastic_shift(v: np.ndarray, mult: int, shift: int, salt: int, w: np.ndarray, aux: np.ndarray) -> np.ndarray:
    """``(v * mult + r) >> shift``, ``r`` the top ``shift`` bits of hash(salt, index, w, aux)."""
    q = v.astype(np.int64) * np.int64(mult)
    if shift == 0:
        return q
    idx = np.arange(v.size, dtype=np.uint64).reshape(v.shape)
    m = np.uint64(0xFFFFFFFF)
    key = (idx * np.uint64(0x9E3779B1) + np.uint64(salt)) & m
    key ^= (aux.astype(np.int64).astype(np.uint64) * np.uint64(0x85EBCA77)) & m
    key ^= (w.astype(np.int64).astype(np.uint64) * np.uint64(0xC2B2AE3D)) & m
    r = (hash32(key) >> np.uint64(32 - shift)).astype(np.int64)
    return (q + r) >> np.int64(shift)


def lr_mult(lr: float, c: float) -> int:
    m = math.floor(float(np.float32(lr)) * c + 0.5)
    return int(min(max(m, 0), I32))


def exp_neg_q16(d16: np.ndarray) -> np.ndarray:
    """exp(-d) in Q16 for d >= 0 given in Q16 (int64 arrays)."""
    table = np.array(EXP2_TABLE, np.int64)
    y = (np.minimum(d16, 31 << Q) * LOG2E_Q16) >> Q
    n, f = y >> Q, y & 0xFFFF
    i = f >> 8
    e = table[i] + (((table[i + 1] - table[i]) * (f & 255)) >> 8)
    return np.where(n >= 31, 0, e >> np.minimum(n, 31))


# ---------------------------------------------------------------------------------------------- the model


class FixedModel:
    """Bit-exact numpy model of the fixed-point C runtime: integer weights (``.w``), momentum
    (``.m``), and after each sample the spike counts and ternary sums of every population."""

    def __init__(self, g: Graph) -> None:
        self.q = q = quantization_of(g)
        self.g = g
        self.prog = prog = _structure(g)
        self.T, self.T_back, self.sf = prog.T, prog.T_back, float(prog.sf)
        self.opt = prog.optimizer
        self.pops = prog.populations
        self.back = prog.couples
        self.S = {c.of: c.S for c in prog.couples}
        self.ro = prog.readouts[0]
        self.n_classes = self.ro.size
        self.w = integer_weights(g)
        self.m = {name: np.zeros_like(self.w[name]) for name in q.tensors}
        self.lr = float(self.opt.lr)
        self.wd_phase = 0
        self.syn_w = {ch.name: ch.weight for ch in prog.chains}
        self.syn_src = {ch.name: ch.src for ch in prog.chains}
        self.qp = {qp.name: qp for qp in q.populations}
        self.norm = {p.name: norm_of(self.qp[p.name], self.T) for p in self.pops}  # rate 1 as a count
        self.rnorm = readout_norm(prog, q.populations)
        # pooling synapses as dense integer matrices (P[o] at every tap; see "Average pooling")
        self.pmat = {ch.name: pool_matrix(g, ch, q.pop_frac[ch.dst]) for ch in prog.chains if ch.kernel == "pool"}
        self.channels = {p.bias: p.bias_channels for p in self.pops if p.bias and p.bias_channels}
        # conv / convT synapses: each (output, input) pair's kernel tap (see "Convolutions")
        self.taps = {ch.name: conv_taps(g, ch) for ch in prog.chains if ch.kernel in ("conv", "convt")}
        # avgpool2d |> dense / conv2d: windows, coefficients at 2^F_P, a conv's taps (see "Op chains")
        self.pchain = {ch.name: pool_chain(g, ch) for ch in prog.chains if ch.kernel in POOLED}
        self.cmat: dict[str, np.ndarray] = {}

    def _syn(self, syn: str) -> np.ndarray:
        """The integer matrix the stages read for synapse ``syn``: its (restricted) weight, a pool's, or a
        conv's dense equivalent (built from the restricted kernel in ``_restrict``)."""
        if syn in self.cmat:
            return self.cmat[syn]
        return self.pmat[syn] if syn in self.pmat else self.e[self.syn_w[syn]]

    def frac(self, name: str) -> int:
        return self.q.frac[name]

    def _restrict(self) -> None:
        """The weights the stages read (``.e``): a reparametrised feedback weight scaled to its
        bound ``R``, ``E = (W * k) >> 16`` with ``k = (R << 16) // isqrt(sum W**2)`` (``.k``; 2^16
        when within the bound), recomputed whenever the weights may have changed."""
        self.e, self.k = dict(self.w), {}
        if self.opt.feedback_norm_mode == "reparam":
            for name, qt in self.q.tensors.items():
                if qt.feedback:
                    k = restriction_factor(self.w[name], feedback_bound(self.prog, name, qt.frac))
                    self.k[name] = k
                    if k != 1 << 16:
                        self.e[name] = (self.w[name].astype(np.int64) * k) >> 16
        self.cmat = {syn: conv_matrix(t, self.e[self.syn_w[syn]]) for syn, t in self.taps.items()}
        for syn, (A, P, fp, taps) in self.pchain.items():  # M[j, i] = sum_o round_shift(W'[j, o] P[o], F_P)
            self.cmat[syn] = pool_chain_matrix(A, P, fp, taps, self.e[self.syn_w[syn]])

    def weights(self) -> dict[str, np.ndarray]:
        """The weights as floats (exact: int16 / 2**frac)."""
        return {n: (w / 2.0 ** self.frac(n)).astype(np.float32) for n, w in self.w.items()}

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        lim = 2 ** (self.q.input_bits - 1) - 1
        xq = np.floor(np.asarray(x, np.float32).astype(np.float64).ravel() * 2.0**self.q.input_frac + 0.5)
        return np.clip(xq, -lim, lim).astype(np.int64)

    # -- forward
    # (split into the host's part, the spiking loop and the readout so that another runner of the
    # spiking stages, e.g. the lava target's fixed_pt processes, reuses the rest verbatim)
    def forward(self, x: np.ndarray) -> np.ndarray:
        K = self.currents(x)
        return self.readout(self.spikes(K))

    def currents(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The sample's constant currents ``K_p`` (restricted weights, quantised input ``.xq``)."""
        q = self.q
        self._restrict()
        xq = self.quantize_input(x)
        self.xq = xq
        K = {}
        for p in self.pops:
            if p.bias and p.bias_channels:  # one bias per channel, broadcast over its positions
                k = np.repeat(self.w[p.bias], p.size // p.bias_channels)
            else:
                k = self.w[p.bias].ravel().copy() if p.bias else np.zeros(p.size, np.int64)
            acc = np.zeros(p.size, np.int64)  # every input feed summed, then rounded once (as the C runtime)
            for f in p.feeds:
                if f.kind == "input":  # a dense weight, or a conv's / pool's integer matrix
                    acc += self._syn(f.syn) @ xq
            k += round_shift(acc, q.input_frac)
            K[p.name] = np.clip(k, -q.k_max[p.name], q.k_max[p.name])
        return K

    def spikes(self, K: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The forward stage's ``T`` steps from the constant currents: the (leak-weighted) counts."""
        q, T = self.q, self.T
        u, cnt, spikes, prev = {}, {}, {}, {}
        for p in self.pops:
            name = p.name
            u[name] = np.zeros(p.size, np.int64)
            cnt[name] = np.zeros(p.size, np.int64)
            prev[name] = np.zeros(p.size, bool)
        for _t in range(T):
            for p in self.pops:
                name = p.name
                u[name] += K[name]
                for f in p.feeds:
                    if f.kind == "input":
                        continue
                    s = prev[f.src] if f.kind == "delayed" else spikes[f.src]
                    u[name] += self._syn(f.syn)[:, s].sum(axis=1)
                s = u[name] >= threshold(p, q)
                u[name] -= s.astype(np.int64) << q.pop_frac[name]
                lq = self.qp[name].leak_q15
                if lq:  # LIF: u <- leak (u - V s), cnt <- leak cnt + s (at 2^cnt_frac)
                    u[name] = leak_mul(u[name], lq)
                    cnt[name] = leak_mul(cnt[name], lq) + (s.astype(np.int64) << self.qp[name].cnt_frac)
                else:
                    cnt[name] += s
                spikes[name] = s
            for p in self.pops:
                prev[p.name] = spikes[p.name].copy()
        return cnt

    def readout(self, cnt: dict[str, np.ndarray]) -> np.ndarray:
        """Masks and integer logits (``.logits_q``) from the counts; returns the logits as floats."""
        self.cnt = cnt
        self.mask = {p: (c > 0) & (c < self.norm[p]) for p, c in cnt.items()}
        RN = self.rnorm
        L = np.zeros(self.n_classes, np.int64)
        if self.ro.bias is not None:
            L += RN * self.w[self.ro.bias]
        for f in self.ro.feeds:
            if f.syn in self.pchain:  # avgpool |> dense: round_shift(W_c @ pre', F_P), pre' the pooled counts
                A, P, fp, _ = self.pchain[f.syn]
                L += round_shift(self.e[self.syn_w[f.syn]] @ (P * (A @ cnt[f.src])), fp)
            else:
                L += self.e[self.syn_w[f.syn]] @ cnt[f.src]
        self.logits_q = L
        return L / (RN * 2.0**self.q.readout_frac)

    def softmax_q16(self, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d16 = ((L.max() - L) << Q) // (self.rnorm << self.q.readout_frac)
        e = exp_neg_q16(d16)
        return (e << Q) // e.sum(), e

    # -- one sample of training
    def learn(self, x: np.ndarray, y: int, batch: int) -> float:
        self.forward(x)
        p16, e = self.softmax_q16(self.logits_q)
        dl = p16.copy()
        dl[y] -= 1 << Q
        sfb = math.floor(self.sf * 2.0**Q / batch + 0.5)
        dls = round_shift(dl * sfb, Q)
        self.dls = dls
        self._backward(dls)
        self._accumulate(dls)
        return float(math.log(float(e.sum())) - math.log(float(e[y]))) if e[y] > 0 else 23.0

    def _backward(self, dls: np.ndarray) -> None:
        self.sb = self.ternary(self.injections(dls))
        self.post = {p: np.where(self.mask[p], s, 0) for p, s in self.sb.items()}

    def injections(self, dls: np.ndarray) -> dict[str, np.ndarray]:
        """Each couple's injected loss gradient ``g`` at its scale ``2**B_p``, clamped to ``g_max``."""
        q, g = self.q, {}
        for c in self.back:
            acc = np.zeros(c.size, np.int64)
            fpi = injection_frac(self.pchain, c.injections)
            for syn in c.injections:
                if syn in self.pchain:  # the adjoint through the pool: sum_{o holding i} P[o] (W_c^T dls)[o]
                    A, P, fp, _ = self.pchain[syn]
                    acc += (A.T @ (P * (self.e[self.syn_w[syn]].T @ dls))) << (fpi - fp)
                else:
                    acc += (self.e[self.syn_w[syn]].T @ dls) << fpi
            g[c.of] = np.clip(round_shift(acc, q.readout_frac + Q + fpi - q.couple_frac[c.of]), -q.g_max[c.of],
                              q.g_max[c.of])
        return g

    def ternary(self, g: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The backward stage's ``T_back`` steps (spikes gated by ``.mask``): the ternary sums."""
        q = self.q
        ub, sb, ts, pts = {}, {}, {}, {}
        for c in self.back:
            name = c.of  # state by population name
            ub[name] = np.zeros(c.size, np.int64)
            sb[name] = np.zeros(c.size, np.int64)
            pts[name] = np.zeros(c.size, np.int64)
        for _t in range(self.T_back):
            for c in self.back:
                name = c.of
                bp = q.couple_frac[name]
                ub[name] += g[name]
                for f in c.feeds:
                    v = pts[f.gate] if f.delayed else ts[f.gate]
                    sh = bp - q.pop_frac[f.gate] + round(math.log2(self.S[f.gate]))
                    ub[name] += (v @ self._syn(f.syn)) << sh
                sh = round(math.log2(c.S))
                th = couple_threshold(c, q)
                v = (ub[name] >= th).astype(np.int64) - (ub[name] <= -th).astype(np.int64)
                ub[name] -= v << (bp + sh)
                clq = self.qp[name].cleak_q15
                if clq:  # leaky couple: ub <- cleak (ub - v S), sb <- cleak sb + v (at 2^sb_frac)
                    ub[name] = leak_mul(ub[name], clq)
                    sb[name] = leak_mul(sb[name], clq) + (v << self.qp[name].sb_frac)
                else:
                    sb[name] += v
                ts[name] = np.where(self.mask[name], v, 0)
            for c in self.back:
                pts[c.of] = ts[c.of].copy()
        return sb

    def _grads(self, dls: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for r in self.prog.rules:
            if isinstance(r, WeightRule) and r.syn in self.pchain:  # the adjoint on the pooled pre, at 2^F_P
                A, P, _fp, taps = self.pchain[r.syn]
                pre = P * (A @ self.cnt[r.pre])
                post = self.post[r.gate]
                G = np.outer(post, pre) if taps is None else conv_grad(taps, post, pre, self.w[r.tensor].size)
                out[r.tensor] = G.reshape(self.w[r.tensor].shape)
            elif isinstance(r, WeightRule) and r.syn in self.taps:  # a conv kernel: the taps' correlation sums
                pre = self.cnt[r.pre] if r.pre in self.cnt else self.xq  # (from the input: its x_q)
                out[r.tensor] = conv_grad(self.taps[r.syn], self.post[r.gate], pre,
                                          self.w[r.tensor].size).reshape(self.w[r.tensor].shape)
            elif isinstance(r, WeightRule):
                pre = self.cnt[r.pre] if r.pre in self.cnt else self.xq
                out[r.tensor] = np.outer(self.post[r.gate], pre)
            elif isinstance(r, BiasRule) and r.tensor in self.channels:  # per channel: the channel's sum
                out[r.tensor] = self.post[r.gate].reshape(self.channels[r.tensor], -1).sum(axis=1)
            elif isinstance(r, BiasRule):
                out[r.tensor] = self.post[r.gate].copy()
            elif isinstance(r, ReadoutWeightRule) and r.syn in self.pchain:  # dls (x) pre', at 2^F_P
                A, P, _fp, _ = self.pchain[r.syn]
                out[r.tensor] = np.outer(dls, P * (A @ self.cnt[r.pre]))
            elif isinstance(r, ReadoutWeightRule):
                out[r.tensor] = np.outer(dls, self.cnt[r.pre])
            else:
                out[r.tensor] = dls.copy()
        return {n: G.reshape(self.w[n].shape) for n, G in out.items()}  # (a full bias of a [C, H, W] population)

    def _accumulate(self, dls: np.ndarray) -> None:
        grads = self._grads(dls)
        for name, G in grads.items():
            if self.k.get(name, 1 << 16) != 1 << 16:  # a reparametrised weight: its gradient times k / 2^16
                G = round_shift(G * self.k[name], 16)
            if self.q.update == "momentum":
                self.m[name] = np.clip(self.m[name] + G, -I32, I32)
            else:
                qt = self.q.tensors[name]
                d = stochastic_shift(G, lr_mult(self.lr, qt.lr_c), qt.lr_shift, qt.salt, self.w[name], G)
                d = np.where(G != 0, d, 0)  # the C runtime skips untouched rows
                self.w[name] = np.clip(self.w[name] - d, -W_MAX, W_MAX)

    def set_lr(self, lr: float) -> None:
        self.lr = lr

    def begin_epoch(self) -> None:
        """Restart the weight-decay period (online updates), as spide_begin_epoch does."""
        self.wd_phase = 0

    def step(self, lr: float | None = None) -> None:
        q = self.q
        lr = self.lr if lr is None else lr
        self.wd_phase += 1
        decay = self.wd_phase >= q.wd_period
        if decay:
            self.wd_phase = 0
        for name, qt in q.tensors.items():
            w = self.w[name]
            if q.update == "momentum":
                m = self.m[name]
                if qt.wd_mult:
                    m = np.clip(m + round_shift(w * qt.wd_mult, qt.wd_shift), -I32, I32)
                d = stochastic_shift(m, lr_mult(lr, qt.lr_c), qt.lr_shift, qt.salt, w, m)
                w = np.clip(w - d, -W_MAX, W_MAX)
                self.m[name] = round_shift(m * q.momentum_q15, 15)
            elif qt.wdl_c > 0 and decay:
                d = stochastic_shift(w, lr_mult(lr, qt.wdl_c * q.wd_period), 32, qt.salt ^ 0x5BD1E995, w,
                                     np.zeros_like(w))
                w = np.clip(w - d, -W_MAX, W_MAX)
            if qt.feedback and self.opt.feedback_norm_mode == "project":
                w = project(w, feedback_bound(self.prog, name, qt.frac))
            self.w[name] = w

    def train_epoch(self, x: np.ndarray, y: np.ndarray, order: np.ndarray, batch: int, lr: float) -> tuple[float, int]:
        self.set_lr(lr)
        self.begin_epoch()
        loss, ok = 0.0, 0
        for start in range(0, len(order), batch):
            idx = order[start: start + batch]
            for i in idx:
                loss += self.learn(x[i], int(y[i]), len(idx))
                ok += int(np.argmax(self.logits_q) == y[i])
            self.step(lr)
        return loss, ok

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> float:
        ok = 0
        for k in range(len(y)):
            self.forward(x[k])
            ok += int(np.argmax(self.logits_q) == y[k])
        return ok / max(1, len(y))


def injection_frac(pchain: dict[str, Any], injections: Any) -> int:
    """The fraction a couple's injection sums at: the largest ``F_P`` of its ``avgpool2d |> dense`` readout
    synapses (0 when it has none: then every injection is the plain ``W_c^T dls``)."""
    return max([pchain[s][2] for s in injections if s in pchain] + [0])


def feedback_bound(prog: Program, tensor: str, frac: int) -> int:
    """The Frobenius bound of feedback weight ``tensor`` in integers at scale 2^frac."""
    return math.floor(prog.restricted(prog.optimizer.feedback_norm_mode)[tensor] * 2**frac + 0.5)


def restriction_factor(w: np.ndarray, R: int) -> int:
    """Q16 factor bringing integer weights ``w`` to Frobenius norm <= R: 2^16 when they are within."""
    s = int((w.astype(np.int64) ** 2).sum())
    return (R << 16) // math.isqrt(s) if s > R * R else 1 << 16


def project(w: np.ndarray, R: int) -> np.ndarray:
    k = restriction_factor(w, R)
    return w if k == 1 << 16 else (w * k) >> 16


__all__ = [
    "EXP2_TABLE",
    "FixedModel",
    "QTensor",
    "Quantization",
    "quantization_of",
    "quantize",
]
