"""The update phase of a step: micro-batches under a token budget, the forward passes an algorithm
declares it needs, its loss, gradient accumulation, clipping and the optimizer step.

Only the rows handed in are ever forwarded: for POPO the trainer hands in the positive rollouts alone,
so negatives cost no forward or backward pass here.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from popo.algorithms import Algorithm, BatchTotals, LossInputs
from popo.distributed import Dist, reduce_update_metrics
from popo.fsdp import clip_gradients_, idle_pass, is_dtensor, is_sharded, reshard_all
from popo.lora import companion
from popo.logprobs import completion_outputs, masked_mean
from popo.losses import kl_penalty
from popo.rollout.base import Rollouts
from popo.rollout.sampling import normal_noise

# Loss metrics normalised by batch-global counts: they add up over micro-batches.
ADDITIVE_METRICS = frozenset({"loss", "nll", "sim", "cos_sim", "ent_loss", "pg_loss", "num_positive",
                              "num_positive_tokens", "entropy", "num_tokens", "adv_mean"})


@dataclass
class Models:
    """The policy and the optional companions an algorithm asks for."""

    policy: nn.Module
    target: nn.Module | None = None  # EMA copy of the policy (POPO's similarity term)
    predictor: nn.Module | None = None  # q_phi, trained with the policy
    reference: nn.Module | None = None  # frozen reference (GRPO's KL penalty)


def plan_micro_batches(batch: Rollouts, token_budget: int) -> list[torch.Tensor]:
    """Row indices of micro-batches: rows sorted by length, each micro-batch's padded size kept within
    `token_budget` (a single longer row still gets its own). The padded size is what the forward pass
    sees: rows x (longest prompt + longest completion) of the micro-batch."""
    prompt_lengths, completion_lengths = batch.prompt_mask.sum(1), batch.lengths  # [n], [n]
    order = torch.argsort(prompt_lengths + completion_lengths, descending=True, stable=True).tolist()
    prompt_lengths, completion_lengths = prompt_lengths.tolist(), completion_lengths.tolist()
    groups: list[list[int]] = []
    width_p = width_c = 0
    for row in order:
        p, c = max(width_p, prompt_lengths[row]), max(width_c, completion_lengths[row])
        if groups and (len(groups[-1]) + 1) * (p + c) <= token_budget:
            groups[-1].append(row)
            width_p, width_c = p, c
        else:
            groups.append([row])
            width_p, width_c = prompt_lengths[row], completion_lengths[row]
    return [torch.tensor(sorted(g)) for g in groups]


def batch_totals(batch: Rollouts, credit: torch.Tensor, positive: torch.Tensor, max_length: int) -> BatchTotals:
    mask = batch.completion_mask
    return BatchTotals(
        sequences=batch.num_rollouts,
        tokens=int(mask.sum()),
        positive_tokens=int(mask[positive].sum()),
        weight_sum=float(credit[positive].sum()),
        max_length=max_length,
    )


def lockstep(plans: list[torch.Tensor], model: nn.Module, dist: Dist | None) -> list[torch.Tensor | None]:
    """The micro-batches padded with `None` (an idle pass) to the largest count over ranks when `model` is
    sharded: every forward of a sharded model is a collective, so all ranks must run as many."""
    if dist is None or dist.world == 1 or not is_sharded(model):
        return list(plans)
    return [*plans, *[None] * (dist.max_int(len(plans)) - len(plans))]


@torch.no_grad()
def sequence_logprobs(model: nn.Module, batch: Rollouts, token_budget: int, dist: Dist | None = None) -> torch.Tensor:
    """Per-token log-probs [n, C] of the batch's completions under `model`, no gradient (with `dist` and a
    sharded model, in lockstep with the other ranks)."""
    device = batch.completion_ids.device
    out = torch.zeros(batch.completion_ids.shape, dtype=torch.float32, device=device)
    for rows in lockstep(plan_micro_batches(batch, token_budget), model, dist):
        if rows is None:
            idle_pass(model, device, backward=False)
            continue
        sub = batch.select(rows)
        ids, attention, prompt_len = sub.sequences()
        lp = completion_outputs(model, ids, attention, prompt_len).logprobs  # [m, c]
        out[rows, : lp.shape[1]] = lp.float()
    reshard_all(model)  # no backward follows: free the root's gathered weights (no-op when not sharded)
    return out


def _accumulate(total: dict[str, float], metrics: dict[str, float], share: float) -> None:
    for key, value in metrics.items():
        total[key] = total.get(key, 0.0) + (value if key in ADDITIVE_METRICS else share * value)


def retry_once_on_oom(update):
    """Wrap `update_policy`: on CUDA out-of-memory in a micro-batch, zero the gradients and run the update
    once more with half the token budget (smaller micro-batches, same result up to float rounding), then
    fail with a message naming the settings to lower.

    Not retried, and reported at once: an OOM after an optimizer step of this call (with
    `updates_per_batch > 1`, redoing it would step twice) or with several processes (the other ranks
    would wait in a collective).
    """
    @functools.wraps(update)
    def wrapper(models, optimizer, *args, token_budget: int, **kwargs) -> dict[str, float]:
        stepped: list[int] = []
        hook = optimizer.register_step_post_hook(lambda *_: stepped.append(1))
        try:
            try:
                return update(models, optimizer, *args, token_budget=token_budget, **kwargs)
            except torch.OutOfMemoryError as err:  # leave the except block first: it pins the activations
                dist = kwargs.get("dist")
                retry = not stepped and token_budget >= 2 and (dist is None or dist.world == 1)
                if not retry:
                    raise torch.OutOfMemoryError(_oom_message(token_budget, None)) from err
            optimizer.zero_grad(set_to_none=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            warnings.warn(f"CUDA out of memory in a micro-batch: retrying the update with "
                          f"optim.micro_batch_tokens={token_budget // 2} (half of {token_budget})", RuntimeWarning)
            try:
                metrics = update(models, optimizer, *args, token_budget=token_budget // 2, **kwargs)
            except torch.OutOfMemoryError as err:
                optimizer.zero_grad(set_to_none=True)
                raise torch.OutOfMemoryError(_oom_message(token_budget, token_budget // 2)) from err
            return {**metrics, "oom_retries": 1.0}
        finally:
            hook.remove()
    return wrapper


def _oom_message(budget: int, retried_with: int | None) -> str:
    tried = f"and again at {retried_with}" if retried_with else "(not retried)"
    return (f"CUDA out of memory in the update with optim.micro_batch_tokens={budget} {tried}; lower "
            "optim.micro_batch_tokens, rollout.max_new_tokens or rollout.prompts_per_step, or set "
            "model.gradient_checkpointing=true")


@retry_once_on_oom
def update_policy(models: Models, optimizer: torch.optim.Optimizer, algorithm: Algorithm, cfg,
                  batch: Rollouts, credit: torch.Tensor, positive: torch.Tensor, *, max_length: int,
                  token_budget: int, grad_clip: float, generator: torch.Generator | None,
                  params: list[nn.Parameter], dist: Dist | None = None,
                  row_seeds: torch.Tensor | None = None) -> dict[str, float]:
    """One or more optimizer updates on `batch` ([n] rows, `credit` [n], `positive` [n] bool).

    With `dist` (several processes) the batch is this rank's share: the loss normalisers are summed
    over ranks first and the gradients after, so every rank takes the one-process step; a rank with no
    rows still joins the collectives. `row_seeds` [n] (optional) key the target-feature noise per row,
    so it does not depend on how rows are split into micro-batches or processes.

    Returns the averaged metrics plus `grad_norm`, `skipped` (1 when a non-finite loss or gradient
    made the update skip) and `trained_rollouts` / `trained_tokens`.
    """
    dist = dist or Dist()
    totals = global_totals(batch_totals(batch, credit, positive, max_length), dist, batch.completion_ids.device)
    batch, credit, positive, row_seeds, share_tokens = drop_inert_rows(
        algorithm, cfg, batch, credit, positive, row_seeds, totals.tokens, dist)
    plans = plan_micro_batches(batch, token_budget)
    old = (sequence_logprobs(models.policy, batch, token_budget, dist) if algorithm.needs_old_logprobs(cfg)
           else None)
    ref = None
    if models.reference is not None:
        with companion(models.reference) as reference:
            ref = sequence_logprobs(reference, batch, token_budget, dist)
    sharded = is_sharded(models.policy)
    entropy_in_loss = algorithm.needs_entropy(cfg)
    metrics: dict[str, float] = {}
    updates = cfg.updates_per_batch if old is not None else 1
    rounds = lockstep(plans, models.policy, dist)
    for _ in range(updates):
        optimizer.zero_grad(set_to_none=True)
        metrics = {}
        for rows in rounds:
            if rows is None:  # this rank is out of rows: join the other ranks' collectives, add nothing
                if models.target is not None:
                    with companion(models.target) as target:
                        idle_pass(target, batch.completion_ids.device, backward=False)
                idle_pass(models.policy, batch.completion_ids.device, backward=True)
                continue
            sub = batch.select(rows)
            ids, attention, prompt_len = sub.sequences()
            width = sub.completion_ids.shape[1]
            target_features = None
            if models.target is not None:  # before the policy's forward: a LoRA target swaps adapter tensors
                with torch.no_grad(), companion(models.target) as target:
                    target_features = masked_mean(completion_outputs(
                        target, ids, attention, prompt_len, need_logprobs=False, need_features=True).features,
                        sub.completion_mask)
            out = completion_outputs(models.policy, ids, attention, prompt_len, need_entropy=True,
                                     need_features=models.target is not None, entropy_grad=entropy_in_loss)
            inputs = LossInputs(
                logprobs=out.logprobs, mask=sub.completion_mask, credit=credit[rows],
                positive=positive[rows], totals=totals,
                entropy=out.entropy if entropy_in_loss else None,
                old_logprobs=None if old is None else old[rows, :width],
                ref_logprobs=None if ref is None else ref[rows, :width], generator=generator)
            if models.target is not None:
                pooled = masked_mean(out.features, sub.completion_mask)
                inputs.predicted = models.predictor(pooled.to(next(models.predictor.parameters()).dtype))
                if row_seeds is not None:
                    inputs.target_noise = normal_noise(row_seeds[rows], out.features.shape[-1])
                inputs.target = target_features
            loss, step_metrics = algorithm.loss(inputs, cfg)
            if not bool(torch.isfinite(loss.detach())):  # skip the update even if the gradient is finite
                step_metrics["loss"] = float(loss.detach())
            loss.backward()
            share = float(sub.completion_mask.sum()) / max(1, share_tokens)
            if "adv_mean" in step_metrics:  # a mean over rows: this micro-batch's share of the batch sum
                step_metrics["adv_mean"] = float(credit[rows].sum()) / max(1, totals.sequences)
            # token-mean entropy of the forwarded rows: this micro-batch's share of their total
            step_metrics["entropy"] = float(torch.where(sub.completion_mask, out.entropy.detach(), 0.0).sum()
                                            / max(1, share_tokens))
            _accumulate(metrics, step_metrics, share)
        if models.target is not None:
            reshard_all(models.target)
        if not plans:  # every row was inert: the zero gradient a full forward would have given
            for p in params:
                p.grad = torch.zeros_like(p) if p.grad is None else p.grad
        # every rank now holds (its shard of) the one-process gradient; FSDP summed the sharded ones
        dist.sum_grads([p for p in params if not is_dtensor(p)])
        metrics = reduce_update_metrics(metrics, dist)
        max_norm = grad_clip if grad_clip > 0 else float("inf")
        grad_norm = (clip_gradients_(params, max_norm, dist.sum_) if sharded
                     else torch.nn.utils.clip_grad_norm_(params, max_norm))
        finite = bool(torch.isfinite(grad_norm)) and all(
            torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k in ADDITIVE_METRICS)
        metrics["grad_norm"] = float(grad_norm)
        metrics["skipped"] = 0.0 if finite else 1.0
        if finite:
            optimizer.step()
        else:
            optimizer.zero_grad(set_to_none=True)
    metrics["trained_rollouts"] = float(totals.sequences)
    metrics["trained_tokens"] = float(totals.tokens)
    metrics["micro_batches"], metrics["forwarded_rollouts"] = dist.sum_values([len(plans), batch.num_rollouts])
    metrics["forwarded_tokens"] = float(share_tokens)  # completion tokens that went through forward/backward
    if sharded:  # FSDP: lockstep padding over all ranks
        metrics["idle_passes"] = dist.sum_values([len(rounds) - len(plans)])[0]
    return metrics


def drop_inert_rows(algorithm: Algorithm, cfg, batch: Rollouts, credit: torch.Tensor, positive: torch.Tensor,
                    row_seeds: torch.Tensor | None, tokens: int, dist: Dist):
    """Leave out the rows whose loss gradient is exactly zero (GRPO without a KL term: zero advantage,
    e.g. every rollout of an all-wrong or all-right group), so they cost no forward or backward pass.

    The loss normalisers were already counted over all rows, so the update equals the one over the
    whole batch. Returns the kept (batch, credit, positive, row_seeds) and the kept token count over all
    ranks, the denominator of the logged per-token means (entropy, clip fraction), which are therefore
    over the forwarded rows."""
    if not algorithm.zero_credit_inert(cfg):
        return batch, credit, positive, row_seeds, tokens
    keep = credit != 0  # [n]
    if not bool(keep.all()):
        batch, credit, positive = batch.select(keep), credit[keep], positive[keep]
        row_seeds = None if row_seeds is None else row_seeds[keep]
    return batch, credit, positive, row_seeds, int(dist.sum_values([float(batch.completion_mask.sum())])[0])


def global_totals(totals: BatchTotals, dist: Dist, device: torch.device) -> BatchTotals:
    """The batch counts summed over ranks (the one-process counts of the whole batch)."""
    if dist.world == 1:
        return totals
    seqs, tokens, pos_tokens, weight_sum = dist.sum_values(
        [totals.sequences, totals.tokens, totals.positive_tokens, totals.weight_sum])
    return BatchTotals(sequences=int(seqs), tokens=int(tokens), positive_tokens=int(pos_tokens),
                       weight_sum=weight_sum, max_length=totals.max_length)


@torch.no_grad()
def mean_token_kl(policy: nn.Module, target: nn.Module, batch: Rollouts, token_budget: int,
                  dist: Dist | None = None) -> float:
    """Monitoring only: k3 estimate of KL(policy || target) per completion token of `batch` (0 when empty)."""
    online = sequence_logprobs(policy, batch, token_budget, dist)
    with companion(target) as model:
        frozen = sequence_logprobs(model, batch, token_budget, dist)
    kl = kl_penalty(online, frozen, "k3")
    return float(torch.where(batch.completion_mask, kl, 0.0).sum() / batch.completion_mask.sum().clamp(min=1))
