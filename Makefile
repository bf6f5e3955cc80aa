# sgllm - build, test, run. `make help` lists the targets.
CC      ?= cc
CXX     ?= c++
CFLAGS  ?= -O2 -g
WARN    := -Wall -Wextra -Wpedantic -Wshadow -Wno-unused-function -Werror
STB_INC ?= /usr/include/stb
CPPFLAGS += -I. -I$(STB_INC)
LDLIBS  := -lm -lpthread
BUILD   ?= build
MODELS  ?= $(HOME)/.cache/sgllm
GEMMA   := $(MODELS)/gemma-3-270m-q4_k_m.gguf
SMOLLM  := $(MODELS)/SmolLM2-135M-Instruct.Q4_1.gguf

# CUDA backend (sgllm_cuda.cu): built when nvcc is found; CUDA=0 turns it off. The GPU
# programs (tests/test_gpu.c, examples/sgllm-bench-kernels.c) build only with it.
NVCC       ?= $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))
CUDA       ?= $(if $(NVCC),1,0)
CUDA_HOME  ?= $(patsubst %/bin/nvcc,%,$(NVCC))
# Machine code for every architecture row of the dispatch table, plus PTX of the newest for
# devices that come later (the driver compiles it at load).
CUDA_ARCHS ?= 80 86 89 90a 100a 120
CUDA_PTX   ?= 120
NVCCFLAGS  ?= -O3
CUDA_GENCODE := $(foreach a,$(CUDA_ARCHS),-gencode=arch=compute_$(a),code=sm_$(a)) \
                $(foreach a,$(CUDA_PTX),-gencode=arch=compute_$(a),code=compute_$(a))
CUDA_LIBS  := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++ -ldl -lrt
GPU_PROGS  := $(BUILD)/test_gpu $(BUILD)/test_gpu_model $(BUILD)/sgllm-bench-kernels
# With CUDA the library holds both translation units and sgllm_impl.c selects the backend at
# load (-DSGLLM_CUDA); programs linking it need the CUDA runtime and cuBLAS.
ifeq ($(CUDA),1)
LIB_DEFS := -DSGLLM_CUDA
LIB_OBJS := $(BUILD)/sgllm_impl.o $(BUILD)/sgllm_cuda.o
LIB_LIBS := $(CUDA_LIBS)
else
LIB_DEFS :=
LIB_OBJS := $(BUILD)/sgllm_impl.o
LIB_LIBS :=
endif

