"""`popo eval`: batched generation on named benchmarks (or the testbed's held-out split), scored with the
verifier, reported as greedy accuracy, avg@k, unbiased pass@k and maj@k with the protocol stated."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


from popo.build import SetupError, load_policy, resolve_device, resolve_model_path
from popo.config import load_config
from popo.evaluate import score_rollouts
from popo.metrics import maj_at_k, summarize
from popo.rollout import HFEngine, SamplingParams


def _benchmark(name: str, args, config):
    if name == "testbed":
        from popo.build import testbed_task
        from popo.testbed.task import AdditionVerifier

        return testbed_task(config).test_examples(), AdditionVerifier(), "plain"
    from popo.data.benchmarks import load_benchmark
    from popo.rewards.math import MathVerifier

    return load_benchmark(name, args.data_dir), MathVerifier(), args.template


def run_eval(args: argparse.Namespace) -> dict:
    config = load_config(None, [f"model.name={args.model}"])
    device = resolve_device("auto")
    model, tokenizer = load_policy(resolve_model_path(config), config, device)
    engine = HFEngine(model, tokenizer, max_prompt_tokens=4096)
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
        answers = [ex.answer for ex in examples]
        with verifier:
            greedy = engine.generate(prompts, 1, SamplingParams(args.max_new_tokens, 0.0))
            g = score_rollouts(verifier, greedy.texts, answers, greedy.truncated, zero_if_truncated=False)
            k = args.samples
            s = engine.generate(prompts, k, SamplingParams(args.max_new_tokens, args.temperature, args.top_p),
                                seed=0)
            c = score_rollouts(verifier, s.texts, [a for a in answers for _ in range(k)], s.truncated,
                               zero_if_truncated=False).view(len(examples), k)
        extracted = [_final_answer(t) for t in s.texts]
        maj = sum(maj_at_k(extracted[i * k:(i + 1) * k], c[i].tolist()) for i in range(len(examples)))
        ks = sorted({1, *[x for x in (2, 4, 8, 16, 32, 64) if x <= k], k})
        results[name] = {"problems": len(examples), "greedy_acc": float(g.mean()),
                         **summarize(c.tolist(), ks), f"maj@{k}": maj / len(examples)}
        for i, ex in enumerate(examples):
            records.append({"benchmark": name, "id": ex.id, "greedy": greedy.texts[i], "greedy_correct": float(g[i]),
                            "samples": s.texts[i * k:(i + 1) * k], "extracted": extracted[i * k:(i + 1) * k],
                            "correct": c[i].tolist()})
    protocol = {"model": args.model, "template": args.template, "k": args.samples, "temperature": args.temperature,
                "top_p": args.top_p, "max_new_tokens": args.max_new_tokens, "device": str(device)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"protocol": protocol, "results": results}, indent=1))
    out.with_suffix(".records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out.with_suffix(".md").write_text(_markdown(protocol, results))
    print(_markdown(protocol, results))
    return results


def _final_answer(text: str) -> str | None:
    from popo.rewards.math import last_boxed_content

    boxed = last_boxed_content(text)
    if boxed is not None:
        return boxed.strip()
    tail = text.strip().rsplit("=", 1)
    return tail[-1] if len(tail) == 2 and tail[-1].isdigit() else None


def _markdown(protocol: dict, results: dict) -> str:
    keys = sorted({k for r in results.values() for k in r if k != "problems"})
    lines = ["Protocol: " + ", ".join(f"{k}={v}" for k, v in protocol.items()), "",
             "| benchmark | problems | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 2)]
    for name, r in results.items():
        lines.append(f"| {name} | {r['problems']} | " + " | ".join(f"{r.get(k, float('nan')):.3f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


