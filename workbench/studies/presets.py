"""The presets study: the bundled presets (the frontier search's recipes) against prompting on the test split."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from workbench import evaluation, presets
from workbench.behaviours import BEHAVIOURS
from workbench.models import Model
from workbench.plots import plot_frontier, save_figure
from workbench.recipes import summarize_recipes
from workbench.size import Size
from workbench.studies.compare import budgeted, gemma, test_recipes, test_rows, test_table, verdict
from workbench.studies.frontier import QUICK_BEHAVIOURS
from workbench.studies.registry import Study
from workbench.studies.result import StudyResult

__all__ = ["STUDY", "presets_study"]


def presets_study(
    model: Model,
    size: Size,
    out_dir: str | os.PathLike[str],
    *,
    base_model: bool = True,
    progress: bool = False,
) -> StudyResult | str:
    """The bundled presets (the recipes the frontier search chose) against prompting, on the test split.

    Per preset chosen for ``model`` (and, with ``base_model``, for Gemma 3 270M when it is installed): the
    test settings of :mod:`~workbench.studies.compare` (unsteered, instruction in the prompt, Italian prompt,
    the preset alone, the preset with the instruction) on ``size.n_test`` prompts, each behaviour with its
    own token budget. A quick ``size``: only the :data:`~workbench.studies.frontier.QUICK_BEHAVIOURS`
    presets (or, where none of them ships, the first that does), their vectors from its few train pairs (cached apart from the presets' own), without the base
    model. Presets withdrawn for a model (rated not fluent: :func:`workbench.presets.withheld`) are not run;
    a note says why. Returns a "not run" line when no preset ships for ``model``. Writes under
    ``out_dir/presets``; table columns as :func:`frontier_study`'s; one ``frontier_<model>_<behaviour>``
    figure of the test settings per preset. Test rows are cached there.
    """
    quick = size.is_quick
    shipped = presets.available(model)
    wanted = [n for n in shipped if not quick or presets.get(n).behaviour in QUICK_BEHAVIOURS] or (
        shipped[:1] if quick else []
    )
    withdrawn = _withdrawn(model)
    if not wanted:
        return (
            f"not run: no preset ships for {model.name}{''.join('; ' + w for w in withdrawn)}; search for "
            f"recipes with `workbench study frontier --model {model.name}`"
        )
    out = Path(out_dir) / "presets"
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(model, name) for name in wanted]
    notes = withdrawn
    if base_model and not quick:
        base = gemma()
        if base is None:
            notes.append("Gemma 3 270M is not installed: its presets were not run")
        else:
            jobs += [(base, name) for name in presets.available(base)]
            notes += _withdrawn(base)
    tables, frames, figures = [], [], []
    for loaded, name in jobs:
        preset = presets.get(name)
        behaviour = budgeted(BEHAVIOURS[preset.behaviour], size)
        recipe = preset.recipe(loaded)
        pairs = presets.train_pairs(name, size.n_train if quick else None)
        vector = presets.vector(loaded, name, n_train=pairs, progress=progress)
        rows = test_rows(loaded, behaviour, {recipe.source: vector}, recipe, size, out, progress)
        table = test_table(loaded.name, behaviour, rows)
        recipes = list(test_recipes(behaviour, recipe).values())
        title = f"preset {name} on {loaded.name}: test settings ({behaviour.max_new_tokens} new tokens)"
        summary = summarize_recipes(rows, recipes, loaded.n_layers)
        figures += save_figure(
            plot_frontier(summary, title, recipe.name), out / f"frontier_{loaded.name}_{behaviour.name}"
        )
        notes.append(
            f"{loaded.name} / preset {name}: `{recipe.name}` (validation: {preset.validation_note(loaded.name)}; "
            f"vector from {pairs} train pairs); " + verdict(table.set_index("setting"))
        )
        tables.append(table)
        frames.append(rows.assign(model=loaded.name, behaviour=behaviour.name, preset=name))
    first = presets.get(wanted[0])
    notes.append(f"recipes chosen by the frontier search ({first.chosen_by})")
    if first.scorer_version != evaluation.SCORER_VERSION:
        notes.append(
            f"the presets' validation numbers were scored by scorer version {first.scorer_version}, these "
            f"test numbers by version {evaluation.SCORER_VERSION}: do not compare them"
        )
    rows = pd.concat(frames, ignore_index=True)
    return StudyResult(
        name="presets", rows=rows, table=pd.concat(tables, ignore_index=True), figures=figures, notes=notes
    )


def _withdrawn(model: Model) -> list[str]:
    """A line per preset withdrawn for ``model``, saying why."""
    found = {name: presets.get(name) for name in presets.names()}
    return [
        f"{model.name} / preset {name} withdrawn: {presets.withheld(p.rating.get(model.name))}"
        for name, p in found.items()
        if model.name in p.withdrawn
    ]


STUDY = Study(
    "presets",
    "Presets: the quality frontier's chosen recipes on held-out prompts",
    presets_study,
    sizes={"quick": Size.quick(), "full": Size.frontier(), "large": Size.large()},
    report=("quick", "full"),
    order=70,
    inputs=lambda: {"presets": presets.fingerprint()},
)
