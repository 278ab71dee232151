"""Word-level signs that an answer is not clean writing in its language, read from wordfreq's frequency lists
(Speer 2022; word frequencies in 40 languages from subtitles, Wikipedia, books and the web): words of another
language mixed in, invented words, and a word or two said twice in a row.

A word belongs to another language when its frequency there is at least ten times its frequency in the
answer's language (:data:`FOREIGN_MARGIN`, in Zipf units), so loanwords common in both ("computer", "pizza")
stay; a word is invented when the language's list does not have it at all.
"""

from __future__ import annotations

import math
import re

from wordfreq import tokenize, zipf_frequency

from workbench.evaluation.language import detect_language

__all__ = [
    "FOREIGN_MARGIN",
    "MIN_FOREIGN_SHARE",
    "MIN_INVENTED_SHARE",
    "foreign_share",
    "has_stutter",
    "invented_share",
    "mixes_languages",
]

#: How much more frequent (Zipf units: log10 per billion words) a word must be in another language to count
#: as that language's.
FOREIGN_MARGIN = 1.0
#: The share of another language's words from which an answer mixes languages.
MIN_FOREIGN_SHARE = 0.1
#: The share of invented words from which an answer is not real writing in its language.
MIN_INVENTED_SHARE = 0.2
#: The language pairs whose mixing :func:`mixes_languages` reads (the answer's language: the other).
_PAIRS = {"it": "en", "en": "it"}
_LETTERS = re.compile(r"[^\W\d_]")
_STUTTER = re.compile(r"\b((?:[^\W\d_]+\s+)?[^\W\d_]{2,})[\s,]+\1\b", re.IGNORECASE)


def _words(text: str, lang: str) -> list[str]:
    """The words of ``text`` with a letter, as wordfreq tokenizes ``lang``."""
    return [word for word in tokenize(text, lang) if _LETTERS.search(word)]


def foreign_share(text: str, lang: str, other: str) -> float:
    """Share of the words of ``text`` (written in ``lang``) that are ``other``'s (see the module); NaN without
    words."""
    words = _words(text, lang)
    if not words:
        return math.nan
    foreign = sum(zipf_frequency(w, other) >= zipf_frequency(w, lang) + FOREIGN_MARGIN for w in words)
    return foreign / len(words)


def invented_share(text: str, lang: str) -> float:
    """Share of the words of ``text`` that ``lang``'s frequency list does not have; NaN without words."""
    words = _words(text, lang)
    if not words:
        return math.nan
    return sum(zipf_frequency(w, lang) == 0 for w in words) / len(words)


def mixes_languages(text: str) -> bool:
    """Whether ``text``, written in Italian or English by language ID, has at least
    :data:`MIN_FOREIGN_SHARE` of its words in the other (False for other languages)."""
    lang = detect_language(text)
    if lang not in _PAIRS:
        return False
    return foreign_share(text, lang, _PAIRS[lang]) >= MIN_FOREIGN_SHARE


def has_stutter(text: str) -> bool:
    """Whether a word of two letters or more, or a two-word phrase ending in one, is said twice in a row with
    only spaces and commas between ("per, per", "because the because the"), case aside."""
    return _STUTTER.search(text) is not None
