"""The steering engine on the real bundled SmolLM2: projections at the hooked layer, and a JSON steer."""

from __future__ import annotations

import pytest
import torch

from workbench import presets
from workbench.activations import collect
from workbench.datasets import load
from workbench.frontier import BEHAVIOURS, is_json_answer
from workbench.generation import generate
from workbench.steering import Intervention, steer
from workbench.vectors import SteeringVector

pytestmark = pytest.mark.slow
LAYER = 15
#: Measured 2026-12-01: 0.00 unsteered -> 0.70 steered parse as JSON (0.75 start an object); the test
#: asks for 0.4 of that 0.7 so that float noise in batching cannot flip it.
MARGIN = 0.4


@pytest.fixture(scope="module")
def json_vector(smol) -> SteeringVector:
    """The JSON-instruction direction from 16 train pairs (last prompt token, every layer)."""
    train = load("json_format", "train").head(16)
    pos = collect(smol, train.positive, cache=False)
    neg = collect(smol, train.negative, cache=False)
    return SteeringVector.from_activations(pos, neg, dataset=train.name, dataset_hash=train.hash)


def test_set_projection_and_ablate_on_smollm2(smol, json_vector):
    prompts = load("json_format", "test").head(6).negative
    u = json_vector.direction(LAYER)
    z = json_vector.stats[LAYER].pos_mean_proj
    with steer(smol, Intervention(json_vector, LAYER, "set_projection")):
        acts = collect(smol, prompts, layers=[LAYER], position="mean", cache=False).layer(LAYER)
    assert torch.allclose(acts @ u, torch.full((len(prompts),), z), atol=1e-3 * max(1.0, abs(z)))
    with steer(smol, Intervention(json_vector, LAYER, "ablate")):
        acts = collect(smol, prompts, layers=[LAYER], cache=False).layer(LAYER)
    assert (acts @ u).abs().max() < 1e-3
    # the next layer's residual is not pinned: the intervention acts on the hooked layer only
    with steer(smol, Intervention(json_vector, LAYER, "ablate")):
        after = collect(smol, prompts, layers=[LAYER + 1], cache=False).layer(LAYER + 1)
    assert (after @ u).abs().max() > 1e-2


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
