"""What a steering setting is: one :class:`Intervention` (one layer's residual-stream edit), its units, and the
one function that resolves a ``coef`` in a ``unit`` into residual units (:func:`resolve_amount`).

``Intervention(vector, layer, mode, coef, positions, unit)`` edits ``blocks.{layer}.hook_resid_post``:

- ``add``: ``x + c·u`` (``c`` defaults to the raw mean-difference norm at that layer);
- ``set_projection``: ``x + (z − x·u)·u`` (``z`` defaults to the positive set's mean projection);
- ``ablate``: ``x − (x·u)·u``.

:mod:`workbench.steering` applies them (and the head-level pushes of :mod:`workbench.head_steering` and the
per-token gates of :mod:`workbench.gated_steering`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from jaxtyping import Float
from torch import Tensor

from workbench.errors import InvalidArgumentError, ShapeMismatchError
from workbench.gated_steering import GatedIntervention
from workbench.head_steering import HeadIntervention
from workbench.methods import LayerStats
from workbench.models import Model
from workbench.positions import check_positions
from workbench.schedules import DynamicStrength
from workbench.vectors import SteeringVector

__all__ = ["MODES", "UNITS", "AnyIntervention", "Intervention", "check_intervention", "resolve_amount"]

MODES = ("add", "set_projection", "ablate")
#: What ``coef`` is measured in (:func:`resolve_amount`); ``diff_norm`` is every API's and command's default.
UNITS = ("diff_norm", "residual_norm", "absolute")


def resolve_amount(stats: LayerStats, mode: str, coef: float | None, unit: str, layer: int) -> float:
    """The one resolution of a steering amount into residual units, for ``stats`` of one layer.

    ``add`` adds ``coef`` units (None: the raw mean difference, one diff-norm). ``set_projection`` sets the
    projection to ``coef`` in ``absolute`` units, else to the negative set's mean projection plus ``coef``
    times the unit, where a ``diff_norm`` is the gap between the two sets' mean projections (for a
    diff-in-means vector, its norm), so ``coef=1`` (or None) sets the positive set's mean projection.
    ``ablate`` sets it to 0. Units: ``diff_norm``, ``residual_norm`` (the layer's mean residual norm) or
    ``absolute`` (residual units).
    """
    if mode == "ablate":
        return 0.0
    if mode == "add":
        if coef is None:
            return float(stats.diff_norm)
        return float(coef) * _unit_size(stats, unit, layer)
    if unit == "absolute" and coef is not None:
        return float(coef)
    if coef is None and stats.pos_mean_proj is not None:
        return float(stats.pos_mean_proj)
    if stats.pos_mean_proj is None or stats.neg_mean_proj is None:
        raise InvalidArgumentError(
            f"set_projection needs the sets' mean projections at layer {layer} (the vector was not extracted "
            "from activations): pass coef=z with unit='absolute'"
        )
    gap = stats.pos_mean_proj - stats.neg_mean_proj
    size = gap if unit == "diff_norm" else _unit_size(stats, unit, layer)
    return float(stats.neg_mean_proj) + (1.0 if coef is None else float(coef)) * float(size)


def _unit_size(stats: LayerStats, unit: str, layer: int) -> float:
    size = {"absolute": 1.0, "diff_norm": stats.diff_norm, "residual_norm": stats.resid_norm}[unit]
    if size is None:
        raise InvalidArgumentError(
            f"unit {unit!r} needs the layer's residual norm, which this vector does not record at layer "
            f"{layer}: build it with from_activations, or use unit='diff_norm' or 'absolute'"
        )
    return float(size)


@dataclass(frozen=True)
class Intervention:
    """One edit of the residual stream after block ``layer``; its amount is :func:`resolve_amount`'s.

    ``coef`` is measured in ``unit`` (:data:`UNITS`, default ``diff_norm``: multiples of the layer's raw
    mean-difference norm, so one knob means the same at every layer). ``decay_tokens`` > 0 fades an ``add``
    linearly to zero over that many generated tokens. ``norm_preserving`` rescales each steered residual
    back to its original norm. ``schedule`` (``"dynamic"`` or a :class:`DynamicStrength`) multiplies an
    ``add`` by a per-token ``α_t`` from the KL divergence of steered and unsteered runs (generation only).
    """

    vector: SteeringVector
    layer: int
    mode: str = "add"
    coef: float | None = None
    positions: str = "all"
    unit: str = "diff_norm"
    decay_tokens: int = 0
    norm_preserving: bool = False
    schedule: DynamicStrength | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidArgumentError(f"unknown mode {self.mode!r}: use one of {', '.join(MODES)}")
        check_positions(self.positions)
        if self.unit not in UNITS:
            raise InvalidArgumentError(f"unknown unit {self.unit!r}: use one of {', '.join(UNITS)}")
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
        self._check_schedule()

    def _check_schedule(self) -> None:
        if self.schedule == "dynamic":
            object.__setattr__(self, "schedule", DynamicStrength())
        if self.schedule is None:
            return
        if not isinstance(self.schedule, DynamicStrength):
            raise InvalidArgumentError(
                f"schedule must be None, 'dynamic' or a DynamicStrength, got {self.schedule!r}"
            )
        if self.mode != "add" or self.decay_tokens:
            raise InvalidArgumentError(
                "a dynamic schedule scales an 'add' with no decay_tokens (it is its own schedule)"
            )

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_post"

    @property
    def label(self) -> str:
        """Short name for tables and notes: ``add@10x2``, ``set_projection@12``, ``add@10x2+dyn2``."""
        label = f"{self.mode}@{self.layer}" + ("" if self.coef is None else f"x{self.coef:g}")
        return label if self.schedule is None else f"{label}+{self.schedule.label}"

    def direction(self) -> Float[Tensor, " d_model"]:
        return self.vector.direction(self.layer)

    def amount(self) -> float:
        """The resolved ``c`` (add) or ``z`` (set_projection, ablate), in residual units."""
        return resolve_amount(self.vector.stats[self.layer], self.mode, self.coef, self.unit, self.layer)

    def describe(self, model: Model | None = None) -> dict[str, Any]:
        """Flat columns for a results table, with transfer provenance when ``model`` is given."""
        row: dict[str, Any] = {
            "layer": self.layer,
            "mode": self.mode,
            "coef": self.coef,
            "positions": self.positions,
            "unit": self.unit,
            "decay_tokens": self.decay_tokens,
            "norm_preserving": self.norm_preserving,
            "vector_method": self.vector.provenance.get("method"),
            "vector_dataset": self.vector.provenance.get("dataset"),
            "vector_model": self.vector.provenance.get("model_name"),
        }
        if self.schedule is not None:
            row["schedule"] = self.schedule.label
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


#: What steering accepts: residual-stream interventions, head-level pushes (:mod:`workbench.head_steering`)
#: and per-token gates (:mod:`workbench.gated_steering`).
AnyIntervention = Intervention | HeadIntervention | GatedIntervention


def check_intervention(iv: object) -> AnyIntervention:
    """``iv`` if it is an :data:`AnyIntervention`, else a one-line error."""
    if not isinstance(iv, AnyIntervention):
        raise InvalidArgumentError(
            "interventions must be Intervention, GatedIntervention or HeadIntervention objects, "
            f"got {type(iv).__name__}"
        )
    return iv
