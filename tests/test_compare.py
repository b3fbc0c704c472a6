"""`popo compare` / `popo sweep` / `popo report`: budget matching, an end-to-end tiny study, skipping and
resuming, and the report's documented sections."""

from __future__ import annotations

import json

import pytest

from popo.cli import main
from popo.config import ConfigError, load_config
from popo.study.controls import reference_completion
from popo.study.report import SECTIONS, summary
from popo.study.runs import (check_budgets, config_differences, grid_variants, method_variants, parse_grid,
                             prepare_study, rollout_budget, run_state)
from popo.tracking import read_metrics


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def tiny(cache_dir) -> list[str]:
    # 1-digit problems and a very short warm-up (the test checks the plumbing, not learning)
    return [f"testbed.cache_dir={cache_dir}", "testbed.warmup_steps=60", "testbed.warmup_batch=16",
            "testbed.digits=1", "testbed.test_size=16", "testbed.validation_size=16", "testbed.train_size=64",
            "data.eval_size=16", "rollout.prompts_per_step=4",
            "rollout.group_size=4", "rollout.max_new_tokens=12", "train.steps=3", "train.eval_every=2",
            "train.diag_every=1", "train.save_every=2", "train.eval_samples=2", "optim.lr=1e-3"]


def test_budget_is_steps_times_prompts_times_group():
    config = load_config(None, ["train.steps=7", "rollout.prompts_per_step=3", "rollout.group_size=5"])
    assert rollout_budget(config) == 7 * 3 * 5


def test_unequal_budgets_are_refused():
    same = {n: load_config(None, [f"algo.name={n}", "train.steps=10"]) for n in ("popo", "grpo", "raft")}
    assert check_budgets(same) == 10 * 16 * 8  # defaults: 16 prompts x 8 rollouts
    unequal = {"popo": load_config(None, ["train.steps=10"]), "grpo": load_config(None, ["train.steps=12"])}
    with pytest.raises(ConfigError, match="one rollout budget"):
        check_budgets(unequal)


def test_sweep_over_the_budget_is_refused_before_running(tmp_path):
    variants = grid_variants(["popo"], parse_grid(["rollout.group_size=4,8"]))
    with pytest.raises(ConfigError, match="one rollout budget"):
        prepare_study(tmp_path / "s", None, ["train.steps=2"], variants, [0], "test")
    assert not (tmp_path / "s" / "study.json").exists()


def test_variants_and_grid_parsing():
    assert [v.name for v in method_variants(["popo", "grpo-kl", "sft-more"])] == ["popo", "grpo-kl", "sft-more"]
    assert method_variants(["sft-more"])[0].sft
    with pytest.raises(ConfigError, match="unknown method 'ppo'"):
        method_variants(["ppo"])
    grid = parse_grid(["algo.alpha=0.05,0.3", "algo.tau=0.99,0.999"])
    variants = grid_variants(["popo"], grid)
    assert [v.name for v in variants] == ["popo alpha=0.05 tau=0.99", "popo alpha=0.05 tau=0.999",
                                          "popo alpha=0.3 tau=0.99", "popo alpha=0.3 tau=0.999"]
    assert variants[1].overrides == ("algo.name=popo", "algo.alpha=0.05", "algo.tau=0.999")
    assert variants[1].dirname == "popo_alpha_0.05_tau_0.999"
    for bad in ("algo.alpha", "algo.alpha=", "=1,2"):
        with pytest.raises(ConfigError, match="--grid"):
            parse_grid([bad])


def test_grpo_kl_preset_loads_a_reference():
    config = load_config(None, ["algo.name=grpo-kl"])
    assert config.algo.kl_coef > 0 and load_config(None, ["algo.name=grpo"]).algo.kl_coef == 0


def test_reference_completion():
    assert reference_completion("345+678=") == "13,12,10=1023"
    with pytest.raises(Exception, match="a\\+b="):
        reference_completion("what is 2+2?")


