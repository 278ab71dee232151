"""Instruction-following studies (Stolfo et al. 2025): format, length, composition and ablation.

Every study has the signature ``(model, scale, out_dir) -> StudyResult`` and calls only the public API:

* :func:`format_study`: one diff-in-means vector per format instruction (train split, last prompt token); the
  layer and the mode (``set_projection``, or ``add`` in ``diff_norm`` units) chosen on the validation split
  with :func:`~workbench.sweeps.sweep` and :func:`~workbench.sweeps.choose`; on the test split, compliance
  and degeneration in four settings: no instruction, no instruction + steering, instruction, instruction +
  steering (Stolfo et al.'s table), per instruction and averaged.
* :func:`length_study`: words and sentences per response against the coefficient of a conciseness and a
  verbosity vector, and compliance with "at most 2 sentences" with and without conciseness steering.
* :func:`composition_study`: a format vector and a length vector at once, as two interventions at their own
  layers and as their sum at one layer, against each alone and against both instructions in the prompt.
* :func:`~workbench.studies.ablation.ablation_study` (re-exported here): directional ablation of an
  instruction's direction (at the chosen layer and at every layer) with the instruction in the prompt, against
  random unit directions ablated the same ways (compliance and degeneration, mean ± sd over seeds).

The shared steps are in :mod:`workbench.studies.steps`: validation sweeps are cached under ``out_dir/sweeps``
(keyed by dataset, model fingerprint and size), so the studies of one run directory share them; each study's
test-split generations run through :func:`~workbench.runner.run_grid` (parts under its folder, resumable) and
are scored on every call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from workbench.datasets import Item, load
from workbench.datasets import names as dataset_names
from workbench.errors import InvalidArgumentError
from workbench.models import Model
from workbench.runs import write_frame
from workbench.schedules import DynamicStrength
from workbench.steering import Intervention
from workbench.studies.ablation import ablation_study
from workbench.studies.common import Scale, StudyResult
from workbench.studies.steps import (
    JSON_TOKENS,
    Selected,
    TestJob,
    bars,
    budget,
    build_vector,
    candidate_layers,
    run_jobs,
    save,
    select,
)
from workbench.vectors import SteeringVector

__all__ = [
    "FORMATS",
    "JSON_TOKENS",
    "SETTINGS",
    "Selected",
    "ablation_study",
    "build_vector",
    "candidate_layers",
    "composition_study",
    "format_study",
    "length_study",
    "select",
]

#: The format instructions of :func:`format_study` (IFEval-verifiable, bundled datasets). ``uppercase`` is
#: left out: SmolLM2 ignores both case instructions, and ``lowercase`` already shows it.
FORMATS = (
    "json_format",
    "bullet_lists",
    "lowercase",
    "no_comma",
    "title",
    "highlighted_sections",
)
#: The four test settings of :func:`format_study`, in table order.
SETTINGS = ("no_instruction", "no_instruction+steering", "with_instruction", "with_instruction+steering")


# ---- 1. format ----------------------------------------------------------------------------------------


def _format_table(rows: pd.DataFrame, chosen: dict[str, Selected]) -> pd.DataFrame:
    """Per instruction: the validation choice, compliance and degeneration per setting; then the average."""
    records = []
    for name in chosen:
        mine = rows[rows["instruction"] == name]
        described = chosen[name].describe()
        record = {"instruction": name, **{k: described[k] for k in ("config", "layer", "mode", "coef")}}
        by_setting = mine.groupby("setting", sort=False)
        record |= {s: float(by_setting["follows"].mean()[s]) for s in SETTINGS}
        record |= {f"degeneration:{s}": float(by_setting["degenerate"].mean()[s]) for s in SETTINGS}
        records.append(record | {"n": int(mine["id"].nunique())})
    table = pd.DataFrame(records)
    numeric = [*SETTINGS, *(f"degeneration:{s}" for s in SETTINGS)]
    average = {"instruction": "average", "config": "", "layer": pd.NA, "mode": "", "coef": np.nan}
    average |= {c: float(table[c].mean()) for c in numeric} | {"n": int(table["n"].sum())}
    table = pd.concat([table, pd.DataFrame([average])], ignore_index=True)
    table["layer"] = table["layer"].astype("Int64")
    return table


def format_study(
    model: Model,
    scale: Scale,
    out_dir: str | os.PathLike[str],
    *,
    names: Sequence[str] = FORMATS,
    coefs: Sequence[float] = (1.0, 2.0),
    json_tokens: int | None = None,
    progress: bool = False,
) -> StudyResult:
    """Stolfo et al.'s format table: compliance in the four :data:`SETTINGS` per instruction and averaged.

    Table columns: ``instruction, config, layer, mode, coef`` (the validation choice; ``mode`` "none" when
    steering did not beat the unsteered model, whose steered settings then equal the unsteered ones), one
    compliance column per setting, ``degeneration:<setting>`` per setting, and ``n``; the last row,
    ``average``, is the mean over instructions. ``json_tokens`` (default: :data:`JSON_TOKENS` at full scale)
    is the token budget of ``json_format``.
    """
    run = Path(out_dir)
    out = run / "format"
    out.mkdir(parents=True, exist_ok=True)
    unknown = [n for n in names if n not in dataset_names()]
    if unknown or not names:
        raise InvalidArgumentError(f"unknown or no format datasets {unknown}; see workbench.datasets.names()")
    chosen = {}
    for name in names:
        chosen[name] = select(
            model, name, scale, run, coefs=coefs, json_tokens=json_tokens, progress=progress
        )
        write_frame(chosen[name].summary, out / f"sweep_{name}.csv", "sweep summary")
    jobs = []
    for name in names:
        iv = chosen[name].intervention
        tokens = budget(name, scale, json_tokens)
        for item in load(name, "test").head(scale.n_test).items:
            for setting in SETTINGS:
                steered = setting.endswith("+steering") and iv is not None
                jobs.append(
                    TestJob(
                        {"instruction": name, "setting": setting, "steered": steered},
                        item,
                        item.query if setting.startswith("no_instruction") else item.prompt,
                        (iv,) if steered and iv is not None else (),
                        tokens,
                    )
                )
    rows = run_jobs(model, jobs, scale, out, progress=progress)
    table = _format_table(rows, chosen)
    choices = pd.DataFrame([chosen[n].describe() for n in names])
    write_frame(choices.astype({"layer": "Int64"}), out / "choices.csv", "layer choices")
    figures = save(
        bars(table, "instruction", SETTINGS, "Format compliance on held-out prompts", "compliance (strict)"),
        out,
        "compliance",
    )
    notes = [
        f"{n}: "
        + (
            "no steered configuration beat no steering on validation"
            if chosen[n].intervention is None
            else f"{chosen[n].config} (validation {chosen[n].validation_compliance:.2f} vs "
            f"{chosen[n].baseline_compliance:.2f} unsteered)"
        )
        for n in names
    ]
    notes.append(
        f"candidate layers {candidate_layers(model, scale)}; {scale.n_train} train, {scale.n_validation} "
        f"validation, {scale.n_test} test prompts per instruction; json_format budget "
        f"{budget('json_format', scale, json_tokens)} tokens, others {scale.max_new_tokens}"
    )
    return StudyResult(name="format", rows=rows, table=table, figures=figures, notes=notes)


# ---- 2. length ----------------------------------------------------------------------------------------


def _length_jobs(
    vectors: dict[str, SteeringVector],
    layer: int,
    coefs: Sequence[float],
    names: tuple[str, str],
    steering: Intervention,
    scale: Scale,
    tokens: int,
) -> list[TestJob]:
    """The curve (each vector at each coefficient, queries of ``names[0]``) and the ``names[1]`` settings."""
    concise, at_most = names
    queries = load(concise, "test").head(scale.n_test).items
    jobs = []
    for label, vector in vectors.items():
        for c in coefs:
            ivs = () if c == 0 else (Intervention(vector, layer, "add", float(c), scale="diff_norm"),)
            labels = {"part": "curve", "vector": label, "coef": float(c)}
            jobs += [TestJob(labels, item, item.query, ivs, tokens) for item in queries]
    for item in load(at_most, "test").head(scale.n_test).items:
        for setting, prompt, ivs in (
            ("no instruction", item.query, ()),
            ("no instruction + concise steering", item.query, (steering,)),
            ("instruction", item.prompt, ()),
            ("instruction + concise steering", item.prompt, (steering,)),
        ):
            jobs.append(TestJob({"part": at_most, "setting": setting}, item, prompt, ivs, tokens))
    return jobs


def _length_tables(rows: pd.DataFrame, layer: int, at_most: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The length curve (per vector and coefficient) and the ``at_most`` compliance table (per setting)."""
    curve = rows[rows["part"] == "curve"]
    table = (
        curve.groupby(["vector", "coef"], sort=False)
        .agg(
            words=("words", "mean"),
            words_sd=("words", "std"),
            sentences=("sentences", "mean"),
            sentences_sd=("sentences", "std"),
            degeneration=("degenerate", "mean"),
            n=("id", "size"),
        )
        .reset_index()
    )
    table.insert(1, "layer", layer)
    compliance = (
        rows[rows["part"] == at_most]
        .groupby("setting", sort=False)
        .agg(
            compliance=("follows", "mean"),
            degeneration=("degenerate", "mean"),
            words=("words", "mean"),
            sentences=("sentences", "mean"),
            n=("id", "size"),
        )
        .reset_index()
    )
    return table, compliance


