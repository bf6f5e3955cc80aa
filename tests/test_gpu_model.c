// tests/test_gpu_model.c - the CUDA forward (sgllm_impl.c, section 8c) against the CPU forward
// through the public API. Compiled with -DSGLLM_CUDA wherever nvcc exists, run on a GPU
// machine (`make test-gpu`); without a device it fails, it never skips.
//
// 1. Tiny synthetic models (tests/tiny_model.h: llama, qwen3, gemma3 with sliding windows; F32
//    and Q8_0 weights), 40 random tokens, every position's logits, three GPU contexts: one
//    prompt in one batch (cuBLAS bf16 GEMMs), batches of 4 (matrix-vector kernels) and one
//    token at a time (the captured CUDA graph). Error = max |gpu - cpu| / max |cpu| over all
//    logits. Tolerances:
//    - matrix-vector paths against the CPU, F32 weights: 2e-3. The GPU computes in fp32; the
//      CPU engine rounds q and the softmax weights to fp16 in attention and GELU's input and
//      output to fp16 (llama.cpp's choices, 2^-11 relative each), through 2-6 layers.
//    - Q8_0 weights: relative RMS error (||gpu - cpu|| / ||cpu||) <= 3e-2 on every path. Both
//      engines quantize activations to 8 bits per 32-block before the matrix-vector products
//      (the GPU's GEMM path uses bf16 instead), and any small upstream difference moves some of
//      those roundings by a whole step (1/127 of the block's largest value); single logits then
//      move by up to ~2.2e-2 of the largest (seen on the H100), the vector as a whole by
//      0.9e-2 to 1.6e-2 (H100, 4 seeds).
//    - the bf16 GEMM path, F32 weights: 3e-2 (max). bf16 keeps 8 bits of mantissa (2^-9
//      relative per operand).
//    - token at a time against batches of 4 on the GPU: 1e-4 (both fp32 matrix-vector
//      kernels; only the attention split count and so the fp32 summation order differ).
//    Subsets of positions (want[]) give the matching rows. The one-batch prompt also runs on a
//    model whose kernel_config sends batches of 16+ tokens to the tensor-core prefill attention
//    (fp16 q and probabilities, as the CPU rounds them): the GEMM tolerance, 3e-2.
// 1b. Synthetic models (sgllm_model_load_synthetic, weights made on the device: no CPU
//    reference exists): the two small presets in bf16, q8_0, q4_1, q4_k and q4_k_m, 40 random
//    tokens, every logit finite and not all zero; one token at a time (graph) against batches
//    of 4 within 1e-4 (same kernels and activations; the models take one attention split, as a
//    graph's fixed split count and a batch's own would otherwise merge the keys in different
//    groupings: on the H100 exact with one split, up to 5.7e-2 apart with up to 16 once these
//    random networks amplify the rounding);
//    the same seed again gives the same logits (1e-6), another seed others. One batch (bf16
//    GEMMs) against one token at a time (matrix-vector kernels) is held to the bf16 tolerance
//    3e-2 for the gemma3 shape in bf16 only (H100: 5e-3 to 6e-3): there both paths round
//    only to bf16/fp32 and the post-norms keep a random network well conditioned. The
//    quantized types add the int8 rounding of the activations on the matrix-vector side, and
//    random weights (larger than trained ones, logits up to 70 with a Q8_0 output) amplify it
//    layer after layer: gemma3 q4_k_m measured 5e-2 with int8 activations against 2.6e-2 with
//    the fp32-activation kernel (same seed), gemma3 q4_k 4e-3 on one seed and 0.62 on
//    another, smollm2 (no post-norms) 4e-2 (bf16) to 1.0 (q4_k_m). Such a number cannot tell
//    amplification from a kernel error, so it is printed, not checked: the kernels are held to
//    the CPU by test_gpu and test 1 above, and the real files check both paths against the
//    CPU (test 2) at the same widths and types.
// 2. The real models (SGLLM_MODELS): teacher forcing over tests/golden/text.txt, the CPU and
//    two GPU contexts in lockstep (n_batch 256: bf16 GEMMs; n_batch 8: fp32 matrix-vector
//    kernels): perplexity within 0.5% of the CPU's and top-1 agreement >= 99% (issue 3), with
//    agreement counted as tests/test_golden.c counts it between two correct engines: a position
//    where the CPU's top-two logit margin is below 1.0 is a near tie and agrees whichever token
//    the GPU picks (both round activations differently: 8-bit on the CPU, fp32 or bf16 on the
//    GPU; llama.cpp flips 5% of these argmaxes against itself, never above a 0.55 margin), and
//    raw agreement (every difference counted) >= 90% (llama.cpp against itself: 94.4%).
#include "../sgllm_impl.c"
#include "gguf_writer.h"
#include "test.h"
#include "tiny_model.h"

enum { N_TOK = 40 };

// Writes json to a new temporary file named from tmpl (a mkstemp template, filled in here).
static void temp_config(char *tmpl, const char *json) {
    int fd = mkstemp(tmpl);
    CHECKF(fd >= 0 && write(fd, json, strlen(json)) == (ssize_t)strlen(json), "temporary config %s", tmpl);
    if (fd >= 0) close(fd);
}

// Writes the tiny model cfg to a new temporary file named from tmpl (a mkstemp template).
static void tiny_temp(const tiny *cfg, char *tmpl) {
    int fd = mkstemp(tmpl);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    build_tiny(cfg, tmpl);
}

static sgllm_model *load(const char *path, sgllm_backend backend, const char *kernel_config) {
    sgllm_model_params mp;
    sgllm_model_default_params(&mp);
    mp.path = path;
    mp.backend = backend;
    mp.kernel_config = kernel_config;
    sgllm_model *m = NULL;
    char err[512];
    sgllm_status s = sgllm_model_load(&mp, &m, err, sizeof err);
    CHECKF(s == SGLLM_OK, "load %s on backend %d: %s", path, (int)backend, err);
    return m;
}

