"""The one evaluation path: greedy accuracy, sampled avg@k and pass@k of a policy on held-out prompts.

`popo eval`, the trainer's periodic evaluation and studies all call `evaluate` with an `EvalProtocol`, so
the same model, prompts and protocol give the same numbers whichever way they are asked for. Example i
is sampled from the seed `row_seed(protocol.seed, i)`: a slice of an evaluation (a rank's share in a
multi-process run) draws exactly what the whole evaluation would for those examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from popo.data.example import Example
from popo.distributed import Dist
from popo.rewards.scoring import score_rollouts
from popo.rollout.base import RolloutEngine, Rollouts, SamplingParams
from popo.sampling_metrics import pass_at_k
from popo.seeds import eval_seed, row_seed


@dataclass(frozen=True)
class EvalProtocol:
    """How an evaluation samples and scores; reported beside its numbers."""

    k: int  # sampled completions per problem (0: greedy only)
    max_new_tokens: int
    temperature: float = 1.0  # for the k samples; the greedy pass uses temperature 0
    top_p: float = 1.0
    seed: int = 0  # base seed of the samples; `eval_seed(run_seed)` reproduces a training run's evaluation
    zero_if_truncated: bool = True  # completions cut off by the token limit count as wrong


def run_protocol(config) -> EvalProtocol:
    """The evaluation protocol of a run with configuration `config` (a `popo.config.Config`): its
    `train.eval_samples`, token limit, sampling settings, truncation rule and evaluation seed."""
    return EvalProtocol(k=config.train.eval_samples, max_new_tokens=config.rollout.max_new_tokens,
                        temperature=config.rollout.temperature or 1.0, top_p=config.rollout.top_p,
                        seed=eval_seed(config.train.seed), zero_if_truncated=config.algo.zero_if_truncated)


@dataclass
class EvalResult:
    """Per-problem outcomes of one evaluation (n problems, k samples each)."""

    greedy_texts: list[str]
    greedy_correct: torch.Tensor  # [n] float
    greedy_lengths: torch.Tensor  # [n] completion tokens
    sample_texts: list[str]  # n * k, problem by problem
    correct: torch.Tensor  # [n, k] float
    nll_sum: float = 0.0  # -log p of the sampled tokens under the sampling distribution, summed
    sampled_tokens: int = 0  # how many tokens that sum holds
    start_kl_sum: float = float("nan")  # k3 estimate of KL(policy || start) summed over those tokens (nan: not asked)

    @property
    def sample_nll(self) -> float:
        return self.nll_sum / self.sampled_tokens if self.sampled_tokens else float("nan")

    def summary(self) -> dict[str, float]:
        """Greedy accuracy, mean greedy length and, with samples, avg@k, unbiased pass@k (means over
        problems) and `sample_nll`: the mean negative log-prob of the sampled completions' tokens, the
        Monte Carlo estimate of the policy's per-token entropy at the sampling temperature (the breadth of
        what it samples, tracked along a run's trajectory)."""
        result = {"greedy_acc": float(self.greedy_correct.mean()),
                  "mean_length": float(self.greedy_lengths.float().mean())}
        n, k = self.correct.shape
        if k > 0:
            result[f"avg@{k}"] = float(self.correct.mean())
            counts = self.correct.sum(dim=1).long().tolist()
            result[f"pass@{k}"] = sum(pass_at_k(k, c, k) for c in counts) / len(counts)
            if self.sample_nll == self.sample_nll:
                result["sample_nll"] = self.sample_nll
            if self.sampled_tokens and self.start_kl_sum == self.start_kl_sum:
                result["start_kl"] = self.start_kl_sum / self.sampled_tokens
        return result


StartLogprobs = Callable[[Rollouts], torch.Tensor]
"""Sampled rollouts -> their per-token log-probs [n, C] under the starting policy (`Models.reference_logprobs`)."""


