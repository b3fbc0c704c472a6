"""Warm-start measurements of a testbed task (docs/results.md, "Where POPO's mechanisms can act").

At the warmed-up start, on the validation split: greedy accuracy and pass@k from k samples per problem;
among problems with two or more correct samples, how many have two or more *distinct* correct samples;
over those groups, the mean |softmax weight - uniform weight| of POPO's weights; then the first steps of a
POPO run with diagnostics on every step, whose step-0 record holds each POPO term's gradient share and the
cosine between the POPO gradient and its NLL-only gradient (`popo.diagnostics`).

    OMP_NUM_THREADS=1 python docs/results/warm_start.py --out docs/results/warm_start_countdown.json \\
        testbed.task=countdown testbed.warmup_steps=1000

Any `key=value` is a configuration override (the testbed task and its warm-up). Takes a few minutes on one
core once the warmed-up model is cached.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from popo.build import build_trainer
from popo.data.prepare import testbed_examples, testbed_task
from popo.config import load_config
from popo.diagnostics import finish_diversity, positive_diversity
from popo.distributed import Dist
from popo.rewards.scoring import score_rollouts
from popo.sampling_metrics import pass_at_k
from popo.rollout.base import SamplingParams
from popo.credit import popo_weights


def sampled_statistics(trainer, examples, k: int, max_new_tokens: int) -> dict:
    """Greedy accuracy, pass@k, diversity of the correct samples and POPO's weights on `examples`."""
    prompts = [ex.problem for ex in examples]
    answers = [ex.answer for ex in examples]
    greedy = trainer.engine.generate(prompts, 1, SamplingParams(max_new_tokens, temperature=0.0))
    greedy_ok = score_rollouts(trainer.verifier, greedy.texts, answers, greedy.truncated, zero_if_truncated=True)
    sampled = trainer.engine.generate(prompts, k, SamplingParams(max_new_tokens, 1.0, 1.0), seed=12345)
    rewards = score_rollouts(trainer.verifier, sampled.texts, [a for a in answers for _ in range(k)],
                             sampled.truncated, zero_if_truncated=True)
    positive = rewards > 0
    weights = popo_weights(sampled.mean_logprobs, rewards, k)  # softmax over mean log-probs, per problem
    sums = positive_diversity(sampled.texts, positive, weights, k)
    counts = positive.view(-1, k).sum(1).tolist()
    return {"problems": len(examples), "k": k, "greedy_acc": float(greedy_ok.mean()),
            f"pass@{k}": sum(pass_at_k(k, c, k) for c in counts) / len(counts),
            f"avg@{k}": float(rewards.mean()), "problems_with_2_positives": int(sums["groups"]),
            "of_which_2_distinct": int(sums["multi_distinct"]),
            **finish_diversity(sums, Dist(), weights=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--out", required=True)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--problems", type=int, default=500, help="validation problems sampled (default: 500)")
    parser.add_argument("--steps", type=int, default=4, help="POPO steps with diagnostics (default: 4)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(None, ["algo.name=popo", "rollout.prompts_per_step=32", "rollout.group_size=8",
                                    "train.eval_every=0", "train.save_every=0", "train.progress=false",
                                    "train.tensorboard=false", "data.eval_size=8", *args.overrides,
                                    f"train.steps={args.steps}", "train.diag_every=1", f"train.out_dir={tmp}"])
        trainer = build_trainer(config, log=print)
        warm = time.perf_counter() - started
        examples = testbed_examples(config, "testbed", split="validation")[: args.problems]
        start = sampled_statistics(trainer, examples, args.k, config.rollout.max_new_tokens)
        records = [r for r in trainer.run() if "grad_share/nll" in r]
    keys = sorted({k for r in records for k in r if k.startswith(("grad_", "distinct_", "multi_", "weight_dev"))})
    result = {"task": testbed_task(config).describe(), "overrides": args.overrides, "validation": start,
              "step0": {k: records[0][k] for k in keys if k in records[0]},
              f"mean_of_first_{len(records)}_steps": {k: sum(r[k] for r in records if k in r) /
                                                      max(1, sum(k in r for r in records)) for k in keys},
              "seconds_total": round(time.perf_counter() - started), "seconds_to_warm_model": round(warm)}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
