"""Command line: `popo demo | sft | train | eval | compare | sweep | report | config`.

Errors a user can cause (`popo.errors`: bad config key or value, missing model, empty or malformed
dataset, a run that halted itself) print one `error:` line and exit with the class's status (2, or 3 for
a halted run), without a traceback. Ctrl-C prints one line saying what stopped and how to continue, and
exits with status 130; a `popo train` stopped by Ctrl-C saves a checkpoint, prints its summary and exits
with 130 too (stopped by SIGTERM, a scheduler's preemption, it exits 0 after its checkpoint).

Torch runs on one thread in every process a command starts, as the Makefile sets it (the models popo trains on a
CPU are small, and on shared cores a second OpenMP thread makes steps slower, not faster), unless
OMP_NUM_THREADS says otherwise (`popo compare --threads N` sets its runs' count).

Like `python -m popo`, the `popo` command imports user modules (`reward.functions=my_rewards:short`)
from the folder it runs in: `main` puts that folder first on `sys.path` for the command's duration.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence

from popo.config import load_config
from popo.config_checks import check_reward_modules
from popo.errors import PopoError, SetupError
from popo.config_reference import reference_markdown

INTERRUPTED = 130  # exit status after Ctrl-C, as a shell reports a process ended by SIGINT
THREADS_VARIABLE = "OMP_NUM_THREADS"


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help, except where the help names its default itself, there is
    none (None: the help says what happens instead) or the option is an on/off flag."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.nargs == 0 or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="popo", description="Positive-Only Policy Optimization (POPO) and GRPO for RL with verifiable rewards.",
        epilog=f"torch runs on one thread per process unless {THREADS_VARIABLE} is set (e.g. {THREADS_VARIABLE}=4 popo "
               "train ...)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_parsers(sub)
    _add_eval_parser(sub)
    _add_study_parsers(sub)
    cfg = sub.add_parser("config", help="print the configuration reference (every key, default and meaning)")
    cfg.add_argument("--yaml", action="store_true", help="print the defaults as YAML instead")
    return parser


def _add_run_parsers(sub) -> None:
    """`popo demo`, `popo sft` and `popo train`."""
    demo = sub.add_parser("demo", help="warm up the embedded testbed, train POPO and GRPO, compare them")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--quick", action="store_true", help="same pipeline, smaller budget (under 2 minutes)")
    demo.add_argument("--workers", type=int, default=0, metavar="N",
                      help="processes training the methods side by side (0: one per method when there are cores "
                           "for them, else 1)")
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=3e-5")

    sft = sub.add_parser("sft", help="the warmed-up testbed model (cached, shipped or built here): print its path")
    sft.add_argument("--rebuild", action="store_true",
                     help="build the warm-up from scratch into <cache>/testbed-<key>-rebuilt (5-13 min on one core), "
                          "even when popo ships it")
    sft.add_argument("--check", action="store_true",
                     help="with --rebuild: compare the rebuilt weights with the shipped copy (bit for bit on the "
                          "platform that recorded it; a distance elsewhere)")
    sft.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="testbed.* overrides")

    train = sub.add_parser("train", help="train a policy with POPO, GRPO or a preset",
                           epilog="Every setting (KEY=VALUE or in the YAML file), with its default and meaning: "
                                  "`popo config` (the same as docs/configuration.md); `popo config --yaml` prints "
                                  "the defaults as a YAML file to start from.")
    train.add_argument("config", nargs="?", help="YAML config file (optional with --resume)")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. algo.name=grpo")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    train.add_argument("--num-processes", type=int, default=1, metavar="N",
                       help="data-parallel processes on this machine (runs `accelerate launch` for you)")
    train.add_argument("--fsdp", action="store_true",
                       help="with --num-processes: shard the models with FSDP2 (the ZeRO-3 equivalent, one unit per "
                            "decoder layer) instead of replicating them")


def _add_eval_parser(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a model on math benchmarks or the testbed's held-out split",
                        formatter_class=_DefaultsHelp)
    ev.add_argument("--model", required=True, help="model folder (a checkpoint's policy/, LoRA or not) or hub id")
    ev.add_argument("--benchmarks", default="testbed",
                    help="comma-separated benchmark names (aime24,math500,...), testbed, or .jsonl/.json/.parquet files")
    ev.add_argument("--data-dir", help="folder holding the benchmark .jsonl files (else the hub)")
    ev.add_argument("--protocol", choices=["default", "qwen-math", "r1"], default=None,
                    help="named settings, recorded in the output: default (k=4, temperature 0.6, top-p 0.95, qwen-math "
                         "template, 1024 tokens), qwen-math (greedy only, Qwen2.5-Math's prompt, 3000 tokens) or r1 "
                         "(k=16, temperature 0.6, top-p 0.95, qwen-boxed prompt, 32768 tokens); flags override it. Without it: "
                         "the run's own settings when --model is a run's checkpoint, else default")
    ev.add_argument("--samples", type=int, default=None, help="k sampled completions per problem (default: the protocol's)")
    ev.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the protocol's)")
    ev.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold (default: the protocol's)")
    ev.add_argument("--max-new-tokens", type=int, default=None,
                    help="completion token limit (default: the protocol's for math, rollout.max_new_tokens for the testbed)")
    ev.add_argument("--template", default=None,
                    help="prompt template name or string with {problem} (default: the protocol's for math, plain "
                         "for the testbed)")
    ev.add_argument("--limit", type=int, default=0, help="evaluate only the first N problems (0 = all)")
    ev.add_argument("--seed", type=int, default=0,
                    help="sampling seed: the same numbers as the evaluation inside a run with train.seed=SEED")
    ev.add_argument("--zero-if-truncated", action="store_true",
                    help="count completions cut off by the token limit as wrong (as training does by default)")
    ev.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="config overrides for the model and the testbed split (e.g. testbed.digits=2)")
    ev.add_argument("--out", default="runs/eval/results.json", help="JSON output (a .md table is written beside)")


def _add_study_parsers(sub) -> None:
    from popo.study.cli import add_study_parsers  # compare, sweep, report

    add_study_parsers(sub)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    added = _import_from_working_folder()
    try:
        with one_thread_unless_told():
            code = _dispatch(args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
        return code
    except PopoError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(_interrupted_line(args), file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # the reader went away (`popo config | head`): stop quietly, as `cat` would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit-time flush goes nowhere
        return 0
    finally:
        if added is not None and added in sys.path:
            sys.path.remove(added)


@contextlib.contextmanager
def one_thread_unless_told() -> Iterator[None]:
    """Unless OMP_NUM_THREADS is set: for the block, OMP_NUM_THREADS=1 (torch reads it when it loads, here and
    in every process the command starts) and, if torch is loaded already, one thread; both restored after."""
    if os.environ.get(THREADS_VARIABLE):  # the user's choice
        yield
        return
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    os.environ[THREADS_VARIABLE] = "1"
    if torch is not None:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        os.environ.pop(THREADS_VARIABLE, None)
        if torch is not None:
            torch.set_num_threads(before)


def _import_from_working_folder() -> str | None:
    """Put the working folder first on `sys.path` as `python -m` does (a console script starts with its own
    folder there instead); returns the entry added, None when it was already there."""
    cwd = os.getcwd()
    if "" in sys.path or cwd in sys.path:
        return None
    sys.path.insert(0, cwd)
    return cwd


def _interrupted_line(args: argparse.Namespace) -> str:
    """One line for Ctrl-C: what stopped and the command that continues it."""
    import shlex

    again = "popo " + " ".join(shlex.quote(a) for a in args.argv)
    if args.command in ("compare", "sweep"):
        return (f"interrupted: popo {args.command} stopped; finished runs are kept and an unfinished one resumes "
                f"from its last checkpoint when you run the same command again: {again}")
    if args.command == "train":
        return f"interrupted: popo train stopped before its first step, nothing new was saved; to try again: {again}"
    return f"interrupted: popo {args.command} stopped before it finished; to run it again: {again}"


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("demo", "sft", "train", "eval", "compare", "sweep"):
        from popo.build import quiet_libraries

        quiet_libraries()
    if args.command == "demo":
        from popo.study.demo import run_demo

        load_config(None, args.overrides)  # reject bad overrides before any work
        run_demo(args.out, quick=args.quick, extra=args.overrides, workers=args.workers)
    elif args.command == "sft":
        return _sft(args)
    elif args.command == "train":
        return _train(args)
    elif args.command == "eval":
        from popo.eval_cli import run_eval

        run_eval(args)
    elif args.command in ("compare", "sweep", "report"):
        from popo.study.cli import run_study_command

        run_study_command(args)
    elif args.command == "config":
        if args.yaml:
            import yaml

            from popo.config import Config, to_dict

            print(yaml.safe_dump(to_dict(Config()), sort_keys=False))
        else:
            print(reference_markdown())
    return 0


def _sft(args: argparse.Namespace) -> int:
    """Print the warm start's path; `--rebuild --check` also compares it with the shipped copy."""
    from pathlib import Path

    from popo.loading import resolve_model_path
    from popo.testbed.shipped import check_rebuilt

    if args.check and not args.rebuild:
        raise SetupError("--check compares a rebuilt warm start with the shipped one: add --rebuild")
    path = resolve_model_path(load_config(None, ["model.name=testbed", *args.overrides]), rebuild=args.rebuild)
    print(path)
    return check_rebuilt(Path(path)) if args.check else 0


