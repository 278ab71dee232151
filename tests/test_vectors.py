"""SteeringVector: the value, its stats and provenance, construction, algebra, and from_dataset."""

from __future__ import annotations

import math

import pytest
import torch

from tests.synthetic_vectors import other_vector, planted, planted_vector
from workbench.activations import Activations
from workbench.errors import InvalidArgumentError, ShapeMismatchError
from workbench.methods import LayerStats
from workbench.vectors import SteeringVector, cosine


@pytest.fixture(scope="module")
def sets() -> tuple[Activations, Activations, torch.Tensor]:
    return planted()


@pytest.fixture(scope="module")
def vec() -> SteeringVector:
    return planted_vector()


def test_stats(vec, sets):
    pos, neg, _ = sets
    for j, layer in enumerate(vec.layers):
        s = vec.stats[layer]
        assert s.pos_mean_proj > s.neg_mean_proj
        assert s.separation == pytest.approx(s.pos_mean_proj - s.neg_mean_proj)
        assert (s.n_pos, s.n_neg) == (64, 64)
        mean_diff = pos.tensor[:, j].double().mean(0) - neg.tensor[:, j].double().mean(0)
        assert s.diff_norm == pytest.approx(float(mean_diff.norm()), rel=1e-9)
        assert s.separation == pytest.approx(3.0, abs=0.4)
        assert torch.allclose(vec.raw(layer), vec.direction(layer) * s.diff_norm)
        both = torch.cat([pos.tensor[:, j], neg.tensor[:, j]]).double()
        assert s.resid_norm == pytest.approx(float(both.norm(dim=1).mean()), rel=1e-9)


def test_shape_and_provenance(vec):
    assert vec.directions.dtype == torch.float32
    assert vec.directions.shape == (3, 32) and vec.d_model == 32 and vec.layers == (1, 2, 3)
    p = vec.provenance
    assert p["model_name"] == "tiny-model" and p["weights_hash"] == "abc123"
    assert p["hook"] == "resid_post" and p["position"] == "last_prompt"
    assert p["method"] == "diff_in_means" and p["paired"] is True
    assert p["dataset"] == "synthetic" and p["dataset_hash"] == "ds-hash"
    assert p["positive_prompts_hash"] == "pos-hash" and p["negative_prompts_hash"] == "neg-hash"
    assert p["d_model"] == 32 and "n_layers" in p
    assert p["workbench_version"] and p["created"].endswith("+00:00")


def test_raw_tensors_are_wrapped():
    pos, neg, u = planted()
    v = SteeringVector.from_activations(pos.tensor, neg.tensor)
    assert v.layers == (0, 1, 2)
    assert float(v.direction(0) @ u) > 0.99


def test_direction_for_a_missing_layer(vec):
    with pytest.raises(InvalidArgumentError, match="no layer 7"):
        vec.direction(7)


# ---- from_directions -----------------------------------------------------------------------------------


def test_from_directions_normalises_and_keeps_norms():
    raw = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    v = SteeringVector.from_directions(raw, (5, 9), method="random", seed=3)
    assert torch.allclose(v.directions, torch.tensor([[0.6, 0.8], [0.0, -1.0]]))
    assert v.stats[5].diff_norm == pytest.approx(5.0) and v.stats[9].diff_norm == pytest.approx(2.0)
    assert torch.allclose(v.raw(5), raw[0]) and torch.allclose(v.raw(9), raw[1])
    assert v.provenance["method"] == "random" and v.provenance["seed"] == 3
    assert v.stats[5].pos_mean_proj is None and v.stats[5].n_pos is None
    assert SteeringVector.from_directions(raw).layers == (0, 1)


def test_from_directions_refusals():
    with pytest.raises(InvalidArgumentError, match="NaN or inf"):
        SteeringVector.from_directions(torch.tensor([[1.0, float("nan")]]), (0,))
    with pytest.raises(InvalidArgumentError, match=r"zero at layers \(4\)"):
        SteeringVector.from_directions(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), (3, 4))
    with pytest.raises(ShapeMismatchError, match="2 rows but layers has 3"):
        SteeringVector.from_directions(torch.ones(2, 4), (0, 1, 2))
    with pytest.raises(InvalidArgumentError, match=r"v\[None, :\]"):
        SteeringVector.from_directions(torch.ones(4), (0,))


