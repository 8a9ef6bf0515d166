"""Training-time augmentation and input normalisation, the same in numpy and in C.

``--augment crop4,flip`` is torchvision's ``RandomCrop(H, padding=4)`` followed by
``RandomHorizontalFlip()``; ``--normalize MEAN;STD`` is ``Normalize(mean, std)``. The pipeline order is
SPIDE's (cifar_alexnetf.py: RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize):
the crop pads with zeros in [0, 1] pixel space, the flip follows, and normalisation comes last, so the
padded border becomes (0 - mean) / std like any black pixel. The authors' CIFAR10-DVS training
(Padding(4), RandomCrop(48), no flip, no Normalize) is ``--augment crop4`` on [T, 2, 48, 48] samples.

The random choices are stateless: they depend only on (seed, epoch, index of the sample in the data
set), never on the batch order or on earlier draws, so a resumed run and the C host trainer
(``runtime/include/spide_augment.h``) draw exactly the same crops and flips. With ``M = 2**64`` and all
arithmetic modulo ``M`` on unsigned 64-bit integers::

    mix64(z) = z' ^ (z' >> 31)      where  z1 = (z + 0x9E3779B97F4A7C15) mod M
                                           z2 = ((z1 ^ (z1 >> 30)) * 0xBF58476D1CE4E5B9) mod M
                                           z' = ((z2 ^ (z2 >> 27)) * 0x94D049BB133111EB) mod M
    hash64(seed, epoch, index) = mix64(mix64(seed) ^ ((epoch << 32) | index))

(``mix64`` is one step of splitmix64; seed is uint64, epoch and index are uint32.) From h = hash64:

    n    = 2 * pad + 1                      (pad 0, i.e. no crop: n = 1, offsets 0)
    dy   = (h & 0xFFFFFF) % n               bits 0..23
    dx   = ((h >> 24) & 0xFFFFFF) % n       bits 24..47
    flip = h >> 63                          bit 63, used only when flipping is on

(pad is at most 255. The bias of ``% n`` is negligible: for pad 4, 2**24 mod 9 = 1, so offset 0 has
probability 1/9 + 8/(9 * 2**24) and the other eight 1/9 - 1/(9 * 2**24).) The transform of a sample
[C, H, W] (or [T, C, H, W], the same window and flip for every frame) is::

    out[c, y, x] = in[c, y + dy - pad, x' + dx - pad], 0 outside the image,
                   with x' = W - 1 - x if flip else x

i.e. zero-pad by ``pad``, take the H x W window at (dy, dx), then mirror it horizontally. Then
``out[c] = (out[c] - mean[c]) / std[c]`` in float32 (one subtraction and one division, each rounded
to float32; mean and std are the float32 nearest to the given decimals, as (float)strtod gives), one
(mean, std) pair for all channels or one per channel (channel axis: third from last). Samples are
converted to float32 first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import SpidecError
from .masks import mix64

MASK64 = (1 << 64) - 1
MAX_PAD = 255


@dataclass(frozen=True)
class Augment:
    """Random crop with zero padding ``pad`` (0: none) and random horizontal flip."""

    pad: int = 0
    flip: bool = False

    @property
    def enabled(self) -> bool:
        return self.pad > 0 or self.flip

    @property
    def spec(self) -> str:
        """The canonical ``--augment`` text: ``crop4,flip``, ``crop2``, ``flip`` or ``none``."""
        parts = ([f"crop{self.pad}"] if self.pad else []) + (["flip"] if self.flip else [])
        return ",".join(parts) or "none"

    def __str__(self) -> str:
        return self.spec


Normalize = tuple[tuple[float, ...], tuple[float, ...]]


def parse_augment(spec: str | None) -> Augment:
    """``'crop4,flip'``, ``'crop2'``, ``'flip'``, ``''`` or ``'none'`` (no augmentation)."""
    text = (spec or "").strip()
    if text.lower() in ("", "none"):
        return Augment()
    pad, flip, seen = 0, False, set()
    for raw in text.split(","):
        part = raw.strip().lower()
        kind = "crop" if part.startswith("crop") else part
        if kind in seen:
            raise SpidecError(f"--augment {spec!r}: '{kind}' is given twice")
        seen.add(kind)
        if part == "flip":
            flip = True
        elif kind == "crop":
            digits = part[4:]
            if not digits.isdigit() or not 1 <= int(digits) <= MAX_PAD:
                raise SpidecError(f"--augment {spec!r}: '{raw.strip()}' needs a padding of 1..{MAX_PAD} pixels, "
                                  "e.g. crop4")
            pad = int(digits)
        else:
            raise SpidecError(f"--augment {spec!r}: unknown augmentation '{raw.strip()}' "
                              "(known: cropN (random crop with N pixels of zero padding), flip, none)")
    return Augment(pad, flip)


_PRESETS = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}


def parse_normalize(spec: str) -> Normalize:
    """``'MEAN;STD'``, each a comma-separated list with one value per channel
    (``'0.4914,0.4822,0.4465;0.247,0.243,0.261'``) or one value for all channels (``'0.1307;0.3081'``);
    or ``cifar10`` / ``cifar100`` for the SPIDE scripts' CIFAR statistics. std must be finite and > 0."""
    text = spec.strip()
    if text.lower() in _PRESETS:
        from . import data

        prefix = _PRESETS[text.lower()]
        return tuple(getattr(data, f"{prefix}_MEAN")), tuple(getattr(data, f"{prefix}_STD"))
    halves = text.split(";")
    if len(halves) != 2:
        raise SpidecError(f"--normalize {spec!r}: expected MEAN;STD, e.g. '0.4914,0.4822,0.4465;0.2023,0.1994,0.2010' "
                          "or '0.1307;0.3081'")

    def values(half: str, what: str) -> tuple[float, ...]:
        try:
            out = tuple(float(v) for v in half.split(","))
        except ValueError:
            raise SpidecError(f"--normalize {spec!r}: the {what} values {half.strip()!r} are not numbers") from None
        if not all(math.isfinite(v) for v in out):
            raise SpidecError(f"--normalize {spec!r}: the {what} values must be finite")
        return out

    mean, std = values(halves[0], "mean"), values(halves[1], "std")
    if len(mean) != len(std):
        raise SpidecError(f"--normalize {spec!r}: {len(mean)} mean values but {len(std)} std values")
    if not all(s > 0 for s in std):
        raise SpidecError(f"--normalize {spec!r}: every std must be > 0")
    with np.errstate(over="ignore"):
        m32, s32 = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    if not (np.all(np.isfinite(m32)) and np.all(np.isfinite(s32)) and np.all(s32 > 0)):
        raise SpidecError(f"--normalize {spec!r}: the values must fit float32 (std not rounding to 0)")
    return mean, std


