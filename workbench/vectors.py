"""Steering vectors: per-layer unit directions, the statistics that made them, and where they came from.

A :class:`SteeringVector` is a value, as in repeng: ``v + w``, ``-v``, ``0.5 * v`` give new vectors. Per layer
(a 0-based block index, TransformerLens ``blocks.{b}.hook_resid_post``) it holds a unit *direction* and
:class:`LayerStats`, whose ``diff_norm`` puts ``raw(layer) = direction × diff_norm`` on the scale of that
layer's residual stream; ``provenance`` says where it came from. :meth:`SteeringVector.from_dataset` is the
one call from data to vector; extraction methods live in :mod:`workbench.methods`, file formats (safetensors,
GGUF control vectors for llama.cpp and repeng) in :mod:`workbench.formats`.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from workbench import formats
from workbench.activations import Activations
from workbench.errors import ArtifactError, InvalidArgumentError, ShapeMismatchError, WorkbenchError
from workbench.files import utc_now
from workbench.methods import ZERO_RTOL, LayerStats, Method, extract

if TYPE_CHECKING:
    from workbench.datasets import ContrastiveSet
    from workbench.interventions import Intervention
    from workbench.models import Model

__all__ = ["SteeringVector", "cosine", "workbench_version"]

ARTIFACT_TYPE = "steering_vector"

#: Settings that say what a vector's numbers mean; kept by ``v + w`` when both operands agree on them.
CONTEXT_KEYS = ("model_name", "weights_hash", "n_layers", "d_model", "hook", "position", "chat")
#: A direction whose norm is within this of 1 counts as unit norm.
_UNIT_ATOL = 1e-4
#: The JSON entries of a saved vector (GGUF adds "export": its coef and magnitude).
_PAYLOAD = ("layers", "stats", "provenance")


def workbench_version() -> str:
    """The running workbench's version, for provenance."""
    import workbench

    return workbench.__version__


def _finite_nonzero(c: object) -> bool:
    return isinstance(c, numbers.Real) and not isinstance(c, bool) and math.isfinite(c) and c != 0