def test_constructor_refuses_non_unit_directions():
    with pytest.raises(InvalidArgumentError, match="unit norm"):
        SteeringVector(torch.ones(1, 4), (0,), {0: LayerStats(diff_norm=1.0)})
    with pytest.raises(ShapeMismatchError, match="stats"):
        SteeringVector(torch.eye(2), (0, 1), {0: LayerStats(diff_norm=1.0)})
    with pytest.raises(InvalidArgumentError, match="diff_norm"):
        LayerStats(diff_norm=0.0)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_direction(value):
    rows = torch.randn(4, 8)
    rows[1, 5] = value
    with pytest.raises(InvalidArgumentError, match="NaN or inf"):
        SteeringVector.from_directions(rows)


# ---- values --------------------------------------------------------------------------------------------


def test_vectors_are_immutable_values(vec):
    before = vec.directions.clone()
    vec.direction(1).zero_()
    _ = -vec, 2 * vec, vec + vec, vec.normalized()
    assert torch.equal(vec.directions, before)
    with pytest.raises(AttributeError):
        vec.layers = (0,)


def test_negation(vec):
    neg = -vec
    assert torch.equal(neg.directions, -vec.directions)
    for layer in vec.layers:
        s, t = vec.stats[layer], neg.stats[layer]
        assert t.pos_mean_proj == -s.neg_mean_proj and t.neg_mean_proj == -s.pos_mean_proj
        assert (t.n_pos, t.n_neg) == (s.n_neg, s.n_pos) and t.diff_norm == s.diff_norm
        assert t.resid_norm == s.resid_norm
        assert t.pos_mean_proj > t.neg_mean_proj
    assert neg.provenance["operations"] == ["negate"]
    assert torch.equal((-neg).directions, vec.directions) and (-neg).stats == vec.stats


def test_scaling(vec):
    doubled = 2 * vec
    assert torch.equal(doubled.directions, vec.directions)
    for layer in vec.layers:
        assert doubled.stats[layer].diff_norm == pytest.approx(2 * vec.stats[layer].diff_norm)
        assert doubled.stats[layer].pos_mean_proj == vec.stats[layer].pos_mean_proj
        assert doubled.stats[layer].resid_norm == vec.stats[layer].resid_norm
    assert vec * 2 == doubled
    assert doubled.provenance["operations"] == ["scale(2.0)"]
    halved = vec / 2
    assert halved.stats[1].diff_norm == pytest.approx(vec.stats[1].diff_norm / 2)
    flipped = -0.5 * vec
    assert torch.equal(flipped.directions, (-vec).directions)
    assert flipped.stats[1].diff_norm == pytest.approx(0.5 * vec.stats[1].diff_norm)
    assert flipped.stats[1].pos_mean_proj == (-vec).stats[1].pos_mean_proj


def test_scaling_refusals(vec):
    with pytest.raises(InvalidArgumentError, match="non-zero"):
        _ = 0 * vec
    with pytest.raises(InvalidArgumentError):
        _ = vec * float("inf")
    with pytest.raises(InvalidArgumentError):
        _ = vec / 0
    with pytest.raises(TypeError):
        _ = vec * "2"
    with pytest.raises(TypeError):
        _ = vec + 1


def test_addition_operates_on_raw_vectors(vec):
    w = other_vector()
    total = vec + w
    for layer in vec.layers:
        expected = vec.raw(layer).double() + w.raw(layer).double()
        assert torch.allclose(total.raw(layer).double(), expected, atol=1e-5)
        assert total.stats[layer].diff_norm == pytest.approx(float(expected.norm()))
        assert total.stats[layer].pos_mean_proj is None
        assert total.stats[layer].resid_norm == vec.stats[layer].resid_norm  # w (from_directions) has none
    assert total.provenance["method"] == "add"
    assert total.provenance["model_name"] == "tiny-model"
    assert total.provenance["operands"] == [vec.provenance, w.provenance]
    diff = vec - w
    for layer in vec.layers:
        assert torch.allclose(diff.raw(layer), vec.raw(layer) - w.raw(layer), atol=1e-5)


