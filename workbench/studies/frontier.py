"""The quality frontier study: which steering recipe lands a behaviour without breaking the model.

Per behaviour (:data:`workbench.behaviours.BEHAVIOURS`): :func:`workbench.studies.search.search` on the
validation split (a coarse grid, refinements, a confirmation round on prompts disjoint from the selection
prompts) chooses a recipe; the test split then compares unsteered, the instruction in the prompt (for
Italian also the fully Italian prompt), the chosen recipe, and the chosen recipe with the instruction.
Each chosen recipe that beats the unsteered clean rate in the confirmation round is recorded, with its
validation numbers and hashes, in ``frontier/presets.json`` (the layout of :data:`workbench.presets.BUNDLED`).
The frontier figure plots every validation recipe. A full-scale run also steers Italian on the
multilingual Gemma 3 270M base model, when it is installed. Validation and test answers are kept in the
study folder as :func:`~workbench.runner.run_grid` parts keyed by the model's fingerprint
(:func:`~workbench.studies.search.grid_dir`), unscored, so a rerun resumes and rescoring needs no generation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from workbench import evaluation, presets
from workbench.behaviours import BEHAVIOURS, Behaviour
from workbench.errors import InvalidArgumentError, ModelLoadError
from workbench.evaluation.targets import starts_json
from workbench.models import Model, load_model
from workbench.plots import plot_frontier, save_figure
from workbench.recipes import Recipe, answer, rank, score, summarize_recipes
from workbench.runs import atomic_text, read_manifest, utc_now, write_frame
from workbench.studies.common import Size, StudyResult
from workbench.studies.search import (
    CONFIRM,
    CONFIRM_K,
    Plan,
    baselines,
    coarse_grid,
    grid_dir,
    refinements,
    search,
    spans,
)
from workbench.vectors import SteeringVector

__all__ = [
    "CONFIRM",
    "CONFIRM_K",
    "QUICK_BEHAVIOURS",
    "BehaviourResult",
    "Plan",
    "baselines",
    "coarse_grid",
    "frontier_study",
    "presets_study",
    "refinements",
    "search",
    "spans",
]

#: Behaviours of a quick (CI-sized) run, which runs at most :meth:`Size.quick` of each count (a smoke run,
#: not a result); the full-size search runs at :meth:`Size.frontier`.
QUICK_BEHAVIOURS = ("italian",)
#: Test settings, in table order.
SETTINGS = ("unsteered", "instruction in prompt", "Italian prompt", "steering", "steering + instruction")


@dataclasses.dataclass
class BehaviourResult:
    """One behaviour on one model: the validation summary, the chosen recipe and the test rows."""

    model: str
    weights_hash: str
    n_train: int
    behaviour: Behaviour
    vectors: dict[str, SteeringVector]
    validation: pd.DataFrame
    chosen: Recipe
    test_rows: pd.DataFrame
    notes: list[str]

    @property
    def sweep(self) -> pd.DataFrame:
        """The validation summary without the confirmation round: one row per recipe, all on the same prompts."""
        return self.validation[self.validation["stage"] != "confirm"]

    @property
    def confirmed(self) -> pd.DataFrame:
        """The confirmation round's rows (the unsteered baseline and the finalists); empty in a quick run."""
        return self.validation[self.validation["stage"] == "confirm"]


def _budgeted(behaviour: Behaviour, scale: Size) -> Behaviour:
    return dataclasses.replace(behaviour, max_new_tokens=min(behaviour.max_new_tokens, scale.max_new_tokens))


def _test_recipes(behaviour: Behaviour, chosen: Recipe) -> dict[str, Recipe]:
    settings = dict(zip(SETTINGS[:2], baselines(behaviour)[:2], strict=True))
    if behaviour.instruction_variant:
        settings["Italian prompt"] = Recipe(prompt="native")
    settings["steering"] = chosen
    settings["steering + instruction"] = dataclasses.replace(chosen, prompt="instruction")
    return settings


