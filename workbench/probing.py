"""Linear probes: where along the depth of a model is a behaviour linearly readable?

:class:`LinearProbe` is a standardised logistic regression whose strength ``C`` is chosen by inner
cross-validation; :func:`probe_layers` scores one probe per layer with nested cross-validation (``C`` chosen
inside each outer training fold, the scaler fit on that fold only), so its accuracy is an honest estimate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from jaxtyping import Float, Int
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from workbench.activations import Activations
from workbench.errors import InvalidArgumentError, ShapeMismatchError

__all__ = ["LinearProbe", "probe_layers"]


def _splitter(cv: int, seed: int, grouped: bool) -> StratifiedKFold | StratifiedGroupKFold:
    kind = StratifiedGroupKFold if grouped else StratifiedKFold
    return kind(n_splits=cv, shuffle=True, random_state=seed)


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Logistic regression on standardised features, ``C`` picked from ``Cs`` by ``cv``-fold log loss.

    Learned state (numpy arrays, like scikit-learn's): ``coef_`` [1, d] and ``intercept_`` [1] act on the
    *raw* features (the scaler is folded in, so ``coef_[0]`` is a direction in activation space), ``C_`` the
    chosen strength, ``classes_`` the two labels (``classes_[1]`` is the positive class).
    """

    def __init__(self, Cs: Sequence[float] = (0.01, 0.1, 1, 10), cv: int = 5, seed: int = 0) -> None:
        self.Cs = Cs
        self.cv = cv
        self.seed = seed

    def fit(
        self,
        X: Float[np.ndarray, "n d"],
        y: Int[np.ndarray, " n"],
        groups: Int[np.ndarray, " n"] | None = None,
    ) -> LinearProbe:
        """Fit on ``X``, ``y`` (two classes). Samples sharing a ``groups`` value stay in one inner fold."""
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
        if X.ndim != 2 or X.shape[0] != y.shape[0]:
            raise ShapeMismatchError(f"X must be [n, d] with one label per row; got X {X.shape}, y {y.shape}")
        classes = np.unique(y)
        if classes.size != 2:
            raise InvalidArgumentError(f"a probe needs exactly two classes, got {classes.size}")
        if not self.Cs or any(c <= 0 for c in self.Cs):
            raise InvalidArgumentError(f"Cs must be positive numbers, got {self.Cs!r}")
        if not isinstance(self.cv, int) or self.cv < 2:
            raise InvalidArgumentError(f"cv must be an integer ≥ 2, got {self.cv!r}")
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5_000))
        search = GridSearchCV(
            pipeline,
            {"logisticregression__C": list(self.Cs)},
            scoring="neg_log_loss",
            cv=_splitter(self.cv, self.seed, groups is not None),
        )
        search.fit(X, y, groups=groups)
        scaler, clf = search.best_estimator_[0], search.best_estimator_[1]
        self.coef_ = clf.coef_ / scaler.scale_
        self.intercept_ = clf.intercept_ - self.coef_ @ scaler.mean_
        self.C_ = np.asarray(search.best_params_["logisticregression__C"], dtype=np.float64)
        self.classes_ = classes
        return self

    def decision_function(self, X: Float[np.ndarray, "n d"]) -> Float[np.ndarray, " n"]:
        """Log-odds of the positive class ``classes_[1]``."""
        if not hasattr(self, "coef_"):
            raise InvalidArgumentError("this LinearProbe is not fitted yet: call fit(X, y) first")
        return np.asarray(X, dtype=np.float64) @ self.coef_[0] + self.intercept_[0]

    def predict_proba(self, X: Float[np.ndarray, "n d"]) -> Float[np.ndarray, "n 2"]:
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.stack([1.0 - p, p], axis=1)

    def predict(self, X: Float[np.ndarray, "n d"]) -> np.ndarray:
        positive = self.decision_function(X) > 0
        return self.classes_[positive.astype(int)]

    def score(self, X: Float[np.ndarray, "n d"], y: np.ndarray) -> float:
        """Accuracy."""
        return float(np.mean(self.predict(X) == np.asarray(y)))


def probe_layers(
    pos: Activations,
    neg: Activations,
    *,
    folds: int = 5,
    seed: int = 0,
    Cs: Sequence[float] = (0.01, 0.1, 1, 10),
    paired: bool = True,
) -> pd.DataFrame:
    """Nested cross-validated probe scores per layer: one row per layer of ``pos``/``neg``.

    Columns ``layer, accuracy, accuracy_std, auroc, auroc_std, C`` (the most often chosen ``C``): mean and
    std over ``folds`` stratified outer folds, each fitting a :class:`LinearProbe` (its own inner CV for
    ``C``) on the training folds. With ``paired`` (equal sizes, ``pos[i]`` and ``neg[i]`` from one query) a
    pair never straddles a fold, so a probe cannot score by recognising the query.
    """
    if pos.layers != neg.layers or pos.d_model != neg.d_model:
        raise ShapeMismatchError("positive and negative activations must share layers and d_model")
    if paired and pos.n != neg.n:
        raise ShapeMismatchError(f"paired sets need equal sizes, got {pos.n} and {neg.n}; pass paired=False")
    if min(pos.n, neg.n) < folds:
        raise InvalidArgumentError(f"{folds} folds need at least {folds} examples per class")
    y = np.concatenate([np.ones(pos.n, dtype=int), np.zeros(neg.n, dtype=int)])
    groups = np.concatenate([np.arange(pos.n), np.arange(neg.n)]) if paired else None
    splits = list(_splitter(folds, seed, paired).split(np.zeros(y.size), y, groups))
    rows = []
    for layer in pos.layers:
        X = np.concatenate([pos.layer(layer).double().numpy(), neg.layer(layer).double().numpy()])
        accuracy, auroc, chosen = [], [], []
        for train, test in splits:
            probe = LinearProbe(Cs, cv=folds, seed=seed)
            probe.fit(X[train], y[train], None if groups is None else groups[train])
            accuracy.append(probe.score(X[test], y[test]))
            auroc.append(roc_auc_score(y[test], probe.decision_function(X[test])))
            chosen.append(float(probe.C_))
        rows.append(
            {
                "layer": layer,
                "accuracy": float(np.mean(accuracy)),
                "accuracy_std": float(np.std(accuracy)),
                "auroc": float(np.mean(auroc)),
                "auroc_std": float(np.std(auroc)),
                "C": max(set(chosen), key=lambda c: (chosen.count(c), -c)),
            }
        )
    return pd.DataFrame(rows)
