"""`popo eval`: a model on named benchmarks, benchmark files or the testbed's held-out split, through the
one evaluation path (`popo.evaluate`), reported as greedy accuracy, avg@k, unbiased pass@k and maj@k with
the protocol that was actually used. With the same model, protocol and seed it reports what the trainer's
evaluation reports."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from popo.build import resolve_device
from popo.data.prepare import is_testbed, testbed_examples
from popo.data.example import column_names
from popo.config import load_config
from popo.errors import SetupError
from popo.evaluate import EvalProtocol, EvalResult, eval_seed, evaluate
from popo.loading import load_policy, resolve_model_path
from popo.rewards.make import make_verifier
from popo.rollout import HFEngine
from popo.sampling_metrics import maj_at_k, summarize

MATH_TEMPLATE, MATH_MAX_NEW_TOKENS = "qwen-math", 1024
# `--protocol NAME`: the settings it stands for, each overridden by its own flag; the template and token limit
# apply to math benchmarks (the testbed keeps `plain` and rollout.max_new_tokens)
PROTOCOLS = {
    "default": {"samples": 4, "temperature": 0.6, "top_p": 0.95, "template": MATH_TEMPLATE,
                "max_new_tokens": MATH_MAX_NEW_TOKENS},
    # Qwen2.5-Math's evaluation: greedy decoding, its chat prompt, 3000 new tokens (the models' context is 4096)
    "qwen-math": {"samples": 0, "temperature": 0.0, "top_p": 1.0, "template": "qwen-math", "max_new_tokens": 3000},
    # DeepSeek-R1's: sampled at temperature 0.6 and top-p 0.95, no system prompt, up to 32768 new tokens
    "r1": {"samples": 16, "temperature": 0.6, "top_p": 0.95, "template": "qwen-boxed", "max_new_tokens": 32768},
}
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def apply_protocol(args: argparse.Namespace) -> dict:
    """Fill `--samples`, `--temperature` and `--top-p` left unset from `--protocol`; returns the protocol."""
    named = PROTOCOLS[getattr(args, "protocol", None) or "default"]
    for key in ("samples", "temperature", "top_p"):
        if getattr(args, key, None) is None:
            setattr(args, key, named[key])
    return named


def _benchmark(name: str, args, config, named: dict = PROTOCOLS["default"]):
    """(examples, verifier, template, max_new_tokens) of one `--benchmarks` entry under the protocol `named`."""
    if is_testbed(name):  # `testbed` reads the split training-time evaluation reads; `testbed:test` the test split
        examples = testbed_examples(config, name, split="validation")
        return (examples, make_verifier(config, source=name, columns=column_names(examples)),
                args.template or "plain", args.max_new_tokens or config.rollout.max_new_tokens)
    if name.endswith(FILE_SUFFIXES):
        from popo.data.sources import load_examples

        examples, _ = load_examples(name)
    else:
        from popo.data.benchmarks import load_benchmark

        examples = load_benchmark(name, args.data_dir)
    verifier = make_verifier(config, source=name, columns=column_names(examples))  # reward.functions, else math
    return examples, verifier, args.template or named["template"], args.max_new_tokens or named["max_new_tokens"]


def check_model_folder(model: str) -> None:
    """A run folder given as --model (it holds config.yaml and checkpoints, no model) is an error naming the
    policy folder of its latest checkpoint."""
    from popo.checkpoint import list_checkpoints

    path = Path(model)
    if not (path.is_dir() and (path / "config.yaml").is_file()) or (path / "config.json").is_file():
        return
    kept = [c for c in list_checkpoints(path) if (c / "policy").is_dir()]
    fix = (f"use --model {kept[-1] / 'policy'} (its latest checkpoint)" if kept
           else f"it has no checkpoint yet ({path / 'checkpoints'} is empty)")
    raise SetupError(f"--model {model} is a run folder, not a model folder: {fix}")


def run_of(model: str) -> Path | None:
    """The run folder that holds checkpoint policy `model` (RUN/checkpoints/step-N/policy), or None."""
    path = Path(model).resolve() if Path(model).exists() else None
    if path is None:
        return None
    for parent in list(path.parents)[:3]:
        if parent.name == "checkpoints" and (parent.parent / "config.yaml").is_file():
            return parent.parent
    return None


def apply_run_protocol(args: argparse.Namespace) -> str | None:
    """When --model is a checkpoint of a run and no --protocol was chosen, fill the sampling settings left
    unset (--samples, --temperature, --top-p, --max-new-tokens, --seed at 0, truncation) from the run's
    config.yaml, so the numbers are comparable with the run's own evaluations. Returns the line that says
    which protocol was used (None: not a run's checkpoint, or another protocol was asked for)."""
    run = run_of(args.model)
    if run is None or (getattr(args, "protocol", None) or "default") != "default":
        return None
    from popo.evaluate import run_protocol

    config = load_config(run / "config.yaml")
    used = run_protocol(config)
    for key, value in (("samples", used.k), ("temperature", used.temperature), ("top_p", used.top_p),
                       ("max_new_tokens", used.max_new_tokens)):
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if not getattr(args, "seed", 0):
        args.seed = config.train.seed
    if not getattr(args, "zero_if_truncated", False):
        args.zero_if_truncated = used.zero_if_truncated
    return (f"protocol: the run's own evaluation settings from {run / 'config.yaml'}: samples={args.samples}, "
            f"temperature={args.temperature}, top_p={args.top_p}, max_new_tokens={args.max_new_tokens}, "
            f"seed={args.seed}, zero_if_truncated={args.zero_if_truncated} (pass --protocol or these flags to "
            "change them)")


def run_testbed(model: str) -> list[str]:
    """The `testbed.*` settings of the run that holds checkpoint `model` as overrides (the task, its size and
    splits: `--benchmarks testbed` then reads the run's own validation split), else none."""
    run = run_of(model)
    if run is None:
        return []
    tb = load_config(run / "config.yaml").testbed
    return [f"testbed.{key}={getattr(tb, key)}" for key in
            ("task", "digits", "numbers", "max_number", "test_size", "validation_size")]


def run_eval(args: argparse.Namespace) -> dict:
    check_model_folder(args.model)
    from_run = apply_run_protocol(args)
    if from_run:
        print(from_run, file=sys.stderr)
    config = load_config(None, [*run_testbed(args.model), *getattr(args, "overrides", []), f"model.name={args.model}"])
    named = apply_protocol(args)
    device = resolve_device(config.model.device)
    model, tokenizer = load_policy(resolve_model_path(config), config, device)
    engine = HFEngine(model, tokenizer, max_prompt_tokens=4096, max_batch_rollouts=config.rollout.max_batch_rollouts,
                      lean_decode=config.rollout.lean_decode,
                      decode=config.rollout.hf_decode)
    context = getattr(model.config, "max_position_embeddings", None)
    results, records, used = {}, [], {}
    for name in [b.strip() for b in args.benchmarks.split(",") if b.strip()]:
        examples, verifier, template, max_new_tokens = _benchmark(name, args, config, named)
        examples = examples[: args.limit] if args.limit else examples
        if not examples:
            raise SetupError(f"benchmark {name!r} has no problems")
        from popo.data.templates import render_example  # chat rows: the tokenizer's chat template

        prompts = [render_example(ex, template, tokenizer) for ex in examples]
        _warn_over_context(name, prompts, tokenizer, context, max_new_tokens)
        protocol = EvalProtocol(k=args.samples, max_new_tokens=max_new_tokens, temperature=args.temperature,
                                top_p=args.top_p, seed=eval_seed(args.seed), zero_if_truncated=args.zero_if_truncated)
        with verifier:
            outcome = evaluate(engine, prompts, examples, verifier, protocol)
        used[name] = {"template": template, "max_new_tokens": max_new_tokens}
        results[name] = _benchmark_numbers(outcome, args.samples)
        records += _records(name, examples, prompts, outcome, args.samples)
    described = {"model": args.model, "protocol": "run's config.yaml" if from_run else (getattr(args, "protocol", None) or "default"),
                 "k": args.samples,
                 "temperature": args.temperature, "top_p": args.top_p,
                 "seed": args.seed, "zero_if_truncated": args.zero_if_truncated, "device": str(device),
                 "benchmarks": used}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"protocol": described, "results": results}, indent=1))
    out.with_suffix(".records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out.with_suffix(".md").write_text(_markdown(described, results))
    print(_markdown(described, results))
    return results


def _warn_over_context(name: str, prompts: list[str], tokenizer, context: int | None, max_new_tokens: int) -> None:
    if not context:
        return
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    over = sum(n + max_new_tokens > context for n in lengths)
    if over:
        print(f"warning: {name}: {over} of {len(prompts)} prompts plus max_new_tokens={max_new_tokens} exceed the "
              f"model's context of {context} tokens; their completions will be cut short", file=sys.stderr)


def _benchmark_numbers(outcome: EvalResult, k: int) -> dict:
    """The evaluation summary (the trainer's numbers) plus pass@j / avg@j for j < k and maj@k."""
    n = len(outcome.greedy_texts)
    numbers: dict = {"problems": n}
    if k > 0:
        correct = outcome.correct.tolist()
        numbers.update(summarize(correct, sorted({1, *[x for x in (2, 4, 8, 16, 32, 64) if x <= k]})))
        numbers["n"] = int(numbers["n"])
        extracted = [_final_answer(t) for t in outcome.sample_texts]
        numbers[f"maj@{k}"] = sum(maj_at_k(extracted[i * k:(i + 1) * k], correct[i]) for i in range(n)) / n
    numbers.update(outcome.summary())
    return numbers


def _records(name: str, examples, prompts: list[str], outcome: EvalResult, k: int) -> list[dict]:
    return [{"benchmark": name, "id": ex.id, "prompt": prompts[i], "gold": ex.answer,
             "greedy": outcome.greedy_texts[i], "greedy_correct": float(outcome.greedy_correct[i]),
             "samples": outcome.sample_texts[i * k:(i + 1) * k],
             "extracted": [_final_answer(t) for t in outcome.sample_texts[i * k:(i + 1) * k]],
             "correct": outcome.correct[i].tolist()} for i, ex in enumerate(examples)]


def _final_answer(text: str) -> str | None:
    from popo.rewards import last_boxed_content

    boxed = last_boxed_content(text)
    if boxed is not None:
        return boxed.strip()
    tail = text.strip().rsplit("=", 1)
    return tail[-1] if len(tail) == 2 and tail[-1].isdigit() else None


def _column_order(key: str) -> tuple:
    """greedy_acc, mean_length, then avg@k, pass@k and maj@k by k."""
    fixed = {"greedy_acc": 0, "mean_length": 1}
    if key in fixed:
        return (fixed[key], 0)
    family, _, k = key.partition("@")
    return ({"avg": 2, "pass": 3, "maj": 4}.get(family, 5), int(k) if k.isdigit() else 0)


def _markdown(protocol: dict, results: dict) -> str:
    common = {k: v for k, v in protocol.items() if k != "benchmarks"}
    keys = sorted({k for r in results.values() for k in r if k not in ("problems", "n")}, key=_column_order)
    lines = ["Protocol: " + ", ".join(f"{k}={v}" for k, v in common.items()), "",
             "| benchmark | problems | template | max_new_tokens | " + " | ".join(keys) + " |",
             "|" + " --- |" * (len(keys) + 4)]
    for name, r in results.items():
        used = protocol["benchmarks"][name]
        lines.append(f"| {name} | {r['problems']} | {used['template']} | {used['max_new_tokens']} | "
                     + " | ".join(f"{r.get(k, float('nan')):.3f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"
