#!/usr/bin/env bash
# Study v3, phase 0: the positive control search (docs/results/study_v3/preregistration.md).
# GRPO only, validation split only: find the task, learning rate, warm-up of the rate, Adam setting and batch
# size at which GRPO learns (validation avg@16 at least +0.10 over the start, greedy no lower), and where it
# stops being stable. Nothing here reads the test split.
#
#   bash docs/results/study_v3/control_search.sh [OUT] [STAGES]   # default OUT=runs/study-v3/control, STAGES=1,2
#
# Resumable: `popo sweep` skips finished runs and resumes interrupted ones from their last checkpoint. STAGES=2
# runs stage 2's new runs alone (its continuation of stage 1's runs needs their folders): on a machine that
# no longer has stage 1's folders, `derive.py control` keeps their committed rows.
set -euo pipefail
# the study defaults this script was written against (popo compare/sweep without a CONFIG used them until
# 2026-12-07; they now follow `popo demo`): every run keeps the settings it had
BASE=docs/results/study_defaults_v1.yaml
OUT=${1:-runs/study-v3/control}
STAGES=${2:-1,2}
PAR=(--workers 2 --threads 1 --no-report)
# The task: 3 numbers in 1-20 (about 23,000 problems), ops + - * /, 800 warm-up steps of imitation.
TASK=(testbed.task=countdown testbed.numbers=3 testbed.max_number=20 testbed.warmup_steps=800
      testbed.test_size=2000 testbed.validation_size=500 rollout.max_new_tokens=32)
# Validation every 50 steps: greedy + 16 samples on all 500 validation problems.
EVAL=(data.eval_source=testbed data.eval_size=500 train.eval_every=50 train.eval_samples=16
      train.save_every=50 train.diag_every=50)
popo sft "${TASK[@]}"

# Stage 1: the stability boundary in the learning rate, with and without a linear warm-up of the rate
# (10% of the steps), 16 prompts x 8, 400 steps, seed 0. (1e-3 was in the first grid and dropped before it
# ran, once 3e-4 had collapsed with and without the warm-up: the boundary lies below 3e-4.)
if [[ ,$STAGES, == *,1,* ]]; then
popo sweep "$BASE" "${TASK[@]}" "${EVAL[@]}" train.steps=400 rollout.prompts_per_step=16 rollout.group_size=8 \
    --methods grpo --grid optim.lr=3e-5,1e-4,3e-4 --grid optim.warmup_ratio=0,0.1 --seeds 1 \
    --out "$OUT/stage1" "${PAR[@]}"
fi

# Stage 2 (after stage 1: 3e-4 collapses with or without the warm-up of the rate; 3e-5 and 1e-4 learn and are
# still rising at step 400). (a) Where the curves level off: the two stage-1 runs without a warm-up of the
# rate (constant schedule, so continuing them changes nothing but the length) continued from step 400 to
# 1000 in copies of their folders. (b) 32 prompts per step at 1e-4. (c) The boundary between 1e-4 and 3e-4:
# 2e-4, and 3e-4 with Adam's beta2 = 0.99 (a second-moment estimate that follows the gradient scale faster).
S1=$OUT/stage1 S2=$OUT/stage2
mkdir -p "$S2/continued"
continue_run() {  # continue_run SOURCE NAME: copy a finished stage-1 run and train it on to step 1000
  [ -d "$S2/continued/$2" ] || cp -r "$1" "$S2/continued/$2"
  OMP_NUM_THREADS=1 popo train --resume "$S2/continued/$2" train.steps=1000 > "$S2/continued/$2.log" 2>&1
}
if [ -d "$S1" ]; then
  continue_run "$S1/grpo_lr_3e-5_warmup_ratio_0/seed-0" grpo-lr-3e-5 &
  continue_run "$S1/grpo_lr_1e-4_warmup_ratio_0/seed-0" grpo-lr-1e-4 &
  wait
fi
# One run a sweep: the batch-32 run (twice the rollouts) on one core, the other two one after the other on
# the other.
ONE=(--workers 1 --threads 1 --no-report)
popo sweep "$BASE" "${TASK[@]}" "${EVAL[@]}" train.steps=400 rollout.prompts_per_step=32 rollout.group_size=8 \
    --methods grpo --grid optim.lr=1e-4 --seeds 1 --out "$S2/batch32" "${ONE[@]}" &
popo sweep "$BASE" "${TASK[@]}" "${EVAL[@]}" train.steps=400 rollout.prompts_per_step=16 rollout.group_size=8 \
    --methods grpo --grid optim.lr=2e-4 --seeds 1 --out "$S2/boundary" "${ONE[@]}"
popo sweep "$BASE" "${TASK[@]}" "${EVAL[@]}" train.steps=400 rollout.prompts_per_step=16 rollout.group_size=8 \
    optim.betas=0.9,0.99 --methods grpo --grid optim.lr=3e-4 --seeds 1 --out "$S2/beta2" "${ONE[@]}"
wait
# The table and raw curves of every run (docs/results/study_v3/control/), merged with those already committed.
python docs/results/study_v3/derive.py control "$OUT" --out docs/results/study_v3/control
