// sgllm_cuda.cu - the CUDA backend of sgllm: every kernel and the cuBLAS calls, in one
// translation unit. The C side (sgllm_impl.c) sees only the extern "C" interface declared at
// the end of sgllm.h (SGLLM_INTERNAL).
//
// CONTENTS (search for "// --- N.")
//   1. Context: errors, device query, the per-context struct (stream, cuBLAS, scratch), memory,
//      the launch helper with programmatic dependent launch (and the profiling build's stamps)
//   2. Weight formats on the device: GGUF block layouts, one value at a time and 32 at a time
//   3. Row-wise ops: embedding gather, residual add + RMSNorm (and the fused post-norm + add +
//      norm), per-head q/k/v RMSNorm, RoPE, the fused q/k/v epilogue, gated activations
//   4. Matrix-vector with fused dequantization (decode and small batches)
//   4b. Wide-load int8 matrix-vector: 16-byte weight loads, activations quantized once per call;
//      two weight types in one launch (q/k with v), four short rows per warp for large matrices
//   4c. Streamed matrix-vector (one token, large matrices of rows up to 4096 values, sm90+):
//      bulk copies of whole rows into a ring of shared-memory stages, mbarrier completion
//   5. Prefill GEMM: dequantize to bf16 scratch, cuBLAS with fp32 accumulation
//   6. Decode attention: split-KV over an fp16 cache, on the CUDA cores or (long splits) the
//      tensor cores, log-sum-exp merge (a kernel, the last block, or a thread block cluster
//      writing into each other's shared memory; split counts whose clusters all fit); for one
//      token, with qkv_post's bias, norm, RoPE and cache write inside
//   6b. Prefill attention: flash attention on the tensor cores (mma.sync), paged fp16 cache
//   7. Benchmark and synthetic-weight helpers
//   8. Forward helpers: KV-cache write, bias, row gather, softcap, argmax, CUDA graphs
//   9. Sampling: the CPU sampler's semantics on the device (penalties, top-k, min-p, top-p, draw);
//      greedy without penalties in one launch
//
// Nothing lives at file scope: all state is in struct sgllm__cuda, so two models or contexts
// can run in one process. Ops enqueue on the context's stream and never synchronize.
// Launch configurations (warps, tiles, thresholds) come from the context's dispatch struct,
// chosen on the C side from the architecture table.

#define SGLLM_INTERNAL
#include "sgllm.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cooperative_groups.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// --- 1. Context ----------------------------------------------------------------------------
// A context holds the device index, one stream, a cuBLAS handle with its own workspace (so
// cuBLAS never allocates behind our back, which graph capture forbids), a scratch buffer
// shared by ops that run one after another on the stream, and the dispatch decisions.

// Bytes of one slot of the read-back ring (sgllm__cuda_readback_slot).
enum { SGLLM__CU_RING_SLOT = 64 };

// Buckets of the sampler's top-k histogram (section 9: 11-bit digits of the logits' order keys).
enum { SGLLM__CU_SMP_BUCKETS = 2048 };

// Activation buffer of the direct matrix-vector kernels: up to 8 tokens of MV_XQ_COLS values
// as int8 codes plus one float2 per 32 values (wider rows take the staged kernel).
enum { MV_XQ_COLS = 65536, MV_XQ_BYTES = 8 * MV_XQ_COLS + 8 * (MV_XQ_COLS / 32) * 8 };

// What the activation buffer holds: the quantization of of (nt rows of cols values) in format
// kind, or nothing (of NULL).
struct sgllm__cu_xq_held {
    const float *of;
    int kind;
    int64_t nt, cols;
};

// Arrival counters of decode attention's split blocks (section 6), one per head group of a
// launch (larger launches are cut into several): zero between launches, so graph replays
// reuse them. Their own buffer, since the scratch is rewritten by other ops.
enum { ATT_COUNTERS = 65536 };

struct sgllm__cuda {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws;        // (blas_ws_bytes) cuBLAS workspace
    size_t blas_ws_bytes;
    void *scratch;        // (scratch_bytes) bf16 weights/activations for GEMM, attention partials
    size_t scratch_bytes;
    cudaEvent_t t0, t1;   // sgllm__cuda_timer_start/stop
    void *mv_xq;          // (MV_XQ_BYTES) int8 activations of the matrix-vector kernels (section 4)
    sgllm__cu_xq_held xq; // what mv_xq holds
    unsigned *att_cnt;    // (ATT_COUNTERS) split arrivals of decode attention (section 6), zeroed at creation
    unsigned *smp_ticket; // (1 + SGLLM__CU_SMP_BUCKETS) blocks of a sampler kernel done (section 9), zero between
                          // launches; then the top-k histogram, zero between samplings; zeroed at creation
    void *stage;          // (stage_bytes) pinned host memory that small downloads (a token's logits) go through
    size_t stage_bytes;
    void *stage_up;       // (stage_up_bytes) pinned host memory of sgllm__cuda_upload_async
    size_t stage_up_bytes;
    cudaEvent_t stage_up_done; // recorded after the copy out of stage_up: its next write waits for it
    void *ring;           // (2, SGLLM__CU_RING_SLOT) pinned and mapped: small results read back while the stream runs on
    void *ring_dev;       // the ring's device address (sgllm__cuda_readback_slot)
    cudaEvent_t ring_ev[2]; // recorded after each slot's write (sgllm__cuda_readback_mark)
    sgllm__cuda_dispatch disp;
    bool qkv_mma;         // the next q/k/v product comes before a tensor-core attention (sgllm__cuda_qkv_before_mma)
    int smem_optin, smem_sm; // shared memory a block may opt into, and per SM (bytes)
    int cc_major;         // compute capability major of the device
    bool pdl;             // launches through sgllm__cu_launch use programmatic dependent launch
    struct {              // occupancy answers (sgllm__cu_occupancy), the latest 32
        const void *kern;
        size_t smem;
        unsigned threads, cluster;
        int n;
    } occ[32];
    int n_occ, next_occ;  // entries filled, the one replaced next
    int norm_cap[5];      // most threads per block of the fused norm kernels (their registers), 0 until asked
    struct {              // sgllm__cuda_attn_cluster_splits' answers (emptied when the dispatch changes)
        int32_t n_head, n_head_kv, head_dim, asked, got;
        int64_t n_q;
    } csp[8];
    int n_csp, next_csp;  // entries filled, the one replaced next
    uint64_t launches;    // kernels of this file launched (sgllm__cuda_launches)
    const char *last_launch; // the name the latest sgllm__cu_launch gave (sgllm__cuda_last_launch)
#ifdef SGLLM_TIMELINE
    const char *tl_names[2048]; // launch names while tl_on (sgllm__cuda_timeline_names)
    int tl_n;
    bool tl_on;
#endif
    char msg[512];
};

static sgllm_status sgllm__cu_fail(sgllm__cuda *c, sgllm_status s, const char *fmt, ...) {
    if (c) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->msg, sizeof c->msg, fmt, ap);
        va_end(ap);
    }
    return s;
}

// Checks a runtime call; on failure records "what: CUDA error text" and returns BACKEND.
static sgllm_status sgllm__cu_check(sgllm__cuda *c, cudaError_t e, const char *what) {
    if (e == cudaSuccess) return SGLLM_OK;
    return sgllm__cu_fail(c, SGLLM_ERR_BACKEND, "%s: %s", what, cudaGetErrorString(e));
}

// After a launch: configuration errors are reported at once, without synchronizing.
static sgllm_status sgllm__cu_launched(sgllm__cuda *c, const char *kernel) {
    c->launches++;
    return sgllm__cu_check(c, cudaGetLastError(), kernel);
}

extern "C" uint64_t sgllm__cuda_launches(const sgllm__cuda *c) { return c ? c->launches : 0; }
extern "C" const char *sgllm__cuda_last_launch(const sgllm__cuda *c) {
    return c && c->last_launch ? c->last_launch : "";
}

static sgllm_status sgllm__cu_bad(sgllm__cuda *c, const char *op, const char *why) {
    return sgllm__cu_fail(c, SGLLM_ERR_INVALID_ARGUMENT, "%s: %s", op, why);
}

// The activation buffer: codes (8, MV_XQ_COLS), then scales (8, MV_XQ_COLS / 32).
static int8_t *sgllm__cu_xq_codes(sgllm__cuda *c) { return (int8_t *)c->mv_xq; }
static float2 *sgllm__cu_xq_scales(sgllm__cuda *c) { return (float2 *)(sgllm__cu_xq_codes(c) + 8 * MV_XQ_COLS); }

// y is about to change: the buffer no longer holds its quantization. Every op that writes
// floats forgets its outputs (a kernel by their first address, a copy by its byte range).
static void sgllm__cu_xq_forget(sgllm__cuda *c, const float *y) {
    if (c->xq.of == y) c->xq.of = NULL;
}
static void sgllm__cu_xq_forget_range(sgllm__cuda *c, const void *dst, size_t bytes) {
    const char *p = (const char *)c->xq.of, *d = (const char *)dst;
    if (p && p >= d && p < d + bytes) c->xq.of = NULL;
}

// Whether the buffer holds x's quantization (tests: which product skips its own).
extern "C" int sgllm__cuda_xq_holds(const sgllm__cuda *c, const float *x) { return c && x && c->xq.of == x; }

// After a launch that wrote the buffer: it holds x (nt rows of cols, format kind) if the
// launch was accepted, nothing otherwise.
static void sgllm__cu_xq_set(sgllm__cuda *c, sgllm_status s, const float *x, int kind, int64_t nt, int64_t cols) {
    c->xq.of = s ? NULL : x;
    c->xq.kind = kind, c->xq.nt = nt, c->xq.cols = cols;
}

// Programmatic dependent launch (sm90+, dispatch.pdl). A kernel launched with it may start
// while the kernel before it on the stream is still running (once every block of that one has
// started and called sgllm__cu_pdl_trigger, or exited), so its launch and block setup overlap
// the predecessor's tail. Such a kernel must call sgllm__cu_pdl_wait before it reads anything
// its predecessors wrote and before it writes anything they read: the wait returns when they
// have completed and their writes are visible. Predecessors' completion is transitive (each
// one waited for its own), so one wait covers the whole stream before it. Without the
// attribute, or below sm90, both calls do nothing. Stream capture turns the attribute into
// programmatic graph edges (CUDA 12.3+), so graphs keep the overlap. A kernel joins by
// calling sgllm__cu_pdl_wait() first (and sgllm__cu_pdl_trigger() when its dependents may
// start) and being launched through sgllm__cu_launch. Work before the wait may read only
// what no kernel of the stream writes: the matrix-vector kernels (section 4) start streaming
// their weights there (uploaded or filled at load time, with a synchronization after).
// The PDL ops (sections 3, 4, 5, 6 and 8) wait before their first read or write of
// activations and trigger right after the wait, so at most one kernel's blocks sit waiting behind the one
// running, and their weight loads overlap its tail. (Exceptions: the fused residual-add norms of
// section 3 and the standalone activation quantization, sgllm__cu_xq_k, trigger first: they
// are a few blocks between two products, and the product after them then launches while the
// one before still runs, its blocks taking the SMs that one frees and loading their first
// weights there. Safe because a grid launches only once every block of its predecessor has
// started, so no waiting block can keep a predecessor's block from starting. Small q/k/v
// products do the same for the attention after them: dispatch.matvec_qkv_early_kb.)
#ifdef SGLLM_TIMELINE
// Profiling build only (`make timeline`): the first thread of block (0, 0, 0) of every kernel
// stamps %globaltimer when its PDL wait returns, in launch order (every op of a decode step
// waits exactly once), so the gap between two stamps is what the first kernel costs the chain:
// its work after the wait, its tail and the release of the next. The stamps are at file scope,
// unlike everything else here: one context at a time in such a build.
enum { SGLLM__TL_MAX = 16384 };
__device__ unsigned long long sgllm__tl_t[SGLLM__TL_MAX];
__device__ unsigned sgllm__tl_n;
static __device__ inline void sgllm__cu_tl_mark() {
    if (threadIdx.x | threadIdx.y | threadIdx.z | blockIdx.x | blockIdx.y | blockIdx.z) return;
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    unsigned i = atomicAdd(&sgllm__tl_n, 1u);
    if (i < SGLLM__TL_MAX) sgllm__tl_t[i] = t;
}
// Decode attention's phases (section 6): the first thread of each of the first PH_B split
// blocks of head group 0 stamps the time at every SGLLM__PH(k) and, when it leaves, adds each
// stamp's distance from its start to sgllm__tl_ph (sgllm__cuda_timeline_phases reads them).
enum { SGLLM__PH_N = 16, SGLLM__PH_B = 32 };
__device__ unsigned long long sgllm__tl_ph[SGLLM__PH_B][SGLLM__PH_N], sgllm__tl_phn[SGLLM__PH_B];
struct sgllm__cu_phases {
    unsigned long long t[SGLLM__PH_N];
    bool on;
};
static __device__ inline void sgllm__cu_ph_mark(sgllm__cu_phases &p, int k) {
    if (p.on) asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(p.t[k]));
}
static __device__ inline void sgllm__cu_ph_begin(sgllm__cu_phases &p) {
    p.on = !(threadIdx.x | blockIdx.y | blockIdx.z) && blockIdx.x < SGLLM__PH_B;
#pragma unroll
    for (int k = 0; k < SGLLM__PH_N; k++) p.t[k] = 0;
    sgllm__cu_ph_mark(p, 0);
}
static __device__ inline void sgllm__cu_ph_end(const sgllm__cu_phases &p) {
    if (!p.on) return;
#pragma unroll
    for (int k = 1; k < SGLLM__PH_N; k++)
        if (p.t[k]) atomicAdd(&sgllm__tl_ph[blockIdx.x][k], p.t[k] - p.t[0]);
    atomicAdd(&sgllm__tl_phn[blockIdx.x], 1ull);
}
#define SGLLM__PH_BEGIN() sgllm__cu_phases ph_; sgllm__cu_ph_begin(ph_)
#define SGLLM__PH(k) sgllm__cu_ph_mark(ph_, k)
#define SGLLM__PH_END() sgllm__cu_ph_end(ph_)
#else
#define SGLLM__PH_BEGIN()
#define SGLLM__PH(k)
#define SGLLM__PH_END()
#endif
static __device__ inline void sgllm__cu_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
#ifdef SGLLM_TIMELINE
    sgllm__cu_tl_mark();
#endif
}
static __device__ inline void sgllm__cu_pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// The launch configuration of sgllm__cu_launch: the programmatic-serialization attribute when
// c->pdl, and thread block clusters of cluster_x blocks along x when cluster_x > 1 (sm90+).
struct sgllm__cu_cfg {
    cudaLaunchConfig_t cfg;
    cudaLaunchAttribute attr[2];
};
static void sgllm__cu_config(sgllm__cuda *c, dim3 grid, dim3 block, size_t smem, unsigned cluster_x, sgllm__cu_cfg *k) {
    *k = sgllm__cu_cfg{};
    k->cfg.gridDim = grid;
    k->cfg.blockDim = block;
    k->cfg.dynamicSmemBytes = smem;
    k->cfg.stream = c->stream;
    unsigned n = 0;
    if (c->pdl) {
        k->attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        k->attr[n++].val.programmaticStreamSerializationAllowed = 1;
    }
    if (cluster_x > 1) {
        k->attr[n].id = cudaLaunchAttributeClusterDimension;
        k->attr[n].val.clusterDim.x = cluster_x, k->attr[n].val.clusterDim.y = 1, k->attr[n++].val.clusterDim.z = 1;
    }
    k->cfg.attrs = k->attr;
    k->cfg.numAttrs = n;
}

// kernel<<<grid, block, smem, c->stream>>>(args...) in clusters of cluster_x blocks (1: none),
// with the programmatic-serialization attribute when c->pdl; a refused launch is reported
// under name.
template <typename... P, typename... A>
static sgllm_status sgllm__cu_launch_cl(sgllm__cuda *c, const char *name, unsigned cluster_x, void (*kernel)(P...),
                                        dim3 grid, dim3 block, size_t smem, A... args) {
    sgllm__cu_cfg k;
    sgllm__cu_config(c, grid, block, smem, cluster_x, &k);
    cudaError_t e = cudaLaunchKernelEx(&k.cfg, kernel, args...);
    c->launches++;
    c->last_launch = name;
#ifdef SGLLM_TIMELINE
    if (c->tl_on && c->tl_n < 2048) c->tl_names[c->tl_n++] = name;
#endif
    if (e != cudaSuccess) cudaGetLastError(); // reported here, not again by the next op's check
    return sgllm__cu_check(c, e, name);
}
template <typename... P, typename... A>
static sgllm_status sgllm__cu_launch(sgllm__cuda *c, const char *name, void (*kernel)(P...), dim3 grid, dim3 block,
                                     size_t smem, A... args) {
    return sgllm__cu_launch_cl(c, name, 1, kernel, grid, block, smem, args...);
}

// Blocks of kern (threads each, smem bytes of dynamic shared memory) resident per SM, or with
// cluster > 1 clusters of that many blocks resident on the device (sizes over 8 opted in);
// 0 when the runtime cannot say. Asked once per kernel and shape and remembered, so launches
// outside graphs do not pay the query each time. The kernel's shared-memory attribute must be
// set before.
template <typename K>
static int sgllm__cu_occupancy(sgllm__cuda *c, K kern, unsigned threads, size_t smem, unsigned cluster) {
    for (int i = 0; i < c->n_occ; i++)
        if (c->occ[i].kern == (const void *)kern && c->occ[i].smem == smem && c->occ[i].threads == threads &&
            c->occ[i].cluster == cluster)
            return c->occ[i].n;
    int n = 0;
    cudaError_t e;
    if (cluster > 1) {
        if (cluster > 8) (void)cudaFuncSetAttribute(kern, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
        sgllm__cu_cfg k;
        sgllm__cu_config(c, dim3(cluster), dim3(threads), smem, cluster, &k);
        e = cudaOccupancyMaxActiveClusters(&n, kern, &k.cfg);
    } else {
        e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kern, (int)threads, smem);
    }
    if (e != cudaSuccess) {
        cudaGetLastError(); // not sticky: the caller takes a safe default
        n = 0;
    }
    int i = c->next_occ; // a ring
    c->next_occ = (i + 1) % 32;
    if (c->n_occ < 32) c->n_occ++;
    c->occ[i].kern = (const void *)kern, c->occ[i].smem = smem, c->occ[i].threads = threads;
    c->occ[i].cluster = cluster, c->occ[i].n = n;
    return n;
}

// PDL only where the device has griddepcontrol (sm90+) and the dispatch asks for it.
static void sgllm__cu_set_disp(sgllm__cuda *c, const sgllm__cuda_dispatch *d) {
    c->disp = *d;
    c->pdl = d->pdl && c->cc_major >= 9;
    c->n_csp = c->next_csp = 0;
}

#ifdef SGLLM_TIMELINE
extern "C" void sgllm__cuda_timeline_names(sgllm__cuda *c, int on) {
    if (on) c->tl_n = 0;
    c->tl_on = on != 0;
}
extern "C" const char *const *sgllm__cuda_timeline_launches(const sgllm__cuda *c, int *n) {
    *n = c->tl_n;
    return c->tl_names;
}
extern "C" const char *sgllm__cuda_timeline_phase_name(int k) {
    static const char *const names[SGLLM__PH_N] = {"start", "wait", "epilogue", "tile data", "tile barrier", "scores",
                                                   "softmax", "values", "slices", "cluster", "outputs sent", "lse sent",
                                                   "merge barrier", "merged+q", "quantized", "mma body"};
    return k >= 0 && k < SGLLM__PH_N ? names[k] : "?";
}
extern "C" int sgllm__cuda_timeline_phases(sgllm__cuda *c, double *us, unsigned long long *n) {
    unsigned long long sum[SGLLM__PH_B][SGLLM__PH_N], cnt[SGLLM__PH_B];
    cudaSetDevice(c->device);
    if (cudaMemcpyFromSymbol(sum, sgllm__tl_ph, sizeof sum) != cudaSuccess ||
        cudaMemcpyFromSymbol(cnt, sgllm__tl_phn, sizeof cnt) != cudaSuccess)
        return -1;
    for (int b = 0; b < SGLLM__PH_B; b++) {
        n[b] = cnt[b];
        for (int k = 0; k < SGLLM__PH_N; k++) us[b * SGLLM__PH_N + k] = cnt[b] ? (double)sum[b][k] / 1e3 / (double)cnt[b] : 0.0;
    }
    memset(sum, 0, sizeof sum), memset(cnt, 0, sizeof cnt);
    if (cudaMemcpyToSymbol(sgllm__tl_ph, sum, sizeof sum) != cudaSuccess ||
        cudaMemcpyToSymbol(sgllm__tl_phn, cnt, sizeof cnt) != cudaSuccess)
        return -1;
    return 0;
}
extern "C" int sgllm__cuda_timeline_stamps(sgllm__cuda *c, unsigned long long *t, int cap) {
    unsigned n = 0;
    cudaSetDevice(c->device);
    if (cudaMemcpyFromSymbol(&n, sgllm__tl_n, sizeof n) != cudaSuccess) return -1;
    if (n > (unsigned)SGLLM__TL_MAX) n = SGLLM__TL_MAX;
    if ((int)n > cap) n = (unsigned)cap;
    if (n && cudaMemcpyFromSymbol(t, sgllm__tl_t, (size_t)n * sizeof *t) != cudaSuccess) return -1;
    unsigned z = 0;
    if (cudaMemcpyToSymbol(sgllm__tl_n, &z, sizeof z) != cudaSuccess) return -1;
    return (int)n;
}
#endif

extern "C" int sgllm__cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); // a missing driver is not a sticky error for later calls
        return 0;
    }
    return n;
}

extern "C" sgllm_status sgllm__cuda_query(int device, sgllm__cuda_props *out, char *err, size_t err_size) {
    if (!out) return SGLLM_ERR_INVALID_ARGUMENT;
    memset(out, 0, sizeof *out);
    cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, device);
    if (e != cudaSuccess) {
        if (err && err_size) snprintf(err, err_size, "CUDA device %d: %s", device, cudaGetErrorString(e));
        cudaGetLastError();
        return SGLLM_ERR_BACKEND;
    }
    snprintf(out->name, sizeof out->name, "%s", p.name);
    out->major = p.major;
    out->minor = p.minor;
    out->sm_count = p.multiProcessorCount;
    out->smem_per_block = p.sharedMemPerBlock;
    out->smem_per_block_optin = p.sharedMemPerBlockOptin;
    out->l2_bytes = (size_t)p.l2CacheSize;
    out->total_mem = p.totalGlobalMem;
    return SGLLM_OK;
}

extern "C" void sgllm__cuda_free(sgllm__cuda *c) {
    if (!c) return;
    cudaSetDevice(c->device);
    if (c->stream) cudaStreamSynchronize(c->stream);
    if (c->blas) cublasDestroy(c->blas);
    if (c->t0) cudaEventDestroy(c->t0);
    if (c->t1) cudaEventDestroy(c->t1);
    cudaFree(c->blas_ws);
    cudaFree(c->scratch);
    cudaFree(c->mv_xq);
    cudaFree(c->att_cnt);
    cudaFree(c->smp_ticket);
    cudaFreeHost(c->stage);
    if (c->stage_up_done) cudaEventDestroy(c->stage_up_done);
    for (int i = 0; i < 2; i++)
        if (c->ring_ev[i]) cudaEventDestroy(c->ring_ev[i]);
    cudaFreeHost(c->ring);
    cudaFreeHost(c->stage_up);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
}

extern "C" sgllm_status sgllm__cuda_create(int device, const sgllm__cuda_dispatch *disp, sgllm__cuda **out, char *err,
                                           size_t err_size) {
    if (out) *out = NULL;
    if (!out || !disp) return SGLLM_ERR_INVALID_ARGUMENT;
    sgllm__cuda *c = (sgllm__cuda *)calloc(1, sizeof *c);
    if (!c) return SGLLM_ERR_OUT_OF_MEMORY;
    c->device = device;
    sgllm_status s = sgllm__cu_check(c, cudaSetDevice(device), "cudaSetDevice");
    if (s == SGLLM_OK)
        s = sgllm__cu_check(c, cudaDeviceGetAttribute(&c->cc_major, cudaDevAttrComputeCapabilityMajor, device),
                            "device attribute");
    sgllm__cu_set_disp(c, disp);
    if (s == SGLLM_OK) s = sgllm__cu_check(c, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), "stream");
    if (s == SGLLM_OK && cublasCreate(&c->blas) != CUBLAS_STATUS_SUCCESS) {
        c->blas = NULL;
        s = sgllm__cu_fail(c, SGLLM_ERR_BACKEND, "cublasCreate failed");
    }
    if (s == SGLLM_OK)
        s = sgllm__cu_check(c, cudaDeviceGetAttribute(&c->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
                            "device attribute");
    if (s == SGLLM_OK)
        s = sgllm__cu_check(c, cudaDeviceGetAttribute(&c->smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device),
                            "device attribute");
    if (s == SGLLM_OK) s = sgllm__cu_check(c, cudaEventCreate(&c->t0), "event");
    if (s == SGLLM_OK) s = sgllm__cu_check(c, cudaEventCreate(&c->t1), "event");
    if (s == SGLLM_OK) s = sgllm__cu_check(c, cudaEventCreateWithFlags(&c->stage_up_done, cudaEventDisableTiming), "event");
    for (int i = 0; i < 2 && s == SGLLM_OK; i++)
        s = sgllm__cu_check(c, cudaEventCreateWithFlags(&c->ring_ev[i], cudaEventDisableTiming), "event");
    if (s == SGLLM_OK) s = sgllm__cu_check(c, cudaHostAlloc(&c->ring, 2 * SGLLM__CU_RING_SLOT, cudaHostAllocMapped), "pinned memory");
    if (s == SGLLM_OK) s = sgllm__cu_check(c, cudaHostGetDevicePointer(&c->ring_dev, c->ring, 0), "mapped memory");
    c->blas_ws_bytes = (size_t)32 << 20;
    if (s == SGLLM_OK) s = sgllm__cu_check(c, cudaMalloc(&c->blas_ws, c->blas_ws_bytes), "cuBLAS workspace");
    if (s == SGLLM_OK) s = sgllm__cu_check(c, cudaMalloc(&c->mv_xq, MV_XQ_BYTES), "matvec activation buffer");
    if (s == SGLLM_OK)
        s = sgllm__cu_check(c, cudaMalloc(&c->att_cnt, ATT_COUNTERS * sizeof(unsigned)), "attention counters");
    if (s == SGLLM_OK)
        s = sgllm__cu_check(c, cudaMemsetAsync(c->att_cnt, 0, ATT_COUNTERS * sizeof(unsigned), c->stream),
                            "attention counters");
    const size_t smp_bytes = (1 + SGLLM__CU_SMP_BUCKETS) * sizeof(unsigned);
    if (s == SGLLM_OK) s = sgllm__cu_check(c, cudaMalloc(&c->smp_ticket, smp_bytes), "sampler counters");
    if (s == SGLLM_OK)
        s = sgllm__cu_check(c, cudaMemsetAsync(c->smp_ticket, 0, smp_bytes, c->stream), "sampler counters");
    if (s == SGLLM_OK && (cublasSetStream(c->blas, c->stream) != CUBLAS_STATUS_SUCCESS ||
                          cublasSetWorkspace(c->blas, c->blas_ws, c->blas_ws_bytes) != CUBLAS_STATUS_SUCCESS))
        s = sgllm__cu_fail(c, SGLLM_ERR_BACKEND, "cuBLAS stream/workspace setup failed");
    if (s != SGLLM_OK) {
        if (err && err_size) snprintf(err, err_size, "%s", c->msg);
        sgllm__cuda_free(c);
        return s;
    }
    *out = c;
    return SGLLM_OK;
}

extern "C" const char *sgllm__cuda_errmsg(const sgllm__cuda *c) { return c ? c->msg : "no CUDA context"; }
extern "C" void sgllm__cuda_set_dispatch(sgllm__cuda *c, const sgllm__cuda_dispatch *d) {
    if (c && d) sgllm__cu_set_disp(c, d);
}
extern "C" const sgllm__cuda_dispatch *sgllm__cuda_get_dispatch(const sgllm__cuda *c) { return c ? &c->disp : NULL; }
extern "C" void *sgllm__cuda_stream(const sgllm__cuda *c) { return c ? (void *)c->stream : NULL; }

extern "C" sgllm_status sgllm__cuda_alloc(sgllm__cuda *c, size_t bytes, void **out) {
    if (!c || !out) return SGLLM_ERR_INVALID_ARGUMENT;
    *out = NULL;
    cudaSetDevice(c->device);
    cudaError_t e = cudaMalloc(out, bytes ? bytes : 1);
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        *out = NULL;
        return sgllm__cu_fail(c, SGLLM_ERR_OUT_OF_MEMORY, "out of device memory allocating %zu bytes", bytes);
    }
    return sgllm__cu_check(c, e, "cudaMalloc");
}

extern "C" void sgllm__cuda_dfree(sgllm__cuda *c, void *p) {
    if (!c || !p) return;
    cudaSetDevice(c->device);
    cudaFree(p);
}

extern "C" sgllm_status sgllm__cuda_upload(sgllm__cuda *c, void *dst, const void *src, size_t bytes) {
    if (!c || ((!dst || !src) && bytes)) return SGLLM_ERR_INVALID_ARGUMENT;
    cudaSetDevice(c->device);
    sgllm__cu_xq_forget_range(c, dst, bytes);
    sgllm_status s = sgllm__cu_check(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream), "upload");
    return s ? s : sgllm__cu_check(c, cudaStreamSynchronize(c->stream), "upload");
}

// Downloads up to this many bytes go through the context's pinned staging buffer: a copy into
// pageable memory is staged by the driver in pieces, and for one token's logits (1 MB for a
// 262144-token vocabulary) that cost several times the pinned copy plus a host memcpy.
enum { SGLLM__CU_STAGE_MAX = 16 << 20 };

// Grows a pinned staging buffer to at least bytes; false (buffer unchanged) when the host refuses.
static bool sgllm__cu_stage_fit(void **buf, size_t *cap, size_t bytes) {
    if (bytes <= *cap) return true;
    void *p = NULL;
    if (cudaHostAlloc(&p, bytes, cudaHostAllocDefault) != cudaSuccess) {
        cudaGetLastError(); // a refused allocation is not an error of the stream
        return false;
    }
    cudaFreeHost(*buf);
    *buf = p;
    *cap = bytes;
    return true;
}

extern "C" sgllm_status sgllm__cuda_upload_async(sgllm__cuda *c, void *dst, const void *src, size_t bytes) {
    if (!c || ((!dst || !src) && bytes)) return SGLLM_ERR_INVALID_ARGUMENT;
    if (!bytes) return SGLLM_OK;
    cudaSetDevice(c->device);
    sgllm__cu_xq_forget_range(c, dst, bytes);
    // the previous copy out of the staging buffer must be done before it is written again
    sgllm_status s = sgllm__cu_check(c, cudaEventSynchronize(c->stage_up_done), "upload");
    if (s) return s;
    if (bytes > SGLLM__CU_STAGE_MAX || !sgllm__cu_stage_fit(&c->stage_up, &c->stage_up_bytes, bytes))
        return sgllm__cuda_upload(c, dst, src, bytes);
    memcpy(c->stage_up, src, bytes);
    s = sgllm__cu_check(c, cudaMemcpyAsync(dst, c->stage_up, bytes, cudaMemcpyHostToDevice, c->stream), "upload");
    return s ? s : sgllm__cu_check(c, cudaEventRecord(c->stage_up_done, c->stream), "upload");
}

extern "C" sgllm_status sgllm__cuda_download(sgllm__cuda *c, void *dst, const void *src, size_t bytes) {
    if (!c || ((!dst || !src) && bytes)) return SGLLM_ERR_INVALID_ARGUMENT;
    cudaSetDevice(c->device);
    if (bytes && bytes <= SGLLM__CU_STAGE_MAX && sgllm__cu_stage_fit(&c->stage, &c->stage_bytes, bytes)) {
        sgllm_status s = sgllm__cu_check(c, cudaMemcpyAsync(c->stage, src, bytes, cudaMemcpyDeviceToHost, c->stream), "download");
        if (!s) s = sgllm__cu_check(c, cudaStreamSynchronize(c->stream), "download");
        if (!s) memcpy(dst, c->stage, bytes);
        return s;
    }
    sgllm_status s = sgllm__cu_check(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream), "download");
    return s ? s : sgllm__cu_check(c, cudaStreamSynchronize(c->stream), "download");
}

extern "C" int32_t *sgllm__cuda_readback_slot(sgllm__cuda *c, int slot) {
    if (!c || slot < 0 || slot > 1 || !c->ring_dev) return NULL;
    return (int32_t *)((char *)c->ring_dev + slot * SGLLM__CU_RING_SLOT);
}

extern "C" sgllm_status sgllm__cuda_readback_mark(sgllm__cuda *c, int slot) {
    if (!c || slot < 0 || slot > 1) return SGLLM_ERR_INVALID_ARGUMENT;
    cudaSetDevice(c->device);
    return sgllm__cu_check(c, cudaEventRecord(c->ring_ev[slot], c->stream), "read back");
}

extern "C" sgllm_status sgllm__cuda_readback_wait(sgllm__cuda *c, int slot, void *dst, size_t bytes) {
    if (!c || slot < 0 || slot > 1 || !dst || !bytes || bytes > SGLLM__CU_RING_SLOT) return SGLLM_ERR_INVALID_ARGUMENT;
    cudaSetDevice(c->device);
    sgllm_status s = sgllm__cu_check(c, cudaEventSynchronize(c->ring_ev[slot]), "read back");
    if (!s) memcpy(dst, (const char *)c->ring + slot * SGLLM__CU_RING_SLOT, bytes);
    return s;
}

extern "C" sgllm_status sgllm__cuda_memset(sgllm__cuda *c, void *dst, int byte, size_t bytes) {
    if (!c || (!dst && bytes)) return SGLLM_ERR_INVALID_ARGUMENT;
    cudaSetDevice(c->device);
    sgllm__cu_xq_forget_range(c, dst, bytes);
    return sgllm__cu_check(c, cudaMemsetAsync(dst, byte, bytes, c->stream), "memset");
}

extern "C" sgllm_status sgllm__cuda_sync(sgllm__cuda *c) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    cudaSetDevice(c->device);
    return sgllm__cu_check(c, cudaStreamSynchronize(c->stream), "stream");
}

extern "C" sgllm_status sgllm__cuda_reserve(sgllm__cuda *c, size_t bytes) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    if (bytes <= c->scratch_bytes) return SGLLM_OK;
    cudaSetDevice(c->device);
    sgllm_status s = sgllm__cu_check(c, cudaStreamSynchronize(c->stream), "stream");
    if (s) return s;
    cudaFree(c->scratch);
    c->scratch = NULL;
    c->scratch_bytes = 0;
    if ((s = sgllm__cuda_alloc(c, bytes, &c->scratch))) return s;
    c->scratch_bytes = bytes;
    return SGLLM_OK;
}

// --- 2. Weight formats on the device -------------------------------------------------------
// The GGUF block layouts (ggml's), read straight from the bytes: dq_elem decodes one value
// anywhere in a row (byte loads, any alignment: gathers, bf16 conversion, odd shapes), and
// dq32 decodes one 32-value piece of a row from a buffer whose blocks keep their natural
// alignment (the matrix-vector kernel's shared-memory staging). Type ids are ggml's.

enum {
    T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8,
    T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_BF16 = 30
};

// Values and bytes per block of the types the backend computes with; 0 for others.
static __host__ __device__ inline int sgllm__cu_blk_vals(uint32_t t) {
    switch (t) {
    case T_F32: case T_F16: case T_BF16: return 1;
    case T_Q4_0: case T_Q4_1: case T_Q5_0: case T_Q5_1: case T_Q8_0: return 32;
    case T_Q4_K: case T_Q5_K: case T_Q6_K: return 256;
    default: return 0;
    }
}
static __host__ __device__ inline int sgllm__cu_blk_bytes(uint32_t t) {
    switch (t) {
    case T_F32: return 4;
    case T_F16: case T_BF16: return 2;
    case T_Q4_0: return 18;
    case T_Q4_1: return 20;
    case T_Q5_0: return 22;
    case T_Q5_1: return 24;
    case T_Q8_0: return 34;
    case T_Q4_K: return 144;
    case T_Q5_K: return 176;
    case T_Q6_K: return 210;
    default: return 0;
    }
}

// Row bytes of cols values of type t, 0 when t is unknown or cols not whole blocks.
static int64_t sgllm__cu_row_bytes(uint32_t t, int64_t cols) {
    int bv = sgllm__cu_blk_vals(t);
    if (!bv || cols <= 0 || cols % bv) return 0;
    return cols / bv * sgllm__cu_blk_bytes(t);
}

// Whether type t is block-quantized with rows of cols values in whole blocks (the products
// whose activations go through the context's int8 buffer).
static bool sgllm__cu_quantized(uint32_t t, int64_t cols) {
    return t != T_F32 && t != T_F16 && t != T_BF16 && sgllm__cu_row_bytes(t, cols) > 0;
}

static __device__ inline float sgllm__cu_h(const uint8_t *p) { // unaligned fp16
    return __half2float(__ushort_as_half((unsigned short)(p[0] | (p[1] << 8))));
}
static __device__ inline float sgllm__cu_h16(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K super-block's 12 scale bytes.
static __device__ inline void sgllm__cu_kscale(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Value j of a row of type t starting at row (any alignment).
static __device__ float sgllm__cu_dq_elem(uint32_t t, const uint8_t *row, int64_t j) {
    switch (t) {
    case T_F32: {
        const uint8_t *p = row + 4 * j;
        return __uint_as_float((uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24));
    }
    case T_F16: return sgllm__cu_h(row + 2 * j);
    case T_BF16: {
        const uint8_t *p = row + 2 * j;
        return __uint_as_float(((uint32_t)p[0] << 16) | ((uint32_t)p[1] << 24));
    }
    default: break;
    }
    int bv = sgllm__cu_blk_vals(t);
    const uint8_t *b = row + (j / bv) * sgllm__cu_blk_bytes(t);
    int i = (int)(j % bv);
    switch (t) {
    case T_Q4_0: {
        int q = i < 16 ? (b[2 + i] & 15) : (b[2 + i - 16] >> 4);
        return (float)(q - 8) * sgllm__cu_h(b);
    }
    case T_Q4_1: {
        int q = i < 16 ? (b[4 + i] & 15) : (b[4 + i - 16] >> 4);
        return (float)q * sgllm__cu_h(b) + sgllm__cu_h(b + 2);
    }
    case T_Q5_0: {
        uint32_t qh = (uint32_t)b[2] | ((uint32_t)b[3] << 8) | ((uint32_t)b[4] << 16) | ((uint32_t)b[5] << 24);
        int q = (i < 16 ? (b[6 + i] & 15) : (b[6 + i - 16] >> 4)) | (int)(((qh >> i) & 1) << 4);
        return (float)(q - 16) * sgllm__cu_h(b);
    }
    case T_Q5_1: {
        uint32_t qh = (uint32_t)b[4] | ((uint32_t)b[5] << 8) | ((uint32_t)b[6] << 16) | ((uint32_t)b[7] << 24);
        int q = (i < 16 ? (b[8 + i] & 15) : (b[8 + i - 16] >> 4)) | (int)(((qh >> i) & 1) << 4);
        return (float)q * sgllm__cu_h(b) + sgllm__cu_h(b + 2);
    }
    case T_Q8_0: return (float)(int8_t)b[2 + i] * sgllm__cu_h(b);
    case T_Q4_K:
    case T_Q5_K: {
        int sub = i / 32, l = i % 32, sc, m;
        sgllm__cu_kscale(sub, b + 4, &sc, &m);
        const uint8_t *qs = b + (t == T_Q4_K ? 16 : 48) + 32 * (sub / 2);
        int q = (sub & 1) ? (qs[l] >> 4) : (qs[l] & 15);
        if (t == T_Q5_K) q += ((b[16 + l] >> sub) & 1) << 4;
        return sgllm__cu_h(b) * (float)sc * (float)q - sgllm__cu_h(b + 2) * (float)m;
    }
    case T_Q6_K: {
        int h = i / 128, k = (i % 128) / 32, l = i % 32;
        int ql = b[64 * h + l + 32 * (k & 1)];
        int q = ((k >= 2 ? ql >> 4 : ql & 15) | (((b[128 + 32 * h + l] >> (2 * k)) & 3) << 4)) - 32;
        return sgllm__cu_h(b + 208) * (float)(int8_t)b[192 + 8 * h + l / 16 + 2 * k] * (float)q;
    }
    default: return 0.0f;
    }
}

// Reads of 2- and 4-byte aligned words from a staged row (shared or global memory).
static __device__ inline uint32_t sgllm__cu_u16(const uint8_t *p) { return *(const uint16_t *)p; }
static __device__ inline uint32_t sgllm__cu_u32a2(const uint8_t *p) { // 2-byte aligned
    return sgllm__cu_u16(p) | (sgllm__cu_u16(p + 2) << 16);
}
static __device__ inline uint32_t sgllm__cu_u32(const uint8_t *p) { return *(const uint32_t *)p; }

// 2^23 + byte e of w as a float, built with one byte permute: integer-to-float conversions
// run at a quarter of the FMA rate, and decode is instruction-bound. Subtracting 2^23 (plus
// any offset) afterwards is exact.
static __device__ inline float sgllm__cu_byte_f(uint32_t w, int e) {
    return __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7540u + (uint32_t)e));
}

// Decodes values 4m .. 4m+3 (m in 0..7) of the 32-value piece g of a row (values 32g ..
// 32g+31) into v. row is the start of the staged row; blocks keep their natural alignment
// relative to it (row 16-byte aligned). Eight lanes share a piece, so neighbouring lanes
// decode neighbouring values and read neighbouring activations. Each value's unsigned code
// is first gathered into one byte of a word (q), then turned into a float by sgllm__cu_byte_f.
template <int T> static __device__ inline void sgllm__cu_dq4(const uint8_t *row, int64_t g, int m, float v[4]) {
    uint32_t q;   // 4 codes, one per byte, unsigned
    float off, d, bias = 0.0f; // v = (code - off) * d + bias
    if (T == T_Q8_0) {
        const uint8_t *b = row + g * 34;
        d = sgllm__cu_h16((uint16_t)sgllm__cu_u16(b));
        q = sgllm__cu_u32a2(b + 2 + 4 * m) ^ 0x80808080u; // int8 -> code + 128
        off = 8388608.0f + 128.0f;
    } else if (T == T_Q4_0 || T == T_Q5_0) {
        const uint8_t *b = row + g * (T == T_Q4_0 ? 18 : 22);
        d = sgllm__cu_h16((uint16_t)sgllm__cu_u16(b));
        q = (sgllm__cu_u32a2(b + (T == T_Q4_0 ? 2 : 6) + 4 * (m & 3)) >> (m >= 4 ? 4 : 0)) & 0x0F0F0F0Fu;
        if (T == T_Q5_0) {
            uint32_t h = sgllm__cu_u32a2(b + 2) >> (4 * m); // high bits of values 4m..4m+3
            q |= ((h & 1) << 4) | ((h & 2) << 11) | ((h & 4) << 18) | ((h & 8) << 25);
        }
        off = 8388608.0f + (T == T_Q4_0 ? 8.0f : 16.0f);
    } else if (T == T_Q4_1 || T == T_Q5_1) {
        const uint8_t *b = row + g * (T == T_Q4_1 ? 20 : 24);
        uint32_t dm = sgllm__cu_u32(b);
        d = sgllm__cu_h16((uint16_t)(dm & 0xffff));
        bias = sgllm__cu_h16((uint16_t)(dm >> 16));
        q = (sgllm__cu_u32(b + (T == T_Q4_1 ? 4 : 8) + 4 * (m & 3)) >> (m >= 4 ? 4 : 0)) & 0x0F0F0F0Fu;
        if (T == T_Q5_1) {
            uint32_t h = sgllm__cu_u32(b + 4) >> (4 * m);
            q |= ((h & 1) << 4) | ((h & 2) << 11) | ((h & 4) << 18) | ((h & 8) << 25);
        }
        off = 8388608.0f;
    } else if (T == T_Q4_K || T == T_Q5_K) {
        const uint8_t *b = row + (g / 8) * (T == T_Q4_K ? 144 : 176);
        int sub = (int)(g % 8), sc, mn;
        uint32_t dd = sgllm__cu_u32(b);
        sgllm__cu_kscale(sub, b + 4, &sc, &mn);
        d = sgllm__cu_h16((uint16_t)(dd & 0xffff)) * (float)sc;
        bias = -sgllm__cu_h16((uint16_t)(dd >> 16)) * (float)mn;
        q = (sgllm__cu_u32(b + (T == T_Q4_K ? 16 : 48) + 32 * (sub / 2) + 4 * m) >> ((sub & 1) * 4)) & 0x0F0F0F0Fu;
        if (T == T_Q5_K) q |= ((sgllm__cu_u32(b + 16 + 4 * m) >> sub) & 0x01010101u) << 4;
        off = 8388608.0f;
    } else {
        const uint8_t *b = row + (g / 8) * 210;
        int piece = (int)(g % 8), h = piece / 4, k = piece % 4;
        d = sgllm__cu_h16((uint16_t)sgllm__cu_u16(b + 208)) * (float)(int8_t)b[192 + 8 * h + m / 4 + 2 * k];
        uint32_t lo = sgllm__cu_u32a2(b + 64 * h + 32 * (k & 1) + 4 * m), hi = sgllm__cu_u32a2(b + 128 + 32 * h + 4 * m);
        q = ((lo >> (k >= 2 ? 4 : 0)) & 0x0F0F0F0Fu) | (((hi >> (2 * k)) & 0x03030303u) << 4);
        off = 8388608.0f + 32.0f;
    }
#pragma unroll
    for (int e = 0; e < 4; e++) v[e] = (sgllm__cu_byte_f(q, e) - off) * d + bias;
}

// --- 3. Row-wise ops -----------------------------------------------------------------------
// One block per row (or per (token, head)); sums of squares reduce in float through warp
// shuffles and a small shared array. Every kernel here waits for its predecessors first
// (sgllm__cu_pdl_wait) and lets its dependents launch at once: they are short, and a decode
// step is a chain of hundreds of them. The fused residual-add norms (sgllm__cu_norm_add_k,
// sgllm__cu_norm_add_xq_k) let them launch even before their wait: in a decode step each sits
// between two matrix-vector products, and the second then starts streaming its weights on the
// SMs the first frees (H100 Llama-3-8B decode: Q8_0 65.0% -> 66.4% of the floor, Gemma 3 270M
// step 643 -> 632 us; docs/PERF.md).

static __device__ inline float sgllm__cu_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ inline float sgllm__cu_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
static __device__ float sgllm__cu_block_sum(float v) {
    __shared__ float part[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    v = sgllm__cu_warp_sum(v);
    __syncthreads(); // part[] may still be read by a previous call
    if (lane == 0) part[warp] = v;
    __syncthreads();
    float s = lane < nw ? part[lane] : 0.0f;
    return sgllm__cu_warp_sum(s);
}

static __global__ void sgllm__cu_embed_k(uint32_t type, const uint8_t *w, int64_t n_rows, int64_t cols,
                                         int64_t row_bytes, const int32_t *tokens, float scale, float *out) {
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    int64_t i = blockIdx.x;
    int32_t tok = tokens[i];
    float *o = out + i * cols;
    bool ok = tok >= 0 && tok < n_rows;
    const uint8_t *row = w + (ok ? (int64_t)tok * row_bytes : 0);
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) o[j] = ok ? sgllm__cu_dq_elem(type, row, j) * scale : 0.0f;
}

extern "C" sgllm_status sgllm__cuda_embed(sgllm__cuda *c, uint32_t type, const void *w, int64_t n_rows, int64_t cols,
                                          const int32_t *tokens, int64_t n, float scale, float *out) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    sgllm__cu_xq_forget(c, out);
    int64_t rb = sgllm__cu_row_bytes(type, cols);
    if (!w || !tokens || !out || n_rows <= 0 || !rb || n < 0 || n > INT32_MAX)
        return sgllm__cu_bad(c, "embed", "bad pointer, type or shape");
    if (!n) return SGLLM_OK;
    cudaSetDevice(c->device);
    return sgllm__cu_launch(c, "embed", sgllm__cu_embed_k, dim3((unsigned)n), dim3(256), 0, type, (const uint8_t *)w,
                            n_rows, cols, rb, tokens, scale, out);
}

static __global__ void sgllm__cu_add_rmsnorm_k(float *x, const float *delta, const float *w, float *y, int64_t dim,
                                               float eps) {
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    int64_t r = blockIdx.x;
    float *xr = x + r * dim, *yr = y + r * dim;
    const float *dr = delta ? delta + r * dim : NULL;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = xr[i];
        if (dr) xr[i] = v = v + dr[i];
        ss += v * v;
    }
    float scale = rsqrtf(sgllm__cu_block_sum(ss) / (float)dim + eps);
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = xr[i] * scale * (w ? w[i] : 1.0f);
}

static int sgllm__cu_threads(int want, int lo, int hi) {
    want = want < lo ? lo : want > hi ? hi : want;
    return want / 32 * 32;
}

// The most threads (whole warps) a block of kern can launch with, given its registers; asked
// once, kept in *slot. Caps dispatch.norm_threads for kernels whose registers do not allow 1024.
template <typename K> static int sgllm__cu_max_threads(K kern, int *slot) {
    if (!*slot) {
        cudaFuncAttributes fa;
        if (cudaFuncGetAttributes(&fa, (const void *)kern) == cudaSuccess) *slot = fa.maxThreadsPerBlock / 32 * 32;
        else cudaGetLastError(); // not sticky; 256 below
        if (*slot < 32) *slot = 256;
    }
    return *slot;
}

extern "C" sgllm_status sgllm__cuda_add_rmsnorm(sgllm__cuda *c, float *x, const float *delta, const float *w, float *y,
                                                int64_t rows, int64_t dim, float eps) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    sgllm__cu_xq_forget(c, x), sgllm__cu_xq_forget(c, y);
    if (!x || !y || rows < 0 || rows > INT32_MAX || dim <= 0 || !(eps >= 0))
        return sgllm__cu_bad(c, "add_rmsnorm", "bad pointer or shape");
    if (!rows) return SGLLM_OK;
    cudaSetDevice(c->device);
    int threads = sgllm__cu_threads(c->disp.norm_threads, 32, 1024);
    return sgllm__cu_launch(c, "add_rmsnorm", sgllm__cu_add_rmsnorm_k, dim3((unsigned)rows), dim3(threads), 0, x, delta, w,
                            y, dim, eps);
}

// The activation formats of the int8 matrix-vector path (section 4 describes them), and what
// every quantizer of a 32-value format (sgllm__cu_xq, the fused norms, decode attention's
// merge) stores per block from its scale d and its codes' sum: (fp16 d, sum) for Q8_0, (fp16
// d, fp16 d sum) for Q8_1 (q81). One definition, so their bytes agree. (Q8_K stores (d, sum).)
enum { XQ_Q8_0 = 0, XQ_Q8_1 = 1, XQ_Q8_K = 2 };
static __device__ __forceinline__ float2 sgllm__cu_xq_ds32(bool q81, float d, int sum) {
    return make_float2(__half2float(__float2half_rn(d)), q81 ? __half2float(__float2half_rn(d * (float)sum)) : (float)sum);
}

// V consecutive floats (V = 4: one 16-byte access, p 16-byte aligned).
template <int V> static __device__ inline void sgllm__cu_ldv(const float *p, float v[V]) {
    if (V == 4) {
        float4 t = *(const float4 *)p;
        v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
    } else {
        v[0] = *p;
    }
}
template <int V> static __device__ inline void sgllm__cu_stv(float *p, const float v[V]) {
    if (V == 4) *(float4 *)p = make_float4(v[0], v[1], v[2], v[3]);
    else *p = v[0];
}

// One block per row, V floats per thread per step: x += rmsnorm(delta) * dw (or + delta),
// then y = rmsnorm(x) * w. Each thread reads back only what it wrote, so y may be x; ys, when
// given, receives a copy of the row's y (shared memory, for a quantization right after).
// A decode step runs this between two products, on one token, so its latency is a chain of
// memory round trips: the first NS steps' x and delta are loaded at once before either sum and
// kept in registers for the add and the output (the arithmetic and the order of every sum as
// if each value were read when used); longer rows read the rest as they go. The weights of
// those steps are nobody's output: they are loaded before the wait for the predecessor
// (sgllm__cu_pdl_wait, called here), so their DRAM trips overlap its tail instead of following
// the sums. The arithmetic is spelled out (__fmaf_rn, __fmul_rn): every kernel that inlines
// this, with or without QK, gives the same bits, whatever the compiler would contract. QK 0 or
// 1 (XQ_Q8_0 / XQ_Q8_1; rows of at most NS steps, V = 4, dim a
// multiple of 32): y is also quantized into qs / ds from the registers that hold it, each
// 32-value block by the 8 neighbouring threads that hold its float4s, with sgllm__cu_xq's
// arithmetic and shuffle order (so its bytes), no block barrier and no second pass.
template <int V, int QK = -1>
static __device__ inline void sgllm__cu_norm_add_row(float *x, const float *delta, const float *dw, const float *w,
                                                     float *y, int64_t dim, float eps, float *ys = NULL,
                                                     int8_t *qs = NULL, float2 *ds = NULL) {
    constexpr int NS = 4; // steps kept in registers
    int64_t r = blockIdx.x, step = (int64_t)blockDim.x * V, i0 = (int64_t)threadIdx.x * V;
    float *xr = x + r * dim, *yr = y + r * dim;
    const float *dr = delta ? delta + r * dim : NULL;
    float kx[NS][V], kd[NS][V], kw[NS][V], kg[NS][V], a[V], b[V], dscale = 1.0f;
#pragma unroll
    for (int k = 0; k < NS; k++) {
        int64_t i = i0 + k * step;
        if (i >= dim) break;
        if (w) sgllm__cu_ldv<V>(w + i, kw[k]);
        if (dr && dw) sgllm__cu_ldv<V>(dw + i, kg[k]);
    }
    sgllm__cu_pdl_wait();
#pragma unroll
    for (int k = 0; k < NS; k++) {
        int64_t i = i0 + k * step;
        if (i >= dim) break;
        sgllm__cu_ldv<V>(xr + i, kx[k]);
        if (dr) sgllm__cu_ldv<V>(dr + i, kd[k]);
    }
    if (dr && dw) {
        float ss = 0.0f;
#pragma unroll
        for (int k = 0; k < NS; k++) {
            if (i0 + k * step >= dim) break;
#pragma unroll
            for (int e = 0; e < V; e++) ss = __fmaf_rn(kd[k][e], kd[k][e], ss);
        }
        for (int64_t i = i0 + NS * step; i < dim; i += step) {
            sgllm__cu_ldv<V>(dr + i, a);
#pragma unroll
            for (int e = 0; e < V; e++) ss = __fmaf_rn(a[e], a[e], ss);
        }
        dscale = rsqrtf(sgllm__cu_block_sum(ss) / (float)dim + eps);
    }
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < NS; k++) {
        int64_t i = i0 + k * step;
        if (i >= dim) break;
        if (dr) {
#pragma unroll
            for (int e = 0; e < V; e++)
                kx[k][e] = dw ? __fmaf_rn(__fmul_rn(kd[k][e], dscale), kg[k][e], kx[k][e]) : __fadd_rn(kx[k][e], kd[k][e]);
            sgllm__cu_stv<V>(xr + i, kx[k]);
        }
#pragma unroll
        for (int e = 0; e < V; e++) ss = __fmaf_rn(kx[k][e], kx[k][e], ss);
    }
    for (int64_t i = i0 + NS * step; i < dim; i += step) {
        sgllm__cu_ldv<V>(xr + i, a);
        if (dr) {
            sgllm__cu_ldv<V>(dr + i, b);
            float g[V];
            if (dw) sgllm__cu_ldv<V>(dw + i, g);
#pragma unroll
            for (int e = 0; e < V; e++) a[e] = dw ? __fmaf_rn(__fmul_rn(b[e], dscale), g[e], a[e]) : __fadd_rn(a[e], b[e]);
            sgllm__cu_stv<V>(xr + i, a);
        }
#pragma unroll
        for (int e = 0; e < V; e++) ss = __fmaf_rn(a[e], a[e], ss);
    }
    float scale = rsqrtf(sgllm__cu_block_sum(ss) / (float)dim + eps);
    if constexpr (QK >= 0) { // every step in registers (the caller's condition); the warp is converged here
        static_assert(QK < 0 || V == 4, "in-register quantization: float4 steps");
        int lane = threadIdx.x % 32;
#pragma unroll
        for (int k = 0; k < NS; k++) {
            if ((int64_t)k * step >= dim) break; // the same for every thread
            int64_t i = i0 + k * step;
            bool in = i < dim; // whole 8-thread groups (dim is a multiple of 32)
            unsigned mk = __ballot_sync(0xffffffffu, in);
            if (!in) continue;
#pragma unroll
            for (int e = 0; e < V; e++) a[e] = __fmul_rn(__fmul_rn(kx[k][e], scale), w ? kw[k][e] : 1.0f);
            sgllm__cu_stv<V>(yr + i, a);
            float am = fmaxf(fmaxf(fabsf(a[0]), fabsf(a[1])), fmaxf(fabsf(a[2]), fabsf(a[3])));
#pragma unroll
            for (int o = 1; o < 8; o <<= 1) am = fmaxf(am, __shfl_xor_sync(mk, am, o));
            float d = am / 127.f, id = am != 0.f ? 127.f / am : 0.f;
            int q0 = __float2int_rn(a[0] * id), q1 = __float2int_rn(a[1] * id), q2 = __float2int_rn(a[2] * id),
                q3 = __float2int_rn(a[3] * id);
            ((uint32_t *)(qs + r * dim))[i / 4] = (uint32_t)(q0 & 255) | ((uint32_t)(q1 & 255) << 8) |
                                                  ((uint32_t)(q2 & 255) << 16) | ((uint32_t)(q3 & 255) << 24);
            int sum = q0 + q1 + q2 + q3;
#pragma unroll
            for (int o = 1; o < 8; o <<= 1) sum += __shfl_xor_sync(mk, sum, o);
            if (lane % 8 == 0) ds[r * (dim / 32) + i / 32] = sgllm__cu_xq_ds32(QK == XQ_Q8_1, d, sum);
        }
    } else {
#pragma unroll
        for (int k = 0; k < NS; k++) {
            int64_t i = i0 + k * step;
            if (i >= dim) break;
#pragma unroll
            for (int e = 0; e < V; e++) a[e] = __fmul_rn(__fmul_rn(kx[k][e], scale), w ? kw[k][e] : 1.0f);
            sgllm__cu_stv<V>(yr + i, a);
            if (ys) sgllm__cu_stv<V>(ys + i, a);
        }
        for (int64_t i = i0 + NS * step; i < dim; i += step) {
            sgllm__cu_ldv<V>(xr + i, a);
            if (w) sgllm__cu_ldv<V>(w + i, b);
#pragma unroll
            for (int e = 0; e < V; e++) a[e] = __fmul_rn(__fmul_rn(a[e], scale), w ? b[e] : 1.0f);
            sgllm__cu_stv<V>(yr + i, a);
            if (ys) sgllm__cu_stv<V>(ys + i, a);
        }
    }
}

template <int V>
static __global__ void sgllm__cu_norm_add_k(float *x, const float *delta, const float *dw, const float *w, float *y,
                                            int64_t dim, float eps) {
    sgllm__cu_pdl_trigger(); // first: see section 3's header
    sgllm__cu_norm_add_row<V>(x, delta, dw, w, y, dim, eps); // waits itself
}

static bool sgllm__cu_al16(const void *p) { return ((uintptr_t)p & 15) == 0; }

// The same rows also quantized for the next matrix-vector product (section 4); false when
// the shape does not allow it (then nothing is launched).
static int sgllm__cu_norm_xq_cap(sgllm__cuda *c); // the quantizing kernels' most threads per block
static bool sgllm__cu_norm_add_xq(sgllm__cuda *c, uint32_t quant_for, float *x, const float *delta, const float *delta_w,
                                  const float *w, float *y, int64_t rows, int64_t dim, float eps, int threads,
                                  sgllm_status *s);

extern "C" sgllm_status sgllm__cuda_norm_add_rmsnorm(sgllm__cuda *c, float *x, const float *delta, const float *delta_w,
                                                     const float *w, float *y, int64_t rows, int64_t dim, float eps) {
    return sgllm__cuda_norm_add_rmsnorm_q(c, x, delta, delta_w, w, y, rows, dim, eps, T_F32);
}

extern "C" sgllm_status sgllm__cuda_norm_add_rmsnorm_q(sgllm__cuda *c, float *x, const float *delta,
                                                       const float *delta_w, const float *w, float *y, int64_t rows,
                                                       int64_t dim, float eps, uint32_t quant_for) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    if (!x || !y || (delta_w && !delta) || rows < 0 || rows > INT32_MAX || dim <= 0 || !(eps >= 0))
        return sgllm__cu_bad(c, "norm_add_rmsnorm", "bad pointer or shape");
    if (!rows) return SGLLM_OK;
    cudaSetDevice(c->device);
    // float4 accesses when every row and vector is 16-byte aligned; one per thread at small
    // rows (640 floats: 160 threads), never more threads than dispatch.norm_threads
    bool v4 = dim % 4 == 0 && sgllm__cu_al16(x) && sgllm__cu_al16(y) && (!delta || sgllm__cu_al16(delta)) &&
              (!delta_w || sgllm__cu_al16(delta_w)) && (!w || sgllm__cu_al16(w));
    int64_t per = v4 ? dim / 4 : dim;
    int cap = sgllm__cu_threads(c->disp.norm_threads, 32, 1024);
    int kcap = v4 ? sgllm__cu_max_threads(sgllm__cu_norm_add_k<4>, &c->norm_cap[0])
                  : sgllm__cu_max_threads(sgllm__cu_norm_add_k<1>, &c->norm_cap[1]);
    cap = cap < kcap ? cap : kcap;
    // the quantizing kernels' cap too, quantizing or not: the same threads add up the same sums,
    // so y has the same bits whether the norm quantizes it or not
    int qcap = v4 ? sgllm__cu_norm_xq_cap(c) : cap;
    cap = cap < qcap ? cap : qcap;
    int threads = sgllm__cu_threads(per + 31 < cap ? (int)(per + 31) : cap, 32, 1024);
    sgllm__cu_xq_forget(c, x), sgllm__cu_xq_forget(c, y); // they change: the activation buffer no longer holds them
    sgllm_status s = SGLLM_OK;
    if (v4 && sgllm__cu_norm_add_xq(c, quant_for, x, delta, delta_w, w, y, rows, dim, eps, threads, &s)) return s;
    if (v4)
        return sgllm__cu_launch(c, "norm_add_rmsnorm", sgllm__cu_norm_add_k<4>, dim3((unsigned)rows), dim3(threads), 0, x,
                                delta, delta_w, w, y, dim, eps);
    return sgllm__cu_launch(c, "norm_add_rmsnorm", sgllm__cu_norm_add_k<1>, dim3((unsigned)rows), dim3(threads), 0, x,
                            delta, delta_w, w, y, dim, eps);
}

// Normalizes one head of head_dim values in place with one warp (the same arithmetic for both
// launch shapes, so they agree bit for bit).
static __device__ inline void sgllm__cu_head_norm(float *p, const float *w, int head_dim, float eps) {
    int lane = threadIdx.x % 32;
    float ss = 0.0f;
    for (int i = lane; i < head_dim; i += 32) ss += p[i] * p[i];
    float scale = rsqrtf(sgllm__cu_warp_sum(ss) / (float)head_dim + eps);
    for (int i = lane; i < head_dim; i += 32) p[i] = p[i] * scale * (w ? w[i] : 1.0f);
}

struct sgllm__cu_qkv {
    float *q, *k, *v;
    int64_t qs, ks, vs;   // token strides
    int32_t nq, nk, nv;   // heads of each part (nv 0 when v is not normalized)
    const float *qw, *kw;
    int32_t head_dim;
    float eps;
};

static __device__ inline void sgllm__cu_qkv_head(const sgllm__cu_qkv &a, int64_t t, int32_t h) {
    if (h < a.nq) sgllm__cu_head_norm(a.q + t * a.qs + (int64_t)h * a.head_dim, a.qw, a.head_dim, a.eps);
    else if (h < a.nq + a.nk)
        sgllm__cu_head_norm(a.k + t * a.ks + (int64_t)(h - a.nq) * a.head_dim, a.kw, a.head_dim, a.eps);
    else sgllm__cu_head_norm(a.v + t * a.vs + (int64_t)(h - a.nq - a.nk) * a.head_dim, NULL, a.head_dim, a.eps);
}

// Small batches: grid (n_tok, heads), one warp per (token, head).
static __global__ void sgllm__cu_qkv_norm_head_k(sgllm__cu_qkv a) {
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    sgllm__cu_qkv_head(a, blockIdx.x, (int32_t)blockIdx.y);
}

// Large batches: grid (n_tok), each warp of the block loops over the token's heads.
static __global__ void sgllm__cu_qkv_norm_token_k(sgllm__cu_qkv a) {
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    int32_t total = a.nq + a.nk + a.nv, nw = (int32_t)(blockDim.x / 32);
    for (int32_t h = (int32_t)(threadIdx.x / 32); h < total; h += nw) sgllm__cu_qkv_head(a, blockIdx.x, h);
}

extern "C" sgllm_status sgllm__cuda_qkv_norm(sgllm__cuda *c, float *q, int64_t q_stride, int32_t n_head, const float *q_w,
                                             float *k, int64_t k_stride, int32_t n_head_kv, const float *k_w, float *v,
                                             int64_t v_stride, int32_t head_dim, int64_t n_tok, float eps) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    sgllm__cu_xq_forget(c, q), sgllm__cu_xq_forget(c, k), sgllm__cu_xq_forget(c, v);
    if (!q || !k || n_head <= 0 || n_head_kv <= 0 || head_dim <= 0 || n_tok < 0 || n_tok > INT32_MAX ||
        q_stride < (int64_t)n_head * head_dim || k_stride < (int64_t)n_head_kv * head_dim ||
        (v && v_stride < (int64_t)n_head_kv * head_dim) || !(eps >= 0))
        return sgllm__cu_bad(c, "qkv_norm", "bad pointer or shape");
    if (!n_tok) return SGLLM_OK;
    sgllm__cu_qkv a = {q, k, v, q_stride, k_stride, v_stride, n_head, n_head_kv, v ? n_head_kv : 0, q_w, k_w, head_dim, eps};
    int32_t heads = a.nq + a.nk + a.nv;
    if (heads > 65535) return sgllm__cu_bad(c, "qkv_norm", "too many heads");
    cudaSetDevice(c->device);
    if (n_tok <= c->disp.qknorm_per_head_max_tokens)
        return sgllm__cu_launch(c, "qkv_norm", sgllm__cu_qkv_norm_head_k, dim3((unsigned)n_tok, (unsigned)heads), dim3(32),
                                0, a);
    return sgllm__cu_launch(c, "qkv_norm", sgllm__cu_qkv_norm_token_k, dim3((unsigned)n_tok),
                            dim3(sgllm__cu_threads(c->disp.norm_threads, 32, 1024)), 0, a);
}

// Rotates pair i of the head at p (global or shared memory) by angle fp * base^(-2i/n_rot),
// computed as the CPU reference does (float position times powf of the base), so both agree
// to rounding; rope_k and qkv_post_k share it and agree bit for bit.
// The angle and the rotation are separate so that decode attention can take the angles before
// its inputs are ready (sgllm__cuda_attn_decode_post).
static __device__ inline float2 sgllm__cu_rope_cs(int32_t i, int32_t n_rot, float fp, float theta_base) {
    float theta = fp * powf(theta_base, -2.0f * (float)i / (float)n_rot);
    return make_float2(cosf(theta), sinf(theta));
}
static __device__ inline void sgllm__cu_rope_rot(float *p, int32_t i, int32_t n_rot, float2 r, int neox) {
    int32_t half = n_rot / 2, ia = neox ? i : 2 * i, ib = neox ? i + half : 2 * i + 1;
    float x0 = p[ia], x1 = p[ib];
    p[ia] = x0 * r.x - x1 * r.y;
    p[ib] = x0 * r.y + x1 * r.x;
}
static __device__ inline void sgllm__cu_rope_pair(float *p, int32_t i, int32_t n_rot, float fp, float theta_base,
                                                  int neox) {
    sgllm__cu_rope_rot(p, i, n_rot, sgllm__cu_rope_cs(i, n_rot, fp, theta_base), neox);
}

// grid (n_tok, n_heads); thread i rotates pair i of the head.
static __global__ void sgllm__cu_rope_k(float *x, int64_t stride, int32_t head_dim, int32_t n_rot, const int32_t *pos,
                                        float pos_scale, float theta_base, int neox) {
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    int64_t t = blockIdx.x;
    float *p = x + t * stride + (int64_t)blockIdx.y * head_dim;
    float fp = (float)pos[t] * pos_scale;
    for (int32_t i = threadIdx.x; i < n_rot / 2; i += blockDim.x) sgllm__cu_rope_pair(p, i, n_rot, fp, theta_base, neox);
}

extern "C" sgllm_status sgllm__cuda_rope(sgllm__cuda *c, float *x, int64_t x_stride, int32_t n_heads, int32_t head_dim,
                                         int32_t n_rot, const int32_t *pos, int64_t n_tok, float pos_scale,
                                         float theta_base, int neox) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    sgllm__cu_xq_forget(c, x);
    if (!x || !pos || n_heads <= 0 || n_heads > 65535 || head_dim <= 0 || n_rot < 2 || n_rot > head_dim ||
        (n_rot & 1) || n_tok < 0 || n_tok > INT32_MAX || x_stride < (int64_t)n_heads * head_dim || !(theta_base > 0))
        return sgllm__cu_bad(c, "rope", "bad pointer or shape");
    if (!n_tok) return SGLLM_OK;
    cudaSetDevice(c->device);
    int threads = sgllm__cu_threads(n_rot / 2 + 31, 32, 256);
    return sgllm__cu_launch(c, "rope", sgllm__cu_rope_k, dim3((unsigned)n_tok, (unsigned)n_heads), dim3(threads), 0, x,
                            x_stride, head_dim, n_rot, pos, pos_scale, theta_base, neox);
}

// The paged cache: logical row r of a sequence lives at physical row
// page_table[r >> shift] << shift | r & (2^shift - 1) (page_table NULL: row r). Attention
// (both kernels), the cache write and qkv_post map every row through it.
static __device__ inline int64_t sgllm__cu_page_row(const int32_t *pt, int32_t shift, int64_t r) {
    return pt ? ((int64_t)pt[r >> shift] << shift) + (r & (((int64_t)1 << shift) - 1)) : r;
}

// log2 of a page size (a power of two); 0 without a page table.
static int32_t sgllm__cu_page_shift(const int32_t *page_table, int32_t page_size) {
    int32_t sh = 0;
    while (page_table && ((int64_t)1 << sh) < page_size) sh++;
    return sh;
}

// One warp: s (hd floats, shared memory) = src + b (b optional), then with norm RMS-normalized
// and times w (optional). The first half of qkv_post for one q or k head (RoPE follows).
// The lane's values c0 + lane, c0 + lane + 32, ... of p below n (16 of them; zeros past n, or
// def where p is NULL), loaded at once: a loop that stores between its loads waits for each
// load in turn (the compiler cannot tell that the stores miss p), a round trip to L2 apiece.
static __device__ inline void sgllm__cu_lane16(const float *p, int32_t c0, int32_t n, float def, float v[16]) {
    int lane = threadIdx.x % 32;
#pragma unroll
    for (int k = 0; k < 16; k++) {
        int32_t i = c0 + k * 32 + lane;
        v[k] = !p ? def : i < n ? p[i] : 0.0f;
    }
}
// The same of p, plus b's values where b is given (a bias).
static __device__ inline void sgllm__cu_lane16_add(const float *p, const float *b, int32_t c0, int32_t n, float v[16]) {
    float bb[16];
    sgllm__cu_lane16(p, c0, n, 0.0f, v);
    sgllm__cu_lane16(b, c0, n, 0.0f, bb);
#pragma unroll
    for (int k = 0; k < 16; k++)
        if (b) v[k] += bb[k];
}

static __device__ inline void sgllm__cu_head_post(const float *src, const float *b, int norm, const float *w, float eps,
                                                  int32_t hd, float *s) {
    int lane = threadIdx.x % 32;
    float ss = 0.0f;
    for (int32_t c0 = 0; c0 < hd; c0 += 512) {
        float v[16];
        sgllm__cu_lane16_add(src, b, c0, hd, v);
#pragma unroll
        for (int k = 0; k < 16; k++) {
            int32_t i = c0 + k * 32 + lane;
            if (i >= hd) break;
            s[i] = v[k];
            ss += v[k] * v[k];
        }
    }
    if (norm) {
        float scale = rsqrtf(sgllm__cu_warp_sum(ss) / (float)hd + eps);
        for (int32_t c0 = 0; c0 < hd; c0 += 512) {
            float wv[16];
            sgllm__cu_lane16(w, c0, hd, 1.0f, wv);
#pragma unroll
            for (int k = 0; k < 16; k++) {
                int32_t i = c0 + k * 32 + lane;
                if (i < hd) s[i] = s[i] * scale * wv[k];
            }
        }
    }
    __syncwarp();
}

// grid (n_tok, head groups), one warp per head (q heads first, then kv heads), each with
// head_dim floats of dynamic shared memory. The arithmetic is that of add_bias, head_norm,
// rope_pair and kv_write in the same order, so the result matches them bit for bit.
static __global__ void sgllm__cu_qkv_post_k(sgllm__cuda_qkv_post_args a) {
    extern __shared__ float sgllm__cu_qkv_sh[];
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int32_t h = (int32_t)blockIdx.y * (int32_t)(blockDim.x / 32) + warp, hd = a.head_dim;
    if (h >= a.n_head + a.n_head_kv) return; // whole warps leave; only warp-level syncs follow
    int64_t t = blockIdx.x;
    float *s = sgllm__cu_qkv_sh + (int64_t)warp * hd;
    bool is_q = h < a.n_head;
    int32_t hh = is_q ? h : h - a.n_head;
    const float *src = is_q ? a.q + t * a.q_stride + (int64_t)hh * hd : a.k + t * a.kv_stride + (int64_t)hh * hd;
    const float *b = is_q ? a.bq : a.bk;
    sgllm__cu_head_post(src, b ? b + (int64_t)hh * hd : NULL, a.qk_norm, is_q ? a.q_w : a.k_w, a.eps, hd, s);
    float fp = (float)a.pos[t] * a.pos_scale;
    for (int32_t i = lane; i < a.n_rot / 2; i += 32) sgllm__cu_rope_pair(s, i, a.n_rot, fp, a.theta_base, a.neox);
    __syncwarp();
    if (is_q) {
        float *dst = a.q + t * a.q_stride + (int64_t)hh * hd;
        for (int i = lane; i < hd; i += 32) dst[i] = s[i];
        return;
    }
    int64_t kvd = (int64_t)a.n_head_kv * hd;
    int64_t row = sgllm__cu_page_row(a.page_table, a.page_table ? __ffs(a.page_size) - 1 : 0, a.pos[t]) * kvd +
                  (int64_t)hh * hd;
    __half *kc = (__half *)a.k_cache + row, *vc = (__half *)a.v_cache + row;
    const float *vs = a.v + t * a.kv_stride + (int64_t)hh * hd, *bv = a.bv ? a.bv + (int64_t)hh * hd : NULL;
    for (int32_t c0 = 0; c0 < hd; c0 += 512) {
        float v[16];
        sgllm__cu_lane16_add(vs, bv, c0, hd, v);
#pragma unroll
        for (int k = 0; k < 16; k++) {
            int32_t i = c0 + k * 32 + lane;
            if (i >= hd) break;
            kc[i] = __float2half_rn(s[i]);
            vc[i] = __float2half_rn(v[k]);
        }
    }
}

extern "C" sgllm_status sgllm__cuda_qkv_post(sgllm__cuda *c, const sgllm__cuda_qkv_post_args *a) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    if (a) sgllm__cu_xq_forget(c, a->q), sgllm__cu_xq_forget(c, a->k);
    if (!a || !a->q || !a->k || !a->v || !a->pos || !a->k_cache || !a->v_cache || a->n_head <= 0 ||
        a->n_head_kv <= 0 || a->head_dim <= 0 || a->head_dim > 4096 || a->n_rot < 2 || a->n_rot > a->head_dim ||
        (a->n_rot & 1) || a->n_tok < 0 || a->n_tok > INT32_MAX || a->q_stride < (int64_t)a->n_head * a->head_dim ||
        a->kv_stride < (int64_t)a->n_head_kv * a->head_dim || !(a->theta_base > 0) || !(a->eps >= 0) ||
        (a->page_table && (a->page_size <= 0 || (a->page_size & (a->page_size - 1)))))
        return sgllm__cu_bad(c, "qkv_post", "bad pointer or shape");
    if (!a->n_tok) return SGLLM_OK;
    int32_t heads = a->n_head + a->n_head_kv, warps = heads < 4 ? heads : 4;
    while (warps > 1 && (size_t)warps * a->head_dim * sizeof(float) > 48 * 1024) warps--;
    int32_t groups = (heads + warps - 1) / warps;
    if (groups > 65535) return sgllm__cu_bad(c, "qkv_post", "too many heads");
    cudaSetDevice(c->device);
    return sgllm__cu_launch(c, "qkv_post", sgllm__cu_qkv_post_k, dim3((unsigned)a->n_tok, (unsigned)groups),
                            dim3(32 * warps), (size_t)warps * a->head_dim * sizeof(float), *a);
}

static __global__ void sgllm__cu_gated_k(int act, float *g, const float *u, int64_t n) {
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float x = g[i], a;
        if (act == SGLLM__CUDA_ACT_GELU_TANH) a = 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
        else a = x / (1.0f + expf(-x));
        g[i] = a * u[i];
    }
}

extern "C" sgllm_status sgllm__cuda_gated_act(sgllm__cuda *c, int act, float *g, const float *u, int64_t n) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    sgllm__cu_xq_forget(c, g);
    if (!g || !u || n < 0 || (act != SGLLM__CUDA_ACT_SILU && act != SGLLM__CUDA_ACT_GELU_TANH))
        return sgllm__cu_bad(c, "gated_act", "bad pointer, size or activation");
    if (!n) return SGLLM_OK;
    cudaSetDevice(c->device);
    int64_t blocks = (n + 255) / 256;
    if (blocks > 65536) blocks = 65536;
    return sgllm__cu_launch(c, "gated_act", sgllm__cu_gated_k, dim3((unsigned)blocks), dim3(256), 0, act, g, u, n);
}

// --- 4. Matrix-vector with fused dequantization --------------------------------------------
// Decode reads every weight once, so the kernel is a stream over the weight bytes: S warps
// per output row (S = 1 for tall matrices; 2 or 4 when there are too few rows to keep enough
// loads in flight, each warp taking every S-th piece of the row and the partial sums meeting
// in shared memory), all NT (<= 8) tokens of a small batch computed from one read.
// - float types (F32/F16/BF16), 16-byte aligned rows: each lane loads U 16-byte words per
//   step straight into registers (U independent loads in flight per lane).
// - block-quantized types, rows aligned to 4 bytes: each warp streams its chunks of 1024
//   values through a ring of MV_STAGES shared-memory stages with cp.async (16-, 8- or 4-byte
//   copies by alignment), several chunks in flight; then lanes decode 4 consecutive values
//   each (dq4), so the activations are read as coalesced float4s.
// - block-quantized types with dispatch.matvec_int8: the same ring, activations quantized to
//   int8 blocks in shared memory and integer dot products (see sgllm__cu_mv_i8_k below); the
//   fp32 kernel stays as the reference variant.
// - anything else (odd row alignment): one value at a time (dq_elem), correct but slow.
// Programmatic dependent launch: a kernel's weights are no predecessor's output, so before
// sgllm__cu_pdl_wait each kernel already streams its first weight bytes (the staged kernels
// fill their first ring stages, the float kernel loads its first step into registers, the
// direct kernel prefetches rows of up to 4 KB into L2); activations and outputs come after.

enum { MV_CHUNK = 1024, MV_STAGES = 4, MV_MAX_CHUNK_BYTES = 1088, MV_MAX_WARPS = 8 };

// Warps per block of the matrix-vector kernels: dispatch.matvec_warps within 1..MV_MAX_WARPS.
static int sgllm__cu_mv_warps(const sgllm__cuda *c) {
    int w = c->disp.matvec_warps;
    return w < 1 ? 1 : w > MV_MAX_WARPS ? MV_MAX_WARPS : w;
}

static __device__ inline void sgllm__cu_cp_async(void *smem, const void *gmem, int bytes) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    if (bytes == 16) asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
    else if (bytes == 8) asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(s), "l"(gmem));
    else asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem));
}
static __device__ inline void sgllm__cu_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> static __device__ inline void sgllm__cu_cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// acc[t] += dot(v[0..4), x_t[0..4)) for the first nt tokens (x rows of stride cols).
template <int NT>
static __device__ inline void sgllm__cu_dot4(const float v[4], const float *x, int64_t cols, int nt, float acc[NT]) {
#pragma unroll
    for (int t = 0; t < NT; t++) {
        if (t < nt) {
            float4 xv = __ldg((const float4 *)(x + t * cols));
            acc[t] += v[0] * xv.x + v[1] * xv.y + v[2] * xv.z + v[3] * xv.w;
        }
    }
}

// Sums each warp's acc, then the S warps of a row (consecutive warps of the block) through
// shared memory; the row's first lane writes y. Every thread of the block must call it.
template <int NT>
static __device__ inline void sgllm__cu_mv_store(float acc[NT], float *y, int64_t rows, int64_t r, int nt, int split) {
    __shared__ float part[MV_MAX_WARPS][NT];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = sgllm__cu_warp_sum(acc[t]);
    if (split == 1) {
#pragma unroll
        for (int t = 0; t < NT; t++)
            if (t < nt && lane == 0 && r < rows) y[t * rows + r] = acc[t];
        return;
    }
    if (lane == 0)
#pragma unroll
        for (int t = 0; t < NT; t++) part[warp][t] = acc[t];
    __syncthreads();
    if (lane == 0 && warp % split == 0 && r < rows)
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float sum = 0.0f;
            for (int k = 0; k < split; k++) sum += part[warp + k][t];
            if (t < nt) y[t * rows + r] = sum;
        }
}

template <int T, int NT>
static __global__ void __launch_bounds__(MV_MAX_WARPS * 32)
    sgllm__cu_mv_quant_k(const uint8_t *w, int64_t rows, int64_t cols, int64_t row_bytes, int copy_bytes,
                         const float *x, int nt, float *y, int split) {
    constexpr int BV = T == T_Q4_K || T == T_Q5_K || T == T_Q6_K ? 256 : 32;
    constexpr int BB = T == T_Q4_0 ? 18 : T == T_Q4_1 ? 20 : T == T_Q5_0 ? 22 : T == T_Q5_1 ? 24 : T == T_Q8_0 ? 34
                     : T == T_Q4_K ? 144 : T == T_Q5_K ? 176 : 210;
    constexpr int CB = MV_CHUNK / BV * BB; // bytes per chunk: a multiple of 16, or of 8 for Q6_K
    constexpr int CS = (CB + 15) / 16 * 16; // stage stride keeps every stage 16-byte aligned
    static_assert(CB % 8 == 0 && CB <= MV_MAX_CHUNK_BYTES, "chunk layout");
    extern __shared__ __align__(16) uint8_t mv_smem[]; // (warps, MV_STAGES, CS)
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, sub = warp % split;
    int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32 / split) + warp / split;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    uint8_t *ring = mv_smem + (int64_t)warp * MV_STAGES * CS;
    const uint8_t *row = w + (r < rows ? r : 0) * row_bytes;
    int64_t n_chunks = (cols + MV_CHUNK - 1) / MV_CHUNK;
    // this warp's chunks are sub, sub + split, ...; its k-th one sits in stage k % MV_STAGES
    int64_t mine = r < rows && n_chunks > sub ? (n_chunks - sub + split - 1) / split : 0;
    auto issue = [&](int64_t k) {
        if (k < mine) {
            int64_t off = (sub + k * split) * CB, bytes = row_bytes - off < CB ? row_bytes - off : CB;
            uint8_t *dst = ring + (k % MV_STAGES) * CS;
            for (int64_t i = (int64_t)lane * copy_bytes; i < bytes; i += 32 * copy_bytes)
                sgllm__cu_cp_async(dst + i, row + off + i, copy_bytes);
        }
        sgllm__cu_cp_commit(); // an empty group keeps the wait count uniform
    };
    // the first stages are weights only: in flight while the predecessor finishes
#pragma unroll
    for (int k = 0; k < MV_STAGES - 1; k++) issue(k);
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    for (int64_t k = 0; k < mine; k++) {
        issue(k + MV_STAGES - 1);
        sgllm__cu_cp_wait<MV_STAGES - 1>();
        __syncwarp();
        const uint8_t *st = ring + (k % MV_STAGES) * CS;
        int64_t g0 = (sub + k * split) * (MV_CHUNK / 32); // first 32-value piece of the chunk
#pragma unroll
        for (int step = 0; step < 8; step++) {
            int p = step * 4 + lane / 8, m = lane % 8; // piece of the chunk, quad of the piece
            if ((g0 + p) * 32 < cols) {
                float v[4];
                sgllm__cu_dq4<T>(st, p, m, v);
                sgllm__cu_dot4<NT>(v, x + (g0 + p) * 32 + 4 * m, cols, nt, acc);
            }
        }
        __syncwarp(); // the stage is refilled by the next iteration's issue
    }
    sgllm__cu_mv_store<NT>(acc, y, rows, r, nt, split);
}

// Float weights: the row's 16-byte words (VPL values each) are taken in steps of 32*U words;
// warp sub of the row's split takes steps sub, sub + split, ...; within a step lane loads
// words k*32 + lane (k < U), U independent loads in flight. Rows 16-byte aligned.
template <int T, int NT, int U>
static __global__ void __launch_bounds__(MV_MAX_WARPS * 32)
    sgllm__cu_mv_float_k(const uint8_t *w, int64_t rows, int64_t cols, int64_t row_bytes, const float *x, int nt,
                         float *y, int split) {
    constexpr int VPL = T == T_F32 ? 4 : 8;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, sub = warp % split;
    int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32 / split) + warp / split;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    const uint4 *row = (const uint4 *)(w + (r < rows ? r : 0) * row_bytes);
    int64_t n_words = r < rows ? cols / VPL : 0, base0 = (int64_t)sub * 32 * U;
    uint4 q[U];
    auto load = [&](int64_t base) {
#pragma unroll
        for (int k = 0; k < U; k++) {
            int64_t e = base + k * 32 + lane;
            if (e < n_words) q[k] = __ldcs(row + e); // streamed once: do not keep in L1/L2
        }
    };
    load(base0); // the first step's weights are in flight while the predecessor finishes
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    for (int64_t base = base0; base < n_words; base += (int64_t)split * 32 * U) {
        if (base != base0) load(base);
#pragma unroll
        for (int k = 0; k < U; k++) {
            int64_t e = base + k * 32 + lane;
            if (e >= n_words) continue;
            float v[8];
            uint32_t wd[4] = {q[k].x, q[k].y, q[k].z, q[k].w};
            if (T == T_F32) {
#pragma unroll
                for (int i = 0; i < 4; i++) v[i] = __uint_as_float(wd[i]);
            } else {
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    if (T == T_BF16) {
                        v[2 * i] = __uint_as_float(wd[i] << 16);
                        v[2 * i + 1] = __uint_as_float(wd[i] & 0xffff0000u);
                    } else {
                        float2 f = __half22float2(*(const __half2 *)&wd[i]);
                        v[2 * i] = f.x;
                        v[2 * i + 1] = f.y;
                    }
                }
            }
            sgllm__cu_dot4<NT>(v, x + e * VPL, cols, nt, acc);
            if (VPL == 8) sgllm__cu_dot4<NT>(v + 4, x + e * VPL + 4, cols, nt, acc);
        }
    }
    sgllm__cu_mv_store<NT>(acc, y, rows, r, nt, split);
}

template <int NT>
static __global__ void sgllm__cu_mv_generic_k(uint32_t type, const uint8_t *w, int64_t rows, int64_t cols,
                                              int64_t row_bytes, const float *x, int nt, float *y, int split) {
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, sub = warp % split;
    int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32 / split) + warp / split;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    if (r < rows) {
        const uint8_t *row = w + r * row_bytes;
        for (int64_t j = lane + 32 * sub; j < cols; j += 32 * split) {
            float v = sgllm__cu_dq_elem(type, row, j);
#pragma unroll
            for (int t = 0; t < NT; t++)
                if (t < nt) acc[t] += v * x[t * cols + j];
        }
    }
    sgllm__cu_mv_store<NT>(acc, y, rows, r, nt, split);
}

// Int8-activation path (dispatch.matvec_int8), the default for block-quantized weights. The
// float path above decodes every weight to fp32 (about ten instructions per four weights) and
// is instruction-bound; here each block first quantizes the activations into shared memory in
// the format the CPU engine pairs with the weight type (section 3 of sgllm_impl.c, llama.cpp's
// pairing), with the same rounding, so the integer sums are the CPU engine's exactly:
//   Q8_0 kind (Q4_0, Q5_0, Q8_0): per 32 values d = fp16(amax / 127), q = rint(x * 127 / amax);
//   Q8_1 kind (Q4_1, Q5_1): the same, with s = fp16(d * sum q) for the weights' offset term;
//   Q8_K kind (Q4_K, Q5_K, Q6_K): per 256 values the value of largest magnitude maps to -127,
//     d = 1 / iscale in fp32.
// Shared layout: qs (nt, cols) int8, then (nt, cols / 32) float2 (d, per-kind second value:
// the integer sum of the 32 codes, or Q8_1's s). Then the weights stream through the same
// cp.async ring as above, one 32-value piece per lane per chunk: eight 4-byte words of codes
// against eight words of activations in __dp4a, block scales applied in float once per piece.
// A block loops over row groups (grid capped at what stays resident), so the activations are
// quantized once per block, while the first chunks of its first rows are already in flight.

static __host__ __device__ constexpr int sgllm__cu_xq_kind(int t) {
    return t == T_Q4_1 || t == T_Q5_1 ? XQ_Q8_1 : t == T_Q4_K || t == T_Q5_K || t == T_Q6_K ? XQ_Q8_K : XQ_Q8_0;
}

// Shared-memory bytes of the quantized activations of nt rows of cols values.
static size_t sgllm__cu_xq_bytes(int64_t nt, int64_t cols) { return (size_t)(nt * cols + nt * (cols / 32) * 8); }

// Quantizes x (nt rows of cols values, contiguous, 16-byte aligned) into qs / ds as described
// above. A warp step covers 128 values (four 32-blocks, eight lanes each) or one 256-block;
// warp w of nw takes steps w, w + nw, ..., loading B steps (one float4 per lane each) before
// reducing any, so that a block's prologue costs about one L2 round trip, not one per block.
// B changes only how many loads are in flight, never the bytes written: the wide kernel's
// prologue (sgllm__cu_xq_in) takes half as many, whose registers add to its own.
template <int K, int B = K == XQ_Q8_K ? 4 : 8>
static __device__ void sgllm__cu_xq(const float *x, int64_t cols, int nt, int8_t *qs, float2 *ds, int warp, int nw) {
    constexpr int V = K == XQ_Q8_K ? 2 : 1; // float4 per lane per step
    int lane = threadIdx.x % 32;
    const float4 *x4 = (const float4 *)x;
    uint32_t *q4 = (uint32_t *)qs; // four codes per word
    // the last step of the 32-value kinds may hold fewer than four blocks (cols % 128 == 32k):
    // lanes past the end load nothing and store nothing but still join the shuffles
    int64_t n_vec = (int64_t)nt * cols / 4, n_steps = (n_vec + 32 * V - 1) / (32 * V);
    for (int64_t s0 = warp; s0 < n_steps; s0 += (int64_t)nw * B) {
        float4 v[B][V];
#pragma unroll
        for (int u = 0; u < B; u++)
#pragma unroll
            for (int i = 0; i < V; i++) {
                int64_t e = (s0 + (int64_t)u * nw) * 32 * V + 32 * i + lane;
                v[u][i] = s0 + (int64_t)u * nw < n_steps && e < n_vec ? x4[e] : make_float4(0.f, 0.f, 0.f, 0.f);
            }
#pragma unroll
        for (int u = 0; u < B; u++) {
            int64_t st = s0 + (int64_t)u * nw;
            if (st >= n_steps) break;
            if (K != XQ_Q8_K) { // lanes 8m .. 8m+7 hold block 4 st + m
                float4 a = v[u][0];
                float am = fmaxf(fmaxf(fabsf(a.x), fabsf(a.y)), fmaxf(fabsf(a.z), fabsf(a.w)));
#pragma unroll
                for (int o = 1; o < 8; o <<= 1) am = fmaxf(am, __shfl_xor_sync(0xffffffffu, am, o));
                float d = am / 127.f, id = am != 0.f ? 127.f / am : 0.f;
                int q0 = __float2int_rn(a.x * id), q1 = __float2int_rn(a.y * id), q2 = __float2int_rn(a.z * id),
                    q3 = __float2int_rn(a.w * id);
                bool in = st * 32 + lane < n_vec;
                if (in)
                    q4[st * 32 + lane] = (uint32_t)(q0 & 255) | ((uint32_t)(q1 & 255) << 8) | ((uint32_t)(q2 & 255) << 16) |
                                     ((uint32_t)(q3 & 255) << 24);
                int sum = q0 + q1 + q2 + q3;
#pragma unroll
                for (int o = 1; o < 8; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
                if (in && lane % 8 == 0) ds[st * 4 + lane / 8] = sgllm__cu_xq_ds32(K == XQ_Q8_1, d, sum);
            } else { // lane holds values 4 lane .. 4 lane + 3 and 128 + 4 lane ..: ascending per lane
                float e[8] = {v[u][0].x, v[u][0].y, v[u][0].z, v[u][0].w, v[u][1].x, v[u][1].y, v[u][1].z, v[u][1].w};
                float am = -1.f, mx = 0.f;
                int ai = 0;
#pragma unroll
                for (int k = 0; k < 8; k++)
                    if (fabsf(e[k]) > am) {
                        am = fabsf(e[k]);
                        mx = e[k];
                        ai = (k / 4) * 128 + 4 * lane + k % 4;
                    }
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) { // largest magnitude, first index on ties (as the CPU)
                    float oam = __shfl_xor_sync(0xffffffffu, am, o), omx = __shfl_xor_sync(0xffffffffu, mx, o);
                    int oai = __shfl_xor_sync(0xffffffffu, ai, o);
                    if (oam > am || (oam == am && oai < ai)) {
                        am = oam;
                        mx = omx;
                        ai = oai;
                    }
                }
                float iscale = am != 0.f ? -127.f / mx : 0.f, d = iscale != 0.f ? 1.f / iscale : 0.f;
#pragma unroll
                for (int i = 0; i < 2; i++) {
                    int q[4], sum = 0;
#pragma unroll
                    for (int k = 0; k < 4; k++) {
                        q[k] = min(127, __float2int_rn(iscale * e[4 * i + k]));
                        sum += q[k];
                    }
                    q4[st * 64 + 32 * i + lane] = (uint32_t)(q[0] & 255) | ((uint32_t)(q[1] & 255) << 8) |
                                                  ((uint32_t)(q[2] & 255) << 16) | ((uint32_t)(q[3] & 255) << 24);
#pragma unroll
                    for (int o = 1; o < 8; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
                    if (lane % 8 == 0) ds[st * 8 + 4 * i + lane / 8] = make_float2(d, (float)sum);
                }
            }
        }
    }
}

// The in-kernel prologue of the wide kernel (dispatch.matvec_xq_inline): x (nt, cols)
// quantized for weight type T into the block's shared memory at qs (then ds), by all its
// warps; the caller puts the barrier after it.
template <int T>
static __device__ inline void sgllm__cu_xq_in(const float *x, int64_t cols, int nt, int8_t *qs) {
    constexpr int K = sgllm__cu_xq_kind(T);
    sgllm__cu_xq<K, K == XQ_Q8_K ? 2 : 4>(x, cols, nt, qs, (float2 *)(qs + (int64_t)nt * cols), (int)(threadIdx.x / 32),
                                          (int)(blockDim.x / 32));
}

// N words from a 2-byte aligned address (shared memory): N + 1 aligned loads and funnel shifts.
// The word past the end may be read (it lies inside the block's shared allocation) and is
// then unused.
template <int N> static __device__ inline void sgllm__cu_ld_a2(const uint8_t *p, uint32_t *out) {
    const uint32_t *a = (const uint32_t *)((uintptr_t)p & ~(uintptr_t)3);
    uint32_t sh = ((uint32_t)(uintptr_t)p & 2u) * 8u, wv[N + 1];
#pragma unroll
    for (int k = 0; k <= N; k++) wv[k] = a[k];
#pragma unroll
    for (int k = 0; k < N; k++) out[k] = __funnelshift_r(wv[k], wv[k + 1], sh);
}

// Spreads the 4 bits (h & 15) to bit 4 of each byte (the fifth bit of Q5 codes).
static __device__ inline uint32_t sgllm__cu_hb4(uint32_t h) {
    return ((h & 1u) << 4) | ((h & 2u) << 11) | ((h & 4u) << 18) | ((h & 8u) << 25);
}

// One 32-value piece's weights, decoded once for every token of a batch (and, in the wide
// kernel, the NR rows' pieces decoded first, so that each token's activations of the piece are
// read once for all of them). The dot's integer sum and its float expression are the same
// wherever a piece is computed, so the staged and wide kernels agree bit for bit.
struct sgllm__cu_pw {
    uint32_t c[8]; // codes: word k holds the codes of values 4k .. 4k+3 of the piece
    float dw, mw;
    int sc, mn, off; // K scales / mins; offset subtracted from every code (Q4_0, Q5_0)
    int sh;          // Q4_K: the codes sit sh bits up in their bytes (see sgllm__cu_dp4a_us)
};

// dp4a of four unsigned bytes with four signed ones: Q4_K's odd sub-blocks keep their codes in
// the high nibble of each byte (one AND per word instead of a shift and an AND), so the sum is
// 16 times the codes' sum, exactly (at most 240 * 127 * 32 in magnitude), shifted back once.
static __device__ inline int sgllm__cu_dp4a_us(uint32_t a, int b, int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// Decodes piece p (0..31 of a staged chunk, or of the wide kernel's slot) into w.
template <int T> static __device__ inline void sgllm__cu_piece_w(const uint8_t *st, int p, sgllm__cu_pw &w) {
    uint32_t *c = w.c;
    w.dw = w.mw = 0.f;
    w.sc = w.mn = w.off = w.sh = 0;
    if (T == T_Q8_0) {
        const uint8_t *b = st + 34 * p;
        w.dw = sgllm__cu_h16((uint16_t)sgllm__cu_u16(b));
        sgllm__cu_ld_a2<8>(b + 2, c);
    } else if (T == T_Q4_0 || T == T_Q5_0) {
        const uint8_t *b = st + (T == T_Q4_0 ? 18 : 22) * p;
        uint32_t q[4];
        w.dw = sgllm__cu_h16((uint16_t)sgllm__cu_u16(b));
        sgllm__cu_ld_a2<4>(b + (T == T_Q4_0 ? 2 : 6), q);
        uint32_t qh = T == T_Q5_0 ? sgllm__cu_u32a2(b + 2) : 0u;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            c[k] = q[k] & 0x0F0F0F0Fu;
            c[k + 4] = (q[k] >> 4) & 0x0F0F0F0Fu;
            if (T == T_Q5_0) {
                c[k] |= sgllm__cu_hb4(qh >> (4 * k));
                c[k + 4] |= sgllm__cu_hb4(qh >> (16 + 4 * k));
            }
        }
        w.off = T == T_Q4_0 ? 8 : 16;
    } else if (T == T_Q4_1 || T == T_Q5_1) {
        const uint8_t *b = st + (T == T_Q4_1 ? 20 : 24) * p; // 4-byte aligned
        uint32_t dm = sgllm__cu_u32(b), qh = T == T_Q5_1 ? sgllm__cu_u32(b + 4) : 0u;
        w.dw = sgllm__cu_h16((uint16_t)(dm & 0xffff));
        w.mw = sgllm__cu_h16((uint16_t)(dm >> 16));
#pragma unroll
        for (int k = 0; k < 4; k++) {
            uint32_t q = sgllm__cu_u32(b + (T == T_Q4_1 ? 4 : 8) + 4 * k);
            c[k] = q & 0x0F0F0F0Fu;
            c[k + 4] = (q >> 4) & 0x0F0F0F0Fu;
            if (T == T_Q5_1) {
                c[k] |= sgllm__cu_hb4(qh >> (4 * k));
                c[k + 4] |= sgllm__cu_hb4(qh >> (16 + 4 * k));
            }
        }
    } else if (T == T_Q4_K || T == T_Q5_K) {
        int sub = p % 8;
        const uint8_t *b = st + (T == T_Q4_K ? 144 : 176) * (p / 8); // 16-byte aligned
        // the super-block's head in one load: d and dmin (x), the 12 scale bytes (y, z, w);
        // sub-block j's 6-bit scale and min are bytes j and j + 4 (j < 4), or the nibbles of
        // byte j + 4 with the top two bits of bytes j - 4 and j (j >= 4)
        uint4 hd = *(const uint4 *)b;
        w.dw = sgllm__cu_h16((uint16_t)(hd.x & 0xffff));
        w.mw = sgllm__cu_h16((uint16_t)(hd.x >> 16));
        int bs = 8 * (sub & 3);
        uint32_t s0 = hd.y >> bs, s1 = hd.z >> bs, s2 = hd.w >> bs;
        w.sc = (int)(sub < 4 ? s0 & 63u : (s2 & 15u) | ((s0 >> 2) & 48u));
        w.mn = (int)(sub < 4 ? s1 & 63u : ((s2 >> 4) & 15u) | ((s1 >> 2) & 48u));
        const uint4 *qv = (const uint4 *)(b + (T == T_Q4_K ? 16 : 48) + 32 * (sub / 2));
        uint4 q0 = qv[0], q1 = qv[1];
        uint32_t q[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
        uint32_t h[8];
        if (T == T_Q5_K) {
            uint4 h0 = ((const uint4 *)(b + 16))[0], h1 = ((const uint4 *)(b + 16))[1];
            h[0] = h0.x, h[1] = h0.y, h[2] = h0.z, h[3] = h0.w, h[4] = h1.x, h[5] = h1.y, h[6] = h1.z, h[7] = h1.w;
        }
        if (T == T_Q4_K) w.sh = 4 * (sub & 1);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            c[k] = T == T_Q4_K ? q[k] & (0x0F0F0F0Fu << w.sh) : (q[k] >> (4 * (sub & 1))) & 0x0F0F0F0Fu;
            if (T == T_Q5_K) c[k] |= ((h[k] >> sub) & 0x01010101u) << 4;
        }
    } else { // Q6_K: codes kept unsigned (0..63); the -32 comes back through the activation sums
        int sub = p % 8, hh = sub / 4, k4 = sub % 4;
        const uint8_t *b = st + 210 * (p / 8); // 2-byte aligned
        uint32_t ql[8], qh[8];
        sgllm__cu_ld_a2<8>(b + 64 * hh + 32 * (k4 & 1), ql);
        sgllm__cu_ld_a2<8>(b + 128 + 32 * hh, qh);
#pragma unroll
        for (int k = 0; k < 8; k++)
            c[k] = ((ql[k] >> (k4 >= 2 ? 4 : 0)) & 0x0F0F0F0Fu) | (((qh[k] >> (2 * k4)) & 0x03030303u) << 4);
        w.dw = sgllm__cu_h16((uint16_t)sgllm__cu_u16(b + 208));
        w.sc = (int8_t)b[192 + 8 * hh + 2 * k4]; // values 0..15 of the piece
        w.mn = (int8_t)b[192 + 8 * hh + 2 * k4 + 1]; // values 16..31
    }
}

// acc += the dot of the decoded piece w with one token's 32 activation codes xk (its values
// 32g .. 32g+31) and their block's (scale, second value) a. C2: the integer dot as two chains
// of four dp4a, added (the same integer; a shorter dependency chain).
template <int T, bool C2 = false>
static __device__ inline void sgllm__cu_piece_dot(const sgllm__cu_pw &w, const int xk[8], float2 a, float &acc) {
    if (T == T_Q6_K) {
        int s0 = 0, s1 = 0, b0 = 0, b1 = 0;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            s0 = __dp4a((int)w.c[k], xk[k], s0);
            b0 = __dp4a(0x01010101, xk[k], b0);
            s1 = __dp4a((int)w.c[k + 4], xk[k + 4], s1);
            b1 = __dp4a(0x01010101, xk[k + 4], b1);
        }
        acc += w.dw * a.x * (float)(w.sc * (s0 - 32 * b0) + w.mn * (s1 - 32 * b1));
    } else {
        int s = 0, s1 = 0;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int &d = C2 && k % 2 ? s1 : s;
            d = T == T_Q4_K ? sgllm__cu_dp4a_us(w.c[k], xk[k], d) : __dp4a((int)w.c[k], xk[k], d);
        }
        s += s1;
        if (T == T_Q4_K) s >>= w.sh; // exact: every term was a multiple of 2^sh
        if (T == T_Q8_0 || T == T_Q4_0 || T == T_Q5_0) acc += w.dw * a.x * (float)(s - w.off * (int)a.y);
        else if (T == T_Q4_1 || T == T_Q5_1) acc += w.dw * a.x * (float)s + w.mw * a.y;
        else acc += w.dw * a.x * (float)(w.sc * s) - w.mw * a.x * (float)(w.mn * (int)a.y);
    }
}

// Token t's activation codes of piece g (values 32g .. 32g+31) and their (scale, second value).
static __device__ inline float2 sgllm__cu_piece_x(const int8_t *xs, const float2 *xd, int64_t cols, int t, int64_t g,
                                                  int xk[8]) {
    const int4 *xv = (const int4 *)(xs + t * cols + 32 * g);
    int4 x0 = xv[0], x1 = xv[1];
    xk[0] = x0.x, xk[1] = x0.y, xk[2] = x0.z, xk[3] = x0.w, xk[4] = x1.x, xk[5] = x1.y, xk[6] = x1.z, xk[7] = x1.w;
    return xd[t * (cols / 32) + g];
}

// Piece p (0..31) of a staged chunk whose first piece is g - p of the row: decodes its 32 codes
// once and adds its dot with each token's activations to acc.
template <int T, int NT>
static __device__ inline void sgllm__cu_piece_i8(const uint8_t *st, int p, int64_t g, const int8_t *xs, const float2 *xd,
                                                 int64_t cols, int nt, float acc[NT]) {
    sgllm__cu_pw w;
    sgllm__cu_piece_w<T>(st, p, w);
#pragma unroll
    for (int t = 0; t < NT; t++) {
        if (t >= nt) break;
        int xk[8];
        float2 a = sgllm__cu_piece_x(xs, xd, cols, t, g, xk);
        sgllm__cu_piece_dot<T>(w, xk, a, acc[t]);
    }
}

template <int T, int NT>
static __global__ void __launch_bounds__(MV_MAX_WARPS * 32)
    sgllm__cu_mv_i8_k(const uint8_t *w, int64_t rows, int64_t cols, int64_t row_bytes, int copy_bytes,
                      const float *x, int nt, float *y, int split) {
    constexpr int BV = T == T_Q4_K || T == T_Q5_K || T == T_Q6_K ? 256 : 32;
    constexpr int BB = T == T_Q4_0 ? 18 : T == T_Q4_1 ? 20 : T == T_Q5_0 ? 22 : T == T_Q5_1 ? 24 : T == T_Q8_0 ? 34
                     : T == T_Q4_K ? 144 : T == T_Q5_K ? 176 : 210;
    constexpr int CB = MV_CHUNK / BV * BB, CS = (CB + 15) / 16 * 16;
    static_assert(CB % 8 == 0 && CB <= MV_MAX_CHUNK_BYTES, "chunk layout");
    __shared__ float part[MV_MAX_WARPS][NT];
    extern __shared__ __align__(16) uint8_t mv_smem[]; // ring (warps, MV_STAGES, CS), qs (nt, cols), ds (nt, cols / 32)
    int nw = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32, sub = warp % split;
    int8_t *xs = (int8_t *)(mv_smem + (size_t)nw * MV_STAGES * CS);
    float2 *xd = (float2 *)(xs + (int64_t)nt * cols);
    uint8_t *ring = mv_smem + (size_t)warp * MV_STAGES * CS;
    // This warp's rows: r0, r0 + rstride, ...; per row, chunks sub, sub + split, ... (mine of
    // them). Every warp of the block walks the same number of items (per_row per row, the same
    // row count), so the row ends line up for the split reduction.
    int64_t rpb = nw / split, rstride = (int64_t)gridDim.x * rpb, first = (int64_t)blockIdx.x * rpb;
    int64_t r0 = first + warp / split;
    int n_chunks = (int)((cols + MV_CHUNK - 1) / MV_CHUNK);
    int per_row = (n_chunks + split - 1) / split, mine = n_chunks > sub ? (n_chunks - sub + split - 1) / split : 0;
    int64_t items = (rows > first ? (rows - first + rstride - 1) / rstride : 0) * per_row;
    // item k = chunk j of row r; the issue side runs MV_STAGES - 1 items ahead of the compute
    // side, both walking (r, j) incrementally (no 64-bit divisions in the loop)
    int64_t ki = 0, ri = r0;
    int ji = 0;
    auto issue = [&]() {
        if (ki < items) {
            if (ji < mine && ri < rows) {
                int64_t off = (int64_t)(sub + ji * split) * CB, bytes = row_bytes - off < CB ? row_bytes - off : CB;
                const uint8_t *src = w + ri * row_bytes + off;
                uint8_t *dst = ring + (ki % MV_STAGES) * CS;
                for (int i = lane * copy_bytes; i < bytes; i += 32 * copy_bytes)
                    sgllm__cu_cp_async(dst + i, src + i, copy_bytes);
            }
            if (++ji == per_row) {
                ji = 0;
                ri += rstride;
            }
        }
        ki++;
        sgllm__cu_cp_commit(); // an empty group keeps the wait count uniform
    };
    // the first stages are weights only: in flight while the predecessor finishes
#pragma unroll
    for (int k = 0; k < MV_STAGES - 1; k++) issue();
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    sgllm__cu_xq<sgllm__cu_xq_kind(T)>(x, cols, nt, xs, xd, warp, nw);
    __syncthreads();
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    int64_t r = r0;
    int j = 0;
    for (int64_t k = 0; k < items; k++) {
        issue();
        sgllm__cu_cp_wait<MV_STAGES - 1>();
        __syncwarp();
        int64_t g = (int64_t)(sub + j * split) * (MV_CHUNK / 32) + lane;
        if (j < mine && r < rows && g * 32 < cols)
            sgllm__cu_piece_i8<T, NT>(ring + (k % MV_STAGES) * CS, lane, g, xs, xd, cols, nt, acc);
        __syncwarp(); // the stage is refilled by the next iteration's issue
        if (++j != per_row) continue;
        j = 0;
#pragma unroll
        for (int t = 0; t < NT; t++) acc[t] = sgllm__cu_warp_sum(acc[t]);
        if (split == 1) {
            if (lane == 0 && r < rows)
#pragma unroll
                for (int t = 0; t < NT; t++)
                    if (t < nt) y[t * rows + r] = acc[t];
        } else {
            if (lane == 0)
#pragma unroll
                for (int t = 0; t < NT; t++) part[warp][t] = acc[t];
            __syncthreads();
            if (lane == 0 && sub == 0 && r < rows)
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    float s = 0.0f;
                    for (int q = 0; q < split; q++) s += part[warp + q][t];
                    if (t < nt) y[t * rows + r] = s;
                }
            __syncthreads(); // part is rewritten at the next row end
        }
#pragma unroll
        for (int t = 0; t < NT; t++) acc[t] = 0.0f;
        r += rstride;
    }
}

// Standalone activation quantization, the same device code as the kernel's prologue (tests
// compare its bytes with the CPU engine's). One warp per block of values. It triggers before
// its wait: the matrix-vector kernel after it then launches and streams its first weights
// while this one still waits for its predecessor (a few blocks, all resident at once), and
// that kernel's own wait still returns only after this one completed (H100, Llama-3-8B
// decode step: Q4_0 60.8% -> 64.4% of the floor, Q8_0 80.0% -> 80.9%; docs/PERF.md).
template <int K>
static __global__ void sgllm__cu_xq_k(const float *x, int64_t cols, int nt, int8_t *qs, float2 *ds) {
    sgllm__cu_pdl_trigger();
    sgllm__cu_pdl_wait();
    sgllm__cu_xq<K>(x, cols, nt, qs, ds, (int)(blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32),
                    (int)(gridDim.x * (blockDim.x / 32)));
}

extern "C" sgllm_status sgllm__cuda_quantize_act(sgllm__cuda *c, uint32_t type, const float *x, int64_t n_tok,
                                                 int64_t cols, int8_t *qs, float *ds) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    bool quant = sgllm__cu_quantized(type, cols);
    if (!x || !qs || !ds || !quant || n_tok <= 0 || n_tok > 8 || (uintptr_t)x % 16 || (uintptr_t)qs % 4 || (uintptr_t)ds % 8)
        return sgllm__cu_bad(c, "quantize_act", "bad pointer, weight type or shape");
    cudaSetDevice(c->device);
    int kind = sgllm__cu_xq_kind((int)type);
    int64_t steps = (n_tok * cols + (kind == XQ_Q8_K ? 255 : 127)) / (kind == XQ_Q8_K ? 256 : 128), grid = (steps + 3) / 4;
    void (*k)(const float *, int64_t, int, int8_t *, float2 *) =
        kind == XQ_Q8_0 ? sgllm__cu_xq_k<XQ_Q8_0> : kind == XQ_Q8_1 ? sgllm__cu_xq_k<XQ_Q8_1> : sgllm__cu_xq_k<XQ_Q8_K>;
    if (qs == sgllm__cu_xq_codes(c)) c->xq.of = NULL; // no longer what its producer put there
    return sgllm__cu_launch(c, "quantize_act", k, dim3((unsigned)grid), dim3(128), 0, x, cols, (int)n_tok, qs, (float2 *)ds);
}

// sgllm__cuda_norm_add_rmsnorm_q: each block normalizes its row (sgllm__cu_norm_add_row) and
// then quantizes it, as sgllm__cu_xq_k would, into the context's activation buffer, so the
// matrix-vector product that follows needs no quantization launch of its own.
// Rows up to this many values keep y in shared memory for the quantization (no re-read from L2;
// 32 KB, within the default limit beside the block sum's static array).
enum { NORM_XQ_SMEM_COLS = 8192 };
template <int K>
static __global__ void sgllm__cu_norm_add_xq_k(float *x, const float *delta, const float *dw, const float *w, float *y,
                                               int64_t dim, float eps, int8_t *qs, float2 *ds) {
    sgllm__cu_pdl_trigger(); // first: see section 3's header; norm_add_row waits
    extern __shared__ __align__(16) float nq_row[]; // (dim) when the launch gave room: y's copy
    if (K != XQ_Q8_K && dim <= 16 * (int64_t)blockDim.x) { // the whole row in registers: quantized there
        sgllm__cu_norm_add_row<4, K == XQ_Q8_K ? -1 : K>(x, delta, dw, w, y, dim, eps, NULL, qs, ds);
        return;
    }
    bool in_smem = dim <= NORM_XQ_SMEM_COLS;
    sgllm__cu_norm_add_row<4>(x, delta, dw, w, y, dim, eps, in_smem ? nq_row : NULL);
    __syncthreads(); // the row's y, written by every thread of the block, is read back by all
    int64_t r = blockIdx.x;
    sgllm__cu_xq<K>(in_smem ? nq_row : y + r * dim, dim, 1, qs + r * dim, ds + r * (dim / 32), (int)(threadIdx.x / 32),
                    (int)(blockDim.x / 32));
}

static int sgllm__cu_norm_xq_cap(sgllm__cuda *c) {
    int a = sgllm__cu_max_threads(sgllm__cu_norm_add_xq_k<XQ_Q8_0>, &c->norm_cap[2]),
        b = sgllm__cu_max_threads(sgllm__cu_norm_add_xq_k<XQ_Q8_1>, &c->norm_cap[3]),
        k = sgllm__cu_max_threads(sgllm__cu_norm_add_xq_k<XQ_Q8_K>, &c->norm_cap[4]);
    return a < b ? (a < k ? a : k) : (b < k ? b : k);
}

static bool sgllm__cu_norm_add_xq(sgllm__cuda *c, uint32_t quant_for, float *x, const float *delta, const float *delta_w,
                                  const float *w, float *y, int64_t rows, int64_t dim, float eps, int threads,
                                  sgllm_status *s) {
    bool quant = sgllm__cu_quantized(quant_for, dim);
    if (!quant || rows > 8 || dim > MV_XQ_COLS) return false;
    int kind = sgllm__cu_xq_kind((int)quant_for);
    int8_t *qs = sgllm__cu_xq_codes(c);
    float2 *ds = sgllm__cu_xq_scales(c);
    void (*k)(float *, const float *, const float *, const float *, float *, int64_t, float, int8_t *, float2 *) =
        kind == XQ_Q8_0 ? sgllm__cu_norm_add_xq_k<XQ_Q8_0>
                        : kind == XQ_Q8_1 ? sgllm__cu_norm_add_xq_k<XQ_Q8_1> : sgllm__cu_norm_add_xq_k<XQ_Q8_K>;
    size_t smem = dim <= NORM_XQ_SMEM_COLS ? (size_t)dim * 4 : 0; // threads: within sgllm__cu_norm_xq_cap
    *s = sgllm__cu_launch(c, "norm_add_rmsnorm", k, dim3((unsigned)rows), dim3(threads), smem, x, delta, delta_w, w, y, dim, eps,
                          qs, ds);
    sgllm__cu_xq_set(c, *s, y, kind, rows, dim);
    return true;
}

// Direct int8 path: fused q/k/v and gate/up launches of quantized matrices up to
// MV_FUSE_MAX_BYTES, and every quantized matrix-vector product with dispatch.matvec_int8 = 2.
// (Measured on the H100, 2026-11-27: per byte it streams slower than the staged kernel above
// (Q8_0 128256x4096 304 us against 200 us, Q6_K 631 against 232), so single large matrices
// keep the staged kernel; it wins where launches are many and small.)
// The activations are quantized once per call (or once per fused q/k/v or gate/up launch) by
// sgllm__cu_xq_k into the context's buffer, where they stay in L2 for every block. Each warp
// owns one output row (two for gate/up: the rows share every activation load) and its lanes
// read the weights straight from global memory through the read-only path, no shared-memory
// staging and no barriers, so a row of 640 values costs the same per byte as a row of 14336.
// Float rows may be shared by dispatch.matvec_direct_split neighbouring warps instead (a
// contiguous share of the units each, then one block barrier and the first adds the others'
// sums in order): one wave of warps each streaming a whole long row ends with a long tail.
// A lane's unit is 4 consecutive values (8 lanes per 32-value block: a warp's loads cover 4
// neighbouring blocks, coalesced) or, for Q4_K/Q5_K, two words of nibbles = 8 values of two
// sub-blocks each (16 lanes per super-block: the scales are decoded once per 16 values);
// U units per lane are loaded before any is used. Integer sums per block are the CPU engine's
// (signed codes: the constant offsets of Q4_0/Q5_0/Q6_K are subtracted per byte, exactly);
// block scales and the float combination follow.
// Float weights (fused launches only) use the same kernel with one 16-byte word per unit and
// fp32 activations.

// A hint: the 128-byte line holding p is fetched into L2; nothing waits for it.
static __device__ inline void sgllm__cu_prefetch_l2(const void *p) { asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p)); }

static __device__ inline uint32_t sgllm__cu_g16(const uint8_t *p) { return __ldg((const unsigned short *)p); }
static __device__ inline uint32_t sgllm__cu_g32(const uint8_t *p) { return __ldg((const unsigned int *)p); }
static __device__ inline uint32_t sgllm__cu_g32a2(const uint8_t *p) { return sgllm__cu_g16(p) | (sgllm__cu_g16(p + 2) << 16); }

// Values per unit of type T.
static __host__ __device__ constexpr int sgllm__cu_mvd_uv(int t) {
    return t == T_F32 ? 4 : t == T_F16 || t == T_BF16 ? 8 : t == T_Q4_K || t == T_Q5_K ? 16 : 4;
}

struct sgllm__cu_mvd {
    const uint8_t *w[3]; // segments: q/k/v (n_seg of them) or gate, up (gated)
    float *y[3];         // (nt, rows[s]) each; gated: y[0] only
    int64_t rows[3];
    int n_seg, act;      // act: -1 plain, else SGLLM__CUDA_ACT_* of a gated pair
    int64_t cols, row_bytes, total_rows;
    const float *x;      // (nt, cols) float types
    const int8_t *xq;    // (nt, cols) block-quantized types
    const float2 *xd;    // (nt, cols / 32)
    int nt;
    int inl;             // 1 (wide kernel only): each block quantizes x into its shared memory itself (xq / xd unused)
    int split;           // direct kernel: warps per row (1, 2 or 4, dividing the block's; 0 = 1), set by sgllm__cu_mvd_run
    int early;           // wide kernel: the next kernel may launch before this one's PDL wait (dispatch.matvec_qkv_early_kb);
                         // 2: and it is a tensor-core decode attention (sgllm__cuda_qkv_before_mma)
};

// Adds unit i of each of the NR rows to acc (only when ok: a clamped duplicate otherwise).
template <int T, int NT, int NR>
static __device__ inline void sgllm__cu_mvd_unit(const uint8_t *const row[NR], int64_t i, bool ok,
                                                 const sgllm__cu_mvd &a, float acc[NR][NT]) {
    if (T == T_F32 || T == T_F16 || T == T_BF16) {
        constexpr int VPL = sgllm__cu_mvd_uv(T);
        float v[NR][8];
#pragma unroll
        for (int k = 0; k < NR; k++) {
            uint4 q = __ldcs((const uint4 *)row[k] + i);
            uint32_t wd[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
            for (int e = 0; e < 4; e++) {
                if (T == T_F32) v[k][e] = __uint_as_float(wd[e]);
                else if (T == T_BF16) {
                    v[k][2 * e] = __uint_as_float(wd[e] << 16);
                    v[k][2 * e + 1] = __uint_as_float(wd[e] & 0xffff0000u);
                } else {
                    float2 f = __half22float2(*(const __half2 *)&wd[e]);
                    v[k][2 * e] = f.x;
                    v[k][2 * e + 1] = f.y;
                }
            }
        }
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t >= a.nt) break;
            const float4 *xp = (const float4 *)(a.x + t * a.cols + i * VPL);
            float4 x0 = __ldg(xp), x1 = VPL == 8 ? __ldg(xp + 1) : x0;
#pragma unroll
            for (int k = 0; k < NR; k++) {
                float s = v[k][0] * x0.x + v[k][1] * x0.y + v[k][2] * x0.z + v[k][3] * x0.w;
                if (VPL == 8) s += v[k][4] * x1.x + v[k][5] * x1.y + v[k][6] * x1.z + v[k][7] * x1.w;
                acc[k][t] += ok ? s : 0.0f;
            }
        }
    } else if (T == T_Q4_K || T == T_Q5_K) {
        // unit i: super-block i / 16, sub-block pair j, words 2 w2 and 2 w2 + 1 of the pair's 32
        // bytes: low nibbles are values 8 w2 .. 8 w2 + 7 of sub-block 2j, high nibbles of 2j + 1
        int64_t sb = i / 16;
        int j = (int)(i % 16) / 4, w2 = (int)(i % 4);
        int64_t g0 = sb * 8 + 2 * j; // the two 32-value pieces
        uint32_t lo[NR][2], hi[NR][2];
        float d0[NR], d1[NR], m0[NR], m1[NR]; // scale and min of each sub-block
#pragma unroll
        for (int k = 0; k < NR; k++) {
            const uint8_t *b = row[k] + sb * (T == T_Q4_K ? 144 : 176);
            uint32_t dd = sgllm__cu_g32(b);
            uint2 q = __ldg((const uint2 *)(b + (T == T_Q4_K ? 16 : 48) + 32 * j + 8 * w2));
            uint32_t s0 = sgllm__cu_g32(b + 4), s1 = sgllm__cu_g32(b + 8), s2 = sgllm__cu_g32(b + 12);
            auto sc = [&](int n) { // byte n of the 12 scale bytes (registers, no local array)
                uint32_t wv = n < 4 ? s0 : n < 8 ? s1 : s2;
                return (int)((wv >> (8 * (n & 3))) & 255u);
            };
            int a0, b0, a1, b1;
            // sub-blocks 2j and 2j + 1 (j < 2: both in the plain 6-bit half; j >= 2: both packed)
            if (j < 2) {
                a0 = sc(2 * j) & 63, b0 = sc(2 * j + 4) & 63, a1 = sc(2 * j + 1) & 63, b1 = sc(2 * j + 5) & 63;
            } else {
                int n = 2 * j; // 4 or 6
                a0 = (sc(n + 4) & 15) | ((sc(n - 4) >> 6) << 4), b0 = (sc(n + 4) >> 4) | ((sc(n) >> 6) << 4);
                a1 = (sc(n + 5) & 15) | ((sc(n - 3) >> 6) << 4), b1 = (sc(n + 5) >> 4) | ((sc(n + 1) >> 6) << 4);
            }
            float d = sgllm__cu_h16((uint16_t)(dd & 0xffff)), dm = sgllm__cu_h16((uint16_t)(dd >> 16));
            d0[k] = d * (float)a0, d1[k] = d * (float)a1, m0[k] = dm * (float)b0, m1[k] = dm * (float)b1;
            uint32_t qw[2] = {q.x, q.y};
            uint2 h = T == T_Q5_K ? __ldg((const uint2 *)(b + 16 + 8 * w2)) : make_uint2(0u, 0u);
            uint32_t hw[2] = {h.x, h.y};
#pragma unroll
            for (int e = 0; e < 2; e++) {
                lo[k][e] = qw[e] & 0x0F0F0F0Fu;
                hi[k][e] = (qw[e] >> 4) & 0x0F0F0F0Fu;
                if (T == T_Q5_K) {
                    lo[k][e] |= ((hw[e] >> (2 * j)) & 0x01010101u) << 4;
                    hi[k][e] |= ((hw[e] >> (2 * j + 1)) & 0x01010101u) << 4;
                }
            }
        }
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t >= a.nt) break;
            const int *xq = (const int *)(a.xq + t * a.cols);
            int2 x0 = __ldg((const int2 *)(xq + g0 * 8 + 2 * w2)), x1 = __ldg((const int2 *)(xq + (g0 + 1) * 8 + 2 * w2));
            float dx0 = __ldg(&a.xd[t * (a.cols / 32) + g0]).x, dx1 = __ldg(&a.xd[t * (a.cols / 32) + g0 + 1]).x;
            int n0 = __dp4a(0x01010101, x0.x, __dp4a(0x01010101, x0.y, 0));
            int n1 = __dp4a(0x01010101, x1.x, __dp4a(0x01010101, x1.y, 0));
#pragma unroll
            for (int k = 0; k < NR; k++) {
                int s0 = __dp4a((int)lo[k][0], x0.x, __dp4a((int)lo[k][1], x0.y, 0));
                int s1 = __dp4a((int)hi[k][0], x1.x, __dp4a((int)hi[k][1], x1.y, 0));
                float v = dx0 * (d0[k] * (float)s0 - m0[k] * (float)n0) + dx1 * (d1[k] * (float)s1 - m1[k] * (float)n1);
                acc[k][t] += ok ? v : 0.0f;
            }
        }
    } else {
        // unit i: values 4m .. 4m + 3 of the 32-value piece g
        int64_t g = i / 8;
        int m = (int)(i % 8);
        int c[NR];
        float dw[NR], mw[NR];
#pragma unroll
        for (int k = 0; k < NR; k++) {
            uint32_t q;
            mw[k] = 0.0f;
            if (T == T_Q8_0) {
                const uint8_t *b = row[k] + g * 34;
                dw[k] = sgllm__cu_h16((uint16_t)sgllm__cu_g16(b));
                q = sgllm__cu_g32a2(b + 2 + 4 * m);
            } else if (T == T_Q4_0 || T == T_Q5_0) {
                const uint8_t *b = row[k] + g * (T == T_Q4_0 ? 18 : 22);
                dw[k] = sgllm__cu_h16((uint16_t)sgllm__cu_g16(b));
                q = (sgllm__cu_g32a2(b + (T == T_Q4_0 ? 2 : 6) + 4 * (m & 3)) >> (m >= 4 ? 4 : 0)) & 0x0F0F0F0Fu;
                if (T == T_Q5_0) q |= sgllm__cu_hb4(sgllm__cu_g32a2(b + 2) >> (4 * m));
                q = __vsub4(q, T == T_Q4_0 ? 0x08080808u : 0x10101010u);
            } else if (T == T_Q4_1 || T == T_Q5_1) {
                const uint8_t *b = row[k] + g * (T == T_Q4_1 ? 20 : 24);
                uint32_t dm = sgllm__cu_g32(b);
                dw[k] = sgllm__cu_h16((uint16_t)(dm & 0xffff));
                mw[k] = m == 0 ? sgllm__cu_h16((uint16_t)(dm >> 16)) : 0.0f; // the block's offset term, once
                q = (sgllm__cu_g32(b + (T == T_Q4_1 ? 4 : 8) + 4 * (m & 3)) >> (m >= 4 ? 4 : 0)) & 0x0F0F0F0Fu;
                if (T == T_Q5_1) q |= sgllm__cu_hb4(sgllm__cu_g32(b + 4) >> (4 * m));
            } else { // Q6_K
                const uint8_t *b = row[k] + (g / 8) * 210;
                int piece = (int)(g % 8), hh = piece / 4, k4 = piece % 4;
                dw[k] = sgllm__cu_h16((uint16_t)sgllm__cu_g16(b + 208)) *
                        (float)(int8_t)__ldg(b + 192 + 8 * hh + m / 4 + 2 * k4);
                uint32_t ql = sgllm__cu_g32a2(b + 64 * hh + 32 * (k4 & 1) + 4 * m), qh = sgllm__cu_g32a2(b + 128 + 32 * hh + 4 * m);
                q = ((ql >> (k4 >= 2 ? 4 : 0)) & 0x0F0F0F0Fu) | (((qh >> (2 * k4)) & 0x03030303u) << 4);
                q = __vsub4(q, 0x20202020u);
            }
            c[k] = (int)q;
        }
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t >= a.nt) break;
            int xw = __ldg((const int *)(a.xq + t * a.cols) + i);
            float2 xs = __ldg(&a.xd[t * (a.cols / 32) + g]);
#pragma unroll
            for (int k = 0; k < NR; k++) {
                float v = dw[k] * xs.x * (float)__dp4a(c[k], xw, 0);
                if (T == T_Q4_1 || T == T_Q5_1) v += mw[k] * xs.y;
                acc[k][t] += ok ? v : 0.0f;
            }
        }
    }
}

// act(x) as sgllm__cu_gated_k computes it.
static __device__ inline float sgllm__cu_act(int act, float x) {
    if (act == SGLLM__CUDA_ACT_GELU_TANH) return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    return x / (1.0f + expf(-x));
}

template <int T, int NT, int NR>
static __global__ void __launch_bounds__(MV_MAX_WARPS * 32) sgllm__cu_mvd_k(const sgllm__cu_mvd a) {
    constexpr int UV = sgllm__cu_mvd_uv(T), U = T == T_Q4_K || T == T_Q5_K ? 4 : T == T_F32 || T == T_F16 || T == T_BF16 ? 4 : 8;
    int lane = threadIdx.x % 32;
    // a.split warps per row (neighbours in the block), each over its share of the row's units
    const int S = a.split > 1 ? a.split : 1, part = (int)(threadIdx.x / 32) % S;
    int64_t r = ((int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) / S;
    bool live = r < a.total_rows;
    if (S == 1 && !live) return; // whole warps: no barrier below (with S > 1, one at the end)
    if (!live) r = 0;
    int s = 0;
    if (NR == 1) {
        if (r >= a.rows[0]) r -= a.rows[0], s = 1;
        if (s == 1 && a.n_seg > 2 && r >= a.rows[1]) r -= a.rows[1], s = 2;
    }
    const uint8_t *row[NR];
    if (NR == 1) row[0] = (s == 0 ? a.w[0] : s == 1 ? a.w[1] : a.w[2]) + r * a.row_bytes;
    else
#pragma unroll
        for (int k = 0; k < NR; k++) row[k] = a.w[k] + r * a.row_bytes;
    // rows of up to 4 KB (a 128-byte line per lane) head for L2 while the predecessor
    // finishes; everything else, the activations included, is read after the wait. Longer
    // rows are not prefetched: on the H100 a 4 KB head of Llama-3-8B's rows slowed the fused
    // BF16 launches (decode matrix-vector graph 87% -> 85% of the floor; docs/PERF.md).
#pragma unroll
    for (int k = 0; k < NR; k++)
        if (a.row_bytes <= 4096 && (int64_t)lane * 128 < a.row_bytes) sgllm__cu_prefetch_l2(row[k] + lane * 128);
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    float acc[NR][NT];
#pragma unroll
    for (int k = 0; k < NR; k++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[k][t] = 0.0f;
    int64_t n_all = a.cols / UV, u0 = n_all * part / S, n_u = n_all * (part + 1) / S; // this warp's units [u0, n_u)
    for (int64_t i0 = u0 + lane; live && i0 < n_u; i0 += 32 * U) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            int64_t i = i0 + 32 * u;
            bool ok = i < n_u;
            sgllm__cu_mvd_unit<T, NT, NR>(row, ok ? i : n_u - 1, ok, a, acc);
        }
    }
#pragma unroll
    for (int k = 0; k < NR; k++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[k][t] = sgllm__cu_warp_sum(acc[k][t]);
    if (S > 1) { // the row's first warp adds the others' sums, in order
        __shared__ float shares[MV_MAX_WARPS][NR][NT];
        int wb = (int)(threadIdx.x / 32);
        if (lane == 0)
#pragma unroll
            for (int k = 0; k < NR; k++)
#pragma unroll
                for (int t = 0; t < NT; t++) shares[wb][k][t] = acc[k][t];
        __syncthreads();
        if (part || !live) return;
#pragma unroll
        for (int k = 0; k < NR; k++)
#pragma unroll
            for (int t = 0; t < NT; t++)
                for (int j = 1; j < S; j++) acc[k][t] += shares[wb + j][k][t];
    }
    if (lane) return;
    int64_t rows = s == 0 ? a.rows[0] : s == 1 ? a.rows[1] : a.rows[2];
    float *y = s == 0 ? a.y[0] : s == 1 ? a.y[1] : a.y[2];
#pragma unroll
    for (int t = 0; t < NT; t++)
        if (t < a.nt) y[t * rows + r] = NR == 2 ? sgllm__cu_act(a.act, acc[0][t]) * acc[NR - 1][t] : acc[0][t];
}

template <int NT, int NR>
static sgllm_status sgllm__cu_mvd_launch(sgllm__cuda *c, uint32_t type, unsigned blocks, int threads,
                                         const sgllm__cu_mvd &a) {
#define SGLLM__MVD(TT)                                                                                             \
    case TT: return sgllm__cu_launch(c, "matvec (direct)", sgllm__cu_mvd_k<TT, NT, NR>, dim3(blocks), dim3(threads), 0, a);
    switch (type) {
        SGLLM__MVD(T_F32) SGLLM__MVD(T_F16) SGLLM__MVD(T_BF16) SGLLM__MVD(T_Q4_0) SGLLM__MVD(T_Q4_1) SGLLM__MVD(T_Q5_0)
        SGLLM__MVD(T_Q5_1) SGLLM__MVD(T_Q8_0) SGLLM__MVD(T_Q4_K) SGLLM__MVD(T_Q5_K) SGLLM__MVD(T_Q6_K)
    default: return sgllm__cu_bad(c, "matvec (direct)", "no kernel for this weight type");
    }
#undef SGLLM__MVD
}

// Whether the direct kernel takes weights of type t at w (row_bytes rb): quantized types
// need 16-byte aligned matrices, rows whole 4-byte words and cols within the activation
// buffer; float types 16-byte aligned rows. x 16-byte aligned either way.
static bool sgllm__cu_mvd_ok(uint32_t t, const void *w, int64_t rb, int64_t cols, const float *x) {
    if ((uintptr_t)w % 16 || (uintptr_t)x % 16 || cols % 4) return false;
    if (t == T_F32 || t == T_F16 || t == T_BF16) return rb % 16 == 0;
    return rb % 4 == 0 && cols <= MV_XQ_COLS;
}

// Fills a's activation fields for weight type t and x (nt, cols): float types read x as is;
// quantized ones for the wide kernel (wide) either leave the quantization to the kernel's
// blocks (a->inl: at most dispatch.matvec_xq_inline values, whose int8 blocks then take at
// most 40 KB of the block's shared memory, beside under 48 KB of slots) or, like those for
// the direct kernel, are quantized here, in a launch of their own, into the context's buffer.
// (Measured on the H100, docs/PERF.md "In-kernel activation quantization and 8-byte wide
// rows": with PDL the separate launch overlaps the matrix-vector kernel's first weight loads,
// while the in-block prologue puts a read of x from L2 and a block barrier on every block's
// path; in-block was slower for every Gemma 3 / SmolLM2 shape (by 10-13% of the step's
// products; in the direct kernel too, which therefore has no such prologue: its registers
// also slowed its plain launches) and 1.5% faster only for Llama-3-8B's 4096-value
// single-token products, so the table keeps 0.)
static sgllm_status sgllm__cu_mvd_prep(sgllm__cuda *c, uint32_t t, const float *x, int64_t nt, int64_t cols, bool wide,
                                       sgllm__cu_mvd *a) {
    a->x = x;
    a->nt = (int)nt;
    a->cols = cols;
    a->xq = sgllm__cu_xq_codes(c);
    a->xd = sgllm__cu_xq_scales(c);
    a->inl = 0;
    if (t == T_F32 || t == T_F16 || t == T_BF16) return SGLLM_OK;
    // already there: quantized by the op that wrote x (sgllm__cuda_norm_add_rmsnorm_q, decode
    // attention's cluster merge)
    const sgllm__cu_xq_held *q = &c->xq;
    if (q->of == x && q->kind == sgllm__cu_xq_kind((int)t) && q->nt == nt && q->cols == cols) return SGLLM_OK;
    if (wide && nt * cols <= c->disp.matvec_xq_inline &&
        sgllm__cu_xq_bytes(nt, cols) + 48 * 1024 <= (size_t)c->smem_optin) {
        a->inl = 1;
        return SGLLM_OK;
    }
    return sgllm__cuda_quantize_act(c, t, x, nt, cols, (int8_t *)a->xq, (float *)a->xd);
}

static sgllm_status sgllm__cu_mvd_run(sgllm__cuda *c, uint32_t type, const sgllm__cu_mvd &a_in, int nr) {
    int warps = sgllm__cu_mv_warps(c);
    // float rows over dispatch.matvec_direct_split warps each, where the block's warps divide
    sgllm__cu_mvd a = a_in;
    bool is_float = type == T_F32 || type == T_F16 || type == T_BF16;
    int split = c->disp.matvec_direct_split; // 1, 2 or 4 (the config reader's range)
    a.split = is_float && split > 1 && warps % split == 0 ? split : 1;
    int64_t blocks = (a.total_rows * a.split + warps - 1) / warps;
    if (blocks > INT32_MAX) return sgllm__cu_bad(c, "matvec", "too many rows");
    unsigned b = (unsigned)blocks;
    int th = 32 * warps;
    if (nr == 2) {
        if (a.nt == 1) return sgllm__cu_mvd_launch<1, 2>(c, type, b, th, a);
        if (a.nt == 2) return sgllm__cu_mvd_launch<2, 2>(c, type, b, th, a);
        if (a.nt <= 4) return sgllm__cu_mvd_launch<4, 2>(c, type, b, th, a);
        return sgllm__cu_mvd_launch<8, 2>(c, type, b, th, a);
    }
    if (a.nt == 1) return sgllm__cu_mvd_launch<1, 1>(c, type, b, th, a);
    if (a.nt == 2) return sgllm__cu_mvd_launch<2, 1>(c, type, b, th, a);
    if (a.nt <= 4) return sgllm__cu_mvd_launch<4, 1>(c, type, b, th, a);
    return sgllm__cu_mvd_launch<8, 1>(c, type, b, th, a);
}

// Dynamic shared memory of the quantized kernel: one ring of MV_STAGES chunk stages per warp.
static size_t sgllm__cu_mv_smem(uint32_t t, int warps) {
    int cb = MV_CHUNK / sgllm__cu_blk_vals(t) * sgllm__cu_blk_bytes(t);
    return (size_t)warps * MV_STAGES * (size_t)((cb + 15) / 16 * 16);
}

struct sgllm__cu_mv_args {
    const uint8_t *w;
    int64_t rows, cols, row_bytes;
    int copy_bytes;
    const float *x;
    int nt;
    float *y;
    int split;
};

template <int NT>
static sgllm_status sgllm__cu_mv_launch(sgllm__cuda *c, uint32_t type, int path, dim3 grid, int threads, size_t smem,
                                        const sgllm__cu_mv_args &a) {
    dim3 block(threads);
    if (path == 0) {
#define SGLLM__MVF(TT)                                                                                               \
    case TT:                                                                                                         \
        return sgllm__cu_launch(c, "matvec", sgllm__cu_mv_float_k<TT, NT, 8>, grid, block, 0, a.w, a.rows, a.cols,   \
                                a.row_bytes, a.x, a.nt, a.y, a.split);
        switch (type) {
            SGLLM__MVF(T_F32) SGLLM__MVF(T_F16) SGLLM__MVF(T_BF16)
        default: return sgllm__cu_bad(c, "matvec", "no float kernel for this weight type");
        }
#undef SGLLM__MVF
    }
    if (path == 1) {
#define SGLLM__MVQ(TT)                                                                                              \
    case TT:                                                                                                        \
        return sgllm__cu_launch(c, "matvec", sgllm__cu_mv_quant_k<TT, NT>, grid, block,                              \
                                sgllm__cu_mv_smem(TT, threads / 32), a.w, a.rows, a.cols, a.row_bytes, a.copy_bytes, \
                                a.x, a.nt, a.y, a.split);
        switch (type) {
            SGLLM__MVQ(T_Q4_0) SGLLM__MVQ(T_Q4_1) SGLLM__MVQ(T_Q5_0) SGLLM__MVQ(T_Q5_1) SGLLM__MVQ(T_Q8_0)
            SGLLM__MVQ(T_Q4_K) SGLLM__MVQ(T_Q5_K) SGLLM__MVQ(T_Q6_K)
        default: return sgllm__cu_bad(c, "matvec", "no staged kernel for this weight type");
        }
#undef SGLLM__MVQ
    }
    if (path == 3) {
#define SGLLM__MVI(TT)                                                                                              \
    case TT:                                                                                                        \
        if (smem > 48 * 1024) /* a refusal makes the launch fail, which is reported */                              \
            (void)cudaFuncSetAttribute(sgllm__cu_mv_i8_k<TT, NT>, cudaFuncAttributeMaxDynamicSharedMemorySize,       \
                                       (int)smem);                                                                  \
        return sgllm__cu_launch(c, "matvec", sgllm__cu_mv_i8_k<TT, NT>, grid, block, smem, a.w, a.rows, a.cols,      \
                                a.row_bytes, a.copy_bytes, a.x, a.nt, a.y, a.split);
        switch (type) {
            SGLLM__MVI(T_Q4_0) SGLLM__MVI(T_Q4_1) SGLLM__MVI(T_Q5_0) SGLLM__MVI(T_Q5_1) SGLLM__MVI(T_Q8_0)
            SGLLM__MVI(T_Q4_K) SGLLM__MVI(T_Q5_K) SGLLM__MVI(T_Q6_K)
        default: return sgllm__cu_bad(c, "matvec", "no int8 kernel for this weight type");
        }
#undef SGLLM__MVI
    }
    return sgllm__cu_launch(c, "matvec", sgllm__cu_mv_generic_k<NT>, grid, block, 0, type, a.w, a.rows, a.cols,
                            a.row_bytes, a.x, a.nt, a.y, a.split);
}

// The streamed kernel (section 4c, dispatch.matvec_stream_kb): its launch constants and shape.
// (Shape measured on the H100 among 4/6/8 warps, 2-8 stages of 8-48 KB: docs/PERF.md, twelfth session.)
enum { MVS_WARPS = 8, MVS_STAGES = 3, MVS_STAGE_BYTES = 24576, MVS_MAX_COLS = 4096, MVS_NB = 4 };

struct sgllm__cu_mvs {
    const uint8_t *w;  // (rows, row_bytes), 16-byte aligned
    float *y;          // (rows)
    const int8_t *xq;  // the activations quantized for the type (cols codes) and their (scale, second value)
    const float2 *xd;
    int64_t rows, cols, row_bytes;
    int R;             // rows per stage (a multiple of MVS_WARPS)
    int slot;          // bytes of one stage's slot (R row_bytes, + 16 for sgllm__cu_ld_a2's over-read, rounded to 128)
};

static bool sgllm__cu_mvs_ok(sgllm__cuda *c, uint32_t t, const void *w, int64_t rows, int64_t rb, int64_t cols,
                             const float *x, sgllm__cu_mvs *a);
static sgllm_status sgllm__cu_mvs_run(sgllm__cuda *c, uint32_t type, const sgllm__cu_mvs &a);

// The wide-load kernel (section 4b, dispatch.matvec_int8 = 3).
static bool sgllm__cu_mvw_ok(sgllm__cuda *c, uint32_t t, const void *w, int64_t rb, int64_t cols, const float *x);
static sgllm_status sgllm__cu_mvw_run(sgllm__cuda *c, uint32_t type, const sgllm__cu_mvd &a);
static bool sgllm__cu_mvw2_pair(sgllm__cuda *c, uint32_t t1, uint32_t t2, const sgllm__cu_mvd *a1,
                                const sgllm__cu_mvd *a2, bool run, sgllm_status *s);

extern "C" sgllm_status sgllm__cuda_matvec(sgllm__cuda *c, uint32_t type, const void *w, int64_t rows, int64_t cols,
                                           const float *x, int64_t n_tok, float *y) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    int64_t rb = sgllm__cu_row_bytes(type, cols);
    if (!w || !x || !y || rows <= 0 || !rb || n_tok < 0 || n_tok > 8)
        return sgllm__cu_bad(c, "matvec", "bad pointer, weight type or shape (n_tok must be <= 8)");
    if (!n_tok) return SGLLM_OK;
    sgllm__cu_xq_forget(c, y);
    bool is_float = type == T_F32 || type == T_F16 || type == T_BF16;
    sgllm__cu_mvs sa;
    if (n_tok == 1 && !is_float && c->disp.matvec_int8 && sgllm__cu_mvs_ok(c, type, w, rows, rb, cols, x, &sa)) {
        sgllm__cu_mvd a = {};
        sgllm_status s = sgllm__cu_mvd_prep(c, type, x, 1, cols, false, &a);
        if (s) return s;
        sa.y = y, sa.xq = a.xq, sa.xd = a.xd;
        return sgllm__cu_mvs_run(c, type, sa);
    }
    bool wide = !is_float && c->disp.matvec_int8 == 3 && sgllm__cu_mvw_ok(c, type, w, rb, cols, x);
    // the direct kernel: quantized types with dispatch.matvec_int8 = 2, float types with
    // dispatch.matvec_float_direct (H100, Llama-3-8B BF16 decode at 512 keys: attention + o
    // 25.2 -> 23.7 us and down 46.5 -> 44.6 us of a layer in the step, 80.1% -> 82.4% of the
    // floor; docs/PERF.md)
    bool direct = is_float ? c->disp.matvec_float_direct != 0 : c->disp.matvec_int8 == 2;
    if (wide || (direct && sgllm__cu_mvd_ok(type, w, rb, cols, x))) {
        sgllm__cu_mvd a = {};
        a.w[0] = (const uint8_t *)w, a.y[0] = y, a.rows[0] = rows, a.n_seg = 1, a.act = -1;
        a.row_bytes = rb, a.total_rows = rows;
        sgllm_status s = sgllm__cu_mvd_prep(c, type, x, n_tok, cols, wide, &a);
        return s ? s : wide ? sgllm__cu_mvw_run(c, type, a) : sgllm__cu_mvd_run(c, type, a, 1);
    }
    int warps = sgllm__cu_mv_warps(c);
    // split rows over more warps until the grid has the dispatch's warps per SM (powers of two
    // dividing the block's warps)
    int split = 1;
    int64_t want = (int64_t)c->disp.matvec_warps_per_sm * (c->disp.sm_count > 0 ? c->disp.sm_count : 1);
    while (split * 2 <= warps && warps % (split * 2) == 0 && rows * split < want) split *= 2;
    int64_t rows_per_block = warps / split, blocks = (rows + rows_per_block - 1) / rows_per_block;
    if (blocks > INT32_MAX) return sgllm__cu_bad(c, "matvec", "too many rows");
    uintptr_t addr = (uintptr_t)w;
    bool x_vec = (uintptr_t)x % 16 == 0 && cols % 4 == 0; // float4 activation reads
    sgllm__cu_mv_args a = {(const uint8_t *)w, rows, cols, rb, 4, x, (int)n_tok, y, split};
    int path = 2;
    if (is_float && x_vec && addr % 16 == 0 && rb % 16 == 0) path = 0;
    if (!is_float && x_vec) {
        // copies never straddle a chunk: Q6_K chunks (840 bytes) start on 8-byte boundaries
        for (int g = type == T_Q6_K ? 8 : 16; g >= 4; g /= 2)
            if (addr % g == 0 && rb % g == 0) {
                a.copy_bytes = g;
                path = 1;
                break;
            }
    }
    // int8 activations: when the dispatch asks for them and the block's shared memory (ring plus
    // quantized activations) fits the device; the grid is capped at the blocks that stay
    // resident (by warps and shared memory per SM), each block looping over row groups.
    size_t smem = 0;
    if (path == 1 && c->disp.matvec_int8) {
        smem = sgllm__cu_mv_smem(type, warps) + sgllm__cu_xq_bytes(n_tok, cols);
        if (smem <= (size_t)c->smem_optin) {
            int64_t per_sm = (c->disp.matvec_warps_per_sm + warps - 1) / warps;
            int64_t fit = (int64_t)c->smem_sm / (int64_t)(smem + 1024);
            if (per_sm > fit) per_sm = fit;
            if (per_sm < 1) per_sm = 1;
            int64_t cap = per_sm * (c->disp.sm_count > 0 ? c->disp.sm_count : 1);
            if (blocks > cap) blocks = cap;
            path = 3;
        } else {
            smem = 0;
        }
    }
    cudaSetDevice(c->device);
    dim3 grid((unsigned)blocks);
    int threads = 32 * warps;
    if (n_tok == 1) return sgllm__cu_mv_launch<1>(c, type, path, grid, threads, smem, a);
    if (n_tok == 2) return sgllm__cu_mv_launch<2>(c, type, path, grid, threads, smem, a);
    if (n_tok <= 4) return sgllm__cu_mv_launch<4>(c, type, path, grid, threads, smem, a);
    return sgllm__cu_mv_launch<8>(c, type, path, grid, threads, smem, a);
}

// Whether q/k/v-style or gate/up launches can be fused: same type, batch within the
// matrix-vector range, the direct kernel's alignment; quantized types need int8 activations
// and, unless dispatch.matvec_int8 = 2, at most MV_FUSE_MAX_BYTES of weights (larger ones
// stream faster through the staged kernel, one launch per matrix).
enum { MV_FUSE_MAX_BYTES = 32 << 20 };
// Whether a fused launch takes the wide kernel (dispatch.matvec_int8 = 3, every matrix fit for it).
static bool sgllm__cu_mvw_wide(sgllm__cuda *c, int n, const uint32_t *types, const void *const *w, int64_t rb,
                               int64_t cols, const float *x) {
    bool ok = c->disp.matvec_int8 == 3;
    for (int k = 0; k < n && ok; k++) ok = sgllm__cu_mvw_ok(c, types[k], w[k], rb, cols, x);
    return ok;
}
static bool sgllm__cu_fusable(sgllm__cuda *c, int n, const uint32_t *types, const void *const *w, const int64_t *rows,
                              int64_t cols, const float *x, int64_t n_tok, int64_t *rb) {
    int max_batch = c->disp.matvec_max_batch < 1 ? 1 : c->disp.matvec_max_batch > 8 ? 8 : c->disp.matvec_max_batch;
    uint32_t t = types[0];
    *rb = sgllm__cu_row_bytes(t, cols);
    bool is_float = t == T_F32 || t == T_F16 || t == T_BF16;
    if (!*rb || !x || n_tok < 1 || n_tok > max_batch || (!is_float && !c->disp.matvec_int8)) return false;
    int64_t bytes = 0;
    for (int k = 0; k < n; k++) {
        if (types[k] != t || !w[k] || !sgllm__cu_mvd_ok(t, w[k], *rb, cols, x)) return false;
        bytes += rows[k] * *rb;
    }
    return is_float || c->disp.matvec_int8 == 2 || sgllm__cu_mvw_wide(c, n, types, w, *rb, cols, x) ||
           bytes <= MV_FUSE_MAX_BYTES;
}

// Whether a q/k/v product of this many weight bytes lets the next kernel launch before its own
// PDL wait (dispatch.matvec_qkv_early_kb; wide kernel only). The next kernel is decode
// attention, whose blocks then start their cache reads while the product runs: their wait is
// for this product, which itself finishes only after its own predecessor, so the order of
// every read and write is unchanged. Measured on the H100: SmolLM2's step 6% shorter, Gemma 3's
// level; Llama-3-8B's q/k/v (14 MiB and more) slower with it, hence the size bound.
static bool sgllm__cu_qkv_early(const sgllm__cuda *c, int64_t bytes) {
    return c->pdl && c->disp.matvec_qkv_early_kb > 0 && bytes <= (int64_t)c->disp.matvec_qkv_early_kb * 1024;
}

extern "C" void sgllm__cuda_qkv_before_mma(sgllm__cuda *c, int on) {
    if (c) c->qkv_mma = on != 0;
}

extern "C" sgllm_status sgllm__cuda_matvec_multi(sgllm__cuda *c, int n, const uint32_t *types, const void *const *w,
                                                 const int64_t *rows, int64_t cols, const float *x, int64_t n_tok,
                                                 float *const *y) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    const int early = c->qkv_mma ? 2 : 1; // what an early launch is (sgllm__cuda_qkv_before_mma), asked once
    c->qkv_mma = false;
    if (n < 1 || n > 3 || !types || !w || !rows || !y) return sgllm__cu_bad(c, "matvec_multi", "bad matrix list");
    for (int k = 0; k < n; k++) sgllm__cu_xq_forget(c, y[k]);
    int64_t rb, total = 0;
    bool fused = true;
    for (int k = 0; k < n; k++) fused = fused && y[k] && rows[k] > 0;
    fused = fused && sgllm__cu_fusable(c, n, types, w, rows, cols, x, n_tok, &rb);
    for (int k = 0; k < n; k++) total += rows[k] > 0 ? rows[k] : 0;
    int max_batch = c->disp.matvec_max_batch < 1 ? 1 : c->disp.matvec_max_batch > 8 ? 8 : c->disp.matvec_max_batch;
    if (!fused && n_tok > max_batch) return sgllm__cuda_gemm_multi(c, n, types, w, rows, cols, x, n_tok, y);
    bool mixed = false;
    for (int k = 1; k < n; k++) mixed = mixed || types[k] != types[0];
    // q and k of one type, v of another that reads the same activation format, one token,
    // pairs of rows: one launch of the wide kernel for both types (sgllm__cu_mvw2_k)
    if (!fused && mixed && n == 3 && types[0] == types[1] && n_tok == 1 && c->disp.matvec_int8 == 3 &&
        sgllm__cu_xq_kind((int)types[0]) == sgllm__cu_xq_kind((int)types[2]) &&
        sgllm__cu_mvw2_pair(c, types[0], types[2], NULL, NULL, false, NULL)) {
        int64_t rb1 = sgllm__cu_row_bytes(types[0], cols), rb2 = sgllm__cu_row_bytes(types[2], cols);
        bool ok = rb1 && rb2 && sgllm__cu_mvw_ok(c, types[0], w[0], rb1, cols, x) &&
                  sgllm__cu_mvw_ok(c, types[0], w[1], rb1, cols, x) && sgllm__cu_mvw_ok(c, types[2], w[2], rb2, cols, x);
        for (int k = 0; k < 3; k++) ok = ok && y[k] && rows[k] > 0 && rows[k] % 2 == 0;
        if (ok) {
            sgllm__cu_mvd a1 = {}, a2;
            for (int k = 0; k < 2; k++) a1.w[k] = (const uint8_t *)w[k], a1.y[k] = y[k], a1.rows[k] = rows[k];
            a1.n_seg = 2, a1.act = -1, a1.row_bytes = rb1, a1.total_rows = rows[0] + rows[1];
            a1.early = sgllm__cu_qkv_early(c, (rows[0] + rows[1]) * rb1 + rows[2] * rb2) ? early : 0;
            sgllm_status s = sgllm__cu_mvd_prep(c, types[0], x, 1, cols, false, &a1);
            if (s) return s;
            a2 = a1;
            a2.w[0] = (const uint8_t *)w[2], a2.y[0] = y[2], a2.rows[0] = rows[2];
            a2.w[1] = NULL, a2.y[1] = NULL, a2.rows[1] = 0;
            a2.n_seg = 1, a2.row_bytes = rb2, a2.total_rows = rows[2];
            cudaSetDevice(c->device);
            sgllm__cu_mvw2_pair(c, types[0], types[2], &a1, &a2, true, &s);
            return s;
        }
    }
    // mixed types (Gemma 3's Q5_0 q/k with a Q8_0 v): each run of equal neighbours fused on
    // its own (a run is of one type, so the call below does not come back here)
    for (int k = 0; !fused && k < n;) {
        int e = k + 1;
        while (mixed && e < n && types[e] == types[k]) e++;
        sgllm_status s = e - k > 1 ? sgllm__cuda_matvec_multi(c, e - k, types + k, w + k, rows + k, cols, x, n_tok, y + k)
                                   : sgllm__cuda_matmul(c, types[k], w[k], rows[k], cols, x, n_tok, y[k]);
        if (s) return s;
        k = e;
    }
    if (!fused) return SGLLM_OK;
    cudaSetDevice(c->device);
    sgllm__cu_mvd a = {};
    for (int k = 0; k < n; k++) a.w[k] = (const uint8_t *)w[k], a.y[k] = y[k], a.rows[k] = rows[k];
    a.n_seg = n, a.act = -1, a.row_bytes = rb, a.total_rows = total;
    a.early = n == 3 && sgllm__cu_qkv_early(c, total * rb) ? early : 0;
    bool wide = sgllm__cu_mvw_wide(c, n, types, w, rb, cols, x);
    sgllm_status s = sgllm__cu_mvd_prep(c, types[0], x, n_tok, cols, wide, &a);
    if (s) return s;
    return wide ? sgllm__cu_mvw_run(c, types[0], a) : sgllm__cu_mvd_run(c, types[0], a, 1);
}

extern "C" sgllm_status sgllm__cuda_matvec_gated(sgllm__cuda *c, int act, uint32_t gate_type, const void *w_gate,
                                                 uint32_t up_type, const void *w_up, int64_t rows, int64_t cols,
                                                 const float *x, int64_t n_tok, float *y, float *u) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    if (!y || rows <= 0 || (act != SGLLM__CUDA_ACT_SILU && act != SGLLM__CUDA_ACT_GELU_TANH))
        return sgllm__cu_bad(c, "matvec_gated", "bad pointer, shape or activation");
    sgllm__cu_xq_forget(c, y);
    if (u) sgllm__cu_xq_forget(c, u);
    const uint32_t types[2] = {gate_type, up_type};
    const void *w[2] = {w_gate, w_up};
    const int64_t rr[2] = {rows, rows};
    int64_t rb;
    if (!sgllm__cu_fusable(c, 2, types, w, rr, cols, x, n_tok, &rb)) {
        if (!u) return sgllm__cu_bad(c, "matvec_gated", "the unfused path needs the up buffer");
        int max_batch = c->disp.matvec_max_batch < 1 ? 1 : c->disp.matvec_max_batch > 8 ? 8 : c->disp.matvec_max_batch;
        float *yu[2] = {y, u};
        sgllm_status s = n_tok > max_batch ? sgllm__cuda_gemm_multi(c, 2, types, w, rr, cols, x, n_tok, yu)
                                           : sgllm__cuda_matmul(c, gate_type, w_gate, rows, cols, x, n_tok, y);
        if (!s && n_tok <= max_batch) s = sgllm__cuda_matmul(c, up_type, w_up, rows, cols, x, n_tok, u);
        return s ? s : sgllm__cuda_gated_act(c, act, y, u, n_tok * rows);
    }
    cudaSetDevice(c->device);
    sgllm__cu_mvd a = {};
    a.w[0] = (const uint8_t *)w_gate, a.w[1] = (const uint8_t *)w_up, a.y[0] = y, a.rows[0] = rows;
    a.n_seg = 1, a.act = act, a.row_bytes = rb, a.total_rows = rows;
    bool wide = sgllm__cu_mvw_wide(c, 2, types, w, rb, cols, x);
    sgllm_status s = sgllm__cu_mvd_prep(c, gate_type, x, n_tok, cols, wide, &a);
    if (s) return s;
    return wide ? sgllm__cu_mvw_run(c, gate_type, a) : sgllm__cu_mvd_run(c, gate_type, a, 2);
}

// --- 4b. Wide-load int8 matrix-vector ------------------------------------------------------
// dispatch.matvec_int8 = 3: block-quantized weights whose rows are whole words of
// dispatch.matvec_wide_align bytes (16 or 8; 16-byte aligned matrix), single matrices and the
// fused q/k/v and gate/up launches alike. The direct
// kernel above reads 2-4-byte words (Q8_0 blocks are only 2-byte aligned) and is bound by load
// instructions; the staged kernel quantizes the activations again in every block. Here the
// activations are quantized once per call into the context's buffer (L2/L1-resident, as for
// the direct kernel), and each warp streams its rows in chunks of MVW_CV values: every lane
// loads its 16-byte words of the chunk (words lane, lane + 32, ...: each load instruction
// covers 512 contiguous bytes), the words go through a per-warp shared-memory slot so that
// lanes can take whole 32-value pieces, and the next chunk's loads are issued before the
// current one is computed (one chunk per row in flight per warp, in registers). Warps are
// persistent: a warp walks row groups gw, gw + total warps, ..., its chunk pipeline running
// across row ends, so no warp waits a full memory latency per row; there are no block-wide
// barriers. NR rows per warp (two consecutive rows, or gate and up of a gated pair) share
// the loop and the activation reads (L1 hits): a lane takes pieces lane, lane + 32, ... of
// each chunk, decodes piece p of each of the NR rows (sgllm__cu_piece_w, the staged kernel's
// code), then reads each token's 32 activation codes of the piece once for all NR dots (read
// per row, they were a large part of the kernel's L1 traffic: +7 points for Q8_0 and Q4_K on
// the H100's Llama-3-8B decode step). Pieces are summed in the staged kernel's order, so a
// row's result is bit for bit the staged kernel's with one warp per row. The kernel lets its
// dependents launch right after its PDL wait, as the other PDL ops do.
// Rows are loaded in their widest whole words: 16 bytes, else 8 (Gemma 3's 640-value Q5_0 and
// Q8_0 rows, 440 and 680 bytes; SmolLM2's 576-value Q4_1 rows, 360 bytes); lane l takes words
// l, l + 32, ... either way, so each load instruction covers 32 contiguous words. (4-byte
// words, e.g. SmolLM2's 612-byte Q8_0 rows, are left to the other kernels: their 64-bit
// addresses took the wide kernel to 170+ registers in some instantiations.)
// With a.inl (sgllm__cu_mvd_prep) each block quantizes x into shared memory after the slots,
// once, after the PDL wait, and all its warps meet at one barrier before the first chunk.
// PX (one token, rows of at least one whole chunk: chosen at launch): a lane loads its next
// piece's activation codes before it computes the current piece (two register buffers, the
// next chunk's first piece during the last one), so their L1 latency overlaps a piece's work
// instead of opening every piece, and adds each dot in two dp4a chains; the sums and their
// order are unchanged. Measured on the H200 (docs/PERF.md, fifteenth session): Llama-3-8B's
// products alone Q8_0 72 -> 76% of the floor, Q4_K 53 -> 56% (53% without the two chains),
// at 110-123 registers a thread instead of 96-106. Gemma 3's and SmolLM2's shorter rows keep
// the other instance: there a lane has at most a piece or two a row, and the variant made
// Gemma's step 4.5% longer.

// Values per chunk: 2048 for the 8-bit-ish types, 4096 for the 4-bit ones (~1.1-2.3 KB).
static __host__ __device__ constexpr int sgllm__cu_mvw_cv(int t) {
    return t == T_Q4_0 || t == T_Q4_1 || t == T_Q4_K || t == T_Q5_K ? 4096 : 2048;
}
// Chunk bytes of cv values (cv 0: the type's chunk; a multiple of 16 for every use).
static __host__ __device__ constexpr int sgllm__cu_mvw_cb(int t, int cv = 0) {
    return (cv ? cv : sgllm__cu_mvw_cv(t)) / (t == T_Q4_K || t == T_Q5_K || t == T_Q6_K ? 256 : 32) *
           (t == T_Q4_0 ? 18 : t == T_Q4_1 ? 20 : t == T_Q5_0 ? 22 : t == T_Q5_1 ? 24 : t == T_Q8_0 ? 34
            : t == T_Q4_K ? 144 : t == T_Q5_K ? 176 : 210);
}
// Whether one token over rows of whole chunks takes the PX instance (below): not Q6_K, whose dot
// already runs in two chains and which measured slower with it (Llama-3-8B's Q6_K products
// alone 53.5 -> 52.4% of the floor; Gemma 3's file, whose 2048-value Q6_K down rows took it,
// 2219 -> 2210 tok/s).
static __host__ __device__ constexpr bool sgllm__cu_mvw_px(int t) { return t != T_Q6_K; }
// Shared-memory slot of one row's chunk: 16 bytes beyond it for the over-read of sgllm__cu_ld_a2.
static __host__ __device__ constexpr int sgllm__cu_mvw_cs(int t, int cv = 0) { return sgllm__cu_mvw_cb(t, cv) + 16; }

// Short rows (sgllm__cu_mvw_run): the chunks of this many values and this many rows per warp.
// A row of up to 1024 values is one chunk either way, and a lane takes pieces lane, lane + 32,
// ... of the row whatever the chunk size, so every row's sum is the same as with the type's
// chunk: four rows per warp in half the registers put twice the bytes in flight, which large
// matrices of short rows need (Gemma 3's 262144 x 640 Q8_0 output, ~1.9 TB/s with two).
enum { MVW_SHORT_CV = 1024, MVW_SHORT_NR = 4, MVW_SHORT_MIN_BYTES = 8 << 20 };

// The kernel's body, for blocks bx of nbx (sgllm__cu_mvw2_k runs two in one grid); CVT: the
// chunk's values (0: the type's).
template <int T, int NT, int NR, int CVT = 0, bool PX = false>
static __device__ __forceinline__ void sgllm__cu_mvw_body(const sgllm__cu_mvd &a, int64_t groups, int64_t bx,
                                                          int64_t nbx) {
    constexpr int CV = CVT ? CVT : sgllm__cu_mvw_cv(T), CB = sgllm__cu_mvw_cb(T, CV), CS = CB + 16;
    constexpr int U = (CB / 16 + 31) / 32; // 16-byte words per lane; 8-byte words fit the same registers
    extern __shared__ __align__(16) uint8_t mvw_smem[]; // slots (warps, NR, CS); a.inl: qs (nt, cols), ds (nt, cols / 32)
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    uint8_t *slot = mvw_smem + (size_t)warp * NR * CS;
    int64_t gw = bx * (blockDim.x / 32) + warp, n_w = nbx * (blockDim.x / 32);
    int n_ch = (int)((a.cols + CV - 1) / CV);
    bool gated = a.act >= 0;
    // rows of group g: gated, row g of w[0] and w[1]; else rows NR g .. NR g + NR - 1 of the
    // concatenated segments (each segment's rows a multiple of NR)
    auto locate = [&](int64_t g, int &s, int64_t &r) {
        s = 0;
        r = gated ? g : g * NR;
        if (!gated && r >= a.rows[0]) r -= a.rows[0], s = 1;
        if (s == 1 && a.n_seg > 2 && r >= a.rows[1]) r -= a.rows[1], s = 2;
    };
    auto row_ptr = [&](int s, int64_t r, int k) -> const uint8_t * {
        if (gated) return a.w[k] + r * a.row_bytes;
        return (s == 0 ? a.w[0] : s == 1 ? a.w[1] : a.w[2]) + (r + k) * a.row_bytes;
    };
    // word bytes of every row (uniform: row_bytes is); buf[k] holds the lane's words of row k's
    // chunk, 4 registers per 16-byte word, 2 per 8-byte word
    const int lw = a.row_bytes % 16 == 0 ? 16 : 8;
    uint32_t buf[NR][4 * U];
    auto load = [&](int64_t g, int ch) {
        int s;
        int64_t r;
        locate(g, s, r);
        int64_t off = (int64_t)ch * CB, left = a.row_bytes - off;
        int nw = (int)((left < CB ? left : CB) / lw);
#pragma unroll
        for (int k = 0; k < NR; k++) {
            const uint8_t *src = row_ptr(s, r, k) + off;
            if (lw == 16) {
#pragma unroll
                for (int u = 0; u < U; u++)
                    if (lane + 32 * u < nw) { // streamed once
                        uint4 v = __ldcs((const uint4 *)src + lane + 32 * u);
                        buf[k][4 * u] = v.x, buf[k][4 * u + 1] = v.y, buf[k][4 * u + 2] = v.z, buf[k][4 * u + 3] = v.w;
                    }
            } else {
#pragma unroll
                for (int u = 0; u < 2 * U; u++)
                    if (lane + 32 * u < nw) {
                        uint2 v = __ldcs((const uint2 *)src + lane + 32 * u);
                        buf[k][2 * u] = v.x, buf[k][2 * u + 1] = v.y;
                    }
            }
        }
    };
    int64_t g = gw;
    int ch = 0;
    const int8_t *xq = a.xq;
    const float2 *xd = a.xd;
    // weights do not depend on the previous kernel: the first chunk is in flight during the
    // PDL wait, in registers, or with a.inl only headed for L2 (the prologue's registers would
    // add to the chunk's), loaded after the prologue
    if (a.inl) {
        if (g < groups) {
            int s;
            int64_t r;
            locate(g, s, r);
            int64_t n_pf = ((a.row_bytes < CB ? a.row_bytes : CB) + 127) / 128; // lines of the chunk per row
#pragma unroll
            for (int k = 0; k < NR; k++)
                for (int64_t i = lane; i < n_pf; i += 32) sgllm__cu_prefetch_l2(row_ptr(s, r, k) + 128 * i);
        }
        sgllm__cu_pdl_wait();
        int8_t *qs = (int8_t *)(mvw_smem + (size_t)(blockDim.x / 32) * NR * CS);
        sgllm__cu_xq_in<T>(a.x, a.cols, a.nt, qs);
        __syncthreads();
        xq = qs, xd = (const float2 *)(qs + (int64_t)a.nt * a.cols);
        if (g < groups) load(g, ch);
    } else {
        if (g < groups) load(g, ch);
        if (a.early) sgllm__cu_pdl_trigger(); // see dispatch.matvec_qkv_early_kb
        sgllm__cu_pdl_wait();
    }
    if (!a.early || a.inl) sgllm__cu_pdl_trigger();
    float acc[NR][NT];
#pragma unroll
    for (int k = 0; k < NR; k++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[k][t] = 0.0f;
    // PX: the lane's activations of its next piece (two buffers, alternating)
    constexpr int NP = CV / 1024; // pieces of a chunk per lane
    constexpr bool px = PX && NT == 1;
    int xk[2][8] = {};
    float2 xa[2] = {};
    if (px && g < groups) xa[0] = sgllm__cu_piece_x(xq, xd, a.cols, 0, lane, xk[0]);
    while (g < groups) {
        // whole chunks go to the slot (a row's last, shorter chunk leaves stale words past its
        // end, in pieces past cols that are never computed)
#pragma unroll
        for (int k = 0; k < NR; k++) {
            if (lw == 16) {
#pragma unroll
                for (int u = 0; u < U; u++)
                    if (lane + 32 * u < CB / 16)
                        ((uint4 *)(slot + k * CS))[lane + 32 * u] =
                            make_uint4(buf[k][4 * u], buf[k][4 * u + 1], buf[k][4 * u + 2], buf[k][4 * u + 3]);
            } else {
#pragma unroll
                for (int u = 0; u < 2 * U; u++)
                    if (lane + 32 * u < CB / 8)
                        ((uint2 *)(slot + k * CS))[lane + 32 * u] = make_uint2(buf[k][2 * u], buf[k][2 * u + 1]);
            }
        }
        __syncwarp();
        int64_t cg = g; // the chunk in the slot
        int cch = ch;
        if (++ch == n_ch) ch = 0, g += n_w;
        if (g < groups) load(g, ch);
        int64_t g0 = (int64_t)cch * (CV / 32); // first piece of the chunk in the row
        // PX: activations one piece ahead, the next chunk's first loaded during the last piece. A
        // loop of its own: folded into the loop below (its activations chosen by PX), the Q4_K
        // instance was scheduled worse (H200, Llama-3-8B products alone 55.7 -> 53.9%).
        if (px) {
#pragma unroll
            for (int i = 0; i < NP; i++) {
                int p = lane + 32 * i, b = i % 2;
                if (i + 1 < NP) {
                    if ((g0 + p + 32) * 32 < a.cols) xa[1 - b] = sgllm__cu_piece_x(xq, xd, a.cols, 0, g0 + p + 32, xk[1 - b]);
                } else if (g < groups && ((int64_t)ch * (CV / 32) + lane) * 32 < a.cols) {
                    xa[1 - b] = sgllm__cu_piece_x(xq, xd, a.cols, 0, (int64_t)ch * (CV / 32) + lane, xk[1 - b]);
                }
                if ((g0 + p) * 32 < a.cols) {
                    sgllm__cu_pw pw[NR];
#pragma unroll
                    for (int k = 0; k < NR; k++) sgllm__cu_piece_w<T>(slot + k * CS, p, pw[k]);
#pragma unroll
                    for (int k = 0; k < NR; k++) sgllm__cu_piece_dot<T, true>(pw[k], xk[b], xa[b], acc[k][0]);
                }
            }
            if (NP % 2) { // the next chunk's first piece went to buffer 1
#pragma unroll
                for (int j = 0; j < 8; j++) xk[0][j] = xk[1][j];
                xa[0] = xa[1];
            }
        } else
#pragma unroll
        for (int i = 0; i < NP; i++) {
            int p = lane + 32 * i;
            if ((g0 + p) * 32 < a.cols) {
                sgllm__cu_pw pw[NR];
#pragma unroll
                for (int k = 0; k < NR; k++) sgllm__cu_piece_w<T>(slot + k * CS, p, pw[k]);
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    if (t >= a.nt) break;
                    int xk[8];
                    float2 xa = sgllm__cu_piece_x(xq, xd, a.cols, t, g0 + p, xk);
#pragma unroll
                    for (int k = 0; k < NR; k++) sgllm__cu_piece_dot<T>(pw[k], xk, xa, acc[k][t]);
                }
            }
        }
        __syncwarp(); // the slot is rewritten by the next iteration
        if (cch != n_ch - 1) continue;
#pragma unroll
        for (int k = 0; k < NR; k++)
#pragma unroll
            for (int t = 0; t < NT; t++) acc[k][t] = sgllm__cu_warp_sum(acc[k][t]);
        if (lane == 0) {
            int s;
            int64_t r;
            locate(cg, s, r);
            int64_t rows = s == 0 ? a.rows[0] : s == 1 ? a.rows[1] : a.rows[2];
            float *y = s == 0 ? a.y[0] : s == 1 ? a.y[1] : a.y[2];
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t >= a.nt) break;
                if (gated) y[t * rows + r] = sgllm__cu_act(a.act, acc[0][t]) * acc[NR - 1][t];
                else
#pragma unroll
                    for (int k = 0; k < NR; k++) y[t * rows + r + k] = acc[k][t];
            }
        }
#pragma unroll
        for (int k = 0; k < NR; k++)
#pragma unroll
            for (int t = 0; t < NT; t++) acc[k][t] = 0.0f;
    }
}

template <int T, int NT, int NR, int CVT = 0, bool PX = false>
static __global__ void __launch_bounds__(MV_MAX_WARPS * 32) sgllm__cu_mvw_k(const sgllm__cu_mvd a, int64_t groups) {
    sgllm__cu_mvw_body<T, NT, NR, CVT, PX>(a, groups, blockIdx.x, gridDim.x);
}

// A one-token q/k/v product that lets a tensor-core decode attention launch early (a.early 2,
// sgllm__cuda_qkv_before_mma): the same body in a kernel of its own, whose blocks ask for the
// SM's largest shared-memory carveout (sgllm__cu_carveout_max). An SM holding blocks
// configured for a small carveout cannot take blocks that need more shared memory than it
// leaves until it drains and is reconfigured, and the tensor-core attention's walking warps'
// stages (about 76 KB a block for 64-wide heads, 165 KB for 256-wide) do not fit beside the
// product's blocks otherwise: measured on the H100, SmolLM2-135M at 4096 keys 4-6% faster
// (docs/PERF.md, eleventh session). Only this launch asks for it: ahead of the CUDA-core attention it cost
// SmolLM2 5% (docs/PERF.md, tenth session), and the other products keep the L1 cache their
// activations are read through (every kernel at the largest carveout: Llama-3-8B BF16 7
// points slower).
template <int T, int NR, bool PX>
static __global__ void __launch_bounds__(MV_MAX_WARPS * 32) sgllm__cu_mvw_early_k(const sgllm__cu_mvd a, int64_t groups) {
    sgllm__cu_mvw_body<T, 1, NR, 0, PX>(a, groups, blockIdx.x, gridDim.x);
}
template <typename K> static void sgllm__cu_carveout_max(K kern) {
    if (cudaFuncSetAttribute(kern, cudaFuncAttributePreferredSharedMemoryCarveout, (int)cudaSharedmemCarveoutMaxShared) !=
        cudaSuccess)
        cudaGetLastError(); // a preference only: the launch works either way
}

// Two products of different weight types over the same quantized activations in one launch
// (Gemma 3's Q5_0 q/k with a Q8_0 v, or a Q4_K_M file's Q4_K q/k with a Q6_K v): blocks
// [0, b1) run a1 of type T1, the rest a2 of type T2, each exactly as its own launch would, so
// the bits are the same; one launch, one PDL wait, instead of two in a row. BIG: the instance
// launched ahead of a tensor-core attention, with the largest carveout (sgllm__cu_mvw_early_k).
template <int T1, int T2, int NT, bool BIG, bool PX>
static __global__ void __launch_bounds__(MV_MAX_WARPS * 32)
    sgllm__cu_mvw2_k(const sgllm__cu_mvd a1, int64_t g1, unsigned b1, const sgllm__cu_mvd a2, int64_t g2) {
    if (blockIdx.x < b1) sgllm__cu_mvw_body<T1, NT, 2, 0, PX>(a1, g1, blockIdx.x, b1);
    else sgllm__cu_mvw_body<T2, NT, 2, 0, PX>(a2, g2, blockIdx.x - b1, gridDim.x - b1);
}

// Whether the wide kernel takes weights of type t at w (row bytes rb): a block-quantized type,
// 16-byte aligned matrix, rows whole words of dispatch.matvec_wide_align bytes (8 at least),
// cols within the activation buffer, x 16-byte aligned.
static bool sgllm__cu_mvw_ok(sgllm__cuda *c, uint32_t t, const void *w, int64_t rb, int64_t cols, const float *x) {
    bool quant = t == T_Q4_0 || t == T_Q4_1 || t == T_Q5_0 || t == T_Q5_1 || t == T_Q8_0 || t == T_Q4_K || t == T_Q5_K ||
                 t == T_Q6_K;
    int64_t align = c->disp.matvec_wide_align < 8 ? 8 : c->disp.matvec_wide_align;
    return quant && (uintptr_t)w % 16 == 0 && rb % align == 0 && (uintptr_t)x % 16 == 0 && cols % 4 == 0 &&
           cols <= MV_XQ_COLS;
}

// Blocks of a persistent wide grid over `groups` row groups, at most cap: as few as give
// every warp the same number of groups.
static int64_t sgllm__cu_mvw_blocks(int64_t groups, int warps, int64_t cap) {
    int64_t blocks = (groups + warps - 1) / warps;
    if (blocks > cap) {
        int64_t per_warp = (groups + cap * warps - 1) / (cap * warps);
        blocks = ((groups + per_warp - 1) / per_warp + warps - 1) / warps;
    }
    return blocks;
}

// The resident blocks of a wide kernel (warps each, smem bytes of dynamic shared memory) on
// the whole device, by the dispatch's warps per SM, shared memory and registers: its
// persistent grid is at most this (a grid past them runs a second, mostly empty wave). Sets
// the kernel's shared-memory attribute first where it needs one (a refusal makes the launch
// fail, which is reported). The warps per SM asked for are matvec_wide_warps_per_sm_q4 (when
// set) for the types of 4096-value chunks (t; -1: none of them), else matvec_wide_warps_per_sm.
template <typename K> static int64_t sgllm__cu_mvw_cap(sgllm__cuda *c, K kern, int warps, size_t smem, int t) {
    int want = c->disp.matvec_wide_warps_per_sm;
    if (c->disp.matvec_wide_warps_per_sm_q4 > 0 && t >= 0 && sgllm__cu_mvw_cv(t) == 4096) want = c->disp.matvec_wide_warps_per_sm_q4;
    int64_t per_sm = (want + warps - 1) / warps, fit = (int64_t)c->smem_sm / (int64_t)(smem + 1024);
    if (per_sm > fit) per_sm = fit;
    if (smem > 48 * 1024) (void)cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    int occ = sgllm__cu_occupancy(c, kern, 32 * (unsigned)warps, smem, 1);
    if (occ > 0 && per_sm > occ) per_sm = occ;
    if (per_sm < 1) per_sm = 1;
    return per_sm * (c->disp.sm_count > 0 ? c->disp.sm_count : 1);
}

// The launch name tells the variants apart (errors, and tests through sgllm__cuda_last_launch).
template <int T, int NT, int NR, int CVT = 0>
static sgllm_status sgllm__cu_mvw_go(sgllm__cuda *c, const sgllm__cu_mvd &a, int64_t groups) {
    int warps = sgllm__cu_mv_warps(c);
    size_t smem = (size_t)warps * NR * sgllm__cu_mvw_cs(T, CVT) + (a.inl ? sgllm__cu_xq_bytes(a.nt, a.cols) : 0);
    // one token over rows of whole chunks: the instance with activations one piece ahead (PX)
    constexpr bool CAN = NT == 1 && CVT == 0 && sgllm__cu_mvw_px(T);
    bool px = CAN && a.cols >= sgllm__cu_mvw_cv(T);
    // persistent grid: the resident blocks, then as few as give every warp the same number of row groups
    if (CAN && a.early == 2) { // ahead of a tensor-core attention: the largest carveout
        auto kern = px ? sgllm__cu_mvw_early_k<T, NR, CAN> : sgllm__cu_mvw_early_k<T, NR, false>;
        sgllm__cu_carveout_max(kern);
        int64_t cap = sgllm__cu_mvw_cap(c, kern, warps, smem, T);
        return sgllm__cu_launch(c, "matvec (wide, before tensor-core attention)", kern,
                                dim3((unsigned)sgllm__cu_mvw_blocks(groups, warps, cap)), dim3(32 * warps), smem, a, groups);
    }
    auto kern = px ? sgllm__cu_mvw_k<T, NT, NR, CVT, CAN> : sgllm__cu_mvw_k<T, NT, NR, CVT, false>;
    int64_t cap = sgllm__cu_mvw_cap(c, kern, warps, smem, CVT ? -1 : T);
    return sgllm__cu_launch(c, CVT ? "matvec (wide, short rows)" : "matvec (wide)", kern,
                            dim3((unsigned)sgllm__cu_mvw_blocks(groups, warps, cap)), dim3(32 * warps), smem, a, groups);
}

// Two products in one launch (sgllm__cu_mvw2_k, one token, pairs of rows): the resident
// blocks shared between them by their row groups, each part a persistent grid as above.
template <int T1, int T2>
static sgllm_status sgllm__cu_mvw2_go(sgllm__cuda *c, const sgllm__cu_mvd &a1, const sgllm__cu_mvd &a2) {
    int warps = sgllm__cu_mv_warps(c);
    int cs = sgllm__cu_mvw_cs(T1) > sgllm__cu_mvw_cs(T2) ? sgllm__cu_mvw_cs(T1) : sgllm__cu_mvw_cs(T2);
    size_t smem = (size_t)warps * 2 * cs;
    // as in sgllm__cu_mvw_go, by the first type (q and k; a Q6_K v is the smaller part)
    bool px = sgllm__cu_mvw_px(T1) && a1.cols >= sgllm__cu_mvw_cv(T1) && a1.cols >= sgllm__cu_mvw_cv(T2);
    bool big = a1.early == 2;
    auto kern = big ? (px ? sgllm__cu_mvw2_k<T1, T2, 1, true, true> : sgllm__cu_mvw2_k<T1, T2, 1, true, false>)
                    : (px ? sgllm__cu_mvw2_k<T1, T2, 1, false, true> : sgllm__cu_mvw2_k<T1, T2, 1, false, false>);
    int64_t cap = sgllm__cu_mvw_cap(c, kern, warps, smem, -1);
    int64_t g1 = a1.total_rows / 2, g2 = a2.total_rows / 2, cap1 = cap * g1 / (g1 + g2);
    cap1 = cap1 < 1 ? 1 : cap1 > cap - 1 ? cap - 1 : cap1;
    int64_t b1 = sgllm__cu_mvw_blocks(g1, warps, cap1), b2 = sgllm__cu_mvw_blocks(g2, warps, cap - cap1 > 0 ? cap - cap1 : 1);
    if (big) sgllm__cu_carveout_max(kern); // ahead of a tensor-core attention: the largest carveout, as sgllm__cu_mvw_early_k
    return sgllm__cu_launch(c, big ? "matvec (wide, two types, before tensor-core attention)" : "matvec (wide, two types)",
                            kern, dim3((unsigned)(b1 + b2)), dim3(32 * warps), smem, a1, g1, (unsigned)b1, a2, g2);
}

// The pairs of weight types one launch takes (same activation format; see sgllm__cu_mvw2_k).
// run = false only asks whether (t1, t2) is one.
static bool sgllm__cu_mvw2_pair(sgllm__cuda *c, uint32_t t1, uint32_t t2, const sgllm__cu_mvd *a1,
                                const sgllm__cu_mvd *a2, bool run, sgllm_status *s) {
#define SGLLM__MVW2(A, B)                                                                                               \
    if (t1 == A && t2 == B) {                                                                                           \
        if (run) *s = sgllm__cu_mvw2_go<A, B>(c, *a1, *a2);                                                             \
        return true;                                                                                                    \
    }
    SGLLM__MVW2(T_Q5_0, T_Q8_0) SGLLM__MVW2(T_Q4_0, T_Q8_0) SGLLM__MVW2(T_Q8_0, T_Q5_0) SGLLM__MVW2(T_Q4_K, T_Q6_K)
    SGLLM__MVW2(T_Q5_K, T_Q6_K)
#undef SGLLM__MVW2
    return false;
}

template <int NT, int NR>
static sgllm_status sgllm__cu_mvw_type(sgllm__cuda *c, uint32_t type, const sgllm__cu_mvd &a, int64_t groups) {
    switch (type) {
    case T_Q4_0: return sgllm__cu_mvw_go<T_Q4_0, NT, NR>(c, a, groups);
    case T_Q4_1: return sgllm__cu_mvw_go<T_Q4_1, NT, NR>(c, a, groups);
    case T_Q5_0: return sgllm__cu_mvw_go<T_Q5_0, NT, NR>(c, a, groups);
    case T_Q5_1: return sgllm__cu_mvw_go<T_Q5_1, NT, NR>(c, a, groups);
    case T_Q8_0: return sgllm__cu_mvw_go<T_Q8_0, NT, NR>(c, a, groups);
    case T_Q4_K: return sgllm__cu_mvw_go<T_Q4_K, NT, NR>(c, a, groups);
    case T_Q5_K: return sgllm__cu_mvw_go<T_Q5_K, NT, NR>(c, a, groups);
    case T_Q6_K: return sgllm__cu_mvw_go<T_Q6_K, NT, NR>(c, a, groups);
    default: return sgllm__cu_bad(c, "matvec (wide)", "weight type");
    }
}

// Runs a (fields as for the direct kernel, activations already quantized): two rows per warp
// where every segment has an even row count (gated pairs always), else one.
static sgllm_status sgllm__cu_mvw_run(sgllm__cuda *c, uint32_t type, const sgllm__cu_mvd &a) {
    bool pairs = a.act >= 0;
    if (!pairs) {
        pairs = true;
        for (int s = 0; s < a.n_seg; s++) pairs = pairs && a.rows[s] % 2 == 0;
    }
    int64_t groups = a.act >= 0 ? a.total_rows : pairs ? a.total_rows / 2 : a.total_rows;
    if (groups > (int64_t)INT32_MAX * MV_MAX_WARPS) return sgllm__cu_bad(c, "matvec", "too many rows");
    cudaSetDevice(c->device);
    // short rows of a large matrix, one token: four rows per warp (MVW_SHORT_CV above); small
    // ones are one memory round trip whatever the warp holds
    bool quads = a.act < 0 && a.nt == 1 && a.cols <= MVW_SHORT_CV && a.total_rows * a.row_bytes >= MVW_SHORT_MIN_BYTES &&
                 sgllm__cu_mvw_cb(type, MVW_SHORT_CV) % 16 == 0;
    for (int s = 0; s < a.n_seg; s++) quads = quads && a.rows[s] % MVW_SHORT_NR == 0;
    if (quads) {
        int64_t g4 = a.total_rows / MVW_SHORT_NR;
        switch (type) {
        case T_Q4_0: return sgllm__cu_mvw_go<T_Q4_0, 1, MVW_SHORT_NR, MVW_SHORT_CV>(c, a, g4);
        case T_Q4_1: return sgllm__cu_mvw_go<T_Q4_1, 1, MVW_SHORT_NR, MVW_SHORT_CV>(c, a, g4);
        case T_Q5_0: return sgllm__cu_mvw_go<T_Q5_0, 1, MVW_SHORT_NR, MVW_SHORT_CV>(c, a, g4);
        case T_Q5_1: return sgllm__cu_mvw_go<T_Q5_1, 1, MVW_SHORT_NR, MVW_SHORT_CV>(c, a, g4);
        case T_Q8_0: return sgllm__cu_mvw_go<T_Q8_0, 1, MVW_SHORT_NR, MVW_SHORT_CV>(c, a, g4);
        case T_Q4_K: return sgllm__cu_mvw_go<T_Q4_K, 1, MVW_SHORT_NR, MVW_SHORT_CV>(c, a, g4);
        case T_Q5_K: return sgllm__cu_mvw_go<T_Q5_K, 1, MVW_SHORT_NR, MVW_SHORT_CV>(c, a, g4);
        default: break; // Q6_K: 840-byte chunks of 1024 values are not whole 16-byte words
        }
    }
    if (pairs) {
        if (a.nt == 1) return sgllm__cu_mvw_type<1, 2>(c, type, a, groups);
        if (a.nt == 2) return sgllm__cu_mvw_type<2, 2>(c, type, a, groups);
        if (a.nt <= 4) return sgllm__cu_mvw_type<4, 2>(c, type, a, groups);
        return sgllm__cu_mvw_type<8, 2>(c, type, a, groups);
    }
    if (a.nt == 1) return sgllm__cu_mvw_type<1, 1>(c, type, a, groups);
    if (a.nt == 2) return sgllm__cu_mvw_type<2, 1>(c, type, a, groups);
    if (a.nt <= 4) return sgllm__cu_mvw_type<4, 1>(c, type, a, groups);
    return sgllm__cu_mvw_type<8, 1>(c, type, a, groups);
}

// --- 4c. Streamed matrix-vector ------------------------------------------------------------
// dispatch.matvec_stream_kb: one token against a large single matrix of a block-quantized type
// whose rows have at most MVS_MAX_COLS values, on sm90 and newer: those the wide kernel does not
// take (rows of whole 4-byte words, e.g. SmolLM2-135M's 49152 x 576 Q8_0 output matrix, 612-byte
// rows, which took the staged kernel), and those it takes whose rows have at most
// dispatch.matvec_stream_wide_cols values (Gemma 3's 640-value output rows on sm90).
// Each block keeps MVS_STAGES stages of about MVS_STAGE_BYTES in shared memory, filled by bulk
// copies (cp.async.bulk: one thread issues a stage's R whole rows as one contiguous range, an
// mbarrier per stage counts its bytes in), so an SM has tens of KB of weights in flight whatever
// the arithmetic costs (the staged kernel copies such rows 4 bytes a lane). Warp w takes rows w, w + MVS_WARPS, ... of a stage,
// MVS_NB of them at a time so that their decodes, dots and lane sums overlap (short rows are
// many rows a byte); lane l adds pieces l, l + 32, ... of a row in order and the warp sums the
// lanes in sgllm__cu_warp_sum's order, the staged and wide kernels' order, so every row is bit
// for bit theirs. Each lane keeps its pieces' activation codes in registers (XR pieces, loaded
// once after the PDL wait). A block takes row groups blockIdx.x, blockIdx.x + gridDim.x, ...
// (shape: sgllm__cu_mvs, declared before the entry points); its first stages are copied before
// the PDL wait (weights do not depend on the previous kernel), and a stage is refilled once
// every warp has passed the block barrier after it. Measured on the H100 (docs/PERF.md, twelfth
// session): SmolLM2's output matrix alone 28.5 -> 14.3 us, its file's generate 1734.6 -> 1778.1
// tok/s; Gemma 3's 262144 x 640 Q8_0 one alone 73.3 -> 69.4 us against the wide kernel's four
// rows a warp (thirteenth session: 73.4 -> 68.4 us alone, the synthetic Gemma step 477.9 -> 471.1
// us), while Llama-3-8B's 4096-value output rows, faster alone streamed (Q4_K 114.6 -> 107.4 us),
// were not in its decode steps: so the sm90 row streams the wide kernel's rows up to 1024 values.

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 // (the kernel's body is empty below sm90)
static __device__ inline void sgllm__cu_mbar_init(uint64_t *b, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"((unsigned)__cvta_generic_to_shared(b)), "r"(count)
                 : "memory");
}
// One arrival on b that also expects bytes of transactions (the bulk copy of the stage).
static __device__ inline void sgllm__cu_mbar_expect(uint64_t *b, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"((unsigned)__cvta_generic_to_shared(b)),
                 "r"(bytes)
                 : "memory");
}
static __device__ inline void sgllm__cu_mbar_wait(uint64_t *b, unsigned parity) {
    unsigned done;
    do {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"((unsigned)__cvta_generic_to_shared(b)), "r"(parity)
                     : "memory");
    } while (!done);
}
// bytes (a multiple of 16; both addresses 16-byte aligned) from global src to shared dst,
// counted on b when they land.
static __device__ inline void sgllm__cu_bulk_copy(void *dst, const void *src, unsigned bytes, uint64_t *b) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                     (unsigned)__cvta_generic_to_shared(dst)),
                 "l"(src), "r"(bytes), "r"((unsigned)__cvta_generic_to_shared(b))
                 : "memory");
}
#endif

template <int T, int XR>
static __global__ void __launch_bounds__(MVS_WARPS * 32) sgllm__cu_mvs_k(const sgllm__cu_mvs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) uint8_t mvs_smem[]; // MVS_STAGES slots
    __shared__ uint64_t full[MVS_STAGES];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int64_t n_groups = (a.rows + a.R - 1) / a.R;
    int64_t items = n_groups > blockIdx.x ? (n_groups - 1 - blockIdx.x) / gridDim.x + 1 : 0; // this block's groups
    // group k of this block: rows from (blockIdx.x + k gridDim.x) R, in slot k % MVS_STAGES
    auto issue = [&](int64_t k) {
        int64_t r0 = ((int64_t)blockIdx.x + k * gridDim.x) * a.R, nr = a.rows - r0 < a.R ? a.rows - r0 : a.R;
        uint64_t *bar = &full[k % MVS_STAGES];
        sgllm__cu_mbar_expect(bar, (unsigned)(nr * a.row_bytes));
        sgllm__cu_bulk_copy(mvs_smem + (size_t)(k % MVS_STAGES) * a.slot, a.w + r0 * a.row_bytes,
                            (unsigned)(nr * a.row_bytes), bar);
    };
    if (threadIdx.x == 0) {
        for (int s = 0; s < MVS_STAGES; s++) sgllm__cu_mbar_init(&full[s], 1);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        for (int64_t k = 0; k < items && k < MVS_STAGES; k++) issue(k);
    }
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    __syncthreads(); // the barriers are initialized
    int n_p = (int)(a.cols / 32);
    int xk[XR][8];
    float2 xa[XR];
#pragma unroll
    for (int j = 0; j < XR; j++)
        if (lane + 32 * j < n_p) xa[j] = sgllm__cu_piece_x(a.xq, a.xd, a.cols, 0, lane + 32 * j, xk[j]);
    for (int64_t k = 0; k < items; k++) {
        sgllm__cu_mbar_wait(&full[k % MVS_STAGES], (unsigned)(k / MVS_STAGES) & 1u);
        const uint8_t *st = mvs_smem + (size_t)(k % MVS_STAGES) * a.slot;
        int64_t r0 = ((int64_t)blockIdx.x + k * gridDim.x) * a.R;
        int nr = (int)(a.rows - r0 < a.R ? a.rows - r0 : a.R);
        for (int rb = warp; rb < nr; rb += MVS_NB * MVS_WARPS) { // rows rb + b MVS_WARPS, b < MVS_NB
            float s[MVS_NB];
#pragma unroll
            for (int b = 0; b < MVS_NB; b++) {
                s[b] = 0.0f;
                int r = rb + b * MVS_WARPS;
                if (r < nr) {
#pragma unroll
                    for (int j = 0; j < XR; j++)
                        if (lane + 32 * j < n_p) {
                            sgllm__cu_pw pw;
                            sgllm__cu_piece_w<T>(st + (size_t)r * a.row_bytes, lane + 32 * j, pw);
                            sgllm__cu_piece_dot<T>(pw, xk[j], xa[j], s[b]);
                        }
                }
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) // sgllm__cu_warp_sum's order, the rows interleaved
#pragma unroll
                for (int b = 0; b < MVS_NB; b++) s[b] += __shfl_xor_sync(0xffffffffu, s[b], o);
            if (lane == 0)
#pragma unroll
                for (int b = 0; b < MVS_NB; b++)
                    if (rb + b * MVS_WARPS < nr) a.y[r0 + rb + b * MVS_WARPS] = s[b];
        }
        __syncthreads(); // every warp is done with the slot
        if (threadIdx.x == 0 && k + MVS_STAGES < items) {
            asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); // the reads above before the copy's writes
            issue(k + MVS_STAGES);
        }
    }
#endif
}

// Whether the streamed kernel takes this product (one token; see dispatch.matvec_stream_kb),
// and its shape in *a (the weight and row fields): a block-quantized type, sm90 or newer, a
// 16-byte aligned matrix of at least matvec_stream_kb KiB, rows of at most MVS_MAX_COLS values
// and whole 4-byte words (as the staged kernel's), every stage's range (R rows, and the last
// group's) whole 16-byte units; what the wide kernel takes when it runs (matvec_int8 3) only
// where its rows have at most dispatch.matvec_stream_wide_cols values.
static bool sgllm__cu_mvs_ok(sgllm__cuda *c, uint32_t t, const void *w, int64_t rows, int64_t rb, int64_t cols,
                             const float *x, sgllm__cu_mvs *a) {
    if (!sgllm__cu_quantized(t, cols) || c->cc_major < 9 || c->disp.matvec_stream_kb <= 0 ||
        rows * rb < (int64_t)c->disp.matvec_stream_kb * 1024 || (uintptr_t)w % 16 || (uintptr_t)x % 16 || cols > MVS_MAX_COLS ||
        rb % 4)
        return false;
    // what the wide kernel takes stays there unless its rows are short enough (matvec_stream_wide_cols)
    if (c->disp.matvec_int8 == 3 && cols > c->disp.matvec_stream_wide_cols && sgllm__cu_mvw_ok(c, t, w, rb, cols, x))
        return false;
    int64_t per = MVS_STAGE_BYTES / (MVS_WARPS * rb);
    int R = MVS_WARPS * (int)(per < 1 ? 1 : per);
    if (R * rb % 16 || rows % R * rb % 16) return false;
    *a = {};
    a->w = (const uint8_t *)w, a->rows = rows, a->cols = cols, a->row_bytes = rb, a->R = R;
    a->slot = (int)((R * rb + 16 + 127) / 128 * 128);
    return true;
}

template <int T> static sgllm_status sgllm__cu_mvs_type(sgllm__cuda *c, const sgllm__cu_mvs &a) {
    int n_p = (int)(a.cols / 32);
    auto kern = n_p <= 32 ? sgllm__cu_mvs_k<T, 1> : n_p <= 64 ? sgllm__cu_mvs_k<T, 2> : sgllm__cu_mvs_k<T, 4>;
    size_t smem = (size_t)MVS_STAGES * (size_t)a.slot;
    if (smem > 48 * 1024) (void)cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    sgllm__cu_carveout_max(kern);
    int per_sm = sgllm__cu_occupancy(c, kern, MVS_WARPS * 32, smem, 1);
    int64_t groups = (a.rows + a.R - 1) / a.R,
            cap = (int64_t)(per_sm > 0 ? per_sm : 1) * (c->disp.sm_count > 0 ? c->disp.sm_count : 1);
    return sgllm__cu_launch(c, "matvec (stream)", kern, dim3((unsigned)(groups < cap ? groups : cap)), dim3(MVS_WARPS * 32),
                            smem, a);
}

static sgllm_status sgllm__cu_mvs_run(sgllm__cuda *c, uint32_t type, const sgllm__cu_mvs &a) {
    cudaSetDevice(c->device);
    switch (type) {
    case T_Q4_0: return sgllm__cu_mvs_type<T_Q4_0>(c, a);
    case T_Q4_1: return sgllm__cu_mvs_type<T_Q4_1>(c, a);
    case T_Q5_0: return sgllm__cu_mvs_type<T_Q5_0>(c, a);
    case T_Q5_1: return sgllm__cu_mvs_type<T_Q5_1>(c, a);
    case T_Q8_0: return sgllm__cu_mvs_type<T_Q8_0>(c, a);
    case T_Q4_K: return sgllm__cu_mvs_type<T_Q4_K>(c, a);
    case T_Q5_K: return sgllm__cu_mvs_type<T_Q5_K>(c, a);
    case T_Q6_K: return sgllm__cu_mvs_type<T_Q6_K>(c, a);
    default: return sgllm__cu_bad(c, "matvec (stream)", "weight type");
    }
}

// --- 5. Prefill GEMM -----------------------------------------------------------------------
// Large batches are compute-bound: the weight is dequantized into bf16 scratch (BF16 weights
// are used as they are), the activations converted to bf16, and cuBLAS multiplies with fp32
// accumulation and an fp32 result. Scratch layout: [x bf16 (n_tok, cols)][weights bf16 (rows, cols)],
// so the matrices of one input (q/k/v, gate/up) share one converted x, each weight reusing
// the same weight area in turn (one stream: each GEMM is done before the next dequantizes).

static __global__ void sgllm__cu_to_bf16_k(uint32_t type, const uint8_t *w, int64_t cols, int64_t row_bytes,
                                           int64_t n, __nv_bfloat16 *out) {
    sgllm__cu_pdl_wait(); // out may still be read by the GEMM before
    sgllm__cu_pdl_trigger();
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / cols, j = i % cols;
        out[i] = __float2bfloat16(sgllm__cu_dq_elem(type, w + r * row_bytes, j));
    }
}

static __device__ inline uint32_t sgllm__cu_pack_bf16(float a, float b) {
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *(uint32_t *)&h;
}

// Quantized weights, 8 values per thread: two sgllm__cu_dq4 calls (word loads, the block's
// natural alignment) and one 16-byte store; the four threads of a 32-value piece are
// neighbours, so stores coalesce. Byte-loading one value per thread made the dequantization
// cost about as much as the GEMM. n8 = rows * cols / 8; rows start at multiples of row_bytes
// from w (4-byte aligned), out is 16-byte aligned.
template <int T>
static __global__ void sgllm__cu_dq_bf16_k(const uint8_t *w, int64_t row_bytes, int64_t cols, int64_t n8,
                                           __nv_bfloat16 *out) {
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    int64_t per_row = cols / 8;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / per_row, j = i - r * per_row;
        float v[8];
        sgllm__cu_dq4<T>(w + r * row_bytes, j / 4, (int)(j % 4) * 2, v);
        sgllm__cu_dq4<T>(w + r * row_bytes, j / 4, (int)(j % 4) * 2 + 1, v + 4);
        uint4 o = make_uint4(sgllm__cu_pack_bf16(v[0], v[1]), sgllm__cu_pack_bf16(v[2], v[3]),
                             sgllm__cu_pack_bf16(v[4], v[5]), sgllm__cu_pack_bf16(v[6], v[7]));
        *(uint4 *)(out + 8 * i) = o;
    }
}

// fp32 activations to bf16, 4 per thread (16-byte loads, 8-byte stores); n4 = n / 4.
static __global__ void sgllm__cu_f32_bf16_k(const float4 *x, int64_t n4, uint2 *out) {
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4; i += (int64_t)gridDim.x * blockDim.x) {
        float4 v = x[i];
        out[i] = make_uint2(sgllm__cu_pack_bf16(v.x, v.y), sgllm__cu_pack_bf16(v.z, v.w));
    }
}

static int64_t sgllm__cu_align256(int64_t n) { return (n + 255) / 256 * 256; }

static unsigned sgllm__cu_grid(int64_t n) {
    int64_t b = (n + 255) / 256;
    return (unsigned)(b < 65536 * 4 ? b : 65536 * 4);
}

// out (rows, cols) bf16 = w of any type: the vector kernel where the layout allows it (quantized
// type, cols a multiple of 32, 4-byte aligned weights), else one value per thread.
static sgllm_status sgllm__cu_weight_bf16(sgllm__cuda *c, uint32_t type, const void *w, int64_t rows, int64_t cols,
                                          int64_t rb, __nv_bfloat16 *out) {
    int64_t n = rows * cols;
    bool vec = sgllm__cu_blk_vals(type) >= 32 && (uintptr_t)w % 4 == 0;
    if (!vec) {
        return sgllm__cu_launch(c, "gemm: weight to bf16", sgllm__cu_to_bf16_k, dim3(sgllm__cu_grid(n)), dim3(256), 0, type,
                                (const uint8_t *)w, cols, rb, n, out);
    }
    const uint8_t *wb = (const uint8_t *)w;
    dim3 g(sgllm__cu_grid(n / 8)), b(256);
    sgllm_status s;
    switch (type) {
    case T_Q4_0: s = sgllm__cu_launch(c, "gemm: weight to bf16", sgllm__cu_dq_bf16_k<T_Q4_0>, g, b, 0, wb, rb, cols, n / 8, out); break;
    case T_Q4_1: s = sgllm__cu_launch(c, "gemm: weight to bf16", sgllm__cu_dq_bf16_k<T_Q4_1>, g, b, 0, wb, rb, cols, n / 8, out); break;
    case T_Q5_0: s = sgllm__cu_launch(c, "gemm: weight to bf16", sgllm__cu_dq_bf16_k<T_Q5_0>, g, b, 0, wb, rb, cols, n / 8, out); break;
    case T_Q5_1: s = sgllm__cu_launch(c, "gemm: weight to bf16", sgllm__cu_dq_bf16_k<T_Q5_1>, g, b, 0, wb, rb, cols, n / 8, out); break;
    case T_Q8_0: s = sgllm__cu_launch(c, "gemm: weight to bf16", sgllm__cu_dq_bf16_k<T_Q8_0>, g, b, 0, wb, rb, cols, n / 8, out); break;
    case T_Q4_K: s = sgllm__cu_launch(c, "gemm: weight to bf16", sgllm__cu_dq_bf16_k<T_Q4_K>, g, b, 0, wb, rb, cols, n / 8, out); break;
    case T_Q5_K: s = sgllm__cu_launch(c, "gemm: weight to bf16", sgllm__cu_dq_bf16_k<T_Q5_K>, g, b, 0, wb, rb, cols, n / 8, out); break;
    default: s = sgllm__cu_launch(c, "gemm: weight to bf16", sgllm__cu_dq_bf16_k<T_Q6_K>, g, b, 0, wb, rb, cols, n / 8, out); break;
    }
    return s;
}

// out (n) bf16 = x (n) fp32.
static sgllm_status sgllm__cu_act_bf16(sgllm__cuda *c, const float *x, int64_t n, __nv_bfloat16 *out) {
    if (n % 4 || (uintptr_t)x % 16) {
        return sgllm__cu_launch(c, "gemm: activations to bf16", sgllm__cu_to_bf16_k, dim3(sgllm__cu_grid(n)), dim3(256), 0,
                                (uint32_t)T_F32, (const uint8_t *)x, n, n * 4, n, out);
    }
    return sgllm__cu_launch(c, "gemm: activations to bf16", sgllm__cu_f32_bf16_k, dim3(sgllm__cu_grid(n / 4)), dim3(256),
                            0, (const float4 *)x, n / 4, (uint2 *)out);
}

extern "C" size_t sgllm__cuda_gemm_scratch_bytes(uint32_t type, int64_t rows, int64_t cols, int64_t n_tok) {
    if (rows <= 0 || cols <= 0 || n_tok <= 0) return 0;
    int64_t wbytes = type == T_BF16 ? 0 : sgllm__cu_align256(rows * cols * 2);
    return (size_t)(wbytes + sgllm__cu_align256(n_tok * cols * 2));
}

static bool sgllm__cu_gemm_shape_ok(uint32_t type, const void *w, int64_t rows, int64_t cols, int64_t n_tok) {
    return w && rows > 0 && rows <= INT32_MAX && sgllm__cu_row_bytes(type, cols) && cols <= INT32_MAX && n_tok >= 0 &&
           n_tok <= INT32_MAX;
}

// y (n_tok, rows) of type yt (CUDA_R_32F or CUDA_R_16BF) = xb (n_tok, cols) bf16 . w^T, the
// weight dequantized into wscratch unless it is BF16. The caller has checked shapes and scratch.
static sgllm_status sgllm__cu_gemm_xb(sgllm__cuda *c, uint32_t type, const void *w, int64_t rows, int64_t cols,
                                      const void *xb, int64_t n_tok, void *y, cudaDataType yt, void *wscratch) {
    const void *wb = w;
    if (type != T_BF16) {
        sgllm_status s = sgllm__cu_weight_bf16(c, type, w, rows, cols, sgllm__cu_row_bytes(type, cols),
                                               (__nv_bfloat16 *)wscratch);
        if (s) return s;
        wb = wscratch;
    }
    // Row-major y(n_tok, rows) is column-major (rows, n_tok) = W^T-as-stored (cols, rows)^T . X (cols, n_tok)
    float one = 1.0f, zero = 0.0f;
    cublasStatus_t st = cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, (int)n_tok, (int)cols, &one, wb,
                                     CUDA_R_16BF, (int)cols, xb, CUDA_R_16BF, (int)cols, &zero, y, yt, (int)rows,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) return sgllm__cu_fail(c, SGLLM_ERR_BACKEND, "gemm: cublasGemmEx status %d", (int)st);
    return SGLLM_OK;
}

// Checks n matrices of one input against the scratch (x once, the largest weight) and converts
// x into its head; *wscratch receives the weight area.
static sgllm_status sgllm__cu_gemm_prep(sgllm__cuda *c, const char *op, int n, const uint32_t *types,
                                        const void *const *w, const int64_t *rows, int64_t cols, const float *x,
                                        int64_t n_tok, void **wscratch) {
    size_t need = 0;
    for (int k = 0; k < n; k++) {
        if (!sgllm__cu_gemm_shape_ok(types[k], w[k], rows[k], cols, n_tok) || !x)
            return sgllm__cu_bad(c, op, "bad pointer, weight type or shape");
        size_t b = sgllm__cuda_gemm_scratch_bytes(types[k], rows[k], cols, n_tok);
        need = need > b ? need : b;
    }
    if (need > c->scratch_bytes)
        return sgllm__cu_fail(c, SGLLM_ERR_OUT_OF_MEMORY, "%s: needs %zu bytes of scratch, %zu reserved", op, need,
                              c->scratch_bytes);
    if (!n_tok) return SGLLM_OK;
    cudaSetDevice(c->device);
    *wscratch = (uint8_t *)c->scratch + sgllm__cu_align256(n_tok * cols * 2);
    return sgllm__cu_act_bf16(c, x, n_tok * cols, (__nv_bfloat16 *)c->scratch);
}

extern "C" sgllm_status sgllm__cuda_gemm(sgllm__cuda *c, uint32_t type, const void *w, int64_t rows, int64_t cols,
                                         const float *x, int64_t n_tok, float *y) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    if (!y) return sgllm__cu_bad(c, "gemm", "bad pointer, weight type or shape");
    sgllm__cu_xq_forget(c, y);
    void *ws = NULL;
    sgllm_status s = sgllm__cu_gemm_prep(c, "gemm", 1, &type, &w, &rows, cols, x, n_tok, &ws);
    if (s || !n_tok) return s;
    return sgllm__cu_gemm_xb(c, type, w, rows, cols, c->scratch, n_tok, y, CUDA_R_32F, ws);
}

extern "C" sgllm_status sgllm__cuda_gemm_multi(sgllm__cuda *c, int n, const uint32_t *types, const void *const *w,
                                               const int64_t *rows, int64_t cols, const float *x, int64_t n_tok,
                                               float *const *y) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    if (n < 1 || n > 3 || !types || !w || !rows || !y) return sgllm__cu_bad(c, "gemm_multi", "bad matrix list");
    for (int k = 0; k < n; k++)
        if (!y[k]) return sgllm__cu_bad(c, "gemm_multi", "bad matrix list");
    for (int k = 0; k < n; k++) sgllm__cu_xq_forget(c, y[k]);
    void *ws = NULL;
    sgllm_status s = sgllm__cu_gemm_prep(c, "gemm_multi", n, types, w, rows, cols, x, n_tok, &ws);
    for (int k = 0; !s && n_tok && k < n; k++)
        s = sgllm__cu_gemm_xb(c, types[k], w[k], rows[k], cols, c->scratch, n_tok, y[k], CUDA_R_32F, ws);
    return s;
}

extern "C" sgllm_status sgllm__cuda_gemm_x16(sgllm__cuda *c, uint32_t type, const void *w, int64_t rows, int64_t cols,
                                             const void *xb, int64_t n_tok, float *y) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    if (!xb || !y || !sgllm__cu_gemm_shape_ok(type, w, rows, cols, n_tok))
        return sgllm__cu_bad(c, "gemm_x16", "bad pointer, weight type or shape");
    sgllm__cu_xq_forget(c, y);
    size_t need = type == T_BF16 ? 0 : (size_t)sgllm__cu_align256(rows * cols * 2);
    if (need > c->scratch_bytes)
        return sgllm__cu_fail(c, SGLLM_ERR_OUT_OF_MEMORY, "gemm_x16: needs %zu bytes of scratch, %zu reserved", need,
                              c->scratch_bytes);
    if (!n_tok) return SGLLM_OK;
    cudaSetDevice(c->device);
    return sgllm__cu_gemm_xb(c, type, w, rows, cols, xb, n_tok, y, CUDA_R_32F, c->scratch);
}

// y = act(g) * u over bf16 g, u, written as bf16; 8 values per thread (16-byte loads and
// stores) when vec, else one. The activation itself in fp32 (sgllm__cu_act).
static __global__ void sgllm__cu_gated_bf16_k(int act, const __nv_bfloat16 *g, const __nv_bfloat16 *u, int64_t n,
                                              int vec, __nv_bfloat16 *y) {
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    int64_t step = (int64_t)gridDim.x * blockDim.x, i0 = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (!vec) {
        for (int64_t i = i0; i < n; i += step)
            y[i] = __float2bfloat16(sgllm__cu_act(act, __bfloat162float(g[i])) * __bfloat162float(u[i]));
        return;
    }
    for (int64_t i = i0; i < n / 8; i += step) {
        uint4 gv = ((const uint4 *)g)[i], uv = ((const uint4 *)u)[i], o;
        const __nv_bfloat162 *g2 = (const __nv_bfloat162 *)&gv, *u2 = (const __nv_bfloat162 *)&uv;
        uint32_t *o32 = (uint32_t *)&o;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float2 gf = __bfloat1622float2(g2[e]), uf = __bfloat1622float2(u2[e]);
            o32[e] = sgllm__cu_pack_bf16(sgllm__cu_act(act, gf.x) * uf.x, sgllm__cu_act(act, gf.y) * uf.y);
        }
        ((uint4 *)y)[i] = o;
    }
}

extern "C" sgllm_status sgllm__cuda_gemm_gated(sgllm__cuda *c, int act, uint32_t gate_type, const void *w_gate,
                                               uint32_t up_type, const void *w_up, int64_t rows, int64_t cols,
                                               const float *x, int64_t n_tok, void *y, void *tmp) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    if (!y || !tmp || (act != SGLLM__CUDA_ACT_SILU && act != SGLLM__CUDA_ACT_GELU_TANH))
        return sgllm__cu_bad(c, "gemm_gated", "bad pointer, shape or activation");
    sgllm__cu_xq_forget(c, (const float *)y);
    const uint32_t types[2] = {gate_type, up_type};
    const void *w[2] = {w_gate, w_up};
    const int64_t rr[2] = {rows, rows};
    void *ws = NULL;
    sgllm_status s = sgllm__cu_gemm_prep(c, "gemm_gated", 2, types, w, rr, cols, x, n_tok, &ws);
    if (s || !n_tok) return s;
    int64_t n = n_tok * rows;
    __nv_bfloat16 *g = (__nv_bfloat16 *)tmp, *u = g + n;
    if ((s = sgllm__cu_gemm_xb(c, gate_type, w_gate, rows, cols, c->scratch, n_tok, g, CUDA_R_16BF, ws))) return s;
    if ((s = sgllm__cu_gemm_xb(c, up_type, w_up, rows, cols, c->scratch, n_tok, u, CUDA_R_16BF, ws))) return s;
    int vec = n % 8 == 0 && (uintptr_t)tmp % 16 == 0 && (uintptr_t)y % 16 == 0;
    return sgllm__cu_launch(c, "gemm_gated: activation", sgllm__cu_gated_bf16_k, dim3(sgllm__cu_grid(vec ? n / 8 : n)),
                            dim3(256), 0, act, (const __nv_bfloat16 *)g, (const __nv_bfloat16 *)u, n, vec,
                            (__nv_bfloat16 *)y);
}

extern "C" sgllm_status sgllm__cuda_matmul(sgllm__cuda *c, uint32_t type, const void *w, int64_t rows, int64_t cols,
                                           const float *x, int64_t n_tok, float *y) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    int max_batch = c->disp.matvec_max_batch < 1 ? 1 : c->disp.matvec_max_batch > 8 ? 8 : c->disp.matvec_max_batch;
    if (n_tok <= max_batch) return sgllm__cuda_matvec(c, type, w, rows, cols, x, n_tok, y);
    return sgllm__cuda_gemm(c, type, w, rows, cols, x, n_tok, y);
}

// --- 6. Decode attention -------------------------------------------------------------------
// Grid (n_splits, n_head_kv * head groups, n_q): a block takes up to HB query heads that share
// one KV head (GQA) and one split of its query's visible keys, and runs an online softmax over
// tiles of bn keys. The kernel is latency-bound (a split holds a few dozen keys), so each phase
// keeps many independent operations in flight: a tile's keys and values arrive together with
// cp.async (the next tile's while this one is used), scores take 8 lanes per key (a block
// scores 16 keys at once, three shuffles per head), and the values are summed by thread slices
// that each own 8 dims x HB heads for every KS-th key, added up once at the end. HB (1, 2, 4 or
// 8) is the smallest that covers the group, so registers follow the shape. Splits of
// dispatch.decode_mma keys or more with head dims 16k <= 256 run a tensor-core body instead
// (MMA at the kernel).
// With one split it writes the output directly; else each block writes its split's normalized
// output and log-sum-exp to the scratch, and the splits are merged weighted by
// exp(lse - max lse), in split order: by the last block of the head group to finish
// (dispatch.decode_merge 0: it counts arrivals on a per-group counter, which it returns to
// zero for the next launch), by a second kernel, grid (n_head, n_q) (decode_merge 1), or,
// on sm90+ with up to 16 splits, by the head group's split blocks launched as one thread block
// cluster, each merging a share that the others wrote into its shared memory (decode_merge 2; CL below).
// All three run the same weight function in split order, so their bits agree, and none
// depends on which block finishes last. Softmax and merge exponentials are __expf (ex2.approx:
// about 2^-22 relative, plus |x| ulps of the argument's scaling; the tests hold the attention
// to 1e-5 of a double-precision one): the accurate expf's longer code was on the latency
// chain. The kernels wait for their predecessors first (the query and the newest cache rows
// are theirs) and let their dependents launch right after; the single-token kernel that does
// qkv_post's work itself (POST below) starts its cache reads before that wait.

// Tensor-core helpers of both attention kernels (the tensor-core split kernel here, prefill in 6b).
static __device__ inline uint32_t sgllm__cu_smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

// ldmatrix x4 (plain and transposed) at a shared-memory byte address: a base register plus
// constant offsets in the unrolled loops, so no address registers per load.
static __device__ inline void sgllm__cu_ldsm4(uint32_t r[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

static __device__ inline void sgllm__cu_ldsm4_t(uint32_t r[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// c(16x8) += a(16x16, row) b(16x8, col), fp16 inputs, fp32 accumulators.
static __device__ inline void sgllm__cu_mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16 bytes global -> shared, or 16 zero bytes when !valid (src is then not read).
static __device__ inline void sgllm__cu_cp16z(__half *smem, const __half *src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sgllm__cu_smem_addr(smem)), "l"(src),
                 "r"(valid ? 16 : 0));
}

static __device__ inline uint32_t sgllm__cu_pack_h2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *(uint32_t *)&h;
}

// ATT_TILE: fp16 values of one key (and one value) tile; ATT_G: lanes per key when scoring;
// ATT_CH: 16-byte pieces of a key tile per thread.
enum {
    ATT_HB = 8, ATT_THREADS = 256, ATT_MAX_HD = 512, ATT_MV = 8, ATT_TILE = 8192, ATT_G = 8,
    ATT_CH = ATT_TILE / 8 / ATT_THREADS
};
static_assert(ATT_MAX_HD <= 16 * 32, "the fused kernel takes a head's values in one pass of sgllm__cu_lane16");

// The merge weights of hb heads: ws (hb, n_splits) gets each split's weight exp(lse - max lse)
// (0 for an empty split, sgllm__cu_attn_w) from its log-sum-exp in lse (hb, n_splits). A warp
// per head, lanes over the splits. The merge kernel and the last block's merge run it, the
// cluster merge makes the same weights in each thread with sgllm__cu_attn_w; each output then
// adds up its weights in split order (its own denominator, next to the numerator), so the three
// merges' bits agree.
static __device__ inline float sgllm__cu_attn_w(float lse, float mx) { return lse == -INFINITY ? 0.0f : __expf(lse - mx); }
static __device__ void sgllm__cu_attn_weights(const float *lse, float *ws, int hb, int32_t n_splits) {
    int tid = threadIdx.x, nth = blockDim.x;
    for (int h = tid / 32; h < hb; h += nth / 32) {
        const float *l = lse + h * n_splits;
        float *w = ws + h * n_splits, mx = -INFINITY;
        for (int32_t sp = tid % 32; sp < n_splits; sp += 32) mx = fmaxf(mx, l[sp]);
        mx = sgllm__cu_warp_max(mx);
        for (int32_t sp = tid % 32; sp < n_splits; sp += 32) w[sp] = sgllm__cu_attn_w(l[sp], mx);
    }
}

// Merges the n_splits partials of hb heads, rows row .. row + hb - 1 of (n_q * n_head), into
// out: split s weighs exp(lse_s - max lse) (0 for an empty split), summed in split order, so
// every caller gets the same bits. ws: (2 hb * n_splits) floats of shared memory. The
// partials come through L2 (ld.cg): other blocks of the same launch may have written them.
// Each thread holds up to ATT_MV outputs and loads 8 splits of each at once.
static __device__ void sgllm__cu_attn_merge(const float *part_o, const float *part_lse, int64_t row, int hb, int32_t hd,
                                            int32_t n_splits, float *ws, float *out) {
    int tid = threadIdx.x, nth = blockDim.x;
    float *ls = ws + hb * n_splits; // (hb, n_splits) the log-sum-exps
    for (int i = tid; i < hb * n_splits; i += nth) ls[i] = __ldcg(part_lse + row * n_splits + i);
    __syncthreads();
    sgllm__cu_attn_weights(ls, ws, hb, n_splits);
    __syncthreads();
    for (int e0 = 0; e0 < hb * hd; e0 += nth * ATT_MV) {
        float num[ATT_MV], den[ATT_MV];
        const float *src[ATT_MV], *wgt[ATT_MV];
        bool live[ATT_MV];
#pragma unroll
        for (int k = 0; k < ATT_MV; k++) {
            int e = e0 + tid + k * nth, h = min(e, hb * hd - 1) / hd;
            live[k] = e < hb * hd;
            num[k] = den[k] = 0.0f;
            src[k] = part_o + (row + h) * n_splits * hd + (e - h * hd);
            wgt[k] = ws + h * n_splits;
        }
#pragma unroll 8
        for (int32_t sp = 0; sp < n_splits; sp++)
#pragma unroll
            for (int k = 0; k < ATT_MV; k++)
                if (live[k]) {
                    num[k] += wgt[k][sp] * __ldcg(src[k] + (int64_t)sp * hd);
                    den[k] += wgt[k][sp];
                }
#pragma unroll
        for (int k = 0; k < ATT_MV; k++) {
            int e = e0 + tid + k * nth;
            if (live[k]) out[row * hd + e] = den[k] > 0 ? num[k] / den[k] : 0.0f;
        }
    }
}

// Starts the copy of keys [t0, t0 + nk) of one KV head, (nk, hd) each, into kt and vt as one
// cp.async group: the page-table reads first, all at once, then every 16-byte piece. (The
// fused kernel leaves the newest key out: its row is written from registers.)
static __device__ inline void sgllm__cu_attn_issue(const __half *kb, const __half *vb, int64_t kv_stride,
                                                   const int32_t *pt, int32_t shift, int32_t t0, int32_t nk, int words,
                                                   __half *kt, __half *vt) {
    int64_t rows[ATT_CH];
    int n = (int)threadIdx.x / words, w = (int)threadIdx.x % words; // piece i = n words + w, i += ATT_THREADS
    const int dn = ATT_THREADS / words, dw = ATT_THREADS % words;
#pragma unroll
    for (int j = 0; j < ATT_CH; j++) {
        rows[j] = n < nk ? sgllm__cu_page_row(pt, shift, t0 + n) * kv_stride + w * 8 : 0;
        n += dn, w += dw;
        if (w >= words) n++, w -= words;
    }
#pragma unroll
    for (int j = 0; j < ATT_CH; j++) {
        int i = (int)threadIdx.x + j * ATT_THREADS;
        if (i < nk * words) {
            sgllm__cu_cp_async(kt + i * 8, kb + rows[j], 16);
            sgllm__cu_cp_async(vt + i * 8, vb + rows[j], 16);
        }
    }
    sgllm__cu_cp_commit();
}

// The tensor-core variant (MMA below): mw warps walk the split's keys, ATT_MK at a time, each
// with its own two stages of (ATT_MK, hd + 8) fp16 keys and values (8 halves of padding per
// row, so ldmatrix rows fall on distinct banks): 8 warps up to head dim 128, 4 above (the most
// whose stages fit; 4 at head dim 128 left Llama-3-8B's 4096 keys 2 points slower on the
// H100). It takes head dims that are multiples of 16 up to ATT_MMA_HD.
enum { ATT_MK = 16, ATT_MMA_HD = 256 };
static __host__ __device__ inline int sgllm__cu_attn_mma_warps(int32_t hd) { return hd <= 128 ? 8 : 4; }

// The kernel's shape for a launch: keys per CUDA-core tile (dispatch.decode_block_n, or
// decode_block_n_wide above 128 dims; fewer for wide heads: a tile holds at most ATT_TILE
// fp16 values), query heads per block (the smallest of 1, 2, 4, 8 that covers the GQA group),
// and walking warps of the tensor-core body (0: the CUDA-core loop; it runs unless the
// dispatch says no or max_keys, when known, leaves every split shorter than decode_mma keys).
static int32_t sgllm__cu_attn_bn(const sgllm__cuda *c, int32_t hd) {
    int32_t want = hd > 128 && c->disp.decode_block_n_wide > 0 ? c->disp.decode_block_n_wide : c->disp.decode_block_n;
    int32_t bn = want < 8 ? 8 : want > 128 ? 128 : want;
    while (bn > 8 && bn * hd > ATT_TILE) bn /= 2;
    return bn;
}
// Query heads a block takes: the smallest of 1, 2, 4 and 8 that covers the GQA group; with
// dispatch.decode_group_split, halved while a launch of decode_max_splits splits (n_q queries,
// n_head_kv KV heads, head groups of that many heads) stays within the SM count: more blocks,
// each with a shorter chain (Gemma 3 270M: its one KV head's four query heads one a block).
static int sgllm__cu_attn_hb(const sgllm__cuda *c, int32_t group, int32_t n_head_kv, int64_t n_q) {
    int hb = group > 4 ? ATT_HB : group > 2 ? 4 : group > 1 ? 2 : 1;
    int64_t per_group = n_q * n_head_kv * (c->disp.decode_max_splits > 1 ? c->disp.decode_max_splits : 1);
    while (c->disp.decode_group_split && hb > 1 && per_group * ((group + hb / 2 - 1) / (hb / 2)) <= c->disp.sm_count)
        hb /= 2;
    return hb;
}

extern "C" int32_t sgllm__cuda_attn_heads_per_block(sgllm__cuda *c, int32_t n_head, int32_t n_head_kv, int64_t n_q) {
    if (!c || n_head <= 0 || n_head_kv <= 0 || n_head % n_head_kv || n_q < 1) return 0;
    return sgllm__cu_attn_hb(c, n_head / n_head_kv, n_head_kv, n_q);
}
static int sgllm__cu_attn_mw(const sgllm__cuda *c, int32_t hd, int32_t n_splits, int64_t max_keys) {
    bool short_splits = max_keys > 0 && (max_keys + n_splits - 1) / n_splits < c->disp.decode_mma;
    return c->disp.decode_mma > 0 && !short_splits && hd % 16 == 0 && hd <= ATT_MMA_HD ? sgllm__cu_attn_mma_warps(hd) : 0;
}

extern "C" int sgllm__cuda_attn_mma(const sgllm__cuda *c, int32_t head_dim, int32_t n_splits, int64_t max_keys) {
    return c && n_splits >= 1 && sgllm__cu_attn_mw(c, head_dim, n_splits, max_keys) > 0;
}

// Bytes of one walking warp's two stages.
static __host__ __device__ inline size_t sgllm__cu_attn_mma_stages(int32_t hd) {
    return (size_t)2 * 2 * ATT_MK * (hd + 8) * 2;
}

// MMA: starts the copy of one warp's step, keys [t0, t0 + nk) (nk <= ATT_MK) of one KV head,
// into st (keys, then values, ATT_MK rows of hd + 8 halves each) as one cp.async group. Rows
// past nk become zeros (a value row of garbage times a zero probability could be NaN); the
// row of key skip (the fused kernel's newest) is left to the caller. Each lane looks up one
// key's page row; the warp shares them by shuffles.
static __device__ inline void sgllm__cu_attn_mma_issue(const __half *kb, const __half *vb, int64_t kv_stride,
                                                       const int32_t *pt, int32_t shift, int32_t t0, int32_t nk,
                                                       int32_t skip, int32_t hd, __half *st) {
    int lane = (int)threadIdx.x % 32, words = hd / 8, rs = hd + 8;
    long long mine = lane < nk ? (long long)(sgllm__cu_page_row(pt, shift, t0 + lane) * kv_stride) : 0;
    int n = lane / words, w = lane % words; // piece i = n words + w, i += 32
    const int dn = 32 / words, dw = 32 % words;
    for (int i = lane; i < ATT_MK * words; i += 32) { // the same trip count in every lane (words is even)
        long long r = __shfl_sync(0xffffffffu, mine, n);
        bool ok = n < nk && t0 + n != skip;
        sgllm__cu_cp16z(st + n * rs + w * 8, ok ? kb + r + w * 8 : kb, ok);
        sgllm__cu_cp16z(st + (ATT_MK + n) * rs + w * 8, ok ? vb + r + w * 8 : vb, ok);
        n += dn, w += dw;
        if (w >= words) n++, w -= words;
    }
    sgllm__cu_cp_commit();
}

// The transpose of an 8x8 fp16 matrix held as an mma fragment (each lane two values of a row).
static __device__ inline uint32_t sgllm__cu_movt(uint32_t x) {
    uint32_t y;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
    return y;
}

// x as an fp16 pair and the pair of what that rounding left out (hi + lo carries x to about
// 2^-22 relative: the tensor-core products then lose nothing against fp32 arithmetic).
static __device__ inline void sgllm__cu_split_h2(float a, float b, uint32_t &hi, uint32_t &lo) {
    __half2 h = __floats2half2_rn(a, b);
    float2 f = __half22float2(h);
    hi = *(uint32_t *)&h;
    lo = sgllm__cu_pack_h2(a - f.x, b - f.y);
}

// Shared memory of the split kernel: a union region (two stages of key and value tiles; then
// the value slices' partial sums; then an in-kernel merge's weights), the scaled queries
// (HB, hd), the tile's scores (HB, bn) and three (HB) softmax statistics. With MMA the tiles
// are the walking warps' stages, followed by the queries as mma fragments (hd / 16 x 32 lanes
// x 16 bytes) and each walking warp's (HB) softmax maximum and sum.
static __host__ __device__ inline size_t sgllm__cu_attn_mma_qf(int32_t hd, int mw) {
    return (size_t)mw * sgllm__cu_attn_mma_stages(hd);
}
// mw: the tensor-core kernel's walking warps (0: the CUDA-core loop).
static size_t sgllm__cu_attn_region(int hb_t, int32_t hd, int32_t bn, int32_t n_splits, bool merge_here, int mw) {
    size_t tiles = (size_t)4 * bn * hd * 2, red = (size_t)(ATT_THREADS / (hd / 8)) * hb_t * hd * 4;
    if (mw) {
        tiles = sgllm__cu_attn_mma_qf(hd, mw) + (size_t)hd * 32 + (size_t)2 * mw * hb_t * 4;
        red = (size_t)mw * hb_t * hd * 4;
    }
    size_t ws = merge_here ? (size_t)2 * hb_t * n_splits * 4 : 0, r = tiles > red ? tiles : red;
    r = r > ws ? r : ws;
    return (r + 15) / 16 * 16;
}

// Shared memory after the softmax statistics in the fused kernel (POST): the new key and value
// as fp16 (hd each), the key's float row (hd) and the RoPE angles (n_rot / 2 float2).
static __host__ __device__ inline size_t sgllm__cu_attn_post_off(int hb_t, int32_t hd, int32_t bn, size_t region) {
    return (region + (size_t)hb_t * hd * 4 + (size_t)hb_t * bn * 4 + (size_t)3 * hb_t * 4 + 15) / 16 * 16;
}
static __host__ __device__ inline size_t sgllm__cu_attn_post_bytes(int32_t hd, int32_t n_rot) {
    return (size_t)hd * 8 + (size_t)(n_rot / 2) * 8;
}

// The cluster merge (CL): each block merges a share of the head group's hb * hd outputs, cut on
// whole blocks of the o projection's activation format when it quantizes them (bv 32 or 256),
// else on 8 values; its inbox (after everything else in shared memory) receives every split's
// values of that share and every split's log-sum-exps, (n_splits, share) then (n_splits, HB).
static __host__ __device__ inline int32_t sgllm__cu_attn_share(int32_t total, int32_t n_splits, int xq_kind) {
    int32_t bv = xq_kind < 0 ? 8 : xq_kind == XQ_Q8_K ? 256 : 32;
    return ((total + n_splits - 1) / n_splits + bv - 1) / bv * bv;
}
static __host__ __device__ inline size_t sgllm__cu_attn_inbox_off(int hb_t, int32_t hd, int32_t bn, size_t region,
                                                                  bool post, int32_t n_rot) {
    size_t end = post ? sgllm__cu_attn_post_off(hb_t, hd, bn, region) + sgllm__cu_attn_post_bytes(hd, n_rot)
                      : region + (size_t)hb_t * hd * 4 + (size_t)hb_t * bn * 4 + (size_t)3 * hb_t * 4;
    return (end + 15) / 16 * 16;
}

// POST (sgllm__cuda_attn_decode_post, one query): q, k and v are the raw projections and the
// kernel does qkv_post's work itself: each block takes its own heads' bias, norm and RoPE (the
// same functions as sgllm__cu_qkv_post_k, so the same bits), the block whose split holds the
// newest key makes that key and value, puts them into its last tile (their cache row is not
// read) and, for the first head group, into the cache. Since no key the kernel reads is then
// its predecessor's output, the first tile's copy and the RoPE angles start before the PDL wait.
// MMA: scores and value sums on the tensor cores instead of the loop
// over key tiles above (the instances with MMA true, launched when the host's sgllm__cu_attn_mw
// gives mw > 0; the others hold only the loop). mw warps each walk every
// mw-th step of ATT_MK keys of the split
// with their own two-stage cp.async pipeline, so no block barrier is needed until the end;
// each computes S^T = K Q^T (keys x heads, one m16n8k16 per 16 dims) and O^T += V^T P^T (dims x
// heads) with its own online softmax, then the warps' states are combined once. The queries and
// probabilities enter the fp16 products as a rounded part and the part the rounding lost (two
// products each; the cache's keys and values are fp16 already), so the arithmetic is as exact
// as the fp32 loop's, not that of one fp16 rounding. The probabilities become the B operand by
// transposing their accumulator fragments in registers (movmatrix).
template <int HB, bool POST, bool CL, bool MMA>
static __global__ void __launch_bounds__(ATT_THREADS)
    sgllm__cu_attn_split_k(const float *q, const __half *kc, const __half *vc, const int32_t *pt, int32_t page_shift,
                           int32_t n_head, int32_t n_head_kv, int32_t hd, const int32_t *pos, int32_t window, float scale,
                           int32_t n_splits, int32_t bn, int32_t region, float *part_o, float *part_lse, float *out,
                           unsigned *cnt, int32_t q0, const sgllm__cuda_qkv_post_args post, int8_t *xq_q,
                           float2 *xq_d, int xq_kind, int mw) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // CL: this block has started (other blocks write into its shared memory only after every
    // block of the cluster arrived here; they wait for that just before, so it costs nothing)
    if (CL) asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
#endif
    SGLLM__PH_BEGIN(); // profiling build only: the phase stamps (section 1)
    if (!POST) {
        sgllm__cu_pdl_wait();
        SGLLM__PH(1);
        sgllm__cu_pdl_trigger();
    }
    extern __shared__ __align__(16) uint8_t sm[];
    int32_t group = n_head / n_head_kv, n_hgroups = (group + HB - 1) / HB;
    int32_t kvh = (int32_t)blockIdx.y / n_hgroups, h0 = kvh * group + ((int32_t)blockIdx.y % n_hgroups) * HB;
    int32_t hb = min(HB, kvh * group + group - h0); // heads of this block
    int64_t qi = q0 + (int64_t)blockIdx.z;
    int32_t split = (int32_t)blockIdx.x;
    __half *tiles = (__half *)sm;              // stage s: keys at 2 s bn hd, values at (2 s + 1) bn hd
    float *red = (float *)sm;                  // after the tiles: (KS, HB, hd) value sums per slice
    float *qs = (float *)(sm + region);        // (HB, hd) queries times scale
    float *ps = qs + HB * hd;                  // (HB, bn) scores, then probabilities
    float *ms = ps + HB * bn, *ls = ms + HB, *as = ls + HB; // (HB) running max, sum, rescale factor
    int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    int words = hd / 8, ks = ATT_THREADS / words; // 16-byte pieces per row; value slices
    int vc_piece = tid % words, slice = tid / words;

    int32_t p_hi = pos[qi], p_lo = window > 0 ? max(0, p_hi - window + 1) : 0;
    int32_t len = p_hi - p_lo + 1, per = (len + n_splits - 1) / n_splits;
    per = (per + 15) / 16 * 16; // whole 16-key steps: up to 32 splits of 512 keys (as decode_min_keys allows)
    int32_t k0 = p_lo + split * per, k1 = min(p_hi + 1, k0 + per); // this split's keys [k0, k1)
    int32_t n_tiles = MMA ? 0 : k1 > k0 ? (k1 - k0 + bn - 1) / bn : 0;
    int32_t n_steps = MMA && k1 > k0 ? (k1 - k0 + ATT_MK - 1) / ATT_MK : 0; // MMA: steps of ATT_MK keys

    int64_t kv_stride = (int64_t)n_head_kv * hd;
    const __half *kb = kc + (int64_t)kvh * hd, *vb = vc + (int64_t)kvh * hd;
    int32_t stage = bn * hd;
    // POST: the split that holds the newest key (p_hi) reads its row from kn / vn, not the cache
    bool has_new = POST && k0 <= p_hi && p_hi < k1;
    auto copied = [&](int32_t t0, int32_t nk) { return has_new && t0 + nk - 1 == p_hi ? nk - 1 : nk; };
    if (n_tiles > 0) {
        int32_t nk = min(bn, k1 - k0);
        sgllm__cu_attn_issue(kb, vb, kv_stride, pt, page_shift, k0, copied(k0, nk), words, tiles, tiles + stage);
    }
    // MMA: this warp's stages, and the key its copies leave out (the newest, made below)
    const int32_t mrs = hd + 8, skip = has_new ? p_hi : -1;
    __half *wst = tiles + (size_t)warp * (sgllm__cu_attn_mma_stages(hd) / 2);
    if (MMA && warp < mw && warp < n_steps) {
        int32_t t0 = k0 + warp * ATT_MK;
        sgllm__cu_attn_mma_issue(kb, vb, kv_stride, pt, page_shift, t0, min(ATT_MK, k1 - t0), skip, hd, wst);
    }
    __half *kn = NULL, *vn = NULL;
    if (POST) {
        uint8_t *pb = sm + sgllm__cu_attn_post_off(HB, hd, bn, (size_t)region);
        kn = (__half *)pb, vn = kn + hd;
        float *kf = (float *)(vn + hd);
        float2 *rot = (float2 *)(kf + hd);
        float fp = (float)p_hi * post.pos_scale;
        for (int32_t i = tid; i < post.n_rot / 2; i += ATT_THREADS) rot[i] = sgllm__cu_rope_cs(i, post.n_rot, fp, post.theta_base);
        // the heads' biases and norm weights are nobody's output: on their way to L2 before the
        // wait, so that the epilogue below does not wait for DRAM after it
        const float *pf[5] = {post.bq ? post.bq + (int64_t)h0 * hd : NULL, post.bk ? post.bk + (int64_t)kvh * hd : NULL,
                              post.bv ? post.bv + (int64_t)kvh * hd : NULL, post.qk_norm ? post.q_w : NULL,
                              post.qk_norm ? post.k_w : NULL};
#pragma unroll
        for (int j = 0; j < 5; j++)
            for (int32_t i = tid * 32; pf[j] && i < (j ? hd : hb * hd); i += ATT_THREADS * 32) sgllm__cu_prefetch_l2(pf[j] + i);
        sgllm__cu_pdl_wait();
        SGLLM__PH(1);
        sgllm__cu_pdl_trigger();
        __syncthreads(); // the angles
        // warp j < hb: query head h0 + j into qs; warp hb: the new key and value
        for (int j = warp; j < hb + (has_new ? 1 : 0); j += ATT_THREADS / 32) {
            bool is_q = j < hb;
            int32_t h = is_q ? h0 + j : kvh;
            float *sr = is_q ? qs + j * hd : kf;
            sgllm__cu_head_post(is_q ? post.q + (int64_t)h * hd : post.k + (int64_t)h * hd,
                                is_q ? (post.bq ? post.bq + (int64_t)h * hd : NULL) : (post.bk ? post.bk + (int64_t)h * hd : NULL),
                                post.qk_norm, is_q ? post.q_w : post.k_w, post.eps, hd, sr);
            for (int32_t i = lane; i < post.n_rot / 2; i += 32) sgllm__cu_rope_rot(sr, i, post.n_rot, rot[i], post.neox);
            __syncwarp();
            if (is_q) {
                for (int i = lane; i < hd; i += 32) sr[i] *= scale;
                continue;
            }
            const float *vs = post.v + (int64_t)h * hd, *bv = post.bv ? post.bv + (int64_t)h * hd : NULL;
            bool write = (int32_t)blockIdx.y % n_hgroups == 0; // one block writes the cache rows
            int64_t crow = write ? sgllm__cu_page_row(pt, page_shift, p_hi) * kv_stride + (int64_t)h * hd : 0;
            float v[16]; // hd <= ATT_MAX_HD = 512: one pass
            sgllm__cu_lane16_add(vs, bv, 0, hd, v);
#pragma unroll
            for (int k = 0; k < 16; k++) {
                int i = k * 32 + lane;
                if (i >= hd) break;
                kn[i] = __float2half_rn(sr[i]);
                vn[i] = __float2half_rn(v[k]);
                if (write) {
                    post.k_cache[crow + i] = __half_as_ushort(kn[i]);
                    post.v_cache[crow + i] = __half_as_ushort(vn[i]);
                }
            }
        }
        __syncthreads(); // kn / vn before the tile that holds them is completed
        SGLLM__PH(2);
    } else {
        const float4 *q4 = (const float4 *)(q + qi * n_head * hd + (int64_t)h0 * hd);
        for (int i = tid; i < hb * hd / 4; i += ATT_THREADS) {
            float4 v = q4[i];
            ((float4 *)qs)[i] = make_float4(v.x * scale, v.y * scale, v.z * scale, v.w * scale);
        }
    }
    if (MMA && n_steps > 0) { // MMA (its own end: the combined state in red, ms and ls)
        __syncthreads(); // the queries
        uint4 *qf = (uint4 *)(sm + sgllm__cu_attn_mma_qf(hd, mw)); // (hd / 16, 32): lane's B fragments, hi then lo
        float *wm = (float *)(qf + hd * 2), *wl = wm + mw * HB; // (mw, HB) per-warp max, sum
        const int kst = hd / 16, g = lane / 4, t4 = lane % 4;
        for (int i = tid; i < kst * 32; i += ATT_THREADS) {
            int ln = i % 32, hq = ln / 4, d = (i / 32) * 16 + (ln % 4) * 2;
            const float *qr = qs + (hq < hb ? hq : 0) * hd + d;
            bool real = hq < hb;
            uint4 f;
            sgllm__cu_split_h2(real ? qr[0] : 0.0f, real ? qr[1] : 0.0f, f.x, f.z);
            sgllm__cu_split_h2(real ? qr[8] : 0.0f, real ? qr[9] : 0.0f, f.y, f.w);
            qf[i] = f;
        }
        __syncthreads();
        float o[ATT_MMA_HD / 16][4];
#pragma unroll
        for (int mt = 0; mt < ATT_MMA_HD / 16; mt++) o[mt][0] = o[mt][1] = o[mt][2] = o[mt][3] = 0.0f;
        // the lane's heads 2 t4 and 2 t4 + 1: running max (the same in the 8 lanes of a t4) and
        // the sum of its own keys' probabilities (added across lanes at the end)
        float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
        int it = 0;
        for (int32_t st = warp; warp < mw && st < n_steps; st += mw, it++) {
            int32_t t0 = k0 + st * ATT_MK, nk = min(ATT_MK, k1 - t0);
            __half *cur = wst + (size_t)(it & 1) * 2 * ATT_MK * mrs;
            if (st + mw < n_steps) {
                int32_t t1 = t0 + mw * ATT_MK;
                sgllm__cu_attn_mma_issue(kb, vb, kv_stride, pt, page_shift, t1, min(ATT_MK, k1 - t1), skip, hd,
                                         wst + (size_t)((it + 1) & 1) * 2 * ATT_MK * mrs);
                sgllm__cu_cp_wait<1>();
            } else {
                sgllm__cu_cp_wait<0>();
            }
            __syncwarp();
            if (skip >= t0 && skip < t0 + nk) { // the newest key's row, made above (a block barrier since)
                for (int i = lane; i < hd / 8; i += 32) {
                    ((uint4 *)(cur + (skip - t0) * mrs))[i] = ((const uint4 *)kn)[i];
                    ((uint4 *)(cur + (ATT_MK + skip - t0) * mrs))[i] = ((const uint4 *)vn)[i];
                }
                __syncwarp();
            }
            // S^T (keys x heads): the lane holds keys g and g + 8 of heads 2 t4, 2 t4 + 1
            float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            uint32_t ka = sgllm__cu_smem_addr(cur + ((lane & 7) + ((lane >> 3) & 1) * 8) * mrs + (lane >> 4) * 8);
#pragma unroll
            for (int k = 0; k < ATT_MMA_HD / 16; k++)
                if (k < kst) {
                    uint32_t a[4];
                    sgllm__cu_ldsm4(a, ka + k * 32);
                    uint4 qv = qf[k * 32 + lane];
                    sgllm__cu_mma16816(s, a, qv.x, qv.y);
                    sgllm__cu_mma16816(s, a, qv.z, qv.w);
                }
            if (g >= nk) s[0] = s[1] = -INFINITY;
            if (g + 8 >= nk) s[2] = s[3] = -INFINITY;
            float x0 = fmaxf(s[0], s[2]), x1 = fmaxf(s[1], s[3]);
#pragma unroll
            for (int sh = 4; sh < 32; sh *= 2) {
                x0 = fmaxf(x0, __shfl_xor_sync(0xffffffffu, x0, sh));
                x1 = fmaxf(x1, __shfl_xor_sync(0xffffffffu, x1, sh));
            }
            x0 = fmaxf(x0, m0), x1 = fmaxf(x1, m1); // finite: key t0 is visible
            float a0 = __expf(m0 - x0), a1 = __expf(m1 - x1); // 0 on the first step
            m0 = x0, m1 = x1;
            float p0 = __expf(s[0] - x0), p1 = __expf(s[1] - x1), p2 = __expf(s[2] - x0), p3 = __expf(s[3] - x1);
            l0 = l0 * a0 + p0 + p2;
            l1 = l1 * a1 + p1 + p3;
            // P^T as the B operand (keys x heads): each 8-key half transposed, hi and lo parts
            uint32_t h01, l01, h23, l23;
            sgllm__cu_split_h2(p0, p1, h01, l01);
            sgllm__cu_split_h2(p2, p3, h23, l23);
            uint32_t bh0 = sgllm__cu_movt(h01), bh1 = sgllm__cu_movt(h23), bl0 = sgllm__cu_movt(l01),
                     bl1 = sgllm__cu_movt(l23);
            // O^T (dims x heads) += V^T P^T: the lane holds dims g, g + 8 of each 16 for heads 2 t4, 2 t4 + 1
            uint32_t va = sgllm__cu_smem_addr(cur + (ATT_MK + (lane & 7) + (lane >> 4) * 8) * mrs + ((lane >> 3) & 1) * 8);
#pragma unroll
            for (int mt = 0; mt < ATT_MMA_HD / 16; mt++)
                if (mt < kst) {
                    o[mt][0] *= a0, o[mt][1] *= a1, o[mt][2] *= a0, o[mt][3] *= a1;
                    uint32_t a[4];
                    sgllm__cu_ldsm4_t(a, va + mt * 32);
                    sgllm__cu_mma16816(o[mt], a, bh0, bh1);
                    sgllm__cu_mma16816(o[mt], a, bl0, bl1);
                }
            __syncwarp(); // this stage is refilled two steps on
        }
#pragma unroll
        for (int sh = 4; sh < 32; sh *= 2) {
            l0 += __shfl_xor_sync(0xffffffffu, l0, sh);
            l1 += __shfl_xor_sync(0xffffffffu, l1, sh);
        }
        int hA = 2 * t4, hB = hA + 1;
        if (warp < mw && g == 0) {
            if (hA < hb) wm[warp * HB + hA] = m0, wl[warp * HB + hA] = l0;
            if (hB < hb) wm[warp * HB + hB] = m1, wl[warp * HB + hB] = l1;
        }
        __syncthreads(); // every warp's state (and every stage consumed: red overwrites them)
        SGLLM__PH(15);
        // warp w's share of head h weighs exp(m_w - max) (0 for a warp without keys); the
        // value slices of the end below are the mw warps
        if (warp < mw) {
            float MA = -INFINITY, MB = -INFINITY;
            for (int w = 0; w < mw; w++) {
                if (hA < hb) MA = fmaxf(MA, wm[w * HB + hA]);
                if (hB < hb) MB = fmaxf(MB, wm[w * HB + hB]);
            }
            float fA = m0 == -INFINITY ? 0.0f : __expf(m0 - MA), fB = m1 == -INFINITY ? 0.0f : __expf(m1 - MB);
#pragma unroll
            for (int mt = 0; mt < ATT_MMA_HD / 16; mt++)
                if (mt < kst) {
                    float *rA = red + ((int64_t)warp * HB + hA) * hd + mt * 16 + g, *rB = rA + hd;
                    if (hA < hb) rA[0] = o[mt][0] * fA, rA[8] = o[mt][2] * fA;
                    if (hB < hb) rB[0] = o[mt][1] * fB, rB[8] = o[mt][3] * fB;
                }
        }
        if (tid < hb) {
            float M = -INFINITY, L = 0.0f;
            for (int w = 0; w < mw; w++) M = fmaxf(M, wm[w * HB + tid]);
            for (int w = 0; w < mw; w++)
                if (wm[w * HB + tid] != -INFINITY) L += wl[w * HB + tid] * __expf(wm[w * HB + tid] - M);
            ms[tid] = M;
            ls[tid] = L;
        }
    } else if (tid < HB) {
        ms[tid] = -INFINITY;
        ls[tid] = 0.0f;
    }
    float acc[HB][8];
#pragma unroll
    for (int h = 0; h < HB; h++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[h][j] = 0.0f;
    for (int32_t t = 0; t < n_tiles; t++) {
        int32_t t0 = k0 + t * bn, nk = min(bn, k1 - t0);
        if (t + 1 < n_tiles) {
            __half *nt = tiles + (size_t)((t + 1) & 1) * 2 * stage;
            int32_t nk1 = min(bn, k1 - t0 - bn);
            sgllm__cu_attn_issue(kb, vb, kv_stride, pt, page_shift, t0 + bn, copied(t0 + bn, nk1), words, nt, nt + stage);
            sgllm__cu_cp_wait<1>();
        } else {
            sgllm__cu_cp_wait<0>();
        }
        if (t == 0) SGLLM__PH(3);
        if (POST && copied(t0, nk) < nk) { // the newest key's row, made above (kn / vn ready: a barrier since)
            __half *kr = tiles + (size_t)(t & 1) * 2 * stage + (size_t)(nk - 1) * hd;
            for (int i = tid; i < hd / 8; i += ATT_THREADS) {
                ((uint4 *)kr)[i] = ((const uint4 *)kn)[i];
                ((uint4 *)(kr + stage))[i] = ((const uint4 *)vn)[i];
            }
        }
        __syncthreads(); // this tile (and the queries) visible to every thread
        if (t == 0) SGLLM__PH(4);
        const __half *kt = tiles + (size_t)(t & 1) * 2 * stage, *vt = kt + stage;
        // scores: 8 lanes per key, each lane a 16-byte piece of the row in turn; whole warps go
        // round the loop together for the shuffles
        for (int n0 = 0; n0 < nk; n0 += ATT_THREADS / ATT_G) {
            int n = n0 + tid / ATT_G;
            float s[HB];
#pragma unroll
            for (int h = 0; h < HB; h++) s[h] = 0.0f;
            for (int w = tid % ATT_G; n < nk && w < words; w += ATT_G) {
                uint4 raw = ((const uint4 *)(kt + n * hd))[w];
                const __half2 *k2 = (const __half2 *)&raw;
                float2 ka = __half22float2(k2[0]), kb2 = __half22float2(k2[1]), kc2 = __half22float2(k2[2]),
                       kd = __half22float2(k2[3]);
#pragma unroll
                for (int h = 0; h < HB; h++)
                    if (h < hb) {
                        float4 qa = ((const float4 *)(qs + h * hd))[2 * w], qb = ((const float4 *)(qs + h * hd))[2 * w + 1];
                        s[h] += qa.x * ka.x + qa.y * ka.y + qa.z * kb2.x + qa.w * kb2.y + qb.x * kc2.x + qb.y * kc2.y +
                                qb.z * kd.x + qb.w * kd.y;
                    }
            }
#pragma unroll
            for (int h = 0; h < HB; h++)
#pragma unroll
                for (int o = ATT_G / 2; o > 0; o /= 2) s[h] += __shfl_xor_sync(0xffffffffu, s[h], o);
            if (tid % ATT_G == 0 && n < nk)
#pragma unroll
                for (int h = 0; h < HB; h++)
                    if (h < hb) ps[h * bn + n] = s[h];
        }
        __syncthreads();
        if (t == 0) SGLLM__PH(5);
        for (int h = warp; h < hb; h += ATT_THREADS / 32) {
            float mx = -INFINITY;
            for (int n = lane; n < nk; n += 32) mx = fmaxf(mx, ps[h * bn + n]);
            mx = fmaxf(sgllm__cu_warp_max(mx), ms[h]);
            float sum = 0.0f;
            for (int n = lane; n < nk; n += 32) {
                float e = __expf(ps[h * bn + n] - mx);
                ps[h * bn + n] = e;
                sum += e;
            }
            sum = sgllm__cu_warp_sum(sum);
            __syncwarp();
            if (lane == 0) {
                float a = __expf(ms[h] - mx); // 0 on the first tile (ms = -inf)
                as[h] = a;
                ls[h] = ls[h] * a + sum;
                ms[h] = mx;
            }
        }
        __syncthreads();
        if (t == 0) SGLLM__PH(6);
        // values: slice s takes keys s, s + ks, ... for its 16-byte piece of every head
        if (slice < ks) {
#pragma unroll
            for (int h = 0; h < HB; h++)
                if (h < hb) {
                    float a = as[h];
#pragma unroll
                    for (int j = 0; j < 8; j++) acc[h][j] *= a;
                }
            for (int n = slice; n < nk; n += ks) {
                uint4 raw = ((const uint4 *)(vt + n * hd))[vc_piece];
                const __half2 *v2 = (const __half2 *)&raw;
                float v[8];
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    float2 f = __half22float2(v2[j]);
                    v[2 * j] = f.x;
                    v[2 * j + 1] = f.y;
                }
#pragma unroll
                for (int h = 0; h < HB; h++)
                    if (h < hb) {
                        float p = ps[h * bn + n];
#pragma unroll
                        for (int j = 0; j < 8; j++) acc[h][j] += p * v[j];
                    }
            }
        }
        __syncthreads(); // this stage consumed before the next issue overwrites it
    }
    __syncthreads();
    SGLLM__PH(7);
    if (n_tiles > 0 && slice < ks)
#pragma unroll
        for (int h = 0; h < HB; h++)
            if (h < hb) {
                float4 *r = (float4 *)(red + ((int64_t)slice * HB + h) * hd + vc_piece * 8);
                r[0] = make_float4(acc[h][0], acc[h][1], acc[h][2], acc[h][3]);
                r[1] = make_float4(acc[h][4], acc[h][5], acc[h][6], acc[h][7]);
            }
    __syncthreads();
    int64_t row = qi * n_head + h0; // first head's row in (n_q, n_head)
    int32_t share = sgllm__cu_attn_share(hb * hd, n_splits, xq_kind);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    float *inbox = (float *)(sm + sgllm__cu_attn_inbox_off(HB, hd, bn, (size_t)region, POST, post.n_rot));
    float *inbox_lse = inbox + (int64_t)n_splits * share;
    SGLLM__PH(8);
    if (CL) asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory"); // every block has started
    SGLLM__PH(9);
#endif
    // the slices' sums, normalized: each thread takes `vpt` consecutive values of the (hb, hd)
    // output (4, 2 or 1, so that every thread has some) and adds the slices in order
    const int n_sl = n_steps > 0 ? mw : n_tiles > 0 ? ks : 0;
    const int vpt = hb * hd >= 4 * ATT_THREADS ? 4 : hb * hd >= 2 * ATT_THREADS ? 2 : 1;
    for (int e = tid * vpt; e < hb * hd; e += ATT_THREADS * vpt) {
        int h = e / hd;
        float o[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        const float *r = red + e; // slice sl's values at r + sl HB hd
#pragma unroll 4
        for (int sl = 0; sl < n_sl; sl++, r += HB * hd) {
            if (vpt == 4) {
                float4 a = *(const float4 *)r;
                o[0] += a.x, o[1] += a.y, o[2] += a.z, o[3] += a.w;
            } else if (vpt == 2) {
                float2 a = *(const float2 *)r;
                o[0] += a.x, o[1] += a.y;
            } else {
                o[0] += r[0];
            }
        }
        float l = ls[h], inv = l > 0 ? 1.0f / l : 0.0f;
        float *dst = n_splits == 1 ? out + row * hd + e : part_o + ((row + h) * n_splits + split) * hd + (e - h * hd);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        if (CL) { // into the inbox of the block whose share holds these values (share % 8 == 0)
            int32_t owner = e / share;
            dst = cooperative_groups::this_cluster().map_shared_rank(inbox, (unsigned)owner) + (int64_t)split * share +
                  (e - owner * share);
        }
#endif
        if (vpt == 4) *(float4 *)dst = make_float4(o[0] * inv, o[1] * inv, o[2] * inv, o[3] * inv);
        else if (vpt == 2) *(float2 *)dst = make_float2(o[0] * inv, o[1] * inv);
        else dst[0] = o[0] * inv;
    }
    if (n_splits > 1 && tid < hb) {
        float lse = ls[tid] > 0 ? ms[tid] + logf(ls[tid]) : -INFINITY;
        if (CL) as[tid] = lse;
        else part_lse[(row + tid) * n_splits + split] = lse;
    }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    SGLLM__PH(10);
    if (CL) { // every block gets this split's log-sum-exps
        __syncthreads();
        for (int i = tid; i < n_splits * hb; i += ATT_THREADS) {
            int32_t owner = i / hb, h = i - owner * hb;
            cooperative_groups::this_cluster().map_shared_rank(inbox_lse, (unsigned)owner)[split * HB + h] = as[h];
        }
    }
#endif
    if (CL) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        // The cluster is this head group's n_splits blocks (rank = split). Each block has put its
        // split's normalized outputs into the inboxes of the blocks that merge them, and its
        // log-sum-exps into every inbox; after one cluster barrier each block merges its share
        // from its own shared memory with sgllm__cu_attn_merge's arithmetic in split order (so
        // the merge kernel's bits), each thread making its head's weights itself. Nothing reads
        // another block's shared memory, so no block waits for the others before it leaves.
        SGLLM__PH(11);
        asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
        asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
        SGLLM__PH(12);
        int32_t total = hb * hd, e0 = min(total, split * share), e1 = min(total, e0 + share);
        // the merged values quantized from registers with sgllm__cu_xq's arithmetic (its bytes):
        // for the 32-value formats each warp's 32 values are one block (share and e0 are
        // multiples of 32); for Q8_K each pass's ATT_THREADS values are one 256-value block
        // (share and e0 multiples of 256), whose largest magnitude (first index on ties) the
        // warps find and meet on through shared memory, a block barrier per pass
        const bool q32 = xq_kind == XQ_Q8_0 || xq_kind == XQ_Q8_1;
        static_assert(ATT_THREADS == 256, "one Q8_K block a pass");
        __shared__ float k_am[2][ATT_THREADS / 32], k_mx[2][ATT_THREADS / 32];
        __shared__ int k_ai[2][ATT_THREADS / 32];
        int pass = 0;
        for (int32_t e = e0 + tid; e < e1; e += ATT_THREADS, pass ^= 1) {
            // sgllm__cu_attn_weights' weights of head h, made by each thread (no block barrier)
            int32_t h = e / hd;
            const float *l = inbox_lse + h, *v = inbox + (e - e0);
            float mx = -INFINITY, num = 0.0f, den = 0.0f;
            for (int32_t sp = 0; sp < n_splits; sp++) mx = fmaxf(mx, l[sp * HB]);
#pragma unroll 4
            for (int32_t sp = 0; sp < n_splits; sp++) {
                float w = sgllm__cu_attn_w(l[sp * HB], mx);
                num += w * v[(int64_t)sp * share];
                den += w;
            }
            float r = den > 0 ? num / den : 0.0f;
            out[row * hd + e] = r;
            if (q32) { // whole warps take this branch together
                float am = fabsf(r);
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) am = fmaxf(am, __shfl_xor_sync(0xffffffffu, am, o));
                float d = am / 127.f, id = am != 0.f ? 127.f / am : 0.f;
                int q = __float2int_rn(r * id), sum = q;
                xq_q[row * hd + e] = (int8_t)q;
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
                if (lane == 0) xq_d[(row * hd + e) / 32] = sgllm__cu_xq_ds32(xq_kind == XQ_Q8_1, d, sum);
            } else if (xq_kind == XQ_Q8_K) { // every thread of the block takes this branch (see above)
                int32_t gi = e - e0; // index in the share, as sgllm__cu_xq's
                float am = fabsf(r), mx = r;
                int ai = gi;
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) { // largest magnitude, first index on ties
                    float oam = __shfl_xor_sync(0xffffffffu, am, o), omx = __shfl_xor_sync(0xffffffffu, mx, o);
                    int oai = __shfl_xor_sync(0xffffffffu, ai, o);
                    if (oam > am || (oam == am && oai < ai)) am = oam, mx = omx, ai = oai;
                }
                if (lane == 0) k_am[pass][warp] = am, k_mx[pass][warp] = mx, k_ai[pass][warp] = ai;
                __syncthreads();
                am = k_am[pass][0], mx = k_mx[pass][0], ai = k_ai[pass][0];
#pragma unroll
                for (int w = 1; w < ATT_THREADS / 32; w++) {
                    float oam = k_am[pass][w];
                    int oai = k_ai[pass][w];
                    if (oam > am || (oam == am && oai < ai)) am = oam, mx = k_mx[pass][w], ai = oai;
                }
                float iscale = am != 0.f ? -127.f / mx : 0.f, d = iscale != 0.f ? 1.f / iscale : 0.f;
                int q = min(127, __float2int_rn(iscale * r)), sum = q;
                xq_q[row * hd + e] = (int8_t)q;
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
                if (lane == 0) xq_d[(row * hd + e) / 32] = make_float2(d, (float)sum);
            }
        }
        SGLLM__PH(13); // merged and quantized (phase 14, a pass of its own before, is no more)
        SGLLM__PH_END();
#endif
        return;
    }
    SGLLM__PH_END(); // (the last block's merge below is not stamped)
    if (n_splits == 1 || !cnt) return;
    // Each thread fences its partials before the block counts itself, so the block that
    // counts last sees every split's; it alone merges, and zeroes the counter for the next
    // launch (no other block of this group touches it again in this one).
    __shared__ int last;
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        unsigned *ct = cnt + (int64_t)blockIdx.z * gridDim.y + blockIdx.y;
        last = atomicAdd(ct, 1u) == (unsigned)n_splits - 1;
        if (last) atomicExch(ct, 0u);
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    sgllm__cu_attn_merge(part_o, part_lse, row, hb, hd, n_splits, (float *)sm, out);
}

static __global__ void sgllm__cu_attn_merge_k(const float *part_o, const float *part_lse, int32_t n_head, int32_t hd,
                                              int32_t n_splits, float *out) {
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    extern __shared__ float ws[]; // (2 n_splits)
    sgllm__cu_attn_merge(part_o, part_lse, (int64_t)blockIdx.y * n_head + blockIdx.x, 1, hd, n_splits, ws, out);
}

extern "C" size_t sgllm__cuda_attn_scratch_bytes(int32_t n_head, int32_t head_dim, int64_t n_q, int32_t n_splits) {
    if (n_head <= 0 || head_dim <= 0 || n_q <= 0 || n_splits <= 1) return 0;
    size_t rows = (size_t)n_q * (size_t)n_head * (size_t)n_splits;
    return (size_t)sgllm__cu_align256((int64_t)(rows * (size_t)head_dim * 4)) + rows * 4;
}

// The split kernel's instances: per heads-per-block class, fused with qkv_post's work or not,
// merged across a cluster or not, and with the tensor-core body or the CUDA-core loop (each
// instance holds only its own body's code: the short splits' kernel runs from less of it).
typedef void (*sgllm__cu_split_k)(const float *, const __half *, const __half *, const int32_t *, int32_t, int32_t,
                                  int32_t, int32_t, const int32_t *, int32_t, float, int32_t, int32_t, int32_t, float *,
                                  float *, float *, unsigned *, int32_t, const sgllm__cuda_qkv_post_args, int8_t *,
                                  float2 *, int, int);
template <int HB, bool MMA> static sgllm__cu_split_k sgllm__cu_attn_pick(bool post, bool cl) {
    return post ? (cl ? sgllm__cu_attn_split_k<HB, true, true, MMA> : sgllm__cu_attn_split_k<HB, true, false, MMA>)
                : (cl ? sgllm__cu_attn_split_k<HB, false, true, MMA> : sgllm__cu_attn_split_k<HB, false, false, MMA>);
}

// One launch of the split kernel for a heads-per-block class (and with post, the fused one).
template <int HB>
static sgllm_status sgllm__cu_attn_launch(sgllm__cuda *c, const float *q, const __half *kc, const __half *vc,
                                          const int32_t *pt, int32_t page_size, int32_t n_head, int32_t n_head_kv,
                                          int32_t hd, const int32_t *pos, int64_t n_q, int32_t window, float scale,
                                          int32_t n_splits, int32_t bn, bool merge_here, float *part_o, float *part_lse,
                                          float *out, const sgllm__cuda_qkv_post_args *post, bool *cl, int xq_kind,
                                          int mw) {
    int32_t group = n_head / n_head_kv, n_hgroups = (group + HB - 1) / HB;
    if ((int64_t)n_head_kv * n_hgroups > 65535) return sgllm__cu_bad(c, "attn_decode", "too many heads");
    size_t region = sgllm__cu_attn_region(HB, hd, bn, n_splits, merge_here || *cl, mw);
    size_t smem = sgllm__cu_attn_inbox_off(HB, hd, bn, region, post != NULL, post ? post->n_rot : 0);
    if (*cl) { // the cluster merge's inbox
        int32_t share = sgllm__cu_attn_share(HB * hd, n_splits, xq_kind);
        smem += ((size_t)n_splits * share + (size_t)n_splits * HB) * 4;
    }
    sgllm__cu_split_k kern = mw > 0 ? sgllm__cu_attn_pick<HB, true>(post != NULL, *cl) : sgllm__cu_attn_pick<HB, false>(post != NULL, *cl);
    sgllm__cuda_qkv_post_args none = {};
    if (smem > 48 * 1024 &&
        sgllm__cu_check(c, cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                        "attn_decode: shared memory"))
        return SGLLM_ERR_BACKEND;
    if (*cl && sgllm__cu_occupancy(c, kern, ATT_THREADS, smem, (unsigned)n_splits) < 1) { // else the merge kernel
        *cl = false;
        return sgllm__cu_attn_launch<HB>(c, q, kc, vc, pt, page_size, n_head, n_head_kv, hd, pos, n_q, window, scale,
                                         n_splits, bn, merge_here, part_o, part_lse, out, post, cl, -1, mw);
    }
    // the counters cover ATT_COUNTERS head groups, so more queries than that take several launches
    int64_t per_launch = merge_here ? ATT_COUNTERS / ((int64_t)n_head_kv * n_hgroups) : n_q; // at least 1
    for (int64_t q0 = 0; q0 < n_q; q0 += per_launch) {
        int64_t nz = n_q - q0 < per_launch ? n_q - q0 : per_launch;
        if (sgllm__cu_launch_cl(c, mw ? "attn_decode: split kernel (tensor cores)" : "attn_decode: split kernel",
                                *cl ? (unsigned)n_splits : 1u, kern,
                                dim3((unsigned)n_splits, (unsigned)(n_head_kv * n_hgroups), (unsigned)nz),
                                dim3(ATT_THREADS), smem, q, kc, vc, pt, sgllm__cu_page_shift(pt, page_size), n_head,
                                n_head_kv, hd, pos, window, scale, n_splits, bn, (int32_t)region, part_o, part_lse, out,
                                merge_here ? c->att_cnt : (unsigned *)NULL, (int32_t)q0, post ? *post : none,
                                sgllm__cu_xq_codes(c), sgllm__cu_xq_scales(c), *cl ? xq_kind : -1, mw))
            return SGLLM_ERR_BACKEND;
    }
    return SGLLM_OK;
}

// Whether the n_clusters clusters of n_splits blocks of the fused kernel with the cluster merge
// can all be resident at once (a shared-memory bound over the fused kernel's choices: RoPE of
// the whole head, shares of 256-value blocks). When they cannot, a launch runs in waves of
// clusters and takes about twice as long (measured on an H100 whose GPCs hold fewer 16-block
// clusters than Llama-3-8B's eight KV heads need).
template <int HB>
static bool sgllm__cu_attn_cluster_fits(sgllm__cuda *c, int32_t hd, int32_t bn, int32_t n_splits, int64_t n_clusters,
                                        int mw) {
    size_t region = sgllm__cu_attn_region(HB, hd, bn, n_splits, true, mw);
    size_t smem = sgllm__cu_attn_inbox_off(HB, hd, bn, region, true, hd) +
                  ((size_t)n_splits * sgllm__cu_attn_share(HB * hd, n_splits, XQ_Q8_K) + (size_t)n_splits * HB) * 4;
    sgllm__cu_split_k kern = mw > 0 ? sgllm__cu_attn_pick<HB, true>(true, true) : sgllm__cu_attn_pick<HB, false>(true, true);
    if (smem > 48 * 1024 && cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess) {
        cudaGetLastError(); // not sticky
        return false;
    }
    return sgllm__cu_occupancy(c, kern, ATT_THREADS, smem, (unsigned)n_splits) >= n_clusters;
}

extern "C" int32_t sgllm__cuda_attn_cluster_splits(sgllm__cuda *c, int32_t n_head, int32_t n_head_kv, int32_t head_dim,
                                                   int64_t n_q, int32_t n_splits) {
    if (!c || n_splits <= 1 || n_splits > 16 || c->disp.decode_merge != 2 || c->cc_major < 9 || n_head <= 0 ||
        n_head_kv <= 0 || n_head % n_head_kv || head_dim < 8 || head_dim > ATT_MAX_HD || head_dim % 8 || n_q < 1)
        return n_splits;
    for (int i = 0; i < c->n_csp; i++) // asked per layer of every eager step: answered once
        if (c->csp[i].n_head == n_head && c->csp[i].n_head_kv == n_head_kv && c->csp[i].head_dim == head_dim &&
            c->csp[i].asked == n_splits && c->csp[i].n_q == n_q)
            return c->csp[i].got;
    // the tensor-core body's shared memory where the head dim allows it (the larger of the two)
    int32_t bn = sgllm__cu_attn_bn(c, head_dim), group = n_head / n_head_kv;
    int mw = sgllm__cu_attn_mw(c, head_dim, n_splits, 0), hb = sgllm__cu_attn_hb(c, group, n_head_kv, n_q);
    int64_t n_clusters = n_q * n_head_kv * ((group + hb - 1) / hb);
    cudaSetDevice(c->device);
    int32_t got = n_splits; // none fits: waves whatever the count
    for (int32_t s = n_splits; s >= 2; s--) {
        bool fits = hb == ATT_HB ? sgllm__cu_attn_cluster_fits<ATT_HB>(c, head_dim, bn, s, n_clusters, mw)
                    : hb == 4    ? sgllm__cu_attn_cluster_fits<4>(c, head_dim, bn, s, n_clusters, mw)
                    : hb == 2    ? sgllm__cu_attn_cluster_fits<2>(c, head_dim, bn, s, n_clusters, mw)
                                 : sgllm__cu_attn_cluster_fits<1>(c, head_dim, bn, s, n_clusters, mw);
        if (fits) {
            got = s;
            break;
        }
    }
    int i = c->next_csp; // a ring
    c->next_csp = (i + 1) % 8;
    if (c->n_csp < 8) c->n_csp++;
    c->csp[i].n_head = n_head, c->csp[i].n_head_kv = n_head_kv, c->csp[i].head_dim = head_dim;
    c->csp[i].asked = n_splits, c->csp[i].got = got, c->csp[i].n_q = n_q;
    return got;
}

// Decode attention; post: the fused kernel (sgllm__cuda_attn_decode_post, n_q 1).
static sgllm_status sgllm__cu_attn_decode(sgllm__cuda *c, const float *q, const uint16_t *k_cache,
                                          const uint16_t *v_cache, const int32_t *page_table, int32_t page_size,
                                          int32_t n_head, int32_t n_head_kv, int32_t head_dim, const int32_t *pos, int64_t n_q,
                                          int32_t window, float scale, int32_t n_splits, float *out,
                                          const sgllm__cuda_qkv_post_args *post, uint32_t quant_for, int64_t max_keys) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    if (!q || !k_cache || !v_cache || !pos || !out || n_head <= 0 || n_head_kv <= 0 || n_head % n_head_kv ||
        head_dim < 8 || head_dim > ATT_MAX_HD || head_dim % 8 || n_q < 0 || n_q > 65535 || window < 0 ||
        n_splits < 1 || n_splits > 1024 || (uintptr_t)q % 16 || (uintptr_t)out % 16 || (uintptr_t)k_cache % 16 || (uintptr_t)v_cache % 16 ||
        (page_table && (page_size <= 0 || (page_size & (page_size - 1)))))
        return sgllm__cu_bad(c, "attn_decode", "bad pointer or shape (head_dim 8..512, a multiple of 8)");
    if (!n_q) return SGLLM_OK;
    size_t need = sgllm__cuda_attn_scratch_bytes(n_head, head_dim, n_q, n_splits);
    if (need > c->scratch_bytes)
        return sgllm__cu_fail(c, SGLLM_ERR_OUT_OF_MEMORY, "attn_decode: needs %zu bytes of scratch, %zu reserved",
                              need, c->scratch_bytes);
    int32_t bn = sgllm__cu_attn_bn(c, head_dim);
    // one launch merges its splits unless the dispatch asks for the merge kernel: in the last
    // block to finish (decode_merge 0) or across a thread block cluster (2: sm90+, at most 16
    // splits, and a cluster the device can hold)
    bool merge_here = n_splits > 1 && !c->disp.decode_merge;
    bool cl = n_splits > 1 && n_splits <= 16 && c->disp.decode_merge == 2 && c->cc_major >= 9;
    // the cluster merge also quantizes out for the product that reads it next when every head
    // group's outputs are whole blocks of that type's activation format (as
    // sgllm__cuda_norm_add_rmsnorm_q): each head, or a GQA group of up to 8 heads (one head
    // group per KV head), e.g. Llama's 4 heads of 128 for 256-value blocks
    int64_t cols = (int64_t)n_head * head_dim;
    int xq_kind = -1;
    if (sgllm__cu_quantized(quant_for, cols) && n_q <= 8 && cols <= MV_XQ_COLS) {
        xq_kind = sgllm__cu_xq_kind((int)quant_for);
        int32_t bv = xq_kind == XQ_Q8_K ? 256 : 32, group = n_head / n_head_kv;
        int32_t hb = sgllm__cu_attn_hb(c, group, n_head_kv, n_q), e = hb < group ? hb : group; // a full head group
        if (head_dim % bv && (group > ATT_HB || (int64_t)e * head_dim % bv || (int64_t)(group % e) * head_dim % bv))
            xq_kind = -1;
    }
    cudaSetDevice(c->device);
    float *part_o = (float *)c->scratch;
    float *part_lse = part_o ? (float *)((uint8_t *)c->scratch +
                                         sgllm__cu_align256((int64_t)n_q * n_head * n_splits * head_dim * 4))
                             : NULL;
    int32_t group = n_head / n_head_kv;
    const __half *kc = (const __half *)k_cache, *vc = (const __half *)v_cache;
    int mw = sgllm__cu_attn_mw(c, head_dim, n_splits, max_keys);
    const int hb = sgllm__cu_attn_hb(c, group, n_head_kv, n_q);
    sgllm_status s =
        hb == ATT_HB ? sgllm__cu_attn_launch<ATT_HB>(c, q, kc, vc, page_table, page_size, n_head, n_head_kv, head_dim, pos, n_q,
                                             window, scale, n_splits, bn, merge_here, part_o, part_lse, out, post, &cl, xq_kind, mw)
        : hb == 4 ? sgllm__cu_attn_launch<4>(c, q, kc, vc, page_table, page_size, n_head, n_head_kv, head_dim, pos, n_q,
                                               window, scale, n_splits, bn, merge_here, part_o, part_lse, out, post, &cl, xq_kind, mw)
        : hb == 2 ? sgllm__cu_attn_launch<2>(c, q, kc, vc, page_table, page_size, n_head, n_head_kv, head_dim, pos, n_q,
                                               window, scale, n_splits, bn, merge_here, part_o, part_lse, out, post, &cl, xq_kind, mw)
                    : sgllm__cu_attn_launch<1>(c, q, kc, vc, page_table, page_size, n_head, n_head_kv, head_dim, pos, n_q,
                                               window, scale, n_splits, bn, merge_here, part_o, part_lse, out, post, &cl, xq_kind, mw);
    sgllm__cu_xq_forget(c, out); // out changes: the activation buffer no longer holds it
    if (!s && cl && xq_kind >= 0) sgllm__cu_xq_set(c, s, out, xq_kind, n_q, cols);
    if (s || n_splits == 1 || merge_here || cl) return s;
    return sgllm__cu_launch(c, "attn_decode: merge kernel", sgllm__cu_attn_merge_k, dim3((unsigned)n_head, (unsigned)n_q),
                            dim3(128), (size_t)n_splits * 2 * 4, (const float *)part_o, (const float *)part_lse,
                            n_head, head_dim, n_splits, out);
}

extern "C" sgllm_status sgllm__cuda_attn_decode(sgllm__cuda *c, const float *q, const uint16_t *k_cache,
                                                const uint16_t *v_cache, const int32_t *page_table, int32_t page_size,
                                                int32_t n_head, int32_t n_head_kv,
                                                int32_t head_dim, const int32_t *pos, int64_t n_q, int32_t window,
                                                float scale, int32_t n_splits, float *out) {
    return sgllm__cu_attn_decode(c, q, k_cache, v_cache, page_table, page_size, n_head, n_head_kv, head_dim, pos, n_q,
                                 window, scale, n_splits, out, NULL, T_F32, 0);
}

extern "C" sgllm_status sgllm__cuda_attn_decode_post(sgllm__cuda *c, const sgllm__cuda_qkv_post_args *a, int32_t window,
                                                     float scale, int32_t n_splits, float *out, uint32_t quant_for,
                                                     int64_t max_keys) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    if (!a) return sgllm__cu_bad(c, "attn_decode_post", "no arguments");
    // one query whose heads the kernel can take: one launch; else qkv_post, then attention
    bool fuse = a->n_tok == 1 && a->head_dim % 8 == 0 && a->head_dim <= ATT_MAX_HD && a->n_rot >= 2 &&
                a->n_rot <= a->head_dim && !(a->n_rot & 1) && a->n_head > 0 && a->n_head_kv > 0 && a->q && a->k && a->v;
    if (!fuse) {
        sgllm_status s = sgllm__cuda_qkv_post(c, a);
        return s ? s : sgllm__cu_attn_decode(c, a->q, a->k_cache, a->v_cache, a->page_table, a->page_size, a->n_head,
                                             a->n_head_kv, a->head_dim, a->pos, a->n_tok, window, scale, n_splits, out,
                                             NULL, quant_for, max_keys);
    }
    if (a->q_stride < (int64_t)a->n_head * a->head_dim || a->kv_stride < (int64_t)a->n_head_kv * a->head_dim ||
        !(a->theta_base > 0) || !(a->eps >= 0))
        return sgllm__cu_bad(c, "attn_decode_post", "bad pointer or shape");
    return sgllm__cu_attn_decode(c, a->q, a->k_cache, a->v_cache, a->page_table, a->page_size, a->n_head, a->n_head_kv,
                                 a->head_dim, a->pos, 1, window, scale, n_splits, out, a, quant_for, max_keys);
}
// --- 6b. Prefill attention -----------------------------------------------------------------
// Flash attention (FlashAttention-2 schedule) on the tensor cores for batches of queries, over
// the same fp16 cache as section 6. Grid (query tiles x n_head, value chunks), the head
// fastest: every head's longest query tile (the last positions) starts before any shorter
// one, so the causal triangle's long blocks do not trail at the end (longest-first list
// scheduling), and the blocks of one GQA group run side by side (their K/V tiles come from
// L2). A block owns BM queries of one query head and walks the key tiles of BN keys between
// the lowest visible key and the highest position of its queries; tiles outside a warp's
// causal/window range are skipped by that warp. Each warp owns BM / W query rows, 16 per
// m16n8k16 fragment; S = Q K^T and O += P V run as mma.sync (fp16 inputs, fp32
// accumulation), the online softmax in fp32 in the log2 domain (q is premultiplied by
// scale * log2(e) in fp32, then rounded to fp16: one rounding of the scaled q, relative
// 2^-11, like the CPU engine's rounding of q), P rounded to fp16 for the P V product (as the
// CPU engine rounds probabilities). The output is normalized once at the end.
// Shared memory: two stages of K (BN, D + 8) and V (BN, DV + 8), and Q (BM, D + 8) unless the
// warps hold Q in registers, all fp16; the 8 extra halves per row shift consecutive rows by
// 16 bytes so ldmatrix reads hit distinct banks. Tile j + 1 is copied (cp.async) into the
// other stage while tile j is computed: one block barrier per key tile. Head dims that are
// multiples of 16 below D run in the D kernel with zero-padded columns; above 256 the value
// columns are cut into chunks of DV = 128 (grid.z), each recomputing S.

// 2^x by the special-function unit (ex2.approx: relative error about 2^-22, far below the
// fp16 rounding of the probabilities it feeds); 2^-inf = 0.
static __device__ inline float sgllm__cu_ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

struct sgllm__cu_fa_args {
    const float *q;        // (n_q, n_head * hd)
    const __half *kc, *vc; // (rows, n_head_kv * hd)
    const int32_t *pos, *pt;
    int64_t n_q;
    int32_t n_head, n_head_kv, hd, window, page_shift, m_tiles;
    float qscale; // scale * log2(e)
    float *out;   // (n_q, n_head * hd)
};

// Copies rows t0 .. t0 + BN - 1 of CH * 8 fp16 columns (from base + physical row * stride)
// into dst (BN rows of CH * 8 + 8 halves); columns at or past cols and rows at or past kend
// become zeros (cp.async reads no source bytes for them).
template <int BN, int CH, int NTH>
static __device__ inline void sgllm__cu_fa_load(__half *dst, const __half *base, int64_t stride, int cols, int64_t t0,
                                                int64_t kend, const int32_t *pt, int32_t shift) {
#pragma unroll 1
    for (int k = 0; k < (BN * CH + NTH - 1) / NTH; k++) {
        int i = (int)threadIdx.x + k * NTH, n = i / CH, c = i % CH;
        if ((BN * CH) % NTH && i >= BN * CH) break;
        int64_t r = t0 + n;
        bool ok = r < kend && c * 8 < cols;
        const __half *src = ok ? base + sgllm__cu_page_row(pt, shift, r) * stride + c * 8 : base;
        sgllm__cu_cp16z(dst + n * (CH * 8 + 8) + c * 8, src, ok);
    }
}

// QR: the warp's Q fragments live in registers for the whole key walk, read once from global
// memory (no Q tile in shared memory, no ldmatrix of Q per key tile); for one 16-row fragment
// per warp and D <= 128, where they fit beside the accumulators.
template <int D, int DV, int BM, int BN, int W, bool QR>
static __global__ void __launch_bounds__(W * 32) sgllm__cu_fa_k(sgllm__cu_fa_args a) {
    constexpr int MI = BM / (16 * W), SQ = D + 8, SV = DV + 8, NT = BN / 8, NO = DV / 8, NTH = W * 32;
    static_assert(MI >= 1 && BM == MI * 16 * W && BN % 16 == 0 && D % 16 == 0 && DV % 16 == 0, "tile shape");
    extern __shared__ __align__(16) uint8_t sm[];
    __half *ks = (__half *)sm, *vs = ks + 2 * BN * SQ, *qs = vs + 2 * BN * SV; // K and V: two stages each
    int32_t *range = (int32_t *)(qs + (QR ? 0 : BM * SQ)); // lowest visible key, highest position of the block
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
    // blockIdx.x = tile * n_head + head: every head's longest query tile starts before any shorter one
    int32_t tile = (int32_t)(blockIdx.x / (unsigned)a.n_head), h = (int32_t)(blockIdx.x - (unsigned)tile * a.n_head);
    int64_t m0 = (int64_t)(a.m_tiles - 1 - tile) * BM;
    int32_t hd = a.hd, kvh = h / (a.n_head / a.n_head_kv), dv0 = (int32_t)blockIdx.z * DV;
    int32_t dvn = min(DV, hd - dv0); // value columns of this chunk
    int64_t kv_stride = (int64_t)a.n_head_kv * hd, q_stride = (int64_t)a.n_head * hd;
    const __half *kbase = a.kc + (int64_t)kvh * hd, *vbase = a.vc + (int64_t)kvh * hd + dv0;

    if (tid == 0) {
        range[0] = INT32_MAX;
        range[1] = -1;
    }
    if constexpr (!QR)
        for (int i = tid; i < BM * (D / 4); i += NTH) {
            int r = i / (D / 4), d = (i - r * (D / 4)) * 4;
            float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
            if (m0 + r < a.n_q && d < hd) v = *(const float4 *)(a.q + (m0 + r) * q_stride + (int64_t)h * hd + d);
            uint2 hv = make_uint2(sgllm__cu_pack_h2(v.x * a.qscale, v.y * a.qscale),
                                  sgllm__cu_pack_h2(v.z * a.qscale, v.w * a.qscale));
            *(uint2 *)(qs + r * SQ + d) = hv;
        }
    __syncthreads();
    for (int i = tid; i < BM; i += NTH)
        if (m0 + i < a.n_q) {
            int32_t p = a.pos[m0 + i];
            atomicMin(&range[0], a.window > 0 ? max(0, p - a.window + 1) : 0);
            atomicMax(&range[1], p);
        }
    // this thread's rows: g and g + 8 of each of the warp's MI fragments; rows past n_q see nothing
    int32_t rpos[MI][2], rlo[MI][2];
    int32_t wlo = INT32_MAX, whi = -1, wmaxlo = 0, wminpos = INT32_MAX;
#pragma unroll
    for (int mi = 0; mi < MI; mi++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            int64_t row = m0 + (warp * MI + mi) * 16 + g + 8 * hf;
            int32_t p = row < a.n_q ? a.pos[row] : -1, lo = a.window > 0 ? max(0, p - a.window + 1) : 0;
            rpos[mi][hf] = p;
            rlo[mi][hf] = lo;
            if (p >= 0) wlo = min(wlo, lo);
            whi = max(whi, p);
            wmaxlo = max(wmaxlo, lo);
            wminpos = min(wminpos, p);
        }
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        wlo = min(wlo, __shfl_xor_sync(0xffffffffu, wlo, o));
        whi = max(whi, __shfl_xor_sync(0xffffffffu, whi, o));
        wmaxlo = max(wmaxlo, __shfl_xor_sync(0xffffffffu, wmaxlo, o));
        wminpos = min(wminpos, __shfl_xor_sync(0xffffffffu, wminpos, o));
    }
    // the m16n8k16 A layout: register e holds row g + 8 (e & 1), columns 2 t4 + 8 (e >> 1) + {0, 1};
    // the same fp32 -> fp16 rounding of q * qscale as the shared-memory path
    uint32_t qf[QR ? MI : 1][QR ? D / 16 : 1][4];
    if constexpr (QR) {
#pragma unroll
        for (int mi = 0; mi < MI; mi++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int64_t row = m0 + (warp * MI + mi) * 16 + g + 8 * (e & 1);
                const float *qr = a.q + row * q_stride + (int64_t)h * hd + 2 * t4 + 8 * (e >> 1);
#pragma unroll
                for (int kk = 0; kk < D / 16; kk++) {
                    float2 v = make_float2(0.f, 0.f);
                    if (row < a.n_q && kk * 16 + 2 * t4 + 8 * (e >> 1) < hd) v = *(const float2 *)(qr + kk * 16);
                    qf[mi][kk][e] = sgllm__cu_pack_h2(v.x * a.qscale, v.y * a.qscale);
                }
            }
    }
    __syncthreads();
    int64_t kstart = range[0], kend = (int64_t)range[1] + 1;
    int64_t n_tiles = kend > kstart ? (kend - kstart + BN - 1) / BN : 0;

    uint32_t ks_a = sgllm__cu_smem_addr(ks + ((lane & 7) + (lane >> 4) * 8) * SQ + ((lane >> 3) & 1) * 8);
    uint32_t vs_a = sgllm__cu_smem_addr(vs + ((lane & 7) + ((lane >> 3) & 1) * 8) * SV + (lane >> 4) * 8);
    uint32_t qs_a = sgllm__cu_smem_addr(qs + (warp * MI * 16 + (lane & 15)) * SQ + (lane >> 4) * 8);
    float o[MI][NO][4], mrow[MI][2], lrow[MI][2];
#pragma unroll
    for (int mi = 0; mi < MI; mi++) {
#pragma unroll
        for (int j = 0; j < NO; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) o[mi][j][e] = 0.f;
        mrow[mi][0] = mrow[mi][1] = -INFINITY;
        lrow[mi][0] = lrow[mi][1] = 0.f;
    }
    if (n_tiles) {
        sgllm__cu_fa_load<BN, D / 8, NTH>(ks, kbase, kv_stride, hd, kstart, kend, a.pt, a.page_shift);
        sgllm__cu_fa_load<BN, DV / 8, NTH>(vs, vbase, kv_stride, dvn, kstart, kend, a.pt, a.page_shift);
    }
    sgllm__cu_cp_commit();
    for (int64_t it = 0; it < n_tiles; it++) {
        int64_t t0 = kstart + it * BN;
        int st = (int)(it & 1);
        // this lane's ldmatrix rows in stage st (byte addresses): K row-major as the col operand, V transposed
        uint32_t ka = ks_a + (uint32_t)(st * BN * SQ * 2), va = vs_a + (uint32_t)(st * BN * SV * 2);
        sgllm__cu_cp_wait<0>();
        // one barrier per key tile: tile it has landed for every thread, and every warp is done
        // with tile it - 1, whose stage the copy of tile it + 1 now overwrites (while tile it is
        // computed)
        __syncthreads();
        if (it + 1 < n_tiles) {
            sgllm__cu_fa_load<BN, D / 8, NTH>(ks + (st ^ 1) * BN * SQ, kbase, kv_stride, hd, t0 + BN, kend, a.pt,
                                              a.page_shift);
            sgllm__cu_fa_load<BN, DV / 8, NTH>(vs + (st ^ 1) * BN * SV, vbase, kv_stride, dvn, t0 + BN, kend, a.pt,
                                               a.page_shift);
        }
        sgllm__cu_cp_commit();
        if (t0 > whi || t0 + BN - 1 < wlo) continue; // no key of the tile is visible to this warp's rows
        float s[MI][NT][4];
#pragma unroll
        for (int mi = 0; mi < MI; mi++)
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[mi][j][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t af[MI][4];
#pragma unroll
            for (int mi = 0; mi < MI; mi++) {
                if constexpr (QR) {
#pragma unroll
                    for (int e = 0; e < 4; e++) af[mi][e] = qf[mi][kk][e];
                } else {
                    sgllm__cu_ldsm4(af[mi], qs_a + (uint32_t)((mi * 16 * SQ + kk * 16) * 2));
                }
            }
#pragma unroll
            for (int nb = 0; nb < BN / 16; nb++) {
                uint32_t b[4];
                sgllm__cu_ldsm4(b, ka + (uint32_t)((nb * 16 * SQ + kk * 16) * 2));
#pragma unroll
                for (int mi = 0; mi < MI; mi++) {
                    sgllm__cu_mma16816(s[mi][2 * nb], af[mi], b[0], b[1]);
                    sgllm__cu_mma16816(s[mi][2 * nb + 1], af[mi], b[2], b[3]);
                }
            }
        }
        if (t0 < wmaxlo || t0 + BN - 1 > wminpos) { // some key of the tile is hidden from some row
#pragma unroll
            for (int mi = 0; mi < MI; mi++)
#pragma unroll
                for (int j = 0; j < NT; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        int32_t key = (int32_t)t0 + j * 8 + 2 * t4 + (e & 1);
                        if (key < rlo[mi][e >> 1] || key > rpos[mi][e >> 1]) s[mi][j][e] = -INFINITY;
                    }
        }
#pragma unroll
        for (int mi = 0; mi < MI; mi++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                float mx = mrow[mi][hf];
#pragma unroll
                for (int j = 0; j < NT; j++) mx = fmaxf(mx, fmaxf(s[mi][j][2 * hf], s[mi][j][2 * hf + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                float base = mx == -INFINITY ? 0.f : mx; // a row that has seen nothing keeps zeros
                float alpha = sgllm__cu_ex2(mrow[mi][hf] - base), sum = 0.f;
                mrow[mi][hf] = mx;
#pragma unroll
                for (int j = 0; j < NT; j++) {
                    float p0 = sgllm__cu_ex2(s[mi][j][2 * hf] - base), p1 = sgllm__cu_ex2(s[mi][j][2 * hf + 1] - base);
                    s[mi][j][2 * hf] = p0;
                    s[mi][j][2 * hf + 1] = p1;
                    sum += p0 + p1;
                }
                lrow[mi][hf] = lrow[mi][hf] * alpha + sum; // this thread's columns; the quad is summed at the end
#pragma unroll
                for (int j = 0; j < NO; j++) {
                    o[mi][j][2 * hf] *= alpha;
                    o[mi][j][2 * hf + 1] *= alpha;
                }
            }
#pragma unroll
        for (int kb = 0; kb < BN / 16; kb++) {
            uint32_t pa[MI][4];
#pragma unroll
            for (int mi = 0; mi < MI; mi++) {
                pa[mi][0] = sgllm__cu_pack_h2(s[mi][2 * kb][0], s[mi][2 * kb][1]);
                pa[mi][1] = sgllm__cu_pack_h2(s[mi][2 * kb][2], s[mi][2 * kb][3]);
                pa[mi][2] = sgllm__cu_pack_h2(s[mi][2 * kb + 1][0], s[mi][2 * kb + 1][1]);
                pa[mi][3] = sgllm__cu_pack_h2(s[mi][2 * kb + 1][2], s[mi][2 * kb + 1][3]);
            }
#pragma unroll
            for (int db = 0; db < DV / 16; db++) {
                uint32_t b[4];
                sgllm__cu_ldsm4_t(b, va + (uint32_t)((kb * 16 * SV + db * 16) * 2));
#pragma unroll
                for (int mi = 0; mi < MI; mi++) {
                    sgllm__cu_mma16816(o[mi][2 * db], pa[mi], b[0], b[1]);
                    sgllm__cu_mma16816(o[mi][2 * db + 1], pa[mi], b[2], b[3]);
                }
            }
        }
    }
    sgllm__cu_cp_wait<0>(); // nothing in flight at exit (the last group is empty)
#pragma unroll
    for (int mi = 0; mi < MI; mi++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            float l = lrow[mi][hf];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            float inv = l > 0.f ? 1.f / l : 0.f;
            int64_t row = m0 + (warp * MI + mi) * 16 + g + 8 * hf;
            if (row >= a.n_q) continue;
            float *dst = a.out + row * q_stride + (int64_t)h * hd + dv0;
#pragma unroll
            for (int j = 0; j < NO; j++) {
                int col = j * 8 + 2 * t4;
                if (col < dvn) *(float2 *)(dst + col) = make_float2(o[mi][j][2 * hf] * inv, o[mi][j][2 * hf + 1] * inv);
            }
        }
}

// The compiled variants: (D, DV, BM, BN, W), per D largest tile first; Q in registers where
// each warp has one row fragment and D <= 128.
struct sgllm__cu_fa_variant {
    int d, dv, bm, bn, w;
    bool qr;
    void (*k)(sgllm__cu_fa_args);
};
#define SGLLM__FA_QR(D, BM, W) ((BM) == 16 * (W) && (D) <= 128)
#define SGLLM__FA(D, DV, BM, BN, W) {D, DV, BM, BN, W, SGLLM__FA_QR(D, BM, W), sgllm__cu_fa_k<D, DV, BM, BN, W, SGLLM__FA_QR(D, BM, W)>}
static const sgllm__cu_fa_variant sgllm__cu_fa_variants[] = {
    SGLLM__FA(64, 64, 128, 64, 4),   SGLLM__FA(64, 64, 64, 64, 4),     SGLLM__FA(64, 64, 64, 32, 4),
    SGLLM__FA(128, 128, 128, 64, 8), SGLLM__FA(128, 128, 128, 64, 4),  SGLLM__FA(128, 128, 64, 64, 4),
    SGLLM__FA(128, 128, 64, 32, 4),
    SGLLM__FA(256, 256, 128, 32, 8), SGLLM__FA(256, 256, 64, 64, 4),   SGLLM__FA(256, 256, 64, 32, 4),
    SGLLM__FA(256, 256, 32, 32, 2),
    SGLLM__FA(512, 128, 32, 64, 2),  SGLLM__FA(512, 128, 32, 32, 2),   SGLLM__FA(512, 128, 16, 16, 1),
};
#undef SGLLM__FA
#undef SGLLM__FA_QR

// Q (unless in registers), two stages of K and of V, the block's key range.
static size_t sgllm__cu_fa_smem(const sgllm__cu_fa_variant *v) {
    return ((v->qr ? 0 : (size_t)v->bm * (v->d + 8)) + 2 * (size_t)v->bn * (v->d + 8) + 2 * (size_t)v->bn * (v->dv + 8)) * 2 + 16;
}

// The variant for head_dim under the dispatch (tile no larger than the dispatch's bm x bn,
// warps no more than its warps, fitting shared memory; else the smallest that fits), or NULL.
static const sgllm__cu_fa_variant *sgllm__cu_fa_pick(const sgllm__cuda *c, int32_t head_dim) {
    if (head_dim < 16 || head_dim > 512 || head_dim % 16) return NULL;
    int d = head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : head_dim <= 256 ? 256 : 512;
    int cls = head_dim <= 128 ? 0 : head_dim <= 256 ? 1 : 2;
    int bm = c->disp.prefill_block_m[cls], bn = c->disp.prefill_block_n[cls], w = c->disp.prefill_warps[head_dim <= 64 ? 0 : 1];
    const sgllm__cu_fa_variant *fit = NULL;
    for (size_t i = 0; i < sizeof sgllm__cu_fa_variants / sizeof sgllm__cu_fa_variants[0]; i++) {
        const sgllm__cu_fa_variant *v = &sgllm__cu_fa_variants[i];
        if (v->d != d || sgllm__cu_fa_smem(v) > (size_t)c->smem_optin) continue;
        if (v->bm <= bm && v->bn <= bn && v->w <= w) return v;
        fit = v; // the list runs from large to small: the last that fits is the smallest
    }
    return fit;
}

extern "C" sgllm_status sgllm__cuda_attn_prefill(sgllm__cuda *c, const float *q, const uint16_t *k_cache,
                                                 const uint16_t *v_cache, const int32_t *page_table, int32_t page_size,
                                                 int32_t n_head, int32_t n_head_kv, int32_t head_dim, const int32_t *pos,
                                                 int64_t n_q, int32_t window, float scale, float *out) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    if (!q || !k_cache || !v_cache || !pos || !out || n_head <= 0 || n_head > 65535 || n_head_kv <= 0 ||
        n_head % n_head_kv || head_dim < 8 || head_dim > ATT_MAX_HD || head_dim % 8 || n_q < 0 || window < 0 ||
        (page_table && (page_size <= 0 || (page_size & (page_size - 1)))) || (uintptr_t)k_cache % 16 ||
        (uintptr_t)v_cache % 16)
        return sgllm__cu_bad(c, "attn_prefill", "bad pointer or shape (head_dim 8..512, a multiple of 8)");
    if (!n_q) return SGLLM_OK;
    sgllm__cu_xq_forget(c, out); // out changes: the activation buffer no longer holds it
    const sgllm__cu_fa_variant *v = (uintptr_t)q % 16 ? NULL : sgllm__cu_fa_pick(c, head_dim);
    if (!v) // head dims the tensor-core tiles do not cover: the decode kernel, one split (no scratch)
        return sgllm__cuda_attn_decode(c, q, k_cache, v_cache, page_table, page_size, n_head, n_head_kv, head_dim, pos,
                                       n_q, window, scale, 1, out);
    int64_t m_tiles = (n_q + v->bm - 1) / v->bm;
    if (m_tiles * n_head > INT32_MAX) return sgllm__cu_bad(c, "attn_prefill", "too many queries");
    sgllm__cu_fa_args a;
    a.q = q;
    a.kc = (const __half *)k_cache;
    a.vc = (const __half *)v_cache;
    a.pos = pos;
    a.pt = page_table;
    a.n_q = n_q;
    a.n_head = n_head;
    a.n_head_kv = n_head_kv;
    a.hd = head_dim;
    a.window = window;
    a.page_shift = sgllm__cu_page_shift(page_table, page_size);
    a.m_tiles = (int32_t)m_tiles;
    a.qscale = scale * 1.4426950408889634f;
    a.out = out;
    size_t smem = sgllm__cu_fa_smem(v);
    cudaSetDevice(c->device);
    if (smem > 48 * 1024 &&
        sgllm__cu_check(c, cudaFuncSetAttribute(v->k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                        "attn_prefill: shared memory"))
        return SGLLM_ERR_BACKEND;
    dim3 grid((unsigned)(m_tiles * n_head), 1, (unsigned)((head_dim + v->dv - 1) / v->dv));
    v->k<<<grid, v->w * 32, smem, c->stream>>>(a);
    return sgllm__cu_launched(c, "attn_prefill");
}

// --- 7. Benchmark and synthetic-weight helpers ---------------------------------------------

static __device__ inline uint64_t sgllm__cu_mix(uint64_t x) { // splitmix64 finalizer
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// Random bytes (this kernel), then every block's scales overwritten with small positive fp16
// values (sgllm__cu_fill_scales_k, a second launch: in one kernel another thread's random
// word could land on a scale after it was written, leaving an Inf/NaN scale) so the weights
// are finite and of a realistic magnitude (|w| below about 0.1).
static __global__ void sgllm__cu_fill_k(uint32_t type, uint8_t *w, int64_t bytes, uint64_t seed) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < bytes / 8; i += stride) {
        uint64_t r = sgllm__cu_mix(seed ^ (uint64_t)i * 0x632be59bd9b4e019ull);
        if (type == T_F32 || type == T_F16 || type == T_BF16) {
            // uniform values in [-0.1, 0.1): 2 f32 or 4 half values per 8 bytes
            for (int k = 0; k < (type == T_F32 ? 2 : 4); k++) {
                float u = ((float)((r >> (16 * k)) & 0xffff) / 65536.0f - 0.5f) * 0.2f;
                if (type == T_F32) ((float *)w)[2 * i + k] = ((float)((r >> (32 * k)) & 0xffffffffu) / 4294967296.0f - 0.5f) * 0.2f;
                else if (type == T_F16) ((__half *)w)[4 * i + k] = __float2half(u);
                else ((__nv_bfloat16 *)w)[4 * i + k] = __float2bfloat16(u);
            }
        } else {
            ((uint64_t *)w)[i] = r;
        }
    }
}

static __global__ void sgllm__cu_fill_scales_k(uint32_t type, uint8_t *w, int64_t n_blocks, uint64_t seed) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int bb = sgllm__cu_blk_bytes(type);
    for (int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; b < n_blocks; b += stride) {
        uint8_t *blk = w + b * bb;
        uint64_t r = sgllm__cu_mix(seed ^ ~(uint64_t)b);
        __half d = __float2half(0.001f + 0.002f * (float)(r & 1023) / 1024.0f);
        __half m = __float2half(0.001f * (float)((r >> 10) & 1023) / 1024.0f);
        uint16_t db = __half_as_ushort(d), mb = __half_as_ushort(m);
        int d_off = type == T_Q6_K ? 208 : 0;
        blk[d_off] = (uint8_t)db;
        blk[d_off + 1] = (uint8_t)(db >> 8);
        if (type == T_Q4_1 || type == T_Q5_1 || type == T_Q4_K || type == T_Q5_K) {
            blk[2] = (uint8_t)mb;
            blk[3] = (uint8_t)(mb >> 8);
        }
    }
}

extern "C" sgllm_status sgllm__cuda_fill_random(sgllm__cuda *c, uint32_t type, void *w, int64_t rows, int64_t cols,
                                                uint64_t seed) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    int64_t rb = sgllm__cu_row_bytes(type, cols);
    if (!w || rows <= 0 || !rb || (uintptr_t)w % 8) return sgllm__cu_bad(c, "fill_random", "bad pointer, type or shape");
    int64_t bytes = rows * rb;
    if (bytes % 8) return sgllm__cu_bad(c, "fill_random", "size must be a multiple of 8 bytes");
    cudaSetDevice(c->device);
    sgllm__cu_fill_k<<<4096, 256, 0, c->stream>>>(type, (uint8_t *)w, bytes, seed);
    sgllm_status s = sgllm__cu_launched(c, "fill_random");
    if (s || type == T_F32 || type == T_F16 || type == T_BF16) return s;
    sgllm__cu_fill_scales_k<<<4096, 256, 0, c->stream>>>(type, (uint8_t *)w, bytes / sgllm__cu_blk_bytes(type), seed);
    return sgllm__cu_launched(c, "fill_random: scales");
}

// Sums every 16-byte word as four floats' bit patterns XORed, so nothing can be skipped;
// one write per block keeps the output traffic negligible.
static __global__ void __launch_bounds__(1024) sgllm__cu_read_k(const uint4 *p, int64_t n, float *sink) {
    uint32_t x = 0;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    for (; i + 3 * stride < n; i += 4 * stride) {
        uint4 a = __ldcs(p + i), b = __ldcs(p + i + stride), cc = __ldcs(p + i + 2 * stride), d = __ldcs(p + i + 3 * stride);
        x ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ cc.x ^ cc.y ^ cc.z ^ cc.w ^ d.x ^ d.y ^ d.z ^ d.w;
    }
    for (; i < n; i += stride) {
        uint4 a = __ldcs(p + i);
        x ^= a.x ^ a.y ^ a.z ^ a.w;
    }
    if (x == 0x7fc00001u) sink[0] = 1.0f; // practically never true; keeps the loads alive
}

extern "C" sgllm_status sgllm__cuda_read_bench(sgllm__cuda *c, const void *buf, size_t bytes, float *sink) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    if (!buf || !sink || (uintptr_t)buf % 16) return sgllm__cu_bad(c, "read_bench", "bad pointer");
    int blocks = 0;
    cudaSetDevice(c->device);
    if (sgllm__cu_check(c, cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, sgllm__cu_read_k, 1024, 0), "occupancy"))
        return SGLLM_ERR_BACKEND;
    sgllm__cu_read_k<<<(unsigned)(blocks * (c->disp.sm_count > 0 ? c->disp.sm_count : 1)), 1024, 0, c->stream>>>(
        (const uint4 *)buf, (int64_t)(bytes / 16), sink);
    return sgllm__cu_launched(c, "read_bench");
}

extern "C" sgllm_status sgllm__cuda_gemm_bf16(sgllm__cuda *c, const void *a, const void *b, void *cm, int64_t m,
                                              int64_t n, int64_t k) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    if (!a || !b || !cm || m <= 0 || n <= 0 || k <= 0 || m > INT32_MAX || n > INT32_MAX || k > INT32_MAX)
        return sgllm__cu_bad(c, "gemm_bf16", "bad pointer or shape");
    cudaSetDevice(c->device);
    float one = 1.0f, zero = 0.0f;
    // row-major C = A B is column-major C^T = B^T A^T
    cublasStatus_t st = cublasGemmEx(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)n, (int)m, (int)k, &one, b, CUDA_R_16BF,
                                     (int)n, a, CUDA_R_16BF, (int)k, &zero, cm, CUDA_R_16BF, (int)n, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) return sgllm__cu_fail(c, SGLLM_ERR_BACKEND, "gemm_bf16: status %d", (int)st);
    return SGLLM_OK;
}

extern "C" sgllm_status sgllm__cuda_timer_start(sgllm__cuda *c) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    cudaSetDevice(c->device);
    return sgllm__cu_check(c, cudaEventRecord(c->t0, c->stream), "timer");
}

extern "C" sgllm_status sgllm__cuda_timer_stop(sgllm__cuda *c, float *ms) {
    if (!c || !ms) return SGLLM_ERR_INVALID_ARGUMENT;
    cudaSetDevice(c->device);
    sgllm_status s = sgllm__cu_check(c, cudaEventRecord(c->t1, c->stream), "timer");
    if (!s) s = sgllm__cu_check(c, cudaEventSynchronize(c->t1), "timer");
    if (!s) s = sgllm__cu_check(c, cudaEventElapsedTime(ms, c->t0, c->t1), "timer");
    return s;
}

// --- 8. Forward helpers --------------------------------------------------------------------
// The small ops the model forward (sgllm_impl.c, section 8c) needs around the kernels above:
// the fp16 KV-cache write, bias add, row gather, logit softcap, a greedy argmax, and capture
// and replay of a CUDA graph on the context's stream.

// grid (n_tok): row pos[t] of each cache (through the page table) receives token t's k and v
// rounded to fp16 (round to nearest even, as the CPU cache does).
static __global__ void sgllm__cu_kv_write_k(const float *k, const float *v, int64_t stride, int64_t kvd,
                                            const int32_t *pos, __half *kc, __half *vc, const int32_t *pt,
                                            int32_t page_shift) {
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    int64_t t = blockIdx.x, row = sgllm__cu_page_row(pt, page_shift, pos[t]) * kvd;
    for (int64_t e = threadIdx.x; e < kvd; e += blockDim.x) {
        kc[row + e] = __float2half_rn(k[t * stride + e]);
        vc[row + e] = __float2half_rn(v[t * stride + e]);
    }
}

extern "C" sgllm_status sgllm__cuda_kv_write(sgllm__cuda *c, const float *k, const float *v, int64_t stride, int64_t kvd,
                                             const int32_t *pos, int64_t n_tok, uint16_t *k_cache, uint16_t *v_cache,
                                             const int32_t *page_table, int32_t page_size) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    if (!k || !v || !pos || !k_cache || !v_cache || kvd <= 0 || stride < kvd || n_tok < 0 || n_tok > INT32_MAX ||
        (page_table && (page_size <= 0 || (page_size & (page_size - 1)))))
        return sgllm__cu_bad(c, "kv_write", "bad pointer or shape");
    if (!n_tok) return SGLLM_OK;
    cudaSetDevice(c->device);
    return sgllm__cu_launch(c, "kv_write", sgllm__cu_kv_write_k, dim3((unsigned)n_tok), dim3(256), 0, k, v, stride, kvd,
                            pos, (__half *)k_cache, (__half *)v_cache, page_table,
                            sgllm__cu_page_shift(page_table, page_size));
}

static __global__ void sgllm__cu_add_bias_k(float *x, int64_t stride, const float *b, int64_t n) {
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    float *r = x + (int64_t)blockIdx.x * stride;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) r[j] += b[j];
}

extern "C" sgllm_status sgllm__cuda_add_bias(sgllm__cuda *c, float *x, int64_t stride, const float *b, int64_t n,
                                             int64_t n_tok) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    sgllm__cu_xq_forget(c, x);
    if (!x || !b || n <= 0 || stride < n || n_tok < 0 || n_tok > INT32_MAX) return sgllm__cu_bad(c, "add_bias", "bad pointer or shape");
    if (!n_tok) return SGLLM_OK;
    cudaSetDevice(c->device);
    return sgllm__cu_launch(c, "add_bias", sgllm__cu_add_bias_k, dim3((unsigned)n_tok), dim3(256), 0, x, stride, b, n);
}

static __global__ void sgllm__cu_gather_k(const float *src, const int32_t *idx, int64_t dim, float *dst) {
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    const float *s = src + (int64_t)idx[blockIdx.x] * dim;
    float *d = dst + (int64_t)blockIdx.x * dim;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) d[j] = s[j];
}

extern "C" sgllm_status sgllm__cuda_gather_rows(sgllm__cuda *c, const float *src, const int32_t *idx, int64_t n,
                                                int64_t dim, float *dst) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    sgllm__cu_xq_forget(c, dst);
    if (!src || !idx || !dst || dim <= 0 || n < 0 || n > INT32_MAX) return sgllm__cu_bad(c, "gather_rows", "bad pointer or shape");
    if (!n) return SGLLM_OK;
    cudaSetDevice(c->device);
    return sgllm__cu_launch(c, "gather_rows", sgllm__cu_gather_k, dim3((unsigned)n), dim3(256), 0, src, idx, dim, dst);
}

static __global__ void sgllm__cu_softcap_k(float *x, int64_t n, float cap) {
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        x[i] = cap * tanhf(x[i] / cap);
}

extern "C" sgllm_status sgllm__cuda_softcap(sgllm__cuda *c, float *x, int64_t n, float cap) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    sgllm__cu_xq_forget(c, x);
    if (!x || n < 0 || !(cap > 0)) return sgllm__cu_bad(c, "softcap", "bad pointer, size or cap");
    if (!n) return SGLLM_OK;
    cudaSetDevice(c->device);
    int64_t blocks = (n + 255) / 256;
    return sgllm__cu_launch(c, "softcap", sgllm__cu_softcap_k, dim3((unsigned)(blocks < 65536 ? blocks : 65536)), dim3(256),
                            0, x, n, cap);
}

// One block of 1024 threads per row; ties go to the lowest index, as the CPU sampler's argmax.
// NaN compares false and is never picked over a number.
static __global__ void __launch_bounds__(1024) sgllm__cu_argmax_k(const float *x, int64_t n, int32_t *out) {
    __shared__ float bv[32];
    __shared__ int64_t bi[32];
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    const float *r = x + (int64_t)blockIdx.x * n;
    float best = -INFINITY;
    int64_t besti = n;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
        if (r[j] > best) {
            best = r[j];
            besti = j;
        }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, best, o);
        int64_t oi = __shfl_xor_sync(0xffffffffu, besti, o);
        if (ov > best || (ov == best && oi < besti)) {
            best = ov;
            besti = oi;
        }
    }
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) {
        bv[warp] = best;
        bi[warp] = besti;
    }
    __syncthreads();
    if (warp == 0) {
        best = lane < (int)(blockDim.x / 32) ? bv[lane] : -INFINITY;
        besti = lane < (int)(blockDim.x / 32) ? bi[lane] : n;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, best, o);
            int64_t oi = __shfl_xor_sync(0xffffffffu, besti, o);
            if (ov > best || (ov == best && oi < besti)) {
                best = ov;
                besti = oi;
            }
        }
        if (lane == 0) out[blockIdx.x] = besti < n ? (int32_t)besti : 0;
    }
}

extern "C" sgllm_status sgllm__cuda_argmax(sgllm__cuda *c, const float *x, int64_t rows, int64_t n, int32_t *out) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    if (!x || !out || rows < 0 || rows > INT32_MAX || n <= 0 || n > INT32_MAX) return sgllm__cu_bad(c, "argmax", "bad pointer or shape");
    if (!rows) return SGLLM_OK;
    cudaSetDevice(c->device);
    return sgllm__cu_launch(c, "argmax", sgllm__cu_argmax_k, dim3((unsigned)rows), dim3(1024), 0, x, n, out);
}

extern "C" sgllm_status sgllm__cuda_graph_begin(sgllm__cuda *c) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    cudaSetDevice(c->device);
    return sgllm__cu_check(c, cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal), "graph capture");
}

// Ends the capture; *graph receives an executable graph (sgllm__cuda_graph_free), NULL on failure.
extern "C" sgllm_status sgllm__cuda_graph_end(sgllm__cuda *c, void **graph) {
    if (!c || !graph) return SGLLM_ERR_INVALID_ARGUMENT;
    *graph = NULL;
    cudaSetDevice(c->device);
    cudaGraph_t g = NULL;
    sgllm_status s = sgllm__cu_check(c, cudaStreamEndCapture(c->stream, &g), "graph capture");
    cudaGraphExec_t exec = NULL;
    if (!s) s = sgllm__cu_check(c, cudaGraphInstantiate(&exec, g, 0), "graph instantiate");
    if (g) cudaGraphDestroy(g);
    cudaGetLastError(); // a failed capture is reported here, not left sticky for later launches
    if (!s) *graph = (void *)exec;
    return s;
}

extern "C" sgllm_status sgllm__cuda_graph_launch(sgllm__cuda *c, void *graph) {
    if (!c || !graph) return SGLLM_ERR_INVALID_ARGUMENT;
    cudaSetDevice(c->device);
    return sgllm__cu_check(c, cudaGraphLaunch((cudaGraphExec_t)graph, c->stream), "graph launch");
}

extern "C" void sgllm__cuda_graph_free(sgllm__cuda *c, void *graph) {
    if (!c || !graph) return;
    cudaSetDevice(c->device);
    cudaGraphExecDestroy((cudaGraphExec_t)graph);
}

// --- 9. Sampling ---------------------------------------------------------------------------
// The CPU sampler (sgllm_impl.c, section 6) on the device, so a decode step downloads only its
// token. Same semantics: penalties, then greedy argmax when temperature <= 0; else the top-k
// set or the tokens within SGLLM__SAMPLER_CUT (40) of the top at this temperature, weights
// exp((logit - max) / temperature) in double rounded to float, min-p, top-p, and a draw with
// the caller's uniform (the arguments' u, or the position's in sgllm__cuda_sample_out's uni);
// the token goes where sgllm__cuda_sample_out says. Nothing sorts the vocabulary: a full pass
// finds the max and a histogram of the top 11 bits of each logit's order key, a second pass
// collects the few candidates above a threshold, and one block finds every cut (k-th token,
// top-p prefix, the drawn token) by radix searches over the candidates' 64-bit rank keys (logit
// descending, then id ascending: the CPU's tie rule), weighted by counts or by mass. The one order the
// CPU takes from its data structure rather than from the ranking, the top-k heap's order
// when top-p is off, is reproduced by replaying that heap over the vocabulary in one block.
// Two launches (four with penalties: a copy of the logits and the penalties first): the full
// pass, whose last block to finish plans the cut, and the collection, whose last block makes
// the draw; the tickets and the histogram are the context's (smp_ticket), back at zero after
// each. Every kernel reads the parameters from device memory, so the whole sampler is one fixed
// sequence of launches that a CUDA graph can capture. A caller that knows the sampling is
// greedy without penalties takes sgllm__cuda_sample_greedy instead: the same answer in one
// launch (blocks' bests, then the last block to finish reduces them).

#define SMP_BUCKETS SGLLM__CU_SMP_BUCKETS // 11-bit digits
#define SMP_STATS_BLOCKS 128
#define SMP_THREADS 1024

enum { SMP_DONE = 0, SMP_TOPK = 1, SMP_CUT = 2, SMP_HEAP = 3 };

typedef struct sgllm__cu_smp_state {
    float max;          // largest penalized logit (NaN excluded)
    int32_t argmax;     // its lowest index; n when every logit is NaN
    int32_t mode;       // SMP_*
    uint32_t key_lb;    // SMP_TOPK: candidates have order keys >= key_lb
    float cut;          // SMP_CUT: candidates have logits >= cut
    uint32_t count;     // candidates collected
} sgllm__cu_smp_state;

typedef struct sgllm__cu_smp_cand {
    int32_t id;
    float logit;
    float p; // weight, filled by the final kernel
} sgllm__cu_smp_cand;

typedef struct sgllm__cu_smp_layout {
    float *work;                 // (n) penalized logits
    float *part_v;               // (SMP_STATS_BLOCKS) per-block max
    int32_t *part_i;             // (SMP_STATS_BLOCKS) per-block argmax
    sgllm__cu_smp_state *state;
    sgllm__cu_smp_cand *cand;    // (2, n) candidates and the top-k set copied out of them, or the replayed heap
} sgllm__cu_smp_layout;

// The draw's uniform (sgllm__cuda_sample_out): the entry of uni for the sampled step's
// position, or the arguments'.
static __device__ double sgllm__cu_smp_u(const sgllm__cuda_sample_args *a, const sgllm__cuda_sample_out &o) {
    return o.uni && o.pos ? o.uni[(uint32_t)*o.pos % SGLLM__CUDA_SAMPLE_UNI] : a->u;
}
// Where a sampler's token goes (sgllm__cuda_sample_out): tok[0], then tok[1] = *pos + 1 when
// pos is set, and the host's read-back slot when host is set.
static __device__ void sgllm__cu_smp_emit(const sgllm__cuda_sample_out &o, int32_t t) {
    o.tok[0] = t;
    if (o.pos) o.tok[1] = *o.pos + 1;
    if (o.host) *(volatile int32_t *)o.host = t;
}

static size_t sgllm__cu_smp_layout_of(void *base, int64_t n, sgllm__cu_smp_layout *l) {
    size_t off = 0;
    char *b = (char *)base;
    auto take = [&](size_t bytes) {
        char *p = b ? b + off : NULL;
        off += (bytes + 255) / 256 * 256;
        return (void *)p;
    };
    l->work = (float *)take((size_t)n * 4);
    l->part_v = (float *)take(SMP_STATS_BLOCKS * 4);
    l->part_i = (int32_t *)take(SMP_STATS_BLOCKS * 4);
    l->state = (sgllm__cu_smp_state *)take(sizeof(sgllm__cu_smp_state));
    l->cand = (sgllm__cu_smp_cand *)take(2 * (size_t)n * sizeof(sgllm__cu_smp_cand));
    return off;
}

extern "C" size_t sgllm__cuda_sample_work_bytes(int64_t n_vocab) {
    sgllm__cu_smp_layout l;
    return n_vocab > 0 ? sgllm__cu_smp_layout_of(NULL, n_vocab, &l) : 0;
}

// Order-preserving unsigned key of a float (ascending key = ascending value).
static __device__ inline uint32_t sgllm__cu_fkey(float f) {
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Rank key: ascending = the CPU's ranking (higher logit first, then lower id).
static __device__ inline uint64_t sgllm__cu_rkey(float logit, int32_t id) {
    return ((uint64_t)(~sgllm__cu_fkey(logit)) << 32) | (uint32_t)id;
}

// Copies the logits to the work row that the penalties change. Like every sampler kernel it
// waits for its predecessors first (programmatic dependent launch) and lets the next start.
static __global__ void sgllm__cu_smp_copy_k(const float *x, float *work, int64_t n) {
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        work[i] = x[i];
}

// The CPU's penalty arithmetic, rounded step by step (no fused multiply-add).
static __global__ void sgllm__cu_smp_pen_k(const sgllm__cuda_sample_args *a, const float *x, const int32_t *tok,
                                           const int32_t *cnt, float *work, int64_t n) {
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    for (int32_t j = threadIdx.x; j < a->n_pen; j += blockDim.x) {
        int32_t t = tok[j];
        if (t < 0 || t >= n) continue;
        float l = x[t];
        l = l > 0 ? __fdiv_rn(l, a->repeat_penalty) : __fmul_rn(l, a->repeat_penalty);
        work[t] = __fsub_rn(__fsub_rn(l, __fmul_rn((float)cnt[j], a->frequency_penalty)), a->presence_penalty);
    }
}

static __device__ inline void sgllm__cu_better(float &bv, int32_t &bi, float v, int32_t i) {
    if (v > bv || (v == bv && i < bi)) {
        bv = v;
        bi = i;
    }
}

// The warp's best (value, index) by sgllm__cu_better, in every lane.
static __device__ inline void sgllm__cu_warp_better(float &bv, int32_t &bi) {
    for (int o = 16; o > 0; o >>= 1)
        sgllm__cu_better(bv, bi, __shfl_xor_sync(0xffffffffu, bv, o), __shfl_xor_sync(0xffffffffu, bi, o));
}

// The block's best (value, index) by sgllm__cu_better, in thread 0 (block of up to 1024).
static __device__ inline void sgllm__cu_block_better(float &bv, int32_t &bi, int32_t none) {
    __shared__ float wv[32];
    __shared__ int32_t wi[32];
    sgllm__cu_warp_better(bv, bi);
    if (threadIdx.x % 32 == 0) {
        wv[threadIdx.x / 32] = bv;
        wi[threadIdx.x / 32] = bi;
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        int nw = blockDim.x / 32;
        bv = threadIdx.x < nw ? wv[threadIdx.x] : -INFINITY;
        bi = threadIdx.x < nw ? wi[threadIdx.x] : none;
        sgllm__cu_warp_better(bv, bi);
    }
}

static __device__ void sgllm__cu_smp_plan(const sgllm__cuda_sample_args *a, int64_t n, const float *part_v,
                                          const int32_t *part_i, unsigned n_parts, const uint32_t *hist,
                                          sgllm__cu_smp_state *st, sgllm__cuda_sample_out out);

// Per block: max and its lowest index over a slice (NaN never wins), and the histogram
// (ticket + 1, the context's) of the top 11 order-key bits of every number; then the last
// block to finish plans the cut (sgllm__cu_smp_plan), zeroes the histogram and the ticket.
// Every thread's fence before the ticket and the last block's after it order the partials and
// the histogram's sums (read through L2) before the plan.
static __global__ void __launch_bounds__(SMP_THREADS)
    sgllm__cu_smp_stats_k(const sgllm__cuda_sample_args *a, const float *work, int64_t n, float *part_v, int32_t *part_i,
                          unsigned *ticket, sgllm__cu_smp_state *st, sgllm__cuda_sample_out out) {
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    uint32_t *hist = ticket + 1;
    // only the top-k path with top-p reads the histogram (sgllm__cu_smp_plan)
    const bool need_hist = a->temperature > 0 && a->top_k > 0 && a->top_k < n && a->top_p < 1;
    __shared__ uint32_t h[SMP_BUCKETS];
    for (int b = threadIdx.x; b < SMP_BUCKETS; b += blockDim.x) h[b] = 0;
    __syncthreads();
    int64_t per = (n + gridDim.x - 1) / gridDim.x, lo = blockIdx.x * per, hi = lo + per < n ? lo + per : n;
    float bv = -INFINITY;
    int32_t bi = (int32_t)n;
    for (int64_t base = lo; base < hi; base += blockDim.x) { // warp-uniform trip count for the match below
        int64_t i = base + threadIdx.x;
        float v = i < hi ? work[i] : NAN;
        bool ok = !isnan(v);
        if (ok) sgllm__cu_better(bv, bi, v, (int32_t)i);
        if (need_hist) { // logits crowd into few buckets: one shared atomic per bucket per warp
            uint32_t b = ok ? sgllm__cu_fkey(v) >> 21 : 0xffffffffu;
            unsigned peers = __match_any_sync(0xffffffffu, b);
            if (ok && (int)(threadIdx.x % 32) == __ffs(peers) - 1) atomicAdd(&h[b], (uint32_t)__popc(peers));
        }
    }
    sgllm__cu_block_better(bv, bi, (int32_t)n);
    if (threadIdx.x == 0) {
        part_v[blockIdx.x] = bv;
        part_i[blockIdx.x] = bi;
    }
    if (need_hist)
        for (int b = threadIdx.x; b < SMP_BUCKETS; b += blockDim.x)
            if (h[b]) atomicAdd(&hist[b], h[b]);
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (threadIdx.x < 32) sgllm__cu_smp_plan(a, n, part_v, part_i, gridDim.x, hist, st, out);
    __syncthreads(); // the plan has read the histogram
    if (need_hist)
        for (int b = threadIdx.x; b < SMP_BUCKETS; b += blockDim.x) hist[b] = 0;
    if (threadIdx.x == 0) *ticket = 0;
}

// The top-k threshold bucket: the largest b >= 1 whose suffix count (buckets b .. 2047) reaches
// k, else 0 (as a walk down from the top would find it). One warp, every lane gets it: lane l
// sums buckets 64 l .. 64 l + 63 (64 loads in flight, not 2048 in a row: a walk from the top
// through the empty buckets above the max took ~35 us), suffix sums across the lanes find the
// lane holding the answer, and its 64 buckets are scanned 32 at a time the same way.
static __device__ int sgllm__cu_smp_topk_bucket(const uint32_t *hist, uint32_t k) {
    static_assert(SMP_BUCKETS == 64 * 32, "64 buckets per lane");
    const int lane = threadIdx.x % 32;
    uint32_t mine = 0;
#pragma unroll 16
    for (int j = 0; j < 64; j++) mine += __ldcg(hist + 64 * lane + j);
    uint32_t suf = mine; // buckets 64 lane .. 2047
    for (int o = 1; o < 32; o <<= 1) {
        uint32_t t = __shfl_down_sync(0xffffffffu, suf, o);
        if (lane + o < 32) suf += t;
    }
    unsigned m = __ballot_sync(0xffffffffu, suf >= k);
    if (!m) return 0;
    int L = 31 - __clz((int)m);
    uint32_t base = __shfl_sync(0xffffffffu, suf - mine, L); // buckets above lane L's
    for (int h = 1; h >= 0; h--) {
        uint32_t v = __ldcg(hist + 64 * L + 32 * h + lane), s = v;
        for (int o = 1; o < 32; o <<= 1) {
            uint32_t t = __shfl_down_sync(0xffffffffu, s, o);
            if (lane + o < 32) s += t;
        }
        unsigned mh = __ballot_sync(0xffffffffu, base + s >= k);
        if (mh) {
            int b = 64 * L + 32 * h + (31 - __clz((int)mh));
            return b > 0 ? b : 0;
        }
        base += __shfl_sync(0xffffffffu, s, 0);
    }
    return 0; // not reached: lane L's buckets reach k
}

// One warp (the stats kernel's last block): the global max (its lanes reduce the blocks'
// partials: one L2 round trip, not one per block) and the top-k threshold, then one thread: the
// greedy and degenerate answers and the candidate state.
static __device__ void sgllm__cu_smp_plan(const sgllm__cuda_sample_args *a, int64_t n, const float *part_v,
                                          const int32_t *part_i, unsigned n_parts, const uint32_t *hist,
                                          sgllm__cu_smp_state *st, sgllm__cuda_sample_out out) {
    float bv = -INFINITY;
    int32_t bi = (int32_t)n;
    for (unsigned b = threadIdx.x; b < n_parts; b += 32) sgllm__cu_better(bv, bi, __ldcg(part_v + b), __ldcg(part_i + b));
    sgllm__cu_warp_better(bv, bi);
    const bool topk = a->top_k > 0 && a->top_k < n;
    // the histogram is there only for top-k with top-p (sgllm__cu_smp_stats_k)
    const int kb = a->temperature > 0 && topk && a->top_p < 1 ? sgllm__cu_smp_topk_bucket(hist, (uint32_t)a->top_k) : 0;
    if (threadIdx.x) return;
    st->max = bv;
    st->argmax = bi;
    st->count = 0;
    st->mode = SMP_DONE;
    const float temp = a->temperature;
    if (bi >= n) { // every logit NaN: the CPU's argmax gives 0
        sgllm__cu_smp_emit(out, 0);
        return;
    }
    if (temp <= 0 || !(bv > -INFINITY)) { // greedy, or nothing has weight: argmax as on the CPU
        sgllm__cu_smp_emit(out, bi);
        return;
    }
    if (topk && a->top_p >= 1) {
        st->mode = SMP_HEAP;
        return;
    }
    if (topk) {
        st->key_lb = (uint32_t)kb << 21;
        st->mode = SMP_TOPK;
        return;
    }
    float depth = 40.0f; // SGLLM__SAMPLER_CUT
    if (a->top_p >= 1 && a->min_p > 0) depth = fminf(depth, __fsub_rn(0.01f, logf(fminf(a->min_p, 1))));
    st->cut = __fsub_rn(bv, __fmul_rn(depth, temp));
    st->mode = SMP_CUT;
}

static __device__ void sgllm__cu_heap_final(const sgllm__cuda_sample_args *a, const float *work, int64_t n,
                                            sgllm__cu_smp_state *st, sgllm__cu_smp_cand *h, sgllm__cuda_sample_out out);
static __device__ void sgllm__cu_smp_final(const sgllm__cuda_sample_args *a, int64_t n, sgllm__cu_smp_state *st,
                                           sgllm__cu_smp_cand *cand, sgllm__cuda_sample_out out);

// The plan's candidates into cand (any order: the final searches rank them), then the last
// block to finish the draw (sgllm__cu_smp_final; the ticket back at zero first); the replayed
// top-k heap in block 0 alone. Fences around the ticket as in the stats kernel.
static __global__ void __launch_bounds__(SMP_THREADS, 1)
    sgllm__cu_smp_collect_k(const sgllm__cuda_sample_args *a, const float *work, int64_t n, sgllm__cu_smp_state *st,
                            sgllm__cu_smp_cand *cand, unsigned *ticket, sgllm__cuda_sample_out out) {
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    const int mode = st->mode;
    if (mode == SMP_HEAP && blockIdx.x == 0) sgllm__cu_heap_final(a, work, n, st, cand, out);
    if (mode != SMP_TOPK && mode != SMP_CUT) return;
    const uint32_t lb = st->key_lb;
    const float cut = st->cut;
    for (int64_t base = blockIdx.x * (int64_t)blockDim.x; base < n; base += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = base + threadIdx.x;
        float v = i < n ? work[i] : NAN;
        bool take = !isnan(v) && (mode == SMP_TOPK ? sgllm__cu_fkey(v) >= lb : v >= cut);
        unsigned mask = __ballot_sync(0xffffffffu, take);
        if (!mask) continue;
        int lane = threadIdx.x % 32, leader = __ffs(mask) - 1;
        uint32_t slot = 0;
        if (lane == leader) slot = atomicAdd(&st->count, (uint32_t)__popc(mask));
        slot = __shfl_sync(0xffffffffu, slot, leader) + __popc(mask & ((1u << lane) - 1));
        if (take) cand[slot] = sgllm__cu_smp_cand{(int32_t)i, v, 0.0f};
    }
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        last = atomicAdd(ticket, 1u) == gridDim.x - 1;
        if (last) *ticket = 0; // every block has counted
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    sgllm__cu_smp_final(a, n, st, cand, out);
}

// Block-wide double sum (every thread gets it); deterministic order.
static __device__ double sgllm__cu_block_dsum(double v, double *sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (threadIdx.x % 32 == 0) sh[threadIdx.x / 32] = v;
    __syncthreads();
    double t = 0;
    for (int w = 0; w < (int)(blockDim.x / 32); w++) t += sh[w];
    __syncthreads();
    return t;
}

typedef struct sgllm__cu_smp_member {
    uint64_t rank_max; // members have rank key <= rank_max
    float p_min;       // and weight >= p_min
} sgllm__cu_smp_member;

static __device__ inline bool sgllm__cu_is_member(const sgllm__cu_smp_cand &c, const sgllm__cu_smp_member &m) {
    return sgllm__cu_rkey(c.logit, c.id) <= m.rank_max && c.p >= m.p_min;
}

struct sgllm__cu_smp_shared {
    double mass[SMP_BUCKETS];
    uint32_t cnt[SMP_BUCKETS];
    double red[32];
    double wsum[32], wbase[32]; // a digit's weight per warp's 64 buckets, and before them
    uint64_t prefix;
    double cum;
    int found; // 0: not yet, 1: found, -1: none reaches the target
    int unique;
    int pick, last; // the first bucket that reaches the target, the last non-empty one
};

// Among the members of cand (m), ordered by rank key (by_id false) or by id (by_id true), the
// key of the first whose inclusive cumulative weight (1 each when count, else p) is >= target
// (> target when strict); the largest member key when none reaches it. 64-bit keys go in
// 11-bit digits, most significant first; a digit that leaves a single member ends early.
// The whole block (SMP_THREADS) takes part in every step. (The digit's 2048 buckets were
// scanned by one warp, 64 in a row per lane, then again by the lane holding the answer: ~5 us
// a digit.)
static_assert(SMP_BUCKETS == 2 * SMP_THREADS, "sgllm__cu_smp_search: two buckets per thread of the final kernel");
static __device__ uint64_t sgllm__cu_smp_search(const sgllm__cu_smp_cand *cand, uint32_t m,
                                                const sgllm__cu_smp_member &mem, bool by_id, bool count, double target,
                                                bool strict, sgllm__cu_smp_shared &sh) {
    const int top_bits = by_id ? 32 : 64;
    if (threadIdx.x == 0) {
        sh.prefix = 0;
        sh.cum = 0;
        sh.found = 0;
        sh.unique = 0;
    }
    __syncthreads();
    for (int hi = top_bits; hi > 0;) {
        int bits = hi >= 11 ? 11 : hi, shift = hi - bits;
        for (int b = threadIdx.x; b < SMP_BUCKETS; b += blockDim.x) {
            sh.mass[b] = 0;
            sh.cnt[b] = 0;
        }
        __syncthreads();
        const uint64_t prefix = sh.prefix;
        for (uint32_t i = threadIdx.x; i < m; i += blockDim.x) {
            sgllm__cu_smp_cand c = cand[i];
            if (!sgllm__cu_is_member(c, mem)) continue;
            uint64_t k = by_id ? (uint64_t)(uint32_t)c.id : sgllm__cu_rkey(c.logit, c.id);
            if (hi < top_bits && (k >> hi) != (prefix >> hi)) continue;
            int d = (int)((k >> shift) & ((1u << bits) - 1));
            atomicAdd(&sh.cnt[d], 1u);
            if (!count) atomicAdd(&sh.mass[d], (double)c.p); // a count reads cnt
        }
        __syncthreads();
        // the digit's buckets in order, two per thread (warp w: [64 w, 64 w + 64)): a scan
        // within the warp, the warps' totals scanned by warp 0, then the first bucket whose
        // inclusive weight reaches the target (atomicMin), or else the last non-empty one
        {
            const int lane = threadIdx.x % 32, w = threadIdx.x / 32, b0 = 2 * threadIdx.x;
            const uint32_t n0 = sh.cnt[b0], n1 = sh.cnt[b0 + 1];
            const double v0 = count ? (double)n0 : sh.mass[b0], v1 = count ? (double)n1 : sh.mass[b0 + 1];
            double incl = v0 + v1;
            for (int o = 1; o < 32; o <<= 1) {
                double t = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += t;
            }
            if (lane == 31) sh.wsum[w] = incl;
            if (threadIdx.x == 0) sh.pick = INT_MAX, sh.last = -1;
            __syncthreads();
            if (w == 0) {
                double t0 = sh.wsum[lane], in = t0;
                for (int o = 1; o < 32; o <<= 1) {
                    double t = __shfl_up_sync(0xffffffffu, in, o);
                    if (lane >= o) in += t;
                }
                sh.wbase[lane] = in - t0;
            }
            __syncthreads();
            const double cum = sh.cum, before = cum + sh.wbase[w] + (incl - v0 - v1), mid = before + v0, end = mid + v1;
            const bool hit0 = n0 && (strict ? mid > target : mid >= target);
            const bool hit1 = n1 && (strict ? end > target : end >= target);
            if (hit0 || hit1) atomicMin(&sh.pick, hit0 ? b0 : b0 + 1);
            if (n0 || n1) atomicMax(&sh.last, n1 ? b0 + 1 : b0);
            __syncthreads();
            const int pick = sh.pick != INT_MAX ? sh.pick : sh.last;
            if (pick >= 0 && (pick == b0 || pick == b0 + 1)) { // its thread: the weight below it, the prefix
                sh.cum = pick == b0 ? before : mid;
                if (sh.pick == INT_MAX) sh.found = -1; // none reaches: follow the largest key
                sh.prefix |= (uint64_t)pick << shift;
                sh.unique = sh.cnt[pick] == 1;
            }
            if (pick < 0 && threadIdx.x == 0) sh.found = -2; // no member at all
        }
        __syncthreads();
        if (sh.found == -2) return 0;
        hi = shift;
        if (sh.unique && hi > 0) { // the one member with this prefix is the answer
            const uint64_t pre = sh.prefix;
            for (uint32_t i = threadIdx.x; i < m; i += blockDim.x) {
                sgllm__cu_smp_cand c = cand[i];
                if (!sgllm__cu_is_member(c, mem)) continue;
                uint64_t k = by_id ? (uint64_t)(uint32_t)c.id : sgllm__cu_rkey(c.logit, c.id);
                if ((k >> hi) == (pre >> hi)) sh.prefix = k;
            }
            __syncthreads();
            break;
        }
        if (sh.found == -1) { // no member reaches the target: keep following the largest key
            target = INFINITY;
            strict = false;
        }
    }
    uint64_t r = sh.prefix;
    __syncthreads();
    return r;
}

static __device__ double sgllm__cu_smp_total(const sgllm__cu_smp_cand *cand, uint32_t m, const sgllm__cu_smp_member &mem,
                                             double *red) {
    double s = 0;
    for (uint32_t i = threadIdx.x; i < m; i += blockDim.x)
        if (sgllm__cu_is_member(cand[i], mem)) s += cand[i].p;
    return sgllm__cu_block_dsum(s, red);
}

static __device__ inline float sgllm__cu_smp_weight(float logit, float max, float temp) {
    return logit >= max ? 1.0f : (float)exp(__ddiv_rn(__dsub_rn((double)logit, (double)max), (double)temp));
}

// The CPU's top-k heap (section 6, sgllm__sampler_top_k), replayed: tokens reach thread 0 in
// index order, filtered by the heap's worst logit at the start of each chunk (a token the
// heap would reject at once never changes it), so the final layout is the CPU's exactly.
static __device__ bool sgllm__cu_heap_above(const sgllm__cu_smp_cand &a, const sgllm__cu_smp_cand &b) {
    // min-heap on the ranking: a is above b when it ranks last
    bool a_first = a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
    return !a_first;
}

static __device__ void sgllm__cu_heap_final(const sgllm__cuda_sample_args *a, const float *work, int64_t n,
                                            sgllm__cu_smp_state *st, sgllm__cu_smp_cand *h, sgllm__cuda_sample_out out) {
    __shared__ sgllm__cu_smp_cand buf[SMP_THREADS];
    __shared__ int32_t wcount[32];
    __shared__ int32_t hn, npass;
    __shared__ float root;
    const int64_t k = a->top_k;
    if (threadIdx.x == 0) {
        hn = 0;
        root = -INFINITY;
    }
    __syncthreads();
    for (int64_t base = 0; base < n; base += blockDim.x) {
        int64_t i = base + threadIdx.x;
        float v = i < n ? work[i] : NAN;
        bool pass = !isnan(v) && (hn < k || v > root);
        unsigned mask = __ballot_sync(0xffffffffu, pass);
        int lane = threadIdx.x % 32, w = threadIdx.x / 32;
        if (lane == 0) wcount[w] = __popc(mask);
        __syncthreads();
        if (threadIdx.x == 0) {
            int32_t t = 0;
            for (int j = 0; j < (int)(blockDim.x / 32); j++) {
                int32_t c = wcount[j];
                wcount[j] = t;
                t += c;
            }
            npass = t;
        }
        __syncthreads();
        if (pass) buf[wcount[w] + __popc(mask & ((1u << lane) - 1))] = sgllm__cu_smp_cand{(int32_t)i, v, 0.0f};
        __syncthreads();
        if (threadIdx.x == 0) {
            int32_t m = hn;
            for (int32_t j = 0; j < npass; j++) {
                sgllm__cu_smp_cand c = buf[j];
                if (m < k) { // push and sift up
                    int64_t x = m++;
                    h[x] = c;
                    while (x > 0) {
                        int64_t p = (x - 1) / 2;
                        if (!sgllm__cu_heap_above(h[x], h[p])) break;
                        sgllm__cu_smp_cand t = h[x];
                        h[x] = h[p];
                        h[p] = t;
                        x = p;
                    }
                } else if (c.logit > h[0].logit) { // replace the root and sift down
                    h[0] = c;
                    int64_t x = 0;
                    for (;;) {
                        int64_t l = 2 * x + 1, r = l + 1, top = x;
                        if (l < m && sgllm__cu_heap_above(h[l], h[top])) top = l;
                        if (r < m && sgllm__cu_heap_above(h[r], h[top])) top = r;
                        if (top == x) break;
                        sgllm__cu_smp_cand t = h[x];
                        h[x] = h[top];
                        h[top] = t;
                        x = top;
                    }
                }
            }
            hn = m;
            root = m == k ? h[0].logit : -INFINITY;
        }
        __syncthreads();
    }
    if (threadIdx.x != 0) return;
    // the rest in the CPU's order: weights, total, min-p (order kept), the draw
    const int32_t m = hn;
    const float temp = a->temperature;
    float max = -INFINITY;
    for (int32_t i = 0; i < m; i++) max = fmaxf(max, h[i].logit);
    if (m == 0 || !(max > -INFINITY)) {
        sgllm__cu_smp_emit(out, st->argmax);
        return;
    }
    for (int32_t i = 0; i < m; i++) h[i].p = sgllm__cu_smp_weight(h[i].logit, max, temp);
    int32_t kept = m;
    if (a->min_p > 0) {
        const float thr = a->min_p < 1 ? a->min_p : 1;
        kept = 0;
        for (int32_t i = 0; i < m; i++)
            if (h[i].p >= thr) h[kept++] = h[i];
    }
    double total = 0;
    for (int32_t i = 0; i < kept; i++) total += h[i].p;
    const double u = sgllm__cu_smp_u(a, out) * total;
    double cum = 0;
    for (int32_t i = 0; i < kept; i++) {
        cum += h[i].p;
        if (u < cum) {
            sgllm__cu_smp_emit(out, h[i].id);
            return;
        }
    }
    sgllm__cu_smp_emit(out, h[kept - 1].id);
}

// Up to 64 kept tokens (all members by rank; weights filled), in one warp: the same cuts as the
// searches below, on the tokens sorted in registers (two a lane: token i in lane i % 32, slot
// i / 32) by rank key (top-p) or by id (no top-p), with warp scans for the cumulative weights.
// Sums run in another order than the searches' (the CPU's is a third): the draws agree except
// where u sits within rounding of a boundary, as test_sample allows.
static __device__ void sgllm__cu_smp_final_warp(const sgllm__cuda_sample_args *a, const sgllm__cu_smp_cand *cand,
                                                uint32_t m, sgllm__cuda_sample_out out) {
    const int lane = threadIdx.x % 32;
    const bool by_id = !(a->top_p < 1);
    uint64_t key[2];
    float p[2];
    int32_t id[2];
#pragma unroll
    for (int j = 0; j < 2; j++) {
        uint32_t i = (uint32_t)lane + 32u * j;
        if (i < m) {
            sgllm__cu_smp_cand c = cand[i];
            key[j] = by_id ? (uint64_t)(uint32_t)c.id : sgllm__cu_rkey(c.logit, c.id);
            p[j] = c.p, id[j] = c.id;
        } else {
            key[j] = ~0ull, p[j] = 0.0f, id[j] = -1; // after every token, never a member
        }
    }
    // bitonic sort of the 64 (key, p, id), ascending
    for (int k = 2; k <= 64; k <<= 1)
        for (int s = k >> 1; s > 0; s >>= 1) {
            if (s == 32) { // partner: the lane's other slot (k is 64: ascending)
                if (key[0] > key[1]) {
                    uint64_t tk = key[0];
                    float tp = p[0];
                    int32_t ti = id[0];
                    key[0] = key[1], p[0] = p[1], id[0] = id[1];
                    key[1] = tk, p[1] = tp, id[1] = ti;
                }
                continue;
            }
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const int i = lane + 32 * j;
                uint64_t ok = __shfl_xor_sync(0xffffffffu, key[j], s);
                float op = __shfl_xor_sync(0xffffffffu, p[j], s);
                int32_t oi = __shfl_xor_sync(0xffffffffu, id[j], s);
                const bool lower = (lane & s) == 0, up = (i & k) == 0;
                if (lower == up ? ok < key[j] : ok > key[j]) key[j] = ok, p[j] = op, id[j] = oi;
            }
        }
    // inclusive cumulative weight in order over the tokens that satisfy `in`, and the first
    // such token (index) whose cumulative weight reaches the target (> when strict), else the
    // last one, else -1
    double cum[2];
    auto scan = [&](const bool in[2]) {
        double base = 0;
#pragma unroll
        for (int j = 0; j < 2; j++) {
            double v = in[j] ? (double)p[j] : 0.0;
            for (int o = 1; o < 32; o <<= 1) {
                double t = __shfl_up_sync(0xffffffffu, v, o);
                if (lane >= o) v += t;
            }
            cum[j] = base + v;
            base += __shfl_sync(0xffffffffu, v, 31);
        }
        return base;
    };
    auto first = [&](const bool in[2], double target, bool strict) {
#pragma unroll
        for (int j = 0; j < 2; j++) {
            unsigned hit = __ballot_sync(0xffffffffu, in[j] && (strict ? cum[j] > target : cum[j] >= target));
            if (hit) return 32 * j + __ffs((int)hit) - 1;
        }
        for (int j = 1; j >= 0; j--) {
            unsigned any = __ballot_sync(0xffffffffu, in[j]);
            if (any) return 32 * j + 31 - __clz((int)any);
        }
        return -1;
    };
    auto id_at = [&](int i) { return i < 0 ? 0 : __shfl_sync(0xffffffffu, id[i / 32], i % 32); };
    bool all[2] = {id[0] >= 0, id[1] >= 0};
    const double total = scan(all); // top-p's fraction is of this mass
    const float p_min = a->min_p > 0 ? (a->min_p < 1 ? a->min_p : 1) : -INFINITY;
    bool in[2] = {all[0] && p[0] >= p_min, all[1] && p[1] >= p_min};
    int32_t t;
    if (!by_id) {
        (void)scan(in);
        const int last = first(in, (double)a->top_p * total, false); // the prefix holding top_p of the mass
        const double tf = __shfl_sync(0xffffffffu, cum[last < 0 ? 0 : last / 32], last < 0 ? 0 : last % 32);
#pragma unroll
        for (int j = 0; j < 2; j++) in[j] = in[j] && lane + 32 * j <= last;
        t = id_at(first(in, tf - sgllm__cu_smp_u(a, out) * tf, false));
    } else {
        const double tk = scan(in);
        t = id_at(first(in, sgllm__cu_smp_u(a, out) * tk, true));
    }
    if (lane == 0) sgllm__cu_smp_emit(out, t);
}

// The draw among the collected candidates (one block of SMP_THREADS; modes SMP_TOPK, SMP_CUT).
static __device__ void sgllm__cu_smp_final(const sgllm__cuda_sample_args *a, int64_t n, sgllm__cu_smp_state *st,
                                           sgllm__cu_smp_cand *cand, sgllm__cuda_sample_out out) {
    const int mode = st->mode;
    __shared__ sgllm__cu_smp_shared sh;
    uint32_t m = __ldcg(&st->count);
    const float max = st->max, temp = a->temperature;
    for (uint32_t i = threadIdx.x; i < m; i += blockDim.x) cand[i].p = sgllm__cu_smp_weight(cand[i].logit, max, temp);
    __syncthreads();
    sgllm__cu_smp_member mem = {~0ull, -INFINITY};
    if (mode == SMP_TOPK) { // the k best: up to the k-th rank key, copied out so later searches scan only them
        mem.rank_max = sgllm__cu_smp_search(cand, m, mem, false, true, (double)a->top_k, false, sh);
        __shared__ uint32_t nk;
        if (threadIdx.x == 0) nk = 0;
        __syncthreads();
        sgllm__cu_smp_cand *kset = cand + n;
        for (uint32_t i = threadIdx.x; i < m; i += blockDim.x)
            if (sgllm__cu_is_member(cand[i], mem)) kset[atomicAdd(&nk, 1u)] = cand[i];
        __syncthreads();
        cand = kset;
        m = nk;
    }
    if (m <= 64) { // every kept token is a member by rank: one warp finishes (the default sampler's 40)
        if (threadIdx.x < 32) sgllm__cu_smp_final_warp(a, cand, m, out);
        return;
    }
    const double total = sgllm__cu_smp_total(cand, m, mem, sh.red); // top-p's fraction is of this mass
    if (a->min_p > 0) mem.p_min = a->min_p < 1 ? a->min_p : 1;
    if (a->top_p < 1) {
        // the shortest best-first prefix of the kept tokens that holds top_p of the mass; the
        // CPU then draws from it worst first: the drawn token is the first best-first one whose
        // inclusive mass reaches (prefix mass - u * prefix mass)
        const double goal = (double)a->top_p * total;
        mem.rank_max = sgllm__cu_smp_search(cand, m, mem, false, false, goal, false, sh);
        const double tf = sgllm__cu_smp_total(cand, m, mem, sh.red);
        uint64_t r = sgllm__cu_smp_search(cand, m, mem, false, false, tf - sgllm__cu_smp_u(a, out) * tf, false, sh);
        if (threadIdx.x == 0) sgllm__cu_smp_emit(out, (int32_t)(uint32_t)r);
    } else { // the kept tokens in index order (the CPU's collection order)
        const double tk = sgllm__cu_smp_total(cand, m, mem, sh.red);
        uint64_t r = sgllm__cu_smp_search(cand, m, mem, true, false, sgllm__cu_smp_u(a, out) * tk, true, sh);
        if (threadIdx.x == 0) sgllm__cu_smp_emit(out, (int32_t)r);
    }
}

// Greedy without penalties in one launch: each block the best of its slice (as the stats
// kernel), then the last block to finish (the context's ticket, back at zero after it) the
// best of the blocks and the plan kernel's answer: the lowest index of the largest logit, 0
// when every logit is NaN. The writers' fence before their ticket and the last one's after it
// order the partials (read through L2) before the reduction.
static __global__ void __launch_bounds__(SMP_THREADS)
    sgllm__cu_smp_greedy_k(const float *x, int64_t n, float *part_v, int32_t *part_i, unsigned *ticket,
                           sgllm__cuda_sample_out out) {
    sgllm__cu_pdl_wait();
    sgllm__cu_pdl_trigger();
    __shared__ bool last;
    int64_t per = (n + gridDim.x - 1) / gridDim.x, lo = blockIdx.x * per, hi = lo + per < n ? lo + per : n;
    float bv = -INFINITY;
    int32_t bi = (int32_t)n;
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        float v = x[i];
        if (!isnan(v)) sgllm__cu_better(bv, bi, v, (int32_t)i);
    }
    sgllm__cu_block_better(bv, bi, (int32_t)n);
    if (threadIdx.x == 0) {
        part_v[blockIdx.x] = bv;
        part_i[blockIdx.x] = bi;
        __threadfence();
        last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!last || threadIdx.x >= 32) return;
    __threadfence();
    bv = -INFINITY;
    bi = (int32_t)n;
    for (unsigned b = threadIdx.x; b < gridDim.x; b += 32) sgllm__cu_better(bv, bi, __ldcg(part_v + b), __ldcg(part_i + b));
    sgllm__cu_warp_better(bv, bi);
    if (threadIdx.x == 0) {
        sgllm__cu_smp_emit(out, bi < n ? bi : 0);
        *ticket = 0;
    }
}

extern "C" sgllm_status sgllm__cuda_sample_greedy(sgllm__cuda *c, const float *logits, int64_t n_vocab, void *work,
                                                  sgllm__cuda_sample_out out) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    if (!logits || !work || !out.tok || n_vocab <= 0 || n_vocab > INT32_MAX)
        return sgllm__cu_bad(c, "sample_greedy", "bad pointer or size");
    cudaSetDevice(c->device);
    sgllm__cu_smp_layout l;
    sgllm__cu_smp_layout_of(work, n_vocab, &l);
    int64_t blocks = (n_vocab + 2 * SMP_THREADS - 1) / (2 * SMP_THREADS); // two logits a thread at least
    unsigned grid = (unsigned)(blocks < SMP_STATS_BLOCKS ? blocks : SMP_STATS_BLOCKS);
    return sgllm__cu_launch(c, "sample: greedy", sgllm__cu_smp_greedy_k, dim3(grid), dim3(SMP_THREADS), 0, logits, n_vocab,
                            l.part_v, l.part_i, c->smp_ticket, out);
}

extern "C" sgllm_status sgllm__cuda_sample(sgllm__cuda *c, const float *logits, int64_t n_vocab,
                                           const sgllm__cuda_sample_args *args, const int32_t *pen_tokens,
                                           const int32_t *pen_counts, void *work, sgllm__cuda_sample_out out) {
    if (!c) return SGLLM_ERR_INVALID_ARGUMENT;
    if (!logits || !args || !work || !out.tok || n_vocab <= 0 || n_vocab > INT32_MAX)
        return sgllm__cu_bad(c, "sample", "bad pointer or size");
    cudaSetDevice(c->device);
    sgllm__cu_smp_layout l;
    sgllm__cu_smp_layout_of(work, n_vocab, &l);
    sgllm_status s;
    int64_t blocks = (n_vocab + 1023) / 1024;
    unsigned grid = (unsigned)(blocks < 4 * c->disp.sm_count ? blocks : 4 * c->disp.sm_count);
    if (grid < 1) grid = 1;
    const bool pen = pen_tokens && pen_counts; // else the passes read the logits themselves
    if (pen && ((s = sgllm__cu_launch(c, "sample: copy", sgllm__cu_smp_copy_k, dim3(grid), dim3(256), 0, logits, l.work,
                                      n_vocab)) ||
                (s = sgllm__cu_launch(c, "sample: penalties", sgllm__cu_smp_pen_k, dim3(1), dim3(256), 0, args, logits,
                                      pen_tokens, pen_counts, l.work, n_vocab))))
        return s;
    const float *w = pen ? (const float *)l.work : logits;
    unsigned grid_c = (unsigned)((n_vocab + SMP_THREADS - 1) / SMP_THREADS); // a value a thread, a block an SM at most
    if (grid_c > (unsigned)c->disp.sm_count) grid_c = (unsigned)c->disp.sm_count;
    if ((s = sgllm__cu_launch(c, "sample: stats and plan", sgllm__cu_smp_stats_k, dim3(SMP_STATS_BLOCKS), dim3(SMP_THREADS),
                              0, args, w, n_vocab, l.part_v, l.part_i, c->smp_ticket, l.state, out)))
        return s;
    return sgllm__cu_launch(c, "sample: collect and draw", sgllm__cu_smp_collect_k, dim3(grid_c > 0 ? grid_c : 1),
                            dim3(SMP_THREADS), 0, args, w, n_vocab, l.state, l.cand, c->smp_ticket, out);
}
