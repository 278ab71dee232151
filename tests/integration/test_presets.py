"""The bundled ``json`` preset on the real SmolLM2 (slow): answers without the instruction become JSON."""

from __future__ import annotations

import pytest

from workbench import presets
from workbench.frontier import BEHAVIOURS, is_json_answer
from workbench.generation import generate

pytestmark = pytest.mark.slow
#: Measured 2026-12-01: 0.00 unsteered -> 0.70 steered parse as JSON (0.75 start an object); the test
#: asks for 0.4 of that 0.7 so that float noise in batching cannot flip it.
MARGIN = 0.4


def test_json_preset_without_the_instruction_makes_answers_json(smol, tmp_path, monkeypatch):
    """The ``json`` preset: the JSON-instruction direction (diff-in-means of the mean over prompt tokens,
    48 train pairs with vs without the instruction) added at layer 9 over the prompt only, at 0.6 of that
    layer's mean residual norm; on 20 held-out test prompts without the instruction, 48 new tokens,
    greedy, answers parse as JSON by :func:`is_json_answer`."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    steering = presets.load(smol, "json")
    (iv,) = steering
    assert (iv.layer, iv.mode, iv.positions) == (9, "add", "prompt")
    assert iv.vector.provenance["dataset"] == "json_format" and presets.path(smol, "json").exists()
    behaviour = BEHAVIOURS["json"]
    prompts = behaviour.prompts("test", 20, "plain")
    plain = generate(smol, prompts, max_new_tokens=behaviour.max_new_tokens)
    steered = generate(smol, prompts, max_new_tokens=behaviour.max_new_tokens, interventions=steering)
    assert len(prompts) == 20
    before, after = (sum(map(is_json_answer, answers)) / len(answers) for answers in (plain, steered))
    assert after >= before + MARGIN, f"JSON rate {before:.2f} unsteered, {after:.2f} steered"
