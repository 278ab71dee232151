"""Trained steering vectors (AxBench's likelihood-trained vector and RePS) on self-distilled pairs.

:func:`preference_pairs` makes (plain prompt, on-target answer, plain answer) triples from a train split as the
LoRA baseline distils its pairs; :func:`train_vector` trains a rank-1 vector per layer on them and returns an
ordinary :class:`~workbench.vectors.SteeringVector`; :func:`choose_strength` picks its strength on validation.
:func:`train_factor` trains the strength of a fixed vector at chosen positions (PrOSV's prompt-only factor);
:func:`train_gate` distils an instruction into a per-token gate (a PSR model,
:class:`~workbench.gated_steering.GatedIntervention`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from workbench.errors import InvalidArgumentError
from workbench.training.factor import train_factor
from workbench.training.pairs import PreferencePairs, preference_pairs
from workbench.training.psr import train_gate
from workbench.training.strength import choose_strength
from workbench.training.vector import EPOCHS, FACTORS, METHODS, train_vector

if TYPE_CHECKING:
    from workbench.datasets import ContrastiveSet
    from workbench.models import Model
    from workbench.vectors import SteeringVector

__all__ = [
    "EPOCHS",
    "FACTORS",
    "METHODS",
    "PreferencePairs",
    "choose_strength",
    "from_dataset",
    "preference_pairs",
    "train_factor",
    "train_gate",
    "train_vector",
]


def from_dataset(
    model: Model,
    dataset: ContrastiveSet,
    method: str,
    layers: Sequence[int] | None,
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> SteeringVector:
    """A trained vector (``method``: :data:`METHODS`) at ``layers`` from ``dataset``'s train pairs distilled
    as the LoRA baseline does, with the dataset's own target: what ``SteeringVector.from_dataset`` runs for a
    trained method."""
    if not layers:
        raise InvalidArgumentError(f"a {method} vector needs layers=[...]: each layer trains its own vector")
    pairs = preference_pairs(model, dataset, batch_size=batch_size)
    return train_vector(model, pairs, method=method, layers=list(layers), progress=progress)
