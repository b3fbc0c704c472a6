"""pass@k for k up to 256 at the start and at the end of a study (does positive-only training narrow exploration?).

For the study's initial checkpoint (once) and the final policy of every finished run of the methods asked
for (every seed), the first `--problems` problems of the run's held-out split (the problems, in the
order, of the run's own evaluation: a prefix of the study's ``start-problems.json``) are evaluated through
the one evaluation path (`popo.evaluate.evaluate`) with the run's protocol (temperature, top-p, token
limit, truncation rule, evaluation seed) but `--k` samples per problem, plus the greedy answer. Each
evaluation's per-problem outcomes (`popo.study.outcomes.outcomes_from_result`) go to
``problems-k{K}-n{N}.json`` in the run folder and ``start-problems-k{K}-n{N}.json`` in the study folder;
those already there are read, not recomputed, so an interrupted call resumes.

The report (markdown at `--out`, the curves as JSON beside it) has the exploration table of
`popo.study.outcomes` (unbiased pass@j for j = 1, 2, 4, ... k and distinct correct solutions per solved
problem, at the start and per method at the end) and, per method, end minus start paired by seed on
greedy accuracy, pass@1 and pass@k (`popo.study.stats.paired_test` against the one start value: a
one-sample t-test of the per-seed differences). These numbers are exploratory: outside the study's
pre-declared Holm family, on a subset of the test split.

    OMP_NUM_THREADS=1 python docs/results/pass_at_k.py runs/study-v2/countdown \\
        --methods popo,grpo,raft,popo-noent --k 256 --problems 200 --workers 2 \\
        --out docs/results/study_v2/countdown/pass_at_256.md

With `--workers W` the checkpoints are evaluated in W spawned processes on one thread each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from concurrent.futures import as_completed
from pathlib import Path

from popo.errors import SetupError

SCRIPT = "docs/results/pass_at_k.py"


@dataclasses.dataclass(frozen=True)
class Job:
    """One checkpoint to evaluate: the run whose config (protocol, held-out split) applies, the weights,
    the run seed whose evaluation seed samples it, and where its outcomes go."""

    label: str
    config_path: str
    model_path: str
    seed: int
    out: str
    k: int
    problems: int
    ids: tuple[str, ...]  # the problems expected, in order (a prefix of the study's start-problems.json)


def run_config(config_path: str | Path):
    """The full configuration a run saved (its config.yaml)."""
    from popo.config import load_config

    return load_config(config_path)


def check_prefix(label: str, ids: list[str], expected: tuple[str, ...]) -> None:
    """A SetupError unless `ids` are exactly the expected problems, in order."""
    if tuple(ids) != tuple(expected):
        raise SetupError(f"{label}: the first {len(expected)} held-out problems are not the study's "
                         f"(start-problems.json): {list(ids[:3])}... against {list(expected[:3])}...")


def _shown(path: str) -> str:
    """`path` relative to the working directory when it lies below it (outcome files are committed)."""
    resolved = Path(path).resolve()
    return resolved.relative_to(Path.cwd()).as_posix() if resolved.is_relative_to(Path.cwd()) else path


def evaluate_job(job: Job) -> dict:
    """Evaluate one checkpoint and write its outcomes (tmp file, then replace); returns timing."""
    from popo.build import resolve_device
    from popo.loading import load_policy
    from popo.rewards.make import make_verifier
    from popo.rollout.make import make_engine
    from popo.data.prepare import fit_prompts, held_out_examples
    from popo.evaluate import eval_seed, evaluate, run_protocol
    from popo.study.outcomes import outcomes_from_result

    started = time.perf_counter()
    config = run_config(job.config_path)
    model, tokenizer = load_policy(job.model_path, config, resolve_device(config.model.device))
    source, split, examples = held_out_examples(config, log=lambda message: None)
    context = getattr(model.config, "max_position_embeddings", None)
    examples, prompts = fit_prompts(config, examples, tokenizer, context=context, source=source, split=split,
                                    log=lambda message: None)
    examples, prompts = examples[: job.problems], prompts[: job.problems]
    check_prefix(job.label, [ex.id for ex in examples], job.ids)
    protocol = dataclasses.replace(run_protocol(config), k=job.k, seed=eval_seed(job.seed))
    engine = make_engine(config, model, tokenizer, job.model_path)
    with make_verifier(config, log=lambda message: None) as verifier:
        result = evaluate(engine, prompts, examples, verifier, protocol)
    outcome = outcomes_from_result(result, examples, job.k)
    seconds = time.perf_counter() - started
    outcome.update(checkpoint=_shown(job.model_path), run_seed=job.seed, protocol=dataclasses.asdict(protocol),
                   seconds=round(seconds, 1))
    out = Path(job.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(outcome))
    tmp.replace(out)
    return {"label": job.label, "seconds": seconds, "rollouts": len(examples) * (job.k + 1)}




def run_jobs(jobs: list[Job], workers: int, log=print) -> None:
    """Evaluate `jobs` in this process (`workers` 1) or in `workers` spawned one-thread processes."""
    def report(done: dict) -> None:
        log(f"{done['label']}: {done['seconds']:.0f} s, {done['rollouts'] / done['seconds']:.0f} rollouts/s "
            f"({done['rollouts']} incl. greedy)")

    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            report(evaluate_job(job))
        return
    from popo.study.runs import worker_pool

    with worker_pool(min(workers, len(jobs)), threads=1) as pool:
        for future in as_completed([pool.submit(evaluate_job, job) for job in jobs]):
            report(future.result())


def finished_runs(study_dir: Path, methods: list[str]) -> tuple[dict[str, dict[int, Path]], list[str]]:
    """({method: {seed: run folder}} of the runs with done.json, the runs left out as 'method/seed-n')."""
    from popo.study.runs import load_study

    study = load_study(study_dir)
    variants = {v.name: v for v in study.variants}
    unknown = [m for m in methods if m not in variants]
    if unknown:
        raise SetupError(f"{study_dir}: no method {', '.join(unknown)} (the study has {', '.join(variants)})")
    runs: dict[str, dict[int, Path]] = {}
    missing = []
    for method in methods:
        for seed in study.seeds:
            run_dir = study_dir / variants[method].dirname / f"seed-{seed}"
            if (run_dir / "done.json").is_file():
                runs.setdefault(method, {})[seed] = run_dir
            else:
                missing.append(f"{method}/seed-{seed}")
    return runs, missing


def final_policy(run_dir: Path) -> Path:
    """The policy folder of the run's highest-step checkpoint."""
    from popo.checkpoint import list_checkpoints

    found = [p / "policy" for p in list_checkpoints(run_dir) if (p / "policy" / "config.json").is_file()]
    if not found:
        raise SetupError(f"{run_dir}: finished (done.json) but no checkpoint with a policy")
    return found[-1]


