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
