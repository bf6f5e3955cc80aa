#!/usr/bin/env python3
"""Golden reference data for tests/test_golden.c, computed with llama.cpp (llama-cpp-python).

    python3 tests/golden/make_goldens.py --models-dir ~/.cache/sgllm          # goldens
    python3 tests/golden/make_goldens.py --models-dir ~/.cache/sgllm --perf   # docs/PERF-llamacpp.txt

Everything runs on the CPU (n_gpu_layers=0, flash attention off, default f16 KV cache) with
n_ctx=4096, n_batch=512, n_threads=2 and all-position logits. Nothing is random except the
sampled vocabulary ids, which come from a fixed seed, so a rerun with the same llama-cpp-python
build and the same model files writes the same bytes.

For each model (tag: gemma, smollm) three files are written next to this script. They are
whitespace-separated words that C reads one at a time; '#' starts a comment that runs to the
end of the line. Floats are written with enough digits to round-trip (%.9g for float32 logits,
%.17g for float64 statistics). Prompt texts are stored as hex of their UTF-8 bytes (plus a
readable repr in a comment).

<tag>.logits.txt   last-position logits of PROMPTS[tag] (tokenized with add_bos=True,
                   special=True, i.e. BOS when the vocabulary asks for it, control tokens parsed)
    header: key value pairs (format, llama_cpp_version, model, n_vocab, n_top, n_sample,
            noise_* = how far llama.cpp drifts from itself, see below), then n_prompts N, then
    N blocks:
        prompt <index>
        text_hex <hex>
        n_tokens <n>  <n token ids>
        top1 <id> top2 <id> margin <logit(top1) - logit(top2)>
        logsumexp <float64 over the full vocabulary>
        max_abs <max |logit| over the full vocabulary>
        top <n_top>     then n_top lines "<id> <logit>", by descending logit (ties: lower id)
        sample <n_sample> then n_sample lines "<id> <logit>" for fixed pseudo-random ids
        end

<tag>.teacher.txt  teacher-forced evaluation of text.txt (add_bos=True, special=False), all
                   tokens in one sequence, logits at every position
    header: format, llama_cpp_version, model, n_vocab, ppl, mean_nll, noise_* , then
        n_tokens <n>
    n lines "<pos> <token> <top1> <top2> <margin> <nll>": top1/top2/margin describe the logits
    at pos (which predict token pos+1); nll = -log_softmax(logits[pos-1])[token] is the loss
    of token pos given its prefix (0 for pos 0, which nothing predicts).
    ppl = exp(mean of nll over pos 1..n-1), computed in float64.

<tag>.greedy.txt   greedy continuation: reset, evaluate the prompt, then repeatedly take the
                   argmax of the last logits and evaluate that one token
    header: format, llama_cpp_version, model, n_vocab, n_steps, n_prompts N, then N blocks:
        prompt <index>
        text_hex <hex>
        n_tokens <n>  <n token ids>
        steps <n_steps> then n_steps lines "<token> <top2> <margin>" (token = the argmax taken)
        end

noise_*: the same computation repeated by llama.cpp with flash attention on, and again with
an f32 KV cache (each alone), compared with the reference by the statistics the C test uses;
the largest is written. They show how far llama.cpp drifts from itself under floating-point
details that are equally valid, the floor any tolerance must sit above (docs/REFERENCE.md).
    logits:  noise_max_logit_diff (stored ids), noise_max_logprob_diff (top ids),
             noise_max_kl (top-truncated KL), noise_max_lse_diff, noise_max_centered_logit_diff
             (stored ids, after removing the mean difference)
    teacher: noise_top1_mismatch (positions whose argmax changed), noise_max_flip_margin
             (the largest reference margin among them), noise_unexplained (changes not
             explained by a near tie: reference margin >= noise_tie_margin or the new argmax
             is not the reference's second), noise_ppl_rel |ppl'/ppl - 1|, noise_max_nll_diff
    greedy:  noise_diverged (runs whose 32 tokens differ), noise_max_divergence_margin and
             noise_unexplained at the first differing step
"""

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time

import numpy as np

import llama_cpp

