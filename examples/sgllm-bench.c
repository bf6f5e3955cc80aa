// sgllm-bench: prompt-processing and generation speed of a model file, measured the way
// llama-bench does (pp: N prompt tokens evaluated from an empty context; tg: M tokens
// evaluated one at a time from an empty context), with random token ids. Then generation
// through sgllm_generate (a short text prompt, -n tokens unless the model ends its turn
// first), greedy and with the default sampler: on the GPU that loop samples on the device and
// reads back only the token, so it is the decode rate an application sees.
//
//   build/sgllm-bench -m model.gguf [-p 512] [-n 128] [-t threads] [-b batch] [-r repetitions]
//   build/sgllm-bench --bandwidth [-t threads]
//   build/sgllm-bench --preset NAME --type bf16|q8_0|q4_1|q4_k|q4_k_m [--seed N] [--ctx 512,4096]
//                     [-p 2048] [-n 64] [-r 5]
//   --kernel-config FILE (either form): a JSON file of CUDA dispatch overrides applied last
//   (sgllm_model_params.kernel_config, e.g. {"decode_mma": 0}), to compare kernel variants
//
// Prints one table row per test with the median and the spread over the repetitions.
// --bandwidth measures the host's memory read bandwidth (the decode floor on the CPU: every
// weight byte is read once per token) by summing a 1 GiB buffer on t threads.
//
// --preset runs a synthetic model built on the GPU (sgllm_model_load_synthetic) against the
// device's own ceilings, measured first (streaming read bandwidth, cuBLAS bf16 rate):
// - decode at batch 1 with L tokens in the KV cache, for each L of --ctx: the cache is filled
//   by a prefill, then -n single-token sgllm_evaluate calls at position L (rewound after
//   each; 3 untimed first) are timed on the host clock, median. Floor: (weight bytes read per
//   token + KV bytes read at L) / measured bandwidth.
// - prefill of -p tokens (default 2048) from an empty cache in one call, median of -r.
//   Floor: 2 FLOPs per layer-matrix weight per token / measured cuBLAS rate; the attention
//   FLOPs are stated beside it (and a fraction that counts them) since the floor leaves them out.
// Each figure is printed as a fraction of its floor (floor time / measured time).
#define _POSIX_C_SOURCE 199309L
#define SGLLM_INTERNAL // sgllm__model_cost, sgllm__device_ceilings (benchmark helpers)
#include "sgllm.h"

#include <limits.h>
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
                    "       sgllm-bench --bandwidth [-t threads=2]\n"
                    "       sgllm-bench --preset NAME --type bf16|q8_0|q4_1|q4_k|q4_k_m [--seed N=1] [--ctx L1,L2,..=512,4096]\n"
                    "                   [-p prefill_tokens=2048] [-n decode_samples=64] [-r repetitions=5]\n"
                    "       either form: [--kernel-config file.json] (CUDA dispatch overrides applied last)\n");
}

static void random_tokens(sgllm_token *toks, int n, int n_vocab) {
    unsigned long long rng = 0x5eed;
    for (int i = 0; i < n; i++) {
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        toks[i] = (sgllm_token)((rng >> 33) % (unsigned long long)n_vocab);
    }
}

enum { MAX_CTX_LIST = 16, UNSET = INT_MIN }; // UNSET: an option not given

