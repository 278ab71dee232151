"""The top level of the package: the names the README leads with, imported lazily."""

from __future__ import annotations

import pytest

import workbench as wb


def test_the_top_level_exports_what_the_readme_leads_with():
    from workbench.layers import find_layers
    from workbench.sweeps import sweep

    assert wb.find_layers is find_layers and wb.sweep is sweep
    assert all(getattr(wb, name) is not None for name in wb.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = wb.nothing


def test_the_top_level_is_the_users_api_only():
    from workbench import finetune, schedules, studies
    from workbench.schedules import DynamicStrength

    assert (wb.finetune, wb.schedules, wb.studies) == (finetune, schedules, studies)
    assert wb.DynamicStrength is DynamicStrength and "DynamicStrength" in wb.__all__
    internal = {"runner", "runs", "record", "recipes", "fastpath", "positions", "pipeline", "cli", "frontier"}
    assert not internal & set(wb.__all__)


def test_evaluation_exports_the_reference_calibration_lazily():  # torch-free text checks: test_table
    from workbench import evaluation
    from workbench.evaluation import reference

    assert (
        evaluation.calibrate is reference.calibrate
        and evaluation.reference_model is reference.reference_model
    )
    assert evaluation.ReferenceFluency is reference.ReferenceFluency
    assert {"calibrate", "ReferenceFluency", "reference_model"} <= set(evaluation.__all__)
