/* spide.h -- the spidec C runtime: on-device SPIDE training.
 *
 * A model compiled by `spidec compile MODEL --target c` is model.c, which implements the model
 * interface below with every size a compile-time constant and all state in static arrays (the
 * step program's buffer plan), and weights.c with the initial tensors; this runtime adds what every model shares: the data-set and checkpoint formats (CRC32,
 * atomic saves), the training loop, and the command-line program.
 *
 * Training one sample (SPIDE, Xiao et al. 2023):
 *   forward   T steps of IF/LIF neurons; a spike adds one column of each outgoing weight matrix
 *             to the post population's potential (event-driven); rates a = count / T.
 *   backward  T_BACK steps of ternary neuron couples driven by the scaled loss gradient; a
 *             ternary spike of a couple (where its population's mask m = 1[0<a<1] is set) adds or
 *             subtracts one row of each incoming weight matrix to the pre couple's potential.
 *   update    every learnable tensor accumulates its local gradient estimate G (post couple rate
 *             times mask, outer product with the pre rate; masked rows skipped); at the end of a
 *             batch SGD: buf = momentum*buf + G + wd*W;  W -= lr/sf * buf.
 *
 * No function allocates memory during training. spide_train and spide_evaluate split the samples
 * of a batch over threads (spide_set_threads) with results bit-identical for any thread count; the
 * other functions act on the calling thread's sample state: call them from one thread at a time.
 */
#ifndef SPIDE_H
#define SPIDE_H

#include <stddef.h>
#include <stdint.h>

#include "spide_augment.h" /* spide_aug_mix64 / spide_aug_hash: the one splitmix64 of the runtime */

