"""The competitors of the baselines study, each chosen on the validation split only, and its fluency judge.

* :func:`fluency_judge`: the reference model's fluency rule (:mod:`workbench.evaluation.reference`),
  calibrated on the unmodified model's validation answers; where the reference is stronger than the scored
  model, the competitors below are chosen (dynamic strength, LoRA) and distilled (LoRA) with it too.

* :func:`fixed_steering`: the best validation clean rate (fluent by the judge where it is stronger;
  :func:`~workbench.recipes.choose_clean`, the one rule of :mod:`workbench.evaluation.selection`) of the
  frontier's preset (:mod:`workbench.presets`) at gentler strengths (:data:`GENTLER`) where the model has
  one for the behaviour, else of a small coarse grid (:func:`~workbench.studies.search.coarse_grid`,
  mean-over-prompt vector).
* :func:`dynamic_steering`: the same interventions with the authors' dynamic strength
  (:data:`~workbench.studies.dac.AUTHORS`, one group, Scalena, Sarti and Nissim 2024: the KL averaged over
  the nucleus, steering from the last prompt token on), ``max_strength`` chosen on validation among
  :data:`DYNAMIC_MAX`.
* :func:`fine_tuned`: a self-distilled LoRA adapter (:func:`workbench.finetune.choose_lora`), saved in the
  study folder and reused by a rerun with the same key.

:func:`choose_competitors` chooses them all for one behaviour and adds the fixed control of the dynamic
steering: its interventions without schedule at the dynamic run's mean strength on the test prompts
(:func:`~workbench.studies.dac.traced_strengths`, :func:`~workbench.studies.dac.at_mean_strength`). Each
steering keeps its chosen setting's validation numbers (:data:`CHOSEN_BY`), which the goals choose between
(:mod:`workbench.studies.goals`), and says when nothing was clean on validation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pandas as pd

from workbench import presets
from workbench.behaviours import BEHAVIOURS as FRONTIER_BEHAVIOURS
from workbench.behaviours import Behaviour, build_vectors
from workbench.errors import InvalidArgumentError
from workbench.evaluation.perplexity import perplexity
from workbench.evaluation.reference import Judge, calibrate
from workbench.evaluation.scoring import score_answers
from workbench.evaluation.selection import choose_setting, nothing_clean
from workbench.files import atomic_text
from workbench.finetune import LoraAdapter, NoPairsError, choose_lora
from workbench.interventions import Intervention
from workbench.models import Model
from workbench.recipes import Recipe, choose_clean, rank, run_recipes, summarize_recipes
from workbench.runner import Job, run_grid
from workbench.size import Size
from workbench.studies.dac import AUTHORS, Strengths, at_mean_strength, traced_strengths
from workbench.studies.search import coarse_grid
from workbench.vectors import SteeringVector

__all__ = [
    "CHOSEN_BY",
    "DYNAMIC_MAX",
    "GENTLER",
    "JUDGE_BATCH",
    "LORA_GRID",
    "Competitors",
    "Steering",
    "choose_competitors",
    "dynamic",
    "dynamic_steering",
    "fine_tuned",
    "fixed_steering",
    "fluency_judge",
    "grid_dir",
    "lora_cpu_seconds",
]

T = TypeVar("T")

#: Answers per forward of the fluency judge (a 1.5B reference's logits over 151k tokens: about 40 MB each).
JUDGE_BATCH = 8
#: Shares of a preset's ``add`` strength tried on validation: a gentler push can keep the answers fluent
#: where the preset's own strength, chosen by the text rule, does not (Scalena et al. 2024).
GENTLER = (1.0, 0.75, 0.5, 0.25)
#: ``max_strength`` of the dynamic strength tried on validation (the paper's bound is 2).
DYNAMIC_MAX = (1.0, 2.0)
#: The validation numbers a chosen steering keeps, where its table has them: what the selection rule reads.
CHOSEN_BY = ("mean_score", "clean_rate", "target_rate")
#: The LoRA grid of :func:`workbench.finetune.choose_lora` per size: ranks, steps, learning rates.
LORA_GRID = {
    "quick": {"ranks": (2,), "steps": (4, 8), "lrs": (3e-2,)},
    "full": {"ranks": (8,), "steps": (30, 60), "lrs": (5e-4, 2e-3)},
}


@dataclass(frozen=True)
class Steering:
    """A chosen steering: its interventions, a label for tables, the CPU seconds building its vector takes
    without caches (validation choices excluded), a note, its setting's validation numbers
    (:data:`CHOSEN_BY`) and whether no setting it was chosen from had a clean validation answer."""

    interventions: tuple[Intervention, ...]
    label: str
    cpu_seconds: float
    note: str
    validation: dict[str, float]
    nothing_clean: bool


def _chosen(best: pd.Series) -> dict[str, float]:
    """``best``'s validation numbers that the selection rule reads (:data:`CHOSEN_BY`)."""
    return {k: float(best[k]) for k in CHOSEN_BY if k in best}


