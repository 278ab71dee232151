"""The frontier search on the validation split: which steering recipe lands a behaviour without breaking
the model (run by :func:`workbench.studies.frontier.frontier_study`).

Per behaviour (:data:`workbench.behaviours.BEHAVIOURS`):

1. a coarse grid: every vector source (last prompt token, mean over prompt tokens, mean over the generated
   tokens of contrastive completions) × one layer / a band of layers / all layers × three per-layer
   strengths (``add`` in residual-norm units, every position);
2. :data:`ROUNDS` rounds of refinements of the :data:`TOP_K` recipes so far with the best clean rate
   (ties: the higher target rate, which leaves the most for a refinement to turn clean): positions (``prompt``,
   ``response``, ``generated``), a strength decaying linearly to zero, the norm-preserving variant,
   ``set_projection`` at the same layers, half and 1.5 times the strength, and the strength in
   ``diff_norm`` units (same mean added norm, another profile over the layers);
3. a confirmation round: the :data:`CONFIRM_K` best recipes so far (:func:`workbench.recipes.rank`;
   recipes that wrote the same validation answers count once) and the unsteered baseline run on
   :data:`CONFIRM` times as many *other* validation prompts, disjoint from the ones the finalists were
   selected on (ten prompts measure a rate only to about ±0.15, and a grid of ~70 recipes picks its
   luckiest: only fresh prompts give it an independent check).

The confirmed recipe that the one selection rule prefers is chosen (:func:`workbench.recipes.choose_clean`
on the confirmation round: :mod:`~workbench.evaluation.selection`): with a rating judge, the confirmation
round's answers are rated (:func:`rated_means`) and the best mean score wins, then the target rate;
without one, the best clean rate (on target and not degenerate by the text rules), then the target rate.
Steered answers are kept as :func:`~workbench.runner.run_grid` parts in the study folder (:func:`grid_dir`,
keyed by the model's fingerprint) and unsteered ones in the shared completions cache, unscored, so a rerun
resumes and rescoring needs no generation; each stage's answers are also written as
``rows_<model>_<behaviour>_<stage>`` (unscored) for auditing the choice.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from workbench.behaviours import SOURCES, Behaviour, NoCompletionsError, build_vectors
from workbench.evaluation.rating import RATINGS, rate
from workbench.evaluation.rating_judge import RatingJudge
from workbench.files import write_frame
from workbench.models import Model
from workbench.recipes import Recipe, answer, choose_clean, rank, score, summarize_recipes
from workbench.size import Size
from workbench.vectors import SteeringVector

__all__ = [
    "CONFIRM",
    "CONFIRM_K",
    "ROUNDS",
    "TOP_K",
    "Plan",
    "coarse_grid",
    "grid_dir",
    "prompt_recipes",
    "rated_means",
    "refinements",
    "search",
    "spans",
]

#: Per-layer ``add`` strengths (residual-norm units) of the coarse grid, by span.
STRENGTHS = {"one layer": (0.15, 0.3, 0.6), "band": (0.03, 0.06, 0.12), "all layers": (0.008, 0.016, 0.032)}
#: Depth fractions of the single layer and of the band's first and last layers.
ONE_LAYER, BAND = 0.3, (0.2, 0.45)
#: Recipes that seed each round of refinements, and how many rounds.
TOP_K, ROUNDS = 2, 2
#: Finalists of the confirmation round, and how many times the validation prompts they run on.
CONFIRM_K, CONFIRM = 4, 3


@dataclasses.dataclass(frozen=True)
class Plan:
    """How wide a search runs: the vector sources of the coarse grid, the refinement rounds and the
    recipes that seed each, the finalists and how many times the selection prompts they are confirmed on."""

    sources: tuple[str, ...] = SOURCES
    rounds: int = ROUNDS
    top_k: int = TOP_K
    confirm_k: int = CONFIRM_K
    confirm: int = CONFIRM

    @classmethod
    def reduced(cls) -> Plan:
        """A large model's search: last-prompt-token and prompt-mean vectors only (no contrastive completions to
        generate), one round of refinements of the best recipe, two finalists confirmed on twice the prompts."""
        return cls(sources=("last_prompt", "prompt"), rounds=1, top_k=1, confirm_k=2, confirm=2)


def spans(n_layers: int) -> dict[str, tuple[int, ...]]:
    """The layers steered at once: one layer, a band in the lower middle, or all layers."""
    last = n_layers - 1
    lo, hi = (round(f * last) for f in BAND)
    return {
        "one layer": (round(ONE_LAYER * last),),
        "band": tuple(range(lo, max(hi, lo + 1) + 1)),
        "all layers": tuple(range(n_layers)),
    }


def prompt_recipes(behaviour: Behaviour) -> list[Recipe]:
    """Unsteered, the instruction in the prompt and, for Italian, the fully Italian prompt."""
    kinds = ["plain", "instruction"] + (["native"] if behaviour.instruction_variant else [])
    return [Recipe(prompt=kind) for kind in kinds]


def coarse_grid(n_layers: int, sources: Sequence[str] = SOURCES, *, quick: bool = False) -> list[Recipe]:
    """Every source × span × strength (``add``, all positions); ``quick``: the band at its larger strength.

    Needs at least two layers (so that the band differs from the single layer).
    """
    chosen = {"band": spans(n_layers)["band"]} if quick else spans(n_layers)
    return [
        Recipe(source, layers, coef=strength, unit="residual_norm")
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
    vary["set_projection"] = {"mode": "set_projection", "coef": 1.0, "unit": "diff_norm"}
    vary |= {f"strength x{f:g}": {"coef": round(recipe.coef * f, 6)} for f in (0.5, 1.5)}
    vary["diff_norm units"] = {"unit": "diff_norm", "coef": round(recipe.coef * per_diff, 3)}
    return {label: dataclasses.replace(recipe, **change) for label, change in vary.items()}  # type: ignore[arg-type]


def grid_dir(out: Path, model: Model, behaviour: Behaviour) -> Path:
    """The :func:`~workbench.runner.run_grid` folder of a behaviour's steered answers on ``model``: one per
    model fingerprint and token budget (a grid refuses other settings), shared by every stage and split
    (its rows are keyed by prompt and intervention content, so a changed vector is answered afresh)."""
    tag = f"{model.fingerprint[:12]}-{behaviour.max_new_tokens}"
    return out / "grids" / f"{model.name}_{behaviour.name}-{tag}"


def rated_means(behaviour: Behaviour, rows: pd.DataFrame, judge: RatingJudge) -> pd.DataFrame:
    """Per recipe of ``rows`` (validation answers of :func:`~workbench.recipes.answer`): the mean of each
    rating and of AxBench's score (``mean_concept, mean_relevance, mean_fluency, mean_score``;
    :func:`~workbench.evaluation.rating.rate`, asked the prompt each answer was given) and ``judge``."""
    items = {item.id: item for item in behaviour.items("validation").items}
    ratings = rate(
        rows["prompt"].tolist(),
        rows["response"].tolist(),
        target=behaviour.target,
        items=[items[i] for i in rows["id"]],
        judge=judge,
    )
    columns = [*RATINGS, "score"]
    means = ratings[columns].astype(float).groupby(rows["recipe"].to_numpy(), sort=False).mean()
    return means.add_prefix("mean_").assign(judge=judge.name)


def search(
    model: Model,
    behaviour: Behaviour,
    size: Size,
    out: Path,
    *,
    plan: Plan = Plan(),
    judge: RatingJudge | None = None,
    progress: bool = False,
) -> tuple[dict[str, SteeringVector], pd.DataFrame, Recipe, list[str]]:
    """Build the vectors, run the coarse grid, the refinements and the confirmation round on validation
    (as wide as ``plan``); choose in the confirmation round by the selection rule, on the ratings of
    ``judge`` (None: on the text rules' clean rate). A quick ``size`` runs the quick coarse grid only and
    chooses on it.

    Returns the vectors, the validation summary (column ``stage``: baseline, coarse, refine, refine2,
    and one row per finalist with stage ``confirm``, whose rates are on the larger validation set; with a
    judge, the stage chosen on also has :func:`rated_means`' columns), the chosen recipe and notes on how
    the vectors were built.
    """
    quick = size.is_quick
    vectors, notes = _vectors(model, behaviour, size, plan.sources, progress)

    answers: dict[str, tuple[str, ...]] = {}  # recipe -> its validation answers, to spot equivalent recipes

    selection = {item.id for item in behaviour.items("validation", size.n_validation).items}

    def stage(
        name: str,
        recipes: list[Recipe],
        n: int = size.n_validation,
        fresh: bool = False,
        chosen: bool = False,
    ) -> pd.DataFrame:
        """Validation rows of the first ``n`` prompts; ``fresh``: only those after the selection prompts;
        ``chosen``: the stage the choice is made on, rated by the judge."""
        rows = answer(
            model,
            behaviour,
            vectors,
            recipes,
            "validation",
            n,
            batch_size=size.batch_size,
            out_dir=grid_dir(out, model, behaviour),
            progress=progress,
        )
        write_frame(rows, out / f"rows_{model.name}_{behaviour.name}_{name}.parquet", f"{name} answers")
        if fresh:
            rows = rows[~rows["id"].isin(selection)].reset_index(drop=True)
        for recipe, group in rows.groupby("recipe", sort=False):
            answers.setdefault(str(recipe), tuple(group.sort_values("id")["response"]))
        summary = summarize_recipes(score(behaviour, rows), recipes, model.n_layers)
        if judge is None or not chosen:
            return summary
        return summary.merge(rated_means(behaviour, rows, judge), left_on="recipe", right_index=True)

    first = prompt_recipes(behaviour) + coarse_grid(model.n_layers, tuple(vectors), quick=quick)
    summary = stage("coarse", first, chosen=quick).assign(
        stage=lambda f: f["steered"].map({True: "coarse", False: "baseline"})
    )
    recipes = {r.name: r for r in first}
    if not quick:
        summary = _refine(summary, recipes, plan, vectors, behaviour.max_new_tokens, stage)
    if quick:
        return vectors, summary, recipes[choose_clean(summary)["recipe"]], notes
    finalists = [recipes[name] for name in _finalists(summary, answers, plan.confirm_k)]
    n_confirm = (1 + plan.confirm) * size.n_validation
    confirmed = stage("confirm", [Recipe(), *finalists], n_confirm, fresh=True, chosen=True)
    summary = pd.concat([summary, confirmed.assign(stage="confirm")], ignore_index=True)
    return vectors, summary, recipes[choose_clean(confirmed)["recipe"]], notes


def _refine(
    summary: pd.DataFrame,
    recipes: dict[str, Recipe],
    plan: Plan,
    vectors: dict[str, SteeringVector],
    max_new_tokens: int,
    stage: Callable[[str, list[Recipe]], pd.DataFrame],
) -> pd.DataFrame:
    """``summary`` with up to ``plan.rounds`` rounds of refinements of the best ``plan.top_k`` recipes not yet
    refined, each answered by ``stage`` (column ``stage``: refine, refine2, ...); ``recipes`` gains them."""
    used: set[str] = set()
    for round_no in range(1, plan.rounds + 1):
        seeds = [recipes[name] for name in rank(summary)["recipe"] if name not in used][: plan.top_k]
        used |= {seed.name for seed in seeds}
        extra: dict[str, tuple[str, str, Recipe]] = {}  # name -> (seed, change, recipe)
        for seed in seeds:
            for change, r in refinements(seed, max_new_tokens, vectors[seed.source]).items():
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
    return summary


def _finalists(summary: pd.DataFrame, answers: dict[str, tuple[str, ...]], k: int) -> list[str]:
    """The ``k`` best recipes by :func:`~workbench.recipes.rank`; recipes that wrote the same
    answers are one finalist (e.g. a decay on prompt-only steering, which never reaches a generated token):
    the first of each."""
    first_of: dict[tuple[str, ...], str] = {}
    for name in rank(summary)["recipe"]:
        first_of.setdefault(answers[name], name)
    return list(first_of.values())[:k]


def _vectors(
    model: Model, behaviour: Behaviour, size: Size, sources: Sequence[str], progress: bool
) -> tuple[dict[str, SteeringVector], list[str]]:
    """The vector of each of ``sources``; the generated-token source is left out, with a note, when the answers
    cannot make it."""
    build = functools.partial(build_vectors, model, behaviour, size.n_train, batch_size=size.batch_size)
    vectors = build(sources=tuple(s for s in sources if s != "generated"), progress=progress)
    if "generated" not in sources:
        return vectors, []
    try:
        vectors |= build(sources=("generated",), progress=progress)
    except NoCompletionsError as e:
        return vectors, [f"{model.name} / {behaviour.name}: no generated-token vector ({e})"]
    pairs = vectors["generated"].provenance.get("completion_pairs")
    return vectors, [f"{model.name} / {behaviour.name}: generated-token vector from {pairs} completion pairs"]
