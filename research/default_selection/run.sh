#!/usr/bin/env bash
# Runs the benchmark's selection suite for each candidate default of wrap() (resumable: the same
# command skips the runs already in the output directory's runs.jsonl).
# Usage: bash research/default_selection/run.sh [OUTPUT_DIR]
set -euo pipefail
out=${1:-research/default_selection/results}
common=(--suite selection --methods finetune adafilter --optimizers sgd adam --output-dir "$out")
candidates=(
  '{}'
  '{"normalize_controller_gradient": true, "gradient_scale": 0.3}'
  '{"normalize_controller_gradient": true, "gradient_scale": 0.03}'
)
for candidate in "${candidates[@]}"; do
  echo "== candidate $candidate"
  if [ "$candidate" = '{}' ]; then
    adafilter-keras benchmark "${common[@]}"
  else
    adafilter-keras benchmark "${common[@]}" --wrap-settings "$candidate"
  fi
done
