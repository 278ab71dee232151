"""SteeringVector: extraction methods, refusals, arithmetic, safetensors and GGUF files (synthetic data)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from workbench.activations import Activations
from workbench.errors import ArtifactError, InvalidArgumentError, OutputPathError, ShapeMismatchError
from workbench.vectors import METHODS, LayerStats, SteeringVector, cosine, diff_in_means, pca, probe

SETTINGS = {"model_name": "tiny-model", "weights_hash": "abc123", "hook": "resid_post", "position": "last"}


def planted(
    n: int = 64, d: int = 32, layers: tuple[int, ...] = (1, 2, 3), seed: int = 0, varying: bool = True
) -> tuple[Activations, Activations, torch.Tensor]:
    """Paired sets: pos_i = base_i + s_i·u + noise, neg_i = base_i + noise, with ``s_i`` around 3.

    ``varying`` draws ``s_i`` from [1.5, 4.5] (so the paired differences vary along ``u``); otherwise s_i = 3.
    """
    torch.manual_seed(seed)
    u = torch.randn(d)
    u /= u.norm()
    base = torch.randn(n, len(layers), d)
    strength = 3 * (0.5 + torch.rand(n, 1, 1)) if varying else torch.full((n, 1, 1), 3.0)
    pos = base + strength * u + 0.1 * torch.randn(n, len(layers), d)
    neg = base + 0.1 * torch.randn(n, len(layers), d)
    return (
        Activations(pos, layers, "pos-hash", dict(SETTINGS)),
        Activations(neg, layers, "neg-hash", dict(SETTINGS)),
        u,
    )


@pytest.fixture(scope="module")
def sets() -> tuple[Activations, Activations, torch.Tensor]:
    return planted()


@pytest.fixture(scope="module")
def vec(sets) -> SteeringVector:
    pos, neg, _ = sets
    return SteeringVector.from_activations(pos, neg, dataset="synthetic", dataset_hash="ds-hash")


def other_vector(layers=(1, 2, 3), d=32, seed=1) -> SteeringVector:
    torch.manual_seed(seed)
    return SteeringVector.from_directions(torch.randn(len(layers), d), layers, model_name="tiny-model")


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
    assert p["hook"] == "resid_post" and p["position"] == "last"
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


# ---- safetensors ---------------------------------------------------------------------------------------


def test_save_load_round_trip(vec, tmp_path):
    path = vec.save(tmp_path / "sub" / "v.safetensors")
    back = SteeringVector.load(path)
    assert torch.equal(back.directions, vec.directions)
    assert back.layers == vec.layers and back.stats == vec.stats
    assert back.provenance == vec.provenance
    assert back == vec
    assert [p.name for p in path.parent.iterdir()] == ["v.safetensors"]  # no temporary file left behind


def test_save_is_safetensors_with_metadata(vec, tmp_path):
    path = vec.save(tmp_path / "v.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert list(f.keys()) == ["directions"]
    assert meta["workbench_artifact"] == "steering_vector"
    assert json.loads(meta["layers"]) == [1, 2, 3]
    assert json.loads(meta["provenance"])["model_name"] == "tiny-model"
    assert len(meta["checksum"]) == 64
    assert b"pickle" not in path.read_bytes()


def test_round_trip_of_derived_vectors(vec, tmp_path):
    derived = (-(vec + other_vector())).select([2, 3]) * 0.5
    assert SteeringVector.load(derived.save(tmp_path / "d.safetensors")) == derived


def test_overwrite(vec, tmp_path):
    path = tmp_path / "v.safetensors"
    vec.save(path)
    (2 * vec).save(path)
    assert SteeringVector.load(path).stats[1].diff_norm == pytest.approx(2 * vec.stats[1].diff_norm)


def test_tampered_header_bytes(vec, tmp_path):
    path = vec.save(tmp_path / "v.safetensors")
    data = path.read_bytes()
    assert data.count(b"tiny-model") >= 1
    path.write_bytes(data.replace(b"tiny-model", b"tiny-modeX"))
    with pytest.raises(ArtifactError, match="modified after it was saved"):
        SteeringVector.load(path)


def test_tampered_tensor_bytes(vec, tmp_path):
    path = vec.save(tmp_path / "v.safetensors")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="modified after it was saved"):
        SteeringVector.load(path)


def test_rewritten_metadata(vec, tmp_path):
    path = vec.save(tmp_path / "v.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta, directions = f.metadata(), f.get_tensor("directions")
    stats = json.loads(meta["stats"])
    stats["1"]["diff_norm"] *= 10
    save_file({"directions": directions}, str(path), metadata={**meta, "stats": json.dumps(stats)})
    with pytest.raises(ArtifactError, match="modified after it was saved"):
        SteeringVector.load(path)


def test_load_refuses_other_files(vec, tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("not a safetensors file")
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        SteeringVector.load(text)
    with pytest.raises(ArtifactError, match="no such file"):
        SteeringVector.load(tmp_path / "missing.safetensors")
    other = tmp_path / "acts.safetensors"
    save_file({"activations": torch.zeros(2, 3)}, str(other), metadata={"workbench_artifact": "activations"})
    with pytest.raises(ArtifactError, match="is a 'activations' artifact, not a steering vector"):
        SteeringVector.load(other)
    plain = tmp_path / "plain.safetensors"
    save_file({"directions": vec.directions}, str(plain))
    with pytest.raises(ArtifactError, match="no workbench metadata"):
        SteeringVector.load(plain)
    gguf_file = vec.to_gguf(tmp_path / "v.gguf")
    with pytest.raises(ArtifactError):
        SteeringVector.load(gguf_file)


def test_save_to_an_unwritable_place(vec, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match="cannot write the steering vector"):
        vec.save(blocker / "v.safetensors")
    with pytest.raises(OutputPathError):
        vec.save(tmp_path)  # a directory
    with pytest.raises(OutputPathError):
        vec.to_gguf(blocker / "v.gguf")


# ---- GGUF ----------------------------------------------------------------------------------------------


def read_gguf(path: Path) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    reader = gguf.GGUFReader(str(path))
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    return fields, tensors


def llama_cpp_would_load(path: Path) -> dict[int, np.ndarray]:
    """The checks of llama.cpp's ``common_control_vector_load_one`` (common/common.cpp), in Python.

    Every tensor must be named ``direction.N`` with N ≥ 1, be F32 and 1-D, and all must have one size; row
    ``N - 1`` of the loaded buffer (applied to the output of block N) is the tensor.
    """
    reader = gguf.GGUFReader(str(path))
    rows, n_embd = {}, None
    for t in reader.tensors:
        prefix, _, index = t.name.partition(".")
        assert prefix == "direction" and index.isdigit() and int(index) > 0, t.name
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and len(t.shape) == 1
        n_embd = n_embd or int(t.n_elements)
        assert t.n_elements == n_embd
        rows[int(index)] = np.array(t.data)
    assert rows, "no direction tensors found"
    return rows


def test_gguf_layout_read_independently(vec, tmp_path):
    path = vec.to_gguf(tmp_path / "v.gguf")
    fields, tensors = read_gguf(path)
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "tiny-model"
    assert fields["controlvector.layer_count"] == 3
    assert sorted(tensors) == ["direction.1", "direction.2", "direction.3"]
    for layer in vec.layers:
        t = tensors[f"direction.{layer}"]
        assert t.dtype == np.float32 and t.shape == (32,)
        assert np.array_equal(t, vec.direction(layer).numpy())
    assert sorted(llama_cpp_would_load(path)) == [1, 2, 3]


def test_gguf_reordered_layers(vec, tmp_path):
    shuffled = vec.select([3, 1, 2])
    path = shuffled.to_gguf(tmp_path / "v.gguf")
    back = SteeringVector.from_gguf(path)
    assert back.layers == (1, 2, 3)
    assert torch.equal(back.directions, vec.directions)
    assert back.provenance == shuffled.provenance


def test_gguf_round_trip_is_exact(vec, tmp_path):
    back = SteeringVector.from_gguf(vec.to_gguf(tmp_path / "v.gguf"))
    assert torch.equal(back.directions, vec.directions)
    assert back.layers == vec.layers and back.stats == vec.stats
    assert back.provenance == vec.provenance
    assert back == vec


@pytest.mark.parametrize(("coef", "magnitude"), [(2.5, "unit"), (1.0, "raw"), (-0.5, "raw")])
def test_gguf_coef_and_magnitude(vec, tmp_path, coef, magnitude):
    path = vec.to_gguf(tmp_path / "v.gguf", coef=coef, magnitude=magnitude)
    _, tensors = read_gguf(path)
    for layer in vec.layers:
        expected = coef * (vec.raw(layer) if magnitude == "raw" else vec.direction(layer))
        assert np.allclose(tensors[f"direction.{layer}"], expected.numpy(), rtol=1e-6, atol=1e-7)
    back = SteeringVector.from_gguf(path)
    assert torch.allclose(back.directions, vec.directions, atol=1e-6)
    assert back.stats == vec.stats


def test_gguf_skips_block_zero(tmp_path):
    v = other_vector(layers=(0, 1, 2))
    with pytest.warns(UserWarning, match="block 0"):
        path = v.to_gguf(tmp_path / "v.gguf")
    _, tensors = read_gguf(path)
    assert sorted(tensors) == ["direction.1", "direction.2"]
    assert sorted(llama_cpp_would_load(path)) == [1, 2]
    back = SteeringVector.from_gguf(path)
    assert back.layers == (1, 2)
    assert torch.equal(back.directions, v.select([1, 2]).directions)
    with pytest.raises(InvalidArgumentError, match="block 0"):
        v.to_gguf(tmp_path / "w.gguf", layers=[0, 1])
    with pytest.raises(InvalidArgumentError, match="no layer 5"):
        v.to_gguf(tmp_path / "w.gguf", layers=[5])
    assert SteeringVector.from_gguf(v.to_gguf(tmp_path / "w.gguf", layers=[2])).layers == (2,)


def write_foreign_gguf(path: Path, tensors: dict[str, np.ndarray], arch: str = "controlvector") -> Path:
    """A file as repeng's export_gguf writes it (no workbench metadata)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string(f"{arch}.model_hint", "llama")
    writer.add_uint32(f"{arch}.layer_count", len(tensors))
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_from_gguf_reads_foreign_control_vectors(tmp_path):
    a, b = np.array([3.0, 4.0, 0.0], np.float32), np.array([0.0, 0.0, -2.0], np.float32)
    path = write_foreign_gguf(tmp_path / "repeng.gguf", {"direction.7": a, "direction.3": b})
    v = SteeringVector.from_gguf(path)
    assert v.layers == (3, 7)
    assert torch.allclose(v.direction(7), torch.tensor([0.6, 0.8, 0.0]))
    assert torch.allclose(v.raw(7), torch.from_numpy(a)) and torch.allclose(v.raw(3), torch.from_numpy(b))
    assert v.provenance["model_name"] == "llama" and v.provenance["method"] == "gguf"


