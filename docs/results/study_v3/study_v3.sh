#!/usr/bin/env bash
# Study v3 (docs/results/study_v3/preregistration.md): a positive control on validation, then POPO against
# GRPO, RAFT, NSR, W-REINFORCE and POPO's ablations on a fresh test split, every number re-derived from the raw
# per-seed, per-problem data by derive.py.
#
#   bash docs/results/study_v3/study_v3.sh tune      # phase 1: every tuned arm x 5 rates x 3 seeds (validation)
#   bash docs/results/study_v3/study_v3.sh power     # phase 2: raw tuning data, power and margin (commit them,
#                                                    #          and the seeds they fix, before phase 3)
#   bash docs/results/study_v3/study_v3.sh final     # phase 3: final runs on the test split, then the report
#
# Every phase is resumable: finished runs are skipped and interrupted ones resume from their last checkpoint.
# Phase 0, the control search that fixed the task and the budget, is control_search.sh.
set -euo pipefail
PHASE=${1:?tune, power or final}
OUT=${OUT:-runs/study-v3}
DATA=docs/results/study_v3/countdown
PAR=(--workers 2 --threads 1 --no-report)
TASK=(testbed.task=countdown testbed.numbers=3 testbed.max_number=20 testbed.warmup_steps=800
      testbed.test_size=2000 testbed.validation_size=500 rollout.max_new_tokens=32)
# The budget (control search, stage 2: validation avg@16 levels off by 400-500 steps): 500 steps x 16 x 8.
TRAIN=(train.steps=500 rollout.prompts_per_step=16 rollout.group_size=8 train.save_every=50 train.diag_every=50)
# Tuning: validation (500 problems) at steps 0, 250 and 500, greedy + 16 samples; the rate maximising the
# final validation avg@16 over 3 seeds, from 5 log-spaced values over 2 decades.
TUNE=(--tune optim.lr=3e-6,1e-5,3e-5,1e-4,3e-4 --tune-seeds 3 --tune-metric avg@16)
EVAL=(data.eval_size=500 train.eval_every=250 train.eval_samples=16)
# The final runs evaluate all 2,000 test problems, at the start and the end only.
FINAL=(--final-set data.eval_size=2000 --final-set train.eval_every=500)
TUNED=${TUNED:-grpo,popo,raft,nsr,w-reinforce}  # TUNED=grpo,popo runs the primary pair's tuning first
SEEDS=${SEEDS:-10}  # fixed by phase 2 (power.md) and written into the pre-registration before phase 3

popo sft "${TASK[@]}"  # the shipped warm start (installed, not rebuilt)
case "$PHASE" in
  tune)
    popo compare "${TASK[@]}" "${TRAIN[@]}" "${EVAL[@]}" --methods "$TUNED" "${TUNE[@]}" --seeds "$SEEDS" \
        "${FINAL[@]}" --tune-only --out "$OUT/countdown" "${PAR[@]}" ;;
  power)
    python docs/results/study_v3/derive.py collect "$OUT/countdown/tune" --task countdown --out "$DATA/tuning"
    python docs/results/study_v3/derive.py power "$DATA/tuning" --plan docs/results/study_v3/preregistration.json ;;
  final)
    popo compare "${TASK[@]}" "${TRAIN[@]}" "${EVAL[@]}" --methods "$TUNED" "${TUNE[@]}" --seeds "$SEEDS" \
        "${FINAL[@]}" --out "$OUT/countdown" "${PAR[@]}"
    # POPO's ablation at POPO's chosen rate (it isolates a component of POPO, everything else held fixed)
    LR=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['popo']['chosen'])" "$OUT/countdown/tuning.json")
    popo compare "${TASK[@]}" "${TRAIN[@]}" data.eval_size=2000 train.eval_every=500 train.eval_samples=16 \
        optim.lr="$LR" data.eval_source=testbed:test --methods popo-nosim \
        --seeds "$SEEDS" --seed-start 3 --out "$OUT/countdown-ablations" "${PAR[@]}"
    python docs/results/study_v3/derive.py collect "$OUT/countdown" "$OUT/countdown-ablations" --task countdown \
        --out "$DATA"
    python docs/results/study_v3/derive.py report "$DATA" --plan docs/results/study_v3/preregistration.json ;;
  *) echo "unknown phase $PHASE: tune, power or final" >&2; exit 2 ;;
esac