def grid_dir(out: Path, stage: str, model: Model, max_new_tokens: int) -> Path:
    """A run_grid folder of one stage, per model fingerprint and budget (a grid refuses other settings)."""
    return out / f"{stage}-{model.fingerprint[:12]}-{max_new_tokens}"


def _digest(key: object) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cold(build: Callable[[], T], record: Path, key: object) -> tuple[T, float]:
    """``build()`` and its CPU seconds, measured once with the workbench caches off (``WORKBENCH_CACHE`` set
    to an empty folder for the call: activations, completions and presets are computed, as a first user's
    would be) and stored in ``record``; when ``record`` holds ``key``, ``build()`` runs with the caches."""
    stored = json.loads(record.read_text()) if record.exists() else {}
    if stored.get("key") == _digest(key):
        return build(), float(stored["cpu_seconds"])
    saved = os.environ.get("WORKBENCH_CACHE")
    with tempfile.TemporaryDirectory() as empty:
        os.environ["WORKBENCH_CACHE"] = empty
        try:
            cpu = time.process_time()
            value = build()
            seconds = time.process_time() - cpu
        finally:
            if saved is None:
                os.environ.pop("WORKBENCH_CACHE")
            else:
                os.environ["WORKBENCH_CACHE"] = saved
    atomic_text(record, json.dumps({"key": _digest(key), "cpu_seconds": seconds}), "steering cost")
    return value, seconds


def _validation_grid(
    model: Model, behaviour: Behaviour, size: Size, out: Path, stage: str, jobs: list[Job]
) -> pd.DataFrame:
    """run_grid's rows of validation ``jobs`` at the behaviour's budget, cached in ``out``'s ``stage`` folder."""
    return run_grid(
        model,
        jobs,
        max_new_tokens=behaviour.max_new_tokens,
        batch_size=size.batch_size,
        out_dir=grid_dir(out, stage, model, behaviour.max_new_tokens),
    )


def fluency_judge(
    model: Model, reference: Model, behaviour: Behaviour, size: Size, out: Path
) -> tuple[Judge | None, str]:
    """``reference``'s fluency rule, calibrated on ``model``'s unsteered validation answers to the plain
    prompts (``unsteered``) and to the prompts that ask for the behaviour (``target``: the fully Italian
    prompt for Italian, the instruction otherwise), and a note; the rule is written to
    ``out/reference_fluency.json`` and the reference's perplexities are cached beside it. None (and why) when the
    answers are too few to calibrate on."""
    kinds = {"unsteered": "plain", "target": "native" if behaviour.instruction_variant else "instruction"}
    data = behaviour.items("validation", size.n_validation)
    jobs = [
        Job(name, item.id, prompt)
        for name, kind in kinds.items()
        for item, prompt in zip(
            data.items, behaviour.prompts("validation", size.n_validation, kind), strict=True
        )
    ]
    rows = _validation_grid(model, behaviour, size, out, "validation-natural", jobs)
    natural = {
        name: (part["prompt"].tolist(), part["response"].tolist())
        for name, part in rows.groupby("setting", sort=False)
    }
    cache = out / f"reference_perplexity-{reference.fingerprint[:12]}.parquet"
    try:
        rule = calibrate(reference, natural, batch_size=JUDGE_BATCH, cache=cache)
    except InvalidArgumentError as e:  # too few non-empty natural answers
        (out / "reference_fluency.json").unlink(missing_ok=True)  # an earlier run's rule is not this one
        return None, f"no fluency rule ({e})"
    atomic_text(out / "reference_fluency.json", json.dumps(dataclasses.asdict(rule)), "fluency rule")
    return Judge(reference, rule, JUDGE_BATCH, cache), rule.describe()


