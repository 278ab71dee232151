"""Rating a presets document again with today's judge: the rating is rewritten and decides shipping."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workbench import presets
from workbench.errors import InvalidArgumentError
from workbench.recipes import Recipe
from workbench.studies import preset_rating
from workbench.studies.preset_rating import rate_presets


class _Judge:
    """Rates every answer relevant; fluent (2) unless ``fluency`` says otherwise."""

    name = "stub"

    def __init__(self, fluency: int) -> None:
        self.fluency = fluency

    def __call__(self, queries: list[str], answers: list[str]) -> dict[str, np.ndarray]:
        return {"relevance": np.full(len(answers), 2), "fluency": np.full(len(answers), self.fluency)}


@pytest.fixture
def document(tiny, tmp_path, monkeypatch):
    """The bundled presets with a one-sentence recipe for the tiny model, whose answers are one sentence."""
    asked: list[tuple[str, int]] = []

    def answer(model, behaviour, vectors, recipes, split, n, **options):
        asked.append((split, n))
        items = behaviour.items(split, n).items
        return pd.DataFrame(
            {
                "recipe": recipes[0].name,
                "id": [i.id for i in items],
                "prompt": [i.query for i in items],
                "response": "The sky is blue because air scatters blue light.",
            }
        )

    monkeypatch.setattr(preset_rating, "answer", answer)
    monkeypatch.setattr(preset_rating, "build_vectors", lambda *args, **kwargs: {})
    doc = json.loads(presets.BUNDLED.read_text(encoding="utf-8"))
    entry = {"recipe": Recipe(layers=(1,), coef=2.0).to_json(), "validation": {}, "rating": None}
    doc["presets"]["one_sentence"]["recipes"][tiny.name] = entry
    file = tmp_path / "presets.json"
    file.write_text(json.dumps(doc), encoding="utf-8")
    return file, asked


def test_a_fluent_rating_ships_and_a_salad_rating_withdraws(tiny, document):
    file, asked = document
    rated = rate_presets(tiny, _Judge(2), file)
    rating = rated["presets"]["one_sentence"]["recipes"][tiny.name]["rating"]
    assert (rating["judge"], rating["n"], rating["mean_fluency"], rating["mean_score"]) == ("stub", 30, 2, 2)
    assert asked == [("validation", 40)]  # the 10 selection prompts answered too, then left out
    assert tiny.name in presets.parse(rated)["one_sentence"].recipes
    withdrawn = presets.parse(rate_presets(tiny, _Judge(0), file))["one_sentence"]
    assert tiny.name in withdrawn.withdrawn and tiny.name not in withdrawn.recipes
    others = rated["presets"]["italian"]["recipes"]  # another model's ratings are left as they were
    assert others == json.loads(file.read_text(encoding="utf-8"))["presets"]["italian"]["recipes"]


def test_a_model_without_recipes_is_refused(tiny):
    with pytest.raises(InvalidArgumentError, match="has no recipe for tiny-llama"):
        rate_presets(tiny, _Judge(2))
