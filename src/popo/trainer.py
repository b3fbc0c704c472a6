"""The RLVR training loop: sample -> verify -> weights/advantages -> update -> EMA -> log.

Everything algorithm-specific comes from the loss table (`popo.algorithms`): which rows are trained,
which companion models exist, how credit is assigned and the loss. For POPO the negatives are dropped
before the training batch is built, so they cost no forward or backward pass; a step with no positive
skips the update entirely.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from popo.algorithms import get_algorithm
from popo.build import (PromptStream, SetupError, build_models, companions_on, fit_prompts, load_examples_for,
                        load_policy, make_engine, make_verifier, resolve_device, resolve_model_path, shard_models)
from popo.checkpoint import latest_checkpoint, load_training_state, save_checkpoint
from popo.config import Config, to_dict
from popo.distributed import Dist
from popo.ema import ema_tau, ema_update_
from popo.evaluate import evaluate_policy, score_rollouts
from popo import fsdp
from popo.lora import ema_tensors, load_policy_weights
from popo.rollout import Rollouts, SamplingParams
from popo.rollout.sampling import row_seed
from popo.tracking import MetricsWriter
from popo.update import mean_token_kl, sequence_logprobs, update_policy


class TrainingHalted(RuntimeError):
    """The run stopped itself (e.g. too many consecutive non-finite updates); its message says why."""


def lr_lambda(total_steps: int, warmup_ratio: float, schedule: str) -> Callable[[int], float]:
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + torch.cos(torch.tensor(torch.pi * progress)).item())
        return 1.0
    return factor


def weight_entropy(weights: torch.Tensor, positive: torch.Tensor, group_size: int) -> float:
    """Mean over prompts with a positive of the entropy (nats) of their positive weights."""
    w = torch.where(positive, weights, 0.0).view(-1, group_size)  # [B, G]
    ent = -(torch.where(w > 0, w * w.clamp(min=1e-30).log(), 0.0)).sum(1)  # [B]
    has = positive.view(-1, group_size).any(1)
    return float(ent[has].mean()) if has.any() else 0.0


class Trainer:
    """Owns the models, optimizer, engine, verifier and prompt stream of one run."""

    def __init__(self, config: Config, *, resume: bool = False, log: Callable[[str], None] = print):
        self.config, self.log = config, log
        c = config
        self.out_dir = Path(c.train.out_dir)
        self.algorithm = get_algorithm(c.algo.name)
        torch.manual_seed(c.train.seed)
        self.device = resolve_device(c.model.device)
        self.dist = Dist.from_environment(self.device.type)  # one process unless launched by accelerate
        if self.dist.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        try:  # FSDP when `accelerate launch` was given an FSDP config
            self.sharding = fsdp.plan_from_environment()
        except ValueError as err:
            raise SetupError(str(err)) from None
        if c.rollout.prompts_per_step % self.dist.world:
            raise SetupError(f"rollout.prompts_per_step={c.rollout.prompts_per_step} must be divisible by the "
                             f"number of processes ({self.dist.world})")
        self.train_examples = load_examples_for(c, c.data.source, split=c.data.split, log=log)
        self.eval_examples = (load_examples_for(c, c.data.eval_source, split="test", log=log)
                              if c.data.eval_source else [])
        if c.data.eval_size:
            self.eval_examples = self.eval_examples[: c.data.eval_size]
        with self.dist.main_first():  # rank 0 builds the testbed cache, the others then read it
            model_path = resolve_model_path(c, log)
        # sharding moves each unit's shard to the GPU: load the full weights in CPU memory first
        policy, self.tokenizer = load_policy(model_path, c, torch.device("cpu") if self.sharding else self.device)
        context = getattr(policy.config, "max_position_embeddings", None)  # prompts over the cap: error or skip
        self.train_examples, self.train_prompts = fit_prompts(
            c, self.train_examples, self.tokenizer, context=context, source=c.data.source, split=c.data.split, log=log)
        self.eval_examples, self.eval_prompts = fit_prompts(
            c, self.eval_examples, self.tokenizer, context=context, source=c.data.eval_source, split="test", log=log)
        self.models = build_models(policy, c, self.algorithm, self.device)
        if self.sharding:
            shard_models(self.models, c, self.sharding)
            local, full = fsdp.shard_fraction([self.models.policy, self.models.target, self.models.reference])
            log(f"fsdp: rank {self.dist.rank} holds {local / 1e6:.2f} M of {full / 1e6:.2f} M model parameters "
                f"({local / full:.1%}; policy, EMA target and reference)")
        self.params = [p for m in (policy, self.models.predictor) if m is not None for p in m.parameters()
                       if p.requires_grad]  # with LoRA: the adapters only
        replicated = (self.models.predictor,) if self.sharding else (policy, self.models.predictor, self.models.target)
        self.dist.broadcast_([p for m in replicated if m is not None for p in m.parameters()])  # identical start
        # (sharded models: every rank loaded the same files and keeps its own slice)
        o = c.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(c.train.steps, o.warmup_ratio, o.schedule))
        self.engine = make_engine(c, policy, self.tokenizer, model_path)
        self.verifier = make_verifier(c)
        self.stream = PromptStream(len(self.train_examples), c.rollout.prompts_per_step, c.train.seed)
        self.sampling = SamplingParams(c.rollout.max_new_tokens, c.rollout.temperature, c.rollout.top_p)
        self.step, self.bad_steps, self.stop_requested = 0, 0, False
        if resume:
            self._resume()
        self.writer = None  # only rank 0 writes logs and checkpoints
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(c), sort_keys=False))
            self.writer = MetricsWriter(self.out_dir, resume_step=self.step if resume else None,
                                        tensorboard=c.train.tensorboard)

    # ---------------------------------------------------------------- one step of the algorithm
    def train_step(self, step: int) -> dict[str, float]:
        c, G = self.config, self.config.rollout.group_size
        timer = _Timer()
        indices = self.stream.batch(step)
        positions = self.dist.shard(len(indices))  # this rank's prompts; a prompt's G rollouts stay together
        local = [indices[p] for p in positions]
        with timer("generate"):  # sample G rollouts per prompt, each prompt from its own seed
            step_seed = _mix(c.train.seed, step, 1)
            with fsdp.gathered(self.models.policy, self.sharding):  # no collective per decoded token
                rollouts = self.engine.generate([self.train_prompts[i] for i in local], G, self.sampling,
                                                prompt_seeds=[row_seed(step_seed, p) for p in positions])
        with timer("verify"):  # verify
            answers = [self.train_examples[i].answer for i in local for _ in range(G)]
            rewards = score_rollouts(self.verifier, rollouts.texts, answers, rollouts.truncated,
                                     zero_if_truncated=c.algo.zero_if_truncated).to(self.device)
        positive = rewards > c.algo.reward_threshold  # [N]
        credit = self.algorithm.credit(rewards, rollouts.mean_logprobs, rollouts.lengths.float(), G,
                                       c.algo)  # weights (POPO) or advantages (GRPO), [N]
        rows = torch.ones_like(positive) if self.algorithm.needs_negatives(c.algo) else positive
        diagnose = c.train.diag_every > 0 and (step + 1) % c.train.diag_every == 0
        negatives = rollouts.select(~positive) if diagnose else None
        before = self._mean_logprob(negatives) if diagnose else None
        noise_seeds = torch.tensor([row_seed(_mix(c.train.seed, step, 4), p * G + j) for p in positions
                                    for j in range(G)], device=self.device)  # per-rollout target noise
        with companions_on(self.models, self.device, c.model.offload_companions):
            with timer("train"):  # update on the training rows only
                metrics = self._update(rollouts.select(rows), credit[rows], positive[rows], step,
                                       noise_seeds[rows])
            updated = metrics.get("skipped", 1.0) == 0.0
            with timer("ema"):  # EMA target
                if self.models.target is not None and updated:
                    tau = ema_tau(step, c.train.steps, c.algo.tau, c.algo.tau_schedule)
                    ema_update_(*ema_tensors(self.models.target, self.models.policy), tau)
                    metrics["tau"] = tau
            if diagnose:
                metrics.update(self._diagnostics(rollouts.select(positive), negatives, before))
        if updated and hasattr(self.engine, "push_weights"):  # an engine with its own copy of the weights
            with timer("sync"), fsdp.gathered(self.models.policy, self.sharding):
                self.engine.push_weights(self.models.policy)
        # step statistics over the whole batch (all ranks), as one process would compute them
        rewards, positive, credit = (self.dist.gather(t) for t in (rewards, positive, credit))
        lengths, truncated = self.dist.gather(rollouts.lengths), self.dist.gather(rollouts.truncated)
        groups = positive.view(-1, G)
        if self.dist.world > 1:  # a rank may have nothing to train on; it still joins every collective
            metrics["positive_rollouts_min_rank"] = int(positive.view(self.dist.world, -1).sum(1).min())
        return {
            "step": step + 1, "reward_mean": float(rewards.mean()), "pass_rate": float(positive.float().mean()),
            "prompts_with_positive": float(groups.any(1).float().mean()),
            "prompts_all_positive": float(groups.all(1).float().mean()),
            "rollouts": int(rewards.numel()), "positive_rollouts": int(positive.sum()),
            "generated_tokens": int(lengths.sum()), "truncated_frac": float(truncated.float().mean()),
            "lr": self.scheduler.get_last_lr()[0], **metrics,
            **({"weight_entropy": weight_entropy(credit, positive, G)}  # per prompt, over the whole batch
               if self.algorithm.credit_is_weight else {}),
            **timer.seconds,
        }

    def _update(self, batch: Rollouts, credit: torch.Tensor, positive: torch.Tensor, step: int,
                noise_seeds: torch.Tensor) -> dict:
        c = self.config
        if not self.dist.any(batch.num_rollouts > 0):  # nothing to learn from: no forward, backward or step
            with warnings.catch_warnings():  # the schedule still advances one step, by design
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                self.scheduler.step()
            return {"trained_rollouts": 0, "trained_tokens": 0, "skipped_no_positive": 1.0, "skipped": 1.0}
        generator = torch.Generator(device=self.device).manual_seed(_mix(c.train.seed, step, 2))
        metrics = update_policy(
            self.models, self.optimizer, self.algorithm, c.algo, batch, credit, positive,
            max_length=c.rollout.max_new_tokens, token_budget=c.optim.micro_batch_tokens,
            grad_clip=c.optim.grad_clip, generator=generator, params=self.params, dist=self.dist,
            row_seeds=noise_seeds)
        self.scheduler.step()
        self.bad_steps = self.bad_steps + 1 if metrics["skipped"] else 0
        if metrics["skipped"]:
            self.log(f"step {step + 1}: non-finite loss or gradient, update skipped "
                     f"({self.bad_steps} in a row)")
        return {**metrics, "skipped_no_positive": 0.0}

    def _diagnostics(self, positives: Rollouts, negatives: Rollouts, before: float) -> dict[str, float]:
        """How far the negatives' log-prob moved without being trained on (the implicit negative
        gradient) and, with a target, KL(online || target) on the positives."""
        out = {"implicit_neg_logprob_delta": self._mean_logprob(negatives) - before}
        if self.models.target is not None:
            kl = mean_token_kl(self.models.policy, self.models.target, positives,
                               self.config.optim.micro_batch_tokens, self.dist)
            n = float(positives.completion_mask.sum())
            kl_sum, count = self.dist.sum_values([kl * n, n])
            out["kl_online_target"] = kl_sum / max(count, 1.0)
        return out

    def _mean_logprob(self, batch: Rollouts) -> float:
        """Mean per-token log-prob of `batch` under the policy, over all ranks' rows."""
        # also with no rows: a sharded policy's forwards are collectives the other ranks wait on
        lp = sequence_logprobs(self.models.policy, batch, self.config.optim.micro_batch_tokens, self.dist)
        total, count = float(torch.where(batch.completion_mask, lp, 0.0).sum()), float(batch.completion_mask.sum())
        total, count = self.dist.sum_values([total, count])
        return total / count if count else 0.0

    # ---------------------------------------------------------------- the run
    def evaluate(self) -> dict[str, float]:
        """Held-out evaluation, the examples split over the ranks (each a contiguous slice, sampled with
        the seeds the one-process run would use) and the per-example means combined."""
        c = self.config
        if not self.eval_examples:
            return {}
        n, rank, world = len(self.eval_examples), self.dist.rank, self.dist.world
        lo, hi = rank * n // world, (rank + 1) * n // world
        part: dict[str, float] = {}
        with fsdp.gathered(self.models.policy, self.sharding):  # weights gathered once for the generation
            if hi > lo:
                part = evaluate_policy(self.engine, self.eval_prompts[lo:hi], self.eval_examples[lo:hi],
                                       self.verifier, k=c.train.eval_samples, max_new_tokens=c.rollout.max_new_tokens,
                                       temperature=c.rollout.temperature or 1.0, top_p=c.rollout.top_p,
                                       seed=_mix(c.train.seed, 0, 3), zero_if_truncated=c.algo.zero_if_truncated,
                                       first_index=lo)
        keys = self.dist.union_keys(list(part))
        sums = self.dist.sum_values([part.get(k, 0.0) * (hi - lo) for k in keys])
        return {f"eval/{k}": total / n for k, total in zip(keys, sums)}

    def run(self) -> list[dict]:
        c, history = self.config, []
        previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        bar = _progress(c.train.steps, self.step, c.train.progress and self.dist.is_main)
        try:
            if self.step == 0 and c.train.eval_every > 0:
                record = {"step": 0, "rollouts": 0, **self.evaluate()}
                self._write(record)
                history.append(record)
            while self.step < c.train.steps and not self.dist.any(self.stop_requested):
                record = self.train_step(self.step)
                self.step += 1
                last = self.step == c.train.steps
                if last or (c.train.eval_every and self.step % c.train.eval_every == 0):
                    record.update(self.evaluate())
                record["rollouts_total"] = self.step * c.rollout.prompts_per_step * c.rollout.group_size
                self._write(record)
                history.append(record)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(reward=f"{record['reward_mean']:.3f}", pass_rate=f"{record['pass_rate']:.3f}")
                if self.bad_steps >= c.train.max_bad_steps:
                    raise TrainingHalted(f"stopping: {self.bad_steps} consecutive steps with a non-finite loss "
                                       f"or gradient (last good checkpoint kept in {self.out_dir})")
                if last or (c.train.save_every and self.step % c.train.save_every == 0):
                    self.save()
            if self.dist.any(self.stop_requested):
                self.log(f"stop requested: saving a final checkpoint at step {self.step}")
                self.save()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if bar is not None:
                bar.close()
            if self.writer is not None:
                self.writer.close()
            self.verifier.close()
        return history

    def _request_stop(self, signum, frame) -> None:
        self.stop_requested = True

    def _write(self, record: dict) -> None:
        if self.writer is not None:
            self.writer.write(record)

    def save(self) -> Path | None:
        """Rank 0 writes the checkpoint (every rank holds the same state, or with FSDP its shards, which
        are gathered in full first); the others wait for it."""
        full = {}
        if self.sharding:  # collectives: every rank gathers, rank 0 keeps
            keep, m = self.dist.is_main, self.models
            full = {"policy_state": fsdp.full_state_dict(m.policy, keep=keep),
                    "target_state": fsdp.full_state_dict(m.target, keep=keep) if m.target is not None else None,
                    "optimizer_state": fsdp.gathered_optimizer_state(self.optimizer, keep=keep)}
        path = self._save(full) if self.dist.is_main else None
        self.dist.barrier()
        return path

    def _save(self, full: dict) -> Path:
        return save_checkpoint(
            self.out_dir, self.step, policy=self.models.policy, tokenizer=self.tokenizer,
            optimizer=self.optimizer, scheduler=self.scheduler, target=self.models.target,
            predictor=self.models.predictor, keep_last=self.config.train.keep_last,
            state={"bad_steps": self.bad_steps, "data_position": self.step * self.config.rollout.prompts_per_step,
                   "config": to_dict(self.config)}, **full)

    def _resume(self) -> None:
        path = latest_checkpoint(self.out_dir, self.log)
        if path is None:
            raise SetupError(f"no intact checkpoint to resume from in {self.out_dir / 'checkpoints'}")
        from safetensors.torch import load_file

        _load_weights(self.models.policy, path / "policy", load_file)
        if hasattr(self.engine, "push_weights"):
            with fsdp.gathered(self.models.policy, self.sharding):
                self.engine.push_weights(self.models.policy)
        if self.models.target is not None:
            _load_weights(self.models.target, path / "target", load_file)
        state = load_training_state(
            path, optimizer=self.optimizer, scheduler=self.scheduler, predictor=self.models.predictor,
            adapt_optimizer=(lambda s: fsdp.scatter_optimizer_state(self.optimizer, s)) if self.sharding else None)
        self.step, self.bad_steps = state["step"], state["bad_steps"]
        self.log(f"resumed from {path} at step {self.step}")


def _load_weights(model, folder: Path, load_file) -> None:
    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(file))
    missing, unexpected = (fsdp.load_full_state_dict_(model, state) if fsdp.is_sharded(model)
                           else load_policy_weights(model, state))
    tied = {k for k in missing if "lm_head" in k}
    if set(missing) - tied or unexpected:
        raise SetupError(f"checkpoint {folder} does not match the model: missing {missing}, unexpected {unexpected}")


def _mix(seed: int, step: int, stream: int) -> int:
    """A seed for one random stream of one step, independent of everything drawn before it."""
    return (seed * 1_000_003 + step * 7_919 + stream * 104_729) % (2**63 - 1)


class _Timer:
    """Wall time of named phases of one step, under `time/<name>`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[f"time/{name}"] = time.perf_counter() - start


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
