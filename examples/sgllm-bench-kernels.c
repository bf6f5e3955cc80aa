// sgllm-bench-kernels - kernel-level benchmarks of the CUDA backend against the device's own ceilings.
//
//   sgllm-bench-kernels [--reps N] [--sweep] [--attn] [--decode] [--launch] [--xq] [--decode-attn]
//                       [--timeline [KEYS]]
//
// --xq: only the read bandwidth and decode steps' matrix-vector products under the settings of
// the in-kernel activation quantization and the wide kernel's row words, see xq_steps.
// --decode-attn: only single-token decode attention as CUDA graphs of 200 launches (Gemma 3
// 270M and Llama-3-8B shapes at 512 and 4096 keys, the forward's split count): the merge
// kernel (two launches, dispatch.decode_merge 1) against the splits merged by the last split
// block (one launch, decode_merge 0) and across a thread block cluster (one launch, 2), on the
// dispatch's kernel (decode_mma), and the cluster merge on the other kernel.
// --launch: only launch-bound single-token ops as CUDA graphs of 200 launches (us per launch,
// with programmatic dependent launch on and off): the fused norm at 640 floats by threads per
// block, the fused q/k/v epilogue against the four ops it replaces (Gemma 3 270M shape), and
// the device sampler over Gemma's 262144-token vocabulary (greedy and default parameters), and
// the decode step of the small synthetic presets with the real files' weight types (gemma3-270m
// q4_k_m, smollm2-135m q4_1): sgllm_evaluate with its graph (upload, replay, logits download),
// the graph replay alone, and generate's step with host sampling (logits download) against
// device sampling (only the token read back), one step at a time and with the next step
// enqueued before the token is read (as sgllm_generate runs without penalties; greedy and default sampler).
// --timeline (only in the profiling build, `make timeline`): where a decode step's time goes, kernel
// by kernel, as the step runs (a CUDA graph, programmatic dependent launch): the synthetic
// presets' steps at KEYS keys of context (default 512), and inside decode attention, phase by
// phase, see bench_timeline.
// --decode: only the read bandwidth and whole decode steps' matrix-vector products replayed as
// CUDA graphs (Llama-3-8B, Gemma 3 270M and SmolLM2-135M shapes), see decode_steps.
// --sweep also times the Llama-3-8B matvecs under other matrix-vector launch settings
// (warps per block, warps per SM) and the prefill attention under other tiles, to choose the
// values for configs/<device>.json. --attn runs only the ceilings and the prefill attention.
// Measures the two ceilings itself: streaming read bandwidth (16-byte loads over 2 GiB) and
// the cuBLAS bf16 GEMM rate (8192^3). Then times the decode matrix-vector kernel at
// Llama-3-8B layer shapes in BF16, Q8_0 and Q4_K (random weights, rotated over enough copies
// to defeat the 50 MB L2) and prints each as a fraction of its bandwidth floor (weight bytes /
// measured read bandwidth), and a 2048-token prefill GEMM as a fraction of the measured cuBLAS
// rate. Times are medians of CUDA-event measurements after warm-up.
//
// It drives the backend's internal interface (it includes sgllm_impl.c like the tests do);
// model-level prefill/decode tok/s of files and presets are sgllm-bench's.
#define SGLLM_INTERNAL
#include "../sgllm_impl.c"

static sgllm__cuda *gpu;

static void die(const char *what) {
    fprintf(stderr, "sgllm-bench-kernels: %s: %s\n", what, gpu ? sgllm__cuda_errmsg(gpu) : "");
    exit(1);
}
#define TRY(call, what)                                                                                                \
    do {                                                                                                               \
        if ((call) != SGLLM_OK) die(what);                                                                             \
    } while (0)

static void *dev(size_t bytes) {
    void *p;
    TRY(sgllm__cuda_alloc(gpu, bytes, &p), "allocation");
    return p;
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}
static float median(float *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_float);
    return n % 2 ? v[n / 2] : 0.5f * (v[n / 2 - 1] + v[n / 2]);
}

enum { MAX_REPS = 101 };

static double read_bandwidth(int reps) {
    size_t bytes = (size_t)2 << 30;
    void *buf = dev(bytes);
    float *sink = (float *)dev(sizeof(float));
    TRY(sgllm__cuda_fill_random(gpu, SGLLM__T_BF16, buf, (int64_t)(bytes / 2 / 4096), 4096, 1), "fill");
    for (int i = 0; i < 3; i++) TRY(sgllm__cuda_read_bench(gpu, buf, bytes, sink), "read");
    float t[MAX_REPS];
    for (int i = 0; i < reps; i++) {
        TRY(sgllm__cuda_timer_start(gpu), "timer");
        TRY(sgllm__cuda_read_bench(gpu, buf, bytes, sink), "read");
        TRY(sgllm__cuda_timer_stop(gpu, &t[i]), "timer");
    }
    sgllm__cuda_dfree(gpu, buf);
    sgllm__cuda_dfree(gpu, sink);
    return (double)bytes / (median(t, reps) * 1e-3);
}

static double cublas_rate(int reps) {
    int64_t n = 8192;
    void *a = dev((size_t)(n * n * 2)), *b = dev((size_t)(n * n * 2)), *c = dev((size_t)(n * n * 2));
    TRY(sgllm__cuda_fill_random(gpu, SGLLM__T_BF16, a, n, n, 2), "fill");
    TRY(sgllm__cuda_fill_random(gpu, SGLLM__T_BF16, b, n, n, 3), "fill");
    for (int i = 0; i < 3; i++) TRY(sgllm__cuda_gemm_bf16(gpu, a, b, c, n, n, n), "gemm");
    float t[MAX_REPS];
    int r = reps < 20 ? reps : 20;
    for (int i = 0; i < r; i++) {
        TRY(sgllm__cuda_timer_start(gpu), "timer");
        TRY(sgllm__cuda_gemm_bf16(gpu, a, b, c, n, n, n), "gemm");
        TRY(sgllm__cuda_timer_stop(gpu, &t[i]), "timer");
    }
    sgllm__cuda_dfree(gpu, a);
    sgllm__cuda_dfree(gpu, b);
    sgllm__cuda_dfree(gpu, c);
    return 2.0 * (double)n * n * n / (median(t, r) * 1e-3);
}

// Median seconds per matvec call of a (rows, cols) weight of type t at batch n_tok, the
// weight rotated over enough copies that every call reads from device memory.
static double time_matvec(uint32_t t, int64_t rows, int64_t cols, int64_t n_tok, int reps, size_t *wbytes) {
    size_t bytes = (size_t)sgllm__row_bytes(t, (uint64_t)cols) * (size_t)rows;
    int copies = (int)((256u << 20) / bytes) + 1;
    if (copies > 16) copies = 16;
    void *w[16];
    for (int i = 0; i < copies; i++) {
        w[i] = dev(bytes);
        TRY(sgllm__cuda_fill_random(gpu, t, w[i], rows, cols, 100 + (uint64_t)i), "fill");
    }
    float *x = (float *)dev((size_t)(n_tok * cols) * 4), *y = (float *)dev((size_t)(n_tok * rows) * 4);
    TRY(sgllm__cuda_fill_random(gpu, SGLLM__T_F32, x, n_tok, cols, 7), "fill");
    for (int i = 0; i < copies; i++) TRY(sgllm__cuda_matvec(gpu, t, w[i], rows, cols, x, n_tok, y), "matvec");
    float tm[MAX_REPS];
    int per = copies < 8 ? 8 * copies : copies; // calls per timed batch
    for (int r = 0; r < reps; r++) {
        TRY(sgllm__cuda_timer_start(gpu), "timer");
        for (int i = 0; i < per; i++) TRY(sgllm__cuda_matvec(gpu, t, w[i % copies], rows, cols, x, n_tok, y), "matvec");
        TRY(sgllm__cuda_timer_stop(gpu, &tm[r]), "timer");
        tm[r] /= (float)per;
    }
    for (int i = 0; i < copies; i++) sgllm__cuda_dfree(gpu, w[i]);
    sgllm__cuda_dfree(gpu, x);
    sgllm__cuda_dfree(gpu, y);
    *wbytes = bytes;
    return median(tm, reps) * 1e-3;
}

