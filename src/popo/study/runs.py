"""Study runs (`popo compare`, `popo sweep`): budget-matched, multi-seed runs from one initial checkpoint.

A study folder holds one run per (variant, seed) in ``OUT/<variant>/seed-<s>/`` and a ``study.json``
that records the shared settings, the variants and the rollout budget. Every variant starts from the
same initial checkpoint (the same `model.name`, or the same cached warmed-up testbed model) and gets
the same rollout budget, ``train.steps x rollout.prompts_per_step x rollout.group_size``: a study whose
variants would differ in budget is refused before anything runs. The seed (`train.seed`) changes the
prompt order, the sampling and the loss noise; the initial weights and the held-out set never change.

A finished run has a ``done.json``; it is skipped when the study is run again (after checking that its
settings are the ones asked for). An interrupted run resumes from its latest checkpoint. Ctrl-C or SIGTERM
stops the runs in progress at the end of their step, with a checkpoint, starts no other run, and ends the study
with `KeyboardInterrupt` (the command line turns it into one line and exit status 130): `popo.study.pool` says
how, with `--workers`.

Without a CONFIG file, a study trains what `popo demo` trains (`study_overrides`: its task, warm start, budget,
evaluation and learning rate, from `popo.study.demo`), evaluated on the validation split, since a study may
choose (`popo compare --tune` sets each phase's split itself).

This module only trains; `popo.study.report` reads a study folder and writes its report (it imports
this module, never the other way round).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from popo.algorithms import PRESETS
from popo.config import Config, ConfigError, load_config, to_dict
from popo.study.pool import job_running, run_in_pool, sigterm_as_ctrl_c
from popo.study.pool import worker_pool  # noqa: F401 (`popo demo` and docs/results/pass_at_k.py import it from here)

SFT_MORE = "sft-more"
CONTROL_ARMS = (SFT_MORE, "sft-solved")
"""The supervised control arms (`popo.study.controls`), accepted by `--methods` beside the presets."""


STUDY_SETTINGS = {"data.eval_source": "testbed", "train.save_every": "50", "train.keep_last": "1",
                  "train.progress": "false", "train.tensorboard": "false"}
"""What a study sets on top of the demo's settings: the validation split (a study may choose), a checkpoint every
50 steps so that an interrupted run resumes (only the latest kept), quiet runs."""
NOT_FROM_DEMO = ("train.overwrite",)
"""Demo settings a study leaves out (it decides itself when a run folder is replaced)."""


def demo_learning_rate() -> str:
    """The learning rate every method of `popo demo` trains at (a study shares one rate over its methods)."""
    from popo.study.demo_settings import LEARNING_RATES

    rates = set(LEARNING_RATES.values())
    if len(rates) != 1:
        raise ConfigError(f"popo demo trains its methods at different learning rates ({LEARNING_RATES}); a study "
                          "without a CONFIG file shares one: give optim.lr=...")
    return rates.pop()


def study_overrides() -> list[str]:
    """The default study settings (no CONFIG given): `popo demo`'s task, warm start, budget and evaluation
    (`popo.study.demo.demo_overrides`) at its learning rate, with `STUDY_SETTINGS` on top (docs/results/defaults.md
    lists them, generated from here)."""
    from popo.study.demo_settings import demo_overrides

    settings = dict(item.split("=", 1) for item in demo_overrides(quick=False))
    for key in NOT_FROM_DEMO:
        settings.pop(key, None)
    settings |= {"optim.lr": demo_learning_rate(), **STUDY_SETTINGS}
    return [f"{key}={value}" for key, value in settings.items()]


@dataclass(frozen=True)
class Variant:
    """One arm of a study: a name, the overrides that define it, and whether it is the SFT control."""

    name: str
    overrides: tuple[str, ...]
    sft: bool = False

    @property
    def dirname(self) -> str:
        return "".join(ch if ch.isalnum() or ch in "-._" else "_" for ch in self.name.replace(" ", "_"))


@dataclass
class Study:
    """What a study folder holds: shared settings and variants (merged over `compare`/`sweep` calls)."""

    config_path: str | None
    base_overrides: list[str]
    variants: list[Variant] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    budget: int = 0
    commands: list[str] = field(default_factory=list)


def method_variants(methods: list[str]) -> list[Variant]:
    """Variants for `--methods`: any preset name (popo, grpo, grpo-kl, raft, popo-nosim, ...) or a control arm
    (sft-more, sft-solved)."""
    out = []
    for method in methods:
        if method in CONTROL_ARMS:
            out.append(Variant(method, ("algo.name=raft",), sft=True))
        elif method in PRESETS:
            out.append(Variant(method, (f"algo.name={method}",)))
        else:
            raise ConfigError(f"--methods: unknown method {method!r}; known: {', '.join([*PRESETS, *CONTROL_ARMS])}")
    return out


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    """``["algo.alpha=0.05,0.1", "algo.tau=0.99,0.999"]`` -> ``[("algo.alpha", ["0.05", "0.1"]), ...]``."""
    grid = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not items:
            raise ConfigError(f"--grid {spec!r}: expected KEY=V1,V2,... (e.g. algo.alpha=0.05,0.1,0.3)")
        grid.append((key.strip(), items))
    return grid


def grid_variants(methods: list[str], grid: list[tuple[str, list[str]]]) -> list[Variant]:
    """The cartesian product of methods and grid values, named ``method key=value ...``."""
    out = []
    for base in method_variants(methods):
        for values in itertools.product(*[items for _, items in grid]):
            pairs = [(key, value) for (key, _), value in zip(grid, values)]
            label = " ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in pairs)
            out.append(Variant(f"{base.name} {label}".strip(), base.overrides + tuple(f"{k}={v}" for k, v in pairs),
                               base.sft))
    return out


def rollout_budget(config: Config) -> int:
    """Rollouts a run samples: steps x prompts per step x group size (for sft-more, the RL-equivalent)."""
    return config.train.steps * config.rollout.prompts_per_step * config.rollout.group_size


def run_config(study: Study, variant: Variant, seed: int, run_dir: Path) -> Config:
    return load_config(study.config_path, [*study.base_overrides, *variant.overrides, f"train.seed={seed}",
                                           f"train.out_dir={run_dir}"])


def check_budgets(configs: dict[str, Config]) -> int:
    """The common rollout budget; a ConfigError naming the variants when they differ."""
    budgets = {name: rollout_budget(c) for name, c in configs.items()}
    if len(set(budgets.values())) > 1:
        detail = ", ".join(f"{n}: {b}" for n, b in budgets.items())
        raise ConfigError(f"variants must share one rollout budget (steps x prompts x group size); got {detail}")
    return next(iter(budgets.values()), 0)


def _comparable(config: Config) -> dict:
    """A run's settings without the fields that may legitimately change between invocations."""
    d = to_dict(config)
    d["train"] = {k: v for k, v in d["train"].items()
                  if k not in ("out_dir", "progress", "tensorboard", "overwrite")}
    return d


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys present in both dicts whose values differ (keys added to the config since the run
    was made are ignored: they did not exist then)."""
    out = []
    for key in saved.keys() & current.keys():
        a, b = saved[key], current[key]
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return sorted(out)


def shared_changes(study: Study, config_path: str | None, base_overrides: list[str]) -> str:
    """What differs between a study's shared settings and a new command's: the config file, and each
    setting as `key: study's value -> this command's value`."""
    out = [f"config file: {study.config_path} -> {config_path}"] if study.config_path != config_path else []
    try:
        old = json.loads(json.dumps(_comparable(load_config(study.config_path, study.base_overrides))))
    except ConfigError:  # the study's config file moved or changed: its keys cannot be compared
        return "; ".join(out) or f"the study's settings no longer load: {' '.join(study.base_overrides)}"
    new = json.loads(json.dumps(_comparable(load_config(config_path, base_overrides))))
    for key in config_differences(old, new):
        a, b = old, new
        for part in key.split("."):
            a, b = a[part], b[part]
        out.append(f"{key}: {a} -> {b}")
    return "; ".join(out) or "no setting differs"


def run_state(run_dir: Path, config: Config) -> str:
    """``done`` (finished with these settings), ``partial`` (has a checkpoint) or ``new``."""
    done = run_dir / "done.json"
    if done.is_file():
        saved = json.loads(done.read_text()).get("config") or {}
        changed = config_differences(saved, json.loads(json.dumps(_comparable(config))))
        if changed:
            raise ConfigError(f"{run_dir} was finished with different settings ({', '.join(changed)}); "
                              "use another --out or delete it")
        return "done"
    from popo.checkpoint import list_checkpoints

    return "partial" if (run_dir / "checkpoints").is_dir() and list_checkpoints(run_dir) else "new"


def env_threads() -> int:
    """The torch threads a worker process gets by default: OMP_NUM_THREADS, else 1."""
    return int(os.environ.get("OMP_NUM_THREADS") or 1)


STOPPING = ".stopping"
"""File in a study folder while the study is being stopped: a run a worker takes then does not start."""


def _pool_job(study_dir: str, variant: Variant, seed: int, threads: int) -> dict:
    """`execute_run` in a pool worker, which takes Ctrl-C only while it runs a job (a trainer's own handler
    then stops the run at the end of its step, with a checkpoint); none when the study is being stopped."""
    with job_running():
        if (Path(study_dir) / STOPPING).exists():
            raise KeyboardInterrupt
        return execute_run(study_dir, variant, seed, threads)


def execute_run(study_dir: str, variant: Variant, seed: int, threads: int) -> dict:
    """Train (or resume) one run and mark it done; runs in a worker process when `--workers` > 1."""
    import torch

    previous_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        return _execute(study_dir, variant, seed)
    finally:
        torch.set_num_threads(previous_threads)


def _execute(study_dir: str, variant: Variant, seed: int) -> dict:
    import torch

    from popo.build import build_trainer
    from popo.loading import resolve_model_path
    from popo.study.controls import CONTROLS
    from popo.study.outcomes import PROBLEMS, START_PROBLEMS, write_outcomes

    study = load_study(Path(study_dir))
    run_dir = Path(study_dir) / variant.dirname / f"seed-{seed}"
    config = run_config(study, variant, seed, run_dir)
    state = run_state(run_dir, config)
    if state == "done":
        return json.loads((run_dir / "done.json").read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    log_file = (run_dir / "train.log").open("a")

    def log(message: str) -> None:
        log_file.write(message + "\n")
        log_file.flush()

    start = time.perf_counter()
    if state == "new":  # the study owns this folder: an earlier attempt that saved nothing is replaced
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, overwrite=True))
    make = CONTROLS[variant.name.split()[0]].from_config if variant.sft else build_trainer
    trainer = make(config, resume=state == "partial", log=log)
    start_file = Path(study_dir) / START_PROBLEMS  # the initial checkpoint's per-problem outcomes, once a study,
    if trainer.step == 0 and len(trainer.eval_set) and not start_file.is_file():  # under its smallest seed
        write_outcomes(trainer, start_file, seed=min(study.seeds))
    trainer.run()
    log_file.close()
    if trainer.stopped_early:  # Ctrl-C (or SIGTERM): the run saved a checkpoint, resumed when the study runs again
        raise KeyboardInterrupt
    if trainer.step < config.train.steps:
        raise RuntimeError(f"{run_dir}: stopped at step {trainer.step} of {config.train.steps}")
    wall = time.perf_counter() - start
    if len(trainer.eval_set):
        write_outcomes(trainer, run_dir / PROBLEMS)  # per problem, for the bootstrap and the pass@k table
    record = {"variant": variant.name, "seed": seed, "sft": variant.sft, "wall_s": wall,
              "resumed": state == "partial", "budget": rollout_budget(config),
              "initial_checkpoint": resolve_model_path(config, log=lambda _: None),
              "threads": torch.get_num_threads(), "config": _comparable(config)}
    partial = run_dir / "done.json.tmp"  # replaced at once: a signal cannot leave half a done.json
    partial.write_text(json.dumps(record, indent=1))
    partial.replace(run_dir / "done.json")
    return record


def load_study(out: Path) -> Study:
    raw = json.loads((out / "study.json").read_text())
    raw["variants"] = [Variant(v["name"], tuple(v["overrides"]), v.get("sft", False)) for v in raw["variants"]]
    return Study(**raw)


def prepare_study(out: Path, config_path: str | None, base_overrides: list[str], variants: list[Variant],
                  seeds: list[int], command: str) -> Study:
    """Create or extend OUT/study.json after validating every run's config and the shared budget."""
    if out.joinpath("study.json").is_file():
        study = load_study(out)
        same = study.config_path == config_path and (study.base_overrides == base_overrides or _comparable(
            load_config(config_path, study.base_overrides)) == _comparable(load_config(config_path, base_overrides)))
        if not same:
            raise ConfigError(f"{out} holds a study with other shared settings ("
                              f"{shared_changes(study, config_path, base_overrides)}); use another --out, or give "
                              "the study's settings")
    else:
        study = Study(config_path, base_overrides)
    known = {v.name: v for v in study.variants}
    for v in variants:
        if v.name in known and known[v.name] != v:
            raise ConfigError(f"{out}: variant {v.name!r} already exists with other overrides")
        known[v.name] = v
    study.variants = list(known.values())
    study.seeds = sorted(set(study.seeds) | set(seeds))
    configs = {v.name: run_config(study, v, seeds[0] if seeds else 0, out / v.dirname) for v in study.variants}
    study.budget = check_budgets(configs)
    if command not in study.commands:
        study.commands.append(command)
    out.mkdir(parents=True, exist_ok=True)
    payload = asdict(study)
    payload["variants"] = [asdict(v) for v in study.variants]
    (out / "study.json").write_text(json.dumps(payload, indent=1))
    return study


