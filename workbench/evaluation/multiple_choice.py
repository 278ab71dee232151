"""Multiple-choice scoring by the log-likelihood of each option's text (ARC / lm-eval style).

Each option is scored as the continuation of the question's prompt (``" {choice}"`` after ``Answer:``, or
the option text opening the assistant turn of a chat prompt). Per option: ``ll`` (summed log-probability),
``ll_per_token`` (its mean over the option's tokens) and ``ll_per_byte`` (divided by the UTF-8 length of the
continuation, lm-eval's ``acc_norm``). The prediction is the argmax of ``ll_per_token``; ``pred_raw`` and
``pred_byte`` use the other two.

The default prompt is lm-eval's ARC cloze, without the options. With the lettered options shown
(`LETTERED_TEMPLATE`), SmolLM2-135M-Instruct scored at or below chance on 40 bundled English questions
(0.18-0.25, against 0.43-0.58 without them).
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np
import pandas as pd

from workbench.datasets import MCItem
from workbench.errors import InvalidArgumentError
from workbench.evaluation.perplexity import continuation_logprobs, join
from workbench.models import Model
from workbench.steering import Intervention

__all__ = ["DEFAULT_TEMPLATE", "LETTERED_TEMPLATE", "format_question", "multiple_choice"]

DEFAULT_TEMPLATE = "Question: {question}\nAnswer:"
"""Prompt of a question (``{question}`` is its text), as lm-eval's ARC tasks."""

LETTERED_TEMPLATE = "Question: {question}\n{options}\nAnswer:"
"""Prompt that also lists the options: ``{options}`` is the lines ``A. ...``, ``B. ...``."""


def format_question(item: MCItem, template: str = DEFAULT_TEMPLATE) -> str:
    """The prompt text of ``item`` (before any chat format)."""
    options = "\n".join(f"{string.ascii_uppercase[k]}. {choice}" for k, choice in enumerate(item.choices))
    try:
        return template.format(question=item.question, options=options)
    except (KeyError, IndexError, ValueError) as exc:
        raise InvalidArgumentError(
            f"prompt_template {template!r} is not a format string with {{question}} and {{options}} only: {exc!r}"
        ) from None


def _check(items: Sequence[MCItem], template: str) -> None:
    if isinstance(items, MCItem) or len(items) == 0:
        raise InvalidArgumentError("multiple_choice takes a non-empty list of MCItem")
    if "{question}" not in template:
        raise InvalidArgumentError(f"prompt_template {template!r} has no {{question}} placeholder")
    for item in items:
        if not isinstance(item, MCItem):
            raise InvalidArgumentError(f"items must be MCItem objects, got {type(item).__name__}")
        n = len(item.choices)
        if not 2 <= n <= len(string.ascii_uppercase):
            raise InvalidArgumentError(f"item {item.id!r} has {n} choices; it needs 2 to 26")
        if not all(isinstance(c, str) and c.strip() for c in item.choices):
            raise InvalidArgumentError(f"item {item.id!r} has an empty choice")
        if isinstance(item.answer, bool) or not isinstance(item.answer, int) or not 0 <= item.answer < n:
            raise InvalidArgumentError(f"item {item.id!r} has answer {item.answer!r}; use 0 to {n - 1}")


def multiple_choice(
    model: Model,
    items: Sequence[MCItem],
    *,
    interventions: Sequence[Intervention] | None = None,
    chat: bool = True,
    batch_size: int = 16,
    prompt_template: str | None = None,
) -> pd.DataFrame:
    """Score every option of every item; one row per item.

    Columns: ``id, language, split, answer, pred, pred_raw, pred_byte, correct, correct_raw, correct_byte,
    n_choices`` and the per-option lists ``ll, ll_per_token, ll_per_byte, n_tokens``. ``interventions``
    apply while scoring (``positions="prompt"`` steers the question, ``"generated"`` the option tokens).
    """
    template = DEFAULT_TEMPLATE if prompt_template is None else prompt_template
    _check(items, template)
    prompts = [format_question(item, template) for item in items]
    contexts = [model.format_chat(p) for p in prompts] if chat else prompts
    pairs = [(i, choice) for i, item in enumerate(items) for choice in item.choices]
    logprobs = continuation_logprobs(
        model,
        [contexts[i] for i, _ in pairs],
        [choice for _, choice in pairs],
        formatted=chat,
        batch_size=batch_size,
        interventions=list(interventions or ()),
    )
    rows = []
    start = 0
    for i, item in enumerate(items):
        scores = logprobs[start : start + len(item.choices)]
        start += len(item.choices)
        ll = [float(s.double().sum()) for s in scores]
        n_tokens = [s.numel() for s in scores]
        n_bytes = [len(join(contexts[i], c)[len(contexts[i]) :].encode()) for c in item.choices]
        per_token = [x / n for x, n in zip(ll, n_tokens, strict=True)]
        per_byte = [x / n for x, n in zip(ll, n_bytes, strict=True)]
        pred, pred_raw, pred_byte = (int(np.argmax(s)) for s in (per_token, ll, per_byte))
        rows.append(
            {
                "id": item.id,
                "language": item.language,
                "split": item.split,
                "answer": item.answer,
                "pred": pred,
                "pred_raw": pred_raw,
                "pred_byte": pred_byte,
                "correct": pred == item.answer,
                "correct_raw": pred_raw == item.answer,
                "correct_byte": pred_byte == item.answer,
                "n_choices": len(item.choices),
                "ll": ll,
                "ll_per_token": per_token,
                "ll_per_byte": per_byte,
                "n_tokens": n_tokens,
            }
        )
    return pd.DataFrame(rows)