def run_behaviour(
    model: Model,
    behaviour: Behaviour,
    scale: Size,
    out: Path,
    *,
    quick: bool = False,
    plan: Plan = Plan(),
    progress: bool = False,
) -> BehaviourResult:
    """:func:`search` (as wide as ``plan``) on validation, then the test settings of the chosen recipe."""
    behaviour = _budgeted(behaviour, scale)
    vectors, validation, chosen, notes = search(
        model, behaviour, scale, out, quick=quick, plan=plan, progress=progress
    )
    rows = _test_rows(model, behaviour, vectors, chosen, scale, out, progress)
    return BehaviourResult(
        model.name, model.weights_hash, scale.n_train, behaviour, vectors, validation, chosen, rows, notes
    )


def _test_rows(
    model: Model,
    behaviour: Behaviour,
    vectors: dict[str, SteeringVector],
    chosen: Recipe,
    scale: Size,
    out: Path,
    progress: bool,
) -> pd.DataFrame:
    """The test settings of ``chosen`` (answers kept in ``out``: :func:`grid_dir`), scored, with a ``setting``
    column."""
    settings = _test_recipes(behaviour, chosen)
    recipes = list(settings.values())
    rows = answer(
        model,
        behaviour,
        vectors,
        recipes,
        "test",
        scale.n_test,
        batch_size=scale.batch_size,
        out_dir=grid_dir(out, model, behaviour),
        progress=progress,
    )
    rows = score(behaviour, rows)
    label = {r.name: s for s, r in settings.items()}
    return rows.assign(setting=rows["recipe"].map(label))


def _table(model: str, behaviour: Behaviour, rows: pd.DataFrame) -> pd.DataFrame:
    """One row per test setting: the recipe and its rates. ``target`` names the metric of ``target_rate``
    (:data:`~workbench.evaluation.targets.TARGETS`: JSON is IFEval's strict ``json_format_strict``);
    ``degeneration`` is the share of :func:`~workbench.evaluation.is_degenerate`; the JSON behaviour also
    shows ``starts_json`` (a JSON object or array, truncation allowed), which is not compliance."""
    rates = {
        "recipe": ("recipe", "first"),
        "target_rate": ("on_target", "mean"),
        "clean_rate": ("clean", "mean"),
        "degeneration": ("degenerate", "mean"),
        "perplexity": ("perplexity", "median"),
        "ifeval_rate": ("follows_ifeval", "mean"),
    }
    if behaviour.target == "json_format_strict":
        rows = rows.assign(starts_json=rows["response"].map(starts_json))
        rates["starts_json"] = ("starts_json", "mean")
    table = rows.groupby("setting", sort=False).agg(**rates, n=("on_target", "size")).reset_index()
    table.insert(0, "target", behaviour.target)
    table.insert(0, "behaviour", behaviour.name)
    table.insert(0, "model", model)
    return table


def _methods(result: BehaviourResult) -> pd.DataFrame:
    """Best validation clean and target rates by each method knob (steering alone)."""
    alone = rank(result.sweep)  # steering alone
    frames = []
    for knob in ("source", "span", "mode", "positions", "decay_tokens", "norm_preserving", "scale"):
        best = alone.groupby(knob)[["clean_rate", "target_rate"]].max().reset_index()
        frames.append(
            best.rename(columns={knob: "value"}).assign(knob=knob, value=lambda f: f["value"].astype(str))
        )
    methods = pd.concat(frames, ignore_index=True)[["knob", "value", "clean_rate", "target_rate"]]
    methods.insert(0, "behaviour", result.behaviour.name)
    methods.insert(0, "model", result.model)
    return methods