#ifdef __cplusplus
extern "C" {
#endif

/* Per-sample state (the step program's buffers, dropout scratch, logits, work counters) is
 * thread-local on the host, so spide_train can run the samples of a batch on several threads
 * (spide_set_threads); weights, their derived copies and the gradient sums stay shared. Boards
 * (SPIDE_BOARD_NAME) have no threads, and SPIDE_NO_THREADS builds a single-threaded host runtime. */
#if defined(SPIDE_BOARD_NAME) || defined(SPIDE_NO_THREADS)
#define SPIDE_LOCAL
#elif defined(__cplusplus) && __cplusplus >= 201103L
#define SPIDE_LOCAL thread_local
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define SPIDE_LOCAL _Thread_local
#else
#define SPIDE_LOCAL __thread /* (a GNU C extension: gcc and clang before C11) */
#endif

/* What a model's threads share and bring up to date on first use (model.c's lazily stepped weight
 * columns): the runtime's lock, and the loads and stores that publish under it. */
void spide_lock(void);
void spide_unlock(void);
#if defined(SPIDE_BOARD_NAME) || defined(SPIDE_NO_THREADS)
#define SPIDE_LOAD_ACQUIRE(x) (x)
#define SPIDE_STORE_RELEASE(x, v) ((x) = (v))
#else
#define SPIDE_LOAD_ACQUIRE(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#define SPIDE_STORE_RELEASE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELEASE)
#endif

/* ------------------------------------------------------------------ the model interface */

/** Static facts of a compiled model. */
typedef struct {
    const char *name;         /* the model's name */
    const char *hash;         /* 16 hex digits identifying the training graph (checkpoints) */
    int n_inputs;             /* values per input sample */
    int n_classes;            /* readout size (cross-entropy classes) */
    int n_tensors;            /* tensors (weights, biases) the model holds */
    int T, T_back;            /* time steps of the two stages */
    float lr, sf;             /* default learning rate, loss scale factor */
    int fixed;                /* 1: integer-only fixed-point arithmetic (spidec.fixed) */
} spide_info_t;

const spide_info_t *spide_info(void);

/** Name, element count and learnability of tensor i (0 <= i < n_tensors). */
const char *spide_tensor_name(int i);
size_t spide_tensor_size(int i);
int spide_tensor_learnable(int i);
/** Copy tensor i (row-major, the IR's layout) out of / into the model. */
void spide_get_tensor(int i, float *out);
void spide_set_tensor(int i, const float *in);
/** The accumulated local gradient estimate G of tensor i, and its momentum buffer. */
void spide_get_grad(int i, float *out);
void spide_get_momentum(int i, float *out);
void spide_set_momentum(int i, const float *in);

/** Forward stage of one sample; returns the readout's logits (n_classes floats, model-owned). */
const float *spide_forward(const float *x);
/** The readout's logits of the last forward stage. */
const float *spide_forward_logits(void);
/** The learning rate at an epoch: the compiled step schedule (milestones, gamma) applied to lr. */
float spide_lr_at(int epoch, float lr);
/** Forward + backward + local-gradient accumulation of one sample with label y; the loss
 *  gradient is scaled by sf / batch. Returns the sample's cross-entropy loss. */
float spide_learn(const float *x, int y, int batch);
/** spide_learn in its two halves, for threads: spide_learn_sample runs the forward and backward
 *  stages on the calling thread's state and returns the loss; spide_accumulate then adds that
 *  thread's last sample into the shared gradient sums (one thread at a time). spide_learn(x, y, b)
 *  is spide_learn_sample(x, y, b) followed by spide_accumulate(). */
float spide_learn_sample(const float *x, int y, int batch);
void spide_accumulate(void);
/** Bring the weights' derived copies (transposed, permuted, restricted) up to date. The first
 *  forward stage after a change of the weights does it itself; threads need it done before they start. */
void spide_prepare(void);
/** Bring every lazily stepped weight column current (the float runtime steps a dense input
 *  synapse's weight column by column, as its inputs are nonzero; see model.c's lz_step). A training
 *  stage brings the columns it reads current itself (on any of spide_train's threads: the first to
 *  reach a stale column catches it up under spide_lock, so the thread count changes no bit); reads
 *  outside training (evaluation, spide_get_tensor/momentum) leave the state as it is. Checkpoints
 *  call it, so a resumed run continues from exactly the saved state. */
void spide_sync(void);
/** The key of the next spide_learn's sample: its dropout masks are a pure function of it (see
 *  spidec/masks.py; spide_sample_key gives it). Models without dropout ignore it. */
void spide_set_sample_key(uint64_t key);

/** The dropout key of training sample `index` (its position in the training set) in `epoch`: the
 *  augmentation's hash (spide_augment.h) of a salted seed, so masks and crops draw apart
 *  (spidec/masks.py sample_keys). */
static inline uint64_t spide_sample_key(uint64_t seed, uint32_t epoch, uint32_t index) {
    return spide_aug_hash(seed ^ 0xD1B54A32D192ED03ull, epoch, index);
}

/** The per-sample input shape: writes up to 8 dimensions into dims, returns how many. */
int spide_input_shape(int *dims);

/** How spide_train trains: the learning-rate schedule (spidec/schedule.py), dropout keys and
 *  augmentation (spidec/augment.py, runtime/include/spide_augment.h). Zero-initialise, then set. */
typedef struct {
    float lr;                 /* base learning rate */
    int schedule;             /* SPIDE_LR_MODEL (the compiled milestones), _CONSTANT, _MULTISTEP, _COSINE, _LINEAR */
    const int *milestones;    /* SPIDE_LR_MULTISTEP: epochs where lr is multiplied by gamma */
    int n_milestones;
    float gamma;
    int epoch, epochs;        /* this epoch (from 0) and the run's total (cosine) */
    long iteration;           /* batches trained before this call since the start of training */
    int warmup;               /* linear warm-up over the first `warmup` batches (0: none) */
    uint64_t seed;            /* dropout keys and augmentation draws */
    int crop;                 /* random-crop padding (0: none) */
    int flip;                 /* random horizontal flips */
    const float *mean, *std;  /* normalisation after augmentation (NULL: none) */
    int n_stats;              /* 1: one mean/std for every channel; else one per channel */
    int steps;                /* SPIDE_LR_LINEAR: K, the rate falls in K equal steps over the run */
    long total;               /* SPIDE_LR_LINEAR: the run's batches, epochs * batches per epoch */
} spide_train_opts_t;
enum { SPIDE_LR_MODEL = 0, SPIDE_LR_CONSTANT = 1, SPIDE_LR_MULTISTEP = 2, SPIDE_LR_COSINE = 3, SPIDE_LR_LINEAR = 4 };
/** linear:K (spidec/schedule.py): lr * (1 - floor(K * iteration / total) / K) in double, the floor
 *  an integer division (64-bit: a board's long is 32); lr when total <= 0. The host trainer and the
 *  board program share it, so both give the same float. */
float spide_linear_lr(float lr, int steps, long iteration, long total);

/** The learning rate of batch `iteration` (counted from the start of training) in `epoch`. */
float spide_schedule_lr(const spide_train_opts_t *o, int epoch, long iteration);
/** Train one pass over perm[0..n) (dataset indices) in batches: each sample augmented and
 *  normalised as `o` says, its dropout key set, one SGD step per batch at the scheduled rate.
 *  Returns the summed loss; *correct counts right predictions. -1 when a scratch buffer cannot be
 *  allocated or augmentation does not fit the input shape; SPIDE_DIVERGED when a batch's loss is
 *  NaN or inf (the weights diverged): the pass stops there, before that batch's step, and
 *  spide_divergence says which batch. */
double spide_train(const float *x, const int32_t *y, int n, const int32_t *perm, int batch,
                   const spide_train_opts_t *o, int *correct,
                   void (*progress)(int done, int total, double loss, int correct));
#define SPIDE_DIVERGED (-2.0)
/** The batch (counted as o->iteration counts) at which the last spide_train stopped on a
 *  non-finite loss, *loss that loss; -1 when it did not stop so. */
long spide_divergence(double *loss);

/** The learning rate of the samples that follow (fixed point, online updates apply each sample's
 *  update at once; spide_train_epoch sets it). */
void spide_set_lr(float lr);
/** Call at the start of every epoch: restarts the periodic weight decay of online fixed-point
 *  updates, so a run resumed at an epoch boundary continues identically (a no-op elsewhere). */
void spide_begin_epoch(void);
/** Instead of spide_begin_epoch, for a run resumed `steps` steps (batches) into an epoch: restores
 *  what the epoch's steps so far left (the online weight-decay phase; a no-op elsewhere). */
void spide_resume_epoch(long steps);
/** Tensor i's storage (no copy): *elem_bytes is 4 (float) or 2 (fixed point, int16 W * 2^F). */
const void *spide_tensor_raw(int i, int *elem_bytes);
/** Fixed-point models: tensor i and its momentum buffer as the integers they are. */
void spide_get_qtensor(int i, int32_t *out);
void spide_get_qmomentum(int i, int32_t *out);
/** SGD step with the accumulated G (then cleared); lr as given. */
void spide_step(float lr);
/** Clear the accumulated G. */
void spide_zero_grads(void);
/** Spike counts of the last forward stage, all populations concatenated (spide_neurons() floats). */
int spide_neurons(void);
void spide_get_counts(float *out);
/** Forward rates of the last forward stage (count / T; LIF: the leak-weighted count over its
 *  norm), all populations concatenated in step order. */
void spide_get_rates(float *out);
/** Ternary spike sums of the last backward stage (beta * T_back), all couples concatenated. */
void spide_get_back_sums(float *out);
/** Ternary spikes (of either sign) each couple fired in the last backward stage. */
void spide_get_back_counts(float *out);
/** Synaptic events (spike deliveries of one weight column/row) since the last call. */
uint64_t spide_take_events(void);
/** Work since the last call: out[0..2] synaptic operations (spike-driven accumulates) of the
 *  forward, backward and update stages, out[3..5] multiply-accumulates of the same stages. Both
 *  count the calling thread's work and that of spide_train's threads (spide_merge_work). */
void spide_take_work(uint64_t *out);
/** Add the calling thread's work counters into the model's totals (a thread of spide_train does
 *  as it ends, under the runtime's lock). */
void spide_merge_work(void);

/* ------------------------------------------------------------------ threads */

/** Threads of spide_train and spide_evaluate: n <= 0 means the cores available (the default). The
 *  samples of a batch are handed out one at a time; each runs its stages on its thread's state and
 *  adds into the gradient sums (and the loss) in sample order, so the result is bit-identical for
 *  any n. Fixed-point models and boards run on one thread, as do SPIDE_NO_THREADS builds. */
void spide_set_threads(int n);
/** The threads spide_train will use (at most one a sample of a batch): 1 where the model or the
 *  build runs single-threaded. */
int spide_threads(void);

/* ------------------------------------------------------------------ training helpers */

/** Train on n samples (x: n * n_inputs floats, y: n labels) for one epoch in the given order
 *  (perm, or NULL for 0..n-1), batch by batch. Returns the summed loss; *correct gets the number
 *  of correctly classified training samples. */
double spide_train_epoch(const float *x, const int32_t *y, int n, const int32_t *perm, int batch, float lr,
                         int *correct, void (*progress)(int done, int total, double loss, int correct));
/** The sample order of every trainer, host executable and board alike: position i of epoch e
 *  (0, 1, ...) under seed S is spide_order_index(S, e, n, i), a keyed permutation of 0..n-1
 *  computed without an index array (spidec.backends.c.epoch_order is the same in Python). */
uint32_t spide_order_index(uint64_t seed, uint32_t epoch, uint32_t n, uint32_t i);
/** perm[0..n) = the whole order of epoch e. */
void spide_order(uint64_t seed, uint32_t epoch, int32_t *perm, int n);
/** Accuracy on n samples; *loss gets the mean cross-entropy. */
double spide_evaluate(const float *x, const int32_t *y, int n, double *loss);

/* ------------------------------------------------------------------ files */

/* Data set: "SPDS", version, dtype (1 = float32), per-sample dims, count, classes, samples,
 * int32 labels, CRC32 of everything before it. Checkpoint: "SPCK", version, model hash, epoch,
 * float count, every tensor then every momentum buffer, CRC32. Little-endian. */
#define SPIDE_FORMAT_VERSION 1u
/* Data sets of version 2 may have classes 0: samples without labels (no label array), which only
 * predict reads. Labelled data sets are written as version 1 (what board builds read). */
#define SPIDE_DATA_VERSION_UNLABELED 2u

typedef struct {
    int count;        /* samples */
    int size;         /* values per sample */
    int classes;      /* label range 0..classes-1; 0: no labels (y NULL) */
    float *x;         /* count * size */
    int32_t *y;       /* count, or NULL when classes is 0 */
} spide_dataset_t;

/** Read a data set; 0 on success, else -1 with a message in err (errlen bytes). The sample size
 *  must equal `expect_size` (when > 0). Free with spide_dataset_free. */
int spide_dataset_load(const char *path, int expect_size, spide_dataset_t *out, char *err, size_t errlen);
void spide_dataset_free(spide_dataset_t *d);

/* Checkpoint format 2 adds where in an epoch the checkpoint stopped (spide_position_t) after the
 * float count: samples done (u32), correct (u32), loss (f64). Version 1 files still load (at an
 * epoch boundary). A checkpoint never holds NaN or inf: saving refuses, loading refuses. */
#define SPIDE_CHECKPOINT_VERSION 2u

/** Where training stands: `epoch` epochs complete, then `done` samples of the next one trained
 *  (0 at an epoch boundary; --save-every checkpoints inside an epoch), which summed `loss` and
 *  classified `correct` right (so a resumed epoch reports the whole epoch). */
typedef struct {
    int epoch;
    int done;
    int correct;
    double loss;
} spide_position_t;

/** Save the model's tensors and momentum atomically (temporary file PATH.tmp<pid>, fsync, rename).
 *  -1 on failure; -2 (nothing written) when a tensor or momentum buffer holds NaN or inf. */
int spide_checkpoint_save(const char *path, int epoch, char *err, size_t errlen);
int spide_checkpoint_save_at(const char *path, const spide_position_t *at, char *err, size_t errlen);
/** Load a checkpoint written for this model; the model is unchanged on failure. A regular file
 *  only (a FIFO or device is refused unread), its size checked against the model before reading. */
int spide_checkpoint_load(const char *path, int *epoch, char *err, size_t errlen);
int spide_checkpoint_load_at(const char *path, spide_position_t *at, char *err, size_t errlen);
/** Remove PATH.tmp<pid> files that saves killed mid-write left (only those whose process is gone);
 *  returns how many. */
int spide_checkpoint_remove_stale(const char *path);
/** The first tensor (i of spide_tensor_name) holding NaN or inf, with *momentum 1 when it is the
 *  tensor's momentum buffer that does; -1 when every value is finite (or no scratch memory). */
int spide_nonfinite_tensor(int *momentum);
/** The largest epoch a checkpoint may hold (and --epochs may ask for). */
#define SPIDE_MAX_EPOCH 1000000u

uint32_t spide_crc32(uint32_t crc, const void *data, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* SPIDE_H */
