"""POPO and GRPO losses, KL estimators and token aggregation.

All functions are pure: tensors and numbers in; the two losses return
``(loss, metrics)`` with ``metrics`` a dict of detached python floats.
Masking is done with ``torch.where`` on the *inputs*, so whatever sits at a
masked position (garbage, NaN, inf) never reaches the loss or the gradient.

KL estimators (``kl_penalty``)
------------------------------
Per-token estimates of ``KL(pi || pi_ref)`` from tokens sampled from ``pi``,
with ``r = log pi_ref(y) - log pi(y)``::

    k1 = -r                 unbiased, high variance, can be negative
    k2 = r^2 / 2            biased, low variance, >= 0
    k3 = exp(r) - 1 - r     unbiased, low variance, >= 0   (Schulman's "k3")

Token aggregation (``aggregate_tokens``)
----------------------------------------
``x[N, T]`` with completion mask ``m``; ``n_i = sum_t m_it``::

    token-mean               sum_{i,t} m x / num_tokens            (default num_tokens = sum m)
    seq-mean-token-mean      sum_i (sum_t m x / max(1, n_i)) / num_sequences   (default N)
    seq-mean-token-sum-norm  sum_i (sum_t m x / max_length) / num_sequences    (Dr. GRPO)

Passing the *global* ``num_tokens`` / ``num_sequences`` of a batch makes the
aggregate additive over micro-batches: summing the results on disjoint row
subsets equals the result on the whole batch, so gradient accumulation needs
no rescaling.  Rows with an empty mask count in the default ``num_sequences``
(they contribute 0).  Counts are clamped to at least 1, so an empty batch
gives 0, not NaN.

GRPO
----
``rho = exp(log pi - log pi_old)``, per token::

    l = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A) + beta_kl * k(log pi, log pi_ref)

The min is implemented as an explicit branch (the clipped branch is active
when ``A > 0 and rho > 1 + eps_high`` or ``A < 0 and rho < 1 - eps_low``) so
the gradient is exactly zero there and exactly ``-A * rho`` elsewhere, with
no half-gradient ties.  ``old`` and ``ref`` log-probs are constants (detached).

POPO
----
Over the positive rows ``S+`` (``positive_mask`` or ``weights > 0``), with
sequence weights ``w`` from ``popo.credit.popo_weights``::

    L_nll = sum_{i in S+} w_i sum_t -log pi(y_it) m_it / N+
    L_sim = -sum_{i in S+} w_i cos(q(f_i), sg(f~_i + eps_i)) / W,  eps_i ~ N(0, sigma^2 I)
    L_ent = -sum_{i in S+} sum_t H_it m_it / N+
    L     = L_nll + alpha L_sim + beta L_ent

``N+`` = number of masked completion tokens of positive rows (or the global
``num_positive_tokens``), ``W`` = sum of positive weights (or the global
``weight_sum``).  ``q(f_i)`` (predictor applied to the online model's pooled
features) is computed by the caller; ``f~_i`` (the EMA target's pooled
features) is detached here.  Choices that differ from, or are not fixed by,
the paper:

* The noise is the caller's draw: ``target_noise`` [N, H] standard normal,
  scaled by ``noise_std``; popo draws it per row from the row's own key
  (`popo.seeds.normal_noise`), so it does not depend on which rows share a
  call.  Without ``target_noise`` no noise is added.
* Entropy is averaged over the positives' tokens only, with the same ``N+``
  as the NLL, and is not weighted by ``w``; computing it over negatives would
  need their logits and break POPO's "no forward pass on negatives" property.
* Cosine similarity is computed in at least float32.
* With no positive row, every term is ``sum(0 * ...)`` over ``torch.where``-
  sanitised inputs: the loss is an exact zero that is still connected to the
  graph of every tensor passed (``backward()`` works and gives zero gradients,
  never NaN, never an error about a tensor without ``grad_fn``).
"""

from __future__ import annotations

import torch
from torch import Tensor
import torch.nn.functional as F

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")