HERE = os.path.dirname(os.path.abspath(__file__))
N_TOP = 64
N_SAMPLE = 256
N_STEPS = 32
SAMPLE_SEED = 20240917
ROWS_PER_CHUNK = 128  # float64 statistics over (rows, n_vocab) are computed in slices
# Equally valid llama.cpp configurations that differ only in floating-point details; the
# noise_* statistics are the largest difference between the reference and any of them.
VARIANTS = [dict(flash_attn=True), dict(f32_kv=True)]
TIE_MARGIN = 1.0  # same meaning as GOLDEN_TIE_MARGIN in tests/test_golden.c

MODELS = [
    ("gemma", "gemma-3-270m-q4_k_m.gguf"),
    ("smollm", "SmolLM2-135M-Instruct.Q4_1.gguf"),
]

COMMON_PROMPTS = [
    "What is the tallest mountain in Africa, and how high is it?",
    "Here is a short shopping list:\n1. eggs\n2.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n",
    "1, 1, 2, 3, 5, 8, 13, 21, 34,",
    "The old lighthouse keeper opened the door and said,",
    "Le caf\u00e9 est tr\u00e8s chaud, mais le th\u00e9 est froid. \u6771\u4eac\u306e\u5929\u6c17\u306f",
    "  Two leading spaces,\ttabs\tand\n\nblank lines...   trailing?!",
    "{\"name\": \"Ada\", \"year\": 1843, \"tags\": [\"math\", ",
    ("Rivers carry sand from the mountains to the sea. Over thousands of years the sand builds "
     "deltas, wide flat plains where the river splits into many channels. Farmers like deltas "
     "because the soil is rich, but the land floods often and the channels move. In this short "
     "report we describe three deltas and explain"),
]

CHAT = {
    "gemma": ("<start_of_turn>user\nWrite one sentence about bread.<end_of_turn>\n"
              "<start_of_turn>model\n"),
    "smollm": ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
               "<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n<|im_start|>assistant\n"),
}

GREEDY_COMMON = [
    "The capital of France is",
    "def add(a, b):\n",
    "Water boils at a temperature of",
    "The planets of the solar system, in order:\n1.",
]


def prompts_for(tag):
    return COMMON_PROMPTS[:3] + [CHAT[tag]] + COMMON_PROMPTS[3:]


def greedy_prompts_for(tag):
    return [CHAT[tag]] + GREEDY_COMMON


def load(path, flash_attn=False, f32_kv=False, logits_all=True):
    kw = dict(n_ctx=4096, n_batch=512, n_ubatch=512, n_threads=2, n_threads_batch=2,
              n_gpu_layers=0, flash_attn=flash_attn, logits_all=logits_all, verbose=False)
    if f32_kv:
        kw["type_k"] = llama_cpp.GGML_TYPE_F32
        kw["type_v"] = llama_cpp.GGML_TYPE_F32
    return llama_cpp.Llama(path, **kw)


def row_stats(row):
    """(top1, top2, margin, logsumexp, max_abs, order) of one float32 logit row."""
    order = np.argsort(-row, kind="stable")  # descending; equal logits keep the lower id first
    r64 = row.astype(np.float64)
    m = r64.max()
    lse = m + np.log(np.exp(r64 - m).sum())
    t1, t2 = int(order[0]), int(order[1])
    return t1, t2, float(row[t1]) - float(row[t2]), float(lse), float(np.abs(r64).max()), order


def header(f, kind, model_file, n_vocab, extra):
    f.write("# sgllm golden data (%s), written by tests/golden/make_goldens.py; do not edit.\n" % kind)
    f.write("# reference: llama.cpp through llama-cpp-python, CPU only, flash attention off, f16 KV,\n")
    f.write("# n_ctx 4096, n_batch 512, n_threads 2. Format: see make_goldens.py.\n")
    f.write("format sgllm-golden-%s-1\n" % kind)
    f.write("llama_cpp_version %s\n" % llama_cpp.__version__)
    f.write("model %s\n" % model_file)
    f.write("n_vocab %d\n" % n_vocab)
    for k, v in extra:
        f.write("%s %s\n" % (k, v))


def write_prompt(f, i, text, toks):
    f.write("# %r\n" % text)
    f.write("prompt %d\n" % i)
    f.write("text_hex %s\n" % text.encode("utf-8").hex())
    f.write("n_tokens %d %s\n" % (len(toks), " ".join(str(t) for t in toks)))


def last_logits(llm, toks):
    llm.reset()
    llm.eval(toks)
    return np.array(llm.scores[len(toks) - 1], dtype=np.float32)


