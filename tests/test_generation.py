"""Generation: prompts, knobs and per-row interventions that generate refuses in one line."""

from __future__ import annotations

import pytest

from tests.conftest import PROMPTS
from tests.refusals import refuses
from tests.synthetic_vectors import directions
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
