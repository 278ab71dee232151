"""The quality frontier: steering recipes scored for hitting a behaviour *and* for staying fluent.

A :class:`Behaviour` says what "on target" means (an IFEval check, or real Italian: language ID of the
whole text and of every identifiable sentence) and how many tokens to generate. A :class:`Recipe` is one
way to steer: where the vector comes from (:data:`SOURCES`: the last prompt token, the mean over the
prompt's tokens, or the mean over the *response* tokens of contrastive completions), which layers get it,
the mode, a per-layer strength, the positions, a schedule over generated tokens and the norm-preserving
variant, plus which prompt it answers (plain, with the instruction, or the native Italian one).

:func:`run_recipes` generates every (recipe, prompt) row in one batched call and scores each response
with the definitions in :mod:`workbench.evaluation` (targets in :mod:`~workbench.evaluation.targets`,
degeneration in :mod:`~workbench.evaluation.fluency`): ``on_target``, ``degenerate``, ``perplexity`` under
the unsteered model and ``clean`` (on target and not degenerate). Scoring (:func:`score`) is separate
from generating (:func:`answer`), so cached answers are rescored. :func:`summarize` gives one row per recipe,
:func:`pareto_front` the non-dominated ones, :func:`choose` the steered recipe with the best clean rate
and :func:`plot_frontier` the figure.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from workbench.activations import Activations, collect, collect_responses
from workbench.datasets import ContrastiveSet, Item, load
from workbench.errors import InvalidArgumentError
from workbench.evaluation.fluency import MAX_REPEAT, degenerate_answer
from workbench.evaluation.perplexity import perplexity
from workbench.evaluation.targets import (
    MIN_ITALIAN_SHARE,
    follows,
    is_real_italian,
    on_target,
    starts_json,
)
from workbench.generation import generate
from workbench.models import Model, cache_dir
from workbench.positions import check_positions
from workbench.steering import Intervention
from workbench.vectors import LayerStats, SteeringVector

__all__ = [
    "BEHAVIOURS",
    "MAX_REPEAT",
    "MIN_ITALIAN_SHARE",
    "MIN_PAIRS",
    "PROMPTS",
    "SOURCES",
    "Behaviour",
    "NoCompletionsError",
    "Recipe",
    "answer",
    "behaviour",
    "build_vectors",
    "cached_rows",
    "choose",
    "complete",
    "degenerate_answer",
    "follows",
    "is_json_answer",
    "is_real_italian",
    "pareto_front",
    "plot_frontier",
    "rank",
    "run_recipes",
    "score",
    "starts_json",
    "summarize",
]

#: Where a vector's activations come from.
SOURCES = ("last", "mean", "response")
#: Which prompt a recipe answers: the plain query, the query with the instruction, or the native prompt
#: (the fully Italian query for ``italian``; the instructed prompt for the others).
PROMPTS = ("plain", "instruction", "native")
#: Deprecated name of :func:`~workbench.evaluation.targets.starts_json` (which is not JSON compliance).
is_json_answer = starts_json
#: Fewest filtered completion pairs for a response vector; below it every pair is used.
MIN_PAIRS = 4


@dataclass(frozen=True)
class Behaviour:
    """A behaviour to steer towards: its bundled dataset, its token budget and what counts as on target.

    ``target``: one of :data:`~workbench.evaluation.targets.TARGETS` (``ifeval``: the dataset's IFEval
    check; ``json_format_strict``, ``starts_json``, ``italian``), scored by
    :func:`~workbench.evaluation.targets.on_target`. ``variant`` is the ``italian`` dataset's positive prompt used for the vectors and the native prompt
    (``it``); ``instruction_variant`` the one used as "instruction in the prompt" (``en_answer_it``).
    """

    name: str
    dataset: str
    max_new_tokens: int
    target: str = "ifeval"
    variant: str | None = None
    instruction_variant: str | None = None

    def items(self, split: str, n: int | None = None, *, variant: str | None = None) -> ContrastiveSet:
        """The first ``n`` items of ``split`` (positive prompts of ``variant``, default :attr:`variant`)."""
        return load(self.dataset, split, variant=variant or self.variant).head(n)

    def prompts(self, split: str, n: int | None, kind: str) -> list[str]:
        """The prompts of one :data:`PROMPTS` kind, in item order."""
        if kind not in PROMPTS:
            raise InvalidArgumentError(f"unknown prompt kind {kind!r}: use one of {', '.join(PROMPTS)}")
        if kind == "plain":
            return self.items(split, n).negative
        if kind == "instruction" and self.instruction_variant is not None:
            return self.items(split, n, variant=self.instruction_variant).positive
        return self.items(split, n).positive

    def on_target(self, item: Item, response: str) -> bool:
        """Whether ``response`` shows the behaviour, by :attr:`target`."""
        return on_target(self.target, item, response)


#: The behaviours of the frontier study; bullets get 64 tokens so that three can fit.
BEHAVIOURS: dict[str, Behaviour] = {
    b.name: b
    for b in (
        Behaviour("json", "json_format", 48, target="json_format_strict"),
        Behaviour("bullets", "bullet_lists", 64),
        Behaviour("one_sentence", "one_sentence", 40),
        Behaviour("italian", "italian", 40, "italian", variant="it", instruction_variant="en_answer_it"),
    )
}


def behaviour(name: str) -> Behaviour:
    """The behaviour called ``name``, or a one-line error listing them."""
    if name not in BEHAVIOURS:
        raise InvalidArgumentError(f"unknown behaviour {name!r}: use one of {', '.join(BEHAVIOURS)}")
    return BEHAVIOURS[name]


# ---- contrastive completions and vectors ---------------------------------------------------------------


def _completion_cache(model: Model, max_new_tokens: int, chat: bool) -> Path:
    return cache_dir() / "completions" / f"{model.weights_hash[:16]}-{max_new_tokens}-{int(chat)}.json"


def complete(
    model: Model, prompts: Sequence[str], max_new_tokens: int, *, batch_size: int = 32, progress: bool = False
) -> list[str]:
    """Unsteered greedy answers to ``prompts``, cached on disk per model and budget (generated once)."""
    path = _completion_cache(model, max_new_tokens, model.is_chat)
    known: dict[str, str] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    todo = sorted({p for p in prompts if p not in known})
    if todo:
        answers = generate(
            model, todo, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
        )
        known |= dict(zip(todo, answers, strict=True))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, ensure_ascii=False, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    return [known[p] for p in prompts]


def _with_norms(
    vector: SteeringVector, norms: dict[int, float], source: str, **extra: object
) -> SteeringVector:
    """``vector`` with the reference residual norms, so ``scale="residual_norm"`` means the same for every source."""
    stats = {b: dataclasses.replace(s, resid_norm=norms[b]) for b, s in vector.stats.items()}
    provenance = {**vector.provenance, "source": source, "resid_norm_from": "last prompt token", **extra}
    return SteeringVector(vector.directions, vector.layers, stats, provenance)


class NoCompletionsError(InvalidArgumentError):
    """The model's answers give too few contrastive completion pairs for a response-token vector."""


