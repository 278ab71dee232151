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
    validation: tuple[float, float] | None = None,
):
    """A baselines table: test clean rates per method, the steering's change in multiple-choice accuracy
    answered by generation (log-likelihood accuracy never moves here), and the validation clean rates fixed
    and dynamic steering were chosen by (default: their test ones; target rate 0.9 on both splits)."""
    fixed_validation, dynamic_validation = validation or (steering, dynamic)
    base = {
        "behaviour": behaviour,
        "target_rate": 0.9,
        "degeneration": 0.1,
        "mc_generation_accuracy_it": np.nan,
    }
    rows = [
        ("unsteered", 0.0, 0.50, np.nan),
        ("instruction", instruction, 0.50, np.nan),
        ("steering", steering, 0.50 + mc, fixed_validation),
        (DYNAMIC, dynamic, 0.50 + dynamic_mc, dynamic_validation),
        ("steering at dynamic's mean α", 1.0, 0.50, np.nan),  # a control, not a candidate
    ]
    return pd.DataFrame(
        [
            {
                **base,
                "method": m,
                "clean_rate": c,
                "validation_clean_rate": v,
                "validation_target_rate": 0.9 if np.isfinite(v) else np.nan,
                "mc_generation_accuracy_en": a,
                "mc_loglik_accuracy_en": 0.5,
            }
            for m, c, a, v in rows
        ]
    )


def test_the_steering_is_chosen_on_validation_not_on_test():
    """Dynamic steering is cleaner on validation, fixed steering on test: the goal is dynamic's, read on its
    own test row, and a control cleaner than both is never a candidate."""
    table = _table(steering=0.9, dynamic=0.3, instruction=0.4, mc=0.0, validation=(0.2, 0.5))
    row = goals(table).iloc[0]
    assert row["method"] == DYNAMIC and row["clean_rate"] == pytest.approx(0.3) and not row["met"]
    assert row["validation_clean_rate"] == pytest.approx(0.5)
    assert "(chosen on validation: clean 0.50, on target 0.90) clean 0.30 on test" in goal_note(row)
    fixed = goals(_table(steering=0.3, dynamic=0.9, instruction=0.4, mc=0.0, validation=(0.5, 0.2)))
    assert fixed.iloc[0]["method"] == "steering" and not fixed.iloc[0]["met"]
    scored = table.assign(validation_mean_score=[np.nan, np.nan, 0.7, 0.6, np.nan])  # a judge rated
    assert goals(scored).iloc[0]["method"] == "steering"
    with pytest.raises(InvalidArgumentError, match="validation_clean_rate"):
        goals(table.drop(columns=["validation_clean_rate"]))


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
    row = goals(_table(steering=0.2, dynamic=0.5, instruction=0.4, mc=0.0, dynamic_mc=-0.05)).iloc[0]
    assert row["method"] == DYNAMIC and row["mc_change_en"] == pytest.approx(-0.05) and not row["met"]
    loglik_only = _table(0.5, 0.2, 0.4, mc=0.0).drop(columns=["mc_generation_accuracy_en"])
    assert np.isnan(goals(loglik_only).iloc[0]["mc_change_en"])  # a log-likelihood score never counts


def test_the_cleaner_steering_counts_and_both_conditions_must_hold():
    met = goals(_table(steering=0.2, dynamic=0.5, instruction=0.4, mc=-MC_TOLERANCE / 2)).iloc[0]
    assert met["met"] and met["method"] == DYNAMIC and met["clean_gap"] == pytest.approx(0.1)
    assert np.isnan(met["not_fluent"]) and "of its answers" not in goal_note(met)
    assert not goals(_table(0.5, 0.2, 0.4, mc=-0.05)).iloc[0]["met"]  # clean enough, loses MC
    tied = _table(0.0, 0.0, 0.4, mc=0.0)
    tied.loc[tied["method"] == DYNAMIC, "validation_target_rate"] = 0.95  # more on target: its failure
    assert goals(tied).iloc[0]["method"] == DYNAMIC
    tie = _table(0.0, 0.0, 0.4, mc=0.0)
    assert goals(tie).iloc[0]["method"] == goals(tie[::-1]).iloc[0]["method"] == "steering"  # a full tie
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
