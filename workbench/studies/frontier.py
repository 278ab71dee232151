"""The quality frontier study: which steering recipe lands a behaviour without breaking the model.

Per behaviour (:data:`workbench.frontier.BEHAVIOURS`), on the validation split:

1. a coarse grid: every vector source (last prompt token, mean over prompt tokens, mean over the response
   tokens of contrastive completions) × one layer / a band of layers / all layers × three per-layer
   strengths (``add`` in residual-norm units, every position);
2. :data:`ROUNDS` rounds of refinements of the :data:`TOP_K` recipes so far with the best clean rate
   (ties: the higher target rate, which leaves the most for a refinement to turn clean): positions (``prompt``,
   ``response``, ``generated``), a strength decaying linearly to zero, the norm-preserving variant,
   ``set_projection`` at the same layers, half and 1.5 times the strength, and the strength in
   ``diff_norm`` units (same mean added norm, another profile over the layers).

3. a confirmation round: the :data:`CONFIRM_K` best recipes so far (:func:`workbench.frontier.rank`;
   recipes that wrote the same validation answers count once) and the unsteered baseline run again on
   :data:`CONFIRM` times as many validation prompts (ten prompts measure a rate only to about ±0.15,
   and a grid of ~70 recipes picks its luckiest).

The confirmed recipe with the best clean rate (on target and not degenerate) is chosen
(:func:`workbench.frontier.choose` on the confirmation round); the test split then compares unsteered,
the instruction in the prompt (for Italian also the fully Italian prompt), the chosen recipe, and the
chosen recipe with the instruction.
The frontier figure plots every validation recipe. A full-scale run also steers Italian on the
multilingual Gemma 3 270M base model, when it is installed. Validation and test rows are cached in the
study folder (unscored), so a rerun with the same settings resumes and rescoring needs no generation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from workbench import presets
from workbench.errors import InvalidArgumentError, ModelLoadError
from workbench.evaluation.targets import starts_json
from workbench.frontier import (
    BEHAVIOURS,
    SOURCES,
    Behaviour,
    NoCompletionsError,
    Recipe,
    answer,
    build_vectors,
    cached_rows,
    choose,
    plot_frontier,
    rank,
    score,
    summarize,
)
from workbench.models import Model, load_model
from workbench.plots import save_figure
from workbench.studies.common import Scale, StudyResult
from workbench.vectors import SteeringVector

__all__ = [
    "FULL_SCALE",
    "QUICK_BEHAVIOURS",
    "BehaviourResult",
    "baselines",
    "coarse_grid",
    "frontier_study",
    "presets_study",
    "refinements",
    "search",
    "spans",
]

#: The full-scale run (the report's and analyses/quality_frontier.py's): 48 train pairs, 10 validation and
#: 20 test prompts, each behaviour's own token budget (at most 64). About 70 recipes per behaviour make
#: this study the report's largest, so it runs on fewer prompts than :meth:`Scale.full`.
FULL_SCALE = Scale(n_train=48, n_validation=10, n_test=20, max_new_tokens=64, layers=None, batch_size=60)
#: Behaviours of a quick (CI-sized) run, and the most it runs of each size (a smoke run, not a result).
QUICK_BEHAVIOURS = ("italian",)
QUICK_CAPS = {"n_train": 8, "n_validation": 6, "n_test": 6, "max_new_tokens": 16}
#: Per-layer ``add`` strengths (residual-norm units) of the coarse grid, by span.
STRENGTHS = {"one layer": (0.15, 0.3, 0.6), "band": (0.03, 0.06, 0.12), "all layers": (0.008, 0.016, 0.032)}
#: Depth fractions of the single layer and of the band's first and last layers.
ONE_LAYER, BAND = 0.3, (0.2, 0.45)
#: Recipes that seed each round of refinements, and how many rounds.
TOP_K, ROUNDS = 2, 2
#: Finalists of the confirmation round, and how many times the validation prompts they run on.
CONFIRM_K, CONFIRM = 4, 3
#: Test settings, in table order.
SETTINGS = ("unsteered", "instruction in prompt", "Italian prompt", "steering", "steering + instruction")


def spans(n_layers: int) -> dict[str, tuple[int, ...]]:
    """The layers steered at once: one layer, a band in the lower middle, or all layers."""
    last = n_layers - 1
    lo, hi = (round(f * last) for f in BAND)
    return {
        "one layer": (round(ONE_LAYER * last),),
        "band": tuple(range(lo, max(hi, lo + 1) + 1)),
        "all layers": tuple(range(n_layers)),
    }


def baselines(behaviour: Behaviour) -> list[Recipe]:
    """Unsteered, the instruction in the prompt and, for Italian, the fully Italian prompt."""
    kinds = ["plain", "instruction"] + (["native"] if behaviour.instruction_variant else [])
    return [Recipe(prompt=kind) for kind in kinds]


def coarse_grid(n_layers: int, sources: Sequence[str] = SOURCES, *, quick: bool = False) -> list[Recipe]:
    """Every source × span × strength (``add``, all positions); ``quick``: the band at its larger strength.

    Needs at least two layers (so that the band differs from the single layer).
    """
    chosen = {"band": spans(n_layers)["band"]} if quick else spans(n_layers)
    return [
        Recipe(source, layers, strength=strength)
        for source in sources
        for span, layers in chosen.items()
        for strength in (STRENGTHS[span][-1:] if quick else STRENGTHS[span])
    ]


def refinements(recipe: Recipe, max_new_tokens: int, vector: SteeringVector) -> dict[str, Recipe]:
    """Variants of one ``add`` recipe, by what changed: positions, a linear decay, norm preservation,
    set_projection, half and 1.5 times the strength, and ``diff_norm`` units with the same mean added
    norm over its layers (another profile over the layers)."""
    stats = [vector.stats[b] for b in recipe.layers]
    per_diff = sum(s.resid_norm or 0.0 for s in stats) / sum(s.diff_norm for s in stats)
    vary: dict[str, dict[str, object]] = {
        f"positions={p}": {"positions": p} for p in ("prompt", "response", "generated")
    }
    if recipe.positions != "prompt":  # a schedule over generated tokens does nothing to the prompt
        vary["linear decay"] = {"decay_tokens": max_new_tokens // 2}
    vary["norm-preserving"] = {"norm_preserving": True}
    vary["set_projection"] = {"mode": "set_projection", "strength": 1.0}
    vary |= {f"strength x{f:g}": {"strength": round(recipe.strength * f, 6)} for f in (0.5, 1.5)}
    vary["diff_norm units"] = {"scale": "diff_norm", "strength": round(recipe.strength * per_diff, 3)}
    return {label: dataclasses.replace(recipe, **change) for label, change in vary.items()}  # type: ignore[arg-type]


@dataclasses.dataclass
class BehaviourResult:
    """One behaviour on one model: the validation summary, the chosen recipe and the test rows."""

    model: str
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


def _budgeted(behaviour: Behaviour, scale: Scale) -> Behaviour:
    return dataclasses.replace(behaviour, max_new_tokens=min(behaviour.max_new_tokens, scale.max_new_tokens))


def _key(model: Model, behaviour: Behaviour, scale: Scale, split: str, recipes: Sequence[Recipe]) -> dict:
    return {
        "model": model.fingerprint,
        "behaviour": dataclasses.asdict(behaviour),
        "n_train": scale.n_train,
        "n": scale.n_validation if split == "validation" else scale.n_test,
        "split": split,
        "recipes": [r.name for r in recipes],
    }


def search(
    model: Model,
    behaviour: Behaviour,
    scale: Scale,
    out: Path,
    *,
    quick: bool = False,
    progress: bool = False,
) -> tuple[dict[str, SteeringVector], pd.DataFrame, Recipe, list[str]]:
    """Build the vectors, run the coarse grid, the refinements and the confirmation round on validation;
    choose by clean rate in the confirmation round.

    Returns the vectors, the validation summary (column ``stage``: baseline, coarse, refine, refine2,
    and one row per finalist with stage ``confirm``, whose rates are on the larger validation set), the
    chosen recipe and notes on how the vectors were built.
    """
    vectors, notes = _vectors(model, behaviour, scale, progress)
    stem = f"{model.name}_{behaviour.name}"

    answers: dict[str, tuple[str, ...]] = {}  # recipe -> its validation answers, to spot equivalent recipes

    def stage(name: str, recipes: list[Recipe], n: int = scale.n_validation) -> pd.DataFrame:
        key = _key(model, behaviour, dataclasses.replace(scale, n_validation=n), "validation", recipes)
        rows = cached_rows(
            out / f"rows_{stem}_{name}.parquet",
            key,
            lambda: answer(
                model,
                behaviour,
                vectors,
                recipes,
                "validation",
                n,
                batch_size=scale.batch_size,
                progress=progress,
            ),
        )
        for recipe, group in rows.groupby("recipe", sort=False):
            answers.setdefault(str(recipe), tuple(group.sort_values("id")["response"]))
        return summarize(score(behaviour, rows), recipes, model.n_layers)

    first = baselines(behaviour) + coarse_grid(model.n_layers, tuple(vectors), quick=quick)
    summary = stage("coarse", first).assign(
        stage=lambda f: f["steered"].map({True: "coarse", False: "baseline"})
    )
    recipes = {r.name: r for r in first}
    used: set[str] = set()
    for round_no in range(1, 1 if quick else ROUNDS + 1):
        ranked = rank(summary).sort_values(["clean_rate", "target_rate"], ascending=False, kind="stable")
        seeds = [recipes[name] for name in ranked["recipe"] if name not in used][:TOP_K]
        used |= {seed.name for seed in seeds}
        extra: dict[str, tuple[str, str, Recipe]] = {}  # name -> (seed, change, recipe)
        for seed in seeds:
            for change, r in refinements(seed, behaviour.max_new_tokens, vectors[seed.source]).items():
                if r.name not in recipes and r.name not in extra:
                    extra[r.name] = (seed.name, change, r)
        if not extra:
            break
        name = "refine" if round_no == 1 else f"refine{round_no}"
        refined = stage(name, [r for _, _, r in extra.values()]).assign(
            stage=name, seed=[s for s, _, _ in extra.values()], change=[c for _, c, _ in extra.values()]
        )
        summary = pd.concat([summary, refined], ignore_index=True)
        recipes |= {r.name: r for _, _, r in extra.values()}
    if quick:
        return vectors, summary, recipes[choose(summary)["recipe"]], notes
    # Recipes that wrote the same answers are one finalist (e.g. a decay on prompt-only steering, which
    # never reaches a generated token): keep the first of each.
    first_of: dict[tuple[str, ...], str] = {}
    for name in rank(summary)["recipe"]:
        first_of.setdefault(answers[name], name)
    finalists = [recipes[name] for name in list(first_of.values())[:CONFIRM_K]]
    confirmed = stage("confirm", [Recipe(), *finalists], CONFIRM * scale.n_validation)
    summary = pd.concat([summary, confirmed.assign(stage="confirm")], ignore_index=True)
    return vectors, summary, recipes[choose(confirmed)["recipe"]], notes


def _vectors(
    model: Model, behaviour: Behaviour, scale: Scale, progress: bool
) -> tuple[dict[str, SteeringVector], list[str]]:
    """Every source's vector; the response source is left out, with a note, when the answers cannot make it."""
    build = functools.partial(build_vectors, model, behaviour, scale.n_train, batch_size=scale.batch_size)
    vectors = build(sources=("last", "mean"), progress=progress)
    try:
        vectors |= build(sources=("response",), progress=progress)
    except NoCompletionsError as e:
        return vectors, [f"{model.name} / {behaviour.name}: no response-token vector ({e})"]
    pairs = vectors["response"].provenance.get("completion_pairs")
    return vectors, [f"{model.name} / {behaviour.name}: response-token vector from {pairs} completion pairs"]


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
    scale: Scale,
    out: Path,
    *,
    quick: bool = False,
    progress: bool = False,
) -> BehaviourResult:
    """:func:`search` on validation, then the test settings of the chosen recipe."""
    behaviour = _budgeted(behaviour, scale)
    vectors, validation, chosen, notes = search(model, behaviour, scale, out, quick=quick, progress=progress)
    rows = _test_rows(model, behaviour, vectors, chosen, scale, out, progress)
    return BehaviourResult(model.name, behaviour, vectors, validation, chosen, rows, notes)


