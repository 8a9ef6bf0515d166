/* spide_train.c -- the training and evaluation loops shared by every compiled model.
 *
 * Threads (host builds): a pool lives for one spide_train or spide_evaluate call. The samples of
 * a batch are handed out one at a time; a thread runs a sample's stages on its own state (the
 * model's SPIDE_LOCAL variables), then waits for its turn: sample k adds into the shared gradient
 * sums, the loss and the correct count after samples 0..k-1 did, from the thread that learned it.
 * Every sum thus receives its terms in the order of the one-thread loop, and the weights are
 * bit-identical for any number of threads. The SGD step runs between batches on the calling
 * thread while the others wait, so no thread reads the weights while they change. */
#if !defined(SPIDE_BOARD_NAME) && !defined(SPIDE_NO_THREADS)
#define SPIDE_THREADS 1
#define _GNU_SOURCE /* pthreads, sysconf and dl_iterate_phdr under -std=c11 */
#endif
#include "spide.h"

#include "spide_augment.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef SPIDE_THREADS
#include <pthread.h>
#include <unistd.h>
#ifdef __linux__
#include <link.h>
#endif
#endif

float spide_linear_lr(float lr, int steps, long iteration, long total) {
    if (total <= 0 || steps < 1) return lr;
    long long q = (long long)steps * (long long)iteration / (long long)total;
    return (float)((double)lr * (1.0 - (double)q / steps));
}

float spide_schedule_lr(const spide_train_opts_t *o, int epoch, long iteration) {
    double lr = o->lr;
    if (o->schedule == SPIDE_LR_MODEL) {
        lr = spide_lr_at(epoch, o->lr);
    } else if (o->schedule == SPIDE_LR_MULTISTEP) {
        for (int i = 0; i < o->n_milestones; i++)
            if (epoch >= o->milestones[i]) lr *= o->gamma;
    } else if (o->schedule == SPIDE_LR_COSINE) {
        lr = o->lr * 0.5 * (1.0 + cos(3.14159265358979323846 * epoch / (o->epochs > 0 ? o->epochs : 1)));
    } else if (o->schedule == SPIDE_LR_LINEAR && o->total > 0 && o->steps >= 1) {
        /* spide_linear_lr's formula, kept in double until after the warmup (as spidec.schedule.lr_at) */
        long long q = (long long)o->steps * (long long)iteration / (long long)o->total;
        lr = o->lr * (1.0 - (double)q / o->steps);
    }
    if (o->warmup > 0 && iteration < o->warmup) lr = lr * (double)(iteration + 1) / o->warmup;
    return (float)lr;
}

/* ------------------------------------------------------------------ threads */

static int threads_wanted; /* spide_set_threads; 0: the cores available */

void spide_set_threads(int n) { threads_wanted = n > 0 ? n : 0; }

int spide_threads(void) {
#ifdef SPIDE_THREADS
    if (spide_info()->fixed) return 1; /* plain static state; online updates move the weights every sample */
    if (threads_wanted > 0) return threads_wanted;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return cores > 1 ? (int)(cores < 1024 ? cores : 1024) : 1;
#else
    return 1;
#endif
}

/* the lock of what a model's threads bring up to date on first use (spide.h: spide_lock) */
#ifdef SPIDE_THREADS
static pthread_mutex_t model_lock = PTHREAD_MUTEX_INITIALIZER;
void spide_lock(void) { pthread_mutex_lock(&model_lock); }
void spide_unlock(void) { pthread_mutex_unlock(&model_lock); }
#else
void spide_lock(void) {}
void spide_unlock(void) {}
#endif

/* what one sample adds to the sums */
typedef struct {
    double loss;
    int ok;
} item_t;

typedef struct pool pool_t;
typedef struct {
    pool_t *p;
    int t; /* the thread's number (its augmentation buffer) */
} helper_arg_t;

struct pool {
    /* the job: work(k) on any thread, then commit(k) on that thread, in the order of k */
    item_t (*work)(pool_t *p, int k, float *buf);
    void (*commit)(pool_t *p, int k, item_t r);
    const float *x;
    const int32_t *y, *perm;
    const spide_train_opts_t *o;
    int n_inputs, n_classes, prepare;
    uint32_t frames, channels, h, w;
    int start, count, batch; /* the round: samples start .. start + count - 1 (of perm), batch size */
    double loss;             /* the sums, committed in sample order */
    int ok;
    int n;                   /* threads, the calling one included */
    float *bufs;             /* an augmentation buffer a thread (n_inputs floats each), or NULL */
#ifdef SPIDE_THREADS
    pthread_t *tid;          /* [1 .. n): the helpers (NULL: none started) */
    helper_arg_t *args;
    pthread_mutex_t mu;
    pthread_cond_t wake, turn_cv, idle;
    long round;              /* rounds started: a helper waits for the next */
    int next, turn, busy, quit; /* sample to hand out next, sample to commit next, helpers in the round */
#endif
};

