"""Which layer to steer? Cheap signals (probes, projections) and the behavioural sweep, side by side.

:func:`find_layers` extracts activations of a contrastive set's *train* split, scores every candidate layer by
nested-CV probe accuracy (:func:`~workbench.probing.probe_layers`) and by how a train-split diff-in-means
direction separates the *validation* split (:func:`~workbench.projection.projection_scores`), then steers
validation prompts without their instruction at each candidate layer (:func:`~workbench.sweeps.sweep`) and
picks a configuration with Stolfo et al.'s rule (:func:`~workbench.sweeps.choose_stolfo`). ``top_k`` sweeps only the
``k`` best layers of the cheap ranking.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from scipy.stats import spearmanr

from workbench.activations import collect
from workbench.datasets import ContrastiveSet, load
from workbench.errors import InvalidArgumentError
from workbench.models import Model
from workbench.probing import probe_layers
from workbench.projection import projection_scores
from workbench.sweeps import Choice, choose_stolfo, grid, per_layer, summarize_sweep, sweep
from workbench.vectors import SteeringVector

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["CHEAP_RANKING", "SIGNALS", "LayerReport", "find_layers", "rank_layers"]

#: The cheap ranking ``top_k`` sweeps by: projection AUROC, ties broken by probe accuracy, then Cohen's d.
CHEAP_RANKING = ("projection_auroc", "probe_accuracy", "cohens_d")
#: How each cheap signal picks its layer (lexicographic, higher is better; the earlier layer wins a full tie).
#: Cohen's d of the held-out projections keeps ranking layers where accuracy and AUROC saturate at 1.
SIGNALS: dict[str, tuple[str, ...]] = {
    "probe_accuracy": ("probe_accuracy", "probe_auroc", "cohens_d"),
    "projection_auroc": CHEAP_RANKING,
    "cohens_d": ("cohens_d",),
}


def rank_layers(frame: pd.DataFrame, by: Sequence[str] = CHEAP_RANKING) -> list[int]:
    """Layers of ``frame`` (a :meth:`LayerReport.to_frame`) best first by the columns ``by``, descending."""
    ordered = frame.sort_values([*by, "layer"], ascending=[False] * len(by) + [True], kind="stable")
    return [int(layer) for layer in ordered["layer"]]


def _cheap_signals(probes: pd.DataFrame, projection: pd.DataFrame) -> pd.DataFrame:
    probes = probes.rename(
        columns={
            "accuracy": "probe_accuracy",
            "accuracy_std": "probe_accuracy_std",
            "auroc": "probe_auroc",
            "auroc_std": "probe_auroc_std",
            "C": "probe_C",
        }
    )
    projection = projection.rename(columns={"auroc": "projection_auroc"})
    return probes.merge(projection[["layer", "projection_auroc", "cohens_d"]], on="layer")


@dataclass(frozen=True)
class LayerReport:
    """Everything :func:`find_layers` measured.

    ``probes``, ``projection``: per-layer cheap signals; ``projections``: held-out projections (tidy, for
    histograms); ``results``: one row per (config, prompt) of the sweep, ``summary``: one row per config;
    ``choice``: the sweep's pick. ``swept_layers`` is every candidate layer, or the top ``k`` in ``top_k``
    mode; ``configs_run`` / ``configs_full`` count the configurations swept / of the full sweep.
    """

    dataset: str
    layers: tuple[int, ...]
    swept_layers: tuple[int, ...]
    probes: pd.DataFrame
    projection: pd.DataFrame
    projections: pd.DataFrame
    results: pd.DataFrame
    summary: pd.DataFrame
    choice: Choice
    vector: SteeringVector
    configs_run: int
    configs_full: int

    @property
    def cost(self) -> float:
        """Configurations swept as a share of the full sweep's (1.0 without ``top_k``)."""
        return self.configs_run / self.configs_full

    def to_frame(self) -> pd.DataFrame:
        """One row per candidate layer: probe and projection scores, and what the sweep's rule gives there.

        ``target_rate``/``degeneration``/``coef``/``steers`` come from :func:`~workbench.sweeps.per_layer`
        (NaN for layers not swept); ``swept`` says which layers were.
        """
        frame = _cheap_signals(self.probes, self.projection)
        frame = frame.merge(per_layer(self.summary), on="layer", how="left")
        frame.insert(1, "swept", frame["layer"].isin(self.swept_layers))
        frame.insert(0, "dataset", self.dataset)
        return frame

    @property
    def picks(self) -> dict[str, int | None]:
        """The layer each signal picks: the two cheap signals, and ``sweep`` (None: do not steer)."""
        frame = self.to_frame()
        picks: dict[str, int | None] = {name: rank_layers(frame, by)[0] for name, by in SIGNALS.items()}
        picks["sweep"] = self.choice.layer
        return picks

    def signals(self) -> pd.DataFrame:
        """Per signal: its layer, the target rate the sweep's rule gets there, the loss against the sweep's own
        pick, and Spearman's rho across swept layers between the signal and that per-layer target rate
        (``spearman``) or the layer's best target rate ignoring degeneration (``spearman_max``); NaN where
        either side is constant."""
        frame = self.to_frame()
        swept = frame[frame["swept"]].set_index("layer")

        def rho(a: pd.Series, b: pd.Series) -> float:
            varies = a.nunique() > 1 and b.nunique() > 1
            return float(spearmanr(a, b).statistic) if varies else float("nan")

        rows: list[dict[str, Any]] = []
        for name, layer in self.picks.items():
            cheap = name != "sweep"
            rate = float(swept["target_rate"].get(layer, float("nan"))) if cheap else self.choice.target_rate
            rows.append(
                {
                    "dataset": self.dataset,
                    "signal": name,
                    "layer": layer,
                    "target_rate": rate,
                    "target_rate_loss": self.choice.target_rate - rate,
                    "spearman": rho(swept[name], swept["target_rate"]) if cheap else float("nan"),
                    "spearman_max": rho(swept[name], swept["max_target_rate"]) if cheap else float("nan"),
                }
            )
        return pd.DataFrame(rows)

    def top_k(self, k: int) -> LayerReport:
        """What ``find_layers(..., top_k=k)`` reports, read from this sweep (nothing is generated): the sweep
        held to the best ``k`` layers of :data:`CHEAP_RANKING`."""
        if not isinstance(k, int) or not 1 <= k <= len(self.layers):
            raise InvalidArgumentError(f"k must be an integer from 1 to {len(self.layers)}, got {k!r}")
        swept = tuple(sorted(rank_layers(_cheap_signals(self.probes, self.projection))[:k]))
        if not set(swept) <= set(self.swept_layers):
            raise InvalidArgumentError(
                f"top_k={k} needs layers {swept}, but this report swept {self.swept_layers}"
            )
        results = self.results[self.results["layer"].isna() | self.results["layer"].isin(swept)]
        summary = summarize_sweep(results.reset_index(drop=True))
        return dataclasses.replace(
            self,
            swept_layers=swept,
            results=results.reset_index(drop=True),
            summary=summary,
            choice=choose_stolfo(summary),
            configs_run=len(summary),
        )

    def plot(self) -> Figure:
        """The per-layer signals with each pick marked (a matplotlib Figure)."""
        from workbench.plots import plot_layer_signals

        return plot_layer_signals(self.to_frame(), picks=self.picks)


