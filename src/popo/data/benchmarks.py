"""Registry of public math evaluation benchmarks: where each lives on the hub and in a local folder.

``load_benchmark(name)`` loads from the Hugging Face hub; ``load_benchmark(name, data_dir=...)`` reads
``data_dir/<local_file>`` (JSON lines with ``problem``, ``answer`` and optionally ``id`` and
``answer_alternatives``), the format of the project's shared benchmark folder.

Hub sources are the copies most RLVR papers evaluate on. They can differ slightly from the local files
(which were taken from the Qwen2.5-Math / simpleRL / rllm evaluation folders, see PROVENANCE.md
there): e.g. the hub OlympiadBench config has 674 rows where the Qwen2.5-Math copy has 675, and hub
answers of AMC sets are floats (``27.0``), which the loader turns into ``"27"``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from popo.data.example import Example
from popo.errors import ConfigError
from popo.data.sources import DataError, _read_hub, examples_from_rows, load_examples

__all__ = ["BENCHMARKS", "BenchmarkSpec", "load_benchmark"]


def gsm8k_final_answer(text: str) -> str:
    """GSM8K's gold is the text after ``####`` (thousands separators removed)."""
    if "####" not in text:
        raise ValueError("no '####' final answer")
    return text.rsplit("####", 1)[1].strip().replace(",", "")


def olympiad_final_answer(text: str) -> str:
    """OlympiadBench's ``final_answer`` entries are wrapped in ``$...$``: strip spaces and outer ``$``."""
    return text.strip().strip("$").strip()


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives. ``hub_*`` fields describe the hub copy, ``local_file`` the file name in a
    local benchmark folder; ``size`` is the expected number of problems of the local file."""

    name: str
    description: str
    hub_id: str
    hub_split: str
    local_file: str
    size: int
    hub_config: str | None = None
    problem_key: str = "problem"
    answer_key: str = "answer"
    id_key: str | None = None
    answer_transform: Callable[[str], str] | None = None


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in [
        BenchmarkSpec(
            name="aime24",
            description="AIME 2024 I and II (30 integer answers)",
            hub_id="HuggingFaceH4/aime_2024",
            hub_split="train",
            local_file="aime24.jsonl",
            size=30,
            id_key="id",
        ),
        BenchmarkSpec(
            name="aime25",
            description="AIME 2025 I and II (30 integer answers)",
            hub_id="math-ai/aime25",
            hub_split="test",
            local_file="aime25.jsonl",
            size=30,
            id_key="id",
        ),
        BenchmarkSpec(
            name="amc23",
            description="AMC 12 2023, the 40-problem set of the Qwen2.5-Math evaluation",
            hub_id="math-ai/amc23",
            hub_split="test",
            local_file="amc23.jsonl",
            size=40,
            problem_key="question",
        ),
        BenchmarkSpec(
            name="amc",
            description="AMC 12 2022 and 2023, 83 problems (AI-MO validation set; PRIME, Dr. GRPO, DeepScaleR)",
            hub_id="AI-MO/aimo-validation-amc",
            hub_split="train",
            local_file="amc83.jsonl",
            size=83,
            id_key="id",
        ),
        BenchmarkSpec(
            name="math500",
            description="MATH-500, OpenAI's PRM800K test split of MATH",
            hub_id="HuggingFaceH4/MATH-500",
            hub_split="test",
            local_file="math500.jsonl",
            size=500,
            id_key="unique_id",
        ),
        BenchmarkSpec(
            name="minerva",
            description="Minerva Math (OCW courses), 272 problems",
            hub_id="math-ai/minervamath",
            hub_split="test",
            local_file="minerva_math.jsonl",
            size=272,
            problem_key="question",
        ),
        BenchmarkSpec(
            name="olympiadbench",
            description="OlympiadBench, English open-ended text-only maths (OE_TO_maths_en_COMP)",
            hub_id="Hothan/OlympiadBench",
            hub_config="OE_TO_maths_en_COMP",
            hub_split="train",
            local_file="olympiadbench.jsonl",
            size=675,
            problem_key="question",
            answer_key="final_answer",
            id_key="id",
            answer_transform=olympiad_final_answer,
        ),
        BenchmarkSpec(
            name="gsm8k",
            description="GSM8K test split (1,319 grade-school problems)",
            hub_id="openai/gsm8k",
            hub_config="main",
            hub_split="test",
            local_file="gsm8k.jsonl",
            size=1319,
            problem_key="question",
            answer_transform=gsm8k_final_answer,
        ),
    ]
}


def _spec(name: str) -> BenchmarkSpec:
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    close = difflib.get_close_matches(name, list(BENCHMARKS), n=1, cutoff=0.4)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown benchmark {name!r}.{hint} Known: {', '.join(sorted(BENCHMARKS))}, testbed, "
                      "or a .jsonl/.json/.parquet file")


def _hub_rows(spec: BenchmarkSpec):
    """Hub rows renamed to the local schema: problem, answer (list for OlympiadBench), id."""
    for prefix, number, row in _read_hub(spec.hub_id, spec.hub_config, spec.hub_split):
        if isinstance(row, dict):
            mapped = {"problem": row.get(spec.problem_key), "answer": row.get(spec.answer_key)}
            if spec.id_key is not None and row.get(spec.id_key) is not None:
                mapped["id"] = f"{spec.name}-{row[spec.id_key]}"
            if spec.name == "olympiadbench" and isinstance(mapped["answer"], list):
                mapped["answer"] = mapped["answer"][:1]  # the first final answer is the gold (as in Qwen2.5-Math)
            row = mapped
        yield prefix, number, row


def load_benchmark(name: str, data_dir: str | Path | None = None) -> list[Example]:
    """The problems of benchmark ``name`` (a key of ``BENCHMARKS``).

    With ``data_dir``, reads ``data_dir/<spec.local_file>``; otherwise downloads the hub copy with
    ``datasets`` (columns renamed, GSM8K / OlympiadBench answers normalised). Rows are checked strictly
    (``on_bad_row="error"``).
    """
    spec = _spec(name)
    if data_dir is not None:
        path = Path(data_dir) / spec.local_file
        if not path.exists():
            raise DataError(f"{path}: file not found (benchmark {name!r} expects {spec.local_file} in {data_dir})")
        examples, _ = load_examples(path)
        return examples
    hint = (f"pass --data-dir DIR with the local copy {spec.local_file} in DIR (JSON lines with problem and answer), "
            f"or, where {spec.hub_id} is already in the Hugging Face cache, set HF_HUB_OFFLINE=1")
    try:
        examples, _ = examples_from_rows(
            _hub_rows(spec),
            label=f"{spec.hub_id}[{spec.hub_split}]",
            stem=spec.name,
            answer_transform=spec.answer_transform,
        )
    except DataError as err:
        if any(m in str(err) for m in ("cannot load hub dataset", "cannot be reached")):
            raise DataError(f"benchmark {name!r}: {err}; {hint}") from None
        raise
    return examples

