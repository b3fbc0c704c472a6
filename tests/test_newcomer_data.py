"""What a new user hit when bringing their own data, rewards and runs: hostile gold values, the TRL
launcher's columns and spelling, the compute tables, characters the testbed tokenizer cannot represent,
reward functions that fail on everything, `popo eval` defaults and offline benchmarks, empty diagnostic
panels and methods that all end below the start."""

from __future__ import annotations

import argparse
import textwrap

import pytest
import yaml

from popo.config import load_config, to_dict
from popo.data.example import Example
from popo.errors import DataError, SetupError, TrainingHalted

# ---------------------------------------------------------------- 1. hostile golds and completions
HOSTILE_GOLDS = [None, 3, 2.5, [], [None, "x", 3], {"a": 1}, "", "   ", "9" * 20_000, ("5", None), [["5"]],
                 True, float("nan"), b"5", object()]
HOSTILE_COMPLETIONS = ["5", "", "\\boxed{5}", "1+2=3;3", "3,5=8", "\\boxed{" * 3000, "x" * 50_000, None, 3, b"5",
                       ["\\boxed{5}"], {"content": "5"}]


def _verifiers():
    from popo.rewards import MathVerifier
    from popo.rewards.composite import CompositeReward, RewardPart
    from popo.testbed.countdown import CountdownVerifier
    from popo.testbed.addition import AdditionVerifier

    return {"math": MathVerifier(num_workers=0, timeout_s=2.0), "countdown": CountdownVerifier(),
            "addition": AdditionVerifier(),
            "composite": CompositeReward([RewardPart("math", 1.0, verifier=MathVerifier(num_workers=0)),
                                          RewardPart("countdown", 0.5, verifier=CountdownVerifier())])}


@pytest.mark.parametrize("gold", HOSTILE_GOLDS, ids=lambda g: type(g).__name__ + str(len(repr(g))))
def test_every_verifier_scores_hostile_golds_zero_and_never_raises(gold):
    from popo.rewards import math_reward
    from popo.testbed.countdown import countdown_reward
    from popo.testbed.addition import addition_reward

    for name, verifier in _verifiers().items():
        with verifier:
            rewards = verifier.score(HOSTILE_COMPLETIONS, [gold] * len(HOSTILE_COMPLETIONS))
        assert rewards == [0.0] * len(HOSTILE_COMPLETIONS), name
    for fn in (countdown_reward, addition_reward, lambda c, g: math_reward(c, g, timeout_s=2.0)):
        assert [fn(c, gold) for c in HOSTILE_COMPLETIONS] == [0.0] * len(HOSTILE_COMPLETIONS)


def test_good_golds_still_score_and_bad_alternatives_are_ignored():
    from popo.rewards import MathVerifier
    from popo.testbed.countdown import countdown_reward
    from popo.testbed.addition import addition_reward

    assert countdown_reward("5*4=20,20+2=22;22", [None, "5,4,2>22", 7]) == 1.0
    assert addition_reward("5,1=15", ["15", None]) == 1.0
    with MathVerifier(num_workers=0) as v:
        assert v.score(["\\boxed{5}", "\\boxed{5}"], [None, "5"]) == [0.0, 1.0]
        assert v.stats.bad_inputs == 1


# ---------------------------------------------------------------- 2. the TRL launcher's columns
REWARDS_MODULE = '''
def exact(completions, answer, **kw):                 # as docs/own-task.md writes it
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

def by_level(completions, level):                     # no **kwargs: only the columns it names
    return [float(lv) for lv in level]

def needs_difficulty(completions, difficulty, **kw):  # a column the dataset does not have
    return [0.0 for _ in completions]
'''


