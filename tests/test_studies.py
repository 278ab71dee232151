"""The instruction-following studies, the report and the study/report/pipeline commands, on the tiny model."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from workbench.cli import app
from workbench.errors import InvalidArgumentError
from workbench.studies import instructions, report
from workbench.studies.common import Scale, Size
from workbench.studies.instructions import FORMATS, SETTINGS
from workbench.studies.render import publish

MICRO = Scale(n_train=6, n_validation=4, n_test=4, max_new_tokens=6, layers=(1, 2), batch_size=32)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "studies_cache"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One run directory for the four study tests, so they share validation sweeps as the report does."""
    return tmp_path_factory.mktemp("studies")


def _written(result, run_dir):
    folder = result.write(run_dir)
    assert (folder / "table.parquet").exists() and (folder / "rows.csv").exists()
    assert result.figures and all(path.exists() for path in result.figures)
    assert {p.suffix for p in result.figures} == {".png", ".svg"}
    return folder


def test_candidate_layers_sit_at_the_same_depths_of_any_model():
    assert Size.full().candidate_layers(30) == [6, 10, 14, 17, 21]  # SmolLM2-135M
    assert Size.full().candidate_layers(18) == [3, 6, 8, 10, 12]  # Gemma 3 270M
    assert Size.quick().candidate_layers(30) == [9, 16]
    assert Size.quick().candidate_layers(2) == [0, 1]  # distinct blocks only
    assert MICRO.candidate_layers(30) == [1, 2]  # explicit layers win


def test_quick_sizes_are_told_from_full_ones():
    assert Size.quick().is_quick and MICRO.is_quick
    assert not Size.full().is_quick and not Size.frontier().is_quick
    assert Size.named("quick") == Size.quick() and Size.named("full") == Size.full()
    assert Scale is Size  # the former name


def test_a_size_capped_at_another_keeps_the_smaller_counts():
    capped = Size.full().at_most(MICRO)
    assert (capped.n_train, capped.n_validation, capped.batch_size) == (6, 4, 32)
    assert capped.layers is None and capped.depths == Size.full().depths  # only counts are capped


def test_format_study_table(tiny, run_dir):
    result = instructions.format_study(tiny, MICRO, run_dir)
    table = result.table
    degeneration = [f"degeneration:{s}" for s in SETTINGS]
    assert list(table.columns) == [
        "instruction",
        "config",
        "layer",
        "mode",
        "coef",
        *SETTINGS,
        *degeneration,
        "n",
    ]
    assert list(table["instruction"]) == [*FORMATS, "average"]
    assert table[[*SETTINGS, *degeneration]].apply(lambda c: c.between(0, 1)).all().all()
    assert (table["n"].iloc[:-1] == MICRO.n_test).all()
    assert len(result.rows) == len(FORMATS) * len(SETTINGS) * MICRO.n_test
    assert set(result.rows["setting"]) == set(SETTINGS)
    # with-instruction rows carry the instruction, no-instruction rows do not
    rows = result.rows
    assert all(
        p != q
        for p, q in zip(
            rows.loc[rows["setting"] == "with_instruction", "prompt"],
            rows.loc[rows["setting"] == "no_instruction", "prompt"],
            strict=True,
        )
    )
    assert len(result.notes) == len(FORMATS) + 1
    folder = _written(result, run_dir)
    assert (folder / "choices.csv").exists() and (folder / "sweep_json_format.csv").exists()


def test_length_study_table(tiny, run_dir):
    coefs = (-2.0, 0.0, 2.0)
    result = instructions.length_study(tiny, MICRO, run_dir, coefs=coefs)
    table = result.table
    assert list(table.columns) == [
        "vector",
        "layer",
        "coef",
        "words",
        "words_sd",
        "sentences",
        "sentences_sd",
        "degeneration",
        "n",
    ]
    assert list(table["vector"]) == ["length_extremely_concise"] * 3 + ["length_verbose"] * 3
    assert list(table["coef"]) == list(coefs) * 2
    assert (table["n"] == MICRO.n_test).all()
    assert table["layer"].isin(MICRO.layers).all()
    at_most = pd.read_csv(_written(result, run_dir) / "sentences_at_most.csv")
    assert list(at_most["setting"]) == [
        "no instruction",
        "no instruction + concise steering",
        "instruction",
        "instruction + concise steering",
    ]
    assert at_most["compliance"].between(0, 1).all()


def test_composition_study_table(tiny, run_dir):
    result = instructions.composition_study(
        tiny, MICRO, run_dir, format_name="title", length_name="one_sentence"
    )
    table = result.table
    assert list(table.columns) == ["setting", "format", "length", "both", "degeneration", "n"]
    settings = list(table["setting"])
    assert settings[:4] == [
        "no instruction",
        "both instructions in the prompt",
        "title vector",
        "one_sentence vector",
    ]
    assert "both vectors (own layers)" in settings
    assert any(s.startswith("sum of vectors") for s in settings)
    assert (table["both"] <= table[["format", "length"]].min(axis=1) + 1e-9).all()
    assert (table["n"] == MICRO.n_test).all()
    _written(result, run_dir)


