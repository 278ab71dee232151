"""Composition: a format vector and a length vector at once, as two interventions at their own layers (fixed,
and with dynamic strength) and as their sum at one layer, against each alone and both instructions."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pandas as pd

from workbench.datasets import Item, load
from workbench.errors import InvalidArgumentError
from workbench.files import write_frame
from workbench.interventions import Intervention
from workbench.models import Model
from workbench.schedules import DynamicStrength
from workbench.size import Size
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


#: The dynamic strength of the composition study's dynamic setting: the schedule's documented default
#: (``max_strength`` 2, the authors' ``starting_alpha``; ``α_t`` multiplies each vector's fixed coefficient).
DYNAMIC = DynamicStrength()


def _dynamic(sel: Selected, iv: Intervention) -> Intervention:
    """``iv`` with its own :data:`DYNAMIC` strength; a ``set_projection`` becomes ``add`` at ``add_coef``
    diff-norms (a dynamic strength scales an ``add`` only)."""
    if iv.mode == "add":
        return replace(iv, schedule=DYNAMIC, decay_tokens=0)
    return Intervention(sel.vector, iv.layer, "add", sel.add_coef, iv.positions, schedule=DYNAMIC)


def _composition_settings(
    f_sel: Selected, l_sel: Selected
) -> tuple[list[tuple[str, str, bool, tuple[Intervention, ...]]], int]:
    """``(setting, strength, instructed, interventions)`` in table order, and the layer of the sum."""
    f_iv, l_iv = f_sel.or_add(), l_sel.or_add()
    layer = f_iv.layer
    summed = f_sel.vector.select(layer) * f_sel.add_coef + l_sel.vector.select(layer) * l_sel.add_coef
    sum_iv = Intervention(summed, layer, "add", 1.0)
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
            both=("on_target", "mean"),
            degeneration=("degenerate", "mean"),
            n=("id", "size"),
        )
        .reset_index()
    )


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
    layers also run with dynamic strength (Scalena et al. 2024; each its own :data:`DYNAMIC` ``α_t``
    multiplying its coefficient). Table columns: ``setting, strength, format, length, both, degeneration,
    n`` (``strength``: none, fixed or dynamic; ``format``/``length``: rate of responses that satisfy that
    instruction; ``both``: both).
    """
    out = Path(out_dir) / "composition"
    out.mkdir(parents=True, exist_ok=True)
    f_sel = select(model, format_name, size, out_dir, progress=progress)
    l_sel = select(model, length_name, size, out_dir, progress=progress)
    for sel in (f_sel, l_sel):
        write_frame(sel.summary, out / f"sweep_{sel.name}.csv", "sweep summary")
    settings, layer = _composition_settings(f_sel, l_sel)
    f_items = load(format_name, "test").head(size.n_test).items
    l_items = load(length_name, "test").head(size.n_test).items
    tokens = max(budget(format_name, size), budget(length_name, size))
    jobs = []
    for f_item, l_item in zip(f_items, l_items, strict=True):
        item = _combined(f_item, l_item)
        for setting, strength, instructed, ivs in settings:
            prompt = item.prompt if instructed else item.query
            jobs.append(TestJob({"setting": setting, "strength": strength}, item, prompt, ivs, tokens))
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


STUDY = Study(
    "composition",
    "Composition: a format and a length vector together",
    composition_study,
    report=("quick", "full"),
    order=30,
)