def _mean_norms(*acts: Activations) -> Float[Tensor, " layer"]:
    """Mean residual norm per layer over every row of ``acts``."""
    return torch.linalg.vector_norm(torch.cat([a.tensor for a in acts]).double(), dim=-1).mean(0)


def _response_acts(
    model: Model, data: ContrastiveSet, behaviour: Behaviour, batch_size: int, progress: bool
) -> tuple[Activations, Activations, list[int]]:
    """Mean residual over the response tokens of the model's own answers with and without the behaviour.

    Both answers follow the same plain prompt. The pairs kept are those whose positive answer is on
    target, whose negative answer is not, and where neither is degenerate; with fewer than
    :data:`MIN_PAIRS` such pairs (a model that cannot do the behaviour), every pair with two non-empty
    answers. Also returns the indices kept.
    """
    budget = behaviour.max_new_tokens
    pos_answers = complete(model, data.positive, budget, batch_size=batch_size, progress=progress)
    neg_answers = complete(model, data.negative, budget, batch_size=batch_size, progress=progress)
    pairs = list(zip(data.items, pos_answers, neg_answers, strict=True))
    keep = [
        i
        for i, (item, p, q) in enumerate(pairs)
        if behaviour.on_target(item, p) and not behaviour.on_target(item, q)
        if not degenerate_answer(p) and not degenerate_answer(q)
    ]
    if len(keep) < MIN_PAIRS:
        keep = [i for i, (_, p, q) in enumerate(pairs) if p.strip() and q.strip()]
    if len(keep) < 2:
        raise NoCompletionsError(
            f"only {len(keep)} of {len(data)} train prompts got a non-empty answer both with and without "
            "the behaviour, too few for a response vector: use more train prompts or another source"
        )
    prompts = [data.negative[i] for i in keep]
    pos = collect_responses(model, prompts, [pos_answers[i] for i in keep], batch_size=batch_size)
    neg = collect_responses(model, prompts, [neg_answers[i] for i in keep], batch_size=batch_size)
    return pos, neg, keep


