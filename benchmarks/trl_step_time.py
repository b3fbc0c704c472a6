"""Step time of POPO inside TRL: GRPOTrainer, POPOTrainer, the paper's code path, and popo's own trainer.

Frameworks (every one trains the same locally built model on the same addition prompts, with the same G,
prompts per step, max new tokens, sampling, fp32, learning rate and gradient clip; the settings of
benchmarks/step_time_vs_trl.py):

- `trl-grpo`: TRL 1.16's `GRPOTrainer`, loss_type dapo, no KL (the baseline);
- `trl-popo`: `popo.integrations.trl.POPOTrainer`, loss_type popo: only the positives are forwarded and
  back-propagated, the weights come from that same forward;
- `trl-popo-paper`: `POPOTrainer` made to cost what the paper's public code costs (a GRPOTrainer subclass):
  an extra no-grad forward over every completion for the weights, then every completion forwarded and
  back-propagated, negatives included (their weight is 0, so the loss is the same);
- `popo`: popo's own trainer (`popo train`), POPO.

Rewards: the testbed verifier for the warmed-up testbed model; for the random models, which never solve
the task, `common.hash_reward` (about 1/8 of the completions positive), the same function everywhere.

Step time = wall time from one optimizer step's end to the next. Training phase = step time minus
generation (`_generate` for TRL, the engine for popo) minus reward scoring, i.e. everything the loss
costs: padding and planning, forward and backward passes, the optimizer and EMA steps. Each (framework,
model) run is a fresh process of `--steps` steps (the first excluded); round r runs every framework once
in a rotated order; per pair, the ratio to `trl-grpo` is taken within each round, then the median.

Goal (issue 15): POPOTrainer's training phase at most (p + 0.1) x GRPOTrainer's at positive fraction p,
and its whole step at least 1.5x faster than GRPOTrainer's on the testbed model.

    .venv/bin/pip install -e '.[trl]'      # or '.[dev]'
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trl_step_time.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import step_time_vs_trl  # noqa: E402  (its prompts and its popo runner)

FRAMEWORKS = ("trl-grpo", "trl-popo", "trl-popo-paper", "popo")


def paper_path_trainer():
    """POPOTrainer with the paper's costs: weights from an extra forward over every completion, and every
    completion in the forward and backward pass (defined here so TRL is imported only by the workers)."""
    import torch

    from popo.integrations.trl import POPOTrainer
    from popo.integrations.trl.batches import to_rollouts
    from popo.models import sequence_logprobs

    class PaperPathTrainer(POPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.popo.algorithm = replace(self.popo.algorithm, needs_negatives=lambda cfg: True)

        def _generate_and_score_completions(self, inputs):
            outputs = super()._generate_and_score_completions(inputs)
            rollouts, _ = to_rollouts(outputs, self.num_generations)
            budget = rollouts.num_rollouts * (rollouts.prompt_ids.shape[1] + rollouts.completion_ids.shape[1])
            with torch.no_grad():  # the weights' forward over all rows; plan() then uses these log-probs
                outputs["sampling_per_token_logps"] = sequence_logprobs(self.popo.models.policy, rollouts, budget)
            return outputs

    return PaperPathTrainer


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from popo.integrations.trl import POPOConfig, POPOTrainer
    from popo.testbed.addition import addition_reward

    path = common.model_path(args.model)
    problems, answers = step_time_vs_trl._prompts(args)
    testbed = args.model == "testbed"

    def reward(prompts, completions, answer, **kwargs):
        if testbed:
            return [addition_reward(c, a) for c, a in zip(completions, answer)]
        return [common.hash_reward(c) for c in completions]

    popo = args.framework != "trl-grpo"
    config_cls, trainer_cls = ((POPOConfig, paper_path_trainer() if args.framework == "trl-popo-paper" else POPOTrainer)
                               if popo else (GRPOConfig, GRPOTrainer))
    config = config_cls(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"), per_device_train_batch_size=args.prompts * args.group,
        gradient_accumulation_steps=1, num_generations=args.group, max_completion_length=args.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, loss_type="popo" if popo else "dapo", learning_rate=args.lr,
        lr_scheduler_type="constant", max_grad_norm=1.0, max_steps=args.steps, use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, report_to="none", logging_strategy="no", save_strategy="no",
        disable_tqdm=True, seed=0, dataloader_num_workers=0, log_completions=False)
    trainer = trainer_cls(model=str(path), reward_funcs=reward, args=config, processing_class=AutoTokenizer.from_pretrained(path),
                          train_dataset=Dataset.from_dict({"prompt": problems, "answer": answers}))
    phases: dict[str, list[float]] = {"generate": [], "score": []}
    positives: list[float] = []

    def timed(name, method, after=None):
        def call(*a, **k):
            start = time.perf_counter()
            out = method(*a, **k)
            phases[name].append(time.perf_counter() - start)
            if after is not None:
                after(out)
            return out
        return call

    trainer._generate = timed("generate", trainer._generate)
    trainer._calculate_rewards = timed("score", trainer._calculate_rewards,
                                       lambda r: positives.append(float((r[:, 0] > 0).float().mean())))
    steps, cpu = [], []

    class StepClock(TrainerCallback):
        def on_step_end(self, *a, **k):
            now = (time.perf_counter(), time.process_time())
            steps.append(now[0] - self.mark[0])
            cpu.append(now[1] - self.mark[1])
            self.mark = now

    clock = StepClock()
    trainer.add_callback(clock)
    clock.mark = (time.perf_counter(), time.process_time())
    trainer.train()
    phases["train"] = [s - g - r for s, g, r in zip(steps, phases["generate"], phases["score"])]
    return {"step_s": steps, "step_cpu_s": cpu, "phases_s": phases, "positive_fraction": positives,
            "params": sum(p.numel() for p in trainer.model.parameters()), "torch_threads": torch.get_num_threads()}


def run_popo(args) -> dict:
    args.framework = "popo"
    result = step_time_vs_trl.run_ours(args)
    phases = result["phases_s"]
    phases["train"] = [t + e for t, e in zip(phases["train"], phases.get("ema", [0.0] * len(phases["train"])))]
    phases["score"] = phases.pop("verify", [])
    return result


# ---------------------------------------------------------------- orchestrator
def steady(run: dict, key: str, phase: bool = False) -> float:
    """Median over a run's steps after the first (which includes warm-up)."""
    values = run["phases_s"][key] if phase else run[key]
    return common.median(values[1:] or values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["0.3m", "2.4m", "testbed"], choices=list(common.MODELS))
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS)
    step_time_vs_trl.add_run_options(parser, FRAMEWORKS, steps=20, repeats=2, out=common.RESULTS / "trl_step_time")
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.framework = args.worker
        common.set_threads(args.threads)
        if args.model_path:  # resolved once by the orchestrator: every run trains the very same weights
            common.model_path = lambda name, log=print: Path(args.model_path)
        result = run_popo(args) if args.worker == "popo" else run_trl(args)
        result["peak_rss_mb"] = common.peak_rss_mb()
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    common.set_threads(args.threads)
    started, load_before = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    runs: dict[tuple[str, str], list[dict]] = {}
    ratios: dict[tuple[str, str], dict[str, list[float]]] = {}
    paths = {}
    for model in args.models:
        paths[model] = str(common.model_path(model))  # built once, outside the timed processes
        for rep in range(args.repeats):
            shift = rep % len(args.frameworks)
            medians = {}
            for fw in args.frameworks[shift:] + args.frameworks[:shift]:
                run = step_time_vs_trl.launch(args, fw, model, script=Path(__file__).resolve(),
                                              extra=("--model-path", paths[model]))
                runs.setdefault((model, fw), []).append(run)
                medians[fw] = {"step": steady(run, "step_s"), "train": steady(run, "train", phase=True)}
                print(f"{model:8} round {rep + 1}  {fw:15} step {medians[fw]['step']:.4f} s  train "
                      f"{medians[fw]['train']:.4f} s  positives {common.median(run['positive_fraction']):.3f}",
                      flush=True)
            if "trl-grpo" in medians:
                for fw, m in medians.items():
                    r = ratios.setdefault((model, fw), {"step": [], "train": []})
                    r["step"].append(medians["trl-grpo"]["step"] / m["step"])
                    r["train"].append(m["train"] / medians["trl-grpo"]["train"])
    rows = [summarise(model, fw, rs, ratios.get((model, fw))) for (model, fw), rs in runs.items()]
    result = {
        "command": common.command_line(), "loadavg_before": load_before, "machine": common.machine(),
        "versions": common.versions(("trl", "datasets")), "models": paths, "wall_minutes": round((time.perf_counter() - started) / 60, 1),
        "settings": {"prompts_per_step": args.prompts, "group_size": args.group, "max_new_tokens": args.max_new_tokens,
                     "steps_per_run": args.steps, "repeats": args.repeats, "lr": args.lr, "dtype": "float32",
                     "temperature": 1.0, "top_p": 1.0, "torch_threads": args.threads},
        "rows": rows,
    }
    print("\n".join(common.table(COLUMNS, [_cells(r) for r in rows])))
    common.write_result("trl_step_time", result, render_markdown(result), None if args.no_write else args.out)
    return 0