def _length_figure(table: pd.DataFrame, layer: int, tokens: int) -> Figure:
    """Words and sentences per response against the coefficient, one line per vector (±sd)."""
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    for k, (column, label) in enumerate(
        (("words", "words per response"), ("sentences", "sentences per response"))
    ):
        ax = fig.add_subplot(1, 2, k + 1)
        for vector, group in table.groupby("vector", sort=False):
            ax.errorbar(
                group["coef"], group[column], yerr=group[f"{column}_sd"], marker="o", capsize=3, label=vector
            )
        ax.set_xlabel(f"coefficient (diff-norms, layer {layer})")
        ax.set_ylabel(label)
        ax.axvline(0, color="grey", lw=0.5)
        ax.legend(fontsize="small")
    fig.suptitle(f"Length steering ({tokens} new tokens at most)")
    return fig


def length_study(
    model: Model,
    scale: Scale,
    out_dir: str | os.PathLike[str],
    *,
    concise: str = "length_extremely_concise",
    verbose: str = "length_verbose",
    at_most: str = "sentences_at_most",
    coefs: Sequence[float] = (-4.0, -2.0, 0.0, 2.0, 4.0),
    max_new_tokens: int | None = None,
    progress: bool = False,
) -> StudyResult:
    """Response length against the steering coefficient, and "at most 2 sentences" with and without steering.

    The layer is the one the validation sweep (with this study's token budget, so that the word limit
    can bind) chooses for the ``concise`` vector (its fallback when no configuration beats no steering);
    the ``verbose`` vector is added at the same layer. Both are added in diff-norm units at every
    coefficient of ``coefs`` (0: no steering) to the test queries without an instruction.
    ``max_new_tokens`` defaults to twice the scale's, so that length can grow.

    Table columns: ``vector, layer, coef, words, words_sd, sentences, sentences_sd, degeneration, n``.
    ``sentences_at_most.csv`` in the study folder holds the compliance table (``setting, compliance,
    degeneration, words, sentences, n``).
    """
    out = Path(out_dir) / "length"
    out.mkdir(parents=True, exist_ok=True)
    tokens = max_new_tokens or 2 * scale.max_new_tokens
    picked = select(model, concise, scale, out_dir, max_new_tokens=tokens, progress=progress)
    write_frame(picked.summary, out / f"sweep_{concise}.csv", "sweep summary")
    layer = picked.layer
    verbose_vector = build_vector(model, verbose, scale)
    vectors = {concise: picked.vector, verbose: verbose_vector}
    steering = picked.or_add(max((c for c in coefs if c > 0), default=2.0))
    jobs = _length_jobs(vectors, layer, coefs, (concise, at_most), steering, scale, tokens)
    rows = run_jobs(model, jobs, scale, out, progress=progress)
    table, compliance = _length_tables(rows, layer, at_most)
    write_frame(compliance, out / "sentences_at_most.csv", "sentence-limit compliance")
    figures = save(_length_figure(table, layer, tokens), out, "length_curve")
    figures += save(
        bars(compliance, "setting", ["compliance", "degeneration"], f"{at_most} on held-out prompts", "rate"),
        out,
        "sentences_at_most",
    )
    notes = [
        f"layer {layer}: "
        + (
            f"chosen for {concise} on validation ({picked.config})"
            if picked.intervention is not None
            else f"fallback (no configuration of {concise} beat no steering on validation)"
        ),
        f"steering for {at_most}: {steering.mode}@{steering.layer}"
        + ("" if steering.coef is None else f" x{steering.coef:g} diff-norms"),
        f"{at_most}: " + "; ".join(f"{r.setting} {r.compliance:.2f}" for r in compliance.itertuples()),
        f"at most {tokens} new tokens per response; counts of cut-off responses are lower bounds",
    ]
    return StudyResult(name="length", rows=rows, table=table, figures=figures, notes=notes)


