"""The one rule that picks a competitor's setting on validation: best mean score, then best target rate.

Every table that compares methods chooses each method's knobs (strength, layer, bound, adapter) with
:func:`rank_settings` / :func:`choose_setting` on validation answers only. The score is AxBench's
(:func:`~workbench.evaluation.rating.rate`: harmonic mean of concept, relevance and fluency, 0 if any is 0),
averaged over the answers (``mean_score``); where no judge rated the answers it is unknown, and the rule
reads ``clean_rate`` in its place (:func:`selection_key` says which). Ties go to the higher
``target_rate``, then to the caller's own tie-breaks, then to the setting listed first. When no setting
is clean on validation the choice is still made by that rule (the best target rate among settings that all
score 0) and :func:`nothing_clean` lets the table say so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from workbench.errors import InvalidArgumentError

__all__ = ["choose_setting", "nothing_clean", "rank_settings", "selection_key"]


def selection_key(table: pd.DataFrame) -> str:
    """``mean_score`` where the table has a known one, else ``clean_rate``."""
    if "mean_score" in table and table["mean_score"].notna().any():
        return "mean_score"
    if "clean_rate" not in table:
        raise InvalidArgumentError("a table to choose from needs a mean_score or clean_rate column")
    return "clean_rate"


def rank_settings(table: pd.DataFrame, tie_breaks: Sequence[str] = ()) -> pd.DataFrame:
    """``table``'s rows, best first: :func:`selection_key` (higher first, unknown last), ``target_rate``
    (higher first), each of ``tie_breaks`` (lower first; unknown last), then the listed order."""
    if "target_rate" not in table:
        raise InvalidArgumentError("a table to choose from needs a target_rate column")
    key = selection_key(table)
    missing = [c for c in tie_breaks if c not in table]
    if missing:
        raise InvalidArgumentError(f"no column {missing[0]!r} to break ties with")
    sort = {
        "_s": -table[key].astype(float).fillna(-np.inf),
        "_t": -table["target_rate"].astype(float).fillna(-np.inf),
        **{f"_b{i}": table[c].astype(float).fillna(np.inf) for i, c in enumerate(tie_breaks)},
        "_k": np.arange(len(table)),
    }
    order = table.assign(**sort).sort_values(list(sort), kind="stable")
    return order.drop(columns=list(sort))


def choose_setting(table: pd.DataFrame, tie_breaks: Sequence[str] = ()) -> pd.Series:
    """The first row of :func:`rank_settings`."""
    if table.empty:
        raise InvalidArgumentError("no setting to choose from: the validation table is empty")
    return rank_settings(table, tie_breaks).iloc[0]


def nothing_clean(table: pd.DataFrame) -> bool:
    """Whether no setting of ``table`` has a clean answer (``clean_rate`` 0 everywhere)."""
    return bool((table["clean_rate"].fillna(0) == 0).all())