// The tiny model cfg written to a temporary file (tiny_temp) and loaded on the GPU; NULL (the
// file removed, the failure checked by load) when it does not load.
static sgllm_model *tiny_gpu(const tiny *cfg, char *tmpl) {
    tiny_temp(cfg, tmpl);
    sgllm_model *m = load(tmpl, SGLLM_BACKEND_CUDA, NULL);
    if (!m) remove(tmpl);
    return m;
}

static sgllm_context *context(const sgllm_model *m, int32_t n_ctx, int32_t n_batch) {
    sgllm_context_params cp;
    sgllm_context_default_params(&cp);
    cp.n_ctx = n_ctx;
    cp.n_batch = n_batch;
    sgllm_context *c = NULL;
    CHECK(sgllm_context_create(m, &cp, &c) == SGLLM_OK);
    return c;
}

// max |a - b| / max |b| over n values; infinite when a holds a NaN or infinity.
static double err_rel(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i])) return INFINITY;
        num = fmax(num, fabs((double)a[i] - b[i]));
        den = fmax(den, fabs((double)b[i]));
    }
    return den > 0 ? num / den : num;
}

// ||a - b|| / ||b||: the measure for Q8_0 weights, where 8-bit activation roundings that differ
// between the engines move single logits by a few percent but the whole vector far less.
static double err_rms(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i])) return INFINITY;
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

// Evaluates tokens in calls of `step` tokens with every position's logits.
static void eval_all(sgllm_context *c, const int32_t *toks, int n, int step, float *logits, int n_vocab) {
    uint8_t want[N_TOK];
    memset(want, 1, sizeof want);
    for (int i = 0; i < n; i += step) {
        int k = n - i < step ? n - i : step;
        sgllm_status s = sgllm_evaluate(c, toks + i, k, want, logits + (size_t)i * n_vocab);
        CHECKF(s == SGLLM_OK, "evaluate at %d: %s", i, sgllm_context_errmsg(c));
    }
}