# ---- 3. composition -----------------------------------------------------------------------------------


def _combined(format_item: Item, length_item: Item) -> Item:
    if format_item.base_id != length_item.base_id:
        raise InvalidArgumentError(f"items {format_item.id} and {length_item.id} are on different queries")
    return replace(
        format_item,
        id=f"{format_item.id}+{length_item.behaviour}",
        behaviour=f"{format_item.behaviour}+{length_item.behaviour}",
        instruction=f"{format_item.instruction} {length_item.instruction}",
        prompt=f"{format_item.query} {format_item.instruction} {length_item.instruction}",
        instruction_id_list=(*format_item.instruction_id_list, *length_item.instruction_id_list),
        kwargs=(*format_item.kwargs, *length_item.kwargs),
    )


#: The dynamic strength of the composition study's dynamic setting: the schedule's documented default
#: (``max_strength`` 2, the authors' ``starting_alpha``; ``α_t`` multiplies each vector's fixed coefficient).
DYNAMIC = DynamicStrength()


def _dynamic(sel: Selected, iv: Intervention) -> Intervention:
    """``iv`` with its own :data:`DYNAMIC` strength; a ``set_projection`` becomes ``add`` at ``add_coef``
    diff-norms (a dynamic strength scales an ``add`` only)."""
    if iv.mode == "add":
        return replace(iv, strength=DYNAMIC, decay_tokens=0)
    return Intervention(
        sel.vector, iv.layer, "add", sel.add_coef, iv.positions, scale="diff_norm", strength=DYNAMIC
    )


