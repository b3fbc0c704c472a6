"""The RLVR training loop: sample -> verify -> credit -> update -> EMA -> log.

The trainer receives its parts already assembled (`Run`; `popo.build.build_run` makes them from a
config, tests hand in fakes) and never looks inside them: where the models live is `popo.models`'
business, what the algorithm does is the loss table's (`popo.algorithms`). For POPO the negatives are
dropped before the update, so they cost no forward or backward pass; a step with no positive skips the
update entirely.
"""

from __future__ import annotations

import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from popo.algorithms import Algorithm
from popo.checkpoint import latest_checkpoint, save_checkpoint
from popo.config import Config, to_dict
from popo.data.example import Example
from popo.data.stream import PromptStream
from popo.diagnostics import step_diagnostics
from popo.distributed import Dist
from popo.ema import ema_step_
from popo.errors import TrainingHalted
from popo.evaluate import EvalProtocol, evaluate_split_per_problem, run_protocol
from popo.models import Models
from popo.rewards.base import Verifier
from popo.rewards.composite import reward_metrics
from popo.rewards.scoring import score_rollouts
from popo.rollout.base import RolloutEngine, Rollouts, SamplingParams
from popo.sampler import GroupSampler, SampledBatch
from popo.seeds import step_noise_seeds
from popo.step_log import (OUTCOMES_KEY, SAMPLE_OUTCOMES_KEY, Progress, StepBatch, StepTimer, run_summary,
                           step_record)
from popo.update import update_policy


@dataclass
class PromptSet:
    """Examples and their rendered prompts, index for index."""

    examples: list[Example]
    prompts: list[str]

    def __len__(self) -> int:
        return len(self.examples)


@dataclass
class Run:
    """Everything one run is made of. `start_step`, `bad_steps` and `rollouts_total` (rollouts sampled so far) are
    where a resumed run continues."""

    config: Config
    algorithm: Algorithm
    models: Models
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    engine: RolloutEngine
    verifier: Verifier
    train_set: PromptSet
    eval_set: PromptSet
    stream: PromptStream
    tokenizer: Any
    dist: Dist = field(default_factory=Dist)
    writer: Any = None  # popo.tracking.MetricsWriter on the rank that logs, else None
    start_step: int = 0
    bad_steps: int = 0
    rollouts_total: int = 0
    log: Callable[[str], None] = print
    lock: Any = None  # popo.run_dir.RunLock on the rank that writes the run folder