static void tiny_case(const char *arch, int n_layer, int window, uint32_t wtype) {
    tiny cfg = {arch, n_layer, window, (int)wtype, 300, false, false, false};
    char path[] = "/tmp/sgllm_gpu_model_XXXXXX";
    tiny_temp(&cfg, path);
    sgllm_model *cpu = load(path, SGLLM_BACKEND_CPU, NULL), *gpu = load(path, SGLLM_BACKEND_CUDA, NULL);
    if (!cpu || !gpu) {
        sgllm_model_free(cpu);
        sgllm_model_free(gpu);
        remove(path);
        return;
    }
    CHECK(sgllm_model_backend(gpu) == SGLLM_BACKEND_CUDA && sgllm_model_backend(cpu) == SGLLM_BACKEND_CPU);
    CHECKF(!strncmp(sgllm_model_device_info(gpu), "cuda dispatch: ", 15), "%s", sgllm_model_device_info(gpu));
    CHECKF(!strcmp(sgllm_model_device_info(cpu), "cpu (requested)"), "%s", sgllm_model_device_info(cpu));
    int V = sgllm_model_n_vocab(cpu);
    int32_t toks[N_TOK];
    for (int i = 0; i < N_TOK; i++) toks[i] = 3 + (int32_t)(test_u64() % (uint64_t)(V - 3));
    size_t n = (size_t)N_TOK * (size_t)V;
    float *ref = (float *)malloc(n * sizeof(float)), *batch = (float *)malloc(n * sizeof(float)),
          *small = (float *)malloc(n * sizeof(float)), *one = (float *)malloc(n * sizeof(float));
    sgllm_context *cc = context(cpu, 64, 64), *g_batch = context(gpu, 64, 64), *g_small = context(gpu, 64, 4),
                  *g_one = context(gpu, 64, 1);
    eval_all(cc, toks, N_TOK, N_TOK, ref, V);
    eval_all(g_batch, toks, N_TOK, N_TOK, batch, V);
    eval_all(g_small, toks, N_TOK, N_TOK, small, V); // the context cuts it into batches of 4
    eval_all(g_one, toks, N_TOK, 1, one, V);
    CHECK(g_one->gpu && g_one->gpu->graph_last && !g_one->gpu->graph_failed); // the single-token step ran as a graph
    bool f32 = wtype == SGLLM__T_F32;
    double tol = f32 ? 2e-3 : 3e-2;
    double (*err)(const float *, const float *, size_t) = f32 ? err_rel : err_rms;
    double e_batch = err(batch, ref, n), e_small = err(small, ref, n), e_one = err(one, ref, n),
           e_self = err_rel(one, small, n);
    // Single tokens against batches of 4 with the keys in one split: the single-token graph
    // sizes its splits for its tier's horizon (up to 1008 keys), a batch for its own keys, so
    // with several splits allowed the two merge the same scores in different orders (float
    // sums, ~1e-7; with Q8_0 weights an activation on an int8 rounding edge then takes the
    // neighbouring code: seed 1795947768 gave 5.6e-4 above, and 0 with one split). With one
    // split every op sums in the same order on both paths: bit for bit, F32 and Q8_0.
    char one_path[] = "/tmp/sgllm_gpu_model_cfg_XXXXXX";
    temp_config(one_path, "{\"decode_max_splits\": 1}");
    sgllm_model *gpu1 = load(path, SGLLM_BACKEND_CUDA, one_path);
    double e_self1 = INFINITY;
    if (gpu1) {
        float *one1 = (float *)malloc(n * sizeof(float)), *small1 = (float *)malloc(n * sizeof(float));
        sgllm_context *s4 = context(gpu1, 64, 4), *s1 = context(gpu1, 64, 1);
        eval_all(s4, toks, N_TOK, N_TOK, small1, V);
        eval_all(s1, toks, N_TOK, 1, one1, V);
        e_self1 = err_rel(one1, small1, n);
        CHECKF(!memcmp(one1, small1, n * sizeof(float)), "%s %s: single tokens vs batches of 4, one split, %.3e", arch,
               f32 ? "F32" : "Q8_0", e_self1);
        sgllm_context_free(s4);
        sgllm_context_free(s1);
        sgllm_model_free(gpu1);
        free(one1), free(small1);
    }
    remove(one_path);
    printf("%-6s %-4s layers %d window %2d: gemm %.2e, matvec x4 %.2e, graph x1 %.2e vs cpu (%s); x1 vs x4 %.2e (one "
           "split %.2e)\n",
           arch, f32 ? "F32" : "Q8_0", n_layer, window, e_batch, e_small, e_one, f32 ? "max" : "rms", e_self, e_self1);
    CHECKF(e_batch <= 3e-2, "%s: gemm path vs cpu %.3e", arch, e_batch);
    CHECKF(e_small <= tol, "%s: matvec path vs cpu %.3e", arch, e_small);
    CHECKF(e_one <= tol, "%s: single-token path vs cpu %.3e", arch, e_one);

    // a subset of rows after a rewind: the rows match the full run's
    uint8_t want[N_TOK];
    int n_want = 0;
    for (int i = 0; i < N_TOK; i++) n_want += want[i] = (uint8_t)(i % 3 == 1);
    CHECK(sgllm_context_rewind(g_batch, 0) == SGLLM_OK);
    float *sub = (float *)malloc((size_t)n_want * V * sizeof(float));
    CHECK(sgllm_evaluate(g_batch, toks, N_TOK, want, sub) == SGLLM_OK);
    double e_sub = 0;
    for (int i = 0, r = 0; i < N_TOK; i++)
        if (want[i]) {
            e_sub = fmax(e_sub, err_rel(sub + (size_t)r * V, batch + (size_t)i * V, (size_t)V));
            r++;
        }
    CHECKF(e_sub <= 1e-6, "%s: selected rows differ from the full run's by %.3e", arch, e_sub);
    free(sub);

    // the same prompt through the tensor-core prefill attention: a model whose dispatch sends
    // batches of 16 or more tokens there (prefill_min_tokens, 64 by default, above N_TOK)
    char cfg_path[] = "/tmp/sgllm_gpu_model_cfg_XXXXXX";
    temp_config(cfg_path, "{\"prefill_min_tokens\": 16}");
    sgllm_model *gpu_pf = load(path, SGLLM_BACKEND_CUDA, cfg_path);
    if (gpu_pf) {
        CHECKF(strstr(sgllm_model_device_info(gpu_pf), "from 16 tokens") != NULL, "%s", sgllm_model_device_info(gpu_pf));
        sgllm_context *g_pf = context(gpu_pf, 64, 64);
        eval_all(g_pf, toks, N_TOK, N_TOK, small, V);
        double e_pf = err(small, ref, n);
        printf("%-6s %-4s layers %d window %2d: gemm + prefill attention %.2e vs cpu\n", arch, f32 ? "F32" : "Q8_0",
               n_layer, window, e_pf);
        CHECKF(e_pf <= 3e-2, "%s: gemm + prefill attention path vs cpu %.3e", arch, e_pf);
        sgllm_context_free(g_pf);
        sgllm_model_free(gpu_pf);
    }
    remove(cfg_path);

    sgllm_context_free(cc);
    sgllm_context_free(g_batch);
    sgllm_context_free(g_small);
    sgllm_context_free(g_one);
    free(ref);
    free(batch);
    free(small);
    free(one);
    sgllm_model_free(cpu);
    sgllm_model_free(gpu);
    remove(path);
}

// The user's kernel config is applied last, shows in the device line, and bad files fail the load.
static sgllm_model *load_synthetic(const char *preset, const char *type, uint64_t seed, const char *kernel_config) {
    sgllm_model_params mp;
    sgllm_model_default_params(&mp);
    mp.backend = SGLLM_BACKEND_CUDA;
    mp.kernel_config = kernel_config;
    sgllm_model *m = NULL;
    char err[512];
    sgllm_status s = sgllm_model_load_synthetic(preset, type, seed, &mp, &m, err, sizeof err);
    CHECKF(s == SGLLM_OK, "synthetic %s %s: %s", preset, type, err);
    return m;
}

