// tests/test_gguf.c - the GGUF reader on valid and hostile files: every truncation point,
// bad magic and versions, bad types and shapes, out-of-bounds and misaligned tensors,
// absurd counts. Each failure must be a status with a message naming the problem.
#include "../sgllm_impl.c"
#include "gguf_writer.h"
#include "test.h"

// A valid file: 4 metadata keys and two tensors (F32 {8}, Q8_0 {32, 2}).
static gw_buf make_valid(void) {
    gw_buf b = {0};
    gw_header(&b, 3, 2, 4);
    gw_kv_str(&b, "general.architecture", "llama");
    gw_kv_u32(&b, "llama.block_count", 7);
    const char *toks[] = {"a", "bc", ""};
    gw_kv_strs(&b, "tokenizer.ggml.tokens", toks, 3);
    gw_kv_f32(&b, "llama.rope.freq_base", 10000.0f);
    uint64_t ne0[] = {8}, ne1[] = {32, 2};
    gw_tensor_info(&b, "norm.weight", 1, ne0, SGLLM__T_F32, 0);
    gw_tensor_info(&b, "w.weight", 2, ne1, SGLLM__T_Q8_0, 32);
    gw_pad(&b, 32);
    for (int i = 0; i < 8; i++) gw_f32(&b, (float)i);
    gw_pad(&b, 32); // tensor 1 at offset 32 (after 32 bytes of F32)
    for (int r = 0; r < 2; r++) {
        uint16_t d = sgllm__f32_to_fp16(0.5f);
        gw_bytes(&b, &d, 2);
        for (int i = 0; i < 32; i++) {
            int8_t q = (int8_t)(i - 16 + r);
            gw_bytes(&b, &q, 1);
        }
    }
    return b;
}

static sgllm_status parse(const gw_buf *b, sgllm__diag *d) {
    sgllm__gguf g;
    sgllm_status s = sgllm__gguf_open_memory(&g, b->p, b->n, d);
    sgllm__gguf_close(&g);
    return s;
}

static void expect(const gw_buf *b, sgllm_status want, const char *needle) {
    sgllm__diag d;
    memset(&d, 0, sizeof d);
    sgllm_status s = parse(b, &d);
    CHECKF(s == want, "status %d (%s), want %d; message '%s'", s, sgllm_status_string(s), want, d.msg);
    CHECKF(strstr(d.msg, needle) != NULL, "message '%s' should mention '%s'", d.msg, needle);
}

static void test_valid(void) {
    gw_buf b = make_valid();
    sgllm__diag d;
    memset(&d, 0, sizeof d);
    sgllm__gguf g;
    CHECK(sgllm__gguf_open_memory(&g, b.p, b.n, &d) == SGLLM_OK);
    int64_t v = 0;
    CHECK(sgllm__gguf_int(&g, "llama.block_count", &v) && v == 7);
    double f = 0;
    CHECK(sgllm__gguf_float(&g, "llama.rope.freq_base", &f) && f == 10000.0);
    sgllm__str arch;
    CHECK(sgllm__gguf_string(&g, "general.architecture", &arch) && sgllm__str_eq(arch, "llama"));
    const sgllm__gguf_kv *kv = sgllm__gguf_find(&g, "tokenizer.ggml.tokens");
    CHECK(kv && kv->arr_n == 3 && sgllm__str_eq(kv->strs[1], "bc") && kv->strs[2].len == 0);
    const sgllm__tensor *t = sgllm__gguf_tensor(&g, "w.weight");
    CHECK(t && t->type == SGLLM__T_Q8_0 && t->ne[0] == 32 && t->ne[1] == 2 && t->size == 68);
    CHECK(t && t->data == b.p + g.data_offset + 32);
    const sgllm__tensor *n = sgllm__gguf_tensor(&g, "norm.weight");
    float x7;
    memcpy(&x7, n->data + 28, 4);
    CHECK(x7 == 7.0f);
    CHECK(!sgllm__gguf_tensor(&g, "absent") && !sgllm__gguf_find(&g, "absent"));
    sgllm__gguf_close(&g);
    free(b.p);
}

