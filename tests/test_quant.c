// tests/test_quant.c - weight formats: reference dequantization against hand-made blocks and
// against the gguf python package on real model rows; fast paths against the reference on
// fresh random inputs; vec_dot against a float dot; matmul against a loop of vec_dot.
// GCC 12 at -O2 flags the GGUF cursor reads (section 2) as maybe-uninitialized once they are
// inlined into a caller; they are not (written on success only). Reported to the lead.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "../sgllm_impl.c"
#include "test.h"

static const uint32_t all_types[] = {SGLLM__T_F32,  SGLLM__T_F16,  SGLLM__T_BF16, SGLLM__T_Q4_0,
                                     SGLLM__T_Q4_1, SGLLM__T_Q5_0, SGLLM__T_Q5_1, SGLLM__T_Q8_0,
                                     SGLLM__T_Q4_K, SGLLM__T_Q5_K, SGLLM__T_Q6_K};
#define N_TYPES (sizeof all_types / sizeof all_types[0])

static uint16_t rand_scale(float lo, float hi) {
    float v = test_uniform(lo, hi);
    return sgllm__f32_to_fp16(test_u64() & 1 ? -v : v);
}

// n random values of type t: random bytes for the quants, fp16 scales of magnitude in
// [1e-3, 1e-1] (mins up to 0.1), never NaN or Inf.
static void fill_random(uint32_t t, void *buf, int64_t n) {
    uint8_t *p = (uint8_t *)buf;
    size_t bytes = (size_t)sgllm__row_bytes(t, (uint64_t)n);
    if (t == SGLLM__T_F32) {
        for (int64_t i = 0; i < n; i++) ((float *)buf)[i] = test_uniform(-1, 1);
        return;
    }
    if (t == SGLLM__T_F16 || t == SGLLM__T_BF16) {
        for (int64_t i = 0; i < n; i++) {
            float v = test_uniform(-2, 2);
            uint32_t bits;
            memcpy(&bits, &v, 4);
            ((uint16_t *)buf)[i] = t == SGLLM__T_F16 ? sgllm__f32_to_fp16(v) : (uint16_t)(bits >> 16);
        }
        return;
    }
    for (size_t i = 0; i < bytes; i++) p[i] = (uint8_t)test_u64();
    size_t bb = (size_t)sgllm__types[t].bytes;
    for (size_t off = 0; off < bytes; off += bb) {
        uint16_t d = rand_scale(1e-3f, 1e-1f), m = rand_scale(1e-3f, 1e-1f);
        size_t d_at = t == SGLLM__T_Q6_K ? 208 : 0;
        memcpy(p + off + d_at, &d, 2);
        if (t == SGLLM__T_Q4_1 || t == SGLLM__T_Q5_1 || t == SGLLM__T_Q4_K || t == SGLLM__T_Q5_K)
            memcpy(p + off + 2, &m, 2);
    }
}

// 1. Fast dequantization equals the reference bit for bit.
static void test_dequant_fast(void) {
    if (!sgllm__use_avx2()) printf("note: no AVX2 on this CPU, the fast paths are the portable ones\n");
    for (size_t i = 0; i < N_TYPES; i++) {
        uint32_t t = all_types[i];
        int64_t n = sgllm__types[t].block == 1 ? 2048 + 5 : 2048;
        void *w = malloc((size_t)sgllm__row_bytes(t, (uint64_t)n));
        float *a = malloc((size_t)n * 4), *b = malloc((size_t)n * 4);
        for (int rep = 0; rep < 4; rep++) {
            fill_random(t, w, n);
            sgllm__dequant_row_ref(t, w, a, n);
            sgllm__dequant_row(t, w, b, n);
            CHECKF(memcmp(a, b, (size_t)n * 4) == 0, "%s: fast dequant differs from the reference", sgllm__type_name(t));
            bool finite = true;
            for (int64_t j = 0; j < n; j++) finite = finite && isfinite(a[j]);
            CHECKF(finite, "%s: non-finite value from finite scales", sgllm__type_name(t));
        }
        free(w), free(a), free(b);
    }
}

// 2a. Hand-built blocks; expected values worked out by hand from the format description.
static void check_val(const char *what, const float *y, int idx, float want) {
    CHECKF(y[idx] == want, "%s: y[%d] = %g, want %g", what, idx, y[idx], want);
}

