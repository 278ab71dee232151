"""The Italian study end to end on the tiny model (micro scale): tables, figures, gained/lost counts."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch

from workbench.evaluation import is_degenerate
from workbench.evaluation.mc import mc_changes
from workbench.size import Size
from workbench.studies.italian import italian_study


def test_italian_study_tables_and_figures(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    scale = Size(n_train=4, n_validation=3, n_test=3, max_new_tokens=5, layers=(1, 2), batch_size=16, n_mc=6)
    result = italian_study(tiny, scale, tmp_path)
    table = result.table
    assert {"English prompt", "Italian prompt", "English prompt, 'answer in Italian'"} <= set(
        table["setting"]
    )
    assert table["answers_in_italian"].between(0, 1).all()
    assert {"target_rate", "degeneration", "clean_rate"} <= set(table) and "degenerate" not in table
    rows = result.rows  # the one degeneration rule, with the perplexity under the unsteered model
    expected = [
        is_degenerate(r, perplexity=p) for r, p in zip(rows["response"], rows["perplexity"], strict=True)
    ]
    assert rows["degenerate"].tolist() == expected
    assert table["degeneration"].tolist() == rows.groupby("setting", sort=False)["degenerate"].mean().tolist()
    assert (table["n"] == 3).all()
    assert len(result.rows) == table["n"].sum()
    assert result.rows["perplexity"].dtype == float
    assert all(path.exists() for path in result.figures)
    mc = pd.read_csv(tmp_path / "italian" / "multiple_choice.csv")
    assert list(mc.columns) == ["by", "config", "accuracy", "unparsed", "gained", "lost"]
    assert set(mc["by"]) == {"loglik", "generation"} and {"en", "it"} <= set(mc["config"])
    assert (mc.loc[mc["by"] == "loglik", "unparsed"] == 0).all() and mc["unparsed"].between(0, 1).all()
    rows = pd.read_parquet(tmp_path / "italian" / "multiple_choice.parquet")
    assert len(rows) == len(mc) * 6 and rows.loc[rows["by"] == "generation", "response"].notna().all()
    for (by, config), mine in rows.groupby(["by", "config"]):  # gains and losses against the same way
        reference = rows[(rows["by"] == by) & (rows["config"] == config[:2])]
        expected = mc_changes(reference, mine)
        row = mc[(mc["by"] == by) & (mc["config"] == config)].iloc[0]
        assert (row["gained"], row["lost"]) == (expected["gained"], expected["lost"])
        assert row["accuracy"] == pytest.approx(expected["accuracy"])
    assert any(path.name.startswith("mc_upset") for path in result.figures)
    assert any(note.startswith("multiple choice by generation: en ") for note in result.notes)
    written = result.write(tmp_path)
    assert (written / "table.parquet").exists() and (written / "rows.csv").exists()


def test_italian_sweeps_are_rescored_by_the_current_rule(tiny, tmp_path, monkeypatch):
    """The validation sweeps' cached parts hold raw answers: a changed rule shows without generating again."""
    from workbench.evaluation import fluency

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    scale = Size(n_train=4, n_validation=3, n_test=2, max_new_tokens=5, layers=(1,), batch_size=16, n_mc=2)
    italian_study(tiny, scale, tmp_path)
    parts = {p: p.stat().st_mtime_ns for p in (tmp_path / "italian").glob("sweep_*/**/*.parquet")}
    monkeypatch.setattr(fluency, "MAX_NGRAM_REPEAT_RATE", -1.0)  # every answer with a word now loops
    italian_study(tiny, scale, tmp_path)
    assert parts and {p: p.stat().st_mtime_ns for p in parts} == parts
    for variant in ("it", "en_answer_it"):
        sweep = pd.read_csv(tmp_path / "italian" / f"sweep_{variant}.csv")
        assert (sweep["degeneration"] == 1).all()


