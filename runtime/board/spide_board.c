/* spide_board.c -- the program a compiled model runs on a Cortex-M board under semihosting:
 * train on a data set streamed sample by sample from the host's files, evaluate, and report
 * accuracy, instructions (SysTick under QEMU -icount) and memory. No data set is loaded whole; the
 * sample order is the host trainer's (spide_order_index, computed position by position: no index
 * array), so a board and the host executable given the same seed see the samples in the same order.
 *
 *   prog.elf train TRAIN.spds TEST.spds [--epochs N] [--batch B] [--lr LR] [--seed S] [--out W.bin]
 *            [--lr-schedule linear:K]
 *   prog.elf eval TEST.spds
 *
 * The rate is the compiled per-epoch schedule (spide_lr_at); --lr-schedule linear:K replaces it, as
 * on the host trainer, by LR falling in K equal steps over the run: batch `it` of the epochs *
 * batches-per-epoch trains at spide_linear_lr (spidec/schedule.py), set before its samples (online
 * fixed-point updates read the rate per sample) and given to its step.
 *
 * Results go to stdout one line each ("key value" pairs; "progress ..." lines about 20 times an
 * epoch), errors to stderr. Exit codes: 0 ok,
 * 1 bad data file, 2 bad usage, 3 fault.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "board.h"
#include "spide.h"

#ifndef SPIDE_BOARD_NAME
#define SPIDE_BOARD_NAME "unknown"
#endif
#define STACK_PAINT 24576u /* bytes below main's frame painted to measure the stack's high-water mark */

typedef struct {
    FILE *f;
    uint32_t count, size, classes;
    long x_off, y_off;
} stream_t;

static uint32_t crc_update(uint32_t crc, const unsigned char *p, size_t n) { /* CRC32, no table (RAM) */
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++) crc = (crc & 1u) ? 0xEDB88320u ^ (crc >> 1) : crc >> 1;
    }
    return crc;
}

