/* sgllm-perplexity - measures a model's perplexity on a text file.

   Shows the low-level call, sgllm_evaluate, asking for the logits of every position.
   Definition: the text is tokenized (without BOS) and cut into chunks of -c tokens, each
   starting with BOS when the model uses one (default: one chunk of up to 2048 tokens).
   Every chunk is evaluated from an empty context; at each position i >= 1 the negative
   log-likelihood of token i given tokens 0..i-1 is -log softmax(logits[i-1])[token i].
   perplexity = exp(mean NLL over all scored tokens), accumulated in double. A last chunk
   shorter than -c is scored too. Run:

     make && build/sgllm-perplexity -m ~/.cache/sgllm/SmolLM2-135M-Instruct.Q4_1.gguf -f README.md

   Flags: -m FILE, -f TEXT_FILE, -c chunk length in tokens, -b batch (positions per
   evaluate call, default 256; the logits of a batch take batch x vocabulary floats),
   -t threads. */
#include "sgllm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *read_file(const char *path, size_t *len) { // contents, or NULL
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    long n;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = malloc((size_t)n + 1)) != NULL)
        buf[*len = fread(buf, 1, (size_t)n, f)] = 0;
    fclose(f);
    return buf;
}

// -log softmax(row)[target], with the maximum subtracted for range.
static double nll(const float *row, int32_t n_vocab, sgllm_token target) {
    float max = row[0];
    for (int32_t i = 1; i < n_vocab; i++) max = row[i] > max ? row[i] : max;
    double sum = 0;
    for (int32_t i = 0; i < n_vocab; i++) sum += exp((double)row[i] - max);
    return log(sum) - ((double)row[target] - max);
}

int main(int argc, char **argv) {
    sgllm_model_params mp;
    sgllm_context_params cp;
    sgllm_model_default_params(&mp);
    sgllm_context_default_params(&cp);
    const char *text_path = NULL;
    int32_t chunk = 0, batch = 256;
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "error: %s needs a value\n", a);
            return 1;
        }
        if (!strcmp(a, "-m")) mp.path = v;
        else if (!strcmp(a, "-f")) text_path = v;
        else if (!strcmp(a, "-c")) chunk = atoi(v);
        else if (!strcmp(a, "-b")) batch = atoi(v);
        else if (!strcmp(a, "-t")) mp.n_threads = cp.n_threads = atoi(v);
        else {
            fprintf(stderr, "error: unknown flag: %s\n", a);
            return 1;
        }
    }
    if (!mp.path || !text_path || chunk < 0 || chunk == 1 || batch < 1) {
        fprintf(stderr, "usage: sgllm-perplexity -m MODEL.gguf -f TEXT [-c CHUNK >= 2] [-b BATCH] [-t THREADS]\n");
        return 1;
    }
    size_t text_len = 0;
    char *text = read_file(text_path, &text_len);
    if (!text) {
        fprintf(stderr, "error: cannot read '%s'\n", text_path);
        return 1;
    }
    char err[512];
    sgllm_model *model = NULL;
    sgllm_context *ctx = NULL;
    sgllm_token *tokens = NULL, *seq = NULL;
    float *logits = NULL;
    uint8_t *want = NULL;
    int rc = 1;
    if (sgllm_model_load(&mp, &model, err, sizeof err) != SGLLM_OK) {
        fprintf(stderr, "error: cannot load model: %s\n", err);
        goto done;
    }
    // Tokenize the text alone (count first), and learn whether the model wants a BOS by
    // tokenizing the empty string with ADD_BOS.
    int32_t n_text = 0, has_bos = 0;
    sgllm_token bos;
    sgllm_tokenize(model, text, text_len, 0, NULL, 0, &n_text);
    tokens = malloc(sizeof *tokens * (size_t)(n_text > 0 ? n_text : 1));
    if (!tokens || sgllm_tokenize(model, text, text_len, 0, tokens, n_text, &n_text) != SGLLM_OK ||
        sgllm_tokenize(model, "", 0, SGLLM_TOKENIZE_ADD_BOS, &bos, 1, &has_bos) != SGLLM_OK) {
        fprintf(stderr, "error: cannot tokenize '%s'\n", text_path);
        goto done;
    }
    const int32_t per_chunk = (chunk ? chunk : 2048) - has_bos; // text tokens per chunk
    const int32_t n_scored_text = chunk ? n_text : (n_text < per_chunk ? n_text : per_chunk);
    cp.n_ctx = per_chunk + has_bos;
    cp.n_batch = batch;
    sgllm_status st = sgllm_context_create(model, &cp, &ctx);
    if (st != SGLLM_OK) {
        fprintf(stderr, "error: cannot create a context: %s\n", sgllm_status_string(st));
        goto done;
    }
    const int32_t n_vocab = sgllm_model_n_vocab(model);
    seq = malloc(sizeof *seq * (size_t)cp.n_ctx);
    want = malloc((size_t)batch);
    logits = malloc(sizeof *logits * (size_t)batch * (size_t)n_vocab); // (batch, n_vocab)
    if (!seq || !want || !logits) {
        fprintf(stderr, "error: out of memory\n");
        goto done;
    }
    memset(want, 1, (size_t)batch);
    double sum = 0;
    int64_t count = 0;
    for (int32_t start = 0; start < n_scored_text; start += per_chunk) {
        int32_t n = 0; // the chunk: BOS, then text tokens
        if (has_bos) seq[n++] = bos;
        for (int32_t i = start; i < n_scored_text && i < start + per_chunk; i++) seq[n++] = tokens[i];
        if (n < 2) break; // nothing to predict
        sgllm_context_rewind(ctx, 0);
        for (int32_t b = 0; b < n; b += batch) {
            int32_t m = n - b < batch ? n - b : batch;
            if ((st = sgllm_evaluate(ctx, seq + b, m, want, logits)) != SGLLM_OK) {
                fprintf(stderr, "\nerror: %s\n", sgllm_context_errmsg(ctx));
                goto done;
            }
            for (int32_t i = 0; i < m && b + i + 1 < n; i++) { // row i predicts token b + i + 1
                sum += nll(logits + (size_t)i * (size_t)n_vocab, n_vocab, seq[b + i + 1]);
                count++;
            }
            int32_t done_text = start + b + m - has_bos; // text tokens evaluated so far
            if (count) fprintf(stderr, "\r[%3d%%] perplexity %.4f", (int)(100.0 * done_text / n_scored_text), exp(sum / count));
        }
    }
    if (count == 0) {
        fprintf(stderr, "error: the text has too few tokens to score\n");
        goto done;
    }
    fprintf(stderr, "\n%lld tokens scored\n", (long long)count);
    printf("perplexity: %.4f\n", exp(sum / count));
    rc = 0;
done:
    free(tokens);
    free(seq);
    free(want);
    free(logits);
    free(text);
    sgllm_context_free(ctx);
    sgllm_model_free(model);
    return rc;
}
