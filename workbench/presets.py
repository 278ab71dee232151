"""Named steering presets: the frontier study's winning recipes, ready in one line.

``presets.load(model, "italian")`` returns the :class:`~workbench.steering.Intervention` list of the
preset's recipe for ``model``; pass it to ``generate(..., interventions=...)``. The recipes, their
validation numbers and their rating are data, not code: :data:`BUNDLED` (``workbench/data/presets.json``),
written by ``workbench study frontier`` (:func:`workbench.studies.frontier.frontier_study` writes
``frontier/presets.json`` in its run folder; copy it over :data:`BUNDLED` to ship it). The document records
the scorer version, each model's weights hash, each preset's train-set hash and the run manifest's hash;
:func:`document` and :func:`parse` are its one schema.

A recipe ships only when the rating judge rated its validation answers fluent (:func:`withheld`: mean
fluency at least :data:`MIN_FLUENCY` and mean score above 0, AxBench's ratings of
:func:`~workbench.evaluation.rating.rate`): the text rules alone call salad in Italian words Italian and
not degenerate. A recipe rated otherwise, or never rated by a judge, stays in the document with its numbers
but is withdrawn: :func:`available` leaves it out and :func:`load` refuses it in one line saying why.

The vector is built for the loaded model on first use from the bundled train split and cached under
``cache_dir()/presets`` as ``<name>-<model fingerprint>.safetensors`` (the vector, checksummed, with its
own provenance) plus ``.json`` (the preset, the recipe, the model and dataset hashes, how it was built). A
later call reads the cache; a cache built for another recipe or model, or damaged on disk, is rebuilt.
``n_train`` (every function taking a model) builds from fewer train pairs than the preset's, for smoke
runs: such a vector is cached as ``<name>-n<n_train>-<fingerprint>`` and its record says ``n_train``, so it
is never served as the preset itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from workbench.behaviours import BEHAVIOURS, build_vectors
from workbench.errors import ArtifactError, InvalidArgumentError, ShapeMismatchError
from workbench.files import atomic_text, utc_now
from workbench.interventions import Intervention
from workbench.models import Model
from workbench.paths import cache_dir
from workbench.recipes import Recipe
from workbench.vectors import SteeringVector, workbench_version

__all__ = [
    "BUNDLED",
    "MIN_FLUENCY",
    "PRESETS",
    "SCHEMA",
    "Preset",
    "available",
    "build",
    "document",
    "fingerprint",
    "get",
    "load",
    "names",
    "parse",
    "path",
    "provenance",
    "read",
    "train_pairs",
    "vector",
    "withheld",
]

#: The shipped presets document.
BUNDLED = Path(__file__).parent / "data" / "presets.json"
#: Version of the presets document's layout (3: each model's recipe has a ``rating``).
SCHEMA = 3
#: The least mean fluency (0-2) of a recipe's validation answers that ships: the rubric's 1, understandable
#: with noticeable errors, on average; its mean score must also be above 0 (some answers on target,
#: relevant and fluent at once).
MIN_FLUENCY = 1.0


def withheld(rating: Mapping[str, Any] | None) -> str | None:
    """Why a recipe whose validation answers were rated ``rating`` does not ship, or None when it does.

    ``rating``: ``judge``, ``n`` and the answers' ``mean_concept, mean_relevance, mean_fluency,
    mean_score`` (None: no judge rated them)."""
    if rating is None:
        return (
            "no judge rated its answers fluent (run `workbench models fetch qwen2.5-coder-1.5b-instruct`, "
            "then `workbench study frontier`)"
        )
    fluency, score = rating["mean_fluency"], rating["mean_score"]
    if fluency >= MIN_FLUENCY and score > 0:
        return None
    return (
        f"{rating['judge']} rated its {rating['n']} validation answers not fluent (mean fluency "
        f"{fluency:.2f}, mean score {score:.2f}; a preset ships at mean fluency >= {MIN_FLUENCY:g} and mean "
        "score > 0)"
    )


@dataclass(frozen=True)
class Preset:
    """A behaviour's winning recipe per model (by model name), and how many train pairs build its vector.

    ``recipes``: the recipes that ship; ``withdrawn``: those chosen but not shipped (:func:`withheld` of
    their rating). ``validation``: per model, the recipe's rates on validation prompts as the search measured
    them (``target`` names the metric of ``target_rate``), under scorer version ``scorer_version`` (None:
    before :data:`~workbench.evaluation.SCORER_VERSION` existed); ``rating``: per model, the judge's rating
    of those answers (None: no judge rated them).
    """

    name: str
    behaviour: str
    recipes: Mapping[str, Recipe]
    n_train: int = 48
    chosen_by: str = ""
    validation: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    scorer_version: int | None = None
    dataset_hash: str | None = None
    rating: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    withdrawn: Mapping[str, Recipe] = field(default_factory=dict)

    def add(
        self,
        model_name: str,
        recipe: Recipe,
        validation: Mapping[str, Any],
        rating: Mapping[str, Any] | None,
    ) -> Preset:
        """This preset with ``recipe`` chosen for ``model_name``: shipped, or withdrawn when :func:`withheld`
        finds a reason in its ``rating``."""
        ships = withheld(rating) is None
        return replace(
            self,
            recipes={**self.recipes, model_name: recipe} if ships else self.recipes,
            withdrawn=self.withdrawn if ships else {**self.withdrawn, model_name: recipe},
            validation={**self.validation, model_name: validation},
            rating={**self.rating, model_name: rating},
        )

    def recipe(self, model: Model) -> Recipe:
        """The recipe for ``model``, or a one-line error when the preset was not chosen for it or its recipe
        was withdrawn."""
        if model.name in self.withdrawn:
            ships = f"; it ships for {', '.join(self.recipes)}" if self.recipes else ""
            raise InvalidArgumentError(
                f"preset {self.name!r} is withdrawn for {model.name!r}: "
                f"{withheld(self.rating.get(model.name))}{ships}"
            )
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

    def validation_note(self, model_name: str) -> str:
        """The recorded validation rates for ``model_name`` in words, naming the metrics and scorer version."""
        v = self.validation.get(model_name)
        if not v:
            return "no validation record"
        r = self.rating.get(model_name)
        rated = (
            f"; rated by {r['judge']}: concept {r['mean_concept']:.2f}, relevance {r['mean_relevance']:.2f}, "
            f"fluency {r['mean_fluency']:.2f}, mean score {r['mean_score']:.2f}"
            if r
            else "; not rated by a judge"
        )
        return (
            f"target_rate ({v['target']}) {v['target_rate']:.2f}, clean_rate {v['clean_rate']:.2f}, "
            f"degeneration {v['degeneration']:.2f} on {v['n']} validation prompts ({v['prompts']}), "
            f"scorer version {self.scorer_version}{rated}"
        )


def document(presets: Mapping[str, Preset], header: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON document of ``presets``: ``header`` (``provenance, created, selection, scorer_version,
    run_manifest_hash, models``: model name to ``{"weights_hash": ...}``) and each preset with its recipes
    (shipped and withdrawn), their validation numbers, which must come from the header's scorer version, and
    their rating."""
    stale = sorted(p.name for p in presets.values() if p.scorer_version != header["scorer_version"])
    if stale:
        raise InvalidArgumentError(
            f"presets {stale} were scored by another scorer version than {header['scorer_version']}: rescore them"
        )
    return {
        "schema": SCHEMA,
        **header,
        "presets": {
            p.name: {
                "behaviour": p.behaviour,
                "n_train": p.n_train,
                "dataset_hash": p.dataset_hash,
                "recipes": {
                    model: {
                        "recipe": r.to_json(),
                        "validation": dict(p.validation.get(model, {})),
                        "rating": _plain(p.rating.get(model)),
                    }
                    for model, r in {**p.recipes, **p.withdrawn}.items()
                },
            }
            for p in presets.values()
        },
    }


