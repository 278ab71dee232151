"""Composition: a format vector and a length vector at once, as two interventions at their own layers (fixed,
and with dynamic strength under the authors' rule and the summed one, each with a fixed control at its mean
strength) and as their sum at one layer, against each alone and both instructions."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from workbench.datasets import Item, load
from workbench.errors import InvalidArgumentError
from workbench.files import write_frame
from workbench.interventions import Intervention
from workbench.models import Model
from workbench.size import Size
from workbench.studies.dac import (
    AUTHORS,
    SUMMED,
    VARIANTS,
    Strengths,
    Variant,
    at_mean_strength,
    column_labels,
    traced_strengths,
)
from workbench.studies.registry import Study
from workbench.studies.result import StudyResult
from workbench.studies.steps import (
    Selected,
    TestJob,
    bars,
    budget,
    run_jobs,
    save,
    select,
)


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


def _as_add(sel: Selected, iv: Intervention) -> Intervention:
    """``iv`` as an ``add`` (a dynamic strength scales an ``add`` only): a ``set_projection`` becomes ``add``
    at ``add_coef`` diff-norms at its layer and positions."""
    if iv.mode == "add" and iv.coef is not None:
        return iv
    return Intervention(sel.vector, iv.layer, "add", sel.add_coef, iv.positions)


@dataclass(frozen=True)
class DynamicRun:
    """One rule's dynamic setting of the two vectors, its strengths on the test prompts and its fixed control."""

    variant: Variant
    interventions: tuple[Intervention, ...]
    strengths: Strengths
    control: tuple[Intervention, ...]

    def means(self) -> list[float]:
        """Each vector's mean α, in order (format, length)."""
        return [self.strengths.mean[str(label)] for label in column_labels(self.interventions)]


def _dynamic_runs(
    model: Model, sels: tuple[Selected, Selected], prompts: list[str], tokens: int, size: Size, out: Path
) -> list[DynamicRun]:
    """Per rule of :data:`~workbench.studies.dac.VARIANTS`: the two vectors at their own layers, each with its
    own α_t (a group per vector) multiplying its coefficient, traced on the test ``prompts``, and the
    fixed control at each vector's mean α."""
    runs = []
    for variant in VARIANTS:
        ivs = tuple(
            iv for sel in sels for iv in variant.schedule([_as_add(sel, sel.or_add())], group=sel.name)
        )
        slug = "authors" if variant is AUTHORS else variant.name
        strengths = traced_strengths(
            model,
            prompts,
            ivs,
            max_new_tokens=tokens,
            batch_size=size.batch_size,
            path=out / f"strengths_{slug}.parquet",
        )
        runs.append(DynamicRun(variant, ivs, strengths, at_mean_strength(ivs, strengths)))
    return runs


def _composition_settings(
    f_sel: Selected, l_sel: Selected, runs: list[DynamicRun]
) -> tuple[list[tuple[str, str, bool, tuple[Intervention, ...]]], int]:
    """``(setting, strength, instructed, interventions)`` in table order, and the layer of the sum."""
    f_iv, l_iv = f_sel.or_add(), l_sel.or_add()
    layer = f_iv.layer
    summed = f_sel.vector.select(layer) * f_sel.add_coef + l_sel.vector.select(layer) * l_sel.add_coef
    sum_iv = Intervention(summed, layer, "add", 1.0)
    settings = [
        ("no instruction", "none", False, ()),
        ("both instructions in the prompt", "none", True, ()),
        (f"{f_sel.name} vector", "fixed", False, (f_iv,)),
        (f"{l_sel.name} vector", "fixed", False, (l_iv,)),
        ("both vectors (own layers)", "fixed", False, (f_iv, l_iv)),
    ]
    for run in runs:
        name, means = run.variant.name, ", ".join(f"{m:.3g}" for m in run.means())
        settings += [
            (f"both vectors (own layers, dynamic, {name})", run.variant.strength, False, run.interventions),
            (
                f"both vectors (own layers, fixed at {name} mean α)",
                f"fixed at {name} mean α ({means})",
                False,
                run.control,
            ),
        ]
    settings += [
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
            both=("on_target", "mean"),
            degeneration=("degenerate", "mean"),
            n=("id", "size"),
        )
        .reset_index()
    )


