"""Running a grid's chunks on Ray: one actor per worker loads the model once and generates the chunks it is sent.

:class:`RayExecutor` implements :class:`~workbench.runner.Executor`. Each worker is a Ray actor holding
one GPU (``gpus_per_worker``) or a group of CPU cores (``threads_per_worker``, applied with
``torch.set_num_threads``); it loads the model from its spec (a known spec, a ``.gguf`` file or a model
directory that every node can read) and runs :func:`~workbench.runner.run_chunk`. Chunks go to whichever
worker is free, and their responses are yielded as each finishes. A worker that dies is restarted by Ray
(``max_restarts``) and its unfinished chunks are re-sent by Ray (``max_task_retries``); greedy responses do
not depend on which worker produced them. Without ``address`` a local cluster is started and shut down
again by :meth:`RayExecutor.close` (or leaving the ``with`` block), also after an error. Under
:func:`~workbench.runner.using_executor` it serves only grids of its own model (:meth:`RayExecutor.serves`).

Each worker reports what it loaded (:func:`~workbench.runner.worker_facts`: pid, fingerprint, device,
dtype) and every chunk comes back with its worker's fingerprint. Rows are filed under the workers'
fingerprint; workers that loaded the model unlike the driver (Ray gave them no GPU, another dtype) are
refused in one line unless ``allow_other_fingerprint``, and a chunk from a worker that came back as
another model (restarted on another node) stops the grid before its rows are written.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from workbench.errors import InvalidArgumentError, ModelLoadError, WorkbenchError
from workbench.runner import (
    Chunk,
    FingerprintMismatchError,
    WorkerFacts,
    check_producer,
    run_chunk,
    using_executor,
    worker_facts,
)

if TYPE_CHECKING:
    from workbench.models import Model

__all__ = ["RayExecutor", "RayWorkerError", "ray_executor"]


class RayWorkerError(WorkbenchError):
    """A Ray worker failed in a way Ray could not recover from."""


class _Worker:
    """The actor body: a model loaded once, then any number of chunks."""

    def __init__(self, spec: str, load_kwargs: dict[str, Any], threads: int | None) -> None:
        import torch

        from workbench.models import load_model

        if threads:
            torch.set_num_threads(threads)
        self.model = load_model(spec, **load_kwargs)

    def describe(self) -> WorkerFacts:
        return worker_facts(self.model)

    def run(self, chunk: Chunk) -> tuple[WorkerFacts, list[str]]:
        """The chunk's responses, with the facts of the worker that generated them."""
        return worker_facts(self.model), run_chunk(self.model, chunk)


def _last_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InvalidArgumentError(
            "running on Ray needs the ray package: pip install 'steering-workbench[ray]'"
        ) from None
    return ray


