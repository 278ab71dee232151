"""Sentence splitting and word counting."""

from __future__ import annotations

import pytest

from workbench.evaluation.text import count_sentences, count_words, split_sentences

# --- sentences ---------------------------------------------------------------------------------------------

SPLITS = [
    ("", []),
    ("   \n\n ", []),
    ("One sentence without a stop", ["One sentence without a stop"]),
    ("First. Second! Third? Fourth.", ["First.", "Second!", "Third?", "Fourth."]),
    ("this is one. this is two.", ["this is one.", "this is two."]),
    ("Dr. Smith met Mr. Jones. They talked.", ["Dr. Smith met Mr. Jones.", "They talked."]),
    ("Fruit, e.g. apples, i.e. red ones. Fine.", ["Fruit, e.g. apples, i.e. red ones.", "Fine."]),
    (
        "Pens, paper, etc. are here. Bring them etc. The end.",
        ["Pens, paper, etc. are here.", "Bring them etc.", "The end."],
    ),
    ("I live in the U.S. The weather is nice.", ["I live in the U.S.", "The weather is nice."]),
    ("The U.S. Army is big. It is old.", ["The U.S. Army is big.", "It is old."]),
    ("We met at 5 p.m. on Monday. Fine.", ["We met at 5 p.m. on Monday.", "Fine."]),
    ("J. K. Rowling wrote it. John F. Kennedy spoke.", ["J. K. Rowling wrote it.", "John F. Kennedy spoke."]),
    ("Take vitamin C. It helps.", ["Take vitamin C.", "It helps."]),
    ("Pi is 3.14 here. It costs 1,000.50 dollars.", ["Pi is 3.14 here.", "It costs 1,000.50 dollars."]),
    ("See example.com and v1.2.3 now. Done.", ["See example.com and v1.2.3 now.", "Done."]),
    ("Wait... What? Well... maybe not.", ["Wait...", "What?", "Well... maybe not."]),
    ("Wait… Go!", ["Wait…", "Go!"]),
    ('He said "Hello." Then he left.', ['He said "Hello."', "Then he left."]),
    ("She asked (why?) and left. Ok.", ["She asked (why?) and left.", "Ok."]),
    ("«Ciao.» Poi è uscito.", ["«Ciao.»", "Poi è uscito."]),
    ("Really?! Yes.", ["Really?!", "Yes."]),
    ("See No. 5 and p. 12 here. Done.", ["See No. 5 and p. 12 here.", "Done."]),
    ("Ideas:\n- first idea\n- second idea\n* third", ["Ideas:", "first idea", "second idea", "third"]),
    ("1. Mix flour\n2. Add eggs\n3) Bake.", ["Mix flour", "Add eggs", "Bake."]),
    ("- One point. Two sentences.\n- Next", ["One point.", "Two sentences.", "Next"]),
    ("- item starts\n  and continues.\nNew line.", ["item starts and continues.", "New line."]),
    ("**Bold** text\ncontinues here.", ["**Bold** text continues here."]),
    ("# Title\nBody text. More.", ["Title", "Body text.", "More."]),
    ("Para one\n\nPara two", ["Para one", "Para two"]),
    ("Line one\nline two.", ["Line one line two."]),
    ("Text.\n***\n---\nMore.", ["Text.", "More."]),
    ("| a | b |\n| 1 | 2 |", ["| a | b |", "| 1 | 2 |"]),
    (
        "Il Sig. Rossi è arrivato. La Dott.ssa Bianchi no.",
        ["Il Sig. Rossi è arrivato.", "La Dott.ssa Bianchi no."],
    ),
    ("Nel 44 a.C. Cesare morì. Poi?", ["Nel 44 a.C. Cesare morì.", "Poi?"]),
    (
        "Abbiamo pane, vino ecc. per tutti. Ho comprato frutta ecc. Poi basta.",
        ["Abbiamo pane, vino ecc. per tutti.", "Ho comprato frutta ecc.", "Poi basta."],
    ),
    ("Così è. Andiamo!", ["Così è.", "Andiamo!"]),
    ("Vedi pag. 5 e cfr. Dante. Fine.", ["Vedi pag. 5 e cfr. Dante.", "Fine."]),
    ("L'azienda S.p.A. cresce. Bene.", ["L'azienda S.p.A. cresce.", "Bene."]),
    ("Il weekend è finito... Domani si lavora!", ["Il weekend è finito...", "Domani si lavora!"]),
    ("¿Qué pasa? ¡Nada! Así es. Bueno.", ["¿Qué pasa?", "¡Nada!", "Así es.", "Bueno."]),
]


@pytest.mark.parametrize(("text", "expected"), SPLITS)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected
    assert count_sentences(text) == len(expected)


def test_windows_newlines_behave_like_unix_ones() -> None:
    assert split_sentences("- a\r\n- b\r\rC.") == ["a", "b", "C."]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", 0),
        ("Hello, world!", 2),
        ("It's 3.14, isn't it?", 7),  # \w+: It s 3 14 isn t it
        ("snake_case and well-known", 4),  # _ is a word character, - is not
        ("perché è così", 3),
        ("1,000,000", 3),
    ],
)
def test_count_words_is_ifeval_regexp_count(text: str, words: int) -> None:
    assert count_words(text) == words
