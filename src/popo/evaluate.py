"""Evaluation of a policy on held-out prompts: greedy accuracy, sampled avg@k and pass@k."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from popo.data.example import Example
from popo.metrics import pass_at_k
from popo.rollout.base import RolloutEngine, SamplingParams
from popo.rollout.sampling import row_seed


def score_rollouts(verifier, texts: Sequence[str], answers: Sequence, truncated: torch.Tensor,
                   *, zero_if_truncated: bool) -> torch.Tensor:
    """Rewards [N] for decoded completions; rollouts cut off by the token limit get 0 if asked."""
    rewards = torch.tensor(verifier.score(list(texts), list(answers)), dtype=torch.float32)
    if zero_if_truncated:
        rewards = torch.where(truncated.cpu(), 0.0, rewards)
    return rewards


def evaluate_policy(engine: RolloutEngine, prompts: Sequence[str], examples: Sequence[Example], verifier,
                    *, k: int, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                    seed: int = 0, zero_if_truncated: bool = True, first_index: int = 0) -> dict[str, float]:
    """Greedy accuracy, avg@k and pass@k (sampled at `temperature`) on `examples`, each a mean over the
    examples. Example i is sampled with the seed `row_seed(seed, first_index + i)`, so a slice of a
    larger evaluation (`first_index` = its start) draws what the whole evaluation would."""
    answers = [ex.answer for ex in examples]
    greedy = engine.generate(prompts, 1, SamplingParams(max_new_tokens, temperature=0.0))
    greedy_correct = score_rollouts(verifier, greedy.texts, answers, greedy.truncated,
                                    zero_if_truncated=zero_if_truncated)
    result = {"greedy_acc": float(greedy_correct.mean()), "mean_length": float(greedy.lengths.float().mean())}
    if k > 0:
        sampled = engine.generate(prompts, k, SamplingParams(max_new_tokens, temperature, top_p),
                                  prompt_seeds=[row_seed(seed, first_index + i) for i in range(len(prompts))])
        repeated = [a for a in answers for _ in range(k)]
        correct = score_rollouts(verifier, sampled.texts, repeated, sampled.truncated,
                                 zero_if_truncated=zero_if_truncated).view(len(examples), k)
        result[f"avg@{k}"] = float(correct.mean())
        counts = correct.sum(dim=1).long().tolist()
        result[f"pass@{k}"] = sum(pass_at_k(k, c, k) for c in counts) / len(counts)
    return result