def comparable_protocol(config) -> dict:
    """What must agree between the runs for one start evaluation to serve them all."""
    from popo.evaluate import run_protocol

    return {"protocol": dataclasses.asdict(dataclasses.replace(run_protocol(config), k=0, seed=0)),
            "eval_source": config.data.eval_source, "eval_size": config.data.eval_size,
            "testbed": dataclasses.asdict(config.testbed), "model": config.model.name}


def plan(study_dir: Path, runs: dict[str, dict[int, Path]], k: int, problems: int,
         start_seeds: int = 1) -> tuple[list[Job], dict]:
    """The jobs whose outcome files are missing, and where every outcome file is ({'start' | (method,
    seed): path}). Checks that every run shares the start's protocol, initial checkpoint and problems."""
    from popo.loading import resolve_model_path
    from popo.data.prepare import held_out_examples
    from popo.study.runs import load_study

    start_file = study_dir / "start-problems.json"
    if not start_file.is_file():
        raise SetupError(f"{study_dir}: no start-problems.json to check the problems against")
    start_ids = json.loads(start_file.read_text())["ids"]
    if problems > len(start_ids):
        raise SetupError(f"--problems {problems}: the runs evaluate only {len(start_ids)} problems")
    expected = tuple(start_ids[:problems])
    first = next(run_dir for by_seed in runs.values() for run_dir in by_seed.values())
    config = run_config(first / "config.yaml")
    _, _, examples = held_out_examples(config, log=lambda message: None)
    check_prefix("held-out split", [ex.id for ex in examples[:problems]], expected)  # before any evaluation
    start_model = resolve_model_path(config, log=lambda message: None)
    shared = comparable_protocol(config)
    paths, jobs = {}, []
    seeds = load_study(study_dir).seeds[:start_seeds]  # the start, sampled with the first study seeds' evaluation seeds
    for method, by_seed in runs.items():
        for run_seed, run_dir in by_seed.items():
            run = run_config(run_dir / "config.yaml")
            if comparable_protocol(run) != shared:
                raise SetupError(f"{run_dir}: evaluation protocol or testbed differ from {first}'s")
            initial = json.loads((run_dir / "done.json").read_text()).get("initial_checkpoint")
            if initial is not None and Path(initial).resolve() != Path(start_model).resolve():
                raise SetupError(f"{run_dir}: started from {initial}, not the study's {start_model}")
            if (run_dir / "problems.json").is_file():
                check_prefix(str(run_dir), json.loads((run_dir / "problems.json").read_text())["ids"][:problems],
                             expected)
            paths[(method, run_seed)] = run_dir / f"problems-k{k}-n{problems}.json"
            jobs.append(Job(f"{method}/seed-{run_seed}", str(run_dir / "config.yaml"), str(final_policy(run_dir)),
                            run_seed, str(paths[(method, run_seed)]), k, problems, expected))
    paths["start"] = [study_dir / (f"start-problems-k{k}-n{problems}.json" if i == 0 else
                                   f"start-problems-k{k}-n{problems}-seed-{seed}.json") for i, seed in enumerate(seeds)]
    for i, (seed, path) in enumerate(zip(seeds, paths["start"])):
        jobs.insert(i, Job(f"start/seed-{seed}", str(first / "config.yaml"), start_model, seed, str(path), k, problems,
                           expected))
    return [job for job in jobs if not Path(job.out).is_file()], paths


