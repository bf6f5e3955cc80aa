// libFuzzer target for the tokenizers. Loads the Gemma 3 (SPM) and SmolLM2 (BPE) vocabularies
// once (from $SGLLM_MODELS, default ~/.cache/sgllm) and tokenizes each input with flags taken
// from its first byte, checking: every token is in range, the count does not depend on the
// output capacity, and without special parsing the pieces give back any valid UTF-8 input
// (SPM: unless the input holds a literal U+2581, which SPM reads as a space; BPE: unless it
// holds a byte whose byte-level character has no token, which llama.cpp drops as well).
//   clang -I. -I/usr/include/stb -O1 -g -fsanitize=fuzzer,address,undefined \
//         tests/fuzz/fuzz_tokenizer.c -lm -lpthread -o /tmp/fuzz_tok
//   /tmp/fuzz_tok tests/fuzz/corpus_tokenizer -max_total_time=600
#include "../../sgllm_impl.c"

#include <stdio.h>
#include <stdlib.h>

static sgllm__gguf fz_g[2];
static sgllm__vocab fz_v[2];
static bool fz_ready;

static void fz_load(int i, const char *file) {
    char path[1024];
    const char *dir = getenv("SGLLM_MODELS");
    if (dir) snprintf(path, sizeof path, "%s/%s", dir, file);
    else snprintf(path, sizeof path, "%s/.cache/sgllm/%s", getenv("HOME") ? getenv("HOME") : ".", file);
    sgllm__diag d;
    memset(&d, 0, sizeof d);
    if (sgllm__gguf_open(&fz_g[i], path, &d) != SGLLM_OK || sgllm__vocab_load(&fz_v[i], &fz_g[i], &d) != SGLLM_OK) {
        fprintf(stderr, "fuzz_tokenizer: cannot load %s: %s\n", path, d.msg);
        abort();
    }
}

// Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), through the chat
// section's decoder.
static bool fz_utf8_valid(const uint8_t *s, size_t n) {
    uint32_t cp;
    for (size_t i = 0, k; i < n; i += k)
        if (!(k = sgllm__chat_utf8_decode(s + i, n - i, &cp))) return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!fz_ready) {
        fz_load(0, "gemma-3-270m-q4_k_m.gguf");
        fz_load(1, "SmolLM2-135M-Instruct.Q4_1.gguf");
        fz_ready = true;
    }
    if (size == 0) return 0;
    uint8_t flags = data[0];
    const uint8_t *text = data + 1;
    size_t n = size - 1;
    const sgllm__vocab *v = &fz_v[flags & 1];
    bool add_bos = flags & 2, special = flags & 4;
    // SPM escapes a space to 3 bytes and may fall back to one byte token each, so 3 per input
    // byte, plus BOS/EOS
    int64_t cap = 3 * (int64_t)n + 8;
    int32_t *out = (int32_t *)malloc((size_t)cap * sizeof(int32_t));
    int64_t got = sgllm__tokenize(v, (const char *)text, n, add_bos, special, out, cap);
    if (got < 0 || got > cap) abort();
    for (int64_t i = 0; i < got; i++)
        if (out[i] < 0 || out[i] >= v->n_tokens) abort();
    if (flags & 8) { // a short buffer still reports the full count and keeps the prefix
        int64_t small = got / 2;
        int32_t *part = (int32_t *)malloc((size_t)(small + 1) * sizeof(int32_t));
        part[small] = -7;
        if (sgllm__tokenize(v, (const char *)text, n, add_bos, special, part, small) != got) abort();
        if (part[small] != -7 || memcmp(part, out, (size_t)small * sizeof(int32_t))) abort();
        free(part);
    }
    bool literal_marker = false, dropped_byte = false;
    for (size_t i = 0; i + 2 < n; i++)
        if (text[i] == 0xe2 && text[i + 1] == 0x96 && text[i + 2] == 0x81) literal_marker = true;
    for (size_t i = 0; i < n && v->kind == SGLLM__VOCAB_BPE; i++) { // BPE drops bytes it has no token for
        uint8_t u[4];
        size_t l = sgllm__utf8_encode(v->byte_cp[text[i]], u);
        if (sgllm__vocab_find(v, u, l) < 0) dropped_byte = true;
    }
    if (!special && fz_utf8_valid(text, n) && !(v->kind == SGLLM__VOCAB_SPM && literal_marker) && !dropped_byte) {
        char *back = (char *)malloc(n + 1);
        size_t bl = 0;
        bool ok = true;
        for (int64_t i = 0; i < got && ok; i++) {
            if (add_bos && ((i == 0 && out[i] == v->bos) || (i == got - 1 && v->add_eos && out[i] == v->eos))) continue;
            size_t pl;
            const char *p = sgllm__vocab_piece(v, out[i], &pl);
            if (!p || bl + pl > n) ok = false;
            else memcpy(back + bl, p, pl), bl += pl;
        }
        if (!ok || bl != n || memcmp(back, text, n)) abort();
        free(back);
    }
    free(out);
    return 0;
}
