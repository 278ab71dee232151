"""steering-workbench: find, build, apply and evaluate steering directions on TransformerLens.

``workbench.__all__`` is the user's API: the names below and the public submodules (:data:`_SUBMODULES`);
everything else is internal. The API is imported lazily, so ``import workbench`` and the command line start
fast.
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
    "Intervention": "workbench.interventions",
    "steer": "workbench.steering",
    "generate": "workbench.generation",
    "evaluate": "workbench.evaluation",
    "probe_layers": "workbench.probing",
    "projection_scores": "workbench.projection",
    "find_layers": "workbench.layers",
    "sweep": "workbench.sweeps",
    "DynamicStrength": "workbench.schedules",
    "Recipe": "workbench.recipes",
    "Size": "workbench.size",
}
#: The public submodules: data, scoring, methods, schedules, presets, sweeps, figures, studies, fine-tuning,
#: errors.
_SUBMODULES = (
    "datasets",
    "errors",
    "evaluation",
    "finetune",
    "methods",
    "plots",
    "presets",
    "schedules",
    "studies",
    "sweeps",
)

__all__ = [*_EXPORTS, *_SUBMODULES, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"workbench.{name}")
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
