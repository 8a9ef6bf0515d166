/* spide_io.c -- data-set and checkpoint files of the spidec C runtime (see spide.h). */
#define _POSIX_C_SOURCE 200809L
#include "spide.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char DATA_MAGIC[4] = {'S', 'P', 'D', 'S'};
static const char CKPT_MAGIC[4] = {'S', 'P', 'C', 'K'};

static int fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

uint32_t spide_crc32(uint32_t crc, const void *data, size_t n) {
    static uint32_t table[256];
    static int ready = 0;
    if (!ready) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        ready = 1;
    }
    const unsigned char *p = (const unsigned char *)data;
    crc = ~crc;
    while (n--) crc = table[(crc ^ *p++) & 0xFFu] ^ (crc >> 8);
    return ~crc;
}

/* What a reader checks in a file's first bytes (at most HEAD_BYTES) and its size before the body is
 * read: -1 (with the message) refuses the file unread, 0 reads it whole. */
#define HEAD_BYTES 64u
typedef int (*head_check_t)(const char *path, const unsigned char *head, size_t n, uint64_t size, void *ctx,
                            char *err, size_t errlen);

/* A whole regular file in memory, once `check` accepted its head and size: a FIFO, a device or a
 * folder is refused before any read (opened without blocking), and a header that does not fit the
 * file's size or the model is refused before the body is allocated. */
