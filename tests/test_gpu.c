// tests/test_gpu.c - every CUDA op (sgllm_cuda.cu) against the CPU reference of sgllm_impl.c
// on fresh random inputs. Compiled everywhere nvcc exists, run on a GPU machine
// (`make test-gpu`); without a device it fails, it never skips.
//
// Tolerances (relative L2 error ||gpu - ref|| / ||ref||, per op and dtype):
//   fp32 element-wise ops (embedding, norms, activations): 1e-5; the GPU contracts a*b+c into
//     fused multiply-adds and its expf/tanhf/rsqrtf differ from libm by an ulp or two.
//   GELU against the CPU engine's: 2e-3, because the CPU rounds GELU's input and output to fp16
//     as llama.cpp does (2^-11 relative each); the GPU stays fp32 and is also held to 1e-5
//     against a double-precision GELU.
//   RoPE: 1e-4: the angle is position * powf(base, -2i/d) in float as on the CPU; CUDA's powf
//     may differ by 2 ulp, which at positions up to 4096 moves an angle by up to ~5e-4 rad.
//   matvec with fp32 accumulation against a double dot over the reference dequantization:
//     1e-5 for every weight type (only the summation order differs).
//   matvec on int8 activations (dispatch.matvec_int8, block-quantized types): rounding each
//     activation to its block's int8 grid (step d = amax / 127) errs by a uniform amount of
//     variance d^2/12, so the expected squared error of output (r, t) is
//     sum_j w_rj^2 d_tj^2 / 12; the test computes this from the actual weights and inputs and
//     allows 3x its square root relative to ||ref|| (the fp16 rounding of the scales adds about
//     1% to it). 3x, not less: for types with per-block offsets (Q4_1, Q5_1, Q4_K, Q5_K) the
//     offset multiplies the sum of a block's rounding errors, which every row shares, so the
//     realized error has about as many degrees of freedom as activation blocks (20 at 640
//     columns); measured/expected ranged 0.7-2.07 over 12 seeds of these shapes on the CPU
//     engine's identical integer path. Against the CPU engine's own Q8 path (sgllm__quantize_act + sgllm__vec_dot,
//     the same integer sums) 1e-5: only the float combination of block terms differs. The
//     quantized activations themselves must equal the CPU engine's bytes exactly.
//   prefill GEMM (bf16 operands, fp32 accumulation): 1e-2 (bf16 keeps 8 bits of mantissa:
//     each product is off by up to 2^-8 relative, errors of random sign average out).
//   decode attention over the same fp16 cache: 1e-5 against a double-precision softmax
//     attention (the split-KV merge and online softmax reorder fp32 sums; the tensor-core
//     kernel (dispatch.decode_mma) carries q and the probabilities as two fp16 parts each,
//     hi + lo, so it is held to the same 1e-5 as the CUDA-core loop); 2e-3 against the CPU
//     engine's attention task, which rounds q and the softmax weights to fp16 as llama.cpp does.
//     The merge of the splits inside the split kernel (dispatch.decode_merge 0, the last block
//     of a head group merges), by the merge kernel (1) and across a thread block cluster of
//     the split blocks (2, up to 16 splits on sm90+) give the same bits (one weight function,
//     split order); so do three launches in a row and three replays of a graph of one (the
//     arrival counters return to zero), and launches cut in several (more head groups than
//     counters).
//   fused norms (norm_add_rmsnorm) against the CPU: 1e-5 as the norms above; against the two
//     separate GPU norms: 1e-6 (only the reduction order of the sums of squares differs).
//   fused q/k/v epilogue (qkv_post) against add_bias, qkv_norm, rope and kv_write run one after
//     another: bit for bit (the same arithmetic in the same order; the fp16 caches too).
//   programmatic dependent launch: every row op runs with dispatch.pdl on and off, and a chain
//     of dependent ops captured in a graph with it on gives bit for bit the eager result with
//     it off.
//   programmatic dependent launch of the matrix-vector, decode attention and GEMM-path kernels
//     (test_pdl_chain): a chain of them for every weight type, each reading what the one before
//     wrote, gives the same bits with dispatch.pdl on and off, eagerly and replayed from graphs.
//   prefill attention (fp16 tensor cores): a per-element worst-case bound derived from its
//     fp16 roundings of q and the probabilities (see test_prefill).
// Every output buffer is poisoned with NaN bytes before each run, so a missed write fails.
#define SGLLM_INTERNAL
#include "../sgllm_impl.c"
#include "test.h"

static sgllm__cuda *gpu;
static sgllm__cuda_dispatch disp;

static void *dev(size_t bytes) {
    void *p = NULL;
    sgllm_status s = sgllm__cuda_alloc(gpu, bytes, &p);
    if (s != SGLLM_OK) {
        fprintf(stderr, "device allocation of %zu bytes failed: %s\n", bytes, sgllm__cuda_errmsg(gpu));
        exit(1);
    }
    return p;
}
static void *dev_copy(const void *host, size_t bytes) {
    void *p = dev(bytes);
    CHECK(sgllm__cuda_upload(gpu, p, host, bytes) == SGLLM_OK);
    return p;
}
static void poison(void *p, size_t bytes) { CHECK(sgllm__cuda_memset(gpu, p, 0xff, bytes) == SGLLM_OK); }
static void fetch(void *host, const void *d, size_t bytes) {
    sgllm_status s = sgllm__cuda_download(gpu, host, d, bytes);
    CHECKF(s == SGLLM_OK, "download: %s", sgllm__cuda_errmsg(gpu));
}

static float *rand_floats(int64_t n, float lo, float hi) {
    float *v = (float *)malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) v[i] = test_uniform(lo, hi);
    return v;
}

// ||a - b|| / ||b|| over n values; infinite when a has a NaN or infinity (an unwritten value).
static double rel_err(const float *a, const float *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(a[i])) return INFINITY;
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static const uint32_t all_types[] = {SGLLM__T_F32,  SGLLM__T_F16,  SGLLM__T_BF16, SGLLM__T_Q4_0,
                                     SGLLM__T_Q4_1, SGLLM__T_Q5_0, SGLLM__T_Q5_1, SGLLM__T_Q8_0,
                                     SGLLM__T_Q4_K, SGLLM__T_Q5_K, SGLLM__T_Q6_K};
enum { N_TYPES = sizeof all_types / sizeof all_types[0] };

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

// Random weights (rows, cols) of type t in GGUF layout: random bytes with every block's scale
// fields set to finite values of realistic size; float types hold uniform values.
static uint8_t *rand_weights(uint32_t t, int64_t rows, int64_t cols, size_t *bytes) {
    size_t rb = (size_t)sgllm__row_bytes(t, (uint64_t)cols), n = rb * (size_t)rows;
    uint8_t *w = (uint8_t *)malloc(n);
    for (size_t i = 0; i < n; i++) w[i] = (uint8_t)test_u64();
    *bytes = n;
    int64_t nv = rows * cols;
    if (t == SGLLM__T_F32) {
        for (int64_t i = 0; i < nv; i++) ((float *)w)[i] = test_uniform(-1, 1);
        return w;
    }
    if (t == SGLLM__T_F16 || t == SGLLM__T_BF16) {
        for (int64_t i = 0; i < nv; i++) {
            float f = test_uniform(-1, 1);
            uint32_t bits;
            memcpy(&bits, &f, 4);
            ((uint16_t *)w)[i] = t == SGLLM__T_F16 ? sgllm__f32_to_fp16(f) : (uint16_t)(bits >> 16);
        }
        return w;
    }
    size_t bb = (size_t)sgllm__types[t].bytes, nb = n / bb;
    for (size_t b = 0; b < nb; b++) {
        uint8_t *blk = w + b * bb;
        uint16_t d = sgllm__f32_to_fp16(test_uniform(0.002f, 0.05f)), m = sgllm__f32_to_fp16(test_uniform(-0.3f, 0.3f));
        if (t == SGLLM__T_Q6_K) {
            put16(blk + 208, d);
        } else {
            put16(blk, d);
            if (t == SGLLM__T_Q4_1 || t == SGLLM__T_Q5_1 || t == SGLLM__T_Q4_K || t == SGLLM__T_Q5_K)
                put16(blk + 2, t == SGLLM__T_Q4_1 || t == SGLLM__T_Q5_1 ? m : sgllm__f32_to_fp16(test_uniform(0, 0.02f)));
        }
    }
    return w;
}

static float *deq_rows(uint32_t t, const uint8_t *w, int64_t rows, int64_t cols) {
    float *f = (float *)malloc((size_t)(rows * cols) * sizeof(float));
    size_t rb = (size_t)sgllm__row_bytes(t, (uint64_t)cols);
    for (int64_t r = 0; r < rows; r++) sgllm__dequant_row_ref(t, w + (size_t)r * rb, f + r * cols, cols);
    return f;
}

static void test_embed(void) {
    for (int k = 0; k < N_TYPES; k++) {
        uint32_t t = all_types[k];
        int64_t rows = 50, cols = sgllm__types[t].block == 256 ? 512 : 640;
        size_t wb;
        uint8_t *w = rand_weights(t, rows, cols, &wb);
        float *ref_rows = deq_rows(t, w, rows, cols);
        int32_t toks[7] = {3, 0, 49, (int32_t)(test_u64() % 50), -1, 50, 17};
        int64_t n = 7;
        float scale = 1.7f, *ref = (float *)calloc((size_t)(n * cols), sizeof(float)), *out = (float *)malloc((size_t)(n * cols) * 4);
        for (int64_t i = 0; i < n; i++)
            if (toks[i] >= 0 && toks[i] < rows)
                for (int64_t j = 0; j < cols; j++) ref[i * cols + j] = ref_rows[toks[i] * cols + j] * scale;
        void *dw = dev_copy(w, wb), *dt = dev_copy(toks, sizeof toks);
        float *dout = (float *)dev((size_t)(n * cols) * 4);
        poison(dout, (size_t)(n * cols) * 4);
        CHECKF(sgllm__cuda_embed(gpu, t, dw, rows, cols, (const int32_t *)dt, n, scale, dout) == SGLLM_OK, "%s",
               sgllm__cuda_errmsg(gpu));
        fetch(out, dout, (size_t)(n * cols) * 4);
        double e = rel_err(out, ref, n * cols);
        CHECKF(e <= 1e-5, "embed %s: rel err %.3g", sgllm__type_name(t), e);
        bool zeros = true;
        for (int64_t j = 0; j < cols; j++) zeros = zeros && out[4 * cols + j] == 0 && out[5 * cols + j] == 0;
        CHECKF(zeros, "embed %s: out-of-range tokens must give zero rows", sgllm__type_name(t));
        sgllm__cuda_dfree(gpu, dw);
        sgllm__cuda_dfree(gpu, dt);
        sgllm__cuda_dfree(gpu, dout);
        free(w);
        free(ref_rows);
        free(ref);
        free(out);
    }
}

static void test_add_rmsnorm(void) {
    static const int64_t dims[] = {640, 4096, 5376};
    for (int di = 0; di < 3; di++)
        for (int variant = 0; variant < 4; variant++) { // delta+weight, weight only, neither, in place
            int64_t rows = 5, dim = dims[di], n = rows * dim;
            bool with_delta = variant == 0 || variant == 3, with_w = variant != 2, in_place = variant == 3;
            float *x = rand_floats(n, -2, 2), *delta = rand_floats(n, -1, 1), *w = rand_floats(dim, 0.5f, 1.5f);
            float *ref_x = (float *)malloc((size_t)n * 4), *ref_y = (float *)malloc((size_t)n * 4);
            for (int64_t i = 0; i < n; i++) ref_x[i] = x[i] + (with_delta ? delta[i] : 0.0f);
            sgllm__rmsnorm(ref_y, ref_x, with_w ? w : NULL, rows, dim, 1e-6f);
            float *dx = (float *)dev_copy(x, (size_t)n * 4), *dd = (float *)dev_copy(delta, (size_t)n * 4);
            float *dwt = (float *)dev_copy(w, (size_t)dim * 4), *dy = in_place ? dx : (float *)dev((size_t)n * 4);
            if (!in_place) poison(dy, (size_t)n * 4);
            CHECK(sgllm__cuda_add_rmsnorm(gpu, dx, with_delta ? dd : NULL, with_w ? dwt : NULL, dy, rows, dim, 1e-6f) ==
                  SGLLM_OK);
            float *gx = (float *)malloc((size_t)n * 4), *gy = (float *)malloc((size_t)n * 4);
            fetch(gy, dy, (size_t)n * 4);
            double ey = rel_err(gy, ref_y, n), ex = 0;
            if (!in_place) {
                fetch(gx, dx, (size_t)n * 4);
                ex = rel_err(gx, ref_x, n);
            }
            CHECKF(ey <= 1e-5 && ex <= 1e-6, "add_rmsnorm dim %lld variant %d: y %.3g x %.3g", (long long)dim, variant, ey, ex);
            sgllm__cuda_dfree(gpu, dx);
            sgllm__cuda_dfree(gpu, dd);
            sgllm__cuda_dfree(gpu, dwt);
            if (!in_place) sgllm__cuda_dfree(gpu, dy);
            free(x), free(delta), free(w), free(ref_x), free(ref_y), free(gx), free(gy);
        }
}

// q, k, v as strided slices of one fused QKV buffer (n_tok, (nq + 2 nkv) * hd).
static void test_qkv_norm(void) {
    static const int32_t hds[] = {64, 128, 256};
    static const int64_t toks[] = {3, 300}; // below and above the per-head threshold (256)
    for (int hi = 0; hi < 3; hi++)
        for (int ti = 0; ti < 2; ti++)
            for (int with_v = 0; with_v < 2; with_v++) {
                int32_t hd = hds[hi], nq = 8, nkv = 2;
                int64_t n_tok = toks[ti], stride = (int64_t)(nq + 2 * nkv) * hd, n = n_tok * stride;
                float *qkv = rand_floats(n, -3, 3), *qw = rand_floats(hd, 0.5f, 1.5f), *kw = rand_floats(hd, 0.5f, 1.5f);
                float *ref = (float *)malloc((size_t)n * 4), *out = (float *)malloc((size_t)n * 4);
                memcpy(ref, qkv, (size_t)n * 4);
                for (int64_t t = 0; t < n_tok; t++) {
                    float *r = ref + t * stride;
                    sgllm__rmsnorm(r, r, qw, nq, hd, 1e-6f);
                    sgllm__rmsnorm(r + (int64_t)nq * hd, r + (int64_t)nq * hd, kw, nkv, hd, 1e-6f);
                    if (with_v) sgllm__rmsnorm(r + (int64_t)(nq + nkv) * hd, r + (int64_t)(nq + nkv) * hd, NULL, nkv, hd, 1e-6f);
                }
                float *d = (float *)dev_copy(qkv, (size_t)n * 4), *dqw = (float *)dev_copy(qw, (size_t)hd * 4),
                      *dkw = (float *)dev_copy(kw, (size_t)hd * 4);
                CHECK(sgllm__cuda_qkv_norm(gpu, d, stride, nq, dqw, d + (int64_t)nq * hd, stride, nkv, dkw,
                                           with_v ? d + (int64_t)(nq + nkv) * hd : NULL, stride, hd, n_tok, 1e-6f) == SGLLM_OK);
                fetch(out, d, (size_t)n * 4);
                double e = rel_err(out, ref, n);
                CHECKF(e <= 1e-5, "qkv_norm hd %d tokens %lld v %d: %.3g", hd, (long long)n_tok, with_v, e);
                sgllm__cuda_dfree(gpu, d);
                sgllm__cuda_dfree(gpu, dqw);
                sgllm__cuda_dfree(gpu, dkw);
                free(qkv), free(qw), free(kw), free(ref), free(out);
            }
}

static void test_rope(void) {
    static const int32_t hds[] = {64, 128, 256};
    for (int hi = 0; hi < 3; hi++)
        for (int neox = 0; neox < 2; neox++)
            for (int partial = 0; partial < 2; partial++) {
                int32_t hd = hds[hi], n_rot = partial ? hd / 4 : hd, nh = 4;
                int64_t n_tok = 9, stride = (int64_t)nh * hd + 32; // padded rows: the pad must stay untouched
                float theta = partial ? 1e6f : 10000.0f, pscale = partial ? 0.25f : 1.0f;
                float *x = rand_floats(n_tok * stride, -2, 2), *ref = (float *)malloc((size_t)(n_tok * stride) * 4);
                float *out = (float *)malloc((size_t)(n_tok * stride) * 4);
                int32_t pos[9];
                for (int i = 0; i < 9; i++) pos[i] = i < 2 ? i : (int32_t)(test_u64() % 4096);
                memcpy(ref, x, (size_t)(n_tok * stride) * 4);
                for (int64_t t = 0; t < n_tok; t++)
                    sgllm__rope(ref + t * stride, nh, hd, n_rot, (float)pos[t] * pscale, theta, neox != 0);
                float *d = (float *)dev_copy(x, (size_t)(n_tok * stride) * 4);
                int32_t *dp = (int32_t *)dev_copy(pos, sizeof pos);
                CHECK(sgllm__cuda_rope(gpu, d, stride, nh, hd, n_rot, dp, n_tok, pscale, theta, neox) == SGLLM_OK);
                fetch(out, d, (size_t)(n_tok * stride) * 4);
                double e = rel_err(out, ref, n_tok * stride);
                CHECKF(e <= 1e-4, "rope hd %d neox %d n_rot %d: %.3g", hd, neox, n_rot, e);
                sgllm__cuda_dfree(gpu, d);
                sgllm__cuda_dfree(gpu, dp);
                free(x), free(ref), free(out);
            }
}

static void test_gated(void) {
    for (int act = 0; act < 2; act++) {
        int64_t n = 3 * 14336 + 5;
        float *g = rand_floats(n, -6, 6), *u = rand_floats(n, -2, 2), *ref = (float *)malloc((size_t)n * 4);
        float *out = (float *)malloc((size_t)n * 4);
        float *exact = (float *)malloc((size_t)n * 4);
        for (int64_t i = 0; i < n; i++) {
            double x = g[i];
            exact[i] = (float)((act ? 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
                                    : x / (1 + exp(-x))) * u[i]);
            ref[i] = (act ? sgllm__gelu_tanh(g[i]) : sgllm__silu(g[i])) * u[i];
        }
        float *dg = (float *)dev_copy(g, (size_t)n * 4), *du = (float *)dev_copy(u, (size_t)n * 4);
        CHECK(sgllm__cuda_gated_act(gpu, act ? SGLLM__CUDA_ACT_GELU_TANH : SGLLM__CUDA_ACT_SILU, dg, du, n) == SGLLM_OK);
        fetch(out, dg, (size_t)n * 4);
        double e = rel_err(out, ref, n), ex = rel_err(out, exact, n);
        CHECKF(e <= (act ? 2e-3 : 1e-5) && ex <= 1e-5, "gated act %d: %.3g vs the CPU engine, %.3g vs double", act, e, ex);
        free(exact);
        sgllm__cuda_dfree(gpu, dg);
        sgllm__cuda_dfree(gpu, du);
        free(g), free(u), free(ref), free(out);
    }
}

// The int8 path's activation quantization gives the CPU engine's bytes exactly (the same codes,
// the same scales), against both CPU quantizers (portable and the default one), on random
// rows with an all-zero block and a magnitude tie between a positive and a negative value.
static void test_quantize_act(void) {
    static const uint32_t qtypes[] = {SGLLM__T_Q8_0, SGLLM__T_Q4_1, SGLLM__T_Q4_K};
    int mismatches = 0, runs = 0;
    for (int k = 0; k < 3; k++)
        for (int nt = 1; nt <= 8; nt += 2) {
            uint32_t t = qtypes[k], vt = sgllm__vec_dot_type(t);
            int64_t cols = vt == SGLLM__T_Q8_K ? 4096 + 256 * 3 : 4096 + 32 * 3, nb = nt * cols / 32;
            float *x = rand_floats(nt * cols, -1, 1);
            for (int j = 0; j < 32; j++) x[64 + j] = 0.0f;        // an all-zero block
            x[300] = 3.0f, x[301] = -3.0f, x[700] = -2.5f, x[701] = 2.5f; // ties: the first index wins
            for (int64_t i = 0; i < nt * cols; i += 997) x[i] *= 40.0f; // a few outliers
            float *dx = (float *)dev_copy(x, (size_t)(nt * cols) * 4);
            int8_t *dq = (int8_t *)dev((size_t)(nt * cols));
            float *dd = (float *)dev((size_t)nb * 8);
            poison(dq, (size_t)(nt * cols));
            poison(dd, (size_t)nb * 8);
            CHECKF(sgllm__cuda_quantize_act(gpu, t, dx, nt, cols, dq, dd) == SGLLM_OK, "%s", sgllm__cuda_errmsg(gpu));
            int8_t *q = (int8_t *)malloc((size_t)(nt * cols));
            float *d = (float *)malloc((size_t)nb * 8);
            fetch(q, dq, (size_t)(nt * cols));
            fetch(d, dd, (size_t)nb * 8);
            size_t rb = sgllm__act_row_bytes(t, cols);
            uint8_t *ref = (uint8_t *)malloc(rb);
            for (int avx = 0; avx < 2; avx++)
                for (int tt = 0; tt < nt; tt++) {
                    if (avx) sgllm__quantize_act(t, x + tt * cols, ref, cols);
                    else sgllm__quantize_act_impl(t, x + tt * cols, ref, cols, false);
                    for (int64_t b = 0; b < cols / 32; b++) {
                        const int8_t *rq;
                        float rd, rs;
                        int sum = 0;
                        if (vt == SGLLM__T_Q8_K) {
                            const sgllm__bq8_k *y = (const sgllm__bq8_k *)ref + b / 8;
                            rq = y->qs + 32 * (b % 8);
                            rd = y->d;
                            rs = (float)(y->bsums[2 * (b % 8)] + y->bsums[2 * (b % 8) + 1]);
                        } else if (vt == SGLLM__T_Q8_1) {
                            const sgllm__bq8_1 *y = (const sgllm__bq8_1 *)ref + b;
                            rq = y->qs, rd = sgllm__h(y->d), rs = sgllm__h(y->s);
                        } else {
                            const sgllm__bq8_0 *y = (const sgllm__bq8_0 *)ref + b;
                            rq = y->qs, rd = sgllm__h(y->d);
                            for (int j = 0; j < 32; j++) sum += y->qs[j];
                            rs = (float)sum;
                        }
                        int64_t gb = tt * (cols / 32) + b;
                        bool same = !memcmp(rq, q + gb * 32, 32) && d[2 * gb] == rd && d[2 * gb + 1] == rs;
                        mismatches += !same;
                        runs++;
                    }
                }
            CHECKF(mismatches == 0, "quantize_act %s nt %d: %d of %d blocks differ from the CPU engine's",
                   sgllm__type_name(vt), nt, mismatches, runs);
            sgllm__cuda_dfree(gpu, dx);
            sgllm__cuda_dfree(gpu, dq);
            sgllm__cuda_dfree(gpu, dd);
            free(x), free(q), free(d), free(ref);
        }
    printf("quantize_act: %d blocks (Q8_0, Q8_1, Q8_K; portable and default CPU quantizers) identical to the CPU "
           "engine's\n", runs);
}