def fixed_steering(
    model: Model,
    behaviour: Behaviour,
    size: Size,
    out: Path,
    candidates: Sequence[Recipe] | None = None,
    judge: Judge | None = None,
    found: Mapping[str, presets.Preset] | None = None,
) -> Steering:
    """The clean-rate winner on the validation prompts (``judge``'s verdict joins the clean rate) of the
    preset's recipe at each :data:`GENTLER` share of its strength, or without a preset of ``candidates``
    (default: the coarse grid of the mean-over-prompt vector; only ``prompt``-source recipes). ``found``: the
    presets of a recorded search (:func:`workbench.presets.read`) instead of the bundled ones."""
    record = out / "steering_cost.json"
    preset = (presets.PRESETS if found is None else found).get(behaviour.name)
    if preset is not None and model.name in preset.recipes:
        chosen = preset.recipe(model)
        key = [model.fingerprint, behaviour.name, chosen.to_json(), *([preset.n_train] if found else [])]
        vectors, seconds = _cold(
            lambda: _preset_vectors(model, behaviour, preset, found is None), record, key
        )
        grid = _gentler(chosen)
        shares = ", ".join(map(str, GENTLER))
        origin = f"preset {behaviour.name!r} ({chosen.name}) at {shares} of its strength"
    else:
        key = [model.fingerprint, behaviour.name, size.n_train, "prompt"]
        vectors, seconds = _cold(
            lambda: build_vectors(
                model, behaviour, size.n_train, sources=("prompt",), batch_size=size.batch_size
            ),
            record,
            key,
        )
        grid = list(candidates or coarse_grid(model.n_layers, ("prompt",), quick=size.is_quick))
        origin = f"no preset: {len(grid)} recipes of the mean-over-prompt vector"
    recipes = [Recipe(), *grid]
    rows = run_recipes(
        model,
        behaviour,
        vectors,
        recipes,
        "validation",
        size.n_validation,
        batch_size=size.batch_size,
        out_dir=grid_dir(out, "validation-steering", model, behaviour.max_new_tokens),
    )
    if judge is not None:
        fluent = judge(rows["prompt"].tolist(), rows["response"].tolist())["fluent_reference"]
        rows["clean"] = rows["clean"] & fluent.to_numpy()
    summary = summarize_recipes(rows, recipes, model.n_layers)
    summary.to_csv(out / "validation_steering.csv", index=False)
    best = choose_clean(summary)
    recipe = next(r for r in recipes if r.name == best["recipe"])
    note = (
        f"{origin}: {recipe.name} chosen on {size.n_validation} validation prompts (clean rate "
        f"{best['clean_rate']:.2f}{', fluent by the reference' if judge else ''})"
    )
    ivs = tuple(recipe.interventions(vectors[str(recipe.source)]))
    return Steering(ivs, recipe.label, seconds, note, _chosen(best), nothing_clean(rank(summary)))


def _preset_vectors(
    model: Model, behaviour: Behaviour, preset: presets.Preset, bundled: bool
) -> dict[str, SteeringVector]:
    """The preset's vector by its source: a bundled preset's from its cache (:func:`presets.vector`),
    another search's built as the search built it (its behaviour's budget, the same count of train pairs)."""
    source = str(preset.recipe(model).source)
    if bundled:
        return {source: presets.vector(model, preset.name)}
    searched = FRONTIER_BEHAVIOURS.get(preset.behaviour, behaviour)
    return build_vectors(model, searched, preset.n_train, sources=(source,))


def _gentler(recipe: Recipe) -> list[Recipe]:
    """``recipe`` at each :data:`GENTLER` share of its strength (itself alone when it has no ``add``
    strength to size)."""
    if recipe.mode != "add" or not recipe.coef:
        return [recipe]
    return [dataclasses.replace(recipe, coef=share * recipe.coef) for share in GENTLER]


