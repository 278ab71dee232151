"""The benchmark harness: sizes, the table, clocks, interleaved timing and peak memory.

Every row of the table is a ratio of two measurements taken side by side in one run
(:mod:`workbench.bench.items` holds the measurements). Each pair is measured interleaved, ``repeats``
times, and the fastest of each side is kept. On CPU with one torch thread the clock is the process's CPU
time, which other processes on a shared machine disturb far less than wall time; otherwise it is wall time
(CUDA synchronised).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib.resources
import json
import os
import re
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import pandas as pd
import torch

from workbench.errors import InvalidArgumentError
from workbench.files import atomic_text, write_frame

__all__ = [
    "FULL",
    "ITEMS",
    "QUICK",
    "SETTINGS",
    "Clock",
    "ClockKind",
    "Item",
    "Report",
    "Row",
    "Settings",
    "Timed",
    "bench_prompts",
    "interleaved",
    "peak_rss",
    "round_spread",
]

#: The rows of the table, by number.
Item = Literal["1", "2", "3", "4", "5", "6", "7", "8"]
ITEMS: tuple[Item, ...] = get_args(Item)
#: What a clock measures: the process's CPU time or wall time.
ClockKind = Literal["cpu", "wall"]


@dataclass(frozen=True)
class Settings:
    """Sizes of every measurement: ``FULL`` for the published table, ``QUICK`` a smoke test for CI and tests."""

    batch_sizes: tuple[int, ...] = (8, 32)
    new_tokens: int = 128
    collect_prompts: int = 512
    collect_batch: int = 16
    sweep_layers: int = 6
    sweep_coefs: int = 4
    sweep_prompts: int = 32
    sweep_tokens: int = 64
    sweep_batch: int = 128
    sweep_small_prompts: int = 4
    sweep_small_tokens: int = 32
    reference_prompts: int = 1
    reference_tokens: int = 256
    memory_prompts: int = 2000
    repeats: int = 3


FULL = Settings()
#: A smoke test of every row (the targets are not judged at these sizes).
QUICK = Settings(
    batch_sizes=(2, 4),
    new_tokens=6,
    collect_prompts=12,
    collect_batch=4,
    sweep_layers=2,
    sweep_coefs=2,
    sweep_prompts=3,
    sweep_tokens=5,
    sweep_batch=12,
    sweep_small_prompts=2,
    sweep_small_tokens=4,
    reference_prompts=2,
    reference_tokens=10,
    memory_prompts=40,
    repeats=1,
)

#: The benchmark's sizes by name (``workbench bench --size``).
SETTINGS: dict[str, Settings] = {"quick": QUICK, "full": FULL}


@dataclass
class Row:
    """One line of the table: ``value`` is the ratio (or None when not measured)."""

    item: str
    name: str
    value: float | None
    target: str
    met: bool | None
    identical: bool | None = None
    detail: str = ""


@dataclass
class Report:
    """The table and how it was measured."""

    rows: list[Row]
    meta: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        header = ("item", "measurement", "ratio", "target", "met", "identical", "detail")
        lines = [
            [
                r.item,
                r.name,
                "-" if r.value is None else f"{r.value:.3f}",
                r.target,
                "-" if r.met is None else ("yes" if r.met else "NO"),
                "-" if r.identical is None else str(r.identical),
                r.detail,
            ]
            for r in self.rows
        ]
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header[:-1])]
        out = [" ".join(f"{k}: {v}" for k, v in self.meta.items())]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
        out.append(fmt.format(*header))
        out.extend(fmt.format(*line) for line in lines)
        return "\n".join(out)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the table as JSON (``.json``) or CSV (any other suffix)."""
        if Path(path).suffix.lower() == ".json":
            payload = {"meta": self.meta, "rows": [asdict(r) for r in self.rows]}
            return atomic_text(path, json.dumps(payload, indent=2) + "\n", "benchmark table")
        frame = pd.DataFrame([{**asdict(row), **self.meta} for row in self.rows])
        return write_frame(frame, path, "benchmark table")


class Clock:
    """Process CPU time (``"cpu"``) or wall time (``"wall"``, CUDA synchronised)."""

    def __init__(self, kind: ClockKind, device: torch.device) -> None:
        if kind not in ("cpu", "wall"):
            raise InvalidArgumentError(f"unknown clock {kind!r}: use 'cpu' or 'wall'")
        self.kind = kind
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.process_time() if self.kind == "cpu" else time.perf_counter()

    def measure(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        start = self.now()
        result = fn()
        return self.now() - start, result


class Timed(NamedTuple):
    """One side of an interleaved measurement: its fastest time, its last result, and every round's time."""

    seconds: float
    result: Any
    rounds: tuple[float, ...]


def interleaved(clock: Clock, fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, Timed]:
    """Run each function in turn, ``repeats`` rounds: the fastest time of each, its last result, every time."""
    rounds: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, Any] = {}
    names = list(fns)
    for round_no in range(max(1, repeats)):
        for name in names if round_no % 2 == 0 else names[::-1]:  # alternate the order between rounds
            seconds, results[name] = clock.measure(fns[name])
            rounds[name].append(seconds)
    return {name: Timed(min(rounds[name]), results[name], tuple(rounds[name])) for name in fns}


def round_spread(timed: dict[str, Timed], numerator: str, denominator: str) -> str:
    """The range of the ratio taken round by round (each round's pair ran back to back): how steady it was."""
    ratios = [a / b for a, b in zip(timed[numerator].rounds, timed[denominator].rounds, strict=True) if b > 0]
    if len(ratios) < 2:
        return ""
    return f"; per round {min(ratios):.3f}–{max(ratios):.3f}"


def _status_kb(field_name: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc), so earlier work does not hide growth in the baseline."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def peak_rss() -> Iterator[dict[str, Any]]:
    """Measure the peak resident-set growth of the block, in bytes (``result["bytes"]``).

    Resets the kernel's high-water mark (``/proc/self/clear_refs``) so the peak belongs to the block; where
    that is not possible, falls back to the process's lifetime peak (an upper bound).
    """
    gc.collect()
    _release_free_memory()
    result: dict[str, Any] = {"method": "VmHWM after clear_refs"}
    before = _status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        result["method"] = "ru_maxrss (lifetime peak, an upper bound)"
    try:
        yield result
    finally:
        if result["method"].startswith("VmHWM") and before is not None:
            peak = _status_kb("VmHWM") or 0
            result["bytes"] = max(0, peak - before) * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            result["bytes"] = max(0, peak - (before or 0)) * 1024


def bench_prompts(n: int) -> list[str]:
    """``n`` English queries from the bundled data, cycled when ``n`` exceeds them."""
    text = importlib.resources.files("workbench").joinpath("data/queries.jsonl").read_text()
    queries = [json.loads(line)["en"] for line in text.splitlines() if line.strip()]
    return [queries[i % len(queries)] for i in range(n)]
