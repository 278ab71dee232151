"""The report's bookkeeping: which finished study tables may be reused."""

from __future__ import annotations

import pandas as pd


def test_a_new_scorer_version_makes_finished_report_studies_stale(tmp_path, monkeypatch):
    """A reused report table holds scores: it is reused only under the scorer version that wrote it."""
    from workbench import evaluation
    from workbench.studies import report

    configuration = {"model": "m", "size": {"n_test": 3}}
    folder = tmp_path / "italian"
    folder.mkdir()
    pd.DataFrame({"setting": ["a"], "degenerate": [0.5]}).to_parquet(folder / "table.parquet")
    studies = {"italian": {"key": report._study_key("italian", configuration), "status": "done"}}
    assert list(report._reusable_tables(tmp_path, studies, configuration)) == ["italian"]
    monkeypatch.setattr(evaluation, "SCORER_VERSION", evaluation.SCORER_VERSION + 1)
    assert report._reusable_tables(tmp_path, studies, configuration) == {}
    assert studies["italian"]["stale"] is True
