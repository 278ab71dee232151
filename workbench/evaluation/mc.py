"""Multiple choice, scored by the log-likelihood of each option (ARC / lm-eval) or answered by generation.

``by="loglik"``: each option is scored as the continuation of the question's prompt (``" {choice}"`` after
``Answer:``, or the option text opening the assistant turn of a chat prompt). Per option: ``ll`` (summed
log-probability), ``ll_per_token`` (its mean over the option's tokens) and ``ll_per_byte`` (divided by the
UTF-8 length of the continuation, lm-eval's ``acc_norm``). The prediction is the argmax of
``ll_per_token``; ``pred_raw`` and ``pred_byte`` use the other two. The default prompt is lm-eval's ARC
cloze, without the options. With the lettered options shown (`LETTERED_TEMPLATE`), SmolLM2-135M-Instruct
scored at or below chance on 40 bundled English questions (0.18-0.25, against 0.43-0.58 without them).
A hook on generated positions never touches these scores: steering's damage shows in generated answers.

``by="generation"``: the model sees the question and its lettered options (`GENERATION_TEMPLATES`, in the
item's language), answers greedily under the interventions, and
:func:`~workbench.evaluation.mc_parse.parse_answer` reads its letter or its option's text (Scalena, Fersini
and Nissim 2024 answer MMLU-it this way and read the letter with a regex). Unsteered SmolLM2-135M-Instruct
gets 0.25 of 48 bundled English test questions so (0.46 by log-likelihood): 8 of its 48 answers label one
option and write another's text ("C. Autumn" for D), which is unparsed. :func:`changes` gives accuracy,
the unparsed share and the questions gained and lost against a reference run.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np
import pandas as pd

from workbench.datasets import MCItem
from workbench.errors import InvalidArgumentError
from workbench.evaluation.mc_parse import parse_answer
from workbench.evaluation.perplexity import continuation_logprobs, join
from workbench.generation import RowInterventions, generate
from workbench.interventions import AnyIntervention
from workbench.models import Model

__all__ = [
    "ANSWER_TOKENS",
    "DEFAULT_TEMPLATE",
    "GENERATION_TEMPLATES",
    "LETTERED_TEMPLATE",
    "format_question",
    "mc_changes",
    "multiple_choice",
]

DEFAULT_TEMPLATE = "Question: {question}\nAnswer:"
"""Prompt of a question (``{question}`` is its text), as lm-eval's ARC tasks."""

LETTERED_TEMPLATE = "Question: {question}\n{options}\nAnswer:"
"""Prompt that also lists the options: ``{options}`` is the lines ``A. ...``, ``B. ...``."""

GENERATION_TEMPLATES = {
    "en": "Answer the following multiple-choice question with the letter of the correct option.\n\n"
    "Question: {question}\n{options}\nAnswer:",
    "it": "Rispondi alla seguente domanda a scelta multipla con la lettera dell'opzione corretta.\n\n"
    "Domanda: {question}\n{options}\nRisposta:",
}
"""Prompts for ``by="generation"`` by item language (others get ``en``); the Italian one ends in
``Risposta:``, the cue Scalena et al.'s regex reads."""

ANSWER_TOKENS = 64
"""Default budget of a generated answer. Unparsed share of 48 bundled test questions at 8/16/32/64 tokens
(the first tokens of 64-token greedy answers), SmolLM2-135M-Instruct: English 0.17 at every budget;
Italian 0.83/0.75/0.73/0.69; English under the ``it`` vector at layer 15, 4 diff-norms on generated tokens
fading over 64, 0.54/0.52/0.52/0.50. Qwen2.5-Coder-0.5B, 24 questions: English 0.17/0.04/0.00/0.00,
Italian 0.33/0.08/0.00/0.00. Answers end at end of turn, so only long answers use the room."""

BY = ("loglik", "generation")


def format_question(item: MCItem, template: str = DEFAULT_TEMPLATE) -> str:
    """The prompt text of ``item`` (before any chat format)."""
    options = "\n".join(f"{string.ascii_uppercase[k]}. {choice}" for k, choice in enumerate(item.choices))
    try:
        return template.format(question=item.question, options=options)
    except (KeyError, IndexError, ValueError) as exc:
        raise InvalidArgumentError(
            f"prompt_template {template!r} is not a format string with {{question}} and {{options}} only: {exc!r}"
        ) from None


def _check(items: Sequence[MCItem], template: str | None) -> None:
    if isinstance(items, MCItem) or len(items) == 0:
        raise InvalidArgumentError("multiple_choice takes a non-empty list of MCItem")
    if template is not None and "{question}" not in template:
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
    by: str = "loglik",
    interventions: Sequence[AnyIntervention] | None = (),
    row_interventions: RowInterventions = None,
    chat: bool = True,
    batch_size: int = 16,
    prompt_template: str | None = None,
    max_new_tokens: int | None = None,
    parallel: Sequence[MCItem] = (),
) -> pd.DataFrame:
    """Answer every item; one row per item, with ``by`` saying how.

    ``by="loglik"`` columns: ``id, language, split, answer, pred, pred_raw, pred_byte, correct,
    correct_raw, correct_byte, n_choices``, the per-option lists ``ll, ll_per_token, ll_per_byte,
    n_tokens``, and ``by``. ``interventions`` (one list) apply while scoring (``positions="prompt"`` steers
    the question, ``"generated"`` the option tokens).

    ``by="generation"`` columns: ``id, language, split, answer, pred`` (-1 if unparsed), ``parsed_by``
    (``letter``, ``text`` or ``none``), ``correct, unparsed, response, n_choices, by``. The answer is
    generated greedily (:func:`~workbench.generation.generate`, batched, KV-cached) under
    ``interventions`` (every item) and ``row_interventions`` (one list per item), in at most ``max_new_tokens``
    (`ANSWER_TOKENS`). ``parallel`` holds the same questions in other languages (same ``id``, answer and
    number of choices): their option texts count too, since a steered answer may drift into the other
    language. ``prompt_template`` defaults to `DEFAULT_TEMPLATE` for ``loglik`` and to
    `GENERATION_TEMPLATES` by item language for ``generation``.
    """
    if by not in BY:
        raise InvalidArgumentError(f"by must be one of {', '.join(BY)}, got {by!r}")
    if by == "loglik" and (max_new_tokens is not None or len(parallel) or row_interventions is not None):
        raise InvalidArgumentError(
            "max_new_tokens, parallel and row_interventions apply to by='generation' only"
        )
    _check(items, prompt_template)
    interventions = list(interventions or ())
    if by == "generation":
        steering = (interventions, row_interventions)
        return _by_generation(
            model, items, steering, chat, batch_size, prompt_template, max_new_tokens, parallel
        )
    return _by_loglik(model, items, interventions, chat, batch_size, prompt_template or DEFAULT_TEMPLATE)


