"""Throughput of MathVerifier on a GRPO-sized batch: 1024 prompts x 8 completions = 8192 items.

The prompts are MATH-500 problems (prompt p uses problem p mod 500). Of each prompt's 8 completions,
4 are correct (the gold answer boxed, with different surrounding text) and 4 are wrong (the boxed golds
of the next 4 problems). Within a batch the verifier scores each distinct (box, gold) pair once, so the
4 correct completions of a prompt cost one verification; ``--no-dedup`` rows score every item.

Each configuration is timed ``--runs`` times on a fresh verifier (workers started and warmed up before
the clock starts, so worker start-up is excluded and no parse cache carries over between runs); the
table reports the median.

    python benchmarks/verifier_throughput.py                    # writes benchmarks/results/verifier_throughput.{json,md}
    python benchmarks/verifier_throughput.py --workers 1 2 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

from popo.rewards import MathVerifier, last_boxed_content
from popo.rewards.equivalence import clear_gold_cache

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "benchmarks" / "math500.jsonl"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "verifier_throughput"

TEMPLATES_CORRECT = [
    "We compute step by step and find the answer is $\\boxed{{{a}}}$.",
    "Therefore, the final answer is \\boxed{{{a}}}.",
    "Checking the cases again, everything agrees: $\\boxed{{{a}}}$",
    "So we conclude that the result equals $\\boxed{{{a}}}$. Done.",
]


def build_batch(golds: list[str], prompts: int, group: int) -> tuple[list[str], list[str], list[bool]]:
    completions, answers, expected = [], [], []
    n = len(golds)
    for p in range(prompts):
        gold = golds[p % n]
        for g in range(group):
            if g < group // 2:
                completions.append(TEMPLATES_CORRECT[g % len(TEMPLATES_CORRECT)].format(a=gold))
                expected.append(True)
            else:
                other = golds[(p + 1 + g - group // 2) % n]
                completions.append(f"After some algebra the answer is $\\boxed{{{other}}}$.")
                expected.append(other.strip() == gold.strip())
            answers.append(gold)
    return completions, answers, expected


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the given processes so far (Linux /proc; 0.0 elsewhere)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def time_one(verifier_kwargs: dict, completions, answers) -> tuple[float, float, list[float], dict]:
    """(wall seconds, CPU seconds of parent + workers, rewards, stats) of one timed score() call."""
    clear_gold_cache()  # the in-process mode would otherwise keep golds parsed
    with MathVerifier(**verifier_kwargs) as verifier:
        verifier.wait_ready()
        verifier.score(["warm-up: $\\boxed{1}$"], ["1"])
        verifier.reset_stats()
        pids = [os.getpid()] + verifier.worker_pids
        cpu0 = cpu_seconds(pids)
        start = time.perf_counter()
        rewards = verifier.score(completions, answers)
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(pids) - cpu0
        return elapsed, cpu, rewards, verifier.stats.as_dict()


def _interpreter() -> str:
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(ROOT))  # e.g. .venv/bin/python
    except ValueError:
        return str(exe)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("math-verify", "latex2sympy2_extended", "sympy", "antlr4-python3-runtime"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MATH-500 jsonl (problem, answer)")
    parser.add_argument("--prompts", type=int, default=1024)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output path without suffix")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    if not args.data.is_file():
        print(f"MATH-500 file not found: {args.data}", file=sys.stderr)
        return 2
    golds = [json.loads(line)["answer"] for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    completions, answers, expected = build_batch(golds, args.prompts, args.group)
    n = len(completions)
    load_before = os.getloadavg()

    rows = []
    for workers in args.workers:
        for dedup in (True, False):
            times, cpus, stats, rewards = [], [], None, None
            for _ in range(args.runs):
                elapsed, cpu, rewards, stats = time_one(
                    dict(num_workers=workers, timeout_s=args.timeout_s, dedup=dedup), completions, answers
                )
                times.append(elapsed)
                cpus.append(cpu)
            median = statistics.median(times)
            mismatched = [i for i, (r, e) in enumerate(zip(rewards, expected)) if (r == 1.0) != e]
            mismatches = len(mismatched)
            pairs = sorted({(last_boxed_content(completions[i]), answers[i], rewards[i]) for i in mismatched})
            row = {
                "workers": workers,
                "dedup": dedup,
                "items": n,
                "verified_per_run": stats["verified"],
                "times_s": [round(t, 3) for t in times],
                "median_s": round(median, 3),
                "items_per_s": round(n / median, 1),
                "verifications_per_s": round(stats["verified"] / median, 1),
                "cpu_s": [round(c, 2) for c in cpus],
                "cpu_ms_per_verification": round(1000 * statistics.median(cpus) / max(1, stats["verified"]), 3),
                "restarts": stats["restarts"],
                "soft_timeouts": stats["soft_timeouts"],
                "hard_timeouts": stats["hard_timeouts"],
                "reward_mismatches": mismatches,
                "mismatched_pairs": [{"box": b, "gold": g, "reward": r} for b, g, r in pairs],
            }
            rows.append(row)
            print(
                f"workers={workers} dedup={str(dedup):5} median {median:7.2f} s  "
                f"{row['items_per_s']:8.1f} items/s  {row['verifications_per_s']:7.1f} verifications/s  "
                f"{row['cpu_ms_per_verification']:.2f} CPU ms/verification  "
                f"(runs {row['times_s']}, mismatches {mismatches})",
                flush=True,
            )

    result = {
        "command": " ".join(shlex.quote(a) for a in [_interpreter(), str(Path(sys.argv[0]))] + sys.argv[1:]),
        "cwd": "repository root" if Path.cwd().resolve() == ROOT else str(Path.cwd()),
        "batch": f"{args.prompts} prompts x {args.group} completions = {n} items, half correct",
        "data": str(args.data.name),
        "runs": args.runs,
        "timeout_s": args.timeout_s,
        "nproc": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "versions": versions(),
        "rows": rows,
    }
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        args.out.with_suffix(".md").write_text(render_markdown(result), encoding="utf-8")
        print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    return 0


def render_markdown(result: dict) -> str:
    lines = [
        "# MathVerifier throughput",
        "",
        f"Command (run from the {result['cwd']}): `{result['command']}`",
        "",
        f"Batch: {result['batch']} ({result['data']} golds; 4 correct + 4 wrong completions per prompt).",
        f"Median of {result['runs']} runs, each on a fresh verifier with workers started before timing; "
        f"soft timeout {result['timeout_s']} s.",
        "",
        f"Machine: {result['platform']}, `nproc` = {result['nproc']} (shared with other jobs; load average "
        f"{result['loadavg_before']} before, {result['loadavg_after']} after).",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".",
        "",
        "| workers | dedup | items | verifications | median s | items/s | verifications/s | CPU ms / verification | runs (s) |",
        "|---:|:---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['workers']} | {'yes' if r['dedup'] else 'no'} | {r['items']} | {r['verified_per_run']} | "
            f"{r['median_s']} | {r['items_per_s']} | {r['verifications_per_s']} | "
            f"{r['cpu_ms_per_verification']} | {', '.join(str(t) for t in r['times_s'])} |"
        )
    lines += [
        "",
        "dedup = identical (box content, gold) pairs within the batch are verified once (the default); "
        "verifications = math-verify checks actually run. CPU ms / verification = user + system CPU "
        "time of the parent and all workers during the timed call (from /proc), divided by the "
        "verifications: it shows the work done independently of how much of the shared CPUs the run got.",
    ]
    lines += [
        "",
        "The machine's 2 cores are shared with other jobs, so the 2-worker speed-up depends on what else "
        "runs at the time (compare the load averages); the CPU column is the steadier figure.",
        "",
    ]
    pairs = {(p["box"], p["gold"], p["reward"]) for r in result["rows"] for p in r["mismatched_pairs"]}
    counts = sorted({r["reward_mismatches"] for r in result["rows"]})
    if not pairs:
        lines.append("Every reward matched its label (1 for the own gold, 0 for another problem's gold).")
    else:
        lines.append(
            f"Rewards differing from the naive label (1 for the own gold, 0 for another problem's gold): "
            f"{' / '.join(map(str, counts))} items per run, all from these (box, gold) pairs, which "
            "math-verify treats as equal:"
        )
        for box, gold, reward in sorted(pairs):
            lines.append(f"- box `{box}` vs gold `{gold}` -> reward {reward}")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
