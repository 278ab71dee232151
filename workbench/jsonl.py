"""JSON Lines files: strict reading with one-line errors, atomic writing."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from workbench.errors import DataError, InvalidArgumentError
from workbench.files import atomic_write


def read_jsonl_numbered(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` pairs of a JSON Lines file, 1-based, blank lines skipped.

    Raises DataError naming the file for a missing file, invalid UTF-8 (with the byte offset), malformed JSON
    (with the line number) or a line that is not a JSON object.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: invalid UTF-8 at byte offset {e.start}") from None
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {number}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    return rows


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The objects of a JSON Lines file in order, blank lines skipped; errors as ``read_jsonl_numbered``."""
    return [row for _, row in read_jsonl_numbered(path)]


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically (:func:`workbench.files.atomic_write`).

    Raises OutputPathError when the folder cannot be written, InvalidArgumentError for a row that is not a
    JSON-serialisable object; either way an existing file is left as it was.
    """

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for number, row in enumerate(rows, start=1):
                if not isinstance(row, dict):
                    raise InvalidArgumentError(
                        f"row {number} for {path} is a {type(row).__name__}, not a dict: pass JSON objects"
                    )
                try:
                    line = json.dumps(row, ensure_ascii=False)
                except (TypeError, ValueError) as e:
                    raise InvalidArgumentError(
                        f"row {number} for {path} is not JSON-serialisable ({e}): pass plain values"
                    ) from None
                f.write(line + "\n")

    atomic_write(path, write, "JSON Lines file")
