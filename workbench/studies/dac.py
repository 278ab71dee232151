"""Dynamic Activation Composition in the studies: each rule under its own name, and a fixed control at a
run's mean strength.

Two rules of :mod:`workbench.schedules` reach the tables, each named where it shows: :data:`AUTHORS`
(``dynamic (authors')``: :meth:`DynamicStrength.authors`, the KL divergence averaged over the nucleus,
steering from the last prompt token on, :data:`~workbench.schedules.AUTHORS_POSITIONS`), as Scalena, Sarti
and Nissim's code runs it, and :data:`SUMMED` (``dynamic (summed)``: :meth:`DynamicStrength.summed`, the
schedule's default, the KL summed over the nucleus, at the interventions' own positions; not the authors').

A dynamic setting and a fixed one differ in mean strength as well as in adaptivity, so each dynamic run gets a
fixed control at its own mean ``α``: :func:`traced_strengths` generates the run's test prompts once more with
a :class:`~workbench.schedules.StrengthTrace` (cached beside the study) and gives each strength column's mean
``α`` (:func:`~workbench.schedules.mean_strength`) and share of steps at the cap; :func:`at_mean_strength`
is the run's interventions without schedule, each ``coef`` times its column's mean ``α``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from workbench.errors import InvalidArgumentError
from workbench.generation import generate
from workbench.interventions import Intervention
from workbench.models import Model
from workbench.recipes import cached_rows
from workbench.runner import steering_key
from workbench.schedules import AUTHORS_POSITIONS, DynamicStrength, StrengthTrace, mean_strength

__all__ = [
    "AUTHORS",
    "SUMMED",
    "VARIANTS",
    "Strengths",
    "Variant",
    "at_mean_strength",
    "column_labels",
    "traced_strengths",
]

#: Changes with what a cached trace holds.
TRACE_VERSION = 1


@dataclass(frozen=True)
class Variant:
    """A named rule of dynamic strength: the KL divergence averaged over the nucleus (``mean_over_tokens``)
    or summed, the positions it steers (None: each intervention's own), and what it is, for a page."""

    name: str
    mean_over_tokens: bool
    positions: str | None
    rule: str

    @property
    def strength(self) -> str:
        """The table's ``strength`` value: ``dynamic (authors')``, ``dynamic (summed)``."""
        return f"dynamic ({self.name})"

    def spec(self, group: str | None = None, max_strength: float = 2.0) -> DynamicStrength:
        """The rule's :class:`DynamicStrength` for ``group`` with bound ``max_strength``."""
        rule = DynamicStrength.authors if self.mean_over_tokens else DynamicStrength.summed
        return dataclasses.replace(rule(group), max_strength=max_strength)

    def schedule(
        self, interventions: Sequence[Intervention], group: str | None = None, max_strength: float = 2.0
    ) -> tuple[Intervention, ...]:
        """``interventions`` (``add`` each) under this rule, one strength for all when ``group`` is given,
        without linear decay (the schedule is theirs), at the rule's positions."""
        spec = self.spec(group, max_strength)
        out = []
        for iv in interventions:
            if iv.mode != "add":
                raise InvalidArgumentError(f"a dynamic strength scales an 'add'; {iv.label} is {iv.mode}")
            positions = self.positions or iv.positions
            out.append(dataclasses.replace(iv, schedule=spec, decay_tokens=0, positions=positions))
        return tuple(out)


#: The authors' rule (Scalena, Sarti and Nissim's code): mean KL over the nucleus, from the last prompt token on.
AUTHORS = Variant(
    "authors'",
    True,
    AUTHORS_POSITIONS,
    "α_t = clip(KL(P‖Q) averaged over the union top-p set, 0, α_max) per token, steering from the last "
    "prompt token on (positions response): the authors' rule, as Scalena, Sarti and Nissim's code runs it",
)
#: The schedule's default: the KL summed over the nucleus, at each intervention's own positions.
SUMMED = Variant(
    "summed",
    False,
    None,
    "α_t = clip(KL(P‖Q) summed over the union top-p set, 0, α_max): |S| times the authors' value, at the "
    "interventions' own positions (with 'all', α_0 also scales every prompt position); the schedule's "
    "default, not the authors' rule",
)
VARIANTS = (AUTHORS, SUMMED)


def column_labels(interventions: Sequence[Intervention]) -> list[str | None]:
    """Each intervention's strength column as a :class:`~workbench.schedules.StrengthTrace` labels it (its
    own label, or its group's labels joined by `` & ``); None for a fixed one."""
    groups: dict[object, list[int]] = {}
    for k, iv in enumerate(interventions):
        if iv.schedule is not None:
            group = iv.schedule.group if iv.schedule.group is not None else -1 - k
            groups.setdefault(group, []).append(k)
    labels: list[str | None] = [None] * len(interventions)
    for members in groups.values():
        label = " & ".join(interventions[k].label for k in members)
        for k in members:
            labels[k] = label
    return labels


@dataclass(frozen=True)
class Strengths:
    """What a dynamic run's strengths did on its prompts, per strength column (its trace label): ``mean``
    α over every generated token, the share of steps ``at_cap`` (α at its bound), and the traced run's
    ``responses`` (to compare with the table's)."""

    mean: dict[str, float]
    at_cap: dict[str, float]
    responses: list[str]


def _trace_rows(
    model: Model, prompts: list[str], ivs: list[Intervention], tokens: int, batch: int
) -> pd.DataFrame:
    trace = StrengthTrace()
    responses = generate(
        model, prompts, max_new_tokens=tokens, batch_size=batch, interventions=ivs, trace=trace
    )
    rows = [
        {"row": i, "label": label, "strengths": alphas.tolist(), "response": response}
        for i, (labels, strengths, response) in enumerate(
            zip(trace.labels, trace.strengths, responses, strict=True)
        )
        for label, alphas in zip(labels, strengths, strict=True)
    ]
    return pd.DataFrame(rows, columns=["row", "label", "strengths", "response"])


def traced_strengths(
    model: Model,
    prompts: Sequence[str],
    interventions: Sequence[Intervention],
    *,
    max_new_tokens: int,
    batch_size: int,
    path: Path,
) -> Strengths:
    """Generate ``prompts`` (chat, greedy) under ``interventions`` with a strength trace, as a study's grid
    generates them, and summarise the strengths; the trace is stored at ``path`` (parquet) and read back
    while the model, prompts, interventions, budget and batch size are the same."""
    labels = column_labels(interventions)
    caps = {
        lab: iv.schedule.max_strength
        for iv, lab in zip(interventions, labels, strict=True)
        if lab is not None and iv.schedule is not None
    }
    if not caps:
        raise InvalidArgumentError("traced_strengths needs at least one intervention with a dynamic schedule")
    ivs, texts = list(interventions), list(prompts)
    key = {
        "version": TRACE_VERSION,
        "model": model.fingerprint,
        "prompts": hashlib.sha256(json.dumps(texts).encode()).hexdigest(),
        "steering": steering_key(ivs),
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
    }
    rows = cached_rows(path, key, lambda: _trace_rows(model, texts, ivs, max_new_tokens, batch_size))
    trace = StrengthTrace()
    for _, part in rows.groupby("row", sort=True):
        alphas = torch.tensor([list(a) for a in part["strengths"]], dtype=torch.float64)
        trace.append(part["label"].tolist(), alphas, torch.zeros_like(alphas))
    at_cap = {}
    for label, cap in caps.items():
        steps = [alpha for run in rows.loc[rows["label"] == label, "strengths"] for alpha in run]
        at_cap[label] = sum(alpha >= cap - 1e-6 for alpha in steps) / len(steps) if steps else float("nan")
    responses = rows.drop_duplicates("row").sort_values("row")["response"].tolist()
    return Strengths(mean_strength(trace), at_cap, responses)


def at_mean_strength(interventions: Sequence[Intervention], strengths: Strengths) -> tuple[Intervention, ...]:
    """The fixed control of a dynamic run: ``interventions`` without schedule, each dynamic one's ``coef``
    (1 diff-norm when it has none) times its strength column's mean ``α`` in ``strengths``."""
    out = []
    for iv, label in zip(interventions, column_labels(interventions), strict=True):
        if label is None:
            out.append(iv)
            continue
        if label not in strengths.mean:
            raise InvalidArgumentError(f"no mean strength of {label!r}: the trace generated no token with it")
        coef, unit = (iv.coef, iv.unit) if iv.coef is not None else (1.0, "diff_norm")
        out.append(dataclasses.replace(iv, schedule=None, coef=coef * strengths.mean[label], unit=unit))
    return tuple(out)
