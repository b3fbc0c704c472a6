"""The run folder's guard: one run per folder, one live process per run.

A folder that already holds a run (metrics or checkpoints) is refused unless the run is resumed
(`popo train --resume DIR`) or `train.overwrite=true` says to replace it; replacing removes the old
checkpoints and event files first, so nothing of the earlier run can be mistaken for the new one. The
process that writes the folder holds an exclusive `fcntl` lock on `DIR/.lock` (the operating system
releases it when the process ends, also when it is killed), and the file names the holder's PID, so a
second process started on the same folder is refused with a message naming it. A resume must continue
the same run (`check_resume`): the same algorithm, trained parameters and held-out evaluation, and no
smaller `train.steps`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import Any

from popo.errors import SetupError

LOCK_NAME = ".lock"


def holds_a_run(run_dir: Path) -> bool:
    """Whether `run_dir` has metrics or checkpoints of a run."""
    metrics = run_dir / "metrics.jsonl"
    return (metrics.is_file() and metrics.stat().st_size > 0) or any((run_dir / "checkpoints").glob("step-*"))


def check(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, to start a run in a folder that holds another one (read-only)."""
    if not resume and not overwrite and holds_a_run(run_dir):
        raise SetupError(f"{run_dir} already holds a run: continue it with `popo train --resume {run_dir}`, "
                         "start this one in another folder (train.out_dir=...), or replace it with "
                         "train.overwrite=true")


def claim(run_dir: Path, *, resume: bool, overwrite: bool) -> "RunLock":
    """Lock `run_dir` for this process (creating it), check again under the lock, and with `overwrite`
    remove the replaced run's checkpoints and event files."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    try:
        check(run_dir, resume=resume, overwrite=overwrite)
    except SetupError:
        lock.release()
        raise
    if overwrite and not resume:
        for stale in ("checkpoints", "tensorboard"):
            shutil.rmtree(run_dir / stale, ignore_errors=True)
    return lock


class RunLock:
    """An exclusive lock on `run_dir/.lock`, held until `release` (or the end of the process)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_NAME
        self._file = self.path.open("a+")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise SetupError(f"{run_dir} is in use by another popo process (PID {holder}): wait for it to "
                             "finish or stop it, or use another train.out_dir") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()


# ---------------------------------------------------------------- what a resume may change
def check_resume(saved: Any, config: Any, run_dir: str) -> None:
    """Refuse a resume that would not continue the same run (`saved`: the run's config.yaml, `config`: it
    with this command's overrides; both `popo.config.Config`):

    - the algorithm or the trained parameters (LoRA or not) change: the optimizer state would not fit;
    - a setting that decides what the held-out evaluation measures changes (`evaluation_settings`): the
      summary would compare the start and the end on different problems or terms;
    - train.steps falls below the run's target: config.yaml would be rewritten and the target lost.

    A new run can start from the checkpoint's weights; the message gives the command."""
    from popo.checkpoint import latest_checkpoint

    checkpoint = latest_checkpoint(Path(run_dir), log=lambda message: None)
    policy = f"{checkpoint}/policy" if checkpoint is not None else f"{run_dir}/checkpoints/<step>/policy"
    for key in ("algo.name", "model.lora.r"):
        old, new = _get(saved, key), _get(config, key)
        if old != new:
            raise SetupError(f"cannot resume {run_dir} with a different {key} (the run used {key}={old}); to "
                             f"train with {key}={new} from this run's weights, start a new run: popo train "
                             f"{key}={new} model.name={policy} train.out_dir={run_dir}-{new}")
    before, after = evaluation_settings(saved), evaluation_settings(config)
    changed = [key for key in before if key in after and before[key] != after[key]]
    if changed:
        detail = "; ".join(f"{key}: the run used {before[key]}, this command gives {after[key]}" for key in changed)
        raise SetupError(f"cannot resume {run_dir} with other evaluation settings ({detail}): the held-out "
                         "numbers at the start and the end would not measure the same thing. Resume without "
                         f"changing {', '.join(changed)}, or evaluate a checkpoint your way with `popo eval "
                         f"--model {policy}`, or start a new run from its weights (model.name={policy})")
    if config.train.steps < saved.train.steps:
        raise SetupError(f"cannot resume {run_dir} with train.steps={config.train.steps}: the run's target is "
                         f"train.steps={saved.train.steps} (its config.yaml), and a resume keeps or raises it. "
                         f"To continue to the target: popo train --resume {run_dir}; to use the model as it is "
                         f"now: popo eval --model {policy} (checkpoints of earlier steps stay in "
                         f"{run_dir}/checkpoints)")


def evaluation_settings(config: Any) -> dict[str, str]:
    """The settings that decide what a run's held-out evaluation measures, as text: which problems
    (`popo.data.prepare.held_out_examples`: the source, its size, the testbed's split layout, the prompt
    template and length cap), how they are answered and scored (`popo.evaluate.run_protocol`: k, token
    limit, temperature, top-p, seed, truncation rule; the reward). Only the source when evaluation is off."""
    from popo.data.prepare import is_testbed, resolve_eval_source

    d, r = config.data, config.rollout
    source = resolve_eval_source(config)
    if not source:
        return {"data.eval_source": "off (no evaluation)"}
    shown = f"auto (here: {source})" if d.eval_source == "auto" else source
    out = {"data.eval_source": shown, "data.eval_size": d.eval_size, "data.template": d.template,
           "data.problem_key": d.problem_key, "data.answer_key": d.answer_key,
           "data.max_prompt_tokens": d.max_prompt_tokens, "data.on_bad_row": d.on_bad_row,
           "train.eval_samples": config.train.eval_samples, "train.seed": config.train.seed,
           "rollout.max_new_tokens": r.max_new_tokens, "rollout.temperature": r.temperature, "rollout.top_p": r.top_p,
           "algo.zero_if_truncated": config.algo.zero_if_truncated,
           "reward.functions": ",".join(config.reward.functions) or "(default)",
           "reward.weights": ",".join(str(w) for w in config.reward.weights) or "(1 each)"}
    if is_testbed(source):
        tb = config.testbed
        out |= {"testbed.task": tb.task, "testbed.digits": tb.digits, "testbed.numbers": tb.numbers,
                "testbed.max_number": tb.max_number, "testbed.validation_size": tb.validation_size,
                "testbed.test_size": tb.test_size}
    return {key: str(value) for key, value in out.items()}


def _get(config: Any, key: str) -> Any:
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value
