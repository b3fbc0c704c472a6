"""Where one decoding step's time goes: `LeanDecoder.step` against its matrix products alone.

    .venv/bin/python benchmarks/profile_decode.py                       # testbed model, 64 rows
    .venv/bin/python benchmarks/profile_decode.py --model 2.4m --rows 256 --context 40

Times a step of `--rows` rows at `--context` cached columns (median of interleaved rounds), the same
step with the model's own forward (`HFEngine(lean_decode=False)`'s stepper), the step's matrix products
alone (the same shapes, nothing else), and the model's full-forward FLOP rate (the compute floor of
benchmarks/generation.py); then torch.profiler's self CPU time of the lean step by op group. Prints a
markdown summary (and writes it with --out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import generation  # noqa: E402

GROUPS = {  # torch.profiler op name -> group of the summary
    "products": ("aten::mm", "aten::addmm", "aten::bmm"),
    "copies and indexing": ("aten::copy_", "aten::index", "aten::index_select", "aten::embedding", "aten::cat",
                            "aten::_to_copy", "aten::clone", "aten::empty", "aten::empty_strided"),
    "views": ("aten::view", "aten::reshape", "aten::_reshape_alias", "aten::slice", "aten::select",
              "aten::as_strided", "aten::transpose", "aten::t", "aten::permute", "aten::expand", "aten::unsqueeze",
              "aten::view_as_complex", "aten::view_as_real", "aten::split", "aten::chunk", "aten::narrow",
              "aten::flatten", "aten::squeeze"),
}


def _timed(fn, rounds: int, calls: int) -> list[float]:
    out = []
    for _ in range(rounds):
        with common.Clock() as clock:
            for _ in range(calls):
                fn()
        out.append(clock.wall / calls)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(common.MODELS), default="testbed")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--context", type=int, default=20, help="cached columns before the timed step")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=30, help="steps per timed round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the summary as markdown here")
    args = parser.parse_args(argv)
    import torch
    import torch.nn.functional as F

    from popo.rollout.decoder import LeanDecoder
    from popo.rollout.hf import _ModelStepper

    common.set_threads(args.threads)
    policy, _ = generation.load(args.model)
    rows, width = args.rows, args.context
    ids = torch.randint(3, policy.config.vocab_size, (rows, width + 1))
    mask = torch.ones(rows, width, dtype=torch.long)
    mask[::3, :2] = 0  # some left padding, as in a real batch
    with torch.no_grad():
        lean = LeanDecoder(policy, mask, limit=2)
        lean.prefill(ids[:, :width])

        def lean_step():
            lean.used, lean.positions = width, lean.prompt_positions[:, -1].clone()
            lean.step(ids[:, width])

        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        out = policy(input_ids=ids[:, :width], attention_mask=mask, position_ids=positions, use_cache=True)
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        model_stepper = _ModelStepper(policy, cache, mask, positions[:, -1], limit=10**6)

        def model_step():
            model_stepper.step(ids[:, width])
            model_stepper.cache.crop(-1)  # back to the same context for the next call
            model_stepper.used, model_stepper.positions = width, positions[:, -1].clone()

        hidden = torch.randn(rows, policy.config.hidden_size)
        inner = torch.randn(rows, policy.config.intermediate_size)
        weights = [(w.qkv, w.o_proj, w.gate_up, w.down) for w in lean.layers]

        def products_only():  # the step's matrix products with its shapes, attention excluded
            for qkv, o, gate_up, down in weights:
                F.linear(hidden, qkv), F.linear(hidden, o), F.linear(hidden, gate_up), F.linear(inner, down)
            F.linear(hidden, lean.head_weight)

        for fn in (lean_step, model_step, products_only):
            _timed(fn, 1, 5)  # warm-up
        samples = {"lean": [], "model": [], "products": []}
        for r in range(args.rounds):  # interleaved, rotated order
            order = [("lean", lean_step), ("model", model_step), ("products", products_only)]
            k = r % 3
            for name, fn in order[k:] + order[:k]:
                samples[name] += _timed(fn, 1, args.calls)
        times = {name: common.median(v) for name, v in samples.items()}
        floor = max((generation.compute_floor(policy, rows, w) for w in (width + 1, 128)),
                    key=lambda f: f["gflops_per_s"])  # the best full-forward rate, as generation.py takes it
        step_flops = rows * generation.token_flops(policy, width + 1)
        floor_s = step_flops / (floor["gflops_per_s"] * 1e9)

        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.calls):
                lean_step()
    grouped = {name: 0.0 for name in (*GROUPS, "elementwise and other")}
    for event in prof.key_averages():
        group = next((g for g, names in GROUPS.items() if event.key in names), "elementwise and other")
        grouped[group] += event.self_cpu_time_total / 1e6 / args.calls
    profiled = sum(grouped.values())
    lines = [
        f"# One decoding step: {args.model}, {rows} rows, {width} cached columns",
        "",
        f"Command: `{common.command_line()}`",
        "",
        f"Versions: {common.versions()}; load average {common.machine().get('loadavg')}.",
        "",
        "| measured | ms per step | share of the compute floor |",
        "| --- | ---: | ---: |",
        f"| compute floor: the step's {step_flops / 1e6:.1f} MFLOP at the full-forward rate "
        f"({floor['gflops_per_s']:.1f} GFLOP/s) | {1e3 * floor_s:.3f} | 100% |",
        f"| matrix products alone (same shapes) | {1e3 * times['products']:.3f} | "
        f"{100 * floor_s / times['products']:.0f}% |",
        f"| `LeanDecoder.step` | {1e3 * times['lean']:.3f} | {100 * floor_s / times['lean']:.0f}% |",
        f"| the model's own forward with a `DynamicCache` | {1e3 * times['model']:.3f} | "
        f"{100 * floor_s / times['model']:.0f}% |",
        "",
        "torch.profiler, `LeanDecoder.step`, self CPU time per step by op group (the profiler adds its own "
        "overhead per op):",
        "",
        "| op group | ms per step | share |",
        "| --- | ---: | ---: |",
        *[f"| {g} | {1e3 * t:.3f} | {100 * t / profiled:.0f}% |" for g, t in grouped.items()],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
