"""Command-line defects a newcomer reported (the `popo` command, resume, Ctrl-C, the end-of-run summary,
help texts), each pinned by a test that failed before the fix."""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from popo.cli import main
from popo.config import load_config
from popo.step_log import OUTCOMES_KEY, SAMPLE_OUTCOMES_KEY, run_summary

SHORT_REWARD = '''
def short(completions, **kwargs):
    """1 for every completion: enough to train on."""
    return [1.0 for _ in completions]
'''


@pytest.fixture(scope="module")
def finished_run(tiny_testbed, tmp_path_factory) -> Path:
    """A finished 2-step tiny run (its config.yaml, metrics and last checkpoint), shared by the resume tests."""
    from popo.build import build_trainer

    run = tmp_path_factory.mktemp("finished") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build_trainer(load_config(None, [*tiny_testbed, "train.steps=2", f"train.out_dir={run}"]),
                      log=lambda message: None).run()
    finally:
        torch.set_num_threads(threads)
    return run


def outcome_records(start: list[int], end: list[int]) -> list[dict]:
    """A step-0 and a step-72 evaluation record with per-problem greedy outcomes, as metrics.jsonl holds them."""
    return [{"step": 0, "eval/greedy_acc": sum(start) / len(start), OUTCOMES_KEY: start},
            {"step": 72, "reward_mean": 0.2, "eval/greedy_acc": sum(end) / len(end), "eval/avg@4": 0.3,
             OUTCOMES_KEY: end}]


def paired(n: int, both: int, lost: int, gained: int) -> tuple[list[int], list[int]]:
    """Outcomes of n problems: `both` right at start and end, `lost` right then wrong, `gained` wrong then
    right, the rest wrong twice (shuffled, seeded)."""
    pairs = [(1, 1)] * both + [(1, 0)] * lost + [(0, 1)] * gained
    pairs += [(0, 0)] * (n - len(pairs))
    random.Random(0).shuffle(pairs)
    return [a for a, _ in pairs], [b for _, b in pairs]


# ---------------------------------------------------------------- 1. the `popo` command finds user modules
def test_the_popo_command_imports_reward_modules_from_the_folder_it_runs_in(tiny_testbed, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "my_rewards.py").write_text(SHORT_REWARD)
    popo = Path(sys.executable).parent / "popo"  # the console script, not `python -m popo`
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(popo), "train", *tiny_testbed, "reward.functions=my_rewards:short", "train.steps=1",
                           "train.out_dir=run"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (work / "run" / "checkpoints" / "step-000001").is_dir()