def _refinement_effects(result: BehaviourResult) -> pd.DataFrame:
    """Each refinement against the coarse recipe it varies: change in clean, target and degeneration rates."""
    summary = result.sweep.set_index("recipe")
    refined = result.sweep[result.sweep["stage"].str.startswith("refine")]
    columns = ["clean_rate", "target_rate", "degeneration"]
    seeds = summary.loc[refined["seed"], columns].to_numpy()
    effects = refined[["recipe", "seed", "change"]].assign(
        **{f"delta_{c}": refined[c].to_numpy() - seeds[:, j] for j, c in enumerate(columns)}
    )
    return effects.assign(model=result.model, behaviour=result.behaviour.name)


def _landed(results: Sequence[BehaviourResult]) -> dict[str, presets.Preset]:
    """One preset per behaviour, with the chosen recipe of each model where it beats the unsteered clean rate
    of its final validation round (the confirmation round, on prompts disjoint from the selection ones)."""
    found: dict[str, presets.Preset] = {}
    for r in results:
        final = r.confirmed if len(r.confirmed) else r.sweep
        rates = final.set_index("recipe")
        v, unsteered = rates.loc[r.chosen.name], rates.loc[Recipe().name]
        if not v["clean_rate"] > unsteered["clean_rate"]:
            continue
        n_selection = int(r.sweep["n"].iloc[0])
        prompts = (
            f"validation items {n_selection + 1}-{n_selection + int(v['n'])}, disjoint from the {n_selection} "
            "it was selected on"
            if len(r.confirmed)
            else "the prompts it was selected on (quick run: no confirmation round)"
        )
        validation = {
            "split": "validation",
            "prompts": prompts,
            "n": int(v["n"]),
            "target": r.behaviour.target,
            **{k: round(float(v[k]), 4) for k in ("target_rate", "clean_rate", "degeneration", "perplexity")},
            "unsteered_clean_rate": round(float(unsteered["clean_rate"]), 4),
        }
        name = r.behaviour.name
        old = found.get(name) or presets.Preset(
            name,
            name,
            {},
            n_train=r.n_train,
            scorer_version=evaluation.SCORER_VERSION,
            dataset_hash=r.vectors[r.chosen.source].provenance.get("dataset_hash"),
        )
        found[name] = dataclasses.replace(
            old,
            recipes={**old.recipes, r.model: r.chosen},
            validation={**old.validation, r.model: validation},
        )
    return found


def _header(results: Sequence[BehaviourResult], run: Path, quick: bool) -> dict[str, object]:
    """The presets document's provenance: when, how chosen, the models' weights and the run manifest."""
    configuration = read_manifest(run).get("configuration")
    digest = json.dumps(configuration, sort_keys=True, default=str).encode()
    return {
        "provenance": f"workbench study frontier ({'quick smoke run' if quick else 'full search'}) in {run}",
        "created": utc_now(),
        "selection": "the frontier study's choice by clean rate in the confirmation round, kept where it "
        "beats the unsteered clean rate there",
        "scorer_version": evaluation.SCORER_VERSION,
        "run_manifest_hash": hashlib.sha256(digest).hexdigest() if configuration else None,
        "models": {r.model: {"weights_hash": r.weights_hash} for r in results},
    }


def _notes(result: BehaviourResult) -> list[str]:
    table = _table(result.model, result.behaviour, result.test_rows).set_index("setting")
    rounds = result.confirmed if len(result.confirmed) else result.sweep
    v = rounds.set_index("recipe").loc[result.chosen.name]
    return [
        *result.notes,
        f"{result.model} / {result.behaviour.name}: chosen `{result.chosen.name}` ({v['n']} validation "
        f"prompts: clean "
        f"{v['clean_rate']:.2f}, target {v['target_rate']:.2f}, degeneration {v['degeneration']:.2f}); "
        + _verdict(table),
    ]


def _quick(scale: Size, quick: bool | None) -> tuple[Size, bool]:
    """The size a run uses and whether it is quick (default: :attr:`Size.is_quick`); a quick run is capped
    at :meth:`Size.quick`."""
    quick = scale.is_quick if quick is None else quick
    return (scale.at_most(Size.quick()) if quick else scale), quick


def _gemma() -> Model | None:
    try:
        return load_model("gemma3-270m")
    except ModelLoadError:
        return None