// The synthetic-model benchmark (see the top of the file). Returns the exit status.
static int bench_synthetic(const char *preset, const char *type, unsigned long long seed, const int *ctx_list,
                           int n_ctx_list, int n_prefill, int n_decode, int reps, const char *kernel_config) {
    double bw = 0, rate = 0;
    char dev[256] = "", err[512] = "";
    if (sgllm__device_ceilings(20, &bw, &rate, dev, sizeof dev, err, sizeof err) != SGLLM_OK) {
        fprintf(stderr, "sgllm-bench: %s\n", err);
        return 1;
    }
    printf("device: %s: read bandwidth %.1f GB/s (2 GiB streaming read, median of 20), cuBLAS bf16 %.1f TFLOP/s "
           "(8192^3, median of 20)\n", dev, bw / 1e9, rate / 1e12);
    sgllm_model_params mp;
    sgllm_model_default_params(&mp);
    mp.backend = SGLLM_BACKEND_CUDA;
    mp.log_level = SGLLM_LOG_WARN;
    mp.kernel_config = kernel_config;
    sgllm_model *model;
    double t_load = now();
    if (sgllm_model_load_synthetic(preset, type, seed, &mp, &model, err, sizeof err) != SGLLM_OK) {
        fprintf(stderr, "sgllm-bench: %s\n", err);
        return 1;
    }
    t_load = now() - t_load;
    int max_ctx = n_prefill;
    for (int i = 0; i < n_ctx_list; i++) max_ctx = ctx_list[i] + 1 > max_ctx ? ctx_list[i] + 1 : max_ctx;
    sgllm_context_params cp;
    sgllm_context_default_params(&cp);
    cp.n_ctx = max_ctx;
    cp.n_batch = n_prefill > 0 ? n_prefill : 512;
    sgllm_context *ctx;
    if (sgllm_context_create(model, &cp, &ctx) != SGLLM_OK) {
        fprintf(stderr, "sgllm-bench: cannot create a context of %d tokens, batch %d\n", cp.n_ctx, cp.n_batch);
        sgllm_model_free(model);
        return 1;
    }
    int n_vocab = sgllm_model_n_vocab(model);
    sgllm__cost cost0;
    sgllm__model_cost(model, 0, n_prefill, &cost0);
    printf("model: %s: %.3f B weights, %d layers, %.3f GB of weights read per decode token, made in %.1f s\n",
           sgllm_model_name(model), cost0.n_weights / 1e9, sgllm_model_n_layer(model), cost0.weight_bytes / 1e9, t_load);
    sgllm_token *toks = (sgllm_token *)malloc(sizeof(sgllm_token) * (size_t)max_ctx);
    float *logits = (float *)malloc(sizeof(float) * (size_t)n_vocab);
    double *t = (double *)malloc(sizeof(double) * (size_t)(n_decode > reps ? n_decode : reps));
    if (!toks || !logits || !t) return 1;
    random_tokens(toks, max_ctx, n_vocab);
    int status = 0;
    printf("| preset | type | test | tok/s (median) | min..max | floor tok/s | fraction of floor | floor bytes or FLOPs |\n"
           "|---|---|---|---|---|---|---|---|\n");
    for (int c = 0; c < n_ctx_list && !status; c++) {
        int L = ctx_list[c];
        sgllm_context_rewind(ctx, 0);
        if (L && sgllm_evaluate(ctx, toks, L, NULL, logits) != SGLLM_OK) status = 1;
        for (int r = -3; r < n_decode && !status; r++) { // 3 untimed: the first captures the CUDA graph
            double t0 = now();
            if (sgllm_evaluate(ctx, toks + L, 1, NULL, logits) != SGLLM_OK) status = 1;
            if (r >= 0) t[r] = now() - t0;
            sgllm_context_rewind(ctx, L);
        }
        if (status) break;
        qsort(t, (size_t)n_decode, sizeof(double), cmp_double);
        sgllm__cost cost;
        sgllm__model_cost(model, L, 0, &cost);
        double bytes = cost.weight_bytes + cost.kv_bytes, floor_s = bytes / bw;
        printf("| %s | %s | tg @%d (batch 1) | %.1f | %.1f..%.1f | %.1f | %.1f%% | %.3f GB weights + %.4f GB KV |\n",
               preset, type, L, 1.0 / t[n_decode / 2], 1.0 / t[n_decode - 1], 1.0 / t[0], 1.0 / floor_s,
               100.0 * floor_s / t[n_decode / 2], cost.weight_bytes / 1e9, cost.kv_bytes / 1e9);
    }
    for (int r = -1; r < reps && n_prefill && !status; r++) { // r = -1 warms up cuBLAS
        sgllm_context_rewind(ctx, 0);
        double t0 = now();
        if (sgllm_evaluate(ctx, toks, n_prefill, NULL, logits) != SGLLM_OK) status = 1;
        if (r >= 0) t[r] = now() - t0;
    }
    if (!status && n_prefill) {
        qsort(t, (size_t)reps, sizeof(double), cmp_double);
        double mm = 2.0 * cost0.matmul_weights * n_prefill, floor_s = mm / rate, med = t[reps / 2];
        printf("| %s | %s | pp%d | %.1f | %.1f..%.1f | %.1f | %.1f%% | %.2f TFLOP matmul (+ %.2f TFLOP attention: "
               "%.1f%% counting it) |\n",
               preset, type, n_prefill, n_prefill / med, n_prefill / t[reps - 1], n_prefill / t[0], n_prefill / floor_s,
               100.0 * floor_s / med, mm / 1e12, cost0.attn_flops / 1e12, 100.0 * (mm + cost0.attn_flops) / rate / med);
    }
    if (status) fprintf(stderr, "sgllm-bench: %s\n", sgllm_context_errmsg(ctx));
    free(toks);
    free(logits);
    free(t);
    sgllm_context_free(ctx);
    sgllm_model_free(model);
    return status;
}

