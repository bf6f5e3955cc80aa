// tests/test_model.c - the model loader and the forward pass on tiny synthetic models built
// in memory (llama, qwen3 and gemma3 shapes, random weights): load errors name the missing
// or misshapen tensor; the engine's logits match a plain double-precision forward written
// here from the family descriptions (spec/models.md); batching, chunking, rewinding and a
// full context behave as sgllm.h documents.
#include "../sgllm_impl.c"
#include "gguf_writer.h"
#include "test.h"
#include "tiny_model.h"

// ---- the reference forward: plain loops in double, one token at a time, full K/V history

static void ref_rmsnorm(double *x, int n, const float *w, double eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double s = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++) x[i] = x[i] * s * (w ? w[i] : 1.0);
}

static void ref_matvec(const char *name, const double *x, double *y) {
    const tensor_def *t = find_def(name);
    for (uint64_t r = 0; r < t->ne[1]; r++) {
        double s = 0;
        for (uint64_t c = 0; c < t->ne[0]; c++) s += (double)t->values[r * t->ne[0] + c] * x[c];
        y[r] = s;
    }
}

static void ref_rope(double *v, int n_heads, int pos, double theta, bool neox) {
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < T_HD / 2; i++) {
            double a = pos * pow(theta, -2.0 * i / T_HD), c = cos(a), s = sin(a);
            int i0 = neox ? i : 2 * i, i1 = neox ? i + T_HD / 2 : 2 * i + 1;
            double x0 = v[h * T_HD + i0], x1 = v[h * T_HD + i1];
            v[h * T_HD + i0] = x0 * c - x1 * s;
            v[h * T_HD + i1] = x0 * s + x1 * c;
        }
}

// logits (n, n_vocab) for tokens[0..n) evaluated as one sequence
static void ref_forward(const tiny *cfg, const int32_t *tokens, int n, double *logits) {
    bool gemma = !strcmp(cfg->arch, "gemma3"), qwen3 = !strcmp(cfg->arch, "qwen3"), neox = gemma || qwen3;
    int L = cfg->n_layer;
    double *kc = (double *)calloc((size_t)L * n * T_KV * T_HD, sizeof(double));
    double *vc = (double *)calloc((size_t)L * n * T_KV * T_HD, sizeof(double));
    double x[T_EMBD], h[T_EMBD], q[T_HEADS * T_HD], k[T_KV * T_HD], v[T_KV * T_HD], att[T_HEADS * T_HD], o[T_EMBD],
        g[T_FF], u[T_FF], sc[4096];
    char nm[64];
    const tensor_def *emb = find_def("token_embd.weight");
    for (int p = 0; p < n; p++) {
        for (int e = 0; e < T_EMBD; e++) x[e] = emb->values[(size_t)tokens[p] * T_EMBD + e] * (gemma ? sqrt((double)T_EMBD) : 1.0);
        for (int il = 0; il < L; il++) {
#define W(suffix) (snprintf(nm, sizeof nm, "blk.%d." suffix, il), nm)
            bool sliding = gemma && (il + 1) % 6 != 0;
            double theta = gemma && !sliding ? 1e6 : 10000.0;
            memcpy(h, x, sizeof x);
            ref_rmsnorm(h, T_EMBD, find_def(W("attn_norm.weight"))->values, 1e-6);
            ref_matvec(W("attn_q.weight"), h, q);
            ref_matvec(W("attn_k.weight"), h, k);
            ref_matvec(W("attn_v.weight"), h, v);
            if (gemma || qwen3) {
                for (int hh = 0; hh < T_HEADS; hh++) ref_rmsnorm(q + hh * T_HD, T_HD, find_def(W("attn_q_norm.weight"))->values, 1e-6);
                for (int hh = 0; hh < T_KV; hh++) ref_rmsnorm(k + hh * T_HD, T_HD, find_def(W("attn_k_norm.weight"))->values, 1e-6);
            }
            ref_rope(q, T_HEADS, p, theta, neox);
            ref_rope(k, T_KV, p, theta, neox);
            memcpy(kc + ((size_t)il * n + p) * T_KV * T_HD, k, sizeof k);
            memcpy(vc + ((size_t)il * n + p) * T_KV * T_HD, v, sizeof v);
            for (int hh = 0; hh < T_HEADS; hh++) {
                int kvh = hh / (T_HEADS / T_KV), lo = sliding && cfg->window ? (p - cfg->window + 1 > 0 ? p - cfg->window + 1 : 0) : 0;
                double mx = -1e300, sum = 0;
                for (int j = lo; j <= p; j++) {
                    double s = 0;
                    for (int e = 0; e < T_HD; e++) s += q[hh * T_HD + e] * kc[((size_t)il * n + j) * T_KV * T_HD + kvh * T_HD + e];
                    sc[j] = s / sqrt((double)T_HD);
                    mx = fmax(mx, sc[j]);
                }
                for (int j = lo; j <= p; j++) sum += (sc[j] = exp(sc[j] - mx));
                for (int e = 0; e < T_HD; e++) {
                    double a = 0;
                    for (int j = lo; j <= p; j++) a += sc[j] / sum * vc[((size_t)il * n + j) * T_KV * T_HD + kvh * T_HD + e];
                    att[hh * T_HD + e] = a;
                }
            }
            ref_matvec(W("attn_output.weight"), att, o);
            if (gemma) ref_rmsnorm(o, T_EMBD, find_def(W("post_attention_norm.weight"))->values, 1e-6);
            for (int e = 0; e < T_EMBD; e++) x[e] += o[e];
            memcpy(h, x, sizeof x);
            ref_rmsnorm(h, T_EMBD, find_def(W("ffn_norm.weight"))->values, 1e-6);
            ref_matvec(W("ffn_gate.weight"), h, g);
            ref_matvec(W("ffn_up.weight"), h, u);
            for (int e = 0; e < T_FF; e++) {
                double a = g[e];
                a = gemma ? 0.5 * a * (1 + tanh(sqrt(2 / M_PI) * (a + 0.044715 * a * a * a))) : a / (1 + exp(-a));
                g[e] = a * u[e];
            }
            ref_matvec(W("ffn_down.weight"), g, o);
            if (gemma) ref_rmsnorm(o, T_EMBD, find_def(W("post_ffw_norm.weight"))->values, 1e-6);
            for (int e = 0; e < T_EMBD; e++) x[e] += o[e];
#undef W
        }
        memcpy(h, x, sizeof x);
        ref_rmsnorm(h, T_EMBD, find_def("output_norm.weight")->values, 1e-6);
        ref_matvec(gemma ? "token_embd.weight" : "output.weight", h, logits + (size_t)p * cfg->n_vocab);
    }
    free(kc);
    free(vc);
}

