"""A parquet file of per-answer scores keyed by everything that changes them, shared by concurrent runs.

:func:`cached_values` reads the scores already in the file and computes only the others (a score must not
depend on the batch it ran in); runs sharing the file add to it under a lock; a file that cannot be written
only warns, and a damaged one is read as empty (and rewritten).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from workbench.errors import OutputPathError
from workbench.files import file_lock, write_frame

__all__ = ["cache_key", "cached_values"]


def cache_key(*parts: str) -> str:
    """The SHA-256 of ``parts`` joined by NUL: one entry's key."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def cached_values(
    path: Path, keys: Sequence[str], compute: Callable[[list[int]], Sequence[float]], what: str
) -> list[float]:
    """The value of each key: read from ``path`` where there, else ``compute(indices)`` for the missing
    ones (each key computed once) and added to the file. ``what`` names the cache in warnings."""
    known = _read(path, what)
    todo = sorted({k: i for i, k in enumerate(keys) if k not in known}.values())
    if todo:
        new = {keys[i]: float(v) for i, v in zip(todo, compute(todo), strict=True)}
        try:
            with file_lock(path.with_name(f".{path.name}.lock")):  # another run may have added entries
                merged = _read(path, what) | new
                frame = pd.DataFrame({"key": list(merged), "value": list(merged.values())})
                write_frame(frame, path, what)
        except OutputPathError as exc:
            warnings.warn(f"{what} not updated: {exc}", stacklevel=2)
        known |= new
    return [known[k] for k in keys]


def _read(path: Path, what: str) -> dict[str, float]:
    if not path.exists():
        return {}
    try:
        stored = pd.read_parquet(path)
        column = "value" if "value" in stored else stored.columns[-1]  # older files named the column
        return dict(zip(stored["key"], stored[column].astype(float), strict=True))
    except (OSError, ValueError, KeyError, IndexError) as exc:  # pyarrow's errors derive from these
        warnings.warn(f"the {what} {path} is unreadable ({exc}); scoring again", stacklevel=3)
        return {}
