"""The steps every instruction-following study shares: a vector, a validated setting, a test grid, bars.

:func:`build_vector` extracts an instruction's diff-in-means vector (:meth:`SteeringVector.from_dataset`);
:func:`select` sweeps its candidate layers on validation (:func:`~workbench.sweeps.sweep`, rows cached under
``out_dir/sweeps``, keyed by dataset, model fingerprint and size, so the studies of one run directory share
them) and picks with Stolfo et al.'s rule; :func:`run_jobs` generates a study's test grid with
:func:`~workbench.runner.run_grid` (resumable parts under the study folder) and scores it on every call.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from workbench.datasets import Item, load
from workbench.evaluation import evaluate
from workbench.interventions import Intervention
from workbench.models import Model
from workbench.plots import save_figure
from workbench.runner import Job, run_grid
from workbench.size import Size
from workbench.sweeps import Config, choose_stolfo, per_layer, summarize_sweep, sweep
from workbench.vectors import SteeringVector

__all__ = [
    "JSON_TOKENS",
    "Selected",
    "TestJob",
    "bars",
    "budget",
    "build_vector",
    "candidate_layers",
    "run_jobs",
    "select",
]

#: Strict JSON needs the object closed: ``json_format`` gets at least this many tokens at full size.
JSON_TOKENS = 96


def candidate_layers(model: Model, size: Size) -> list[int]:
    """The size's candidate layers for ``model`` (:meth:`Size.candidate_layers`), each checked."""
    return [model.layer_check(int(b)) for b in size.candidate_layers(model.n_layers)]


def budget(name: str, size: Size, json_tokens: int | None = None) -> int:
    """Tokens to generate for ``name``: the size's, at least :data:`JSON_TOKENS` for JSON at full size."""
    if name != "json_format":
        return size.max_new_tokens
    if json_tokens is None:
        json_tokens = JSON_TOKENS if size.max_new_tokens >= Size.full().max_new_tokens else 0
    return max(size.max_new_tokens, json_tokens)


def build_vector(model: Model, name: str, size: Size) -> SteeringVector:
    """Diff-in-means at the last prompt token, every layer, from the first ``size.n_train`` train pairs."""
    train = load(name, "train").head(size.n_train)
    return SteeringVector.from_dataset(model, train, position="last_prompt", batch_size=size.batch_size)


@dataclass(frozen=True)
class Selected:
    """What the validation sweep chose for one instruction.

    ``intervention`` is None when no steered configuration beats no steering without degenerating more
    (Stolfo et al.'s rule); ``layer`` is then a fallback (the layer with the best raw target rate) for the
    studies that need one. ``summary`` is :func:`~workbench.sweeps.summarize_sweep`'s table.
    """

    name: str
    vector: SteeringVector
    intervention: Intervention | None
    layer: int
    summary: pd.DataFrame
    config: str
    validation_target_rate: float
    baseline_target_rate: float

    def or_add(self, coef: float = 2.0) -> Intervention:
        """The chosen intervention, or ``add`` at the fallback layer with ``coef`` diff-norms when none."""
        if self.intervention is not None:
            return self.intervention
        return Intervention(self.vector, self.layer, "add", coef)

    @property
    def add_coef(self) -> float:
        """The ``add`` coefficient of :meth:`or_add` in diff-norm units (so a fallback counts at the strength
        it is used at alone); 1.0 for ``set_projection``."""
        iv = self.or_add()
        return float(iv.coef) if iv.mode == "add" and iv.coef is not None else 1.0

    def describe(self) -> dict[str, object]:
        iv = self.intervention
        return {
            "instruction": self.name,
            "config": self.config,
            "layer": self.layer if iv is not None else pd.NA,
            "mode": iv.mode if iv is not None else "none",
            "coef": np.nan if iv is None or iv.coef is None else float(iv.coef),
            "validation_target_rate": self.validation_target_rate,
            "validation_baseline": self.baseline_target_rate,
        }


