"""Presets: built on first use, cached as safetensors + JSON with provenance, refused when they do not fit."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from workbench import frontier, presets
from workbench.cli import app
from workbench.datasets import load as load_dataset
from workbench.errors import InvalidArgumentError, ShapeMismatchError
from workbench.frontier import Recipe
from workbench.presets import Preset

RECIPE = Recipe("last", (1, 2), strength=0.2, positions="response", decay_tokens=4)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tiny_preset(monkeypatch):
    preset = Preset("tiny_bullets", "bullets", {"tiny-llama": RECIPE}, n_train=6, chosen_by="a test")
    monkeypatch.setitem(presets.PRESETS, preset.name, preset)
    return preset


def test_bundled_presets_have_a_recipe_per_model():
    assert {"json", "italian"} <= set(presets.names())
    for name in presets.names():
        preset = presets.get(name)
        assert preset.behaviour in frontier.BEHAVIOURS and preset.recipes
        assert all(r.steered and r.prompt == "plain" for r in preset.recipes.values())


def test_unknown_preset_and_unfit_model_are_refused_in_one_line(tiny, tiny_preset):
    with pytest.raises(InvalidArgumentError, match="unknown preset 'jsn': use one of") as info:
        presets.load(tiny, "jsn")
    assert "\n" not in str(info.value)
    with pytest.raises(ShapeMismatchError, match="was chosen for smollm2-135m-instruct"):
        presets.load(tiny, "json")
    deep = Preset("deep", "bullets", {"tiny-llama": Recipe("last", (9,), strength=0.1)})
    with pytest.raises(ShapeMismatchError, match="steers layer 9 but 'tiny-llama' has 4 layers"):
        deep.recipe(tiny)


def test_cache_round_trip_and_provenance(tiny, tiny_preset, monkeypatch):
    first = presets.load(tiny, "tiny_bullets")
    assert [(iv.layer, iv.positions, iv.decay_tokens) for iv in first] == [
        (1, "response", 4),
        (2, "response", 4),
    ]
    target = presets.path(tiny, "tiny_bullets")
    assert target.suffix == ".safetensors" and target.parent == Path(presets.cache_dir()) / "presets"
    record = json.loads(target.with_suffix(".json").read_text())
    train_hash = load_dataset("bullet_lists", "train").head(6).hash
    assert record["weights_hash"] == tiny.weights_hash and record["dataset_hash"] == train_hash
    assert Recipe.from_json(record["recipe"]) == RECIPE and record["chosen_by"] == "a test"
    assert record["n_layers"] == tiny.n_layers and record["split"] == "train"

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached preset should have been read back")

    monkeypatch.setattr(presets, "build_vectors", no_rebuild)
    second = presets.load(tiny, "tiny_bullets")
    assert [iv.vector for iv in second] == [iv.vector for iv in first]
    assert [iv.amount() for iv in second] == pytest.approx([iv.amount() for iv in first])
    assert presets.provenance(tiny, "tiny_bullets") == record


def test_damaged_or_outdated_cache_is_rebuilt(tiny, tiny_preset, monkeypatch):
    presets.load(tiny, "tiny_bullets")
    target = presets.path(tiny, "tiny_bullets")
    data = bytearray(target.read_bytes())
    data[-8:] = b"\x00" * 8
    target.write_bytes(bytes(data))
    calls = []
    real = presets.build_vectors
    monkeypatch.setattr(presets, "build_vectors", lambda *a, **k: calls.append(1) or real(*a, **k))
    presets.load(tiny, "tiny_bullets")
    assert calls == [1]
    changed = Preset(
        "tiny_bullets", "bullets", {"tiny-llama": Recipe("last", (1, 2), strength=0.4)}, n_train=6
    )
    monkeypatch.setitem(presets.PRESETS, "tiny_bullets", changed)
    (iv, _) = presets.load(tiny, "tiny_bullets")
    assert calls == [1, 1] and iv.coef == pytest.approx(0.4 * iv.vector.stats[1].resid_norm)


def test_steer_command_takes_a_preset(tiny_dir, monkeypatch):
    runner = CliRunner()
    bad = runner.invoke(app, ["steer", "Hello", "--preset", "nope", "--model", tiny_dir])
    assert bad.exit_code == 2 and "unknown preset 'nope'" in bad.output
    both = runner.invoke(
        app, ["steer", "Hello", "--preset", "json", "--vector", "v.safetensors", "--layer", "1"]
    )
    assert both.exit_code == 2 and "either --preset NAME or both --vector" in both.output
    unfit = runner.invoke(app, ["steer", "Hello", "--preset", "json", "--model", tiny_dir])
    assert unfit.exit_code == 2 and "was chosen for" in unfit.output
    name = Path(tiny_dir).name
    monkeypatch.setitem(presets.PRESETS, "tiny", Preset("tiny", "bullets", {name: RECIPE}, n_train=6))
    ok = runner.invoke(
        app, ["steer", "Hello", "--preset", "tiny", "--model", tiny_dir, "--max-new-tokens", "3"]
    )
    assert ok.exit_code == 0, ok.output
    answer = json.loads(ok.output[ok.output.index("{") :])
    assert answer["preset"] == "tiny" and set(answer) == {"prompt", "unsteered", "steered", "preset"}


def test_presets_study_runs_each_preset_against_the_baselines(writer, tmp_path, monkeypatch):
    from workbench.studies.common import Scale
    from workbench.studies.frontier import presets_study

    strong = Recipe("mean", (1, 2), strength=3.0)
    monkeypatch.setitem(
        presets.PRESETS, "tiny_bullets", Preset("tiny_bullets", "bullets", {"tiny-llama": strong})
    )
    scale = Scale(n_train=6, n_validation=20, n_test=3, max_new_tokens=5, layers=None, batch_size=8)
    result = presets_study(writer, scale, tmp_path, base_model=False, quick=False)
    table = result.table
    assert table["setting"].tolist() == [
        "unsteered",
        "instruction in prompt",
        "steering",
        "steering + instruction",
    ]
    assert set(table["behaviour"]) == {"bullets"} and (table["n"] == 3).all()
    assert table.loc[2, "recipe"] == strong.name
    assert table.loc[3, "recipe"] == f"{strong.name} +instruction"
    # The steered rows differ from the unsteered ones: the preset's vector was really applied.
    rows = result.rows.set_index(["setting", "id"])["response"]
    assert (rows["steering"] != rows["unsteered"]).any()
    assert all(p.exists() for p in result.figures) and "tiny-llama / preset tiny_bullets" in result.notes[0]
    assert presets.path(writer, "tiny_bullets").exists()  # the preset's vector was built and cached


def test_frontier_tables_name_their_metrics_and_keep_a_json_start_apart():
    from workbench.studies.frontier import _table

    rows = pd.DataFrame(
        {
            "setting": ["steering"] * 2,
            "recipe": ["r"] * 2,
            "response": ['{"a": {"a": {"a":', '{"a": 1}'],
            "on_target": [False, True],
            "clean": [False, True],
            "degenerate": [False, False],
            "perplexity": [3.0, 4.0],
            "follows_ifeval": [False, True],
        }
    )
    json_table = _table("m", frontier.BEHAVIOURS["json"], rows).iloc[0]
    assert json_table["target"] == "json_format_strict" and json_table["target_rate"] == 0.5
    assert json_table["starts_json"] == 1.0  # the cut-off loop starts a JSON object; it is not compliance
    bullets = _table("m", frontier.BEHAVIOURS["bullets"], rows)
    assert bullets.loc[0, "target"] == "ifeval" and "starts_json" not in bullets


def test_cached_test_rows_are_rescored_by_the_current_scorer(writer, tmp_path, monkeypatch):
    """The study caches raw answers only: a scorer change shows on the next run without generating again."""
    from workbench.evaluation import fluency
    from workbench.studies.common import Scale
    from workbench.studies.frontier import presets_study

    monkeypatch.setitem(
        presets.PRESETS, "tiny_bullets", Preset("tiny_bullets", "bullets", {"tiny-llama": RECIPE}, n_train=6)
    )
    scale = Scale(n_train=6, n_validation=20, n_test=3, max_new_tokens=6, layers=None, batch_size=8)
    first = presets_study(writer, scale, tmp_path, base_model=False, quick=False)
    parts = {p: p.stat().st_mtime_ns for p in (tmp_path / "presets").glob("*.parquet")}
    assert parts and (first.table["degeneration"] < 1).any()
    monkeypatch.setattr(fluency, "MAX_NGRAM_REPEAT_RATE", -1.0)  # every answer with a word now loops
    second = presets_study(writer, scale, tmp_path, base_model=False, quick=False)
    assert {p: p.stat().st_mtime_ns for p in parts} == parts  # nothing was generated or rewritten
    assert second.rows["response"].tolist() == first.rows["response"].tolist()
    assert (second.table["degeneration"] == 1).all()
