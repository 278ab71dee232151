"""Choosing a trained vector's strength on validation prompts, by the one scorer's clean rate."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import pandas as pd

from workbench.datasets import ContrastiveSet
from workbench.errors import InvalidArgumentError
from workbench.evaluation.perplexity import perplexity
from workbench.evaluation.reference import Judge
from workbench.evaluation.scoring import score_answers
from workbench.evaluation.selection import choose_setting
from workbench.finetune.evaluate import target_for
from workbench.generation import generate
from workbench.models import Model
from workbench.vectors import SteeringVector

__all__ = ["choose_strength"]


def choose_strength(
    model: Model,
    vector: SteeringVector,
    validation: ContrastiveSet,
    coefs: Sequence[float],
    *,
    target: str | None = None,
    max_new_tokens: int = 64,
    judge: Judge | None = None,
    batch_size: int = 16,
) -> tuple[float, pd.DataFrame]:
    """The ``coef`` (in ``diff_norm`` units: multiples of the trained vector) with the best clean rate on
    ``validation``'s plain prompts, and one row per coef (``coef, target_rate, degeneration, clean_rate``).

    The vector is added at every position of each of its layers; answers are greedy and scored by
    :func:`~workbench.evaluation.scoring.score_answers` with ``target`` (default: the dataset's own rule),
    their perplexity under the unmodified model and, given a ``judge``, its fluency verdict. Ties go to the
    higher target rate, then the smaller coef. All coefs run as one batched generation.
    """
    if (
        isinstance(coefs, str)
        or not coefs
        or not all(isinstance(c, numbers.Real) and math.isfinite(c) for c in coefs)
    ):
        raise InvalidArgumentError(f"coefs must be one or more finite numbers, got {coefs!r}")
    rule = target_for(validation, target)
    prompts = validation.negative
    rows = [vector.interventions(float(c)) for c in coefs for _ in prompts]
    answers = generate(
        model,
        prompts * len(coefs),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        row_interventions=rows,
    )
    ppl = perplexity(model, prompts * len(coefs), answers, batch_size=batch_size)
    fluent = None if judge is None else list(judge(prompts * len(coefs), answers)["fluent_reference"])
    grid = []
    for k, coef in enumerate(coefs):
        part = slice(k * len(prompts), (k + 1) * len(prompts))
        verdict = None if fluent is None else fluent[part]
        scored = score_answers(rule, validation.items, answers[part], ppl[part], verdict)
        grid.append(
            {
                "coef": float(coef),
                "target_rate": scored["on_target"].mean(),
                "degeneration": scored["degenerate"].mean(),
                "clean_rate": scored["clean"].mean(),
            }
        )
    table = pd.DataFrame(grid)
    best = choose_setting(table.assign(size=table["coef"].abs()), ("size",))
    return float(best["coef"]), table
