"""Reading a generated multiple-choice answer: letters in English and Italian (and the languages steered
answers drift into), option text in either language, and what must stay unread."""

from __future__ import annotations

import pytest

from workbench.errors import InvalidArgumentError
from workbench.evaluation.mc_parse import normalise, parse_answer

CAPITALS = ("Paris", "Rome", "The city of Berlin", "Madrid")
CAPITALI = ("Parigi", "Roma", "La città di Berlino", "Madrid")
LEGS = ("Six", "Two", "Eight", "Four")
GAMBE = ("Sei", "Due", "Otto", "Quattro")


@pytest.mark.parametrize(
    ("response", "pred"),
    [
        ("B", 1),
        ("B)", 1),
        ("B.", 1),
        ("(B)", 1),
        ("**B**", 1),
        ("B) Rome", 1),
        ("B. Rome\n\nRome is the capital of Italy.", 1),
        ("B - Rome", 1),
        ("Answer: B", 1),
        ("Answer: (B)", 1),
        ("The answer is (B).", 1),
        ("The answer is B because Rome is the capital.", 1),
        ("The correct answer is **B) Rome**.", 1),
        ("The correct option is D.", 3),
        ("C is the correct answer.", 2),
        ("Risposta: B", 1),
        ("Risposta: (C)", 2),
        ("risposta e' D", 3),
        ("La risposta corretta è B", 1),
        ("La risposta giusta è la C.", 2),
        ("L'opzione corretta è la A.", 0),
        ("B è la risposta corretta.", 1),
        ("Risposta:\n**C**", 2),
        ("A resposta é C", 2),  # drifted into Portuguese
        ("To responder a pergunta, vamos ver... A resposta correta é D.", 3),
        ("The spider ha due gambe (B)", 1),  # drifted into Italian, one bracketed label
        ("A) Sound\n\nThe answer is D) Gravity.", 3),  # a stated answer outranks the opening label
        ("Option A is wrong; the correct option is D.", 3),  # "Option A" states nothing
        ("The answer is B. The answer is C.", 1),  # the first statement decides
        ("A. and A. and A. and A.", 0),
    ],
)
def test_letters(response, pred):
    assert parse_answer(response, CAPITALS) == (pred, "letter")


@pytest.mark.parametrize(
    ("response", "pred", "also"),
    [
        ("Rome", 1, ()),
        ("I think it is Rome.", 1, ()),
        ("The city of Berlin.", 2, ()),  # a match inside a longer option counts for the longer one
        ("city of berlin", 2, ()),  # case, and no leading article
        ("Roma è la capitale d'Italia.", 1, (CAPITALI,)),  # the parallel Italian option
        ("la citta di berlino", 2, (CAPITALI,)),  # accents dropped
        ("Rome.\nParis is not.", 1, ()),  # the first line that names an option decides
    ],
)
def test_option_text(response, pred, also):
    assert parse_answer(response, CAPITALS, also=also) == (pred, "text")


def test_drifted_answers_read_in_either_language():
    assert parse_answer("The spider ha due gambe.", LEGS, also=[GAMBE]) == (1, "text")
    assert parse_answer("Il ragno ha otto zampe.", GAMBE, also=[LEGS]) == (2, "text")
    assert parse_answer("The spider has eight legs.", GAMBE, also=[LEGS]) == (2, "text")
    assert parse_answer("The spider ha due gambe.", LEGS) == (-1, "none")  # without the Italian options


@pytest.mark.parametrize(
    "response",
    [
        "",
        "   \n ",
        "a cat is a pet",  # the article "a" is not option A
        "A cat is a pet",  # nor is "A" opening a sentence
        "I think so.",  # "I" is not an option of four
        "The answer is a city.",
        "The answer is A or B.",  # two letters state nothing
        "Either B or C.",
        "B o C, non lo so.",
        "A) Paris\nB) Rome\nC) The city of Berlin",  # the options echoed back
        "A. B.\n\nThe opposite is clear.",  # two labels on the first line
        "Berlin is a capital.",  # not an option's whole text
        "Rome or Paris, I am not sure.",  # two options named
        "A. Madrid",  # the label says A, its text D: a contradiction
        "The answer is D. Paris is the capital.",
        "E il suono.",  # Italian "E" (and) with four options
        "The answer is G.",  # a letter beyond the options
    ],
)
def test_unparsed(response):
    assert parse_answer(response, CAPITALS) == (-1, "none")


def test_option_text_the_question_contains_is_not_read():
    choices = ("Chiave", "Tazza", "Asciugamano", "Cucchiaio")
    question = "Che cosa usi per aprire una porta chiusa a chiave?"
    echo = "Il scelta è che cosa usi per aprire una porta chiusa a chiave."
    assert parse_answer(echo, choices) == (0, "text")
    assert parse_answer(echo, choices, question=question) == (-1, "none")
    assert parse_answer("A) Chiave", choices, question=question) == (0, "letter")


def test_more_room_keeps_what_the_start_said():
    start = "C. Portugal"
    for more in ("", "\nC. Portugal\nC. Portugal", "\n\nPortugal is west of Spain. Italy is not."):
        assert parse_answer(start + more, ("France", "Greece", "Portugal", "Italy")) == (2, "letter")


def test_normalise():
    assert normalise("  L'Attrito,  la GRAVITÀ! ") == "l attrito la gravita"
    assert normalise("**B)**") == "b"


def test_refusals():
    with pytest.raises(InvalidArgumentError):
        parse_answer(None, CAPITALS)
    with pytest.raises(InvalidArgumentError):
        parse_answer("A", ("only",))
    with pytest.raises(InvalidArgumentError):
        parse_answer("A", CAPITALS, also=[("Parigi", "Roma")])
