"""The one grid runner: jobs -> batched generation with per-row steering -> raw completions -> scored rows.

:func:`run_grid` cuts a grid of :class:`Job` s into fixed :class:`Chunk` s; an *executor* generates each
chunk's responses. The default, :class:`LocalExecutor`, runs them one after another on the loaded model;
:mod:`workbench.distributed` runs them on Ray actors; :func:`using_executor` makes one the default of every
grid run inside a block (studies included) for the model it serves. The driver writes each finished chunk as a parquet
part of raw responses (never scores) under ``out_dir``, beside a manifest of everything that changes the
responses, so a rerun generates only missing rows and scores are always recomputed by the scorer given.

Rows are filed under the fingerprint of the model that generated them (:meth:`Executor.fingerprint_for`:
the executor's own model or workers, which report theirs), so rows made in float32 on the CPU are never
read back as a bfloat16 GPU model's. A producer whose fingerprint is not the driver model's is refused in
one line (:class:`FingerprintMismatchError`) unless the executor was built with ``allow_other_fingerprint``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypedDict

import pandas as pd

from workbench.errors import InvalidArgumentError
from workbench.files import atomic_write, create_once, json_default
from workbench.gated_steering import GatedIntervention
from workbench.generation import generate
from workbench.head_steering import HeadIntervention
from workbench.interventions import AnyIntervention, Intervention
from workbench.models import Model

__all__ = [
    "GRID_MANIFEST",
    "Chunk",
    "Executor",
    "FingerprintMismatchError",
    "Job",
    "LocalExecutor",
    "ModelExecutor",
    "Scorer",
    "WorkerFacts",
    "check_producer",
    "grid_settings",
    "producer_fingerprint",
    "run_chunk",
    "run_grid",
    "steering_key",
    "using_executor",
    "worker_facts",
]

#: The manifest of an ``out_dir``: model fingerprint, generation settings and the caller's key.
GRID_MANIFEST = "grid.json"
#: Takes the rows of a grid (``setting``, knobs, ``id``, ``prompt``, ``interventions``, ``response``) and
#: returns them with score columns added.
Scorer = Callable[[pd.DataFrame], pd.DataFrame]


@dataclass(frozen=True)
class Chunk:
    """One batched generation call: ``prompts[i]`` answered under ``interventions[i]``."""

    prompts: list[str]
    interventions: list[list[AnyIntervention]]
    max_new_tokens: int
    batch_size: int = 32
    chat: bool = True
    generate_kwargs: dict[str, object] = field(default_factory=dict)


class Executor(Protocol):
    """Generates chunks; yields ``(chunk index, responses)`` as each finishes, in any order.

    ``fingerprint_for(model)``: the fingerprint of the model that generates ``model``'s rows, under which
    they are filed (it refuses one other than ``model.fingerprint`` unless told to accept it).
    ``describe()``: JSON-able facts for the run record, ``{"kind", "address", "workers": [{"pid",
    "fingerprint", "weights_hash", "device", "dtype"}, ...]}`` (:class:`WorkerFacts`).
    """

    def map(self, chunks: Sequence[Chunk]) -> Iterator[tuple[int, list[str]]]: ...

    def fingerprint_for(self, model: Model) -> str: ...

    def describe(self) -> dict[str, object]: ...


class FingerprintMismatchError(InvalidArgumentError):
    """An executor's model (weights, dtype or device) is not the driver's: its rows would be filed wrongly."""


class WorkerFacts(TypedDict):
    """What a worker reports about the model it loaded (:func:`worker_facts`)."""

    pid: int
    fingerprint: str
    weights_hash: str
    device: str
    dtype: str


def worker_facts(model: Model) -> WorkerFacts:
    """This process's id and ``model``'s fingerprint, weights hash, device and dtype."""
    return WorkerFacts(
        pid=os.getpid(),
        fingerprint=model.fingerprint,
        weights_hash=model.weights_hash,
        device=str(model.device),
        dtype=str(model.dtype).replace("torch.", ""),
    )


def check_producer(model: Model, worker: WorkerFacts, allow_other: bool, who: str) -> str:
    """``worker``'s fingerprint (from :func:`worker_facts`), refused when it is not ``model``'s and
    ``allow_other`` is false."""
    fingerprint = worker["fingerprint"]
    if fingerprint != model.fingerprint and not allow_other:
        mine = worker_facts(model)
        raise FingerprintMismatchError(
            f"{who} is {fingerprint} ({worker['dtype']} on {worker['device']}) but {model.name} here is "
            f"{model.fingerprint} ({mine['dtype']} on {mine['device']}): its rows would be filed as another "
            "model's; load both with the same weights, dtype and device, or pass allow_other_fingerprint=True "
            "to file the rows under the producing model's fingerprint"
        )
    return fingerprint


class ModelExecutor(Executor, Protocol):
    """An executor bound to one model; ``serves(model)`` says whether its chunks run on ``model``'s weights."""

    def serves(self, model: Model) -> bool: ...


