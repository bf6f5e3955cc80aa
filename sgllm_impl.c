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
// Two tokenizer families, token-for-token equal to llama.cpp (its llama-vocab.cpp and
// unicode.cpp are the reference; golden tests in tests/test_tokenizer.c):
//   SPM ("llama" in GGUF): spaces become U+2581, then adjacent UTF-8 characters merge pairwise,
//     best vocabulary score first; pieces with no token fall back to <0xXX> byte tokens.
//   BPE ("gpt2"): a pre-tokenizer splits the text into words (one of a few fixed regexes, hand
//     coded here), each word's bytes map to printable code points (GPT-2 byte-to-unicode), then
//     ranked merges apply within the word.
// Both first cut the text at special tokens: user-defined ones always, control ones only when
// parse_special is set, longest text first, as llama.cpp does.
// The vocabulary is built once at load and only read afterwards, so one vocab can serve many
// threads (stb_ds lookups do not write).

// Unicode letter and number ranges, generated by tests/golden/gen_unicode_ranges.py.
// BEGIN generated tables
// 660 ranges, Unicode 15.1.0
static const uint32_t sgllm__uni_letters[][2] = {
    {0x41, 0x5A}, {0x61, 0x7A}, {0xAA, 0xAA}, {0xB5, 0xB5}, {0xBA, 0xBA}, {0xC0, 0xD6},
    {0xD8, 0xF6}, {0xF8, 0x2C1}, {0x2C6, 0x2D1}, {0x2E0, 0x2E4}, {0x2EC, 0x2EC}, {0x2EE, 0x2EE},
    {0x370, 0x374}, {0x376, 0x377}, {0x37A, 0x37D}, {0x37F, 0x37F}, {0x386, 0x386}, {0x388, 0x38A},
    {0x38C, 0x38C}, {0x38E, 0x3A1}, {0x3A3, 0x3F5}, {0x3F7, 0x481}, {0x48A, 0x52F}, {0x531, 0x556},
    {0x559, 0x559}, {0x560, 0x588}, {0x5D0, 0x5EA}, {0x5EF, 0x5F2}, {0x620, 0x64A}, {0x66E, 0x66F},
    {0x671, 0x6D3}, {0x6D5, 0x6D5}, {0x6E5, 0x6E6}, {0x6EE, 0x6EF}, {0x6FA, 0x6FC}, {0x6FF, 0x6FF},
    {0x710, 0x710}, {0x712, 0x72F}, {0x74D, 0x7A5}, {0x7B1, 0x7B1}, {0x7CA, 0x7EA}, {0x7F4, 0x7F5},
    {0x7FA, 0x7FA}, {0x800, 0x815}, {0x81A, 0x81A}, {0x824, 0x824}, {0x828, 0x828}, {0x840, 0x858},
    {0x860, 0x86A}, {0x870, 0x887}, {0x889, 0x88E}, {0x8A0, 0x8C9}, {0x904, 0x939}, {0x93D, 0x93D},
    {0x950, 0x950}, {0x958, 0x961}, {0x971, 0x980}, {0x985, 0x98C}, {0x98F, 0x990}, {0x993, 0x9A8},
    {0x9AA, 0x9B0}, {0x9B2, 0x9B2}, {0x9B6, 0x9B9}, {0x9BD, 0x9BD}, {0x9CE, 0x9CE}, {0x9DC, 0x9DD},
    {0x9DF, 0x9E1}, {0x9F0, 0x9F1}, {0x9FC, 0x9FC}, {0xA05, 0xA0A}, {0xA0F, 0xA10}, {0xA13, 0xA28},
    {0xA2A, 0xA30}, {0xA32, 0xA33}, {0xA35, 0xA36}, {0xA38, 0xA39}, {0xA59, 0xA5C}, {0xA5E, 0xA5E},
    {0xA72, 0xA74}, {0xA85, 0xA8D}, {0xA8F, 0xA91}, {0xA93, 0xAA8}, {0xAAA, 0xAB0}, {0xAB2, 0xAB3},
    {0xAB5, 0xAB9}, {0xABD, 0xABD}, {0xAD0, 0xAD0}, {0xAE0, 0xAE1}, {0xAF9, 0xAF9}, {0xB05, 0xB0C},
    {0xB0F, 0xB10}, {0xB13, 0xB28}, {0xB2A, 0xB30}, {0xB32, 0xB33}, {0xB35, 0xB39}, {0xB3D, 0xB3D},
    {0xB5C, 0xB5D}, {0xB5F, 0xB61}, {0xB71, 0xB71}, {0xB83, 0xB83}, {0xB85, 0xB8A}, {0xB8E, 0xB90},
    {0xB92, 0xB95}, {0xB99, 0xB9A}, {0xB9C, 0xB9C}, {0xB9E, 0xB9F}, {0xBA3, 0xBA4}, {0xBA8, 0xBAA},
    {0xBAE, 0xBB9}, {0xBD0, 0xBD0}, {0xC05, 0xC0C}, {0xC0E, 0xC10}, {0xC12, 0xC28}, {0xC2A, 0xC39},
    {0xC3D, 0xC3D}, {0xC58, 0xC5A}, {0xC5D, 0xC5D}, {0xC60, 0xC61}, {0xC80, 0xC80}, {0xC85, 0xC8C},
    {0xC8E, 0xC90}, {0xC92, 0xCA8}, {0xCAA, 0xCB3}, {0xCB5, 0xCB9}, {0xCBD, 0xCBD}, {0xCDD, 0xCDE},
    {0xCE0, 0xCE1}, {0xCF1, 0xCF2}, {0xD04, 0xD0C}, {0xD0E, 0xD10}, {0xD12, 0xD3A}, {0xD3D, 0xD3D},
    {0xD4E, 0xD4E}, {0xD54, 0xD56}, {0xD5F, 0xD61}, {0xD7A, 0xD7F}, {0xD85, 0xD96}, {0xD9A, 0xDB1},
    {0xDB3, 0xDBB}, {0xDBD, 0xDBD}, {0xDC0, 0xDC6}, {0xE01, 0xE30}, {0xE32, 0xE33}, {0xE40, 0xE46},
    {0xE81, 0xE82}, {0xE84, 0xE84}, {0xE86, 0xE8A}, {0xE8C, 0xEA3}, {0xEA5, 0xEA5}, {0xEA7, 0xEB0},
    {0xEB2, 0xEB3}, {0xEBD, 0xEBD}, {0xEC0, 0xEC4}, {0xEC6, 0xEC6}, {0xEDC, 0xEDF}, {0xF00, 0xF00},
    {0xF40, 0xF47}, {0xF49, 0xF6C}, {0xF88, 0xF8C}, {0x1000, 0x102A}, {0x103F, 0x103F},
    {0x1050, 0x1055}, {0x105A, 0x105D}, {0x1061, 0x1061}, {0x1065, 0x1066}, {0x106E, 0x1070},
    {0x1075, 0x1081}, {0x108E, 0x108E}, {0x10A0, 0x10C5}, {0x10C7, 0x10C7}, {0x10CD, 0x10CD},
    {0x10D0, 0x10FA}, {0x10FC, 0x1248}, {0x124A, 0x124D}, {0x1250, 0x1256}, {0x1258, 0x1258},
    {0x125A, 0x125D}, {0x1260, 0x1288}, {0x128A, 0x128D}, {0x1290, 0x12B0}, {0x12B2, 0x12B5},
    {0x12B8, 0x12BE}, {0x12C0, 0x12C0}, {0x12C2, 0x12C5}, {0x12C8, 0x12D6}, {0x12D8, 0x1310},
    {0x1312, 0x1315}, {0x1318, 0x135A}, {0x1380, 0x138F}, {0x13A0, 0x13F5}, {0x13F8, 0x13FD},
    {0x1401, 0x166C}, {0x166F, 0x167F}, {0x1681, 0x169A}, {0x16A0, 0x16EA}, {0x16F1, 0x16F8},
    {0x1700, 0x1711}, {0x171F, 0x1731}, {0x1740, 0x1751}, {0x1760, 0x176C}, {0x176E, 0x1770},
    {0x1780, 0x17B3}, {0x17D7, 0x17D7}, {0x17DC, 0x17DC}, {0x1820, 0x1878}, {0x1880, 0x1884},
    {0x1887, 0x18A8}, {0x18AA, 0x18AA}, {0x18B0, 0x18F5}, {0x1900, 0x191E}, {0x1950, 0x196D},
    {0x1970, 0x1974}, {0x1980, 0x19AB}, {0x19B0, 0x19C9}, {0x1A00, 0x1A16}, {0x1A20, 0x1A54},
    {0x1AA7, 0x1AA7}, {0x1B05, 0x1B33}, {0x1B45, 0x1B4C}, {0x1B83, 0x1BA0}, {0x1BAE, 0x1BAF},
    {0x1BBA, 0x1BE5}, {0x1C00, 0x1C23}, {0x1C4D, 0x1C4F}, {0x1C5A, 0x1C7D}, {0x1C80, 0x1C88},
    {0x1C90, 0x1CBA}, {0x1CBD, 0x1CBF}, {0x1CE9, 0x1CEC}, {0x1CEE, 0x1CF3}, {0x1CF5, 0x1CF6},
    {0x1CFA, 0x1CFA}, {0x1D00, 0x1DBF}, {0x1E00, 0x1F15}, {0x1F18, 0x1F1D}, {0x1F20, 0x1F45},
    {0x1F48, 0x1F4D}, {0x1F50, 0x1F57}, {0x1F59, 0x1F59}, {0x1F5B, 0x1F5B}, {0x1F5D, 0x1F5D},
    {0x1F5F, 0x1F7D}, {0x1F80, 0x1FB4}, {0x1FB6, 0x1FBC}, {0x1FBE, 0x1FBE}, {0x1FC2, 0x1FC4},
    {0x1FC6, 0x1FCC}, {0x1FD0, 0x1FD3}, {0x1FD6, 0x1FDB}, {0x1FE0, 0x1FEC}, {0x1FF2, 0x1FF4},
    {0x1FF6, 0x1FFC}, {0x2071, 0x2071}, {0x207F, 0x207F}, {0x2090, 0x209C}, {0x2102, 0x2102},
    {0x2107, 0x2107}, {0x210A, 0x2113}, {0x2115, 0x2115}, {0x2119, 0x211D}, {0x2124, 0x2124},
    {0x2126, 0x2126}, {0x2128, 0x2128}, {0x212A, 0x212D}, {0x212F, 0x2139}, {0x213C, 0x213F},
    {0x2145, 0x2149}, {0x214E, 0x214E}, {0x2183, 0x2184}, {0x2C00, 0x2CE4}, {0x2CEB, 0x2CEE},
    {0x2CF2, 0x2CF3}, {0x2D00, 0x2D25}, {0x2D27, 0x2D27}, {0x2D2D, 0x2D2D}, {0x2D30, 0x2D67},
    {0x2D6F, 0x2D6F}, {0x2D80, 0x2D96}, {0x2DA0, 0x2DA6}, {0x2DA8, 0x2DAE}, {0x2DB0, 0x2DB6},
    {0x2DB8, 0x2DBE}, {0x2DC0, 0x2DC6}, {0x2DC8, 0x2DCE}, {0x2DD0, 0x2DD6}, {0x2DD8, 0x2DDE},
    {0x2E2F, 0x2E2F}, {0x3005, 0x3006}, {0x3031, 0x3035}, {0x303B, 0x303C}, {0x3041, 0x3096},
    {0x309D, 0x309F}, {0x30A1, 0x30FA}, {0x30FC, 0x30FF}, {0x3105, 0x312F}, {0x3131, 0x318E},
    {0x31A0, 0x31BF}, {0x31F0, 0x31FF}, {0x3400, 0x4DBF}, {0x4E00, 0xA48C}, {0xA4D0, 0xA4FD},
    {0xA500, 0xA60C}, {0xA610, 0xA61F}, {0xA62A, 0xA62B}, {0xA640, 0xA66E}, {0xA67F, 0xA69D},
    {0xA6A0, 0xA6E5}, {0xA717, 0xA71F}, {0xA722, 0xA788}, {0xA78B, 0xA7CA}, {0xA7D0, 0xA7D1},
    {0xA7D3, 0xA7D3}, {0xA7D5, 0xA7D9}, {0xA7F2, 0xA801}, {0xA803, 0xA805}, {0xA807, 0xA80A},
    {0xA80C, 0xA822}, {0xA840, 0xA873}, {0xA882, 0xA8B3}, {0xA8F2, 0xA8F7}, {0xA8FB, 0xA8FB},
    {0xA8FD, 0xA8FE}, {0xA90A, 0xA925}, {0xA930, 0xA946}, {0xA960, 0xA97C}, {0xA984, 0xA9B2},
    {0xA9CF, 0xA9CF}, {0xA9E0, 0xA9E4}, {0xA9E6, 0xA9EF}, {0xA9FA, 0xA9FE}, {0xAA00, 0xAA28},
    {0xAA40, 0xAA42}, {0xAA44, 0xAA4B}, {0xAA60, 0xAA76}, {0xAA7A, 0xAA7A}, {0xAA7E, 0xAAAF},
    {0xAAB1, 0xAAB1}, {0xAAB5, 0xAAB6}, {0xAAB9, 0xAABD}, {0xAAC0, 0xAAC0}, {0xAAC2, 0xAAC2},
    {0xAADB, 0xAADD}, {0xAAE0, 0xAAEA}, {0xAAF2, 0xAAF4}, {0xAB01, 0xAB06}, {0xAB09, 0xAB0E},
    {0xAB11, 0xAB16}, {0xAB20, 0xAB26}, {0xAB28, 0xAB2E}, {0xAB30, 0xAB5A}, {0xAB5C, 0xAB69},
    {0xAB70, 0xABE2}, {0xAC00, 0xD7A3}, {0xD7B0, 0xD7C6}, {0xD7CB, 0xD7FB}, {0xF900, 0xFA6D},
    {0xFA70, 0xFAD9}, {0xFB00, 0xFB06}, {0xFB13, 0xFB17}, {0xFB1D, 0xFB1D}, {0xFB1F, 0xFB28},
    {0xFB2A, 0xFB36}, {0xFB38, 0xFB3C}, {0xFB3E, 0xFB3E}, {0xFB40, 0xFB41}, {0xFB43, 0xFB44},
    {0xFB46, 0xFBB1}, {0xFBD3, 0xFD3D}, {0xFD50, 0xFD8F}, {0xFD92, 0xFDC7}, {0xFDF0, 0xFDFB},
    {0xFE70, 0xFE74}, {0xFE76, 0xFEFC}, {0xFF21, 0xFF3A}, {0xFF41, 0xFF5A}, {0xFF66, 0xFFBE},
    {0xFFC2, 0xFFC7}, {0xFFCA, 0xFFCF}, {0xFFD2, 0xFFD7}, {0xFFDA, 0xFFDC}, {0x10000, 0x1000B},
    {0x1000D, 0x10026}, {0x10028, 0x1003A}, {0x1003C, 0x1003D}, {0x1003F, 0x1004D},
    {0x10050, 0x1005D}, {0x10080, 0x100FA}, {0x10280, 0x1029C}, {0x102A0, 0x102D0},
    {0x10300, 0x1031F}, {0x1032D, 0x10340}, {0x10342, 0x10349}, {0x10350, 0x10375},
    {0x10380, 0x1039D}, {0x103A0, 0x103C3}, {0x103C8, 0x103CF}, {0x10400, 0x1049D},
    {0x104B0, 0x104D3}, {0x104D8, 0x104FB}, {0x10500, 0x10527}, {0x10530, 0x10563},
    {0x10570, 0x1057A}, {0x1057C, 0x1058A}, {0x1058C, 0x10592}, {0x10594, 0x10595},
    {0x10597, 0x105A1}, {0x105A3, 0x105B1}, {0x105B3, 0x105B9}, {0x105BB, 0x105BC},
    {0x10600, 0x10736}, {0x10740, 0x10755}, {0x10760, 0x10767}, {0x10780, 0x10785},
    {0x10787, 0x107B0}, {0x107B2, 0x107BA}, {0x10800, 0x10805}, {0x10808, 0x10808},
    {0x1080A, 0x10835}, {0x10837, 0x10838}, {0x1083C, 0x1083C}, {0x1083F, 0x10855},
    {0x10860, 0x10876}, {0x10880, 0x1089E}, {0x108E0, 0x108F2}, {0x108F4, 0x108F5},
    {0x10900, 0x10915}, {0x10920, 0x10939}, {0x10980, 0x109B7}, {0x109BE, 0x109BF},
    {0x10A00, 0x10A00}, {0x10A10, 0x10A13}, {0x10A15, 0x10A17}, {0x10A19, 0x10A35},
    {0x10A60, 0x10A7C}, {0x10A80, 0x10A9C}, {0x10AC0, 0x10AC7}, {0x10AC9, 0x10AE4},
    {0x10B00, 0x10B35}, {0x10B40, 0x10B55}, {0x10B60, 0x10B72}, {0x10B80, 0x10B91},
    {0x10C00, 0x10C48}, {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x10D00, 0x10D23},
    {0x10E80, 0x10EA9}, {0x10EB0, 0x10EB1}, {0x10F00, 0x10F1C}, {0x10F27, 0x10F27},
    {0x10F30, 0x10F45}, {0x10F70, 0x10F81}, {0x10FB0, 0x10FC4}, {0x10FE0, 0x10FF6},
    {0x11003, 0x11037}, {0x11071, 0x11072}, {0x11075, 0x11075}, {0x11083, 0x110AF},
    {0x110D0, 0x110E8}, {0x11103, 0x11126}, {0x11144, 0x11144}, {0x11147, 0x11147},
    {0x11150, 0x11172}, {0x11176, 0x11176}, {0x11183, 0x111B2}, {0x111C1, 0x111C4},
    {0x111DA, 0x111DA}, {0x111DC, 0x111DC}, {0x11200, 0x11211}, {0x11213, 0x1122B},
    {0x1123F, 0x11240}, {0x11280, 0x11286}, {0x11288, 0x11288}, {0x1128A, 0x1128D},
    {0x1128F, 0x1129D}, {0x1129F, 0x112A8}, {0x112B0, 0x112DE}, {0x11305, 0x1130C},
    {0x1130F, 0x11310}, {0x11313, 0x11328}, {0x1132A, 0x11330}, {0x11332, 0x11333},
    {0x11335, 0x11339}, {0x1133D, 0x1133D}, {0x11350, 0x11350}, {0x1135D, 0x11361},
    {0x11400, 0x11434}, {0x11447, 0x1144A}, {0x1145F, 0x11461}, {0x11480, 0x114AF},
    {0x114C4, 0x114C5}, {0x114C7, 0x114C7}, {0x11580, 0x115AE}, {0x115D8, 0x115DB},
    {0x11600, 0x1162F}, {0x11644, 0x11644}, {0x11680, 0x116AA}, {0x116B8, 0x116B8},
    {0x11700, 0x1171A}, {0x11740, 0x11746}, {0x11800, 0x1182B}, {0x118A0, 0x118DF},
    {0x118FF, 0x11906}, {0x11909, 0x11909}, {0x1190C, 0x11913}, {0x11915, 0x11916},
    {0x11918, 0x1192F}, {0x1193F, 0x1193F}, {0x11941, 0x11941}, {0x119A0, 0x119A7},
    {0x119AA, 0x119D0}, {0x119E1, 0x119E1}, {0x119E3, 0x119E3}, {0x11A00, 0x11A00},
    {0x11A0B, 0x11A32}, {0x11A3A, 0x11A3A}, {0x11A50, 0x11A50}, {0x11A5C, 0x11A89},
    {0x11A9D, 0x11A9D}, {0x11AB0, 0x11AF8}, {0x11C00, 0x11C08}, {0x11C0A, 0x11C2E},
    {0x11C40, 0x11C40}, {0x11C72, 0x11C8F}, {0x11D00, 0x11D06}, {0x11D08, 0x11D09},
    {0x11D0B, 0x11D30}, {0x11D46, 0x11D46}, {0x11D60, 0x11D65}, {0x11D67, 0x11D68},
    {0x11D6A, 0x11D89}, {0x11D98, 0x11D98}, {0x11EE0, 0x11EF2}, {0x11F02, 0x11F02},
    {0x11F04, 0x11F10}, {0x11F12, 0x11F33}, {0x11FB0, 0x11FB0}, {0x12000, 0x12399},
    {0x12480, 0x12543}, {0x12F90, 0x12FF0}, {0x13000, 0x1342F}, {0x13441, 0x13446},
    {0x14400, 0x14646}, {0x16800, 0x16A38}, {0x16A40, 0x16A5E}, {0x16A70, 0x16ABE},
    {0x16AD0, 0x16AED}, {0x16B00, 0x16B2F}, {0x16B40, 0x16B43}, {0x16B63, 0x16B77},
    {0x16B7D, 0x16B8F}, {0x16E40, 0x16E7F}, {0x16F00, 0x16F4A}, {0x16F50, 0x16F50},
    {0x16F93, 0x16F9F}, {0x16FE0, 0x16FE1}, {0x16FE3, 0x16FE3}, {0x17000, 0x187F7},
    {0x18800, 0x18CD5}, {0x18D00, 0x18D08}, {0x1AFF0, 0x1AFF3}, {0x1AFF5, 0x1AFFB},
    {0x1AFFD, 0x1AFFE}, {0x1B000, 0x1B122}, {0x1B132, 0x1B132}, {0x1B150, 0x1B152},
    {0x1B155, 0x1B155}, {0x1B164, 0x1B167}, {0x1B170, 0x1B2FB}, {0x1BC00, 0x1BC6A},
    {0x1BC70, 0x1BC7C}, {0x1BC80, 0x1BC88}, {0x1BC90, 0x1BC99}, {0x1D400, 0x1D454},
    {0x1D456, 0x1D49C}, {0x1D49E, 0x1D49F}, {0x1D4A2, 0x1D4A2}, {0x1D4A5, 0x1D4A6},
    {0x1D4A9, 0x1D4AC}, {0x1D4AE, 0x1D4B9}, {0x1D4BB, 0x1D4BB}, {0x1D4BD, 0x1D4C3},
    {0x1D4C5, 0x1D505}, {0x1D507, 0x1D50A}, {0x1D50D, 0x1D514}, {0x1D516, 0x1D51C},
    {0x1D51E, 0x1D539}, {0x1D53B, 0x1D53E}, {0x1D540, 0x1D544}, {0x1D546, 0x1D546},
    {0x1D54A, 0x1D550}, {0x1D552, 0x1D6A5}, {0x1D6A8, 0x1D6C0}, {0x1D6C2, 0x1D6DA},
    {0x1D6DC, 0x1D6FA}, {0x1D6FC, 0x1D714}, {0x1D716, 0x1D734}, {0x1D736, 0x1D74E},
    {0x1D750, 0x1D76E}, {0x1D770, 0x1D788}, {0x1D78A, 0x1D7A8}, {0x1D7AA, 0x1D7C2},
    {0x1D7C4, 0x1D7CB}, {0x1DF00, 0x1DF1E}, {0x1DF25, 0x1DF2A}, {0x1E030, 0x1E06D},
    {0x1E100, 0x1E12C}, {0x1E137, 0x1E13D}, {0x1E14E, 0x1E14E}, {0x1E290, 0x1E2AD},
    {0x1E2C0, 0x1E2EB}, {0x1E4D0, 0x1E4EB}, {0x1E7E0, 0x1E7E6}, {0x1E7E8, 0x1E7EB},
    {0x1E7ED, 0x1E7EE}, {0x1E7F0, 0x1E7FE}, {0x1E800, 0x1E8C4}, {0x1E900, 0x1E943},
    {0x1E94B, 0x1E94B}, {0x1EE00, 0x1EE03}, {0x1EE05, 0x1EE1F}, {0x1EE21, 0x1EE22},
    {0x1EE24, 0x1EE24}, {0x1EE27, 0x1EE27}, {0x1EE29, 0x1EE32}, {0x1EE34, 0x1EE37},
    {0x1EE39, 0x1EE39}, {0x1EE3B, 0x1EE3B}, {0x1EE42, 0x1EE42}, {0x1EE47, 0x1EE47},
    {0x1EE49, 0x1EE49}, {0x1EE4B, 0x1EE4B}, {0x1EE4D, 0x1EE4F}, {0x1EE51, 0x1EE52},
    {0x1EE54, 0x1EE54}, {0x1EE57, 0x1EE57}, {0x1EE59, 0x1EE59}, {0x1EE5B, 0x1EE5B},
    {0x1EE5D, 0x1EE5D}, {0x1EE5F, 0x1EE5F}, {0x1EE61, 0x1EE62}, {0x1EE64, 0x1EE64},
    {0x1EE67, 0x1EE6A}, {0x1EE6C, 0x1EE72}, {0x1EE74, 0x1EE77}, {0x1EE79, 0x1EE7C},
    {0x1EE7E, 0x1EE7E}, {0x1EE80, 0x1EE89}, {0x1EE8B, 0x1EE9B}, {0x1EEA1, 0x1EEA3},
    {0x1EEA5, 0x1EEA9}, {0x1EEAB, 0x1EEBB}, {0x20000, 0x2A6DF}, {0x2A700, 0x2B739},
    {0x2B740, 0x2B81D}, {0x2B820, 0x2CEA1}, {0x2CEB0, 0x2EBE0}, {0x2EBF0, 0x2EE5D},
    {0x2F800, 0x2FA1D}, {0x30000, 0x3134A}, {0x31350, 0x323AF},
};
// 137 ranges, Unicode 15.1.0
static const uint32_t sgllm__uni_numbers[][2] = {
    {0x30, 0x39}, {0xB2, 0xB3}, {0xB9, 0xB9}, {0xBC, 0xBE}, {0x660, 0x669}, {0x6F0, 0x6F9},
    {0x7C0, 0x7C9}, {0x966, 0x96F}, {0x9E6, 0x9EF}, {0x9F4, 0x9F9}, {0xA66, 0xA6F}, {0xAE6, 0xAEF},
    {0xB66, 0xB6F}, {0xB72, 0xB77}, {0xBE6, 0xBF2}, {0xC66, 0xC6F}, {0xC78, 0xC7E}, {0xCE6, 0xCEF},
    {0xD58, 0xD5E}, {0xD66, 0xD78}, {0xDE6, 0xDEF}, {0xE50, 0xE59}, {0xED0, 0xED9}, {0xF20, 0xF33},
    {0x1040, 0x1049}, {0x1090, 0x1099}, {0x1369, 0x137C}, {0x16EE, 0x16F0}, {0x17E0, 0x17E9},
    {0x17F0, 0x17F9}, {0x1810, 0x1819}, {0x1946, 0x194F}, {0x19D0, 0x19DA}, {0x1A80, 0x1A89},
    {0x1A90, 0x1A99}, {0x1B50, 0x1B59}, {0x1BB0, 0x1BB9}, {0x1C40, 0x1C49}, {0x1C50, 0x1C59},
    {0x2070, 0x2070}, {0x2074, 0x2079}, {0x2080, 0x2089}, {0x2150, 0x2182}, {0x2185, 0x2189},
    {0x2460, 0x249B}, {0x24EA, 0x24FF}, {0x2776, 0x2793}, {0x2CFD, 0x2CFD}, {0x3007, 0x3007},
    {0x3021, 0x3029}, {0x3038, 0x303A}, {0x3192, 0x3195}, {0x3220, 0x3229}, {0x3248, 0x324F},
    {0x3251, 0x325F}, {0x3280, 0x3289}, {0x32B1, 0x32BF}, {0xA620, 0xA629}, {0xA6E6, 0xA6EF},
    {0xA830, 0xA835}, {0xA8D0, 0xA8D9}, {0xA900, 0xA909}, {0xA9D0, 0xA9D9}, {0xA9F0, 0xA9F9},
    {0xAA50, 0xAA59}, {0xABF0, 0xABF9}, {0xFF10, 0xFF19}, {0x10107, 0x10133}, {0x10140, 0x10178},
    {0x1018A, 0x1018B}, {0x102E1, 0x102FB}, {0x10320, 0x10323}, {0x10341, 0x10341},
    {0x1034A, 0x1034A}, {0x103D1, 0x103D5}, {0x104A0, 0x104A9}, {0x10858, 0x1085F},
    {0x10879, 0x1087F}, {0x108A7, 0x108AF}, {0x108FB, 0x108FF}, {0x10916, 0x1091B},
    {0x109BC, 0x109BD}, {0x109C0, 0x109CF}, {0x109D2, 0x109FF}, {0x10A40, 0x10A48},
    {0x10A7D, 0x10A7E}, {0x10A9D, 0x10A9F}, {0x10AEB, 0x10AEF}, {0x10B58, 0x10B5F},
    {0x10B78, 0x10B7F}, {0x10BA9, 0x10BAF}, {0x10CFA, 0x10CFF}, {0x10D30, 0x10D39},
    {0x10E60, 0x10E7E}, {0x10F1D, 0x10F26}, {0x10F51, 0x10F54}, {0x10FC5, 0x10FCB},
    {0x11052, 0x1106F}, {0x110F0, 0x110F9}, {0x11136, 0x1113F}, {0x111D0, 0x111D9},
    {0x111E1, 0x111F4}, {0x112F0, 0x112F9}, {0x11450, 0x11459}, {0x114D0, 0x114D9},
    {0x11650, 0x11659}, {0x116C0, 0x116C9}, {0x11730, 0x1173B}, {0x118E0, 0x118F2},
    {0x11950, 0x11959}, {0x11C50, 0x11C6C}, {0x11D50, 0x11D59}, {0x11DA0, 0x11DA9},
    {0x11F50, 0x11F59}, {0x11FC0, 0x11FD4}, {0x12400, 0x1246E}, {0x16A60, 0x16A69},
    {0x16AC0, 0x16AC9}, {0x16B50, 0x16B59}, {0x16B5B, 0x16B61}, {0x16E80, 0x16E96},
    {0x1D2C0, 0x1D2D3}, {0x1D2E0, 0x1D2F3}, {0x1D360, 0x1D378}, {0x1D7CE, 0x1D7FF},
    {0x1E140, 0x1E149}, {0x1E2F0, 0x1E2F9}, {0x1E4F0, 0x1E4F9}, {0x1E8C7, 0x1E8CF},
    {0x1E950, 0x1E959}, {0x1EC71, 0x1ECAB}, {0x1ECAD, 0x1ECAF}, {0x1ECB1, 0x1ECB4},
    {0x1ED01, 0x1ED2D}, {0x1ED2F, 0x1ED3D}, {0x1F100, 0x1F10C}, {0x1FBF0, 0x1FBF9},
};
// END generated tables

