"""Dynamic sampling (`rollout.dynamic_sampling`, `rollout.max_sampling_rounds`): a prompt whose rollouts carry
no learning signal (the loss table's `group_has_signal`) is replaced by a fresh prompt, round after round;
the draws depend only on (seed, step, round, position), so processes and resumes draw the same."""

from __future__ import annotations

import pytest
import torch

import test_trainer_parts as trainer_parts
from popo.algorithms import get_algorithm
from popo.config import load_config
from popo.data.example import Example
from popo.data.stream import PromptStream
from popo.step_log import StepTimer
from popo.trainer import PromptSet, Trainer

# FakeEngine answers "42", "7", "42", "13" to every prompt: a prompt whose gold is 42 gets two positives
# (a signal for POPO and GRPO), one whose gold is "none" gets none (no signal for either)
SOLVABLE = {0, 3, 5, 6, 9}


def make_trainer(*overrides: str) -> Trainer:
    """test_trainer_parts' fake run (tiny model, fake engine and verifier) over 12 prompts, 4 a step."""
    trainer = trainer_parts.make_trainer("rollout.prompts_per_step=4", "train.diag_every=0", "train.eval_every=0",
                                         "rollout.dynamic_sampling=true", *overrides)
    examples = [Example(f"{i}+{i}=", "42" if i in SOLVABLE else "none", id=str(i)) for i in range(12)]
    trainer.train_set, trainer.stream = PromptSet(examples, [ex.problem for ex in examples]), PromptStream(12, 4, 0)
    trainer.eval_set = PromptSet([], [])
    return trainer


def prompt_index(trainer: Trainer, prompt: str) -> int:
    return trainer.train_set.prompts.index(prompt)


@pytest.mark.parametrize("name, rewards, expected", [
    ("popo", [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]], [False, True, True]),  # needs one positive
    ("grpo", [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]], [False, True, False]),  # needs unequal rewards
])
def test_the_loss_table_says_which_groups_carry_a_signal(name, rewards, expected):
    cfg = load_config(None, [f"algo.name={name}"]).algo
    assert get_algorithm(name).group_has_signal(torch.tensor(rewards), cfg).tolist() == expected


@pytest.mark.parametrize("algo", ["popo", "grpo"])
def test_groups_without_signal_are_replaced_by_fresh_prompts(algo):
    trainer = make_trainer(f"algo.name={algo}", "rollout.max_sampling_rounds=5")
    batch = trainer.sample(list(trainer.stream.batch(0)), range(4), 0, StepTimer())
    calls = trainer.engine.calls
    first = [prompt_index(trainer, p) for p in calls[0]["prompts"]]
    assert first == trainer.stream.batch(0)
    # every later round samples only the positions still without a signal, from fresh prompts
    for previous, call in zip(calls, calls[1:]):
        assert len(call["prompts"]) == sum(prompt_index(trainer, p) not in SOLVABLE for p in previous["prompts"])
    groups = batch.rewards.view(4, 4)
    kept = batch.metrics["sampling/kept_groups"]
    assert kept == int(groups.max(1).values.gt(0).sum())  # the batch's groups with a positive
    sampled = sum(len(c["prompts"]) for c in calls)
    assert batch.metrics["sampling/rounds"] == len(calls)
    assert batch.metrics["sampling/dropped_groups"] == sampled - 4
    assert batch.metrics["sampling/extra_rollouts"] == (sampled - 4) * 4
    assert batch.metrics["sampling/unfilled_groups"] == 4 - kept
    assert batch.rollouts.num_rollouts == 16 and len(batch.rollouts.texts) == 16
    assert sampled > 4, "the stream's first batch has prompts without a signal"


def test_the_round_cap_keeps_the_last_groups_and_the_step_goes_on():
    trainer = make_trainer("algo.name=popo", "rollout.max_sampling_rounds=2")
    trainer.train_set.examples[:] = [Example(ex.problem, "none", id=ex.id) for ex in trainer.train_set.examples]
    record = trainer.train_step(0)
    assert len(trainer.engine.calls) == 2 and record["sampling/rounds"] == 2
    assert record["sampling/unfilled_groups"] == 4 and record["sampling/kept_groups"] == 0
    assert record["sampling/extra_rollouts"] == 16 and record["skipped_no_positive"] == 1.0


