"""Extraction methods: functions ``(pos [n, d_model], neg [m, d_model]) -> unit direction [d_model]``.

One callable type, :data:`Method`, and one small function per method, as steering-vectors' aggregators.
:data:`METHODS` names them for ``SteeringVector.from_activations(..., method="pca")``; any function of the
same type can be passed directly or added to it. :func:`extract` runs a method at every layer of two
activation sets, after checking that the sets can define a direction together, and returns each layer's
:class:`LayerStats` with the direction.

:func:`gentle_push` (Scalena, Fersini and Nissim 2024) is a method of another kind: per-step vectors of
every attention head, built by generating (:mod:`workbench.gentle_push`, imported on first use, since
generation sits above this module).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from workbench.activations import Activations
from workbench.errors import InvalidArgumentError, ShapeMismatchError, WorkbenchError

if TYPE_CHECKING:
    from workbench.gentle_push import gentle_push

__all__ = [
    "METHODS",
    "PAIRED_METHODS",
    "ZERO_RTOL",
    "LayerStats",
    "Method",
    "diff_in_means",
    "extract",
    "gentle_push",
    "pca",
    "probe",
    "resolve",
    "unit",
]

#: Settings that must agree between a positive and a negative set.
MUST_MATCH = ("model_name", "weights_hash", "hook", "position", "chat")

Method = Callable[[Float[Tensor, "n d_model"], Float[Tensor, "m d_model"]], Float[Tensor, " d_model"]]

#: Below this fraction of the operands' norm, a difference is float32 round-off, not a signal.
ZERO_RTOL = 1e-6


def unit(v: Float[Tensor, " d_model"], what: str) -> Float[Tensor, " d_model"]:
    """``v / |v|``; refuses a zero or non-finite ``v`` (``what`` names it in the message)."""
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
    return unit(pos.mean(0) - neg.mean(0), "the mean difference")


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
    _, singular, vh = torch.linalg.svd(diffs - mean, full_matrices=False)
    scale = torch.linalg.vector_norm(diffs, dim=1).max()
    if singular.numel() == 0 or singular[0] <= ZERO_RTOL * scale or singular[0] == 0:
        raise InvalidArgumentError(
            "the paired differences do not vary (all pairs differ by the same vector, or there is one pair), "
            "so they have no first principal component; use method='diff_in_means'"
        )
    direction = vh[0]
    if torch.dot(direction, mean) < 0:
        direction = -direction
    return unit(direction, "the first principal component")


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
    return unit(w, "the probe's weight vector")


#: Extraction methods by name. Add your own ``(pos, neg) -> direction`` function here to use it by name.
METHODS: dict[str, Method] = {"diff_in_means": diff_in_means, "pca": pca, "probe": probe}
#: Methods that pair ``pos[i]`` with ``neg[i]`` and so refuse ``paired=False``.
PAIRED_METHODS: set[str] = {"pca"}


def resolve(method: str | Method) -> tuple[str, Method]:
    """``(name, function)`` for a name in :data:`METHODS` or a function (named by its ``__name__``)."""
    if callable(method):
        return getattr(method, "__name__", "custom"), method
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown method {method!r}; use one of {', '.join(sorted(METHODS))}")
    return method, METHODS[method]


@dataclass(frozen=True, kw_only=True)
class LayerStats:
    """What is known about one layer of a vector; fields an operation cannot know (after ``v + w``) are None.

    ``diff_norm``: the vector's magnitude (extracted: ``|mean(pos) - mean(neg)|``). ``pos_mean_proj`` /
    ``neg_mean_proj``: mean ``x · direction`` over each set; ``n_pos`` / ``n_neg``: set sizes; ``resid_norm``:
    mean ``|x|`` over both sets, the layer's residual scale (scaling or negating the vector keeps it).
    """

    diff_norm: float
    pos_mean_proj: float | None = None
    neg_mean_proj: float | None = None
    n_pos: int | None = None
    n_neg: int | None = None
    resid_norm: float | None = None

    def __post_init__(self) -> None:
        for name in ("diff_norm", "pos_mean_proj", "neg_mean_proj", "resid_norm"):
            value, rule = getattr(self, name), "> 0" if name == "diff_norm" else "or None"
            if value is None and rule == "or None":
                continue
            if not (
                isinstance(value, numbers.Real) and math.isfinite(value) and (rule != "> 0" or value > 0)
            ):
                raise InvalidArgumentError(f"{name} must be a finite number {rule}, got {value!r}")
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
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> LayerStats:
        return cls(**{f.name: obj.get(f.name) for f in dataclasses.fields(cls)})

    def negated(self) -> LayerStats:
        """Stats of the opposite direction: the sets swap roles and projections change sign."""
        pos, neg = (None if x is None else -x for x in (self.neg_mean_proj, self.pos_mean_proj))
        return dataclasses.replace(
            self, pos_mean_proj=pos, neg_mean_proj=neg, n_pos=self.n_neg, n_neg=self.n_pos
        )

    def with_norm(self, diff_norm: float) -> LayerStats:
        return dataclasses.replace(self, diff_norm=diff_norm)


def _check_sets(pos: Activations, neg: Activations, method: str, paired: bool) -> None:
    """Refuse two sets that cannot define a direction together (see :func:`extract`)."""
    if pos.n == 0:
        raise InvalidArgumentError("the positive set is empty; a steering vector needs positive examples")
    if neg.n == 0:
        raise InvalidArgumentError(
            "the negative set is empty; one class cannot define a direction: collect a contrasting set"
        )
    if pos.layers != neg.layers:
        raise ShapeMismatchError(
            f"positive activations are at layers ({', '.join(map(str, pos.layers))}) but negative at "
            f"({', '.join(map(str, neg.layers))}); collect both sets at the same layers"
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
    if not paired and method in PAIRED_METHODS:
        raise InvalidArgumentError(
            f"method {method!r} needs paired sets; pass paired=True with equal-size sets"
        )
    for key in MUST_MATCH:
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


def _at_layer(p: Tensor, q: Tensor, layer: int, name: str, fn: Method) -> tuple[Tensor, LayerStats]:
    """The unit direction ``fn`` finds in float64 sets ``p``/``q`` at one layer, and its statistics there."""
    mean_p, mean_q = p.mean(0), q.mean(0)
    diff_norm = float(torch.linalg.vector_norm(mean_p - mean_q))
    scale = max(float(torch.linalg.vector_norm(mean_p)), float(torch.linalg.vector_norm(mean_q)))
    if diff_norm == 0 or diff_norm <= ZERO_RTOL * scale:
        raise InvalidArgumentError(
            f"at layer {layer} the positive and negative means coincide (difference norm "
            f"{diff_norm:.3g}), so there is no direction; drop that layer or check the sets"
        )
    try:
        direction = torch.as_tensor(fn(p, q), dtype=torch.float64)
    except WorkbenchError as e:
        raise type(e)(f"layer {layer}, method {name!r}: {e}") from None
    if direction.shape != (p.shape[1],):
        raise ShapeMismatchError(
            f"method {name!r} returned shape {tuple(direction.shape)} at layer {layer}, not ({p.shape[1]},)"
        )
    direction = unit(direction, f"method {name!r}'s direction at layer {layer}")
    stats = LayerStats(
        diff_norm=diff_norm,
        pos_mean_proj=float((p @ direction).mean()),
        neg_mean_proj=float((q @ direction).mean()),
        n_pos=p.shape[0],
        n_neg=q.shape[0],
        resid_norm=float(torch.linalg.vector_norm(torch.cat([p, q]), dim=1).mean()),
    )
    return direction, stats


def extract(
    pos: Activations, neg: Activations, method: str | Method = "diff_in_means", *, paired: bool = True
) -> tuple[str, Float[Tensor, "layer d_model"], list[LayerStats]]:
    """Run ``method`` at every layer of ``pos``/``neg``: ``(method name, unit directions, stats per layer)``.

    Works in float64. Refuses
    empty sets, unequal sizes when ``paired``, a paired-only method when not, different layers, d_model or
    model/hook/position settings, NaN or inf, a layer where the means coincide, and a method that returns
    the wrong shape or a zero vector.
    """
    name, fn = resolve(method)
    _check_sets(pos, neg, name, paired)
    rows, stats = [], []
    for j, layer in enumerate(pos.layers):
        direction, layer_stats = _at_layer(
            pos.tensor[:, j].double(), neg.tensor[:, j].double(), layer, name, fn
        )
        rows.append(direction)
        stats.append(layer_stats)
    return name, torch.stack(rows), stats


def __getattr__(name: str) -> Any:
    if name == "gentle_push":
        from workbench.gentle_push import gentle_push

        return gentle_push
    raise AttributeError(f"module 'workbench.methods' has no attribute {name!r}")
