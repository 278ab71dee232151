"""The methods of the methods study, each built on the train split and chosen on validation by one rule.

A :class:`Contender` is one method's chosen setting: its interventions (or LoRA adapter), the CPU seconds
building it took (train split only; validation excluded), its validation numbers and a note. Every
method's candidates are answered on the same validation prompts, rated (:class:`Rater`: AxBench's
concept, relevance, fluency and score, :func:`~workbench.evaluation.rating.rate`) and chosen by
:func:`~workbench.evaluation.selection.choose_setting` (mean score, then target rate). The methods:

* ``diff-in-means``: the mean difference of the prompt activations (``prompt`` source), added at one layer
  of :func:`layers` at a strength of :data:`MEAN_COEFS` and at the positions of :data:`STEERED` (every
  position, or only those that predict a new token) (AxBench's DiffMean: every token's activations);
* ``last-token``: Stolfo et al.'s instruction vector, the mean difference at the last prompt token
  (``last_prompt`` source), on the same grid; the better of the two on validation (the same rule) gives
  the layer every single-layer method below uses;
* ``likelihood`` and ``RePS``: a rank-1 vector trained at that layer on self-distilled pairs
  (:func:`~workbench.training.train_vector`), at a strength of :data:`TRAINED_COEFS` and the positions of
  :data:`STEERED`;
* ``prompt-only``: the likelihood vector on the last :data:`TAIL` prompt tokens only, its factor trained
  (PrOSV, :func:`~workbench.training.train_factor`);
* ``PSR gate``: a per-token gate distilled from the instruction's own activation change
  (:func:`~workbench.training.train_gate`), at a scale of :data:`GATE_SCALES`;
* ``dynamic``: that better diff-in-means under the authors' dynamic strength (Scalena et al. 2024), bound
  of :data:`~workbench.studies.competitors.DYNAMIC_MAX`;
* ``LoRA``: a self-distilled adapter (:func:`~workbench.finetune.choose_lora`, its grid by size).

Trained artefacts are kept in the study folder under a key of what changes them: the model, behaviour,
sizes, pairs and knobs, and the source of :mod:`workbench.training` and :mod:`workbench.finetune` (so a
changed default or training step trains them again).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

import workbench.finetune
import workbench.training
from workbench.behaviours import Behaviour, build_vectors
from workbench.datasets import Item
from workbench.evaluation.rating import rate
from workbench.evaluation.rating_judge import RatingJudge
from workbench.evaluation.selection import choose_setting, nothing_clean
from workbench.files import atomic_text, source_digest
from workbench.finetune import LoraAdapter, NoPairsError, choose_lora
from workbench.gated_steering import GatedIntervention
from workbench.interventions import AnyIntervention
from workbench.models import Model
from workbench.runner import Job, run_grid
from workbench.size import Size
from workbench.studies.competitors import DYNAMIC_MAX, LORA_GRID, lora_cpu_seconds
from workbench.studies.dac import AUTHORS
from workbench.training import preference_pairs, train_factor, train_gate, train_vector
from workbench.training.pairs import PreferencePairs
from workbench.vectors import SteeringVector

__all__ = [
    "GATE_SCALES",
    "MEAN_COEFS",
    "METHODS",
    "STEERED",
    "TAIL",
    "TRAINED_COEFS",
    "Contender",
    "Rater",
    "choose_contenders",
    "layers",
    "rated_means",
]

T = TypeVar("T")

#: The methods, in table order.
METHODS = ("diff-in-means", "last-token", "likelihood", "RePS", "prompt-only", "PSR gate", "dynamic", "LoRA")
#: Strengths of the diff-in-means vector (``diff_norm``: multiples of the mean difference's norm).
MEAN_COEFS = (1.0, 2.0, 4.0, 8.0)
#: Strengths of a trained vector (multiples of the trained vector; trained on factors 2-20, tried a little
#: beyond: SmolLM2's RePS vector is best at the top of the range).
TRAINED_COEFS = (4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 28.0)
#: Where a steering vector is tried: every position (as AxBench trains and steers), or only the positions
#: that predict a new token (the question's own tokens left as they are); labelled ``""`` and ``" response"``.
STEERED = {"all": "", "response": " response"}
#: Scales of the PSR gate (1: as fitted).
GATE_SCALES = (0.5, 1.0, 2.0)
#: Prompt tokens the prompt-only method steers (PrOSV's last-k).
TAIL = 5


@dataclass(frozen=True)
class Rater:
    """AxBench's rating of answers (:func:`~workbench.evaluation.rating.rate`) with ``judge`` (None: rules
    only), its CPU seconds summed in :attr:`seconds`."""

    judge: RatingJudge | None
    seconds: list[float] = field(default_factory=lambda: [0.0])

    @property
    def name(self) -> str:
        """The judge's model, or ``rules``."""
        return self.judge.name if self.judge is not None else "rules"

    def __call__(
        self, target: str, items: Sequence[Item], queries: list[str], answers: list[str]
    ) -> pd.DataFrame:
        """:func:`rate`'s columns per answer; ``queries``: what was asked (the plain question)."""
        start = time.process_time()
        rated = rate(queries, answers, target=target, items=items, judge=self.judge)
        self.seconds[0] += time.process_time() - start
        return rated


