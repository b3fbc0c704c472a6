"""POPO in one file: the reference training loop, to read top to bottom (cleanrl style).

Each step: sample G rollouts for each of B prompts, verify them, give each prompt's positives POPO's weights,
compute POPO's loss on the positives alone (weighted NLL + alpha * similarity to an EMA target + beta *
entropy), take one AdamW step, move the EMA target; every few steps, evaluate greedy accuracy on held-out
problems. It starts from the warm-started testbed model popo ships for the demo's countdown task (3 numbers
up to 20), so `python examples/popo_minimal.py --steps 20` runs on a laptop CPU in well under a minute.

It uses popo's pure functions and building blocks (`popo.credit`, `popo.losses`, `popo.logprobs`,
`popo.ema`, `popo.predictor`, the rollout engine, the task's verifier) and none of its orchestration
(`popo.trainer`, `popo.update`, `popo.models`), and it takes the same step as `popo train` with the same settings, bit for
bit: tests/test_minimal_example.py checks one step against `popo.trainer.Trainer`.

What it leaves out: algorithms other than POPO (GRPO, ...); dynamic sampling; several processes (DDP, FSDP);
LoRA; vLLM; CPU offload; learning-rate warmup and schedules (the rate is constant, popo's default);
micro-batches (all positives go through one forward pass, where `popo train` splits them by
`optim.micro_batch_tokens`: the same result up to float rounding); entropy over the negatives
(`algo.entropy_scope=all`); sampled pass@k; diagnostics, checkpoints, resuming and metric files.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from popo.config import Config, load_config
from popo.credit import popo_weights
from popo.data.prepare import testbed_task
from popo.data.stream import PromptStream
from popo.ema import ema_tau, ema_update_
from popo.logprobs import completion_outputs, masked_mean
from popo.losses import popo_loss
from popo.predictor import Predictor
from popo.rollout.base import SamplingParams
from popo.rollout.hf import HFEngine
from popo.seeds import noise_seed, normal_noise, sample_seed
from popo.testbed.sft import prepare_testbed

# The demo's task (study v3's): countdown with 3 numbers in 1..20; popo ships this warm start.
COUNTDOWN = ["testbed.task=countdown", "testbed.numbers=3", "testbed.max_number=20", "testbed.warmup_steps=800",
             "testbed.test_size=2000", "testbed.validation_size=500", "rollout.max_new_tokens=32"]


def check_supported(c: Config) -> None:
    """Refuse the settings this loop does not implement (see the module docstring)."""
    assert c.model.name == "testbed" and c.data.source == "testbed" and c.data.template == "plain"
    assert c.algo.name.startswith("popo") and c.algo.entropy_scope == "positives", "POPO, entropy on positives"
    assert c.model.lora.r == 0 and not c.rollout.dynamic_sampling and c.rollout.engine == "hf"
    assert c.optim.warmup_ratio == 0 and c.optim.schedule == "constant", "a constant learning rate"


@torch.no_grad()
def greedy_accuracy(engine: HFEngine, examples: list, verifier, max_new_tokens: int) -> float:
    """Share of held-out problems the policy solves with greedy decoding (truncated answers count as wrong)."""
    rollouts = engine.generate([ex.problem for ex in examples], 1, SamplingParams(max_new_tokens, temperature=0.0),
                               seed=0)  # greedy: the seed is not used
    rewards = torch.tensor(verifier.score(rollouts.texts, [ex.answer for ex in examples]))
    return float(torch.where(rollouts.truncated.cpu(), 0.0, rewards).mean())


def train(c: Config, log=print) -> dict:
    """Train for `c.train.steps` steps; returns the policy, the EMA target, the predictor and one record a step."""
    check_supported(c)
    a, B, G = c.algo, c.rollout.prompts_per_step, c.rollout.group_size
    device = torch.device(c.model.device if c.model.device != "auto" else
                          "cuda" if torch.cuda.is_available() else "cpu")

    # 1. The task (prompts, answers, verifier) and the warm-started testbed model (installed from popo's copy).
    task = testbed_task(c)
    train_examples = task.train_examples(c.testbed.train_size, seed=0)  # the RL prompts, as `popo train` has them
    eval_examples = (task.validation_examples() if c.testbed.validation_size else task.test_examples())
    eval_examples = eval_examples[:c.data.eval_size] if c.data.eval_size else eval_examples
    verifier = task.verifier()  # reward 1 for a correct answer, 0 otherwise
    path = prepare_testbed(c.testbed.cache_dir, task, steps=c.testbed.warmup_steps, batch_size=c.testbed.warmup_batch,
                           lr=c.testbed.warmup_lr, log=log)
    torch.manual_seed(c.train.seed)  # the predictor's initialisation below draws from torch's global generator
    tokenizer = AutoTokenizer.from_pretrained(path)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, c.model.dtype)).to(device).train()

    # 2. POPO's companions: the EMA target (a frozen copy of the policy that trails it) and the predictor q,
    #    an MLP from the policy's pooled hidden states to the target's, trained with the policy.
    target = copy.deepcopy(policy).requires_grad_(False).eval()
    hidden = policy.config.hidden_size
    predictor = Predictor(hidden, a.predictor_width or hidden, a.predictor_layers).to(device, policy.dtype)
    params = [*policy.parameters(), *predictor.parameters()]
    o = c.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    engine = HFEngine(policy, tokenizer, max_prompt_tokens=c.data.max_prompt_tokens,  # samples with `policy` itself
                      max_batch_rollouts=c.rollout.max_batch_rollouts, lean_decode=c.rollout.lean_decode,
                      decode=c.rollout.hf_decode)
    sampling = SamplingParams(c.rollout.max_new_tokens, c.rollout.temperature, c.rollout.top_p)
    prompt_order = PromptStream(len(train_examples), B, c.train.seed)  # seeded order, reshuffled each epoch

    def evaluate(step: int) -> None:  # greedy accuracy before step 0, every `train.eval_every` steps, after the last
        if c.train.eval_every > 0 and eval_examples and (step % c.train.eval_every == 0 or step == c.train.steps):
            acc = greedy_accuracy(engine, eval_examples, verifier, c.rollout.max_new_tokens)
            log(f"step {step:4d}  greedy accuracy {acc:.3f} on {len(eval_examples)} held-out problems")

    history = []
    for step in range(c.train.steps):
        evaluate(step)  # (9. the evaluation: at the top of the loop, and once after it)
        started = time.perf_counter()
        # 3. Sample G rollouts for each of the step's B prompts: N = B * G rows, prompt by prompt. Rollout j of
        #    prompt p is drawn from its own seed, a function of (seed, step, p, j) only: the seeds of `popo train`.
        examples = [train_examples[i] for i in prompt_order.batch(step)]
        rollouts = engine.generate([ex.problem for ex in examples], G, sampling,
                                   prompt_seeds=[sample_seed(c.train.seed, step, p) for p in range(B)])

        # 4. Verify: rewards [N]; a rollout cut off by the token limit gets 0. Positives: reward > threshold.
        rewards = torch.tensor(verifier.score(rollouts.texts, [ex.answer for ex in examples for _ in range(G)]))
        if a.zero_if_truncated:
            rewards = torch.where(rollouts.truncated.cpu(), 0.0, rewards)
        rewards = rewards.to(device)
        positive = rewards > a.reward_threshold  # [N] bool

        # 5. POPO's weights [N]: over each prompt's positives, a softmax of their mean token log-probs under the
        #    sampling policy (recorded while sampling: no extra forward pass); exactly 0 for negatives.
        weights = popo_weights(rollouts.mean_logprobs, rewards, G, mode=a.weight_mode,
                               temperature=a.weight_temperature, threshold=a.reward_threshold,
                               lengths=rollouts.lengths.float(), length_normalize=a.length_normalize)
        record = {"step": step + 1, "reward": float(rewards.mean()), "positives": int(positive.sum())}
        if not positive.any():  # nothing to learn from: no update, and the target stays where it is
            history.append(record)
            log(f"step {step + 1:4d}  reward {record['reward']:.3f}  no positive: no update")
            continue

        # 6. POPO's loss, on the n positives alone: the negatives are never forwarded.
        batch, w = rollouts.select(positive), weights[positive]  # padding columns trimmed
        ids, attention, prompt_len = batch.sequences()  # [n, P + C]: left-padded prompt, right-padded completion
        mask = batch.completion_mask  # [n, C] completion tokens, the end-of-sequence token included
        with torch.no_grad():  # the target's hidden states, mean-pooled over each completion [n, H]
            target_features = masked_mean(completion_outputs(target, ids, attention, prompt_len, need_logprobs=False,
                                                             need_features=True).features, mask)
        # Gaussian noise on the target features, each row's from its own seed (as `popo train` draws it)
        row_seeds = torch.tensor([noise_seed(c.train.seed, step, i) for i in range(B * G)], device=device)[positive]
        target_features = target_features + a.noise_std * normal_noise(row_seeds, hidden)
        # the policy's token log-probs and entropies [n, C] and hidden states [n, C, H], with gradient
        out = completion_outputs(policy, ids, attention, prompt_len, need_entropy=True, need_features=True,
                                 entropy_grad=a.beta > 0)
        predicted = predictor(masked_mean(out.features, mask))  # q(pooled online features) [n, H]
        # L = sum_i w_i NLL_i / N+  -  alpha sum_i w_i cos(q_i, target_i) / W  -  beta * mean entropy,
        # with N+ the positives' token count and W the sum of their weights (see docs/algorithm.md)
        loss, metrics = popo_loss(out.logprobs, mask, w, predicted_features=predicted, target_features=target_features,
                                  token_entropy=out.entropy, alpha=a.alpha, beta=a.beta,
                                  noise_std=0.0,  # the noise is already on the target features
                                  positive_mask=torch.ones_like(positive[positive]),  # every row here is positive
                                  num_positive_tokens=int(mask.sum()), weight_sum=float(w.sum()))

        # 7. The update: one AdamW step on the policy and the predictor, the gradient norm clipped.
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, o.grad_clip if o.grad_clip > 0 else float("inf"))
        finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(grad_norm))
        if finite:  # a non-finite loss or gradient skips the step (and the EMA step), as in `popo train`
            optimizer.step()

            # 8. The EMA target trails the policy: target <- tau * target + (1 - tau) * policy.
            ema_update_(target, policy, ema_tau(step, c.train.steps, a.tau, a.tau_schedule))

        record |= {"loss": metrics["loss"], "nll": metrics["nll"], "cos_sim": metrics["cos_sim"],
                   "grad_norm": float(grad_norm), "skipped": not finite}
        history.append(record)
        log(f"step {step + 1:4d}  reward {record['reward']:.3f}  positives {record['positives']:3d}/{B * G}  "
            f"loss {record['loss']:.4f}  cos_sim {record['cos_sim']:.3f}  grad_norm {record['grad_norm']:.3f}  "
            f"({time.perf_counter() - started:.1f}s)")
    evaluate(c.train.steps)
    return {"policy": policy, "target": target, "predictor": predictor, "history": history}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="POPO on the testbed's countdown task, in one readable loop.")
    parser.add_argument("--steps", type=int, default=20, help="training steps of 16 prompts x 8 rollouts")
    parser.add_argument("--lr", type=float, default=1e-4,
                        help="AdamW learning rate (1e-4: GRPO learns at it on this task, study v3's control search)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt order, sampling and noise")
    parser.add_argument("--eval-size", type=int, default=200, help="held-out problems for greedy accuracy")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    args = parser.parse_args(argv)
    transformers.utils.logging.disable_progress_bar()  # no progress bar while loading the weights
    config = load_config(None, [*COUNTDOWN, f"train.steps={args.steps}", f"optim.lr={args.lr}",
                                f"train.seed={args.seed}", f"data.eval_size={args.eval_size}",
                                f"train.eval_every={max(1, args.steps // 2)}", f"model.device={args.device}"])
    train(config)


if __name__ == "__main__":
    main()
