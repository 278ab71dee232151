"""Deprecated alias of :mod:`workbench.recipes` (its figure is :func:`workbench.plots.plot_frontier`)."""

from workbench.plots import plot_frontier  # noqa: F401
from workbench.recipes import *  # noqa: F403
