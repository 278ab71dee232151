"""The baselines study (issue 19): steering against prompting, dynamic steering and LoRA on the same prompts.

Per behaviour (:data:`BEHAVIOURS`) one table, one row per method of :data:`METHODS`: unsteered, the
instruction in the prompt, (Italian) the fully Italian prompt, fixed steering, dynamic steering under the
authors' rule (:data:`DYNAMIC`: :data:`~workbench.studies.dac.AUTHORS`, the KL averaged over the nucleus,
steering from the last prompt token on; the summed rule is not run here, the composition study shows both),
the fixed control at that run's mean strength (:data:`CONTROL`: the same interventions without schedule,
each coef × the mean α traced on the same test prompts), steering + instruction, LoRA and LoRA +
instruction; the competitors are chosen on the validation split (:mod:`workbench.studies.competitors`) and
every number comes from the test split, generated once per intervention with
:func:`~workbench.runner.run_grid` (raw parts in the study folder, so a rerun resumes and rescores). Columns:

* ``target_rate`` (the behaviour's target, named in ``target``), ``clean_rate`` (on target, not
  degenerate and, where the reference model is stronger than the scored one, fluent by it:
  ``clean_with_reference``), ``degeneration`` (:func:`~workbench.evaluation.is_degenerate`) and
  ``median_perplexity`` under the unmodified model, all from :func:`workbench.evaluation.scoring.score_answers`;
* ``validation_clean_rate``, ``validation_target_rate`` (and ``validation_mean_score`` where a judge rated):
  the validation numbers fixed and dynamic steering were chosen by, on their rows
  (:data:`~workbench.studies.competitors.CHOSEN_BY`; NaN on the others), which the goals choose between;
* ``fluent_rate`` and ``median_relative_perplexity``: the answers' fluency judged by the ``reference``
  model (:mod:`workbench.evaluation.reference`; Qwen2.5-Coder-1.5B-Instruct once fetched, else the scored
  model itself, reported but not part of the clean rate), loaded once per study, calibrated per behaviour
  on the unmodified model's validation answers (:func:`~workbench.studies.competitors.fluency_judge`);
  the same judge filters LoRA's distilled answers and joins the validation clean rates of dynamic steering
  and LoRA where it is stronger; ``distinct_rate``: the
  share of distinct answers (a model that answers every prompt with one memorised sentence is on target,
  clean, and has a low one);
* ``off_target_compliance``: IFEval compliance with *other* format instructions (:data:`OFF_TARGET`) asked
  for in the prompt, under the method's intervention; ``off_target_damage`` = the unmodified model's
  compliance minus that (NaN for prompt-only methods: the other instruction is the prompt);
* ``mc_{by}_accuracy_{en,it}``, ``mc_{by}_gained_*``, ``mc_{by}_lost_*`` and ``mc_generation_unparsed_*``:
  the bundled multiple-choice test questions (English for format behaviours, both languages for Italian)
  under the intervention, against the unmodified model, answered by generation (``by`` = ``generation``:
  a generated answer, parsed, the seed's protocol) and by option log-likelihood (``loglik``; a hook on
  generated tokens never touches it, and dynamic steering has none: its strength is set while generating)
  (:mod:`workbench.studies.choices`); prompt-only methods leave the model as it is;
* ``train_cpu_seconds`` (building the vector with the caches off, or distilling and training the adapter;
  the validation grids excluded) and ``tokens_per_second`` (test generation, wall clock, measured when it ran).

How far steering is from the issue's goals, and why, is in ``goals.csv`` and the notes
(:mod:`workbench.studies.goals`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from workbench import presets
from workbench.behaviours import BEHAVIOURS as FRONTIER_BEHAVIOURS
from workbench.behaviours import Behaviour
from workbench.datasets import Item, load
from workbench.errors import InvalidArgumentError
from workbench.evaluation.mc import BY
from workbench.evaluation.perplexity import perplexity
from workbench.evaluation.reference import REFERENCE_SPEC, Judge, reference_model
from workbench.evaluation.scoring import score_answers
from workbench.evaluation.targets import follows
from workbench.files import atomic_text, write_frame
from workbench.finetune import LoraAdapter, lora_applied
from workbench.interventions import Intervention
from workbench.models import Model
from workbench.presets import Preset
from workbench.recipes import Recipe
from workbench.runner import Job, run_grid
from workbench.size import Size
from workbench.studies.choices import LANGUAGES, cached_choice, mc_columns, mc_items
from workbench.studies.competitors import Competitors, choose_competitors, grid_dir
from workbench.studies.goals import goal_note, goals
from workbench.studies.registry import Study
from workbench.studies.result import StudyResult
from workbench.studies.steps import save

__all__ = [
    "BEHAVIOURS",
    "CONTROL",
    "DYNAMIC",
    "MARKERS",
    "METHODS",
    "OFF_TARGET",
    "STUDY",
    "baselines_study",
    "study_behaviour",
]

#: The behaviours of the study.
BEHAVIOURS = ("json", "one_sentence", "no_comma", "italian")
#: The dynamic steering of the table (the authors' rule) and its fixed control at the same mean strength.
DYNAMIC, CONTROL = "dynamic steering (authors')", "steering at dynamic's mean α"
#: Each method: the prompt kind it answers and its intervention (none, fixed steering, dynamic steering,
#: fixed steering at the dynamic run's mean strength, LoRA).
METHODS: dict[str, tuple[str, str]] = {
    "unsteered": ("plain", "none"),
    "instruction": ("instruction", "none"),
    "Italian prompt": ("native", "none"),
    "steering": ("plain", "fixed"),
    DYNAMIC: ("plain", "dynamic"),
    CONTROL: ("plain", "control"),
    "steering + instruction": ("instruction", "fixed"),
    "LoRA": ("plain", "lora"),
    "LoRA + instruction": ("instruction", "lora"),
}
#: The figure's marker per intervention kind.
MARKERS = {"none": "o", "fixed": "s", "dynamic": "D", "control": "P", "lora": "^"}
#: Format instructions whose compliance measures off-target damage (the first three not the behaviour's own).
OFF_TARGET = ("bullet_lists", "title", "highlighted_sections", "json_format")
_BEHAVIOURS = {**FRONTIER_BEHAVIOURS, "no_comma": Behaviour("no_comma", "no_comma", 64)}


def _off_target(behaviour: Behaviour, n: int) -> list[tuple[Item, Job]]:
    """``n`` test prompts (with their instruction) of each of three other format instructions."""
    out = []
    for name in [name for name in OFF_TARGET if name != behaviour.dataset][:3]:
        data = load(name, "test").head(n)
        out += [
            (item, Job(f"off-target {name}", item.id, p))
            for item, p in zip(data.items, data.positive, strict=True)
        ]
    return out


def _generate(
    model: Model, jobs: list[Job], tokens: int, size: Size, folder: Path
) -> tuple[pd.DataFrame, float]:
    """run_grid's rows, and tokens per second of the generation (stored, so a resumed grid keeps it)."""
    parts: list[pd.DataFrame] = []
    tick = time.perf_counter()
    rows = run_grid(
        model, jobs, max_new_tokens=tokens, batch_size=size.batch_size, out_dir=folder, on_chunk=parts.append
    )
    record = folder / "speed.json"
    if parts:
        responses = pd.concat(parts)["response"]
        n_tokens = sum(len(model.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses)
        speed = n_tokens / max(time.perf_counter() - tick, 1e-9)
        atomic_text(record, json.dumps({"tokens_per_second": speed, "tokens": n_tokens}), "speed")
    speed = json.loads(record.read_text())["tokens_per_second"] if record.exists() else float("nan")
    return rows, speed


def _control_note(chosen: Competitors, answers: pd.DataFrame) -> str:
    """What the control is, the dynamic run's mean α and share of steps at the cap, where they come from."""
    dynamic = answers.loc[answers["setting"] == DYNAMIC, "response"].tolist()
    same = sum(a == b for a, b in zip(dynamic, chosen.strengths.responses, strict=True))
    said = ", ".join(
        f"{chosen.strengths.mean[label]:.3g} ({chosen.strengths.at_cap[label]:.0%} of steps at the cap)"
        for label in chosen.strengths.mean
    )
    return (
        f"{CONTROL}: the interventions of {DYNAMIC} without schedule (same positions), each coef × their "
        f"mean α {said} "
        f"over every generated token of the same {len(dynamic)} test prompts, traced in a second generation "
        f"whose answers are the table's for {same} of {len(dynamic)}"
    )


def study_behaviour(
    model: Model,
    name: str,
    size: Size,
    out: Path,
    candidates: Sequence[Recipe] | None = None,
    reference: Model | None = None,
    lora: bool = True,
    found: Mapping[str, Preset] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """One behaviour's table (one row per method), its scored answers, and notes (``candidates``, ``lora``:
    see :func:`baselines_study`; ``reference``: the loaded fluency reference, default ``model`` itself;
    ``found``: the presets to start from, default the bundled ones)."""
    if name not in _BEHAVIOURS:
        raise InvalidArgumentError(f"unknown behaviour {name!r}: use some of {', '.join(_BEHAVIOURS)}")
    behaviour = dataclasses.replace(_BEHAVIOURS[name], max_new_tokens=size.max_new_tokens)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    chosen = choose_competitors(model, behaviour, size, folder, candidates, reference or model, lora, found)
    kinds, adapter = chosen.kinds, chosen.adapter
    methods = {
        m: pk
        for m, pk in METHODS.items()
        if pk[1] in kinds and (pk[0] != "native" or behaviour.instruction_variant is not None)
    }
    test = behaviour.items("test", size.n_test)
    prompts = {p: behaviour.prompts("test", size.n_test, p) for p, _ in methods.values()}
    off = _off_target(behaviour, max(2, size.n_test // 4))
    rows, speed = [], {}
    for kind, ivs in kinds.items():
        jobs = [
            Job(m, item.id, prompts[p][i], ivs)
            for m, (p, k) in methods.items()
            if k == kind
            for i, item in enumerate(test.items)
        ]
        jobs += [dataclasses.replace(job, interventions=ivs) for _, job in off]
        stage = f"test-{kind}" + (f"-{adapter.hash[:12]}" if kind == "lora" and adapter else "")
        with lora_applied(model, adapter) if kind == "lora" and adapter else nullcontext():
            grid, speed[kind] = _generate(
                model,
                jobs,
                behaviour.max_new_tokens,
                size,
                grid_dir(folder, stage, model, behaviour.max_new_tokens),
            )
        rows.append(grid.assign(kind=kind))
    graded = pd.concat(rows, ignore_index=True)
    answers = _score(model, behaviour, graded, test.items, off, chosen.judge, chosen.stronger is not None)
    mc = _mc_all(model, behaviour, size, out, kinds, adapter)
    table = _table(
        behaviour, methods, answers, mc, chosen.cpu, speed, chosen.stronger is not None, chosen.validation
    )
    notes = [f"{name}: {note}" for note in [*chosen.notes, _control_note(chosen, answers)]]
    return table, answers.assign(behaviour=name), notes


def _score(
    model: Model,
    behaviour: Behaviour,
    rows: pd.DataFrame,
    items: Sequence[Item],
    off: list[tuple[Item, Job]],
    judge: Judge | None,
    joins_clean: bool,
) -> pd.DataFrame:
    """Method rows scored by :func:`score_answers` (perplexity under the unmodified model; ``judge``'s
    verdict as ``fluent``, part of ``clean`` when it ``joins_clean``); off-target rows by IFEval
    compliance with their own instruction (``on_target``, IFEval strict)."""
    on = ~rows["setting"].str.startswith("off-target ")
    mine = rows[on].reset_index(drop=True)
    prompts, responses = mine["prompt"].tolist(), mine["response"].tolist()
    ppl = perplexity(model, prompts, responses)
    verdict = judge(prompts, responses) if judge is not None else None
    fluent = verdict["fluent_reference"].tolist() if verdict is not None and joins_clean else None
    by_id = {item.id: item for item in items}
    scored = score_answers(behaviour.target, [by_id[i] for i in mine["id"]], responses, ppl, fluent)
    mine = mine.assign(**{c: scored[c] for c in ("perplexity", "on_target", "degenerate", "clean")})
    if verdict is not None:
        mine = mine.assign(
            reference=verdict["reference"],
            relative_perplexity=verdict["relative_perplexity"],
            fluent=verdict["fluent_reference"],
        )
    by_job = {(job.setting, job.id): item for item, job in off}
    others = rows[~on].reset_index(drop=True)
    keys = zip(others["setting"], others["id"], others["response"], strict=True)
    return pd.concat(
        [mine, others.assign(on_target=[follows(by_job[(s, i)], r) for s, i, r in keys])], ignore_index=True
    )


def _mc_all(
    model: Model,
    behaviour: Behaviour,
    size: Size,
    out: Path,
    kinds: Mapping[str, Sequence[Intervention]],
    adapter: LoraAdapter | None,
) -> dict[str, dict[str, dict[str, pd.DataFrame]]]:
    """Per intervention kind, way of answering (:data:`~workbench.evaluation.mc.BY`) and language, the
    multiple-choice rows; a dynamic strength is set while generating, so it is answered by generation only."""
    languages = LANGUAGES if behaviour.target == "italian" else ("en",)
    cache = out / "multiple_choice"
    found: dict[str, dict[str, dict[str, pd.DataFrame]]] = {}
    for kind, ivs in kinds.items():
        label = "unmodified" if kind == "none" else f"{behaviour.name}-{kind}"
        ways = [by for by in BY if by == "generation" or not any(iv.schedule for iv in ivs)]
        with lora_applied(model, adapter) if kind == "lora" and adapter else nullcontext():
            for by, language in product(ways, languages):
                items, parallel = mc_items(language, size.n_mc)
                found.setdefault(kind, {}).setdefault(by, {})[language] = cached_choice(
                    model,
                    items,
                    cache / f"mc-{by}-{label}-{language}.parquet",
                    by=by,
                    interventions=ivs,
                    parallel=parallel,
                )
    return found


def _table(
    behaviour: Behaviour,
    methods: dict[str, tuple[str, str]],
    answers: pd.DataFrame,
    mc: dict[str, dict[str, dict[str, pd.DataFrame]]],
    cpu: dict[str, float],
    speed: dict[str, float],
    stronger: bool,
    validation: Mapping[str, Mapping[str, float]],
) -> pd.DataFrame:
    """One row per method: the rates, fluency, off-target damage, multiple choice, cost (see the module
    docstring); ``stronger``: the clean rate needs the reference's verdict; ``validation``: per intervention
    kind chosen on validation, its setting's numbers there, shown on the method that answers the plain prompts
    it was chosen on."""
    off = answers[answers["setting"].str.startswith("off-target ")]
    judged = "fluent" in answers
    compliance = off.groupby("kind")["on_target"].mean()
    shown = list(dict.fromkeys(k for numbers in validation.values() for k in numbers))
    out = []
    for method, (prompt, kind) in methods.items():
        mine = answers[answers["setting"] == method]
        intervened = prompt == "plain" or kind != "none"
        chosen = validation.get(kind, {}) if prompt == "plain" else {}
        row = {
            "behaviour": behaviour.name,
            "method": method,
            "target": behaviour.target,
            "target_rate": mine["on_target"].mean(),
            "clean_rate": mine["clean"].mean(),
            **{f"validation_{k}": chosen.get(k, np.nan) for k in shown},
            "degeneration": mine["degenerate"].mean(),
            "fluent_rate": mine["fluent"].astype(float).mean() if judged else np.nan,
            "reference": mine["reference"].iloc[0] if judged else None,
            "clean_with_reference": stronger,
            "median_relative_perplexity": mine["relative_perplexity"].median() if judged else np.nan,
            "median_perplexity": mine["perplexity"].median(),
            "distinct_rate": mine["response"].nunique() / len(mine),
            "off_target_compliance": compliance[kind] if intervened else np.nan,
            "off_target_damage": compliance["none"] - compliance[kind] if intervened else np.nan,
        }
        for by, language in product(BY, LANGUAGES):
            base = mc["none"].get(by, {}).get(language)
            steered = mc.get(kind, {}).get(by, {}).get(language) if kind != "none" else base
            row |= mc_columns(base, steered, language, by)
        row |= {"train_cpu_seconds": cpu[kind], "tokens_per_second": speed[kind], "n": len(mine)}
        out.append(row)
    return pd.DataFrame(out)


def plot_baselines(table: pd.DataFrame) -> Figure:
    """Clean rate against English multiple-choice accuracy answered by generation per method (one colour
    each; circles leave the model as it is, squares steer, diamonds steer dynamically, crosses steer at the
    dynamic run's mean strength, triangles fine-tune), one panel per behaviour; a method without that
    accuracy is a dashed line at its clean rate."""
    names = list(dict.fromkeys(table["behaviour"]))
    fig = Figure(figsize=(3.6 * len(names) + 1.8, 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(names), sharey=True))
    handles: dict[str, object] = {}
    for ax, name in zip(axes, names, strict=True):
        for row in table[table["behaviour"] == name].itertuples():
            colour = f"C{list(METHODS).index(row.method)}"
            if np.isnan(row.mc_generation_accuracy_en):
                handles[row.method] = ax.axhline(row.clean_rate, ls="--", color=colour)
            else:
                marker = MARKERS[METHODS[row.method][1]]
                handles[row.method] = ax.scatter(
                    row.mc_generation_accuracy_en,
                    row.clean_rate,
                    color=colour,
                    marker=marker,
                    s=50,
                    alpha=0.8,
                )
        ax.set_title(name)
        ax.set_xlabel("multiple-choice accuracy (en, by generation)")
        ax.set_ylim(-0.02, 1.02)
    fluent = ", fluent" if table["clean_with_reference"].all() else ""
    axes[0].set_ylabel(f"clean rate (on target, not degenerate{fluent})")
    order = [m for m in METHODS if m in handles]
    fig.legend([handles[m] for m in order], order, fontsize="small", loc="outside right center")
    return fig


def _reference_note(model: Model, judge: Model, asked: Model | str | None) -> str:
    """Which model judged fluency, and whether the clean rate used its verdict."""
    if judge.fingerprint != model.fingerprint:
        return (
            f"fluency reference: {judge.name} ({judge.fingerprint[:12]}), loaded once; clean = on target, not "
            "degenerate and fluent by it"
        )
    if isinstance(asked, str) and asked != model.name:
        why = f"{asked!r} did not load offline: `workbench models fetch {asked}`"
    else:
        why = "none was given" if asked is None else "the reference given is the scored model"
    return (
        f"no stronger fluency reference ({why}): fluency judged by {model.name} itself and reported only; "
        "clean = on target and not degenerate (the text rule)"
    )


def baselines_study(
    model: Model,
    size: Size,
    out_dir: str | os.PathLike[str],
    *,
    behaviours: Sequence[str] = BEHAVIOURS,
    name: str | None = None,
    candidates: Sequence[Recipe] | None = None,
    reference: Model | str | None = REFERENCE_SPEC,
    lora: bool = True,
    presets_file: str | None = None,
    progress: bool = False,
) -> StudyResult:
    """Every method of :data:`METHODS` on each behaviour's test prompts; one table, the scored answers as
    rows, one figure, written to ``out_dir/name`` (default ``baselines``, ``baselines_base_model`` for a base
    model).

    ``candidates``: the steering recipes (``prompt`` source) tried on validation where the model has no
    preset for a behaviour (default: :func:`~workbench.studies.search.coarse_grid`). ``reference``: the
    fluency judge's model, loaded once (a spec, loaded when it loads offline, else ``model``), a loaded
    model, or None for ``model`` itself; only a model other than ``model`` joins the clean rate. ``lora``
    False leaves the two LoRA methods out (a model too large to fine-tune on the machine).
    ``presets_file``: a recorded search's ``presets.json`` (``workbench study frontier`` writes
    ``frontier/presets.json``) to start the fixed steering from, for a model the bundled presets do not cover.
    """
    name = name or ("baselines" if model.is_chat else "baselines_base_model")
    out = Path(out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(reference, str):  # the scored model itself is not loaded twice
        judge = model if reference == model.name else reference_model(model, reference)
    else:
        judge = model if reference is None else reference
    found = None if presets_file is None else presets.read(presets_file)
    tables, rows, notes = [], [], []
    for behaviour in behaviours:
        table, answers, said = study_behaviour(model, behaviour, size, out, candidates, judge, lora, found)
        tables.append(table)
        rows.append(answers)
        notes += said
    table = pd.concat(tables, ignore_index=True)
    notes.append(_reference_note(model, judge, reference))
    notes.append(
        f"{model.name}: {size.n_test} test prompts, {size.max_new_tokens} new tokens, greedy; choices on "
        f"{size.n_validation} validation prompts; off-target: {max(2, size.n_test // 4)} prompts of each of "
        "three other format instructions; multiple choice answered by generation (mc_generation_*, parsed, "
        "the unparsed share a column) and by option log-likelihood (mc_loglik_*, none for dynamic steering); "
        "prompt-only methods leave the multiple-choice answers unchanged; "
        "train_cpu_seconds: building the vector with the caches off (with the completions a response-token "
        "vector needs) or distilling and training the adapter, validation grids excluded"
    )
    reached = goals(table)
    write_frame(reached, out / "goals.csv", "goals")
    notes += [goal_note(row) for _, row in reached.iterrows()]
    figure = plot_baselines(table)
    figures = save(figure, out, "baselines")
    return StudyResult(name, pd.concat(rows, ignore_index=True), table, figures, notes)


STUDY = Study(
    "baselines",
    "Baselines: prompting and fine-tuning on the same data as steering",
    baselines_study,
    sizes={"quick": Size.quick(), "full": Size.baselines(), "large": Size.large()},
    order=90,
    folders=("baselines", "baselines_base_model"),
)
