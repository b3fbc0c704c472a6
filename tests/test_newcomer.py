"""Defects a newcomer hit in their first hour (issue 18), each pinned by a test that failed before the fix."""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import WARM_TESTBED, warm_testbed_config
from popo.build import build_trainer
from popo.checkpoint import latest_checkpoint, list_checkpoints
from popo.cli import main
from popo.config import load_config
from popo.errors import CheckpointError, ConfigError, SetupError


@pytest.fixture(scope="module")
def cache(warm_testbed_cache) -> str:
    return warm_testbed_cache


def quiet(message: str) -> None:
    pass


# ---------------------------------------------------------------- 1. LoRA checkpoints open from anywhere
def test_popo_eval_opens_a_lora_checkpoint_from_another_directory(cache, tmp_path, monkeypatch):
    pytest.importorskip("peft")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(cache, work / "cache")  # a cache dir given as a relative path, as a user would
    monkeypatch.chdir(work)
    config = warm_testbed_config("cache", "run", "model.lora.r=4", "model.lora.alpha=8", "train.steps=1")
    build_trainer(config, log=quiet).run()
    policy = (work / "run" / "checkpoints" / "step-000001" / "policy").resolve()
    assert (policy / "adapter_config.json").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["eval", "--model", str(policy), "--benchmarks", "testbed", "--samples", "2", "--limit", "3",
                 "--out", "res.json", *WARM_TESTBED]) == 0
    assert json.loads((elsewhere / "res.json").read_text())["results"]["testbed"]["problems"] == 3


# ---------------------------------------------------------------- 2. the recorded command reproduces the study
def test_compare_records_a_command_that_gives_the_same_configuration(monkeypatch, tmp_path):
    import popo.study.runs as runs

    seen = {}

    def fake_run_study(out, variants, seeds, *, config_path, overrides, command, **kwargs):
        seen.setdefault("calls", []).append((config_path, list(overrides), command))

    monkeypatch.setattr(runs, "run_study", fake_run_study)
    argv = ["compare", "train.steps=20", "rollout.group_size=4", "--methods", "popo,grpo", "--seeds", "2",
            "--out", str(tmp_path / "s"), "--no-report"]
    assert main(argv) == 0
    config_path, overrides, command = seen["calls"][0]
    assert "train.steps=20" in command
    words = shlex.split(command)
    assert words[0] == "popo"
    assert main([*words[1:], "--no-report"]) == 0  # the recorded command, run again (report not faked here)
    again = seen["calls"][1]
    assert (again[0], again[1]) == (config_path, overrides)
    assert load_config(again[0], again[1]) == load_config(config_path, overrides)


# ---------------------------------------------------------------- 3. resume with another algorithm
def test_resume_with_another_algorithm_is_refused_with_the_way_forward(cache, tmp_path, capsys):
    run = tmp_path / "run"
    build_trainer(warm_testbed_config(cache, run, "train.steps=1"), log=quiet).run()
    assert main(["train", "--resume", str(run), "algo.name=grpo", "train.steps=2"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "algo.name" in err and "start a new run" in err and "Traceback" not in err


# ---------------------------------------------------------------- 4. the recorded protocol is the one used
def test_popo_eval_records_the_protocol_it_used_for_the_testbed(cache, tmp_path):
    out = tmp_path / "res.json"
    policy = latest_checkpoint(_one_step_run(cache, tmp_path)) / "policy"
    assert main(["eval", "--model", str(policy), "--benchmarks", "testbed", "--samples", "2", "--limit", "2",
                 "--out", str(out), *WARM_TESTBED]) == 0
    saved = json.loads(out.read_text())
    # a run's checkpoint is evaluated with the run's own settings (its 12-token limit, not the default 24)
    assert saved["protocol"]["benchmarks"]["testbed"] == {"template": "plain", "max_new_tokens": 12}
    record = json.loads(out.with_suffix(".records.jsonl").read_text().splitlines()[0])
    assert {"prompt", "gold"} <= record.keys()
    table = out.with_suffix(".md").read_text()
    assert "| testbed | 2 | plain | 12 |" in table
    header = table.splitlines()[2]
    assert header.index("greedy_acc") < header.index("avg@1") < header.index("pass@1") < header.index("maj@2")


def _one_step_run(cache, tmp_path) -> Path:
    run = tmp_path / "one"
    build_trainer(warm_testbed_config(cache, run, "train.steps=1"), log=quiet).run()
    return run


# ---------------------------------------------------------------- 6. one run per folder, one process per run
def test_a_second_run_into_a_run_folder_is_refused_unless_resumed_or_overwritten(cache, tmp_path):
    run = _one_step_run(cache, tmp_path)
    metrics = (run / "metrics.jsonl").read_text()
    with pytest.raises(SetupError, match="already holds a run: continue it with `popo train --resume"):
        build_trainer(warm_testbed_config(cache, run, "train.steps=1"), log=quiet)
    assert (run / "metrics.jsonl").read_text() == metrics and list_checkpoints(run)  # nothing lost
    build_trainer(warm_testbed_config(cache, run, "train.steps=2", "train.overwrite=true"), log=quiet).run()
    assert [p.name for p in list_checkpoints(run)] == ["step-000002"]


def test_a_live_process_keeps_a_second_one_out_of_its_run_folder(cache, tmp_path):
    from popo.run_dir import RunLock

    run = tmp_path / "busy"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from popo.run_dir import RunLock; lock = RunLock(Path(sys.argv[1])); "
                               "print('locked', flush=True); time.sleep(60)", str(run)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SetupError, match=rf"in use by another popo process \(PID {holder.pid}\)"):
            build_trainer(warm_testbed_config(cache, run, "train.steps=1"), log=quiet)
    finally:
        holder.kill()
        holder.wait()
    RunLock(run).release()  # the operating system released the dead holder's lock


# ---------------------------------------------------------------- 7. a full disk while checkpointing
@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on '
                 'device" })'),  # the shape of safetensors' error
])
def test_a_full_disk_names_the_last_intact_checkpoint_and_leaves_no_partial_write(cache, tmp_path, monkeypatch,
                                                                                 failure):
    import popo.companions  # writes the target's and predictor's files

    real = popo.companions.save_file

    def full_disk_at_step_2(tensors, filename, *args, **kwargs):
        if "step-000002" in str(filename):
            raise failure
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(popo.companions, "save_file", full_disk_at_step_2)
    run = tmp_path / "full"
    trainer = build_trainer(warm_testbed_config(cache, run, "train.steps=2", "train.save_every=1"), log=quiet)
    with pytest.raises(CheckpointError) as err:
        trainer.run()
    message = str(err.value)
    assert "no space left on device while writing checkpoint step 2" in message
    assert "the last intact checkpoint is step 1" in message and f"--resume {run}" in message
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000001"]


