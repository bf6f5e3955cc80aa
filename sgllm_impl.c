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
//   8. CPU backend: the reference forward pass over an fp16 KV cache (matrix products from
//      section 3, attention and GELU rounded as llama.cpp's CPU backend rounds them)
//   8b. Architecture dispatch: kernel variants and block sizes by compute capability, a strict
//      JSON reader for configs/<device>.json overrides, the logged decision
//   8c. CUDA forward: the same layer descriptors walked with the ops of sgllm_cuda.cu
//      (compiled with SGLLM_CUDA), decode step captured as a CUDA graph
//   9. Public API: models, contexts, evaluate, generate, chat
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
#include <sched.h>
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
// Marks helpers that only the CUDA build, the tests or the fuzz targets call, so a CPU-only
// build compiled with -Wall stays quiet.
#define SGLLM__MAYBE_UNUSED __attribute__((unused))
#else
#define SGLLM__PRINTF(a, b)
#define SGLLM__MAYBE_UNUSED
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
// A decode step makes hundreds of short parallel calls, so waking must be cheap: workers
// spin on the job counter for up to ~1 ms after a job before sleeping on the condition
// variable, and the caller spins until the workers are done.
typedef void (*sgllm__task_fn)(void *arg, int64_t task, int thread);

typedef struct sgllm__pool {
    int n_threads;
    pthread_t *workers;       // (n_threads - 1)
    pthread_mutex_t mu;
    pthread_cond_t wake;
    uint64_t generation;      // atomic; bumped per job, workers watch it
    int n_busy;               // atomic; workers still inside the current job
    int n_sleeping;           // workers waiting on `wake` (under mu)
    int quit;                 // atomic
    sgllm__task_fn fn;
    void *arg;
    int64_t n_tasks;
    int64_t next_task;        // atomic
} sgllm__pool;

typedef struct sgllm__worker_arg {
    sgllm__pool *pool;
    int index;
} sgllm__worker_arg;

// A spin-wait step: a pause for the first iterations, then a yield, so an oversubscribed
// machine still runs the thread being waited for.
static void sgllm__cpu_relax(uint32_t iteration) {
    if (iteration > 64) {
        sched_yield();
        return;
    }
#if SGLLM__X86
    _mm_pause();
#endif
}

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
        double spin_until = sgllm__now() + 1e-3;
        for (uint32_t i = 1; __atomic_load_n(&p->generation, __ATOMIC_ACQUIRE) == seen &&
                             !__atomic_load_n(&p->quit, __ATOMIC_ACQUIRE);
             i++) {
            sgllm__cpu_relax(i);
            if ((i & 63) == 0 && sgllm__now() > spin_until) {
                pthread_mutex_lock(&p->mu);
                p->n_sleeping++;
                while (__atomic_load_n(&p->generation, __ATOMIC_ACQUIRE) == seen &&
                       !__atomic_load_n(&p->quit, __ATOMIC_ACQUIRE))
                    pthread_cond_wait(&p->wake, &p->mu);
                p->n_sleeping--;
                pthread_mutex_unlock(&p->mu);
            }
        }
        if (__atomic_load_n(&p->quit, __ATOMIC_ACQUIRE)) return NULL;
        seen = __atomic_load_n(&p->generation, __ATOMIC_ACQUIRE);
        sgllm__pool_work(p, index);
        __atomic_fetch_sub(&p->n_busy, 1, __ATOMIC_RELEASE);
    }
}

static void sgllm__pool_free(sgllm__pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    __atomic_store_n(&p->quit, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_threads - 1; i++)
        if (p->workers[i]) pthread_join(p->workers[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
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
    if (!p->workers) {
        p->n_threads = 1;
        sgllm__pool_free(p);
        return NULL;
    }
    for (int i = 0; i < p->n_threads - 1; i++) {
        sgllm__worker_arg *wa = (sgllm__worker_arg *)sgllm__malloc(sizeof *wa);
        if (wa) {
            wa->pool = p;
            wa->index = i + 1;
        }
        if (!wa || pthread_create(&p->workers[i], NULL, sgllm__worker_main, wa) != 0) {
            sgllm__free(wa);
            p->n_threads = i + 1; // join only the workers that exist
            sgllm__pool_free(p);
            return NULL;
        }
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
    p->fn = fn;
    p->arg = arg;
    p->n_tasks = n_tasks;
    __atomic_store_n(&p->next_task, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&p->n_busy, p->n_threads - 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&p->generation, 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&p->mu);
    if (p->n_sleeping) pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    sgllm__pool_work(p, 0);
    for (uint32_t i = 0; __atomic_load_n(&p->n_busy, __ATOMIC_ACQUIRE) > 0; i++) sgllm__cpu_relax(i);
}

// A read-only mapping of a whole file.
typedef struct sgllm__map {
    const uint8_t *data;
    uint64_t size;
    bool mapped; // false: data is a caller's buffer (tests, fuzzing), not ours to unmap
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
    m->mapped = true;
    return SGLLM_OK;
}

static void sgllm__map_close(sgllm__map *m) {
    if (m->mapped) munmap((void *)m->data, (size_t)m->size);
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
    const uint8_t *b = NULL;
    sgllm_status s = sgllm__rd_bytes(r, 4, &b);
    if (s == SGLLM_OK) memcpy(v, b, 4);
    return s;
}
static sgllm_status sgllm__rd_u64(sgllm__rd *r, uint64_t *v) {
    const uint8_t *b = NULL;
    sgllm_status s = sgllm__rd_bytes(r, 8, &b);
    if (s == SGLLM_OK) memcpy(v, b, 8);
    return s;
}
static sgllm_status sgllm__rd_str(sgllm__rd *r, sgllm__str *str) {
    uint64_t len;
    const uint8_t *b = NULL;
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

// Parses a GGUF image held in memory (borrowed: it must outlive g).
SGLLM__MAYBE_UNUSED static sgllm_status sgllm__gguf_open_memory(sgllm__gguf *g, const void *data, size_t size, sgllm__diag *d) {
    memset(g, 0, sizeof *g);
    if (size == 0) return sgllm__fail(d, SGLLM_ERR_FORMAT, "empty buffer (truncated file)");
    g->map.data = (const uint8_t *)data;
    g->map.size = size;
    sgllm_status s = sgllm__gguf_parse(g, d);
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
// Block layouts of the weight types, their reference dequantization (written straight from the
// format description), and the CPU dot products. A matmul quantizes its activations once into
// the type llama.cpp pairs with the weight type (Q8_0, Q8_1 or Q8_K; F32 for float weights),
// so that integer dot products run on int8 and our numerics track llama.cpp's. Every fast
// (AVX2+FMA+F16C) routine has a portable twin; the dot products also have an AVX-512 VNNI
// instantiation of the same source with the same float steps (bit-identical results). The
// choice is made per call from a cheap CPU query, and the *_impl functions take it as a
// parameter so tests can run every path.

enum { SGLLM__QK = 32, SGLLM__QKK = 256 };

typedef struct sgllm__bq4_0 { uint16_t d; uint8_t qs[16]; } sgllm__bq4_0;
typedef struct sgllm__bq4_1 { uint16_t d, m; uint8_t qs[16]; } sgllm__bq4_1;
typedef struct sgllm__bq5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } sgllm__bq5_0;
typedef struct sgllm__bq5_1 { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } sgllm__bq5_1;
typedef struct sgllm__bq8_0 { uint16_t d; int8_t qs[32]; } sgllm__bq8_0;
typedef struct sgllm__bq8_1 { uint16_t d, s; int8_t qs[32]; } sgllm__bq8_1; // s = d * sum(qs)
typedef struct sgllm__bq4_k { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } sgllm__bq4_k;
typedef struct sgllm__bq5_k { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } sgllm__bq5_k;
typedef struct sgllm__bq6_k { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } sgllm__bq6_k;
typedef struct sgllm__bq8_k { float d; int8_t qs[256]; int16_t bsums[16]; } sgllm__bq8_k; // bsums: 16-value sums

_Static_assert(sizeof(sgllm__bq4_0) == 18 && sizeof(sgllm__bq4_1) == 20 && sizeof(sgllm__bq5_0) == 22 &&
                   sizeof(sgllm__bq5_1) == 24 && sizeof(sgllm__bq8_0) == 34 && sizeof(sgllm__bq8_1) == 36 &&
                   sizeof(sgllm__bq4_k) == 144 && sizeof(sgllm__bq5_k) == 176 && sizeof(sgllm__bq6_k) == 210 &&
                   sizeof(sgllm__bq8_k) == 292,
               "block layouts must match ggml's");

static float sgllm__h(uint16_t h) { return sgllm__fp16_to_f32(h); }

// Round half to even (the default FP rounding, independent of the current mode), |f| < 2^22.
static int sgllm__nearest_int(float f) {
    float v = f + 12582912.f;
    int32_t i;
    memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K super-block.
static void sgllm__k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 15) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

static bool sgllm__quant_supported(uint32_t t) {
    switch (t) {
    case SGLLM__T_F32: case SGLLM__T_F16: case SGLLM__T_BF16: case SGLLM__T_Q4_0: case SGLLM__T_Q4_1:
    case SGLLM__T_Q5_0: case SGLLM__T_Q5_1: case SGLLM__T_Q8_0: case SGLLM__T_Q4_K: case SGLLM__T_Q5_K:
    case SGLLM__T_Q6_K: return true;
    default: return false;
    }
}

// Plain reference dequantization of n values (n a multiple of the type's block) of type t.
// Unsupported types give zeros (the loader rejects them before any row is read).
static void sgllm__dequant_row_ref(uint32_t t, const void *src, float *dst, int64_t n) {
    switch (t) {
    case SGLLM__T_F32: memcpy(dst, src, (size_t)n * 4); return;
    case SGLLM__T_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = sgllm__h(((const uint16_t *)src)[i]);
        return;
    case SGLLM__T_BF16:
        for (int64_t i = 0; i < n; i++) dst[i] = sgllm__bf16_to_f32(((const uint16_t *)src)[i]);
        return;
    case SGLLM__T_Q4_0:
        for (int64_t b = 0; b < n / SGLLM__QK; b++, dst += 32) {
            const sgllm__bq4_0 *x = (const sgllm__bq4_0 *)src + b;
            float d = sgllm__h(x->d);
            for (int j = 0; j < 16; j++) {
                dst[j] = (float)((x->qs[j] & 15) - 8) * d;
                dst[j + 16] = (float)((x->qs[j] >> 4) - 8) * d;
            }
        }
        return;
    case SGLLM__T_Q4_1:
        for (int64_t b = 0; b < n / SGLLM__QK; b++, dst += 32) {
            const sgllm__bq4_1 *x = (const sgllm__bq4_1 *)src + b;
            float d = sgllm__h(x->d), m = sgllm__h(x->m);
            for (int j = 0; j < 16; j++) {
                dst[j] = (float)(x->qs[j] & 15) * d + m;
                dst[j + 16] = (float)(x->qs[j] >> 4) * d + m;
            }
        }
        return;
    case SGLLM__T_Q5_0:
        for (int64_t b = 0; b < n / SGLLM__QK; b++, dst += 32) {
            const sgllm__bq5_0 *x = (const sgllm__bq5_0 *)src + b;
            float d = sgllm__h(x->d);
            uint32_t qh;
            memcpy(&qh, x->qh, 4);
            for (int j = 0; j < 16; j++) {
                int lo = (x->qs[j] & 15) | (int)(((qh >> j) & 1) << 4);
                int hi = (x->qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
                dst[j] = (float)(lo - 16) * d;
                dst[j + 16] = (float)(hi - 16) * d;
            }
        }
        return;
    case SGLLM__T_Q5_1:
        for (int64_t b = 0; b < n / SGLLM__QK; b++, dst += 32) {
            const sgllm__bq5_1 *x = (const sgllm__bq5_1 *)src + b;
            float d = sgllm__h(x->d), m = sgllm__h(x->m);
            uint32_t qh;
            memcpy(&qh, x->qh, 4);
            for (int j = 0; j < 16; j++) {
                int lo = (x->qs[j] & 15) | (int)(((qh >> j) & 1) << 4);
                int hi = (x->qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
                dst[j] = (float)lo * d + m;
                dst[j + 16] = (float)hi * d + m;
            }
        }
        return;
    case SGLLM__T_Q8_0:
        for (int64_t b = 0; b < n / SGLLM__QK; b++, dst += 32) {
            const sgllm__bq8_0 *x = (const sgllm__bq8_0 *)src + b;
            float d = sgllm__h(x->d);
            for (int j = 0; j < 32; j++) dst[j] = (float)x->qs[j] * d;
        }
        return;
    case SGLLM__T_Q4_K:
        for (int64_t b = 0; b < n / SGLLM__QKK; b++) {
            const sgllm__bq4_k *x = (const sgllm__bq4_k *)src + b;
            float d = sgllm__h(x->d), dmin = sgllm__h(x->dmin);
            for (int c = 0; c < 4; c++, dst += 64) {
                uint8_t sc0, m0, sc1, m1;
                sgllm__k_scale_min(2 * c, x->scales, &sc0, &m0);
                sgllm__k_scale_min(2 * c + 1, x->scales, &sc1, &m1);
                float d0 = d * sc0, mm0 = dmin * m0, d1 = d * sc1, mm1 = dmin * m1;
                const uint8_t *q = x->qs + 32 * c;
                for (int l = 0; l < 32; l++) {
                    dst[l] = d0 * (float)(q[l] & 15) - mm0;
                    dst[l + 32] = d1 * (float)(q[l] >> 4) - mm1;
                }
            }
        }
        return;
    case SGLLM__T_Q5_K:
        for (int64_t b = 0; b < n / SGLLM__QKK; b++) {
            const sgllm__bq5_k *x = (const sgllm__bq5_k *)src + b;
            float d = sgllm__h(x->d), dmin = sgllm__h(x->dmin);
            for (int c = 0; c < 4; c++, dst += 64) {
                uint8_t sc0, m0, sc1, m1;
                sgllm__k_scale_min(2 * c, x->scales, &sc0, &m0);
                sgllm__k_scale_min(2 * c + 1, x->scales, &sc1, &m1);
                float d0 = d * sc0, mm0 = dmin * m0, d1 = d * sc1, mm1 = dmin * m1;
                const uint8_t *q = x->qs + 32 * c;
                for (int l = 0; l < 32; l++) {
                    int lo = (q[l] & 15) + ((x->qh[l] >> (2 * c)) & 1) * 16;
                    int hi = (q[l] >> 4) + ((x->qh[l] >> (2 * c + 1)) & 1) * 16;
                    dst[l] = d0 * (float)lo - mm0;
                    dst[l + 32] = d1 * (float)hi - mm1;
                }
            }
        }
        return;
    case SGLLM__T_Q6_K:
        for (int64_t b = 0; b < n / SGLLM__QKK; b++) {
            const sgllm__bq6_k *x = (const sgllm__bq6_k *)src + b;
            float d = sgllm__h(x->d);
            for (int h = 0; h < 2; h++, dst += 128) {
                const uint8_t *ql = x->ql + 64 * h, *qh = x->qh + 32 * h;
                const int8_t *sc = x->scales + 8 * h;
                for (int l = 0; l < 32; l++) {
                    int is = l / 16;
                    int q1 = ((ql[l] & 15) | ((qh[l] & 3) << 4)) - 32;
                    int q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    dst[l] = d * (float)sc[is] * (float)q1;
                    dst[l + 32] = d * (float)sc[is + 2] * (float)q2;
                    dst[l + 64] = d * (float)sc[is + 4] * (float)q3;
                    dst[l + 96] = d * (float)sc[is + 6] * (float)q4;
                }
            }
        }
        return;
    default: memset(dst, 0, (size_t)n * sizeof(float)); return;
    }
}

// The activation format for dot products with weights of type t (llama.cpp's pairing).
static uint32_t sgllm__vec_dot_type(uint32_t t) {
    switch (t) {
    case SGLLM__T_Q4_0: case SGLLM__T_Q5_0: case SGLLM__T_Q8_0: return SGLLM__T_Q8_0;
    case SGLLM__T_Q4_1: case SGLLM__T_Q5_1: return SGLLM__T_Q8_1;
    case SGLLM__T_Q4_K: case SGLLM__T_Q5_K: case SGLLM__T_Q6_K: return SGLLM__T_Q8_K;
    default: return SGLLM__T_F32;
    }
}

// Bytes of one activation row of n values in vec_dot_type(t).
static size_t sgllm__act_row_bytes(uint32_t t, int64_t n) {
    return (size_t)sgllm__row_bytes(sgllm__vec_dot_type(t), (uint64_t)n);
}

// --- portable kernels

// Activation quantization. Scale d = amax/127 and q = round-half-even(x * 127/amax): the
// rounding llama.cpp's x86 build uses, so both paths give identical bytes.
static void sgllm__quant_q8_0_c(const float *x, void *dst, int64_t n, bool with_sum) {
    for (int64_t b = 0; b < n / SGLLM__QK; b++, x += 32) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.f, id = amax != 0 ? 127.f / amax : 0.f;
        int8_t *qs;
        if (with_sum) {
            sgllm__bq8_1 *y = (sgllm__bq8_1 *)dst + b;
            qs = y->qs;
            y->d = sgllm__f32_to_fp16(d);
        } else {
            sgllm__bq8_0 *y = (sgllm__bq8_0 *)dst + b;
            qs = y->qs;
            y->d = sgllm__f32_to_fp16(d);
        }
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            qs[j] = (int8_t)sgllm__nearest_int(x[j] * id);
            sum += qs[j];
        }
        if (with_sum) ((sgllm__bq8_1 *)dst)[b].s = sgllm__f32_to_fp16(d * (float)sum);
    }
}

// Q8_K: the value of largest magnitude (the first such, keeping its sign) maps to -127.
static float sgllm__q8k_iscale(const float *x) {
    float amax = 0, max = 0;
    for (int j = 0; j < SGLLM__QKK; j++)
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    return amax != 0 ? -127.f / max : 0.f;
}

static void sgllm__q8k_finish(sgllm__bq8_k *y, float iscale) {
    y->d = iscale != 0 ? 1 / iscale : 0.f;
    for (int g = 0; g < 16; g++) {
        int s = 0;
        for (int j = 0; j < 16; j++) s += y->qs[16 * g + j];
        y->bsums[g] = (int16_t)s;
    }
}

static void sgllm__quant_q8_k_c(const float *x, void *dst, int64_t n) {
    for (int64_t b = 0; b < n / SGLLM__QKK; b++, x += SGLLM__QKK) {
        sgllm__bq8_k *y = (sgllm__bq8_k *)dst + b;
        float iscale = sgllm__q8k_iscale(x);
        for (int j = 0; j < SGLLM__QKK; j++) {
            int v = sgllm__nearest_int(iscale * x[j]);
            y->qs[j] = (int8_t)(v > 127 ? 127 : v);
        }
        sgllm__q8k_finish(y, iscale);
    }
}

// Unpacks the 32 quant values of one small block as integers (offset removed for Q4_0/Q5_0).
static void sgllm__unpack32(uint32_t t, const void *blk, int q[32]) {
    const uint8_t *qs;
    uint32_t qh = 0;
    int off = 0;
    switch (t) {
    case SGLLM__T_Q4_0: qs = ((const sgllm__bq4_0 *)blk)->qs; off = 8; break;
    case SGLLM__T_Q4_1: qs = ((const sgllm__bq4_1 *)blk)->qs; break;
    case SGLLM__T_Q5_0: qs = ((const sgllm__bq5_0 *)blk)->qs; memcpy(&qh, ((const sgllm__bq5_0 *)blk)->qh, 4); off = 16; break;
    case SGLLM__T_Q5_1: qs = ((const sgllm__bq5_1 *)blk)->qs; memcpy(&qh, ((const sgllm__bq5_1 *)blk)->qh, 4); break;
    default:
        for (int j = 0; j < 32; j++) q[j] = ((const sgllm__bq8_0 *)blk)->qs[j];
        return;
    }
    for (int j = 0; j < 16; j++) {
        q[j] = ((qs[j] & 15) | (int)(((qh >> j) & 1) << 4)) - off;
        q[j + 16] = ((qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4)) - off;
    }
}

// dot of a row of 32-blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) with Q8_0/Q8_1 activations.
static float sgllm__dot_q32_c(uint32_t t, int64_t n, const void *w, const void *xq) {
    size_t wb = (size_t)sgllm__types[t].bytes;
    bool has_min = t == SGLLM__T_Q4_1 || t == SGLLM__T_Q5_1;
    float sum = 0;
    for (int64_t b = 0; b < n / SGLLM__QK; b++) {
        const uint8_t *blk = (const uint8_t *)w + (size_t)b * wb;
        int q[32], isum = 0;
        sgllm__unpack32(t, blk, q);
        uint16_t dw;
        memcpy(&dw, blk, 2);
        if (has_min) {
            const sgllm__bq8_1 *y = (const sgllm__bq8_1 *)xq + b;
            uint16_t m;
            memcpy(&m, blk + 2, 2);
            for (int j = 0; j < 32; j++) isum += q[j] * y->qs[j];
            sum += sgllm__h(dw) * sgllm__h(y->d) * (float)isum + sgllm__h(m) * sgllm__h(y->s);
        } else {
            const sgllm__bq8_0 *y = (const sgllm__bq8_0 *)xq + b;
            for (int j = 0; j < 32; j++) isum += q[j] * y->qs[j];
            sum += sgllm__h(dw) * sgllm__h(y->d) * (float)isum;
        }
    }
    return sum;
}

// dot of Q4_K/Q5_K with Q8_K: d*dy*sum_j sc_j*(q.y)_j - dmin*dy*sum_j m_j*(sum of y in j).
static float sgllm__dot_q45k_c(uint32_t t, int64_t n, const void *w, const void *xq) {
    float sum = 0;
    for (int64_t b = 0; b < n / SGLLM__QKK; b++) {
        const sgllm__bq8_k *y = (const sgllm__bq8_k *)xq + b;
        const uint8_t *scales, *qs, *qh = NULL;
        uint16_t d, dmin;
        if (t == SGLLM__T_Q4_K) {
            const sgllm__bq4_k *x = (const sgllm__bq4_k *)w + b;
            scales = x->scales, qs = x->qs, d = x->d, dmin = x->dmin;
        } else {
            const sgllm__bq5_k *x = (const sgllm__bq5_k *)w + b;
            scales = x->scales, qs = x->qs, qh = x->qh, d = x->d, dmin = x->dmin;
        }
        int32_t isum = 0, msum = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            sgllm__k_scale_min(j, scales, &sc, &m);
            const uint8_t *q = qs + 32 * (j / 2);
            const int8_t *yq = y->qs + 32 * j;
            int s = 0;
            for (int l = 0; l < 32; l++) {
                int v = (j & 1) ? q[l] >> 4 : q[l] & 15;
                if (qh) v += ((qh[l] >> j) & 1) << 4;
                s += v * yq[l];
            }
            isum += sc * s;
            msum += m * (y->bsums[2 * j] + y->bsums[2 * j + 1]);
        }
        sum += sgllm__h(d) * y->d * (float)isum - sgllm__h(dmin) * y->d * (float)msum;
    }
    return sum;
}

// dot of Q6_K with Q8_K, values kept unsigned (0..63); the -32 comes back through bsums.
static float sgllm__dot_q6k_c(int64_t n, const void *w, const void *xq) {
    float sum = 0;
    for (int64_t b = 0; b < n / SGLLM__QKK; b++) {
        const sgllm__bq6_k *x = (const sgllm__bq6_k *)w + b;
        const sgllm__bq8_k *y = (const sgllm__bq8_k *)xq + b;
        int32_t isum = 0;
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x->ql + 64 * h, *qh = x->qh + 32 * h;
            const int8_t *yq = y->qs + 128 * h;
            int s[8] = {0};
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                s[is] += ((ql[l] & 15) | ((qh[l] & 3) << 4)) * yq[l];
                s[is + 2] += ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) * yq[l + 32];
                s[is + 4] += ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) * yq[l + 64];
                s[is + 6] += ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) * yq[l + 96];
            }
            for (int g = 0; g < 8; g++) isum += x->scales[8 * h + g] * (s[g] - 32 * y->bsums[8 * h + g]);
        }
        sum += sgllm__h(x->d) * y->d * (float)isum;
    }
    return sum;
}

static float sgllm__dot_float_c(uint32_t t, int64_t n, const void *w, const float *x) {
    float sum = 0;
    for (int64_t i = 0; i < n; i++) {
        float v = t == SGLLM__T_F32   ? ((const float *)w)[i]
                  : t == SGLLM__T_F16 ? sgllm__h(((const uint16_t *)w)[i])
                                      : sgllm__bf16_to_f32(((const uint16_t *)w)[i]);
        sum += v * x[i];
    }
    return sum;
}

static float sgllm__vec_dot_c(uint32_t t, int64_t n, const void *w, const void *xq) {
    switch (t) {
    case SGLLM__T_Q4_0: case SGLLM__T_Q4_1: case SGLLM__T_Q5_0: case SGLLM__T_Q5_1: case SGLLM__T_Q8_0:
        return sgllm__dot_q32_c(t, n, w, xq);
    case SGLLM__T_Q4_K: case SGLLM__T_Q5_K: return sgllm__dot_q45k_c(t, n, w, xq);
    case SGLLM__T_Q6_K: return sgllm__dot_q6k_c(n, w, xq);
    default: return sgllm__dot_float_c(t, n, w, (const float *)xq);
    }
}

// --- AVX2 kernels (x86 only; compiled for the target whatever the build flags)
#if SGLLM__X86
#define SGLLM__AVX2 __attribute__((target("avx2,fma,f16c")))
#define SGLLM__AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline
// AVX-512 VNNI on 256-bit vectors (the VEX-coded AVX-VNNI cannot be queried with clang 14's
// __builtin_cpu_supports, so CPUs with only that take the AVX2 path).
#define SGLLM__VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))

// F16C is not queried: every CPU with AVX2 and FMA has it, and clang 14 cannot ask for it.
static bool sgllm__use_avx2(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

static SGLLM__AVX2_INLINE float sgllm__hx(uint16_t h) { return _cvtsh_ss(h); }

static SGLLM__AVX2_INLINE float sgllm__hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// 16 packed bytes -> 32 values: the low nibbles (values 0..15), then the high nibbles.
static SGLLM__AVX2_INLINE __m256i sgllm__nib32(const uint8_t *p) {
    // both lanes hold the 16 bytes; the upper lane is shifted down a nibble
    __m256i x = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    x = _mm256_srlv_epi32(x, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    return _mm256_and_si256(x, _mm256_set1_epi8(15));
}

// Byte j is 16 where bit j of the little-endian 32-bit word at p is set (the fifth bit of Q5).
static SGLLM__AVX2_INLINE __m256i sgllm__bit5_32(const uint8_t *p) {
    uint32_t qh;
    memcpy(&qh, p, 4);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int32_t)qh),
                                    _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                                      0x0101010101010101, 0));
    __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(16));
}

// Sums of 4 adjacent products of unsigned u (<= 127) by signed s bytes, as 8 int32. With
// u <= 127 the pairwise int16 step cannot saturate.
static SGLLM__AVX2_INLINE __m256i sgllm__mul_us8(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

// Broadcast of int16 element e of a 128-bit vector (repeated in both lanes) to a lane.
#define SGLLM__SEL16(e) _mm_set1_epi16((short)(0x0100 + 0x0202 * (e)))

// The 8 scales and 8 mins of a Q4_K/Q5_K super-block, unpacked as bytes sc[0..7], m[0..7].
static SGLLM__AVX2_INLINE void sgllm__k_scales8(const uint8_t *q, uint8_t sc[8], uint8_t m[8]) {
    uint32_t a, b, c;
    memcpy(&a, q, 4);
    memcpy(&b, q + 4, 4);
    memcpy(&c, q + 8, 4);
    uint32_t s_lo = a & 0x3f3f3f3f, m_lo = b & 0x3f3f3f3f;
    uint32_t s_hi = (c & 0x0f0f0f0f) | ((a >> 2) & 0x30303030);
    uint32_t m_hi = ((c >> 4) & 0x0f0f0f0f) | ((b >> 2) & 0x30303030);
    memcpy(sc, &s_lo, 4);
    memcpy(sc + 4, &s_hi, 4);
    memcpy(m, &m_lo, 4);
    memcpy(m + 4, &m_hi, 4);
}

// acc + the sums of 4 adjacent products of unsigned bytes u by signed bytes s, as 8 int32;
// exact on both paths (AVX2 goes through int16 pairs, which cannot saturate while u <= 127).
// The VNNI instruction is written as assembly: its intrinsic would not inline into these
// shared AVX2-target bodies. Only the VNNI instantiations (vnni constant true) reach it.
static SGLLM__AVX2_INLINE __m256i sgllm__dp_us8(bool vnni, __m256i acc, __m256i u, __m256i s) {
    if (vnni) {
        __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
        return acc;
    }
    return _mm256_add_epi32(acc, sgllm__mul_us8(u, s));
}

// acc + the sums of adjacent int16 products a*b (exact), one instruction under VNNI.
static SGLLM__AVX2_INLINE __m256i sgllm__dp_s16(bool vnni, __m256i acc, __m256i a, __m256i b) {
    if (vnni) {
        __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
        return acc;
    }
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
}

// The tile loops below have constant trip counts; fully unrolled, their arrays live in
// registers. GCC -O2 leaves them rolled unless asked; clang unrolls them itself, and the
// pragma makes its code slower (measured 2x), so it is GCC's only.
#if defined(__clang__)
#define SGLLM__UNROLL
#else
#define SGLLM__UNROLL _Pragma("GCC unroll 8")
#endif

// Lane p of the result is the sum of the 8 lanes of v[p].
static SGLLM__AVX2_INLINE __m256i sgllm__reduce8(const __m256i v[8]) {
    __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    __m256i c = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    // a holds the sums of v0..v3 over their low 128 bits, then over their high 128 bits
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, c, 0x20), _mm256_permute2x128_si256(a, c, 0x31));
}

// The two fp16 halves of each 32-bit lane of w (scale in the low half, min or sum in the
// high half, as blocks store them) as floats.
static SGLLM__AVX2_INLINE void sgllm__halves(__m256i w, __m256 *lo, __m256 *hi) {
    const __m256i pick = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12,
                                          13, 2, 3, 6, 7, 10, 11, 14, 15);
    __m256i h = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(w, pick), 0xd8);
    *lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
    *hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}

