"""The seed's table (Scalena et al.'s gentle push against prompting and residual steering) on the tiny model."""

from __future__ import annotations

import pandas as pd
import pytest

from workbench import runner
from workbench.evaluation import mc
from workbench.size import Size
from workbench.studies.registry import get
from workbench.studies.seed_italian import CHANGED, seed_italian_study


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "seed_cache"))


def test_the_table_has_every_setting_and_a_rerun_generates_nothing(tiny, tmp_path, monkeypatch):
    result = seed_italian_study(tiny, Size.quick(), tmp_path, k=2, shots=2, lora=False)
    table = result.table.set_index("setting")
    assert list(table.index) == [
        "unsteered",
        "Italian prompt",
        "instruction",
        "residual vector, every position",
        "residual vector, generated, fading",
        "gentle push",
    ]
    assert (
        table.loc["gentle push", "steering"].startswith("push@")
        and "fade8" in table.loc["gentle push", "steering"]
    )
    assert (
        table.loc["residual vector, generated, fading", "steering"]
        == table.loc["residual vector, every position", "steering"]
    )
    for by in ("generation", "loglik"):
        for lang in ("en", "it"):
            changed = table.loc[list(CHANGED), f"mc_{by}_accuracy_{lang}"]
            assert (
                changed.between(0, 1).all()
                and table.loc[["Italian prompt", "instruction"], f"mc_{by}_accuracy_{lang}"].isna().all()
            )
    assert (table["n"] == Size.quick().n_test).all() and table["langdetect_it"].between(0, 1).all()
    assert table["distinct_answers"].between(1 / Size.quick().n_test, 1).all()
    assert any(note.startswith("goal ") for note in result.notes) and "LoRA not run" in result.notes[-1]
    answers = result.rows
    assert {"on_target", "degenerate", "clean", "langdetect_it", "perplexity"} <= set(answers)
    assert (tmp_path / "seed_italian" / "push.safetensors").exists()

    def refuse(*args, **kwargs):
        raise AssertionError("the rerun generated text")

    monkeypatch.setattr(runner, "generate", refuse)
    monkeypatch.setattr(mc, "generate", refuse)
    again = seed_italian_study(tiny, Size.quick(), tmp_path, k=2, shots=2, lora=False)
    pd.testing.assert_frame_equal(again.table, result.table)


def test_it_is_declared_on_request_with_the_authors_knobs():
    study = get("seed_italian")
    assert study.report == () and study.size("large") == Size.baselines()
    knobs = study.knobs()
    assert (knobs["k"].default, knobs["shots"].default, knobs["alpha"].default) == (30, 5, 1.5)
    assert study.options_for("large") == {"lora": False}