def test_a_slice_of_the_positions_draws_what_the_whole_batch_draws_for_it():
    # what a rank owning positions 2 and 3 samples (prompts, seeds, rollouts) equals rows 2-3 of one process
    whole, part = make_trainer("algo.name=grpo"), make_trainer("algo.name=grpo")
    indices = list(whole.stream.batch(1))
    full = whole.sample(indices, range(4), 1, StepTimer())
    half = part.sample(indices[2:], range(2, 4), 1, StepTimer())
    assert torch.equal(full.rewards[8:], half.rewards)
    drawn = [{(p, s) for c in t.engine.calls for p, s in zip(c["prompts"], c["prompt_seeds"])} for t in (whole, part)]
    assert drawn[1] and drawn[1] <= drawn[0]  # the same prompts with the same seeds, round by round
    assert len(whole.engine.calls) > 1  # refills happened


def test_rollouts_total_counts_every_sampled_rollout():
    trainer = make_trainer("algo.name=popo")
    history = trainer.run()
    extra = [r["sampling/extra_rollouts"] for r in history]
    assert sum(extra) > 0
    assert [r["rollouts_total"] for r in history] == [16 + extra[0], 32 + extra[0] + extra[1]]


def test_off_by_default_and_then_unchanged():
    trainer = make_trainer("algo.name=popo", "rollout.dynamic_sampling=false")
    record = trainer.train_step(0)
    assert len(trainer.engine.calls) == 1 and not any(k.startswith("sampling/") for k in record)


def test_a_resumed_run_with_dynamic_sampling_is_exact(tiny_testbed, tmp_path, one_thread):
    from popo.build import build_trainer
    from popo.tracking import read_metrics

    def run(out, steps, resume=False):
        config = load_config(None, [*tiny_testbed, "algo.name=grpo", "algo.reward_threshold=0", "train.save_every=1",
                                    "rollout.dynamic_sampling=true", f"train.steps={steps}", f"train.out_dir={out}"])
        build_trainer(config, resume=resume, log=lambda m: None).run()
        # wall times aside, and the evaluation that closes the first, 2-step leg of the resumed run
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "eval/", "held_out/"))}
                for r in read_metrics(out / "metrics.jsonl")]

    straight = run(tmp_path / "a", 3)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 3, resume=True)
    assert resumed == straight
    assert sum(r["sampling/extra_rollouts"] for r in straight) > 0  # refills happened


@pytest.mark.slow
def test_two_processes_with_dynamic_sampling_equal_one_process(warm_testbed_cache, tmp_path):
    # one prompt per rank: the ranks keep different numbers of groups and refill in different rounds
    from pathlib import Path

    from test_distributed import assert_same_records, overrides, records, run

    extra = ("algo.name=grpo", "rollout.dynamic_sampling=true", "rollout.max_sampling_rounds=3", "train.steps=3")
    one, two = tmp_path / "one", tmp_path / "two"
    run(["train", *overrides(Path(warm_testbed_cache), one, *extra)])
    run(["train", *overrides(Path(warm_testbed_cache), two, *extra)], processes=2)
    a, b = records(one), records(two)
    assert_same_records(a, b)
    assert any(r["sampling/dropped_groups"] > 0 for r in a), "some group should have been refilled"


def test_a_resume_continues_rollouts_total_from_the_checkpoint():
    """The count is part of the checkpoint's state, not re-read from the metrics log: `build.restore` returns it
    with the log gone, and for a checkpoint without it (written before the count was saved) B x G a step."""
    import json

    from popo.build import restore
    from popo.checkpoint import _sha256, latest_checkpoint

    trainer = make_trainer("algo.name=popo", "train.save_every=1")
    history = trainer.run()
    (trainer.out_dir / "metrics.jsonl").unlink(missing_ok=True)
    parts = (trainer.models, trainer.optimizer, trainer.scheduler, trainer.engine)
    step, _, rollouts = restore(trainer.out_dir, *parts, log=lambda message: None)
    assert step == 2 and rollouts == history[-1]["rollouts_total"] > 2 * 4 * 4  # the refills are counted

    path = latest_checkpoint(trainer.out_dir, log=lambda message: None)
    state = json.loads((path / "state.json").read_text())
    del state["rollouts_total"]
    (path / "state.json").write_text(json.dumps(state))
    manifest = json.loads((path / "MANIFEST.json").read_text())
    manifest["state.json"] = {"bytes": (path / "state.json").stat().st_size, "sha256": _sha256(path / "state.json")}
    (path / "MANIFEST.json").write_text(json.dumps(manifest))
    assert restore(trainer.out_dir, *parts, log=lambda message: None)[2] == 2 * 4 * 4