def end_metrics(k: int) -> dict:
    """{name: function of one outcome dict}: greedy accuracy, pass@1 and pass@k, means over its problems."""
    from popo.sampling_metrics import pass_at_k

    def pass_at(j: int):
        return lambda o: sum(pass_at_k(k, c, j) for c in o["correct"]) / len(o["correct"])

    return {"greedy acc": lambda o: sum(o["greedy"]) / len(o["greedy"]), "pass@1": pass_at(1),
            f"pass@{k}": pass_at(k)}


def paired_rows(starts: list[dict], runs: dict[str, dict[int, dict]]) -> tuple[list[str], dict]:
    """Markdown rows and their numbers: end - start per method, paired by seed, on greedy accuracy,
    pass@1 and pass@k (the start: the mean over its evaluation seeds)."""
    start = starts[0]
    from popo.study.stats import paired_test

    metrics = end_metrics(start["k"])
    lines = ["| method | metric | seeds | start | end − start (mean) | 95% CI | t | p | d_z | per seed |",
             "|" + " --- |" * 10]
    numbers: dict = {}
    for method, by_seed in runs.items():
        for name, metric in metrics.items():
            base, ends = sum(metric(o) for o in starts) / len(starts), [metric(by_seed[s]) for s in sorted(by_seed)]
            test = paired_test(ends, [base] * len(ends))
            per_seed = {s: metric(by_seed[s]) - base for s in sorted(by_seed)}
            numbers.setdefault(method, {})[name] = {
                "start": base, "mean_diff": test.mean_diff, "ci_half_width": test.ci.half_width, "t": test.t,
                "p": test.p_value, "d_z": test.d_z, "per_seed": per_seed}
            lines.append(f"| {method} | {name} | {test.n} | {base:.3f} | {test.mean_diff:+.3f} | "
                         f"±{_cell(test.ci.half_width, '.3f')} | {_cell(test.t, '.2f')} | "
                         f"{_cell(test.p_value, '.3g')} | {_cell(test.d_z, '.2f')} | " + ", ".join(f"{s}: {d:+.3f}" for s, d in per_seed.items()) + " |")
    return lines, numbers