@dataclass(frozen=True)
class Contender:
    """One method's setting chosen on validation (see the module)."""

    method: str
    interventions: tuple[AnyIntervention, ...]
    adapter: LoraAdapter | None
    cpu_seconds: float
    validation: dict[str, float]
    note: str


def layers(n_layers: int) -> list[int]:
    """The layers diff-in-means is tried at: a third, half and two thirds of the way up."""
    return sorted({round(f * (n_layers - 1)) for f in (1 / 3, 1 / 2, 2 / 3)})


def _digest(key: object) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _kept(
    path: Path,
    key: object,
    build: Callable[[], T],
    save: Callable[[T, Path], object],
    load: Callable[[Path], T],
) -> tuple[T, float]:
    """``build()`` and its CPU seconds, kept at ``path`` (with ``path.json``: the key and the seconds); read
    back while the key matches."""
    stamp = path.with_suffix(".json")
    stored = json.loads(stamp.read_text()) if stamp.exists() else {}
    if stored.get("key") == _digest(key) and path.exists():
        return load(path), float(stored["cpu_seconds"])
    start = time.process_time()
    value = build()
    seconds = time.process_time() - start
    save(value, path)
    atomic_text(stamp, json.dumps({"key": _digest(key), "cpu_seconds": seconds}), "trained artefact")
    return value, seconds


@dataclass(frozen=True)
class _Setup:
    model: Model
    behaviour: Behaviour
    size: Size
    out: Path
    rater: Rater

    def key(self, *more: object) -> list[object]:
        b = self.behaviour
        return [
            self.model.fingerprint,
            b.name,
            b.target,
            b.max_new_tokens,
            self.size.n_train,
            source_digest(workbench.training, workbench.finetune),
            *more,
        ]


def _validate(setup: _Setup, candidates: dict[str, tuple[AnyIntervention, ...]]) -> pd.DataFrame:
    """One row per candidate: its label, ``mean_score``, ``clean_rate`` (score above 0), ``target_rate``
    and the mean of each rating on the validation plain prompts (answers kept in ``out/grids``)."""
    b, size = setup.behaviour, setup.size
    data = b.items("validation", size.n_validation)
    jobs = [
        Job(label, item.id, prompt, ivs)
        for label, ivs in candidates.items()
        for item, prompt in zip(data.items, data.negative, strict=True)
    ]
    rows = run_grid(
        setup.model,
        jobs,
        max_new_tokens=b.max_new_tokens,
        batch_size=size.batch_size,
        out_dir=setup.out / "grids" / f"validation-{setup.model.fingerprint[:12]}-{b.name}",
    )
    return _summary(setup, data.items, rows)


def _summary(setup: _Setup, items: Sequence[Item], rows: pd.DataFrame) -> pd.DataFrame:
    """Per ``setting`` of ``rows`` (answers to ``items``' plain prompts, in item order per setting): the
    rated means."""
    out = []
    by_id = {item.id: item for item in items}
    for label, part in rows.groupby("setting", sort=False):
        chosen = [by_id[i] for i in part["id"]]
        rated = setup.rater(
            setup.behaviour.target, chosen, part["prompt"].tolist(), part["response"].tolist()
        )
        out.append(rated_means(str(label), rated))
    return pd.DataFrame(out)


def rated_means(label: str, rated: pd.DataFrame) -> dict[str, Any]:
    """``setting``, ``mean_score``, ``clean_rate`` (score above 0; where scores are unknown, the concept's
    rate), ``target_rate`` (concept 2: fully on target) and each rating's mean, of one setting's :func:`rate`
    rows."""
    score = rated["score"].astype(float)
    return {
        "setting": label,
        "mean_score": score.mean(skipna=False),
        "clean_rate": (score > 0).mean() if score.notna().all() else float((rated["concept"] > 0).mean()),
        "target_rate": float((rated["concept"] == 2).mean()),
        **{f"mean_{r}": rated[r].astype(float).mean() for r in ("concept", "relevance", "fluency")},
    }


