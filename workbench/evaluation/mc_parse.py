"""Read which option a generated multiple-choice answer chose: its letter, else its option's text.

Scalena, Fersini and Nissim (2024) extract the letter with ``(Risposta:|risposta e')\\s*\\(?([ABCD])\\)?``.
Steered answers drift between languages ("The spider ha due gambe (B)", "A resposta é C") and loop, so
:func:`parse_answer` reads, in order, and the first reading that applies decides:

1. ``letter``, the first stated answer, in English, Italian, Portuguese, Spanish or French ("Answer: B",
   "The correct answer is (B)", "Risposta: B", "La risposta corretta è la B", "risposta e' B", "the
   correct option is B", "B is the correct answer"; "A or B" states nothing);
2. ``letter``, a label opening the answer's first line: "B", "B)", "(B)", "B.", "**B**", "B - Paris"
   (not when that line has another option's label, "A. B."; and when the next line opens with another
   label, the answer echoes the options: ``none``);
3. ``letter``, the one bracketed label the answer has ("The spider ha due gambe (B)");
4. ``text``, the first line that names an option's text names only that one (its text in another
   language, ``also``, counts), compared without case, accents, punctuation or a leading article
   ("L'attrito" matches "attrito"); a match inside a longer option's match counts for the longer one
   ("Berlin" in "The city of Berlin"); option text the question itself contains is not read;
5. ``none``: ``pred`` is -1. Also when a letter's own text names another option ("A. Italy" where Italy
   is D): the answer contradicts itself.

Since the first reading decides, more room seldom changes what a shorter answer was read as (only a
first line or a bracketed label that gains another label does). Letters are capitals within the item's options: the article "a" is never
option A, nor "I" option I of a four-option question.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence
from typing import NamedTuple

from workbench.errors import InvalidArgumentError

__all__ = ["Parsed", "normalise", "parse_answer"]

PARSED_BY = ("letter", "text", "none")


class Parsed(NamedTuple):
    """The option an answer chose (``pred``, 0-based, -1 for none) and how it was read (`PARSED_BY`)."""

    pred: int
    parsed_by: str


# A capital letter standing alone (not "A's", "Art"), not one of two ("A or B", "B o C").
_LETTER = r"[\(\[]?\s*([A-Z])(?![\w'’])(?!\)?\s*(?i:or|o|ou|and|e|y|/)\s*[\(\[]?[A-Z](?![\w'’]))"
_ANSWER = r"(?:answer|risposta|resposta|respuesta|r[ée]ponse)"
_OPTION = r"(?:option|choice|opzione|scelta|alternativa|op[çc][ãa]o|opci[óo]n)"
_QUALIFIER = r"(?:\s+(?:corrett[ao]|giust[ao]|esatt[ao]|correct[ao]?|right|final|best|corret[ao]|cert[ao]))?"
_VERB = r"(?:\s*:|\s+(?:is|è|e'|é|es|est|sarebbe|would\s+be|should\s+be|must\s+be|seems\s+to\s+be))"
_FILLER = r"(?:\s+(?:the|la|l'|a|letter|lettera|option|opzione|opção|opción))?"
_STATED = re.compile(
    rf"(?i:\b{_ANSWER}{_QUALIFIER}{_VERB}?\s*[:\-–]?{_FILLER}\s*[:\-–]?)\s*{_LETTER}"
    rf"|(?i:\b{_OPTION}{_QUALIFIER}{_VERB}{_FILLER}\s*[:\-–]?)\s*{_LETTER}"
    rf"|\b([A-Z])\)?\s+(?i:is\s+the\s+(?:correct|right)\s+(?:answer|option|choice)"
    r"|è\s+la\s+risposta\s+(?:corretta|giusta|esatta)|è\s+l'opzione\s+(?:corretta|giusta|esatta))"
)
_OPENING = re.compile(r"[\(\[]?([A-Z])(?:[\)\]\.](?!\w)|\s*$|\s*\n|\s+[-–—]\s)")
# The text a label introduces: "B) Paris", "(B) Paris", "B. Paris", "B: Paris", "B - Paris" (not "B, not C").
_LABEL_TEXT = re.compile(r"(?:[\)\]][ \t]*[\.:\-–—]?|[\.:]|[ \t]+[-–—])[ \t]*([^\W_][^\n]*)")
_BRACKETED = re.compile(r"[\(\[]([A-Z])[\)\]]")
_LABEL = re.compile(r"(?<![\w'’])[\(\[]?([A-Z])[\)\]\.](?!\w)")
_MARKUP = re.compile(r"[*_#`\"“”«»]")
_ENGLISH, _ITALIAN = ("the", "a", "an"), ("il", "lo", "la", "i", "gli", "le", "l", "un", "una", "uno")
_ARTICLES = frozenset((*_ENGLISH, *_ITALIAN, "o", "os", "as", "el", "los", "las", "les"))  # + pt, es, fr


def normalise(text: str) -> str:
    """Lower case, no accents, words separated by single spaces (apostrophes split words)."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^\w]+|_", " ", plain.lower()).split())


