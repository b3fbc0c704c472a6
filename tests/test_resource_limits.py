"""Resource limits: generation and prompt length are capped, micro-batches fit the token budget, and an
out-of-memory error in a micro-batch is retried once with half the budget before failing clearly.

CUDA is not needed: the OOM is injected by making the model forward raise `torch.OutOfMemoryError`."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import popo.models
from popo.algorithms import get_algorithm
from popo.config import load_config
from popo.rollout import HFEngine, Rollouts, SamplingParams
from popo.testbed.model import build_tiny_qwen2
from popo.testbed.tokenizer import build_tokenizer
from popo.models import Models
from popo.rollout.base import plan_micro_batches
from popo.update import update_policy

PROMPTS = ["1+1=", "12+34=", "5+5=", "123+456="]
G = 2
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run far faster on one thread


@pytest.fixture(scope="module")
def setup():
    """A random tiny model (no warm-up needed) and one batch of rollouts from it."""
    tokenizer = build_tokenizer()
    model = build_tiny_qwen2(tokenizer, seed=0)
    engine = HFEngine(model, tokenizer, max_prompt_tokens=16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rollouts = engine.generate(PROMPTS, G, SamplingParams(max_new_tokens=6), seed=1)
    finally:
        torch.set_num_threads(threads)
    return model, tokenizer, engine, rollouts


def test_generation_length_is_capped(setup):
    _, _, engine, _ = setup
    out = engine.generate(PROMPTS, 3, SamplingParams(max_new_tokens=5), seed=2)
    assert out.completion_ids.shape[1] <= 5 and int(out.lengths.max()) <= 5
    # a rollout that did not stop by itself within the cap is marked truncated (and then earns 0 by default)
    assert out.truncated.tolist() == (out.lengths == 5).logical_and(
        ~(out.completion_ids == engine.tokenizer.eos_token_id).any(1)).tolist()


def test_prompt_length_is_capped_by_the_engine_too(setup):
    _, _, engine, _ = setup
    with pytest.raises(ValueError, match="prompt of 17 tokens exceeds max_prompt_tokens=16"):
        engine.generate(["1" * 17], 1, SamplingParams(max_new_tokens=2))


def synthetic_batch(prompt_lengths: list[int], completion_lengths: list[int]) -> Rollouts:
    n, width_p, width_c = len(prompt_lengths), max(prompt_lengths), max(completion_lengths)
    prompt_mask = torch.tensor([[False] * (width_p - p) + [True] * p for p in prompt_lengths])
    completion_mask = torch.tensor([[True] * c + [False] * (width_c - c) for c in completion_lengths])
    return Rollouts(prompt_ids=torch.ones(n, width_p, dtype=torch.long), prompt_mask=prompt_mask,
                    completion_ids=torch.ones(n, width_c, dtype=torch.long), completion_mask=completion_mask,
                    sampling_logprobs=torch.zeros(n, width_c), truncated=torch.zeros(n, dtype=torch.bool),
                    texts=[""] * n, group_size=1)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(rows=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=30),
       budget=st.integers(1, 600))
def test_micro_batches_cover_every_row_once_within_the_token_budget(rows, budget):
    batch = synthetic_batch([p for p, _ in rows], [c for _, c in rows])
    plans = plan_micro_batches(batch, budget)
    assert sorted(i for plan in plans for i in plan.tolist()) == list(range(len(rows)))
    for plan in plans:
        ids, _, _ = batch.select(plan).sequences()  # what the forward pass receives
        assert ids.numel() <= budget or len(plan) == 1, (ids.shape, budget)


def update_inputs(setup, *overrides, rewards: list[float] | None = None):
    """A fresh copy of the model, its optimizer and the arguments of one update on the batch (RAFT on
    all rows as positives unless `overrides` and `rewards` say otherwise)."""
    model, _, _, rollouts = setup
    config = load_config(None, ["algo.name=raft", *overrides])
    policy = build_tiny_qwen2(build_tokenizer(), seed=0)
    policy.load_state_dict(model.state_dict())
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    reward = torch.tensor(rewards) if rewards is not None else torch.ones(rollouts.num_rollouts)
    positive = reward > 0
    algorithm = get_algorithm(config.algo.name)
    credit = algorithm.credit(reward, rollouts.mean_logprobs, rollouts.lengths.float(), G, config.algo)
    args = (Models(policy=policy), optimizer, algorithm, config.algo, rollouts, credit, positive)
    kwargs = dict(max_length=6, grad_clip=1.0)
    return policy, optimizer, args, kwargs


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_micro_batches_feed_the_model_within_budget_and_add_up(setup, monkeypatch):
    seen: list[tuple[int, int]] = []
    forward = popo.models.completion_outputs

    def recording(model, ids, *args, **kwargs):
        seen.append(tuple(ids.shape))
        return forward(model, ids, *args, **kwargs)

    monkeypatch.setattr(popo.models, "completion_outputs", recording)
    whole, _, args, kwargs = update_inputs(setup)
    metrics = update_policy(*args, token_budget=10_000, **kwargs)
    assert metrics["micro_batches"] == 1.0
    seen.clear()
    split, _, args, kwargs = update_inputs(setup)
    metrics = update_policy(*args, token_budget=40, **kwargs)
    assert metrics["micro_batches"] == len(seen) > 2
    assert all(rows * width <= 40 or rows == 1 for rows, width in seen)
    # gradient accumulation over micro-batches gives the same gradient (up to float summation order; the
    # parameters themselves are not compared: Adam turns rounding noise in near-zero gradients into +-lr)
    assert torch.allclose(flat_grad(whole), flat_grad(split), atol=1e-6)


class OOMOnCall:
    """Stands in for the model forward: raises CUDA out-of-memory on the chosen calls."""

    def __init__(self, fail: set[int] | None = None, when=None):
        self.calls, self.fail, self.when = 0, fail or set(), when
        self.forward = popo.models.completion_outputs

    def __call__(self, model, ids, *args, **kwargs):
        self.calls += 1
        if self.calls in self.fail or (self.when is not None and self.when()):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.forward(model, ids, *args, **kwargs)


def test_oom_in_a_micro_batch_is_retried_once_with_half_the_budget(setup, monkeypatch):
    expected, _, args, kwargs = update_inputs(setup)
    update_policy(*args, token_budget=20, **kwargs)  # what the retry should compute
    monkeypatch.setattr(popo.models, "completion_outputs", OOMOnCall(fail={2}))  # the second micro-batch
    policy, _, args, kwargs = update_inputs(setup)
    with pytest.warns(RuntimeWarning, match="retrying the update with optim.micro_batch_tokens=20 "
                                            r"\(half of 40\)"):
        metrics = update_policy(*args, token_budget=40, **kwargs)
    assert metrics["oom_retries"] == 1.0 and metrics["skipped"] == 0.0
    assert torch.equal(flat(policy), flat(expected))  # the half-budget update, nothing of the failed try


def test_oom_twice_fails_clearly_and_leaves_no_gradients(setup, monkeypatch):
    monkeypatch.setattr(popo.models, "completion_outputs", OOMOnCall(when=lambda: True))
    policy, optimizer, args, kwargs = update_inputs(setup)
    before = flat(policy).clone()
    with pytest.warns(RuntimeWarning), pytest.raises(torch.OutOfMemoryError) as err:
        update_policy(*args, token_budget=64, **kwargs)
    assert str(err.value).startswith("CUDA out of memory in the update with optim.micro_batch_tokens=64 and "
                                     "again at 32; lower optim.micro_batch_tokens")
    assert isinstance(err.value.__cause__, torch.OutOfMemoryError)
    assert all(p.grad is None for p in policy.parameters()) and not optimizer.state
    assert torch.equal(flat(policy), before)


def test_oom_after_an_optimizer_step_is_not_retried(setup, monkeypatch):
    """GRPO with two updates per batch: redoing the call after the first step would step twice."""
    policy, optimizer, args, kwargs = update_inputs(setup, "algo.name=grpo", "algo.updates_per_batch=2",
                                                    rewards=[1.0, 0.0] * (len(PROMPTS) * G // 2))
    monkeypatch.setattr(popo.models, "completion_outputs", OOMOnCall(when=lambda: bool(optimizer.state)))
    with pytest.raises(torch.OutOfMemoryError, match=r"micro_batch_tokens=64 \(not retried\)"):
        update_policy(*args, token_budget=64, **kwargs)