enum { SGLLM__UNI_NONE = 0, SGLLM__UNI_OTHER = 1, SGLLM__UNI_LETTER = 2, SGLLM__UNI_NUMBER = 3, SGLLM__UNI_SPACE = 4 };

static bool sgllm__uni_in(const uint32_t (*r)[2], int64_t n, uint32_t cp) {
    int64_t lo = 0, hi = n - 1;
    while (lo <= hi) {
        int64_t mid = (lo + hi) / 2;
        if (cp < r[mid][0]) hi = mid - 1;
        else if (cp > r[mid][1]) lo = mid + 1;
        else return true;
    }
    return false;
}

// The class llama.cpp's regex code sees: letter (\p{L}), number (\p{N}), white space (its
// White_Space list) or anything else. The three are disjoint in Unicode.
static int sgllm__uni_class(uint32_t cp) {
    if (cp < 128) {
        if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return SGLLM__UNI_LETTER;
        if (cp >= '0' && cp <= '9') return SGLLM__UNI_NUMBER;
        if (cp == ' ' || (cp >= 9 && cp <= 13)) return SGLLM__UNI_SPACE;
        return SGLLM__UNI_OTHER;
    }
    if (cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
        cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000)
        return SGLLM__UNI_SPACE;
    if (sgllm__uni_in(sgllm__uni_letters, (int64_t)(sizeof sgllm__uni_letters / sizeof sgllm__uni_letters[0]), cp))
        return SGLLM__UNI_LETTER;
    if (sgllm__uni_in(sgllm__uni_numbers, (int64_t)(sizeof sgllm__uni_numbers / sizeof sgllm__uni_numbers[0]), cp))
        return SGLLM__UNI_NUMBER;
    return SGLLM__UNI_OTHER;
}

