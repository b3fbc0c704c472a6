"""Tests for popo.losses: kl_penalty, aggregate_tokens, grpo_loss."""

import math

import pytest
import torch

from popo.credit import grpo_advantages
from popo.losses import aggregate_tokens, grpo_loss, kl_penalty

F64 = torch.float64
NAN = float("nan")
MODES = ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]


# ----------------------------------------------------------------------------- KL


def test_kl_estimators_hand_values():
    logp = torch.tensor([[-1.0, -2.0]], dtype=F64)
    ref = torch.tensor([[-1.5, -1.0]], dtype=F64)
    # log_ratio r = ref - logp = (-0.5, +1.0)
    k1 = kl_penalty(logp, ref, "k1")  # -r = (0.5, -1.0)
    k2 = kl_penalty(logp, ref, "k2")  # r^2/2 = (0.125, 0.5)
    k3 = kl_penalty(logp, ref, "k3")  # e^r - 1 - r = (e^-.5 - .5, e - 2)
    torch.testing.assert_close(k1, torch.tensor([[0.5, -1.0]], dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(k2, torch.tensor([[0.125, 0.5]], dtype=F64), atol=1e-12, rtol=0)
    expected_k3 = torch.tensor([[math.exp(-0.5) - 0.5, math.e - 2.0]], dtype=F64)
    torch.testing.assert_close(k3, expected_k3, atol=1e-12, rtol=0)
    assert abs(k3[0, 0].item() - 0.1065306597126334) < 1e-12
    assert kl_penalty(logp, logp.clone()).abs().max() == 0  # identical policies -> 0
    with pytest.raises(ValueError, match="k1.*k2.*k3"):
        kl_penalty(logp, ref, "k4")


# ----------------------------------------------------------------------------- aggregation

VALUES = torch.tensor([[1.0, 2.0, 3.0, NAN], [4.0, NAN, math.inf, NAN]], dtype=F64)
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)


def test_aggregation_hand_values():
    # token-mean: (1+2+3+4) / 4 tokens = 2.5
    assert aggregate_tokens(VALUES, MASK, "token-mean").item() == 2.5
    # seq-mean-token-mean: row means 6/3 = 2 and 4/1 = 4 -> (2+4)/2 = 3
    assert aggregate_tokens(VALUES, MASK, "seq-mean-token-mean").item() == 3.0
    # seq-mean-token-sum-norm, max_length 4: (6/4 + 4/4) / 2 = 1.25
    assert aggregate_tokens(VALUES, MASK, "seq-mean-token-sum-norm", max_length=4).item() == 1.25
    # global overrides: token-mean over 8 tokens = 10/8; seq-mean over 5 seqs = 6/5
    assert aggregate_tokens(VALUES, MASK, "token-mean", num_tokens=8).item() == 1.25
    assert abs(aggregate_tokens(VALUES, MASK, "seq-mean-token-mean", num_sequences=5).item()
               - 1.2) < 1e-12


def test_aggregation_empty_and_validation():
    for mode in MODES:
        empty = aggregate_tokens(torch.zeros(0, 4), torch.zeros(0, 4, dtype=torch.bool), mode,
                                 max_length=4)
        assert empty.item() == 0.0
        nothing = aggregate_tokens(VALUES, torch.zeros_like(MASK), mode, max_length=4)
        assert nothing.item() == 0.0
    with pytest.raises(ValueError, match="max_length"):
        aggregate_tokens(VALUES, MASK, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="token-mean"):
        aggregate_tokens(VALUES, MASK, "sum")


@pytest.mark.parametrize("mode", MODES)
def test_aggregation_micro_batch_additivity(mode):
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(10, 7, generator=gen, dtype=F64)
    mask = torch.rand(10, 7, generator=gen) > 0.4
    mask[3] = False  # an empty row
    full = aggregate_tokens(values, mask, mode, max_length=7)
    kw = dict(num_sequences=10, num_tokens=int(mask.sum()), max_length=7)
    parts = sum(aggregate_tokens(values[s], mask[s], mode, **kw)
                for s in (slice(0, 3), slice(3, 4), slice(4, 10)))
    torch.testing.assert_close(parts, full, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- GRPO hand values
# Row 0: A = +1, ratios (1.0, 1.5, 0.8 | pad);  row 1: A = -2, ratios (1.0, 0.5, 1.2, 1.4).
# clip_low = 0.1, clip_high = 0.3 -> range [0.9, 1.3].
# Row 0 (A>0): clipped only where ratio > 1.3 (token 1):
#   per-token -min(rA, clip(r)A) = (-1.0, -1.3, -0.8), sum -3.1
# Row 1 (A<0): clipped only where ratio < 0.9 (token 1); 1.4 > 1.3 is NOT clipped when A<0:
#   (2.0, 1.8, 2.4, 2.8), sum 9.0

RATIOS = torch.tensor([[1.0, 1.5, 0.8, 1.0], [1.0, 0.5, 1.2, 1.4]], dtype=F64)
OLD = torch.tensor([[-1.0, -2.0, -0.5, NAN], [-1.5, -0.7, -3.0, -1.0]], dtype=F64)
GMASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
ADV = torch.tensor([1.0, -2.0], dtype=F64)
HAND = {
    "seq-mean-token-mean": (-3.1 / 3 + 9.0 / 4) / 2,   # 0.608333...
    "token-mean": (-3.1 + 9.0) / 7,                   # 0.842857...
    "seq-mean-token-sum-norm": (-3.1 / 4 + 9.0 / 4) / 2,  # 0.7375
}


def _hand_logp():
    logp = torch.where(GMASK, torch.log(RATIOS) + torch.nan_to_num(OLD), torch.full_like(OLD, NAN))
    return logp.requires_grad_(True)


@pytest.mark.parametrize("mode", MODES)
def test_grpo_hand_values_and_clipping_gradients(mode):
    logp = _hand_logp()
    loss, m = grpo_loss(logp, OLD, ADV, GMASK, clip_low=0.1, clip_high=0.3,
                        aggregation=mode, max_length=4)
    assert abs(loss.item() - HAND[mode]) < 1e-12
    assert abs(m["pg_loss"] - HAND[mode]) < 1e-12 and m["kl"] == 0.0
    assert abs(m["clip_frac"] - 2 / 7) < 1e-12                # tokens (0,1) and (1,1)
    assert abs(m["ratio_mean"] - 7.4 / 7) < 1e-12             # (1+1.5+.8+1+.5+1.2+1.4)/7
    loss.backward()
    # d(-rA)/dlogp = -rA where not clipped, exactly 0 where clipped or masked
    per_token = -RATIOS * ADV.unsqueeze(1)
    per_token[0, 1] = per_token[1, 1] = 0.0
    per_token[0, 3] = 0.0
    if mode == "token-mean":
        expected = per_token / 7
    elif mode == "seq-mean-token-mean":
        expected = per_token / torch.tensor([[3.0], [4.0]], dtype=F64) / 2
    else:
        expected = per_token / 4 / 2
    torch.testing.assert_close(logp.grad, expected, atol=1e-12, rtol=0)
    assert logp.grad[0, 1] == 0 and logp.grad[1, 1] == 0      # exactly where clipping applies
    assert logp.grad[1, 3] != 0                               # r=1.4 with A<0 is not clipped


@pytest.mark.parametrize("estimator,per_token_kl,dkl", [
    # ref = logp - 0.5 everywhere -> r = -0.5
    ("k1", 0.5, 1.0),                             # k1 = -r = logp - ref; d/dlogp = +1
    ("k2", 0.125, 0.5),                           # k2 = r^2/2; d/dlogp = -r = 0.5
    ("k3", math.exp(-0.5) - 0.5, 1 - math.exp(-0.5)),  # d/dlogp (e^r - 1 - r) = 1 - e^r
])
def test_grpo_kl_term_hand_values(estimator, per_token_kl, dkl):
    logp = _hand_logp()
    ref = logp.detach() - 0.5
    loss, m = grpo_loss(logp, OLD, ADV, GMASK, ref_logprobs=ref, clip_low=0.1, clip_high=0.3,
                        kl_coef=0.1, kl_estimator=estimator, aggregation="token-mean")
    # a constant per-token KL adds kl_coef * kl to the token mean
    assert abs(loss.item() - (HAND["token-mean"] + 0.1 * per_token_kl)) < 1e-12
    assert abs(m["kl"] - per_token_kl) < 1e-12
    assert abs(m["pg_loss"] - HAND["token-mean"]) < 1e-12
    loss.backward()
    expected = -RATIOS * ADV.unsqueeze(1)
    expected[0, 1] = expected[1, 1] = 0.0
    expected = (expected + 0.1 * dkl) / 7
    expected[0, 3] = 0.0
    torch.testing.assert_close(logp.grad, expected, atol=1e-12, rtol=0)


def test_grpo_kl_requires_ref_and_monitoring_without_coef():
    logp = _hand_logp()
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(logp, OLD, ADV, GMASK, kl_coef=0.1)
    # ref given but kl_coef = 0: reported, not in the loss
    loss, m = grpo_loss(logp, OLD, ADV, GMASK, ref_logprobs=logp.detach() - 0.5, clip_low=0.1,
                        clip_high=0.3, aggregation="token-mean")
    assert abs(loss.item() - HAND["token-mean"]) < 1e-12
    assert abs(m["kl"] - (math.exp(-0.5) - 0.5)) < 1e-12
    with pytest.raises(ValueError, match="k3"):
        grpo_loss(logp, OLD, ADV, GMASK, kl_estimator="kl")


def test_equal_reward_group_has_zero_gradient():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    adv = grpo_advantages(rewards, 3)
    assert (adv == 0).all()
    logp = torch.randn(6, 5, dtype=F64, requires_grad=True)
    loss, m = grpo_loss(logp, logp.detach() + 0.3, adv.to(F64), torch.ones(6, 5, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and (logp.grad == 0).all() and m["clip_frac"] == 0.0


def test_grpo_mask_invariance_and_constants():
    gen = torch.Generator().manual_seed(1)
    logp = -torch.rand(4, 6, generator=gen, dtype=F64)
    old = logp + 0.2 * torch.randn(4, 6, generator=gen, dtype=F64)
    ref = logp + 0.2 * torch.randn(4, 6, generator=gen, dtype=F64)
    mask = torch.rand(4, 6, generator=gen) > 0.3
    adv = torch.randn(4, generator=gen, dtype=F64)
    kw = dict(kl_coef=0.05, aggregation="token-mean")
    base, _ = grpo_loss(logp, old, adv, mask, ref_logprobs=ref, **kw)
    for junk in (NAN, math.inf, -math.inf, 80.0):
        lp = torch.where(mask, logp, junk).requires_grad_(True)
        o = torch.where(mask, old, junk).requires_grad_(True)
        r = torch.where(mask, ref, -junk)
        loss, m = grpo_loss(lp, o, adv, mask, ref_logprobs=r, **kw)
        assert loss.item() == base.item()
        assert all(math.isfinite(v) for v in m.values())
        loss.backward()
        assert torch.isfinite(lp.grad).all() and (lp.grad[~mask] == 0).all()
        assert o.grad is None  # old log-probs are constants


def _grpo_loop(logp, old, adv, mask, ref, clip_low, clip_high, kl_coef, est, mode, max_len):
    seq_terms, tok_sum, tok_count = [], 0.0, 0
    for i in range(logp.shape[0]):
        terms = []
        for t in range(logp.shape[1]):
            if not mask[i, t]:
                continue
            ratio = math.exp(float(logp[i, t]) - float(old[i, t]))
            a = float(adv[i])
            clipped = min(max(ratio, 1 - clip_low), 1 + clip_high)
            term = -min(ratio * a, clipped * a)
            if kl_coef > 0:
                r = float(ref[i, t]) - float(logp[i, t])
                kl = {"k1": -r, "k2": 0.5 * r * r, "k3": math.exp(r) - 1 - r}[est]
                term += kl_coef * kl
            terms.append(term)
        tok_sum += sum(terms)
        tok_count += len(terms)
        if mode == "seq-mean-token-mean":
            seq_terms.append(sum(terms) / len(terms) if terms else 0.0)
        else:
            seq_terms.append(sum(terms) / max_len)
    if mode == "token-mean":
        return tok_sum / max(tok_count, 1)
    return sum(seq_terms) / max(len(seq_terms), 1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("mode", MODES)
def test_grpo_loop_vs_vectorised(seed, mode):
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 9, (1,), generator=gen))
    t = int(torch.randint(1, 12, (1,), generator=gen))
    logp = -2 * torch.rand(n, t, generator=gen, dtype=F64)
    old = logp + 0.4 * torch.randn(n, t, generator=gen, dtype=F64)
    ref = logp + 0.4 * torch.randn(n, t, generator=gen, dtype=F64)
    mask = torch.rand(n, t, generator=gen) > 0.3
    adv = torch.randn(n, generator=gen, dtype=F64)
    est = ["k1", "k2", "k3", "k3"][seed]
    kl_coef = [0.0, 0.1, 0.05, 0.3][seed]
    loss, _ = grpo_loss(logp, old, adv, mask, ref_logprobs=ref, clip_low=0.1, clip_high=0.28,
                        kl_coef=kl_coef, kl_estimator=est, aggregation=mode, max_length=t)
    expected = _grpo_loop(logp, old, adv, mask, ref, 0.1, 0.28, kl_coef, est, mode, t)
    assert abs(loss.item() - expected) < 1e-12


@pytest.mark.parametrize("mode", MODES)
def test_grpo_micro_batch_additivity(mode):
    gen = torch.Generator().manual_seed(7)
    logp = -torch.rand(8, 5, generator=gen, dtype=F64, requires_grad=True)
    old = logp.detach() + 0.3 * torch.randn(8, 5, generator=gen, dtype=F64)
    mask = torch.rand(8, 5, generator=gen) > 0.3
    adv = torch.randn(8, generator=gen, dtype=F64)
    kw = dict(aggregation=mode, max_length=5)
    full, _ = grpo_loss(logp, old, adv, mask, **kw)
    glob = dict(num_sequences=8, num_tokens=int(mask.sum()), **kw)
    parts = sum(grpo_loss(logp[s], old[s], adv[s], mask[s], **glob)[0]
                for s in (slice(0, 5), slice(5, 8)))
    torch.testing.assert_close(parts, full, atol=1e-12, rtol=0)
    g_full, = torch.autograd.grad(full, logp)
    g_parts, = torch.autograd.grad(parts, logp)
    torch.testing.assert_close(g_parts, g_full, atol=1e-12, rtol=0)


def test_grpo_bf16_inputs_computed_in_float32():
    logp = torch.full((2, 3), -1.0, dtype=torch.bfloat16, requires_grad=True)
    old = torch.full((2, 3), -1.0, dtype=torch.bfloat16)
    loss, m = grpo_loss(logp, old, torch.tensor([1.0, -1.0]), torch.ones(2, 3, dtype=torch.bool))
    # ratio 1 everywhere: per-token -A -> row means (-1, +1) -> seq mean 0
    assert loss.dtype == torch.float32 and loss.item() == 0.0 and m["ratio_mean"] == 1.0
    loss.backward()
    assert logp.grad.dtype == torch.bfloat16 and torch.isfinite(logp.grad.float()).all()
