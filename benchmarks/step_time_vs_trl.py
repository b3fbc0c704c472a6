"""Step time of popo's trainer (GRPO and POPO) against TRL's GRPOTrainer on identical settings.

Every framework trains the same locally built model (`0.3m`, `2.4m`: random Qwen2-architecture models;
`testbed`: the warmed-up ~1 M testbed model) on the same addition prompts with the same G, prompts per
step, max new tokens, sampling (temperature 1, top-p 1, no top-k), fp32, KL beta = 0, learning rate,
gradient clip and no gradient checkpointing. One step = generate, reward, loss, backward, optimizer
step (and, for POPO, the EMA update). Rewards: the testbed verifier for the testbed model; for the
random models, which never solve the task, a hash of the completion text that marks about 1/8 of
them positive (see `common.hash_reward`), the same function in both frameworks.

`grpo-base` / `popo-base` are popo before the first optimisations documented in docs/performance.md
(engine sampling inside `generate` with per-row prompt prefill and finished rows kept; GRPO forwarding
zero-advantage rows); `grpo-prev` / `popo-prev` are popo before the lean decode step
(`rollout.lean_decode=false`: the engine's loop steps with the model's own forward), for the
before/after comparisons in the same run.

Each (framework, model) run is a fresh process (so its peak RSS is its own) training `--steps` steps;
the runs are interleaved (round r runs every framework once, in a rotated order) and repeated
`--repeats` times. Per run: median step time over the steps after the first. Per pair: the ratio of
TRL's median to ours within each round, then the median of those ratios.

TRL comes with the `popo[trl]` extra (part of the dev install that `make test` sets up):

    .venv/bin/python benchmarks/step_time_vs_trl.py
    .venv/bin/python benchmarks/step_time_vs_trl.py --frameworks grpo popo   # without TRL
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

FRAMEWORKS = ("trl", "grpo", "popo", "grpo-prev", "popo-prev", "grpo-base", "popo-base")


# ---------------------------------------------------------------- workers (one framework, one model)
def _prompts(args):
    from popo.testbed.addition import AdditionTask

    examples = AdditionTask(digits=3, test_size=1000).train_examples(args.prompts * (args.steps + 1) * 4, seed=0)
    return [ex.problem for ex in examples], [ex.answer for ex in examples]


def make_trainer(args):
    """popo's Trainer for `args.framework` (grpo or popo) on `args.model`, with the shared settings."""
    from dataclasses import replace

    from popo.config import load_config
    from popo.build import build_trainer

    path = common.model_path(args.model)
    algo = args.framework.removesuffix("-base").removesuffix("-prev")
    out_dir = tempfile.mkdtemp(prefix="bench-step-")
    overrides = common.trainer_overrides(
        model=path, algo=algo, group=args.group, prompts=args.prompts, max_new_tokens=args.max_new_tokens,
        lr=args.lr, steps=args.steps, train_size=args.prompts * (args.steps + 1) * 4, out_dir=out_dir)
    overrides.append(f"rollout.lean_decode={not args.framework.endswith('-prev')}")
    trainer = build_trainer(load_config(None, overrides), log=lambda s: None)
    if args.model != "testbed":
        trainer.verifier = common.hash_verifier()
    if args.framework.endswith("-base"):  # popo before the optimisations of docs/performance.md
        trainer.engine.share_prompt_prefill = trainer.engine.drop_finished_rows = False
        trainer.algorithm = replace(trainer.algorithm, zero_credit_inert=lambda cfg: False)
    return trainer


