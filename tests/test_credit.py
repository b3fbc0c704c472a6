"""Tests for popo.credit: POPO sequence weights and GRPO advantages."""

import math
import statistics

import pytest
import torch

from popo.credit import grpo_advantages, popo_weights

F64 = torch.float64

# Two prompts x three rollouts.  Prompt 0: rows 0 and 2 are positive.
# Prompt 1: no positive.  Negatives carry -inf / NaN log-probs on purpose.
MEAN_LP = torch.tensor([-1.0, float("-inf"), -0.5, float("nan"), -1.0, -2.0], dtype=F64)
REWARDS = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, -1.0], dtype=F64)


def test_softmax_hand_values():
    w = popo_weights(MEAN_LP, REWARDS, 3)
    # softmax over {-1, -0.5}: w0 = e^-1 / (e^-1 + e^-0.5) = 1 / (1 + e^0.5)
    w0 = 1.0 / (1.0 + math.exp(0.5))  # 0.37754066879814546
    w2 = 1.0 / (1.0 + math.exp(-0.5))  # 0.62245933120185459
    expected = torch.tensor([w0, 0.0, w2, 0.0, 0.0, 0.0], dtype=F64)
    torch.testing.assert_close(w, expected, atol=1e-12, rtol=0)
    assert abs(w0 - 0.3775406687981454) < 1e-12
    assert not w.requires_grad and w.dtype == F64


def test_temperature_hand_values():
    w = popo_weights(MEAN_LP, REWARDS, 3, temperature=2.0)
    # logits divided by 2: {-0.5, -0.25} -> w0 = 1 / (1 + e^0.25)
    w0 = 1.0 / (1.0 + math.exp(0.25))  # 0.43782349911420193
    expected = torch.tensor([w0, 0.0, 1.0 - w0, 0.0, 0.0, 0.0], dtype=F64)
    torch.testing.assert_close(w, expected, atol=1e-12, rtol=0)
    # Very high temperature -> uniform; very low -> argmax.
    hot = popo_weights(MEAN_LP, REWARDS, 3, temperature=1e9)
    torch.testing.assert_close(hot[[0, 2]], torch.tensor([0.5, 0.5], dtype=F64), atol=1e-9, rtol=0)
    cold = popo_weights(MEAN_LP, REWARDS, 3, temperature=1e-3)
    torch.testing.assert_close(cold[[0, 2]], torch.tensor([0.0, 1.0], dtype=F64), atol=1e-12, rtol=0)


def test_uniform_hand_values():
    w = popo_weights(MEAN_LP, REWARDS, 3, mode="uniform")
    # two positives in prompt 0 -> 1/2 each; prompt 1 has none -> zeros
    expected = torch.tensor([0.5, 0.0, 0.5, 0.0, 0.0, 0.0], dtype=F64)
    torch.testing.assert_close(w, expected, atol=1e-12, rtol=0)


def test_length_normalised_hand_values():
    lengths = torch.tensor([4, 7, 2, 1, 5, 3])
    w = popo_weights(MEAN_LP, REWARDS, 3, lengths=lengths, length_normalize=True)
    # softmax weights w0 = 1/(1+e^.5), w2 = e^.5/(1+e^.5); divide by lengths 4 and 2:
    # w0' = (w0/4) / (w0/4 + w2/2) = w0 / (w0 + 2 w2) = 1 / (1 + 2 e^0.5) = 0.232696...
    w0 = 1.0 / (1.0 + 2.0 * math.exp(0.5))
    expected = torch.tensor([w0, 0.0, 1.0 - w0, 0.0, 0.0, 0.0], dtype=F64)
    torch.testing.assert_close(w, expected, atol=1e-12, rtol=0)
    # uniform: (1/4) / (1/4 + 1/2) = 1/3 and (1/2) / (3/4) = 2/3
    wu = popo_weights(MEAN_LP, REWARDS, 3, mode="uniform", lengths=lengths, length_normalize=True)
    expected_u = torch.tensor([1 / 3, 0.0, 2 / 3, 0.0, 0.0, 0.0], dtype=F64)
    torch.testing.assert_close(wu, expected_u, atol=1e-12, rtol=0)
    # lengths are ignored unless length_normalize=True
    torch.testing.assert_close(popo_weights(MEAN_LP, REWARDS, 3, lengths=lengths),
                               popo_weights(MEAN_LP, REWARDS, 3), atol=0, rtol=0)


