"""Per-row seeded sampling: each rollout's random draws depend only on its own seed and position.

`generate`'s own sampler draws from one global random stream, so a rollout's tokens depend on which other
rows share its batch. That breaks two things users rely on: a run split over several processes (each
generating its shard of the prompts) would not reproduce the one-process run, and changing
`max_batch_rollouts` would change the samples. Here the sample for row r at decoding position t is

    argmax_v ( log p_v + g_{r,t,v} ),   g = Gumbel noise from a counter-based hash of (seed_r, t, v),

which is an exact draw from p (the Gumbel-max trick), where p is the distribution after temperature and
top-p. The noise is a pure function of (seed_r, t, v): no generator state, identical on every device and
in every batch. The processor also records the log-prob of the chosen token under p, so the engine needs
neither `output_scores` (a [rows, steps, vocab] tensor) nor a second pass.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding values in [0, 2^32)."""
    h = h & _MASK32
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _MASK32  # int64 products wrap; the low 32 bits stay exact
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def _fmix32_int(h: int) -> int:
    """`fmix32` on a Python integer (the same values, without a tensor round trip)."""
    h &= _MASK32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def row_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed derived from `seed` and integer keys (e.g. prompt index, sample index)."""
    h = seed & _MASK32
    for key in keys:
        if not isinstance(key, int):
            raise TypeError(f"row_seed keys must be integers, got {key!r}")
        h = _fmix32_int(h ^ _fmix32_int((key * 0x9E3779B1 + 0x7F4A7C15) & _MASK32))
    return h


def stream_seed(seed: int, step: int, stream: int) -> int:
    """A seed for one random stream (sampling, dropout-free noise, evaluation, ...) of one training step,
    independent of everything drawn before it: a resumed run draws what an uninterrupted one would."""
    return (seed * 1_000_003 + step * 7_919 + stream * 104_729) % (2**63 - 1)


def vocab_keys(vocab: int, device=None) -> torch.Tensor:
    """The per-column half of `counter_uniform`'s hash [V] (int64): the same for every row and position,
    so a decoding loop computes it once."""
    v = torch.arange(vocab, dtype=torch.int64, device=device)
    return fmix32(v * 0x9E3779B1 + 0x85EBCA77)


def counter_uniform(seeds: torch.Tensor, position: int, vocab: int,
                    keys: torch.Tensor | None = None) -> torch.Tensor:
    """Uniform(0, 1) draws [R, V] (float32, never 0 or 1), a pure function of (seeds[r], position, v).
    `keys`: `vocab_keys(vocab)`, when the caller has it already."""
    base = fmix32(seeds.to(torch.int64) ^ fmix32(torch.tensor(position * 0x27D4EB2F + 0x165667B1)))  # [R]
    keys = vocab_keys(vocab, seeds.device) if keys is None else keys
    h = fmix32(base.unsqueeze(1) ^ keys)  # [R, V]
    # 23 bits keep u = (k + 0.5) / 2^23 exactly representable in float32, so 0 < u < 1 strictly
    return ((h >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))


def gumbel_noise(seeds: torch.Tensor, position: int, vocab: int, keys: torch.Tensor | None = None) -> torch.Tensor:
    """Gumbel(0, 1) noise [R, V] (float32), a pure function of (seeds[r], position, v)."""
    return -torch.log(-torch.log(counter_uniform(seeds, position, vocab, keys)))


def normal_noise(seeds: torch.Tensor, width: int) -> torch.Tensor:
    """Standard normal noise [R, width] (float32), a pure function of (seeds[r], column): Box-Muller on
    two counter-based uniforms."""
    u1 = counter_uniform(seeds, 2**20 + 1, width)
    u2 = counter_uniform(seeds, 2**20 + 2, width)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * torch.pi * u2)


def sampling_logprobs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-probs [R, V] of the distribution sampled from: softmax(logits / T) restricted to the top-p
    nucleus and renormalised (-inf outside it). `temperature <= 0` means greedy: plain log-softmax."""
    logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
    logp = logits.log_softmax(dim=-1)
    if temperature <= 0 or top_p >= 1.0:
        return logp
    sorted_logp, order = logp.sort(dim=-1, descending=True)
    before = sorted_logp.exp().cumsum(dim=-1) - sorted_logp.exp()  # mass strictly above each token
    drop_sorted = before >= top_p  # the top token always stays (before = 0)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logp.masked_fill(drop, float("-inf")).log_softmax(dim=-1)


class SeededSampler:
    """A `transformers` logits processor that makes the next token the Gumbel-max draw for each row and
    records that token's log-prob. Use with `do_sample=False`: greedy on its output is the sample."""

    def __init__(self, seeds: torch.Tensor, temperature: float, top_p: float, prompt_width: int):
        self.seeds, self.temperature, self.top_p = seeds, temperature, top_p
        self.prompt_width = prompt_width
        self.logprobs: list[torch.Tensor] = []  # one [R] tensor per generated position

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logp = sampling_logprobs(scores, self.temperature, self.top_p)  # [R, V]
        position = input_ids.shape[1] - self.prompt_width
        keyed = logp if self.temperature <= 0 else logp + gumbel_noise(self.seeds, position, logp.shape[-1])
        choice = keyed.argmax(dim=-1)  # [R]
        self.logprobs.append(logp.gather(-1, choice.unsqueeze(-1)).squeeze(-1))
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, choice.unsqueeze(-1), 0.0)