def _test_rows(
    model: Model,
    behaviour: Behaviour,
    vectors: dict[str, SteeringVector],
    chosen: Recipe,
    scale: Scale,
    out: Path,
    progress: bool,
) -> pd.DataFrame:
    """The test settings of ``chosen`` (rows cached in ``out``), scored, with a ``setting`` column."""
    settings = _test_recipes(behaviour, chosen)
    recipes = list(settings.values())
    rows = cached_rows(
        out / f"rows_{model.name}_{behaviour.name}_test.parquet",
        _key(model, behaviour, scale, "test", recipes),
        lambda: answer(
            model,
            behaviour,
            vectors,
            recipes,
            "test",
            scale.n_test,
            batch_size=scale.batch_size,
            progress=progress,
        ),
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
    alone = result.sweep[result.sweep["steered"] & (result.sweep["prompt"] == "plain")]
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


def _quick(scale: Scale, quick: bool | None) -> tuple[Scale, bool]:
    """The scale a run uses and whether it is quick (default: no more validation prompts than
    :meth:`Scale.quick`); a quick run is capped at :data:`QUICK_CAPS`."""
    quick = scale.is_quick if quick is None else quick
    if quick:
        scale = dataclasses.replace(scale, **{k: min(getattr(scale, k), v) for k, v in QUICK_CAPS.items()})
    return scale, quick


def _gemma() -> Model | None:
    try:
        return load_model("gemma3-270m")
    except ModelLoadError:
        return None


def frontier_study(
    model: Model,
    scale: Scale,
    out_dir: str | os.PathLike[str],
    *,
    behaviours: Sequence[str] | None = None,
    base_model: bool | None = None,
    quick: bool | None = None,
    progress: bool = False,
) -> StudyResult:
    """The quality frontier of every behaviour on ``model`` (and Italian on Gemma 3 270M with ``base_model``).

    ``quick`` (default: the scale has no more validation prompts than :meth:`Scale.quick`) runs the quick
    grid (the band at one strength, no refinements) on :data:`QUICK_BEHAVIOURS`, with the scale capped
    at :data:`QUICK_CAPS` and without the base model. Table columns: ``model, behaviour, target,
    setting, recipe, target_rate, clean_rate, degeneration, perplexity, ifeval_rate`` (``starts_json``
    for JSON) ``, n`` (test split; see :func:`_table`).
    The folder also holds ``sweep_validation.csv`` (every recipe), ``methods.csv`` (best rates per knob),
    ``sweep_refinements.csv`` (each refinement against its seed),
    ``chosen.json`` and one ``frontier_<model>_<behaviour>`` figure per behaviour.
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
    results = [run_behaviour(m, b, scale, out, quick=quick, progress=progress) for m, b in jobs]
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
    pd.concat([r.validation.assign(model=r.model, behaviour=r.behaviour.name) for r in results]).to_csv(
        out / "sweep_validation.csv", index=False
    )
    pd.concat([_methods(r) for r in results]).to_csv(out / "methods.csv", index=False)
    effects = [_refinement_effects(r) for r in results if "seed" in r.validation]
    if effects:
        pd.concat(effects).to_csv(out / "sweep_refinements.csv", index=False)
    chosen = [
        {"model": r.model, "behaviour": r.behaviour.name, "recipe": r.chosen.to_json()} for r in results
    ]
    (out / "chosen.json").write_text(json.dumps(chosen, indent=1) + "\n", encoding="utf-8")
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
    scale: Scale,
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
    presets, at :data:`QUICK_CAPS`, without the base model. Returns a "not run" line when no preset was
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
        vector = presets.vector(loaded, name, progress=progress)
        rows = _test_rows(loaded, behaviour, {recipe.source: vector}, recipe, scale, out, progress)
        table = _table(loaded.name, behaviour, rows)
        recipes = list(_test_recipes(behaviour, recipe).values())
        title = f"preset {name} on {loaded.name}: test settings ({behaviour.max_new_tokens} new tokens)"
        summary = summarize(rows, recipes, loaded.n_layers)
        figures += save_figure(
            plot_frontier(summary, title, recipe.name), out / f"frontier_{loaded.name}_{behaviour.name}"
        )
        recorded = preset.validation.get(loaded.name, "no validation record")
        notes.append(
            f"{loaded.name} / preset {name}: `{recipe.name}` (validation: {recorded}); "
            + _verdict(table.set_index("setting"))
        )
        tables.append(table)
        frames.append(rows.assign(model=loaded.name, behaviour=behaviour.name, preset=name))
    notes.append(f"recipes chosen by the frontier search ({presets.get(wanted[0]).chosen_by})")
    rows = pd.concat(frames, ignore_index=True)
    return StudyResult(
        name="presets", rows=rows, table=pd.concat(tables, ignore_index=True), figures=figures, notes=notes
    )
