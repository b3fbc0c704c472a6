"""How the cost of a training step grows with completion length and model size: popo (POPO and GRPO)
against TRL's GRPOTrainer.

Grid (default): random Qwen2-architecture models of about 1 M, 10 M and 50 M parameters (4 attention
heads, 2 KV heads, tied embeddings, the testbed's character vocabulary; see `SHAPES`) x completion limits
24, 128, 512 and 1024 tokens x frameworks `popo` (popo's trainer, POPO), `grpo` (popo's trainer, GRPO)
and `trl` (TRL's GRPOTrainer, loss_type dapo), at positive fraction 0.3; then the positive fractions 0.1
and 0.6 on one cell (`--sweep-model` 10m, `--sweep-lengths` 512). Same settings everywhere: the same
addition prompts, 1 prompt x G = 10 rollouts per step (small, so the 50 M model at 1024 tokens fits the
time budget; one batch size for the whole grid, so the curves compare), temperature 1, top-p 1, no
top-k, fp32, KL beta 0, lr, gradient clip, no gradient checkpointing, one torch thread.

Controlled length: the models' tokenizer and generation config name an end-of-sequence token whose id
is one past the model's vocabulary (`<noeos>`), so no framework can ever sample it and every completion
runs to the limit. The measured completion lengths are recorded per cell and checked.

Controlled positive fraction: `fraction_rewards` marks, within each group of G completions, the
round(f * G) completions whose text hashes lowest as positive: a pure function of the group's completion
texts, called on the whole batch by popo's verifier and by TRL's reward function alike. With G = 10 the
fraction is exact (1, 3 or 6 positives per group) and every group has both rewards, so no group is left
out by either framework (TRL forwards every row anyway; popo's GRPO leaves out zero-advantage rows,
which here are none; POPO forwards only the positives, plus the EMA target's no-grad forward over them).

Phases: `generate` (popo: the engine; TRL: `GRPOTrainer._generate`), `train` (popo: the update, i.e.
forward and backward passes including the EMA target's forward, optimizer step, plus the EMA weight
update; TRL: step minus generate minus reward scoring, i.e. everything its loss costs) and `other`
(step minus both: reward scoring, credit, bookkeeping). popo's EMA target forward is also timed alone.

Each (framework, model, fraction) run is one fresh process that runs its lengths in increasing order;
each length builds a fresh trainer, and the process's peak RSS is reset before it (Linux
/proc/self/clear_refs), so the memory column is that cell's own peak. Steps per cell adapt to the cost:
the first step is a warm-up and dropped unless it took `--keep-first-s` seconds or more (then one-time
costs are negligible and it counts); then steps are measured until `--cell-seconds` of measured time or
`--max-steps` steps. Runs that would push the whole benchmark past `--max-minutes` are skipped and listed.
This file plans and launches the runs; one run's process is `scaling_cells.py`, and the report (ratios,
fits, findings, plots, markdown) is `scaling_report.py`.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scaling.py             # full grid, about 22 minutes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scaling.py --dry-run   # the plan and its predicted times
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scaling.py --quick     # 1 M model, 24 and 128 tokens (< 1 min)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from scaling_report import (COLUMNS, CONTEXT, FRAMEWORKS, compute_fits, compute_ratios, findings,  # noqa: E402
                            plots, render_markdown)
from scaling_report import cells as table_cells  # noqa: E402
from scaling_cells import NO_EOS, SHAPES, Shape, model_path, worker  # noqa: E402

LENGTHS = (24, 128, 512, 1024)
def param_count(s: Shape, path: Path) -> int:
    """Parameters of the saved model: tied embeddings, the layers (q/k/v with bias), the final norm."""
    vocab = json.loads((Path(path) / "config.json").read_text())["vocab_size"]
    return vocab * s.hidden + nonembedding_params(s) + s.layers * (s.hidden + 2 * s.kv_heads * s.head_dim
                                                                   + 2 * s.hidden) + s.hidden


def nonembedding_params(s: Shape) -> int:
    attention = 2 * s.hidden * s.hidden + 2 * s.hidden * s.kv_heads * s.head_dim
    return s.layers * (attention + 3 * s.hidden * s.intermediate)


def predicted_step_s(fw: str, model: str, length: int, rows: int, fraction: float) -> float:
    """A rough step time from a cost model fitted by hand to calibration runs on this machine (2 slow
    cores, one thread; 10 rollouts a step): it only drives the progress estimate and the --max-minutes
    guard. Decoding: a fixed cost per layer and position, the weights' FLOPs, and a term growing with the
    context (popo: attention over a preallocated cache; TRL: `generate`'s cache, which grows by copying
    and costs far more on the wider model). Training: 6 FLOP per parameter and token plus attention."""
    s = SHAPES[model]
    p, mean_context, tokens = nonembedding_params(s), 8 + length / 2, 8 + length
    decode = s.layers * 7e-4 + rows * 2 * p / 2.5e10  # seconds per decoded position
    if fw == "trl":
        decode += 1e-4 * s.layers + 1.5e-8 * rows * s.layers * mean_context * (2 * s.kv_heads * s.head_dim / 128) ** 3
    else:
        decode += 3.05e-10 * rows * s.layers * s.hidden * mean_context
    generate = length * decode
    flop = 6 * p + 12 * s.layers * s.hidden * mean_context  # per trained token, forward and backward
    trained = rows * fraction * 4 / 3 if fw == "popo" else rows  # POPO: the positives, plus the target's forward
    train = trained * tokens * flop / 6e10 * (1.1 if fw == "trl" else 1.0)
    return generate + train + 0.03


def planned_steps(step_s: float, args) -> float:
    first = args.warmup > 0 and step_s < args.keep_first_s
    measured = max(1, min(args.max_steps, math.ceil(args.cell_seconds / max(step_s, 1e-3))))
    return measured + (args.warmup if first else 0)


def predicted_run_s(run: dict, args) -> float:
    startup = {"trl": 14.0, "popo": 8.0, "grpo": 8.0}[run["framework"]]
    total = startup
    for length in run["lengths"]:
        step = predicted_step_s(run["framework"], run["model"], length, args.prompts * args.group, run["fraction"])
        total += step * planned_steps(step, args) + (3.0 if run["framework"] == "trl" else 1.5)
    return total


# ---------------------------------------------------------------- orchestrator
def launch(args, run: dict) -> tuple[list[dict], str | None]:
    """Run one worker process; its finished cells, and the error (None if it exited cleanly)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", run["framework"], "--model", run["model"],
           "--model-path", str(run["path"]), "--fraction", str(run["fraction"]),
           "--lengths", *[str(x) for x in run["lengths"]], "--prompts", str(args.prompts), "--group", str(args.group),
           "--lr", str(args.lr), "--threads", str(args.threads), "--warmup", str(args.warmup),
           "--max-steps", str(args.max_steps), "--cell-seconds", str(args.cell_seconds),
           "--keep-first-s", str(args.keep_first_s)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    if args.threads > 0:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=common.ROOT)
    cells = [json.loads(line[len("CELL "):]) for line in proc.stdout.splitlines() if line.startswith("CELL ")]
    error = None if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"
    return cells, error


