"""The benchmark registry: specs, local loading from the shared folder, the hub column mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from popo.data import benchmarks as bm
from popo.data import BENCHMARKS, DataError, Example, load_benchmark

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "benchmarks"
needs_data = pytest.mark.skipif(not BENCH.is_dir(), reason=f"shared benchmark folder not found at {BENCH}")


def test_registry_names_and_specs():
    assert set(BENCHMARKS) == {"aime24", "aime25", "amc23", "amc", "math500", "minerva", "olympiadbench", "gsm8k"}
    assert BENCHMARKS["amc"].local_file == "amc83.jsonl" and BENCHMARKS["amc"].size == 83
    assert BENCHMARKS["math500"].hub_id == "HuggingFaceH4/MATH-500"
    assert (BENCHMARKS["gsm8k"].hub_id, BENCHMARKS["gsm8k"].hub_config, BENCHMARKS["gsm8k"].hub_split) == (
        "openai/gsm8k",
        "main",
        "test",
    )
    for spec in BENCHMARKS.values():
        assert "/" in spec.hub_id and spec.local_file.endswith(".jsonl") and spec.size > 0


def test_unknown_benchmark_suggests_the_closest():
    with pytest.raises(ValueError, match="Did you mean 'math500'"):
        load_benchmark("math-500")
    with pytest.raises(ValueError, match="Did you mean 'aime25'"):
        load_benchmark("aime2025")


@needs_data
@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_local_benchmarks_load(name):
    examples = load_benchmark(name, data_dir=BENCH)
    assert len(examples) == BENCHMARKS[name].size
    assert all(isinstance(e, Example) and e.problem and e.answers for e in examples)
    assert len({e.id for e in examples}) == len(examples)


@needs_data
def test_local_specifics():
    minerva = load_benchmark("minerva", data_dir=BENCH)
    assert any(isinstance(e.answer, tuple) for e in minerva)  # answer_alternatives are merged in
    gsm8k = load_benchmark("gsm8k", data_dir=BENCH)
    assert gsm8k[0].answer == "18"


def test_missing_local_file(tmp_path):
    with pytest.raises(DataError, match="aime24.jsonl"):
        load_benchmark("aime24", data_dir=tmp_path)


def test_hub_mapping_without_network(monkeypatch):
    """The hub path renames columns and normalises answers; datasets.load_dataset is faked here."""
    fake_rows = {
        "openai/gsm8k": [{"question": "Q1", "answer": "She has 3.\n#### 1,234"}, {"question": "Q2", "answer": "x\n#### 7"}],
        "Hothan/OlympiadBench": [{"id": 1606, "question": "Q", "final_answer": ["$69$,$84$", "$x$"]}],
        "AI-MO/aimo-validation-amc": [{"id": 0, "problem": "P", "answer": 142.0}],
    }
    calls = []

    def fake_read_hub(source, config, split):
        calls.append((source, config, split))
        for n, row in enumerate(fake_rows[source], start=1):
            yield f"{source}[{split}]:row {n}", n, row

    monkeypatch.setattr(bm, "_read_hub", fake_read_hub)
    gsm = load_benchmark("gsm8k")
    assert [(e.problem, e.answer, e.id) for e in gsm] == [("Q1", "1234", "gsm8k-1"), ("Q2", "7", "gsm8k-2")]
    olympiad = load_benchmark("olympiadbench")
    assert olympiad == [Example("Q", "69$,$84", "olympiadbench-1606")]
    amc = load_benchmark("amc")
    assert amc == [Example("P", "142", "amc-0")]
    assert calls == [
        ("openai/gsm8k", "main", "test"),
        ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"),
        ("AI-MO/aimo-validation-amc", None, "train"),
    ]
    fake_rows["openai/gsm8k"] = [{"question": "Q", "answer": "no final answer marker"}]
    with pytest.raises(DataError, match=r"openai/gsm8k\[test\]:row 1: field 'answer': no '####'"):
        load_benchmark("gsm8k")