static SGLLM__AVX2_INLINE int32_t sgllm__ld32(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

// q + 16 in the bytes whose bit of the 32-bit word at p is set (the fifth bit of Q5), through
// an AVX-512BW mask register: one masked add against sgllm__bit5_32's four operations.
// Assembly for the same reason as dp_us8; VNNI instantiations only.
// Without optimization the compiler keeps the (dead) call in the AVX2 instantiation and
// rejects a k1 clobber there, so unoptimized builds take the AVX2 form (same result).
static SGLLM__AVX2_INLINE __m256i sgllm__add_bit5_k(__m256i q, const uint8_t *p) {
#if defined(__OPTIMIZE__)
    uint32_t qh;
    memcpy(&qh, p, 4);
    __asm__("kmovd %1, %%k1\n\tvpaddb %2, %0, %0%{%%k1%}" : "+v"(q) : "r"(qh), "v"(_mm256_set1_epi8(16)) : "k1");
    return q;
#else
    return _mm256_or_si256(q, sgllm__bit5_32(p));
#endif
}

// The 32 values of a small block as unsigned bytes q + off (off from sgllm__q32_off), ready
// for dp_us8. Q8_0 without VNNI is the exception: its q + 128 would saturate the AVX2 int16
// pairs, so it stays signed (off 0) and the caller uses the sign trick.
static SGLLM__AVX2_INLINE __m256i sgllm__q32_unpack(uint32_t t, bool vnni, const uint8_t *blk) {
    switch (t) {
    case SGLLM__T_Q4_0: return sgllm__nib32(blk + 2);
    case SGLLM__T_Q4_1: return sgllm__nib32(blk + 4);
    case SGLLM__T_Q5_0:
        return vnni ? sgllm__add_bit5_k(sgllm__nib32(blk + 6), blk + 2) : _mm256_or_si256(sgllm__nib32(blk + 6), sgllm__bit5_32(blk + 2));
    case SGLLM__T_Q5_1:
        return vnni ? sgllm__add_bit5_k(sgllm__nib32(blk + 8), blk + 4) : _mm256_or_si256(sgllm__nib32(blk + 8), sgllm__bit5_32(blk + 4));
    default: {
        __m256i q = _mm256_loadu_si256((const __m256i *)(blk + 2));
        return vnni ? _mm256_xor_si256(q, _mm256_set1_epi8((char)0x80)) : q;
    }
    }
}

static SGLLM__AVX2_INLINE int sgllm__q32_off(uint32_t t, bool vnni) {
    return t == SGLLM__T_Q4_0 ? 8 : t == SGLLM__T_Q5_0 ? 16 : t == SGLLM__T_Q8_0 && vnni ? 128 : 0;
}

// out[r*NT + k] = dot(weight row wr[r], activation row xr[k]) over n values of a 32-block
// type, for (NR, NT) = (4, 4) (prefill) or (8, 1) (one token). A block's integer dot is
// exact; each 8 outputs of the tile then share one vector of float work per block: lane p
// does acc = fma(dw*dy, isum, acc) and, for types with a min, macc = fma(m, s, macc), and
// ends with acc + macc. That is the same sequence of roundings for every lane whatever the
// tile shape, so one output never depends on how rows and tokens were grouped.
// pf (or 0): address of the NR rows after these, fetched into cache a block-column at a time
// (an integer, not a pointer: after the last tile it points past the matrix). With
// one token the 8 rows are 8 short interleaved streams, which the hardware prefetchers
// follow poorly when the weights come from DRAM.
static SGLLM__AVX2_INLINE void sgllm__q32_tile(uint32_t t, bool vnni, int NR, int NT, int64_t n,
                                               const uint8_t *const *wr, const uint8_t *const *xr, float *out,
                                               uintptr_t pf) {
    bool has_min = t == SGLLM__T_Q4_1 || t == SGLLM__T_Q5_1, sign_trick = t == SGLLM__T_Q8_0 && !vnni;
    int off = sgllm__q32_off(t, vnni);
    size_t wb = (size_t)sgllm__types[t].bytes, ab = has_min ? sizeof(sgllm__bq8_1) : sizeof(sgllm__bq8_0);
    const __m256i offv = _mm256_set1_epi8((char)off), zero = _mm256_setzero_si256();
    enum { NG = 2 }; // at most two groups of 8 lanes (NR * NT / 8 in use)
    int ng = NR * NT / 8;
    __m256 acc[NG], macc[NG];
    for (int g = 0; g < ng; g++) acc[g] = _mm256_setzero_ps(), macc[g] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / SGLLM__QK; b++) {
        const uint8_t *wblk[8], *xblk[4];
        __m256i q[8], y[4], base[4], v[16];
        if (pf)
            for (size_t o = 0; o < (size_t)NR * wb; o += 64)
                _mm_prefetch((const char *)(pf + (size_t)b * NR * wb + o), _MM_HINT_T0);
        SGLLM__UNROLL
        for (int r = 0; r < NR; r++) {
            wblk[r] = wr[r] + (size_t)b * wb;
            q[r] = sgllm__q32_unpack(t, vnni, wblk[r]);
        }
        SGLLM__UNROLL
        for (int k = 0; k < NT; k++) {
            xblk[k] = xr[k] + (size_t)b * ab;
            y[k] = _mm256_loadu_si256((const __m256i *)(xblk[k] + (has_min ? 4 : 2)));
            // start from -off * sum(y) so that the unsigned q + off give q . y
            base[k] = off ? _mm256_sub_epi32(zero, sgllm__dp_us8(vnni, zero, offv, y[k])) : zero;
        }
        SGLLM__UNROLL
        for (int r = 0; r < NR; r++)
            SGLLM__UNROLL
            for (int k = 0; k < NT; k++)
                v[r * NT + k] = sign_trick ? sgllm__mul_us8(_mm256_sign_epi8(q[r], q[r]), _mm256_sign_epi8(y[k], q[r]))
                                           : sgllm__dp_us8(vnni, base[k], q[r], y[k]);
        // per lane: the activation block's (d, s) and the weight block's (d, m), converted
        // from fp16 (exactly, so the grouping does not change them). Without mins, one
        // conversion of the 4 weight scales of a (4, 4) tile serves both groups (measured
        // slower with mins, which keep the per-group conversion).
        __m256 dy, sy, wf = _mm256_setzero_ps();
        if (NT == 1) {
            sgllm__halves(_mm256_set1_epi32(sgllm__ld32(xblk[0])), &dy, &sy);
        } else if (has_min) {
            __m128i x4 = _mm_setr_epi32(sgllm__ld32(xblk[0]), sgllm__ld32(xblk[1]), sgllm__ld32(xblk[2]), sgllm__ld32(xblk[3]));
            sgllm__halves(_mm256_set_m128i(x4, x4), &dy, &sy);
        } else {
            __m256 xf = _mm256_cvtph_ps(
                _mm_setr_epi32(sgllm__ld32(xblk[0]), sgllm__ld32(xblk[1]), sgllm__ld32(xblk[2]), sgllm__ld32(xblk[3])));
            dy = _mm256_permutevar8x32_ps(xf, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
            sy = _mm256_setzero_ps();
            wf = _mm256_cvtph_ps(
                _mm_setr_epi32(sgllm__ld32(wblk[0]), sgllm__ld32(wblk[1]), sgllm__ld32(wblk[2]), sgllm__ld32(wblk[3])));
        }
        SGLLM__UNROLL
        for (int g = 0; g < ng; g++) {
            __m256 isum = _mm256_cvtepi32_ps(sgllm__reduce8(v + 8 * g)), dw, mw = _mm256_setzero_ps();
            if (NT == 1)
                sgllm__halves(_mm256_setr_epi32(sgllm__ld32(wblk[0]), sgllm__ld32(wblk[1]), sgllm__ld32(wblk[2]),
                                                sgllm__ld32(wblk[3]), sgllm__ld32(wblk[4]), sgllm__ld32(wblk[5]),
                                                sgllm__ld32(wblk[6]), sgllm__ld32(wblk[7])),
                              &dw, &mw);
            else if (has_min)
                sgllm__halves(_mm256_set_m128i(_mm_set1_epi32(sgllm__ld32(wblk[2 * g + 1])),
                                               _mm_set1_epi32(sgllm__ld32(wblk[2 * g]))),
                              &dw, &mw);
            else
                dw = _mm256_permutevar8x32_ps(wf, g ? _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6)
                                                    : _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2));
            acc[g] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dy), isum, acc[g]);
            if (has_min) macc[g] = _mm256_fmadd_ps(mw, sy, macc[g]);
        }
    }
    for (int g = 0; g < ng; g++) _mm256_storeu_ps(out + 8 * g, _mm256_add_ps(acc[g], macc[g]));
}

// out[k] = dot(row w, activation row x + k*xs) for k < NT (1 or 4), in the same order for
// every NT, so a 4-token tile gives exactly the single-token results.
static SGLLM__AVX2_INLINE void sgllm__dot_q45k_avx2(bool vnni, bool q5, int NT, int64_t n, const uint8_t *w,
                                                    const uint8_t *x, size_t xs, float *out) {
    size_t wb = q5 ? sizeof(sgllm__bq5_k) : sizeof(sgllm__bq4_k);
    __m256 acc[4];
    float macc[4];
    SGLLM__UNROLL
    for (int k = 0; k < NT; k++) acc[k] = _mm256_setzero_ps(), macc[k] = 0;
    const __m256i m4 = _mm256_set1_epi8(15), one = _mm256_set1_epi8(1);
    for (int64_t b = 0; b < n / SGLLM__QKK; b++) {
        const uint8_t *blk = w + (size_t)b * wb;
        const uint8_t *qs = blk + (q5 ? 48 : 16);
        uint16_t dh, dminh;
        memcpy(&dh, blk, 2);
        memcpy(&dminh, blk + 2, 2);
        float d = sgllm__hx(dh), dmin = sgllm__hx(dminh);
        uint8_t sc[8], mn[8];
        sgllm__k_scales8(blk + 4, sc, mn);
        __m128i sc16 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)sc));
        __m128i mn16 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)mn));
        __m256i scv = _mm256_broadcastsi128_si256(sc16);
        __m256i isum[4];
        SGLLM__UNROLL
        for (int k = 0; k < NT; k++) isum[k] = _mm256_setzero_si256();
        __m256i qh = q5 ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : _mm256_setzero_si256();
        SGLLM__UNROLL
        for (int c = 0; c < 4; c++) {
            __m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
            __m256i lo = _mm256_and_si256(raw, m4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            if (q5) {
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(qh, one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 1), one), 4));
                qh = _mm256_srli_epi16(qh, 2);
            }
            __m256i s0 = _mm256_shuffle_epi8(scv, _mm256_broadcastsi128_si256(SGLLM__SEL16(2 * c)));
            __m256i s1 = _mm256_shuffle_epi8(scv, _mm256_broadcastsi128_si256(SGLLM__SEL16(2 * c + 1)));
            SGLLM__UNROLL
            for (int k = 0; k < NT; k++) {
                const int8_t *yq = ((const sgllm__bq8_k *)(x + (size_t)k * xs) + b)->qs + 64 * c;
                isum[k] = sgllm__dp_s16(vnni, isum[k], _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)yq)), s0);
                isum[k] = sgllm__dp_s16(vnni, isum[k], _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(yq + 32))), s1);
            }
        }
        SGLLM__UNROLL
        for (int k = 0; k < NT; k++) {
            const sgllm__bq8_k *y = (const sgllm__bq8_k *)(x + (size_t)k * xs) + b;
            // sums of y over each 32-value sub-block, times the sub-block mins
            __m128i bs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)y->bsums),
                                        _mm_loadu_si128((const __m128i *)(y->bsums + 8)));
            __m128i pm = _mm_madd_epi16(bs, mn16);
            pm = _mm_add_epi32(pm, _mm_shuffle_epi32(pm, 0x4e));
            pm = _mm_add_epi32(pm, _mm_shuffle_epi32(pm, 0xb1));
            acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * y->d), _mm256_cvtepi32_ps(isum[k]), acc[k]);
            macc[k] += dmin * y->d * (float)_mm_cvtsi128_si32(pm);
        }
    }
    SGLLM__UNROLL
    for (int k = 0; k < NT; k++) out[k] = sgllm__hsum8(acc[k]) - macc[k];
}

static SGLLM__AVX2_INLINE void sgllm__dot_q6k_avx2(bool vnni, int NT, int64_t n, const uint8_t *w, const uint8_t *x,
                                                   size_t xs, float *out) {
    __m256 acc[4];
    SGLLM__UNROLL
    for (int k = 0; k < NT; k++) acc[k] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(15);
    for (int64_t b = 0; b < n / SGLLM__QKK; b++) {
        const sgllm__bq6_k *bw = (const sgllm__bq6_k *)w + b;
        __m256i isum[4];
        SGLLM__UNROLL
        for (int k = 0; k < NT; k++) isum[k] = _mm256_setzero_si256();
        SGLLM__UNROLL
        for (int h = 0; h < 2; h++) {
            __m256i ql0 = _mm256_loadu_si256((const __m256i *)(bw->ql + 64 * h));
            __m256i ql1 = _mm256_loadu_si256((const __m256i *)(bw->ql + 64 * h + 32));
            __m256i qh = _mm256_loadu_si256((const __m256i *)(bw->qh + 32 * h));
            __m256i scv = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(bw->scales + 8 * h))));
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(3)), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(12)), 2));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, _mm256_set1_epi8(48)));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                   _mm256_srli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8((char)0xc0)), 2));
            SGLLM__UNROLL
            for (int j = 0; j < 4; j++) {
                // values 0..15 of this 32 use scale 2j, values 16..31 scale 2j+1
                __m256i s = _mm256_shuffle_epi8(scv, _mm256_set_m128i(SGLLM__SEL16(2 * j + 1), SGLLM__SEL16(2 * j)));
                SGLLM__UNROLL
                for (int k = 0; k < NT; k++) {
                    const int8_t *yq = ((const sgllm__bq8_k *)(x + (size_t)k * xs) + b)->qs + 128 * h + 32 * j;
                    __m256i p = _mm256_maddubs_epi16(q[j], _mm256_loadu_si256((const __m256i *)yq));
                    isum[k] = sgllm__dp_s16(vnni, isum[k], p, s);
                }
            }
        }
        __m256i sc_all = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)bw->scales));
        float d = sgllm__hx(bw->d);
        SGLLM__UNROLL
        for (int k = 0; k < NT; k++) {
            const sgllm__bq8_k *y = (const sgllm__bq8_k *)(x + (size_t)k * xs) + b;
            // the stored values are q + 32: take 32 * scale * (sum of y) back out
            __m256i corr = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y->bsums), sc_all);
            __m256i s = _mm256_sub_epi32(isum[k], _mm256_slli_epi32(corr, 5));
            acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * y->d), _mm256_cvtepi32_ps(s), acc[k]);
        }
    }
    SGLLM__UNROLL
    for (int k = 0; k < NT; k++) out[k] = sgllm__hsum8(acc[k]);
}

static SGLLM__AVX2 float sgllm__dot_float_avx2(uint32_t t, int64_t n, const void *w, const float *x) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int u = 0; u < 4; u++) {
            int64_t o = i + 8 * u;
            __m256 wv;
            if (t == SGLLM__T_F32) wv = _mm256_loadu_ps((const float *)w + o);
            else if (t == SGLLM__T_F16) wv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + o)));
            else
                wv = _mm256_castsi256_ps(_mm256_slli_epi32(
                    _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + o))), 16));
            acc[u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + o), acc[u]);
        }
    float sum = sgllm__hsum8(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) {
        float v = t == SGLLM__T_F32   ? ((const float *)w)[i]
                  : t == SGLLM__T_F16 ? sgllm__hx(((const uint16_t *)w)[i])
                                      : sgllm__bf16_to_f32(((const uint16_t *)w)[i]);
        sum += v * x[i];
    }
    return sum;
}

// out[r*nt + k] = dot(weight row w + r*ws, activation row x + k*xs) for r < nr (<= 8) and
// k < nt (<= 4); written once, instantiated for AVX2 and for AVX-512 VNNI.
static SGLLM__AVX2_INLINE void sgllm__dot_tile_x86(bool vnni, uint32_t t, int64_t n, const uint8_t *w, size_t ws,
                                                   int nr, const uint8_t *x, size_t xs, int nt, float *out) {
    switch (t) {
    case SGLLM__T_Q4_0: case SGLLM__T_Q4_1: case SGLLM__T_Q5_0: case SGLLM__T_Q5_1: case SGLLM__T_Q8_0: {
        // rows past nr repeat the last row; their outputs are dropped
        const uint8_t *wr[8], *xr[4];
        float o[16];
        if (nt == 4) {
            for (int k = 0; k < 4; k++) xr[k] = x + (size_t)k * xs;
            for (int r = 0; r < nr; r += 4) {
                for (int i = 0; i < 4; i++) wr[i] = w + (size_t)(r + i < nr ? r + i : nr - 1) * ws;
                switch (t) {
                case SGLLM__T_Q4_0: sgllm__q32_tile(SGLLM__T_Q4_0, vnni, 4, 4, n, wr, xr, o, 0); break;
                case SGLLM__T_Q4_1: sgllm__q32_tile(SGLLM__T_Q4_1, vnni, 4, 4, n, wr, xr, o, 0); break;
                case SGLLM__T_Q5_0: sgllm__q32_tile(SGLLM__T_Q5_0, vnni, 4, 4, n, wr, xr, o, 0); break;
                case SGLLM__T_Q5_1: sgllm__q32_tile(SGLLM__T_Q5_1, vnni, 4, 4, n, wr, xr, o, 0); break;
                default: sgllm__q32_tile(SGLLM__T_Q8_0, vnni, 4, 4, n, wr, xr, o, 0); break;
                }
                for (int i = 0; i < 16 && r * 4 + i < nr * 4; i++) out[r * 4 + i] = o[i];
            }
            return;
        }
        for (int r = 0; r < 8; r++) wr[r] = w + (size_t)(r < nr ? r : nr - 1) * ws;
        // the weight rows of the next tile (past the matrix the prefetches are harmless hints)
        uintptr_t pf = nt == 1 && ws == (size_t)sgllm__types[t].bytes * (size_t)(n / SGLLM__QK) ? (uintptr_t)w + 8 * ws : 0;
        for (int k = 0; k < nt; k++) {
            xr[0] = x + (size_t)k * xs;
            switch (t) {
            case SGLLM__T_Q4_0: sgllm__q32_tile(SGLLM__T_Q4_0, vnni, 8, 1, n, wr, xr, o, pf); break;
            case SGLLM__T_Q4_1: sgllm__q32_tile(SGLLM__T_Q4_1, vnni, 8, 1, n, wr, xr, o, pf); break;
            case SGLLM__T_Q5_0: sgllm__q32_tile(SGLLM__T_Q5_0, vnni, 8, 1, n, wr, xr, o, pf); break;
            case SGLLM__T_Q5_1: sgllm__q32_tile(SGLLM__T_Q5_1, vnni, 8, 1, n, wr, xr, o, pf); break;
            default: sgllm__q32_tile(SGLLM__T_Q8_0, vnni, 8, 1, n, wr, xr, o, pf); break;
            }
            for (int r = 0; r < nr; r++) out[r * nt + k] = o[r];
        }
        return;
    }
    case SGLLM__T_Q4_K: case SGLLM__T_Q5_K: case SGLLM__T_Q6_K:
        for (int r = 0; r < nr; r++) {
            const uint8_t *wr = w + (size_t)r * ws;
            float *o = out + r * nt;
            if (nt == 4) {
                if (t == SGLLM__T_Q6_K) sgllm__dot_q6k_avx2(vnni, 4, n, wr, x, xs, o);
                else if (t == SGLLM__T_Q4_K) sgllm__dot_q45k_avx2(vnni, false, 4, n, wr, x, xs, o);
                else sgllm__dot_q45k_avx2(vnni, true, 4, n, wr, x, xs, o);
            } else {
                for (int k = 0; k < nt; k++) {
                    if (t == SGLLM__T_Q6_K) sgllm__dot_q6k_avx2(vnni, 1, n, wr, x + (size_t)k * xs, xs, o + k);
                    else if (t == SGLLM__T_Q4_K) sgllm__dot_q45k_avx2(vnni, false, 1, n, wr, x + (size_t)k * xs, xs, o + k);
                    else sgllm__dot_q45k_avx2(vnni, true, 1, n, wr, x + (size_t)k * xs, xs, o + k);
                }
            }
        }
        return;
    default:
        for (int r = 0; r < nr; r++)
            for (int k = 0; k < nt; k++)
                out[r * nt + k] = sgllm__dot_float_avx2(t, n, w + (size_t)r * ws, (const float *)(x + (size_t)k * xs));
        return;
    }
}

static SGLLM__AVX2 void sgllm__dot_tile_avx2(uint32_t t, int64_t n, const uint8_t *w, size_t ws, int nr,
                                            const uint8_t *x, size_t xs, int nt, float *out) {
    sgllm__dot_tile_x86(false, t, n, w, ws, nr, x, xs, nt, out);
}

static SGLLM__VNNI void sgllm__dot_tile_vnni(uint32_t t, int64_t n, const uint8_t *w, size_t ws, int nr,
                                            const uint8_t *x, size_t xs, int nt, float *out) {
    sgllm__dot_tile_x86(true, t, n, w, ws, nr, x, xs, nt, out);
}

// Rounds 32 floats (already scaled to [-127, 127]) half to even and stores them as int8.
static SGLLM__AVX2_INLINE void sgllm__round_store32(const float *x, __m256 scale, int8_t *dst) {
    __m256i v[4];
    for (int k = 0; k < 4; k++)
        v[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), scale),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    // packs interleave 128-bit lanes; the permute puts the 8 groups of 4 back in order
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)dst, p);
}

static SGLLM__AVX2_INLINE float sgllm__amax32(const float *x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8 * k)));
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static SGLLM__AVX2 void sgllm__quant_q8_0_avx2(const float *x, void *dst, int64_t n, bool with_sum) {
    for (int64_t b = 0; b < n / SGLLM__QK; b++, x += 32) {
        float amax = sgllm__amax32(x);
        float d = amax / 127.f, id = amax != 0 ? 127.f / amax : 0.f;
        int8_t *qs = with_sum ? ((sgllm__bq8_1 *)dst)[b].qs : ((sgllm__bq8_0 *)dst)[b].qs;
        uint16_t dh = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
        sgllm__round_store32(x, _mm256_set1_ps(id), qs);
        if (with_sum) {
            sgllm__bq8_1 *y = (sgllm__bq8_1 *)dst + b;
            __m256i s16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), _mm256_loadu_si256((const __m256i *)qs));
            __m256i s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
            __m128i s = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
            s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
            s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
            y->d = dh;
            y->s = _cvtss_sh(d * (float)_mm_cvtsi128_si32(s), _MM_FROUND_TO_NEAREST_INT);
        } else {
            ((sgllm__bq8_0 *)dst)[b].d = dh;
        }
    }
}

static SGLLM__AVX2 void sgllm__quant_q8_k_avx2(const float *x, void *dst, int64_t n) {
    for (int64_t b = 0; b < n / SGLLM__QKK; b++, x += SGLLM__QKK) {
        sgllm__bq8_k *y = (sgllm__bq8_k *)dst + b;
        float amax = 0;
        for (int k = 0; k < SGLLM__QKK; k += 32) amax = fmaxf(amax, sgllm__amax32(x + k));
        float iscale = 0;
        if (amax != 0) {
            int j = 0; // the first value of largest magnitude decides the sign, as in llama.cpp
            while (fabsf(x[j]) != amax) j++;
            iscale = -127.f / x[j];
        }
        for (int k = 0; k < SGLLM__QKK; k += 32) sgllm__round_store32(x + k, _mm256_set1_ps(iscale), y->qs + k);
        sgllm__q8k_finish(y, iscale);
    }
}

// Dequantization: the reference's arithmetic, operation for operation, 8 values at a time.
// op: 0 y = q*s, 1 y = q*s + bias, 2 y = q*s - bias.
static SGLLM__AVX2_INLINE void sgllm__put8(float *dst, __m128i q8, float s, int op, float bias) {
    __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8)), _mm256_set1_ps(s));
    if (op == 1) f = _mm256_add_ps(f, _mm256_set1_ps(bias));
    if (op == 2) f = _mm256_sub_ps(f, _mm256_set1_ps(bias));
    _mm256_storeu_ps(dst, f);
}

// 32 signed byte values; the first 16 scaled by s0 (and bias b0), the last 16 by s1 (b1).
static SGLLM__AVX2_INLINE void sgllm__put32(float *dst, __m256i q, float s0, float s1, int op, float b0, float b1) {
    __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    sgllm__put8(dst, lo, s0, op, b0);
    sgllm__put8(dst + 8, _mm_srli_si128(lo, 8), s0, op, b0);
    sgllm__put8(dst + 16, hi, s1, op, b1);
    sgllm__put8(dst + 24, _mm_srli_si128(hi, 8), s1, op, b1);
}

// Returns false for types it leaves to the reference.
static SGLLM__AVX2 bool sgllm__dequant_avx2(uint32_t t, const void *src, float *dst, int64_t n) {
    const uint8_t *p = (const uint8_t *)src;
    switch (t) {
    case SGLLM__T_F16: {
        int64_t i = 0;
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)src + i))));
        for (; i < n; i++) dst[i] = sgllm__h(((const uint16_t *)src)[i]);
        return true;
    }
    case SGLLM__T_Q4_0: case SGLLM__T_Q4_1: case SGLLM__T_Q5_0: case SGLLM__T_Q5_1: case SGLLM__T_Q8_0: {
        size_t wb = (size_t)sgllm__types[t].bytes;
        for (int64_t b = 0; b < n / SGLLM__QK; b++, p += wb, dst += 32) {
            uint16_t dh, mh = 0;
            memcpy(&dh, p, 2);
            float d = sgllm__hx(dh);
            switch (t) {
            case SGLLM__T_Q4_0: sgllm__put32(dst, _mm256_sub_epi8(sgllm__nib32(p + 2), _mm256_set1_epi8(8)), d, d, 0, 0, 0); break;
            case SGLLM__T_Q4_1:
                memcpy(&mh, p + 2, 2);
                sgllm__put32(dst, sgllm__nib32(p + 4), d, d, 1, sgllm__hx(mh), sgllm__hx(mh));
                break;
            case SGLLM__T_Q5_0:
                sgllm__put32(dst, _mm256_sub_epi8(_mm256_or_si256(sgllm__nib32(p + 6), sgllm__bit5_32(p + 2)), _mm256_set1_epi8(16)),
                             d, d, 0, 0, 0);
                break;
            case SGLLM__T_Q5_1:
                memcpy(&mh, p + 2, 2);
                sgllm__put32(dst, _mm256_or_si256(sgllm__nib32(p + 8), sgllm__bit5_32(p + 4)), d, d, 1, sgllm__hx(mh), sgllm__hx(mh));
                break;
            default: sgllm__put32(dst, _mm256_loadu_si256((const __m256i *)(p + 2)), d, d, 0, 0, 0); break;
            }
        }
        return true;
    }
    case SGLLM__T_Q4_K: case SGLLM__T_Q5_K: {
        bool q5 = t == SGLLM__T_Q5_K;
        const __m256i m4 = _mm256_set1_epi8(15), one = _mm256_set1_epi8(1);
        for (int64_t b = 0; b < n / SGLLM__QKK; b++, p += q5 ? sizeof(sgllm__bq5_k) : sizeof(sgllm__bq4_k)) {
            uint16_t dh, dminh;
            memcpy(&dh, p, 2);
            memcpy(&dminh, p + 2, 2);
            float d = sgllm__hx(dh), dmin = sgllm__hx(dminh);
            uint8_t sc[8], mn[8];
            sgllm__k_scales8(p + 4, sc, mn);
            __m256i qh = q5 ? _mm256_loadu_si256((const __m256i *)(p + 16)) : _mm256_setzero_si256();
            const uint8_t *qs = p + (q5 ? 48 : 16);
            for (int c = 0; c < 4; c++, dst += 64) {
                __m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
                __m256i lo = _mm256_and_si256(raw, m4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                if (q5) {
                    lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(qh, one), 4));
                    hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 1), one), 4));
                    qh = _mm256_srli_epi16(qh, 2);
                }
                float d0 = d * sc[2 * c], mm0 = dmin * mn[2 * c], d1 = d * sc[2 * c + 1], mm1 = dmin * mn[2 * c + 1];
                sgllm__put32(dst, lo, d0, d0, 2, mm0, mm0);
                sgllm__put32(dst + 32, hi, d1, d1, 2, mm1, mm1);
            }
        }
        return true;
    }
    case SGLLM__T_Q6_K: {
        const __m256i m4 = _mm256_set1_epi8(15), m32 = _mm256_set1_epi8(32);
        for (int64_t b = 0; b < n / SGLLM__QKK; b++) {
            const sgllm__bq6_k *x = (const sgllm__bq6_k *)src + b;
            float d = sgllm__hx(x->d);
            for (int h = 0; h < 2; h++, dst += 128) {
                __m256i ql0 = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h));
                __m256i ql1 = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h + 32));
                __m256i qh = _mm256_loadu_si256((const __m256i *)(x->qh + 32 * h));
                __m256i q[4];
                q[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(3)), 4));
                q[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(12)), 2));
                q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, _mm256_set1_epi8(48)));
                q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                       _mm256_srli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8((char)0xc0)), 2));
                const int8_t *sc = x->scales + 8 * h;
                for (int j = 0; j < 4; j++)
                    sgllm__put32(dst + 32 * j, _mm256_sub_epi8(q[j], m32), d * (float)sc[2 * j], d * (float)sc[2 * j + 1], 0, 0, 0);
            }
        }
        return true;
    }
    default: return false;
    }
}
#else
static bool sgllm__use_avx2(void) { return false; }
#endif

// --- dispatch

// Instruction sets of the dot products, each a superset of the one before.
enum { SGLLM__ISA_C, SGLLM__ISA_AVX2, SGLLM__ISA_VNNI };

static int sgllm__isa(void) {
#if SGLLM__X86
    if (!sgllm__use_avx2()) return SGLLM__ISA_C;
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")
               ? SGLLM__ISA_VNNI
               : SGLLM__ISA_AVX2;
#else
    return SGLLM__ISA_C;
#endif
}

// Fast dequantization (AVX2 where available), bit for bit the reference's result.
static void sgllm__dequant_row_impl(uint32_t t, const void *src, float *dst, int64_t n, bool avx2) {
#if SGLLM__X86
    if (avx2 && sgllm__dequant_avx2(t, src, dst, n)) return;
#else
    (void)avx2;
#endif
    sgllm__dequant_row_ref(t, src, dst, n);
}
static void sgllm__dequant_row(uint32_t t, const void *src, float *dst, int64_t n) {
    sgllm__dequant_row_impl(t, src, dst, n, sgllm__use_avx2());
}

// x (n floats) -> one activation row in vec_dot_type(t) (for float weights a plain copy).
static void sgllm__quantize_act_impl(uint32_t t, const float *x, void *dst, int64_t n, bool avx2) {
    uint32_t vt = sgllm__vec_dot_type(t);
#if SGLLM__X86
    if (avx2) {
        if (vt == SGLLM__T_Q8_K) sgllm__quant_q8_k_avx2(x, dst, n);
        else if (vt != SGLLM__T_F32) sgllm__quant_q8_0_avx2(x, dst, n, vt == SGLLM__T_Q8_1);
        else memcpy(dst, x, (size_t)n * sizeof(float));
        return;
    }
#else
    (void)avx2;
#endif
    if (vt == SGLLM__T_Q8_K) sgllm__quant_q8_k_c(x, dst, n);
    else if (vt != SGLLM__T_F32) sgllm__quant_q8_0_c(x, dst, n, vt == SGLLM__T_Q8_1);
    else memcpy(dst, x, (size_t)n * sizeof(float));
}
SGLLM__MAYBE_UNUSED static void sgllm__quantize_act(uint32_t t, const float *x, void *dst, int64_t n) {
    sgllm__quantize_act_impl(t, x, dst, n, sgllm__use_avx2());
}

// out[r*nt + k] = dot(weight row w + r*ws, activation row x + k*xs) for r < nr (<= 8) and
// k < nt (<= 4), with the instruction set isa (at most sgllm__isa()).
static void sgllm__dot_tile(uint32_t t, int64_t n, const uint8_t *w, size_t ws, int nr, const uint8_t *x, size_t xs,
                            int nt, float *out, int isa) {
    if (!sgllm__quant_supported(t)) { // the loader rejects these; never read them as another type
        for (int i = 0; i < nr * nt; i++) out[i] = 0;
        return;
    }
#if SGLLM__X86
    if (isa == SGLLM__ISA_VNNI) {
        sgllm__dot_tile_vnni(t, n, w, ws, nr, x, xs, nt, out);
        return;
    }
    if (isa == SGLLM__ISA_AVX2) {
        sgllm__dot_tile_avx2(t, n, w, ws, nr, x, xs, nt, out);
        return;
    }
#endif
    for (int r = 0; r < nr; r++)
        for (int k = 0; k < nt; k++) out[r * nt + k] = sgllm__vec_dot_c(t, n, w + (size_t)r * ws, x + (size_t)k * xs);
}

static float sgllm__vec_dot_impl(uint32_t t, int64_t n, const void *w, const void *xq, int isa) {
    float r;
    sgllm__dot_tile(t, n, (const uint8_t *)w, 0, 1, (const uint8_t *)xq, 0, 1, &r, isa);
    return r;
}
// dot(weight row of type t, activation row already in vec_dot_type(t)), n values.
SGLLM__MAYBE_UNUSED static float sgllm__vec_dot(uint32_t t, int64_t n, const void *w, const void *xq) {
    return sgllm__vec_dot_impl(t, n, w, xq, sgllm__isa());
}

typedef struct sgllm__mat {
    uint32_t type;       // sgllm__type
    int64_t rows, cols;  // rows = ne[1] (outputs), cols = ne[0] (inputs, contiguous)
    const uint8_t *data; // (rows, row_bytes)
    size_t row_bytes;
} sgllm__mat;

// Scratch for sgllm__matmul: the quantized activations (n_tok, act_row_bytes); 0 for float
// weights, which read x directly.
static size_t sgllm__matmul_scratch_bytes(const sgllm__mat *w, int64_t n_tok) {
    if (sgllm__vec_dot_type(w->type) == SGLLM__T_F32 || n_tok <= 0) return 0;
    return (size_t)n_tok * sgllm__act_row_bytes(w->type, w->cols);
}

typedef struct sgllm__mm_job {
    const sgllm__mat *w;
    const float *x;       // (n_tok, cols)
    uint8_t *xq;          // (n_tok, x_stride) activations in vec_dot_type
    size_t x_stride;      // bytes
    float *y;             // (n_tok, rows)
    int64_t n_tok, rows_per_task;
    int isa;
} sgllm__mm_job;

static void sgllm__mm_quant_task(void *arg, int64_t tok, int thread) {
    (void)thread;
    const sgllm__mm_job *j = (const sgllm__mm_job *)arg;
    sgllm__quantize_act_impl(j->w->type, j->x + tok * j->w->cols, j->xq + (size_t)tok * j->x_stride, j->w->cols, j->isa != SGLLM__ISA_C);
}

// Rows are walked in blocks of 8 (their bytes stay in L1) against tiles of 4 tokens, so a
// weight block is unpacked once per 4 tokens and read from memory once per task.
enum { SGLLM__MM_ROW_BLOCK = 8, SGLLM__MM_TOK_TILE = 4 };

