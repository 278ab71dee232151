"""Stolfo et al.'s format table: one diff-in-means vector per format instruction (train split, last prompt
token); the layer and the mode (``set_projection``, or ``add`` in diff-norms) chosen on the validation split
(:func:`~workbench.studies.steps.select`, Stolfo et al.'s rule); on the test split, compliance and
degeneration in four settings (no instruction, no instruction + steering, instruction, instruction +
steering), per instruction and averaged."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.datasets import load
from workbench.datasets import names as dataset_names
from workbench.errors import InvalidArgumentError
from workbench.files import write_frame
from workbench.models import Model
from workbench.size import RUN_SIZES, Size
from workbench.studies.registry import Study
from workbench.studies.result import StudyResult
from workbench.studies.steps import (
    Selected,
    TestJob,
    bars,
    budget,
    candidate_layers,
    run_jobs,
    save,
    select,
)

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
#: Format instructions of a quick run: the two whose sweeps the composition and ablation studies reuse.
QUICK_FORMATS = ("bullet_lists", "no_comma")
#: Format instructions of a large model's run: a format, a constraint and a length (Stolfo et al.'s kinds).
LARGE_FORMATS = ("json_format", "no_comma", "one_sentence")


def _format_table(rows: pd.DataFrame, chosen: dict[str, Selected]) -> pd.DataFrame:
    """Per instruction: the validation choice, compliance and degeneration per setting; then the average."""
    records = []
    for name in chosen:
        mine = rows[rows["instruction"] == name]
        described = chosen[name].describe()
        record = {"instruction": name, **{k: described[k] for k in ("config", "layer", "mode", "coef")}}
        by_setting = mine.groupby("setting", sort=False)
        record |= {s: float(by_setting["on_target"].mean()[s]) for s in SETTINGS}
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
    size: Size,
    out_dir: str | os.PathLike[str],
    *,
    names: Sequence[str] = FORMATS,
    coefs: Sequence[float] = (1.0, 2.0),
    json_tokens: int | None = None,
    gate: str = "degeneration",
    progress: bool = False,
) -> StudyResult:
    """Stolfo et al.'s format table: compliance in the four :data:`SETTINGS` per instruction and averaged.

    Table columns: ``instruction, config, layer, mode, coef`` (the validation choice; ``mode`` "none" when
    steering did not beat the unsteered model, whose steered settings then equal the unsteered ones), one
    compliance column per setting, ``degeneration:<setting>`` per setting, and ``n``; the last row,
    ``average``, is the mean over instructions. ``json_tokens`` (default: :data:`JSON_TOKENS` at full size)
    is the token budget of ``json_format``; ``gate``: which configs may win on validation
    (:data:`~workbench.sweeps.GATES`; ``perplexity`` is Stolfo et al.'s degeneracy gate).
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
            model, name, size, run, coefs=coefs, json_tokens=json_tokens, gate=gate, progress=progress
        )
        write_frame(chosen[name].summary, out / f"sweep_{name}.csv", "sweep summary")
    jobs = []
    for name in names:
        iv = chosen[name].intervention
        tokens = budget(name, size, json_tokens)
        for item in load(name, "test").head(size.n_test).items:
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
    rows = run_jobs(model, jobs, size, out, progress=progress)
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
            else f"{chosen[n].config} (validation {chosen[n].validation_target_rate:.2f} vs "
            f"{chosen[n].baseline_target_rate:.2f} unsteered)"
        )
        for n in names
    ]
    notes.append(
        f"candidate layers {candidate_layers(model, size)}; {size.n_train} train, {size.n_validation} "
        f"validation, {size.n_test} test prompts per instruction; json_format budget "
        f"{budget('json_format', size, json_tokens)} tokens, others {size.max_new_tokens}"
    )
    return StudyResult(name="format", rows=rows, table=table, figures=figures, notes=notes)


STUDY = Study(
    "format",
    "Format instructions (Stolfo et al.'s table)",
    format_study,
    report=RUN_SIZES,
    order=10,
    options={"quick": {"names": QUICK_FORMATS}, "large": {"names": LARGE_FORMATS, "json_tokens": 64}},
)