def _dynamic_notes(runs: list[DynamicRun], names: tuple[str, str], rows: pd.DataFrame) -> list[str]:
    """Per rule: what it is, each vector's mean α and share of steps at the cap, where the means come from
    and whether the traced answers are the table's."""
    notes = []
    for run in runs:
        cap = run.interventions[0].schedule.max_strength  # type: ignore[union-attr]
        labels = [str(label) for label in column_labels(run.interventions)]
        said = [
            f"{name} {run.strengths.mean[label]:.3g} ({run.strengths.at_cap[label]:.0%} of steps at the cap)"
            for name, label in zip(names, labels, strict=True)
        ]
        setting = f"both vectors (own layers, dynamic, {run.variant.name})"
        table = rows.loc[rows["setting"] == setting, "response"].tolist()
        same = sum(a == b for a, b in zip(table, run.strengths.responses, strict=True))
        notes.append(
            f"{run.variant.strength}: {run.variant.rule}; α_max {cap:g}, each vector its own α_t times its "
            f"fixed coefficient; mean α {', '.join(said)}"
        )
        notes.append(
            f"fixed at {run.variant.name} mean α: the same interventions without schedule (same positions), "
            f"each coefficient × its vector's mean α over every generated token of the same {len(table)} test "
            f"prompts, traced in a second generation whose answers are the table's for {same} of {len(table)}"
        )
    notes.append(f"the authors run {AUTHORS.strength}; {SUMMED.strength} is the schedule's default")
    return notes


def composition_study(
    model: Model,
    size: Size,
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
    layers also run with dynamic strength (Scalena et al. 2024; each its own ``α_t`` multiplying its
    coefficient) under both rules of :mod:`workbench.studies.dac`, the authors' and the summed one, each
    with a fixed control at its mean α on the same test prompts. Table columns: ``setting, strength,
    format, length, both, degeneration, n`` (``strength``: none, fixed, ``dynamic (authors')``,
    ``dynamic (summed)``, ``fixed at authors' mean α (a_f, a_l)``...; ``format``/``length``: rate of responses
    that satisfy that instruction; ``both``: both).
    """
    out = Path(out_dir) / "composition"
    out.mkdir(parents=True, exist_ok=True)
    f_sel = select(model, format_name, size, out_dir, progress=progress)
    l_sel = select(model, length_name, size, out_dir, progress=progress)
    for sel in (f_sel, l_sel):
        write_frame(sel.summary, out / f"sweep_{sel.name}.csv", "sweep summary")
    f_items = load(format_name, "test").head(size.n_test).items
    l_items = load(length_name, "test").head(size.n_test).items
    items = [_combined(f, g) for f, g in zip(f_items, l_items, strict=True)]
    tokens = max(budget(format_name, size), budget(length_name, size))
    runs = _dynamic_runs(model, (f_sel, l_sel), [item.query for item in items], tokens, size, out)
    settings, layer = _composition_settings(f_sel, l_sel, runs)
    jobs = [
        TestJob(
            {"setting": setting, "strength": strength},
            item,
            item.prompt if asked else item.query,
            ivs,
            tokens,
        )
        for item in items
        for setting, strength, asked, ivs in settings
    ]
    rows = run_jobs(model, jobs, size, out, progress=progress)
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
        *_dynamic_notes(runs, (format_name, length_name), rows),
    ]
    notes += [
        f"{s.name}: set_projection has no strength to schedule; its dynamic version adds 1 diff-norm × α_t"
        for s in (f_sel, l_sel)
        if s.or_add().mode != "add"
    ]
    return StudyResult(name="composition", rows=rows, table=table, figures=figures, notes=notes)


STUDY = Study(
    "composition",
    "Composition: a format and a length vector together",
    composition_study,
    report=("quick", "full"),
    order=30,
)
