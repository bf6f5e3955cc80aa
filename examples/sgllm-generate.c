/* sgllm-generate - streams a completion of a prompt from a GGUF model.

   Shows the whole public flow: load a model, create a context, set sampler parameters,
   optionally format the prompt with the model's chat template, stream pieces as they come,
   and read the timing stats. Run:

     make && build/sgllm-generate -m ~/.cache/sgllm/gemma-3-270m-q4_k_m.gguf \
         -p "Write a short poem about the sea." -n 96 --chat

   Flags follow llama.cpp's; see usage() below. */
#include "sgllm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f, "usage: sgllm-generate -m MODEL.gguf (-p PROMPT | -f FILE) [options]\n"
               "  -m FILE              GGUF model\n"
               "  -p TEXT              prompt\n"
               "  -f FILE              read the prompt from a file\n"
               "  -n N                 tokens to generate (default 256)\n"
               "  --temp T             temperature, 0 = greedy (default 0.8)\n"
               "  --top-k K            keep the K likeliest tokens, 0 = off (default 40)\n"
               "  --top-p P            nucleus sampling, 1 = off (default 0.95)\n"
               "  --min-p P            drop tokens below P x the top probability (default 0.05)\n"
               "  --repeat-penalty R   penalize the last 64 tokens, 1 = off (default 1.0)\n"
               "  --seed S             sampler seed\n"
               "  -t N                 threads (default: all cores)\n"
               "  -c N                 context length (default: min(training length, 4096))\n"
               "  --chat               send the prompt as one user message in the chat template\n"
               "  -h, --help           this text\n");
}

// Parse a flag's whole value as a number; on a bad value, say why and return 0.
static int arg_int(const char *flag, const char *s, int32_t *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < INT32_MIN || v > INT32_MAX)
        return fprintf(stderr, "error: %s wants an integer, got '%s'\n", flag, s), 0;
    *out = (int32_t)v;
    return 1;
}
static int arg_u64(const char *flag, const char *s, uint64_t *out) {
    char *end;
    *out = strtoull(s, &end, 0);
    if (end == s || *end) return fprintf(stderr, "error: %s wants an unsigned integer, got '%s'\n", flag, s), 0;
    return 1;
}
static int arg_float(const char *flag, const char *s, float *out) {
    char *end;
    *out = strtof(s, &end);
    if (end == s || *end) return fprintf(stderr, "error: %s wants a number, got '%s'\n", flag, s), 0;
    return 1;
}

static char *read_file(const char *path) { // NUL-terminated contents, or NULL
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    long n;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = malloc((size_t)n + 1)) != NULL)
        buf[fread(buf, 1, (size_t)n, f)] = 0;
    fclose(f);
    return buf;
}

static int print_piece(void *user, const char *piece, size_t len) {
    (void)user;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    sgllm_model_params mp;
    sgllm_context_params cp;
    sgllm_generate_params gp;
    sgllm_model_default_params(&mp);
    sgllm_context_default_params(&cp);
    sgllm_generate_default_params(&gp);
    const char *prompt = NULL, *prompt_file = NULL;
    int chat = 0;
    int32_t threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--chat")) {
            chat = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "error: unknown flag or missing value: %s\n", a);
            usage(stderr);
            return 1;
        }
        const char *v = argv[++i];
        int ok = 1;
        if (!strcmp(a, "-m")) mp.path = v;
        else if (!strcmp(a, "-p")) prompt = v;
        else if (!strcmp(a, "-f")) prompt_file = v;
        else if (!strcmp(a, "-n")) ok = arg_int(a, v, &gp.max_tokens);
        else if (!strcmp(a, "--temp")) ok = arg_float(a, v, &gp.sampler.temperature);
        else if (!strcmp(a, "--top-k")) ok = arg_int(a, v, &gp.sampler.top_k);
        else if (!strcmp(a, "--top-p")) ok = arg_float(a, v, &gp.sampler.top_p);
        else if (!strcmp(a, "--min-p")) ok = arg_float(a, v, &gp.sampler.min_p);
        else if (!strcmp(a, "--repeat-penalty")) ok = arg_float(a, v, &gp.sampler.repeat_penalty);
        else if (!strcmp(a, "--seed")) ok = arg_u64(a, v, &gp.sampler.seed);
        else if (!strcmp(a, "-t")) ok = arg_int(a, v, &threads);
        else if (!strcmp(a, "-c")) ok = arg_int(a, v, &cp.n_ctx);
        else {
            fprintf(stderr, "error: unknown flag: %s\n", a);
            usage(stderr);
            return 1;
        }
        if (!ok) return 1;
    }
    if (!mp.path || (!prompt && !prompt_file)) {
        fprintf(stderr, "error: -m and one of -p or -f are required\n");
        usage(stderr);
        return 1;
    }
    mp.n_threads = cp.n_threads = threads;
    char *file_text = NULL;
    if (prompt_file) {
        if (!(file_text = read_file(prompt_file))) {
            fprintf(stderr, "error: cannot read prompt file '%s'\n", prompt_file);
            return 1;
        }
        prompt = file_text;
    }

    int rc = 1;
    sgllm_model *model = NULL;
    sgllm_context *ctx = NULL;
    char *chat_prompt = NULL, err[512];
    sgllm_status st = sgllm_model_load(&mp, &model, err, sizeof err);
    if (st != SGLLM_OK) {
        fprintf(stderr, "error: cannot load model: %s\n", err);
        goto done;
    }
    if ((st = sgllm_context_create(model, &cp, &ctx)) != SGLLM_OK) {
        fprintf(stderr, "error: cannot create a context: %s\n", sgllm_status_string(st));
        goto done;
    }
    if (chat) { // ask for the length first, then render
        sgllm_chat_message msg = {"user", prompt};
        size_t len = 0;
        st = sgllm_chat_apply(model, &msg, 1, 1, NULL, 0, &len);
        if (st == SGLLM_ERR_BUFFER_TOO_SMALL && (chat_prompt = malloc(len + 1)))
            st = sgllm_chat_apply(model, &msg, 1, 1, chat_prompt, len + 1, &len);
        if (st != SGLLM_OK) {
            fprintf(stderr, "error: --chat: %s\n", sgllm_status_string(st));
            goto done;
        }
        prompt = chat_prompt;
    }
    gp.on_piece = print_piece;
    sgllm_generate_stats stats;
    if ((st = sgllm_generate(ctx, prompt, &gp, &stats)) != SGLLM_OK) {
        fprintf(stderr, "\nerror: %s\n", sgllm_context_errmsg(ctx));
        goto done;
    }
    int32_t evaluated = stats.n_prompt - stats.n_reused;
    fprintf(stderr, "\n\nprompt: %d tokens in %.2f s (%.1f tok/s); generation: %d tokens in %.2f s (%.1f tok/s)\n",
            evaluated, stats.prompt_seconds, stats.prompt_seconds > 0 ? evaluated / stats.prompt_seconds : 0.0,
            stats.n_generated, stats.gen_seconds,
            stats.gen_seconds > 0 ? stats.n_generated / stats.gen_seconds : 0.0);
    rc = 0;
done:
    sgllm_context_free(ctx);
    sgllm_model_free(model);
    free(chat_prompt);
    free(file_text);
    return rc;
}