def test_resume_clears_unfinished_checkpoint_writes(cache, tmp_path):
    run = _one_step_run(cache, tmp_path)
    (run / "checkpoints" / "step-000002.tmp").mkdir()
    build_trainer(load_config(run / "config.yaml", ["train.steps=2"]), resume=True, log=quiet)
    assert not (run / "checkpoints" / "step-000002.tmp").exists()


# ---------------------------------------------------------------- 8. one-line errors
def test_a_closed_pipe_ends_popo_config_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "popo", "config"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before popo writes, as with `popo config | head -0`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_unknown_benchmark_is_an_error_line(tmp_path, capsys):
    from popo.testbed.model import build_tiny_qwen2
    from popo.testbed.tokenizer import build_tokenizer

    tok = build_tokenizer()
    build_tiny_qwen2(tok).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    capsys.readouterr()  # saving may draw a progress bar on stderr (unless an earlier test turned them off)
    assert main(["eval", "--model", str(tmp_path / "m"), "--benchmarks", "math-500", "--out",
                 str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown benchmark 'math-500'. Did you mean 'math500'?"), err


def test_yaml_errors_name_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo:\n  name: popo\n  alpha: [0.1\n")
    with pytest.raises(ConfigError, match=rf"^{bad}:4:1: invalid YAML"):
        load_config(bad)


def test_an_override_without_a_value_says_so(capsys):
    assert main(["train", "algo.alpha"]) == 2
    assert "algo.alpha is neither a config file nor an override: write algo.alpha=VALUE" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="override 'algo.beta' has no value: write algo.beta=VALUE"):
        load_config(None, ["algo.alpha=0.1", "algo.beta"])


def test_an_over_long_prompt_error_suggests_skipping(tmp_path):
    from popo.data.sources import DataError

    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"problem": "1+1=" * 200, "answer": "2"}) + "\n")
    config = load_config(None, [f"data.source={data}", "data.max_prompt_tokens=16"])
    from popo.data.prepare import fit_prompts
    from popo.data.sources import load_examples
    from popo.testbed.tokenizer import build_tokenizer

    examples, _ = load_examples(data)
    with pytest.raises(DataError, match="data.on_bad_row=skip drops such prompts"):
        fit_prompts(config, examples, build_tokenizer(), context=None, source=str(data), split="train", log=quiet)


