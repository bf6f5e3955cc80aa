/* sgllm.h - an embeddable LLM inference engine in C: GGUF models on the CPU (and NVIDIA GPUs).

   QUICK START

       #include "sgllm.h"
       #include <stdio.h>

       static int print_piece(void *user, const char *piece, size_t len) {
           (void)user; fwrite(piece, 1, len, stdout); fflush(stdout);
           return 0;                                   // nonzero stops the generation
       }

       int main(void) {
           sgllm_model_params mp; sgllm_model_default_params(&mp);
           mp.path = "gemma-3-270m-q4_k_m.gguf";
           sgllm_model *model; char err[256];
           if (sgllm_model_load(&mp, &model, err, sizeof err) != SGLLM_OK) { puts(err); return 1; }
           sgllm_context_params cp; sgllm_context_default_params(&cp);
           sgllm_context *ctx;
           if (sgllm_context_create(model, &cp, &ctx) != SGLLM_OK) return 1;
           sgllm_generate_params gp; sgllm_generate_default_params(&gp);
           gp.max_tokens = 64; gp.on_piece = print_piece;
           sgllm_generate(ctx, "The capital of France is", &gp, NULL);
           sgllm_context_free(ctx);
           sgllm_model_free(model);
           return 0;
       }

   Build: compile sgllm_impl.c (and, with CUDA, sgllm_cuda.cu) into your program, link with
   -lpthread -lm. The Makefile builds libsgllm.a and the examples.

   CONTENTS
       1. Conventions: status codes, errors, ownership, threads, logging
       2. Models: load, free, getters (2b: backend and kernel dispatch; 2c: synthetic models)
       3. Tokenizer
       4. Contexts and the low-level evaluate call
       5. Sampler
       6. Generate
       7. Chat templates

   THREADING AND OWNERSHIP
       A model is immutable after sgllm_model_load and may be shared by any number of contexts
       on any threads. A context (and a sampler) must be driven by one thread at a time.
       Free every context of a model before the model. Every _free accepts NULL.
       Strings the library returns are borrowed: they stay valid as long as the handle they
       came from, unless a prototype says otherwise.

   ERRORS
       Every fallible call returns an sgllm_status. The library never prints, exits or aborts:
       calls that fail on a context leave a message readable with sgllm_context_errmsg();
       sgllm_model_load writes its message into the caller's buffer; both also go to the log
       callback given in the params (if any).

   COMPILE-TIME OPTIONS (when building sgllm_impl.c)
       SGLLM_MALLOC / SGLLM_REALLOC / SGLLM_FREE   replace the allocator (define all three)
       SGLLM_ASSERT(x)                             internal invariant check (default: none)
       SGLLM_CUDA                                  build with the CUDA backend (sgllm_cuda.cu)
*/
#ifndef SGLLM_H
#define SGLLM_H

#include <stddef.h>
#include <stdint.h>

#define SGLLM_VERSION_MAJOR 0
#define SGLLM_VERSION_MINOR 1
#define SGLLM_VERSION_PATCH 0
#define SGLLM_VERSION_STRING "0.1.0"

#ifndef SGLLM_API
#if defined(_WIN32) && defined(SGLLM_SHARED)
#define SGLLM_API __declspec(dllexport)
#else
#define SGLLM_API
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------
   1. Conventions
   --------------------------------------------------------------------------------------- */

typedef enum sgllm_status {
    SGLLM_OK = 0,
    SGLLM_ERR_INVALID_ARGUMENT = 1, // a NULL handle, a bad parameter value, a token out of range
    SGLLM_ERR_IO = 2,               // the file cannot be opened, read or mapped
    SGLLM_ERR_FORMAT = 3,           // the file is malformed: truncated, bad magic, out of bounds...
    SGLLM_ERR_UNSUPPORTED = 4,      // well-formed, but a feature sgllm lacks (version, type, arch)
    SGLLM_ERR_OUT_OF_MEMORY = 5,    // an allocation failed; the handle is unchanged
    SGLLM_ERR_CANCELLED = 6,        // a progress callback asked to stop
    SGLLM_ERR_BUFFER_TOO_SMALL = 7, // the output did not fit; the needed size was still reported
    SGLLM_ERR_CONTEXT_FULL = 8,     // the tokens do not fit in the context's remaining length
    SGLLM_ERR_NO_TEMPLATE = 9,      // the model's chat template is missing or not one sgllm knows
    SGLLM_ERR_BACKEND = 10          // the requested backend is not built in or has no device
} sgllm_status;

SGLLM_API const char *sgllm_status_string(sgllm_status status); // static text, never NULL
SGLLM_API const char *sgllm_version(void);                      // SGLLM_VERSION_STRING

typedef enum sgllm_log_level {
    SGLLM_LOG_ERROR = 0,
    SGLLM_LOG_WARN = 1,
    SGLLM_LOG_INFO = 2,
    SGLLM_LOG_DEBUG = 3
} sgllm_log_level;

// Receives every message the library emits. msg is one line without '\n', valid only during
// the call. Called on the thread that made the library call.
typedef void (*sgllm_log_fn)(void *user_data, sgllm_log_level level, const char *msg);

// Load progress in [0, 1]; return nonzero to cancel the load (it then fails with
// SGLLM_ERR_CANCELLED and frees everything it made).
typedef int (*sgllm_progress_fn)(void *user_data, float progress);

typedef int32_t sgllm_token;

/* ---------------------------------------------------------------------------------------
   2. Models
   --------------------------------------------------------------------------------------- */

typedef struct sgllm_model sgllm_model; // opaque; immutable after load

typedef enum sgllm_backend {
    SGLLM_BACKEND_AUTO = 0, // CUDA when built in and a device exists, else the CPU
    SGLLM_BACKEND_CPU = 1,
    SGLLM_BACKEND_CUDA = 2
} sgllm_backend;

typedef struct sgllm_model_params {
    size_t struct_size;          // set by sgllm_model_default_params; lets the struct grow
    const char *path;            // GGUF file; borrowed for the duration of the load call
    sgllm_backend backend;       // default SGLLM_BACKEND_AUTO
    int n_threads;               // threads for load-time work; 0 = all cores
    sgllm_progress_fn progress;  // optional
    void *progress_user_data;
    sgllm_log_fn log;            // optional; also used by the model's contexts unless they set one
    void *log_user_data;
    sgllm_log_level log_level;   // messages above this level are not emitted (default INFO)
    const char *kernel_config;   // optional path of a CUDA kernel-dispatch JSON file applied last (see 2b); borrowed
} sgllm_model_params;

SGLLM_API void sgllm_model_default_params(sgllm_model_params *params);

// Loads a model. On success *out_model owns the model: free it with sgllm_model_free.
// On failure *out_model is NULL, nothing stays allocated, and when err_msg is not NULL a
// NUL-terminated message naming the problem is written to it (at most err_size bytes).
SGLLM_API sgllm_status sgllm_model_load(const sgllm_model_params *params, sgllm_model **out_model,
                                        char *err_msg, size_t err_size);
SGLLM_API void sgllm_model_free(sgllm_model *model); // NULL is a no-op

