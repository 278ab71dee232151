"""The report: the studies declared for one run size, on one model, written incrementally under one run
directory. ``workbench report`` runs every study whose declaration (:mod:`workbench.studies.registry`)
includes the run size; ``workbench study NAME`` runs one, with its knobs; both come through
:func:`run_report`, which writes, under ``out_dir``:

* ``<folder>/table.{parquet,csv}``, ``<folder>/rows.{parquet,csv}``, the study's figures (PNG + SVG) and
  extra tables, as soon as the study finishes (atomic renames);
* ``manifest.json``, the run record (:mod:`workbench.record`): the model, the executor, the run size and,
  per study, its status, timing, outputs, the size and knobs it ran with and the key of all that;
* ``report.md`` and ``report.html`` (:mod:`workbench.studies.render`), rewritten after every study, so a
  run that stops early still leaves a readable report.

A rerun with the same ``out_dir`` reuses every study whose outputs exist, whose key matches (the model's
fingerprint, the study's size and knobs, the scorer version and what its declaration says it also depends
on) and that the same workbench source wrote (``code``, :func:`~workbench.files.source_digest`), and runs the
rest; a study that stopped half-way resumes from its cached rows. A changed key clears the study's folders
first; changed code alone keeps them, so the study's own caches (keyed by what changes them) serve it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

import workbench
from workbench import evaluation
from workbench.errors import InvalidArgumentError, ModelLoadError, WorkbenchError
from workbench.files import json_default, source_digest, utc_now
from workbench.models import DEFAULT_SPEC, Model, load_model
from workbench.paths import check_writable
from workbench.record import MANIFEST, new_record, read_record, study_entry, write_record
from workbench.size import RUN_SIZES, Size
from workbench.studies.registry import Study, all_studies
from workbench.studies.render import render

__all__ = ["LARGE_MODEL_PARAMS", "StudyError", "run_report", "run_size_for"]

#: Parameters from which a model's report runs at the ``large`` size (fewer studies, prompts and layers).
LARGE_MODEL_PARAMS = 1_000_000_000


class StudyError(WorkbenchError):
    """One or more studies of a report failed; the others and the report were still written."""


def run_size_for(model: Model | None) -> str:
    """``large`` for a model of :data:`LARGE_MODEL_PARAMS` or more, else ``full``."""
    return "large" if model is not None and model.n_params >= LARGE_MODEL_PARAMS else "full"


@dataclass(frozen=True)
class _Plan:
    """What one run does: the studies, in order, each with its size and knobs."""

    run_size: str
    studies: dict[str, Study]
    sizes: dict[str, Size]
    options: dict[str, dict[str, Any]]


def _plan(
    model: Model | None,
    run_size: str | Size | None,
    wanted: Sequence[str] | None,
    given: Mapping[str, Mapping[str, Any]],
) -> _Plan:
    """Resolve the studies, their sizes and knobs (a :class:`Size` given runs every study at it)."""
    declared = all_studies()
    name = run_size.name if isinstance(run_size, Size) else run_size or run_size_for(model)
    name = name if name in RUN_SIZES else "full"
    names = list(wanted) if wanted is not None else [n for n, s in declared.items() if name in s.report]
    unknown = [n for n in [*names, *given] if n not in declared]
    if unknown or not names:
        raise InvalidArgumentError(f"unknown or no studies {unknown}; choose from {', '.join(declared)}")
    studies = {n: declared[n] for n in names}
    sizes = {
        n: s.size(name)
        if not isinstance(run_size, Size)
        else replace(run_size, layers=None)
        if s.model
        else run_size
        for n, s in studies.items()
    }
    options = {n: s.options_for(name, given.get(n)) for n, s in studies.items()}
    return _Plan(name, studies, sizes, options)


def _study_key(study: Study, model: Model | None, size: Size, options: Mapping[str, Any]) -> str:
    """Everything a study's results depend on, hashed: a rerun reuses them only when this matches."""
    payload = {
        "study": study.name,
        "scorer": evaluation.SCORER_VERSION,
        "model": None if study.model or model is None else model.fingerprint,
        "size": size.to_json(),
        "options": dict(options),
        **(dict(study.inputs()) if study.inputs else {}),
    }
    text = json.dumps(payload, sort_keys=True, default=json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _log(message: str) -> None:
    print(f"[report {datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _model_for(study: Study, model: Model | None) -> Model | str:
    """The model a study runs on: the run's, or the one it loads itself (a line when that does not load)."""
    if study.model is None:
        if model is None:
            raise InvalidArgumentError(f"study {study.name!r} needs a model: pass a spec or a loaded Model")
        return model
    try:
        return load_model(study.model)
    except ModelLoadError as e:
        return f"not run: the {study.model} model does not load offline ({e})"


def _run_study(
    study: Study, model: Model | None, size: Size, options: dict, out: Path, progress: bool
) -> tuple[dict, Any]:
    """Run one study: its record entry (status, notes, figures, timing) and its table (None if none)."""
    began, tick = utc_now(), time.perf_counter()
    entry: dict[str, Any] = {"started": began}
    table = None
    try:
        runs_on = _model_for(study, model)
        result = (
            runs_on
            if isinstance(runs_on, str)
            else study.run(runs_on, size, out, progress=progress, **options)
        )
    except Exception as e:  # recorded; the caller goes on with the other studies and raises at the end
        entry |= {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    else:
        if isinstance(result, str):
            entry |= {"status": "unavailable", "notes": [result]}
        else:
            result.write(out)
            figures = [os.path.relpath(Path(p), out).replace(os.sep, "/") for p in result.figures]
            entry |= {"status": "done", "dir": result.name, "notes": list(result.notes), "figures": figures}
            entry |= {"table": f"{result.name}/table.parquet", "rows": len(result.rows)}
            if study.model is not None:
                entry["model"] = study.model
            table = result.table
    entry |= {"finished": utc_now(), "seconds": round(time.perf_counter() - tick, 1)}
    return entry, table


def _earlier(run: Path, record: dict, keys: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    """Tables of the studies an earlier run of ``run`` finished with the same key; others of this run's
    studies are marked stale (kept on disk until they run again)."""
    tables: dict[str, pd.DataFrame] = {}
    for name, info in record["studies"].items():
        info.pop("stale", None)
        table = run / info.get("dir", name) / "table.parquet"
        if name in keys and info.get("key") != keys[name]:
            info["stale"] = True
        elif info.get("status") == "done" and table.exists():
            tables[name] = pd.read_parquet(table)
    return tables


def _record(
    run: Path,
    command: str,
    arguments: Mapping[str, Any] | None,
    model: Model | None,
    spec: str | None,
    executor: Any,
    plan: _Plan,
    size: str | Size | None,
) -> dict[str, Any]:
    """This run's record, holding the studies (and first start) an earlier run of ``run`` recorded."""
    configuration = {
        "studies": list(plan.studies),
        "size": size.to_json() if isinstance(size, Size) else None,
    }
    record = new_record(
        command,
        arguments=arguments,
        model=model,
        spec=spec,
        executor=executor,
        size=plan.run_size,
        configuration=configuration,
    )
    earlier = read_record(run)
    record["studies"] = dict(earlier.get("studies", {}))
    record["started"] = earlier.get("started", record["started"]) if record["studies"] else record["started"]
    return record


def _load(model_spec: str | Model, plan_studies: Sequence[Study] | None, dtype: str | None) -> Model | None:
    if isinstance(model_spec, Model):
        return model_spec
    if plan_studies is not None and all(s.model for s in plan_studies):  # each loads its own model
        return None
    _log(f"loading {model_spec}" + (f" in {dtype}" if dtype else ""))
    return load_model(model_spec, dtype=dtype)


def run_report(
    model_spec: str | Model = DEFAULT_SPEC,
    *,
    out_dir: str | os.PathLike[str] = "runs/report",
    size: str | Size | None = None,
    studies: Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    dtype: str | None = None,
    executor: Any = None,
    command: str = "report",
    arguments: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Run ``studies`` (default: those whose declaration includes the run size) on ``model_spec`` (a spec,
    loaded in ``dtype``, or a loaded Model) into ``out_dir``; returns the path of ``report.md``.

    ``size``: a run size (``quick``, ``full``, ``large``; default ``large`` for a model of a billion
    parameters or more, else ``full``), each study running at the size it declares for it, or a
    :class:`~workbench.size.Size` every study runs at. ``options``: per study, knobs to run it with.
    ``executor``: the one grids run on (:func:`~workbench.runner.using_executor`), named in the record.
    Studies already finished in ``out_dir`` with the same key are reused. A study that raises is recorded
    as failed, the others still run, and :class:`StudyError` is raised at the end.
    """
    if isinstance(size, str) and size not in RUN_SIZES:
        raise InvalidArgumentError(f"unknown size {size!r}: use one of {', '.join(RUN_SIZES)}")
    given = {k: dict(v) for k, v in (options or {}).items()}
    if studies is not None:
        _plan(None, size or "full", studies, given)  # unknown studies and knobs fail before the model loads
    run = Path(out_dir)
    check_writable(run / MANIFEST)
    clock = time.perf_counter()
    declared = all_studies()
    model = _load(model_spec, None if studies is None else [declared[s] for s in studies], dtype)
    plan = _plan(model, size, studies, given)
    spec = model_spec if isinstance(model_spec, str) else None
    record = _record(run, command, arguments, model, spec, executor, plan, size)
    keys = {n: _study_key(s, model, plan.sizes[n], plan.options[n]) for n, s in plan.studies.items()}
    code = source_digest(workbench)
    tables = _earlier(run, record, keys)

    def save(finished: bool = False) -> None:
        record["timings"]["this_run"] = round(time.perf_counter() - clock, 1)
        write_record(run, record, finished=finished)
        render(run, read_record(run), tables)

    save()
    for name, study in plan.studies.items():
        old = record["studies"].get(name, {})
        folder = run / old.get("dir", name)
        if (
            old.get("status") == "done"
            and old.get("key") == keys[name]
            and old.get("code") == code
            and (folder / "table.parquet").exists()
        ):
            _log(f"{name}: finished earlier with this configuration and code, reused")
            continue
        for stale in study.folders if old.get("key") not in (None, keys[name]) else ():
            shutil.rmtree(run / stale, ignore_errors=True)  # outputs of another configuration
        tables.pop(name, None)
        _log(f"{name}: running at size {plan.sizes[name].name}")
        entry, table = _run_study(study, model, plan.sizes[name], plan.options[name], run, progress)
        size_of = {"size": plan.sizes[name].to_json(), "options": plan.options[name]}
        record["studies"][name] = study_entry(key=keys[name], code=code, **size_of, **entry)
        if table is not None:
            tables[name] = table
        _log(f"{name}: {entry['status']} in {entry['seconds']:.0f} s")
        save()
    save(finished=True)
    failures = [n for n in plan.studies if record["studies"][n].get("status") == "failed"]
    if failures:
        errors = "; ".join(f"{n}: {record['studies'][n]['error']}" for n in failures)
        raise StudyError(f"{len(failures)} studies failed ({errors}); the report at {run} has the rest")
    return run / "report.md"