def _composition_settings(
    f_sel: Selected, l_sel: Selected
) -> tuple[list[tuple[str, str, bool, tuple[Intervention, ...]]], int]:
    """``(setting, strength, instructed, interventions)`` in table order, and the layer of the sum."""
    f_iv, l_iv = f_sel.or_add(), l_sel.or_add()
    layer = f_iv.layer
    summed = f_sel.vector.select(layer) * f_sel.add_coef + l_sel.vector.select(layer) * l_sel.add_coef
    sum_iv = Intervention(summed, layer, "add", 1.0, scale="diff_norm")
    dynamic = (_dynamic(f_sel, f_iv), _dynamic(l_sel, l_iv))
    settings = [
        ("no instruction", "none", False, ()),
        ("both instructions in the prompt", "none", True, ()),
        (f"{f_sel.name} vector", "fixed", False, (f_iv,)),
        (f"{l_sel.name} vector", "fixed", False, (l_iv,)),
        ("both vectors (own layers)", "fixed", False, (f_iv, l_iv)),
        ("both vectors (own layers, dynamic)", "dynamic", False, dynamic),
        (f"sum of vectors (layer {layer})", "fixed", False, (sum_iv,)),
        ("both instructions + both vectors", "fixed", True, (f_iv, l_iv)),
    ]
    return settings, layer


