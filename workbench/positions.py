"""Which token positions a forward pass is looking at, in prompt-relative terms.

During KV-cached generation a hook sees the prefill (every prompt position) and then one position per
step; during full recomputation it sees the whole sequence each step. A :class:`PositionTracker` reads the
KV-cache length before each forward of the Hugging Face model, so hooks can tell the absolute (padded)
position of each token they see, and compare it with where each row's prompt ends.

Position rules, in padded coordinates with prompts left-padded to a common end ``P``:
``"all"`` every position; ``"prompt"`` positions ``< P``; ``"generated"`` positions ``>= P`` (tokens the
model wrote; the first new token is predicted from the last prompt position, so it is *not* steered by
``"generated"`` alone); ``"last_prompt"`` position ``P - 1``; ``"response"`` = ``"last_prompt"`` plus
``"generated"`` (every position that predicts a new token).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from workbench.errors import InvalidArgumentError
from workbench.models import Model

POSITIONS = ("all", "prompt", "generated", "last_prompt", "response")


def check_positions(positions: str) -> str:
    if positions not in POSITIONS:
        raise InvalidArgumentError(f"unknown positions {positions!r}: use one of {', '.join(POSITIONS)}")
    return positions


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
        return step >= -1

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