def format_normalize(normalize: Normalize | None) -> str:
    """The ``--normalize`` text of a (mean, std) pair (``none`` for None); parse_normalize reads it back."""
    if normalize is None:
        return "none"
    return ";".join(",".join(repr(float(v)) for v in part) for part in normalize)


# ------------------------------------------------------------------ the stateless random choices
def _mix64(z: int) -> int:
    """One splitmix64 step of a Python integer (spidec.masks.mix64, the one implementation)."""
    return int(mix64(np.uint64(z)))


def _check_key(seed: int, epoch: int, index: int) -> None:
    if not 0 <= seed <= MASK64:
        raise SpidecError(f"augmentation seed {seed} is outside 0..2**64-1")
    if not 0 <= epoch < 1 << 32 or not 0 <= index < 1 << 32:
        raise SpidecError(f"augmentation epoch {epoch} and sample index {index} must lie in 0..2**32-1")


def hash64(seed: int, epoch: int, index: int) -> int:
    """``mix64(mix64(seed) ^ ((epoch << 32) | index))``, see the module docstring."""
    _check_key(seed, epoch, index)
    return _mix64(_mix64(seed) ^ ((epoch << 32) | index))


def _split(h: int, pad: int) -> tuple[int, int, bool]:
    n = 2 * pad + 1
    return (h & 0xFFFFFF) % n, ((h >> 24) & 0xFFFFFF) % n, bool(h >> 63)


def choices(seed: int, epoch: int, index: int, pad: int = 4) -> tuple[int, int, bool]:
    """(dy, dx, flip) for sample ``index`` in ``epoch``: offsets in 0..2*pad into the zero-padded sample,
    and the flip bit (applied only when the augmentation flips)."""
    if not 0 <= pad <= MAX_PAD:
        raise SpidecError(f"crop padding {pad} is outside 0..{MAX_PAD}")
    return _split(hash64(seed, epoch, index), pad)


