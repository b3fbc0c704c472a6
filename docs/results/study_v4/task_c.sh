#!/usr/bin/env bash
# Study v4, part c after phase 0 (pre-registration "c. A task where breadth decides something", addendum 2):
# tuning on validation, GRPO first. Each round asks `derive_c.py tuning` what runs next (from the committed raw
# tables in $HERE/task_c/tuning), trains it, collects it and asks again, until every arm is tuned or GRPO's
# positive control fails (then c stops, as pre-registered):
#   arms ARMS       the arms still missing tuning runs: GRPO alone until its control is read, then POPO and RAFT,
#                   each over the grid 1e-5, 3e-5, 1e-4, 3e-4 x seeds 0-2;
#   extend ARM LR   an arm whose choice lies on an edge of the grid: the next rate out (3e-6 or 1e-3).
# Every run: task_c.yaml on the 800-step warm start, train.steps = phase 0's budget (derive_c.py phase0).
#
#   WORKERS=2 OUT=runs/study-v4 bash docs/results/study_v4/task_c.sh tune
#   WORKERS=2 OUT=runs/study-v4 bash docs/results/study_v4/task_c.sh components   # d, once POPO is tuned
#
# c2 (addendum 4: c's control failed at 1,000 steps): GRPO's tuning runs at 1e-5, 3e-5 and 1e-4 continued to
# 2,000 steps from copies of c's run folders, then the same rounds at 2,000 steps with tables in task_c/c2:
#   WORKERS=2 OUT=runs/study-v4 bash docs/results/study_v4/task_c.sh extend
#   WORKERS=2 OUT=runs/study-v4 C2=1 bash docs/results/study_v4/task_c.sh tune     # (and components)
#   WORKERS=2 OUT=runs/study-v4 bash docs/results/study_v4/task_c.sh finals          # c2's finals (addendum 5)
#   WORKERS=2 OUT=runs/study-v4 bash docs/results/study_v4/task_c.sh explore         # then pass@256 (addendum 5)
# (explore runs one `explore-one` job per arm and seed; evaluations already in task_c/c2/explore are skipped)
#
# d (exploratory): POPO at its tuned rate with one of alpha, T_w (algo.weight_temperature) or tau moved from its
# default (0.1, 1, 0.995) to each pre-registered value, seeds 0-2; the default's runs are POPO's tuning runs.
# Tables in components/ under the tuning tables (configurations labelled with the three settings); `derive_c.py components`.
#
# Resumable: runs already in the committed tables are skipped (`collect.py todo`); a run interrupted within a
# sitting resumes from its last checkpoint (its folder under $OUT).
set -euo pipefail
PHASE=${1:?tune, extend, finals or components}
OUT=${OUT:-runs/study-v4}
HERE=docs/results/study_v4
DATA=$HERE/task_c/tuning
TUNE_OUT=$OUT
case "$PHASE" in extend|finals|explore|explore-one) C2=1 ;; esac
if [ -n "${C2:-}" ]; then DATA=$HERE/task_c/c2; TUNE_OUT=$OUT/c2; fi
SEEDS=0,1,2
case "$PHASE" in tune|components|extend|finals|explore|explore-one) ;;
  *) echo "unknown phase $PHASE: tune, extend, finals, explore or components" >&2; exit 2 ;; esac
TESTBED=(testbed.task=countdown testbed.numbers=4 testbed.max_number=20 testbed.test_size=2000
         testbed.validation_size=500)
WARM=$(popo sft "${TESTBED[@]}" testbed.warmup_steps=800 | tail -1)  # the shipped warm start of c (installed)
STEPS=$(python $HERE/derive_c.py phase0 $HERE/task_c/phase0 | tail -1)
if [ "$DATA" = "$HERE/task_c/c2" ]; then STEPS=2000; fi  # addendum 4
if [ "$PHASE" = extend ]; then
  mkdir -p "$TUNE_OUT"
  [ -d "$TUNE_OUT/task-c-tune-grpo" ] || cp -r "$OUT/task-c-tune-grpo" "$TUNE_OUT/"
  ls -d "$TUNE_OUT"/task-c-tune-grpo/grpo_lr_{1e-5,3e-5,1e-4}/seed-* \
      | xargs -P "${WORKERS:-2}" -I{} popo train --resume {} train.steps=$STEPS
  python $HERE/collect.py collect "$TUNE_OUT/task-c-tune-grpo" --out "$DATA"
  python $HERE/derive_c.py tuning "$DATA" | tail -1
  exit 0