def dynamic(steering: Steering, max_strength: float, group: str) -> tuple[Intervention, ...]:
    """``steering``'s interventions under the authors' rule (:data:`~workbench.studies.dac.AUTHORS`: the KL
    averaged over the nucleus, steering from the last prompt token on, no linear decay), one strength for
    all (``group``), bounded by ``max_strength``."""
    return AUTHORS.schedule(steering.interventions, group=group, max_strength=max_strength)


def dynamic_steering(
    model: Model, behaviour: Behaviour, steering: Steering, size: Size, out: Path, judge: Judge | None = None
) -> Steering:
    """``steering`` under the authors' dynamic strength (:func:`dynamic`) whose bound (:data:`DYNAMIC_MAX`)
    has the best validation clean rate (ties: the higher target rate, then the smaller bound); ``judge``'s
    verdict joins the clean rate."""
    data = behaviour.items("validation", size.n_validation)
    options = {m: dynamic(steering, m, behaviour.name) for m in DYNAMIC_MAX}
    jobs = [
        Job(f"dyn{m:g}", item.id, prompt, ivs)
        for m, ivs in options.items()
        for item, prompt in zip(data.items, data.negative, strict=True)
    ]
    rows = _validation_grid(model, behaviour, size, out, "validation-dynamic", jobs)
    rows["perplexity"] = perplexity(model, rows["prompt"].tolist(), rows["response"].tolist())
    if judge is not None:
        rows["fluent"] = judge(rows["prompt"].tolist(), rows["response"].tolist())["fluent_reference"]
    scores = []
    for m in options:
        part = rows[rows["setting"] == f"dyn{m:g}"]
        fluent = part["fluent"].tolist() if judge is not None else None
        scored = score_answers(
            behaviour.target, data.items, part["response"].tolist(), part["perplexity"], fluent
        )
        scores.append(
            {
                "max_strength": m,
                "clean_rate": scored["clean"].mean(),
                "target_rate": scored["on_target"].mean(),
            }
        )
    table = pd.DataFrame(scores)
    table.to_csv(out / "validation_dynamic.csv", index=False)
    best = choose_setting(table, ("max_strength",))
    m = float(best["max_strength"])
    note = (
        f"{AUTHORS.strength}: {AUTHORS.rule}; α_max {m:g} (validation clean rate {best['clean_rate']:.2f}, "
        f"of {DYNAMIC_MAX}); dynamic (summed) is not run here (it doubles the dynamic grids; the composition "
        "study shows both rules)"
    )
    label = f"{steering.label}+{AUTHORS.spec(max_strength=m).label}"
    return Steering(options[m], label, steering.cpu_seconds, note, _chosen(best), nothing_clean(table))


def fine_tuned(
    model: Model, behaviour: Behaviour, size: Size, out: Path, judge: Judge | None = None
) -> tuple[LoraAdapter | None, str]:
    """The validation-chosen self-distilled LoRA adapter (None when the model gives nothing to distil), and a
    note; ``judge`` filters the distilled answers and joins the validation clean rate. Saved as ``out/lora.safetensors`` (with ``lora.json``: its key, or why there is none); a rerun with
    the same key reads them instead of training."""
    train = behaviour.items("train", size.n_train)
    validation = behaviour.items("validation", size.n_validation)
    grid = LORA_GRID["quick" if size.is_quick else "full"]
    key = {
        "fingerprint": model.fingerprint,
        "train": train.hash,
        "validation": validation.hash,
        "target": behaviour.target,
        "max_new_tokens": behaviour.max_new_tokens,
        "grid": grid,
        "fluency": None if judge is None else dataclasses.asdict(judge.rule),
    }
    path, stamp = out / "lora.safetensors", out / "lora.json"
    record = json.loads(stamp.read_text()) if stamp.exists() else {}
    if record.get("key") == _digest(key) and (record.get("no_pairs") or path.exists()):
        if record.get("no_pairs"):
            return None, record["no_pairs"]
        adapter = LoraAdapter.load(path)
    else:
        try:
            adapter, table = choose_lora(
                model,
                train,
                validation,
                max_new_tokens=behaviour.max_new_tokens,
                target=behaviour.target,
                batch_size=4,
                judge=judge,
                **grid,  # type: ignore[arg-type]
            )
        except NoPairsError as e:
            atomic_text(stamp, json.dumps({"key": _digest(key), "no_pairs": f"no LoRA: {e}"}), "LoRA record")
            return None, f"no LoRA: {e}"
        table.to_csv(out / "validation_lora.csv", index=False)
        adapter.save(path)
        atomic_text(stamp, json.dumps({"key": _digest(key), "no_pairs": None}), "LoRA record")
    recipe, fluency = adapter.provenance["recipe"], adapter.provenance.get("fluency_judge")
    note = (
        f"LoRA rank {recipe['rank']}, {recipe['steps']} steps, lr {recipe['lr']:g} on "
        f"{adapter.provenance['kept_pairs']}/{adapter.provenance['generated_pairs']} distilled pairs"
    )
    if fluency is not None:
        note += f" ({len(fluency['rejected_ids'])} more rejected as not fluent by {fluency['reference']})"
    return adapter, note


