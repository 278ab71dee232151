"""Behavioural sweeps: steer held-out prompts over a grid of layers and strengths, score what comes out.

A sweep's settings are :class:`~workbench.recipes.Recipe` s without a source (the vector is given):
:func:`grid` builds them, :func:`Config` builds one. :func:`sweep` runs every one on the *negative* prompts
of a ContrastiveSet (the query without its instruction) through :func:`~workbench.runner.run_grid` and
scores each greedy response for compliance with the item's instructions
(:func:`~workbench.evaluation.targets.follows`, strict) and degeneration
(:func:`~workbench.evaluation.is_degenerate`) every time it is called: the parts under ``out_dir`` hold raw
responses only. The grid always includes ``none`` (no steering) as the reference.

:func:`choose_stolfo` applies Stolfo et al.'s selection rule to :func:`summarize_sweep`'s table
(``choose``/``summarize`` are their older names).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from workbench.datasets import ContrastiveSet
from workbench.errors import InvalidArgumentError
from workbench.evaluation import is_degenerate
from workbench.evaluation.targets import follows
from workbench.models import Model
from workbench.recipes import Recipe
from workbench.runner import Executor, Job, run_grid
from workbench.steering import MODES
from workbench.vectors import SteeringVector

__all__ = [
    "NONE",
    "Choice",
    "Config",
    "choose",
    "choose_stolfo",
    "grid",
    "per_layer",
    "summarize",
    "summarize_sweep",
    "sweep",
]

NONE = "none"
_COLUMNS = ["config", "layer", "mode", "coef", "scale", "positions", "id", "behaviour", "prompt", "response"]


def Config(layer: int | None = None, mode: str = "add", coef: float | None = None) -> Recipe:
    """A sweep setting: ``mode`` at ``layer`` with ``coef`` (``layer=None``: no steering), as a
    :class:`~workbench.recipes.Recipe` without a source; its name is its label (``add@10x2``, ``none``).

    ``coef`` is in the sweep's ``scale`` units for ``add``; for ``set_projection`` it is the recipe's
    strength (None or 1: the positive set's mean projection)."""
    layers = () if layer is None else (int(layer),)
    return Recipe(None, layers, mode, None if coef is None else float(coef), scale="diff_norm")


def grid(
    layers: Sequence[int], *, mode: str = "add", coefs: Sequence[float] = (1.0, 2.0, 4.0)
) -> list[Recipe]:
    """``none`` then every (layer, coef); ``set_projection`` and ``ablate`` take no coefficient (one per
    layer)."""
    if mode not in MODES:
        raise InvalidArgumentError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "add" and not coefs:
        raise InvalidArgumentError("mode 'add' needs at least one coefficient")
    strengths: Sequence[float | None] = [float(c) for c in coefs] if mode == "add" else [None]
    return [Config(), *(Config(layer, mode, c) for layer in layers for c in strengths)]


def _vector_hash(vector: SteeringVector) -> str:
    digest = hashlib.sha256(vector.directions.numpy().astype("<f4").tobytes())
    digest.update(json.dumps({b: s.to_json() for b, s in vector.stats.items()}, sort_keys=True).encode())
    return digest.hexdigest()


def _scorer(dataset: ContrastiveSet) -> Callable[[pd.DataFrame], pd.DataFrame]:
    items = {item.id: item for item in dataset.items}

    def score(rows: pd.DataFrame) -> pd.DataFrame:
        pairs = list(zip(rows["id"].map(items), rows["response"], strict=True))
        return rows.rename(columns={"setting": "config"})[_COLUMNS].assign(
            layer=rows["layer"].astype("Int64"),
            coef=rows["coef"].astype(float),
            follows=[follows(item, r) for item, r in pairs],
            degenerate=[is_degenerate(r) for _, r in pairs],
        )

    return score


def _knobs(config: Recipe, item_behaviour: str, scale: str, positions: str) -> dict[str, object]:
    return {
        "layer": config.layers[0] if config.steered else None,
        "mode": config.mode if config.steered else NONE,
        "coef": np.nan if config.strength is None else config.strength,
        "scale": scale,
        "positions": positions,
        "behaviour": item_behaviour,
    }


def sweep(
    model: Model,
    vector: SteeringVector,
    dataset: ContrastiveSet,
    configs: Sequence[Recipe],
    *,
    scale: str = "diff_norm",
    positions: str = "all",
    max_new_tokens: int = 40,
    batch_size: int = 32,
    chunk_size: int = 128,
    out_dir: str | os.PathLike[str] | None = None,
    on_chunk: Callable[[pd.DataFrame], None] | None = None,
    executor: Executor | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Generate and score one row per (config, item) of ``dataset``, steering its negative prompts.

    Columns: ``config, layer, mode, coef, scale, positions, id, behaviour, prompt, response, follows,
    degenerate``, in config-major order. ``coef`` is in ``scale`` units (see :class:`Intervention`); the
    configs' own scale and positions give way to ``scale`` and ``positions``. Rows run in fixed chunks of
    ``chunk_size`` over the whole grid (:func:`~workbench.runner.run_grid`, by ``executor``), so a resumed
    run batches exactly as an uninterrupted one; ``on_chunk`` sees each chunk's raw rows once they are
    saved. With ``out_dir``, rows already generated there are read back and rescored; the directory
    refuses a sweep with another model (weights, dtype, device), vector, scale, positions or
    ``max_new_tokens``.
    """
    names = [c.name for c in configs]
    if NONE not in names:
        raise InvalidArgumentError("a sweep needs the unsteered config Config() as its reference")
    if len(set(names)) != len(names):
        raise InvalidArgumentError("configs repeat; each (layer, mode, coef) may appear once")
    if any(len(c.layers) > 1 for c in configs):
        raise InvalidArgumentError(
            "a sweep config steers one layer; run multi-layer recipes with run_recipes"
        )
    steering = {
        c.name: tuple(dataclasses.replace(c, scale=scale, positions=positions).interventions(vector))
        for c in configs
    }
    jobs = [
        Job(c.name, item.id, prompt, steering[c.name], _knobs(c, item.behaviour, scale, positions))
        for c in configs
        for item, prompt in zip(dataset.items, dataset.negative, strict=True)
    ]
    return run_grid(
        model,
        jobs,
        max_new_tokens=max_new_tokens,
        score=_scorer(dataset),
        out_dir=out_dir,
        key={"vector": _vector_hash(vector), "scale": scale, "positions": positions},
        chunk_size=chunk_size,
        batch_size=batch_size,
        executor=executor,
        on_chunk=on_chunk,
        progress=progress,
    )


def summarize_sweep(results: pd.DataFrame) -> pd.DataFrame:
    """One row per config in first-seen order: ``config, layer, mode, coef, compliance, degeneration, n``."""
    grouped = results.groupby("config", sort=False)
    summary = grouped.agg(
        layer=("layer", "first"),
        mode=("mode", "first"),
        coef=("coef", "first"),
        compliance=("follows", "mean"),
        degeneration=("degenerate", "mean"),
        n=("follows", "size"),
    )
    return summary.reset_index()


@dataclass(frozen=True)
class Choice:
    """The configuration a selection rule picked; ``layer`` is None when the answer is not to steer."""

    config: str
    layer: int | None
    coef: float | None
    compliance: float
    degeneration: float
    baseline_compliance: float
    baseline_degeneration: float


def choose_stolfo(summary: pd.DataFrame) -> Choice:
    """Stolfo et al.'s rule: the steered config with the best compliance among those that degenerate no
    more often than no steering; no steering when none is eligible or none beats it.

    Ties go to lower degeneration, then a smaller ``|coef|``, then the earlier layer.
    """
    base = summary[summary["config"] == NONE]
    if len(base) != 1:
        raise InvalidArgumentError("the summary needs exactly one 'none' row (the unsteered reference)")
    b = base.iloc[0]
    steered = summary[(summary["config"] != NONE) & (summary["degeneration"] <= b["degeneration"])]
    best = None
    if len(steered):
        order = steered.assign(_c=-steered["compliance"], _a=steered["coef"].abs().fillna(0))
        best = order.sort_values(["_c", "degeneration", "_a", "layer"], kind="stable").iloc[0]
    if best is None or best["compliance"] <= b["compliance"]:
        best = b
    coef = best["coef"]
    return Choice(
        config=str(best["config"]),
        layer=None if best["config"] == NONE else int(best["layer"]),
        coef=None if coef is None or (isinstance(coef, float) and math.isnan(coef)) else float(coef),
        compliance=float(best["compliance"]),
        degeneration=float(best["degeneration"]),
        baseline_compliance=float(b["compliance"]),
        baseline_degeneration=float(b["degeneration"]),
    )


def per_layer(summary: pd.DataFrame) -> pd.DataFrame:
    """What :func:`choose_stolfo` gives when held to one layer: one row per swept layer.

    Columns ``layer, compliance, degeneration, coef, steers`` (False: nothing at this layer beats no
    steering without degenerating more, so compliance is the unsteered one) and ``max_compliance``
    (best compliance at the layer, degeneration ignored).
    """
    base = summary[summary["config"] == NONE]
    rows = []
    for layer, group in summary[summary["config"] != NONE].groupby("layer", sort=True):
        choice = choose_stolfo(pd.concat([base, group]))
        rows.append(
            {
                "layer": int(layer),
                "compliance": choice.compliance,
                "degeneration": choice.degeneration,
                "coef": np.nan if choice.coef is None else choice.coef,
                "steers": choice.layer is not None,
                "max_compliance": float(group["compliance"].max()),
            }
        )
    return pd.DataFrame(
        rows, columns=["layer", "compliance", "degeneration", "coef", "steers", "max_compliance"]
    )


#: The names these had before :mod:`workbench.recipes` got its own (clean-rate ranking).
summarize = summarize_sweep
choose = choose_stolfo
