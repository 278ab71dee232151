"""The one selection rule: mean score first (clean rate where no judge rated), then target rate."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from workbench.errors import InvalidArgumentError
from workbench.evaluation.selection import choose_setting, nothing_clean, rank_settings, selection_key


def _table(**columns):
    return pd.DataFrame({"setting": list("abcd"), **columns})


def test_score_comes_first_then_target_rate_then_tie_breaks_then_order():
    table = _table(
        mean_score=[0.5, 1.2, 1.2, 1.2],
        clean_rate=[0.9, 0.4, 0.4, 0.4],  # the judge's score outranks a text rule's clean rate
        target_rate=[1.0, 0.5, 0.7, 0.7],
        size=[1, 1, 3, 2],
    )
    assert selection_key(table) == "mean_score"
    assert choose_setting(table)["setting"] == "c"  # listed first among the best
    assert choose_setting(table, ("size",))["setting"] == "d"
    assert rank_settings(table)["setting"].tolist() == ["c", "d", "b", "a"]


def test_without_a_judge_the_clean_rate_decides_and_nothing_clean_picks_the_best_target():
    unrated = _table(
        mean_score=[math.nan] * 4, clean_rate=[0.0, 0.2, 0.2, 0.1], target_rate=[0.9, 0.3, 0.4, 0.8]
    )
    assert selection_key(unrated) == "clean_rate" and choose_setting(unrated)["setting"] == "c"
    assert not nothing_clean(unrated)
    dead = unrated.assign(clean_rate=0.0)
    assert nothing_clean(dead) and choose_setting(dead)["setting"] == "a"  # never the weakest


def test_bad_tables_are_refused_in_one_line():
    with pytest.raises(InvalidArgumentError, match="empty"):
        choose_setting(_table(clean_rate=[0.1] * 4, target_rate=[0.1] * 4).iloc[:0])
    with pytest.raises(InvalidArgumentError, match="target_rate"):
        choose_setting(_table(clean_rate=[0.1] * 4))
    with pytest.raises(InvalidArgumentError, match="mean_score or clean_rate"):
        choose_setting(_table(target_rate=[0.1] * 4))
    with pytest.raises(InvalidArgumentError, match="no column 'size'"):
        choose_setting(_table(clean_rate=[0.1] * 4, target_rate=[0.1] * 4), ("size",))
