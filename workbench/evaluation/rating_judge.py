"""A local chat model as AxBench's judge of relevance and fluency, read from its next-token probabilities.

AxBench (Wu et al. 2025) asks a strong model for a free-text explanation and a ``Rating: [[score]]`` of 0, 1
or 2 per answer. A 1.5B model's free text is unreliable, so :class:`RatingJudge` asks for the digit alone,
after a fixed rubric and worked examples (:data:`RUBRICS`: AxBench's relevance and fluency scales, made
precise for steered answers), and reads the model's next-token probabilities of ``0``, ``1`` and ``2``: one
forward per batch of answers, logits at the last position only. The rubric and examples are the same for
every answer, so their KV cache is computed once per call and shared by every batch. The rating is the
argmax of the three probabilities.

The rubric's examples are the fixed natural reference a verdict is anchored on: a rating never depends on
the other answers of a table, nor on the model that wrote them. None of them is in the labelled set
(:mod:`workbench.evaluation.rating`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float

from workbench.errors import InvalidArgumentError
from workbench.evaluation.score_cache import cache_key, cached_values
from workbench.fastpath import direct_forward
from workbench.models import Model

__all__ = ["DIGITS", "JUDGED", "RUBRICS", "RatingJudge", "Rubric"]

#: The ratings a judge gives (AxBench's scale).
DIGITS = ("0", "1", "2")
_SLOT = "\x00answer\x00"


@dataclass(frozen=True)
class Rubric:
    """What the judge is told (``system``) and shown: worked ``examples`` of (question, answer, rating);
    ``question`` False shows the answer alone (fluency, as AxBench does)."""

    system: str
    examples: tuple[tuple[str, str, int], ...]
    question: bool

    def user(self, query: str, answer: str) -> str:
        """The user turn that presents one answer."""
        return f"Question: {query}\nAnswer: {answer}" if self.question else f"Text: {answer}"


_RELEVANCE = Rubric(
    system=(
        "You rate how related an answer is to a question, on a scale of 0 to 2. Judge only the topic: ignore "
        "grammar, fluency, correctness and format (JSON is fine), and ignore the language (an Italian answer "
        "to an English question can be fully relevant).\n"
        "2 = the answer addresses the question: it talks about what was asked.\n"
        "1 = the answer is only loosely related: it has words from the question's topic but does not address "
        "the question, like jumbled words or one word repeated about the topic.\n"
        "0 = the answer is about something else, or says nothing (a greeting, a refusal, meaningless words).\n"
        "Reply with the digit only."
    ),
    examples=(
        (
            "How do volcanoes erupt?",
            "Magma rises from deep underground, gas pressure builds up, and the molten rock bursts through "
            "the crust as lava and ash.",
            2,
        ),
        ("What is the best way to learn to swim?", "La pizza napoletana si cuoce in un forno a legna.", 0),
        ("How does a refrigerator keep food cold?", "cold cold cold cold cold cold cold cold cold", 1),
        (
            "How do volcanoes erupt?",
            "Il magma sale dalle profondità della Terra e, quando la pressione dei gas diventa troppo alta, "
            "esplode in superficie.",
            2,
        ),
        ("Why do we need vitamins?", "Hello! How can I help you today?", 0),
        (
            "What is the best way to learn to swim?",
            "acqua nuotare il della, bracciata che sì, piscina e'volte",
            1,
        ),
        ("Why do we need vitamins?", '{"vitamins": ["help the immune system", "keep bones strong"]}', 2),
        (
            "How does a refrigerator keep food cold?",
            "whereby the of, and to, nonetheless which it the upon.",
            0,
        ),
        (
            "What is the best way to learn to swim?",
            "Learning to swim as an adult takes patience. Here are some tips to help you get started:\n\n"
            "1. **Start in shallow water**: Get comfortable with",
            2,
        ),
        (
            "How do volcanoes erupt?",
            "I vulcani eruttano quando il magma, che si forma nelle profondità della Terra, risale verso la "
            "superficie. La pressione dei gas",
            2,
        ),
    ),
    question=True,
)

_FLUENCY = Rubric(
    system=(
        "You rate the fluency of a text, on a scale of 0 to 2, in whatever language it is written (English, "
        "Italian, ...). Ignore whether it is relevant, true or complete: a text cut off mid-sentence, or "
        "written as JSON, can be fluent.\n"
        "2 = fluent: natural, grammatical text that a native speaker could have written.\n"
        "1 = understandable but with noticeable errors: wrong grammar, odd word choices, words of another "
        "language mixed in, a word stuttered once or twice, a statement that repeats itself.\n"
        "0 = not fluent: word salad, invented words, jumbled fragments, or a phrase repeated over and over.\n"
        "Reply with the digit only."
    ),
    examples=(
        ("", "Volcanoes erupt when the pressure of gas and magma builds up beneath the surface.", 2),
        ("", "The volcano are erupt when the magma it go up and the gas make many pressure.", 1),
        ("", ", lavica dell'ebbe fumarolo, sì che ove,, magmatico d'altro a, del cratere cratere dunque", 0),
        ("", "I vulcani eruttano quando la pressione del magma e dei gas diventa troppo forte.", 2),
        ("", "Il vulcano erutta quando il magma sale, sale e the pressure diventa troppo alta.", 1),
        ("", "swim swim swim swim swim swim swim swim swim swim swim swim", 0),
        ("", '{"tips": ["start in shallow water", "practise breathing with your face in the water"]}', 2),
        ("", "Vitamins are good because vitamins are good for the body of the body.", 1),
        ("", "Learning whereby the of water, and to swimmingly which nonetheless the upon.", 0),
        (
            "",
            "Here are some tips to help you learn to swim:\n\n1. **Start in shallow water**: Get comfortable with",
            2,
        ),
    ),
    question=False,
)

#: The ratings a judge gives, and how it is asked for each.
RUBRICS: dict[str, Rubric] = {"relevance": _RELEVANCE, "fluency": _FLUENCY}
JUDGED = tuple(RUBRICS)


@dataclass(frozen=True)
class RatingJudge:
    """A local chat model that rates relevance and fluency 0, 1 or 2 (:data:`RUBRICS`); ``batch_size``
    answers per forward; ``cache``: a parquet file of its ratings, shared by runs."""

    model: Model
    batch_size: int = 8
    cache: str | os.PathLike[str] | None = None

    def __post_init__(self) -> None:
        if not self.model.is_chat:
            raise InvalidArgumentError(f"{self.model.name} is a base model: a judge must be a chat model")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be a positive integer, got {self.batch_size!r}")

    @property
    def name(self) -> str:
        """The judge's name in a table: its model's."""
        return self.model.name

    def __call__(self, queries: Sequence[str], answers: Sequence[str]) -> dict[str, np.ndarray]:
        """Per rating of :data:`JUDGED`: the argmax rating per answer (int array). With a :attr:`cache`
        file, ratings already there (keyed by the judge's fingerprint, the rubric, query and answer) are
        read and only the others computed (:func:`~workbench.evaluation.score_cache.cached_values`)."""
        if self.cache is None:
            return {rating: self.probabilities(rating, queries, answers).argmax(axis=1) for rating in JUDGED}
        out = {}
        for rating in JUDGED:
            rubric = repr(RUBRICS[rating])
            keys = [
                cache_key(self.model.fingerprint, rating, rubric, q, a)
                for q, a in zip(queries, answers, strict=True)
            ]

            def compute(todo: list[int], rating: str = rating) -> list[float]:
                chosen = ([queries[i] for i in todo], [answers[i] for i in todo])
                return self.probabilities(rating, *chosen).argmax(axis=1).tolist()

            values = cached_values(Path(self.cache), keys, compute, "rating cache")
            out[rating] = np.asarray(values, dtype=int)
        return out

    def probabilities(
        self, rating: str, queries: Sequence[str], answers: Sequence[str]
    ) -> Float[np.ndarray, "answers 3"]:
        """P(0), P(1), P(2) per answer (renormalised over the three digits) for ``rating``."""
        if rating not in RUBRICS:
            raise InvalidArgumentError(f"unknown rating {rating!r}: use one of {', '.join(JUDGED)}")
        if len(queries) != len(answers):
            raise InvalidArgumentError(
                f"got {len(queries)} queries but {len(answers)} answers: give one per answer"
            )
        rubric = RUBRICS[rating]
        head, tail = self._template(rubric)
        rows = [rubric.user(q, a) + tail for q, a in zip(queries, answers, strict=True)]
        return _digit_probabilities(
            self.model, head, rows, self._digit_ids(head + rows[0]) if rows else [], self.batch_size
        )

    def _template(self, rubric: Rubric) -> tuple[str, str]:
        """The prompt before the answer's user turn (system, examples, the turn's opening) and after it."""
        messages = [{"role": "system", "content": rubric.system}]
        for query, answer, score in rubric.examples:
            messages += [
                {"role": "user", "content": rubric.user(query, answer)},
                {"role": "assistant", "content": str(score)},
            ]
        messages.append({"role": "user", "content": _SLOT})
        text = self.model.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        head, tail = text.split(_SLOT)
        return head, tail

    def _digit_ids(self, prompt: str) -> list[int]:
        """The token id of each digit as the model would write it right after ``prompt``."""
        tokenizer = self.model.tokenizer
        base = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = []
        for digit in DIGITS:
            whole = tokenizer(prompt + digit, add_special_tokens=False)["input_ids"]
            if whole[: len(base)] != base or len(whole) != len(base) + 1:
                raise InvalidArgumentError(
                    f"{self.model.name} does not write the rating {digit} as one token"
                )
            ids.append(whole[-1])
        return ids


@torch.inference_mode()
def _digit_probabilities(
    model: Model, head: str, rows: list[str], digit_ids: list[int], batch_size: int
) -> Float[np.ndarray, "rows 3"]:
    """Softmax over ``digit_ids`` of the next-token logits after ``head + row``, per row: ``head`` runs once
    and its KV cache is repeated for every batch of rows (left-padded after it, positions counting real
    tokens only), so a row's result does not depend on its batch."""
    out = np.zeros((len(rows), len(digit_ids)))
    if not rows:
        return out
    tokenizer, device = model.tokenizer, model.device
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    row_ids = [tokenizer(row, add_special_tokens=False)["input_ids"] for row in rows]
    longest = len(head_ids) + max(len(ids) for ids in row_ids)
    if longest > model.n_ctx:
        raise InvalidArgumentError(
            f"a judge prompt has {longest} tokens, more than {model.name}'s context of {model.n_ctx}: "
            "shorten the answers"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    keep = {"logits_to_keep": 1} if model.skips_logits else {}
    order = sorted(range(len(rows)), key=lambda i: -len(row_ids[i]))
    with direct_forward(model):
        prefix = model.hf_model(input_ids=torch.tensor([head_ids], device=device), use_cache=True, **keep)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(row_ids[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                ids[r, width - len(row_ids[i]) :] = torch.tensor(row_ids[i])
                mask[r, width - len(row_ids[i]) :] = 1
            ids, mask = ids.to(device), mask.to(device)
            cache = copy.deepcopy(prefix.past_key_values)
            cache.reorder_cache(torch.zeros(len(batch), dtype=torch.long, device=device))
            logits = model.hf_model(
                input_ids=ids,
                attention_mask=torch.cat([torch.ones_like(mask[:, :1]).expand(-1, len(head_ids)), mask], 1),
                position_ids=len(head_ids) + (mask.cumsum(-1) - 1).clamp_min(0),
                use_cache=True,
                **{model.cache_argument: cache},
                **keep,
            ).logits[:, -1]
            out[batch] = logits[:, digit_ids].float().softmax(-1).cpu().numpy()
    return out
