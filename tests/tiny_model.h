// tests/tiny_model.h - writes tiny synthetic GGUF models (llama, qwen3, gemma3 shapes with
// random weights and a small SentencePiece-style vocabulary) for tests and fuzz seeds. The
// tensor values the engine will see (after quantization) stay in defs[] so a reference
// forward can use them. Include after sgllm_impl.c, gguf_writer.h and test.h.
#ifndef SGLLM_TINY_MODEL_H
#define SGLLM_TINY_MODEL_H
enum { T_EMBD = 64, T_HEADS = 4, T_KV = 2, T_HD = 16, T_FF = 96, T_BYTES = 256 };

typedef struct tiny {
    const char *arch;
    int n_layer, window, wtype; // wtype: weight type of the matrices (F32 or Q8_0)
    int n_vocab;
    bool skip_tensor;           // leave blk.1.ffn_up.weight out
    bool bad_shape;             // give blk.0.attn_k.weight the wrong output width
    bool quiet_eos;             // the output row of </s> (id 2) all zeros: its logit is 0, below the
                                // largest of the other random logits, so greedy decoding never stops on it
} tiny;

typedef struct tensor_def {
    char name[64];
    int n_dims;
    uint64_t ne[2];
    uint32_t type;
    float *values; // (ne[1], ne[0])
} tensor_def;

static float *rand_vec(size_t n, float scale, float offset) {
    float *v = (float *)malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) v[i] = offset + test_uniform(-scale, scale);
    return v;
}

// Q8_0-quantizes a row of floats (32 per block: fp16 scale, 32 int8).
static void q8_0_row(const float *x, int64_t n, uint8_t *out) {
    for (int64_t b = 0; b < n / 32; b++) {
        float amax = 0;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[b * 32 + i]));
        float d = amax / 127.0f;
        uint16_t h = sgllm__f32_to_fp16(d);
        memcpy(out + b * 34, &h, 2);
        float id = d ? 1.0f / d : 0;
        for (int i = 0; i < 32; i++) out[b * 34 + 2 + i] = (uint8_t)(int8_t)lrintf(x[b * 32 + i] * id);
    }
}

static int n_defs;
static tensor_def defs[256];