static double time_gemm(uint32_t t, int64_t rows, int64_t cols, int64_t n_tok, int reps) {
    size_t bytes = (size_t)sgllm__row_bytes(t, (uint64_t)cols) * (size_t)rows;
    void *w = dev(bytes);
    float *x = (float *)dev((size_t)(n_tok * cols) * 4), *y = (float *)dev((size_t)(n_tok * rows) * 4);
    TRY(sgllm__cuda_fill_random(gpu, t, w, rows, cols, 11), "fill");
    TRY(sgllm__cuda_fill_random(gpu, SGLLM__T_F32, x, n_tok, cols, 12), "fill");
    TRY(sgllm__cuda_reserve(gpu, sgllm__cuda_gemm_scratch_bytes(t, rows, cols, n_tok)), "scratch");
    for (int i = 0; i < 3; i++) TRY(sgllm__cuda_gemm(gpu, t, w, rows, cols, x, n_tok, y), "gemm");
    float tm[MAX_REPS];
    int r = reps < 30 ? reps : 30;
    for (int i = 0; i < r; i++) {
        TRY(sgllm__cuda_timer_start(gpu), "timer");
        TRY(sgllm__cuda_gemm(gpu, t, w, rows, cols, x, n_tok, y), "gemm");
        TRY(sgllm__cuda_timer_stop(gpu, &tm[i]), "timer");
    }
    sgllm__cuda_dfree(gpu, w);
    sgllm__cuda_dfree(gpu, x);
    sgllm__cuda_dfree(gpu, y);
    return median(tm, r) * 1e-3;
}

// Median seconds of a causal attention over n_q tokens at positions 0 .. n_q - 1 (the
// prefill of an empty cache), by the prefill kernel (decode = false) or the decode kernel
// per query with the forward's split choice (the path before section 6b). Two copies of
// every buffer alternate, together larger than L2.
static double time_attn(bool decode, int32_t nh, int32_t nkv, int32_t hd, int32_t n_q, int reps) {
    int64_t qd = (int64_t)nh * hd, kvd = (int64_t)nkv * hd;
    float *q[2], *out[2];
    uint16_t *kc[2], *vc[2];
    for (int i = 0; i < 2; i++) {
        q[i] = (float *)dev((size_t)(n_q * qd) * 4);
        out[i] = (float *)dev((size_t)(n_q * qd) * 4);
        kc[i] = (uint16_t *)dev((size_t)(n_q * kvd) * 2);
        vc[i] = (uint16_t *)dev((size_t)(n_q * kvd) * 2);
        TRY(sgllm__cuda_fill_random(gpu, SGLLM__T_F32, q[i], n_q, qd, 20 + (uint64_t)i), "fill");
        TRY(sgllm__cuda_fill_random(gpu, SGLLM__T_F16, kc[i], n_q, kvd, 30 + (uint64_t)i), "fill");
        TRY(sgllm__cuda_fill_random(gpu, SGLLM__T_F16, vc[i], n_q, kvd, 40 + (uint64_t)i), "fill");
    }
    int32_t *pos = (int32_t *)malloc((size_t)n_q * 4);
    for (int32_t i = 0; i < n_q; i++) pos[i] = i;
    int32_t *dpos = (int32_t *)dev((size_t)n_q * 4);
    TRY(sgllm__cuda_upload(gpu, dpos, pos, (size_t)n_q * 4), "upload");
    free(pos);
    const sgllm__cuda_dispatch *d = sgllm__cuda_get_dispatch(gpu);
    int32_t splits = sgllm__dispatch_decode_splits(d, (int64_t)n_q * nkv * ((nh / nkv + 7) / 8), n_q);
    if (decode) TRY(sgllm__cuda_reserve(gpu, sgllm__cuda_attn_scratch_bytes(nh, hd, n_q, splits)), "scratch");
    float scale = 1.0f / sqrtf((float)hd), tm[MAX_REPS];
    int r = reps < 30 ? reps : 30;
    for (int i = -2; i < r; i++) {
        if (i >= 0) TRY(sgllm__cuda_timer_start(gpu), "timer");
        for (int k = 0; k < 2; k++) {
            if (decode)
                TRY(sgllm__cuda_attn_decode(gpu, q[k], kc[k], vc[k], NULL, 0, nh, nkv, hd, dpos, n_q, 0, scale, splits,
                                            out[k]), "attention");
            else
                TRY(sgllm__cuda_attn_prefill(gpu, q[k], kc[k], vc[k], NULL, 0, nh, nkv, hd, dpos, n_q, 0, scale, out[k]),
                    "attention");
        }
        if (i >= 0) {
            TRY(sgllm__cuda_timer_stop(gpu, &tm[i]), "timer");
            tm[i] /= 2;
        }
    }
    for (int i = 0; i < 2; i++) {
        sgllm__cuda_dfree(gpu, q[i]);
        sgllm__cuda_dfree(gpu, out[i]);
        sgllm__cuda_dfree(gpu, kc[i]);
        sgllm__cuda_dfree(gpu, vc[i]);
    }
    sgllm__cuda_dfree(gpu, dpos);
    return median(tm, r) * 1e-3;
}

// Causal prefill attention of 2048 tokens: FLOPs 4 n_head head_dim pairs (q.k and p.v, pairs
// = visible keys summed over the queries), as TFLOP/s and a fraction of the cuBLAS rate; the
// decode kernel per query (the old path) beside it. sweep: the prefill tile variants too.
static void bench_prefill_attn(double flops, int reps, bool sweep) {
    static const struct {
        const char *name;
        int32_t nh, nkv, hd;
    } shapes[] = {{"Llama-3-8B", 32, 8, 128}, {"Gemma-3-27B", 32, 16, 128}, {"hd 256 (Gemma 3)", 8, 4, 256},
                  {"hd 256, 16 heads", 16, 8, 256}, {"hd 64", 32, 8, 64}};
    int32_t n = 2048;
    double pairs = (double)n * (n + 1) / 2;
    printf("\nprefill attention, causal, %d tokens (fraction of the measured cuBLAS bf16 rate)\n", (int)n);
    printf("%-18s %-9s %10s %9s %7s %12s %9s\n", "shape", "heads", "us", "TFLOP/s", "frac", "decode us", "TFLOP/s");
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        double fl = 4.0 * shapes[si].nh * shapes[si].hd * pairs;
        double tp = time_attn(false, shapes[si].nh, shapes[si].nkv, shapes[si].hd, n, reps);
        double td = time_attn(true, shapes[si].nh, shapes[si].nkv, shapes[si].hd, n, reps < 5 ? reps : 5);
        printf("%-18s %3d/%-2d/%-3d %9.1f %9.1f %6.1f%% %12.1f %9.1f\n", shapes[si].name, shapes[si].nh, shapes[si].nkv,
               shapes[si].hd, tp * 1e6, fl / tp / 1e12, 100 * fl / tp / flops, td * 1e6, fl / td / 1e12);
    }
    if (!sweep) return;
    static const int tiles[][3] = {{128, 64, 8}, {128, 64, 4}, {64, 64, 4}, {64, 32, 4}, {32, 32, 2}};
    const sgllm__cuda_dispatch base = *sgllm__cuda_get_dispatch(gpu);
    printf("sweep: prefill tile (bm, bn, warps) for every head-dim class, TFLOP/s per shape\n");
    for (size_t k = 0; k < sizeof tiles / sizeof tiles[0]; k++) {
        sgllm__cuda_dispatch dd = base;
        for (int c = 0; c < 3; c++) {
            dd.prefill_block_m[c] = tiles[k][0];
            dd.prefill_block_n[c] = tiles[k][1];
        }
        dd.prefill_warps[0] = dd.prefill_warps[1] = tiles[k][2];
        sgllm__cuda_set_dispatch(gpu, &dd);
        printf("  (%3d, %2d, %d):", tiles[k][0], tiles[k][1], tiles[k][2]);
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            double fl = 4.0 * shapes[si].nh * shapes[si].hd * pairs;
            printf("  %6.1f", fl / time_attn(false, shapes[si].nh, shapes[si].nkv, shapes[si].hd, n, reps) / 1e12);
        }
        printf("\n");
    }
    sgllm__cuda_set_dispatch(gpu, &base);
}

// Whole decode steps' matrix-vector products as one CUDA graph (how the decode step runs): for
// every layer q, k, v, o, gate, up, the gated activation, down, then the output matrix, at
// batch 1. Layer weights are distinct per layer up to `copies` (then reused: one Llama-3-8B
// layer alone is far larger than the L2). Five ways: separate launches on the staged int8
// kernel (matvec_int8 = 1, as before the fused launches) and on the direct kernel
// (matvec_int8 = 2); q/k/v and gate/up through matvec_multi / matvec_gated as the forward
// calls them (matvec_int8 = 1) and with every launch on the direct kernel; and every launch on
// the wide-load kernel (matvec_int8 = 3, single and fused). With --sweep, the Llama-3-8B steps
// also time the wide kernel under other launch shapes.
typedef struct {
    const char *name;
    int64_t n_embd, q_dim, kv_dim, n_ff, n_layer, n_vocab;
    int copies;
    bool out_q8; // output matrix Q8_0 whatever the layer type (the small models' tied embeddings)
} decode_shape;

// t where cols is whole blocks of t, else Q8_0 (as the synthetic presets do)
static uint32_t fit_type(uint32_t t, int64_t cols) { return cols % sgllm__types[t].block ? SGLLM__T_Q8_0 : t; }

