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
