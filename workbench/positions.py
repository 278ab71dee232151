"""Which token positions a forward pass is looking at, in prompt-relative terms.

During KV-cached generation a hook sees the prefill (every prompt position) and then one position per
step; during full recomputation it sees the whole sequence each step. A :class:`PositionTracker` reads the
KV-cache length before each forward of the Hugging Face model, so hooks can tell the absolute (padded)
position of each token they see, and compare it with where each row's prompt ends.

Position rules, in padded coordinates with prompts left-padded to a common end ``P``:
``"all"`` every position; ``"prompt"`` positions ``< P``; ``"generated"`` positions ``>= P`` (tokens the
model wrote; the first new token is predicted from the last prompt position, so it is *not* steered by
``"generated"`` alone); ``"last_prompt"`` position ``P - 1``; ``"response"`` = ``"last_prompt"`` plus
``"generated"`` (every position that predicts a new token); ``"prompt_tail:K"`` the last ``K`` prompt
positions ``P - K .. P - 1`` (PrOSV's prompt-only steering, their ``lK``: written into the prompt's KV cache,
which carries it to every generated token). A row shorter than ``K`` tokens has all of its prompt steered
(and padding, which nothing attends to), as alone.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from workbench.errors import InvalidArgumentError
from workbench.models import Model

POSITIONS = ("all", "prompt", "generated", "last_prompt", "response")
#: The parametrised rule: the last ``K`` prompt positions, e.g. ``"prompt_tail:5"``.
PROMPT_TAIL = "prompt_tail"
_TAIL = re.compile(rf"{PROMPT_TAIL}:([1-9][0-9]*)")


def check_positions(positions: str) -> str:
    """``positions`` if it names a rule (:data:`POSITIONS` or ``"prompt_tail:K"``, ``K >= 1``), else a
    one-line error."""
    if positions in POSITIONS or (isinstance(positions, str) and _TAIL.fullmatch(positions)):
        return positions
    raise InvalidArgumentError(
        f"unknown positions {positions!r}: use one of {', '.join(POSITIONS)} or {PROMPT_TAIL}:K (K >= 1)"
    )


def tail_length(positions: str) -> int:
    """``K`` of a ``"prompt_tail:K"`` rule; 1 for ``last_prompt``, 0 for every other rule."""
    match = _TAIL.fullmatch(positions)
    return int(match.group(1)) if match else int(positions == "last_prompt")


class PositionTracker:
    """Knows the absolute positions of the current forward pass and where each row's prompt ends."""

    def __init__(self) -> None:
        self.offset = 0
        self.prompt_end: Tensor | None = None  # [batch] or [1], positions < prompt_end are prompt
        self._declared = False
        self._placed: tuple[Tensor | None, dict[torch.device, Tensor]] = (None, {})

    def pre_forward(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"]
        # transformers < 5.24 passes the KV cache as ``past_key_values``, later versions as ``cache``.
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        self.offset = int(cache.get_seq_length()) if cache is not None else 0
        if self.offset == 0 and not self._declared:
            self.prompt_end = torch.tensor([ids.shape[1]], device=ids.device)

    @contextmanager
    def declared(self, prompt_end: Int[Tensor, " batch"]) -> Iterator[None]:
        """Within this block, row ``i``'s prompt ends at padded position ``prompt_end[i]``."""
        previous = (self.prompt_end, self._declared)
        self.prompt_end, self._declared = prompt_end, True
        try:
            yield
        finally:
            self.prompt_end, self._declared = previous

    def steps(self, seq_len: int, device: torch.device) -> Int[Tensor, "batch seq"]:
        """Generated-token index of each position (negative inside the prompt)."""
        absolute = torch.arange(self.offset, self.offset + seq_len, device=device)
        end = self._end(device)
        return absolute[None, :] - end[:, None]

    def mask(self, positions: str, seq_len: int, device: torch.device) -> Bool[Tensor, "batch seq"] | None:
        """Boolean mask of the positions a rule selects, or None for every position."""
        if positions == "all":
            return None
        step = self.steps(seq_len, device)
        if positions == "prompt":
            return step < 0
        if positions == "generated":
            return step >= 0
        if positions == "last_prompt":
            return step == -1
        if positions == "response":
            return step >= -1
        return (step < 0) & (step >= -tail_length(check_positions(positions)))

    def weight(
        self, rules: Sequence[tuple[str, Tensor]], active: Tensor, seq: int, device: torch.device
    ) -> Float[Tensor, "batch seq"]:
        """Per row and position, 1 where the row is ``active`` (``[rows, 1]``) and its rule selects the
        position, else 0; ``rules`` pairs each rule with the ``[rows, 1]`` rows that use it."""
        weight = active.float().expand(-1, seq)
        for rule, rows in rules:
            mask = self.mask(rule, seq, device)
            if mask is not None:
                weight = torch.where(rows, weight * mask.float(), weight)
        return weight

    def _end(self, device: torch.device) -> Tensor:
        if self.prompt_end is None:
            raise InvalidArgumentError(
                "positions other than 'all' need a forward pass that starts at position 0"
            )
        # A copy per device (layers of a model split over devices see activations on several).
        source, placed = self._placed
        if source is not self.prompt_end:
            source, placed = self.prompt_end, {}
            self._placed = (source, placed)
        end = placed.get(device)
        if end is None:
            end = placed[device] = source.to(device)
        return end


#: One tracker per Hugging Face model, for as long as it lives: the steering engine's, never on the model.
_TRACKERS: weakref.WeakKeyDictionary[Any, PositionTracker] = weakref.WeakKeyDictionary()


def tracker_for(model: Model) -> PositionTracker:
    """The model's position tracker (one per model, shared by nested steering contexts)."""
    tracker = _TRACKERS.get(model.hf_model)
    if tracker is None:
        tracker = _TRACKERS[model.hf_model] = PositionTracker()
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