// Every proper prefix of a valid file is rejected as malformed, never a crash.
static void test_truncations(void) {
    gw_buf b = make_valid();
    int bad = 0;
    for (size_t n = 0; n < b.n; n++) {
        sgllm__diag d;
        memset(&d, 0, sizeof d);
        sgllm__gguf g;
        sgllm_status s = sgllm__gguf_open_memory(&g, b.p, n, &d);
        if (s != SGLLM_OK) sgllm__gguf_close(&g);
        if (s != SGLLM_ERR_FORMAT || (!strstr(d.msg, "truncated") && !strstr(d.msg, "out of bounds"))) {
            if (bad++ < 5) fprintf(stderr, "prefix %zu: status %d '%s'\n", n, s, d.msg);
        }
    }
    CHECKF(bad == 0, "%d truncated prefixes were not reported as truncated", bad);
    free(b.p);
}

static void patch_u32(gw_buf *b, size_t off, uint32_t v) { memcpy(b->p + off, &v, 4); }
static void patch_u64(gw_buf *b, size_t off, uint64_t v) { memcpy(b->p + off, &v, 8); }

static void test_header_errors(void) {
    gw_buf b = make_valid();
    b.p[0] = 'X';
    expect(&b, SGLLM_ERR_FORMAT, "bad magic");
    free(b.p);
    uint32_t versions[] = {0, 1, 4, 0x03000000};
    for (int i = 0; i < 4; i++) {
        b = make_valid();
        patch_u32(&b, 4, versions[i]);
        expect(&b, SGLLM_ERR_UNSUPPORTED, versions[i] == 0x03000000 || versions[i] == 0 ? "byte order" : "version");
        free(b.p);
    }
    b = make_valid();
    patch_u64(&b, 8, UINT64_MAX); // tensor count
    expect(&b, SGLLM_ERR_FORMAT, "truncated");
    free(b.p);
    b = make_valid();
    patch_u64(&b, 16, (uint64_t)1 << 40); // kv count
    expect(&b, SGLLM_ERR_FORMAT, "truncated");
    free(b.p);
}

static void test_metadata_errors(void) {
    gw_buf b = {0};
    gw_header(&b, 3, 0, 1);
    gw_str(&b, "k");
    gw_u32(&b, 99);
    expect(&b, SGLLM_ERR_FORMAT, "unknown value type");
    free(b.p);

    b = (gw_buf){0};
    gw_header(&b, 3, 0, 1);
    gw_str(&b, "k");
    gw_u32(&b, 9);
    gw_u32(&b, 9);
    gw_u64(&b, 1);
    expect(&b, SGLLM_ERR_FORMAT, "arrays of arrays");
    free(b.p);

    b = (gw_buf){0};
    gw_header(&b, 3, 0, 1);
    gw_str(&b, "k");
    gw_u32(&b, 9);
    gw_u32(&b, 8);
    gw_u64(&b, (uint64_t)1 << 60); // a string array the file cannot hold
    expect(&b, SGLLM_ERR_FORMAT, "truncated");
    free(b.p);

    b = (gw_buf){0};
    gw_header(&b, 3, 0, 1);
    gw_str(&b, "k");
    gw_u32(&b, 9);
    gw_u32(&b, 4);
    gw_u64(&b, (uint64_t)1 << 62); // u32 array whose byte size overflows
    expect(&b, SGLLM_ERR_FORMAT, "truncated");
    free(b.p);

    b = (gw_buf){0};
    gw_header(&b, 3, 0, 2);
    gw_kv_u32(&b, "dup", 1);
    gw_kv_u32(&b, "dup", 2);
    expect(&b, SGLLM_ERR_FORMAT, "duplicate metadata key");
    free(b.p);

    b = (gw_buf){0};
    gw_header(&b, 3, 0, 1);
    gw_kv_bool(&b, "flag", 2);
    expect(&b, SGLLM_ERR_FORMAT, "bool");
    free(b.p);

    b = (gw_buf){0};
    gw_header(&b, 3, 0, 1);
    gw_kv_u32(&b, "general.alignment", 24);
    expect(&b, SGLLM_ERR_FORMAT, "power of two");
    free(b.p);

    b = (gw_buf){0};
    gw_header(&b, 3, 0, 1);
    gw_kv_str(&b, "", "x");
    expect(&b, SGLLM_ERR_FORMAT, "empty");
    free(b.p);
}