class Trainer(Run):
    """Runs the loop over the parts of one run: a trainer is its `Run` (built from one, `trainer.engine` is the
    run's engine) plus the loop's own state; `step`, `bad_steps` and `rollouts_total` move as it trains."""

    def __init__(self, run: Run):
        if not isinstance(run.verifier, Verifier):
            raise TypeError(f"{type(run.verifier).__name__} is not a popo.rewards.Verifier (score, score_rows, "
                            "take_metrics, close): subclass popo.rewards.VerifierBase, which defines all but score")
        super().__init__(**{f.name: getattr(run, f.name) for f in fields(Run)})
        self.step, self.stop_requested = run.start_step, False
        self.stop_signal: int | None = None  # the signal that asked the run to stop (SIGINT: Ctrl-C)
        self.stopped_early = False  # the last `run` ended on a stop request, before train.steps
        self.out_dir = Path(self.config.train.out_dir)
        r = self.config.rollout
        self.sampling = SamplingParams(r.max_new_tokens, r.temperature, r.top_p)
        self.sampler = GroupSampler(
            seed=self.config.train.seed, group_size=r.group_size, prompts_per_step=r.prompts_per_step,
            num_prompts=len(self.train_set), dynamic=r.dynamic_sampling, max_rounds=r.max_sampling_rounds,
            has_signal=lambda rewards: self.algorithm.group_has_signal(rewards, self.config.algo),
            pad_id=self.tokenizer.pad_token_id, dist=self.dist)

    # ---------------------------------------------------------------- one step of the algorithm
    def train_step(self, step: int) -> dict[str, float]:
        c, timer = self.config, StepTimer()
        diagnose = c.train.diag_every > 0 and (step + 1) % c.train.diag_every == 0
        indices, positions = self._rank_prompts(step)
        sampled = self.sample(indices, positions, step, timer)  # G verified rollouts per prompt, each from its own seed
        batch = self.assign_credit(sampled, positions, step)  # weights (POPO) or advantages (GRPO), training rows
        before = self._mean_logprob(batch.rollouts.select(~batch.positive)) if diagnose else None  # negatives
        with self.models.placed_for_update():
            probe = self._probe(batch) if diagnose else {}  # before the update
            with timer("train"):  # update on the training rows only
                metrics = self.update(batch, step)
            updated = metrics["skipped"] == 0.0
            with timer("ema"):
                if updated and self.models.target is not None:
                    metrics["tau"] = self.ema_step(step)
            if diagnose:
                metrics.update(probe | self._diagnostics(batch, before))
        if updated and self.engine.owns_weights:  # an engine with its own copy of the weights
            with timer("sync"), self.models.gathered():
                self.engine.push_weights(self.models.policy)
        return step_record(step, batch, metrics | sampled.metrics, lr=self.scheduler.get_last_lr()[0],
                           seconds=timer.seconds, dist=self.dist)

    def _rank_prompts(self, step: int) -> tuple[list[int], range]:
        """This rank's share of step `step`'s prompts: their dataset indices and their positions in the batch."""
        positions = self.dist.shard(self.config.rollout.prompts_per_step)
        batch = self.stream.batch(step)
        return [batch[p] for p in positions], positions

    def assign_credit(self, sampled: SampledBatch, positions: range, step: int) -> StepBatch:
        """The sampled rows with their credit (the loss table's), the rows the update trains on (POPO drops the
        negatives) and each row's noise seed."""
        c, G = self.config, self.config.rollout.group_size
        rollouts, rewards = sampled.rollouts, sampled.rewards
        positive = rewards > c.algo.reward_threshold  # [N]
        credit = self.algorithm.credit(rewards, rollouts.mean_logprobs, rollouts.lengths.float(), G, c.algo)  # [N]
        rows = torch.ones_like(positive) if self.algorithm.needs_negatives(c.algo) else positive
        return StepBatch(rollouts, rewards, positive, credit, rows,
                         noise_seeds=step_noise_seeds(c.train.seed, step, positions, G, device=self.models.device),
                         group_size=G, credit_is_weight=self.algorithm.credit_is_weight)

    def sample(self, indices: list[int], positions: range, step: int, timer: StepTimer) -> SampledBatch:
        """G verified rollouts for each of this rank's prompts (`positions` in the global batch), with dynamic
        sampling's refills when it is on (`popo.sampler.GroupSampler`), and the reward's counts."""
        self.verifier.take_metrics()  # forget the counts of evaluations
        batch = self.sampler.sample(indices, positions, step, lambda picks, seeds: self._sample_round(picks, seeds,
                                                                                                      timer))
        return SampledBatch(batch.rollouts, batch.rewards, {**self._take_reward_metrics(), **batch.metrics})

    def _sample_round(self, indices: list[int], seeds: list[int],
                      timer: StepTimer) -> tuple[Rollouts | None, torch.Tensor]:
        """(rollouts, rewards) of G samples for each prompt in `indices`; (None, no rewards) for no prompt, after
        joining the collective that gathers sharded weights."""
        G = self.config.rollout.group_size
        with timer("generate"), self.models.gathered():  # sharded: weights gathered once, not per decoded token
            rollouts = (self.engine.generate([self.train_set.prompts[i] for i in indices], G, self.sampling,
                                             prompt_seeds=seeds) if indices else None)
        if rollouts is None:
            return None, torch.zeros(0, device=self.models.device)
        with timer("verify"):
            return rollouts, self.verify(rollouts, indices)

    def verify(self, rollouts: Rollouts, indices: list[int]) -> torch.Tensor:
        G = self.config.rollout.group_size
        examples = [self.train_set.examples[i] for i in indices for _ in range(G)]
        prompts = [self.train_set.prompts[i] for i in indices for _ in range(G)]
        return score_rollouts(self.verifier, rollouts.texts, [ex.answer for ex in examples], rollouts.truncated,
                              zero_if_truncated=self.config.algo.zero_if_truncated, examples=examples,
                              prompts=prompts).to(self.models.device)

    def _take_reward_metrics(self) -> dict[str, float]:
        """The verifier's counts since the last call, summed over ranks (nothing from a verifier that keeps
        none: every rank runs the same verifier, so all ranks skip the sum together)."""
        counts = self.verifier.take_metrics()
        if not counts:
            return {}
        keys = sorted(counts)
        return reward_metrics(dict(zip(keys, self.dist.sum_values([counts[k] for k in keys]))))

    def update(self, batch: StepBatch, step: int) -> dict:
        """The optimizer step(s) on the batch's training rows; with no row on any rank, only the schedule moves."""
        c, rows = self.config, batch.rows
        trained = batch.rollouts.select(rows)
        if not self.dist.any(trained.num_rollouts > 0):  # nothing to learn from: no forward, backward or step
            with warnings.catch_warnings():  # the schedule still advances one step, by design
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                self.scheduler.step()
            return {"trained_rollouts": 0, "trained_tokens": 0, "skipped_no_positive": 1.0, "skipped": 1.0}
        metrics = update_policy(
            self.models, self.optimizer, self.algorithm, c.algo, trained, batch.credit[rows],
            batch.positive[rows], max_length=c.rollout.max_new_tokens, token_budget=c.optim.micro_batch_tokens,
            grad_clip=c.optim.grad_clip, dist=self.dist, row_seeds=batch.noise_seeds[rows])
        self.scheduler.step()
        self.bad_steps = self.bad_steps + 1 if metrics["skipped"] else 0
        if metrics["skipped"]:
            self.log(f"step {step + 1}: non-finite loss or gradient, update skipped ({self.bad_steps} in a row)")
        return {**metrics, "skipped_no_positive": 0.0}

    def ema_step(self, step: int) -> float:
        return ema_step_(self.models.ema_pairs(), step=step, total_steps=self.config.train.steps, cfg=self.config.algo)

    def _probe(self, batch: StepBatch) -> dict[str, float]:
        """Whether the method's components can act on this step (`popo.diagnostics`): diversity of the
        positives, and each loss term's share of the gradient, measured without changing the run."""
        c = self.config
        return step_diagnostics(self.models, self.algorithm, c.algo, batch.rollouts, batch.credit, batch.positive,
                                batch.rows, group_size=batch.group_size, max_length=c.rollout.max_new_tokens,
                                token_budget=c.optim.micro_batch_tokens, dist=self.dist, row_seeds=batch.noise_seeds)

    def _diagnostics(self, batch: StepBatch, before: float) -> dict[str, float]:
        """How far the negatives' log-prob moved from `before` without being trained on (the implicit negative
        gradient) and, with a target, KL(online || target) on the positives."""
        positives, negatives = batch.rollouts.select(batch.positive), batch.rollouts.select(~batch.positive)
        out = {"implicit_neg_logprob_delta": self._mean_logprob(negatives) - before}
        if self.models.target is not None:
            kl = self.models.target_kl(positives, self.config.optim.micro_batch_tokens, self.dist)
            n = float(positives.completion_mask.sum())
            kl_sum, count = self.dist.sum_values([kl * n, n])
            out["kl_online_target"] = kl_sum / max(count, 1.0)
        return out

    def _mean_logprob(self, batch: Rollouts) -> float:
        """Mean per-token log-prob of `batch` under the policy, over all ranks' rows."""
        # also with no rows: a sharded policy's forwards are collectives the other ranks wait on
        lp = self.models.policy_logprobs(batch, self.config.optim.micro_batch_tokens, self.dist)
        total, count = float(torch.where(batch.completion_mask, lp, 0.0).sum()), float(batch.completion_mask.sum())
        total, count = self.dist.sum_values([total, count])
        return total / count if count else 0.0

    # ---------------------------------------------------------------- the run
    def evaluation_protocol(self) -> EvalProtocol:
        return run_protocol(self.config)

    def evaluate(self) -> dict[str, float]:
        """Held-out evaluation (`popo.evaluate`, the path `popo eval` uses), split over the ranks."""
        return self._evaluate_per_problem()[0]

    def _evaluate_per_problem(self) -> tuple[dict[str, float], dict[str, list]]:
        """`evaluate()` and, for the metrics log only, each problem's greedy reward under `OUTCOMES_KEY` and
        number of correct samples under `SAMPLE_OUTCOMES_KEY` (kept out of the returned history and the
        trackers: the end-of-run summary's paired test and the studies' per-problem tables read them)."""
        if not len(self.eval_set):
            return {}, {}
        budget = self.config.optim.micro_batch_tokens  # the start is the reference `Models.build` kept for it
        start_logprobs = ((lambda batch: self.models.reference_logprobs(batch, budget))
                          if self.config.train.eval_start_kl else None)
        with self.models.gathered():  # weights gathered once for the generation
            result, greedy, correct = evaluate_split_per_problem(
                self.engine, self.eval_set.prompts, self.eval_set.examples, self.verifier, self.evaluation_protocol(),
                self.dist, start_logprobs=start_logprobs)
        outcomes = {OUTCOMES_KEY: [_plain_number(v) for v in greedy]}
        if correct:
            outcomes[SAMPLE_OUTCOMES_KEY] = [_plain_number(v) for v in correct]
        return {f"eval/{k}": v for k, v in result.items()}, outcomes

    def run(self) -> list[dict]:
        c, history, started, first_step = self.config, [], time.perf_counter(), self.step
        self.stopped_early = False
        previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        progress = Progress(c.train.steps, self.step, enabled=c.train.progress and self.dist.is_main, log=self.log)
        try:
            if self.step == 0 and (c.train.eval_every > 0 or 0 in c.train.eval_steps):
                scores, outcomes = self._evaluate_per_problem()
                record = {"step": 0, "rollouts": 0, **scores}
                self._write(record | outcomes)
                history.append(record)
            while self.step < c.train.steps and not self.dist.any(self.stop_requested):
                record = self.train_step(self.step)
                self.step += 1
                last, outcomes = self.step == c.train.steps, {}
                if (last or (c.train.eval_every and self.step % c.train.eval_every == 0)
                        or self.step in c.train.eval_steps):
                    scores, outcomes = self._evaluate_per_problem()
                    record.update(scores)
                # dynamic sampling samples more than B x G a step
                self.rollouts_total += record["rollouts"] + record.get("sampling/extra_rollouts", 0)
                record["rollouts_total"] = self.rollouts_total
                self._write(record | outcomes)
                history.append(record)
                progress.update(record)
                if self.bad_steps >= c.train.max_bad_steps:
                    raise TrainingHalted(f"stopping: {self.bad_steps} consecutive steps with a non-finite loss "
                                         f"or gradient (last good checkpoint kept in {self.out_dir})")
                if last or (c.train.save_every and self.step % c.train.save_every == 0):
                    self.save()
            if self.dist.any(self.stop_requested):
                self.stopped_early = self.step < c.train.steps
                self.log(f"stop requested: saving a final checkpoint at step {self.step}")
                self.save()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            progress.close()
            if self.writer is not None:
                self.writer.close()
            self.verifier.close()
            if self.lock is not None:
                self.lock.release()
        if self.dist.is_main:
            self.log(self.summary(history, time.perf_counter() - started, first_step))
        return history

    def summary(self, history: list[dict], wall_s: float, first_step: int = 0) -> str:
        """The end-of-run summary, over every record of the run (also those before a resume, at `first_step`)."""
        from popo.tracking import read_metrics

        path = self.out_dir / "metrics.jsonl"
        records = read_metrics(path) if self.writer is not None and path.is_file() else history
        return run_summary(records, wall_s=wall_s, run_dir=self.out_dir, checkpoint=latest_checkpoint(
            self.out_dir, log=lambda message: None), target_steps=self.config.train.steps,
            interrupted=self.stopped_early, first_step=first_step)

    def _request_stop(self, signum, frame) -> None:
        self.stop_requested, self.stop_signal = True, signum

    def _write(self, record: dict) -> None:
        if self.writer is not None:
            self.writer.write(record)

    def save(self) -> Path | None:
        """Rank 0 writes the checkpoint (full tensors: sharded models are gathered first, by every rank);
        the others wait for it."""
        snapshot = self.models.snapshot(self.optimizer, keep=self.dist.is_main)
        path = None
        if self.dist.is_main:
            path = save_checkpoint(
                self.out_dir, self.step, snapshot=snapshot, tokenizer=self.tokenizer, scheduler=self.scheduler,
                keep_last=self.config.train.keep_last,
                state={"bad_steps": self.bad_steps, "rollouts_total": self.rollouts_total,
                       "data_position": self.step * self.config.rollout.prompts_per_step,
                       "config": to_dict(self.config)})
        self.dist.barrier()
        return path


def _plain_number(value: float) -> float | int:
    """A reward as the log writes it: 0 and 1 (a right/wrong verifier's) as integers, others unchanged."""
    return int(value) if value in (0.0, 1.0) else value
