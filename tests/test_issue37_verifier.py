"""Issue 37, rewards: a check that runs out of its time budget is repeated once, in a fresh worker with a larger
budget, before it scores 0, and is counted in the step record and the run summary; the stop message of a reward
function that fails on everything says what the run does."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest

from conftest import run_with_deadline
from popo.data.example import Example
from popo.errors import TrainingHalted
from popo.rewards import MathVerifier

# Loaded by every worker interpreter at start-up (PYTHONPATH): math-verify's parse of a box `SLOW<s>:<x>` takes
# <s> seconds, as math-verify's own timeout sees it (a budget below <s> runs out), then parses <x>; each slow
# parse logs "pid budget" to the file in $SLOW_PARSE_LOG. A fault injected from outside: the library has no hook.
SLOW_PARSE = '''
import os, re, time
import math_verify
from math_verify.errors import TimeoutException

_real = math_verify.parse

def parse(pred, *args, parsing_timeout=5, **kwargs):
    slow = re.fullmatch(r"\\\\boxed\\{SLOW([0-9.]+):(.*)\\}", pred, re.S)
    if slow is None:
        return _real(pred, *args, parsing_timeout=parsing_timeout, **kwargs)
    need = float(slow.group(1))
    with open(os.environ["SLOW_PARSE_LOG"], "a") as log:
        log.write(f"{os.getpid()} {parsing_timeout}\\n")
    if parsing_timeout is not None and parsing_timeout < need:
        time.sleep(parsing_timeout)
        raise TimeoutException("slow parse")
    time.sleep(need)
    return _real("\\\\boxed{" + slow.group(2) + "}", *args, parsing_timeout=parsing_timeout, **kwargs)

math_verify.parse = parse
'''


def boxed(answer: str) -> str:
    return f"so the answer is $\\boxed{{{answer}}}$."


@pytest.fixture
def slow_parse(tmp_path, monkeypatch):
    """The log file of slow parses, with every worker started from now on parsing `SLOW` boxes slowly."""
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(SLOW_PARSE))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("SLOW_PARSE_LOG", str(tmp_path / "slow.log"))
    return tmp_path / "slow.log"


def test_a_slow_check_is_repeated_in_a_fresh_worker_with_a_larger_budget(slow_parse):
    with MathVerifier(num_workers=1, timeout_s=1.0, retry_timeout_s=4.0) as v:
        v.wait_ready()
        pool = set(v.worker_pids)
        completions = [boxed("SLOW1.5:7"), boxed("SLOW100:7"), boxed("SLOW100:7"), boxed("8"), boxed("7")]
        rewards = run_with_deadline(lambda: v.score(completions, ["7"] * 5), 120)
        assert rewards == [1.0, 0.0, 0.0, 0.0, 1.0]  # slow but correct: scored on the retry
        assert v.take_metrics() == {"reward/timeout_retries": 3.0, "reward/timeouts": 2.0}  # completions
        assert v.take_metrics() == {"reward/timeout_retries": 0.0, "reward/timeouts": 0.0}  # taken once
        assert (v.stats.retried, v.stats.timed_out, v.stats.soft_timeouts) == (2, 1, 3)  # distinct checks
        attempts = [line.split() for line in slow_parse.read_text().splitlines()]
        first = [pid for pid, budget in attempts if budget == "1"]
        again = [pid for pid, budget in attempts if budget == "4"]
        assert len(first) == 2 and {int(p) for p in first} <= pool  # each slow check once in the pool...
        assert len(again) == 2 and not {int(p) for p in again} & pool  # ...then once in a fresh worker
        assert set(v.worker_pids) == pool  # the retry's workers were extra, and are gone


def test_without_a_retry_a_slow_check_scores_zero_and_is_counted(slow_parse):
    with MathVerifier(num_workers=1, timeout_s=1.0, retry_timeout_s=0) as v:
        rewards = run_with_deadline(lambda: v.score([boxed("SLOW1.5:7"), boxed("7")], ["7", "7"]), 120)
        assert rewards == [0.0, 1.0]
        assert v.take_metrics() == {"reward/timeout_retries": 0.0, "reward/timeouts": 1.0}


def test_the_in_process_verifier_retries_too(monkeypatch):
    import popo.rewards.math_verifier as mv

    budgets = []

    def verify_boxes(content, parts, forms, timeout_s):  # a check that needs 3 s, as a budget sees it
        budgets.append(timeout_s)
        return (1.0, False) if timeout_s is None or timeout_s >= 3 else (0.0, True)

    monkeypatch.setattr(mv, "verify_boxes", verify_boxes)
    v = MathVerifier(num_workers=0, timeout_s=1.0, retry_timeout_s=4.0)
    assert v.score([boxed("7")], ["7"]) == [1.0] and budgets == [1.0, 4.0]
    assert v.take_metrics() == {"reward/timeout_retries": 1.0, "reward/timeouts": 0.0}


def test_a_gold_whose_first_budget_always_runs_out_still_verifies_against_itself():
    """minerva-112's gold, whose first parse overran 5 s on a loaded machine: with a first budget that cannot
    be met, the retry's budget decides, so the self-check does not depend on the load."""
    gold = r"\frac{1}{b-a}\left(e^{-at}-e^{-bt}\right)"
    with MathVerifier(num_workers=1, timeout_s=1e-3, retry_timeout_s=60.0) as v:
        assert run_with_deadline(lambda: v.score([boxed(gold), boxed("e^{-at}")], [gold, gold]), 300) == [1.0, 0.0]
        assert v.stats.retried == 2 and v.stats.timed_out == 0


