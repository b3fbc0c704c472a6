"""Committed reports name paths relative to the repository, never the absolute path of the machine that wrote them."""

from __future__ import annotations

import re
from pathlib import Path

from popo.study.report import shown_path

REPO = Path(__file__).resolve().parents[1]


def test_a_path_inside_the_current_folder_is_shown_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shown_path(str(tmp_path / ".cache" / "popo" / "testbed-abc")) == ".cache/popo/testbed-abc"
    assert shown_path(".cache/popo/testbed-abc") == ".cache/popo/testbed-abc"


def test_a_path_outside_it_loses_its_machine_prefix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shown_path("/somewhere/else/cache/testbed-abc") == "cache/testbed-abc"


def test_no_committed_report_names_an_absolute_path():
    machine_path = re.compile(r"`/(?:work|root|home|tmp|Users|mnt|opt|var|srv)/")
    for report in [*(REPO / "docs").rglob("*.md"), REPO / "README.md"]:
        for number, line in enumerate(report.read_text().splitlines(), 1):
            assert not machine_path.search(line), f"{report.relative_to(REPO)}:{number}: {line}"
