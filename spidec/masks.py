"""Variational dropout masks, drawn identically by every backend without a random state.

A mask is a pure function of the sample's key, the synapse and the element, so a resumed run draws
the same masks, the sim program and the C runtime draw the same masks for the same sample, and no
generator state needs checkpointing:

    mix64(z)        one splitmix64 step: z += 0x9E3779B97F4A7C15; z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9;
                    z = (z ^ z >> 27) * 0x94D049BB133111EB; z ^ z >> 31   (all mod 2^64)
    key(seed, epoch, index) = mix64(mix64(seed ^ DROPOUT_SALT) ^ (epoch << 32 | index))
    keep(key, synapse, j)   = mix64(key ^ mix64(synapse << 32 | j)) >= floor(p * 2^64)
    mask = keep / (1 - p)   (the factor rounded to float32)

``index`` is the sample's position in the training set, ``synapse`` the synapse's position in the
step program's chains, ``j`` the element of the synapse's output (row-major). The functions below
use numpy only: the sim backend copies their source into the programs it emits, and the C runtime
implements the same formulas (spide_sample_key in runtime/include/spide.h, on spide_augment.h's hash).
"""

from __future__ import annotations

from typing import Any

import numpy as np

DROPOUT_SALT = 0xD1B54A32D192ED03  # keeps the masks apart from the augmentation's draws of the same sample


def mix64(z: np.ndarray) -> np.ndarray:
    """One splitmix64 step on uint64 values (wrapping arithmetic)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_keys(seed: int, epoch: int, index: np.ndarray) -> np.ndarray:
    """The dropout key of each training sample (``index``: positions in the training set)."""
    index = np.asarray(index, dtype=np.uint64) & np.uint64(0xFFFFFFFF)
    base = mix64(np.uint64((int(seed) ^ DROPOUT_SALT) & 0xFFFFFFFFFFFFFFFF))
    return mix64(base ^ ((np.uint64(int(epoch) & 0xFFFFFFFF) << np.uint64(32)) | index))


def dropout_mask(keys: np.ndarray, synapse: int, n: int, threshold: int, scale: float) -> np.ndarray:
    """``[len(keys), n]`` float32 mask of synapse number ``synapse``: ``scale`` where kept, else 0."""
    j = np.arange(n, dtype=np.uint64)
    site = mix64((np.uint64(synapse) << np.uint64(32)) | j)
    keep = mix64(np.asarray(keys, dtype=np.uint64)[:, None] ^ site[None, :]) >= np.uint64(threshold)
    return keep.astype(np.float32) * np.float32(scale)


def dropout_threshold(p: float) -> int:
    """``floor(p * 2^64)``: a hash at or above it keeps the element (probability 1 - p)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability {p} outside [0, 1)")
    return min(int(p * 2.0**64), 2**64 - 1)


def dropout_sites(chains: Any) -> list[tuple[int, Any, int, float]]:
    """The dropout synapses of a step program's ``chains``, as every backend numbers them: (its
    number, the ``synapse`` of :func:`dropout_mask`; the chain; the keep threshold; ``1 / (1 - p)``
    rounded to float32)."""
    return [(k, ch, dropout_threshold(ch.dropout), float(np.float32(1.0 / (1.0 - ch.dropout))))
            for k, ch in enumerate(chains) if ch.dropout > 0]