def run_study(out: str | Path, variants: list[Variant], seeds: list[int], *, config_path: str | None = None,
              overrides: list[str] | None = None, workers: int = 1, threads: int = 0,
              command: str | None = None, log: Callable[[str], None] = print) -> Path:
    """Run every (variant, seed) not yet done, `workers` at a time (`popo.study.pool`: how a signal stops them;
    the report is written separately: `popo.study.report.write_study_report`)."""
    out = Path(out)
    base = ([] if config_path else study_overrides()) + list(overrides or [])
    command = command or "popo " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    study = prepare_study(out, config_path, base, variants, seeds, command)
    log(f"study {out}: {len(variants)} variants x {len(seeds)} seeds, {study.budget} rollouts per run")
    jobs, skipped = [], 0
    for seed in seeds:  # seed-major: every variant gets seed 0 before any gets seed 1
        for v in variants:
            run_dir = out / v.dirname / f"seed-{seed}"
            if run_state(run_dir, run_config(study, v, seed, run_dir)) == "done":
                skipped += 1
            else:
                jobs.append((v, seed))
    log(f"{skipped} runs already done (skipped), {len(jobs)} to run")
    started, count = time.perf_counter(), itertools.count(1)

    def finished(rec: dict) -> None:
        log(f"[{next(count)}/{len(jobs)}] {rec['variant']} seed {rec['seed']}: {rec['wall_s']:.0f}s "
            f"(elapsed {time.perf_counter() - started:.0f}s)")

    if workers <= 1:
        with sigterm_as_ctrl_c():  # SIGINT and SIGTERM: the run in progress saves, no other starts
            for v, seed in jobs:
                finished(execute_run(str(out), v, seed, threads))
    elif jobs:
        threads = threads or env_threads()
        run_in_pool(_pool_job, [(str(out), v, seed, threads) for v, seed in jobs], workers=workers, threads=threads,
                    stop_file=out / STOPPING, finished=finished, log=log)
    return out
