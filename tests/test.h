// tests/test.h - the small harness every unit test uses. A test program includes
// sgllm_impl.c (white-box), then this header, and calls CHECK* from test functions.
#ifndef SGLLM_TEST_H
#define SGLLM_TEST_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int test__failures, test__checks;

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        test__checks++;                                                                        \
        if (!(cond)) {                                                                         \
            test__failures++;                                                                  \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);           \
        }                                                                                      \
    } while (0)

#define CHECKF(cond, ...)                                                                      \
    do {                                                                                       \
        test__checks++;                                                                        \
        if (!(cond)) {                                                                         \
            test__failures++;                                                                  \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);           \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fputc('\n', stderr);                                                               \
        }                                                                                      \
    } while (0)

// Ends the test program: prints a summary, exit status 1 if anything failed.
static int test_finish(const char *name) {
    printf("%s: %d checks, %d failures\n", name, test__checks, test__failures);
    return test__failures ? 1 : 0;
}

// A fresh seed per run (printed, and overridable with SGLLM_TEST_SEED to reproduce).
static unsigned long long test__rng;
static void test_seed(void) {
    const char *e = getenv("SGLLM_TEST_SEED");
    test__rng = e ? strtoull(e, NULL, 0) : (unsigned long long)time(NULL) ^ (unsigned long long)clock();
    printf("seed %llu (SGLLM_TEST_SEED to reproduce)\n", test__rng);
    if (!test__rng) test__rng = 1;
}
static unsigned long long test_u64(void) { // xorshift64*
    test__rng ^= test__rng >> 12;
    test__rng ^= test__rng << 25;
    test__rng ^= test__rng >> 27;
    return test__rng * 2685821657736338717ULL;
}
static float test_uniform(float lo, float hi) { return lo + (hi - lo) * (float)((test_u64() >> 40) / 16777216.0); }

// Path of a test model in $SGLLM_MODELS (default ~/.cache/sgllm) into buf. Real-model tests
// never skip: a missing model is a failure (run tests/fetch_models.sh).
static const char *test_model_path(char *buf, size_t cap, const char *file) {
    const char *dir = getenv("SGLLM_MODELS");
    if (dir) snprintf(buf, cap, "%s/%s", dir, file);
    else snprintf(buf, cap, "%s/.cache/sgllm/%s", getenv("HOME") ? getenv("HOME") : ".", file);
    return buf;
}
#define TEST_GEMMA "gemma-3-270m-q4_k_m.gguf"
#define TEST_SMOLLM "SmolLM2-135M-Instruct.Q4_1.gguf"
#endif
