"""Where a training step's time goes: cProfile (Python-level, by function) and torch.profiler (by op)
over a few steps of popo's trainer, with the settings of step_time_vs_trl.py.

    .venv/bin/python benchmarks/profile_step.py --algo grpo --model 2.4m --steps 6
    .venv/bin/python benchmarks/profile_step.py --algo popo --model testbed --torch

Prints the top functions by own time and by cumulative time (and, with --torch, the top ops by
self CPU time). The first step is run before profiling starts (warm-up).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import step_time_vs_trl  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", choices=("grpo", "popo"), default="grpo")
    parser.add_argument("--model", choices=list(common.MODELS), default="2.4m")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch default)")
    parser.add_argument("--torch", action="store_true", help="also run torch.profiler (op-level)")
    args = parser.parse_args(argv)
    args.framework = args.algo
    common.set_threads(args.threads)
    trainer = step_time_vs_trl.make_trainer(args)
    trainer.train_step(0)  # warm-up
    profiler = cProfile.Profile()
    profiler.enable()
    for step in range(1, args.steps + 1):
        trainer.train_step(step)
    profiler.disable()
    for key in ("tottime", "cumulative"):
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats(key).print_stats(args.top)
        print(f"===== cProfile by {key} =====")
        print("\n".join(buffer.getvalue().splitlines()[4:]))
    if args.torch:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for step in range(args.steps + 1, 2 * args.steps + 1):
                trainer.train_step(step)
        print("===== torch.profiler by self CPU time =====")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    trainer.writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
