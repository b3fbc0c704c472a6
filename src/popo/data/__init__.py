"""Data: examples, prompt templates, dataset loading and the benchmark registry."""

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