static void synthetic_case(const char *preset, const char *type) {
    // one attention split everywhere: a graph's split count is fixed for the whole context and
    // an eager batch's follows its keys, and splits merged in another grouping round
    // differently; and one attention kernel: a graph is told the context's full length, an
    // eager batch its keys so far, so with dispatch.decode_mma's rule a short context runs the
    // tensor cores in the one and the CUDA cores in the other (the same attention to ~2^-22,
    // not the same bits); decode_mma 1 puts every split on the tensor cores. test_gpu holds
    // every split count and both kernels to the CPU and to double precision.
    char conf[] = "/tmp/sgllm_gpu_split_XXXXXX";
    temp_config(conf, "{\"decode_max_splits\": 1, \"decode_mma\": 1}");
    uint64_t seed = test_u64();
    sgllm_model *m = load_synthetic(preset, type, seed, conf), *same = load_synthetic(preset, type, seed, conf),
                *other = load_synthetic(preset, type, seed + 1, conf);
    remove(conf);
    if (m && same && other) {
        CHECK(sgllm_model_backend(m) == SGLLM_BACKEND_CUDA);
        int V = sgllm_model_n_vocab(m);
        int32_t toks[N_TOK];
        for (int i = 0; i < N_TOK; i++) toks[i] = (int32_t)(test_u64() % (uint64_t)V);
        size_t n = (size_t)N_TOK * (size_t)V;
        float *batch = (float *)malloc(n * sizeof(float)), *small = (float *)malloc(n * sizeof(float)),
              *one = (float *)malloc(n * sizeof(float)), *one_same = (float *)malloc(n * sizeof(float)),
              *one_other = (float *)malloc(n * sizeof(float));
        sgllm_context *g_batch = context(m, 64, 64), *g_small = context(m, 64, 4), *g_one = context(m, 64, 1),
                      *g_same = context(same, 64, 1), *g_other = context(other, 64, 1);
        eval_all(g_batch, toks, N_TOK, N_TOK, batch, V);
        eval_all(g_small, toks, N_TOK, N_TOK, small, V);
        eval_all(g_one, toks, N_TOK, 1, one, V);
        eval_all(g_same, toks, N_TOK, 1, one_same, V);
        eval_all(g_other, toks, N_TOK, 1, one_other, V);
        double peak = 0;
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) {
            bad += !isfinite(one[i]) || !isfinite(batch[i]);
            peak = fmax(peak, fabs((double)one[i]));
        }
        double e_batch = err_rel(batch, one, n), e_small = err_rel(one, small, n), e_same = err_rel(one_same, one, n),
               e_other = err_rel(one_other, one, n);
        printf("synthetic %-12s %-4s: max |logit| %.3g, gemm vs x1 %.2e, x1 vs x4 %.2e, same seed %.1e, other seed %.2e\n",
               preset, type, peak, e_batch, e_small, e_same, e_other);
        CHECKF(bad == 0 && peak > 0, "%s %s: %zu non-finite logits, peak %g", preset, type, bad, peak);
        if (!strcmp(sgllm_model_architecture(m), "gemma3") && !strcmp(type, "bf16"))
            CHECKF(e_batch <= 3e-2, "%s %s: one batch vs one token at a time %.3e", preset, type, e_batch);
        CHECKF(e_small <= 1e-4, "%s %s: one token at a time vs batches of 4 %.3e", preset, type, e_small);
        CHECKF(e_same <= 1e-6, "%s %s: same seed %.3e", preset, type, e_same);
        CHECKF(e_other > 1e-2, "%s %s: another seed gives the same logits (%.3e)", preset, type, e_other);
        sgllm_context *cs[] = {g_batch, g_small, g_one, g_same, g_other};
        for (int i = 0; i < 5; i++) sgllm_context_free(cs[i]);
        float *bufs[] = {batch, small, one, one_same, one_other};
        for (int i = 0; i < 5; i++) free(bufs[i]);
    }
    sgllm_model_free(m);
    sgllm_model_free(same);
    sgllm_model_free(other);
}

static void kernel_config_case(void) {
    tiny cfg = {"llama", 1, 0, SGLLM__T_F32, 300, false, false, false};
    char path[] = "/tmp/sgllm_gpu_model_XXXXXX", conf[] = "/tmp/sgllm_gpu_conf_XXXXXX";
    tiny_temp(&cfg, path);
    temp_config(conf, "{\"matvec_max_batch\": 3, \"decode_max_splits\": 5}");
    sgllm_model *m = load(path, SGLLM_BACKEND_AUTO, conf);
    if (m) {
        const char *info = sgllm_model_device_info(m);
        CHECKF(strstr(info, conf) && strstr(info, "up to batch 3") && strstr(info, "<= 5 splits"), "%s", info);
        CHECK(sgllm_model_backend(m) == SGLLM_BACKEND_CUDA);
        printf("device: %s\n", info);
    }
    sgllm_model_free(m);
    int fc = open(conf, O_WRONLY | O_TRUNC);
    CHECK(fc >= 0 && write(fc, "{\"matvec_max_batch\": 99}", 24) == 24);
    close(fc);
    sgllm_model_params mp;
    sgllm_model_default_params(&mp);
    mp.path = path;
    mp.kernel_config = conf;
    char err[512];
    m = NULL;
    CHECK(sgllm_model_load(&mp, &m, err, sizeof err) == SGLLM_ERR_FORMAT && !m && strstr(err, "matvec_max_batch"));
    remove(path);
    remove(conf);
}

static char *read_text(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = (char *)malloc(1 << 20);
    *len = fread(buf, 1, (1 << 20) - 1, f);
    buf[*len] = 0;
    fclose(f);
    return buf;
}

// argmax, top-two margin and -log softmax(row)[target]
static void row_stats(const float *row, int V, int32_t target, int32_t *argmax, double *margin, double *nll) {
    int32_t best = 0;
    for (int32_t i = 1; i < V; i++)
        if (row[i] > row[best]) best = i;
    float second = -INFINITY;
    double sum = 0;
    for (int32_t i = 0; i < V; i++) {
        sum += exp((double)row[i] - row[best]);
        if (i != best && row[i] > second) second = row[i];
    }
    *argmax = best;
    *margin = (double)row[best] - second;
    *nll = log(sum) - ((double)row[target] - row[best]);
}

typedef struct tf_stats {
    int agree, ties;
    double nll, max_err;
} tf_stats;