// Length of the UTF-8 sequence a lead byte announces, from its high nibble alone (continuation
// bytes count as 1): the character split both SPM and BPE merging start from.
static size_t sgllm__utf8_len(uint8_t b) {
    static const uint8_t len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return len[b >> 4];
}

// Decodes one code point the way llama.cpp does: continuation bytes are checked but overlong
// forms and surrogates are accepted; anything else costs one byte and yields U+FFFD. Code
// points past U+10FFFF are also treated as invalid (llama.cpp throws on those later).
static uint32_t sgllm__utf8_decode(const uint8_t *s, size_t n, size_t *i) {
    size_t p = *i;
    uint8_t b = s[p];
    uint32_t cp;
    size_t len;
    if (b < 0x80) {
        *i = p + 1;
        return b;
    }
    if (!(b & 0x40)) len = 0;
    else if (!(b & 0x20)) len = 2;
    else if (!(b & 0x10)) len = 3;
    else if (!(b & 0x08)) len = 4;
    else len = 0;
    if (len == 0 || p + len > n) goto invalid;
    cp = b & (0x7f >> len);
    for (size_t k = 1; k < len; k++) {
        if ((s[p + k] & 0xc0) != 0x80) goto invalid;
        cp = (cp << 6) | (s[p + k] & 0x3f);
    }
    if (cp > 0x10FFFF) goto invalid;
    *i = p + len;
    return cp;
invalid:
    *i = p + 1;
    return 0xFFFD;
}

