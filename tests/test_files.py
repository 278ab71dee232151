"""Run-folder files: atomic writes (whole or absent under their final name), locks, shared creation, tables."""

from __future__ import annotations

import errno
import os
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest

from workbench import files
from workbench.errors import OutputPathError


def test_markdown_table_without_tabulate(monkeypatch):
    frame = pd.DataFrame({"a": [0.12345, float("nan")], "b": ["x|y", None]})

    def missing(*args, **kwargs):
        raise ImportError("tabulate")

    monkeypatch.setattr(pd.DataFrame, "to_markdown", missing)
    assert files.markdown_table(frame).splitlines() == [
        "| a | b |",
        "|---|---|",
        "| 0.123 | x\\|y |",
        "|  |  |",
    ]


def test_atomic_write_gives_files_the_umask_permissions_not_owner_only(tmp_path):
    import stat

    import torch
    from safetensors.torch import save_file

    from workbench import files

    path = files.atomic_write(tmp_path / "v.safetensors", lambda tmp: save_file({"a": torch.zeros(2)}, tmp))
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~files._UMASK
    assert stat.S_IMODE(path.stat().st_mode) & 0o044  # others can read a shared vector (umask 022 here)


def test_a_full_disk_leaves_the_old_file_and_no_temporary_and_says_so_in_one_line(tmp_path, monkeypatch):

    target = files.atomic_text(tmp_path / "table.csv", "old\n")

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    for site in ("fsync", "replace"):  # the data reaching the disk, the rename
        with monkeypatch.context() as patch:
            patch.setattr(os, site, full)
            with pytest.raises(OutputPathError, match="disk is full") as caught:
                files.atomic_text(target, "new, longer content\n" * 100, "table")
        assert "\n" not in str(caught.value) and target.read_text() == "old\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_create_once_lets_exactly_one_of_many_racing_writers_win(tmp_path):
    target = tmp_path / "grid.json"
    with ThreadPoolExecutor(8) as pool:
        won = list(
            pool.map(lambda i: files.create_once(target, lambda tmp: tmp.write_text(str(i))), range(16))
        )
    assert won.count(True) == 1 and target.read_text() == str(won.index(True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.json"]


def test_file_lock_serialises_a_read_modify_write_across_threads(tmp_path):
    counter = tmp_path / "n.txt"
    files.atomic_text(counter, "0")

    def bump(_):
        with files.file_lock(tmp_path / "n.lock"):
            value = int(counter.read_text())
            files.atomic_text(counter, str(value + 1))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(bump, range(20)))
    assert counter.read_text() == "20"