static void sgllm__mm_task(void *arg, int64_t task, int thread) {
    (void)thread;
    const sgllm__mm_job *j = (const sgllm__mm_job *)arg;
    const sgllm__mat *w = j->w;
    int64_t r0 = task * j->rows_per_task, r1 = r0 + j->rows_per_task < w->rows ? r0 + j->rows_per_task : w->rows;
    for (int64_t rb = r0; rb < r1; rb += SGLLM__MM_ROW_BLOCK) {
        int nr = (int)(r1 - rb < SGLLM__MM_ROW_BLOCK ? r1 - rb : SGLLM__MM_ROW_BLOCK);
        for (int64_t t0 = 0; t0 < j->n_tok; t0 += SGLLM__MM_TOK_TILE) {
            int nt = (int)(j->n_tok - t0 < SGLLM__MM_TOK_TILE ? j->n_tok - t0 : SGLLM__MM_TOK_TILE);
            float out[SGLLM__MM_ROW_BLOCK * SGLLM__MM_TOK_TILE]; // (nr, nt)
            sgllm__dot_tile(w->type, w->cols, w->data + (size_t)rb * w->row_bytes, w->row_bytes, nr,
                            j->xq + (size_t)t0 * j->x_stride, j->x_stride, nt, out, j->isa);
            for (int r = 0; r < nr; r++)
                for (int k = 0; k < nt; k++) j->y[(t0 + k) * w->rows + rb + r] = out[r * nt + k];
        }
    }
}

static void sgllm__matmul_impl(sgllm__pool *pool, const sgllm__mat *w, const float *x, int64_t n_tok, float *y,
                               void *scratch, int isa) {
    if (n_tok <= 0 || w->rows <= 0) return;
    sgllm__mm_job j = {w, x, (uint8_t *)scratch, 0, y, n_tok, 0, isa};
    if (sgllm__vec_dot_type(w->type) == SGLLM__T_F32) {
        j.xq = (uint8_t *)(uintptr_t)x;
        j.x_stride = (size_t)w->cols * sizeof(float);
    } else {
        j.x_stride = sgllm__act_row_bytes(w->type, w->cols);
        // for a few tokens waking the pool costs more than quantizing
        if (n_tok >= 8) sgllm__pool_run(pool, n_tok, sgllm__mm_quant_task, &j);
        else
            for (int64_t t = 0; t < n_tok; t++) sgllm__mm_quant_task(&j, t, 0);
    }
    int64_t n_threads = pool ? pool->n_threads : 1;
    // about 4 tasks per thread so that a slow or late thread does not hold the others up
    int64_t rpt = (w->rows + 4 * n_threads - 1) / (4 * n_threads);
    j.rows_per_task = (rpt + SGLLM__MM_ROW_BLOCK - 1) / SGLLM__MM_ROW_BLOCK * SGLLM__MM_ROW_BLOCK;
    sgllm__pool_run(pool, (w->rows + j.rows_per_task - 1) / j.rows_per_task, sgllm__mm_task, &j);
}

// y (n_tok, w->rows) = x (n_tok, w->cols) @ w^T on the pool's threads; scratch holds
// sgllm__matmul_scratch_bytes(w, n_tok) bytes (the quantized x).
static void sgllm__matmul(sgllm__pool *pool, const sgllm__mat *w, const float *x, int64_t n_tok, float *y,
                          void *scratch) {
    sgllm__matmul_impl(pool, w, x, n_tok, y, scratch, sgllm__isa());
}


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

static void sgllm__bpe_try_bigram(sgllm__tokw *w, const uint8_t *s, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    sgllm__tsym *a = &w->sym[l], *b = &w->sym[r];
    int32_t rank = sgllm__vocab_merge_rank(w->v, s + a->start, (size_t)a->n, s + b->start, (size_t)b->n);
    if (rank < 0) return;
    if (!sgllm__heap_push(w, (sgllm__bigram){-(double)rank, l, r, a->n, b->n})) w->oom = true;
}

// Splits s[0..n) into characters, then merges adjacent pairs best first (SPM: highest score,
// BPE: lowest merge rank; leftmost on ties) until no pair qualifies. The surviving symbols
// are the linked list w->sym[0], .next, ...; false when there is nothing (or no memory).
static bool sgllm__merge_symbols(sgllm__tokw *w, const uint8_t *s, int64_t n, bool spm) {
    int32_t count = sgllm__tokw_symbols(w, s, n);
    if (count == 0) return false;
    void (*try_pair)(sgllm__tokw *, const uint8_t *, int32_t, int32_t) =
        spm ? sgllm__spm_try_bigram : sgllm__bpe_try_bigram;
    w->heap_n = 0;
    for (int32_t i = 1; i < count && !w->oom; i++) try_pair(w, s, i - 1, i);
    while (w->heap_n && !w->oom) {
        sgllm__bigram bg = sgllm__heap_pop(w);
        sgllm__tsym *a = &w->sym[bg.left], *b = &w->sym[bg.right];
        // sizes only grow, so equal sizes mean the pair's text is unchanged
        if (a->n == 0 || b->n == 0 || a->n != bg.ln || b->n != bg.rn) continue;
        a->n += b->n;
        b->n = 0;
        a->next = b->next;
        if (b->next >= 0) w->sym[b->next].prev = bg.left;
        try_pair(w, s, a->prev, bg.left);
        try_pair(w, s, bg.left, a->next);
    }
    return !w->oom;
}

// SPM on s[0..n) (spaces already escaped): merge the best-scoring adjacent pair whose
// concatenation is a token until none is left; leftover characters become byte tokens.
static void sgllm__spm_fragment(sgllm__tokw *w, const uint8_t *s, int64_t n) {
    if (!sgllm__merge_symbols(w, s, n, true)) return;
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

// BPE on one byte-encoded word s[0..n): apply the lowest-ranked merge first, leftmost on ties.
static void sgllm__bpe_word(sgllm__tokw *w, const uint8_t *s, int64_t n) {
    if (w->v->ignore_merges) {
        int32_t id = sgllm__vocab_find(w->v, s, (size_t)n);
        if (id >= 0) {
            sgllm__tokw_push(w, id);
            return;
        }
    }
    if (!sgllm__merge_symbols(w, s, n, false)) return;
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
// sgllm runs no Jinja. It recognizes two template families by their markers and renders
// them in C, byte for byte as the reference templates render them under jinja2 (checked
// in tests/test_chat.c): Gemma (<start_of_turn>; also Gemma-architecture models that ship
// no template) and ChatML (<|im_start|>). Data a template carries as a plain literal, the
// system-prompt separator of Gemma and a default system prompt in ChatML, is read from it.
// Anything else is SGLLM_ERR_NO_TEMPLATE rather than a guess.

// Appends to a caller buffer; len counts every byte, written or not.
typedef struct sgllm__chat_out {
    char *buf;
    size_t cap;
    size_t len;
    bool overflow; // the length no longer fits in size_t
} sgllm__chat_out;

static void sgllm__chat_put(sgllm__chat_out *o, const char *s, size_t n) {
    if (n > SIZE_MAX - o->len) {
        o->overflow = true;
        return;
    }
    if (o->len < o->cap) memcpy(o->buf + o->len, s, n < o->cap - o->len ? n : o->cap - o->len);
    o->len += n;
}

static void sgllm__chat_puts(sgllm__chat_out *o, const char *s) { sgllm__chat_put(o, s, strlen(s)); }

// Decodes one UTF-8 code point from s (n bytes available); 0 bytes for an invalid sequence.
static size_t sgllm__chat_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    if (n == 0) return 0;
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    size_t len = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc0 ? 2 : 0;
    if (len == 0 || len > n || s[0] > 0xf4) return 0;
    uint32_t c = s[0] & (0x7f >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        c = (c << 6) | (s[i] & 0x3f);
    }
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (c < min_cp[len] || c > 0x10ffff || (c >= 0xd800 && c < 0xe000)) return 0;
    *cp = c;
    return len;
}

// Python's str.isspace(), which Jinja's trim filter (str.strip) uses.
static bool sgllm__is_py_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

// Jinja's `| trim` on UTF-8 text: *s and *n shrink past leading and trailing whitespace.
// Invalid UTF-8 is never whitespace.
static void sgllm__chat_trim(const char **s, size_t *n) {
    const unsigned char *p = (const unsigned char *)*s;
    size_t len = *n, k;
    uint32_t c;
    while ((k = sgllm__chat_utf8_decode(p, len, &c)) > 0 && sgllm__is_py_space(c)) {
        p += k;
        len -= k;
    }
    while (len > 0) {
        size_t start = len - 1; // back up to the lead byte of the last character
        while (start > 0 && len - start < 4 && (p[start] & 0xc0) == 0x80) start--;
        k = sgllm__chat_utf8_decode(p + start, len - start, &c);
        if (k != len - start || !sgllm__is_py_space(c)) break;
        len = start;
    }
    *s = (const char *)p;
    *n = len;
}

// Reads the Jinja string literal that starts at s (a quote) into out (cap bytes): true
// when it is complete, fits and holds only escapes Jinja spells \n, \t, \\, \' or \".
static bool sgllm__chat_literal(const char *s, char *out, size_t cap, size_t *len) {
    const char q = *s++;
    if (q != '\'' && q != '"') return false;
    size_t n = 0;
    for (; *s && *s != q; s++) {
        char c = *s;
        if (c == '\\') {
            c = *++s;
            if (c == 'n') c = '\n';
            else if (c == 't') c = '\t';
            else if (c != '\\' && c != '\'' && c != '"') return false;
        }
        if (n + 1 >= cap) return false;
        out[n++] = c;
    }
    if (*s != q) return false;
    out[n] = 0;
    *len = n;
    return true;
}

// Gemma joins a system message to the first user turn with the literal its template adds
// to messages[0]['content'] ("\n\n" in Gemma 3's, which is also the default).
static void sgllm__chat_gemma_separator(const char *tmpl, char *sep, size_t cap, size_t *len) {
    static const char key[] = "messages[0]['content'] + ";
    const char *at = tmpl ? strstr(tmpl, key) : NULL;
    if (at && sgllm__chat_literal(at + sizeof key - 1, sep, cap, len)) return;
    memcpy(sep, "\n\n", 3);
    *len = 2;
}

// A ChatML template's default system prompt: the first `<|im_start|>system` turn written
// entirely as a literal (SmolLM2's "You are a helpful AI assistant named SmolLM, ...").
// Returns its length (0 when there is none) and the text in out.
static size_t sgllm__chat_chatml_default_system(const char *tmpl, char *out, size_t cap) {
    static const char open[] = "<|im_start|>system", close[] = "<|im_end|>";
    for (const char *at = strstr(tmpl, open); at; at = strstr(at + 1, open)) {
        const char *s = at + sizeof open - 1;
        if (*s == '\n') s += 1;
        else if (s[0] == '\\' && s[1] == 'n') s += 2;
        else continue;
        const char *end = strstr(s, close);
        if (!end) return 0;
        size_t n = 0;
        bool literal = true;
        for (const char *c = s; c < end && literal; c++) {
            if (strchr("'\"{}+", *c) || n + 1 >= cap) literal = false;
            else if (c[0] == '\\' && c + 1 < end && c[1] == 'n') out[n++] = '\n', c++;
            else if (*c == '\\') literal = false;
            else out[n++] = *c;
        }
        if (literal && n > 0) {
            out[n] = 0;
            return n;
        }
    }
    return 0;
}

typedef enum { SGLLM__CHAT_SYSTEM, SGLLM__CHAT_USER, SGLLM__CHAT_ASSISTANT, SGLLM__CHAT_BAD } sgllm__chat_role;

static sgllm__chat_role sgllm__chat_role_of(const sgllm_chat_message *m) {
    if (!m->role || !m->content) return SGLLM__CHAT_BAD;
    if (!strcmp(m->role, "system")) return SGLLM__CHAT_SYSTEM;
    if (!strcmp(m->role, "user")) return SGLLM__CHAT_USER;
    if (!strcmp(m->role, "assistant")) return SGLLM__CHAT_ASSISTANT;
    return SGLLM__CHAT_BAD;
}

// Gemma 3: an optional leading system message becomes a prefix of the first turn; then
// turns alternate user, assistant, user... (the template raises an error otherwise, so
// this is SGLLM_ERR_INVALID_ARGUMENT); assistant turns are called "model"; contents are
// trimmed; the BOS the template writes first is left to the tokenizer.
static sgllm_status sgllm__chat_gemma(const char *tmpl, const sgllm_chat_message *msgs, size_t n,
                                      int add_assistant, sgllm__chat_out *o) {
    char sep[32];
    size_t sep_len;
    sgllm__chat_gemma_separator(tmpl, sep, sizeof sep, &sep_len);
    size_t first = n > 0 && sgllm__chat_role_of(&msgs[0]) == SGLLM__CHAT_SYSTEM ? 1 : 0;
    for (size_t i = first; i < n; i++) {
        sgllm__chat_role want = (i - first) % 2 == 0 ? SGLLM__CHAT_USER : SGLLM__CHAT_ASSISTANT;
        if (sgllm__chat_role_of(&msgs[i]) != want) return SGLLM_ERR_INVALID_ARGUMENT;
        sgllm__chat_puts(o, want == SGLLM__CHAT_USER ? "<start_of_turn>user\n" : "<start_of_turn>model\n");
        if (i == first && first == 1) {
            sgllm__chat_puts(o, msgs[0].content);
            sgllm__chat_put(o, sep, sep_len);
        }
        const char *c = msgs[i].content;
        size_t c_len = strlen(c);
        sgllm__chat_trim(&c, &c_len);
        sgllm__chat_put(o, c, c_len);
        sgllm__chat_puts(o, "<end_of_turn>\n");
    }
    if (add_assistant) sgllm__chat_puts(o, "<start_of_turn>model\n");
    return SGLLM_OK;
}

// ChatML: every message as <|im_start|>role\ncontent<|im_end|>\n, untrimmed, preceded by
// the template's default system prompt when the first message is not a system message.
static sgllm_status sgllm__chat_chatml(const char *tmpl, const sgllm_chat_message *msgs, size_t n,
                                       int add_assistant, sgllm__chat_out *o) {
    char dflt[1024];
    size_t dflt_len = sgllm__chat_chatml_default_system(tmpl, dflt, sizeof dflt);
    if (n > 0 && dflt_len > 0 && sgllm__chat_role_of(&msgs[0]) != SGLLM__CHAT_SYSTEM) {
        sgllm__chat_puts(o, "<|im_start|>system\n");
        sgllm__chat_put(o, dflt, dflt_len);
        sgllm__chat_puts(o, "<|im_end|>\n");
    }
    for (size_t i = 0; i < n; i++) {
        sgllm__chat_puts(o, "<|im_start|>");
        sgllm__chat_puts(o, msgs[i].role);
        sgllm__chat_puts(o, "\n");
        sgllm__chat_puts(o, msgs[i].content);
        sgllm__chat_puts(o, "<|im_end|>\n");
    }
    if (add_assistant) sgllm__chat_puts(o, "<|im_start|>assistant\n");
    return SGLLM_OK;
}

// tmpl: the model's tokenizer.chat_template (may be NULL); arch: general.architecture
// (may be NULL). Writes min(length, cap) bytes of the prompt to buf and a NUL when there is
// room; *len gets the full length (0 on errors other than SGLLM_ERR_BUFFER_TOO_SMALL).
static sgllm_status sgllm__chat_render(const char *tmpl, const char *arch, const sgllm_chat_message *msgs,
                                       size_t n, int add_assistant, char *buf, size_t cap, size_t *len) {
    if (!len) return SGLLM_ERR_INVALID_ARGUMENT;
    *len = 0;
    if ((n > 0 && !msgs) || (cap > 0 && !buf)) return SGLLM_ERR_INVALID_ARGUMENT;
    for (size_t i = 0; i < n; i++)
        if (sgllm__chat_role_of(&msgs[i]) == SGLLM__CHAT_BAD) return SGLLM_ERR_INVALID_ARGUMENT;
    sgllm__chat_out o = {buf, cap, 0, false};
    sgllm_status st;
    if (tmpl ? strstr(tmpl, "<start_of_turn>") != NULL : (arch && !strncmp(arch, "gemma", 5)))
        st = sgllm__chat_gemma(tmpl, msgs, n, add_assistant, &o);
    else if (tmpl && strstr(tmpl, "<|im_start|>"))
        st = sgllm__chat_chatml(tmpl, msgs, n, add_assistant, &o);
    else
        return SGLLM_ERR_NO_TEMPLATE;
    if (st != SGLLM_OK) return st;
    if (o.overflow || o.len == SIZE_MAX) return SGLLM_ERR_OUT_OF_MEMORY;
    *len = o.len;
    if (o.len + 1 > cap) return SGLLM_ERR_BUFFER_TOO_SMALL;
    buf[o.len] = 0;
    return SGLLM_OK;
}

// --- 6. Sampler ----------------------------------------------------------------------------
// Turns one row of logits into a token: penalties over a window of accepted tokens, then
// top-k, temperature, top-p, min-p and a draw from the sampler's own xoshiro256** stream
// (no global state: the same seed gives the same tokens). Nothing sorts the vocabulary:
// top-k keeps a bounded heap during one scan; without top-k, tokens whose weight is below
// e^-SGLLM__SAMPLER_CUT of the top token's are dropped first (for 262144 tokens they hold
// under 2e-12 of the mass), and top-p pops a heap only as far as its kept prefix reaches.
// Ties are broken by the lower token id everywhere, so results never depend on scan order.

// Index of the largest value, the lowest index among ties; NaN loses to any number (all
// NaN gives 0). -1 when n <= 0.
static int32_t sgllm__argmax(const float *x, int64_t n) {
    if (n <= 0) return -1;
    int64_t best = 0;
    while (best < n && isnan(x[best])) best++;
    if (best == n) return 0;
    float bv = x[best];
    for (int64_t i = best + 1; i < n; i++)
        if (x[i] > bv) {
            bv = x[i];
            best = i;
        }
    return (int32_t)best;
}

// xoshiro256** seeded through splitmix64 (which never leaves the state all zero).
typedef struct sgllm__rng {
    uint64_t s[4];
} sgllm__rng;

static void sgllm__rng_seed(sgllm__rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) {
        uint64_t z = (seed += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        r->s[i] = z ^ (z >> 31);
    }
}

static uint64_t sgllm__rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t sgllm__rng_next(sgllm__rng *r) {
    uint64_t *s = r->s, out = sgllm__rotl64(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = sgllm__rotl64(s[3], 45);
    return out;
}

static double sgllm__rng_uniform(sgllm__rng *r) { // [0, 1) with 53 random bits
    return (double)(sgllm__rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

// Weights below e^-CUT of the top token's are never drawn when top-k is off.
#define SGLLM__SAMPLER_CUT 40.0f

typedef struct sgllm__cand {
    int32_t id;
    float logit; // after penalties, before temperature
    float p;     // exp((logit - max) / temperature): 1 for the top token
} sgllm__cand;

struct sgllm_sampler {
    sgllm_sampler_params params;
    int32_t n_vocab;
    sgllm__rng rng;
    sgllm_token *window;       // (penalty_last_n) ring of accepted tokens
    int32_t window_len;        // tokens in the ring
    int32_t window_head;       // slot of the oldest token
    int32_t *counts;           // (n_vocab) occurrences of each token in the ring
    sgllm_token *pen_tokens;   // (penalty_last_n) scratch: distinct tokens of the ring
    int32_t *pen_counts;       // (penalty_last_n) scratch: their counts
    float *work;               // (n_vocab) logits after penalties
    sgllm__cand *cand;         // (n_vocab) candidates
};

// Penalizes n distinct tokens (each once) that occurred counts[i] times in the window:
// repeat divides a positive logit and multiplies a negative one, then frequency subtracts
// counts[i] * frequency and presence subtracts presence. The CUDA backend mirrors this.
static void sgllm__sampler_apply_penalties(float *logits, const sgllm_token *tokens,
                                           const int32_t *counts, int64_t n, float repeat,
                                           float frequency, float presence) {
    for (int64_t i = 0; i < n; i++) {
        float l = logits[tokens[i]];
        l = l > 0 ? l / repeat : l * repeat;
        logits[tokens[i]] = l - (float)counts[i] * frequency - presence;
    }
}

static bool sgllm__sampler_has_penalties(const sgllm_sampler *s) {
    const sgllm_sampler_params *p = &s->params;
    return s->window_len > 0 &&
           (p->repeat_penalty != 1.0f || p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f);
}

// The distinct tokens of the penalty window (tokens, oldest first) and their counts; returns
// how many (at most penalty_last_n).
static int32_t sgllm__sampler_penalty_list(sgllm_sampler *s, sgllm_token *tokens, int32_t *counts) {
    int32_t cap = s->params.penalty_last_n, n = 0;
    // Collect each token once: a listed token's count is negated until the list is done.
    for (int32_t i = 0; i < s->window_len; i++) {
        sgllm_token t = s->window[(s->window_head + i) % cap];
        if (s->counts[t] > 0) {
            tokens[n] = t;
            counts[n++] = s->counts[t];
            s->counts[t] = -s->counts[t];
        }
    }
    for (int32_t i = 0; i < n; i++) s->counts[tokens[i]] = counts[i];
    return n;
}

// The logits the rest of the pipeline reads: the caller's row, or a penalized copy in work.
static const float *sgllm__sampler_penalized(sgllm_sampler *s, const float *logits) {
    if (!sgllm__sampler_has_penalties(s)) return logits;
    int32_t n = sgllm__sampler_penalty_list(s, s->pen_tokens, s->pen_counts);
    memcpy(s->work, logits, (size_t)s->n_vocab * sizeof(float));
    sgllm__sampler_apply_penalties(s->work, s->pen_tokens, s->pen_counts, n, s->params.repeat_penalty,
                                   s->params.frequency_penalty, s->params.presence_penalty);
    return s->work;
}

// Heap order: a is above b when it comes first (first_on_top) or last in the ranking
// (higher logit first, then lower id).
static bool sgllm__cand_above(const sgllm__cand *a, const sgllm__cand *b, bool first_on_top) {
    bool a_first = a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
    return first_on_top ? a_first : !a_first;
}

static void sgllm__cand_sift_down(sgllm__cand *h, int64_t n, int64_t i, bool first_on_top) {
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, top = i;
        if (l < n && sgllm__cand_above(&h[l], &h[top], first_on_top)) top = l;
        if (r < n && sgllm__cand_above(&h[r], &h[top], first_on_top)) top = r;
        if (top == i) return;
        sgllm__cand t = h[i];
        h[i] = h[top];
        h[top] = t;
        i = top;
    }
}

static void sgllm__cand_sift_up(sgllm__cand *h, int64_t i, bool first_on_top) {
    while (i > 0) {
        int64_t parent = (i - 1) / 2;
        if (!sgllm__cand_above(&h[i], &h[parent], first_on_top)) return;
        sgllm__cand t = h[i];
        h[i] = h[parent];
        h[parent] = t;
        i = parent;
    }
}

// The k best tokens of x (n), in heap order. NaN logits are never candidates.
static int64_t sgllm__sampler_top_k(const float *x, int64_t n, int64_t k, sgllm__cand *out) {
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        if (isnan(v)) continue;
        if (m < k) {
            out[m] = (sgllm__cand){(int32_t)i, v, 0};
            sgllm__cand_sift_up(out, m++, false);
        } else if (v > out[0].logit) { // equal logits lose: a later scan index has a higher id
            out[0] = (sgllm__cand){(int32_t)i, v, 0};
            sgllm__cand_sift_down(out, m, 0, false);
        }
    }
    return m;
}

// The tokens a draw chooses from, after every filter, with their weights. *out points into
// the sampler's candidate buffer. 0 when no logit is a finite number or +inf.
static int64_t sgllm__sampler_candidates(sgllm_sampler *s, const float *logits,
                                         const sgllm__cand **out) {
    const sgllm_sampler_params *p = &s->params;
    const float *x = sgllm__sampler_penalized(s, logits);
    const float temp = p->temperature;
    int64_t n = 0;
    float max;
    if (p->top_k > 0 && p->top_k < s->n_vocab) {
        n = sgllm__sampler_top_k(x, s->n_vocab, p->top_k, s->cand);
        max = -INFINITY;
        for (int64_t i = 0; i < n; i++) max = fmaxf(max, s->cand[i].logit);
    } else {
        max = x[sgllm__argmax(x, s->n_vocab)];
        // Without top-p no mass total is needed, so min-p can cut first, a little loosely:
        // its exact test on the weights below decides.
        float depth = SGLLM__SAMPLER_CUT;
        if (p->top_p >= 1 && p->min_p > 0) depth = fminf(depth, 0.01f - logf(fminf(p->min_p, 1)));
        const float cut = max - depth * temp;
        for (int64_t i = 0; i < s->n_vocab; i++)
            if (x[i] >= cut) s->cand[n++] = (sgllm__cand){(int32_t)i, x[i], 0};
    }
    *out = s->cand;
    if (n == 0 || !(max > -INFINITY)) return 0;

    // Weights in double before rounding to float: a float exponent would carry |z| float
    // roundings into every weight, enough to move top-p's cut on flat distributions.
    double total = 0; // over every candidate: top-p's fraction is of this mass
    for (int64_t i = 0; i < n; i++) {
        sgllm__cand *c = &s->cand[i];
        c->p = c->logit >= max ? 1.0f : (float)exp(((double)c->logit - max) / temp);
        total += c->p;
    }
    if (p->min_p > 0) { // the top token always stays: its weight is exactly 1
        const float thr = p->min_p < 1 ? p->min_p : 1;
        int64_t kept = 0;
        for (int64_t i = 0; i < n; i++)
            if (s->cand[i].p >= thr) s->cand[kept++] = s->cand[i];
        n = kept;
    }
    if (p->top_p < 1) {
        // Heap-sort from the top only until the prefix holds top_p of the mass; the popped
        // tokens collect at the end of the array, best last.
        for (int64_t i = n / 2 - 1; i >= 0; i--) sgllm__cand_sift_down(s->cand, n, i, true);
        const double goal = (double)p->top_p * total;
        double cum = 0;
        int64_t heap = n;
        while (heap > 0) {
            sgllm__cand top = s->cand[0];
            s->cand[0] = s->cand[--heap];
            s->cand[heap] = top;
            sgllm__cand_sift_down(s->cand, heap, 0, true);
            cum += top.p;
            if (cum >= goal) break;
        }
        *out = s->cand + heap;
        n -= heap;
    }
    return n;
}

static sgllm_token sgllm__sampler_draw(sgllm__rng *rng, const sgllm__cand *c, int64_t n) {
    double total = 0;
    for (int64_t i = 0; i < n; i++) total += c[i].p;
    const double u = sgllm__rng_uniform(rng) * total;
    double cum = 0;
    for (int64_t i = 0; i < n; i++) {
        cum += c[i].p;
        if (u < cum) return c[i].id;
    }
    return c[n - 1].id; // u within rounding of the total
}

void sgllm_sampler_default_params(sgllm_sampler_params *params) {
    if (!params) return;
    memset(params, 0, sizeof *params);
    params->struct_size = sizeof *params;
    params->temperature = 0.8f;
    params->top_k = 40;
    params->top_p = 0.95f;
    params->min_p = 0.05f;
    params->repeat_penalty = 1.0f;
    params->frequency_penalty = 0.0f;
    params->presence_penalty = 0.0f;
    params->penalty_last_n = 64;
    params->seed = 0x5eed;
}

void sgllm_sampler_free(sgllm_sampler *s) {
    if (!s) return;
    sgllm__free(s->window);
    sgllm__free(s->counts);
    sgllm__free(s->pen_tokens);
    sgllm__free(s->pen_counts);
    sgllm__free(s->work);
    sgllm__free(s->cand);
    sgllm__free(s);
}

sgllm_status sgllm_sampler_init(const sgllm_sampler_params *params, int32_t n_vocab, sgllm_sampler **out) {
    if (!out) return SGLLM_ERR_INVALID_ARGUMENT;
    *out = NULL;
    if (!params || params->struct_size < sizeof *params || n_vocab <= 0) return SGLLM_ERR_INVALID_ARGUMENT;
    const sgllm_sampler_params *p = params;
    if (!isfinite(p->temperature) || isnan(p->top_p) || isnan(p->min_p) || !isfinite(p->repeat_penalty) ||
        p->repeat_penalty <= 0 || !isfinite(p->frequency_penalty) || !isfinite(p->presence_penalty) ||
        p->penalty_last_n < 0)
        return SGLLM_ERR_INVALID_ARGUMENT;
    sgllm_sampler *s = (sgllm_sampler *)sgllm__calloc(1, sizeof *s);
    if (!s) return SGLLM_ERR_OUT_OF_MEMORY;
    s->params = *p;
    s->params.struct_size = sizeof s->params;
    s->n_vocab = n_vocab;
    size_t w = (size_t)p->penalty_last_n;
    s->window = (sgllm_token *)sgllm__calloc(w, sizeof(sgllm_token));
    s->pen_tokens = (sgllm_token *)sgllm__calloc(w, sizeof(sgllm_token));
    s->pen_counts = (int32_t *)sgllm__calloc(w, sizeof(int32_t));
    s->counts = (int32_t *)sgllm__calloc((size_t)n_vocab, sizeof(int32_t));
    s->work = (float *)sgllm__calloc((size_t)n_vocab, sizeof(float));
    s->cand = (sgllm__cand *)sgllm__calloc((size_t)n_vocab, sizeof(sgllm__cand));
    if (!s->window || !s->pen_tokens || !s->pen_counts || !s->counts || !s->work || !s->cand) {
        sgllm_sampler_free(s);
        return SGLLM_ERR_OUT_OF_MEMORY;
    }
    sgllm__rng_seed(&s->rng, p->seed);
    *out = s;
    return SGLLM_OK;
}

sgllm_token sgllm_sampler_sample(sgllm_sampler *s, const float *logits) {
    if (!s || !logits) return -1;
    if (s->params.temperature <= 0) return sgllm__argmax(sgllm__sampler_penalized(s, logits), s->n_vocab);
    const sgllm__cand *c;
    int64_t n = sgllm__sampler_candidates(s, logits, &c);
    // One uniform per non-greedy sample, even a forced one, keeps the stream aligned.
    if (n == 0) {
        (void)sgllm__rng_next(&s->rng);
        return sgllm__argmax(sgllm__sampler_penalized(s, logits), s->n_vocab);
    }
    return sgllm__sampler_draw(&s->rng, c, n);
}

void sgllm_sampler_accept(sgllm_sampler *s, sgllm_token token) {
    if (!s || token < 0 || token >= s->n_vocab) return;
    const int32_t cap = s->params.penalty_last_n;
    if (cap == 0) return;
    if (s->window_len == cap) { // evict the oldest
        s->counts[s->window[s->window_head]]--;
        s->window[s->window_head] = token;
        s->window_head = (s->window_head + 1) % cap;
    } else {
        s->window[(s->window_head + s->window_len++) % cap] = token;
    }
    s->counts[token]++;
}

void sgllm_sampler_reset(sgllm_sampler *s) {
    if (!s) return;
    for (int32_t i = 0; i < s->window_len; i++)
        s->counts[s->window[(s->window_head + i) % s->params.penalty_last_n]] = 0;
    s->window_len = 0;
    s->window_head = 0;
    sgllm__rng_seed(&s->rng, s->params.seed);
}

// --- 7. Model description ------------------------------------------------------------------
// A family is data: at load, GGUF metadata becomes one sgllm__layer descriptor per block
// (attention shape, window, RoPE, which norms and biases exist, activation) plus the weights
// it uses. The forward pass (section 8) walks the descriptors; adding a family touches only
// sgllm__families[] and sgllm__model_describe.

typedef enum sgllm__act { SGLLM__ACT_SILU, SGLLM__ACT_GELU_TANH } sgllm__act;

typedef struct sgllm__family {
    const char *arch;      // general.architecture
    bool rope_neox;        // rotate halves (i, i + d/2) instead of adjacent pairs (2i, 2i+1)
    bool qk_norm;          // per-head RMSNorm on q and k before RoPE
    bool qkv_bias;         // optional biases on q, k, v
    bool sandwich_norms;   // post-attention and post-FFN norms (Gemma 2/3)
    bool embd_scale;       // embeddings multiplied by sqrt(n_embd)
    int swa_period;        // every swa_period-th layer is full attention, others sliding (0: none)
    double swa_rope_theta; // RoPE base of sliding layers (0: same as full layers)
    sgllm__act act;
} sgllm__family;

static const sgllm__family sgllm__families[] = {
    {"llama", false, false, false, false, false, 0, 0, SGLLM__ACT_SILU},
    {"qwen2", true, false, true, false, false, 0, 0, SGLLM__ACT_SILU},
    {"qwen3", true, true, false, false, false, 0, 0, SGLLM__ACT_SILU},
    {"gemma3", true, true, false, true, true, 6, 10000.0, SGLLM__ACT_GELU_TANH},
};

typedef struct sgllm__layer {
    int32_t n_head, n_head_kv; // query heads, key/value heads (GQA: n_head % n_head_kv == 0)
    int32_t head_dim;          // key and value head width
    int32_t n_ff;              // MLP hidden width
    int32_t window;            // sliding window in tokens; 0 = full attention
    float rope_theta;
    float rope_scale;          // positions are multiplied by this (linear RoPE scaling)
    int32_t n_rot;             // rotated dims per head (<= head_dim)
    float attn_scale;          // multiplies q.k
    sgllm__mat wq;             // (n_head * head_dim, n_embd)
    sgllm__mat wk, wv;         // (n_head_kv * head_dim, n_embd)
    sgllm__mat wo;             // (n_embd, n_head * head_dim)
    sgllm__mat w_gate, w_up;   // (n_ff, n_embd)
    sgllm__mat w_down;         // (n_embd, n_ff)
    const float *attn_norm;    // (n_embd)
    const float *ffn_norm;     // (n_embd)
    const float *post_attn_norm, *post_ffn_norm; // (n_embd) or NULL
    const float *q_norm, *k_norm;                // (head_dim) or NULL
    const float *bq, *bk, *bv;                   // biases or NULL
} sgllm__layer;

struct sgllm_model {
    sgllm__diag diag;            // log settings; msg unused after load
    sgllm__gguf gguf;            // keeps the file mapped: weights point into it
    sgllm__vocab vocab;
    const sgllm__family *family;
    char arch[32];
    char *name;                  // general.name (owned)
    char *chat_template;         // tokenizer.chat_template (owned) or NULL
    int32_t n_embd, n_layer, n_vocab, n_ctx_train;
    float eps;                   // RMSNorm epsilon
    float embd_scale;            // 1 or sqrt(n_embd)
    float final_softcap;         // 0 = none
    sgllm__act act;
    bool rope_neox;
    sgllm__mat tok_embd;         // (n_vocab, n_embd)
    sgllm__mat output;           // (n_vocab, n_embd); tied to tok_embd when the file has none
    bool output_tied;            // output is tok_embd (one matrix on the device too)
    bool synthetic;              // built from a shape preset: the matrices have no host data and
                                 // are made on the device from synth_seed (section 8c)
    uint64_t synth_seed;
    const float *output_norm;    // (n_embd)
    sgllm__layer *layers;        // (n_layer)
    uint16_t *gelu_f16;          // (65536) GELU of every fp16 value, as fp16 (GELU families only)
    float **owned;               // stb_ds array of float buffers converted at load
    sgllm_backend backend;       // CPU or CUDA, chosen at load (section 8c)
    struct sgllm__gpu_model *gpu; // device weights when the backend is CUDA, else NULL
    char device_info[2048];      // the backend decision, as logged
};

// A weight matrix from the file: checks presence, rank and shape (cols, rows).
static sgllm_status sgllm__model_mat(sgllm_model *m, const char *name, int64_t cols, int64_t rows,
                                     bool optional, sgllm__mat *out) {
    memset(out, 0, sizeof *out);
    const sgllm__tensor *t = sgllm__gguf_tensor(&m->gguf, name);
    if (!t) return optional ? SGLLM_OK : sgllm__fail(&m->diag, SGLLM_ERR_FORMAT, "missing tensor '%s'", name);
    if (t->n_dims != 2 || t->ne[0] != cols || (rows > 0 && t->ne[1] != rows))
        return sgllm__fail(&m->diag, SGLLM_ERR_FORMAT,
                           "tensor '%s' has the wrong shape: {%lld, %lld, %lld} where {%lld, %lld} was expected",
                           name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)cols,
                           (long long)rows);
    switch (t->type) {
    case SGLLM__T_F32: case SGLLM__T_F16: case SGLLM__T_BF16: case SGLLM__T_Q4_0: case SGLLM__T_Q4_1:
    case SGLLM__T_Q5_0: case SGLLM__T_Q5_1: case SGLLM__T_Q8_0: case SGLLM__T_Q4_K: case SGLLM__T_Q5_K:
    case SGLLM__T_Q6_K: break;
    default:
        return sgllm__fail(&m->diag, SGLLM_ERR_UNSUPPORTED, "tensor '%s' has type %s, which sgllm cannot compute with",
                           name, sgllm__type_name(t->type));
    }
    out->type = t->type;
    out->cols = t->ne[0];
    out->rows = t->ne[1];
    out->data = t->data;
    out->row_bytes = (size_t)sgllm__row_bytes(t->type, (uint64_t)t->ne[0]);
    return SGLLM_OK;
}

// A 1-D vector (norm weight, bias) of length n as owned float32.
static sgllm_status sgllm__model_vec(sgllm_model *m, const char *name, int64_t n, bool optional, const float **out) {
    *out = NULL;
    const sgllm__tensor *t = sgllm__gguf_tensor(&m->gguf, name);
    if (!t) return optional ? SGLLM_OK : sgllm__fail(&m->diag, SGLLM_ERR_FORMAT, "missing tensor '%s'", name);
    if (t->n_dims != 1 || t->ne[0] != n)
        return sgllm__fail(&m->diag, SGLLM_ERR_FORMAT, "tensor '%s' has the wrong shape: {%lld} where {%lld} was expected",
                           name, (long long)t->ne[0], (long long)n);
    if (t->type != SGLLM__T_F32 && t->type != SGLLM__T_F16 && t->type != SGLLM__T_BF16)
        return sgllm__fail(&m->diag, SGLLM_ERR_UNSUPPORTED, "tensor '%s': type %s is not supported for a vector",
                           name, sgllm__type_name(t->type));
    float *v = (float *)sgllm__calloc((size_t)n, sizeof(float));
    if (!v) return sgllm__fail(&m->diag, SGLLM_ERR_OUT_OF_MEMORY, "out of memory loading '%s'", name);
    sgllm__dequant_row_ref(t->type, t->data, v, n);
    arrput(m->owned, v);
    *out = v;
    return SGLLM_OK;
}

// Reads `{arch}.key` as an integer, scalar or (for per-layer values) the array element il.
static bool sgllm__model_hp_int(const sgllm_model *m, const char *key, int32_t il, int64_t *out) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", m->arch, key);
    const sgllm__gguf_kv *kv = sgllm__gguf_find(&m->gguf, full);
    if (kv && kv->type == SGLLM__GGUF_ARRAY) {
        if (il < 0 || (uint64_t)il >= kv->arr_n) return false;
        if (kv->arr_type == SGLLM__GGUF_I32 || kv->arr_type == SGLLM__GGUF_U32) {
            uint32_t u;
            memcpy(&u, kv->data + 4 * (size_t)il, 4);
            *out = kv->arr_type == SGLLM__GGUF_I32 ? (int64_t)(int32_t)u : (int64_t)u;
            return true;
        }
        return false;
    }
    return sgllm__gguf_int(&m->gguf, full, out);
}

