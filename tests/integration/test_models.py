"""The bundled SmolLM2 (slow): it loads, knows Paris, and loads again from the cache to the same model (the
load's speed is benchmark row 8, not a timed test)."""

from __future__ import annotations

import pytest
import torch

from workbench.generation import generate
from workbench.models import load_model


@pytest.mark.slow
def test_smollm2_loads_and_knows_paris(smol):
    assert (smol.n_layers, smol.d_model) == (30, 576)
    assert len(smol.weights_hash) == 64
    (answer,) = generate(smol, ["What is the capital of France?"], max_new_tokens=24)
    assert "Paris" in answer


@pytest.mark.slow
def test_smollm2_loads_again_from_the_cache(smol):
    again = load_model("smollm2-135m-instruct")
    assert again.weights_hash == smol.weights_hash
    tokens = smol.encode([smol.format_chat("Hi")], formatted=True)
    with torch.inference_mode():
        assert torch.allclose(smol.hf_model(**tokens).logits, again.hf_model(**tokens).logits, atol=1e-4)
