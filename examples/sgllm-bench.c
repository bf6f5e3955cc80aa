// sgllm-bench: prompt-processing and generation speed of a model file, measured the way
// llama-bench does (pp: N prompt tokens evaluated from an empty context; tg: M tokens
// evaluated one at a time from an empty context), with random token ids.
//
//   build/sgllm-bench -m model.gguf [-p 512] [-n 128] [-t threads] [-b batch] [-r repetitions]
//   build/sgllm-bench --bandwidth [-t threads]
//
// Prints one table row per test with the median and the spread over the repetitions.
// --bandwidth measures the host's memory read bandwidth (the decode floor on the CPU: every
// weight byte is read once per token) by summing a 1 GiB buffer on t threads.
#define _POSIX_C_SOURCE 199309L
#include "sgllm.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct bw_part {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
} bw_part;

static void *bw_read(void *arg) {
    bw_part *b = (bw_part *)arg;
    uint64_t acc[8] = {0};
    for (size_t i = 0; i + 8 <= b->n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += b->p[i + k];
    for (int k = 0; k < 8; k++) b->sum += acc[k];
    return NULL;
}

// Median read bandwidth in GB/s over 5 passes of a 1 GiB buffer split across `threads`.
static double measure_bandwidth(int threads) {
    size_t bytes = (size_t)1 << 30, n = bytes / 8;
    uint64_t *buf = (uint64_t *)malloc(bytes);
    if (!buf) return 0;
    for (size_t i = 0; i < n; i++) buf[i] = i * 2654435761u; // touch every page, random-ish data
    double gbs[5];
    uint64_t check = 0;
    for (int r = 0; r < 5; r++) {
        pthread_t tid[256];
        bw_part part[256];
        double t0 = now();
        for (int i = 0; i < threads; i++) {
            part[i] = (bw_part){buf + n / (size_t)threads * (size_t)i, n / (size_t)threads, 0};
            pthread_create(&tid[i], NULL, bw_read, &part[i]);
        }
        for (int i = 0; i < threads; i++) {
            pthread_join(tid[i], NULL);
            check += part[i].sum;
        }
        gbs[r] = (double)bytes / (now() - t0) / 1e9;
    }
    free(buf);
    qsort(gbs, 5, sizeof(double), cmp_double);
    if (check == 42) fprintf(stderr, " "); // uses the sums so the reads are not optimized away
    return gbs[2];
}

static void usage(void) {
    fprintf(stderr, "usage: sgllm-bench -m model.gguf [-p prompt_tokens=512] [-n gen_tokens=128] [-t threads=all]\n"
                    "                   [-b batch=512] [-r repetitions=3]\n"
                    "       sgllm-bench --bandwidth [-t threads=2]\n");
}

int main(int argc, char **argv) {
    const char *path = NULL;
    int n_prompt = 512, n_gen = 128, threads = 0, batch = 512, reps = 3, bandwidth = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        }
        if (!strcmp(a, "--bandwidth")) {
            bandwidth = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "sgllm-bench: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "-m")) path = v;
        else if (!strcmp(a, "-p")) n_prompt = atoi(v);
        else if (!strcmp(a, "-n")) n_gen = atoi(v);
        else if (!strcmp(a, "-t")) threads = atoi(v);
        else if (!strcmp(a, "-b")) batch = atoi(v);
        else if (!strcmp(a, "-r")) reps = atoi(v);
        else {
            fprintf(stderr, "sgllm-bench: unknown option %s\n", a);
            usage();
            return 2;
        }
        i++;
    }
    if (bandwidth) {
        int t = threads > 0 && threads <= 256 ? threads : 2;
        printf("memory read bandwidth, %d threads, 1 GiB, median of 5: %.1f GB/s\n", t, measure_bandwidth(t));
        return 0;
    }
    if (!path || n_prompt < 0 || n_gen < 0 || threads < 0 || batch < 1 || reps < 1) {
        usage();
        return 2;
    }
    sgllm_model_params mp;
    sgllm_model_default_params(&mp);
    mp.path = path;
    sgllm_model *model;
    char err[512];
    if (sgllm_model_load(&mp, &model, err, sizeof err) != SGLLM_OK) {
        fprintf(stderr, "sgllm-bench: %s\n", err);
        return 1;
    }
    sgllm_context_params cp;
    sgllm_context_default_params(&cp);
    cp.n_ctx = (n_prompt > n_gen ? n_prompt : n_gen) + 1;
    cp.n_batch = batch;
    cp.n_threads = threads;
    sgllm_context *ctx;
    if (sgllm_context_create(model, &cp, &ctx) != SGLLM_OK) {
        fprintf(stderr, "sgllm-bench: cannot create a context of %d tokens\n", cp.n_ctx);
        sgllm_model_free(model);
        return 1;
    }
    int n_vocab = sgllm_model_n_vocab(model), n_max = n_prompt > n_gen ? n_prompt : n_gen;
    sgllm_token *toks = (sgllm_token *)malloc(sizeof(sgllm_token) * (size_t)(n_max ? n_max : 1));
    float *logits = (float *)malloc(sizeof(float) * (size_t)n_vocab);
    double *pp = (double *)calloc((size_t)reps, sizeof(double)), *tg = (double *)calloc((size_t)reps, sizeof(double));
    if (!toks || !logits || !pp || !tg) return 1;
    unsigned long long rng = 0x5eed;
    for (int i = 0; i < n_max; i++) {
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        toks[i] = (sgllm_token)((rng >> 33) % (unsigned long long)n_vocab);
    }
    int status = 0;
    for (int r = -1; r < reps && !status; r++) { // r = -1 warms up caches and page mappings
        double t0 = now();
        sgllm_context_rewind(ctx, 0);
        if (n_prompt && sgllm_evaluate(ctx, toks, n_prompt, NULL, logits) != SGLLM_OK) status = 1;
        double t1 = now();
        sgllm_context_rewind(ctx, 0);
        for (int i = 0; i < n_gen && !status; i++)
            if (sgllm_evaluate(ctx, toks + i, 1, NULL, logits) != SGLLM_OK) status = 1;
        double t2 = now();
        if (r >= 0) {
            pp[r] = n_prompt / (t1 - t0);
            tg[r] = n_gen / (t2 - t1);
        }
    }
    if (status) {
        fprintf(stderr, "sgllm-bench: %s\n", sgllm_context_errmsg(ctx));
    } else {
        qsort(pp, (size_t)reps, sizeof(double), cmp_double);
        qsort(tg, (size_t)reps, sizeof(double), cmp_double);
        printf("| model | threads | test | tok/s (median of %d) | min..max |\n|---|---|---|---|---|\n", reps);
        const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
        if (n_prompt)
            printf("| %s | %d | pp%d | %.1f | %.1f..%.1f |\n", name, threads, n_prompt, pp[reps / 2], pp[0], pp[reps - 1]);
        if (n_gen)
            printf("| %s | %d | tg%d | %.1f | %.1f..%.1f |\n", name, threads, n_gen, tg[reps / 2], tg[0], tg[reps - 1]);
    }
    free(toks);
    free(logits);
    free(pp);
    free(tg);
    sgllm_context_free(ctx);
    sgllm_model_free(model);
    return status;
}
