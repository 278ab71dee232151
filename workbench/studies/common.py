"""What every study returns and how it is written: tidy rows, a headline table, figures."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from workbench.errors import OutputPathError


@dataclass(frozen=True)
class Scale:
    """How big a study runs: ``quick`` for tests and CI, ``full`` for the report."""

    n_train: int
    n_validation: int
    n_test: int
    max_new_tokens: int
    layers: tuple[int, ...] | None  # candidate layers; None = every other layer
    batch_size: int = 32
    n_mc: int = 200  # multiple-choice questions per language

    @classmethod
    def quick(cls) -> Scale:
        return cls(n_train=16, n_validation=8, n_test=8, max_new_tokens=24, layers=None, n_mc=40)

    @classmethod
    def full(cls) -> Scale:
        return cls(n_train=96, n_validation=24, n_test=40, max_new_tokens=64, layers=None)


@dataclass
class StudyResult:
    """One study's output: ``rows`` one per (prompt, configuration), ``table`` the headline numbers."""

    name: str
    rows: pd.DataFrame
    table: pd.DataFrame
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def write(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write rows and table as parquet and CSV (atomic renames) under ``out_dir/name``."""
        target = Path(out_dir) / self.name
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputPathError(
                f"cannot create {target} ({exc.strerror}): choose a writable --out"
            ) from None
        for stem, frame in (("rows", self.rows), ("table", self.table)):
            for suffix, write in ((".parquet", frame.to_parquet), (".csv", frame.to_csv)):
                tmp = target / f".{stem}{suffix}.tmp"
                write(tmp, index=False)
                os.replace(tmp, target / f"{stem}{suffix}")
        return target
