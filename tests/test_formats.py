"""Artifact files: checksummed safetensors and GGUF control vectors, directly and through SteeringVector.

Includes the llama.cpp layer convention (``direction.N`` is block N, block 0 never written), compatibility
with repeng-style files, tamper detection, and fuzzing of the loaders with hypothesis.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from tests.synthetic_vectors import other_vector, planted_vector, write_gguf
from workbench import formats
from workbench.errors import ArtifactError, InvalidArgumentError, OutputPathError, WorkbenchError
from workbench.vectors import SteeringVector

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def vec() -> SteeringVector:
    return planted_vector()


def one_line(error: WorkbenchError) -> None:
    assert str(error) and "\n" not in str(error)


# ---- formats over plain tensors -------------------------------------------------------------------------


def test_safetensors_round_trip_of_any_artifact(tmp_path):
    tensors = {"a": torch.randn(2, 3), "b": torch.arange(4.0)}
    payload = {"name": "x", "numbers": [1, 2.5], "nested": {"k": None}}
    path = formats.save_safetensors(tmp_path / "x.safetensors", "thing", tensors, payload, "thing")
    back, read = formats.load_safetensors(path, "thing", {"a": "[i, j]", "b": "[k]"}, list(payload), "thing")
    assert read == payload and torch.equal(back["a"], tensors["a"]) and torch.equal(back["b"], tensors["b"])
    with pytest.raises(ArtifactError, match="'thing' artifact, not a steering vector"):
        formats.load_safetensors(path, "steering_vector", {"a": "[i, j]"}, ["name"], "steering vector")
    with pytest.raises(ArtifactError, match="lacks missing, tensor 'c'"):
        formats.load_safetensors(path, "thing", {"c": "[i]"}, ["missing"], "thing")
    with pytest.raises(ArtifactError, match=r"'a' is torch.float32 \(2, 3\), expected float32 \[i\]"):
        formats.load_safetensors(path, "thing", {"a": "[i]"}, ["name"], "thing")


def test_checksum_covers_every_tensor_and_the_payload():
    a, b = torch.ones(3), torch.zeros(2)
    base = formats.checksum([a, b], {"k": 1})
    assert base == formats.checksum([a.clone(), b.clone()], {"k": 1})
    assert base != formats.checksum([a, b + 1], {"k": 1})
    assert base != formats.checksum([a, b], {"k": 2})
    assert base != formats.checksum([b, a], {"k": 1})


def test_control_vector_round_trip_over_plain_tensors(tmp_path):
    rows = {3: torch.tensor([1.0, 2.0]), 1: torch.tensor([0.5, -1.0])}
    path = formats.write_control_vector(
        tmp_path / "c.gguf", rows, model_hint="m", kind="k", payload={"p": [1]}
    )
    back, hint, payload = formats.read_control_vector(path, "k", ["p"])
    assert list(back) == [1, 3] and hint == "m" and payload == {"p": [1]}
    assert all(torch.equal(back[b], rows[b]) for b in rows)
    assert formats.read_control_vector(path, "other", ["p"])[2] is None  # not ours: no payload
    foreign = write_gguf(tmp_path / "f.gguf", {"direction.2": np.ones(2, np.float32)})
    assert formats.read_control_vector(foreign, "k", ["p"])[1:] == ("llama", None)
    with pytest.raises(InvalidArgumentError, match="block 0"):
        formats.write_control_vector(tmp_path / "z.gguf", {0: torch.ones(2)}, model_hint="m")


def test_control_vector_layers_follow_llama_cpp():
    assert formats.control_vector_layers((3, 1, 2), None) == [1, 2, 3]
    assert formats.control_vector_layers((3, 1, 2), 2) == [2]
    with pytest.warns(UserWarning, match="block 0"):
        assert formats.control_vector_layers((0, 4), None) == [4]
    with pytest.warns(UserWarning), pytest.raises(InvalidArgumentError, match="only has block 0"):
        formats.control_vector_layers((0,), None)
    for available, chosen, match in [
        ((0, 1), [0, 1], "cannot steer block 0"),
        ((1, 2), [], "at least one layer"),
        ((1, 2), [1, 1], "repeated layers"),
        ((1, 2), [5], "no layer 5"),
    ]:
        with pytest.raises(InvalidArgumentError, match=match):
            formats.control_vector_layers(available, chosen)


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


@pytest.mark.parametrize("kind", ["safetensors", "gguf"])
def test_tampered_tensor_bytes(vec, tmp_path, kind):
    path = vec.save(tmp_path / "v.safetensors") if kind == "safetensors" else vec.to_gguf(tmp_path / "v.gguf")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last byte of the last direction
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="modified after it was saved"):
        SteeringVector.load(path) if kind == "safetensors" else SteeringVector.from_gguf(path)


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


def test_from_gguf_reads_foreign_control_vectors(tmp_path):
    a, b = np.array([3.0, 4.0, 0.0], np.float32), np.array([0.0, 0.0, -2.0], np.float32)
    path = write_gguf(tmp_path / "repeng.gguf", {"direction.7": a, "direction.3": b})
    v = SteeringVector.from_gguf(path)
    assert v.layers == (3, 7)
    assert torch.allclose(v.direction(7), torch.tensor([0.6, 0.8, 0.0]))
    assert torch.allclose(v.raw(7), torch.from_numpy(a)) and torch.allclose(v.raw(3), torch.from_numpy(b))
    assert v.provenance["model_name"] == "llama" and v.provenance["method"] == "gguf"


def test_from_gguf_refusals(vec, tmp_path):
    empty = write_gguf(tmp_path / "empty.gguf", {})
    with pytest.raises(ArtifactError, match=r"no direction\.N tensors"):
        SteeringVector.from_gguf(empty)
    other = write_gguf(tmp_path / "other.gguf", {"token_embd.weight": np.ones(4, np.float32)})
    with pytest.raises(ArtifactError, match=r"no direction\.N tensors"):
        SteeringVector.from_gguf(other)
    model = write_gguf(tmp_path / "model.gguf", {"direction.1": np.ones(4, np.float32)}, arch="llama")
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
    zero = write_gguf(tmp_path / "zero.gguf", {"direction.2": np.zeros(4, np.float32)})
    with pytest.raises(ArtifactError, match="zero"):
        SteeringVector.from_gguf(zero)


def test_to_gguf_argument_checks(vec, tmp_path):
    with pytest.raises(InvalidArgumentError, match="magnitude"):
        vec.to_gguf(tmp_path / "v.gguf", magnitude="big")
    with pytest.raises(InvalidArgumentError, match="coef"):
        vec.to_gguf(tmp_path / "v.gguf", coef=0)
    with pytest.raises(InvalidArgumentError, match="coef"):
        vec.to_gguf(tmp_path / "v.gguf", coef=math.nan)
    path = vec.to_gguf(tmp_path / "v.gguf", model_hint="llama")
    assert read_gguf(path)[0]["controlvector.model_hint"] == "llama"


def test_tampered_stats_in_header(vec, tmp_path):
    path = vec.save(tmp_path / "v.safetensors")
    data = path.read_bytes()
    start = data.index(b"diff_norm") + len(b'diff_norm\\":')
    digit = data[start : start + 1]
    assert digit.isdigit()
    path.write_bytes(data[:start] + (b"9" if digit != b"9" else b"8") + data[start + 1 :])
    with pytest.raises(ArtifactError, match="modified after it was saved"):
        SteeringVector.load(path)


def test_corrupt_safetensors_header_length(vec, tmp_path):
    path = vec.save(tmp_path / "v.safetensors")
    data = bytearray(path.read_bytes())
    data[0:8] = (2**40).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        SteeringVector.load(path)


# ---- artifact loaders ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("artifacts")
    rows = torch.randn(3, 16, generator=torch.Generator().manual_seed(5))
    vec = SteeringVector.from_directions(rows, layers=(1, 2, 3), model_name="fuzz")
    return (
        vec,
        vec.save(directory / "v.safetensors").read_bytes(),
        vec.to_gguf(directory / "v.gguf").read_bytes(),
    )


def load_bytes(data: bytes, suffix: str):
    with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as handle:
        handle.write(data)
    path = Path(handle.name)
    try:
        return SteeringVector.load(path) if suffix == ".safetensors" else SteeringVector.from_gguf(path)
    finally:
        path.unlink()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), kind=st.sampled_from([".safetensors", ".gguf"]))
def test_tampered_artifacts_are_refused_or_unchanged(saved, data, kind):
    """Flip, cut or overwrite bytes of a saved vector: either ArtifactError or exactly the original vector."""
    vec, safetensors_bytes, gguf_bytes = saved
    original = bytearray(safetensors_bytes if kind == ".safetensors" else gguf_bytes)
    how = data.draw(st.sampled_from(["flip", "cut", "splice"]))
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 3))):
            at = data.draw(st.integers(0, len(original) - 1))
            original[at] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        original = original[: data.draw(st.integers(0, len(original) - 1))]
    else:
        at = data.draw(st.integers(0, len(original)))
        original[at : at + 4] = data.draw(st.binary(min_size=1, max_size=8))
    assume(bytes(original) != (safetensors_bytes if kind == ".safetensors" else gguf_bytes))
    try:
        loaded = load_bytes(bytes(original), kind)
    except ArtifactError as e:
        one_line(e)
    else:
        # Only bytes that carry no meaning (alignment padding, a GGUF KV that the loader does not read,
        # a JSON separator that parses the same) can change and still load.
        if kind == ".gguf":
            assert torch.equal(loaded.directions, vec.directions) and loaded.layers == vec.layers
        else:
            assert loaded == vec


@FUZZ
@given(data=st.binary(max_size=400), kind=st.sampled_from([".safetensors", ".gguf"]))
def test_arbitrary_bytes_are_not_a_vector(data, kind):
    with pytest.raises(ArtifactError) as info:
        load_bytes(data, kind)
    one_line(info.value)


@FUZZ
@given(prefix=st.sampled_from([b"GGUF", b"GGUF\x03\x00\x00\x00"]), rest=st.binary(max_size=200))
def test_gguf_magic_then_garbage_is_refused(prefix, rest):
    with pytest.raises(ArtifactError) as info:
        load_bytes(prefix + rest, ".gguf")
    one_line(info.value)