static size_t sgllm__utf8_encode(uint32_t cp, uint8_t *out) {
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xc0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xe0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (uint8_t)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (uint8_t)(0xf0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (uint8_t)(0x80 | (cp & 0x3f));
    return 4;
}

// GPT-2's byte-to-unicode map: printable Latin-1 bytes stand for themselves, the other 68
// bytes take code points 256.. in byte order.
static uint32_t sgllm__bpe_byte_cp(uint8_t b) {
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) return b;
    uint32_t n = 0;
    for (uint32_t c = 0; c < b; c++)
        if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE)) n++;
    return 256 + n;
}

// Token attributes (llama.cpp's, from GGUF token types plus its by-name fix-ups).
enum {
    SGLLM__ATTR_NORMAL = 1, SGLLM__ATTR_UNKNOWN = 2, SGLLM__ATTR_CONTROL = 4, SGLLM__ATTR_USER = 8,
    SGLLM__ATTR_UNUSED = 16, SGLLM__ATTR_BYTE = 32, SGLLM__ATTR_EOG = 64
};

enum { SGLLM__VOCAB_SPM = 1, SGLLM__VOCAB_BPE = 2 };

// BPE pre-tokenizers: GPT-2's regex; digits split singly, then GPT-2's; Llama 3's; Qwen2's
// (Llama 3's with single digits).
enum { SGLLM__PRE_NONE = 0, SGLLM__PRE_GPT2, SGLLM__PRE_SMOLLM, SGLLM__PRE_LLAMA3, SGLLM__PRE_QWEN2 };

typedef struct sgllm__hslot {
    uint64_t key;  // hash of the token text (or merge pair)
    int32_t value; // first id (or merge rank) with that hash; more are chained through *_next
} sgllm__hslot;

typedef struct sgllm__vocab {
    int32_t n_tokens;
    int32_t bos, eos, eot, unk, pad; // -1 when absent
    bool add_bos;                    // the vocabulary asks for BOS at the start of a prompt
    bool add_eos;                    // ... and EOS at its end (rare)
    bool add_space_prefix;           // SPM: a space before text that follows BOS or a special token
    bool ignore_merges;              // BPE: a word that is a whole token skips merging
    int kind;                        // SGLLM__VOCAB_*
    int pre;                         // SGLLM__PRE_* (BPE only)
    sgllm__str *text;                // (n_tokens) token texts, views into the GGUF mapping
    float *score;                    // (n_tokens) SPM merge scores
    uint8_t *attr;                   // (n_tokens) SGLLM__ATTR_* bits
    char *pieces;                    // decoded bytes of every token, back to back
    int64_t *piece_off;              // (n_tokens + 1) offsets into pieces
    sgllm__hslot *tok_map;           // stb_ds map: text hash -> first id
    int32_t *tok_next;               // (n_tokens) next id with the same text hash, -1 ends
    int32_t n_merges;
    sgllm__str *merge_a, *merge_b;   // (n_merges) the two halves of each merge rule
    sgllm__hslot *merge_map;         // stb_ds map: pair hash -> first rank
    int32_t *merge_next;             // (n_merges) next rank with the same pair hash
    int64_t *special_tiers;          // (n_tiers) distinct lengths of special texts, longest first
    int32_t n_tiers;
    uint64_t special_lens[256];      // per first byte: bit min(L,64)-1 set if a special text of length L starts with it
    uint64_t special_pair[1024];     // bit set of the first two bytes of special texts of length >= 2
    uint16_t byte_cp[256];           // BPE: byte -> code point of the byte-to-unicode map
    int16_t cp_byte[0x144];          // BPE: and back (-1: no byte)
} sgllm__vocab;

// stb_ds access without its hm* macros: under gcc -std=c11 they expand to `typeof`, which
// strict C11 lacks, and hmgeti stores its result in the map header (a write, so not safe from
// several threads); the _ts lookup writes nothing. A NULL map is treated as empty here because
// stb_ds would allocate on a lookup into NULL.
// Keys keep bits 31 and 63 clear: stb_ds's SipHash shifts bytes 3 and 7 left by 24 as int,
// which is undefined (and trips UBSan) for bytes >= 128. Chains absorb the extra collisions.
#define SGLLM__HM_KEY_MASK 0x7fffffff7fffffffULL

static ptrdiff_t sgllm__hm_find(const sgllm__hslot *t, uint64_t key) {
    if (!t) return -1;
    key &= SGLLM__HM_KEY_MASK;
    ptrdiff_t i;
    stbds_hmget_key_ts((void *)t, sizeof *t, &key, sizeof key, &i, STBDS_HM_BINARY);
    return i; // STBDS_INDEX_EMPTY (-1) when absent
}

static void sgllm__hm_put(sgllm__hslot **t, uint64_t key, int32_t value) {
    key &= SGLLM__HM_KEY_MASK;
    *t = (sgllm__hslot *)stbds_hmput_key(*t, sizeof **t, &key, sizeof key, STBDS_HM_BINARY);
    ptrdiff_t i = stbds_temp(*t - 1);
    (*t)[i].key = key;
    (*t)[i].value = value;
}

static uint64_t sgllm__hash_bytes(const void *p, size_t n, uint64_t h) {
    const uint8_t *s = (const uint8_t *)p;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ULL; // FNV-1a
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ULL;
    return h ^ (h >> 32);
}
static uint64_t sgllm__hash_text(const void *p, size_t n) { return sgllm__hash_bytes(p, n, 0xcbf29ce484222325ULL); }
static uint64_t sgllm__hash_pair(const void *a, size_t an, const void *b, size_t bn) {
    return sgllm__hash_bytes(b, bn, sgllm__hash_text(a, an) ^ (uint64_t)an);
}

// Id of the token whose text is exactly s[0..n), or -1.
static int32_t sgllm__vocab_find(const sgllm__vocab *v, const void *s, size_t n) {
    if (n == 0) return -1;
    ptrdiff_t k = sgllm__hm_find(v->tok_map, sgllm__hash_text(s, n));
    if (k < 0) return -1;
    for (int32_t id = v->tok_map[k].value; id >= 0; id = v->tok_next[id])
        if (v->text[id].len == n && memcmp(v->text[id].ptr, s, n) == 0) return id;
    return -1;
}

// Rank of the merge rule (a, b), or -1.
static int32_t sgllm__vocab_merge_rank(const sgllm__vocab *v, const void *a, size_t an, const void *b, size_t bn) {
    ptrdiff_t k = sgllm__hm_find(v->merge_map, sgllm__hash_pair(a, an, b, bn));
    if (k < 0) return -1;
    for (int32_t r = v->merge_map[k].value; r >= 0; r = v->merge_next[r])
        if (v->merge_a[r].len == an && v->merge_b[r].len == bn && memcmp(v->merge_a[r].ptr, a, an) == 0 &&
            memcmp(v->merge_b[r].ptr, b, bn) == 0)
            return r;
    return -1;
}

static void sgllm__vocab_free(sgllm__vocab *v) {
    if (!v) return;
    sgllm__free(v->text);
    sgllm__free(v->score);
    sgllm__free(v->attr);
    sgllm__free(v->pieces);
    sgllm__free(v->piece_off);
    hmfree(v->tok_map);
    sgllm__free(v->tok_next);
    sgllm__free(v->merge_a);
    sgllm__free(v->merge_b);
    hmfree(v->merge_map);
    sgllm__free(v->merge_next);
    sgllm__free(v->special_tiers);
    memset(v, 0, sizeof *v);
}

static bool sgllm__vocab_is_control(const sgllm__vocab *v, int32_t tok) {
    return tok >= 0 && tok < v->n_tokens && (v->attr[tok] & SGLLM__ATTR_CONTROL);
}

static bool sgllm__vocab_is_eog(const sgllm__vocab *v, int32_t tok) {
    return tok >= 0 && tok < v->n_tokens && (v->attr[tok] & SGLLM__ATTR_EOG);
}

static const char *sgllm__vocab_piece(const sgllm__vocab *v, int32_t tok, size_t *len) {
    if (tok < 0 || tok >= v->n_tokens || !v->piece_off) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = (size_t)(v->piece_off[tok + 1] - v->piece_off[tok]);
    return v->pieces + v->piece_off[tok];
}

static bool sgllm__vocab_text_is(const sgllm__vocab *v, int32_t id, const char *const *list) {
    // every listed text starts with one of these bytes: skip most tokens at once
    uint8_t c = v->text[id].len ? (uint8_t)v->text[id].ptr[0] : 0;
    if (c != '<' && c != '[' && c != '_' && c != 0xe2) return false;
    for (; *list; list++)
        if (sgllm__str_eq(v->text[id], *list)) return true;
    return false;
}

// Sets the BPE pre-tokenizer from its GGUF name (tokenizer.ggml.pre); false if unknown.
// Aliases are the names llama.cpp maps to the same regex.
static bool sgllm__vocab_set_pre(sgllm__vocab *v, sgllm__str name) {
    static const struct {
        const char *name;
        int pre;
        bool ignore_merges, add_bos;
    } pres[] = {
        {"gpt-2", SGLLM__PRE_GPT2, false, false},       {"phi-2", SGLLM__PRE_GPT2, false, false},
        {"mpt", SGLLM__PRE_GPT2, false, false},         {"olmo", SGLLM__PRE_GPT2, false, false},
        {"smollm", SGLLM__PRE_SMOLLM, false, false},    {"starcoder", SGLLM__PRE_SMOLLM, false, false},
        {"refact", SGLLM__PRE_SMOLLM, false, false},    {"command-r", SGLLM__PRE_SMOLLM, false, false},
        {"codeshell", SGLLM__PRE_SMOLLM, false, false}, {"llama-bpe", SGLLM__PRE_LLAMA3, true, true},
        {"llama3", SGLLM__PRE_LLAMA3, true, true},      {"llama-v3", SGLLM__PRE_LLAMA3, true, true},
        {"falcon3", SGLLM__PRE_LLAMA3, true, true},     {"pixtral", SGLLM__PRE_LLAMA3, true, true},
        {"dbrx", SGLLM__PRE_LLAMA3, false, false},      {"smaug-bpe", SGLLM__PRE_LLAMA3, false, false},
        {"qwen2", SGLLM__PRE_QWEN2, false, false},      {"deepseek-r1-qwen", SGLLM__PRE_QWEN2, false, false},
        {"stablelm2", SGLLM__PRE_QWEN2, false, false},  {"megrez", SGLLM__PRE_QWEN2, false, false},
    };
    for (size_t i = 0; i < sizeof pres / sizeof pres[0]; i++)
        if (sgllm__str_eq(name, pres[i].name)) {
            v->pre = pres[i].pre;
            v->ignore_merges = pres[i].ignore_merges;
            v->add_bos = pres[i].add_bos;
            return true;
        }
    return false;
}

