"""The `sft-more` control: continued supervised training instead of RL, at matched optimizer steps.

Each step takes the same prompts the RL methods see at that step (same seeded `PromptStream`) and
trains on one reference solution per prompt (the testbed's exact scratchpad), with the same optimizer,
learning rate, schedule, gradient clipping and evaluation as the RL runs. So it makes `train.steps`
updates on `train.steps x rollout.prompts_per_step` rows, about as many rows as POPO trains on (POPO
trains on its positive rollouts only: one to three per prompt on average on the testbed), and samples
nothing. It answers the question "would more imitation have done as well as RL?".
"""

from __future__ import annotations

import time

import torch

from popo.build import build_run
from popo.errors import SetupError
from popo.testbed.sft import encode_pairs
from popo.testbed.task import scratchpad
from popo.trainer import Trainer


def reference_completion(problem: str) -> str:
    """The testbed's exact scratchpad for a problem ``a+b=``."""
    left, _, right = problem.strip().removesuffix("=").partition("+")
    if not (left.isdigit() and right.isdigit()):
        raise SetupError(f"sft-more needs testbed problems of the form a+b=, got {problem!r}")
    return scratchpad(int(left), int(right))


class SftMoreTrainer(Trainer):
    """A `Trainer` whose step is a supervised step on reference solutions (everything else — data,
    optimizer, schedule, evaluation, checkpoints, metrics — is the RL trainer's)."""

    @classmethod
    def from_config(cls, config, **kwargs) -> "SftMoreTrainer":
        """The control's trainer for `config` (`kwargs` as for `popo.build.build_run`)."""
        if config.data.source != "testbed":
            raise SetupError("sft-more needs data.source=testbed (it trains on the testbed's exact solutions)")
        return cls(build_run(config, **kwargs))

    def train_step(self, step: int) -> dict[str, float]:
        c = self.config
        start = time.perf_counter()
        indices = self.stream.batch(step)
        pairs = [(self.train_set.prompts[i], reference_completion(self.train_set.examples[i].problem))
                 for i in indices]
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
        tokens = int((labels != -100).sum())
        return {"step": step + 1, "rollouts": 0, "trained_rollouts": len(pairs), "trained_tokens": tokens,
                "sft_loss": loss.item(), "grad_norm": float(norm) if norm is not None else 0.0,
                "lr": self.scheduler.get_last_lr()[0], "skipped": 0.0,
                "time/train": time.perf_counter() - start}
