"""The evaluation table: checks, fluency and perplexity columns per response."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from workbench.datasets import Item
from workbench.errors import InvalidArgumentError, ShapeMismatchError
from workbench.evaluation.perplexity import perplexity
from workbench.evaluation.table import evaluate


def make_item(item_id: str, behaviour: str, ids: tuple[str, ...], kwargs: tuple[dict, ...]) -> Item:
    return Item(
        item_id,
        item_id,
        "test",
        "format",
        behaviour,
        "Describe a cat.",
        "",
        "Describe a cat.",
        ids,
        kwargs,
        "en",
    )


JSON_ITEM = make_item("json/1", "json_format", ("detectable_format:json_format",), ({},))


ITALIAN_ITEM = make_item("it/1", "italian", ("language:response_language",), ({"language": "it"},))


ITALIAN_TEXT = (
    "Il gatto è un animale domestico molto amato. Dorme molte ore al giorno e ama giocare con i bambini."
)


def test_evaluate_columns_and_values():
    responses = ['{"animal": "cat", "legs": 4}', "A cat is a small furry animal that purrs.", ITALIAN_TEXT]
    frame = evaluate(responses, [JSON_ITEM, JSON_ITEM, ITALIAN_ITEM])
    expected = ["id", "behaviour", "response", "words", "sentences", "on_target", "ifeval_loose"]
    assert list(frame.columns[:7]) == expected
    assert {"check:detectable_format:json_format", "check:language:response_language"} <= set(frame.columns)
    assert {"language", "in_target_language", "sentence_share_it", "code_switching"} <= set(frame.columns)
    assert {"repeated_ngram_rate", "longest_repeated_run", "degenerate"} <= set(frame.columns)
    assert "perplexity" not in frame.columns
    assert list(frame["on_target"]) == [True, False, True]
    assert list(frame["check:detectable_format:json_format"][:2]) == [True, False]
    assert frame["check:detectable_format:json_format"][2] is pd.NA
    assert list(frame["language"][1:]) == ["en", "it"]
    assert list(frame["in_target_language"]) == [False, False, True]
    assert frame["sentence_share_it"][2] == 1.0
    assert frame["words"][1] == 9 and frame["sentences"][2] == 2
    assert not frame["degenerate"].any()


def test_evaluate_flags_loops_and_adds_loose_and_perplexity(tiny):
    loop = "the cat the cat the cat the cat the cat the cat the cat"
    responses = ['```json\n{"a": 1}\n```', loop]
    frame = evaluate(
        responses, [JSON_ITEM, JSON_ITEM], model=tiny, prompts=["Describe a cat."] * 2, loose=True
    )
    assert "check_loose:detectable_format:json_format" in frame.columns
    assert list(frame["degenerate"]) == [False, True]
    assert frame["longest_repeated_run"][1] >= 7
    assert all(math.isfinite(p) for p in frame["perplexity"])
    expected = perplexity(tiny, ["Describe a cat."] * 2, responses)
    assert list(frame["perplexity"]) == pytest.approx(expected, rel=1e-6)


def test_evaluate_refusals(tiny):
    with pytest.raises(ShapeMismatchError):
        evaluate(["one"], [JSON_ITEM, JSON_ITEM])
    with pytest.raises(InvalidArgumentError):
        evaluate(["one"], [JSON_ITEM], model=tiny)
    with pytest.raises(InvalidArgumentError):
        evaluate(["one"], [JSON_ITEM], language="xx")


def test_evaluate_is_public_and_the_checks_load_without_torch():
    import subprocess
    import sys

    code = (
        "import sys; from workbench.evaluation import check; assert 'torch' not in sys.modules; "
        "import workbench as wb; from workbench.evaluation import evaluate; "
        "assert wb.evaluate is evaluate and evaluate.__module__ == 'workbench.evaluation.table'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
