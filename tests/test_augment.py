"""spidec.augment and runtime/include/spide_augment.h: the same stateless choices, crops, flips and
normalisation, bit for bit."""

from __future__ import annotations

import shutil
import struct
import subprocess

import numpy as np
import pytest
from conftest import ROOT

from spidec.augment import (
    Augment,
    apply,
    choices,
    choices_array,
    format_normalize,
    hash64,
    hash64_array,
    parse_augment,
    parse_normalize,
)
from spidec.data import CIFAR10_MEAN, CIFAR10_STD
from spidec.errors import SpidecError

INCLUDE = ROOT / "runtime" / "include"

C_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include "spide_augment.h"

/* argv: in out frames channels h w seed epoch pad flip_on n_stats [mean_bits... std_bits...]
 * in: uint32 n, then n uint32 indices, then n samples of floats. out: n samples, then n uint64 hashes. */
int main(int argc, char **argv) {
    uint32_t frames = (uint32_t)strtoul(argv[3], 0, 10), ch = (uint32_t)strtoul(argv[4], 0, 10);
    uint32_t h = (uint32_t)strtoul(argv[5], 0, 10), w = (uint32_t)strtoul(argv[6], 0, 10);
    uint64_t seed = strtoull(argv[7], 0, 10);
    uint32_t epoch = (uint32_t)strtoul(argv[8], 0, 10), pad = (uint32_t)strtoul(argv[9], 0, 10);
    int flip_on = atoi(argv[10]);
    uint32_t n_stats = (uint32_t)strtoul(argv[11], 0, 10), n, i;
    float mean[16], std[16];
    size_t size = (size_t)frames * ch * h * w;
    FILE *f;
    uint32_t *idx;
    float *in, *out;
    uint64_t *hashes;
    if (argc != 12 + 2 * (int)n_stats) return 2;
    for (i = 0; i < n_stats; i++) {
        uint32_t mb = (uint32_t)strtoul(argv[12 + i], 0, 16), sb = (uint32_t)strtoul(argv[12 + n_stats + i], 0, 16);
        memcpy(&mean[i], &mb, 4);
        memcpy(&std[i], &sb, 4);
    }
    f = fopen(argv[1], "rb");
    if (!f || fread(&n, 4, 1, f) != 1) return 3;
    idx = malloc(4 * (size_t)n);
    in = malloc(4 * size * n);
    out = malloc(4 * size * n);
    hashes = malloc(8 * (size_t)n);
    if (fread(idx, 4, n, f) != n || fread(in, 4, size * n, f) != size * n) return 4;
    fclose(f);
    for (i = 0; i < n; i++) {
        spide_aug_sample(in + size * i, out + size * i, frames, ch, h, w, seed, epoch, idx[i], pad, flip_on,
                         n_stats ? mean : NULL, n_stats ? std : NULL, n_stats);
        hashes[i] = spide_aug_hash(seed, epoch, idx[i]);
    }
    f = fopen(argv[2], "wb");
    if (!f || fwrite(out, 4, size * n, f) != size * n || fwrite(hashes, 8, n, f) != n) return 5;
    fclose(f);
    return 0;
}
"""


@pytest.fixture(scope="module")
def c_augment(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("augment_c")
    (d / "t.c").write_text(C_PROGRAM)
    exe = d / "t"
    subprocess.run([cc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-ffp-contract=off",
                    f"-I{INCLUDE}", str(d / "t.c"), "-o", str(exe)], check=True, capture_output=True, text=True)

    def run(x: np.ndarray, indices: np.ndarray, epoch: int, seed: int, augment: Augment,
            normalize: tuple[tuple[float, ...], tuple[float, ...]] | None) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(x, dtype="<f4")
        frames, (ch, h, w) = (x.shape[1] if x.ndim == 5 else 1), x.shape[-3:]
        (d / "in.bin").write_bytes(struct.pack("<I", len(x)) + indices.astype("<u4").tobytes() + x.tobytes())
        stats: list[str] = []
        if normalize is not None:
            stats = [f"{v:08x}" for part in normalize for v in np.asarray(part, dtype="<f4").view("<u4")]
        args = [str(exe), str(d / "in.bin"), str(d / "out.bin"), str(frames), str(ch), str(h), str(w), str(seed),
                str(epoch), str(augment.pad), str(int(augment.flip)), str(len(stats) // 2), *stats]
        subprocess.run(args, check=True)
        raw = (d / "out.bin").read_bytes()
        out = np.frombuffer(raw, "<f4", x.size).reshape(x.shape)
        return out, np.frombuffer(raw, "<u8", len(x), 4 * x.size)

    return run


CASES = [
    # (sample shape, augment, normalize, seed, epoch)
    ((3, 32, 32), "crop4,flip", (CIFAR10_MEAN, CIFAR10_STD), 0, 0),
    ((3, 32, 32), "crop4,flip", (CIFAR10_MEAN, CIFAR10_STD), 2**64 - 1, 2**32 - 1),
    ((3, 2, 12, 10), "crop2", ((0.2728,), (0.2225,)), 1234567890123, 7),
    ((1, 5, 7), "flip", None, 42, 3),
    ((2, 6, 6), "none", ((0.5, -0.25), (0.3, 2.0)), 9, 1),
    ((1, 4, 4), "crop3", ((0.1307,), (0.3081,)), 2**63, 2**31),
]


@pytest.mark.parametrize("shape, spec, normalize, seed, epoch", CASES)
def test_c_and_numpy_agree_bit_for_bit(c_augment, shape, spec, normalize, seed, epoch):
    rng = np.random.default_rng(seed % 1000 + epoch % 1000)
    n = 12
    x = (rng.standard_normal((n, *shape)) * 3).astype(np.float32)
    indices = np.concatenate([[0, 2**32 - 1], rng.integers(0, 2**32, size=n - 2)]).astype(np.uint32)
    augment = parse_augment(spec)
    ours = apply(x, indices, epoch, seed, augment, normalize)
    theirs, hashes = c_augment(x, indices, epoch, seed, augment, normalize)
    assert ours.dtype == np.float32 and ours.shape == x.shape
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))
    assert [int(h) for h in hashes] == [hash64(seed, epoch, int(i)) for i in indices]
    np.testing.assert_array_equal(hash64_array(seed, epoch, indices), hashes)


def _reference(x: np.ndarray, dy: int, dx: int, flip: bool, pad: int) -> np.ndarray:
    """The module docstring's formula, one value at a time."""
    out = np.zeros_like(x)
    h, w = x.shape[-2:]
    for y in range(h):
        for xo in range(w):
            sy, sx = y + dy - pad, (w - 1 - xo if flip else xo) + dx - pad
            if 0 <= sy < h and 0 <= sx < w:
                out[..., y, xo] = x[..., sy, sx]
    return out


