"""Strength schedules: Dynamic Activation Composition (Scalena, Sarti and Nissim, BlackboxNLP 2024).

An ``add`` :class:`~workbench.steering.Intervention` with a :class:`DynamicStrength` adds ``α_t · c · u``
at generation step ``t`` instead of ``c · u``, where

    α_t = clip( D( P_t^S ‖ Q_t^S ), 0, α_max )

``P_t`` is the next-token distribution of the *reference* run (the same tokens with the row's dynamic
interventions off, its fixed ones on), ``Q_t`` that of a *probe* run that adds this intervention (or its
``group``) at ``α_max`` at every position its ``positions`` rule selects, and ``·^S`` restricts both to
``S``, the union of their top-p nucleus sets, renormalised over it. Each dynamic intervention (or group) gets
its own ``α_t`` per row and step: steering pushes where the model would not go by itself and backs off where
it already does. One side forward per generated token, on its own KV cache, runs the reference and every
probe of the batch as rows of one batch. The step index ``t`` counts forwards of one generation: ``α_0`` is
computed at the prefill and applies to every prompt position the ``positions`` rule selects; ``α_t`` to the
position that predicts generated token ``t``.

**The authors' rule** is :meth:`DynamicStrength.authors` with ``positions=AUTHORS_POSITIONS``
(``"response"``): ``D`` is the KL divergence *averaged* over ``S`` (``mean_over_tokens=True``), ``α_max`` 2,
top-p 0.95, and only the positions that predict a new token are steered (the last prompt token, with
``α_0``, then each generated one); the probe steers those same positions at ``α_max``. That is the authors'
code, github.com/DanielSc4/Dynamic-Activation-Composition at d5431bc, ``src/delta.py``,
``generate_dynamic_edited_model(_composition)``: ``F.kl_div(log Q, log P, reduction='batchmean',
log_target=True)`` on the 1-D vector over ``S`` (= KL(P‖Q) / ``|S|``), ``max(min(kl, 2), 0)``,
``starting_alpha=2.0`` on every position from ``initial_prompt_len - 1`` on in the probe, ``alpha_used[i]``
at position ``initial_prompt_len - 1 + i`` in the steered run, and no edit of earlier prompt positions.
They add a raw mean-difference vector per generation step at the attention output of every layer, with one
``α`` per property (here: one vector per layer, on the residual stream; a ``group`` shares one ``α``).

**The summed rule**, :meth:`DynamicStrength.summed` (also ``DynamicStrength()`` and ``"dynamic"``), takes
``D`` as the KL divergence itself, summed over ``S``: ``|S|`` times the authors' value, so it sits at the
bound far more often (labels: ``dyn2`` summed, ``dyn2m`` the authors'). With ``positions="all"`` its ``α_0``
also scales every prompt position. :func:`mean_strength` gives a run's mean ``α`` per intervention, for a
fixed control at the same mean strength.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from workbench.errors import InvalidArgumentError

#: The positions the authors steer: from the last prompt token on (every position that predicts a new token).
AUTHORS_POSITIONS = "response"


@dataclass(frozen=True)
class DynamicStrength:
    """Per-step strength ``α_t ∈ [0, max_strength]`` from the KL divergence of probe and reference runs.

    Interventions of one row with the same ``group`` share one ``α_t``, probed together (the paper steers
    a property at every layer with one strength); without a group each intervention has its own.
    """

    max_strength: float = 2.0
    top_p: float = 0.95
    mean_over_tokens: bool = False
    group: str | None = None

    @classmethod
    def authors(cls, group: str | None = None) -> DynamicStrength:
        """The authors' rule: KL averaged over the nucleus, ``α_max`` 2, top-p 0.95; steer with
        ``positions=AUTHORS_POSITIONS``."""
        return cls(2.0, 0.95, mean_over_tokens=True, group=group)

    @classmethod
    def summed(cls, group: str | None = None) -> DynamicStrength:
        """The KL divergence summed over the nucleus (``|S|`` times the authors'), ``α_max`` 2, top-p 0.95:
        the default."""
        return cls(2.0, 0.95, mean_over_tokens=False, group=group)

    def __post_init__(self) -> None:
        if not isinstance(self.max_strength, int | float) or not math.isfinite(self.max_strength):
            raise InvalidArgumentError(f"max_strength must be a finite number, got {self.max_strength!r}")
        if self.max_strength <= 0:
            raise InvalidArgumentError(f"max_strength must be > 0, got {self.max_strength}")
        if not isinstance(self.top_p, int | float) or not 0 < self.top_p <= 1:
            raise InvalidArgumentError(f"top_p must be in (0, 1], got {self.top_p!r}")

    @property
    def label(self) -> str:
        """Every setting that changes outputs (labels key cached answers): ``dyn2``, ``dyn1p0.9m[style]``."""
        top_p = "" if self.top_p == 0.95 else f"p{self.top_p:g}"
        group = "" if self.group is None else f"[{self.group}]"
        return f"dyn{self.max_strength:g}{top_p}{'m' if self.mean_over_tokens else ''}{group}"


def nucleus(logits: Float[Tensor, "n vocab"], top_p: Float[Tensor, "n 1"]) -> Bool[Tensor, "n vocab"]:
    """Each row's top-p set: the likeliest tokens until their mass exceeds ``top_p`` (that one kept)."""
    ordered, order = logits.sort(dim=-1, descending=True)
    mass = ordered.softmax(-1).cumsum(-1)
    keep = torch.cat([torch.ones_like(mass[:, :1], dtype=torch.bool), mass[:, :-1] <= top_p], dim=-1)
    return torch.zeros_like(keep).scatter(-1, order, keep)


def dynamic_strengths(
    reference: Float[Tensor, "n vocab"],
    probe: Float[Tensor, "n vocab"],
    specs: list[DynamicStrength],
) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"]]:
    """``(α, KL)`` per row: the strength each row's spec gives, and the divergence it came from."""
    reference, probe = reference.float(), probe.float()
    device = reference.device
    top_p = torch.tensor([s.top_p for s in specs], device=device)[:, None]
    keep = nucleus(reference, top_p) | nucleus(probe, top_p)
    log_p = reference.masked_fill(~keep, -math.inf).log_softmax(-1)
    log_q = probe.masked_fill(~keep, -math.inf).log_softmax(-1)
    kl = torch.where(keep, log_p.exp() * (log_p - log_q), 0.0).sum(-1)
    mean = torch.tensor([s.mean_over_tokens for s in specs], device=device)
    kl = torch.where(mean, kl / keep.sum(-1), kl)
    top = torch.tensor([float(s.max_strength) for s in specs], device=device)
    return torch.minimum(kl.clamp_min(0.0), top), kl


@dataclass
class StrengthTrace:
    """What dynamic strengths did, per prompt: pass one to ``generate(..., trace=...)`` and plot it.

    ``labels[i]`` names prompt ``i``'s dynamic interventions; ``strengths[i]`` and ``kl[i]`` are
    ``[n_dynamic, n_tokens]``: the ``α_t`` each generated token was produced with and the KL it came from
    (steps after the row's end of text are dropped).
    """

    labels: list[list[str]] = field(default_factory=list)
    strengths: list[Tensor] = field(default_factory=list)
    kl: list[Tensor] = field(default_factory=list)

    def append(self, labels: list[str], strengths: Tensor, kl: Tensor) -> None:
        self.labels.append(labels)
        self.strengths.append(strengths)
        self.kl.append(kl)


def mean_strength(trace: StrengthTrace) -> dict[str, float]:
    """Mean ``α_t`` over every generated token of a run, per dynamic intervention (label), pooled over the
    prompts: a fixed control at the same mean multiplies that intervention's ``coef`` by it."""
    if not isinstance(trace, StrengthTrace):
        raise InvalidArgumentError(f"mean_strength takes a StrengthTrace, got {type(trace).__name__}")
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for labels, strengths in zip(trace.labels, trace.strengths, strict=True):
        for label, row in zip(labels, strengths, strict=True):
            sums[label] = sums.get(label, 0.0) + float(row.double().sum())
            counts[label] = counts.get(label, 0) + row.numel()
    return {label: sums[label] / n for label, n in counts.items() if n}


class StrengthHistory:
    """The strengths one generation has used so far: one column per (row, dynamic intervention)."""

    def __init__(self, labels: list[str], rows: list[int], n_rows: int) -> None:
        self.labels, self.rows, self.n_rows = labels, rows, n_rows
        self.reset()

    def reset(self) -> None:
        self.alphas: list[Tensor] = []
        self.kls: list[Tensor] = []
        #: ``[columns + 1, steps]``: column ``j``'s strength at each step; the last row is ones (fixed edits).
        self.table = torch.ones(len(self.labels) + 1, 1)

    def push(self, alpha: Float[Tensor, " columns"], kl: Float[Tensor, " columns"]) -> None:
        self.alphas.append(alpha)
        self.kls.append(kl)
        steps = torch.stack(self.alphas, 1)
        self.table = torch.cat([steps, torch.ones_like(steps[:1])])

    def record(self, trace: StrengthTrace) -> None:
        """Append each row's labels, strengths and KL divergences (``[n_dynamic, steps]``) to ``trace``."""
        empty = torch.zeros(len(self.labels), 0)
        alphas = torch.stack(self.alphas, 1).cpu() if self.alphas else empty
        kls = torch.stack(self.kls, 1).cpu() if self.kls else empty
        for r in range(self.n_rows):
            mine = [j for j, row in enumerate(self.rows) if row == r]
            trace.append([self.labels[j] for j in mine], alphas[mine], kls[mine])
