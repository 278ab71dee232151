"""The analyses/ study scripts, run in-process at the quick scale on the tiny model loaded from disk."""

from __future__ import annotations

import runpy
from pathlib import Path

import pandas as pd
import pytest

ANALYSES = Path(__file__).resolve().parents[1] / "analyses"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "analyses_cache"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One run directory, so the composition and ablation scripts reuse the format script's sweeps."""
    return tmp_path_factory.mktemp("analyses")


def _run(script: str, *argv: str) -> None:
    runpy.run_path(str(ANALYSES / script), run_name="analysis")["main"](list(argv))


def _outputs(folder: Path) -> pd.DataFrame:
    assert (folder / "rows.parquet").exists() and (folder / "rows.csv").exists()
    figures = {p.suffix for p in folder.iterdir() if p.suffix in (".png", ".svg")}
    assert figures == {".png", ".svg"}
    table = pd.read_parquet(folder / "table.parquet")
    csv = pd.read_csv(folder / "table.csv")
    assert list(csv.columns) == list(table.columns) and len(csv) == len(table)
    return table


@pytest.mark.parametrize(
    ("script", "argv", "folder", "column", "expected"),
    [
        (
            "format_instructions.py",
            ["--instructions", "no_comma", "title"],
            "format",
            "instruction",
            ["no_comma", "title", "average"],
        ),
        ("length_steering.py", ["--coefs", "-1", "0", "1"], "length", "coef", [-1.0, 0.0, 1.0] * 2),
        (
            "ablation.py",
            ["--instructions", "one_sentence", "--seeds", "3", "4"],
            "ablation",
            "instruction",
            ["one_sentence"],
        ),
        (
            "composition.py",
            ["--format", "title", "--length", "one_sentence"],
            "composition",
            "setting",
            {"no instruction", "title vector", "one_sentence vector"},
        ),
        ("italian_steering.py", [], "italian", "setting", {"English prompt", "Italian prompt"}),
    ],
)
def test_script_writes_its_study_with_the_options_given(
    tiny_dir, run_dir, capsys, script, argv, folder, column, expected
):
    _run(script, "--quick", "--model", tiny_dir, "--out", str(run_dir), *argv)
    table = _outputs(run_dir / folder)
    if isinstance(expected, set):  # some of the rows the options name
        assert expected <= set(table[column])
    else:  # exactly the rows the options name
        assert list(table[column]) == expected
    printed = capsys.readouterr().out
    assert f"outputs in {run_dir / folder}" in printed and f"| {table.iloc[0, 0]} |" in printed
