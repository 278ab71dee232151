"""Bad inputs across the public API and the command line.

Each is refused with a typed exception from ``workbench.errors`` whose message is one line saying what was
wrong (and, where there is something to do, what to do): never a raw TypeError/KeyError, a torch traceback
or a silently wrong result. No case is left as an xfail.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.conftest import build_tiny_model
from workbench import datasets
from workbench.errors import (
    CheckError,
    DataError,
    InvalidArgumentError,
    OutputPathError,
    WorkbenchError,
)
from workbench.evaluation.checks import check
from workbench.jsonl import read_jsonl, write_jsonl
from workbench.vectors import SteeringVector


def refuses(kind: type[WorkbenchError], fn: Callable[[], object], match: str) -> str:
    """``fn()`` raises exactly a ``kind`` (a WorkbenchError) whose one-line message contains ``match``."""
    assert issubclass(kind, WorkbenchError)
    with pytest.raises(WorkbenchError) as info:
        fn()
    error = info.value
    assert isinstance(error, kind), f"{type(error).__name__} is not a {kind.__name__}: {error}"
    message = str(error)
    assert message and "\n" not in message and "\r" not in message, repr(message)
    assert "Traceback" not in message
    assert match.lower() in message.lower(), f"{match!r} not in {message!r}"
    return message


def directions(n_layers: int = 4, d_model: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n_layers, d_model, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny():
    """This module's own tiny model (it shadows the session one): generating or steering leaves a position
    tracker on the model, and tests of the shared session model that run later must not see it."""
    return build_tiny_model()


@pytest.fixture(scope="module")
def vec() -> SteeringVector:
    """A vector that fits the tiny model (4 layers, d_model 64)."""
    return SteeringVector.from_directions(directions(), model_name="tiny-llama", n_layers=4)


# ---- layers, shapes, directions, coefficients ---------------------------------------------------------


# ---- prompts ------------------------------------------------------------------------------------------


# ---- data files ---------------------------------------------------------------------------------------


def test_invalid_utf8_in_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    refuses(DataError, lambda: read_jsonl(path), "invalid UTF-8 at byte offset")


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2,}\n', encoding="utf-8")
    refuses(DataError, lambda: read_jsonl(path), "line 3")


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    refuses(DataError, lambda: read_jsonl(path), "line 2: expected a JSON object")


def test_missing_data_file(tmp_path):
    refuses(DataError, lambda: datasets.load_ifeval(tmp_path / "nope.jsonl"), "no such file")


def test_ifeval_row_without_prompt(tmp_path):
    path = tmp_path / "ifeval.jsonl"
    path.write_text(json.dumps({"key": 1, "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}))
    refuses(DataError, lambda: datasets.load_ifeval(path), "line 1: 'prompt'")


def test_empty_multiple_choice_file(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    refuses(DataError, lambda: datasets.load_multiple_choice(path), "no multiple-choice rows")


def test_multiple_choice_labels_that_are_not_a_list(tmp_path):
    path = tmp_path / "mc.jsonl"
    row = {"question": "Which?", "choices": {"text": ["a", "b"], "label": 5}, "answerKey": "A"}
    path.write_text(json.dumps(row), encoding="utf-8")
    refuses(DataError, lambda: datasets.load_multiple_choice(path), "one label per choice")


def test_unknown_dataset_name():
    refuses(InvalidArgumentError, lambda: datasets.load("json_formatt"), "unknown dataset 'json_formatt'")


def test_unknown_split():
    refuses(InvalidArgumentError, lambda: datasets.load("json_format", "dev"), "unknown split 'dev'")


def test_unknown_variant():
    refuses(InvalidArgumentError, lambda: datasets.load("italian", variant="fr"), "unknown variant 'fr'")


def test_variant_on_a_dataset_without_variants():
    refuses(InvalidArgumentError, lambda: datasets.load("json_format", variant="it"), "variant applies only")


# ---- instruction checks -------------------------------------------------------------------------------


def test_unknown_instruction_id():
    refuses(CheckError, lambda: check("detectable_format:haiku", "text"), "unknown instruction id")


def test_missing_check_kwargs():
    refuses(CheckError, lambda: check("keywords:frequency", "text", {"keyword": "cat"}), "needs kwarg")


def test_unexpected_check_kwarg():
    refuses(CheckError, lambda: check("punctuation:no_comma", "text", {"comma": 1}), "takes no kwarg")


def test_check_kwargs_as_json_string():
    refuses(CheckError, lambda: check("keywords:existence", "text", '{"keywords": ["cat"]}'), "kwargs")


# ---- output locations ---------------------------------------------------------------------------------


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "results"
    path.write_text("I am a file, not a folder")
    return path


def test_write_jsonl_under_a_file(a_file):
    refuses(OutputPathError, lambda: write_jsonl(a_file / "rows.jsonl", [{"a": 1}]), "cannot write")


def test_write_jsonl_of_unserialisable_rows(tmp_path):
    rows = [{"a": 1}, {"tensor": torch.zeros(2)}]
    refuses(InvalidArgumentError, lambda: write_jsonl(tmp_path / "rows.jsonl", rows), "row 2")
    assert not list(tmp_path.iterdir())


# ---- knobs --------------------------------------------------------------------------------------------


# ---- command line -------------------------------------------------------------------------------------