static double time_graph(void *graph, int reps) {
    for (int i = 0; i < 3; i++) TRY(sgllm__cuda_graph_launch(gpu, graph), "graph launch");
    float tm[MAX_REPS];
    for (int r = 0; r < reps; r++) {
        TRY(sgllm__cuda_timer_start(gpu), "timer");
        TRY(sgllm__cuda_graph_launch(gpu, graph), "graph launch");
        TRY(sgllm__cuda_timer_stop(gpu, &tm[r]), "timer");
    }
    return median(tm, reps) * 1e-3;
}

static void decode_step(const decode_shape *sh, uint32_t type, const sgllm__cuda_dispatch *disp, double bw, int reps,
                        bool sweep) {
    int64_t E = sh->n_embd, Q = sh->q_dim, KV = sh->kv_dim, F = sh->n_ff;
    // per layer: q, k, v, o, gate, up, down
    int64_t rows[7] = {Q, KV, KV, E, F, F, E}, cols[7] = {E, E, E, Q, E, E, F};
    uint32_t types[7];
    size_t bytes[7], floor_bytes = 0;
    void *w[64][7];
    for (int m = 0; m < 7; m++) {
        types[m] = fit_type(type, cols[m]);
        bytes[m] = (size_t)sgllm__row_bytes(types[m], (uint64_t)cols[m]) * (size_t)rows[m];
    }
    for (int l = 0; l < sh->copies; l++)
        for (int m = 0; m < 7; m++) {
            w[l][m] = dev(bytes[m]);
            TRY(sgllm__cuda_fill_random(gpu, types[m], w[l][m], rows[m], cols[m], 1000 + 7 * (uint64_t)l + (uint64_t)m),
                "fill");
        }
    for (int m = 0; m < 7; m++) floor_bytes += bytes[m] * (size_t)sh->n_layer;
    uint32_t ot = sh->out_q8 ? SGLLM__T_Q8_0 : type;
    size_t ob = (size_t)sgllm__row_bytes(ot, (uint64_t)E) * (size_t)sh->n_vocab;
    void *wo = dev(ob);
    TRY(sgllm__cuda_fill_random(gpu, ot, wo, sh->n_vocab, E, 999), "fill");
    floor_bytes += ob;
    int64_t xmax = F > Q ? F : Q;
    float *x = (float *)dev((size_t)xmax * 4), *y[6];
    TRY(sgllm__cuda_fill_random(gpu, SGLLM__T_F32, x, 1, xmax, 5), "fill");
    for (int i = 0; i < 5; i++) y[i] = (float *)dev((size_t)(F > Q ? F : Q) * 4);
    y[5] = (float *)dev((size_t)sh->n_vocab * 4);
    double floor_t = (double)floor_bytes / bw, t_way[5], t_out[3];
    static const char *way_name[5] = {"staged", "direct", "fused (matvec_int8 1)", "fused, all direct",
                                      "wide (matvec_int8 3)"};
    // one decode step's products under dispatch dd (fused: q/k/v and gate/up through the fused
    // entry points), or the output matrix alone, as one graph
    void *graph = NULL;
#define STEP_GRAPH(dd, fused, out_only)                                                                                \
    do {                                                                                                               \
        sgllm__cuda_set_dispatch(gpu, &(dd));                                                                          \
        TRY(sgllm__cuda_graph_begin(gpu), "graph begin");                                                              \
        for (int64_t l = 0; l < (out_only ? 0 : sh->n_layer); l++) {                                                   \
            void **L = w[l % sh->copies];                                                                              \
            if (fused) {                                                                                               \
                int64_t r3[3] = {Q, KV, KV};                                                                           \
                const void *w3[3] = {L[0], L[1], L[2]};                                                                \
                float *y3[3] = {y[0], y[1], y[2]};                                                                     \
                TRY(sgllm__cuda_matvec_multi(gpu, 3, types, w3, r3, E, x, 1, y3), "multi");                           \
            } else {                                                                                                   \
                for (int m = 0; m < 3; m++)                                                                            \
                    TRY(sgllm__cuda_matmul(gpu, types[m], L[m], rows[m], E, x, 1, y[m]), "matmul");                    \
            }                                                                                                          \
            TRY(sgllm__cuda_matmul(gpu, types[3], L[3], E, Q, x, 1, y[3]), "matmul");                                 \
            if (fused) {                                                                                               \
                TRY(sgllm__cuda_matvec_gated(gpu, SGLLM__CUDA_ACT_SILU, types[4], L[4], types[5], L[5], F, E, x, 1,    \
                                             y[0], y[1]),                                                              \
                    "gated");                                                                                          \
            } else {                                                                                                   \
                TRY(sgllm__cuda_matmul(gpu, types[4], L[4], F, E, x, 1, y[0]), "matmul");                              \
                TRY(sgllm__cuda_matmul(gpu, types[5], L[5], F, E, x, 1, y[1]), "matmul");                              \
                TRY(sgllm__cuda_gated_act(gpu, SGLLM__CUDA_ACT_SILU, y[0], y[1], F), "gated act");                     \
            }                                                                                                          \
            TRY(sgllm__cuda_matmul(gpu, types[6], L[6], E, F, x, 1, y[4]), "matmul");                                 \
        }                                                                                                              \
        TRY(sgllm__cuda_matmul(gpu, ot, wo, sh->n_vocab, E, x, 1, y[5]), "matmul");                                    \
        TRY(sgllm__cuda_graph_end(gpu, &graph), "graph end");                                                          \
    } while (0)
    for (int way = 0; way < 5; way++) {
        sgllm__cuda_dispatch dd = *disp;
        dd.matvec_int8 = way == 4 ? 3 : way == 1 || way == 3 ? 2 : 1;
        STEP_GRAPH(dd, way >= 2, false);
        t_way[way] = time_graph(graph, reps);
        sgllm__cuda_graph_free(gpu, graph);
        if (way < 2 || way == 4) { // the output matrix alone, in a graph of its own
            STEP_GRAPH(dd, false, true);
            t_out[way < 2 ? way : 2] = time_graph(graph, reps);
            sgllm__cuda_graph_free(gpu, graph);
        }
    }
    sgllm__cuda_set_dispatch(gpu, disp);
    printf("%-11s %-5s %8.1f MB floor %8.1f us |", sh->name, sgllm__type_name(type), floor_bytes / 1e6, floor_t * 1e6);
    for (int way = 0; way < 5; way++)
        printf(" %s %.1f us %.1f%% |", way_name[way], t_way[way] * 1e6, 100 * floor_t / t_way[way]);
    printf(" output %s %lldx%lld alone: staged %.1f us, direct %.1f us, wide %.1f us (floor %.1f us)\n",
           sgllm__type_name(ot), (long long)sh->n_vocab, (long long)E, t_out[0] * 1e6, t_out[1] * 1e6, t_out[2] * 1e6,
           (double)ob / bw * 1e6);
    if (sweep && type != SGLLM__T_BF16) { // the wide kernel's launch shape
        printf("  sweep wide, %% of floor by warps/block x warps/SM:");
        static const int sw[3] = {2, 4, 8}, sps[5] = {8, 16, 24, 32, 48};
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 5; b++) {
                sgllm__cuda_dispatch dd = *disp;
                dd.matvec_int8 = 3, dd.matvec_warps = sw[a], dd.matvec_wide_warps_per_sm = sps[b];
                STEP_GRAPH(dd, true, false);
                double tm = time_graph(graph, reps);
                sgllm__cuda_graph_free(gpu, graph);
                printf(" %dx%d %.1f%%", sw[a], sps[b], 100 * floor_t / tm);
            }
        printf("\n");
    }
#undef STEP_GRAPH
    fflush(stdout);
    for (int l = 0; l < sh->copies; l++)
        for (int m = 0; m < 7; m++) sgllm__cuda_dfree(gpu, w[l][m]);
    sgllm__cuda_dfree(gpu, wo);
    sgllm__cuda_dfree(gpu, x);
    for (int i = 0; i < 6; i++) sgllm__cuda_dfree(gpu, y[i]);
}

static void decode_steps(const sgllm__cuda_dispatch *disp, double bw, int reps, bool sweep) {
    static const decode_shape shapes[] = {{"Llama-3-8B", 4096, 4096, 1024, 14336, 32, 128256, 2, false},
                                          {"Gemma3-270M", 640, 1024, 256, 2048, 18, 262144, 18, true},
                                          {"SmolLM2-135M", 576, 576, 192, 1536, 30, 49152, 30, true}};
    static const uint32_t types[] = {SGLLM__T_BF16, SGLLM__T_Q8_0, SGLLM__T_Q4_K, SGLLM__T_Q6_K, SGLLM__T_Q4_0};
    printf("\ndecode step matrix-vector products as one CUDA graph (batch 1; fraction = weight bytes / read bandwidth "
           "/ time; small shapes: rows not whole 256-blocks use Q8_0, output Q8_0)\n");
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
            if (si && types[ti] == SGLLM__T_Q6_K) continue;
            decode_step(&shapes[si], types[ti], disp, bw, reps, sweep && si == 0);
        }
}