def _count(value, default: Tensor, like: Tensor) -> Tensor:
    """A denominator: the override if given, else ``default``; clamped to >= 1."""
    c = default if value is None else torch.as_tensor(value, device=like.device)
    return c.to(like.dtype).clamp_min(1.0)


def _float_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi; [N, T] -> [N, T].

    Not masked and not detached: callers choose what is a constant.
    """
    log_ratio = ref_logprobs - logprobs  # [N, T]
    if estimator == "k1":
        return -log_ratio  # [N, T]
    if estimator == "k2":
        return 0.5 * log_ratio.square()  # [N, T]
    if estimator == "k3":
        return torch.exp(log_ratio) - 1.0 - log_ratio  # [N, T]
    raise ValueError(f"unknown KL estimator {estimator!r}; valid: {KL_ESTIMATORS}")


def aggregate_tokens(
    values: Tensor,
    mask: Tensor,
    mode: str,
    *,
    num_sequences=None,
    num_tokens=None,
    max_length: int | None = None,
) -> Tensor:
    """Reduce per-token values [N, T] to a scalar (see module docstring for the modes).

    ``num_sequences`` / ``num_tokens`` (int or 0-d tensor) replace the local
    denominators with global ones for micro-batch additivity.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; valid: {AGGREGATIONS}")
    if mask.shape != values.shape:
        raise ValueError(f"mask {tuple(mask.shape)} != values {tuple(values.shape)}")
    m = mask.bool()  # [N, T]
    x = torch.where(m, values, 0.0)  # [N, T]
    if mode == "token-mean":
        return x.sum() / _count(num_tokens, m.sum(), x)
    n_seq = _count(num_sequences, torch.tensor(values.shape[0], device=x.device), x)
    if mode == "seq-mean-token-mean":
        per_seq = x.sum(dim=1) / m.sum(dim=1).clamp_min(1).to(x.dtype)  # [N]
        return per_seq.sum() / n_seq
    if max_length is None or max_length < 1:
        raise ValueError("seq-mean-token-sum-norm needs max_length >= 1")
    per_seq = x.sum(dim=1) / float(max_length)  # [N]
    return per_seq.sum() / n_seq


def _masked_token_mean(values: Tensor, m: Tensor) -> float:
    return float(torch.where(m, values, 0.0).sum() / m.sum().clamp_min(1))


