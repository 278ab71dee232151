"""Layer selection: probes, projections, the behavioural sweep (resume, selection rule), find_layers, plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from workbench.activations import Activations
from workbench.datasets import ContrastiveSet, load
from workbench.errors import InvalidArgumentError
from workbench.layers import find_layers, rank_layers
from workbench.plots import plot_projection_histograms, plot_sweep_heatmaps, save_figure
from workbench.probing import LinearProbe, probe_layers
from workbench.projection import cohens_d, direction_cosines, projection_scores
from workbench.sweeps import NONE, Config, choose, grid, per_layer, summarize, sweep
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


def test_cohens_d():
    assert cohens_d(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 1.0])) == pytest.approx(2 / 2**0.5)
    assert cohens_d(torch.ones(3), torch.zeros(3)) == float("inf")


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


def summary_frame(rows: list[tuple[str, float, float]]) -> pd.DataFrame:
    """(config, compliance, degeneration) rows; config 'add@L xC' is parsed into layer and coef."""
    out = []
    for config, compliance, degeneration in rows:
        layer, coef = (None, np.nan) if config == NONE else map(float, config[4:].split("x"))
        out.append(
            {
                "config": config,
                "layer": None if layer is None else int(layer),
                "mode": NONE if layer is None else "add",
                "coef": coef,
                "compliance": compliance,
                "degeneration": degeneration,
                "n": 10,
            }
        )
    return pd.DataFrame(out).astype({"layer": "Int64"})


def test_choose_takes_the_best_config_that_degenerates_no_more_than_no_steering():
    summary = summary_frame(
        [
            (NONE, 0.2, 0.1),
            ("add@2x1", 0.5, 0.1),
            ("add@2x4", 0.9, 0.6),  # best compliance, but degenerates more: not eligible
            ("add@4x1", 0.6, 0.0),
            ("add@4x2", 0.6, 0.0),  # tie: the smaller coefficient wins
        ]
    )
    choice = choose(summary)
    assert (choice.config, choice.layer, choice.coef) == ("add@4x1", 4, 1.0)
    assert choice.compliance == 0.6 and choice.baseline_compliance == 0.2
    layers = per_layer(summary).set_index("layer")
    assert layers.loc[2, "compliance"] == 0.5 and layers.loc[2, "max_compliance"] == 0.9
    assert layers.loc[4, "coef"] == 1.0 and layers["steers"].all()


@pytest.mark.parametrize(
    "rows",
    [
        [(NONE, 0.3, 0.0), ("add@2x1", 0.8, 0.1), ("add@4x1", 0.9, 0.5)],  # all degenerate more
        [(NONE, 0.3, 0.2), ("add@2x1", 0.3, 0.0), ("add@4x1", 0.1, 0.1)],  # none beats no steering
    ],
)
def test_choose_can_pick_no_steering(rows):
    choice = choose(summary_frame(rows))
    assert choice.config == NONE and choice.layer is None and choice.coef is None
    assert choice.compliance == 0.3
    assert not per_layer(summary_frame(rows))["steers"].any()


def test_choose_needs_the_unsteered_reference():
    with pytest.raises(InvalidArgumentError):
        choose(summary_frame([("add@2x1", 0.5, 0.0)]))


def random_vector(model):
    directions = torch.randn(model.n_layers, model.d_model, generator=torch.Generator().manual_seed(0))
    return SteeringVector.from_directions(directions, n_layers=model.n_layers)


def small_set() -> ContrastiveSet:
    validation = load("json_format", "validation")
    return ContrastiveSet(validation.name, validation.split, validation.items[:3])


def test_sweep_resumes_after_an_interruption_without_redoing_rows(tiny, tmp_path):
    vector, items = random_vector(tiny), small_set()
    configs = grid([1, 2], coefs=(1.0, 4.0))
    assert [c.name for c in configs] == [NONE, "add@1x1", "add@1x4", "add@2x1", "add@2x4"]
    kw = {"max_new_tokens": 4, "batch_size": 8, "chunk_size": 4}
    whole = sweep(tiny, vector, items, configs, out_dir=tmp_path / "whole", **kw)
    assert len(whole) == 15 and list(whole["config"].unique()) == [c.name for c in configs]
    assert whole["follows"].dtype == bool and whole["degenerate"].dtype == bool
    assert whole.loc[whole["config"] == NONE, "layer"].isna().all()

    def interrupt(chunk):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep(tiny, vector, items, configs, out_dir=tmp_path / "resumed", on_chunk=interrupt, **kw)
    assert len(list((tmp_path / "resumed").glob("part-*.parquet"))) == 1
    redone: list[int] = []
    resumed = sweep(
        tiny,
        vector,
        items,
        configs,
        out_dir=tmp_path / "resumed",
        on_chunk=lambda c: redone.append(len(c)),
        **kw,
    )
    assert sum(redone) == 15 - 4  # the first chunk was not generated again
    pd.testing.assert_frame_equal(resumed, whole)
    pd.testing.assert_frame_equal(sweep(tiny, vector, items, configs, **kw), whole)

    rerun: list[int] = []
    again = sweep(
        tiny, vector, items, configs, out_dir=tmp_path / "whole", on_chunk=lambda c: rerun.append(1), **kw
    )
    assert rerun == [] and again.equals(whole)
    summary = summarize(whole)
    assert list(summary["config"]) == [c.name for c in configs] and summary["n"].eq(3).all()
    with pytest.raises(InvalidArgumentError, match="other settings"):
        sweep(tiny, vector, items, configs, out_dir=tmp_path / "whole", **{**kw, "max_new_tokens": 5})
    with pytest.raises(InvalidArgumentError, match="unsteered"):
        sweep(tiny, vector, items, configs[1:], **kw)


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
        "compliance",
        "degeneration",
    ):
        assert frame[column].notna().all(), column
    assert report.configs_run == report.configs_full == 1 + tiny.n_layers and report.cost == 1.0
    assert set(report.picks) == {"probe_accuracy", "projection_auroc", "cohens_d", "sweep"}
    signals = report.signals()
    assert list(signals["signal"]) == ["probe_accuracy", "projection_auroc", "cohens_d", "sweep"]
    assert (signals["compliance_loss"] >= 0).all()
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


def test_grid_and_config_names():
    assert [c.name for c in grid([3], mode="set_projection")] == [NONE, "set_projection@3"]
    assert Config().name == NONE
    with pytest.raises(InvalidArgumentError):
        grid([1], mode="add", coefs=())