static void test_dequant_known(void) {
    const uint16_t half = 0x3800, quarter = 0x3400, minus_one = 0xbc00; // 0.5, 0.25, -1
    float y[256];
    { // Q4_0: y = (nibble - 8) * d; low nibbles first
        sgllm__bq4_0 b = {half, {0}};
        memset(b.qs, 0x88, 16);
        b.qs[3] = 0xa7;
        sgllm__dequant_row_ref(SGLLM__T_Q4_0, &b, y, 32);
        check_val("Q4_0", y, 3, -0.5f), check_val("Q4_0", y, 19, 1.0f), check_val("Q4_0", y, 0, 0.0f);
    }
    { // Q4_1: y = nibble * d + m
        sgllm__bq4_1 b = {half, quarter, {0}};
        b.qs[5] = 0xf0;
        sgllm__dequant_row_ref(SGLLM__T_Q4_1, &b, y, 32);
        check_val("Q4_1", y, 5, 0.25f), check_val("Q4_1", y, 21, 7.75f);
    }
    { // Q5_0: fifth bit j of qh for value j; y = (q - 16) * d
        sgllm__bq5_0 b = {half, {0x04, 0, 0, 0}, {0}};
        b.qs[2] = 0x3c;
        sgllm__dequant_row_ref(SGLLM__T_Q5_0, &b, y, 32);
        check_val("Q5_0", y, 2, 6.0f), check_val("Q5_0", y, 18, -6.5f), check_val("Q5_0", y, 0, -8.0f);
    }
    { // Q5_1: bit 20 of qh is the fifth bit of value 20; y = q * d + m
        sgllm__bq5_1 b = {half, minus_one, {0, 0, 0x10, 0}, {0}};
        b.qs[4] = 0x21;
        sgllm__dequant_row_ref(SGLLM__T_Q5_1, &b, y, 32);
        check_val("Q5_1", y, 4, -0.5f), check_val("Q5_1", y, 20, 8.0f);
    }
    { // Q8_0
        sgllm__bq8_0 b = {half, {0}};
        b.qs[7] = -100;
        sgllm__dequant_row_ref(SGLLM__T_Q8_0, &b, y, 32);
        check_val("Q8_0", y, 7, -50.0f), check_val("Q8_0", y, 8, 0.0f);
    }
    // Q4_K/Q5_K scales: sub-block 0 (sc 3, m 2), 1 (sc 5, m 7), 5 (sc 33 = 0x21, m 19 = 0x13:
    // low 4 bits in byte 9, top 2 bits in the top of bytes 1 and 5)
    uint8_t kscales[12] = {3, 0x85, 0, 0, 2, 0x47, 0, 0, 0, 0x31, 0, 0};
    { // y = d*sc*q - dmin*m; sub-block 2c = low nibbles of qs[32c..], 2c+1 = high nibbles
        sgllm__bq4_k b = {half, quarter, {0}, {0}};
        memcpy(b.scales, kscales, 12);
        b.qs[10] = 0x49;
        b.qs[64 + 7] = 0xe0;
        sgllm__dequant_row_ref(SGLLM__T_Q4_K, &b, y, 256);
        check_val("Q4_K", y, 10, 13.0f);   // 0.5*3*9 - 0.25*2
        check_val("Q4_K", y, 42, 8.25f);   // 0.5*5*4 - 0.25*7
        check_val("Q4_K", y, 167, 226.25f); // 0.5*33*14 - 0.25*19
        check_val("Q4_K", y, 135, 0.0f);   // sub-block 4: sc 0, m 0
    }
    { // Q5_K: qh[l] bit 2c adds 16 to the low-nibble value l of chunk c, bit 2c+1 to the high
        sgllm__bq5_k b = {half, quarter, {0}, {0}, {0}};
        memcpy(b.scales, kscales, 12);
        b.qs[10] = 0x49;
        b.qs[64 + 7] = 0xe0;
        b.qh[10] = 0x01;
        b.qh[7] = 0x20;
        sgllm__dequant_row_ref(SGLLM__T_Q5_K, &b, y, 256);
        check_val("Q5_K", y, 10, 37.0f);    // 0.5*3*25 - 0.5
        check_val("Q5_K", y, 42, 8.25f);    // bit 1 of qh[10] clear
        check_val("Q5_K", y, 167, 490.25f); // 0.5*33*30 - 4.75
    }
    { // Q6_K: q = (4 low bits from ql | 2 bits from qh << 4) - 32, y = d * scale * q
        sgllm__bq6_k b;
        memset(&b, 0, sizeof b);
        b.d = half;
        b.scales[0] = 2, b.scales[1] = -3, b.scales[5] = 1, b.scales[10] = 4;
        b.ql[20] = 0x05, b.qh[20] = 0x02;  // value 20: 5 | 2<<4 = 37 -> 5; value 84: 0 -> -32
        b.ql[64 + 32 + 3] = 0x0f, b.qh[32 + 3] = 0x0c; // value 128+32+3: 15 | 3<<4 = 63 -> 31
        sgllm__dequant_row_ref(SGLLM__T_Q6_K, &b, y, 256);
        check_val("Q6_K", y, 0, -32.0f);   // 0.5*2*-32
        check_val("Q6_K", y, 16, 48.0f);   // 0.5*-3*-32
        check_val("Q6_K", y, 20, -7.5f);   // 0.5*-3*5
        check_val("Q6_K", y, 84, -16.0f);  // 0.5*1*-32 (scale 5 = is 1 + 4)
        check_val("Q6_K", y, 163, 62.0f);  // 0.5*4*31 (scale 10 = 8 + is 0 + 2)
    }
    { // F16 and BF16 bit patterns
        uint16_t h[3] = {0x3c00, 0xc000, 0x0001}, bf[2] = {0x3f80, 0x4049};
        sgllm__dequant_row_ref(SGLLM__T_F16, h, y, 3);
        check_val("F16", y, 0, 1.0f), check_val("F16", y, 1, -2.0f), check_val("F16", y, 2, 0x1p-24f);
        sgllm__dequant_row_ref(SGLLM__T_BF16, bf, y, 2);
        check_val("BF16", y, 0, 1.0f), check_val("BF16", y, 1, 3.140625f);
    }
}