def grpo_loss(
    token_logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    completion_mask: Tensor,
    *,
    ref_logprobs: Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    aggregation: str = "seq-mean-token-mean",
    max_length: int | None = None,
    num_sequences=None,
    num_tokens=None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped-surrogate GRPO loss with an optional KL penalty.

    Args:
        token_logprobs: [N, T] current-policy log-probs (differentiable).
        old_logprobs: [N, T] behaviour-policy log-probs (constant).
        advantages: [N] per-sequence advantages (constant).
        completion_mask: [N, T] 1 on completion tokens.
        ref_logprobs: [N, T] reference log-probs, needed when kl_coef > 0.
        clip_low / clip_high: ratio clip range [1 - clip_low, 1 + clip_high].
        kl_coef: weight of the per-token KL penalty.
        kl_estimator: "k1", "k2" or "k3".
        aggregation / max_length / num_sequences / num_tokens: see aggregate_tokens.

    Returns:
        (scalar loss, metrics) with metrics loss, pg_loss, kl, clip_frac, ratio_mean,
        adv_mean, num_tokens.
    """
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kl_estimator!r}; valid: {KL_ESTIMATORS}")
    if advantages.shape != token_logprobs.shape[:1]:
        raise ValueError(
            f"advantages {tuple(advantages.shape)} must be [N] for logprobs "
            f"{tuple(token_logprobs.shape)}"
        )
    m = completion_mask.bool()  # [N, T]
    dtype = _float_dtype(token_logprobs)  # ratios in at least float32
    logp = torch.where(m, token_logprobs, 0.0).to(dtype)  # [N, T]
    old = torch.where(m, old_logprobs.detach(), 0.0).to(dtype)  # [N, T]
    adv = torch.where(m, advantages.detach().unsqueeze(1), 0.0).to(logp.dtype)  # [N, T]

    ratio = torch.exp(logp - old)  # [N, T]
    clipped_ratio = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [N, T]
    clip_active = m & (
        ((adv > 0) & (ratio > 1.0 + clip_high)) | ((adv < 0) & (ratio < 1.0 - clip_low))
    )  # [N, T]
    # -min(rho A, clip(rho) A); clamp has zero gradient outside its range.
    pg = -torch.where(clip_active, clipped_ratio * adv, ratio * adv)  # [N, T]

    agg = dict(
        mode=aggregation, num_sequences=num_sequences, num_tokens=num_tokens,
        max_length=max_length,
    )
    kl = None
    if ref_logprobs is not None:
        ref = torch.where(m, ref_logprobs.detach(), 0.0).to(dtype)  # [N, T]
        # Only build a graph for the KL when it is part of the loss (else: monitoring).
        with torch.set_grad_enabled(torch.is_grad_enabled() and kl_coef > 0):
            kl = kl_penalty(logp, ref, kl_estimator)  # [N, T]
    per_token = pg + kl_coef * kl if kl_coef > 0 else pg  # [N, T]
    loss = aggregate_tokens(per_token, m, **agg)

    with torch.no_grad():
        metrics = {
            "loss": float(loss),
            "pg_loss": float(aggregate_tokens(pg, m, **agg)),
            "kl": _masked_token_mean(kl, m) if kl is not None else 0.0,
            "clip_frac": _masked_token_mean(clip_active.to(logp.dtype), m),
            "ratio_mean": _masked_token_mean(ratio, m),
            "adv_mean": float(advantages.detach().float().mean()) if advantages.numel() else 0.0,
            "num_tokens": float(m.sum()),
        }
    return loss, metrics


def popo_loss(
    token_logprobs: Tensor,
    completion_mask: Tensor,
    weights: Tensor,
    *,
    predicted_features: Tensor | None = None,
    target_features: Tensor | None = None,
    token_entropy: Tensor | None = None,
    alpha: float = 0.1,
    beta: float = 0.01,
    noise_std: float = 0.02,
    target_noise: Tensor | None = None,
    positive_mask: Tensor | None = None,
    num_positive_tokens=None,
    weight_sum=None,
) -> tuple[Tensor, dict[str, float]]:
    """POPO loss: weighted NLL on positives + alpha * similarity + beta * entropy bonus.

    Args:
        token_logprobs: [N, T] current-policy log-probs of the completion tokens.
        completion_mask: [N, T] 1 on completion tokens.
        weights: [N] POPO weights (constant); 0 for negatives.
        predicted_features: [N, H] predictor output q(f) on the online features.
        target_features: [N, H] EMA-target pooled features (detached here).
        token_entropy: [N, T] per-token entropy of the current policy.
        alpha / beta: coefficients of L_sim / L_ent (0 disables the term).
        noise_std: sigma of the Gaussian noise added to the target features.
        target_noise: [N, H] the noise's standard normal draw (None: no noise).
        positive_mask: [N] which rows are positive (default weights > 0).
        num_positive_tokens: global N+ (default: local count).
        weight_sum: global W (default: local sum of positive weights).

    Returns:
        (scalar loss, metrics) with metrics loss, nll, sim, cos_sim, entropy, ent_loss,
        num_positive, num_positive_tokens (the weights' entropy per prompt is the step
        record's, `popo.step_log.weight_entropy`).
    """
    n = token_logprobs.shape[0]
    if completion_mask.shape != token_logprobs.shape:
        raise ValueError(
            f"completion_mask {tuple(completion_mask.shape)} != token_logprobs "
            f"{tuple(token_logprobs.shape)}"
        )
    if weights.shape != (n,):
        raise ValueError(f"weights must be [N={n}], got {tuple(weights.shape)}")
    dtype = _float_dtype(token_logprobs)
    w_raw = weights.detach()
    pos = positive_mask.bool() if positive_mask is not None else w_raw > 0  # [N]
    if pos.shape != (n,):
        raise ValueError(f"positive_mask must be [N={n}], got {tuple(pos.shape)}")
    w = torch.where(pos, w_raw.to(dtype), 0.0)  # [N]
    tok = completion_mask.bool() & pos.unsqueeze(1)  # [N, T]
    n_plus = _count(num_positive_tokens, tok.sum(), w)

    # L_nll
    logp = torch.where(tok, token_logprobs, 0.0).to(dtype)  # [N, T]
    nll = -(w.unsqueeze(1) * logp).sum() / n_plus
    loss = nll

    # L_sim
    sim = torch.zeros((), dtype=dtype, device=w.device)
    if alpha != 0 and predicted_features is not None and target_features is not None:
        sim = _similarity(predicted_features, target_features, w, pos, noise_std=noise_std,
                          target_noise=target_noise, weight_sum=weight_sum)
        loss = loss + alpha * sim

    # L_ent
    ent_loss = torch.zeros((), dtype=dtype, device=w.device)
    use_ent = beta != 0 and token_entropy is not None
    if token_entropy is not None:
        if token_entropy.shape != token_logprobs.shape:
            raise ValueError(
                f"token_entropy {tuple(token_entropy.shape)} != {tuple(token_logprobs.shape)}"
            )
        ent = torch.where(tok, token_entropy, 0.0).to(dtype)  # [N, T]
        if use_ent:
            ent_loss = -ent.sum() / n_plus
            loss = loss + beta * ent_loss

    terms = {"loss": loss, "nll": nll, "sim": sim, "ent_loss": ent_loss}
    return loss, _popo_metrics(terms, pos, tok, ent if token_entropy is not None else None)


def _similarity(predicted: Tensor, target_features: Tensor, w: Tensor, pos: Tensor, *, noise_std: float,
                target_noise: Tensor | None, weight_sum) -> Tensor:
    """POPO's L_sim = -sum_i w_i cos(q(f_i), f_target_i + noise) / W over the positive rows (`popo_loss`)."""
    n = w.shape[0]
    if predicted.shape != target_features.shape or predicted.shape[0] != n:
        raise ValueError(
            f"predicted_features {tuple(predicted.shape)} and target_features "
            f"{tuple(target_features.shape)} must both be [N={n}, H]"
        )
    target = target_features.detach()  # [N, H]
    if noise_std > 0 and target_noise is not None:
        target = target + noise_std * target_noise.to(target.dtype)  # [N, H]
    feat_dtype = _float_dtype(predicted)
    rows = pos.unsqueeze(1)  # [N, 1]
    # Non-positive rows are replaced by a constant all-ones vector (non-zero norm,
    # so cosine's backward is finite there too); their weight is 0 anyway.
    pred = torch.where(rows, predicted.to(feat_dtype), 1.0)  # [N, H]
    targ = torch.where(rows, target.to(feat_dtype), 1.0)  # [N, H]
    cos = F.cosine_similarity(pred, targ, dim=-1).to(w.dtype)  # [N]
    w_total = w.sum() if weight_sum is None else torch.as_tensor(weight_sum, device=w.device, dtype=w.dtype)
    w_total = torch.where(w_total > 0, w_total, 1.0)
    return -(w * cos).sum() / w_total


@torch.no_grad()
def _popo_metrics(terms: dict[str, Tensor], pos: Tensor, tok: Tensor, ent: Tensor | None) -> dict[str, float]:
    """`popo_loss`'s metrics: its terms, the positives' token-mean entropy and counts."""
    local_tokens = tok.sum()
    return {
        "loss": float(terms["loss"]),
        "nll": float(terms["nll"]),
        "sim": float(terms["sim"]),
        "cos_sim": float(-terms["sim"]),
        "entropy": float(ent.sum() / local_tokens.clamp_min(1)) if ent is not None else 0.0,
        "ent_loss": float(terms["ent_loss"]),
        "num_positive": float(pos.sum()),
        "num_positive_tokens": float(local_tokens),
    }