// --xq: decode steps' matrix-vector products as one graph each (fused launches as the forward
// calls them, matvec_int8 3) under settings of dispatch.matvec_wide_align (the wide kernel's
// smallest row word) and matvec_xq_inline (activation values up to which the kernels quantize
// in-block instead of in a launch of their own), at batches 1 and 4. The first setting (16, 0)
// is the behaviour before both fields. Shapes: Llama-3-8B in Q8_0 and Q4_K; Gemma 3 270M and
// SmolLM2-135M as the synthetic q8_0 presets build them (all Q8_0) and with their files' type
// mix (Gemma: Q5_0 q/k/gate/up, v Q5_0 / Q8_0 and down Q4_K / Q6_K on alternate layers, o
// Q4_K; SmolLM2: all Q4_1; both with a Q8_0 output matrix); the output matrix also alone.
typedef struct {
    const char *name;
    int64_t n_embd, q_dim, kv_dim, n_ff, n_layer, n_vocab;
    int copies;
    uint32_t lt[2][7]; // layer types (even, odd layers): q, k, v, o, gate, up, down
    uint32_t out;
} xq_shape;

static void xq_step(const xq_shape *sh, const sgllm__cuda_dispatch *disp, double bw, int reps) {
    static const int set[][2] = {{16, 0}, {16, 32768}, {8, 0}, {8, 2048}, {8, 4096}, {8, 16384}, {8, 32768}};
    enum { N_SET = sizeof set / sizeof set[0] };
    int64_t E = sh->n_embd, Q = sh->q_dim, KV = sh->kv_dim, F = sh->n_ff;
    int64_t rows[7] = {Q, KV, KV, E, F, F, E}, cols[7] = {E, E, E, Q, E, E, F};
    void *w[64][7];
    size_t floor_bytes = 0;
    for (int l = 0; l < sh->copies; l++)
        for (int m = 0; m < 7; m++) {
            uint32_t t = sh->lt[l % 2][m];
            size_t b = (size_t)sgllm__row_bytes(t, (uint64_t)cols[m]) * (size_t)rows[m];
            w[l][m] = dev(b);
            TRY(sgllm__cuda_fill_random(gpu, t, w[l][m], rows[m], cols[m], 2000 + 7 * (uint64_t)l + (uint64_t)m), "fill");
        }
    for (int64_t l = 0; l < sh->n_layer; l++)
        for (int m = 0; m < 7; m++) floor_bytes += (size_t)sgllm__row_bytes(sh->lt[l % 2][m], (uint64_t)cols[m]) * (size_t)rows[m];
    size_t ob = (size_t)sgllm__row_bytes(sh->out, (uint64_t)E) * (size_t)sh->n_vocab;
    void *wo = dev(ob);
    TRY(sgllm__cuda_fill_random(gpu, sh->out, wo, sh->n_vocab, E, 1999), "fill");
    floor_bytes += ob;
    int64_t xmax = F > Q ? F : Q;
    float *x = (float *)dev((size_t)(4 * xmax) * 4), *y[5];
    TRY(sgllm__cuda_fill_random(gpu, SGLLM__T_F32, x, 4, xmax, 5), "fill");
    for (int i = 0; i < 4; i++) y[i] = (float *)dev((size_t)(4 * xmax) * 4);
    y[4] = (float *)dev((size_t)(4 * sh->n_vocab) * 4);
    for (int64_t nt = 1; nt <= 4; nt *= 4) {
        double t_step[N_SET], t_out[N_SET];
        for (int k = 0; k < N_SET; k++) {
            sgllm__cuda_dispatch dd = *disp;
            dd.matvec_int8 = 3, dd.matvec_wide_align = set[k][0], dd.matvec_xq_inline = set[k][1];
            sgllm__cuda_set_dispatch(gpu, &dd);
            for (int whole = 1; whole >= 0; whole--) {
                void *graph = NULL;
                TRY(sgllm__cuda_graph_begin(gpu), "graph begin");
                for (int64_t l = 0; whole && l < sh->n_layer; l++) {
                    void **L = w[l % sh->copies];
                    const uint32_t *lt = sh->lt[l % 2];
                    const void *w3[3] = {L[0], L[1], L[2]};
                    float *y3[3] = {y[0], y[1], y[2]};
                    TRY(sgllm__cuda_matvec_multi(gpu, 3, lt, w3, rows, E, x, nt, y3), "multi");
                    TRY(sgllm__cuda_matmul(gpu, lt[3], L[3], E, Q, x, nt, y[3]), "matmul");
                    TRY(sgllm__cuda_matvec_gated(gpu, SGLLM__CUDA_ACT_SILU, lt[4], L[4], lt[5], L[5], F, E, x, nt, y[0], y[1]),
                        "gated");
                    TRY(sgllm__cuda_matmul(gpu, lt[6], L[6], E, F, x, nt, y[3]), "matmul");
                }
                TRY(sgllm__cuda_matmul(gpu, sh->out, wo, sh->n_vocab, E, x, nt, y[4]), "matmul");
                TRY(sgllm__cuda_graph_end(gpu, &graph), "graph end");
                (whole ? t_step : t_out)[k] = time_graph(graph, reps);
                sgllm__cuda_graph_free(gpu, graph);
            }
        }
        printf("%-22s n=%lld floor %7.1f us |", sh->name, (long long)nt, (double)floor_bytes / bw * 1e6);
        for (int k = 0; k < N_SET; k++)
            printf(" %2d/%-5d %7.1f us %5.1f%% |", set[k][0], set[k][1], t_step[k] * 1e6, 100 * (double)floor_bytes / bw / t_step[k]);
        printf(" output alone (floor %.1f us):", (double)ob / bw * 1e6);
        for (int k = 0; k < N_SET; k++) printf(" %.1f", t_out[k] * 1e6);
        printf("\n");
        fflush(stdout);
    }
    sgllm__cuda_set_dispatch(gpu, disp);
    for (int l = 0; l < sh->copies; l++)
        for (int m = 0; m < 7; m++) sgllm__cuda_dfree(gpu, w[l][m]);
    sgllm__cuda_dfree(gpu, wo);
    sgllm__cuda_dfree(gpu, x);
    for (int i = 0; i < 5; i++) sgllm__cuda_dfree(gpu, y[i]);
}

static void xq_steps(const sgllm__cuda_dispatch *disp, double bw, int reps) {
    enum { A = SGLLM__T_Q8_0, K4 = SGLLM__T_Q4_K, K6 = SGLLM__T_Q6_K, F5 = SGLLM__T_Q5_0, F1 = SGLLM__T_Q4_1 };
    static const xq_shape shapes[] = {
        {"Llama-3-8B Q8_0", 4096, 4096, 1024, 14336, 32, 128256, 2, {{A, A, A, A, A, A, A}, {A, A, A, A, A, A, A}}, A},
        {"Llama-3-8B Q4_K", 4096, 4096, 1024, 14336, 32, 128256, 2,
         {{K4, K4, K4, K4, K4, K4, K4}, {K4, K4, K4, K4, K4, K4, K4}}, K4},
        {"Gemma3-270M q8_0", 640, 1024, 256, 2048, 18, 262144, 18, {{A, A, A, A, A, A, A}, {A, A, A, A, A, A, A}}, A},
        {"Gemma3-270M file mix", 640, 1024, 256, 2048, 18, 262144, 18,
         {{F5, F5, F5, K4, F5, F5, K4}, {F5, F5, A, K4, F5, F5, K6}}, A},
        {"SmolLM2-135M q8_0", 576, 576, 192, 1536, 30, 49152, 30, {{A, A, A, A, A, A, A}, {A, A, A, A, A, A, A}}, A},
        {"SmolLM2-135M file mix", 576, 576, 192, 1536, 30, 49152, 30,
         {{F1, F1, F1, F1, F1, F1, F1}, {F1, F1, F1, F1, F1, F1, F1}}, A},
    };
    printf("\ndecode step matrix-vector products as one graph by (matvec_wide_align / matvec_xq_inline), matvec_int8 3 "
           "(fraction = weight bytes / read bandwidth / time; 16/0 = before)\n");
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) xq_step(&shapes[si], disp, bw, reps);
}

// Median seconds per launch of n_ops enqueued by enqueue(arg) into one graph (replays timed).
static double time_launches(void (*enqueue)(void *), void *arg, int n_ops, int reps) {
    void *g = NULL;
    TRY(sgllm__cuda_graph_begin(gpu), "graph capture");
    enqueue(arg);
    TRY(sgllm__cuda_graph_end(gpu, &g), "graph capture");
    double t = time_graph(g, reps) / n_ops;
    sgllm__cuda_graph_free(gpu, g);
    return t;
}

typedef struct {
    float *x, *d, *w, *y;                 // norm: (640) each
    float *q, *k, *v, *nw;                // epilogue: q (4 x 256), k and v (256), norm weight (256)
    int32_t *pos;                         // (1)
    uint16_t *kc, *vc;                    // (512, 256) fp16 caches
    bool fused;
} launch_bufs;