def _by_loglik(
    model: Model,
    items: Sequence[MCItem],
    interventions: Sequence[AnyIntervention],
    chat: bool,
    batch_size: int,
    template: str,
) -> pd.DataFrame:
    prompts = [format_question(item, template) for item in items]
    contexts = [model.format_chat(p) for p in prompts] if chat else prompts
    pairs = [(i, choice) for i, item in enumerate(items) for choice in item.choices]
    logprobs = continuation_logprobs(
        model,
        [contexts[i] for i, _ in pairs],
        [choice for _, choice in pairs],
        formatted=chat,
        batch_size=batch_size,
        interventions=interventions,
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
                "by": "loglik",
            }
        )
    return pd.DataFrame(rows)


def _by_generation(
    model: Model,
    items: Sequence[MCItem],
    steering: tuple[Sequence[AnyIntervention], RowInterventions],
    chat: bool,
    batch_size: int,
    template: str | None,
    max_new_tokens: int | None,
    parallel: Sequence[MCItem],
) -> pd.DataFrame:
    others = _parallel(items, parallel)
    prompts = [
        format_question(item, template or GENERATION_TEMPLATES.get(item.language, GENERATION_TEMPLATES["en"]))
        for item in items
    ]
    responses = generate(
        model,
        prompts,
        max_new_tokens=ANSWER_TOKENS if max_new_tokens is None else max_new_tokens,
        chat=chat,
        batch_size=batch_size,
        interventions=steering[0],
        row_interventions=steering[1],
    )
    rows = []
    for item, response, mine in zip(items, responses, others, strict=True):
        asked = "\n".join([item.question, *(p.question for p in mine)])
        pred, parsed_by = parse_answer(response, item.choices, also=[p.choices for p in mine], question=asked)
        rows.append(
            {
                "id": item.id,
                "language": item.language,
                "split": item.split,
                "answer": item.answer,
                "pred": pred,
                "parsed_by": parsed_by,
                "correct": pred == item.answer,
                "unparsed": pred < 0,
                "response": response,
                "n_choices": len(item.choices),
                "by": "generation",
            }
        )
    return pd.DataFrame(rows)


def _parallel(items: Sequence[MCItem], parallel: Sequence[MCItem]) -> list[list[MCItem]]:
    """Each item's versions in the other languages of ``parallel`` (same id, answer and option count)."""
    if isinstance(parallel, MCItem) or not all(isinstance(p, MCItem) for p in parallel):
        raise InvalidArgumentError("parallel must be a list of MCItem")
    found: dict[str, list[MCItem]] = {}
    for other in parallel:
        found.setdefault(other.id, []).append(other)
    out = []
    for item in items:
        mine = [p for p in found.get(item.id, []) if p.language != item.language]
        for p in mine:
            if p.answer != item.answer or len(p.choices) != len(item.choices):
                raise InvalidArgumentError(
                    f"parallel item {p.id!r} ({p.language}) is not the same question as ({item.language}): "
                    "its answer or number of choices differs"
                )
        out.append(mine)
    return out


def mc_changes(reference: pd.DataFrame, rows: pd.DataFrame) -> dict[str, float]:
    """``rows`` against ``reference`` (same questions, answered the same ``by``): ``accuracy`` of
    ``rows``, the questions it ``gained`` (right where the reference was wrong) and ``lost``, and its
    ``unparsed`` share (0 for ``loglik``, which always picks an option).

    Questions are matched on ``id`` (and ``language`` when both tables have it).
    """
    for name, frame in (("reference", reference), ("rows", rows)):
        if not isinstance(frame, pd.DataFrame) or not {"id", "correct"} <= set(frame.columns) or frame.empty:
            raise InvalidArgumentError(f"{name} must be a non-empty multiple_choice table (id, correct)")
    ways = {str(w) for frame in (reference, rows) if "by" in frame for w in frame["by"].unique()}
    if len(ways) > 1:
        raise InvalidArgumentError(
            f"reference and rows answer by {sorted(ways)}: compare answers of one kind"
        )
    keys = ["id", "language"] if {"language"} <= set(reference.columns) & set(rows.columns) else ["id"]
    before, after = (f.set_index(keys)["correct"].astype(bool) for f in (reference, rows))
    if not before.index.is_unique or not after.index.is_unique or set(before.index) != set(after.index):
        raise InvalidArgumentError("reference and rows must hold the same questions, once each")
    after = after.reindex(before.index)
    unparsed = float(rows["unparsed"].mean()) if "unparsed" in rows else 0.0
    return {
        "accuracy": float(after.mean()),
        "gained": int((after & ~before).sum()),
        "lost": int((~after & before).sum()),
        "unparsed": unparsed,
    }
