"""The Italian study end to end on the tiny model (micro scale): tables, figures, gained/lost counts."""

from __future__ import annotations

from workbench.evaluation import is_degenerate
from workbench.studies.common import Scale
from workbench.studies.italian import italian_study


def test_italian_study_tables_and_figures(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    scale = Scale(n_train=4, n_validation=3, n_test=3, max_new_tokens=5, layers=(1, 2), batch_size=16, n_mc=6)
    result = italian_study(tiny, scale, tmp_path)
    table = result.table
    assert {"English prompt", "Italian prompt", "English prompt, 'answer in Italian'"} <= set(
        table["setting"]
    )
    assert table["answers_in_italian"].between(0, 1).all()
    assert {"real_italian", "degenerate"} <= set(table) and "degeneration" not in table
    rows = result.rows  # the one degeneration rule, with the perplexity under the unsteered model
    expected = [
        is_degenerate(r, perplexity=p) for r, p in zip(rows["response"], rows["perplexity"], strict=True)
    ]
    assert rows["degenerate"].tolist() == expected
    assert table["degenerate"].tolist() == rows.groupby("setting", sort=False)["degenerate"].mean().tolist()
    assert (table["n"] == 3).all()
    assert len(result.rows) == table["n"].sum()
    assert result.rows["perplexity"].dtype == float
    assert all(path.exists() for path in result.figures)
    mc = (tmp_path / "italian" / "multiple_choice.csv").read_text()
    assert "accuracy" in mc and "en" in mc
    written = result.write(tmp_path)
    assert (written / "table.parquet").exists() and (written / "rows.csv").exists()
