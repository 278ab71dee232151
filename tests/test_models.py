"""Loading: path-like specs stay on disk, hub ids fail offline in one line, device maps, Gemma 2; bad specs,
model files, dtypes and devices are refused in one line; chat and base prompt formats."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import transformers

from tests.conftest import PROMPTS, build_tiny_tokenizer, tiny_config
from tests.refusals import refuses
from workbench.activations import collect
from workbench.errors import InvalidArgumentError, ModelLoadError
from workbench.generation import generate
from workbench.models import DEFAULT_SPEC, load_model


@pytest.fixture
def no_hub(monkeypatch):
    """Fail the test if anything asks transformers to load by name."""

    def refuse(spec, *args, **kwargs):
        pytest.fail(f"{spec!r} was handed to transformers")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)


@pytest.mark.parametrize(
    "spec", ["./my-model", "models/llama/tiny", "~/no/such/model", "weights.safetensors"]
)
def test_a_missing_path_is_a_missing_file_error_not_a_hub_request(spec, no_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(spec, device="cpu")


def test_an_offline_hub_id_is_one_line_naming_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="'nobody-here/no-such-model'") as caught:
        load_model("nobody-here/no-such-model", device="cpu")
    assert "\n" not in str(caught.value) and "offline" in str(caught.value)


def layer_map(n_layers: int) -> dict[str, str]:
    """Every module on the CPU but layer 1, offloaded to disk: two devices, so accelerate dispatches the
    model with its hooks (a map onto one device is not dispatched)."""
    names = ["model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head"]
    placed = {name: "cpu" for name in [*names, *(f"model.layers.{i}" for i in range(n_layers))]}
    return {**placed, "model.layers.1": "disk"}


def test_a_device_map_over_layers_loads_and_generates_the_same(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    whole = load_model(tiny_dir, device="cpu")
    split = load_model(tiny_dir, device_map=layer_map(whole.n_layers))
    assert split.hf_model.hf_device_map["model.layers.1"] == "disk"
    assert split.fingerprint == whole.fingerprint
    assert generate(split, PROMPTS[:3], max_new_tokens=6) == generate(whole, PROMPTS[:3], max_new_tokens=6)
    diff = collect(split, PROMPTS[:3], cache=False).tensor - collect(whole, PROMPTS[:3], cache=False).tensor
    assert diff.abs().max() <= 1e-5


def test_device_map_refusals(tiny_dir):
    with pytest.raises(InvalidArgumentError, match="either device or device_map"):
        load_model(tiny_dir, device="cpu", device_map="auto")
    with pytest.raises(InvalidArgumentError, match="max_memory needs a device_map"):
        load_model(tiny_dir, max_memory={"cpu": "1GB"})
    with pytest.raises(InvalidArgumentError, match="device_map must be one of"):
        load_model(tiny_dir, device_map="everywhere")
    with pytest.raises(ModelLoadError, match="could not load the directory"):
        load_model(tiny_dir, device_map={"model.embed_tokens": "cpu", "model.layers.0": "disk"})


def test_gemma2_loads_with_eager_attention_and_others_with_sdpa(tmp_path):
    tokenizer = build_tiny_tokenizer()
    for kind, attention in (("gemma2", "eager"), ("qwen2", "sdpa")):
        folder = tmp_path / kind
        transformers.AutoModelForCausalLM.from_config(tiny_config(kind, tokenizer)).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        assert load_model(str(folder), device="cpu").hf_model.config._attn_implementation == attention


def test_transformer_lens_boot_errors_are_model_load_errors(tiny_dir, monkeypatch):
    from transformer_lens.model_bridge import TransformerBridge

    def boot(*args, **kwargs):
        raise ValueError("Unsupported architecture: TinyForCausalLM\nmore detail")

    monkeypatch.setattr(TransformerBridge, "boot_transformers", boot)
    with pytest.raises(
        ModelLoadError, match=r"TransformerLens could not wrap .*Unsupported architecture"
    ) as caught:
        load_model(tiny_dir, device="cpu")
    assert "\n" not in str(caught.value)


# ---- bad inputs ---------------------------------------------------------------------------------------


def test_unknown_model_spec():
    refuses(ModelLoadError, lambda: load_model("no-such-model-xyz"), "not a known spec")


def test_empty_model_spec():
    refuses(InvalidArgumentError, lambda: load_model("  "), "non-empty string")


def test_missing_model_file(tmp_path):
    refuses(ModelLoadError, lambda: load_model(str(tmp_path / "missing.gguf")), "does not exist")


def test_tiny_truncated_model_file(tmp_path):
    path = tmp_path / "short.gguf"
    path.write_bytes(b"GGUF" + bytes(100))
    refuses(ModelLoadError, lambda: load_model(str(path)), "truncated")


def test_real_gguf_cut_short(tmp_path, monkeypatch):
    """The bundled SmolLM2 GGUF cut after 200 kB: header and metadata start, the rest is missing."""
    from workbench.models import _bundled_gguf

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    try:
        source = _bundled_gguf(DEFAULT_SPEC)
    except ModelLoadError:
        pytest.skip("the bundled SmolLM2 GGUF is not installed")
    with open(source, "rb") as handle:
        head = handle.read(200_000)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(head)
    refuses(ModelLoadError, lambda: load_model(str(cut)), "download or copy it again")


def test_non_gguf_model_file(tmp_path):
    path = tmp_path / "weights.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a GGUF " * 100)
    refuses(ModelLoadError, lambda: load_model(str(path)), "not a GGUF file")


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    refuses(ModelLoadError, lambda: load_model(str(tmp_path)), "config.json")


@pytest.mark.parametrize("dtype", ["float33", "int8", torch.int64, "", 5])
def test_bad_dtype(dtype):
    refuses(InvalidArgumentError, lambda: load_model(DEFAULT_SPEC, dtype=dtype), "unknown dtype")


@pytest.mark.parametrize("device", ["bogus", "cuda:99"])
def test_bad_device(device):
    refuses(InvalidArgumentError, lambda: load_model(DEFAULT_SPEC, device=device), "device")


def test_chat_format_carries_special_tokens_once(tiny):
    text = tiny.format_chat("Hello")
    assert text.startswith("<|im_start|>user\nHello<|im_end|>")
    ids = tiny.encode([text], formatted=True)["input_ids"][0].tolist()
    assert ids.count(tiny.tokenizer.convert_tokens_to_ids("<|im_start|>")) == 2  # user + assistant turns


def test_base_format_is_question_answer(tiny):
    base = dataclasses.replace(tiny, is_chat=False)
    assert base.format_chat("Why?") == "Q: Why?\nA:"