def _layers_text(layers: Iterable[int]) -> str:
    return "(" + ", ".join(str(layer) for layer in layers) + ")"


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """Unit *directions* at one or more layers, with per-layer stats and provenance; immutable.

    Build one with :meth:`from_dataset`, :meth:`from_activations`, :meth:`from_directions`, :meth:`load` or
    :meth:`from_gguf`; :meth:`raw` gives the *vector* ``direction × diff_norm``.
    """

    directions: Float[Tensor, "layer d_model"]
    layers: tuple[int, ...]
    stats: dict[int, LayerStats]
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        directions = self.directions
        if not isinstance(directions, Tensor):
            raise InvalidArgumentError(f"directions must be a tensor, got {type(directions).__name__}")
        if directions.ndim != 2 or directions.shape[0] == 0 or directions.shape[1] == 0:
            raise InvalidArgumentError(
                f"directions must have shape [layer, d_model] with both > 0, got {tuple(directions.shape)}"
            )
        layers = tuple(self.layers)
        if any(not isinstance(b, numbers.Integral) or isinstance(b, bool) or b < 0 for b in layers):
            raise InvalidArgumentError(f"layers must be block indices ≥ 0, got {layers}")
        layers = tuple(int(b) for b in layers)
        if len(set(layers)) != len(layers):
            raise InvalidArgumentError(f"layers must not repeat, got {layers}")
        if len(layers) != directions.shape[0]:
            raise ShapeMismatchError(
                f"directions have {directions.shape[0]} rows but layers has {len(layers)} entries {layers}"
            )
        directions = directions.detach().to(device="cpu", dtype=torch.float32).clone().contiguous()
        if not torch.isfinite(directions).all():
            raise InvalidArgumentError("directions contain NaN or inf; build vectors from finite values")
        norms = torch.linalg.vector_norm(directions.double(), dim=1)
        bad = [b for b, n in zip(layers, norms.tolist(), strict=True) if abs(n - 1.0) > _UNIT_ATOL]
        if bad:
            raise InvalidArgumentError(
                f"directions must be unit norm but are not at layers {_layers_text(bad)}; "
                "use SteeringVector.from_directions to normalise"
            )
        if not isinstance(self.stats, Mapping) or set(self.stats) != set(layers):
            have = sorted(self.stats) if isinstance(self.stats, Mapping) else self.stats
            raise ShapeMismatchError(f"stats must have one entry per layer {layers}, got keys {have}")
        stats = {b: self.stats[b] for b in layers}
        if not all(isinstance(s, LayerStats) for s in stats.values()):
            raise InvalidArgumentError("stats values must be LayerStats")
        try:
            provenance = json.loads(json.dumps(dict(self.provenance), allow_nan=False))
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(
                f"provenance must be JSON-serialisable ({e}); pass plain values"
            ) from None
        object.__setattr__(self, "directions", directions)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "stats", stats)
        object.__setattr__(self, "provenance", provenance)

    @property
    def d_model(self) -> int:
        return self.directions.shape[1]

    def _index(self, layer: int) -> int:
        try:
            return self.layers.index(layer)
        except ValueError:
            raise InvalidArgumentError(
                f"this vector has no layer {layer}; it has layers {_layers_text(self.layers)}"
            ) from None

    def direction(self, layer: int) -> Float[Tensor, " d_model"]:
        """The unit direction at block ``layer`` (a copy)."""
        return self.directions[self._index(layer)].clone()

    def raw(self, layer: int) -> Float[Tensor, " d_model"]:
        """The vector at block ``layer``: ``direction × diff_norm``."""
        return (self.directions[self._index(layer)].double() * self.stats[layer].diff_norm).float()

    def __repr__(self) -> str:
        return (
            f"SteeringVector(layers={self.layers}, d_model={self.d_model}, "
            f"method={self.provenance.get('method')!r}, model={self.provenance.get('model_name')!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return (
            self.layers == other.layers
            and torch.equal(self.directions, other.directions)
            and self.stats == other.stats
            and self.provenance == other.provenance
        )

    __hash__ = None  # type: ignore[assignment]  # equal values, mutable-looking contents: like numpy arrays

    @classmethod
    def from_activations(
        cls,
        positive: Activations | Float[Tensor, "n layer d_model"],
        negative: Activations | Float[Tensor, "m layer d_model"],
        method: str | Method = "diff_in_means",
        *,
        dataset: str | None = None,
        dataset_hash: str | None = None,
        paired: bool = True,
    ) -> SteeringVector:
        """Extract a direction at every layer of ``positive``/``negative`` with ``method``.

        ``positive`` and ``negative`` are :class:`Activations` (or tensors ``[n, layer, d_model]``) taken at
        the same layers, hook and position; with ``paired=True`` ``positive[i]`` and ``negative[i]`` are a
        contrastive pair. ``method`` is a name in :data:`METHODS` or a function ``(pos, neg) -> direction``.
        Refuses (one-line errors) what :func:`workbench.methods.extract` refuses.
        """
        pos, neg = Activations.coerce(positive, "positive"), Activations.coerce(negative, "negative")
        name, directions, per_layer = extract(pos, neg, method, paired=paired)
        stats = dict(zip(pos.layers, per_layer, strict=True))
        provenance = json.loads(json.dumps({**neg.settings, **pos.settings}, default=str))
        for key in CONTEXT_KEYS:
            provenance.setdefault(key, None)
        provenance.update(
            d_model=pos.d_model,
            method=name,
            paired=paired,
            dataset=dataset,
            dataset_hash=dataset_hash,
            positive_prompts_hash=pos.prompts_hash or None,
            negative_prompts_hash=neg.prompts_hash or None,
            workbench_version=workbench_version(),
            created=utc_now(),
        )
        return cls(directions.float(), pos.layers, stats, provenance)

    @classmethod
    def from_dataset(
        cls,
        model: Model,
        dataset: ContrastiveSet,
        *,
        layers: Sequence[int] | None = None,
        position: str | int = "last_prompt",
        method: str | Method = "diff_in_means",
        batch_size: int = 16,
        chat: bool = True,
        progress: bool = False,
        cache: bool = True,
    ) -> SteeringVector:
        """The one call from data to vector, like repeng's ``ControlVector.train``: collects (cached unless
        ``cache`` is False) the residual stream of ``dataset``'s positive and negative prompts at ``layers``
        (default all) and ``position``, then :meth:`from_activations` with ``method``; or, for a trained
        ``method`` (``likelihood``, ``reps``: :mod:`workbench.training`), trains a vector at ``layers`` on
        answers the model distils from the train pairs. The dataset's name and hash go into the provenance."""
        from workbench.activations import collect

        if method in ("likelihood", "reps"):
            from workbench.training import from_dataset

            return from_dataset(model, dataset, str(method), layers, batch_size=batch_size, progress=progress)

        kw = {"layers": layers, "position": position, "batch_size": batch_size, "chat": chat, "cache": cache}
        pos = collect(model, dataset.positive, progress=progress, **kw)
        neg = collect(model, dataset.negative, progress=progress, **kw)
        name = f"{dataset.name}:{dataset.variant}" if dataset.variant else dataset.name
        return cls.from_activations(pos, neg, method, dataset=name, dataset_hash=dataset.hash)

    @classmethod
    def from_directions(
        cls,
        directions: Float[Tensor, "layer d_model"],
        layers: Iterable[int] | None = None,
        **provenance: Any,
    ) -> SteeringVector:
        """A vector from directions made elsewhere (a random control, another library's vector).

        Row ``i`` is the vector at block ``layers[i]`` (default ``0..layer-1``); its norm is kept as
        ``diff_norm``, so :meth:`raw` gives the rows back. Keyword arguments go into the provenance.
        """
        directions = torch.as_tensor(directions)
        if directions.ndim != 2:
            raise InvalidArgumentError(
                f"directions must have shape [layer, d_model], got {tuple(directions.shape)}; "
                "for one layer use v[None, :]"
            )
        layers = tuple(range(directions.shape[0])) if layers is None else tuple(layers)
        if len(layers) != directions.shape[0]:
            raise ShapeMismatchError(
                f"directions have {directions.shape[0]} rows but layers has {len(layers)} entries {layers}"
            )
        d64 = directions.detach().cpu().double()
        if not torch.isfinite(d64).all():
            raise InvalidArgumentError("directions contain NaN or inf; pass finite values")
        norms = torch.linalg.vector_norm(d64, dim=1)
        zero = [b for b, n in zip(layers, norms.tolist(), strict=True) if n == 0]
        if zero:
            raise InvalidArgumentError(
                f"directions are zero at layers {_layers_text(zero)}; a direction needs a norm"
            )
        stats = {b: LayerStats(diff_norm=float(n)) for b, n in zip(layers, norms.tolist(), strict=True)}
        prov = {
            "method": "external",
            "d_model": directions.shape[1],
            "workbench_version": workbench_version(),
        }
        prov = {**prov, "created": utc_now(), **provenance}
        return cls((d64 / norms[:, None]).float(), layers, stats, prov)

    def _derived(
        self, directions: Tensor, stats: Mapping[int, LayerStats], operation: str, layers: Sequence[int] = ()
    ) -> SteeringVector:
        provenance = {**self.provenance, "operations": [*self.provenance.get("operations", []), operation]}
        return SteeringVector(directions, tuple(layers) or self.layers, dict(stats), provenance)

    def _combine(self, other: SteeringVector, sign: float, op: str) -> SteeringVector:
        if self.d_model != other.d_model:
            raise ShapeMismatchError(
                f"cannot {op} vectors of d_model {self.d_model} and {other.d_model}; "
                "they come from different models"
            )
        if set(self.layers) != set(other.layers):
            raise ShapeMismatchError(
                f"cannot {op} vectors at layers {_layers_text(self.layers)} and "
                f"{_layers_text(other.layers)}; select() the same layers from both first"
            )
        a = torch.stack([self.raw(b) for b in self.layers]).double()
        r = a + sign * torch.stack([other.raw(b) for b in self.layers]).double()
        norms = torch.linalg.vector_norm(r, dim=1).tolist()
        stats = {}
        for layer, norm in zip(self.layers, norms, strict=True):
            if norm == 0 or norm <= ZERO_RTOL * max(
                self.stats[layer].diff_norm, other.stats[layer].diff_norm
            ):
                raise InvalidArgumentError(
                    f"the {op} of these vectors is zero at layer {layer} (they cancel): it has no direction"
                )
            scales = [
                s.resid_norm for s in (self.stats[layer], other.stats[layer]) if s.resid_norm is not None
            ]
            stats[layer] = LayerStats(
                diff_norm=norm, resid_norm=sum(scales) / len(scales) if scales else None
            )
        context = {
            key: self.provenance[key]
            for key in CONTEXT_KEYS
            if key in self.provenance and other.provenance.get(key) == self.provenance[key]
        }
        provenance = {
            **context,
            "d_model": self.d_model,
            "method": op,
            "operands": [self.provenance, other.provenance],
            "workbench_version": workbench_version(),
            "created": utc_now(),
        }
        return SteeringVector((r / r.norm(dim=1, keepdim=True)).float(), self.layers, stats, provenance)

    def __add__(self, other: object) -> SteeringVector:
        """Per layer: ``raw(v) + raw(w)``, renormalised; the stats hold only ``diff_norm``, the sum's norm."""
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return self._combine(other, 1.0, "add")

    def __sub__(self, other: object) -> SteeringVector:
        """Per layer: ``raw(v) - raw(w)``, renormalised. ``v - v`` is zero and is refused."""
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return self._combine(other, -1.0, "subtract")

    def __neg__(self) -> SteeringVector:
        """The opposite direction: the positive and negative sets swap roles (projections swap and negate)."""
        return self._derived(-self.directions, {b: s.negated() for b, s in self.stats.items()}, "negate")

    def __mul__(self, c: object) -> SteeringVector:
        """``c * v``: ``diff_norm`` times ``|c|``; a negative ``c`` also flips the direction, as ``-v``."""
        if not isinstance(c, numbers.Real) or isinstance(c, bool):
            return NotImplemented
        if not _finite_nonzero(c):
            raise InvalidArgumentError(
                f"cannot scale a steering vector by {c}; use a finite, non-zero number"
            )
        c = float(c)
        stats = {
            b: (s.negated() if c < 0 else s).with_norm(s.diff_norm * abs(c)) for b, s in self.stats.items()
        }
        directions = -self.directions if c < 0 else self.directions
        return self._derived(directions, stats, f"scale({c!r})")

    __rmul__ = __mul__

    def __truediv__(self, c: object) -> SteeringVector:
        if not isinstance(c, numbers.Real) or isinstance(c, bool):
            return NotImplemented
        if c == 0:
            raise InvalidArgumentError("cannot divide a steering vector by 0")
        return self * (1.0 / float(c))

    def normalized(self) -> SteeringVector:
        """The same directions with ``diff_norm`` 1 at every layer (so :meth:`raw` is the unit direction)."""
        return self._derived(
            self.directions, {b: s.with_norm(1.0) for b, s in self.stats.items()}, "normalized"
        )

    def select(self, layers: int | Iterable[int]) -> SteeringVector:
        """The vector restricted to ``layers`` (block indices), in the order given."""
        layers = (layers,) if isinstance(layers, numbers.Integral) else tuple(layers)
        if not layers:
            raise InvalidArgumentError("select() needs at least one layer")
        if len(set(layers)) != len(layers):
            raise InvalidArgumentError(f"select() got repeated layers {layers}")
        rows = torch.stack([self.directions[self._index(b)] for b in layers])
        return self._derived(rows, {b: self.stats[b] for b in layers}, f"select({list(layers)})", layers)

    def interventions(
        self, coef: float | None = None, *, layers: int | Iterable[int] | None = None, **knobs: Any
    ) -> list[Intervention]:
        """One :class:`~workbench.interventions.Intervention` per layer (default: every layer this vector
        has), each with ``coef`` in its ``unit`` (default ``diff_norm``: ``coef=2`` adds twice each layer's
        mean-difference norm) and the other ``knobs`` (``mode``, ``positions``, ``unit``, ...)."""
        from workbench.interventions import Intervention

        chosen = self.layers if layers is None else self.select(layers).layers
        return [Intervention(self, b, coef=coef, **knobs) for b in chosen]

    @contextmanager
    def apply(self, model: Model, coef: float | None = None, **knobs: Any) -> Iterator[Model]:
        """Steer every forward of ``model`` in the block with :meth:`interventions` (``knobs``: its keywords)."""
        from workbench.steering import steer

        with steer(model, *self.interventions(coef, **knobs)):
            yield model

    def cosine(self, other: SteeringVector) -> dict[int, float]:
        """Cosine similarity of the directions at each shared layer; see :func:`cosine`."""
        return cosine(self, other)

    def _payload(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "stats": {str(b): s.to_json() for b, s in self.stats.items()},
            "provenance": self.provenance,
        }

    @classmethod
    def _from_payload(cls, directions: Tensor, payload: Mapping[str, Any], path: Path) -> SteeringVector:
        try:
            stats = {int(b): LayerStats.from_json(s) for b, s in payload["stats"].items()}
            return cls(directions, tuple(payload["layers"]), stats, payload["provenance"])
        except (WorkbenchError, TypeError, ValueError, KeyError, AttributeError) as e:
            raise ArtifactError(f"{path} holds an inconsistent steering vector ({e})") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write tensor ``directions`` and JSON ``layers``, ``stats``, ``provenance`` with a checksum to one
        ``.safetensors`` file, atomically (:func:`workbench.formats.save_safetensors`); returns the path."""
        tensors = {"directions": self.directions}
        return formats.save_safetensors(path, ARTIFACT_TYPE, tensors, self._payload(), "steering vector")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SteeringVector:
        """Read a file written by :meth:`save`; verifies type, checksum and shapes (else ArtifactError)."""
        shapes = {"directions": "[layer, d_model]"}
        tensors, payload = formats.load_safetensors(path, ARTIFACT_TYPE, shapes, _PAYLOAD, "steering vector")
        return cls._from_payload(tensors["directions"], payload, Path(path))

    def to_gguf(
        self,
        path: str | os.PathLike[str],
        layers: Iterable[int] | None = None,
        *,
        coef: float = 1.0,
        magnitude: Literal["unit", "raw"] = "unit",
        model_hint: str | None = None,
    ) -> Path:
        """Write a GGUF control vector for llama.cpp (``--control-vector[-scaled]``) and repeng.

        **Tensor ``direction.N`` holds block ``N``**, as llama.cpp and repeng number them, so block 0 cannot
        be exported (see :func:`workbench.formats.control_vector_layers`). ``model_hint`` defaults to the
        provenance's model name. Extra ``workbench.*`` keys let :meth:`from_gguf` restore this vector.

        Magnitude: llama.cpp adds ``tensor × strength``. The tensor written is ``coef × direction`` with
        ``magnitude="unit"`` (the default; unit vectors like repeng's, so ``--control-vector-scaled f.gguf 8``
        adds 8 units) or ``coef × raw(layer)`` with ``magnitude="raw"`` (the mean-difference scale, so a
        strength of 1 adds the whole mean shift). Returns the path.
        """
        if magnitude not in ("unit", "raw"):
            raise InvalidArgumentError(f"magnitude must be 'unit' or 'raw', got {magnitude!r}")
        if not _finite_nonzero(coef):
            raise InvalidArgumentError(f"coef must be a finite, non-zero number, got {coef!r}")
        export = formats.control_vector_layers(self.layers, layers)
        coef = float(coef)
        scales = {b: coef * (self.stats[b].diff_norm if magnitude == "raw" else 1.0) for b in export}
        rows = {b: (self.direction(b).double() * scale).float() for b, scale in scales.items()}
        sub = self if set(export) == set(self.layers) else self.select(export)  # all: no select() noted
        payload = {**sub._payload(), "layers": export, "export": {"coef": coef, "magnitude": magnitude}}
        hint = model_hint or self.provenance.get("model_name") or "unknown"
        return formats.write_control_vector(path, rows, model_hint=hint, kind=ARTIFACT_TYPE, payload=payload)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> SteeringVector:
        """Read a GGUF control vector (ours, repeng's or llama.cpp's): ``direction.N`` becomes block ``N``.

        A file from :meth:`to_gguf` comes back with its stats and provenance, checksum verified; a foreign
        file gives ``diff_norm`` = each tensor's norm (so :meth:`raw` is the tensor). Refuses (ArtifactError)
        what :func:`workbench.formats.read_control_vector` refuses, and zero or non-finite directions.
        """
        path = Path(path)
        found, hint, payload = formats.read_control_vector(path, ARTIFACT_TYPE, (*_PAYLOAD, "export"))
        layers, stacked = tuple(found), torch.stack(list(found.values())).double()
        if payload is not None:
            try:  # the tensors are coef × direction × (diff_norm or 1): undo the sign, then the norm
                rows = stacked * (1.0 if float(payload["export"]["coef"]) > 0 else -1.0)
            except (TypeError, ValueError, KeyError) as e:
                raise ArtifactError(f"{path} holds an inconsistent workbench control vector ({e})") from None
            norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
            rows = torch.where((norms - 1.0).abs() <= 1e-6, rows, rows / norms)
            return cls._from_payload(rows.float(), {**payload, "layers": list(layers)}, path)
        try:
            return cls.from_directions(stacked, layers, model_name=hint, method="gguf", source=path.name)
        except InvalidArgumentError as e:
            raise ArtifactError(f"{path}: its direction tensors are unusable ({e})") from None


def cosine(v: SteeringVector, w: SteeringVector) -> dict[int, float]:
    """Cosine similarity of ``v``'s and ``w``'s directions at each layer they share, in ``v``'s layer order.

    Refuses vectors of different d_model or with no layer in common (ShapeMismatchError).
    """
    if v.d_model != w.d_model:
        raise ShapeMismatchError(f"cannot compare vectors of d_model {v.d_model} and {w.d_model}")
    shared = [b for b in v.layers if b in w.layers]
    if not shared:
        raise ShapeMismatchError(
            f"the vectors share no layer (layers {_layers_text(v.layers)} and {_layers_text(w.layers)})"
        )
    a = torch.stack([v.direction(b) for b in shared]).double()
    c = torch.stack([w.direction(b) for b in shared]).double()
    values = ((a * c).sum(1) / (a.norm(dim=1) * c.norm(dim=1))).clamp(-1.0, 1.0).tolist()
    return dict(zip(shared, values, strict=True))
