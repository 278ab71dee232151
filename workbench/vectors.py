"""Steering vectors: per-layer unit directions, the statistics that made them, and where they came from.

A :class:`SteeringVector` is a value, as in repeng: ``v + w``, ``v - w``, ``-v``, ``0.5 * v`` give new vectors
and never change their operands. It holds, for each layer (a 0-based block index, the TransformerLens
``blocks.{b}.hook_resid_post`` numbering):

- a *direction*: unit norm, float32 (``directions[i]`` belongs to ``layers[i]``);
- :class:`LayerStats`: the mean projection of the positive and negative sets on that direction, how many
  examples each set had, and ``diff_norm``, the magnitude of the vector. For an extracted vector ``diff_norm``
  is the norm of the raw mean difference ``mean(pos) - mean(neg)``, so ``raw(layer) = direction × diff_norm``
  is on the scale of that layer's residual stream (a coefficient means nothing without it);
- ``provenance``: model name and weights hash, hook, position rule, method, dataset and its hash, workbench
  version, UTC creation time, and the operations applied since.

Extraction methods are plain functions ``(pos [n, d], neg [m, d]) -> direction [d]`` in :data:`METHODS`
(steering-vectors' aggregator style): :func:`diff_in_means`, :func:`pca`, :func:`probe`.

Files: :meth:`SteeringVector.save` writes one ``.safetensors`` file (tensor ``directions`` plus JSON metadata
and a SHA-256 checksum, never a pickle) and :meth:`SteeringVector.load` verifies it.
:meth:`SteeringVector.to_gguf` / :meth:`SteeringVector.from_gguf` speak the GGUF control-vector layout that
llama.cpp's ``--control-vector`` and repeng's ``ControlVector.export_gguf``/``import_gguf`` use; see
:meth:`SteeringVector.to_gguf` for the layer numbering.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import numbers
import os
import secrets
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from workbench.activations import Activations
from workbench.errors import (
    ArtifactError,
    InvalidArgumentError,
    OutputPathError,
    ShapeMismatchError,
    WorkbenchError,
)

if TYPE_CHECKING:
    from workbench.datasets import ContrastiveSet
    from workbench.models import Model

ARTIFACT_TYPE = "steering_vector"
FORMAT_VERSION = "1"

#: Settings that say what a vector's numbers mean; kept by ``v + w`` when both operands agree on them.
CONTEXT_KEYS = ("model_name", "weights_hash", "n_layers", "d_model", "hook", "position", "chat")
#: Settings that must agree between a positive and a negative set.
_MUST_MATCH = ("model_name", "weights_hash", "hook", "position", "chat")

# Below this fraction of the means' norm, a mean difference is float32 round-off, not a signal.
_ZERO_RTOL = 1e-6
# A direction whose norm is within this of 1 counts as unit norm.
_UNIT_ATOL = 1e-4


# --------------------------------------------------------------------------------------------------
# Extraction methods: (pos [n, d], neg [m, d]) -> unit direction [d]
# --------------------------------------------------------------------------------------------------

Method = Callable[[Float[Tensor, "n d_model"], Float[Tensor, "m d_model"]], Float[Tensor, " d_model"]]


def _unit(v: Float[Tensor, " d_model"], what: str) -> Float[Tensor, " d_model"]:
    norm = torch.linalg.vector_norm(v)
    if not torch.isfinite(norm) or norm == 0:
        raise InvalidArgumentError(f"{what} is zero or not finite, so it has no direction")
    return v / norm


def diff_in_means(
    pos: Float[Tensor, "n d_model"], neg: Float[Tensor, "m d_model"]
) -> Float[Tensor, " d_model"]:
    """``mean(pos) - mean(neg)``, normalised.

    For paired sets (equal ``n``) this is exactly the mean of the paired differences ``pos_i - neg_i``; for
    unpaired sets it is the difference of the two means. Either way it points along the mean shift.
    """
    return _unit(pos.mean(0) - neg.mean(0), "the mean difference")


def pca(pos: Float[Tensor, "n d_model"], neg: Float[Tensor, "n d_model"]) -> Float[Tensor, " d_model"]:
    """First principal component of the paired differences ``pos_i - neg_i``, sign aligned with their mean.

    The differences are centred before the SVD, as PCA does (repeng's ``pca_diff`` fits sklearn's ``PCA``,
    which centres the same way). Centring removes the mean shift itself, so PC1 is the axis along which the
    *differences vary most*: it recovers a concept direction when the strength of the concept varies across
    pairs, but with a constant shift plus noise it follows the noise and can be far from the mean shift
    (on SmolLM2-135M repeng-style PCA directions had cosine 0.1-0.67 with the mean shift). Compare with
    :func:`diff_in_means` before trusting it. The sign is flipped so that the direction's dot product with the
    mean difference is ≥ 0.
    """
    if pos.shape != neg.shape:
        raise ShapeMismatchError(
            f"pca pairs pos_i with neg_i but got {pos.shape[0]} positive and {neg.shape[0]} negative "
            "examples; pass paired sets of equal size"
        )
    diffs = pos - neg
    mean = diffs.mean(0)
    centred = diffs - mean
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    scale = torch.linalg.vector_norm(diffs, dim=1).max()
    if singular.numel() == 0 or singular[0] <= _ZERO_RTOL * scale or singular[0] == 0:
        raise InvalidArgumentError(
            "the paired differences do not vary (all pairs differ by the same vector, or there is one pair), "
            "so they have no first principal component; use method='diff_in_means'"
        )
    direction = vh[0]
    if torch.dot(direction, mean) < 0:
        direction = -direction
    return _unit(direction, "the first principal component")


def probe(pos: Float[Tensor, "n d_model"], neg: Float[Tensor, "m d_model"]) -> Float[Tensor, " d_model"]:
    """Normalised weights of a logistic-regression probe (positive = 1) fit on the raw activations.

    sklearn ``LogisticRegression(C=1.0, solver="lbfgs", max_iter=10_000)``, no standardisation (standardising
    would rescale the axes and the weights would no longer be a direction in activation space). lbfgs is
    deterministic. The sign is chosen so the direction separates the means the positive way round.
    """
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([pos, neg]).double().numpy()
    y = np.concatenate([np.ones(pos.shape[0]), np.zeros(neg.shape[0])])
    clf = LogisticRegression(C=1.0, solver="lbfgs", max_iter=10_000).fit(x, y)
    w = torch.as_tensor(clf.coef_[0], dtype=pos.dtype)
    if torch.dot(w, pos.mean(0) - neg.mean(0)) < 0:
        w = -w
    return _unit(w, "the probe's weight vector")


#: Extraction methods by name. Add your own ``(pos, neg) -> direction`` function here to use it by name.
METHODS: dict[str, Method] = {"diff_in_means": diff_in_means, "pca": pca, "probe": probe}
#: Methods that pair ``pos[i]`` with ``neg[i]`` and so refuse ``paired=False``.
PAIRED_METHODS: set[str] = {"pca"}


# --------------------------------------------------------------------------------------------------
# Per-layer statistics
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LayerStats:
    """What is known about one layer of a vector.

    ``pos_mean_proj`` / ``neg_mean_proj``: mean of ``x · direction`` over the positive / negative set.
    ``diff_norm``: the vector's magnitude at this layer (extracted: ``|mean(pos) - mean(neg)|``).
    ``n_pos`` / ``n_neg``: set sizes. ``resid_norm``: mean ``|x|`` over both sets, the layer's residual
    scale (a property of the layer, so scaling or negating the vector keeps it). Fields that an operation
    cannot know (the projections of ``v + w``) are ``None``.
    """

    diff_norm: float
    pos_mean_proj: float | None = None
    neg_mean_proj: float | None = None
    n_pos: int | None = None
    n_neg: int | None = None
    resid_norm: float | None = None

    def __post_init__(self) -> None:
        if not (
            isinstance(self.diff_norm, numbers.Real) and math.isfinite(self.diff_norm) and self.diff_norm > 0
        ):
            raise InvalidArgumentError(f"diff_norm must be a finite number > 0, got {self.diff_norm!r}")
        object.__setattr__(self, "diff_norm", float(self.diff_norm))
        for name in ("pos_mean_proj", "neg_mean_proj", "resid_norm"):
            value = getattr(self, name)
            if value is not None:
                if not (isinstance(value, numbers.Real) and math.isfinite(value)):
                    raise InvalidArgumentError(f"{name} must be a finite number or None, got {value!r}")
                object.__setattr__(self, name, float(value))
        for name in ("n_pos", "n_neg"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0
            ):
                raise InvalidArgumentError(f"{name} must be a count ≥ 0 or None, got {value!r}")

    @property
    def separation(self) -> float | None:
        """``pos_mean_proj - neg_mean_proj``, or None when either is unknown."""
        if self.pos_mean_proj is None or self.neg_mean_proj is None:
            return None
        return self.pos_mean_proj - self.neg_mean_proj

    def to_json(self) -> dict[str, Any]:
        return {
            "diff_norm": self.diff_norm,
            "pos_mean_proj": self.pos_mean_proj,
            "neg_mean_proj": self.neg_mean_proj,
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
            "resid_norm": self.resid_norm,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> LayerStats:
        keys = ("diff_norm", "pos_mean_proj", "neg_mean_proj", "n_pos", "n_neg", "resid_norm")
        return cls(**{k: obj.get(k) for k in keys})

    def negated(self) -> LayerStats:
        """Stats of the opposite direction: the sets swap roles and projections change sign."""
        return LayerStats(
            diff_norm=self.diff_norm,
            pos_mean_proj=None if self.neg_mean_proj is None else -self.neg_mean_proj,
            neg_mean_proj=None if self.pos_mean_proj is None else -self.pos_mean_proj,
            n_pos=self.n_neg,
            n_neg=self.n_pos,
            resid_norm=self.resid_norm,
        )

    def with_norm(self, diff_norm: float) -> LayerStats:
        return dataclasses.replace(self, diff_norm=diff_norm)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def workbench_version() -> str:
    """``workbench.__version__`` if the package defines it, else the installed distribution's, else 0.0.0."""
    try:
        import workbench

        version = getattr(workbench, "__version__", None)
        if version:
            return str(version)
    except ImportError:  # pragma: no cover - we are inside the package
        pass
    try:
        return importlib.metadata.version("steering-workbench")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _json_safe(value: Any) -> Any:
    """``value`` if it survives a JSON round trip unchanged in meaning, else its ``str``."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return str(value)


def _checksum(directions: Tensor, payload: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(directions.detach().cpu().contiguous().numpy().astype("<f4", copy=False).tobytes())
    h.update(_canonical_json(payload).encode("ascii"))
    return h.hexdigest()


def _atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None], what: str) -> Path:
    """Write via ``write(tmp)`` to a temporary file beside ``path``, then rename it onto ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise OutputPathError(
            f"cannot write the {what} to {path} ({e.strerror or e}); choose a writable file path"
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _as_activations(obj: Activations | Tensor, which: str) -> Activations:
    if isinstance(obj, Activations):
        acts = obj
    elif isinstance(obj, Tensor | np.ndarray):
        tensor = torch.as_tensor(obj)
        if tensor.ndim != 3:
            raise InvalidArgumentError(
                f"{which} activations must have shape [n, layer, d_model], got {tuple(tensor.shape)}; "
                "for one layer add the axis with t[:, None, :]"
            )
        acts = Activations.from_tensor(tensor)
    else:
        raise InvalidArgumentError(
            f"{which} must be Activations or a tensor [n, layer, d_model], got {type(obj).__name__}"
        )
    if acts.tensor.ndim != 3 or acts.tensor.shape[1] != len(acts.layers):
        raise ShapeMismatchError(
            f"{which} activations have tensor shape {tuple(acts.tensor.shape)} but {len(acts.layers)} layers "
            f"{acts.layers}; the tensor must be [n, len(layers), d_model]"
        )
    return acts


def _resolve_method(method: str | Method) -> tuple[str, Method]:
    if callable(method):
        return getattr(method, "__name__", "custom"), method
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown method {method!r}; use one of {', '.join(sorted(METHODS))}")
    return method, METHODS[method]


def _layers_text(layers: Iterable[int]) -> str:
    return "(" + ", ".join(str(layer) for layer in layers) + ")"


# --------------------------------------------------------------------------------------------------
# The value
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """Unit directions at one or more layers, with per-layer stats and provenance. Immutable; see module doc.

    Build one with :meth:`from_activations` (extraction), :meth:`from_directions` (directions from elsewhere),
    :meth:`load` or :meth:`from_gguf`. ``directions`` are *directions* (unit norm); :meth:`raw` gives the
    *vector* ``direction × diff_norm``.
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

    # ---- accessors -------------------------------------------------------------------------------------

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
            and self.directions.shape == other.directions.shape
            and torch.equal(self.directions, other.directions)
            and self.stats == other.stats
            and self.provenance == other.provenance
        )

    __hash__ = None  # type: ignore[assignment]  # equal values, mutable-looking contents: like numpy arrays

    # ---- construction ----------------------------------------------------------------------------------

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

        ``positive`` and ``negative`` are :class:`Activations` (or raw tensors ``[n, layer, d_model]``,
        wrapped with ``Activations.from_tensor``) taken at the same layers, hook and position. With
        ``paired=True`` (the default) ``positive[i]`` and ``negative[i]`` are a contrastive pair and the sets
        must be the same size; :func:`pca` needs pairs. ``method`` is a name in :data:`METHODS` or a function
        ``(pos, neg) -> direction``. Statistics are computed in float64; directions are stored in float32.

        Refuses, with one-line errors: an empty positive or negative set, unequal sizes when paired,
        different layers or d_model between the sets, different model/hook/position settings, NaN or inf
        activations, and a layer where the two means coincide (the layer is named).
        """
        pos, neg = _as_activations(positive, "positive"), _as_activations(negative, "negative")
        name, fn = _resolve_method(method)
        if pos.n == 0:
            raise InvalidArgumentError("the positive set is empty; a steering vector needs positive examples")
        if neg.n == 0:
            raise InvalidArgumentError(
                "the negative set is empty; one class cannot define a direction, "
                "collect a contrasting negative set"
            )
        if pos.layers != neg.layers:
            raise ShapeMismatchError(
                f"positive activations are at layers {_layers_text(pos.layers)} but negative at "
                f"{_layers_text(neg.layers)}; collect both sets at the same layers"
            )
        if pos.d_model != neg.d_model:
            raise ShapeMismatchError(
                f"positive activations have d_model {pos.d_model} but negative have {neg.d_model}; "
                "both sets must come from the same model"
            )
        if paired and pos.n != neg.n:
            raise ShapeMismatchError(
                f"paired sets must be the same size but there are {pos.n} positive and {neg.n} negative "
                "examples; fix the pairing or pass paired=False"
            )
        if not paired and name in PAIRED_METHODS:
            raise InvalidArgumentError(
                f"method {name!r} needs paired sets; pass paired=True with equal-size sets"
            )
        for key in _MUST_MATCH:
            a, b = pos.settings.get(key), neg.settings.get(key)
            if a is not None and b is not None and a != b:
                raise InvalidArgumentError(
                    f"positive and negative activations differ in {key} ({a!r} vs {b!r}); "
                    "collect both sets with the same settings"
                )
        for which, acts in (("positive", pos), ("negative", neg)):
            finite = torch.isfinite(acts.tensor).flatten(2).all(dim=2).all(dim=0)
            if not finite.all():
                layer = acts.layers[int((~finite).nonzero()[0])]
                raise InvalidArgumentError(
                    f"{which} activations contain NaN or inf at layer {layer}; recollect them "
                    "(half precision can overflow)"
                )

        rows, stats = [], {}
        for j, layer in enumerate(pos.layers):
            p, q = pos.tensor[:, j].double(), neg.tensor[:, j].double()
            mean_p, mean_q = p.mean(0), q.mean(0)
            diff_norm = float(torch.linalg.vector_norm(mean_p - mean_q))
            scale = max(float(torch.linalg.vector_norm(mean_p)), float(torch.linalg.vector_norm(mean_q)))
            if diff_norm == 0 or diff_norm <= _ZERO_RTOL * scale:
                raise InvalidArgumentError(
                    f"at layer {layer} the positive and negative means coincide (difference norm "
                    f"{diff_norm:.3g}), so there is no direction; drop that layer or check the sets"
                )
            try:
                direction = fn(p, q)
            except WorkbenchError as e:
                raise type(e)(f"layer {layer}, method {name!r}: {e}") from None
            direction = torch.as_tensor(direction, dtype=torch.float64)
            if direction.shape != (pos.d_model,):
                raise ShapeMismatchError(
                    f"method {name!r} returned shape {tuple(direction.shape)} at layer {layer}, "
                    f"expected ({pos.d_model},)"
                )
            direction = _unit(direction, f"method {name!r}'s direction at layer {layer}")
            rows.append(direction)
            stats[layer] = LayerStats(
                diff_norm=diff_norm,
                pos_mean_proj=float((p @ direction).mean()),
                neg_mean_proj=float((q @ direction).mean()),
                n_pos=pos.n,
                n_neg=neg.n,
                resid_norm=float(torch.linalg.vector_norm(torch.cat([p, q]), dim=1).mean()),
            )

        settings = {**neg.settings, **pos.settings}
        provenance = {key: _json_safe(value) for key, value in settings.items()}
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
            created=_now(),
        )
        return cls(torch.stack(rows).float(), pos.layers, stats, provenance)

    @classmethod
    def from_dataset(
        cls,
        model: Model,
        dataset: ContrastiveSet,
        *,
        layers: Sequence[int] | None = None,
        position: str | int = "last",
        method: str | Method = "diff_in_means",
        batch_size: int = 16,
        chat: bool = True,
        progress: bool = False,
    ) -> SteeringVector:
        """The one call from data to vector: collect ``dataset``'s positive and negative prompts, then extract.

        Collects the residual stream (``blocks.{b}.hook_resid_post``) of ``dataset.positive`` and
        ``dataset.negative`` at ``layers`` (default all) and ``position`` (``"last"``, ``"mean"`` or an int
        token index) with :func:`workbench.activations.collect` (cached), then calls :meth:`from_activations`
        with ``method`` and the dataset's name (``name:variant`` when it has a variant) and hash as
        provenance. Like repeng's ``ControlVector.train`` and steering-vectors' ``train_steering_vector``.
        """
        from workbench.activations import collect

        kw = {"layers": layers, "position": position, "batch_size": batch_size, "chat": chat}
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

        ``directions[i]`` is the vector at block ``layers[i]`` (default ``0..layer-1``); each row is
        normalised and its norm kept as ``diff_norm``, so :meth:`raw` gives the rows back. Keyword arguments
        go into the provenance (``method`` defaults to ``"external"``). Refuses non-finite values and zero
        rows.
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
        prov = {"method": "external", "d_model": directions.shape[1], **provenance}
        prov.setdefault("workbench_version", workbench_version())
        prov.setdefault("created", _now())
        return cls((d64 / norms[:, None]).float(), layers, stats, prov)

    # ---- values ----------------------------------------------------------------------------------------

    def _derived(self, directions: Tensor, stats: Mapping[int, LayerStats], operation: str) -> SteeringVector:
        provenance = dict(self.provenance)
        provenance["operations"] = [*provenance.get("operations", []), operation]
        return SteeringVector(directions, self.layers, dict(stats), provenance)

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
        rows, stats = [], {}
        for layer in self.layers:
            a, b = self.raw(layer).double(), other.raw(layer).double()
            r = a + sign * b
            norm = float(torch.linalg.vector_norm(r))
            scale = max(self.stats[layer].diff_norm, other.stats[layer].diff_norm)
            if norm == 0 or norm <= _ZERO_RTOL * scale:
                raise InvalidArgumentError(
                    f"the {op} of these vectors is zero at layer {layer} (they cancel), "
                    "so it has no direction"
                )
            rows.append(r / norm)
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
            "created": _now(),
        }
        return SteeringVector(torch.stack(rows).float(), self.layers, stats, provenance)

    def __add__(self, other: object) -> SteeringVector:
        """Per layer: ``raw(v) + raw(w)``, renormalised; ``diff_norm`` is the norm of the sum.

        Both vectors must have the same layers and d_model. The result's stats hold only ``diff_norm``
        (projections of a sum are unknown without the activations).
        """
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
        c = float(c)
        if not math.isfinite(c) or c == 0:
            raise InvalidArgumentError(
                f"cannot scale a steering vector by {c}; use a finite, non-zero number"
            )
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
        provenance = dict(self.provenance)
        provenance["operations"] = [*provenance.get("operations", []), f"select({list(layers)})"]
        return SteeringVector(rows, layers, {b: self.stats[b] for b in layers}, provenance)

    def cosine(self, other: SteeringVector) -> dict[int, float]:
        """Cosine similarity of the directions at each shared layer; see :func:`cosine`."""
        return cosine(self, other)

    # ---- safetensors -----------------------------------------------------------------------------------

    def _payload(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "stats": {str(b): s.to_json() for b, s in self.stats.items()},
            "provenance": self.provenance,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write one ``.safetensors`` file, atomically: tensor ``directions`` plus string metadata.

        Metadata: ``workbench_artifact`` (``"steering_vector"``), ``format_version``, ``layers``, ``stats``
        and ``provenance`` (canonical JSON) and ``checksum``, the SHA-256 of the float32 direction bytes
        followed by the canonical JSON of ``{"layers", "provenance", "stats"}``. Missing parent folders are
        created; an unwritable location raises OutputPathError. Returns the path.
        """
        from safetensors.torch import save_file

        payload = self._payload()
        metadata = {
            "workbench_artifact": ARTIFACT_TYPE,
            "format_version": FORMAT_VERSION,
            "layers": _canonical_json(payload["layers"]),
            "stats": _canonical_json(payload["stats"]),
            "provenance": _canonical_json(payload["provenance"]),
            "checksum": _checksum(self.directions, payload),
        }
        tensors = {"directions": self.directions.contiguous()}
        return _atomic_write(
            path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), "steering vector"
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SteeringVector:
        """Read a file written by :meth:`save`; verifies type, checksum and shapes (else ArtifactError)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"{path}: no such file; check the path")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        except Exception as e:
            raise ArtifactError(
                f"{path} is not a readable safetensors file ({e}); save vectors with .save()"
            ) from None
        kind = metadata.get("workbench_artifact")
        if kind is None:
            raise ArtifactError(
                f"{path} has no workbench metadata, so it is not a steering vector saved by .save()"
            )
        if kind != ARTIFACT_TYPE:
            raise ArtifactError(
                f"{path} is a {kind!r} artifact, not a steering vector; load it with its own loader"
            )
        missing = [k for k in ("layers", "stats", "provenance", "checksum") if k not in metadata]
        if missing or "directions" not in tensors:
            gone = [*missing, *(["tensor 'directions'"] if "directions" not in tensors else [])]
            raise ArtifactError(
                f"{path} is a damaged steering vector: it lacks {', '.join(gone)}; save it again"
            )
        directions = tensors["directions"]
        if directions.dtype != torch.float32 or directions.ndim != 2:
            raise ArtifactError(
                f"{path}: 'directions' is {directions.dtype} {tuple(directions.shape)}, expected float32 "
                "[layer, d_model]; the file is damaged"
            )
        try:
            payload = {
                "layers": json.loads(metadata["layers"]),
                "stats": json.loads(metadata["stats"]),
                "provenance": json.loads(metadata["provenance"]),
            }
            expected = _checksum(directions, payload)
        except (TypeError, ValueError):
            raise ArtifactError(
                f"{path}: its metadata is not valid JSON, so it was modified or damaged"
            ) from None
        if expected != metadata["checksum"]:
            raise ArtifactError(
                f"{path} was modified after it was saved (checksum mismatch); "
                "re-create it or restore the original"
            )
        try:
            layers = tuple(payload["layers"])
            stats = {int(b): LayerStats.from_json(s) for b, s in payload["stats"].items()}
            return cls(directions, layers, stats, payload["provenance"])
        except (WorkbenchError, TypeError, ValueError, AttributeError) as e:
            raise ArtifactError(f"{path} holds an inconsistent steering vector ({e})") from None

    # ---- GGUF control vectors --------------------------------------------------------------------------

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

        repeng reads it with ``ControlVector.import_gguf``.

        Layout (as repeng's ``ControlVector.export_gguf`` and llama.cpp's ``cvector-generator`` write it):
        ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (``model_hint``, default the
        provenance's model name), ``controlvector.layer_count`` (number of tensors, as repeng writes it) and
        one 1-D float32 tensor ``direction.{N}`` per layer. Extra ``workbench.*`` string keys (provenance,
        stats, export settings, checksum) let :meth:`from_gguf` restore this vector; llama.cpp ignores them.

        **Layer numbering: tensor ``direction.N`` holds block ``N``** (our 0-based block index, the output of
        ``blocks.N``, TransformerLens ``blocks.N.hook_resid_post``, HF ``hidden_states[N + 1]``).
        Checked against:

        - llama.cpp ``common/common.cpp`` ``common_control_vector_load_one``: parses ``N`` from
          ``direction.N``, refuses ``N == 0`` ("invalid (zero) direction tensor layer index") and stores the
          tensor at ``data + n_embd * (layer_idx - 1)`` ("layer 1 at [0]"), scaled by the user's strength.
        - llama.cpp ``src/llama-adapter.cpp`` ``llama_adapter_cvec::apply``: copies row ``il - 1`` of that
          buffer into ``tensors[il]`` for ``il = 1 .. n_layer - 1`` ("there's never a tensor for layer 0");
          ``apply_to`` adds ``tensors[il]`` to ``cur``.
        - every model graph in llama.cpp ends layer ``il`` (0-based) with ``cur = build_cvec(cur, il);
          cb(cur, "l_out", il)``: the vector is added to the *output* of block ``il``, after the FFN residual.
        - repeng: ``extract.py`` ``batched_get_hiddens`` reads ``hidden_states[layer + 1]`` (the output of
          ``model.layers[layer]``), ``control.py`` ``ControlModule.forward`` adds the control to the output of
          ``model.layers[layer]``, and ``export_gguf`` writes ``direction.{layer}``: the same ``N = block``
          mapping (its default layers ``range(-1, -num_hidden_layers, -1)`` never include block 0).

        So block 0 cannot be steered from llama.cpp, and a file holding ``direction.0`` is refused by its
        loader outright: with ``layers=None`` block 0 is skipped with a warning; asking for it is an error.
        (llama.cpp's own ``cvector-generator`` names the vector read at ``l_out`` of block ``il`` as
        ``direction.{il+1}``, one block later than it was read; its files load here with llama.cpp's meaning.)

        Magnitude: llama.cpp adds ``tensor × strength``. The tensor written is ``coef × direction`` with
        ``magnitude="unit"`` (the default; unit vectors like repeng's, so ``--control-vector-scaled f.gguf 8``
        adds 8 units) or ``coef × raw(layer)`` with ``magnitude="raw"`` (the mean-difference scale, so a
        strength of 1 adds the whole mean shift). Returns the path.
        """
        import gguf

        if magnitude not in ("unit", "raw"):
            raise InvalidArgumentError(f"magnitude must be 'unit' or 'raw', got {magnitude!r}")
        if (
            not isinstance(coef, numbers.Real)
            or isinstance(coef, bool)
            or not math.isfinite(coef)
            or coef == 0
        ):
            raise InvalidArgumentError(f"coef must be a finite, non-zero number, got {coef!r}")
        if layers is None:
            export = [b for b in self.layers if b != 0]
            if len(export) < len(self.layers):
                warnings.warn(
                    "block 0 is not written to the GGUF file: llama.cpp cannot steer block 0 and refuses "
                    "direction.0; pass layers=... to choose layers explicitly",
                    UserWarning,
                    stacklevel=2,
                )
            if not export:
                raise InvalidArgumentError("this vector only has block 0, which llama.cpp cannot steer")
        else:
            export = [layers] if isinstance(layers, numbers.Integral) else list(layers)
            for b in export:
                self._index(b)
            if 0 in export:
                raise InvalidArgumentError(
                    "llama.cpp cannot steer block 0 and refuses a file with direction.0; leave block 0 out"
                )
            if not export:
                raise InvalidArgumentError("to_gguf() needs at least one layer")
            if len(set(export)) != len(export):
                raise InvalidArgumentError(f"to_gguf() got repeated layers {export}")
        export = sorted(export)
        coef = float(coef)
        tensors = []
        for b in export:
            scale = coef * (self.stats[b].diff_norm if magnitude == "raw" else 1.0)
            row = self.directions[self._index(b)]
            tensors.append(row if scale == 1.0 else (row.double() * scale).float())
        stacked = torch.stack(tensors)
        if set(export) == set(self.layers):  # all layers, perhaps reordered: no select() in the provenance
            order = [self._index(b) for b in export]
            sub = SteeringVector(self.directions[order], tuple(export), self.stats, self.provenance)
        else:
            sub = self.select(export)
        payload = {**sub._payload(), "export": {"coef": coef, "magnitude": magnitude}}
        hint = model_hint or self.provenance.get("model_name") or "unknown"

        def write(tmp: Path) -> None:
            writer = gguf.GGUFWriter(str(tmp), "controlvector")
            writer.add_string("controlvector.model_hint", str(hint))
            writer.add_uint32("controlvector.layer_count", len(export))
            writer.add_string("workbench.artifact", ARTIFACT_TYPE)
            writer.add_string("workbench.format_version", FORMAT_VERSION)
            writer.add_string("workbench.layers", _canonical_json(payload["layers"]))
            writer.add_string("workbench.stats", _canonical_json(payload["stats"]))
            writer.add_string("workbench.provenance", _canonical_json(payload["provenance"]))
            writer.add_string("workbench.export", _canonical_json(payload["export"]))
            writer.add_string("workbench.checksum", _checksum(stacked, payload))
            for b, t in zip(export, tensors, strict=True):
                writer.add_tensor(f"direction.{b}", t.numpy().astype(np.float32, copy=False))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()

        return _atomic_write(path, write, "GGUF control vector")

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> SteeringVector:
        """Read a GGUF control vector (ours, repeng's or llama.cpp's): ``direction.N`` becomes block ``N``.

        A file written by :meth:`to_gguf` comes back with its stats and provenance (the directions exactly,
        for the default ``coef=1, magnitude="unit"``); its checksum is verified. A foreign file gives unit
        directions with ``diff_norm`` = the tensor's norm (so :meth:`raw` is the tensor) and provenance from
        ``controlvector.model_hint``. Refuses (ArtifactError) a missing or non-GGUF file, another
        architecture, a file without ``direction.N`` tensors, and malformed direction tensors.
        """
        import gguf

        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"{path}: no such file; check the path")
        try:
            reader = gguf.GGUFReader(str(path))
        except Exception as e:
            raise ArtifactError(f"{path} is not a readable GGUF file ({e})") from None

        def text(key: str) -> str | None:
            f = reader.get_field(key)
            if f is None:
                return None
            try:
                value = f.contents()
            except (UnicodeDecodeError, ValueError, TypeError, IndexError):
                raise ArtifactError(f"{path}: its {key!r} field is damaged; re-export the file") from None
            return value if isinstance(value, str) else None

        arch = text("general.architecture")
        if arch != "controlvector":
            raise ArtifactError(f"{path} is a GGUF file of architecture {arch!r}, not a control vector")
        found: dict[int, np.ndarray] = {}
        for t in reader.tensors:
            if not t.name.startswith("direction."):
                continue
            suffix = t.name.removeprefix("direction.")
            if not suffix.isdigit():
                raise ArtifactError(f"{path}: tensor {t.name!r} has no layer number; the file is malformed")
            if t.tensor_type != gguf.GGMLQuantizationType.F32 or len(t.shape) != 1:
                raise ArtifactError(
                    f"{path}: tensor {t.name!r} is not a 1-D float32 vector; the file is malformed"
                )
            found[int(suffix)] = np.array(t.data, dtype=np.float32, copy=True).reshape(-1)
        if not found:
            raise ArtifactError(f"{path} has no direction.N tensors, so it holds no control vector")
        layers = tuple(sorted(found))
        sizes = {v.shape[0] for v in found.values()}
        if len(sizes) != 1:
            raise ArtifactError(
                f"{path}: direction tensors have different sizes {sorted(sizes)}; the file is malformed"
            )
        stacked = torch.from_numpy(np.stack([found[b] for b in layers]))

        if text("workbench.artifact") == ARTIFACT_TYPE:
            try:
                payload = {
                    key: json.loads(text(f"workbench.{key}") or "null")
                    for key in ("layers", "stats", "provenance", "export")
                }
                expected = _checksum(stacked, payload)
            except (TypeError, ValueError):
                raise ArtifactError(
                    f"{path}: its workbench metadata is not valid JSON; the file is damaged"
                ) from None
            if expected != text("workbench.checksum"):
                raise ArtifactError(
                    f"{path} was modified after it was saved (checksum mismatch); re-export it with to_gguf()"
                )
            try:
                stats = {int(b): LayerStats.from_json(s) for b, s in payload["stats"].items()}
                coef, magnitude = float(payload["export"]["coef"]), payload["export"]["magnitude"]
                rows = []
                for b in layers:
                    scale = coef * (stats[b].diff_norm if magnitude == "raw" else 1.0)
                    row = stacked[layers.index(b)].double() / scale
                    norm = float(torch.linalg.vector_norm(row))
                    rows.append(row if abs(norm - 1.0) <= 1e-6 else row / norm)
                return cls(torch.stack(rows).float(), layers, stats, payload["provenance"])
            except (WorkbenchError, TypeError, ValueError, KeyError, AttributeError) as e:
                raise ArtifactError(f"{path} holds an inconsistent workbench control vector ({e})") from None

        norms = torch.linalg.vector_norm(stacked.double(), dim=1)
        zero = [b for b, n in zip(layers, norms.tolist(), strict=True) if not (math.isfinite(n) and n > 0)]
        if zero:
            raise ArtifactError(
                f"{path}: direction tensors at layers {_layers_text(zero)} are zero or not finite"
            )
        return cls.from_directions(
            stacked,
            layers,
            model_name=text("controlvector.model_hint"),
            method="gguf",
            source=path.name,
        )


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
    out = {}
    for b in shared:
        a, c = v.directions[v.layers.index(b)].double(), w.directions[w.layers.index(b)].double()
        value = float(torch.dot(a, c) / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(c)))
        out[b] = max(-1.0, min(1.0, value))
    return out
