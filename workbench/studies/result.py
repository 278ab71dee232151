"""What a study returns and how it is written: :class:`StudyResult`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from workbench.files import write_frame

__all__ = ["StudyResult"]


@dataclass
class StudyResult:
    """One study's output: ``rows`` one per (prompt, configuration), ``table`` the headline numbers,
    the figures it saved and notes for its page; written under ``out_dir/name``."""

    name: str
    rows: pd.DataFrame
    table: pd.DataFrame
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def write(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write rows and table as parquet and CSV (atomic renames) under ``out_dir/name``."""
        target = Path(out_dir) / self.name
        for stem, frame in (("rows", self.rows), ("table", self.table)):
            for suffix in (".parquet", ".csv"):
                write_frame(frame, target / f"{stem}{suffix}", f"{self.name} {stem}")
        return target
