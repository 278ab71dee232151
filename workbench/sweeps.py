"""Behavioural sweeps: steer held-out prompts over a grid of layers and strengths, score what comes out.

A sweep's settings are :class:`~workbench.recipes.Recipe` s without a source (the vector is given):
:func:`grid` builds them, :func:`Config` builds one. :func:`sweep` runs every one on the *negative* prompts
of a ContrastiveSet (the query without its instruction) through :func:`~workbench.runner.run_grid` and
scores each greedy response by the scoring contract (:func:`~workbench.evaluation.scoring.score_answers`:
``on_target`` by the item's own IFEval checks, strict; ``degenerate`` by the text rule; ``clean``) every time
it is called: the parts under ``out_dir`` hold raw responses only. The grid always includes ``none`` (no steering) as the reference.

:func:`choose_stolfo` applies Stolfo et al.'s selection rule to :func:`summarize_sweep`'s table.
"""

from __future__ import annotations

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
from workbench.evaluation.perplexity import perplexity
from workbench.evaluation.scoring import score_answers
from workbench.interventions import MODES
from workbench.models import Model
from workbench.recipes import Recipe
from workbench.runner import Executor, Job, run_grid
from workbench.vectors import SteeringVector

__all__ = [
    "GATES",
    "LOW_PERPLEXITY",
    "NONE",
    "Choice",
    "Config",
    "choose_stolfo",
    "grid",
    "per_layer",
    "summarize_sweep",
    "sweep",
]

NONE = "none"
#: Stolfo et al.'s degeneracy bound: an answer whose perplexity alone under the reference is below this is
#: repetitive (their ``preplexity_threshold``, with GPT-2 as the reference).
LOW_PERPLEXITY = 2.5
#: What makes a steered config ineligible in :func:`choose_stolfo`: degenerating more often than no steering
#: (the text rule), more low-perplexity answers than no steering (Stolfo et al.'s gate), or either.
GATES = ("degeneration", "perplexity", "both")
#: The context a reference scores an answer after, in place of its prompt.
NEUTRAL = "Text:"
_COLUMNS = ["config", "layer", "mode", "coef", "unit", "positions", "id", "behaviour", "prompt", "response"]


def Config(
    layer: int | None = None,
    mode: str = "add",
    coef: float | None = None,
    *,
    unit: str = "diff_norm",
    positions: str = "all",
) -> Recipe:
    """A sweep setting: ``mode`` at ``layer`` with ``coef`` in ``unit`` (``layer=None``: no steering), as a
    :class:`~workbench.recipes.Recipe` without a source; its name is its label (``add@10x2``, ``none``)."""
    layers = () if layer is None else (int(layer),)
    coef = None if coef is None else float(coef)
    return Recipe(None, layers, mode, coef, unit=unit, positions=positions)


def grid(
    layers: Sequence[int],
    *,
    mode: str = "add",
    coefs: Sequence[float] = (1.0, 2.0, 4.0),
    unit: str = "diff_norm",
    positions: str = "all",
) -> list[Recipe]:
    """``none`` then every (layer, coef) in ``unit``; ``set_projection`` and ``ablate`` take no coefficient
    (one per layer)."""
    if mode not in MODES:
        raise InvalidArgumentError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "add" and not coefs:
        raise InvalidArgumentError("mode 'add' needs at least one coefficient")
    coefs_: Sequence[float | None] = [float(c) for c in coefs] if mode == "add" else [None]
    knobs = {"unit": unit, "positions": positions}
    return [Config(), *(Config(layer, mode, c, **knobs) for layer in layers for c in coefs_)]


def _vector_hash(vector: SteeringVector) -> str:
    digest = hashlib.sha256(vector.directions.numpy().astype("<f4").tobytes())
    digest.update(json.dumps({b: s.to_json() for b, s in vector.stats.items()}, sort_keys=True).encode())
    return digest.hexdigest()


