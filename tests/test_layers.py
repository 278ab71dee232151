"""Layer selection: probes and projections find the planted layer, find_layers and its plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from workbench.activations import Activations
from workbench.errors import InvalidArgumentError
from workbench.layers import find_layers, rank_layers
from workbench.plots import plot_projection_histograms, plot_sweep_heatmaps, save_figure
from workbench.probing import probe_layers
from workbench.projection import direction_cosines, projection_scores
from workbench.vectors import SteeringVector

SIGNAL_LAYER = 3


def planted(
    n: int, seed: int, d: int = 32, n_layers: int = 6
) -> tuple[Activations, Activations, torch.Tensor]:
    """Pairs sharing a random base; only at SIGNAL_LAYER does the positive one carry ``s_i·u`` (s_i in [4, 6])."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=torch.Generator().manual_seed(123))
    u /= u.norm()
    base = torch.randn(n, n_layers, d, generator=g)
    pos = base + 0.3 * torch.randn(n, n_layers, d, generator=g)
    neg = base + 0.3 * torch.randn(n, n_layers, d, generator=g)
    pos[:, SIGNAL_LAYER] += (4 + 2 * torch.rand(n, 1, generator=g)) * u
    return Activations.from_tensor(pos), Activations.from_tensor(neg), u


def test_probes_and_projections_pick_the_planted_layer():
    train_pos, train_neg, u = planted(120, seed=0)
    test_pos, test_neg, _ = planted(60, seed=1)
    probes = probe_layers(train_pos, train_neg, folds=3)
    assert list(probes["layer"]) == list(range(6))
    assert probes.loc[SIGNAL_LAYER, "accuracy"] > 0.95 and probes.loc[SIGNAL_LAYER, "auroc"] > 0.99
    assert probes.drop(index=SIGNAL_LAYER)["accuracy"].max() < 0.75
    assert probes["accuracy_std"].ge(0).all() and probes["C"].isin([0.01, 0.1, 1, 10]).all()

    scores, projections = projection_scores(train_pos, train_neg, test_pos, test_neg)
    assert scores.loc[scores["auroc"].idxmax(), "layer"] == SIGNAL_LAYER
    assert scores.loc[SIGNAL_LAYER, "auroc"] > 0.99 and scores.loc[SIGNAL_LAYER, "cohens_d"] > 3
    assert scores.drop(index=SIGNAL_LAYER)["auroc"].max() < 0.8
    assert len(projections) == 6 * (60 + 60)
    assert set(projections["label"]) == {"positive", "negative"}

    frame = probes.rename(columns={"accuracy": "probe_accuracy"}).merge(
        scores.rename(columns={"auroc": "projection_auroc"}), on="layer"
    )
    assert rank_layers(frame)[0] == SIGNAL_LAYER

    vector = SteeringVector.from_activations(train_pos, train_neg)
    assert float(vector.direction(SIGNAL_LAYER) @ u) > 0.99
    cosines = direction_cosines(train_pos, train_neg)
    assert cosines.across_layers.shape == (6, 6)
    assert np.allclose(np.diag(cosines.across_layers), 1.0, atol=1e-5)
    at = cosines.across_methods[cosines.across_methods["layer"] == SIGNAL_LAYER]
    assert (
        len(at) == 3 and at["cosine"].min() > 0.9
    )  # diff_in_means, pca and probe agree where there is signal


def test_find_layers_reports_signals_and_reuses_the_sweep_in_top_k_mode(tiny, tmp_path):
    kw = {"coefs": (1.0,), "n_validation": 2, "max_new_tokens": 3, "folds": 2, "out_dir": tmp_path}
    report = find_layers(tiny, "json_format", **kw)
    frame = report.to_frame()
    assert list(frame["layer"]) == list(range(tiny.n_layers)) and frame["swept"].all()
    for column in (
        "probe_accuracy",
        "probe_auroc",
        "projection_auroc",
        "cohens_d",
        "target_rate",
        "degeneration",
    ):
        assert frame[column].notna().all(), column
    assert report.configs_run == report.configs_full == 1 + tiny.n_layers and report.cost == 1.0
    assert set(report.picks) == {"probe_accuracy", "projection_auroc", "cohens_d", "sweep"}
    signals = report.signals()
    assert list(signals["signal"]) == ["probe_accuracy", "projection_auroc", "cohens_d", "sweep"]
    assert (signals["target_rate_loss"] >= 0).all()
    assert isinstance(report.plot(), Figure)

    top = find_layers(tiny, "json_format", top_k=2, **kw)
    assert len(top.swept_layers) == 2 and top.configs_run == 3 and top.cost == pytest.approx(3 / 5)
    assert set(top.swept_layers) == set(rank_layers(frame)[:2])
    derived = report.top_k(2)
    assert derived.choice == top.choice and derived.configs_run == top.configs_run
    pd.testing.assert_frame_equal(derived.summary, top.summary)
    shared = report.results[report.results["config"].isin(top.results["config"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(top.results, shared)  # read back, not regenerated
    assert frame["layer"].isin(top.to_frame().query("swept")["layer"]).sum() == 2

    written = save_figure(plot_sweep_heatmaps(report.summary), tmp_path / "fig" / "heatmap")
    assert [p.suffix for p in written] == [".png", ".svg"] and all(p.stat().st_size > 0 for p in written)
    assert isinstance(plot_projection_histograms(report.projections, 1), Figure)
    with pytest.raises(InvalidArgumentError):
        save_figure(report.plot(), tmp_path / "x.png")
