"""Fluency judged by a reference model: each answer's perplexity under it, relative to natural answers.

Language ID cannot tell Italian from Italian-looking salad, and n-gram rules miss salad that does not loop;
a model that knows the language can. :func:`calibrate` takes the reference model's median perplexity of
each set of *natural* answers on the validation split (the unsteered model's answers, and its answers to
the fully Italian prompts): the ``anchors``. An answer's ``relative_perplexity`` is its perplexity under the
reference divided by the larger anchor (1: as predictable as the less fluent set of natural answers), and
it is ``fluent`` when that is at most the threshold, the ``quantile`` (default 0.95) of the natural
validation answers' own relative perplexities: about 5% of natural answers fall above it.

The reference is the stronger Qwen2.5-Coder-1.5B-Instruct once fetched (:func:`reference_model`), else the
model that wrote the unsteered answers; every score names it. Perplexities come from
:func:`~workbench.evaluation.perplexity.perplexity` (each answer given the prompt it answered, in the
reference's own chat format, ``batch_size`` answers per forward). A :class:`Judge` is the rule with the
model it was calibrated on, loaded once and called on any number of answers; given a ``cache`` file (so can
:func:`calibrate`) it keeps each answer's raw reference perplexity there (:func:`cached_perplexity`; the
verdict is recomputed from it), so rescoring a finished study runs no reference forward.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workbench.batching import format_prompts
from workbench.errors import InvalidArgumentError, ModelLoadError
from workbench.evaluation.perplexity import perplexity
from workbench.evaluation.score_cache import cache_key, cached_values
from workbench.models import Model, load_model

__all__ = [
    "QUANTILE",
    "REFERENCE_SPEC",
    "Judge",
    "ReferenceFluency",
    "cached_perplexity",
    "calibrate",
    "reference_model",
]

REFERENCE_SPEC = "qwen2.5-coder-1.5b-instruct"
"""The stronger reference model, used when it has been fetched (``workbench models fetch``)."""

QUANTILE = 0.95
"""Share of natural validation answers the fluency threshold lets through."""


def reference_model(
    fallback: Model, spec: str = REFERENCE_SPEC, *, dtype: torch.dtype | str | None = None
) -> Model:
    """``spec`` loaded on ``fallback``'s device when it loads offline, else ``fallback`` (the scored model)."""
    try:
        return load_model(spec, device=fallback.device, dtype=dtype)
    except ModelLoadError:
        return fallback


@dataclass(frozen=True)
class ReferenceFluency:
    """A calibrated fluency rule: the reference model, the natural answers' median perplexities under it
    (``anchors``, by set name) and the threshold on relative perplexity chosen on validation."""

    reference: str
    reference_fingerprint: str
    anchors: dict[str, float]
    threshold: float
    quantile: float
    n_validation: int

    @property
    def anchor(self) -> float:
        """The larger anchor: the perplexity that relative perplexities are measured in."""
        return max(self.anchors.values())

    def describe(self) -> str:
        """One line for a table's notes: the reference, the anchors and the threshold."""
        anchors = ", ".join(f"{name} {value:.3g}" for name, value in self.anchors.items())
        return (
            f"fluency judged by {self.reference}: perplexity relative to natural validation answers (medians "
            f"{anchors}), fluent at most {self.threshold:.3g}, the {self.quantile:g} quantile of "
            f"{self.n_validation} natural answers"
        )

    def score(
        self, reference: Model, prompts: Sequence[str], responses: Sequence[str], *, batch_size: int = 16
    ) -> pd.DataFrame:
        """Per answer: ``reference`` (the model's name), ``reference_perplexity``, ``relative_perplexity``
        and ``fluent_reference`` (False for an empty answer)."""
        self.check(reference)
        return self.verdict(perplexity(reference, prompts, responses, batch_size=batch_size))

    def check(self, reference: Model) -> None:
        """Refuse a model other than the one this rule was calibrated on."""
        if reference.fingerprint != self.reference_fingerprint:
            raise InvalidArgumentError(
                f"this fluency rule was calibrated on {self.reference} ({self.reference_fingerprint}), not on "
                f"{reference.name} ({reference.fingerprint}): score with that model or calibrate again"
            )

    def verdict(self, reference_perplexity: Sequence[float]) -> pd.DataFrame:
        """:meth:`score`'s columns from the answers' perplexities under the reference (NaN: empty answer)."""
        ppl = np.asarray(reference_perplexity, dtype=float)
        relative = ppl / self.anchor
        return pd.DataFrame(
            {
                "reference": self.reference,
                "reference_perplexity": ppl,
                "relative_perplexity": relative,
                "fluent_reference": np.nan_to_num(relative, nan=np.inf) <= self.threshold,
            }
        )