def summarise(model: str, fw: str, runs: list[dict], ratio: dict | None) -> dict:
    row = {"model": model, "framework": fw, "params": runs[0]["params"],
           "step_s": common.median([steady(r, "step_s") for r in runs]),
           "generate_s": common.median([steady(r, "generate", phase=True) for r in runs]),
           "train_s": common.median([steady(r, "train", phase=True) for r in runs]),
           "positive_fraction": common.median([p for r in runs for p in r["positive_fraction"]]),
           "peak_rss_mb": common.median([r["peak_rss_mb"] for r in runs]),
           "run_step_s": [round(steady(r, "step_s"), 4) for r in runs]}
    if ratio:
        row["speedup_vs_grpo"] = common.median(ratio["step"])
        row["train_vs_grpo"] = common.median(ratio["train"])
        row["train_goal"] = row["positive_fraction"] + 0.1  # issue 15: POPOTrainer's train ratio at most p + 0.1
    return row


COLUMNS = ["model", "params", "framework", "step s", "generate s", "train s", "positive frac p",
           "GRPOTrainer step / step", "train / GRPOTrainer train", "goal p + 0.1", "peak RSS MiB", "per-run step s"]


def _cells(r: dict) -> list:
    nan = float("nan")
    return [r["model"], f"{r['params'] / 1e6:.2f}M", r["framework"], round(r["step_s"], 4), round(r["generate_s"], 4),
            round(r["train_s"], 4), round(r["positive_fraction"], 3), round(r.get("speedup_vs_grpo", nan), 2),
            round(r.get("train_vs_grpo", nan), 3), round(r.get("train_goal", nan), 3) if r["framework"] == "trl-popo"
            else nan, round(r["peak_rss_mb"]), ", ".join(str(s) for s in r["run_step_s"])]


