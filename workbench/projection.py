"""Projection analysis: does a direction found on training data separate held-out examples?

Per layer, a direction is extracted from the *training* activations (diff-in-means by default) and the
*held-out* positive and negative activations are projected on it; :func:`projection_scores` reports how well
those projections separate (AUROC, Cohen's d). :func:`direction_cosines` compares directions across layers
and across extraction methods.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from sklearn.metrics import roc_auc_score
from torch import Tensor

from workbench.activations import Activations
from workbench.errors import InvalidArgumentError, ShapeMismatchError
from workbench.vectors import SteeringVector

__all__ = ["DirectionCosines", "cohens_d", "direction_cosines", "project", "projection_scores"]


def cohens_d(pos: Float[Tensor, " n"], neg: Float[Tensor, " m"]) -> float:
    """``(mean(pos) - mean(neg)) / pooled std`` (sample variances); ``inf`` when both sets are constant."""
    pos, neg = pos.double(), neg.double()
    if pos.numel() < 2 or neg.numel() < 2:
        raise InvalidArgumentError("Cohen's d needs at least two values per set")
    pooled = ((pos.numel() - 1) * pos.var() + (neg.numel() - 1) * neg.var()) / (pos.numel() + neg.numel() - 2)
    diff = float(pos.mean() - neg.mean())
    if pooled == 0:
        return float(np.sign(diff) * np.inf)
    return diff / float(pooled.sqrt())


def project(vector: SteeringVector, acts: Activations) -> Float[Tensor, "n layer"]:
    """``acts`` projected on ``vector``'s unit direction at each of ``acts``' layers."""
    if vector.d_model != acts.d_model:
        raise ShapeMismatchError(f"the vector has d_model {vector.d_model}, the activations {acts.d_model}")
    directions = torch.stack([vector.direction(layer) for layer in acts.layers])
    return torch.einsum("nld,ld->nl", acts.tensor.double(), directions.double()).float()


def projection_scores(
    train_pos: Activations,
    train_neg: Activations,
    test_pos: Activations,
    test_neg: Activations,
    *,
    method: str = "diff_in_means",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score a ``method`` direction fit on the training sets by how it separates the held-out sets.

    Returns ``(scores, projections)``: ``scores`` has one row per layer with ``layer, auroc, cohens_d,
    pos_mean, neg_mean``; ``projections`` is tidy, one row per held-out example and layer
    (``layer, label`` in ``positive``/``negative``, ``projection``), for histograms.
    """
    if not train_pos.layers == train_neg.layers == test_pos.layers == test_neg.layers:
        raise ShapeMismatchError("training and held-out activations must be taken at the same layers")
    vector = SteeringVector.from_activations(train_pos, train_neg, method, paired=train_pos.n == train_neg.n)
    p, q = project(vector, test_pos), project(vector, test_neg)
    y = np.concatenate([np.ones(test_pos.n), np.zeros(test_neg.n)])
    scores, tidy = [], []
    for j, layer in enumerate(test_pos.layers):
        values = torch.cat([p[:, j], q[:, j]]).double().numpy()
        scores.append(
            {
                "layer": layer,
                "auroc": float(roc_auc_score(y, values)),
                "cohens_d": cohens_d(p[:, j], q[:, j]),
                "pos_mean": float(p[:, j].mean()),
                "neg_mean": float(q[:, j].mean()),
            }
        )
        labels = np.where(y == 1, "positive", "negative")
        tidy.append(pd.DataFrame({"layer": layer, "label": labels, "projection": values}))
    return pd.DataFrame(scores), pd.concat(tidy, ignore_index=True)


@dataclass(frozen=True)
class DirectionCosines:
    """``across_layers``: layer × layer cosines of one method's directions (index and columns are layers).
    ``across_methods``: one row per layer and pair of methods (``layer, method_a, method_b, cosine``)."""

    across_layers: pd.DataFrame
    across_methods: pd.DataFrame


def direction_cosines(
    pos: Activations,
    neg: Activations,
    *,
    methods: Sequence[str] = ("diff_in_means", "pca", "probe"),
) -> DirectionCosines:
    """Cosines between the directions that ``methods`` extract from ``pos``/``neg``.

    ``across_layers`` uses the first method. Directions are sign-aligned with the mean shift by each method,
    so a cosine near -1 does not occur for agreeing methods.
    """
    if not methods:
        raise InvalidArgumentError("direction_cosines needs at least one method")
    vectors = {m: SteeringVector.from_activations(pos, neg, m) for m in methods}
    first = vectors[methods[0]].directions.double()
    matrix = (first @ first.T).clamp(-1, 1).numpy()
    across_layers = pd.DataFrame(matrix, index=list(pos.layers), columns=list(pos.layers))
    across_layers.index.name = across_layers.columns.name = "layer"
    rows = [
        {
            "layer": layer,
            "method_a": a,
            "method_b": b,
            "cosine": float(
                torch.dot(vectors[a].direction(layer).double(), vectors[b].direction(layer).double())
            ),
        }
        for layer in pos.layers
        for a, b in itertools.combinations(methods, 2)
    ]
    return DirectionCosines(
        across_layers, pd.DataFrame(rows, columns=["layer", "method_a", "method_b", "cosine"])
    )