def _scorer(dataset: ContrastiveSet, reference: Model | None) -> Callable[[pd.DataFrame], pd.DataFrame]:
    items = {item.id: item for item in dataset.items}

    def score(rows: pd.DataFrame) -> pd.DataFrame:
        scored = score_answers("ifeval", rows["id"].map(items).tolist(), rows["response"].tolist())
        out = rows.rename(columns={"setting": "config"})[_COLUMNS].assign(
            layer=rows["layer"].astype("Int64"),
            coef=rows["coef"].astype(float),
            **{c: scored[c].to_numpy() for c in ("on_target", "degenerate", "clean")},
        )
        if reference is not None:  # Stolfo et al.'s gate: each answer's perplexity alone, under the reference
            responses = out["response"].tolist()
            neutral = [NEUTRAL] * len(responses)
            out["reference_perplexity"] = perplexity(reference, neutral, responses, chat=False)
        return out

    return score


def _knobs(config: Recipe, item_behaviour: str) -> dict[str, object]:
    return {
        "layer": config.layers[0] if config.steered else None,
        "mode": config.mode if config.steered else NONE,
        "coef": np.nan if config.coef is None else config.coef,
        "unit": config.unit,
        "positions": config.positions,
        "behaviour": item_behaviour,
    }


def sweep(
    model: Model,
    vector: SteeringVector,
    dataset: ContrastiveSet,
    configs: Sequence[Recipe],
    *,
    max_new_tokens: int = 40,
    batch_size: int = 32,
    chunk_size: int = 128,
    out_dir: str | os.PathLike[str] | None = None,
    on_chunk: Callable[[pd.DataFrame], None] | None = None,
    executor: Executor | None = None,
    reference: Model | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Generate and score one row per (config, item) of ``dataset``, steering its negative prompts.

    Columns: ``config, layer, mode, coef, unit, positions, id, behaviour, prompt, response, on_target,
    degenerate, clean``, in config-major order (each config's own ``coef``, ``unit`` and ``positions``, as an
    :class:`~workbench.steering.Intervention` takes them). Rows run in fixed chunks of
    ``chunk_size`` over the whole grid (:func:`~workbench.runner.run_grid`, by ``executor``), so a resumed
    run batches exactly as an uninterrupted one; ``on_chunk`` sees each chunk's raw rows once they are
    saved. With ``out_dir``, rows already generated there are read back and rescored; the directory
    refuses a sweep with another model (weights, dtype, device), vector or ``max_new_tokens``. With a
    ``reference`` model, each row also gets ``reference_perplexity``: the answer's perplexity without its
    prompt (after the neutral :data:`NEUTRAL`, no chat format) under it, as Stolfo et al. score steered
    answers alone with GPT-2 for their gate (:func:`choose_stolfo`).
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
    steering = {c.name: tuple(c.interventions(vector)) for c in configs}
    jobs = [
        Job(c.name, item.id, prompt, steering[c.name], _knobs(c, item.behaviour))
        for c in configs
        for item, prompt in zip(dataset.items, dataset.negative, strict=True)
    ]
    return run_grid(
        model,
        jobs,
        max_new_tokens=max_new_tokens,
        score=_scorer(dataset, reference),
        out_dir=out_dir,
        key={"vector": _vector_hash(vector)},
        chunk_size=chunk_size,
        batch_size=batch_size,
        executor=executor,
        on_chunk=on_chunk,
        progress=progress,
    )


def summarize_sweep(results: pd.DataFrame) -> pd.DataFrame:
    """One row per config in first-seen order: ``config, layer, mode, coef, target_rate, degeneration, n``;
    with reference perplexities, also ``low_perplexity`` (the share of answers below
    :data:`LOW_PERPLEXITY`, Stolfo et al.'s sign of degenerate, repetitive text) and their median."""
    grouped = results.groupby("config", sort=False)
    extra = {}
    if "reference_perplexity" in results:
        results = results.assign(_low=results["reference_perplexity"] < LOW_PERPLEXITY)
        grouped = results.groupby("config", sort=False)
        extra = {
            "low_perplexity": ("_low", "mean"),
            "median_reference_perplexity": ("reference_perplexity", "median"),
        }
    summary = grouped.agg(
        layer=("layer", "first"),
        mode=("mode", "first"),
        coef=("coef", "first"),
        target_rate=("on_target", "mean"),
        degeneration=("degenerate", "mean"),
        **extra,
        n=("on_target", "size"),
    )
    return summary.reset_index()


@dataclass(frozen=True)
class Choice:
    """The configuration a selection rule picked; ``layer`` is None when the answer is not to steer."""

    config: str
    layer: int | None
    coef: float | None
    target_rate: float
    degeneration: float
    baseline_target_rate: float
    baseline_degeneration: float


def choose_stolfo(summary: pd.DataFrame, gate: str = "degeneration") -> Choice:
    """Stolfo et al.'s rule: the steered config with the best target rate among the eligible ones; no
    steering when none is eligible or none beats it. ``gate`` (:data:`GATES`): a config is eligible when it
    degenerates no more often than no steering (``degeneration``), when no more of its answers have a
    reference perplexity below :data:`LOW_PERPLEXITY` than no steering's (``perplexity``: their gate, which
    needs a sweep with a ``reference``), or both.

    Ties go to lower degeneration, then a smaller ``|coef|``, then the earlier layer.
    """
    if gate not in GATES:
        raise InvalidArgumentError(f"unknown gate {gate!r}: use one of {', '.join(GATES)}")
    if gate != "degeneration" and "low_perplexity" not in summary:
        raise InvalidArgumentError("the perplexity gate needs a sweep run with a reference model")
    base = summary[summary["config"] == NONE]
    if len(base) != 1:
        raise InvalidArgumentError("the summary needs exactly one 'none' row (the unsteered reference)")
    b = base.iloc[0]
    eligible = summary["config"] != NONE
    if gate in ("degeneration", "both"):
        eligible &= summary["degeneration"] <= b["degeneration"]
    if gate in ("perplexity", "both"):
        eligible &= summary["low_perplexity"] <= b["low_perplexity"]
    steered = summary[eligible]
    best = None
    if len(steered):
        order = steered.assign(_c=-steered["target_rate"], _a=steered["coef"].abs().fillna(0))
        best = order.sort_values(["_c", "degeneration", "_a", "layer"], kind="stable").iloc[0]
    if best is None or best["target_rate"] <= b["target_rate"]:
        best = b
    coef = best["coef"]
    return Choice(
        config=str(best["config"]),
        layer=None if best["config"] == NONE else int(best["layer"]),
        coef=None if coef is None or (isinstance(coef, float) and math.isnan(coef)) else float(coef),
        target_rate=float(best["target_rate"]),
        degeneration=float(best["degeneration"]),
        baseline_target_rate=float(b["target_rate"]),
        baseline_degeneration=float(b["degeneration"]),
    )


def per_layer(summary: pd.DataFrame) -> pd.DataFrame:
    """What :func:`choose_stolfo` gives when held to one layer: one row per swept layer.

    Columns ``layer, target_rate, degeneration, coef, steers`` (False: nothing at this layer beats no
    steering without degenerating more, so the target rate is the unsteered one) and ``max_target_rate``
    (the best at the layer, degeneration ignored).
    """
    base = summary[summary["config"] == NONE]
    rows = []
    for layer, group in summary[summary["config"] != NONE].groupby("layer", sort=True):
        choice = choose_stolfo(pd.concat([base, group]))
        rows.append(
            {
                "layer": int(layer),
                "target_rate": choice.target_rate,
                "degeneration": choice.degeneration,
                "coef": np.nan if choice.coef is None else choice.coef,
                "steers": choice.layer is not None,
                "max_target_rate": float(group["target_rate"].max()),
            }
        )
    return pd.DataFrame(
        rows, columns=["layer", "target_rate", "degeneration", "coef", "steers", "max_target_rate"]
    )
