/* sgllm-chat - an interactive chat with a GGUF model.

   Shows a conversation loop: the message list grows by one user and one assistant message
   per turn, sgllm_chat_apply renders all of it with the model's template, and
   sgllm_generate evaluates only what is new, because the context still holds the earlier
   turns (it reuses the longest common prefix). Run:

     make && build/sgllm-chat -m ~/.cache/sgllm/SmolLM2-135M-Instruct.Q4_1.gguf

   Type a message and press Enter. Commands: /reset (new conversation), /stats (timings of
   the last reply), /quit. End of input (Ctrl-D) also quits.
   Flags: -m FILE, -s SYSTEM_PROMPT, -n max tokens per reply, --temp T, --seed S,
   -t threads, -c context length. */
#include "sgllm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct text { // a growing NUL-terminated string
    char *s;
    size_t len, cap;
} text;

static int text_reserve(text *t, size_t cap) {
    if (cap <= t->cap) return 1;
    char *bigger = realloc(t->s, cap);
    if (!bigger) return 0;
    t->s = bigger;
    t->cap = cap;
    return 1;
}

static int text_append(text *t, const char *s, size_t n) {
    if (!text_reserve(t, (t->len + n + 1) * 2)) return 0;
    memcpy(t->s + t->len, s, n);
    t->len += n;
    t->s[t->len] = 0;
    return 1;
}

// Reads one line of any length without its newline; 0 at end of input.
static int read_line(text *line) {
    line->len = 0;
    char chunk[512];
    while (fgets(chunk, sizeof chunk, stdin)) {
        size_t n = strlen(chunk);
        int end = n > 0 && chunk[n - 1] == '\n';
        if (!text_append(line, chunk, n - (size_t)end)) return 0;
        if (end) return 1;
    }
    return line->len > 0; // a last line without a newline
}

static int on_piece(void *user, const char *piece, size_t len) {
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return !text_append((text *)user, piece, len); // keep the reply for the history
}

static char *copy(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

int main(int argc, char **argv) {
    sgllm_model_params mp;
    sgllm_context_params cp;
    sgllm_generate_params gp;
    sgllm_model_default_params(&mp);
    sgllm_context_default_params(&cp);
    sgllm_generate_default_params(&gp);
    const char *system_prompt = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help") || !v) {
            fprintf(v ? stdout : stderr, "usage: sgllm-chat -m MODEL.gguf [-s SYSTEM] [-n N] [--temp T] "
                                         "[--seed S] [-t THREADS] [-c N_CTX]\n");
            return v ? 0 : 1;
        }
        i++;
        if (!strcmp(a, "-m")) mp.path = v;
        else if (!strcmp(a, "-s")) system_prompt = v;
        else if (!strcmp(a, "-n")) gp.max_tokens = atoi(v);
        else if (!strcmp(a, "--temp")) gp.sampler.temperature = (float)atof(v);
        else if (!strcmp(a, "--seed")) gp.sampler.seed = strtoull(v, NULL, 0);
        else if (!strcmp(a, "-t")) mp.n_threads = cp.n_threads = atoi(v);
        else if (!strcmp(a, "-c")) cp.n_ctx = atoi(v);
        else {
            fprintf(stderr, "error: unknown flag: %s (try --help)\n", a);
            return 1;
        }
    }
    if (!mp.path) {
        fprintf(stderr, "error: -m MODEL.gguf is required\n");
        return 1;
    }

    char err[512];
    sgllm_model *model;
    if (sgllm_model_load(&mp, &model, err, sizeof err) != SGLLM_OK) {
        fprintf(stderr, "error: cannot load model: %s\n", err);
        return 1;
    }
    sgllm_context *ctx;
    sgllm_status st = sgllm_context_create(model, &cp, &ctx);
    if (st != SGLLM_OK) {
        fprintf(stderr, "error: cannot create a context: %s\n", sgllm_status_string(st));
        sgllm_model_free(model);
        return 1;
    }

    // The conversation: each content is owned here (malloc), roles are string literals.
    sgllm_chat_message *msgs = NULL;
    size_t n_msgs = 0, n_first = system_prompt ? 1 : 0;
    text line = {0}, prompt = {0}, reply = {0};
    sgllm_generate_stats stats = {0};
    if (system_prompt && (msgs = malloc(sizeof *msgs)) != NULL)
        msgs[n_msgs++] = (sgllm_chat_message){"system", copy(system_prompt, strlen(system_prompt))};
    printf("sgllm-chat: %s. /reset, /stats, /quit\n", sgllm_model_name(model));
    for (;;) {
        printf("\n> ");
        fflush(stdout);
        if (!read_line(&line)) break;
        if (line.len == 0) continue;
        if (!strcmp(line.s, "/quit")) break;
        if (!strcmp(line.s, "/reset")) {
            while (n_msgs > n_first) free((void *)msgs[--n_msgs].content);
            sgllm_context_rewind(ctx, 0);
            printf("(new conversation)\n");
            continue;
        }
        if (!strcmp(line.s, "/stats")) {
            printf("prompt: %d tokens (%d reused) in %.2f s; reply: %d tokens in %.2f s (%.1f tok/s)\n",
                   stats.n_prompt, stats.n_reused, stats.prompt_seconds, stats.n_generated, stats.gen_seconds,
                   stats.gen_seconds > 0 ? stats.n_generated / stats.gen_seconds : 0.0);
            continue;
        }
        sgllm_chat_message *grown = realloc(msgs, (n_msgs + 2) * sizeof *msgs);
        if (!grown) break;
        msgs = grown;
        msgs[n_msgs++] = (sgllm_chat_message){"user", copy(line.s, line.len)};

        // Render the whole conversation, growing the buffer when the template asks for more.
        size_t len = 0;
        st = sgllm_chat_apply(model, msgs, n_msgs, 1, prompt.s, prompt.cap, &len);
        if (st == SGLLM_ERR_BUFFER_TOO_SMALL && text_reserve(&prompt, len + 1))
            st = sgllm_chat_apply(model, msgs, n_msgs, 1, prompt.s, prompt.cap, &len);
        const char *why = sgllm_status_string(st);
        if (st == SGLLM_OK) {
            reply.len = 0;
            gp.on_piece = on_piece;
            gp.user_data = &reply;
            st = sgllm_generate(ctx, prompt.s, &gp, &stats);
            why = sgllm_context_errmsg(ctx);
        }
        if (st != SGLLM_OK) { // the turn did not happen: forget the user message
            fprintf(stderr, "error: %s\n", why);
            free((void *)msgs[--n_msgs].content);
            continue;
        }
        if (stats.stop_reason == SGLLM_STOP_CONTEXT_FULL) printf("\n(context full: /reset to start over)");
        msgs[n_msgs++] = (sgllm_chat_message){"assistant", copy(reply.s ? reply.s : "", reply.len)};
        printf("\n");
    }
    while (n_msgs > 0) free((void *)msgs[--n_msgs].content);
    free(msgs);
    free(line.s);
    free(prompt.s);
    free(reply.s);
    sgllm_context_free(ctx);
    sgllm_model_free(model);
    return 0;
}
