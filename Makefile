# sgllm - build, test, run. `make help` lists the targets.
CC      ?= cc
CFLAGS  ?= -O2 -g
WARN    := -Wall -Wextra -Wpedantic -Wshadow -Wno-unused-function -Werror
STB_INC ?= /usr/include/stb
CPPFLAGS += -I. -I$(STB_INC)
LDLIBS  := -lm -lpthread
BUILD   ?= build
MODELS  ?= $(HOME)/.cache/sgllm
GEMMA   := $(MODELS)/gemma-3-270m-q4_k_m.gguf
SMOLLM  := $(MODELS)/SmolLM2-135M-Instruct.Q4_1.gguf

EXAMPLES := $(patsubst examples/%.c,$(BUILD)/%,$(wildcard examples/*.c))
TESTS    := $(patsubst tests/%.c,$(BUILD)/%,$(wildcard tests/test_*.c))

.PHONY: all lib examples test test-unit test-golden test-asan run models fuzz format clean help
all: lib examples

help:
	@echo "make            build libsgllm.a and the examples into $(BUILD)/"
	@echo "make run        fetch the default model (Gemma 3 270M) and generate text"
	@echo "make test       unit tests, golden tests against llama.cpp, ASan+UBSan build"
	@echo "make fuzz       build the libFuzzer targets (clang) into $(BUILD)/fuzz/"
	@echo "make format     clang-format every source file"

lib: $(BUILD)/libsgllm.a
$(BUILD)/libsgllm.a: sgllm_impl.c sgllm.h
	@mkdir -p $(BUILD)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -std=c11 -c sgllm_impl.c -o $(BUILD)/sgllm_impl.o
	ar rcs $@ $(BUILD)/sgllm_impl.o

examples: $(EXAMPLES)
$(BUILD)/sgllm-%: examples/sgllm-%.c $(BUILD)/libsgllm.a
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -std=c11 $< $(BUILD)/libsgllm.a $(LDLIBS) -o $@

# Unit tests include sgllm_impl.c (white-box) and build on their own.
$(BUILD)/test_%: tests/test_%.c sgllm_impl.c sgllm.h tests/test.h
	@mkdir -p $(BUILD)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -std=c11 $< $(LDLIBS) -o $@

models:
	@tests/fetch_models.sh all

test: test-unit test-golden test-asan
	@echo "all tests passed"

test-unit: $(TESTS) models
	@set -e; for t in $(TESTS); do echo "== $$t"; SGLLM_MODELS=$(MODELS) $$t; done

test-golden: $(BUILD)/test_golden models
	SGLLM_MODELS=$(MODELS) $(BUILD)/test_golden

test-asan: models
	$(MAKE) --no-print-directory BUILD=build-asan CFLAGS="-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" test-unit

run: models examples
	$(BUILD)/sgllm-generate -m $(GEMMA) -p "Write a short poem about the sea." -n 96 --chat

fuzz:
	@mkdir -p $(BUILD)/fuzz
	@for f in tests/fuzz/fuzz_*.c; do n=$$(basename $$f .c); \
	  echo "clang $$f"; clang $(CPPFLAGS) -O1 -g -fsanitize=fuzzer,address,undefined $$f $(LDLIBS) -o $(BUILD)/fuzz/$$n || exit 1; done

format:
	clang-format -i sgllm.h sgllm_impl.c examples/*.c tests/*.c tests/*.h tests/fuzz/*.c

clean:
	rm -rf build build-asan
