"""Sentence splitting, word counting and the text-only fluency signals."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.errors import InvalidArgumentError
from workbench.evaluation.fluency import (
    MAX_NGRAM_REPEAT_RATE,
    MAX_RUN,
    has_character_loop,
    is_degenerate,
    longest_repeated_run,
    repeated_ngram_rate,
)
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


# --- fluency -----------------------------------------------------------------------------------------------

NORMAL = [
    "The capital of France is Paris. It is known for the Eiffel Tower, the Louvre museum and its cafes. "
    "Millions of tourists visit the city every year, especially in spring and summer.",
    "To make a good cup of coffee, start with freshly ground beans. Use water just below boiling, about "
    "ninety degrees, and let it steep for four minutes before pressing. Serve it immediately, because "
    "coffee loses its aroma quickly as it cools down. If you prefer a milder taste, add a little milk.",
    "Roma è la capitale d'Italia ed è famosa per il Colosseo, i Fori Imperiali e la Fontana di Trevi. "
    "Ogni anno milioni di turisti visitano la città, soprattutto in primavera. La cucina romana offre "
    "piatti semplici ma saporiti, come la carbonara e l'amatriciana.",
    "Ecco tre consigli per studiare meglio:\n- Fai pause brevi ogni ora.\n- Ripeti ad alta voce i concetti "
    "più difficili.\n- Dormi almeno sette ore per notte, perché la memoria si consolida durante il sonno.",
    '{"name": "Mario Rossi", "age": 42, "city": "Torino", "hobbies": ["cycling", "cooking", "chess"]}',
    "Yes, I think so. The data supports it, and the method is sound. Still, we should run one more test "
    "with a larger sample before we publish, just to be safe.",
    "Il mio consiglio è di partire presto la mattina, quando le strade sono ancora vuote. Porta con te "
    "acqua, una giacca leggera e una mappa, anche se hai il telefono: in montagna il segnale non è sempre "
    "garantito. Se il tempo cambia, torna indietro senza esitare.",
    "Learning a new language as an adult is hard, but it is far from impossible. The first thing to accept "
    "is that you will make mistakes, and that mistakes are part of the process. Children learn by trying, "
    "failing and trying again, and adults can do the same if they let go of the fear of sounding silly. "
    "The second thing is to practise a little every day rather than a lot once a week. Twenty minutes of "
    "reading, listening or speaking every day builds a habit, and the habit does most of the work for you. "
    "The third thing is to use the language for something you actually care about. If you like cooking, "
    "follow recipes in the language you are learning. If you like football, watch the matches with the "
    "local commentary. If you like music, learn the lyrics of the songs you listen to and sing along, even "
    "badly. The fourth thing is to talk to people as early as possible. It does not matter if you only "
    "know a few words: people are usually patient, and they appreciate the effort. Finally, measure your "
    "progress in months, not days. Keep a small diary in the new language and read it again after a few "
    "months: you will be surprised by how far you have come.",
    "Ha ha ha, that is a good one! I think that that joke works.",
    "42",
    "The world population grew from 1000000000 people in 1804 to 8000000000 in 2022.",
    "| year | sales |\n|------|-------|\n| 2019 | 10% |\n| 2020 | 12% |\n| 2021 | 15% |\n----------------",
    "Version 3.11.1 of the resolver uses 1.1.1.1 and 8.8.8.8 by default, then 9.9.9.9 as a fallback.",
]

DEGENERATE = [
    "I'm sorry, I'm sorry, I'm sorry, I'm sorry, I'm sorry, I'm sorry, I'm sorry, I'm sorry.",
    "The answer is the answer is the answer is the answer is the answer is the answer is the answer is",
    "Ciao! Ciao! Ciao! Ciao! Ciao! Ciao! Ciao! Ciao! Ciao! Ciao!",
    "The best way to learn is to practice. The best way to learn is to practice. The best way to learn is "
    "to practice. The best way to learn is to practice. The best way to learn is to practice.",
    "è un bel giorno di sole e il sole è un bel giorno di sole e il sole è un bel giorno di sole e il sole "
    "è un bel giorno di sole e il sole è un bel giorno",
    "1. The cat\n2. The cat\n3. The cat\n4. The cat\n5. The cat\n6. The cat\n7. The cat\n8. The cat",
    "of the of the of the of the of the of the of the of the",
    'Sure! Here is the JSON: {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": 1}}}}}}}}}',
    "la la la la la la la la la la la la",
    "Questo è molto importante. Questo è molto importante. Questo è molto importante. Questo è molto "
    "importante. Questo è molto importante. Questo è molto importante.",
    "",
    "   \n ",
    "... !!! ???",
    # Number salad from a steered base model (Gemma 3 270M): no letter words to repeat.
    "1001:10)D:10=1=1=1=1=1=1=1=1=1=1=1=1=1=1=1=1=1=1",
    "1001:10.10,10,5,10,5,10,5,10,10,10,5,10,10,5,10,",
    "10001001:100100010010010010010010010010010010010",
    "151.1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,",
    # Loops the old 0.5 limit let through (the frontier's examples, 3-gram repeat rate 0.3-0.43):
    "L'amore di Marco è un'ammoniero di Giulia, ma non è un'ammoniero di Giulia. L'amore di Marco è grande.",
    "The sky is blue because of Rayleigh scattering. The sky is blue because of Rayleigh scattering.",
]


@pytest.mark.parametrize("text", NORMAL)
def test_normal_text_is_not_degenerate(text: str) -> None:
    assert repeated_ngram_rate(text) <= 0.05
    assert longest_repeated_run(text) <= 3
    assert not is_degenerate(text)


@pytest.mark.parametrize("text", DEGENERATE)
def test_looping_or_empty_text_is_degenerate(text: str) -> None:
    assert is_degenerate(text)


def test_thresholds_separate_the_samples_with_margin() -> None:
    normal_rate = max(repeated_ngram_rate(t) for t in NORMAL)
    loops = [t for t in DEGENERATE if len(re.findall("[^\\W\\d_]+", t)) > 2]  # loops of words
    caught = [
        repeated_ngram_rate(t) > MAX_NGRAM_REPEAT_RATE or longest_repeated_run(t) > MAX_RUN for t in loops
    ]
    assert normal_rate < MAX_NGRAM_REPEAT_RATE / 5
    assert all(caught)


@pytest.mark.parametrize(
    ("text", "n", "rate"),
    [
        ("", 3, 0.0),
        ("a b", 3, 0.0),
        ("a b c", 3, 0.0),
        ("a b c a b c", 3, 0.25),  # (a b c)(b c a)(c a b)(a b c): one repeat of four
        ("a a a a", 1, 0.75),
        ("The cat. the CAT!", 2, 1 / 3),  # (the cat)(cat the)(the cat): case and punctuation ignored
    ],
)
def test_repeated_ngram_rate(text: str, n: int, rate: float) -> None:
    assert repeated_ngram_rate(text, n) == pytest.approx(rate)


@pytest.mark.parametrize(
    ("text", "loop"),
    [
        ("=1" * 8, True),  # 8 copies of a 2-character cycle
        ("=1" * 7, False),
        ("x" + "100" * 8, True),
        ("ah" * 9, True),
        ("-" * 40, False),  # a rule line: one character, no letter or digit
        ("1" + "0" * 15, False),  # 10^15: one repeated digit
        ("1" + "0" * 16, True),
        ("100%100%100%4102222222222222222222222", True),  # number salad from a steered base model
        ("-|" * 12, False),  # a cycle without a letter or digit
    ],
)
def test_character_loops(text: str, loop: bool) -> None:
    assert has_character_loop(text) is loop


def test_repeated_ngram_rate_refuses_n_below_one() -> None:
    with pytest.raises(InvalidArgumentError, match="n must be at least 1"):
        repeated_ngram_rate("a b", 0)


@pytest.mark.parametrize(
    ("text", "run"),
    [
        ("", 0),
        ("hello", 1),
        ("a b c d", 1),
        ("the the the", 3),
        ("I am I am I am I", 3),
        ("x one two three four one two three four y", 2),
        ("one two three four five one two three four five", 1),  # cycles longer than 4 words are not runs
        ("Ciao! Ciao, ciao.", 3),
    ],
)
def test_longest_repeated_run(text: str, run: int) -> None:
    assert longest_repeated_run(text) == run


@pytest.mark.parametrize(
    ("perplexity", "degenerate"),
    [(None, False), (math.nan, False), (1.0, False), (35.0, False), (1000.0, False), (1e4, True)],
)
def test_only_word_salad_perplexity_is_degenerate(perplexity: float | None, degenerate: bool) -> None:
    """A ceiling and no floor: greedy answers are often very predictable to the model that wrote them."""
    assert is_degenerate(NORMAL[0], perplexity=perplexity) is degenerate


def test_infinite_perplexity_is_degenerate_and_non_positive_is_refused() -> None:
    assert is_degenerate(NORMAL[0], perplexity=math.inf)
    for bad in (0.0, -1.0):
        with pytest.raises(InvalidArgumentError, match="perplexity"):
            is_degenerate(NORMAL[0], perplexity=bad)


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_fuzz_text_metrics_never_crash(text: str) -> None:
    sentences = split_sentences(text)
    assert all(s and s == s.strip() for s in sentences)
    assert count_sentences(text) == len(sentences)
    assert count_words(text) >= 0
    assert 0.0 <= repeated_ngram_rate(text) <= 1.0
    assert longest_repeated_run(text) >= 0
    assert isinstance(is_degenerate(text), bool)
