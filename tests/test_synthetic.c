// tests/test_synthetic.c - synthetic benchmark models (sgllm_model_load_synthetic) without a
// GPU: argument errors, the CUDA-unavailable error (CI has no GPU; a CPU-only build has no
// CUDA backend), and the preset table described as layer descriptors, checked against the
// published parameter counts of the models the presets copy. The GPU side (weights made on
// the device, finite logits, batched against token-by-token) is in tests/test_gpu_model.c.
#include "../sgllm_impl.c"
#include "test.h"

static sgllm_status load(const char *preset, const char *type, sgllm_backend backend, char *err, size_t err_size) {
    sgllm_model_params mp;
    sgllm_model_default_params(&mp);
    mp.backend = backend;
    sgllm_model *m = (sgllm_model *)&mp; // must be reset to NULL on failure
    sgllm_status s = sgllm_model_load_synthetic(preset, type, 1, &mp, &m, err, err_size);
    CHECK(s == SGLLM_OK || m == NULL);
    sgllm_model_free(s == SGLLM_OK ? m : NULL);
    return s;
}

static void argument_errors(void) {
    char err[512];
    sgllm_status s = load("llama3-70b", "bf16", SGLLM_BACKEND_AUTO, err, sizeof err);
    CHECKF(s == SGLLM_ERR_INVALID_ARGUMENT, "unknown preset: %d", (int)s);
    for (size_t i = 0; i < sizeof sgllm__presets / sizeof sgllm__presets[0]; i++)
        CHECKF(strstr(err, sgllm__presets[i].name) != NULL, "message names %s: %s", sgllm__presets[i].name, err);
    CHECKF(strstr(err, "llama3-70b") != NULL, "message names the bad preset: %s", err);
    s = load("llama3-8b", "q5_k", SGLLM_BACKEND_AUTO, err, sizeof err);
    CHECKF(s == SGLLM_ERR_INVALID_ARGUMENT, "unknown type: %d", (int)s);
    CHECKF(strstr(err, "bf16") && strstr(err, "q8_0") && strstr(err, "q4_k") && strstr(err, "q5_k"), "%s", err);
    CHECK(load(NULL, "bf16", SGLLM_BACKEND_AUTO, err, sizeof err) == SGLLM_ERR_INVALID_ARGUMENT);
    CHECK(load("llama3-8b", NULL, SGLLM_BACKEND_AUTO, err, sizeof err) == SGLLM_ERR_INVALID_ARGUMENT);
    sgllm_model *m = NULL;
    CHECK(sgllm_model_load_synthetic("llama3-8b", "bf16", 1, NULL, &m, err, sizeof err) == SGLLM_ERR_INVALID_ARGUMENT);
    sgllm_model_params mp;
    sgllm_model_default_params(&mp);
    CHECK(sgllm_model_load_synthetic("llama3-8b", "bf16", 1, &mp, NULL, err, sizeof err) == SGLLM_ERR_INVALID_ARGUMENT);
    // the weights exist only on the device: the CPU backend is refused, whatever the build
    s = load("smollm2-135m", "q8_0", SGLLM_BACKEND_CPU, err, sizeof err);
    CHECKF(s == SGLLM_ERR_BACKEND, "cpu backend: %d %s", (int)s, err);
#ifndef SGLLM_CUDA
    // valid arguments in a build without CUDA (CI)
    static const char *types[] = {"bf16", "q8_0", "q4_k"};
    for (size_t i = 0; i < sizeof sgllm__presets / sizeof sgllm__presets[0]; i++)
        for (size_t t = 0; t < 3; t++) {
            s = load(sgllm__presets[i].name, types[t], t ? SGLLM_BACKEND_AUTO : SGLLM_BACKEND_CUDA, err, sizeof err);
            CHECKF(s == SGLLM_ERR_BACKEND && strstr(err, "CUDA"), "%s %s: %d %s", sgllm__presets[i].name, types[t],
                   (int)s, err);
        }
    double bw = 1, rate = 1;
    CHECK(sgllm__device_ceilings(5, &bw, &rate, NULL, 0, err, sizeof err) == SGLLM_ERR_BACKEND);
#endif
    // a truncated message buffer still gets a NUL
    char tiny[8];
    CHECK(load("nope", "bf16", SGLLM_BACKEND_AUTO, tiny, sizeof tiny) == SGLLM_ERR_INVALID_ARGUMENT);
    CHECK(strlen(tiny) == sizeof tiny - 1);
}