def build_vectors(
    model: Model,
    behaviour: Behaviour,
    n_train: int,
    *,
    sources: Sequence[str] = SOURCES,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, SteeringVector]:
    """Diff-in-means vectors at every layer from the first ``n_train`` train pairs, one per source.

    ``residual_norm`` of every vector is the mean residual norm at the last prompt token of the train
    prompts (both sets), the same reference for every source.
    """
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise InvalidArgumentError(f"unknown or no sources {unknown}: use some of {', '.join(SOURCES)}")
    data = behaviour.items("train", n_train)
    last_pos = collect(model, data.positive, batch_size=batch_size)
    last_neg = collect(model, data.negative, batch_size=batch_size)
    tag = f"{data.name}:{data.variant}" if data.variant else data.name
    norms = dict(zip(last_pos.layers, _mean_norms(last_pos, last_neg).tolist(), strict=True))
    vectors = {}
    for source in sources:
        extra: dict[str, object] = {}
        if source == "last":
            pos, neg = last_pos, last_neg
        elif source == "mean":
            pos = collect(model, data.positive, position="mean", batch_size=batch_size)
            neg = collect(model, data.negative, position="mean", batch_size=batch_size)
        else:
            pos, neg, kept = _response_acts(model, data, behaviour, batch_size, progress)
            extra["completion_pairs"] = len(kept)
        vector = SteeringVector.from_activations(pos, neg, dataset=tag, dataset_hash=data.hash)
        vectors[source] = _with_norms(vector, norms, source, **extra)
    return vectors


