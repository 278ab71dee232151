"""Figures (seaborn on bare matplotlib Figures, no pyplot state) and :func:`save_figure` for PNG + SVG."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from workbench.errors import InvalidArgumentError, OutputPathError

__all__ = ["plot_layer_signals", "plot_projection_histograms", "plot_sweep_heatmaps", "save_figure"]

_PICK_STYLES = {"probe_accuracy": ":", "projection_auroc": "--", "sweep": "-"}


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> list[Path]:
    """Write ``fig`` to ``path`` + ``.png`` and ``.svg`` (``path`` has no suffix); returns both paths."""
    base = Path(path)
    if base.suffix.lower() in (".png", ".svg", ".pdf"):
        raise InvalidArgumentError(
            f"pass the path without a suffix ({base.with_suffix('')}); both are written"
        )
    written = []
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        for suffix in (".png", ".svg"):
            target = base.with_name(base.name + suffix)
            fig.savefig(target, dpi=150, bbox_inches="tight")
            written.append(target)
    except OSError as e:
        raise OutputPathError(f"cannot write the figure to {base} ({e.strerror or e})") from None
    return written


def plot_layer_signals(frame: pd.DataFrame, picks: Mapping[str, int | None] | None = None) -> Figure:
    """Probe accuracy (± std), projection AUROC and the sweep's compliance against layer; below, the
    held-out projections' Cohen's d (it keeps ranking layers where accuracy and AUROC saturate at 1).

    ``frame`` is a :meth:`~workbench.layers.LayerReport.to_frame`; ``picks`` (signal -> layer) draws a
    vertical line per pick.
    """
    fig = Figure(figsize=(7, 5.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    long = frame.melt(
        id_vars="layer",
        value_vars=[c for c in ("probe_accuracy", "projection_auroc", "compliance") if c in frame],
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
    """Layer × coefficient heatmaps of compliance and degeneration (``summarize``'s table; the unsteered
    reference is in the titles). A grid without coefficients (``set_projection``) has one column."""
    steered = summary[summary["mode"] != "none"].copy()
    base = summary[summary["mode"] == "none"]
    if steered["coef"].isna().all():
        steered["coef"] = "default"
    fig = Figure(figsize=(9, 0.3 * steered["layer"].nunique() + 2), layout="constrained")
    for k, column in enumerate(("compliance", "degeneration")):
        ax = fig.add_subplot(1, 2, k + 1)
        table = steered.pivot_table(index="layer", columns="coef", values=column)
        sns.heatmap(table, vmin=0, vmax=1, annot=True, fmt=".2f", cmap="viridis", ax=ax, cbar=k == 1)
        reference = f" (none: {base[column].iloc[0]:.2f})" if len(base) else ""
        ax.set_title(column + reference)
    return fig