SGLLM_API const char *sgllm_model_architecture(const sgllm_model *model); // "llama", "gemma3"...
SGLLM_API const char *sgllm_model_name(const sgllm_model *model);  // general.name, or ""
SGLLM_API int32_t sgllm_model_n_vocab(const sgllm_model *model);
SGLLM_API int32_t sgllm_model_n_ctx_train(const sgllm_model *model); // training context length
SGLLM_API int32_t sgllm_model_n_layer(const sgllm_model *model);
SGLLM_API int32_t sgllm_model_n_embd(const sgllm_model *model);
SGLLM_API const char *sgllm_model_chat_template(const sgllm_model *model); // Jinja text, or NULL
SGLLM_API sgllm_backend sgllm_model_backend(const sgllm_model *model);     // CPU or CUDA

/* 2b. Backend and kernel dispatch
   SGLLM_BACKEND_AUTO runs the model on CUDA device 0 when the library was built with CUDA
   (SGLLM_CUDA) and a device exists, else on the CPU; SGLLM_BACKEND_CUDA fails with
   SGLLM_ERR_BACKEND when either is missing. On CUDA the weights are copied to the device
   once, in their file format, and every kernel variant and block size comes from a table keyed
   by the device's compute capability, then from configs/<device name, spaces as '_'>.json
   (relative to the working directory) when that file exists, then from the file named by
   params.kernel_config when set: a JSON object with any of the keys of the files under configs/, e.g.
   {"matvec_max_batch": 4, "decode_max_splits": 8}. The decision is logged at load (INFO).
   On CUDA, sgllm_generate also samples on the device (the same choice sgllm_sampler_sample
   makes from the same logits and seed): a decode step reads back only the token, and without
   repeat/frequency/presence penalties the next step is already queued while the on_piece
   callback runs, so the callback's time overlaps the device's work. */

// One line: "cpu (...)" or "cuda dispatch: <device> ... -> row sm90 + <config files>: ...".
// Borrowed, valid as long as the model.
SGLLM_API const char *sgllm_model_device_info(const sgllm_model *model);

/* 2c. Synthetic models (benchmarks)
   A model of a well-known shape with random weights, built directly on the GPU: no file and
   no host copy of the weights, so it needs the CUDA backend. Presets (shapes from the
   models' published configurations):
       "llama3-8b"     llama  4096 wide, 32 layers, 32/8 heads of 128, ff 14336, vocab 128256
       "qwen3-8b"      qwen3  4096 wide, 36 layers, 32/8 heads of 128, ff 12288, vocab 151936
       "gemma3-27b"    gemma3 5376 wide, 62 layers, 32/16 heads of 128, ff 21504, vocab 262144,
                       window 1024 on 5 of every 6 layers
       "gemma3-270m"   gemma3 640 wide, 18 layers, 4/1 heads of 256, ff 2048, vocab 262144, window 512
       "smollm2-135m"  llama  576 wide, 30 layers, 9/3 heads of 64, ff 1536, vocab 49152
   weight_type "bf16", "q8_0", "q4_1" or "q4_k" is the type of every matrix, the embedding
   included; "q4_k_m" is the mix of llama.cpp's Q4_K_M files (q4_k, with q6_k for the output
   matrix and for attn_v and ffn_down of every other layer). Where a row is not a whole number
   of 256-value blocks, q4_k becomes q5_0 and q6_k becomes q8_0, as llama.cpp's quantizer does
   (so "gemma3-270m" "q4_k_m" has the types of the Gemma 3 270M Q4_K_M file). Norm weights are
   f32. The same preset, type and seed give the same weights. params: path is ignored;
   backend must be SGLLM_BACKEND_AUTO or SGLLM_BACKEND_CUDA; log and kernel_config apply.
   The vocabulary has the preset's size but no tokenizer: sgllm_tokenize (and so generate)
   returns SGLLM_ERR_UNSUPPORTED, every token's piece is empty; sgllm_evaluate works.
   Errors: SGLLM_ERR_INVALID_ARGUMENT for an unknown preset or type (the message lists the
   known ones), SGLLM_ERR_BACKEND without CUDA or a device, SGLLM_ERR_OUT_OF_MEMORY when the
   weights do not fit on the device. */
SGLLM_API sgllm_status sgllm_model_load_synthetic(const char *preset, const char *weight_type, uint64_t seed,
                                                  const sgllm_model_params *params, sgllm_model **out_model,
                                                  char *err_msg, size_t err_size);

/* ---------------------------------------------------------------------------------------
   3. Tokenizer
   --------------------------------------------------------------------------------------- */

enum {
    SGLLM_TOKENIZE_ADD_BOS = 1,       // prepend BOS when the model's vocabulary asks for it
    SGLLM_TOKENIZE_PARSE_SPECIAL = 2  // recognize control tokens such as "<start_of_turn>"
};

// Tokenizes text_len bytes of text (any bytes: invalid UTF-8 is tokenized, never rejected).
// *n_tokens always receives the full count. Writes min(count, capacity) tokens; returns
// SGLLM_ERR_BUFFER_TOO_SMALL when count > capacity (call again with a larger buffer).
SGLLM_API sgllm_status sgllm_tokenize(const sgllm_model *model, const char *text, size_t text_len,
                                      int flags, sgllm_token *tokens, int32_t capacity,
                                      int32_t *n_tokens);

// The bytes a token stands for (byte-fallback and byte-level tokens decoded; control tokens
// give their text). Borrowed, valid as long as the model; *len receives the byte count; not
// NUL-terminated in general. NULL for a token out of range.
SGLLM_API const char *sgllm_token_piece(const sgllm_model *model, sgllm_token token, size_t *len);

// Concatenates the pieces of n tokens into buf. *text_len always receives the full length;
// writes min(length, capacity) bytes plus, if room, a NUL; returns SGLLM_ERR_BUFFER_TOO_SMALL
// when length + 1 > capacity. Control tokens are rendered only when render_special is set.
SGLLM_API sgllm_status sgllm_detokenize(const sgllm_model *model, const sgllm_token *tokens,
                                        int32_t n, int render_special, char *buf, size_t capacity,
                                        size_t *text_len);

SGLLM_API sgllm_token sgllm_token_bos(const sgllm_model *model); // -1 when the model has none
SGLLM_API sgllm_token sgllm_token_eos(const sgllm_model *model); // -1 when the model has none
SGLLM_API int sgllm_token_is_eog(const sgllm_model *model, sgllm_token token); // ends a turn?
SGLLM_API int sgllm_token_is_control(const sgllm_model *model, sgllm_token token);

/* ---------------------------------------------------------------------------------------
   4. Contexts
   A context holds one sequence: its KV cache, scratch memory and a thread pool. Tokens are
   appended at the end of the sequence; sgllm_context_rewind drops tokens from the end.
   On the CPU, sliding-window layers (Gemma 3's local layers) keep only window + n_batch - 1
   cache rows; after a rewind further back than those rows reach, the next evaluate first
   recomputes the kept tokens (correct, but it costs a prompt's evaluation).
   --------------------------------------------------------------------------------------- */

typedef struct sgllm_context sgllm_context; // opaque; one thread at a time

