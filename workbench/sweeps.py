"""Behavioural sweeps: steer held-out prompts over a grid of layers and strengths, score what comes out.

:func:`sweep` runs every :class:`Config` of a grid on the *negative* prompts of a ContrastiveSet (the query
without its instruction) and scores each greedy response for compliance with the item's instructions
(:func:`~workbench.evaluation.check_all`, strict) and degeneration (:func:`~workbench.evaluation.is_degenerate`).
The grid always includes ``none`` (no steering) as the reference. Rows are generated in fixed chunks, each
chunk one batched per-row :func:`~workbench.generation.generate` call, and with ``out_dir`` every chunk is
written as its own parquet part file (atomically); a rerun reads the parts and skips finished rows.

:func:`choose` applies Stolfo et al.'s selection rule to :func:`summarize`'s table.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.datasets import ContrastiveSet
from workbench.errors import InvalidArgumentError, OutputPathError
from workbench.evaluation import check_all, is_degenerate
from workbench.generation import generate
from workbench.models import Model
from workbench.steering import MODES, Intervention
from workbench.vectors import SteeringVector

__all__ = ["NONE", "Choice", "Config", "choose", "grid", "per_layer", "summarize", "sweep"]

NONE = "none"
_KEY = ["config", "id", "prompt"]
_MANIFEST = "sweep.json"


@dataclass(frozen=True)
class Config:
    """One steering configuration: ``mode`` at ``layer`` with ``coef`` (``layer=None``: no steering)."""

    layer: int | None = None
    mode: str = "add"
    coef: float | None = None

    @property
    def name(self) -> str:
        if self.layer is None:
            return NONE
        return f"{self.mode}@{self.layer}" + ("" if self.coef is None else f"x{self.coef:g}")


def grid(
    layers: Sequence[int], *, mode: str = "add", coefs: Sequence[float] = (1.0, 2.0, 4.0)
) -> list[Config]:
    """``none`` then every (layer, coef); ``set_projection`` and ``ablate`` take no coefficient (one per layer)."""
    if mode not in MODES:
        raise InvalidArgumentError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "add" and not coefs:
        raise InvalidArgumentError("mode 'add' needs at least one coefficient")
    strengths: Sequence[float | None] = [float(c) for c in coefs] if mode == "add" else [None]
    return [Config(), *(Config(layer, mode, c) for layer in layers for c in strengths)]


def _vector_hash(vector: SteeringVector) -> str:
    digest = hashlib.sha256(vector.directions.numpy().astype("<f4").tobytes())
    digest.update(json.dumps({b: s.to_json() for b, s in vector.stats.items()}, sort_keys=True).encode())
    return digest.hexdigest()


def _manifest(out: Path, settings: dict[str, object]) -> None:
    path = out / _MANIFEST
    if path.exists():
        found = json.loads(path.read_text())
        changed = [k for k in settings if found.get(k) != settings[k]]
        if changed:
            raise InvalidArgumentError(
                f"{out} holds a sweep with other settings ({', '.join(changed)} differ); pass a new out_dir"
            )
        return
    _atomic(path, lambda tmp: tmp.write_text(json.dumps(settings, indent=1, sort_keys=True)))


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise OutputPathError(f"cannot write {path} ({e.strerror or e}); choose a writable out_dir") from None
    finally:
        tmp.unlink(missing_ok=True)


def _finished(out: Path | None) -> pd.DataFrame | None:
    parts = sorted(out.glob("part-*.parquet")) if out is not None else []
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else None


def sweep(
    model: Model,
    vector: SteeringVector,
    dataset: ContrastiveSet,
    configs: Sequence[Config],
    *,
    scale: str = "diff_norm",
    positions: str = "all",
    max_new_tokens: int = 40,
    batch_size: int = 32,
    chunk_size: int = 128,
    out_dir: str | os.PathLike[str] | None = None,
    on_chunk: Callable[[pd.DataFrame], None] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Generate and score one row per (config, item) of ``dataset``, steering its negative prompts.

    Columns: ``config, layer, mode, coef, scale, positions, id, behaviour, prompt, response, follows,
    degenerate``, in config-major order. ``coef`` is in ``scale`` units (see :class:`Intervention`).
    Rows run in fixed chunks of ``chunk_size`` over the whole grid, so a resumed run batches exactly as an
    uninterrupted one; ``on_chunk`` sees each chunk's new rows once they are saved. With ``out_dir``,
    finished rows (same config name, item id and prompt) are read back instead of generated; the directory
    refuses a sweep with another model, vector, scale, positions or ``max_new_tokens``.
    """
    if not configs or NONE not in {c.name for c in configs}:
        raise InvalidArgumentError("a sweep needs the unsteered config Config() as its reference")
    if len({c.name for c in configs}) != len(configs):
        raise InvalidArgumentError("configs repeat; each (layer, mode, coef) may appear once")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise InvalidArgumentError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    interventions = {
        c.name: [Intervention(vector, c.layer, c.mode, c.coef, positions, scale)]
        if c.layer is not None
        else []
        for c in configs
    }
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputPathError(
                f"cannot create {out} ({e.strerror or e}); choose a writable out_dir"
            ) from None
        settings = {
            "model": model.name,
            "weights_hash": model.weights_hash,
            "vector": _vector_hash(vector),
            "scale": scale,
            "positions": positions,
            "max_new_tokens": max_new_tokens,
        }
        _manifest(out, settings)
    wanted = [
        (c, item, prompt)
        for c in configs
        for item, prompt in zip(dataset.items, dataset.negative, strict=True)
    ]
    keys = pd.DataFrame([(c.name, item.id, prompt) for c, item, prompt in wanted], columns=_KEY)
    done = _finished(out)
    finished = set() if done is None else set(map(tuple, done[_KEY].itertuples(index=False)))
    frames = []
    for start in range(0, len(wanted), chunk_size):
        todo = [w for w in wanted[start : start + chunk_size] if (w[0].name, w[1].id, w[2]) not in finished]
        if not todo:
            continue
        responses = generate(
            model,
            [prompt for _, _, prompt in todo],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            interventions=[interventions[c.name] for c, _, _ in todo],
            progress=progress,
        )
        chunk = pd.DataFrame(
            {
                "config": [c.name for c, _, _ in todo],
                "layer": pd.array([c.layer for c, _, _ in todo], dtype="Int64"),
                "mode": [NONE if c.layer is None else c.mode for c, _, _ in todo],
                "coef": np.array([np.nan if c.coef is None else c.coef for c, _, _ in todo], dtype=float),
                "scale": scale,
                "positions": positions,
                "id": [item.id for _, item, _ in todo],
                "behaviour": [item.behaviour for _, item, _ in todo],
                "prompt": [prompt for _, _, prompt in todo],
                "response": responses,
                "follows": [
                    all(check_all(list(item.instruction_id_list), list(item.kwargs), r))
                    for (_, item, _), r in zip(todo, responses, strict=True)
                ],
                "degenerate": [is_degenerate(r) for r in responses],
            }
        )
        if out is not None:
            name = hashlib.sha256(json.dumps(chunk[_KEY].values.tolist()).encode()).hexdigest()[:16]
            _atomic(out / f"part-{name}.parquet", lambda tmp, chunk=chunk: chunk.to_parquet(tmp, index=False))
        frames.append(chunk)
        if on_chunk is not None:
            on_chunk(chunk)
    rows = _finished(out) if out is not None else pd.concat(frames, ignore_index=True)
    rows = rows.drop_duplicates(_KEY)
    return keys.merge(rows, on=_KEY, how="left", validate="one_to_one")[rows.columns]


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """One row per config in first-seen order: ``config, layer, mode, coef, compliance, degeneration, n``."""
    grouped = results.groupby("config", sort=False)
    summary = grouped.agg(
        layer=("layer", "first"),
        mode=("mode", "first"),
        coef=("coef", "first"),
        compliance=("follows", "mean"),
        degeneration=("degenerate", "mean"),
        n=("follows", "size"),
    )
    return summary.reset_index()


