"""The linear probe: a scikit-learn classifier with its scaler folded into the weights."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from workbench.errors import InvalidArgumentError
from workbench.probing import LinearProbe


def test_linear_probe_behaves_like_a_sklearn_classifier():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 10)) * np.arange(1, 11) + 5.0
    y = np.where(X[:, 0] + 0.2 * rng.normal(size=80) > 5.0, "yes", "no")
    probe = LinearProbe(Cs=(0.1, 1.0), cv=3)
    with pytest.raises(InvalidArgumentError):
        probe.predict(X)
    assert probe.fit(X, y) is probe
    assert probe.coef_.shape == (1, 10) and probe.intercept_.shape == (1,)
    assert float(probe.C_) in (0.1, 1.0) and list(probe.classes_) == ["no", "yes"]
    assert all(isinstance(a, np.ndarray) for a in (probe.coef_, probe.intercept_, probe.C_, probe.classes_))
    assert probe.score(X, y) > 0.9
    assert set(probe.predict(X)) <= {"no", "yes"}
    proba = probe.predict_proba(X)
    assert proba.shape == (80, 2) and np.allclose(proba.sum(1), 1.0)
    # the scaler is folded into coef_/intercept_: same as a standardised sklearn pipeline at C_
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=float(probe.C_), max_iter=5_000)).fit(
        X, y
    )
    assert np.allclose(proba, reference.predict_proba(X), atol=1e-6)
    assert clone(probe).get_params() == {"Cs": (0.1, 1.0), "cv": 3, "seed": 0}
    assert cross_val_score(LinearProbe(Cs=(1.0,), cv=2), X, y, cv=2).mean() > 0.8
    with pytest.raises(InvalidArgumentError):
        LinearProbe().fit(X, np.zeros(80))
