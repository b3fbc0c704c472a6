"""The countdown testbed task: rules, solver, verifier on hand cases and hostile text, and its splits."""

from __future__ import annotations

import random

import pytest

from conftest import run_with_deadline
from popo.testbed.countdown import (Rules, check, countdown_reward, final_values, parse_spec, reachable,
                                    solutions)
from popo.testbed.countdown_task import CountdownTask


def test_hand_solved_problems():
    assert check("5*4=20,20+2=22;22", [5, 4, 2], 22)
    assert check("2+20=22,5*4=20;22", [5, 4, 2], 22) is False  # 20 is used before it is made
    assert check("4*5=20,2+20=22;22", [2, 4, 5], 22)  # either operand order of + and *
    assert check("9-4=5,5*1=5,5+1=6;6", [9, 4, 1, 1], 6)  # a repeated given number, used once each
    assert check("8/2=4,4*3=12;12", [3, 8, 2], 12)  # exact division
    assert countdown_reward("5*4=20,20+2=22;22", "5,4,2>22") == 1.0
    assert countdown_reward(" 5*4=20,20+2=22;22\n", "5,4,2>22") == 1.0  # surrounding whitespace is ignored


def test_the_solver_on_a_problem_small_enough_to_enumerate_by_hand():
    # from {1, 2}: 2+1=3, 2-1=1, 2*1=2, 2/1=2 (1-2 < 0 and 1/2 is not an integer; + and * larger first)
    assert reachable([1, 2]) == {1: ["2-1=1;1"], 2: ["2*1=2;2", "2/1=2;2"], 3: ["2+1=3;3"]}
    assert final_values([2, 1]) == {1, 2, 3}
    assert solutions([1, 2], 4) == []
    # {2, 3, 4} -> 24: 4*3=12,12*2=24 / 3*2=6,6*4=24 / 4*2=8,8*3=24 / 4-2=2... no; and 2+4=6,6*4? (4 used twice)
    found = solutions([2, 3, 4], 24)
    assert {"4*3=12,12*2=24;24", "3*2=6,6*4=24;24", "4*2=8,8*3=24;24"} <= set(found)
    assert all(check(s, [2, 3, 4], 24) for s in found)


@pytest.mark.parametrize("numbers", [[3, 7, 7], [1, 5, 6, 9], [2, 2, 8, 8], [9, 8, 7, 6]])
def test_every_solver_solution_verifies_and_every_reachable_target_is_solved(numbers):
    table = reachable(numbers)
    assert set(table) == final_values(numbers)
    for target, found in table.items():
        assert found == solutions(numbers, target)
        assert len(found) == len(set(found))
        for text in found:
            assert check(text, numbers, target), (numbers, target, text)
            assert not check(text, numbers, target + 1)
    # a target outside the reachable set has no solution, and the verifier accepts nothing for it
    missing = next(t for t in range(1, 2000) if t not in table)
    assert solutions(numbers, missing) == []


