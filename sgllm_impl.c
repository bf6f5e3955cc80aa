// sgllm_impl.c - everything in sgllm that is not device code, in one translation unit.
//
// CONTENTS (sections in dependency order; search for "// --- N.")
//   1. Platform: allocation, status text, errors and logging, time, threads, mmap, fp16/bf16
//   2. GGUF: a bounds-checked reader over a mapped file
//   3. Weight formats: block layouts, reference dequantization, fast dequantization and dot
//      products (runtime-detected AVX2, portable fallback)
//   4. Tokenizers: SentencePiece-style (SPM) and byte-level BPE
//   5. Chat templates
//   6. Sampler
//   7. Model description: families as data (per-layer descriptors)
//   8. CPU backend: thread pool work, matrix multiplication, the forward pass, KV cache
//   9. Public API: models, contexts, evaluate, generate
//
// Conventions: public names sgllm_*, everything private static sgllm__* (or a short module
// prefix). Sizes and offsets are int64_t/size_t. Shapes are commented on every buffer as
// (outer, ..., inner). Nothing here prints, exits or aborts.

#if !defined(_GNU_SOURCE)
#define _GNU_SOURCE
#endif
#include "sgllm.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SGLLM__X86 1
#else
#define SGLLM__X86 0
#endif

// --- 1. Platform ---------------------------------------------------------------------------
// Allocation hooks, status strings, the per-handle error/log plumbing, a monotonic clock,
// a small thread pool, read-only file mapping and half-precision conversions.

#if defined(SGLLM_MALLOC) && defined(SGLLM_REALLOC) && defined(SGLLM_FREE)
#elif !defined(SGLLM_MALLOC) && !defined(SGLLM_REALLOC) && !defined(SGLLM_FREE)
#define SGLLM_MALLOC(sz) malloc(sz)
#define SGLLM_REALLOC(p, sz) realloc(p, sz)
#define SGLLM_FREE(p) free(p)
#else
#error "define all of SGLLM_MALLOC, SGLLM_REALLOC and SGLLM_FREE, or none"
#endif
#ifndef SGLLM_ASSERT
#define SGLLM_ASSERT(x) ((void)0)
#endif

// stb_ds is fenced: its functions are static to this translation unit and allocate through
// our hooks, so a host that also uses stb_ds still links.
#define STBDS_REALLOC(ctx, p, sz) SGLLM_REALLOC(p, sz)
#define STBDS_FREE(ctx, p) SGLLM_FREE(p)
#define STB_DS_IMPLEMENTATION
#define STBDS_SIPHASH_2_4
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wpedantic"
#endif
#define STBDS_API static
#include <stb/stb_ds.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

static void *sgllm__malloc(size_t n) { return SGLLM_MALLOC(n ? n : 1); }
static void sgllm__free(void *p) {
    if (p) SGLLM_FREE(p);
}
// Zeroed array of n elements of size sz; NULL on overflow or failure.
static void *sgllm__calloc(size_t n, size_t sz) {
    if (sz && n > SIZE_MAX / sz) return NULL;
    void *p = sgllm__malloc(n * sz);
    if (p) memset(p, 0, n * sz);
    return p;
}
static char *sgllm__strndup(const char *s, size_t n) {
    char *d = (char *)sgllm__malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

const char *sgllm_version(void) { return SGLLM_VERSION_STRING; }

const char *sgllm_status_string(sgllm_status s) {
    switch (s) {
    case SGLLM_OK: return "ok";
    case SGLLM_ERR_INVALID_ARGUMENT: return "invalid argument";
    case SGLLM_ERR_IO: return "I/O error";
    case SGLLM_ERR_FORMAT: return "malformed file";
    case SGLLM_ERR_UNSUPPORTED: return "unsupported";
    case SGLLM_ERR_OUT_OF_MEMORY: return "out of memory";
    case SGLLM_ERR_CANCELLED: return "cancelled";
    case SGLLM_ERR_BUFFER_TOO_SMALL: return "buffer too small";
    case SGLLM_ERR_CONTEXT_FULL: return "context full";
    case SGLLM_ERR_NO_TEMPLATE: return "unknown chat template";
    case SGLLM_ERR_BACKEND: return "backend unavailable";
    }
    return "unknown status";
}

// Where errors and log lines go: every handle owns one of these.
typedef struct sgllm__diag {
    char msg[512]; // last error message
    sgllm_log_fn log;
    void *log_user;
    sgllm_log_level level;
} sgllm__diag;

#if defined(__GNUC__)
#define SGLLM__PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define SGLLM__PRINTF(a, b)
#endif

SGLLM__PRINTF(3, 4)
static void sgllm__log(const sgllm__diag *d, sgllm_log_level level, const char *fmt, ...) {
    if (!d || !d->log || level > d->level) return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    d->log(d->log_user, level, line);
}

// Records an error message on d (and logs it); returns status so callers can
// `return sgllm__fail(d, SGLLM_ERR_FORMAT, "...")`.
SGLLM__PRINTF(3, 4)
static sgllm_status sgllm__fail(sgllm__diag *d, sgllm_status status, const char *fmt, ...) {
    if (!d) return status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->msg, sizeof d->msg, fmt, ap);
    va_end(ap);
    if (d->log && d->level >= SGLLM_LOG_ERROR) d->log(d->log_user, SGLLM_LOG_ERROR, d->msg);
    return status;
}

