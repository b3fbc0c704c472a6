"""The metrics record of one training step: batch statistics over all ranks, the update's metrics, and the
wall time of each phase."""

from __future__ import annotations

import time
from contextlib import contextmanager

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


def step_record(step: int, rewards: torch.Tensor, positive: torch.Tensor, credit: torch.Tensor, rollouts: Rollouts,
                metrics: dict, *, group_size: int, dist: Dist, lr: float, credit_is_weight: bool,
                seconds: dict[str, float]) -> dict[str, float]:
    """Step statistics over the whole batch (all ranks' rollouts, as one process would compute them), the
    update's `metrics`, the learning rate and the phase timings. A collective with several processes."""
    rewards, positive, credit = (dist.gather(t) for t in (rewards, positive, credit))
    lengths, truncated = dist.gather(rollouts.lengths), dist.gather(rollouts.truncated)
    groups = positive.view(-1, group_size)
    if dist.world > 1:  # a rank may have nothing to train on; it still joins every collective
        metrics["positive_rollouts_min_rank"] = int(positive.view(dist.world, -1).sum(1).min())
    return {
        "step": step + 1, "reward_mean": float(rewards.mean()), "pass_rate": float(positive.float().mean()),
        "prompts_with_positive": float(groups.any(1).float().mean()),
        "prompts_all_positive": float(groups.all(1).float().mean()),
        "rollouts": int(rewards.numel()), "positive_rollouts": int(positive.sum()),
        "generated_tokens": int(lengths.sum()), "truncated_frac": float(truncated.float().mean()),
        "lr": lr, **metrics,
        **({"weight_entropy": weight_entropy(credit, positive, group_size)}  # per prompt, over the whole batch
           if credit_is_weight else {}),
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


def run_summary(records: list[dict], *, wall_s: float, run_dir, checkpoint) -> str:
    """The end-of-run lines: held-out numbers at the start and at the end, wall time, where the
    checkpoint is and how to continue; says so plainly when held-out greedy accuracy fell."""
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    lines = [f"run finished: {records[-1]['step'] if records else 0} steps in {wall_s:.0f}s, in {run_dir}"]
    if evals:
        first, last = evals[0], evals[-1]
        keys = eval_keys(last)
        for label, record in (("start", first), ("end", last)):
            lines.append(f"  held-out at {label} (step {record['step']}): "
                         + "  ".join(f"{k.removeprefix('eval/')} {record[k]:.3f}" for k in keys if k in record))
        before, after = first.get("eval/greedy_acc"), last.get("eval/greedy_acc")
        if first is not last and before is not None and after is not None and after < before:
            lines.append(f"  WARNING: held-out greedy accuracy fell from {before:.3f} to {after:.3f}: these "
                         "settings made the model worse (try a lower optim.lr or more rollout.prompts_per_step)")
    if checkpoint is not None:
        lines.append(f"  checkpoint: {checkpoint}  (evaluate: popo eval --model {checkpoint}/policy)")
        lines.append(f"  continue: popo train --resume {run_dir} train.steps=N")
    return "\n".join(lines)