static sgllm_model *load(const char *path, char *err, size_t err_size, sgllm_status *status) {
    sgllm_model_params mp;
    sgllm_model_default_params(&mp);
    mp.path = path;
    sgllm_model *m = NULL;
    *status = sgllm_model_load(&mp, &m, err, err_size);
    return m;
}

static sgllm_context *make_ctx(sgllm_model *m, int n_ctx, int n_batch, int threads) {
    sgllm_context_params cp;
    sgllm_context_default_params(&cp);
    cp.n_ctx = n_ctx;
    cp.n_batch = n_batch;
    cp.n_threads = threads;
    sgllm_context *c = NULL;
    CHECK(sgllm_context_create(m, &cp, &c) == SGLLM_OK);
    return c;
}

// max |a - b| / max |b| (rms = false) or ||a - b|| / ||b|| (rms = true)
static double rel_diff(const float *a, const double *b, size_t n, bool rms) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        num = rms ? num + d * d : fmax(num, d);
        den = rms ? den + b[i] * b[i] : fmax(den, fabs(b[i]));
    }
    return rms ? sqrt(num / (den > 0 ? den : 1)) : num / (den > 0 ? den : 1);
}

static void test_family(const tiny *cfg, double tol) {
    char path[64], err[256];
    snprintf(path, sizeof path, "/tmp/sgllm_tiny_%d.gguf", (int)getpid());
    build_tiny(cfg, path);
    sgllm_status s;
    sgllm_model *m = load(path, err, sizeof err, &s);
    CHECKF(s == SGLLM_OK, "%s: %s", cfg->arch, err);
    if (!m) return;
    CHECK(!strcmp(sgllm_model_architecture(m), cfg->arch) && sgllm_model_n_vocab(m) == cfg->n_vocab &&
          sgllm_model_n_layer(m) == cfg->n_layer && sgllm_model_n_embd(m) == T_EMBD && sgllm_model_n_ctx_train(m) == 4096);
    enum { N = 24 };
    int32_t toks[N];
    for (int i = 0; i < N; i++) toks[i] = (int32_t)(test_u64() % (uint64_t)cfg->n_vocab);
    size_t V = (size_t)cfg->n_vocab;
    double *ref = (double *)malloc(N * V * sizeof(double));
    ref_forward(cfg, toks, N, ref);
    uint8_t all[N];
    memset(all, 1, sizeof all);
    float *got = (float *)malloc(N * V * sizeof(float)), *got2 = (float *)malloc(N * V * sizeof(float));

    // all positions in one call (two chunks of 16 and 8) against the reference
    sgllm_context *c = make_ctx(m, 64, 16, 2);
    CHECK(sgllm_evaluate(c, toks, N, all, got) == SGLLM_OK && sgllm_context_length(c) == N);
    bool rms = cfg->wtype != SGLLM__T_F32;
    double d = rel_diff(got, ref, N * V, rms);
    CHECKF(d < tol, "%s: batched logits differ from the reference by %.3g (tolerance %.3g)", cfg->arch, d, tol);
    printf("%-7s wtype %-4s: %s = %.2e (tolerance %.0e)\n", cfg->arch, sgllm__type_name((uint32_t)cfg->wtype),
           rms ? "||diff|| / ||ref||" : "max |diff| / max |ref|", d, tol);

    // one token at a time, single thread: the same logits up to float summation order
    sgllm_context *c1 = make_ctx(m, 64, 1, 1);
    for (int i = 0; i < N; i++) CHECK(sgllm_evaluate(c1, toks + i, 1, NULL, got2 + i * V) == SGLLM_OK);
    double d1 = 0;
    for (size_t i = 0; i < N * V; i++) d1 = fmax(d1, fabs(got[i] - got2[i]));
    CHECKF(d1 < 1e-3, "%s: token-by-token logits differ from batched by %.3g", cfg->arch, d1);

    // sliding-window layers keep a ring of window + n_batch - 1 rows; a rewind beyond what the
    // ring still holds rebuilds the cache from the sequence's tokens: the same logits again
    for (int32_t il = 0; il < m->n_layer; il++) {
        int32_t w = m->layers[il].window;
        CHECKF(c->cpu.kv_rows[il] == (w ? w + 16 - 1 : 64) && c1->cpu.kv_rows[il] == (w ? w : 64),
               "%s layer %d (window %d): cache rows %d (batch 16), %d (batch 1)", cfg->arch, (int)il, (int)w,
               (int)c->cpu.kv_rows[il], (int)c1->cpu.kv_rows[il]);
    }
    if (cfg->window) {
        float *got3 = (float *)malloc(N * V * sizeof(float));
        CHECK(!sgllm__cpu_kv_intact(&c1->cpu, 10)); // position 6 was overwritten by position 6 + window
        CHECK(sgllm_context_rewind(c1, 10) == SGLLM_OK);
        for (int i = 10; i < N; i++) CHECK(sgllm_evaluate(c1, toks + i, 1, NULL, got3 + i * V) == SGLLM_OK);
        double d3 = 0;
        for (size_t i = 10 * V; i < N * V; i++) d3 = fmax(d3, fabs(got3[i] - got2[i]));
        CHECKF(d3 == 0, "%s: logits after a rewind beyond the window's ring differ by %.3g", cfg->arch, d3);
        free(got3);
    }

    // rewind and continue: the same logits as the first time
    CHECK(sgllm_context_rewind(c, 10) == SGLLM_OK && sgllm_context_length(c) == 10);
    CHECK(sgllm_evaluate(c, toks + 10, N - 10, all + 10, got2) == SGLLM_OK);
    double d2 = 0;
    for (size_t i = 0; i < (N - 10) * V; i++) d2 = fmax(d2, fabs(got2[i] - got[10 * V + i]));
    CHECKF(d2 == 0, "%s: logits after a rewind differ by %.3g", cfg->arch, d2);
    CHECK(sgllm_context_rewind(c, N + 1) == SGLLM_ERR_INVALID_ARGUMENT);

    // errors leave the sequence as it was
    int32_t bad = cfg->n_vocab;
    CHECK(sgllm_evaluate(c, &bad, 1, NULL, got2) == SGLLM_ERR_INVALID_ARGUMENT && sgllm_context_length(c) == N);
    CHECK(strstr(sgllm_context_errmsg(c), "out of range") != NULL);
    int32_t many[64] = {0};
    CHECK(sgllm_evaluate(c, many, 64 - N + 1, NULL, got2) == SGLLM_ERR_CONTEXT_FULL && sgllm_context_length(c) == N);
    CHECK(sgllm_evaluate(c, many, 64 - N, NULL, got2) == SGLLM_OK && sgllm_context_length(c) == 64);
    CHECK(sgllm_evaluate(c, toks, 1, NULL, NULL) == SGLLM_ERR_CONTEXT_FULL);

    // generate: greedy continuation equals the argmax of evaluate, token by token
    sgllm_generate_params gp;
    sgllm_generate_default_params(&gp);
    gp.max_tokens = 5;
    gp.sampler.temperature = 0;
    gp.flags = 0;
    sgllm_generate_stats st;
    CHECK(sgllm_context_rewind(c, 0) == SGLLM_OK);
    CHECK(sgllm_generate(c, "\xe2\x96\x81w300", &gp, &st) == SGLLM_OK);
    CHECKF(st.n_prompt >= 1 && st.n_generated >= 1 && st.n_generated <= 5, "n_prompt %d n_generated %d", st.n_prompt, st.n_generated);
    CHECK(st.stop_reason == SGLLM_STOP_MAX_TOKENS || st.stop_reason == SGLLM_STOP_EOG);

    sgllm_context_free(c);
    sgllm_context_free(c1);
    sgllm_context_free(NULL);
    sgllm_model_free(m);
    free(ref);
    free(got);
    free(got2);
    remove(path);
}

