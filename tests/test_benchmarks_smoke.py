"""Every benchmark entry point runs end to end with the smallest settings, for one repetition, and
writes its JSON + markdown: benchmarks are not tests (no timing is asserted), but they must not rot.

The TRL comparison needs `trl` (the `popo[trl]` extra, part of the dev install); without it that part is
skipped visibly.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--prompts", "2", "--group", "2", "--max-new-tokens", "3"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory, monkeypatch_module):
    """The benchmarks folder importable, and the tiny random models cached in a temporary folder."""
    monkeypatch_module.setenv("POPO_BENCH_CACHE", str(tmp_path_factory.mktemp("bench-models")))
    monkeypatch_module.syspath_prepend(str(BENCHMARKS))
    return lambda name: importlib.import_module(name)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _written(out: Path) -> dict:
    assert out.with_suffix(".md").read_text().startswith("# ")
    return json.loads(out.with_suffix(".json").read_text())


@pytest.mark.slow
def test_step_time(bench, tmp_path):
    """popo's GRPO and POPO, and TRL's GRPOTrainer when `trl` is installed, in one call (the ratio needs both)."""
    trl = importlib.util.find_spec("trl") is not None
    out = tmp_path / "step"
    assert bench("step_time_vs_trl").main(["--models", "0.3m", "--frameworks", *(["trl"] if trl else []), "grpo",
                                           "popo", "--steps", "2", "--repeats", "1", *TINY, "--out", str(out)]) == 0
    rows = _written(out)["rows"]
    assert {r["framework"] for r in rows} == {"grpo", "popo", *(["trl"] if trl else [])}
    assert all(r["median_step_s"] > 0 and r["peak_rss_mb"] > 0 for r in rows)
    if trl:
        assert {r["framework"]: r for r in rows}["grpo"]["trl_over_ours"] > 0
    else:
        pytest.skip("trl is not installed (pip install 'popo[trl]' to run the TRL part)")


def test_positive_fraction(bench, tmp_path):
    out = tmp_path / "fraction"
    assert bench("positive_fraction").main(["--model", "0.3m", "--fractions", "0.5", "--repeats", "1",
                                            "--prompts", "2", "--group", "4", "--max-new-tokens", "3",
                                            "--out", str(out)]) == 0
    rows = {r["config"]: r for r in _written(out)["rows"]}
    assert rows["popo"]["forwarded_rows"] == 4  # half of 8 rows are positive: only those are forwarded
    assert rows["popo-ent-all"]["forwarded_rows"] == rows["grpo-full"]["forwarded_rows"] == 8


def test_generation(bench, tmp_path):
    out = tmp_path / "generation"
    assert bench("generation").main(["--models", "0.3m", "--prompts", "2", "--group", "2", "--max-new-tokens", "3",
                                     "--batch-sizes", "4", "--repeats", "1", "--out", str(out)]) == 0
    result = _written(out)
    assert result["overhead"][0]["engine_tokens"] > 0 and result["throughput"][0]["rows"] == 4
    floor = result["overhead"][0]["floor"]
    assert floor["gflops_per_s"] > 0 and 0 < result["overhead"][0]["engine_floor_share"] < 10
    assert "engine_model_s" in result["overhead"][0]


def test_token_flops_counts_weights_and_attention(bench):
    """2 FLOPs per linear weight (the output layer included) plus 4 x layers x width x keys."""
    from popo.testbed.model import TinyModelSpec, build_tiny_qwen2
    from popo.testbed.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    model = build_tiny_qwen2(tokenizer, TinyModelSpec(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                      num_key_value_heads=2, intermediate_size=64))
    vocab = len(tokenizer)
    per_layer = 32 * 32 + 2 * (32 * 16) + 32 * 32 + 3 * (32 * 64)  # q, k, v (2 kv heads of 8), o, MLP
    linear = 2 * per_layer + vocab * 32  # the tied output layer is an nn.Linear too
    assert bench("generation").token_flops(model, 10) == 2.0 * linear + 4.0 * 2 * 32 * 10


def test_profile_step(bench, capsys):
    assert bench("profile_step").main(["--model", "0.3m", "--steps", "1", *TINY, "--top", "3"]) == 0
    assert "cProfile by tottime" in capsys.readouterr().out


def test_verifier_throughput(bench, tmp_path):
    module = bench("verifier_throughput")
    if not module.DEFAULT_DATA.is_file():
        pytest.skip(f"MATH-500 file not found: {module.DEFAULT_DATA}")
    out = tmp_path / "verifier"
    argv = sys.argv
    try:
        sys.argv = ["verifier_throughput.py"]
        assert module.main(["--prompts", "2", "--group", "2", "--workers", "1", "--runs", "1",
                            "--out", str(out)]) == 0
    finally:
        sys.argv = argv
    assert _written(out)["rows"][0]["items"] == 4


def test_profile_decode(bench, tmp_path):
    out = tmp_path / "profile_decode.md"
    assert bench("profile_decode").main(["--model", "0.3m", "--rows", "4", "--context", "5", "--rounds", "1",
                                         "--calls", "2", "--out", str(out)]) == 0
    text = out.read_text()
    assert "`LeanDecoder.step`" in text and "| products |" in text
