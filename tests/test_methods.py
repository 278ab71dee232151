"""Extraction methods and their checks: planted directions, refusals, LayerStats (synthetic data)."""

from __future__ import annotations

import pytest
import torch

from tests.synthetic_vectors import SETTINGS, planted
from workbench.activations import Activations
from workbench.errors import InvalidArgumentError, ShapeMismatchError
from workbench.methods import METHODS, LayerStats, diff_in_means, extract, pca, probe, resolve
from workbench.vectors import SteeringVector


@pytest.fixture(scope="module")
def sets() -> tuple[Activations, Activations, torch.Tensor]:
    return planted()


# ---- methods -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["diff_in_means", "pca"])
def test_methods_recover_planted_direction(sets, method):
    pos, neg, u = sets
    v = SteeringVector.from_activations(pos, neg, method)
    for layer in v.layers:
        assert float(v.direction(layer) @ u) > 0.99


def test_probe_recovers_planted_direction():
    pos, neg, u = planted(n=256, d=16)
    v = SteeringVector.from_activations(pos, neg, "probe")
    for layer in v.layers:
        assert float(v.direction(layer) @ u) > 0.9


def test_probe_is_deterministic():
    pos, neg, _ = planted(n=128, d=16)
    assert torch.equal(
        SteeringVector.from_activations(pos, neg, "probe").directions,
        SteeringVector.from_activations(pos, neg, "probe").directions,
    )


def test_diff_in_means_from_a_constant_shift_but_pca_follows_the_noise():
    # The documented limitation: PCA centres the differences, which removes a constant shift entirely.
    pos, neg, u = planted(varying=False)
    mean_dir = SteeringVector.from_activations(pos, neg, "diff_in_means")
    pca_dir = SteeringVector.from_activations(pos, neg, "pca")
    for layer in mean_dir.layers:
        assert float(mean_dir.direction(layer) @ u) > 0.99
        assert abs(float(pca_dir.direction(layer) @ u)) < 0.5


def test_pca_sign_is_aligned_with_the_mean_difference(sets):
    pos, neg, _ = sets
    forward = SteeringVector.from_activations(pos, neg, "pca")
    backward = SteeringVector.from_activations(neg, pos, "pca")
    for j, layer in enumerate(forward.layers):
        mean_diff = pos.tensor[:, j].mean(0) - neg.tensor[:, j].mean(0)
        assert float(forward.direction(layer) @ mean_diff) > 0
        assert torch.allclose(backward.direction(layer), -forward.direction(layer), atol=1e-5)


def test_method_functions_return_unit_directions(sets):
    pos, neg, _ = sets
    p, q = pos.tensor[:, 0].double(), neg.tensor[:, 0].double()
    for fn in (diff_in_means, pca, probe):
        assert float(fn(p, q).norm()) == pytest.approx(1.0, abs=1e-9)
    assert set(METHODS) == {"diff_in_means", "pca", "probe"}


def test_custom_method_function(sets):
    pos, neg, _ = sets
    v = SteeringVector.from_activations(pos, neg, lambda p, q: p[0] - q[0])
    assert v.provenance["method"] == "<lambda>"
    assert torch.allclose(v.directions.norm(dim=1), torch.ones(3))


def test_pca_refuses_differences_that_do_not_vary():
    base = torch.randn(4, 1, 8)
    shift = torch.randn(8)
    with pytest.raises(InvalidArgumentError, match=r"layer 0.*diff_in_means"):
        SteeringVector.from_activations(base + shift, base, "pca")


def test_diff_in_means_paired_equals_unpaired_mean_difference(sets):
    pos, neg, _ = sets
    paired = SteeringVector.from_activations(pos, neg, paired=True)
    unpaired = SteeringVector.from_activations(pos, neg, paired=False)
    assert torch.allclose(paired.directions, unpaired.directions, atol=1e-6)


def test_unpaired_sets_of_different_sizes(sets):
    pos, neg, u = sets
    fewer = Activations(neg.tensor[:40], neg.layers, "", dict(SETTINGS))
    v = SteeringVector.from_activations(pos, fewer, paired=False)
    assert v.stats[1].n_pos == 64 and v.stats[1].n_neg == 40
    assert float(v.direction(1) @ u) > 0.95  # unpaired: the per-pair base no longer cancels, so noisier


# ---- stats and provenance ------------------------------------------------------------------------------


# ---- refusals ------------------------------------------------------------------------------------------


def test_refuses_empty_positive_set(sets):
    _, neg, _ = sets
    empty = Activations(torch.zeros(0, 3, 32), (1, 2, 3), "")
    with pytest.raises(InvalidArgumentError, match="positive set is empty"):
        SteeringVector.from_activations(empty, neg)


def test_refuses_one_class_data(sets):
    pos, _, _ = sets
    empty = Activations(torch.zeros(0, 3, 32), (1, 2, 3), "")
    with pytest.raises(InvalidArgumentError, match="negative set is empty"):
        SteeringVector.from_activations(pos, empty, paired=False)


def test_refuses_unpaired_sets_when_paired(sets):
    pos, neg, _ = sets
    fewer = Activations(neg.tensor[:10], neg.layers, "")
    with pytest.raises(ShapeMismatchError, match="64 positive and 10 negative"):
        SteeringVector.from_activations(pos, fewer)