typedef struct sgllm_context_params {
    size_t struct_size;
    int32_t n_ctx;         // maximum sequence length; 0 = min(training context, 4096)
    int32_t n_batch;       // tokens per forward pass; longer inputs are split (default 256)
    int n_threads;         // worker threads; 0 = all cores
    sgllm_log_fn log;      // optional; NULL = the model's log callback
    void *log_user_data;
} sgllm_context_params;

SGLLM_API void sgllm_context_default_params(sgllm_context_params *params);

// Creates a context on model (borrowed: it must outlive the context). On success
// *out_ctx owns the context: free it with sgllm_context_free. On failure *out_ctx is NULL.
SGLLM_API sgllm_status sgllm_context_create(const sgllm_model *model,
                                            const sgllm_context_params *params,
                                            sgllm_context **out_ctx);
SGLLM_API void sgllm_context_free(sgllm_context *ctx); // NULL is a no-op

// The message of the last failed call on ctx ("" if none). Borrowed until the next call.
SGLLM_API const char *sgllm_context_errmsg(const sgllm_context *ctx);
SGLLM_API int32_t sgllm_context_n_ctx(const sgllm_context *ctx);
SGLLM_API int32_t sgllm_context_length(const sgllm_context *ctx); // tokens in the sequence

// Keeps the first n_keep tokens of the sequence and forgets the rest (0 = clear).
SGLLM_API sgllm_status sgllm_context_rewind(sgllm_context *ctx, int32_t n_keep);

// Appends n_tokens tokens to the sequence and runs the model over them.
// want_logits: NULL = logits of the last token only; otherwise want_logits[i] != 0 selects
// token i. logits receives one row of n_vocab floats per selected token, in order (it may be
// NULL when nothing is selected). On error the sequence is left as it was before the call.
// Returns SGLLM_ERR_CONTEXT_FULL when the tokens do not fit.
SGLLM_API sgllm_status sgllm_evaluate(sgllm_context *ctx, const sgllm_token *tokens,
                                      int32_t n_tokens, const uint8_t *want_logits,
                                      float *logits);

/* ---------------------------------------------------------------------------------------
   5. Sampler
   Order of operations: penalties over the last penalty_last_n accepted tokens, then
   top-k, temperature, top-p, min-p, then a draw from the sampler's own RNG.
   temperature <= 0 is greedy (argmax after penalties).
   --------------------------------------------------------------------------------------- */

typedef struct sgllm_sampler sgllm_sampler; // opaque; one thread at a time

typedef struct sgllm_sampler_params {
    size_t struct_size;
    float temperature;       // default 0.8; <= 0 = greedy
    int32_t top_k;           // default 40; <= 0 = off
    float top_p;             // default 0.95; >= 1 = off
    float min_p;             // default 0.05; <= 0 = off
    float repeat_penalty;    // default 1.0 (off); divides positive logits, multiplies negative
    float frequency_penalty; // default 0; subtracts count * value
    float presence_penalty;  // default 0; subtracts value once per present token
    int32_t penalty_last_n;  // default 64; window of accepted tokens the penalties look at
    uint64_t seed;           // default 0x5eed
} sgllm_sampler_params;

SGLLM_API void sgllm_sampler_default_params(sgllm_sampler_params *params);

// Creates a sampler for a vocabulary of n_vocab tokens. Caller owns *out: sgllm_sampler_free.
SGLLM_API sgllm_status sgllm_sampler_init(const sgllm_sampler_params *params, int32_t n_vocab,
                                          sgllm_sampler **out);
SGLLM_API void sgllm_sampler_free(sgllm_sampler *sampler); // NULL is a no-op
// Picks a token from n_vocab logits (read only). Returns -1 on bad arguments.
SGLLM_API sgllm_token sgllm_sampler_sample(sgllm_sampler *sampler, const float *logits);
// Records a token in the penalty window (generate does this for prompt and output tokens).
SGLLM_API void sgllm_sampler_accept(sgllm_sampler *sampler, sgllm_token token);
// Clears the penalty window and reseeds the RNG with the params' seed.
SGLLM_API void sgllm_sampler_reset(sgllm_sampler *sampler);

/* ---------------------------------------------------------------------------------------
   6. Generate
   --------------------------------------------------------------------------------------- */

// Receives each generated piece (bytes; a UTF-8 character split over tokens arrives whole
// once complete). Return nonzero to stop the generation.
typedef int (*sgllm_piece_fn)(void *user_data, const char *piece, size_t len);

typedef enum sgllm_stop_reason {
    SGLLM_STOP_EOG = 0,        // the model ended its turn
    SGLLM_STOP_MAX_TOKENS = 1, // max_tokens reached
    SGLLM_STOP_CALLBACK = 2,   // on_piece returned nonzero
    SGLLM_STOP_CONTEXT_FULL = 3
} sgllm_stop_reason;

typedef struct sgllm_generate_params {
    size_t struct_size;
    int32_t max_tokens;           // default 256
    int flags;                    // SGLLM_TOKENIZE_* for the prompt (default ADD_BOS|PARSE_SPECIAL)
    sgllm_sampler_params sampler; // sgllm_sampler_default_params
    sgllm_piece_fn on_piece;      // optional
    void *user_data;
} sgllm_generate_params;

typedef struct sgllm_generate_stats {
    int32_t n_prompt;       // prompt tokens
    int32_t n_reused;       // prompt tokens already in the context's cache (not re-evaluated)
    int32_t n_generated;    // tokens sampled
    double prompt_seconds;  // wall time evaluating the prompt
    double gen_seconds;     // wall time of the generation loop
    sgllm_stop_reason stop_reason;
} sgllm_generate_stats;

SGLLM_API void sgllm_generate_default_params(sgllm_generate_params *params);

// Tokenizes prompt, evaluates it (reusing the longest common prefix already in ctx) and
// samples up to max_tokens tokens, streaming their pieces to on_piece. The generated tokens
// stay in the context, so a later call can continue the conversation. stats may be NULL.
SGLLM_API sgllm_status sgllm_generate(sgllm_context *ctx, const char *prompt,
                                      const sgllm_generate_params *params,
                                      sgllm_generate_stats *stats);

/* ---------------------------------------------------------------------------------------
   7. Chat templates
   Known formats: Gemma (<start_of_turn>) and ChatML (<|im_start|>), recognized from the
   model's tokenizer.chat_template (Gemma models without a template use Gemma's format).
   Anything else is SGLLM_ERR_NO_TEMPLATE: sgllm does not run Jinja and does not guess.
   --------------------------------------------------------------------------------------- */

typedef struct sgllm_chat_message {
    const char *role;    // "system", "user" or "assistant"
    const char *content; // NUL-terminated UTF-8
} sgllm_chat_message;

// Renders messages into buf as the model expects them, ending with the assistant prompt
// when add_assistant is set. *text_len always receives the full length; writes a NUL when
// there is room; SGLLM_ERR_BUFFER_TOO_SMALL when length + 1 > capacity.
SGLLM_API sgllm_status sgllm_chat_apply(const sgllm_model *model,
                                        const sgllm_chat_message *messages, size_t n_messages,
                                        int add_assistant, char *buf, size_t capacity,
                                        size_t *text_len);

