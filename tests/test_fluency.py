"""The text-only fluency signals; loops and noise never crash them."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import FUZZ, structured_text
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


loop = st.tuples(
    st.lists(st.sampled_from(["the", "cat", "Il", "gatto", "a", "B"]), min_size=1, max_size=4),
    st.integers(1, 12),
    st.sampled_from([" ", ", ", "\n", " 1. "]),
)


@FUZZ
@given(parts=loop, noise=structured_text, n=st.integers(1, 8), ppl=st.floats(allow_nan=False))
def test_fluency_metrics_on_loops_and_noise(parts, noise, n, ppl):
    cycle, times, sep = parts
    text = sep.join(cycle * times)
    assert longest_repeated_run(text) >= (times if len(cycle) <= 4 else 1)
    for sample in (text, noise + text, text + noise):
        assert 0.0 <= repeated_ngram_rate(sample, n) <= 1.0
        assert longest_repeated_run(sample) >= 1
        if ppl > 0:
            assert isinstance(is_degenerate(sample, perplexity=ppl), bool)
        else:
            with pytest.raises(InvalidArgumentError):
                is_degenerate(sample, perplexity=ppl)