static void real_case(const char *file) {
    char path[1024];
    test_model_path(path, sizeof path, file);
    double t0 = sgllm__now();
    sgllm_model *cpu = load(path, SGLLM_BACKEND_CPU, NULL), *gpu = load(path, SGLLM_BACKEND_CUDA, NULL);
    size_t len = 0;
    char *text = read_text("tests/golden/text.txt", &len);
    CHECK(text != NULL);
    if (!cpu || !gpu || !text) {
        sgllm_model_free(cpu);
        sgllm_model_free(gpu);
        free(text);
        return;
    }
    enum { MAX_TOK = 2048, BATCH = 256 };
    int32_t *toks = (int32_t *)malloc(MAX_TOK * sizeof(int32_t)), n = 0;
    sgllm_status st = sgllm_tokenize(cpu, text, len, SGLLM_TOKENIZE_ADD_BOS, toks, MAX_TOK, &n);
    CHECK(st == SGLLM_OK || st == SGLLM_ERR_BUFFER_TOO_SMALL);
    st = SGLLM_OK;
    if (n > MAX_TOK) n = MAX_TOK;
    int V = sgllm_model_n_vocab(cpu);
    sgllm_context *cc = context(cpu, MAX_TOK, BATCH), *gc[2] = {context(gpu, MAX_TOK, BATCH), context(gpu, MAX_TOK, 8)};
    float *lc = (float *)malloc((size_t)BATCH * V * sizeof(float)), *lg = (float *)malloc((size_t)BATCH * V * sizeof(float));
    uint8_t want[BATCH];
    memset(want, 1, sizeof want);
    int scored = 0;
    double nll_c = 0;
    tf_stats g[2];
    memset(g, 0, sizeof g);
    for (int b = 0; b + 1 < n && !st; b += BATCH) {
        int k = n - 1 - b < BATCH ? n - 1 - b : BATCH; // positions b..b+k-1 predict b+1..b+k
        CHECK(sgllm_evaluate(cc, toks + b, k, want, lc) == SGLLM_OK);
        int32_t ac[BATCH];
        double mc[BATCH];
        for (int i = 0; i < k; i++) {
            double nc;
            row_stats(lc + (size_t)i * V, V, toks[b + i + 1], &ac[i], &mc[i], &nc);
            nll_c += nc;
        }
        scored += k;
        for (int v = 0; v < 2 && !st; v++) {
            st = sgllm_evaluate(gc[v], toks + b, k, want, lg);
            CHECKF(st == SGLLM_OK, "%s", sgllm_context_errmsg(gc[v]));
            for (int i = 0; !st && i < k; i++) {
                int32_t ag;
                double mg, ng;
                row_stats(lg + (size_t)i * V, V, toks[b + i + 1], &ag, &mg, &ng);
                g[v].agree += ag == ac[i];
                g[v].ties += ag != ac[i] && mc[i] < 1.0;
                g[v].nll += ng;
            }
            if (!st) g[v].max_err = fmax(g[v].max_err, err_rel(lg, lc, (size_t)k * V));
        }
    }
    double ppl_c = exp(nll_c / scored);
    printf("%s: %d positions, cpu ppl %.4f [%.1fs]\n", file, scored, ppl_c, sgllm__now() - t0);
    for (int v = 0; v < 2; v++) {
        double ppl = exp(g[v].nll / scored), raw = (double)g[v].agree / scored, adj = (double)(g[v].agree + g[v].ties) / scored;
        printf("  gpu n_batch %3d (%s): top-1 agreement %.2f%% (%.2f%% with near ties), ppl %.4f (%+.3f%%), max logit "
               "err %.2e\n", v ? 8 : BATCH, v ? "matvec fp32" : "gemm bf16", 100 * raw, 100 * adj, ppl,
               100 * (ppl / ppl_c - 1), g[v].max_err);
        CHECKF(adj >= 0.99, "%s: top-1 agreement with near ties %.4f", file, adj);
        CHECKF(raw >= 0.90, "%s: raw top-1 agreement %.4f", file, raw);
        CHECKF(fabs(ppl / ppl_c - 1) <= 0.005, "%s: perplexity gpu %.4f cpu %.4f", file, ppl, ppl_c);
    }
    printf("  %s\n", sgllm_model_device_info(gpu));
    sgllm_context_free(cc);
    sgllm_context_free(gc[0]);
    sgllm_context_free(gc[1]);
    free(lc);
    free(lg);
    free(toks);
    free(text);
    sgllm_model_free(cpu);
    sgllm_model_free(gpu);
}

static int stop_after_3(void *user, const char *piece, size_t len) {
    (void)piece, (void)len;
    return ++*(int *)user >= 3;
}