def run_chunk(model: Model, chunk: Chunk, *, progress: bool = False) -> list[str]:
    """The responses of one chunk on ``model`` (greedy unless ``generate_kwargs`` says otherwise)."""
    return generate(
        model,
        chunk.prompts,
        max_new_tokens=chunk.max_new_tokens,
        batch_size=chunk.batch_size,
        chat=chunk.chat,
        row_interventions=chunk.interventions,
        progress=progress,
        **chunk.generate_kwargs,  # type: ignore[arg-type]
    )


@dataclass
class LocalExecutor:
    """Runs every chunk in this process, in order, on ``model``."""

    model: Model
    progress: bool = False
    allow_other_fingerprint: bool = False

    def map(self, chunks: Sequence[Chunk]) -> Iterator[tuple[int, list[str]]]:
        for index, chunk in enumerate(chunks):
            yield index, run_chunk(self.model, chunk, progress=self.progress)

    def serves(self, model: Model) -> bool:
        """Whether ``model`` gives this executor's outputs: the same fingerprint (weights, dtype, device)."""
        return model.fingerprint == self.model.fingerprint

    def fingerprint_for(self, model: Model) -> str:
        """This executor's model's fingerprint (refused if not ``model``'s, unless allowed)."""
        return check_producer(
            model, worker_facts(self.model), self.allow_other_fingerprint, "this executor's model"
        )

    def describe(self) -> dict[str, object]:
        """``{"kind": "in process", "address": None, "workers": [this process and its model]}``."""
        return {"kind": "in process", "address": None, "workers": [worker_facts(self.model)]}


_DEFAULT_EXECUTOR: ContextVar[ModelExecutor | None] = ContextVar("workbench_executor", default=None)


@contextlib.contextmanager
def using_executor(executor: ModelExecutor | None) -> Iterator[None]:
    """Within the block, :func:`run_grid` without an ``executor`` runs on ``executor`` whenever
    ``executor.serves(model)`` (a grid of another model, e.g. a study that loads its own, runs in process).
    None changes nothing; the previous default comes back on exit."""
    if executor is not None and not callable(getattr(executor, "serves", None)):
        raise InvalidArgumentError(
            f"{type(executor).__name__} has no serves(model) method: a default executor must say which "
            "model it runs, or pass it to run_grid(executor=...) directly"
        )
    token = _DEFAULT_EXECUTOR.set(executor if executor is not None else _DEFAULT_EXECUTOR.get())
    try:
        yield
    finally:
        _DEFAULT_EXECUTOR.reset(token)


def _executor_for(model: Model, progress: bool) -> Executor:
    """The block's default executor (:func:`using_executor`) if it serves ``model``, else a local one."""
    default = _DEFAULT_EXECUTOR.get()
    return default if default is not None and default.serves(model) else LocalExecutor(model, progress)


def producer_fingerprint(model: Model, executor: Executor | None = None) -> str:
    """The fingerprint ``model``'s grid rows are filed under: ``executor``'s (default: the one
    :func:`run_grid` would pick) :meth:`~Executor.fingerprint_for`; one line if it has none."""
    chosen = executor if executor is not None else _executor_for(model, False)
    if not callable(getattr(chosen, "fingerprint_for", None)):
        raise InvalidArgumentError(
            f"{type(chosen).__name__} has no fingerprint_for(model) method: an executor must say which model "
            "generates its rows, so they are filed under that model's fingerprint"
        )
    return chosen.fingerprint_for(model)


