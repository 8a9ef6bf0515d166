/* spide_main.c -- the command-line program of a compiled model: train, eval, predict, info.
 * Exit codes: 0 ok, 1 bad input (data or checkpoint file), 2 bad usage, 3 training diverged. */
#define _POSIX_C_SOURCE 200809L
#include "spide.h"
#include "spide_augment.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *USAGE =
    "usage: %s COMMAND [options]\n"
    "  train   --train FILE.spds [--test FILE.spds] [--epochs N] [--batch B] [--lr LR] [--seed S]\n"
    "          [--checkpoint FILE] [--resume] [--save-every BATCHES] [--quiet]\n"
    "          [--lr-schedule multistep:E1,E2:GAMMA|cosine|constant|linear:K] [--warmup BATCHES]\n"
    "          [--augment crop4,flip] [--normalize MEAN,..;STD,..] [--threads N]\n"
    "  eval    --test FILE.spds [--checkpoint FILE] [--threads N]\n"
    "  predict --data FILE.spds [--checkpoint FILE]      one predicted class per line\n"
    "  info                                              the model's facts\n"
    "--threads N: the samples of a batch on N threads (default: the cores available; the same\n"
    "weights for any N). Data sets: spidec dataset pack digits -o DIR. Progress goes to stderr,\n"
    "results to stdout.\n"
    "--checkpoint FILE is locked (FILE.lock) while a trainer runs; a second one is refused.\n"
    "Exit codes: 0 ok, 1 bad data or checkpoint file, 2 bad usage, 3 training diverged (NaN or inf).\n";

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int show_progress = 1;
static int epoch_shown = 0, epochs_total = 0;
static double last_draw = 0.0;

static void progress(int done, int total, double loss, int correct) {
    if (!show_progress) return;
    double t = now();
    if (done < total && t - last_draw < 0.2) return;
    last_draw = t;
    int width = 30, filled = (int)((double)width * done / (total ? total : 1));
    fprintf(stderr, "\repoch %d/%d [", epoch_shown, epochs_total);
    for (int i = 0; i < width; i++) fputc(i < filled ? '#' : '.', stderr);
    fprintf(stderr, "] %d/%d loss %.4f acc %.3f ", done, total, loss / (done ? done : 1),
            (double)correct / (done ? done : 1));
    if (done >= total) fputc('\n', stderr);
    fflush(stderr);
}


/* save the checkpoint at position `at`, which becomes the last good one */
static int save_position(const char *ckpt, spide_position_t at, spide_position_t *good, int *have_good) {
    char err[512];
    if (spide_checkpoint_save_at(ckpt, &at, err, sizeof err) != 0) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    *good = at;
    *have_good = 1;
    return 0;
}

/* --lr-schedule: multistep:E1,E2[:GAMMA], cosine, constant, linear:K (spidec/schedule.py; linear's
 * total, epochs * batches per epoch, is set once the data is read) */
static int parse_schedule(const char *v, spide_train_opts_t *o, int *ms, int max) {
    if (!strcmp(v, "constant")) { o->schedule = SPIDE_LR_CONSTANT; return 0; }
    if (!strcmp(v, "cosine")) { o->schedule = SPIDE_LR_COSINE; return 0; }
    if (!strncmp(v, "linear:", 7)) {
        char *end;
        long k = strtol(v + 7, &end, 10);
        if (end == v + 7 || *end || k < 1 || k > 0x7FFFFFFFL) return -1;
        o->schedule = SPIDE_LR_LINEAR;
        o->steps = (int)k;
        return 0;
    }
    if (strncmp(v, "multistep:", 10) != 0) return -1;
    const char *p = v + 10;
    int n = 0;
    o->gamma = 0.1f;
    while (*p && *p != ':') {
        char *end;
        long m = strtol(p, &end, 10);
        if (end == p || m < 0 || n >= max || (n && m < ms[n - 1])) return -1;
        ms[n++] = (int)m;
        p = end;
        if (*p == ',') p++;
    }
    if (*p == ':') {
        char *end;
        double g = strtod(p + 1, &end);
        if (end == p + 1 || *end || !(g > 0.0) || g > 1e30) return -1;
        o->gamma = (float)g;
    }
    o->schedule = SPIDE_LR_MULTISTEP;
    o->milestones = ms;
    o->n_milestones = n;
    return 0;
}