// 2b. Rows of the real models against tests/golden/quant_rows.txt (gguf python package).
// The gguf package computes in float32 with its own operation order (e.g. (d*sc)*q versus
// d*(sc*q)), so values may differ by a rounding or two: tolerance 4 ulp of the value plus
// 1e-9 absolute for results that cancel to near zero (Q4_K's d*sc*q - dmin*m).
static void test_dequant_golden(void) {
    FILE *f = fopen("tests/golden/quant_rows.txt", "r");
    CHECKF(f != NULL, "tests/golden/quant_rows.txt missing (run from the repository root)");
    if (!f) return;
    const char *files[2] = {TEST_GEMMA, TEST_SMOLLM};
    sgllm__gguf g[2];
    bool open[2];
    for (int i = 0; i < 2; i++) {
        char path[1024];
        sgllm__diag d = {0};
        open[i] = sgllm__gguf_open(&g[i], test_model_path(path, sizeof path, files[i]), &d) == SGLLM_OK;
        CHECKF(open[i], "cannot open %s: %s (run tests/fetch_models.sh)", path, d.msg);
    }
    static char line[1 << 17];
    int rows = 0;
    while (fgets(line, sizeof line, f)) {
        char file[128], name[64], type[16];
        int row, n, used;
        if (sscanf(line, "%127s %63s %15s %d %d%n", file, name, type, &row, &n, &used) != 5) continue;
        int mi = strcmp(file, TEST_GEMMA) == 0 ? 0 : 1;
        if (!open[mi]) continue;
        const sgllm__tensor *t = sgllm__gguf_tensor(&g[mi], name);
        CHECKF(t && t->ne[0] == n && !strcmp(sgllm__type_name(t->type), type), "%s %s: missing or unexpected", file, name);
        if (!t || t->ne[0] != n) continue;
        float *a = malloc((size_t)n * 4), *b = malloc((size_t)n * 4);
        const uint8_t *src = t->data + (size_t)row * sgllm__row_bytes(t->type, (uint64_t)n);
        sgllm__dequant_row_ref(t->type, src, a, n);
        sgllm__dequant_row(t->type, src, b, n);
        char *p = line + used;
        int bad = 0;
        for (int j = 0; j < n; j++) {
            float want = strtof(p, &p);
            if (!(fabsf(a[j] - want) <= 4 * FLT_EPSILON * fabsf(want) + 1e-9f)) {
                if (!bad) fprintf(stderr, "%s %s row %d [%d]: %.9g, gguf says %.9g\n", file, name, row, j, a[j], want);
                bad++;
            }
        }
        CHECKF(bad == 0, "%s %s row %d: %d of %d values differ from the gguf package", file, name, row, bad, n);
        CHECKF(memcmp(a, b, (size_t)n * 4) == 0, "%s %s row %d: fast dequant differs", file, name, row);
        free(a), free(b);
        rows++;
    }
    fclose(f);
    CHECKF(rows == 12, "golden rows checked: %d, want 12", rows);
    for (int i = 0; i < 2; i++)
        if (open[i]) sgllm__gguf_close(&g[i]);
}

