"""The one definition of a degenerate answer (:func:`is_degenerate`), used by every study, sweep and table.

An answer is degenerate when it has no word or number, loops (a share of repeated word 3-grams above
`MAX_NGRAM_REPEAT_RATE`, a 1-4 word cycle repeated more than `MAX_RUN` times, or a character loop), or,
when its perplexity is known, is word salad: perplexity above `MAX_PERPLEXITY` under the **reference model,
the unsteered model that answered**, given the prompt it answered
(:func:`workbench.evaluation.perplexity.perplexity` outside any :func:`~workbench.steering.steer`).

Tokens are lower-cased words of letters, so punctuation, case and list numbering (``1. The cat 2. The cat``)
do not hide a loop; the same checks also run with numbers of two or more digits as words, and a short cycle
of characters repeated back to back is a loop too, so loops without letters (``10,10,5,10,5``,
``1.1:10=1=1=1``, a steered base model's number salad) are caught. The rule is the quality frontier's
(issue 16 unified three): a repeat rate of 0.5 let through loops that say a sentence twice or nest the same
JSON object again and again (0.39-0.5 on SmolLM2) and steered "Italian" that repeats a clause (0.22-0.29),
while ordinary answers stay far below 0.2 (the hand-made samples in ``tests/test_fluency.py``: at most
0.03). Checked on 240 unsteered greedy SmolLM2-135M-Instruct answers to the frontier's validation prompts
(2026-12-02): 0 of the 120 answers to plain queries are flagged (as under the old 0.5 rule); of the 120
answers to instructed prompts 27 are (old rule: 16); of the 11 added, 8 loop by eye (a sentence said
twice, "il mondo al mondo, il mondo al mondo", "Use a rice cooker with a rice cooker") and 3 are short
texts whose sentences or bullets start with the same words ("The Mona Lisa is a ...", "The wind is ..."). There is no perplexity floor: 191 of those 240 answers (80%)
have a perplexity below 2.5 under the model that wrote them, the old floor.
"""

from __future__ import annotations

import re

from workbench.errors import InvalidArgumentError

__all__ = [
    "MAX_CHAR_RUN",
    "MAX_CYCLE",
    "MAX_NGRAM_REPEAT_RATE",
    "MAX_PERPLEXITY",
    "MAX_RUN",
    "MAX_SAME_CHAR",
    "has_character_loop",
    "is_degenerate",
    "longest_repeated_run",
    "repeated_ngram_rate",
]

MAX_NGRAM_REPEAT_RATE = 0.2
"""Degenerate above this share of repeated word 3-grams."""

MAX_CYCLE = 4
"""Longest word cycle (in words) that `longest_repeated_run` looks for."""

MAX_RUN = 4
"""Degenerate when some 1-4 word cycle repeats back to back more than this many times."""

MAX_CHAR_RUN = 7
"""Degenerate when a cycle of 2-6 characters holding a letter or digit repeats back to back more than this
many times (``=1=1=1…``, ``100100100…``); one repeated character is `MAX_SAME_CHAR`'s."""

MAX_SAME_CHAR = 15
"""Degenerate when one letter or digit repeats back to back more than this many times (``2222…``); a
number as big as 10^15 is still fluent."""

MAX_PERPLEXITY = 1000.0
"""Degenerate above this perplexity under the reference model (the unsteered model): word salad, broken
tokens, wrong script."""

_LETTER_WORD = re.compile(r"[^\W\d_]+")
_WORD_OR_NUMBER = re.compile(r"[^\W\d_]+|\d{2,}")  # one-digit numbers are list and section numbering
_CHAR_CYCLE = re.compile(r"(.{2,6}?)\1{" + str(MAX_CHAR_RUN) + ",}", re.DOTALL)
_SAME_CHAR = re.compile(r"([^\W_])\1{" + str(MAX_SAME_CHAR) + ",}")


def _tokens(text: str) -> list[str]:
    return _LETTER_WORD.findall(text.lower())


def repeated_ngram_rate(text: str, n: int = 3) -> float:
    """Share of the word ``n``-grams of ``text`` that repeat an earlier one; 0.0 with no n-gram at all."""
    if n < 1:
        raise InvalidArgumentError(f"n must be at least 1, got {n}")
    return _ngram_rate(_tokens(text), n)


def _ngram_rate(tokens: list[str], n: int) -> float:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def longest_repeated_run(text: str) -> int:
    """Most back-to-back copies of any cycle of 1 to `MAX_CYCLE` words (0 for no words, 1 with no repeat).

    ``"the the the"`` gives 3 (a one-word cycle), ``"I am I am I am I"`` gives 3 (``I am`` three times and
    a partial fourth, which does not count).
    """
    return _run(_tokens(text))


def _run(tokens: list[str]) -> int:
    best = 1 if tokens else 0
    for cycle in range(1, MAX_CYCLE + 1):
        matching = 0
        for i in range(len(tokens) - cycle):
            matching = matching + 1 if tokens[i] == tokens[i + cycle] else 0
            best = max(best, 1 + matching // cycle)
    return best


def has_character_loop(text: str) -> bool:
    """Whether a cycle of 2-6 characters, not all the same and holding a letter or digit, repeats back to
    back more than `MAX_CHAR_RUN` times, or one letter or digit more than `MAX_SAME_CHAR` times."""
    if _SAME_CHAR.search(text):
        return True
    return any(
        len(set(cycle)) > 1 and re.search(r"[^\W_]", cycle)
        for cycle in (m.group(1) for m in _CHAR_CYCLE.finditer(text))
    )


def is_degenerate(text: str, *, perplexity: float | None = None) -> bool:
    """Whether ``text`` is degenerate by the module's rule: no word or number, a 3-gram repeat rate above
    `MAX_NGRAM_REPEAT_RATE` or a run longer than `MAX_RUN` (of words, or of words and numbers), a character
    loop (:func:`has_character_loop`), or a ``perplexity`` under the reference model (the unsteered model)
    above `MAX_PERPLEXITY`. ``perplexity`` None or NaN (what ``perplexity()`` gives an empty answer) means
    unknown; zero or negative is refused."""
    if perplexity is not None and perplexity <= 0:
        raise InvalidArgumentError(f"perplexity must be a positive number, NaN or None, got {perplexity!r}")
    if not re.search(r"\w", text):
        return True
    for tokens in (_tokens(text), _WORD_OR_NUMBER.findall(text.lower())):
        if _ngram_rate(tokens, 3) > MAX_NGRAM_REPEAT_RATE or _run(tokens) > MAX_RUN:
            return True
    if has_character_loop(text):
        return True
    return perplexity is not None and perplexity > MAX_PERPLEXITY