static void add_tensor(const char *name, int n_dims, uint64_t ne0, uint64_t ne1, uint32_t type, float scale,
                       float offset) {
    tensor_def *t = &defs[n_defs++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n_dims = n_dims;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->type = type;
    t->values = rand_vec(ne0 * ne1, scale, offset);
    if (type == SGLLM__T_Q8_0) { // keep the values the engine will see (after quantization)
        uint8_t *row = (uint8_t *)malloc(ne0 / 32 * 34);
        for (uint64_t r = 0; r < ne1; r++) {
            q8_0_row(t->values + r * ne0, (int64_t)ne0, row);
            sgllm__dequant_row_ref(SGLLM__T_Q8_0, row, t->values + r * ne0, (int64_t)ne0);
        }
        free(row);
    }
}

static const tensor_def *find_def(const char *name) {
    for (int i = 0; i < n_defs; i++)
        if (!strcmp(defs[i].name, name)) return &defs[i];
    return NULL;
}

// Writes the tiny model to path; the tensor values stay in defs[] for the reference forward.
static void build_tiny(const tiny *cfg, const char *path) {
    for (int i = 0; i < n_defs; i++) free(defs[i].values);
    n_defs = 0;
    bool gemma = !strcmp(cfg->arch, "gemma3"), qwen3 = !strcmp(cfg->arch, "qwen3");
    float norm_off = 1.0f; // norms near 1 keep activations in a sane range
    add_tensor("token_embd.weight", 2, T_EMBD, (uint64_t)cfg->n_vocab, (uint32_t)cfg->wtype, 1.0f, 0);
    add_tensor("output_norm.weight", 1, T_EMBD, 1, SGLLM__T_F32, 0.1f, norm_off);
    if (!gemma) add_tensor("output.weight", 2, T_EMBD, (uint64_t)cfg->n_vocab, (uint32_t)cfg->wtype, 0.2f, 0);
    for (int il = 0; il < cfg->n_layer; il++) {
        char nm[64];
#define ADD(suffix, dims, a, b, type, scale, off)                                                                       \
    (snprintf(nm, sizeof nm, "blk.%d." suffix, il), add_tensor(nm, dims, a, b, type, scale, off))
        ADD("attn_norm.weight", 1, T_EMBD, 1, SGLLM__T_F32, 0.1f, norm_off);
        ADD("attn_q.weight", 2, T_EMBD, T_HEADS * T_HD, cfg->wtype, 0.2f, 0);
        ADD("attn_k.weight", 2, T_EMBD, (cfg->bad_shape && il == 0 ? T_KV * T_HD + 32 : T_KV * T_HD), cfg->wtype,
            0.2f, 0);
        ADD("attn_v.weight", 2, T_EMBD, T_KV * T_HD, cfg->wtype, 0.2f, 0);
        ADD("attn_output.weight", 2, T_HEADS * T_HD, T_EMBD, cfg->wtype, 0.2f, 0);
        ADD("ffn_norm.weight", 1, T_EMBD, 1, SGLLM__T_F32, 0.1f, norm_off);
        ADD("ffn_gate.weight", 2, T_EMBD, T_FF, cfg->wtype, 0.2f, 0);
        if (!(cfg->skip_tensor && il == 1)) ADD("ffn_up.weight", 2, T_EMBD, T_FF, cfg->wtype, 0.2f, 0);
        ADD("ffn_down.weight", 2, T_FF, T_EMBD, cfg->wtype, 0.2f, 0);
        if (gemma || qwen3) {
            ADD("attn_q_norm.weight", 1, T_HD, 1, SGLLM__T_F32, 0.1f, norm_off);
            ADD("attn_k_norm.weight", 1, T_HD, 1, SGLLM__T_F32, 0.1f, norm_off);
        }
        if (gemma) {
            ADD("post_attention_norm.weight", 1, T_EMBD, 1, SGLLM__T_F32, 0.1f, norm_off);
            ADD("post_ffw_norm.weight", 1, T_EMBD, 1, SGLLM__T_F32, 0.1f, norm_off);
        }
#undef ADD
    }
    if (cfg->quiet_eos) {
        tensor_def *out = (tensor_def *)find_def(gemma ? "token_embd.weight" : "output.weight");
        memset(out->values + 2 * T_EMBD, 0, T_EMBD * sizeof(float));
    }
    // SentencePiece-style vocabulary: <unk> <s> </s>, 256 byte tokens, then word pieces
    const char **toks = (const char **)calloc((size_t)cfg->n_vocab, sizeof(char *));
    char (*store)[16] = (char(*)[16])calloc((size_t)cfg->n_vocab, 16);
    float *scores = (float *)calloc((size_t)cfg->n_vocab, sizeof(float));
    int32_t *types = (int32_t *)calloc((size_t)cfg->n_vocab, sizeof(int32_t));
    for (int i = 0; i < cfg->n_vocab; i++) {
        if (i < 3) snprintf(store[i], 16, "%s", i == 0 ? "<unk>" : i == 1 ? "<s>" : "</s>");
        else if (i < 3 + T_BYTES) snprintf(store[i], 16, "<0x%02X>", i - 3);
        else snprintf(store[i], 16, "\xe2\x96\x81w%d", i);
        toks[i] = store[i];
        types[i] = i == 0 ? 2 : i < 3 ? 3 : i < 3 + T_BYTES ? 6 : 1;
        scores[i] = i < 3 + T_BYTES ? 0.0f : -(float)i;
    }
    gw_buf b = {0};
    int n_kv = 14 + (cfg->window ? 1 : 0);
    gw_header(&b, 3, (uint64_t)n_defs, (uint64_t)n_kv);
    char key[96];
#define KEY(k) (snprintf(key, sizeof key, "%s." k, cfg->arch), key)
    gw_kv_str(&b, "general.architecture", cfg->arch);
    gw_kv_u32(&b, KEY("context_length"), 4096);
    gw_kv_u32(&b, KEY("embedding_length"), T_EMBD);
    gw_kv_u32(&b, KEY("block_count"), (uint32_t)cfg->n_layer);
    gw_kv_u32(&b, KEY("feed_forward_length"), T_FF);
    gw_kv_u32(&b, KEY("attention.head_count"), T_HEADS);
    gw_kv_u32(&b, KEY("attention.head_count_kv"), T_KV);
    gw_kv_f32(&b, KEY("attention.layer_norm_rms_epsilon"), 1e-6f);
    gw_kv_f32(&b, KEY("rope.freq_base"), gemma ? 1e6f : 10000.0f); // gemma3: sliding layers use 1e4
    if (cfg->window) gw_kv_u32(&b, KEY("attention.sliding_window"), (uint32_t)cfg->window);
#undef KEY
    gw_kv_str(&b, "tokenizer.ggml.model", "llama");
    gw_kv_strs(&b, "tokenizer.ggml.tokens", toks, (uint64_t)cfg->n_vocab);
    gw_kv_f32s(&b, "tokenizer.ggml.scores", scores, (uint64_t)cfg->n_vocab);
    gw_kv_i32s(&b, "tokenizer.ggml.token_type", types, (uint64_t)cfg->n_vocab);
    gw_kv_u32(&b, "tokenizer.ggml.bos_token_id", 1);
    uint64_t off = 0;
    size_t *sizes = (size_t *)calloc((size_t)n_defs, sizeof(size_t));
    for (int i = 0; i < n_defs; i++) {
        tensor_def *t = &defs[i];
        sizes[i] = (size_t)sgllm__row_bytes(t->type, t->ne[0]) * (size_t)t->ne[1];
        gw_tensor_info(&b, t->name, (uint32_t)t->n_dims, t->ne, t->type, off);
        off += (sizes[i] + 31) / 32 * 32;
    }
    gw_pad(&b, 32);
    for (int i = 0; i < n_defs; i++) {
        tensor_def *t = &defs[i];
        if (t->type == SGLLM__T_F32) {
            gw_bytes(&b, t->values, sizes[i]);
        } else {
            uint8_t *row = (uint8_t *)malloc(t->ne[0] / 32 * 34);
            for (uint64_t r = 0; r < t->ne[1]; r++) {
                q8_0_row(t->values + r * t->ne[0], (int64_t)t->ne[0], row);
                gw_bytes(&b, row, t->ne[0] / 32 * 34);
            }
            free(row);
        }
        gw_pad(&b, 32);
    }
    CHECK(gw_write_file(&b, path) == 0);
    free(b.p);
    free(sizes);
    free(toks);
    free(store);
    free(scores);
    free(types);
}

#endif