# ---- recipes ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """One candidate configuration. No ``layers``: no steering (a baseline).

    ``strength``: for ``add``, the amount added at *each* layer in units of ``scale`` (``residual_norm``:
    the layer's mean residual norm at the last prompt token; ``diff_norm``: the layer's raw
    mean-difference norm), so one knob means the same at every layer; for ``set_projection``, the target
    projection as ``neg + strength · (pos − neg)`` of the two sets' mean projections (1: the positive
    mean). ``decay_tokens`` > 0 fades ``add`` linearly to zero over that many generated tokens.
    """

    source: str = "last"
    layers: tuple[int, ...] = ()
    mode: str = "add"
    strength: float = 0.0
    scale: str = "residual_norm"
    positions: str = "all"
    decay_tokens: int = 0
    norm_preserving: bool = False
    prompt: str = "plain"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise InvalidArgumentError(f"unknown source {self.source!r}: use one of {', '.join(SOURCES)}")
        if self.mode not in ("add", "set_projection"):
            raise InvalidArgumentError(f"a recipe's mode is 'add' or 'set_projection', not {self.mode!r}")
        if self.prompt not in PROMPTS:
            raise InvalidArgumentError(
                f"unknown prompt kind {self.prompt!r}: use one of {', '.join(PROMPTS)}"
            )
        if self.scale not in ("residual_norm", "diff_norm"):
            raise InvalidArgumentError(
                f"a recipe's scale is 'residual_norm' or 'diff_norm', not {self.scale!r}"
            )
        check_positions(self.positions)
        object.__setattr__(self, "layers", tuple(int(b) for b in self.layers))

    @property
    def steered(self) -> bool:
        return bool(self.layers)

    @property
    def name(self) -> str:
        """A short unique label, e.g. ``response L6-13 add 0.08rn all`` or ``instruction``."""
        if not self.steered:
            return self.prompt
        if len(self.layers) == 1:
            where = f"L{self.layers[0]}"
        elif self.layers == tuple(range(self.layers[0], self.layers[-1] + 1)):
            where = f"L{self.layers[0]}-{self.layers[-1]}"
        else:
            where = "L" + ",".join(map(str, self.layers))
        unit = {"residual_norm": "rn", "diff_norm": "dn"}[self.scale] if self.mode == "add" else "sep"
        parts = [self.source, where, self.mode, f"{self.strength:g}{unit}", self.positions]
        parts += [f"decay{self.decay_tokens}"] * bool(self.decay_tokens) + ["np"] * self.norm_preserving
        return " ".join(parts) + ("" if self.prompt == "plain" else f" +{self.prompt}")

    def span(self, n_layers: int) -> str:
        """``none``, ``one layer``, ``band`` or ``all layers``."""
        if not self.steered:
            return "none"
        if len(self.layers) == 1:
            return "one layer"
        return "all layers" if len(self.layers) == n_layers else "band"

    def interventions(self, vector: SteeringVector) -> list[Intervention]:
        """One :class:`Intervention` per layer, with the strength resolved to residual units."""
        return [self._at(vector, layer) for layer in self.layers]

    def _at(self, vector: SteeringVector, layer: int) -> Intervention:
        stats: LayerStats = vector.stats[layer]
        if self.mode == "set_projection":
            if stats.pos_mean_proj is None or stats.neg_mean_proj is None:
                raise InvalidArgumentError(
                    f"set_projection needs the sets' projections at layer {layer}; build the vector from activations"
                )
            coef = stats.neg_mean_proj + self.strength * (stats.pos_mean_proj - stats.neg_mean_proj)
        else:
            unit = stats.resid_norm if self.scale == "residual_norm" else stats.diff_norm
            if unit is None:
                raise InvalidArgumentError(
                    f"the vector records no residual norm at layer {layer}: use diff_norm"
                )
            coef = self.strength * unit
        return Intervention(
            vector,
            layer,
            self.mode,
            coef,
            self.positions,
            decay_tokens=self.decay_tokens,
            norm_preserving=self.norm_preserving,
        )

    def to_json(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "layers": list(self.layers)}

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> Recipe:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(obj) - fields)
        if unknown:
            raise InvalidArgumentError(f"unknown recipe fields {unknown}: a recipe has {sorted(fields)}")
        return cls(**{**obj, "layers": tuple(obj.get("layers", ()))})  # type: ignore[arg-type]


# ---- running and scoring ----------------------------------------------------------------------------------


def score(behaviour: Behaviour, rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (from :func:`answer`) with ``follows_ifeval`` (IFEval's strict check), ``starts_json``
    (:func:`~workbench.evaluation.targets.starts_json`, not compliance), ``on_target``,
    ``degenerate`` (:func:`degenerate_answer`) and ``clean`` (on target and not degenerate)."""
    items = {item.id: item for split in set(rows["split"]) for item in behaviour.items(split).items}
    pairs = list(zip(rows["id"].map(items), rows["response"], rows["perplexity"], strict=True))
    target = [behaviour.on_target(item, r) for item, r, _ in pairs]
    degenerate = [degenerate_answer(r, p) for _, r, p in pairs]
    return rows.assign(
        follows_ifeval=[follows(item, r) for item, r, _ in pairs],
        starts_json=[starts_json(r) for _, r, _ in pairs],
        on_target=target,
        degenerate=degenerate,
        clean=[t and not d for t, d in zip(target, degenerate, strict=True)],
    )