def lora_cpu_seconds(adapter: LoraAdapter) -> float:
    """Distilling plus training CPU seconds of ``adapter`` (the validation grid's other points excluded)."""
    return float(adapter.provenance["distill_cpu_seconds"]) + float(adapter.provenance["train_cpu_seconds"])


@dataclass(frozen=True)
class Competitors:
    """One behaviour's competitors, chosen on validation: each intervention kind's interventions, the LoRA
    adapter, the fluency judge (``stronger`` when it joins the clean rate), CPU costs, the dynamic run's
    strengths on the test prompts, notes, and per steering kind (``fixed``, ``dynamic``) its chosen
    setting's validation numbers (:data:`CHOSEN_BY`)."""

    kinds: dict[str, tuple[Intervention, ...]]
    adapter: LoraAdapter | None
    judge: Judge | None
    stronger: Judge | None
    cpu: dict[str, float]
    strengths: Strengths
    notes: list[str]
    validation: dict[str, dict[str, float]]


def choose_competitors(
    model: Model,
    behaviour: Behaviour,
    size: Size,
    folder: Path,
    candidates: Sequence[Recipe] | None,
    reference: Model,
    lora: bool,
    found: Mapping[str, presets.Preset] | None,
) -> Competitors:
    """The judge, fixed and dynamic steering and LoRA as chosen on validation, and the fixed control at the
    dynamic run's mean strength, traced on the plain test prompts; a note for each steering with nothing
    clean on validation (chosen by target rate, as the rule does)."""
    judge, judge_note = fluency_judge(model, reference, behaviour, size, folder)
    stronger = judge if judge is not None and judge.model.fingerprint != model.fingerprint else None
    steering = fixed_steering(model, behaviour, size, folder, candidates, stronger, found)
    dyn = dynamic_steering(model, behaviour, steering, size, folder, stronger)
    strengths = traced_strengths(
        model,
        behaviour.prompts("test", size.n_test, "plain"),
        dyn.interventions,
        max_new_tokens=behaviour.max_new_tokens,
        batch_size=size.batch_size,
        path=folder / "dynamic_strengths.parquet",
    )
    adapter, lora_note = (
        fine_tuned(model, behaviour, size, folder, stronger) if lora else (None, "LoRA not run (lora=False)")
    )
    kinds = {
        "none": (),
        "fixed": steering.interventions,
        "dynamic": dyn.interventions,
        "control": at_mean_strength(dyn.interventions, strengths),
    }
    cpu = {"none": 0.0, "fixed": steering.cpu_seconds, "dynamic": dyn.cpu_seconds, "control": dyn.cpu_seconds}
    if adapter is not None:
        kinds["lora"], cpu["lora"] = (), lora_cpu_seconds(adapter)
    clean = "clean = on target, not degenerate and fluent" if stronger else "clean by the text rule only"
    notes = [f"{judge_note}; {clean}", steering.note, dyn.note, lora_note]
    chosen = {"fixed": steering, "dynamic": dyn}
    notes += [
        f"{kind} steering: nothing clean on validation (best target rate {s.validation['target_rate']:.2f} "
        f"at {s.label}); the table's row shows that choice"
        for kind, s in chosen.items()
        if s.nothing_clean
    ]
    validation = {kind: s.validation for kind, s in chosen.items()}
    return Competitors(kinds, adapter, judge, stronger, cpu, strengths, notes, validation)
