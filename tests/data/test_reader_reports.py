"""ReadReport: every reader counts the rows it read and the rows it dropped by reason, and a file with no usable row is an error."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tether.data import DataError, ReadReport, iter_jsonl, read_demonstrations, read_preferences, read_prompts


def write(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_a_report_counts_rows_records_and_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [{"prompt": "a", "response": "A"}, "", "  ", {"prompt": "b", "response": "B"}])
    report = ReadReport()
    assert len(read_demonstrations(path, report=report)) == 2
    assert (report.rows, report.records, report.kind) == (4, 2, "demonstration")
    assert report.describe() == "4 rows read: 2 blank"
    assert report.kept() == f"2 demonstrations from {path} (4 rows read: 2 blank)"
    assert report.to_dict() == {"path": str(path), "rows_read": 4, "records": 2, "dropped": {"blank": 2}}


def test_an_alpaca_task_gives_a_record_per_instance(tmp_path: Path) -> None:
    path = write(
        tmp_path / "seed.jsonl", [{"instruction": "Add.", "instances": [{"input": "1+1", "output": "2"}, {"input": "2+2", "output": "4"}]}]
    )
    report = ReadReport()
    read_prompts(path, report=report)
    assert (report.rows, report.records) == (1, 2) and report.kept() == f"2 prompts from {path} (1 row read)"


@pytest.mark.parametrize(
    "reader, kind", [(read_prompts, "prompt"), (read_demonstrations, "demonstration"), (read_preferences, "preference pair")]
)
def test_an_empty_file_is_an_error_naming_it(tmp_path: Path, reader, kind: str) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(
        DataError, match=rf"^{empty}: no usable {kind} in 0 rows read \(the file is empty\); expected at least one row such as "
    ):
        reader(empty)
    assert reader(empty, allow_empty=True) == []
    assert reader(empty, limit=0) == []


def test_blank_lines_only_and_an_empty_json_list(tmp_path: Path) -> None:
    blank = write(tmp_path / "blank.jsonl", ["", "", "\t"])
    with pytest.raises(
        DataError,
        match=r"blank\.jsonl: no usable prompt in 3 rows read: 3 blank; expected at least one row such as "
        r'\{"prompt": "\.\.\."\}',
    ):
        read_prompts(blank)
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(DataError, match=r"list\.json: no usable demonstration in 0 rows read \(the file is empty\)"):
        read_demonstrations(listed)
    packed = tmp_path / "empty.jsonl.gz"
    packed.write_bytes(gzip.compress(b"\n"))
    with pytest.raises(DataError, match=r"empty\.jsonl\.gz: no usable preference pair in 1 row read: 1 blank"):
        read_preferences(packed)


def test_skipped_rows_are_reported_by_reason_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.jsonl",
        [
            {"prompt": "q", "chosen": "a", "rejected": "b"},
            "{broken",
            "[1, 2]",
            {"prompt": "q", "chosen": "a", "rejected": "a"},
            {"prompt": "q"},
            {"prompt": "q", "chosen": "a", "rejected": "a"},
            {"prompt": "q", "chosen": "x", "rejected": "y"},
        ],
    )
    skipped: list[DataError] = []
    report = ReadReport()
    pairs = read_preferences(path, skipped=skipped, report=report)
    assert [p.chosen for p in pairs] == ["a", "x"]
    assert [e.line for e in skipped] == [2, 3, 4, 5, 6]
    assert report.describe() == (
        "7 rows read: 1 not valid JSON (line 2), 1 not a JSON object (line 3), "
        "2 with the same 'chosen' and 'rejected' (lines 4, 6), 1 of type prompt-only (line 5)"
    )
    # without `skipped`, the same file stops at its first bad line, as before
    with pytest.raises(DataError, match=r"p\.jsonl:2: expected one JSON object on the line, got invalid JSON"):
        read_preferences(path)


def test_a_missing_field_is_reported_as_such(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", ["", "", {"prompt": "q"}])
    skipped: list[DataError] = []
    with pytest.raises(DataError, match=r"d\.jsonl: no usable demonstration in 3 rows read: 2 blank, 1 without a 'response' \(line 3\);"):
        read_demonstrations(path, skipped=skipped)
    assert skipped[0].reason == "without a 'response'"


def test_iter_jsonl_skips_bad_lines_only_when_asked(tmp_path: Path) -> None:
    path = write(tmp_path / "rows.jsonl", [{"a": 1}, "nope", "3", {"b": 2}])
    skipped: list[DataError] = []
    assert [line for line, _ in iter_jsonl(path, skipped=skipped)] == [1, 4]
    assert [(e.line, e.reason) for e in skipped] == [(2, "not valid JSON"), (3, "not a JSON object")]
    with pytest.raises(DataError, match=r"rows\.jsonl:2:"):
        list(iter_jsonl(path))


def test_a_stage_adds_its_own_drops(tmp_path: Path) -> None:
    path = write(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    report = ReadReport()
    read_preferences(path, report=report)
    report.drop("tied", count=1)
    error = report.nothing_left("to train on: all 1 training pairs are ties")
    assert str(error) == f"{path}: no usable preference pair left to train on: all 1 training pairs are ties (1 row read: 1 tied)"
    assert error.line is None and error.path == str(path)