// Parses "512,4096" into list; returns the count, or -1 on a bad list.
static int parse_ctx_list(const char *s, int *list) {
    int n = 0;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 0 || v > (1 << 24) || n == MAX_CTX_LIST || (*end && *end != ',')) return -1;
        list[n++] = (int)v;
        s = *end ? end + 1 : end;
    }
    return n;
}

int main(int argc, char **argv) {
    const char *path = NULL, *preset = NULL, *type = NULL, *kernel_config = NULL;
    int n_prompt = UNSET, n_gen = UNSET, threads = 0, batch = 512, reps = UNSET, bandwidth = 0;
    int ctx_list[MAX_CTX_LIST] = {512, 4096}, n_ctx_list = 2;
    unsigned long long seed = 1;
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
        else if (!strcmp(a, "--preset")) preset = v;
        else if (!strcmp(a, "--type")) type = v;
        else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 0);
        else if (!strcmp(a, "--kernel-config")) kernel_config = v;
        else if (!strcmp(a, "--ctx")) {
            if ((n_ctx_list = parse_ctx_list(v, ctx_list)) < 0) {
                fprintf(stderr, "sgllm-bench: bad --ctx list '%s' (e.g. 512,4096)\n", v);
                return 2;
            }
        }
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
    if (preset || type) {
        if (!preset || !type || path) {
            usage();
            return 2;
        }
        n_prompt = n_prompt == UNSET ? 2048 : n_prompt;
        n_gen = n_gen == UNSET ? 64 : n_gen;
        reps = reps == UNSET ? 5 : reps;
        if (n_prompt < 0 || n_gen < 1 || reps < 1 || reps > 1000) {
            usage();
            return 2;
        }
        return bench_synthetic(preset, type, seed, ctx_list, n_ctx_list, n_prompt, n_gen, reps, kernel_config);
    }
    n_prompt = n_prompt == UNSET ? 512 : n_prompt;
    n_gen = n_gen == UNSET ? 128 : n_gen;
    reps = reps == UNSET ? 3 : reps;
    if (!path || n_prompt < 0 || n_gen < 0 || threads < 0 || batch < 1 || reps < 1) {
        usage();
        return 2;
    }
    sgllm_model_params mp;
    sgllm_model_default_params(&mp);
    mp.path = path;
    mp.kernel_config = kernel_config;
    sgllm_model *model;
    char err[512];
    if (sgllm_model_load(&mp, &model, err, sizeof err) != SGLLM_OK) {
        fprintf(stderr, "sgllm-bench: %s\n", err);
        return 1;
    }
    sgllm_context_params cp;
    sgllm_context_default_params(&cp);
    cp.n_ctx = (n_prompt > n_gen ? n_prompt : n_gen) + n_gen + 64; // room for generate's prompt and tokens
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
    random_tokens(toks, n_max, n_vocab);
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
    // Decode through sgllm_generate (the sampler runs where the model runs: on the GPU the
    // logits never leave the device), greedy and with the default sampler.
    for (int mode = 0; mode < 2 && n_gen && !status; mode++) {
        sgllm_generate_params gp;
        sgllm_generate_default_params(&gp);
        gp.max_tokens = n_gen;
        if (mode == 0) gp.sampler.temperature = 0;
        int32_t made = 0;
        for (int r = -1; r < reps && !status; r++) {
            sgllm_generate_stats st;
            sgllm_context_rewind(ctx, 0);
            if (sgllm_generate(ctx, "Once upon a time, in a small village by the sea,", &gp, &st) != SGLLM_OK) status = 1;
            else if (r >= 0) {
                tg[r] = st.gen_seconds > 0 ? st.n_generated / st.gen_seconds : 0;
                made = st.n_generated;
            }
        }
        if (status) {
            fprintf(stderr, "sgllm-bench: %s\n", sgllm_context_errmsg(ctx));
            break;
        }
        qsort(tg, (size_t)reps, sizeof(double), cmp_double);
        const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
        printf("| %s | %d | generate %d tokens, %s | %.1f | %.1f..%.1f |\n", name, threads, made,
               mode == 0 ? "greedy" : "default sampler", tg[reps / 2], tg[0], tg[reps - 1]);
    }
    free(toks);
    free(logits);
    free(pp);
    free(tg);
    sgllm_context_free(ctx);
    sgllm_model_free(model);
    return status;
}
