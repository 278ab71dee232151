"""Head-level, step-specific steering: one vector per attention head and generation step.

A :class:`HeadIntervention` adds ``α_i · Δ_i`` to the output of every attention head of its layers (the input
of the attention's output projection, TransformerLens ``blocks.{l}.attn.hook_z``, ``[batch, seq, head,
d_head]``), where ``i`` is the *push step*: 0 at the last prompt token (position ``P − 1``, which predicts
the first generated token), ``i`` at position ``P − 1 + i``. Earlier prompt positions are never touched.
``Δ_i`` is the vector recorded at step ``i`` (beyond the last recorded step, the last one);
``α_i = α · max(0, 1 − i / fade)`` fades linearly to 0 over ``fade`` steps (``fade=0``: constant ``α``).
This is the edit of Scalena, Fersini and Nissim (2024), built by :func:`workbench.methods.gentle_push`.

``hook_z`` is the input hook of the bridge's output-projection component, so the fast path
(:mod:`workbench.fastpath`) fires it from a torch pre-hook on ``o_proj`` and the bridge from its own
modules, with the same result (GPT-2's fused attention has no such component: it runs through the
bridge, with the fast path's warning). :class:`HeadSlots` applies the edits of a batch, one list per row,
inside :func:`workbench.steering.steer_rows`, next to the residual-stream interventions.
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
from jaxtyping import Float, Int
from torch import Tensor

from workbench import formats
from workbench.errors import ArtifactError, InvalidArgumentError, ShapeMismatchError, WorkbenchError
from workbench.models import Model
from workbench.positions import PositionTracker

__all__ = ["HOOK", "HeadIntervention", "HeadSlots"]

#: The hook point a head intervention edits, per layer.
HOOK = "blocks.{layer}.attn.hook_z"
ARTIFACT_TYPE = "head_step_vectors"
_SHAPES = {"deltas": "[layer, step, head, d_head]"}
_PAYLOAD = ("layers", "knobs", "provenance")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, eq=False)
class HeadIntervention:
    """Per-step head-output vectors ``deltas[layer, step, head, d_head]`` at ``layers``, added with
    strength ``alpha`` fading linearly to 0 over ``fade`` steps (0: constant), to ``heads`` only (None:
    all), from the last prompt token on. ``provenance`` says how the vectors were made."""

    deltas: Float[Tensor, "layer step head d_head"]
    layers: tuple[int, ...]
    alpha: float = 1.5
    fade: int = 0
    heads: tuple[int, ...] | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)

    #: Never a dynamic strength (the protocol :func:`workbench.generation.generate` reads).
    schedule: ClassVar[None] = None
    #: The positions it acts on, in :mod:`workbench.positions` terms.
    positions: ClassVar[str] = "response"

    def __post_init__(self) -> None:
        deltas = self.deltas
        if not isinstance(deltas, Tensor) or deltas.ndim != 4 or 0 in deltas.shape:
            shape = tuple(deltas.shape) if isinstance(deltas, Tensor) else type(deltas).__name__
            raise ShapeMismatchError(
                f"deltas must be a non-empty [layer, step, head, d_head] tensor, got {shape}"
            )
        if not deltas.is_floating_point() or not bool(torch.isfinite(deltas).all()):
            raise InvalidArgumentError("deltas must be finite floating-point numbers")
        object.__setattr__(self, "deltas", deltas.detach().to("cpu", torch.float32).contiguous())
        layers = tuple(self.layers) if isinstance(self.layers, Sequence) else (self.layers,)
        if not all(_is_int(x) and x >= 0 for x in layers) or len(set(layers)) != len(layers):
            raise InvalidArgumentError(f"layers must be distinct block indices >= 0, got {self.layers!r}")
        if len(layers) != deltas.shape[0]:
            raise ShapeMismatchError(f"{len(layers)} layers for {deltas.shape[0]} rows of deltas")
        object.__setattr__(self, "layers", layers)
        if (
            not isinstance(self.alpha, numbers.Real)
            or isinstance(self.alpha, bool)
            or not math.isfinite(self.alpha)
        ):
            raise InvalidArgumentError(f"alpha must be a finite number, got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        if not _is_int(self.fade) or self.fade < 0:
            raise InvalidArgumentError(f"fade must be an integer >= 0 (0: no fade), got {self.fade!r}")
        if self.heads is not None:
            heads = tuple(self.heads) if isinstance(self.heads, Sequence) else (self.heads,)
            if not heads or not all(_is_int(h) and 0 <= h < self.n_heads for h in heads):
                raise InvalidArgumentError(f"heads must be indices 0..{self.n_heads - 1}, got {self.heads!r}")
            object.__setattr__(self, "heads", tuple(sorted(set(heads))))
        object.__setattr__(self, "provenance", dict(self.provenance))

    @property
    def n_steps(self) -> int:
        return int(self.deltas.shape[1])

    @property
    def n_heads(self) -> int:
        return int(self.deltas.shape[2])

    @property
    def d_head(self) -> int:
        return int(self.deltas.shape[3])

    @property
    def label(self) -> str:
        """Short name for tables: ``push@L0-29x1.5/fade30``, ``push@L3,7x2[h0,4]``."""
        layers = self.layers
        contiguous = len(layers) > 2 and list(layers) == list(range(layers[0], layers[0] + len(layers)))
        where = f"L{layers[0]}-{layers[-1]}" if contiguous else "L" + ",".join(map(str, layers))
        heads = "" if self.heads is None else "[h" + ",".join(map(str, self.heads)) + "]"
        return f"push@{where}x{self.alpha:g}" + (f"/fade{self.fade}" if self.fade else "") + heads

    def describe(self, model: Model | None = None) -> dict[str, Any]:
        """Flat columns for a results table (as :meth:`workbench.steering.Intervention.describe`)."""
        row: dict[str, Any] = {
            "layer": ",".join(map(str, self.layers)),
            "mode": "head_push",
            "coef": self.alpha,
            "positions": self.positions,
            "unit": "absolute",
            "decay_tokens": self.fade,
            "heads": None if self.heads is None else ",".join(map(str, self.heads)),
            "steps": self.n_steps,
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
        """Refuse vectors that do not fit ``model``: a layer it lacks, or another head count or size."""
        for layer in self.layers:
            model.layer_check(layer)
        n_heads, d_head = int(model.bridge.cfg.n_heads), int(model.bridge.cfg.d_head)
        if (self.n_heads, self.d_head) != (n_heads, d_head):
            raise ShapeMismatchError(
                f"the vectors have {self.n_heads} heads of {self.d_head} but {model.name}'s attention has "
                f"{n_heads} heads of {d_head}"
            )

    def alphas(self, n: int) -> Float[Tensor, " n"]:
        """``α_i`` for push steps ``0..n-1``."""
        step = torch.arange(n, dtype=torch.float64)
        fade = (1 - step / self.fade).clamp_min(0) if self.fade else torch.ones(n, dtype=torch.float64)
        return (self.alpha * fade).float()

    def table(self) -> Float[Tensor, "layer step head d_head"]:
        """The added vector ``α_i · Δ_i`` per layer and push step; the last row holds every later step."""
        length = max(self.n_steps, self.fade) + 1
        index = torch.arange(length).clamp_max(self.n_steps - 1)
        table = self.deltas[:, index] * self.alphas(length)[None, :, None, None]
        if self.heads is not None:
            keep = torch.zeros(self.n_heads, dtype=torch.bool)
            keep[list(self.heads)] = True
            table = table * keep[None, None, :, None]
        return table

    @cached_property
    def digest(self) -> str:
        """SHA-256 of the vectors and every knob: equal digests, equal edits (cache keys)."""
        data = hashlib.sha256(self.deltas.numpy().astype("<f4", copy=False).tobytes())
        knobs = {"layers": list(self.layers), "alpha": self.alpha, "fade": self.fade, "heads": self.heads}
        data.update(formats.canonical_json({"shape": list(self.deltas.shape), **knobs}).encode())
        return data.hexdigest()

    def key(self) -> list[object]:
        """What a grid row's cache key records of this intervention (:mod:`workbench.runner`)."""
        return ["head_push", self.label, self.digest]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``deltas`` and JSON ``layers``, ``knobs`` (alpha, fade, heads), ``provenance`` to one
        checksummed ``.safetensors`` file, atomically; returns the path."""
        knobs = {
            "alpha": self.alpha,
            "fade": self.fade,
            "heads": None if self.heads is None else list(self.heads),
        }
        payload = {"layers": list(self.layers), "knobs": knobs, "provenance": self.provenance}
        return formats.save_safetensors(path, ARTIFACT_TYPE, {"deltas": self.deltas}, payload, "head vectors")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> HeadIntervention:
        """Read a file written by :meth:`save`; verifies type, checksum and shapes (else ArtifactError)."""
        tensors, payload = formats.load_safetensors(path, ARTIFACT_TYPE, _SHAPES, _PAYLOAD, "head vectors")
        try:
            knobs = payload["knobs"]
            heads = knobs["heads"]
            return cls(
                tensors["deltas"],
                tuple(payload["layers"]),
                knobs["alpha"],
                knobs["fade"],
                None if heads is None else tuple(heads),
                payload["provenance"],
            )
        except (WorkbenchError, TypeError, KeyError) as e:
            raise ArtifactError(f"{path} holds inconsistent head vectors ({e})") from None


@dataclass
class _Layer:
    """One layer's distinct tables ``[config, step, head, d_head]`` (placed per dtype and device)."""

    table: Tensor
    placed: dict[tuple[torch.dtype, torch.device], Tensor] = field(default_factory=dict)

    def on(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        placed = self.placed.get((dtype, device))
        if placed is None:
            placed = self.placed[(dtype, device)] = self.table.to(device, dtype)
        return placed


class HeadSlots:
    """The head interventions of a batch: per layer the tables of the distinct row configurations, and
    each row's configuration (-1: none). One row broadcasts to any batch size."""

    def __init__(self, rows: Sequence[Sequence[HeadIntervention]]) -> None:
        configs: dict[tuple[int, ...], int] = {}
        distinct: list[Sequence[HeadIntervention]] = []
        owner = []
        for row in rows:
            ids = tuple(id(iv) for iv in row)
            if ids and ids not in configs:
                configs[ids] = len(distinct)
                distinct.append(row)
            owner.append(configs[ids] if ids else -1)
        self.config: Int[Tensor, " rows"] = torch.tensor(owner, dtype=torch.long)
        self.layers: dict[int, _Layer] = {}
        tables = [[(iv, iv.table()) for iv in row] for row in distinct]
        for layer in sorted({layer for row in distinct for iv in row for layer in iv.layers}):
            parts = [[t[iv.layers.index(layer)] for iv, t in row if layer in iv.layers] for row in tables]
            length = max(len(p) for row in parts for p in row)
            shape = next(p for row in parts for p in row).shape[1:]
            stacked = torch.zeros(len(distinct), length, *shape)
            for c, row in enumerate(parts):
                for part in row:  # a shorter table's last row holds every later step
                    stacked[c] += part[torch.arange(length).clamp_max(len(part) - 1)]
            self.layers[layer] = _Layer(stacked)

    def hooks(
        self, tracker: PositionTracker, side_rows: Callable[[], Tensor | None]
    ) -> list[tuple[str, Callable[..., Tensor]]]:
        """``(hook name, function)`` pairs for ``model.bridge.hooks``; ``side_rows()`` gives, during a
        dynamic-strength side forward, the batch row each of its rows stands for (else None)."""
        return [
            (HOOK.format(layer=layer), self._hook(slot, tracker, side_rows))
            for layer, slot in self.layers.items()
        ]

    def _hook(
        self, slot: _Layer, tracker: PositionTracker, side_rows: Callable[[], Tensor | None]
    ) -> Callable[..., Tensor]:
        def hook(z: Float[Tensor, "batch seq head d_head"], hook: Any) -> Tensor:
            table = slot.on(z.dtype, z.device)
            config = self.config.to(z.device)
            side = side_rows()
            if side is not None and config.shape[0] > 1:
                config = config[side.to(z.device)]
            if config.shape[0] not in (1, z.shape[0]):
                raise ShapeMismatchError(
                    f"per-row head interventions were given for {config.shape[0]} rows but the batch has "
                    f"{z.shape[0]}"
                )
            step = tracker.steps(z.shape[1], z.device) + 1  # push step: 0 at the last prompt token
            n = max(config.shape[0], step.shape[0])
            config, step = config.expand(n), step.expand(n, -1)
            edit = table[config.clamp_min(0)[:, None], step.clamp(0, table.shape[1] - 1)]
            touched = (step >= 0) & (config >= 0)[:, None]
            return z + edit * touched[..., None, None].to(z.dtype)

        return hook
