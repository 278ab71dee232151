"""What every study shares: its :class:`Size`, and what it returns and how that is written (:class:`StudyResult`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import pandas as pd

from workbench.errors import InvalidArgumentError
from workbench.runs import write_frame

#: Depths (fractions of the last block's index) of the validation sweeps' candidate layers.
DEPTHS = (0.2, 0.33, 0.47, 0.6, 0.73)
#: Candidate depths of a quick run (a smoke test: two layers, so that choosing one is exercised).
QUICK_DEPTHS = (0.3, 0.55)

#: Candidate depths of a large model's report: the middle of the network, where Stolfo et al.'s layers are.
LARGE_DEPTHS = (0.33, 0.47, 0.6)
#: Parameters from which a model's report runs at :meth:`Size.large` (fewer studies, prompts and layers).
LARGE_MODEL_PARAMS = 1_000_000_000

#: The named sizes: ``quick`` (a smoke test of every step, for tests and CI), ``full`` (the report's) and
#: ``large`` (the report of a model of :data:`LARGE_MODEL_PARAMS` or more).
SizeName = Literal["quick", "full", "large"]
_COUNTS = ("n_train", "n_validation", "n_test", "max_new_tokens", "batch_size", "n_mc")


@dataclass(frozen=True)
class Size:
    """How big a study runs: prompts per split, tokens per answer, candidate layers, batch size.

    :meth:`quick` is a smoke test of every step (tests, CI); :meth:`full` is the report's (about 50 min on
    2 cores); :meth:`frontier` is the quality-frontier search's, whose grid is the report's largest.
    """

    n_train: int
    n_validation: int
    n_test: int
    max_new_tokens: int
    layers: tuple[int, ...] | None  # candidate layers; None: the blocks at ``depths`` of each model
    batch_size: int = 64
    n_mc: int = 200  # multiple-choice questions per language
    depths: tuple[float, ...] = DEPTHS

    @classmethod
    def quick(cls) -> Size:
        return cls(
            n_train=4, n_validation=2, n_test=2, max_new_tokens=8, layers=None, n_mc=4, depths=QUICK_DEPTHS
        )

    @classmethod
    def full(cls) -> Size:
        return cls(n_train=64, n_validation=16, n_test=32, max_new_tokens=48, layers=None)

    @classmethod
    def frontier(cls) -> Size:
        """The frontier search's full size: about 70 recipes per behaviour, so fewer prompts than :meth:`full`."""
        return cls(n_train=48, n_validation=10, n_test=20, max_new_tokens=64, layers=None, batch_size=60)

    @classmethod
    def baselines(cls) -> Size:
        """The baselines study's full size: 32 LoRA train pairs (and vector pairs where no preset), 16
        validation and 32 test prompts, 64 new tokens, 100 multiple-choice questions per language."""
        return cls(n_train=32, n_validation=16, n_test=32, max_new_tokens=64, layers=None, n_mc=100)

    @classmethod
    def large(cls) -> Size:
        """A 1-2B model's report on 2 CPU cores (about an hour in bfloat16): three candidate layers, fewer
        prompts and tokens; the frontier search's validation count, so its confirmation round is disjoint."""
        return cls(
            n_train=32,
            n_validation=10,
            n_test=20,
            max_new_tokens=40,
            layers=None,
            batch_size=40,
            n_mc=100,
            depths=LARGE_DEPTHS,
        )

    @classmethod
    def named(cls, name: SizeName) -> Size:
        """:meth:`quick`, :meth:`full` or :meth:`large` by name."""
        sizes = {"quick": cls.quick, "full": cls.full, "large": cls.large}
        if name not in sizes:
            raise InvalidArgumentError(f"unknown size {name!r}: use one of {', '.join(sizes)}")
        return sizes[name]()

    @property
    def is_quick(self) -> bool:
        """A smoke-test size: fewer validation prompts than any real run (:meth:`frontier` has the fewest)."""
        return self.n_validation < Size.frontier().n_validation

    def at_most(self, cap: Size) -> Size:
        """This size with every count (prompts, tokens, batch, questions) capped at ``cap``'s."""
        return replace(self, **{k: min(getattr(self, k), getattr(cap, k)) for k in _COUNTS})

    def candidate_layers(self, n_layers: int) -> list[int]:
        """:attr:`layers`, or the distinct blocks at :attr:`depths` of a model with ``n_layers`` blocks."""
        if self.layers is not None:
            return list(self.layers)
        return sorted({round(f * (n_layers - 1)) for f in self.depths})


def study_size(study: str, size: Size) -> Size:
    """The size ``study`` runs at in a report of ``size``: when the report is :meth:`Size.full`, the
    frontier search and the presets study run at :meth:`Size.frontier` (so the presets' test numbers
    reproduce the search's) and the baselines study at :meth:`Size.baselines`."""
    if size != Size.full():
        return size
    return {"frontier": Size.frontier(), "presets": Size.frontier(), "baselines": Size.baselines()}.get(
        study, size
    )


def size_from_json(data: dict) -> Size:
    """A :class:`Size` from its ``asdict`` form as a manifest stores it (lists back to tuples)."""
    return Size(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


#: The former name of :class:`Size` (a study's size is not the ``scale`` unit of a coefficient).
Scale = Size


@dataclass
class StudyResult:
    """One study's output: ``rows`` one per (prompt, configuration), ``table`` the headline numbers,
    ``size`` the size it ran at when that is not the one it was given (recorded in the run's manifest)."""

    name: str
    rows: pd.DataFrame
    table: pd.DataFrame
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    size: Size | None = None

    def write(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write rows and table as parquet and CSV (atomic renames) under ``out_dir/name``."""
        target = Path(out_dir) / self.name
        for stem, frame in (("rows", self.rows), ("table", self.table)):
            for suffix in (".parquet", ".csv"):
                write_frame(frame, target / f"{stem}{suffix}", f"{self.name} {stem}")
        return target
