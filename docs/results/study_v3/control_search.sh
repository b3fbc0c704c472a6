#!/usr/bin/env bash
# Study v3, phase 0: the positive control search (docs/results/study_v3/preregistration.md).
# GRPO only, validation split only: find the task, learning rate, warm-up of the rate, Adam setting and batch
# size at which GRPO learns (validation avg@16 at least +0.10 over the start, greedy no lower), and where it
# stops being stable. Nothing here reads the test split.
#
#   bash docs/results/study_v3/control_search.sh [OUT]     # default OUT=runs/study-v3/control
#
# Resumable: `popo sweep` skips finished runs and resumes interrupted ones from their last checkpoint.
set -euo pipefail
OUT=${1:-runs/study-v3/control}
PAR=(--workers 2 --threads 1 --no-report)
# The task: 3 numbers in 1-20 (about 23,000 problems), ops + - * /, 800 warm-up steps of imitation.
TASK=(testbed.task=countdown testbed.numbers=3 testbed.max_number=20 testbed.warmup_steps=800
      testbed.test_size=2000 testbed.validation_size=500 rollout.max_new_tokens=32)
# Validation every 50 steps: greedy + 16 samples on all 500 validation problems.
EVAL=(data.eval_source=testbed data.eval_size=500 train.eval_every=50 train.eval_samples=16
      train.save_every=50 train.diag_every=50)
popo sft "${TASK[@]}"

# Stage 1: the stability boundary in the learning rate, with and without a linear warm-up of the rate
# (10% of the steps), 16 prompts x 8, 400 steps, seed 0.
popo sweep "${TASK[@]}" "${EVAL[@]}" train.steps=400 rollout.prompts_per_step=16 rollout.group_size=8 \
    --methods grpo --grid optim.lr=3e-5,1e-4,3e-4,1e-3 --grid optim.warmup_ratio=0,0.1 --seeds 1 \
    --out "$OUT/stage1" "${PAR[@]}"