// One tensor record with the given fields followed by `data_bytes` bytes of data.
static gw_buf one_tensor(const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t offset,
                         size_t data_bytes) {
    gw_buf b = {0};
    gw_header(&b, 3, 1, 0);
    gw_tensor_info(&b, name, n_dims, ne, type, offset);
    gw_pad(&b, 32);
    for (size_t i = 0; i < data_bytes; i++) gw_bytes(&b, "\x11", 1);
    return b;
}

static void test_tensor_errors(void) {
    uint64_t ne[] = {32, 4, 1, 1, 1};
    gw_buf b = one_tensor("t", 2, ne, SGLLM__T_Q8_0, 0, 4 * 34);
    expect(&b, SGLLM_OK, "");
    free(b.p);
    b = one_tensor("t", 2, ne, SGLLM__T_Q8_0, 0, 4 * 34 - 1);
    expect(&b, SGLLM_ERR_FORMAT, "out of bounds");
    free(b.p);
    b = one_tensor("t", 2, ne, 77, 0, 4 * 34);
    expect(&b, SGLLM_ERR_UNSUPPORTED, "unknown or unsupported type");
    free(b.p);
    b = one_tensor("t", 2, ne, 4 /* Q4_2: removed from ggml */, 0, 4 * 34);
    expect(&b, SGLLM_ERR_UNSUPPORTED, "type id 4");
    free(b.p);
    b = one_tensor("t", 5, ne, SGLLM__T_F32, 0, 1024);
    expect(&b, SGLLM_ERR_FORMAT, "dimensions");
    free(b.p);
    b = one_tensor("t", 2, ne, SGLLM__T_F32, 8, 1024);
    expect(&b, SGLLM_ERR_FORMAT, "not aligned");
    free(b.p);
    uint64_t odd[] = {31, 2};
    b = one_tensor("t", 2, odd, SGLLM__T_Q8_0, 0, 1024);
    expect(&b, SGLLM_ERR_FORMAT, "not a multiple");
    free(b.p);
    uint64_t zero[] = {0, 2};
    b = one_tensor("t", 2, zero, SGLLM__T_F32, 0, 64);
    expect(&b, SGLLM_ERR_FORMAT, "bad shape");
    free(b.p);
    uint64_t huge[] = {(uint64_t)1 << 40, (uint64_t)1 << 40};
    b = one_tensor("t", 2, huge, SGLLM__T_F32, 0, 64);
    expect(&b, SGLLM_ERR_FORMAT, "bad shape");
    free(b.p);
    uint64_t big[] = {(uint64_t)1 << 31, (uint64_t)1 << 31};
    b = one_tensor("t", 2, big, SGLLM__T_F32, 0, 64);
    expect(&b, SGLLM_ERR_FORMAT, "");
    free(b.p);
    b = one_tensor("t", 2, ne, SGLLM__T_Q8_0, UINT64_MAX - 31, 64);
    expect(&b, SGLLM_ERR_FORMAT, "out of bounds");
    free(b.p);
    char longname[80];
    memset(longname, 'n', 70);
    longname[70] = 0;
    b = one_tensor(longname, 2, ne, SGLLM__T_Q8_0, 0, 4 * 34);
    expect(&b, SGLLM_ERR_FORMAT, "name length");
    free(b.p);
    b = (gw_buf){0};
    gw_header(&b, 3, 2, 0);
    gw_tensor_info(&b, "same", 1, ne, SGLLM__T_F32, 0);
    gw_tensor_info(&b, "same", 1, ne, SGLLM__T_F32, 128);
    gw_pad(&b, 32);
    for (int i = 0; i < 64; i++) gw_f32(&b, 0);
    expect(&b, SGLLM_ERR_FORMAT, "duplicate tensor");
    free(b.p);
}

