"""Run-folder helpers: the markdown table without tabulate."""

from __future__ import annotations

import pandas as pd

from workbench.studies import report


def test_markdown_table_without_tabulate(monkeypatch):
    frame = pd.DataFrame({"a": [0.12345, float("nan")], "b": ["x|y", None]})

    def missing(*args, **kwargs):
        raise ImportError("tabulate")

    monkeypatch.setattr(pd.DataFrame, "to_markdown", missing)
    assert report.markdown_table(frame).splitlines() == [
        "| a | b |",
        "|---|---|",
        "| 0.123 | x\\|y |",
        "|  |  |",
    ]


def test_atomic_write_gives_files_the_umask_permissions_not_owner_only(tmp_path):
    import stat

    import torch
    from safetensors.torch import save_file

    from workbench import runs

    path = runs.atomic_write(tmp_path / "v.safetensors", lambda tmp: save_file({"a": torch.zeros(2)}, tmp))
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~runs._UMASK
    assert stat.S_IMODE(path.stat().st_mode) & 0o044  # others can read a shared vector (umask 022 here)