static void enqueue_norms(void *arg) {
    launch_bufs *b = (launch_bufs *)arg;
    for (int i = 0; i < 200; i++) TRY(sgllm__cuda_norm_add_rmsnorm(gpu, b->x, b->d, b->w, b->w, b->y, 1, 640, 1e-6f), "norm");
}

static void enqueue_epilogues(void *arg) {
    launch_bufs *b = (launch_bufs *)arg;
    const int32_t hd = 256, nq = 4, nkv = 1;
    for (int i = 0; i < (b->fused ? 200 : 50); i++) {
        if (b->fused) {
            sgllm__cuda_qkv_post_args a = {b->q,  b->k,  b->v,  nq * hd, nkv * hd, nq, nkv,   hd,    NULL, NULL, NULL, 1, b->nw,
                                           b->nw, 1e-6f, hd, b->pos, 1,  1.0f,     10000.0f, 1, b->kc, b->vc, NULL, 0};
            TRY(sgllm__cuda_qkv_post(gpu, &a), "qkv_post");
        } else {
            TRY(sgllm__cuda_qkv_norm(gpu, b->q, nq * hd, nq, b->nw, b->k, nkv * hd, nkv, b->nw, NULL, nkv * hd, hd, 1, 1e-6f),
                "qkv_norm");
            TRY(sgllm__cuda_rope(gpu, b->q, nq * hd, nq, hd, hd, b->pos, 1, 1.0f, 10000.0f, 1), "rope");
            TRY(sgllm__cuda_rope(gpu, b->k, nkv * hd, nkv, hd, hd, b->pos, 1, 1.0f, 10000.0f, 1), "rope");
            TRY(sgllm__cuda_kv_write(gpu, b->k, b->v, nkv * hd, nkv * hd, b->pos, 1, b->kc, b->vc, NULL, 0), "kv_write");
        }
    }
}

static void fill_dev(float *d, int64_t n, uint64_t seed, float lo, float hi) {
    float *h = (float *)malloc((size_t)n * sizeof(float));
    if (!h) die("out of memory");
    for (int64_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = lo + (hi - lo) * (float)((seed >> 40) / 16777216.0);
    }
    TRY(sgllm__cuda_upload(gpu, d, h, (size_t)n * sizeof(float)), "upload");
    free(h);
}

static void bench_launches(int reps) {
    launch_bufs b;
    memset(&b, 0, sizeof b);
    b.x = (float *)dev(640 * 4), b.d = (float *)dev(640 * 4), b.w = (float *)dev(640 * 4), b.y = (float *)dev(640 * 4);
    b.q = (float *)dev(1024 * 4), b.k = (float *)dev(256 * 4), b.v = (float *)dev(256 * 4), b.nw = (float *)dev(256 * 4);
    b.pos = (int32_t *)dev(4);
    b.kc = (uint16_t *)dev(512 * 256 * 2), b.vc = (uint16_t *)dev(512 * 256 * 2);
    fill_dev(b.x, 640, 1, -2, 2), fill_dev(b.d, 640, 2, -2, 2), fill_dev(b.w, 640, 3, 0.5f, 1.5f);
    fill_dev(b.q, 1024, 4, -1, 1), fill_dev(b.k, 256, 5, -1, 1), fill_dev(b.v, 256, 6, -1, 1), fill_dev(b.nw, 256, 7, 0.5f, 1.5f);
    int32_t p0 = 100;
    TRY(sgllm__cuda_upload(gpu, b.pos, &p0, 4), "upload");
    sgllm__cuda_dispatch base = *sgllm__cuda_get_dispatch(gpu);
    static const int threads[] = {32, 64, 128, 160, 256};
    printf("launch-bound ops, us per launch (graph of 200 launches, median of %d replays)\n", reps);
    for (int pdl = 1; pdl >= 0; pdl--) {
        sgllm__cuda_dispatch d = base;
        d.pdl = pdl;
        printf("  pdl %d: fused norm, 640 floats, by threads per block:", pdl);
        for (int ti = 0; ti < 5; ti++) {
            d.norm_threads = threads[ti];
            sgllm__cuda_set_dispatch(gpu, &d);
            printf(" %d: %.2f", threads[ti], 1e6 * time_launches(enqueue_norms, &b, 200, reps));
        }
        d.norm_threads = base.norm_threads;
        sgllm__cuda_set_dispatch(gpu, &d);
        b.fused = true;
        double fused = time_launches(enqueue_epilogues, &b, 200, reps);
        b.fused = false;
        double separate = time_launches(enqueue_epilogues, &b, 50, reps);
        printf("\n  pdl %d: q/k/v epilogue (Gemma 3 270M, 1 token): fused %.2f us, the 4 separate ops %.2f us\n", pdl,
               1e6 * fused, 1e6 * separate);
    }
    sgllm__cuda_set_dispatch(gpu, &base);

    // the device sampler over 262144 logits: uniform in [-1.5, 1.5] plus 5 spikes of 14 (a
    // worst case for the default sampler: ~20 000 logits share the top-k threshold's bucket),
    // and normal with standard deviation 3 plus the same spikes (closer to a model's logits)
    const int64_t V = 262144;
    float *logits = (float *)dev((size_t)V * sizeof(float));
    void *work = dev(sgllm__cuda_sample_work_bytes(V));
    sgllm__cuda_sample_args *d_args = (sgllm__cuda_sample_args *)dev(sizeof *d_args);
    int32_t *d_out = (int32_t *)dev(sizeof(int32_t));
    for (int mode = 0; mode < 3; mode++) {
        if (mode < 2) {
            fill_dev(logits, V, 8, -1.5f, 1.5f);
        } else {
            float *h = (float *)malloc((size_t)V * sizeof(float));
            if (!h) die("out of memory");
            uint64_t seed = 9;
            for (int64_t i = 0; i < V; i += 2) { // Box-Muller pairs
                double u[2];
                for (int k = 0; k < 2; k++) {
                    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                    u[k] = ((seed >> 11) + 0.5) / 9007199254740992.0;
                }
                double r = 3 * sqrt(-2 * log(u[0]));
                h[i] = (float)(r * cos(6.283185307179586 * u[1]));
                if (i + 1 < V) h[i + 1] = (float)(r * sin(6.283185307179586 * u[1]));
            }
            TRY(sgllm__cuda_upload(gpu, logits, h, (size_t)V * sizeof(float)), "upload");
            free(h);
        }
        float spike = 14;
        for (int j = 0; j < 5; j++) TRY(sgllm__cuda_upload(gpu, logits + (j * 52421 + 977) % V, &spike, 4), "upload");
        sgllm_sampler_params sp;
        sgllm_sampler_default_params(&sp);
        sgllm__cuda_sample_args a;
        memset(&a, 0, sizeof a);
        a.temperature = mode ? sp.temperature : 0, a.top_k = sp.top_k, a.top_p = sp.top_p, a.min_p = sp.min_p;
        a.repeat_penalty = 1, a.u = 0.5;
        TRY(sgllm__cuda_upload(gpu, d_args, &a, sizeof a), "upload");
        float t[MAX_REPS];
        for (int r = -3; r < reps; r++) {
            TRY(sgllm__cuda_timer_start(gpu), "timer");
            TRY(sgllm__cuda_sample(gpu, logits, V, d_args, NULL, NULL, work, (sgllm__cuda_sample_out){d_out, NULL, NULL, NULL}), "sample");
            float ms = 0;
            TRY(sgllm__cuda_timer_stop(gpu, &ms), "timer");
            if (r >= 0) t[r] = ms;
        }
        printf("  device sampler, vocab 262144, %s logits, %s: %.1f us (median of %d)\n", mode < 2 ? "flat" : "normal",
               mode ? "temperature 0.8, top_k 40, top_p 0.95, min_p 0.05" : "greedy", 1e3 * median(t, reps), reps);
    }
    void *bufs[] = {b.x, b.d, b.w, b.y, b.q, b.k, b.v, b.nw, b.pos, b.kc, b.vc, logits, work, d_args, d_out};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) sgllm__cuda_dfree(gpu, bufs[i]);
}

typedef struct {
    int32_t nh, nkv, hd, splits, copies;
    int64_t kv_elems;         // one copy of one cache: keys x n_head_kv x head_dim
    float *q, *out;           // (nh * hd)
    uint16_t *kc, *vc;        // (copies, kv_elems) fp16
    int32_t *pos;             // (1): keys - 1
} attn_bufs;

static void enqueue_attn(void *arg) {
    attn_bufs *b = (attn_bufs *)arg;
    for (int i = 0; i < 200; i++) {
        int64_t o = (int64_t)(i % b->copies) * b->kv_elems;
        TRY(sgllm__cuda_attn_decode(gpu, b->q, b->kc + o, b->vc + o, NULL, 0, b->nh, b->nkv, b->hd, b->pos, 1, 0,
                                    1.0f / sqrtf((float)b->hd), b->splits, b->out),
            "attention");
    }
}

