"""`popo eval`: a model on named benchmarks (or the testbed's held-out split) through the one evaluation
path (`popo.evaluate`), reported as greedy accuracy, avg@k, unbiased pass@k and maj@k with the protocol
stated. With the same model, protocol and seed it reports what the trainer's evaluation reports."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from popo.build import load_policy, resolve_device, resolve_model_path, testbed_task
from popo.config import load_config
from popo.errors import SetupError
from popo.evaluate import EvalProtocol, EvalResult, eval_seed, evaluate
from popo.metrics import maj_at_k, summarize
from popo.rollout import HFEngine


def _benchmark(name: str, args, config):
    if name == "testbed":
        from popo.testbed.task import AdditionVerifier

        return testbed_task(config).test_examples(), AdditionVerifier(), "plain"
    from popo.data.benchmarks import load_benchmark
    from popo.rewards import MathVerifier

    return load_benchmark(name, args.data_dir), MathVerifier(), args.template


def run_eval(args: argparse.Namespace) -> dict:
    config = load_config(None, [*getattr(args, "overrides", []), f"model.name={args.model}"])
    device = resolve_device(config.model.device)
    model, tokenizer = load_policy(resolve_model_path(config), config, device)
    engine = HFEngine(model, tokenizer, max_prompt_tokens=4096, max_batch_rollouts=config.rollout.max_batch_rollouts)
    protocol = EvalProtocol(k=args.samples, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, seed=eval_seed(args.seed), zero_if_truncated=args.zero_if_truncated)
    results, records = {}, []
    for name in [b.strip() for b in args.benchmarks.split(",") if b.strip()]:
        examples, verifier, template = _benchmark(name, args, config)
        examples = examples[: args.limit] if args.limit else examples
        if not examples:
            raise SetupError(f"benchmark {name!r} has no problems")
        if template == "plain":
            prompts = [ex.problem for ex in examples]
        else:
            from popo.data.templates import render_prompt

            prompts = [render_prompt(ex.problem, template, tokenizer) for ex in examples]
        with verifier:
            outcome = evaluate(engine, prompts, examples, verifier, protocol)
        results[name] = _benchmark_numbers(outcome, args.samples)
        records += _records(name, examples, outcome, args.samples)
    described = {"model": args.model, "template": args.template, "k": args.samples, "temperature": args.temperature,
                 "top_p": args.top_p, "max_new_tokens": args.max_new_tokens, "seed": args.seed,
                 "zero_if_truncated": args.zero_if_truncated, "device": str(device)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"protocol": described, "results": results}, indent=1))
    out.with_suffix(".records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out.with_suffix(".md").write_text(_markdown(described, results))
    print(_markdown(described, results))
    return results


def _benchmark_numbers(outcome: EvalResult, k: int) -> dict:
    """The evaluation summary (the trainer's numbers) plus pass@j / avg@j for j < k and maj@k."""
    n = len(outcome.greedy_texts)
    numbers: dict = {"problems": n}
    if k > 0:
        correct = outcome.correct.tolist()
        numbers.update(summarize(correct, sorted({1, *[x for x in (2, 4, 8, 16, 32, 64) if x <= k]})))
        extracted = [_final_answer(t) for t in outcome.sample_texts]
        numbers[f"maj@{k}"] = sum(maj_at_k(extracted[i * k:(i + 1) * k], correct[i]) for i in range(n)) / n
    numbers.update(outcome.summary())
    return numbers


def _records(name: str, examples, outcome: EvalResult, k: int) -> list[dict]:
    return [{"benchmark": name, "id": ex.id, "greedy": outcome.greedy_texts[i],
             "greedy_correct": float(outcome.greedy_correct[i]), "samples": outcome.sample_texts[i * k:(i + 1) * k],
             "extracted": [_final_answer(t) for t in outcome.sample_texts[i * k:(i + 1) * k]],
             "correct": outcome.correct[i].tolist()} for i, ex in enumerate(examples)]


def _final_answer(text: str) -> str | None:
    from popo.rewards import last_boxed_content

    boxed = last_boxed_content(text)
    if boxed is not None:
        return boxed.strip()
    tail = text.strip().rsplit("=", 1)
    return tail[-1] if len(tail) == 2 and tail[-1].isdigit() else None


def _markdown(protocol: dict, results: dict) -> str:
    keys = sorted({k for r in results.values() for k in r if k not in ("problems", "n")})
    lines = ["Protocol: " + ", ".join(f"{k}={v}" for k, v in protocol.items()), "",
             "| benchmark | problems | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 2)]
    for name, r in results.items():
        lines.append(f"| {name} | {r['problems']} | " + " | ".join(f"{r.get(k, float('nan')):.3f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"
