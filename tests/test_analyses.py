"""The analyses/ scripts (the study runner, model sizes), run in-process at the quick size on the tiny model
loaded from disk."""

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
    ("study", "options", "folder", "column", "expected"),
    [
        ("format", ["names=no_comma,title"], "format", "instruction", ["no_comma", "title", "average"]),
        ("length", ["coefs=-1,0,1"], "length", "coef", [-1.0, 0.0, 1.0] * 2),
        ("ablation", ["names=one_sentence", "seeds=3,4"], "ablation", "instruction", ["one_sentence"]),
        (
            "composition",
            ["format_name=title", "length_name=one_sentence"],
            "composition",
            "setting",
            {"no instruction", "title vector", "one_sentence vector"},
        ),
        ("italian", [], "italian", "setting", {"English prompt", "Italian prompt"}),
    ],
)
def test_the_study_runner_writes_a_study_with_the_options_given(
    tiny_dir, run_dir, capsys, study, options, folder, column, expected
):
    knobs = [arg for option in options for arg in ("--set", option)]
    _run("study.py", study, "--size", "quick", "--model", tiny_dir, "--out", str(run_dir), *knobs)
    table = _outputs(run_dir / folder)
    if isinstance(expected, set):  # some of the rows the options name
        assert expected <= set(table[column])
    else:  # exactly the rows the options name
        assert list(table[column]) == expected
    printed = capsys.readouterr().out
    assert f"{run_dir / 'report.md'}" in printed and f"| {table.iloc[0, 0]} |" in printed


def test_the_study_runner_lists_every_study_with_its_knobs(capsys):
    _run("study.py", "--list")
    printed = capsys.readouterr().out
    assert "format: Format instructions" in printed and "--set names=" in printed
    assert "baselines:" in printed and "on request only" in printed


def test_model_sizes_puts_large_reports_side_by_side(tiny, tmp_path):
    from workbench.size import Size
    from workbench.studies.report import run_report

    size = Size(4, 2, 2, 4, layers=(0, 1), batch_size=32, n_mc=4, name="large")
    runs = [tmp_path / "a", tmp_path / "b"]
    run_report(tiny, out_dir=runs[0], size=size, progress=False)
    run_report(tiny, out_dir=runs[1], size=size, studies=["format"], progress=False)
    _run("model_sizes.py", *map(str, runs), "--out", str(tmp_path / "sizes"))
    table = pd.read_csv(tmp_path / "sizes.csv").set_index("measure")
    assert len(table.columns) == 2 and table.columns[1].endswith("(b)")  # the same model twice: told apart
    assert table[table.columns[1]].isna().sum() > 0  # the second run has no Italian or frontier study
    page = (tmp_path / "sizes.md").read_text()
    assert "| measure |" in page and "tiny-llama" in page
    for measure in (
        "format json_format: steering",
        "format one_sentence: instruction",
        "Italian, real Italian: Italian prompt",
        "multiple choice by generation: en",
        "multiple choice by loglik: en",
        "frontier json, clean rate: steering",
    ):
        assert measure in table.index, measure
    assert table.loc["format no_comma: no instruction"].astype(float).between(0, 1).all()
