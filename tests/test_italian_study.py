"""The Italian study end to end on the tiny model (micro scale): tables, figures, gained/lost counts."""

from __future__ import annotations

import pandas as pd

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


def test_italian_sweeps_are_rescored_by_the_current_rule(tiny, tmp_path, monkeypatch):
    """The validation sweeps' cached parts hold raw answers: a changed rule shows without generating again."""
    from workbench.evaluation import fluency

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    scale = Scale(n_train=4, n_validation=3, n_test=2, max_new_tokens=5, layers=(1,), batch_size=16, n_mc=2)
    italian_study(tiny, scale, tmp_path)
    parts = {p: p.stat().st_mtime_ns for p in (tmp_path / "italian").glob("sweep_*/**/*.parquet")}
    monkeypatch.setattr(fluency, "MAX_NGRAM_REPEAT_RATE", -1.0)  # every answer with a word now loops
    italian_study(tiny, scale, tmp_path)
    assert parts and {p: p.stat().st_mtime_ns for p in parts} == parts
    for variant in ("it", "en_answer_it"):
        sweep = pd.read_csv(tmp_path / "italian" / f"sweep_{variant}.csv")
        assert (sweep["degeneration"] == 1).all()


def test_a_quick_study_builds_the_preset_from_its_own_few_pairs(tiny, tmp_path, monkeypatch):
    from workbench import presets
    from workbench.presets import Preset
    from workbench.recipes import Recipe

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    preset = Preset("italian", "italian", {"tiny-llama": Recipe("last", (1,), strength=0.2)}, n_train=48)
    monkeypatch.setitem(presets.PRESETS, "italian", preset)
    scale = Scale(n_train=3, n_validation=2, n_test=2, max_new_tokens=3, layers=(1,), batch_size=16, n_mc=2)
    result = italian_study(tiny, scale, tmp_path)
    assert "English prompt + steering (preset)" in set(result.table["setting"])
    assert presets.path(tiny, "italian", 3).exists() and not presets.path(tiny, "italian").exists()
    assert presets.provenance(tiny, "italian", n_train=3)["n_train"] == 3
    assert any("(3 train pairs)" in note for note in result.notes)