def test_transform_matches_the_documented_formula():
    rng = np.random.default_rng(1)
    x = rng.random((8, 2, 3, 6, 5)).astype(np.float32)  # [B, T, C, H, W]
    indices = rng.integers(0, 1000, size=8)
    aug = Augment(pad=3, flip=True)
    out = apply(x, indices, 5, 77, aug)
    for b, i in enumerate(indices):
        dy, dx, flip = choices(77, 5, int(i), 3)
        np.testing.assert_array_equal(out[b], _reference(x[b], dy, dx, flip, 3))


def test_padded_border_is_zero_where_expected():
    x = np.ones((200, 1, 8, 8), dtype=np.float32)
    indices = np.arange(200)
    out = apply(x, indices, 0, 3, Augment(pad=4, flip=False))
    dy, dx, _ = choices_array(3, 0, indices, 4)
    for b in range(200):
        rows = np.arange(8) + dy[b] - 4
        cols = np.arange(8) + dx[b] - 4
        inside = ((rows >= 0) & (rows < 8))[:, None] & ((cols >= 0) & (cols < 8))[None, :]
        np.testing.assert_array_equal(out[b, 0], inside.astype(np.float32))
    # a window at the far top-right corner: 4 zero rows on top, 4 zero columns on the right
    dy, dx, _ = choices_array(3, 0, np.arange(10_000), 4)
    i = int(np.flatnonzero((dy == 0) & (dx == 8))[0])
    corner = apply(x[:1], [i], 0, 3, Augment(pad=4))[0, 0]
    assert np.all(corner[:4] == 0) and np.all(corner[:, 4:] == 0) and np.all(corner[4:, :4] == 1)
    # the padded zeros are normalised after the crop, as in torchvision's RandomCrop -> ToTensor -> Normalize
    norm = apply(x[:1], [i], 0, 3, Augment(pad=4), ((0.5,), (0.25,)))
    assert norm[0, 0, 0, 0] == np.float32(-2.0) and norm[0, 0, 7, 0] == np.float32(2.0)


def test_flip_mirrors_each_row():
    x = np.arange(4 * 2 * 3 * 5, dtype=np.float32).reshape(4, 2, 3, 5)
    indices = np.arange(4)
    out = apply(x, indices, 0, 11, Augment(flip=True))
    _, _, flip = choices_array(11, 0, indices, 0)
    for b in range(4):
        np.testing.assert_array_equal(out[b], x[b, :, :, ::-1] if flip[b] else x[b])
    assert apply(x, indices, 0, 11, Augment()) is not x  # no augmentation: a copy, never the caller's array


def test_choices_are_roughly_uniform():
    dy, dx, flip = choices_array(2024, 3, np.arange(90_000), 4)
    for v in (dy, dx):
        counts = np.bincount(v, minlength=9)
        assert len(counts) == 9 and np.all(np.abs(counts / 10_000 - 1) < 0.05)
    assert np.bincount(dy * 9 + dx, minlength=81).min() > 0  # every window occurs
    assert abs(flip.mean() - 0.5) < 0.01
    assert abs(np.corrcoef(dy, dx)[0, 1]) < 0.02 and abs(np.corrcoef(dy, flip)[0, 1]) < 0.02


