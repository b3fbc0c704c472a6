"""Dynamic sampling on the testbed: held-out greedy accuracy against rollouts sampled, with and without
`rollout.dynamic_sampling`, for POPO and GRPO from the same warmed-up model.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dynamic_sampling.py --out runs/dynamic-sampling

Each run trains `--steps` steps of `--prompts` prompts x 8 rollouts (lr 5e-5, the study settings) and
evaluates greedy accuracy on `--eval-size` validation problems every `--eval-every` steps. A run with
dynamic sampling samples more rollouts per step (its refills), so the table compares accuracy at the same
number of rollouts sampled (the no-refill run's whole budget), beside each run's final numbers. Prints a
markdown table and writes every run's metrics under `--out`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from popo.build import build_trainer
from popo.config import load_config


def accuracy_at(history: list[dict], budget: int) -> tuple[float, int]:
    """Greedy accuracy at the last evaluation within `budget` rollouts sampled, and that point's rollouts."""
    points = [(r["rollouts_total"], r["eval/greedy_acc"]) for r in history if "eval/greedy_acc" in r and r["step"]]
    within = [p for p in points if p[0] <= budget]
    rollouts, acc = within[-1] if within else points[0]
    return acc, rollouts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/dynamic-sampling")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-size", type=int, default=300)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--algos", default="popo,grpo")
    args = parser.parse_args()
    out, rows = Path(args.out), []
    for algo in args.algos.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            runs = {}
            for dynamic in (False, True):
                run_dir = out / f"{algo}-{'ds' if dynamic else 'plain'}-seed{seed}"
                config = load_config(None, [
                    f"algo.name={algo}", f"train.seed={seed}", f"train.steps={args.steps}", "optim.lr=5e-5",
                    f"rollout.prompts_per_step={args.prompts}", "rollout.group_size=8",
                    f"rollout.dynamic_sampling={dynamic}", "rollout.max_sampling_rounds=3",
                    f"train.eval_every={args.eval_every}", "train.eval_samples=0", f"data.eval_size={args.eval_size}",
                    "train.diag_every=0", "train.save_every=0", "train.progress=false", "train.tensorboard=false",
                    "train.overwrite=true", f"train.out_dir={run_dir}"])
                start = time.perf_counter()
                history = build_trainer(config, log=lambda m: None).run()
                runs[dynamic] = (history, time.perf_counter() - start)
                (run_dir / "history.json").write_text(json.dumps(history))
            budget = runs[False][0][-1]["rollouts_total"]
            for dynamic, (history, wall) in runs.items():
                at_budget, rollouts = accuracy_at(history, budget)
                extra = sum(r.get("sampling/extra_rollouts", 0) for r in history)
                kept = [r["prompts_with_positive"] for r in history if "prompts_with_positive" in r]
                rows.append((algo, seed, dynamic, history[0].get("eval/greedy_acc", float("nan")),
                             history[-1]["eval/greedy_acc"], history[-1]["rollouts_total"], at_budget, rollouts,
                             extra, sum(kept) / len(kept), wall))
                print(rows[-1], flush=True)
    print("\n| algo | seed | dynamic sampling | start acc | final acc | rollouts sampled | acc at the plain "
          "run's budget (rollouts) | refill rollouts | prompts with a positive / step | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for algo, seed, dynamic, start, final, total, at_budget, rollouts, extra, kept, wall in rows:
        print(f"| {algo} | {seed} | {'on' if dynamic else 'off'} | {start:.3f} | {final:.3f} | {total} | "
              f"{at_budget:.3f} ({rollouts}) | {extra} | {kept:.2f} | {wall:.0f} |")


if __name__ == "__main__":
    main()