def answer(
    model: Model,
    behaviour: Behaviour,
    vectors: dict[str, SteeringVector],
    recipes: Sequence[Recipe],
    split: str,
    n: int,
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> pd.DataFrame:
    """Generate one row per (recipe, item) of the first ``n`` items of ``split``, not yet scored.

    Unsteered rows come from :func:`complete` (cached); every steered row runs in one batched
    :func:`~workbench.generation.generate` call with per-row interventions. Columns: ``recipe, split,
    id, prompt, response, perplexity`` (under the unsteered model, given the prompt answered).
    """
    names = [r.name for r in recipes]
    if len(set(names)) != len(names):
        raise InvalidArgumentError("recipes repeat; give each configuration once")
    items = behaviour.items(split, n).items
    prompts = {kind: behaviour.prompts(split, n, kind) for kind in {r.prompt for r in recipes}}
    jobs = [(r, i) for r in recipes for i in range(len(items))]
    plain = [(r, i) for r, i in jobs if not r.steered]
    steered = [(r, i) for r, i in jobs if r.steered]
    responses: dict[tuple[str, int], str] = {}
    if plain:
        texts = [prompts[r.prompt][i] for r, i in plain]
        answers = complete(model, texts, behaviour.max_new_tokens, batch_size=batch_size, progress=progress)
        responses |= {(r.name, i): a for (r, i), a in zip(plain, answers, strict=True)}
    if steered:
        built = {r.name: r.interventions(vectors[r.source]) for r in recipes if r.steered}
        answers = generate(
            model,
            [prompts[r.prompt][i] for r, i in steered],
            max_new_tokens=behaviour.max_new_tokens,
            batch_size=batch_size,
            interventions=[built[r.name] for r, _ in steered],
            progress=progress,
        )
        responses |= {(r.name, i): a for (r, i), a in zip(steered, answers, strict=True)}
    texts = [prompts[r.prompt][i] for r, i in jobs]
    answers = [responses[(r.name, i)] for r, i in jobs]
    return pd.DataFrame(
        {
            "recipe": [r.name for r, _ in jobs],
            "split": split,
            "id": [items[i].id for _, i in jobs],
            "prompt": texts,
            "response": answers,
            "perplexity": perplexity(model, texts, answers),
        }
    )


def run_recipes(
    model: Model,
    behaviour: Behaviour,
    vectors: dict[str, SteeringVector],
    recipes: Sequence[Recipe],
    split: str,
    n: int,
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> pd.DataFrame:
    """:func:`answer` then :func:`score`: one scored row per (recipe, item)."""
    rows = answer(model, behaviour, vectors, recipes, split, n, batch_size=batch_size, progress=progress)
    return score(behaviour, rows)


def summarize(rows: pd.DataFrame, recipes: Sequence[Recipe], n_layers: int) -> pd.DataFrame:
    """One row per recipe (in ``recipes`` order): its knobs and ``target_rate, clean_rate, degeneration,
    perplexity`` (median), ``n``."""
    stats = rows.groupby("recipe", sort=False).agg(
        target_rate=("on_target", "mean"),
        ifeval_rate=("follows_ifeval", "mean"),
        starts_json_rate=("starts_json", "mean"),
        clean_rate=("clean", "mean"),
        degeneration=("degenerate", "mean"),
        perplexity=("perplexity", "median"),
        n=("on_target", "size"),
    )
    knobs = pd.DataFrame(
        [
            {
                "recipe": r.name,
                "steered": r.steered,
                "span": r.span(n_layers),
                "n_layers_steered": len(r.layers),
                **{k: v for k, v in r.to_json().items() if k != "layers"},
                "layers": " ".join(map(str, r.layers)),
            }
            for r in recipes
        ]
    )
    return knobs.merge(stats, left_on="recipe", right_index=True, how="inner", validate="one_to_one")


def pareto_front(
    frame: pd.DataFrame,
    maximize: Sequence[str] = ("target_rate",),
    minimize: Sequence[str] = ("degeneration",),
) -> pd.Series:
    """Whether each row is on the Pareto front: no other row is at least as good on every objective and
    strictly better on one. Rows with NaN in an objective are never on the front."""
    if not maximize and not minimize:
        raise InvalidArgumentError("the Pareto front needs at least one objective")
    missing = [c for c in (*maximize, *minimize) if c not in frame]
    if missing:
        raise InvalidArgumentError(f"the frame has no column {missing[0]!r}: pass existing objective columns")
    values = np.column_stack(
        [frame[c].to_numpy(float) for c in maximize] + [-frame[c].to_numpy(float) for c in minimize]
    )
    finite = np.isfinite(values).all(axis=1)
    front = np.zeros(len(frame), dtype=bool)
    for i in np.flatnonzero(finite):
        others = values[finite]
        dominated = ((others >= values[i]).all(axis=1) & (others > values[i]).any(axis=1)).any()
        front[i] = not dominated
    return pd.Series(front, index=frame.index, name="pareto")


def rank(summary: pd.DataFrame) -> pd.DataFrame:
    """The steered recipes on plain prompts (steering alone), best clean rate first.

    Ties go to lower degeneration, then lower perplexity, then fewer steered layers, then the recipe
    listed first.
    """
    pool = summary[summary["steered"] & (summary["prompt"] == "plain")]
    order = pool.assign(
        _c=-pool["clean_rate"], _p=pool["perplexity"].fillna(np.inf), _k=np.arange(len(pool))
    ).sort_values(["_c", "degeneration", "_p", "n_layers_steered", "_k"], kind="stable")
    return order.drop(columns=["_c", "_p", "_k"])


def choose(summary: pd.DataFrame) -> pd.Series:
    """The first recipe of :func:`rank`: steering alone with the best clean rate."""
    ranked = rank(summary)
    if ranked.empty:
        raise InvalidArgumentError("no steered recipe on plain prompts to choose from: add one to the grid")
    return ranked.iloc[0]


# ---- the figure -----------------------------------------------------------------------------------------


def _front_line(ax: object, frame: pd.DataFrame, x: str) -> None:
    alone = frame[frame["prompt"] == "plain"]
    front = alone[pareto_front(alone, ("target_rate",), (x,))].sort_values(x)
    ax.step(front[x], front["target_rate"], where="post", color="black", lw=1, label="Pareto front")  # type: ignore[attr-defined]


def plot_frontier(summary: pd.DataFrame, title: str, chosen: str | None = None) -> Figure:
    """Target rate against degeneration (left) and median perplexity (right, log), one point per recipe.

    Colour: vector source; marker: span of layers; size: clean rate; the black step is the Pareto front
    of steering alone (recipes on the plain prompt, the unsteered model included); baselines
    (unsteered, instruction in the prompt) are red crosses and ``chosen`` is ringed. Since
    clean ≥ target − degeneration, a point above the dashed line on the left is sure to beat the
    instruction's clean rate; a point below it can only do so if its degenerate answers are off target.
    """
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    steered = summary[summary["steered"]]
    base = summary[~summary["steered"]]
    for ax, x in zip(axes, ("degeneration", "perplexity"), strict=True):
        sns.scatterplot(
            data=steered,
            x=x,
            y="target_rate",
            hue="source",
            style="span",
            size="clean_rate",
            sizes=(25, 160),
            size_norm=(0, 1),
            alpha=0.75,
            ax=ax,
            legend=ax is axes[1],
        )
        for row in base.itertuples():
            ax.scatter(getattr(row, x), row.target_rate, marker="X", s=90, color="crimson", zorder=3)
            ax.annotate(
                row.recipe,
                (getattr(row, x), row.target_rate),
                fontsize=8,
                xytext=(4, 4),
                textcoords="offset points",
                color="crimson",
            )
        _front_line(ax, summary, x)
        if chosen is not None and chosen in set(summary["recipe"]):
            pick = summary[summary["recipe"] == chosen].iloc[0]
            ax.scatter(pick[x], pick["target_rate"], s=260, facecolors="none", edgecolors="black", lw=1.5)
            ax.annotate(
                f"chosen (clean {pick['clean_rate']:.2f})",
                (pick[x], pick["target_rate"]),
                fontsize=8,
                xytext=(6, -12),
                textcoords="offset points",
            )
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel("target rate")
    instructed = base[base["prompt"] == "instruction"]
    if len(instructed):
        c = float(instructed["clean_rate"].iloc[0])
        axes[0].plot(
            [0, 1 - c],
            [c, 1],
            ls="--",
            lw=0.8,
            color="crimson",
            label="target − degeneration = instruction's clean rate",
        )
        axes[0].legend(fontsize="x-small", loc="lower right")
    axes[0].set_xlim(-0.03, 1.03)
    axes[0].set_xlabel("degeneration rate (repetition or perplexity > 1000)")
    if (summary["perplexity"] > 0).any():  # empty answers have no perplexity
        axes[1].set_xscale("log")
    axes[1].set_xlabel("median perplexity under the unsteered model")
    axes[1].legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title)
    return fig


# ---- cached stages --------------------------------------------------------------------------------------


def cached_rows(path: Path, key: dict[str, object], run: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """``run()``'s rows, stored at ``path`` (parquet) with ``key``; read back when the key matches."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    stamp = path.with_suffix(".key")
    if path.exists() and stamp.exists() and stamp.read_text() == digest:
        return pd.read_parquet(path)
    rows = run()
    path.parent.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(path, index=False)
    stamp.write_text(digest)
    return rows
