"""steering-workbench: find, build, apply and evaluate steering directions on TransformerLens.

The public API is imported lazily, so ``import workbench`` and the command line start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "workbench.models",
    "Model": "workbench.models",
    "collect": "workbench.activations",
    "Activations": "workbench.activations",
    "SteeringVector": "workbench.vectors",
    "cosine": "workbench.vectors",
    "Intervention": "workbench.steering",
    "steer": "workbench.steering",
    "steer_rows": "workbench.steering",
    "generate": "workbench.generation",
    "evaluate": "workbench.evaluation",
    "find_layers": "workbench.layers",
    "sweep": "workbench.sweeps",
    "DynamicStrength": "workbench.schedules",
}
_SUBMODULES = (
    "datasets",
    "evaluation",
    "errors",
    "models",
    "vectors",
    "steering",
    "frontier",
    "presets",
    "runs",
    "baselines",
    "schedules",
    "recipes",
    "runner",
)

__all__ = [*_EXPORTS, *_SUBMODULES, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"workbench.{name}")
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