static bool sgllm__model_hp_float(const sgllm_model *m, const char *key, double *out) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", m->arch, key);
    return sgllm__gguf_float(&m->gguf, full, out);
}

// Checks an integer hyperparameter is present and in [lo, hi].
static sgllm_status sgllm__model_hp_req(sgllm_model *m, const char *key, int32_t il, int64_t lo, int64_t hi,
                                        int32_t *out) {
    int64_t v;
    if (!sgllm__model_hp_int(m, key, il, &v))
        return sgllm__fail(&m->diag, SGLLM_ERR_FORMAT, "missing or non-integer metadata '%s.%s'", m->arch, key);
    if (v < lo || v > hi)
        return sgllm__fail(&m->diag, SGLLM_ERR_FORMAT, "metadata '%s.%s' = %lld is out of range [%lld, %lld]", m->arch,
                           key, (long long)v, (long long)lo, (long long)hi);
    *out = (int32_t)v;
    return SGLLM_OK;
}

// Fills the hyperparameters and per-layer descriptors from the GGUF metadata and tensors.
static sgllm_status sgllm__model_describe(sgllm_model *m, sgllm_progress_fn progress, void *progress_user) {
    sgllm_status s;
    const sgllm__family *f = m->family;
    if ((s = sgllm__model_hp_req(m, "embedding_length", -1, 1, 1 << 16, &m->n_embd)) ||
        (s = sgllm__model_hp_req(m, "block_count", -1, 1, 1024, &m->n_layer)) ||
        (s = sgllm__model_hp_req(m, "context_length", -1, 1, INT32_MAX, &m->n_ctx_train)))
        return s;
    double eps = 1e-6, theta = 10000.0, softcap = 0, rope_factor = 1.0;
    if (!sgllm__model_hp_float(m, "attention.layer_norm_rms_epsilon", &eps) || !(eps > 0 && eps < 1))
        return sgllm__fail(&m->diag, SGLLM_ERR_FORMAT, "missing or bad '%s.attention.layer_norm_rms_epsilon'", m->arch);
    sgllm__model_hp_float(m, "rope.freq_base", &theta);
    sgllm__model_hp_float(m, "final_logit_softcapping", &softcap);
    sgllm__str rope_type;
    char key[96];
    snprintf(key, sizeof key, "%s.rope.scaling.type", m->arch);
    if (sgllm__gguf_string(&m->gguf, key, &rope_type) && !sgllm__str_eq(rope_type, "none")) {
        if (!sgllm__str_eq(rope_type, "linear"))
            return sgllm__fail(&m->diag, SGLLM_ERR_UNSUPPORTED, "RoPE scaling '%.*s' is not supported",
                               (int)rope_type.len, rope_type.ptr);
        sgllm__model_hp_float(m, "rope.scaling.factor", &rope_factor);
    }
    if (!(theta > 0) || !(softcap >= 0) || !(rope_factor >= 1))
        return sgllm__fail(&m->diag, SGLLM_ERR_FORMAT, "bad RoPE base or logit softcap in metadata");
    m->eps = (float)eps;
    m->final_softcap = (float)softcap;
    m->embd_scale = f->embd_scale ? sqrtf((float)m->n_embd) : 1.0f;
    m->act = f->act;
    m->rope_neox = f->rope_neox;

    if ((s = sgllm__model_mat(m, "token_embd.weight", m->n_embd, -1, false, &m->tok_embd))) return s;
    if (m->tok_embd.rows != m->vocab.n_tokens)
        return sgllm__fail(&m->diag, SGLLM_ERR_FORMAT, "token_embd.weight has %lld rows but the vocabulary has %d tokens",
                           (long long)m->tok_embd.rows, m->vocab.n_tokens);
    m->n_vocab = m->vocab.n_tokens;
    if ((s = sgllm__model_mat(m, "output.weight", m->n_embd, m->n_vocab, true, &m->output))) return s;
    if (!m->output.data) {
        m->output = m->tok_embd;
        m->output_tied = true;
    }
    if ((s = sgllm__model_vec(m, "output_norm.weight", m->n_embd, false, &m->output_norm))) return s;

    int32_t window = 0;
    if (f->swa_period && (s = sgllm__model_hp_req(m, "attention.sliding_window", -1, 1, INT32_MAX, &window))) return s;
    m->layers = (sgllm__layer *)sgllm__calloc((size_t)m->n_layer, sizeof(sgllm__layer));
    if (!m->layers) return sgllm__fail(&m->diag, SGLLM_ERR_OUT_OF_MEMORY, "out of memory");
    for (int32_t il = 0; il < m->n_layer; il++) {
        sgllm__layer *L = &m->layers[il];
        char nm[96];
#define SGLLM__NAME(suffix) (snprintf(nm, sizeof nm, "blk.%d." suffix, (int)il), nm)
        if ((s = sgllm__model_hp_req(m, "attention.head_count", il, 1, 4096, &L->n_head)) ||
            (s = sgllm__model_hp_req(m, "attention.head_count_kv", il, 1, L->n_head, &L->n_head_kv)) ||
            (s = sgllm__model_hp_req(m, "feed_forward_length", il, 1, 1 << 20, &L->n_ff)))
            return s;
        if (L->n_head % L->n_head_kv)
            return sgllm__fail(&m->diag, SGLLM_ERR_FORMAT, "layer %d: %d heads is not a multiple of %d kv heads", (int)il,
                               L->n_head, L->n_head_kv);
        int64_t hd = m->n_embd / L->n_head, hdv = hd, n_rot;
        if (sgllm__model_hp_int(m, "attention.key_length", -1, &hd)) sgllm__model_hp_int(m, "attention.value_length", -1, &hdv);
        if (hd != hdv || hd < 2 || hd > 1024 || (hd & 1))
            return sgllm__fail(&m->diag, SGLLM_ERR_UNSUPPORTED, "head dims key %lld / value %lld are not supported",
                               (long long)hd, (long long)hdv);
        L->head_dim = (int32_t)hd;
        n_rot = hd;
        sgllm__model_hp_int(m, "rope.dimension_count", -1, &n_rot);
        if (n_rot < 2 || n_rot > hd || (n_rot & 1))
            return sgllm__fail(&m->diag, SGLLM_ERR_FORMAT, "rope.dimension_count %lld does not fit head dim %lld",
                               (long long)n_rot, (long long)hd);
        L->n_rot = (int32_t)n_rot;
        bool sliding = f->swa_period && (il + 1) % f->swa_period != 0;
        L->window = sliding ? window : 0;
        L->rope_theta = (float)(sliding && f->swa_rope_theta > 0 ? f->swa_rope_theta : theta);
        L->rope_scale = sliding ? 1.0f : (float)(1.0 / rope_factor); // sliding layers are never scaled
        L->attn_scale = 1.0f / sqrtf((float)hd);
        int64_t qd = (int64_t)L->n_head * hd, kvd = (int64_t)L->n_head_kv * hd;
        if ((s = sgllm__model_vec(m, SGLLM__NAME("attn_norm.weight"), m->n_embd, false, &L->attn_norm)) ||
            (s = sgllm__model_mat(m, SGLLM__NAME("attn_q.weight"), m->n_embd, qd, false, &L->wq)) ||
            (s = sgllm__model_mat(m, SGLLM__NAME("attn_k.weight"), m->n_embd, kvd, false, &L->wk)) ||
            (s = sgllm__model_mat(m, SGLLM__NAME("attn_v.weight"), m->n_embd, kvd, false, &L->wv)) ||
            (s = sgllm__model_mat(m, SGLLM__NAME("attn_output.weight"), qd, m->n_embd, false, &L->wo)) ||
            (s = sgllm__model_vec(m, SGLLM__NAME("ffn_norm.weight"), m->n_embd, false, &L->ffn_norm)) ||
            (s = sgllm__model_mat(m, SGLLM__NAME("ffn_gate.weight"), m->n_embd, L->n_ff, false, &L->w_gate)) ||
            (s = sgllm__model_mat(m, SGLLM__NAME("ffn_up.weight"), m->n_embd, L->n_ff, false, &L->w_up)) ||
            (s = sgllm__model_mat(m, SGLLM__NAME("ffn_down.weight"), L->n_ff, m->n_embd, false, &L->w_down)))
            return s;
        if (f->qk_norm && ((s = sgllm__model_vec(m, SGLLM__NAME("attn_q_norm.weight"), hd, false, &L->q_norm)) ||
                           (s = sgllm__model_vec(m, SGLLM__NAME("attn_k_norm.weight"), hd, false, &L->k_norm))))
            return s;
        if (f->sandwich_norms &&
            ((s = sgllm__model_vec(m, SGLLM__NAME("post_attention_norm.weight"), m->n_embd, false, &L->post_attn_norm)) ||
             (s = sgllm__model_vec(m, SGLLM__NAME("post_ffw_norm.weight"), m->n_embd, false, &L->post_ffn_norm))))
            return s;
        if (f->qkv_bias && ((s = sgllm__model_vec(m, SGLLM__NAME("attn_q.bias"), qd, true, &L->bq)) ||
                            (s = sgllm__model_vec(m, SGLLM__NAME("attn_k.bias"), kvd, true, &L->bk)) ||
                            (s = sgllm__model_vec(m, SGLLM__NAME("attn_v.bias"), kvd, true, &L->bv))))
            return s;
#undef SGLLM__NAME
        if (progress && progress(progress_user, 0.2f + 0.8f * (float)(il + 1) / (float)m->n_layer))
            return sgllm__fail(&m->diag, SGLLM_ERR_CANCELLED, "load cancelled by the progress callback");
    }
    return SGLLM_OK;
}

// Synthetic models for benchmarks (sgllm_model_load_synthetic): the shapes of well-known
// models, from their published configurations, described with the same sgllm__layer
// descriptors as a file; the matrices get a type and a shape but no host data (the CUDA
// backend fills them on the device from a seed), the norm weights are small host vectors.
typedef struct sgllm__preset {
    const char *name;
    const char *arch; // a family of sgllm__families
    int32_t n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_ctx_train;
    int32_t window;   // sliding window of the family's sliding layers (0: none)
    double rope_theta, eps;
    bool tied;        // the output projection is the embedding matrix
} sgllm__preset;

static const sgllm__preset sgllm__presets[] = {
    {"llama3-8b", "llama", 4096, 32, 32, 8, 128, 14336, 128256, 8192, 0, 500000.0, 1e-5, false},
    {"qwen3-8b", "qwen3", 4096, 36, 32, 8, 128, 12288, 151936, 40960, 0, 1000000.0, 1e-6, false},
    {"gemma3-27b", "gemma3", 5376, 62, 32, 16, 128, 21504, 262144, 131072, 1024, 1000000.0, 1e-6, true},
    {"gemma3-270m", "gemma3", 640, 18, 4, 1, 256, 2048, 262144, 32768, 512, 1000000.0, 1e-6, true},
    {"smollm2-135m", "llama", 576, 30, 9, 3, 64, 1536, 49152, 8192, 0, 100000.0, 1e-5, true},
};

// A synthetic model's weight types: one type for every matrix, or "q4_k_m", the mix of
// llama.cpp's Q4_K_M files (Q4_K; Q6_K for the output and for attn_v and ffn_down of every
// other layer), which the Gemma 3 270M file has. A type of 256-value blocks falls back, for
// rows that are not whole blocks (the small models' 576- and 640-wide rows), to the type
// llama.cpp's quantizer picks instead: Q5_0 for Q4_K, Q8_0 for Q6_K.
static const struct {
    const char *name;
    uint32_t type;
    bool k_mix; // Q4_K_M's mix
} sgllm__synth_types[] = {{"bf16", SGLLM__T_BF16, false}, {"q8_0", SGLLM__T_Q8_0, false},
                          {"q4_1", SGLLM__T_Q4_1, false}, {"q4_k", SGLLM__T_Q4_K, false},
                          {"q4_k_m", SGLLM__T_Q4_K, true}};

static const sgllm__preset *sgllm__preset_find(const char *name) {
    for (size_t i = 0; name && i < sizeof sgllm__presets / sizeof sgllm__presets[0]; i++)
        if (!strcmp(name, sgllm__presets[i].name)) return &sgllm__presets[i];
    return NULL;
}

// The weight type named by a synthetic model's type string (k_mix: Q4_K_M's mix), or
// SGLLM__T_COUNT.
static uint32_t sgllm__synth_type(const char *name, bool *k_mix) {
    for (size_t i = 0; name && i < sizeof sgllm__synth_types / sizeof sgllm__synth_types[0]; i++)
        if (!strcmp(name, sgllm__synth_types[i].name)) {
            *k_mix = sgllm__synth_types[i].k_mix;
            return sgllm__synth_types[i].type;
        }
    return SGLLM__T_COUNT;
}

// A matrix of a synthetic model: shape and type, no data (rows that are not whole blocks of
// the type take its fallback, see sgllm__synth_types).
static void sgllm__synth_mat(uint32_t type, int64_t rows, int64_t cols, sgllm__mat *out) {
    if (cols % sgllm__types[type].block) type = type == SGLLM__T_Q4_K ? SGLLM__T_Q5_0 : SGLLM__T_Q8_0;
    memset(out, 0, sizeof *out);
    out->type = type;
    out->rows = rows;
    out->cols = cols;
    out->row_bytes = (size_t)sgllm__row_bytes(type, (uint64_t)cols);
}

// A norm weight (n) near 1, owned by the model; rng is a splitmix64 state.
static sgllm_status sgllm__synth_vec(sgllm_model *m, int64_t n, uint64_t *rng, const float **out) {
    float *v = (float *)sgllm__malloc((size_t)n * sizeof(float));
    if (!v) return sgllm__fail(&m->diag, SGLLM_ERR_OUT_OF_MEMORY, "out of memory");
    for (int64_t i = 0; i < n; i++) {
        uint64_t z = (*rng += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        v[i] = 0.9f + 0.2f * (float)(z >> 40) / (float)(1 << 24);
    }
    arrput(m->owned, v);
    *out = v;
    return SGLLM_OK;
}

// Fills m (zeroed, diag set) from preset p: hyperparameters, descriptors, matrices of type
// wtype (k_mix: Q4_K_M's mix) without data, norm weights from seed, and a vocabulary of n_vocab empty pieces and no
// tokenizer (kind 0: sgllm_tokenize refuses it).
static sgllm_status sgllm__model_describe_preset(sgllm_model *m, const sgllm__preset *p, uint32_t wtype, bool k_mix,
                                                  uint64_t seed) {
    for (size_t i = 0; i < sizeof sgllm__families / sizeof sgllm__families[0]; i++)
        if (!strcmp(p->arch, sgllm__families[i].arch)) m->family = &sgllm__families[i];
    const sgllm__family *f = m->family;
    snprintf(m->arch, sizeof m->arch, "%s", p->arch);
    m->synthetic = true;
    m->synth_seed = seed;
    m->n_embd = p->n_embd;
    m->n_layer = p->n_layer;
    m->n_vocab = p->n_vocab;
    m->n_ctx_train = p->n_ctx_train;
    m->eps = (float)p->eps;
    m->embd_scale = f->embd_scale ? sqrtf((float)m->n_embd) : 1.0f;
    m->act = f->act;
    m->rope_neox = f->rope_neox;
    sgllm__vocab *v = &m->vocab;
    v->n_tokens = p->n_vocab;
    v->bos = v->eos = v->eot = v->unk = v->pad = -1;
    v->attr = (uint8_t *)sgllm__calloc((size_t)p->n_vocab, 1);
    v->piece_off = (int64_t *)sgllm__calloc((size_t)p->n_vocab + 1, sizeof(int64_t));
    v->pieces = (char *)sgllm__calloc(1, 1);
    m->layers = (sgllm__layer *)sgllm__calloc((size_t)m->n_layer, sizeof(sgllm__layer));
    if (!v->attr || !v->piece_off || !v->pieces || !m->layers)
        return sgllm__fail(&m->diag, SGLLM_ERR_OUT_OF_MEMORY, "out of memory");
    int64_t E = m->n_embd;
    uint64_t rng = seed;
    sgllm_status s;
    // a tied matrix takes the output's type
    sgllm__synth_mat(k_mix && p->tied ? SGLLM__T_Q6_K : wtype, m->n_vocab, E, &m->tok_embd);
    if (p->tied) {
        m->output = m->tok_embd;
        m->output_tied = true;
    } else {
        sgllm__synth_mat(k_mix ? SGLLM__T_Q6_K : wtype, m->n_vocab, E, &m->output);
    }
    if ((s = sgllm__synth_vec(m, E, &rng, &m->output_norm))) return s;
    for (int32_t il = 0; il < m->n_layer; il++) {
        sgllm__layer *L = &m->layers[il];
        L->n_head = p->n_head;
        L->n_head_kv = p->n_head_kv;
        L->head_dim = L->n_rot = p->head_dim;
        L->n_ff = p->n_ff;
        bool sliding = f->swa_period && (il + 1) % f->swa_period != 0;
        L->window = sliding ? p->window : 0;
        L->rope_theta = (float)(sliding && f->swa_rope_theta > 0 ? f->swa_rope_theta : p->rope_theta);
        L->rope_scale = 1.0f;
        L->attn_scale = 1.0f / sqrtf((float)p->head_dim);
        int64_t qd = (int64_t)p->n_head * p->head_dim, kvd = (int64_t)p->n_head_kv * p->head_dim;
        sgllm__synth_mat(wtype, qd, E, &L->wq);
        sgllm__synth_mat(wtype, kvd, E, &L->wk);
        uint32_t more_bits = k_mix && il % 2 == 0 ? SGLLM__T_Q6_K : wtype; // Q4_K_M's attn_v, ffn_down
        sgllm__synth_mat(more_bits, kvd, E, &L->wv);
        sgllm__synth_mat(wtype, E, qd, &L->wo);
        sgllm__synth_mat(wtype, p->n_ff, E, &L->w_gate);
        sgllm__synth_mat(wtype, p->n_ff, E, &L->w_up);
        sgllm__synth_mat(more_bits, E, p->n_ff, &L->w_down);
        if ((s = sgllm__synth_vec(m, E, &rng, &L->attn_norm)) || (s = sgllm__synth_vec(m, E, &rng, &L->ffn_norm)))
            return s;
        if (f->qk_norm && ((s = sgllm__synth_vec(m, p->head_dim, &rng, &L->q_norm)) ||
                           (s = sgllm__synth_vec(m, p->head_dim, &rng, &L->k_norm))))
            return s;
        if (f->sandwich_norms && ((s = sgllm__synth_vec(m, E, &rng, &L->post_attn_norm)) ||
                                  (s = sgllm__synth_vec(m, E, &rng, &L->post_ffn_norm))))
            return s;
    }
    return SGLLM_OK;
}


// --- 8. CPU backend ------------------------------------------------------------------------
// The reference forward pass. One call runs n tokens of one sequence at positions
// pos0..pos0+n-1 through every layer descriptor: matrix products go through sgllm__matmul
// (section 3) on the context's thread pool, attention runs one task per (token, head) over
// a KV cache stored as fp16 (as llama.cpp does by default), the rest is plain loops.
// A sliding-window layer keeps only window + n_batch - 1 rows, a ring (position p in row
// p % rows): enough for every query of a batch to see its window after the whole batch is
// written. Rows of overwritten positions are gone, so a rewind further back than the ring
// reaches makes the next evaluate recompute the sequence from its tokens
// (sgllm__cpu_kv_intact, section 9).

typedef struct sgllm__cpu {
    const sgllm_model *m;
    sgllm__pool *pool;
    int32_t n_ctx, n_batch;
    uint16_t **k_cache, **v_cache; // (n_layer) x (kv_rows[il], n_head_kv * head_dim) fp16
    int32_t *kv_rows;              // (n_layer) rows of each layer's cache: n_ctx, or a window's ring
    int32_t kv_end;                // highest end (pos0 + n) of a forward since the cache was cleared: a
                                   // ring layer has lost the rows of positions below kv_end - kv_rows[il]
    float *x;                      // (n_batch, n_embd) residual stream
    float *h;                      // (n_batch, n_embd) normalized input of a block
    float *q;                      // (n_batch, max n_head * head_dim)
    float *k, *v;                  // (n_batch, max n_head_kv * head_dim)
    float *att;                    // (n_batch, max n_head * head_dim) attention output
    float *o;                      // (n_batch, n_embd) block output
    float *g, *u;                  // (n_batch, max n_ff)
    float *att_work;               // (n_threads, n_ctx + 2 * max head_dim) per-thread scores, output, q
    void *mm_scratch;              // quantized activations for sgllm__matmul
} sgllm__cpu;

static void sgllm__cpu_free(sgllm__cpu *c) {
    if (!c) return;
    if (c->k_cache)
        for (int32_t il = 0; il < c->m->n_layer; il++) {
            sgllm__free(c->k_cache[il]);
            sgllm__free(c->v_cache[il]);
        }
    sgllm__free(c->k_cache);
    sgllm__free(c->v_cache);
    sgllm__free(c->kv_rows);
    float *bufs[] = {c->x, c->h, c->q, c->k, c->v, c->att, c->o, c->g, c->u, c->att_work};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) sgllm__free(bufs[i]);
    sgllm__free(c->mm_scratch);
    sgllm__pool_free(c->pool);
    memset(c, 0, sizeof *c);
}

static sgllm_status sgllm__cpu_init(sgllm__cpu *c, const sgllm_model *m, int32_t n_ctx, int32_t n_batch,
                                    int n_threads, sgllm__diag *d) {
    memset(c, 0, sizeof *c);
    c->m = m;
    c->n_ctx = n_ctx;
    c->n_batch = n_batch;
    int64_t qd = 0, kvd = 0, ff = 0, hd = 0;
    size_t mm = sgllm__matmul_scratch_bytes(&m->output, n_batch);
    for (int32_t il = 0; il < m->n_layer; il++) {
        const sgllm__layer *L = &m->layers[il];
        qd = qd > (int64_t)L->n_head * L->head_dim ? qd : (int64_t)L->n_head * L->head_dim;
        kvd = kvd > (int64_t)L->n_head_kv * L->head_dim ? kvd : (int64_t)L->n_head_kv * L->head_dim;
        ff = ff > L->n_ff ? ff : L->n_ff;
        hd = hd > L->head_dim ? hd : L->head_dim;
        const sgllm__mat *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < 7; i++) {
            size_t b = sgllm__matmul_scratch_bytes(mats[i], n_batch);
            mm = mm > b ? mm : b;
        }
    }
    c->pool = sgllm__pool_create(n_threads);
    c->k_cache = (uint16_t **)sgllm__calloc((size_t)m->n_layer, sizeof(uint16_t *));
    c->v_cache = (uint16_t **)sgllm__calloc((size_t)m->n_layer, sizeof(uint16_t *));
    c->kv_rows = (int32_t *)sgllm__calloc((size_t)m->n_layer, sizeof(int32_t));
    bool ok = c->pool && c->k_cache && c->v_cache && c->kv_rows;
    for (int32_t il = 0; ok && il < m->n_layer; il++) {
        const sgllm__layer *L = &m->layers[il];
        size_t row = (size_t)L->n_head_kv * (size_t)L->head_dim;
        int64_t ring = L->window > 0 ? (int64_t)L->window + n_batch - 1 : n_ctx;
        c->kv_rows[il] = (int32_t)(ring < n_ctx ? ring : n_ctx);
        ok = (c->k_cache[il] = (uint16_t *)sgllm__calloc((size_t)c->kv_rows[il] * row, 2)) &&
             (c->v_cache[il] = (uint16_t *)sgllm__calloc((size_t)c->kv_rows[il] * row, 2));
    }
    size_t B = (size_t)n_batch;
    ok = ok && (c->x = (float *)sgllm__calloc(B * (size_t)m->n_embd, 4)) &&
         (c->h = (float *)sgllm__calloc(B * (size_t)m->n_embd, 4)) && (c->q = (float *)sgllm__calloc(B * (size_t)qd, 4)) &&
         (c->k = (float *)sgllm__calloc(B * (size_t)kvd, 4)) && (c->v = (float *)sgllm__calloc(B * (size_t)kvd, 4)) &&
         (c->att = (float *)sgllm__calloc(B * (size_t)qd, 4)) &&
         (c->o = (float *)sgllm__calloc(B * (size_t)m->n_embd, 4)) &&
         (c->g = (float *)sgllm__calloc(B * (size_t)ff, 4)) && (c->u = (float *)sgllm__calloc(B * (size_t)ff, 4)) &&
         (c->att_work = (float *)sgllm__calloc((size_t)c->pool->n_threads * ((size_t)n_ctx + 2 * (size_t)hd), 4)) &&
         (c->mm_scratch = sgllm__malloc(mm));
    if (!ok) {
        sgllm__cpu_free(c);
        return sgllm__fail(d, SGLLM_ERR_OUT_OF_MEMORY, "out of memory creating a context of %d tokens", (int)n_ctx);
    }
    return SGLLM_OK;
}

// y = x / sqrt(mean(x^2) + eps) * w, for n rows of width dim (w may be NULL: no weight).
static void sgllm__rmsnorm(float *y, const float *x, const float *w, int64_t rows, int64_t dim, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float *yr = y + r * dim;
        double ss = 0;
        for (int64_t i = 0; i < dim; i++) ss += (double)xr[i] * xr[i];
        float scale = (float)(1.0 / sqrt(ss / (double)dim + eps));
        for (int64_t i = 0; i < dim; i++) yr[i] = xr[i] * scale * (w ? w[i] : 1.0f);
    }
}

// Rotates the first n_rot dims of each head of one token at position pos.
static void sgllm__rope(float *x, int32_t n_heads, int32_t head_dim, int32_t n_rot, float pos, float theta_base,
                        bool neox) {
    int32_t half = n_rot / 2;
    for (int32_t i = 0; i < half; i++) {
        float theta = pos * powf(theta_base, -2.0f * (float)i / (float)n_rot);
        float cs = cosf(theta), sn = sinf(theta);
        for (int32_t hh = 0; hh < n_heads; hh++) {
            float *p = x + (int64_t)hh * head_dim;
            int32_t a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
            float x0 = p[a], x1 = p[b];
            p[a] = x0 * cs - x1 * sn;
            p[b] = x0 * sn + x1 * cs;
        }
    }
}

// Rounds through fp16 and back.
static float sgllm__fp16_round(float x) { return sgllm__fp16_to_f32(sgllm__f32_to_fp16(x)); }

// GELU with the tanh approximation, evaluated as llama.cpp's CPU backend does (its golden
// outputs are our reference): the input and the result pass through fp16 (ggml looks the
// value up in an fp16 table), and |x| >= 10 short-cuts to 0 or x.
static float sgllm__gelu_tanh(float x) {
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x;
    float h = sgllm__fp16_round(x);
    return sgllm__fp16_round(0.5f * h * (1.0f + tanhf(0.7978845608028654f * h * (1.0f + 0.044715f * h * h))));
}
static float sgllm__silu(float x) { return x / (1.0f + expf(-x)); }

// The GELU of every fp16 input, built once per model (sgllm__gelu_tanh rounds its input to
// fp16 anyway, so a table is exact). NULL on allocation failure.
static uint16_t *sgllm__gelu_table(void) {
    uint16_t *t = (uint16_t *)sgllm__calloc(65536, sizeof(uint16_t));
    if (t)
        for (uint32_t i = 0; i < 65536; i++) t[i] = sgllm__f32_to_fp16(sgllm__gelu_tanh(sgllm__fp16_to_f32((uint16_t)i)));
    return t;
}

