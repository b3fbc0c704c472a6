"""Rollout generation: popo's HFEngine against a bare `model.generate` call on the same batch.

Bare = what a trainer without popo's engine runs (TRL's transformers path): left-padded prompt ids
already on the device, `generate(do_sample=True, temperature=1, top_k=0, top_p=1)`, nothing else.
Engine = `HFEngine.generate(prompts, G, ...)`: tokenisation (cached), per-row seeded sampling with the
sampled tokens' log-probs, completion masks, decoding to text: everything a training step needs.
Overhead = engine time / bare time - 1, per interleaved round, median over rounds. Engine variants:
`engine` = popo's engine now (`LeanDecoder` steps); `engine-model` = the same loop stepping with the
model's own forward (`HFEngine(lean_decode=False)`, the decode path before docs/performance.md's
"lean decode"); `engine-generate` = the engine before the first optimisations (sampler inside
`generate`, no shared prompt prefill, finished rows kept).

The second table is generated tokens per second (completion tokens up to and including the first
end-of-sequence) against the number of rows per call. The compute floor is the model's full-forward
FLOP rate on this machine (the faster of teacher-forced forwards over rows x (prompt + limit) and
rows x 128 tokens, FLOPs counted from the weights and the attention), turned into tokens per second with
the FLOPs of one decoded token.

    .venv/bin/python benchmarks/generation.py
    .venv/bin/python benchmarks/generation.py --models testbed --batch-sizes 8 64 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def load(model: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = common.model_path(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return policy, tokenizer


def prompts_for(count: int) -> list[str]:
    from popo.testbed.addition import AdditionTask

    return [ex.problem for ex in AdditionTask(digits=3, test_size=1000).train_examples(count, seed=0)]


def bare_generate(policy, tokenizer, prompts: list[str], group: int, max_new_tokens: int, seed: int):
    """(wall s, CPU s, generated tokens) of one plain sampled `generate` call; tokenisation not timed."""
    import torch

    batch = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    ids = batch["input_ids"].repeat_interleave(group, dim=0)  # [N, P]
    mask = batch["attention_mask"].repeat_interleave(group, dim=0)  # [N, P]
    torch.manual_seed(seed)
    with common.Clock() as clock, torch.no_grad():
        out = policy.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=True,
                              temperature=1.0, top_k=0, top_p=1.0, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id)
    completion = out[:, ids.shape[1]:]  # [N, C]
    is_eos = completion == tokenizer.eos_token_id
    kept = (is_eos.long().cumsum(1) - is_eos.long()) == 0  # up to and including the first eos
    return clock.wall, clock.cpu, int(kept.sum())


def engine_generate(engine, prompts: list[str], group: int, max_new_tokens: int, seed: int):
    from popo.rollout import SamplingParams

    with common.Clock() as clock:
        rollouts = engine.generate(prompts, group, SamplingParams(max_new_tokens, 1.0, 1.0), seed=seed)
    return clock.wall, clock.cpu, int(rollouts.lengths.sum())


PATHS = ("bare", "engine", "engine-model", "engine-generate")
ENGINES = PATHS[1:]


def token_flops(policy, context: float) -> float:
    """FLOPs of one token through the model: 2 per weight of every linear layer (the tied or untied
    output layer included, the embedding lookup not) plus the attention products, 4 x layers x
    (heads x head_dim) x the number of keys it attends to."""
    import torch

    linear = sum(m.weight.numel() for m in policy.modules() if isinstance(m, torch.nn.Linear))
    config = policy.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2.0 * linear + 4.0 * config.num_hidden_layers * config.num_attention_heads * head_dim * context


def compute_floor(policy, rows: int, width: int, repeats: int = 5) -> dict:
    """The model's full-forward FLOP rate: a teacher-forced forward over [rows, width] tokens (causal, so
    a token attends to (t + 1) keys), median of `repeats` timed calls after one warm-up."""
    import torch

    ids = torch.randint(3, policy.config.vocab_size, (rows, width))
    flops = rows * sum(token_flops(policy, t + 1) for t in range(width))
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            with common.Clock() as clock:
                policy(input_ids=ids)
            if i:
                times.append(clock.wall)
    seconds = common.median(times)
    return {"rows": rows, "width": width, "flops": flops, "seconds": seconds, "gflops_per_s": flops / seconds / 1e9}


def _one(which, policy, tokenizer, engines, prompts, args, seed):
    if which == "bare":
        return bare_generate(policy, tokenizer, prompts, args.group, args.max_new_tokens, seed)
    return engine_generate(engines[which], prompts, args.group, args.max_new_tokens, seed)


def _order(rep: int) -> tuple[str, ...]:
    k = rep % len(PATHS)
    return PATHS[k:] + PATHS[:k]


def _compare(samples: dict) -> dict:
    bare = samples["bare"]
    out = {"bare_s": common.median([b[0] for b in bare]), "bare_cpu_s": common.median([b[1] for b in bare]),
           "bare_tokens": common.median([b[2] for b in bare])}
    for name in ENGINES:
        runs, key = samples[name], name.replace("-", "_")
        out[f"{key}_s"] = common.median([e[0] for e in runs])
        out[f"{key}_cpu_s"] = common.median([e[1] for e in runs])
        out[f"{key}_tokens"] = common.median([e[2] for e in runs])
        out[f"{key}_overhead"] = common.median([e[0] / b[0] for b, e in zip(bare, runs)]) - 1.0
        out[f"{key}_overhead_cpu"] = common.median([e[1] / b[1] for b, e in zip(bare, runs)]) - 1.0
        out[f"{key}_round_ratios"] = [round(e[0] / b[0], 3) for b, e in zip(bare, runs)]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["testbed", "2.4m"], choices=list(common.MODELS))
    parser.add_argument("--prompts", type=int, default=8, help="prompts in the overhead batch")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 64, 128, 256],
                        help="rows per call for the tokens/s table (multiples of --group)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch default)")
    parser.add_argument("--out", type=Path, default=common.RESULTS / "generation")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    from popo.rollout import HFEngine

    common.set_threads(args.threads)

    load_before = [round(x, 2) for x in os.getloadavg()]
    overhead_rows, throughput_rows = [], []
    for model in args.models:
        policy, tokenizer = load(model)
        most = max(args.batch_sizes + [args.prompts * args.group])
        engines = {"engine": HFEngine(policy, tokenizer, max_batch_rollouts=most),
                   "engine-model": HFEngine(policy, tokenizer, max_batch_rollouts=most, lean_decode=False),
                   "engine-generate": HFEngine(policy, tokenizer, max_batch_rollouts=most,
                                               share_prompt_prefill=False, drop_finished_rows=False)}
        prompts = prompts_for(max(args.batch_sizes) // args.group + args.prompts)
        batch = prompts[: args.prompts]
        for seed in range(2):  # warm-up (allocator, tokeniser cache) for both paths
            for which in PATHS:
                _one(which, policy, tokenizer, engines, batch, args, seed)
        samples = {name: [] for name in PATHS}  # (wall, cpu, tokens) per round
        for rep in range(args.repeats):
            for which in _order(rep):
                samples[which].append(_one(which, policy, tokenizer, engines, batch, args, rep))
        row = {"model": model, "rows": args.prompts * args.group, **_compare(samples)}
        prompt_width = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in batch)
        # the floor is the best full-forward rate: at the step's own shape and at a longer one
        floors = [compute_floor(policy, row["rows"], w) for w in (prompt_width + args.max_new_tokens, 128)]
        floor = max(floors, key=lambda f: f["gflops_per_s"])
        row["floor_candidates"] = floors
        # FLOPs of a decoded token at a typical context: the prompt plus half the completion limit
        per_token = token_flops(policy, prompt_width + args.max_new_tokens / 2)
        row["floor"] = {**floor, "token_flops": per_token,
                        "tokens_per_s": floor["gflops_per_s"] * 1e9 / per_token}
        for name in ENGINES:
            key = name.replace("-", "_")
            row[f"{key}_floor_share"] = row[f"{key}_tokens"] / row[f"{key}_s"] / row["floor"]["tokens_per_s"]
        overhead_rows.append(row)
        print(f"{model:8} {row['rows']} rows: bare {row['bare_s']:.3f} s, engine {row['engine_s']:.3f} s "
              f"({100 * row['engine_overhead']:+.1f}% wall, {100 * row['engine_overhead_cpu']:+.1f}% CPU), "
              f"engine-model {row['engine_model_s']:.3f} s, engine-generate {row['engine_generate_s']:.3f} s; "
              f"floor {row['floor']['gflops_per_s']:.1f} GFLOP/s = {row['floor']['tokens_per_s']:.0f} tokens/s, "
              f"engine at {100 * row['engine_floor_share']:.0f}% of it", flush=True)
        for rows in args.batch_sizes:
            sub = prompts[: max(1, rows // args.group)]
            samples = {name: [] for name in PATHS}
            for rep in range(max(1, args.repeats // 2)):
                for which in _order(rep):
                    samples[which].append(_one(which, policy, tokenizer, engines, sub, args, rep))
            entry = {"model": model, "rows": len(sub) * args.group}
            for which, runs in samples.items():
                entry[f"{which}_tokens_per_s"] = common.median([t / w for w, c, t in runs])
                entry[f"{which}_tokens_per_cpu_s"] = common.median([t / c for w, c, t in runs])
            throughput_rows.append(entry)
            print(f"{model:8} {entry['rows']:4} rows: bare {entry['bare_tokens_per_s']:8.0f} tok/s, "
                  f"engine {entry['engine_tokens_per_s']:8.0f} tok/s", flush=True)

    settings = {"group_size": args.group, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
                "threads": args.threads, "temperature": 1.0, "top_p": 1.0}
    result = {"command": common.command_line(), "loadavg_before": load_before, "machine": common.machine(),
              "versions": common.versions(), "settings": settings, "overhead": overhead_rows,
              "throughput": throughput_rows}
    common.write_result("generation", result, render_markdown(result), None if args.no_write else args.out)
    return 0


def _overhead_cells(rows: list[dict]) -> list[list]:
    out = []
    for r in rows:
        out.append([r["model"], r["rows"], "bare", round(r["bare_s"], 4), round(r["bare_cpu_s"], 4), "-", "-",
                    r["bare_tokens"], "-"])
        for name in ENGINES:
            key = name.replace("-", "_")
            out.append([r["model"], r["rows"], name, round(r[f"{key}_s"], 4), round(r[f"{key}_cpu_s"], 4),
                         f"{100 * r[f'{key}_overhead']:+.1f}%", f"{100 * r[f'{key}_overhead_cpu']:+.1f}%",
                         r[f"{key}_tokens"], ", ".join(map(str, r[f"{key}_round_ratios"]))])
    return out


def _floor_cells(rows: list[dict]) -> list[list]:
    out = []
    for r in rows:
        f = r["floor"]
        shares = []
        for name in ENGINES:
            key = name.replace("-", "_")
            shares.append(f"{round(r[key + '_tokens'] / r[key + '_s'])} ({100 * r[key + '_floor_share']:.0f}%)")
        out.append([r["model"], r["rows"], f"{f['rows']} x {f['width']}", round(f["gflops_per_s"], 1),
                    round(f["token_flops"] / 1e6, 3), round(f["tokens_per_s"]), *shares])
    return out


def render_markdown(result: dict) -> str:
    s = result["settings"]
    lines = common.header("Generation: popo's engine vs bare `model.generate`", result)
    lines += [
        f"Up to {s['max_new_tokens']} new tokens, temperature {s['temperature']}, top-p {s['top_p']}, "
        f"G = {s['group_size']}, fp32, torch threads {s['threads']}; {s['repeats']} interleaved rounds (the "
        "paths take turns going first).",
        "",
        "## Overhead on one step's batch",
        "",
        *common.table(["model", "rows", "path", "wall s", "CPU s", "vs bare (wall)", "vs bare (CPU)", "tokens",
                       "per-round / bare (wall)"], _overhead_cells(result["overhead"])),
        "",
        "vs bare = median over rounds of path time / bare time, minus 1 (negative = faster than a bare "
        "`generate`). engine = popo's engine now (`LeanDecoder` steps); engine-model = the same loop stepping "
        "with the model's own forward (the decode path before the lean decoder); engine-generate = the "
        "engine before the first optimisations (sampler inside `generate`, prompt prefill per row, finished "
        "rows kept). Tokens = completion tokens "
        "up to and including the first end-of-sequence (bare `generate` draws different samples from the "
        "engine's seeded ones, so lengths differ slightly on the testbed model).",
        "",
        "## Compute floor",
        "",
        *common.table(["model", "rows", "forward measured", "full-forward GFLOP/s", "MFLOP per decoded token",
                       "floor tokens/s", *[f"{n} tokens/s (share of floor)" for n in ENGINES]],
                      _floor_cells(result["overhead"])),
        "",
        "Floor = the full-forward FLOP rate (the faster of a forward over the step's rows x (prompt + limit) "
        "tokens and one over rows x 128 tokens) divided by the FLOPs of one decoded token (at the prompt plus half "
        "the completion limit). A decoding step multiplies [rows, hidden] by each weight matrix: at 64 rows "
        "the products alone run at about the full-forward rate, so the share of the floor is, in effect, "
        "how much of a step is spent outside the matrix products.",
        "",
        "## Tokens per second against rows per call",
        "",
        *common.table(["model", "rows", *[f"{p} tokens/s" for p in PATHS],
                       *[f"{p} tokens/CPU-s" for p in PATHS]],
                      [[r["model"], r["rows"], *[round(r[f"{p}_tokens_per_s"]) for p in PATHS],
                        *[round(r[f"{p}_tokens_per_cpu_s"]) for p in PATHS]] for r in result["throughput"]]),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
