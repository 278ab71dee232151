"""Recipes: the setting type, Pareto fronts and the clean-rate rule."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
import torch

from workbench import recipes as frontier
from workbench import runner
from workbench.behaviours import Behaviour, build_vectors
from workbench.errors import InvalidArgumentError
from workbench.evaluation.targets import MIN_ITALIAN_SHARE, is_real_italian, json_format_strict
from workbench.interventions import Intervention
from workbench.recipes import Recipe, choose_clean, pareto_front
from workbench.vectors import SteeringVector


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))


# ---- recipes ---------------------------------------------------------------------------------------


def _vector() -> SteeringVector:
    pos = torch.randn(6, 4, 64, generator=torch.Generator().manual_seed(0)) + 1.0
    neg = torch.randn(6, 4, 64, generator=torch.Generator().manual_seed(1))
    return SteeringVector.from_activations(pos, neg)


def test_recipe_strength_means_the_same_at_every_layer():
    vector = _vector()
    ivs = Recipe(layers=(1, 2, 3), coef=0.1, unit="residual_norm").interventions(vector)
    assert [iv.layer for iv in ivs] == [1, 2, 3]
    for iv in ivs:
        assert iv.unit == "residual_norm"
        assert iv.amount() == pytest.approx(0.1 * vector.stats[iv.layer].resid_norm)
    (dn,) = Recipe(layers=(2,), coef=2.0, unit="diff_norm").interventions(vector)
    assert dn.amount() == pytest.approx(2.0 * vector.stats[2].diff_norm)


def test_set_projection_strength_interpolates_between_the_sets():
    vector = _vector()
    stats = vector.stats[1]
    (pos,) = Recipe(layers=(1,), mode="set_projection", coef=1.0, unit="diff_norm").interventions(vector)
    (neg,) = Recipe(layers=(1,), mode="set_projection", coef=0.0, unit="diff_norm").interventions(vector)
    (far,) = Recipe(layers=(1,), mode="set_projection", coef=2.0, unit="diff_norm").interventions(vector)
    assert pos.amount() == pytest.approx(stats.pos_mean_proj)
    assert neg.amount() == pytest.approx(stats.neg_mean_proj)
    assert far.amount() == pytest.approx(2 * stats.pos_mean_proj - stats.neg_mean_proj)


def test_recipe_names_are_distinct_and_round_trip():
    recipes = [
        Recipe(),
        Recipe(prompt="instruction"),
        Recipe("generated", (6, 7, 8), coef=0.05, unit="residual_norm"),
        Recipe("generated", (6, 7, 8), coef=0.05, positions="generated", unit="residual_norm"),
        Recipe("generated", (6, 7, 8), coef=0.05, decay_tokens=20, unit="residual_norm"),
        Recipe("generated", (6, 7, 8), coef=0.05, norm_preserving=True, unit="residual_norm"),
        Recipe("prompt", (6, 8), coef=0.05, prompt="instruction", unit="residual_norm"),
    ]
    assert len({r.name for r in recipes}) == len(recipes)
    assert recipes[2].name == "generated L6-8 add 0.05rn all"
    for r in recipes:
        assert Recipe.from_json(r.to_json()) == r
    assert [r.span(30) for r in (recipes[0], Recipe(layers=(3,)), recipes[2], Recipe(layers=range(30)))] == [
        "none",
        "one layer",
        "band",
        "all layers",
    ]
    with pytest.raises(InvalidArgumentError, match="unknown source"):
        Recipe("first")
    with pytest.raises(InvalidArgumentError, match="unknown recipe fields"):
        Recipe.from_json({"source": "last_prompt", "colour": "red"})


# ---- Pareto front and choice ---------------------------------------------------------------------------


def test_pareto_front_on_hand_made_points():
    points = pd.DataFrame(
        {
            "target_rate": [0.9, 0.5, 0.9, 0.2, 0.6, 0.1, 0.9, float("nan")],
            "degeneration": [0.8, 0.1, 0.9, 0.0, 0.1, 0.5, 0.8, 0.0],
        }
    )
    # 0 and 6 tie (neither dominates the other); 2 is dominated by 0; 1 by 4; 5 by 3; NaN never counts.
    assert pareto_front(points).tolist() == [True, False, False, True, True, False, True, False]
    two = pareto_front(points.assign(ppl=[5, 5, 1, 5, 5, 5, 9, 1]), minimize=("degeneration", "ppl"))
    assert two.tolist() == [True, False, True, True, True, False, False, False]
    with pytest.raises(InvalidArgumentError, match="no column"):
        pareto_front(points, maximize=("clean_rate",))


def _summary(rows: list[tuple[str, bool, str, float, float, float, float, int]]) -> pd.DataFrame:
    columns = [
        "recipe", "steered", "prompt", "clean_rate", "target_rate", "degeneration", "perplexity",
        "n_layers_steered",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def test_choose_takes_the_best_clean_rate_then_target_rate_of_steering_alone():
    summary = _summary(
        [
            ("instruction", False, "instruction", 0.9, 0.9, 0.0, 3.0, 0),  # not steering alone
            ("steer+instruction", True, "instruction", 0.8, 0.8, 0.0, 3.0, 1),  # not steering alone
            ("high target, degenerate", True, "plain", 0.2, 1.0, 0.8, 40.0, 1),
            ("clean", True, "plain", 0.5, 0.6, 0.3, 9.0, 30),
            ("same clean, higher target", True, "plain", 0.5, 0.7, 0.3, 9.0, 30),
            ("same again, less degenerate", True, "plain", 0.5, 0.7, 0.1, 12.0, 30),
            ("same again, more layers", True, "plain", 0.5, 0.7, 0.1, 12.0, 31),
        ]
    )
    assert choose_clean(summary)["recipe"] == "same again, less degenerate"
    assert choose_clean(summary.iloc[[0, 1, 2, 3, 4]])["recipe"] == "same clean, higher target"
    nothing = summary.assign(clean_rate=0.0)  # nothing clean: the best target rate, never the weakest
    assert choose_clean(nothing)["recipe"] == "high target, degenerate"
    scored = summary.assign(mean_score=[1.5, 1.4, 0.1, 0.2, 0.3, 0.3, 0.9])  # a judge's score comes first
    assert choose_clean(scored)["recipe"] == "same again, more layers"
    with pytest.raises(InvalidArgumentError, match="no steered recipe"):
        choose_clean(summary.iloc[[0, 1]])


def test_real_italian_needs_every_sentence_not_just_the_label():
    italian = "Il tè si prepara con acqua calda. Lascia in infusione per tre minuti prima di berlo."
    mixed = (
        "Il tè si prepara con acqua calda. Then you should wait for three minutes. "
        "After that, pour it into a cup and enjoy it with milk."
    )
    assert is_real_italian(italian)
    assert not is_real_italian(mixed)
    assert not is_real_italian("Boil the water, then add the tea leaves and wait.")
    assert not math.isnan(MIN_ITALIAN_SHARE)


# ---- running on the tiny model ---------------------------------------------------------------------


def test_vectors_built_without_the_cache_neither_read_nor_write_it(tiny, tmp_path):
    behaviour = Behaviour("bullets", "bullet_lists", 6)
    store = tmp_path / "cache" / "activations"
    fresh = build_vectors(tiny, behaviour, 4, sources=("prompt",), cache=False)["prompt"]
    assert not store.exists() or not any(store.iterdir())
    cached = build_vectors(tiny, behaviour, 4, sources=("prompt",))["prompt"]
    assert any(store.iterdir())
    torch.testing.assert_close(fresh.directions, cached.directions)


def test_run_recipes_scores_every_row_and_batches_configurations(tiny, monkeypatch):
    behaviour = Behaviour("bullets", "bullet_lists", 6)
    vectors = build_vectors(tiny, behaviour, 6, sources=("last_prompt", "prompt"))
    assert {v.provenance["source"] for v in vectors.values()} == {"last_prompt", "prompt"}
    assert vectors["prompt"].stats[2].resid_norm == vectors["last_prompt"].stats[2].resid_norm
    recipes = [
        Recipe(),
        Recipe(prompt="instruction"),
        Recipe("last_prompt", (1,), coef=0.5, unit="residual_norm"),
        Recipe("prompt", (1, 2), coef=0.3, positions="generated", decay_tokens=3, unit="residual_norm"),
    ]
    calls = []
    real = runner.generate
    monkeypatch.setattr(runner, "generate", lambda *a, **k: calls.append(k) or real(*a, **k))
    rows = frontier.run_recipes(tiny, behaviour, vectors, recipes, "validation", 3)
    assert len(calls) == 2  # the unsteered completions, then every steered row in one call
    assert all(isinstance(iv, Intervention) for row in calls[1]["row_interventions"] for iv in row)
    assert len(rows) == 4 * 3 and rows["recipe"].tolist()[:3] == ["plain"] * 3
    assert (rows["clean"] == rows["on_target"] & ~rows["degenerate"]).all()
    summary = frontier.summarize_recipes(rows, recipes, tiny.n_layers)
    assert summary["recipe"].tolist() == [r.name for r in recipes]
    assert summary["n"].eq(3).all() and summary["clean_rate"].between(0, 1).all()
    again = frontier.run_recipes(tiny, behaviour, vectors, recipes[:2], "validation", 3)
    assert len(calls) == 2  # unsteered answers come from the completion cache
    pd.testing.assert_series_equal(again["response"], rows["response"][:6], check_names=False)


# ---- the study on the tiny model -------------------------------------------------------------------


def test_frontier_study_writes_table_figure_and_choice(writer, tmp_path):
    from workbench.size import Size
    from workbench.studies import frontier as study
    from workbench.studies import search

    scale = Size(n_train=6, n_validation=3, n_test=3, max_new_tokens=5, layers=None)
    result = study.frontier_study(writer, scale, tmp_path, behaviours=("bullets",), base_model=False)
    table = result.table
    assert table["setting"].tolist() == [
        "unsteered",
        "instruction in prompt",
        "steering",
        "steering + instruction",
    ]
    assert table[["target_rate", "clean_rate", "degeneration"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (table["n"] == 3).all()
    folder = tmp_path / "frontier"
    assert {p.suffix for p in result.figures} == {".png", ".svg"} and all(p.exists() for p in result.figures)
    validation = pd.read_csv(folder / "sweep_validation.csv")
    assert set(validation["stage"]) == {"baseline", "coarse", "refine", "refine2", "confirm"}
    confirm = validation[validation["stage"] == "confirm"]
    assert (confirm["n"] == search.CONFIRM * 3).all() and 2 <= len(confirm) <= 1 + search.CONFIRM_K
    validation = validation[validation["stage"] != "confirm"]
    assert set(confirm["recipe"]) <= set(validation["recipe"])
    effects = pd.read_csv(folder / "sweep_refinements.csv")
    assert set(effects["seed"]) <= set(validation.loc[validation["stage"] != "baseline", "recipe"])
    assert "linear decay" in set(effects["change"])
    assert len(validation) == len(set(validation["recipe"])) > 2 + 27
    chosen = study.json.loads((folder / "chosen.json").read_text())[0]
    assert Recipe.from_json(chosen["recipe"]).name == table.loc[2, "recipe"]
    # the finalists are the best of the sweep in rank order, one per distinct set of validation answers
    # (the rest wrote one of theirs); the choice is the best of them on the larger set
    finalists = confirm[confirm["steered"]]
    ranked = list(study.rank(validation)["recipe"])
    names = list(finalists["recipe"])
    assert names[0] == ranked[0] and names == sorted(names, key=ranked.index)
    stages = pd.concat(pd.read_parquet(p) for p in folder.glob("rows_*_refine*.parquet"))
    stages = pd.concat([stages, pd.read_parquet(next(folder.glob("rows_*_coarse.parquet")))])
    answers = {r: tuple(g.sort_values("id")["response"]) for r, g in stages.groupby("recipe")}
    assert len({answers[n] for n in names}) == len(names)
    skipped = ranked[: ranked.index(names[-1])]
    assert all(answers[n] in {answers[f] for f in names} for n in skipped)
    chosen_row = finalists.set_index("recipe").loc[table.loc[2, "recipe"]]
    assert chosen_row["clean_rate"] == finalists["clean_rate"].max()


def test_a_reduced_search_is_narrower_and_still_confirms_on_fresh_prompts(writer, tmp_path):
    from workbench.size import Size
    from workbench.studies import frontier as study
    from workbench.studies import search

    scale = Size(n_train=6, n_validation=3, n_test=3, max_new_tokens=5, layers=None)
    plan = search.Plan.reduced()
    result = study.frontier_study(
        writer, scale, tmp_path, behaviours=("bullets",), base_model=False, plan=plan
    )
    validation = pd.read_csv(tmp_path / "frontier" / "sweep_validation.csv")
    assert set(validation["stage"]) == {"baseline", "coarse", "refine", "confirm"}
    coarse = validation[validation["stage"] == "coarse"]
    assert len(coarse) == 9 * len(plan.sources) and set(coarse["source"]) == set(plan.sources)
    refined = validation[validation["stage"] == "refine"]
    assert refined["seed"].nunique() == plan.top_k
    confirm = validation[validation["stage"] == "confirm"]
    assert (confirm["n"] == plan.confirm * 3).all() and 2 <= len(confirm) <= 1 + plan.confirm_k
    assert not any("response-token" in note for note in result.notes)  # no completions generated for it


def test_full_grid_covers_every_method():
    from workbench.studies import search

    grid = search.coarse_grid(30)
    assert {r.source for r in grid} == {"last_prompt", "prompt", "generated"}
    assert {r.span(30) for r in grid} == {"one layer", "band", "all layers"}
    assert len({r.name for r in grid}) == len(grid) == 27
    band = next(r for r in grid if r.span(30) == "band")
    vector = SteeringVector.from_activations(torch.randn(6, 30, 8), torch.randn(6, 30, 8))
    variants = list(search.refinements(band, 40, vector).values())
    assert {r.positions for r in variants} == {"all", "prompt", "response", "generated"}
    assert {r.mode for r in variants} == {"add", "set_projection"}
    assert any(r.decay_tokens == 20 for r in variants) and any(r.norm_preserving for r in variants)
    assert len({r.name for r in variants}) == len(variants)
    (dn,) = [r for r in variants if r.unit == "diff_norm" and r.mode == "add"]
    added = sum(iv.amount() for iv in dn.interventions(vector))
    assert added == pytest.approx(sum(iv.amount() for iv in band.interventions(vector)), rel=1e-2)
    assert search.spans(4)["band"] == (1, 2)  # a band has at least two layers


# ---- one setting type for sweeps and recipes -----------------------------------------------------------


def test_a_recipe_without_a_source_is_a_sweep_setting_labelled_like_an_intervention():
    from workbench.sweeps import Config, grid

    vector = _vector()
    configs = grid([1, 2], coefs=(2.0,)) + grid([3], mode="set_projection")[1:] + grid([3], mode="ablate")[1:]
    assert all(isinstance(c, Recipe) and c.source is None for c in configs)
    assert [c.name for c in configs] == ["none", "add@1x2", "add@2x2", "set_projection@3", "ablate@3"]
    assert all(Recipe.from_json(c.to_json()) == c for c in configs)
    (added,) = Config(2, "add", 2.0).interventions(vector)
    assert added.amount() == Intervention(vector, 2, "add", 2.0).amount()
    (projected,) = Config(3, "set_projection").interventions(vector)
    assert projected.amount() == pytest.approx(vector.stats[3].pos_mean_proj)
    (ablated,) = Config(3, "ablate").interventions(vector)
    assert ablated.mode == "ablate" and ablated.label == "ablate@3"
    (absolute,) = Recipe(None, (1,), coef=3.0, unit="absolute").interventions(vector)
    assert absolute.amount() == 3.0
    band = Recipe("prompt", (1, 2), coef=0.1, prompt="instruction", unit="residual_norm")
    assert band.label == "add@1-2x0.1 +instruction" and band.name == "prompt L1-2 add 0.1rn all +instruction"
    assert Recipe(None, (1,), "ablate", 0.0).coef is None
    with pytest.raises(InvalidArgumentError, match="takes no coef"):
        Recipe(None, (1,), "ablate", 2.0)
    with pytest.raises(InvalidArgumentError, match="unknown unit"):
        Recipe(unit="percent")


def test_answer_resumes_from_its_parts_and_rescores(tiny, tmp_path, monkeypatch):
    behaviour = Behaviour("bullets", "bullet_lists", 5)
    vectors = build_vectors(tiny, behaviour, 4, sources=("last_prompt",))
    recipes = [
        Recipe(),
        Recipe("last_prompt", (1,), coef=0.5, unit="residual_norm"),
        Recipe("last_prompt", (2,), coef=0.5, unit="residual_norm"),
    ]
    first = frontier.run_recipes(tiny, behaviour, vectors, recipes, "validation", 2, out_dir=tmp_path)
    assert len(list(tmp_path.glob("part-*.parquet"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr(runner, "generate", refuse)
    again = frontier.answer(tiny, behaviour, vectors, recipes, "validation", 2, out_dir=tmp_path)
    pd.testing.assert_frame_equal(again, first[again.columns])
    strict_json = dataclasses.replace(behaviour, target="json_format_strict")
    rescored = frontier.score(strict_json, again)
    assert (rescored["on_target"] == rescored["response"].map(json_format_strict)).all()
    with pytest.raises(InvalidArgumentError, match="needs the 'prompt' vector"):
        frontier.answer(
            tiny,
            behaviour,
            vectors,
            [Recipe("prompt", (1,), coef=0.5, unit="residual_norm")],
            "validation",
            2,
        )
