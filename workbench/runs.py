"""Run-folder plumbing shared by every writer: atomic writes, the UTC clock, manifests and tables.

Every file the workbench writes goes through :func:`atomic_write` (a temporary file beside the target,
then one rename), so a crash never leaves a half-written artifact under its final name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.errors import OutputPathError

__all__ = [
    "MANIFEST",
    "atomic_text",
    "atomic_write",
    "html_table",
    "json_default",
    "markdown_table",
    "package_versions",
    "read_manifest",
    "utc_now",
    "write_frame",
    "write_manifest",
]

MANIFEST = "manifest.json"
_UMASK = os.umask(0o022)  # read once at import (os.umask can only be read by setting it)
os.umask(_UMASK)
_PACKAGES = (
    "torch",
    "transformers",
    "transformer-lens",
    "pandas",
    "numpy",
    "scikit-learn",
    "lingua-language-detector",
)


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second (``2026-12-02T13:44:07+00:00``)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object], what: str = "file") -> Path:
    """Write via ``write(tmp)`` to a temporary file beside ``path``, then rename it onto ``path``.

    Creates the parent folder; an OS error becomes one-line :class:`OutputPathError` naming ``what``.
    The file gets the permissions of any new file under the process umask (``safetensors`` alone writes
    owner-only files, which other users could not load).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except OSError as e:
        raise OutputPathError(
            f"cannot write the {what} to {path} ({e.strerror or e}); choose a writable path"
        ) from None
    finally:
        with contextlib.suppress(OSError):  # e.g. the parent is a file: there is nothing to remove
            tmp.unlink(missing_ok=True)
    return path


def atomic_text(path: str | os.PathLike[str], text: str, what: str = "file") -> Path:
    """:func:`atomic_write` of UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), what)


def write_frame(frame: pd.DataFrame, path: str | os.PathLike[str], what: str = "table") -> Path:
    """:func:`atomic_write` of a table without its index: parquet for ``.parquet``, else CSV."""
    if Path(path).suffix == ".parquet":
        return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False), what)
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False), what)


def json_default(value: Any) -> Any:
    """``json.dumps`` fallback for paths, dataclasses and numpy/torch scalars."""
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


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


def write_manifest(run_dir: str | os.PathLike[str], manifest: Mapping[str, Any]) -> Path:
    """Write ``run_dir/manifest.json`` atomically, adding package versions if the manifest has none."""
    payload = dict(manifest)
    payload.setdefault("versions", package_versions())
    text = json.dumps(payload, indent=1, default=json_default, ensure_ascii=False) + "\n"
    return atomic_text(Path(run_dir) / MANIFEST, text, "manifest")


def read_manifest(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``run_dir/manifest.json`` as a dict, or ``{}`` when it is missing or unreadable."""
    try:
        found = json.loads((Path(run_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table, floats to three decimals, empty cells for missing values."""
    header = [_cell(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def html_table(frame: pd.DataFrame) -> str:
    """An HTML table, floats to three decimals, escaped."""
    return frame.to_html(index=False, border=0, na_rep="", float_format=lambda x: f"{x:.3f}", escape=True)