def test_threshold_is_strict():
    rewards = torch.tensor([0.5, 1.0, 0.2, 0.5])
    lp = torch.tensor([-1.0, -1.0, -1.0, -1.0])
    w = popo_weights(lp, rewards, 2, threshold=0.5, mode="uniform")
    # only reward 1.0 exceeds 0.5; prompt 1 (0.2, 0.5) has no positive
    torch.testing.assert_close(w, torch.tensor([0.0, 1.0, 0.0, 0.0]), atol=0, rtol=0)


def _loop_reference(lp, rewards, g, mode, temperature, lengths=None):
    out = []
    for b in range(len(lp) // g):
        idx = range(b * g, (b + 1) * g)
        pos = [i for i in idx if rewards[i] > 0]
        if mode == "uniform":
            raw = {i: 1.0 for i in pos}
        else:
            raw = {i: math.exp(lp[i] / temperature) for i in pos}
        if lengths is not None:
            raw = {i: v / lengths[i] for i, v in raw.items()}
        total = sum(raw.values())
        out += [raw[i] / total if i in raw else 0.0 for i in idx]
    return torch.tensor(out, dtype=F64)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mode", ["softmax", "uniform"])
@pytest.mark.parametrize("length_normalize", [False, True])
def test_random_properties_and_loop_equivalence(seed, mode, length_normalize):
    gen = torch.Generator().manual_seed(seed)
    b, g = 5, 4
    lp = -3.0 * torch.rand(b * g, generator=gen, dtype=F64)
    rewards = (torch.rand(b * g, generator=gen) > 0.6).to(F64)
    rewards[:g] = 0.0  # make sure at least one all-negative prompt exists
    lengths = torch.randint(1, 20, (b * g,), generator=gen)
    w = popo_weights(lp, rewards, g, mode=mode, temperature=0.7,
                     lengths=lengths, length_normalize=length_normalize)
    ref = _loop_reference(lp.tolist(), rewards.tolist(), g, mode, 0.7,
                          lengths.tolist() if length_normalize else None)
    torch.testing.assert_close(w, ref, atol=1e-12, rtol=0)
    assert ((w >= 0) & (w <= 1)).all()
    assert (w[rewards <= 0] == 0).all()
    sums = w.view(b, g).sum(1)
    has_pos = (rewards.view(b, g) > 0).any(1)
    torch.testing.assert_close(sums[has_pos], torch.ones_like(sums[has_pos]), atol=1e-12, rtol=0)
    assert (sums[~has_pos] == 0).all()


def test_invariance_to_negative_logprobs():
    gen = torch.Generator().manual_seed(3)
    lp = torch.randn(12, generator=gen, dtype=F64)
    rewards = torch.tensor([1, 0, 1, 0, 0, 0, 1, 1, 1, 0, 0, 1], dtype=F64)
    w = popo_weights(lp, rewards, 4)
    for junk in (float("nan"), float("-inf"), float("inf"), 1e6):
        lp2 = torch.where(rewards > 0, lp, torch.full_like(lp, junk))
        w2 = popo_weights(lp2, rewards, 4)
        torch.testing.assert_close(w2, w, atol=0, rtol=0)
        assert not torch.isnan(w2).any()


def test_no_grad_and_dtype():
    lp = torch.tensor([-1.0, -2.0, -3.0, -4.0], requires_grad=True)
    w = popo_weights(lp, torch.tensor([1, 1, 0, 1]), 2)
    assert not w.requires_grad and w.grad_fn is None
    assert w.dtype == torch.float32
    # a bf16 input is computed in float32 and returned as bf16
    wb = popo_weights(lp.detach().bfloat16(), torch.tensor([1, 1, 0, 1]), 2)
    assert wb.dtype == torch.bfloat16


def test_all_positive_and_all_negative_batches():
    lp = torch.zeros(6, dtype=F64)
    w = popo_weights(lp, torch.ones(6), 3)
    torch.testing.assert_close(w, torch.full((6,), 1 / 3, dtype=F64), atol=1e-12, rtol=0)
    w0 = popo_weights(torch.full((6,), float("nan"), dtype=F64), torch.zeros(6), 3)
    assert (w0 == 0).all()


def test_weights_validation():
    lp, r = torch.zeros(6), torch.ones(6)
    with pytest.raises(ValueError, match="divisible"):
        popo_weights(lp, r, 4)
    with pytest.raises(ValueError, match="softmax.*uniform"):
        popo_weights(lp, r, 3, mode="max")
    with pytest.raises(ValueError, match="temperature"):
        popo_weights(lp, r, 3, temperature=0.0)
    with pytest.raises(ValueError, match="lengths"):
        popo_weights(lp, r, 3, length_normalize=True)
    with pytest.raises(ValueError, match="shape"):
        popo_weights(lp, torch.ones(3), 3)


def test_grpo_advantages_hand_values():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0], dtype=F64)
    # eps=0 on the non-degenerate group only (an all-equal group would give 0/0 with eps=0)
    a = torch.cat([grpo_advantages(rewards[:3], 3, eps=0.0), grpo_advantages(rewards[3:], 3)])
    # group 0: mean 1/3, deviations (2/3, -1/3, -1/3), sum of squares 6/9,
    # unbiased var = (6/9)/2 = 1/3, std = 1/sqrt(3) -> A = (2/sqrt 3, -1/sqrt 3, -1/sqrt 3)
    s3 = math.sqrt(3.0)
    expected = torch.tensor([2 / s3, -1 / s3, -1 / s3, 0.0, 0.0, 0.0], dtype=F64)
    torch.testing.assert_close(a, expected, atol=1e-12, rtol=0)
    # Dr.GRPO: no std scaling, r - mean
    a2 = grpo_advantages(rewards, 3, scale_by_std=False)
    torch.testing.assert_close(a2, torch.tensor([2 / 3, -1 / 3, -1 / 3, 0, 0, 0], dtype=F64),
                               atol=1e-12, rtol=0)
    # default eps=1e-6 is added to the std: 2/3 / (1/sqrt(3) + 1e-6)
    a3 = grpo_advantages(rewards, 3)
    assert abs(a3[0].item() - (2 / 3) / (1 / s3 + 1e-6)) < 1e-12
    # an all-equal group has exactly zero advantage
    assert (a3[3:] == 0).all() and not a3.requires_grad


@pytest.mark.parametrize("seed", [0, 1])
def test_grpo_advantages_loop_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(24, generator=gen, dtype=F64)
    a = grpo_advantages(rewards, 6, eps=1e-6)
    expected = []
    for b in range(4):
        grp = rewards[b * 6:(b + 1) * 6].tolist()
        mu, sd = statistics.fmean(grp), statistics.stdev(grp)  # stdev = sample (n-1) std
        expected += [(x - mu) / (sd + 1e-6) for x in grp]
    torch.testing.assert_close(a, torch.tensor(expected, dtype=F64), atol=1e-12, rtol=0)


def test_grpo_advantages_validation_and_dtype():
    with pytest.raises(ValueError, match="group_size"):
        grpo_advantages(torch.ones(4), 1)
    with pytest.raises(ValueError, match="divisible"):
        grpo_advantages(torch.ones(5), 2)
    a = grpo_advantages(torch.tensor([True, False, True, True]), 2)
    assert a.dtype == torch.float32