@dataclass
class RayExecutor:
    """Runs chunks on ``workers`` Ray actors, each loading ``load_model(spec, **load_kwargs)`` once.

    ``address``: a running cluster (``"auto"``, ``"ray://host:10001"``); None starts a local one.
    ``gpus_per_worker`` defaults to 1 when the cluster has a GPU per worker, else 0; ``workers`` to the
    cluster's GPUs when it has some, else 2; ``threads_per_worker`` to 1 per GPU worker, else the
    cluster's CPUs divided among the workers. ``allow_other_fingerprint``: run grids of a driver whose
    model the workers loaded differently (dtype, device), filing the rows under the workers' fingerprint.
    """

    spec: str
    workers: int | None = None
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    address: str | None = None
    threads_per_worker: int | None = None
    gpus_per_worker: float | None = None
    max_restarts: int = 2
    max_task_retries: int = 2
    allow_other_fingerprint: bool = False
    _actors: list[Any] = field(default_factory=list, init=False, repr=False)
    _started_ray: bool = field(default=False, init=False, repr=False)
    _loaded: dict[int, WorkerFacts] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("workers", "threads_per_worker"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (starts the workers and waits until each has loaded the model)."""
        return [worker["pid"] for worker in self._workers()]

    def _workers(self) -> list[WorkerFacts]:
        """What each worker reports about its model, asked now (starts the workers); remembered by pid."""
        ray = _ray()
        facts: list[WorkerFacts] = [self._result(ray, actor.describe.remote()) for actor in self._start()]
        self._loaded |= {f["pid"]: f for f in facts}
        return facts

    def serves(self, model: Model) -> bool:
        """Whether the workers' model is ``model``: loaded from the same spec (compared first, so a grid of
        another model starts no worker) with the same weights hash (so weights changed in place under that
        spec, e.g. a LoRA adapter applied, are not mistaken for the spec's). Dtype and device are then
        checked by :meth:`fingerprint_for`."""
        return model.source == self.spec and all(
            worker["weights_hash"] == model.weights_hash for worker in self._workers()
        )

    def fingerprint_for(self, model: Model) -> str:
        """The workers' fingerprint, under which ``model``'s rows are filed: refused in one line when the
        workers disagree among themselves, or differ from ``model`` without ``allow_other_fingerprint``."""
        worker = self._common()
        return check_producer(model, worker, self.allow_other_fingerprint, "the Ray workers' model")

    def _common(self) -> WorkerFacts:
        """The facts of the first worker, once every worker reports the same fingerprint (else refused)."""
        workers = self._workers()
        found = sorted({worker["fingerprint"] for worker in workers})
        if len(found) > 1:
            raise FingerprintMismatchError(
                f"the Ray workers loaded {self.spec!r} as different models ({', '.join(found)}): their rows "
                "cannot be filed under one fingerprint; give every worker the same device and dtype"
            )
        return workers[0]

    def describe(self) -> dict[str, object]:
        """``{"kind": "ray", "address", "workers"}``: every worker that loaded the model so far, as it
        reported itself (a restarted worker appears under its old and its new pid); starts nothing."""
        if self._actors:
            self._workers()
        return {"kind": "ray", "address": self.address or "local", "workers": list(self._loaded.values())}

    def _start(self) -> list[Any]:
        if self._actors:
            return self._actors
        ray = _ray()
        if not ray.is_initialized():
            local = {
                "num_cpus": max(os.cpu_count() or 1, (self.workers or 2) * (self.threads_per_worker or 1)),
                "include_dashboard": False,
                "object_store_memory": 256 * 1024**2,
            }
            ray.init(address=self.address, **({} if self.address else local), log_to_driver=False)
            self._started_ray = True
        cluster = ray.cluster_resources()
        gpus = int(cluster.get("GPU", 0))
        workers = self.workers or gpus or 2
        per_gpu = self.gpus_per_worker if self.gpus_per_worker is not None else float(gpus >= workers)
        threads = self.threads_per_worker or (1 if per_gpu else max(1, int(cluster.get("CPU", 1)) // workers))
        remote = ray.remote(
            num_cpus=threads,
            num_gpus=per_gpu,
            max_restarts=self.max_restarts,
            max_task_retries=self.max_task_retries,
        )(_Worker)
        self._actors = [remote.remote(self.spec, self.load_kwargs, threads) for _ in range(workers)]
        return self._actors

    def map(self, chunks: Sequence[Chunk]) -> Iterator[tuple[int, list[str]]]:
        """Yield ``(chunk index, responses)`` as chunks finish; a chunk goes to the next free worker."""
        ray = _ray()
        try:
            actors = self._start()
            filed_under = self._common()["fingerprint"] if chunks else None
            waiting = list(range(len(chunks)))[::-1]
            running: dict[Any, tuple[int, Any]] = {}
            for actor in actors:
                if waiting:
                    index = waiting.pop()
                    running[actor.run.remote(chunks[index])] = (index, actor)
            while running:
                [done], _ = ray.wait(list(running), num_returns=1)
                index, actor = running.pop(done)
                worker, responses = self._result(ray, done)
                self._loaded.setdefault(worker["pid"], worker)
                if worker["fingerprint"] != filed_under:
                    raise RayWorkerError(
                        f"Ray worker {worker['pid']} came back as {worker['fingerprint']} (restarted with another "
                        f"device, dtype or weights), the grid's rows are {filed_under}; its chunk was not kept"
                    )
                if waiting:
                    following = waiting.pop()
                    running[actor.run.remote(chunks[following])] = (following, actor)
                yield index, responses
        except BaseException:
            self.close()
            raise

    def _result(self, ray: Any, ref: Any) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, WorkbenchError):
                raise exc.cause from None
            raise RayWorkerError(f"a Ray worker failed: {_last_line(exc.cause)}") from None
        except ray.exceptions.RayActorError as exc:
            if exc.actor_init_failed:  # the constructor raised: not a crash Ray could recover from
                reason = _last_line(exc).split(": ", 1)[-1]
                raise ModelLoadError(f"a Ray worker could not load {self.spec!r}: {reason}") from None
            raise RayWorkerError(
                f"a Ray worker died and could not be restarted ({type(exc).__name__}): "
                "check its memory and the spec's availability on every node"
            ) from None

    def close(self) -> None:
        """Stop the workers, and the local cluster if this executor started it."""
        if not self._actors and not self._started_ray:
            return
        ray = _ray()
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False


def ray_executor(
    address: str | None,
    workers: int | None,
    spec: str,
    dtype: str | None = None,
    allow_other_fingerprint: bool = False,
) -> contextlib.AbstractContextManager[RayExecutor | None]:
    """The command line's ``--ray local|ADDRESS`` / ``--workers``, checked now: a ``with`` context yielding a
    :class:`RayExecutor` of ``spec`` that is also the default of every grid of that model inside the block
    (:func:`~workbench.runner.using_executor`), or None (the in-process runner) without ``--ray``. Its
    workers load ``spec`` in ``dtype``, as the command's own model is loaded; ``allow_other_fingerprint``:
    file their rows under their own fingerprint when they load it otherwise (e.g. on the CPU)."""
    if address is None:
        if workers is not None:
            raise InvalidArgumentError("--workers needs --ray (local or a cluster address)")
        return contextlib.nullcontext()
    load_kwargs = {"dtype": dtype} if dtype else {}
    return _as_default(
        RayExecutor(
            spec,
            workers,
            load_kwargs,
            address=None if address == "local" else address,
            allow_other_fingerprint=allow_other_fingerprint,
        )
    )


@contextlib.contextmanager
def _as_default(executor: RayExecutor) -> Iterator[RayExecutor]:
    with executor, using_executor(executor):
        yield executor
