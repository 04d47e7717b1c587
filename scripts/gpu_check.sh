#!/bin/bash
# The GRPO update on one GPU under DeepSpeed ZeRO-2, checked against the CPU, then timed (scripts/gpu_check.py).
#
#   bash scripts/gpu_check.sh [OUT_DIR]                 # default OUT_DIR: gpu_check
#   WHEELS=dir bash scripts/gpu_check.sh OUT_DIR        # install DeepSpeed (and what it needs) from wheels first
#   MODEL=dir bash scripts/gpu_check.sh OUT_DIR         # a model folder instead of SmolLM2's shape with seeded weights
#
# For a machine without network where torch, transformers, accelerate and peft are installed: DeepSpeed
# may come as wheels (WHEELS=a folder of .whl files, installed with --no-index into a private folder);
# vLLM is not needed (the rollout engine here is the transformers one). Writes OUT_DIR/cpu, OUT_DIR/gpu
# (result.pt, summary.json, compare.json) and OUT_DIR/gpu-bf16/summary.json (update tokens/s, MFU).
# The timing runs even when the comparison fails; the script then exits 1.
#
# The wheels, made on a machine with network for the target's Python (DeepSpeed is published as source
# only; DS_BUILD_OPS=0 builds it without compiling its ops, which this check does not use). On 2026-12-04 an
# image with torch, transformers, accelerate and peft also lacked pydantic and hjson; this set sufficed:
#   DS_BUILD_OPS=0 pip wheel --no-deps -w wheels deepspeed==0.19.8
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d wheels \
#       hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check}
PY=${PYTHON:-python3}
if [ -n "${WHEELS:-}" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/rlvr-wheels "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/rlvr-wheels${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! "$PY" -c "import deepspeed" 2>/dev/null; then
    echo "error: DeepSpeed does not import with $PY; pass WHEELS=dir (see the top of this script)" >&2
    exit 2
fi
LAUNCH=("$PY" -m accelerate.commands.launch --config_file recipes/accelerate/zero2.yaml --num_processes 1
        --main_process_port "${PORT:-29533}")
set -x
MODEL_ARGS=(${MODEL:+--model "$MODEL"})
CUDA_VISIBLE_DEVICES= "$PY" scripts/gpu_check.py run "$OUT/cpu" "${MODEL_ARGS[@]}"
"${LAUNCH[@]}" scripts/gpu_check.py run "$OUT/gpu" "${MODEL_ARGS[@]}"
agree=0
"$PY" scripts/gpu_check.py compare "$OUT/cpu" "$OUT/gpu" || agree=$?
"${LAUNCH[@]}" scripts/gpu_check.py run "$OUT/gpu-bf16" "${MODEL_ARGS[@]}" --timed 5 train.mixed_precision=bf16
exit "$agree"
