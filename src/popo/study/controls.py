"""The supervised controls of a study, at matched optimizer steps: `sft-more` and `sft-solved`.

- `sft-more`: each step takes the prompts the RL methods see at that step (same seeded `PromptStream`)
  and trains on one reference solution per prompt (addition: the exact scratchpad; countdown: one solver
  solution drawn at random). It samples nothing, and it sees the solutions of prompts RL never solves: an
  answer-key upper bound on what imitation can do, not an equal-compute control.
- `sft-solved`: each step samples G rollouts per prompt exactly as the RL methods do (the same rollout
  budget) and trains on one reference solution for only the prompts where at least one rollout was
  correct, the prompts RL can learn from. Against RAFT (NLL on the model's own positives of the same
  prompts) it isolates what the answer key adds.

Both use the RL runs' optimizer, learning rate, schedule, gradient clipping, evaluation and checkpoints;
only the step differs.
"""

from __future__ import annotations

import time
import warnings

import torch

from popo.build import build_run
from popo.data.prepare import is_testbed, testbed_task
from popo.errors import SetupError
from popo.step_log import StepTimer
from popo.testbed.sft import encode_pairs
from popo.testbed.addition import AdditionTask
from popo.trainer import Trainer

SFT_MORE, SFT_SOLVED = "sft-more", "sft-solved"


def reference_completion(problem: str) -> str:
    """The addition testbed's exact scratchpad for a problem ``a+b=``."""
    found = AdditionTask(digits=1, test_size=1).reference_completion(problem)
    if found is None:
        raise SetupError(f"sft-more needs testbed problems of the form a+b=, got {problem!r}")
    return found


class SftMoreTrainer(Trainer):
    """A `Trainer` whose step is a supervised step on reference solutions (everything else — data,
    optimizer, schedule, evaluation, checkpoints, metrics — is the RL trainer's)."""

    @classmethod
    def from_config(cls, config, **kwargs) -> "SftMoreTrainer":
        """The control's trainer for `config` (`kwargs` as for `popo.build.build_run`)."""
        if not is_testbed(config.data.source):
            raise SetupError("the supervised controls need data.source=testbed (they train on the testbed's "
                             "solutions)")
        trainer = cls(build_run(config, **kwargs))
        trainer.task = testbed_task(config)
        return trainer

    def reference(self, index: int, step: int) -> tuple[str, str]:
        """(prompt, one reference solution) of training prompt `index`, drawn from the run's seed and step."""
        prompt, problem = self.train_set.prompts[index], self.train_set.examples[index].problem
        found = self.task.reference_completion(problem, seed=self.config.train.seed * 1_000_003 + step)
        if found is None:
            raise SetupError(f"no reference solution for the training prompt {problem!r}")
        return prompt, found

    def train_step(self, step: int) -> dict[str, float]:
        start = time.perf_counter()
        indices = self.stream.batch(step)
        return self.supervised_step(step, [self.reference(i, step) for i in indices], start, {"rollouts": 0})

    def supervised_step(self, step: int, pairs: list[tuple[str, str]], start: float, extra: dict) -> dict[str, float]:
        """One optimizer step of mean NLL over the completion tokens of `pairs` (none: the schedule still
        advances, nothing is trained)."""
        c = self.config
        record = {"step": step + 1, **extra, "lr": self.scheduler.get_last_lr()[0], "skipped": 0.0}
        if not pairs:
            with warnings.catch_warnings():  # the schedule still advances one step, by design
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                self.scheduler.step()
            return {**record, "trained_rollouts": 0, "trained_tokens": 0, "skipped": 1.0,
                    "time/train": time.perf_counter() - start}
        input_ids, attention_mask, labels = encode_pairs(self.tokenizer, pairs)  # [B, L] each
        policy = self.models.policy
        policy.train()
        device = self.models.device
        loss = policy(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                      labels=labels.to(device)).loss  # mean NLL over completion tokens
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = self.models.trainable_parameters()
        norm = torch.nn.utils.clip_grad_norm_(params, c.optim.grad_clip) if c.optim.grad_clip else None
        self.optimizer.step()
        self.scheduler.step()
        return {**record, "trained_rollouts": len(pairs), "trained_tokens": int((labels != -100).sum()),
                "sft_loss": loss.item(), "grad_norm": float(norm) if norm is not None else 0.0,
                "time/train": time.perf_counter() - start}


class SftSolvedTrainer(SftMoreTrainer):
    """`sft-solved`: sample as RL does, then a supervised step on reference solutions of the solved prompts."""

    def train_step(self, step: int) -> dict[str, float]:
        G, timer = self.config.rollout.group_size, StepTimer()
        positions = self.dist.shard(self.config.rollout.prompts_per_step)
        indices = [batch[p] for batch in [self.stream.batch(step)] for p in positions]
        sampled = self.sample(indices, positions, step, timer)
        start = time.perf_counter()  # the supervised part: sampling is in time/generate and time/verify
        solved = (sampled.rewards > self.config.algo.reward_threshold).view(-1, G).any(1).tolist()
        pairs = [self.reference(i, step) for i, ok in zip(indices, solved) if ok]
        extra = {"rollouts": sampled.rewards.numel(), "reward_mean": float(sampled.rewards.mean()),
                 "pass_rate": float((sampled.rewards > self.config.algo.reward_threshold).float().mean()),
                 "prompts_with_positive": sum(solved) / max(1, len(solved)), **timer.seconds}
        return self.supervised_step(step, pairs, start, extra)


CONTROLS = {SFT_MORE: SftMoreTrainer, SFT_SOLVED: SftSolvedTrainer}
"""The control arms `popo compare --methods` accepts beside the presets, by name."""
