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
# Every phase is resumable: finished runs are skipped (within a sitting by their folders, across sittings by the
# committed raw tables, see ledger.py) and interrupted ones resume from their last checkpoint within a sitting.
# Phase 0, the control search that fixed the task and the budget, is control_search.sh.
set -euo pipefail
# the study defaults this script was written against (popo compare/sweep without a CONFIG used them until
# 2026-12-07; they now follow `popo demo`): every run keeps the settings it had
BASE=docs/results/study_defaults_v1.yaml
PHASE=${1:?tune, power or final}
OUT=${OUT:-runs/study-v3}
HERE=docs/results/study_v3
DATA=$HERE/countdown
PAR=(--workers 2 --threads 1 --no-report)
TASK=(testbed.task=countdown testbed.numbers=3 testbed.max_number=20 testbed.warmup_steps=800
      testbed.test_size=2000 testbed.validation_size=500 rollout.max_new_tokens=32)
# The budget (control search, stage 2: validation avg@16 levels off by 400-500 steps): 500 steps x 16 x 8.
STEPS=500
TRAIN=(train.steps=$STEPS rollout.prompts_per_step=16 rollout.group_size=8 train.save_every=50 train.diag_every=50)
# Tuning: validation (500 problems) at steps 0, 250 and 500, greedy + 16 samples; the rate maximising the
# final validation avg@16 over 3 seeds, from 5 log-spaced values over 2 decades (the rule of
# `popo compare --tune`, applied by ledger.py to the committed curves).
RATES=3e-6,1e-5,3e-5,1e-4,3e-4
TUNE_SEEDS=0,1,2
VALIDATION=(data.eval_source=testbed data.eval_size=500 train.eval_every=250 train.eval_samples=16)
# The final runs evaluate all 2,000 test problems, at the start and the end only.
TEST=(data.eval_source=testbed:test data.eval_size=2000 train.eval_every=$STEPS train.eval_samples=16)
TUNED=${TUNED:-grpo,popo,raft,nsr,w-reinforce}  # TUNED=grpo,popo runs the primary pair's tuning first
SEEDS=${SEEDS:-10}  # fixed by phase 2 (power.md) and written into the pre-registration before phase 3
FIRST_SEED=3        # the final runs use seeds 3 .. 3 + SEEDS - 1, none of them used for tuning
LEDGER=(--rates "$RATES" --seeds "$TUNE_SEEDS" --steps "$STEPS")

# The study spans sittings on machines that keep nothing but the repository: the committed raw tables are
# the record of finished runs (ledger.py), every batch is collected into them as soon as it finishes, and
# a sitting runs only what they lack. Commit $DATA after a sitting; an interrupted run starts over.
popo sft "${TASK[@]}"  # the shipped warm start (installed, not rebuilt)
case "$PHASE" in
  tune)
    mapfile -t BATCHES < <(python $HERE/ledger.py todo "$DATA/tuning" --arms "$TUNED" "${LEDGER[@]}")
    for batch in "${BATCHES[@]}"; do
      read -r seed arms rates <<< "$batch"
      popo sweep "$BASE" "${TASK[@]}" "${TRAIN[@]}" "${VALIDATION[@]}" --methods "$arms" --grid optim.lr="$rates" \
          --seeds 1 --seed-start "$seed" --out "$OUT/countdown/tune" "${PAR[@]}"
      python $HERE/derive.py collect "$OUT/countdown/tune" --task countdown --out "$DATA/tuning"
    done
    python $HERE/ledger.py choose "$DATA/tuning" --arms "$TUNED" "${LEDGER[@]}" --metric avg@16 ;;
  power)
    python $HERE/ledger.py choose "$DATA/tuning" --arms grpo,popo "${LEDGER[@]}" --metric avg@16
    python $HERE/derive.py power "$DATA/tuning" --plan $HERE/preregistration.json ;;
  final)
    python $HERE/ledger.py choose "$DATA/tuning" --arms "$TUNED" "${LEDGER[@]}" --metric avg@16
    rate() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]['chosen'])" \
             "$DATA/tuning/tuning.json" "$1"; }
    # each tuned arm at its chosen rate; popo-nosim at POPO's (it isolates one component of POPO)
    FINAL_SEEDS=$(seq -s, "$FIRST_SEED" $((FIRST_SEED + SEEDS - 1)))
    mapfile -t RANGES < <(python $HERE/ledger.py finals "$DATA" --arms "$TUNED,popo-nosim" \
                          --seeds "$FINAL_SEEDS" --steps "$STEPS")
    # Exploration (pass@k up to 256 on the first 500 test problems, seeds 3-5 of every arm, the start under 3
    # evaluation seeds, computed once and kept in $DATA/exploration/ so that every arm's report reads the same
    # start): final checkpoints do not outlast a sitting, so it runs in the sitting that trained those seeds.
    explore() {
      local arm=$1 dir="$OUT/countdown/final-$1"
      python $HERE/ledger.py explored "$DATA" --arms "$arm" --seeds 3,4,5 && return 0
      [ "$(find "$dir" -path "*/seed-[345]/done.json" | wc -l)" -eq 3 ] || return 0
      mkdir -p "$DATA/exploration"
      cp "$DATA"/exploration/start-problems-k256-n500*.json "$dir"/ 2>/dev/null || true
      python docs/results/pass_at_k.py "$dir" --methods "$arm" --k 256 --problems 500 --workers 2 \
          --start-seeds 3 --seeds 3,4,5 --out "$DATA/exploration/$arm.md"
      cp "$dir"/start-problems-k256-n500*.json "$DATA/exploration/"
      python $HERE/derive.py collect "$dir" --task countdown --out "$DATA"
    }
    for range in "${RANGES[@]}"; do
      read -r arm first count <<< "$range"
      lr=$(rate "${arm%-nosim}")
      popo compare "$BASE" "${TASK[@]}" "${TRAIN[@]}" "${TEST[@]}" optim.lr="$lr" --methods "$arm" \
          --seeds "$count" --seed-start "$first" --out "$OUT/countdown/final-$arm" "${PAR[@]}"
      python $HERE/derive.py collect "$OUT/countdown/final-$arm" --task countdown --out "$DATA"
      explore "$arm"
    done
    python $HERE/derive.py report "$DATA" --plan $HERE/preregistration.json ;;
  *) echo "unknown phase $PHASE: tune, power or final" >&2; exit 2 ;;
esac
