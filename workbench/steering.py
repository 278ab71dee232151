"""The steering engine: interventions on one layer's residual stream, applied through TransformerLens hooks.

``Intervention(vector, layer, mode, coef, positions)`` edits ``blocks.{layer}.hook_resid_post``:

- ``add``: ``x + c·u`` (``c`` defaults to the raw mean-difference norm at that layer);
- ``set_projection``: ``x + (z − x·u)·u`` (``z`` defaults to the positive set's mean projection);
- ``ablate``: ``x − (x·u)·u``.

``steer(model, *interventions)`` applies any number of them to every row; :func:`steer_rows` gives each
row of a batch its own list, so a grid of configurations runs as one batched pass. Both always remove
their hooks, on exit and on exception.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from workbench.errors import InvalidArgumentError, ShapeMismatchError
from workbench.models import Model
from workbench.positions import PositionTracker, check_positions
from workbench.vectors import SteeringVector

MODES = ("add", "set_projection", "ablate")
SCALES = ("absolute", "diff_norm", "residual_norm")


@dataclass(frozen=True)
class Intervention:
    """One edit of the residual stream after block ``layer``.

    ``coef`` is the added amount for ``add`` and the target projection ``z`` for ``set_projection``.
    ``scale`` says what ``coef`` of ``add`` is measured in: residual units (``absolute``), multiples of the
    layer's raw mean-difference norm (``diff_norm``), or of the layer's mean residual norm
    (``residual_norm``), so one knob means the same at every layer. ``decay_tokens`` > 0 fades an ``add``
    linearly to zero over that many generated tokens. ``norm_preserving`` rescales each steered residual
    back to its original norm.
    """

    vector: SteeringVector
    layer: int
    mode: str = "add"
    coef: float | None = None
    positions: str = "all"
    scale: str = "absolute"
    decay_tokens: int = 0
    norm_preserving: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidArgumentError(f"unknown mode {self.mode!r}: use one of {', '.join(MODES)}")
        check_positions(self.positions)
        if self.scale not in SCALES:
            raise InvalidArgumentError(f"unknown scale {self.scale!r}: use one of {', '.join(SCALES)}")
        if not isinstance(self.vector, SteeringVector):
            raise InvalidArgumentError(
                f"an Intervention needs a SteeringVector, got {type(self.vector).__name__}: "
                "wrap a raw direction with SteeringVector.from_directions"
            )
        if self.layer not in self.vector.layers:
            raise InvalidArgumentError(
                f"the vector has no direction for layer {self.layer}; it covers layers {list(self.vector.layers)}"
            )
        if self.coef is not None and not (isinstance(self.coef, numbers.Real) and math.isfinite(self.coef)):
            raise InvalidArgumentError(f"coef must be a finite number, got {self.coef!r}")
        if self.mode == "ablate" and self.coef not in (None, 0, 0.0):
            raise InvalidArgumentError("mode 'ablate' takes no coef: it always sets the projection to 0")
        if self.decay_tokens < 0:
            raise InvalidArgumentError(f"decay_tokens must be >= 0, got {self.decay_tokens}")

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_post"

    @property
    def label(self) -> str:
        """Short name for tables and notes: ``add@10x2``, ``set_projection@12``."""
        return f"{self.mode}@{self.layer}" + ("" if self.coef is None else f"x{self.coef:g}")

    def direction(self) -> Float[Tensor, " d_model"]:
        return self.vector.direction(self.layer)

    def amount(self) -> float:
        """The resolved ``c`` (add) or ``z`` (set_projection/ablate), in residual units."""
        stats = self.vector.stats[self.layer]
        if self.mode == "ablate":
            return 0.0
        if self.mode == "set_projection":
            if self.coef is None and stats.pos_mean_proj is None:
                raise InvalidArgumentError(
                    f"set_projection needs a target: the vector has no positive-set projection at layer "
                    f"{self.layer} (it was not extracted from activations); pass coef=z"
                )
            return float(stats.pos_mean_proj if self.coef is None else self.coef)
        if self.coef is None:
            return float(stats.diff_norm)
        unit = {"absolute": 1.0, "diff_norm": stats.diff_norm, "residual_norm": stats.resid_norm}[self.scale]
        if unit is None:
            raise InvalidArgumentError(
                f"scale {self.scale!r} needs the layer's residual norm, which this vector does not record "
                f"at layer {self.layer}: build it with from_activations or use scale='absolute'"
            )
        return float(self.coef) * float(unit)

    def describe(self, model: Model | None = None) -> dict[str, Any]:
        """Flat columns for a results table, with transfer provenance when ``model`` is given."""
        row: dict[str, Any] = {
            "layer": self.layer,
            "mode": self.mode,
            "coef": self.coef,
            "positions": self.positions,
            "scale": self.scale,
            "decay_tokens": self.decay_tokens,
            "norm_preserving": self.norm_preserving,
            "vector_method": self.vector.provenance.get("method"),
            "vector_dataset": self.vector.provenance.get("dataset"),
            "vector_model": self.vector.provenance.get("model_name"),
        }
        if model is not None:
            source = self.vector.provenance.get("weights_hash")
            row["target_model"] = model.name
            row["transfer"] = source is not None and source != model.weights_hash
        return row

    def check_fits(self, model: Model) -> None:
        """Refuse a vector that does not fit ``model`` (d_model, layer count, layer range)."""
        model.layer_check(self.layer)
        if self.vector.d_model != model.d_model:
            raise ShapeMismatchError(
                f"the vector has d_model {self.vector.d_model} but {model.name} has d_model {model.d_model}"
            )
        n_layers = self.vector.provenance.get("n_layers")
        if n_layers is not None and int(n_layers) != model.n_layers:
            raise ShapeMismatchError(
                f"the vector was built on a model with {n_layers} layers but {model.name} has {model.n_layers}"
            )


@dataclass
class _Slot:
    """One intervention per row (rows without one are inactive), at one layer."""

    u: Tensor  # [rows, d]
    amount: Tensor  # [rows]
    is_projection: Tensor  # [rows] bool: set_projection or ablate
    active: Tensor  # [rows] bool
    positions: list[str]
    decay: Tensor  # [rows] float, 0 for constant
    norm_preserving: Tensor  # [rows] bool

    def __post_init__(self) -> None:
        # Per-step work is only tensor arithmetic: which branches apply is decided once, here, and the
        # per-rule row masks and dtype casts are cached (no host-device syncs while decoding).
        self.any_projection = bool(self.is_projection.any())
        self.any_norm = bool(self.norm_preserving.any())
        self.any_decay = bool((self.decay > 0).any())
        self.everywhere = bool(self.active.all()) and all(p == "all" for p in self.positions)
        self.rules = [
            (rule, torch.tensor([p == rule for p in self.positions], device=self.u.device)[:, None])
            for rule in sorted(set(self.positions) - {"all"})
        ]
        self._cast: dict[torch.dtype, tuple[Tensor, Tensor]] = {}

    def _in(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        cast = self._cast.get(dtype)
        if cast is None:
            cast = self._cast[dtype] = (self.u.to(dtype), self.amount.to(dtype)[:, None])
        return cast

    def apply(
        self, x: Float[Tensor, "batch seq d"], tracker: PositionTracker
    ) -> Float[Tensor, "batch seq d"]:
        u, amount = self._in(x.dtype)
        seq = x.shape[1]
        weight = None if self.everywhere else self._weight(seq, tracker, x.device).to(x.dtype)
        if self.any_decay:
            amount = amount * self._schedule(seq, tracker, x.device)
        if self.any_projection:
            projection = torch.einsum("bsd,bd->bs", x, u.expand(x.shape[0], -1))
            amount = torch.where(self.is_projection[:, None], amount - projection, amount)
        scaled = amount if weight is None else amount * weight
        steered = x + scaled[..., None] * u[:, None, :]
        if self.any_norm:
            rescale = x.norm(dim=-1, keepdim=True) / steered.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            keep = (
                self.norm_preserving[:, None]
                if weight is None
                else self.norm_preserving[:, None] & (weight > 0)
            )
            steered = torch.where(keep[..., None], steered * rescale, steered)
        return steered

    def _weight(self, seq: int, tracker: PositionTracker, device: torch.device) -> Tensor:
        weight = self.active[:, None].float().expand(-1, seq)
        for rule, rows in self.rules:
            mask = tracker.mask(rule, seq, device)
            if mask is None:
                continue
            weight = torch.where(rows, weight * mask.float(), weight)
        return weight

    def _schedule(self, seq: int, tracker: PositionTracker, device: torch.device) -> Tensor:
        step = tracker.steps(seq, device).float().clamp_min(0)
        decay = self.decay[:, None]
        fade = (1 - step / decay.clamp_min(1)).clamp_min(0)
        return torch.where(decay > 0, fade, torch.ones_like(fade))


def _build_slots(rows: Sequence[Sequence[Intervention]], device: torch.device) -> dict[int, list[_Slot]]:
    """Group each row's interventions by layer into slots of per-row tensors."""
    per_layer: dict[int, list[list[Intervention | None]]] = {}
    for r, row in enumerate(rows):
        counts: dict[int, int] = {}
        for iv in row:
            slots = per_layer.setdefault(iv.layer, [])
            k = counts.get(iv.layer, 0)
            counts[iv.layer] = k + 1
            if k == len(slots):
                slots.append([None] * len(rows))
            slots[k][r] = iv
    built: dict[int, list[_Slot]] = {}
    for layer, slots in per_layer.items():
        built[layer] = []
        for slot in slots:
            d = next(iv for iv in slot if iv is not None).vector.d_model
            zero = torch.zeros(d)
            built[layer].append(
                _Slot(
                    u=torch.stack([iv.direction() if iv else zero for iv in slot]).to(device),
                    amount=torch.tensor([iv.amount() if iv else 0.0 for iv in slot], device=device),
                    is_projection=torch.tensor([bool(iv and iv.mode != "add") for iv in slot], device=device),
                    active=torch.tensor([iv is not None for iv in slot], device=device),
                    positions=[iv.positions if iv else "all" for iv in slot],
                    decay=torch.tensor([float(iv.decay_tokens if iv else 0) for iv in slot], device=device),
                    norm_preserving=torch.tensor(
                        [bool(iv and iv.norm_preserving) for iv in slot], device=device
                    ),
                )
            )
    return built