# ---------------------------------------------------------------- friction: logs that read as lines
def test_a_run_logged_to_a_file_reads_as_plain_lines_and_ends_with_a_summary(cache, tmp_path):
    run = tmp_path / "logged"
    args = ["train", *warm_testbed_config_args(cache, run), "train.steps=4", "train.progress=true",
            "train.eval_every=2"]
    proc = subprocess.run([sys.executable, "-m", "popo", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "\r" not in out and "\r" not in proc.stderr, "no carriage-return progress bars in a log file"
    lines = out.splitlines()
    assert any(line.startswith("step 2/4  reward ") and "held-out at step 2: greedy_acc" in line for line in lines)
    assert any(line.startswith("step 4/4  reward ") for line in lines)
    summary = out[out.index("run finished: 4 steps"):]
    assert "held-out at start (step 0): greedy_acc" in summary and "held-out at end (step 4)" in summary
    assert f"popo train --resume {run}" in summary and "step-000004" in summary


def warm_testbed_config_args(cache, run) -> list[str]:
    """The overrides of `conftest.warm_testbed_config` as command-line words."""
    return [f"testbed.cache_dir={cache}", *WARM_TESTBED, "data.eval_size=20", "rollout.prompts_per_step=8",
            "rollout.group_size=4", "rollout.max_new_tokens=12", "train.save_every=0", "train.tensorboard=false",
            f"train.out_dir={run}", "model.device=cpu"]


def test_the_summary_says_when_held_out_accuracy_fell():
    from popo.step_log import run_summary

    records = [{"step": 0, "eval/greedy_acc": 0.21}, {"step": 20, "reward_mean": 0.1, "eval/greedy_acc": 0.06}]
    text = run_summary(records, wall_s=12.0, run_dir="runs/x", checkpoint=None)
    assert "WARNING: held-out greedy accuracy fell from 0.210 to 0.060" in text
    better = [{"step": 0, "eval/greedy_acc": 0.21}, {"step": 20, "eval/greedy_acc": 0.30}]
    assert "WARNING" not in run_summary(better, wall_s=1.0, run_dir="runs/x", checkpoint=None)


# ---------------------------------------------------------------- friction: recipes that work off this machine
@pytest.mark.parametrize("recipe", sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")
                                    if not p.name.startswith("trl")))  # trl-*.yaml are TRL recipes
def test_recipes_load_and_name_no_path_outside_the_repository(recipe):
    config = load_config(recipe)
    for source in (config.data.source, config.data.eval_source):
        assert not source.startswith(("..", "/")), f"{recipe.name}: {source} exists only on the machine that wrote it"


# ---------------------------------------------------------------- friction: plots stay inside [0, 1]
def test_confidence_bands_and_bars_are_clipped_to_the_unit_interval(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from popo.study.plots import plot_curves, plot_forest

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_curves({"popo": [(0, 0.1, 0.5), (10, 0.95, 0.3)]}, tmp_path / "c.png", xlabel="x", ylabel="acc",
                title="t", baseline=0.2)
    plot_forest([("popo", [(0.1, 0.5)]), ("grpo", [(0.9, 0.4)])], ["greedy"], tmp_path / "f.png", start=[0.2])
    band = figures[0].axes[0].collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() >= 0.0 and band.max() <= 1.0 and band.min() == 0.0 and band.max() == 1.0
    bars = [seg for c in figures[1].axes[0].collections for seg in c.get_segments()]
    xs = [x for seg in bars for x, _ in seg]
    assert min(xs) == 0.0 and max(xs) == 1.0
    assert figures[1]._suptitle.get_text().startswith("final held-out accuracy")


# ---------------------------------------------------------------- friction: say which held-out set is used
def test_training_on_a_file_does_not_evaluate_on_the_testbed_silently(cache, tmp_path):
    data = tmp_path / "own.jsonl"
    data.write_text("".join(json.dumps({"problem": f"{a}+{a}=", "answer": str(2 * a)}) + "\n" for a in range(8)))
    lines: list[str] = []
    trainer = build_trainer(warm_testbed_config(cache, tmp_path / "own", f"data.source={data}",
                                                "reward.functions=testbed"), log=lines.append)
    assert len(trainer.eval_set) == 0
    assert any(line.startswith("evaluation: off (data.source=") for line in lines), lines
    trainer.verifier.close()
    lines.clear()
    trainer = build_trainer(warm_testbed_config(cache, tmp_path / "tb"), log=lines.append)
    assert len(trainer.eval_set) == 20 and "evaluation: 20 held-out prompts from testbed" in "\n".join(lines)
    trainer.verifier.close()


# ---------------------------------------------------------------- 5. defaults chosen on validation, documented
def test_the_default_learning_rate_is_the_one_chosen_on_validation():
    chosen = (Path(__file__).resolve().parents[1] / "docs" / "results" / "defaults.md").read_text()
    lr = load_config(None).optim.lr
    assert lr == 3e-5 and "The new default is **3e-5**" in chosen  # 1e-4, the old default, made it worse
    assert lr != 1e-4
