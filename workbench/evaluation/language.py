"""Language identification with lingua, and metrics of how much of a response is in a language.

The detector chooses among a fixed set of languages, `LANGUAGES`: Italian, English and the languages a
steered model drifts into when it misses Italian (Spanish, French, Portuguese, German, Romanian, Catalan,
Dutch). A fixed set keeps it fast (its models preload in about a second, once per process; all 75 take
far longer and much more memory) and deterministic (the answer cannot change with the installed set), and
it keeps the near neighbours of Italian in the race, so that Spanish is not called Italian by elimination.
Text in a language outside the set is labelled with the nearest language inside it.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Sequence

from lingua import IsoCode639_1, LanguageDetector, LanguageDetectorBuilder

from workbench.errors import InvalidArgumentError
from workbench.evaluation.text import split_sentences

__all__ = [
    "LANGUAGES",
    "MIN_SENTENCE_WORDS",
    "code_switching_rate",
    "detect_language",
    "langdetect_probability",
    "sentence_share",
    "share_in_language",
]

LANGUAGES: tuple[str, ...] = ("it", "en", "es", "fr", "pt", "de", "ro", "ca", "nl")
"""ISO 639-1 codes `detect_language` chooses from; it answers ``"und"`` when it cannot tell."""

MIN_SENTENCE_WORDS = 3
"""Sentences with fewer words made of letters than this are too short to identify and are skipped."""

_LETTER_WORD = re.compile(r"[^\W\d_]+")


@functools.cache
def _detector() -> LanguageDetector:
    codes = [getattr(IsoCode639_1, code.upper()) for code in LANGUAGES]
    return LanguageDetectorBuilder.from_iso_codes_639_1(*codes).with_preloaded_language_models().build()


def detect_language(text: str) -> str:
    """ISO 639-1 code of the language of ``text`` among `LANGUAGES`, or ``"und"`` for text without letters."""
    if not _LETTER_WORD.search(text):
        return "und"
    language = _detector().detect_language_of(text)
    return "und" if language is None else language.iso_code_639_1.name.lower()


def _checked(lang: str) -> str:
    if lang not in LANGUAGES:
        raise InvalidArgumentError(f"language {lang!r} is not detectable here; use one of {LANGUAGES}")
    return lang


def share_in_language(texts: Sequence[str], lang: str = "it") -> float:
    """Share of ``texts`` whose `detect_language` is ``lang`` (empty texts count as not; NaN for no texts)."""
    if isinstance(texts, str):
        raise InvalidArgumentError("share_in_language takes a list of responses; wrap a single text in [...]")
    _checked(lang)
    if not texts:
        return math.nan
    return sum(detect_language(text) == lang for text in texts) / len(texts)


def _sentence_languages(text: str) -> list[str]:
    """Languages of the sentences long enough to identify (`MIN_SENTENCE_WORDS`), in order."""
    sentences = [s for s in split_sentences(text) if len(_LETTER_WORD.findall(s)) >= MIN_SENTENCE_WORDS]
    return [lang for lang in map(detect_language, sentences) if lang != "und"]


def sentence_share(text: str, lang: str) -> float:
    """Share of the identifiable sentences of ``text`` that are in ``lang``; NaN when there are none."""
    _checked(lang)
    languages = _sentence_languages(text)
    if not languages:
        return math.nan
    return sum(found == lang for found in languages) / len(languages)


def code_switching_rate(text: str) -> float:
    """Share of adjacent identifiable sentence pairs whose languages differ; NaN with fewer than two."""
    languages = _sentence_languages(text)
    if len(languages) < 2:
        return math.nan
    return sum(a != b for a, b in itertools.pairwise(languages)) / (len(languages) - 1)


def langdetect_probability(text: str, lang: str = "it") -> float:
    """langdetect's probability that ``text`` is in ``lang`` (0 when it names other languages only, or the
    text has no letters): the metric Scalena et al. report. langdetect is seeded, as for IFEval
    (:mod:`workbench.evaluation.checks`), so it repeats."""
    from langdetect import DetectorFactory, LangDetectException, detect_langs

    DetectorFactory.seed = 0
    if not _LETTER_WORD.search(text):
        return 0.0
    try:
        found = detect_langs(text)
    except LangDetectException:
        return 0.0
    return next((float(guess.prob) for guess in found if guess.lang == lang), 0.0)