// Matrix products for every weight type. Shapes exercise each kernel path: aligned rows
// (16-byte staged or direct loads), rows aligned to 4 or 8 bytes (narrower cp.async copies),
// 2-byte aligned rows (the one-value-at-a-time kernel), partial last chunks (cols < 1024),
// more rows than resident warps (warps streaming over several rows).
static void test_matmul(void) {
    static const int64_t batches[] = {1, 2, 3, 5, 8};
    double worst_mv = 0, worst_gemm = 0, worst_i8_ratio = 0, worst_i8_cpu = 0;
    for (int k = 0; k < N_TYPES; k++) {
        uint32_t t = all_types[k];
        int64_t blk = sgllm__types[t].block;
        int64_t shapes[5][2] = {{257, 4096}, {64, blk == 256 ? 256 * 17 : 4096 + 32 * 3}, {130, blk == 256 ? 768 : 640},
                                {33, blk == 256 ? 256 * 11 : 4096 + 4 * (blk == 1)}, {5000, 1024}};
        for (int si = 0; si < 5; si++) {
            int64_t rows = shapes[si][0], cols = shapes[si][1];
            size_t wb;
            uint8_t *w = rand_weights(t, rows, cols, &wb);
            float *wf = deq_rows(t, w, rows, cols);
            int64_t max_tok = 64;
            float *x = rand_floats(max_tok * cols, -1, 1);
            void *dw = dev_copy(w, wb);
            float *dx = (float *)dev_copy(x, (size_t)(max_tok * cols) * 4), *dy = (float *)dev((size_t)(max_tok * rows) * 4);
            float *y = (float *)malloc((size_t)(max_tok * rows) * 4), *ref = (float *)malloc((size_t)(max_tok * rows) * 4);
            for (int64_t tt = 0; tt < max_tok; tt++)
                for (int64_t r = 0; r < rows; r++) {
                    double s = 0;
                    for (int64_t j = 0; j < cols; j++) s += (double)wf[r * cols + j] * x[tt * cols + j];
                    ref[tt * rows + r] = (float)s;
                }
            // the int8 path's references for the first 8 tokens: the CPU engine's Q8 dot, and the
            // expected squared error of the activation rounding (err2) against ||ref||^2 (den2)
            bool quant = sgllm__vec_dot_type(t) != SGLLM__T_F32;
            float *ref_q8 = (float *)malloc((size_t)(8 * rows) * 4);
            double err2[8] = {0}, den2[8] = {0};
            if (quant) {
                size_t rb = (size_t)sgllm__row_bytes(t, (uint64_t)cols);
                uint8_t *xq = (uint8_t *)malloc(sgllm__act_row_bytes(t, cols));
                int64_t per = sgllm__vec_dot_type(t) == SGLLM__T_Q8_K ? 256 : 32;
                double *d2 = (double *)malloc((size_t)(cols / per) * sizeof(double));
                for (int64_t tt = 0; tt < 8; tt++) {
                    sgllm__quantize_act(t, x + tt * cols, xq, cols);
                    for (int64_t b = 0; b < cols / per; b++) {
                        float amax = 0;
                        for (int64_t j = 0; j < per; j++) amax = fmaxf(amax, fabsf(x[tt * cols + b * per + j]));
                        d2[b] = (double)amax / 127 * amax / 127;
                    }
                    for (int64_t r = 0; r < rows; r++) {
                        ref_q8[tt * rows + r] = sgllm__vec_dot(t, cols, w + (size_t)r * rb, xq);
                        for (int64_t j = 0; j < cols; j++)
                            err2[tt] += (double)wf[r * cols + j] * wf[r * cols + j] * d2[j / per] / 12;
                        den2[tt] += (double)ref[tt * rows + r] * ref[tt * rows + r];
                    }
                }
                free(xq), free(d2);
            }
            // launch variants: the table's; one warp per row with few warps per SM (warps stream
            // over many rows); eight-warp blocks with rows split over up to 8 warps; for quantized
            // types the first two on the staged int8 kernel, the third on the direct int8 kernel
            // (matvec_int8 = 2), then the fp32-activation reference kernel; float types on the
            // direct kernel first (matvec_float_direct, the table's warps per row), twice on the
            // float kernel, then on the direct kernel with 4 warps and 1 warp a row
            int n_var = quant ? 4 : 5;
            sgllm__cuda_dispatch variants[5] = {disp, disp, disp, disp, disp};
            variants[1].matvec_warps_per_sm = 1;
            variants[2].matvec_warps = 8;
            variants[2].matvec_warps_per_sm = 64;
            variants[0].matvec_int8 = variants[1].matvec_int8 = 1; // staged kernel
            variants[2].matvec_int8 = 2;                          // direct kernel
            variants[3].matvec_int8 = 0;
            variants[0].matvec_float_direct = variants[3].matvec_float_direct = variants[4].matvec_float_direct = 1;
            variants[1].matvec_float_direct = variants[2].matvec_float_direct = 0;
            variants[3].matvec_direct_split = 4, variants[4].matvec_direct_split = 1;
            for (int bi = 0; bi < 5 * n_var; bi++) {
                int64_t nt = batches[bi % 5];
                // (rows not 4-byte aligned, e.g. Q6_K with an odd number of super-blocks, take
                // the one-value-at-a-time fp32 kernel whatever the dispatch says)
                bool int8 = quant && variants[bi / 5].matvec_int8 && sgllm__row_bytes(t, (uint64_t)cols) % 4 == 0;
                sgllm__cuda_set_dispatch(gpu, &variants[bi / 5]);
                poison(dy, (size_t)(max_tok * rows) * 4);
                sgllm_status s = sgllm__cuda_matvec(gpu, t, dw, rows, cols, dx, nt, dy);
                CHECKF(s == SGLLM_OK, "matvec: %s", sgllm__cuda_errmsg(gpu));
                fetch(y, dy, (size_t)(max_tok * rows) * 4);
                double e = rel_err(y, ref, nt * rows);
                if (int8) {
                    double e2 = 0, dn = 0;
                    for (int64_t tt = 0; tt < nt; tt++) e2 += err2[tt], dn += den2[tt];
                    double tol = 3 * sqrt(e2 / dn), eq = rel_err(y, ref_q8, nt * rows);
                    worst_i8_ratio = e / sqrt(e2 / dn) > worst_i8_ratio ? e / sqrt(e2 / dn) : worst_i8_ratio;
                    worst_i8_cpu = eq > worst_i8_cpu ? eq : worst_i8_cpu;
                    CHECKF(e <= tol && eq <= 1e-5,
                           "matvec int8 %s %lldx%lld batch %lld variant %d: rel err %.3g (tolerance %.3g), %.3g against "
                           "the CPU engine's Q8 dot", sgllm__type_name(t), (long long)rows, (long long)cols,
                           (long long)nt, bi / 5, e, tol, eq);
                } else {
                    worst_mv = e > worst_mv ? e : worst_mv;
                    CHECKF(e <= 1e-5, "matvec %s %lldx%lld batch %lld variant %d: rel err %.3g", sgllm__type_name(t),
                           (long long)rows, (long long)cols, (long long)nt, bi / 5, e);
                }
                bool untouched = true; // rows past the batch are not written
                for (int64_t i = nt * rows; i < max_tok * rows; i++) untouched = untouched && isnan(y[i]);
                CHECK(untouched);
            }
            sgllm__cuda_set_dispatch(gpu, &disp);
            static const int64_t gemm_batches[] = {1, 9, 64};
            for (int bi = 0; bi < 3; bi++) {
                int64_t nt = gemm_batches[bi];
                CHECK(sgllm__cuda_reserve(gpu, sgllm__cuda_gemm_scratch_bytes(t, rows, cols, nt)) == SGLLM_OK);
                poison(dy, (size_t)(max_tok * rows) * 4);
                sgllm_status s = sgllm__cuda_gemm(gpu, t, dw, rows, cols, dx, nt, dy);
                CHECKF(s == SGLLM_OK, "gemm: %s", sgllm__cuda_errmsg(gpu));
                fetch(y, dy, (size_t)(max_tok * rows) * 4);
                double e = rel_err(y, ref, nt * rows);
                worst_gemm = e > worst_gemm ? e : worst_gemm;
                CHECKF(e <= 1e-2, "gemm %s %lldx%lld batch %lld: rel err %.3g", sgllm__type_name(t), (long long)rows,
                       (long long)cols, (long long)nt, e);
            }
            // matmul takes the matrix-vector path up to the dispatch's batch, cuBLAS beyond
            for (int64_t nt = disp.matvec_max_batch; nt <= disp.matvec_max_batch + 1; nt++) {
                poison(dy, (size_t)(max_tok * rows) * 4);
                CHECK(sgllm__cuda_matmul(gpu, t, dw, rows, cols, dx, nt, dy) == SGLLM_OK);
                fetch(y, dy, (size_t)(max_tok * rows) * 4);
                double e = rel_err(y, ref, nt * rows);
                double tol = nt > disp.matvec_max_batch ? 1e-2 : 1e-5;
                if (nt <= disp.matvec_max_batch && quant && disp.matvec_int8 && sgllm__row_bytes(t, (uint64_t)cols) % 4 == 0) {
                    double e2 = 0, dn = 0;
                    for (int64_t tt = 0; tt < nt; tt++) e2 += err2[tt], dn += den2[tt];
                    tol = 3 * sqrt(e2 / dn);
                }
                CHECKF(e <= tol, "matmul %s batch %lld: %.3g", sgllm__type_name(t), (long long)nt, e);
            }
            sgllm__cuda_dfree(gpu, dw);
            sgllm__cuda_dfree(gpu, dx);
            sgllm__cuda_dfree(gpu, dy);
            free(w), free(wf), free(x), free(y), free(ref), free(ref_q8);
        }
    }
    printf("matvec fp32 activations: worst rel err %.3g (all types, batches 1-8); gemm (bf16) worst %.3g\n", worst_mv,
           worst_gemm);
    printf("matvec int8 activations: worst rel err %.2f x the expected rounding error, %.3g against the CPU engine's Q8 "
           "dot\n", worst_i8_ratio, worst_i8_cpu);
}

// Fused launches against the single-matrix path on the same device: matvec_multi (q/k/v
// shapes) and matvec_gated (gate/up), every weight type, batches 1..8, short and long rows.
// Tolerances: quantized types run the same per-row code as sgllm__cuda_matvec on the direct
// kernel (matvec_int8 = 2), so multi must be bit-identical to it and gated within 1e-6 (only
// where act(g) * u is computed differs); the staged kernel is held to the CPU engine's Q8
// dot by test_matmul, and these shapes are under the fusion limit (32 MB); float
// types take a different kernel for single matrices (another summation order): 1e-5.
// Mixed types and batches past dispatch.matvec_max_batch take the unfused path: exact.
static void test_matvec_fused(void) {
    double worst_multi = 0, worst_gated = 0;
    int fused_runs = 0;
    for (int k = 0; k < N_TYPES; k++) {
        uint32_t t = all_types[k];
        int64_t blk = sgllm__types[t].block;
        static const int64_t col_choice[2][2] = {{640, 4096}, {768, 2048}}; // 32-blocks, 256-blocks
        for (int ci = 0; ci < 2; ci++) {
            int64_t cols = col_choice[blk == 256][ci], rows3[3] = {96 + 64 * ci, 32, 40 + ci}, ff = 200 + 17 * ci;
            size_t wb[5];
            uint8_t *w[5];
            void *dw[5];
            int64_t rows_of[5] = {rows3[0], rows3[1], rows3[2], ff, ff};
            for (int i = 0; i < 5; i++) {
                w[i] = rand_weights(t, rows_of[i], cols, &wb[i]);
                dw[i] = dev_copy(w[i], wb[i]);
            }
            int64_t max_tok = 9, ny = max_tok * (rows3[0] + rows3[1] + rows3[2] + 2 * ff);
            float *x = rand_floats(max_tok * cols, -1, 1), *dx = (float *)dev_copy(x, (size_t)(max_tok * cols) * 4);
            float *dy = (float *)dev((size_t)ny * 4), *dref = (float *)dev((size_t)ny * 4);
            float *y = (float *)malloc((size_t)ny * 4), *ref = (float *)malloc((size_t)ny * 4);
            CHECK(sgllm__cuda_reserve(gpu, sgllm__cuda_gemm_scratch_bytes(t, rows3[0] > ff ? rows3[0] : ff, cols, max_tok)) ==
                  SGLLM_OK);
            // references: single matrices on the direct kernel (matvec_int8 = 2) where the fused
            // launch takes it, the same kernel per row
            sgllm__cuda_dispatch direct = disp;
            direct.matvec_int8 = 2;
            bool quant = sgllm__vec_dot_type(t) != SGLLM__T_F32;
            size_t rbt = (size_t)sgllm__row_bytes(t, (uint64_t)cols);
            if (quant && disp.matvec_int8 == 3 && rbt % (size_t)disp.matvec_wide_align == 0) {
                // the wide kernel (section 4b) computes each row as the staged kernel with one
                // warp per row does (see test_matvec_wide)
                direct.matvec_int8 = 1;
                direct.matvec_warps_per_sm = 0;
            }
            bool aligned = quant ? rbt % 4 == 0 : rbt % 16 == 0;
            for (int64_t nt = 1; nt <= 9; nt++) {
                bool fused = nt <= disp.matvec_max_batch && aligned;
                // multi: 2 or 3 matrices
                int n = nt % 2 ? 3 : 2;
                uint32_t types[3] = {t, t, t};
                const void *wm[3] = {dw[0], dw[1], dw[2]};
                float *ym[3], *rm[3];
                int64_t off = 0, n_out = 0;
                for (int i = 0; i < n; i++) {
                    ym[i] = dy + off, rm[i] = dref + off;
                    off += nt * rows3[i];
                }
                n_out = off;
                poison(dy, (size_t)ny * 4);
                poison(dref, (size_t)ny * 4);
                CHECKF(sgllm__cuda_matvec_multi(gpu, n, types, wm, rows3, cols, dx, nt, ym) == SGLLM_OK, "multi: %s",
                       sgllm__cuda_errmsg(gpu));
                sgllm__cuda_set_dispatch(gpu, &direct);
                for (int i = 0; i < n; i++)
                    CHECK(sgllm__cuda_matmul(gpu, t, wm[i], rows3[i], cols, dx, nt, rm[i]) == SGLLM_OK);
                sgllm__cuda_set_dispatch(gpu, &disp);
                fetch(y, dy, (size_t)ny * 4);
                fetch(ref, dref, (size_t)ny * 4);
                double e = rel_err(y, ref, n_out), tol = quant || !fused ? 0 : 1e-5;
                if (fused) worst_multi = e > worst_multi ? e : worst_multi, fused_runs++;
                CHECKF(e <= tol, "matvec_multi %s cols %lld n %d batch %lld: rel err %.3g", sgllm__type_name(t),
                       (long long)cols, n, (long long)nt, e);
                bool untouched = true;
                for (int64_t i = n_out; i < ny; i++) untouched = untouched && isnan(y[i]);
                CHECKF(untouched, "matvec_multi %s: wrote past its outputs", sgllm__type_name(t));
                // gated: SiLU for odd batches, GELU for even ones; reference = two matmuls + gated_act
                int act = nt % 2 ? SGLLM__CUDA_ACT_SILU : SGLLM__CUDA_ACT_GELU_TANH;
                float *du = dref + nt * ff;
                poison(dy, (size_t)ny * 4);
                CHECKF(sgllm__cuda_matvec_gated(gpu, act, t, dw[3], t, dw[4], ff, cols, dx, nt, dy, dy + nt * ff) == SGLLM_OK,
                       "gated: %s", sgllm__cuda_errmsg(gpu));
                sgllm__cuda_set_dispatch(gpu, &direct);
                CHECK(sgllm__cuda_matmul(gpu, t, dw[3], ff, cols, dx, nt, dref) == SGLLM_OK);
                CHECK(sgllm__cuda_matmul(gpu, t, dw[4], ff, cols, dx, nt, du) == SGLLM_OK);
                sgllm__cuda_set_dispatch(gpu, &disp);
                CHECK(sgllm__cuda_gated_act(gpu, act, dref, du, nt * ff) == SGLLM_OK);
                fetch(y, dy, (size_t)ny * 4);
                fetch(ref, dref, (size_t)ny * 4);
                e = rel_err(y, ref, nt * ff);
                tol = !fused ? 0 : quant ? 1e-6 : 1e-5;
                if (fused) worst_gated = e > worst_gated ? e : worst_gated;
                CHECKF(e <= tol, "matvec_gated %s cols %lld batch %lld act %d: rel err %.3g", sgllm__type_name(t),
                       (long long)cols, (long long)nt, act, e);
                if (fused) { // the fused path writes y only
                    untouched = true;
                    for (int64_t i = nt * ff; i < ny; i++) untouched = untouched && isnan(y[i]);
                    CHECKF(untouched, "matvec_gated %s: wrote past y", sgllm__type_name(t));
                }
            }
            for (int i = 0; i < 5; i++) sgllm__cuda_dfree(gpu, dw[i]), free(w[i]);
            sgllm__cuda_dfree(gpu, dx), sgllm__cuda_dfree(gpu, dy), sgllm__cuda_dfree(gpu, dref);
            free(x), free(y), free(ref);
        }
    }
    // mixed types take the unfused path: q8_0 gate with q4_0 up, and q/k/v of two types
    {
        int64_t rows = 70, cols = 640;
        size_t b0, b1;
        uint8_t *w0 = rand_weights(SGLLM__T_Q8_0, rows, cols, &b0), *w1 = rand_weights(SGLLM__T_Q4_0, rows, cols, &b1);
        void *d0 = dev_copy(w0, b0), *d1 = dev_copy(w1, b1);
        float *x = rand_floats(cols, -1, 1), *dx = (float *)dev_copy(x, (size_t)cols * 4);
        float *dy = (float *)dev((size_t)rows * 16), *y = (float *)malloc((size_t)rows * 16), *ref = (float *)malloc((size_t)rows * 16);
        poison(dy, (size_t)rows * 16);
        CHECK(sgllm__cuda_matvec_gated(gpu, SGLLM__CUDA_ACT_SILU, SGLLM__T_Q8_0, d0, SGLLM__T_Q4_0, d1, rows, cols, dx, 1, dy,
                                       dy + rows) == SGLLM_OK);
        CHECK(sgllm__cuda_matvec(gpu, SGLLM__T_Q8_0, d0, rows, cols, dx, 1, dy + 2 * rows) == SGLLM_OK);
        CHECK(sgllm__cuda_matvec(gpu, SGLLM__T_Q4_0, d1, rows, cols, dx, 1, dy + 3 * rows) == SGLLM_OK);
        CHECK(sgllm__cuda_gated_act(gpu, SGLLM__CUDA_ACT_SILU, dy + 2 * rows, dy + 3 * rows, rows) == SGLLM_OK);
        fetch(y, dy, (size_t)rows * 16);
        CHECKF(rel_err(y, y + 2 * rows, rows) == 0, "matvec_gated mixed types: %.3g", rel_err(y, y + 2 * rows, rows));
        uint32_t types[2] = {SGLLM__T_Q8_0, SGLLM__T_Q4_0};
        const void *wm[2] = {d0, d1};
        int64_t rr[2] = {rows, rows};
        float *ym[2] = {dy, dy + rows};
        poison(dy, (size_t)rows * 16);
        CHECK(sgllm__cuda_matvec_multi(gpu, 2, types, wm, rr, cols, dx, 1, ym) == SGLLM_OK);
        CHECK(sgllm__cuda_matvec(gpu, SGLLM__T_Q8_0, d0, rows, cols, dx, 1, dy + 2 * rows) == SGLLM_OK);
        CHECK(sgllm__cuda_matvec(gpu, SGLLM__T_Q4_0, d1, rows, cols, dx, 1, dy + 3 * rows) == SGLLM_OK);
        fetch(y, dy, (size_t)rows * 16);
        memcpy(ref, y + 2 * rows, (size_t)rows * 8);
        CHECKF(rel_err(y, ref, 2 * rows) == 0, "matvec_multi mixed types: %.3g", rel_err(y, ref, 2 * rows));
        sgllm__cuda_dfree(gpu, d0), sgllm__cuda_dfree(gpu, d1), sgllm__cuda_dfree(gpu, dx), sgllm__cuda_dfree(gpu, dy);
        free(w0), free(w1), free(x), free(y), free(ref);
    }
    CHECK(fused_runs > 0);
    printf("fused matvec: %d fused multi runs; worst rel err against single matrices: multi %.3g, gated %.3g\n",
           fused_runs, worst_multi, worst_gated);
}

// The prefill GEMM forms against the CPU reference (double sums of the dequantized weights),
// every weight type, batches 9..300 (bf16 products: 1e-2 relative, as test_matmul), and
// against the single-matrix path: gemm_multi converts x once and multiplies the same bf16
// values, so it must match sgllm__cuda_gemm per matrix bit for bit; the vector
// dequantization (4-byte aligned weights) against the one-value kernel (a copy 2 bytes off
// alignment) within 1e-3 (the same values up to fp32 rounding before the bf16 rounding).
// gemm_gated's bf16 output: act(gate) * up with gate, up and the result rounded to bf16: 1e-2.
// gemm_x16 on bf16 activations: the CPU reference of the same bf16 values, 1e-2.
static void test_gemm_prefill(void) {
    static const int64_t batches[] = {9, 77, 300};
    double worst_ref = 0, worst_vec = 0, worst_gated = 0, worst_x16 = 0;
    for (int k = 0; k < N_TYPES; k++) {
        uint32_t t = all_types[k];
        int64_t cols = sgllm__types[t].block == 256 ? 768 : 640, rows3[3] = {96, 32, 40}, ff = 136, max_tok = 300;
        size_t wb[5];
        uint8_t *w[5];
        void *dw[5];
        float *wf[5];
        int64_t rows_of[5] = {rows3[0], rows3[1], rows3[2], ff, ff};
        for (int i = 0; i < 5; i++) {
            w[i] = rand_weights(t, rows_of[i], cols, &wb[i]);
            wf[i] = deq_rows(t, w[i], rows_of[i], cols);
            dw[i] = dev_copy(w[i], wb[i]);
        }
        uint8_t *dmis = (uint8_t *)dev(wb[0] + 16); // weight 0 at 2 bytes off 4-byte alignment
        CHECK(sgllm__cuda_upload(gpu, dmis + 2, w[0], wb[0]) == SGLLM_OK);
        float *x = rand_floats(max_tok * cols, -1, 1), *dx = (float *)dev_copy(x, (size_t)(max_tok * cols) * 4);
        uint16_t *xb = (uint16_t *)malloc((size_t)(max_tok * cols) * 2);
        float *xbf = (float *)malloc((size_t)(max_tok * cols) * 4);
        for (int64_t i = 0; i < max_tok * cols; i++) {
            uint32_t bits;
            memcpy(&bits, &x[i], 4);
            xb[i] = (uint16_t)(bits >> 16);
            xbf[i] = sgllm__bf16_to_f32(xb[i]);
        }
        void *dxb = dev_copy(xb, (size_t)(max_tok * cols) * 2);
        int64_t ny = max_tok * (rows3[0] + rows3[1] + rows3[2] + 2 * ff);
        float *dy = (float *)dev((size_t)ny * 4), *dref = (float *)dev((size_t)ny * 4);
        float *y = (float *)malloc((size_t)ny * 4), *yr = (float *)malloc((size_t)ny * 4), *ref = (float *)malloc((size_t)ny * 4);
        CHECK(sgllm__cuda_reserve(gpu, sgllm__cuda_gemm_scratch_bytes(t, ff, cols, max_tok)) == SGLLM_OK);
        for (int bi = 0; bi < 3; bi++) {
            int64_t nt = batches[bi];
            // q/k/v-shaped gemm_multi against the CPU and against gemm per matrix
            float *ym[3], *rm[3];
            int64_t off = 0;
            for (int i = 0; i < 3; i++) {
                ym[i] = dy + off, rm[i] = dref + off;
                for (int64_t tt = 0; tt < nt; tt++)
                    for (int64_t r = 0; r < rows3[i]; r++) {
                        double s = 0;
                        for (int64_t j = 0; j < cols; j++) s += (double)wf[i][r * cols + j] * x[tt * cols + j];
                        ref[off + tt * rows3[i] + r] = (float)s;
                    }
                off += nt * rows3[i];
            }
            uint32_t types[3] = {t, t, t};
            const void *wm[3] = {dw[0], dw[1], dw[2]};
            poison(dy, (size_t)ny * 4);
            poison(dref, (size_t)ny * 4);
            CHECKF(sgllm__cuda_gemm_multi(gpu, 3, types, wm, rows3, cols, dx, nt, ym) == SGLLM_OK, "gemm_multi: %s",
                   sgllm__cuda_errmsg(gpu));
            for (int i = 0; i < 3; i++) CHECK(sgllm__cuda_gemm(gpu, t, wm[i], rows3[i], cols, dx, nt, rm[i]) == SGLLM_OK);
            fetch(y, dy, (size_t)ny * 4);
            fetch(yr, dref, (size_t)ny * 4);
            double e = rel_err(y, ref, off), es = rel_err(y, yr, off);
            worst_ref = e > worst_ref ? e : worst_ref;
            CHECKF(e <= 1e-2 && es == 0, "gemm_multi %s batch %lld: rel err %.3g against the CPU, %.3g against gemm",
                   sgllm__type_name(t), (long long)nt, e, es);
            bool untouched = true;
            for (int64_t i = off; i < ny; i++) untouched = untouched && isnan(y[i]);
            CHECKF(untouched, "gemm_multi %s: wrote past its outputs", sgllm__type_name(t));
            // the one-value dequantization kernel (misaligned copy) against the vector one
            if (sgllm__types[t].block > 1) {
            poison(dref, (size_t)ny * 4);
            CHECK(sgllm__cuda_gemm(gpu, t, dmis + 2, rows3[0], cols, dx, nt, dref) == SGLLM_OK);
            fetch(yr, dref, (size_t)(nt * rows3[0]) * 4);
            e = rel_err(y, yr, nt * rows3[0]);
            worst_vec = e > worst_vec ? e : worst_vec;
            CHECKF(e <= 1e-3, "gemm %s batch %lld: vector against one-value dequantization %.3g", sgllm__type_name(t),
                   (long long)nt, e);
            }
            // gated, bf16 out
            int act = bi % 2 ? SGLLM__CUDA_ACT_GELU_TANH : SGLLM__CUDA_ACT_SILU;
            for (int64_t tt = 0; tt < nt; tt++)
                for (int64_t r = 0; r < ff; r++) {
                    double g = 0, u = 0;
                    for (int64_t j = 0; j < cols; j++) {
                        g += (double)wf[3][r * cols + j] * x[tt * cols + j];
                        u += (double)wf[4][r * cols + j] * x[tt * cols + j];
                    }
                    double a = act ? 0.5 * g * (1 + tanh(0.7978845608028654 * (g + 0.044715 * g * g * g))) : g / (1 + exp(-g));
                    ref[tt * ff + r] = (float)(a * u);
                }
            poison(dy, (size_t)ny * 4);
            CHECKF(sgllm__cuda_gemm_gated(gpu, act, t, dw[3], t, dw[4], ff, cols, dx, nt, dy, dref) == SGLLM_OK,
                   "gemm_gated: %s", sgllm__cuda_errmsg(gpu));
            fetch(y, dy, (size_t)ny * 4);
            {
                const uint16_t *yb = (const uint16_t *)y;
                for (int64_t i = 0; i < nt * ff; i++) yr[i] = sgllm__bf16_to_f32(yb[i]);
                untouched = true; // past the bf16 output the poison stays
                for (int64_t i = nt * ff; i < 2 * ny; i++) untouched = untouched && yb[i] == 0xffff;
                CHECKF(untouched, "gemm_gated %s: wrote past y", sgllm__type_name(t));
            }
            e = rel_err(yr, ref, nt * ff);
            worst_gated = e > worst_gated ? e : worst_gated;
            CHECKF(e <= 1e-2, "gemm_gated %s batch %lld act %d: rel err %.3g", sgllm__type_name(t), (long long)nt, act, e);
            // x16: rows ff of weight 3 from bf16 activations
            for (int64_t tt = 0; tt < nt; tt++)
                for (int64_t r = 0; r < ff; r++) {
                    double s = 0;
                    for (int64_t j = 0; j < cols; j++) s += (double)wf[3][r * cols + j] * xbf[tt * cols + j];
                    ref[tt * ff + r] = (float)s;
                }
            poison(dy, (size_t)ny * 4);
            CHECKF(sgllm__cuda_gemm_x16(gpu, t, dw[3], ff, cols, dxb, nt, dy) == SGLLM_OK, "gemm_x16: %s",
                   sgllm__cuda_errmsg(gpu));
            fetch(y, dy, (size_t)ny * 4);
            e = rel_err(y, ref, nt * ff);
            worst_x16 = e > worst_x16 ? e : worst_x16;
            CHECKF(e <= 1e-2, "gemm_x16 %s batch %lld: rel err %.3g", sgllm__type_name(t), (long long)nt, e);
        }
        for (int i = 0; i < 5; i++) sgllm__cuda_dfree(gpu, dw[i]), free(w[i]), free(wf[i]);
        sgllm__cuda_dfree(gpu, dmis), sgllm__cuda_dfree(gpu, dx), sgllm__cuda_dfree(gpu, dxb);
        sgllm__cuda_dfree(gpu, dy), sgllm__cuda_dfree(gpu, dref);
        free(x), free(xb), free(xbf), free(y), free(yr), free(ref);
    }
    // too little scratch for the largest matrix of the list is refused, nothing launched
    {
        float *d = (float *)dev(4096 * 4);
        uint32_t types[2] = {SGLLM__T_Q8_0, SGLLM__T_Q8_0};
        const void *wm[2] = {d, d};
        int64_t rr[2] = {64, 1 << 20};
        float *ym[2] = {d, d};
        CHECK(sgllm__cuda_gemm_multi(gpu, 2, types, wm, rr, 4096, d, 1 << 10, ym) == SGLLM_ERR_OUT_OF_MEMORY);
        CHECK(sgllm__cuda_gemm_x16(gpu, SGLLM__T_Q4_K, d, 1 << 20, 4096, d, 9, d) == SGLLM_ERR_OUT_OF_MEMORY);
        CHECK(sgllm__cuda_gemm_gated(gpu, 5, SGLLM__T_Q8_0, d, SGLLM__T_Q8_0, d, 64, 64, d, 9, d, d) ==
              SGLLM_ERR_INVALID_ARGUMENT);
        CHECK(sgllm__cuda_sync(gpu) == SGLLM_OK);
        sgllm__cuda_dfree(gpu, d);
    }
    printf("prefill gemm (batches 9-300, all types): worst rel err multi %.3g, gated bf16 %.3g, x16 %.3g against the "
           "CPU; vector vs one-value dequantization %.3g\n", worst_ref, worst_gated, worst_x16, worst_vec);
}

