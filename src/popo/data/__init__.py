"""Data: examples, prompt templates, dataset loading, the benchmark registry and the prompt stream.

`sources.py` reads JSONL, JSON, parquet and hub datasets into `Example`s (bad rows are errors naming file,
line and field, or are skipped and counted; `fields.py` checks one row: text or chat problem, answers, id); `templates.py` renders prompts; `benchmarks.py` names the
evaluation sets; `prepare.py` builds a run's prompts (testbed splits, length cap); `stream.py` is the seeded, resumable order in which a run visits its prompts."""

from popo.data.benchmarks import BENCHMARKS, BenchmarkSpec, load_benchmark
from popo.data.example import Example
from popo.data.sources import DataError, LoadReport, load_examples
from popo.data.templates import TEMPLATES, render_prompt

__all__ = [
    "BENCHMARKS",
    "BenchmarkSpec",
    "DataError",
    "Example",
    "LoadReport",
    "TEMPLATES",
    "load_benchmark",
    "load_examples",
    "render_prompt",
]
