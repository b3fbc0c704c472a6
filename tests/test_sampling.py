"""The per-row seeded sampler: hash values, exact Gumbel-max sampling, the top-p nucleus."""

from __future__ import annotations

import math

import pytest
import torch

from popo.rollout.sampling import SeededSampler, gumbel_noise, sampling_logprobs
from popo.seeds import fmix32, row_seed


def fmix32_reference(h: int) -> int:
    """MurmurHash3's fmix32 in plain Python integers."""
    h &= 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def test_fmix32_matches_plain_integer_arithmetic():
    values = [0, 1, 2, 0xFFFFFFFF, 0x12345678, 0x80000000, 2**31 - 1, 987654321]
    got = fmix32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [fmix32_reference(v) for v in values]
    assert fmix32_reference(0) == 0 and fmix32_reference(1) == 0x514E28B7  # published test vector


def test_noise_is_a_pure_function_of_seed_position_and_token():
    seeds = torch.tensor([3, 7, 3], dtype=torch.int64)
    a = gumbel_noise(seeds, 5, 11)
    assert torch.equal(a[0], a[2])  # same seed, same noise whatever the row
    assert not torch.equal(a[0], a[1])
    assert torch.equal(a[1:2], gumbel_noise(seeds[1:2], 5, 11))  # independent of the other rows
    assert not torch.equal(a, gumbel_noise(seeds, 6, 11))


def test_noise_has_gumbel_moments():
    g = gumbel_noise(torch.arange(4000, dtype=torch.int64), 0, 256).double().flatten()  # 1,024,000 draws
    assert abs(g.mean().item() - 0.5772156649) < 0.005  # Euler-Mascheroni; SE of the mean ~0.0013
    assert abs(g.var().item() - math.pi**2 / 6) < 0.02  # SE of the variance ~0.004


def test_top_p_keeps_the_smallest_nucleus_and_renormalises():
    p = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logp = sampling_logprobs(p.log(), temperature=1.0, top_p=0.7)
    expected = torch.tensor([[0.0, 0.625, 0.0, 0.375]])  # 0.5 + 0.3 >= 0.7; the rest is dropped
    torch.testing.assert_close(logp.exp(), expected, atol=1e-6, rtol=0)
    full = sampling_logprobs(p.log(), temperature=1.0, top_p=1.0)
    torch.testing.assert_close(full.exp(), p, atol=1e-6, rtol=0)
    half_t = sampling_logprobs(p.log(), temperature=0.5, top_p=1.0)
    torch.testing.assert_close(half_t.exp(), p**2 / (p**2).sum(), atol=1e-6, rtol=0)


def test_top_p_always_keeps_the_most_likely_token():
    logp = sampling_logprobs(torch.tensor([[0.0, 5.0, 1.0]]), temperature=1.0, top_p=0.01)
    torch.testing.assert_close(logp.exp(), torch.tensor([[0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)


def test_gumbel_max_draws_follow_the_sampling_distribution():
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    n = 20000
    sampler = SeededSampler(torch.arange(n, dtype=torch.int64), temperature=1.0, top_p=1.0, prompt_width=0)
    out = sampler(torch.zeros(n, 0, dtype=torch.long), p.log().expand(n, 4).clone())
    choice = out.argmax(dim=-1)
    freq = torch.bincount(choice, minlength=4).double() / n
    se = (p.double() * (1 - p.double()) / n).sqrt()
    assert ((freq - p.double()).abs() < 4 * se).all(), freq
    torch.testing.assert_close(sampler.logprobs[0], p.log()[choice], atol=1e-6, rtol=0)


def test_greedy_takes_the_argmax_and_records_its_logprob():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    sampler = SeededSampler(torch.tensor([1, 2]), temperature=0.0, top_p=1.0, prompt_width=0)
    choice = sampler(torch.zeros(2, 0, dtype=torch.long), logits).argmax(-1)
    assert choice.tolist() == [1, 0]
    torch.testing.assert_close(sampler.logprobs[0], logits.log_softmax(-1)[[0, 1], [1, 0]], atol=1e-6, rtol=0)


def test_row_seed_depends_on_every_key():
    seeds = {row_seed(1, i, j) for i in range(20) for j in range(20)}
    assert len(seeds) == 400
    assert row_seed(1, 2, 3) == row_seed(1, 2, 3) != row_seed(1, 3, 2)
    with pytest.raises(TypeError):
        row_seed(1, 2.5)