static unsigned char *read_all(const char *path, size_t *len, head_check_t check, void *ctx, char *err,
                               size_t errlen) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* (O_NONBLOCK: a FIFO opens without a writer) */
    if (fd < 0) {
        fail(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        fail(err, errlen, "%s: %s", path, strerror(e));
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        fail(err, errlen, "%s: not a regular file (%s)", path,
             S_ISDIR(st.st_mode) ? "a folder" : S_ISFIFO(st.st_mode) ? "a pipe"
             : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device" : "a socket or special file");
        return NULL;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size > (uint64_t)(SIZE_MAX / 2)) {
        close(fd);
        fail(err, errlen, "%s: %llu bytes is too large to read", path, (unsigned long long)size);
        return NULL;
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        fail(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    unsigned char head[HEAD_BYTES];
    size_t nh = fread(head, 1, size < HEAD_BYTES ? (size_t)size : HEAD_BYTES, f);
    if (check && check(path, head, nh, size, ctx, err, errlen) != 0) {
        fclose(f);
        return NULL;
    }
    unsigned char *buf = (unsigned char *)malloc(size ? (size_t)size : 1u);
    if (!buf) {
        fclose(f);
        fail(err, errlen, "%s: out of memory for its %llu bytes", path, (unsigned long long)size);
        return NULL;
    }
    memcpy(buf, head, nh);
    size_t n = nh + (nh < size ? fread(buf + nh, 1, (size_t)size - nh, f) : 0);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        fail(err, errlen, "%s: read error", path);
        return NULL;
    }
    *len = n; /* (a file that shrank while read: its bytes so far, which the CRC check refuses) */
    return buf;
}

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t get_u64(const unsigned char *p) { return (uint64_t)get_u32(p) | ((uint64_t)get_u32(p + 4) << 32); }

/* A data set's header against the file's size and the model's input (ctx: expect_size), before its
 * body is read: a file larger than its header announces (labels included), or samples of another
 * size, are refused unread. Headers it cannot parse are left to the full read's checks. */
static int data_head_check(const char *path, const unsigned char *head, size_t n, uint64_t size, void *ctx,
                           char *err, size_t errlen) {
    int expect_size = *(const int *)ctx;
    if (n < 16 || memcmp(head, DATA_MAGIC, 4) != 0) return 0;
    uint32_t ndim = get_u32(head + 12);
    if (ndim == 0 || ndim > 8 || n < 16 + 4 * (size_t)ndim + 12) return 0;
    uint64_t values = 1;
    for (uint32_t i = 0; i < ndim; i++) {
        uint32_t d = get_u32(head + 16 + 4 * i);
        if (d == 0 || values * d > (1u << 30)) return 0;
        values *= d;
    }
    uint64_t count = get_u64(head + 16 + 4 * ndim);
    if (count == 0 || count > (1u << 30)) return 0;
    if (expect_size > 0 && values != (uint64_t)expect_size)
        return fail(err, errlen, "%s: samples hold %llu values, the model's input holds %d", path,
                    (unsigned long long)values, expect_size);
    if (size > 16 + 4 * (uint64_t)ndim + 12 + count * values * 4 + count * 4 + 4)
        return fail(err, errlen, "%s: %llu samples of %llu values do not fit the file's %llu bytes", path,
                    (unsigned long long)count, (unsigned long long)values, (unsigned long long)size);
    return 0;
}

int spide_dataset_load(const char *path, int expect_size, spide_dataset_t *out, char *err, size_t errlen) {
    memset(out, 0, sizeof(*out));
    size_t len = 0;
    unsigned char *buf = read_all(path, &len, data_head_check, &expect_size, err, errlen);
    if (!buf) return -1;
    int rc = -1;
    if (len < 4 + 4 + 4 + 4 + 8 + 4 + 4 || memcmp(buf, DATA_MAGIC, 4) != 0) {
        fail(err, errlen, "%s: not a spidec data set (bad magic or too short)", path);
        goto done;
    }
    uint32_t stored = get_u32(buf + len - 4);
    if (spide_crc32(0, buf, len - 4) != stored) {
        fail(err, errlen, "%s: CRC mismatch: the file is corrupt or truncated", path);
        goto done;
    }
    uint32_t version = get_u32(buf + 4), dtype = get_u32(buf + 8), ndim = get_u32(buf + 12);
    if (version != SPIDE_FORMAT_VERSION && version != SPIDE_DATA_VERSION_UNLABELED) {
        fail(err, errlen, "%s: format version %u, this runtime reads %u and %u", path, version, SPIDE_FORMAT_VERSION,
             SPIDE_DATA_VERSION_UNLABELED);
        goto done;
    }
    if (dtype != 1 || ndim == 0 || ndim > 8) {
        fail(err, errlen, "%s: unsupported dtype %u or %u dimensions", path, dtype, ndim);
        goto done;
    }
    size_t off = 16 + 4 * (size_t)ndim;
    if (len < off + 8 + 4 + 4) {
        fail(err, errlen, "%s: truncated header", path);
        goto done;
    }
    uint64_t size = 1;
    for (uint32_t i = 0; i < ndim; i++) {
        uint32_t d = get_u32(buf + 16 + 4 * i);
        if (d == 0 || size * d > (1u << 30)) {
            fail(err, errlen, "%s: bad sample shape", path);
            goto done;
        }
        size *= d;
    }
    uint64_t count = get_u64(buf + off);
    uint32_t classes = get_u32(buf + off + 8);
    off += 12;
    if (count == 0) {
        fail(err, errlen, "%s: the data set is empty", path);
        goto done;
    }
    /* classes 0 (version 2 only): samples without labels, no label array */
    int labelled = classes != 0 || version != SPIDE_DATA_VERSION_UNLABELED;
    if (labelled && (classes == 0 || classes > 0x7FFFFFFFu)) { /* (an int downstream: 2^31 and above would wrap) */
        fail(err, errlen, "%s: %u classes is outside 1..2147483647", path, classes);
        goto done;
    }
    if (count > (1u << 30) || len != off + count * size * 4 + (labelled ? count * 4 : 0) + 4) {
        fail(err, errlen, "%s: %llu samples of %llu values do not fit the file's %zu bytes", path,
             (unsigned long long)count, (unsigned long long)size, len);
        goto done;
    }
    if (expect_size > 0 && size != (uint64_t)expect_size) {
        fail(err, errlen, "%s: samples hold %llu values, the model's input holds %d", path,
             (unsigned long long)size, expect_size);
        goto done;
    }
    out->x = (float *)malloc(count * size * sizeof(float));
    out->y = labelled ? (int32_t *)malloc(count * sizeof(int32_t)) : NULL;
    if (!out->x || (labelled && !out->y)) {
        fail(err, errlen, "%s: out of memory", path);
        goto done;
    }
    memcpy(out->x, buf + off, count * size * 4);
    if (labelled) memcpy(out->y, buf + off + count * size * 4, count * 4);
    for (uint64_t i = 0; labelled && i < count; i++) {
        if (out->y[i] < 0 || (uint32_t)out->y[i] >= classes) {
            fail(err, errlen, "%s: label %d of sample %llu is outside 0..%u", path, out->y[i],
                 (unsigned long long)i, classes ? classes - 1 : 0);
            goto done;
        }
    }
    for (uint64_t i = 0; i < count * size; i++) {
        float v = out->x[i];
        if (v != v || v > 3.0e38f || v < -3.0e38f) {
            fail(err, errlen, "%s: sample %llu holds NaN or inf", path, (unsigned long long)(i / size));
            goto done;
        }
    }
    out->count = (int)count;
    out->size = (int)size;
    out->classes = (int)classes;
    rc = 0;
done:
    free(buf);
    if (rc != 0) spide_dataset_free(out);
    return rc;
}

void spide_dataset_free(spide_dataset_t *d) {
    free(d->x);
    free(d->y);
    memset(d, 0, sizeof(*d));
}

/* ------------------------------------------------------------------ checkpoints */

typedef struct {
    FILE *f;
    uint32_t crc;
    int ok;
} writer_t;

static void put(writer_t *w, const void *data, size_t n) {
    if (!w->ok) return;
    if (fwrite(data, 1, n, w->f) != n) w->ok = 0;
    w->crc = spide_crc32(w->crc, data, n);
}

static void put_u32(writer_t *w, uint32_t v) {
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16), (unsigned char)(v >> 24)};
    put(w, b, 4);
}

