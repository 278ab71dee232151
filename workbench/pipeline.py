"""The work of the ``layers`` and ``sweep`` commands once their arguments are checked and the model loaded.

Each step writes its tables and figure into a run directory and returns a :class:`Step`: the table the
command prints, the configuration and the timings that :func:`write_step_manifest` records.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.datasets import ContrastiveSet
from workbench.layers import find_layers
from workbench.models import Model
from workbench.plots import plot_sweep_heatmaps, save_figure
from workbench.runner import Executor
from workbench.runs import atomic_text, utc_now, write_frame, write_manifest
from workbench.studies.common import Size
from workbench.sweeps import Choice, choose_stolfo, grid, summarize_sweep, sweep
from workbench.vectors import SteeringVector

__all__ = ["Step", "layers_step", "sweep_step", "write_step_manifest"]


@dataclass
class Step:
    """What a step did: ``table`` to print, and the ``configuration`` and ``timings`` of its manifest."""

    table: pd.DataFrame
    configuration: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def write_step_manifest(
    run: Path,
    command: str,
    configuration: dict[str, Any],
    model: Model,
    timings: dict[str, float],
    started: str,
) -> Path:
    """``run/manifest.json`` of a pipeline command: its configuration, model, seeds, timings and times."""
    return write_manifest(
        run,
        {
            "command": command,
            "configuration": configuration,
            "model": {
                "name": model.name,
                "weights_hash": model.weights_hash,
                "source": model.source,
                "load_seconds": round(model.load_seconds, 1),
            },
            "seeds": {"generation": "greedy decoding (no sampling)", **configuration.get("seeds", {})},
            "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
            "started": started,
            "finished": utc_now(),
        },
    )


def _write(run: Path, tables: dict[str, pd.DataFrame]) -> None:
    for name, table in tables.items():
        write_frame(table, run / name)


def layers_step(
    model: Model,
    dataset: str,
    run: Path,
    *,
    variant: str | None,
    coefs: Sequence[float],
    quick: bool,
    top_k: int | None,
) -> Step:
    """:func:`~workbench.layers.find_layers` at :meth:`Size.quick`'s sizes (``quick``) or its own; writes
    ``layers.{csv,parquet}``, ``signals.csv``, ``summary.csv`` and ``layers.{png,svg}`` into ``run``."""
    if quick:
        size = Size.quick()
        settings = {"n_validation": size.n_validation, "max_new_tokens": size.max_new_tokens}
        settings["top_k"] = top_k or len(size.depths)
    else:
        defaults = inspect.signature(find_layers).parameters
        settings = {k: defaults[k].default for k in ("n_validation", "max_new_tokens")} | {"top_k": top_k}
    tick = time.perf_counter()
    found = find_layers(model, dataset, variant=variant, coefs=coefs, out_dir=run, progress=True, **settings)
    seconds = time.perf_counter() - tick
    frame, signals = found.to_frame(), found.signals()
    tables = {"layers.csv": frame, "layers.parquet": frame, "signals.csv": signals}
    _write(run, {**tables, "summary.csv": found.summary})
    save_figure(found.plot(), run / "layers")
    configuration = {"dataset": dataset, "variant": variant, "coefs": list(coefs), "quick": quick, **settings}
    return Step(signals, configuration, {"find_layers": seconds})


def sweep_step(
    model: Model,
    train: ContrastiveSet,
    validation: ContrastiveSet,
    run: Path,
    *,
    layers: Sequence[int],
    coefs: Sequence[float],
    mode: str,
    scale: str,
    max_new_tokens: int,
    executor: Executor | None = None,
) -> tuple[Step, Choice]:
    """A diff-in-means vector from ``train`` at ``layers``, then :func:`~workbench.sweeps.sweep` of
    ``validation`` over layers × ``coefs`` (rows cached under ``run/parts``, run by ``executor``); writes
    ``rows.{csv,parquet}``, ``summary.csv``, ``choice.json``, ``vector.safetensors`` and ``sweep.{png,svg}``."""
    tick = time.perf_counter()
    vector = SteeringVector.from_dataset(model, train, layers=layers, progress=True)
    timings = {"vector": time.perf_counter() - tick}
    tick = time.perf_counter()
    rows = sweep(
        model,
        vector,
        validation,
        grid(layers, mode=mode, coefs=coefs),
        scale=scale,
        max_new_tokens=max_new_tokens,
        out_dir=run / "parts",
        executor=executor,
        progress=True,
    )
    timings["sweep"] = time.perf_counter() - tick
    summary = summarize_sweep(rows)
    choice = choose_stolfo(summary)
    _write(run, {"rows.parquet": rows, "rows.csv": rows, "summary.csv": summary})
    atomic_text(run / "choice.json", json.dumps(asdict(choice), indent=1), "choice")
    vector.save(run / "vector.safetensors")
    save_figure(plot_sweep_heatmaps(summary), run / "sweep")
    configuration = {
        "dataset": train.name,
        "variant": train.variant,
        "layers": list(layers),
        "coefs": list(coefs),
        "mode": mode,
        "scale": scale,
        "n_train": len(train),
        "n_validation": len(validation),
        "max_new_tokens": max_new_tokens,
    }
    return Step(summary, configuration, timings), choice
