# Sourced by study_v4.sh (b) and task_c.sh (c2): the final runs of a committed plan, resumable.
#
#   run_finals PLAN CONFIG TABLES OUT OVERRIDE...
#
# PLAN: `finals-plan`'s lines (ARM CONFIG STEPS EVAL_STEPS SEEDS); CONFIG: the runs' YAML; TABLES: the raw tables
# the finished runs are collected into (runs already there are skipped); OUT: run folders OUT-ARM; OVERRIDE: the
# test evaluation's settings. Seeds from 100; HERE must name docs/results/study_v4.
run_finals() {
  local plan=$1 config_file=$2 tables=$3 out=$4
  shift 4
  local spec arm config steps at seeds batch arms first count
  local -a lines todo
  mapfile -t lines <<< "$plan"
  for spec in "${lines[@]}"; do
    read -r arm config steps at seeds <<< "$spec"
    mapfile -t todo < <(python "$HERE/collect.py" todo "$tables" --arms "$arm" \
        --seeds "$(seq -s, 100 $((99 + seeds)))" --config "$config")
    for batch in "${todo[@]}"; do
      read -r arms first count <<< "$batch"
      popo compare "$config_file" "optim.${config}" train.steps="$steps" train.eval_steps="$at" "$@" \
          --methods "$arms" --seeds "$count" --seed-start "$first" --out "$out-$arm" \
          --workers "${WORKERS:-2}" --threads 1 --no-report
      python "$HERE/collect.py" collect "$out-$arm" --out "$tables"
    done
  done
}