// g = gelu(g) * u through the table (same values as sgllm__gelu_tanh).
static void sgllm__gelu_mul_ref(const uint16_t *tbl, float *g, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float x = g[i];
        float y = x <= -10.0f ? 0.0f : x >= 10.0f ? x : sgllm__fp16_to_f32(tbl[sgllm__f32_to_fp16(x)]);
        g[i] = y * u[i];
    }
}
#if SGLLM__X86
__attribute__((target("avx2,fma,f16c"))) static void sgllm__gelu_mul_avx2(const uint16_t *tbl, float *g, const float *u,
                                                                        int64_t n) {
    int64_t i = 0;
    const __m256 lo = _mm256_set1_ps(-10.0f), hi = _mm256_set1_ps(10.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i);
        uint16_t h[8], y16[8];
        _mm_storeu_si128((__m128i *)h, _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
        for (int k = 0; k < 8; k++) y16[k] = tbl[h[k]];
        __m256 y = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)y16));
        y = _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, hi, _CMP_GE_OQ));
        y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LE_OQ));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(y, _mm256_loadu_ps(u + i)));
    }
    sgllm__gelu_mul_ref(tbl, g + i, u + i, n - i);
}
#endif
static void sgllm__gelu_mul(const uint16_t *tbl, float *g, const float *u, int64_t n) {
#if SGLLM__X86
    if (sgllm__use_avx2()) {
        sgllm__gelu_mul_avx2(tbl, g, u, n);
        return;
    }
#endif
    sgllm__gelu_mul_ref(tbl, g, u, n);
}

// fp16 rows in attention and the KV cache: conversions, dot products and axpy, with F16C +
// FMA where the processor has them (the same rounding either way: IEEE round to nearest even).
static void sgllm__f16_from_f32_ref(const float *x, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = sgllm__f32_to_fp16(x[i]);
}
static float sgllm__dot_f16_ref(const uint16_t *k, const float *q, int32_t n) {
    float s = 0;
    for (int32_t i = 0; i < n; i++) s += sgllm__fp16_to_f32(k[i]) * q[i];
    return s;
}
static void sgllm__axpy_f16_ref(float *y, float a, const uint16_t *x, int32_t n) {
    for (int32_t i = 0; i < n; i++) y[i] += a * sgllm__fp16_to_f32(x[i]);
}
#if SGLLM__X86
__attribute__((target("avx2,fma,f16c"))) static void sgllm__f16_from_f32_avx2(const float *x, uint16_t *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    sgllm__f16_from_f32_ref(x + i, y + i, n - i);
}
// Rounds the largest multiple of 8 leading values; returns how many it did.
__attribute__((target("avx2,fma,f16c"))) static int64_t sgllm__f16_round_row_avx2(float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT)));
    return i;
}
__attribute__((target("avx2,fma,f16c"))) static float sgllm__dot_f16_avx2(const uint16_t *k, const float *q, int32_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + i))), _mm256_loadu_ps(q + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + i + 8))), _mm256_loadu_ps(q + i + 8), a1);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + i))), _mm256_loadu_ps(q + i), a0);
    __m256 a = _mm256_add_ps(a0, a1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h) + sgllm__dot_f16_ref(k + i, q + i, n - i);
}
__attribute__((target("avx2,fma,f16c"))) static void sgllm__axpy_f16_avx2(float *y, float a, const uint16_t *x, int32_t n) {
    __m256 va = _mm256_set1_ps(a);
    int32_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))),
                                                _mm256_loadu_ps(y + i)));
    sgllm__axpy_f16_ref(y + i, a, x + i, n - i);
}
#endif
// x = fp16(x) in place.
static void sgllm__f16_round_row(float *x, int64_t n) {
    int64_t i = 0;
#if SGLLM__X86
    if (sgllm__use_avx2()) i = sgllm__f16_round_row_avx2(x, n);
#endif
    for (; i < n; i++) x[i] = sgllm__fp16_round(x[i]);
}

static void sgllm__f16_from_f32(const float *x, uint16_t *y, int64_t n) {
#if SGLLM__X86
    if (sgllm__use_avx2()) {
        sgllm__f16_from_f32_avx2(x, y, n);
        return;
    }
#endif
    sgllm__f16_from_f32_ref(x, y, n);
}

// One attention task: query token i, head h. Scores over the visible keys of the cache,
// softmax in float32, weighted sum of values. The rounding follows llama.cpp's default CPU
// attention (our reference): q meets the fp16 keys as fp16, and the probabilities meet the
// fp16 values as fp16, with float accumulation.
typedef struct sgllm__att_job {
    sgllm__cpu *c;
    const sgllm__layer *L;
    int32_t il, pos0;
} sgllm__att_job;

static void sgllm__att_task(void *arg, int64_t task, int thread) {
    const sgllm__att_job *j = (const sgllm__att_job *)arg;
    sgllm__cpu *c = j->c;
    const sgllm__layer *L = j->L;
    int32_t hd = L->head_dim, i = (int32_t)(task / L->n_head), h = (int32_t)(task % L->n_head);
    int32_t kvh = h / (L->n_head / L->n_head_kv), pos = j->pos0 + i;
    int64_t kv_stride = (int64_t)L->n_head_kv * hd;
    int32_t lo = L->window ? (pos - L->window + 1 > 0 ? pos - L->window + 1 : 0) : 0;
    float *scores = c->att_work + (size_t)thread * ((size_t)c->n_ctx + 2 * (size_t)hd);
    float *out = scores + c->n_ctx, *q = out + hd;
    const float *qsrc = c->q + (int64_t)i * L->n_head * hd + (int64_t)h * hd;
    memcpy(q, qsrc, (size_t)hd * sizeof(float));
    sgllm__f16_round_row(q, hd);
    const uint16_t *K = c->k_cache[j->il] + (int64_t)kvh * hd, *V = c->v_cache[j->il] + (int64_t)kvh * hd;
    const int32_t rows = c->kv_rows[j->il]; // row of position p: p % rows (p itself without a ring)
#if SGLLM__X86
    bool avx2 = sgllm__use_avx2();
#define SGLLM__DOT_F16(k, x, n) (avx2 ? sgllm__dot_f16_avx2(k, x, n) : sgllm__dot_f16_ref(k, x, n))
#define SGLLM__AXPY_F16(y, a, x, n) (avx2 ? sgllm__axpy_f16_avx2(y, a, x, n) : sgllm__axpy_f16_ref(y, a, x, n))
#else
#define SGLLM__DOT_F16(k, x, n) sgllm__dot_f16_ref(k, x, n)
#define SGLLM__AXPY_F16(y, a, x, n) sgllm__axpy_f16_ref(y, a, x, n)
#endif
    float mx = -INFINITY;
    for (int32_t p = lo, r = lo % rows; p <= pos; p++, r = r + 1 == rows ? 0 : r + 1) {
        float s = SGLLM__DOT_F16(K + (int64_t)r * kv_stride, q, hd) * L->attn_scale;
        scores[p - lo] = s;
        mx = s > mx ? s : mx;
    }
    double sum = 0;
    int32_t n_keys = pos - lo + 1;
    for (int32_t p = 0; p < n_keys; p++) sum += (scores[p] = expf(scores[p] - mx));
    float inv = (float)(1.0 / sum);
    for (int32_t p = 0; p < n_keys; p++) scores[p] *= inv;
    sgllm__f16_round_row(scores, n_keys);
    memset(out, 0, (size_t)hd * sizeof(float));
    for (int32_t p = lo, r = lo % rows; p <= pos; p++, r = r + 1 == rows ? 0 : r + 1)
        SGLLM__AXPY_F16(out, scores[p - lo], V + (int64_t)r * kv_stride, hd);
#undef SGLLM__DOT_F16
#undef SGLLM__AXPY_F16
    memcpy(c->att + (int64_t)i * L->n_head * hd + (int64_t)h * hd, out, (size_t)hd * sizeof(float));
}

// Runs n tokens (n <= n_batch) at positions pos0.. (pos0 + n <= n_ctx). For every token i with
// want[i] set (want NULL: the last token), writes a row of n_vocab logits to logits, in order.
static void sgllm__cpu_forward(sgllm__cpu *c, const int32_t *tokens, int32_t n, int32_t pos0, const uint8_t *want,
                               float *logits) {
    const sgllm_model *m = c->m;
    int64_t E = m->n_embd;
    for (int32_t i = 0; i < n; i++) {
        const sgllm__mat *te = &m->tok_embd;
        sgllm__dequant_row(te->type, te->data + (size_t)tokens[i] * te->row_bytes, c->x + i * E, E);
        if (m->embd_scale != 1.0f)
            for (int64_t e = 0; e < E; e++) c->x[i * E + e] *= m->embd_scale;
    }
    for (int32_t il = 0; il < m->n_layer; il++) {
        const sgllm__layer *L = &m->layers[il];
        int32_t hd = L->head_dim;
        int64_t qd = (int64_t)L->n_head * hd, kvd = (int64_t)L->n_head_kv * hd;
        // attention block: projections, optional biases and q/k norms, RoPE, cache write
        sgllm__rmsnorm(c->h, c->x, L->attn_norm, n, E, m->eps);
        sgllm__matmul(c->pool, &L->wq, c->h, n, c->q, c->mm_scratch);
        sgllm__matmul(c->pool, &L->wk, c->h, n, c->k, c->mm_scratch);
        sgllm__matmul(c->pool, &L->wv, c->h, n, c->v, c->mm_scratch);
        for (int32_t i = 0; i < n; i++) {
            float *q = c->q + i * qd, *k = c->k + i * kvd, *v = c->v + i * kvd;
            if (L->bq)
                for (int64_t e = 0; e < qd; e++) q[e] += L->bq[e];
            if (L->bk)
                for (int64_t e = 0; e < kvd; e++) k[e] += L->bk[e];
            if (L->bv)
                for (int64_t e = 0; e < kvd; e++) v[e] += L->bv[e];
            if (L->q_norm) sgllm__rmsnorm(q, q, L->q_norm, L->n_head, hd, m->eps);
            if (L->k_norm) sgllm__rmsnorm(k, k, L->k_norm, L->n_head_kv, hd, m->eps);
            float p = (float)(pos0 + i) * L->rope_scale;
            sgllm__rope(q, L->n_head, hd, L->n_rot, p, L->rope_theta, m->rope_neox);
            sgllm__rope(k, L->n_head_kv, hd, L->n_rot, p, L->rope_theta, m->rope_neox);
            int64_t row = (pos0 + i) % c->kv_rows[il];
            sgllm__f16_from_f32(k, c->k_cache[il] + row * kvd, kvd);
            sgllm__f16_from_f32(v, c->v_cache[il] + row * kvd, kvd);
        }
        sgllm__att_job job = {c, L, il, pos0};
        sgllm__pool_run(c->pool, (int64_t)n * L->n_head, sgllm__att_task, &job);
        sgllm__matmul(c->pool, &L->wo, c->att, n, c->o, c->mm_scratch);
        if (L->post_attn_norm) sgllm__rmsnorm(c->o, c->o, L->post_attn_norm, n, E, m->eps);
        for (int64_t e = 0; e < n * E; e++) c->x[e] += c->o[e];
        // MLP block: down(act(gate(h)) * up(h))
        sgllm__rmsnorm(c->h, c->x, L->ffn_norm, n, E, m->eps);
        sgllm__matmul(c->pool, &L->w_gate, c->h, n, c->g, c->mm_scratch);
        sgllm__matmul(c->pool, &L->w_up, c->h, n, c->u, c->mm_scratch);
        int64_t nf = (int64_t)n * L->n_ff;
        if (m->act == SGLLM__ACT_GELU_TANH)
            sgllm__gelu_mul(m->gelu_f16, c->g, c->u, nf);
        else
            for (int64_t e = 0; e < nf; e++) c->g[e] = sgllm__silu(c->g[e]) * c->u[e];
        sgllm__matmul(c->pool, &L->w_down, c->g, n, c->o, c->mm_scratch);
        if (L->post_ffn_norm) sgllm__rmsnorm(c->o, c->o, L->post_ffn_norm, n, E, m->eps);
        for (int64_t e = 0; e < n * E; e++) c->x[e] += c->o[e];
    }
    if (pos0 + n > c->kv_end) c->kv_end = pos0 + n; // the ring layers' rows of earlier positions are overwritten
    // final norm of the selected rows only, then the vocabulary projection
    int32_t n_out = 0;
    for (int32_t i = 0; i < n; i++)
        if (want ? want[i] : i == n - 1) sgllm__rmsnorm(c->h + (int64_t)n_out++ * E, c->x + i * E, m->output_norm, 1, E, m->eps);
    if (!n_out) return;
    sgllm__matmul(c->pool, &m->output, c->h, n_out, logits, c->mm_scratch);
    if (m->final_softcap > 0) {
        float cap = m->final_softcap;
        for (int64_t e = 0; e < (int64_t)n_out * m->n_vocab; e++) logits[e] = cap * tanhf(logits[e] / cap);
    }
}

// Whether the cache still holds every row a token at position pos needs from positions
// below it (every window layer's last window - 1 positions).
static bool sgllm__cpu_kv_intact(const sgllm__cpu *c, int32_t pos) {
    for (int32_t il = 0; il < c->m->n_layer; il++) {
        int32_t w = c->m->layers[il].window, need = w > 0 && pos - w + 1 > 0 ? pos - w + 1 : 0;
        if (w > 0 && need < pos && need < c->kv_end - c->kv_rows[il]) return false;
    }
    return true;
}

// Forgets every position (the next forward starts at position 0).
static void sgllm__cpu_kv_clear(sgllm__cpu *c) { c->kv_end = 0; }

// --- 8b. Architecture dispatch -------------------------------------------------------------
// Which kernel variants and block sizes the CUDA backend uses on a device. A compiled-in table
// has one row per architecture, keyed by compute capability (8.0, 8.6, 8.9, 9.0, 10.x, 12.x);
// the row is fitted to the device (shared memory per block, SM count) and may then be
// overridden by a JSON file configs/<device name, spaces as _>.json. Plain C without CUDA, so
// tests check the selection on fabricated device properties. The result travels to
// sgllm_cuda.cu as an sgllm__cuda_dispatch (declared in the internal section of sgllm.h).
// The table's numbers are starting points (sglang's choices where it has one, see
// ../shared/spec/sglang-kernels.md); measured files under configs/ replace them per device.

#define SGLLM_INTERNAL
#include "sgllm.h" // again: this time for its internal section only

typedef struct sgllm__dispatch_row {
    int major, minor;       // compute capability; minor -1 matches any minor of major
    sgllm__cuda_dispatch d; // row name and values; sm_count is filled from the device
} sgllm__dispatch_row;

// Fields: row, sm_count, matvec warps per block, matvec warps per SM, matvec max batch, decode max splits, decode min keys
// per split, decode block n, prefill block m and n by head dim (<=128, <=256, >256), prefill
// warps (head dim <= 64, > 64), fewest tokens for the prefill attention kernel (below it the
// split-KV decode kernel fills the GPU better), qk-norm per-head threshold, norm threads,
// matvec int8 activations (3, the wide-load kernel, measured faster on the H100 only; 1 elsewhere),
// the wide-load kernel's resident warps per SM (16 on the H100: fewer, longer-lived blocks stream
// faster there, while the float kernel keeps 32), programmatic dependent launch (griddepcontrol:
// sm90 and newer only), activation quantization inside the wide kernel up to cols x tokens (0
// everywhere: on the H100 the separate launch, overlapped by PDL, was faster for every
// small-model shape; docs/PERF.md), the wide kernel's smallest row word (8 on the H100, where
// 8-byte loads beat the other kernels; 16 elsewhere, unmeasured), decode attention's merge of
// its splits (2 on sm90, where the split blocks of a head group merge as a thread block cluster,
// measured fastest on the H100; 1, a second kernel, elsewhere: unmeasured there; merging in the
// last split block to finish was slower on the H100), the wide kernel's resident warps per SM for
// the 4-bit types (0 = the same as the others; the H100 config sets 20), decode attention on the
// tensor cores from splits of 64 keys (everywhere: mma.sync m16n8k16 and movmatrix exist from
// sm80 on; measured on the H100 only, where it halved attention at 4096 keys, gained 3 points
// for Llama-3-8B at 112 keys a split and lost 1-5% of Gemma 3 270M's short-context generate
// below 64 keys a split; docs/PERF.md), single float-type matrices on the direct kernel (sm90:
// Llama-3-8B BF16 decode 2 points faster on the H100; the float kernel elsewhere, unmeasured),
// the direct kernel's warps per float row (2 on sm90: 2.4 more points there; 1 elsewhere), the
// largest q/k/v product (KiB of weights) that lets decode attention launch before its own wait
// (4 MiB on sm90: SmolLM2's step 6% shorter on the H100, Llama-3-8B's products, 14 MiB and up,
// slower with it; 0 elsewhere, unmeasured), decode attention's tile keys for heads above 128
// dims (16 on sm90: Gemma 3 270M's attention then fits on SMs still running the q/k/v product,
// step 2% shorter on the H100; Llama-3-8B's 128-dim heads keep 64, where 32 measured slightly
// slower; 0 = decode_block_n elsewhere, unmeasured), the smallest single matrix (KiB) that one token streams
// through bulk copies when the wide kernel does not take it (24 MiB on sm90: SmolLM2-135M's 30 MB output matrix,
// generate 2.5% faster on the H100; Llama-3-8B's 17 MB o product was slower streamed; 0 elsewhere: sm80-sm89
// have no bulk copies, sm100 and sm120 are unmeasured), the longest rows (values) of the wide kernel's matrices it
// also takes (1024 on sm90: Gemma 3's 640-value output rows, its synthetic step 477.9 -> 471.1 us on the H100;
// Llama-3-8B's 4096-value ones were level or slower in its decode steps; 0 elsewhere), and whether decode
// attention spreads a GQA group's query heads over several blocks while a launch stays within the SM count (sm90:
// the synthetic Gemma 3 270M step 500.9 -> 477.9 us on the H100 with its four heads one a block, SmolLM2-135M's
// 564.9 -> 561.0 us with two; Llama-3-8B's eight KV heads keep whole groups, which measured faster; 0 elsewhere,
// unmeasured).
static const sgllm__dispatch_row sgllm__dispatch_rows[] = {
    {8, 0, {"sm80", 0, 4, 32, 8, 8, 256, 64, {128, 64, 32}, {128, 64, 64}, {4, 8}, 64, 256, 256, 1, 32, 0, 0, 16, 1, 0, 64, 0, 1, 0, 0, 0, 0, 0}},
    {8, 6, {"sm86", 0, 4, 32, 8, 8, 256, 64, {64, 64, 32}, {128, 64, 32}, {4, 8}, 64, 256, 256, 1, 32, 0, 0, 16, 1, 0, 64, 0, 1, 0, 0, 0, 0, 0}},
    {8, 9, {"sm89", 0, 4, 32, 8, 8, 256, 64, {64, 64, 32}, {128, 64, 32}, {4, 8}, 64, 256, 256, 1, 32, 0, 0, 16, 1, 0, 64, 0, 1, 0, 0, 0, 0, 0}},
    {9, 0, {"sm90", 0, 4, 32, 8, 16, 256, 64, {128, 64, 32}, {64, 64, 64}, {4, 8}, 64, 256, 256, 3, 16, 1, 0, 8, 2, 0, 64, 1, 2, 4096, 16, 24576, 1024, 1}},
    {10, -1, {"sm100", 0, 4, 32, 8, 16, 256, 64, {64, 64, 16}, {64, 64, 64}, {4, 8}, 64, 256, 256, 1, 32, 1, 0, 16, 1, 0, 64, 0, 1, 0, 0, 0, 0, 0}},
    {12, -1, {"sm120", 0, 4, 32, 8, 8, 256, 64, {64, 64, 32}, {128, 64, 32}, {4, 8}, 64, 256, 256, 1, 32, 1, 0, 16, 1, 0, 64, 0, 1, 0, 0, 0, 0, 0}},
};

// Shared memory of one prefill attention tile: Q (bm, d), K and V (bn, d) in fp16.
static size_t sgllm__dispatch_tile_bytes(int bm, int bn, int d) { return ((size_t)bm + 2 * (size_t)bn) * (size_t)d * 2; }

// Picks the row for a device and fits it: an exact (major, minor) match, else the newest row
// not newer than the device (8.7 -> sm86, 11.x -> sm100, a future 13.x -> sm120); devices
// older than 8.0 are unsupported (bf16 and cp.async need sm80). Prefill tiles that do not fit
// the device's shared memory are halved (key tile first) until they do.
SGLLM__MAYBE_UNUSED static sgllm_status sgllm__dispatch_select(const sgllm__cuda_props *p, sgllm__cuda_dispatch *out, sgllm__diag *d) {
    memset(out, 0, sizeof *out);
    if (!p) return sgllm__fail(d, SGLLM_ERR_INVALID_ARGUMENT, "dispatch: no device properties");
    const sgllm__dispatch_row *best = NULL;
    int key = p->major * 100 + p->minor, best_key = -1;
    size_t n_rows = sizeof sgllm__dispatch_rows / sizeof sgllm__dispatch_rows[0];
    for (size_t i = 0; i < n_rows; i++) {
        const sgllm__dispatch_row *r = &sgllm__dispatch_rows[i];
        if (r->major == p->major && (r->minor == p->minor || r->minor < 0)) {
            best = r;
            break;
        }
        int rk = r->major * 100 + (r->minor < 0 ? 0 : r->minor);
        if (rk <= key && rk > best_key) {
            best = r;
            best_key = rk;
        }
    }
    if (!best)
        return sgllm__fail(d, SGLLM_ERR_UNSUPPORTED, "CUDA device '%s' has compute capability %d.%d; sgllm needs 8.0 or newer",
                           p->name, p->major, p->minor);
    *out = best->d;
    out->sm_count = p->sm_count > 0 ? p->sm_count : 1;
    size_t smem = p->smem_per_block_optin > p->smem_per_block ? p->smem_per_block_optin : p->smem_per_block;
    static const int class_dim[3] = {128, 256, 512};
    for (int c = 0; c < 3; c++) {
        int *bm = &out->prefill_block_m[c], *bn = &out->prefill_block_n[c];
        while (sgllm__dispatch_tile_bytes(*bm, *bn, class_dim[c]) > smem && (*bn > 16 || *bm > 16)) {
            if (*bn > 16) *bn /= 2;
            else *bm /= 2;
        }
        if (sgllm__dispatch_tile_bytes(*bm, *bn, class_dim[c]) > smem)
            return sgllm__fail(d, SGLLM_ERR_UNSUPPORTED,
                               "CUDA device '%s': %zu bytes of shared memory per block cannot hold an attention tile of "
                               "head dim %d", p->name, smem, class_dim[c]);
    }
    return SGLLM_OK;
}

// Splits for decode attention of one query: enough blocks for two waves over the SMs
// (blocks_per_split: blocks one split launches, tokens x KV heads x head groups), never more
// than the row allows nor so many that a split gets fewer than decode_min_keys keys.
SGLLM__MAYBE_UNUSED static int32_t sgllm__dispatch_decode_splits(const sgllm__cuda_dispatch *d, int64_t blocks_per_split, int64_t max_keys) {
    if (blocks_per_split < 1) blocks_per_split = 1;
    int64_t want = (2 * (int64_t)d->sm_count + blocks_per_split - 1) / blocks_per_split;
    int64_t by_len = d->decode_min_keys > 0 ? max_keys / d->decode_min_keys : max_keys;
    if (want > by_len) want = by_len;
    if (want > d->decode_max_splits) want = d->decode_max_splits;
    return want < 1 ? 1 : (int32_t)want;
}

// Prefill attention tile for a query head dim: (block m, block n, warps).
SGLLM__MAYBE_UNUSED static void sgllm__dispatch_prefill_tile(const sgllm__cuda_dispatch *d, int head_dim, int *bm, int *bn, int *warps) {
    int c = head_dim <= 128 ? 0 : head_dim <= 256 ? 1 : 2;
    *bm = d->prefill_block_m[c];
    *bn = d->prefill_block_n[c];
    *warps = d->prefill_warps[head_dim <= 64 ? 0 : 1];
}

// One line describing the decision (for the log and for users); returns snprintf's count.
SGLLM__MAYBE_UNUSED static int sgllm__dispatch_format(const sgllm__cuda_dispatch *d, const sgllm__cuda_props *p, const char *config,
                                  char *buf, size_t cap) {
    char wide[384] = "";
    if (d->matvec_int8 == 3)
        snprintf(wide, sizeof wide, " with wide loads of %d-byte row words, %d warps/SM (4-bit types %d), quantized %s",
                 d->matvec_wide_align, d->matvec_wide_warps_per_sm,
                 d->matvec_wide_warps_per_sm_q4 ? d->matvec_wide_warps_per_sm_q4 : d->matvec_wide_warps_per_sm,
                 d->matvec_xq_inline ? "in-kernel up to a limit" : "by a launch of their own");
    if (d->matvec_float_direct) {
        size_t n = strlen(wide);
        snprintf(wide + n, sizeof wide - n, "; float matrices on the direct kernel");
    }
    if (d->matvec_direct_split > 1) {
        size_t n = strlen(wide);
        snprintf(wide + n, sizeof wide - n, ", %d warps a float row", d->matvec_direct_split);
    }
    if (d->matvec_stream_kb > 0) {
        size_t n = strlen(wide);
        snprintf(wide + n, sizeof wide - n, "; single matrices from %d KiB streamed where the wide kernel declines",
                 d->matvec_stream_kb);
        n = strlen(wide);
        if (d->matvec_stream_wide_cols > 0)
            snprintf(wide + n, sizeof wide - n, " or rows have <= %d values", d->matvec_stream_wide_cols);
    }
    if (d->matvec_qkv_early_kb > 0) {
        size_t n = strlen(wide);
        snprintf(wide + n, sizeof wide - n, "; q/k/v products up to %d KiB let attention launch early", d->matvec_qkv_early_kb);
    }
    char mma[96] = "";
    if (d->decode_mma > 0)
        snprintf(mma, sizeof mma, " on the tensor cores (head dims 16k <= 256) from %d-key splits,", d->decode_mma);
    char wt[96] = "";
    if (d->decode_block_n_wide > 0) snprintf(wt, sizeof wt, " (%d above 128 dims)", d->decode_block_n_wide);
    if (d->decode_group_split) {
        size_t n = strlen(wt);
        snprintf(wt + n, sizeof wt - n, ", GQA groups split over blocks");
    }
    return snprintf(buf, cap,
                    "cuda dispatch: %s (sm %d.%d, %d SMs, %zu KB smem/block) -> row %s%s%s: matvec %d warps/block, %d "
                    "warps/SM, up to batch %d; decode attention%s <= %d splits of >= %d keys, %d-key tiles%s, merged %s; prefill tiles %dx%d (d<=128) "
                    "%dx%d (d<=256) %dx%d (d>256), %d/%d warps, from %d tokens; qk-norm per head up to %d tokens; norms %d threads; "
                    "quantized matvec on %s activations%s; programmatic dependent launch %s",
                    p->name, p->major, p->minor, p->sm_count,
                    (p->smem_per_block_optin > p->smem_per_block ? p->smem_per_block_optin : p->smem_per_block) / 1024,
                    d->row, config ? " + " : "", config ? config : "", d->matvec_warps, d->matvec_warps_per_sm,
                    d->matvec_max_batch,
                    mma, d->decode_max_splits,
                    d->decode_min_keys, d->decode_block_n, wt,
                    d->decode_merge == 2 ? "across a block cluster" : d->decode_merge ? "by a second kernel" : "by the last split", d->prefill_block_m[0],
                    d->prefill_block_n[0], d->prefill_block_m[1], d->prefill_block_n[1], d->prefill_block_m[2],
                    d->prefill_block_n[2], d->prefill_warps[0], d->prefill_warps[1], d->prefill_min_tokens,
                    d->qknorm_per_head_max_tokens, d->norm_threads, d->matvec_int8 ? "int8 (dp4a)" : "fp32", wide,
                    d->pdl ? (p->major >= 9 ? "on" : "asked, needs sm90") : "off");
}

// A strict JSON reader over untrusted bytes (RFC 8259 grammar; every read bounds-checked;
// nesting limited), enough to read the override files: a cursor, not a tree.
typedef struct sgllm__json {
    const char *s;
    size_t len, pos;
    int depth;
    sgllm__diag *d;
    const char *what; // file name for messages
} sgllm__json;

enum { SGLLM__JSON_MAX_DEPTH = 32 };

static sgllm_status sgllm__json_err(sgllm__json *j, const char *msg) {
    return sgllm__fail(j->d, SGLLM_ERR_FORMAT, "%s: %s at byte %zu", j->what, msg, j->pos);
}

static void sgllm__json_ws(sgllm__json *j) {
    while (j->pos < j->len && (j->s[j->pos] == ' ' || j->s[j->pos] == '\t' || j->s[j->pos] == '\n' || j->s[j->pos] == '\r'))
        j->pos++;
}

static int sgllm__json_peek(sgllm__json *j) {
    sgllm__json_ws(j);
    return j->pos < j->len ? (unsigned char)j->s[j->pos] : -1;
}

static sgllm_status sgllm__json_expect(sgllm__json *j, char c) {
    if (sgllm__json_peek(j) != (unsigned char)c) {
        char msg[32];
        snprintf(msg, sizeof msg, "expected '%c'", c);
        return sgllm__json_err(j, msg);
    }
    j->pos++;
    return SGLLM_OK;
}