// dispatch.decode_merge: 1 = the merge kernel, 0 = the merge inside the split kernel, 2 = the
// merge across a thread block cluster.
static void set_decode_merge(int mode) {
    sgllm__cuda_dispatch d = *sgllm__cuda_get_dispatch(gpu);
    d.decode_merge = mode;
    sgllm__cuda_set_dispatch(gpu, &d);
}

static void set_decode_group_split(int on) {
    sgllm__cuda_dispatch d = *sgllm__cuda_get_dispatch(gpu);
    d.decode_group_split = on;
    sgllm__cuda_set_dispatch(gpu, &d);
}

static void set_decode_mma(int on) {
    sgllm__cuda_dispatch d = *sgllm__cuda_get_dispatch(gpu);
    d.decode_mma = on;
    sgllm__cuda_set_dispatch(gpu, &d);
}

// Decode attention against the CPU engine's attention task, on the same fp16 cache.
static void test_attention(void) {
    // head dims of every kernel class and odd piece counts (40: 5 pieces a row, 136: 17); GQA
    // groups 1, 4, 16, 3, 8 and 12 (heads per block 1, 4, 8 + 8, 4, 8 and 8 + 4)
    static const int32_t hds[] = {8, 40, 64, 72, 96, 128, 136, 256, 512};
    static const int32_t heads[][2] = {{8, 8}, {8, 2}, {16, 1}, {12, 4}, {16, 2}, {24, 2}};
    enum { N_HD = sizeof hds / sizeof hds[0], N_HEADS = sizeof heads / sizeof heads[0], PAGE = 16 };
    double worst = 0, worst_cpu = 0;
    int runs = 0, same = 0, paged_same = 0, paged_runs = 0;
    for (int hi = 0; hi < N_HD; hi++)
        for (int gi = 0; gi < N_HEADS; gi++)
            for (int wi = 0; wi < 2; wi++) {
                int32_t hd = hds[hi], nh = heads[gi][0], nkv = heads[gi][1], window = wi ? 100 : 0;
                int32_t n_q = 1 + 2 * ((hi + gi + wi) % 3), n_ctx = 1600;
                // a quarter start near the beginning, where most splits are empty
                int32_t pos0 = (hi + gi + wi) % 4 == 0 ? (int32_t)(test_u64() % 40) : 1 + (int32_t)(test_u64() % 1500);
                int64_t kvd = (int64_t)nkv * hd, qd = (int64_t)nh * hd;
                uint16_t *kc = (uint16_t *)malloc((size_t)(n_ctx * kvd) * 2), *vc = (uint16_t *)malloc((size_t)(n_ctx * kvd) * 2);
                for (int64_t i = 0; i < n_ctx * kvd; i++) {
                    kc[i] = sgllm__f32_to_fp16(test_uniform(-1, 1));
                    vc[i] = sgllm__f32_to_fp16(test_uniform(-1, 1));
                }
                float *q = rand_floats(n_q * qd, -1, 1), *ref = (float *)calloc((size_t)(n_q * qd), 4);
                float *out = (float *)malloc((size_t)(n_q * qd) * 4);
                // the CPU reference: sgllm__att_task on a context holding just this layer
                sgllm__layer L;
                memset(&L, 0, sizeof L);
                L.n_head = nh;
                L.n_head_kv = nkv;
                L.head_dim = hd;
                L.window = window;
                L.attn_scale = 1.0f / sqrtf((float)hd);
                sgllm__cpu c;
                memset(&c, 0, sizeof c);
                c.n_ctx = n_ctx;
                int32_t kv_rows = n_ctx; // no ring: position p at row p
                c.kv_rows = &kv_rows;
                c.k_cache = &kc;
                c.v_cache = &vc;
                c.q = q;
                c.att = ref;
                c.att_work = (float *)malloc((size_t)(n_ctx + 3 * hd) * 4); // one thread's, as sgllm__cpu_init sizes it
                sgllm__att_job job = {&c, &L, 0, pos0};
                for (int64_t task = 0; task < (int64_t)n_q * nh; task++) sgllm__att_task(&job, task, 0);
                // and in double precision, straight from the definition
                float *exact = (float *)malloc((size_t)(n_q * qd) * 4);
                double *sc = (double *)malloc((size_t)n_ctx * sizeof(double));
                for (int32_t i = 0; i < n_q; i++)
                    for (int32_t h = 0; h < nh; h++) {
                        int32_t p_hi = pos0 + i, p_lo = window ? (p_hi - window + 1 > 0 ? p_hi - window + 1 : 0) : 0;
                        int64_t kvo = (int64_t)(h / (nh / nkv)) * hd;
                        double mx = -INFINITY, sum = 0;
                        for (int32_t p = p_lo; p <= p_hi; p++) {
                            double dot = 0;
                            for (int32_t d = 0; d < hd; d++)
                                dot += (double)q[(int64_t)i * qd + (int64_t)h * hd + d] * sgllm__fp16_to_f32(kc[p * kvd + kvo + d]);
                            sc[p] = dot * L.attn_scale;
                            mx = sc[p] > mx ? sc[p] : mx;
                        }
                        for (int32_t p = p_lo; p <= p_hi; p++) sum += (sc[p] = exp(sc[p] - mx));
                        for (int32_t d = 0; d < hd; d++) {
                            double o = 0;
                            for (int32_t p = p_lo; p <= p_hi; p++) o += sc[p] * sgllm__fp16_to_f32(vc[p * kvd + kvo + d]);
                            exact[(int64_t)i * qd + (int64_t)h * hd + d] = (float)(o / sum);
                        }
                    }
                free(sc);

                int32_t pos[5] = {pos0, pos0 + 1, pos0 + 2, pos0 + 3, pos0 + 4};
                void *dk = dev_copy(kc, (size_t)(n_ctx * kvd) * 2), *dv = dev_copy(vc, (size_t)(n_ctx * kvd) * 2);
                float *dq = (float *)dev_copy(q, (size_t)(n_q * qd) * 4), *dout = (float *)dev((size_t)(n_q * qd) * 4);
                int32_t *dpos = (int32_t *)dev_copy(pos, sizeof pos);
                // the same cache behind a shuffled page table: pages of PAGE rows
                int32_t n_pages = n_ctx / PAGE, *pt = (int32_t *)malloc((size_t)n_pages * 4);
                for (int32_t i = 0; i < n_pages; i++) pt[i] = i;
                for (int32_t i = n_pages - 1; i > 0; i--) {
                    int32_t j = (int32_t)(test_u64() % (uint64_t)(i + 1)), t = pt[i];
                    pt[i] = pt[j], pt[j] = t;
                }
                uint16_t *kp = (uint16_t *)malloc((size_t)(n_ctx * kvd) * 2), *vp = (uint16_t *)malloc((size_t)(n_ctx * kvd) * 2);
                for (int32_t r = 0; r < n_ctx; r++) {
                    int64_t pr = (int64_t)pt[r / PAGE] * PAGE + r % PAGE;
                    memcpy(kp + pr * kvd, kc + (int64_t)r * kvd, (size_t)kvd * 2);
                    memcpy(vp + pr * kvd, vc + (int64_t)r * kvd, (size_t)kvd * 2);
                }
                void *dkp = dev_copy(kp, (size_t)(n_ctx * kvd) * 2), *dvp = dev_copy(vp, (size_t)(n_ctx * kvd) * 2);
                int32_t *dpt = (int32_t *)dev_copy(pt, (size_t)n_pages * 4);
                int32_t n_groups = (nh / nkv + 7) / 8;
                int32_t auto_splits = sgllm__dispatch_decode_splits(&disp, (int64_t)n_q * nkv * n_groups, pos0 + n_q);
                int32_t splits_list[] = {1, 2, 3, 7, 16, 33, auto_splits};
                size_t out_bytes = (size_t)(n_q * qd) * 4;
                float *first = (float *)malloc(out_bytes);
                for (size_t si = 0; si < sizeof splits_list / sizeof splits_list[0]; si++) {
                    int32_t splits = splits_list[si];
                    CHECK(sgllm__cuda_reserve(gpu, sgllm__cuda_attn_scratch_bytes(nh, hd, n_q, splits)) == SGLLM_OK);
                    // the merge kernel first (decode_merge 1), then the merge inside the split kernel three
                    // times and three replays of a graph of one launch, then the cluster merge twice and
                    // two replays of its graph: all the same bits (the dispatch's kernel: the tensor-core
                    // one for head dims 16k <= 256); last, the CUDA-core kernel for those head dims,
                    // against the double-precision attention only
                    void *graph[2] = {NULL, NULL};
                    bool mma_dim = hd % 16 == 0 && hd <= 256 && disp.decode_mma;
                    for (int run = 0; run < (mma_dim ? 12 : 11); run++) {
                        int mode = run == 0 ? 1 : run < 7 ? 0 : run < 11 ? 2 : disp.decode_merge;
                        bool eager = run < 4 || run == 7 || run == 8 || run == 11;
                        set_decode_merge(mode);
                        set_decode_mma(run == 11 ? 0 : disp.decode_mma);
                        poison(dout, out_bytes);
                        sgllm_status s;
                        if (eager) {
                            s = sgllm__cuda_attn_decode(gpu, dq, dk, dv, NULL, 0, nh, nkv, hd, dpos, n_q, window, L.attn_scale,
                                                        splits, dout);
                        } else {
                            void **g = &graph[mode == 2];
                            if (!*g) {
                                CHECK(sgllm__cuda_graph_begin(gpu) == SGLLM_OK);
                                CHECK(sgllm__cuda_attn_decode(gpu, dq, dk, dv, NULL, 0, nh, nkv, hd, dpos, n_q, window,
                                                              L.attn_scale, splits, dout) == SGLLM_OK);
                                CHECKF(sgllm__cuda_graph_end(gpu, g) == SGLLM_OK, "%s", sgllm__cuda_errmsg(gpu));
                            }
                            s = *g ? sgllm__cuda_graph_launch(gpu, *g) : SGLLM_ERR_BACKEND;
                        }
                        CHECKF(s == SGLLM_OK, "attn: %s", sgllm__cuda_errmsg(gpu));
                        fetch(out, dout, out_bytes);
                        if (run == 0) memcpy(first, out, out_bytes);
                        else if (run < 11) {
                            bool eq = !memcmp(out, first, out_bytes);
                            CHECKF(eq, "attn hd %d heads %d/%d window %d n_q %d splits %d: run %d (%s) differs from the "
                                   "merge kernel's bits (rel %.3g)", hd, nh, nkv, window, n_q, splits, run,
                                   eager ? "eager" : "graph", rel_err(out, first, n_q * qd));
                            same += eq;
                        }
                        double e = rel_err(out, ref, n_q * qd), ex = rel_err(out, exact, n_q * qd);
                        worst = ex > worst ? ex : worst;
                        worst_cpu = e > worst_cpu ? e : worst_cpu;
                        runs++;
                        CHECKF(ex <= 1e-5 && e <= 2e-3,
                               "attn hd %d heads %d/%d window %d n_q %d pos %d splits %d run %d: rel err %.3g (double), "
                               "%.3g (CPU)", hd, nh, nkv, window, n_q, pos0, splits, run, ex, e);
                    }
                    sgllm__cuda_graph_free(gpu, graph[0]);
                    sgllm__cuda_graph_free(gpu, graph[1]);
                    set_decode_mma(disp.decode_mma); // run 11's kernel was the other one
                    // the paged cache gives the contiguous cache's bits
                    poison(dout, out_bytes);
                    CHECKF(sgllm__cuda_attn_decode(gpu, dq, dkp, dvp, dpt, PAGE, nh, nkv, hd, dpos, n_q, window,
                                                   L.attn_scale, splits, dout) == SGLLM_OK,
                           "attn (paged): %s", sgllm__cuda_errmsg(gpu));
                    fetch(out, dout, out_bytes);
                    bool eq = !memcmp(out, first, out_bytes);
                    CHECKF(eq, "attn hd %d heads %d/%d window %d n_q %d splits %d: the paged cache gave other bits", hd,
                           nh, nkv, window, n_q, splits);
                    paged_same += eq;
                    paged_runs++;
                }
                set_decode_merge(disp.decode_merge);
                set_decode_mma(disp.decode_mma);
                sgllm__cuda_dfree(gpu, dkp);
                sgllm__cuda_dfree(gpu, dvp);
                sgllm__cuda_dfree(gpu, dpt);
                free(kp), free(vp), free(pt);
                free(first);
                sgllm__cuda_dfree(gpu, dk);
                sgllm__cuda_dfree(gpu, dv);
                sgllm__cuda_dfree(gpu, dq);
                sgllm__cuda_dfree(gpu, dout);
                sgllm__cuda_dfree(gpu, dpos);
                free(kc), free(vc), free(q), free(ref), free(out), free(c.att_work), free(exact);
            }
    printf("attention: %d runs (head dims 8-512, GQA groups 1/3/4/8/12/16, windows, 1-5 queries, 1-33 splits; head "
           "dims 16k <= 256 on the tensor cores, then once on the CUDA cores), worst "
           "rel err %.3g vs double, %.3g vs the CPU engine; %d runs (in-kernel merge x3 and its graph x3, cluster merge x2 "
           "and its graph x2) bit for bit "
           "the merge kernel's; %d of %d paged runs bit for bit the contiguous cache's\n", runs, worst, worst_cpu, same,
           paged_same, paged_runs);
}

// The split count cut so that the cluster merge's clusters are all resident at once: within
// [2, asked] under the cluster merge, the asked count otherwise, for one or three queries of
// Llama-3-8B, Gemma 3 270M and SmolLM2 shapes; one cluster always fits (the cluster merge
// needs that much) and so keeps the asked 16; more clusters than any device holds keep it too.
static void test_cluster_splits(void) {
    static const int32_t shapes[][3] = {{32, 8, 128}, {4, 1, 256}, {9, 3, 64}, {8, 8, 72}, {16, 2, 512}};
    bool cl = disp.decode_merge == 2 && sgllm__cuda_get_dispatch(gpu)->decode_merge == 2;
    int checked = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int64_t nq = 1; nq <= 3; nq += 2)
            for (int32_t asked = 1; asked <= 16; asked *= 2) {
                int32_t got = sgllm__cuda_attn_cluster_splits(gpu, shapes[i][0], shapes[i][1], shapes[i][2], nq, asked);
                CHECKF(asked == 1 ? got == 1 : got >= 2 && got <= asked, "cluster splits %d/%d/%d x%lld of %d: %d",
                       shapes[i][0], shapes[i][1], shapes[i][2], (long long)nq, asked, got);
                if (!cl) CHECK(got == asked);
                checked++;
            }
    if (cl) CHECK(sgllm__cuda_attn_cluster_splits(gpu, 4, 1, 256, 1, 16) == 16);
    CHECK(sgllm__cuda_attn_cluster_splits(gpu, 8, 8, 128, 100000, 16) == 16);
    CHECK(sgllm__cuda_attn_cluster_splits(gpu, 8, 3, 128, 1, 16) == 16); // not a GQA shape: no cut
    set_decode_merge(1);
    CHECK(sgllm__cuda_attn_cluster_splits(gpu, 32, 8, 128, 1, 16) == 16);
    set_decode_merge(disp.decode_merge);
    printf("cluster splits: %d shapes; Llama-3-8B's 16 splits become %d\n", checked,
           sgllm__cuda_attn_cluster_splits(gpu, 32, 8, 128, 1, 16));
}

// More head groups than the arrival counters (16 KV heads x 4200 queries > 65536): the op cuts
// the launch in two. The in-kernel merge twice, against the merge kernel bit for bit and
// against a double-precision attention on 24 random queries (1e-5 as above).
static void test_attention_many(void) {
    const int32_t nh = 16, nkv = 16, hd = 64, n_q = 4200, n_ctx = 800, splits = 3;
    const int64_t kvd = (int64_t)nkv * hd, qd = (int64_t)nh * hd;
    uint16_t *kc = (uint16_t *)malloc((size_t)(n_ctx * kvd) * 2), *vc = (uint16_t *)malloc((size_t)(n_ctx * kvd) * 2);
    for (int64_t i = 0; i < n_ctx * kvd; i++) {
        kc[i] = sgllm__f32_to_fp16(test_uniform(-1, 1));
        vc[i] = sgllm__f32_to_fp16(test_uniform(-1, 1));
    }
    float *q = rand_floats(n_q * qd, -1, 1), *ref = (float *)malloc((size_t)(n_q * qd) * 4);
    float *out = (float *)malloc((size_t)(n_q * qd) * 4);
    int32_t *pos = (int32_t *)malloc((size_t)n_q * 4);
    for (int32_t i = 0; i < n_q; i++) pos[i] = (int32_t)(test_u64() % (uint64_t)n_ctx);
    void *dk = dev_copy(kc, (size_t)(n_ctx * kvd) * 2), *dv = dev_copy(vc, (size_t)(n_ctx * kvd) * 2);
    float *dq = (float *)dev_copy(q, (size_t)(n_q * qd) * 4), *dout = (float *)dev((size_t)(n_q * qd) * 4);
    int32_t *dpos = (int32_t *)dev_copy(pos, (size_t)n_q * 4);
    float scale = 1.0f / sqrtf((float)hd);
    CHECK(sgllm__cuda_reserve(gpu, sgllm__cuda_attn_scratch_bytes(nh, hd, n_q, splits)) == SGLLM_OK);
    double worst = 0;
    int same = 0;
    for (int run = 0; run < 4; run++) { // the merge kernel, the in-kernel merge twice, the cluster merge
        set_decode_merge(run == 0 ? 1 : run < 3 ? 0 : 2);
        poison(dout, (size_t)(n_q * qd) * 4);
        sgllm_status s = sgllm__cuda_attn_decode(gpu, dq, dk, dv, NULL, 0, nh, nkv, hd, dpos, n_q, 0, scale, splits, dout);
        CHECKF(s == SGLLM_OK, "attn many: %s", sgllm__cuda_errmsg(gpu));
        fetch(run ? out : ref, dout, (size_t)(n_q * qd) * 4);
        if (run) {
            bool eq = !memcmp(out, ref, (size_t)(n_q * qd) * 4);
            CHECKF(eq, "attn many run %d differs from the merge kernel (rel %.3g)", run, rel_err(out, ref, n_q * qd));
            same += eq;
        }
    }
    set_decode_merge(disp.decode_merge);
    double sc[800];
    for (int t = 0; t < 24; t++) {
        int32_t i = t < 2 ? t * (n_q - 1) : (int32_t)(test_u64() % (uint64_t)n_q), h = (int32_t)(test_u64() % (uint64_t)nh);
        double mx = -INFINITY, sum = 0;
        for (int32_t p = 0; p <= pos[i]; p++) {
            double dot = 0;
            for (int32_t d = 0; d < hd; d++)
                dot += (double)q[(int64_t)i * qd + (int64_t)h * hd + d] * sgllm__fp16_to_f32(kc[p * kvd + (int64_t)h * hd + d]);
            sc[p] = dot * scale;
            mx = sc[p] > mx ? sc[p] : mx;
        }
        for (int32_t p = 0; p <= pos[i]; p++) sum += (sc[p] = exp(sc[p] - mx));
        float exact[64];
        for (int32_t d = 0; d < hd; d++) {
            double o = 0;
            for (int32_t p = 0; p <= pos[i]; p++) o += sc[p] * sgllm__fp16_to_f32(vc[p * kvd + (int64_t)h * hd + d]);
            exact[d] = (float)(o / sum);
        }
        double e = rel_err(out + (int64_t)i * qd + (int64_t)h * hd, exact, hd);
        worst = e > worst ? e : worst;
        CHECKF(e <= 1e-5, "attn many: query %d head %d (position %d): rel err %.3g", i, h, pos[i], e);
    }
    printf("attention, %d queries x 16 KV heads (two launches of counters): %d of 3 in-kernel and cluster merges bit for "
           "bit the merge kernel's, worst rel err %.3g vs double on 24 queries\n", n_q, same, worst);
    sgllm__cuda_dfree(gpu, dk), sgllm__cuda_dfree(gpu, dv), sgllm__cuda_dfree(gpu, dq), sgllm__cuda_dfree(gpu, dout);
    sgllm__cuda_dfree(gpu, dpos);
    free(kc), free(vc), free(q), free(ref), free(out), free(pos);
}

// norm_add_rmsnorm: x += rmsnorm(delta) * dw (or + delta), y = rmsnorm(x) * w, against the CPU
// and against the two separate GPU norms it replaces. dim 1022 takes the scalar path.
static void set_norm_threads(int n) {
    sgllm__cuda_dispatch d = *sgllm__cuda_get_dispatch(gpu);
    d.norm_threads = n;
    sgllm__cuda_set_dispatch(gpu, &d);
}