def test_from_gguf_refusals(vec, tmp_path):
    empty = write_foreign_gguf(tmp_path / "empty.gguf", {})
    with pytest.raises(ArtifactError, match=r"no direction\.N tensors"):
        SteeringVector.from_gguf(empty)
    other = write_foreign_gguf(tmp_path / "other.gguf", {"token_embd.weight": np.ones(4, np.float32)})
    with pytest.raises(ArtifactError, match=r"no direction\.N tensors"):
        SteeringVector.from_gguf(other)
    model = write_foreign_gguf(tmp_path / "model.gguf", {"direction.1": np.ones(4, np.float32)}, arch="llama")
    with pytest.raises(ArtifactError, match="architecture 'llama', not a control vector"):
        SteeringVector.from_gguf(model)
    text = tmp_path / "notes.gguf"
    text.write_text("not a gguf file at all")
    with pytest.raises(ArtifactError, match="not a readable GGUF file"):
        SteeringVector.from_gguf(text)
    with pytest.raises(ArtifactError, match="not a readable GGUF file"):
        SteeringVector.from_gguf(vec.save(tmp_path / "v.safetensors"))
    with pytest.raises(ArtifactError, match="no such file"):
        SteeringVector.from_gguf(tmp_path / "missing.gguf")
    zero = write_foreign_gguf(tmp_path / "zero.gguf", {"direction.2": np.zeros(4, np.float32)})
    with pytest.raises(ArtifactError, match="zero"):
        SteeringVector.from_gguf(zero)


