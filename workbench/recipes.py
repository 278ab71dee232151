"""Steering recipes: the one steering-setting type, the behaviours they aim at, and their clean-rate ranking.

A :class:`Recipe` is one way to steer, serialisable (:meth:`Recipe.to_json`) and turned into
:class:`~workbench.steering.Intervention` s by :meth:`Recipe.interventions`: where the vector comes from
(:data:`SOURCES`: read at the last prompt token, over the prompt's tokens, or over the *generated* tokens of
contrastive completions, or None: the vector given), which layers get it, the mode, a per-layer
``coef`` in a ``unit``, the positions, a fade over generated tokens and the norm-preserving variant, plus which
prompt it answers (plain, with the instruction, or the native Italian one). Sweeps use it too
(:func:`workbench.sweeps.grid`). Its :attr:`Recipe.label` is the short ``add@10x2`` form of
:attr:`Intervention.label <workbench.steering.Intervention.label>`.

A :class:`~workbench.behaviours.Behaviour` says what "on target" means and how many tokens to generate
(:mod:`workbench.behaviours`, with their vectors). :func:`answer`
generates every (recipe, item) row with :func:`~workbench.runner.run_grid` (raw responses and their
perplexity under the unsteered model); :func:`score` scores them with the definitions in
:mod:`workbench.evaluation`, so cached answers are always rescored. :func:`summarize_recipes` gives one
row per recipe, :func:`pareto_front` the non-dominated ones, :func:`choose_clean` the steered recipe with
the best clean rate; the figure is :func:`workbench.plots.plot_frontier`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np
import pandas as pd

from workbench.behaviours import PROMPTS, SOURCES, Behaviour, complete
from workbench.errors import InvalidArgumentError
from workbench.evaluation.perplexity import perplexity
from workbench.evaluation.scoring import score_answers
from workbench.evaluation.selection import rank_settings
from workbench.evaluation.table import summarize_scores
from workbench.evaluation.targets import follows
from workbench.files import atomic_text, atomic_write
from workbench.interventions import MODES, UNITS, Intervention
from workbench.models import Model
from workbench.positions import check_positions
from workbench.runner import Executor, Job, run_grid
from workbench.vectors import SteeringVector

__all__ = [
    "AnswerOptions",
    "Recipe",
    "answer",
    "cached_rows",
    "choose_clean",
    "pareto_front",
    "rank",
    "run_recipes",
    "score",
    "summarize_recipes",
]


# ---- recipes ----------------------------------------------------------------------------------------------


def _layers_text(layers: tuple[int, ...]) -> str:
    if len(layers) > 1 and layers == tuple(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


@dataclass(frozen=True)
class Recipe:
    """One steering setting, serialisable (:meth:`to_json`): the knobs of an
    :class:`~workbench.steering.Intervention` for each of several layers, plus where its vector comes from
    and which prompt it answers. No ``layers``: no steering (a baseline).

    ``source``: which of a behaviour's vectors (:data:`SOURCES`), or None for "the vector given" (sweeps).
    ``coef`` and ``unit`` mean what they mean on an Intervention (:func:`~workbench.steering.resolve_amount`,
    applied at *each* layer; ``residual_norm``: the layer's mean residual norm at the last prompt token);
    ``ablate`` takes none. ``decay_tokens`` > 0 fades ``add`` linearly to zero over that many generated tokens.
    """

    source: str | None = "last_prompt"
    layers: tuple[int, ...] = ()
    mode: str = "add"
    coef: float | None = 0.0
    unit: str = "diff_norm"
    positions: str = "all"
    decay_tokens: int = 0
    norm_preserving: bool = False
    prompt: str = "plain"

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.source, (*SOURCES, None), "source"),
            (self.mode, MODES, "mode"),
            (self.prompt, PROMPTS, "prompt kind"),
            (self.unit, UNITS, "unit"),
        ):
            if value not in allowed:
                raise InvalidArgumentError(
                    f"unknown {what} {value!r}: use one of {', '.join(map(str, allowed))}"
                )
        check_positions(self.positions)
        object.__setattr__(self, "layers", tuple(int(b) for b in self.layers))
        if self.mode == "ablate":
            if self.coef not in (None, 0, 0.0):
                raise InvalidArgumentError("mode 'ablate' takes no coef: it always removes the direction")
            object.__setattr__(self, "coef", None)

    @property
    def steered(self) -> bool:
        return bool(self.layers)

    @property
    def label(self) -> str:
        """The short label of every table, as :attr:`Intervention.label`: ``add@10x2``,
        ``set_projection@6-8``, ``none``; `` +instruction`` when it answers another prompt than the
        plain one."""
        suffix = "" if self.prompt == "plain" else f" +{self.prompt}"
        if not self.steered:
            return "none" + suffix
        coef = "" if self.coef is None else f"x{self.coef:g}"
        return f"{self.mode}@{_layers_text(self.layers)}{coef}{suffix}"

    @property
    def name(self) -> str:
        """A unique name: :attr:`label` for a recipe without a source; else every knob, e.g.
        ``generated L6-13 add 0.08rn all`` (or the prompt kind, e.g. ``instruction``, when unsteered)."""
        if self.source is None:
            return self.label
        if not self.steered:
            return self.prompt
        unit = {"residual_norm": "rn", "diff_norm": "dn", "absolute": "abs"}[self.unit]
        if self.mode == "set_projection":
            unit = "sep" if self.unit == "diff_norm" else f"{unit}sep"
        amount = "" if self.coef is None else f"{self.coef:g}{unit}"
        parts = [self.source, f"L{_layers_text(self.layers)}", self.mode, amount, self.positions]
        parts += [f"decay{self.decay_tokens}"] * bool(self.decay_tokens) + ["np"] * self.norm_preserving
        return " ".join(p for p in parts if p) + ("" if self.prompt == "plain" else f" +{self.prompt}")

    def span(self, n_layers: int) -> str:
        """``none``, ``one layer``, ``band`` or ``all layers``."""
        if not self.steered:
            return "none"
        if len(self.layers) == 1:
            return "one layer"
        return "all layers" if len(self.layers) == n_layers else "band"

    def interventions(self, vector: SteeringVector) -> list[Intervention]:
        """One :class:`Intervention` per layer, with this recipe's knobs."""
        missing = [layer for layer in self.layers if layer not in vector.stats]
        if missing:
            raise InvalidArgumentError(
                f"the vector has no layer {missing[0]}; it covers {list(vector.layers)}"
            )
        knobs = {"positions": self.positions, "decay_tokens": self.decay_tokens}
        knobs |= {"norm_preserving": self.norm_preserving, "unit": self.unit}
        return [Intervention(vector, layer, self.mode, self.coef, **knobs) for layer in self.layers]  # type: ignore[arg-type]

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
    """``rows`` (from :func:`answer`) with the scoring contract's columns
    (:func:`~workbench.evaluation.scoring.score_answers`: ``on_target`` by the behaviour's target,
    ``degenerate`` with the row's perplexity, ``clean``) and ``ifeval``, IFEval's own strict verdict on the
    item's instructions (which is the target itself for an IFEval behaviour)."""
    items = {item.id: item for split in set(rows["split"]) for item in behaviour.items(split).items}
    asked = rows["id"].map(items).tolist()
    scored = score_answers(behaviour.target, asked, rows["response"].tolist(), rows["perplexity"].tolist())
    return rows.assign(
        ifeval=[follows(item, r) for item, r in zip(asked, rows["response"], strict=True)],
        **{c: scored[c].to_numpy() for c in ("on_target", "degenerate", "clean")},
    )


def _vector(vectors: dict[str, SteeringVector], recipe: Recipe) -> SteeringVector:
    if recipe.source not in vectors:
        raise InvalidArgumentError(
            f"recipe {recipe.name!r} needs the {recipe.source!r} vector; vectors given: {sorted(vectors)}"
        )
    return vectors[recipe.source]  # type: ignore[index]


class AnswerOptions(TypedDict, total=False):
    """The keywords :func:`answer` takes after its positional arguments."""

    batch_size: int
    out_dir: str | os.PathLike[str] | None
    executor: Executor | None
    progress: bool


def answer(
    model: Model,
    behaviour: Behaviour,
    vectors: dict[str, SteeringVector],
    recipes: Sequence[Recipe],
    split: str,
    n: int,
    *,
    batch_size: int = 32,
    out_dir: str | os.PathLike[str] | None = None,
    executor: Executor | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Generate one row per (recipe, item) of the first ``n`` items of ``split``, not yet scored.

    Unsteered rows come from :func:`complete` (cached); steered rows from
    :func:`~workbench.runner.run_grid` (parts under ``out_dir`` when given, chunks run by ``executor``).
    Columns: ``recipe, split, id, prompt, response, perplexity`` (under the unsteered model, given the
    prompt answered).
    """
    names = [r.name for r in recipes]
    if len(set(names)) != len(names):
        raise InvalidArgumentError("recipes repeat; give each configuration once")
    items = behaviour.items(split, n).items
    prompts = {kind: behaviour.prompts(split, n, kind) for kind in {r.prompt for r in recipes}}
    jobs = [(r, i) for r in recipes for i in range(len(items))]
    texts = [prompts[r.prompt][i] for r, i in jobs]
    responses = [""] * len(jobs)
    plain = [k for k, (r, _) in enumerate(jobs) if not r.steered]
    steered = [k for k, (r, _) in enumerate(jobs) if r.steered]
    if plain:
        answers = complete(model, [texts[k] for k in plain], behaviour.max_new_tokens, batch_size=batch_size)
        for k, a in zip(plain, answers, strict=True):
            responses[k] = a
    if steered:
        built = {r.name: tuple(r.interventions(_vector(vectors, r))) for r in recipes if r.steered}
        grid = [Job(jobs[k][0].name, items[jobs[k][1]].id, texts[k], built[jobs[k][0].name]) for k in steered]
        rows = run_grid(
            model,
            grid,
            max_new_tokens=behaviour.max_new_tokens,
            batch_size=batch_size,
            out_dir=out_dir,
            executor=executor,
            progress=progress,
        )
        for k, a in zip(steered, rows["response"], strict=True):
            responses[k] = a
    return pd.DataFrame(
        {
            "recipe": [r.name for r, _ in jobs],
            "split": split,
            "id": [items[i].id for _, i in jobs],
            "prompt": texts,
            "response": responses,
            "perplexity": perplexity(model, texts, responses),
        }
    )


def run_recipes(
    model: Model,
    behaviour: Behaviour,
    vectors: dict[str, SteeringVector],
    recipes: Sequence[Recipe],
    split: str,
    n: int,
    **options: Unpack[AnswerOptions],
) -> pd.DataFrame:
    """:func:`answer` (``options`` are its keywords) then :func:`score`: one scored row per (recipe, item)."""
    return score(behaviour, answer(model, behaviour, vectors, recipes, split, n, **options))


def summarize_recipes(rows: pd.DataFrame, recipes: Sequence[Recipe], n_layers: int) -> pd.DataFrame:
    """One row per recipe (in ``recipes`` order): its knobs and ``target_rate, ifeval_rate, clean_rate,
    degeneration, perplexity`` (median), ``n``."""
    stats = summarize_scores(rows, "recipe", ifeval=True)
    knobs = pd.DataFrame(
        [
            {
                "recipe": r.name,
                "label": r.label,
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
    """The steered recipes on plain prompts (steering alone), best first by the one selection rule
    (:func:`~workbench.evaluation.selection.rank_settings`: mean score or clean rate, then target rate).

    Further ties go to lower degeneration, then lower perplexity, then fewer steered layers, then the
    recipe listed first.
    """
    pool = summary[summary["steered"] & (summary["prompt"] == "plain")]
    return rank_settings(pool, ("degeneration", "perplexity", "n_layers_steered"))


def choose_clean(summary: pd.DataFrame) -> pd.Series:
    """The first recipe of :func:`rank`: steering alone with the best clean rate."""
    ranked = rank(summary)
    if ranked.empty:
        raise InvalidArgumentError("no steered recipe on plain prompts to choose from: add one to the grid")
    return ranked.iloc[0]


def cached_rows(path: Path, key: dict[str, object], run: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """``run()``'s raw rows (never scores), stored at ``path`` (parquet) with ``key``; read back when the
    key matches. Put everything that changes the rows in ``key`` (``model.fingerprint`` among them)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    stamp = path.with_suffix(".key")
    if path.exists() and stamp.exists() and stamp.read_text() == digest:
        return pd.read_parquet(path)
    rows = run()
    atomic_write(path, lambda tmp: rows.to_parquet(tmp, index=False), "rows")
    atomic_text(stamp, digest, "rows key")
    return rows