// sgllm_generate on the GPU samples on the device: greedy must give, token by token, the
// argmax of the GPU's own logits from sgllm_evaluate; a sampled generate (with penalties) must
// repeat itself for the same seed. Without penalties the next step is enqueued before the token
// is read: a seeded sampled generate must then give the very tokens of the one-step-at-a-time
// order (forced by a presence penalty of 1e-30, which moves no logit), and every stop (maximum
// tokens, a full context, the callback) must report its reason and leave the history at prompt
// + kept tokens - 1.
static void generate_case(const char *arch, int n_layer, int window) {
    tiny cfg = {arch, n_layer, window, (int)SGLLM__T_Q8_0, 300, false, false, true}; // greedy runs never hit </s>
    char path[] = "/tmp/sgllm_gpu_gen_XXXXXX";
    sgllm_model *gpu = tiny_gpu(&cfg, path);
    if (!gpu) return;
    int V = sgllm_model_n_vocab(gpu);
    sgllm_generate_params gp;
    sgllm_generate_default_params(&gp);
    gp.max_tokens = 40;
    gp.sampler.temperature = 0;
    sgllm_generate_stats st;
    sgllm_context *g = context(gpu, 64, 8);
    sgllm_status s = sgllm_generate(g, "hello", &gp, &st);
    CHECKF(s == SGLLM_OK, "%s: generate: %s", arch, sgllm_context_errmsg(g));
    CHECK(g->gpu->smp_graph_last && !g->gpu->smp_graph_failed); // the decode step and the sampler ran as one graph
    // history holds the prompt and every generated token but the last (never evaluated)
    int n_prompt = st.n_prompt, n_gen = st.n_generated, bad = 0;
    CHECKF(g->n_past == n_prompt + n_gen - 1 && n_gen >= 1, "%s: %d prompt + %d generated, %d evaluated", arch, n_prompt,
           n_gen, g->n_past);
    sgllm_context *r = context(gpu, 64, 8);
    float *lg = (float *)malloc((size_t)V * sizeof(float));
    CHECK(sgllm_evaluate(r, g->history, n_prompt, NULL, lg) == SGLLM_OK);
    for (int i = 0; i < n_gen - 1; i++) {
        bad += sgllm__argmax(lg, V) != g->history[n_prompt + i];
        CHECK(sgllm_evaluate(r, &g->history[n_prompt + i], 1, NULL, lg) == SGLLM_OK);
    }
    printf("generate %-6s greedy on the device: %d tokens, %d differ from the argmax of sgllm_evaluate's logits\n", arch,
           n_gen - 1, bad);
    CHECKF(bad == 0, "%s: greedy generate differs from argmax at %d tokens", arch, bad);
    // Greedy productions upload their buffer only when it does not hold their arguments and
    // position already: on the same context, after a sampled generate (new arguments each
    // draw) and with a longer prompt (other positions), greedy must give the first run's
    // tokens, and a fresh context's for the longer prompt.
    {
        sgllm_token first[64];
        const int n_first = g->n_past;
        memcpy(first, g->history, (size_t)n_first * sizeof(sgllm_token));
        sgllm_generate_params sp = gp;
        sp.sampler.temperature = 0.9f;
        sp.sampler.seed = test_u64();
        CHECK(sgllm_generate(g, "hello", &sp, &st) == SGLLM_OK);
        CHECK(sgllm_generate(g, "hello", &gp, &st) == SGLLM_OK);
        CHECKF(g->n_past == n_first && !memcmp(g->history, first, (size_t)n_first * sizeof(sgllm_token)),
               "%s: greedy generate after a sampled one on the same context differs from the first", arch);
        sgllm_token longer[64];
        int n_longer = 0;
        for (int run = 0; run < 2; run++) {
            sgllm_context *c = run ? context(gpu, 64, 8) : g;
            CHECK(sgllm_generate(c, "hello hello world", &gp, &st) == SGLLM_OK);
            if (run == 0) n_longer = c->n_past, memcpy(longer, c->history, (size_t)c->n_past * sizeof(sgllm_token));
            else
                CHECKF(c->n_past == n_longer && !memcmp(c->history, longer, (size_t)n_longer * sizeof(sgllm_token)),
                       "%s: greedy generate on a used context differs from a fresh one's", arch);
            if (run) sgllm_context_free(c);
        }
    }

    // Sampled without penalties, the uniforms go to the device in blocks of 32 positions: token
    // by token the CPU sampler's draws from the GPU's own logits for the same seed (one draw a
    // token, in order), over more than one block (a run that ends early takes another seed).
    {
        sgllm_generate_params sp = gp;
        sp.sampler.temperature = 0.9f;
        int compared = 0, differ = 0;
        for (int attempt = 0; attempt < 8 && compared < 34; attempt++) {
            sp.sampler.seed = test_u64();
            sgllm_context *c = context(gpu, 64, 8);
            CHECK(sgllm_generate(c, "hello", &sp, &st) == SGLLM_OK);
            sgllm_sampler *cs = NULL;
            CHECK(sgllm_sampler_init(&sp.sampler, V, &cs) == SGLLM_OK);
            for (int k = 0; cs && k < st.n_prompt; k++) sgllm_sampler_accept(cs, c->history[k]); // as generate does
            sgllm_context *e = context(gpu, 64, 8);
            CHECK(sgllm_evaluate(e, c->history, st.n_prompt, NULL, lg) == SGLLM_OK);
            compared = differ = 0;
            for (int i = 0; cs && i < st.n_generated - 1; i++, compared++) {
                sgllm_token t = sgllm_sampler_sample(cs, lg), got = c->history[st.n_prompt + i];
                sgllm_sampler_accept(cs, got);
                differ += t != got;
                CHECK(sgllm_evaluate(e, &got, 1, NULL, lg) == SGLLM_OK);
            }
            sgllm_sampler_free(cs);
            sgllm_context_free(e);
            sgllm_context_free(c);
        }
        printf("generate %-6s sampled on the device: %d tokens, %d differ from the CPU sampler's draws\n", arch,
               compared, differ);
        CHECKF(compared >= 34 && differ == 0, "%s: sampled generate: %d of %d tokens differ from the CPU sampler's",
               arch, differ, compared);
    }

    gp.sampler.temperature = 1.0f;
    gp.sampler.repeat_penalty = 1.3f;
    gp.sampler.presence_penalty = 0.2f;
    gp.sampler.seed = test_u64();
    sgllm_token seq[2][64];
    int len[2];
    for (int run = 0; run < 2; run++) {
        sgllm_context *c = context(gpu, 64, 8);
        CHECK(sgllm_generate(c, "hello", &gp, &st) == SGLLM_OK);
        len[run] = c->n_past;
        memcpy(seq[run], c->history, (size_t)c->n_past * sizeof(sgllm_token));
        sgllm_context_free(c);
    }
    CHECKF(len[0] == len[1] && !memcmp(seq[0], seq[1], (size_t)len[0] * sizeof(sgllm_token)),
           "%s: sampled generate with one seed differs between runs", arch);
    { // the same on a context that sampled without penalties first (its step graphs then hold the
      // sampler without the penalty launches): the penalized run must not replay those
        sgllm_context *c = context(gpu, 64, 8);
        sgllm_generate_params np = gp;
        np.sampler.repeat_penalty = 1.0f, np.sampler.presence_penalty = 0.0f;
        CHECK(sgllm_generate(c, "hello", &np, &st) == SGLLM_OK);
        CHECK(sgllm_generate(c, "hello", &gp, &st) == SGLLM_OK);
        CHECKF(c->n_past == len[0] && !memcmp(c->history, seq[0], (size_t)len[0] * sizeof(sgllm_token)),
               "%s: sampled generate with penalties after one without differs from a fresh context's", arch);
        sgllm_context_free(c);
    }

    gp.sampler.repeat_penalty = 1.0f;
    for (int run = 0; run < 2; run++) { // run 0 enqueued ahead, run 1 one step at a time
        gp.sampler.presence_penalty = run ? 1e-30f : 0.0f;
        sgllm_context *c = context(gpu, 64, 8);
        CHECK(sgllm_generate(c, "hello", &gp, &st) == SGLLM_OK);
        len[run] = c->n_past;
        memcpy(seq[run], c->history, (size_t)c->n_past * sizeof(sgllm_token));
        CHECKF(c->n_past == st.n_prompt + st.n_generated - 1, "%s: run %d: %d evaluated for %d + %d", arch, run,
               c->n_past, st.n_prompt, st.n_generated);
        sgllm_context_free(c);
    }
    CHECKF(len[0] == len[1] && !memcmp(seq[0], seq[1], (size_t)len[0] * sizeof(sgllm_token)),
           "%s: sampled generate enqueued ahead differs from one step at a time", arch);
    // stops: at 5 tokens, at a full context of 16, by the callback after 3 pieces
    gp.sampler.presence_penalty = 0.0f;
    gp.sampler.temperature = 0;
    for (int stop = 0; stop < 3; stop++) {
        sgllm_context *c = context(gpu, stop == 1 ? 16 : 64, 8);
        int pieces = 0;
        gp.max_tokens = stop == 0 ? 5 : 40;
        gp.on_piece = stop == 2 ? stop_after_3 : NULL;
        gp.user_data = &pieces;
        s = sgllm_generate(c, "hello", &gp, &st);
        sgllm_stop_reason want = stop == 0 ? SGLLM_STOP_MAX_TOKENS : stop == 1 ? SGLLM_STOP_CONTEXT_FULL : SGLLM_STOP_CALLBACK;
        CHECKF(s == SGLLM_OK && st.stop_reason == want, "%s: stop %d: status %d, reason %d", arch, stop, (int)s,
               (int)st.stop_reason);
        CHECKF(c->n_past == st.n_prompt + st.n_generated - 1 && c->n_past <= c->n_ctx, "%s: stop %d: %d evaluated for %d + %d",
               arch, stop, c->n_past, st.n_prompt, st.n_generated);
        gp.max_tokens = 40;
        gp.on_piece = NULL;
        sgllm_context_free(c);
    }
    free(lg);
    sgllm_context_free(g);
    sgllm_context_free(r);
    sgllm_model_free(gpu);
    remove(path);
}

