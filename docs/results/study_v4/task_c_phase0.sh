#!/usr/bin/env bash
# Study v4, part c, phase 0 (pre-registration "c. A task where breadth decides something"; exploratory,
# validation only): warm-up lengths 400, 800, 1,600 for 4-number countdown (numbers 1-20, targets up to 99), each
# evaluated on the 500 validation problems (greedy + 16 samples at temperature 1, at most 48 new tokens); the
# first whose validation pass@16 lies in [0.30, 0.60] is chosen. Results: $HERE/task_c/warmups/*.json.
#
#   bash docs/results/study_v4/task_c_phase0.sh warmups
set -euo pipefail
PHASE=${1:?warmups}
HERE=docs/results/study_v4
TASK=(testbed.task=countdown testbed.numbers=4 testbed.max_number=20 testbed.test_size=2000
      testbed.validation_size=500 rollout.max_new_tokens=48)
case "$PHASE" in
  warmups)
    mkdir -p "$HERE/task_c/warmups"
    for steps in 400 800 1600; do
      out="$HERE/task_c/warmups/warmup-$steps.json"
      [ -f "$out" ] && continue
      model=$(popo sft "${TASK[@]}" testbed.warmup_steps=$steps | tail -1)
      popo eval --model "$model" --benchmarks testbed --samples 16 --temperature 1.0 --top-p 1.0 \
          --max-new-tokens 48 --zero-if-truncated --seed 0 --out "$out" "${TASK[@]}" testbed.warmup_steps=$steps
    done ;;
  *) echo "unknown phase $PHASE: warmups" >&2; exit 2 ;;
esac