def _checked_layers(
    model: Model, layers: Sequence[int] | None, top_k: int | None, n_validation: int, n_available: int
) -> tuple[int, ...]:
    """:func:`find_layers`'s candidate blocks (default all), or a one-line error for an empty list, a
    ``top_k`` beyond them or an ``n_validation`` beyond the ``n_available`` validation prompts."""
    checked = tuple(range(model.n_layers)) if layers is None else tuple(model.layer_check(b) for b in layers)
    if not checked:
        raise InvalidArgumentError("layers is empty: pass at least one block index, or None for all")
    if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= len(checked)):
        raise InvalidArgumentError(f"top_k must be an integer from 1 to {len(checked)}, got {top_k!r}")
    if not isinstance(n_validation, int) or not 1 <= n_validation <= n_available:
        raise InvalidArgumentError(f"n_validation must be from 1 to {n_available}, got {n_validation!r}")
    return checked


def find_layers(
    model: Model,
    dataset: str,
    *,
    variant: str | None = None,
    layers: Sequence[int] | None = None,
    position: str | int = "last_prompt",
    coefs: Sequence[float] = (1.0, 2.0, 4.0),
    mode: str = "add",
    unit: str = "diff_norm",
    top_k: int | None = None,
    n_validation: int = 24,
    max_new_tokens: int = 40,
    batch_size: int = 32,
    folds: int = 5,
    seed: int = 0,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> LayerReport:
    """Score the candidate ``layers`` (default all) of ``model`` for steering the behaviour of ``dataset``.

    Probes and the steering vector use the train split; projections are scored on the whole validation
    split; the sweep steers the first ``n_validation`` validation prompts without their instruction, greedy,
    ``max_new_tokens`` tokens, with ``mode`` at ``coefs`` (in ``unit``; ``set_projection`` and
    ``ablate`` take none). ``top_k`` sweeps only the best ``k`` layers of :data:`CHEAP_RANKING`. With
    ``out_dir`` the sweep's rows are saved under ``out_dir/sweep`` and a rerun (also with another ``top_k``)
    reuses them.
    """
    train = load(dataset, "train", variant=variant)
    validation = load(dataset, "validation", variant=variant)
    layers = _checked_layers(model, layers, top_k, n_validation, len(validation))

    def acts(split: ContrastiveSet) -> tuple[Any, Any]:
        kw = {"layers": layers, "position": position, "batch_size": batch_size, "progress": progress}
        return collect(model, split.positive, **kw), collect(model, split.negative, **kw)

    vector = SteeringVector.from_dataset(
        model, train, layers=layers, position=position, batch_size=batch_size, progress=progress
    )
    train_pos, train_neg = acts(train)  # read back from collect's cache
    val_pos, val_neg = acts(validation)
    probes = probe_layers(train_pos, train_neg, folds=folds, seed=seed)
    projection, projections = projection_scores(train_pos, train_neg, val_pos, val_neg)

    cheap = _cheap_signals(probes, projection)
    swept = tuple(sorted(rank_layers(cheap)[:top_k])) if top_k is not None else layers
    configs = grid(swept, mode=mode, coefs=coefs, unit=unit)
    prompts = validation.head(n_validation)
    results = sweep(
        model,
        vector,
        prompts,
        configs,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        out_dir=None if out_dir is None else Path(out_dir) / "sweep",
        progress=progress,
    )
    summary = summarize_sweep(results)
    name = dataset if variant is None else f"{dataset}:{variant}"
    return LayerReport(
        dataset=name,
        layers=layers,
        swept_layers=swept,
        probes=probes,
        projection=projection,
        projections=projections,
        results=results,
        summary=summary,
        choice=choose_stolfo(summary),
        vector=vector,
        configs_run=len(configs),
        configs_full=len(grid(layers, mode=mode, coefs=coefs)),
    )