def test_a_reward_module_found_nowhere_says_where_popo_looked(tiny_testbed, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    code = main(["train", *tiny_testbed, "reward.functions=nowhere_rewards:short", "train.steps=1",
                 f"train.out_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "module 'nowhere_rewards' does not import" in err
    assert str(tmp_path) in err and "PYTHONPATH" in err  # where it looked, and how to make it look elsewhere
    assert not (tmp_path / "run").exists()  # refused before any work


# ---------------------------------------------------------------- 2. resume keeps what the evaluation measures
@pytest.mark.parametrize("override, key, old, new", [
    ("data.eval_size=3", "data.eval_size", "6", "3"),
    ("train.eval_samples=2", "train.eval_samples", "4", "2"),
    ("rollout.temperature=0.5", "rollout.temperature", "1.0", "0.5"),
    ("testbed.validation_size=20", "testbed.validation_size", "0", "20"),
])
def test_resume_refuses_settings_that_change_the_evaluation(finished_run, capsys, override, key, old, new):
    before = (finished_run / "config.yaml").read_text()
    assert main(["train", "--resume", str(finished_run), override, "train.steps=4"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and f"{key}: the run used {old}, this command gives {new}" in err, err
    assert "Traceback" not in err and (finished_run / "config.yaml").read_text() == before


# ---------------------------------------------------------------- 3. Ctrl-C during `popo compare`
def test_ctrl_c_during_compare_prints_one_line_and_exits_130(tiny_testbed, tmp_path, monkeypatch, capsys):
    from popo.trainer import Trainer

    train_step = Trainer.train_step

    def interrupted_after_one_step(self, step):
        record = train_step(self, step)
        signal.raise_signal(signal.SIGINT)  # what Ctrl-C sends; the trainer's handler takes it
        return record

    monkeypatch.setattr(Trainer, "train_step", interrupted_after_one_step)
    out = tmp_path / "study"
    code = main(["compare", *tiny_testbed, "train.steps=4", "--methods", "popo", "--seeds", "1", "--out", str(out),
                 "--no-report"])
    err = capsys.readouterr().err
    assert code == 130, err
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("interrupted: popo compare") and f"--out {out}" in lines[0]  # how to continue
    assert (out / "popo" / "seed-0" / "checkpoints" / "step-000001").is_dir()  # the run resumes from here


# ---------------------------------------------------------------- 4. the "made the model worse" warning
def test_a_fall_within_noise_is_not_called_a_worse_model():
    start, end = paired(500, both=74, lost=20, gained=17)  # 0.188 -> 0.182: 20 lost, 17 gained
    text = run_summary(outcome_records(start, end), wall_s=1.0, run_dir="runs/x", checkpoint=None)
    assert "WARNING" not in text and "made the model worse" not in text
    assert "within noise" in text and "20 went from right to wrong and 17 from wrong to right" in text
    assert "p=0.74" in text  # exact two-sided binomial test on the 37 changed problems


def test_a_fall_beyond_noise_is_warned_with_the_evidence():
    start, end = paired(500, both=60, lost=34, gained=10)
    text = run_summary(outcome_records(start, end), wall_s=1.0, run_dir="runs/x", checkpoint=None)
    line = next(line for line in text.splitlines() if "WARNING" in line)
    assert "fell from 0.188 to 0.140" in line and "made the model worse" in line
    assert "34 went from right to wrong and 10 from wrong to right" in line and "p=0.000388" in line


def test_a_training_run_logs_per_problem_outcomes_for_the_summary(finished_run):
    records = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in records if "eval/greedy_acc" in r]
    assert evaluated and all(len(r[OUTCOMES_KEY]) == 6 for r in evaluated)  # data.eval_size=6
    assert all(sum(r[OUTCOMES_KEY]) / 6 == pytest.approx(r["eval/greedy_acc"]) for r in evaluated)
    # the sampled outcomes: correct samples per problem, the numbers behind avg@k
    k = next(int(key.split("@")[1]) for key in evaluated[0] if key.startswith("eval/avg@"))
    assert all(len(r[SAMPLE_OUTCOMES_KEY]) == 6 and all(0 <= c <= k for c in r[SAMPLE_OUTCOMES_KEY]) for r in evaluated)
    assert all(sum(r[SAMPLE_OUTCOMES_KEY]) / (6 * k) == pytest.approx(r[f"eval/avg@{k}"]) for r in evaluated)


# ---------------------------------------------------------------- 5. the continue command runs as printed
def test_the_printed_continue_command_is_runnable():
    text = run_summary([{"step": 0}, {"step": 72, "reward_mean": 0.1}], wall_s=1.0, run_dir="runs/x",
                       checkpoint="runs/x/checkpoints/step-000072", target_steps=72)
    command = next(line for line in text.splitlines() if "continue:" in line).split("continue: ")[1]
    words = shlex.split(command.split("  (")[0])
    assert words[:4] == ["popo", "train", "--resume", "runs/x"]
    assert load_config(None, words[4:]).train.steps == 144  # no placeholder: `train.steps=N` does not load


# ---------------------------------------------------------------- 6. a shorter resume is refused
def test_resume_with_fewer_steps_is_refused_and_keeps_the_target(finished_run, capsys):
    before = (finished_run / "config.yaml").read_text()
    assert main(["train", "--resume", str(finished_run), "train.steps=1"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "train.steps=1" in err and "train.steps=2" in err and "Traceback" not in err
    assert (finished_run / "config.yaml").read_text() == before


# ---------------------------------------------------------------- 7. Ctrl-C during `popo train`
def test_ctrl_c_during_train_says_interrupted_and_exits_130(tiny_testbed, tmp_path, monkeypatch, capsys):
    from popo.trainer import Trainer

    train_step = Trainer.train_step

    def interrupted_at_step_two(self, step):
        record = train_step(self, step)
        if step == 1:
            signal.raise_signal(signal.SIGINT)
        return record

    monkeypatch.setattr(Trainer, "train_step", interrupted_at_step_two)
    run = tmp_path / "run"
    code = main(["train", *tiny_testbed, "train.steps=50", "train.eval_every=100", f"train.out_dir={run}"])
    out = capsys.readouterr().out
    summary = out[out.index("run interrupted"):]
    assert code == 130
    assert summary.startswith("run interrupted at step 2 of 50")
    assert "held-out at start (step 0)" in summary and "held-out at end" not in summary
    assert f"continue: popo train --resume {run}  (picks up at step 2" in summary


# ---------------------------------------------------------------- 8. evaluation off on purpose
def test_evaluation_turned_off_on_purpose_is_not_blamed_on_the_data(tiny_testbed, tmp_path):
    from popo.build import build_trainer

    lines: list[str] = []
    trainer = build_trainer(load_config(None, [*tiny_testbed, "data.eval_source=", f"train.out_dir={tmp_path}"]),
                            log=lines.append)
    trainer.verifier.close()
    line = next(line for line in lines if line.startswith("evaluation:"))
    assert "no held-out split" not in line and "data.eval_source" in line


# ---------------------------------------------------------------- 9. help texts and the compare refusal
def test_train_help_points_to_popo_config(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "`popo config`" in capsys.readouterr().out


def test_eval_help_states_each_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "k sampled completions per problem (default: the protocol's) --temperature" in text
    assert "(default: testbed)" in text  # defaults with a value are still shown


def test_compare_names_only_the_shared_settings_that_differ(tmp_path, capsys):
    from popo.study.runs import method_variants, prepare_study, study_overrides

    out = tmp_path / "study"
    prepare_study(out, None, [*study_overrides(), "train.steps=20"], method_variants(["popo"]), [0], "popo compare")
    assert main(["compare", "train.steps=30", "--methods", "popo", "--seeds", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "other shared settings (train.steps: 20 -> 30)" in err
    assert "data.eval_size" not in err and "model.name" not in err  # not the whole override string