@dataclass(frozen=True)
class Choice:
    """The configuration a selection rule picked; ``layer`` is None when the answer is not to steer."""

    config: str
    layer: int | None
    coef: float | None
    compliance: float
    degeneration: float
    baseline_compliance: float
    baseline_degeneration: float


def choose(summary: pd.DataFrame) -> Choice:
    """Stolfo et al.'s rule: the steered config with the best compliance among those that degenerate no
    more often than no steering; no steering when none is eligible or none beats it.

    Ties go to lower degeneration, then a smaller ``|coef|``, then the earlier layer.
    """
    base = summary[summary["config"] == NONE]
    if len(base) != 1:
        raise InvalidArgumentError("the summary needs exactly one 'none' row (the unsteered reference)")
    b = base.iloc[0]
    steered = summary[(summary["config"] != NONE) & (summary["degeneration"] <= b["degeneration"])]
    best = None
    if len(steered):
        order = steered.assign(_c=-steered["compliance"], _a=steered["coef"].abs().fillna(0))
        best = order.sort_values(["_c", "degeneration", "_a", "layer"], kind="stable").iloc[0]
    if best is None or best["compliance"] <= b["compliance"]:
        best = b
    coef = best["coef"]
    return Choice(
        config=str(best["config"]),
        layer=None if best["config"] == NONE else int(best["layer"]),
        coef=None if coef is None or (isinstance(coef, float) and math.isnan(coef)) else float(coef),
        compliance=float(best["compliance"]),
        degeneration=float(best["degeneration"]),
        baseline_compliance=float(b["compliance"]),
        baseline_degeneration=float(b["degeneration"]),
    )


def per_layer(summary: pd.DataFrame) -> pd.DataFrame:
    """What :func:`choose` gives when held to one layer: one row per swept layer.

    Columns ``layer, compliance, degeneration, coef, steers`` (False: nothing at this layer beats no
    steering without degenerating more, so compliance is the unsteered one) and ``max_compliance``
    (best compliance at the layer, degeneration ignored).
    """
    base = summary[summary["config"] == NONE]
    rows = []
    for layer, group in summary[summary["config"] != NONE].groupby("layer", sort=True):
        choice = choose(pd.concat([base, group]))
        rows.append(
            {
                "layer": int(layer),
                "compliance": choice.compliance,
                "degeneration": choice.degeneration,
                "coef": np.nan if choice.coef is None else choice.coef,
                "steers": choice.layer is not None,
                "max_compliance": float(group["compliance"].max()),
            }
        )
    return pd.DataFrame(
        rows, columns=["layer", "compliance", "degeneration", "coef", "steers", "max_compliance"]
    )
