"""Per-token gated steering: the edit of a Prompt Steering Replacement (PSR) model.

"Steer like the LLM" (Nokia Bell Labs, ICML 2026, ``Nokia-Bell-Labs/steer-like-the-llm``) reads prompting as
token-specific steering: the activation change an instruction causes is strong on some tokens and nearly
absent on others, so a constant strength cannot imitate it. A PSR model estimates each token's strength from
the activation itself. A :class:`GatedIntervention` edits ``blocks.{layer}.hook_resid_post`` as

    ``h + scale · α(h) · u``,  ``α(h) = ReLU(w·h + b)``,

per token at ``positions`` (default ``response``: the last prompt position and the generated ones, the
positions :func:`workbench.training.psr.train_gate` fits it on), with ``u`` a unit direction and ``α`` in
residual units (``scale = 1``: the strength as fitted). It acts after the layer's
:class:`~workbench.interventions.Intervention` s. :class:`GateSlots` applies the gates of a batch, one list
per row, inside :func:`workbench.steering.steer_rows`, as :class:`~workbench.head_steering.HeadSlots` does
the head pushes.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from workbench import formats
from workbench.errors import ArtifactError, InvalidArgumentError, ShapeMismatchError, WorkbenchError
from workbench.models import Model
from workbench.positions import PositionTracker, check_positions

__all__ = ["HOOK", "GateSlots", "GatedIntervention"]

#: The hook point a gated intervention edits.
HOOK = "blocks.{layer}.hook_resid_post"
ARTIFACT_TYPE = "gated_steering"
_SHAPES = {"direction": "[d_model]", "gate": "[d_model]"}
_PAYLOAD = ("knobs", "provenance")


def _finite(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _vector(value: object, name: str) -> Tensor:
    if not isinstance(value, Tensor) or value.ndim != 1 or value.numel() == 0:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ShapeMismatchError(f"{name} must be a non-empty [d_model] tensor, got {shape}")
    if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
        raise InvalidArgumentError(f"{name} must hold finite floating-point numbers")
    return value.detach().to("cpu", torch.float32).contiguous()


@dataclass(frozen=True, eq=False)
class GatedIntervention:
    """``h + scale · ReLU(gate·h + bias) · direction`` after block ``layer`` at ``positions``; ``direction``
    is stored unit norm. ``provenance`` says how it was made (:func:`workbench.training.psr.train_gate`)."""

    direction: Float[Tensor, " d_model"]
    gate: Float[Tensor, " d_model"]
    bias: float
    layer: int
    scale: float = 1.0
    positions: str = "response"
    provenance: Mapping[str, Any] = field(default_factory=dict)

    #: Never a dynamic strength (the protocol :func:`workbench.generation.generate` reads).
    schedule: ClassVar[None] = None

    def __post_init__(self) -> None:
        direction, gate = _vector(self.direction, "direction"), _vector(self.gate, "gate")
        if direction.shape != gate.shape:
            raise ShapeMismatchError(f"direction has {direction.numel()} entries but gate has {gate.numel()}")
        norm = torch.linalg.vector_norm(direction.double())
        if not norm > 0:
            raise InvalidArgumentError("direction must not be zero")
        object.__setattr__(self, "direction", (direction.double() / norm).float())
        object.__setattr__(self, "gate", gate)
        if not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < 0:
            raise InvalidArgumentError(f"layer must be a block index >= 0, got {self.layer!r}")
        for name in ("bias", "scale"):
            value = getattr(self, name)
            if not _finite(value):
                raise InvalidArgumentError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        check_positions(self.positions)
        object.__setattr__(self, "provenance", dict(self.provenance))

    @property
    def d_model(self) -> int:
        return int(self.direction.shape[0])

    @property
    def hook_name(self) -> str:
        return HOOK.format(layer=self.layer)

    @property
    def label(self) -> str:
        """Short name for tables: ``gate@10x1``, ``gate@10x2/all`` (positions other than ``response``)."""
        where = "" if self.positions == "response" else f"/{self.positions}"
        return f"gate@{self.layer}x{self.scale:g}{where}"

    def alphas(self, h: Float[Tensor, "*tokens d_model"]) -> Float[Tensor, "*tokens"]:
        """The fitted strength ``ReLU(gate·h + bias)`` of each token (``scale`` not applied)."""
        return torch.relu(h.to(self.gate.dtype) @ self.gate + self.bias)

    def describe(self, model: Model | None = None) -> dict[str, Any]:
        """Flat columns for a results table (as :meth:`workbench.interventions.Intervention.describe`)."""
        row: dict[str, Any] = {
            "layer": self.layer,
            "mode": "gated_add",
            "coef": self.scale,
            "positions": self.positions,
            "unit": "fitted",
            "decay_tokens": 0,
            "vector_method": self.provenance.get("method"),
            "vector_dataset": self.provenance.get("dataset"),
            "vector_model": self.provenance.get("model_name"),
        }
        if model is not None:
            source = self.provenance.get("weights_hash")
            row["target_model"] = model.name
            row["transfer"] = source is not None and source != model.weights_hash
        return row

    def check_fits(self, model: Model) -> None:
        """Refuse a gate that does not fit ``model`` (layer range, d_model, layer count)."""
        model.layer_check(self.layer)
        if self.d_model != model.d_model:
            raise ShapeMismatchError(
                f"the gate has d_model {self.d_model} but {model.name} has d_model {model.d_model}"
            )
        n_layers = self.provenance.get("n_layers")
        if n_layers is not None and int(n_layers) != model.n_layers:
            raise ShapeMismatchError(
                f"the gate was fitted on a model with {n_layers} layers but {model.name} has {model.n_layers}"
            )

    def _knobs(self) -> dict[str, Any]:
        return {"bias": self.bias, "layer": self.layer, "scale": self.scale, "positions": self.positions}

    @cached_property
    def digest(self) -> str:
        """SHA-256 of the tensors and every knob: equal digests, equal edits (cache keys)."""
        data = hashlib.sha256(formats.checksum([self.direction, self.gate], self._knobs()).encode())
        return data.hexdigest()

    def key(self) -> list[object]:
        """What a grid row's cache key records of this intervention (:mod:`workbench.runner`)."""
        return ["gated", self.label, self.digest]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``direction``, ``gate`` and JSON ``knobs`` (bias, layer, scale, positions) and ``provenance``
        to one checksummed ``.safetensors`` file, atomically; returns the path."""
        tensors = {"direction": self.direction, "gate": self.gate}
        payload = {"knobs": self._knobs(), "provenance": self.provenance}
        return formats.save_safetensors(path, ARTIFACT_TYPE, tensors, payload, "gated steering")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GatedIntervention:
        """Read a file written by :meth:`save`; verifies type, checksum and shapes (else ArtifactError)."""
        tensors, payload = formats.load_safetensors(path, ARTIFACT_TYPE, _SHAPES, _PAYLOAD, "gated steering")
        try:
            knobs = payload["knobs"]
            return cls(
                tensors["direction"],
                tensors["gate"],
                knobs["bias"],
                knobs["layer"],
                knobs["scale"],
                knobs["positions"],
                payload["provenance"],
            )
        except (WorkbenchError, TypeError, KeyError) as e:
            raise ArtifactError(f"{path} holds an inconsistent gated intervention ({e})") from None


@dataclass
class _Slot:
    """One gate per row (rows without one are inactive) at one layer, placed per dtype and device."""

    u: Tensor  # [rows, d]
    w: Tensor  # [rows, d]
    b: Tensor  # [rows]
    scale: Tensor  # [rows]
    active: Tensor  # [rows] bool
    positions: list[str]
    placed: dict[tuple[torch.dtype, torch.device], tuple[Tensor, ...]] = field(default_factory=dict)

    def on(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, ...]:
        """``u, w, b, scale, active`` and each rule's rows (``[rows, 1]``), on ``device`` in ``dtype``."""
        placed = self.placed.get((dtype, device))
        if placed is None:
            rules = sorted(set(self.positions) - {"all"})
            rows = [torch.tensor([p == rule for p in self.positions])[:, None] for rule in rules]
            tensors = (self.u, self.w, self.b[:, None], self.scale[:, None], self.active[:, None])
            placed = self.placed[(dtype, device)] = (
                *(t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in tensors),
                *(r.to(device) for r in rows),
            )
        return placed

    def apply(
        self, x: Float[Tensor, "batch seq d"], tracker: PositionTracker, side: Tensor | None
    ) -> Float[Tensor, "batch seq d"]:
        """``x`` with each row's gate added; ``side`` maps a dynamic side forward's rows to batch rows."""
        u, w, b, scale, active, *masks = self.on(x.dtype, x.device)
        if side is not None and u.shape[0] > 1:
            index = side.to(x.device)
            u, w, b, scale, active, *masks = (t[index] for t in (u, w, b, scale, active, *masks))
        if u.shape[0] not in (1, x.shape[0]):
            raise ShapeMismatchError(
                f"per-row gated interventions were given for {u.shape[0]} rows but the batch has {x.shape[0]}"
            )
        rules = sorted(set(self.positions) - {"all"})
        weight = tracker.weight(list(zip(rules, masks, strict=True)), active, x.shape[1], x.device)
        alpha = torch.relu(torch.einsum("bsd,bd->bs", x, w.expand(x.shape[0], -1)) + b) * scale
        return x + (alpha * weight.to(x.dtype))[..., None] * u[:, None, :]