// One query's decode attention at Gemma 3 270M and Llama-3-8B shapes: us per launch of both
// merges, and the cache bytes read per second by the one-launch form. The caches rotate over
// copies that together exceed the L2 (as a decode step's layers do for Llama-3-8B).
static void bench_decode_attn(int reps) {
    static const struct {
        const char *name;
        int32_t nh, nkv, hd;
    } shapes[] = {{"Gemma-3-270M", 4, 1, 256}, {"Llama-3-8B", 32, 8, 128}};
    static const int32_t keys[] = {512, 4096};
    const sgllm__cuda_dispatch base = *sgllm__cuda_get_dispatch(gpu);
    printf("decode attention, 1 token, us per launch (graph of 200 launches, median of %d replays, pdl %d)\n", reps,
           base.pdl);
    printf("%-14s %6s %6s %12s %12s %12s %14s %10s\n", "shape", "keys", "splits", "2 launches", "last block", "cluster",
           base.decode_mma ? "cluster, cuda" : "cluster, mma", "GB/s");
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (size_t ki = 0; ki < sizeof keys / sizeof keys[0]; ki++)
            for (int sw = 0; sw < 6; sw++) { // the forward's split count, then 4, 8, 32, 64 and 128 where splits keep 16 keys
                attn_bufs b;
                b.nh = shapes[si].nh, b.nkv = shapes[si].nkv, b.hd = shapes[si].hd;
                b.kv_elems = (int64_t)keys[ki] * b.nkv * b.hd;
                int64_t copy_bytes = 2 * b.kv_elems * 2;
                b.copies = (int32_t)((((int64_t)128 << 20) + copy_bytes - 1) / copy_bytes);
                b.copies = b.copies > 200 ? 200 : b.copies;
                b.splits = sw ? (sw < 3 ? 2 << sw : 4 << sw)
                              : sgllm__cuda_attn_cluster_splits(gpu, b.nh, b.nkv, b.hd, 1,
                                                                sgllm__dispatch_decode_splits(&base, (int64_t)b.nkv * ((b.nh / b.nkv + 7) / 8), keys[ki]));
                if (sw && b.splits * 16 > keys[ki]) continue;
                b.q = (float *)dev((size_t)(b.nh * b.hd) * 4), b.out = (float *)dev((size_t)(b.nh * b.hd) * 4);
                b.kc = (uint16_t *)dev((size_t)(b.copies * b.kv_elems) * 2), b.vc = (uint16_t *)dev((size_t)(b.copies * b.kv_elems) * 2);
                b.pos = (int32_t *)dev(4);
                TRY(sgllm__cuda_fill_random(gpu, SGLLM__T_F32, b.q, 1, (int64_t)b.nh * b.hd, 50), "fill");
                TRY(sgllm__cuda_fill_random(gpu, SGLLM__T_F16, b.kc, b.copies, b.kv_elems, 51), "fill");
                TRY(sgllm__cuda_fill_random(gpu, SGLLM__T_F16, b.vc, b.copies, b.kv_elems, 52), "fill");
                int32_t p = keys[ki] - 1;
                TRY(sgllm__cuda_upload(gpu, b.pos, &p, 4), "upload");
                TRY(sgllm__cuda_reserve(gpu, sgllm__cuda_attn_scratch_bytes(b.nh, b.hd, 1, b.splits)), "scratch");
                double t[4];
                for (int m = 0; m < 4; m++) { // decode_merge 1 (merge kernel), 0 (last block), 2 (cluster), 2 other kernel
                    sgllm__cuda_dispatch d = base;
                    d.decode_merge = m == 0 ? 1 : m == 1 ? 0 : 2;
                    if (m == 3) d.decode_mma = !base.decode_mma;
                    sgllm__cuda_set_dispatch(gpu, &d);
                    t[m] = time_launches(enqueue_attn, &b, 200, reps);
                }
                sgllm__cuda_set_dispatch(gpu, &base);
                double best = t[0] < t[1] ? (t[0] < t[2] ? t[0] : t[2]) : (t[1] < t[2] ? t[1] : t[2]);
                printf("%-14s %6d %6d %12.2f %12.2f %12.2f %14.2f %10.0f\n", shapes[si].name, keys[ki], b.splits,
                       1e6 * t[0], 1e6 * t[1], 1e6 * t[2], 1e6 * t[3], (double)copy_bytes / best / 1e9);
                void *bufs[] = {b.q, b.out, b.kc, b.vc, b.pos};
                for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) sgllm__cuda_dfree(gpu, bufs[i]);
            }
}

// A synthetic preset on the GPU (seed 7; exits when it cannot be made).
static sgllm_model *synthetic_model(const char *preset, const char *type) {
    sgllm_model_params mp;
    sgllm_model_default_params(&mp);
    mp.backend = SGLLM_BACKEND_CUDA;
    sgllm_model *m = NULL;
    char err[512];
    if (sgllm_model_load_synthetic(preset, type, 7, &mp, &m, err, sizeof err) != SGLLM_OK) {
        fprintf(stderr, "sgllm-bench-kernels: %s\n", err);
        exit(1);
    }
    return m;
}

#ifdef SGLLM_TIMELINE
static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

// A synthetic preset's decode step (its CUDA graph) at `keys` keys of context, replayed STEPS
// times; each kernel's cost is the median over the steps of the gap from its PDL wait returning
// to the next kernel's (the build's stamps, sgllm__cu_tl_mark): its work after the wait, its tail
// and the next one's release. Printed: the step, the cost of each launch name summed over the
// step, the launches of one middle layer in order, and decode attention's phases (the split
// kernel's stamps, SGLLM__PH in sgllm_cuda.cu: each split block's mean time from its start to
// the end of each phase, for the first head group's blocks).
static void bench_timeline(const char *preset, const char *type, int keys) {
    enum { STEPS = 20, CAP = 16384 };
    sgllm_model *m = synthetic_model(preset, type);
    int V = sgllm_model_n_vocab(m);
    float *lg = (float *)malloc((size_t)V * sizeof(float));
    sgllm_context_params cp;
    sgllm_context_default_params(&cp);
    cp.n_ctx = keys + 8, cp.n_batch = 64;
    sgllm_context *c = NULL;
    if (!lg || sgllm_context_create(m, &cp, &c) != SGLLM_OK) die("context");
    sgllm_token toks[64];
    for (int i = 0; i < 64; i++) toks[i] = (sgllm_token)(1 + i % (V - 1));
    for (int done = 0; done < keys - 1; done += 64) // the context, in batches
        if (sgllm_evaluate(c, toks, keys - 1 - done < 64 ? keys - 1 - done : 64, NULL, lg) != SGLLM_OK) die("evaluate");
    sgllm__cuda *cu = c->gpu->cu;
    sgllm__cuda_timeline_names(cu, 1); // the first one-token evaluate captures the step's graph
    if (sgllm_evaluate(c, toks, 1, NULL, lg) != SGLLM_OK || !c->gpu->graph_last) die("evaluate (graph)");
    sgllm__cuda_timeline_names(cu, 0);
    int n_names = 0;
    const char *const *names = sgllm__cuda_timeline_launches(cu, &n_names);
    static unsigned long long t[CAP];
    for (int i = 0; i < 10; i++) TRY(sgllm__cuda_graph_launch(cu, c->gpu->graph_last), "graph launch");
    TRY(sgllm__cuda_sync(cu), "sync");
    if (sgllm__cuda_timeline_stamps(cu, t, CAP) < 0) die("timeline stamps");
    static double ph[32 * 16];
    static unsigned long long ph_n[32];
    if (sgllm__cuda_timeline_phases(cu, ph, ph_n) < 0) die("timeline phases"); // emptied: this step's only
    for (int i = 0; i < STEPS; i++) TRY(sgllm__cuda_graph_launch(cu, c->gpu->graph_last), "graph launch");
    TRY(sgllm__cuda_sync(cu), "sync");
    int n = sgllm__cuda_timeline_stamps(cu, t, CAP), per = n / STEPS;
    if (n < STEPS * 2 || n % STEPS) die("timeline: stamps are not whole steps");
    bool named = per == n_names;
    double *gap = (double *)malloc((size_t)per * sizeof(double)), d[STEPS];
    if (!gap) die("out of memory");
    for (int k = 0; k < per; k++) { // the last launch of the last step has no next stamp
        int nd = 0;
        for (int st = 0; st < STEPS; st++)
            if (st * per + k + 1 < n) d[nd++] = (double)(t[st * per + k + 1] - t[st * per + k]) / 1e3;
        qsort(d, (size_t)nd, sizeof d[0], cmp_double);
        gap[k] = d[nd / 2];
    }
    double step = (double)(t[(STEPS - 1) * per] - t[0]) / 1e3 / (STEPS - 1);
    printf("\n%s %s, %d keys: decode step %.1f us (graph replays back to back), %d launches%s\n", preset, type, keys, step,
           per, named ? "" : " (launch names unknown: their count differs)");
    printf("  %-44s %9s %10s %7s\n", "launch", "per step", "us/step", "share");
    bool *seen = (bool *)calloc((size_t)per, 1);
    for (int k = 0; named && seen && k < per; k++) {
        if (seen[k]) continue;
        int cnt = 0;
        double sum = 0;
        for (int j = k; j < per; j++)
            if (!seen[j] && !strcmp(names[j], names[k])) seen[j] = true, cnt++, sum += gap[j];
        printf("  %-44s %9d %10.1f %6.1f%%\n", names[k], cnt, sum, 100 * sum / step);
    }
    int l0 = per / 2 - 4 > 0 ? per / 2 - 4 : 0;
    printf("  launches %d..%d in order (us):", l0, l0 + 11 < per ? l0 + 11 : per - 1);
    for (int k = l0; k < per && k < l0 + 12; k++) printf(" %s %.2f;", named ? names[k] : "?", gap[k]);
    printf("\n");
    // decode attention's phases: each split block's mean time from its start to each phase's end
    if (sgllm__cuda_timeline_phases(cu, ph, ph_n) < 0) die("timeline phases");
    bool used[16] = {false};
    for (int b = 0; b < 32; b++)
        for (int k = 1; k < 16; k++) used[k] = used[k] || ph[b * 16 + k] > 0;
    printf("  decode attention, us from a split block's start to the end of each phase (head group 0, mean of the "
           "launches):\n  %5s %7s", "block", "runs");
    for (int k = 1; k < 16; k++)
        if (used[k]) printf(" %8.8s", sgllm__cuda_timeline_phase_name(k));
    printf("\n");
    for (int b = 0; b < 32; b++) {
        if (!ph_n[b]) continue;
        printf("  %5d %7llu", b, ph_n[b]);
        for (int k = 1; k < 16; k++)
            if (used[k] && ph[b * 16 + k] > 0) printf(" %8.2f", ph[b * 16 + k]);
            else if (used[k]) printf(" %8s", "-");
        printf("\n");
    }
    free(seen), free(gap), free(lg);
    sgllm_context_free(c);
    sgllm_model_free(m);
}
#endif

