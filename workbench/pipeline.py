"""The work of the ``layers`` and ``sweep`` commands once their arguments are checked and the model loaded.

Each step writes its tables and figure into a run directory and returns a :class:`Step`: the table the
command prints, the configuration and the timings that :func:`record_step` records.
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
from workbench.files import atomic_text, write_frame
from workbench.layers import find_layers
from workbench.models import Model
from workbench.plots import plot_sweep_heatmaps, save_figure
from workbench.record import new_record, write_record
from workbench.runner import Executor
from workbench.size import Size
from workbench.sweeps import Choice, choose_stolfo, grid, summarize_sweep, sweep
from workbench.vectors import SteeringVector

__all__ = ["Step", "layers_step", "record_step", "sweep_step"]


@dataclass
class Step:
    """What a step did: ``table`` to print, and the ``configuration`` and ``timings`` of its manifest."""

    table: pd.DataFrame
    configuration: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def record_step(
    run: Path, command: str, step: Step, model: Model, started: str, executor: Executor | None = None
) -> Path:
    """The run record (``run/manifest.json``) of a pipeline command: its configuration, model, executor and
    timings (model loading included)."""
    record = new_record(command, model=model, executor=executor, configuration=step.configuration)
    record["started"] = started
    record["timings"] = {
        k: round(v, 1) for k, v in {"load_model": model.load_seconds, **step.timings}.items()
    }
    return write_record(run, record, finished=True)


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
    size: str | None,
    top_k: int | None,
) -> Step:
    """:func:`~workbench.layers.find_layers` at the quick size's prompts and tokens (``size="quick"``) or
    its own; writes ``layers.{csv,parquet}``, ``signals.csv``, ``summary.csv`` and ``layers.{png,svg}``."""
    if size == "quick":
        quick = Size.quick()
        settings = {"n_validation": quick.n_validation, "max_new_tokens": quick.max_new_tokens}
        settings["top_k"] = top_k or len(quick.depths)
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
    configuration = {"dataset": dataset, "variant": variant, "coefs": list(coefs), "size": size, **settings}
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
    unit: str,
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
        grid(layers, mode=mode, coefs=coefs, unit=unit),
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
        "unit": unit,
        "n_train": len(train),
        "n_validation": len(validation),
        "max_new_tokens": max_new_tokens,
    }
    return Step(summary, configuration, timings), choice
