"""Projection statistics."""

from __future__ import annotations

import pytest
import torch

from workbench.projection import cohens_d


def test_cohens_d():
    assert cohens_d(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 1.0])) == pytest.approx(2 / 2**0.5)
    assert cohens_d(torch.ones(3), torch.zeros(3)) == float("inf")
