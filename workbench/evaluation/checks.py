"""IFEval's 25 verifiable instructions, with IFEval's strict and loose scoring.

Each rule follows google-research ``instruction_following_eval/instructions.py``, odd parts included; the
rule's docstring names them. Where this module differs it says so:

- Kwargs IFEval would draw at random when absent (keywords, thresholds, relations, markers) are required
  here; kwargs given as None or NaN (IFEval's jsonl fills unused ones with null, pandas with NaN) are
  ignored, and counts may be integral floats (``3.0``).
- Keywords, markers and section splitters are matched literally; IFEval splices them into regular
  expressions unescaped (the same for the plain words in IFEval's data).
- ``length_constraints:number_sentences`` counts with the rule-based `text.split_sentences` rather than
  nltk's punkt, so list items are sentences; ``change_case:capital_word_frequency`` tokenises with a
  regular expression that approximates nltk ``word_tokenize`` on words (hyphenated words and ``U.S.A.``
  stay one, contractions such as ``DON'T`` split in two).
- Relation ``"exactly"`` is accepted for ``number_sentences`` and ``number_words`` (a workbench extension).
- langdetect is seeded (``DetectorFactory.seed = 0``, process-wide) so results repeat, as current IFEval
  does.

As in IFEval's ``evaluation_lib``, a response that is empty or whitespace fails every instruction.
"""

from __future__ import annotations

import collections
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langdetect import DetectorFactory, LangDetectException, detect

from workbench.errors import CheckError
from workbench.evaluation.text import count_sentences, count_words

__all__ = ["INSTRUCTION_IDS", "check", "check_all"]

_RELATIONS = ("less than", "at least")
_EXTENDED_RELATIONS = (*_RELATIONS, "exactly")
_CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
_INT_KWARGS = frozenset(
    {
        "frequency",
        "let_frequency",
        "num_sentences",
        "num_paragraphs",
        "num_words",
        "nth_paragraph",
        "num_placeholders",
        "num_bullets",
        "num_highlights",
        "num_sections",
        "capital_frequency",
    }
)
_LIST_KWARGS = frozenset({"keywords", "forbidden_words"})
_CONTRACTION = re.compile(r"(?i)(?<=\w)(n['’]t|['’](?:s|re|ve|ll|d|m))$")
_TOKEN = re.compile(r"\w+(?:[-'’.]\w+)*")


@dataclass(frozen=True)
class _Rule:
    test: Callable[[str, dict[str, Any]], bool]
    required: tuple[str, ...] = ()
    relations: tuple[str, ...] = _RELATIONS


def _compare(count: int, relation: str, threshold: int) -> bool:
    if relation == "less than":
        return count < threshold
    if relation == "at least":
        return count >= threshold
    return count == threshold


def _detected_as(text: str, language: str) -> bool:
    """langdetect (seeded) guesses ``language``. IFEval's odd rule kept: text langdetect cannot read at all
    (digits or punctuation only) passes."""
    DetectorFactory.seed = 0
    try:
        return detect(text) == language
    except LangDetectException:
        return True


def _response_language(value: str, p: dict[str, Any]) -> bool:
    """langdetect's guess equals ``language``; undetectable text passes (see `_detected_as`)."""
    return _detected_as(value, p["language"])


def _keywords_exist(value: str, p: dict[str, Any]) -> bool:
    """Every keyword occurs, case-insensitive, as a substring (``cat`` is found in ``concatenate``)."""
    return all(re.search(re.escape(k), value, flags=re.IGNORECASE) for k in p["keywords"])


def _keyword_frequency(value: str, p: dict[str, Any]) -> bool:
    """Case-insensitive, non-overlapping substring occurrences of the stripped ``keyword``."""
    found = len(re.findall(re.escape(p["keyword"].strip()), value, flags=re.IGNORECASE))
    return _compare(found, p["relation"], p["frequency"])


def _forbidden_words(value: str, p: dict[str, Any]) -> bool:
    """No forbidden word occurs as a whole word (``\\b`` boundaries), case-insensitive."""
    return not any(
        re.search(r"\b" + re.escape(w) + r"\b", value, flags=re.IGNORECASE) for w in p["forbidden_words"]
    )


def _letter_frequency(value: str, p: dict[str, Any]) -> bool:
    """Occurrences of ``letter`` in the lower-cased response (the letter is lower-cased too)."""
    found = collections.Counter(value.lower())[p["letter"].strip().lower()]
    return _compare(found, p["let_relation"], p["let_frequency"])


