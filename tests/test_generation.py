"""Generation: prompts, knobs and per-row interventions that generate refuses in one line."""

from __future__ import annotations

import weakref

import pytest

from tests.conftest import PROMPTS
from tests.refusals import refuses
from tests.synthetic_vectors import directions
from workbench import generation
from workbench.errors import InvalidArgumentError
from workbench.generation import generate
from workbench.interventions import Intervention
from workbench.vectors import SteeringVector


@pytest.fixture(scope="module")
def vec() -> SteeringVector:
    """A vector that fits the tiny model (4 layers, d_model 64)."""
    return SteeringVector.from_directions(directions(), model_name="tiny-llama", n_layers=4)


def test_prompt_longer_than_context_in_generate(tiny):
    long = "cats and dogs " * tiny.n_ctx
    refuses(InvalidArgumentError, lambda: generate(tiny, [long], max_new_tokens=2), "shorten it")


def test_whitespace_prompt(tiny):
    refuses(InvalidArgumentError, lambda: generate(tiny, [" \n\t"], max_new_tokens=2), "prompt 0 is empty")


def test_no_prompts(tiny):
    refuses(InvalidArgumentError, lambda: generate(tiny, [], max_new_tokens=2), "no prompts")


def test_prompts_none(tiny):
    refuses(InvalidArgumentError, lambda: generate(tiny, None, max_new_tokens=2), "prompts")


def test_batch_size_zero_in_generate(tiny):
    refuses(
        InvalidArgumentError, lambda: generate(tiny, ["hi"], batch_size=0, max_new_tokens=2), "batch_size"
    )


def test_max_new_tokens_zero(tiny):
    refuses(InvalidArgumentError, lambda: generate(tiny, ["hi"], max_new_tokens=0), "max_new_tokens")


def test_per_row_interventions_for_the_wrong_number_of_prompts(tiny, vec):
    rows = [[Intervention(vec, 1, coef=1.0, unit="absolute")]]
    refuses(
        InvalidArgumentError,
        lambda: generate(tiny, ["a b", "c d"], row_interventions=rows, max_new_tokens=2),
        "1 rows for 2 prompts",
    )


def test_zero_temperature_when_sampling(tiny):
    refuses(
        InvalidArgumentError,
        lambda: generate(tiny, ["hi"], do_sample=True, temperature=0.0, max_new_tokens=2),
        "temperature",
    )


def test_generate_greedy_is_batch_size_and_cache_invariant(tiny):
    a = generate(tiny, PROMPTS, max_new_tokens=12, batch_size=5)
    b = generate(tiny, PROMPTS, max_new_tokens=12, batch_size=2)
    c = generate(tiny, PROMPTS, max_new_tokens=12, batch_size=5, use_cache=False)
    assert a == b == c
    assert all(isinstance(t, str) for t in a)
    assert not any("<|im_start|>" in t for t in a)


def test_generate_sampling_is_seeded(tiny):
    a = generate(tiny, PROMPTS, max_new_tokens=8, do_sample=True, seed=3)
    b = generate(tiny, PROMPTS, max_new_tokens=8, do_sample=True, seed=3)
    assert a == b


def test_generate_reports_which_answers_stopped_on_their_own(writer, monkeypatch):
    """An answer that stopped at its end-of-text token is the same with a larger budget; one cut is not."""
    tokenizer = writer.tokenizer
    (s,) = tokenizer(" s", add_special_tokens=False)["input_ids"]
    config = writer.hf_model.generation_config
    monkeypatch.setattr(config, "sequence_bias", {(s, tokenizer.eos_token_id): 30.0})  # end after " s"
    ended: list[bool] = []
    answers = generate(writer, PROMPTS, max_new_tokens=12, ended=ended)
    longer = generate(writer, PROMPTS, max_new_tokens=24)
    assert ended == [a == b for a, b in zip(answers, longer, strict=True)]
    assert any(ended) and not all(ended)
    rebatched: list[bool] = []
    assert generate(writer, PROMPTS, max_new_tokens=12, batch_size=2, ended=rebatched) == answers
    assert rebatched == ended


def test_a_stop_string_ends_an_answer_on_its_own(writer, monkeypatch):
    plain = generate(writer, PROMPTS, max_new_tokens=12)
    monkeypatch.setattr(generation, "_STOPS", weakref.WeakKeyDictionary())  # this test's criterion only
    monkeypatch.setattr(writer, "stop_strings", ("MM",))
    ended: list[bool] = []
    answers = generate(writer, PROMPTS, max_new_tokens=12, ended=ended)
    assert ended == ["MM" in text for text in plain] and any(ended) and not all(ended)
    assert answers == [text.split("MM")[0].strip() for text in plain]