def _variants(choice: str) -> set[str]:
    """An option's normalised text, with and without a leading article."""
    words = normalise(choice).split()
    out = {" ".join(words)} if words else set()
    if len(words) > 1 and words[0] in _ARTICLES:
        out.add(" ".join(words[1:]))
    return out


def _named(text: str, options: list[set[str]]) -> set[int]:
    """The options whose text ``text`` names (a match inside a longer option's match not counting)."""
    padded = f" {normalise(text)} "
    spans: list[tuple[int, int, int]] = []  # (start, end, option)
    for k, variants in enumerate(options):
        for variant in variants:
            needle = f" {variant} "
            start = padded.find(needle)
            while start != -1:
                spans.append((start, start + len(needle), k))
                start = padded.find(needle, start + 1)
    return {
        k
        for s, e, k in spans
        if not any(s2 <= s and e <= e2 and (e2 - s2) > (e - s) and k2 != k for s2, e2, k2 in spans)
    }


def _read(k: int, text: str, end: int, options: list[set[str]]) -> Parsed:
    """Letter ``k`` read at ``text[:end]``, unless the text its label introduces opens with another option."""
    own = _LABEL_TEXT.match(text, end)
    words = f"{normalise(own.group(1))} " if own else ""
    opens = [(len(v), j) for j, vs in enumerate(options) for v in vs if words.startswith(f"{v} ")]
    return Parsed(-1, "none") if opens and max(opens)[1] != k else Parsed(k, "letter")


def _index(letter: str) -> int:
    return string.ascii_uppercase.index(letter)


def parse_answer(
    response: str, choices: Sequence[str], *, also: Sequence[Sequence[str]] = (), question: str = ""
) -> Parsed:
    """Which of ``choices`` a generated ``response`` chose, by letter, else by text (module docstring).

    ``also`` holds the same options in other languages (each in the order of ``choices``): text in any of
    them counts for that option. Option text that ``question`` (the question, in any of its languages)
    contains is not read: an answer that repeats the question would name it.
    """
    if not isinstance(response, str) or not isinstance(question, str):
        raise InvalidArgumentError("response and question must be strings")
    n = len(choices)
    if not 2 <= n <= len(string.ascii_uppercase):
        raise InvalidArgumentError(f"an answer needs 2 to 26 choices, got {n}")
    for other in also:
        if len(other) != n:
            raise InvalidArgumentError(
                f"each 'also' list needs {n} options (one per choice), got {len(other)}"
            )
    options = [set().union(*(_variants(c) for c in texts)) for texts in zip(choices, *also, strict=True)]
    asked = f" {normalise(question)} "
    unasked = [{v for v in vs if f" {v} " not in asked} for vs in options]
    text = _MARKUP.sub("", response).replace("’", "'")
    for match in _STATED.finditer(text):
        group = next(g for g in range(1, 4) if match.group(g) is not None)
        if _index(match.group(group)) < n:
            return _read(_index(match.group(group)), text, match.end(group), options)
    lines = [line.strip(" \t'-–>:") for line in text.splitlines() if line.strip(" \t'-–>:")]
    opening = _OPENING.match(lines[0]) if lines else None
    if opening and (k := _index(opening.group(1))) < n:
        following = _OPENING.match(lines[1]) if len(lines) > 1 else None
        if following and following.group(1) != opening.group(1):
            return Parsed(-1, "none")  # the options echoed back
        if {_index(m.group(1)) for m in _LABEL.finditer(lines[0])} & set(range(n)) <= {k}:
            return _read(k, lines[0], opening.end(1), options)
    bracketed = [m for m in _BRACKETED.finditer(text) if _index(m.group(1)) < n]
    if bracketed and len({m.group(1) for m in bracketed}) == 1:
        return _read(_index(bracketed[0].group(1)), text, bracketed[0].end(1), options)
    for line in lines:
        named = _named(line, unasked)
        if named:
            return Parsed(named.pop(), "text") if len(named) == 1 else Parsed(-1, "none")
    return Parsed(-1, "none")
