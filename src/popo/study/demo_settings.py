"""`popo demo`'s settings: its methods, learning rates, task, budget and held-out split. A leaf module (it imports
nothing of popo's), so `popo compare` / `popo sweep` take their defaults from here (`popo.study.runs`) without
importing the demo itself."""

from __future__ import annotations

METHODS = ("popo", "grpo")
# Each method's learning rate as study v3 chose it on the validation split of this task: the best mean final
# validation avg@16 over its three tuning seeds, from 5 rates (3e-6 .. 3e-4; raw curves in
# docs/results/study_v3/countdown/tuning/, tests/test_demo.py checks the rates against them). The demo itself
# chooses nothing.
LEARNING_RATES = {"popo": "1e-4", "grpo": "1e-4"}
COUNTDOWN = ["testbed.task=countdown", "testbed.numbers=3", "testbed.max_number=20", "testbed.warmup_steps=800",
             "testbed.test_size=2000", "testbed.validation_size=500",
             "rollout.max_new_tokens=32"]  # study v3's task; its warm start ships with popo
RESERVED = "demo:500,v4-test:1500"
"""`testbed.reserved` of the demo (and of study v4, which uses the same string): the last 500 problems of the
RL-train split are the demo's held-out split (`data.eval_source=testbed:demo`), the 1,500 before them study
v4's test; no run trains on either, and they are disjoint from the test and validation splits."""
QUICK_RESERVED = "demo:200"
"""The quick demo's own split, on its smaller task (a universe too small to hold `RESERVED`)."""
EVAL_SOURCE = "testbed:demo"
STEPS = 500
"""The demo's budget: steps of 16 prompts x 8 rollouts (study v3's batch)."""
EVAL_EVERY = 100
"""Evaluations at step 0 and every 100 steps: six points per method on the trade-off figure."""
def demo_overrides(quick: bool) -> list[str]:
    """The demo's settings on top of the defaults (the learning rate is per method: `method_overrides`);
    `quick` is a smoke test of the same pipeline on a smaller task and budget, whose numbers mean nothing. The
    demo chooses nothing (its settings are fixed) and evaluates on its own held-out split (`RESERVED`, 500
    problems, 16 samples each), which no study reads."""
    common = ["model.name=testbed", "data.source=testbed", f"data.eval_source={EVAL_SOURCE}", "train.save_every=0",
              "train.overwrite=true", "rollout.group_size=8"]
    if quick:
        return common + [f"testbed.reserved={QUICK_RESERVED}", "testbed.task=countdown", "testbed.numbers=3",
                         "testbed.test_size=300", "testbed.validation_size=200", "testbed.warmup_steps=200",
                         "rollout.prompts_per_step=32",
                         "rollout.max_new_tokens=24", "train.steps=12", "train.eval_every=6", "data.eval_size=200",
                         "train.diag_every=6", "train.eval_samples=4"]
    return common + COUNTDOWN + [f"testbed.reserved={RESERVED}", "rollout.prompts_per_step=16", f"train.steps={STEPS}",
                                 f"train.eval_every={EVAL_EVERY}", "data.eval_size=500", "train.eval_samples=16",
                                 "train.diag_every=50"]


def method_overrides(method: str) -> list[str]:
    return [f"algo.name={method}", f"optim.lr={LEARNING_RATES[method]}"]
