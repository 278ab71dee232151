"""IFEval checks: each instruction passes and fails where IFEval says, strict and loose; kwargs errors;
drawn and garbage kwargs on structured text never crash."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.refusals import one_line, refuses
from tests.strategies import FUZZ, json_values, nonblank, structured_text
from workbench.errors import CheckError
from workbench.evaluation.checks import INSTRUCTION_IDS, check, check_all

# id -> (kwargs, a response that follows it, a response that does not)
CASES: dict[str, tuple[dict | None, str, str]] = {
    "keywords:existence": (
        {"keywords": ["romantic", "Mona Lisa"]},
        "The ROMANTIC river passes the museum where the mona lisa hangs.",
        "The river passes the museum where the famous painting hangs.",
    ),
    "keywords:frequency": (
        {"keyword": "pasta", "frequency": 3, "relation": "at least"},
        "Pasta, more pasta and PASTA again.",
        "Pasta and more pasta.",
    ),
    "keywords:forbidden_words": (
        {"forbidden_words": ["house", "power"]},
        "The household was powerless.",
        "The House has the power.",
    ),
    "keywords:letter_frequency": (
        {"letter": "z", "let_frequency": 2, "let_relation": "less than"},
        "A lazy afternoon.",
        "Zebras zigzag.",
    ),
    "language:response_language": (
        {"language": "it"},
        "Questo fine settimana andiamo al mare con tutta la famiglia.",
        "This weekend we are going to the seaside with the whole family.",
    ),
    "length_constraints:number_sentences": (
        {"num_sentences": 3, "relation": "less than"},
        "One sentence. Two sentences.",
        "One sentence. Two sentences. Three sentences.",
    ),
    "length_constraints:number_paragraphs": (
        {"num_paragraphs": 2},
        "First paragraph.\n***\nSecond paragraph.",
        "First paragraph.\n\nSecond paragraph.",
    ),
    "length_constraints:number_words": (
        {"num_words": 5, "relation": "at least"},
        "one two three four five",
        "one two three four",
    ),
    "length_constraints:nth_paragraph_first_word": (
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "Finally"},
        "First part.\n\nFinally, the end.",
        "First part.\n\nAt last, the end.",
    ),
    "detectable_content:number_placeholders": (
        {"num_placeholders": 2},
        "Dear [name], your order ships to [address].",
        "Dear [name], your order ships soon.",
    ),
    "detectable_content:postscript": (
        {"postscript_marker": "P.S."},
        "See you soon.\n\nP.S. Bring the book.",
        "See you soon. Bring the book.",
    ),
    "detectable_format:number_bullet_lists": (
        {"num_bullets": 2},
        "Two points:\n* first\n- second",
        "Three points:\n* first\n* second\n* third",
    ),
    "detectable_format:constrained_response": (
        None,
        "My answer is maybe.",
        "My answer is probably.",
    ),
    "detectable_format:number_highlighted_sections": (
        {"num_highlights": 2},
        "This is *important* and **this too**.",
        "Only *one* highlight here.",
    ),
    "detectable_format:multiple_sections": (
        {"section_spliter": "Section", "num_sections": 2},
        "Section 1\nIntro.\nSection 2\nBody.",
        "Section 1\nIntro and body.",
    ),
    "detectable_format:json_format": (
        None,
        '{"city": "Rome", "population": 2800000}',
        "city: Rome",
    ),
    "detectable_format:title": (
        None,
        "<<Ode to Joy>>\nA poem.",
        "<< >>\nA poem without a title.",
    ),
    "combination:two_responses": (
        None,
        "First answer.\n******\nSecond answer.",
        "Same answer.\n******\nSame answer.",
    ),
    "combination:repeat_prompt": (
        {"prompt_to_repeat": "Write a haiku about rain."},
        "write a haiku about rain. Rain on the roof...",
        "Here is a haiku. Write a haiku about rain.",
    ),
    "startend:end_checker": (
        {"end_phrase": "Any other questions?"},
        "That is all. Any other questions?",
        "Any other questions? That is all.",
    ),
    "startend:quotation": (
        None,
        '"Everything is quoted."',
        '"Only this" is quoted.',
    ),
    "change_case:capital_word_frequency": (
        {"capital_frequency": 2, "capital_relation": "at least"},
        "This is VERY IMPORTANT.",
        "This is Very important.",
    ),
    "change_case:english_capital": (
        None,
        "THIS IS AN ENGLISH SENTENCE IN CAPITAL LETTERS.",
        "This Is Not All Capitals.",
    ),
    "change_case:english_lowercase": (
        None,
        "every letter in this english sentence is lowercase.",
        "Almost every letter is lowercase.",
    ),
    "punctuation:no_comma": (
        None,
        "No commas here at all.",
        "Well, there is one.",
    ),
}

VALID_KWARGS = {instruction_id: kwargs for instruction_id, (kwargs, _, _) in CASES.items()}


def test_all_25_ifeval_ids_are_registered_and_covered() -> None:
    assert len(INSTRUCTION_IDS) == 25
    assert set(CASES) == set(INSTRUCTION_IDS)


@pytest.mark.parametrize("instruction_id", list(CASES))
def test_each_check_passes_and_fails(instruction_id: str) -> None:
    kwargs, good, bad = CASES[instruction_id]
    assert check(instruction_id, good, kwargs) is True
    assert check(instruction_id, bad, kwargs) is False


@pytest.mark.parametrize("instruction_id", list(CASES))
@pytest.mark.parametrize("response", ["", "   \n\t "])
@pytest.mark.parametrize("loose", [False, True])
def test_empty_response_fails_every_check(instruction_id: str, response: str, loose: bool) -> None:
    assert check(instruction_id, response, VALID_KWARGS[instruction_id], loose=loose) is False


# --- json_format -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        '```json\n{"a": 1}\n```',
        '```JSON\n{"a": [1, 2]}\n```',
        '```\n{"a": 1}\n```',
        '  {"a": 1}  \n',
        "42",  # IFEval: any JSON value passes, not only objects
        '"just a string"',
    ],
)
def test_json_format_accepts(response: str) -> None:
    assert check("detectable_format:json_format", response)


@pytest.mark.parametrize(
    "response",
    [
        '{"a": 1}\nI hope this helps!',
        'Here is the JSON:\n```json\n{"a": 1}\n```',
        "```python\n{'a': 1}\n```",
        "{'a': 1}",
        '```json\n{"a": 1,}\n```',
    ],
)
def test_json_format_rejects(response: str) -> None:
    assert not check("detectable_format:json_format", response)


def test_json_preamble_fails_strict_but_passes_loose() -> None:
    response = 'Here is the JSON:\n```json\n{"a": 1}\n```'
    assert not check("detectable_format:json_format", response)
    assert check("detectable_format:json_format", response, loose=True)


# --- bullets and highlights ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "count"),
    [
        ("- one\n- two\n- three", 3),
        ("* one\n* two", 2),
        ("* one\n- two", 2),
        ("  * indented\n    - nested", 2),
        ("**Bold heading**\n* item", 1),  # a **bold** line is not a bullet
        ("1. one\n2. two", 0),  # numbered items are not bullets
        ("---\n- item", 2),  # IFEval counts any line starting with '-'
        ("*(no space needed)item", 1),
        ("inline * star and - dash", 0),
    ],
)
def test_bullet_count(response: str, count: int) -> None:
    assert check("detectable_format:number_bullet_lists", response, {"num_bullets": count})
    assert not check("detectable_format:number_bullet_lists", response, {"num_bullets": count + 1})


@pytest.mark.parametrize(
    ("response", "count"),
    [
        ("*one* and *two*", 2),
        ("**bold one** and **bold two**", 2),
        ("* *", 0),
        ("*spans\nlines*", 0),
        ("**Title**\n* bullet", 1),
    ],
)
def test_highlight_count(response: str, count: int) -> None:
    assert check("detectable_format:number_highlighted_sections", response, {"num_highlights": count})
    assert not check("detectable_format:number_highlighted_sections", response, {"num_highlights": count + 1})


# --- punctuation, endings, quotes -------------------------------------------------------------------------


@pytest.mark.parametrize("response", ["It costs 1,000 euros.", "Yes,no", "a\n,"])
def test_no_comma_rejects_any_comma(response: str) -> None:
    assert not check("punctuation:no_comma", response)


def test_no_comma_allows_fullwidth_comma_and_decimal_point() -> None:
    assert check("punctuation:no_comma", "Pi is 3.14 and 你好，世界")


@pytest.mark.parametrize(
    "response",
    [
        "Done. Any other questions?   \n\n",
        "Done. any other QUESTIONS?",
        '"Done. Any other questions?"',  # IFEval strips double quotes before comparing
    ],
)
def test_end_checker_passes(response: str) -> None:
    assert check("startend:end_checker", response, {"end_phrase": "Any other questions? "})


def test_end_checker_fails_on_trailing_words_and_passes_loose_without_stars() -> None:
    kwargs = {"end_phrase": "Any other questions?"}
    assert not check("startend:end_checker", "Any other questions? Bye.", kwargs)
    bold = "Done. **Any other questions?**"
    assert not check("startend:end_checker", bold, kwargs)
    assert check("startend:end_checker", bold, kwargs, loose=True)


@pytest.mark.parametrize(("response", "expected"), [('  "a"  ', True), ('"', False), ("'single'", False)])
def test_quotation(response: str, expected: bool) -> None:
    assert check("startend:quotation", response) is expected


# --- loose scoring -----------------------------------------------------------------------------------------


def test_loose_forgives_a_first_line_that_breaks_the_rule() -> None:
    response = "Sure, here it is:\nno commas in this answer\nat all"
    assert not check("punctuation:no_comma", response)
    assert check("punctuation:no_comma", response, loose=True)


def test_loose_forgives_a_last_line() -> None:
    response = "every word is lowercase here and this is english text\nHope That Helps"
    assert not check("change_case:english_lowercase", response)
    assert check("change_case:english_lowercase", response, loose=True)


def test_loose_cannot_forgive_a_middle_line() -> None:
    response = "first line\nthis, has a comma\nlast line"
    assert not check("punctuation:no_comma", response, loose=True)


# --- individual rules, odd parts included ------------------------------------------------------------------


def test_keywords_are_case_insensitive_substrings_and_literal() -> None:
    assert check("keywords:existence", "Concatenate", {"keywords": ["cat"]})
    assert check("keywords:existence", "I code in C++ daily.", {"keywords": ["C++"]})
    assert not check("keywords:existence", "I code in C daily.", {"keywords": ["C++"]})


def test_forbidden_words_use_word_boundaries() -> None:
    kwargs = {"forbidden_words": ["cat"]}
    assert check("keywords:forbidden_words", "Concatenate the catalogue.", kwargs)
    assert not check("keywords:forbidden_words", "The CAT sat.", kwargs)


def test_keyword_frequency_strips_the_keyword_and_counts_substrings() -> None:
    text = "\n  keyword, Keyword, KEYWORD\n  "
    assert check(
        "keywords:frequency", text, {"keyword": "  keyword ", "frequency": 4, "relation": "less than"}
    )
    assert check(
        "keywords:frequency", text, {"keyword": "  keyword ", "frequency": 3, "relation": "at least"}
    )


def test_letter_frequency_is_case_insensitive_and_accepts_punctuation() -> None:
    assert check(
        "keywords:letter_frequency",
        "There is the T. Four T's.",
        {"letter": "T", "let_frequency": 4, "let_relation": "at least"},
    )
    assert check(
        "keywords:letter_frequency",
        "#a #b #c #d",
        {"letter": "#", "let_frequency": 4, "let_relation": "at least"},
    )


def test_language_accepts_italian_with_english_loanwords() -> None:
    text = "Nel weekend ho comprato un computer nuovo e uno smartphone per lavorare da casa con il team."
    assert check("language:response_language", text, {"language": "it"})


def test_language_counts_undetectable_text_as_followed_like_ifeval() -> None:
    assert check("language:response_language", "12345 !!!", {"language": "it"})


def test_english_capital_needs_letters_upper_and_english() -> None:
    assert not check("change_case:english_capital", "QUESTA FRASE È TUTTA IN MAIUSCOLO MA IN ITALIANO.")


@pytest.mark.parametrize(
    ("response", "sentences"),
    [
        ("Dr. Smith arrived. He was late.", 2),
        ("Pi is 3.14. It is irrational.", 2),
        ("Items:\n- one\n- two\n- three", 4),
        ("Il Sig. Rossi è arrivato. Era in ritardo!", 2),
    ],
)
def test_number_sentences_exactly_extension(response: str, sentences: int) -> None:
    kwargs = {"num_sentences": sentences, "relation": "exactly"}
    assert check("length_constraints:number_sentences", response, kwargs)
    kwargs["num_sentences"] = sentences + 1
    assert not check("length_constraints:number_sentences", response, kwargs)


def test_number_words_relations() -> None:
    text = "It's 3.14, isn't it?"  # \w+ runs: It s 3 14 isn t it -> 7
    assert check("length_constraints:number_words", text, {"num_words": 7, "relation": "exactly"})
    assert check("length_constraints:number_words", text, {"num_words": 8, "relation": "less than"})
    assert not check("length_constraints:number_words", text, {"num_words": 8, "relation": "at least"})


def test_exactly_is_only_for_sentences_and_words() -> None:
    with pytest.raises(CheckError, match="relation"):
        check("keywords:frequency", "a", {"keyword": "a", "frequency": 1, "relation": "exactly"})


def test_capital_words_count_like_nltk_tokens() -> None:
    kwargs = {"capital_frequency": 5, "capital_relation": "at least"}
    # DON'T -> DO + N'T (two words), U.S.A. and WELL-KNOWN are one word each
    assert check("change_case:capital_word_frequency", "I DON'T visit the U.S.A. WELL-KNOWN", kwargs)
    assert not check("change_case:capital_word_frequency", "I don't visit the U.S.A. WELL-KNOWN", kwargs)


def test_paragraphs_on_stars_allow_empty_ends_but_not_middles() -> None:
    kwargs = {"num_paragraphs": 3}
    assert check("length_constraints:number_paragraphs", "***\np1\n***\np2\n***\np3\n***", kwargs)
    assert not check("length_constraints:number_paragraphs", "p1\n***\n***\np2\n***\np3", kwargs)


def test_nth_paragraph_first_word_strips_quotes_and_punctuation() -> None:
    text = 'Intro.\n\n"Really?! more."\n\nEnd.'
    kwargs = {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "really"}
    assert check("length_constraints:nth_paragraph_first_word", text, kwargs)
    assert not check("length_constraints:nth_paragraph_first_word", "Intro.\n\nReally more.", kwargs)


def test_postscript_markers() -> None:
    assert check("detectable_content:postscript", "Hi.\np. s. see you", {"postscript_marker": "P.S."})
    assert check("detectable_content:postscript", "Hi.\np.p.s see you", {"postscript_marker": "P.P.S"})
    assert check("detectable_content:postscript", "Hi. PS: see you", {"postscript_marker": "PS:"})
    assert not check("detectable_content:postscript", "Hi. see you", {"postscript_marker": "PS:"})


def test_sections_are_case_sensitive() -> None:
    kwargs = {"section_spliter": "SECTION", "num_sections": 2}
    assert check("detectable_format:multiple_sections", "SECTION 1\na\nSECTION 2\nb", kwargs)
    assert not check("detectable_format:multiple_sections", "Section 1\na\nSection 2\nb", kwargs)


def test_two_responses_reject_empty_middle_and_three_parts() -> None:
    assert check("combination:two_responses", "******\nA\n******\nB\n******")
    assert not check("combination:two_responses", "A\n******\n******\nB")
    assert not check("combination:two_responses", "A\n******\nB\n******\nC")


# --- IFEval's own unit-test cases (instructions_test.py), ported -------------------------------------------

BULLETS_1 = """
  A Markdown bullet point is a way of formatting text to create a list. To
  create a bullet point, start each line with an asterisk (*). For example:
  * This is a bullet point.
  *(no space required)Another bullet point.
  * (no newline ending required)Another bullet point.
  markdown bullet points are often used to create to-do lists or to list items
  in a step-by-step guide."""
BULLETS_2 = """
  Check that inline asterisk (*), *, will not be counted. Only * that starts a
  bullet list will be counted:
    * This is a bullet point.
    * Another bullet point.
    . dot is not counted"""
BULLETS_5 = """
  Paragraph 1
  ***
  Paragraph 2
  ***
  Paragraph 3
  * only one bullet point
  """
HIGHLIGHT_2 = """
  Sure, here are the numerical methods for solving partial differential
  equations highlighted with Markdown:
  *Finite difference methods
  *Finite element methods*
  *Boundary element methods
  *Monte Carlo methods
  I hope this helps!"""
HIGHLIGHT_3 = """
  There is allowed to be *two different* highlighted *sections in the same*
  line. **This is also true** for **double markdown highlights.**
  """
PARAGRAPHS_4 = """
  paragraph 1
          ***
      paragraph 2
          ***
          ***"""
FIRST_WORD_5 = """
  Wow this is a very long response.

  I can't believe there is more than three paragraphs.

  "Really?! more than three? No way!"

  I can't believe it but I guess I am living proof.

  Haha, you go that right."""

UPSTREAM = [
    (
        "length_constraints:number_sentences",
        {"num_sentences": 4, "relation": "less than"},
        "xx,x. xx,x! xx/x. x{x}x?",
        False,
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 5, "relation": "less than"},
        "xxxx. xx,x! xxxx. x(x)x?",
        True,
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 4, "relation": "at least"},
        "xxxx. xx,x! xx|x. x&x x?",
        True,
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 5, "relation": "at least"},
        "xx-x. xx,x! xx}x. x,xx?",
        False,
    ),
    (
        "detectable_content:number_placeholders",
        {"num_placeholders": 7},
        "My [adjective] [noun] is [adjective] [noun]. I [verb] and [verb].",
        False,
    ),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, BULLETS_1, True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, BULLETS_2, True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 1}, BULLETS_5, True),
    ("detectable_format:constrained_response", None, "\n My answer is no.\n", True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, HIGHLIGHT_2, False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 4}, HIGHLIGHT_3, True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, PARAGRAPHS_4, False),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 5, "nth_paragraph": 3, "first_word": "Really"},
        FIRST_WORD_5,
        True,
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "I"},
        "\n  paragraph 1\n\n  I paragraph 2",
        False,
    ),
    (
        "keywords:frequency",
        {"keyword": "KEYWORD", "frequency": 4, "relation": "at least"},
        "\n    *keyword\n    *Keyword\n    *KEYWORD\n  ",
        False,
    ),
    (
        "length_constraints:number_words",
        {"num_words": 16, "relation": "at least"},
        "\n  L4RGE L4NGU4GE M0DEL: AI syst3m th4t und3rstands, g3n3r4tes, or tr4nsforms\n"
        "  l4ngu4g3 b4s3d on pr3vious l3arning & d4t4.",
        True,
    ),
    (
        "combination:two_responses",
        None,
        "\n  ******\n  Response 1.\n  ******\n  ******\n  Response 2.\n  ******\n  ",
        False,
    ),
    (
        "combination:repeat_prompt",
        {"prompt_to_repeat": "Write a CL description."},
        "Hi, Le and TJ. Write a CL description. Thanks.\n  ",
        False,
    ),
    (
        "startend:end_checker",
        {"end_phrase": "\n  This is the end.\n  "},
        "\n  At the end of this prompt I am required to say that this is the end.\n  ",
        True,
    ),
    ("detectable_format:title", None, "\n  <<This is not a title.\n  This is a paragraph.>>\n  ", False),
    (
        "keywords:letter_frequency",
        {"letter": "a", "let_frequency": 4, "let_relation": "less than"},
        "\n  asdfghjkl!!aA\n  ",
        True,
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 3, "capital_relation": "at least"},
        "\n  HERE there are THREE FUlly CAPITAL words.\n  ",
        True,
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 4, "capital_relation": "less than"},
        "\n  THERE are Four FULLY CAPITAL WORDS. Many Others Are Only Partially So.\n  ",
        False,
    ),
    (
        "change_case:english_capital",
        None,
        "\n  THIS IS AN ENGLISH SENTENCE. EVERY LETTER IS CAPITALIZED!!! AMAZING.\n  ",
        True,
    ),
    (
        "detectable_content:postscript",
        {"postscript_marker": "P.S."},
        "\n  The mysteries of space and time are mysterious.\n"
        "  P. S. Sometimes there are even spaces between P. and S..\n  ",
        True,
    ),
    (
        "startend:quotation",
        None,
        '\n  "This message is wrapped in double quotation marks." But not everything.\n  ',
        False,
    ),
]


@pytest.mark.parametrize(("instruction_id", "kwargs", "response", "expected"), UPSTREAM)
def test_matches_ifeval_unit_tests(
    instruction_id: str, kwargs: dict | None, response: str, expected: bool
) -> None:
    assert check(instruction_id, response, kwargs) is expected


# --- kwargs and ids ----------------------------------------------------------------------------------------


def test_unknown_id_says_where_to_find_valid_ids() -> None:
    with pytest.raises(CheckError, match=r"unknown instruction id 'keywords:nope'.*INSTRUCTION_IDS"):
        check("keywords:nope", "text")


def test_missing_kwarg_names_id_and_kwarg() -> None:
    with pytest.raises(CheckError, match=r"keywords:frequency needs kwarg 'relation'"):
        check("keywords:frequency", "text", {"keyword": "a", "frequency": 1})


def test_kwargs_ifeval_would_randomise_are_required() -> None:
    with pytest.raises(CheckError, match="keywords"):
        check("keywords:existence", "text", {})
    with pytest.raises(CheckError, match="language"):
        check("language:response_language", "text")


def test_none_kwargs_are_ignored_like_ifeval_jsonl() -> None:
    row = {key: None for key in ("keywords", "num_words", "relation", "language", "end_phrase")}
    assert check("punctuation:no_comma", "fine", row)
    row["num_words"], row["relation"] = 1, "at least"
    assert check("length_constraints:number_words", "fine", row)
    assert check("punctuation:no_comma", "fine", {"num_words": float("nan")})  # pandas' missing value


@pytest.mark.parametrize(
    ("instruction_id", "kwargs", "message"),
    [
        ("punctuation:no_comma", {"num_words": 3}, "takes no kwarg 'num_words'"),
        ("length_constraints:number_words", {"num_words": "5", "relation": "at least"}, "integer"),
        ("length_constraints:number_words", {"num_words": -1, "relation": "at least"}, "non-negative"),
        ("length_constraints:number_words", {"num_words": True, "relation": "at least"}, "integer"),
        ("length_constraints:number_words", {"num_words": 5, "relation": "at most"}, "relation"),
        ("keywords:existence", {"keywords": "cat"}, "list of strings"),
        ("keywords:existence", {"keywords": ["cat", ""]}, "non-empty strings"),
        (
            "keywords:letter_frequency",
            {"letter": "ab", "let_frequency": 1, "let_relation": "at least"},
            "single",
        ),
        ("startend:end_checker", {"end_phrase": "  "}, "non-empty string"),
        (
            "length_constraints:nth_paragraph_first_word",
            {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "a"},
            "between 1 and",
        ),
        (
            "length_constraints:nth_paragraph_first_word",
            {"num_paragraphs": 2, "nth_paragraph": 0, "first_word": "a"},
            "between 1 and",
        ),
    ],
)
def test_invalid_kwargs_raise_check_error(instruction_id: str, kwargs: dict, message: str) -> None:
    with pytest.raises(CheckError, match=message):
        check(instruction_id, "some text", kwargs)


def test_integral_floats_are_accepted_as_counts() -> None:
    assert check("length_constraints:number_words", "one two", {"num_words": 2.0, "relation": "at least"})


def test_check_all_scores_an_ifeval_row_in_order() -> None:
    ids = ["punctuation:no_comma", "length_constraints:number_words", "startend:end_checker"]
    kwargs = [{}, {"num_words": 3, "relation": "less than"}, {"end_phrase": "Bye.", "num_words": None}]
    assert check_all(ids, kwargs, "Hello there. Bye.") == [True, False, True]
    assert check_all([], [], "anything") == []


def test_check_all_takes_ifeval_input_data_rows() -> None:
    row = {  # key 1040 of IFEval's input_data.jsonl
        "instruction_id_list": [
            "change_case:capital_word_frequency",
            "change_case:capital_word_frequency",
            "startend:quotation",
        ],
        "kwargs": [
            {"capital_relation": "less than", "capital_frequency": 10},
            {"capital_relation": "at least", "capital_frequency": 1},
            {},
        ],
    }
    response = '"Matthias Algiers: a JUGGLER with GREAT timing."'
    assert check_all(row["instruction_id_list"], row["kwargs"], response) == [True, True, True]
    assert check_all(row["instruction_id_list"], row["kwargs"], response.strip('"')) == [True, True, False]


def test_check_all_wants_one_kwargs_per_id() -> None:
    with pytest.raises(CheckError, match="1 kwargs"):
        check_all(["punctuation:no_comma", "startend:quotation"], [None], "x")


# --- fuzz --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("instruction_id", list(CASES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(response=st.text(), loose=st.booleans())
def test_fuzz_never_crashes(instruction_id: str, response: str, loose: bool) -> None:
    assert isinstance(check(instruction_id, response, VALID_KWARGS[instruction_id], loose=loose), bool)


# --- bad inputs ------------------------------------------------------------------------------------------


def test_unexpected_check_kwarg():
    refuses(CheckError, lambda: check("punctuation:no_comma", "text", {"comma": 1}), "takes no kwarg")


def test_check_kwargs_as_json_string():
    refuses(CheckError, lambda: check("keywords:existence", "text", '{"keywords": ["cat"]}'), "kwargs")


# --- fuzz with drawn and garbage kwargs -------------------------------------------------------------------

count = st.integers(min_value=0, max_value=12)


relation = st.sampled_from(["less than", "at least"])


#: For every instruction id, a strategy of valid kwargs (None where it takes none).
KWARGS: dict[str, st.SearchStrategy] = {
    "keywords:existence": st.fixed_dictionaries({"keywords": st.lists(nonblank, min_size=1, max_size=3)}),
    "keywords:frequency": st.fixed_dictionaries(
        {"keyword": nonblank, "frequency": count, "relation": relation}
    ),
    "keywords:forbidden_words": st.fixed_dictionaries(
        {"forbidden_words": st.lists(nonblank, min_size=1, max_size=3)}
    ),
    "keywords:letter_frequency": st.fixed_dictionaries(
        {
            "letter": st.characters(exclude_categories=["Z", "Cc", "Cs"]),
            "let_frequency": count,
            "let_relation": relation,
        }
    ),
    "language:response_language": st.fixed_dictionaries(
        {"language": st.sampled_from(["en", "it", "es", "ja"])}
    ),
    "length_constraints:number_sentences": st.fixed_dictionaries(
        {"num_sentences": count, "relation": st.sampled_from(["less than", "at least", "exactly"])}
    ),
    "length_constraints:number_paragraphs": st.fixed_dictionaries({"num_paragraphs": count}),
    "length_constraints:number_words": st.fixed_dictionaries(
        {"num_words": count, "relation": st.sampled_from(["less than", "at least", "exactly"])}
    ),
    "length_constraints:nth_paragraph_first_word": st.integers(1, 6).flatmap(
        lambda n: st.fixed_dictionaries(
            {"num_paragraphs": st.just(n), "nth_paragraph": st.integers(1, n), "first_word": nonblank}
        )
    ),
    "detectable_content:number_placeholders": st.fixed_dictionaries({"num_placeholders": count}),
    "detectable_content:postscript": st.fixed_dictionaries(
        {"postscript_marker": st.one_of(st.sampled_from(["P.S.", "P.P.S"]), nonblank)}
    ),
    "detectable_format:number_bullet_lists": st.fixed_dictionaries({"num_bullets": count}),
    "detectable_format:constrained_response": st.none(),
    "detectable_format:number_highlighted_sections": st.fixed_dictionaries({"num_highlights": count}),
    "detectable_format:multiple_sections": st.fixed_dictionaries(
        {
            "section_spliter": st.one_of(st.sampled_from(["Section", "SECTION", "*"]), nonblank),
            "num_sections": count,
        }
    ),
    "detectable_format:json_format": st.none(),
    "detectable_format:title": st.none(),
    "combination:two_responses": st.none(),
    "combination:repeat_prompt": st.fixed_dictionaries({"prompt_to_repeat": nonblank}),
    "startend:end_checker": st.fixed_dictionaries({"end_phrase": nonblank}),
    "startend:quotation": st.none(),
    "change_case:capital_word_frequency": st.fixed_dictionaries(
        {"capital_frequency": count, "capital_relation": relation}
    ),
    "change_case:english_capital": st.none(),
    "change_case:english_lowercase": st.none(),
    "punctuation:no_comma": st.none(),
}


def test_the_kwargs_table_covers_every_instruction():
    assert set(KWARGS) == set(INSTRUCTION_IDS)


@pytest.mark.parametrize("instruction_id", INSTRUCTION_IDS)
@settings(max_examples=12, deadline=None)
@given(data=st.data(), response=structured_text, loose=st.booleans())
def test_check_with_drawn_kwargs_on_structured_text(instruction_id, data, response, loose):
    kwargs = data.draw(KWARGS[instruction_id])
    assert isinstance(check(instruction_id, response, kwargs, loose=loose), bool)


garbage = st.one_of(json_values, st.floats(), st.sampled_from(["less than", "exactly", "x", " "]))


@FUZZ
@given(
    instruction_id=st.one_of(st.sampled_from(INSTRUCTION_IDS), st.text(max_size=20)),
    kwargs=st.one_of(
        st.none(),
        st.dictionaries(
            st.sampled_from(
                ["keywords", "keyword", "frequency", "relation", "letter", "let_frequency", "let_relation",
                 "language", "num_sentences", "num_paragraphs", "nth_paragraph", "first_word", "num_words",
                 "num_placeholders", "postscript_marker", "num_bullets", "num_highlights", "section_spliter",
                 "num_sections", "prompt_to_repeat", "end_phrase", "capital_frequency", "capital_relation",
                 "forbidden_words", "unknown"]
            ),
            garbage,
            max_size=4,
        ),
    ),
    response=structured_text,
)  # fmt: skip
def test_check_with_garbage_kwargs_answers_or_refuses(instruction_id, kwargs, response):
    try:
        assert isinstance(check(instruction_id, response, kwargs), bool)
    except CheckError as e:
        one_line(e)


@FUZZ
@given(ids=st.lists(st.sampled_from(INSTRUCTION_IDS), max_size=4), response=structured_text)
def test_check_all_without_kwargs_answers_or_refuses(ids, response):
    try:
        assert len(check_all(ids, [None] * len(ids), response)) == len(ids)
    except CheckError as e:
        one_line(e)
