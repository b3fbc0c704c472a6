"""Rewards of decoded rollouts, as training and evaluation use them: the verifier's scores of each
completion, with completions cut off by the token limit set to 0 when the run asks for it."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from popo.data.example import Example
from popo.rewards.base import Answer, Verifier


def score_rollouts(verifier: Verifier, texts: Sequence[str], answers: Sequence[Answer], truncated: torch.Tensor,
                   *, zero_if_truncated: bool, prompts: Sequence[str] | None = None,
                   examples: Sequence[Example] | None = None) -> torch.Tensor:
    """Rewards [N] (float32, on the CPU) of decoded completions `texts`; a completion marked `truncated` gets 0
    if `zero_if_truncated`. Given the dataset `examples` and rendered `prompts`, one per completion (as the
    trainer and the evaluation give them), the verifier's `score_rows` scores them, so a reward that reads
    more than the gold answer (dataset columns, the prompt) sees it; without them, `score` checks the texts
    against `answers`."""
    if examples is None:
        scores = verifier.score(list(texts), list(answers))
    else:
        scores = verifier.score_rows(list(prompts), list(texts), list(examples))
    rewards = torch.tensor(scores, dtype=torch.float32)
    if zero_if_truncated:
        rewards = torch.where(truncated.cpu(), 0.0, rewards)
    return rewards
