"""Issue 37, the command line: `popo compare` / `popo sweep` default to what `popo demo` trains and tune on
avg@K, docs/results/defaults.md is what the code writes, every `popo` command runs torch on one thread unless
OMP_NUM_THREADS says otherwise, a resumed run's summary counts the steps it trained, a user's evaluation file
is named by itself (not "(test)"), and the TRL launcher prints none of TRL's deprecation FutureWarnings."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import popo.study.report as report
import popo.study.tune as tune
from popo.cli import main
from popo.config import ConfigError, load_config
from popo.study.demo import demo_overrides, method_overrides
from popo.study.runs import study_overrides

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- compare / sweep defaults: the demo's
def test_a_study_without_a_config_trains_what_the_demo_trains_on_the_validation_split(capsys):
    study = load_config(None, study_overrides())
    for method in ("popo", "grpo"):
        demo = load_config(None, [*demo_overrides(quick=False), *method_overrides(method)])
        assert study.testbed == demo.testbed and study.rollout == demo.rollout and study.model == demo.model
        assert study.optim == demo.optim  # the rate study v3 chose for the demo's task
        for key in ("steps", "eval_every", "eval_samples", "diag_every", "seed"):
            assert getattr(study.train, key) == getattr(demo.train, key), key
        assert (study.data.source, study.data.eval_size) == (demo.data.source, demo.data.eval_size)
    assert study.testbed.task == "countdown" and study.data.eval_source == "testbed"  # validation: a study chooses
    assert study.train.save_every > 0 and not study.train.overwrite  # interrupted runs resume
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "what `popo demo` trains" in text and "avg@16 with the default settings" in text


def test_tuning_chooses_on_avg_at_k_unless_told(monkeypatch, tmp_path):
    assert tune.tune_metric(None, None, []) == "avg@16"  # study v3's rule at the default train.eval_samples
    assert tune.tune_metric(None, None, ["train.eval_samples=8"]) == "avg@8"
    assert tune.tune_metric(None, None, ["train.eval_samples=0"]) == "greedy_acc"
    assert tune.tune_metric("pass@16", None, []) == "pass@16"
    with pytest.raises(ConfigError, match="the runs report greedy_acc, avg@16, pass@16"):
        tune.tune_metric("avg@8", None, [])
    calls = []
    by_lr = {"1e-5": (0.5, 0.1), "3e-5": (0.1, 0.4), "1e-4": (0.2, 0.2)}  # (greedy_acc, avg@16)
    monkeypatch.setattr(tune, "run_study", lambda out, variants, seeds, **kw: calls.append(kw))
    monkeypatch.setattr(report, "summary", lambda out: {
        f"{m} lr={lr}": {s: {"greedy_acc": g, "avg@16": a} for s in range(3)}
        for m in ("popo", "grpo") for lr, (g, a) in by_lr.items()})
    argv = ["compare", "--methods", "popo,grpo", "--tune", "optim.lr=1e-5,3e-5,1e-4", "--seeds", "5",
            "--out", str(tmp_path / "s"), "--tune-only"]
    assert main(argv) == 0
    record = json.loads((tmp_path / "s" / "tuning.json").read_text())
    assert record["metric"] == "validation avg@16" and record["popo"]["chosen"] == "3e-5"  # greedy would pick 1e-5
    assert "--tune-metric" not in calls[0]["command"]  # the default is not written into the recorded command


def test_defaults_md_is_what_the_code_writes():
    spec = importlib.util.spec_from_file_location("defaults_script", ROOT / "docs" / "results" / "defaults.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert (ROOT / "docs" / "results" / "defaults.md").read_text() == script.render(), \
        "docs/results/defaults.md is stale: run `python docs/results/defaults.py`"


# ---------------------------------------------------------------- one torch thread unless told
@pytest.mark.slow
@pytest.mark.parametrize("omp, threads", [(None, 1), ("2", 2)])
def test_the_popo_command_runs_torch_on_one_thread_unless_omp_num_threads_says(tiny_testbed, tmp_path, omp, threads):
    """A real `popo compare` (one run, trained in the command's own process): done.json records the run's
    torch threads (torch caps OMP_NUM_THREADS at the cores it may use, hence 2)."""
    if len(os.sched_getaffinity(0)) < threads:
        pytest.skip(f"torch would cap {threads} threads at this machine's cores")
    config = tmp_path / "tiny.yaml"
    config.write_text("train: {progress: false}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env |= {"OMP_NUM_THREADS": omp} if omp else {}
    out = tmp_path / "study"
    done = subprocess.run([sys.executable, "-m", "popo", "compare", str(config), *tiny_testbed, "train.steps=1",
                           "--methods", "popo", "--seeds", "1", "--out", str(out), "--no-report"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "popo" / "seed-0" / "done.json").read_text())["threads"] == threads


def test_the_thread_default_is_restored_after_an_in_process_command(monkeypatch):
    seen = []
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("popo.cli._dispatch", lambda args: seen.append(
        (torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"))) or 0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["config"]) == 0
        assert seen == [(1, "1")] and torch.get_num_threads() == 2 and "OMP_NUM_THREADS" not in os.environ
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- the end-of-run summary after a resume
def test_a_resumed_runs_summary_counts_the_steps_it_trained(tiny_testbed, tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    assert main(["train", *tiny_testbed, "train.steps=2", f"train.out_dir={run}"]) == 0
    assert "run finished: 2 steps in " in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "train.steps=3"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("run finished"))
    assert line.startswith("run finished: 1 steps in ") and "(resumed at step 2, now at step 3)" in line


# ---------------------------------------------------------------- a user's evaluation file, by its name
def test_an_evaluation_file_is_named_by_itself_not_as_a_test_split(tiny_testbed, tmp_path, one_thread):
    from popo.build import build_trainer

    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"problem": f"{a}+{a}", "answer": str(2 * a)}) + "\n" for a in range(5)))
    lines: list[str] = []
    trainer = build_trainer(load_config(None, [*tiny_testbed, f"data.eval_source={held}", f"train.out_dir={tmp_path}"]),
                            log=lines.append)
    trainer.verifier.close()
    line = next(line for line in lines if line.startswith("evaluation:"))
    assert line == f"evaluation: 5 held-out prompts from {held}", line
    lines.clear()
    trainer = build_trainer(load_config(None, [*tiny_testbed, f"train.out_dir={tmp_path / 'tb'}"]), log=lines.append)
    trainer.verifier.close()
    assert "evaluation: 6 held-out prompts from testbed (test)" in lines  # the testbed names the split it reads


# ---------------------------------------------------------------- the TRL launcher's warnings
def test_the_trl_launcher_prints_no_future_warnings(tmp_path, one_thread):
    pytest.importorskip("trl")
    from popo.integrations.trl.__main__ import main as launch
    from popo.testbed.model import TinyModelSpec, build_tiny_qwen2
    from popo.testbed.tokenizer import build_tokenizer

    model = tmp_path / "model"
    tokenizer = build_tokenizer()
    build_tiny_qwen2(tokenizer, TinyModelSpec(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                              num_key_value_heads=2, intermediate_size=64), seed=0).save_pretrained(model)
    tokenizer.save_pretrained(model)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(f'{{"problem": "{i}+{i}", "answer": "{2 * i}"}}\n' for i in range(8)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model_name_or_path: {model}\ntrain_file: {data}\ntemplate: plain\nrewards: [math]\n"
                      "verifier_workers: 0\nnum_generations: 4\nper_device_train_batch_size: 8\n"
                      "max_completion_length: 8\nmax_steps: 2\nuse_cpu: true\nbf16: false\nreport_to: none\n"
                      f"save_strategy: steps\nsave_steps: 1\ndisable_tqdm: true\noutput_dir: {tmp_path / 'out'}\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert launch(["--config", str(recipe)]) == 0
    future = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if issubclass(w.category, FutureWarning)]
    assert future == []