def render_markdown(result: dict) -> str:
    s = result["settings"]
    lines = common.header("POPO inside TRL: step time against GRPOTrainer", result)
    lines += [
        f"Settings: {s['prompts_per_step']} prompts x G = {s['group_size']} per step, up to {s['max_new_tokens']} new "
        f"tokens, temperature {s['temperature']}, top-p {s['top_p']}, fp32, lr {s['lr']}, no gradient checkpointing, "
        f"torch threads {s['torch_threads']} per process; {s['repeats']} interleaved rounds per model, each run a "
        f"fresh process of {s['steps_per_run']} steps (median over the steps after the first; median over rounds). "
        f"Whole benchmark: {result['wall_minutes']} min.",
        "",
        *common.table(COLUMNS, [_cells(r) for r in result["rows"]]),
        "",
        "train s = step time minus generation minus reward scoring (forward and backward passes, optimizer and "
        "EMA steps, batch padding and planning). GRPOTrainer step / step: how many times faster the step is than "
        "GRPOTrainer's (per round, median). train / GRPOTrainer train: the training phase as a share of "
        "GRPOTrainer's; goal p + 0.1 is its ceiling for trl-popo at the measured positive fraction p. "
        "Positive frac = share of completions with reward 1 (testbed verifier for the testbed model, hash reward "
        "otherwise). Peak RSS = the whole process's maximum resident set.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
