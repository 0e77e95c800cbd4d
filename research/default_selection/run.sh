#!/usr/bin/env bash
# Runs the benchmark's selection suite for each candidate default of wrap() (resumable: the same
# command skips the runs already in the output directory's runs.jsonl).
# Usage: bash research/default_selection/run.sh [OUTPUT_DIR]
set -euo pipefail
out=${1:-research/default_selection/results}
common=(--suite selection --output-dir "$out")
# Each candidate names every setting it changes from the 0.1 defaults (initial_rate 0.5,
# gradient_scale 300, normalized inputs, gradient multiplied), so that the runs keep their keys
# whatever wrap()'s defaults are now.
candidates=(
  '{"initial_rate": 0.5}'
  '{"initial_rate": 0.5, "normalize_controller_gradient": true, "gradient_scale": 0.3}'
  '{"initial_rate": 0.5, "normalize_controller_gradient": true, "gradient_scale": 0.03}'
  '{"initial_rate": 0.5, "normalize_controller_inputs": false}'
  '{"initial_rate": 0.8}'
)
for candidate in "${candidates[@]}"; do
  echo "== candidate $candidate"
  adafilter-keras benchmark "${common[@]}" --wrap-settings "$candidate"
done
