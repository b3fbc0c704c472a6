#!/usr/bin/env bash
# Study v4, part c, phase 0 (pre-registration "c. A task where breadth decides something"; exploratory,
# validation only): warm-up lengths 400, 800, 1,600 for 4-number countdown (numbers 1-20, targets up to 99), each
# evaluated on the 500 validation problems (greedy + 16 samples at temperature 1, at most 48 new tokens); the
# first whose validation pass@16 lies in [0.30, 0.60] is chosen (`derive.py warmups`). Results:
# $HERE/task_c/warmups/*.json and report.md. Then GRPO on the chosen warm start at 3e-5, 1e-4 and 3e-4, one seed,
# 500 steps evaluated every 100 on validation (task_c.yaml): where it learns, and whether 500 steps reach a plateau.
#
#   bash docs/results/study_v4/task_c_phase0.sh warmups
#   WORKERS=2 OUT=runs/study-v4 bash docs/results/study_v4/task_c_phase0.sh grpo   # raw tables: $HERE/task_c/phase0
set -euo pipefail
PHASE=${1:?warmups or grpo}
OUT=${OUT:-runs/study-v4}
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
      gzip -9 -n -f "${out%.json}.records.jsonl"  # per-problem samples, committed compressed
    done ;;
  grpo)
    steps=$(python $HERE/derive.py warmups "$HERE/task_c/warmups" | tail -1)
    popo sweep $HERE/task_c.yaml testbed.warmup_steps="$steps" --methods grpo --seeds 1 --seed-start 0 \
        --grid optim.lr=3e-5,1e-4,3e-4 --workers "${WORKERS:-2}" --threads 1 --no-report --out "$OUT/task-c-phase0"
    python $HERE/collect.py collect "$OUT/task-c-phase0" --out "$HERE/task_c/phase0" ;;
  *) echo "unknown phase $PHASE: warmups or grpo" >&2; exit 2 ;;
esac
