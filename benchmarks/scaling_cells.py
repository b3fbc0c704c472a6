"""One process of benchmarks/scaling.py: the benchmark's models (random Qwen2 shapes whose completions
always run to the limit), the fixed-fraction stand-in reward, peak-memory bookkeeping, and the timed
steps of one (framework, model, fraction) over its completion lengths, printed as `CELL {json}` lines.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import common
from scaling_report import CONTEXT

NO_EOS = "<noeos>"


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    intermediate: int
    heads: int = 4
    kv_heads: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SHAPES = {"1m": Shape(128, 4, 512), "10m": Shape(256, 10, 1024), "50m": Shape(512, 12, 2048)}


# ---------------------------------------------------------------- models and reward (shared by every framework)
def model_path(name: str) -> Path:
    """A `save_pretrained` folder for `name` (built once, cached next to benchmarks/common.py's models):
    a random Qwen2 of shape SHAPES[name] whose tokenizer's end-of-sequence token (`<noeos>`) has the id
    one past the model's vocabulary, so no completion ever ends before the limit."""
    folder = Path(os.environ.get("POPO_BENCH_CACHE", common.MODEL_CACHE)) / f"scaling-{name}"
    if (folder / "config.json").is_file():
        return folder
    from popo.testbed.model import TinyModelSpec, build_tiny_qwen2
    from popo.testbed.tokenizer import build_tokenizer

    s = SHAPES[name]
    tokenizer = build_tokenizer()
    model = build_tiny_qwen2(tokenizer, TinyModelSpec(
        hidden_size=s.hidden, num_hidden_layers=s.layers, num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads, intermediate_size=s.intermediate, max_position_embeddings=CONTEXT), seed=0)
    tokenizer.add_special_tokens({"eos_token": NO_EOS})
    if tokenizer.eos_token_id != model.config.vocab_size:
        raise RuntimeError(f"{NO_EOS} got id {tokenizer.eos_token_id}, expected {model.config.vocab_size}")
    model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
    tokenizer.model_max_length = CONTEXT
    partial = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(folder)  # atomic: a half-written folder is never taken for a model
    return folder


def fraction_rewards(texts: list[str], fraction: float, group: int) -> list[float]:
    """1.0 for the round(fraction * group) completions of each consecutive group of `group` whose text
    hashes lowest (ties by position), else 0.0: the positive fraction is exact for any sampled texts."""
    if len(texts) % group:
        raise ValueError(f"{len(texts)} completions are not whole groups of {group}")
    k, out = round(fraction * group), []
    for start in range(0, len(texts), group):
        keys = sorted(range(group), key=lambda j: (zlib.crc32(texts[start + j].encode("utf-8")), j))
        chosen = set(keys[:k])
        out += [1.0 if j in chosen else 0.0 for j in range(group)]
    return out


# ---------------------------------------------------------------- measurement helpers (worker side)
def rss_mb(field: str) -> float:
    """VmHWM (peak) or VmRSS (current) of this process in MiB; NaN where /proc is missing."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return float("nan")
    match = re.search(rf"{field}:\s+(\d+)\s+kB", text)
    return int(match.group(1)) / 1024 if match else float("nan")


def reset_peak_rss() -> bool:
    """Give freed heap back to the system and restart the peak-RSS count (Linux); False if unsupported."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class StepBudget:
    """Which steps of a cell are measured, and when the cell stops (the same rule for every framework)."""

    def __init__(self, args):
        self.warmup, self.keep_first_s = args.warmup, args.keep_first_s
        self.cell_s, self.max_steps = args.cell_seconds, args.max_steps
        self.walls: list[float] = []
        self.first_counted = False

    @property
    def max_total(self) -> int:
        return self.warmup + self.max_steps

    def measured(self) -> slice:
        return slice(0 if self.first_counted else self.warmup, None)

    def add(self, wall: float) -> bool:
        """Record one step's wall time; True to run another step."""
        self.walls.append(wall)
        if len(self.walls) == 1 and self.warmup and wall >= self.keep_first_s:
            self.first_counted = True  # one-time costs are a negligible share of so long a step
        done = self.walls[self.measured()]
        if not done:
            return True
        return len(done) < self.max_steps and sum(done) < self.cell_s


def _prompts(count: int):
    from popo.testbed.addition import AdditionTask

    examples = AdditionTask(digits=3, test_size=1000).train_examples(count, seed=0)
    return [ex.problem for ex in examples], [ex.answer for ex in examples]


def _prompt_count(args, budget: StepBudget) -> int:
    return args.prompts * (budget.max_total + 1) * 4


def run_popo_cell(args, length: int) -> dict:
    """One cell of popo's trainer (`args.framework` = popo or grpo) at completion limit `length`."""
    from popo.build import build_trainer
    from popo.config import load_config

    budget = StepBudget(args)
    overrides = common.trainer_overrides(
        model=args.model_path, algo=args.framework, group=args.group, prompts=args.prompts,
        max_new_tokens=length, lr=args.lr, steps=budget.max_total, train_size=_prompt_count(args, budget),
        out_dir=args.scratch)
    trainer = build_trainer(load_config(None, overrides), log=lambda s: None)
    trainer.verifier = common.text_verifier(lambda texts: fraction_rewards(texts, args.fraction, args.group))
    lengths: list[list[int]] = []
    engine_generate = trainer.engine.generate

    def generate(*a, **k):
        rollouts = engine_generate(*a, **k)
        lengths.append([int(x) for x in rollouts.lengths.tolist()])
        return rollouts

    trainer.engine.generate = generate
    target_s: list[float] = []
    models = trainer.models
    if models.target is not None:  # the EMA target's no-grad forward, inside the train phase
        target_features = models.target_features

        def timed_target(*a, **k):
            start = time.perf_counter()
            out = target_features(*a, **k)
            target_s[-1] += time.perf_counter() - start
            return out

        models.target_features = timed_target
    steps, phases, positives, forwarded = [], {k: [] for k in ("generate", "train", "other", "verify", "ema",
                                                                "target_forward")}, [], []
    for step in range(budget.max_total):
        target_s.append(0.0)
        start = time.perf_counter()
        record = trainer.train_step(step)
        wall = time.perf_counter() - start
        seconds = {k[5:]: v for k, v in record.items() if k.startswith("time/")}
        train = seconds.get("train", 0.0) + seconds.get("ema", 0.0)
        steps.append(wall)
        phases["generate"].append(seconds.get("generate", 0.0))
        phases["train"].append(train)
        phases["other"].append(wall - seconds.get("generate", 0.0) - train)
        phases["verify"].append(seconds.get("verify", 0.0))
        phases["ema"].append(seconds.get("ema", 0.0))
        phases["target_forward"].append(target_s[-1])
        positives.append(record["pass_rate"])
        forwarded.append(record.get("forwarded_rollouts", 0))
        if not budget.add(wall):
            break
    if trainer.writer is not None:
        trainer.writer.close()
    if models.target is None:
        del phases["target_forward"], phases["ema"]
    return {"step_s": steps, "phases_s": phases, "positive_fraction": positives, "forwarded_rows": forwarded,
            "completion_lengths": lengths, "first_counted": budget.first_counted,
            "measured_from": 0 if budget.first_counted else budget.warmup,
            "params": sum(p.numel() for p in trainer.models.policy.parameters())}


def run_trl_cell(args, length: int) -> dict:
    """One cell of TRL's GRPOTrainer at completion limit `length`."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    budget = StepBudget(args)
    problems, answers = _prompts(_prompt_count(args, budget))
    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=torch.float32)

    def reward(prompts, completions, **kwargs):
        return fraction_rewards(list(completions), args.fraction, args.group)

    config = GRPOConfig(
        output_dir=args.scratch, per_device_train_batch_size=args.prompts * args.group,
        gradient_accumulation_steps=1, num_generations=args.group, max_completion_length=length,
        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, loss_type="dapo", learning_rate=args.lr,
        lr_scheduler_type="constant", max_grad_norm=1.0, max_steps=budget.max_total, use_cpu=True, bf16=False,
        fp16=False, gradient_checkpointing=False, report_to="none", logging_strategy="no", save_strategy="no",
        disable_tqdm=True, seed=0, dataloader_num_workers=0, log_completions=False)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, processing_class=tokenizer,
                          train_dataset=Dataset.from_dict({"prompt": problems, "answer": answers}))
    generate_s, score_s, positives, lengths = [], [], [], []

    def timed(method, into, after):
        def call(*a, **k):
            start = time.perf_counter()
            out = method(*a, **k)
            into.append(time.perf_counter() - start)
            after(out)
            return out
        return call

    trainer._generate = timed(trainer._generate, generate_s,
                              lambda out: lengths.append([len(ids) for ids in out[1]]))
    trainer._calculate_rewards = timed(trainer._calculate_rewards, score_s,
                                       lambda r: positives.append(float((r[:, 0] > 0).float().mean())))
    steps: list[float] = []

    class StepClock(TrainerCallback):
        """Wall time from a step's start (before generation) to its end (after the optimizer step)."""

        def on_step_begin(self, args_, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args_, state, control, **kwargs):
            wall = time.perf_counter() - self.start
            steps.append(wall)
            if not budget.add(wall):
                control.should_training_stop = True

    trainer.add_callback(StepClock())
    trainer.train()
    train = [s - g - r for s, g, r in zip(steps, generate_s, score_s)]
    return {"step_s": steps, "phases_s": {"generate": generate_s[:len(steps)], "train": train,
                                          "other": score_s[:len(steps)], "score": score_s[:len(steps)]},
            "positive_fraction": positives, "forwarded_rows": [args.prompts * args.group] * len(steps),
            "completion_lengths": lengths, "first_counted": budget.first_counted,
            "measured_from": 0 if budget.first_counted else budget.warmup,
            "params": sum(p.numel() for p in model.parameters())}


def worker(args) -> int:
    """Run `args.lengths` in increasing order; print one `CELL <json>` line per finished cell."""
    import torch

    common.set_threads(args.threads)
    scratch = tempfile.TemporaryDirectory(prefix="bench-scaling-")  # the trainers' output folders, removed at exit
    for length in sorted(args.lengths):
        args.scratch = str(Path(scratch.name) / f"len{length}")
        reset_ok = reset_peak_rss()
        start_rss, clock = rss_mb("VmRSS"), time.perf_counter()
        cell = run_trl_cell(args, length) if args.framework == "trl" else run_popo_cell(args, length)
        gc.collect()
        cell.update(length=length, peak_rss_mb=rss_mb("VmHWM") if reset_ok else common.peak_rss_mb(),
                    peak_is_cell_own=reset_ok, start_rss_mb=start_rss, cell_wall_s=time.perf_counter() - clock,
                    torch_threads=torch.get_num_threads())
        print("CELL " + json.dumps(cell), flush=True)
        print(f"  {args.framework:4} {args.model:3} f={args.fraction} L={length:4}: "
              f"{len(cell['step_s'])} steps in {cell['cell_wall_s']:.1f} s", file=sys.stderr, flush=True)
    scratch.cleanup()
    return 0


# ---------------------------------------------------------------- cost model (estimates only)
