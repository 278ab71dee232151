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
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import importlib
import importlib.metadata
import json
import math
import os
import platform
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.errors import InvalidArgumentError, OutputPathError, WorkbenchError
from workbench.models import DEFAULT_SPEC, Model, load_model
from workbench.studies.common import Scale, StudyResult

__all__ = [
    "ABLATION_SEEDS",
    "EXTRA_STUDIES",
    "STUDIES",
    "StudyError",
    "markdown_table",
    "package_versions",
    "report_scale",
    "run_report",
    "write_manifest",
]

#: Every study of the report, in report order.
STUDIES = ("format", "length", "composition", "ablation", "italian", "base_model", "presets")
#: Studies that run on request only: the frontier search that chose the presets (about an hour on 2 CPU
#: cores at full scale, so not part of the report).
EXTRA_STUDIES = ("frontier",)
#: Seeds of the random-direction control of the ablation study.
ABLATION_SEEDS = (0, 1, 2)
MANIFEST = "manifest.json"
#: Folders a study may write (the base-model study writes ``italian_base_model``); only these are ever removed.
STUDY_DIRS = (*STUDIES, *EXTRA_STUDIES, "italian_base_model")
_PACKAGES = (
    "torch",
    "transformers",
    "transformer-lens",
    "pandas",
    "numpy",
    "scikit-learn",
    "lingua-language-detector",
)