#ifdef __cplusplus
}
#endif
#endif // SGLLM_H

/* ---------------------------------------------------------------------------------------
   INTERNAL: the backend interface between sgllm_impl.c and sgllm_cuda.cu
   Declared only when SGLLM_INTERNAL is defined (the library's own sources and tests). Not
   part of the public API: names, structs and semantics change without notice.

   A CUDA context (sgllm__cuda) owns a device, one stream, a cuBLAS handle and workspace, and
   a scratch buffer; nothing lives at file scope, so any number of contexts can coexist.
   Device pointers below are marked (device). Every op only enqueues work on the context's
   stream (no host synchronization) and returns SGLLM_ERR_INVALID_ARGUMENT for bad shapes or
   pointers, SGLLM_ERR_BACKEND when CUDA refuses a launch; the message is then in
   sgllm__cuda_errmsg. Errors inside kernels surface at the next synchronizing call.
   Matrices are row-major; weights (rows, cols) are stored in their GGUF block layout, one
   row of cols values after another (cols a multiple of the type's block).
   --------------------------------------------------------------------------------------- */
#if defined(SGLLM_INTERNAL) && !defined(SGLLM_INTERNAL_H)
#define SGLLM_INTERNAL_H
#ifdef __cplusplus
extern "C" {
#endif

typedef struct sgllm__cuda_props {
    char name[256];             // e.g. "NVIDIA H100 80GB HBM3"
    int major, minor;           // compute capability
    int sm_count;               // streaming multiprocessors
    size_t smem_per_block;      // bytes a block gets without opting in (48 KB)
    size_t smem_per_block_optin; // bytes a block may get after cudaFuncSetAttribute
    size_t l2_bytes;
    size_t total_mem;
} sgllm__cuda_props;

// Every kernel variant and block size, chosen from the architecture table (sgllm_impl.c,
// section 8b) and optionally overridden by configs/<device name>.json.
typedef struct sgllm__cuda_dispatch {
    char row[16];                 // the table row used: "sm80", "sm86", "sm89", "sm90", "sm100", "sm120"
    int sm_count;                 // copied from the device, used to size split counts
    int matvec_warps;             // warps per block in matrix-vector kernels
    int matvec_warps_per_sm;      // rows are split over 2 or 4 warps until the grid has this many per SM
    int matvec_max_batch;         // tokens up to which matmul takes the matrix-vector path (1..8)
    int decode_max_splits;        // split-KV decode attention: most splits of one query's keys
    int decode_min_keys;          // fewest keys per split worth a split of its own
    int decode_block_n;           // keys per shared-memory tile in decode attention
    int prefill_block_m[3];       // prefill attention query tile for head dim <= 128, <= 256, > 256
    int prefill_block_n[3];       // prefill attention key tile, same classes
    int prefill_warps[2];         // warps for head dim <= 64, > 64
    int prefill_min_tokens;       // batches of at least this many tokens take the prefill attention kernel
    int qknorm_per_head_max_tokens; // q/k norm: one block per (token, head) up to this many tokens
    int norm_threads;             // threads per block of the row-wise norm kernels
    int matvec_int8;              // quantized weights: 1 = activations quantized to int8 blocks inside the
                                  // matrix-vector kernel and integer dot products (dp4a); 2 = the same arithmetic
                                  // with activations quantized once per call and each row's warp reading its
                                  // weights directly (the fused launches' kernel, for every matrix); 3 = activations
                                  // quantized once per call and 16-byte weight loads, two rows per warp, for single
                                  // matrices and fused launches whose rows are whole 16-byte words (others as 1);
                                  // 0 = the fp32-activation reference kernel
    int matvec_wide_warps_per_sm; // resident warps per SM of the wide-load kernel (matvec_int8 3): its grid
    int pdl;                      // 1 = programmatic dependent launch (sm90+ only; ignored below): a kernel may start
                                  // while its predecessor on the stream finishes and waits for it on the device
    int matvec_xq_inline;         // the wide int8 kernel (matvec_int8 3) quantizes the activations itself, each block
                                  // into its shared memory, when cols x tokens is at most this; above it (or at 0),
                                  // and for the direct kernel, a separate launch quantizes them once per call (0..32768)
    int matvec_wide_align;        // the wide kernel (matvec_int8 3) takes rows that are whole words of this many bytes
                                  // (16 or 8; each row is loaded in its widest whole words)
    int decode_merge;             // split-KV decode attention: 0 = the last split block of each head group to finish
                                  // merges the splits in the same launch (split order, so deterministic); 1 = a second
                                  // kernel merges them (the reference: two launches, the same arithmetic); 2 = the
                                  // head group's split blocks form a thread block cluster and write their outputs
                                  // into each other's shared memory to merge (sm90+, up to 16 splits; else as 1), the
                                  // same arithmetic
    int matvec_wide_warps_per_sm_q4; // matvec_wide_warps_per_sm for the weight types the wide kernel streams in chunks
                                     // of 4096 values (Q4_0, Q4_1, Q4_K, Q5_K: more arithmetic per byte, so more warps
                                     // to hide it); 0 = matvec_wide_warps_per_sm
    int decode_mma;               // split-KV decode attention on the tensor cores (mma.sync; head dims that are
                                  // multiples of 16 up to 256, others always take the CUDA-core loop): 0 = never (the
                                  // CUDA-core loop over key tiles), k >= 1 = when a split may hold k keys or more (at
                                  // the context's full length; always where that length is not told); the same
                                  // arithmetic to about 2^-22 relative
    int matvec_float_direct;      // single float-type matrices (F32, F16, BF16) at matrix-vector batch sizes: 1 = the
                                  // direct kernel of the fused launches (a warp per row, weights straight from global
                                  // memory), 0 = the float kernel (rows split over warps until the grid fills the SMs);
                                  // rows that are not whole 16-byte words always take the latter
    int matvec_direct_split;      // warps that share each row of a float-type matrix in the direct kernel (1, 2 or 4;
                                  // 1 where it does not divide matvec_warps): shorter per-warp streams, one block
                                  // barrier to add them
    int matvec_qkv_early_kb;      // a q/k/v product on the wide kernel whose weights are at most this many KiB lets the
                                  // next kernel (decode attention) launch before its own PDL wait, so that the
                                  // attention's cache reads overlap the product (small models); 0 = never
    int decode_block_n_wide;      // decode_block_n for head dims above 128 (0 = decode_block_n): smaller tiles take less
                                  // shared memory, so the attention's blocks, launched early, fit on SMs still running
                                  // the q/k/v product's blocks (whose carveout leaves less shared memory than an SM has)
    int matvec_stream_kb;         // one token against a single block-quantized matrix of at least this many KiB whose rows
                                  // have at most 4096 values and are not the wide kernel's (sm90+, not with matvec_int8
                                  // 0): the streamed kernel, bulk copies of whole rows into a ring of shared-memory
                                  // stages per block (SmolLM2-135M's output matrix); 0 = never
    int matvec_stream_wide_cols;  // the streamed kernel (matvec_stream_kb) also takes the wide kernel's matrices whose
                                  // rows have at most this many values (Gemma 3's 640-value output rows); 0 = none
    int decode_group_split;       // 1 = decode attention spreads a GQA group's query heads over more blocks (each with a
                                  // shorter chain) while a launch of decode_max_splits splits stays within the SM
                                  // count (sgllm__cuda_attn_heads_per_block); 0 = a group (up to 8 heads) a block
} sgllm__cuda_dispatch;

typedef struct sgllm__cuda sgllm__cuda; // opaque: one device context
#ifdef SGLLM_TIMELINE
// Profiling build (`make timeline`, sgllm-bench-kernels --timeline): launch names recorded
// while on (cleared when turned on); stamps of each kernel's PDL wait returning, in launch
// order (copied into t, at most cap, then emptied; -1 on a CUDA error).
void sgllm__cuda_timeline_names(sgllm__cuda *c, int on);
const char *const *sgllm__cuda_timeline_launches(const sgllm__cuda *c, int *n);
int sgllm__cuda_timeline_stamps(sgllm__cuda *c, unsigned long long *t, int cap);
// Decode attention's phases since the last call (then emptied): for split block b < 32 of the
// first head group, n[b] launches and us[b * 16 + k] the mean time from the block's start to
// the end of phase k (0 where it never ran); -1 on a CUDA error. sgllm__cuda_timeline_phase_name
// names phase k (1..15).
int sgllm__cuda_timeline_phases(sgllm__cuda *c, double *us, unsigned long long *n);
const char *sgllm__cuda_timeline_phase_name(int k);
#endif

int sgllm__cuda_device_count(void); // 0 when there is no driver or device
sgllm_status sgllm__cuda_query(int device, sgllm__cuda_props *out, char *err, size_t err_size);

// Creates a context on device with the given dispatch (copied). Caller owns *out:
// sgllm__cuda_free. On failure *out is NULL and err holds the reason.
sgllm_status sgllm__cuda_create(int device, const sgllm__cuda_dispatch *dispatch, sgllm__cuda **out, char *err,
                                size_t err_size);
void sgllm__cuda_free(sgllm__cuda *c);                       // NULL is a no-op; synchronizes
const char *sgllm__cuda_errmsg(const sgllm__cuda *c);        // last error, "" if none
uint64_t sgllm__cuda_launches(const sgllm__cuda *c);         // kernels this backend launched so far (not cuBLAS's)
const char *sgllm__cuda_last_launch(const sgllm__cuda *c);   // the name of the latest launch through the
                                                             // launch helper (tests: which variant ran), "" if none
int sgllm__cuda_xq_holds(const sgllm__cuda *c, const float *x); // 1 if the int8 activation buffer holds x's
                                                             // quantization (the next product skips its own)
void sgllm__cuda_set_dispatch(sgllm__cuda *c, const sgllm__cuda_dispatch *dispatch);
const sgllm__cuda_dispatch *sgllm__cuda_get_dispatch(const sgllm__cuda *c);
void *sgllm__cuda_stream(const sgllm__cuda *c);              // the cudaStream_t ops run on

sgllm_status sgllm__cuda_alloc(sgllm__cuda *c, size_t bytes, void **out); // (device); synchronous
void sgllm__cuda_dfree(sgllm__cuda *c, void *p);                        // NULL is a no-op
sgllm_status sgllm__cuda_upload(sgllm__cuda *c, void *dst, const void *src, size_t bytes);   // returns when done
sgllm_status sgllm__cuda_download(sgllm__cuda *c, void *dst, const void *src, size_t bytes); // waits for the stream
// Enqueues an upload and returns at once: src is first copied into pinned staging memory, so the
// caller may reuse it immediately; the device copy runs in stream order (only ops of the same
// context may rely on it). Sizes over 16 MB, or no pinned memory, take sgllm__cuda_upload.
sgllm_status sgllm__cuda_upload_async(sgllm__cuda *c, void *dst, const void *src, size_t bytes);
// A read-back that does not wait for the stream: slot 0 or 1 of the context's ring of pinned,
// mapped host memory (64 bytes each) has a device address, where a kernel writes its result
// itself (the samplers' host argument); _mark enqueues the point after which _wait finds that
// result; _wait waits for that point only (work enqueued after it may still run) and copies up to
// 64 bytes out. A slot holds one read-back at a time.
int32_t *sgllm__cuda_readback_slot(sgllm__cuda *c, int slot);
sgllm_status sgllm__cuda_readback_mark(sgllm__cuda *c, int slot);
sgllm_status sgllm__cuda_readback_wait(sgllm__cuda *c, int slot, void *dst, size_t bytes);
sgllm_status sgllm__cuda_memset(sgllm__cuda *c, void *dst, int byte, size_t bytes);          // enqueued
sgllm_status sgllm__cuda_sync(sgllm__cuda *c);
// Makes the context's scratch buffer at least bytes large (synchronous; outside any graph).
// sgllm__cuda_gemm and sgllm__cuda_attn_decode use it; they fail when it is too small.
sgllm_status sgllm__cuda_reserve(sgllm__cuda *c, size_t bytes);

// out(n, cols) = row tokens[i] of w (n_rows, cols) of any weight type, times scale.
// tokens (device, n); a token outside [0, n_rows) gives a row of zeros.
sgllm_status sgllm__cuda_embed(sgllm__cuda *c, uint32_t type, const void *w, int64_t n_rows, int64_t cols,
                               const int32_t *tokens, int64_t n, float scale, float *out);
// Per row: x += delta (when delta is not NULL), then y = x / rms(x) * w (w NULL: no weight).
// x (rows, dim) is updated in place; y may be x.
sgllm_status sgllm__cuda_add_rmsnorm(sgllm__cuda *c, float *x, const float *delta, const float *w, float *y,
                                     int64_t rows, int64_t dim, float eps);
// In-place per-head RMSNorm of q (n_tok rows of stride q_stride, n_head heads) with q_w, k
// (n_head_kv heads) with k_w, and v without weight when v is not NULL. Weights (head_dim) may
// be NULL. One block per (token, head) up to dispatch.qknorm_per_head_max_tokens tokens,
// else one block per token looping over its heads.
sgllm_status sgllm__cuda_qkv_norm(sgllm__cuda *c, float *q, int64_t q_stride, int32_t n_head, const float *q_w,
                                  float *k, int64_t k_stride, int32_t n_head_kv, const float *k_w, float *v,
                                  int64_t v_stride, int32_t head_dim, int64_t n_tok, float eps);
// Rotates the first n_rot dims of each of n_heads heads of x (n_tok rows of stride x_stride)
// at positions pos (device, n_tok) times pos_scale; neox: halves (i, i + n_rot/2), else
// adjacent pairs (2i, 2i + 1).
sgllm_status sgllm__cuda_rope(sgllm__cuda *c, float *x, int64_t x_stride, int32_t n_heads, int32_t head_dim,
                              int32_t n_rot, const int32_t *pos, int64_t n_tok, float pos_scale, float theta_base,
                              int neox);
// Fused forms of the ops above, for the decode step, where every launch costs more than the
// work it does.
// norm_add_rmsnorm: per row, x += rmsnorm(delta) * delta_w (delta_w NULL: x += delta; delta
// NULL: x unchanged), then y = rmsnorm(x) * w (w NULL: no weight). Gemma's post-attention and
// post-FFN norms, the residual add and the next pre-norm in one launch. delta is not modified;
// y may be x. Threads per row: enough for one float4 per thread, at most dispatch.norm_threads.
sgllm_status sgllm__cuda_norm_add_rmsnorm(sgllm__cuda *c, float *x, const float *delta, const float *delta_w,
                                          const float *w, float *y, int64_t rows, int64_t dim, float eps);
// The same, where quant_for is the weight type of the matrix-vector product that reads y next:
// for a block-quantized type (and rows <= 8, float4-aligned rows) the launch also quantizes y
// into the context's activation buffer in that type's activation format, and the matrix-vector
// ops of the direct and wide kernels (matvec_int8 2 and 3) reading y with a type of the same
// format then skip their quantization launch. The caller must not change y in between by
// other means (a quantization launch for other activations ends the reuse).
sgllm_status sgllm__cuda_norm_add_rmsnorm_q(sgllm__cuda *c, float *x, const float *delta, const float *delta_w,
                                            const float *w, float *y, int64_t rows, int64_t dim, float eps,
                                            uint32_t quant_for);
// qkv_post: everything between the q/k/v projections and attention, in one launch: per token
// t and head, bias add (each bias optional), per-head RMSNorm of q and k (qk_norm; weights
// optional, as sgllm__cuda_qkv_norm), RoPE of q and k (as sgllm__cuda_rope), then q is
// written back in place and k, v go to row pos[t] of the fp16 caches (as sgllm__cuda_kv_write;
// k and v themselves are left unchanged). Cache rows are physical: page_table NULL: row r is
// r; else row page_table[r / page_size] * page_size + r % page_size. Agrees bit for bit with
// add_bias, qkv_norm, rope and kv_write run one after another.
typedef struct sgllm__cuda_qkv_post_args {
    float *q;                         // (device) (n_tok, q_stride), n_head heads of head_dim
    const float *k, *v;               // (device) (n_tok, kv_stride), n_head_kv heads each
    int64_t q_stride, kv_stride;
    int32_t n_head, n_head_kv, head_dim;
    const float *bq, *bk, *bv;        // (device) biases (n_head * head_dim, n_head_kv * head_dim) or NULL
    int qk_norm;                      // normalize each q and k head
    const float *q_w, *k_w;           // (device) (head_dim) norm weights or NULL
    float eps;
    int32_t n_rot;                    // rotated dims per head (even, 2..head_dim)
    const int32_t *pos;               // (device) (n_tok)
    int64_t n_tok;
    float pos_scale, theta_base;
    int neox;
    uint16_t *k_cache, *v_cache;      // (device) (rows, n_head_kv * head_dim) fp16 bits
    const int32_t *page_table;        // (device) or NULL
    int32_t page_size;                // > 0 when page_table is given
} sgllm__cuda_qkv_post_args;
sgllm_status sgllm__cuda_qkv_post(sgllm__cuda *c, const sgllm__cuda_qkv_post_args *a);
enum { SGLLM__CUDA_ACT_SILU = 0, SGLLM__CUDA_ACT_GELU_TANH = 1 };
// g(n) = act(g) * u(n)
sgllm_status sgllm__cuda_gated_act(sgllm__cuda *c, int act, float *g, const float *u, int64_t n);

// y(n_tok, rows) = x(n_tok, cols) . w(rows, cols)^T with w of any weight type, dequantized
// on the fly. matvec: n_tok <= 8, reads w once; gemm: any n_tok, dequantizes w to bf16
// scratch and runs cuBLAS (bf16 inputs, fp32 accumulation); matmul picks by dispatch.
sgllm_status sgllm__cuda_matvec(sgllm__cuda *c, uint32_t type, const void *w, int64_t rows, int64_t cols,
                                const float *x, int64_t n_tok, float *y);
sgllm_status sgllm__cuda_gemm(sgllm__cuda *c, uint32_t type, const void *w, int64_t rows, int64_t cols,
                              const float *x, int64_t n_tok, float *y);
sgllm_status sgllm__cuda_matmul(sgllm__cuda *c, uint32_t type, const void *w, int64_t rows, int64_t cols,
                                const float *x, int64_t n_tok, float *y);
size_t sgllm__cuda_gemm_scratch_bytes(uint32_t type, int64_t rows, int64_t cols, int64_t n_tok);
// The prefill forms of one input feeding several matrices (scratch: at most the largest of
// sgllm__cuda_gemm_scratch_bytes over the matrices). gemm_multi: y[k](n_tok, rows[k]) = x .
// w[k]^T for n (1..3) matrices with x converted to bf16 once, results as sgllm__cuda_gemm.
// gemm_gated: y(n_tok, rows) bf16 = act(x . w_gate^T) * (x . w_up^T), act as
// sgllm__cuda_gated_act: the two products come out of cuBLAS as bf16 (fp32 accumulation)
// into tmp (2 * n_tok * rows bf16 values: the bytes of an fp32 (n_tok, rows) buffer), then one
// pass writes y in bf16 for gemm_x16. gemm_x16: y(n_tok, rows) fp32 = xb(n_tok, cols) bf16 .
// w^T, as sgllm__cuda_gemm but from bf16 activations (no conversion; scratch: the weight's
// bf16 copy only).
sgllm_status sgllm__cuda_gemm_multi(sgllm__cuda *c, int n, const uint32_t *types, const void *const *w,
                                    const int64_t *rows, int64_t cols, const float *x, int64_t n_tok, float *const *y);
sgllm_status sgllm__cuda_gemm_gated(sgllm__cuda *c, int act, uint32_t gate_type, const void *w_gate, uint32_t up_type,
                                    const void *w_up, int64_t rows, int64_t cols, const float *x, int64_t n_tok,
                                    void *y, void *tmp);
sgllm_status sgllm__cuda_gemm_x16(sgllm__cuda *c, uint32_t type, const void *w, int64_t rows, int64_t cols,
                                  const void *xb, int64_t n_tok, float *y);
// Fused decode launches over one activation x (n_tok, cols). matvec_multi: y[k](n_tok, rows[k])
// = x . w[k]^T for n (1..3) matrices, e.g. q, k and v, in one launch (the activations are
// quantized once). matvec_gated: y(n_tok, rows) = act(x . w_gate^T) * (x . w_up^T), act as
// sgllm__cuda_gated_act, in one launch with no gate/up round trip through memory. Both fall
// back to sgllm__cuda_matmul per matrix (and sgllm__cuda_gated_act, which then needs u (n_tok,
// rows) as the up product's buffer; the fused path leaves u alone and accepts NULL) when the
// types differ, n_tok > dispatch.matvec_max_batch, a matrix is not 16-byte aligned, or for
// quantized types dispatch.matvec_int8 is 0, or is 1 (or 3 with rows not whole words of
// dispatch.matvec_wide_align bytes) and the matrices hold over 32 MB together
// (large matrices stream faster through the single-matrix kernel), so callers may use them
// unconditionally. Where matvec_multi's types differ, each run of equal neighbours is one
// fused launch (q and k of one type with v of another: two launches).
sgllm_status sgllm__cuda_matvec_multi(sgllm__cuda *c, int n, const uint32_t *types, const void *const *w,
                                      const int64_t *rows, int64_t cols, const float *x, int64_t n_tok, float *const *y);
// Tells the next sgllm__cuda_matvec_multi call (a q/k/v product) whether the decode attention
// after it runs the tensor-core kernel (sgllm__cuda_attn_mma): an early-launching product then
// asks for the SM's largest shared-memory carveout, so that attention's blocks fit beside it.
// A preference, read (and reset) by that one call; results are the same either way.
void sgllm__cuda_qkv_before_mma(sgllm__cuda *c, int on);
sgllm_status sgllm__cuda_matvec_gated(sgllm__cuda *c, int act, uint32_t gate_type, const void *w_gate, uint32_t up_type,
                                      const void *w_up, int64_t rows, int64_t cols, const float *x, int64_t n_tok,
                                      float *y, float *u);
// The activation quantization of the int8 matrix-vector path (dispatch.matvec_int8), on its
// own for tests: x (n_tok <= 8, cols) -> qs (device, n_tok * cols int8) and ds (device,
// n_tok * cols / 32 pairs of floats: the block scale d, then the integer sum of the block's
// codes, or for Q4_1/Q5_1 weights fp16(d * sum)), in the format the CPU engine pairs with
// weight type `type` (Q8_0, Q8_1 or Q8_K; Q8_K's d repeats over its 8 pieces), same rounding.
sgllm_status sgllm__cuda_quantize_act(sgllm__cuda *c, uint32_t type, const float *x, int64_t n_tok, int64_t cols,
                                      int8_t *qs, float *ds);

// Decode attention over an fp16 KV cache, split-KV with a log-sum-exp merge. Query i of n_q
// (q: (n_q, n_head * head_dim), after RoPE) sits at position pos[i] (device, n_q) and sees
// cache rows lo..pos[i], lo = window ? max(0, pos[i] - window + 1) : 0. k_cache, v_cache:
// (rows, n_head_kv * head_dim) fp16 bits; out: (n_q, n_head * head_dim). Each query's keys
// are cut into n_splits pieces (sgllm__dispatch_decode_splits picks the count); with more than
// one, the splits' partial results pass through the scratch and are merged in split order by
// the last split block of each head group to finish (one launch; dispatch.decode_merge 0), by
// a second kernel (decode_merge 1), or by the split blocks of a thread block cluster (one
// launch; decode_merge 2, sm90+), with the same result bits every way. Head dims that are
// multiples of 16 up to 256 run on the tensor cores when dispatch.decode_mma > 0 (this call does
// not know the context's length, so it does not keep short splits on the CUDA cores as
// attn_decode_post can), others on the CUDA cores; both within 1e-5 of exact attention.
// The cache is paged: logical row r lives at physical row page_table[r / page_size] *
// page_size + r % page_size, page_table (device) one entry per page of page_size rows (a
// power of two); page_table NULL: row r itself (page_size is then ignored).
sgllm_status sgllm__cuda_attn_decode(sgllm__cuda *c, const float *q, const uint16_t *k_cache,
                                     const uint16_t *v_cache, const int32_t *page_table, int32_t page_size,
                                     int32_t n_head, int32_t n_head_kv, int32_t head_dim,
                                     const int32_t *pos, int64_t n_q, int32_t window, float scale,
                                     int32_t n_splits, float *out);
// qkv_post (a) and attn_decode (window, scale, n_splits, out; the rest from a) in one launch
// when a holds one token: the attention kernel takes its heads' bias, norm and
// RoPE itself and writes the new key and value to the caches, with the bits of the two calls
// one after the other, except that a->q is left as it was (not rotated in place). Other token
// counts make the two calls. The fused kernel reads a->pos, the page table and the older
// cache rows before the launch in front of it has finished (programmatic dependent launch):
// only q, k and v may be that launch's output.
// quant_for is the weight type of the o projection that reads out next: when the splits merge
// across a cluster (dispatch.decode_merge 2), each head (or each GQA group of up to 8 heads) is
// whole blocks of that type's activation format and out has at most 8 rows, the merge also
// quantizes out into the context's activation buffer, and the direct / wide matrix-vector kernels reading out skip
// their quantization launch (as after sgllm__cuda_norm_add_rmsnorm_q; T_F32: no quantization).
// max_keys: the most keys any query of this call (or of the graph it is captured into) sees,
// 0 when unknown; with splits shorter than dispatch.decode_mma keys the CUDA-core kernel runs
// instead of the tensor-core one (the same attention to about 2^-22 relative, not the same bits).
sgllm_status sgllm__cuda_attn_decode_post(sgllm__cuda *c, const sgllm__cuda_qkv_post_args *a, int32_t window,
                                          float scale, int32_t n_splits, float *out, uint32_t quant_for,
                                          int64_t max_keys);
// The split count to use instead of n_splits for n_q queries of these heads when the splits
// merge across a thread block cluster (decode_merge 2): the largest, at most n_splits, whose
// clusters (one per query and head group, n_splits blocks each) can all be resident at once,
// so the launch does not run in waves; n_splits itself when no count fits or no cluster merge
// would run. Asked once per shape (the answers are cached), not per launch.
int32_t sgllm__cuda_attn_cluster_splits(sgllm__cuda *c, int32_t n_head, int32_t n_head_kv, int32_t head_dim,
                                        int64_t n_q, int32_t n_splits);
// Whether one query's decode attention over n_splits splits, told that it sees at most
// max_keys keys (0: not told), runs the tensor-core kernel (dispatch.decode_mma) rather than
// the CUDA-core one: what sgllm__cuda_attn_decode(_post) would launch.
int sgllm__cuda_attn_mma(const sgllm__cuda *c, int32_t head_dim, int32_t n_splits, int64_t max_keys);
// Prefill attention: the same inputs and result as attn_decode, computed as flash attention
// on the tensor cores (fp16 q, k, v and probabilities, fp32 accumulation and softmax), for
// batches of queries; tiles from dispatch.prefill_block_m/n and prefill_warps. Head dims that
// are not a multiple of 16 run the decode kernel (one split). Needs no scratch.
sgllm_status sgllm__cuda_attn_prefill(sgllm__cuda *c, const float *q, const uint16_t *k_cache,
                                      const uint16_t *v_cache, const int32_t *page_table, int32_t page_size,
                                      int32_t n_head, int32_t n_head_kv, int32_t head_dim, const int32_t *pos,
                                      int64_t n_q, int32_t window, float scale, float *out);
size_t sgllm__cuda_attn_scratch_bytes(int32_t n_head, int32_t head_dim, int64_t n_q, int32_t n_splits);

// Benchmark and synthetic-model helpers: fills w (rows, cols) of a weight type with valid
// random blocks from seed; reads bytes of buf in a streaming kernel (16-byte loads) and
// writes a checksum to sink (device, one float); raw cuBLAS bf16 GEMM C(m, n) = A(m, k) B(k, n)
// in row-major bf16 with fp32 accumulation.
sgllm_status sgllm__cuda_fill_random(sgllm__cuda *c, uint32_t type, void *w, int64_t rows, int64_t cols,
                                     uint64_t seed);
sgllm_status sgllm__cuda_read_bench(sgllm__cuda *c, const void *buf, size_t bytes, float *sink);
// Device-event timing of the work enqueued between start and stop (stop waits for it).
sgllm_status sgllm__cuda_timer_start(sgllm__cuda *c);
sgllm_status sgllm__cuda_timer_stop(sgllm__cuda *c, float *ms);
sgllm_status sgllm__cuda_gemm_bf16(sgllm__cuda *c, const void *a, const void *b, void *cmat, int64_t m, int64_t n,
                                   int64_t k);

// Benchmark floors (sgllm_impl.c, section 8c). sgllm__model_cost: what m must at least move
// or compute. weight_bytes: bytes of weights one decode token reads (every layer matrix, the
// output matrix and the norm weights; the embedding row is left out); kv_bytes: fp16 KV
// cache a decode token at position n_past reads (windows applied); matmul_weights: weights
// of the layer matrices (a prefill token costs 2 FLOPs each; the output matrix is left out,
// a prefill computes only its last token's logits); attn_flops: q.k and p.v of a causal
// prefill of n_prefill tokens from an empty cache; n_weights: every weight of the model.
typedef struct sgllm__cost {
    double weight_bytes, kv_bytes, matmul_weights, attn_flops, n_weights;
} sgllm__cost;
sgllm_status sgllm__model_cost(const sgllm_model *m, int64_t n_past, int64_t n_prefill, sgllm__cost *out);
// The device's two ceilings, measured on CUDA device 0 (about 2.5 GB of device memory):
// streaming read bandwidth in bytes/s (2 GiB, 16-byte loads, median of reps) and the
// cuBLAS bf16 GEMM rate in FLOP/s (8192^3, fp32 accumulation, median of min(reps, 20)).
// reps in 1..64. name (optional) receives the device name. SGLLM_ERR_BACKEND without CUDA.
sgllm_status sgllm__device_ceilings(int reps, double *read_bps, double *bf16_flops, char *name, size_t name_size,
                                    char *err, size_t err_size);

// Forward helpers. kv_write: row pos[t] (device, n_tok) of each fp16 cache (rows, kvd), mapped
// through page_table as in attn_decode, gets token t of k and v (n_tok rows of stride floats). add_bias: x (n_tok rows of stride) += b (n).
// gather_rows: dst(n, dim) row r = src row idx[r] (device). softcap: x = cap * tanh(x / cap).
// argmax: out[r] (device) = index of the largest of row r of x (rows, n), lowest on ties.
sgllm_status sgllm__cuda_kv_write(sgllm__cuda *c, const float *k, const float *v, int64_t stride, int64_t kvd,
                                  const int32_t *pos, int64_t n_tok, uint16_t *k_cache, uint16_t *v_cache,
                                  const int32_t *page_table, int32_t page_size);
sgllm_status sgllm__cuda_add_bias(sgllm__cuda *c, float *x, int64_t stride, const float *b, int64_t n, int64_t n_tok);
sgllm_status sgllm__cuda_gather_rows(sgllm__cuda *c, const float *src, const int32_t *idx, int64_t n, int64_t dim,
                                     float *dst);
sgllm_status sgllm__cuda_softcap(sgllm__cuda *c, float *x, int64_t n, float cap);
sgllm_status sgllm__cuda_argmax(sgllm__cuda *c, const float *x, int64_t rows, int64_t n, int32_t *out);
// Query heads one block of decode attention takes for n_q queries (dispatch.decode_group_split);
// 0 for a bad shape.
int32_t sgllm__cuda_attn_heads_per_block(sgllm__cuda *c, int32_t n_head, int32_t n_head_kv, int64_t n_q);
// Device sampling (sgllm_cuda.cu, section 9): the token sgllm_sampler_sample (sgllm_impl.c,
// section 6) would pick from logits (device, n_vocab) for the uniform u (or out.uni's), written
// where out says (below). args (device) holds the parameters; n_pen distinct tokens pen_tokens (device) that
// occurred pen_counts (device) times in the penalty window are penalized (both may be NULL when
// n_pen is 0; with NULL the kernels read logits as they are). work (device) holds
// sgllm__cuda_sample_work_bytes(n_vocab) bytes. Only enqueues kernels (two; four with penalty
// lists), so a CUDA graph may capture it; samplings of one context share its tickets and
// histogram, in stream order.
typedef struct sgllm__cuda_sample_args {
    double u; // uniform in [0, 1): the sampler's draw
    float temperature, top_p, min_p, repeat_penalty, frequency_penalty, presence_penalty;
    int32_t top_k, n_pen;
} sgllm__cuda_sample_args;
size_t sgllm__cuda_sample_work_bytes(int64_t n_vocab);
// Where the token goes: tok[0] (device); with pos (device) set, also tok[1] = *pos + 1 (the
// position after the one the sampled step read, so a decode loop advances without an upload);
// with host set (sgllm__cuda_readback_slot), also into that read-back slot, no copy needed.
// With uni (device, SGLLM__CUDA_SAMPLE_UNI doubles) and pos set, the draw's uniform is
// uni[*pos % SGLLM__CUDA_SAMPLE_UNI] instead of args->u (a decode loop uploads them in blocks).
#define SGLLM__CUDA_SAMPLE_UNI 64
typedef struct sgllm__cuda_sample_out {
    int32_t *tok;
    const int32_t *pos;
    int32_t *host;
    const double *uni;
} sgllm__cuda_sample_out;
sgllm_status sgllm__cuda_sample(sgllm__cuda *c, const float *logits, int64_t n_vocab, const sgllm__cuda_sample_args *args,
                                const int32_t *pen_tokens, const int32_t *pen_counts, void *work,
                                sgllm__cuda_sample_out out);
// The same answer when the caller knows the sampling is greedy without penalties (temperature
// <= 0, repeat_penalty 1, frequency and presence 0): the lowest index of the largest logit (NaN
// never wins; 0 when all are NaN), in one launch instead of sgllm__cuda_sample's five or six.
sgllm_status sgllm__cuda_sample_greedy(sgllm__cuda *c, const float *logits, int64_t n_vocab, void *work,
                                       sgllm__cuda_sample_out out);
// CUDA graphs: ops enqueued between begin and end are captured (not run); end instantiates
// them into *graph (NULL on failure), launch replays it on the stream. No synchronizing call
// (upload, download, reserve, alloc) may come between begin and end.
sgllm_status sgllm__cuda_graph_begin(sgllm__cuda *c);
sgllm_status sgllm__cuda_graph_end(sgllm__cuda *c, void **graph);
sgllm_status sgllm__cuda_graph_launch(sgllm__cuda *c, void *graph);
void sgllm__cuda_graph_free(sgllm__cuda *c, void *graph); // NULL is a no-op

#ifdef __cplusplus
}
#endif
#endif // SGLLM_INTERNAL
