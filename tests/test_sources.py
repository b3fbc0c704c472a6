"""Loading examples from local files: column mapping, bad-row messages, skip mode, formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from popo.data import DataError, Example, load_examples

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_jsonl(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = {"problem": "1+1?", "answer": "2"}


def test_basic_jsonl_and_ids(tmp_path):
    path = write_jsonl(
        tmp_path / "data.jsonl",
        [
            {"id": "a", "problem": "p1", "answer": "1"},
            {"question": "p2", "answer": 27.0},  # question column, float answer
            {"prompt": "p3", "answer": 5},  # prompt column, int answer
            "",  # blank lines are ignored
            {"problem": "p4", "answer": "4", "answer_alternatives": ["four", "4", "IV"]},
        ],
    )
    examples, report = load_examples(path)
    assert examples == [
        Example("p1", "1", "a"),
        Example("p2", "27", "data-2"),
        Example("p3", "5", "data-3"),
        Example("p4", ("4", "four", "IV"), "data-5"),
    ]
    assert report.rows == 4 and report.loaded == 4 and report.skipped == 0
    assert examples[3].answers == ("4", "four", "IV") and examples[0].answers == ("1",)


def test_explicit_keys(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "what?", "gold": "7", "problem": "ignored"}])
    examples, _ = load_examples(path, problem_key="q", answer_key="gold")
    assert examples == [Example("what?", "7", "d-1")]
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'nope' is missing"):
        load_examples(path, problem_key="nope")


def test_answer_from_solution_last_box(tmp_path):
    path = write_jsonl(
        tmp_path / "sol.jsonl",
        [
            {"problem": "p", "solution": r"First $\boxed{1}$, then $x = \boxed{\frac{1}{2}}$."},
            {"problem": "q", "solution": r"So the answer is $\boxed 2$."},
        ],
    )
    examples, _ = load_examples(path)
    assert [e.answer for e in examples] == [r"\frac{1}{2}", "2"]


@pytest.mark.parametrize(
    "row, line_message",
    [
        ('{"problem": "p", "answer": ', "malformed JSON"),
        ({"problem": "p"}, "field 'answer' is missing"),
        ({"answer": "1"}, "field 'problem' is missing"),
        ({"problem": "   ", "answer": "1"}, "field 'problem' is empty"),
        ({"problem": "p", "answer": ""}, "field 'answer' is empty"),
        ({"problem": 3, "answer": "1"}, "field 'problem' must be a string, got int"),
        ({"problem": ["p"], "answer": "1"}, "field 'problem' must be a string, got list"),
        ({"problem": "p", "answer": {"v": 1}}, "field 'answer' must be a string, got dict"),
        ({"problem": "p", "answer": True}, "field 'answer' must be a string, got bool"),
        ({"problem": "p", "answer": None}, "field 'answer' is missing"),
        ({"problem": "p", "answer": "1", "answer_alternatives": "2"}, "field 'answer_alternatives' must be a list"),
        ({"problem": "p", "answer": "1", "answer_alternatives": [""]}, "field 'answer_alternatives' is empty"),
        ({"problem": "p", "solution": "no box at all"}, "field 'solution' has no complete \\boxed{} answer"),
        ({"problem": "p", "solution": r"\boxed{5"}, "field 'solution' has no complete \\boxed{} answer"),
        ([1, 2], "row is not a JSON object"),
        ({"id": "x", "problem": "p", "answer": "1"}, "field 'id': duplicate id 'x' (first at data.jsonl:1)"),
    ],
)
def test_bad_row_messages_name_file_line_and_field(tmp_path, monkeypatch, row, line_message):
    monkeypatch.chdir(tmp_path)
    first = {"id": "x", "problem": "ok", "answer": "1"}
    write_jsonl(tmp_path / "data.jsonl", [first, GOOD | {"id": "y"}, "", row])
    with pytest.raises(DataError) as err:
        load_examples("data.jsonl")
    assert str(err.value).startswith(f"data.jsonl:4: {line_message}")
    assert isinstance(err.value, ValueError)


def test_non_utf8_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = json.dumps(GOOD).encode()
    (tmp_path / "data.jsonl").write_bytes(good + b"\n" + b'{"problem": "caf\xe9", "answer": "1"}\n' + good + b"\n")
    with pytest.raises(DataError, match=r"^data\.jsonl:2: line is not valid UTF-8"):
        load_examples("data.jsonl")
    examples, report = load_examples("data.jsonl", on_bad_row="skip")
    assert len(examples) == 2 and report.skipped_by_reason == {"not_utf8": 1}


def test_skip_mode_counts_by_reason(tmp_path):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            GOOD | {"id": "1"},
            "{broken",
            {"problem": "p"},
            {"problem": "p", "answer": ""},
            GOOD | {"id": "1"},
            {"answer": "3"},
            GOOD | {"id": "2"},
        ],
    )
    examples, report = load_examples(path, on_bad_row="skip")
    assert [e.id for e in examples] == ["1", "2"]
    assert report.rows == 7 and report.loaded == 2 and report.skipped == 5
    assert report.skipped_by_reason == {"malformed_json": 1, "missing_field": 2, "empty_field": 1, "duplicate_id": 1}
    assert report.messages[0].startswith(f"{path}:2: malformed JSON")
    assert "skipped 5" in str(report)


def test_limit(tmp_path):
    path = write_jsonl(tmp_path / "many.jsonl", [GOOD] * 10)
    examples, report = load_examples(path, limit=3)
    assert len(examples) == 3 and report.loaded == 3


def test_empty_missing_and_all_bad_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.jsonl: no rows"):
        load_examples(empty)
    with pytest.raises(DataError, match=r"nowhere\.jsonl: file not found"):
        load_examples(tmp_path / "nowhere.jsonl")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "p"}, "{"])
    with pytest.raises(DataError, match=r"bad\.jsonl: no valid rows \(2 skipped"):
        load_examples(bad, on_bad_row="skip")
    with pytest.raises(ValueError, match="on_bad_row"):
        load_examples(bad, on_bad_row="ignore")
    with pytest.raises(DataError, match="unsupported file type"):
        (tmp_path / "x.csv").write_text("a,b\n")
        load_examples(tmp_path / "x.csv")


def test_json_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [{"id": "a", "problem": "p", "answer": "1"}, {"question": "q", "answer": 2}]
    Path("list.json").write_text(json.dumps(rows), encoding="utf-8")
    Path("wrapped.json").write_text(json.dumps({"data": rows}), encoding="utf-8")
    expected = [Example("p", "1", "a"), Example("q", "2", "list-2")]
    assert load_examples("list.json")[0] == expected
    assert load_examples("wrapped.json")[0][1] == Example("q", "2", "wrapped-2")
    Path("bad.json").write_text(json.dumps([rows[0], {"problem": "p"}]), encoding="utf-8")
    with pytest.raises(DataError, match=r"^bad\.json:row 2: field 'answer' is missing"):
        load_examples("bad.json")
    Path("broken.json").write_text('[\n{"problem": "p",\n "answer": }\n]', encoding="utf-8")
    with pytest.raises(DataError, match=r"^broken\.json:3: malformed JSON"):
        load_examples("broken.json")


def test_parquet_round_trip(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    monkeypatch.chdir(tmp_path)
    table = pa.table(
        {
            "question": ["p1", "p2", "p3"],
            "answer": ["1", "2", ""],
            "answer_alternatives": [["one"], [], None],
        }
    )
    pq.write_table(table, "t.parquet")
    with pytest.raises(DataError, match=r"^t\.parquet:row 3: field 'answer' is empty"):
        load_examples("t.parquet")
    examples, report = load_examples("t.parquet", on_bad_row="skip")
    assert examples == [Example("p1", ("1", "one"), "t-1"), Example("p2", "2", "t-2")]
    assert report.skipped_by_reason == {"empty_field": 1}


@pytest.mark.skipif(not (DATA / "train").is_dir(), reason=f"shared training data not found at {DATA / 'train'}")
def test_shared_training_file_loads_and_matches_its_solutions(tmp_path):
    path = DATA / "train" / "math_lvl3to5.jsonl"
    examples, report = load_examples(path)
    assert report.loaded == report.rows == 8886 and report.skipped == 0
    assert len({e.id for e in examples}) == len(examples)
    # the stored answers are the last \boxed{} of each solution: deriving them from the solutions agrees
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:500]]
    solutions = write_jsonl(
        tmp_path / "solutions.jsonl", [{"id": r["id"], "problem": r["problem"], "solution": r["solution"]} for r in rows]
    )
    derived, _ = load_examples(solutions)
    assert [e.answer for e in derived] == [r["answer"] for r in rows]
