"""The quality frontier study: which steering recipe lands a behaviour without breaking the model.

Per behaviour (:data:`workbench.behaviours.BEHAVIOURS`): :func:`workbench.studies.search.search` on the
validation split (a coarse grid, refinements, a confirmation round on prompts disjoint from the selection
prompts) chooses a recipe; the test split then compares unsteered, the instruction in the prompt (for
Italian also the fully Italian prompt), the chosen recipe, and the chosen recipe with the instruction.
With a rating judge (``judge``, Qwen2.5-Coder-1.5B-Instruct once fetched) the confirmation round's answers
are rated and the search chooses by the selection rule on the mean score; without one, on the text rules'
clean rate. Each chosen recipe that beats unsteered on that key in the confirmation round is recorded,
with its validation numbers, its rating and hashes, in ``frontier/presets.json`` (the layout of
:data:`workbench.presets.BUNDLED`); a recipe the judge did not rate fluent is recorded withdrawn
(:func:`workbench.presets.withheld`).
The frontier figure plots every validation recipe. A full-size run also steers Italian on the
multilingual Gemma 3 270M base model, when it is installed. Validation and test answers are kept in the
study folder as :func:`~workbench.runner.run_grid` parts keyed by the model's fingerprint
(:func:`~workbench.studies.search.grid_dir`), unscored, so a rerun resumes and rescoring needs no generation.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from workbench import evaluation, presets
from workbench.behaviours import BEHAVIOURS, Behaviour
from workbench.errors import InvalidArgumentError, ModelLoadError
from workbench.evaluation.rating_judge import RatingJudge
from workbench.evaluation.reference import REFERENCE_SPEC
from workbench.evaluation.selection import selection_key
from workbench.files import atomic_text, utc_now, write_frame
from workbench.models import Model, load_model
from workbench.plots import plot_frontier, save_figure
from workbench.recipes import Recipe, rank
from workbench.record import read_record
from workbench.size import Size
from workbench.studies.compare import budgeted, gemma, test_rows, test_table, verdict
from workbench.studies.registry import Study
from workbench.studies.result import StudyResult
from workbench.studies.search import Plan, search
from workbench.vectors import SteeringVector

__all__ = [
    "LARGE_BEHAVIOURS",
    "QUICK_BEHAVIOURS",
    "STUDY",
    "BehaviourResult",
    "frontier_study",
    "rating_judge",
    "run_behaviour",
]

#: Behaviours of a quick run (a smoke run, not a result); the full-size search runs every behaviour.
QUICK_BEHAVIOURS = ("italian",)
#: Behaviours of a large model's search (as wide as :meth:`Plan.reduced`).
LARGE_BEHAVIOURS = ("json", "italian")


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


def rating_judge(model: Model, spec: str | None, out: Path) -> RatingJudge | None:
    """The rating judge ``spec`` (bfloat16 on ``model``'s device; ``model`` itself when it is ``spec``), its
    ratings cached under ``out``; None when ``spec`` is None or does not load offline (not fetched)."""
    if spec is None:
        return None
    try:
        loaded = model if spec == model.name else load_model(spec, device=model.device, dtype="bfloat16")
    except ModelLoadError:
        return None
    return RatingJudge(loaded, cache=out / f"ratings-{loaded.fingerprint[:12]}.parquet")


def run_behaviour(
    model: Model,
    behaviour: Behaviour,
    size: Size,
    out: Path,
    *,
    plan: Plan = Plan(),
    judge: RatingJudge | None = None,
    progress: bool = False,
) -> BehaviourResult:
    """:func:`search` (as wide as ``plan``, rated by ``judge``) on validation, then the test settings of the
    chosen recipe."""
    behaviour = budgeted(behaviour, size)
    vectors, validation, chosen, notes = search(
        model, behaviour, size, out, plan=plan, judge=judge, progress=progress
    )
    rows = test_rows(model, behaviour, vectors, chosen, size, out, progress)
    return BehaviourResult(
        model.name, model.weights_hash, size.n_train, behaviour, vectors, validation, chosen, rows, notes
    )


def _methods(result: BehaviourResult) -> pd.DataFrame:
    """Best validation clean and target rates by each method knob (steering alone)."""
    alone = rank(result.sweep)  # steering alone
    frames = []
    for knob in ("source", "span", "mode", "positions", "decay_tokens", "norm_preserving", "unit"):
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


def _final(result: BehaviourResult) -> pd.DataFrame:
    """The round the recipe was chosen on (the confirmation round; a quick run's coarse grid), by recipe."""
    return (result.confirmed if len(result.confirmed) else result.sweep).set_index("recipe")


def _rating(v: pd.Series) -> dict[str, object] | None:
    """The judge's rating of a recipe's validation answers (its row of :func:`_final`), None if unrated."""
    if "judge" not in v or pd.isna(v["judge"]):
        return None
    means = ("mean_concept", "mean_relevance", "mean_fluency", "mean_score")
    return {
        "judge": v["judge"],
        "n": int(v["n"]),
        "answers": "the round's answers on the validation prompts above",
        **{k: round(float(v[k]), 4) for k in means},
    }


def _landed(results: Sequence[BehaviourResult]) -> dict[str, presets.Preset]:
    """One preset per behaviour, with the chosen recipe of each model where it beats unsteered in its final
    validation round (the confirmation round, on prompts disjoint from the selection ones) on the selection
    key (mean score where the judge rated, else clean rate); shipped or withdrawn by its rating
    (:meth:`~workbench.presets.Preset.add`)."""
    found: dict[str, presets.Preset] = {}
    for r in results:
        rates = _final(r)
        key = selection_key(rates)
        v, unsteered = rates.loc[r.chosen.name], rates.loc[Recipe().name]
        if not v[key] > unsteered[key]:
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
        found[name] = old.add(r.model, r.chosen, validation, _rating(v))
    return found


def _header(results: Sequence[BehaviourResult], run: Path, quick: bool) -> dict[str, object]:
    """The presets document's provenance: when, how chosen, the models' weights and the run record."""
    record = read_record(run)
    configuration = {k: record[k] for k in ("model", "size") if record.get(k)} or None
    digest = json.dumps(configuration, sort_keys=True, default=str).encode()
    return {
        "provenance": f"workbench study frontier ({'quick smoke run' if quick else 'full search'}) in {run}",
        "created": utc_now(),
        "selection": "the frontier study's choice by the selection rule in the confirmation round (mean "
        "score where the judge rated, else clean rate; then target rate), kept where it beats unsteered there "
        "on that key; shipped where the judge rated it fluent",
        "scorer_version": evaluation.SCORER_VERSION,
        "run_manifest_hash": hashlib.sha256(digest).hexdigest() if configuration else None,
        "models": {r.model: {"weights_hash": r.weights_hash} for r in results},
    }


def _notes(result: BehaviourResult) -> list[str]:
    table = test_table(result.model, result.behaviour, result.test_rows).set_index("setting")
    v = _final(result).loc[result.chosen.name]
    rating = _rating(v)
    rated = ""
    if rating is not None:
        why = presets.withheld(rating)
        rated = (
            f"; {rating['judge']}: mean score {rating['mean_score']:.2f}, fluency "
            f"{rating['mean_fluency']:.2f}, relevance {rating['mean_relevance']:.2f}"
            + (f", withdrawn: {why}" if why else "")
        )
    return [
        *result.notes,
        f"{result.model} / {result.behaviour.name}: chosen `{result.chosen.name}` ({v['n']} validation "
        f"prompts: clean {v['clean_rate']:.2f}, target {v['target_rate']:.2f}, degeneration "
        f"{v['degeneration']:.2f}{rated}); " + verdict(table),
    ]


def frontier_study(
    model: Model,
    size: Size,
    out_dir: str | os.PathLike[str],
    *,
    behaviours: tuple[str, ...] = (),
    base_model: bool = True,
    plan: Plan = Plan(),
    judge: str | None = None,
    progress: bool = False,
) -> StudyResult:
    """The quality frontier of ``behaviours`` (default: every one) on ``model`` (and Italian on Gemma 3 270M
    with ``base_model``), each searched as wide as ``plan``; a quick ``size`` runs the quick grid (the band at
    one strength, no refinements) on :data:`QUICK_BEHAVIOURS`, without the base model. ``judge``: the rating
    judge's model spec (:func:`rating_judge`; :data:`STUDY` passes Qwen2.5-Coder-1.5B-Instruct, used where
    it is fetched); None or not fetched: the text rules choose, and ``presets.json`` withdraws every recipe
    (unrated).

    Table columns: ``model, behaviour, target, setting, recipe, target_rate, clean_rate, degeneration,
    perplexity, ifeval_rate`` (``starts_json`` for JSON) ``, n`` (test split; see
    :func:`~workbench.studies.compare.test_table`). The folder also holds ``sweep_validation.csv`` (every
    recipe), ``methods.csv`` (best rates per knob), ``sweep_refinements.csv`` (each refinement against its
    seed), ``chosen.json``, ``presets.json`` (:func:`_landed`: the layout of :data:`workbench.presets.BUNDLED`;
    copy it there to ship the recipes) and one ``frontier_<model>_<behaviour>`` figure per behaviour.
    """
    names = list(behaviours or (QUICK_BEHAVIOURS if size.is_quick else BEHAVIOURS))
    unknown = [n for n in names if n not in BEHAVIOURS]
    if unknown:
        raise InvalidArgumentError(f"unknown behaviours {unknown}: use some of {', '.join(BEHAVIOURS)}")
    out = Path(out_dir) / "frontier"
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(model, BEHAVIOURS[n]) for n in names]
    rater = rating_judge(model, judge, out)
    if rater is not None:
        notes = [f"judge: {rater.name} rated the round each recipe was chosen on"]
    else:
        why = (
            "none was given"
            if judge is None
            else f"{judge} is not fetched (`workbench models fetch {judge}`)"
        )
        notes = [
            f"no judge ({why}): chosen by the text rules' clean rate; presets.json withdraws every recipe"
        ]
    if base_model and not size.is_quick:
        base = gemma()
        if base is None:
            notes.append("Gemma 3 270M is not installed: its Italian frontier was not run")
        else:
            jobs.append((base, BEHAVIOURS["italian"]))
    results = [run_behaviour(m, b, size, out, plan=plan, judge=rater, progress=progress) for m, b in jobs]
    figures = []
    for r in results:
        title = (
            f"{r.behaviour.name} on {r.model}: validation recipes ({r.behaviour.max_new_tokens} new tokens)"
        )
        figures += save_figure(
            plot_frontier(r.sweep, title, r.chosen.name), out / f"frontier_{r.model}_{r.behaviour.name}"
        )
        notes += _notes(r)
    table = pd.concat([test_table(r.model, r.behaviour, r.test_rows) for r in results], ignore_index=True)
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
    record = presets.document(_landed(results), _header(results, Path(out_dir), size.is_quick))
    atomic_text(out / "presets.json", json.dumps(record, indent=1, ensure_ascii=False) + "\n", "presets")
    rows = pd.concat([r.test_rows.assign(model=r.model, behaviour=r.behaviour.name) for r in results])
    return StudyResult(
        name="frontier", rows=rows.reset_index(drop=True), table=table, figures=figures, notes=notes
    )


STUDY = Study(
    "frontier",
    "Quality frontier: steering that lands without breaking the model",
    functools.partial(frontier_study, judge=REFERENCE_SPEC),
    sizes={"quick": Size.quick(), "full": Size.frontier(), "large": Size.large()},
    report=("large",),
    order=80,
    options={"large": {"behaviours": LARGE_BEHAVIOURS, "base_model": False, "plan": Plan.reduced()}},
)