// Random byte flips of a valid file: any status is fine, crashes and leaks are not (ASan).
static void test_mutations(void) {
    gw_buf b = make_valid();
    uint8_t *copy = (uint8_t *)malloc(b.n);
    int ok = 0;
    for (int it = 0; it < 20000; it++) {
        memcpy(copy, b.p, b.n);
        int flips = 1 + (int)(test_u64() % 4);
        for (int k = 0; k < flips; k++) copy[test_u64() % b.n] = (uint8_t)test_u64();
        sgllm__diag d;
        memset(&d, 0, sizeof d);
        sgllm__gguf g;
        sgllm_status s = sgllm__gguf_open_memory(&g, copy, b.n, &d);
        if (s == SGLLM_OK) {
            ok++;
            for (uint64_t i = 0; i < g.n_tensors; i++) // every accepted tensor lies inside the buffer
                CHECK(g.tensors[i].data >= copy && g.tensors[i].data + g.tensors[i].size <= copy + b.n);
            sgllm__gguf_close(&g);
        } else {
            CHECK(d.msg[0] != 0);
        }
    }
    printf("mutations: %d of 20000 still parsed\n", ok);
    free(copy);
    free(b.p);
}

// The public loader: a missing file, a directory, an empty file, a non-model GGUF.
static void test_model_load_errors(void) {
    sgllm_model_params mp;
    sgllm_model_default_params(&mp);
    sgllm_model *m = (sgllm_model *)1;
    char err[256];
    mp.path = "/nonexistent/model.gguf";
    CHECK(sgllm_model_load(&mp, &m, err, sizeof err) == SGLLM_ERR_IO && m == NULL && strstr(err, "cannot open"));
    mp.path = "/tmp";
    CHECK(sgllm_model_load(&mp, &m, err, sizeof err) == SGLLM_ERR_IO && strstr(err, "regular file"));
    char path[64];
    snprintf(path, sizeof path, "/tmp/sgllm_test_%d.gguf", (int)getpid());
    gw_buf b = {0};
    CHECK(gw_write_file(&b, path) == 0);
    mp.path = path;
    CHECK(sgllm_model_load(&mp, &m, err, sizeof err) == SGLLM_ERR_FORMAT && strstr(err, "empty"));
    b = make_valid();
    b.p[b.n - 1] = 0;
    CHECK(gw_write_file(&b, path) == 0);
    CHECK(sgllm_model_load(&mp, &m, err, sizeof err) != SGLLM_OK && m == NULL && err[0]);
    printf("load of a non-model GGUF: %s\n", err);
    b.n -= 40; // truncate into the tensor data
    CHECK(gw_write_file(&b, path) == 0);
    CHECK(sgllm_model_load(&mp, &m, err, sizeof err) == SGLLM_ERR_FORMAT && strstr(err, "out of bounds"));
    free(b.p);
    remove(path);
    CHECK(sgllm_model_load(NULL, &m, err, sizeof err) == SGLLM_ERR_INVALID_ARGUMENT);
    mp.backend = SGLLM_BACKEND_CUDA;
    mp.path = path;
    CHECK(sgllm_model_load(&mp, &m, NULL, 0) == SGLLM_ERR_BACKEND);
    sgllm_model_free(NULL);
}

// The real files parse, with the tensor counts and shapes their metadata promises.
static void test_real_files(void) {
    const char *files[] = {TEST_GEMMA, TEST_SMOLLM};
    const uint64_t n_tensors[] = {236, 272};
    for (int i = 0; i < 2; i++) {
        char path[512];
        test_model_path(path, sizeof path, files[i]);
        sgllm__diag d;
        memset(&d, 0, sizeof d);
        sgllm__gguf g;
        sgllm_status s = sgllm__gguf_open(&g, path, &d);
        CHECKF(s == SGLLM_OK, "%s: %s (run tests/fetch_models.sh)", path, d.msg);
        if (s != SGLLM_OK) continue;
        CHECK(g.n_tensors == n_tensors[i]);
        const sgllm__tensor *t = sgllm__gguf_tensor(&g, "token_embd.weight");
        CHECK(t && t->type == SGLLM__T_Q8_0 && t->ne[1] == (i == 0 ? 262144 : 49152));
        sgllm__gguf_close(&g);
    }
}

int main(void) {
    test_seed();
    test_valid();
    test_truncations();
    test_header_errors();
    test_metadata_errors();
    test_tensor_errors();
    test_mutations();
    test_model_load_errors();
    test_real_files();
    return test_finish("test_gguf");
}
