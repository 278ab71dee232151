"""The direct path: the Hugging Face modules run unwrapped, and hooked bridge hook points still fire."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.conftest import PROMPTS, build_tiny_model
from workbench import fastpath
from workbench.activations import collect
from workbench.fastpath import STRICT_ENV, FastPathError, bridge_only, direct_forward
from workbench.generation import generate

POINTS = ("hook_resid_pre", "hook_resid_mid", "hook_attn_out", "hook_mlp_out", "hook_resid_post")


def encoded(model):
    return model.encode([model.format_chat(p) for p in PROMPTS[:3]], formatted=True)


def run_hooked(model, direct: bool, edit: torch.Tensor | None = None):
    seen: dict[str, list[torch.Tensor]] = {}

    def record(x, hook):
        seen.setdefault(hook.name, []).append(x.clone())
        return x + edit if edit is not None and hook.name.endswith("hook_out") else x

    hooks = [(f"blocks.1.{name}", record) for name in POINTS]
    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=hooks):
        if direct:
            with direct_forward(model) as took:
                assert took
                logits = model.hf_model(**encoded(model)).logits
        else:
            logits = model.hf_model(**encoded(model)).logits
    return seen, logits


def block_type(model):
    return type(model.hf_model.model.layers[0]).__name__


def test_wrappers_are_swapped_out_and_back(tiny):
    original = tiny.hf_model.model.layers[0]._original_component
    hooks_before = (list(original._forward_hooks), list(original._forward_pre_hooks))
    assert block_type(tiny) == "BlockBridge"
    with direct_forward(tiny) as took:
        assert took
        assert block_type(tiny) == "LlamaDecoderLayer"
        with direct_forward(tiny) as nested:  # re-entry changes nothing
            assert nested
        assert block_type(tiny) == "LlamaDecoderLayer"
    assert block_type(tiny) == "BlockBridge"
    with pytest.raises(RuntimeError, match="boom"), direct_forward(tiny):
        raise RuntimeError("boom")
    assert block_type(tiny) == "BlockBridge"
    assert (list(original._forward_hooks), list(original._forward_pre_hooks)) == hooks_before


def test_hooked_points_see_the_same_tensors_once(tiny):
    # Left-padding positions hold different garbage under eager and SDPA attention; compare real tokens.
    real = encoded(tiny)["attention_mask"].bool()
    bridge_seen, bridge_logits = run_hooked(tiny, direct=False)
    direct_seen, direct_logits = run_hooked(tiny, direct=True)
    assert bridge_seen.keys() == direct_seen.keys() and len(direct_seen) == len(POINTS)
    for name, tensors in direct_seen.items():
        assert len(tensors) == len(bridge_seen[name]) == 1, name
        assert torch.allclose(tensors[0][real], bridge_seen[name][0][real], atol=1e-5), name
    assert torch.allclose(direct_logits[real], bridge_logits[real], atol=1e-4)


def test_editing_hooks_edit_the_same_way(tiny):
    real = encoded(tiny)["attention_mask"].bool()
    edit = torch.full((tiny.d_model,), 0.5)
    _, plain = run_hooked(tiny, direct=True)
    _, bridge_logits = run_hooked(tiny, direct=False, edit=edit)
    _, direct_logits = run_hooked(tiny, direct=True, edit=edit)
    assert torch.allclose(direct_logits[real], bridge_logits[real], atol=1e-4)
    assert not torch.allclose(direct_logits[real], plain[real], atol=1e-2)


def test_a_hook_inside_attention_keeps_the_bridge(tiny):
    pattern = [("blocks.0.attn.hook_pattern", lambda x, hook: None)]
    with (
        pytest.warns(UserWarning, match="hook_pattern is not at a component"),
        tiny.bridge.hooks(fwd_hooks=pattern),
        direct_forward(tiny, strict=False) as took,
    ):
        assert not took
        assert block_type(tiny) == "BlockBridge"
    handle = tiny.hf_model.model.layers[1].register_forward_hook(lambda *_: None)
    try:
        with (
            pytest.warns(UserWarning, match="wrapper module 'model.layers.1'"),
            direct_forward(tiny, strict=False) as took,
        ):
            assert not took
    finally:
        handle.remove()
    with direct_forward(tiny) as took:
        assert took


def leave_twice(model, **kwargs) -> list[str]:
    pattern = [("blocks.0.attn.hook_pattern", lambda x, hook: None)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            with model.bridge.hooks(fwd_hooks=pattern), direct_forward(model, **kwargs) as took:
                assert not took
    return [str(w.message) for w in caught]


def test_leaving_the_fast_path_warns_once_per_model_or_raises_when_strict(monkeypatch):
    model = build_tiny_model(n_layers=2)
    assert leave_twice(model) == [
        "tiny-llama runs through the TransformerLens bridge (slower): a hook on blocks.0.attn.hook_pattern "
        "is not at a component's input or output"
    ]
    assert leave_twice(build_tiny_model(n_layers=2)) != []  # once per model, not once per process
    with pytest.raises(FastPathError, match="hook_pattern is not at a component"):
        leave_twice(model, strict=True)
    monkeypatch.setenv(STRICT_ENV, "1")
    pattern = [("blocks.1.attn.hook_pattern", lambda x, hook: None)]
    with pytest.raises(FastPathError, match=STRICT_ENV), model.bridge.hooks(fwd_hooks=pattern):
        generate(model, PROMPTS[:2], max_new_tokens=2)
    assert leave_twice(model, strict=False) == []  # the argument wins over the environment; warned already


def test_an_architecture_without_tested_parity_runs_through_the_bridge_and_says_so(monkeypatch):
    model = build_tiny_model(n_layers=2)
    fast = generate(model, PROMPTS[:2], max_new_tokens=4)
    monkeypatch.setattr(fastpath, "ARCHITECTURES", ("gpt2",))
    with pytest.warns(UserWarning, match="architecture 'llama' has no tested fast path"):
        slow = generate(model, PROMPTS[:2], max_new_tokens=4)
    assert slow == fast
    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(FastPathError, match="architecture 'llama'"):
        collect(model, PROMPTS[:2], cache=False)


def test_bridge_only_runs_the_bridge_silently(tiny):
    with warnings.catch_warnings(), bridge_only(tiny):
        warnings.simplefilter("error")
        with direct_forward(tiny, strict=True) as took:
            assert not took
            assert block_type(tiny) == "BlockBridge"
    with direct_forward(tiny) as took:
        assert took
