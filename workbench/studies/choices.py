"""Multiple choice in the studies: both ways of answering, cached with every input in the key, and columns
that say which way.

The Italian and baselines studies score the bundled parallel questions by option log-likelihood
(``by="loglik"``) and by a generated, parsed answer (``by="generation"``, Scalena, Fersini and Nissim's
protocol; the other language's items are ``parallel``, since a steered answer may drift into it). A hook on
generated tokens never touches the answer's log-likelihood, so only the generated answers show steering's
damage there. :func:`cached_choice` stores each run's rows under a key that holds everything that changes
them (:func:`mc_key`); :func:`mc_columns` names each table column after its way (``mc_generation_accuracy_en``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.datasets import MCItem, load_multiple_choice
from workbench.errors import InvalidArgumentError
from workbench.evaluation import SCORER_VERSION
from workbench.evaluation.mc import (
    ANSWER_TOKENS,
    BY,
    DEFAULT_TEMPLATE,
    GENERATION_TEMPLATES,
    mc_changes,
    multiple_choice,
)
from workbench.interventions import AnyIntervention
from workbench.models import Model
from workbench.recipes import cached_rows
from workbench.runner import steering_key

__all__ = ["LANGUAGES", "MC_VERSION", "cached_choice", "mc_columns", "mc_items", "mc_key"]

#: The languages of the bundled parallel questions.
LANGUAGES = ("en", "it")
#: Changes with what a cached multiple-choice run holds, so older files are not read as current.
MC_VERSION = 2


def _digest(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _questions(items: Sequence[MCItem]) -> str:
    return _digest([[i.id, i.language, i.split, i.question, list(i.choices), i.answer] for i in items])


def mc_key(
    fingerprint: str,
    items: Sequence[MCItem],
    *,
    by: str,
    interventions: Sequence[AnyIntervention] = (),
    parallel: Sequence[MCItem] = (),
    template: str | None = None,
    chat: bool = True,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
) -> dict[str, object]:
    """What a multiple-choice run's rows depend on: the model, the questions (ids, languages, splits, texts,
    choices, answers) and their parallel versions, the way and its prompt (the default templates included),
    chat, batch size, the answer budget, every intervention (:func:`~workbench.runner.steering_key`: its
    direction, resolved amount and every knob), the scorer and :data:`MC_VERSION`."""
    generating = by == "generation"
    return {
        "version": MC_VERSION,
        "scorer": SCORER_VERSION,
        "model": fingerprint,
        "by": by,
        "questions": _questions(items),
        "parallel": _questions(parallel) if generating else None,
        "template": template,
        "default_template": GENERATION_TEMPLATES if generating else DEFAULT_TEMPLATE,
        "chat": chat,
        "batch_size": batch_size,
        "max_new_tokens": (ANSWER_TOKENS if max_new_tokens is None else max_new_tokens)
        if generating
        else None,
        "steering": steering_key(interventions),
    }


def mc_items(language: str, n: int) -> tuple[list[MCItem], list[MCItem]]:
    """The first ``n`` bundled test questions in ``language``, and the same questions in the other language."""
    other = next(lang for lang in LANGUAGES if lang != language)
    items = load_multiple_choice("bundled", language=language, split="test")[:n]
    return items, load_multiple_choice("bundled", language=other, split="test")[:n]


def cached_choice(
    model: Model,
    items: Sequence[MCItem],
    path: Path,
    *,
    by: str,
    interventions: Sequence[AnyIntervention] = (),
    parallel: Sequence[MCItem] = (),
    template: str | None = None,
    chat: bool = True,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
) -> pd.DataFrame:
    """:func:`~workbench.evaluation.mc.multiple_choice`'s rows, stored at ``path`` and read back while
    :func:`mc_key` of the same arguments matches (``parallel`` and ``max_new_tokens``: generation only)."""
    options: dict[str, object] = {"chat": chat, "batch_size": batch_size}
    if by == "generation":
        options |= {"parallel": parallel, "max_new_tokens": max_new_tokens}
    key = mc_key(
        model.fingerprint,
        items,
        by=by,
        interventions=interventions,
        template=template,
        **options,  # type: ignore[arg-type]
    )

    def run() -> pd.DataFrame:
        return multiple_choice(
            model,
            items,
            by=by,
            interventions=list(interventions),
            prompt_template=template,
            **options,  # type: ignore[arg-type]
        )

    return cached_rows(path, key, run)


def mc_columns(
    reference: pd.DataFrame | None, rows: pd.DataFrame | None, language: str, by: str
) -> dict[str, float]:
    """``mc_{by}_accuracy_{language}``, ``mc_{by}_gained_*``, ``mc_{by}_lost_*`` (and, answered by
    generation, ``mc_generation_unparsed_*``) of ``rows`` against ``reference``
    (:func:`~workbench.evaluation.mc.mc_changes`); NaN where either is missing."""
    if by not in BY:
        raise InvalidArgumentError(f"by must be one of {', '.join(BY)}, got {by!r}")
    fields = ["accuracy", "gained", "lost", *(["unparsed"] if by == "generation" else [])]
    names = [f"mc_{by}_{field}_{language}" for field in fields]
    if reference is None or rows is None:
        return dict.fromkeys(names, np.nan)
    changes = mc_changes(reference, rows)
    return {name: changes[field] for name, field in zip(names, fields, strict=True)}