@dataclass(frozen=True)
class Job:
    """One row of a grid: ``prompt`` (of item ``id``) answered under ``interventions``, labelled ``setting``.

    ``knobs`` become columns of the rows (layer, mode, coef, ...). Jobs with the same prompt and the same
    interventions are one generation: their response is generated once and shared.
    """

    setting: str
    id: str
    prompt: str
    interventions: tuple[AnyIntervention, ...] = ()
    knobs: Mapping[str, object] = field(default_factory=dict)


def _digest(payload: object) -> str:
    text = json.dumps(payload, sort_keys=True, default=json_default, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class _Keys:
    """Row keys: a hash of the prompt and of what every intervention does (direction, amount, knobs)."""

    def __init__(self) -> None:
        self._directions: dict[tuple[int, int], str] = {}

    def direction(self, iv: Intervention) -> str:
        slot = (id(iv.vector), iv.layer)
        if slot not in self._directions:
            data = iv.direction().detach().float().cpu().contiguous().numpy().astype("<f4").tobytes()
            self._directions[slot] = hashlib.sha256(data).hexdigest()
        return self._directions[slot]

    def steering(self, interventions: Sequence[AnyIntervention]) -> list[object]:
        """What every intervention does, as JSON-able values (a head push or a gate: a digest of its tensors
        and knobs)."""
        return [
            iv.key()  # head push or gate: a digest of its tensors and every knob
            if isinstance(iv, HeadIntervention | GatedIntervention)
            else [
                iv.layer,
                iv.mode,
                iv.amount(),
                iv.positions,
                iv.decay_tokens,
                iv.norm_preserving,
                self.direction(iv),
                *([dataclasses.asdict(iv.schedule)] if iv.schedule is not None else []),  # dynamic: keyed
            ]
            for iv in interventions
        ]

    def row(self, job: Job) -> str:
        return _digest([job.prompt, self.steering(job.interventions)])[:32]


def steering_key(interventions: Sequence[AnyIntervention]) -> str:
    """A digest of what ``interventions`` do (directions, amounts, every knob), as grid rows are keyed: for
    the cache key of anything computed under them."""
    return _digest(_Keys().steering(interventions))


@dataclass
class _Store:
    """An ``out_dir`` of parquet parts of raw responses (columns ``key, setting, id, prompt,
    interventions, knobs, response``) and its manifest; refuses a directory made with other settings."""

    root: Path

    def open(self, settings: Mapping[str, object]) -> dict[str, str]:
        """Check or write the manifest; the responses stored so far, by row key."""
        path = self.root / GRID_MANIFEST
        wanted = json.loads(json.dumps(dict(settings), sort_keys=True, default=json_default))
        if path.exists():
            found = json.loads(path.read_text(encoding="utf-8"))
            changed = sorted(k for k in {*found, *wanted} if found.get(k) != wanted.get(k))
            if changed:
                raise InvalidArgumentError(
                    f"{self.root} holds a grid with other settings ({', '.join(changed)} differ); "
                    "pass a new out_dir"
                )
        else:
            text = json.dumps(wanted, indent=1, sort_keys=True)
            if not create_once(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), "grid manifest"):
                return self.open(settings)  # another process created it first: check against theirs
        parts = sorted(self.root.glob("part-*.parquet"))
        if not parts:
            return {}
        stored = pd.concat([pd.read_parquet(p, columns=["key", "response"]) for p in parts])
        return dict(zip(stored["key"], stored["response"], strict=True))

    def write(self, part: pd.DataFrame) -> None:
        name = _digest(part["key"].tolist())[:16]
        atomic_write(
            self.root / f"part-{name}.parquet", lambda tmp: part.to_parquet(tmp, index=False), "part"
        )


def _label(job: Job) -> str:
    return "; ".join(iv.label for iv in job.interventions)