@pytest.mark.slow
def test_compare_end_to_end_report_and_skip(cache_dir, tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["compare", *tiny(cache_dir), "--methods", "popo,grpo", "--seeds", "2", "--out", str(out), "--threads", "1"]
    assert main(argv) == 0
    study = json.loads((out / "study.json").read_text())
    assert study["budget"] == 3 * 4 * 4 and study["seeds"] == [0, 1]
    for method in ("popo", "grpo"):
        for seed in (0, 1):
            run = out / method / f"seed-{seed}"
            records = read_metrics(run / "metrics.jsonl")
            # budget matching, measured: every method sampled exactly the same number of rollouts
            assert sum(r.get("rollouts", 0) for r in records) == study["budget"]
            assert records[0]["step"] == 0 and records[-1]["step"] == 3 and "eval/greedy_acc" in records[-1]
            assert json.loads((run / "done.json").read_text())["seed"] == seed
    # the seed changes the sampled rollouts
    a, b = (read_metrics(out / "popo" / f"seed-{s}" / "metrics.jsonl") for s in (0, 1))
    assert [r.get("generated_tokens") for r in a] != [r.get("generated_tokens") for r in b]
    report = (out / "report.md").read_text()
    for section in SECTIONS:
        assert section in report, section
    assert "yes: every run's step-0 greedy accuracy is" in report  # one initial checkpoint
    assert "Against **popo**" in report and "| grpo | 2 |" in report
    assert "popo compare" in report and "--methods popo,grpo" in report
    for png in ("final_accuracy.png", "curve_rollouts.png", "curve_walltime.png", "diagnostics.png"):
        assert (out / png).stat().st_size > 1000
    finals = summary(out)
    assert set(finals) == {"popo", "grpo"} and set(finals["popo"]) == {0, 1}

    # re-running skips the finished runs (nothing is retrained: done.json files are untouched)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/seed-*/done.json")}
    capsys.readouterr()
    assert main(argv) == 0
    assert "4 runs already done (skipped), 0 to run" in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("*/seed-*/done.json")}

    # a run without done.json but with a checkpoint resumes instead of starting over
    run = out / "grpo" / "seed-1"
    (run / "done.json").unlink()
    config = load_config(None, [*study["base_overrides"], "algo.name=grpo", "train.seed=1", f"train.out_dir={run}"])
    assert run_state(run, config) == "partial"
    assert main(argv) == 0
    assert json.loads((run / "done.json").read_text())["resumed"] is True
    assert len(read_metrics(run / "metrics.jsonl")) == 4  # steps 0..3, not duplicated

    # `popo report` regenerates the report from the metrics files alone
    (out / "report.md").unlink()
    assert main(["report", str(out), "--baseline", "grpo"]) == 0
    assert "Against **grpo**" in (out / "report.md").read_text()



