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
        self.seconds[f"time/{name}"] = time.perf_counter() - start


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
