"""Argument parsing and dispatch for `popo compare`, `popo sweep` and `popo report` (study commands)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from popo.config import ConfigError


def _study_arguments(p: argparse.ArgumentParser, default_methods: str, default_out: str) -> None:
    p.add_argument("config", nargs="?",
                   help="YAML config (optional: default = what `popo demo` trains, its task, budget and learning rate, "
                        "evaluated on the validation split; docs/results/defaults.md lists them)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings shared by every run")
    p.add_argument("--methods", default=default_methods,
                   help=f"comma-separated presets or sft-more (default: {default_methods})")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1, paired across methods (default: 5)")
    p.add_argument("--seed-start", type=int, default=0, help="first seed (default: 0)")
    p.add_argument("--out", default=default_out, help=f"study folder (default: {default_out})")
    p.add_argument("--workers", type=int, default=1, help="runs trained at the same time (default: 1)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = OMP_NUM_THREADS when set, else 1)")
    p.add_argument("--baseline", default="", help="methods to pair against in the report (default: popo,grpo)")
    p.add_argument("--no-report", action="store_true", help="only train; `popo report OUT` writes it later")


def add_study_parsers(sub) -> None:
    compare = sub.add_parser("compare", help="budget-matched multi-seed comparison of methods from one checkpoint")
    _study_arguments(compare, "popo,grpo,raft", "runs/compare")
    compare.add_argument("--tune", default="", metavar="KEY=V1,V2,V3",
                         help="choose each method's value of KEY (e.g. optim.lr) on the validation split first, then "
                              "compare at the chosen values on --seeds fresh seeds and the test split")
    compare.add_argument("--tune-seeds", type=int, default=3, help="seeds per value when tuning (default: 3)")
    compare.add_argument("--tune-metric", default=None,
                         help="final validation metric the tuning maximises: greedy_acc, avg@K or pass@K with K = "
                              "train.eval_samples (default: avg@K, study v3's choice rule; avg@16 with the default "
                              "settings)")
    compare.add_argument("--tune-only", action="store_true",
                         help="stop after the tuning phase and tuning.json (the same command without it reads the "
                              "finished tuning and runs the final comparison)")
    compare.add_argument("--final-set", action="append", default=[], metavar="KEY=VALUE",
                         help="a setting of the final runs only: data.eval_size, train.eval_every, train.save_every, "
                              "train.diag_every or train.keep_last (repeatable)")
    sweep = sub.add_parser("sweep", help="sensitivity sweep: methods x a grid of settings, several seeds")
    _study_arguments(sweep, "popo", "runs/sweep")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="values of one setting; repeat for a cartesian grid (e.g. algo.alpha=0.05,0.1)")
    report = sub.add_parser("report", help="regenerate report.md and PNGs of a compare/sweep folder")
    report.add_argument("run_dir", help="the study folder (holding study.json)")
    report.add_argument("--baseline", default="", help="methods to pair against (default: popo,grpo)")


def run_study_command(args: argparse.Namespace) -> None:
    from popo.study.report import write_study_report
    from popo.study.runs import grid_variants, method_variants, parse_grid, run_study

    baselines = [b for b in args.baseline.split(",") if b] or None
    if args.command == "report":
        if not (Path(args.run_dir) / "study.json").is_file():
            raise ConfigError(f"{args.run_dir}: no study.json (not a `popo compare` or `popo sweep` folder)")
        write_study_report(args.run_dir, baselines=baselines)
        return
    overrides = list(args.overrides)
    if args.config and "=" in args.config:  # `popo compare key=value ...` without a file
        overrides.insert(0, args.config)
        args.config, args.overrides = None, overrides  # the recorded command keeps this override
    if args.config and not Path(args.config).is_file():
        raise ConfigError(f"config file not found: {args.config}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    if args.command == "sweep":
        if not args.grid:
            raise ConfigError("popo sweep needs at least one --grid KEY=V1,V2,...")
        variants = grid_variants(methods, parse_grid(args.grid))
    else:
        variants = method_variants(methods)
    seeds = list(range(args.seed_start, args.seed_start + args.seeds))
    command = _command_line(args)
    if getattr(args, "tune", ""):
        from popo.study.tune import run_tuned_comparison

        run_tuned_comparison(args.out, methods, args.tune, tune_seeds=args.tune_seeds, seeds=args.seeds,
                             config_path=args.config, overrides=overrides, workers=args.workers,
                             threads=args.threads, command=command, metric=args.tune_metric,
                             tune_only=args.tune_only, final_overrides=args.final_set)
        if not args.no_report and not args.tune_only:
            write_study_report(args.out, baselines=baselines)
        return
    run_study(args.out, variants, seeds, config_path=args.config, overrides=overrides, workers=args.workers,
              threads=args.threads, command=command)
    if not args.no_report:
        write_study_report(args.out, baselines=baselines)


def _command_line(args: argparse.Namespace) -> str:
    """The command as typed, rebuilt from the parsed arguments (recorded in study.json and the report)."""
    words = ["popo", args.command, *([args.config] if args.config else []), *args.overrides,
             "--methods", args.methods, "--seeds", str(args.seeds)]
    words += ["--seed-start", str(args.seed_start)] if args.seed_start else []
    words += [w for spec in getattr(args, "grid", []) for w in ("--grid", spec)]
    words += ["--tune", args.tune, "--tune-seeds", str(args.tune_seeds)] if getattr(args, "tune", "") else []
    words += ["--tune-metric", args.tune_metric] if getattr(args, "tune", "") and args.tune_metric else []
    words += [w for item in getattr(args, "final_set", []) for w in ("--final-set", item)]
    words += ["--out", args.out]
    words += ["--workers", str(args.workers)] if args.workers != 1 else []
    words += ["--threads", str(args.threads)] if args.threads else []
    return " ".join(shlex.quote(w) for w in words)
