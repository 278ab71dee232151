"""Output names from data: safe_child keeps every name inside the run directory; writable paths."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.errors import InvalidArgumentError, OutputPathError
from workbench.paths import MAX_NAME, check_writable, safe_child, slugify


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("json_format", "json_format"),
        ("italian/en_answer_it", "italian_en_answer_it"),
        ("../../etc/passwd", ".._.._etc_passwd"),
        ("/etc/passwd", "_etc_passwd"),
        ("C:\\Windows\\system32", "C__Windows_system32"),
        ("~root", "_root"),
        ("a\x00b", "a_b"),
        ("perché sì", "perch__s_"),
        ("...", "..."),
        (" ", "_"),
        ("v1.2-final.parquet", "v1.2-final.parquet"),
    ],
)
def test_safe_child_examples(run_dir, name, expected):
    assert safe_child(run_dir, name) == run_dir / expected


@pytest.mark.parametrize("name", ["", ".", ".."])
def test_safe_child_refuses_names_that_are_not_files(run_dir, name):
    with pytest.raises(OutputPathError) as info:
        safe_child(run_dir, name)
    assert "\n" not in str(info.value)


def test_safe_child_refuses_a_symlink_out_of_the_run_dir(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    (run / "escape").symlink_to(outside / "loot")
    (run / "self").symlink_to(run)
    with pytest.raises(OutputPathError, match="outside the run directory"):
        safe_child(run, "escape")
    with pytest.raises(OutputPathError):
        safe_child(run, "self")
    (run / "inner").mkdir()
    (run / "ok").symlink_to(run / "inner" / "file")
    assert safe_child(run, "ok") == run / "ok"


def test_safe_child_refuses_non_text(run_dir):
    with pytest.raises(InvalidArgumentError):
        safe_child(run_dir, None)  # type: ignore[arg-type]


def test_long_names_are_cut_and_stay_distinct(run_dir):
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(slugify(a)) == len(slugify(b)) == MAX_NAME
    assert safe_child(run_dir, a) != safe_child(run_dir, b)
    (safe_child(run_dir, a)).write_text("fits in a file name")


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=300))
def test_arbitrary_text_never_escapes(run_dir, name):
    try:
        child = safe_child(run_dir, name)
    except OutputPathError as e:
        assert "\n" not in str(e)
        assert slugify(name) in ("", ".", "..")
        return
    assert child.parent == run_dir
    assert re.fullmatch(r"[A-Za-z0-9._-]+", child.name) and len(child.name) <= MAX_NAME
    assert child.name not in (".", "..")
    assert child.resolve().parent == run_dir.resolve()


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.sampled_from(["..", ".", "/", "\\", "a", "~", "\x00", "%2e", ""]), max_size=8))
def test_traversal_fragments_never_escape(run_dir, parts):
    name = "".join(parts)
    try:
        child = safe_child(run_dir, name)
    except OutputPathError:
        return
    assert child.parent == run_dir and os.sep not in child.name


def test_check_writable(tmp_path):
    assert (
        check_writable(tmp_path / "new" / "deeper" / "v.safetensors")
        == tmp_path / "new" / "deeper" / "v.safetensors"
    )
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        check_writable(blocker / "sub" / "v.safetensors")
    with pytest.raises(OutputPathError, match="is a directory"):
        check_writable(tmp_path)
