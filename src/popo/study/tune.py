"""`popo compare --tune KEY=V1,V2,...`: pick each method's value of one setting (the learning rate) on the
validation split, then compare the methods at their chosen values on fresh seeds and the test split.

1. Tuning: every method x value on seeds `0 .. tune_seeds - 1` in ``OUT/tune`` (a study folder of its own),
   evaluated on the validation split (`data.eval_source=testbed`).
2. Choice: for each method, the value with the highest mean final validation metric over the tuning seeds
   (`--tune-metric`; unless told avg@K with K = train.eval_samples, study v3's rule, which is avg@16 with the
   default settings; ties go to the value listed first); written to
   ``OUT/tuning.json`` with every mean, and flagged (``at_edge``, and a warning) when the chosen value is the
   smallest or largest of the grid: the grid then does not bracket the optimum and should be extended.
3. Final comparison: each method at its chosen value on seeds `tune_seeds .. tune_seeds + seeds - 1`
   (none of them used for the choice) in ``OUT``, evaluated on the test split (`data.eval_source=testbed:test`).
   Nothing is chosen from the test split. `--final-set KEY=VALUE` may change how much and how often the final
   runs are evaluated (`FINAL_ONLY_KEYS`: e.g. a larger test split evaluated only at the end), never how they train.

Both phases skip finished runs and resume interrupted ones, so the command can be run again after an
interruption and continues where it stopped (a finished tuning phase is only re-read).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from popo.config import ConfigError, load_config
from popo.study.runs import Variant, grid_variants, method_variants, parse_grid, run_study, study_overrides

MIN_TUNE_SEEDS, MIN_FINAL_SEEDS, MIN_VALUES = 3, 5, 3
FINAL_ONLY_KEYS = ("data.eval_size", "train.eval_every", "train.save_every", "train.diag_every", "train.keep_last")
"""Settings `--final-set` may give the final runs alone: how much and how often they are evaluated and saved,
never how they train."""
VALIDATION, TEST = "data.eval_source=testbed", "data.eval_source=testbed:test"


def check_final_overrides(final: list[str]) -> list[str]:
    """`--final-set` overrides, refused unless each is one of `FINAL_ONLY_KEYS`."""
    for item in final:
        if item.split("=", 1)[0] not in FINAL_ONLY_KEYS or "=" not in item:
            raise ConfigError(f"--final-set {item}: only {', '.join(FINAL_ONLY_KEYS)} may differ between the tuning "
                              "and the final runs (KEY=VALUE)")
    return list(final)


def check_tuning(spec: str, tune_seeds: int, seeds: int, overrides: list[str]) -> tuple[str, list[str]]:
    """(key, values) of a `--tune` spec, refused unless the design can choose honestly: at least
    `MIN_VALUES` values x `MIN_TUNE_SEEDS` tuning seeds, `MIN_FINAL_SEEDS` fresh final seeds, and no
    evaluation source set by hand (each phase sets its own split)."""
    [(key, values)] = parse_grid([spec])
    if len(values) < MIN_VALUES or tune_seeds < MIN_TUNE_SEEDS or seeds < MIN_FINAL_SEEDS:
        raise ConfigError(f"--tune needs at least {MIN_VALUES} values x --tune-seeds {MIN_TUNE_SEEDS}, and --seeds "
                          f"{MIN_FINAL_SEEDS} for the final comparison (got {len(values)} x {tune_seeds}, {seeds})")
    if any(o.startswith("data.eval_source=") for o in overrides):
        raise ConfigError("--tune sets data.eval_source itself (validation to choose, test to report): drop it")
    return key, values


def tune_metric(metric: str | None, config_path: str | None, overrides: list[str]) -> str:
    """The metric the tuning maximises: `metric`, refused unless the runs report it (greedy_acc, or avg@K or
    pass@K with K = their train.eval_samples); without one, avg@K (study v3's choice rule), greedy_acc when the
    runs sample nothing."""
    base = [] if config_path else study_overrides()
    k = load_config(config_path, [*base, *overrides, VALIDATION]).train.eval_samples
    reported = ["greedy_acc", *([f"avg@{k}", f"pass@{k}"] if k else [])]
    if metric is None:
        return reported[1] if k else reported[0]
    if metric not in reported:
        raise ConfigError(f"--tune-metric {metric}: the runs report {', '.join(reported)} (K = train.eval_samples "
                          f"= {k})")
    return metric


def choose(summary: dict[str, dict[int, dict[str, float]]], variants: list[Variant], method: str,
           key: str, values: list[str], metric: str = "greedy_acc") -> tuple[str, dict[str, float]]:
    """The value of `key` with the best mean final validation `metric` for `method`, and every mean
    (a value whose runs are missing counts as not tried)."""
    label = key.rsplit(".", 1)[-1]
    means: dict[str, float] = {}
    for value in values:
        name = f"{method} {label}={value}"
        finals = [r[metric] for r in summary.get(name, {}).values() if metric in r]
        if finals:
            means[value] = sum(finals) / len(finals)
    if not means:
        raise ConfigError(f"--tune: no finished tuning run of {method}")
    best = max(values, key=lambda v: means.get(v, float("-inf")))  # max keeps the first of equal values
    return best, means


def at_edge(value: str, values: list[str]) -> bool:
    """Whether `value` is the smallest or largest of the grid (numerically when every value is a number,
    else by position), so that the grid does not show the metric falling on both sides of it."""
    try:
        ordered = sorted(values, key=float)
    except ValueError:
        ordered = list(values)
    return len(ordered) < 3 or value in (ordered[0], ordered[-1])


def run_tuned_comparison(out: str | Path, methods: list[str], spec: str, *, tune_seeds: int, seeds: int,
                         config_path: str | None, overrides: list[str], workers: int, threads: int,
                         command: str, metric: str | None = None, tune_only: bool = False,
                         final_overrides: list[str] = (), log: Callable[[str], None] = print) -> dict[str, str]:
    """The three phases of the module docstring (`tune_only`: the first two, so that the choice, and the power
    it implies, can be written down and committed before any final run); returns each method's chosen value."""
    from popo.study.report import summary

    out = Path(out)
    key, values = check_tuning(spec, tune_seeds, seeds, overrides)
    final_overrides = check_final_overrides(list(final_overrides))
    metric = tune_metric(metric, config_path, overrides)
    tuning = grid_variants(methods, [(key, values)])
    run_study(out / "tune", tuning, list(range(tune_seeds)), config_path=config_path,
              overrides=[*overrides, VALIDATION], workers=workers, threads=threads, command=command, log=log)
    finals = summary(out / "tune")
    record, chosen = {"key": key, "metric": f"validation {metric}", "seeds": list(range(tune_seeds))}, {}
    for base in method_variants(methods):
        best, means = choose(finals, tuning, base.name, key, values, metric)
        chosen[base.name] = best
        record[base.name] = {"means": means, "chosen": best, "at_edge": at_edge(best, values)}
        log(f"tune: {base.name}: {key}={best} (validation {metric} " +
            ", ".join(f"{v}: {m:.3f}" for v, m in means.items()) + ")")
        if record[base.name]["at_edge"]:
            log(f"warning: tune: {base.name}'s chosen {key}={best} is at the edge of the grid, which therefore "
                "does not bracket its best value: extend the grid past it")
    out.mkdir(parents=True, exist_ok=True)
    (out / "tuning.json").write_text(json.dumps(record, indent=1))
    if tune_only:
        return chosen
    final = [Variant(v.name, (*v.overrides, f"{key}={chosen[v.name]}"), v.sft) for v in method_variants(methods)]
    run_study(out, final, list(range(tune_seeds, tune_seeds + seeds)), config_path=config_path,
              overrides=[*overrides, *final_overrides, TEST], workers=workers, threads=threads, command=command, log=log)
    return chosen