// Random activations: mostly uniform in [-1, 1], with a few large outliers (as in real
// hidden states) so blocks have very different scales.
static void fill_act(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = test_uniform(-1, 1) * (test_u64() % 64 == 0 ? 20.f : 1.f);
}

// 3. vec_dot: AVX2 against portable on the same quantized inputs, and against a float dot.
//
// Notation: w^ = dequantized weights, z = the same blocks dequantized with every quant bit
// zero (the block's offset: m, -dmin*m, -8d ...), dy_b = amax of activation block b / 127.
// - Both paths add the same exact integer block sums; each does at most n/32 + 8 float
//   roundings in sequence, so |avx2 - portable| <= (n/32 + 8) * 2^-23 * S with
//   S = sum_j (|w^_j| + |z_j|) * (|x_j| + dy_b).
// - Quantized activations x^ satisfy |x^_j - x_j| <= 0.5*dy_b plus, for fp16 scales
//   (Q8_0/Q8_1), 127 * 2^-11 * dy_b from rounding d: under 0.57*dy_b (0.51*dy_b for Q8_K's
//   float scale). Q8_1 also rounds s = d*sum(q) to fp16: |m| * 2^-10 * dy_b * 32*127 per block.
//   So |vec_dot - sum w^_j x_j| <= sum_j |w^_j| * c * dy_b + that + the rounding term above.
static void test_vec_dot(void) {
    static const int64_t sizes[] = {256, 768, 2048};
    for (size_t i = 0; i < N_TYPES; i++) {
        uint32_t t = all_types[i], vt = sgllm__vec_dot_type(t);
        int ab = vt == SGLLM__T_Q8_K ? 256 : 32; // activation block
        double c = vt == SGLLM__T_Q8_K ? 0.51 : 0.57;
        double worst_q = 0, worst_a = 0;
        for (size_t si = 0; si < 3; si++)
            for (int rep = 0; rep < 5; rep++) {
                int64_t n = sizes[si];
                size_t wbytes = (size_t)sgllm__row_bytes(t, (uint64_t)n);
                uint8_t *w = malloc(wbytes), *wz = malloc(wbytes);
                float *x = malloc((size_t)n * 4), *wf = malloc((size_t)n * 4), *zf = malloc((size_t)n * 4);
                void *xq = malloc(sgllm__act_row_bytes(t, n));
                fill_random(t, w, n);
                fill_act(x, n);
                sgllm__dequant_row_ref(t, w, wf, n);
                memcpy(wz, w, wbytes);
                if (vt != SGLLM__T_F32) { // zero the quant bits, keep the scales
                    size_t bb = (size_t)sgllm__types[t].bytes;
                    for (size_t off = 0; off < wbytes; off += bb) {
                        size_t lo = t == SGLLM__T_Q6_K ? 0 : (t == SGLLM__T_Q4_0 || t == SGLLM__T_Q5_0 || t == SGLLM__T_Q8_0) ? 2 : 4;
                        size_t hi = t == SGLLM__T_Q6_K ? 192 : bb;
                        if (t == SGLLM__T_Q4_K || t == SGLLM__T_Q5_K) lo = 16; // keep the scales
                        memset(wz + off + lo, 0, hi - lo);
                        if (t == SGLLM__T_Q4_K || t == SGLLM__T_Q5_K) memcpy(wz + off + 4, w + off + 4, 12);
                    }
                    sgllm__dequant_row_ref(t, wz, zf, n);
                } else {
                    memset(zf, 0, (size_t)n * 4);
                }
                sgllm__quantize_act_impl(t, x, xq, n, false);
                double ref = 0, S = 0, bound = 0;
                for (int64_t b0 = 0; b0 < n; b0 += ab) {
                    float amax = 0;
                    for (int j = 0; j < ab; j++) amax = fmaxf(amax, fabsf(x[b0 + j]));
                    double dy = vt == SGLLM__T_F32 ? 0 : amax / 127.0;
                    for (int j = 0; j < ab; j++) {
                        int64_t k = b0 + j;
                        ref += (double)wf[k] * x[k];
                        S += (fabs(wf[k]) + fabs(zf[k])) * (fabs(x[k]) + dy);
                        bound += fabs(wf[k]) * c * dy;
                    }
                    if (vt == SGLLM__T_Q8_1) bound += fabs(zf[b0]) * 0x1p-10 * dy * 32 * 127;
                }
                double round = (double)(n / 32 + 8) * 0x1p-23 * S + 1e-30;
                float pc = sgllm__vec_dot_impl(t, n, w, xq, SGLLM__ISA_C);
                CHECKF(fabs(pc - ref) <= bound + round, "%s n=%lld: portable %.9g vs float %.9g (bound %.3g)",
                       sgllm__type_name(t), (long long)n, pc, ref, bound + round);
                worst_q = fmax(worst_q, fabs(pc - ref) / (bound + round));
                if (sgllm__isa() >= SGLLM__ISA_AVX2) {
                    float pa = sgllm__vec_dot_impl(t, n, w, xq, SGLLM__ISA_AVX2);
                    CHECKF(fabs(pa - pc) <= round, "%s n=%lld: avx2 %.9g vs portable %.9g (tolerance %.3g)",
                           sgllm__type_name(t), (long long)n, pa, pc, round);
                    worst_a = fmax(worst_a, fabs(pa - pc) / round);
                    if (sgllm__isa() >= SGLLM__ISA_VNNI) { // same float steps on the same exact integers
                        float pv = sgllm__vec_dot_impl(t, n, w, xq, SGLLM__ISA_VNNI);
                        CHECKF(memcmp(&pv, &pa, 4) == 0, "%s n=%lld: vnni %.9g vs avx2 %.9g", sgllm__type_name(t),
                               (long long)n, pv, pa);
                    }
                }
                free(w), free(wz), free(x), free(wf), free(zf), free(xq);
            }
        printf("  vec_dot %-5s worst |err|/bound: vs float %.3f, avx2 (= vnni) vs portable %.3f\n", sgllm__type_name(t),
               worst_q, worst_a);
    }
}