def _sweep_dir(run: Path, model: Model, name: str, size: Size, tokens: int) -> Path:
    key = json.dumps([model.fingerprint, name, size.n_train, size.batch_size, tokens])
    return run / "sweeps" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def select(
    model: Model,
    name: str,
    size: Size,
    out_dir: str | os.PathLike[str],
    *,
    coefs: Sequence[float] = (1.0, 2.0),
    json_tokens: int | None = None,
    max_new_tokens: int | None = None,
    gate: str = "degeneration",
    progress: bool = False,
) -> Selected:
    """Build ``name``'s vector and sweep the candidate layers on its validation split.

    Per layer: ``set_projection`` (to the positive set's mean projection) and ``add`` at each of ``coefs``
    (diff-norm units), all positions; :func:`~workbench.sweeps.choose_stolfo` picks under ``gate`` (its
    ``perplexity`` gate scores each answer's perplexity alone under ``model`` itself, the reference here). Responses get
    ``max_new_tokens`` (default: the size's, :data:`JSON_TOKENS` for JSON at full size). Rows are cached
    under ``out_dir/sweeps``.
    """
    vector = build_vector(model, name, size)
    layers = candidate_layers(model, size)
    configs = [Config()]
    for layer in layers:
        configs += [Config(layer, "set_projection"), *(Config(layer, "add", float(c)) for c in coefs)]
    tokens = max_new_tokens or budget(name, size, json_tokens)
    rows = sweep(
        model,
        vector,
        load(name, "validation").head(size.n_validation),
        configs,
        max_new_tokens=tokens,
        batch_size=size.batch_size,
        out_dir=_sweep_dir(Path(out_dir), model, name, size, tokens),
        reference=None if gate == "degeneration" else model,
        progress=progress,
    )
    summary = summarize_sweep(rows)
    picked = choose_stolfo(summary, gate)
    if picked.layer is not None:
        row = summary[summary["config"] == picked.config].iloc[0]
        iv: Intervention | None = Intervention(vector, picked.layer, str(row["mode"]), picked.coef)
        layer = picked.layer
    else:
        iv = None
        layers_table = per_layer(summary)
        middle = layers[len(layers) // 2]
        order = layers_table.assign(_d=(layers_table["layer"] - middle).abs())
        order = order.sort_values(["max_target_rate", "_d"], ascending=[False, True], kind="stable")
        layer = int(order.iloc[0]["layer"]) if len(order) else middle
    return Selected(
        name=name,
        vector=vector,
        intervention=iv,
        layer=layer,
        summary=summary,
        config=picked.config,
        validation_target_rate=picked.target_rate,
        baseline_target_rate=picked.baseline_target_rate,
    )


@dataclass(frozen=True)
class TestJob:
    """One test generation: a prompt, its item (for checking), the interventions, labels for the table."""

    labels: dict[str, object]
    item: Item
    prompt: str
    interventions: tuple[Intervention, ...]
    max_new_tokens: int


def _truncate(model: Model, text: str, n_tokens: int) -> str:
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= n_tokens:
        return text
    return model.tokenizer.decode(ids[:n_tokens], skip_special_tokens=True).strip()


def run_jobs(
    model: Model, jobs: Sequence[TestJob], size: Size, out: Path, *, progress: bool = False
) -> pd.DataFrame:
    """Generate every job with :func:`~workbench.runner.run_grid` and score it; one row per job.

    Identical (prompt, interventions) pairs are generated once. The grid generates the largest budget of
    all jobs (parts under ``out/grids``); a job with a smaller budget is scored on its response cut to
    that many tokens (greedy decoding makes that the response it would have got). Columns: the jobs'
    labels, ``id, prompt, interventions, max_new_tokens, response`` and
    :func:`workbench.evaluation.evaluate`'s scores (checks, counts, language, degeneration).
    """
    longest = max(job.max_new_tokens for job in jobs)

    def score(rows: pd.DataFrame) -> pd.DataFrame:
        responses = [
            r if job.max_new_tokens >= longest else _truncate(model, r, job.max_new_tokens)
            for job, r in zip(jobs, rows["response"], strict=True)
        ]
        scores = evaluate(responses, [job.item for job in jobs]).drop(columns=["id", "response"])
        base = rows[["id", "prompt", "interventions"]].assign(
            max_new_tokens=[job.max_new_tokens for job in jobs], response=responses
        )
        return pd.concat([pd.DataFrame([job.labels for job in jobs]), base, scores], axis=1)

    grid = [
        Job(
            "; ".join(iv.label for iv in job.interventions) or "none",
            job.item.id,
            job.prompt,
            job.interventions,
        )
        for job in jobs
    ]
    return run_grid(
        model,
        grid,
        max_new_tokens=longest,
        score=score,
        out_dir=out / "grids" / f"{model.fingerprint}-{longest}",
        batch_size=size.batch_size,
        progress=progress,
    )


def save(fig: Figure, out: Path, stem: str) -> list[Path]:
    """:func:`~workbench.plots.save_figure` of ``fig`` as ``out/stem`` (PNG and SVG)."""
    return save_figure(fig, out / stem)


def bars(table: pd.DataFrame, groups: str, columns: Sequence[str], title: str, ylabel: str) -> Figure:
    """Grouped bars: one group per row of ``table`` (labelled by ``groups``), one bar per column."""
    fig = Figure(figsize=(max(6.0, 1.2 * len(table) + 2), 4), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(columns)
    x = np.arange(len(table))
    for k, column in enumerate(columns):
        ax.bar(x + (k - (len(columns) - 1) / 2) * width, table[column].astype(float), width, label=column)
    ax.set_xticks(x, [str(v) for v in table[groups]], rotation=30, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small", ncols=2)
    return fig