static double sgllm__now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int sgllm__n_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (n > 256 ? 256 : (int)n);
}

// Thread pool: n_threads - 1 workers plus the calling thread. sgllm__pool_run hands out
// task indices [0, n_tasks) dynamically and returns when all are done. Owned by a context.
typedef void (*sgllm__task_fn)(void *arg, int64_t task, int thread);

typedef struct sgllm__pool {
    int n_threads;
    pthread_t *workers;       // (n_threads - 1)
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    uint64_t generation;      // bumped per job; workers wait for a change
    int n_busy;               // workers still inside the current job
    bool quit;
    sgllm__task_fn fn;
    void *arg;
    int64_t n_tasks;
    int64_t next_task;        // atomically advanced
} sgllm__pool;

typedef struct sgllm__worker_arg {
    sgllm__pool *pool;
    int index;
} sgllm__worker_arg;

static void sgllm__pool_work(sgllm__pool *p, int thread) {
    for (;;) {
        int64_t t = __atomic_fetch_add(&p->next_task, 1, __ATOMIC_RELAXED);
        if (t >= p->n_tasks) break;
        p->fn(p->arg, t, thread);
    }
}

static void *sgllm__worker_main(void *varg) {
    sgllm__pool *p = ((sgllm__worker_arg *)varg)->pool;
    int index = ((sgllm__worker_arg *)varg)->index;
    sgllm__free(varg);
    uint64_t seen = 0;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (!p->quit && p->generation == seen) pthread_cond_wait(&p->wake, &p->mu);
        if (p->quit) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        sgllm__pool_work(p, index);
        pthread_mutex_lock(&p->mu);
        if (--p->n_busy == 0) pthread_cond_signal(&p->done);
        pthread_mutex_unlock(&p->mu);
    }
}

