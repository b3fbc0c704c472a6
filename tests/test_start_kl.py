"""`train.eval_start_kl`: each evaluation's samples give a k3 estimate of KL(policy || start) per token, the
start kept as a frozen reference that the update never reads."""

from __future__ import annotations

import math

import pytest

from popo.build import build_trainer
from popo.errors import ConfigError
from tests.conftest import warm_testbed_config


def test_k3_on_a_known_shift(warm_testbed_cache, tmp_path, one_thread):
    """A start whose log-prob is the policy's plus c on every sampled token gives exp(c) - 1 - c per token;
    the policy itself as the start gives 0 (up to the sampler's log-probs against a teacher-forced pass)."""
    from popo.evaluate import evaluate

    run = build_trainer(warm_testbed_config(warm_testbed_cache, tmp_path, "train.eval_samples=4"), log=lambda m: None)
    protocol = run.evaluation_protocol()
    prompts, examples = run.eval_set.prompts[:6], run.eval_set.examples[:6]
    shifted = evaluate(run.engine, prompts, examples, run.verifier, protocol,
                       start_logprobs=lambda batch: batch.sampling_logprobs + 0.5)
    assert shifted.sampled_tokens > 0
    assert shifted.summary()["start_kl"] == pytest.approx(math.expm1(0.5) - 0.5, abs=1e-6)
    own = evaluate(run.engine, prompts, examples, run.verifier, protocol,
                   start_logprobs=lambda batch: run.models.policy_logprobs(batch, 4096))
    assert 0 <= own.summary()["start_kl"] < 1e-9  # k3 is never negative; sampler vs forward differ by ~1e-7
    plain = evaluate(run.engine, prompts, examples, run.verifier, protocol)
    assert "start_kl" not in plain.summary() and plain.correct.equal(own.correct)  # the samples are the same


@pytest.mark.parametrize("algo", ["popo", "grpo"])
def test_it_changes_no_training_number(warm_testbed_cache, tmp_path, one_thread, algo):
    """The same run with and without the flag: every training record identical; evaluations gain start_kl,
    0 at step 0 (the policy is the start) and positive once the policy has moved."""
    records = {}
    for flag in (False, True):
        config = warm_testbed_config(warm_testbed_cache, tmp_path / str(flag), f"algo.name={algo}", "optim.lr=3e-3",
                                     "train.eval_every=3", "train.eval_samples=2", f"train.eval_start_kl={flag}")
        records[flag] = build_trainer(config, log=lambda m: None).run()
    for off, on in zip(records[False], records[True], strict=True):
        assert {k: v for k, v in on.items() if k != "eval/start_kl" and not k.startswith("time/")} == {
            k: v for k, v in off.items() if not k.startswith("time/")}
    kl = [r["eval/start_kl"] for r in records[True] if "eval/start_kl" in r]
    assert len(kl) == 2 and kl[0] < 1e-9 < 1e-4 < kl[1]  # step 0, then step 3
    assert all("eval/start_kl" not in r for r in records[False])


@pytest.mark.parametrize("override", ["rollout.temperature=0.7", "rollout.top_p=0.9", "train.eval_samples=0"])
def test_it_needs_samples_from_the_policy_itself(override):
    from popo.config import load_config

    with pytest.raises(ConfigError, match="train.eval_start_kl estimates KL"):
        load_config(None, ["train.eval_start_kl=true", override])
    load_config(None, [override])  # the same settings without the flag load