def test_refuses_pca_without_pairs(sets):
    pos, neg, _ = sets
    with pytest.raises(InvalidArgumentError, match="needs paired sets"):
        SteeringVector.from_activations(pos, neg, "pca", paired=False)


def test_refuses_different_layers(sets):
    pos, neg, _ = sets
    shifted = Activations(neg.tensor, (2, 3, 4), "")
    with pytest.raises(ShapeMismatchError, match=r"\(1, 2, 3\).*\(2, 3, 4\)"):
        SteeringVector.from_activations(pos, shifted)


def test_refuses_different_d_model(sets):
    pos, neg, _ = sets
    narrow = Activations(neg.tensor[:, :, :16], neg.layers, "")
    with pytest.raises(ShapeMismatchError, match="d_model 32 but negative have 16"):
        SteeringVector.from_activations(pos, narrow)


def test_refuses_different_models(sets):
    pos, neg, _ = sets
    other = Activations(neg.tensor, neg.layers, "", {**SETTINGS, "model_name": "other-model"})
    with pytest.raises(InvalidArgumentError, match="model_name"):
        SteeringVector.from_activations(pos, other)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_refuses_non_finite_activations(sets, bad):
    pos, neg, _ = sets
    t = pos.tensor.clone()
    t[5, 1, 7] = bad
    with pytest.raises(InvalidArgumentError, match="positive activations contain NaN or inf at layer 2"):
        SteeringVector.from_activations(Activations(t, pos.layers, ""), neg)


def test_refuses_zero_difference_and_names_the_layer(sets):
    pos, neg, _ = sets
    t = neg.tensor.clone()
    t[:, 2] = pos.tensor[:, 2]
    with pytest.raises(InvalidArgumentError, match="at layer 3 the positive and negative means coincide"):
        SteeringVector.from_activations(pos, Activations(t, neg.layers, ""))


def test_refuses_unknown_method_and_bad_shapes(sets):
    pos, neg, _ = sets
    with pytest.raises(InvalidArgumentError, match="unknown method 'mean'"):
        SteeringVector.from_activations(pos, neg, "mean")
    with pytest.raises(InvalidArgumentError, match=r"\[n, layer, d_model\]"):
        SteeringVector.from_activations(pos.tensor[:, 0], neg.tensor[:, 0])
    with pytest.raises(InvalidArgumentError, match="Activations or a tensor"):
        SteeringVector.from_activations([1, 2], neg)


def test_every_refusal_is_one_line(sets):
    pos, neg, _ = sets
    with pytest.raises(ShapeMismatchError) as info:
        SteeringVector.from_activations(pos, Activations(neg.tensor[:3], neg.layers, ""))
    assert "\n" not in str(info.value)


# ---- extract and LayerStats directly ----------------------------------------------------------------------


def test_extract_returns_unit_directions_and_layer_stats(sets):
    pos, neg, _ = sets
    name, directions, stats = extract(pos, neg, "diff_in_means")
    assert name == "diff_in_means" and directions.shape == (3, 32) and directions.dtype == torch.float64
    assert torch.allclose(directions.norm(dim=1), torch.ones(3, dtype=torch.float64))
    for j, layer_stats in enumerate(stats):
        mean_diff = pos.tensor[:, j].double().mean(0) - neg.tensor[:, j].double().mean(0)
        assert layer_stats.diff_norm == pytest.approx(float(mean_diff.norm()))
        assert layer_stats.separation == pytest.approx(float(mean_diff @ directions[j]))
        assert (layer_stats.n_pos, layer_stats.n_neg) == (64, 64)


def test_resolve_names_and_functions():
    assert resolve("pca") == ("pca", pca)
    assert resolve(diff_in_means) == ("diff_in_means", diff_in_means)
    with pytest.raises(InvalidArgumentError, match="use one of diff_in_means, pca, probe"):
        resolve("lda")


def test_a_method_returning_the_wrong_shape_or_zero_is_refused(sets):
    pos, neg, _ = sets
    with pytest.raises(ShapeMismatchError, match=r"returned shape \(31,\) at layer 1"):
        extract(pos, neg, lambda p, q: p[0, :31])
    with pytest.raises(InvalidArgumentError, match="direction at layer 1 is zero"):
        extract(pos, neg, lambda p, q: torch.zeros(p.shape[1]))


def test_layer_stats_refuse_bad_values_and_round_trip_json():
    stats = LayerStats(diff_norm=2, pos_mean_proj=1.5, neg_mean_proj=-0.5, n_pos=3, n_neg=4, resid_norm=9)
    assert LayerStats.from_json(stats.to_json()) == stats and isinstance(stats.diff_norm, float)
    assert stats.negated() == LayerStats(
        diff_norm=2.0, pos_mean_proj=0.5, neg_mean_proj=-1.5, n_pos=4, n_neg=3, resid_norm=9.0
    )
    for bad, match in [
        ({"diff_norm": 0.0}, "diff_norm must be a finite number > 0"),
        ({"diff_norm": float("nan")}, "diff_norm"),
        ({"diff_norm": 1.0, "resid_norm": float("inf")}, "resid_norm must be a finite number or None"),
        ({"diff_norm": 1.0, "n_pos": -1}, "n_pos must be a count"),
        ({"diff_norm": 1.0, "n_neg": True}, "n_neg must be a count"),
    ]:
        with pytest.raises(InvalidArgumentError, match=match):
            LayerStats(**bad)