static void sgllm__pool_free(sgllm__pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = true;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_threads - 1; i++)
        if (p->workers[i]) pthread_join(p->workers[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    sgllm__free(p->workers);
    sgllm__free(p);
}

static sgllm__pool *sgllm__pool_create(int n_threads) {
    sgllm__pool *p = (sgllm__pool *)sgllm__calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_threads = n_threads < 1 ? 1 : n_threads;
    p->workers = (pthread_t *)sgllm__calloc((size_t)p->n_threads, sizeof(pthread_t));
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    if (!p->workers) {
        p->n_threads = 1;
        sgllm__pool_free(p);
        return NULL;
    }
    for (int i = 0; i < p->n_threads - 1; i++) {
        sgllm__worker_arg *wa = (sgllm__worker_arg *)sgllm__malloc(sizeof *wa);
        if (!wa || pthread_create(&p->workers[i], NULL, sgllm__worker_main, wa) != 0) {
            sgllm__free(wa);
            p->n_threads = i + 1; // join only the workers that exist
            sgllm__pool_free(p);
            return NULL;
        }
        wa->pool = p;
        wa->index = i + 1;
    }
    return p;
}

// Runs fn(arg, task, thread) for every task in [0, n_tasks) on all threads of the pool.
static void sgllm__pool_run(sgllm__pool *p, int64_t n_tasks, sgllm__task_fn fn, void *arg) {
    if (n_tasks <= 0) return;
    if (!p || p->n_threads == 1 || n_tasks == 1) {
        for (int64_t t = 0; t < n_tasks; t++) fn(arg, t, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->n_tasks = n_tasks;
    p->next_task = 0;
    p->n_busy = p->n_threads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    sgllm__pool_work(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->n_busy > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

// A read-only mapping of a whole file.
typedef struct sgllm__map {
    const uint8_t *data;
    uint64_t size;
} sgllm__map;

static sgllm_status sgllm__map_open(sgllm__diag *d, const char *path, sgllm__map *m) {
    memset(m, 0, sizeof *m);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return sgllm__fail(d, SGLLM_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return sgllm__fail(d, SGLLM_ERR_IO, "'%s' is not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return sgllm__fail(d, SGLLM_ERR_FORMAT, "'%s' is empty (truncated file)", path);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return sgllm__fail(d, SGLLM_ERR_IO, "cannot map '%s': %s", path, strerror(errno));
    m->data = (const uint8_t *)p;
    m->size = (uint64_t)st.st_size;
    return SGLLM_OK;
}

static void sgllm__map_close(sgllm__map *m) {
    if (m->data) munmap((void *)m->data, (size_t)m->size);
    memset(m, 0, sizeof *m);
}

// IEEE half <-> float, bf16 -> float, without relying on compiler half types.
static float sgllm__fp16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 31, man = h & 1023, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { // subnormal: renormalize
            int e = -1;
            do {
                man <<= 1;
                e++;
            } while (!(man & 1024));
            bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 1023) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static uint16_t sgllm__f32_to_fp16(float f) { // round to nearest even
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 255) - 127 + 15;
    uint32_t man = x & 0x7fffff;
    if (((x >> 23) & 255) == 255) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t h = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)exp << 10) | (man >> 13), rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

static float sgllm__bf16_to_f32(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// Overflow-checked arithmetic on unsigned 64-bit sizes: false on overflow.
static bool sgllm__add_u64(uint64_t a, uint64_t b, uint64_t *r) { return !__builtin_add_overflow(a, b, r); }
static bool sgllm__mul_u64(uint64_t a, uint64_t b, uint64_t *r) { return !__builtin_mul_overflow(a, b, r); }

// --- 2. GGUF -------------------------------------------------------------------------------
// Parses a mapped GGUF v3 file into key/value records and tensor records that point into the
// mapping. The file is hostile: every read is bounds-checked against the mapping, every count
// and size computed with overflow checks, every tensor checked against its type and shape.
// Nothing is copied: strings are (pointer, length) views into the mapping.

typedef struct sgllm__str {
    const char *ptr; // not NUL-terminated
    uint64_t len;
} sgllm__str;

enum {
    SGLLM__GGUF_U8 = 0, SGLLM__GGUF_I8 = 1, SGLLM__GGUF_U16 = 2, SGLLM__GGUF_I16 = 3,
    SGLLM__GGUF_U32 = 4, SGLLM__GGUF_I32 = 5, SGLLM__GGUF_F32 = 6, SGLLM__GGUF_BOOL = 7,
    SGLLM__GGUF_STRING = 8, SGLLM__GGUF_ARRAY = 9, SGLLM__GGUF_U64 = 10, SGLLM__GGUF_I64 = 11,
    SGLLM__GGUF_F64 = 12, SGLLM__GGUF_NTYPES = 13
};

typedef struct sgllm__gguf_kv {
    sgllm__str key;
    uint32_t type;      // SGLLM__GGUF_*
    uint32_t arr_type;  // element type when type == ARRAY
    uint64_t arr_n;     // element count when type == ARRAY
    const uint8_t *data; // the value (scalars, fixed-size array elements) inside the mapping
    sgllm__str str;     // when type == STRING
    sgllm__str *strs;   // (arr_n) when type == ARRAY of STRING; owned
} sgllm__gguf_kv;

// ggml tensor types this engine knows the layout of (ids are ggml's).
typedef enum sgllm__type {
    SGLLM__T_F32 = 0, SGLLM__T_F16 = 1, SGLLM__T_Q4_0 = 2, SGLLM__T_Q4_1 = 3,
    SGLLM__T_Q5_0 = 6, SGLLM__T_Q5_1 = 7, SGLLM__T_Q8_0 = 8, SGLLM__T_Q8_1 = 9,
    SGLLM__T_Q2_K = 10, SGLLM__T_Q3_K = 11, SGLLM__T_Q4_K = 12, SGLLM__T_Q5_K = 13,
    SGLLM__T_Q6_K = 14, SGLLM__T_Q8_K = 15, SGLLM__T_BF16 = 30, SGLLM__T_COUNT = 41
} sgllm__type;

typedef struct sgllm__type_traits {
    const char *name;
    int32_t block;  // values per block (0 = unknown type)
    int32_t bytes;  // bytes per block
} sgllm__type_traits;

static const sgllm__type_traits sgllm__types[SGLLM__T_COUNT] = {
    [SGLLM__T_F32] = {"F32", 1, 4},       [SGLLM__T_F16] = {"F16", 1, 2},
    [SGLLM__T_Q4_0] = {"Q4_0", 32, 18},   [SGLLM__T_Q4_1] = {"Q4_1", 32, 20},
    [SGLLM__T_Q5_0] = {"Q5_0", 32, 22},   [SGLLM__T_Q5_1] = {"Q5_1", 32, 24},
    [SGLLM__T_Q8_0] = {"Q8_0", 32, 34},   [SGLLM__T_Q8_1] = {"Q8_1", 32, 36},
    [SGLLM__T_Q2_K] = {"Q2_K", 256, 84},  [SGLLM__T_Q3_K] = {"Q3_K", 256, 110},
    [SGLLM__T_Q4_K] = {"Q4_K", 256, 144}, [SGLLM__T_Q5_K] = {"Q5_K", 256, 176},
    [SGLLM__T_Q6_K] = {"Q6_K", 256, 210}, [SGLLM__T_Q8_K] = {"Q8_K", 256, 292},
    [SGLLM__T_BF16] = {"BF16", 1, 2},
};

static const char *sgllm__type_name(uint32_t t) {
    return t < SGLLM__T_COUNT && sgllm__types[t].name ? sgllm__types[t].name : "unknown";
}

// Bytes of a row of n values of type t; 0 if t is unknown or n is not a whole number of blocks.
static uint64_t sgllm__row_bytes(uint32_t t, uint64_t n) {
    if (t >= SGLLM__T_COUNT || !sgllm__types[t].block) return 0;
    uint64_t b = (uint64_t)sgllm__types[t].block;
    if (n % b) return 0;
    return n / b * (uint64_t)sgllm__types[t].bytes;
}

typedef struct sgllm__tensor {
    sgllm__str name;
    uint32_t type;          // sgllm__type
    uint32_t n_dims;
    int64_t ne[4];          // ne[0] innermost; unused dims are 1
    uint64_t offset;        // from the start of the data section
    uint64_t size;          // bytes
    const uint8_t *data;    // inside the mapping
} sgllm__tensor;

typedef struct sgllm__gguf {
    sgllm__map map;
    uint32_t version;
    uint64_t alignment;
    uint64_t n_kv, n_tensors;
    sgllm__gguf_kv *kv;         // (n_kv)
    sgllm__tensor *tensors;     // (n_tensors)
    uint64_t data_offset;       // start of the data section in the file
} sgllm__gguf;

// A cursor over the mapping; every read fails cleanly past the end.
typedef struct sgllm__rd {
    const uint8_t *p;
    uint64_t pos, size;
    sgllm__diag *d;
    const char *what; // what is being read, for messages
} sgllm__rd;

static sgllm_status sgllm__rd_truncated(sgllm__rd *r) {
    return sgllm__fail(r->d, SGLLM_ERR_FORMAT, "truncated file: %s runs past the end at byte %llu of %llu",
                       r->what, (unsigned long long)r->pos, (unsigned long long)r->size);
}

static sgllm_status sgllm__rd_bytes(sgllm__rd *r, uint64_t n, const uint8_t **out) {
    if (n > r->size - r->pos) return sgllm__rd_truncated(r);
    *out = r->p + r->pos;
    r->pos += n;
    return SGLLM_OK;
}
static sgllm_status sgllm__rd_u32(sgllm__rd *r, uint32_t *v) {
    const uint8_t *b;
    sgllm_status s = sgllm__rd_bytes(r, 4, &b);
    if (s == SGLLM_OK) memcpy(v, b, 4);
    return s;
}
static sgllm_status sgllm__rd_u64(sgllm__rd *r, uint64_t *v) {
    const uint8_t *b;
    sgllm_status s = sgllm__rd_bytes(r, 8, &b);
    if (s == SGLLM_OK) memcpy(v, b, 8);
    return s;
}
static sgllm_status sgllm__rd_str(sgllm__rd *r, sgllm__str *str) {
    uint64_t len;
    const uint8_t *b;
    sgllm_status s = sgllm__rd_u64(r, &len);
    if (s == SGLLM_OK) s = sgllm__rd_bytes(r, len, &b);
    if (s == SGLLM_OK) {
        str->ptr = (const char *)b;
        str->len = len;
    }
    return s;
}

static uint64_t sgllm__gguf_scalar_size(uint32_t t) {
    static const uint8_t sz[SGLLM__GGUF_NTYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return t < SGLLM__GGUF_NTYPES ? sz[t] : 0;
}

static void sgllm__gguf_close(sgllm__gguf *g) {
    if (!g) return;
    if (g->kv)
        for (uint64_t i = 0; i < g->n_kv; i++) sgllm__free(g->kv[i].strs);
    sgllm__free(g->kv);
    sgllm__free(g->tensors);
    sgllm__map_close(&g->map);
    memset(g, 0, sizeof *g);
}

static bool sgllm__str_eq(sgllm__str s, const char *c) {
    size_t n = strlen(c);
    return s.len == n && memcmp(s.ptr, c, n) == 0;
}

static sgllm_status sgllm__gguf_read_value(sgllm__rd *r, sgllm__gguf_kv *kv) {
    sgllm_status s;
    if (kv->type == SGLLM__GGUF_STRING) return sgllm__rd_str(r, &kv->str);
    if (kv->type == SGLLM__GGUF_ARRAY) {
        if ((s = sgllm__rd_u32(r, &kv->arr_type)) || (s = sgllm__rd_u64(r, &kv->arr_n))) return s;
        if (kv->arr_type == SGLLM__GGUF_ARRAY)
            return sgllm__fail(r->d, SGLLM_ERR_FORMAT, "metadata '%.*s': arrays of arrays are not allowed",
                               (int)kv->key.len, kv->key.ptr);
        if (kv->arr_type == SGLLM__GGUF_STRING) {
            // each string is at least 8 bytes: reject counts the file cannot hold before allocating
            if (kv->arr_n > (r->size - r->pos) / 8) return sgllm__rd_truncated(r);
            kv->strs = (sgllm__str *)sgllm__calloc(kv->arr_n ? kv->arr_n : 1, sizeof(sgllm__str));
            if (!kv->strs) return sgllm__fail(r->d, SGLLM_ERR_OUT_OF_MEMORY, "out of memory reading metadata");
            kv->data = r->p + r->pos;
            for (uint64_t i = 0; i < kv->arr_n; i++)
                if ((s = sgllm__rd_str(r, &kv->strs[i]))) return s;
            return SGLLM_OK;
        }
        uint64_t esz = sgllm__gguf_scalar_size(kv->arr_type), total;
        if (!esz)
            return sgllm__fail(r->d, SGLLM_ERR_FORMAT, "metadata '%.*s': unknown array element type %u",
                               (int)kv->key.len, kv->key.ptr, kv->arr_type);
        if (!sgllm__mul_u64(esz, kv->arr_n, &total)) return sgllm__rd_truncated(r);
        return sgllm__rd_bytes(r, total, &kv->data);
    }
    uint64_t esz = sgllm__gguf_scalar_size(kv->type);
    if (!esz)
        return sgllm__fail(r->d, SGLLM_ERR_FORMAT, "metadata '%.*s': unknown value type %u",
                           (int)kv->key.len, kv->key.ptr, kv->type);
    if ((s = sgllm__rd_bytes(r, esz, &kv->data))) return s;
    if (kv->type == SGLLM__GGUF_BOOL && kv->data[0] > 1)
        return sgllm__fail(r->d, SGLLM_ERR_FORMAT, "metadata '%.*s': bool value %u is not 0 or 1",
                           (int)kv->key.len, kv->key.ptr, kv->data[0]);
    return SGLLM_OK;
}

// Parses the GGUF header, metadata and tensor records of an already mapped buffer. On
// failure the message is in d and g holds nothing that needs freeing beyond sgllm__gguf_close.
static sgllm_status sgllm__gguf_parse(sgllm__gguf *g, sgllm__diag *d) {
    sgllm__rd r = {g->map.data, 0, g->map.size, d, "header"};
    uint32_t magic;
    sgllm_status s;
    if ((s = sgllm__rd_u32(&r, &magic))) return s;
    if (memcmp(&magic, "GGUF", 4) != 0)
        return sgllm__fail(d, SGLLM_ERR_FORMAT, "bad magic: not a GGUF file (first bytes %02x %02x %02x %02x)",
                           g->map.data[0], g->map.size > 1 ? g->map.data[1] : 0,
                           g->map.size > 2 ? g->map.data[2] : 0, g->map.size > 3 ? g->map.data[3] : 0);
    if ((s = sgllm__rd_u32(&r, &g->version))) return s;
    if ((g->version & 0xffff) == 0)
        return sgllm__fail(d, SGLLM_ERR_UNSUPPORTED, "GGUF version 0x%x: the file has the wrong byte order",
                           g->version);
    if (g->version != 2 && g->version != 3)
        return sgllm__fail(d, SGLLM_ERR_UNSUPPORTED, "unsupported GGUF version %u (sgllm reads 2 and 3)", g->version);
    if ((s = sgllm__rd_u64(&r, &g->n_tensors)) || (s = sgllm__rd_u64(&r, &g->n_kv))) return s;
    // every kv takes at least 12 bytes and every tensor record at least 28: reject absurd
    // counts before allocating for them
    if (g->n_kv > g->map.size / 12 || g->n_tensors > g->map.size / 28)
        return sgllm__fail(d, SGLLM_ERR_FORMAT, "truncated file: header claims %llu metadata keys and %llu tensors",
                           (unsigned long long)g->n_kv, (unsigned long long)g->n_tensors);
    g->kv = (sgllm__gguf_kv *)sgllm__calloc(g->n_kv ? g->n_kv : 1, sizeof *g->kv);
    g->tensors = (sgllm__tensor *)sgllm__calloc(g->n_tensors ? g->n_tensors : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) return sgllm__fail(d, SGLLM_ERR_OUT_OF_MEMORY, "out of memory reading GGUF header");

    g->alignment = 32;
    r.what = "metadata";
    for (uint64_t i = 0; i < g->n_kv; i++) {
        sgllm__gguf_kv *kv = &g->kv[i];
        if ((s = sgllm__rd_str(&r, &kv->key)) || (s = sgllm__rd_u32(&r, &kv->type))) return s;
        if (kv->key.len == 0) return sgllm__fail(d, SGLLM_ERR_FORMAT, "metadata key %llu is empty", (unsigned long long)i);
        for (uint64_t j = 0; j < i; j++)
            if (g->kv[j].key.len == kv->key.len && !memcmp(g->kv[j].key.ptr, kv->key.ptr, kv->key.len))
                return sgllm__fail(d, SGLLM_ERR_FORMAT, "duplicate metadata key '%.*s'", (int)kv->key.len, kv->key.ptr);
        if ((s = sgllm__gguf_read_value(&r, kv))) return s;
        if (sgllm__str_eq(kv->key, "general.alignment")) {
            uint32_t a;
            if (kv->type != SGLLM__GGUF_U32)
                return sgllm__fail(d, SGLLM_ERR_FORMAT, "general.alignment must be a u32");
            memcpy(&a, kv->data, 4);
            if (a == 0 || (a & (a - 1)))
                return sgllm__fail(d, SGLLM_ERR_FORMAT, "general.alignment %u is not a power of two", a);
            g->alignment = a;
        }
    }

    r.what = "tensor records";
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        sgllm__tensor *t = &g->tensors[i];
        if ((s = sgllm__rd_str(&r, &t->name)) || (s = sgllm__rd_u32(&r, &t->n_dims))) return s;
        if (t->name.len == 0 || t->name.len >= 64)
            return sgllm__fail(d, SGLLM_ERR_FORMAT, "tensor %llu: name length %llu (must be 1..63)",
                               (unsigned long long)i, (unsigned long long)t->name.len);
        if (t->n_dims < 1 || t->n_dims > 4)
            return sgllm__fail(d, SGLLM_ERR_FORMAT, "tensor '%.*s': %u dimensions (must be 1..4)",
                               (int)t->name.len, t->name.ptr, t->n_dims);
        uint64_t count = 1;
        for (uint32_t k = 0; k < 4; k++) t->ne[k] = 1;
        for (uint32_t k = 0; k < t->n_dims; k++) {
            uint64_t ne;
            if ((s = sgllm__rd_u64(&r, &ne))) return s;
            if (ne == 0 || ne > (uint64_t)INT64_MAX || !sgllm__mul_u64(count, ne, &count) || count > (uint64_t)INT64_MAX)
                return sgllm__fail(d, SGLLM_ERR_FORMAT, "tensor '%.*s': bad shape (dimension %u is %llu)",
                                   (int)t->name.len, t->name.ptr, k, (unsigned long long)ne);
            t->ne[k] = (int64_t)ne;
        }
        if ((s = sgllm__rd_u32(&r, &t->type)) || (s = sgllm__rd_u64(&r, &t->offset))) return s;
        if (t->type >= SGLLM__T_COUNT || !sgllm__types[t->type].block)
            return sgllm__fail(d, SGLLM_ERR_UNSUPPORTED, "tensor '%.*s': unknown or unsupported type id %u",
                               (int)t->name.len, t->name.ptr, t->type);
        uint64_t rb = sgllm__row_bytes(t->type, (uint64_t)t->ne[0]);
        if (!rb)
            return sgllm__fail(d, SGLLM_ERR_FORMAT, "tensor '%.*s': width %lld is not a multiple of the %s block (%d)",
                               (int)t->name.len, t->name.ptr, (long long)t->ne[0], sgllm__type_name(t->type),
                               sgllm__types[t->type].block);
        if (!sgllm__mul_u64(rb, count / (uint64_t)t->ne[0], &t->size))
            return sgllm__fail(d, SGLLM_ERR_FORMAT, "tensor '%.*s': size overflows", (int)t->name.len, t->name.ptr);
        if (t->offset % g->alignment)
            return sgllm__fail(d, SGLLM_ERR_FORMAT, "tensor '%.*s': offset %llu is not aligned to %llu",
                               (int)t->name.len, t->name.ptr, (unsigned long long)t->offset,
                               (unsigned long long)g->alignment);
        for (uint64_t j = 0; j < i; j++)
            if (g->tensors[j].name.len == t->name.len && !memcmp(g->tensors[j].name.ptr, t->name.ptr, t->name.len))
                return sgllm__fail(d, SGLLM_ERR_FORMAT, "duplicate tensor name '%.*s'", (int)t->name.len, t->name.ptr);
    }
    uint64_t pad = (g->alignment - r.pos % g->alignment) % g->alignment;
    g->data_offset = r.pos + pad;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        sgllm__tensor *t = &g->tensors[i];
        uint64_t start, end;
        if (!sgllm__add_u64(g->data_offset, t->offset, &start) || !sgllm__add_u64(start, t->size, &end) ||
            end > g->map.size)
            return sgllm__fail(d, SGLLM_ERR_FORMAT,
                               "tensor '%.*s' out of bounds: bytes %llu..+%llu past the file end (%llu; truncated file?)",
                               (int)t->name.len, t->name.ptr, (unsigned long long)t->offset,
                               (unsigned long long)t->size, (unsigned long long)g->map.size);
        t->data = g->map.data + start;
    }
    return SGLLM_OK;
}

static sgllm_status sgllm__gguf_open(sgllm__gguf *g, const char *path, sgllm__diag *d) {
    memset(g, 0, sizeof *g);
    sgllm_status s = sgllm__map_open(d, path, &g->map);
    if (s == SGLLM_OK) s = sgllm__gguf_parse(g, d);
    if (s != SGLLM_OK) sgllm__gguf_close(g);
    return s;
}

static const sgllm__gguf_kv *sgllm__gguf_find(const sgllm__gguf *g, const char *key) {
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (sgllm__str_eq(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}

static const sgllm__tensor *sgllm__gguf_tensor(const sgllm__gguf *g, const char *name) {
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (sgllm__str_eq(g->tensors[i].name, name)) return &g->tensors[i];
    return NULL;
}

// Reads an integer-valued key of any integer type (writers disagree on u32 vs u64).
// Returns false when the key is absent, not an integer, or does not fit in int64.
static bool sgllm__gguf_int(const sgllm__gguf *g, const char *key, int64_t *out) {
    const sgllm__gguf_kv *kv = sgllm__gguf_find(g, key);
    if (!kv) return false;
    const uint8_t *p = kv->data;
    switch (kv->type) {
    case SGLLM__GGUF_U8: *out = p[0]; return true;
    case SGLLM__GGUF_I8: *out = (int8_t)p[0]; return true;
    case SGLLM__GGUF_BOOL: *out = p[0]; return true;
    case SGLLM__GGUF_U16: { uint16_t v; memcpy(&v, p, 2); *out = v; return true; }
    case SGLLM__GGUF_I16: { int16_t v; memcpy(&v, p, 2); *out = v; return true; }
    case SGLLM__GGUF_U32: { uint32_t v; memcpy(&v, p, 4); *out = v; return true; }
    case SGLLM__GGUF_I32: { int32_t v; memcpy(&v, p, 4); *out = v; return true; }
    case SGLLM__GGUF_I64: { int64_t v; memcpy(&v, p, 8); *out = v; return true; }
    case SGLLM__GGUF_U64: {
        uint64_t v;
        memcpy(&v, p, 8);
        if (v > (uint64_t)INT64_MAX) return false;
        *out = (int64_t)v;
        return true;
    }
    default: return false;
    }
}

static bool sgllm__gguf_float(const sgllm__gguf *g, const char *key, double *out) {
    const sgllm__gguf_kv *kv = sgllm__gguf_find(g, key);
    if (!kv) return false;
    if (kv->type == SGLLM__GGUF_F32) {
        float f;
        memcpy(&f, kv->data, 4);
        *out = f;
        return true;
    }
    if (kv->type == SGLLM__GGUF_F64) {
        memcpy(out, kv->data, 8);
        return true;
    }
    int64_t i;
    if (sgllm__gguf_int(g, key, &i)) {
        *out = (double)i;
        return true;
    }
    return false;
}

static bool sgllm__gguf_string(const sgllm__gguf *g, const char *key, sgllm__str *out) {
    const sgllm__gguf_kv *kv = sgllm__gguf_find(g, key);
    if (!kv || kv->type != SGLLM__GGUF_STRING) return false;
    *out = kv->str;
    return true;
}

// --- 3. Weight formats ---------------------------------------------------------------------

// --- 4. Tokenizers -------------------------------------------------------------------------

// --- 5. Chat templates ---------------------------------------------------------------------

// --- 6. Sampler ----------------------------------------------------------------------------

// --- 7. Model description ------------------------------------------------------------------

// --- 8. CPU backend ------------------------------------------------------------------------

// --- 9. Public API -------------------------------------------------------------------------
