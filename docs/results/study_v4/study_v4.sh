#!/usr/bin/env bash
# Study v4 (docs/results/study_v4/preregistration.md): trajectories to a plateau, breadth at matched accuracy on a
# fresh test split (v4-test), a harder task, POPO's components.
#
#   bash docs/results/study_v4/study_v4.sh plateau   # a: grpo, popo, raft at 1e-4, seeds 0-2, 2,000 steps (validation)
#   bash docs/results/study_v4/study_v4.sh rates     # a (addendum 1): grpo at 1e-5 and 3e-5, the same runs otherwise
#   bash docs/results/study_v4/study_v4.sh finals    # b: the final runs on v4-test (addendum 3), tables in finals/
#   bash docs/results/study_v4/study_v4.sh collect   # the finished runs' raw tables into docs/results/study_v4/plateau/
#   bash docs/results/study_v4/study_v4.sh report    # every v4 report from the committed tables (a, b, c, d)
#
# Resumable: finished runs are skipped within a sitting (their folders) and across sittings (the committed raw
# tables: `frontier.py todo`); an interrupted run resumes from its last checkpoint within a sitting.
set -euo pipefail
PHASE=${1:?plateau, rates, finals, collect or report}
OUT=${OUT:-runs/study-v4}
HERE=docs/results/study_v4
PAR=(--workers "${WORKERS:-2}" --threads 1 --no-report)
source "$HERE/finals.sh"
# Every setting of the plateau runs (v3's task and warm start, testbed.reserved=demo:500,v4-test:1500 so that no v4
# run trains on v4-test or the demo's split, 2,000 steps x 16 x 8 at lr 1e-4, validation every 100 steps) is pinned
# in plateau.yaml: the study defaults of `popo compare` do not reach it.
PLATEAU=$HERE/plateau.yaml
ARMS=grpo,popo,raft
SEEDS=0,1,2
popo sft testbed.task=countdown testbed.numbers=3 testbed.max_number=20 testbed.warmup_steps=800 \
    testbed.test_size=2000 testbed.validation_size=500  # the shipped warm start (installed, not rebuilt)
case "$PHASE" in
  plateau)
    mapfile -t TODO < <(python $HERE/collect.py todo "$HERE/plateau" --arms "$ARMS" --seeds "$SEEDS" --config lr=1e-4)
    for batch in "${TODO[@]}"; do
      read -r arms first count <<< "$batch"
      popo compare "$PLATEAU" --methods "$arms" --seeds "$count" --seed-start "$first" \
          --out "$OUT/plateau" "${PAR[@]}"
      python $HERE/collect.py collect "$OUT/plateau" --out "$HERE/plateau"
    done ;;
  rates)  # GRPO's trajectories at lower rates, so that b's matched GRPO is chosen over rates and steps
    for lr in 1e-5 3e-5; do
      mapfile -t TODO < <(python $HERE/collect.py todo "$HERE/plateau" --arms grpo --seeds "$SEEDS" --config "lr=$lr")
      for batch in "${TODO[@]}"; do
        read -r arms first count <<< "$batch"
        popo compare "$PLATEAU" optim.lr=$lr --methods "$arms" --seeds "$count" --seed-start "$first" \
            --out "$OUT/plateau-grpo-$lr" "${PAR[@]}"
        python $HERE/collect.py collect "$OUT/plateau-grpo-$lr" --out "$HERE/plateau"
      done
    done ;;
  finals)  # b (addendum 3): fresh seeds from 100, each arm's steps and test evaluations from b's committed choice
    TEST=(data.eval_source=testbed:v4-test data.eval_size=1500 train.eval_samples=64 train.eval_every=0)
    run_finals "$(python $HERE/derive.py finals-plan "$HERE/plateau")" "$PLATEAU" "$HERE/finals" "$OUT/finals" "${TEST[@]}"
    python $HERE/derive_b.py "$HERE/finals" ;;  # b's tests (derive_b.py), once every seed is in
  collect)
    python $HERE/collect.py collect "$OUT"/plateau* --out "$HERE/plateau" ;;
  report)  # every report, table and figure of v4 from the committed raw tables alone
    python $HERE/derive.py plateau "$HERE/plateau" > /dev/null
    python $HERE/derive.py warmups "$HERE/task_c/warmups" > /dev/null
    python $HERE/derive_c.py phase0 "$HERE/task_c/phase0" > /dev/null
    for tuned in "$HERE/task_c/tuning" "$HERE/task_c/c2"; do  # c, then c2 (addendum 4); d under each
      if [ -f "$tuned/trajectories.csv.gz" ]; then python $HERE/derive_c.py tuning "$tuned" > /dev/null; fi
      if [ -f "$tuned/finals/outcomes.csv.gz" ]; then
        python $HERE/derive_b.py "$tuned/finals" --choice "$tuned/numbers.json" --key finals > /dev/null
      fi
      if [ -f "$tuned/explore/outcomes.csv.gz" ]; then python $HERE/explore_c.py report "$tuned/explore" > /dev/null; fi
      if [ -f "$tuned/components/trajectories.csv.gz" ]; then
        python $HERE/derive_c.py components "$tuned/components" > /dev/null
      fi
    done
    if [ -f "$HERE/finals/outcomes.csv.gz" ]; then python $HERE/derive_b.py "$HERE/finals" > /dev/null; fi
    echo "reports written under $HERE" ;;
  *) echo "unknown phase $PHASE: plateau, rates, finals, collect or report" >&2; exit 2 ;;
esac