// 4. matmul on a 2-thread pool equals a loop of vec_dot exactly: the tiles run the same
// per-output arithmetic in the same order, whatever the grouping of rows and tokens. And the
// VNNI matmul equals the AVX2 one bit for bit (exact integer sums, the same float steps).
static void test_matmul(void) {
    static const int64_t toks[] = {1, 3, 7, 33};
    sgllm__pool *pool = sgllm__pool_create(2);
    CHECK(pool != NULL);
    const int64_t rows = 37, cols = 512;
    for (size_t i = 0; i < N_TYPES; i++) {
        uint32_t t = all_types[i];
        sgllm__mat w = {t, rows, cols, NULL, (size_t)sgllm__row_bytes(t, (uint64_t)cols)};
        uint8_t *wd = malloc(w.row_bytes * (size_t)rows);
        for (int64_t r = 0; r < rows; r++) fill_random(t, wd + (size_t)r * w.row_bytes, cols);
        w.data = wd;
        for (size_t ti = 0; ti < 4; ti++) {
            int64_t nt = toks[ti];
            float *x = malloc((size_t)(nt * cols) * 4), *y[3];
            size_t sb = sgllm__matmul_scratch_bytes(&w, nt), arb = sgllm__act_row_bytes(t, cols);
            void *scratch = malloc(sb ? sb : 1), *xq = malloc(arb);
            fill_act(x, nt * cols);
            for (int isa = SGLLM__ISA_C; isa <= sgllm__isa(); isa++) {
                y[isa] = malloc((size_t)(nt * rows) * 4);
                sgllm__matmul_impl(pool, &w, x, nt, y[isa], scratch, isa);
                int bad = 0;
                for (int64_t k = 0; k < nt; k++) {
                    sgllm__quantize_act_impl(t, x + k * cols, xq, cols, isa != SGLLM__ISA_C);
                    for (int64_t r = 0; r < rows; r++) {
                        float want = sgllm__vec_dot_impl(t, cols, wd + (size_t)r * w.row_bytes, xq, isa);
                        bad += memcmp(&want, &y[isa][k * rows + r], 4) != 0;
                    }
                }
                static const char *names[] = {"portable", "avx2", "vnni"};
                CHECKF(bad == 0, "%s n_tok=%lld %s: %d outputs differ from vec_dot", sgllm__type_name(t), (long long)nt,
                       names[isa], bad);
            }
            if (sgllm__isa() >= SGLLM__ISA_VNNI)
                CHECKF(memcmp(y[SGLLM__ISA_AVX2], y[SGLLM__ISA_VNNI], (size_t)(nt * rows) * 4) == 0,
                       "%s n_tok=%lld: vnni matmul differs from avx2", sgllm__type_name(t), (long long)nt);
            for (int isa = SGLLM__ISA_C; isa <= sgllm__isa(); isa++) free(y[isa]);
            free(x), free(scratch), free(xq);
        }
        free(wd);
    }
    sgllm__pool_free(pool);
}

