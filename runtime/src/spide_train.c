/* spide_train.c -- the training and evaluation loops shared by every compiled model. */
#include "spide.h"

#include <math.h>

double spide_train_epoch(const float *x, const int32_t *y, int n, const int32_t *perm, int batch, float lr,
                         int *correct, void (*progress)(int done, int total, double loss, int correct)) {
    const spide_info_t *info = spide_info();
    double loss = 0.0;
    int ok = 0;
    if (batch < 1) batch = 1;
    spide_set_lr(lr);
    for (int start = 0; start < n; start += batch) {
        int b = n - start < batch ? n - start : batch;
        for (int k = 0; k < b; k++) {
            int i = perm ? perm[start + k] : start + k;
            const float *xi = x + (size_t)i * (size_t)info->n_inputs;
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
    if (correct) *correct = ok;
    return loss;
}

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