// The streamed matrix-vector kernel (sgllm_cuda.cu section 4c) inside decode steps: the tiny
// Q8_0 llama's o and output matrices (68-byte rows, not the wide kernel's) take it when the
// kernel config lowers matvec_stream_kb to 1 KiB (the default 24 MiB is for real output
// matrices). Its rows are bit for bit the staged kernel's, so single-token logits (eager, then
// each step's graph) and a greedy generation (graph, device sampler, next step enqueued ahead)
// must equal those of the same model loaded with the default dispatch, exactly; on sm90 and
// newer the step's output matrix must have been the streamed launch.
static void stream_case(void) {
    tiny cfg = {"llama", 2, 0, (int)SGLLM__T_Q8_0, 300, false, false, true};
    char path[] = "/tmp/sgllm_gpu_stream_XXXXXX", conf[] = "/tmp/sgllm_gpu_sconf_XXXXXX";
    tiny_temp(&cfg, path);
    temp_config(conf, "{\"matvec_stream_kb\": 1}");
    sgllm_model *m[2] = {load(path, SGLLM_BACKEND_CUDA, NULL), load(path, SGLLM_BACKEND_CUDA, conf)};
    if (m[0] && m[1]) {
        int V = sgllm_model_n_vocab(m[0]);
        bool sm90 = m[1]->gpu->disp.matvec_stream_kb == 1 && strcmp(m[1]->gpu->disp.row, "sm80") &&
                    strcmp(m[1]->gpu->disp.row, "sm86") && strcmp(m[1]->gpu->disp.row, "sm89");
        float *lg[2] = {(float *)malloc((size_t)V * 4), (float *)malloc((size_t)V * 4)};
        sgllm_context *c[2] = {context(m[0], 64, 8), context(m[1], 64, 8)};
        sgllm_token prompt[3] = {5, 17, 42};
        int same = 0, streamed = 0, steps = 12;
        for (int k = 0; k < 2; k++) CHECK(sgllm_evaluate(c[k], prompt, 3, NULL, lg[k]) == SGLLM_OK);
        for (int i = 0; i < steps; i++) {
            sgllm_token tok = (sgllm_token)sgllm__argmax(lg[0], V);
            for (int k = 0; k < 2; k++) CHECK(sgllm_evaluate(c[k], &tok, 1, NULL, lg[k]) == SGLLM_OK);
            same += !memcmp(lg[0], lg[1], (size_t)V * 4);
            streamed += !strcmp(sgllm__cuda_last_launch(c[1]->gpu->cu), "matvec (stream)");
        }
        CHECKF(same == steps, "streamed tiny model: %d of %d single-token logits bit for bit the default's", same, steps);
        CHECKF(!sm90 || streamed == steps, "streamed tiny model: the output matrix streamed in %d of %d steps", streamed, steps);
        sgllm_generate_params gp;
        sgllm_generate_default_params(&gp);
        gp.max_tokens = 40;
        gp.sampler.temperature = 0;
        sgllm_token seq[2][64];
        int len[2];
        for (int k = 0; k < 2; k++) {
            sgllm_context *g = context(m[k], 64, 8);
            sgllm_generate_stats st;
            CHECK(sgllm_generate(g, "hello", &gp, &st) == SGLLM_OK);
            len[k] = g->n_past;
            memcpy(seq[k], g->history, (size_t)g->n_past * sizeof(sgllm_token));
            sgllm_context_free(g);
        }
        CHECKF(len[0] == len[1] && !memcmp(seq[0], seq[1], (size_t)len[0] * sizeof(sgllm_token)),
               "streamed tiny model: greedy generate differs from the default dispatch's");
        printf("streamed kernel in decode steps: %d single-token logits bit for bit (%d streamed), greedy %d tokens the same\n",
               same, streamed, len[0]);
        for (int k = 0; k < 2; k++) sgllm_context_free(c[k]), free(lg[k]);
    }
    for (int k = 0; k < 2; k++) sgllm_model_free(m[k]);
    remove(path);
    remove(conf);
}

