"""LoRA adapters on a loaded workbench :class:`~workbench.models.Model`: the value, its file, and applying it.

The layers are peft's (``peft.tuners.lora.Linear``: ``W x + (alpha / r) · B A x``). The TransformerBridge
wraps every Hugging Face submodule (a ``LinearBridge`` around each ``nn.Linear``); a LoRA layer takes the
place of the ``nn.Linear`` *inside* its wrapper, so the bridge's own forward and the workbench's fast path
(:mod:`workbench.fastpath`, which runs the wrapped modules directly) both run it, and
:func:`~workbench.generation.generate`, :func:`~workbench.evaluation.perplexity.perplexity` and
:func:`~workbench.evaluation.mc.multiple_choice` work unchanged under :func:`lora_applied`.
Target names are the Hugging Face module names with the bridge's ``_original_component`` levels removed
(``model.layers.0.self_attn.q_proj``), so an adapter means the same on a plain Hugging Face model.

An adapter file is one safetensors file written atomically by :mod:`workbench.formats` (checksummed
float32 tensors plus JSON payload, never a pickle): tensors ``lora_A`` and ``lora_B`` hold every target's
matrices flattened and concatenated in ``targets`` order; the payload holds ``targets`` (name, in and out
features), ``config`` (rank, alpha) and ``provenance``. A truncated, half-written or edited file is refused.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from workbench.errors import ArtifactError, InvalidArgumentError, ShapeMismatchError
from workbench.formats import load_safetensors, save_safetensors
from workbench.models import Model

__all__ = [
    "ADAPTER_NAME",
    "ARTIFACT_TYPE",
    "LoraAdapter",
    "inject",
    "linear_targets",
    "lora_applied",
    "remove",
]

ARTIFACT_TYPE = "lora_adapter"
#: peft's name for the one adapter a workbench LoRA layer holds.
ADAPTER_NAME = "workbench"
_WRAPPED = "._original_component"
_KEYS = ("targets", "config", "provenance")


@dataclass(frozen=True)
class LoraAdapter:
    """Trained LoRA matrices per target module: ``A`` is ``[rank, in]``, ``B`` is ``[out, rank]``.

    ``provenance`` records the base model (``weights_hash``, ``fingerprint``, name), the data, the
    recipe, the training times and the workbench version.
    """

    rank: int
    alpha: float
    A: dict[str, Float[Tensor, "rank d_in"]]
    B: dict[str, Float[Tensor, "d_out rank"]]
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise InvalidArgumentError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if not isinstance(self.alpha, int | float) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise InvalidArgumentError(f"LoRA alpha must be a positive number, got {self.alpha!r}")
        if set(self.A) != set(self.B) or not self.A:
            raise ShapeMismatchError(
                "a LoRA adapter needs A and B matrices for the same, nonempty set of targets"
            )
        for name in self.A:
            a, b = self.A[name], self.B[name]
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != self.rank or b.shape[1] != self.rank:
                raise ShapeMismatchError(
                    f"target {name!r}: A is {tuple(a.shape)} and B {tuple(b.shape)}, expected [{self.rank}, in] "
                    f"and [out, {self.rank}]"
                )
        object.__setattr__(self, "alpha", float(self.alpha))  # 16 and 16.0 are one adapter

    @property
    def targets(self) -> list[str]:
        return sorted(self.A)

    @property
    def n_parameters(self) -> int:
        return sum(self.A[n].numel() + self.B[n].numel() for n in self.A)

    @property
    def hash(self) -> str:
        """SHA-256 of the rank, alpha and matrices (not the provenance): what changes the model's outputs."""
        digest = hashlib.sha256(f"{self.rank}|{self.alpha}".encode())
        for name in self.targets:
            digest.update(name.encode())
            for tensor in (self.A[name], self.B[name]):
                digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the adapter as one checksummed safetensors file, atomically; returns the path."""
        names = self.targets
        payload = {
            "targets": [
                {"name": n, "in_features": self.A[n].shape[1], "out_features": self.B[n].shape[0]}
                for n in names
            ],
            "config": {"rank": self.rank, "alpha": self.alpha},
            "provenance": self.provenance,
        }
        tensors = {
            "lora_A": torch.cat([self.A[n].detach().reshape(-1).float().cpu() for n in names]),
            "lora_B": torch.cat([self.B[n].detach().reshape(-1).float().cpu() for n in names]),
        }
        return save_safetensors(path, ARTIFACT_TYPE, tensors, payload, "LoRA adapter")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LoraAdapter:
        """Read a file written by :meth:`save`; a damaged, truncated or edited file raises ArtifactError."""
        shapes = {"lora_A": "[values]", "lora_B": "[values]"}
        tensors, payload = load_safetensors(path, ARTIFACT_TYPE, shapes, _KEYS, "LoRA adapter")
        try:
            rank, alpha = int(payload["config"]["rank"]), float(payload["config"]["alpha"])
            sizes = [(t["name"], int(t["in_features"]), int(t["out_features"])) for t in payload["targets"]]
            a_parts = torch.split(tensors["lora_A"], [rank * d_in for _, d_in, _ in sizes])
            b_parts = torch.split(tensors["lora_B"], [d_out * rank for _, _, d_out in sizes])
            return cls(
                rank,
                alpha,
                {n: a.reshape(rank, d_in) for (n, d_in, _), a in zip(sizes, a_parts, strict=True)},
                {n: b.reshape(d_out, rank) for (n, _, d_out), b in zip(sizes, b_parts, strict=True)},
                dict(payload["provenance"]),
            )
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ArtifactError(f"{path} holds an inconsistent LoRA adapter ({e}); save it again") from None


def linear_targets(model: Model, modules: Sequence[str] | None = None) -> dict[str, tuple[nn.Module, str]]:
    """The linear layers a LoRA can adapt: clean name → (parent module, key of the layer in the parent).

    Every ``nn.Linear`` but the output head, or only those whose name ends in one of ``modules``
    (``("q_proj", "v_proj")``).
    """
    head = model.hf_model.get_output_embeddings()
    head = head._modules.get("_original_component", head)  # the bridge wraps it too
    found: dict[str, tuple[nn.Module, str]] = {}
    for name, module in model.hf_model.named_modules():
        if type(module) is not nn.Linear or module is head:
            continue
        clean = name.replace(_WRAPPED, "")
        if modules is not None and clean.rsplit(".", 1)[-1] not in modules:
            continue
        parent_name, _, key = name.rpartition(".")
        found[clean] = (model.hf_model.get_submodule(parent_name), key)
    if not found:
        raise InvalidArgumentError(
            f"{model.name} has no linear layer{' named ' + ', '.join(modules) if modules else ''} to adapt"
        )
    return found


def inject(model: Model, rank: int, alpha: float, targets: Sequence[str]) -> dict[str, nn.Module]:
    """Put a fresh peft LoRA layer (B = 0, so outputs are unchanged) in place of each target linear layer."""
    from peft import LoraConfig
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.tuners_utils import BaseTunerLayer

    if any(isinstance(m, BaseTunerLayer) for m in model.hf_model.modules()):
        raise InvalidArgumentError(
            f"{model.name} already runs a LoRA adapter: leave its lora_applied block before applying another"
        )
    places = linear_targets(model)
    missing = [t for t in targets if t not in places]
    if missing:
        raise ShapeMismatchError(
            f"{model.name} has no linear layer {missing[0]!r} (of {len(missing)} missing): the adapter was "
            "made for another architecture"
        )
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets))
    layers: dict[str, nn.Module] = {}
    for name in targets:
        parent, key = places[name]
        layer = LoraLinear(parent._modules[key], ADAPTER_NAME, config=config, r=rank, lora_alpha=alpha)
        parent._modules[key] = layer
        layers[name] = layer
    return layers


def remove(model: Model, layers: Mapping[str, nn.Module]) -> None:
    """Put each LoRA layer's base linear layer back where the layer sits (the inverse of :func:`inject`)."""
    by_id = {id(layer): layer for layer in layers.values()}
    for module in list(model.hf_model.modules()):
        for key, child in list(module._modules.items()):
            if child is not None and id(child) in by_id:
                module._modules[key] = child.get_base_layer()