def test_choices_depend_only_on_seed_epoch_index():
    rng = np.random.default_rng(0)
    x = rng.random((6, 3, 8, 8)).astype(np.float32)
    indices = np.array([5, 9, 2, 100, 7, 2**32 - 1], dtype=np.uint32)
    aug = parse_augment("crop4,flip")
    whole = apply(x, indices, 3, 99, aug)
    perm = np.array([3, 0, 5, 1, 4, 2])
    np.testing.assert_array_equal(apply(x[perm], indices[perm], 3, 99, aug), whole[perm])
    for b in range(6):  # one at a time, any batch
        np.testing.assert_array_equal(apply(x[b:b + 1], indices[b:b + 1], 3, 99, aug)[0], whole[b])
    for b, i in enumerate(indices):
        dy, dx, flip = choices_array(99, 3, indices, 4)
        assert choices(99, 3, int(i), 4) == (int(dy[b]), int(dx[b]), bool(flip[b]))
    many = np.arange(1000)
    base = choices_array(99, 3, many, 4)
    for other in (choices_array(99, 4, many, 4), choices_array(100, 3, many, 4)):  # another epoch or seed
        same = (base[0] == other[0]) & (base[1] == other[1]) & (base[2] == other[2])
        assert same.mean() < 0.05
    assert hash64(1, 0, 0) != hash64(0, 0, 1)  # the seed is mixed, not just xored into the key


def test_hash_known_values():
    # pinned: a change of the hash breaks resumed runs and the C trainer's agreement
    from spidec.augment import _mix64

    assert _mix64(0) == 0xE220A8397B1DCDAF  # splitmix64's first output from state 0, a published value
    assert hash64(0, 0, 0) == 0xA706DD2F4D197E6F
    assert hash64(2**64 - 1, 2**32 - 1, 2**32 - 1) == 0x6309143E67A47936
    h = hash64(1, 2, 3)
    assert choices(1, 2, 3, 4) == ((h & 0xFFFFFF) % 9, ((h >> 24) & 0xFFFFFF) % 9, bool(h >> 63))
    assert choices(1, 2, 3, 0)[:2] == (0, 0)


def test_parse_augment():
    assert parse_augment("crop4,flip") == Augment(4, True)
    assert parse_augment(" flip , crop2 ") == Augment(2, True)
    assert parse_augment("crop2") == Augment(2, False) and parse_augment("flip") == Augment(0, True)
    for empty in ("", "none", "None", None):
        assert parse_augment(empty) == Augment() and not parse_augment(empty).enabled
    assert parse_augment("crop4,flip").spec == "crop4,flip" and str(Augment()) == "none"
    for bad, words in (("rotate", "unknown augmentation 'rotate'"), ("crop", "padding"), ("cropx", "padding"),
                       ("crop0", "padding"), ("crop256", "padding"), ("flip,flip", "twice"),
                       ("crop2,crop4", "twice"), ("none,flip", "unknown")):
        with pytest.raises(SpidecError, match=words):
            parse_augment(bad)


def test_parse_normalize():
    assert parse_normalize("0.4914,0.4822,0.4465;0.247,0.243,0.261") == ((0.4914, 0.4822, 0.4465),
                                                                          (0.247, 0.243, 0.261))
    assert parse_normalize("0.1307;0.3081") == ((0.1307,), (0.3081,))
    assert parse_normalize("cifar10") == (CIFAR10_MEAN, CIFAR10_STD)
    pair = ((0.1, 0.2), (0.3, 0.4))
    assert parse_normalize(format_normalize(pair)) == pair
    for bad, words in (("0.5", "MEAN;STD"), ("0.5;0.2;0.1", "MEAN;STD"), ("a;0.2", "not numbers"),
                       ("0.5,0.5;0.2", "2 mean values but 1"), ("0.5;0", "> 0"), ("0.5;-1", "> 0"),
                       ("0.5;nan", "finite"), ("inf;1", "finite"), ("0.5;1e-60", "float32"), ("1e40;1", "float32")):
        with pytest.raises(SpidecError, match=words):
            parse_normalize(bad)


def test_apply_checks_its_arguments():
    x = np.zeros((2, 3, 4, 4), dtype=np.float32)
    with pytest.raises(SpidecError, match="2 samples but 3"):
        apply(x, [0, 1, 2], 0, 0, Augment(2))
    with pytest.raises(SpidecError, match="channels"):
        apply(x, [0, 1], 0, 0, None, ((0.1, 0.2), (1.0, 1.0)))
    with pytest.raises(SpidecError, match="shape"):
        apply(np.zeros((2, 16)), [0, 1], 0, 0, Augment(2))
    with pytest.raises(SpidecError, match="2\\*\\*32"):
        apply(x, [0, 2**32], 0, 0, Augment(2))
    with pytest.raises(SpidecError, match="seed"):
        choices(-1, 0, 0)
    out = apply(x.astype(np.float64), [0, 1], 0, 0, None, ((0.5,), (0.5,)))
    assert out.dtype == np.float32 and np.all(out == -1)
