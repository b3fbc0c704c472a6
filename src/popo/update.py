"""The update phase of a step: micro-batches under a token budget, the forward passes the loss table asks
for, the loss, gradient accumulation, clipping and the optimizer step.

Only the rows handed in are ever forwarded: for POPO the trainer hands in the positive rollouts alone,
so negatives cost no forward or backward pass here. Where the models live (FSDP shards, LoRA adapter
swaps, CPU offload) is `popo.models`' business; this module only asks them for outputs.
"""

from __future__ import annotations

import functools
import warnings

import torch

from popo import step_core
from popo.algorithms import Algorithm, BatchTotals, LossInputs, Shares
from popo.distributed import Dist, reduce_update_metrics
from popo.models import Models
from popo.rollout.base import Rollouts, plan_micro_batches
from popo.step_core import PolicyArrays


def loss_inputs(models: Models, algorithm: Algorithm, cfg, sub: Rollouts, credit: torch.Tensor | None,
                positive: torch.Tensor, totals: BatchTotals, *, row_seeds: torch.Tensor | None,
                forwarded_tokens: int, old: torch.Tensor | None = None, ref: torch.Tensor | None = None,
                credit_from=None) -> tuple[LossInputs, object]:
    """The forward passes of one micro-batch through `Models`, shared by the update, the diagnostics and the TRL
    bridge: the target's features (before the policy's forward: a LoRA target swaps adapter tensors) and the
    policy's outputs with gradient, turned into the loss table's inputs by `popo.step_core.loss_inputs` (the
    keywords are its own). `credit` None: `credit_from(outputs)` computes it from this forward (TRL's on-policy
    weights). Returns the inputs and the policy's outputs."""
    ids, attention, prompt_len = sub.sequences()
    target = None
    if models.target is not None:
        target = models.target_features(ids, attention, prompt_len, sub.completion_mask)
    out = models.online_outputs(ids, attention, prompt_len, entropy_grad=algorithm.needs_entropy(cfg))
    arrays = PolicyArrays(out.logprobs, out.entropy, sub.completion_mask, features=out.features, target=target)
    inputs = step_core.loss_inputs(
        algorithm, cfg, arrays, credit=credit if credit is not None else credit_from(out), positive=positive,
        totals=totals, forwarded_tokens=forwarded_tokens, predictor=models.predictor, row_keys=row_seeds, old=old,
        ref=ref)
    return inputs, out


def micro_batch_loss(models: Models, algorithm: Algorithm, cfg, sub: Rollouts, credit: torch.Tensor | None,
                     positive: torch.Tensor, totals: BatchTotals, **inputs) -> tuple[torch.Tensor, Shares]:
    """One micro-batch's loss and metrics (`popo.step_core.loss_and_shares`); `inputs`: the keywords of
    `loss_inputs`. The update and the TRL bridge both run this."""
    x, out = loss_inputs(models, algorithm, cfg, sub, credit, positive, totals, **inputs)
    return step_core.loss_and_shares(algorithm, cfg, x, out.entropy, inputs["forwarded_tokens"])


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
                  token_budget: int, grad_clip: float, dist: Dist | None = None,
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
    totals = step_core.batch_totals(batch.completion_mask, credit, positive, max_length=max_length, dist=dist)
    batch, credit, positive, row_seeds, share_tokens = drop_inert_rows(
        algorithm, cfg, batch, credit, positive, row_seeds, totals.tokens, dist)
    plans = plan_micro_batches(batch, token_budget)
    old = models.policy_logprobs(batch, token_budget, dist) if algorithm.needs_old_logprobs(cfg) else None
    ref = models.reference_logprobs(batch, token_budget, dist) if algorithm.needs_reference(cfg) else None
    params = models.trainable_parameters()
    rounds = models.rounds(plans, dist)
    metrics: dict[str, float] = {}
    for _ in range(cfg.updates_per_batch if old is not None else 1):
        optimizer.zero_grad(set_to_none=True)
        shares = Shares()
        for rows in rounds:
            if rows is None:  # this rank is out of rows: join the other ranks' collectives, add nothing
                models.idle_pass()
                continue
            loss, micro = micro_batch_loss(
                models, algorithm, cfg, batch.select(rows), credit[rows], positive[rows], totals,
                old=None if old is None else old[rows], ref=None if ref is None else ref[rows],
                row_seeds=None if row_seeds is None else row_seeds[rows],
                forwarded_tokens=share_tokens)
            loss.backward()
            shares.add(micro)
        models.forwards_done()
        metrics = optimizer_step(models, optimizer, params, shares, grad_clip=grad_clip, dist=dist,
                                 empty=not plans)
    metrics["trained_rollouts"] = float(totals.sequences)
    metrics["trained_tokens"] = float(totals.tokens)
    metrics["micro_batches"], metrics["forwarded_rollouts"] = dist.sum_values([len(plans), batch.num_rollouts])
    metrics["forwarded_tokens"] = float(share_tokens)  # completion tokens that went through forward/backward
    metrics.update(models.lockstep_metrics(rounds, plans, dist))
    return metrics


def optimizer_step(models: Models, optimizer: torch.optim.Optimizer, params: list, metrics: Shares, *,
                   grad_clip: float, dist: Dist, empty: bool) -> dict[str, float]:
    """Reduce the accumulated gradients and metrics over ranks, then clip and step or skip
    (`popo.step_core.clip_and_step`); adds `grad_norm` and `skipped` to the metrics."""
    if empty:  # every row was inert: the zero gradient a full forward would have given
        for p in params:
            p.grad = torch.zeros_like(p) if p.grad is None else p.grad
    models.reduce_gradients_(params, dist)  # every rank now holds (its shard of) the one-process gradient
    metrics = dict(reduce_update_metrics(metrics, dist))  # the batch's values, to which the step adds
    grad_norm, stepped = step_core.clip_and_step(
        params, [optimizer], max_norm=grad_clip, clip=lambda ps, norm: models.clip_gradients_(ps, norm, dist),
        finite=step_core.metrics_finite(metrics))
    metrics["grad_norm"] = float(grad_norm)
    metrics["skipped"] = 0.0 if stepped else 1.0
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