def compare_rows(ref, other, top, ids):
    """The statistics tests/test_golden.c computes between llama.cpp and sgllm, here between
    two llama.cpp configurations: max |logit diff| over ids, max |log-prob diff| over top,
    the top-truncated KL(ref || other) = sum over top of p_ref * (logp_ref - logp_other), the
    logsumexp difference and the max |logit diff - its mean| over ids (a shift of every logit
    changes no probability)."""
    lse_r, lse_o = row_stats(ref)[3], row_stats(other)[3]
    d = (ref[top].astype(np.float64) - lse_r) - (other[top].astype(np.float64) - lse_o)
    p = np.exp(ref[top].astype(np.float64) - lse_r)
    raw = other[ids].astype(np.float64) - ref[ids]
    return (float(np.abs(raw).max()), float(np.abs(d).max()), float((p * d).sum()),
            abs(lse_r - lse_o), float(np.abs(raw - raw.mean()).max()))


def make_logits(tag, model_file, path, out):
    llm = load(path)
    n_vocab = llm.n_vocab()
    sample_ids = np.random.default_rng(SAMPLE_SEED).choice(n_vocab, N_SAMPLE, replace=False)
    blocks = []
    for i, text in enumerate(prompts_for(tag)):
        toks = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        blocks.append((i, text, toks, last_logits(llm, toks)))
    del llm
    noise = np.zeros(5)  # max logit diff, log-prob diff, KL, lse diff, centered logit diff
    for kw in VARIANTS:
        alt = load(path, **kw)
        for i, text, toks, row in blocks:
            top = row_stats(row)[5][:N_TOP]
            st = compare_rows(row, last_logits(alt, toks), top, np.concatenate([top, sample_ids]))
            noise = np.maximum(noise, st)
        del alt
    with open(out, "w") as f:
        header(f, "logits", model_file, n_vocab,
               [("n_top", N_TOP), ("n_sample", N_SAMPLE), ("sample_seed", SAMPLE_SEED),
                ("noise_max_logit_diff", "%.6g" % noise[0]),
                ("noise_max_logprob_diff", "%.6g" % noise[1]),
                ("noise_max_kl", "%.6g" % noise[2]),
                ("noise_max_lse_diff", "%.6g" % noise[3]),
                ("noise_max_centered_logit_diff", "%.6g" % noise[4]),
                ("n_prompts", len(blocks))])
        for i, text, toks, row in blocks:
            t1, t2, margin, lse, max_abs, order = row_stats(row)
            write_prompt(f, i, text, toks)
            f.write("top1 %d top2 %d margin %.9g\n" % (t1, t2, margin))
            f.write("logsumexp %.17g\nmax_abs %.9g\n" % (lse, max_abs))
            f.write("top %d\n" % N_TOP)
            for t in order[:N_TOP]:
                f.write("%d %.9g\n" % (t, row[t]))
            f.write("sample %d\n" % N_SAMPLE)
            for t in sample_ids:
                f.write("%d %.9g\n" % (t, row[t]))
            f.write("end\n")
    print("%s: %d prompts; llama.cpp vs itself: max logit diff %.3g, max log-prob diff %.3g, "
          "max KL %.3g, max lse diff %.3g, max centered logit diff %.3g" % ((out, len(blocks)) + tuple(noise)))


def top_two(rows):
    """Best and second-best ids of each row of (rows, n_vocab); equal logits: lower id first."""
    t1 = rows.argmax(axis=1)  # numpy returns the first (lowest) id among equal maxima
    masked = rows.copy()
    masked[np.arange(len(rows)), t1] = -np.inf
    return t1, masked.argmax(axis=1)


def teacher(llm, toks):
    """Per position: top1, top2, margin, nll of the token at that position (0 at pos 0)."""
    llm.reset()
    llm.eval(toks)
    n = len(toks)
    top1 = np.zeros(n, np.int64)
    top2 = np.zeros(n, np.int64)
    margin = np.zeros(n)
    nll = np.zeros(n)
    for s in range(0, n, ROWS_PER_CHUNK):
        rows = np.array(llm.scores[s:min(n, s + ROWS_PER_CHUNK)], dtype=np.float32)  # (rows, n_vocab)
        idx = np.arange(len(rows))
        t1, t2 = top_two(rows)
        top1[s:s + len(rows)], top2[s:s + len(rows)] = t1, t2
        margin[s:s + len(rows)] = rows[idx, t1].astype(np.float64) - rows[idx, t2]
        r64 = rows.astype(np.float64)
        m = r64.max(axis=1)
        lse = m + np.log(np.exp(r64 - m[:, None]).sum(axis=1))
        nxt = np.array(toks[s + 1:s + len(rows) + 1])  # the tokens these rows predict
        k = len(nxt)
        nll[s + 1:s + 1 + k] = lse[:k] - r64[idx[:k], nxt]
    ppl = float(np.exp(nll[1:].mean()))
    return top1, top2, margin, nll, ppl


