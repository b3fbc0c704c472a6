"""Golden metrics: short seeded runs on the warm testbed whose every logged number (rewards, losses, grad
norms, diagnostics, evaluation) is pinned bit for bit, so a refactor of the training side cannot change
behaviour unnoticed.

The runs start from the warm start shipped in tests/golden/warm_starts (the same weights on every machine).
The pinned numbers are float32 CPU arithmetic: they hold bit for bit on the platform they were recorded on
(torch version and CPU instruction set, stored beside them). On any other platform the test does not skip:
the CPU kernels round differently (other vector widths, other exp/log approximations), so
- what is counted from sampled or greedy tokens (`SAMPLED`: rollouts, positives, token counts, rewards and
  their fractions, accuracies) must still be equal: a token's draw depends on rounding only when its uniform
  variate falls within the rounding (~1e-6) of a category boundary, about once in a million draws, and a
  run samples about 500 tokens;
- schedules (`lr`, `tau`, `skipped`) are exact;
- every other float (losses, norms, log-prob statistics) is within the reordering tolerance of
  tests/numerics.py, and the gradient probes within the looser one of tests/test_distributed.py (a small
  term's gradient direction amplifies the rounding of the gradient).
Regenerate with `POPO_UPDATE_GOLDEN=1 pytest tests/test_golden.py`, only from code whose behaviour is known
to be right.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import warm_testbed_config
from numerics import REORDER_ABS, REORDER_REL
from popo.build import build_trainer

GOLDEN = Path(__file__).parent / "golden" / "metrics.json"

# name -> overrides on top of the warm-testbed run (3 steps, 8 prompts x 4 rollouts, diagnostics every step,
# evaluation after the last step). Small token budgets force several micro-batches.
RUNS = {
    "popo": ["algo.name=popo", "algo.tau=0.5", "optim.lr=1e-3", "optim.micro_batch_tokens=64"],
    "grpo": ["algo.name=grpo", "optim.lr=1e-3", "optim.micro_batch_tokens=96"],
    "grpo-kl-2updates": ["algo.name=grpo-kl", "algo.updates_per_batch=2", "optim.lr=1e-3"],
    "popo-lora": ["algo.name=popo", "model.lora.r=4", "model.lora.alpha=8", "algo.tau=0.5", "optim.lr=3e-3"],
    "popo-entropy-all": ["algo.name=popo", "algo.entropy_scope=all", "algo.beta=0.05", "optim.lr=1e-3",
                         "train.eval_samples=2"],
}


SAMPLED = {"step", "rollouts", "rollouts_total", "positive_rollouts", "generated_tokens", "forwarded_rollouts",
           "forwarded_tokens", "num_positive", "num_positive_tokens", "num_tokens", "trained_rollouts",
           "trained_tokens", "micro_batches", "pass_rate", "reward_mean", "prompts_all_positive",
           "prompts_with_positive", "distinct_positive_frac", "multi_distinct_frac", "truncated_frac",
           "eval/greedy_acc", "eval/avg@2", "eval/avg@4", "eval/pass@2", "eval/pass@4", "eval/mean_length"}
SCHEDULES = {"lr", "tau", "skipped", "skipped_no_positive"}
GRADIENT_PROBES = ("grad_share", "grad_cos")


def differences(got: dict, want: dict, same_platform: bool) -> dict:
    """The keys whose values differ by more than the platform allows (module docstring)."""
    if same_platform:
        return {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    out = {}
    for k in want:
        if k in SAMPLED or k in SCHEDULES:
            close = got[k] == want[k]
        elif k.startswith(GRADIENT_PROBES):
            close = got[k] == pytest.approx(want[k], abs=1e-4, rel=1e-3)
        else:
            close = got[k] == pytest.approx(want[k], abs=REORDER_ABS, rel=REORDER_REL)
        if not close:
            out[k] = (got[k], want[k])
    return out


def platform() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def run_metrics(cache_dir: str, out_dir: Path, overrides: list[str]) -> list[dict]:
    """The run's metrics records without wall-clock timings."""
    torch.set_num_threads(1)
    history = build_trainer(warm_testbed_config(cache_dir, out_dir, *overrides)).run()
    return [{k: v for k, v in record.items() if not k.startswith("time/")} for record in history]


@pytest.mark.parametrize("name", list(RUNS))
def test_metrics_are_bit_identical_to_the_golden_record(name, warm_testbed_cache, tmp_path):
    got = run_metrics(warm_testbed_cache, tmp_path / name, RUNS[name])
    if os.environ.get("POPO_UPDATE_GOLDEN") == "1":
        saved = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {"runs": {}}
        saved["platform"] = platform()
        saved["runs"][name] = {"overrides": RUNS[name], "records": got}
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
        return
    saved = json.loads(GOLDEN.read_text())
    same_platform = saved["platform"] == platform()
    want = saved["runs"][name]
    assert want["overrides"] == RUNS[name], "the run changed: regenerate the golden record deliberately"
    assert len(got) == len(want["records"])
    for step, (g, w) in enumerate(zip(got, want["records"])):
        assert g.keys() == w.keys(), f"step {step}: keys differ: {sorted(g.keys() ^ w.keys())}"
        diff = differences(g, w, same_platform)
        assert not diff, (f"{name} record {step} differs (got, golden) on {platform()}, recorded on "
                          f"{saved['platform']}: {diff}")


def test_golden_runs_exercise_what_they_claim():
    """The record is not vacuous: every run updated, evaluated and logged its losses."""
    saved = json.loads(GOLDEN.read_text())
    assert set(saved["runs"]) == set(RUNS)
    for name, run in saved["runs"].items():
        records = run["records"]
        assert any(r.get("skipped") == 0.0 for r in records), name
        assert any("eval/greedy_acc" in r for r in records), name
        assert all("loss" in r and "grad_norm" in r for r in records if r.get("skipped") == 0.0), name
        assert sum(r.get("micro_batches", 0) for r in records) > len(records) - 1, name
    assert any(r.get("micro_batches", 0) > 1 for r in saved["runs"]["popo"]["records"])
