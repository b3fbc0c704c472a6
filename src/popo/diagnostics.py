"""Did a method's components act? Measurements logged every `train.diag_every` steps, for every method.

Taken before the step's update, on the rows it trains on, they say whether an ablation can matter at all:
a term whose gradient is a sliver of the total, or weights that equal uniform weights, cannot change
the outcome however long one trains.

- `distinct_positive_frac`: over prompts with two or more positive rollouts, the mean of (distinct
  positive completions / positive completions); `multi_distinct_frac`: the fraction of those prompts with
  at least two distinct positive completions. POPO's weights and similarity term can only act on a
  prompt whose positives differ.
- `weight_dev_uniform` (methods whose credit is a weight over each prompt's positives): over the same
  prompts, the mean over a prompt's positives of |w_i - 1/k|, k = its number of positives.
- `grad_share/<term>`: for each term of the loss table's `Algorithm.terms` that is switched on, the norm
  of its gradient over the sum of the terms' gradient norms (they add up to 1); with a predictor (POPO's
  similarity term), `grad_share_policy/<term>` is the same over the policy's parameters alone (the
  predictor is trained by the similarity term only, so its gradient inflates that term's share). A
  term's gradient is the gradient of the loss with only that coefficient kept, minus the gradient with
  every coefficient at 0 (the first term's): exact, since every term enters the loss linearly through
  its coefficient.
- `grad_cos/<term>`: cosine between the full loss gradient and that term's gradient (for POPO,
  `grad_cos/nll` is the cosine between the POPO gradient and its NLL-only gradient).
- `grad_cos_positive_nll`: cosine between the full loss gradient and the gradient of the plain
  token-mean NLL of the step's positive rollouts (supervised learning on them, the same for every
  method; absent when the step has no positive).

Gradients are raw (before clipping), over every trainable parameter (policy and predictor), summed over
ranks. They are taken with `torch.autograd.grad` from an extra forward pass and never touch `.grad`, the
optimizer, the EMA target or any random stream, so a run with diagnostics trains exactly as one without.
They are skipped (only the text statistics are logged) when the policy is sharded with FSDP or when the
trainable parameters exceed `MAX_GRADIENT_PARAMETERS` (the measurement holds a few gradient copies).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from popo.algorithms import Algorithm
from popo.distributed import Dist
from popo.models import Models
from popo.rollout.base import Rollouts, plan_micro_batches
from popo.step_core import batch_totals
from popo.update import loss_inputs

MAX_GRADIENT_PARAMETERS = 200_000_000
"""Above this many trainable parameters the gradient measurements are skipped (each term holds a copy)."""


def positive_diversity(texts: Sequence[str], positive: torch.Tensor, credit: torch.Tensor | None,
                       group_size: int) -> dict[str, float]:
    """Sums over this rank's prompts with >= 2 positives (combine ranks with `finish_diversity`):
    `groups`, `distinct_frac` (sum of distinct / positives), `multi_distinct` (groups with >= 2 distinct
    positives) and, with `credit` (weights), `weight_dev` (sum of the per-prompt mean |w - 1/k|)."""
    flags = positive.view(-1, group_size).tolist()
    sums = {"groups": 0.0, "distinct_frac": 0.0, "multi_distinct": 0.0, "weight_dev": 0.0}
    for g, row in enumerate(flags):
        members = [g * group_size + j for j, flag in enumerate(row) if flag]
        k = len(members)
        if k < 2:
            continue
        distinct = len({texts[i] for i in members})
        sums["groups"] += 1
        sums["distinct_frac"] += distinct / k
        sums["multi_distinct"] += float(distinct >= 2)
        if credit is not None:
            sums["weight_dev"] += sum(abs(float(credit[i]) - 1.0 / k) for i in members) / k
    return sums


def finish_diversity(sums: dict[str, float], dist: Dist, *, weights: bool) -> dict[str, float]:
    """The logged means of `positive_diversity`'s sums over all ranks (nothing when no prompt had two
    positives)."""
    groups, distinct, multi, dev = dist.sum_values([sums["groups"], sums["distinct_frac"], sums["multi_distinct"],
                                                    sums["weight_dev"]])
    if groups == 0:
        return {}
    out = {"distinct_positive_frac": distinct / groups, "multi_distinct_frac": multi / groups}
    if weights:
        out["weight_dev_uniform"] = dev / groups
    return out


def term_configs(algorithm: Algorithm, cfg) -> dict[str, object]:
    """The `algo.*` settings whose loss is one term of the loss: the first term with every coefficient at 0,
    each other switched-on term with only its coefficient kept (terms whose coefficient is 0 are left out)."""
    coefficients = [coef for _, coef in algorithm.terms if coef is not None]
    base = dataclasses.replace(cfg, **{coef: 0.0 for coef in coefficients})
    out: dict[str, object] = {}
    for name, coef in algorithm.terms:
        if coef is None:
            out[name] = base
        elif getattr(cfg, coef):
            out[name] = dataclasses.replace(base, **{coef: getattr(cfg, coef)})
    return out


def gradient_shares(full: torch.Tensor, terms: dict[str, torch.Tensor], positive_nll: torch.Tensor | None
                    ) -> dict[str, float]:
    """Shares and cosines (see the module docstring) from flat gradients; `terms` are the per-term
    gradients (the first term's, then the others' differences from it)."""
    norms = {name: float(g.norm()) for name, g in terms.items()}
    total = sum(norms.values())
    out = {f"grad_share/{name}": (n / total if total > 0 else 0.0) for name, n in norms.items()}
    out |= {f"grad_cos/{name}": _cosine(full, g) for name, g in terms.items()}
    if positive_nll is not None:
        out["grad_cos_positive_nll"] = _cosine(full, positive_nll)
    return out


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denominator = float(a.norm()) * float(b.norm())
    return float(a @ b) / denominator if denominator > 0 else 0.0


def gradient_diagnostics(models: Models, algorithm: Algorithm, cfg, batch: Rollouts, credit: torch.Tensor,
                         positive: torch.Tensor, *, max_length: int, token_budget: int, dist: Dist,
                         row_seeds: torch.Tensor) -> dict[str, float]:
    """The gradient measurements of the module docstring on the training rows `batch` (`credit`,
    `positive`, `row_seeds` index for index), at the current parameters; {} when they are skipped."""
    params = models.trainable_parameters()
    if not models.gradients_are_whole() or sum(p.numel() for p in params) > MAX_GRADIENT_PARAMETERS:
        return {}
    flat = term_gradients(models, algorithm, cfg, batch, credit, positive, max_length=max_length,
                          token_budget=token_budget, dist=dist, row_seeds=row_seeds)
    full, positive_nll = flat.pop("full"), flat.pop("positive_nll", None)
    out = gradient_shares(full, flat, positive_nll)
    if models.predictor is not None:  # the policy's parameters come first; the predictor is trained by L_sim only
        n = sum(p.numel() for p in models.policy.parameters() if p.requires_grad)
        out |= {k.replace("grad_share/", "grad_share_policy/"): v
                for k, v in gradient_shares(full[:n], {k: g[:n] for k, g in flat.items()}, None).items()
                if k.startswith("grad_share/")}
    return out


def term_gradients(models: Models, algorithm: Algorithm, cfg, batch: Rollouts, credit: torch.Tensor,
                   positive: torch.Tensor, *, max_length: int, token_budget: int, dist: Dist,
                   row_seeds: torch.Tensor) -> dict[str, torch.Tensor]:
    """Flat gradients over the trainable parameters, summed over ranks: `full` (the loss), one per
    switched-on term (they add up to `full`) and `positive_nll` (when the step has a positive)."""
    params = models.trainable_parameters()
    totals = batch_totals(batch.completion_mask, credit, positive, max_length=max_length, dist=dist)
    has_positive = dist.sum_values([float(positive.sum())])[0] > 0
    configs = term_configs(algorithm, cfg)
    flat = {name: torch.zeros(sum(p.numel() for p in params), device=models.device)
            for name in ("full", *configs, *(["positive_nll"] if has_positive else []))}
    ref = models.reference_logprobs(batch, token_budget, dist) if algorithm.needs_reference(cfg) else None
    positive_tokens = max(1, totals.positive_tokens)
    for rows in plan_micro_batches(batch, token_budget):
        # the noise is keyed on the rows, so every term's loss below sees the same draw
        inputs, _ = loss_inputs(models, algorithm, cfg, batch.select(rows), credit[rows], positive[rows], totals,
                                row_seeds=row_seeds[rows], ref=None if ref is None else ref[rows],
                                forwarded_tokens=totals.tokens)  # (the metrics are not used here)
        losses = {"full": algorithm.loss(inputs, cfg)[0]}
        losses |= {name: algorithm.loss(inputs, term_cfg)[0] for name, term_cfg in configs.items()}
        if has_positive:  # plain NLL of the positives, token mean over all ranks' positive tokens
            keep = inputs.mask & inputs.positive.unsqueeze(1)
            losses["positive_nll"] = -torch.where(keep, inputs.logprobs, 0.0).sum() / positive_tokens
        for name, loss in losses.items():
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            flat[name] += torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                                     for g, p in zip(grads, params)])
    for vector in flat.values():
        dist.sum_(vector)
    base = next(iter(configs))
    return {name: flat[name] if name in (base, "full", "positive_nll") else flat[name] - flat[base] for name in flat}


def step_diagnostics(models: Models, algorithm: Algorithm, cfg, rollouts: Rollouts, credit: torch.Tensor,
                     positive: torch.Tensor, rows: torch.Tensor, *, group_size: int, max_length: int,
                     token_budget: int, dist: Dist, row_seeds: torch.Tensor) -> dict[str, float]:
    """Everything of the module docstring for one step: the text statistics over all of the step's
    rollouts, the gradient measurements over its training rows `rows` (a bool mask)."""
    weights = algorithm.credit_is_weight
    out = finish_diversity(positive_diversity(rollouts.texts, positive, credit if weights else None, group_size),
                           dist, weights=weights)
    return out | gradient_diagnostics(models, algorithm, cfg, rollouts.select(rows), credit[rows], positive[rows],
                                      max_length=max_length, token_budget=token_budget, dist=dist,
                                      row_seeds=row_seeds[rows])