static uint32_t u32le(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static int stream_open(stream_t *s, const char *path) {
    unsigned char h[16 + 4 * 8 + 12], buf[512];
    memset(s, 0, sizeof *s);
    s->f = fopen(path, "rb");
    if (!s->f) { fprintf(stderr, "error: %s: cannot open\n", path); return -1; }
    setvbuf(s->f, NULL, _IONBF, 0);
    if (fseek(s->f, 0, SEEK_END) != 0) goto bad;
    long len = ftell(s->f);
    if (len < 36 || fseek(s->f, 0, SEEK_SET) != 0 || fread(h, 1, 16, s->f) != 16) goto bad;
    uint32_t ndim = u32le(h + 12);
    if (memcmp(h, "SPDS", 4) != 0 || u32le(h + 4) != SPIDE_FORMAT_VERSION || u32le(h + 8) != 1u || ndim == 0 ||
        ndim > 8 || fread(h + 16, 1, 4 * ndim + 12, s->f) != 4 * ndim + 12) {
        fprintf(stderr, "error: %s: not a spidec float32 data set of this format version\n", path);
        goto fail;
    }
    uint64_t size = 1;
    for (uint32_t i = 0; i < ndim; i++) size *= u32le(h + 16 + 4 * i);
    uint64_t count = (uint64_t)u32le(h + 16 + 4 * ndim) | ((uint64_t)u32le(h + 20 + 4 * ndim) << 32);
    s->classes = u32le(h + 24 + 4 * ndim);
    s->x_off = (long)(28 + 4 * ndim);
    if (count == 0 || count > (1u << 24) || size != (uint64_t)spide_info()->n_inputs ||
        (uint64_t)len != (uint64_t)s->x_off + count * size * 4 + count * 4 + 4 ||
        s->classes > (uint32_t)spide_info()->n_classes) {
        fprintf(stderr, "error: %s: %llu samples of %llu values for %u classes do not fit this model "
                "(%d inputs, %d classes) or the file's %ld bytes\n", path, (unsigned long long)count,
                (unsigned long long)size, (unsigned)s->classes, spide_info()->n_inputs, spide_info()->n_classes, len);
        goto fail;
    }
    s->count = (uint32_t)count;
    s->size = (uint32_t)size;
    s->y_off = s->x_off + (long)(count * size * 4);
    /* CRC over everything before the stored CRC, in chunks */
    uint32_t crc = 0xFFFFFFFFu;
    long left = len - 4;
    if (fseek(s->f, 0, SEEK_SET) != 0) goto bad;
    while (left > 0) {
        size_t k = left < (long)sizeof buf ? (size_t)left : sizeof buf;
        if (fread(buf, 1, k, s->f) != k) goto bad;
        crc = crc_update(crc, buf, k);
        left -= (long)k;
    }
    if (fread(buf, 1, 4, s->f) != 4) goto bad;
    if ((crc ^ 0xFFFFFFFFu) != u32le(buf)) {
        fprintf(stderr, "error: %s: CRC mismatch: the file is corrupt or truncated\n", path);
        goto fail;
    }
    return 0;
bad:
    fprintf(stderr, "error: %s: read error\n", path);
fail:
    fclose(s->f);
    s->f = NULL;
    return -1;
}

static int stream_read(stream_t *s, uint32_t i, float *x, int *y) {
    int32_t label;
    if (fseek(s->f, s->x_off + (long)i * (long)s->size * 4, SEEK_SET) != 0 || fread(x, 4, s->size, s->f) != s->size ||
        fseek(s->f, s->y_off + 4 * (long)i, SEEK_SET) != 0 || fread(&label, 4, 1, s->f) != 1) {
        fprintf(stderr, "error: read error at sample %u\n", (unsigned)i);
        return -1;
    }
    for (uint32_t k = 0; k < s->size; k++)
        if (x[k] != x[k] || x[k] > 3.0e38f || x[k] < -3.0e38f) {
            fprintf(stderr, "error: sample %u holds NaN or inf\n", (unsigned)i);
            return -1;
        }
    if (label < 0 || (uint32_t)label >= s->classes) {
        fprintf(stderr, "error: label %d of sample %u is outside 0..%u\n", (int)label, (unsigned)i, (unsigned)s->classes - 1u);
        return -1;
    }
    *y = label;
    return 0;
}

static int argmax(const float *v, int n) {
    int best = 0;
    for (int c = 1; c < n; c++) if (v[c] > v[best]) best = c;
    return best;
}

static int evaluate(stream_t *s, float *x, double *acc) {
    int ok = 0;
    for (uint32_t i = 0; i < s->count; i++) {
        int y;
        if (stream_read(s, i, x, &y) != 0) return -1;
        ok += argmax(spide_forward(x), spide_info()->n_classes) == y;
    }
    *acc = (double)ok / s->count;
    return 0;
}

static int dump(const char *path) {
    const spide_info_t *info = spide_info();
    FILE *f = fopen(path, "wb");
    if (!f) { fprintf(stderr, "error: %s: cannot write\n", path); return -1; }
    uint32_t head[2] = {1u, (uint32_t)info->n_tensors};
    int ok = fwrite("SPQW", 1, 4, f) == 4 && fwrite(info->hash, 1, 16, f) == 16 && fwrite(head, 4, 2, f) == 2;
    for (int i = 0; ok && i < info->n_tensors; i++) {
        int bytes = 0;
        const void *data = spide_tensor_raw(i, &bytes);
        uint32_t meta[2] = {(uint32_t)spide_tensor_size(i), (uint32_t)bytes};
        ok = fwrite(meta, 4, 2, f) == 2 && fwrite(data, (size_t)bytes, spide_tensor_size(i), f) == spide_tensor_size(i);
    }
    if (fclose(f) != 0) ok = 0;
    if (!ok) fprintf(stderr, "error: %s: write failed\n", path);
    return ok ? 0 : -1;
}

extern char end;            /* the linker script: the heap starts here */
extern void *sbrk(int incr); /* newlib (unistd.h declares it only for POSIX) */

int main(int argc, char **argv) {
    volatile uint32_t here = 0;
    uint32_t *top = (uint32_t *)((uintptr_t)&here & ~(uintptr_t)3) - 64, *bottom = top - STACK_PAINT / 4;
    for (uint32_t *p = bottom; p < top; p++) *p = 0xA5A5A5A5u;
    const spide_info_t *info = spide_info();
    static float x[SPIDE_BOARD_INPUTS]; /* one sample */
    if (argc < 3 || (strcmp(argv[1], "train") && strcmp(argv[1], "eval"))) {
        fprintf(stderr, "usage: %s train TRAIN.spds TEST.spds [--epochs N] [--batch B] [--lr LR] [--seed S] "
                "[--out W.bin] [--lr-schedule linear:K] | eval TEST.spds\n", argc ? argv[0] : "prog");
        return 2;
    }
    int training = !strcmp(argv[1], "train");
    int epochs = 1, batch = 1, first = training ? 4 : 3, steps = 0; /* steps: linear:K's K (0: compiled) */
    float lr = info->lr;
    unsigned long long seed = 0;
    const char *out = NULL;
    if (training && argc < 4) { fprintf(stderr, "error: train needs TRAIN.spds TEST.spds\n"); return 2; }
    for (int i = first; i < argc; i += 2) {
        if (i + 1 >= argc) { fprintf(stderr, "error: %s needs a value\n", argv[i]); return 2; }
        const char *v = argv[i + 1];
        if (!strcmp(argv[i], "--epochs")) epochs = atoi(v);
        else if (!strcmp(argv[i], "--batch")) batch = atoi(v);
        else if (!strcmp(argv[i], "--lr")) lr = (float)atof(v);
        else if (!strcmp(argv[i], "--seed")) seed = strtoull(v, NULL, 10);
        else if (!strcmp(argv[i], "--out")) out = v;
        else if (!strcmp(argv[i], "--lr-schedule")) {
            char *end;
            long k = strncmp(v, "linear:", 7) ? 0 : strtol(v + 7, &end, 10);
            if (k < 1 || end == v + 7 || *end) {
                fprintf(stderr, "error: --lr-schedule %s: a board takes linear:K (K >= 1)\n", v);
                return 2;
            }
            steps = (int)k;
        }
        else { fprintf(stderr, "error: unknown option %s\n", argv[i]); return 2; }
    }
    if (epochs < 0 || batch < 1 || !(lr > 0)) { fprintf(stderr, "error: --epochs >= 0, --batch >= 1, --lr > 0\n"); return 2; }
    double per_tick = spide_board_calibrate();
    printf("board %s model %s hash %s fixed %d\n", SPIDE_BOARD_NAME, info->name, info->hash, info->fixed);
    printf("calibration instructions_per_tick %.3f\n", per_tick);
    stream_t tr, te;
    memset(&tr, 0, sizeof tr);
    if (training && stream_open(&tr, argv[2]) != 0) return 1;
    if (stream_open(&te, argv[training ? 3 : 2]) != 0) return 1;
    double acc;
    uint64_t t0 = spide_board_ticks();
    if (evaluate(&te, x, &acc) != 0) return 1;
    uint64_t t1 = spide_board_ticks();
    printf("epoch 0 test_accuracy %.4f samples %u instructions_per_inference %.0f\n", acc, (unsigned)te.count,
           (double)(t1 - t0) * per_tick / te.count);
    uint64_t work[6];
    long per_epoch = training ? ((long)tr.count + batch - 1) / batch : 0, it = 0;
    for (int e = 0; training && e < epochs; e++) {
        float lr_e = steps ? spide_linear_lr(lr, steps, (long)e * per_epoch, (long)epochs * per_epoch)
                           : spide_lr_at(e, lr);
        spide_set_lr(lr_e);
        spide_begin_epoch();
        spide_take_work(work);
        (void)spide_take_events();
        double loss = 0.0;
        int ok = 0;
        uint64_t ticks = 0;
        uint32_t every = tr.count / 20 > 0 ? tr.count / 20 : 1, shown = 0;
        float lr_b = lr_e; /* this batch's rate */
        for (uint32_t start = 0; start < tr.count; start += (uint32_t)batch, it++) {
            uint32_t n = tr.count - start < (uint32_t)batch ? tr.count - start : (uint32_t)batch;
            if (steps) {
                float r = spide_linear_lr(lr, steps, it, (long)epochs * per_epoch);
                if (r != lr_b) spide_set_lr(lr_b = r);
            }
            for (uint32_t k = 0; k < n; k++) {
                uint32_t i = spide_order_index(seed, (uint32_t)e, tr.count, start + k);
                int y;
                if (stream_read(&tr, i, x, &y) != 0) return 1;
                uint64_t s0 = spide_board_ticks();
                loss += spide_learn(x, y, (int)n);
                ticks += spide_board_ticks() - s0;
                ok += argmax(spide_forward_logits(), info->n_classes) == y;
            }
            uint64_t s0 = spide_board_ticks();
            spide_step(lr_b);
            ticks += spide_board_ticks() - s0;
            if (start + n - shown >= every && start + n < tr.count) { /* about 20 progress lines an epoch */
                shown = start + n;
                printf("progress epoch %d done %u total %u loss %.4f\n", e + 1, (unsigned)shown, (unsigned)tr.count,
                       loss / shown);
                fflush(stdout);
            }
        }
        uint64_t events = spide_take_events();
        spide_take_work(work);
        if (evaluate(&te, x, &acc) != 0) return 1;
        printf("epoch %d lr %g loss %.4f train_accuracy %.4f test_accuracy %.4f samples %u instructions %.0f "
               "instructions_per_sample %.0f events_per_sample %.1f synops_per_sample %.0f\n", e + 1, (double)lr_e,
               loss / tr.count, (double)ok / tr.count, acc, (unsigned)tr.count, (double)ticks * per_tick,
               (double)ticks * per_tick / tr.count, (double)events / tr.count,
               (double)(work[0] + work[1]) / tr.count);
        fflush(stdout);
    }
    if (out && dump(out) != 0) return 1;
    if (out) printf("wrote %s\n", out);
    uint32_t *p = bottom;
    while (p < top && *p == 0xA5A5A5A5u) p++;
    printf("memory stack_used %u heap_used %u\n", (unsigned)((uintptr_t)top - (uintptr_t)p + 256),
           (unsigned)((uintptr_t)sbrk(0) - (uintptr_t)&end));
    if (tr.f) fclose(tr.f);
    fclose(te.f);
    return 0;
}
