"""Named steering presets: the frontier study's winning recipes, ready in one line.

``presets.load(model, "italian")`` returns the :class:`~workbench.steering.Intervention` list of the
preset's recipe for ``model`` (chosen on the validation split by the frontier study, see
:mod:`workbench.studies.frontier`); pass it to ``generate(..., interventions=...)``. The vector is built
for the loaded model on first use from the bundled train split and cached under
``cache_dir()/presets`` as ``<name>-<weights>.safetensors`` (the vector, checksummed, with its own
provenance) plus ``.json`` (the preset, the recipe, the model and dataset hashes, how it was built).
A later call reads the cache; a cache built for another recipe or damaged on disk is rebuilt.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workbench.errors import ArtifactError, InvalidArgumentError, ShapeMismatchError
from workbench.frontier import BEHAVIOURS, Recipe, build_vectors
from workbench.models import Model, cache_dir
from workbench.steering import Intervention
from workbench.vectors import SteeringVector, workbench_version

__all__ = ["PRESETS", "Preset", "available", "build", "get", "load", "names", "path", "provenance", "vector"]


@dataclass(frozen=True)
class Preset:
    """A behaviour's winning recipe per model (by model name), and how many train pairs build its vector."""

    name: str
    behaviour: str
    recipes: Mapping[str, Recipe]
    n_train: int = 48
    chosen_by: str = ""
    validation: Mapping[str, str] = field(default_factory=dict)

    def recipe(self, model: Model) -> Recipe:
        """The recipe for ``model``, or a one-line error when the preset was not chosen for it."""
        recipe = self.recipes.get(model.name)
        if recipe is None:
            raise ShapeMismatchError(
                f"preset {self.name!r} was chosen for {', '.join(self.recipes)}, not {model.name!r}: "
                f"run the frontier study on it (workbench study frontier --model ...) or load one of those"
            )
        if max(recipe.layers, default=-1) >= model.n_layers:
            raise ShapeMismatchError(
                f"preset {self.name!r} steers layer {max(recipe.layers)} but {model.name!r} has "
                f"{model.n_layers} layers: load the model it was chosen for"
            )
        return recipe


_SMOL, _GEMMA = "smollm2-135m-instruct", "gemma3-270m"
_CHOSEN = "the frontier study's validation choice by clean rate, 2026-12-01 (analyses/quality_frontier.py)"
#: The bundled presets: the chosen recipe of each behaviour whose steering lands on a bundled model.
#: ``validation``: its rates on the 30 confirmation prompts; the README's frontier table has the test split.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "json",
            "json",
            {_SMOL: Recipe("mean", (9,), strength=0.6, positions="prompt")},
            chosen_by=_CHOSEN,
            validation={_SMOL: "JSON 0.63, clean 0.33, degeneration 0.43 on 30 validation prompts"},
        ),
        Preset(
            "one_sentence",
            "one_sentence",
            {
                _SMOL: Recipe(
                    "response", tuple(range(6, 14)), strength=0.12, decay_tokens=20, norm_preserving=True
                )
            },
            chosen_by=_CHOSEN,
            validation={_SMOL: "one sentence 0.93, clean 0.83, degeneration 0.10 on 30 validation prompts"},
        ),
        Preset(
            "italian",
            "italian",
            {
                _SMOL: Recipe("mean", tuple(range(6, 14)), strength=0.18, positions="generated"),
                _GEMMA: Recipe("response", tuple(range(18)), strength=0.008, positions="prompt"),
            },
            chosen_by=_CHOSEN,
            validation={
                _SMOL: "Italian 0.77, clean 0.43, degeneration 0.47 on 30 validation prompts",
                _GEMMA: "Italian 0.90, clean 0.70, degeneration 0.23 on 30 validation prompts",
            },
        ),
    )
}


def names() -> list[str]:
    """The preset names :func:`load` accepts."""
    return sorted(PRESETS)


def available(model: Model) -> list[str]:
    """The preset names with a recipe chosen for ``model``."""
    return [name for name in names() if model.name in PRESETS[name].recipes]


def get(name: str) -> Preset:
    """The preset called ``name``, or a one-line error listing them."""
    if name not in PRESETS:
        raise InvalidArgumentError(f"unknown preset {name!r}: use one of {', '.join(names()) or 'none'}")
    return PRESETS[name]


def path(model: Model, name: str) -> Path:
    """Where the preset's vector for ``model`` is cached (``.safetensors``; the ``.json`` sits beside it)."""
    return cache_dir() / "presets" / f"{name}-{model.weights_hash[:16]}.safetensors"


def _record(model: Model, preset: Preset, recipe: Recipe, vector: SteeringVector) -> dict[str, Any]:
    return {
        "preset": preset.name,
        "behaviour": preset.behaviour,
        "recipe": recipe.to_json(),
        "chosen_by": preset.chosen_by,
        "validation": dict(preset.validation),
        "n_train": preset.n_train,
        "model_name": model.name,
        "weights_hash": model.weights_hash,
        "n_layers": model.n_layers,
        "d_model": model.d_model,
        "dataset": vector.provenance.get("dataset"),
        "dataset_hash": vector.provenance.get("dataset_hash"),
        "split": "train",
        "workbench_version": workbench_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def build(model: Model, name: str, *, progress: bool = False) -> tuple[SteeringVector, dict[str, Any]]:
    """Build preset ``name``'s vector for ``model`` from the bundled train split and write the cache."""
    preset = get(name)
    recipe = preset.recipe(model)
    behaviour = BEHAVIOURS[preset.behaviour]
    vectors = build_vectors(model, behaviour, preset.n_train, sources=(recipe.source,), progress=progress)
    vector = vectors[recipe.source].select(recipe.layers)
    record = _record(model, preset, recipe, vector)
    target = path(model, name)
    vector.save(target)
    tmp = target.with_name(f".{target.stem}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, target.with_suffix(".json"))
    return vector, record


def _cached(model: Model, name: str, recipe: Recipe) -> tuple[SteeringVector, dict[str, Any]] | None:
    target = path(model, name)
    try:
        record = json.loads(target.with_suffix(".json").read_text(encoding="utf-8"))
        vector = SteeringVector.load(target)
    except (OSError, ValueError, ArtifactError):
        return None
    fresh = record.get("recipe") == recipe.to_json() and record.get("weights_hash") == model.weights_hash
    return (vector, record) if fresh and vector.provenance.get("weights_hash") == model.weights_hash else None


def vector(model: Model, name: str, *, progress: bool = False) -> SteeringVector:
    """Preset ``name``'s vector for ``model`` (its recipe's layers), built on first use and cached on disk."""
    recipe = get(name).recipe(model)
    found, _ = _cached(model, name, recipe) or build(model, name, progress=progress)
    return found


def load(model: Model, name: str, *, progress: bool = False) -> list[Intervention]:
    """The interventions of preset ``name`` for ``model``, built on first use and cached on disk."""
    return get(name).recipe(model).interventions(vector(model, name, progress=progress))


def provenance(model: Model, name: str) -> dict[str, Any]:
    """The cached JSON record of preset ``name`` for ``model`` (building it first if needed)."""
    recipe = get(name).recipe(model)
    _, record = _cached(model, name, recipe) or build(model, name)
    return record
