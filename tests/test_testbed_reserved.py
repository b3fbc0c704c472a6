"""`testbed.reserved`: held-out countdown splits carved from the RL-train split, never trained on."""

import pytest

from popo.config import Config
from popo.data import prepare
from popo.errors import ConfigError
from popo.testbed.countdown_task import CountdownTask, parse_reserved

SMALL = dict(numbers=3, max_number=9, test_size=200, validation_size=100)  # a universe of a few thousand problems


def config(**testbed) -> Config:
    c = Config()
    c.testbed.task = "countdown"
    for key, value in {**SMALL, **testbed}.items():
        setattr(c.testbed, key, value)
    return c


def test_reserved_splits_are_disjoint_from_every_other_split_and_leave_warmup_alone():
    plain, task = CountdownTask(**SMALL), CountdownTask(**SMALL, reserved=(("demo", 50), ("v4-test", 120)))
    splits = task.splits
    assert len(splits["demo"]) == 50 and len(splits["v4-test"]) == 120
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not set(splits[a]) & set(splits[b]), (a, b)
    # the reserved problems come out of RL-train only: warm-up, test and validation are untouched
    for name in ("warmup", "test", "validation"):
        assert splits[name] == plain.splits[name]
    assert set(splits["train"]) | set(splits["demo"]) | set(splits["v4-test"]) == set(plain.splits["train"])
    assert task.cache_fields() == plain.cache_fields()  # the shipped warm start stays valid


def test_a_reserved_name_keeps_its_problems_whatever_follows_it():
    alone = CountdownTask(**SMALL, reserved=(("demo", 50),)).splits["demo"]
    assert CountdownTask(**SMALL, reserved=(("demo", 50), ("v4-test", 120))).splits["demo"] == alone


def test_training_never_sees_a_reserved_problem_and_eval_source_reads_one():
    c = config(reserved="demo:40,v4-test:60")
    train = {e.answer for e in prepare.testbed_examples(c, "testbed", split="train")}
    demo = prepare.testbed_examples(c, "testbed:demo", split="validation")
    assert len(demo) == 40 and demo[0].id == "demo-0"
    assert not train & {e.answer for e in demo}
    assert not train & {e.answer for e in prepare.testbed_examples(c, "testbed:v4-test", split="validation")}


@pytest.mark.parametrize("text, message", [("demo", "NAME:SIZE"), ("demo:0", "NAME:SIZE"), ("Demo:5", "NAME:SIZE"),
                                           ("test:5", "built-in"), ("a:5,a:6", "twice")])
def test_malformed_reserved_settings_are_refused_by_name(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_reserved(text)


def test_reserving_too_much_or_on_addition_or_an_unknown_split_is_refused():
    with pytest.raises(ConfigError, match="at most half"):
        CountdownTask(**SMALL, reserved=(("demo", 10**6),)).splits
    c = Config()
    c.testbed.reserved = "demo:5"
    with pytest.raises(ConfigError, match="only the countdown"):
        prepare.testbed_task(c)
    with pytest.raises(ConfigError, match="unknown testbed split"):
        prepare.testbed_examples(config(reserved="demo:5"), "testbed:other", split="validation")
