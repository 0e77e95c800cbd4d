#!/usr/bin/env bash
# The accelerator measurements of docs/performance.md, in one command (no TensorFlow needed):
#   bash benchmarks/accelerator.sh OUTPUT_DIR [REPEATS]
# (IMAGE_SIZE, BATCH_SIZE and FIT_STEPS in the environment shrink it for a dry run on a CPU.)
# 1. step time and memory of ResNet50 at 224 px, batch 128: JAX in float32 and in mixed_bfloat16,
#    PyTorch in mixed_bfloat16 (finetune, adafilter, feature_extraction; with a profile);
# 2. `model.fit` of wrap(ResNet50) for 200 steps on JAX, with its loss, gate and save/reload checks.
# Each part writes its JSON and log into OUTPUT_DIR as soon as it ends, and a failing part does not
# stop the next one; the exit status is that of the last failing part.
set -u
out=${1:?usage: bash benchmarks/accelerator.sh OUTPUT_DIR [REPEATS]}
repeats=${2:-20}
size=${IMAGE_SIZE:-224}
batch=${BATCH_SIZE:-128}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
status=0
step_time() {  # backend dtype
    KERAS_BACKEND=$1 python3 benchmarks/step_time.py --image-size "$size" --batch-size "$batch" \
        --dtype "$2" --repeats "$repeats" --profile --output "$out/step_time_resnet50_${size}px_$1_$2.json" \
        >"$out/step_time_$1_$2.log" 2>&1 || status=$?
    grep -E '^\|' "$out/step_time_$1_$2.log" | head -6
}
step_time jax float32
step_time jax mixed_bfloat16
step_time torch mixed_bfloat16
KERAS_BACKEND=jax python3 benchmarks/fit_check.py --steps "${FIT_STEPS:-200}" --image-size "$size" \
    --verbose 0 --output "$out/fit_check_resnet50_${size}px_jax.json" \
    >"$out/fit_check_jax.log" 2>&1 || status=$?
tail -n 5 "$out/fit_check_jax.log"
exit "$status"
