"""The baselines study's goals: met or missed, by how much and why, from a table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.errors import InvalidArgumentError
from workbench.studies.goals import MC_TOLERANCE, goal_note, goals

PUBLISHED = (
    Path(__file__).resolve().parents[1]
    / "docs"
    / "results"
    / "baselines"
    / "smollm2-italian"
    / "baselines.csv"
)


def _table(steering: float, dynamic: float, instruction: float, mc: float, behaviour: str = "json"):
    base = {"behaviour": behaviour, "target_rate": 0.9, "degeneration": 0.1, "mc_accuracy_it": np.nan}
    rows = [
        ("unsteered", 0.0, 0.50),
        ("instruction", instruction, 0.50),
        ("steering", steering, 0.50 + mc),
        ("dynamic steering", dynamic, np.nan),
    ]
    return pd.DataFrame([{**base, "method": m, "clean_rate": c, "mc_accuracy_en": a} for m, c, a in rows])


def test_the_published_italian_table_misses_by_the_numbers_it_shows():
    table = pd.read_csv(PUBLISHED)
    row = goals(table).iloc[0]
    methods = table.set_index("method")
    best = methods.loc[row["method"]]
    assert row["method"] in ("steering", "dynamic steering")
    assert row["clean_rate"] == pytest.approx(
        methods.loc[["steering", "dynamic steering"], "clean_rate"].max()
    )
    assert row["needed"] == pytest.approx(0.60)  # above the instruction's
    assert row["clean_gap"] == pytest.approx(best["clean_rate"] - 0.60)
    fixed, unsteered = methods.loc["steering"], methods.loc["unsteered"]
    assert row["mc_change_en"] == pytest.approx(fixed["mc_accuracy_en"] - unsteered["mc_accuracy_en"])
    assert row["mc_change_it"] == pytest.approx(fixed["mc_accuracy_it"] - unsteered["mc_accuracy_it"])
    assert not row["met"] and row["not_fluent"] == pytest.approx(1 - best["fluent_rate"])
    note = goal_note(row)
    assert note.startswith("italian: goal missed") and "not fluent" in note and "en multiple choice" in note


def test_the_cleaner_steering_counts_and_both_conditions_must_hold():
    met = goals(_table(steering=0.2, dynamic=0.5, instruction=0.4, mc=-MC_TOLERANCE / 2)).iloc[0]
    assert met["met"] and met["method"] == "dynamic steering" and met["clean_gap"] == pytest.approx(0.1)
    assert np.isnan(met["not_fluent"]) and "of its answers" not in goal_note(met)
    assert not goals(_table(0.5, 0.2, 0.4, mc=-0.05)).iloc[0]["met"]  # clean enough, loses MC
    tied = _table(0.0, 0.0, 0.4, mc=0.0)
    tied.loc[tied["method"] == "dynamic steering", "target_rate"] = 0.95  # closer to the goal: its failure
    assert goals(tied).iloc[0]["method"] == "dynamic steering"
    assert goals(_table(0.0, 0.0, 0.4, mc=0.0)).iloc[0]["method"] == "steering"  # a full tie: fixed
    assert not goals(_table(0.3, 0.2, 0.4, mc=0.0)).iloc[0]["met"]  # below the instruction
    italian = goals(_table(0.5, 0.2, 0.1, mc=0.0, behaviour="italian")).iloc[0]
    assert italian["needed"] == pytest.approx(0.60) and not italian["met"]


def test_a_table_without_steering_is_refused():
    with pytest.raises(InvalidArgumentError):
        goals(pd.DataFrame({"behaviour": ["json"], "method": ["unsteered"]}))
    table = _table(0.2, 0.2, 0.1, 0.0)
    with pytest.raises(InvalidArgumentError):
        goals(table[~table["method"].isin(["steering", "dynamic steering"])])
