/* spide_augment.h -- training-time augmentation and input normalisation of the spidec runtime.
 *
 * The C twin of spidec/augment.py: the same stateless random choice, the same crop / flip and the
 * same float32 normalisation, so the C host trainer and the Python sim trainer (and a resumed run)
 * feed the model bit-identical samples. Header-only: C99, static inline, no allocation, no globals,
 * no libc beyond <string.h> (memset/memcpy); 64-bit integer arithmetic only (fine on a Cortex-M).
 *
 * Random choice for sample `index` of the data set in `epoch` (seed: uint64; epoch, index: uint32;
 * all arithmetic modulo 2^64):
 *
 *   mix64(z):  z += 0x9E3779B97F4A7C15;
 *              z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
 *              z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
 *              return z ^ (z >> 31);                            (one splitmix64 step)
 *   h    = mix64(mix64(seed) ^ ((uint64)epoch << 32 | index))
 *   n    = 2 * pad + 1                                          (pad 0: no crop, offsets 0)
 *   dy   = (h & 0xFFFFFF) % n                                   (bits 0..23)
 *   dx   = ((h >> 24) & 0xFFFFFF) % n                           (bits 24..47)
 *   flip = h >> 63                                              (used only when flipping is on)
 *
 * Transform of one sample of `frames` x C x H x W floats (frames = 1 for [C, H, W]; every frame gets
 * the same window and flip), torchvision's RandomCrop(H, padding=pad) then RandomHorizontalFlip:
 *
 *   out[f, c, y, x] = in[f, c, y + dy - pad, x' + dx - pad]   (0 outside the image)
 *                     with x' = W - 1 - x if flipped, else x
 *
 * then, as in SPIDE's scripts (crop, flip, ToTensor, Normalize), normalisation last, so the padded
 * zeros are normalised too: out[f, c] = (out[f, c] - mean[c]) / std[c], one float subtraction and
 * one float division (the same float32 operations numpy does; this needs FLT_EVAL_METHOD 0, as on
 * x86-64 SSE and Cortex-M FPUs). mean/std should be the float nearest to the decimal values
 * ((float)strtod(text), not strtof, which can differ by double rounding in rare cases).
 */
#ifndef SPIDE_AUGMENT_H
#define SPIDE_AUGMENT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SPIDE_AUG_MAX_PAD 255u

/** The crop offsets into the zero-padded sample (0..2*pad) and the flip bit of one sample. */
typedef struct {
    uint32_t dy, dx;
    uint32_t flip; /* 0 or 1; honoured only when the augmentation flips */
} spide_aug_choice_t;

/** One splitmix64 step. */
static inline uint64_t spide_aug_mix64(uint64_t z) {
    z += UINT64_C(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/** The 64-bit hash the choices of (seed, epoch, index) come from. */
static inline uint64_t spide_aug_hash(uint64_t seed, uint32_t epoch, uint32_t index) {
    return spide_aug_mix64(spide_aug_mix64(seed) ^ (((uint64_t)epoch << 32) | (uint64_t)index));
}

/** The crop offsets (pad 0: none; pad <= SPIDE_AUG_MAX_PAD) and flip bit of sample `index` in `epoch`. */
static inline spide_aug_choice_t spide_aug_choose(uint64_t seed, uint32_t epoch, uint32_t index, uint32_t pad) {
    uint64_t h = spide_aug_hash(seed, epoch, index);
    uint32_t n = 2u * pad + 1u;
    spide_aug_choice_t c;
    c.dy = (uint32_t)(h & UINT64_C(0xFFFFFF)) % n;
    c.dx = (uint32_t)((h >> 24) & UINT64_C(0xFFFFFF)) % n;
    c.flip = (uint32_t)(h >> 63);
    return c;
}

/** Crop (zero padding `pad`, window at c.dy, c.dx) and, when `flip_on` and c.flip, mirror one sample of
 *  frames x channels x h x w floats from `in` to `out` (distinct buffers of the same size). */
static inline void spide_aug_transform(const float *in, float *out, uint32_t frames, uint32_t channels,
                                       uint32_t h, uint32_t w, uint32_t pad, int flip_on, spide_aug_choice_t c) {
    uint32_t planes = frames * channels, p, y, x;
    int mirror = flip_on && c.flip;
    for (p = 0; p < planes; p++) {
        const float *src = in + (size_t)p * h * w;
        float *dst = out + (size_t)p * h * w;
        for (y = 0; y < h; y++) {
            float *row = dst + (size_t)y * w;
            /* source row sy = y + dy - pad, in range iff pad <= y + dy < h + pad */
            uint32_t ys = y + c.dy;
            if (ys < pad || ys >= h + pad) {
                memset(row, 0, (size_t)w * sizeof(float));
                continue;
            }
            {
                const float *srow = src + (size_t)(ys - pad) * w;
                for (x = 0; x < w; x++) {
                    uint32_t xs = (mirror ? w - 1u - x : x) + c.dx; /* source column + pad */
                    row[x] = (xs < pad || xs >= w + pad) ? 0.0f : srow[xs - pad];
                }
            }
        }
    }
}

/** x[f, c] = (x[f, c] - mean[c]) / std[c] in place, for frames x channels planes of plane floats;
 *  n_stats = 1: mean[0], std[0] for every channel; otherwise n_stats = channels. */
static inline void spide_aug_normalize(float *x, uint32_t frames, uint32_t channels, size_t plane,
                                       const float *mean, const float *std, uint32_t n_stats) {
    uint32_t f, ch;
    size_t i;
    for (f = 0; f < frames; f++) {
        for (ch = 0; ch < channels; ch++) {
            float m = mean[n_stats == 1u ? 0u : ch], s = std[n_stats == 1u ? 0u : ch];
            float *v = x + ((size_t)f * channels + ch) * plane;
            for (i = 0; i < plane; i++) {
                v[i] = (v[i] - m) / s;
            }
        }
    }
}

/** The whole pipeline for one sample, as spidec.augment.apply: choose (seed, epoch, index), crop with
 *  `pad` (0: none) and flip when `flip_on`, then normalise when mean/std are given (NULL: not). */
static inline void spide_aug_sample(const float *in, float *out, uint32_t frames, uint32_t channels, uint32_t h,
                                    uint32_t w, uint64_t seed, uint32_t epoch, uint32_t index, uint32_t pad,
                                    int flip_on, const float *mean, const float *std, uint32_t n_stats) {
    if (pad > 0u || flip_on) {
        spide_aug_transform(in, out, frames, channels, h, w, pad, flip_on, spide_aug_choose(seed, epoch, index, pad));
    } else if (out != in) {
        memcpy(out, in, (size_t)frames * channels * h * w * sizeof(float));
    }
    if (mean != NULL && std != NULL) {
        spide_aug_normalize(out, frames, channels, (size_t)h * w, mean, std, n_stats);
    }
}

#ifdef __cplusplus
}
#endif

#endif /* SPIDE_AUGMENT_H */