// One decode step of a synthetic preset (no tokenizer, so sgllm_generate itself cannot run):
// microseconds per step of each way, 128 timed steps after 8 untimed ones.
static void bench_model_step(const char *preset, const char *type) {
    enum { STEPS = 128 };
    sgllm_model *m = synthetic_model(preset, type);
    int V = sgllm_model_n_vocab(m);
    float *lg = (float *)malloc((size_t)V * sizeof(float));
    if (!lg) die("out of memory");
    // evaluate, replay alone, host greedy, device greedy, device default sampler, device greedy
    // and default sampler with the next step enqueued before the token is read (as
    // sgllm_generate runs without penalties)
    double us[7];
    for (int way = 0; way < 7; way++) {
        sgllm_context_params cp;
        sgllm_context_default_params(&cp);
        cp.n_ctx = 512, cp.n_batch = 64;
        sgllm_context *c = NULL;
        if (sgllm_context_create(m, &cp, &c) != SGLLM_OK) die("context");
        sgllm_sampler_params sp;
        sgllm_sampler_default_params(&sp);
        if (way != 4 && way != 6) sp.temperature = 0;
        sgllm_sampler *smp = NULL;
        if (sgllm_sampler_init(&sp, V, &smp) != SGLLM_OK) die("sampler");
        sgllm_token t = 1;
        if (sgllm_evaluate(c, &t, 1, NULL, lg) != SGLLM_OK) die("evaluate");
        double t0 = 0;
        int64_t made = 0;          // device sampling: productions enqueued (sgllm__gpu_produce)
        const int32_t base = c->n_past; // where production 1 puts its token
        for (int i = -8; i < STEPS; i++) {
            if (i == 0) t0 = sgllm__now();
            if (way == 0 || way == 2) {
                if (sgllm_evaluate(c, &t, 1, NULL, lg) != SGLLM_OK) die("evaluate");
                if (way == 2) t = sgllm_sampler_sample(smp, lg);
            } else if (way == 1) {
                TRY(sgllm__cuda_graph_launch(c->gpu->cu, c->gpu->graph_last), "graph launch");
            } else { // production k evaluates token k - 1 (k >= 1) and samples token k
                int64_t k = i + 8;
                for (int64_t want = way >= 5 ? k + 1 : k; made <= want; made++)
                    if (sgllm__generate_gpu_produce(c, smp, made, base + (int32_t)(made > 0 ? made - 1 : 0)) != SGLLM_OK)
                        die("device sampling step");
                if (sgllm__gpu_produced(c->gpu, k, &t, &c->diag) != SGLLM_OK) die("device sampling step");
                sgllm_sampler_accept(smp, t);
                if (k > 0) c->history[c->n_past++] = 1; // the token production k evaluated
            }
        }
        if (way >= 1) TRY(sgllm__cuda_sync(c->gpu->cu), "sync");
        us[way] = 1e6 * (sgllm__now() - t0) / STEPS;
        sgllm_sampler_free(smp);
        sgllm_context_free(c);
    }
    printf("  %s %s decode step: evaluate %.1f us (graph replay alone %.1f us); generate's step with host sampling "
           "%.1f us (greedy), device sampling %.1f us (greedy) / %.1f us (default sampler), with the next step "
           "enqueued first %.1f us (greedy) = %.0f tok/s / %.1f us (default sampler) = %.0f tok/s\n",
           preset, type, us[0], us[1], us[2], us[3], us[4], us[5], 1e6 / us[5], us[6], 1e6 / us[6]);
    free(lg);
    sgllm_model_free(m);
}

// The matrix-vector products of one Llama-3-8B decode token, by shape.
static const struct {
    const char *name;
    int64_t rows, cols;
    int per_layer; // times per layer (0: once per token)
} llama_mats[] = {{"attn q / o", 4096, 4096, 2},
              {"attn k / v", 1024, 4096, 2},
              {"ffn gate / up", 14336, 4096, 2},
              {"ffn down", 4096, 14336, 1},
              {"lm head", 128256, 4096, 0}};

// Seconds of one Llama-3-8B token's matrix-vector products of type t (32 layers and the lm head)
// under the current dispatch, and their bandwidth floor.
static void llama_token_matvecs(uint32_t t, double bw, int reps, double *time, double *floor_time) {
    *time = *floor_time = 0;
    for (size_t si = 0; si < sizeof llama_mats / sizeof llama_mats[0]; si++) {
        size_t wb;
        double tm = time_matvec(t, llama_mats[si].rows, llama_mats[si].cols, 1, reps, &wb);
        double times = llama_mats[si].per_layer ? 32.0 * llama_mats[si].per_layer : 1.0;
        *time += times * tm;
        *floor_time += times * (double)wb / bw;
    }
}

int main(int argc, char **argv) {
    int reps = 21;
    bool sweep = false, attn_only = false, decode_only = false, launch_only = false, xq_only = false, dattn_only = false;
    int timeline = 0; // keys of context for --timeline
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--sweep")) sweep = true;
        else if (!strcmp(argv[i], "--attn")) attn_only = true;
        else if (!strcmp(argv[i], "--decode")) decode_only = true;
        else if (!strcmp(argv[i], "--launch")) launch_only = true;
        else if (!strcmp(argv[i], "--xq")) xq_only = true;
        else if (!strcmp(argv[i], "--decode-attn")) dattn_only = true;
        else if (!strcmp(argv[i], "--timeline")) timeline = i + 1 < argc && argv[i + 1][0] != '-' ? atoi(argv[++i]) : 512;
        else {
            fprintf(stderr, "usage: sgllm-bench-kernels [--reps N] [--sweep] [--attn] [--decode] [--launch] [--xq] "
                            "[--decode-attn] [--timeline [KEYS]]\n");
            return 2;
        }
    }
#ifndef SGLLM_TIMELINE
    if (timeline) {
        fprintf(stderr, "sgllm-bench-kernels: --timeline needs the profiling build (make timeline)\n");
        return 2;
    }
