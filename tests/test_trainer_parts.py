"""The trainer runs on parts handed to it: a real step with a fake engine and a fake verifier (no testbed
cache, no warm-up, well under a second), checking what the step must do and must not do."""

from __future__ import annotations

import tempfile

import torch

from popo.algorithms import get_algorithm
from popo.config import load_config
from popo.data.example import Example
from popo.data.stream import PromptStream
from popo.models import Models
from popo.rewards.base import VerifierBase
from popo.rollout.base import RolloutEngine, Rollouts, SamplingParams
from popo.rollout.vllm import build_rollouts
from popo.testbed.model import TinyModelSpec, build_tiny_qwen2
from popo.testbed.tokenizer import build_tokenizer
from popo.trainer import PromptSet, Run, Trainer

# completion j of every prompt; the verifier accepts the gold answer "42"
COMPLETIONS = ("42", "7", "42", "13")


class FakeEngine:
    """Returns the same fixed completions for every prompt, and records what it was asked."""

    owns_weights = True  # so the test sees the weight pushes

    def __init__(self, tokenizer):
        self.tokenizer, self.calls, self.pushes = tokenizer, [], 0

    def generate(self, prompts, n, sampling: SamplingParams, *, seed=None, prompt_seeds=None) -> Rollouts:
        self.calls.append({"prompts": list(prompts), "n": n, "prompt_seeds": list(prompt_seeds or [])})
        tok = self.tokenizer
        encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        samples = [[(tok(COMPLETIONS[j % len(COMPLETIONS)], add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
                     [-0.5 - 0.1 * j] * 3) for j in range(n)] for _ in prompts]
        return build_rollouts(encoded, samples, n, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id,
                              max_new_tokens=sampling.max_new_tokens, decode=lambda ids: tok.decode(ids, skip_special_tokens=True))

    def push_weights(self, policy) -> None:
        self.pushes += 1


class FakeVerifier(VerifierBase):
    def __init__(self):
        self.scored, self.closed = 0, False

    def score(self, completions, answers):
        self.scored += len(completions)
        return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answers)]

    def close(self):
        self.closed = True


def make_trainer(*overrides: str, answer: str = "42") -> Trainer:
    scratch = tempfile.mkdtemp(prefix="popo-parts-")  # a run that saves writes here, never into ./runs
    config = load_config(None, [f"train.out_dir={scratch}", "rollout.prompts_per_step=2", "rollout.group_size=4",
                                "rollout.max_new_tokens=4",
                                "train.steps=2", "train.progress=false", "optim.lr=1e-2", "train.diag_every=1",
                                *overrides])
    tokenizer = build_tokenizer()
    policy = build_tiny_qwen2(tokenizer, TinyModelSpec(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                       num_key_value_heads=1, intermediate_size=32))
    algorithm = get_algorithm(config.algo.name)
    models = Models.build(policy, with_target=algorithm.needs_target(config.algo),
                          with_reference=algorithm.needs_reference(config.algo), predictor_width=0,
                          predictor_layers=2, device=torch.device("cpu"))
    optimizer = torch.optim.AdamW(models.trainable_parameters(), lr=config.optim.lr)
    examples = [Example(f"{i}+{i}=", answer, id=str(i)) for i in range(6)]
    train = PromptSet(examples, [ex.problem for ex in examples])
    return Trainer(Run(config=config, algorithm=algorithm, models=models, optimizer=optimizer,
                       scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
                       engine=FakeEngine(tokenizer), verifier=FakeVerifier(), train_set=train,
                       eval_set=PromptSet(examples[:2], train.prompts[:2]), stream=PromptStream(6, 2, 0),
                       tokenizer=tokenizer, log=lambda message: None))


def flat(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def test_the_fakes_satisfy_the_engine_protocol():
    engine: RolloutEngine = FakeEngine(build_tokenizer())  # the annotation is the contract the trainer uses
    assert {"generate", "push_weights", "owns_weights"} <= set(dir(engine))
    assert all(hasattr(engine, name) for name in RolloutEngine.__annotations__)


def test_popo_step_trains_on_positives_only_then_moves_the_target_and_pushes_weights():
    trainer = make_trainer("algo.name=popo", "algo.tau=0.5")
    policy, target = flat(trainer.models.policy), flat(trainer.models.target)
    record = trainer.train_step(0)
    engine = trainer.engine
    # sample: the stream's prompts, G each, every prompt from its own seed
    assert engine.calls[0]["prompts"] == [trainer.train_set.prompts[i] for i in trainer.stream.batch(0)]
    assert engine.calls[0]["n"] == 4 and len(set(engine.calls[0]["prompt_seeds"])) == 2
    # verify: rollouts 0 and 2 of each prompt are right
    assert trainer.verifier.scored == 8 and record["positive_rollouts"] == 4 and record["reward_mean"] == 0.5
    # credit + update: the four positives alone were forwarded, and the policy moved
    assert record["trained_rollouts"] == record["forwarded_rollouts"] == 4 and record["skipped"] == 0.0
    assert not torch.equal(policy, flat(trainer.models.policy))
    # EMA: target <- 0.5 target + 0.5 policy
    assert record["tau"] == 0.5
    assert torch.allclose(flat(trainer.models.target), 0.5 * target + 0.5 * flat(trainer.models.policy), atol=1e-7)
    # log: the engine got the new weights once, the record has the batch statistics and diagnostics
    assert engine.pushes == 1
    assert {"weight_entropy", "kl_online_target", "implicit_neg_logprob_delta", "time/train"} <= record.keys()
    assert record["weight_entropy"] > 0  # two distinct positives per prompt share the weight


def test_a_step_without_positives_changes_nothing_and_pushes_nothing():
    trainer = make_trainer("algo.name=popo", answer="no such answer")
    policy, target = flat(trainer.models.policy), flat(trainer.models.target)
    record = trainer.train_step(0)
    assert record["positive_rollouts"] == 0 and record["skipped_no_positive"] == 1.0
    assert torch.equal(policy, flat(trainer.models.policy)) and torch.equal(target, flat(trainer.models.target))
    assert trainer.engine.pushes == 0 and "tau" not in record


def test_grpo_step_forwards_only_rows_with_a_nonzero_advantage():
    trainer = make_trainer("algo.name=grpo")
    assert trainer.models.target is None and trainer.models.reference is None
    record = trainer.train_step(0)
    assert record["trained_rollouts"] == 8  # every rollout counts in the normalisers
    assert record["forwarded_rollouts"] == 8  # mixed groups: every advantage is +-1, none is inert
    assert record["skipped"] == 0.0 and trainer.engine.pushes == 1


def test_a_run_evaluates_through_the_shared_path_and_closes_the_verifier(tmp_path):
    trainer = make_trainer("algo.name=raft", "train.eval_every=1", "train.eval_samples=2", "train.save_every=0",
                           f"train.out_dir={tmp_path}")
    trainer.save = lambda: None  # no files: the fake run has no writer and nothing to checkpoint
    history = trainer.run()
    assert [r["step"] for r in history] == [0, 1, 2]
    # the fake's greedy completion is "42" (right), its two samples "42" and "7"
    for record in (history[0], history[-1]):
        assert (record["eval/greedy_acc"], record["eval/avg@2"], record["eval/pass@2"]) == (1.0, 0.5, 1.0)
    assert trainer.verifier.closed
