"""Foundation: model wrapper, activation capture and batched generation."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from tests.conftest import PROMPTS
from workbench.activations import BYPASS_WARNING, collect
from workbench.errors import InvalidArgumentError, ModelLoadError
from workbench.generation import generate
from workbench.models import load_model
from workbench.steering import Intervention, steer
from workbench.vectors import SteeringVector


def test_chat_format_carries_special_tokens_once(tiny):
    text = tiny.format_chat("Hello")
    assert text.startswith("<|im_start|>user\nHello<|im_end|>")
    ids = tiny.encode([text], formatted=True)["input_ids"][0].tolist()
    assert ids.count(tiny.tokenizer.convert_tokens_to_ids("<|im_start|>")) == 2  # user + assistant turns


def test_base_format_is_question_answer(tiny):
    base = dataclasses.replace(tiny, is_chat=False)
    assert base.format_chat("Why?") == "Q: Why?\nA:"


def test_collect_shapes_and_layers(tiny):
    acts = collect(tiny, PROMPTS, layers=[1, 3], cache=False)
    assert acts.tensor.shape == (len(PROMPTS), 2, 64)
    assert acts.layers == (1, 3)
    assert torch.equal(acts.layer(3), acts.tensor[:, 1])


@pytest.mark.parametrize("position", ["last", "mean", 0, 2, -1, -3])
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
    mean = collect(tiny, [PROMPTS[2], PROMPTS[4]], position="mean", cache=False)
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
    with steer(tiny, Intervention(vector, 1, coef=20.0)), pytest.warns(UserWarning, match=BYPASS_WARNING):
        steered = collect(tiny, PROMPTS, layers=[2]).tensor
    assert (steered - plain).abs().max() > 1.0  # the steering reached the capture
    assert not (tmp_path / "activations").exists()  # and was not stored
    assert torch.allclose(collect(tiny, PROMPTS, layers=[2]).tensor, plain, atol=1e-5)
    with steer(tiny, Intervention(vector, 1, coef=20.0)), pytest.warns(UserWarning, match=BYPASS_WARNING):
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


def test_collect_refusals(tiny):
    with pytest.raises(InvalidArgumentError, match="out of range"):
        collect(tiny, PROMPTS, layers=[7], cache=False)
    with pytest.raises(InvalidArgumentError, match="empty"):
        collect(tiny, ["ok", "  "], cache=False)
    with pytest.raises(InvalidArgumentError, match="position"):
        collect(tiny, PROMPTS, position="first", cache=False)
    with pytest.raises(InvalidArgumentError, match="outside a prompt"):
        collect(tiny, PROMPTS, position=500, cache=False)
    with pytest.raises(InvalidArgumentError, match="hook"):
        collect(tiny, PROMPTS, hook="resid_everywhere", cache=False)
    with pytest.raises(InvalidArgumentError, match="context"):
        collect(tiny, ["word " * 600], cache=False)


def test_generate_greedy_is_batch_size_and_cache_invariant(tiny):
    a = generate(tiny, PROMPTS, max_new_tokens=12, batch_size=5)
    b = generate(tiny, PROMPTS, max_new_tokens=12, batch_size=2)
    c = generate(tiny, PROMPTS, max_new_tokens=12, batch_size=5, use_cache=False)
    assert a == b == c
    assert all(isinstance(t, str) for t in a)
    assert not any("<|im_start|>" in t for t in a)


def test_generate_sampling_is_seeded(tiny):
    a = generate(tiny, PROMPTS, max_new_tokens=8, do_sample=True, seed=3)
    b = generate(tiny, PROMPTS, max_new_tokens=8, do_sample=True, seed=3)
    assert a == b


def test_generate_refusals(tiny):
    with pytest.raises(InvalidArgumentError, match="no prompts"):
        generate(tiny, [])
    with pytest.raises(InvalidArgumentError, match="max_new_tokens"):
        generate(tiny, PROMPTS, max_new_tokens=0)
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        generate(tiny, PROMPTS, batch_size=0)


def test_unknown_spec_and_bad_files(tmp_path):
    with pytest.raises(ModelLoadError, match="not a known spec"):
        load_model("no-such-model-anywhere")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "missing.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all" * 100)
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        load_model(str(bad))
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(b"GGUF" + b"\0" * 10)
    with pytest.raises(ModelLoadError, match="truncated"):
        load_model(str(truncated))


@pytest.mark.slow
def test_smollm2_loads_and_knows_paris(smol):
    assert (smol.n_layers, smol.d_model) == (30, 576)
    assert len(smol.weights_hash) == 64
    (answer,) = generate(smol, ["What is the capital of France?"], max_new_tokens=24)
    assert "Paris" in answer


@pytest.mark.slow
def test_smollm2_cached_load_is_fast(smol):
    start = time.perf_counter()
    again = load_model("smollm2-135m-instruct")
    assert time.perf_counter() - start < 5
    assert again.weights_hash == smol.weights_hash
    tokens = smol.encode([smol.format_chat("Hi")], formatted=True)
    with torch.inference_mode():
        assert torch.allclose(smol.hf_model(**tokens).logits, again.hf_model(**tokens).logits, atol=1e-4)


@pytest.mark.slow
def test_smollm2_collect_batch_invariance(smol):
    one = collect(smol, PROMPTS, batch_size=1, cache=False).tensor
    many = collect(smol, PROMPTS, batch_size=5, cache=False).tensor
    assert one.shape == (5, 30, 576)
    # fp32 rounding differs between batch shapes; relative to each layer's scale it stays ~1e-6.
    scale = one.abs().amax(dim=(0, 2), keepdim=True)
    assert ((one - many).abs() / scale).max() < 1e-5
    assert (one - many)[:, :20].abs().max() <= 1e-4
