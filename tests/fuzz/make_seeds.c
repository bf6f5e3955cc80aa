// tests/fuzz/make_seeds.c - writes the GGUF fuzz seed corpus: tiny valid models of each
// family (Q8_0 and F32 weights). Run from the repository root:
//   cc -I. -I/usr/include/stb tests/fuzz/make_seeds.c -lm -lpthread -o /tmp/make_seeds && /tmp/make_seeds
#include "../../sgllm_impl.c"
#include "../gguf_writer.h"
#include "../test.h"
#include "../tiny_model.h"

int main(void) {
    test_seed();
    tiny cfgs[] = {{"llama", 1, 0, SGLLM__T_Q8_0, 260, false, false, false},
                   {"qwen3", 1, 0, SGLLM__T_Q8_0, 260, false, false, false},
                   {"gemma3", 1, 4, SGLLM__T_Q8_0, 260, false, false, false}};
    for (int i = 0; i < 3; i++) {
        char path[128];
        snprintf(path, sizeof path, "tests/fuzz/corpus_gguf/tiny_%s_%s.seed", cfgs[i].arch,
                 sgllm__type_name((uint32_t)cfgs[i].wtype));
        build_tiny(&cfgs[i], path);
        printf("wrote %s\n", path);
    }
    return test_finish("make_seeds");
}