#endif
    if (timeline < 0 || timeline > 1 << 20) {
        fprintf(stderr, "sgllm-bench-kernels: --timeline KEYS: 1 to 1048576\n");
        return 2;
    }
    if (reps < 3) reps = 3;
    if (reps > MAX_REPS) reps = MAX_REPS;
    if (sgllm__cuda_device_count() < 1) {
        fprintf(stderr, "sgllm-bench-kernels: no CUDA device\n");
        return 1;
    }
    sgllm__cuda_props props;
    char err[256], path[512], line[4096];
    sgllm__diag dg = {0};
    sgllm__cuda_dispatch disp;
    bool applied = false;
    if (sgllm__cuda_query(0, &props, err, sizeof err) != SGLLM_OK) {
        fprintf(stderr, "sgllm-bench-kernels: %s\n", err);
        return 1;
    }
    if (sgllm__dispatch_select(&props, &disp, &dg) != SGLLM_OK ||
        sgllm__dispatch_load_config(&disp, "configs", props.name, path, sizeof path, &applied, &dg) != SGLLM_OK) {
        fprintf(stderr, "sgllm-bench-kernels: %s\n", dg.msg);
        return 1;
    }
    sgllm__dispatch_format(&disp, &props, applied ? path : NULL, line, sizeof line);
    printf("%s\n", line);
    if (sgllm__cuda_create(0, &disp, &gpu, err, sizeof err) != SGLLM_OK) {
        fprintf(stderr, "sgllm-bench-kernels: %s\n", err);
        return 1;
    }

#ifdef SGLLM_TIMELINE
    if (timeline) {
        printf("device: %s, %d SMs\n", props.name, props.sm_count);
        static const char *const runs[][2] = {{"gemma3-270m", "q4_k_m"}, {"smollm2-135m", "q4_1"}, {"llama3-8b", "q8_0"},
                                              {"llama3-8b", "q4_k"}, {"llama3-8b", "bf16"}};
        for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) bench_timeline(runs[r][0], runs[r][1], timeline);
        sgllm__cuda_free(gpu);
        return 0;
    }
#endif
    if (dattn_only) {
        printf("device: %s, %d SMs\n", props.name, props.sm_count);
        bench_decode_attn(reps);
        sgllm__cuda_free(gpu);
        return 0;
    }
    if (launch_only) {
        printf("device: %s, %d SMs\n", props.name, props.sm_count);
        bench_launches(reps);
        bench_model_step("gemma3-270m", "q4_k_m");
        bench_model_step("smollm2-135m", "q4_1");
        sgllm__cuda_free(gpu);
        return 0;
    }
    double bw = read_bandwidth(reps);
    if (xq_only) {
        printf("device: %s, %d SMs\nmeasured read bandwidth: %.0f GB/s (streaming 16-byte loads, 2 GiB)\n", props.name,
               props.sm_count, bw / 1e9);
        xq_steps(&disp, bw, reps);
        sgllm__cuda_free(gpu);
        return 0;
    }
    if (decode_only) {
        printf("device: %s, %d SMs\nmeasured read bandwidth: %.0f GB/s (streaming 16-byte loads, 2 GiB)\n", props.name,
               props.sm_count, bw / 1e9);
        decode_steps(&disp, bw, reps, sweep);
        sgllm__cuda_free(gpu);
        return 0;
    }
    double flops = cublas_rate(reps);
    printf("device: %s, %d SMs\n", props.name, props.sm_count);
    printf("measured read bandwidth: %.0f GB/s (streaming 16-byte loads, 2 GiB)\n", bw / 1e9);
    printf("measured cuBLAS bf16 GEMM: %.0f TFLOP/s (8192^3, random data)\n\n", flops / 1e12);
    if (attn_only) {
        bench_prefill_attn(flops, reps, sweep);
        sgllm__cuda_free(gpu);
        return 0;
    }

    static const uint32_t types[] = {SGLLM__T_BF16, SGLLM__T_Q8_0, SGLLM__T_Q4_K};
    static const double target[] = {0.85, 0.80, 0.70};
    printf("decode matvec, batch 1 (fraction = weight bytes / read bandwidth / time)\n");
    printf("%-6s %-14s %-13s %10s %10s %10s %8s\n", "type", "matrix", "rows x cols", "MB", "us", "floor us", "frac");
    double token_time[3] = {0}, token_floor[3] = {0};
    for (int ti = 0; ti < 3; ti++) {
        for (size_t si = 0; si < sizeof llama_mats / sizeof llama_mats[0]; si++) {
            size_t wb;
            double t = time_matvec(types[ti], llama_mats[si].rows, llama_mats[si].cols, 1, reps, &wb);
            double floor_t = (double)wb / bw;
            printf("%-6s %-14s %6lldx%-6lld %10.1f %10.1f %10.1f %7.1f%%\n", sgllm__type_name(types[ti]), llama_mats[si].name,
                   (long long)llama_mats[si].rows, (long long)llama_mats[si].cols, (double)wb / 1e6, t * 1e6, floor_t * 1e6,
                   100 * floor_t / t);
            double times = llama_mats[si].per_layer ? 32.0 * llama_mats[si].per_layer : 1.0;
            token_time[ti] += times * t;
            token_floor[ti] += times * floor_t;
        }
    }
    printf("\nLlama-3-8B matvecs per token (32 layers + lm head), batch 1:\n");
    for (int ti = 0; ti < 3; ti++)
        printf("  %-5s %7.2f ms (floor %6.2f ms) = %5.1f%% of the bandwidth floor (target %.0f%%), %.0f tok/s from weights alone\n",
               sgllm__type_name(types[ti]), token_time[ti] * 1e3, token_floor[ti] * 1e3,
               100 * token_floor[ti] / token_time[ti], 100 * target[ti], 1.0 / token_time[ti]);

    // the other block-quantized types on the table's path, and the fp32-activation reference
    // kernel (matvec_int8 = 0) for comparison
    static const uint32_t more[] = {SGLLM__T_Q4_0, SGLLM__T_Q4_1, SGLLM__T_Q5_0, SGLLM__T_Q5_1, SGLLM__T_Q5_K,
                                    SGLLM__T_Q6_K, SGLLM__T_Q8_0, SGLLM__T_Q4_K};
    for (size_t k = 0; k < sizeof more / sizeof more[0]; k++) {
        bool ref = k >= 6;
        sgllm__cuda_dispatch dd = disp;
        if (ref) dd.matvec_int8 = 0;
        sgllm__cuda_set_dispatch(gpu, &dd);
        double tt, tf;
        llama_token_matvecs(more[k], bw, reps, &tt, &tf);
        printf("  %-5s %7.2f ms (floor %6.2f ms) = %5.1f%% of the bandwidth floor%s\n", sgllm__type_name(more[k]),
               tt * 1e3, tf * 1e3, 100 * tf / tt, ref ? " (fp32-activation reference kernel)" : "");
    }
    sgllm__cuda_set_dispatch(gpu, &disp);

    if (sweep) {
        static const int settings[][2] = {{2, 32}, {4, 8}, {4, 16}, {4, 32}, {4, 64}, {8, 16}, {8, 32}, {8, 64}};
        printf("\nsweep: Llama-3-8B matvecs per token, %% of the bandwidth floor, by (warps/block, warps/SM)\n");
        for (size_t k = 0; k < sizeof settings / sizeof settings[0]; k++) {
            sgllm__cuda_dispatch dd = disp;
            dd.matvec_warps = settings[k][0];
            dd.matvec_warps_per_sm = settings[k][1];
            sgllm__cuda_set_dispatch(gpu, &dd);
            printf("  (%d, %2d):", settings[k][0], settings[k][1]);
            for (int ti = 0; ti < 3; ti++) {
                double tt, tf;
                llama_token_matvecs(types[ti], bw, reps, &tt, &tf);
                printf("  %s %5.1f%%", sgllm__type_name(types[ti]), 100 * tf / tt);
            }
            printf("\n");
        }
        sgllm__cuda_set_dispatch(gpu, &disp);
    }

    printf("\nmatvec batches (BF16 14336x4096): ");
    for (int64_t nt = 1; nt <= 8; nt *= 2) {
        size_t wb;
        double t = time_matvec(SGLLM__T_BF16, 14336, 4096, nt, reps, &wb);
        printf("n=%lld %.1f us (%.0f%%)  ", (long long)nt, t * 1e6, 100 * (double)wb / bw / t);
    }
    printf("\n\nprefill GEMM, 2048 tokens (fraction = measured cuBLAS rate floor / time)\n");
    printf("%-6s %-14s %-13s %10s %10s %8s\n", "type", "matrix", "rows x cols", "us", "TFLOP/s", "frac");
    static const uint32_t ptypes[] = {SGLLM__T_BF16, SGLLM__T_Q4_K};
    for (int ti = 0; ti < 2; ti++)
        for (size_t si = 0; si < 4; si++) {
            double t = time_gemm(ptypes[ti], llama_mats[si].rows, llama_mats[si].cols, 2048, reps);
            double fl = 2.0 * (double)llama_mats[si].rows * (double)llama_mats[si].cols * 2048;
            printf("%-6s %-14s %6lldx%-6lld %10.1f %10.0f %7.1f%%\n", sgllm__type_name(ptypes[ti]), llama_mats[si].name,
                   (long long)llama_mats[si].rows, (long long)llama_mats[si].cols, t * 1e6, fl / t / 1e12, 100 * fl / flops / t);
        }
    bench_prefill_attn(flops, reps, sweep);
    decode_steps(&disp, bw, reps, sweep);
    sgllm__cuda_free(gpu);
    return 0;
}