static size_t payload_floats(void) {
    const spide_info_t *info = spide_info();
    size_t n = 0;
    for (int i = 0; i < info->n_tensors; i++) {
        n += spide_tensor_size(i);
        if (spide_tensor_learnable(i)) n += spide_tensor_size(i);
    }
    return n;
}

static size_t max_tensor(void) {
    size_t m = 0;
    for (int i = 0; i < spide_info()->n_tensors; i++)
        if (spide_tensor_size(i) > m) m = spide_tensor_size(i);
    return m;
}

static int all_finite(const float *v, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return 0;
    return 1;
}

int spide_nonfinite_tensor(int *momentum) {
    const spide_info_t *info = spide_info();
    if (info->fixed) return -1; /* (integers: its momentum travels as raw int32 bits, no float) */
    float *buf = (float *)malloc((max_tensor() + 1) * sizeof(float));
    if (!buf) return -1;
    int found = -1;
    for (int pass = 0; pass < 2 && found < 0; pass++) {
        for (int i = 0; i < info->n_tensors; i++) {
            if (pass == 1 && !spide_tensor_learnable(i)) continue;
            if (pass == 0) spide_get_tensor(i, buf); else spide_get_momentum(i, buf);
            if (!all_finite(buf, spide_tensor_size(i))) {
                found = i;
                if (momentum) *momentum = pass;
                break;
            }
        }
    }
    free(buf);
    return found;
}

/* SPIDE_TEST_KILL_IN_SAVE (fault injection for the tests): "1" kills the process in the middle of
 * writing a checkpoint, "after:N" right after the N-th save of the process completed */
static int saves_done;