def evaluate(engine: RolloutEngine, prompts: Sequence[str], examples: Sequence[Example], verifier,
             protocol: EvalProtocol, *, first_index: int = 0, start_logprobs: StartLogprobs | None = None
             ) -> EvalResult:
    """Greedy and sampled completions of `prompts`, scored against `examples`' answers. Example i is
    sampled from `row_seed(protocol.seed, first_index + i)` (`first_index`: where this slice starts). With
    `start_logprobs`, the samples' KL to the start is estimated too (k3 per token: exp(r) - 1 - r with r the
    start's minus the policy's log-prob, unbiased and never negative)."""
    p = protocol
    answers = [ex.answer for ex in examples]
    greedy = engine.generate(prompts, 1, SamplingParams(p.max_new_tokens, temperature=0.0))
    greedy_correct = score_rollouts(verifier, greedy.texts, answers, greedy.truncated,
                                    zero_if_truncated=p.zero_if_truncated, prompts=prompts, examples=examples)
    texts, correct, nll, tokens, start_kl = [], torch.zeros(len(examples), 0), 0.0, 0, float("nan")
    if p.k > 0:
        sampled = engine.generate(prompts, p.k, SamplingParams(p.max_new_tokens, p.temperature, p.top_p),
                                  prompt_seeds=[row_seed(p.seed, first_index + i) for i in range(len(prompts))])
        texts = sampled.texts
        correct = score_rollouts(verifier, texts, [a for a in answers for _ in range(p.k)], sampled.truncated,
                                 zero_if_truncated=p.zero_if_truncated, prompts=[q for q in prompts for _ in range(p.k)],
                                 examples=[ex for ex in examples for _ in range(p.k)]).view(len(examples), p.k)
        mask = sampled.completion_mask
        nll, tokens = float(-torch.where(mask, sampled.sampling_logprobs, 0.0).sum()), int(mask.sum())
        if start_logprobs is not None:
            r = start_logprobs(sampled).to(sampled.sampling_logprobs.dtype) - sampled.sampling_logprobs
            start_kl = float(torch.where(mask, torch.expm1(r) - r, 0.0).sum())
    return EvalResult(greedy.texts, greedy_correct, greedy.lengths, texts, correct, nll, tokens, start_kl)


def evaluate_split(engine: RolloutEngine, prompts: Sequence[str], examples: Sequence[Example], verifier,
                   protocol: EvalProtocol, dist: Dist) -> dict[str, float]:
    """`evaluate(...).summary()` with the examples split over the ranks (each a contiguous slice, sampled
    with the seeds the one-process evaluation would use) and the per-example means combined; every rank
    returns the whole evaluation's numbers."""
    return evaluate_split_per_problem(engine, prompts, examples, verifier, protocol, dist)[0]


def evaluate_split_per_problem(engine: RolloutEngine, prompts: Sequence[str], examples: Sequence[Example], verifier,
                               protocol: EvalProtocol, dist: Dist, *, start_logprobs: StartLogprobs | None = None
                               ) -> tuple[dict[str, float], list[float], list[float]]:
    """`evaluate_split`'s numbers and, beside them, every problem's greedy reward and its number of correct samples
    (all ranks' slices, in example order; the counts are empty without samples), so two evaluations of the same
    problems can be compared problem by problem."""
    n, rank, world = len(examples), dist.rank, dist.world
    lo, hi = rank * n // world, (rank + 1) * n // world
    result = (evaluate(engine, prompts[lo:hi], examples[lo:hi], verifier, protocol, first_index=lo,
                       start_logprobs=start_logprobs) if hi > lo else None)
    part = result.summary() if result is not None else {}
    kl = [] if start_logprobs is None else [result.start_kl_sum if result is not None else 0.0]
    nll = kl + ([result.nll_sum, float(result.sampled_tokens)] if result is not None else [0.0, 0.0])
    for ratio in ("sample_nll", "start_kl"):  # ratios of sums over every rank's tokens, not means over problems
        part.pop(ratio, None)
    keys = dist.union_keys(list(part))
    greedy = [0.0] * n  # this rank's slice filled in, the others' left 0: the sum over ranks is every problem's
    correct = [0.0] * (n if protocol.k > 0 else 0)
    if result is not None:
        greedy[lo:hi] = result.greedy_correct.tolist()
        if protocol.k > 0:
            correct[lo:hi] = result.correct.sum(1).tolist()
    sums = dist.sum_values([part.get(k, 0.0) * (hi - lo) for k in keys] + greedy + correct + nll)
    scores = {k: total / n for k, total in zip(keys, sums)}
    if sums[-1]:
        scores["sample_nll"] = sums[-2] / sums[-1]
        if kl:
            scores["start_kl"] = sums[-3] / sums[-1]
    return scores, sums[len(keys):len(keys) + n], sums[len(keys) + n:len(sums) - len(nll)]