def _train(args: argparse.Namespace) -> int:
    """Train (or resume) one run; the exit status: 0, or 130 for a run that Ctrl-C (SIGINT) stopped before
    its last step (it saved a checkpoint and printed its summary)."""
    import signal
    from pathlib import Path

    from popo.run_dir import check_resume

    if args.num_processes > 1 or args.fsdp:  # re-launch this command under accelerate, one process per rank
        code = subprocess.call(launch_command(args.argv, args.num_processes, fsdp=args.fsdp))
        if code:
            raise SystemExit(code)
        return 0
    from popo.build import build_trainer

    overrides = list(args.overrides)
    if args.config and "=" in args.config:  # `popo train key=value ...` without a file
        overrides.insert(0, args.config)
        args.config = None
    if args.resume:
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise SetupError(f"cannot resume: {saved} not found")
        config = load_config(saved, overrides + [f"train.out_dir={args.resume}"])
        check_resume(load_config(saved), config, args.resume)
    else:
        config = load_config(args.config, overrides)
    check_reward_modules(config.reward)
    trainer = build_trainer(config, resume=bool(args.resume))
    trainer.run()
    _leave_process_group()
    return INTERRUPTED if trainer.stopped_early and trainer.stop_signal == signal.SIGINT else 0


def _leave_process_group() -> None:
    """Close the process group `accelerate launch` started (if any) before the interpreter exits: left to
    the exit-time destructors, a gloo group can abort the process ("terminate called without an active
    exception") after a run that succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # every rank is done with its last collective
        dist.destroy_process_group()


def launch_command(argv: list[str], num_processes: int, *, fsdp: bool = False) -> list[str]:
    """The `accelerate launch` command that runs the same `popo train` command line in `num_processes`
    processes (one node; for several nodes call `accelerate launch` yourself, see docs/scaling.md),
    with FSDP2 full sharding when `fsdp`."""
    import socket

    argv = [a for a in argv if a != "--fsdp"]
    for i, item in enumerate(argv):  # drop --num-processes N / --num-processes=N
        if item.startswith("--num-processes"):
            del argv[i: i + (1 if "=" in item else 2)]
            break
    with socket.socket() as probe:  # a free port for the process group's rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mode = (["--use_fsdp", "--fsdp_version=2", "--fsdp_auto_wrap_policy=TRANSFORMER_BASED_WRAP",
             "--fsdp_reshard_after_forward=true"] if fsdp else ["--multi_gpu"])
    return [sys.executable, "-m", "accelerate.commands.launch", *mode, f"--num_processes={num_processes}",
            "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", f"--main_process_port={port}",
            "-m", "popo", *argv]