def _part(jobs: Sequence[Job], keys: Sequence[str], responses: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "key": list(keys),
            "setting": [j.setting for j in jobs],
            "id": [j.id for j in jobs],
            "prompt": [j.prompt for j in jobs],
            "interventions": [_label(j) for j in jobs],
            "knobs": [json.dumps(dict(j.knobs), sort_keys=True, default=json_default) for j in jobs],
            "response": list(responses),
        }
    )


def grid_settings(
    model: Model,
    max_new_tokens: int,
    chat: bool = True,
    generate_kwargs: Mapping[str, object] | None = None,
    key: Mapping[str, object] | None = None,
    executor: Executor | None = None,
) -> dict[str, object]:
    """What :func:`run_grid`'s ``out_dir`` manifest records and must match (:data:`GRID_MANIFEST`); its
    ``fingerprint`` is that of the model generating the rows (:func:`producer_fingerprint`)."""
    extra = {"generate_kwargs": dict(generate_kwargs or {}), **dict(key or {})}
    fingerprint = producer_fingerprint(model, executor)
    return {"fingerprint": fingerprint, "max_new_tokens": max_new_tokens, "chat": chat, **extra}


def run_grid(
    model: Model,
    jobs: Sequence[Job],
    *,
    max_new_tokens: int,
    score: Scorer | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    key: Mapping[str, object] | None = None,
    chunk_size: int = 128,
    batch_size: int = 32,
    chat: bool = True,
    generate_kwargs: Mapping[str, object] | None = None,
    executor: Executor | None = None,
    on_chunk: Callable[[pd.DataFrame], None] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Generate every job's response and score the rows; one row per job, in job order.

    The distinct generations (prompt and interventions) are cut, in job order, into fixed chunks of
    ``chunk_size``; each chunk's missing rows are one :class:`Chunk` for ``executor`` (default: the one
    :func:`using_executor` set, if it serves ``model``, else :class:`LocalExecutor`), so a resumed grid batches exactly as an uninterrupted one. With ``out_dir``,
    each finished chunk is written as a parquet part of raw responses (never scores) and a rerun
    generates only what no part holds; the directory's manifest (:data:`GRID_MANIFEST`: the fingerprint of
    the model generating the rows, ``max_new_tokens``, ``chat``, ``generate_kwargs`` and the caller's
    ``key``) must match, and of two processes starting the same directory at once the first one's counts. ``on_chunk``
    sees each new part once it is saved. Rows: ``setting``, the knobs' columns, ``id, prompt,
    interventions`` (labels), ``response``, then what ``score`` adds; scores are computed on every call.
    """
    if not jobs:
        raise InvalidArgumentError("the grid has no jobs: give at least one (setting, item, prompt)")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise InvalidArgumentError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    executor = executor if executor is not None else _executor_for(model, progress)
    settings = grid_settings(model, max_new_tokens, chat, generate_kwargs, key, executor)
    keys = _Keys()
    row_keys = [keys.row(job) for job in jobs]
    first = dict(zip(reversed(row_keys), reversed(jobs), strict=True))
    distinct = list(dict.fromkeys(row_keys))
    store = _Store(Path(out_dir)) if out_dir is not None else None
    done = store.open(settings) if store is not None else {}
    chunks, members = [], []
    for start in range(0, len(distinct), chunk_size):
        todo = [k for k in distinct[start : start + chunk_size] if k not in done]
        if todo:
            chunks.append(
                Chunk(
                    [first[k].prompt for k in todo],
                    [list(first[k].interventions) for k in todo],
                    max_new_tokens,
                    batch_size,
                    chat,
                    dict(generate_kwargs or {}),
                )
            )
            members.append(todo)
    for index, responses in executor.map(chunks):
        part = _part([first[k] for k in members[index]], members[index], responses)
        if store is not None:
            store.write(part)
        done |= dict(zip(members[index], responses, strict=True))
        if on_chunk is not None:
            on_chunk(part)
    rows = pd.DataFrame([{"setting": j.setting, **j.knobs} for j in jobs])
    rows = rows.assign(
        id=[j.id for j in jobs],
        prompt=[j.prompt for j in jobs],
        interventions=[_label(j) for j in jobs],
        response=[done[k] for k in row_keys],
    )
    return rows if score is None else score(rows)
