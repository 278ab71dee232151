"""JSON Lines: reading names the bad line or byte, writing is atomic; arbitrary files never crash the reader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.refusals import one_line, refuses
from tests.strategies import FUZZ, json_values, jsonl_lines, write
from workbench.errors import DataError, InvalidArgumentError, OutputPathError
from workbench.jsonl import read_jsonl, read_jsonl_numbered, write_jsonl


def test_malformed_json_reports_the_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2,}\n{"a": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 3: malformed JSON"):
        read_jsonl(path)


def test_invalid_utf8_reports_the_byte_offset(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"a": "ok"}\n{"a": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl: invalid UTF-8 at byte offset 22"):
        read_jsonl(path)


def test_non_objects_and_missing_files_are_refused(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2: expected a JSON object, got list"):
        read_jsonl(path)
    with pytest.raises(DataError, match="no such file"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_write_then_read_round_trips(tmp_path):
    rows = [{"text": "perché\u2028sì", "n": 1}, {"nested": {"x": [1, 2]}}]
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, rows)
    write_jsonl(path, rows)  # replaces the file
    assert read_jsonl(path) == rows
    assert read_jsonl_numbered(path) == [(1, rows[0]), (2, rows[1])]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


def test_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"a": 1}])
    with pytest.raises(InvalidArgumentError, match="row 2"):
        write_jsonl(path, [{"a": 2}, {"b": object()}])
    assert read_jsonl(path) == [{"a": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "results"
    path.write_text("I am a file, not a folder")
    return path


def test_write_jsonl_under_a_file(a_file):
    refuses(OutputPathError, lambda: write_jsonl(a_file / "rows.jsonl", [{"a": 1}]), "cannot write")


def test_write_jsonl_of_unserialisable_rows(tmp_path):
    rows = [{"a": 1}, {"tensor": torch.zeros(2)}]
    refuses(InvalidArgumentError, lambda: write_jsonl(tmp_path / "rows.jsonl", rows), "row 2")
    assert not list(tmp_path.iterdir())


# ---- fuzz ---------------------------------------------------------------------------------------------


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), jsonl_lines(json_values).map(str.encode)))
def test_read_jsonl_on_arbitrary_bytes(data):
    path = write(data)
    try:
        rows = read_jsonl(path)
    except DataError as e:
        one_line(e)
        assert str(path) in str(e)
    else:
        assert all(isinstance(row, dict) for row in rows)
        assert len(rows) == sum(1 for line in data.decode("utf-8").split("\n") if line.strip())
    finally:
        path.unlink()


@FUZZ
@given(text=st.text(max_size=200))
def test_read_jsonl_on_arbitrary_text(text):
    path = write(text)
    try:
        read_jsonl(path)
    except DataError as e:
        one_line(e)
    finally:
        path.unlink()
