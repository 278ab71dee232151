"""How far steering is from the baselines study's goals (issue 19), and why, from its table alone.

The goal per behaviour: steering alone, fixed or dynamic under the authors' rule (:data:`STEERING`; the one
:func:`~workbench.evaluation.selection.choose_setting` prefers by the validation numbers each was chosen by,
``validation_*``, never by the test split's), reaches at least the instruction's clean rate on test, and at
least :data:`MIN_CLEAN` where one is set (Italian: 0.60), while that steering keeps its own multiple-choice
accuracy within :data:`MC_TOLERANCE` of the unmodified model in each language asked. Accuracy is the one
*answered by generation* (``mc_generation_accuracy_*``, the seed's protocol, which dynamic steering has too):
a hook on generated tokens never touches an option's log-likelihood, so ``mc_loglik_*`` cannot show that
damage. The fixed control at the dynamic run's mean strength is a comparison, not a candidate: its strength
is read off the test prompts. Where the goal is missed, :func:`goals` says by how much and what its answers
fail on: the shares that are off target, degenerate and, where a reference judged them, not fluent (an
answer can fail on several).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.errors import InvalidArgumentError
from workbench.evaluation.selection import choose_setting

__all__ = ["MC_COLUMN", "MC_TOLERANCE", "MIN_CLEAN", "STEERING", "VALIDATION", "goal_note", "goals"]

#: The clean rate steering must reach whatever the instruction's, per behaviour.
MIN_CLEAN = {"italian": 0.60}
#: The largest loss of multiple-choice accuracy (a share of questions) that keeps the goal.
MC_TOLERANCE = 0.02
#: The steering-alone methods of the table, the fixed one first (it wins full ties).
STEERING = ("steering", "dynamic steering (authors')")
#: The multiple-choice accuracy the goal reads, per language: answered by generation.
MC_COLUMN = "mc_generation_accuracy_{language}"
#: The prefix of a table's validation numbers, per steering method: what it was chosen by.
VALIDATION = "validation_"


def _rate(frame: pd.DataFrame, method: str, column: str) -> float:
    rows = frame.loc[frame["method"] == method, column]
    return float(rows.iloc[0]) if len(rows) else np.nan


def goals(table: pd.DataFrame) -> pd.DataFrame:
    """One row per behaviour of a baselines ``table``: the steering method that
    :func:`~workbench.evaluation.selection.choose_setting` prefers by its ``validation_*`` numbers (mean
    score or clean rate, then target rate; full ties: :data:`STEERING`'s order) as ``method``, with those
    (``validation_clean_rate``, ``validation_target_rate``), its test ``clean_rate``, the clean rate needed
    (``needed``: the instruction's, at least :data:`MIN_CLEAN`) and ``clean_gap`` (clean_rate − needed), its
    own change in multiple-choice accuracy answered by generation per language (``mc_change_en``,
    ``mc_change_it``; NaN where not asked), its shares ``off_target``, ``degenerate`` and ``not_fluent`` (NaN
    without a judge), and ``met``."""
    chosen_by = [f"{VALIDATION}clean_rate", f"{VALIDATION}target_rate"]
    missing = {"behaviour", "method", "clean_rate", "target_rate", "degeneration", *chosen_by} - set(table)
    if missing:
        raise InvalidArgumentError(f"not a baselines table: it has no {sorted(missing)} columns")
    out = []
    for behaviour, frame in table.groupby("behaviour", sort=False):
        steering = pd.concat([frame[frame["method"] == m] for m in STEERING], ignore_index=True)
        if steering.empty:
            raise InvalidArgumentError(
                f"the table has no steering row for {behaviour!r}: run the study again"
            )
        validation = pd.DataFrame(
            {c.removeprefix(VALIDATION): steering[c] for c in steering if c.startswith(VALIDATION)}
        )
        best = steering.loc[choose_setting(validation).name]
        needed = max(_rate(frame, "instruction", "clean_rate"), MIN_CLEAN.get(str(behaviour), 0.0))
        row = {"behaviour": behaviour, "method": best["method"]}
        row |= {c: float(best[c]) for c in chosen_by}
        row |= {"clean_rate": float(best["clean_rate"]), "needed": needed}
        row["clean_gap"] = row["clean_rate"] - needed
        for language in ("en", "it"):
            column = MC_COLUMN.format(language=language)
            row[f"mc_change_{language}"] = (
                _rate(frame, str(best["method"]), column) - _rate(frame, "unsteered", column)
                if column in frame
                else np.nan
            )
        fluent = float(best["fluent_rate"]) if "fluent_rate" in best else np.nan
        judged = bool(best.get("clean_with_reference", False))
        row |= {
            "off_target": 1.0 - float(best["target_rate"]),
            "degenerate": float(best["degeneration"]),
            "not_fluent": 1.0 - fluent if judged else np.nan,
        }
        losses = [row[f"mc_change_{lang}"] for lang in ("en", "it") if np.isfinite(row[f"mc_change_{lang}"])]
        row["met"] = row["clean_gap"] >= 0 and all(loss >= -MC_TOLERANCE for loss in losses)
        out.append(row)
    return pd.DataFrame(out)


def goal_note(row: pd.Series) -> str:
    """One line for a table's notes: the goal met or missed, by how much, and what the answers fail on."""
    head = f"{row['behaviour']}: goal {'met' if row['met'] else 'missed'}"
    chosen = (
        f"chosen on validation: clean {row[f'{VALIDATION}clean_rate']:.2f}, "
        f"on target {row[f'{VALIDATION}target_rate']:.2f}"
    )
    text = f"{head}: {row['method']} ({chosen}) clean {row['clean_rate']:.2f} on test against "
    text += f"{row['needed']:.2f} needed ({row['clean_gap']:+.2f})"
    for language in ("en", "it"):
        change = row[f"mc_change_{language}"]
        if np.isfinite(change):
            text += f"; {language} multiple choice {change:+.2f} (by generation) under {row['method']}"
    if not row["met"]:
        reasons = {"off target": row["off_target"], "degenerate": row["degenerate"]}
        if np.isfinite(row["not_fluent"]):
            reasons["not fluent"] = row["not_fluent"]
        text += "; of its answers " + ", ".join(f"{v:.2f} {k}" for k, v in reasons.items())
    return text
