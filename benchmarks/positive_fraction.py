"""POPO's training phase against GRPO's on the same rollouts, with the rewards forced to a given
positive fraction p.

One batch of rollouts is sampled once from the model; for each p, round(p * N) rows chosen at random
(seeded) get reward 1 and the rest 0. Each configuration then runs its training phase on that batch
exactly as the trainer does (credit, the rows the algorithm trains on, `update_policy`, and for POPO
the EMA update of the target):

- popo:            POPO defaults (similarity to the EMA target, entropy on positives): positives only;
- popo-nosim:      POPO without the similarity term (alpha = 0): no EMA target forward pass;
- popo-ent-all:    POPO with `algo.entropy_scope=all`: the entropy term covers every rollout, so the
                   negatives are forwarded too (what the positives-only design avoids);
- grpo-full:       GRPO forwarding every row (TRL's and the textbook behaviour);
- grpo:            popo's GRPO, which leaves out zero-advantage rows (exactly zero gradient without a
                   KL term), so all-wrong and all-right groups cost nothing.

Timings are interleaved (each round times every configuration at every p) and the table reports
medians; the goal column compares popo with (p + 0.1) x grpo-full.

    .venv/bin/python benchmarks/positive_fraction.py
    .venv/bin/python benchmarks/positive_fraction.py --model 2.4m --fractions 0.1 0.5 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CONFIGS = ("popo", "popo-nosim", "popo-ent-all", "grpo-full", "grpo")


@dataclass
class Setup:
    """One configuration's algorithm, settings, models and optimizer."""

    name: str
    algorithm: object
    cfg: object
    models: object
    optimizer: object
    params: list


def build(name: str, path: Path, lr: float) -> Setup:
    import torch
    from transformers import AutoModelForCausalLM

    from popo.algorithms import LOSSES
    from popo.config import AlgoConfig
    from popo.models import Models

    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()
    if name.startswith("popo"):
        cfg = AlgoConfig(name="popo", entropy_scope="all" if name == "popo-ent-all" else "positives",
                         alpha=0.0 if name == "popo-nosim" else 0.1)
        algorithm = LOSSES["popo"]
        models = Models.build(policy, with_target=algorithm.needs_target(cfg), with_reference=False,
                              predictor_width=0, predictor_layers=2, device=torch.device("cpu"))
    else:
        cfg = AlgoConfig(name="grpo", kl_coef=0.0, aggregation="token-mean")
        algorithm = LOSSES["grpo"]
        if name == "grpo-full":
            algorithm = replace(algorithm, zero_credit_inert=lambda c: False)
        models = Models(policy=policy)
    params = models.trainable_parameters()
    return Setup(name, algorithm, cfg, models, torch.optim.AdamW(params, lr=lr), params)


def forced_rewards(n: int, fraction: float, seed: int):
    import torch

    rewards = torch.zeros(n)
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: round(fraction * n)]
    rewards[chosen] = 1.0
    return rewards


