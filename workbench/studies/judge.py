"""The rating judge against the hand-labelled answers: how often its ratings are a person's.

The run's model is the judge (:class:`~workbench.evaluation.rating_judge.RatingJudge`; a chat model); every
answer of the labelled set (:data:`~workbench.evaluation.rating.LABELS`) is rated by :func:`~workbench.
evaluation.rating.rate` (concept by rule, relevance and fluency by the judge) and compared with its gold
ratings per split: exact agreement and Cohen's kappa on the 0-1-2 scale, and agreement on zero against
non-zero (the decision behind "clean": score above 0).
"""

from __future__ import annotations

import hashlib
import os
import time

import pandas as pd

from workbench.evaluation.rating import LABELS, agreement, rate_labels
from workbench.evaluation.rating_judge import RUBRICS, RatingJudge
from workbench.models import Model
from workbench.size import Size
from workbench.studies.registry import Study
from workbench.studies.result import StudyResult

__all__ = ["STUDY", "judge_study"]


def judge_study(
    model: Model,
    size: Size,
    out_dir: str | os.PathLike[str],
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> StudyResult | str:
    """``model`` as the judge of the labelled set (every size rates all of it); rows: the labelled answers
    with their ``rated_`` ratings; table: :func:`~workbench.evaluation.rating.agreement` per split, on all
    its answers, the hand-written ones and those models generated (``answers``)."""
    if not model.is_chat:
        return f"{model.name} is a base model: the judge must be a chat model"
    started = time.process_time()
    rated = rate_labels(RatingJudge(model, batch_size=batch_size))
    seconds = time.process_time() - started
    answers = {"all": pd.Series(True, index=rated.index), "hand-written": rated["source"] == "hand-written"}
    answers["generated"] = ~answers["hand-written"]
    table = pd.concat(
        [
            agreement(rated[(rated["split"] == split) & chosen]).assign(split=split, answers=name)
            for split in ("dev", "test")
            for name, chosen in answers.items()
        ],
        ignore_index=True,
    )
    missed = table[(table["agreement"] < 0.9) & (table["answers"] == "all")]
    notes = [
        f"Judge {model.name}: {len(rated)} labelled answers rated in {seconds:.0f} CPU s.",
        "Agreement below 0.9 on: "
        + ", ".join(f"{r.rating} ({r.split} {r.agreement:.2f})" for r in missed.itertuples())
        if len(missed)
        else "Agreement is at least 0.9 on every rating and split.",
    ]
    return StudyResult("judge", rated, table, notes=notes)


STUDY = Study(
    "judge",
    "The rating judge against hand-labelled answers",
    judge_study,
    order=200,
    inputs=lambda: {
        "labels": hashlib.sha256(LABELS.read_bytes()).hexdigest(),
        "rubrics": hashlib.sha256(repr(sorted(RUBRICS.items())).encode()).hexdigest(),
    },
)
