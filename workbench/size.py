"""How big a run is: one :class:`Size`, defined here once and passed down unchanged to every user of it.

A size has a ``name``: ``quick`` (a smoke test of every step, for tests and CI), ``full`` (the report's),
``large`` (the report of a model of a billion parameters or more), and the sizes some studies run at when the
report is full (``frontier``, ``baselines``); a size built by hand is ``custom``. Whether a run is a smoke
test is read from its name (:attr:`Size.is_quick`), never inferred from a count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from workbench.errors import InvalidArgumentError

__all__ = ["DEPTHS", "RUN_SIZES", "RunSize", "Size"]

#: Depths (fractions of the last block's index) of the validation sweeps' candidate layers.
DEPTHS = (0.2, 0.33, 0.47, 0.6, 0.73)
#: Candidate depths of a quick run (two layers, so that choosing one is exercised).
QUICK_DEPTHS = (0.3, 0.55)
#: Candidate depths of a large model's run: the middle of the network, where Stolfo et al.'s layers are.
LARGE_DEPTHS = (0.33, 0.47, 0.6)

#: The sizes a report or a study command is asked for; each study declares the :class:`Size` it runs at
#: for each (:class:`workbench.studies.registry.Study`).
RunSize = Literal["quick", "full", "large"]
RUN_SIZES: tuple[RunSize, ...] = ("quick", "full", "large")


@dataclass(frozen=True)
class Size:
    """How big a study runs: prompts per split, tokens per answer, candidate layers, batch size, questions.

    ``layers`` None: the blocks at ``depths`` of each model (:meth:`candidate_layers`).
    """

    n_train: int
    n_validation: int
    n_test: int
    max_new_tokens: int
    layers: tuple[int, ...] | None = None
    batch_size: int = 64
    n_mc: int = 200  # multiple-choice questions per language
    depths: tuple[float, ...] = DEPTHS
    name: str = "custom"

    @classmethod
    def quick(cls) -> Size:
        """A smoke test of every step (tests, CI): a handful of prompts and tokens, two candidate layers."""
        return cls(4, 2, 2, 8, n_mc=4, depths=QUICK_DEPTHS, name="quick")

    @classmethod
    def full(cls) -> Size:
        """The report's size (about 50 min on 2 CPU cores for SmolLM2)."""
        return cls(64, 16, 32, 48, name="full")

    @classmethod
    def large(cls) -> Size:
        """A 1-2B model's report on 2 CPU cores (about an hour in bfloat16): three candidate layers, fewer
        prompts and tokens; the frontier search's validation count, so its confirmation round is disjoint."""
        return cls(32, 10, 20, 40, batch_size=40, n_mc=100, depths=LARGE_DEPTHS, name="large")

    @classmethod
    def frontier(cls) -> Size:
        """The frontier search's full size: about 70 recipes per behaviour, so fewer prompts than :meth:`full`."""
        return cls(48, 10, 20, 64, batch_size=60, name="frontier")

    @classmethod
    def baselines(cls) -> Size:
        """The baselines study's full size: 32 train pairs, 16 validation and 32 test prompts, 64 new tokens,
        100 multiple-choice questions per language."""
        return cls(32, 16, 32, 64, n_mc=100, name="baselines")

    @classmethod
    def named(cls, name: str) -> Size:
        """The size called ``name`` (:meth:`quick`, :meth:`full`, :meth:`large`, :meth:`frontier`,
        :meth:`baselines`)."""
        sizes = {"quick": cls.quick, "full": cls.full, "large": cls.large}
        sizes |= {"frontier": cls.frontier, "baselines": cls.baselines}
        if name not in sizes:
            raise InvalidArgumentError(f"unknown size {name!r}: use one of {', '.join(sizes)}")
        return sizes[name]()

    @property
    def is_quick(self) -> bool:
        """A smoke-test run (its name is ``quick``)."""
        return self.name == "quick"

    def candidate_layers(self, n_layers: int) -> list[int]:
        """:attr:`layers`, or the distinct blocks at :attr:`depths` of a model with ``n_layers`` blocks."""
        if self.layers is not None:
            return list(self.layers)
        return sorted({round(f * (n_layers - 1)) for f in self.depths})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Size:
        """A size from :meth:`to_json` (lists back to tuples); a one-line error for anything else."""
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not set(data) <= known:
            raise InvalidArgumentError(f"not a recorded size: {data!r}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