// The fused norm against the CPU's norms and against the separate ops, under the dispatch's
// threads per block and under 1024 (more than the kernel's registers allow: the op caps it).
static void test_norm_add(void) {
    static const int64_t dims[] = {640, 1022, 4096, 5376};
    for (int nt = 0; nt < 2; nt++)
    for (int di = 0; di < 4; di++)
        for (int variant = 0; variant < 5; variant++) { // post-norm+w, plain add+w, no delta, no w, in place
            set_norm_threads(nt ? 1024 : disp.norm_threads);
            int64_t rows = di == 0 ? 1 + (int64_t)(test_u64() % 3) : 5, dim = dims[di], n = rows * dim;
            bool with_delta = variant != 2, with_dw = variant == 0 || variant >= 3, with_w = variant != 3;
            bool in_place = variant == 4;
            float *x = rand_floats(n, -2, 2), *delta = rand_floats(n, -3, 3), *dw = rand_floats(dim, 0.5f, 1.5f);
            float *w = rand_floats(dim, 0.5f, 1.5f), *nd = (float *)malloc((size_t)n * 4);
            float *ref_x = (float *)malloc((size_t)n * 4), *ref_y = (float *)malloc((size_t)n * 4);
            sgllm__rmsnorm(nd, delta, dw, rows, dim, 1e-6f);
            for (int64_t i = 0; i < n; i++) ref_x[i] = x[i] + (with_delta ? (with_dw ? nd[i] : delta[i]) : 0.0f);
            sgllm__rmsnorm(ref_y, ref_x, with_w ? w : NULL, rows, dim, 1e-6f);
            float *dx = (float *)dev_copy(x, (size_t)n * 4), *dd = (float *)dev_copy(delta, (size_t)n * 4);
            float *ddw = (float *)dev_copy(dw, (size_t)dim * 4), *dwt = (float *)dev_copy(w, (size_t)dim * 4);
            float *dy = in_place ? dx : (float *)dev((size_t)n * 4);
            if (!in_place) poison(dy, (size_t)n * 4);
            CHECK(sgllm__cuda_norm_add_rmsnorm(gpu, dx, with_delta ? dd : NULL, with_dw ? ddw : NULL, with_w ? dwt : NULL,
                                               dy, rows, dim, 1e-6f) == SGLLM_OK);
            float *gx = (float *)malloc((size_t)n * 4), *gy = (float *)malloc((size_t)n * 4);
            float *sx = (float *)malloc((size_t)n * 4), *sy = (float *)malloc((size_t)n * 4);
            fetch(gy, dy, (size_t)n * 4);
            fetch(gx, dx, (size_t)n * 4);
            double ey = rel_err(gy, ref_y, n), ex = in_place ? 0 : rel_err(gx, ref_x, n);
            // the separate ops: delta normed in place, then the add and the next norm
            float *d2 = (float *)dev_copy(delta, (size_t)n * 4), *x2 = (float *)dev_copy(x, (size_t)n * 4);
            float *y2 = in_place ? x2 : (float *)dev((size_t)n * 4);
            if (with_delta && with_dw) CHECK(sgllm__cuda_add_rmsnorm(gpu, d2, NULL, ddw, d2, rows, dim, 1e-6f) == SGLLM_OK);
            CHECK(sgllm__cuda_add_rmsnorm(gpu, x2, with_delta ? d2 : NULL, with_w ? dwt : NULL, y2, rows, dim, 1e-6f) ==
                  SGLLM_OK);
            fetch(sy, y2, (size_t)n * 4);
            fetch(sx, x2, (size_t)n * 4);
            double sey = rel_err(gy, sy, n), sex = rel_err(gx, sx, n);
            float *gd = (float *)malloc((size_t)n * 4);
            fetch(gd, dd, (size_t)n * 4);
            CHECKF(ey <= 1e-5 && ex <= 1e-5 && sey <= 1e-6 && sex <= 1e-6 && !memcmp(gd, delta, (size_t)n * 4),
                   "norm_add dim %lld variant %d threads %d: y %.3g x %.3g vs separate ops y %.3g x %.3g", (long long)dim,
                   variant, sgllm__cuda_get_dispatch(gpu)->norm_threads, ey, ex, sey, sex);
            sgllm__cuda_dfree(gpu, dx), sgllm__cuda_dfree(gpu, dd), sgllm__cuda_dfree(gpu, ddw), sgllm__cuda_dfree(gpu, dwt);
            sgllm__cuda_dfree(gpu, d2), sgllm__cuda_dfree(gpu, x2);
            if (!in_place) sgllm__cuda_dfree(gpu, dy), sgllm__cuda_dfree(gpu, y2);
            free(x), free(delta), free(dw), free(w), free(nd), free(ref_x), free(ref_y), free(gx), free(gy), free(sx);
            free(sy), free(gd);
        }
    set_norm_threads(disp.norm_threads);
}

// qkv_post against the separate ops on random shapes: head dims 64-256, GQA, both RoPE
// layouts, partial rotary, biases and q/k norms on or off, 1 to 300 tokens, with and without
// a page table (a random permutation of pages). Bit for bit: q, both caches, k and v untouched.
static void test_qkv_post(void) {
    int runs = 0, exact = 0;
    for (int run = 0; run < 48; run++) {
        static const int32_t hds[] = {64, 128, 256};
        static const int64_t toks[] = {1, 1, 5, 300};
        int32_t hd = hds[test_u64() % 3], nkv = 1 + (int32_t)(test_u64() % 2), nq = nkv * (1 + (int32_t)(test_u64() % 4));
        int64_t n_tok = toks[test_u64() % 4], qs = (int64_t)nq * hd + 8 * (int64_t)(test_u64() % 2), kvd = (int64_t)nkv * hd;
        int64_t kvs = kvd + 4 * (int64_t)(test_u64() % 2);
        bool bias = test_u64() % 2, norm = test_u64() % 2, weights = test_u64() % 4 != 0, paged = test_u64() % 2;
        int neox = (int)(test_u64() % 2);
        int32_t n_rot = test_u64() % 2 ? hd : hd / 4, page = 16, rows = 512, n_pages = rows / page;
        float theta = n_rot == hd ? 10000.0f : 1e6f, pscale = test_u64() % 2 ? 1.0f : 0.125f;
        float *q = rand_floats(n_tok * qs, -3, 3), *k = rand_floats(n_tok * kvs, -3, 3), *v = rand_floats(n_tok * kvs, -3, 3);
        float *bq = rand_floats(nq * hd, -1, 1), *bk = rand_floats(kvd, -1, 1), *bv = rand_floats(kvd, -1, 1);
        float *qw = rand_floats(hd, 0.5f, 1.5f), *kw = rand_floats(hd, 0.5f, 1.5f);
        int32_t *pos = (int32_t *)malloc((size_t)n_tok * 4), *phys = (int32_t *)malloc((size_t)n_tok * 4), table[64];
        for (int32_t i = 0; i < n_pages; i++) table[i] = i;
        for (int32_t i = n_pages - 1; i > 0; i--) { // Fisher-Yates
            int32_t j = (int32_t)(test_u64() % (uint64_t)(i + 1)), t = table[i];
            table[i] = table[j], table[j] = t;
        }
        int64_t base = (int64_t)(test_u64() % (uint64_t)(rows - n_tok + 1));
        for (int64_t t = 0; t < n_tok; t++) {
            pos[t] = (int32_t)(base + t);
            phys[t] = paged ? table[pos[t] / page] * page + pos[t] % page : pos[t];
        }
        size_t cb = (size_t)rows * (size_t)kvd * 2;
        // reference: the separate ops on copies
        float *rq = (float *)dev_copy(q, (size_t)(n_tok * qs) * 4), *rk = (float *)dev_copy(k, (size_t)(n_tok * kvs) * 4);
        float *rv = (float *)dev_copy(v, (size_t)(n_tok * kvs) * 4);
        float *dbq = (float *)dev_copy(bq, (size_t)(nq * hd) * 4), *dbk = (float *)dev_copy(bk, (size_t)kvd * 4);
        float *dbv = (float *)dev_copy(bv, (size_t)kvd * 4), *dqw = (float *)dev_copy(qw, (size_t)hd * 4);
        float *dkw = (float *)dev_copy(kw, (size_t)hd * 4);
        int32_t *dpos = (int32_t *)dev_copy(pos, (size_t)n_tok * 4), *dphys = (int32_t *)dev_copy(phys, (size_t)n_tok * 4);
        int32_t *dtable = (int32_t *)dev_copy(table, sizeof table);
        uint16_t *rkc = (uint16_t *)dev(cb), *rvc = (uint16_t *)dev(cb), *fkc = (uint16_t *)dev(cb), *fvc = (uint16_t *)dev(cb);
        poison(rkc, cb), poison(rvc, cb), poison(fkc, cb), poison(fvc, cb);
        if (bias) {
            CHECK(sgllm__cuda_add_bias(gpu, rq, qs, dbq, (int64_t)nq * hd, n_tok) == SGLLM_OK);
            CHECK(sgllm__cuda_add_bias(gpu, rk, kvs, dbk, kvd, n_tok) == SGLLM_OK);
            CHECK(sgllm__cuda_add_bias(gpu, rv, kvs, dbv, kvd, n_tok) == SGLLM_OK);
        }
        if (norm)
            CHECK(sgllm__cuda_qkv_norm(gpu, rq, qs, nq, weights ? dqw : NULL, rk, kvs, nkv, weights ? dkw : NULL, NULL, kvs,
                                       hd, n_tok, 1e-6f) == SGLLM_OK);
        CHECK(sgllm__cuda_rope(gpu, rq, qs, nq, hd, n_rot, dpos, n_tok, pscale, theta, neox) == SGLLM_OK);
        CHECK(sgllm__cuda_rope(gpu, rk, kvs, nkv, hd, n_rot, dpos, n_tok, pscale, theta, neox) == SGLLM_OK);
        CHECK(sgllm__cuda_kv_write(gpu, rk, rv, kvs, kvd, dphys, n_tok, rkc, rvc, NULL, 0) == SGLLM_OK);
        // fused
        float *fq = (float *)dev_copy(q, (size_t)(n_tok * qs) * 4), *fk = (float *)dev_copy(k, (size_t)(n_tok * kvs) * 4);
        float *fv = (float *)dev_copy(v, (size_t)(n_tok * kvs) * 4);
        sgllm__cuda_qkv_post_args a = {fq, fk, fv, qs, kvs, nq, nkv, hd, bias ? dbq : NULL, bias ? dbk : NULL,
                                       bias ? dbv : NULL, norm, weights ? dqw : NULL, weights ? dkw : NULL, 1e-6f, n_rot,
                                       dpos, n_tok, pscale, theta, neox, fkc, fvc, paged ? dtable : NULL, paged ? page : 0};
        CHECK(sgllm__cuda_qkv_post(gpu, &a) == SGLLM_OK);
        float *hr = (float *)malloc((size_t)(n_tok * qs) * 4), *hf = (float *)malloc((size_t)(n_tok * qs) * 4);
        float *hk = (float *)malloc((size_t)(n_tok * kvs) * 4), *hv = (float *)malloc((size_t)(n_tok * kvs) * 4);
        uint16_t *c1 = (uint16_t *)malloc(cb), *c2 = (uint16_t *)malloc(cb), *c3 = (uint16_t *)malloc(cb), *c4 = (uint16_t *)malloc(cb);
        fetch(hr, rq, (size_t)(n_tok * qs) * 4), fetch(hf, fq, (size_t)(n_tok * qs) * 4);
        fetch(hk, fk, (size_t)(n_tok * kvs) * 4), fetch(hv, fv, (size_t)(n_tok * kvs) * 4);
        fetch(c1, rkc, cb), fetch(c2, fkc, cb), fetch(c3, rvc, cb), fetch(c4, fvc, cb);
        bool q_ok = !memcmp(hr, hf, (size_t)(n_tok * qs) * 4), k_ok = !memcmp(c1, c2, cb), v_ok = !memcmp(c3, c4, cb);
        bool in_ok = !memcmp(hk, k, (size_t)(n_tok * kvs) * 4) && !memcmp(hv, v, (size_t)(n_tok * kvs) * 4);
        int64_t written = 0;
        for (size_t i = 0; i < cb / 2; i++) written += c2[i] != 0xffff;
        CHECKF(q_ok && k_ok && v_ok && in_ok && written > 0,
               "qkv_post hd %d nq %d nkv %d tok %lld bias %d norm %d w %d neox %d n_rot %d paged %d: q %s (rel %.3g) "
               "k cache %d v cache %d inputs kept %d",
               hd, nq, nkv, (long long)n_tok, bias, norm, weights, neox, n_rot, paged, q_ok ? "same" : "differs",
               rel_err(hf, hr, n_tok * qs), k_ok, v_ok, in_ok);
        runs++;
        exact += q_ok && k_ok && v_ok;
        void *dptrs[] = {rq, rk, rv, dbq, dbk, dbv, dqw, dkw, dpos, dphys, dtable, rkc, rvc, fkc, fvc, fq, fk, fv};
        for (size_t i = 0; i < sizeof dptrs / sizeof dptrs[0]; i++) sgllm__cuda_dfree(gpu, dptrs[i]);
        free(q), free(k), free(v), free(bq), free(bk), free(bv), free(qw), free(kw), free(pos), free(phys);
        free(hr), free(hf), free(hk), free(hv), free(c1), free(c2), free(c3), free(c4);
    }
    printf("qkv_post: %d of %d random shapes bit for bit equal to the separate ops (pdl %d)\n", exact, runs,
           sgllm__cuda_get_dispatch(gpu)->pdl);
}

static void set_pdl(int on) {
    sgllm__cuda_dispatch d = *sgllm__cuda_get_dispatch(gpu);
    d.pdl = on;
    sgllm__cuda_set_dispatch(gpu, &d);
}

// A chain of dependent ops (each reads what the one before wrote): norm_add_rmsnorm, add_bias
// of its output, softcap, 40 times over one 640-float row.
static void chain_ops(float *x, float *d, const float *w, float *y) {
    for (int i = 0; i < 40; i++) {
        CHECK(sgllm__cuda_norm_add_rmsnorm(gpu, x, d, w, w, y, 1, 640, 1e-6f) == SGLLM_OK);
        CHECK(sgllm__cuda_add_bias(gpu, d, 640, y, 640, 1) == SGLLM_OK);
        CHECK(sgllm__cuda_softcap(gpu, d, 640, 3.0f) == SGLLM_OK);
    }
}

// The chain eagerly with PDL off is the reference; eagerly with PDL on and replayed from a
// graph captured with PDL on (three times) must give the same bits. (The launch timings of
// these ops are in sgllm-bench-kernels --launch.)
static void test_pdl_graph(void) {
    const int64_t dim = 640;
    float *x0 = rand_floats(dim, -2, 2), *d0 = rand_floats(dim, -2, 2), *w0 = rand_floats(dim, 0.5f, 1.5f);
    float *x = (float *)dev(dim * 4), *d = (float *)dev(dim * 4), *y = (float *)dev(dim * 4), *w = (float *)dev_copy(w0, dim * 4);
    float ref[640], got[640];
    int was = sgllm__cuda_get_dispatch(gpu)->pdl;
    void *graph = NULL;
    for (int mode = 0; mode < 5; mode++) { // off eager (reference), on eager, on graph x3
        set_pdl(mode > 0);
        CHECK(sgllm__cuda_upload(gpu, x, x0, dim * 4) == SGLLM_OK && sgllm__cuda_upload(gpu, d, d0, dim * 4) == SGLLM_OK);
        if (mode == 2) {
            CHECK(sgllm__cuda_graph_begin(gpu) == SGLLM_OK);
            chain_ops(x, d, w, y);
            CHECKF(sgllm__cuda_graph_end(gpu, &graph) == SGLLM_OK, "%s", sgllm__cuda_errmsg(gpu));
        }
        if (mode >= 2 && graph) CHECK(sgllm__cuda_graph_launch(gpu, graph) == SGLLM_OK);
        else if (mode < 2) chain_ops(x, d, w, y);
        fetch(mode ? got : ref, d, dim * 4);
        if (mode) CHECKF(!memcmp(got, ref, sizeof ref), "pdl chain mode %d differs from eager without pdl (rel %.3g)", mode,
                         rel_err(got, ref, dim));
        if (mode == 4) sgllm__cuda_graph_free(gpu, graph);
    }
    set_pdl(was);
    CHECK(sgllm__cuda_sync(gpu) == SGLLM_OK);
    void *dptrs[] = {x, d, y, w};
    for (size_t i = 0; i < sizeof dptrs / sizeof dptrs[0]; i++) sgllm__cuda_dfree(gpu, dptrs[i]);
    free(x0), free(d0), free(w0);
}

// The chain of test_pdl_chain: D-wide rows, CHAIN_TOK of them; attention with 8 query heads
// over 2 KV heads of D / 8.
enum { CHAIN_D = 1536, CHAIN_TOK = 12, CHAIN_CTX = 600 };
struct chain_bufs {
    uint32_t t;
    void *w, *w2;                 // (D, D) weights of type t
    float *x, *xn, *y, *u, *nw;   // (CHAIN_TOK, D) residual, its norm (+4 floats), op output, up buffer; (D) norm weight
    uint16_t *kc, *vc;            // (CHAIN_CTX, D / 4) fp16 caches
    int32_t *pos;                 // (3) query positions
};

// The matrix-vector kernels (staged int8, direct, fp32 staged, one value at a time, fused
// q/k/v-style and gate/up, the unfused gated path through the GEMM), decode attention with
// and without the split merge, and the GEMM, each followed by x += op output and xn = norm(x)
// (add_rmsnorm), which the next op reads: every kernel depends on the one before, and the
// ops' outputs are rewritten while the ops before may still read them.
static void chain_run(const struct chain_bufs *b) {
    const int64_t D = CHAIN_D, rb = (int64_t)sgllm__row_bytes(b->t, (uint64_t)D), hd = D / 8;
    const uint8_t *w = (const uint8_t *)b->w;
    sgllm__cuda_dispatch base = *sgllm__cuda_get_dispatch(gpu);
    for (int op = 0; op < 10; op++) {
        CHECK(sgllm__cuda_add_rmsnorm(gpu, b->x, b->y, b->nw, b->xn, CHAIN_TOK, D, 1e-6f) == SGLLM_OK);
        sgllm__cuda_dispatch d = base;
        d.matvec_int8 = op == 1 ? 2 : op == 2 ? 0 : 1;
        d.matvec_max_batch = op == 6 ? 1 : 8;
        sgllm__cuda_set_dispatch(gpu, &d);
        sgllm_status s = SGLLM_OK;
        const uint32_t types[3] = {b->t, b->t, b->t};
        const void *wm[3] = {w, w + D / 2 * rb, w + 3 * D / 4 * rb};
        const int64_t rm[3] = {D / 2, D / 4, D / 4};
        float *ym[3] = {b->y, b->y + 3 * D / 2, b->y + 9 * D / 4};
        if (op <= 2) s = sgllm__cuda_matvec(gpu, b->t, w, D, D, b->xn, op + 1, b->y);
        else if (op == 3) s = sgllm__cuda_matvec(gpu, b->t, w, D, D, b->xn + 1, 2, b->y); // unaligned x
        else if (op == 4) s = sgllm__cuda_matvec_multi(gpu, 3, types, wm, rm, D, b->xn, 3, ym);
        else if (op == 5 || op == 6)
            s = sgllm__cuda_matvec_gated(gpu, op == 5 ? SGLLM__CUDA_ACT_SILU : SGLLM__CUDA_ACT_GELU_TANH, b->t, w, b->t,
                                         b->w2, D, D, b->xn, 2, b->y, b->u);
        else if (op == 7 || op == 8)
            s = sgllm__cuda_attn_decode(gpu, b->xn, b->kc, b->vc, NULL, 0, 8, 2, (int32_t)hd, b->pos, op == 7 ? 3 : 1, 0,
                                        1.0f / sqrtf((float)hd), op == 7 ? 4 : 1, b->y);
        else s = sgllm__cuda_matmul(gpu, b->t, w, D, D, b->xn, CHAIN_TOK, b->y);
        CHECKF(s == SGLLM_OK, "chain op %d (%s): %s", op, sgllm__type_name(b->t), sgllm__cuda_errmsg(gpu));
    }
    CHECK(sgllm__cuda_add_rmsnorm(gpu, b->x, b->y, b->nw, b->xn, CHAIN_TOK, D, 1e-6f) == SGLLM_OK);
    sgllm__cuda_set_dispatch(gpu, &base);
}

// For every weight type, the chain above eagerly with PDL off is the reference; eagerly with
// PDL on, replayed twice from a graph captured with it on, and from one captured with it off
// must give the same bits (x and xn after the chain).
static void test_pdl_chain(void) {
    const int64_t D = CHAIN_D, n = CHAIN_TOK * D, kvd = D / 4;
    int was = sgllm__cuda_get_dispatch(gpu)->pdl, same = 0, runs = 0;
    struct chain_bufs b;
    float *x0 = rand_floats(n, -1, 1), *nw0 = rand_floats(D, 0.5f, 1.5f);
    uint16_t *kv = (uint16_t *)malloc((size_t)(CHAIN_CTX * kvd) * 2);
    b.x = (float *)dev((size_t)n * 4), b.xn = (float *)dev((size_t)(n + 4) * 4), b.y = (float *)dev((size_t)n * 4);
    b.u = (float *)dev((size_t)n * 4), b.nw = (float *)dev_copy(nw0, (size_t)D * 4);
    for (int i = 0; i < 2; i++) {
        for (int64_t k = 0; k < CHAIN_CTX * kvd; k++) kv[k] = sgllm__f32_to_fp16(test_uniform(-1, 1));
        *(i ? &b.vc : &b.kc) = (uint16_t *)dev_copy(kv, (size_t)(CHAIN_CTX * kvd) * 2);
    }
    const int32_t pos[3] = {500, 501, 599};
    b.pos = (int32_t *)dev_copy(pos, sizeof pos);
    float *ref = (float *)malloc((size_t)n * 8), *got = (float *)malloc((size_t)n * 8);
    for (int k = 0; k < N_TYPES; k++) {
        b.t = all_types[k];
        size_t wb;
        uint8_t *w = rand_weights(b.t, D, D, &wb), *w2 = rand_weights(b.t, D, D, &wb);
        b.w = dev_copy(w, wb), b.w2 = dev_copy(w2, wb);
        size_t g = sgllm__cuda_gemm_scratch_bytes(b.t, D, D, CHAIN_TOK), a = sgllm__cuda_attn_scratch_bytes(8, (int32_t)(D / 8), 3, 4);
        CHECK(sgllm__cuda_reserve(gpu, g > a ? g : a) == SGLLM_OK);
        void *graph = NULL;
        for (int mode = 0; mode < 6; mode++) { // off eager (reference), on eager, on graph x2, off graph x2
            set_pdl(mode >= 1 && mode <= 3);
            CHECK(sgllm__cuda_upload(gpu, b.x, x0, (size_t)n * 4) == SGLLM_OK);
            CHECK(sgllm__cuda_memset(gpu, b.y, 0, (size_t)n * 4) == SGLLM_OK);
            poison(b.xn, (size_t)(n + 4) * 4);
            if (mode == 2 || mode == 4) {
                CHECK(sgllm__cuda_graph_begin(gpu) == SGLLM_OK);
                chain_run(&b);
                CHECKF(sgllm__cuda_graph_end(gpu, &graph) == SGLLM_OK, "%s", sgllm__cuda_errmsg(gpu));
            }
            if (mode >= 2 && graph) CHECK(sgllm__cuda_graph_launch(gpu, graph) == SGLLM_OK);
            else if (mode < 2) chain_run(&b);
            float *o = mode ? got : ref;
            fetch(o, b.x, (size_t)n * 4);
            fetch(o + n, b.xn, (size_t)n * 4);
            if (!mode) {
                bool finite = true;
                for (int64_t i = 0; i < 2 * n; i++) finite = finite && isfinite(ref[i]);
                CHECKF(finite, "pdl chain %s: the reference has non-finite values", sgllm__type_name(b.t));
            } else {
                bool eq = !memcmp(got, ref, (size_t)n * 8);
                CHECKF(eq, "pdl chain %s mode %d differs from eager without pdl (rel %.3g)", sgllm__type_name(b.t), mode,
                       rel_err(got, ref, 2 * n));
                same += eq;
                runs++;
            }
            if (mode == 3 || mode == 5) {
                sgllm__cuda_graph_free(gpu, graph);
                graph = NULL;
            }
        }
        sgllm__cuda_dfree(gpu, b.w);
        sgllm__cuda_dfree(gpu, b.w2);
        free(w), free(w2);
    }
    set_pdl(was);
    printf("pdl chain (matvec staged/direct/fp32/generic, multi, gated fused and through the GEMM, decode attention, "
           "GEMM; 11 types): %d of %d runs bit for bit equal to eager without pdl\n", same, runs);
    sgllm__cuda_dfree(gpu, b.x), sgllm__cuda_dfree(gpu, b.xn), sgllm__cuda_dfree(gpu, b.y), sgllm__cuda_dfree(gpu, b.u);
    sgllm__cuda_dfree(gpu, b.nw), sgllm__cuda_dfree(gpu, b.kc), sgllm__cuda_dfree(gpu, b.vc), sgllm__cuda_dfree(gpu, b.pos);
    free(x0), free(nw0), free(kv), free(ref), free(got);
}

