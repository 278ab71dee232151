"""The test split of a chosen steering recipe against prompting: the frontier and presets studies' table.

:func:`test_rows` answers the test prompts under each of :data:`SETTINGS` (unsteered, the instruction in
the prompt, for Italian the fully Italian prompt, the recipe, the recipe with the instruction), answers kept
as :func:`~workbench.runner.run_grid` parts (:func:`~workbench.studies.search.grid_dir`); :func:`test_table`
gives their rates and :func:`verdict` whether steering reaches the instruction's clean rate.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from workbench.behaviours import Behaviour
from workbench.errors import ModelLoadError
from workbench.evaluation.targets import starts_json
from workbench.models import Model, load_model
from workbench.recipes import Recipe, answer, score
from workbench.size import Size
from workbench.studies.search import grid_dir, prompt_recipes
from workbench.vectors import SteeringVector

__all__ = ["SETTINGS", "budgeted", "gemma", "test_recipes", "test_rows", "test_table", "verdict"]

#: Test settings, in table order.
SETTINGS = ("unsteered", "instruction in prompt", "Italian prompt", "steering", "steering + instruction")


def budgeted(behaviour: Behaviour, size: Size) -> Behaviour:
    """``behaviour`` with at most ``size.max_new_tokens`` tokens."""
    return dataclasses.replace(behaviour, max_new_tokens=min(behaviour.max_new_tokens, size.max_new_tokens))


def test_recipes(behaviour: Behaviour, chosen: Recipe) -> dict[str, Recipe]:
    """The recipe of each test setting, by setting."""
    settings = dict(zip(SETTINGS[:2], prompt_recipes(behaviour)[:2], strict=True))
    if behaviour.instruction_variant:
        settings["Italian prompt"] = Recipe(prompt="native")
    settings["steering"] = chosen
    settings["steering + instruction"] = dataclasses.replace(chosen, prompt="instruction")
    return settings


def test_rows(
    model: Model,
    behaviour: Behaviour,
    vectors: dict[str, SteeringVector],
    chosen: Recipe,
    size: Size,
    out: Path,
    progress: bool,
) -> pd.DataFrame:
    """The test settings of ``chosen`` (answers kept in ``out``: :func:`grid_dir`), scored, with a ``setting``
    column."""
    settings = test_recipes(behaviour, chosen)
    recipes = list(settings.values())
    rows = answer(
        model,
        behaviour,
        vectors,
        recipes,
        "test",
        size.n_test,
        batch_size=size.batch_size,
        out_dir=grid_dir(out, model, behaviour),
        progress=progress,
    )
    rows = score(behaviour, rows)
    label = {r.name: s for s, r in settings.items()}
    return rows.assign(setting=rows["recipe"].map(label))


def test_table(model: str, behaviour: Behaviour, rows: pd.DataFrame) -> pd.DataFrame:
    """One row per test setting: the recipe and its rates. ``target`` names the metric of ``target_rate``
    (:data:`~workbench.evaluation.targets.TARGETS`: JSON is IFEval's strict ``json_format_strict``);
    ``degeneration`` is the share of :func:`~workbench.evaluation.is_degenerate`; the JSON behaviour also
    shows ``starts_json`` (a JSON object or array, truncation allowed), which is not compliance."""
    rates = {
        "recipe": ("recipe", "first"),
        "target_rate": ("on_target", "mean"),
        "clean_rate": ("clean", "mean"),
        "degeneration": ("degenerate", "mean"),
        "perplexity": ("perplexity", "median"),
        "ifeval_rate": ("ifeval", "mean"),
    }
    if behaviour.target == "json_format_strict":
        rows = rows.assign(starts_json=rows["response"].map(starts_json))
        rates["starts_json"] = ("starts_json", "mean")
    table = rows.groupby("setting", sort=False).agg(**rates, n=("on_target", "size")).reset_index()
    table.insert(0, "target", behaviour.target)
    table.insert(0, "behaviour", behaviour.name)
    table.insert(0, "model", model)
    return table


def gemma() -> Model | None:
    """The Gemma 3 270M base model, or None where it is not installed."""
    try:
        return load_model("gemma3-270m")
    except ModelLoadError:
        return None


def verdict(table: pd.DataFrame) -> str:
    steered = table.loc["steering", "clean_rate"]
    instructed = table.loc["instruction in prompt", "clean_rate"]
    goal = "meets" if steered >= instructed else "misses"
    return (
        f"test clean {steered:.2f} vs {instructed:.2f} with the instruction in the prompt ({goal} the goal)"
    )
