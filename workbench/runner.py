"""The one grid runner: jobs -> batched generation with per-row interventions -> raw completions -> scored rows.

A grid is cut into fixed :class:`Chunk` s; an *executor* generates each chunk's responses. The default,
:class:`LocalExecutor`, runs them one after another on the loaded model; :mod:`workbench.distributed`
runs them on Ray actors. Whoever drives the grid writes each finished chunk as a parquet part of raw
responses (never scores), so a rerun recomputes only missing chunks and scores are always recomputed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from workbench.generation import generate
from workbench.models import Model
from workbench.steering import Intervention

__all__ = ["Chunk", "Executor", "LocalExecutor"]


@dataclass(frozen=True)
class Chunk:
    """One batched generation call: ``prompts[i]`` answered under ``interventions[i]``."""

    prompts: list[str]
    interventions: list[list[Intervention]]
    max_new_tokens: int
    batch_size: int = 32
    chat: bool = True
    generate_kwargs: dict[str, object] = field(default_factory=dict)


class Executor(Protocol):
    """Generates chunks; yields ``(chunk index, responses)`` as each finishes, in any order."""

    def map(self, chunks: Sequence[Chunk]) -> Iterator[tuple[int, list[str]]]: ...


def run_chunk(model: Model, chunk: Chunk) -> list[str]:
    """The responses of one chunk on ``model`` (greedy unless ``generate_kwargs`` says otherwise)."""
    return generate(
        model,
        chunk.prompts,
        max_new_tokens=chunk.max_new_tokens,
        batch_size=chunk.batch_size,
        chat=chunk.chat,
        interventions=chunk.interventions,
        **chunk.generate_kwargs,  # type: ignore[arg-type]
    )


@dataclass
class LocalExecutor:
    """Runs every chunk in this process, in order."""

    model: Model
    progress: bool = False

    def map(self, chunks: Sequence[Chunk]) -> Iterator[tuple[int, list[str]]]:
        for index, chunk in enumerate(chunks):
            yield index, run_chunk(self.model, chunk)