@contextmanager
def lora_applied(model: Model, adapter: LoraAdapter, *, check_base: bool = True) -> Iterator[Model]:
    """Within the block ``model`` runs with ``adapter``; the original layers come back on exit or error.

    ``model.weights_hash`` (hence ``model.fingerprint``, the key of every output cache) names base and
    adapter together inside the block. ``check_base`` refuses an adapter trained on other weights.
    """
    if not isinstance(adapter, LoraAdapter):
        raise InvalidArgumentError(f"lora_applied takes a LoraAdapter, got {type(adapter).__name__}")
    base = adapter.provenance.get("base_weights_hash")
    if check_base and base is not None and base != model.weights_hash:
        raise InvalidArgumentError(
            f"this adapter was trained on weights {str(base)[:12]}, not {model.name}'s "
            f"({model.weights_hash[:12]}): load its base model, or pass check_base=False"
        )
    layers = inject(model, adapter.rank, adapter.alpha, adapter.targets)
    original = model.weights_hash
    try:
        with torch.no_grad():
            for name, layer in layers.items():
                _fill(layer, adapter.A[name], adapter.B[name], name)
        model.weights_hash = hashlib.sha256(f"{original}|lora:{adapter.hash}".encode()).hexdigest()
        yield model
    finally:
        model.weights_hash = original
        remove(model, layers)


def _fill(layer: nn.Module, a: Tensor, b: Tensor, name: str) -> None:
    weight_a, weight_b = layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight
    if weight_a.shape != a.shape or weight_b.shape != b.shape:
        raise ShapeMismatchError(
            f"target {name!r} is {weight_b.shape[0]}x{weight_a.shape[1]} in this model but "
            f"{b.shape[0]}x{a.shape[1]} in the adapter: it was made for another model"
        )
    weight_a.copy_(a)
    weight_b.copy_(b)