int spide_checkpoint_save_at(const char *path, const spide_position_t *at, char *err, size_t errlen) {
    const spide_info_t *info = spide_info();
    spide_sync(); /* a sync point: a resumed run continues from exactly this state (see spide_sync) */
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return fail(err, errlen, "%s: path too long", path);
    float *buf = (float *)malloc((max_tensor() + 1) * sizeof(float));
    if (!buf) return fail(err, errlen, "out of memory");
    writer_t w = {fopen(tmp, "wb"), 0, 1};
    if (!w.f) {
        free(buf);
        return fail(err, errlen, "%s: %s", tmp, strerror(errno));
    }
    put(&w, CKPT_MAGIC, 4);
    put_u32(&w, SPIDE_CHECKPOINT_VERSION);
    put(&w, info->hash, 16);
    put_u32(&w, (uint32_t)at->epoch);
    uint64_t n = payload_floats();
    put_u32(&w, (uint32_t)n);
    put_u32(&w, (uint32_t)(n >> 32));
    uint64_t loss_bits;
    memcpy(&loss_bits, &at->loss, 8);
    put_u32(&w, (uint32_t)at->done);
    put_u32(&w, (uint32_t)at->correct);
    put_u32(&w, (uint32_t)loss_bits);
    put_u32(&w, (uint32_t)(loss_bits >> 32));
    const char *crash = getenv("SPIDE_TEST_KILL_IN_SAVE");
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < info->n_tensors; i++) {
            if (pass == 1 && !spide_tensor_learnable(i)) continue;
            if (pass == 0) spide_get_tensor(i, buf); else spide_get_momentum(i, buf);
            if (!info->fixed && !all_finite(buf, spide_tensor_size(i))) { /* a diverged state is never saved */
                fclose(w.f);
                unlink(tmp);
                free(buf);
                fail(err, errlen, "%s: not saved: %s %s holds NaN or inf", path, pass ? "the momentum of tensor" : "tensor",
                     spide_tensor_name(i));
                return -2;
            }
            put(&w, buf, spide_tensor_size(i) * sizeof(float));
            if (crash && !strcmp(crash, "1") && pass == 0 && i == info->n_tensors / 2) {
                fflush(w.f);
                raise(SIGKILL);
            }
        }
    }
    uint32_t crc = w.crc;
    put_u32(&w, crc);
    free(buf);
    if (w.ok && fflush(w.f) != 0) w.ok = 0;
    if (w.ok && fsync(fileno(w.f)) != 0) w.ok = 0;
    if (fclose(w.f) != 0) w.ok = 0;
    if (!w.ok) {
        unlink(tmp);
        return fail(err, errlen, "%s: write failed (%s)", tmp, strerror(errno));
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return fail(err, errlen, "%s: cannot replace (%s)", path, strerror(e));
    }
    saves_done++;
    if (crash && !strncmp(crash, "after:", 6) && atoi(crash + 6) == saves_done) raise(SIGKILL);
    return 0;
}

int spide_checkpoint_save(const char *path, int epoch, char *err, size_t errlen) {
    spide_position_t at = {epoch, 0, 0, 0.0};
    return spide_checkpoint_save_at(path, &at, err, errlen);
}

#define CKPT_HEAD_V1 36u /* magic, version, hash, epoch, float count */
#define CKPT_HEAD_V2 52u /* ... then samples done, correct, loss */

/* A checkpoint larger than this model's (ctx: its largest size, version 2) is refused unread, after
 * what its header says about it (magic, version, model). Smaller files are read: the model bounds them. */
static int ckpt_head_check(const char *path, const unsigned char *head, size_t n, uint64_t size, void *ctx,
                           char *err, size_t errlen) {
    size_t most = *(const size_t *)ctx;
    if (size <= most) return 0;
    if (n < 4 || memcmp(head, CKPT_MAGIC, 4) != 0) return fail(err, errlen, "%s: not a spidec checkpoint", path);
    if (n >= 8 && get_u32(head + 4) != 1u && get_u32(head + 4) != SPIDE_CHECKPOINT_VERSION)
        return fail(err, errlen, "%s: checkpoint format version %u, this runtime reads 1 and %u", path,
                    get_u32(head + 4), SPIDE_CHECKPOINT_VERSION);
    if (n >= 24 && memcmp(head + 8, spide_info()->hash, 16) != 0)
        return fail(err, errlen, "%s: the checkpoint belongs to another model (hash %.16s, this model %s)", path,
                    (const char *)head + 8, spide_info()->hash);
    return fail(err, errlen, "%s: the checkpoint holds %llu bytes, this model's needs %zu", path,
                (unsigned long long)size, most);
}