def test_v_plus_v_doubles_and_v_minus_v_is_refused(vec):
    twice = vec + vec
    assert torch.allclose(twice.directions, vec.directions, atol=1e-7)
    assert twice.stats[2].diff_norm == pytest.approx(2 * vec.stats[2].diff_norm)
    with pytest.raises(InvalidArgumentError, match="zero at layer 1"):
        _ = vec - vec


def test_addition_needs_matching_layers_and_d_model(vec):
    with pytest.raises(ShapeMismatchError, match=r"layers \(1, 2, 3\) and \(1, 2\)"):
        _ = vec + other_vector(layers=(1, 2))
    with pytest.raises(ShapeMismatchError, match="d_model 32 and 16"):
        _ = vec + other_vector(d=16)
    reordered = other_vector(layers=(3, 1, 2))
    assert (vec + reordered).layers == vec.layers


def test_cosine(vec):
    same = cosine(vec, vec)
    assert set(same) == {1, 2, 3}
    assert all(value == pytest.approx(1.0, abs=1e-12) for value in same.values())
    assert all(value == pytest.approx(-1.0, abs=1e-12) for value in vec.cosine(-vec).values())
    assert set(cosine(vec, other_vector(layers=(2, 3, 4)))) == {2, 3}
    with pytest.raises(ShapeMismatchError, match="share no layer"):
        cosine(vec, other_vector(layers=(7,)))
    with pytest.raises(ShapeMismatchError, match="d_model"):
        cosine(vec, other_vector(d=8))


def test_normalized_and_select(vec):
    unit = vec.normalized()
    assert all(s.diff_norm == 1.0 for s in unit.stats.values())
    assert torch.equal(unit.directions, vec.directions)
    assert torch.allclose(unit.raw(2), vec.direction(2))
    sub = vec.select([3, 1])
    assert sub.layers == (3, 1)
    assert torch.equal(sub.direction(3), vec.direction(3)) and sub.stats[1] == vec.stats[1]
    assert sub.provenance["operations"] == ["select([3, 1])"]
    assert vec.select(2).layers == (2,)
    with pytest.raises(InvalidArgumentError, match="no layer 9"):
        vec.select([9])


def test_non_finite_scale_of_vector(vec):
    with pytest.raises(InvalidArgumentError, match="finite"):
        _ = vec * math.nan


# ---- from_dataset: the one call from data to vector --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "variant", "tag"), [("json_format", None, "json_format"), ("italian", "it", "italian:it")]
)
def test_from_dataset_equals_collecting_by_hand(tiny, tmp_path, monkeypatch, name, variant, tag):
    from workbench.activations import collect
    from workbench.datasets import load

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "a"))
    data = load(name, "train", variant=variant).head(5)
    vector = SteeringVector.from_dataset(tiny, data, layers=[1, 3], method="pca", batch_size=2)
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "b"))  # the hand-written path computes afresh
    pos = collect(tiny, data.positive, layers=[1, 3], cache=False)
    neg = collect(tiny, data.negative, layers=[1, 3], cache=False)
    by_hand = SteeringVector.from_activations(pos, neg, "pca", dataset=tag, dataset_hash=data.hash)
    assert vector.layers == (1, 3)
    torch.testing.assert_close(vector.directions, by_hand.directions, rtol=0, atol=1e-6)
    for layer in vector.layers:
        assert vector.stats[layer].diff_norm == pytest.approx(by_hand.stats[layer].diff_norm, rel=1e-6)
    drop = ("created",)
    assert {k: v for k, v in vector.provenance.items() if k not in drop} == {
        k: v for k, v in by_hand.provenance.items() if k not in drop
    }
    assert vector.provenance["dataset"] == tag and vector.provenance["dataset_hash"] == data.hash
    assert vector.provenance["method"] == "pca" and vector.provenance["position"] == "last_prompt"


def test_from_dataset_passes_position_and_chat(tiny, tmp_path, monkeypatch):
    from workbench.datasets import load

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    data = load("json_format", "train").head(4)
    last = SteeringVector.from_dataset(tiny, data, layers=[2])
    mean = SteeringVector.from_dataset(tiny, data, layers=[2], position="prompt", chat=False)
    assert mean.provenance["position"] == "prompt" and mean.provenance["chat"] is False
    assert last.provenance["chat"] is True
    assert abs(cosine(last, mean)[2]) < 0.999  # another position rule gives another direction