class GateSlots:
    """The gated interventions of a batch: per layer, slot ``k`` holds each row's ``k``-th gate at that
    layer (one row broadcasts to any batch size)."""

    def __init__(self, rows: Sequence[Sequence[GatedIntervention]]) -> None:
        per_layer: dict[int, list[list[GatedIntervention | None]]] = {}
        for r, row in enumerate(rows):
            counts: dict[int, int] = {}
            for iv in row:
                slots = per_layer.setdefault(iv.layer, [])
                k = counts[iv.layer] = counts.get(iv.layer, -1) + 1
                if k == len(slots):
                    slots.append([None] * len(rows))
                slots[k][r] = iv
        self.layers: dict[int, list[_Slot]] = {}
        for layer, slots in per_layer.items():
            self.layers[layer] = []
            for slot in slots:
                zero = torch.zeros(next(iv for iv in slot if iv is not None).d_model)
                self.layers[layer].append(
                    _Slot(
                        u=torch.stack([iv.direction if iv else zero for iv in slot]),
                        w=torch.stack([iv.gate if iv else zero for iv in slot]),
                        b=torch.tensor([iv.bias if iv else 0.0 for iv in slot]),
                        scale=torch.tensor([iv.scale if iv else 0.0 for iv in slot]),
                        active=torch.tensor([iv is not None for iv in slot]),
                        positions=[iv.positions if iv else "all" for iv in slot],
                    )
                )

    def hooks(
        self, tracker: PositionTracker, side_rows: Callable[[], Tensor | None]
    ) -> list[tuple[str, Callable[..., Tensor]]]:
        """``(hook name, function)`` pairs for ``model.bridge.hooks``; ``side_rows()`` gives, during a
        dynamic-strength side forward, the batch row each of its rows stands for (else None)."""
        return [
            (HOOK.format(layer=layer), self._hook(slots, tracker, side_rows))
            for layer, slots in self.layers.items()
        ]

    @staticmethod
    def _hook(
        slots: list[_Slot], tracker: PositionTracker, side_rows: Callable[[], Tensor | None]
    ) -> Callable[..., Tensor]:
        def hook(x: Float[Tensor, "batch seq d"], hook: Any) -> Tensor:
            side = side_rows()
            for slot in slots:
                x = slot.apply(x, tracker, side)
            return x

        return hook
