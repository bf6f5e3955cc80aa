// tests/fuzz/fuzz_dispatch.c - libFuzzer target for the kernel-dispatch JSON reader, which
// reads configs/<device>.json and the user's kernel_config (files the library must treat as
// hostile). Build with `make fuzz`; run `build/fuzz/fuzz_dispatch tests/fuzz/corpus_dispatch`.
// Every input either applies, leaving each field inside the range the reader enforces, or is
// refused with a message and the dispatch untouched.
#include "../../sgllm_impl.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sgllm__cuda_props p;
    memset(&p, 0, sizeof p);
    snprintf(p.name, sizeof p.name, "fuzz device");
    p.major = 9, p.sm_count = 132, p.smem_per_block = 48 << 10, p.smem_per_block_optin = 227 << 10;
    sgllm__diag d;
    memset(&d, 0, sizeof d);
    sgllm__cuda_dispatch disp, before;
    if (sgllm__dispatch_select(&p, &disp, &d) != SGLLM_OK) __builtin_trap();
    before = disp;
    if (sgllm__dispatch_apply_json(&disp, (const char *)data, size, "fuzz", &d) != SGLLM_OK) {
        if (memcmp(&disp, &before, sizeof disp) || !d.msg[0]) __builtin_trap();
        return 0;
    }
    if (strcmp(disp.row, before.row) || disp.sm_count != before.sm_count) __builtin_trap();
    for (size_t f = 0; f < sizeof sgllm__dispatch_fields / sizeof sgllm__dispatch_fields[0]; f++) {
        const sgllm__dispatch_field *fd = &sgllm__dispatch_fields[f];
        const int *v = (const int *)((const char *)&disp + fd->off);
        for (int k = 0; k < fd->count; k++)
            if (v[k] < fd->lo || v[k] > fd->hi || (fd->pow2 && (v[k] & (v[k] - 1)))) __builtin_trap();
    }
    return 0;
}
