"""What a run logs: the metrics record of one training step (`step_record` over the step's `StepBatch`: batch
statistics over all ranks, the update's metrics, the wall time of each phase from `StepTimer`), the console
progress (`Progress`), the reading order of evaluation keys, and the end-of-run summary (`run_summary`, with
its paired test of held-out accuracy)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from popo.distributed import Dist
from popo.rollout.base import Rollouts


class StepTimer:
    """Wall time of named phases of one step, under `time/<name>`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        key = f"time/{name}"  # a phase entered several times (dynamic sampling's rounds) adds up
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start


def weight_entropy(weights: torch.Tensor, positive: torch.Tensor, group_size: int) -> float:
    """Mean over prompts with a positive of the entropy (nats) of their positive weights."""
    w = torch.where(positive, weights, 0.0).view(-1, group_size)  # [B, G]
    ent = -(torch.where(w > 0, w * w.clamp(min=1e-30).log(), 0.0)).sum(1)  # [B]
    has = positive.view(-1, group_size).any(1)
    return float(ent[has].mean()) if has.any() else 0.0


@dataclass
class StepBatch:
    """One step's rows on this rank, prompt by prompt in groups of `group_size`: what the update trains on and
    the step's record describes."""

    rollouts: Rollouts
    rewards: torch.Tensor  # [N]
    positive: torch.Tensor  # [N] bool: reward above `algo.reward_threshold`
    credit: torch.Tensor  # [N] weights (`credit_is_weight`: POPO) or advantages (GRPO)
    rows: torch.Tensor  # [N] bool: the rows the update trains on (POPO: the positives)
    noise_seeds: torch.Tensor  # [N] keys of POPO's per-row target noise (`popo.seeds.step_noise_seeds`)
    group_size: int
    credit_is_weight: bool


def step_record(step: int, batch: StepBatch, metrics: dict, *, lr: float, seconds: dict[str, float],
                dist: Dist) -> dict[str, float]:
    """Statistics of the step's batch (all ranks' rollouts, as one process would compute them), the update's
    `metrics`, the learning rate and the phase timings. A collective with several processes."""
    G = batch.group_size
    rewards, positive, credit = (dist.gather(t) for t in (batch.rewards, batch.positive, batch.credit))
    lengths, truncated = dist.gather(batch.rollouts.lengths), dist.gather(batch.rollouts.truncated)
    groups = positive.view(-1, G)
    if dist.world > 1:  # a rank may have nothing to train on; it still joins every collective
        metrics["positive_rollouts_min_rank"] = int(positive.view(dist.world, -1).sum(1).min())
    return {
        "step": step + 1, "reward_mean": float(rewards.mean()), "pass_rate": float(positive.float().mean()),
        "prompts_with_positive": float(groups.any(1).float().mean()),
        "prompts_all_positive": float(groups.all(1).float().mean()),
        "rollouts": int(rewards.numel()), "positive_rollouts": int(positive.sum()),
        "generated_tokens": int(lengths.sum()), "truncated_frac": float(truncated.float().mean()),
        "lr": lr, **metrics,
        **({"weight_entropy": weight_entropy(credit, positive, G)}  # per prompt, over the whole batch
           if batch.credit_is_weight else {}),
        **seconds,
    }


class Progress:
    """Progress of a run on the console: a live bar on a terminal; otherwise (a log file, a pipe) a plain
    line every `every` steps and at each evaluation, so the log reads as lines."""

    def __init__(self, total: int, initial: int, *, enabled: bool, log, every: int | None = None):
        import sys

        self.total, self.log, self.bar = total, log, None
        self.enabled = enabled
        self.every = every or max(1, total // 20)
        if enabled and sys.stdout.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def update(self, record: dict) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(reward=f"{record['reward_mean']:.3f}", pass_rate=f"{record['pass_rate']:.3f}")
            if any(k.startswith("eval/") for k in record):
                self.bar.write(_eval_text(record))
            return
        step = record["step"]
        if step % self.every == 0 or step == self.total or any(k.startswith("eval/") for k in record):
            line = (f"step {step}/{self.total}  reward {record['reward_mean']:.3f}  positives "
                    f"{record['positive_rollouts']}/{record['rollouts']}"
                    + (f"  loss {record['loss']:.4g}" if "loss" in record else "")
                    + (f"  grad_norm {record['grad_norm']:.3g}" if "grad_norm" in record else ""))
            self.log(line + (f"  |  {_eval_text(record)}" if any(k.startswith("eval/") for k in record) else ""))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def eval_keys(record: dict) -> list[str]:
    """The record's `eval/*` keys in reading order: greedy accuracy, length, then avg@k and pass@k."""
    def rank(key: str) -> tuple:
        name = key.removeprefix("eval/")
        fixed = {"greedy_acc": 0, "mean_length": 1}
        return (fixed.get(name, 2), name)
    return sorted((k for k in record if k.startswith("eval/")), key=rank)


def _eval_text(record: dict) -> str:
    values = "  ".join(f"{k.removeprefix('eval/')} {record[k]:.3f}" for k in eval_keys(record))
    return f"held-out at step {record['step']}: {values}"


OUTCOMES_KEY = "held_out/greedy_rewards"
"""Key of an evaluation record's per-problem greedy rewards in `metrics.jsonl` (the numbers behind
`eval/greedy_acc`, in problem order): what the end-of-run summary's paired test compares."""
SAMPLE_OUTCOMES_KEY = "held_out/sample_correct"
"""Key of an evaluation record's per-problem number of correct samples (of `train.eval_samples`) in
`metrics.jsonl`, the numbers behind `eval/avg@k` and `eval/pass@k` (absent without samples)."""
SIGNIFICANCE = 0.05
"""The summary warns that a run made the model worse only when the paired test's p-value is below this."""


def paired_change(before: list[float], after: list[float]) -> tuple[int, int, float]:
    """(problems that scored lower after, problems that scored higher after, two-sided p-value) for two
    evaluations of the same problems. The test is exact: under "no change", each problem that changed is
    equally likely to have gone either way (a binomial test on the changed problems; on right/wrong
    outcomes this is the exact McNemar test)."""
    from scipy.stats import binomtest

    worse = sum(a < b for b, a in zip(before, after))
    better = sum(a > b for b, a in zip(before, after))
    changed = worse + better
    return worse, better, float(binomtest(worse, changed, 0.5).pvalue) if changed else 1.0


def _change_lines(first: dict, last: dict) -> list[str]:
    """What the summary says about greedy accuracy between two evaluations: a warning only when it fell by
    more than noise on the same problems."""
    before, after = first.get("eval/greedy_acc"), last.get("eval/greedy_acc")
    if before is None or after is None or after >= before:
        return []
    fell = f"held-out greedy accuracy fell from {before:.3f} to {after:.3f}"
    a, b = first.get(OUTCOMES_KEY), last.get(OUTCOMES_KEY)
    if not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b) or not a:
        return [f"  WARNING: {fell} (the log has no per-problem outcomes, so whether this is more than noise "
                "is untested)"]
    worse, better, p = paired_change(a, b)
    binary = all(v in (0, 1) for v in a + b)
    counts = (f"of {len(a)} problems, {worse} went from right to wrong and {better} from wrong to right "
              f"(exact McNemar test, p={p:.3g})" if binary else
              f"of {len(a)} problems, {worse} scored lower and {better} higher (exact sign test, p={p:.3g})")
    if worse > better and p < SIGNIFICANCE:
        return [f"  WARNING: {fell}, more than noise: {counts}; these settings made the model worse (try a "
                "lower optim.lr or more rollout.prompts_per_step)"]
    return [f"  {fell}, within noise: {counts}, not below {SIGNIFICANCE}"]


