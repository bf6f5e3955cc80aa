// tests/bench_quant.c - matmul throughput at the shapes of the test models.
// build: cc -O2 -I. -I/usr/include/stb tests/bench_quant.c -lm -lpthread -o build/bench_quant
// run:   build/bench_quant [seconds per case, default 0.3] [c|avx2|vnni, default the best here] [max threads, 2]
// Weights are random blocks (scales in a sane range); speed does not depend on the values.
#include "../sgllm_impl.c"

// CPU time of this thread: on a machine shared with other jobs it moves far less than wall
// time (it leaves out the time the thread waited for a core).
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}

static void fill(uint32_t t, uint8_t *p, size_t bytes) {
    for (size_t i = 0; i < bytes; i++) p[i] = (uint8_t)next();
    size_t bb = (size_t)sgllm__types[t].bytes, d_at = t == SGLLM__T_Q6_K ? 208 : 0;
    uint16_t d = sgllm__f32_to_fp16(0.01f);
    for (size_t off = 0; off + bb <= bytes; off += bb) {
        memcpy(p + off + d_at, &d, 2);
        if (t != SGLLM__T_Q6_K && t != SGLLM__T_Q4_0 && t != SGLLM__T_Q5_0 && t != SGLLM__T_Q8_0) memcpy(p + off + 2, &d, 2);
    }
}

// Seconds per matmul call, best of several timed batches; *cpu: this thread's CPU
// seconds per call in the batch with the least.
static double time_mm(sgllm__pool *pool, const sgllm__mat *w, const float *x, int64_t nt, float *y, void *scr,
                      double budget, int isa, double *cpu) {
    int reps = 1;
    for (;;) { // calibrate a batch to ~budget/5
        double t0 = sgllm__now();
        for (int i = 0; i < reps; i++) sgllm__matmul_impl(pool, w, x, nt, y, scr, isa);
        double dt = sgllm__now() - t0;
        if (dt > budget / 5 || reps > (1 << 20)) break;
        reps *= 2;
    }
    double best = 1e30;
    *cpu = 1e30;
    for (int b = 0; b < 5; b++) {
        double t0 = sgllm__now(), c0 = cpu_now();
        for (int i = 0; i < reps; i++) sgllm__matmul_impl(pool, w, x, nt, y, scr, isa);
        double dt = (sgllm__now() - t0) / reps, dc = (cpu_now() - c0) / reps;
        best = dt < best ? dt : best;
        *cpu = dc < *cpu ? dc : *cpu;
    }
    return best;
}

typedef struct shape {
    const char *what;
    uint32_t type;
    int64_t cols, rows; // cols = inputs (ne[0]), rows = outputs (ne[1])
} shape;

int main(int argc, char **argv) {
    double budget = argc > 1 ? atof(argv[1]) : 0.3;
    static const shape shapes[] = {
        {"smollm2 ffn_up", SGLLM__T_Q4_1, 576, 1536},    {"smollm2 ffn_down", SGLLM__T_Q4_1, 1536, 576},
        {"smollm2 attn_q", SGLLM__T_Q4_1, 576, 576},     {"smollm2 output", SGLLM__T_Q8_0, 576, 49152},
        {"gemma3 ffn_gate", SGLLM__T_Q5_0, 640, 2048},   {"gemma3 ffn_down", SGLLM__T_Q6_K, 2048, 640},
        {"gemma3 attn_output", SGLLM__T_Q4_K, 1024, 640}, {"gemma3 attn_v", SGLLM__T_Q8_0, 640, 256},
        {"ffn_up as Q4_0", SGLLM__T_Q4_0, 576, 1536},    {"ffn_up as Q5_1", SGLLM__T_Q5_1, 576, 1536},
    };
    static const char *isa_names[] = {"c", "avx2", "vnni"};
    int isa = sgllm__isa();
    for (int i = 0; argc > 2 && i < 3; i++)
        if (!strcmp(argv[2], isa_names[i])) isa = i;
    if (isa > sgllm__isa()) {
        printf("%s is not supported here\n", argv[2]);
        return 1;
    }
    printf("isa: %s (best here: %s)\n", isa_names[isa], isa_names[sgllm__isa()]);
    printf("%-20s %-5s %10s %5s %3s %10s %8s %8s %12s\n", "shape", "type", "cols x rows", "n_tok", "thr", "us/call", "GB/s",
           "GFLOP/s", "cpu us(thr1)");
    int max_threads = argc > 3 ? atoi(argv[3]) : 2;
    for (int threads = 1; threads <= max_threads; threads++) {
        sgllm__pool *pool = sgllm__pool_create(threads);
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            const shape *sh = &shapes[s];
            sgllm__mat w = {sh->type, sh->rows, sh->cols, NULL, (size_t)sgllm__row_bytes(sh->type, (uint64_t)sh->cols)};
            size_t wbytes = w.row_bytes * (size_t)w.rows;
            uint8_t *wd = malloc(wbytes);
            fill(sh->type, wd, wbytes);
            w.data = wd;
            static const int64_t toks[] = {1, 64};
            for (int ti = 0; ti < 2; ti++) {
                int64_t nt = toks[ti];
                float *x = malloc((size_t)(nt * sh->cols) * 4), *y = malloc((size_t)(nt * sh->rows) * 4);
                for (int64_t i = 0; i < nt * sh->cols; i++) x[i] = (float)((int64_t)(next() % 2001) - 1000) / 1000.f;
                void *scr = malloc(sgllm__matmul_scratch_bytes(&w, nt) + 1);
                double cpu, dt = time_mm(pool, &w, x, nt, y, scr, budget, isa, &cpu);
                printf("%-20s %-5s %4lldx%-5lld %5lld %3d %10.1f %8.2f %8.1f %12.1f\n", sh->what, sgllm__type_name(sh->type),
                       (long long)sh->cols, (long long)sh->rows, (long long)nt, threads, dt * 1e6, wbytes / dt * 1e-9,
                       2.0 * (double)sh->rows * (double)sh->cols * (double)nt / dt * 1e-9,
                       threads == 1 ? cpu * 1e6 : -1.0);
                free(x), free(y), free(scr);
            }
            free(wd);
        }
        sgllm__pool_free(pool);
    }
    return 0;
}