/* --augment: crop<PAD>, flip, none (comma-separated) */
static int parse_augment(const char *v, spide_train_opts_t *o) {
    char buf[64];
    if (strlen(v) >= sizeof buf) return -1;
    strcpy(buf, v);
    for (char *t = strtok(buf, ","); t; t = strtok(NULL, ",")) {
        if (!strcmp(t, "flip")) o->flip = 1;
        else if (!strcmp(t, "none")) continue;
        else if (!strncmp(t, "crop", 4)) {
            char *end;
            long pad = strtol(t + 4, &end, 10);
            if (end == t + 4 || *end || pad < 1 || pad > 255) return -1;
            o->crop = (int)pad;
        } else return -1;
    }
    return 0;
}

/* --normalize MEAN[,MEAN..];STD[,STD..]: one pair for every channel or one per channel */
static int parse_normalize(const char *v, float *mean, float *std, int max, int *n) {
    const char *semi = strchr(v, ';');
    if (!semi) return -1;
    int k[2] = {0, 0};
    const char *p = v;
    for (int part = 0; part < 2; part++) {
        float *dst = part ? std : mean;
        const char *stop = part ? v + strlen(v) : semi;
        while (p < stop) {
            char *end;
            double d = strtod(p, &end);
            if (end == p || k[part] >= max || d != d || d > 1e30 || d < -1e30 || (part && !(d > 0.0))) return -1;
            dst[k[part]++] = (float)d;
            p = end;
            if (*p == ',') p++;
            else if (p != stop) return -1;
        }
        p = semi + 1;
    }
    if (k[0] != k[1] || k[0] == 0) return -1;
    *n = k[0];
    return 0;
}

static int load(const char *path, spide_dataset_t *d, int need_labels) {
    char err[512];
    if (spide_dataset_load(path, spide_info()->n_inputs, d, err, sizeof err) != 0) {
        fprintf(stderr, "error: %s\n", err);
        return -1;
    }
    if (need_labels && d->classes == 0) {
        fprintf(stderr, "error: %s holds samples without labels: train and eval need labels (predict reads it)\n",
                path);
        spide_dataset_free(d);
        return -1;
    }
    if (d->classes > spide_info()->n_classes) {
        fprintf(stderr, "error: %s has %d classes, the model's readout %d\n", path, d->classes,
                spide_info()->n_classes);
        spide_dataset_free(d);
        return -1;
    }
    return 0;
}

/* Strict numbers: the whole value, in range; else a one-line usage error naming the flag. */
static int int_arg(const char *flag, const char *v, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "error: %s %s: use %s %ld..%ld (a whole number)\n", flag, v, flag, lo, hi);
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int seed_arg(const char *v, unsigned long long *out) {
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (!(*v >= '0' && *v <= '9') || *end || errno) { /* (strtoull would take "-1" as 2^64 - 1) */
        fprintf(stderr, "error: --seed %s: use --seed 0..18446744073709551615 (a whole number)\n", v);
        return -1;
    }
    *out = x;
    return 0;
}

static int lr_arg(const char *v, float *out) {
    char *end;
    double x = strtod(v, &end);
    if (end == v || *end || !isfinite(x) || !(x > 0.0) || x > 1e30 || !((float)x > 0.0f)) {
        fprintf(stderr, "error: --lr %s: use a finite number > 0 (at most 1e30)\n", v);
        return -1;
    }
    *out = (float)x;
    return 0;
}

