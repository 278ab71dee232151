"""The Italian study on the multilingual Gemma 3 270M base model, which the study loads itself."""

from __future__ import annotations

import os
from pathlib import Path

from workbench import presets
from workbench.models import Model
from workbench.size import Size
from workbench.studies.italian import steer_to_italian
from workbench.studies.registry import Study
from workbench.studies.result import StudyResult

__all__ = ["STUDY", "base_model_study"]


def base_model_study(
    model: Model, size: Size, out_dir: str | os.PathLike[str], *, progress: bool = False
) -> StudyResult:
    """:func:`~workbench.studies.italian.italian_study` on ``model`` (the base model), with its own
    vectors, written to ``out_dir/italian_base_model``."""
    return steer_to_italian(model, size, Path(out_dir) / "italian_base_model", progress)


STUDY = Study(
    "base_model",
    "Italian on the multilingual base model (Gemma 3 270M)",
    base_model_study,
    report=("quick", "full"),
    order=60,
    model="gemma3-270m",
    inputs=lambda: {"presets": presets.fingerprint()},
    folders=("italian_base_model",),
)
