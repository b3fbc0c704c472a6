"""One evaluation path: `popo eval` on a run's checkpoint reports exactly the numbers the trainer logged
for the same model, prompts, protocol and seed."""

from __future__ import annotations

import json

from conftest import WARM_TESTBED, warm_testbed_config
from popo.build import build_trainer
from popo.checkpoint import latest_checkpoint
from popo.cli import main


def test_popo_eval_reproduces_the_trainers_evaluation(warm_testbed_cache, tmp_path):
    run_dir = tmp_path / "run"
    config = warm_testbed_config(warm_testbed_cache, run_dir, "train.steps=1", "train.seed=3", "train.eval_samples=4",
                                 "optim.lr=1e-3")
    logged = build_trainer(config, log=lambda message: None).run()[-1]  # the last step is always evaluated
    assert {"eval/greedy_acc", "eval/avg@4", "eval/pass@4"} <= logged.keys()

    out = tmp_path / "eval.json"
    policy = latest_checkpoint(run_dir) / "policy"
    assert main(["eval", "--model", str(policy), "--benchmarks", "testbed", "--samples", "4",
                 "--temperature", str(config.rollout.temperature), "--top-p", str(config.rollout.top_p),
                 "--max-new-tokens", str(config.rollout.max_new_tokens), "--limit", str(config.data.eval_size),
                 "--zero-if-truncated", "--seed", "3", "--template", "plain", "--out", str(out),
                 *WARM_TESTBED, "model.device=cpu"]) == 0
    reported = json.loads(out.read_text())["results"]["testbed"]
    assert reported["problems"] == config.data.eval_size
    for key in ("greedy_acc", "mean_length", "avg@4", "pass@4"):
        assert reported[key] == logged[f"eval/{key}"], key  # bit for bit, not approximately
    assert 0 < reported["avg@4"] < 1, "a degenerate evaluation would make the comparison vacuous"

    # another seed samples other completions: the seed is what ties the two paths together
    assert main(["eval", "--model", str(policy), "--benchmarks", "testbed", "--samples", "4", "--temperature", "1.0",
                 "--top-p", "1.0", "--max-new-tokens", "12", "--limit", "20", "--zero-if-truncated", "--seed", "4",
                 "--template", "plain", "--out", str(tmp_path / "other.json"), *WARM_TESTBED]) == 0
    other = json.loads((tmp_path / "other.json").read_text())["results"]["testbed"]
    records = [json.loads(line) for line in (tmp_path / "other.records.jsonl").read_text().splitlines()]
    first = [json.loads(line) for line in out.with_suffix(".records.jsonl").read_text().splitlines()]
    assert other["greedy_acc"] == reported["greedy_acc"]  # greedy decoding does not depend on the seed
    assert [r["samples"] for r in records] != [r["samples"] for r in first]