def training_phase(setup: Setup, rollouts, rewards, group: int, max_length: int, token_budget: int) -> dict:
    """Wall / CPU seconds of one training phase as the trainer runs it, and the rows it forwarded."""
    import torch

    from popo.ema import ema_update_
    from popo.update import update_policy

    with common.Clock() as clock:
        positive = rewards > 0  # [N]
        credit = setup.algorithm.credit(rewards, rollouts.mean_logprobs, rollouts.lengths.float(), group, setup.cfg)
        rows = torch.ones_like(positive) if setup.algorithm.needs_negatives(setup.cfg) else positive
        forwarded = int(rows.sum())
        if setup.algorithm.zero_credit_inert(setup.cfg):
            forwarded = int((rows & (credit != 0)).sum())
        if bool(rows.any()):
            update_policy(setup.models, setup.optimizer, setup.algorithm, setup.cfg, rollouts.select(rows),
                          credit[rows], positive[rows], max_length=max_length, token_budget=token_budget,
                          grad_clip=1.0, row_seeds=torch.arange(rollouts.num_rollouts)[rows])  # noise keys
            if setup.models.target is not None:
                ema_update_(*setup.models.ema_pairs(), setup.cfg.tau)
    return {"wall": clock.wall, "cpu": clock.cpu, "forwarded_rows": forwarded}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(common.MODELS), default="testbed")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--micro-batch-tokens", type=int, default=8192)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (plus one warm-up round)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch default)")
    parser.add_argument("--out", type=Path, default=common.RESULTS / "positive_fraction")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    common.set_threads(args.threads)

    from transformers import AutoTokenizer

    from popo.rollout import HFEngine, SamplingParams
    from popo.testbed.addition import AdditionTask

    load_before = [round(x, 2) for x in os.getloadavg()]
    path = common.model_path(args.model)
    setups = {name: build(name, path, args.lr) for name in args.configs}
    tokenizer = AutoTokenizer.from_pretrained(path)
    sampler_model = next(iter(setups.values())).models.policy
    prompts = [ex.problem for ex in AdditionTask(digits=3, test_size=1000).train_examples(args.prompts, seed=0)]
    rollouts = HFEngine(sampler_model, tokenizer).generate(prompts, args.group,
                                                           SamplingParams(args.max_new_tokens, 1.0, 1.0), seed=0)
    n = rollouts.num_rollouts
    samples: dict[tuple[str, float], list[dict]] = {}
    for rep in range(args.repeats + 1):  # round 0 warms up and is dropped
        for fraction in args.fractions:
            rewards = forced_rewards(n, fraction, seed=rep)
            for name in (args.configs if rep % 2 == 0 else list(reversed(args.configs))):
                result = training_phase(setups[name], rollouts, rewards, args.group, args.max_new_tokens,
                                        args.micro_batch_tokens)
                if rep > 0:
                    samples.setdefault((name, fraction), []).append(result)
        if rep > 0:
            print(f"round {rep}/{args.repeats} done", flush=True)

    rows = []
    for fraction in args.fractions:
        base = samples.get(("grpo-full", fraction))
        for name in args.configs:
            runs = samples[(name, fraction)]
            row = {"fraction": fraction, "config": name, "wall_s": common.median([r["wall"] for r in runs]),
                   "cpu_s": common.median([r["cpu"] for r in runs]),
                   "forwarded_rows": common.median([r["forwarded_rows"] for r in runs])}
            if base:
                row["over_grpo_full"] = common.median([r["wall"] / b["wall"] for r, b in zip(runs, base)])
                row["over_grpo_full_cpu"] = common.median([r["cpu"] / b["cpu"] for r, b in zip(runs, base)])
                row["goal"] = fraction + 0.1
            rows.append(row)
    result = {"command": common.command_line(), "loadavg_before": load_before, "machine": common.machine(),
              "versions": common.versions(),
              "settings": {"model": args.model, "rows": n, "prompts": args.prompts, "group_size": args.group,
                           "max_new_tokens": args.max_new_tokens, "completion_tokens": int(rollouts.lengths.sum()),
                           "micro_batch_tokens": args.micro_batch_tokens, "repeats": args.repeats,
                           "threads": args.threads},
              "rows": rows}
    print("\n".join(common.table(COLUMNS, [_cells(r) for r in rows])))
    common.write_result("positive_fraction", result, render_markdown(result), None if args.no_write else args.out)
    return 0


COLUMNS = ["positive fraction p", "config", "forwarded rows", "train phase s", "CPU s", "/ grpo-full (wall)",
           "/ grpo-full (CPU)", "goal p + 0.1"]


def _cells(r: dict) -> list:
    nan = float("nan")
    return [r["fraction"], r["config"], r["forwarded_rows"], round(r["wall_s"], 4), round(r["cpu_s"], 4),
            round(r.get("over_grpo_full", nan), 3), round(r.get("over_grpo_full_cpu", nan), 3),
            round(r.get("goal", nan), 2)]


def render_markdown(result: dict) -> str:
    s = result["settings"]
    lines = common.header("Training phase against the positive fraction", result)
    lines += [
        f"Model `{s['model']}`; one batch of {s['rows']} rollouts ({s['prompts']} prompts x G = "
        f"{s['group_size']}, up to {s['max_new_tokens']} new tokens, {s['completion_tokens']} completion "
        f"tokens in all) sampled once; rewards forced to the positive fraction p (random rows). Training "
        f"phase = credit + `update_policy` (+ the EMA update for POPO), micro-batch budget "
        f"{s['micro_batch_tokens']} tokens, torch threads {s['threads']}; median of {s['repeats']} "
        "interleaved rounds after a warm-up round.",
        "",
        *common.table(COLUMNS, [_cells(r) for r in result["rows"]]),
        "",
        "Configurations: `popo` = POPO defaults, positives only; `popo-nosim` = POPO with alpha = 0 (no "
        "EMA target forward); `popo-ent-all` = POPO with "
        "`algo.entropy_scope=all` (negatives forwarded for the entropy term); `grpo-full` = GRPO forwarding "
        "every row (as TRL does); `grpo` = popo's GRPO, which leaves out zero-advantage rows (same update). "
        "Ratios are per round, then the median. The goal is popo / grpo-full <= p + 0.1.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