def baseline_rows(runs: dict[str, dict[int, dict]], baseline: str) -> tuple[list[str], dict]:
    """Markdown rows and their numbers: each method minus `baseline` at the end, paired by seed, on greedy
    accuracy, pass@1 and pass@k (does one method keep more of what many samples can find?)."""
    from popo.study.stats import paired_test

    if baseline not in runs:
        return [], {}
    metrics = end_metrics(next(iter(runs[baseline].values()))["k"])
    lines = [f"| method − {baseline} | metric | seeds | mean difference | 95% CI | p | d_z |", "|" + " --- |" * 7]
    numbers: dict = {}
    for method, by_seed in runs.items():
        seeds = sorted(set(by_seed) & set(runs[baseline]))
        if method == baseline or not seeds:
            continue
        for name, metric in metrics.items():
            test = paired_test([metric(by_seed[s]) for s in seeds], [metric(runs[baseline][s]) for s in seeds])
            numbers.setdefault(method, {})[name] = {"mean_diff": test.mean_diff, "ci_half_width": test.ci.half_width,
                                                    "p": test.p_value, "d_z": test.d_z, "seeds": seeds}
            lines.append(f"| {method} | {name} | {test.n} | {test.mean_diff:+.3f} | ±{_cell(test.ci.half_width, '.3f')} "
                         f"| {_cell(test.p_value, '.3g')} | {_cell(test.d_z, '.2f')} |")
    return lines, numbers


def _cell(x: float, spec: str) -> str:
    return "–" if math.isnan(x) else format(x, spec)