/* an idle pool for the job (work, commit) over the samples x, y */
static void pool_init(pool_t *p, item_t (*work)(pool_t *, int, float *), void (*commit)(pool_t *, int, item_t),
                      const float *x, const int32_t *y) {
    const spide_info_t *info = spide_info();
    memset(p, 0, sizeof *p);
    p->work = work;
    p->commit = commit;
    p->x = x;
    p->y = y;
    p->n_inputs = info->n_inputs;
    p->n_classes = info->n_classes;
}

static float *buf_of(pool_t *p, int t) { return p->bufs ? p->bufs + (size_t)t * (size_t)p->n_inputs : NULL; }

static int predicted(const float *logits, int n_classes) {
    int best = 0;
    for (int c = 1; c < n_classes; c++)
        if (logits[c] > logits[best]) best = c;
    return best;
}

#ifdef SPIDE_THREADS
/* one thread's share of a round: samples until none is left */
static void share(pool_t *p, float *buf) {
    pthread_mutex_lock(&p->mu);
    for (;;) {
        int k = p->next < p->count ? p->next++ : -1;
        pthread_mutex_unlock(&p->mu);
        if (k < 0) return;
        item_t r = p->work(p, k, buf);
        pthread_mutex_lock(&p->mu);
        while (p->turn != k) pthread_cond_wait(&p->turn_cv, &p->mu);
        pthread_mutex_unlock(&p->mu);
        p->commit(p, k, r); /* alone: no other thread holds turn k (the lock orders the commits) */
        pthread_mutex_lock(&p->mu);
        p->turn++;
        pthread_cond_broadcast(&p->turn_cv);
    }
}

static void *helper(void *arg) {
    pool_t *p = ((helper_arg_t *)arg)->p;
    float *buf = buf_of(p, ((helper_arg_t *)arg)->t);
    long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->round == seen && !p->quit) pthread_cond_wait(&p->wake, &p->mu);
        if (p->quit) break;
        seen = p->round;
        pthread_mutex_unlock(&p->mu);
        share(p, buf);
        pthread_mutex_lock(&p->mu);
        if (--p->busy == 0) pthread_cond_signal(&p->idle);
    }
    spide_merge_work(); /* this thread's work counters into the model's totals (under the lock) */
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

#ifdef __linux__
static int add_tls(struct dl_phdr_info *info, size_t size, void *total) {
    (void)size;
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_TLS) *(size_t *)total += info->dlpi_phdr[i].p_memsz;
    return 0;
}
#endif

/* glibc carves a thread's static thread-local storage (in an executable: the model's state) out of
 * its stack: ask for the usual stack plus all of it, so a large model still leaves a full stack */
static void set_stack_size(pthread_attr_t *attr) {
    size_t size = 0, tls = 0;
    if (pthread_attr_getstacksize(attr, &size) != 0 || size < ((size_t)8 << 20)) size = (size_t)8 << 20;
#ifdef __linux__
    dl_iterate_phdr(add_tls, &tls);
#endif
    pthread_attr_setstacksize(attr, size + ((tls + 65535) & ~(size_t)65535));
}
#endif

/* Start n - 1 helper threads (fewer if the system refuses more); 0, or -1 without memory for the
 * augmentation buffers. */
static int pool_start(pool_t *p, int n) {
    p->n = n > 1 ? n : 1;
    p->bufs = NULL;
    p->loss = 0.0;
    p->ok = 0;
    if (p->prepare && !(p->bufs = (float *)malloc((size_t)p->n * (size_t)p->n_inputs * sizeof(float)))) return -1;
#ifdef SPIDE_THREADS
    p->tid = NULL;
    p->args = NULL;
    p->round = 0;
    p->next = p->turn = p->busy = p->quit = 0;
    if (p->n == 1) return 0;
    p->tid = (pthread_t *)malloc((size_t)p->n * sizeof(pthread_t));
    p->args = (helper_arg_t *)malloc((size_t)p->n * sizeof(helper_arg_t));
    if (!p->tid || !p->args) { /* no room for the threads' records: run on this thread */
        free(p->tid);
        free(p->args);
        p->tid = NULL;
        p->args = NULL;
        p->n = 1;
        return 0;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->turn_cv, NULL);
    pthread_cond_init(&p->idle, NULL);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    set_stack_size(&attr);
    int started = 1;
    while (started < p->n) {
        p->args[started].p = p;
        p->args[started].t = started;
        if (pthread_create(&p->tid[started], &attr, helper, &p->args[started]) != 0) break;
        started++;
    }
    pthread_attr_destroy(&attr);
    p->n = started;
#endif
    return 0;
}