def test_ablation_study_table(tiny, run_dir):
    result = instructions.ablation_study(tiny, MICRO, run_dir, names=("bullet_lists",), seeds=(0, 1, 2))
    table = result.table
    spread = ["random_layer_mean", "random_layer_std", "random_all_mean", "random_all_std"]
    assert list(table.columns) == [
        "instruction",
        "layer",
        "no_instruction",
        "with_instruction",
        "ablated_layer",
        "ablated_all",
        *spread,
        "degeneration_with_instruction",
        "degeneration_ablated_layer",
        "degeneration_ablated_all",
        *(f"degeneration_{c}" for c in spread),
        "n",
    ]
    assert list(table["instruction"]) == ["bullet_lists"]
    rows = result.rows
    assert sorted(rows.loc[rows["setting"] == "random_all", "seed"].unique()) == [0, 1, 2]
    # the control's degeneration is the mean over seeds of each seed's rate
    random = rows[rows["setting"] == "random_layer"]
    per_seed = random.groupby("seed")["degenerate"].mean()
    assert table.loc[0, "degeneration_random_layer_mean"] == pytest.approx(per_seed.mean())
    assert table.loc[0, "degeneration_random_layer_std"] == pytest.approx(per_seed.std(ddof=1), nan_ok=True)
    # ablation at every layer names every block
    every = rows.loc[rows["setting"] == "ablated_all", "interventions"].iloc[0]
    assert every.count("ablate@") == tiny.n_layers
    _written(result, run_dir)


def test_random_control_directions_are_unit_and_differ_by_seed(tiny):
    from workbench.studies.ablation import random_unit_directions

    first, second = random_unit_directions(tiny, 0), random_unit_directions(tiny, 1)
    norms = first.directions.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)
    assert all(s.diff_norm == pytest.approx(1.0) for s in first.stats.values())
    assert not torch.allclose(first.directions, second.directions)


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


COMMANDS = [["report"], ["study"], ["collect"], ["layers"], ["sweep"], ["models"], ["steer"], ["bench"]]
COMMANDS += [["vector", sub] for sub in ("build", "show", "export")]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_cli_help(command):
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["study", "nonsense"],
        ["sweep", "json_format", "--layers", "a,b"],
        ["sweep", "json_format", "--layers", "1", "--coefs", ""],
        ["collect", "json_format", "--position", "middle"],
    ],
    ids=lambda a: " ".join(a),
)
def test_cli_refuses_bad_arguments_before_loading(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr


def _manifest_of(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model"]["weights_hash"] and manifest["versions"]["torch"]
    assert manifest["started"] <= manifest["finished"] and manifest["timings_seconds"]
    return manifest


def test_cli_collect_sweep_and_layers_write_run_directories(tiny_dir, tmp_path):
    from workbench.activations import Activations

    runner = CliRunner()
    acts = tmp_path / "collect"
    args = ["collect", "json_format", "--split", "validation", "--model", tiny_dir, "--out", str(acts)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    pos, neg = (Activations.load(acts / f"{role}.safetensors") for role in ("positive", "negative"))
    assert pos.tensor.shape == neg.tensor.shape and pos.layers == (0, 1, 2, 3)
    assert pos.settings["dataset"] == "json_format"
    assert _manifest_of(acts)["configuration"]["split"] == "validation"

    run = tmp_path / "sweep"
    args = [
        "sweep",
        "json_format",
        "--layers",
        "1,2",
        "--coefs=-1,1",
        "--n-train",
        "4",
        "--n-validation",
        "2",
    ]
    result = runner.invoke(app, [*args, "--max-new-tokens", "3", "--model", tiny_dir, "--out", str(run)])
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(run / "summary.csv")
    assert list(summary["config"]) == ["none", "add@1x-1", "add@1x1", "add@2x-1", "add@2x1"]
    assert (run / "sweep.png").exists() and (run / "vector.safetensors").exists()
    assert json.loads((run / "choice.json").read_text())["config"] in set(summary["config"])
    assert _manifest_of(run)["configuration"]["coefs"] == [-1.0, 1.0]

    run = tmp_path / "layers"
    result = runner.invoke(
        app, ["layers", "json_format", "--quick", "--coefs", "2", "--model", tiny_dir, "--out", str(run)]
    )
    assert result.exit_code == 0, result.output
    layers = pd.read_csv(run / "layers.csv")
    quick_layers = len(Size.quick().depths)  # --quick sweeps as many layers as a quick study has candidates
    assert list(layers["layer"]) == [0, 1, 2, 3] and layers["swept"].sum() == quick_layers
    assert (run / "layers.png").exists() and (run / "signals.csv").exists()
    assert _manifest_of(run)["configuration"]["top_k"] == quick_layers