static const char *const VALUE_FLAGS[] = {"--train", "--test", "--data", "--checkpoint", "--epochs", "--batch",
                                          "--lr", "--seed", "--save-every", "--warmup", "--threads",
                                          "--lr-schedule", "--augment", "--normalize", NULL};

static int is_value_flag(const char *a) {
    for (int k = 0; VALUE_FLAGS[k]; k++)
        if (!strcmp(a, VALUE_FLAGS[k])) return 1;
    return 0;
}

static int is_flag(const char *a) {
    return is_value_flag(a) || !strcmp(a, "--quiet") || !strcmp(a, "--resume") || !strcmp(a, "--help");
}

/* One trainer a checkpoint: a POSIX write lock on FILE.lock, held until the process exits (the
 * checkpoint itself is replaced by every save, so it cannot hold the lock). */
static int lock_checkpoint(const char *ckpt) {
    char path[4096];
    if (snprintf(path, sizeof path, "%s.lock", ckpt) >= (int)sizeof path) {
        fprintf(stderr, "error: %s: path too long\n", ckpt);
        return -1;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "error: %s: cannot create the checkpoint's lock file (%s)\n", path, strerror(errno));
        return -1;
    }
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    if (fcntl(fd, F_SETLK, &fl) != 0) {
        int e = errno;
        close(fd);
        if (e == EACCES || e == EAGAIN)
            fprintf(stderr, "error: %s is in use by another trainer (it holds %s): one trainer a checkpoint\n", ckpt,
                    path);
        else
            fprintf(stderr, "error: %s: cannot lock (%s)\n", path, strerror(e));
        return -1;
    }
    return 0; /* (the descriptor stays open: the lock lasts as long as the process) */
}

/* Training diverged: what, where, and what of the checkpoint is left (the last good one). */
static void diverged(int epoch, long batch, const char *what, double lr, const char *ckpt, int have_good,
                     const spide_position_t *good) {
    fprintf(stderr, "error: training diverged at epoch %d, batch %ld: %s (learning rate %g too high?); ", epoch + 1,
            batch + 1, what, lr);
    if (!ckpt) fprintf(stderr, "nothing was saved (no --checkpoint)\n");
    else if (have_good && good->done)
        fprintf(stderr, "the last good checkpoint %s (epoch %d, sample %d) is kept\n", ckpt, good->epoch + 1,
                good->done);
    else if (have_good) fprintf(stderr, "the last good checkpoint %s (after epoch %d) is kept\n", ckpt, good->epoch);
    else if (access(ckpt, F_OK) == 0) fprintf(stderr, "%s is left as it was\n", ckpt);
    else fprintf(stderr, "no checkpoint was written\n");
}

