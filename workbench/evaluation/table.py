"""One tidy table of every text score of a set of responses, one row per (item, response)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from workbench.datasets import Item
from workbench.errors import InvalidArgumentError, ShapeMismatchError
from workbench.evaluation.checks import check_all
from workbench.evaluation.fluency import longest_repeated_run, repeated_ngram_rate
from workbench.evaluation.language import LANGUAGES, code_switching_rate, detect_language, sentence_share
from workbench.evaluation.perplexity import perplexity
from workbench.evaluation.scoring import score_answers
from workbench.evaluation.targets import TARGETS
from workbench.evaluation.text import count_sentences, count_words
from workbench.models import Model

__all__ = ["evaluate", "summarize_scores"]


def evaluate(
    responses: Sequence[str],
    items: Sequence[Item],
    *,
    model: Model | None = None,
    prompts: Sequence[str] | None = None,
    loose: bool = False,
    language: str = "it",
    target: str = "ifeval",
) -> pd.DataFrame:
    """Score ``responses[i]`` against ``items[i]``'s instructions and for language and fluency.

    Columns: ``id, behaviour, response, words, sentences``; ``on_target`` (by ``target``
    (:func:`~workbench.evaluation.targets.on_target`), default every IFEval instruction of the item passes,
    strict), ``ifeval_loose`` (IFEval's loose scoring) and ``check:<instruction_id>`` per id (strict;
    with ``loose`` also ``check_loose:<instruction_id>``), missing where an item lacks that id; ``language``
    (detected), ``in_target_language``, ``sentence_share_<language>``, ``code_switching``;
    ``repeated_ngram_rate``, ``longest_repeated_run``; ``perplexity`` under ``model`` given the ``prompts``
    the responses answered (only when both are given); ``degenerate`` (with that perplexity when known) and
    ``clean`` (on target, not degenerate): the columns of :mod:`workbench.evaluation.scoring`.
    """
    if isinstance(responses, str):
        raise InvalidArgumentError("evaluate takes a list of responses; wrap a single text in [...]")
    if len(responses) != len(items):
        raise ShapeMismatchError(f"got {len(responses)} responses for {len(items)} items: give one per item")
    if language not in LANGUAGES:
        raise InvalidArgumentError(f"language {language!r} is not detectable here; use one of {LANGUAGES}")
    if target not in TARGETS:
        raise InvalidArgumentError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")
    if (model is None) != (prompts is None):
        raise InvalidArgumentError("perplexity needs both model and prompts: pass both or neither")
    for i, (response, item) in enumerate(zip(responses, items, strict=True)):
        if not isinstance(response, str):
            raise InvalidArgumentError(f"response {i} is not a string ({type(response).__name__})")
        if not isinstance(item, Item):
            raise InvalidArgumentError(f"items must be datasets.Item objects, got {type(item).__name__}")
    ppl = perplexity(model, prompts, responses) if model is not None and prompts is not None else None
    scored = score_answers(target, items, responses, ppl)
    rows = []
    for i, (response, item) in enumerate(zip(responses, items, strict=True)):
        ids, kwargs = list(item.instruction_id_list), list(item.kwargs)
        strict = check_all(ids, kwargs, response)
        relaxed = check_all(ids, kwargs, response, loose=True)
        detected = detect_language(response)
        loose_columns = (
            {f"check_loose:{name}": ok for name, ok in zip(ids, relaxed, strict=True)} if loose else {}
        )
        row = {
            "id": item.id,
            "behaviour": item.behaviour,
            "response": response,
            "words": count_words(response),
            "sentences": count_sentences(response),
            "on_target": bool(scored["on_target"].iloc[i]),
            "ifeval_loose": all(relaxed),
            **{f"check:{name}": passed for name, passed in zip(ids, strict, strict=True)},
            **loose_columns,
            "language": detected,
            "in_target_language": detected == language,
            f"sentence_share_{language}": sentence_share(response, language),
            "code_switching": code_switching_rate(response),
            "repeated_ngram_rate": repeated_ngram_rate(response),
            "longest_repeated_run": longest_repeated_run(response),
        }
        if ppl is not None:
            row["perplexity"] = ppl[i]
        row["degenerate"] = bool(scored["degenerate"].iloc[i])
        row["clean"] = bool(scored["clean"].iloc[i])
        rows.append(row)
    frame = pd.DataFrame(rows)
    checks = [c for c in frame.columns if c.startswith(("check:", "check_loose:"))]
    checks = sorted(checks, key=lambda c: c.startswith("check_loose:"))
    frame[checks] = frame[checks].astype("boolean")
    rest = [c for c in frame.columns if c not in checks]
    at = rest.index("ifeval_loose") + 1
    return frame[[*rest[:at], *checks, *rest[at:]]]


def summarize_scores(rows: pd.DataFrame, by: str, *, ifeval: bool = False) -> pd.DataFrame:
    """One row per value of ``by`` (first-seen order, as the index) of scored rows: ``target_rate``,
    ``ifeval_rate`` (with ``ifeval``, from the ``ifeval`` column), ``clean_rate``, ``degeneration``, median
    ``perplexity`` and ``n``; the one definition of these rates for every table."""
    extra = {"ifeval_rate": ("ifeval", "mean")} if ifeval else {}
    return rows.groupby(by, sort=False).agg(
        target_rate=("on_target", "mean"),
        **extra,
        clean_rate=("clean", "mean"),
        degeneration=("degenerate", "mean"),
        perplexity=("perplexity", "median"),
        n=("on_target", "size"),
    )