def test_tampered_gguf(vec, tmp_path):
    path = vec.to_gguf(tmp_path / "v.gguf")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="modified after it was saved"):
        SteeringVector.from_gguf(path)


def test_to_gguf_argument_checks(vec, tmp_path):
    with pytest.raises(InvalidArgumentError, match="magnitude"):
        vec.to_gguf(tmp_path / "v.gguf", magnitude="big")
    with pytest.raises(InvalidArgumentError, match="coef"):
        vec.to_gguf(tmp_path / "v.gguf", coef=0)
    with pytest.raises(InvalidArgumentError, match="coef"):
        vec.to_gguf(tmp_path / "v.gguf", coef=math.nan)
    path = vec.to_gguf(tmp_path / "v.gguf", model_hint="llama")
    assert read_gguf(path)[0]["controlvector.model_hint"] == "llama"


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
    assert vector.provenance["method"] == "pca" and vector.provenance["position"] == "last"


def test_from_dataset_passes_position_and_chat(tiny, tmp_path, monkeypatch):
    from workbench.datasets import load

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    data = load("json_format", "train").head(4)
    last = SteeringVector.from_dataset(tiny, data, layers=[2])
    mean = SteeringVector.from_dataset(tiny, data, layers=[2], position="mean", chat=False)
    assert mean.provenance["position"] == "mean" and mean.provenance["chat"] is False
    assert last.provenance["chat"] is True
    assert abs(cosine(last, mean)[2]) < 0.999  # another position rule gives another direction
