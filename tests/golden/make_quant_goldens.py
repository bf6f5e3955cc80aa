#!/usr/bin/env python3
"""Writes tests/golden/quant_rows.txt: the first rows of a few tensors of the two test models,
dequantized by the `gguf` python package (gguf.quants.dequantize), an implementation
independent of ours. tests/test_quant.c compares sgllm__dequant_row_ref against it.

usage: python3 tests/golden/make_quant_goldens.py [models dir, default ~/.cache/sgllm]
Line format: <model file> <tensor> <type> <row> <n> <n values as %.9g>
"""
import os
import sys

import gguf
import numpy as np

PICKS = [
    ("gemma-3-270m-q4_k_m.gguf", ["blk.0.ffn_down.weight", "blk.0.attn_output.weight",
                                  "token_embd.weight", "blk.0.attn_q.weight"]),
    ("SmolLM2-135M-Instruct.Q4_1.gguf", ["blk.0.ffn_down.weight", "token_embd.weight"]),
]
ROWS = 2


def main():
    models = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/sgllm")
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quant_rows.txt")
    lines = []
    for fname, names in PICKS:
        reader = gguf.GGUFReader(os.path.join(models, fname))
        tensors = {t.name: t for t in reader.tensors}
        for name in names:
            t = tensors[name]
            n = int(t.shape[0])  # ne[0], the row width
            raw = np.asarray(t.data)  # (rows, row bytes) for quantized types
            rows = gguf.quants.dequantize(raw[:ROWS], t.tensor_type).reshape(ROWS, n)
            for r in range(ROWS):
                vals = " ".join("%.9g" % v for v in rows[r].astype(np.float32))
                lines.append("%s %s %s %d %d %s" % (fname, name, t.tensor_type.name, r, n, vals))
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", out, len(lines), "rows")


if __name__ == "__main__":
    main()
