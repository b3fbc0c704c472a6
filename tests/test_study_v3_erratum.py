"""Study v3's erratum numbers (docs/results/study_v3/countdown/erratum.json, quoted in the pre-registration's
erratum, docs/results.md and README) re-derive from the committed raw tables: every point estimate exactly, the
bootstrap intervals by the script itself (run in full by `erratum.py`, too slow for the suite)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "docs" / "results" / "study_v3"
DATA = HERE / "countdown"


@pytest.fixture(scope="module")
def erratum():
    sys.path.insert(0, str(HERE))
    try:
        import erratum as module
    finally:
        sys.path.remove(str(HERE))
    return module


def same(a, b) -> bool:
    """Equal to 1e-12 through nested dicts, nan equal to nan (the committed values went through JSON)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and a != a:
        return b != b
    return a == pytest.approx(b, abs=1e-12)


def tables():
    from popo.study.analysis import CURVE_FIELDS, OUTCOME_FIELDS, read_rows

    return (read_rows(DATA / "tuning" / "outcomes.csv.gz", OUTCOME_FIELDS),
            read_rows(DATA / "tuning" / "curves.csv.gz", CURVE_FIELDS),
            read_rows(DATA / "outcomes.csv.gz", OUTCOME_FIELDS), read_rows(DATA / "curves.csv.gz", CURVE_FIELDS))


def test_every_point_estimate_re_derives(erratum, monkeypatch):
    committed = json.loads((DATA / "erratum.json").read_text())
    tuning, tuning_curves, finals, curves = tables()
    monkeypatch.setattr(erratum, "RESAMPLES", 20)
    matched = erratum.matched_validation(tuning)
    for key, value in committed["matched_validation"].items():
        if key.startswith("pair"):
            assert matched[key]["pass"]["difference"] == pytest.approx(value["pass"]["difference"], abs=1e-12)
        else:
            assert matched[key]["difference"] == pytest.approx(value["difference"], abs=1e-12, nan_ok=True), key
    assert same(erratum.along_trajectories(tuning_curves), committed["along_trajectories"])
    variance = erratum.primary_variance(finals)
    assert same(variance["shares"], committed["primary_variance"]["shares"])
    assert same(erratum.start_evaluations(curves, finals), committed["start"])
    assert same(erratum.seed_variance(finals), committed["seed_variance"])
    # what the prose quotes
    assert round(committed["matched_validation"]["pair popo 1e-4 - grpo 1e-5"]["pass"]["difference"], 3) == 0.025
    assert round(committed["start"]["avg_mean"], 3) == 0.290 and committed["start"]["rank_of_used"] == 2
    assert round(variance["mde_formula"], 3) == 0.019
