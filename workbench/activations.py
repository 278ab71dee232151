"""Activation capture: the residual stream (or another per-layer hook) at chosen token positions."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from workbench import __version__, formats
from workbench.batching import format_prompts, length_batches
from workbench.errors import ArtifactError, InvalidArgumentError, OutputPathError, ShapeMismatchError
from workbench.fastpath import direct_forward, hooked
from workbench.files import atomic_write
from workbench.models import Model
from workbench.paths import cache_dir


@dataclass(frozen=True)
class Activations:
    """Activations of ``n`` prompts at ``len(layers)`` layers, one position per prompt.

    ``tensor[i, j]`` is prompt ``i`` at block ``layers[j]``. ``settings`` records how they were taken
    (model name and weights hash, hook, position rule, chat formatting) for provenance.
    """

    tensor: Float[Tensor, "n layer d_model"]
    layers: tuple[int, ...]
    prompts_hash: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.tensor.shape[0]

    @property
    def d_model(self) -> int:
        return self.tensor.shape[2]

    def layer(self, layer: int) -> Float[Tensor, "n d_model"]:
        """The activations at one block index (not a position in ``layers``)."""
        return self.tensor[:, self.layers.index(layer)]

    @classmethod
    def from_tensor(
        cls, tensor: Float[Tensor, "n layer d_model"], layers: tuple[int, ...] | None = None, **settings: Any
    ) -> Activations:
        """Wrap a raw tensor (synthetic data, outside captures) as Activations."""
        layers = tuple(range(tensor.shape[1])) if layers is None else tuple(layers)
        return cls(
            tensor=torch.as_tensor(tensor, dtype=torch.float32),
            layers=layers,
            prompts_hash="",
            settings=settings,
        )

    @classmethod
    def coerce(cls, obj: Activations | Tensor, which: str) -> Activations:
        """``obj`` if it is Activations, else a tensor ``[n, layer, d_model]`` wrapped; checks the shape."""
        if isinstance(obj, Activations):
            acts = obj
        elif isinstance(obj, Tensor | np.ndarray):
            tensor = torch.as_tensor(obj)
            if tensor.ndim != 3:
                raise InvalidArgumentError(
                    f"{which} activations must have shape [n, layer, d_model], got {tuple(tensor.shape)}; "
                    "for one layer add the axis with t[:, None, :]"
                )
            acts = cls.from_tensor(tensor)
        else:
            raise InvalidArgumentError(
                f"{which} must be Activations or a tensor [n, layer, d_model], got {type(obj).__name__}"
            )
        if acts.tensor.ndim != 3 or acts.tensor.shape[1] != len(acts.layers):
            raise ShapeMismatchError(
                f"{which} activations have tensor shape {tuple(acts.tensor.shape)} but {len(acts.layers)} "
                f"layers {acts.layers}; the tensor must be [n, len(layers), d_model]"
            )
        return acts

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write one ``.safetensors`` file atomically: tensor ``activations`` and, as checksummed JSON
        metadata, ``layers``, ``prompts_hash``, ``settings`` and ``workbench_version``; returns the path."""
        payload = {
            "layers": list(self.layers),
            "prompts_hash": self.prompts_hash,
            "settings": self.settings,
            "workbench_version": __version__,
        }
        return formats.save_safetensors(
            path, ARTIFACT_TYPE, {"activations": self.tensor}, payload, "activations"
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Activations:
        """Read a file written by :meth:`save`; refuses (ArtifactError) another artifact, a damaged or
        modified file (checksum) and a tensor that does not fit its layers."""
        keys = ("layers", "prompts_hash", "settings", "workbench_version")
        shapes = {"activations": "[n, layer, d_model]"}
        tensors, payload = formats.load_safetensors(path, ARTIFACT_TYPE, shapes, keys, "activations")
        layers, settings = payload["layers"], payload["settings"]
        if not (
            isinstance(layers, list)
            and all(isinstance(b, int) and not isinstance(b, bool) for b in layers)
            and isinstance(settings, dict)
            and len(layers) == tensors["activations"].shape[1]
        ):
            raise ArtifactError(
                f"{path} holds inconsistent activations (layers {layers}); collect them again"
            )
        return cls(tensors["activations"], tuple(layers), str(payload["prompts_hash"]), settings)


ARTIFACT_TYPE = "activations"
HOOKS = ("resid_post", "resid_pre", "resid_mid", "attn_out", "mlp_out")


class _StopForward(Exception):
    """Raised by the last needed hook: later layers and the unembedding are not computed."""


def _hook_name(layer: int, hook: str) -> str:
    return f"blocks.{layer}.hook_{hook}"


def _prompts_hash(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()


#: Where :func:`collect` reads: the last prompt token, or the mean over the prompt's tokens (the names of
#: :data:`workbench.positions.POSITIONS`); an int is a token index.
READ_POSITIONS = ("last_prompt", "prompt")


def _select(x: Tensor, mask: Tensor, position: str | int) -> Tensor:
    """One vector per row of ``x`` [batch, seq, d] under a left-padded ``mask`` [batch, seq]: the last
    position, the mean over the positions the mask selects (``prompt``, ``generated``), or an index."""
    if position == "last_prompt":
        return x[:, -1]
    if position in ("prompt", "generated"):
        weights = mask.to(x.dtype)[..., None]
        return (x * weights).sum(1) / weights.sum(1)
    lengths = mask.sum(1)
    index = x.shape[1] + position if position < 0 else x.shape[1] - lengths + position
    return x[torch.arange(x.shape[0]), index]


#: Bumped when what a cached capture holds or is keyed by changes (v2: position ids under left padding;
#: v3: keyed by batch size, since the batches' padding changes the last bits).
CACHE_VERSION = 3
BYPASS_WARNING = "collect: hooks are active, the activation cache is bypassed"


def _settings(model: Model, hook: str, position: str | int, chat: bool) -> dict[str, Any]:
    return {
        "model_name": model.name,
        "weights_hash": model.weights_hash,
        "fingerprint": model.fingerprint,
        "hook": hook,
        "position": position,
        "chat": chat,
        "is_chat": model.is_chat,
        "n_layers": model.n_layers,
    }


def _cache_path(
    model: Model,
    settings: dict[str, Any],
    layers: tuple[int, ...],
    prompts_hash: str,
    batch_size: int,
    cache: bool,
) -> Path | None:
    """Where this capture is cached, or None: caching is off, or hooks are active (steering or user hooks
    change the activations, so they are neither read from nor written to the cache). The key names every
    input of the capture: model fingerprint (weights with tokenizer, dtype, device), hook, position, chat
    formatting, layers, the prompts as formatted, and the batch size."""
    if not cache:
        return None
    active = hooked(model)
    if active:
        warnings.warn(f"{BYPASS_WARNING} ({', '.join(active[:3])})", stacklevel=3)
        return None
    blob = json.dumps([CACHE_VERSION, settings, layers, prompts_hash, batch_size], sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:32]
    return cache_dir() / "activations" / f"{key}.safetensors"


def collect(
    model: Model,
    prompts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    position: str | int = "last_prompt",
    hook: str = "resid_post",
    chat: bool = True,
    batch_size: int = 16,
    cache: bool = True,
    progress: bool = False,
) -> Activations:
    """Activations of each prompt at ``layers`` (default all) at one token position.

    ``position``: ``"last_prompt"`` (the last real prompt token), ``"prompt"`` (the mean over the prompt's
    real tokens, padding excluded) or an int index into the real tokens (negative counts from the end). Only the
    needed hook points are hooked, and the forward stops after the last needed layer. Position ids count
    each row's real tokens (left padding does not shift absolute positions). With ``cache``, results are
    stored under the workbench cache keyed by ``model.fingerprint`` (weights, dtype, device type), prompts
    as formatted, layers, hook, position and ``batch_size``, and a second identical call reads them (a
    cache that cannot be written, e.g. a full disk, or a damaged entry only warns). While any hook is
    registered on the model (inside :func:`~workbench.steering.steer`, user hooks) the cache is neither
    read nor written, with a warning.
    """
    texts = format_prompts(model, prompts, chat=chat)
    layers = tuple(range(model.n_layers)) if layers is None else tuple(model.layer_check(b) for b in layers)
    if not layers:
        raise InvalidArgumentError("layers is empty: pass at least one block index, or None for all")
    if hook not in HOOKS:
        raise InvalidArgumentError(f"unknown hook {hook!r}: use one of {', '.join(HOOKS)}")
    if not (position in READ_POSITIONS or (isinstance(position, int) and not isinstance(position, bool))):
        raise InvalidArgumentError(
            f"unknown position {position!r}: use 'last_prompt', 'prompt' (their mean) or an int token index"
        )
    settings = _settings(model, hook, position, chat)
    prompts_hash = _prompts_hash(texts)
    path = _cache_path(model, settings, layers, prompts_hash, batch_size, cache)
    if (cached := _cached(path, (len(texts), len(layers), model.d_model))) is not None:
        return Activations(cached, layers, prompts_hash, settings)
    batches = list(length_batches(model, texts, batch_size, formatted=chat))

    def forwards() -> Iterator[tuple[list[int], dict[str, Tensor], Tensor]]:
        for batch in batches:
            encoded = model.encode([texts[i] for i in batch], formatted=chat)
            if isinstance(position, int):
                shortest = int(encoded["attention_mask"].sum(1).min())
                if not -shortest <= position < shortest:
                    raise InvalidArgumentError(
                        f"position {position} is outside a prompt of {shortest} tokens: use a smaller index"
                    )
            mask = encoded["attention_mask"]
            yield batch, {**encoded, "position_ids": (mask.cumsum(-1) - 1).clamp_min(0)}, mask

    out = _capture(model, len(texts), layers, hook, forwards(), position, progress)
    if path is not None:
        _store(path, out, settings)
    return Activations(out, layers, prompts_hash, settings)


def _cached(path: Path | None, shape: tuple[int, int, int]) -> Tensor | None:
    """The cached tensor at ``path``, or None when there is none; an unreadable or misshapen file (a damaged
    disk) is left to be overwritten, with a warning."""
    if path is None or not path.exists():
        return None
    try:
        tensor = load_file(path)["tensor"]
    except Exception as exc:  # safetensors raises its own error type for damaged files
        warnings.warn(
            f"collect: the cached capture {path} is unreadable ({exc}); collecting again", stacklevel=3
        )
        return None
    if tuple(tensor.shape) != shape:
        warnings.warn(
            f"collect: the cached capture {path} has shape {tuple(tensor.shape)}; collecting again",
            stacklevel=3,
        )
        return None
    return tensor


def _store(path: Path, tensor: Tensor, settings: dict[str, Any]) -> None:
    """Cache a capture; a full disk or unwritable cache loses only the cache entry (a one-line warning)."""
    metadata = {"settings": json.dumps(settings)}
    try:
        atomic_write(
            path, lambda tmp: save_file({"tensor": tensor}, tmp, metadata=metadata), "activation cache"
        )
    except OutputPathError as exc:
        warnings.warn(f"collect: not cached: {exc}", stacklevel=3)


def _capture(
    model: Model,
    n: int,
    layers: tuple[int, ...],
    hook: str,
    forwards: Iterable[tuple[list[int], dict[str, Tensor], Tensor]],
    position: str | int,
    progress: bool,
) -> Float[Tensor, "n layer d_model"]:
    """Run each ``(rows, forward kwargs, mask)`` and keep ``_select(x, mask, position)`` at every layer.

    For ``position`` ``"prompt"`` or ``"generated"`` the mask says which positions are averaged (the prompt's
    real tokens, or a response's tokens).
    """
    out = torch.empty(n, len(layers), model.d_model)
    slot = {layer: j for j, layer in enumerate(layers)}
    last = max(layers)
    batch_out: dict[int, Tensor] = {}
    state: dict[str, Tensor] = {}

    def capture(x: Tensor, hook: Any) -> Tensor:
        layer = int(hook.name.split(".")[1])
        batch_out[layer] = _select(x, state["mask"], position).float()
        if layer == last:
            raise _StopForward
        return x

    hooks = [(_hook_name(layer, hook), capture) for layer in layers]
    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=hooks), direct_forward(model):
        for batch, kwargs, mask in tqdm(list(forwards), desc="collect", disable=not progress):
            state["mask"] = mask
            with contextlib.suppress(_StopForward):
                model.hf_model(**kwargs, use_cache=False)
            index = torch.tensor(batch)
            for layer, j in slot.items():
                out[index, j] = batch_out[layer].cpu()
    return out


def _response_ids(model: Model, text: str, response: str, *, chat: bool) -> tuple[list[int], int]:
    """Token ids of ``text`` followed by ``response``, and how many of them are the response's.

    The response is tokenized on its own after the prompt's tokens (so the boundary is exact), with a
    space before it when the prompt does not end in whitespace (a base model's ``A:``).
    """
    head = model.tokenizer(text, add_special_tokens=not (chat and model.is_chat))["input_ids"]
    tail_text = response if text[-1:].isspace() else f" {response}"
    tail = model.tokenizer(tail_text, add_special_tokens=False)["input_ids"]
    return [*head, *tail], len(tail)


def collect_responses(
    model: Model,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    hook: str = "resid_post",
    chat: bool = True,
    batch_size: int = 16,
    cache: bool = True,
    progress: bool = False,
) -> Activations:
    """Mean activation over the *response* tokens of each ``prompt + response``, at ``layers`` (default all).

    The prompt gets the chat format when ``chat``; the response's tokens follow it as the model would
    have written them, and only their positions are averaged (the prompt's are not). Use it on
    contrastive completions, e.g. the model's own answers when asked in Italian and in English, both
    appended to the same English prompt. ``settings["position"]`` is ``"generated"``; caching works
    as in :func:`collect`, keyed by prompts and responses.
    """
    texts = format_prompts(model, prompts, chat=chat)
    if isinstance(responses, str) or len(responses) != len(texts):
        raise InvalidArgumentError(
            f"got {len(texts)} prompts but {1 if isinstance(responses, str) else len(responses)} "
            "responses: give one response per prompt"
        )
    layers = tuple(range(model.n_layers)) if layers is None else tuple(model.layer_check(b) for b in layers)
    if not layers:
        raise InvalidArgumentError("layers is empty: pass at least one block index, or None for all")
    if hook not in HOOKS:
        raise InvalidArgumentError(f"unknown hook {hook!r}: use one of {', '.join(HOOKS)}")
    sequences = []
    for i, (text, response) in enumerate(zip(texts, responses, strict=True)):
        if not isinstance(response, str) or not response.strip():
            raise InvalidArgumentError(f"response {i} is empty: a response-token mean needs response tokens")
        ids, n = _response_ids(model, text, response, chat=chat)
        if len(ids) > model.n_ctx:
            raise InvalidArgumentError(
                f"prompt {i} with its response has {len(ids)} tokens, more than {model.name}'s context "
                f"of {model.n_ctx}: shorten it"
            )
        sequences.append((ids, n))
    settings = _settings(model, hook, "generated", chat)
    prompts_hash = _prompts_hash([*texts, *(f"\x00{r}" for r in responses)])
    path = _cache_path(model, settings, layers, prompts_hash, batch_size, cache)
    if (cached := _cached(path, (len(texts), len(layers), model.d_model))) is not None:
        return Activations(cached, layers, prompts_hash, settings)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    forwards = (_padded(model, [sequences[i] for i in batch], batch) for batch in batches)
    out = _capture(model, len(texts), layers, hook, forwards, "generated", progress)
    if path is not None:
        _store(path, out, settings)
    return Activations(out, layers, prompts_hash, settings)


def _padded(
    model: Model, sequences: list[tuple[list[int], int]], batch: list[int]
) -> tuple[list[int], dict[str, Tensor], Tensor]:
    """Left-padded ids, attention mask and position ids, and the mask of each row's last ``n`` tokens."""
    width = max(len(ids) for ids, _ in sequences)
    pad = model.tokenizer.pad_token_id
    input_ids = torch.full((len(sequences), width), 0 if pad is None else pad, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    response = torch.zeros((len(sequences), width), dtype=torch.long)
    for r, (ids, n) in enumerate(sequences):
        input_ids[r, width - len(ids) :] = torch.tensor(ids)
        attention[r, width - len(ids) :] = 1
        response[r, width - n :] = 1
    kwargs = {
        "input_ids": input_ids.to(model.device),
        "attention_mask": attention.to(model.device),
        "position_ids": (attention.cumsum(-1) - 1).clamp_min(0).to(model.device),
    }
    return batch, kwargs, response.to(model.device)
