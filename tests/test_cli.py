"""CLI surface: help lists every command, docs/configuration.md matches the dataclasses,
and `popo eval` runs end to end on a local model and two local benchmark files."""

import json
from pathlib import Path

import pytest

from popo.cli import main
from popo.config_reference import reference_markdown

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "data" / "benchmarks"


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("demo", "sft", "train", "eval", "config"):
        assert command in out


def test_readme_reference_matches_dataclasses():
    assert reference_markdown() in (ROOT / "docs" / "configuration.md").read_text()
    assert "(docs/configuration.md)" in (ROOT / "README.md").read_text()


@pytest.mark.skipif(not BENCH.is_dir(), reason="shared benchmark folder not present")
def test_eval_end_to_end(tmp_path):
    from popo.testbed.model import build_tiny_qwen2
    from popo.testbed.tokenizer import build_tokenizer

    tok = build_tokenizer()
    build_tiny_qwen2(tok).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    out = tmp_path / "res.json"
    assert main(["eval", "--model", str(tmp_path / "m"), "--benchmarks", "aime25,amc23", "--data-dir", str(BENCH),
                 "--samples", "2", "--max-new-tokens", "4", "--limit", "3", "--template", "plain",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["results"]) == {"aime25", "amc23"}
    assert {"greedy_acc", "avg@2", "pass@2", "maj@2"} <= set(result["results"]["aime25"])
    assert out.with_suffix(".md").read_text().startswith("Protocol:")
    assert len(out.with_suffix(".records.jsonl").read_text().splitlines()) == 6