def run_ours(args) -> dict:
    import torch

    trainer = make_trainer(args)
    steps, cpu, phases, positives, trained = [], [], {}, [], []
    for step in range(args.steps):
        with common.Clock() as clock:
            record = trainer.train_step(step)
        steps.append(clock.wall)
        cpu.append(clock.cpu)
        for key, value in record.items():
            if key.startswith("time/"):
                phases.setdefault(key[5:], []).append(value)
        positives.append(record["pass_rate"])
        trained.append(record.get("trained_rollouts", 0))
    trainer.writer.close()
    return {"step_s": steps, "step_cpu_s": cpu, "phases_s": phases, "positive_fraction": positives,
            "trained_rollouts": trained,
            "params": sum(p.numel() for p in trainer.models.policy.parameters()),
            "torch_threads": torch.get_num_threads()}


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from popo.testbed.addition import addition_reward

    path = common.model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    problems, answers = _prompts(args)
    dataset = Dataset.from_dict({"prompt": problems, "answer": answers})
    testbed = args.model == "testbed"

    def reward(prompts, completions, answer, **kwargs):
        if testbed:
            return [addition_reward(c, a) for c, a in zip(completions, answer)]
        return [common.hash_reward(c) for c in completions]

    generate_s: list[float] = []
    original_generate = model.generate

    def timed_generate(*a, **k):
        start = time.perf_counter()
        out = original_generate(*a, **k)
        generate_s.append(time.perf_counter() - start)
        return out

    model.generate = timed_generate
    steps: list[float] = []
    cpu: list[float] = []
    positives: list[float] = []

    class StepClock(TrainerCallback):
        """Wall and CPU time from the end of one optimizer step to the end of the next."""

        def __init__(self):
            self.mark = (time.perf_counter(), time.process_time())

        def on_step_end(self, *a, **k):
            now = (time.perf_counter(), time.process_time())
            steps.append(now[0] - self.mark[0])
            cpu.append(now[1] - self.mark[1])
            self.mark = now

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"), per_device_train_batch_size=args.prompts * args.group,
        gradient_accumulation_steps=1, num_generations=args.group, max_completion_length=args.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, loss_type="dapo", learning_rate=args.lr,
        lr_scheduler_type="constant", max_grad_norm=1.0, max_steps=args.steps, use_cpu=True, bf16=False,
        fp16=False, gradient_checkpointing=False, report_to="none", logging_strategy="no",
        save_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0, log_completions=False)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[StepClock()])
    original_calc = trainer._calculate_rewards

    def calc(*a, **k):
        rewards = original_calc(*a, **k)  # [N, reward functions]
        positives.append(float((rewards[:, 0] > 0).float().mean()))
        return rewards

    trainer._calculate_rewards = calc
    clock = trainer.callback_handler.callbacks[-1]
    clock.mark = (time.perf_counter(), time.process_time())
    trainer.train()
    return {"step_s": steps, "step_cpu_s": cpu, "phases_s": {"generate": generate_s}, "positive_fraction": positives,
            "params": sum(p.numel() for p in model.parameters()), "torch_threads": torch.get_num_threads()}


def worker(args) -> int:
    common.set_threads(args.threads)
    result = run_trl(args) if args.framework == "trl" else run_ours(args)
    result["peak_rss_mb"] = common.peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------- orchestrator
def launch(args, framework: str, model: str, script: Path | None = None, extra: tuple[str, ...] = ()) -> dict:
    """Run one worker (`script`'s, default this file's) in a fresh process; its RESULT line as a dict."""
    cmd = [sys.executable, str(script or Path(__file__).resolve()), "--worker", framework, "--model", model,
           "--steps", str(args.steps), "--prompts", str(args.prompts), "--group", str(args.group),
           "--max-new-tokens", str(args.max_new_tokens), "--lr", str(args.lr), "--threads", str(args.threads),
           *extra]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=common.ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{framework} on {model} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def run_median(run: dict, key: str) -> float:
    """Median over a run's steps after the first (which includes warm-up)."""
    return common.median(run[key][1:] or run[key])


def summarise(runs: list[dict]) -> dict:
    steady = [run_median(r, "step_s") for r in runs]
    out = {"median_step_s": common.median(steady), "run_medians_s": [round(s, 4) for s in steady],
           "median_step_cpu_s": common.median([run_median(r, "step_cpu_s") for r in runs]),
           "torch_threads": runs[0]["torch_threads"],
           "peak_rss_mb": common.median([r["peak_rss_mb"] for r in runs]),
           "positive_fraction": common.median([p for r in runs for p in r["positive_fraction"]]),
           "params": runs[0]["params"]}
    gen = [common.median(r["phases_s"].get("generate", [float("nan")])[1:]) for r in runs]
    out["median_generate_s"] = common.median(gen)
    if "train" in runs[0]["phases_s"]:
        out["median_train_s"] = common.median([common.median(r["phases_s"]["train"][1:]) for r in runs])
    return out