# ------------------------------------------------------------------------------ bad input: reward 0
SPEC = "5,4,2>22"
BAD = {  # name: (completion, gold spec); each would be accepted but for the one defect its name says
    "malformed completion": ("five times four is twenty", SPEC),
    "missing final line": ("5*4=20,20+2=22", SPEC),
    "final line disagrees": ("5*4=20,20+2=22;23", SPEC),
    "wrong arithmetic": ("5*4=21,21+1=22;22", "5,4,1>22"),
    "number used twice": ("5*5=25,25-4=21,21+2=23;23", "5,4,2>23"),
    "number not given": ("5*4=20,20+3=23;23", "5,4,2>23"),
    "number left unused": ("5*4=20;20", "5,4,2>20"),
    "division by zero": ("4-4=0,5/0=0;0", "5,4,4>0"),
    "non-integer division": ("5/2=2,4*2=8;8", "5,4,2>8"),
    "negative intermediate": ("2-4=2,5*2=10;10", "5,4,2>10"),
    "value over the bound": ("9*9=81,81*9=729,729*9=6561,6561/9=729;729", "9,9,9,9,9>729"),
    "unicode digits": ("\uff15*4=20,20+2=22;22", SPEC),
    "arabic-indic digits": ("\u0665*4=20,20+2=22;22", SPEC),
    "1 MB of text": ("5*4=20,20+2=22;22" + " " * 1_000_000, SPEC),
    "empty": ("", SPEC),
    "separators only": (",;,;", SPEC),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_completions_get_reward_zero_without_an_exception(case):
    completion, spec = BAD[case]
    # bounded work, even for a megabyte: a hang guard, not a timing test
    assert run_with_deadline(lambda: countdown_reward(completion, spec), 30) == 0.0


def test_chain_longer_than_the_bound():
    chain = "4*3=12,12*2=24,24-1=23;23"
    assert check(chain, [4, 3, 2, 1], 23)
    assert not check(chain, [4, 3, 2, 1], 23, Rules(max_numbers=3))  # at most 2 steps


def test_value_and_length_bounds_are_the_rules():
    assert check("9*9=81,81*9=729;729", [9, 9, 9], 729)
    assert not check("9*9=81,81*9=729;729", [9, 9, 9], 729, Rules(max_value=500))
    assert not check("5*4=20,20+2=22;22", [5, 4, 2], 22, Rules(max_chars=10))


def test_bad_specs_and_non_text_score_zero():
    for spec in ("", "5,4,2", "5;4;2>22", "5,4,2>22>1", "١,٢>3", "9" * 100, ">22"):
        assert parse_spec(spec) is None
        assert countdown_reward("5*4=20,20+2=22;22", spec) == 0.0
    assert countdown_reward(None, SPEC) == 0.0  # type: ignore[arg-type]
    assert countdown_reward("5*4=20,20+2=22;22", ("1,1>2", SPEC)) == 1.0  # any accepted spec


def test_random_text_over_the_alphabet_never_raises():
    rng = random.Random(0)
    alphabet = "0123456789+-*/=,;>: ٣５x"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
        assert countdown_reward(text, SPEC) in (0.0, 1.0)


# ------------------------------------------------------------------------------ splits
def _key(problem: str) -> tuple[tuple[int, ...], int]:
    numbers, target = parse_spec(problem)
    return tuple(sorted(numbers)), target


@pytest.fixture(scope="module")
def task() -> CountdownTask:
    return CountdownTask(numbers=3, max_number=9, test_size=200, validation_size=100)


def test_splits_are_disjoint_under_permutation_of_the_numbers(task):
    test = {_key(e.problem) for e in task.test_examples()}
    validation = {_key(e.problem) for e in task.validation_examples()}
    train = {_key(e.problem) for e in task.train_examples(10_000, seed=0)}
    warmup = {_key(p) for p, _ in task.warmup_pairs(3000, seed=0)}
    assert len(test) == 200 and len(validation) == 100  # distinct problems, whatever order they are shown in
    for a, b in ((test, validation), (test, train), (test, warmup), (validation, train), (validation, warmup),
                 (train, warmup)):
        assert not a & b
    orders = {e.problem.split(">")[0] for e in task.test_examples()}
    assert any(o.split(",") != sorted(o.split(","), key=int) for o in orders)  # prompts are not sorted


def test_splits_are_fixed_and_warmup_pairs_are_solutions(task):
    again = CountdownTask(numbers=3, max_number=9, test_size=200, validation_size=100)
    assert [e.problem for e in again.test_examples()] == [e.problem for e in task.test_examples()]
    pairs = task.warmup_pairs(500, seed=0)
    assert all(countdown_reward(completion, prompt.removesuffix(":")) == 1.0 for prompt, completion in pairs)
    # one solution drawn from all of them: a problem seen twice may get two different solutions
    by_problem: dict = {}
    for prompt, completion in task.warmup_pairs(4000, seed=1):
        by_problem.setdefault(_key(prompt), set()).add(completion)
    assert any(len(s) > 1 for s in by_problem.values())
    example = task.test_examples()[0]
    assert countdown_reward(task.reference_completion(example.problem), example.answer) == 1.0
    assert task.reference_completion("3+4=") is None


def test_too_many_held_out_problems_are_refused():
    from popo.errors import ConfigError

    with pytest.raises(ConfigError, match="validation_size"):
        _ = CountdownTask(numbers=2, max_number=3, test_size=5, validation_size=5).splits
