"""Multiple choice answered by generation on the bundled SmolLM2 (slow): it answers by letter, and Italian
steering moves its answers."""

from __future__ import annotations

import pytest

from workbench.datasets import load, load_multiple_choice
from workbench.evaluation.mc import mc_changes, multiple_choice
from workbench.interventions import Intervention
from workbench.vectors import SteeringVector

pytestmark = pytest.mark.slow


def test_smol_answers_english_questions_by_letter_and_steering_moves_them(smol):
    en = load_multiple_choice("bundled", language="en", split="test")[:16]
    it = load_multiple_choice("bundled", language="it", split="test")[:16]
    plain = multiple_choice(smol, en, by="generation", parallel=it, max_new_tokens=16)
    assert (plain["parsed_by"] == "letter").mean() >= 0.75, plain[["parsed_by", "response"]]
    vector = SteeringVector.from_dataset(smol, load("italian", "train", variant="it").head(16), layers=[15])
    unit = SteeringVector.from_directions(vector.direction(15)[None], [15])  # 2 diff-norms in any unit
    steered = multiple_choice(
        smol,
        en,
        by="generation",
        parallel=it,
        max_new_tokens=16,
        interventions=[Intervention(unit, 15, "add", 2.0 * vector.stats[15].diff_norm, "generated")],
    )
    moved = mc_changes(plain, steered)
    assert (steered["response"] != plain["response"]).any()
    assert moved["gained"] + moved["lost"] > 0 or moved["unparsed"] > plain["unparsed"].mean()
