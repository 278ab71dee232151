"""Directional ablation (Stolfo et al. 2025): an instruction's direction removed, against random unit ones.

:func:`ablation_study` ablates (``x - (x·u)u``, all positions) the instruction's direction at its
validation-chosen layer and at every layer, with the instruction in the prompt, and measures compliance and
degeneration; the control ablates random *unit* directions in exactly the same two ways, one per seed,
reported as mean ± sd over the seeds (at least three for a spread worth reading).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from workbench.datasets import load
from workbench.errors import InvalidArgumentError
from workbench.files import write_frame
from workbench.interventions import Intervention
from workbench.models import Model
from workbench.size import Size
from workbench.studies.registry import Study
from workbench.studies.result import StudyResult
from workbench.studies.steps import Selected, TestJob, budget, run_jobs, save, select
from workbench.vectors import SteeringVector

__all__ = ["ablation_study", "random_unit_directions"]

_FIXED = ("no_instruction", "with_instruction", "ablated_layer", "ablated_all")
_RANDOM = ("random_layer", "random_all")
_BARS = ("with_instruction", "ablated_layer", "random_layer", "ablated_all", "random_all")


def random_unit_directions(model: Model, seed: int) -> SteeringVector:
    """One Gaussian direction per layer of ``model``, scaled to unit norm (``ablate`` removes a unit
    direction, so a norm would mean nothing)."""
    rows = torch.randn(model.n_layers, model.d_model, generator=torch.Generator().manual_seed(seed))
    rows = rows / torch.linalg.vector_norm(rows, dim=-1, keepdim=True)
    return SteeringVector.from_directions(
        rows, range(model.n_layers), method="random_unit", seed=seed, model_name=model.name
    )


def _settings(
    selected: Selected, randoms: Mapping[int, SteeringVector], n_layers: int
) -> list[tuple[str, int | None, bool, tuple[Intervention, ...]]]:
    """(setting, seed, instruction in the prompt, interventions) for one instruction."""

    def ablate(vector: SteeringVector, every: bool) -> tuple[Intervention, ...]:
        layers = range(n_layers) if every else [selected.layer]
        return tuple(Intervention(vector, b, "ablate") for b in layers)

    settings = [
        ("no_instruction", None, False, ()),
        ("with_instruction", None, True, ()),
        ("ablated_layer", None, True, ablate(selected.vector, False)),
        ("ablated_all", None, True, ablate(selected.vector, True)),
    ]
    for seed, vector in randoms.items():
        settings.append(("random_layer", seed, True, ablate(vector, False)))
        settings.append(("random_all", seed, True, ablate(vector, True)))
    return settings


def _spread(rows: pd.DataFrame, setting: str, column: str) -> tuple[float, float]:
    """Mean and sample sd over seeds of the per-seed rate of ``column`` in ``setting``."""
    per_seed = rows[rows["setting"] == setting].groupby("seed")[column].mean()
    return float(per_seed.mean()), float(per_seed.std(ddof=1)) if len(per_seed) > 1 else math.nan


def _record(name: str, layer: int, rows: pd.DataFrame) -> dict[str, object]:
    """One table row: compliance then degeneration, per fixed setting and as mean/sd over seeds."""
    by_setting = rows.groupby("setting", sort=False)
    record: dict[str, object] = {"instruction": name, "layer": layer}
    for column, prefix in (("on_target", ""), ("degenerate", "degeneration_")):
        rates = by_setting[column].mean()
        fixed = _FIXED if column == "on_target" else _FIXED[1:]
        record |= {f"{prefix}{s}": float(rates[s]) for s in fixed}
        for setting in _RANDOM:
            mean, sd = _spread(rows, setting, column)
            record |= {f"{prefix}{setting}_mean": mean, f"{prefix}{setting}_std": sd}
    return record | {"n": int(rows["id"].nunique())}


def _figure(table: pd.DataFrame, n_seeds: int) -> Figure:
    """Compliance (left) and degeneration (right) per instruction; random controls with ±sd bars."""
    fig = Figure(figsize=(max(10.0, 5 * len(table) + 2), 4), layout="constrained")
    width, x = 0.8 / len(_BARS), np.arange(len(table))
    for k, (prefix, ylabel) in enumerate(
        (("", "compliance, instruction in the prompt"), ("degeneration_", "degeneration rate"))
    ):
        ax = fig.add_subplot(1, 2, k + 1)
        for j, setting in enumerate(_BARS):
            random = setting in _RANDOM
            heights = table[f"{prefix}{setting}_mean" if random else f"{prefix}{setting}"]
            yerr = table[f"{prefix}{setting}_std"].fillna(0).to_numpy() if random else None
            offset = (j - (len(_BARS) - 1) / 2) * width
            ax.bar(x + offset, heights, width, yerr=yerr, capsize=3, label=setting)
        ax.set_xticks(x, [f"{r.instruction} (layer {r.layer})" for r in table.itertuples()])
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(ylabel)
    fig.axes[0].legend(fontsize="small", ncols=2)
    fig.suptitle(f"Directional ablation vs random unit directions ({n_seeds} seeds, mean ± sd)")
    return fig


def ablation_study(
    model: Model,
    size: Size,
    out_dir: str | os.PathLike[str],
    *,
    names: Sequence[str] = ("bullet_lists", "one_sentence"),
    seeds: Sequence[int] = (0, 1, 2),
    progress: bool = False,
) -> StudyResult:
    """How far compliance falls, and degeneration rises, when an instruction's direction is ablated.

    Per instruction, with the instruction in the prompt: its direction ablated at the validation-chosen
    layer (the fallback layer when steering did not win) and at every layer; the control ablates a random
    unit direction per layer (:func:`random_unit_directions`, one per seed) in the same two ways. Table
    columns: ``instruction, layer, no_instruction, with_instruction, ablated_layer, ablated_all,
    random_layer_mean, random_layer_std, random_all_mean, random_all_std``, the same with a
    ``degeneration_`` prefix (``no_instruction`` aside), and ``n``.
    """
    out = Path(out_dir) / "ablation"
    out.mkdir(parents=True, exist_ok=True)
    if not seeds:
        raise InvalidArgumentError("ablation needs at least one seed for the random-direction control")
    randoms = {s: random_unit_directions(model, s) for s in seeds}
    jobs, selections = [], {}
    for name in names:
        sel = selections[name] = select(model, name, size, out_dir, progress=progress)
        write_frame(sel.summary, out / f"sweep_{name}.csv", "sweep summary")
        tokens = budget(name, size)
        for item in load(name, "test").head(size.n_test).items:
            for setting, seed, instructed, ivs in _settings(sel, randoms, model.n_layers):
                labels = {"instruction": name, "layer": sel.layer, "setting": setting, "seed": seed}
                jobs.append(TestJob(labels, item, item.prompt if instructed else item.query, ivs, tokens))
    rows = run_jobs(model, jobs, size, out, progress=progress)
    rows["seed"] = rows["seed"].astype("Int64")
    table = pd.DataFrame([_record(n, s.layer, rows[rows["instruction"] == n]) for n, s in selections.items()])
    notes = [
        f"{n}: layer {s.layer} "
        + ("(chosen on validation)" if s.intervention is not None else "(fallback: steering did not win)")
        for n, s in selections.items()
    ]
    notes.append(
        f"random controls: seeds {list(seeds)}, one Gaussian direction per layer scaled to unit norm"
    )
    figures = save(_figure(table, len(seeds)), out, "ablation")
    return StudyResult(name="ablation", rows=rows, table=table, figures=figures, notes=notes)


STUDY = Study(
    "ablation",
    "Ablation of instruction directions, with the instruction in the prompt",
    ablation_study,
    report=("quick", "full"),
    order=40,
)
