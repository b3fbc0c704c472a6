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

from popo.seeds import counter_uniform


def gumbel_noise(seeds: torch.Tensor, position: int, vocab: int, keys: torch.Tensor | None = None) -> torch.Tensor:
    """Gumbel(0, 1) noise [R, V] (float32), a pure function of (seeds[r], position, v)."""
    return -torch.log(-torch.log(counter_uniform(seeds, position, vocab, keys)))


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