// Graph tiers (sgllm__gpu_tier): one token at a time through a context of 1100 positions,
// whose full length puts decode attention on the tensor cores, replays the short tier's graph
// (the CUDA-core kernel) up to the boundary the context found, then the full length's, each
// captured when first needed; every position's logits must match batches of 4 (eager
// launches told their keys so far) within tiny_case's bound for single tokens against
// batches, across the boundary. The boundary itself: the last step without tensor cores.
static void tiers_case(void) {
    enum { N = 1100 };
    tiny cfg = {"llama", 2, 0, (int)SGLLM__T_F32, 300, false, false, false};
    char path[] = "/tmp/sgllm_gpu_model_XXXXXX";
    sgllm_model *gpu = tiny_gpu(&cfg, path);
    if (!gpu) return;
    int V = sgllm_model_n_vocab(gpu);
    int32_t *toks = (int32_t *)malloc(N * sizeof(int32_t));
    uint8_t *want = (uint8_t *)malloc(N);
    float *one = (float *)malloc((size_t)N * V * sizeof(float)), *four = (float *)malloc((size_t)N * V * sizeof(float));
    memset(want, 1, N);
    for (int i = 0; i < N; i++) toks[i] = 3 + (int32_t)(test_u64() % (uint64_t)(V - 3));
    sgllm_context *g_one = context(gpu, N, 1), *g_four = context(gpu, N, 4);
    sgllm__gpu_ctx *gc = g_one->gpu;
    int64_t sk = gc->short_keys;
    CHECKF(sk > 0 && sk < N && !sgllm__gpu_step_mma(gc, sk) && sgllm__gpu_step_mma(gc, sk + 1),
           "graph tiers: short tier up to %lld keys", (long long)sk);
    for (int i = 0; i < N; i++) {
        CHECKF(sgllm_evaluate(g_one, toks + i, 1, NULL, one + (size_t)i * V) == SGLLM_OK, "evaluate at %d: %s", i,
               sgllm_context_errmsg(g_one));
        int t = i + 1 <= sk ? 0 : 1;
        CHECKF(gc->graph_last && gc->graph_last == gc->graph[t], "position %d: not the tier %d graph", i, t);
    }
    for (int i = 0; i < N; i += 4) {
        int k = N - i < 4 ? N - i : 4;
        CHECKF(sgllm_evaluate(g_four, toks + i, k, want, four + (size_t)i * V) == SGLLM_OK, "evaluate at %d", i);
    }
    CHECK(gc->graph[0] && gc->graph[1] && gc->graph[0] != gc->graph[1] && !gc->graph_failed);
    double worst = 0;
    int at = 0;
    for (int i = 0; i < N; i++) {
        double e = err_rel(one + (size_t)i * V, four + (size_t)i * V, (size_t)V);
        if (e > worst) worst = e, at = i;
    }
    printf("graph tiers: %d single-token steps, the short tier's graph up to %lld keys, then the full length's; "
           "worst %.2e (position %d) vs batches of 4\n",
           N, (long long)sk, worst, at);
    CHECKF(worst <= 1e-4, "graph tiers: single tokens vs batches of 4 differ by %.3e at position %d", worst, at);
    sgllm_context_free(g_one);
    sgllm_context_free(g_four);
    sgllm_model_free(gpu);
    free(toks), free(want), free(one), free(four);
    remove(path);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0); // a crash keeps the lines before it
    test_seed();
    bool tiny_only = argc > 1 && !strcmp(argv[1], "tiny"), real_only = argc > 1 && !strcmp(argv[1], "real");
    if (!real_only) {
        static const uint32_t types[2] = {SGLLM__T_F32, SGLLM__T_Q8_0};
        for (int t = 0; t < 2; t++) {
            tiny_case("llama", 2, 0, types[t]);
            tiny_case("qwen3", 2, 0, types[t]);
            tiny_case("gemma3", 6, 8, types[t]);
        }
        kernel_config_case();
        stream_case();
        tiers_case();
        generate_case("llama", 2, 0);
        generate_case("gemma3", 6, 8);
        static const char *stypes[5] = {"bf16", "q8_0", "q4_1", "q4_k", "q4_k_m"};
        for (int t = 0; t < 5; t++) {
            synthetic_case("smollm2-135m", stypes[t]);
            synthetic_case("gemma3-270m", stypes[t]);
        }
    }
    if (!tiny_only) {
        real_case(TEST_SMOLLM);
        real_case(TEST_GEMMA);
    }
    return test_finish("test_gpu_model");
}