@pytest.fixture
def launcher_files(tmp_path, monkeypatch):
    from popo.testbed.tokenizer import build_tokenizer

    (tmp_path / "newcomer_rewards.py").write_text(textwrap.dedent(REWARDS_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(f'{{"problem": "{i}+{i}=", "answer": "{2 * i}", "level": {i}}}\n' for i in range(8)))
    tokenizer_only = tmp_path / "tokenizer-only"  # a local folder without weights: loading a model would fail
    build_tokenizer().save_pretrained(tokenizer_only)
    return data, tokenizer_only


def _recipe(tmp_path, data, model, rewards) -> str:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""model_name_or_path: {model}
train_file: {data}
template: plain
rewards: {rewards}
num_generations: 2
per_device_train_batch_size: 2
max_completion_length: 4
max_steps: 1
use_cpu: true
bf16: false
report_to: none
output_dir: {tmp_path / "out"}
""")
    return str(recipe)


def test_trl_launcher_checks_reward_columns_before_the_model_loads(launcher_files, tmp_path, capsys):
    from popo.integrations.trl.__main__ import main

    data, model = launcher_files
    recipe = _recipe(tmp_path, data, model, "[math, 'newcomer_rewards:exact', 'newcomer_rewards:needs_difficulty']")
    assert main(["--config", recipe]) == 2
    err = capsys.readouterr().err
    assert "'difficulty'" in err and "columns: answer, level" in err, err
    assert not (tmp_path / "out").exists()


def test_trl_launcher_gives_reward_functions_popo_train_columns(launcher_files, tmp_path):
    from transformers import AutoTokenizer

    from popo.integrations.trl.__main__ import LaunchArguments, checked_rewards, prompts_dataset, reward_function

    data, model = launcher_files
    launch = LaunchArguments(train_file=str(data), template="plain",
                             rewards=["newcomer_rewards:exact", "newcomer_rewards.by_level"])
    dataset = prompts_dataset(launch, AutoTokenizer.from_pretrained(model))
    assert {"prompt", "answer", "level"} <= set(dataset.column_names) and "answers" not in dataset.column_names
    notes = []
    fns = [reward_function(name, launch, log=notes.append) for name in launch.rewards]
    assert len(notes) == 1 and "newcomer_rewards:by_level" in notes[0]  # the old spelling works, with a note
    columns = [c for c in dataset.column_names if c != "prompt"]
    exact, by_level = checked_rewards(fns, launch.rewards, columns)
    rows = dataset[:2]
    trl_kwargs = dict(prompts=rows["prompt"], completions=["0", "9"], completion_ids=[[1], [2]], trainer_state=None,
                      log_extra=None, log_metric=None, answer=rows["answer"], level=rows["level"])
    assert exact(**trl_kwargs) == [1.0, 0.0]
    assert by_level(**trl_kwargs) == [0.0, 1.0]


# ---------------------------------------------------------------- 3. compute tables
def test_compare_compute_table_reports_rows_through_forward_and_backward():
    from popo.study.report import compute_rows

    steps = [{"step": s, "rollouts": 64, "trained_rollouts": 64, "trained_tokens": 640, "forwarded_rollouts": 12,
              "forwarded_tokens": 130, "time/train": 1.0} for s in (1, 2)]
    lines = compute_rows({"grpo": {0: steps}}, {"grpo": {0: {"wall_s": 5.0}}})
    assert "forward+backward" in lines[0] and "trained" not in lines[0]
    assert lines[2].split(" | ")[1:4] == ["128", "24", "260"]


def test_demo_results_table_reports_forwarded_rows():
    from popo.study.demo import results_table

    table = results_table([{"method": "grpo", "greedy_acc": 0.5, "trained_rollouts": 3072, "forwarded_rollouts": 1136,
                            "trained_tokens": 30000, "forwarded_tokens": 11000}], 4)
    header, _, row = table.splitlines()
    assert "forward+backward" in header and "trained" not in header
    assert "| 1136 | 11000 |" in row and "3072" not in row


# ---------------------------------------------------------------- 4. text the tokenizer cannot represent
def test_characters_the_testbed_tokenizer_cannot_represent_are_an_error(tmp_path):
    from popo.data.prepare import fit_prompts, load_examples_for
    from popo.testbed.tokenizer import build_tokenizer

    data = tmp_path / "own.jsonl"
    data.write_text('{"problem": "2+3=", "answer": "5"}\n'
                    '{"problem": "Ann has 6 boxes with 20 pens each. \\\\boxed{}", "answer": "120"}\n')
    tokenizer, logged = build_tokenizer(), []
    config = load_config(None, [f"data.source={data}"])
    examples = load_examples_for(config, str(data), split="train", log=logged.append)
    with pytest.raises(DataError) as err:
        fit_prompts(config, examples, tokenizer, context=None, source=str(data), split="train", log=logged.append)
    message = str(err.value)
    assert f"{data}:2" in message and "'A'" in message and "'{'" in message and "on_bad_row=skip" in message
    config = load_config(None, [f"data.source={data}", "data.on_bad_row=skip"])
    kept, prompts = fit_prompts(config, examples, tokenizer, context=None, source=str(data), split="train",
                                log=logged.append)
    assert [ex.answer for ex in kept] == ["5"] and prompts == ["2+3="]
    assert any("skipped 1 prompts with characters" in line for line in logged)


# ---------------------------------------------------------------- 5. reward functions that always fail
FAILING_MODULE = '''
def always_one(completions, **kw):
    return [1.0] * len(completions)

def fails_on_bad(completions, **kw):
    if "bad" in completions:
        raise KeyError("bad item")
    return [1.0] * len(completions)

def always_raises(completions, **kw):
    return [1 / 0 for _ in completions]
'''


def test_reward_failures_are_counted_and_a_function_failing_everything_stops_the_run(tmp_path, monkeypatch):
    from popo.rewards.composite import CompositeReward, RewardPart, reward_metrics
    from popo.rewards.functions import FunctionPool

    (tmp_path / "newcomer_failing.py").write_text(textwrap.dedent(FAILING_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    specs = [f"newcomer_failing:{n}" for n in ("always_one", "fails_on_bad", "always_raises")]
    with FunctionPool(specs, columns=["answer"], num_workers=1, timeout_s=5.0, max_memory_mb=0) as pool:
        pool.wait_ready()
        mixed = CompositeReward([RewardPart("always_one", 1.0, function=0), RewardPart("fails_on_bad", 1.0, function=1)],
                                pool=pool, items_per_call=1, log=lambda m: None)
        texts = ["bad", "ok", "ok", "ok"]
        assert mixed.score_rows(["p"] * 4, texts, [Example("p", "x")] * 4) == [0.0, 2.0, 2.0, 2.0]
        assert reward_metrics(mixed.take_metrics())["reward_failures"] == 1
        broken = CompositeReward([RewardPart("always_raises", 1.0, function=2)], pool=pool, log=lambda m: None)
        with pytest.raises(TrainingHalted) as err:
            for _ in range(4):  # 8 items a step: stops once 32 items all failed
                broken.score_rows(["p"] * 8, ["ok"] * 8, [Example("p", "x")] * 8)
        assert "always_raises" in str(err.value) and "ZeroDivisionError" in str(err.value)


# ---------------------------------------------------------------- 6. popo eval
def _fake_run(tmp_path, steps=(10, 20)):
    run = tmp_path / "first"
    config = load_config(None, ["rollout.temperature=1.0", "rollout.max_new_tokens=40", "train.eval_samples=2",
                                "train.seed=3", "testbed.task=countdown"])
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    for step in steps:
        (run / "checkpoints" / f"step-{step:06d}" / "policy").mkdir(parents=True)
    return run


def _eval_args(model: str, **kw) -> argparse.Namespace:
    values = dict(model=model, protocol="default", samples=None, temperature=None, top_p=None, max_new_tokens=None,
                  seed=0, zero_if_truncated=False)
    return argparse.Namespace(**{**values, **kw})


def test_eval_of_a_run_folder_names_its_latest_policy(tmp_path):
    from popo.eval_cli import check_model_folder

    run = _fake_run(tmp_path)
    with pytest.raises(SetupError, match="is a run folder, not a model folder") as err:
        check_model_folder(str(run))
    assert str(run / "checkpoints" / "step-000020" / "policy") in str(err.value)


def test_eval_of_a_run_checkpoint_uses_the_run_protocol(tmp_path):
    from popo.eval_cli import apply_run_protocol, apply_protocol, run_testbed

    run = _fake_run(tmp_path)
    policy = str(run / "checkpoints" / "step-000020" / "policy")
    args = _eval_args(policy)
    line = apply_run_protocol(args)
    apply_protocol(args)
    assert (args.samples, args.temperature, args.max_new_tokens, args.seed) == (2, 1.0, 40, 3)
    assert line and "config.yaml" in line and "temperature=1.0" in line
    assert "testbed.task=countdown" in run_testbed(policy)
    explicit = _eval_args(policy, temperature=0.2)  # a flag still wins
    apply_run_protocol(explicit)
    assert explicit.temperature == 0.2 and explicit.samples == 2
    assert apply_run_protocol(_eval_args(str(tmp_path))) is None  # not inside a run


def test_an_offline_benchmark_fails_fast_with_a_hint(monkeypatch):
    import socket

    import datasets

    from popo.data import benchmarks, sources

    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    def must_not_download(*args, **kwargs):
        raise AssertionError("load_dataset must not be tried when the hub is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(datasets, "load_dataset", must_not_download)
    monkeypatch.setattr(sources, "hub_cached", lambda hub_id: False)
    with pytest.raises(DataError) as err:
        benchmarks.load_benchmark("math500")
    message = str(err.value)
    assert "--data-dir" in message and "math500.jsonl" in message and "HF_HUB_OFFLINE=1" in message


# ---------------------------------------------------------------- 7. empty panels, every method below the start
def test_empty_diagnostic_panels_say_no_data():
    import matplotlib.pyplot as plt

    from popo.study.plots import draw_panels

    fig = draw_panels([("distinct positives", {"popo": [], "grpo": []}), ("pass rate", {"popo": [(1, 0.4)]})],
                      "step", empty_note="no data (diag_every > steps)")
    try:
        texts = [[t.get_text() for t in ax.texts] for ax in fig.axes]
        assert texts == [["no data (diag_every > steps)"], []]
    finally:
        plt.close(fig)


def test_compare_report_warns_when_every_method_ends_below_the_start():
    from popo.study.report import below_start_warning
    from popo.study.stats import Interval

    below = [("popo", 3, [Interval(0.20, 0.02, 3)]), ("grpo", 3, [Interval(0.22, 0.03, 3)])]
    warning = below_start_warning(below, start=0.30)
    assert "WARNING" in warning and "below the start" in warning and "0.220 (grpo)" in warning
    assert "CI lies below" in warning
    assert below_start_warning(below + [("sft", 3, [Interval(0.31, 0.02, 3)])], start=0.30) == ""



def test_the_end_summary_warns_when_reward_functions_failed():
    """A run whose reward function failed on items says so at the end, with the count (metrics: reward_failures)."""
    from popo.step_log import run_summary

    records = [{"step": 0, "rollouts": 0}, {"step": 1, "rollouts": 32, "reward_mean": 0.0, "reward_failures": 32},
               {"step": 2, "rollouts": 32, "reward_mean": 0.1, "reward_failures": 4}]
    text = run_summary(records, wall_s=1.0, run_dir="runs/x", checkpoint=None)
    assert "WARNING: a reward function failed on 36 of 64 sampled rollouts" in text
    clean = [{**r, "reward_failures": 0} for r in records]
    assert "reward function failed" not in run_summary(clean, wall_s=1.0, run_dir="runs/x", checkpoint=None)
