"""Fuzzing the answer extraction and the math verifier with random and hostile model text.

Properties: no exception escapes, every item finishes (the pool's hard per-item limit holds), a worker
killed mid-run is replaced without losing the other items, and text that looks like code, shell or
template syntax is never executed (a canary file never appears) and scores 0.

Short in CI; `pytest --fuzz-long tests/test_verifier_fuzz.py` (or POPO_FUZZ_LONG=1) runs many more
examples, and the atheris harness in `tests/fuzz_atheris_extract.py` many more still when atheris is
installed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_with_deadline
from popo.rewards import MathVerifier, last_boxed_content

HERE = Path(__file__).resolve().parent
SOFT_S, HARD_S = 1.0, 3.0
GOLD = "7"  # no hostile string below is equivalent to 7
SENTINEL = r"so the answer is $\boxed{7}$."


def hostile_texts(canary: Path) -> dict[str, str]:
    """Adversarial completions; those mentioning `canary` would create it if they were ever executed."""
    touch = f"touch {canary}"
    return {
        "python import": f"__import__('os').system('{touch}')",
        "python import boxed": f"\\boxed{{__import__('os').system('{touch}')}}",
        "python eval boxed": f"\\boxed{{eval(\"__import__('os').system('{touch}')\")}}",
        "sympy sympify bait": f"\\boxed{{sympify(\"__import__('os').system('{touch}')\")}}",
        "shell substitution": f"\\boxed{{$({touch})}}",
        "shell backticks": f"\\boxed{{`{touch}`}}",
        "shell variable": "\\boxed{${HOME}${IFS}" + touch + "}",
        "template": "\\boxed{{{ self.__init__.__globals__['os'].system('" + touch + "') }}}",
        "format string": "\\boxed{{0.__class__.__mro__[1].__subclasses__}}",
        "latex shell escape": f"\\immediate\\write18{{{touch}}} \\boxed{{\\write18{{{touch}}}}}",
        "latex input": "\\boxed{\\input{/etc/passwd}}",
        "python power tower": "\\boxed{10**10**10}",
        "latex power tower": "\\boxed{10^{10^{10^{10}}}}",
        "huge factorial": "\\boxed{(10^{100})!}",
        "deep braces": "\\boxed{" + "{" * 20_000 + "7" + "}" * 20_000 + "}",
        "many open boxes": "\\boxed{" * 20_000,
        "long box": "\\boxed{" + "7+" * 200_000 + "0}",
        "long text": "7 " * 1_000_000,
        # garbage around a wrong answer (around the right one, math-verify may legitimately read 7)
        "nul bytes": "\\boxed{8\x00}" + "\x00" * 1000,
        "lone surrogates": "\\boxed{\ud800 8 \udfff}",
        "undecodable bytes": "\\boxed{" + b"\xff\xfe8\xc3(".decode("utf-8", "surrogateescape") + "}",
        "control characters": "\\boxed{\x1b[2J\r\b8\x07}",
        "division by zero": "\\boxed{\\frac{7}{0}}",
        "nan and infinity": "\\boxed{\\infty - \\infty}",
    }


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(num_workers=2, timeout_s=SOFT_S, hard_timeout_s=HARD_S) as v:
        v.wait_ready()
        yield v


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass


def budget(n_items: int) -> float:
    """Upper bound for one score call: every item at the hard limit, plus worker restarts."""
    return n_items * (HARD_S + 2.0) + 60.0


# ---------------------------------------------------------------------------------------------------
# Strategies: random text, undecodable bytes, and LaTeX-ish token soup around boxes
# ---------------------------------------------------------------------------------------------------

TOKENS = ["\\boxed", "\\boxed{", "\\fbox{", "{", "}", "\\{", "\\}", "\\", "$", "$$", "^", "_", "**", "10",
          "7", "\\frac", "{1}{0}", "(", ")", "[", "]", "\\left(", "\\right)", " ", "\n", "\x00", "\ud800",
          "__import__('os')", "${IFS}", "$(id)", "!", "=", "x", "\\sqrt", "\\infty", "\\text{", "%"]
token_soup = st.lists(st.sampled_from(TOKENS), max_size=60).map("".join)
any_text = st.text(max_size=300)
bytes_text = st.binary(max_size=300).map(lambda b: b.decode("utf-8", "surrogateescape"))
completions = st.one_of(any_text, bytes_text, token_soup,
                        st.tuples(token_soup, st.sampled_from(["\\boxed{", "\\boxed "]), token_soup,
                                  st.sampled_from(["}", ""])).map("".join))


def fuzz_settings(fuzz_long_examples: int, short_examples: int):
    long_run = os.environ.get("POPO_FUZZ_LONG") == "1"  # tests/conftest.py sets it for --fuzz-long
    return settings(max_examples=fuzz_long_examples if long_run else short_examples, deadline=None,
                    derandomize=not long_run, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])


@fuzz_settings(20_000, 300)
@given(completions)
def test_extraction_never_raises_and_returns_a_substring(text):
    content = last_boxed_content(text)
    assert content is None or (content and content in text)
    capped = last_boxed_content(text, max_len=10)
    assert capped is None or len(capped) <= 10


@fuzz_settings(400, 12)
@given(batch=st.lists(completions, min_size=1, max_size=8), kill_a_worker=st.booleans())
def test_verifier_scores_random_text_in_range_and_survives_worker_kills(verifier, batch, kill_a_worker):
    if kill_a_worker:  # a worker dies between calls (maybe while still starting); the next call replaces it
        kill(verifier.worker_pids[0])
    items = batch + [SENTINEL]
    rewards = run_with_deadline(lambda: verifier.score(items, [GOLD] * len(items)), budget(len(items)))
    assert len(rewards) == len(items)
    assert all(r in (0.0, 1.0) for r in rewards)
    assert rewards[-1] == 1.0  # a correct answer in the same batch is unaffected


@fuzz_settings(300, 10)
@given(gold=st.one_of(any_text, token_soup))
def test_verifier_with_random_gold_answers(verifier, gold):
    try:
        rewards = run_with_deadline(lambda: verifier.score([SENTINEL], [gold]), budget(1))
    except ValueError as err:  # the one documented error: a gold that is empty after stripping
        assert "empty gold answer" in str(err) and not gold.strip()
        return
    assert rewards[0] in (0.0, 1.0)


def test_hostile_text_never_executes_and_scores_zero(verifier, tmp_path):
    canary = tmp_path / "CANARY"
    cases = hostile_texts(canary)
    texts = list(cases.values())
    texts += [f"Working... {t} so the final answer is \\boxed{{{t}}}" for t in texts[:12]]  # embedded
    items = texts + [SENTINEL]
    verifier.reset_stats()
    rewards = run_with_deadline(lambda: verifier.score(items, [GOLD] * len(items)), budget(len(items)))
    assert dict(zip(cases, rewards)) == {name: 0.0 for name in cases}
    assert rewards[len(cases):-1] == [0.0] * (len(texts) - len(cases))
    assert rewards[-1] == 1.0
    # and as gold answers: a hostile dataset row is data too
    rewards = run_with_deadline(lambda: verifier.score([SENTINEL] * len(cases), list(cases.values())),
                                budget(len(cases)))
    assert rewards == [0.0] * len(cases)
    assert not canary.exists()


def test_worker_killed_in_the_middle_of_a_call_is_replaced(verifier):
    """A worker dies while it holds items: its items are retried on a fresh worker, nothing is lost."""
    verifier.reset_stats()
    victim = verifier.worker_pids[0]
    os.kill(victim, signal.SIGSTOP)  # it takes a chunk at the start of the call but cannot answer...
    killer = threading.Timer(0.5, kill, args=(victim,))  # ...and is killed while holding it
    killer.start()
    items = [f"\\boxed{{{k}}}" for k in range(40)]
    try:
        rewards = run_with_deadline(lambda: verifier.score(items, [str(k) for k in range(40)]), budget(40))
    finally:
        killer.cancel()
        kill(victim)
    assert rewards == [1.0] * 40
    assert victim not in verifier.worker_pids
    assert verifier.stats.restarts >= 1 and verifier.stats.crashes == 0


@pytest.mark.skipif(sys.platform != "linux", reason="atheris harness is run on Linux only")
def test_atheris_harness(tmp_path, fuzz_long):
    pytest.importorskip("atheris")
    runs = 1_000_000 if fuzz_long else 20_000
    proc = subprocess.run([sys.executable, str(HERE / "fuzz_atheris_extract.py"), f"-runs={runs}",
                           f"-artifact_prefix={tmp_path}/"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Done {runs} runs" in proc.stderr
