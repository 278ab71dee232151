"""The report: which finished study tables may be reused; the studies and sizes a run size gets; a micro
report on the tiny model, its rerun and its published pages; a study added as one file outside the package."""

from __future__ import annotations

import dataclasses
import json
import textwrap

import pandas as pd
import pytest
from typer.testing import CliRunner

from workbench.errors import InvalidArgumentError
from workbench.size import Size
from workbench.studies import registry, report
from workbench.studies.render import publish


def test_a_new_scorer_version_makes_finished_report_studies_stale(tiny, tmp_path, monkeypatch):
    """A reused report table holds scores: it is reused only under the scorer version that wrote it."""
    from workbench import evaluation

    italian = registry.get("italian")
    folder = tmp_path / "italian"
    folder.mkdir()
    pd.DataFrame({"setting": ["a"], "degenerate": [0.5]}).to_parquet(folder / "table.parquet")
    key = report._study_key(italian, tiny, Size.quick(), {})
    record = {"studies": {"italian": {"key": key, "status": "done"}}}
    assert list(report._earlier(tmp_path, record, {"italian": key})) == ["italian"]
    monkeypatch.setattr(evaluation, "SCORER_VERSION", evaluation.SCORER_VERSION + 1)
    key = report._study_key(italian, tiny, Size.quick(), {})
    assert report._earlier(tmp_path, record, {"italian": key}) == {}
    assert record["studies"]["italian"]["stale"] is True


def test_a_study_key_covers_presets_knobs_size_and_model(tiny, tmp_path, monkeypatch):
    from workbench import presets

    def keys(size=Size.quick(), options=None, model=tiny):
        return {
            n: report._study_key(registry.get(n), model, size, options or {})
            for n in ("presets", "italian", "format", "base_model")
        }

    before = keys()
    changed = tmp_path / "presets.json"
    changed.write_text(presets.BUNDLED.read_text() + "\n")
    monkeypatch.setattr(presets, "BUNDLED", changed)
    after = keys()
    assert after["presets"] != before["presets"] and after["italian"] != before["italian"]
    assert after["format"] == before["format"]
    assert keys(options={"names": ("no_comma",)})["format"] != after["format"]
    assert keys(size=Size.full())["format"] != after["format"]
    # The base-model study loads its own model: the run's model is not part of its key.
    other = dataclasses.replace(tiny, weights_hash="0" * 64)
    assert (
        keys(model=other)["base_model"] == after["base_model"]
        and keys(model=other)["format"] != after["format"]
    )


def _recording(seen: dict):
    """Every declared study with its run replaced by one that records how it was called."""
    studies = {}
    for name, study in registry.all_studies().items():

        def run(model, size, out, *, progress=False, _name=name, **options):
            seen[_name] = (size, options)
            return f"not run: {_name} recorded"

        studies[name] = dataclasses.replace(study, run=run, model=None)
    return studies


def test_each_run_size_gets_the_studies_sizes_and_knobs_they_declare(tiny, tmp_path, monkeypatch):
    """From a billion parameters: three formats, Italian and a reduced frontier, at the large size."""
    from workbench.studies.frontier import LARGE_BEHAVIOURS
    from workbench.studies.search import Plan

    assert report.run_size_for(tiny) == "full"
    monkeypatch.setattr(report, "LARGE_MODEL_PARAMS", tiny.n_params)
    assert report.run_size_for(tiny) == "large"
    seen: dict = {}
    monkeypatch.setattr(report, "all_studies", lambda: _recording(seen))
    report.run_report(tiny, out_dir=tmp_path, progress=False)
    record = json.loads((tmp_path / "manifest.json").read_text())
    assert list(record["studies"]) == ["format", "italian", "frontier"] == list(seen)
    assert record["size"] == "large" and record["schema"] == 1 and record["executor"]["kind"] == "in process"
    assert all(size == Size.large() for size, _ in seen.values())
    assert seen["format"][1] == {"names": ("json_format", "no_comma", "one_sentence"), "json_tokens": 64}
    assert seen["frontier"][1] == {
        "behaviours": LARGE_BEHAVIOURS,
        "base_model": False,
        "plan": Plan.reduced(),
    }
    seen.clear()
    report.run_report(tiny, out_dir=tmp_path / "full", size="full", progress=False)
    assert list(seen) == ["format", "length", "composition", "ablation", "italian", "base_model", "presets"]
    assert seen["presets"][0] == Size.frontier() and seen["format"][0] == Size.full()
    with pytest.raises(InvalidArgumentError, match="unknown size 'huge'"):
        report.run_report("no-such-model", out_dir=tmp_path / "x", size="huge")
    with pytest.raises(InvalidArgumentError, match="has no option 'layer'"):
        report.run_report(
            "no-such-model", out_dir=tmp_path / "x", studies=["format"], options={"format": {"layer": 3}}
        )


MICRO = Size(
    n_train=6, n_validation=4, n_test=4, max_new_tokens=6, layers=(1, 2), batch_size=32, name="quick"
)


@pytest.fixture
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "studies_cache"))


