// tests/gguf_writer.h - builds GGUF files in memory for tests and fuzz seeds: a growable
// byte buffer with little helpers for each field, so a test can make a valid file and then
// break exactly one thing in it.
#ifndef SGLLM_GGUF_WRITER_H
#define SGLLM_GGUF_WRITER_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct gw_buf {
    uint8_t *p;
    size_t n, cap;
} gw_buf;

static void gw_bytes(gw_buf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = (uint8_t *)realloc(b->p, b->cap);
        if (!b->p) abort(); // test helper: running out of memory ends the test program
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void gw_u32(gw_buf *b, uint32_t v) { gw_bytes(b, &v, 4); }
static void gw_u64(gw_buf *b, uint64_t v) { gw_bytes(b, &v, 8); }
static void gw_f32(gw_buf *b, float v) { gw_bytes(b, &v, 4); }
static void gw_str(gw_buf *b, const char *s) {
    gw_u64(b, strlen(s));
    gw_bytes(b, s, strlen(s));
}
static void gw_pad(gw_buf *b, size_t align) {
    static const uint8_t zero[256];
    gw_bytes(b, zero, (align - b->n % align) % align);
}
// key/value helpers (value type ids as in the GGUF spec)
static void gw_kv_u32(gw_buf *b, const char *k, uint32_t v) { gw_str(b, k); gw_u32(b, 4); gw_u32(b, v); }
static void gw_kv_f32(gw_buf *b, const char *k, float v) { gw_str(b, k); gw_u32(b, 6); gw_f32(b, v); }
static void gw_kv_bool(gw_buf *b, const char *k, int v) { uint8_t x = (uint8_t)v; gw_str(b, k); gw_u32(b, 7); gw_bytes(b, &x, 1); }
static void gw_kv_str(gw_buf *b, const char *k, const char *v) { gw_str(b, k); gw_u32(b, 8); gw_str(b, v); }
static void gw_kv_strs(gw_buf *b, const char *k, const char *const *v, uint64_t n) {
    gw_str(b, k); gw_u32(b, 9); gw_u32(b, 8); gw_u64(b, n);
    for (uint64_t i = 0; i < n; i++) gw_str(b, v[i]);
}
static void gw_kv_f32s(gw_buf *b, const char *k, const float *v, uint64_t n) {
    gw_str(b, k); gw_u32(b, 9); gw_u32(b, 6); gw_u64(b, n);
    gw_bytes(b, v, n * 4);
}
static void gw_kv_i32s(gw_buf *b, const char *k, const int32_t *v, uint64_t n) {
    gw_str(b, k); gw_u32(b, 9); gw_u32(b, 5); gw_u64(b, n);
    gw_bytes(b, v, n * 4);
}
static void gw_header(gw_buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    gw_bytes(b, "GGUF", 4);
    gw_u32(b, version);
    gw_u64(b, n_tensors);
    gw_u64(b, n_kv);
}
static void gw_tensor_info(gw_buf *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                           uint64_t offset) {
    gw_str(b, name);
    gw_u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++) gw_u64(b, ne[i]);
    gw_u32(b, type);
    gw_u64(b, offset);
}
static int gw_write_file(const gw_buf *b, const char *path) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = b->n ? fwrite(b->p, 1, b->n, f) : 0;
    return fclose(f) == 0 && w == b->n ? 0 : -1;
}
#endif
