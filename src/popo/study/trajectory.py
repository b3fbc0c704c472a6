"""A run's trajectory: every held-out evaluation of a run with the compute spent to reach it.

A training run logs one record per step to ``metrics.jsonl`` (`popo.trainer`): the rows and tokens that went
through forward+backward (``trained_rollouts``, ``trained_tokens``) and the step's timings (``time/*``), and,
at each evaluation, greedy accuracy, avg@k, pass@k, the sampled per-token entropy (``eval/sample_nll``) and
every problem's greedy reward and number of correct samples (and, with `train.eval_start_kl`, the samples' KL
to the start). `trajectory` turns that log into one point per
evaluation with the compute cumulated up to it: what a frontier (pass@k against avg@k) and a matched-compute
comparison are drawn from (`popo.study.frontier`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from popo.step_log import OUTCOMES_KEY, SAMPLE_OUTCOMES_KEY
from popo.tracking import read_metrics

TIMING_PREFIX = "time/"


@dataclass(frozen=True)
class EvalPoint:
    """One evaluation of a run: its scores, the compute spent before it, and each problem's outcome."""

    step: int
    k: int  # samples per problem (0: greedy only)
    greedy_acc: float
    avg: float  # avg@k (nan without samples)
    pass_k: float  # pass@k (nan without samples)
    sample_nll: float  # mean -log p of the sampled tokens (nan when not logged)
    rows: int  # rows through forward+backward in steps 1..step
    tokens: int  # their completion tokens
    seconds: float  # the steps' wall time (sampling, verifying, updating; evaluations excluded)
    greedy: list[float] = field(repr=False, default_factory=list)  # per problem, 0/1
    correct: list[float] = field(repr=False, default_factory=list)  # per problem, correct samples of k
    start_kl: float = float("nan")  # KL(policy || start) per sampled token (`train.eval_start_kl`; nan when off)


def _last_per_step(records: list[dict]) -> dict[int, dict]:
    """The records by step; a step logged twice (a run resumed from an earlier checkpoint relogs the steps
    after it) keeps its last record, the one the finished run's state descends from."""
    out: dict[int, dict] = {}
    for record in records:
        if "step" in record:
            out[int(record["step"])] = record
    return out


def trajectory(run_dir: str | Path) -> list[EvalPoint]:
    """The evaluations of the run in `run_dir`, in step order (step 0 is the start's evaluation)."""
    steps = _last_per_step(read_metrics(Path(run_dir) / "metrics.jsonl"))
    points, rows, tokens, seconds = [], 0, 0, 0.0
    for step in sorted(steps):
        record = steps[step]
        if step > 0:
            rows += int(record.get("trained_rollouts", 0))
            tokens += int(record.get("trained_tokens", 0))
            seconds += sum(float(v) for key, v in record.items() if key.startswith(TIMING_PREFIX))
        if "eval/greedy_acc" not in record:
            continue
        k = next((int(key.split("@")[1]) for key in record if key.startswith("eval/avg@")), 0)
        nan = float("nan")
        points.append(EvalPoint(step=step, k=k, greedy_acc=float(record["eval/greedy_acc"]),
                                avg=float(record.get(f"eval/avg@{k}", nan)), pass_k=float(record.get(f"eval/pass@{k}", nan)),
                                sample_nll=float(record.get("eval/sample_nll", nan)), rows=rows, tokens=tokens,
                                seconds=seconds, greedy=list(record.get(OUTCOMES_KEY, [])),
                                correct=list(record.get(SAMPLE_OUTCOMES_KEY, [])),
                                start_kl=float(record.get("eval/start_kl", nan))))
    return points