def test_sweep_and_sft_more(cache_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    status = main(["sweep", *tiny(cache_dir), "--methods", "popo,sft-more", "--grid", "optim.lr=1e-3,1e-4",
                   "--seeds", "1", "--out", str(out), "--threads", "1"])
    assert status == 0
    names = {v["name"] for v in json.loads((out / "study.json").read_text())["variants"]}
    assert names == {"popo lr=1e-3", "popo lr=1e-4", "sft-more lr=1e-3", "sft-more lr=1e-4"}
    records = read_metrics(out / "sft-more_lr_1e-3" / "seed-0" / "metrics.jsonl")
    steps = [r for r in records if r["step"] > 0]
    assert all(r["rollouts"] == 0 and r["trained_rollouts"] == 4 for r in steps)  # one solution per prompt
    assert "eval/greedy_acc" in records[-1]
    capsys.readouterr()
    bad = main(["compare", *tiny(cache_dir), "train.steps=5", "--methods", "popo", "--seeds", "1", "--out", str(out)])
    assert bad == 2 and "other shared settings" in capsys.readouterr().err


def test_config_differences_ignore_keys_added_later():
    saved = {"algo": {"alpha": 0.1, "tau": 0.995}, "train": {"steps": 3}}
    current = {"algo": {"alpha": 0.1, "tau": 0.99, "new_knob": 1}, "train": {"steps": 3}, "model": {"x": 1}}
    assert config_differences(saved, current) == ["algo.tau"]
    assert config_differences(saved, {**current, "algo": {"alpha": 0.1, "tau": 0.995}}) == []


def test_equivalence_readings_are_holm_corrected_over_the_tosts():
    """Two variants whose TOSTs against the baseline give raw p 0.038 and 0.019. Holm over the two gives 0.038
    and 0.038: both equivalent. With a third variant whose TOST fails (p = 1), Holm over the three gives 0.057
    (3 x 0.019) and 0.077 (2 x 0.038): inconclusive, where uncorrected TOSTs would read equivalent."""
    from popo.study.paired_report import paired_table

    base = [0.30, 0.32, 0.31, 0.29, 0.33]
    offsets = [0.004, -0.006, 0.01, -0.004, 0.002]

    def runs_of(values):
        return {s: [{"step": 0, "eval/greedy_acc": 0.3}, {"step": 1, "eval/greedy_acc": v}] for s, v in enumerate(values)}

    runs = {"grpo": runs_of(base),
            "a": runs_of([b + 2.5 * d for b, d in zip(base, offsets)]),  # raw TOST p 0.038
            "b": runs_of([b + 2.0 * d for b, d in zip(base, offsets)])}  # raw TOST p 0.019
    two = "\n".join(paired_table(runs, "grpo", ["greedy_acc"]))
    assert two.count("equivalent within") == 2  # Holm over two: 0.038 and 0.038
    runs["c"] = runs_of([b + 0.1 for b in base])  # far outside the margin: its TOST fails
    three = "\n".join(paired_table(runs, "grpo", ["greedy_acc"]))
    assert "equivalent within" not in three and three.count("inconclusive") == 2


def test_a_stopping_study_starts_no_queued_run(tmp_path, monkeypatch):
    """After an interrupt the study writes OUT/.stopping: a run a worker had already taken from the queue must not
    start (the pool hands each worker its next job before the interrupt arrives)."""
    import popo.study.runs as runs

    started = []
    monkeypatch.setattr(runs, "execute_run", lambda *args: started.append(args) or {"wall_s": 0.0})
    variant = runs.Variant("popo", ("algo.name=popo",))
    assert runs._pool_job(str(tmp_path), variant, 0, 1) == {"wall_s": 0.0} and len(started) == 1
    (tmp_path / runs.STOPPING).touch()
    with pytest.raises(KeyboardInterrupt):
        runs._pool_job(str(tmp_path), variant, 1, 1)
    assert len(started) == 1


def test_a_studys_start_is_sampled_under_its_smallest_seed(cache_dir, tmp_path):
    """Two workers race to evaluate a study's start: whichever run gets there first, the start is sampled as
    the study's smallest seed samples (study v3's RAFT finals once wrote a start under seed 4, the others 3)."""
    import popo.study.runs as runs
    from popo.step_log import SAMPLE_OUTCOMES_KEY

    variant = runs.Variant("popo", ("algo.name=popo",))
    for name, seed in (("first-is-1", 1), ("first-is-0", 0)):
        runs.prepare_study(tmp_path / name, None, [*tiny(cache_dir), "train.eval_samples=16"], [variant], [0, 1],
                           "test")
        runs._execute(str(tmp_path / name), variant, seed)
    start = json.loads((tmp_path / "first-is-1" / "start-problems.json").read_text())
    assert start == json.loads((tmp_path / "first-is-0" / "start-problems.json").read_text())

    def step0(name, seed):  # per problem, the correct samples of the run's own step-0 evaluation (its own seed)
        return read_metrics(tmp_path / name / "popo" / f"seed-{seed}" / "metrics.jsonl")[0][SAMPLE_OUTCOMES_KEY]

    assert start["correct"] == step0("first-is-0", 0)
    assert step0("first-is-1", 1) != step0("first-is-0", 0)  # the seeds do sample differently here
