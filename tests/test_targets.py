"""On-target checks: strict JSON (IFEval), a JSON start (truncation allowed), real Italian, IFEval items."""

from __future__ import annotations

import pytest

from workbench.datasets import load
from workbench.errors import InvalidArgumentError
from workbench.evaluation import targets
from workbench.evaluation.targets import json_format_strict, on_target, starts_json


@pytest.mark.parametrize(
    ("text", "strict", "start"),
    [
        ('{"name": "Ada", "age": 36}', True, True),
        ('```json\n{"a": [1, 2]}\n```', True, True),
        ('{"name": "Ada", "tags": ["x", "y', False, True),  # cut off inside a string
        ('{"a": {"a": {"a": {"a": 12', False, True),  # nested loop cut off mid-number
        ('{"a": 1, "b":', False, True),
        ('Sure! {"a": 1}', False, False),  # prose before
        ('{"a": 1} Hope this helps.', False, False),  # prose after
        ('{"a": 1]', False, False),  # mismatched brackets
        ("42", True, False),  # IFEval accepts any JSON value; a start needs an object or array
    ],
)
def test_strict_json_and_json_start_are_different_measures(text: str, strict: bool, start: bool) -> None:
    assert json_format_strict(text) is strict
    assert starts_json(text) is start


def test_on_target_dispatches_by_name_and_refuses_unknown_targets() -> None:
    item = load("json_format", "test").items[0]
    cut = '{"a": {"a": {"a":'
    assert on_target("starts_json", item, cut)
    assert not on_target("json_format_strict", item, cut)
    assert not on_target("ifeval", item, cut)  # the json_format item's own check is the strict one
    assert on_target("ifeval", item, '{"a": 1}')
    with pytest.raises(InvalidArgumentError, match="unknown target"):
        on_target("json", item, cut)
    assert set(targets.TARGETS) == {"ifeval", "json_format_strict", "starts_json", "italian"}


def test_real_italian_needs_the_whole_text_and_most_sentences() -> None:
    italian = "Il gatto dorme sul divano tutto il giorno. La sera mangia e poi esce in giardino a giocare."
    assert targets.is_real_italian(italian)
    assert not targets.is_real_italian("Boil the water, then add the tea leaves and wait for five minutes.")