def _number_sentences(value: str, p: dict[str, Any]) -> bool:
    """`text.count_sentences` against ``num_sentences``."""
    return _compare(count_sentences(value), p["relation"], p["num_sentences"])


def _number_paragraphs(value: str, p: dict[str, Any]) -> bool:
    """Paragraphs are split on ``***`` (regex ``\\s?\\*\\*\\*\\s?``); empty ends are dropped, an empty
    paragraph in the middle fails; the count must equal ``num_paragraphs``."""
    paragraphs = re.split(r"\s?\*\*\*\s?", value)
    count = len(paragraphs)
    for index, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if index in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False
    return count == p["num_paragraphs"]


def _number_words(value: str, p: dict[str, Any]) -> bool:
    """`text.count_words` (IFEval's ``\\w+`` count) against ``num_words``."""
    return _compare(count_words(value), p["relation"], p["num_words"])


def _nth_paragraph_first_word(value: str, p: dict[str, Any]) -> bool:
    """Paragraphs split on ``\\n\\n``; non-empty ones must number ``num_paragraphs``. Odd: the nth paragraph
    is indexed among all pieces, empty ones included, and its first word is cut at the first of
    ``. , ? ! ' "`` and lower-cased before comparing with ``first_word``."""
    paragraphs = re.split(r"\n\n", value)
    count = sum(1 for paragraph in paragraphs if paragraph.strip())
    nth = p["nth_paragraph"]
    if nth > count or not paragraphs[nth - 1].strip():
        return False
    word = paragraphs[nth - 1].strip().split()[0].strip().lstrip("'").lstrip('"')
    first_word = re.split(r"[.,?!'\"]", word, maxsplit=1)[0].lower()
    return count == p["num_paragraphs"] and first_word == p["first_word"].lower()


def _number_placeholders(value: str, p: dict[str, Any]) -> bool:
    """At least ``num_placeholders`` matches of ``\\[.*?\\]`` (``[]`` counts)."""
    return len(re.findall(r"\[.*?\]", value)) >= p["num_placeholders"]


def _postscript(value: str, p: dict[str, Any]) -> bool:
    """A line (case-insensitive) contains the marker; ``P.S.`` also matches ``p. s.``, ``P.P.S`` matches
    ``p. p. s`` (IFEval's special patterns); the marker need not start the line."""
    marker = p["postscript_marker"].strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return bool(re.findall(pattern, value.lower(), flags=re.MULTILINE))


