"""`popo.diagnostics`: hand-computed text statistics and shares, an exact split of the gradient by loss term,
and runs with diagnostics that train exactly as runs without."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import WARM_TESTBED
from popo.algorithms import get_algorithm
from popo.config import load_config
from popo.diagnostics import (finish_diversity, gradient_shares, positive_diversity, term_configs,
                              term_gradients)
from popo.distributed import Dist


def test_positive_diversity_by_hand():
    # G = 3. prompt 0: three positives, two distinct; prompt 1: two identical positives; prompt 2: one positive
    texts = ["a", "a", "b", "c", "x", "c", "d", "y", "z"]
    positive = torch.tensor([1, 1, 1, 1, 0, 1, 1, 0, 0], dtype=torch.bool)
    weights = torch.tensor([0.5, 0.25, 0.25, 0.5, 0.0, 0.5, 1.0, 0.0, 0.0])
    sums = positive_diversity(texts, positive, weights, 3)
    assert sums["groups"] == 2 and sums["multi_distinct"] == 1
    out = finish_diversity(sums, Dist(), weights=True)
    assert out["distinct_positive_frac"] == pytest.approx((2 / 3 + 1 / 2) / 2, abs=1e-12)
    assert out["multi_distinct_frac"] == pytest.approx(0.5, abs=1e-12)
    # prompt 0: (|0.5 - 1/3| + 2 |0.25 - 1/3|) / 3 = (1/6 + 1/6) / 3 = 1/9; prompt 1: 0
    assert out["weight_dev_uniform"] == pytest.approx(1 / 18, abs=1e-12)
    assert "weight_dev_uniform" not in finish_diversity(sums, Dist(), weights=False)
    assert finish_diversity(positive_diversity(texts, torch.zeros(9, dtype=torch.bool), None, 3), Dist(),
                            weights=False) == {}


def test_gradient_shares_by_hand():
    full = torch.tensor([3.0, 4.0])
    out = gradient_shares(full, {"nll": torch.tensor([3.0, 0.0]), "sim": torch.tensor([0.0, 4.0])},
                          torch.tensor([0.0, -2.0]))
    assert out["grad_share/nll"] == pytest.approx(3 / 7, abs=1e-7)
    assert out["grad_share/sim"] == pytest.approx(4 / 7, abs=1e-7)
    assert out["grad_cos/nll"] == pytest.approx(9 / 15, abs=1e-7)  # 3*3 / (5 * 3)
    assert out["grad_cos/sim"] == pytest.approx(16 / 20, abs=1e-7)
    assert out["grad_cos_positive_nll"] == pytest.approx(-0.8, abs=1e-7)


def test_term_configs_switch_off_every_other_coefficient():
    cfg = load_config(None, ["algo.name=popo"]).algo
    configs = term_configs(get_algorithm("popo"), cfg)
    assert list(configs) == ["nll", "sim", "ent"]
    assert (configs["nll"].alpha, configs["nll"].beta) == (0.0, 0.0)
    assert (configs["sim"].alpha, configs["sim"].beta) == (cfg.alpha, 0.0)
    assert (configs["ent"].alpha, configs["ent"].beta) == (0.0, cfg.beta)
    assert list(term_configs(get_algorithm("raft"), load_config(None, ["algo.name=raft"]).algo)) == ["nll"]
    assert list(term_configs(get_algorithm("grpo"), load_config(None, ["algo.name=grpo"]).algo)) == ["pg"]
    assert list(term_configs(get_algorithm("grpo-kl"), load_config(None, ["algo.name=grpo-kl"]).algo)) == ["pg", "kl"]


def _warm(cache: str, out) -> list[str]:
    """A small run on the session's warm testbed (its model solves some problems: positives and negatives)."""
    return [f"testbed.cache_dir={cache}", *WARM_TESTBED, "data.eval_size=8", "model.device=cpu",
            "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=12", "train.eval_every=0",
            "train.save_every=0", "train.progress=false", "train.tensorboard=false", "optim.lr=1e-3",
            f"train.out_dir={out}"]


def _sampled_step(overrides: list[str]):
    """A built run and one sampled, verified step of it (rollouts, credit, positive, training rows)."""
    from popo.build import build_run
    from popo.rewards.scoring import score_rollouts
    from popo.rollout.base import SamplingParams

    run = build_run(load_config(None, overrides), log=lambda message: None)
    c = run.config
    prompts, examples = run.train_set.prompts[:4], run.train_set.examples[:4]
    rollouts = run.engine.generate(prompts, c.rollout.group_size, SamplingParams(c.rollout.max_new_tokens),
                                   seed=5)
    G = c.rollout.group_size
    rewards = score_rollouts(run.verifier, rollouts.texts, [e.answer for e in examples for _ in range(G)],
                             rollouts.truncated, zero_if_truncated=True)
    positive = rewards > c.algo.reward_threshold
    credit = run.algorithm.credit(rewards, rollouts.mean_logprobs, rollouts.lengths.float(), G, c.algo)
    rows = torch.ones_like(positive) if run.algorithm.needs_negatives(c.algo) else positive
    return run, rollouts, credit, positive, rows


