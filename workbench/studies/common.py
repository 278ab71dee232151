"""What every study returns and how it is written: tidy rows, a headline table, figures."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from workbench.runs import write_frame

#: Depths (fractions of the last block's index) of the validation sweeps' candidate layers.
DEPTHS = (0.2, 0.33, 0.47, 0.6, 0.73)
#: Candidate depths of a quick (CI-sized) run.
QUICK_DEPTHS = (0.25, 0.4, 0.55)


@dataclass(frozen=True)
class Scale:
    """How big a study runs: ``quick`` for tests and CI, ``full`` for the report (about 50 min on 2 cores)."""

    n_train: int
    n_validation: int
    n_test: int
    max_new_tokens: int
    layers: tuple[int, ...] | None  # candidate layers; None: the blocks at ``depths`` of each model
    batch_size: int = 64
    n_mc: int = 200  # multiple-choice questions per language
    depths: tuple[float, ...] = DEPTHS

    @classmethod
    def quick(cls) -> Scale:
        return cls(
            n_train=16, n_validation=8, n_test=8, max_new_tokens=24, layers=None, n_mc=40, depths=QUICK_DEPTHS
        )

    @classmethod
    def full(cls) -> Scale:
        return cls(n_train=64, n_validation=16, n_test=32, max_new_tokens=48, layers=None)

    @property
    def is_quick(self) -> bool:
        """A CI-sized scale: no more validation prompts than :meth:`quick`'s."""
        return self.n_validation <= Scale.quick().n_validation

    def candidate_layers(self, n_layers: int) -> list[int]:
        """:attr:`layers`, or the distinct blocks at :attr:`depths` of a model with ``n_layers`` blocks."""
        if self.layers is not None:
            return list(self.layers)
        return sorted({round(f * (n_layers - 1)) for f in self.depths})


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
        for stem, frame in (("rows", self.rows), ("table", self.table)):
            for suffix in (".parquet", ".csv"):
                write_frame(frame, target / f"{stem}{suffix}", f"{self.name} {stem}")
        return target