def test_timeouts_reach_the_step_record_and_the_run_summary():
    from popo.distributed import Dist
    from popo.rewards.composite import CompositeReward, RewardPart
    from popo.step_log import run_summary
    from popo.trainer import Trainer

    class Slow:  # a built-in verifier part with counts to report
        def score(self, completions, answers):
            return [1.0] * len(completions)

        def take_metrics(self):
            return {"reward/timeout_retries": 3.0, "reward/timeouts": 1.0}

    for verifier in (Slow(), CompositeReward([RewardPart("math", 1.0, verifier=Slow())])):
        record = Trainer._take_reward_metrics(SimpleNamespace(verifier=verifier, dist=Dist()))
        assert record["reward/timeout_retries"] == 3 and record["reward/timeouts"] == 1
    records = [{"step": 1, "reward/timeout_retries": 3, "reward/timeouts": 1},
               {"step": 2, "reward/timeout_retries": 2, "reward/timeouts": 0}]
    summary = run_summary(records, wall_s=1.0, run_dir="runs/x", checkpoint=None)
    assert ("verifier: the check of 5 rollouts ran out of time and was repeated with a larger budget; 1 scored 0 "
            "because time ran out for good") in summary


FAILING = '''
def always_one(completions, **kw):
    return [1.0] * len(completions)

def always_raises(completions, **kw):
    return [1 / 0 for _ in completions]
'''


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    import sys

    from popo.rewards.functions import FunctionPool

    folder = tmp_path_factory.mktemp("rewards")
    (folder / "issue37_failing.py").write_text(textwrap.dedent(FAILING))
    sys.path.insert(0, str(folder))
    try:
        with FunctionPool(["issue37_failing:always_one", "issue37_failing:always_raises"], columns=["answer"],
                          num_workers=1, timeout_s=5.0, max_memory_mb=0) as functions:
            functions.wait_ready()
            yield functions
    finally:
        sys.path.remove(str(folder))


@pytest.mark.parametrize("other, why", [
    (False, "every reward would be 0, and nothing would be learned"),
    (True, "a failure sets the item's whole reward to 0, so the scores of always_one would count for nothing and "
           "every reward would be 0, and nothing would be learned"),
], ids=["alone", "with another function"])
def test_the_stop_message_says_what_the_run_does(pool, other, why):
    from popo.rewards.composite import CompositeReward, RewardPart

    parts = [RewardPart("always_one", 1.0, function=0)] * other + [RewardPart("always_raises", 1.0, function=1)]
    reward = CompositeReward(parts, pool=pool, items_per_call=64, log=lambda line: None)
    with pytest.raises(TrainingHalted) as err:
        reward.score_rows(["p"] * 128, ["ok"] * 128, [Example("p", "x")] * 128)  # one step of 16 x 8
    assert str(err.value) == (
        "reward function always_raises failed on every one of the first 32 items it scored (first failure: "
        f"ZeroDivisionError: division by zero (a call of 64 items)); {why}. Fix the function (reward.functions), "
        "or call it by hand on a few rows")