static int sgllm__json_hex(int c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

// Reads a string; its unescaped bytes go to buf (NUL-terminated, cap > 0) when buf is not
// NULL. Longer strings than buf holds are an error, never truncated silently.
static sgllm_status sgllm__json_string(sgllm__json *j, char *buf, size_t cap) {
    sgllm_status s = sgllm__json_expect(j, '"');
    if (s) return s;
    size_t n = 0;
    for (;;) {
        if (j->pos >= j->len) return sgllm__json_err(j, "unterminated string");
        unsigned char c = (unsigned char)j->s[j->pos++];
        char out = (char)c;
        if (c == '"') break;
        if (c < 0x20) return sgllm__json_err(j, "control character in string");
        if (c == '\\') {
            uint32_t cp = 0;
            if (j->pos >= j->len) return sgllm__json_err(j, "unterminated escape");
            char e = j->s[j->pos++];
            switch (e) {
            case '"': case '\\': case '/': cp = (uint32_t)(unsigned char)e; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u':
                if (j->len - j->pos < 4) return sgllm__json_err(j, "short \\u escape");
                cp = 0;
                for (int k = 0; k < 4; k++) {
                    int h = sgllm__json_hex((unsigned char)j->s[j->pos++]);
                    if (h < 0) return sgllm__json_err(j, "bad \\u escape");
                    cp = cp * 16 + (uint32_t)h;
                }
                break;
            default: return sgllm__json_err(j, "unknown escape");
            }
            out = cp > 0 && cp < 0x80 ? (char)cp : '?'; // keys and names here are ASCII, never NUL
        }
        if (buf) {
            if (n + 1 >= cap) return sgllm__json_err(j, "string too long");
            buf[n++] = out;
        }
    }
    if (buf) buf[n] = 0;
    return SGLLM_OK;
}

// Reads a number (RFC 8259 grammar). *is_int says whether it was written as an integer that
// fits in int64 (no fraction, no exponent), with its value in *ival.
static sgllm_status sgllm__json_number(sgllm__json *j, bool *is_int, int64_t *ival) {
    sgllm__json_ws(j);
    size_t p = j->pos;
    bool neg = false, frac = false;
    uint64_t v = 0;
    bool overflow = false;
    if (p < j->len && j->s[p] == '-') {
        neg = true;
        p++;
    }
    if (p >= j->len || j->s[p] < '0' || j->s[p] > '9') return sgllm__json_err(j, "expected a number");
    if (j->s[p] == '0') {
        p++;
        if (p < j->len && j->s[p] >= '0' && j->s[p] <= '9') return sgllm__json_err(j, "leading zero in a number");
    } else {
        while (p < j->len && j->s[p] >= '0' && j->s[p] <= '9') {
            unsigned dgt = (unsigned)(j->s[p++] - '0');
            if (v > (UINT64_MAX - dgt) / 10) overflow = true;
            else v = v * 10 + dgt;
        }
    }
    if (p < j->len && j->s[p] == '.') {
        frac = true;
        p++;
        if (p >= j->len || j->s[p] < '0' || j->s[p] > '9') return sgllm__json_err(j, "digits must follow '.'");
        while (p < j->len && j->s[p] >= '0' && j->s[p] <= '9') p++;
    }
    if (p < j->len && (j->s[p] == 'e' || j->s[p] == 'E')) {
        frac = true;
        p++;
        if (p < j->len && (j->s[p] == '+' || j->s[p] == '-')) p++;
        if (p >= j->len || j->s[p] < '0' || j->s[p] > '9') return sgllm__json_err(j, "digits must follow the exponent");
        while (p < j->len && j->s[p] >= '0' && j->s[p] <= '9') p++;
    }
    j->pos = p;
    *is_int = !frac && !overflow && v <= (uint64_t)INT64_MAX;
    *ival = *is_int ? (neg ? -(int64_t)v : (int64_t)v) : 0;
    return SGLLM_OK;
}

static sgllm_status sgllm__json_skip(sgllm__json *j) {
    int c = sgllm__json_peek(j);
    sgllm_status s;
    if (c == '"') return sgllm__json_string(j, NULL, 0);
    if (c == '{' || c == '[') {
        if (++j->depth > SGLLM__JSON_MAX_DEPTH) return sgllm__json_err(j, "nesting too deep");
        char close = c == '{' ? '}' : ']';
        j->pos++;
        if (sgllm__json_peek(j) == (unsigned char)close) {
            j->pos++;
            j->depth--;
            return SGLLM_OK;
        }
        for (;;) {
            if (c == '{' && ((s = sgllm__json_string(j, NULL, 0)) || (s = sgllm__json_expect(j, ':')))) return s;
            if ((s = sgllm__json_skip(j))) return s;
            int n = sgllm__json_peek(j);
            if (n == ',') {
                j->pos++;
                continue;
            }
            if ((s = sgllm__json_expect(j, close))) return s;
            j->depth--;
            return SGLLM_OK;
        }
    }
    static const char *const words[] = {"true", "false", "null"};
    for (int w = 0; w < 3; w++) {
        size_t n = strlen(words[w]);
        if (j->len - j->pos >= n && !memcmp(j->s + j->pos, words[w], n)) {
            j->pos += n;
            return SGLLM_OK;
        }
    }
    bool is_int;
    int64_t iv;
    return sgllm__json_number(j, &is_int, &iv);
}

// The overridable fields: name, offset of the first int, count (arrays), allowed range.
typedef struct sgllm__dispatch_field {
    const char *key;
    size_t off;
    int count, lo, hi;
    bool pow2; // tile sizes and warps per row must be powers of two
} sgllm__dispatch_field;

static const sgllm__dispatch_field sgllm__dispatch_fields[] = {
    {"matvec_warps", offsetof(sgllm__cuda_dispatch, matvec_warps), 1, 1, 8, false},
    {"matvec_warps_per_sm", offsetof(sgllm__cuda_dispatch, matvec_warps_per_sm), 1, 1, 64, false},
    {"matvec_max_batch", offsetof(sgllm__cuda_dispatch, matvec_max_batch), 1, 1, 8, false},
    {"decode_max_splits", offsetof(sgllm__cuda_dispatch, decode_max_splits), 1, 1, 64, false},
    {"decode_min_keys", offsetof(sgllm__cuda_dispatch, decode_min_keys), 1, 16, 1 << 16, false},
    {"decode_block_n", offsetof(sgllm__cuda_dispatch, decode_block_n), 1, 8, 128, true},
    {"prefill_block_m", offsetof(sgllm__cuda_dispatch, prefill_block_m), 3, 16, 256, true},
    {"prefill_block_n", offsetof(sgllm__cuda_dispatch, prefill_block_n), 3, 16, 256, true},
    {"prefill_warps", offsetof(sgllm__cuda_dispatch, prefill_warps), 2, 1, 16, false},
    {"prefill_min_tokens", offsetof(sgllm__cuda_dispatch, prefill_min_tokens), 1, 1, 1 << 20, false},
    {"qknorm_per_head_max_tokens", offsetof(sgllm__cuda_dispatch, qknorm_per_head_max_tokens), 1, 0, 1 << 20, false},
    {"norm_threads", offsetof(sgllm__cuda_dispatch, norm_threads), 1, 32, 1024, false},
    {"matvec_int8", offsetof(sgllm__cuda_dispatch, matvec_int8), 1, 0, 3, false},
    {"matvec_wide_warps_per_sm", offsetof(sgllm__cuda_dispatch, matvec_wide_warps_per_sm), 1, 1, 64, false},
    {"pdl", offsetof(sgllm__cuda_dispatch, pdl), 1, 0, 1, false},
    {"matvec_xq_inline", offsetof(sgllm__cuda_dispatch, matvec_xq_inline), 1, 0, 32768, false},
    {"matvec_wide_align", offsetof(sgllm__cuda_dispatch, matvec_wide_align), 1, 8, 16, true},
    {"decode_merge", offsetof(sgllm__cuda_dispatch, decode_merge), 1, 0, 2, false},
    {"matvec_wide_warps_per_sm_q4", offsetof(sgllm__cuda_dispatch, matvec_wide_warps_per_sm_q4), 1, 0, 64, false},
    {"decode_mma", offsetof(sgllm__cuda_dispatch, decode_mma), 1, 0, 1 << 16, false},
    {"matvec_float_direct", offsetof(sgllm__cuda_dispatch, matvec_float_direct), 1, 0, 1, false},
    {"matvec_direct_split", offsetof(sgllm__cuda_dispatch, matvec_direct_split), 1, 1, 4, true},
    {"matvec_qkv_early_kb", offsetof(sgllm__cuda_dispatch, matvec_qkv_early_kb), 1, 0, 1 << 20, false},
    {"decode_block_n_wide", offsetof(sgllm__cuda_dispatch, decode_block_n_wide), 1, 0, 128, true},
    {"matvec_stream_kb", offsetof(sgllm__cuda_dispatch, matvec_stream_kb), 1, 0, 1 << 22, false},
    {"matvec_stream_wide_cols", offsetof(sgllm__cuda_dispatch, matvec_stream_wide_cols), 1, 0, 4096, false},
    {"decode_group_split", offsetof(sgllm__cuda_dispatch, decode_group_split), 1, 0, 1, false},
};

static sgllm_status sgllm__dispatch_int(sgllm__json *j, const sgllm__dispatch_field *f, int *out) {
    bool is_int;
    int64_t v;
    sgllm_status s = sgllm__json_number(j, &is_int, &v);
    if (s) return s;
    if (!is_int || v < f->lo || v > f->hi || (f->pow2 && (v & (v - 1))) ||
        (!strcmp(f->key, "norm_threads") && v % 32)) {
        return sgllm__fail(j->d, SGLLM_ERR_FORMAT, "%s: '%s' must be %s in [%d, %d]%s, at byte %zu", j->what, f->key,
                           f->pow2 ? "a power of two" : "an integer", f->lo, f->hi,
                           !strcmp(f->key, "norm_threads") ? " and a multiple of 32" : "", j->pos);
    }
    *out = (int)v;
    return SGLLM_OK;
}

// Applies an override document: one object whose keys are field names of
// sgllm__cuda_dispatch (integers, or arrays of exactly as many integers for the per-class
// fields), plus optional "device" (a string) and "comment". Unknown or repeated keys, values out
// of range and anything after the object are errors; on error *io is left unchanged.
// "comment" may hold any JSON value.
static sgllm_status sgllm__dispatch_apply_json(sgllm__cuda_dispatch *io, const char *text, size_t len,
                                               const char *what, sgllm__diag *d) {
    sgllm__json j = {text, len, 0, 0, d, what ? what : "dispatch config"};
    sgllm__cuda_dispatch out = *io;
    size_t n_fields = sizeof sgllm__dispatch_fields / sizeof sgllm__dispatch_fields[0];
    uint32_t seen = 0;
    sgllm_status s = sgllm__json_expect(&j, '{');
    if (s) return s;
    bool first = true;
    while (sgllm__json_peek(&j) != '}') {
        if (!first && (s = sgllm__json_expect(&j, ','))) return s;
        first = false;
        char key[64];
        size_t key_pos = j.pos;
        if ((s = sgllm__json_string(&j, key, sizeof key)) || (s = sgllm__json_expect(&j, ':'))) return s;
        if (!strcmp(key, "device")) {
            char tmp[256];
            if ((s = sgllm__json_string(&j, tmp, sizeof tmp))) return s;
            continue;
        }
        if (!strcmp(key, "comment")) { // any JSON value, validated and ignored
            if ((s = sgllm__json_skip(&j))) return s;
            continue;
        }
        size_t f = 0;
        while (f < n_fields && strcmp(key, sgllm__dispatch_fields[f].key)) f++;
        if (f == n_fields)
            return sgllm__fail(d, SGLLM_ERR_FORMAT, "%s: unknown key '%s' at byte %zu", j.what, key, key_pos);
        if (seen & (1u << f)) return sgllm__fail(d, SGLLM_ERR_FORMAT, "%s: repeated key '%s' at byte %zu", j.what, key, key_pos);
        seen |= 1u << f;
        const sgllm__dispatch_field *fd = &sgllm__dispatch_fields[f];
        int *dst = (int *)((char *)&out + fd->off);
        if (fd->count == 1) {
            if ((s = sgllm__dispatch_int(&j, fd, dst))) return s;
            continue;
        }
        if ((s = sgllm__json_expect(&j, '['))) return s;
        for (int k = 0; k < fd->count; k++) {
            if ((k && (s = sgllm__json_expect(&j, ','))) || (s = sgllm__dispatch_int(&j, fd, &dst[k]))) return s;
        }
        if (sgllm__json_peek(&j) != ']')
            return sgllm__fail(d, SGLLM_ERR_FORMAT, "%s: '%s' takes exactly %d values, at byte %zu", j.what, key, fd->count, j.pos);
        j.pos++;
    }
    j.pos++;
    if (sgllm__json_peek(&j) != -1) return sgllm__json_err(&j, "trailing data after the object");
    *io = out;
    return SGLLM_OK;
}

// configs/<name>.json for a device name: spaces (and any byte outside [A-Za-z0-9._-]) become
// '_', so a hostile name cannot leave the directory. Returns false when it does not fit.
static bool sgllm__dispatch_config_path(const char *dir, const char *device, char *buf, size_t cap) {
    int n = snprintf(buf, cap, "%s/", dir);
    if (n < 0 || (size_t)n >= cap || !device[0]) return false;
    size_t pos = (size_t)n;
    for (const char *c = device; *c; c++) {
        char ch = *c;
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
                  ch == '_' || (ch == '.' && c != device);
        if (pos + 1 >= cap) return false;
        buf[pos++] = ok ? ch : '_';
    }
    if (pos + 6 >= cap) return false;
    memcpy(buf + pos, ".json", 6);
    return true;
}

// Applies the JSON file at path (at most 64 KB) over *io. With `applied` given, a missing
// file is not an error and *applied tells whether the file was there and applied.
static sgllm_status sgllm__dispatch_apply_file(sgllm__cuda_dispatch *io, const char *path, bool *applied,
                                               sgllm__diag *d) {
    if (applied) *applied = false;
    FILE *f = fopen(path, "rb");
    if (!f && applied && errno == ENOENT) return SGLLM_OK;
    if (!f) return sgllm__fail(d, SGLLM_ERR_IO, "cannot open kernel config '%s': %s", path, strerror(errno));
    enum { MAX = 1 << 16 };
    char *text = (char *)sgllm__malloc(MAX + 1);
    if (!text) {
        fclose(f);
        return sgllm__fail(d, SGLLM_ERR_OUT_OF_MEMORY, "out of memory reading '%s'", path);
    }
    size_t n = fread(text, 1, MAX + 1, f);
    bool err = ferror(f) != 0;
    fclose(f);
    sgllm_status s;
    if (err) s = sgllm__fail(d, SGLLM_ERR_IO, "cannot read kernel config '%s'", path);
    else if (n > MAX) s = sgllm__fail(d, SGLLM_ERR_FORMAT, "kernel config '%s' is larger than %d bytes", path, MAX);
    else s = sgllm__dispatch_apply_json(io, text, n, path, d);
    sgllm__free(text);
    if (s == SGLLM_OK && applied) *applied = true;
    return s;
}

// Loads dir/<device>.json over *io when it exists (*applied tells). A missing file is not an
// error; an unreadable or malformed one is, and leaves *io unchanged.
SGLLM__MAYBE_UNUSED static sgllm_status sgllm__dispatch_load_config(sgllm__cuda_dispatch *io, const char *dir, const char *device,
                                                char *path, size_t path_cap, bool *applied, sgllm__diag *d) {
    *applied = false;
    if (!sgllm__dispatch_config_path(dir, device, path, path_cap))
        return sgllm__fail(d, SGLLM_ERR_INVALID_ARGUMENT, "dispatch config: path too long for device '%s'", device);
    return sgllm__dispatch_apply_file(io, path, applied, d);
}


// --- 8c. CUDA forward ----------------------------------------------------------------------
// The backend choice at load, the weight upload, and the forward pass on the GPU: the same
// walk over the sgllm__layer descriptors as section 8, each step one op of sgllm_cuda.cu
// enqueued on the context's stream. The model owns the device copies of its weights (in their
// storage format, uploaded once) and a CUDA context used only for the upload; each
// sgllm_context owns its own CUDA context (stream, cuBLAS, scratch), fp16 KV cache and
// activation buffers. A forward uploads the token ids and positions, enqueues every layer
// and downloads the requested logits: the download is its only synchronization. The
// single-token step is captured as a CUDA graph and replayed (its token and position live in
// device buffers the graph reads), which removes the per-launch overhead that bounds small
// models; a long context has two such graphs, for its short positions and the rest
// (sgllm__gpu_tier). A layer is: norm (fused with the previous block's post-norm and residual
// add), one q/k/v launch, one epilogue (biases, q/k norms, RoPE, cache write), attention
// (split-KV decode kernel for small batches, tensor-core flash attention from
// dispatch.prefill_min_tokens tokens), o projection, norm, one gate/up launch with the
// activation, down projection. The KV cache is paged (SGLLM__KV_PAGE rows a page, an identity
// page table for now, so a prefix cache can later share pages). sgllm_generate's decode loop
// runs the step and the device sampler as one graph and reads back only the token
// (sgllm__gpu_produce).

// Picks the backend for a loaded model description (m->backend, m->device_info) and, for
// CUDA, uploads the weights. kernel_config: an optional JSON file applied over the dispatch.
static sgllm_status sgllm__gpu_model_init(sgllm_model *m, sgllm_backend want, const char *kernel_config);
static void sgllm__gpu_model_free(sgllm_model *m);

// What one step of m costs at best (benchmarks, declared in sgllm.h's internal section).
sgllm_status sgllm__model_cost(const sgllm_model *m, int64_t n_past, int64_t n_prefill, sgllm__cost *out) {
    if (!m || !out || n_past < 0 || n_prefill < 0) return SGLLM_ERR_INVALID_ARGUMENT;
    memset(out, 0, sizeof *out);
    int64_t E = m->n_embd;
    double norm_floats = (double)E; // output norm
    for (int32_t il = 0; il < m->n_layer; il++) {
        const sgllm__layer *L = &m->layers[il];
        const sgllm__mat *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < 7; i++) {
            out->weight_bytes += (double)mats[i]->row_bytes * (double)mats[i]->rows;
            out->matmul_weights += (double)mats[i]->rows * (double)mats[i]->cols;
        }
        norm_floats += 2.0 * (double)E + (L->post_attn_norm ? 2.0 * (double)E : 0) + (L->q_norm ? 2.0 * L->head_dim : 0);
        // the token at position n_past sees keys lo..n_past; k and v rows of fp16
        int64_t keys = n_past + 1;
        if (L->window > 0 && L->window < keys) keys = L->window;
        out->kv_bytes += 2.0 * 2.0 * (double)L->n_head_kv * L->head_dim * (double)keys;
        // causal prefill of n_prefill tokens from an empty cache: q.k and p.v, 2 FLOPs per multiply-add
        double pairs = 0;
        for (int64_t i = 0; i < n_prefill; i++) pairs += (double)(L->window > 0 && L->window < i + 1 ? L->window : i + 1);
        out->attn_flops += 2.0 * 2.0 * (double)L->n_head * L->head_dim * pairs;
    }
    out->weight_bytes += (double)m->output.row_bytes * (double)m->output.rows + 4.0 * norm_floats;
    out->n_weights = out->matmul_weights + (double)m->tok_embd.rows * (double)m->tok_embd.cols + norm_floats +
                     (m->output_tied ? 0.0 : (double)m->output.rows * (double)m->output.cols);
    return SGLLM_OK;
}

static sgllm__diag sgllm__diag_from_err(void) {
    sgllm__diag d;
    memset(&d, 0, sizeof d);
    d.level = SGLLM_LOG_ERROR;
    return d;
}

// Records msg as d's error, copies it to err (when given) and returns status.
static sgllm_status sgllm__ceiling_fail(sgllm__diag *d, sgllm_status status, const char *msg, char *err,
                                        size_t err_size) {
    sgllm__fail(d, status, "%s", msg);
    if (err && err_size) snprintf(err, err_size, "%s", d->msg);
    return status;
}

#ifdef SGLLM_CUDA

typedef struct sgllm__gpu_layer {
    const void *wq, *wk, *wv, *wo, *w_gate, *w_up, *w_down; // (device) storage format
    const float *attn_norm, *ffn_norm, *post_attn_norm, *post_ffn_norm, *q_norm, *k_norm, *bq, *bk, *bv; // (device) or NULL
} sgllm__gpu_layer;

typedef struct sgllm__gpu_model {
    sgllm__cuda *cu;             // upload context; every allocation below was made through it
    sgllm__cuda_dispatch disp;   // copied into each context's CUDA context
    void **allocs;               // stb_ds array of device allocations
    const void *tok_embd, *output; // (device); output may be tok_embd (tied)
    const float *output_norm;    // (device)
    sgllm__gpu_layer *layers;    // (n_layer)
} sgllm__gpu_model;

static void sgllm__gpu_model_free(sgllm_model *m) {
    sgllm__gpu_model *g = m->gpu;
    if (!g) return;
    for (ptrdiff_t i = 0; i < arrlen(g->allocs); i++) sgllm__cuda_dfree(g->cu, g->allocs[i]);
    arrfree(g->allocs);
    sgllm__free(g->layers);
    sgllm__cuda_free(g->cu);
    sgllm__free(g);
    m->gpu = NULL;
}

// Copies bytes of host memory to a new device allocation (*out NULL when src is NULL).
static sgllm_status sgllm__gpu_put(sgllm_model *m, const void *src, size_t bytes, const void **out) {
    sgllm__gpu_model *g = m->gpu;
    *out = NULL;
    if (!src) return SGLLM_OK;
    void *p = NULL;
    sgllm_status s = sgllm__cuda_alloc(g->cu, bytes, &p);
    if (s == SGLLM_OK) {
        arrput(g->allocs, p);
        s = sgllm__cuda_upload(g->cu, p, src, bytes);
    }
    if (s != SGLLM_OK) return sgllm__fail(&m->diag, s, "uploading weights: %s", sgllm__cuda_errmsg(g->cu));
    *out = p;
    return SGLLM_OK;
}

// A synthetic model's matrix is made here instead: valid random blocks of its type, one seed
// per matrix (the model's seed and the allocation's index).
static sgllm_status sgllm__gpu_put_mat(sgllm_model *m, const sgllm__mat *w, const void **out) {
    if (!m->synthetic) return sgllm__gpu_put(m, w->data, w->row_bytes * (size_t)w->rows, out);
    sgllm__gpu_model *g = m->gpu;
    *out = NULL;
    void *p = NULL;
    uint64_t seed = m->synth_seed ^ ((uint64_t)arrlen(g->allocs) + 1) * 0x9e3779b97f4a7c15ull;
    sgllm_status s = sgllm__cuda_alloc(g->cu, w->row_bytes * (size_t)w->rows, &p);
    if (s == SGLLM_OK) {
        arrput(g->allocs, p);
        s = sgllm__cuda_fill_random(g->cu, w->type, p, w->rows, w->cols, seed);
    }
    if (s != SGLLM_OK) return sgllm__fail(&m->diag, s, "making synthetic weights: %s", sgllm__cuda_errmsg(g->cu));
    *out = p;
    return SGLLM_OK;
}

static sgllm_status sgllm__gpu_put_vec(sgllm_model *m, const float *v, int64_t n, const float **out) {
    const void *p;
    sgllm_status s = sgllm__gpu_put(m, v, (size_t)n * sizeof(float), &p);
    *out = (const float *)p;
    return s;
}

static sgllm_status sgllm__gpu_upload_weights(sgllm_model *m) {
    sgllm__gpu_model *g = m->gpu;
    sgllm_status s;
    if ((s = sgllm__gpu_put_mat(m, &m->tok_embd, &g->tok_embd))) return s;
    if (m->output_tied) g->output = g->tok_embd;
    else if ((s = sgllm__gpu_put_mat(m, &m->output, &g->output))) return s;
    if ((s = sgllm__gpu_put_vec(m, m->output_norm, m->n_embd, &g->output_norm))) return s;
    if (!(g->layers = (sgllm__gpu_layer *)sgllm__calloc((size_t)m->n_layer, sizeof *g->layers)))
        return sgllm__fail(&m->diag, SGLLM_ERR_OUT_OF_MEMORY, "out of memory");
    for (int32_t il = 0; il < m->n_layer; il++) {
        const sgllm__layer *L = &m->layers[il];
        sgllm__gpu_layer *G = &g->layers[il];
        int64_t E = m->n_embd, qd = (int64_t)L->n_head * L->head_dim, kvd = (int64_t)L->n_head_kv * L->head_dim;
        if ((s = sgllm__gpu_put_mat(m, &L->wq, &G->wq)) || (s = sgllm__gpu_put_mat(m, &L->wk, &G->wk)) ||
            (s = sgllm__gpu_put_mat(m, &L->wv, &G->wv)) || (s = sgllm__gpu_put_mat(m, &L->wo, &G->wo)) ||
            (s = sgllm__gpu_put_mat(m, &L->w_gate, &G->w_gate)) || (s = sgllm__gpu_put_mat(m, &L->w_up, &G->w_up)) ||
            (s = sgllm__gpu_put_mat(m, &L->w_down, &G->w_down)) ||
            (s = sgllm__gpu_put_vec(m, L->attn_norm, E, &G->attn_norm)) ||
            (s = sgllm__gpu_put_vec(m, L->ffn_norm, E, &G->ffn_norm)) ||
            (s = sgllm__gpu_put_vec(m, L->post_attn_norm, E, &G->post_attn_norm)) ||
            (s = sgllm__gpu_put_vec(m, L->post_ffn_norm, E, &G->post_ffn_norm)) ||
            (s = sgllm__gpu_put_vec(m, L->q_norm, L->head_dim, &G->q_norm)) ||
            (s = sgllm__gpu_put_vec(m, L->k_norm, L->head_dim, &G->k_norm)) ||
            (s = sgllm__gpu_put_vec(m, L->bq, qd, &G->bq)) || (s = sgllm__gpu_put_vec(m, L->bk, kvd, &G->bk)) ||
            (s = sgllm__gpu_put_vec(m, L->bv, kvd, &G->bv)))
            return s;
    }
    // the fills were only enqueued: contexts use the weights from other streams
    if (m->synthetic && (s = sgllm__cuda_sync(g->cu)))
        return sgllm__fail(&m->diag, s, "making synthetic weights: %s", sgllm__cuda_errmsg(g->cu));
    return SGLLM_OK;
}

// Why SGLLM_BACKEND_CUDA cannot be served here, or NULL when it can (checked before the
// file is read, so a wrong request fails fast).
static const char *sgllm__cuda_unavailable(void) {
    return sgllm__cuda_device_count() < 1 ? "SGLLM_BACKEND_CUDA: no CUDA device (or no driver) found" : NULL;
}

static sgllm_status sgllm__gpu_model_init(sgllm_model *m, sgllm_backend want, const char *kernel_config) {
    m->backend = SGLLM_BACKEND_CPU;
    if (want == SGLLM_BACKEND_CPU) {
        snprintf(m->device_info, sizeof m->device_info, "cpu (requested)");
        return SGLLM_OK;
    }
    if (sgllm__cuda_device_count() < 1) {
        if (want == SGLLM_BACKEND_CUDA) return sgllm__fail(&m->diag, SGLLM_ERR_BACKEND, "%s", sgllm__cuda_unavailable());
        snprintf(m->device_info, sizeof m->device_info, "cpu (no CUDA device found)");
        return SGLLM_OK;
    }
    sgllm__cuda_props props;
    char err[256] = "";
    sgllm_status s = sgllm__cuda_query(0, &props, err, sizeof err);
    if (s) return sgllm__fail(&m->diag, s, "%s", err);
    if (!(m->gpu = (sgllm__gpu_model *)sgllm__calloc(1, sizeof *m->gpu)))
        return sgllm__fail(&m->diag, SGLLM_ERR_OUT_OF_MEMORY, "out of memory");
    sgllm__gpu_model *g = m->gpu;
    if ((s = sgllm__dispatch_select(&props, &g->disp, &m->diag))) return s;
    char path[512], cfg[1100] = "";
    bool applied = false;
    if ((s = sgllm__dispatch_load_config(&g->disp, "configs", props.name, path, sizeof path, &applied, &m->diag)))
        return s;
    if (applied) snprintf(cfg, sizeof cfg, "%s", path);
    if (kernel_config) {
        if ((s = sgllm__dispatch_apply_file(&g->disp, kernel_config, NULL, &m->diag))) return s;
        size_t used = strlen(cfg);
        snprintf(cfg + used, sizeof cfg - used, "%s%s", used ? " + " : "", kernel_config);
    }
    sgllm__dispatch_format(&g->disp, &props, cfg[0] ? cfg : NULL, m->device_info, sizeof m->device_info);
    if ((s = sgllm__cuda_create(0, &g->disp, &g->cu, err, sizeof err))) return sgllm__fail(&m->diag, s, "%s", err);
    if ((s = sgllm__gpu_upload_weights(m))) return s;
    m->backend = SGLLM_BACKEND_CUDA;
    return SGLLM_OK;
}

static int sgllm__cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

// Median milliseconds of reps timed runs of one of the two ceiling workloads (after 3 untimed).
static sgllm_status sgllm__ceiling_time(sgllm__cuda *cu, bool gemm, void *const *buf, size_t bytes, int64_t n, int reps,
                                        float *ms) {
    float t[64];
    sgllm_status s = SGLLM_OK;
    for (int r = -3; r < reps && !s; r++) {
        if (r >= 0) s = sgllm__cuda_timer_start(cu);
        if (!s) s = gemm ? sgllm__cuda_gemm_bf16(cu, buf[0], buf[1], buf[2], n, n, n)
                         : sgllm__cuda_read_bench(cu, buf[0], bytes, (float *)buf[1]);
        if (!s && r >= 0) s = sgllm__cuda_timer_stop(cu, &t[r]);
    }
    if (!s) s = sgllm__cuda_sync(cu);
    if (s) return s;
    qsort(t, (size_t)reps, sizeof t[0], sgllm__cmp_float);
    *ms = t[reps / 2];
    return SGLLM_OK;
}

sgllm_status sgllm__device_ceilings(int reps, double *read_bps, double *bf16_flops, char *name, size_t name_size,
                                    char *err, size_t err_size) {
    sgllm__diag d = sgllm__diag_from_err();
    if (reps < 1 || reps > 64 || !read_bps || !bf16_flops)
        return sgllm__ceiling_fail(&d, SGLLM_ERR_INVALID_ARGUMENT, "device ceilings: bad arguments", err, err_size);
    if (sgllm__cuda_device_count() < 1)
        return sgllm__ceiling_fail(&d, SGLLM_ERR_BACKEND, "device ceilings: no CUDA device (or no driver) found", err,
                                   err_size);
    sgllm__cuda_props props;
    sgllm__cuda_dispatch disp;
    sgllm__cuda *cu = NULL;
    char e[sizeof d.msg] = "";
    sgllm_status s = sgllm__cuda_query(0, &props, e, sizeof e);
    if (!s) s = sgllm__dispatch_select(&props, &disp, &d);
    if (!s) s = sgllm__cuda_create(0, &disp, &cu, e, sizeof e);
    if (s && !e[0]) snprintf(e, sizeof e, "%s", d.msg);
    if (s) return sgllm__ceiling_fail(&d, s, e, err, err_size);
    if (name && name_size) snprintf(name, name_size, "%s", props.name);
    // streaming read of 2 GiB (40x the L2) of random bf16; bf16 GEMM 8192^3 on random data
    size_t bytes = (size_t)2 << 30;
    int64_t n = 8192;
    void *buf[3] = {NULL, NULL, NULL};
    float ms = 0;
    if (!(s = sgllm__cuda_alloc(cu, bytes, &buf[0])) && !(s = sgllm__cuda_alloc(cu, sizeof(float), &buf[1])) &&
        !(s = sgllm__cuda_fill_random(cu, SGLLM__T_BF16, buf[0], (int64_t)(bytes / 8192), 4096, 1)) &&
        !(s = sgllm__ceiling_time(cu, false, buf, bytes, 0, reps, &ms)))
        *read_bps = (double)bytes / (ms * 1e-3);
    for (int i = 0; i < 3; i++) {
        sgllm__cuda_dfree(cu, buf[i]);
        buf[i] = NULL;
    }
    size_t mb = (size_t)(n * n) * 2;
    if (!s && !(s = sgllm__cuda_alloc(cu, mb, &buf[0])) && !(s = sgllm__cuda_alloc(cu, mb, &buf[1])) &&
        !(s = sgllm__cuda_alloc(cu, mb, &buf[2])) &&
        !(s = sgllm__cuda_fill_random(cu, SGLLM__T_BF16, buf[0], n, n, 2)) &&
        !(s = sgllm__cuda_fill_random(cu, SGLLM__T_BF16, buf[1], n, n, 3)) &&
        !(s = sgllm__ceiling_time(cu, true, buf, 0, n, reps < 20 ? reps : 20, &ms)))
        *bf16_flops = 2.0 * (double)n * (double)n * (double)n / (ms * 1e-3);
    for (int i = 0; i < 3; i++) sgllm__cuda_dfree(cu, buf[i]);
    if (s) sgllm__ceiling_fail(&d, s, sgllm__cuda_errmsg(cu), err, err_size);
    sgllm__cuda_free(cu);
    return s;
}

// Rows per page of the KV cache. The cache is a pool of pages that a page table maps a
// sequence's rows onto (sgllm__cuda_attn_decode); a context starts with the identity table,
// so a later prefix cache can share pages between sequences by editing tables only.
enum { SGLLM__KV_PAGE = 64 };

enum { SGLLM__GPU_TIERS = 2 }; // graph tiers (sgllm__gpu_tier): the short positions, the rest
enum { SGLLM__GPU_SMP_MODES = 3 }; // sampler modes of the step graphs (sgllm__gpu_smp_mode)

typedef struct sgllm__gpu_ctx {
    const sgllm_model *m;
    sgllm__cuda *cu;
    int32_t n_ctx, n_batch;
    int64_t short_keys;            // most keys of the short tier's graphs (sgllm__gpu_tier); 0: one tier
    void **allocs;                 // stb_ds array of device allocations
    uint16_t **k_cache, **v_cache; // (n_layer) x (device) (n_pages * SGLLM__KV_PAGE, n_head_kv * head_dim) fp16
    int32_t *page_table;           // (device) (n_pages): the sequence's pages, shared by every layer's cache
    int32_t *io;                   // (device) (3, n_batch): token ids, positions, rows that give logits
    int32_t *host_io;              // (3, n_batch) staging of io
    float *x, *h, *o;              // (device) (n_batch, n_embd) residual, block input, block output
    float *q, *att;                // (device) (n_batch, max n_head * head_dim)
    float *k, *v;                  // (device) (n_batch, max n_head_kv * head_dim)
    float *g, *u;                  // (device) (n_batch, max n_ff)
    float *sel;                    // (device) (n_batch, n_embd) final-normed rows that give logits
    float *logits;                 // (device) (n_batch, n_vocab)
    void *graph[SGLLM__GPU_TIERS]; // executable graphs of the single-token step per tier (sgllm__gpu_tier), or NULL
    void *graph_last;              // the graph the latest single-token step replayed (tests, benchmarks)
    bool graph_failed;             // capture was refused once: run that step without a graph
    // device sampling (sgllm__gpu_produce): two buffers, each (4) int32 (token, position, pad,
    // pad), sgllm__cuda_sample_args, (smp_cap) penalized tokens, (smp_cap) counts,
    // (SGLLM__CUDA_SAMPLE_UNI) double uniforms by position (sgllm__smp_bytes)
    void *smp[2], *smp_work;       // (device) smp; sgllm__cuda_sample_work_bytes(n_vocab)
    unsigned char *smp_host;       // (3, smp buffer bytes): staging, then what smp[0] and smp[1] hold
    int32_t smp_cap;
    bool smp_known[2];             // smp[b] holds its shadow in smp_host and position smp_pos[b]
    int32_t smp_pos[2];
    double smp_uni[SGLLM__CUDA_SAMPLE_UNI]; // the draws' uniforms by position that the buffers' ends get
    int32_t smp_uni_lo, smp_uni_hi; // positions [lo, hi) whose uniforms smp_uni holds for this generate
    void *smp_graph[SGLLM__GPU_TIERS][SGLLM__GPU_SMP_MODES][2]; // [tier][sampler mode][b]: the single-token step reading smp[b]
                                   // and the sampler (sgllm__gpu_smp_mode), or NULL
    void *smp_graph_last;          // the one the latest production replayed
    bool smp_graph_failed;
} sgllm__gpu_ctx;

