"""The instruction-following and ablation studies and study sizes, on the tiny model."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from workbench.errors import InvalidArgumentError
from workbench.size import Size
from workbench.studies.ablation import ablation_study
from workbench.studies.composition import composition_study
from workbench.studies.format import FORMATS, SETTINGS, format_study
from workbench.studies.length import length_study

MICRO = Size(
    n_train=6, n_validation=4, n_test=4, max_new_tokens=6, layers=(1, 2), batch_size=32, name="quick"
)


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
    assert not Size.full().is_quick and not Size.frontier().is_quick and not Size.large().is_quick
    assert Size.named("quick") == Size.quick() and Size.named("full") == Size.full()
    assert Size.named("large") == Size.large()
    assert (
        Size.named("frontier") == Size.frontier() and Size.from_json(Size.large().to_json()) == Size.large()
    )
    with pytest.raises(InvalidArgumentError, match="unknown size 'huge'"):
        Size.named("huge")
    assert not Size(4, 2, 2, 8).is_quick  # a size built by hand is "custom", whatever its counts


def test_a_large_models_size_confirms_on_prompts_disjoint_from_its_selection():
    large = Size.large()
    assert large.n_validation == Size.frontier().n_validation  # the confirmation round's items exist
    assert Size.large().candidate_layers(28) == [9, 13, 16]  # Qwen2.5-1.5B: the middle third


def test_the_frontier_and_presets_studies_run_at_the_searchs_size_in_a_full_report():
    from workbench.studies.registry import get

    assert get("frontier").size("full") == get("presets").size("full") == Size.frontier()
    assert get("format").size("full") == Size.full() and get("baselines").size("full") == Size.baselines()
    assert get("frontier").size("large") == Size.large()  # the large report has its own size


def test_format_study_table(tiny, run_dir):
    result = format_study(tiny, MICRO, run_dir)
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
    result = length_study(tiny, MICRO, run_dir, coefs=coefs)
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
    assert at_most["target_rate"].between(0, 1).all()


def test_composition_study_table(tiny, run_dir):
    result = composition_study(tiny, MICRO, run_dir, format_name="title", length_name="one_sentence")
    table = result.table
    assert list(table.columns) == ["setting", "strength", "format", "length", "both", "degeneration", "n"]
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
    strengths = table.set_index("setting")["strength"]
    for rule in ("authors'", "summed"):  # each rule named, and its fixed control at its own mean α
        assert strengths[f"both vectors (own layers, dynamic, {rule})"] == f"dynamic ({rule})"
        assert strengths[f"both vectors (own layers, fixed at {rule} mean α)"].startswith(
            f"fixed at {rule} mean α ("
        )
    rates = table[table["strength"].str.startswith("dynamic")][["format", "length", "both", "degeneration"]]
    assert len(rates) == 2 and ((rates >= 0) & (rates <= 1)).all(axis=None)
    assert any(note.startswith("dynamic (authors'): ") and "mean α title" in note for note in result.notes)
    assert any("the authors run dynamic (authors')" in note for note in result.notes)
    # The dynamic rows were generated under their own cache keys (one strength per vector), not served
    # the fixed rows' answers: the tiny model's answers are empty either way, so the stored parts tell.
    parts = pd.concat(pd.read_parquet(p) for p in (run_dir / "composition" / "grids").rglob("*.parquet"))
    keys = parts.groupby("interventions")["key"].nunique()
    for rule, spec in (("authors'", "dyn2m"), ("summed", "dyn2")):
        dynamic = result.rows[result.rows["setting"] == f"both vectors (own layers, dynamic, {rule})"]
        label = dynamic["interventions"].iloc[0]
        assert f"+{spec}[title]; " in label and label.endswith(f"+{spec}[one_sentence]")
        assert keys[label] == MICRO.n_test
    _written(result, run_dir)


def test_composition_controls_steer_at_the_traced_mean_strength(tiny, run_dir):
    """Each control is the dynamic run's interventions without schedule, each coef × the mean α a traced
    generation of the same test prompts gives its vector."""
    from dataclasses import replace

    from workbench.datasets import load
    from workbench.generation import generate
    from workbench.schedules import StrengthTrace, mean_strength
    from workbench.studies.dac import AUTHORS, SUMMED
    from workbench.studies.steps import select

    result = composition_study(tiny, MICRO, run_dir, format_name="title", length_name="one_sentence")
    sels = [select(tiny, name, MICRO, run_dir) for name in ("title", "one_sentence")]
    queries = load("title", "test").head(MICRO.n_test).negative
    for rule in (AUTHORS, SUMMED):
        ivs = [rule.schedule([sel.or_add()], group=sel.name)[0] for sel in sels]
        trace = StrengthTrace()
        generate(tiny, queries, max_new_tokens=MICRO.max_new_tokens, interventions=ivs, trace=trace)
        means = mean_strength(trace)
        control = [replace(iv, schedule=None, coef=iv.coef * means[iv.label]) for iv in ivs]
        rows = result.rows[
            result.rows["setting"] == f"both vectors (own layers, fixed at {rule.name} mean α)"
        ]
        assert set(rows["interventions"]) == {"; ".join(iv.label for iv in control)}
        assert control[0].positions == (rule.positions or sels[0].or_add().positions)


def test_ablation_study_table(tiny, run_dir):
    result = ablation_study(tiny, MICRO, run_dir, names=("bullet_lists",), seeds=(0, 1, 2))
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


def test_a_fallback_vector_counts_at_the_strength_it_is_used_at_alone():
    """The composition's sum and dynamic settings scale each vector by ``add_coef``, which must be the
    coefficient ``or_add`` steers with, also when validation chose no steering (the fallback)."""
    from workbench.interventions import Intervention
    from workbench.studies.steps import Selected
    from workbench.vectors import SteeringVector

    vector = SteeringVector.from_activations(torch.randn(4, 3, 8), torch.randn(4, 3, 8))

    def selected(iv):
        return Selected("x", vector, iv, 1, pd.DataFrame(), "none", 0.0, 0.0)

    fallback = selected(None)
    assert fallback.add_coef == fallback.or_add().coef == 2.0
    assert selected(Intervention(vector, 1, "add", 3.0)).add_coef == 3.0
    assert selected(Intervention(vector, 1, "set_projection")).add_coef == 1.0
