"""Trained steering vectors (AxBench's likelihood-trained vector and RePS) on self-distilled pairs.

:func:`preference_pairs` makes (plain prompt, on-target answer, plain answer) triples from a train split as the
LoRA baseline distils its pairs; :func:`train_vector` trains a rank-1 vector per layer on them and returns an
ordinary :class:`~workbench.vectors.SteeringVector`; :func:`choose_strength` picks its strength on validation.
"""

from workbench.training.pairs import PreferencePairs, preference_pairs
from workbench.training.strength import choose_strength
from workbench.training.vector import EPOCHS, FACTORS, METHODS, train_vector

__all__ = [
    "EPOCHS",
    "FACTORS",
    "METHODS",
    "PreferencePairs",
    "choose_strength",
    "preference_pairs",
    "train_vector",
]