static void test_load_errors(void) {
    char path[64], err[256];
    snprintf(path, sizeof path, "/tmp/sgllm_tiny_%d.gguf", (int)getpid());
    tiny cfg = {"llama", 2, 0, SGLLM__T_Q8_0, 300, true, false, false};
    build_tiny(&cfg, path);
    sgllm_status s;
    sgllm_model *m = load(path, err, sizeof err, &s);
    CHECKF(s == SGLLM_ERR_FORMAT && !m && strstr(err, "missing tensor 'blk.1.ffn_up.weight'"), "%d %s", s, err);
    cfg.skip_tensor = false;
    cfg.bad_shape = true;
    build_tiny(&cfg, path);
    m = load(path, err, sizeof err, &s);
    CHECKF(s == SGLLM_ERR_FORMAT && !m && strstr(err, "blk.0.attn_k.weight") && strstr(err, "wrong shape"), "%d %s", s, err);
    cfg.bad_shape = false;
    cfg.arch = "mamba";
    build_tiny(&cfg, path);
    m = load(path, err, sizeof err, &s);
    CHECKF(s == SGLLM_ERR_UNSUPPORTED && strstr(err, "mamba"), "%d %s", s, err);
    remove(path);
}

static int cancel_at_half(void *user, float progress) {
    (*(int *)user)++;
    return progress > 0.5f;
}