// Prefill attention (flash attention on the tensor cores) over a paged cache, against a
// double-precision softmax attention from the definition, per output element:
//   |gpu - exact| <= max|v| * (2^-11 + 2 ds + n * (2^-24 + 2^-25)) + 1e-6,
// a first-order worst-case bound from its roundings: each probability rounded to fp16 moves
// the output by at most 2^-11 of a value (2^-25 absolute below fp16's normal range, n keys);
// q rounded to fp16 moves score i by at most ds = 2^-11 * scale * sum_d |q_d k_id| (taken
// over the visible keys), which moves a softmax average by at most 2 ds max|v|; the fp32
// sum of n probabilities adds n 2^-24. The same shuffled-page run is compared bit for bit with
// a run on the contiguous cache (no page table), and within the same bound (plus the decode
// kernel's 1e-5 relative) with the split-KV decode kernel on the paged cache.
static void test_prefill(void) {
    static const struct {
        int32_t hd, nh, nkv, n_q, pos0, window;
        bool shuffled; // positions a random permutation of pos0 .. pos0 + n_q - 1
    } cases[] = {
        {64, 4, 4, 300, 0, 0, false},    {64, 8, 1, 37, 500, 0, false},  {128, 8, 2, 300, 0, 0, false},
        {128, 8, 1, 129, 1000, 0, false}, {128, 4, 4, 1, 77, 0, false},  {128, 8, 2, 200, 300, 64, false},
        {128, 4, 1, 150, 20, 0, true},    {80, 4, 1, 100, 50, 0, false}, {96, 2, 2, 65, 0, 17, false},
        {256, 8, 2, 150, 100, 0, false},  {256, 4, 4, 64, 0, 32, false}, {512, 2, 1, 70, 30, 0, false},
        {512, 4, 4, 33, 0, 0, false},     {48, 4, 2, 50, 10, 0, false},  {16, 2, 1, 40, 3, 0, false},
        {72, 4, 2, 20, 5, 0, false}, // not a multiple of 16: the decode kernel takes it
    };
    enum { PAGE = 16 };
    sgllm__cuda_dispatch small = disp; // a second tile choice per case: other compiled variants
    for (int c = 0; c < 3; c++) {
        small.prefill_block_m[c] = c == 2 ? 32 : 64;
        small.prefill_block_n[c] = 32;
    }
    small.prefill_warps[0] = small.prefill_warps[1] = 4;
    double worst = 0, worst_dec = 0; // largest error / bound
    int runs = 0;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int32_t hd = cases[ci].hd, nh = cases[ci].nh, nkv = cases[ci].nkv, n_q = cases[ci].n_q, pos0 = cases[ci].pos0;
        int32_t window = cases[ci].window, rows = pos0 + n_q, n_pages = (rows + PAGE - 1) / PAGE;
        int64_t kvd = (int64_t)nkv * hd, qd = (int64_t)nh * hd, cache = (int64_t)n_pages * PAGE * kvd;
        float scale = 1.0f / sqrtf((float)hd);
        uint16_t *kc = (uint16_t *)calloc((size_t)cache, 2), *vc = (uint16_t *)calloc((size_t)cache, 2);
        uint16_t *kp = (uint16_t *)calloc((size_t)cache, 2), *vp = (uint16_t *)calloc((size_t)cache, 2);
        int32_t *pt = (int32_t *)malloc((size_t)n_pages * 4), *pos = (int32_t *)malloc((size_t)n_q * 4);
        for (int32_t p = 0; p < n_pages; p++) pt[p] = p;
        for (int32_t p = n_pages - 1; p > 0; p--) { // shuffle the pages
            int32_t j = (int32_t)(test_u64() % (uint64_t)(p + 1)), tmp = pt[p];
            pt[p] = pt[j];
            pt[j] = tmp;
        }
        for (int64_t r = 0; r < rows; r++)
            for (int64_t e = 0; e < kvd; e++) {
                int64_t phys = ((int64_t)pt[r / PAGE] * PAGE + r % PAGE) * kvd + e;
                kp[phys] = kc[r * kvd + e] = sgllm__f32_to_fp16(test_uniform(-1, 1));
                vp[phys] = vc[r * kvd + e] = sgllm__f32_to_fp16(test_uniform(-1, 1));
            }
        for (int32_t i = 0; i < n_q; i++) pos[i] = pos0 + i;
        for (int32_t i = n_q - 1; cases[ci].shuffled && i > 0; i--) {
            int32_t j = (int32_t)(test_u64() % (uint64_t)(i + 1)), tmp = pos[i];
            pos[i] = pos[j];
            pos[j] = tmp;
        }
        float *q = rand_floats((int64_t)n_q * qd, -1, 1);
        float *exact = (float *)malloc((size_t)(n_q * qd) * 4), *bound = (float *)malloc((size_t)(n_q * nh) * 4);
        double *sc = (double *)malloc((size_t)rows * sizeof(double));
        for (int32_t i = 0; i < n_q; i++)
            for (int32_t h = 0; h < nh; h++) {
                int32_t p_hi = pos[i], p_lo = window ? (p_hi - window + 1 > 0 ? p_hi - window + 1 : 0) : 0;
                int64_t kvo = (int64_t)(h / (nh / nkv)) * hd;
                const float *qr = q + (int64_t)i * qd + (int64_t)h * hd;
                double mx = -INFINITY, sum = 0, ds = 0, vmax = 0;
                for (int32_t p = p_lo; p <= p_hi; p++) {
                    double dot = 0, adot = 0;
                    for (int32_t d = 0; d < hd; d++) {
                        double kv = sgllm__fp16_to_f32(kc[p * kvd + kvo + d]);
                        dot += (double)qr[d] * kv;
                        adot += fabs((double)qr[d] * kv);
                        double av = fabs((double)sgllm__fp16_to_f32(vc[p * kvd + kvo + d]));
                        vmax = av > vmax ? av : vmax;
                    }
                    sc[p] = dot * scale;
                    mx = sc[p] > mx ? sc[p] : mx;
                    ds = adot * scale > ds ? adot * scale : ds;
                }
                int32_t n = p_hi - p_lo + 1;
                bound[i * nh + h] = (float)(vmax * (ldexp(1, -11) * (1 + 2 * ds) + n * (ldexp(1, -24) + ldexp(1, -25))) + 1e-6);
                for (int32_t p = p_lo; p <= p_hi; p++) sum += (sc[p] = exp(sc[p] - mx));
                for (int32_t d = 0; d < hd; d++) {
                    double o = 0;
                    for (int32_t p = p_lo; p <= p_hi; p++) o += sc[p] * sgllm__fp16_to_f32(vc[p * kvd + kvo + d]);
                    exact[(int64_t)i * qd + (int64_t)h * hd + d] = (float)(o / sum);
                }
            }
        free(sc);
        void *dk = dev_copy(kp, (size_t)cache * 2), *dv = dev_copy(vp, (size_t)cache * 2);
        void *dkc = dev_copy(kc, (size_t)cache * 2), *dvc = dev_copy(vc, (size_t)cache * 2);
        float *dq = (float *)dev_copy(q, (size_t)(n_q * qd) * 4), *dout = (float *)dev((size_t)(n_q * qd) * 4);
        int32_t *dpos = (int32_t *)dev_copy(pos, (size_t)n_q * 4), *dpt = (int32_t *)dev_copy(pt, (size_t)n_pages * 4);
        float *out = (float *)malloc((size_t)(n_q * qd) * 4), *flat = (float *)malloc((size_t)(n_q * qd) * 4);
        for (int vi = 0; vi < 2; vi++) {
            sgllm__cuda_set_dispatch(gpu, vi ? &small : &disp);
            poison(dout, (size_t)(n_q * qd) * 4);
            sgllm_status s = sgllm__cuda_attn_prefill(gpu, dq, dkc, dvc, NULL, 0, nh, nkv, hd, dpos, n_q, window, scale, dout);
            CHECKF(s == SGLLM_OK, "prefill: %s", sgllm__cuda_errmsg(gpu));
            fetch(flat, dout, (size_t)(n_q * qd) * 4);
            poison(dout, (size_t)(n_q * qd) * 4);
            s = sgllm__cuda_attn_prefill(gpu, dq, dk, dv, dpt, PAGE, nh, nkv, hd, dpos, n_q, window, scale, dout);
            CHECKF(s == SGLLM_OK, "prefill (paged): %s", sgllm__cuda_errmsg(gpu));
            fetch(out, dout, (size_t)(n_q * qd) * 4);
            CHECKF(!memcmp(out, flat, (size_t)(n_q * qd) * 4), "hd %d: the paged cache gave other bits than the contiguous one", hd);
            double w = 0;
            int64_t bad = -1;
            for (int64_t e = 0; e < n_q * qd; e++) {
                double r = fabs((double)out[e] - exact[e]) / bound[e / hd];
                if (!(r <= 1)) bad = bad < 0 ? e : bad;
                w = r > w || r != r ? r : w;
            }
            worst = w > worst || w != w ? w : worst;
            runs++;
            CHECKF(bad < 0, "prefill hd %d heads %d/%d n_q %d pos0 %d window %d tiles %d: element %lld got %g, exact %g, bound %g",
                   hd, nh, nkv, n_q, pos0, window, vi, (long long)bad, bad < 0 ? 0.0 : (double)out[bad],
                   bad < 0 ? 0.0 : (double)exact[bad], bad < 0 ? 0.0 : (double)bound[bad / hd]);
        }
        sgllm__cuda_set_dispatch(gpu, &disp);
        // the decode kernel on the same paged cache: the same bound plus its own 1e-5 relative
        float *dec = (float *)malloc((size_t)(n_q * qd) * 4);
        CHECK(sgllm__cuda_reserve(gpu, sgllm__cuda_attn_scratch_bytes(nh, hd, n_q, 4)) == SGLLM_OK);
        poison(dout, (size_t)(n_q * qd) * 4);
        sgllm_status s = sgllm__cuda_attn_decode(gpu, dq, dk, dv, dpt, PAGE, nh, nkv, hd, dpos, n_q, window, scale, 4, dout);
        CHECKF(s == SGLLM_OK, "decode (paged): %s", sgllm__cuda_errmsg(gpu));
        fetch(dec, dout, (size_t)(n_q * qd) * 4);
        int64_t bad = -1;
        for (int64_t e = 0; e < n_q * qd; e++) {
            double r = fabs((double)out[e] - dec[e]) / (bound[e / hd] + 1e-5 * fabs((double)exact[e]) + 1e-6);
            if (!(r <= 1)) bad = bad < 0 ? e : bad;
            worst_dec = r > worst_dec || r != r ? r : worst_dec;
        }
        CHECKF(bad < 0, "prefill vs decode hd %d heads %d/%d n_q %d: element %lld: %g vs %g", hd, nh, nkv, n_q,
               (long long)bad, bad < 0 ? 0.0 : (double)out[bad], bad < 0 ? 0.0 : (double)dec[bad]);
        void *bufs[] = {dk, dv, dkc, dvc, dq, dout, dpos, dpt};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) sgllm__cuda_dfree(gpu, bufs[i]);
        free(kc), free(vc), free(kp), free(vp), free(pt), free(pos), free(q), free(exact), free(bound), free(out),
            free(flat), free(dec);
    }
    printf("prefill attention: %d runs (head dims 16-512, GQA 1/4/8, 1-300 queries, offsets, windows, shuffled pages), "
           "worst error %.3g of its bound vs double, %.3g vs the decode kernel\n", runs, worst, worst_dec);
}

// The cache write through a shuffled page table lands each row on its page.
static void test_kv_write_paged(void) {
    enum { PAGE = 8, PAGES = 6, KVD = 24, N = 30 };
    int32_t pt[PAGES], pos[N];
    for (int i = 0; i < PAGES; i++) pt[i] = i;
    for (int i = PAGES - 1; i > 0; i--) {
        int j = (int)(test_u64() % (uint64_t)(i + 1)), t = pt[i];
        pt[i] = pt[j];
        pt[j] = t;
    }
    for (int i = 0; i < N; i++) pos[i] = 5 + i;
    float *k = rand_floats(N * KVD, -4, 4), *v = rand_floats(N * KVD, -4, 4);
    void *dk = dev(PAGE * PAGES * KVD * 2), *dv = dev(PAGE * PAGES * KVD * 2);
    CHECK(sgllm__cuda_memset(gpu, dk, 0, PAGE * PAGES * KVD * 2) == SGLLM_OK);
    CHECK(sgllm__cuda_memset(gpu, dv, 0, PAGE * PAGES * KVD * 2) == SGLLM_OK);
    float *dkf = (float *)dev_copy(k, N * KVD * 4), *dvf = (float *)dev_copy(v, N * KVD * 4);
    int32_t *dpos = (int32_t *)dev_copy(pos, sizeof pos), *dpt = (int32_t *)dev_copy(pt, sizeof pt);
    CHECK(sgllm__cuda_kv_write(gpu, dkf, dvf, KVD, KVD, dpos, N, (uint16_t *)dk, (uint16_t *)dv, dpt, PAGE) == SGLLM_OK);
    uint16_t hk[PAGE * PAGES * KVD], hv[PAGE * PAGES * KVD];
    fetch(hk, dk, sizeof hk);
    fetch(hv, dv, sizeof hv);
    int wrong = 0;
    for (int r = 0; r < PAGE * PAGES; r++) {
        int i = r - 5, phys = pt[r / PAGE] * PAGE + r % PAGE;
        for (int e = 0; e < KVD; e++) {
            uint16_t ek = i >= 0 && i < N ? sgllm__f32_to_fp16(k[i * KVD + e]) : 0;
            uint16_t ev = i >= 0 && i < N ? sgllm__f32_to_fp16(v[i * KVD + e]) : 0;
            wrong += hk[phys * KVD + e] != ek || hv[phys * KVD + e] != ev;
        }
    }
    CHECKF(!wrong, "paged kv_write: %d values wrong", wrong);
    CHECK(sgllm__cuda_kv_write(gpu, dkf, dvf, KVD, KVD, dpos, N, (uint16_t *)dk, (uint16_t *)dv, dpt, 12) ==
          SGLLM_ERR_INVALID_ARGUMENT);
    void *bufs[] = {dk, dv, dkf, dvf, dpos, dpt};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) sgllm__cuda_dfree(gpu, bufs[i]);
    free(k), free(v);
}

// The activation buffer remembers which vector it holds (a quantizing norm's output), so the
// product after it skips its own quantization. Anything else that writes that vector must make
// it forget: an upload, a memset, an in-place op (softcap, add_bias, gated_act here). After each,
// the product over the held pointer must equal the same product over a copy at another
// address, which is quantized afresh.
static void test_xq_forget(void) {
    const int64_t dim = 640, rows = 64;
    size_t wb;
    uint8_t *w = rand_weights(SGLLM__T_Q8_0, rows, dim, &wb);
    void *dw = dev_copy(w, wb);
    float *x = rand_floats(dim, -1, 1), *nw = rand_floats(dim, 0.5f, 1.5f), *v = rand_floats(dim, -2, 2);
    float *dx = (float *)dev_copy(x, (size_t)dim * 4), *dnw = (float *)dev_copy(nw, (size_t)dim * 4);
    float *dh = (float *)dev((size_t)dim * 4), *dcopy = (float *)dev((size_t)dim * 4), *dy = (float *)dev((size_t)rows * 8);
    float *h = (float *)malloc((size_t)dim * 4), *y = (float *)malloc((size_t)rows * 8);
    int same = 0;
    for (int way = 0; way < 5; way++) {
        CHECK(sgllm__cuda_upload(gpu, dx, x, (size_t)dim * 4) == SGLLM_OK);
        CHECK(sgllm__cuda_norm_add_rmsnorm_q(gpu, dx, NULL, NULL, dnw, dh, 1, dim, 1e-6f, SGLLM__T_Q8_0) == SGLLM_OK);
        if (way == 0) CHECK(sgllm__cuda_upload(gpu, dh, v, (size_t)dim * 4) == SGLLM_OK);
        if (way == 1) CHECK(sgllm__cuda_memset(gpu, dh, 0x3f, (size_t)dim * 4) == SGLLM_OK);
        if (way == 2) CHECK(sgllm__cuda_softcap(gpu, dh, dim, 0.5f) == SGLLM_OK);
        if (way == 3) CHECK(sgllm__cuda_add_bias(gpu, dh, dim, dnw, dim, 1) == SGLLM_OK);
        if (way == 4) CHECK(sgllm__cuda_gated_act(gpu, SGLLM__CUDA_ACT_SILU, dh, dnw, dim) == SGLLM_OK);
        CHECK(sgllm__cuda_matvec(gpu, SGLLM__T_Q8_0, dw, rows, dim, dh, 1, dy) == SGLLM_OK);
        fetch(h, dh, (size_t)dim * 4);
        CHECK(sgllm__cuda_upload(gpu, dcopy, h, (size_t)dim * 4) == SGLLM_OK);
        CHECK(sgllm__cuda_matvec(gpu, SGLLM__T_Q8_0, dw, rows, dim, dcopy, 1, dy + rows) == SGLLM_OK);
        fetch(y, dy, (size_t)rows * 8);
        bool eq = !memcmp(y, y + rows, (size_t)rows * 4);
        CHECKF(eq, "activation buffer after a write (way %d): the product reused a stale quantization (rel %.3g)", way,
               rel_err(y, y + rows, rows));
        same += eq;
    }
    printf("activation buffer: forgotten after an upload, a memset, softcap, add_bias and gated_act (%d of 5)\n", same);
    void *bufs[] = {dw, dx, dnw, dh, dcopy, dy};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) sgllm__cuda_dfree(gpu, bufs[i]);
    free(w), free(x), free(nw), free(v), free(h), free(y);
}

// norm_add_rmsnorm_q: the norm that also quantizes its output for the next product. Its y must
// be the plain norm's bit for bit, and the products after it (q/k/v of one type and of two
// types of the same activation format, gate/up, on the wide and the direct kernels) must equal
// those after the plain norm, where they quantize y themselves. A quantization of other
// activations in between must end the reuse (the product then quantizes y again), and more
// than 8 rows or a float type take the plain norm.
static void test_norm_add_xq(void) {
    static const uint32_t types[] = {SGLLM__T_Q5_0, SGLLM__T_Q8_0, SGLLM__T_Q4_1, SGLLM__T_Q4_K, SGLLM__T_Q6_K};
    int runs = 0;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
        for (int di = 0; di < 2; di++) {
            uint32_t t = types[ti], t2 = t == SGLLM__T_Q5_0 ? SGLLM__T_Q8_0 : t == SGLLM__T_Q4_K ? SGLLM__T_Q6_K : t;
            bool k = sgllm__types[t].block == 256;
            int64_t dim = di ? 4096 : k ? 768 : 640, rows3[3] = {96, 32, 32};
            size_t wb[3];
            uint8_t *w[3];
            void *dw[3];
            for (int i = 0; i < 3; i++) {
                w[i] = rand_weights(i == 2 ? t2 : t, rows3[i], dim, &wb[i]);
                dw[i] = dev_copy(w[i], wb[i]);
            }
            int64_t ny = 9 * 160;
            float *x0 = rand_floats(9 * dim, -2, 2), *d0 = rand_floats(9 * dim, -2, 2), *g0 = rand_floats(dim, 0.5f, 1.5f);
            float *dx = (float *)dev(9 * dim * 4), *dd = (float *)dev_copy(d0, 9 * dim * 4), *dg = (float *)dev_copy(g0, dim * 4);
            float *dy = (float *)dev(9 * dim * 4), *dz = (float *)dev_copy(x0, 9 * dim * 4);
            float *out = (float *)dev(ny * 4), *out_ref = (float *)dev(ny * 4);
            float *h = (float *)malloc(9 * dim * 4), *h_ref = (float *)malloc(9 * dim * 4);
            float *o = (float *)malloc(ny * 4), *o_ref = (float *)malloc(ny * 4);
            for (int kern = 2; kern <= 4; kern++) // 4: the wide kernel with 1024 norm threads asked (capped)
                for (int64_t n = 1; n <= 9; n += 4) {
                    sgllm__cuda_dispatch dd2 = disp;
                    dd2.matvec_int8 = kern < 4 ? kern : 3;
                    if (kern == 4) dd2.norm_threads = 1024;
                    sgllm__cuda_set_dispatch(gpu, &dd2);
                    for (int mode = 0; mode < 4; mode++) {
                        // mode 0: plain norm (the reference); 1: quantizing norm; 2: quantizing
                        // norm, then another product quantizes z; 3: quantizing norm for a float type
                        CHECK(sgllm__cuda_upload(gpu, dx, x0, 9 * dim * 4) == SGLLM_OK);
                        poison(dy, 9 * dim * 4);
                        uint32_t qf = mode == 0 ? SGLLM__T_F32 : mode == 3 ? SGLLM__T_BF16 : t;
                        CHECK(sgllm__cuda_norm_add_rmsnorm_q(gpu, dx, dd, dg, dg, dy, n, dim, 1e-6f, qf) == SGLLM_OK);
                        float *dst = mode ? out : out_ref;
                        poison(dst, ny * 4);
                        if (mode == 2 && n <= 8)
                            CHECK(sgllm__cuda_matvec(gpu, t, dw[1], rows3[1], dim, dz, n, dst + 96 * n) == SGLLM_OK);
                        uint32_t tt[3] = {t, t, t2};
                        const void *wm[3] = {dw[0], dw[1], dw[2]};
                        float *ym[3] = {dst, dst + 96 * n, dst + 128 * n};
                        CHECKF(sgllm__cuda_matvec_multi(gpu, 3, tt, wm, rows3, dim, dy, n, ym) == SGLLM_OK, "%s",
                               sgllm__cuda_errmsg(gpu));
                        fetch(mode ? h : h_ref, dy, (size_t)(n * dim) * 4);
                        fetch(mode ? o : o_ref, dst, (size_t)(160 * n) * 4);
                        if (mode) {
                            CHECKF(!memcmp(h, h_ref, (size_t)(n * dim) * 4), "norm_q %s dim %lld rows %lld kernel %d mode %d: y "
                                   "differs (rel err %.3g)", sgllm__type_name(t), (long long)dim, (long long)n, kern, mode,
                                   rel_err(h, h_ref, n * dim));
                            CHECKF(!memcmp(o, o_ref, (size_t)(160 * n) * 4),
                                   "norm_q %s+%s dim %lld rows %lld kernel %d mode %d: products differ (rel err %.3g)",
                                   sgllm__type_name(t), sgllm__type_name(t2), (long long)dim, (long long)n, kern, mode,
                                   rel_err(o, o_ref, 160 * n));
                            runs++;
                        }
                    }
                }
            sgllm__cuda_set_dispatch(gpu, &disp);
            for (int i = 0; i < 3; i++) sgllm__cuda_dfree(gpu, dw[i]), free(w[i]);
            void *bufs[] = {dx, dd, dg, dy, dz, out, out_ref};
            for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) sgllm__cuda_dfree(gpu, bufs[i]);
            free(x0), free(d0), free(g0), free(h), free(h_ref), free(o), free(o_ref);
        }
    printf("norm_add_rmsnorm_q: %d runs (5 types, mixed q/k/v, direct and wide kernels, 1-9 rows, norm threads as "
           "dispatched and 1024) bit for bit the plain "
           "norm's and the products after it\n", runs);
}

// A q/k/v product told that a tensor-core attention follows (sgllm__cuda_qkv_before_mma) runs
// its own kernel instance with the largest shared-memory carveout (where the product may let
// the next kernel launch early: PDL on, weights within dispatch.matvec_qkv_early_kb): the same
// bits as without, for one type (the wide kernel) and for two (q/k of one type, v of another:
// the two-type kernel); the hint is read once (the call after it is the plain launch again),
// and the launch names tell which instance ran.
static void test_qkv_before_mma(void) {
    static const uint32_t types[2][3] = {{SGLLM__T_Q8_0, SGLLM__T_Q8_0, SGLLM__T_Q8_0},
                                         {SGLLM__T_Q5_0, SGLLM__T_Q5_0, SGLLM__T_Q8_0}};
    int runs = 0;
    for (int v = 0; v < 4; v++) { // 4096-value rows: the instances with activations one piece ahead
        int64_t E = v < 2 ? 640 : 4096, rows[3] = {v < 2 ? 1024 : 256, v < 2 ? 256 : 64, v < 2 ? 256 : 64};
        int64_t n_out = rows[0] + rows[1] + rows[2];
        size_t wb[3];
        uint8_t *w[3];
        const void *dw[3];
        for (int k = 0; k < 3; k++) w[k] = rand_weights(types[v % 2][k], rows[k], E, &wb[k]), dw[k] = dev_copy(w[k], wb[k]);
        float *x = rand_floats(E, -1, 1), *dx = (float *)dev_copy(x, (size_t)E * 4);
        float *out[3][3], *host[3];
        for (int r = 0; r < 3; r++) {
            for (int k = 0; k < 3; k++) out[r][k] = (float *)dev((size_t)rows[k] * 4);
            host[r] = (float *)malloc((size_t)n_out * 4);
            if (r == 1) sgllm__cuda_qkv_before_mma(gpu, 1); // run 0: plain, 1: hinted, 2: plain again
            CHECKF(sgllm__cuda_matvec_multi(gpu, 3, types[v % 2], dw, rows, E, dx, 1, out[r]) == SGLLM_OK, "%s",
                   sgllm__cuda_errmsg(gpu));
            const sgllm__cuda_dispatch *d = sgllm__cuda_get_dispatch(gpu);
            bool hinted = r == 1 && d->pdl && (int64_t)(wb[0] + wb[1] + wb[2]) <= (int64_t)d->matvec_qkv_early_kb * 1024;
            char want[96];
            snprintf(want, sizeof want, "matvec (wide%s%s)", v % 2 ? ", two types" : "", hinted ? ", before tensor-core attention" : "");
            CHECKF(!strcmp(sgllm__cuda_last_launch(gpu), want), "q/k/v run %d: ran '%s', expected '%s'", r,
                   sgllm__cuda_last_launch(gpu), want);
            for (int k = 0, o = 0; k < 3; o += (int)rows[k], k++) fetch(host[r] + o, out[r][k], (size_t)rows[k] * 4);
        }
        for (int r = 1; r < 3; r++) {
            CHECKF(!memcmp(host[0], host[r], (size_t)n_out * 4),
                   "q/k/v %s+%s cols %lld run %d: differs from the plain launch (rel err %.3g)", sgllm__type_name(types[v % 2][0]),
                   sgllm__type_name(types[v % 2][2]), (long long)E, r, rel_err(host[r], host[0], n_out));
            runs++;
        }
        for (int r = 0; r < 3; r++) {
            for (int k = 0; k < 3; k++) sgllm__cuda_dfree(gpu, out[r][k]);
            free(host[r]);
        }
        for (int k = 0; k < 3; k++) sgllm__cuda_dfree(gpu, (void *)dw[k]), free(w[k]);
        sgllm__cuda_dfree(gpu, dx), free(x);
    }
    printf("qkv_before_mma: %d runs (one and two weight types, 640 and 4096 values a row) bit for bit the plain launch\n",
           runs);
}