def frontier_study(
    model: Model,
    scale: Size,
    out_dir: str | os.PathLike[str],
    *,
    behaviours: Sequence[str] | None = None,
    base_model: bool | None = None,
    quick: bool | None = None,
    plan: Plan = Plan(),
    progress: bool = False,
) -> StudyResult:
    """The quality frontier of every behaviour on ``model`` (and Italian on Gemma 3 270M with ``base_model``),
    each searched as wide as ``plan``.

    ``quick`` (default: :attr:`Size.is_quick`) runs the quick grid (the band at one strength, no
    refinements) on :data:`QUICK_BEHAVIOURS`, with the size capped at :meth:`Size.quick` and without the
    base model. Table columns: ``model, behaviour, target, setting, recipe, target_rate, clean_rate,
    degeneration, perplexity, ifeval_rate`` (``starts_json`` for JSON) ``, n`` (test split; see :func:`_table`).
    The folder also holds ``sweep_validation.csv`` (every recipe), ``methods.csv`` (best rates per knob),
    ``sweep_refinements.csv`` (each refinement against its seed),
    ``chosen.json``, ``presets.json`` (:func:`_landed`: the layout of :data:`workbench.presets.BUNDLED`;
    copy it there to ship the recipes) and one ``frontier_<model>_<behaviour>`` figure per behaviour.
    """
    scale, quick = _quick(scale, quick)
    names = list(behaviours or (QUICK_BEHAVIOURS if quick else BEHAVIOURS))
    unknown = [n for n in names if n not in BEHAVIOURS]
    if unknown or not names:
        raise InvalidArgumentError(f"unknown or no behaviours {unknown}: use some of {', '.join(BEHAVIOURS)}")
    out = Path(out_dir) / "frontier"
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(model, BEHAVIOURS[n]) for n in names]
    notes = []
    if base_model if base_model is not None else not quick:
        gemma = _gemma()
        if gemma is None:
            notes.append("Gemma 3 270M is not installed: its Italian frontier was not run")
        else:
            jobs.append((gemma, BEHAVIOURS["italian"]))
    results = [run_behaviour(m, b, scale, out, quick=quick, plan=plan, progress=progress) for m, b in jobs]
    figures = []
    for r in results:
        title = (
            f"{r.behaviour.name} on {r.model}: validation recipes ({r.behaviour.max_new_tokens} new tokens)"
        )
        figures += save_figure(
            plot_frontier(r.sweep, title, r.chosen.name), out / f"frontier_{r.model}_{r.behaviour.name}"
        )
        notes += _notes(r)
    table = pd.concat([_table(r.model, r.behaviour, r.test_rows) for r in results], ignore_index=True)
    validation = pd.concat([r.validation.assign(model=r.model, behaviour=r.behaviour.name) for r in results])
    write_frame(validation, out / "sweep_validation.csv", "validation sweep")
    write_frame(pd.concat([_methods(r) for r in results]), out / "methods.csv", "best rates per knob")
    effects = [_refinement_effects(r) for r in results if "seed" in r.validation]
    if effects:
        write_frame(pd.concat(effects), out / "sweep_refinements.csv", "refinement effects")
    chosen = [
        {"model": r.model, "behaviour": r.behaviour.name, "recipe": r.chosen.to_json()} for r in results
    ]
    atomic_text(out / "chosen.json", json.dumps(chosen, indent=1) + "\n", "chosen recipes")
    record = presets.document(_landed(results), _header(results, Path(out_dir), quick))
    atomic_text(out / "presets.json", json.dumps(record, indent=1, ensure_ascii=False) + "\n", "presets")
    rows = pd.concat([r.test_rows.assign(model=r.model, behaviour=r.behaviour.name) for r in results])
    return StudyResult(
        name="frontier", rows=rows.reset_index(drop=True), table=table, figures=figures, notes=notes
    )


