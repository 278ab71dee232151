"""The bundled presets on the real SmolLM2 (slow): each moves its target on held-out test prompts."""

from __future__ import annotations

import pytest

from workbench import presets
from workbench.behaviours import BEHAVIOURS
from workbench.generation import generate

pytestmark = pytest.mark.slow
#: Test prompts per preset: the frontier search's test split.
N_TEST = 20


def test_every_smollm2_preset_raises_its_target_rate_on_test_prompts(smol, tmp_path, monkeypatch):
    """Each preset chosen for SmolLM2 (``workbench/data/presets.json``, written by ``workbench study
    frontier``), applied without the instruction, makes more of 20 held-out test answers hit its target
    (strict JSON, one sentence, real Italian, ...) than the unsteered model, greedy, at the behaviour's own
    token budget. Its vector is rebuilt here from the recorded train pairs, so this also checks the recipe."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    names = presets.available(smol)
    assert names, "no preset is shipped for SmolLM2"
    for name in names:
        behaviour = BEHAVIOURS[presets.get(name).behaviour]
        steering = presets.load(smol, name)
        test = behaviour.items("test", N_TEST)
        prompts = behaviour.prompts("test", N_TEST, "plain")
        rates = []
        for interventions in (None, steering):
            answers = generate(
                smol, prompts, max_new_tokens=behaviour.max_new_tokens, interventions=interventions
            )
            hits = [behaviour.on_target(item, a) for item, a in zip(test.items, answers, strict=True)]
            rates.append(sum(hits) / len(hits))
        assert rates[1] > rates[0], f"{name}: target rate {rates[0]:.2f} unsteered, {rates[1]:.2f} steered"


def test_the_bundled_ratings_of_the_smollm2_recipes_reproduce(smol, tmp_path, monkeypatch):
    """Each SmolLM2 recipe of the bundled presets, shipped or withdrawn, answers its 30 recorded validation
    prompts again and the rating judge (skipped where it is not fetched) rates them as the document records
    (``workbench presets rate`` wrote it), within 0.1 in mean fluency and mean score, so it ships or is
    withdrawn as the document says."""
    from workbench.evaluation.reference import REFERENCE_SPEC
    from workbench.studies.frontier import rating_judge
    from workbench.studies.preset_rating import rate_presets

    judge = rating_judge(smol, REFERENCE_SPEC, tmp_path)
    if judge is None:
        pytest.skip(f"{REFERENCE_SPEC} is not fetched: no judge to rate the presets")
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    fresh = presets.parse(rate_presets(smol, judge))
    for name, preset in presets.PRESETS.items():
        recorded = preset.rating.get(smol.name)
        if recorded is None:
            continue
        measured = fresh[name].rating[smol.name]
        for key in ("mean_fluency", "mean_score"):
            assert measured[key] == pytest.approx(recorded[key], abs=0.1), (name, key, measured, recorded)
        assert (presets.withheld(measured) is None) == (smol.name in preset.recipes), (name, measured)