/* One round: samples 0 .. count-1, on every thread of the pool (the caller's too). */
static void pool_run(pool_t *p, int count) {
    spide_prepare(); /* the weights' copies, here and not in a thread's forward stage */
#ifdef SPIDE_THREADS
    if (p->n > 1 && count > 1) {
        pthread_mutex_lock(&p->mu);
        p->count = count;
        p->next = p->turn = 0;
        p->busy = p->n - 1;
        p->round++;
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
        share(p, buf_of(p, 0));
        pthread_mutex_lock(&p->mu);
        while (p->busy > 0) pthread_cond_wait(&p->idle, &p->mu); /* every sample committed, helpers idle */
        pthread_mutex_unlock(&p->mu);
        return;
    }
#endif
    p->count = count;
    float *buf = buf_of(p, 0);
    for (int k = 0; k < count; k++) p->commit(p, k, p->work(p, k, buf));
}

static void pool_stop(pool_t *p) {
#ifdef SPIDE_THREADS
    if (p->tid) {
        pthread_mutex_lock(&p->mu);
        p->quit = 1;
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
        for (int t = 1; t < p->n; t++) pthread_join(p->tid[t], NULL);
        pthread_cond_destroy(&p->idle);
        pthread_cond_destroy(&p->turn_cv);
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->mu);
        free(p->tid);
        free(p->args);
    }
#endif
    free(p->bufs);
}

/* ------------------------------------------------------------------ training */

#ifndef SPIDE_BOARD_NAME /* (boards run their own loop: runtime/board/spide_board.c; no heap there) */
/* the sample layout augmentation reads: frames x channels x h x w */
static int layout(uint32_t *frames, uint32_t *channels, uint32_t *h, uint32_t *w) {
    int d[8], nd = spide_input_shape(d);
    *frames = 1;
    if (nd == 3) { *channels = (uint32_t)d[0]; *h = (uint32_t)d[1]; *w = (uint32_t)d[2]; return 0; }
    if (nd == 2) { *channels = 1; *h = (uint32_t)d[0]; *w = (uint32_t)d[1]; return 0; }
    return -1;
}

/* sample k of the batch: augmented and normalised into this thread's buffer, its dropout key set,
 * its stages run on this thread; the prediction from its logits */
static item_t learn_one(pool_t *p, int k, float *buf) {
    const spide_train_opts_t *o = p->o;
    int i = p->perm ? p->perm[p->start + k] : p->start + k;
    const float *xi = p->x + (size_t)i * (size_t)p->n_inputs;
    if (buf) {
        spide_aug_sample(xi, buf, p->frames, p->channels, p->h, p->w, o->seed, (uint32_t)o->epoch, (uint32_t)i,
                         (uint32_t)o->crop, o->flip, o->mean, o->std, (uint32_t)o->n_stats);
        xi = buf;
    }
    spide_set_sample_key(spide_sample_key(o->seed, (uint32_t)o->epoch, (uint32_t)i));
    item_t r;
    r.loss = spide_learn_sample(xi, p->y[i], p->batch);
    r.ok = predicted(spide_forward_logits(), p->n_classes) == p->y[i];
    return r;
}

static void learn_commit(pool_t *p, int k, item_t r) {
    (void)k;
    spide_accumulate();
    p->loss += r.loss;
    p->ok += r.ok;
}

static int min3(int a, int b, int c) { return a < b ? (a < c ? a : c) : (b < c ? b : c); }

static long diverged_at = -1; /* spide_divergence */
static double diverged_loss;

long spide_divergence(double *loss) {
    if (loss) *loss = diverged_loss;
    return diverged_at;
}