def _number_bullet_lists(value: str, p: dict[str, Any]) -> bool:
    """Exactly ``num_bullets`` lines match ``^\\s*\\*[^\\*].*$`` or ``^\\s*-.*$``: ``**bold**`` lines are not
    bullets, numbered items are not bullets, but any line starting with ``-`` (even ``---``) is."""
    stars = re.findall(r"^\s*\*[^\*].*$", value, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", value, flags=re.MULTILINE)
    return len(stars) + len(dashes) == p["num_bullets"]


def _constrained_response(value: str, p: dict[str, Any]) -> bool:
    """Contains ``My answer is yes.`` / ``no.`` / ``maybe.`` anywhere (case-sensitive)."""
    return any(option in value.strip() for option in _CONSTRAINED_OPTIONS)


def _number_highlighted_sections(value: str, p: dict[str, Any]) -> bool:
    """At least ``num_highlights`` non-empty ``*x*`` plus ``**x**`` spans on one line each."""
    singles = [h for h in re.findall(r"\*[^\n\*]*\*", value) if h.strip("*").strip()]
    doubles = [
        h for h in re.findall(r"\*\*[^\n\*]*\*\*", value) if h.removeprefix("**").removesuffix("**").strip()
    ]
    return len(singles) + len(doubles) >= p["num_highlights"]


def _multiple_sections(value: str, p: dict[str, Any]) -> bool:
    """At least ``num_sections`` occurrences of the splitter followed by a number (case-sensitive)."""
    pattern = r"\s?" + re.escape(p["section_spliter"].strip()) + r"\s?\d+\s?"
    return len(re.split(pattern, value)) - 1 >= p["num_sections"]


def _json_format(value: str, p: dict[str, Any]) -> bool:
    """After stripping a leading ```json / ```Json / ```JSON / ``` fence and a trailing ```, the text
    parses with ``json.loads``: any JSON value passes (``42``, ``"text"``, ``NaN``), trailing prose fails."""
    text = value.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        text = text.removeprefix(prefix)
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _title(value: str, p: dict[str, Any]) -> bool:
    """Some ``<<...>>`` on one line has non-blank content."""
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", value))


def _two_responses(value: str, p: dict[str, Any]) -> bool:
    """Split on ``******``: exactly two non-blank parts that differ after stripping; a blank part between
    them fails, blank parts at either end are allowed."""
    parts = value.split("******")
    valid = []
    for index, part in enumerate(parts):
        if part.strip():
            valid.append(part)
        elif index not in (0, len(parts) - 1):
            return False
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def _repeat_prompt(value: str, p: dict[str, Any]) -> bool:
    """The stripped, lower-cased response starts with the stripped, lower-cased ``prompt_to_repeat``."""
    return value.strip().lower().startswith(p["prompt_to_repeat"].strip().lower())


def _end_checker(value: str, p: dict[str, Any]) -> bool:
    """Ends with ``end_phrase``, case-insensitive, after stripping whitespace and then double quotes."""
    return value.strip().strip('"').lower().endswith(p["end_phrase"].strip().lower())


def _quotation(value: str, p: dict[str, Any]) -> bool:
    """The stripped response is longer than one character and starts and ends with ``"``."""
    text = value.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


def _capital_word_frequency(value: str, p: dict[str, Any]) -> bool:
    """Words with ``str.isupper()`` (``A``, ``I``, ``U.S.`` count) against ``capital_frequency``."""
    words = []
    for token in _TOKEN.findall(value):
        words.extend(part for part in _CONTRACTION.split(token) if part)
    found = sum(1 for word in words if word.isupper())
    return _compare(found, p["capital_relation"], p["capital_frequency"])


def _english_capital(value: str, p: dict[str, Any]) -> bool:
    """``str.isupper()`` and langdetect says English (or cannot tell: IFEval passes those)."""
    return value.isupper() and _detected_as(value, "en")


def _english_lowercase(value: str, p: dict[str, Any]) -> bool:
    """``str.islower()`` and langdetect says English (or cannot tell: IFEval passes those)."""
    return value.islower() and _detected_as(value, "en")


def _no_comma(value: str, p: dict[str, Any]) -> bool:
    """No ``,`` at all, thousands separators included (a full-width ``，`` is allowed)."""
    return "," not in value


_RULES: dict[str, _Rule] = {
    "keywords:existence": _Rule(_keywords_exist, ("keywords",)),
    "keywords:frequency": _Rule(_keyword_frequency, ("keyword", "frequency", "relation")),
    "keywords:forbidden_words": _Rule(_forbidden_words, ("forbidden_words",)),
    "keywords:letter_frequency": _Rule(_letter_frequency, ("letter", "let_frequency", "let_relation")),
    "language:response_language": _Rule(_response_language, ("language",)),
    "length_constraints:number_sentences": _Rule(
        _number_sentences, ("num_sentences", "relation"), _EXTENDED_RELATIONS
    ),
    "length_constraints:number_paragraphs": _Rule(_number_paragraphs, ("num_paragraphs",)),
    "length_constraints:number_words": _Rule(_number_words, ("num_words", "relation"), _EXTENDED_RELATIONS),
    "length_constraints:nth_paragraph_first_word": _Rule(
        _nth_paragraph_first_word, ("num_paragraphs", "nth_paragraph", "first_word")
    ),
    "detectable_content:number_placeholders": _Rule(_number_placeholders, ("num_placeholders",)),
    "detectable_content:postscript": _Rule(_postscript, ("postscript_marker",)),
    "detectable_format:number_bullet_lists": _Rule(_number_bullet_lists, ("num_bullets",)),
    "detectable_format:constrained_response": _Rule(_constrained_response),
    "detectable_format:number_highlighted_sections": _Rule(_number_highlighted_sections, ("num_highlights",)),
    "detectable_format:multiple_sections": _Rule(_multiple_sections, ("section_spliter", "num_sections")),
    "detectable_format:json_format": _Rule(_json_format),
    "detectable_format:title": _Rule(_title),
    "combination:two_responses": _Rule(_two_responses),
    "combination:repeat_prompt": _Rule(_repeat_prompt, ("prompt_to_repeat",)),
    "startend:end_checker": _Rule(_end_checker, ("end_phrase",)),
    "startend:quotation": _Rule(_quotation),
    "change_case:capital_word_frequency": _Rule(
        _capital_word_frequency, ("capital_frequency", "capital_relation")
    ),
    "change_case:english_capital": _Rule(_english_capital),
    "change_case:english_lowercase": _Rule(_english_lowercase),
    "punctuation:no_comma": _Rule(_no_comma),
}

INSTRUCTION_IDS: tuple[str, ...] = tuple(_RULES)


def _absent(value: Any) -> bool:
    """None (IFEval's jsonl) or NaN (IFEval's kwargs read through pandas) means the kwarg is not given."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _params(instruction_id: str, kwargs: Mapping[str, Any] | None) -> tuple[_Rule, dict[str, Any]]:
    """Look up the rule and validate its kwargs (None values dropped, IFEval names, no random defaults)."""
    rule = _RULES.get(instruction_id)
    if rule is None:
        raise CheckError(
            f"unknown instruction id {instruction_id!r}; "
            "see workbench.evaluation.checks.INSTRUCTION_IDS for the 25 valid ids"
        )
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise CheckError(
            f"{instruction_id} kwargs must be a mapping or None, got {type(kwargs).__name__}: json.loads it first"
        )
    given = {key: value for key, value in (kwargs or {}).items() if not _absent(value)}
    expected = ", ".join(rule.required) or "none"
    for key in given:
        if key not in rule.required:
            raise CheckError(f"{instruction_id} takes no kwarg {key!r}; its kwargs are: {expected}")
    for key in rule.required:
        if key not in given:
            raise CheckError(f"{instruction_id} needs kwarg {key!r}; pass all of: {expected}")
        given[key] = _validated(instruction_id, key, given[key], rule)
    if "nth_paragraph" in given and not 1 <= given["nth_paragraph"] <= given["num_paragraphs"]:
        raise CheckError(
            f"{instruction_id} kwarg 'nth_paragraph' must be between 1 and 'num_paragraphs', "
            f"got {given['nth_paragraph']} of {given['num_paragraphs']}"
        )
    return rule, given


def _validated(instruction_id: str, key: str, value: Any, rule: _Rule) -> Any:
    where = f"{instruction_id} kwarg {key!r}"
    if key in _INT_KWARGS:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CheckError(f"{where} must be a non-negative integer, got {value!r}")
        return value
    if key in _LIST_KWARGS:
        if isinstance(value, str) or not isinstance(value, Sequence) or not value:
            raise CheckError(f"{where} must be a non-empty list of strings, got {value!r}")
        if not all(isinstance(item, str) and item.strip() for item in value):
            raise CheckError(f"{where} must hold non-empty strings, got {value!r}")
        return list(value)
    if not isinstance(value, str) or not value.strip():
        raise CheckError(f"{where} must be a non-empty string, got {value!r}")
    if key.endswith("relation") and value not in rule.relations:
        raise CheckError(f"{where} must be one of {rule.relations}, got {value!r}")
    if key == "letter" and len(value.strip()) != 1:
        raise CheckError(f"{where} must be a single character, got {value!r}")
    return value


def _loose_variants(response: str) -> list[str]:
    """IFEval's eight loose variants: with and without the first/last line, each also without ``*``."""
    lines = response.split("\n")
    cut = [
        response,
        "\n".join(lines[1:]).strip(),
        "\n".join(lines[:-1]).strip(),
        "\n".join(lines[1:-1]).strip(),
    ]
    return cut + [variant.replace("*", "") for variant in cut]


def check(
    instruction_id: str, response: str, kwargs: Mapping[str, Any] | None = None, *, loose: bool = False
) -> bool:
    """Whether ``response`` follows IFEval instruction ``instruction_id`` with IFEval-named ``kwargs``.

    Strict scores the response as given; ``loose=True`` passes if any of IFEval's eight variants passes
    (the response with its first line, last line or both removed, each also with every ``*`` removed).
    Raises `CheckError` for an unknown id or missing, unexpected or invalid kwargs.
    """
    return check_all([instruction_id], [kwargs], response, loose=loose)[0]


def check_all(
    instruction_id_list: Sequence[str],
    kwargs_list: Sequence[Mapping[str, Any] | None],
    response: str,
    *,
    loose: bool = False,
) -> list[bool]:
    """`check` for each (id, kwargs) pair of an IFEval row, in order; the lists must have equal length."""
    if len(instruction_id_list) != len(kwargs_list):
        raise CheckError(
            f"got {len(instruction_id_list)} instruction ids but {len(kwargs_list)} kwargs; "
            "pass one kwargs mapping (or None) per id"
        )
    rules = []
    for instruction_id, kwargs in zip(instruction_id_list, kwargs_list, strict=True):
        rules.append(_params(instruction_id, kwargs))
    variants = _loose_variants(response) if loose else [response]
    return [any(v.strip() and rule.test(v, params) for v in variants) for rule, params in rules]