def test_a_quick_study_builds_the_preset_from_its_own_few_pairs(tiny, tmp_path, monkeypatch):
    from workbench import presets
    from workbench.presets import Preset
    from workbench.recipes import Recipe

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    preset = Preset(
        "italian",
        "italian",
        {"tiny-llama": Recipe("last_prompt", (1,), coef=0.2, unit="residual_norm")},
        n_train=48,
    )
    monkeypatch.setitem(presets.PRESETS, "italian", preset)
    size = Size(3, 2, 2, 3, layers=(1,), batch_size=16, n_mc=2, name="quick")
    result = italian_study(tiny, size, tmp_path)
    assert "English prompt + steering (preset)" in set(result.table["setting"])
    assert presets.path(tiny, "italian", 3).exists() and not presets.path(tiny, "italian").exists()
    assert presets.provenance(tiny, "italian", n_train=3)["n_train"] == 3
    assert any("(3 train pairs)" in note for note in result.notes)
    mc = pd.read_csv(tmp_path / "italian" / "multiple_choice.csv").set_index(["by", "config"])
    for by in ("loglik", "generation"):  # the steering's multiple choice, both ways
        steered = mc.loc[(by, "it + steering (preset)")]
        assert steered["gained"] + steered["lost"] <= 2 and 0 <= steered["accuracy"] <= 1


def _counting_generate(monkeypatch) -> list[str]:
    """Record every prompt the grid runner sends to generation (validation sweeps and test grid alike)."""
    from workbench import runner

    generated: list[str] = []
    real = runner.generate

    def counting(model, prompts, **kwargs):
        generated.extend(prompts)
        return real(model, prompts, **kwargs)

    monkeypatch.setattr(runner, "generate", counting)
    return generated


def test_a_rerun_generates_nothing_and_a_lost_part_regenerates_only_itself(writer, tmp_path, monkeypatch):
    """The test answers are run_grid parts keyed by the fingerprint: a stopped study resumes where it left off."""
    from workbench import presets
    from workbench.presets import Preset
    from workbench.recipes import Recipe

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    preset = Preset(
        "italian",
        "italian",
        {"tiny-llama": Recipe("last_prompt", (1,), coef=0.2, unit="residual_norm")},
        n_train=48,
    )
    monkeypatch.setitem(presets.PRESETS, "italian", preset)  # steered rows in the grid too
    size = replace(Size.quick(), max_new_tokens=4, batch_size=2, n_mc=2)  # a part per batch of 2 answers
    first = italian_study(writer, size, tmp_path)
    grid = tmp_path / "italian" / "grids" / f"{writer.fingerprint}-{size.max_new_tokens}"
    parts = sorted(grid.glob("part-*.parquet"))
    assert "Italian prompt + steering (preset)" in set(first.rows["setting"])
    assert len(parts) == len(first.rows) // size.batch_size >= 5
    generated = _counting_generate(monkeypatch)
    again = italian_study(writer, size, tmp_path)
    assert generated == []
    pd.testing.assert_frame_equal(again.rows, first.rows)
    pd.testing.assert_frame_equal(again.table, first.table)
    lost = pd.read_parquet(parts[1])
    parts[1].unlink()
    resumed = italian_study(writer, size, tmp_path)
    assert sorted(generated) == sorted(lost["prompt"])
    assert len(list(grid.glob("part-*.parquet"))) == len(parts)
    pd.testing.assert_frame_equal(resumed.rows, first.rows)
    pd.testing.assert_frame_equal(resumed.table, first.table)


def test_build_vector_is_the_diff_in_means_of_the_variants_train_pairs(tiny, tmp_path, monkeypatch):
    """from_dataset gives the vector the study built by hand before: same directions, stats and provenance."""
    from workbench.activations import collect
    from workbench.datasets import load
    from workbench.studies.italian import build_vector
    from workbench.vectors import SteeringVector

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    train = load("italian", "train", variant="en_answer_it").head(3)
    pos, neg = collect(tiny, train.positive), collect(tiny, train.negative)
    by_hand = SteeringVector.from_activations(
        pos, neg, dataset="italian:en_answer_it", dataset_hash=train.hash
    )
    built = build_vector(tiny, "en_answer_it", 3)
    assert torch.equal(built.directions, by_hand.directions) and built.layers == by_hand.layers
    assert built.stats == by_hand.stats
    drop = {"created"}
    assert {k: v for k, v in built.provenance.items() if k not in drop} == {
        k: v for k, v in by_hand.provenance.items() if k not in drop
    }
    assert built.provenance["dataset"] == "italian:en_answer_it"