double spide_train(const float *x, const int32_t *y, int n, const int32_t *perm, int batch,
                   const spide_train_opts_t *o, int *correct,
                   void (*progress)(int done, int total, double loss, int correct)) {
    const spide_info_t *info = spide_info();
    pool_t p;
    pool_init(&p, learn_one, learn_commit, x, y);
    p.perm = perm;
    p.o = o;
    p.frames = p.channels = p.h = 1;
    p.w = (uint32_t)info->n_inputs;
    int augment = o->crop > 0 || o->flip;
    p.prepare = augment || (o->mean && o->std);
    /* a flat input keeps the layout above: normalisation reads it as one channel, augmentation cannot */
    if (p.prepare && layout(&p.frames, &p.channels, &p.h, &p.w) != 0 && augment) return -1;
    if (batch < 1) batch = 1;
    /* one thread a sample of a batch at most: batch 1 runs here, with no thread started */
    if (pool_start(&p, min3(spide_threads(), batch, n > 0 ? n : 1)) != 0) return -1;
    long it = o->iteration;
    diverged_at = -1;
    for (int start = 0; start < n; start += batch, it++) {
        int b = n - start < batch ? n - start : batch;
        float lr = spide_schedule_lr(o, o->epoch, it);
        spide_set_lr(lr);
        p.start = start;
        p.batch = b;
        double before = p.loss;
        pool_run(&p, b);
        if (!isfinite(p.loss - before)) { /* diverged: no step with it (the caller keeps its last good state) */
            diverged_at = it;
            diverged_loss = p.loss - before;
            spide_zero_grads(); /* (its gradients dropped: a caller that restores the weights starts clean) */
            pool_stop(&p);
            if (correct) *correct = p.ok;
            return SPIDE_DIVERGED;
        }
        spide_step(lr);
        if (progress) progress(start + b, n, p.loss, p.ok);
    }
    pool_stop(&p);
    if (correct) *correct = p.ok;
    return p.loss;
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

/* ------------------------------------------------------------------ evaluation */

static item_t eval_one(pool_t *p, int k, float *buf) {
    (void)buf;
    const float *logits = spide_forward(p->x + (size_t)k * (size_t)p->n_inputs);
    float mx = logits[0];
    for (int c = 1; c < p->n_classes; c++)
        if (logits[c] > mx) mx = logits[c];
    double z = 0.0;
    for (int c = 0; c < p->n_classes; c++) z += exp((double)(logits[c] - mx));
    item_t r;
    r.loss = log(z) + mx - logits[p->y[k]];
    r.ok = predicted(logits, p->n_classes) == p->y[k];
    return r;
}

static void eval_commit(pool_t *p, int k, item_t r) {
    (void)k;
    p->loss += r.loss;
    p->ok += r.ok;
}

double spide_evaluate(const float *x, const int32_t *y, int n, double *loss) {
    pool_t p;
    pool_init(&p, eval_one, eval_commit, x, y);
    int threads = spide_threads();
    pool_start(&p, threads < n ? threads : n); /* (no buffers to allocate: it cannot fail) */
    pool_run(&p, n);
    pool_stop(&p);
    if (loss) *loss = n ? p.loss / n : 0.0;
    return n ? (double)p.ok / n : 0.0;
}

/* The sample order: a keyed permutation of 0..n-1 computed position by position (no index array, so
 * a board streaming 60,000 samples keeps its RAM): a 4-round Feistel network on the smallest even
 * number of bits holding n, keyed by splitmix64 of (seed, epoch), cycle-walked into [0, n) (a
 * bijection of [0, 2^bits) restricted to [0, n) by walking stays a bijection; 2^bits < 4n, so a
 * position walks fewer than 4 times on average). spidec.backends.c.epoch_order is the twin. */
uint32_t spide_order_index(uint64_t seed, uint32_t epoch, uint32_t n, uint32_t i) {
    if (n <= 1) return 0;
    int bits = 2;
    while (bits < 32 && ((uint64_t)1 << bits) < n) bits += 2;
    const int h = bits / 2;
    const uint64_t mask = ((uint64_t)1 << h) - 1;
    const uint64_t key = spide_aug_mix64(spide_aug_mix64(seed) ^ ((uint64_t)epoch << 32 | 0x5EEDu));
    uint64_t x = i;
    do {
        uint64_t l = x >> h, r = x & mask;
        for (uint64_t round = 0; round < 4; round++) {
            uint64_t f = spide_aug_mix64(key ^ (round << 40) ^ r) & mask;
            uint64_t t = l ^ f;
            l = r;
            r = t;
        }
        x = l << h | r;
    } while (x >= n);
    return (uint32_t)x;
}

void spide_order(uint64_t seed, uint32_t epoch, int32_t *perm, int n) {
    for (int i = 0; i < n; i++) perm[i] = (int32_t)spide_order_index(seed, epoch, (uint32_t)n, (uint32_t)i);
}