def hash64_array(seed: int, epoch: int, indices: np.ndarray | Sequence[int]) -> np.ndarray:
    """:func:`hash64` for many sample indices at once (uint64 array)."""
    idx = np.asarray(indices)
    if idx.size:
        if idx.dtype.kind not in "iu":
            raise SpidecError(f"sample indices must be integers, got {idx.dtype}")
        lo, hi = int(idx.min()), int(idx.max())
        _check_key(seed, epoch, lo)
        _check_key(seed, epoch, hi)
    key = np.uint64(epoch << 32) | idx.astype(np.uint64)
    return mix64(np.uint64(_mix64(seed)) ^ key)


def choices_array(seed: int, epoch: int, indices: np.ndarray | Sequence[int],
                  pad: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`choices` for many sample indices: (dy, dx, flip) arrays."""
    if not 0 <= pad <= MAX_PAD:
        raise SpidecError(f"crop padding {pad} is outside 0..{MAX_PAD}")
    h = hash64_array(seed, epoch, indices)
    n = np.uint64(2 * pad + 1)
    mask = np.uint64(0xFFFFFF)
    dy = ((h & mask) % n).astype(np.int64)
    dx = (((h >> np.uint64(24)) & mask) % n).astype(np.int64)
    return dy, dx, (h >> np.uint64(63)).astype(bool)


# ------------------------------------------------------------------ the transform
def _normalize_arrays(normalize: Normalize, channels: int) -> tuple[np.ndarray, np.ndarray]:
    mean, std = (np.asarray(v, dtype=np.float64) for v in normalize)
    if mean.shape != std.shape or mean.ndim != 1 or len(mean) not in (1, channels):
        raise SpidecError(f"--normalize gives {len(mean)} mean and {len(std)} std values; the samples have "
                          f"{channels} channels (give one value or one per channel)")
    if not np.all(std > 0):
        raise SpidecError("--normalize: every std must be > 0")
    # float32 nearest to each value, shaped to broadcast over [.., C, H, W]
    return (np.broadcast_to(mean, (channels,)).astype(np.float32).reshape(channels, 1, 1),
            np.broadcast_to(std, (channels,)).astype(np.float32).reshape(channels, 1, 1))


def apply(x_batch: np.ndarray, indices: np.ndarray | Sequence[int], epoch: int, seed: int,
          augment: Augment | None = None, normalize: Normalize | None = None) -> np.ndarray:
    """Augment then normalise a batch of samples [B, C, H, W] or [B, T, C, H, W] (float32 out).

    ``indices`` are the samples' indices in the data set (what the random choice depends on, with
    ``seed`` and ``epoch``); ``augment`` None or empty leaves the samples in place (test-time use with
    only ``normalize``)."""
    x = np.asarray(x_batch, dtype=np.float32)
    if x.ndim not in (4, 5):
        raise SpidecError(f"augmentation needs a batch of [C, H, W] or [T, C, H, W] samples, got shape {list(x.shape)}")
    idx = np.asarray(indices)
    if idx.shape != (x.shape[0],):
        raise SpidecError(f"{x.shape[0]} samples but {idx.size} sample indices")
    augment = augment or Augment()
    if augment.enabled:
        dy, dx, flip = choices_array(seed, epoch, idx, augment.pad)
        p = augment.pad
        h, w = x.shape[-2:]
        padded = np.zeros(x.shape[:-2] + (h + 2 * p, w + 2 * p), dtype=np.float32)
        padded[..., p:p + h, p:p + w] = x
        out = np.empty_like(x)
        for b in range(x.shape[0]):
            win = padded[b, ..., dy[b]:dy[b] + h, dx[b]:dx[b] + w]
            out[b] = win[..., ::-1] if augment.flip and flip[b] else win
        x = out
    if normalize is not None:
        mean, std = _normalize_arrays(normalize, x.shape[-3])
        x = (x - mean) / std
    elif x is x_batch:  # never hand back the caller's own array
        x = x.copy()
    return x.astype(np.float32, copy=False)
