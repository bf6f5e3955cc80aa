#!/usr/bin/env python3
"""How well llama.cpp agrees with itself when only the micro-batch size changes.

Evaluates tests/golden/text.txt with the golden settings (CPU, flash attention off, f16 KV,
n_ubatch 512) and again one token at a time (n_batch = n_ubatch = 1), then prints the
teacher-forced argmax agreement, the largest top1-top2 margin (of the first run) at a
disagreement, the largest logit difference and the perplexity change. These numbers bound
how closely any other engine can be expected to match llama.cpp (docs/REFERENCE.md).

    python3 tests/golden/llamacpp_self_agreement.py --models-dir ~/.cache/sgllm
"""
import argparse
import os

import llama_cpp
import numpy as np


def run(path, text, n_batch):
    llm = llama_cpp.Llama(path, n_ctx=4096, n_batch=n_batch, n_ubatch=n_batch, n_threads=2,
                          n_threads_batch=2, n_gpu_layers=0, flash_attn=False, logits_all=True,
                          verbose=False)
    toks = llm.tokenize(text, add_bos=True, special=False)
    llm.reset()
    llm.eval(toks)
    logits = np.array(llm.scores[:len(toks)], dtype=np.float64)
    del llm
    return toks, logits


def nll(toks, logits):
    m = logits.max(axis=1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))
    return lse[:-1] - logits[np.arange(len(toks) - 1), toks[1:]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", default=os.path.expanduser("~/.cache/sgllm"))
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    text = open(os.path.join(here, "text.txt"), "rb").read()
    print("llama_cpp", llama_cpp.__version__)
    for name in ("gemma-3-270m-q4_k_m.gguf", "SmolLM2-135M-Instruct.Q4_1.gguf"):
        path = os.path.join(args.models_dir, name)
        toks, a = run(path, text, 512)
        toks1, b = run(path, text, 1)
        assert toks == toks1
        top = np.sort(a, axis=1)
        margin = top[:, -1] - top[:, -2]
        differ = a.argmax(axis=1) != b.argmax(axis=1)
        ppl_a, ppl_b = np.exp(nll(toks, a).mean()), np.exp(nll(toks, b).mean())
        print("%s: %d tokens, argmax agreement %.4f (%d differ), largest margin at a difference %.3f, "
              "max |logit diff| %.3f, ppl %.4f vs %.4f (%+.2f%%)" %
              (name, len(toks), 1 - differ.mean(), differ.sum(), margin[differ].max() if differ.any() else 0,
               np.abs(a - b).max(), ppl_a, ppl_b, 100 * (ppl_b / ppl_a - 1)))


if __name__ == "__main__":
    main()
