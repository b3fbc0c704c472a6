#!/usr/bin/env bash
# Study v2 (docs/results.md, "Study v2"): both testbed tasks, nine RL methods and two supervised controls,
# each at its own learning rate chosen on the validation split, compared on fresh seeds and the test split.
#
#   bash docs/results/study_v2.sh [OUT]        # default OUT=runs/study-v2
#
# Resumable: every `popo compare` skips finished runs and resumes interrupted ones, and the tuning phase
# of a finished task is only re-read, so the script can be stopped and run again in several sittings.
# Both halves ran on 2026-11-30 (docs/results.md, docs/results/study_v2/); pass@k was added after they ran and
# was run with the same command on their finished folders.
set -euo pipefail
# the study defaults this script was written against (popo compare/sweep without a CONFIG used them until
# 2026-12-07; they now follow `popo demo`): every run keeps the settings it had
BASE=docs/results/study_defaults_v1.yaml
OUT=${1:-runs/study-v2}
PAR=(--workers 2 --threads 1 --no-report)
METHODS=popo,grpo,grpo-kl,dr-grpo,raft,popo-uniform,popo-nosim,popo-noent,popo-frozen,sft-more,sft-solved
LRS=optim.lr=2e-5,5e-5,1e-4          # 3 values x 3 tuning seeds on validation, then 5 fresh seeds on test
# One budget for every run: 100 steps x 16 prompts x 8 rollouts = 12,800 rollouts. Evaluation at the start
# and the end only (500 problems, greedy + 8 samples), then the per-problem final evaluation
# (problems.json: bootstrap, pass@1..8, distinct correct solutions).
SHARED=(train.steps=100 rollout.prompts_per_step=16 rollout.group_size=8 train.eval_every=100
        train.eval_samples=8 data.eval_size=500 train.save_every=25 train.diag_every=10)
ADDITION=(testbed.task=addition testbed.digits=3 rollout.max_new_tokens=24)
COUNTDOWN=(testbed.task=countdown testbed.numbers=4 testbed.max_number=9 testbed.warmup_steps=800
           rollout.max_new_tokens=32)

# POPO given GRPO's training-phase compute as more steps: the tokens GRPO forwarded and back-propagated per
# run, divided by the tokens POPO forwarded per step (both measured in the final runs), at POPO's chosen lr.
equal_compute_steps() {
  python3 - "$1" <<'PY'
import json, math, sys
from pathlib import Path
from popo.tracking import read_metrics
study = Path(sys.argv[1])
def tokens_per_step(method):
    runs = [read_metrics(p) for p in sorted((study / method).glob("seed-*/metrics.jsonl"))]
    steps = [r for records in runs for r in records if r.get("step", 0) > 0]
    return sum(r.get("forwarded_tokens", 0) for r in steps) / len(steps), len(steps) / len(runs)
grpo, steps = tokens_per_step("grpo")
popo, _ = tokens_per_step("popo")
print(math.ceil(steps * grpo / popo))
PY
}

for task in addition countdown; do
  if [ "$task" = addition ]; then TASK=("${ADDITION[@]}"); else TASK=("${COUNTDOWN[@]}"); fi
  popo sft "${TASK[@]}"                                   # warm-up once per task (cached)
  popo compare "$BASE" "${SHARED[@]}" "${TASK[@]}" --methods "$METHODS" --tune "$LRS" --tune-seeds 3 --seeds 5 \
      --out "$OUT/$task" "${PAR[@]}"
  popo report "$OUT/$task" --baseline popo,grpo
  # equal compute: a study folder of its own (its rollout budget differs), same fresh seeds, test split
  LR=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['popo']['chosen'])" "$OUT/$task/tuning.json")
  STEPS=$(equal_compute_steps "$OUT/$task")
  popo compare "$BASE" "${SHARED[@]}" "${TASK[@]}" train.steps="$STEPS" optim.lr="$LR" data.eval_source=testbed:test \
      --methods popo --seeds 5 --seed-start 3 --out "$OUT/$task-popo-equal-compute" "${PAR[@]}"
  popo report "$OUT/$task-popo-equal-compute"
  # pass@1..256 at the start and the end on the first 200 test problems (exploratory; skips what is done)
  OMP_NUM_THREADS=1 python3 docs/results/pass_at_k.py "$OUT/$task" --methods popo,grpo,raft,popo-noent --k 256 \
      --problems 200 --workers 2 --out "$OUT/$task/pass_at_256.md"
done
