"""Rating a presets document's recipes again, with the rating judge of today.

A preset ships only when the judge rated its validation answers fluent (:func:`workbench.presets.withheld`),
so a changed judge (its rubric, its rules) must rate the shipped recipes again before the document can be
trusted. :func:`rate_presets` answers each recipe's recorded validation prompts again (the frontier search's
confirmation prompts, disjoint from those it was selected on) and records the new rating; reading the
document ships or withdraws each recipe by it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from workbench import presets
from workbench.behaviours import BEHAVIOURS, build_vectors
from workbench.errors import InvalidArgumentError
from workbench.evaluation.rating_judge import RatingJudge
from workbench.models import Model
from workbench.recipes import Recipe, answer
from workbench.size import Size
from workbench.studies.compare import budgeted
from workbench.studies.search import rated_means

__all__ = ["rate_presets"]

_MEANS = ("mean_concept", "mean_relevance", "mean_fluency", "mean_score")


def rate_presets(
    model: Model, judge: RatingJudge, file: str | os.PathLike[str] = presets.BUNDLED, *, batch_size: int = 40
) -> dict[str, Any]:
    """The presets document in ``file`` with each of ``model``'s recipes (shipped or withdrawn) rated again by
    ``judge`` on the prompts its validation numbers were measured on (:func:`~workbench.presets.parse` checks
    the result). The recorded validation rates are the text rules' and stay as they are."""
    doc = json.loads(Path(file).read_text(encoding="utf-8"))
    size = Size.frontier()  # the search's: the selection prompts, then the confirmation prompts
    rated = 0
    for entry in doc["presets"].values():
        found = entry["recipes"].get(model.name)
        if found is None:
            continue
        behaviour = budgeted(BEHAVIOURS[entry["behaviour"]], size)
        recipe = Recipe.from_json(found["recipe"])
        vectors = build_vectors(model, behaviour, entry["n_train"], sources=(recipe.source,))
        rows = answer(
            model, behaviour, vectors, [recipe], "validation", 4 * size.n_validation, batch_size=batch_size
        )
        selection = {item.id for item in behaviour.items("validation", size.n_validation).items}
        confirmation = rows[~rows["id"].isin(selection)].reset_index(drop=True)
        means = rated_means(behaviour, confirmation, judge).iloc[0]
        found["rating"] = {
            "judge": judge.name,
            "n": len(confirmation),
            "answers": "the validation prompts above answered again with the recipe, rated by "
            "`workbench presets rate`",
            **{k: round(float(means[k]), 4) for k in _MEANS},
        }
        rated += 1
    if not rated:
        raise InvalidArgumentError(f"{file} has no recipe for {model.name}: pass a model it has recipes for")
    presets.parse(doc, str(file))
    return doc