def _plain(rating: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if rating is None else dict(rating)


def parse(doc: Mapping[str, Any], where: str = "the presets document") -> dict[str, Preset]:
    """The presets of a :func:`document`, each recipe shipped or withdrawn by its rating (:meth:`Preset.add`);
    a malformed document raises :class:`ArtifactError`."""
    try:
        if doc["schema"] != SCHEMA:
            raise ArtifactError(f"{where} has schema {doc['schema']!r}, not {SCHEMA}: regenerate it")
        chosen_by = f"{doc['selection']} ({doc['created']}); {doc['provenance']}"
        found: dict[str, Preset] = {}
        for name, entry in doc["presets"].items():
            preset = Preset(
                name,
                entry["behaviour"],
                {},
                n_train=int(entry["n_train"]),
                chosen_by=chosen_by,
                scorer_version=doc["scorer_version"],
                dataset_hash=entry["dataset_hash"],
            )
            for model, e in entry["recipes"].items():
                preset = preset.add(model, Recipe.from_json(e["recipe"]), e["validation"], e["rating"])
            found[name] = preset
        return found
    except (KeyError, TypeError, AttributeError, InvalidArgumentError) as e:
        raise ArtifactError(f"{where} is malformed ({type(e).__name__}: {e}): regenerate it") from None


def read(file: str | Path = BUNDLED) -> dict[str, Preset]:
    """The presets in a presets JSON file (default :data:`BUNDLED`)."""
    try:
        doc = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot read presets from {file} ({e}): restore or regenerate it") from None
    return parse(doc, str(file))


#: The bundled presets (:func:`read` of :data:`BUNDLED`).
PRESETS: dict[str, Preset] = read()


def fingerprint(file: str | Path | None = None) -> str:
    """SHA-256 of a presets file's bytes (default :data:`BUNDLED`: results that use the bundled presets
    depend on it)."""
    return hashlib.sha256(Path(file or BUNDLED).read_bytes()).hexdigest()


def names() -> list[str]:
    """The preset names :func:`load` accepts."""
    return sorted(PRESETS)


def available(model: Model) -> list[str]:
    """The preset names with a recipe for ``model`` that ships (not withdrawn)."""
    return [name for name in names() if model.name in PRESETS[name].recipes]


def get(name: str) -> Preset:
    """The preset called ``name``, or a one-line error listing them."""
    if name not in PRESETS:
        raise InvalidArgumentError(f"unknown preset {name!r}: use one of {', '.join(names()) or 'none'}")
    return PRESETS[name]


def train_pairs(name: str, n_train: int | None = None) -> int:
    """How many train pairs build preset ``name``: its own count, or ``n_train`` if smaller."""
    preset = get(name)
    if n_train is None:
        return preset.n_train
    if n_train < 1:
        raise InvalidArgumentError(
            f"n_train must be at least 1, not {n_train}: pass a positive count or None"
        )
    return min(n_train, preset.n_train)


def path(model: Model, name: str, n_train: int | None = None) -> Path:
    """Where the preset's vector for ``model`` is cached (``.safetensors``; the ``.json`` sits beside it);
    a vector from fewer train pairs than the preset's (``n_train``) has its own file."""
    n = train_pairs(name, n_train)
    size = "" if n == get(name).n_train else f"-n{n}"
    return cache_dir() / "presets" / f"{name}{size}-{model.fingerprint}.safetensors"


def _record(
    model: Model, preset: Preset, recipe: Recipe, vector: SteeringVector, n_train: int
) -> dict[str, Any]:
    return {
        "preset": preset.name,
        "behaviour": preset.behaviour,
        "recipe": recipe.to_json(),
        "chosen_by": preset.chosen_by,
        "validation": dict(preset.validation.get(model.name, {})),
        "rating": _plain(preset.rating.get(model.name)),
        "scorer_version": preset.scorer_version,
        "n_train": n_train,
        "model_name": model.name,
        "weights_hash": model.weights_hash,
        "fingerprint": model.fingerprint,
        "n_layers": model.n_layers,
        "d_model": model.d_model,
        "dataset": vector.provenance.get("dataset"),
        "dataset_hash": vector.provenance.get("dataset_hash"),
        "split": "train",
        "workbench_version": workbench_version(),
        "created": utc_now(),
    }


def build(
    model: Model, name: str, *, n_train: int | None = None, progress: bool = False
) -> tuple[SteeringVector, dict[str, Any]]:
    """Build preset ``name``'s vector for ``model`` from the bundled train split (its first
    :func:`train_pairs` pairs) and write the cache."""
    preset = get(name)
    recipe = preset.recipe(model)
    behaviour = BEHAVIOURS[preset.behaviour]
    n = train_pairs(name, n_train)
    vectors = build_vectors(model, behaviour, n, sources=(recipe.source,), progress=progress)
    vector = vectors[recipe.source].select(recipe.layers)
    record = _record(model, preset, recipe, vector, n)
    target = path(model, name, n)
    vector.save(target)
    atomic_text(
        target.with_suffix(".json"), json.dumps(record, indent=1, sort_keys=True) + "\n", "preset record"
    )
    return vector, record


def _cached(
    model: Model, name: str, recipe: Recipe, n_train: int | None
) -> tuple[SteeringVector, dict[str, Any]] | None:
    n = train_pairs(name, n_train)
    target = path(model, name, n)
    try:
        record = json.loads(target.with_suffix(".json").read_text(encoding="utf-8"))
        vector = SteeringVector.load(target)
    except (OSError, ValueError, ArtifactError):
        return None
    fresh = (
        record.get("recipe") == recipe.to_json()
        and record.get("fingerprint") == model.fingerprint
        and record.get("n_train") == n
    )
    return (vector, record) if fresh and vector.provenance.get("weights_hash") == model.weights_hash else None


def _found(
    model: Model, name: str, n_train: int | None, progress: bool
) -> tuple[SteeringVector, dict[str, Any]]:
    recipe = get(name).recipe(model)
    return _cached(model, name, recipe, n_train) or build(model, name, n_train=n_train, progress=progress)


def vector(model: Model, name: str, *, n_train: int | None = None, progress: bool = False) -> SteeringVector:
    """Preset ``name``'s vector for ``model`` (its recipe's layers), built on first use and cached on disk;
    ``n_train`` caps its train pairs (a smoke run's vector, cached apart from the preset's)."""
    return _found(model, name, n_train, progress)[0]


def load(
    model: Model, name: str, *, n_train: int | None = None, progress: bool = False
) -> list[Intervention]:
    """The interventions of preset ``name`` for ``model``, built on first use and cached on disk."""
    return get(name).recipe(model).interventions(vector(model, name, n_train=n_train, progress=progress))


def provenance(model: Model, name: str, *, n_train: int | None = None) -> dict[str, Any]:
    """The cached JSON record of preset ``name`` for ``model`` (building it first if needed)."""
    return _found(model, name, n_train, False)[1]
