"""The steering engine: :mod:`workbench.interventions` applied through TransformerLens hooks.

``steer(model, *interventions)`` applies any number of them to every row; :func:`steer_rows` gives each
row of a batch its own list, so a grid of configurations runs as one batched pass. Both always remove
their hooks, on exit and on exception. Every steering tensor is moved to the device and dtype of the
activation it edits when the hook runs (once per pair), so a model split over devices steers correctly.
An ``add`` with ``schedule=DynamicStrength(...)`` sets its strength per row and generated token
(:mod:`workbench.schedules`).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from workbench.errors import InvalidArgumentError, ShapeMismatchError
from workbench.gated_steering import GatedIntervention, GateSlots
from workbench.head_steering import HeadIntervention, HeadSlots
from workbench.interventions import AnyIntervention, Intervention, check_intervention
from workbench.models import Model
from workbench.positions import PositionTracker, tracker_for, tracking
from workbench.schedules import StrengthHistory, StrengthTrace, dynamic_strengths


@dataclass(frozen=True)
class _Edit:
    """An intervention as one row of a slot sees it: ``gain`` multiplies its amount (a probe's α_max),
    ``column`` is its row of per-step dynamic strengths (-1: fixed)."""

    iv: Intervention
    gain: float = 1.0
    column: int = -1


@dataclass
class _Placed:
    """A slot's tensors on one device, in one dtype."""

    u: Tensor  # [rows, d]
    amount: Tensor  # [rows, 1]
    is_projection: Tensor  # [rows, 1] bool
    active: Tensor  # [rows, 1] float
    decay: Tensor  # [rows, 1] float
    norm_preserving: Tensor  # [rows, 1] bool
    column: Tensor  # [rows] long
    rules: list[tuple[str, Tensor]]  # (position rule, [rows, 1] bool: rows that use it)


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
    column: Tensor  # [rows] long, -1 for a fixed strength

    def __post_init__(self) -> None:
        # Per-step work is only tensor arithmetic: which branches apply is decided once, here, and the
        # tensors are placed once per (dtype, device) of the activations they edit (no host-device syncs).
        self.any_projection = bool(self.is_projection.any())
        self.any_norm = bool(self.norm_preserving.any())
        self.any_decay = bool((self.decay > 0).any())
        self.any_dynamic = bool((self.column >= 0).any())
        self.everywhere = bool(self.active.all()) and all(p == "all" for p in self.positions)
        self._placed: dict[tuple[torch.dtype, torch.device], _Placed] = {}

    def placed(self, dtype: torch.dtype, device: torch.device) -> _Placed:
        placed = self._placed.get((dtype, device))
        if placed is None:
            rules = sorted(set(self.positions) - {"all"})
            placed = self._placed[(dtype, device)] = _Placed(
                u=self.u.to(device, dtype),
                amount=self.amount.to(device, dtype)[:, None],
                is_projection=self.is_projection.to(device)[:, None],
                active=self.active.to(device).float()[:, None],
                decay=self.decay.to(device)[:, None],
                norm_preserving=self.norm_preserving.to(device)[:, None],
                column=self.column.to(device),
                rules=[
                    (rule, torch.tensor([p == rule for p in self.positions], device=device)[:, None])
                    for rule in rules
                ],
            )
        return placed

    def apply(
        self,
        x: Float[Tensor, "batch seq d"],
        tracker: PositionTracker,
        history: Float[Tensor, "cols steps"] | None = None,
    ) -> Float[Tensor, "batch seq d"]:
        """``x`` edited; ``history`` is ``[columns + 1, steps]`` of dynamic strengths (last row ones)."""
        t = self.placed(x.dtype, x.device)
        seq = x.shape[1]
        weight = None if self.everywhere else tracker.weight(t.rules, t.active, seq, x.device).to(x.dtype)
        amount = t.amount
        if self.any_decay:
            amount = amount * self._decay(t, seq, tracker, x.device).to(x.dtype)
        if self.any_dynamic and history is not None:
            amount = amount * self._dynamic(t, seq, tracker, history).to(x.dtype)
        if self.any_projection:
            projection = torch.einsum("bsd,bd->bs", x, t.u.expand(x.shape[0], -1))
            amount = torch.where(t.is_projection, amount - projection, amount)
        scaled = amount if weight is None else amount * weight
        steered = x + scaled[..., None] * t.u[:, None, :]
        if self.any_norm:
            rescale = x.norm(dim=-1, keepdim=True) / steered.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            keep = t.norm_preserving if weight is None else t.norm_preserving & (weight > 0)
            steered = torch.where(keep[..., None], steered * rescale, steered)
        return steered

    @staticmethod
    def _decay(t: _Placed, seq: int, tracker: PositionTracker, device: torch.device) -> Tensor:
        step = tracker.steps(seq, device).float().clamp_min(0)
        fade = (1 - step / t.decay.clamp_min(1)).clamp_min(0)
        return torch.where(t.decay > 0, fade, torch.ones_like(fade))

    @staticmethod
    def _dynamic(t: _Placed, seq: int, tracker: PositionTracker, history: Tensor) -> Tensor:
        """Each position's strength: α_0 for the prompt, α_i where generated token i is predicted."""
        table = history.to(t.column.device)[t.column]  # column -1 is the last row: ones
        step = (tracker.steps(seq, table.device) + 1).clamp(0, table.shape[1] - 1)
        return table.gather(1, step.expand(table.shape[0], -1))


def _build_slots(rows: Sequence[Sequence[_Edit]]) -> dict[int, list[_Slot]]:
    """Group each row's interventions by layer into slots of per-row tensors (built on the CPU)."""
    per_layer: dict[int, list[list[_Edit | None]]] = {}
    for r, row in enumerate(rows):
        counts: dict[int, int] = {}
        for edit in row:
            slots = per_layer.setdefault(edit.iv.layer, [])
            k = counts.get(edit.iv.layer, 0)
            counts[edit.iv.layer] = k + 1
            if k == len(slots):
                slots.append([None] * len(rows))
            slots[k][r] = edit
    built: dict[int, list[_Slot]] = {}
    for layer, slots in per_layer.items():
        built[layer] = []
        for slot in slots:
            d = next(e for e in slot if e is not None).iv.vector.d_model
            zero = torch.zeros(d)
            built[layer].append(
                _Slot(
                    u=torch.stack([e.iv.direction() if e else zero for e in slot]),
                    amount=torch.tensor([e.iv.amount() * e.gain if e else 0.0 for e in slot]),
                    is_projection=torch.tensor([bool(e and e.iv.mode != "add") for e in slot]),
                    active=torch.tensor([e is not None for e in slot]),
                    positions=[e.iv.positions if e else "all" for e in slot],
                    decay=torch.tensor([float(e.iv.decay_tokens if e else 0) for e in slot]),
                    norm_preserving=torch.tensor([bool(e and e.iv.norm_preserving) for e in slot]),
                    column=torch.tensor([e.column if e else -1 for e in slot]),
                )
            )
    return built


#: Models whose dynamic-strength side forward (reference and probe rows) is running.
_SIDE_RUNS: weakref.WeakSet[Any] = weakref.WeakSet()


class _Dynamic:
    """The dynamic strengths of one batch, set before each forward of a generation.

    Each forward first runs one side forward, on its own KV cache, holding a *reference* row (the row's
    dynamic interventions off) for every row that has any, and a *probe* row (the reference plus that
    intervention at ``α_max``) for every dynamic intervention: one extra forward for all of them.
    Its last-position logits give ``α_t`` (:func:`workbench.schedules.dynamic_strengths`), which the main
    forward's hooks read. Under full recomputation the side forward recomputes too, with the same result.
    """

    def __init__(self, model: Model, rows: Sequence[Sequence[Intervention]]) -> None:
        self.model, self.n_rows = model, len(rows)
        self.column, members, owners = _columns(rows)
        self.n_columns = len(owners)
        self.specs = [rows[r][ks[0]].schedule for r, ks in zip(owners, members, strict=True)]
        labels = [" & ".join(rows[r][k].label for k in ks) for r, ks in zip(owners, members, strict=True)]
        self.history = StrengthHistory(labels, owners, len(rows))
        refs = sorted(set(owners))
        side = [[_Edit(iv) for iv in rows[r] if iv.schedule is None] for r in refs]
        for r, ks in zip(owners, members, strict=True):
            probe = {k: rows[r][k].schedule.max_strength for k in ks}  # type: ignore[union-attr]
            edits = enumerate(rows[r])
            side.append([_Edit(iv, probe.get(j, 1.0)) for j, iv in edits if j in probe or not iv.schedule])
        self.slots = _build_slots(side)
        self.rows = torch.tensor(refs + owners)
        self.reference = torch.tensor([refs.index(r) for r in owners])
        self.cache_name, self.skips_logits = model.cache_argument, model.skips_logits
        self.running = False
        self.cache: Any = None
        self.total = -1

    def pre_forward(self, module: Any, args: tuple, kwargs: dict) -> None:
        if module in _SIDE_RUNS:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise InvalidArgumentError("dynamic strength needs token ids (input_ids), not inputs_embeds")
        if ids.shape[0] != self.n_rows:
            raise ShapeMismatchError(
                f"dynamic strength was set up for {self.n_rows} rows but the batch has {ids.shape[0]}: "
                "give steer_rows one list of interventions per row"
            )
        cache = kwargs.get(self.cache_name)
        offset = int(cache.get_seq_length()) if cache is not None else 0
        if (offset == 0) if cache is not None else ids.shape[1] != self.total + 1:
            self.history.reset()
            self.cache = None
        self.total = offset + ids.shape[1]
        end = tracker_for(self.model).prompt_end
        if end is not None and self.total - int(end.max()) != len(self.history.alphas):
            raise InvalidArgumentError(
                "dynamic strength is set one generated token at a time: use it in generate, not on given text"
            )
        rows = self.rows.to(ids.device)
        side = {
            k: kwargs[k]
            for k in ("attention_mask", "position_ids", "cache_position")
            if kwargs.get(k) is not None
        }
        side = {k: v[rows] if v.dim() > 1 and v.shape[0] == self.n_rows else v for k, v in side.items()}
        if cache is not None:
            side[self.cache_name] = self.cache
        if self.skips_logits:
            side["logits_to_keep"] = 1
        _SIDE_RUNS.add(module)
        self.running = True
        try:
            out = module(input_ids=ids[rows], use_cache=cache is not None, **side)
        finally:
            _SIDE_RUNS.discard(module)
            self.running = False
        self.cache = out.past_key_values if cache is not None else None
        logits = out.logits[:, -1]
        n_refs = len(rows) - self.n_columns
        alpha, kl = dynamic_strengths(
            logits[:n_refs][self.reference.to(logits.device)], logits[n_refs:], self.specs
        )
        self.history.push(alpha, kl)


def _columns(
    rows: Sequence[Sequence[Intervention]],
) -> tuple[dict[tuple[int, int], int], list[list[int]], list[int]]:
    """One strength column per row and dynamic intervention, or per row and ``group``: ``(row, k)`` ->
    column, each column's interventions (``k``) and each column's row."""
    column: dict[tuple[int, int], int] = {}
    members: list[list[int]] = []
    owners: list[int] = []
    for r, row in enumerate(rows):
        groups: dict[object, int] = {}
        for k, iv in enumerate(row):
            if iv.schedule is None:
                continue
            j = groups.setdefault(
                iv.schedule.group if iv.schedule.group is not None else -1 - k, len(members)
            )
            if j == len(members):
                members.append([])
                owners.append(r)
            elif iv.schedule != row[members[j][0]].schedule:
                raise InvalidArgumentError(
                    f"dynamic group {iv.schedule.group!r} mixes strength settings: give its interventions one"
                )
            members[j].append(k)
            column[(r, k)] = j
    return column, members, owners


@contextmanager
def steer_rows(
    model: Model, rows: Sequence[Sequence[AnyIntervention]], trace: StrengthTrace | None = None
) -> Iterator[Model]:
    """Give row ``i`` of every batch run in this block the interventions ``rows[i]``.

    A single row broadcasts to any batch size (that is :func:`steer`), except with a dynamic strength:
    that needs one row per batch row, and ``trace`` receives each row's per-step strengths on exit.
    Rows may hold :class:`~workbench.head_steering.HeadIntervention` s too (they edit ``hook_z``) and
    :class:`~workbench.gated_steering.GatedIntervention` s (after the layer's interventions).
    """
    for row in rows:
        for iv in row:
            check_intervention(iv).check_fits(model)
    heads = [[iv for iv in row if isinstance(iv, HeadIntervention)] for row in rows]
    pushes = HeadSlots(heads) if any(heads) else None
    gated = [[iv for iv in row if isinstance(iv, GatedIntervention)] for row in rows]
    gates = GateSlots(gated) if any(gated) else None
    rows = [[iv for iv in row if isinstance(iv, Intervention)] for row in rows]
    dynamic = _Dynamic(model, rows) if any(iv.schedule for row in rows for iv in row) else None
    edits = [
        [
            _Edit(iv, column=dynamic.column[(r, k)] if dynamic and iv.schedule else -1)
            for k, iv in enumerate(row)
        ]
        for r, row in enumerate(rows)
    ]
    slots = _build_slots(edits)
    if not slots and pushes is None and gates is None:
        yield model
        return
    with ExitStack() as stack:
        tracker = stack.enter_context(tracking(model))
        if dynamic is not None:
            handle = model.hf_model.register_forward_pre_hook(dynamic.pre_forward, with_kwargs=True)
            stack.callback(handle.remove)
        hooks = [
            (f"blocks.{layer}.hook_resid_post", _hook(layer, layer_slots, tracker, dynamic))
            for layer, layer_slots in slots.items()
        ]
        side = lambda: dynamic.rows if dynamic and dynamic.running else None  # noqa: E731
        if pushes is not None:
            hooks += pushes.hooks(tracker, side)
        if gates is not None:
            hooks += gates.hooks(tracker, side)
        stack.enter_context(model.bridge.hooks(fwd_hooks=hooks))
        yield model
    if dynamic is not None and trace is not None:
        dynamic.history.record(trace)


def _hook(layer: int, slots: list[_Slot], tracker: PositionTracker, dynamic: _Dynamic | None) -> Any:
    def hook(x: Tensor, hook: Any) -> Tensor:
        side = dynamic is not None and dynamic.running
        active = dynamic.slots.get(layer, []) if side else slots  # type: ignore[union-attr]
        if active and active[0].u.shape[0] not in (1, x.shape[0]):
            raise ShapeMismatchError(
                f"per-row interventions were given for {active[0].u.shape[0]} rows but the batch has "
                f"{x.shape[0]} (with a dynamic strength, give all per-row interventions in one steer_rows)"
            )
        history = None if dynamic is None or side else dynamic.history.table
        for slot in active:
            x = slot.apply(x, tracker, history)
        return x

    return hook


@contextmanager
def steer(model: Model, *interventions: AnyIntervention) -> Iterator[Model]:
    """Apply ``interventions`` (at the same or different layers, in order) to every forward in the block."""
    for iv in interventions:
        check_intervention(iv)
    with steer_rows(model, [list(interventions)]):
        yield model
