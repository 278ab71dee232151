"""The files the workbench writes: atomic writes, locks, the UTC clock and tables.

Every file the workbench writes goes through :func:`atomic_write` (a temporary file beside the target,
flushed to disk, then one rename), so a crash, a kill or a full disk never leaves a half-written artifact
under its final name. :func:`create_once` writes a file only where none exists yet (the first of two
processes wins), and :func:`file_lock` serialises work on one shared file across threads and processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import math
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
from filelock import FileLock

from workbench.errors import OutputPathError

__all__ = [
    "atomic_folder",
    "atomic_text",
    "atomic_write",
    "create_once",
    "file_lock",
    "html_table",
    "json_default",
    "markdown_table",
    "source_digest",
    "utc_now",
    "write_frame",
]

_UMASK = os.umask(0o022)  # read once at import (os.umask can only be read by setting it)
os.umask(_UMASK)


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second (``2026-12-02T13:44:07+00:00``)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object], what: str = "file") -> Path:
    """Write via ``write(tmp)`` to a temporary file beside ``path``, flush it to disk, rename it onto ``path``.

    Creates the parent folder; an OS error becomes one-line :class:`OutputPathError` naming ``what`` (a full
    disk says so), and the temporary file is removed, so ``path`` holds either its old content or the new.
    The file gets the permissions of any new file under the process umask (``safetensors`` alone writes
    owner-only files, which other users could not load).
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        _fill(path, tmp, write)
        os.replace(tmp, path)
    except OSError as e:
        raise _write_error(e, what, path) from None
    finally:
        with contextlib.suppress(OSError):  # e.g. the parent is a file: there is nothing to remove
            tmp.unlink(missing_ok=True)
    return path


def create_once(path: str | os.PathLike[str], write: Callable[[Path], object], what: str = "file") -> bool:
    """:func:`atomic_write` only if ``path`` does not exist yet; whether this call created it.

    The complete temporary file is hard-linked onto ``path``, which fails when another process created it
    first, so of two writers racing for one path exactly one wins and nobody overwrites the winner.
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        _fill(path, tmp, write)
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as e:
        raise _write_error(e, what, path) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return True


def atomic_folder(
    path: str | os.PathLike[str], write: Callable[[Path], object], what: str = "folder"
) -> Path:
    """Build a folder via ``write(tmp)`` in a temporary folder beside ``path``, flush its files to disk and
    rename it onto ``path``: readers see the whole folder or none. Where ``path`` already exists (another
    process finished first) this folder is dropped and that one kept. OS errors as in :func:`atomic_write`.
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        tmp.mkdir(parents=True)
        _call(write, tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                _sync(file)
        try:
            os.rename(tmp, path)
        except OSError as e:
            if not (e.errno in (errno.EEXIST, errno.ENOTEMPTY) and path.is_dir()):
                raise
    except OSError as e:
        raise _write_error(e, what, path) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) for the block: other threads and
    processes taking the same lock wait. Use it around a read-check-write of a file shared between runs."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path)
        lock.acquire()
    except OSError as e:
        raise _write_error(e, "lock", path) from None
    try:
        yield
    finally:
        lock.release()


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _fill(path: Path, tmp: Path, write: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _call(write, tmp)
    _sync(tmp)


_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _call(write: Callable[[Path], object], tmp: Path) -> None:
    """``write(tmp)``, with an OS error that a native writer reports as text (safetensors' Rust writer:
    ``... (os error 28)``) raised as the OSError it is."""
    try:
        write(tmp)
    except OSError:
        raise
    except Exception as e:
        found = _RUST_OS_ERROR.search(str(e))
        if found is None:
            raise
        code = int(found[1])
        raise OSError(code, os.strerror(code)) from e


def _sync(file: Path) -> None:
    """fsync ``file`` (a full disk or quota often shows only when the data reaches it) and give it the
    permissions of any new file under the umask."""
    handle = os.open(file, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
    os.chmod(file, 0o666 & ~_UMASK)


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _write_error(error: OSError, what: str, path: Path) -> OutputPathError:
    if error.errno in _FULL:
        return OutputPathError(
            f"the disk is full: cannot write the {what} to {path} ({error.strerror}); nothing was left "
            "half-written, free some space and run again (finished work is kept)"
        )
    return OutputPathError(
        f"cannot write the {what} to {path} ({error.strerror or error}); choose a writable path"
    )


def atomic_text(path: str | os.PathLike[str], text: str, what: str = "file") -> Path:
    """:func:`atomic_write` of UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), what)


def write_frame(frame: pd.DataFrame, path: str | os.PathLike[str], what: str = "table") -> Path:
    """:func:`atomic_write` of a table without its index: parquet for ``.parquet``, else CSV."""
    if Path(path).suffix == ".parquet":
        return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False), what)
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False), what)


@functools.cache
def source_digest(*packages: ModuleType) -> str:
    """A digest of the Python source of ``packages`` (every ``.py`` file under each one's folder): part of
    the key of anything their code computes."""
    files = sorted(f for package in packages for f in Path(package.__file__ or "").parent.rglob("*.py"))
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]


def json_default(value: Any) -> Any:
    """``json.dumps`` fallback for paths, dataclasses and numpy/torch scalars."""
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


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
