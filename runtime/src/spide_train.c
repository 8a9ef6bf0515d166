/* spide_train.c -- the training and evaluation loops shared by every compiled model. */
#include "spide.h"

#include "spide_augment.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

float spide_schedule_lr(const spide_train_opts_t *o, int epoch, long iteration) {
    double lr = o->lr;
    if (o->schedule == SPIDE_LR_MODEL) {
        lr = spide_lr_at(epoch, o->lr);
    } else if (o->schedule == SPIDE_LR_MULTISTEP) {
        for (int i = 0; i < o->n_milestones; i++)
            if (epoch >= o->milestones[i]) lr *= o->gamma;
    } else if (o->schedule == SPIDE_LR_COSINE) {
        lr = o->lr * 0.5 * (1.0 + cos(3.14159265358979323846 * epoch / (o->epochs > 0 ? o->epochs : 1)));
    }
    if (o->warmup > 0 && iteration < o->warmup) lr = lr * (double)(iteration + 1) / o->warmup;
    return (float)lr;
}

#ifndef SPIDE_BOARD_NAME /* (boards run their own loop: runtime/board/spide_board.c; no heap there) */
/* the sample layout augmentation reads: frames x channels x h x w */
static int layout(uint32_t *frames, uint32_t *channels, uint32_t *h, uint32_t *w) {
    int d[8], nd = spide_input_shape(d);
    *frames = 1;
    if (nd == 3) { *channels = (uint32_t)d[0]; *h = (uint32_t)d[1]; *w = (uint32_t)d[2]; return 0; }
    if (nd == 2) { *channels = 1; *h = (uint32_t)d[0]; *w = (uint32_t)d[1]; return 0; }
    return -1;
}

double spide_train(const float *x, const int32_t *y, int n, const int32_t *perm, int batch,
                   const spide_train_opts_t *o, int *correct,
                   void (*progress)(int done, int total, double loss, int correct)) {
    const spide_info_t *info = spide_info();
    uint32_t frames = 1, channels = 1, h = 1, w = (uint32_t)info->n_inputs;
    int augment = o->crop > 0 || o->flip, prepare = augment || (o->mean && o->std);
    /* a flat input keeps the layout above: normalisation reads it as one channel, augmentation cannot */
    if (prepare && layout(&frames, &channels, &h, &w) != 0 && augment) return -1;
    float *buf = prepare ? (float *)malloc((size_t)info->n_inputs * sizeof(float)) : NULL;
    if (prepare && !buf) return -1;
    double loss = 0.0;
    int ok = 0;
    if (batch < 1) batch = 1;
    long it = o->iteration;
    for (int start = 0; start < n; start += batch, it++) {
        int b = n - start < batch ? n - start : batch;
        float lr = spide_schedule_lr(o, o->epoch, it);
        spide_set_lr(lr);
        for (int k = 0; k < b; k++) {
            int i = perm ? perm[start + k] : start + k;
            const float *xi = x + (size_t)i * (size_t)info->n_inputs;
            if (buf) {
                spide_aug_sample(xi, buf, frames, channels, h, w, o->seed, (uint32_t)o->epoch, (uint32_t)i,
                                 (uint32_t)o->crop, o->flip, o->mean, o->std, (uint32_t)o->n_stats);
                xi = buf;
            }
            spide_set_sample_key(spide_sample_key(o->seed, (uint32_t)o->epoch, (uint32_t)i));
            /* spide_learn runs the forward stage first: its logits tell the prediction */
            loss += spide_learn(xi, y[i], b);
            const float *logits = spide_forward_logits();
            int best = 0;
            for (int c = 1; c < info->n_classes; c++)
                if (logits[c] > logits[best]) best = c;
            ok += best == y[i];
        }
        spide_step(lr);
        if (progress) progress(start + b, n, loss, ok);
    }
    free(buf);
    if (correct) *correct = ok;
    return loss;
}

double spide_train_epoch(const float *x, const int32_t *y, int n, const int32_t *perm, int batch, float lr,
                         int *correct, void (*progress)(int done, int total, double loss, int correct)) {
    spide_train_opts_t o;
    memset(&o, 0, sizeof o);
    o.lr = lr;
    o.schedule = SPIDE_LR_CONSTANT;
    return spide_train(x, y, n, perm, batch, &o, correct, progress);
}
#endif

double spide_evaluate(const float *x, const int32_t *y, int n, double *loss) {
    const spide_info_t *info = spide_info();
    int ok = 0;
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        const float *logits = spide_forward(x + (size_t)i * (size_t)info->n_inputs);
        float mx = logits[0];
        int best = 0;
        for (int c = 1; c < info->n_classes; c++) {
            if (logits[c] > logits[best]) best = c;
            if (logits[c] > mx) mx = logits[c];
        }
        double z = 0.0;
        for (int c = 0; c < info->n_classes; c++) z += exp((double)(logits[c] - mx));
        total += log(z) + mx - logits[y[i]];
        ok += best == y[i];
    }
    if (loss) *loss = n ? total / n : 0.0;
    return n ? (double)ok / n : 0.0;
}

/* xorshift64* */
static uint64_t next(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static uint32_t gcd(uint32_t a, uint32_t b) {
    while (b) {
        uint32_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

void spide_epoch_order(uint64_t seed, int epoch, int n, uint32_t *a, uint32_t *b) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull ^ (uint64_t)(epoch + 1) * 0xD1B54A32D192ED03ull;
    if (!s) s = 1;
    *a = 1;
    *b = 0;
    if (n <= 1) return;
    do *a = 1u + (uint32_t)(next(&s) % (uint64_t)(n - 1)); while (gcd(*a, (uint32_t)n) != 1u);
    *b = (uint32_t)(next(&s) % (uint64_t)n);
}