// Describes a preset on the host (no weights are made) and checks it.
static void preset_case(const char *name, const char *type, double published_weights) {
    const sgllm__preset *p = sgllm__preset_find(name);
    CHECKF(p != NULL, "%s", name);
    if (!p) return;
    sgllm_model *m = (sgllm_model *)sgllm__calloc(1, sizeof *m);
    CHECK(m != NULL);
    if (!m) return;
    bool k_mix = true;
    uint32_t wt = sgllm__synth_type(type, &k_mix);
    CHECK(wt != SGLLM__T_COUNT && k_mix == !strcmp(type, "q4_k_m"));
    CHECK(sgllm__model_describe_preset(m, p, wt, k_mix, 7) == SGLLM_OK);
    sgllm__cost c;
    CHECK(sgllm__model_cost(m, 0, 0, &c) == SGLLM_OK);
    CHECKF(c.n_weights == published_weights, "%s: %.0f weights, published %.0f", name, c.n_weights, published_weights);
    CHECK(m->n_layer == p->n_layer && m->n_embd == p->n_embd && m->n_vocab == p->n_vocab);
    CHECK(sgllm_model_n_vocab(m) == p->n_vocab && sgllm_model_n_layer(m) == p->n_layer);
    CHECK(!strcmp(sgllm_model_architecture(m), p->arch));
    CHECK(m->output_tied == p->tied && m->tok_embd.data == NULL);
    int n_full = 0;
    double bytes = 0;
    for (int32_t il = 0; il < m->n_layer; il++) {
        const sgllm__layer *L = &m->layers[il];
        CHECK(L->n_head == p->n_head && L->n_head_kv == p->n_head_kv && L->head_dim == p->head_dim);
        CHECK(L->wq.rows == (int64_t)p->n_head * p->head_dim && L->wk.rows == (int64_t)p->n_head_kv * p->head_dim);
        CHECK(L->w_down.cols == p->n_ff && L->w_gate.rows == p->n_ff && L->wo.rows == p->n_embd);
        CHECK((L->q_norm != NULL) == m->family->qk_norm && (L->post_ffn_norm != NULL) == m->family->sandwich_norms);
        n_full += L->window == 0;
        CHECK(L->window == 0 || L->window == p->window);
        const sgllm__mat *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (int i = 0; i < 7; i++) {
            // the requested type (Q4_K_M: Q6_K for v and down of even layers), or where a row is
            // not whole 256-value blocks the quantizer's fallback: Q5_0 for Q4_K, Q8_0 for Q6_K
            uint32_t want = k_mix && il % 2 == 0 && (i == 2 || i == 6) ? SGLLM__T_Q6_K : wt;
            if (mats[i]->cols % sgllm__types[want].block) want = want == SGLLM__T_Q4_K ? SGLLM__T_Q5_0 : SGLLM__T_Q8_0;
            CHECKF(mats[i]->type == want, "%s layer %d matrix %d type %u, expected %u", name, (int)il, i, mats[i]->type,
                   want);
            CHECK(mats[i]->row_bytes == (size_t)sgllm__row_bytes(mats[i]->type, (uint64_t)mats[i]->cols));
            bytes += (double)mats[i]->row_bytes * (double)mats[i]->rows;
        }
        if (L->q_norm) CHECK(L->q_norm[0] >= 0.9f && L->q_norm[0] <= 1.1f);
        bytes += 4.0 * (2.0 * p->n_embd + (L->post_attn_norm ? 2.0 * p->n_embd : 0) + (L->q_norm ? 2.0 * p->head_dim : 0));
    }
    // gemma3: 5 sliding layers for each full one; llama and qwen3: all full
    int expect_full = m->family->swa_period ? m->n_layer / m->family->swa_period : m->n_layer;
    CHECKF(n_full == expect_full, "%s: %d full-attention layers, expected %d", name, n_full, expect_full);
    bytes += (double)m->output.row_bytes * (double)m->output.rows + 4.0 * p->n_embd;
    uint32_t want_out = k_mix ? (p->n_embd % 256 ? SGLLM__T_Q8_0 : SGLLM__T_Q6_K)
                              : (p->n_embd % sgllm__types[wt].block ? (wt == SGLLM__T_Q4_K ? SGLLM__T_Q5_0 : SGLLM__T_Q8_0) : wt);
    CHECKF(m->output.type == want_out && m->tok_embd.type == (p->tied || !k_mix ? want_out : wt), "%s %s: output type %u",
           name, type, m->output.type);
    CHECKF(c.weight_bytes == bytes, "%s: %.0f bytes per token, expected %.0f", name, c.weight_bytes, bytes);
    // KV bytes read at position 4095: k and v fp16 rows over each layer's visible keys
    CHECK(sgllm__model_cost(m, 4095, 2048, &c) == SGLLM_OK);
    double kv = 0, attn = 0;
    for (int32_t il = 0; il < m->n_layer; il++) {
        const sgllm__layer *L = &m->layers[il];
        double keys = L->window ? L->window : 4096, n = 2048, w = L->window ? L->window : n;
        kv += 4.0 * L->n_head_kv * L->head_dim * keys;
        double pairs = w >= n ? n * (n + 1) / 2 : w * (w + 1) / 2 + (n - w) * w;
        attn += 4.0 * L->n_head * L->head_dim * pairs;
    }
    CHECKF(c.kv_bytes == kv, "%s: kv %.0f vs %.0f", name, c.kv_bytes, kv);
    CHECKF(fabs(c.attn_flops - attn) <= 1e-9 * attn, "%s: attention %.0f vs %.0f", name, c.attn_flops, attn);
    // no tokenizer: tokenize refuses, pieces are empty, evaluate needs a context (GPU only)
    int32_t n_tok = -1;
    sgllm_token tk[4];
    CHECK(sgllm_tokenize(m, "hi", 2, 0, tk, 4, &n_tok) == SGLLM_ERR_UNSUPPORTED && n_tok == 0);
    size_t len = 9;
    CHECK(sgllm_token_piece(m, 5, &len) != NULL && len == 0);
    CHECK(sgllm_token_piece(m, p->n_vocab, &len) == NULL);
    CHECK(!sgllm_token_is_eog(m, 0) && sgllm_token_bos(m) == -1);
    sgllm_model_free(m);
}

int main(void) {
    argument_errors();
    // Published weight counts (embedding, output head when untied, layers, norms; text only).
    preset_case("llama3-8b", "bf16", 8030261248.0);
    preset_case("llama3-8b", "q4_k", 8030261248.0);
    preset_case("qwen3-8b", "q8_0", 8190735360.0);
    preset_case("smollm2-135m", "q4_k", 134515008.0);
    preset_case("gemma3-270m", "q4_k", 268098176.0);
    preset_case("gemma3-270m", "q4_k_m", 268098176.0);
    preset_case("smollm2-135m", "q4_1", 134515008.0);
    preset_case("llama3-8b", "q4_k_m", 8030261248.0);
    // gemma3-27b: 62 layers of 412.9 M matrix weights + 8 norms, the 262144 x 5376 embedding
    preset_case("gemma3-27b", "q8_0", 62.0 * (5376.0 * (4096 + 2048 + 2048 + 4096 + 3 * 21504) + 4 * 5376 + 2 * 128) +
                                          262144.0 * 5376 + 5376);
    return test_finish("test_synthetic");
}
