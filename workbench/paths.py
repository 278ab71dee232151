"""Output paths: the workbench cache, and file names taken from data that stay inside their run directory.

A dataset name, a behaviour or a prompt id can end up in a file name (``runs/<run>/<name>.parquet``). Such
names come from data files and command lines, so :func:`safe_child` turns any text into one plain file name
inside the run directory, or refuses it with :class:`~workbench.errors.OutputPathError`.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from workbench.errors import InvalidArgumentError, OutputPathError

__all__ = ["MAX_NAME", "cache_dir", "check_writable", "safe_child", "slugify"]

MAX_NAME = 128
"""Longest file name :func:`slugify` returns; longer names are cut and given a hash of the original."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def cache_dir() -> Path:
    """Where downloads, dequantized weights and every cache live (``$WORKBENCH_CACHE`` or
    ``~/.cache/workbench``); processes that share it share their caches."""
    return Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "workbench"))


def slugify(name: str) -> str:
    """``name`` with every character outside ``[A-Za-z0-9._-]`` replaced by ``_``, at most `MAX_NAME` long.

    A longer name keeps its first characters and ends with ``-`` and 16 hex digits of the SHA-256 of the
    original, so distinct long names stay distinct.
    """
    if not isinstance(name, str):
        raise InvalidArgumentError(f"a file name must be a string, got {type(name).__name__}")
    slug = _UNSAFE.sub("_", name)
    if len(slug) > MAX_NAME:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        slug = f"{slug[: MAX_NAME - 17]}-{digest}"
    return slug


def safe_child(run_dir: str | os.PathLike[str], name: str) -> Path:
    """``run_dir / slugify(name)``, refusing names that are empty, ``.``, ``..`` or resolve outside ``run_dir``.

    Separators and every other unsafe character become ``_`` (``"../etc/passwd"`` gives
    ``".._etc_passwd"``); an existing symlink that points out of ``run_dir`` is refused too.
    """
    slug = slugify(name)
    if slug in ("", ".", ".."):
        raise OutputPathError(f"{name!r} cannot be a file name: use a name with letters or digits")
    root = Path(run_dir)
    child = root / slug
    try:
        resolved, top = child.resolve(), root.resolve()
        inside = resolved != top and resolved.is_relative_to(top)
    except (OSError, RuntimeError) as e:  # symlink loops, unreadable folders
        raise OutputPathError(f"cannot resolve {child} ({e}); choose another run directory") from None
    if not inside:
        raise OutputPathError(
            f"{name!r} would be written outside the run directory {root} (a symlink?); choose another name"
        )
    return child


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Refuse early (OutputPathError) a file path whose nearest existing ancestor is not a writable folder.

    Use it before long work whose result goes to ``path``, so a bad ``--out`` fails at once.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path} is a directory: give a file path to write to")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(f"cannot write {path}: {ancestor} is a file, not a folder; choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"cannot write {path}: the folder {ancestor} is not writable; choose another path"
        )
    return path