EXAMPLES := $(patsubst examples/%.c,$(BUILD)/%,$(filter-out examples/sgllm-bench-kernels.c,$(wildcard examples/*.c)))
TESTS    := $(patsubst tests/%.c,$(BUILD)/%,$(filter-out tests/test_golden.c tests/test_gpu.c tests/test_gpu_model.c,$(wildcard tests/test_*.c)))

.PHONY: all lib examples test test-header test-unit test-golden test-asan run models fuzz fuzz-smoke format clean help \
        cuda-compile test-gpu bench-gpu timeline
ifeq ($(CUDA),1)
all: lib examples cuda-compile
else
all: lib examples
endif

help:
	@echo "make            build libsgllm.a and the examples into $(BUILD)/"
	@echo "make run        fetch the default model (Gemma 3 270M) and generate text"
	@echo "make test       unit tests, golden tests against llama.cpp, ASan+UBSan build"
	@echo "make fuzz       build the libFuzzer targets (clang) into $(BUILD)/fuzz/"
	@echo "make format     clang-format every source file"
	@echo "make test-gpu   build and run the GPU kernel tests (needs nvcc and a GPU; CUDA_ARCHS=90a builds one target)"
	@echo "make bench-gpu  kernel benchmarks: bandwidth, cuBLAS rate, decode matvec, prefill GEMM"
	@echo "make timeline   profiling build: build-timeline/sgllm-bench-kernels --timeline [KEYS] (decode step by kernel)"

lib: $(BUILD)/libsgllm.a
$(BUILD)/libsgllm.a: $(LIB_OBJS)
	rm -f $@
	ar rcs $@ $(LIB_OBJS)
$(BUILD)/sgllm_impl.o: sgllm_impl.c sgllm.h
	@mkdir -p $(BUILD)
	$(CC) $(CPPFLAGS) $(LIB_DEFS) $(CFLAGS) $(WARN) -std=c11 -c sgllm_impl.c -o $@

examples: $(EXAMPLES)
$(BUILD)/sgllm-%: examples/sgllm-%.c $(BUILD)/libsgllm.a
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -std=c11 $< $(BUILD)/libsgllm.a $(LIB_LIBS) $(LDLIBS) -o $@

# Unit tests include sgllm_impl.c (white-box) and build on their own.
$(BUILD)/test_%: tests/test_%.c sgllm_impl.c sgllm.h $(wildcard tests/*.h)
	@mkdir -p $(BUILD)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -std=c11 $< $(LDLIBS) -o $@

# The CUDA translation unit and the programs that link it. Compiled by `make test` wherever
# nvcc exists (CI has no GPU: it compiles and links, test-gpu runs them on a GPU machine).
$(BUILD)/sgllm_cuda.o: sgllm_cuda.cu sgllm.h
	@mkdir -p $(BUILD)
	$(NVCC) $(NVCCFLAGS) $(TIMELINE) -std=c++17 -I. -Xcompiler -Wall,-Wextra,-Werror $(CUDA_GENCODE) -c sgllm_cuda.cu -o $@

$(BUILD)/test_gpu: tests/test_gpu.c sgllm_impl.c sgllm.h tests/test.h $(BUILD)/sgllm_cuda.o
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -std=c11 $< $(BUILD)/sgllm_cuda.o $(CUDA_LIBS) $(LDLIBS) -o $@

# The model on both backends through the public API (tiny synthetic models, and the real ones
# when SGLLM_MODELS holds them).
$(BUILD)/test_gpu_model: tests/test_gpu_model.c sgllm_impl.c sgllm.h $(wildcard tests/*.h) $(BUILD)/sgllm_cuda.o
	$(CC) $(CPPFLAGS) -DSGLLM_CUDA $(CFLAGS) $(WARN) -std=c11 $< $(BUILD)/sgllm_cuda.o $(CUDA_LIBS) $(LDLIBS) -o $@

$(BUILD)/sgllm-bench-kernels: examples/sgllm-bench-kernels.c sgllm_impl.c sgllm.h $(BUILD)/sgllm_cuda.o
	$(CC) $(CPPFLAGS) -DSGLLM_CUDA $(TIMELINE) $(CFLAGS) $(WARN) -std=c11 $< $(BUILD)/sgllm_cuda.o $(CUDA_LIBS) $(LDLIBS) -o $@

# The profiling build of sgllm-bench-kernels (--timeline): every kernel stamps the time its PDL
# wait returns (a few instructions and a global counter per launch; never in the library build).
timeline:
	$(MAKE) --no-print-directory BUILD=build-timeline TIMELINE=-DSGLLM_TIMELINE build-timeline/sgllm-bench-kernels

cuda-compile: $(GPU_PROGS)

test-gpu: $(BUILD)/test_gpu $(BUILD)/test_gpu_model
	$(BUILD)/test_gpu
	SGLLM_MODELS=$(MODELS) $(BUILD)/test_gpu_model

bench-gpu: $(BUILD)/sgllm-bench-kernels
	$(BUILD)/sgllm-bench-kernels

models:
	@tests/fetch_models.sh all

ifeq ($(CUDA),1)
test: cuda-compile
endif
test: test-header test-unit test-golden test-asan fuzz-smoke
	@echo "all tests passed"

# The public header must compile as C99, C11 and C++; the library as a user compiles it
# (no optimization, all warnings, gcc and clang: inline assembly and target attributes behave
# differently without optimization).
test-header:
	@mkdir -p $(BUILD)
	$(CC) $(CPPFLAGS) -std=c11 -O0 -Wall -Wextra -Wpedantic -Werror -c sgllm_impl.c -o $(BUILD)/o0.o
	clang $(CPPFLAGS) -std=c11 -O0 -Wall -Wextra -Wpedantic -Werror -c sgllm_impl.c -o $(BUILD)/o0.o
	printf '#include "sgllm.h"\nint main(void) { return sgllm_status_string(SGLLM_OK) == 0; }\n' > $(BUILD)/header.c
	$(CC) -I. -std=c99 -Wall -Wextra -Wpedantic -Werror -fsyntax-only $(BUILD)/header.c
	$(CC) -I. -std=c11 -Wall -Wextra -Wpedantic -Werror -fsyntax-only $(BUILD)/header.c
	$(CXX) -I. -std=c++11 -Wall -Wextra -Wpedantic -Werror -fsyntax-only -x c++ $(BUILD)/header.c

test-unit: $(TESTS) models
	@set -e; for t in $(TESTS); do echo "== $$t"; SGLLM_MODELS=$(MODELS) $$t; done

test-golden: $(BUILD)/test_golden models
	SGLLM_MODELS=$(MODELS) $(BUILD)/test_golden

# shift-base is left out: stb_ds's byte hash shifts bytes promoted to int (d[3] << 24), which
# UBSan flags although every compiler we target gives the intended result.
test-asan: models
	$(MAKE) --no-print-directory BUILD=build-asan CFLAGS="-O1 -g -fsanitize=address,undefined -fno-sanitize=shift-base -fno-sanitize-recover=all -fno-omit-frame-pointer" test-unit

run: models examples
	$(BUILD)/sgllm-generate -m $(GEMMA) -p "Once upon a time, in a village by the sea," -n 96

# A short run of every fuzz target over its seed corpus (the long runs are done by hand).
fuzz-smoke: fuzz models
	@for f in tests/fuzz/fuzz_*.c; do n=$$(basename $$f .c); c=tests/fuzz/corpus_$${n#fuzz_}; \
	  echo "== $$n (30 s)"; mkdir -p $(BUILD)/fuzz/$$n.corpus; \
	  SGLLM_MODELS=$(MODELS) $(BUILD)/fuzz/$$n -max_total_time=30 -artifact_prefix=$(BUILD)/fuzz/ $(BUILD)/fuzz/$$n.corpus $$c > $(BUILD)/fuzz/$$n.log 2>&1 \
	    || { tail -40 $(BUILD)/fuzz/$$n.log; exit 1; }; grep -E "^#[0-9]+ +DONE" $(BUILD)/fuzz/$$n.log || tail -2 $(BUILD)/fuzz/$$n.log; done

fuzz:
	@mkdir -p $(BUILD)/fuzz
	@for f in tests/fuzz/fuzz_*.c; do n=$$(basename $$f .c); \
	  echo "clang $$f"; clang $(CPPFLAGS) -O1 -g -fsanitize=fuzzer,address,undefined $$f $(LDLIBS) -o $(BUILD)/fuzz/$$n || exit 1; done

format:
	clang-format -i sgllm.h sgllm_impl.c examples/*.c tests/*.c tests/*.h tests/fuzz/*.c

clean:
	rm -rf build build-asan build-timeline