@pytest.mark.usefixtures("_cache")
def test_report_writes_everything_and_rerun_skips(tiny, tmp_path, monkeypatch):
    declared = registry.all_studies()
    declared["base_model"] = dataclasses.replace(declared["base_model"], model="no-such-model")
    monkeypatch.setattr(report, "all_studies", lambda: declared)
    monkeypatch.setattr("workbench.studies.render.all_studies", lambda: declared)
    out = tmp_path / "report"
    path = report.run_report(tiny, out_dir=out, size=MICRO, progress=False)
    assert path == out / "report.md"
    record = json.loads((out / "manifest.json").read_text())
    studies = record["studies"]
    quick_report = [n for n, s in declared.items() if "quick" in s.report]
    # No preset was chosen for the tiny model: the presets study says how to search for one.
    assert {n: s["status"] for n, s in studies.items()} == {
        **{n: "done" for n in quick_report if n not in ("base_model", "presets")},
        "base_model": "unavailable",
        "presets": "unavailable",
    }
    assert "workbench study frontier --model tiny-llama" in studies["presets"]["notes"][0]
    assert record["model"]["weights_hash"] == tiny.weights_hash
    assert Size.from_json(studies["format"]["size"]) == MICRO and studies["ablation"]["options"] == {}
    assert record["versions"]["torch"] and record["finished"] >= record["started"]
    assert all(isinstance(s["seconds"], float) for s in studies.values())
    for name in ("format", "length", "composition", "ablation", "italian"):
        for file in ("table.parquet", "table.csv", "rows.parquet", "rows.csv"):
            assert (out / name / file).exists(), (name, file)
    md = path.read_text()
    html = (out / "report.html").read_text()
    for figure in ("format/compliance.png", "length/length_curve.png", "ablation/ablation.png"):
        assert f"]({figure})" in md and f'src="{figure}"' in html
    assert "| instruction |" in md and "<table" in html and "average" in md
    assert "does not load offline" in md

    # A rerun with the same configuration reuses every study: nothing is generated.
    def refuse(*args, **kwargs):
        raise AssertionError("the rerun generated text")

    monkeypatch.setattr(tiny.hf_model, "generate", refuse)
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/table.parquet")}
    report.run_report(tiny, out_dir=out, size=MICRO, progress=False)
    assert before == {p: p.stat().st_mtime_ns for p in out.glob("*/table.parquet")}
    assert "| instruction |" in (out / "report.md").read_text()

    # Publishing writes one page and one CSV per finished study, and an index linking them.
    results = tmp_path / "results"
    publish(out, results)
    finished = [n for n, s in studies.items() if s["status"] == "done"]
    assert sorted(p.name for p in results.glob("*.md")) == sorted(
        [*(f"{n}.md" for n in finished), "index.md"]
    )
    page = (results / "format.md").read_text()
    assert page.startswith("# Format instructions") and "| instruction |" in page and "tiny-llama" in page
    assert "Study size quick" in page
    pd.testing.assert_frame_equal(
        pd.read_csv(results / "format.csv"), pd.read_csv(out / "format" / "table.csv"), check_dtype=False
    )
    index = (results / "index.md").read_text()
    assert all(f"({n}.md)" in index for n in finished) and "(presets.md)" not in index
    with pytest.raises(InvalidArgumentError, match=r"no manifest\.json"):
        publish(tmp_path / "nothing", results)


TONE = '''
"""Tone: a study declared in one file outside the workbench."""

import pandas as pd

from workbench.generation import generate
from workbench.size import Size
from workbench.studies.registry import Study
from workbench.studies.result import StudyResult


def tone_study(model, size, out_dir, *, greeting: str = "hello", repeats: int = 2, progress: bool = False):
    answers = generate(model, [greeting] * repeats, max_new_tokens=size.max_new_tokens)
    table = pd.DataFrame({"greeting": [greeting], "answers": [len(answers)]})
    return StudyResult("tone", pd.DataFrame({"answer": answers}), table, notes=[f"{repeats} answers"])


STUDY = Study("tone", "Tone: a study from outside", tone_study, report=("quick",), order=5)
'''


@pytest.mark.usefixtures("_cache")
def test_a_study_added_as_one_file_runs_in_study_report_and_publish(tiny, tiny_dir, tmp_path, monkeypatch):
    from workbench.cli import app

    package = tmp_path / "lab" / "labstudies"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "tone.py").write_text(textwrap.dedent(TONE))
    monkeypatch.syspath_prepend(str(tmp_path / "lab"))
    monkeypatch.setenv(registry.ENV, "labstudies.tone")
    assert "tone" in registry.names() and registry.get("tone").knobs().keys() == {"greeting", "repeats"}
    assert "tone" in report._plan(tiny, "quick", None, {}).studies  # the quick report includes it

    run = tmp_path / "study"
    args = ["study", "tone", "--size", "quick", "--set", "repeats=3", "--model", tiny_dir, "--out", str(run)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| hello | 3 |" in result.output and "3 answers" in result.output
    record = json.loads((run / "manifest.json").read_text())
    assert record["command"] == "study" and record["studies"]["tone"]["options"] == {"repeats": 3}

    out = tmp_path / "report"
    report.run_report(tiny, out_dir=out, size="quick", studies=["tone"], progress=False)
    assert "## Tone: a study from outside" in (out / "report.md").read_text()
    # Changed workbench source runs the study again, keeping its folder (its own caches serve it).
    table, kept = out / "tone" / "table.parquet", out / "tone" / "cached.txt"
    kept.write_text("a cache of the study's")
    written = table.stat().st_mtime_ns
    report.run_report(tiny, out_dir=out, size="quick", studies=["tone"], progress=False)
    assert table.stat().st_mtime_ns == written
    monkeypatch.setattr(report, "source_digest", lambda *packages: "edited")
    report.run_report(tiny, out_dir=out, size="quick", studies=["tone"], progress=False)
    assert table.stat().st_mtime_ns != written and kept.exists()
    assert json.loads((out / "manifest.json").read_text())["studies"]["tone"]["code"] == "edited"
    pages = publish(out, tmp_path / "pages")
    assert (tmp_path / "pages" / "tone.md") in pages
    assert (tmp_path / "pages" / "tone.md").read_text().startswith("# Tone: a study from outside")