// Attention that does qkv_post's work itself (sgllm__cuda_attn_decode_post, one token): its
// output and both caches bit for bit those of qkv_post followed by attn_decode (whole GQA groups
// a block), also where the fused path spreads a group over several blocks (decode_group_split). q, k and v
// come from a q/k/v product launched just before (the fused kernel starts its cache reads
// before that launch finishes), over two consecutive positions (the second reads the row the
// first wrote), the second step also replayed from a graph. Shapes: GQA groups 1-12 (two head
// groups per KV head: one block writes the row), biases, q/k norms with and without weights,
// partial RoPE of both layouts, windows, paged caches, positions at tile edges, 1-16 splits.
// With the cluster merge, the output is also quantized for an o projection (Q8_0, Q4_1 or
// Q4_K); that projection must give the bits of one that quantizes the reference output itself,
// and where the quantization is made in the merge, the output is overwritten behind the
// context's back first, so a projection that quantized it again would differ.
static void test_attn_post(void) {
    typedef struct { int32_t nh, nkv, hd, n_rot, norm, weights, bias, neox, window; } shape;
    static const shape shapes[] = {
        {4, 1, 256, 256, 1, 1, 0, 1, 0}, {4, 1, 256, 256, 1, 1, 0, 1, 96}, {32, 8, 128, 128, 0, 0, 0, 0, 0},
        {14, 2, 64, 64, 0, 0, 1, 1, 0},  {24, 2, 64, 32, 1, 0, 1, 0, 0},   {9, 3, 128, 64, 1, 1, 0, 1, 0},
        {8, 8, 64, 64, 0, 0, 0, 1, 40},  {16, 2, 512, 512, 1, 1, 1, 1, 0}};
    static const uint32_t o_types[3] = {SGLLM__T_Q8_0, SGLLM__T_Q4_1, SGLLM__T_Q4_K};
    const int64_t E = 256, rows = 640, page = 32, E_o = 64;
    int runs = 0, reused = 0;
    double told_worst = 0;
    int told_cuda = 0, told_tensor = 0; // runs told the keys whose split kernel was seen by name
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int pi = 0; pi < 4; pi++) {
            const shape *sh = &shapes[si];
            int32_t hd = sh->hd, nh = sh->nh, nkv = sh->nkv;
            int64_t qd = (int64_t)nh * hd, kvd = (int64_t)nkv * hd;
            int32_t p0s[4] = {0, 31, 63, (int32_t)(100 + test_u64() % 500)}, sps[4] = {1, 16, 5, 16};
            int32_t p0 = p0s[pi], sp = sps[(pi + (int)si) % 4];
            bool paged = (pi + si) % 2;
            size_t wb[3];
            uint8_t *w[3] = {rand_weights(SGLLM__T_Q8_0, qd, E, &wb[0]), rand_weights(SGLLM__T_Q8_0, kvd, E, &wb[1]),
                             rand_weights(SGLLM__T_Q8_0, kvd, E, &wb[2])};
            void *dw[3];
            for (int k = 0; k < 3; k++) dw[k] = dev_copy(w[k], wb[k]);
            uint32_t to = o_types[(si + (size_t)pi) % 3];
            if (qd % sgllm__types[to].block) to = SGLLM__T_Q8_0;
            size_t wob;
            uint8_t *wo = rand_weights(to, E_o, qd, &wob);
            void *dwo = dev_copy(wo, wob);
            float *yo[2] = {(float *)dev((size_t)E_o * 4), (float *)dev((size_t)E_o * 4)};
            float *hy[2] = {(float *)malloc((size_t)E_o * 4), (float *)malloc((size_t)E_o * 4)};
            int cluster = (si + (size_t)pi) % 2 ? 2 : 1; // the fused path's merge
            const int split = (int)((si + (size_t)pi / 2) % 2); // the fused path's decode_group_split
            set_decode_group_split(split);
            int32_t hb = sgllm__cuda_attn_heads_per_block(gpu, nh, nkv, 1);
            set_decode_group_split(0);
            int64_t al = disp.matvec_wide_align < 8 ? 8 : disp.matvec_wide_align;
            int32_t bv = sgllm__types[to].block == 256 ? 256 : 32, group = nh / nkv; // heads or GQA groups in blocks
            int32_t full = hb < group ? hb : group; // heads of a full head group
            bool reuse = cluster == 2 && sp > 1 &&
                         (hd % bv == 0 || (group <= 8 && full * hd % bv == 0 && group % full * hd % bv == 0)) &&
                         (int64_t)sgllm__row_bytes(to, (uint64_t)qd) % al == 0;
            float *x = rand_floats(2 * E, -1, 1), *dx = (float *)dev_copy(x, (size_t)(2 * E) * 4);
            float *bias = rand_floats(qd + 2 * kvd, -0.5f, 0.5f), *nw = rand_floats(2 * hd, 0.5f, 1.5f);
            float *dbias = (float *)dev_copy(bias, (size_t)(qd + 2 * kvd) * 4), *dnw = (float *)dev_copy(nw, (size_t)(2 * hd) * 4);
            float *dq = (float *)dev((size_t)qd * 4), *dk = (float *)dev((size_t)kvd * 4), *dv = (float *)dev((size_t)kvd * 4);
            size_t cb = (size_t)(rows * kvd) * 2;
            uint16_t *cache = (uint16_t *)malloc(cb);
            for (size_t i = 0; i < cb / 2; i++) cache[i] = sgllm__f32_to_fp16(test_uniform(-1, 1));
            uint16_t *kc[2], *vc[2];
            for (int k = 0; k < 2; k++) kc[k] = (uint16_t *)dev_copy(cache, cb), vc[k] = (uint16_t *)dev_copy(cache, cb);
            int32_t table[64];
            for (int32_t i = 0; i < rows / page; i++) table[i] = (int32_t)(rows / page) - 1 - i;
            int32_t *dtable = (int32_t *)dev_copy(table, sizeof table);
            int32_t pos[2] = {p0, p0 + 1};
            int32_t *dpos[2] = {(int32_t *)dev_copy(&pos[0], 4), (int32_t *)dev_copy(&pos[1], 4)};
            float *out[2] = {(float *)dev((size_t)qd * 4), (float *)dev((size_t)qd * 4)};
            float *h[2] = {(float *)malloc((size_t)qd * 4), (float *)malloc((size_t)qd * 4)};
            uint16_t *hc[4];
            for (int k = 0; k < 4; k++) hc[k] = (uint16_t *)malloc(cb);
            CHECK(sgllm__cuda_reserve(gpu, sgllm__cuda_attn_scratch_bytes(nh, hd, 1, sp)) == SGLLM_OK);
            const uint32_t tt[3] = {SGLLM__T_Q8_0, SGLLM__T_Q8_0, SGLLM__T_Q8_0};
            const void *wm[3] = {dw[0], dw[1], dw[2]};
            const int64_t r3[3] = {qd, kvd, kvd};
            float *ym[3] = {dq, dk, dv};
            float sc = 1.0f / sqrtf((float)hd);
            for (int step = 0; step < 2; step++) {
                void *graph = NULL;
                for (int path = 0; path < 2; path++) { // 0: qkv_post + attention, 1: fused
                    sgllm__cuda_qkv_post_args a = {dq, dk, dv, qd, kvd, nh, nkv, hd, sh->bias ? dbias : NULL,
                                                   sh->bias ? dbias + qd : NULL, sh->bias ? dbias + qd + kvd : NULL,
                                                   sh->norm, sh->weights ? dnw : NULL, sh->weights ? dnw + hd : NULL, 1e-6f,
                                                   sh->n_rot, dpos[step], 1, 1.0f, 10000.0f, sh->neox, kc[path], vc[path],
                                                   paged ? dtable : NULL, paged ? (int32_t)page : 0};
                    poison(out[path], (size_t)qd * 4);
                    // the reference merges by the merge kernel; the fused path also across a cluster
                    set_decode_merge(path == 1 ? cluster : 1);
                    set_decode_group_split(path == 1 ? split : 0);
                    bool capture = path == 1 && step == 1;
                    if (capture) CHECK(sgllm__cuda_graph_begin(gpu) == SGLLM_OK);
                    CHECK(sgllm__cuda_matvec_multi(gpu, 3, tt, wm, r3, E, dx + step * E, 1, ym) == SGLLM_OK);
                    if (path == 0) {
                        CHECK(sgllm__cuda_qkv_post(gpu, &a) == SGLLM_OK);
                        CHECK(sgllm__cuda_attn_decode(gpu, dq, kc[0], vc[0], a.page_table, a.page_size, nh, nkv, hd,
                                                      dpos[step], 1, sh->window, sc, sp, out[0]) == SGLLM_OK);
                    } else {
                        CHECKF(sgllm__cuda_attn_decode_post(gpu, &a, sh->window, sc, sp, out[1], to, 0) == SGLLM_OK,
                               "attn_decode_post: %s", sgllm__cuda_errmsg(gpu));
                    }
                    if (capture) {
                        CHECK(sgllm__cuda_graph_end(gpu, &graph) == SGLLM_OK);
                        CHECK(graph && sgllm__cuda_graph_launch(gpu, graph) == SGLLM_OK);
                    }
                    fetch(h[path], out[path], (size_t)qd * 4);
                    // the merge quantized out for the projection, which then skips its own quantization:
                    // the buffer holds out, and the projection is its product's launch alone (poisoning
                    // out instead would make the buffer forget it: test_xq_forget)
                    if (path == 1) CHECKF(sgllm__cuda_xq_holds(gpu, out[1]) == (int)reuse, "reuse %d", (int)reuse);
                    uint64_t n0 = sgllm__cuda_launches(gpu);
                    CHECK(sgllm__cuda_matvec(gpu, to, dwo, E_o, qd, out[path], 1, yo[path]) == SGLLM_OK);
                    if (path == 1 && reuse && qd > sgllm__cuda_get_dispatch(gpu)->matvec_xq_inline)
                        CHECKF(sgllm__cuda_launches(gpu) - n0 == 1, "o projection after the merge: %llu launches",
                               (unsigned long long)(sgllm__cuda_launches(gpu) - n0));
                    fetch(hy[path], yo[path], (size_t)E_o * 4);
                    if (path == 1 && step == 0) {
                        // told that no query sees more than its own keys, splits shorter than
                        // dispatch.decode_mma take the CUDA-core kernel: the same attention to
                        // rounding, the same cache rows
                        poison(out[1], (size_t)qd * 4);
                        CHECKF(sgllm__cuda_attn_decode_post(gpu, &a, sh->window, sc, sp, out[1], to, p0 + 1) == SGLLM_OK,
                               "attn_decode_post (told the keys): %s", sgllm__cuda_errmsg(gpu));
                        // the split kernel's body by its launch name, where it was the last launch (one
                        // split or the cluster merge: no merge kernel after it)
                        if (strstr(sgllm__cuda_last_launch(gpu), "split kernel")) {
                            const sgllm__cuda_dispatch *cd = sgllm__cuda_get_dispatch(gpu);
                            bool tensor = cd->decode_mma > 0 && hd % 16 == 0 && hd <= 256 && (p0 + sp) / sp >= cd->decode_mma;
                            bool named = strstr(sgllm__cuda_last_launch(gpu), "tensor cores") != NULL;
                            CHECKF(named == tensor, "attn_decode_post told %d keys, %d splits, dim %d: ran %s", p0 + 1, sp,
                                   hd, sgllm__cuda_last_launch(gpu));
                            // the answer the decode step's graph tiers go by
                            CHECKF(sgllm__cuda_attn_mma(gpu, hd, sp, p0 + 1) == (int)named,
                                   "sgllm__cuda_attn_mma told %d keys, %d splits, dim %d: %d", p0 + 1, sp, hd,
                                   sgllm__cuda_attn_mma(gpu, hd, sp, p0 + 1));
                            told_cuda += !tensor, told_tensor += tensor;
                        }
                        float *hl = (float *)malloc((size_t)qd * 4);
                        fetch(hl, out[1], (size_t)qd * 4);
                        double e = rel_err(hl, h[0], qd);
                        CHECKF(e <= 1e-5, "attn_decode_post short heads %d/%d dim %d pos %d splits %d: rel err %.3g", nh,
                               nkv, hd, p0, sp, e);
                        told_worst = e > told_worst ? e : told_worst;
                        free(hl);
                    }
                }
                sgllm__cuda_graph_free(gpu, graph);
                reused += reuse;
                fetch(hc[0], kc[0], cb), fetch(hc[1], kc[1], cb), fetch(hc[2], vc[0], cb), fetch(hc[3], vc[1], cb);
                bool o_ok = !memcmp(h[0], h[1], (size_t)qd * 4), k_ok = !memcmp(hc[0], hc[1], cb),
                     v_ok = !memcmp(hc[2], hc[3], cb), p_ok = !memcmp(hy[0], hy[1], (size_t)E_o * 4);
                CHECKF(o_ok && k_ok && v_ok && p_ok,
                       "attn_decode_post heads %d/%d dim %d rot %d norm %d bias %d window %d pos %d step %d splits %d "
                       "paged %d merge %d heads %d o %s: output %s (rel err %.3g), k cache %d, v cache %d, o projection %d",
                       nh, nkv, hd, sh->n_rot, sh->norm, sh->bias, sh->window, p0, step, sp, paged, cluster, hb,
                       sgllm__type_name(to), o_ok ? "same" : "differs", rel_err(h[1], h[0], qd), k_ok, v_ok, p_ok);
                runs++;
            }
            void *bufs[] = {dw[0], dw[1], dw[2], dx, dbias, dnw, dq, dk, dv, kc[0], kc[1], vc[0], vc[1], dtable,
                            dpos[0], dpos[1], out[0], out[1], dwo, yo[0], yo[1]};
            for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) sgllm__cuda_dfree(gpu, bufs[i]);
            for (int k = 0; k < 3; k++) free(w[k]);
            for (int k = 0; k < 4; k++) free(hc[k]);
            free(h[0]), free(h[1]), free(hy[0]), free(hy[1]), free(x), free(bias), free(nw), free(cache), free(wo);
        }
    set_decode_merge(disp.decode_merge);
    set_decode_group_split(disp.decode_group_split);
    // the rule itself: halve a group's heads a block while decode_max_splits splits of every KV
    // head's head groups fit the SMs (132 SMs, 16 splits: Gemma 3 270M 4/1 -> 1 head a block,
    // SmolLM2-135M 9/3 -> 2, Llama-3-8B 32/8 -> its group of 4; without the field, the group)
    sgllm__cuda_dispatch rd = disp;
    rd.sm_count = 132, rd.decode_max_splits = 16;
    static const int32_t rule[][5] = {{4, 1, 1, 1, 4}, {9, 3, 1, 2, 4}, {32, 8, 1, 4, 4}, {4, 1, 4, 2, 4},
                                      {14, 2, 1, 2, 8}, {8, 8, 1, 1, 1}, {16, 2, 1, 2, 8}};
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i < sizeof rule / sizeof rule[0]; i++) {
            rd.decode_group_split = k == 0;
            sgllm__cuda_set_dispatch(gpu, &rd);
            int32_t got = sgllm__cuda_attn_heads_per_block(gpu, rule[i][0], rule[i][1], rule[i][2]);
            CHECKF(got == rule[i][3 + k], "heads per block, %d/%d heads, %d queries, group split %d: %d, want %d",
                   rule[i][0], rule[i][1], rule[i][2], k == 0, got, rule[i][3 + k]);
        }
    sgllm__cuda_set_dispatch(gpu, &disp);
    CHECK(sgllm__cuda_attn_heads_per_block(gpu, 6, 4, 1) == 0 && sgllm__cuda_attn_heads_per_block(gpu, 4, 1, 0) == 0);
    CHECKF(reused >= 10, "attn_decode_post: only %d runs quantize in the merge", reused);
    CHECKF(told_cuda > 0 && (told_tensor > 0 || !disp.decode_mma), "attn_decode_post told the keys: %d runs on the CUDA "
           "cores, %d on the tensor cores", told_cuda, told_tensor);
    printf("attn_decode_post: %d runs (8 shapes, 4 positions, two steps, eager and graph, merge kernel or cluster, "
           "GQA groups whole or over several blocks) bit "
           "for bit qkv_post and attention one after the other, and their o projections (%d of them quantized by the "
           "cluster merge); told the keys, within %.3g of them (%d runs seen on the CUDA cores, %d on the tensor cores)\n",
           runs, reused, told_worst, told_cuda, told_tensor);
}

// Transfers: asynchronous uploads through the pinned staging buffer, the host source changed
// right after each call (the staging copy must have been taken), many in a row without a
// synchronization (each waits for the staging buffer's previous copy), one over the 16 MB
// staging limit (the synchronous path); downloads of growing sizes (the staging buffer grows,
// the last one over the limit); read-backs through both ring slots (written on the stream at
// their device addresses, then marked) with more work enqueued behind them, waited for in either
// order, and bad slots or sizes refused. Every byte must arrive.
static void test_transfers(void) {
    const size_t big = (size_t)17 << 20;
    uint8_t *h = (uint8_t *)malloc(big), *back = (uint8_t *)malloc(big), *want = (uint8_t *)malloc(big);
    uint8_t *d = (uint8_t *)dev(big);
    size_t off = 0, sizes[40];
    for (int i = 0; i < 40; i++) {
        sizes[i] = 1 + (size_t)(test_u64() % 65536);
        for (size_t j = 0; j < sizes[i]; j++) want[off + j] = h[j] = (uint8_t)test_u64();
        CHECK(sgllm__cuda_upload_async(gpu, d + off, h, sizes[i]) == SGLLM_OK);
        memset(h, 0xA5, sizes[i]);
        off += sizes[i];
    }
    fetch(back, d, off);
    CHECKF(!memcmp(back, want, off), "upload_async: %zu bytes in 40 uploads differ", off);
    for (size_t j = 0; j < big; j++) want[j] = h[j] = (uint8_t)(j * 131 + 7);
    CHECK(sgllm__cuda_upload_async(gpu, d, h, big) == SGLLM_OK);
    memset(h, 0, big);
    static const size_t down[4] = {1000, (size_t)2 << 20, (size_t)3 << 20, (size_t)17 << 20};
    for (int i = 0; i < 4; i++) {
        memset(back, 0, down[i]);
        fetch(back, d, down[i]);
        CHECKF(!memcmp(back, want, down[i]), "download of %zu bytes differs", down[i]);
    }
    for (int round = 0; round < 20; round++) {
        uint8_t vals[2], got[2][64];
        for (int sl = 0; sl < 2; sl++) {
            vals[sl] = (uint8_t)test_u64();
            int32_t *slot = sgllm__cuda_readback_slot(gpu, sl);
            CHECK(slot && sgllm__cuda_memset(gpu, slot, vals[sl], 64) == SGLLM_OK);
            CHECK(sgllm__cuda_readback_mark(gpu, sl) == SGLLM_OK);
        }
        CHECK(sgllm__cuda_upload_async(gpu, d, want, 4096) == SGLLM_OK); // behind the read-backs
        for (int k = 0; k < 2; k++) {
            int sl = (round + k) % 2;
            CHECK(sgllm__cuda_readback_wait(gpu, sl, got[sl], sizeof got[sl]) == SGLLM_OK);
            bool same = true;
            for (int j = 0; j < 64; j++) same = same && got[sl][j] == vals[sl];
            CHECKF(same, "read-back slot %d, round %d differs", sl, round);
        }
    }
    CHECK(!sgllm__cuda_readback_slot(gpu, 2) && !sgllm__cuda_readback_slot(gpu, -1));
    CHECK(sgllm__cuda_readback_mark(gpu, 2) == SGLLM_ERR_INVALID_ARGUMENT);
    uint8_t sink[65];
    CHECK(sgllm__cuda_readback_wait(gpu, 0, sink, 65) == SGLLM_ERR_INVALID_ARGUMENT);
    CHECK(sgllm__cuda_readback_wait(gpu, 2, sink, 4) == SGLLM_ERR_INVALID_ARGUMENT);
    CHECK(sgllm__cuda_sync(gpu) == SGLLM_OK);
    sgllm__cuda_dfree(gpu, d);
    free(h), free(back), free(want);
}

// Bad arguments are refused with a message, never launched.
static void test_errors(void) {
    float *d = (float *)dev(4096 * 4);
    CHECK(sgllm__cuda_matvec(gpu, SGLLM__T_Q8_0, d, 4, 64, d, 9, d) == SGLLM_ERR_INVALID_ARGUMENT);
    CHECK(strstr(sgllm__cuda_errmsg(gpu), "matvec") != NULL);
    CHECK(sgllm__cuda_matvec(gpu, SGLLM__T_Q8_1, d, 4, 64, d, 1, d) == SGLLM_ERR_INVALID_ARGUMENT);
    CHECK(sgllm__cuda_matvec(gpu, SGLLM__T_Q4_K, d, 4, 100, d, 1, d) == SGLLM_ERR_INVALID_ARGUMENT);
    CHECK(sgllm__cuda_embed(gpu, 99, d, 4, 64, (const int32_t *)d, 1, 1, d) == SGLLM_ERR_INVALID_ARGUMENT);
    CHECK(sgllm__cuda_attn_decode(gpu, d, (uint16_t *)d, (uint16_t *)d, NULL, 0, 8, 3, 64, (int32_t *)d, 1, 0, 1, 1, d) ==
          SGLLM_ERR_INVALID_ARGUMENT);
    CHECK(sgllm__cuda_attn_decode(gpu, d, (uint16_t *)d, (uint16_t *)d, NULL, 0, 8, 8, 520, (int32_t *)d, 1, 0, 1, 1, d) ==
          SGLLM_ERR_INVALID_ARGUMENT);
    // the decode kernel moves queries and outputs 16 bytes at a time
    CHECK(sgllm__cuda_attn_decode(gpu, d + 1, (uint16_t *)d, (uint16_t *)d, NULL, 0, 8, 8, 64, (int32_t *)d, 1, 0, 1, 1, d) ==
          SGLLM_ERR_INVALID_ARGUMENT);
    CHECK(sgllm__cuda_attn_decode(gpu, d, (uint16_t *)d, (uint16_t *)d, NULL, 0, 8, 8, 64, (int32_t *)d, 1, 0, 1, 1, d + 1) ==
          SGLLM_ERR_INVALID_ARGUMENT);
    CHECK(sgllm__cuda_attn_prefill(gpu, d, (uint16_t *)d, (uint16_t *)d, NULL, 0, 8, 3, 64, (int32_t *)d, 1, 0, 1, d) ==
          SGLLM_ERR_INVALID_ARGUMENT);
    CHECK(sgllm__cuda_attn_prefill(gpu, d, (uint16_t *)d, (uint16_t *)d, (int32_t *)d, 48, 8, 8, 64, (int32_t *)d, 1, 0, 1,
                                   d) == SGLLM_ERR_INVALID_ARGUMENT);
    CHECK(sgllm__cuda_attn_decode(gpu, d, (uint16_t *)d, (uint16_t *)d, (int32_t *)d, 0, 8, 8, 64, (int32_t *)d, 1, 0, 1, 1,
                                  d) == SGLLM_ERR_INVALID_ARGUMENT);
    CHECK(sgllm__cuda_rope(gpu, d, 64, 1, 64, 65, (int32_t *)d, 1, 1, 1e4f, 1) == SGLLM_ERR_INVALID_ARGUMENT);
    CHECK(sgllm__cuda_gated_act(gpu, 7, d, d, 4) == SGLLM_ERR_INVALID_ARGUMENT);
    CHECK(sgllm__cuda_gemm(gpu, SGLLM__T_Q8_0, d, 1 << 20, 4096, d, 1 << 16, d) == SGLLM_ERR_OUT_OF_MEMORY);
    CHECK(strstr(sgllm__cuda_errmsg(gpu), "scratch") != NULL);
    CHECK(sgllm__cuda_sync(gpu) == SGLLM_OK); // nothing bad was launched
    sgllm__cuda_dfree(gpu, d);
}

// Device sampler against the CPU sampler (section 6) given the same uniform u, on fresh
// random logits of both vocabulary sizes: peaked (a few spikes over noise), gaussian, flat
// (every token within 0.1) and tied (8 distinct values), over random parameters and penalty
// windows (without one half the time when no penalty applies), each sampled twice in a row
// (both must agree: the context's tickets and histogram are back at zero after a sampling).
// The device must pick the CPU's token, except where the CPU's own answer moves
// under u +- 1e-5 (the device sums the same weights in another order) or the two tokens'
// penalized logits tie; such cases must stay under 1% of the draws and nothing else may differ.
static sgllm_token draw_at(const sgllm__cand *c, int64_t n, double u) {
    double total = 0, cum = 0;
    for (int64_t i = 0; i < n; i++) total += c[i].p;
    for (int64_t i = 0; i < n; i++)
        if (u * total < (cum += c[i].p)) return c[i].id;
    return c[n - 1].id;
}