static void sgllm__gpu_ctx_free(sgllm__gpu_ctx *c) {
    if (!c) return;
    for (int t = 0; t < SGLLM__GPU_TIERS; t++) {
        sgllm__cuda_graph_free(c->cu, c->graph[t]);
        for (int g = 0; g < SGLLM__GPU_SMP_MODES; g++)
            for (int b = 0; b < 2; b++) sgllm__cuda_graph_free(c->cu, c->smp_graph[t][g][b]);
    }
    sgllm__free(c->smp_host);
    for (ptrdiff_t i = 0; i < arrlen(c->allocs); i++) sgllm__cuda_dfree(c->cu, c->allocs[i]);
    arrfree(c->allocs);
    sgllm__free(c->k_cache);
    sgllm__free(c->v_cache);
    sgllm__free(c->host_io);
    sgllm__cuda_free(c->cu);
    sgllm__free(c);
}

static sgllm_status sgllm__gpu_alloc(sgllm__gpu_ctx *c, size_t bytes, void *out) {
    void *p = NULL;
    sgllm_status s = sgllm__cuda_alloc(c->cu, bytes, &p);
    if (s == SGLLM_OK) arrput(c->allocs, p);
    memcpy(out, &p, sizeof p);
    return s;
}

// Keys a query of layer L sees when the context's keys reach max_keys (its window, if shorter).
static int64_t sgllm__gpu_seen(const sgllm__layer *L, int64_t max_keys) {
    return L->window > 0 && L->window < max_keys ? L->window : max_keys;
}

// Decode-attention splits for n queries of layer L whose keys reach max_keys: the dispatch's
// count, cut to what the device holds at once when the splits merge across clusters.
static int32_t sgllm__gpu_splits(sgllm__cuda *cu, const sgllm__layer *L, int64_t n, int64_t max_keys) {
    int32_t group = L->n_head / L->n_head_kv, hb = sgllm__cuda_attn_heads_per_block(cu, L->n_head, L->n_head_kv, n);
    int64_t blocks = n * L->n_head_kv * ((group + (hb > 0 ? hb : 8) - 1) / (hb > 0 ? hb : 8));
    max_keys = sgllm__gpu_seen(L, max_keys);
    int32_t sp = sgllm__dispatch_decode_splits(sgllm__cuda_get_dispatch(cu), blocks, max_keys);
    return sgllm__cuda_attn_cluster_splits(cu, L->n_head, L->n_head_kv, L->head_dim, n, sp);
}

// The split count of the single-token step, fixed for every position a captured graph will
// see: the largest any layer wants at the graph's horizon (its most keys).
static int32_t sgllm__gpu_step_splits(const sgllm__gpu_ctx *c, int64_t horizon) {
    int32_t splits = 1;
    for (int32_t il = 0; il < c->m->n_layer; il++) {
        int32_t sp = sgllm__gpu_splits(c->cu, &c->m->layers[il], 1, horizon);
        splits = splits > sp ? splits : sp;
    }
    return splits;
}

// Whether the single-token step at horizon keys (a graph's most) runs any layer's decode
// attention on the tensor cores (dispatch.decode_mma).
static bool sgllm__gpu_step_mma(const sgllm__gpu_ctx *c, int64_t horizon) {
    int32_t splits = sgllm__gpu_step_splits(c, horizon);
    for (int32_t il = 0; il < c->m->n_layer; il++) {
        const sgllm__layer *L = &c->m->layers[il];
        if (sgllm__cuda_attn_mma(c->cu, L->head_dim, splits, sgllm__gpu_seen(L, horizon))) return true;
    }
    return false;
}

// Graph tiers: a captured step serves the positions whose keys reach at most its horizon, with
// the split count and attention kernel chosen for that many keys. A context whose full length
// puts decode attention on the tensor cores (long splits) has two: the short tier, up to the
// most keys at which every layer keeps the CUDA-core kernel (c->short_keys, found once by
// bisection), and the full length; a step of k keys replays the first that holds them,
// captured when first needed. So the short positions of a long context keep the short-split
// kernel, faster there and small enough in shared memory to start beside the q/k/v product
// (the tensor-core instance's stages are not: docs/PERF.md, tenth session).
static int sgllm__gpu_tier(const sgllm__gpu_ctx *c, int64_t keys, int64_t *horizon) {
    if (c->short_keys > 0 && keys <= c->short_keys) {
        *horizon = c->short_keys;
        return 0;
    }
    *horizon = c->n_ctx;
    return c->short_keys > 0;
}
static int64_t sgllm__gpu_short_keys(const sgllm__gpu_ctx *c) {
    if (!sgllm__gpu_step_mma(c, c->n_ctx)) return 0; // one tier: the CUDA cores throughout
    int64_t lo = 0, hi = c->n_ctx;                     // lo: no tensor cores (or none yet), hi: tensor cores
    while (hi - lo > 1) {
        int64_t mid = lo + (hi - lo) / 2;
        if (sgllm__gpu_step_mma(c, mid)) hi = mid;
        else lo = mid;
    }
    return lo;
}

static sgllm_status sgllm__gpu_ctx_create(const sgllm_model *m, int32_t n_ctx, int32_t n_batch, sgllm__diag *d,
                                          sgllm__gpu_ctx **out) {
    *out = NULL;
    const sgllm__gpu_model *gm = m->gpu;
    sgllm__gpu_ctx *c = (sgllm__gpu_ctx *)sgllm__calloc(1, sizeof *c);
    if (!c) return sgllm__fail(d, SGLLM_ERR_OUT_OF_MEMORY, "out of memory");
    c->m = m;
    c->n_ctx = n_ctx;
    c->n_batch = n_batch;
    char err[256] = "";
    sgllm_status s = sgllm__cuda_create(0, &gm->disp, &c->cu, err, sizeof err);
    if (s) {
        sgllm__gpu_ctx_free(c);
        return sgllm__fail(d, s, "%s", err);
    }
    c->short_keys = sgllm__gpu_short_keys(c);
    int64_t qd = 0, kvd = 0, ff = 0, E = m->n_embd, B = n_batch;
    size_t scratch = 0;
    const sgllm__cuda_dispatch *disp = &gm->disp;
    bool gemm = n_batch > disp->matvec_max_batch;
    for (int32_t il = 0; il < m->n_layer; il++) {
        const sgllm__layer *L = &m->layers[il];
        qd = qd > (int64_t)L->n_head * L->head_dim ? qd : (int64_t)L->n_head * L->head_dim;
        kvd = kvd > (int64_t)L->n_head_kv * L->head_dim ? kvd : (int64_t)L->n_head_kv * L->head_dim;
        ff = ff > L->n_ff ? ff : L->n_ff;
        size_t a = sgllm__cuda_attn_scratch_bytes(L->n_head, L->head_dim, B, disp->decode_max_splits);
        scratch = scratch > a ? scratch : a;
        const sgllm__mat *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; gemm && i < 7; i++) {
            size_t b = sgllm__cuda_gemm_scratch_bytes(mats[i]->type, mats[i]->rows, mats[i]->cols, B);
            scratch = scratch > b ? scratch : b;
        }
    }
    if (gemm) {
        size_t b = sgllm__cuda_gemm_scratch_bytes(m->output.type, m->output.rows, m->output.cols, B);
        scratch = scratch > b ? scratch : b;
    }
    c->k_cache = (uint16_t **)sgllm__calloc((size_t)m->n_layer, sizeof(uint16_t *));
    c->v_cache = (uint16_t **)sgllm__calloc((size_t)m->n_layer, sizeof(uint16_t *));
    c->host_io = (int32_t *)sgllm__calloc(3 * (size_t)B, sizeof(int32_t));
    int32_t n_pages = (int32_t)(((int64_t)n_ctx + SGLLM__KV_PAGE - 1) / SGLLM__KV_PAGE);
    int32_t *pages = (int32_t *)sgllm__calloc((size_t)n_pages, sizeof(int32_t));
    if (!c->k_cache || !c->v_cache || !c->host_io || !pages) s = SGLLM_ERR_OUT_OF_MEMORY;
    for (int32_t il = 0; !s && il < m->n_layer; il++) {
        size_t row = (size_t)m->layers[il].n_head_kv * (size_t)m->layers[il].head_dim * 2;
        if (!(s = sgllm__gpu_alloc(c, (size_t)n_pages * SGLLM__KV_PAGE * row, &c->k_cache[il])))
            s = sgllm__gpu_alloc(c, (size_t)n_pages * SGLLM__KV_PAGE * row, &c->v_cache[il]);
    }
    for (int32_t i = 0; !s && i < n_pages; i++) pages[i] = i;
    if (!s) s = sgllm__gpu_alloc(c, (size_t)n_pages * sizeof(int32_t), &c->page_table);
    if (!s) s = sgllm__cuda_upload(c->cu, c->page_table, pages, (size_t)n_pages * sizeof(int32_t));
    sgllm__free(pages);
    size_t f = sizeof(float);
    if (!s) s = sgllm__gpu_alloc(c, 3 * (size_t)B * sizeof(int32_t), &c->io);
    if (!s) s = sgllm__gpu_alloc(c, (size_t)(B * E) * f, &c->x);
    if (!s) s = sgllm__gpu_alloc(c, (size_t)(B * E) * f, &c->h);
    if (!s) s = sgllm__gpu_alloc(c, (size_t)(B * E) * f, &c->o);
    if (!s) s = sgllm__gpu_alloc(c, (size_t)(B * E) * f, &c->sel);
    if (!s) s = sgllm__gpu_alloc(c, (size_t)(B * qd) * f, &c->q);
    if (!s) s = sgllm__gpu_alloc(c, (size_t)(B * qd) * f, &c->att);
    if (!s) s = sgllm__gpu_alloc(c, (size_t)(B * kvd) * f, &c->k);
    if (!s) s = sgllm__gpu_alloc(c, (size_t)(B * kvd) * f, &c->v);
    if (!s) s = sgllm__gpu_alloc(c, (size_t)(B * ff) * f, &c->g);
    if (!s) s = sgllm__gpu_alloc(c, (size_t)(B * ff) * f, &c->u);
    if (!s) s = sgllm__gpu_alloc(c, (size_t)B * (size_t)m->n_vocab * f, &c->logits);
    if (!s) s = sgllm__cuda_reserve(c->cu, scratch);
    if (s) {
        sgllm__fail(d, s, "creating a CUDA context of %d tokens: %s", (int)n_ctx,
                    s == SGLLM_ERR_OUT_OF_MEMORY && !c->cu ? "out of memory" : sgllm__cuda_errmsg(c->cu));
        sgllm__gpu_ctx_free(c);
        return s;
    }
    *out = c;
    return SGLLM_OK;
}

// Enqueues the forward of n tokens whose ids (tok) and positions (pos) are on the device (c->io
// or a sampling buffer), and whose output rows (n_out of them) are in c->io's third part; the
// logits end in c->logits (n_out, n_vocab). splits > 0 fixes the decode-attention split count
// (the graph's), else each layer picks for max_keys keys.
static sgllm_status sgllm__gpu_enqueue(sgllm__gpu_ctx *c, const int32_t *tok, const int32_t *pos, int32_t n,
                                       int32_t n_out, int64_t max_keys, int32_t splits) {
    const sgllm_model *m = c->m;
    const sgllm__gpu_model *gm = m->gpu;
    sgllm__cuda *cu = c->cu;
    const sgllm__cuda_dispatch *disp = sgllm__cuda_get_dispatch(cu);
    int64_t E = m->n_embd;
    const int32_t *rows = c->io + 2 * c->n_batch;
    sgllm_status s;
#define SGLLM__TRY(call)                                                                                                 \
    do {                                                                                                                 \
        if ((s = (call)) != SGLLM_OK) return s;                                                                         \
    } while (0)
    SGLLM__TRY(sgllm__cuda_embed(cu, m->tok_embd.type, gm->tok_embd, m->tok_embd.rows, E, tok, n, m->embd_scale, c->x));
    // every layer's decode attention on the tensor cores: each q/k/v product makes room for its
    // shared memory (sgllm__cuda_qkv_before_mma; SmolLM2-135M at 4096 keys 4-6% faster on the
    // H100). Only then: where some layers take the CUDA-core kernel (Gemma 3's windowed ones),
    // hinting the others measured slower and erratic (docs/PERF.md, tenth session)
    bool all_mma = n < disp->prefill_min_tokens;
    for (int32_t il = 0; il < m->n_layer && all_mma; il++) {
        const sgllm__layer *L = &m->layers[il];
        all_mma = sgllm__cuda_attn_mma(cu, L->head_dim, splits > 0 ? splits : sgllm__gpu_splits(cu, L, n, max_keys),
                                       sgllm__gpu_seen(L, max_keys));
    }
    const float *post_ffn = NULL; // the previous layer's post-FFN norm, applied with the next add
    for (int32_t il = 0; il < m->n_layer; il++) {
        const sgllm__layer *L = &m->layers[il];
        const sgllm__gpu_layer *G = &gm->layers[il];
        int32_t hd = L->head_dim;
        int64_t qd = (int64_t)L->n_head * hd, kvd = (int64_t)L->n_head_kv * hd;
        // the previous block's output (post-normed) joins the residual in the same pass as this
        // norm, which also quantizes its output for the q/k/v product (one launch fewer)
        SGLLM__TRY(sgllm__cuda_norm_add_rmsnorm_q(cu, c->x, il ? c->o : NULL, post_ffn, G->attn_norm, c->h, n, E, m->eps,
                                                  L->wq.type));
        {
            const uint32_t qkv_t[3] = {L->wq.type, L->wk.type, L->wv.type};
            const void *qkv_w[3] = {G->wq, G->wk, G->wv};
            const int64_t qkv_rows[3] = {qd, kvd, kvd};
            float *qkv_y[3] = {c->q, c->k, c->v};
            if (all_mma) sgllm__cuda_qkv_before_mma(cu, 1);
            SGLLM__TRY(sgllm__cuda_matvec_multi(cu, 3, qkv_t, qkv_w, qkv_rows, E, c->h, n, qkv_y));
        }
        // biases, q/k norms (both or neither: the families read them together), RoPE and the
        // cache write in one launch (the separate ops are its reference in tests/test_gpu.c)
        sgllm__cuda_qkv_post_args qa = {c->q, c->k, c->v, qd, kvd, L->n_head, L->n_head_kv, hd, G->bq, G->bk, G->bv,
                                        G->q_norm || G->k_norm, G->q_norm, G->k_norm, m->eps, L->n_rot, pos, n,
                                        L->rope_scale, L->rope_theta, m->rope_neox, c->k_cache[il], c->v_cache[il],
                                        c->page_table, SGLLM__KV_PAGE};
        if (n >= disp->prefill_min_tokens) {
            SGLLM__TRY(sgllm__cuda_qkv_post(cu, &qa));
            SGLLM__TRY(sgllm__cuda_attn_prefill(cu, c->q, c->k_cache[il], c->v_cache[il], c->page_table, SGLLM__KV_PAGE,
                                                L->n_head, L->n_head_kv, hd, pos, n, L->window, L->attn_scale, c->att));
        } else { // one launch for a single token (the attention kernel does qkv_post's work)
            int32_t sp = splits > 0 ? splits : sgllm__gpu_splits(cu, L, n, max_keys);
            SGLLM__TRY(sgllm__cuda_attn_decode_post(cu, &qa, L->window, L->attn_scale, sp, c->att, L->wo.type,
                                                    sgllm__gpu_seen(L, max_keys)));
        }
        SGLLM__TRY(sgllm__cuda_matmul(cu, L->wo.type, G->wo, E, qd, c->att, n, c->o));
        SGLLM__TRY(sgllm__cuda_norm_add_rmsnorm_q(cu, c->x, c->o, G->post_attn_norm, G->ffn_norm, c->h, n, E, m->eps,
                                                  L->w_gate.type));
        if (n > disp->matvec_max_batch) { // prefill: act(gate) * up reaches the down GEMM as bf16 in c->g
            SGLLM__TRY(sgllm__cuda_gemm_gated(cu, m->act == SGLLM__ACT_GELU_TANH ? SGLLM__CUDA_ACT_GELU_TANH : SGLLM__CUDA_ACT_SILU,
                                              L->w_gate.type, G->w_gate, L->w_up.type, G->w_up, L->n_ff, E, c->h, n, c->g,
                                              c->u));
            SGLLM__TRY(sgllm__cuda_gemm_x16(cu, L->w_down.type, G->w_down, E, L->n_ff, c->g, n, c->o));
        } else {
        SGLLM__TRY(sgllm__cuda_matvec_gated(cu, m->act == SGLLM__ACT_GELU_TANH ? SGLLM__CUDA_ACT_GELU_TANH : SGLLM__CUDA_ACT_SILU,
                                            L->w_gate.type, G->w_gate, L->w_up.type, G->w_up, L->n_ff, E, c->h, n, c->g,
                                            c->u));
        SGLLM__TRY(sgllm__cuda_matmul(cu, L->w_down.type, G->w_down, E, L->n_ff, c->g, n, c->o));
        }
        post_ffn = G->post_ffn_norm;
    }
    if (!n_out) return sgllm__cuda_norm_add_rmsnorm(cu, c->x, c->o, post_ffn, NULL, c->h, n, E, m->eps); // keeps x complete
    SGLLM__TRY(sgllm__cuda_norm_add_rmsnorm_q(cu, c->x, c->o, post_ffn, gm->output_norm, c->h, n, E, m->eps,
                                              m->output.type));
    const float *in = c->h;
    if (n_out < n) {
        SGLLM__TRY(sgllm__cuda_gather_rows(cu, c->h, rows, n_out, E, c->sel));
        in = c->sel;
    }
    SGLLM__TRY(sgllm__cuda_matmul(cu, m->output.type, gm->output, m->n_vocab, E, in, n_out, c->logits));
    if (m->final_softcap > 0)
        SGLLM__TRY(sgllm__cuda_softcap(cu, c->logits, (int64_t)n_out * m->n_vocab, m->final_softcap));
#undef SGLLM__TRY
    return SGLLM_OK;
}

// Runs n tokens (n <= n_batch) at positions pos0.. (pos0 + n <= n_ctx), as sgllm__cpu_forward:
// for every token i with want[i] set (want NULL: the last), a row of n_vocab logits goes to
// logits, in order.
static sgllm_status sgllm__gpu_forward(sgllm__gpu_ctx *c, const int32_t *tokens, int32_t n, int32_t pos0,
                                       const uint8_t *want, float *logits, sgllm__diag *d) {
    const sgllm_model *m = c->m;
    int32_t B = c->n_batch, n_out = 0;
    int32_t *tok = c->host_io, *pos = tok + B, *rows = tok + 2 * B;
    for (int32_t i = 0; i < n; i++) {
        tok[i] = tokens[i];
        pos[i] = pos0 + i;
        if (want ? want[i] : i == n - 1) rows[n_out++] = i;
    }
    // one upload of the three arrays: everything in front of rows[n_out] that the step reads
    sgllm_status s = sgllm__cuda_upload_async(c->cu, c->io, c->host_io, 3 * (size_t)B * sizeof(int32_t));
    if (!s && n == 1 && n_out == 1 && !c->graph_failed) {
        int64_t hz;
        void **graph = &c->graph[sgllm__gpu_tier(c, (int64_t)pos0 + 1, &hz)];
        if (!*graph) {
            s = sgllm__cuda_graph_begin(c->cu);
            sgllm_status se = s ? s : sgllm__gpu_enqueue(c, c->io, c->io + c->n_batch, 1, 1, hz,
                                                                sgllm__gpu_step_splits(c, hz));
            if (!s) s = sgllm__cuda_graph_end(c->cu, graph);
            if (se || s) { // capture refused (e.g. a driver without it): plain launches from now on
                sgllm__log(d, SGLLM_LOG_WARN, "CUDA graph capture failed (%s); decoding without a graph",
                           sgllm__cuda_errmsg(c->cu));
                c->graph_failed = true;
                s = SGLLM_OK;
            }
        }
        c->graph_last = *graph;
        if (*graph) s = sgllm__cuda_graph_launch(c->cu, *graph);
        else s = sgllm__gpu_enqueue(c, c->io, c->io + c->n_batch, n, n_out, pos0 + n, 0);
    } else if (!s) {
        s = sgllm__gpu_enqueue(c, c->io, c->io + c->n_batch, n, n_out, pos0 + n, 0);
    }
    if (!s && n_out) s = sgllm__cuda_download(c->cu, logits, c->logits, (size_t)n_out * (size_t)m->n_vocab * sizeof(float));
    if (!s && !n_out) s = sgllm__cuda_sync(c->cu);
    if (s) return sgllm__fail(d, s, "CUDA forward: %s", sgllm__cuda_errmsg(c->cu));
    return SGLLM_OK;
}

// Device sampling: the single-token step and the sampler run on the device and only the
// 4-byte token comes back. A generate loop's tokens are productions 0, 1, 2, ...: production 0
// samples from the last forward's logits, production i >= 1 evaluates token i - 1 and samples
// token i. Production i takes its position, sampler arguments and penalty list from buffer
// smp[(i + 1) % 2] and its input token from the same buffer's first int, where production
// i - 1's sampler wrote it; it writes token i to smp[i % 2]'s first int and to read-back slot
// i % 2 (mapped host memory, so no copy follows the step), and its position plus one to
// smp[i % 2]'s second. So the token never needs the host between steps: the host may enqueue
// production i + 1 before it reads token i (generate does when no penalty depends on the
// tokens). Production 0 draws with its arguments' uniform, productions i >= 1 with the one at
// their position (mod SGLLM__CUDA_SAMPLE_UNI) at their buffer's end, drawn ahead in blocks. A
// production uploads its buffer (all but the token slot) only when the host's shadow of that
// buffer differs or the position there is not the one it needs: decoding without penalties
// uploads nothing but the first two productions and, when sampled, the two after each block of
// uniforms (one every SGLLM__CUDA_SAMPLE_UNI / 2 tokens).
// The step graphs (one per input buffer, whose token and position the step reads in place, and
// per sampler: the one-launch argmax when the arguments are greedy without penalties, else the
// full one, with its penalty launches only when penalties are set: sgllm__gpu_smp_mode) hold the
// step and the sampler.
#define SGLLM__SMP_ARGS 16 // byte offset of the arguments in an smp buffer

// Bytes of an smp buffer for penalty lists of up to cap tokens; its uniforms start at
// sgllm__smp_bytes(cap) - SGLLM__CUDA_SAMPLE_UNI * 8 (8-byte aligned: the arguments are).
static size_t sgllm__smp_bytes(int32_t cap) {
    return SGLLM__SMP_ARGS + sizeof(sgllm__cuda_sample_args) + 2 * (size_t)cap * sizeof(int32_t) +
           SGLLM__CUDA_SAMPLE_UNI * sizeof(double);
}

// Makes the buffers for penalty lists of up to cap tokens (at least 64). A longer list than
// before replaces the buffers and graphs, so it must come before a generate loop's first
// production, never between two.
static sgllm_status sgllm__gpu_sample_prepare(sgllm__gpu_ctx *c, int32_t cap, sgllm__diag *d) {
    sgllm_status s = SGLLM_OK;
    if (cap < 64) cap = 64;
    if (!c->smp_work) s = sgllm__gpu_alloc(c, sgllm__cuda_sample_work_bytes(c->m->n_vocab), &c->smp_work);
    c->smp_uni_lo = c->smp_uni_hi = 0; // a new generate: a new sampler, no uniforms drawn yet
    if (!s && cap > c->smp_cap) {
        size_t bytes = sgllm__smp_bytes(cap);
        unsigned char *h = (unsigned char *)sgllm__calloc(bytes, 3);
        if (!h) return sgllm__fail(d, SGLLM_ERR_OUT_OF_MEMORY, "out of memory");
        sgllm__free(c->smp_host);
        c->smp_host = h;
        c->smp_cap = 0;
        c->smp_known[0] = c->smp_known[1] = false;
        for (int t = 0; t < SGLLM__GPU_TIERS; t++)
            for (int g = 0; g < SGLLM__GPU_SMP_MODES; g++)
                for (int b = 0; b < 2; b++) {
                    sgllm__cuda_graph_free(c->cu, c->smp_graph[t][g][b]);
                    c->smp_graph[t][g][b] = NULL;
                }
        for (int b = 0; b < 2 && !s; b++) s = sgllm__gpu_alloc(c, bytes, &c->smp[b]);
        if (!s) c->smp_cap = cap;
    }
    if (s) return sgllm__fail(d, s, "CUDA sampler: %s", sgllm__cuda_errmsg(c->cu));
    return SGLLM_OK;
}

// Whether the uniform of position pos is in the window of drawn uniforms (sgllm__gpu_produce).
static bool sgllm__gpu_uni_holds(const sgllm__gpu_ctx *c, int32_t pos) {
    return c->smp_uni_lo <= pos && pos < c->smp_uni_hi;
}

// The sampler these arguments take: 0 greedy without penalties (sgllm__cuda_sample_greedy), 1
// the full sampler without penalties (no penalty list: it reads the logits as they are), 2 the
// full sampler with its penalty list (a copy of the logits, then the penalties).
static int sgllm__gpu_smp_mode(const sgllm__cuda_sample_args *a) {
    bool pen = a->repeat_penalty != 1 || a->frequency_penalty != 0 || a->presence_penalty != 0;
    return pen ? 2 : a->temperature <= 0 ? 0 : 1;
}

// Enqueues the sampler (mode: sgllm__gpu_smp_mode) over the first row of c->logits with buffer
// b's arguments (greedy: the one-launch argmax, which reads none); the token goes to the first
// int of buffer 1 - b and to read-back slot 1 - b, buffer b's position plus one to buffer 1 - b's
// position. With ring, the draw's uniform is the one for buffer b's position at its end
// (productions >= 1), else the arguments'.
static sgllm_status sgllm__gpu_sample_enqueue(sgllm__gpu_ctx *c, int b, int mode, bool ring) {
    unsigned char *buf = (unsigned char *)c->smp[b];
    const double *uni = (const double *)(buf + sgllm__smp_bytes(c->smp_cap) - sizeof c->smp_uni);
    sgllm__cuda_sample_out out = {(int32_t *)c->smp[1 - b], (const int32_t *)buf + 1,
                                  sgllm__cuda_readback_slot(c->cu, 1 - b), ring ? uni : NULL};
    if (!out.host) return SGLLM_ERR_BACKEND; // (a context always has its slots)
    if (mode == 0) return sgllm__cuda_sample_greedy(c->cu, c->logits, c->m->n_vocab, c->smp_work, out);
    const sgllm__cuda_sample_args *args = (const sgllm__cuda_sample_args *)(buf + SGLLM__SMP_ARGS);
    const int32_t *pen = mode == 2 ? (const int32_t *)(buf + SGLLM__SMP_ARGS + sizeof *args) : NULL;
    return sgllm__cuda_sample(c->cu, c->logits, c->m->n_vocab, args, pen, pen ? pen + c->smp_cap : NULL, c->smp_work,
                              out);
}

// The single-token step reading its token and position from buffer b, then the sampler; the
// step serves positions of up to horizon keys (a graph tier's, sgllm__gpu_tier).
static sgllm_status sgllm__gpu_step_sample_enqueue(sgllm__gpu_ctx *c, int b, int mode, int64_t horizon) {
    const int32_t *src = (const int32_t *)c->smp[b];
    sgllm_status s = sgllm__gpu_enqueue(c, src, src + 1, 1, 1, horizon, sgllm__gpu_step_splits(c, horizon));
    return s ? s : sgllm__gpu_sample_enqueue(c, b, mode, true);
}

// Enqueues production i (see above) with its position pos (i >= 1: where token i - 1 goes),
// sampler arguments and penalty list (pen: n_pen tokens, then their counts), and the read-back
// of its token; sgllm__gpu_produced waits for that token. sgllm__gpu_sample_prepare comes first.
// Production 0 draws with args->u; productions i >= 1 with the uniform of their position in
// smp_uni, whose window [smp_uni_lo, smp_uni_hi) must hold pos unless n_uni uniforms for
// positions pos, pos + 1, ... come with this call (they replace the window).
static sgllm_status sgllm__gpu_produce(sgllm__gpu_ctx *c, int64_t i, int32_t pos, const sgllm__cuda_sample_args *args,
                                       const int32_t *pen_tokens, const int32_t *pen_counts, const double *uni,
                                       int n_uni, sgllm__diag *d) {
    if (args->n_pen < 0 || args->n_pen > c->smp_cap)
        return sgllm__fail(d, SGLLM_ERR_INVALID_ARGUMENT, "CUDA sampler: %d penalized tokens, room for %d",
                           (int)args->n_pen, (int)c->smp_cap);
    if (n_uni < 0 || n_uni > SGLLM__CUDA_SAMPLE_UNI / 2 || (n_uni && (!uni || i == 0)) ||
        (i > 0 && args->temperature > 0 && !n_uni && !sgllm__gpu_uni_holds(c, pos)))
        return sgllm__fail(d, SGLLM_ERR_INVALID_ARGUMENT, "CUDA sampler: %d uniforms for position %d", n_uni, (int)pos);
    int b = (int)((i + 1) % 2);
    if (n_uni) { // positions before pos are done by the time this production's upload lands
        for (int k = 0; k < n_uni; k++) c->smp_uni[((uint32_t)pos + (uint32_t)k) % SGLLM__CUDA_SAMPLE_UNI] = uni[k];
        c->smp_uni_lo = pos, c->smp_uni_hi = pos + n_uni;
    }
    int32_t head[4] = {0, pos, 0, 0};
    size_t bytes = sgllm__smp_bytes(c->smp_cap);
    memcpy(c->smp_host, head, sizeof head);
    memcpy(c->smp_host + SGLLM__SMP_ARGS, args, sizeof *args);
    int32_t *pen = (int32_t *)(c->smp_host + SGLLM__SMP_ARGS + sizeof *args);
    memcpy(pen, pen_tokens, (size_t)args->n_pen * sizeof(int32_t));
    memcpy(pen + c->smp_cap, pen_counts, (size_t)args->n_pen * sizeof(int32_t));
    memcpy(c->smp_host + bytes - sizeof c->smp_uni, c->smp_uni, sizeof c->smp_uni);
    // everything but the token slot, which the previous production's sampler fills; nothing when
    // the buffer holds these bytes already (the position from the previous production's sampler)
    unsigned char *shadow = c->smp_host + (size_t)(1 + b) * bytes;
    sgllm_status s = SGLLM_OK;
    if (!c->smp_known[b] || c->smp_pos[b] != pos || memcmp(shadow + 8, c->smp_host + 8, bytes - 8)) {
        s = sgllm__cuda_upload_async(c->cu, (unsigned char *)c->smp[b] + sizeof(int32_t), c->smp_host + sizeof(int32_t),
                                     bytes - sizeof(int32_t));
        if (!s) memcpy(shadow, c->smp_host, bytes);
    }
    c->smp_known[b] = !s;
    c->smp_pos[b] = pos;
    const int mode = sgllm__gpu_smp_mode(args);
    int64_t hz;
    void **graph = &c->smp_graph[sgllm__gpu_tier(c, (int64_t)pos + 1, &hz)][mode][b];
    if (!s && i == 0) {
        s = sgllm__gpu_sample_enqueue(c, b, mode, false);
    } else if (!s) {
        if (!*graph && !c->smp_graph_failed) {
            s = sgllm__cuda_graph_begin(c->cu);
            sgllm_status se = s ? s : sgllm__gpu_step_sample_enqueue(c, b, mode, hz);
            if (!s) s = sgllm__cuda_graph_end(c->cu, graph);
            if (se || s) { // capture refused: plain launches from now on
                sgllm__log(d, SGLLM_LOG_WARN, "CUDA graph capture of the sampling step failed (%s)",
                           sgllm__cuda_errmsg(c->cu));
                c->smp_graph_failed = true;
                s = SGLLM_OK;
            }
        }
        c->smp_graph_last = *graph;
        s = *graph ? sgllm__cuda_graph_launch(c->cu, *graph) : sgllm__gpu_step_sample_enqueue(c, b, mode, hz);
    }
    if (!s) s = sgllm__cuda_readback_mark(c->cu, 1 - b);
    // the sampler writes the position after pos into buffer 1 - b; its other bytes stay
    c->smp_pos[1 - b] = pos + 1;
    if (s) {
        c->smp_known[0] = c->smp_known[1] = false;
        return sgllm__fail(d, s, "CUDA sampler: %s", sgllm__cuda_errmsg(c->cu));
    }
    return SGLLM_OK;
}

// Waits for production i's token (productions after it may still run).
static sgllm_status sgllm__gpu_produced(sgllm__gpu_ctx *c, int64_t i, int32_t *token, sgllm__diag *d) {
    sgllm_status s = sgllm__cuda_readback_wait(c->cu, (int)(i % 2), token, sizeof *token);
    if (s) return sgllm__fail(d, s, "CUDA sampler: %s", sgllm__cuda_errmsg(c->cu));
    return SGLLM_OK;
}

#else // no CUDA in this build: the CPU is the only backend

static const char *sgllm__cuda_unavailable(void) {
    return "SGLLM_BACKEND_CUDA: this build of sgllm has no CUDA backend (build with nvcc, which defines "
           "SGLLM_CUDA and links sgllm_cuda.cu)";
}