// 5. Activation quantization: AVX2 and portable give identical bytes, including halfway
// cases (both round half to even), all-zero blocks and ties for the largest magnitude.
static void test_quantize_act(void) {
    if (!sgllm__use_avx2()) return;
    static const uint32_t reps[] = {SGLLM__T_Q8_0, SGLLM__T_Q4_1, SGLLM__T_Q4_K, SGLLM__T_F32};
    const int64_t n = 2048;
    float *x = malloc(n * 4);
    for (int rep = 0; rep < 8; rep++) {
        fill_act(x, n);
        for (int j = 0; j < 256; j++) x[j] = 0;                      // zero block
        for (int j = 256; j < 512; j++) x[j] = (float)(j % 255) - 127.f + 0.5f * (j & 1); // halves
        x[256] = 127.f;
        x[512] = -3.f, x[513] = 3.f;                                 // sign of the first max decides Q8_K
        for (size_t i = 0; i < 4; i++) {
            size_t nb = sgllm__act_row_bytes(reps[i], n);
            uint8_t *a = malloc(nb), *b = malloc(nb);
            memset(a, 0xaa, nb), memset(b, 0x55, nb);
            sgllm__quantize_act_impl(reps[i], x, a, n, false);
            sgllm__quantize_act_impl(reps[i], x, b, n, true);
            CHECKF(memcmp(a, b, nb) == 0, "quantize_act for %s: AVX2 and portable bytes differ",
                   sgllm__type_name(reps[i]));
            free(a), free(b);
        }
    }
    // Q8_K: the largest magnitude maps to -127; d is its negated value / 127
    sgllm__bq8_k q;
    float v[256] = {0};
    v[3] = 2.54f, v[9] = -2.54f, v[10] = 1.27f;
    sgllm__quantize_act_impl(SGLLM__T_Q4_K, v, &q, 256, false);
    CHECK(q.qs[3] == -127 && q.qs[9] == 127 && q.qs[10] == -64 && q.bsums[0] == -64);
    free(x);
}

static void test_traits(void) {
    CHECK(sgllm__vec_dot_type(SGLLM__T_Q5_0) == SGLLM__T_Q8_0);
    CHECK(sgllm__vec_dot_type(SGLLM__T_Q5_1) == SGLLM__T_Q8_1);
    CHECK(sgllm__vec_dot_type(SGLLM__T_Q6_K) == SGLLM__T_Q8_K);
    CHECK(sgllm__vec_dot_type(SGLLM__T_BF16) == SGLLM__T_F32);
    CHECK(sgllm__act_row_bytes(SGLLM__T_Q4_K, 512) == 2 * 292);
    CHECK(sgllm__act_row_bytes(SGLLM__T_Q4_1, 64) == 2 * 36);
    CHECK(sgllm__act_row_bytes(SGLLM__T_F16, 10) == 40);
    CHECK(sgllm__quant_supported(SGLLM__T_Q6_K) && !sgllm__quant_supported(SGLLM__T_Q2_K));
    // an unsupported type reads nothing (ASan would see a read past these 84 bytes) and gives 0
    uint8_t *q2k = malloc(84);
    float *act = malloc(256 * 4), y[256];
    memset(q2k, 0x11, 84);
    for (int i = 0; i < 256; i++) act[i] = 1;
    for (int isa = SGLLM__ISA_C; isa <= sgllm__isa(); isa++) CHECK(sgllm__vec_dot_impl(SGLLM__T_Q2_K, 256, q2k, act, isa) == 0);
    sgllm__dequant_row(SGLLM__T_Q2_K, q2k, y, 256);
    CHECK(y[0] == 0 && y[255] == 0);
    free(q2k), free(act);
}

int main(void) {
    test_seed();
    test_traits();
    test_dequant_known();
    test_dequant_fast();
    test_dequant_golden();
    test_quantize_act();
    test_vec_dot();
    test_matmul();
    return test_finish("test_quant");
}
