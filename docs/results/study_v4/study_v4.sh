#!/usr/bin/env bash
# Study v4 (docs/results/study_v4/preregistration.md): trajectories to a plateau, breadth at matched accuracy on a
# fresh test split (v4-test), a harder task, POPO's components.
#
#   bash docs/results/study_v4/study_v4.sh plateau   # a: grpo, popo, raft at 1e-4, seeds 0-2, 2,000 steps (validation)
#   bash docs/results/study_v4/study_v4.sh collect   # the finished runs' raw tables into docs/results/study_v4/plateau/
#
# Resumable: finished runs are skipped within a sitting (their folders) and across sittings (the committed raw
# tables: `frontier.py todo`); an interrupted run resumes from its last checkpoint within a sitting.
set -euo pipefail
PHASE=${1:?plateau or collect}
OUT=${OUT:-runs/study-v4}
HERE=docs/results/study_v4
PAR=(--workers "${WORKERS:-2}" --threads 1 --no-report)
# v3's task and warm start; v4-test and the demo's split carved from RL-train (never trained on by any v4 run)
TASK=(testbed.task=countdown testbed.numbers=3 testbed.max_number=20 testbed.warmup_steps=800
      testbed.test_size=2000 testbed.validation_size=500 testbed.reserved=demo:500,v4-test:1500
      rollout.max_new_tokens=32)
PLATEAU_STEPS=2000
PLATEAU=(train.steps=$PLATEAU_STEPS rollout.prompts_per_step=16 rollout.group_size=8 train.save_every=100
         train.diag_every=100 data.eval_source=testbed data.eval_size=500 train.eval_every=100
         train.eval_samples=16 optim.lr=1e-4)
ARMS=grpo,popo,raft
SEEDS=0,1,2
popo sft "${TASK[@]}"  # the shipped warm start (installed, not rebuilt)
case "$PHASE" in
  plateau)
    mapfile -t TODO < <(python $HERE/collect.py todo "$HERE/plateau" --arms "$ARMS" --seeds "$SEEDS")
    for batch in "${TODO[@]}"; do
      read -r arms first count <<< "$batch"
      popo compare "${TASK[@]}" "${PLATEAU[@]}" --methods "$arms" --seeds "$count" --seed-start "$first" \
          --out "$OUT/plateau" "${PAR[@]}"
      python $HERE/collect.py collect "$OUT/plateau" --out "$HERE/plateau"
    done ;;
  collect)
    python $HERE/collect.py collect "$OUT/plateau" --out "$HERE/plateau" ;;
  *) echo "unknown phase $PHASE: plateau or collect" >&2; exit 2 ;;
esac
