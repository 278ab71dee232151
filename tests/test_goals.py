"""The baselines study's goals: met or missed, by how much and why, from a table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.errors import InvalidArgumentError
from workbench.studies.baselines import METHODS
from workbench.studies.goals import MC_TOLERANCE, STEERING, goal_note, goals

DYNAMIC = STEERING[1]


def _table(
    steering: float,
    dynamic: float,
    instruction: float,
    mc: float,
    behaviour: str = "json",
    dynamic_mc: float = 0.0,
):
    """A baselines table: clean rates per method, and the steering's change in multiple-choice accuracy
    answered by generation (log-likelihood accuracy never moves here)."""
    base = {
        "behaviour": behaviour,
        "target_rate": 0.9,
        "degeneration": 0.1,
        "mc_generation_accuracy_it": np.nan,
    }
    rows = [
        ("unsteered", 0.0, 0.50),
        ("instruction", instruction, 0.50),
        ("steering", steering, 0.50 + mc),
        (DYNAMIC, dynamic, 0.50 + dynamic_mc),
        ("steering at dynamic's mean α", 1.0, 0.50),  # a control, not a candidate
    ]
    return pd.DataFrame(
        [
            {
                **base,
                "method": m,
                "clean_rate": c,
                "mc_generation_accuracy_en": a,
                "mc_loglik_accuracy_en": 0.5,
            }
            for m, c, a in rows
        ]
    )


def test_the_goal_reads_multiple_choice_answered_by_generation_of_the_chosen_steering():
    row = goals(_table(steering=0.5, dynamic=0.2, instruction=0.4, mc=-0.05, dynamic_mc=0.0)).iloc[0]
    assert row["method"] == "steering" and row["mc_change_en"] == pytest.approx(-0.05) and not row["met"]
    assert np.isnan(row["mc_change_it"])  # not asked
    note = goal_note(row)
    assert (
        note.startswith("json: goal missed")
        and "en multiple choice -0.05 (by generation) under steering" in note
    )
    row = goals(_table(steering=0.2, dynamic=0.5, instruction=0.4, mc=-0.05, dynamic_mc=0.01)).iloc[0]
    assert row["method"] == DYNAMIC and row["mc_change_en"] == pytest.approx(0.01) and row["met"]
    loglik_only = _table(0.5, 0.2, 0.4, mc=0.0).drop(columns=["mc_generation_accuracy_en"])
    assert np.isnan(goals(loglik_only).iloc[0]["mc_change_en"])  # a log-likelihood score never counts


def test_the_cleaner_steering_counts_and_both_conditions_must_hold():
    met = goals(_table(steering=0.2, dynamic=0.5, instruction=0.4, mc=-MC_TOLERANCE / 2)).iloc[0]
    assert met["met"] and met["method"] == DYNAMIC and met["clean_gap"] == pytest.approx(0.1)
    assert np.isnan(met["not_fluent"]) and "of its answers" not in goal_note(met)
    assert not goals(_table(0.5, 0.2, 0.4, mc=-0.05)).iloc[0]["met"]  # clean enough, loses MC
    tied = _table(0.0, 0.0, 0.4, mc=0.0)
    tied.loc[tied["method"] == DYNAMIC, "target_rate"] = 0.95  # closer to the goal: its failure
    assert goals(tied).iloc[0]["method"] == DYNAMIC
    assert goals(_table(0.0, 0.0, 0.4, mc=0.0)).iloc[0]["method"] == "steering"  # a full tie: fixed
    assert not goals(_table(0.3, 0.2, 0.4, mc=0.0)).iloc[0]["met"]  # below the instruction
    italian = goals(_table(0.5, 0.2, 0.1, mc=0.0, behaviour="italian")).iloc[0]
    assert italian["needed"] == pytest.approx(0.60) and not italian["met"]


def test_a_table_without_steering_is_refused():
    with pytest.raises(InvalidArgumentError):
        goals(pd.DataFrame({"behaviour": ["json"], "method": ["unsteered"]}))
    table = _table(0.2, 0.2, 0.1, 0.0)
    with pytest.raises(InvalidArgumentError):
        goals(table[~table["method"].isin(STEERING)])


def test_the_steering_methods_are_the_baselines_study_s():
    assert set(STEERING) <= set(METHODS) and "steering at dynamic's mean α" in METHODS
