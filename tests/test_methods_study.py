"""The methods study on the tiny model: every method chosen on validation by the one rule, rated test rows,
costs, and a rerun that trains and rates nothing again."""

from __future__ import annotations

import pandas as pd
import pytest

from workbench.evaluation.rating_judge import RatingJudge
from workbench.evaluation.selection import choose_setting
from workbench.size import Size
from workbench.studies import contenders, methods
from workbench.training import PreferencePairs


@pytest.fixture(scope="module")
def judged(confident):
    """The tiny model as its own judge, with room for the rubric."""
    confident.bridge.cfg.n_ctx = 4096
    return RatingJudge(confident, batch_size=4)


def pairs(model, dataset, **kwargs):
    """Pairs the tiny model cannot distil (its plain answers have no comma already): on-target answers
    without commas against plain answers with them, for the train items."""
    items = dataset.items
    targets = tuple(f"Answer {i} has no comma at all." for i in range(len(items)))
    plains = tuple(f"Answer {i}, with commas, here." for i in range(len(items)))
    return PreferencePairs(tuple(dataset.negative), targets, plains, tuple(i.id for i in items))


@pytest.fixture(scope="module")
def run(confident, judged, tmp_path_factory):
    out = tmp_path_factory.mktemp("methods")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(contenders, "preference_pairs", pairs)
        result = methods.methods_study(confident, Size.quick(), out, behaviours=("no_comma",), judge=judged)
    return out, result


def test_every_method_is_chosen_on_validation_by_the_one_rule(run):
    out, result = run
    table = result.table
    chosen = set(table["method"]) - {"unsteered"}
    assert chosen == set(contenders.METHODS)
    assert {"unsteered", "instruction"} <= set(table["setting"])
    for method in chosen:
        assert {method, f"{method} + instruction"} <= set(table["setting"])
        validation = pd.read_csv(out / "methods" / f"validation-no_comma-{method.replace(' ', '_')}.csv")
        best = choose_setting(validation)
        row = table[table["setting"] == method].iloc[0]
        assert row["validation_mean_score"] == pytest.approx(best["mean_score"], nan_ok=True)
        note = next(n for n in result.notes if n.startswith(f"{method}: "))
        assert f"{best['setting']} chosen of {len(validation)}" in note
        if method in ("diff-in-means", "last-token", "likelihood", "RePS"):  # each strength at both positions
            response = validation["setting"].str.endswith(" response")
            assert response.sum() == (~response).sum() > 0


def test_trained_methods_sit_at_the_layer_of_the_better_diff_in_means(run):
    out, result = run
    chosen = {
        method: choose_setting(pd.read_csv(out / "methods" / f"validation-no_comma-{method}.csv"))
        for method in ("diff-in-means", "last-token")
    }
    better = choose_setting(pd.DataFrame(list(chosen.values())))
    layer = better["setting"].split()[0]
    for method in ("likelihood", "RePS", "prompt-only", "PSR_gate"):
        settings = pd.read_csv(out / "methods" / f"validation-no_comma-{method}.csv")["setting"]
        assert (settings.str.split().str[0] == layer).all(), method
    assert any(f"(the layer of {better['method']}, the better" in n for n in result.notes)


def test_test_rows_are_rated_answers_to_prompts_disjoint_from_validation(run, confident):
    _, result = run
    rows, table = result.rows, result.table
    assert {"concept", "relevance", "fluency", "score", "judge"} <= set(rows.columns)
    assert rows["judge"].eq(confident.name).all() and rows["relevance"].notna().all()
    tested = set(rows["id"])
    validation = {
        i.id for i in methods.BEHAVIOURS["no_comma"].items("validation", Size.quick().n_validation).items
    }
    assert tested and not tested & validation
    for setting, part in rows.groupby("setting"):
        row = table[table["setting"] == setting].iloc[0]
        assert row["mean_score"] == pytest.approx(part["score"].astype(float).mean())
        assert row["clean_rate"] == pytest.approx((part["score"].astype(float) > 0).mean())
    steered = table[table["method"].ne("unsteered")]
    assert (steered["train_cpu_seconds"] > 0).all()
    assert steered.loc[~steered["instruction"], "mc_change_en"].notna().all()
    assert any("the judge rated for" in n for n in result.notes)
    assert any(n.startswith("no_comma: instruction mean score") for n in result.notes)


def test_a_rerun_trains_and_rates_nothing_again(run, confident, judged, monkeypatch):
    out, first = run

    def refuse(*args, **kwargs):
        raise AssertionError("ran again")

    monkeypatch.setattr(contenders, "preference_pairs", pairs)
    for name in ("train_vector", "train_factor", "train_gate", "choose_lora", "build_vectors"):
        monkeypatch.setattr(contenders, name, refuse)
    monkeypatch.setattr(RatingJudge, "probabilities", refuse)
    again = methods.methods_study(confident, Size.quick(), out, behaviours=("no_comma",), judge=judged)
    pd.testing.assert_frame_equal(again.table, first.table)


def test_a_change_to_the_training_code_trains_again(run, confident, judged, monkeypatch):
    out, _ = run

    def refuse(*args, **kwargs):
        raise AssertionError("ran again")

    monkeypatch.setattr(contenders, "preference_pairs", pairs)
    monkeypatch.setattr(contenders, "source_digest", lambda *packages: "edited")
    monkeypatch.setattr(contenders, "build_vectors", refuse)
    with pytest.raises(AssertionError, match="ran again"):
        methods.methods_study(confident, Size.quick(), out, behaviours=("no_comma",), judge=judged)