def plan_runs(args) -> list[dict]:
    """The runs in priority order: the main grid (model by model, frameworks in rotated order), then the
    positive-fraction sweep."""
    runs = []
    for i, model in enumerate(args.models):
        shift = i % len(args.frameworks)
        for fw in args.frameworks[shift:] + args.frameworks[:shift]:
            runs.append({"framework": fw, "model": model, "fraction": args.fraction, "lengths": list(args.lengths),
                         "part": "grid"})
    for fraction in args.sweep_fractions:
        for fw in args.frameworks:
            runs.append({"framework": fw, "model": args.sweep_model, "fraction": fraction,
                         "lengths": list(args.sweep_lengths), "part": "fraction sweep"})
    return runs


def steady(values: list[float], start: int) -> float:
    return common.median(values[start:] or values)


def summarise_cell(run: dict, cell: dict, shape: Shape, rows: int) -> dict:
    start = cell["measured_from"]
    flat = [x for lens in cell["completion_lengths"] for x in lens]
    out = {"framework": run["framework"], "model": run["model"], "params": cell["params"],
           "fraction": run["fraction"], "length": cell["length"], "part": run["part"],
           "measured_steps": len(cell["step_s"][start:]), "first_step_counted": cell["first_counted"],
           "step_s": steady(cell["step_s"], start),
           "step_s_all": [round(x, 4) for x in cell["step_s"]],
           "positive_fraction": common.median(cell["positive_fraction"]),
           "forwarded_rows": common.median(cell["forwarded_rows"]),
           "completion_len_min": min(flat) if flat else 0, "completion_len_max": max(flat) if flat else 0,
           "completion_len_mean": sum(flat) / len(flat) if flat else 0.0,
           "peak_rss_mb": cell["peak_rss_mb"], "start_rss_mb": cell["start_rss_mb"],
           "peak_is_cell_own": cell["peak_is_cell_own"], "cell_wall_s": cell["cell_wall_s"],
           "torch_threads": cell.get("torch_threads"),
           "kv_cache_mb": kv_cache_mb(shape, rows, cell["length"])}
    for name, values in cell["phases_s"].items():
        out[f"{name}_s"] = steady(values, start)
    out["other_s"] = out["step_s"] - out["generate_s"] - out["train_s"]  # medians of parts need not add up
    return out