def make_teacher(tag, model_file, path, out):
    text = open(os.path.join(HERE, "text.txt"), "rb").read()
    llm = load(path)
    toks = llm.tokenize(text, add_bos=True, special=False)
    top1, top2, margin, nll, ppl = teacher(llm, toks)
    n_vocab = llm.n_vocab()
    del llm
    # llama.cpp against itself: disagreements, and those a tie margin would not explain
    flips, flip_margin, unexplained, ppl_rel, nll_diff = 0, 0.0, 0, 0.0, 0.0
    for kw in VARIANTS:
        alt = load(path, **kw)
        a_top1, _, _, a_nll, a_ppl = teacher(alt, toks)
        del alt
        d = np.flatnonzero(a_top1 != top1)
        flips = max(flips, len(d))
        flip_margin = max(flip_margin, float(margin[d].max()) if len(d) else 0.0)
        unexplained = max(unexplained, int(((margin[d] >= TIE_MARGIN) | (a_top1[d] != top2[d])).sum()))
        ppl_rel = max(ppl_rel, abs(a_ppl / ppl - 1))
        nll_diff = max(nll_diff, float(np.abs(a_nll - nll).max()))
    with open(out, "w") as f:
        header(f, "teacher", model_file, n_vocab,
               [("ppl", "%.17g" % ppl), ("mean_nll", "%.17g" % nll[1:].mean()),
                ("noise_top1_mismatch", flips), ("noise_max_flip_margin", "%.6g" % flip_margin),
                ("noise_tie_margin", TIE_MARGIN), ("noise_unexplained", unexplained),
                ("noise_ppl_rel", "%.6g" % ppl_rel), ("noise_max_nll_diff", "%.6g" % nll_diff),
                ("n_tokens", len(toks))])
        f.write("# pos token top1 top2 margin nll\n")
        for p in range(len(toks)):
            f.write("%d %d %d %d %.9g %.17g\n" % (p, toks[p], top1[p], top2[p], margin[p], nll[p]))
    print("%s: %d tokens, ppl %.6f; llama.cpp vs itself: %d argmax changes (largest ref margin "
          "%.3g, %d not explained by a tie margin < %g), ppl rel %.3g, max nll diff %.3g"
          % (out, len(toks), ppl, flips, flip_margin, unexplained, TIE_MARGIN, ppl_rel, nll_diff))


def greedy(llm, toks):
    """N_STEPS greedy steps: (token, top2, margin) each."""
    llm.reset()
    llm.eval(toks)
    steps = []
    for step in range(N_STEPS):
        t1, t2, margin, _, _, _ = row_stats(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))
        steps.append((t1, t2, margin))
        if step + 1 < N_STEPS:
            llm.eval([t1])
    return steps


def make_greedy(tag, model_file, path, out):
    llm = load(path)
    n_vocab = llm.n_vocab()
    runs = []
    for text in greedy_prompts_for(tag):
        toks = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        steps = greedy(llm, toks)
        runs.append((text, toks, steps))
        print("  greedy: %r" % llm.detokenize([s[0] for s in steps]).decode("utf-8", "replace"))
    del llm
    # llama.cpp against itself: where the continuations part, and llama.cpp's margin there
    diverged, div_margin, unexplained = 0, 0.0, 0
    for kw in VARIANTS:
        alt = load(path, **kw)
        for text, toks, steps in runs:
            other = greedy(alt, toks)
            for (t1, t2, m), (o1, _, _) in zip(steps, other):
                if t1 != o1:
                    diverged += 1
                    div_margin = max(div_margin, m)
                    unexplained += int(m >= TIE_MARGIN or o1 != t2)
                    break
        del alt
    with open(out, "w") as f:
        header(f, "greedy", model_file, n_vocab,
               [("n_steps", N_STEPS), ("noise_diverged", diverged),
                ("noise_max_divergence_margin", "%.6g" % div_margin),
                ("noise_tie_margin", TIE_MARGIN), ("noise_unexplained", unexplained),
                ("n_prompts", len(runs))])
        for i, (text, toks, steps) in enumerate(runs):
            write_prompt(f, i, text, toks)
            f.write("steps %d\n" % N_STEPS)
            for t1, t2, m in steps:
                f.write("%d %d %.9g\n" % (t1, t2, m))
            f.write("end\n")
    print("%s: %d prompts x %d steps; llama.cpp vs itself: %d of %d runs diverge (largest ref "
          "margin %.3g, %d not explained)" % (out, len(runs), N_STEPS, diverged,
                                              len(runs) * len(VARIANTS), div_margin, unexplained))