def add_run_options(parser: argparse.ArgumentParser, frameworks, *, steps: int, repeats: int, out: Path) -> None:
    """The options of a step-time benchmark's runs (shared with benchmarks/trl_step_time.py)."""
    parser.add_argument("--steps", type=int, default=steps, help="steps per run (the first is excluded)")
    parser.add_argument("--repeats", type=int, default=repeats, help="interleaved rounds per model")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--group", type=int, default=8, help="G, completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process (0 = default)")
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--worker", choices=frameworks, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["0.3m", "2.4m", "testbed"], choices=list(common.MODELS))
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS,
                        help="trl, popo's grpo and popo, the -prev variants (before the lean decode step) and the "
                             "-base variants (before the first optimisations)")
    add_run_options(parser, FRAMEWORKS, steps=30, repeats=3, out=common.RESULTS / "step_time_vs_trl")
    args = parser.parse_args(argv)
    if args.worker:
        args.framework = args.worker
        return worker(args)

    common.set_threads(args.threads)  # the workers set it too; this keeps the recorded machine facts the same
    load_before = [round(x, 2) for x in os.getloadavg()]
    runs: dict[tuple[str, str], list[dict]] = {}
    ratios: dict[tuple[str, str], list[float]] = {}
    cpu_ratios: dict[tuple[str, str], list[float]] = {}
    for model in args.models:
        common.model_path(model)  # build once, outside the timed processes
        for rep in range(args.repeats):
            order = args.frameworks[rep % len(args.frameworks):] + args.frameworks[: rep % len(args.frameworks)]
            medians, cpu = {}, {}
            for fw in order:
                result = launch(args, fw, model)
                runs.setdefault((model, fw), []).append(result)
                medians[fw], cpu[fw] = run_median(result, "step_s"), run_median(result, "step_cpu_s")
                print(f"{model:8} round {rep + 1}  {fw:5} median step {medians[fw]:.4f} s (CPU {cpu[fw]:.4f} s)  "
                      f"peak RSS {result['peak_rss_mb']:.0f} MiB  threads {result['torch_threads']}", flush=True)
            if "trl" in medians:
                for fw in FRAMEWORKS[1:]:
                    if fw in medians:
                        ratios.setdefault((model, fw), []).append(medians["trl"] / medians[fw])
                        cpu_ratios.setdefault((model, fw), []).append(cpu["trl"] / cpu[fw])

    rows = []
    for (model, fw), rs in sorted(runs.items(), key=lambda kv: (args.models.index(kv[0][0]),
                                                                FRAMEWORKS.index(kv[0][1]))):
        row = {"model": model, "framework": fw, **summarise(rs)}
        if (model, fw) in ratios:
            row["trl_over_ours"] = common.median(ratios[(model, fw)])
            row["round_ratios"] = [round(r, 3) for r in ratios[(model, fw)]]
            row["trl_over_ours_cpu"] = common.median(cpu_ratios[(model, fw)])
        rows.append(row)
    result = {
        "command": common.command_line(), "loadavg_before": load_before, "machine": common.machine(),
        "versions": common.versions(("trl", "datasets")),
        "settings": {"prompts_per_step": args.prompts, "group_size": args.group,
                     "max_new_tokens": args.max_new_tokens, "steps_per_run": args.steps, "repeats": args.repeats,
                     "lr": args.lr, "dtype": "float32", "kl_beta": 0.0, "temperature": 1.0, "top_p": 1.0,
                     "top_k": "off", "gradient_checkpointing": False,
                     "torch_threads": args.threads},
        "rows": rows,
    }
    print_table(rows)
    common.write_result("step_time_vs_trl", result, render_markdown(result), None if args.no_write else args.out)
    return 0


def _cells(r: dict) -> list:
    nan = float("nan")
    return [r["model"], f"{r['params'] / 1e6:.2f}M", r["framework"], round(r["median_step_s"], 4),
            round(r["median_step_cpu_s"], 4), round(r["median_generate_s"], 4),
            round(r.get("median_train_s", nan), 4), round(r["positive_fraction"], 3),
            round(r.get("trl_over_ours", nan), 2), round(r.get("trl_over_ours_cpu", nan), 2),
            round(r["peak_rss_mb"]), ", ".join(str(s) for s in r["run_medians_s"])]


COLUMNS = ["model", "params", "framework", "step s", "step CPU s", "generate s", "train s", "positive frac",
           "TRL / ours", "TRL / ours (CPU)", "peak RSS MiB", "per-run step s"]


def print_table(rows: list[dict]) -> None:
    print("\n".join(common.table(COLUMNS, [_cells(r) for r in rows])))


def render_markdown(result: dict) -> str:
    s = result["settings"]
    lines = common.header("Step time: popo (GRPO, POPO) vs TRL GRPOTrainer", result)
    lines += [
        f"Settings: {s['prompts_per_step']} prompts x G = {s['group_size']} per step, up to "
        f"{s['max_new_tokens']} new tokens, temperature {s['temperature']}, top-p {s['top_p']}, top-k off, "
        f"fp32, KL beta 0, lr {s['lr']}, no gradient checkpointing, torch threads {s['torch_threads']} per "
        f"process. {s['repeats']} interleaved rounds per "
        f"model, each run a fresh process of {s['steps_per_run']} steps; a run's step time is the median "
        "over its steps after the first, the table gives the median over rounds.",
        "",
        *common.table(COLUMNS, [_cells(r) for r in result["rows"]]),
        "",
        "TRL / ours = TRL's median step time divided by ours, per round, median over rounds (higher is "
        "better for popo). generate s = time inside `model.generate` for TRL, the engine's generate phase "
        "for popo; train s = popo's update phase (forward, backward, optimizer step). Positive frac = share "
        "of rollouts with reward 1 (testbed verifier for the testbed model; hash reward otherwise). "
        "Peak RSS = the whole process's maximum resident set (interpreter, libraries, model, optimizer). "
        "-prev = popo before the lean decode step (`rollout.lean_decode=false`); -base = popo before the first "
        "optimisations (no shared prefill, finished rows kept, GRPO forwarding zero-advantage rows).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
