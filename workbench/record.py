"""The run record: one ``manifest.json`` per run directory, one schema, one writer.

Every command that writes a run directory (``report``, ``study``, ``sweep``, ``layers``, ``collect``, the
analyses) records it here with :func:`write_record`, and :func:`read_record` is the only reader (the pages,
a resumed report). The fields, :data:`SCHEMA` version 1:

* ``schema``, ``command``, ``arguments`` (what the command was given);
* ``model``: :func:`model_record` (spec, name, weights hash, fingerprint, dtype, device, parameters, load
  time), or None for a run that loads none itself;
* ``executor``: :func:`executor_record` (in process, or Ray with its address and each worker's fingerprint);
* ``size``: the run size's name (``quick``/``full``/``large``) where one applies; ``configuration``: the
  command's own settings; ``seeds``; ``versions`` (Python and the packages that change results);
* ``started``, ``updated``, ``finished`` (UTC), ``timings`` (seconds per step);
* ``studies``: per study, its entry (:func:`study_entry`: status, folder, key, ``code`` (the source digest
  that wrote it), size and knobs, notes, figures, outputs, timing, error, and the spec of a model it loaded
  itself).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workbench.errors import ArtifactError
from workbench.files import atomic_text, json_default, utc_now

__all__ = [
    "MANIFEST",
    "SCHEMA",
    "executor_record",
    "model_record",
    "new_record",
    "package_versions",
    "read_record",
    "study_entry",
    "write_record",
]

#: The run record's file in a run directory.
MANIFEST = "manifest.json"
#: Version of the run record's layout.
SCHEMA = 1
_PACKAGES = (
    "torch",
    "transformers",
    "transformer-lens",
    "pandas",
    "numpy",
    "scikit-learn",
    "lingua-language-detector",
)
_FIELDS = (
    "schema",
    "command",
    "arguments",
    "model",
    "executor",
    "size",
    "configuration",
    "seeds",
    "versions",
    "started",
    "updated",
    "finished",
    "timings",
    "studies",
)
_STUDY_FIELDS = (
    "status",
    "dir",
    "key",
    "code",
    "size",
    "options",
    "notes",
    "figures",
    "table",
    "rows",
    "started",
    "finished",
    "seconds",
    "error",
    "stale",
    "model",
)
#: Seeds every run records: greedy decoding has none.
GREEDY = {"generation": "greedy decoding (no sampling)"}


def model_record(model: Any, spec: str | None = None) -> dict[str, Any] | None:
    """What identifies a loaded :class:`~workbench.models.Model` (None: no model)."""
    if model is None:
        return None
    return {
        "spec": spec or model.source or model.name,
        "name": model.name,
        "weights_hash": model.weights_hash,
        "fingerprint": model.fingerprint,
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(model.device),
        "n_params": model.n_params,
        "source": model.source,
        "load_seconds": round(float(model.load_seconds), 1),
    }


def executor_record(executor: Any = None) -> dict[str, Any]:
    """How the run's grids were generated: the executor's own ``describe()``, or in this process."""
    describe = getattr(executor, "describe", None)
    return dict(describe()) if callable(describe) else {"kind": "in process", "workers": []}


def new_record(
    command: str,
    *,
    arguments: Mapping[str, Any] | None = None,
    model: Any = None,
    spec: str | None = None,
    executor: Any = None,
    size: str | None = None,
    configuration: Mapping[str, Any] | None = None,
    seeds: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A fresh record of one run of ``command`` (started now, no study yet)."""
    now = utc_now()
    return {
        "schema": SCHEMA,
        "command": command,
        "arguments": {k: _plain(v) for k, v in (arguments or {}).items() if v is not None and v is not False},
        "model": model_record(model, spec),
        "executor": executor_record(executor),
        "size": size,
        "configuration": dict(configuration or {}),
        "seeds": {**GREEDY, **dict(seeds or {})},
        "versions": None,
        "started": now,
        "updated": now,
        "finished": None,
        "timings": {},
        "studies": {},
    }


def study_entry(**fields: Any) -> dict[str, Any]:
    """One study's entry of :data:`_STUDY_FIELDS` (unknown fields refused)."""
    unknown = sorted(set(fields) - set(_STUDY_FIELDS))
    if unknown:
        raise ArtifactError(f"a study entry has no field {unknown[0]!r}: use {', '.join(_STUDY_FIELDS)}")
    return fields


def write_record(run: str | os.PathLike[str], record: Mapping[str, Any], *, finished: bool = False) -> Path:
    """Write ``run/manifest.json`` (atomically), stamped ``updated`` (and ``finished``); the only writer."""
    unknown = sorted(set(record) - set(_FIELDS))
    if unknown or record.get("schema") != SCHEMA:
        raise ArtifactError(
            f"not a run record of schema {SCHEMA} (fields {unknown or 'ok'}): build it with new_record"
        )
    payload = dict(record)
    payload["updated"] = utc_now()
    if finished:
        payload["finished"] = payload["updated"]
    payload["versions"] = payload.get("versions") or package_versions()
    text = json.dumps(payload, indent=1, default=json_default, ensure_ascii=False) + "\n"
    return atomic_text(Path(run) / MANIFEST, text, "run record")


def read_record(run: str | os.PathLike[str]) -> dict[str, Any]:
    """``run/manifest.json``, or ``{}`` when there is none; a record of another schema raises."""
    try:
        found = json.loads((Path(run) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(found, dict):
        return {}
    if found and found.get("schema") != SCHEMA:
        raise ArtifactError(
            f"{Path(run) / MANIFEST} is a run record of schema {found.get('schema')!r}, not {SCHEMA}: "
            "rerun the command into a new directory"
        )
    return found


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


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value if isinstance(value, int | float | str | bool | dict) else str(value)