// Hex value of a "<0xXX>" byte token (0 for a malformed one, as strtol would give garbage).
static uint8_t sgllm__vocab_byte_of(sgllm__str t) {
    uint8_t b = 0;
    for (uint64_t i = 3; i < 5 && i < t.len; i++) {
        char c = t.ptr[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) break;
        b = (uint8_t)(b * 16 + d);
    }
    return b;
}

// Writes the bytes token id stands for into out (NULL: only count); returns the count.
static size_t sgllm__vocab_decode_token(const sgllm__vocab *v, int32_t id, char *out) {
    sgllm__str t = v->text[id];
    uint8_t a = v->attr[id];
    if (a & (SGLLM__ATTR_CONTROL | SGLLM__ATTR_UNKNOWN | SGLLM__ATTR_USER)) {
        if (out) memcpy(out, t.ptr, t.len);
        return (size_t)t.len;
    }
    if (a & SGLLM__ATTR_NORMAL) {
        size_t n = 0;
        if (v->kind == SGLLM__VOCAB_SPM) { // U+2581 (e2 96 81) stands for a space
            for (uint64_t i = 0; i < t.len; i++) {
                if (i + 2 < t.len && (uint8_t)t.ptr[i] == 0xe2 && (uint8_t)t.ptr[i + 1] == 0x96 &&
                    (uint8_t)t.ptr[i + 2] == 0x81) {
                    if (out) out[n] = ' ';
                    n++;
                    i += 2;
                } else {
                    if (out) out[n] = t.ptr[i];
                    n++;
                }
            }
            return n;
        }
        // BPE: every code point maps back to the byte it encodes; one outside the map (a
        // malformed vocabulary) keeps its UTF-8 bytes
        for (size_t i = 0; i < t.len;) {
            size_t start = i;
            uint32_t cp = sgllm__utf8_decode((const uint8_t *)t.ptr, (size_t)t.len, &i);
            int byte = cp < 0x144 ? v->cp_byte[cp] : -1;
            if (byte >= 0) {
                if (out) out[n] = (char)byte;
                n++;
            } else {
                if (out) memcpy(out + n, t.ptr + start, i - start);
                n += i - start;
            }
        }
        return n;
    }
    if (a & SGLLM__ATTR_BYTE) {
        if (out) out[0] = (char)sgllm__vocab_byte_of(t);
        return 1;
    }
    return 0; // unused and undefined tokens stand for nothing
}

static int sgllm__vocab_len_cmp(const void *pa, const void *pb) { // descending
    int64_t a = *(const int64_t *)pa, b = *(const int64_t *)pb;
    return a > b ? -1 : a < b;
}

// Optional token id key: absent keeps *id; out of range keeps it too (llama.cpp warns).
static void sgllm__vocab_read_id(const sgllm__gguf *g, const char *key, int32_t n_tokens, int32_t *id) {
    int64_t x;
    if (sgllm__gguf_int(g, key, &x) && x >= 0 && x < n_tokens) *id = (int32_t)x;
}

static const sgllm__gguf_kv *sgllm__vocab_array(const sgllm__gguf *g, const char *key, uint32_t type) {
    const sgllm__gguf_kv *kv = sgllm__gguf_find(g, key);
    return kv && kv->type == SGLLM__GGUF_ARRAY && kv->arr_type == type ? kv : NULL;
}

static bool sgllm__vocab_is_special_text(const sgllm__vocab *v, int32_t id) {
    return v->text[id].len > 0 && (v->attr[id] & (SGLLM__ATTR_CONTROL | SGLLM__ATTR_USER | SGLLM__ATTR_UNKNOWN));
}

// llama.cpp recognizes some special tokens by their text: end-of-turn, fill-in-the-middle and
// end-of-generation markers. Found tokens become control tokens.
static void sgllm__vocab_by_text(sgllm__vocab *v, const sgllm__gguf *g) {
    static const char *const eot[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                                      "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]",
                                      "<\357\275\234end\342\226\201of\342\226\201sentence\357\275\234>",
                                      "<end_of_utterance>", NULL};
    static const char *const eom[] = {"<|eom_id|>", NULL};
    static const char *const fim_pre[] = {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>",
                                          "<\357\275\234fim\342\226\201begin\357\275\234>", "<PRE>",
                                          "\342\226\201<PRE>", "<|code_prefix|>", "<|prefix|>", NULL};
    static const char *const fim_suf[] = {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>",
                                          "<\357\275\234fim\342\226\201hole\357\275\234>", "<SUF>",
                                          "\342\226\201<SUF>", "<|code_suffix|>", "<|suffix|>", NULL};
    static const char *const fim_mid[] = {"<|fim_middle|>", "<fim-middle>", "<fim_middle>",
                                          "<\357\275\234fim\342\226\201end\357\275\234>", "<MID>",
                                          "\342\226\201<MID>", "<|code_middle|>", "<|middle|>", NULL};
    static const char *const fim_pad[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL};
    static const char *const fim_rep[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", NULL};
    static const char *const fim_sep[] = {"<|file_sep|>", NULL};
    static const char *const eog[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
                                      "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>",
                                      "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>",
                                      "<turn|>", "<|tool_response>",
                                      "<\357\275\234end\342\226\201of\342\226\201sentence\357\275\234>", "[e~[",
                                      NULL};
    static const char *const keys[] = {"tokenizer.ggml.eom_token_id", "tokenizer.ggml.fim_pre_token_id",
                                       "tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.fim_mid_token_id",
                                       "tokenizer.ggml.fim_pad_token_id", "tokenizer.ggml.fim_rep_token_id",
                                       "tokenizer.ggml.fim_sep_token_id"};
    const char *const *lists[] = {eom, fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep};
    int32_t ids[7];
    int32_t n = v->n_tokens;
    v->eot = -1;
    sgllm__vocab_read_id(g, "tokenizer.ggml.eot_token_id", n, &v->eot);
    if (v->eot < 0) // llama.cpp takes whichever its hash map yields first; the lowest id here
        for (int32_t i = 0; i < n && v->eot < 0; i++)
            if (sgllm__vocab_text_is(v, i, eot)) v->eot = i, v->attr[i] |= SGLLM__ATTR_CONTROL;
    for (int k = 0; k < 7; k++) {
        ids[k] = -1;
        sgllm__vocab_read_id(g, keys[k], n, &ids[k]);
        if (ids[k] < 0)
            for (int32_t i = 0; i < n && ids[k] < 0; i++)
                if (sgllm__vocab_text_is(v, i, lists[k])) ids[k] = i, v->attr[i] |= SGLLM__ATTR_CONTROL;
    }
    int32_t id_return = -1, id_call = -1, id_flush = -1, id_end = -1, id_tool = -1, id_s = -1;
    for (int32_t i = 0; i < n; i++) {
        if (sgllm__vocab_text_is(v, i, eog)) v->attr[i] |= SGLLM__ATTR_EOG | SGLLM__ATTR_CONTROL;
        sgllm__str t = v->text[i];
        // gpt-oss: these always render, as user-defined tokens
        if (sgllm__str_eq(t, "<|channel|>") || sgllm__str_eq(t, "<|message|>") || sgllm__str_eq(t, "<|start|>") ||
            sgllm__str_eq(t, "<|constrain|>"))
            v->attr[i] = SGLLM__ATTR_USER;
    }
    static const int eog_ids[] = {0, 4, 5, 6}; // eom and fim pad/rep/sep end generation; fim pre/suf/mid do not
    for (int k = 0; k < 4; k++)
        if (ids[eog_ids[k]] >= 0) v->attr[ids[eog_ids[k]]] |= SGLLM__ATTR_EOG;
    if (v->eos >= 0) v->attr[v->eos] |= SGLLM__ATTR_EOG;
    if (v->eot >= 0) v->attr[v->eot] |= SGLLM__ATTR_EOG;
    for (int32_t i = 0; i < n; i++) {
        if (!(v->attr[i] & SGLLM__ATTR_EOG)) continue;
        sgllm__str t = v->text[i];
        if (sgllm__str_eq(t, "<|return|>")) id_return = i;
        else if (sgllm__str_eq(t, "<|call|>") || sgllm__str_eq(t, "<|calls|>")) id_call = i;
        else if (sgllm__str_eq(t, "<|flush|>")) id_flush = i;
        else if (sgllm__str_eq(t, "<|end|>")) id_end = i;
        else if (sgllm__str_eq(t, "<|tool_response>")) id_tool = i;
        else if (sgllm__str_eq(t, "</s>")) id_s = i;
    }
    // llama.cpp's workarounds: in harmony-style vocabularies <|end|> separates messages, and
    // in Gemma 4 </s> is ordinary text
    if (id_end >= 0 && id_call >= 0 && (id_return >= 0 || id_flush >= 0)) v->attr[id_end] = SGLLM__ATTR_USER;
    if (id_tool >= 0 && id_s >= 0) v->attr[id_s] = SGLLM__ATTR_NORMAL;
}

static sgllm_status sgllm__vocab_build(sgllm__vocab *v, const sgllm__gguf *g, sgllm__diag *d) {
    int32_t n = v->n_tokens;
    // text -> id
    v->tok_next = (int32_t *)sgllm__malloc((size_t)n * sizeof(int32_t));
    if (!v->tok_next) return sgllm__fail(d, SGLLM_ERR_OUT_OF_MEMORY, "out of memory building the vocabulary");
    for (int32_t i = n - 1; i >= 0; i--) { // backwards so each chain starts at its lowest id
        sgllm__str t = v->text[i];
        v->tok_next[i] = -1;
        if (t.len == 0) continue; // llama.cpp renames empty tokens; none can match text
        uint64_t h = sgllm__hash_text(t.ptr, (size_t)t.len);
        ptrdiff_t k = sgllm__hm_find(v->tok_map, h);
        if (k >= 0) {
            for (int32_t j = v->tok_map[k].value; j >= 0; j = v->tok_next[j])
                if (v->text[j].len == t.len && !memcmp(v->text[j].ptr, t.ptr, t.len))
                    return sgllm__fail(d, SGLLM_ERR_FORMAT, "duplicate token in vocabulary: '%.*s' has ids %d and %d",
                                       (int)(t.len > 64 ? 64 : t.len), t.ptr, i, j);
            v->tok_next[i] = v->tok_map[k].value;
            v->tok_map[k].value = i;
        } else {
            sgllm__hm_put(&v->tok_map, h, i);
        }
    }
    // merges: "first second", split at the first space after the first byte
    if (v->kind == SGLLM__VOCAB_BPE) {
        const sgllm__gguf_kv *kv = sgllm__vocab_array(g, "tokenizer.ggml.merges", SGLLM__GGUF_STRING);
        if (!kv) return sgllm__fail(d, SGLLM_ERR_FORMAT, "BPE vocabulary without tokenizer.ggml.merges (an array of strings)");
        if (kv->arr_n > INT32_MAX) return sgllm__fail(d, SGLLM_ERR_FORMAT, "too many merges (%llu)", (unsigned long long)kv->arr_n);
        v->n_merges = (int32_t)kv->arr_n;
        v->merge_a = (sgllm__str *)sgllm__calloc((size_t)v->n_merges + 1, sizeof(sgllm__str));
        v->merge_b = (sgllm__str *)sgllm__calloc((size_t)v->n_merges + 1, sizeof(sgllm__str));
        v->merge_next = (int32_t *)sgllm__malloc(((size_t)v->n_merges + 1) * sizeof(int32_t));
        if (!v->merge_a || !v->merge_b || !v->merge_next)
            return sgllm__fail(d, SGLLM_ERR_OUT_OF_MEMORY, "out of memory reading merges");
        for (int32_t r = 0; r < v->n_merges; r++) {
            sgllm__str m = kv->strs[r], a = {m.ptr, 0}, b = {m.ptr, 0};
            for (uint64_t k = 1; k < m.len; k++)
                if (m.ptr[k] == ' ') {
                    a.len = k;
                    b.ptr = m.ptr + k + 1;
                    b.len = m.len - k - 1;
                    break;
                }
            v->merge_a[r] = a;
            v->merge_b[r] = b;
            v->merge_next[r] = -1;
            uint64_t h = sgllm__hash_pair(a.ptr, (size_t)a.len, b.ptr, (size_t)b.len);
            ptrdiff_t k = sgllm__hm_find(v->merge_map, h);
            if (k < 0) {
                sgllm__hm_put(&v->merge_map, h, r);
                continue;
            }
            bool dup = false; // a repeated rule keeps its first rank
            int32_t last = -1;
            for (int32_t j = v->merge_map[k].value; j >= 0; last = j, j = v->merge_next[j])
                if (v->merge_a[j].len == a.len && v->merge_b[j].len == b.len && !memcmp(v->merge_a[j].ptr, a.ptr, a.len) &&
                    !memcmp(v->merge_b[j].ptr, b.ptr, b.len))
                    dup = true;
            if (!dup) v->merge_next[last] = r;
        }
        memset(v->cp_byte, 0xff, sizeof v->cp_byte);
        for (int b = 0; b < 256; b++) {
            v->byte_cp[b] = (uint16_t)sgllm__bpe_byte_cp((uint8_t)b);
            v->cp_byte[v->byte_cp[b]] = (int16_t)b;
        }
    }
    sgllm__vocab_by_text(v, g);
    // special tokens: first-byte/length filters and the distinct lengths, longest first
    int64_t n_special = 0;
    for (int32_t i = 0; i < n; i++)
        if (sgllm__vocab_is_special_text(v, i)) n_special++;
    int64_t *lens = (int64_t *)sgllm__malloc((size_t)(n_special + 1) * sizeof(int64_t));
    if (!lens) return sgllm__fail(d, SGLLM_ERR_OUT_OF_MEMORY, "out of memory building the vocabulary");
    n_special = 0;
    for (int32_t i = 0; i < n; i++) {
        if (!sgllm__vocab_is_special_text(v, i)) continue;
        sgllm__str t = v->text[i];
        uint8_t b0 = (uint8_t)t.ptr[0];
        v->special_lens[b0] |= 1ULL << (t.len >= 64 ? 63 : t.len - 1);
        if (t.len >= 2) {
            unsigned pair = (unsigned)b0 << 8 | (uint8_t)t.ptr[1];
            v->special_pair[pair >> 6] |= 1ULL << (pair & 63);
        }
        lens[n_special++] = (int64_t)t.len;
    }
    qsort(lens, (size_t)n_special, sizeof(int64_t), sgllm__vocab_len_cmp);
    v->n_tiers = 0;
    for (int64_t i = 0; i < n_special; i++)
        if (i == 0 || lens[i] != lens[i - 1]) lens[v->n_tiers++] = lens[i];
    v->special_tiers = lens;
    // pieces
    v->piece_off = (int64_t *)sgllm__malloc(((size_t)n + 1) * sizeof(int64_t));
    if (!v->piece_off) return sgllm__fail(d, SGLLM_ERR_OUT_OF_MEMORY, "out of memory building the vocabulary");
    int64_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        v->piece_off[i] = total;
        total += (int64_t)sgllm__vocab_decode_token(v, i, NULL);
    }
    v->piece_off[n] = total;
    v->pieces = (char *)sgllm__malloc((size_t)total);
    if (!v->pieces) return sgllm__fail(d, SGLLM_ERR_OUT_OF_MEMORY, "out of memory building the vocabulary");
    for (int32_t i = 0; i < n; i++) sgllm__vocab_decode_token(v, i, v->pieces + v->piece_off[i]);
    return SGLLM_OK;
}

