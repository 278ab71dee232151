"""Language identification: accuracy on a labelled set, metrics on mixed text, robustness on any input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langdetect import DetectorFactory, LangDetectException, detect

from tests.refusals import one_line
from workbench.errors import InvalidArgumentError
from workbench.evaluation.language import (
    LANGUAGES,
    code_switching_rate,
    detect_language,
    sentence_share,
    share_in_language,
)

LABELLED = [
    json.loads(line)
    for line in (Path(__file__).parent / "data" / "langid_labelled.jsonl").read_text("utf-8").splitlines()
]

IT = "Oggi il tempo è bellissimo e andiamo a fare una passeggiata nel parco."
IT_2 = "Poi pranziamo in una trattoria vicino alla stazione con tutti gli amici."
EN = "Then we will take the train back home and watch a movie together."


def _accuracy(predict) -> float:
    return sum(predict(row["text"]) == row["lang"] for row in LABELLED) / len(LABELLED)


def _langdetect(text: str) -> str:
    DetectorFactory.seed = 0
    try:
        return detect(text)
    except LangDetectException:
        return "und"


def test_labelled_set_is_large_and_covers_the_required_kinds() -> None:
    assert len(LABELLED) >= 120
    assert {row["lang"] for row in LABELLED} == {"it", "en", "es", "fr", "pt", "ro", "ca"}
    assert {row["kind"] for row in LABELLED} == {"plain", "loanwords", "mixed"}
    assert {row["lang"] for row in LABELLED} <= set(LANGUAGES)


def test_detect_language_accuracy_on_labelled_set() -> None:
    # Measured: lingua 153/158 = 0.968, langdetect 142/158 = 0.899 (it also picks among 55 languages).
    lingua_accuracy = _accuracy(detect_language)
    assert lingua_accuracy >= 0.95
    assert lingua_accuracy > _accuracy(_langdetect)


def test_italian_recall_including_loanwords() -> None:
    italian = [row for row in LABELLED if row["lang"] == "it"]
    assert sum(detect_language(row["text"]) == "it" for row in italian) / len(italian) >= 0.9  # 54/57


@pytest.mark.parametrize(
    "text",
    [
        "Questo weekend vado al mare con gli amici.",
        "Ho comprato un computer nuovo e uno smartphone per lavorare in smart working.",
        "Il feedback del cliente sul nuovo software è stato molto positivo.",
        pytest.param(
            "Il manager ha presentato il business plan durante il meeting.",
            marks=pytest.mark.xfail(reason="known limit: 4 of 9 words English, lingua says en", strict=True),
        ),
    ],
)
def test_italian_with_english_loanwords_is_italian(text: str) -> None:
    assert detect_language(text) == "it"


@pytest.mark.parametrize("text", ["", "   \n", "12345", "!!! ???", "🙂🙂"])
def test_text_without_letters_is_undetermined(text: str) -> None:
    assert detect_language(text) == "und"


def test_share_in_language() -> None:
    assert share_in_language([IT, IT_2, EN, ""]) == 0.5
    assert share_in_language([IT, EN], lang="en") == 0.5
    assert math.isnan(share_in_language([]))


def test_share_in_language_refuses_a_bare_string_and_unknown_languages() -> None:
    with pytest.raises(InvalidArgumentError, match="list of responses"):
        share_in_language(IT)
    with pytest.raises(InvalidArgumentError, match="'ja'"):
        share_in_language([IT], lang="ja")
    with pytest.raises(InvalidArgumentError):
        sentence_share(IT, "xx")


def test_sentence_share_counts_sentences_and_skips_short_ones() -> None:
    assert sentence_share(f"{IT} {IT_2} {EN}", "it") == pytest.approx(2 / 3)
    assert sentence_share(f"{IT} Ok. Sì! {EN}", "en") == 0.5  # "Ok." and "Sì!" are too short to count
    assert math.isnan(sentence_share("Ok. Sì.", "it"))
    assert math.isnan(sentence_share("", "it"))


def test_sentence_share_on_a_markdown_list() -> None:
    text = f"- {IT}\n- {IT_2}\n- {EN}\n- {EN}"
    assert sentence_share(text, "it") == 0.5


def test_code_switching_rate() -> None:
    assert code_switching_rate(f"{IT} {EN} {IT_2}") == 1.0
    assert code_switching_rate(f"{IT} {IT_2} {EN}") == 0.5
    assert code_switching_rate(f"{IT} {IT_2}") == 0.0
    assert math.isnan(code_switching_rate(IT))
    assert math.isnan(code_switching_rate(""))


@settings(max_examples=60, deadline=None)
@given(st.text())
def test_fuzz_language_functions_never_crash(text: str) -> None:
    assert detect_language(text) in (*LANGUAGES, "und")
    for value in (sentence_share(text, "it"), code_switching_rate(text)):
        assert math.isnan(value) or 0.0 <= value <= 1.0
    assert 0.0 <= share_in_language([text, text[::-1]]) <= 1.0


WORDS = {
    "it": ["il", "gatto", "dorme", "sempre", "sul", "divano", "perché", "la", "casa", "è", "molto", "calda"],
    "en": [
        "the",
        "cat",
        "always",
        "sleeps",
        "on",
        "the",
        "sofa",
        "because",
        "the",
        "house",
        "is",
        "very",
        "warm",
    ],
    "es": [
        "el",
        "gato",
        "siempre",
        "duerme",
        "en",
        "el",
        "sofá",
        "porque",
        "la",
        "casa",
        "es",
        "muy",
        "cálida",
    ],
    "de": [
        "die",
        "Katze",
        "schläft",
        "immer",
        "auf",
        "dem",
        "Sofa",
        "weil",
        "das",
        "Haus",
        "sehr",
        "warm",
        "ist",
    ],
}


sentence = st.sampled_from(sorted(WORDS)).flatmap(
    lambda lang: st.lists(st.sampled_from(WORDS[lang]), min_size=1, max_size=9).map(" ".join)
)


mixed_text = st.lists(
    st.tuples(
        st.one_of(sentence, st.text(max_size=10)), st.sampled_from([". ", "! ", "\n", "\n- ", "? ", ""])
    ),
    max_size=6,
).map(lambda parts: "".join(s + sep for s, sep in parts))


@settings(max_examples=60, deadline=None)
@given(text=mixed_text, lang=st.sampled_from(LANGUAGES))
def test_language_metrics_on_mixed_language_text(text, lang):
    assert detect_language(text) in (*LANGUAGES, "und")
    share = sentence_share(text, lang)
    rate = code_switching_rate(text)
    assert math.isnan(share) or 0.0 <= share <= 1.0
    assert math.isnan(rate) or 0.0 <= rate <= 1.0
    assert 0.0 <= share_in_language([text, text.upper(), ""], lang) <= 1.0


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=30), lang=st.text(max_size=4).filter(lambda s: s not in LANGUAGES))
def test_language_metrics_refuse_unknown_languages(text, lang):
    for fn in (lambda: sentence_share(text, lang), lambda: share_in_language([text], lang)):
        with pytest.raises(InvalidArgumentError) as info:
            fn()
        one_line(info.value)