static void test_progress_cancel(void) {
    char path[64], err[256];
    snprintf(path, sizeof path, "/tmp/sgllm_tiny_%d.gguf", (int)getpid());
    tiny cfg = {"llama", 4, 0, SGLLM__T_Q8_0, 300, false, false, false};
    build_tiny(&cfg, path);
    sgllm_model_params mp;
    sgllm_model_default_params(&mp);
    mp.path = path;
    int calls = 0;
    mp.progress = cancel_at_half;
    mp.progress_user_data = &calls;
    sgllm_model *m = (sgllm_model *)1;
    CHECK(sgllm_model_load(&mp, &m, err, sizeof err) == SGLLM_ERR_CANCELLED && m == NULL && calls >= 2);
    remove(path);
}

int main(void) {
    test_seed();
    // F32 weights: the engine rounds K, V, q and the attention probabilities to fp16 (2^-11
    // relative each); the largest logit error stays under 1e-3 of the largest logit, checked
    // with 3x headroom. Q8_0 weights: every matmul input is also rounded to 8 bits per block
    // of 32 (step amax/127, about 0.5% of a dot product per matmul, ~10 matmuls in a row), so
    // the relative RMS error is bounded instead: 3e-2, measured at 0.8e-2 to 1.5e-2.
    tiny llama = {"llama", 2, 0, SGLLM__T_F32, 300, false, false, false};
    tiny qwen3 = {"qwen3", 2, 0, SGLLM__T_F32, 300, false, false, false};
    tiny gemma = {"gemma3", 7, 5, SGLLM__T_F32, 300, false, false, false}; // layer 5 full, the rest window 5
    test_family(&llama, 3e-3);
    test_family(&qwen3, 3e-3);
    test_family(&gemma, 3e-3);
    llama.wtype = qwen3.wtype = gemma.wtype = SGLLM__T_Q8_0;
    test_family(&llama, 3e-2);
    test_family(&qwen3, 3e-2);
    test_family(&gemma, 3e-2);
    test_load_errors();
    test_progress_cancel();
    for (int i = 0; i < n_defs; i++) free(defs[i].values);
    return test_finish("test_model");
}