// Builds the vocabulary from the tokenizer.ggml.* metadata of g. Token texts stay views into
// g's mapping (keep it open while v lives); pieces and tables are owned. On failure v is left
// zeroed and the message names the offending key.
static sgllm_status sgllm__vocab_load(sgllm__vocab *v, const sgllm__gguf *g, sgllm__diag *d) {
    memset(v, 0, sizeof *v);
    sgllm__str model;
    if (!sgllm__gguf_string(g, "tokenizer.ggml.model", &model))
        return sgllm__fail(d, SGLLM_ERR_FORMAT, "missing tokenizer.ggml.model (the file has no tokenizer)");
    if (sgllm__str_eq(model, "llama")) {
        v->kind = SGLLM__VOCAB_SPM;
        v->bos = 1, v->eos = 2, v->unk = 0, v->pad = -1;
        v->add_bos = true;
        v->add_space_prefix = true;
    } else if (sgllm__str_eq(model, "gpt2")) {
        v->kind = SGLLM__VOCAB_BPE;
        v->bos = 11, v->eos = 11, v->unk = -1, v->pad = -1;
        sgllm__str pre;
        if (!sgllm__gguf_string(g, "tokenizer.ggml.pre", &pre))
            return sgllm__fail(d, SGLLM_ERR_UNSUPPORTED, "BPE tokenizer without tokenizer.ggml.pre is not supported");
        if (!sgllm__vocab_set_pre(v, pre))
            return sgllm__fail(d, SGLLM_ERR_UNSUPPORTED,
                               "BPE pre-tokenizer '%.*s' is not supported (sgllm knows gpt-2, smollm, llama-bpe, qwen2 and aliases)",
                               (int)(pre.len > 64 ? 64 : pre.len), pre.ptr);
    } else {
        return sgllm__fail(d, SGLLM_ERR_UNSUPPORTED, "tokenizer model '%.*s' is not supported (sgllm knows 'llama' and 'gpt2')",
                           (int)(model.len > 64 ? 64 : model.len), model.ptr);
    }
    const sgllm__gguf_kv *toks = sgllm__vocab_array(g, "tokenizer.ggml.tokens", SGLLM__GGUF_STRING);
    if (!toks) return sgllm__fail(d, SGLLM_ERR_FORMAT, "missing tokenizer.ggml.tokens (an array of strings)");
    if (toks->arr_n == 0 || toks->arr_n > INT32_MAX)
        return sgllm__fail(d, SGLLM_ERR_FORMAT, "tokenizer.ggml.tokens has %llu entries", (unsigned long long)toks->arr_n);
    int32_t n = (int32_t)toks->arr_n;
    v->n_tokens = n;
    v->text = (sgllm__str *)sgllm__malloc((size_t)n * sizeof(sgllm__str));
    v->score = (float *)sgllm__calloc((size_t)n, sizeof(float));
    v->attr = (uint8_t *)sgllm__malloc((size_t)n);
    if (!v->text || !v->score || !v->attr) {
        sgllm__vocab_free(v);
        return sgllm__fail(d, SGLLM_ERR_OUT_OF_MEMORY, "out of memory reading %d tokens", n);
    }
    memcpy(v->text, toks->strs, (size_t)n * sizeof(sgllm__str));
    const sgllm__gguf_kv *sc = sgllm__gguf_find(g, "tokenizer.ggml.scores");
    if (sc) {
        if (sc->type != SGLLM__GGUF_ARRAY || (sc->arr_type != SGLLM__GGUF_F32 && sc->arr_type != SGLLM__GGUF_I32) ||
            sc->arr_n != (uint64_t)n) {
            sgllm__vocab_free(v);
            return sgllm__fail(d, SGLLM_ERR_FORMAT, "tokenizer.ggml.scores must be %d f32 or i32 values (has %llu)", n,
                               (unsigned long long)(sc->type == SGLLM__GGUF_ARRAY ? sc->arr_n : 0));
        }
        for (int32_t i = 0; i < n; i++) {
            if (sc->arr_type == SGLLM__GGUF_F32) {
                memcpy(&v->score[i], sc->data + (size_t)i * 4, 4);
            } else {
                int32_t x;
                memcpy(&x, sc->data + (size_t)i * 4, 4);
                v->score[i] = (float)x;
            }
        }
    }
    const sgllm__gguf_kv *ty = sgllm__gguf_find(g, "tokenizer.ggml.token_type");
    if (ty && (ty->type != SGLLM__GGUF_ARRAY || ty->arr_type != SGLLM__GGUF_I32 || ty->arr_n != (uint64_t)n)) {
        sgllm__vocab_free(v);
        return sgllm__fail(d, SGLLM_ERR_FORMAT, "tokenizer.ggml.token_type must be %d i32 values (has %llu)", n,
                           (unsigned long long)(ty->type == SGLLM__GGUF_ARRAY ? ty->arr_n : 0));
    }
    for (int32_t i = 0; i < n; i++) {
        // GGUF token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
        static const uint8_t attr_of[7] = {0, SGLLM__ATTR_NORMAL, SGLLM__ATTR_UNKNOWN, SGLLM__ATTR_CONTROL,
                                           SGLLM__ATTR_USER, SGLLM__ATTR_UNUSED, SGLLM__ATTR_BYTE};
        int32_t t = 1;
        if (ty) memcpy(&t, ty->data + (size_t)i * 4, 4);
        v->attr[i] = t >= 0 && t < 7 ? attr_of[t] : 0;
    }
    // default ids must lie in the vocabulary; the GGUF keys override them
    int32_t *ids[] = {&v->bos, &v->eos, &v->unk, &v->pad};
    static const char *const id_keys[] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                          "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id"};
    for (int k = 0; k < 4; k++) {
        if (*ids[k] >= n) *ids[k] = -1;
        sgllm__vocab_read_id(g, id_keys[k], n, ids[k]);
    }
    int64_t flag;
    if (sgllm__gguf_int(g, "tokenizer.ggml.add_bos_token", &flag)) v->add_bos = flag != 0;
    if (sgllm__gguf_int(g, "tokenizer.ggml.add_eos_token", &flag)) v->add_eos = flag != 0;
    if (sgllm__gguf_int(g, "tokenizer.ggml.add_space_prefix", &flag)) v->add_space_prefix = flag != 0;
    if ((v->add_bos && v->bos < 0) || (v->add_eos && v->eos < 0)) {
        sgllm__vocab_free(v);
        return sgllm__fail(d, SGLLM_ERR_FORMAT, "the vocabulary asks for %s but has no valid %s token id",
                           v->add_bos && v->bos < 0 ? "BOS" : "EOS", v->add_bos && v->bos < 0 ? "BOS" : "EOS");
    }
    sgllm_status s = sgllm__vocab_build(v, g, d);
    if (s != SGLLM_OK) sgllm__vocab_free(v);
    return s;
}

// Scratch memory of one sgllm__tokenize call, grown as needed.
typedef struct sgllm__bigram {
    double key;          // SPM: the merged token's score; BPE: minus the merge rank (higher wins)
    int32_t left, right; // symbol indices
    int64_t ln, rn;      // their byte lengths when queued: a change means the entry is stale
} sgllm__bigram;

