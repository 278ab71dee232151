"""The top level of the package: the names the README leads with, imported lazily."""

from __future__ import annotations

import pytest

import workbench as wb


def test_the_top_level_exports_what_the_readme_leads_with():
    from workbench import runs
    from workbench.layers import find_layers
    from workbench.sweeps import sweep

    assert wb.find_layers is find_layers and wb.sweep is sweep and wb.runs is runs
    assert all(getattr(wb, name) is not None for name in wb.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = wb.nothing