def write_report(out: Path, command: str, study_dir: Path, starts: list[dict], runs: dict[str, dict[int, dict]],
                 missing: list[str], split_size: int, baseline: str = "grpo") -> str:
    """The markdown at `out` and the curves as JSON beside it; returns the markdown."""
    from popo.study.outcomes import distinct_per_solved, exploration_table, pass_curve

    start = starts[0]
    p, n = start["protocol"], len(start["ids"])
    paired, numbers = paired_rows(starts, runs)
    start_seeds = ", ".join(str(o["run_seed"]) for o in starts)
    against, against_numbers = baseline_rows(runs, baseline)
    between = ("\n## Method − " + baseline + " at the end, paired by seed\n\n" + "\n".join(against) + "\n"
               if against else "")
    left_out = f"Not finished, left out: {', '.join(missing)}.\n" if missing else ""
    text = f"""# pass@k at the start and at the end: {study_dir.name}

`{command}`

k = {p['k']} samples per problem at temperature {p['temperature']} (top-p {p['top_p']}, at most
{p['max_new_tokens']} new tokens, truncated = wrong: {p['zero_if_truncated']}), plus the greedy answer, on
the first {n} problems of the held-out split (a subset of the {split_size} problems the runs evaluate, the
same problems in the same order). The start is the study's initial checkpoint, sampled {len(starts)} time(s), with
the evaluation seeds of seeds {start_seeds}; each run's final policy is sampled with its own run's
evaluation seed. Exploratory: these comparisons are not part of the study's pre-declared Holm family
and are not corrected for multiplicity.
{left_out}
## Unbiased pass@j and distinct correct solutions

Mean over seeds of pass@j per method; the last column is the mean number of distinct correct completions
among the k samples of a problem with at least one correct sample (pooled over seeds).

{chr(10).join(exploration_table(None, {"*start*": {o["run_seed"]: o for o in starts}, **runs}))}

## End − start, paired by seed

Each seed's final value minus the start's (the mean of its evaluations); t-test of those differences against 0
over seeds (95% t interval; d_z only from 3 seeds). The start value is shared by every seed, so the test counts
the spread of the runs, not the start's own sampling noise or the choice of problems.

{chr(10).join(paired)}
{between}"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    curves = {"command": command, "study": str(study_dir), "protocol": p, "problems": n, "missing": missing,
              "start": {o["run_seed"]: {"pass": pass_curve(o), "distinct_per_solved": distinct_per_solved([o]),
                                        "greedy_acc": sum(o["greedy"]) / n} for o in starts},
              "runs": {m: {s: {"pass": pass_curve(o), "distinct_per_solved": distinct_per_solved([o]),
                               "greedy_acc": sum(o["greedy"]) / n} for s, o in by_seed.items()}
                       for m, by_seed in runs.items()},
              "paired": numbers, "against_" + baseline: against_numbers}
    out.with_suffix(".json").write_text(json.dumps(curves, indent=1) + "\n")
    return text


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="a study folder made by `popo compare`")
    parser.add_argument("--methods", required=True, help="comma-separated methods of the study")
    parser.add_argument("--k", type=int, default=256, help="samples per problem (default: 256)")
    parser.add_argument("--problems", type=int, default=200, help="first N held-out problems (default: 200)")
    parser.add_argument("--workers", type=int, default=1, help="processes evaluating checkpoints (default: 1)")
    parser.add_argument("--baseline", default="grpo", help="method the others are compared with at the end")
    parser.add_argument("--start-seeds", type=int, default=1,
                        help="evaluate the start with the evaluation seeds of the first N study seeds (default: 1)")
    parser.add_argument("--seeds", default="", help="comma-separated run seeds to evaluate (default: every finished one)")
    parser.add_argument("--out", required=True, help="the markdown report (a .json of the curves goes beside it)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    started = time.perf_counter()
    study_dir = Path(args.study)
    runs, missing = finished_runs(study_dir, [m.strip() for m in args.methods.split(",") if m.strip()])
    if args.seeds:
        keep = {int(s) for s in args.seeds.split(",")}
        runs = {m: {s: d for s, d in by_seed.items() if s in keep} for m, by_seed in runs.items()}
        runs = {m: by_seed for m, by_seed in runs.items() if by_seed}
        missing = [m for m in missing if int(m.rsplit("seed-", 1)[1]) in keep]
    if not runs:
        raise SetupError(f"{study_dir}: no finished run of {args.methods}")
    jobs, paths = plan(study_dir, runs, args.k, args.problems, args.start_seeds)
    print(f"{len(paths) - 1 + len(paths['start']) - len(jobs)} evaluations already done (skipped), {len(jobs)} to run")
    run_jobs(jobs, args.workers)
    starts = [json.loads(path.read_text()) for path in paths.pop("start")]
    outcomes: dict[str, dict[int, dict]] = {}
    for (method, seed), path in paths.items():
        outcomes.setdefault(method, {})[seed] = json.loads(path.read_text())
    split_size = len(json.loads((study_dir / "start-problems.json").read_text())["ids"])
    command = f"OMP_NUM_THREADS=1 python {SCRIPT} {shlex.join(argv)}"
    text = write_report(Path(args.out), command, study_dir, starts, outcomes, missing, split_size, args.baseline)
    print(text)
    print(f"wall time: {time.perf_counter() - started:.0f} s")
    return text


if __name__ == "__main__":
    import torch

    from popo.build import quiet_libraries

    torch.set_num_threads(1)  # tiny models, shared cores
    quiet_libraries()
    main()