class StudyError(WorkbenchError):
    """One or more studies of a report failed; the others and the report were still written."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    """Python, the workbench and the packages whose versions change results."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("steering-workbench", *_PACKAGES):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    if versions["steering-workbench"] is None:
        import workbench

        versions["steering-workbench"] = workbench.__version__
    return versions


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise OutputPathError(f"cannot write {path} ({e.strerror or e}); choose a writable --out") from None
    finally:
        tmp.unlink(missing_ok=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_manifest(run_dir: str | os.PathLike[str], manifest: Mapping[str, Any]) -> Path:
    """Write ``run_dir/manifest.json`` atomically, adding package versions if the manifest has none."""
    run = Path(run_dir)
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputPathError(f"cannot create {run} ({e.strerror or e}); choose a writable --out") from None
    payload = dict(manifest)
    payload.setdefault("versions", package_versions())
    path = run / MANIFEST
    _atomic_text(path, json.dumps(payload, indent=1, default=_json_default, ensure_ascii=False) + "\n")
    return path


def _read_manifest(run: Path) -> dict[str, Any]:
    try:
        found = json.loads((run / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def report_scale(quick: bool) -> Scale:
    """:meth:`Scale.quick` or :meth:`Scale.full`."""
    return Scale.quick() if quick else Scale.full()


# ---- rendering ---------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table: ``DataFrame.to_markdown`` when tabulate is installed, else a hand-rolled one."""
    try:
        return frame.to_markdown(index=False, floatfmt=".3f")
    except ImportError:
        pass
    header = [_cell(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def _html_table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, na_rep="", float_format=lambda x: f"{x:.3f}", escape=True)


_TITLES = {
    "format": "Format instructions (Stolfo et al.'s table)",
    "length": "Length: words and sentences against the coefficient",
    "composition": "Composition: a format and a length vector together",
    "ablation": "Ablation of instruction directions, with the instruction in the prompt",
    "italian": "Italian answers by steering (Scalena et al.)",
    "base_model": "Italian on the multilingual base model (Gemma 3 270M)",
    "presets": "Presets: the quality frontier's chosen recipes on held-out prompts",
    "frontier": "Quality frontier: steering that lands without breaking the model",
}


def _extra_tables(study_dir: Path) -> list[tuple[str, pd.DataFrame]]:
    extras = []
    for path in sorted(study_dir.glob("*.csv")):
        if path.name in ("rows.csv", "table.csv") or path.name.startswith("sweep_"):
            continue
        try:
            frame = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.EmptyDataError):
            continue
        for column in frame.select_dtypes("float").columns:  # integers with gaps come back as floats
            values = frame[column].dropna()
            if len(values) and (values == values.round()).all():
                frame[column] = frame[column].astype("Int64")
        extras.append((path.name, frame))
    return extras


def _render(run: Path, manifest: Mapping[str, Any], tables: Mapping[str, pd.DataFrame]) -> None:
    """Write report.md and report.html from the manifest and the headline tables."""
    config = manifest.get("configuration", {})
    model = manifest.get("model", {})
    title = f"Steering report: {model.get('name', config.get('model', '?'))}"
    head = [
        f"Model `{model.get('name')}` (weights sha256 `{str(model.get('weights_hash'))[:16]}…`), "
        f"{'quick' if config.get('quick') else 'full'} scale `{json.dumps(config.get('scale'))}`.",
        f"Started {manifest.get('started')}, last update {manifest.get('updated')}; "
        f"workbench {manifest.get('versions', {}).get('steering-workbench')}.",
    ]
    md = [f"# {title}", "", *head, ""]
    body = [f"<h1>{html.escape(title)}</h1>", *(f"<p>{html.escape(line)}</p>" for line in head)]
    studies = manifest.get("studies", {})
    for name in (*STUDIES, *EXTRA_STUDIES):
        info = studies.get(name)
        if info is None:
            continue
        heading = _TITLES.get(name, name)
        status = str(info.get("status")) + (
            " (stale: ran with another configuration)" if info.get("stale") else ""
        )
        timing = f"{info['seconds']:.0f} s" if isinstance(info.get("seconds"), int | float) else ""
        md += [f"## {heading}", "", f"Status: {status}" + (f", {timing}" if timing else "") + ".", ""]
        body += [f"<h2>{html.escape(heading)}</h2>", f"<p>Status: {html.escape(str(status))} {timing}</p>"]
        if info.get("error"):
            md += [f"Error: `{info['error']}`", ""]
            body.append(f"<p>Error: <code>{html.escape(info['error'])}</code></p>")
        notes = info.get("notes") or []
        md += [f"- {note}" for note in notes] + ([""] if notes else [])
        if notes:
            body.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
        if name in tables:
            md += [markdown_table(tables[name]), ""]
            body.append(_html_table(tables[name]))
            study_dir = run / info.get("dir", name)
            for file, frame in _extra_tables(study_dir):
                where = f"{study_dir.name}/{file}"
                md += [f"`{where}`:", "", markdown_table(frame), ""]
                body += [f"<p><code>{html.escape(where)}</code></p>", _html_table(frame)]
            sweeps = sorted(p.name for p in study_dir.glob("sweep_*.csv"))
            if sweeps:
                folder = study_dir.name
                md += ["Validation sweeps: " + ", ".join(f"[{s}]({folder}/{s})" for s in sweeps), ""]
                links = ", ".join(
                    f'<a href="{html.escape(folder)}/{html.escape(s)}">{html.escape(s)}</a>' for s in sweeps
                )
                body.append(f"<p>Validation sweeps: {links}</p>")
        for figure in info.get("figures", []):
            if figure.endswith(".png"):
                md += [f"![{name}]({figure})", ""]
                body.append(
                    f'<p><img src="{html.escape(figure)}" alt="{html.escape(name)}" style="max-width:100%"></p>'
                )
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:auto;padding:1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:90%}"
        "th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}"
    )
    page = (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    _atomic_text(run / "report.md", "\n".join(md).rstrip() + "\n")
    _atomic_text(run / "report.html", page)


# ---- running -----------------------------------------------------------------------------------------

Runner = Callable[[Model | None, Scale, Path, bool], "StudyResult | str"]


def _instruction_runner(name: str) -> Runner:
    def run(model: Model | None, scale: Scale, out: Path, progress: bool) -> StudyResult | str:
        from workbench.studies import instructions

        assert model is not None
        if name == "ablation":
            return instructions.ablation_study(model, scale, out, seeds=ABLATION_SEEDS, progress=progress)
        return getattr(instructions, f"{name}_study")(model, scale, out, progress=progress)

    return run


def _italian_function(attribute: str) -> Callable[..., Any] | str:
    try:
        module = importlib.import_module("workbench.studies.italian")
    except ImportError as e:
        return f"not run: workbench.studies.italian cannot be imported ({e})"
    function = getattr(module, attribute, None)
    return function if callable(function) else f"not run: workbench.studies.italian has no {attribute}()"


def _italian(model: Model | None, scale: Scale, out: Path, progress: bool) -> StudyResult | str:
    function = _italian_function("italian_study")
    return function if isinstance(function, str) else function(model, scale, out)


def _base_model(model: Model | None, scale: Scale, out: Path, progress: bool) -> StudyResult | str:
    function = _italian_function("base_model_study")
    if isinstance(function, str):
        return function
    result = function(dataclasses.replace(scale, layers=None), out)
    return "not run: the Gemma 3 270M base model is not installed" if result is None else result


def _frontier_runner(name: str) -> Runner:
    def run(model: Model | None, scale: Scale, out: Path, progress: bool) -> StudyResult | str:
        from workbench.studies import frontier

        assert model is not None
        # At full size both run at the search's own scale, so the presets' test numbers reproduce it.
        study = getattr(frontier, f"{name}_study")
        quick = scale.is_quick
        return study(model, scale if quick else frontier.FULL_SCALE, out, quick=quick, progress=progress)

    return run


RUNNERS: dict[str, Runner] = {
    **{name: _instruction_runner(name) for name in ("format", "length", "composition", "ablation")},
    "italian": _italian,
    "base_model": _base_model,
    **{name: _frontier_runner(name) for name in ("presets", "frontier")},
}


def _study_key(name: str, configuration: Mapping[str, Any]) -> str:
    if name == "base_model":  # its own model: only the scale and the study matter
        relevant = {"quick": configuration.get("quick"), "scale": {**configuration["scale"], "layers": None}}
    else:
        relevant = dict(configuration)
    text = json.dumps({"study": name, **relevant}, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _log(message: str) -> None:
    print(f"[report {datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_report(
    model_spec: str | Model = DEFAULT_SPEC,
    *,
    quick: bool = False,
    out_dir: str | os.PathLike[str] = "runs/report",
    studies: Sequence[str] | None = None,
    scale: Scale | None = None,
    progress: bool = True,
) -> Path:
    """Run ``studies`` (default :data:`STUDIES`; also :data:`EXTRA_STUDIES`) on ``model_spec`` (a spec or a
    loaded Model) into ``out_dir``.

    ``scale`` overrides the quick/full scale (:func:`report_scale`). Returns the path of ``report.md``.
    Studies already finished in ``out_dir`` with the same configuration are reused, not rerun. A study
    that raises is recorded as failed in the manifest and the report, the remaining studies still run, and
    :class:`StudyError` is raised at the end.
    """
    wanted = list(STUDIES if studies is None else studies)
    unknown = [s for s in wanted if s not in RUNNERS]
    if unknown or not wanted:
        raise InvalidArgumentError(f"unknown or no studies {unknown}; choose from {', '.join(RUNNERS)}")
    run = Path(out_dir)
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputPathError(f"cannot create {run} ({e.strerror or e}); choose a writable --out") from None
    started = _now()
    clock = time.perf_counter()
    needs_model = any(s != "base_model" for s in wanted)
    model: Model | None
    if isinstance(model_spec, Model):
        model = model_spec
    elif needs_model:
        _log(f"loading {model_spec}")
        model = load_model(model_spec)
    else:
        model = None
    scale = scale or report_scale(quick)
    configuration = {
        "model": model.name if model is not None else str(model_spec),
        "weights_hash": model.weights_hash if model is not None else None,
        "quick": quick,
        "scale": dataclasses.asdict(scale),
        "ablation_seeds": list(ABLATION_SEEDS),
    }
    previous = _read_manifest(run)
    done: dict[str, dict[str, Any]] = dict(previous.get("studies", {}))
    manifest: dict[str, Any] = {
        "command": "report",
        "configuration": configuration,
        "model": {
            "spec": model_spec if isinstance(model_spec, str) else model_spec.name,
            "name": configuration["model"],
            "weights_hash": configuration["weights_hash"],
            "source": getattr(model, "source", None),
            "load_seconds": getattr(model, "load_seconds", None),
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
    tables: dict[str, pd.DataFrame] = {}
    for name, info in done.items():  # results of another configuration stay on disk but leave the report
        info.pop("stale", None)
        table = run / info.get("dir", name) / "table.parquet"
        if info.get("key") != _study_key(name, configuration):
            info["stale"] = True
        elif info.get("status") == "done" and table.exists():
            tables[name] = pd.read_parquet(table)

    def save() -> None:
        manifest["updated"] = _now()
        manifest["seconds_this_run"] = round(time.perf_counter() - clock, 1)
        write_manifest(run, manifest)
        _render(run, manifest, tables)

    failures = []
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
        began, tick = _now(), time.perf_counter()
        entry: dict[str, Any] = {"key": key, "started": began}
        try:
            result = RUNNERS[name](model, scale, run, progress)
        except Exception as e:  # record, go on with the other studies, raise at the end
            entry |= {"status": "failed", "error": f"{type(e).__name__}: {e}"}
            failures.append(name)
        else:
            if isinstance(result, str):
                entry |= {"status": "unavailable", "notes": [result]}
            else:
                result.write(run)
                figures = [os.path.relpath(Path(p), run) for p in result.figures]
                entry |= {
                    "status": "done",
                    "dir": result.name,
                    "notes": list(result.notes),
                    "figures": [f.replace(os.sep, "/") for f in figures],
                    "table": f"{result.name}/table.parquet",
                    "rows": len(result.rows),
                }
                tables[name] = result.table
        entry |= {"finished": _now(), "seconds": round(time.perf_counter() - tick, 1)}
        done[name] = entry
        _log(f"{name}: {entry['status']} in {entry['seconds']:.0f} s")
        save()
    manifest["finished"] = _now()
    save()
    if failures:
        errors = "; ".join(f"{n}: {done[n]['error']}" for n in failures)
        raise StudyError(f"{len(failures)} studies failed ({errors}); the report at {run} has the rest")
    return run / "report.md"
