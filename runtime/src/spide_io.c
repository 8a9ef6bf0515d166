/* spide_io.c -- data-set and checkpoint files of the spidec C runtime (see spide.h). */
#define _POSIX_C_SOURCE 200809L
#include "spide.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* A whole file in memory (files here are at most a few hundred MB). */
static unsigned char *read_all(const char *path, size_t *len, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fail(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    unsigned char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 1u << 16;
            unsigned char *nb = (unsigned char *)realloc(buf, ncap);
            if (!nb) {
                free(buf);
                fclose(f);
                fail(err, errlen, "%s: out of memory", path);
                return NULL;
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        fail(err, errlen, "%s: read error", path);
        return NULL;
    }
    *len = n;
    return buf;
}

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t get_u64(const unsigned char *p) { return (uint64_t)get_u32(p) | ((uint64_t)get_u32(p + 4) << 32); }

int spide_dataset_load(const char *path, int expect_size, spide_dataset_t *out, char *err, size_t errlen) {
    memset(out, 0, sizeof(*out));
    size_t len = 0;
    unsigned char *buf = read_all(path, &len, err, errlen);
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
    if (version != SPIDE_FORMAT_VERSION) {
        fail(err, errlen, "%s: format version %u, this runtime reads %u", path, version, SPIDE_FORMAT_VERSION);
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
    if (classes == 0 || classes > 0x7FFFFFFFu) { /* (an int downstream: 2^31 and above would wrap negative) */
        fail(err, errlen, "%s: %u classes is outside 1..2147483647", path, classes);
        goto done;
    }
    if (count > (1u << 30) || len != off + count * size * 4 + count * 4 + 4) {
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
    out->y = (int32_t *)malloc(count * sizeof(int32_t));
    if (!out->x || !out->y) {
        fail(err, errlen, "%s: out of memory", path);
        goto done;
    }
    memcpy(out->x, buf + off, count * size * 4);
    memcpy(out->y, buf + off + count * size * 4, count * 4);
    for (uint64_t i = 0; i < count; i++) {
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

int spide_checkpoint_save(const char *path, int epoch, char *err, size_t errlen) {
    const spide_info_t *info = spide_info();
    spide_sync(); /* a sync point: a resumed run continues from exactly this state (see spide_sync) */
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return fail(err, errlen, "%s: path too long", path);
    float *buf = (float *)malloc(max_tensor() * sizeof(float));
    if (!buf) return fail(err, errlen, "out of memory");
    writer_t w = {fopen(tmp, "wb"), 0, 1};
    if (!w.f) {
        free(buf);
        return fail(err, errlen, "%s: %s", tmp, strerror(errno));
    }
    put(&w, CKPT_MAGIC, 4);
    put_u32(&w, SPIDE_FORMAT_VERSION);
    put(&w, info->hash, 16);
    put_u32(&w, (uint32_t)epoch);
    uint64_t n = payload_floats();
    put_u32(&w, (uint32_t)n);
    put_u32(&w, (uint32_t)(n >> 32));
    const char *crash = getenv("SPIDE_TEST_KILL_IN_SAVE"); /* fault injection for the tests */
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < info->n_tensors; i++) {
            if (pass == 1 && !spide_tensor_learnable(i)) continue;
            if (pass == 0) spide_get_tensor(i, buf); else spide_get_momentum(i, buf);
            put(&w, buf, spide_tensor_size(i) * sizeof(float));
            if (crash && crash[0] == '1' && pass == 0 && i == info->n_tensors / 2) {
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
    return 0;
}

int spide_checkpoint_load(const char *path, int *epoch, char *err, size_t errlen) {
    const spide_info_t *info = spide_info();
    size_t len = 0;
    unsigned char *buf = read_all(path, &len, err, errlen);
    if (!buf) return -1;
    int rc = -1;
    uint64_t n = payload_floats();
    size_t want = 4 + 4 + 16 + 4 + 8 + n * 4 + 4;
    if (len < 4 || memcmp(buf, CKPT_MAGIC, 4) != 0) {
        fail(err, errlen, "%s: not a spidec checkpoint", path);
        goto done;
    }
    if (len < 8 || spide_crc32(0, buf, len - 4) != get_u32(buf + len - 4)) {
        fail(err, errlen, "%s: CRC mismatch: the checkpoint is corrupt or truncated", path);
        goto done;
    }
    if (get_u32(buf + 4) != SPIDE_FORMAT_VERSION) {
        fail(err, errlen, "%s: checkpoint format version %u, this runtime reads %u", path, get_u32(buf + 4),
             SPIDE_FORMAT_VERSION);
        goto done;
    }
    if (len < 24 || memcmp(buf + 8, info->hash, 16) != 0) {
        fail(err, errlen, "%s: the checkpoint belongs to another model (hash %.16s, this model %s)", path,
             len >= 24 ? (const char *)buf + 8 : "?", info->hash);
        goto done;
    }
    if (len != want || get_u64(buf + 28) != n) {
        fail(err, errlen, "%s: the checkpoint holds %zu bytes, this model's needs %zu", path, len, want);
        goto done;
    }
    if (get_u32(buf + 24) > SPIDE_MAX_EPOCH) { /* (a resume replays every epoch's shuffle up to it) */
        fail(err, errlen, "%s: the checkpoint's epoch %u is outside 0..%u", path, get_u32(buf + 24), SPIDE_MAX_EPOCH);
        goto done;
    }
    /* copy through an aligned buffer: the payload is not float-aligned in the file */
    float *tmp = (float *)malloc(max_tensor() * sizeof(float));
    if (!tmp) {
        fail(err, errlen, "out of memory");
        goto done;
    }
    size_t off = 36;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < info->n_tensors; i++) {
            if (pass == 1 && !spide_tensor_learnable(i)) continue;
            size_t k = spide_tensor_size(i);
            memcpy(tmp, buf + off, k * 4);
            off += k * 4;
            if (pass == 0) spide_set_tensor(i, tmp); else spide_set_momentum(i, tmp);
        }
    }
    free(tmp);
    *epoch = (int)get_u32(buf + 24);
    rc = 0;
done:
    free(buf);
    return rc;
}