def _composition_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per setting: the rate of each instruction satisfied, of both, of degeneration."""
    return (
        rows.groupby(["setting", "strength"], sort=False)
        .agg(
            format=("format", "mean"),
            length=("length", "mean"),
            both=("follows", "mean"),
            degeneration=("degenerate", "mean"),
            n=("id", "size"),
        )
        .reset_index()
    )


def composition_study(
    model: Model,
    scale: Scale,
    out_dir: str | os.PathLike[str],
    *,
    format_name: str = "no_comma",
    length_name: str = "one_sentence",
    progress: bool = False,
) -> StudyResult:
    """A format and a length vector together: at their own layers, and summed at the format vector's layer.

    Each vector is used as its validation sweep chose (``add`` at 2 diff-norms at the fallback layer when
    steering did not beat no steering). The sum is ``c_f·v_f + c_l·v_l`` (raw vectors, each with its chosen
    ``add`` coefficient, 1 for ``set_projection``) added at the format layer. The two vectors at their own
    layers also run with dynamic strength (Scalena et al. 2024; each its own :data:`DYNAMIC` ``α_t``
    multiplying its coefficient). Table columns: ``setting, strength, format, length, both, degeneration,
    n`` (``strength``: none, fixed or dynamic; ``format``/``length``: rate of responses that satisfy that
    instruction; ``both``: both).
    """
    out = Path(out_dir) / "composition"
    out.mkdir(parents=True, exist_ok=True)
    f_sel = select(model, format_name, scale, out_dir, progress=progress)
    l_sel = select(model, length_name, scale, out_dir, progress=progress)
    for sel in (f_sel, l_sel):
        write_frame(sel.summary, out / f"sweep_{sel.name}.csv", "sweep summary")
    settings, layer = _composition_settings(f_sel, l_sel)
    f_items = load(format_name, "test").head(scale.n_test).items
    l_items = load(length_name, "test").head(scale.n_test).items
    tokens = max(budget(format_name, scale), budget(length_name, scale))
    jobs = []
    for f_item, l_item in zip(f_items, l_items, strict=True):
        item = _combined(f_item, l_item)
        for setting, strength, instructed, ivs in settings:
            prompt = item.prompt if instructed else item.query
            jobs.append(TestJob({"setting": setting, "strength": strength}, item, prompt, ivs, tokens))
    rows = run_jobs(model, jobs, scale, out, progress=progress)
    f_id, l_id = f_items[0].instruction_id_list[0], l_items[0].instruction_id_list[0]
    rows = rows.assign(format=rows[f"check:{f_id}"].astype(bool), length=rows[f"check:{l_id}"].astype(bool))
    table = _composition_table(rows)
    figures = save(
        bars(
            table, "setting", ["format", "length", "both"], f"{format_name} + {length_name}", "rate satisfied"
        ),
        out,
        "composition",
    )

    def how(sel: Selected, iv: Intervention) -> str:
        chosen = "chosen on validation" if sel.intervention is not None else "fallback, steering did not win"
        return f"{sel.name}: {iv.label} ({chosen})"

    notes = [
        how(f_sel, f_sel.or_add()),
        how(l_sel, l_sel.or_add()),
        f"sum at layer {layer}: {f_sel.add_coef:g}·{format_name} + {l_sel.add_coef:g}·{length_name} "
        "(raw vectors)",
        f"cosine of the two directions at layer {layer}: {f_sel.vector.cosine(l_sel.vector)[layer]:.3f}",
        "dynamic: each vector its own α_t = clip(KL(P‖Q) on the union top-p set, 0, α_max) per token, times "
        f"its fixed coefficient; α_max {DYNAMIC.max_strength:g} and top-p {DYNAMIC.top_p:g} are "
        "DynamicStrength's documented defaults (the authors'), so it can reach twice the fixed strength",
    ]
    notes += [
        f"{s.name}: set_projection has no strength to schedule; its dynamic version adds 1 diff-norm × α_t"
        for s in (f_sel, l_sel)
        if s.or_add().mode != "add"
    ]
    return StudyResult(name="composition", rows=rows, table=table, figures=figures, notes=notes)