typedef struct sgllm__tsym {
    int64_t start, n; // bytes of the symbol in the text being merged; n == 0 once merged away
    int32_t prev, next;
} sgllm__tsym;

typedef struct sgllm__tokw {
    const sgllm__vocab *v;
    int32_t *out;
    int64_t cap, n_out;
    bool oom;
    uint8_t *buf;          // SPM: the escaped fragment; BPE: the byte-encoded word
    size_t buf_cap;
    sgllm__tsym *sym;
    size_t sym_cap;
    sgllm__bigram *heap;
    size_t heap_cap, heap_n;
    uint32_t *cps;         // BPE: code points of the fragment
    uint8_t *cls;          // ... and their classes
    int64_t *ends;         // ... and the word ends
    size_t cps_cap, cls_cap, ends_cap;
} sgllm__tokw;

static void sgllm__tokw_push(sgllm__tokw *w, int32_t tok) {
    if (w->n_out < w->cap) w->out[w->n_out] = tok;
    w->n_out++;
}

// Grows *p (elements of size sz) to hold at least n; false on overflow or out of memory.
static bool sgllm__tokw_grow(void **p, size_t *cap, size_t n, size_t sz) {
    if (n <= *cap) return true;
    size_t c = *cap ? *cap : 64;
    while (c < n) {
        if (c > SIZE_MAX / 2 / sz) return false;
        c *= 2;
    }
    void *q = SGLLM_REALLOC(*p, c * sz);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

static bool sgllm__bigram_before(const sgllm__bigram *a, const sgllm__bigram *b) {
    return a->key > b->key || (a->key == b->key && a->left < b->left);
}

static bool sgllm__heap_push(sgllm__tokw *w, sgllm__bigram b) {
    if (!sgllm__tokw_grow((void **)&w->heap, &w->heap_cap, w->heap_n + 1, sizeof b)) return false;
    size_t i = w->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!sgllm__bigram_before(&b, &w->heap[parent])) break;
        w->heap[i] = w->heap[parent];
        i = parent;
    }
    w->heap[i] = b;
    return true;
}

static sgllm__bigram sgllm__heap_pop(sgllm__tokw *w) {
    sgllm__bigram top = w->heap[0], last = w->heap[--w->heap_n];
    size_t i = 0, n = w->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && sgllm__bigram_before(&w->heap[c + 1], &w->heap[c])) c++;
        if (!sgllm__bigram_before(&w->heap[c], &last)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n) w->heap[i] = last;
    return top;
}

// Splits s[0..n) into UTF-8 characters (by lead byte) as a linked list of symbols.
static int32_t sgllm__tokw_symbols(sgllm__tokw *w, const uint8_t *s, int64_t n) {
    int32_t count = 0;
    for (int64_t off = 0; off < n; count++) {
        if (!sgllm__tokw_grow((void **)&w->sym, &w->sym_cap, (size_t)count + 1, sizeof(sgllm__tsym))) {
            w->oom = true;
            return 0;
        }
        int64_t len = (int64_t)sgllm__utf8_len(s[off]);
        if (len > n - off) len = n - off;
        w->sym[count] = (sgllm__tsym){off, len, count - 1, off + len == n ? -1 : count + 1};
        off += len;
    }
    return count;
}

static void sgllm__spm_try_bigram(sgllm__tokw *w, const uint8_t *s, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    sgllm__tsym *a = &w->sym[l], *b = &w->sym[r];
    int32_t id = sgllm__vocab_find(w->v, s + a->start, (size_t)(a->n + b->n));
    if (id < 0) return;
    if (!sgllm__heap_push(w, (sgllm__bigram){w->v->score[id], l, r, a->n, b->n})) w->oom = true;
}

// Emits the <0xXX> token of byte b, else a token whose text is that byte, else unk.
static void sgllm__spm_byte(sgllm__tokw *w, uint8_t b) {
    static const char hex[] = "0123456789ABCDEF";
    char t[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
    int32_t id = sgllm__vocab_find(w->v, t, 6);
    if (id < 0) id = sgllm__vocab_find(w->v, &b, 1);
    if (id < 0) id = w->v->unk;
    if (id >= 0) sgllm__tokw_push(w, id);
}

// SPM on s[0..n) (spaces already escaped): merge the best-scoring adjacent pair whose
// concatenation is a token until none is left; leftover characters become byte tokens.
static void sgllm__spm_fragment(sgllm__tokw *w, const uint8_t *s, int64_t n) {
    int32_t count = sgllm__tokw_symbols(w, s, n);
    if (count == 0) return;
    w->heap_n = 0;
    for (int32_t i = 1; i < count && !w->oom; i++) sgllm__spm_try_bigram(w, s, i - 1, i);
    while (w->heap_n && !w->oom) {
        sgllm__bigram bg = sgllm__heap_pop(w);
        sgllm__tsym *a = &w->sym[bg.left], *b = &w->sym[bg.right];
        if (a->n == 0 || b->n == 0 || a->n + b->n != bg.ln + bg.rn) continue;
        a->n += b->n;
        b->n = 0;
        a->next = b->next;
        if (b->next >= 0) w->sym[b->next].prev = bg.left;
        sgllm__spm_try_bigram(w, s, a->prev, bg.left);
        sgllm__spm_try_bigram(w, s, bg.left, a->next);
    }
    if (w->oom) return;
    // A merged symbol is always a token; a symbol that is not one was never merged, so
    // llama.cpp's re-segmentation through recorded merges never applies: bytes it is.
    for (int32_t i = 0; i != -1; i = w->sym[i].next) {
        sgllm__tsym *y = &w->sym[i];
        int32_t id = sgllm__vocab_find(w->v, s + y->start, (size_t)y->n);
        if (id >= 0) {
            sgllm__tokw_push(w, id);
        } else {
            for (int64_t k = 0; k < y->n; k++) sgllm__spm_byte(w, s[y->start + k]);
        }
    }
}

static void sgllm__bpe_try_bigram(sgllm__tokw *w, const uint8_t *s, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    sgllm__tsym *a = &w->sym[l], *b = &w->sym[r];
    int32_t rank = sgllm__vocab_merge_rank(w->v, s + a->start, (size_t)a->n, s + b->start, (size_t)b->n);
    if (rank < 0) return;
    if (!sgllm__heap_push(w, (sgllm__bigram){-(double)rank, l, r, a->n, b->n})) w->oom = true;
}

// BPE on one byte-encoded word s[0..n): apply the lowest-ranked merge first, leftmost on ties.
static void sgllm__bpe_word(sgllm__tokw *w, const uint8_t *s, int64_t n) {
    if (w->v->ignore_merges) {
        int32_t id = sgllm__vocab_find(w->v, s, (size_t)n);
        if (id >= 0) {
            sgllm__tokw_push(w, id);
            return;
        }
    }
    int32_t count = sgllm__tokw_symbols(w, s, n);
    if (count == 0) return;
    w->heap_n = 0;
    for (int32_t i = 1; i < count && !w->oom; i++) sgllm__bpe_try_bigram(w, s, i - 1, i);
    while (w->heap_n && !w->oom) {
        sgllm__bigram bg = sgllm__heap_pop(w);
        sgllm__tsym *a = &w->sym[bg.left], *b = &w->sym[bg.right];
        // sizes only grow, so equal sizes mean the pair's text is unchanged
        if (a->n == 0 || b->n == 0 || a->n != bg.ln || b->n != bg.rn) continue;
        a->n += b->n;
        b->n = 0;
        a->next = b->next;
        if (b->next >= 0) w->sym[b->next].prev = bg.left;
        sgllm__bpe_try_bigram(w, s, a->prev, bg.left);
        sgllm__bpe_try_bigram(w, s, bg.left, a->next);
    }
    if (w->oom) return;
    for (int32_t i = 0; i != -1; i = w->sym[i].next) {
        sgllm__tsym *y = &w->sym[i];
        int32_t id = sgllm__vocab_find(w->v, s + y->start, (size_t)y->n);
        if (id >= 0) {
            sgllm__tokw_push(w, id);
            continue;
        }
        for (int64_t k = 0; k < y->n; k++) { // llama.cpp looks each byte up alone and skips misses
            id = sgllm__vocab_find(w->v, s + y->start + k, 1);
            if (id >= 0) sgllm__tokw_push(w, id);
        }
    }
}

// Class of code point pos, or NONE outside [a, b) (the regexes never look past their chunk).
static int sgllm__pre_cls(const sgllm__tokw *w, int64_t pos, int64_t a, int64_t b) {
    return pos >= a && pos < b ? w->cls[pos] : SGLLM__UNI_NONE;
}

static bool sgllm__pre_is_nl(const sgllm__tokw *w, int64_t pos, int64_t b) {
    return pos < b && (w->cps[pos] == '\r' || w->cps[pos] == '\n');
}

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ on code
// points [a, b), appending word ends to w->ends[*ne].
static void sgllm__pre_gpt2(sgllm__tokw *w, int64_t a, int64_t b, int64_t *ne) {
    int64_t pos = a;
    while (pos < b) {
        uint32_t cp = w->cps[pos];
        if (cp == '\'' && pos + 1 < b) {
            uint32_t c1 = w->cps[pos + 1], c2 = pos + 2 < b ? w->cps[pos + 2] : 0;
            if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
                pos += 2;
                w->ends[(*ne)++] = pos;
                continue;
            }
            if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
                pos += 3;
                w->ends[(*ne)++] = pos;
                continue;
            }
        }
        int c = cp == ' ' ? sgllm__pre_cls(w, pos + 1, a, b) : w->cls[pos];
        if (c == SGLLM__UNI_LETTER || c == SGLLM__UNI_NUMBER || c == SGLLM__UNI_OTHER) {
            pos += cp == ' ';
            while (sgllm__pre_cls(w, pos, a, b) == c) pos++;
            w->ends[(*ne)++] = pos;
            continue;
        }
        int64_t k = 0;
        while (sgllm__pre_cls(w, pos + k, a, b) == SGLLM__UNI_SPACE) k++;
        if (k > 1 && pos + k < b) pos += k - 1; // \s+(?!\S): leave the last space to the next word
        else if (k > 0) pos += k;
        else pos++;
        w->ends[(*ne)++] = pos;
    }
}

