"""Figures (seaborn on bare matplotlib Figures, no pyplot state); :func:`save_figure` writes PNG + SVG."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from workbench.errors import InvalidArgumentError
from workbench.files import atomic_write
from workbench.recipes import pareto_front

__all__ = [
    "plot_frontier",
    "plot_layer_signals",
    "plot_projection_histograms",
    "plot_sweep_heatmaps",
    "save_figure",
]

_PICK_STYLES = {"probe_accuracy": ":", "projection_auroc": "--", "sweep": "-"}


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> list[Path]:
    """Write ``fig`` to ``path`` + ``.png`` and ``.svg`` (``path`` has no suffix); returns both paths."""
    base = Path(path)
    if base.suffix.lower() in (".png", ".svg", ".pdf"):
        raise InvalidArgumentError(
            f"pass the path without a suffix ({base.with_suffix('')}); both are written"
        )
    return [
        atomic_write(
            base.with_name(f"{base.name}.{kind}"),
            lambda tmp, kind=kind: fig.savefig(tmp, format=kind, dpi=150, bbox_inches="tight"),
            "figure",
        )
        for kind in ("png", "svg")
    ]


def plot_layer_signals(frame: pd.DataFrame, picks: Mapping[str, int | None] | None = None) -> Figure:
    """Probe accuracy (± std), projection AUROC and the sweep's target rate against layer; below, the
    held-out projections' Cohen's d (it keeps ranking layers where accuracy and AUROC saturate at 1).

    ``frame`` is a :meth:`~workbench.layers.LayerReport.to_frame`; ``picks`` (signal -> layer) draws a
    vertical line per pick.
    """
    fig = Figure(figsize=(7, 5.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    long = frame.melt(
        id_vars="layer",
        value_vars=[c for c in ("probe_accuracy", "projection_auroc", "target_rate") if c in frame],
        var_name="signal",
        value_name="score",
    )
    sns.lineplot(data=long.dropna(), x="layer", y="score", hue="signal", style="signal", markers=True, ax=top)
    top.fill_between(
        frame["layer"],
        frame["probe_accuracy"] - frame["probe_accuracy_std"],
        frame["probe_accuracy"] + frame["probe_accuracy_std"],
        alpha=0.2,
    )
    sns.lineplot(data=frame, x="layer", y="cohens_d", marker="o", color="grey", ax=bottom)
    for name, layer in (picks or {}).items():
        if layer is not None:
            for ax in (top, bottom):
                ax.axvline(
                    layer, color="k", linestyle=_PICK_STYLES.get(name, "-."), alpha=0.6, label=f"{name} pick"
                )
    top.set_ylim(-0.02, 1.02)
    top.set_title(str(frame["dataset"].iloc[0]) if "dataset" in frame else "signals by layer")
    top.legend(fontsize="small", loc="best")
    bottom.set_ylabel("Cohen's d (held out)")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def plot_projection_histograms(projections: pd.DataFrame, layer: int) -> Figure:
    """Held-out projections of positive and negative examples at ``layer`` (from ``projection_scores``)."""
    at = projections[projections["layer"] == layer]
    if at.empty:
        raise InvalidArgumentError(
            f"no projections at layer {layer}; layers are {sorted(projections['layer'].unique())}"
        )
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    sns.histplot(data=at, x="projection", hue="label", element="step", stat="count", common_bins=True, ax=ax)
    ax.set_title(f"held-out projections, layer {layer}")
    return fig


def plot_sweep_heatmaps(summary: pd.DataFrame) -> Figure:
    """Layer × coefficient heatmaps of the target rate and degeneration (``summarize_sweep``'s table; the unsteered
    reference is in the titles). A grid without coefficients (``set_projection``) has one column."""
    steered = summary[summary["mode"] != "none"].copy()
    base = summary[summary["mode"] == "none"]
    if steered["coef"].isna().all():
        steered["coef"] = "default"
    fig = Figure(figsize=(9, 0.3 * steered["layer"].nunique() + 2), layout="constrained")
    for k, column in enumerate(("target_rate", "degeneration")):
        ax = fig.add_subplot(1, 2, k + 1)
        table = steered.pivot_table(index="layer", columns="coef", values=column)
        sns.heatmap(table, vmin=0, vmax=1, annot=True, fmt=".2f", cmap="viridis", ax=ax, cbar=k == 1)
        reference = f" (none: {base[column].iloc[0]:.2f})" if len(base) else ""
        ax.set_title(column + reference)
    return fig


def _front_line(ax: Axes, frame: pd.DataFrame, x: str) -> None:
    alone = frame[frame["prompt"] == "plain"]
    front = alone[pareto_front(alone, ("target_rate",), (x,))].sort_values(x)
    ax.step(front[x], front["target_rate"], where="post", color="black", lw=1, label="Pareto front")


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
