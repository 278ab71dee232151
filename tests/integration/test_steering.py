"""The steering engine on the real bundled SmolLM2 (slow): projections at the hooked layer only."""

from __future__ import annotations

import pytest
import torch

from workbench.activations import collect
from workbench.datasets import load
from workbench.interventions import Intervention
from workbench.steering import steer
from workbench.vectors import SteeringVector

pytestmark = pytest.mark.slow
LAYER = 15


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
        acts = collect(smol, prompts, layers=[LAYER], position="prompt", cache=False).layer(LAYER)
    assert torch.allclose(acts @ u, torch.full((len(prompts),), z), atol=1e-3 * max(1.0, abs(z)))
    with steer(smol, Intervention(json_vector, LAYER, "ablate")):
        acts = collect(smol, prompts, layers=[LAYER], cache=False).layer(LAYER)
    assert (acts @ u).abs().max() < 1e-3
    # the next layer's residual is not pinned: the intervention acts on the hooked layer only
    with steer(smol, Intervention(json_vector, LAYER, "ablate")):
        after = collect(smol, prompts, layers=[LAYER + 1], cache=False).layer(LAYER + 1)
    assert (after @ u).abs().max() > 1e-2