int main(int argc, char **argv) {
    const spide_info_t *info = spide_info();
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fprintf(argc < 2 ? stderr : stdout, USAGE, argv[0]);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1], *train_path = NULL, *test_path = NULL, *ckpt = NULL;
    int epochs = 20, batch = 64, resume = 0, save_every = 0, threads = 0;
    float lr = info->lr;
    unsigned long long seed = 0;
    spide_train_opts_t opts;
    memset(&opts, 0, sizeof opts);
    int milestones[64], n_stats = 0;
    float mean[64], stdv[64];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--quiet")) { show_progress = 0; continue; }
        if (!strcmp(a, "--resume")) { resume = 1; continue; }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { printf(USAGE, argv[0]); return 0; }
        if (!is_value_flag(a)) {
            fprintf(stderr, "error: unknown option %s (%s --help lists them)\n", a, argv[0]);
            return 2;
        }
        if (!v || is_flag(v)) { fprintf(stderr, "error: %s needs a value\n", a); return 2; }
        if (!strcmp(a, "--train")) train_path = v;
        else if (!strcmp(a, "--test") || !strcmp(a, "--data")) test_path = v;
        else if (!strcmp(a, "--checkpoint")) ckpt = v;
        else if (!strcmp(a, "--epochs")) { if (int_arg(a, v, 0, (long)SPIDE_MAX_EPOCH, &epochs) != 0) return 2; }
        else if (!strcmp(a, "--batch")) { if (int_arg(a, v, 1, 1L << 30, &batch) != 0) return 2; }
        else if (!strcmp(a, "--lr")) { if (lr_arg(v, &lr) != 0) return 2; }
        else if (!strcmp(a, "--seed")) { if (seed_arg(v, &seed) != 0) return 2; }
        else if (!strcmp(a, "--save-every")) { if (int_arg(a, v, 0, 0x7FFFFFFFL, &save_every) != 0) return 2; }
        else if (!strcmp(a, "--warmup")) { if (int_arg(a, v, 0, 0x7FFFFFFFL, &opts.warmup) != 0) return 2; }
        else if (!strcmp(a, "--threads")) {
            char *end;
            long t = strtol(v, &end, 10);
            if (end == v || *end || t < 1 || t > 1024) {
                fprintf(stderr, "error: --threads %s: use a number from 1 to 1024\n", v);
                return 2;
            }
            threads = (int)t;
        }
        else if (!strcmp(a, "--lr-schedule")) {
            if (parse_schedule(v, &opts, milestones, 64) != 0) {
                fprintf(stderr, "error: --lr-schedule %s: use multistep:E1,E2:GAMMA, cosine, constant or linear:K (K >= 1)\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--augment")) {
            if (parse_augment(v, &opts) != 0) {
                fprintf(stderr, "error: --augment %s: use crop<PAD>, flip or none, comma-separated\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--normalize")) {
            if (parse_normalize(v, mean, stdv, 64, &n_stats) != 0) {
                fprintf(stderr, "error: --normalize %s: use MEAN,..;STD,.. (std > 0)\n", v);
                return 2;
            }
        }
        else { fprintf(stderr, "error: unknown option %s\n", a); fprintf(stderr, USAGE, argv[0]); return 2; }
        i++;
    }
    if (!isfinite(lr) || !(lr > 0)) { /* (the flags are checked as read: this is the model's default) */
        fprintf(stderr, "error: the model's learning rate %g is not a finite number > 0: give --lr\n", (double)lr);
        return 2;
    }
    if ((resume || save_every > 0) && !ckpt) {
        fprintf(stderr, "error: %s needs --checkpoint FILE\n", resume ? "--resume" : "--save-every");
        return 2;
    }
    if (n_stats) {
        int d[8], nd = spide_input_shape(d);
        int channels = nd == 3 ? d[0] : 1;
        if (n_stats != 1 && n_stats != channels) {
            fprintf(stderr, "error: --normalize gives %d values, the input has %d channels\n", n_stats, channels);
            return 2;
        }
        opts.mean = mean;
        opts.std = stdv;
        opts.n_stats = n_stats;
    }
    if (opts.crop || opts.flip) {
        int d[8];
        if (spide_input_shape(d) < 2) {
            fprintf(stderr, "error: --augment needs image-shaped input ([C, H, W] or [H, W])\n");
            return 2;
        }
    }
    spide_set_threads(threads); /* (0: the cores available) */
    char err[512];
    int start_epoch = 0, have_good = 0; /* have_good: `good` is a checkpoint on disk (loaded or saved) */
    spide_position_t good = {0, 0, 0, 0.0};
    if (ckpt && !strcmp(cmd, "train")) {
        struct stat st;
        if (stat(ckpt, &st) == 0 && !S_ISREG(st.st_mode)) {
            fprintf(stderr, "error: --checkpoint %s is not a regular file\n", ckpt);
            return 1;
        }
        if (lock_checkpoint(ckpt) != 0) return 1;
        int stale = spide_checkpoint_remove_stale(ckpt); /* (saves killed mid-write: no trainer writes them now) */
        if (stale && show_progress) fprintf(stderr, "removed %d unfinished save(s) of %s\n", stale, ckpt);
    }
    if (ckpt && (resume || strcmp(cmd, "train") != 0) && access(ckpt, F_OK) == 0) {
        if (spide_checkpoint_load_at(ckpt, &good, err, sizeof err) != 0) {
            fprintf(stderr, "error: %s\n", err);
            return 1;
        }
        start_epoch = good.epoch;
        have_good = 1;
        if (show_progress && good.done)
            fprintf(stderr, "loaded %s (epoch %d, after sample %d)\n", ckpt, good.epoch + 1, good.done);
        else if (show_progress) fprintf(stderr, "loaded %s (after epoch %d)\n", ckpt, start_epoch);
    } else if (ckpt && strcmp(cmd, "train") != 0) {
        fprintf(stderr, "error: %s: no such checkpoint\n", ckpt);
        return 1;
    }

    if (!strcmp(cmd, "info")) {
        printf("model %s\nhash %s\ninputs %d\nclasses %d\nT %d\nT_back %d\nlr %g\nsf %g\n", info->name, info->hash,
               info->n_inputs, info->n_classes, info->T, info->T_back, (double)info->lr, (double)info->sf);
        for (int i = 0; i < info->n_tensors; i++)
            printf("tensor %s %zu%s\n", spide_tensor_name(i), spide_tensor_size(i),
                   spide_tensor_learnable(i) ? "" : " frozen");
        return 0;
    }
    if (!strcmp(cmd, "eval") || !strcmp(cmd, "predict")) {
        spide_dataset_t d;
        if (!test_path) { fprintf(stderr, "error: %s needs --test/--data FILE.spds\n", cmd); return 2; }
        if (load(test_path, &d, strcmp(cmd, "predict") != 0) != 0) return 1;
        if (!strcmp(cmd, "predict")) {
            for (int i = 0; i < d.count; i++) {
                const float *logits = spide_forward(d.x + (size_t)i * (size_t)d.size);
                int best = 0;
                for (int c = 1; c < info->n_classes; c++) if (logits[c] > logits[best]) best = c;
                printf("%d\n", best);
            }
        } else {
            double loss;
            double acc = spide_evaluate(d.x, d.y, d.count, &loss);
            printf("test_accuracy %.4f test_loss %.4f samples %d\n", acc, loss, d.count);
        }
        spide_dataset_free(&d);
        return 0;
    }
    if (strcmp(cmd, "train") != 0) { fprintf(stderr, "error: unknown command %s\n", cmd); fprintf(stderr, USAGE, argv[0]); return 2; }
    if (!train_path) { fprintf(stderr, "error: train needs --train FILE.spds\n"); return 2; }
    spide_dataset_t tr, te;
    memset(&te, 0, sizeof te);
    if (load(train_path, &tr, 1) != 0) return 1;
    if (test_path && load(test_path, &te, 1) != 0) { spide_dataset_free(&tr); return 1; }
    if (te.count && n_stats) { /* the test set is normalised once; training samples after augmentation */
        int d[8], nd = spide_input_shape(d);
        uint32_t channels = nd == 3 ? (uint32_t)d[0] : 1u;
        for (int i = 0; i < te.count; i++)
            spide_aug_normalize(te.x + (size_t)i * (size_t)te.size, 1u, channels, (size_t)te.size / channels,
                                mean, stdv, (uint32_t)n_stats);
    }
    opts.lr = lr;
    opts.seed = seed;
    opts.epochs = epochs;
    long per_epoch = (tr.count + batch - 1) / batch;
    opts.total = (long)epochs * per_epoch; /* linear:K falls over the whole run (a resume sees the same) */
    int32_t *perm = (int32_t *)malloc((size_t)tr.count * sizeof(int32_t));
    if (!perm) { fprintf(stderr, "error: out of memory\n"); return 1; }
    if (good.done && start_epoch < epochs && (good.done >= tr.count || good.done % batch != 0)) {
        /* (a checkpoint inside an epoch continues after its last batch: same data, same --batch) */
        fprintf(stderr, "error: %s stops after sample %d of epoch %d, which %d samples in batches of %d cannot "
                "continue exactly (use the data and --batch it was trained with)\n", ckpt, good.done, good.epoch + 1,
                tr.count, batch);
        free(perm);
        spide_dataset_free(&tr);
        if (te.count) spide_dataset_free(&te);
        return 1;
    }
    epochs_total = epochs;
    show_progress = show_progress && isatty(2);
    int rc = 0;
    for (int e = start_epoch; e < epochs; e++) {
        epoch_shown = e + 1;
        spide_order(seed, (uint32_t)e, perm, tr.count); /* (a pure function of seed and epoch: resumes see it too) */
        float lr_e = spide_schedule_lr(&opts, e, (long)e * per_epoch);
        double t0 = now();
        (void)spide_take_events();
        int correct = 0;
        double loss = 0.0;
        int done = 0;
        if (e == start_epoch && good.done) { /* resumed inside this epoch: after the checkpoint's last batch */
            done = good.done;
            correct = good.correct;
            loss = good.loss;
            spide_resume_epoch(done / batch);
        } else {
            spide_begin_epoch();
        }
        /* save_every: checkpoints inside the epoch too (for long epochs on slow devices) */
        long chunk = save_every > 0 ? (long)save_every * batch : tr.count;
        while (done < tr.count) {
            int n = (long)(tr.count - done) < chunk ? tr.count - done : (int)chunk;
            int c = 0;
            opts.epoch = e;
            opts.iteration = (long)e * per_epoch + done / batch;
            double part = spide_train(tr.x, tr.y, n, perm + done, batch, &opts, &c, progress);
            if (part == SPIDE_DIVERGED) {
                double bad;
                long it = spide_divergence(&bad);
                diverged(e, it - (long)e * per_epoch, isnan(bad) ? "the loss is nan" : "the loss is inf",
                         (double)spide_schedule_lr(&opts, e, it), ckpt, have_good, &good);
                rc = 3;
                break;
            }
            if (part < 0) {
                fprintf(stderr, "error: out of memory for the augmentation buffer\n");
                rc = 1;
                break;
            }
            loss += part;
            correct += c;
            done += n;
            int mom = 0, bad = spide_nonfinite_tensor(&mom); /* (a NaN weight may silence spikes, not the loss) */
            if (bad >= 0) {
                char what[300];
                snprintf(what, sizeof what, "%s %s holds NaN or inf after its step",
                         mom ? "the momentum of tensor" : "tensor", spide_tensor_name(bad));
                long it = (long)e * per_epoch + (done - 1) / batch;
                diverged(e, it - (long)e * per_epoch, what, (double)spide_schedule_lr(&opts, e, it), ckpt, have_good,
                         &good);
                rc = 3;
                break;
            }
            if (ckpt && save_every > 0 && done < tr.count &&
                save_position(ckpt, (spide_position_t){e, done, correct, loss}, &good, &have_good) != 0) {
                rc = 1;
                break;
            }
        }
        if (rc) break;
        double secs = now() - t0;
        uint64_t events = spide_take_events();
        double test_acc = -1.0, test_loss = 0.0;
        if (te.count) test_acc = spide_evaluate(te.x, te.y, te.count, &test_loss);
        printf("epoch %d lr %g loss %.4f train_accuracy %.4f test_accuracy %.4f seconds %.2f samples_per_s %.1f "
               "events_per_s %.3g\n", e + 1, (double)lr_e, loss / tr.count, (double)correct / tr.count, test_acc,
               secs, tr.count / secs, (double)events / secs);
        fflush(stdout);
        if (ckpt && save_position(ckpt, (spide_position_t){e + 1, 0, 0, 0.0}, &good, &have_good) != 0) {
            rc = 1;
            break;
        }
    }
    free(perm);
    spide_dataset_free(&tr);
    if (te.count) spide_dataset_free(&te);
    return rc;
}
