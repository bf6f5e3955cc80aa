// tests/test_dispatch.c - architecture dispatch (section 8b) on fabricated device properties:
// the row chosen for every architecture and for unknown ones, fitting to shared memory, split
// counts, the log line, and the JSON override files (valid, malformed, mutated at random).
#define SGLLM_INTERNAL
#include "../sgllm_impl.c"
#include "test.h"

#include <sys/stat.h>

static sgllm__cuda_props fake(const char *name, int major, int minor, int sms, size_t smem_kb) {
    sgllm__cuda_props p;
    memset(&p, 0, sizeof p);
    snprintf(p.name, sizeof p.name, "%s", name);
    p.major = major;
    p.minor = minor;
    p.sm_count = sms;
    p.smem_per_block = 48 * 1024;
    p.smem_per_block_optin = smem_kb * 1024;
    return p;
}

// Every row on its real device: the row, and sglang's prefill tiles unchanged (they fit).
static void test_rows(void) {
    static const struct {
        const char *name;
        int major, minor, sms, smem_kb;
        const char *row;
        int bm[3], bn[3];
    } cases[] = {
        {"NVIDIA A100-SXM4-80GB", 8, 0, 108, 163, "sm80", {128, 64, 32}, {128, 64, 64}},
        {"NVIDIA GeForce RTX 3090", 8, 6, 82, 99, "sm86", {64, 64, 32}, {128, 64, 32}},
        {"NVIDIA GeForce RTX 4090", 8, 9, 128, 99, "sm89", {64, 64, 32}, {128, 64, 32}},
        {"NVIDIA H100 80GB HBM3", 9, 0, 132, 227, "sm90", {128, 64, 32}, {64, 64, 64}},
        {"NVIDIA B200", 10, 0, 148, 227, "sm100", {64, 64, 16}, {64, 64, 64}},
        {"NVIDIA GB300", 10, 3, 160, 227, "sm100", {64, 64, 16}, {64, 64, 64}},
        {"NVIDIA GeForce RTX 5090", 12, 0, 170, 99, "sm120", {64, 64, 32}, {128, 64, 32}},
        {"NVIDIA DGX Spark", 12, 1, 48, 99, "sm120", {64, 64, 32}, {128, 64, 32}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sgllm__cuda_props p = fake(cases[i].name, cases[i].major, cases[i].minor, cases[i].sms, (size_t)cases[i].smem_kb);
        sgllm__cuda_dispatch d;
        sgllm__diag dg = {0};
        CHECKF(sgllm__dispatch_select(&p, &d, &dg) == SGLLM_OK, "%s: %s", cases[i].name, dg.msg);
        CHECKF(!strcmp(d.row, cases[i].row), "%s: row %s, expected %s", cases[i].name, d.row, cases[i].row);
        CHECK(d.sm_count == cases[i].sms);
        for (int c = 0; c < 3; c++)
            CHECKF(d.prefill_block_m[c] == cases[i].bm[c] && d.prefill_block_n[c] == cases[i].bn[c],
                   "%s class %d: %dx%d", cases[i].name, c, d.prefill_block_m[c], d.prefill_block_n[c]);
        CHECK(d.matvec_warps >= 1 && d.matvec_warps <= 8 && d.matvec_max_batch >= 1 && d.matvec_max_batch <= 8);
        CHECK(d.matvec_warps_per_sm == 32);
        CHECK(d.matvec_int8 == (cases[i].major == 9 ? 3 : 1)); // the wide kernel measured on sm90 only
        CHECK(d.matvec_wide_warps_per_sm == (cases[i].major == 9 ? 16 : 32));
        CHECK(d.matvec_wide_warps_per_sm_q4 == 0); // the 4-bit types as the others unless a config says
        CHECK(d.decode_max_splits >= 1 && d.decode_block_n >= 8 && d.norm_threads % 32 == 0);
        CHECK(d.prefill_warps[0] == 4 && d.prefill_warps[1] == 8);
        CHECK(d.qknorm_per_head_max_tokens == 256);
        CHECKF(d.pdl == (cases[i].major >= 9), "%s: pdl %d", cases[i].name, d.pdl); // griddepcontrol needs sm90
        // in-kernel activation quantization off everywhere (slower on the H100); 8-byte
        // wide-kernel rows measured on the H100 only
        bool h100 = !strcmp(d.row, "sm90");
        CHECKF(d.matvec_xq_inline == 0 && d.matvec_wide_align == (h100 ? 8 : 16), "%s: %d %d",
               cases[i].name, d.matvec_xq_inline, d.matvec_wide_align);
        // the cluster merge on sm90 (measured fastest on the H100), the merge kernel elsewhere
        CHECKF(d.decode_merge == (h100 ? 2 : 1), "%s: decode_merge %d", cases[i].name, d.decode_merge);
        CHECKF(d.decode_mma == 64, "%s: decode_mma %d", cases[i].name, d.decode_mma); // mma.sync from sm80 on
        // single float matrices on the direct kernel where measured faster (the H100)
        CHECKF(d.matvec_float_direct == h100, "%s: matvec_float_direct %d", cases[i].name, d.matvec_float_direct);
        CHECKF(d.matvec_direct_split == (h100 ? 2 : 1), "%s: matvec_direct_split %d", cases[i].name, d.matvec_direct_split);
        CHECKF(d.matvec_qkv_early_kb == (h100 ? 4096 : 0), "%s: matvec_qkv_early_kb %d", cases[i].name, d.matvec_qkv_early_kb);
        // smaller tiles for 256-wide heads where measured (the H100: Gemma 3's attention fits beside the product)
        CHECKF(d.decode_block_n_wide == (h100 ? 16 : 0), "%s: decode_block_n_wide %d", cases[i].name, d.decode_block_n_wide);
        // streamed products of large single matrices where measured (the H100; bulk copies need sm90)
        CHECKF(d.matvec_stream_kb == (h100 ? 24576 : 0), "%s: matvec_stream_kb %d", cases[i].name, d.matvec_stream_kb);
        // and the wide kernel's short rows too where measured (the H100: Gemma 3's output matrix)
        CHECKF(d.matvec_stream_wide_cols == (h100 ? 1024 : 0), "%s: matvec_stream_wide_cols %d", cases[i].name,
               d.matvec_stream_wide_cols);
        // GQA groups over several blocks where measured (the H100: Gemma 3 270M's step 4.7% shorter)
        CHECKF(d.decode_group_split == h100, "%s: decode_group_split %d", cases[i].name, d.decode_group_split);
    }
}

// Devices between or beyond the rows fall back to the newest row not newer than them.
static void test_fallback(void) {
    static const struct {
        int major, minor;
        const char *row; // NULL: unsupported
    } cases[] = {{8, 7, "sm86"}, {8, 8, "sm86"}, {9, 5, "sm90"}, {11, 0, "sm100"}, {13, 0, "sm120"},
                 {15, 2, "sm120"}, {7, 5, NULL}, {6, 1, NULL}, {0, 0, NULL}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sgllm__cuda_props p = fake("Future GPU", cases[i].major, cases[i].minor, 100, 227);
        sgllm__cuda_dispatch d;
        sgllm__diag dg = {0};
        sgllm_status s = sgllm__dispatch_select(&p, &d, &dg);
        if (cases[i].row) {
            CHECKF(s == SGLLM_OK && !strcmp(d.row, cases[i].row), "%d.%d: got %s", cases[i].major, cases[i].minor, d.row);
        } else {
            CHECKF(s == SGLLM_ERR_UNSUPPORTED, "%d.%d accepted", cases[i].major, cases[i].minor);
            CHECK(strstr(dg.msg, "8.0") != NULL);
        }
    }
    CHECK(sgllm__dispatch_select(NULL, &(sgllm__cuda_dispatch){0}, NULL) == SGLLM_ERR_INVALID_ARGUMENT);
}

// Less shared memory than a row's tiles need: tiles shrink until they fit; too little fails.
static void test_smem_fit(void) {
    for (size_t kb = 8; kb <= 240; kb += 8) {
        sgllm__cuda_props p = fake("Small smem", 9, 0, 132, kb);
        p.smem_per_block = kb < 48 ? kb * 1024 : 48 * 1024;
        sgllm__cuda_dispatch d;
        sgllm__diag dg = {0};
        sgllm_status s = sgllm__dispatch_select(&p, &d, &dg);
        if (kb * 1024 < sgllm__dispatch_tile_bytes(16, 16, 512)) {
            CHECKF(s == SGLLM_ERR_UNSUPPORTED, "%zu KB accepted", kb);
            continue;
        }
        CHECKF(s == SGLLM_OK, "%zu KB: %s", kb, dg.msg);
        static const int dims[3] = {128, 256, 512};
        for (int c = 0; c < 3; c++) {
            CHECKF(sgllm__dispatch_tile_bytes(d.prefill_block_m[c], d.prefill_block_n[c], dims[c]) <= kb * 1024,
                   "%zu KB class %d: %dx%d does not fit", kb, c, d.prefill_block_m[c], d.prefill_block_n[c]);
            CHECK(d.prefill_block_m[c] >= 16 && d.prefill_block_n[c] >= 16);
            CHECK(d.prefill_block_m[c] <= 128 && d.prefill_block_n[c] <= 64); // never grows past the row
        }
    }
    // the smaller default limit counts when the opt-in limit is not reported
    sgllm__cuda_props p = fake("No opt-in", 9, 0, 132, 0);
    sgllm__cuda_dispatch d;
    CHECK(sgllm__dispatch_select(&p, &d, NULL) == SGLLM_OK);
    CHECK(sgllm__dispatch_tile_bytes(d.prefill_block_m[2], d.prefill_block_n[2], 512) <= 48 * 1024);
}

static void test_splits_and_tiles(void) {
    sgllm__cuda_props p = fake("NVIDIA H100 80GB HBM3", 9, 0, 132, 227);
    sgllm__cuda_dispatch d;
    CHECK(sgllm__dispatch_select(&p, &d, NULL) == SGLLM_OK);
    CHECK(sgllm__dispatch_decode_splits(&d, 8, 4096) == 16);   // 8 KV heads, long context: the row's maximum
    CHECK(sgllm__dispatch_decode_splits(&d, 8, 300) == 1);     // short context: one split
    CHECK(sgllm__dispatch_decode_splits(&d, 8, 1024) == 4);    // 256 keys per split at least
    CHECK(sgllm__dispatch_decode_splits(&d, 512, 65536) == 1); // the SMs are already full
    CHECK(sgllm__dispatch_decode_splits(&d, 0, 0) == 1);
    for (int i = 0; i < 2000; i++) {
        int64_t blocks = (int64_t)(test_u64() % 1000), keys = (int64_t)(test_u64() % 200000);
        int32_t s = sgllm__dispatch_decode_splits(&d, blocks, keys);
        CHECK(s >= 1 && s <= d.decode_max_splits);
        CHECK(s == 1 || (int64_t)s * d.decode_min_keys <= keys);
    }
    int bm, bn, w;
    sgllm__dispatch_prefill_tile(&d, 64, &bm, &bn, &w);
    CHECK(bm == 128 && bn == 64 && w == 4);
    sgllm__dispatch_prefill_tile(&d, 128, &bm, &bn, &w);
    CHECK(bm == 128 && bn == 64 && w == 8);
    sgllm__dispatch_prefill_tile(&d, 256, &bm, &bn, &w);
    CHECK(bm == 64 && bn == 64 && w == 8);
    sgllm__dispatch_prefill_tile(&d, 512, &bm, &bn, &w);
    CHECK(bm == 32 && bn == 64 && w == 8);

    char line[1024];
    int n = sgllm__dispatch_format(&d, &p, "configs/X.json", line, sizeof line);
    CHECK(n > 0 && (size_t)n < sizeof line);
    CHECK(strstr(line, "NVIDIA H100 80GB HBM3") && strstr(line, "row sm90 + configs/X.json") && !strchr(line, '\n'));
    CHECK(strstr(line, "128x64 (d<=128)") != NULL);
    sgllm__dispatch_format(&d, &p, NULL, line, sizeof line);
    CHECK(strstr(line, "row sm90:") && strstr(line, "programmatic dependent launch on") && strstr(line, "merged across a block cluster"));
    CHECK(strstr(line, "int8 (dp4a) activations with wide loads of 8-byte row words, 16 warps/SM (4-bit types 16), "
                       "quantized by a launch of their own"));
    CHECK(strstr(line, "decode attention on the tensor cores (head dims 16k <= 256) from 64-key splits, <= 16 splits"));
    d.decode_mma = 0;
    sgllm__dispatch_format(&d, &p, NULL, line, sizeof line);
    CHECK(strstr(line, "decode attention <= 16 splits") && !strstr(line, "tensor cores"));
    d.decode_mma = 64;
    d.matvec_wide_warps_per_sm_q4 = 20;
    sgllm__dispatch_format(&d, &p, NULL, line, sizeof line);
    CHECK(strstr(line, "16 warps/SM (4-bit types 20)"));
    // the sm90 row's attention and streaming choices, whole (no buffer of the line cuts them)
    CHECK(strstr(line, "64-key tiles (16 above 128 dims), GQA groups split over blocks, merged across a block cluster"));
    CHECK(strstr(line, "streamed where the wide kernel declines or rows have <= 1024 values;"));
    char small[16];
    n = sgllm__dispatch_format(&d, &p, NULL, small, sizeof small);
    CHECK(n > (int)sizeof small && strlen(small) == sizeof small - 1);
}

static const char *valid_json = "{\n  \"device\": \"NVIDIA H100 80GB HBM3\",\n  \"comment\": {\"why\": [1, 2.5e3, true, null]},\n"
                                "  \"matvec_warps\": 8, \"matvec_warps_per_sm\": 16, \"matvec_max_batch\": 4,\n  \"decode_max_splits\": 32,\n"
                                "  \"decode_min_keys\": 128, \"decode_block_n\": 32,\n  \"prefill_block_m\": [64, 32, 16],\n"
                                "  \"prefill_block_n\": [32, 32, 16], \"prefill_warps\": [2, 4],\n"
                                "  \"qknorm_per_head_max_tokens\": 0, \"norm_threads\": 512, \"matvec_wide_warps_per_sm\": 24, \"pdl\": 0,\n"
                                "  \"matvec_wide_warps_per_sm_q4\": 28\n}\n";

// Whether {"key": v} applied to base sets the int field at byte offset off to v.
static bool takes(const sgllm__cuda_dispatch *base, const char *key, size_t off, int v) {
    char js[96];
    snprintf(js, sizeof js, "{\"%s\": %d}", key, v);
    sgllm__cuda_dispatch d = *base;
    int got;
    if (sgllm__dispatch_apply_json(&d, js, strlen(js), "t", NULL) != SGLLM_OK) return false;
    memcpy(&got, (const char *)&d + off, sizeof got);
    return got == v;
}

static void test_json_override(void) {
    sgllm__cuda_props p = fake("NVIDIA H100 80GB HBM3", 9, 0, 132, 227);
    sgllm__cuda_dispatch base, d;
    CHECK(sgllm__dispatch_select(&p, &base, NULL) == SGLLM_OK);
    d = base;
    sgllm__diag dg = {0};
    CHECKF(sgllm__dispatch_apply_json(&d, valid_json, strlen(valid_json), "t", &dg) == SGLLM_OK, "%s", dg.msg);
    CHECK(d.matvec_warps == 8 && d.matvec_warps_per_sm == 16 && d.matvec_max_batch == 4 && d.decode_max_splits == 32 && d.decode_min_keys == 128);
    CHECK(d.decode_block_n == 32 && d.prefill_block_m[0] == 64 && d.prefill_block_m[2] == 16);
    CHECK(d.prefill_block_n[1] == 32 && d.prefill_warps[0] == 2 && d.prefill_warps[1] == 4);
    CHECK(d.qknorm_per_head_max_tokens == 0 && d.norm_threads == 512 && d.pdl == 0 && base.pdl == 1);
    CHECK(d.matvec_wide_warps_per_sm == 24 && base.matvec_wide_warps_per_sm == 16);
    CHECK(d.matvec_wide_warps_per_sm_q4 == 28 && base.matvec_wide_warps_per_sm_q4 == 0);
    CHECK(!strcmp(d.row, "sm90") && d.sm_count == 132); // not overridable
    // a partial file changes only what it names
    d = base;
    const char *partial = "{\"norm_threads\": 128}";
    CHECK(sgllm__dispatch_apply_json(&d, partial, strlen(partial), "t", NULL) == SGLLM_OK);
    CHECK(d.norm_threads == 128);
    d.norm_threads = base.norm_threads;
    CHECK(!memcmp(&d, &base, sizeof d));
    // the in-kernel quantization threshold over its range, the wide kernel's row words 8, 16
    for (int v = 0; v <= 32768; v += 4096) {
        char js[96];
        snprintf(js, sizeof js, "{\"matvec_xq_inline\": %d, \"matvec_wide_align\": %d}", v, 8 << (v / 4096 % 2));
        d = base;
        CHECK(sgllm__dispatch_apply_json(&d, js, strlen(js), "t", NULL) == SGLLM_OK && d.matvec_xq_inline == v &&
              d.matvec_wide_align == 8 << (v / 4096 % 2));
    }
    // every matrix-vector variant (0 fp32 activations, 1 staged, 2 direct, 3 wide loads) is accepted
    for (int v = 0; v <= 3; v++) CHECK(takes(&base, "matvec_int8", offsetof(sgllm__cuda_dispatch, matvec_int8), v));
    // the three decode-attention merges (0 in the split kernel, 1 the merge kernel, 2 a cluster)
    for (int v = 0; v <= 2; v++) CHECK(takes(&base, "decode_merge", offsetof(sgllm__cuda_dispatch, decode_merge), v));
    // decode attention on the CUDA cores or the tensor cores (from splits of v keys)
    for (int v = 0; v <= 1024; v += 256) CHECK(takes(&base, "decode_mma", offsetof(sgllm__cuda_dispatch, decode_mma), v));
    // single float matrices on the direct kernel or the float kernel, and its warps per float row
    for (int v = 0; v <= 1; v++)
        CHECK(takes(&base, "matvec_float_direct", offsetof(sgllm__cuda_dispatch, matvec_float_direct), v));
    for (int v = 1; v <= 4; v *= 2)
        CHECK(takes(&base, "matvec_direct_split", offsetof(sgllm__cuda_dispatch, matvec_direct_split), v));
    // q/k/v products that let attention launch before their wait, up to v KiB of weights
    for (int v = 0; v <= 1 << 20; v += 1 << 18)
        CHECK(takes(&base, "matvec_qkv_early_kb", offsetof(sgllm__cuda_dispatch, matvec_qkv_early_kb), v));
    // tile keys above 128 dims: 0 (decode_block_n) or a power of two up to 128
    CHECK(takes(&base, "decode_block_n_wide", offsetof(sgllm__cuda_dispatch, decode_block_n_wide), 0));
    for (int v = 8; v <= 128; v *= 2)
        CHECK(takes(&base, "decode_block_n_wide", offsetof(sgllm__cuda_dispatch, decode_block_n_wide), v));
    // streamed single matrices from v KiB (0: never)
    for (int v = 0; v <= 1 << 22; v += 1 << 20)
        CHECK(takes(&base, "matvec_stream_kb", offsetof(sgllm__cuda_dispatch, matvec_stream_kb), v));
    for (int v = 0; v <= 4096; v += 512)
        CHECK(takes(&base, "matvec_stream_wide_cols", offsetof(sgllm__cuda_dispatch, matvec_stream_wide_cols), v));
    for (int v = 0; v <= 1; v++)
        CHECK(takes(&base, "decode_group_split", offsetof(sgllm__cuda_dispatch, decode_group_split), v));
    d = base;
    const char *empty = " { } ";
    CHECK(sgllm__dispatch_apply_json(&d, empty, strlen(empty), "t", NULL) == SGLLM_OK && !memcmp(&d, &base, sizeof d));

    static const struct {
        const char *text, *msg; // msg: a part of the expected error message
    } bad[] = {
        {"", "expected '{'"},
        {"[]", "expected '{'"},
        {"{", "expected '\"'"},
        {"{\"matvec_warps\": 4", "expected ','"},
        {"{\"matvec_warps\" 4}", "expected ':'"},
        {"{\"matvec_wraps\": 4}", "unknown key 'matvec_wraps'"},
        {"{\"matvec_warps\": 4, \"matvec_warps\": 2}", "repeated key"},
        {"{\"matvec_warps\": 0}", "must be an integer in [1, 8]"},
        {"{\"matvec_warps\": 9}", "[1, 8]"},
        {"{\"matvec_warps\": -1}", "[1, 8]"},
        {"{\"matvec_warps\": 2.0}", "must be an integer"},
        {"{\"matvec_warps\": 2e0}", "must be an integer"},
        {"{\"matvec_warps\": 02}", "leading zero"},
        {"{\"matvec_warps\": 99999999999999999999999}", "must be an integer"},
        {"{\"matvec_warps\": \"4\"}", "expected a number"},
        {"{\"matvec_warps\": 4,}", "expected '\"'"},
        {"{\"matvec_warps\": 4} x", "trailing data"},
        {"{\"matvec_warps\": 4}{}", "trailing data"},
        {"{\"decode_block_n\": 48}", "power of two"},
        {"{\"norm_threads\": 100}", "multiple of 32"},
        {"{\"pdl\": 2}", "[0, 1]"},
        {"{\"decode_merge\": 3}", "[0, 2]"},
        {"{\"decode_merge\": -1}", "[0, 2]"},
        {"{\"decode_mma\": 65537}", "[0, 65536]"},
        {"{\"decode_mma\": -1}", "[0, 65536]"},
        {"{\"matvec_float_direct\": 2}", "[0, 1]"},
        {"{\"matvec_direct_split\": 0}", "[1, 4]"},
        {"{\"matvec_direct_split\": 3}", "power of two"},
        {"{\"matvec_direct_split\": 5}", "[1, 4]"},
        {"{\"matvec_qkv_early_kb\": -1}", "[0, 1048576]"},
        {"{\"matvec_stream_kb\": -1}", "[0, 4194304]"},
        {"{\"matvec_stream_kb\": 4194305}", "[0, 4194304]"},
        {"{\"matvec_stream_wide_cols\": 4097}", "[0, 4096]"},
        {"{\"matvec_stream_wide\": 1}", "unknown"},
        {"{\"decode_group_split\": 2}", "[0, 1]"},
        {"{\"decode_group_split\": -1}", "[0, 1]"},
        {"{\"decode_block_n_wide\": 24}", "power of two"},
        {"{\"decode_block_n_wide\": 256}", "[0, 128]"},
        {"{\"matvec_int8\": 4}", "[0, 3]"},
        {"{\"matvec_int8\": -1}", "[0, 3]"},
        {"{\"matvec_wide_warps_per_sm\": 0}", "[1, 64]"},
        {"{\"matvec_wide_warps_per_sm_q4\": 65}", "[0, 64]"},
        {"{\"matvec_xq_inline\": 32769}", "[0, 32768]"},
        {"{\"matvec_xq_inline\": -1}", "[0, 32768]"},
        {"{\"matvec_wide_align\": 12}", "power of two"},
        {"{\"matvec_wide_align\": 4}", "[8, 16]"},
        {"{\"matvec_wide_align\": 32}", "[8, 16]"},
        {"{\"prefill_block_m\": [64, 64]}", "expected ','"},
        {"{\"prefill_block_m\": [64, 64, 32, 16]}", "exactly 3 values"},
        {"{\"prefill_block_m\": 64}", "expected '['"},
        {"{\"prefill_warps\": [4, 8.5]}", "must be an integer"},
        {"{\"device\": 5}", "expected '\"'"},
        {"{\"device\": \"abc}", "unterminated string"},
        {"{\"device\": \"a\tb\"}", "control character"},
        {"{\"device\": \"a\\qb\"}", "unknown escape"},
        {"{\"device\": \"a\\u12\"}", "bad \\u escape"},
        {"{\"device\": \"a\\u1", "short \\u escape"},
        {"{\"matvec_warps\\u0000\": 4}", "unknown key"},
        {"{\"comment\": [1, 2,]}", "expected a number"},
        {"{\"comment\": tru}", "expected a number"},
        {"{\"comment\": -}", "expected a number"},
        {"{\"comment\": 1.}", "digits must follow '.'"},
        {"{\"comment\": 1e+}", "digits must follow the exponent"},
        {"{\"comment\": {\"a\" 1}}", "expected ':'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        d = base;
        memset(&dg, 0, sizeof dg);
        sgllm_status s = sgllm__dispatch_apply_json(&d, bad[i].text, strlen(bad[i].text), "cfg.json", &dg);
        CHECKF(s == SGLLM_ERR_FORMAT, "accepted: %s", bad[i].text);
        CHECKF(strstr(dg.msg, bad[i].msg) && strstr(dg.msg, "cfg.json"), "%s: message '%s'", bad[i].text, dg.msg);
        CHECK(!memcmp(&d, &base, sizeof d)); // unchanged on error
    }
    // nesting is limited, not recursed without bound
    char deep[200];
    int n = snprintf(deep, sizeof deep, "{\"comment\": ");
    for (int k = 0; k < 40; k++) deep[n++] = '[';
    deep[n] = 0;
    memset(&dg, 0, sizeof dg);
    CHECK(sgllm__dispatch_apply_json(&d, deep, strlen(deep), "t", &dg) == SGLLM_ERR_FORMAT && strstr(dg.msg, "too deep"));
    // the text is read only inside its length: no NUL terminator needed
    char nonul[] = {'{', '}', 'x'};
    CHECK(sgllm__dispatch_apply_json(&d, nonul, 2, "t", NULL) == SGLLM_OK);

    // random mutations of a valid file: never a crash, an error or an in-range result
    size_t len = strlen(valid_json);
    char *buf = (char *)malloc(len);
    int ok = 0;
    for (int it = 0; it < 20000; it++) {
        memcpy(buf, valid_json, len);
        int edits = 1 + (int)(test_u64() % 4);
        size_t cut = len;
        for (int e = 0; e < edits; e++) {
            size_t at = (size_t)(test_u64() % len);
            switch (test_u64() % 3) {
            case 0: buf[at] = (char)(test_u64() & 255); break;
            case 1: buf[at] = "{}[],:\"\\0123456789-+.eE tfn"[test_u64() % 27]; break;
            default: cut = at; break;
            }
        }
        d = base;
        sgllm_status s = sgllm__dispatch_apply_json(&d, buf, cut, "fuzz", NULL);
        CHECK(s == SGLLM_OK || s == SGLLM_ERR_FORMAT);
        if (s == SGLLM_OK) {
            ok++;
            CHECK(d.matvec_warps >= 1 && d.matvec_warps <= 8 && d.norm_threads % 32 == 0 && d.norm_threads >= 32);
            CHECK(d.decode_block_n >= 8 && !(d.decode_block_n & (d.decode_block_n - 1)));
        } else {
            CHECK(!memcmp(&d, &base, sizeof d));
        }
    }
    printf("json mutations: %d of 20000 still valid\n", ok);
    free(buf);
}

static void test_config_files(void) {
    sgllm__cuda_props p = fake("NVIDIA H100 80GB HBM3", 9, 0, 132, 227);
    sgllm__cuda_dispatch base, d;
    CHECK(sgllm__dispatch_select(&p, &base, NULL) == SGLLM_OK);
    char path[512];
    bool applied = true;
    sgllm__diag dg = {0};

    // the committed example for the H100 loads (tests run from the repository root)
    d = base;
    CHECKF(sgllm__dispatch_load_config(&d, "configs", p.name, path, sizeof path, &applied, &dg) == SGLLM_OK, "%s", dg.msg);
    CHECK(applied && !strcmp(path, "configs/NVIDIA_H100_80GB_HBM3.json"));
    // and the H200's, which changes the sm90 row (measured: docs/PERF.md)
    sgllm__cuda_props p200 = fake("NVIDIA H200", 9, 0, 132, 227);
    sgllm__cuda_dispatch base200;
    CHECK(sgllm__dispatch_select(&p200, &base200, NULL) == SGLLM_OK);
    d = base200;
    CHECKF(sgllm__dispatch_load_config(&d, "configs", p200.name, path, sizeof path, &applied, &dg) == SGLLM_OK, "%s", dg.msg);
    CHECK(applied && !strcmp(path, "configs/NVIDIA_H200.json") && !strcmp(d.row, "sm90"));
    CHECK(d.decode_min_keys == 16 && base200.decode_min_keys != 16 && d.matvec_wide_warps_per_sm_q4 == 20);

    char dir[] = "/tmp/sgllm_dispatch_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    d = base;
    CHECK(sgllm__dispatch_load_config(&d, dir, "Fake GPU 1", path, sizeof path, &applied, NULL) == SGLLM_OK);
    CHECK(!applied && !memcmp(&d, &base, sizeof d)); // no file: the table stands

    char file[600];
    snprintf(file, sizeof file, "%s/Fake_GPU_1.json", dir);
    FILE *f = fopen(file, "wb");
    CHECK(f != NULL);
    if (f) {
        fputs("{\"matvec_warps\": 2, \"decode_max_splits\": 4}", f);
        fclose(f);
    }
    CHECK(sgllm__dispatch_load_config(&d, dir, "Fake GPU 1", path, sizeof path, &applied, NULL) == SGLLM_OK);
    CHECK(applied && d.matvec_warps == 2 && d.decode_max_splits == 4 && !strcmp(path, file));

    f = fopen(file, "wb");
    if (f) {
        fputs("{\"matvec_warps\": 2,", f);
        fclose(f);
    }
    d = base;
    memset(&dg, 0, sizeof dg);
    CHECK(sgllm__dispatch_load_config(&d, dir, "Fake GPU 1", path, sizeof path, &applied, &dg) == SGLLM_ERR_FORMAT);
    CHECK(!applied && !memcmp(&d, &base, sizeof d) && strstr(dg.msg, "Fake_GPU_1.json"));
    remove(file);

    // hostile names stay inside the directory
    CHECK(sgllm__dispatch_config_path("configs", "../../etc/passwd", path, sizeof path));
    CHECK(strncmp(path, "configs/", 8) == 0 && !strchr(path + 8, '/') && strncmp(path + 8, "..", 2) != 0);
    CHECK(!sgllm__dispatch_config_path("configs", "", path, sizeof path));
    char tiny[12];
    CHECK(!sgllm__dispatch_config_path("configs", "NVIDIA H100", tiny, sizeof tiny));
    rmdir(dir);
}

int main(void) {
    test_seed();
    test_rows();
    test_fallback();
    test_smem_fit();
    test_splits_and_tiles();
    test_json_override();
    test_config_files();
    return test_finish("test_dispatch");
}