int spide_checkpoint_load_at(const char *path, spide_position_t *at, char *err, size_t errlen) {
    const spide_info_t *info = spide_info();
    uint64_t n = payload_floats();
    size_t most = CKPT_HEAD_V2 + n * 4 + 4, len = 0;
    unsigned char *buf = read_all(path, &len, ckpt_head_check, &most, err, errlen);
    if (!buf) return -1;
    int rc = -1;
    float *tmp = NULL;
    if (len < 4 || memcmp(buf, CKPT_MAGIC, 4) != 0) {
        fail(err, errlen, "%s: not a spidec checkpoint", path);
        goto done;
    }
    if (len < 8 || spide_crc32(0, buf, len - 4) != get_u32(buf + len - 4)) {
        fail(err, errlen, "%s: CRC mismatch: the checkpoint is corrupt or truncated", path);
        goto done;
    }
    uint32_t version = get_u32(buf + 4);
    if (version != 1u && version != SPIDE_CHECKPOINT_VERSION) {
        fail(err, errlen, "%s: checkpoint format version %u, this runtime reads 1 and %u", path, version,
             SPIDE_CHECKPOINT_VERSION);
        goto done;
    }
    if (len < 24 || memcmp(buf + 8, info->hash, 16) != 0) {
        fail(err, errlen, "%s: the checkpoint belongs to another model (hash %.16s, this model %s)", path,
             len >= 24 ? (const char *)buf + 8 : "?", info->hash);
        goto done;
    }
    size_t head = version == 1u ? CKPT_HEAD_V1 : CKPT_HEAD_V2, want = head + n * 4 + 4;
    if (len != want || get_u64(buf + 28) != n) {
        fail(err, errlen, "%s: the checkpoint holds %zu bytes, this model's needs %zu", path, len, want);
        goto done;
    }
    if (get_u32(buf + 24) > SPIDE_MAX_EPOCH) { /* (a resume replays every epoch's shuffle up to it) */
        fail(err, errlen, "%s: the checkpoint's epoch %u is outside 0..%u", path, get_u32(buf + 24), SPIDE_MAX_EPOCH);
        goto done;
    }
    spide_position_t pos = {(int)get_u32(buf + 24), 0, 0, 0.0};
    if (version != 1u) {
        uint64_t bits = get_u64(buf + 44);
        memcpy(&pos.loss, &bits, 8);
        uint32_t done_ = get_u32(buf + 36), correct = get_u32(buf + 40);
        if (done_ > (1u << 30) || correct > done_ || !isfinite(pos.loss) || pos.loss < 0 || (!done_ && pos.loss != 0)) {
            fail(err, errlen, "%s: the checkpoint's place in epoch %d (%u samples done, %u right, loss %g) is not valid",
                 path, pos.epoch + 1, done_, correct, pos.loss);
            goto done;
        }
        pos.done = (int)done_;
        pos.correct = (int)correct;
    }
    /* copy through an aligned buffer (the payload is not float-aligned in the file); every value is
     * checked before any is set, so a refused checkpoint leaves the model as it was */
    tmp = (float *)malloc((max_tensor() + 1) * sizeof(float));
    if (!tmp) {
        fail(err, errlen, "out of memory");
        goto done;
    }
    for (int set = 0; set < 2; set++) {
        size_t off = head;
        for (int pass = 0; pass < 2; pass++) {
            for (int i = 0; i < info->n_tensors; i++) {
                if (pass == 1 && !spide_tensor_learnable(i)) continue;
                size_t k = spide_tensor_size(i);
                memcpy(tmp, buf + off, k * 4);
                off += k * 4;
                if (!set && !info->fixed && !all_finite(tmp, k)) { /* (fixed point: integers, raw bits) */
                    fail(err, errlen, "%s: %s %s holds NaN or inf (a diverged run?): refused", path,
                         pass ? "the momentum of tensor" : "tensor", spide_tensor_name(i));
                    goto done;
                }
                if (set && pass == 0) spide_set_tensor(i, tmp);
                if (set && pass == 1) spide_set_momentum(i, tmp);
            }
        }
    }
    *at = pos;
    rc = 0;
done:
    free(tmp);
    free(buf);
    return rc;
}

int spide_checkpoint_load(const char *path, int *epoch, char *err, size_t errlen) {
    spide_position_t at;
    int rc = spide_checkpoint_load_at(path, &at, err, errlen);
    if (rc == 0) *epoch = at.epoch;
    return rc;
}

int spide_checkpoint_remove_stale(const char *path) {
    char dir[4096], full[4096];
    const char *slash = strrchr(path, '/'), *base = slash ? slash + 1 : path;
    if (!slash) strcpy(dir, ".");
    else if (snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path) >= (int)sizeof dir)
        return 0;
    size_t bl = strlen(base);
    DIR *d = opendir(dir);
    if (!d) return 0;
    int removed = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (strncmp(e->d_name, base, bl) != 0 || strncmp(e->d_name + bl, ".tmp", 4) != 0) continue;
        const char *digits = e->d_name + bl + 4;
        char *end;
        long pid = strtol(digits, &end, 10);
        if (end == digits || *end || pid <= 0 || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* its writer may still be saving */
        if (snprintf(full, sizeof full, "%s/%s", dir, e->d_name) < (int)sizeof full && unlink(full) == 0) removed++;
    }
    closedir(d);
    return removed;
}
