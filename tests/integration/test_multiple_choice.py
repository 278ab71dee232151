"""Multiple choice on the bundled SmolLM2 (slow): it beats chance."""

from __future__ import annotations

import time

import pytest

from workbench.datasets import load_multiple_choice
from workbench.evaluation.mc import multiple_choice


@pytest.mark.slow
def test_smol_multiple_choice_beats_chance(smol):
    items = load_multiple_choice("bundled", language="en", split="test")[:24]
    start = time.perf_counter()
    frame = multiple_choice(smol, items, batch_size=32)
    elapsed = time.perf_counter() - start
    assert frame["correct"].mean() > 0.4, (frame["correct"].mean(), elapsed)