def _verdict(table: pd.DataFrame) -> str:
    steered = table.loc["steering", "clean_rate"]
    instructed = table.loc["instruction in prompt", "clean_rate"]
    goal = "meets" if steered >= instructed else "misses"
    return (
        f"test clean {steered:.2f} vs {instructed:.2f} with the instruction in the prompt ({goal} the goal)"
    )


def presets_study(
    model: Model,
    scale: Size,
    out_dir: str | os.PathLike[str],
    *,
    base_model: bool | None = None,
    quick: bool | None = None,
    progress: bool = False,
) -> StudyResult | str:
    """The bundled presets (the recipes :func:`frontier_study` chose) against the baselines, on the test split.

    Per preset chosen for ``model`` (and, with ``base_model``, for Gemma 3 270M when it is installed): the
    test settings of :func:`frontier_study` (unsteered, instruction in the prompt, Italian prompt, the
    preset alone, the preset with the instruction) on ``scale.n_test`` prompts, each behaviour with its
    own token budget. ``quick`` (default as :func:`frontier_study`): only the :data:`QUICK_BEHAVIOURS`
    presets, at :meth:`Size.quick` (their vectors from its few train pairs, cached apart from the presets'
    own), without the base model. Returns a "not run" line when no preset was
    chosen for ``model``. Writes under ``out_dir/presets``; table columns as :func:`frontier_study`'s; one
    ``frontier_<model>_<behaviour>`` figure of the test settings per preset. Test rows are cached there.
    """
    scale, quick = _quick(scale, quick)
    wanted = [
        n for n in presets.available(model) if not quick or presets.get(n).behaviour in QUICK_BEHAVIOURS
    ]
    if not wanted:
        return (
            f"not run: no preset was chosen for {model.name}; search for recipes with "
            f"`workbench study frontier --model {model.name}`"
        )
    out = Path(out_dir) / "presets"
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(model, name) for name in wanted]
    notes = []
    if base_model if base_model is not None else not quick:
        gemma = _gemma()
        if gemma is None:
            notes.append("Gemma 3 270M is not installed: its presets were not run")
        else:
            jobs += [(gemma, name) for name in presets.available(gemma)]
    tables, frames, figures = [], [], []
    for loaded, name in jobs:
        preset = presets.get(name)
        behaviour = _budgeted(BEHAVIOURS[preset.behaviour], scale)
        recipe = preset.recipe(loaded)
        pairs = presets.train_pairs(name, scale.n_train if quick else None)
        vector = presets.vector(loaded, name, n_train=pairs, progress=progress)
        rows = _test_rows(loaded, behaviour, {recipe.source: vector}, recipe, scale, out, progress)
        table = _table(loaded.name, behaviour, rows)
        recipes = list(_test_recipes(behaviour, recipe).values())
        title = f"preset {name} on {loaded.name}: test settings ({behaviour.max_new_tokens} new tokens)"
        summary = summarize_recipes(rows, recipes, loaded.n_layers)
        figures += save_figure(
            plot_frontier(summary, title, recipe.name), out / f"frontier_{loaded.name}_{behaviour.name}"
        )
        notes.append(
            f"{loaded.name} / preset {name}: `{recipe.name}` (validation: {preset.validation_note(loaded.name)}; "
            f"vector from {pairs} train pairs); " + _verdict(table.set_index("setting"))
        )
        tables.append(table)
        frames.append(rows.assign(model=loaded.name, behaviour=behaviour.name, preset=name))
    first = presets.get(wanted[0])
    notes.append(f"recipes chosen by the frontier search ({first.chosen_by})")
    if first.scorer_version != evaluation.SCORER_VERSION:
        notes.append(
            f"the presets' validation numbers were scored by scorer version {first.scorer_version}, these "
            f"test numbers by version {evaluation.SCORER_VERSION}: do not compare them"
        )
    rows = pd.concat(frames, ignore_index=True)
    return StudyResult(
        name="presets", rows=rows, table=pd.concat(tables, ignore_index=True), figures=figures, notes=notes
    )
