"""Per-row seeded sampling: each rollout's random draws depend only on its own seed and position.

`generate`'s own sampler draws from one global random stream, so a rollout's tokens depend on which other
rows share its batch. That breaks two things users rely on: a run split over several processes (each
generating its shard of the prompts) would not reproduce the one-process run, and changing
`max_batch_rollouts` would change the samples. Here the sample for row r at decoding position t is

    argmax_v ( log p_v + g_{r,t,v} ),   g = Gumbel noise from a counter-based hash of (seed_r, t, v),

which is an exact draw from p (the Gumbel-max trick), where p is the distribution after temperature and
top-p. The noise is a pure function of (seed_r, t, v): no generator state, identical on every device and
in every batch. `seeded_draw` is that draw, the one every decoding path of `popo.rollout.hf` takes; it also
returns the log-prob of the chosen token under p, so the engine needs neither `output_scores` (a
[rows, steps, vocab] tensor) nor a second pass. With the position as a tensor it has no Python-side value
and no host synchronisation, so `torch.compile` captures it as one graph (fused into a few kernels on CUDA,
where the eager ops would make some twenty passes over [rows, vocab] int64 per token).
"""

from __future__ import annotations

import torch

from popo.seeds import counter_uniform, vocab_keys


def gumbel_noise(seeds: torch.Tensor, position: int | torch.Tensor, vocab: int,
                 keys: torch.Tensor | None = None) -> torch.Tensor:
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


def seeded_draw(logits: torch.Tensor, seeds: torch.Tensor, position: int | torch.Tensor, temperature: float,
                top_p: float, keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The token [R] each row draws from `logits` [R, V] at decoding `position` (argmax of the sampling
    log-probs plus the row's Gumbel noise; the plain argmax when `temperature <= 0`) and its log-prob [R]
    (float32) under the distribution sampled from. `keys`: `vocab_keys(V)`, when the caller has it."""
    logp = sampling_logprobs(logits, temperature, top_p)  # [R, V]
    keyed = logp if temperature <= 0 else logp + gumbel_noise(seeds, position, logp.shape[-1], keys)
    choice = keyed.argmax(dim=-1)  # [R]
    return choice, logp.gather(-1, choice.unsqueeze(-1)).squeeze(-1)


def draw_scores(scores: torch.Tensor, seeds: torch.Tensor, position: int | torch.Tensor, temperature: float,
                top_p: float, keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`seeded_draw` as a logits processor returns it: scores [R, V] that are 0 at the drawn token and -inf
    elsewhere (so `generate`'s greedy step takes the draw), and the drawn token's log-prob [R]."""
    choice, logprob = seeded_draw(scores, seeds, position, temperature, top_p, keys)
    return torch.full_like(scores, float("-inf")).scatter_(-1, choice.unsqueeze(-1), 0.0), logprob


class SeededSampler:
    """A `transformers` logits processor that makes the next token `seeded_draw`'s for each row and records
    that token's log-prob. Use with `do_sample=False`: greedy on its output is the sample. `draw`: the
    function to call in place of `draw_scores` (its `torch.compile`d copy on CUDA), which gets the position
    as a 0-dim tensor on the logits' device."""

    def __init__(self, seeds: torch.Tensor, temperature: float, top_p: float, prompt_width: int, draw=draw_scores):
        self.seeds, self.temperature, self.top_p = seeds, temperature, top_p
        self.prompt_width, self.draw = prompt_width, draw
        self.keys: torch.Tensor | None = None  # vocab_keys(V), made at the first call
        self.logprobs: list[torch.Tensor] = []  # one [R] tensor per generated position

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.keys is None:
            self.keys = vocab_keys(scores.shape[-1], scores.device)
        # a fill on the device, not a copy from the host: nothing waits for the GPU
        position = torch.full((), input_ids.shape[1] - self.prompt_width, dtype=torch.int64, device=scores.device)
        out, logprob = self.draw(scores, self.seeds, position, self.temperature, self.top_p, self.keys)
        self.logprobs.append(logprob)
        return out
