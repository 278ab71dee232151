"""The report: which finished study tables may be reused; a micro report on the tiny model, its rerun and
its published pages."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from workbench.errors import InvalidArgumentError
from workbench.studies import report
from workbench.studies.common import Scale
from workbench.studies.render import publish


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


def test_new_presets_make_the_studies_that_run_them_stale(tmp_path, monkeypatch):
    from workbench import presets

    configuration = {"model": "m", "size": {"n_test": 3}}
    before = {name: report._study_key(name, configuration) for name in ("presets", "italian", "format")}
    changed = tmp_path / "presets.json"
    changed.write_text(presets.BUNDLED.read_text() + "\n")
    monkeypatch.setattr(presets, "BUNDLED", changed)
    after = {name: report._study_key(name, configuration) for name in before}
    assert after["presets"] != before["presets"] and after["italian"] != before["italian"]
    assert after["format"] == before["format"]


def test_a_large_model_gets_the_large_report(tiny, tmp_path, monkeypatch):
    """From a billion parameters: three formats, Italian and a reduced frontier, at Size.large."""
    from workbench.studies import frontier

    assert report.report_kind(False, tiny) == "full" and report.report_kind(True, tiny) == "quick"
    monkeypatch.setattr(report, "LARGE_MODEL_PARAMS", tiny.n_params)
    assert report.report_kind(False, tiny) == "large"
    seen = {}

    def fake(name):
        def run(job):
            seen[name] = job
            return f"not run: {name} recorded"

        return run

    monkeypatch.setattr(report, "RUNNERS", {name: fake(name) for name in report.RUNNERS})
    report.run_report(tiny, out_dir=tmp_path, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert list(manifest["studies"]) == list(report.LARGE_STUDIES) == list(seen)
    assert manifest["configuration"]["kind"] == "large" and seen["format"].size == report.Size.large()

    calls = []
    monkeypatch.setattr(frontier, "frontier_study", lambda *a, **k: calls.append(k) or "ran")
    assert report._frontier_runner("frontier")(seen["frontier"]) == "ran"
    (kwargs,) = calls
    assert kwargs["behaviours"] == report.LARGE_BEHAVIOURS and kwargs["base_model"] is False
    assert kwargs["plan"] == frontier.Plan.reduced()
    seen.clear()
    report.run_report(tiny, out_dir=tmp_path / "full", kind="full", progress=False)
    assert list(seen) == list(report.STUDIES)  # the kind asked for wins
    with pytest.raises(InvalidArgumentError, match="unknown size 'huge'"):
        report.run_report("no-such-model", out_dir=tmp_path / "x", kind="huge")  # type: ignore[arg-type]


MICRO = Scale(n_train=6, n_validation=4, n_test=4, max_new_tokens=6, layers=(1, 2), batch_size=32)


@pytest.fixture
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "studies_cache"))


@pytest.mark.usefixtures("_cache")
def test_report_writes_everything_and_rerun_skips(tiny, tmp_path, monkeypatch):
    from workbench.studies import italian

    monkeypatch.setattr(italian, "base_model_study", lambda scale, out_dir: None)
    out = tmp_path / "report"
    path = report.run_report(tiny, quick=True, out_dir=out, size=MICRO, progress=False)
    assert path == out / "report.md"
    manifest = json.loads((out / "manifest.json").read_text())
    studies = manifest["studies"]
    # No preset was chosen for the tiny model: the presets study says how to search for one.
    assert {n: s["status"] for n, s in studies.items()} == {
        **{n: "done" for n in report.STUDIES if n not in ("base_model", "presets")},
        "base_model": "unavailable",
        "presets": "unavailable",
    }
    assert "workbench study frontier --model tiny-llama" in studies["presets"]["notes"][0]
    assert manifest["model"]["weights_hash"] == tiny.weights_hash
    assert manifest["configuration"]["size"]["n_test"] == MICRO.n_test
    assert manifest["versions"]["torch"] and manifest["seeds"]["ablation_random_directions"]
    assert all(isinstance(s["seconds"], float) for s in studies.values())
    for name in ("format", "length", "composition", "ablation", "italian"):
        for file in ("table.parquet", "table.csv", "rows.parquet", "rows.csv"):
            assert (out / name / file).exists(), (name, file)
    md = path.read_text()
    html = (out / "report.html").read_text()
    for figure in ("format/compliance.png", "length/length_curve.png", "ablation/ablation.png"):
        assert f"]({figure})" in md and f'src="{figure}"' in html
    assert "| instruction |" in md and "<table" in html and "average" in md
    assert "not installed" in md

    # A rerun with the same configuration reuses every study: nothing is generated.
    def refuse(*args, **kwargs):
        raise AssertionError("the rerun generated text")

    monkeypatch.setattr(tiny.hf_model, "generate", refuse)
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/table.parquet")}
    report.run_report(tiny, quick=True, out_dir=out, size=MICRO, progress=False)
    assert before == {p: p.stat().st_mtime_ns for p in out.glob("*/table.parquet")}
    assert "| instruction |" in (out / "report.md").read_text()

    # Publishing writes one page and one CSV per finished study, and an index linking them.
    results = tmp_path / "results"
    publish(out, results, report.STUDIES)
    finished = [n for n, s in studies.items() if s["status"] == "done"]
    assert sorted(p.name for p in results.glob("*.md")) == sorted(
        [*(f"{n}.md" for n in finished), "index.md"]
    )
    page = (results / "format.md").read_text()
    assert page.startswith("# Format instructions") and "| instruction |" in page and "tiny-llama" in page
    pd.testing.assert_frame_equal(
        pd.read_csv(results / "format.csv"), pd.read_csv(out / "format" / "table.csv"), check_dtype=False
    )
    index = (results / "index.md").read_text()
    assert all(f"({n}.md)" in index for n in finished) and "(presets.md)" not in index
    with pytest.raises(InvalidArgumentError, match=r"no manifest\.json"):
        publish(tmp_path / "nothing", results, report.STUDIES)