def _choose(setup: _Setup, method: str, table: pd.DataFrame, cpu: float) -> tuple[str, dict[str, float], str]:
    """The chosen label, its validation numbers and a note; the table is written beside the study."""
    table.insert(0, "method", method)
    table.to_csv(setup.out / f"validation-{setup.behaviour.name}-{method.replace(' ', '_')}.csv", index=False)
    best = choose_setting(table)
    numbers = {k: float(best.get(k, math.nan)) for k in ("mean_score", "clean_rate", "target_rate")}
    said = (
        f"{method}: {best['setting']} chosen of {len(table)} on {setup.size.n_validation} validation prompts "
        f"(mean score {numbers['mean_score']:.2f}, clean {numbers['clean_rate']:.2f}, "
        f"target {numbers['target_rate']:.2f})"
    )
    if nothing_clean(table):
        said += "; nothing was clean on validation"
    return str(best["setting"]), numbers, said + f"; built in {cpu:.0f} CPU s"


def _mean_vector(setup: _Setup, source: str) -> tuple[SteeringVector, float]:
    """The diff-in-means vector of ``source`` (:data:`~workbench.behaviours.SOURCES`)."""
    model, b = setup.model, setup.behaviour
    name = "diff_in_means" if source == "prompt" else f"diff_in_means-{source}"
    path = setup.out / "trained" / f"{b.name}-{name}.safetensors"
    return _kept(
        path,
        setup.key(source),
        lambda: build_vectors(  # activations computed afresh: the cost is the vector's, not a cache read
            model, b, setup.size.n_train, sources=(source,), batch_size=setup.size.batch_size, cache=False
        )[source],
        lambda v, p: v.save(p),
        SteeringVector.load,
    )


def _pairs(setup: _Setup) -> tuple[PreferencePairs | None, float, str]:
    """The self-distilled pairs every trained method learns from, kept in the study folder (None and why
    when there are none)."""
    train = setup.behaviour.items("train", setup.size.n_train)
    path = setup.out / "trained" / f"{setup.behaviour.name}-pairs.jsonl"

    def build() -> PreferencePairs:
        return preference_pairs(
            setup.model,
            train,
            max_new_tokens=setup.behaviour.max_new_tokens,
            batch_size=setup.size.batch_size,
        )

    def save(pairs: PreferencePairs, to: Path) -> None:
        atomic_text(to, json.dumps(dataclasses.asdict(pairs)), "training pairs")

    def load(path: Path) -> PreferencePairs:
        stored = json.loads(path.read_text())
        return PreferencePairs(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})

    try:
        pairs, seconds = _kept(path, setup.key("pairs", train.hash), build, save, load)
    except NoPairsError as e:
        return None, 0.0, str(e)
    return pairs, seconds, f"{len(pairs)} pairs"


def _trained(setup: _Setup, method: str, layer: int, pairs: PreferencePairs) -> tuple[SteeringVector, float]:
    name = {"likelihood": "likelihood", "RePS": "reps"}[method]
    path = setup.out / "trained" / f"{setup.behaviour.name}-{name}-{layer}.safetensors"
    return _kept(
        path,
        setup.key(name, layer, pairs.hash),
        lambda: train_vector(setup.model, pairs, method=name, layers=[layer]),
        lambda v, p: v.save(p),
        SteeringVector.load,
    )


def _factor(setup: _Setup, vector: SteeringVector, layer: int, pairs: PreferencePairs) -> tuple[float, float]:
    path = setup.out / "trained" / f"{setup.behaviour.name}-prompt_tail-{layer}.txt"
    return _kept(
        path,
        setup.key("factor", layer, pairs.hash, TAIL, vector.provenance.get("pairs_hash")),
        lambda: train_factor(setup.model, vector, pairs, layers=layer, positions=f"prompt_tail:{TAIL}"),
        lambda v, p: atomic_text(p, repr(v), "factor"),
        lambda p: float(p.read_text()),
    )


def _gate(setup: _Setup, layer: int, pairs: PreferencePairs) -> tuple[GatedIntervention, float]:
    path = setup.out / "trained" / f"{setup.behaviour.name}-psr-{layer}.safetensors"
    train = setup.behaviour.items("train", setup.size.n_train)
    return _kept(
        path,
        setup.key("psr", layer, pairs.hash),
        lambda: train_gate(setup.model, train, layer=layer, pairs=pairs),
        lambda g, p: g.save(p),
        GatedIntervention.load,
    )


