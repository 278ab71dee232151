"""The report: every study on one model, written incrementally under one run directory.

:func:`run_report` runs the instruction-following studies (:mod:`workbench.studies.instructions`), the
Italian study and the base-model study (:mod:`workbench.studies.italian`, skipped with a note where it is
missing) and writes, under ``out_dir``:

* ``<study>/table.{parquet,csv}``, ``<study>/rows.{parquet,csv}``, the study's figures (PNG + SVG) and
  extra tables, as soon as the study finishes (atomic renames);
* ``manifest.json``: configuration, package versions, model weights hash, seeds, start and end times, and
  per study its status, timing, outputs and the key of the configuration it ran with;
* ``report.md`` and ``report.html``: the headline tables, notes and figures (relative image links),
  rewritten after every study, so a run that stops early still leaves a readable report.

A rerun with the same ``out_dir`` reuses every study whose outputs exist and whose key matches the current
configuration, and runs the rest (a study that stopped half-way resumes from its cached sweep rows).

``quick`` is a smoke test of every study, not a small report: :meth:`Size.quick`'s handful of prompts and
tokens, two candidate layers, and :data:`QUICK_FORMATS` only (about 3 minutes on 2 CPU cores).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from workbench import evaluation, presets
from workbench.errors import InvalidArgumentError, WorkbenchError
from workbench.models import DEFAULT_SPEC, Model, load_model
from workbench.paths import check_writable
from workbench.runs import (  # markdown_table, package_versions, write_manifest: re-exported for one release
    MANIFEST,
    json_default,
    markdown_table,
    package_versions,
    read_manifest,
    utc_now,
    write_manifest,
)
from workbench.studies.common import LARGE_MODEL_PARAMS, Size, SizeName, StudyResult, study_size
from workbench.studies.render import render

__all__ = [
    "ABLATION_SEEDS",
    "EXTRA_STUDIES",
    "LARGE_BEHAVIOURS",
    "LARGE_FORMATS",
    "LARGE_STUDIES",
    "STUDIES",
    "StudyError",
    "StudyName",
    "markdown_table",
    "package_versions",
    "report_kind",
    "report_scale",
    "report_size",
    "run_report",
    "write_manifest",
]

#: The studies a report can run.
StudyName = Literal[
    "format", "length", "composition", "ablation", "italian", "base_model", "presets", "frontier", "baselines"
]
#: Every study of the report, in report order.
STUDIES: tuple[StudyName, ...] = (
    "format",
    "length",
    "composition",
    "ablation",
    "italian",
    "base_model",
    "presets",
)
#: The studies of a large model's report (:meth:`Size.large`): three formats, Italian and a reduced frontier.
LARGE_STUDIES: tuple[StudyName, ...] = ("format", "italian", "frontier")
#: Format instructions of a large model's report: a format, a constraint and a length (Stolfo et al.'s kinds).
LARGE_FORMATS = ("json_format", "no_comma", "one_sentence")
#: Behaviours of a large model's frontier search (searched as wide as :meth:`Plan.reduced`).
LARGE_BEHAVIOURS = ("json", "italian")
#: JSON's token budget in a large model's report (:data:`~workbench.studies.steps.JSON_TOKENS` at full size).
LARGE_JSON_TOKENS = 64
#: Studies that run on request only: the frontier search that chose the presets (about an hour on 2 CPU
#: cores at full size, so not part of the report) and the baselines study (about 30 min).
EXTRA_STUDIES: tuple[StudyName, ...] = ("frontier", "baselines")
#: Seeds of the random-direction control of the ablation study.
ABLATION_SEEDS = (0, 1, 2)
#: Format instructions of a quick report: the two whose sweeps the composition and ablation studies reuse.
QUICK_FORMATS = ("bullet_lists", "no_comma")
#: Folders a study may write (the base-model study writes ``italian_base_model``); only these are ever removed.
STUDY_DIRS = (*STUDIES, *EXTRA_STUDIES, "italian_base_model")


class StudyError(WorkbenchError):
    """One or more studies of a report failed; the others and the report were still written."""


def report_size(quick: bool) -> Size:
    """:meth:`Size.quick` or :meth:`Size.full`."""
    return Size.named("quick" if quick else "full")


def report_kind(quick: bool, model: Model | None) -> SizeName:
    """``quick``; ``large`` for a model of :data:`~workbench.studies.common.LARGE_MODEL_PARAMS` or more;
    else ``full``."""
    if quick:
        return "quick"
    return "large" if model is not None and model.n_params >= LARGE_MODEL_PARAMS else "full"


#: The former name of :func:`report_size`.
report_scale = report_size


# ---- running -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    """What a study runner gets: the loaded model (None for the base-model study alone), size, folder."""

    model: Model | None
    size: Size
    out: Path
    kind: SizeName
    progress: bool

    @property
    def quick(self) -> bool:
        return self.kind == "quick"

    @property
    def loaded(self) -> Model:
        if self.model is None:
            raise InvalidArgumentError("this study needs a model: pass a spec or a loaded Model")
        return self.model


Runner = Callable[[_Run], "StudyResult | str"]


def _instruction_runner(name: str) -> Runner:
    def run(job: _Run) -> StudyResult | str:
        from workbench.studies import instructions

        study = getattr(instructions, f"{name}_study")
        knobs: dict[str, Any] = {"seeds": ABLATION_SEEDS} if name == "ablation" else {}
        if name == "format" and job.quick:
            knobs["names"] = QUICK_FORMATS
        if name == "format" and job.kind == "large":
            knobs |= {"names": LARGE_FORMATS, "json_tokens": LARGE_JSON_TOKENS}
        return study(job.loaded, job.size, job.out, progress=job.progress, **knobs)

    return run


def _italian_function(attribute: str) -> Callable[..., Any] | str:
    try:
        module = importlib.import_module("workbench.studies.italian")
    except ImportError as e:
        return f"not run: workbench.studies.italian cannot be imported ({e})"
    function = getattr(module, attribute, None)
    return function if callable(function) else f"not run: workbench.studies.italian has no {attribute}()"


def _italian(job: _Run) -> StudyResult | str:
    function = _italian_function("italian_study")
    return function if isinstance(function, str) else function(job.loaded, job.size, job.out)


def _base_model(job: _Run) -> StudyResult | str:
    function = _italian_function("base_model_study")
    if isinstance(function, str):
        return function
    result = function(replace(job.size, layers=None), job.out)
    return "not run: the Gemma 3 270M base model is not installed" if result is None else result


def _frontier_runner(name: str) -> Runner:
    def run(job: _Run) -> StudyResult | str:
        from workbench.studies import frontier

        knobs: dict[str, Any] = {"quick": job.quick}
        if name == "frontier" and job.kind == "large":
            knobs = {"behaviours": LARGE_BEHAVIOURS, "base_model": False, "quick": False}
            knobs["plan"] = frontier.Plan.reduced()
        study = getattr(frontier, f"{name}_study")
        return study(job.loaded, study_size(name, job.size), job.out, progress=job.progress, **knobs)

    return run


def _baselines(job: _Run) -> StudyResult:
    from workbench.studies.baselines import baselines_study

    return baselines_study(job.loaded, study_size("baselines", job.size), job.out)


RUNNERS: dict[StudyName, Runner] = {
    **{name: _instruction_runner(name) for name in ("format", "length", "composition", "ablation")},
    "italian": _italian,
    "base_model": _base_model,
    **{name: _frontier_runner(name) for name in ("presets", "frontier")},
    "baselines": _baselines,
}


def _study_key(name: str, configuration: dict[str, Any]) -> str:
    if name == "base_model":  # its own model: only the size and the study matter
        relevant = {"quick": configuration.get("quick"), "size": {**configuration["size"], "layers": None}}
    else:
        relevant = dict(configuration)
    if name in ("presets", "italian"):  # they run the bundled presets: new presets, new results
        relevant["presets"] = hashlib.sha256(presets.BUNDLED.read_bytes()).hexdigest()
    text = json.dumps(
        {"study": name, "scorer": evaluation.SCORER_VERSION, **relevant}, sort_keys=True, default=json_default
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _log(message: str) -> None:
    print(f"[report {datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _manifest(model_spec: str | Model, model: Model | None, configuration: dict[str, Any], run: Path) -> dict:
    """The run's manifest: this run's configuration, and the studies an earlier run of ``run`` recorded."""
    started = utc_now()
    previous = read_manifest(run)
    done: dict[str, dict[str, Any]] = dict(previous.get("studies", {}))
    return {
        "command": "report",
        "configuration": configuration,
        "model": {
            "spec": model_spec if isinstance(model_spec, str) else model_spec.name,
            "name": configuration["model"],
            "weights_hash": configuration["weights_hash"],
            "source": getattr(model, "source", None),
            "load_seconds": getattr(model, "load_seconds", None),
            "n_params": model.n_params if model is not None else None,
            "dtype": str(model.dtype).removeprefix("torch.") if model is not None else None,
        },
        "seeds": {
            "generation": "greedy decoding (no sampling)",
            "ablation_random_directions": list(ABLATION_SEEDS),
        },
        "versions": package_versions(),
        "started": previous.get("started", started) if done else started,
        "this_run_started": started,
        "studies": done,
    }


def _reusable_tables(
    run: Path, studies: dict[str, dict[str, Any]], configuration: dict
) -> dict[str, pd.DataFrame]:
    """Tables of the finished studies of this configuration; the others are marked stale (kept on disk)."""
    tables: dict[str, pd.DataFrame] = {}
    for name, info in studies.items():
        info.pop("stale", None)
        table = run / info.get("dir", name) / "table.parquet"
        if info.get("key") != _study_key(name, configuration):
            info["stale"] = True
        elif info.get("status") == "done" and table.exists():
            tables[name] = pd.read_parquet(table)
    return tables


def _run_study(name: str, job: _Run) -> tuple[dict, Any]:
    """Run one study: its manifest entry (status, notes, figures, timing) and its table (None if none)."""
    began, tick = utc_now(), time.perf_counter()
    entry: dict[str, Any] = {"started": began}
    table = None
    try:
        result = RUNNERS[name](job)
    except Exception as e:  # recorded; the caller goes on with the other studies and raises at the end
        entry |= {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    else:
        if isinstance(result, str):
            entry |= {"status": "unavailable", "notes": [result]}
        else:
            result.write(job.out)
            figures = [os.path.relpath(Path(p), job.out).replace(os.sep, "/") for p in result.figures]
            entry |= {
                "status": "done",
                "dir": result.name,
                "notes": list(result.notes),
                "figures": figures,
                "table": f"{result.name}/table.parquet",
                "rows": len(result.rows),
            }
            if result.size is not None:
                entry["size"] = asdict(result.size)
            table = result.table
    entry |= {"finished": utc_now(), "seconds": round(time.perf_counter() - tick, 1)}
    return entry, table


def _load(model_spec: str | Model, wanted: Sequence[str] | None, dtype: str | None) -> Model | None:
    if isinstance(model_spec, Model):
        return model_spec
    if wanted is not None and all(s == "base_model" for s in wanted):  # it loads its own model
        return None
    _log(f"loading {model_spec}" + (f" in {dtype}" if dtype else ""))
    return load_model(model_spec, dtype=dtype)


def run_report(
    model_spec: str | Model = DEFAULT_SPEC,
    *,
    quick: bool = False,
    out_dir: str | os.PathLike[str] = "runs/report",
    studies: Sequence[StudyName] | None = None,
    size: Size | None = None,
    kind: SizeName | None = None,
    dtype: str | None = None,
    progress: bool = True,
) -> Path:
    """Run ``studies`` on ``model_spec`` (a spec, loaded in ``dtype``, or a loaded Model) into ``out_dir``.

    The report's ``kind`` (default :func:`report_kind`) sets its size and default studies: :data:`STUDIES` at
    :meth:`Size.full`; for a model of a billion parameters or more, :data:`LARGE_STUDIES` at
    :meth:`Size.large` (:data:`LARGE_FORMATS`, and the frontier search of :data:`LARGE_BEHAVIOURS` as wide
    as :meth:`~workbench.studies.search.Plan.reduced`); :data:`EXTRA_STUDIES` run on request. ``size``
    overrides the kind's size. Returns the path of ``report.md``.
    Studies already finished in ``out_dir`` with the same configuration are reused, not rerun. A study
    that raises is recorded as failed in the manifest and the report, the remaining studies still run, and
    :class:`StudyError` is raised at the end.
    """
    unknown = [s for s in studies or () if s not in RUNNERS]
    if unknown or (studies is not None and not studies):
        raise InvalidArgumentError(f"unknown or no studies {unknown}; choose from {', '.join(RUNNERS)}")
    if kind is not None:
        Size.named(kind)  # an unknown kind fails before the model loads
    run = Path(out_dir)
    check_writable(run / MANIFEST)  # before the model loads
    clock = time.perf_counter()
    model = _load(model_spec, studies, dtype)
    kind = kind or report_kind(quick, model)
    quick = kind == "quick"
    wanted = list(studies or (LARGE_STUDIES if kind == "large" else STUDIES))
    size = size or Size.named(kind)
    configuration = {
        "model": model.name if model is not None else str(model_spec),
        "weights_hash": model.weights_hash if model is not None else None,
        "fingerprint": model.fingerprint if model is not None else None,
        "quick": quick,
        "kind": kind,
        "size": asdict(size),
        "ablation_seeds": list(ABLATION_SEEDS),
    }
    manifest = _manifest(model_spec, model, configuration, run)
    done = manifest["studies"]
    tables = _reusable_tables(run, done, configuration)
    job = _Run(model, size, run, kind, progress)

    def save() -> None:
        manifest["updated"] = utc_now()
        manifest["seconds_this_run"] = round(time.perf_counter() - clock, 1)
        write_manifest(run, manifest)
        render(run, manifest, tables, (*STUDIES, *EXTRA_STUDIES))

    save()
    for name in wanted:
        key = _study_key(name, configuration)
        old = done.get(name, {})
        folder = run / old.get("dir", name)
        if old.get("status") == "done" and old.get("key") == key and (folder / "table.parquet").exists():
            _log(f"{name}: finished earlier with this configuration, reused")
            continue
        if old.get("key") not in (None, key) and old.get("dir", name) in STUDY_DIRS and folder.is_dir():
            shutil.rmtree(folder)  # outputs of another configuration
        tables.pop(name, None)
        _log(f"{name}: running")
        entry, table = _run_study(name, job)
        done[name] = {"key": key, **entry}
        if table is not None:
            tables[name] = table
        _log(f"{name}: {entry['status']} in {entry['seconds']:.0f} s")
        save()
    manifest["finished"] = utc_now()
    save()
    failures = [n for n in wanted if done[n].get("status") == "failed"]
    if failures:
        errors = "; ".join(f"{n}: {done[n]['error']}" for n in failures)
        raise StudyError(f"{len(failures)} studies failed ({errors}); the report at {run} has the rest")
    return run / "report.md"
