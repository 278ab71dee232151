"""Presets: built on first use, cached as safetensors + JSON with provenance, refused when they do not fit."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from workbench import presets
from workbench.behaviours import BEHAVIOURS
from workbench.cli import app
from workbench.datasets import load as load_dataset
from workbench.errors import ArtifactError, InvalidArgumentError, ShapeMismatchError
from workbench.presets import Preset
from workbench.recipes import Recipe
from workbench.vectors import SteeringVector

RECIPE = Recipe("last_prompt", (1, 2), coef=0.2, positions="response", decay_tokens=4, unit="residual_norm")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tiny_preset(monkeypatch):
    preset = Preset("tiny_bullets", "bullets", {"tiny-llama": RECIPE}, n_train=6, chosen_by="a test")
    monkeypatch.setitem(presets.PRESETS, preset.name, preset)
    return preset


def test_bundled_presets_have_a_recipe_per_model():
    assert {"one_sentence", "italian"} <= set(presets.names())
    for name in presets.names():
        preset = presets.get(name)
        chosen = {**preset.recipes, **preset.withdrawn}
        assert preset.behaviour in BEHAVIOURS and chosen
        assert all(r.steered and r.prompt == "plain" for r in chosen.values())


def test_unknown_preset_and_unfit_model_are_refused_in_one_line(tiny, tiny_preset):
    with pytest.raises(InvalidArgumentError, match="unknown preset 'jsn': use one of") as info:
        presets.load(tiny, "jsn")
    assert "\n" not in str(info.value)
    with pytest.raises(ShapeMismatchError, match="was chosen for smollm2-135m-instruct"):
        presets.load(tiny, "one_sentence")
    deep = Preset(
        "deep", "bullets", {"tiny-llama": Recipe("last_prompt", (9,), coef=0.1, unit="residual_norm")}
    )
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
        "tiny_bullets",
        "bullets",
        {"tiny-llama": Recipe("last_prompt", (1, 2), coef=0.4, unit="residual_norm")},
        n_train=6,
    )
    monkeypatch.setitem(presets.PRESETS, "tiny_bullets", changed)
    (iv, _) = presets.load(tiny, "tiny_bullets")
    assert calls == [1, 1] and iv.amount() == pytest.approx(0.4 * iv.vector.stats[1].resid_norm)


def test_a_smaller_train_set_is_cached_apart_and_never_served_as_the_preset(tiny, tiny_preset, monkeypatch):
    small = presets.vector(tiny, "tiny_bullets", n_train=2)
    small_path, full_path = presets.path(tiny, "tiny_bullets", 2), presets.path(tiny, "tiny_bullets")
    assert small_path != full_path and small_path.exists() and not full_path.exists()
    assert presets.provenance(tiny, "tiny_bullets", n_train=2)["n_train"] == 2
    assert small.provenance["dataset_hash"] == load_dataset("bullet_lists", "train").head(2).hash
    full = presets.vector(tiny, "tiny_bullets")
    assert full_path.exists() and presets.provenance(tiny, "tiny_bullets")["n_train"] == 6
    assert full.provenance["dataset_hash"] != small.provenance["dataset_hash"]
    # a count at or above the preset's is the preset itself; a quick record copied over the preset's is stale
    assert presets.path(tiny, "tiny_bullets", 6) == presets.path(tiny, "tiny_bullets", 99) == full_path
    full_path.with_suffix(".json").write_text(small_path.with_suffix(".json").read_text())
    calls = []
    real = presets.build_vectors
    monkeypatch.setattr(presets, "build_vectors", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    presets.vector(tiny, "tiny_bullets")
    assert calls == [6]
    with pytest.raises(InvalidArgumentError, match="n_train must be at least 1"):
        presets.vector(tiny, "tiny_bullets", n_train=0)


def test_steer_command_takes_a_preset(tiny_dir, monkeypatch):
    runner = CliRunner()
    bad = runner.invoke(app, ["steer", "Hello", "--preset", "nope", "--model", tiny_dir])
    assert bad.exit_code == 2 and "unknown preset 'nope'" in bad.output
    both = runner.invoke(
        app, ["steer", "Hello", "--preset", "italian", "--vector", "v.safetensors", "--layer", "1"]
    )
    assert both.exit_code == 2 and "either --preset NAME or both --vector" in both.output
    unfit = runner.invoke(app, ["steer", "Hello", "--preset", "italian", "--model", tiny_dir])
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
    from workbench.size import Size
    from workbench.studies.presets import presets_study

    strong = Recipe("prompt", (1, 2), coef=3.0, unit="residual_norm")
    monkeypatch.setitem(
        presets.PRESETS, "tiny_bullets", Preset("tiny_bullets", "bullets", {"tiny-llama": strong})
    )
    scale = Size(n_train=6, n_validation=20, n_test=3, max_new_tokens=5, layers=None, batch_size=8)
    result = presets_study(writer, scale, tmp_path, base_model=False)
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
    from workbench.studies.compare import test_table as _table

    rows = pd.DataFrame(
        {
            "setting": ["steering"] * 2,
            "recipe": ["r"] * 2,
            "response": ['{"a": {"a": {"a":', '{"a": 1}'],
            "on_target": [False, True],
            "clean": [False, True],
            "degenerate": [False, False],
            "perplexity": [3.0, 4.0],
            "ifeval": [False, True],
        }
    )
    json_table = _table("m", BEHAVIOURS["json"], rows).iloc[0]
    assert json_table["target"] == "json_format_strict" and json_table["target_rate"] == 0.5
    assert json_table["starts_json"] == 1.0  # the cut-off loop starts a JSON object; it is not compliance
    bullets = _table("m", BEHAVIOURS["bullets"], rows)
    assert bullets.loc[0, "target"] == "ifeval" and "starts_json" not in bullets


def test_cached_test_rows_are_rescored_by_the_current_scorer(writer, tmp_path, monkeypatch):
    """The study caches raw answers only: a scorer change shows on the next run without generating again."""
    from workbench.evaluation import fluency
    from workbench.size import Size
    from workbench.studies.presets import presets_study

    monkeypatch.setitem(
        presets.PRESETS, "tiny_bullets", Preset("tiny_bullets", "bullets", {"tiny-llama": RECIPE}, n_train=6)
    )
    scale = Size(n_train=6, n_validation=20, n_test=3, max_new_tokens=6, layers=None, batch_size=8)
    first = presets_study(writer, scale, tmp_path, base_model=False)
    parts = {p: p.stat().st_mtime_ns for p in (tmp_path / "presets" / "grids").rglob("*.parquet")}
    assert parts and (first.table["degeneration"] < 1).any()
    monkeypatch.setattr(fluency, "MAX_NGRAM_REPEAT_RATE", -1.0)  # every answer with a word now loops
    second = presets_study(writer, scale, tmp_path, base_model=False)
    assert {p: p.stat().st_mtime_ns for p in parts} == parts  # nothing was generated or rewritten
    assert second.rows["response"].tolist() == first.rows["response"].tolist()
    assert (second.table["degeneration"] == 1).all()


def test_bundled_presets_are_data_with_their_provenance():
    """No rate is typed in code: the presets come from the shipped JSON that `workbench study frontier` wrote,
    under the current scorer, confirmed on validation prompts disjoint from the ones they were selected on."""
    from workbench import evaluation

    doc = json.loads(presets.BUNDLED.read_text())
    assert presets.parse(doc) == presets.PRESETS
    assert doc["scorer_version"] == evaluation.SCORER_VERSION and "full search" in doc["provenance"]
    assert doc["run_manifest_hash"] and set(doc["models"]) == {"smollm2-135m-instruct", "gemma3-270m"}
    for preset in presets.PRESETS.values():
        assert preset.scorer_version == evaluation.SCORER_VERSION and preset.dataset_hash
        for model, validation in preset.validation.items():
            assert doc["models"][model]["weights_hash"]
            assert "disjoint from the 10 it was selected on" in validation["prompts"]
            assert validation["clean_rate"] > validation["unsteered_clean_rate"]
            assert validation["target"] == BEHAVIOURS[preset.behaviour].target
    header = {
        k: doc[k]
        for k in ("provenance", "created", "selection", "scorer_version", "run_manifest_hash", "models")
    }
    assert presets.document(presets.PRESETS, header) == doc


def test_a_malformed_presets_file_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "presets.json"
    bad.write_text(json.dumps({"schema": 1, "presets": {}}))
    with pytest.raises(ArtifactError, match="malformed") as info:
        presets.read(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(ArtifactError, match="cannot read presets"):
        presets.read(tmp_path / "missing.json")


def test_preset_cache_keys_on_the_model_fingerprint(tiny, tiny_preset):
    presets.load(tiny, "tiny_bullets")
    target = presets.path(tiny, "tiny_bullets")
    assert tiny.fingerprint in target.name
    record = json.loads(target.with_suffix(".json").read_text())
    assert record["fingerprint"] == tiny.fingerprint


def test_frontier_study_records_presets_confirmed_on_fresh_prompts(writer, tmp_path):
    from workbench import evaluation
    from workbench.recipes import score
    from workbench.size import Size
    from workbench.studies import frontier as study
    from workbench.studies import search

    scale = Size(n_train=6, n_validation=3, n_test=3, max_new_tokens=5, layers=None)
    study.frontier_study(writer, scale, tmp_path, behaviours=["bullets"], base_model=False)
    folder = tmp_path / "frontier"
    doc = json.loads((folder / "presets.json").read_text())
    assert doc["scorer_version"] == evaluation.SCORER_VERSION
    assert doc["models"] == {"tiny-llama": {"weights_hash": writer.weights_hash}}
    assert set(presets.read(folder / "presets.json")) <= {"bullets"}  # the shipped layout
    # the confirmation round's rates come from validation prompts the finalists were not selected on
    bullets = BEHAVIOURS["bullets"]
    selection = {item.id for item in bullets.items("validation", 3).items}
    rows = score(bullets, pd.read_parquet(next(folder.glob("rows_*_confirm.parquet"))))
    fresh = rows[~rows["id"].isin(selection)]
    assert len(fresh) < len(rows) and fresh.groupby("recipe").size().eq(search.CONFIRM * 3).all()
    confirm = pd.read_csv(folder / "sweep_validation.csv").query("stage == 'confirm'").set_index("recipe")
    expected = fresh.groupby("recipe")["clean"].mean()
    assert confirm["clean_rate"].to_dict() == pytest.approx(expected[confirm.index].to_dict())


def test_a_chosen_recipe_is_recorded_where_it_beats_unsteered_and_ships_only_where_rated_fluent(writer):
    from workbench.activations import collect
    from workbench.studies.frontier import BehaviourResult, _landed

    chosen = Recipe("last_prompt", (1,), coef=0.2, unit="residual_norm")
    pos, neg = collect(writer, ["Hello there", "Good morning"]), collect(writer, ["Hi", "Bye"])
    vectors = {"last_prompt": SteeringVector.from_activations(pos, neg, dataset="d", dataset_hash="h")}

    def result(clean: float, rated: tuple[float, float] | None = None) -> BehaviourResult:
        """The chosen recipe's confirmation clean rate; ``rated``: its (mean fluency, mean score) by a judge
        that rates every unsteered answer 2, 2, 0 (fluent and relevant, never on target: score 0)."""
        rows = [("coarse", "plain", 0.0, 3), ("coarse", chosen.name, 1.0, 3)]
        rows += [("confirm", "plain", 0.2, 9), ("confirm", chosen.name, clean, 9)]
        validation = pd.DataFrame(rows, columns=["stage", "recipe", "clean_rate", "n"]).assign(
            target_rate=0.7, degeneration=0.1, perplexity=4.0
        )
        if rated is not None:
            confirm = validation["stage"] == "confirm"
            fluency, score = rated
            validation.loc[confirm, ["mean_concept", "mean_relevance", "judge"]] = [0.0, 2.0, "stub"]
            validation.loc[confirm, "mean_fluency"] = [2.0, fluency]
            validation.loc[confirm, "mean_score"] = [0.0, score]
        return BehaviourResult(
            "tiny-llama", "w", 6, BEHAVIOURS["bullets"], vectors, validation, chosen, pd.DataFrame(), []
        )

    assert _landed([result(clean=0.2)]) == {}  # a tie with unsteered is not a preset
    (preset,) = _landed([result(clean=0.5)]).values()
    v = preset.validation["tiny-llama"]
    assert preset.dataset_hash == "h" and preset.n_train == 6
    assert (v["n"], v["clean_rate"], v["unsteered_clean_rate"], v["target"]) == (9, 0.5, 0.2, "ifeval")
    assert v["prompts"] == "validation items 4-12, disjoint from the 3 it was selected on"
    # no judge rated it: recorded, but withdrawn
    assert preset.recipes == {} and preset.withdrawn == {"tiny-llama": chosen}
    assert preset.rating == {"tiny-llama": None}
    # rated: the judge's mean score decides against unsteered, whatever the text rules' clean rate says
    assert _landed([result(clean=0.1, rated=(1.5, 0.4))])  # below unsteered's clean rate, above its score
    assert _landed([result(clean=0.9, rated=(1.5, 0.0))]) == {}  # the judge finds none clean
    (fluent,) = _landed([result(clean=0.5, rated=(1.0, 0.4))]).values()
    rating = fluent.rating["tiny-llama"]
    assert fluent.recipes == {"tiny-llama": chosen} and fluent.withdrawn == {}
    assert (rating["judge"], rating["n"], rating["mean_fluency"], rating["mean_score"]) == (
        "stub",
        9,
        1.0,
        0.4,
    )
    (salad,) = _landed([result(clean=0.5, rated=(0.9, 0.4))]).values()
    assert salad.recipes == {} and salad.withdrawn == {"tiny-llama": chosen}


def _rating(fluency: float, score: float) -> dict[str, object]:
    return {
        "judge": "stub",
        "n": 30,
        "answers": "a test",
        "mean_concept": 2.0,
        "mean_relevance": 1.0,
        "mean_fluency": fluency,
        "mean_score": score,
    }


def test_a_recipe_ships_at_mean_fluency_one_and_a_score_above_zero():
    assert presets.withheld(_rating(1.0, 0.01)) is None
    assert presets.withheld(_rating(2.0, 1.5)) is None
    for fluency, score in ((0.99, 1.0), (1.5, 0.0)):
        why = presets.withheld(_rating(fluency, score))
        assert f"mean fluency {fluency:.2f}, mean score {score:.2f}" in why and "stub rated its 30" in why
    assert "workbench models fetch qwen2.5-coder-1.5b-instruct" in presets.withheld(None)


def test_a_withdrawn_recipe_is_not_offered_and_is_refused_in_one_line_saying_why(tiny, monkeypatch):
    salad = Preset("salad", "bullets", {}, n_train=6).add("tiny-llama", RECIPE, {}, _rating(0.2, 0.0))
    unrated = Preset("unrated", "bullets", {}, n_train=6).add("tiny-llama", RECIPE, {}, None)
    fluent = Preset("fluent", "bullets", {}, n_train=6).add("tiny-llama", RECIPE, {}, _rating(1.2, 0.5))
    for preset in (salad, unrated, fluent):
        monkeypatch.setitem(presets.PRESETS, preset.name, preset)
    assert "fluent" in presets.available(tiny)
    assert not {"salad", "unrated"} & set(presets.available(tiny))
    assert {"salad", "unrated", "fluent"} <= set(presets.names())  # asked for by name, they say why not
    with pytest.raises(InvalidArgumentError, match="preset 'salad' is withdrawn for 'tiny-llama'") as info:
        presets.load(tiny, "salad")
    assert "stub rated its 30 validation answers not fluent (mean fluency 0.20" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(InvalidArgumentError, match=r"'unrated' is withdrawn .* no judge rated"):
        presets.vector(tiny, "unrated")
    assert not any(presets.cache_dir().glob("presets/*"))  # nothing was built for them
    assert len(presets.load(tiny, "fluent")) == len(RECIPE.layers)
    # a document keeps a withdrawn recipe, with its rating, and reads it back withdrawn
    header = {
        "provenance": "a test",
        "created": "now",
        "selection": "a test",
        "scorer_version": None,
        "run_manifest_hash": None,
        "models": {},
    }
    doc = json.loads(json.dumps(presets.document({"salad": salad, "fluent": fluent}, header)))
    assert doc["presets"]["salad"]["recipes"]["tiny-llama"]["rating"]["mean_fluency"] == 0.2
    read = {name: (p.recipes, p.withdrawn, p.rating) for name, p in presets.parse(doc).items()}
    assert read == {
        name: (p.recipes, p.withdrawn, p.rating) for name, p in (("salad", salad), ("fluent", fluent))
    }


def test_the_bundled_presets_ship_only_what_the_judge_rated_fluent():
    """Every bundled recipe carries the 1.5B judge's rating of its 30 validation answers (``workbench presets
    rate``); SmolLM2's Italian preset (", eccordionilòro, e'volte a dolce,,," salad that language ID calls
    Italian) is withdrawn, and so is Gemma's (repeated sentences: mean fluency 0.97, under 1)."""
    from types import SimpleNamespace

    for preset in presets.PRESETS.values():
        for model, rating in preset.rating.items():
            assert rating["judge"] == "qwen2.5-coder-1.5b-instruct" and rating["n"] == 30
            ships = rating["mean_fluency"] >= presets.MIN_FLUENCY and rating["mean_score"] > 0
            assert (model in preset.recipes) == ships and (model in preset.withdrawn) == (not ships)
    assert presets.get("italian").withdrawn.keys() == {"smollm2-135m-instruct", "gemma3-270m"}
    assert presets.get("italian").rating["smollm2-135m-instruct"]["mean_fluency"] == 0.0
    assert not presets.get("italian").recipes
    assert set(presets.get("one_sentence").recipes) == {"smollm2-135m-instruct"}
    smollm2 = SimpleNamespace(name="smollm2-135m-instruct", n_layers=30)
    assert presets.available(smollm2) == ["one_sentence"]  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"withdrawn .*mean fluency 0\.00"):
        presets.get("italian").recipe(smollm2)  # type: ignore[arg-type]