def perf(models_dir, out):
    """llama.cpp speed with 2 threads: wall time of the eval calls (time.perf_counter), after
    one untimed warm-up of the same work; the median of 3 runs is reported with all runs,
    plus llama.cpp's own llama_perf_context counters for the last run."""
    text = open(os.path.join(HERE, "text.txt"), "rb").read()
    lines = ["# llama.cpp speed reference for docs/PERF.md (raw), written by",
             "# tests/golden/make_goldens.py --perf",
             "date %s" % datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
             "llama_cpp_version %s" % llama_cpp.__version__,
             "python %s" % platform.python_version()]
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    for ln in cpu.splitlines():
        if ln.split(":")[0].strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Flags"):
            key, val = ln.split(":", 1)
            if key.strip() == "Flags":
                val = " ".join(x for x in val.split() if x.startswith(("avx", "fma", "f16c")))
            lines.append("cpu %s: %s" % (key.strip(), val.strip()))
    lines.append("settings: n_threads 2, n_threads_batch 2, n_batch 512, n_ubatch 512, n_ctx 4096,"
                 " CPU only, flash attention off, f16 KV, logits of the last token only")
    lines.append("pp: one eval() of the first 512 tokens of text.txt into an empty context")
    lines.append("tg: after an 8-token prompt, 128 eval() calls of one token each (greedy argmax")
    lines.append("    of the last logits between calls, not timed)")
    for tag, model_file in MODELS:
        llm = load(os.path.join(models_dir, model_file), logits_all=False)
        n_vocab = llm.n_vocab()
        toks = llm.tokenize(text, add_bos=True, special=False)
        pp_toks = toks[:512]
        pp, tg = [], []
        for rep in range(4):  # rep 0 is the warm-up
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(pp_toks)
            dt = time.perf_counter() - t0
            if rep:
                pp.append(512 / dt)
        for rep in range(4):
            llm.reset()
            llm.eval(toks[:8])
            llama_cpp.llama_perf_context_reset(llm.ctx)
            spent = 0.0
            for _ in range(128):
                logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))
                nxt = int(np.argmax(logits))
                t0 = time.perf_counter()
                llm.eval([nxt])
                spent += time.perf_counter() - t0
            if rep:
                tg.append(128 / spent)
        pc = llama_cpp.llama_perf_context(llm.ctx)
        lines.append("%s %s: pp512 %.1f tok/s (runs %s), tg128 %.1f tok/s (runs %s)"
                     % (tag, model_file, float(np.median(pp)), " ".join("%.1f" % x for x in pp),
                        float(np.median(tg)), " ".join("%.1f" % x for x in tg)))
        lines.append("%s llama_perf_context (last tg run): n_eval %d in %.1f ms = %.1f tok/s"
                     % (tag, pc.n_eval, pc.t_eval_ms, pc.n_eval / pc.t_eval_ms * 1e3))
        del llm
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models-dir", default=os.path.expanduser("~/.cache/sgllm"))
    ap.add_argument("--perf", action="store_true", help="write docs/PERF-llamacpp.txt instead")
    args = ap.parse_args()
    if args.perf:
        perf(args.models_dir, os.path.join(HERE, "..", "..", "docs", "PERF-llamacpp.txt"))
        return
    for tag, model_file in MODELS:
        path = os.path.join(args.models_dir, model_file)
        if not os.path.exists(path):
            sys.exit("missing model %s (run tests/fetch_models.sh)" % path)
        make_logits(tag, model_file, path, os.path.join(HERE, tag + ".logits.txt"))
        make_teacher(tag, model_file, path, os.path.join(HERE, tag + ".teacher.txt"))
        make_greedy(tag, model_file, path, os.path.join(HERE, tag + ".greedy.txt"))


if __name__ == "__main__":
    main()
