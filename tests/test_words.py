"""Word-level signs of unclean writing: another language's words, invented words, a stutter."""

from __future__ import annotations

import math

import pytest

from workbench.evaluation.words import foreign_share, has_stutter, invented_share, mixes_languages


def test_foreign_words_are_counted_and_loanwords_are_not():
    assert foreign_share("Il cielo è blu because of the air.", "it", "en") >= 0.4
    assert foreign_share("Uso il computer e la pizza ogni giorno.", "it", "en") == 0
    assert math.isnan(foreign_share("42, 17!", "it", "en"))


def test_mixing_is_read_between_italian_and_english_only():
    assert mixes_languages("Marte è il pianeta rosso, è molto freddo e has two moons and a very thin air.")
    assert not mixes_languages("Marte è il pianeta rosso ed è molto freddo, con due piccole lune.")
    assert not mixes_languages("El cielo es azul porque el aire dispersa más la luz azul que la roja.")


def test_invented_words_are_those_the_list_lacks():
    assert invented_share("Il gatto dorme sul divano.", "it") == 0
    assert invented_share("Il glorbatto sfrimbola sul divanazzo.", "it") == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("text", "stutters"),
    [
        ("per la, la mente", True),
        ("because the because the trees stop", True),
        ("the Moon moon pulls", True),
        ("Astronauts on the I.S.S. sleep", False),
        ('"splits into colors", "colors": ["red"]', False),
        ("Il mondo è bello e il mondo è grande", False),
    ],
)
def test_a_stutter_is_a_word_or_two_said_twice_in_a_row(text, stutters):
    assert has_stutter(text) is stutters
