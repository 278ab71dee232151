"""The baselines study on the tiny model: every method and column, competitors that act, resuming."""

from __future__ import annotations

import dataclasses
import json
import runpy
from pathlib import Path

import pandas as pd
import pytest
from conftest import build_tiny_hf

from workbench import presets
from workbench.behaviours import build_vectors
from workbench.datasets import load
from workbench.errors import ArtifactError
from workbench.evaluation.reference import calibrate
from workbench.evaluation.selection import choose_setting, nothing_clean
from workbench.generation import generate
from workbench.models import from_hf
from workbench.recipes import Recipe
from workbench.runner import Job, run_grid
from workbench.schedules import AUTHORS_POSITIONS, DynamicStrength, StrengthTrace, mean_strength
from workbench.size import Size
from workbench.studies import baselines as study
from workbench.studies import competitors
from workbench.studies.goals import MC_COLUMN, STEERING
from workbench.studies.registry import get
from workbench.studies.render import publish
from workbench.studies.report import run_report
from workbench.vectors import SteeringVector

RATES = (
    "target_rate",
    "clean_rate",
    "degeneration",
    "distinct_rate",
    "fluent_rate",
    "off_target_compliance",
    "mc_generation_accuracy_en",
    "mc_generation_unparsed_en",
    "mc_loglik_accuracy_en",
)
#: A steering strong enough to move the tiny model (the coarse grid's is not), so every competitor acts.
CANDIDATES = [Recipe("prompt", (1, 2), coef=3.0, unit="residual_norm")]