def tracker_for(model: Model) -> PositionTracker:
    """The model's position tracker (one per model, shared by nested steering contexts)."""
    tracker = getattr(model, "_position_tracker", None)
    if tracker is None:
        tracker = PositionTracker()
        model._position_tracker = tracker  # type: ignore[attr-defined]
    return tracker


@contextmanager
def tracking(model: Model) -> Iterator[PositionTracker]:
    """Keep the tracker informed of each forward's KV-cache offset while the block runs."""
    tracker = tracker_for(model)
    handle = model.hf_model.register_forward_pre_hook(tracker.pre_forward, with_kwargs=True)
    try:
        yield tracker
    finally:
        handle.remove()


@contextmanager
def steer_rows(model: Model, rows: Sequence[Sequence[Intervention]]) -> Iterator[Model]:
    """Give row ``i`` of every batch run in this block the interventions ``rows[i]``.

    A single row broadcasts to any batch size (that is :func:`steer`).
    """
    for row in rows:
        for iv in row:
            iv.check_fits(model)
    slots = _build_slots(rows, model.device)
    if not slots:
        yield model
        return
    with ExitStack() as stack:
        tracker = stack.enter_context(tracking(model))
        hooks = [
            (f"blocks.{layer}.hook_resid_post", _hook(layer_slots, tracker))
            for layer, layer_slots in slots.items()
        ]
        stack.enter_context(model.bridge.hooks(fwd_hooks=hooks))
        yield model


def _hook(slots: list[_Slot], tracker: PositionTracker) -> Any:
    def hook(x: Tensor, hook: Any) -> Tensor:
        if slots[0].u.shape[0] not in (1, x.shape[0]):
            raise ShapeMismatchError(
                f"per-row interventions were given for {slots[0].u.shape[0]} rows but the batch has {x.shape[0]}"
            )
        for slot in slots:
            x = slot.apply(x, tracker)
        return x

    return hook


@contextmanager
def steer(model: Model, *interventions: Intervention) -> Iterator[Model]:
    """Apply ``interventions`` (at the same or different layers, in order) to every forward in the block."""
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise InvalidArgumentError(f"steer() takes Intervention objects, got {type(iv).__name__}")
    with steer_rows(model, [list(interventions)]):
        yield model
