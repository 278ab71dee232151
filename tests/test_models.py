"""Loading: path-like specs stay on disk, hub ids fail offline in one line, device maps, Gemma 2; bad specs,
model files, dtypes and devices are refused in one line; chat and base prompt formats; the dequantized GGUF
cache (dense, versioned, built once under a lock, whole or not at all); what a folder model's hash covers."""

from __future__ import annotations

import dataclasses
import errno
import json

import pytest
import torch
import transformers

from tests.conftest import PROMPTS, build_tiny_tokenizer, tiny_config
from tests.refusals import refuses
from tests.tiny_gguf import write_tiny_gguf
from workbench import models
from workbench.activations import collect
from workbench.errors import InvalidArgumentError, ModelLoadError, OutputPathError
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


# ---- the dequantized GGUF cache: a plain dense checkpoint, built once, whole or not at all -------------


@pytest.fixture
def tiny_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    hf, _ = write_tiny_gguf(tmp_path / "tiny.gguf")
    return tmp_path / "tiny.gguf", hf


def test_the_dequantized_cache_is_a_dense_checkpoint_that_loads_in_bfloat16_without_the_quantizer(
    tiny_gguf, caplog
):
    path, hf = tiny_gguf
    first = load_model(str(path), device="cpu")
    folder = models._dequantized_dir(path)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    ids = first.tokenizer(["The capital of France"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(first.hf_model(ids).logits, hf(ids).logits, atol=1e-5), (
            "F32 comes back as it was"
        )
    with caplog.at_level("WARNING"):
        half = load_model(str(path), device="cpu", dtype="bfloat16")
    for loaded in (first, half):
        assert getattr(loaded.hf_model, "hf_quantizer", None) is None
        assert not getattr(loaded.hf_model, "is_quantized", False)
        assert all(type(p) is torch.nn.Parameter for p in loaded.hf_model.parameters()), "dense, not packed"
    assert {p.dtype for p in half.hf_model.parameters()} == {torch.bfloat16}
    assert "packed" not in caplog.text and "quantiz" not in caplog.text.lower()
    assert half.weights_hash == first.weights_hash == models._file_sha256([path])
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name], "no temporary folder is left"


def test_an_older_cache_is_rebuilt_and_a_built_one_is_reused(tiny_gguf, monkeypatch):
    path, _ = tiny_gguf
    with monkeypatch.context() as patch:
        patch.setattr(models, "DEQUANTIZED_VERSION", 1)
        old = models._dequantized_dir(path)
    assert models._dequantized_dir(path) != old, "the version is part of the key"
    calls, real = [], models._dequantize
    monkeypatch.setattr(
        models, "_dequantize", lambda gguf, folder: calls.append(folder) or real(gguf, folder)
    )
    first, again = (load_model(str(path), device="cpu") for _ in range(2))
    assert len(calls) == 1 and first.fingerprint == again.fingerprint


def test_a_full_disk_or_a_kill_while_dequantizing_leaves_no_cache_and_the_next_load_rebuilds_it(
    tiny_gguf, monkeypatch
):
    path, _ = tiny_gguf
    folder = models._dequantized_dir(path)
    killed = folder.with_name(f".{folder.name}.dead.tmp")  # what SIGKILL half-way leaves behind
    killed.mkdir(parents=True)
    (killed / "model.safetensors").write_bytes(b"half")
    real = models._dequantize

    def full(gguf, tmp):
        real(gguf, tmp)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(models, "_dequantize", full)
    with pytest.raises(OutputPathError, match="disk is full") as caught:
        load_model(str(path), device="cpu")
    assert "\n" not in str(caught.value) and not folder.exists()
    monkeypatch.setattr(models, "_dequantize", real)
    assert load_model(str(path), device="cpu").n_layers == 4
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]


def test_a_folder_models_hash_covers_its_tokenizer_and_chat_template(tiny_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    same = load_model(str(copy), device="cpu")
    assert same.weights_hash == load_model(tiny_dir, device="cpu").weights_hash
    settings = json.loads((copy / "tokenizer_config.json").read_text())
    template = copy / "chat_template.jinja"
    if template.exists():
        template.write_text(template.read_text().replace("<|im_start|>assistant", "<|im_start|>bot"))
    else:
        settings["chat_template"] = settings["chat_template"].replace("assistant", "bot")
        (copy / "tokenizer_config.json").write_text(json.dumps(settings))
    changed = load_model(str(copy), device="cpu")
    assert changed.format_chat("Hi") != same.format_chat("Hi")
    assert changed.weights_hash != same.weights_hash and changed.fingerprint != same.fingerprint
