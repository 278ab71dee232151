"""Perplexity on the bundled SmolLM2 (slow): its own greedy answers score low."""

from __future__ import annotations

import math

import pytest

from tests.conftest import PROMPTS
from workbench.evaluation.perplexity import perplexity
from workbench.generation import generate


@pytest.mark.slow
def test_smol_perplexity_of_its_own_greedy_answers(smol):
    prompts = PROMPTS[:3]
    answers = generate(smol, prompts, max_new_tokens=32)
    values = perplexity(smol, prompts, answers)
    assert all(math.isfinite(v) and 1 <= v < 20 for v in values), values