def calibrate(
    reference: Model,
    natural: Mapping[str, tuple[Sequence[str], Sequence[str]]],
    *,
    quantile: float = QUANTILE,
    batch_size: int = 16,
    cache: str | os.PathLike[str] | None = None,
) -> ReferenceFluency:
    """The fluency rule from natural validation answers: ``natural`` maps a set's name (``"unsteered"``,
    ``"italian"``) to its ``(prompts, answers)``. Empty answers are left out; ``cache``: see
    :func:`cached_perplexity`."""
    if not natural:
        raise InvalidArgumentError(
            "calibrate needs at least one set of natural answers, e.g. {'unsteered': ...}"
        )
    if not 0 < quantile <= 1:
        raise InvalidArgumentError(f"quantile must be in (0, 1], got {quantile!r}")
    scores: dict[str, np.ndarray] = {}
    for name, (prompts, answers) in natural.items():
        ppl = np.asarray(cached_perplexity(reference, prompts, answers, cache, batch_size=batch_size))
        scores[name] = ppl[np.isfinite(ppl)]
        if len(scores[name]) < 2:
            raise InvalidArgumentError(
                f"the natural set {name!r} has {len(scores[name])} non-empty answers; give at least 2"
            )
    anchors = {name: float(np.median(ppl)) for name, ppl in scores.items()}
    relative = np.concatenate(list(scores.values())) / max(anchors.values())
    threshold = float(np.quantile(relative, quantile))
    if not math.isfinite(threshold):
        raise InvalidArgumentError("the natural answers gave no finite perplexity: check the reference model")
    return ReferenceFluency(
        reference=reference.name,
        reference_fingerprint=reference.fingerprint,
        anchors=anchors,
        threshold=threshold,
        quantile=quantile,
        n_validation=len(relative),
    )


@dataclass(frozen=True)
class Judge:
    """A calibrated fluency rule with the reference model it was calibrated on: load the model once, call
    the judge on every batch of answers (``batch_size`` answers per forward: the reference's logits over
    its vocabulary are the memory that counts)."""

    model: Model
    rule: ReferenceFluency
    batch_size: int = 16
    cache: str | os.PathLike[str] | None = None

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> pd.DataFrame:
        """:meth:`ReferenceFluency.score` of ``responses`` (each given its prompt) under :attr:`model`,
        through :attr:`cache` when given (:func:`cached_perplexity`)."""
        self.rule.check(self.model)
        return self.rule.verdict(
            cached_perplexity(self.model, prompts, responses, self.cache, batch_size=self.batch_size)
        )


#: Bumped when what the perplexity cache is keyed by changes (2: the prompt as the reference sees it).
CACHE_VERSION = 2


def cached_perplexity(
    model: Model,
    prompts: Sequence[str],
    responses: Sequence[str],
    cache: str | os.PathLike[str] | None,
    *,
    batch_size: int = 16,
) -> list[float]:
    """:func:`~workbench.evaluation.perplexity.perplexity` of each response given its prompt; with a
    ``cache`` file (parquet), those already there are read and the others computed and added (a score does
    not depend on the batch it ran in). An entry is keyed by the model's fingerprint (weights with tokenizer
    and chat template, dtype, device), the prompt as the model sees it (formatted) and the response. Runs
    sharing the file add to it under a lock; a cache that cannot be written only warns."""
    if cache is None:
        return list(perplexity(model, prompts, responses, batch_size=batch_size))
    seen = format_prompts(model, prompts, chat=True)  # what perplexity() scores the response after
    keys = [
        cache_key(str(CACHE_VERSION), model.fingerprint, p, r) for p, r in zip(seen, responses, strict=True)
    ]

    def compute(todo: list[int]) -> list[float]:
        chosen = ([prompts[i] for i in todo], [responses[i] for i in todo])
        return list(perplexity(model, *chosen, batch_size=batch_size))

    return cached_values(Path(cache), keys, compute, "perplexity cache")