static sgllm_status sgllm__gpu_model_init(sgllm_model *m, sgllm_backend want, const char *kernel_config) {
    (void)kernel_config;
    m->backend = SGLLM_BACKEND_CPU;
    if (want == SGLLM_BACKEND_CUDA) return sgllm__fail(&m->diag, SGLLM_ERR_BACKEND, "%s", sgllm__cuda_unavailable());
    snprintf(m->device_info, sizeof m->device_info, "cpu (%s; this build has no CUDA backend)",
             want == SGLLM_BACKEND_CPU ? "requested" : "auto");
    return SGLLM_OK;
}

static void sgllm__gpu_model_free(sgllm_model *m) { (void)m; }

sgllm_status sgllm__device_ceilings(int reps, double *read_bps, double *bf16_flops, char *name, size_t name_size,
                                    char *err, size_t err_size) {
    (void)reps, (void)read_bps, (void)bf16_flops;
    if (name && name_size) name[0] = 0;
    sgllm__diag d = sgllm__diag_from_err();
    return sgllm__ceiling_fail(&d, SGLLM_ERR_BACKEND, sgllm__cuda_unavailable(), err, err_size);
}

#endif // SGLLM_CUDA


// --- 9. Public API -------------------------------------------------------------------------
// Handles and the calls of sgllm.h: argument checks, error messages and the generate loop.

static sgllm__diag sgllm__diag_from(sgllm_log_fn log, void *user, sgllm_log_level level) {
    sgllm__diag d;
    memset(&d, 0, sizeof d);
    d.log = log;
    d.log_user = user;
    d.level = level;
    return d;
}

void sgllm_model_default_params(sgllm_model_params *p) {
    if (!p) return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->backend = SGLLM_BACKEND_AUTO;
    p->log_level = SGLLM_LOG_INFO;
}

void sgllm_model_free(sgllm_model *m) {
    if (!m) return;
    sgllm__gpu_model_free(m);
    for (ptrdiff_t i = 0; i < arrlen(m->owned); i++) sgllm__free(m->owned[i]);
    arrfree(m->owned);
    sgllm__free(m->layers);
    sgllm__free(m->gelu_f16);
    sgllm__free(m->name);
    sgllm__free(m->chat_template);
    sgllm__vocab_free(&m->vocab);
    sgllm__gguf_close(&m->gguf);
    sgllm__free(m);
}

sgllm_status sgllm_model_load(const sgllm_model_params *p, sgllm_model **out, char *err, size_t err_size) {
    if (err && err_size) err[0] = 0;
    if (out) *out = NULL;
    sgllm__diag d = sgllm__diag_from(p ? p->log : NULL, p ? p->log_user_data : NULL, p ? p->log_level : SGLLM_LOG_ERROR);
    sgllm_status s = SGLLM_OK;
    sgllm_model *m = NULL;
    if (!p || !out || !p->path || p->struct_size < sizeof *p) {
        s = sgllm__fail(&d, SGLLM_ERR_INVALID_ARGUMENT, "sgllm_model_load: params, path and out_model are required "
                        "(initialize params with sgllm_model_default_params)");
        goto done;
    }
    if (p->backend != SGLLM_BACKEND_AUTO && p->backend != SGLLM_BACKEND_CPU && p->backend != SGLLM_BACKEND_CUDA) {
        s = sgllm__fail(&d, SGLLM_ERR_INVALID_ARGUMENT, "sgllm_model_load: unknown backend %d", (int)p->backend);
        goto done;
    }
    if (p->backend == SGLLM_BACKEND_CUDA && sgllm__cuda_unavailable()) {
        s = sgllm__fail(&d, SGLLM_ERR_BACKEND, "%s", sgllm__cuda_unavailable());
        goto done;
    }
    if (!(m = (sgllm_model *)sgllm__calloc(1, sizeof *m))) {
        s = sgllm__fail(&d, SGLLM_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    m->diag = d;
    double t0 = sgllm__now();
    if ((s = sgllm__gguf_open(&m->gguf, p->path, &m->diag))) goto done;
    sgllm__str arch, str;
    if (!sgllm__gguf_string(&m->gguf, "general.architecture", &arch)) {
        s = sgllm__fail(&m->diag, SGLLM_ERR_FORMAT, "missing metadata 'general.architecture'");
        goto done;
    }
    for (size_t i = 0; i < sizeof sgllm__families / sizeof sgllm__families[0]; i++)
        if (sgllm__str_eq(arch, sgllm__families[i].arch)) m->family = &sgllm__families[i];
    if (!m->family) {
        s = sgllm__fail(&m->diag, SGLLM_ERR_UNSUPPORTED, "architecture '%.*s' is not supported (sgllm runs llama, qwen2, "
                        "qwen3, gemma3)", (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);
        goto done;
    }
    snprintf(m->arch, sizeof m->arch, "%s", m->family->arch);
    m->name = sgllm__gguf_string(&m->gguf, "general.name", &str) ? sgllm__strndup(str.ptr, (size_t)str.len)
                                                                  : sgllm__strndup("", 0);
    if (sgllm__gguf_string(&m->gguf, "tokenizer.chat_template", &str))
        m->chat_template = sgllm__strndup(str.ptr, (size_t)str.len);
    if (!m->name) {
        s = sgllm__fail(&m->diag, SGLLM_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    if (p->progress && p->progress(p->progress_user_data, 0.05f)) {
        s = sgllm__fail(&m->diag, SGLLM_ERR_CANCELLED, "load cancelled by the progress callback");
        goto done;
    }
    if ((s = sgllm__vocab_load(&m->vocab, &m->gguf, &m->diag))) goto done;
    if (p->progress && p->progress(p->progress_user_data, 0.2f)) {
        s = sgllm__fail(&m->diag, SGLLM_ERR_CANCELLED, "load cancelled by the progress callback");
        goto done;
    }
    if ((s = sgllm__model_describe(m, p->progress, p->progress_user_data))) goto done;
    if (m->act == SGLLM__ACT_GELU_TANH && !(m->gelu_f16 = sgllm__gelu_table())) {
        s = sgllm__fail(&m->diag, SGLLM_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    if ((s = sgllm__gpu_model_init(m, p->backend, p->kernel_config))) goto done;
    if (m->diag.log && m->diag.level >= SGLLM_LOG_INFO) m->diag.log(m->diag.log_user, SGLLM_LOG_INFO, m->device_info);
    sgllm__log(&m->diag, SGLLM_LOG_INFO, "loaded %s (%s): %d layers, %d embd, %d vocab, backend %s, %.2f s", p->path,
               m->arch, m->n_layer, m->n_embd, m->n_vocab, m->backend == SGLLM_BACKEND_CUDA ? "cuda" : "cpu",
               sgllm__now() - t0);
done:
    if (s != SGLLM_OK) {
        if (err && err_size) snprintf(err, err_size, "%s", m ? m->diag.msg : d.msg);
        sgllm_model_free(m);
        return s;
    }
    *out = m;
    return SGLLM_OK;
}

sgllm_status sgllm_model_load_synthetic(const char *preset, const char *weight_type, uint64_t seed,
                                        const sgllm_model_params *p, sgllm_model **out, char *err, size_t err_size) {
    if (err && err_size) err[0] = 0;
    if (out) *out = NULL;
    sgllm__diag d = sgllm__diag_from(p ? p->log : NULL, p ? p->log_user_data : NULL, p ? p->log_level : SGLLM_LOG_ERROR);
    sgllm_status s = SGLLM_OK;
    sgllm_model *m = NULL;
    const sgllm__preset *pr = sgllm__preset_find(preset);
    bool k_mix = false;
    uint32_t wtype = sgllm__synth_type(weight_type, &k_mix);
    if (!p || !out || p->struct_size < sizeof *p) {
        s = sgllm__fail(&d, SGLLM_ERR_INVALID_ARGUMENT, "sgllm_model_load_synthetic: params and out_model are required "
                        "(initialize params with sgllm_model_default_params)");
        goto done;
    }
    if (!pr || wtype == SGLLM__T_COUNT) {
        char known[256] = "";
        size_t used = 0;
        if (!pr)
            for (size_t i = 0; i < sizeof sgllm__presets / sizeof sgllm__presets[0] && used < sizeof known; i++)
                used += (size_t)snprintf(known + used, sizeof known - used, "%s%s", i ? ", " : "", sgllm__presets[i].name);
        else
            for (size_t i = 0; i < sizeof sgllm__synth_types / sizeof sgllm__synth_types[0] && used < sizeof known; i++)
                used += (size_t)snprintf(known + used, sizeof known - used, "%s%s", i ? ", " : "",
                                         sgllm__synth_types[i].name);
        s = sgllm__fail(&d, SGLLM_ERR_INVALID_ARGUMENT, "sgllm_model_load_synthetic: unknown %s '%.64s' (known: %s)",
                        pr ? "weight type" : "preset", pr ? (weight_type ? weight_type : "(null)")
                                                          : (preset ? preset : "(null)"), known);
        goto done;
    }
    if (p->backend != SGLLM_BACKEND_AUTO && p->backend != SGLLM_BACKEND_CUDA) {
        s = sgllm__fail(&d, SGLLM_ERR_BACKEND, "sgllm_model_load_synthetic: a synthetic model's weights live on the GPU "
                        "only (backend must be AUTO or CUDA)");
        goto done;
    }
    if (sgllm__cuda_unavailable()) {
        s = sgllm__fail(&d, SGLLM_ERR_BACKEND, "sgllm_model_load_synthetic needs the GPU: %s", sgllm__cuda_unavailable());
        goto done;
    }
    if (!(m = (sgllm_model *)sgllm__calloc(1, sizeof *m))) {
        s = sgllm__fail(&d, SGLLM_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    m->diag = d;
    double t0 = sgllm__now();
    char name[128];
    snprintf(name, sizeof name, "synthetic %s %s seed %llu", pr->name, weight_type, (unsigned long long)seed);
    if (!(m->name = sgllm__strndup(name, strlen(name)))) {
        s = sgllm__fail(&m->diag, SGLLM_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    if ((s = sgllm__model_describe_preset(m, pr, wtype, k_mix, seed))) goto done;
    if ((s = sgllm__gpu_model_init(m, SGLLM_BACKEND_CUDA, p->kernel_config))) goto done;
    if (m->diag.log && m->diag.level >= SGLLM_LOG_INFO) m->diag.log(m->diag.log_user, SGLLM_LOG_INFO, m->device_info);
    sgllm__log(&m->diag, SGLLM_LOG_INFO, "made %s (%s): %d layers, %d embd, %d vocab, on the GPU, %.2f s", m->name,
               m->arch, m->n_layer, m->n_embd, m->n_vocab, sgllm__now() - t0);
done:
    if (s != SGLLM_OK) {
        if (err && err_size) snprintf(err, err_size, "%s", m ? m->diag.msg : d.msg);
        sgllm_model_free(m);
        return s;
    }
    *out = m;
    return SGLLM_OK;
}

const char *sgllm_model_architecture(const sgllm_model *m) { return m ? m->arch : ""; }
const char *sgllm_model_name(const sgllm_model *m) { return m ? m->name : ""; }
int32_t sgllm_model_n_vocab(const sgllm_model *m) { return m ? m->n_vocab : 0; }
int32_t sgllm_model_n_ctx_train(const sgllm_model *m) { return m ? m->n_ctx_train : 0; }
int32_t sgllm_model_n_layer(const sgllm_model *m) { return m ? m->n_layer : 0; }
int32_t sgllm_model_n_embd(const sgllm_model *m) { return m ? m->n_embd : 0; }
const char *sgllm_model_chat_template(const sgllm_model *m) { return m ? m->chat_template : NULL; }
sgllm_backend sgllm_model_backend(const sgllm_model *m) { return m ? m->backend : SGLLM_BACKEND_AUTO; }
const char *sgllm_model_device_info(const sgllm_model *m) { return m ? m->device_info : ""; }

sgllm_status sgllm_tokenize(const sgllm_model *m, const char *text, size_t len, int flags, sgllm_token *tokens,
                            int32_t capacity, int32_t *n_tokens) {
    if (n_tokens) *n_tokens = 0;
    if (!m || (!text && len) || capacity < 0 || (capacity && !tokens) || !n_tokens) return SGLLM_ERR_INVALID_ARGUMENT;
    if (!m->vocab.kind) return SGLLM_ERR_UNSUPPORTED; // a synthetic model has no tokenizer
    int64_t n = sgllm__tokenize(&m->vocab, text ? text : "", len, (flags & SGLLM_TOKENIZE_ADD_BOS) != 0,
                                (flags & SGLLM_TOKENIZE_PARSE_SPECIAL) != 0, tokens, capacity);
    if (n < 0) return SGLLM_ERR_OUT_OF_MEMORY;
    if (n > INT32_MAX) return SGLLM_ERR_INVALID_ARGUMENT;
    *n_tokens = (int32_t)n;
    return n > capacity ? SGLLM_ERR_BUFFER_TOO_SMALL : SGLLM_OK;
}

const char *sgllm_token_piece(const sgllm_model *m, sgllm_token t, size_t *len) {
    size_t dummy;
    if (!len) len = &dummy;
    *len = 0;
    return m ? sgllm__vocab_piece(&m->vocab, t, len) : NULL;
}

sgllm_status sgllm_detokenize(const sgllm_model *m, const sgllm_token *tokens, int32_t n, int render_special, char *buf,
                              size_t capacity, size_t *text_len) {
    if (text_len) *text_len = 0;
    if (!m || n < 0 || (n && !tokens) || (capacity && !buf) || !text_len) return SGLLM_ERR_INVALID_ARGUMENT;
    size_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        size_t len;
        const char *piece = sgllm__vocab_piece(&m->vocab, tokens[i], &len);
        if (!piece) return SGLLM_ERR_INVALID_ARGUMENT;
        if (!render_special && sgllm__vocab_is_control(&m->vocab, tokens[i])) continue;
        if (total < capacity) memcpy(buf + total, piece, len < capacity - total ? len : capacity - total);
        total += len;
    }
    *text_len = total;
    if (total < capacity) buf[total] = 0;
    return total + 1 > capacity ? SGLLM_ERR_BUFFER_TOO_SMALL : SGLLM_OK;
}

sgllm_token sgllm_token_bos(const sgllm_model *m) { return m ? m->vocab.bos : -1; }
sgllm_token sgllm_token_eos(const sgllm_model *m) { return m ? m->vocab.eos : -1; }
int sgllm_token_is_eog(const sgllm_model *m, sgllm_token t) { return m && sgllm__vocab_is_eog(&m->vocab, t); }
int sgllm_token_is_control(const sgllm_model *m, sgllm_token t) { return m && sgllm__vocab_is_control(&m->vocab, t); }

struct sgllm_context {
    const sgllm_model *model;
    sgllm__diag diag;
    sgllm__cpu cpu;                // the CPU backend's state (unused on CUDA)
#ifdef SGLLM_CUDA
    sgllm__gpu_ctx *gpu;           // the CUDA backend's state, or NULL on the CPU
#endif
    int32_t n_ctx, n_batch;
    sgllm_token *history; // (n_ctx) the tokens of the sequence, in order
    int32_t n_past;       // tokens in the sequence (and in the KV cache)
    float *logits;        // (n_vocab) last-token logits for generate
    uint8_t *mask;        // (n_batch) which tokens of a chunk produce logits
};

void sgllm_context_default_params(sgllm_context_params *p) {
    if (!p) return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->n_batch = 256;
}

void sgllm_context_free(sgllm_context *ctx) {
    if (!ctx) return;
    sgllm__cpu_free(&ctx->cpu);
#ifdef SGLLM_CUDA
    sgllm__gpu_ctx_free(ctx->gpu);
#endif
    sgllm__free(ctx->history);
    sgllm__free(ctx->logits);
    sgllm__free(ctx->mask);
    sgllm__free(ctx);
}

sgllm_status sgllm_context_create(const sgllm_model *m, const sgllm_context_params *p, sgllm_context **out) {
    if (out) *out = NULL;
    if (!m || !p || !out || p->struct_size < sizeof *p || p->n_ctx < 0 || p->n_batch < 0 || p->n_threads < 0)
        return SGLLM_ERR_INVALID_ARGUMENT;
    sgllm_context *ctx = (sgllm_context *)sgllm__calloc(1, sizeof *ctx);
    if (!ctx) return SGLLM_ERR_OUT_OF_MEMORY;
    ctx->model = m;
    ctx->diag = m->diag;
    if (p->log) {
        ctx->diag.log = p->log;
        ctx->diag.log_user = p->log_user_data;
    }
    ctx->n_ctx = p->n_ctx ? p->n_ctx : (m->n_ctx_train < 4096 ? m->n_ctx_train : 4096);
    ctx->n_batch = p->n_batch ? p->n_batch : 256;
    if (ctx->n_batch > ctx->n_ctx) ctx->n_batch = ctx->n_ctx;
    int threads = p->n_threads ? p->n_threads : sgllm__n_cpus();
    sgllm_status s;
#ifdef SGLLM_CUDA
    if (m->backend == SGLLM_BACKEND_CUDA) s = sgllm__gpu_ctx_create(m, ctx->n_ctx, ctx->n_batch, &ctx->diag, &ctx->gpu);
    else
#endif
        s = sgllm__cpu_init(&ctx->cpu, m, ctx->n_ctx, ctx->n_batch, threads, &ctx->diag);
    if (s == SGLLM_OK && (!(ctx->history = (sgllm_token *)sgllm__calloc((size_t)ctx->n_ctx, sizeof(sgllm_token))) ||
                          !(ctx->logits = (float *)sgllm__calloc((size_t)m->n_vocab, sizeof(float))) ||
                          !(ctx->mask = (uint8_t *)sgllm__calloc((size_t)ctx->n_batch, 1))))
        s = SGLLM_ERR_OUT_OF_MEMORY;
    if (s != SGLLM_OK) {
        sgllm_context_free(ctx);
        return s;
    }
    if (ctx->cpu.pool)
        sgllm__log(&ctx->diag, SGLLM_LOG_INFO, "context: %d tokens, batch %d, %d threads", ctx->n_ctx, ctx->n_batch,
                   ctx->cpu.pool->n_threads);
    else
        sgllm__log(&ctx->diag, SGLLM_LOG_INFO, "context: %d tokens, batch %d, on the GPU", ctx->n_ctx, ctx->n_batch);
    *out = ctx;
    return SGLLM_OK;
}

const char *sgllm_context_errmsg(const sgllm_context *ctx) { return ctx ? ctx->diag.msg : "no context"; }
int32_t sgllm_context_n_ctx(const sgllm_context *ctx) { return ctx ? ctx->n_ctx : 0; }
int32_t sgllm_context_length(const sgllm_context *ctx) { return ctx ? ctx->n_past : 0; }

sgllm_status sgllm_context_rewind(sgllm_context *ctx, int32_t n_keep) {
    if (!ctx) return SGLLM_ERR_INVALID_ARGUMENT;
    if (n_keep < 0 || n_keep > ctx->n_past)
        return sgllm__fail(&ctx->diag, SGLLM_ERR_INVALID_ARGUMENT, "rewind to %d: the sequence has %d tokens", (int)n_keep,
                           (int)ctx->n_past);
    ctx->n_past = n_keep;
    return SGLLM_OK;
}

// A rewind may have gone further back than a sliding-window layer's ring still reaches: then
// the sequence's tokens run through the model again (no logits) to rebuild the cache.
static void sgllm__cpu_kv_restore(sgllm_context *ctx) {
    if (ctx->n_past == 0) sgllm__cpu_kv_clear(&ctx->cpu);
    if (sgllm__cpu_kv_intact(&ctx->cpu, ctx->n_past)) return;
    sgllm__log(&ctx->diag, SGLLM_LOG_DEBUG, "recomputing %d tokens: the sliding-window cache no longer holds them",
               (int)ctx->n_past);
    sgllm__cpu_kv_clear(&ctx->cpu);
    memset(ctx->mask, 0, (size_t)ctx->n_batch);
    for (int32_t b = 0; b < ctx->n_past; b += ctx->n_batch) {
        int32_t nb = ctx->n_past - b < ctx->n_batch ? ctx->n_past - b : ctx->n_batch;
        sgllm__cpu_forward(&ctx->cpu, ctx->history + b, nb, b, ctx->mask, NULL);
    }
}

sgllm_status sgllm_evaluate(sgllm_context *ctx, const sgllm_token *tokens, int32_t n, const uint8_t *want, float *logits) {
    if (!ctx) return SGLLM_ERR_INVALID_ARGUMENT;
    ctx->diag.msg[0] = 0;
    if (n < 0 || (n && !tokens))
        return sgllm__fail(&ctx->diag, SGLLM_ERR_INVALID_ARGUMENT, "sgllm_evaluate: bad token array");
    if (n > ctx->n_ctx - ctx->n_past)
        return sgllm__fail(&ctx->diag, SGLLM_ERR_CONTEXT_FULL, "%d tokens do not fit: the context holds %d of %d",
                           (int)n, (int)ctx->n_past, (int)ctx->n_ctx);
    int32_t n_want = 0;
    for (int32_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= ctx->model->n_vocab)
            return sgllm__fail(&ctx->diag, SGLLM_ERR_INVALID_ARGUMENT, "token %d at index %d is out of range [0, %d)",
                               (int)tokens[i], (int)i, (int)ctx->model->n_vocab);
        n_want += want ? want[i] != 0 : i == n - 1;
    }
    if (n_want && !logits) return sgllm__fail(&ctx->diag, SGLLM_ERR_INVALID_ARGUMENT, "sgllm_evaluate: logits is NULL");
#ifdef SGLLM_CUDA
    if (!ctx->gpu)
#endif
        sgllm__cpu_kv_restore(ctx);
    float *out = logits;
    for (int32_t b = 0; b < n; b += ctx->n_batch) {
        int32_t nb = n - b < ctx->n_batch ? n - b : ctx->n_batch, rows = 0;
        for (int32_t i = 0; i < nb; i++) rows += (ctx->mask[i] = want ? want[b + i] != 0 : b + i == n - 1);
#ifdef SGLLM_CUDA
        if (ctx->gpu) {
            sgllm_status s = sgllm__gpu_forward(ctx->gpu, tokens + b, nb, ctx->n_past + b, ctx->mask, rows ? out : NULL,
                                                &ctx->diag);
            if (s) return s; // the cache rows past n_past are unused, so the sequence is as it was
        } else
#endif
            sgllm__cpu_forward(&ctx->cpu, tokens + b, nb, ctx->n_past + b, ctx->mask, rows ? out : NULL);
        out += (size_t)rows * (size_t)ctx->model->n_vocab;
    }
    memcpy(ctx->history + ctx->n_past, tokens, (size_t)n * sizeof(sgllm_token));
    ctx->n_past += n;
    return SGLLM_OK;
}

void sgllm_generate_default_params(sgllm_generate_params *p) {
    if (!p) return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->max_tokens = 256;
    p->flags = SGLLM_TOKENIZE_ADD_BOS | SGLLM_TOKENIZE_PARSE_SPECIAL;
    sgllm_sampler_default_params(&p->sampler);
}

// Length of the prefix of s[0..n) that does not end inside a UTF-8 sequence, so streamed
// pieces never split a character.
static size_t sgllm__utf8_complete(const char *s, size_t n) {
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        unsigned char c = (unsigned char)s[n - k];
        if ((c & 0xC0) == 0x80) continue;
        size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return need > k ? n - k : n;
    }
    return n;
}

// The sampler's next draw as device arguments: its parameters, with draw the uniform it would
// draw (one per non-greedy sample, as sgllm_sampler_sample; else 0 and none drawn), and the
// distinct tokens of its penalty window with their counts (tok, cnt: penalty_last_n each), as
// section 6 penalizes.
SGLLM__MAYBE_UNUSED static void sgllm__sampler_device_args(sgllm_sampler *s, sgllm__cuda_sample_args *a, int32_t *tok,
                                                           int32_t *cnt, bool draw) {
    const sgllm_sampler_params *p = &s->params;
    memset(a, 0, sizeof *a);
    a->temperature = p->temperature;
    a->top_k = p->top_k;
    a->top_p = p->top_p;
    a->min_p = p->min_p;
    a->repeat_penalty = p->repeat_penalty;
    a->frequency_penalty = p->frequency_penalty;
    a->presence_penalty = p->presence_penalty;
    a->u = draw && p->temperature > 0 ? sgllm__rng_uniform(&s->rng) : 0;
    if (sgllm__sampler_has_penalties(s)) a->n_pen = sgllm__sampler_penalty_list(s, tok, cnt);
}

#ifdef SGLLM_CUDA
// Enqueues production i of sgllm_generate's tokens on the GPU (sgllm__gpu_produce) with the
// sampler's next draw: i = 0 samples from the last forward's logits, i >= 1 evaluates token
// i - 1 at position pos first. The caller records that token in the history once it keeps it.
// Production 0's uniform goes with its arguments; later ones are drawn ahead, half the device's
// window at a time, for positions pos, pos + 1, ...: the same draws in the same order (one a
// production, as the CPU draws one a token), and no upload a token for them.
static sgllm_status sgllm__generate_gpu_produce(sgllm_context *ctx, sgllm_sampler *smp, int64_t i, int32_t pos) {
    sgllm__gpu_ctx *g = ctx->gpu;
    sgllm_status s = i == 0 ? sgllm__gpu_sample_prepare(g, smp->params.penalty_last_n, &ctx->diag) : SGLLM_OK;
    if (s) return s;
    const bool ahead = i > 0 && smp->params.temperature > 0;
    sgllm__cuda_sample_args a; // the penalty list goes through the sampler's own scratch
    sgllm__sampler_device_args(smp, &a, smp->pen_tokens, smp->pen_counts, !ahead);
    double uni[SGLLM__CUDA_SAMPLE_UNI / 2];
    int n_uni = 0;
    if (ahead && !sgllm__gpu_uni_holds(g, pos))
        for (; n_uni < SGLLM__CUDA_SAMPLE_UNI / 2; n_uni++) uni[n_uni] = sgllm__rng_uniform(&smp->rng);
    return sgllm__gpu_produce(g, i, pos, &a, smp->pen_tokens, smp->pen_counts, uni, n_uni, &ctx->diag);
}
#endif

sgllm_status sgllm_generate(sgllm_context *ctx, const char *prompt, const sgllm_generate_params *p,
                            sgllm_generate_stats *stats) {
    if (stats) memset(stats, 0, sizeof *stats);
    if (!ctx) return SGLLM_ERR_INVALID_ARGUMENT;
    ctx->diag.msg[0] = 0;
    if (!prompt || !p || p->struct_size < sizeof *p || p->max_tokens < 0)
        return sgllm__fail(&ctx->diag, SGLLM_ERR_INVALID_ARGUMENT,
                           "sgllm_generate: prompt and params are required (sgllm_generate_default_params)");
    const sgllm_model *m = ctx->model;
    int32_t n_prompt = 0;
    sgllm_token *toks = (sgllm_token *)sgllm__calloc((size_t)ctx->n_ctx, sizeof *toks); // (n_ctx)
    sgllm_sampler *smp = NULL;
    char *pending = NULL; // stb_ds array: bytes not yet streamed (an incomplete UTF-8 sequence)
    if (!toks) return sgllm__fail(&ctx->diag, SGLLM_ERR_OUT_OF_MEMORY, "out of memory");
    sgllm_status s = sgllm_tokenize(m, prompt, strlen(prompt), p->flags, toks, ctx->n_ctx, &n_prompt);
    if (s != SGLLM_OK || n_prompt == 0) {
        sgllm__free(toks);
        if (s == SGLLM_ERR_BUFFER_TOO_SMALL)
            return sgllm__fail(&ctx->diag, SGLLM_ERR_CONTEXT_FULL, "the prompt has %d tokens; the context holds %d",
                               (int)n_prompt, (int)ctx->n_ctx);
        return s ? sgllm__fail(&ctx->diag, s, "tokenizing the prompt failed")
                 : sgllm__fail(&ctx->diag, SGLLM_ERR_INVALID_ARGUMENT, "the prompt has no tokens");
    }
    if ((s = sgllm_sampler_init(&p->sampler, m->n_vocab, &smp)) != SGLLM_OK) {
        sgllm__free(toks);
        return sgllm__fail(&ctx->diag, s, "bad sampler parameters");
    }
    // reuse the longest common prefix of the cached sequence; the last prompt token is always
    // evaluated again because its logits are needed
    int32_t reuse = 0;
    while (reuse < ctx->n_past && reuse < n_prompt - 1 && ctx->history[reuse] == toks[reuse]) reuse++;
    ctx->n_past = reuse;
    double t0 = sgllm__now();
    s = sgllm_evaluate(ctx, toks + reuse, n_prompt - reuse, NULL, ctx->logits);
    double t1 = sgllm__now();
    for (int32_t i = 0; i < n_prompt; i++) sgllm_sampler_accept(smp, toks[i]);
    sgllm__free(toks);
    sgllm_stop_reason why = SGLLM_STOP_MAX_TOKENS;
    int32_t n_gen = 0;
    // On the GPU token i is production i (sgllm__gpu_produce): sampled on the device, only the
    // token read back. Without penalties no token changes the sampler's arguments, so production
    // i + 1, which evaluates token i, is enqueued before token i is read: the device always has
    // the next step queued while the host streams the last token. A production whose token is
    // not kept (a stop) wrote only past the sequence's end, which nothing reads.
    bool on_gpu = false;
#ifdef SGLLM_CUDA
    on_gpu = ctx->gpu != NULL;
    const bool ahead = on_gpu && !sgllm__sampler_has_penalties(smp);
    int64_t made = 0; // productions enqueued
    if (s == SGLLM_OK && on_gpu && p->max_tokens > 0 && !(s = sgllm__generate_gpu_produce(ctx, smp, 0, 0))) made = 1;
#endif
    while (s == SGLLM_OK && n_gen < p->max_tokens) {
        sgllm_token t = -1;
#ifdef SGLLM_CUDA
        if (on_gpu && ahead && made == n_gen + 1 && n_gen + 1 < p->max_tokens && ctx->n_past < ctx->n_ctx &&
            !(s = sgllm__generate_gpu_produce(ctx, smp, made, ctx->n_past)))
            made++;
        if (on_gpu && !s) s = sgllm__gpu_produced(ctx->gpu, n_gen, &t, &ctx->diag);
        if (s) break;
#endif
        if (!on_gpu) t = sgllm_sampler_sample(smp, ctx->logits);
        sgllm_sampler_accept(smp, t);
        n_gen++;
        if (sgllm__vocab_is_eog(&m->vocab, t)) {
            why = SGLLM_STOP_EOG;
            break;
        }
        size_t len = 0;
        const char *piece = sgllm__vocab_piece(&m->vocab, t, &len);
        if (piece && !sgllm__vocab_is_control(&m->vocab, t)) {
            memcpy(arraddnptr(pending, len), piece, len);
            size_t cut = sgllm__utf8_complete(pending, (size_t)arrlen(pending));
            if (cut && p->on_piece && p->on_piece(p->user_data, pending, cut)) {
                why = SGLLM_STOP_CALLBACK;
                arrdeln(pending, 0, cut);
                break;
            }
            arrdeln(pending, 0, cut);
        }
        if (n_gen == p->max_tokens) break;
        if (ctx->n_past >= ctx->n_ctx) {
            why = SGLLM_STOP_CONTEXT_FULL;
            break;
        }
#ifdef SGLLM_CUDA
        if (on_gpu) { // production n_gen evaluates t (enqueued ahead, or now)
            if (made == n_gen && !(s = sgllm__generate_gpu_produce(ctx, smp, made, ctx->n_past))) made++;
            if (!s) ctx->history[ctx->n_past++] = t;
            continue;
        }
#endif
        s = sgllm_evaluate(ctx, &t, 1, NULL, ctx->logits);
    }
#ifdef SGLLM_CUDA
    // a production enqueued ahead of a stop may still run: nothing follows it unfinished
    if (on_gpu && made > n_gen) {
        sgllm_status se = sgllm__cuda_sync(ctx->gpu->cu);
        if (s == SGLLM_OK && se) s = sgllm__fail(&ctx->diag, se, "CUDA: %s", sgllm__cuda_errmsg(ctx->gpu->cu));
    }
#endif
    if (s == SGLLM_OK && arrlen(pending) && p->on_piece) p->on_piece(p->user_data, pending, (size_t)arrlen(pending));
    arrfree(pending);
    sgllm_sampler_free(smp);
    if (stats) {
        stats->n_prompt = n_prompt;
        stats->n_reused = reuse;
        stats->n_generated = n_gen;
        stats->prompt_seconds = t1 - t0;
        stats->gen_seconds = sgllm__now() - t1;
        stats->stop_reason = why;
    }
    return s;
}

sgllm_status sgllm_chat_apply(const sgllm_model *m, const sgllm_chat_message *msgs, size_t n, int add_assistant,
                              char *buf, size_t capacity, size_t *text_len) {
    if (text_len) *text_len = 0;
    if (!m || (n && !msgs) || (capacity && !buf) || !text_len) return SGLLM_ERR_INVALID_ARGUMENT;
    return sgllm__chat_render(m->chat_template, m->arch, msgs, n, add_assistant, buf, capacity, text_len);
}