@pytest.mark.parametrize("algo", [["algo.name=popo", "algo.beta=0.05"], ["algo.name=grpo-kl"]])
def test_the_terms_gradients_add_up_to_the_loss_gradient(warm_testbed_cache, tmp_path, one_thread, algo):
    run, rollouts, credit, positive, rows = _sampled_step([*_warm(warm_testbed_cache, tmp_path), *algo,
                                                          "optim.micro_batch_tokens=64"])
    assert 0 < int(positive.sum()) < positive.numel()
    c = run.config
    seeds = torch.arange(int(rows.sum()))
    flat = term_gradients(run.models, run.algorithm, c.algo, rollouts.select(rows), credit[rows], positive[rows],
                          max_length=c.rollout.max_new_tokens, token_budget=c.optim.micro_batch_tokens, dist=Dist(),
                          row_seeds=seeds)
    full = flat.pop("full")
    flat.pop("positive_nll", None)
    assert list(flat) == [name for name, _ in run.algorithm.terms]
    total = sum(flat.values())
    # every POPO term pulls; the KL term's gradient is 0 where the policy still equals its reference
    assert float(full.norm()) > 0 and all((float(g.norm()) > 0) == (name != "kl") for name, g in flat.items())
    assert float((total - full).abs().max()) <= 1e-6 * max(1.0, float(full.abs().max()))


def _strip(records: list[dict], keys: set[str]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k not in keys} for r in records]


@pytest.mark.parametrize("algo", ["popo", "grpo-kl"])
def test_diagnostics_do_not_change_the_run(warm_testbed_cache, tmp_path, one_thread, algo):
    from popo.build import build_trainer

    def run(every: int, out: str) -> tuple[list[dict], dict]:
        config = load_config(None, [*_warm(warm_testbed_cache, tmp_path / out), f"algo.name={algo}", "train.steps=3",
                                    f"train.diag_every={every}"])
        trainer = build_trainer(config, log=lambda message: None)
        return trainer.run(), {k: v.clone() for k, v in trainer.models.policy.state_dict().items()}

    with_diag, weights_a = run(1, "a")
    without, weights_b = run(0, "b")
    new = {k for r in with_diag for k in r} - {k for r in without for k in r}
    assert {"grad_share/nll" if algo == "popo" else "grad_share/pg", "grad_cos_positive_nll"} <= new
    assert _strip(with_diag, new) == _strip(without, new)  # every other logged number, bit for bit
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    shares = [v for r in with_diag for k, v in r.items() if k.startswith("grad_share/")]
    assert shares and all(0.0 <= s <= 1.0 and not math.isnan(s) for s in shares)


def test_the_demo_reports_the_diagnostics_means():
    from popo.study.demo import diagnostic_means
    from popo.study.demo_report import demo_diagnostics

    records = [{"step": 1, "grad_share/nll": 0.9, "distinct_positive_frac": 0.5, "loss": 1.0},
               {"step": 2, "loss": 0.5}, {"step": 3, "grad_share/nll": 0.7}]
    means = diagnostic_means(records)
    assert means == pytest.approx({"grad_share/nll": 0.8, "distinct_positive_frac": 0.5}, abs=1e-12)
    table = demo_diagnostics([{"method": "warmed-up start"}, {"method": "popo", "diagnostics": means},
                              {"method": "grpo", "diagnostics": {"grad_share/pg": 1.0}}])
    assert "| popo | 0.500 | 0.800 | - |" in table and "| grpo | - | - | 1.000 |" in table
    assert "train.diag_every=0" in demo_diagnostics([{"method": "popo"}])


def test_policy_only_shares_leave_the_predictor_out(warm_testbed_cache, tmp_path, one_thread):
    from popo.diagnostics import gradient_diagnostics

    run, rollouts, credit, positive, rows = _sampled_step([*_warm(warm_testbed_cache, tmp_path), "algo.name=popo"])
    c = run.config
    out = gradient_diagnostics(run.models, run.algorithm, c.algo, rollouts.select(rows), credit[rows], positive[rows],
                               max_length=c.rollout.max_new_tokens, token_budget=c.optim.micro_batch_tokens,
                               dist=Dist(), row_seeds=torch.arange(int(rows.sum())))
    assert sum(out[f"grad_share/{t}"] for t in ("nll", "sim", "ent")) == pytest.approx(1.0, abs=1e-6)
    assert sum(out[f"grad_share_policy/{t}"] for t in ("nll", "sim", "ent")) == pytest.approx(1.0, abs=1e-6)
    assert out["grad_share_policy/sim"] < out["grad_share/sim"]  # the predictor's gradient is L_sim's alone