// A sampler's token into tok[0] only.
static sgllm__cuda_sample_out smp_out(int32_t *tok) {
    sgllm__cuda_sample_out o = {tok, NULL, NULL, NULL};
    return o;
}

// sgllm__cuda_sample_greedy against the CPU's greedy answer (sgllm__argmax) and the full device
// sampler at temperature 0: vocabularies of 1 to 300001, normal logits, integer logits (ties at
// the maximum), 10% NaN, all NaN, all -inf, the maximum last; each twice in a row, and once from a
// graph replayed twice (the last-block ticket must return to zero every time). Each case once more
// with the token also sent to a read-back slot (mapped host memory, found after
// sgllm__cuda_readback_mark without a copy) and a random position plus one beside it.
static void test_sample_greedy(void) {
    static const int64_t ns[] = {1, 7, 2048, 2049, 49152, 262144, 300001};
    const int64_t NMAX = 300001;
    float *x = (float *)malloc((size_t)NMAX * sizeof(float));
    float *d_x = (float *)dev((size_t)NMAX * sizeof(float));
    void *work = dev(sgllm__cuda_sample_work_bytes(NMAX));
    int32_t *d_out = (int32_t *)dev(4 * sizeof(int32_t)), *d_tok = (int32_t *)dev(2 * sizeof(int32_t));
    int32_t *d_pos = (int32_t *)dev(sizeof(int32_t));
    sgllm__cuda_sample_args a;
    memset(&a, 0, sizeof a);
    a.temperature = 0, a.top_p = 1, a.repeat_penalty = 1, a.u = 0.5;
    sgllm__cuda_sample_args *d_args = (sgllm__cuda_sample_args *)dev(sizeof a);
    CHECK(sgllm__cuda_upload(gpu, d_args, &a, sizeof a) == SGLLM_OK);
    int runs = 0;
    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++)
        for (int kind = 0; kind < 6; kind++) {
            const int64_t n = ns[ni];
            for (int64_t i = 0; i < n; i++) {
                double g = sqrt(-2 * log(1 - (double)test_uniform(0, 1))) * cos(6.283185307179586 * test_uniform(0, 1));
                x[i] = kind == 1 ? (float)(test_u64() % 8) : kind == 3 ? NAN : kind == 4 ? -INFINITY : (float)(3 * g);
                if (kind == 2 && test_u64() % 10 == 0) x[i] = NAN;
            }
            if (kind == 5) x[n - 1] = 100;
            int32_t want = sgllm__argmax(x, n), got[4] = {-1, -1, -1, -1};
            CHECK(sgllm__cuda_upload(gpu, d_x, x, (size_t)n * sizeof(float)) == SGLLM_OK);
            poison(d_out, 4 * sizeof(int32_t));
            for (int r = 0; r < 2; r++)
                CHECKF(sgllm__cuda_sample_greedy(gpu, d_x, n, work, smp_out(d_out + r)) == SGLLM_OK, "sample_greedy: %s",
                       sgllm__cuda_errmsg(gpu));
            CHECK(sgllm__cuda_sample(gpu, d_x, n, d_args, NULL, NULL, work, smp_out(d_out + 2)) == SGLLM_OK);
            fetch(got, d_out, 3 * sizeof(int32_t));
            CHECKF(got[0] == want && got[1] == want && got[2] == want,
                   "greedy sampler, vocab %lld, logits kind %d: %d, %d, full sampler %d, cpu %d", (long long)n, kind, got[0],
                   got[1], got[2], want);
            int32_t pos = (int32_t)(test_u64() % 100000), both[2] = {-1, -1}, host = -1;
            const int sl = runs % 2;
            sgllm__cuda_sample_out o = {d_tok, d_pos, sgllm__cuda_readback_slot(gpu, sl), NULL};
            CHECK(o.host && sgllm__cuda_upload(gpu, d_pos, &pos, sizeof pos) == SGLLM_OK);
            poison(d_tok, 2 * sizeof(int32_t));
            CHECK(sgllm__cuda_memset(gpu, o.host, 0xff, sizeof(int32_t)) == SGLLM_OK);
            CHECK((kind % 2 ? sgllm__cuda_sample(gpu, d_x, n, d_args, NULL, NULL, work, o)
                            : sgllm__cuda_sample_greedy(gpu, d_x, n, work, o)) == SGLLM_OK);
            CHECK(sgllm__cuda_readback_mark(gpu, sl) == SGLLM_OK);
            CHECK(sgllm__cuda_readback_wait(gpu, sl, &host, sizeof host) == SGLLM_OK);
            fetch(both, d_tok, sizeof both);
            CHECKF(host == want && both[0] == want && both[1] == pos + 1,
                   "%s sampler to slot %d, vocab %lld, kind %d: host %d, token %d, position %d (cpu %d, position %d)",
                   kind % 2 ? "full" : "greedy", sl, (long long)n, kind, host, both[0], both[1], want, pos + 1);
            runs++;
        }
    CHECK(!sgllm__cuda_readback_slot(gpu, 2) && sgllm__cuda_readback_mark(gpu, -1) == SGLLM_ERR_INVALID_ARGUMENT);
    // from a graph, replayed twice over the last logits
    void *graph = NULL;
    CHECK(sgllm__cuda_graph_begin(gpu) == SGLLM_OK);
    CHECK(sgllm__cuda_sample_greedy(gpu, d_x, NMAX, work, smp_out(d_out + 3)) == SGLLM_OK);
    CHECK(sgllm__cuda_graph_end(gpu, &graph) == SGLLM_OK);
    for (int r = 0; r < 2; r++) {
        poison(d_out + 3, sizeof(int32_t));
        CHECK(graph && sgllm__cuda_graph_launch(gpu, graph) == SGLLM_OK);
        int32_t g = -1;
        fetch(&g, d_out + 3, sizeof g);
        CHECKF(g == sgllm__argmax(x, NMAX), "greedy sampler from a graph, replay %d: %d, cpu %d", r, g,
               sgllm__argmax(x, NMAX));
    }
    sgllm__cuda_graph_free(gpu, graph);
    CHECK(sgllm__cuda_sample_greedy(gpu, d_x, 0, work, smp_out(d_out)) == SGLLM_ERR_INVALID_ARGUMENT);
    printf("greedy sampler: %d vocabularies x logit kinds equal to the CPU's and the full sampler's, graph replays ok\n",
           runs);
    void *bufs[] = {d_x, work, d_out, d_args, d_tok, d_pos};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) sgllm__cuda_dfree(gpu, bufs[i]);
    free(x);
}

static void test_sample(void) {
    const int64_t NMAX = 262144, vocabs[2] = {262144, 49152};
    float *x = (float *)malloc((size_t)NMAX * sizeof(float));
    float *d_x = (float *)dev((size_t)NMAX * sizeof(float));
    void *work = dev(sgllm__cuda_sample_work_bytes(NMAX));
    sgllm__cuda_sample_args *d_args = (sgllm__cuda_sample_args *)dev(sizeof *d_args);
    int32_t *d_pen = (int32_t *)dev(2 * 64 * sizeof(int32_t)), *d_out = (int32_t *)dev(2 * sizeof(int32_t));
    static const float temps[] = {0, 0.3f, 0.8f, 1.5f}, top_ps[] = {1, 0.95f, 0.6f}, min_ps[] = {0, 0.05f, 0.3f};
    static const int32_t top_ks[] = {0, 1, 40, 500, -1};
    int draws = 0, differ = 0, unexplained = 0;
    for (int vi = 0; vi < 2; vi++)
        for (int dist = 0; dist < 4; dist++)
            for (int trial = 0; trial < 40; trial++) {
                const int64_t n = vocabs[vi];
                for (int64_t i = 0; i < n; i++) {
                    double g = sqrt(-2 * log(1 - (double)test_uniform(0, 1))) * cos(6.283185307179586 * test_uniform(0, 1));
                    x[i] = dist == 0 ? (float)(3 * g) : dist == 1 ? (float)g : dist == 2 ? test_uniform(-0.05f, 0.05f)
                                                                                         : (float)(test_u64() % 8);
                }
                if (dist == 0)
                    for (int j = 0; j < 5; j++) x[test_u64() % (uint64_t)n] = test_uniform(12, 16);
                sgllm_sampler_params sp;
                sgllm_sampler_default_params(&sp);
                sp.temperature = temps[test_u64() % 4];
                sp.top_k = top_ks[test_u64() % 5];
                if (sp.top_k < 0) sp.top_k = (int32_t)n;
                sp.top_p = top_ps[test_u64() % 3];
                sp.min_p = min_ps[test_u64() % 3];
                bool pen = test_u64() % 2;
                sp.repeat_penalty = pen ? test_uniform(1, 2) : 1.0f;
                sp.frequency_penalty = pen ? test_uniform(0, 1) : 0.0f;
                sp.presence_penalty = pen ? test_uniform(0, 1) : 0.0f;
                sp.seed = test_u64();
                sgllm_sampler *smp = NULL;
                CHECK(sgllm_sampler_init(&sp, (int32_t)n, &smp) == SGLLM_OK);
                int32_t hist = (int32_t)(test_u64() % 100);
                for (int32_t i = 0; i < hist; i++) // often the top tokens, so penalties change the answer
                    sgllm_sampler_accept(smp, test_u64() % 2 ? sgllm__argmax(x, n) : (sgllm_token)(test_u64() % (uint64_t)n));
                sgllm__cuda_sample_args a;
                int32_t pen_list[128];
                sgllm__rng saved = smp->rng;
                sgllm__sampler_device_args(smp, &a, pen_list, pen_list + 64, true);
                smp->rng = saved;
                CHECK(sgllm__cuda_upload(gpu, d_x, x, (size_t)n * sizeof(float)) == SGLLM_OK);
                CHECK(sgllm__cuda_upload(gpu, d_args, &a, sizeof a) == SGLLM_OK);
                CHECK(sgllm__cuda_upload(gpu, d_pen, pen_list, sizeof pen_list) == SGLLM_OK);
                poison(d_out, 2 * sizeof(int32_t));
                // without penalties half the time with no penalty list at all (the passes then
                // read the logits themselves); twice in a row, the second run on the tickets and
                // histogram the first left
                bool lists = pen || test_u64() % 2;
                for (int r = 0; r < 2; r++) {
                    sgllm_status st = sgllm__cuda_sample(gpu, d_x, n, d_args, lists ? d_pen : NULL, lists ? d_pen + 64 : NULL,
                                                         work, smp_out(d_out + r));
                    CHECKF(st == SGLLM_OK, "sample: %s", sgllm__cuda_errmsg(gpu));
                }
                int32_t twice[2] = {-1, -1};
                fetch(twice, d_out, sizeof twice);
                const int32_t got = twice[0];
                CHECKF(twice[1] == twice[0], "sample twice in a row (penalty lists %d): %d then %d", lists, twice[0], twice[1]);
                sgllm_token want = sgllm_sampler_sample(smp, x);
                draws++;
                if (got != want) {
                    differ++;
                    const float *px = sgllm__sampler_penalized(smp, x);
                    bool tie = got >= 0 && got < n && px[got] == px[want];
                    bool edge = false;
                    if (sp.temperature > 0) {
                        const sgllm__cand *c;
                        int64_t nc = sgllm__sampler_candidates(smp, x, &c);
                        edge = nc > 0 && (draw_at(c, nc, a.u - 1e-5) == got || draw_at(c, nc, a.u + 1e-5) == got);
                    }
                    if (!tie && !edge) {
                        unexplained++;
                        printf("  sample: vocab %lld dist %d temp %g top_k %d top_p %g min_p %g pen %d u %.9f: device %d cpu %d\n",
                               (long long)n, dist, sp.temperature, sp.top_k, sp.top_p, sp.min_p, pen, a.u, got, want);
                    }
                }
                sgllm_sampler_free(smp);
            }
    printf("sample: %d draws, %d differ from the CPU (boundary or tie), %d unexplained\n", draws, differ, unexplained);
    CHECKF(unexplained == 0, "sample: %d draws differ from the CPU sampler without a boundary or tie", unexplained);
    CHECKF(differ * 100 < draws, "sample: %d of %d draws at a boundary (limit 1%%)", differ, draws);

    free(x);
}


// The wide-load kernel (dispatch.matvec_int8 = 3, sgllm_cuda.cu section 4b) against the staged
// int8 kernel with one warp per row (matvec_int8 = 1, matvec_warps_per_sm = 0: no row split):
// both compute every 32-value piece with the same code, each lane the pieces lane, lane + 32,
// ... in order, so the results must be bit for bit equal (the staged kernel is held to the CPU
// engine's integer dots by test_matmul). Every block-quantized type, rows whole 16-byte words
// (cols with a partial last chunk too), odd and even row counts (one or two rows per warp),
// batches 1..8, two launch shapes (one of few warps per SM: each warp walks many rows);
// matvec_multi (even and odd segments) and matvec_gated against the same staged singles plus
// sgllm__cuda_gated_act (SiLU exact; GELU within 1e-6, where act(g) * u is computed differs).
static void test_matvec_wide(void) {
    static const uint32_t types[] = {SGLLM__T_Q4_0, SGLLM__T_Q4_1, SGLLM__T_Q5_0, SGLLM__T_Q5_1,
                                     SGLLM__T_Q8_0, SGLLM__T_Q4_K, SGLLM__T_Q5_K, SGLLM__T_Q6_K};
    sgllm__cuda_dispatch ref_d = disp, wide[2] = {disp, disp};
    ref_d.matvec_int8 = 1, ref_d.matvec_warps_per_sm = 0;
    wide[0].matvec_int8 = wide[1].matvec_int8 = 3;
    wide[1].matvec_warps = 8, wide[1].matvec_wide_warps_per_sm = 1;
    int runs = 0;
    double worst_gelu = 0;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        uint32_t t = types[ti];
        bool k6 = t == SGLLM__T_Q6_K; // 210-byte blocks: rows whole 16-byte words from 2048 values
        int64_t col_choice[3] = {k6 ? 2048 : 768, k6 ? 6144 : 2304, k6 ? 4096 : 4352};
        for (int ci = 0; ci < 3; ci++) {
            int64_t cols = col_choice[ci];
            int64_t rows_of[5] = {1 + 64 * ci + (int64_t)(test_u64() % 40), 32, 17 + 2 * ci, 130, 131};
            rows_of[3] = rows_of[4] = 30 + 61 * ci; // gate, up
            size_t wb[5];
            uint8_t *w[5];
            void *dw[5];
            for (int i = 0; i < 5; i++) { // one spare row: r3[0] below may be rows_of[0] + 1
                w[i] = rand_weights(t, rows_of[i] + (i == 0), cols, &wb[i]);
                dw[i] = dev_copy(w[i], wb[i]);
            }
            int64_t rsum = rows_of[0] + rows_of[1] + rows_of[2], ny = 8 * (rsum + 2 * rows_of[3]);
            float *x = rand_floats(8 * cols, -1, 1), *dx = (float *)dev_copy(x, (size_t)(8 * cols) * 4);
            float *dy = (float *)dev((size_t)ny * 4), *dref = (float *)dev((size_t)ny * 4);
            float *y = (float *)malloc((size_t)ny * 4), *ref = (float *)malloc((size_t)ny * 4);
            for (int64_t nt = 1; nt <= 8; nt++) {
                for (int v = 0; v < 2; v++) {
                    // single matrices, then q/k/v: segments even (two rows per warp) when nt is even
                    int64_t r3[3] = {rows_of[0] + (rows_of[0] + nt) % 2, rows_of[1], rows_of[2] + nt % 2 - 1};
                    float *ym[3] = {dy, dy + nt * r3[0], dy + nt * (r3[0] + r3[1])};
                    float *rm[3] = {dref, dref + nt * r3[0], dref + nt * (r3[0] + r3[1])};
                    int64_t n_out = nt * (r3[0] + r3[1] + r3[2]);
                    poison(dy, (size_t)ny * 4);
                    poison(dref, (size_t)ny * 4);
                    sgllm__cuda_set_dispatch(gpu, &wide[v]);
                    for (int i = 0; i < 3; i++)
                        CHECKF(sgllm__cuda_matvec(gpu, t, dw[i], r3[i], cols, dx, nt, ym[i]) == SGLLM_OK, "wide: %s",
                               sgllm__cuda_errmsg(gpu));
                    sgllm__cuda_set_dispatch(gpu, &ref_d);
                    for (int i = 0; i < 3; i++) CHECK(sgllm__cuda_matvec(gpu, t, dw[i], r3[i], cols, dx, nt, rm[i]) == SGLLM_OK);
                    fetch(y, dy, (size_t)ny * 4);
                    fetch(ref, dref, (size_t)ny * 4);
                    bool same = !memcmp(y, ref, (size_t)n_out * 4);
                    for (int64_t i = n_out; i < ny; i++) same = same && isnan(y[i]);
                    CHECKF(same, "matvec wide %s %lldx%lld batch %lld variant %d: rel err %.3g against the staged kernel",
                           sgllm__type_name(t), (long long)r3[0], (long long)cols, (long long)nt, v, rel_err(y, ref, n_out));
                    uint32_t tt[3] = {t, t, t};
                    const void *wm[3] = {dw[0], dw[1], dw[2]};
                    poison(dy, (size_t)ny * 4);
                    sgllm__cuda_set_dispatch(gpu, &wide[v]);
                    CHECKF(sgllm__cuda_matvec_multi(gpu, 3, tt, wm, r3, cols, dx, nt, ym) == SGLLM_OK, "multi: %s",
                           sgllm__cuda_errmsg(gpu));
                    fetch(y, dy, (size_t)ny * 4);
                    same = !memcmp(y, ref, (size_t)n_out * 4);
                    for (int64_t i = n_out; i < ny; i++) same = same && isnan(y[i]);
                    CHECKF(same, "matvec_multi wide %s cols %lld batch %lld variant %d: rel err %.3g", sgllm__type_name(t),
                           (long long)cols, (long long)nt, v, rel_err(y, ref, n_out));
                    // gated
                    int act = (nt + v) % 2 ? SGLLM__CUDA_ACT_SILU : SGLLM__CUDA_ACT_GELU_TANH;
                    int64_t ff = rows_of[3];
                    poison(dy, (size_t)ny * 4);
                    CHECKF(sgllm__cuda_matvec_gated(gpu, act, t, dw[3], t, dw[4], ff, cols, dx, nt, dy, dy + nt * ff) ==
                               SGLLM_OK, "gated: %s", sgllm__cuda_errmsg(gpu));
                    sgllm__cuda_set_dispatch(gpu, &ref_d);
                    CHECK(sgllm__cuda_matvec(gpu, t, dw[3], ff, cols, dx, nt, dref) == SGLLM_OK);
                    CHECK(sgllm__cuda_matvec(gpu, t, dw[4], ff, cols, dx, nt, dref + nt * ff) == SGLLM_OK);
                    CHECK(sgllm__cuda_gated_act(gpu, act, dref, dref + nt * ff, nt * ff) == SGLLM_OK);
                    fetch(y, dy, (size_t)ny * 4);
                    fetch(ref, dref, (size_t)ny * 4);
                    double e = rel_err(y, ref, nt * ff);
                    if (act == SGLLM__CUDA_ACT_GELU_TANH) worst_gelu = e > worst_gelu ? e : worst_gelu;
                    CHECKF(act == SGLLM__CUDA_ACT_SILU ? e == 0 : e <= 1e-6,
                           "matvec_gated wide %s cols %lld batch %lld act %d: rel err %.3g", sgllm__type_name(t),
                           (long long)cols, (long long)nt, act, e);
                    bool untouched = true; // the fused path writes y only
                    for (int64_t i = nt * ff; i < ny; i++) untouched = untouched && isnan(y[i]);
                    CHECKF(untouched, "matvec_gated wide %s: wrote past y", sgllm__type_name(t));
                    runs++;
                }
            }
            sgllm__cuda_set_dispatch(gpu, &disp);
            for (int i = 0; i < 5; i++) sgllm__cuda_dfree(gpu, dw[i]), free(w[i]);
            sgllm__cuda_dfree(gpu, dx), sgllm__cuda_dfree(gpu, dy), sgllm__cuda_dfree(gpu, dref);
            free(x), free(y), free(ref);
        }
    }
    printf("matvec wide loads: %d runs bit-identical to the staged kernel (gated GELU worst %.3g)\n", runs, worst_gelu);
}

// Large matrices of short rows (up to 1024 values, at least 8 MB, one token): the wide kernel
// takes four rows per warp in 1024-value chunks there. Every row must still be bit for bit
// the staged kernel's with one warp per row; row counts that are not multiples of four take
// two rows per warp and must agree as well.
static void test_matvec_short_rows(void) {
    static const uint32_t types[] = {SGLLM__T_Q4_0, SGLLM__T_Q4_1, SGLLM__T_Q5_0, SGLLM__T_Q5_1,
                                     SGLLM__T_Q8_0, SGLLM__T_Q4_K, SGLLM__T_Q5_K, SGLLM__T_Q6_K};
    sgllm__cuda_dispatch ref_d = disp, wide = disp;
    ref_d.matvec_int8 = 1, ref_d.matvec_warps_per_sm = 0;
    wide.matvec_int8 = 3, wide.matvec_wide_align = 8, wide.matvec_stream_kb = 0; // (the streamed kernel: below)
    int runs = 0, quad_runs = 0;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        uint32_t t = types[ti];
        int64_t blk = sgllm__types[t].block, cols = t == SGLLM__T_Q6_K ? 1024 : blk == 256 ? 768 : 640;
        int64_t rb = (int64_t)sgllm__row_bytes(t, (uint64_t)cols), rows = ((9 << 20) / rb + 3) / 4 * 4;
        size_t wb;
        uint8_t *w = rand_weights(t, rows + 2, cols, &wb);
        void *dw = dev_copy(w, wb);
        float *x = rand_floats(cols, -1, 1), *dx = (float *)dev_copy(x, (size_t)cols * 4);
        float *dy = (float *)dev((size_t)(rows + 2) * 8), *y = (float *)malloc((size_t)(rows + 2) * 8);
        for (int odd = 0; odd < 2; odd++) { // rows, then rows + 2 (not a multiple of four)
            int64_t r = rows + 2 * odd;
            poison(dy, (size_t)(rows + 2) * 8);
            sgllm__cuda_set_dispatch(gpu, &wide);
            CHECKF(sgllm__cuda_matvec(gpu, t, dw, r, cols, dx, 1, dy) == SGLLM_OK, "%s", sgllm__cuda_errmsg(gpu));
            // the variant that ran: four rows per warp where the row count allows it (Q6_K's
            // 1024-value chunks are not whole 16-byte words: two rows per warp)
            bool quads = !odd && t != SGLLM__T_Q6_K;
            const char *ran = sgllm__cuda_last_launch(gpu);
            CHECKF(!strcmp(ran, quads ? "matvec (wide, short rows)" : "matvec (wide)"), "short rows %s %lld rows: ran '%s'",
                   sgllm__type_name(t), (long long)r, ran);
            quad_runs += quads;
            sgllm__cuda_set_dispatch(gpu, &ref_d);
            CHECK(sgllm__cuda_matvec(gpu, t, dw, r, cols, dx, 1, dy + rows + 2) == SGLLM_OK);
            sgllm__cuda_set_dispatch(gpu, &disp);
            fetch(y, dy, (size_t)(rows + 2) * 8);
            bool same = !memcmp(y, y + rows + 2, (size_t)r * 4);
            for (int64_t i = r; i < rows + 2; i++) same = same && isnan(y[i]);
            CHECKF(same, "matvec wide short rows %s %lldx%lld: rel err %.3g against the staged kernel", sgllm__type_name(t),
                   (long long)r, (long long)cols, rel_err(y, y + rows + 2, r));
            runs++;
        }
        sgllm__cuda_dfree(gpu, dw), sgllm__cuda_dfree(gpu, dx), sgllm__cuda_dfree(gpu, dy);
        free(w), free(x), free(y);
    }
    printf("matvec wide, large matrices of short rows: %d runs (%d with four rows per warp) bit for bit the staged "
           "kernel\n", runs, quad_runs);
}

