"""A LoRA adapter scored exactly as steering is: the same prompts, targets, degeneration rule and metrics.

Per answer: ``on_target`` (:func:`~workbench.evaluation.targets.on_target`), ``perplexity`` under the
*unmodified* model given the prompt answered, ``degenerate``
(:func:`~workbench.evaluation.is_degenerate` with that perplexity) and ``clean`` (on target and not
degenerate, and ``fluent`` by a reference model's judge where one is given:
:class:`~workbench.evaluation.reference.Judge`). Per model: multiple-choice accuracy on the bundled questions
(:func:`~workbench.evaluation.mc.multiple_choice`) and the questions gained and lost against
the unmodified model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from workbench.datasets import ITALIAN, ContrastiveSet, load_multiple_choice
from workbench.errors import InvalidArgumentError
from workbench.evaluation.mc import multiple_choice
from workbench.evaluation.perplexity import perplexity
from workbench.evaluation.scoring import score_answers
from workbench.evaluation.table import summarize_scores
from workbench.evaluation.targets import TARGETS
from workbench.finetune.adapter import LoraAdapter, lora_applied
from workbench.generation import generate
from workbench.models import Model

__all__ = ["Evaluation", "evaluate_lora", "target_for"]


def target_for(dataset: ContrastiveSet, target: str | None = None) -> str:
    """The on-target rule for ``dataset``: ``target`` if given, else real Italian for the Italian set and
    the items' own IFEval checks for every other."""
    if target is None:
        return "italian" if dataset.name == ITALIAN else "ifeval"
    if target not in TARGETS:
        raise InvalidArgumentError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")
    return target


@dataclass(frozen=True)
class Evaluation:
    """``answers``: one scored row per (config, item); ``summary``: per config ``target_rate, clean_rate,
    degeneration, perplexity`` (median, unmodified model), ``n``; ``mc``: per (config, language)
    ``accuracy, gained, lost`` against the unmodified model; ``mc_rows``: per (config, language, question
    ``id``) whether it was answered ``correct`` (for an UpSet figure)."""

    answers: pd.DataFrame
    summary: pd.DataFrame
    mc: pd.DataFrame
    mc_rows: pd.DataFrame


def evaluate_lora(
    model: Model,
    test: ContrastiveSet,
    adapter: LoraAdapter,
    *,
    max_new_tokens: int = 64,
    target: str | None = None,
    with_positive: bool = False,
    mc_languages: Sequence[str] = ("en", "it"),
    n_mc: int | None = None,
    batch_size: int = 16,
) -> Evaluation:
    """``adapter`` against the unmodified model on ``test``'s plain (negative) prompts, scored like steering.

    ``with_positive`` adds both on the positive prompts (the instruction, or the Italian query).
    ``mc_languages`` picks the bundled multiple-choice questions (test split, the first ``n_mc``).
    """
    rule = target_for(test, target)
    kinds = {"": test.negative, **({" + positive prompt": test.positive} if with_positive else {})}
    responses: dict[str, list[str]] = {}
    for suffix, prompts in kinds.items():
        responses[f"unmodified{suffix}"] = generate(
            model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
    with lora_applied(model, adapter):
        for suffix, prompts in kinds.items():
            responses[f"lora{suffix}"] = generate(
                model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size
            )
    frames = []
    for config, answers in responses.items():
        prompts = kinds[config.removeprefix("unmodified").removeprefix("lora")]
        ppl = perplexity(model, prompts, answers, batch_size=batch_size)
        frames.append(score_answers(rule, test.items, answers, ppl).assign(config=config))
    rows = pd.concat(frames, ignore_index=True)
    summary = summarize_scores(rows, "config")
    mc_rows = _mc(model, adapter, mc_languages, n_mc, batch_size)
    return Evaluation(rows, summary.reset_index(), _mc_table(mc_rows), mc_rows)


def _mc(
    model: Model, adapter: LoraAdapter, languages: Sequence[str], n: int | None, batch_size: int
) -> pd.DataFrame:
    """Per (config, language, question): whether the unmodified or the adapted model answers correctly."""
    frames = []
    for language in languages:
        items = load_multiple_choice("bundled", language=language, split="test")[:n]
        frames.append(multiple_choice(model, items, batch_size=batch_size).assign(config="unmodified"))
        with lora_applied(model, adapter):
            frames.append(multiple_choice(model, items, batch_size=batch_size).assign(config="lora"))
    return pd.concat(frames, ignore_index=True)[["config", "language", "id", "correct"]]


def _mc_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per (config, language) and the questions gained and lost against the unmodified model."""
    out = []
    for (config, language), group in rows.groupby(["config", "language"], sort=False):
        base = rows[(rows["config"] == "unmodified") & (rows["language"] == language)]
        correct = group.set_index("id")["correct"].astype(bool)
        before = base.set_index("id")["correct"].astype(bool).reindex(correct.index)
        out.append(
            {
                "config": config,
                "language": language,
                "accuracy": correct.mean(),
                "gained": int((correct & ~before).sum()),
                "lost": int((~correct & before).sum()),
            }
        )
    return pd.DataFrame(out, columns=["config", "language", "accuracy", "gained", "lost"])
