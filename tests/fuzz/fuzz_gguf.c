// tests/fuzz/fuzz_gguf.c - libFuzzer target for the GGUF reader and the model loader on top
// of it. Build with `make fuzz`; run `build/fuzz/fuzz_gguf tests/fuzz/corpus_gguf`.
// The input is parsed from memory; when it parses, every tensor must lie inside the input, and
// the whole model description (hyperparameters, vocabulary, layer descriptors) is built from it.
#include "../../sgllm_impl.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sgllm_model *m = (sgllm_model *)sgllm__calloc(1, sizeof *m);
    if (!m) return 0;
    if (sgllm__gguf_open_memory(&m->gguf, data, size, &m->diag) == SGLLM_OK) {
        for (uint64_t i = 0; i < m->gguf.n_tensors; i++) {
            const sgllm__tensor *t = &m->gguf.tensors[i];
            if (t->data < data || t->data + t->size > data + size) __builtin_trap();
        }
        sgllm__str arch;
        if (sgllm__gguf_string(&m->gguf, "general.architecture", &arch))
            for (size_t i = 0; i < sizeof sgllm__families / sizeof sgllm__families[0]; i++)
                if (sgllm__str_eq(arch, sgllm__families[i].arch)) m->family = &sgllm__families[i];
        if (m->family) {
            snprintf(m->arch, sizeof m->arch, "%s", m->family->arch);
            if (sgllm__vocab_load(&m->vocab, &m->gguf, &m->diag) == SGLLM_OK) sgllm__model_describe(m, NULL, NULL);
        }
    }
    sgllm_model_free(m); // also closes the (unmapped) GGUF view
    return 0;
}