// The streamed kernel (dispatch.matvec_stream_kb, sgllm_cuda.cu section 4c: one token, bulk
// copies into a ring of shared-memory stages, sm90 and newer) against the staged int8 kernel with
// one warp per row (its int8 path, which takes rows of whole 4-byte words): each lane adds
// pieces lane, lane + 32, ... in order in both, so every row must be bit for bit the same.
// Every block-quantized type; rows of up to 1024, 2048 and 4096
// values (1, 2 and 4 activation pieces a lane); row counts with a partial last group; enough
// groups that the blocks wrap their ring of stages; eagerly and replayed from a graph. The
// kernel takes a matrix only as the header states (the rule below): rows of 5120 values, Q6_K
// rows of 768 values (630 bytes, not whole 4-byte words) and matrices under matvec_stream_kb
// must take another kernel, and so must the wide kernel's matrices when it is on (unless their
// rows have at most matvec_stream_wide_cols values).
static void test_matvec_stream(void) {
    static const uint32_t types[] = {SGLLM__T_Q4_0, SGLLM__T_Q4_1, SGLLM__T_Q5_0, SGLLM__T_Q5_1,
                                     SGLLM__T_Q8_0, SGLLM__T_Q4_K, SGLLM__T_Q5_K, SGLLM__T_Q6_K};
    bool sm90 = strcmp(disp.row, "sm80") && strcmp(disp.row, "sm86") && strcmp(disp.row, "sm89");
    sgllm__cuda_dispatch ref_d = disp, st = disp;
    ref_d.matvec_int8 = 1, ref_d.matvec_warps_per_sm = 0, ref_d.matvec_stream_kb = 0;
    st.matvec_stream_kb = 1; // every matrix of at least 1 KiB
    st.matvec_int8 = 1;      // (with the wide kernel on, its matrices stay there: checked at the end)
    int runs = 0, streamed = 0, declined = 0;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        uint32_t t = types[ti];
        bool k = sgllm__types[t].block == 256, k6 = t == SGLLM__T_Q6_K;
        int64_t col_of[5] = {k6 ? 1024 : k ? 768 : 640, 2048, 4096, 5120, 768};
        int64_t row_of[5] = {80024, 16008, 8004, 1002, 1000};
        for (int ci = 0; ci < (k6 ? 5 : 4); ci++) {
            int64_t cols = col_of[ci], rows = row_of[ci];
            int64_t rb = (int64_t)sgllm__row_bytes(t, (uint64_t)cols);
            int64_t per = 24576 / (8 * rb), R = 8 * (per < 1 ? 1 : per); // MVS_STAGE_BYTES, MVS_WARPS
            bool want = sm90 && cols <= 4096 && rb % 4 == 0 && R * rb % 16 == 0 && rows % R * rb % 16 == 0;
            size_t wb;
            uint8_t *w = rand_weights(t, rows, cols, &wb);
            void *dw = dev_copy(w, wb);
            float *x = rand_floats(cols, -1, 1), *dx = (float *)dev_copy(x, (size_t)cols * 4);
            int64_t ny = rows + 8;
            float *dy = (float *)dev((size_t)(2 * ny) * 4), *y = (float *)malloc((size_t)(2 * ny) * 4);
            for (int rep = 0; rep < (want ? 2 : 1); rep++) { // eagerly, then from a graph (replayed twice)
                poison(dy, (size_t)(2 * ny) * 4);
                sgllm__cuda_set_dispatch(gpu, &st);
                void *graph = NULL;
                if (rep) CHECK(sgllm__cuda_graph_begin(gpu) == SGLLM_OK);
                CHECKF(sgllm__cuda_matvec(gpu, t, dw, rows, cols, dx, 1, dy) == SGLLM_OK, "%s", sgllm__cuda_errmsg(gpu));
                const char *ran = sgllm__cuda_last_launch(gpu);
                bool is_st = !strcmp(ran, "matvec (stream)");
                CHECKF(is_st == want, "stream %s %lldx%lld: ran '%s'", sgllm__type_name(t), (long long)rows, (long long)cols, ran);
                if (rep) {
                    CHECK(sgllm__cuda_graph_end(gpu, &graph) == SGLLM_OK);
                    for (int g = 0; g < 2; g++) {
                        poison(dy, (size_t)ny * 4);
                        CHECK(graph && sgllm__cuda_graph_launch(gpu, graph) == SGLLM_OK);
                    }
                    sgllm__cuda_graph_free(gpu, graph);
                }
                sgllm__cuda_set_dispatch(gpu, &disp);
                if (!want) { // another kernel took it
                    declined++;
                    continue;
                }
                sgllm__cuda_set_dispatch(gpu, &ref_d);
                CHECK(sgllm__cuda_matvec(gpu, t, dw, rows, cols, dx, 1, dy + ny) == SGLLM_OK);
                sgllm__cuda_set_dispatch(gpu, &disp);
                fetch(y, dy, (size_t)(2 * ny) * 4);
                bool same = !memcmp(y, y + ny, (size_t)rows * 4);
                for (int64_t i = rows; i < ny; i++) same = same && isnan(y[i]);
                CHECKF(same, "matvec stream %s %lldx%lld %s: rel err %.3g against the staged kernel", sgllm__type_name(t),
                       (long long)rows, (long long)cols, rep ? "graph" : "eager", rel_err(y, y + ny, rows));
                runs++;
                streamed += is_st;
            }
            if (ci == 1) { // under the threshold: another kernel
                sgllm__cuda_dispatch big = st;
                big.matvec_stream_kb = (int)(wb / 1024) + 1;
                sgllm__cuda_set_dispatch(gpu, &big);
                CHECK(sgllm__cuda_matvec(gpu, t, dw, rows, cols, dx, 1, dy) == SGLLM_OK);
                CHECKF(strcmp(sgllm__cuda_last_launch(gpu), "matvec (stream)"), "stream %s: %zu bytes under %d KiB streamed",
                       sgllm__type_name(t), wb, big.matvec_stream_kb);
                sgllm__cuda_set_dispatch(gpu, &disp);
                declined++;
            }
            sgllm__cuda_dfree(gpu, dw), sgllm__cuda_dfree(gpu, dx), sgllm__cuda_dfree(gpu, dy);
            free(w), free(x), free(y);
        }
    }
    // with the wide kernel on, what it takes stays there (Gemma 3's 640-value Q8_0 rows, 680
    // bytes; 2048-value ones) unless its rows have at most matvec_stream_wide_cols values (0,
    // 1024, 4096), while SmolLM2's 576-value rows (612 bytes, not whole 8-byte words) stream;
    // either way bit for bit the staged kernel
    static const int64_t wcols[3] = {576, 640, 2048};
    static const int wide_cols[3] = {0, 1024, 4096};
    for (int wi = 0; sm90 && wi < 9; wi++) {
        int64_t cols = wcols[wi % 3];
        int limit = wide_cols[wi / 3];
        int64_t rows = 8192;
        size_t wb;
        uint8_t *w = rand_weights(SGLLM__T_Q8_0, rows, cols, &wb);
        void *dw = dev_copy(w, wb);
        float *x = rand_floats(cols, -1, 1), *dx = (float *)dev_copy(x, (size_t)cols * 4);
        float *dy = (float *)dev((size_t)(2 * rows) * 4), *y = (float *)malloc((size_t)(2 * rows) * 4);
        sgllm__cuda_dispatch wst = disp;
        wst.matvec_int8 = 3, wst.matvec_wide_align = 8, wst.matvec_stream_kb = 1, wst.matvec_stream_wide_cols = limit;
        sgllm__cuda_set_dispatch(gpu, &wst);
        CHECK(sgllm__cuda_matvec(gpu, SGLLM__T_Q8_0, dw, rows, cols, dx, 1, dy) == SGLLM_OK);
        bool is_st = !strcmp(sgllm__cuda_last_launch(gpu), "matvec (stream)");
        CHECKF(is_st == (cols <= limit || cols == 576), "stream with the wide kernel (rows up to %d), Q8_0 cols %lld: ran '%s'",
               limit, (long long)cols, sgllm__cuda_last_launch(gpu));
        sgllm__cuda_set_dispatch(gpu, &ref_d);
        CHECK(sgllm__cuda_matvec(gpu, SGLLM__T_Q8_0, dw, rows, cols, dx, 1, dy + rows) == SGLLM_OK);
        sgllm__cuda_set_dispatch(gpu, &disp);
        fetch(y, dy, (size_t)(2 * rows) * 4);
        CHECKF(!memcmp(y, y + rows, (size_t)rows * 4), "Q8_0 cols %lld with the wide kernel on: rel err %.3g", (long long)cols,
               rel_err(y, y + rows, rows));
        streamed += is_st, declined += !is_st;
        sgllm__cuda_dfree(gpu, dw), sgllm__cuda_dfree(gpu, dx), sgllm__cuda_dfree(gpu, dy);
        free(w), free(x), free(y);
    }
    CHECK(!sm90 || streamed >= 40);
    printf("matvec streamed: %d runs (%d launches on the streamed kernel, eager and replayed from graphs) bit for bit "
           "the staged kernel; %d shapes declined as the rule says\n", runs, streamed, declined);
}

// Activation quantization inside the wide kernel (dispatch.matvec_xq_inline) and its 8-byte
// row words (dispatch.matvec_wide_align = 8). The blocks run the quantization code of the
// separate launch, so the int8 blocks are the same bytes, and the per-row code is unchanged:
// every result must be bit for bit what the staged kernel gives with one warp per row (as in
// test_matvec_wide; GELU gated products within 1e-6, where act(g) * u is computed differs),
// with the in-block quantization (two launch shapes) and with the separate launch. Every
// block-quantized type, rows of 16- and 8-byte words, odd and even row counts, batches 1..8; q/k/v through matvec_multi of one type (odd batches) or
// with v of another type (even batches and batch 1: e.g. Q5_0 q/k with Q8_0 v as in Gemma 3's
// file, or Q4_K with Q6_K; at batch 1 with even row counts one launch takes both types), gated
// launches; and chains where a kernel rewrites x right before the products (PDL on: the
// in-block quantization must wait for it), eager and replayed from a graph, against the
// reference chain run eagerly without PDL.
typedef struct {
    uint32_t t[3];    // q, k, v weight types (gate and up: t[0])
    void *w[5];       // q, k, v, gate, up
    int64_t rows[5];  // gate and up: rows[3]
    int64_t cols, nt;
    float *x;         // (nt, cols)
    float *y;         // (off[7]) outputs at off[i]: single q, multi q, k, v, gated, up (reference only), second q
    int64_t off[8];
} xq_case;

// The case's products under the current dispatch: singles (every product by matvec, the gated
// one through gated_act: the reference) or the fused entry points; chain: softcap rewrites x
// before the first product and again before a second single q product.
static void xq_ops(const xq_case *c, bool singles, int act, bool chain) {
    int64_t nt = c->nt, cols = c->cols;
    float *y = c->y;
    if (chain) CHECK(sgllm__cuda_softcap(gpu, c->x, nt * cols, 3.0f) == SGLLM_OK);
    CHECKF(sgllm__cuda_matvec(gpu, c->t[0], c->w[0], c->rows[0], cols, c->x, nt, y) == SGLLM_OK, "%s",
           sgllm__cuda_errmsg(gpu));
    float *ym[3] = {y + c->off[1], y + c->off[2], y + c->off[3]};
    if (singles) {
        for (int i = 0; i < 3; i++) CHECK(sgllm__cuda_matvec(gpu, c->t[i], c->w[i], c->rows[i], cols, c->x, nt, ym[i]) == SGLLM_OK);
        CHECK(sgllm__cuda_matvec(gpu, c->t[0], c->w[3], c->rows[3], cols, c->x, nt, y + c->off[4]) == SGLLM_OK);
        CHECK(sgllm__cuda_matvec(gpu, c->t[0], c->w[4], c->rows[3], cols, c->x, nt, y + c->off[5]) == SGLLM_OK);
        CHECK(sgllm__cuda_gated_act(gpu, act, y + c->off[4], y + c->off[5], nt * c->rows[3]) == SGLLM_OK);
    } else {
        const void *wm[3] = {c->w[0], c->w[1], c->w[2]};
        CHECKF(sgllm__cuda_matvec_multi(gpu, 3, c->t, wm, c->rows, cols, c->x, nt, ym) == SGLLM_OK, "multi: %s",
               sgllm__cuda_errmsg(gpu));
        CHECKF(sgllm__cuda_matvec_gated(gpu, act, c->t[0], c->w[3], c->t[0], c->w[4], c->rows[3], cols, c->x, nt,
                                        y + c->off[4], NULL) == SGLLM_OK, "gated: %s", sgllm__cuda_errmsg(gpu));
    }
    if (chain) {
        CHECK(sgllm__cuda_softcap(gpu, c->x, nt * cols, 3.0f) == SGLLM_OK);
        CHECK(sgllm__cuda_matvec(gpu, c->t[0], c->w[0], c->rows[0], cols, c->x, nt, y + c->off[6]) == SGLLM_OK);
    }
}

// Runs the case (x uploaded from x0 first; graph: captured once, replayed twice) and fetches
// its outputs; out holds c->off[7] floats.
static void xq_result(const xq_case *c, const sgllm__cuda_dispatch *d, int pdl, bool singles, int act, bool chain,
                      bool graph, const float *x0, float *out) {
    sgllm__cuda_dispatch dd = *d;
    dd.pdl = pdl;
    sgllm__cuda_set_dispatch(gpu, &dd);
    poison(c->y, (size_t)c->off[7] * 4);
    void *g = NULL;
    if (graph) {
        CHECK(sgllm__cuda_graph_begin(gpu) == SGLLM_OK);
        xq_ops(c, singles, act, chain);
        CHECKF(sgllm__cuda_graph_end(gpu, &g) == SGLLM_OK, "%s", sgllm__cuda_errmsg(gpu));
    }
    for (int rep = 0; rep < (graph ? 2 : 1); rep++) {
        CHECK(sgllm__cuda_upload(gpu, c->x, x0, (size_t)(c->nt * c->cols) * 4) == SGLLM_OK);
        if (graph && g) CHECK(sgllm__cuda_graph_launch(gpu, g) == SGLLM_OK);
        else if (!graph) xq_ops(c, singles, act, chain);
    }
    sgllm__cuda_graph_free(gpu, g);
    fetch(out, c->y, (size_t)c->off[7] * 4);
    sgllm__cuda_set_dispatch(gpu, &disp);
}

// got against ref over the case's outputs (the up buffer excluded: only the reference writes
// it); gated GELU within 1e-6 where gelu_tol, else everything bit for bit.
static bool xq_same(const xq_case *c, const float *got, const float *ref, bool chain, bool gelu_tol, double *worst) {
    const int64_t *o = c->off;
    bool same = !memcmp(got, ref, (size_t)o[4] * 4) && (!chain || !memcmp(got + o[6], ref + o[6], (size_t)(o[7] - o[6]) * 4));
    double e = rel_err(got + o[4], ref + o[4], o[5] - o[4]);
    if (gelu_tol && worst) *worst = e > *worst ? e : *worst;
    return same && (gelu_tol ? e <= 1e-6 : !memcmp(got + o[4], ref + o[4], (size_t)(o[5] - o[4]) * 4));
}

static void test_matvec_xq_inline(void) {
    static const uint32_t types[] = {SGLLM__T_Q4_0, SGLLM__T_Q4_1, SGLLM__T_Q5_0, SGLLM__T_Q5_1,
                                     SGLLM__T_Q8_0, SGLLM__T_Q4_K, SGLLM__T_Q5_K, SGLLM__T_Q6_K};
    // 32-value blocks: rows of 8- and 16-byte words among these (e.g. Q5_0 440 and 1408 bytes,
    // Q8_0 680 and 2176, Q4_1 360 and 400; rows of 4-byte words, e.g. Q8_0's 612, are not the
    // wide kernel's and are skipped); Q4_K / Q5_K rows are always whole 16-byte words; Q6_K 840
    // and 1680 bytes
    static const int64_t cols32[4] = {544, 576, 640, 2048}, colsk[4] = {768, 1024, 3072, 4096}, cols6[4] = {1024, 2048, 0, 0};
    sgllm__cuda_dispatch st = disp, wide[3] = {disp, disp, disp};
    st.matvec_int8 = 1, st.matvec_warps_per_sm = 0; // staged, one warp per row
    for (int v = 0; v < 3; v++) wide[v].matvec_int8 = 3, wide[v].matvec_wide_align = 8, wide[v].matvec_xq_inline = 32768;
    wide[1].matvec_warps = 8, wide[1].matvec_wide_warps_per_sm = 1; // few warps: each walks many rows
    wide[2].matvec_xq_inline = 0;                              // separate quantization launch
    int runs = 0, chains = 0, by_word[2] = {0, 0}, two_type = 0;
    double worst_gelu = 0;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        // v's type: one that shares t's activation format where a launch takes the pair
        // (sgllm__cu_mvw2_k: Q4_0 / Q5_0 with Q8_0, Q8_0 with Q5_0, Q4_K / Q5_K with Q6_K);
        // Q4_1 / Q5_1 / Q6_K with Q8_0 read two formats, so those run one launch per type
        uint32_t t = types[ti], tv0 = t == SGLLM__T_Q8_0                          ? SGLLM__T_Q5_0
                                      : t == SGLLM__T_Q4_K || t == SGLLM__T_Q5_K ? SGLLM__T_Q6_K
                                                                                 : SGLLM__T_Q8_0;
        int64_t blk = sgllm__types[t].block;
        const int64_t *cl = t == SGLLM__T_Q6_K ? cols6 : blk == 256 ? colsk : cols32;
        for (int ci = 0; ci < 4 && cl[ci]; ci++) {
            int64_t cols = cl[ci], rb = (int64_t)sgllm__row_bytes(t, (uint64_t)cols);
            if (rb % 8) continue;
            // v of another type where its rows are whole 4-byte words too (the one-value kernel
            // splits rows by the launch setting, so the staged reference would differ in order;
            // single chunks of the staged kernel do not)
            uint32_t tv = sgllm__row_bytes(tv0, (uint64_t)cols) % 4 ? t : tv0;
            by_word[rb % 16 == 0]++;
            int64_t rows_of[4] = {33 + 2 * (int64_t)(test_u64() % 20), 32, 17, 41}; // q (+1), k, v (+1), gate and up (+1)
            size_t wb[6];
            uint8_t *w[6];
            void *dw[6];
            for (int i = 0; i < 6; i++) { // q, k, v, gate, up of t; v of tv
                uint32_t ty = i == 5 ? tv : t;
                int64_t r = i == 5 ? rows_of[2] + 1 : rows_of[i < 4 ? i : 3] + 1;
                w[i] = rand_weights(ty, r, cols, &wb[i]);
                dw[i] = dev_copy(w[i], wb[i]);
            }
            float *x0 = rand_floats(8 * cols, -1, 1);
            xq_case c;
            c.cols = cols;
            c.x = (float *)dev((size_t)(8 * cols) * 4);
            int64_t ymax = 8 * (3 * (rows_of[0] + 1) + rows_of[1] + rows_of[2] + 1 + 2 * rows_of[3]);
            c.y = (float *)dev((size_t)ymax * 4);
            float *ref = (float *)malloc((size_t)ymax * 4), *got = (float *)malloc((size_t)ymax * 4);
            for (int64_t nt = 1; nt <= 8; nt++) {
                bool mixed = nt % 2 == 0 || nt == 1; // one token: the two-type launch
                c.nt = nt;
                c.t[0] = c.t[1] = t, c.t[2] = mixed ? tv : t;
                c.w[0] = dw[0], c.w[1] = dw[1], c.w[2] = mixed ? dw[5] : dw[2], c.w[3] = dw[3], c.w[4] = dw[4];
                c.rows[0] = rows_of[0] + nt % 2, c.rows[1] = rows_of[1], c.rows[2] = rows_of[2] + (nt % 4 == 1);
                c.rows[3] = c.rows[4] = rows_of[3] + (nt >= 5);
                int64_t sizes[7] = {c.rows[0], c.rows[0], c.rows[1], c.rows[2], c.rows[3], c.rows[3], c.rows[0]};
                c.off[0] = 0;
                for (int i = 0; i < 7; i++) c.off[i + 1] = c.off[i] + nt * sizes[i];
                int act = nt % 3 == 0 ? SGLLM__CUDA_ACT_GELU_TANH : SGLLM__CUDA_ACT_SILU;
                bool gelu = act == SGLLM__CUDA_ACT_GELU_TANH;
                // the wide kernel (three launch variants) against the staged singles
                xq_result(&c, &st, 1, true, act, false, false, x0, ref);
                for (int v = 0; v < 3; v++) {
                    xq_result(&c, &wide[v], 1, false, act, false, false, x0, got);
                    CHECKF(xq_same(&c, got, ref, false, gelu, &worst_gelu),
                           "wide %s cols %lld (%lld-byte rows) batch %lld variant %d%s: rel err %.3g / gated %.3g",
                           sgllm__type_name(t), (long long)cols, (long long)rb, (long long)nt, v, mixed ? " mixed q/k/v" : "",
                           rel_err(got, ref, c.off[4]), rel_err(got + c.off[4], ref + c.off[4], c.off[5] - c.off[4]));
                    runs++;
                }
                if (nt == 1 && mixed && tv != t) { // one launch for both types where the pair and rows allow it
                    bool pair = ((t == SGLLM__T_Q4_0 || t == SGLLM__T_Q5_0) && tv == SGLLM__T_Q8_0) ||
                                (t == SGLLM__T_Q8_0 && tv == SGLLM__T_Q5_0) ||
                                ((t == SGLLM__T_Q4_K || t == SGLLM__T_Q5_K) && tv == SGLLM__T_Q6_K);
                    bool one = pair && rb % 8 == 0 && sgllm__row_bytes(tv, (uint64_t)cols) % 8 == 0;
                    sgllm__cuda_set_dispatch(gpu, &wide[2]); // quantization by a launch of its own
                    const void *wm[3] = {c.w[0], c.w[1], c.w[2]};
                    float *ym[3] = {c.y + c.off[1], c.y + c.off[2], c.y + c.off[3]};
                    uint64_t l0 = sgllm__cuda_launches(gpu);
                    CHECK(sgllm__cuda_matvec_multi(gpu, 3, c.t, wm, c.rows, cols, c.x, 1, ym) == SGLLM_OK);
                    uint64_t used = sgllm__cuda_launches(gpu) - l0;
                    CHECKF(one ? used == 2 : used > 2, "%s q/k with %s v, cols %lld: %llu launches (one product: %d)",
                           sgllm__type_name(t), sgllm__type_name(tv), (long long)cols, (unsigned long long)used, one);
                    two_type += one;
                    sgllm__cuda_set_dispatch(gpu, &disp);
                }
                if (nt % 3 != 1) continue;
                // chains (SiLU): PDL on, eager and as graph replays, against the staged reference
                // without PDL
                xq_result(&c, &st, 0, true, SGLLM__CUDA_ACT_SILU, true, false, x0, ref);
                for (int gr = 0; gr < 2; gr++) {
                    xq_result(&c, &wide[0], 1, false, SGLLM__CUDA_ACT_SILU, true, gr, x0, got);
                    CHECKF(xq_same(&c, got, ref, true, false, NULL), "wide chain %s cols %lld batch %lld %s: rel err %.3g / "
                           "second q %.3g", sgllm__type_name(t), (long long)cols, (long long)nt, gr ? "graph" : "eager",
                           rel_err(got, ref, c.off[4]), rel_err(got + c.off[6], ref + c.off[6], c.off[7] - c.off[6]));
                    chains++;
                }
            }
            for (int i = 0; i < 6; i++) sgllm__cuda_dfree(gpu, dw[i]), free(w[i]);
            sgllm__cuda_dfree(gpu, c.x), sgllm__cuda_dfree(gpu, c.y);
            free(x0), free(ref), free(got);
        }
    }
    CHECK(two_type >= 5);
    printf("matvec wide in-kernel activation quantization and 8-byte rows: %d runs and %d PDL chains bit-identical "
           "(rows of 8/16-byte words: %d/%d shapes; gated GELU worst %.3g; %d shapes of q/k and v of two types in one "
           "launch)\n", runs, chains, by_word[0], by_word[1], worst_gelu, two_type);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0); // a crash keeps the lines before it
    test_seed();
    int n_dev = sgllm__cuda_device_count();
    CHECKF(n_dev > 0, "no CUDA device: run this test on a GPU machine");
    if (n_dev <= 0) return test_finish("test_gpu");
    sgllm__cuda_props props;
    char err[256];
    sgllm__diag dg = {0};
    CHECK(sgllm__cuda_query(0, &props, err, sizeof err) == SGLLM_OK);
    CHECKF(sgllm__dispatch_select(&props, &disp, &dg) == SGLLM_OK, "%s", dg.msg);
    char path[512], line[4096];
    bool applied = false;
    CHECKF(sgllm__dispatch_load_config(&disp, "configs", props.name, path, sizeof path, &applied, &dg) == SGLLM_OK, "%s",
           dg.msg);
    sgllm__dispatch_format(&disp, &props, applied ? path : NULL, line, sizeof line);
    printf("%s\n", line);
    if (sgllm__cuda_create(0, &disp, &gpu, err, sizeof err) != SGLLM_OK) {
        CHECKF(0, "context: %s", err);
        return test_finish("test_gpu");
    }
    test_embed();
    test_add_rmsnorm();
    test_qkv_norm();
    test_rope();
    test_gated();
    test_quantize_act();
    test_matmul();
    test_matvec_fused();
    test_gemm_prefill();
    test_matvec_wide();
    test_matvec_short_rows();
    test_matvec_stream();
    test_matvec_xq_inline();
    test_attention();
    test_attention_many();
    test_cluster_splits();
    test_prefill();
    test_kv_write_paged();
    test_norm_add();
    test_norm_add_xq();
    test_qkv_before_mma();
    test_xq_forget();
    test_attn_post();
    test_qkv_post();
    test_pdl_graph();
    test_pdl_chain();
    // the row ops again with programmatic dependent launch flipped
    set_pdl(!disp.pdl);
    printf("row ops with pdl %d\n", sgllm__cuda_get_dispatch(gpu)->pdl);
    test_embed();
    test_add_rmsnorm();
    test_qkv_norm();
    test_rope();
    test_gated();
    test_norm_add();
    test_qkv_post();
    set_pdl(disp.pdl);
    test_errors();
    test_transfers();
    test_sample();
    test_sample_greedy();
    CHECKF(sgllm__cuda_sync(gpu) == SGLLM_OK, "%s", sgllm__cuda_errmsg(gpu));
    sgllm__cuda_free(gpu);
    return test_finish("test_gpu");
}
