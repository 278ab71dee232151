"""Activations: the value, its safetensors file, and `workbench collect` feeding `workbench vector build`;
collect's refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from tests.conftest import PROMPTS
from tests.refusals import refuses
from workbench.activations import BYPASS_WARNING, Activations, collect, collect_responses
from workbench.cli import app
from workbench.datasets import load
from workbench.errors import ArtifactError, InvalidArgumentError, OutputPathError
from workbench.interventions import Intervention
from workbench.models import load_model
from workbench.steering import steer
from workbench.vectors import SteeringVector


@pytest.fixture
def acts(tiny, tmp_path, monkeypatch) -> Activations:
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    return collect(tiny, ["Name a fruit.", "How do I boil an egg?", "Why is the sky blue?"], layers=[1, 3])


def test_save_load_round_trip(acts, tmp_path):
    back = Activations.load(acts.save(tmp_path / "sub" / "a.safetensors"))
    assert torch.equal(back.tensor, acts.tensor) and back.tensor.dtype == torch.float32
    assert back.layers == (1, 3) and back.prompts_hash == acts.prompts_hash
    assert back.settings == acts.settings and back.settings["model_name"] == "tiny-llama"
    assert not list((tmp_path / "sub").glob(".*.tmp"))  # written atomically: no temporary file left


def test_file_carries_provenance_in_its_header(acts, tmp_path):
    path = acts.save(tmp_path / "a.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["workbench_artifact"] == "activations"
    assert json.loads(meta["layers"]) == [1, 3]
    assert json.loads(meta["settings"])["weights_hash"] == acts.settings["weights_hash"]
    assert json.loads(meta["prompts_hash"]) == acts.prompts_hash
    assert json.loads(meta["workbench_version"]) and len(meta["checksum"]) == 64


def test_loaded_activations_give_the_same_vector(acts, tmp_path):
    neg = Activations.from_tensor(torch.randn(3, 2, acts.d_model), (1, 3), **acts.settings)
    pos_back = Activations.load(acts.save(tmp_path / "p.safetensors"))
    neg_back = Activations.load(neg.save(tmp_path / "n.safetensors"))
    assert SteeringVector.from_activations(pos_back, neg_back).directions.equal(
        SteeringVector.from_activations(acts, neg).directions
    )


def _rewrite(path, tensor=None, **metadata):
    with safe_open(str(path), "pt") as f:
        meta, stored = f.metadata(), f.get_tensor("activations")
    save_file({"activations": stored if tensor is None else tensor}, str(path), metadata={**meta, **metadata})


def test_load_refuses_a_modified_header(acts, tmp_path):
    path = acts.save(tmp_path / "a.safetensors")
    settings = {**acts.settings, "position": "prompt"}
    _rewrite(path, settings=json.dumps(settings, sort_keys=True, separators=(",", ":")))
    with pytest.raises(ArtifactError, match="modified after it was saved"):
        Activations.load(path)


def test_load_refuses_modified_numbers(acts, tmp_path):
    path = acts.save(tmp_path / "a.safetensors")
    _rewrite(path, tensor=acts.tensor + 1e-3)
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        Activations.load(path)


def test_load_refuses_other_files(acts, tmp_path):
    vector = SteeringVector.from_directions(torch.randn(2, acts.d_model), (1, 3))
    with pytest.raises(ArtifactError, match="'steering_vector' artifact, not activations"):
        Activations.load(vector.save(tmp_path / "v.safetensors"))
    with pytest.raises(ArtifactError, match="'activations' artifact, not a steering vector"):
        SteeringVector.load(acts.save(tmp_path / "a.safetensors"))
    with pytest.raises(ArtifactError, match="no such file"):
        Activations.load(tmp_path / "missing.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file({"activations": acts.tensor}, str(plain))
    with pytest.raises(ArtifactError, match="no workbench metadata"):
        Activations.load(plain)
    text = tmp_path / "text.safetensors"
    text.write_text("not a tensor file")
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        Activations.load(text)


def test_load_refuses_a_tensor_of_the_wrong_rank(acts, tmp_path):
    path = acts.save(tmp_path / "a.safetensors")
    _rewrite(path, tensor=acts.tensor[:, 0].contiguous())
    with pytest.raises(ArtifactError, match=r"expected float32 \[n, layer, d_model\]"):
        Activations.load(path)


def test_save_under_a_file_is_refused(acts, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="cannot write the activations"):
        acts.save(tmp_path / "file" / "a.safetensors")


# ---- capture and its cache --------------------------------------------------------------------------


def test_collect_shapes_and_layers(tiny):
    acts = collect(tiny, PROMPTS, layers=[1, 3], cache=False)
    assert acts.tensor.shape == (len(PROMPTS), 2, 64)
    assert acts.layers == (1, 3)
    assert torch.equal(acts.layer(3), acts.tensor[:, 1])


@pytest.mark.parametrize("position", ["last_prompt", "prompt", 0, 2, -1, -3])
def test_collect_is_batch_size_invariant(tiny, position):
    one = collect(tiny, PROMPTS, position=position, batch_size=1, cache=False).tensor
    many = collect(tiny, PROMPTS, position=position, batch_size=5, cache=False).tensor
    odd = collect(tiny, PROMPTS, position=position, batch_size=2, cache=False).tensor
    assert (one - many).abs().max() <= 1e-4
    assert (one - odd).abs().max() <= 1e-4


def test_collect_matches_run_with_cache_on_unpadded_prompt(tiny):
    text = tiny.format_chat(PROMPTS[2])
    tokens = tiny.encode([text], formatted=True)["input_ids"]
    _, cache = tiny.bridge.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post"))
    acts = collect(tiny, [PROMPTS[2], PROMPTS[4]], cache=False)
    expected_last = cache["blocks.2.hook_resid_post"][0, -1]
    expected_mean = cache["blocks.2.hook_resid_post"][0].mean(0)
    assert torch.allclose(acts.layer(2)[0], expected_last, atol=1e-4)
    mean = collect(tiny, [PROMPTS[2], PROMPTS[4]], position="prompt", cache=False)
    assert torch.allclose(mean.layer(2)[0], expected_mean, atol=1e-4)
    first = collect(tiny, [PROMPTS[2], PROMPTS[4]], position=1, cache=False)
    assert torch.allclose(first.layer(2)[0], cache["blocks.2.hook_resid_post"][0, 1], atol=1e-4)


def test_collect_disk_cache_is_read_back(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    first = collect(tiny, PROMPTS, layers=[0, 2])
    files = list((tmp_path / "activations").glob("*.safetensors"))
    assert len(files) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("a cached collect ran the model")

    monkeypatch.setattr(tiny.hf_model, "forward", refuse)
    second = collect(tiny, PROMPTS, layers=[0, 2])
    assert torch.equal(first.tensor, second.tensor)
    with pytest.raises(AssertionError):
        collect(tiny, PROMPTS, layers=[0, 1])  # another key: must run the model


def test_steering_inside_collect_does_not_poison_the_cache(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    vector = SteeringVector.from_directions(torch.ones(1, tiny.d_model) * 3.0, layers=[1])
    plain = collect(tiny, PROMPTS, layers=[2], cache=False).tensor
    with (
        steer(tiny, Intervention(vector, 1, coef=20.0, unit="absolute")),
        pytest.warns(UserWarning, match=BYPASS_WARNING),
    ):
        steered = collect(tiny, PROMPTS, layers=[2]).tensor
    assert (steered - plain).abs().max() > 1.0  # the steering reached the capture
    assert not (tmp_path / "activations").exists()  # and was not stored
    assert torch.allclose(collect(tiny, PROMPTS, layers=[2]).tensor, plain, atol=1e-5)
    with (
        steer(tiny, Intervention(vector, 1, coef=20.0, unit="absolute")),
        pytest.warns(UserWarning, match=BYPASS_WARNING),
    ):
        again = collect(tiny, PROMPTS, layers=[2]).tensor  # a cached plain entry is not served either
    assert torch.allclose(again, steered, atol=1e-5)
    handle = tiny.hf_model.model.layers[0].register_forward_hook(lambda *_: None)  # a user's torch hook
    try:
        with pytest.warns(UserWarning, match=BYPASS_WARNING):
            collect(tiny, PROMPTS, layers=[2])
    finally:
        handle.remove()


def test_collect_cache_keys_on_dtype(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    full = load_model(tiny_dir, device="cpu")
    half = load_model(tiny_dir, device="cpu", dtype="bfloat16")
    assert full.weights_hash == half.weights_hash and full.fingerprint != half.fingerprint
    a = collect(full, PROMPTS[:2], layers=[1]).tensor
    b = collect(half, PROMPTS[:2], layers=[1]).tensor
    assert len(list((tmp_path / "activations").glob("*.safetensors"))) == 2
    assert not torch.equal(a, b)
    assert torch.equal(collect(half, PROMPTS[:2], layers=[1]).tensor, b)


# ---- response-token activations ---------------------------------------------------------------------

ANSWERS = ["Paris is the capital.", "An apple", "Light scatters in the air.", "Boil it.", "Cats and dogs."]


@pytest.fixture
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))


@pytest.mark.usefixtures("_cache")
def test_response_mean_matches_a_manual_mean_over_the_response_positions(tiny):
    acts = collect_responses(tiny, PROMPTS, ANSWERS, layers=[1, 3], batch_size=3, cache=False)
    for i in (0, 4):
        head = tiny.encode([tiny.format_chat(PROMPTS[i])], formatted=True)["input_ids"][0]
        tail = torch.tensor(tiny.tokenizer(ANSWERS[i], add_special_tokens=False)["input_ids"])
        tokens = torch.cat([head, tail])[None]
        _, cache = tiny.bridge.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post"))
        for j, layer in enumerate((1, 3)):
            expected = cache[f"blocks.{layer}.hook_resid_post"][0, len(head) :].mean(0)
            assert torch.allclose(acts.tensor[i, j], expected, atol=1e-4)
            prompt_mean = cache[f"blocks.{layer}.hook_resid_post"][0].mean(0)
            assert not torch.allclose(acts.tensor[i, j], prompt_mean, atol=1e-3)


@pytest.mark.usefixtures("_cache")
def test_response_mean_is_batch_size_invariant_and_cached(tiny):
    one = collect_responses(tiny, PROMPTS, ANSWERS, batch_size=1, cache=False).tensor
    many = collect_responses(tiny, PROMPTS, ANSWERS, batch_size=5)
    assert (one - many.tensor).abs().max() <= 1e-4
    assert many.settings["position"] == "generated"
    again = collect_responses(tiny, PROMPTS, ANSWERS, batch_size=5)
    assert torch.equal(again.tensor, many.tensor)
    other = collect_responses(tiny, PROMPTS, [*ANSWERS[:-1], "Dogs."], batch_size=5)
    assert not torch.equal(other.tensor[-1], many.tensor[-1])


@pytest.mark.usefixtures("_cache")
def test_response_mean_refuses_bad_inputs(tiny):
    with pytest.raises(InvalidArgumentError, match="one response per prompt"):
        collect_responses(tiny, PROMPTS, ANSWERS[:2], cache=False)
    with pytest.raises(InvalidArgumentError, match="response 1 is empty"):
        collect_responses(tiny, PROMPTS[:2], ["ok", " "], cache=False)


# ---- the command line: collect once, build from the files -----------------------------------------------


def test_collect_then_vector_build_from_the_files(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    run = tmp_path / "collect"
    args = ["collect", "json_format", "--split", "validation", "--model", tiny_dir, "--out", str(run)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    pos_path, neg_path = result.stdout.split()
    assert (pos_path, neg_path) == (str(run / "positive.safetensors"), str(run / "negative.safetensors"))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["command"] == "collect" and manifest["configuration"]["split"] == "validation"
    data = load("json_format", "validation")
    pos = Activations.load(pos_path)
    assert pos.n == len(data) and pos.layers == (0, 1, 2, 3) and pos.settings["dataset_hash"] == data.hash

    from_files = tmp_path / "from_files.safetensors"
    args = ["vector", "build", "--activations", pos_path, neg_path, "--out", str(from_files)]
    result = runner.invoke(app, [*args, "--method", "pca"])
    assert result.exit_code == 0, result.output
    built = SteeringVector.load(from_files)
    assert built.provenance["dataset"] == "json_format" and built.provenance["dataset_hash"] == data.hash
    assert built.provenance["method"] == "pca" and built.provenance["split"] == "validation"

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "fresh"))  # the dataset path collects afresh
    from_data = tmp_path / "from_data.safetensors"
    args = [
        "vector",
        "build",
        "json_format",
        "--split",
        "validation",
        "--method",
        "pca",
        "--out",
        str(from_data),
    ]
    result = runner.invoke(app, [*args, "--model", tiny_dir])
    assert result.exit_code == 0, result.output
    torch.testing.assert_close(SteeringVector.load(from_data).directions, built.directions, rtol=0, atol=1e-6)


def test_vector_build_refuses_mixed_or_foreign_inputs(tmp_path, acts):
    runner = CliRunner()
    pos = acts.save(tmp_path / "p.safetensors")
    other = Activations.from_tensor(acts.tensor, acts.layers, **{**acts.settings, "dataset": "italian:it"})
    neg = other.save(tmp_path / "n.safetensors")
    out = str(tmp_path / "v.safetensors")
    for args, message in [
        (["json_format", "--activations", str(pos), str(pos)], "either a dataset name or --activations"),
        ([], "either a dataset name or --activations"),
        (["--activations", str(pos), str(neg)], "different datasets"),
        (["--activations", str(pos), out], "no such file"),
    ]:
        result = runner.invoke(app, ["vector", "build", *args, "--out", out])
        assert result.exit_code == 2 and message in result.stderr, (args, result.output)


# ---- bad inputs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [99, 4, -1, "1", True])
def test_collect_layer_out_of_range(tiny, layer):
    refuses(InvalidArgumentError, lambda: collect(tiny, ["hi"], layers=[layer], cache=False), "layer")


def test_collect_no_layers(tiny):
    refuses(InvalidArgumentError, lambda: collect(tiny, ["hi"], layers=[], cache=False), "layers is empty")


def test_prompt_longer_than_context_in_collect(tiny):
    long = "hello " * (tiny.n_ctx + 10)
    refuses(
        InvalidArgumentError,
        lambda: collect(tiny, ["hi", long], cache=False),
        "more than tiny-llama's context",
    )


def test_empty_string_prompt(tiny):
    refuses(InvalidArgumentError, lambda: collect(tiny, ["hi", ""], cache=False), "prompt 1 is empty")


def test_non_string_prompt(tiny):
    refuses(InvalidArgumentError, lambda: collect(tiny, ["hi", 3], cache=False), "not a string")


def test_batch_size_zero_in_collect(tiny):
    refuses(InvalidArgumentError, lambda: collect(tiny, ["hi"], batch_size=0, cache=False), "batch_size")


@pytest.mark.parametrize("position", ["first", "middle", 1.5, True, None])
def test_unknown_position(tiny, position):
    refuses(
        InvalidArgumentError,
        lambda: collect(tiny, ["hi"], position=position, cache=False),
        "unknown position",
    )


def test_position_beyond_the_prompt(tiny):
    refuses(InvalidArgumentError, lambda: collect(tiny, ["hi"], position=500, cache=False), "position 500")


def test_unknown_hook(tiny):
    refuses(InvalidArgumentError, lambda: collect(tiny, ["hi"], hook="resid", cache=False), "unknown hook")