def _lora(setup: _Setup) -> tuple[LoraAdapter | None, pd.DataFrame, float, str]:
    """The LoRA grid's adapters chosen by the rating (kept in the study folder)."""
    model, b, size = setup.model, setup.behaviour, setup.size
    train, validation = b.items("train", size.n_train), b.items("validation", size.n_validation)
    grid = LORA_GRID["quick" if size.is_quick else "full"]
    path = setup.out / "trained" / f"{b.name}-lora.safetensors"

    def rated(answers: list[str]) -> pd.Series:
        return setup.rater(b.target, validation.items, validation.negative, answers)["score"]

    def build() -> tuple[LoraAdapter, pd.DataFrame]:
        return choose_lora(
            model,
            train,
            validation,
            max_new_tokens=b.max_new_tokens,
            target=b.target,
            batch_size=4,
            score=rated,
            **grid,  # type: ignore[arg-type]
        )

    key = setup.key("lora", grid, validation.hash, setup.rater.name)
    try:
        adapter, _ = _kept(path, key, lambda: build()[0], lambda a, p: a.save(p), LoraAdapter.load)
    except NoPairsError as e:
        return None, pd.DataFrame(), 0.0, f"LoRA: not trained ({e})"
    table = pd.DataFrame(adapter.provenance["selection"]["grid"])
    table.insert(0, "setting", [f"rank {r.rank} lr {r.lr:g} {r.steps} steps" for r in table.itertuples()])
    return adapter, table, lora_cpu_seconds(adapter), ""


def _grid(
    vector: SteeringVector, at_layers: Sequence[int], coefs: Sequence[float]
) -> dict[str, tuple[AnyIntervention, ...]]:
    """``vector`` at each layer, strength and position rule of :data:`STEERED`, by label."""
    return {
        f"L{layer} x{c:g}{tag}": tuple(vector.interventions(c, layers=layer, positions=at))
        for layer in at_layers
        for at, tag in STEERED.items()
        for c in coefs
    }


def choose_contenders(
    model: Model, behaviour: Behaviour, size: Size, out: Path, rater: Rater, lora: bool = True
) -> tuple[list[Contender], list[str]]:
    """Each method of :data:`METHODS` built on the train split and chosen on validation, and notes (a method
    that could not be built is left out with a note saying why)."""
    setup = _Setup(model, behaviour, size, out, rater)
    (out / "trained").mkdir(parents=True, exist_ok=True)
    chosen: list[Contender] = []
    notes: list[str] = []

    def add(method: str, candidates: dict[str, tuple[AnyIntervention, ...]], cpu: float) -> str:
        label, numbers, said = _choose(setup, method, _validate(setup, candidates), cpu)
        chosen.append(Contender(method, candidates[label], None, cpu, numbers, said))
        notes.append(said)
        return label

    grids: dict[str, dict[str, tuple[AnyIntervention, ...]]] = {}
    labels: dict[str, str] = {}
    cpus: dict[str, float] = {}
    for method, source in (("diff-in-means", "prompt"), ("last-token", "last_prompt")):
        vector, cpus[method] = _mean_vector(setup, source)
        grids[method] = _grid(vector, layers(model.n_layers), MEAN_COEFS)
        labels[method] = add(method, grids[method], cpus[method])
    better = choose_setting(pd.DataFrame([{"method": c.method, **c.validation} for c in chosen]))["method"]
    mean_label = f"{better} {labels[better]}"
    best = grids[better][labels[better]]
    layer = best[0].layer  # type: ignore[union-attr]
    pairs, pair_cpu, pair_note = _pairs(setup)
    if pairs is None:
        notes.append(f"likelihood, RePS, prompt-only and PSR gate not trained: {pair_note}")
    else:
        notes.append(
            f"trained methods: {pair_note} distilled from the train split in {pair_cpu:.0f} CPU s, at layer {layer} "
            f"(the layer of {better}, the better diff-in-means on validation)"
        )
        likelihood = None
        for method in ("likelihood", "RePS"):
            vector, cpu = _trained(setup, method, layer, pairs)
            likelihood = likelihood or vector
            add(method, _grid(vector, [layer], TRAINED_COEFS), pair_cpu + cpu)
        assert likelihood is not None
        factor, cpu = _factor(setup, likelihood, layer, pairs)
        tail = f"prompt_tail:{TAIL}"
        add(
            "prompt-only",
            {
                f"L{layer} x{factor:.2f} on the last {TAIL}": tuple(
                    likelihood.interventions(factor, positions=tail)
                )
            },
            pair_cpu + float(likelihood.provenance["train_cpu_seconds"]) + cpu,
        )
        gate, cpu = _gate(setup, layer, pairs)
        add(
            "PSR gate",
            {f"L{layer} x{s:g}": (dataclasses.replace(gate, scale=s),) for s in GATE_SCALES},
            pair_cpu + cpu,
        )
    dynamic = {
        f"{mean_label} dynamic max {m:g}": AUTHORS.schedule(best, group=behaviour.name, max_strength=m)  # type: ignore[arg-type]
        for m in DYNAMIC_MAX
    }
    add("dynamic", dynamic, cpus[better])
    if lora:
        adapter, table, cpu, why = _lora(setup)
        if adapter is None:
            notes.append(why)
        else:
            _, numbers, said = _choose(setup, "LoRA", table, cpu)
            chosen.append(Contender("LoRA", (), adapter, cpu, numbers, said))
            notes.append(said)
    return chosen, notes