// Llama 3 (max_digits 3) and Qwen2 (1):
// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max}| ?[^\s\p{L}\p{N}]+[\r\n]*|
// \s*[\r\n]+|\s+(?!\S)|\s+
static void sgllm__pre_llama3(sgllm__tokw *w, int64_t a, int64_t b, int64_t max_digits, int64_t *ne) {
    int64_t pos = a;
    while (pos < b) {
        uint32_t cp = w->cps[pos];
        int c = w->cls[pos];
        if (cp == '\'' && pos + 1 < b) {
            uint32_t c1 = w->cps[pos + 1] | 0x20, c2 = pos + 2 < b ? w->cps[pos + 2] | 0x20 : 0;
            if (w->cps[pos + 1] < 128 && (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')) {
                pos += 2;
                w->ends[(*ne)++] = pos;
                continue;
            }
            if (w->cps[pos + 1] < 128 && pos + 2 < b && w->cps[pos + 2] < 128 &&
                ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))) {
                pos += 3;
                w->ends[(*ne)++] = pos;
                continue;
            }
        }
        if (!(cp == '\r' || cp == '\n' || c == SGLLM__UNI_NUMBER) &&
            (c == SGLLM__UNI_LETTER || sgllm__pre_cls(w, pos + 1, a, b) == SGLLM__UNI_LETTER)) {
            pos++;
            while (sgllm__pre_cls(w, pos, a, b) == SGLLM__UNI_LETTER) pos++;
            w->ends[(*ne)++] = pos;
            continue;
        }
        if (c == SGLLM__UNI_NUMBER) {
            int64_t start = pos;
            while (sgllm__pre_cls(w, pos, a, b) == SGLLM__UNI_NUMBER && pos - start < max_digits) pos++;
            w->ends[(*ne)++] = pos;
            continue;
        }
        int c2 = cp == ' ' ? sgllm__pre_cls(w, pos + 1, a, b) : c;
        if (c2 == SGLLM__UNI_OTHER || c2 == SGLLM__UNI_NONE) {
            pos += cp == ' ';
            while (sgllm__pre_cls(w, pos, a, b) == SGLLM__UNI_OTHER) pos++;
            while (sgllm__pre_is_nl(w, pos, b)) pos++;
            w->ends[(*ne)++] = pos;
            continue;
        }
        int64_t k = 0, last_nl = -1;
        while (sgllm__pre_cls(w, pos + k, a, b) == SGLLM__UNI_SPACE) {
            if (w->cps[pos + k] == '\r' || w->cps[pos + k] == '\n') last_nl = pos + k + 1;
            k++;
        }
        if (last_nl >= 0) pos = last_nl; // \s*[\r\n]+
        else if (k > 1 && pos + k < b) pos += k - 1;
        else if (k > 0) pos += k;
        else pos++;
        w->ends[(*ne)++] = pos;
    }
}

// BPE on one raw text fragment: code points, words, byte-level encoding, merges.
static void sgllm__bpe_fragment(sgllm__tokw *w, const uint8_t *s, int64_t n) {
    // at most n code points and n words
    if (!sgllm__tokw_grow((void **)&w->cps, &w->cps_cap, (size_t)n, sizeof(uint32_t)) ||
        !sgllm__tokw_grow((void **)&w->cls, &w->cls_cap, (size_t)n, 1) ||
        !sgllm__tokw_grow((void **)&w->ends, &w->ends_cap, (size_t)n, sizeof(int64_t))) {
        w->oom = true;
        return;
    }
    int64_t m = 0;
    for (size_t i = 0; i < (size_t)n; m++) {
        w->cps[m] = sgllm__utf8_decode(s, (size_t)n, &i);
        w->cls[m] = (uint8_t)sgllm__uni_class(w->cps[m]);
    }
    int64_t ne = 0;
    switch (w->v->pre) {
    case SGLLM__PRE_GPT2: sgllm__pre_gpt2(w, 0, m, &ne); break;
    case SGLLM__PRE_SMOLLM: // every number code point alone, then GPT-2 on the runs between
        for (int64_t a = 0; a < m;) {
            int64_t b = a + 1;
            if (w->cls[a] != SGLLM__UNI_NUMBER)
                while (b < m && w->cls[b] != SGLLM__UNI_NUMBER) b++;
            if (w->cls[a] == SGLLM__UNI_NUMBER) w->ends[ne++] = b;
            else sgllm__pre_gpt2(w, a, b, &ne);
            a = b;
        }
        break;
    case SGLLM__PRE_LLAMA3: sgllm__pre_llama3(w, 0, m, 3, &ne); break;
    default: sgllm__pre_llama3(w, 0, m, 1, &ne); break;
    }
    int64_t start = 0;
    for (int64_t k = 0; k < ne && !w->oom; k++) {
        // canonical UTF-8 of the word (invalid bytes became U+FFFD), each byte as its code point
        size_t len = 0;
        if (!sgllm__tokw_grow((void **)&w->buf, &w->buf_cap, (size_t)(w->ends[k] - start) * 8, 1)) {
            w->oom = true;
            return;
        }
        for (int64_t p = start; p < w->ends[k]; p++) {
            uint8_t u[4];
            size_t ul = sgllm__utf8_encode(w->cps[p], u);
            for (size_t q = 0; q < ul; q++) len += sgllm__utf8_encode(w->v->byte_cp[u[q]], w->buf + len);
        }
        start = w->ends[k];
        sgllm__bpe_word(w, w->buf, (int64_t)len);
    }
}

typedef struct sgllm__tmatch {
    int64_t pos;
    int32_t id;
} sgllm__tmatch;

static int sgllm__tmatch_cmp(const void *pa, const void *pb) { // by id, then position
    const sgllm__tmatch *a = (const sgllm__tmatch *)pa, *b = (const sgllm__tmatch *)pb;
    if (a->id != b->id) return a->id < b->id ? -1 : 1;
    return a->pos < b->pos ? -1 : a->pos > b->pos;
}

static int sgllm__tmatch_pos_cmp(const void *pa, const void *pb) {
    const sgllm__tmatch *a = (const sgllm__tmatch *)pa, *b = (const sgllm__tmatch *)pb;
    return a->pos < b->pos ? -1 : a->pos > b->pos;
}

// Cuts text at special tokens as llama.cpp does: each special token, longest first, claims its
// leftmost non-overlapping occurrences inside the still unclaimed text. Tiers are processed by
// decreasing length, so a candidate span overlaps an earlier claim exactly when one of its two
// end bytes is claimed. Returns the matches sorted by position in *out (count in *n_out).
static bool sgllm__tok_partition(const sgllm__vocab *v, const uint8_t *s, int64_t n, bool parse_special,
                                 sgllm__tmatch **out, int64_t *n_out) {
    *out = NULL;
    *n_out = 0;
    if (v->n_tiers == 0 || n == 0) return true;
    uint8_t *claimed = (uint8_t *)sgllm__calloc((size_t)n, 1);
    sgllm__tmatch *cand = (sgllm__tmatch *)sgllm__malloc((size_t)n * sizeof *cand);
    sgllm__tmatch *acc = (sgllm__tmatch *)sgllm__malloc((size_t)n * sizeof *acc);
    if (!claimed || !cand || !acc) {
        sgllm__free(claimed);
        sgllm__free(cand);
        sgllm__free(acc);
        return false;
    }
    int64_t n_acc = 0;
    for (int32_t t = 0; t < v->n_tiers; t++) {
        int64_t len = v->special_tiers[t], n_cand = 0;
        uint64_t bit = 1ULL << (len >= 64 ? 63 : len - 1);
        for (int64_t p = 0; p + len <= n; p++) {
            if (!(v->special_lens[s[p]] & bit) || claimed[p] || claimed[p + len - 1]) continue;
            if (len >= 2) {
                unsigned pair = (unsigned)s[p] << 8 | s[p + 1];
                if (!(v->special_pair[pair >> 6] >> (pair & 63) & 1)) continue;
            }
            int32_t id = sgllm__vocab_find(v, s + p, (size_t)len);
            if (id < 0 || !sgllm__vocab_is_special_text(v, id)) continue;
            if (!parse_special && (v->attr[id] & (SGLLM__ATTR_CONTROL | SGLLM__ATTR_UNKNOWN))) continue;
            cand[n_cand++] = (sgllm__tmatch){p, id};
        }
        qsort(cand, (size_t)n_cand, sizeof *cand, sgllm__tmatch_cmp);
        for (int64_t c = 0; c < n_cand; c++) {
            int64_t p = cand[c].pos;
            if (claimed[p] || claimed[p + len - 1]) continue;
            memset(claimed + p, 1, (size_t)len);
            acc[n_acc++] = cand[c];
        }
    }
    sgllm__free(claimed);
    sgllm__free(cand);
    qsort(acc, (size_t)n_acc, sizeof *acc, sgllm__tmatch_pos_cmp);
    *out = acc;
    *n_out = n_acc;
    return true;
}

static void sgllm__tok_raw(sgllm__tokw *w, const uint8_t *s, int64_t n, bool prefix_space) {
    if (w->v->kind == SGLLM__VOCAB_BPE) {
        sgllm__bpe_fragment(w, s, n);
        return;
    }
    // SPM: optional leading space, then every space as U+2581
    size_t need = ((size_t)n + 1) * 3;
    if (!sgllm__tokw_grow((void **)&w->buf, &w->buf_cap, need, 1)) {
        w->oom = true;
        return;
    }
    size_t len = 0;
    for (int64_t i = -(int64_t)prefix_space; i < n; i++) {
        if (i < 0 || s[i] == ' ') {
            w->buf[len++] = 0xe2, w->buf[len++] = 0x96, w->buf[len++] = 0x81;
        } else {
            w->buf[len++] = s[i];
        }
    }
    sgllm__spm_fragment(w, w->buf, (int64_t)len);
}

// Tokenizes text[0..len) (any bytes) as llama.cpp's llama_tokenize(add_special = add_bos,
// parse_special) does: with add_bos, BOS first if the vocabulary asks for it (add_bos_token),
// and EOS last if it asks for that (add_eos_token, rare). parse_special lets control tokens be
// recognized in the text; user-defined ones always are. Writes at most cap ids to out and
// returns the full count, or -1 when out of memory (or len is over 512 MiB).
static int64_t sgllm__tokenize(const sgllm__vocab *v, const char *text, size_t len, bool add_bos, bool parse_special,
                               int32_t *out, int64_t cap) {
    sgllm__tokw w;
    memset(&w, 0, sizeof w);
    w.v = v;
    w.out = out;
    w.cap = out ? cap : 0;
    if (len > ((size_t)1 << 29)) return -1; // keeps symbol counts (int32) clear of overflow after escaping
    const uint8_t *s = (const uint8_t *)text;
    int64_t n = (int64_t)len;
    if (add_bos && v->add_bos && v->bos >= 0) sgllm__tokw_push(&w, v->bos);
    sgllm__tmatch *m;
    int64_t n_m;
    if (!sgllm__tok_partition(v, s, n, parse_special, &m, &n_m)) return -1;
    bool prev_special = true; // SPM adds its space prefix at the start and after special tokens
    int64_t pos = 0;
    for (int64_t k = 0; k <= n_m && !w.oom; k++) {
        int64_t end = k < n_m ? m[k].pos : n;
        if (end > pos) {
            sgllm__tok_raw(&w, s + pos, end - pos, v->add_space_prefix && prev_special);
            prev_special = false;
        }
        if (k < n_m) {
            sgllm__tokw_push(&w, m[k].id);
            prev_special = true;
            pos = m[k].pos + (int64_t)v->text[m[k].id].len;
        }
    }
    if (add_bos && v->add_eos && v->eos >= 0) sgllm__tokw_push(&w, v->eos);
    sgllm__free(m);
    sgllm__free(w.buf);
    sgllm__free(w.sym);
    sgllm__free(w.heap);
    sgllm__free(w.cps);
    sgllm__free(w.cls);
    sgllm__free(w.ends);
    return w.oom ? -1 : w.n_out;
}


// --- 5. Chat templates ---------------------------------------------------------------------

// --- 6. Sampler ----------------------------------------------------------------------------

// --- 7. Model description ------------------------------------------------------------------

// --- 8. CPU backend ------------------------------------------------------------------------

// --- 9. Public API -------------------------------------------------------------------------