def kv_cache_mb(shape: Shape, rows: int, length: int, prompt: int = 8) -> float:
    """fp32 keys and values of every layer for `rows` sequences of prompt + `length` tokens."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * (prompt + length) * rows * 4 / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny grid: 1 M model, 24 and 128 tokens, f = 0.3, one measured step (under a minute)")
    parser.add_argument("--models", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    parser.add_argument("--fraction", type=float, default=0.3, help="positive fraction of the main grid")
    parser.add_argument("--sweep-fractions", nargs="*", type=float, default=[0.1, 0.6])
    parser.add_argument("--sweep-model", choices=list(SHAPES), default="10m")
    parser.add_argument("--sweep-lengths", nargs="+", type=int, default=[512])
    parser.add_argument("--prompts", type=int, default=1, help="prompts per step")
    parser.add_argument("--group", type=int, default=10, help="G, completions per prompt")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (0 = torch default)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up steps per cell (dropped unless long)")
    parser.add_argument("--keep-first-s", type=float, default=15.0,
                        help="a first step at least this long is measured, not dropped")
    parser.add_argument("--cell-seconds", type=float, default=8.0, help="measured seconds per cell (at least 1 step)")
    parser.add_argument("--max-steps", type=int, default=5, help="measured steps per cell at most")
    parser.add_argument("--max-minutes", type=float, default=30.0,
                        help="skip runs predicted to end past this many minutes (0 = never skip)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default benchmarks/results; --quick: .cache/bench/scaling-quick)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="print the planned runs and their predicted times")
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.framework = args.worker
        return worker(args)
    if args.quick:
        args.models, args.lengths, args.sweep_fractions = ["1m"], [24, 128], []
        args.max_steps, args.cell_seconds = 1, 0.0
    out_dir = args.out or (common.ROOT / ".cache" / "bench" / "scaling-quick" if args.quick else common.RESULTS)
    if "trl" in args.frameworks:
        import importlib.util

        if importlib.util.find_spec("trl") is None:
            print("trl is not installed: TRL's runs are skipped (pip install 'popo[trl]')")
            args.frameworks = [f for f in args.frameworks if f != "trl"]

    runs = plan_runs(args)
    if args.dry_run:
        for run in runs:
            rollouts = args.prompts * args.group
            steps = [f"{n}: {predicted_step_s(run['framework'], run['model'], n, rollouts, run['fraction']):.2f} s"
                     for n in run["lengths"]]
            print(f"{run['framework']:4} {run['model']:3} f={run['fraction']}  step {', '.join(steps)};  run "
                  f"{predicted_run_s(run, args) / 60:.1f} min")
        print(f"predicted total {sum(predicted_run_s(r, args) for r in runs) / 60:.1f} min")
        return 0
    common.set_threads(args.threads)
    started, load_before = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    paths = {}
    for model in dict.fromkeys([r["model"] for r in runs]):
        paths[model] = model_path(model)  # built once, outside the timed processes
    for run in runs:
        run["path"], run["predicted_s"] = paths[run["model"]], predicted_run_s(run, args)
    predicted_total = sum(r["predicted_s"] for r in runs)
    print(f"{len(runs)} runs, predicted {predicted_total / 60:.1f} min (cost model; {args.prompts} prompt(s) x "
          f"G = {args.group} per step, one thread)", flush=True)
    rows, skipped, done_pred, done_real = [], [], 0.0, 0.0
    for i, run in enumerate(runs):
        elapsed = time.perf_counter() - started
        scale = done_real / done_pred if done_pred else 1.0
        remaining = scale * sum(r["predicted_s"] for r in runs[i:])
        label = f"{run['framework']} {run['model']} f={run['fraction']} L={','.join(map(str, run['lengths']))}"
        if args.max_minutes > 0 and elapsed + scale * run["predicted_s"] > 60 * args.max_minutes:
            skipped.append({**_public(run), "reason": f"predicted to end past --max-minutes {args.max_minutes:g}"})
            print(f"[{i + 1}/{len(runs)}] skip {label}: would end past {args.max_minutes:g} min", flush=True)
            continue
        print(f"[{i + 1}/{len(runs)}] {label}  elapsed {elapsed / 60:.1f} min, about {remaining / 60:.1f} min left",
              flush=True)
        clock = time.perf_counter()
        cells, error = launch(args, run)
        done_real, done_pred = done_real + time.perf_counter() - clock, done_pred + run["predicted_s"]
        if error:
            missing = [n for n in run["lengths"] if n not in {c["length"] for c in cells}]
            last_line = error.strip().splitlines()[-1] if error.strip() else error
            skipped.append({**_public(run), "lengths": missing, "reason": f"failed: {last_line[-300:]}",
                            "stderr_tail": error[-1500:]})
            print(f"    failed at lengths {missing}: {error[-600:]}", flush=True)
        for cell in cells:
            row = summarise_cell(run, cell, SHAPES[run["model"]], args.prompts * args.group)
            rows.append(row)
            print(f"    L={row['length']:4}  step {row['step_s']:.3f} s (generate {row['generate_s']:.3f}, train "
                  f"{row['train_s']:.3f}, other {row['other_s']:.3f})  {row['measured_steps']} measured  "
                  f"len {row['completion_len_min']}-{row['completion_len_max']}  positives "
                  f"{row['positive_fraction']:.2f}  peak {row['peak_rss_mb']:.0f} MiB", flush=True)
    wall_min = (time.perf_counter() - started) / 60
    result = {
        "command": common.command_line(), "loadavg_before": load_before, "machine": common.machine(),
        "versions": common.versions(("trl", "datasets")), "wall_minutes": round(wall_min, 2),
        "predicted_minutes": round(predicted_total / 60, 2), "quick": args.quick,
        "settings": {"prompts_per_step": args.prompts, "group_size": args.group,
                     "rollouts_per_step": args.prompts * args.group,
                     "lengths": list(args.lengths), "fraction": args.fraction, "sweep_model": args.sweep_model,
                     "sweep_fractions": list(args.sweep_fractions), "sweep_lengths": list(args.sweep_lengths),
                     "frameworks": list(args.frameworks), "lr": args.lr, "dtype": "float32", "kl_beta": 0.0,
                     "temperature": 1.0, "top_p": 1.0, "top_k": "off", "gradient_checkpointing": False,
                     "torch_threads": args.threads, "warmup_steps": args.warmup, "keep_first_s": args.keep_first_s,
                     "cell_seconds": args.cell_seconds, "max_steps": args.max_steps, "max_minutes": args.max_minutes,
                     "eos": f"{NO_EOS} (id = the model's vocab_size, so never sampled)",
                     "reward": "round(f * G) lowest-crc32 completions of each group positive"},
        "models": {m: {"path": str(paths[m]), "hidden": SHAPES[m].hidden, "layers": SHAPES[m].layers,
                       "intermediate": SHAPES[m].intermediate, "heads": SHAPES[m].heads,
                       "kv_heads": SHAPES[m].kv_heads, "max_position_embeddings": CONTEXT,
                       "params": param_count(SHAPES[m], paths[m])} for m in paths},
        "rows": rows, "skipped": skipped,
    }
    result["all_completions_full_length"] = bool(rows) and all(
        r["completion_len_min"] == r["completion_len_max"] == r["length"] for r in rows)
    if rows and not result["all_completions_full_length"]:
        print("WARNING: some completions ended before the limit (see the completion len column)")
    result["ratios"] = compute_ratios(rows)
    result["fits"] = compute_fits(rows, args)
    result["findings"] = findings(result)
    result["plots"] = []
    if not args.no_write and rows:
        out_dir.mkdir(parents=True, exist_ok=True)
        result["plots"] = plots(result, out_dir)
    print("\n".join(common.table(COLUMNS, [table_cells(r) for r in rows])))
    print("\n".join(result["findings"]))
    print(f"wall time {wall_min:.1f} min (predicted {predicted_total / 60:.1f} min)")
    common.write_result("scaling", result, render_markdown(result), None if args.no_write else out_dir / "scaling")
    return 0


def _public(run: dict) -> dict:
    return {k: run[k] for k in ("framework", "model", "fraction", "lengths", "part")}


if __name__ == "__main__":
    sys.exit(main())