@pytest.fixture(scope="module")
def run(confident, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    result = study.baselines_study(
        confident, Size.quick(), out, behaviours=("no_comma", "italian"), candidates=CANDIDATES
    )
    return out, result


@pytest.fixture(scope="module")
def reference():
    """A stronger reference model for the tests: another tiny model (other weights, so not the scored one)."""
    hf, tokenizer = build_tiny_hf(seed=1)
    return from_hf(hf, tokenizer, "tiny-judge", device="cpu")


@pytest.fixture(scope="module")
def judged(confident, reference, tmp_path_factory):
    """The study with a stronger reference. A tiny random model finds every answer about as unlikely as any
    other (perplexity about 1e4), so the text rule's perplexity cap is lifted here: then answers pass the
    text rule and the judge's verdict is what decides whether they are clean."""
    out = tmp_path_factory.mktemp("judged")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("workbench.evaluation.fluency.MAX_PERPLEXITY", float("inf"))
        result = study.baselines_study(
            confident, Size.quick(), out, behaviours=("no_comma",), candidates=CANDIDATES, reference=reference
        )
    return out, result


def _text_clean(rows):
    return rows["on_target"].astype(bool) & ~rows["degenerate"].astype(bool)


def test_every_method_and_column_on_the_test_prompts(run):
    _, result = run
    table = result.table.set_index(["behaviour", "method"])
    no_comma = table.loc["no_comma"]
    assert list(no_comma.index) == [m for m in study.METHODS if m != "Italian prompt"]
    assert (no_comma["n"] == Size.quick().n_test).all()
    for column in RATES:
        assert no_comma[column].dropna().between(0, 1).all(), column
    # Undefined by design: off-target damage of the prompt-only method, log-likelihood multiple choice of
    # dynamic steering (its strength is set while generating; answered by generation, it has a score),
    # validation numbers of a method not chosen on validation's plain prompts.
    chosen_by = [c for c in no_comma if c.startswith("validation_")]
    assert chosen_by == ["validation_clean_rate", "validation_target_rate"]  # no judge's mean score here
    assert list(no_comma.index[no_comma[chosen_by].notna().all(axis=1)]) == list(STEERING)
    missing = no_comma.isna().sum().drop([c for c in no_comma if c.endswith("_it")] + chosen_by)
    assert missing[missing > 0].to_dict() == {
        **dict.fromkeys(["off_target_compliance", "off_target_damage"], 1),
        **dict.fromkeys(["mc_loglik_accuracy_en", "mc_loglik_gained_en", "mc_loglik_lost_en"], 1),
    }
    assert no_comma.loc[study.DYNAMIC, "mc_generation_accuracy_en"] >= 0
    for by in ("loglik", "generation"):  # prompt-only methods leave the model, and its answers, as they are
        assert (
            no_comma.loc["instruction", f"mc_{by}_gained_en"]
            == no_comma.loc["instruction", f"mc_{by}_lost_en"]
            == 0
        )
    assert no_comma.loc["unsteered", "off_target_damage"] == 0
    assert no_comma.loc["LoRA", "train_cpu_seconds"] > 0 and (no_comma["tokens_per_second"] > 0).all()
    italian = table.loc["italian"]
    assert (
        "Italian prompt" in italian.index
        and italian["mc_generation_accuracy_it"].dropna().between(0, 1).all()
    )
    assert (italian["target"] == "italian").all() and (no_comma["target"] == "ifeval").all()
    assert any("no LoRA" in note for note in result.notes) == ("LoRA" not in italian.index)
    assert [p.suffix for p in result.figures] == [".png", ".svg"] and all(p.exists() for p in result.figures)


def test_lora_and_steering_change_the_answers(run):
    _, result = run
    rows = result.rows[result.rows["behaviour"] == "no_comma"]
    answers = {m: rows.loc[rows["setting"] == m, "response"].tolist() for m in study.METHODS}
    for method in ("steering", "LoRA"):
        assert answers[method] != answers["unsteered"], method


def test_dynamic_steering_is_the_authors_and_its_control_steers_at_its_traced_mean_strength(run, confident):
    """The authors' rule (mean KL over the nucleus, from the last prompt token on) is weak on the tiny model
    (α about 0.02: its answers are the unsteered ones); the control is its interventions without schedule,
    each coef × the mean α of a traced generation of the same plain test prompts."""
    out, result = run
    folder = out / "baselines" / "no_comma"
    behaviour = dataclasses.replace(study._BEHAVIOURS["no_comma"], max_new_tokens=Size.quick().max_new_tokens)
    steering = competitors.fixed_steering(confident, behaviour, Size.quick(), folder, CANDIDATES)
    dyn = competitors.dynamic_steering(confident, behaviour, steering, Size.quick(), folder)
    assert all(iv.schedule.mean_over_tokens and iv.positions == AUTHORS_POSITIONS for iv in dyn.interventions)
    trace = StrengthTrace()
    prompts = behaviour.prompts("test", Size.quick().n_test, "plain")
    generate(
        confident,
        prompts,
        max_new_tokens=behaviour.max_new_tokens,
        interventions=dyn.interventions,
        trace=trace,
    )
    (mean,) = mean_strength(trace).values()  # one group: one strength for both layers
    control = [dataclasses.replace(iv, schedule=None, coef=iv.coef * mean) for iv in dyn.interventions]
    rows = result.rows[(result.rows["behaviour"] == "no_comma")].set_index("setting")
    assert set(rows.loc[study.CONTROL, "interventions"]) == {"; ".join(iv.label for iv in control)}
    assert set(rows.loc[study.DYNAMIC, "interventions"]) == {"; ".join(iv.label for iv in dyn.interventions)}
    assert 0 < mean < 1
    notes = [n for n in result.notes if n.startswith("no_comma: ")]
    assert any("dynamic (authors'): " in n and "not run here" in n for n in notes)
    assert any(n.startswith(f"no_comma: {study.CONTROL}: ") and "mean α" in n for n in notes)


def test_a_rerun_generates_and_trains_nothing(run, confident, monkeypatch):
    out, first = run

    def refuse(*args, **kwargs):
        raise AssertionError("a rerun should have read this from the study folder")

    monkeypatch.setattr("workbench.runner.run_chunk", refuse)
    monkeypatch.setattr(competitors, "choose_lora", refuse)
    monkeypatch.setattr("workbench.studies.choices.multiple_choice", refuse)
    monkeypatch.setattr("workbench.studies.dac.generate", refuse)
    again = study.baselines_study(
        confident, Size.quick(), out, behaviours=("no_comma", "italian"), candidates=CANDIDATES
    )
    pd.testing.assert_frame_equal(again.table, first.table)


def test_run_grid_keeps_fixed_and_dynamic_strength_apart(confident):
    data = load("no_comma", "train").head(4)
    vector = SteeringVector.from_dataset(confident, data)
    fixed = Recipe(None, (1, 2), coef=3.0, unit="diff_norm").interventions(vector)
    dyn = [dataclasses.replace(iv, schedule=DynamicStrength(group="g")) for iv in fixed]
    prompt = data.negative[0]
    jobs = [Job("fixed", "a", prompt, tuple(fixed)), Job("dynamic", "a", prompt, tuple(dyn))]
    rows = run_grid(confident, jobs, max_new_tokens=6)
    alone = [generate(confident, [prompt], max_new_tokens=6, interventions=ivs)[0] for ivs in (fixed, dyn)]
    assert rows["response"].tolist() == alone


def test_the_study_runner_writes_the_table_and_its_page_says_how(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    script = Path(__file__).resolve().parents[1] / "analyses" / "study.py"
    argv = ["baselines", "--size", "quick", "--model", str(tiny_dir), "--out", str(tmp_path)]
    argv += ["--set", "behaviours=no_comma", "--set", "lora=false", "--dtype", "float32"]
    runpy.run_path(str(script), run_name="analysis")["main"](argv)
    table = pd.read_csv(tmp_path / "baselines" / "table.csv")
    assert set(table["behaviour"]) == {"no_comma"} and {"unsteered", "steering"} <= set(table["method"])
    assert not table["method"].str.startswith("LoRA").any()  # lora=false
    assert (tmp_path / "baselines" / "baselines.png").exists()
    pages = publish(tmp_path, tmp_path / "pages")
    page = (tmp_path / "pages" / "baselines.md").read_text()
    assert tmp_path / "pages" / "baselines.md" in pages and "`workbench study` at size quick" in page
    assert "no_comma: goal " in page and "LoRA not run" in page and '"lora": false' in page
    recorded = json.loads((tmp_path / "manifest.json").read_text())["studies"]["baselines"]
    assert Size.from_json(recorded["size"]) == Size.quick() and recorded["options"]["behaviours"] == [
        "no_comma"
    ]
    assert "--dtype float32" in page and '"behaviours": ["no_comma"]' in page
    assert pd.read_csv(tmp_path / "pages" / "baselines.csv")["method"].tolist() == table["method"].tolist()


def test_the_report_runs_it_on_request(confident, tmp_path):
    report = run_report(confident, size="quick", out_dir=tmp_path, studies=["baselines"], progress=False)
    entry = json.loads((tmp_path / "manifest.json").read_text())["studies"]["baselines"]
    assert entry["status"] == "done" and "baselines" in report.read_text()
    assert Size.from_json(entry["size"]) == Size.quick()  # the size it ran at
    assert get("baselines").report == () and get("baselines").size("full") == Size.baselines()


def test_without_a_stronger_reference_fluency_is_reported_and_clean_is_the_text_rule(run, confident):
    _, result = run
    rows = result.rows[~result.rows["setting"].str.startswith("off-target ")]
    assert (rows["clean"].astype(bool) == _text_clean(rows)).all()
    assert set(rows["reference"]) == {confident.name} and rows["relative_perplexity"].gt(0).all()
    assert not result.table["clean_with_reference"].any()
    assert set(result.table["reference"]) == {confident.name}
    assert any("did not load offline" in note and "text rule" in note for note in result.notes)


def test_a_stronger_reference_joins_the_clean_rate(judged):
    out, result = judged
    rows = result.rows[~result.rows["setting"].str.startswith("off-target ")]
    fluent = rows["fluent"].astype(bool)
    assert (rows["clean"].astype(bool) == (_text_clean(rows) & fluent)).all()
    assert (~fluent & _text_clean(rows)).any()  # the judge turned some text-clean answers down
    table = result.table.set_index("method")
    assert table["clean_with_reference"].all() and set(table["reference"]) == {"tiny-judge"}
    text_rate = _text_clean(rows).groupby(rows["setting"]).mean()
    assert (table["clean_rate"] <= text_rate.reindex(table.index)).all()
    assert (table["clean_rate"] < text_rate.reindex(table.index)).any()
    assert any(note.startswith("fluency reference: tiny-judge") for note in result.notes)
    assert any("fluency judged by tiny-judge" in note for note in result.notes)
    lora = json.loads((out / "baselines" / "no_comma" / "lora.json").read_text())
    assert lora["no_pairs"] is None or "fluent by tiny-judge" in lora["no_pairs"]


def test_the_judge_is_calibrated_on_validation_answers_only(judged, confident, reference, tmp_path):
    out, _ = judged
    stored = json.loads((out / "baselines" / "no_comma" / "reference_fluency.json").read_text())
    size = Size.quick()
    behaviour = study._BEHAVIOURS["no_comma"]
    natural = {}
    for name, kind in {"unsteered": "plain", "target": "instruction"}.items():
        prompts = behaviour.prompts("validation", size.n_validation, kind)
        natural[name] = (prompts, generate(confident, prompts, max_new_tokens=size.max_new_tokens))
    rule = calibrate(reference, natural, batch_size=competitors.JUDGE_BATCH)
    assert stored["n_validation"] == 2 * size.n_validation
    assert stored["threshold"] == pytest.approx(rule.threshold)
    assert stored["anchors"] == pytest.approx(rule.anchors)
    more_test_rows = dataclasses.replace(size, n_test=size.n_test + 2)
    study.study_behaviour(confident, "no_comma", more_test_rows, tmp_path, CANDIDATES, reference)
    assert json.loads((tmp_path / "no_comma" / "reference_fluency.json").read_text()) == stored


def test_a_judged_rerun_runs_no_reference_forward_and_its_steering_choice_is_judged(
    judged, confident, reference
):
    out, first = judged

    def refuse(*args, **kwargs):
        raise AssertionError("a rerun should have read the reference's perplexities from the study folder")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("workbench.evaluation.fluency.MAX_PERPLEXITY", float("inf"))
        patch.setattr("workbench.evaluation.reference.perplexity", refuse)
        again = study.baselines_study(
            confident,
            Size.quick(),
            out.parent / out.name,
            behaviours=("no_comma",),
            candidates=CANDIDATES,
            reference=reference,
        )
    pd.testing.assert_frame_equal(again.table, first.table)
    assert any("fluent by the reference" in note for note in first.notes if "no preset" in note)


def test_a_preset_is_tried_at_gentler_strengths_and_the_best_on_validation_is_used(confident, tmp_path):
    preset = Recipe("prompt", (1, 2), coef=3.0, unit="diff_norm")
    data = load("no_comma", "train")
    found = {
        "no_comma": presets.Preset(
            "no_comma", "no_comma", {confident.name: preset}, n_train=4, dataset_hash=data.hash
        )
    }
    behaviour = study._BEHAVIOURS["no_comma"]
    chosen = competitors.fixed_steering(confident, behaviour, Size.quick(), tmp_path, found=found)
    summary = pd.read_csv(tmp_path / "validation_steering.csv")
    tried = summary[summary["steered"]]
    assert tried["coef"].tolist() == pytest.approx([3.0 * s for s in competitors.GENTLER])
    best = tried.set_index("label").loc[chosen.label]
    assert best["clean_rate"] == tried["clean_rate"].max() and "preset 'no_comma'" in chosen.note
    vector = build_vectors(confident, behaviour, 4, sources=("prompt",))[
        "prompt"
    ]  # the search's 4 train pairs
    assert chosen.interventions[0].amount() == pytest.approx(best["coef"] * vector.stats[1].diff_norm)


class _Seen(Exception):
    """Raised by a stand-in for fixed_steering once it has recorded the presets it was given."""


def test_a_recorded_search_s_presets_file_is_read(confident, tmp_path, monkeypatch):
    seen = []

    def record(*args):
        seen.append(args[-1])
        raise _Seen

    monkeypatch.setattr(competitors, "fixed_steering", record)
    path = tmp_path / "presets.json"
    path.write_text(presets.BUNDLED.read_text())
    with pytest.raises(_Seen):
        study.baselines_study(confident, Size.quick(), tmp_path, behaviours=("italian",), presets_file=path)
    assert set(seen[0]) == set(presets.PRESETS)
    path.write_text("{}")
    with pytest.raises(ArtifactError):
        study.baselines_study(confident, Size.quick(), tmp_path, behaviours=("italian",), presets_file=path)


def test_the_goals_are_written_and_noted(run):
    out, result = run
    reached = pd.read_csv(out / "baselines" / "goals.csv")
    assert reached["behaviour"].tolist() == ["no_comma", "italian"]
    assert reached["needed"].iloc[1] >= 0.60 and set(reached["method"]) <= set(STEERING)
    noted = [n for n in result.notes if ": goal " in n]
    assert [n.split(":")[0] for n in noted] == ["no_comma", "italian"]
    table = result.table.set_index(["behaviour", "method"])
    for goal in reached.itertuples():  # the chosen method's own test row and multiple choice
        own, unsteered = table.loc[(goal.behaviour, goal.method)], table.loc[(goal.behaviour, "unsteered")]
        assert goal.clean_rate == pytest.approx(own["clean_rate"])
        column = MC_COLUMN.format(language="en")
        assert goal.mc_change_en == pytest.approx(own[column] - unsteered[column])


@pytest.mark.parametrize("fixture", ["run", "judged"])  # nothing clean on validation in run, some in judged
def test_each_steering_is_chosen_by_its_validation_numbers_and_says_when_none_was_clean(fixture, request):
    """The table shows the validation numbers of each steering's chosen setting (the chosen row of its
    validation table), the goal chooses between them by those, and a note says when no setting of a
    steering's validation table had a clean answer."""
    out, result = request.getfixturevalue(fixture)
    table = result.table.set_index(["behaviour", "method"])
    reached = pd.read_csv(out / "baselines" / "goals.csv").set_index("behaviour")
    for behaviour in reached.index:
        folder = out / "baselines" / behaviour
        steered = pd.read_csv(folder / "validation_steering.csv").query("steered and prompt == 'plain'")
        tables = {"fixed": steered, "dynamic": pd.read_csv(folder / "validation_dynamic.csv")}
        for (kind, validation), method in zip(tables.items(), STEERING, strict=True):
            row = table.loc[(behaviour, method)]
            assert row["validation_clean_rate"] in set(validation["clean_rate"])
            assert row["validation_target_rate"] in set(validation["target_rate"])
            said = [n for n in result.notes if n.startswith(f"{behaviour}: {kind} steering: nothing clean")]
            assert len(said) == nothing_clean(validation), (behaviour, kind)
            assert all("best target rate" in n and "the table's row shows that choice" in n for n in said)
        shown = table.loc[behaviour].loc[list(STEERING), ["validation_clean_rate", "validation_target_rate"]]
        preferred = choose_setting(shown.rename(columns=lambda c: c.removeprefix("validation_")))
        assert reached.loc[behaviour, "method"] == preferred.name