def run_summary(records: list[dict], *, wall_s: float, run_dir, checkpoint, target_steps: int | None = None,
                interrupted: bool = False, first_step: int = 0) -> str:
    """The end-of-run lines: held-out numbers at the start and at the end, wall time, where the checkpoint
    is and a command that continues the run. A fall in held-out greedy accuracy is tested problem by
    problem (`paired_change`) and called a warning only when it is more than noise. An `interrupted` run
    (stopped before `target_steps`) says so, and its last evaluation is not presented as the end. `wall_s` is this
    invocation's time, and a run resumed at `first_step` counts the steps it trained since then."""
    import shlex

    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    done = records[-1]["step"] if records else 0
    resumed = f" (resumed at step {first_step}: {done - first_step} steps in this run)" if first_step else ""
    if interrupted:
        lines = [f"run interrupted at step {done}" + (f" of {target_steps}" if target_steps else "")
                 + f" after {wall_s:.0f}s{resumed}, in {run_dir}"]
    elif first_step:
        lines = [f"run finished: {done - first_step} steps in {wall_s:.0f}s (resumed at step {first_step}, now at "
                 f"step {done}), in {run_dir}"]
    else:
        lines = [f"run finished: {done} steps in {wall_s:.0f}s, in {run_dir}"]
    if evals:
        first, last = evals[0], evals[-1]
        keys = eval_keys(last)
        for record in [first] + ([last] if last is not first else []):
            label = ("start" if record["step"] == 0 else "end" if record is last and not interrupted
                     else "the last evaluation")
            lines.append(f"  held-out at {label} (step {record['step']}): "
                         + "  ".join(f"{k.removeprefix('eval/')} {record[k]:.3f}" for k in keys if k in record))
        if last is not first:
            lines += _change_lines(first, last)
        if interrupted and last["step"] != done:
            lines.append(f"  no held-out evaluation at step {done}: the run stopped before its end")
    failed = sum(r.get("reward_failures", 0) for r in records)
    if failed:
        scored = sum(r.get("rollouts", 0) + r.get("sampling/extra_rollouts", 0) for r in records if "reward_mean" in r)
        lines.append(f"  WARNING: a reward function failed on {failed:.0f} of {scored:.0f} sampled rollouts (their "
                     "reward was set to 0; metrics.jsonl: reward_failures, reward/<name>/failed; the log names "
                     "the first error of each function)")
    timeouts, retried = (sum(r.get(k, 0) for r in records) for k in ("reward/timeouts", "reward/timeout_retries"))
    if timeouts or retried:
        lines.append(f"  verifier: the check of {retried:.0f} rollouts ran out of time and was repeated with a larger "
                     f"budget; {timeouts:.0f} scored 0 because time ran out for good (metrics.jsonl: "
                     "reward/timeout_retries, reward/timeouts; a loaded machine slows the verifier)")
    if checkpoint is not None:
        where = shlex.quote(str(run_dir))
        lines.append(f"  checkpoint: {checkpoint}  (evaluate: popo eval --model {checkpoint}/policy)")
        if interrupted and target_steps and done < target_steps:
            lines.append(f"  continue: popo train --resume {where}  (picks up at step {done} and trains to "
                         f"train.steps={target_steps})")
        else:
            more = 2 * max(target_steps or done, 1)
            lines.append(f"  continue: popo train --resume {where} train.steps={more}  (train.steps is the new "
                         f"total, here twice this run's {target_steps or done}; any larger number works)")
    return "\n".join(lines)