fi
if [ "$PHASE" = finals ]; then  # c2 (addendum 5): fresh seeds from 100 on c's test split, from c2's committed choice
  [ "$(python $HERE/derive_c.py tuning "$DATA" | tail -1)" = tuned ] || { echo "c2's finals run once c2 is tuned" >&2; exit 1; }
  TEST=(data.eval_source=testbed:test data.eval_size=1500 train.eval_samples=64 train.eval_every=0)
  source "$HERE/finals.sh"
  run_finals "$(python $HERE/derive_c.py finals-plan "$DATA")" "$HERE/task_c.yaml" "$DATA/finals" "$TUNE_OUT/finals" \
      "${TEST[@]}"
  python $HERE/derive_b.py "$DATA/finals" --choice "$DATA/numbers.json" --key finals  # c2's tests, all seeds in
  exit 0
fi
if [ "$PHASE" = explore ]; then  # c2's pass@256 exploration (addendum 5), once c2's finals are all in
  python -c 'import json, sys; sys.exit(not json.load(open(sys.argv[1])).get("complete"))' "$DATA/finals/numbers.json" \
      || { echo "the exploration runs once c2's finals are complete" >&2; exit 1; }
  mkdir -p "$TUNE_OUT/explore"
  # one job per (arm, seed) and the start's three, longest first, WORKERS at a time (`explore-one` below)
  { python $HERE/derive_c.py finals-plan "$DATA" | sort -k3,3nr | while read -r arm config steps at _; do
      wanted=$(printf '%s\n' "$steps" ${at//,/ } | grep -vx 0 | sort -nu | paste -sd,)
      for seed in 100 101 102; do echo "$arm $config $steps $wanted $seed"; done
    done
    for seed in 100 101 102; do echo "start - 0 0 $seed"; done
  } | xargs -P "${WORKERS:-2}" -L 1 bash "$0" explore-one || echo "some evaluations failed: collecting the rest" >&2
  python $HERE/explore_c.py collect "$TUNE_OUT/explore" "$DATA/explore"
  for arm_steps in start:0 $(python $HERE/derive_c.py finals-plan "$DATA" | awk '{print $1 ":" $3 "," $4}'); do
    for step in $(echo "${arm_steps#*:}" | tr , '\n' | grep -vx 0 || echo 0); do for seed in 100 101 102; do
      python $HERE/explore_c.py has "$DATA/explore" "${arm_steps%%:*}-$step-seed-$seed" \
          || { echo "evaluation ${arm_steps%%:*}-$step-seed-$seed is missing: see above" >&2; exit 1; }
    done; done
  done
  python $HERE/explore_c.py report "$DATA/explore"
  exit 0
fi
if [ "$PHASE" = explore-one ]; then  # ARM CONFIG STEPS WANTED SEED: one seed of one arm (or the start) evaluated
  read -r arm config steps wanted seed <<< "${*:2}"
  RAW=$TUNE_OUT/explore
  EVAL=(--benchmarks testbed:test --limit 500 --samples 256 --temperature 1.0 --top-p 1.0 --max-new-tokens 48
        --template plain --zero-if-truncated)
  todo=()
  for step in ${wanted//,/ }; do
    name=$arm-$step-seed-$seed
    [ -f "$RAW/$name.records.jsonl" ] || python $HERE/explore_c.py has "$DATA/explore" "$name" || todo+=("$step")
  done
  [ ${#todo[@]} -gt 0 ] || exit 0  # evaluated here or committed by an earlier sitting
  if [ "$arm" = start ]; then
    exec popo eval --model "$WARM" "${EVAL[@]}" --seed "$seed" --out "$RAW/start-0-seed-$seed.json" "${TESTBED[@]}"
  fi
  # the finals' run folder when this sitting still holds its checkpoints, else the same run trained again (same
  # configuration and seed, no test evaluation, every checkpoint kept) and checked against the committed finals'
  # rows and tokens before each evaluated step (addendum 6)
  run=$TUNE_OUT/finals-$arm/$arm/seed-$seed
  for step in "${todo[@]}"; do [ -d "$run/checkpoints/step-$(printf %06d "$step")/policy" ] || run=; done
  if [ -z "$run" ]; then
    popo compare $HERE/task_c.yaml "optim.${config}" train.steps="$steps" train.eval_every=0 \
        train.keep_last=$((steps / 100 + 1)) --methods "$arm" --seeds 1 --seed-start "$seed" \
        --out "$TUNE_OUT/explore-$arm-$seed" --workers 1 --threads 1 --no-report
    run=$TUNE_OUT/explore-$arm-$seed/$arm/seed-$seed
    python $HERE/explore_c.py same-run "$run" "$DATA/finals" ${wanted//,/ }
  fi
  for step in "${todo[@]}"; do
    popo eval --model "$run/checkpoints/step-$(printf %06d "$step")/policy" "${EVAL[@]}" --seed "$seed" \
        --out "$RAW/$arm-$step-seed-$seed.json" "${TESTBED[@]}"
  done
  exit 0
fi
RUN=(popo sweep $HERE/task_c.yaml train.steps="$STEPS" --workers "${WORKERS:-2}" --threads 1 --no-report)
if [ "$PHASE" = components ]; then
  [ "$(python $HERE/derive_c.py tuning "$DATA" | tail -1)" = tuned ] || { echo "d runs once c is tuned" >&2; exit 1; }
  rate=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["choices"]["popo"]["config"])' "$DATA/numbers.json")
  PARTS=$DATA/components
  for setting in algo.alpha=0 algo.alpha=0.3 algo.alpha=1 algo.weight_temperature=0.1 algo.weight_temperature=0.3 \
                 algo.tau=0.9 algo.tau=0.99; do
    config=$(python $HERE/derive_c.py label "$rate" "$setting")
    mapfile -t TODO < <(python $HERE/collect.py todo "$PARTS" --arms popo --seeds "$SEEDS" --config "$config")
    for batch in "${TODO[@]}"; do
      read -r _ first count <<< "$batch"
      "${RUN[@]}" optim.lr="${rate#lr=}" "$setting" --methods popo --seeds "$count" --seed-start "$first" \
          --out "$TUNE_OUT/task-c-d-${setting//=/-}"
      python $HERE/collect.py collect "$TUNE_OUT"/task-c-d-* --out "$PARTS" --label algo.alpha,algo.weight_temperature,algo.tau
    done
  done
  python $HERE/derive_c.py components "$PARTS"
  exit 0
fi
while true; do
  if compgen -G "$TUNE_OUT/task-c-tune-*" > /dev/null; then  # runs an earlier sitting finished but did not collect
    python $HERE/collect.py collect "$TUNE_OUT"/task-c-tune-* --out "$DATA"
  fi
  next=$(python $HERE/derive_c.py tuning "$DATA" | tail -1)
  echo "c tuning, next: $next"
  case "$next" in
    "arms "*) arms=${next#arms }; rates=(1e-5 3e-5 1e-4 3e-4) ;;
    "extend "*) read -r _ arms rate <<< "$next"; rates=("${rate#lr=}") ;;
    tuned|control-failed) break ;;
    *) echo "derive_c.py tuning said: $next" >&2; exit 1 ;;
  esac
  todo=()
  for lr in "${rates[@]}"; do
    mapfile -t lines < <(python $HERE/collect.py todo "$DATA" --arms "$arms" --seeds "$SEEDS" --config "lr=$lr")
    for line in "${lines[@]}"; do todo+=("$lr $line"); done
  done
  [ ${#todo[@]} -gt 0 ] || { echo "nothing left to run for: $next" >&2; exit 1; }
  if [ ${#rates[@]} -gt 1 ] && { [ -d "$TUNE_OUT/task-c-tune-$arms" ] || { [ ${#todo[@]} -eq ${#rates[@]} ] \
      && ! printf '%s\n' "${todo[@]}" | grep -qv " 0 3$"; }; }; then
    # every rate lacks every seed, or an earlier sitting's grid sweep was interrupted: one sweep over the grid
    # (it skips the runs it finished and resumes the one it was in) keeps both workers busy to the end
    grid=$(IFS=,; echo "${rates[*]}")
    "${RUN[@]}" --methods "$arms" --seeds 3 --seed-start 0 --grid optim.lr="$grid" --out "$TUNE_OUT/task-c-tune-$arms"
  else
    for batch in "${todo[@]}"; do
      read -r lr batch_arms first count <<< "$batch"
      "${RUN[@]}" optim.lr="$lr" --methods "$batch_arms" --seeds "$count" --seed-start "$first" \
          --out "$TUNE_OUT/task-c-tune-$batch_arms-$lr"
    done
  fi
  python $HERE/collect.py collect "$TUNE_OUT"/task-c-tune-* --out "$DATA"
done
