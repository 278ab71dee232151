"""Reports of several models under one protocol, side by side (issue #18): does the recipe work with size?

    .venv/bin/workbench report --size large --out runs/large-smollm2
    .venv/bin/workbench report --model qwen2.5-coder-0.5b-instruct --size large --dtype bfloat16 \\
        --out runs/large-qwen0.5b
    .venv/bin/workbench report --model qwen2.5-coder-1.5b-instruct --dtype bfloat16 --out runs/large-qwen1.5b
    .venv/bin/python analyses/model_sizes.py runs/large-smollm2 runs/large-qwen0.5b runs/large-qwen1.5b \\
        --out docs/results/model_sizes

Each run directory is a finished ``workbench report`` (its ``format``, ``italian`` and ``frontier`` tables are
read; a missing study leaves its rows empty). Writes ``<out>.md`` and ``<out>.csv``: one row per measure, one
column per model, every number on the test split of that report.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from workbench.files import atomic_text, markdown_table, write_frame
from workbench.record import read_record

#: The format table's settings, as the rows name them.
FORMAT_SETTINGS = {
    "no_instruction": "no instruction",
    "no_instruction+steering": "steering",
    "with_instruction": "instruction",
    "with_instruction+steering": "instruction + steering",
}
#: The Italian table's settings shown, by their short name.
ITALIAN_SETTINGS = {
    "English prompt": "English prompt",
    "English prompt, 'answer in Italian'": "instruction",
    "Italian prompt": "Italian prompt",
    "English prompt + steering (it)": "steering (it vector)",
    "English prompt + steering (en_answer_it)": "steering (en_answer_it vector)",
}


def _table(run: Path, study: str) -> pd.DataFrame | None:
    path = run / study / "table.parquet"
    return pd.read_parquet(path) if path.exists() else None


def _format(run: Path) -> dict[str, object]:
    table = _table(run, "format")
    if table is None:
        return {}
    measures: dict[str, object] = {}
    for row in table[table["instruction"] != "average"].to_dict("records"):
        name = row["instruction"]
        coef = "" if pd.isna(row["coef"]) else f" {row['coef']:g}"  # set_projection has no coefficient
        chosen = "none" if row["mode"] == "none" else f"L{row['layer']} {row['mode']}{coef}"
        measures[f"format {name}: validation choice"] = chosen
        for column, label in FORMAT_SETTINGS.items():
            measures[f"format {name}: {label}"] = row[column]
        measures[f"format {name}: degeneration, steering"] = row["degeneration:no_instruction+steering"]
    return measures


def _italian(run: Path) -> dict[str, object]:
    table = _table(run, "italian")
    if table is None:
        return {}
    rates = table.set_index("setting")
    measures: dict[str, object] = {}
    for setting, label in ITALIAN_SETTINGS.items():
        if setting in rates.index:
            measures[f"Italian, real Italian: {label}"] = rates.loc[setting, "target_rate"]
            measures[f"Italian, degenerate: {label}"] = rates.loc[setting, "degeneration"]
    mc_path = run / "italian" / "multiple_choice.csv"
    if mc_path.exists():
        for row in pd.read_csv(mc_path).itertuples(index=False):
            if "preset" in row.config:
                continue
            change = "" if pd.isna(row.gained) else f" (+{int(row.gained)}/-{int(row.lost)})"
            measures[f"multiple choice by {row.by}: {row.config}"] = f"{row.accuracy:.2f}{change}"
    return measures


def _frontier(run: Path) -> dict[str, object]:
    table = _table(run, "frontier")
    if table is None:
        return {}
    measures: dict[str, object] = {}
    for row in table.itertuples(index=False):
        measures[f"frontier {row.behaviour}, clean rate: {row.setting}"] = row.clean_rate
    return measures


def column(run: Path) -> tuple[str, dict[str, object]]:
    """The model's label (name, parameters, dtype) and its measures."""
    model = read_record(run).get("model") or {}
    params = model.get("n_params")
    size = f", {params / 1e9:.2f}B parameters as loaded" if params else ""
    label = f"{model.get('name', run.name)}{size}{', ' + model['dtype'] if model.get('dtype') else ''}"
    return label, {**_format(run), **_italian(run), **_frontier(run)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="Report run directories, smallest model first.")
    parser.add_argument("--out", type=Path, default=Path("runs/model_sizes"), help="Output path stem.")
    args = parser.parse_args(argv)
    columns: dict[str, dict[str, object]] = {}
    for run in args.runs:
        label, measures = column(run)
        columns[f"{label} ({run.name})" if label in columns else label] = measures
    frame = pd.DataFrame(columns).rename_axis("measure").reset_index()
    frame = frame.map(lambda v: round(v, 2) if isinstance(v, float) else v)
    write_frame(frame, args.out.with_suffix(".csv"), "model sizes table")
    sources = ", ".join(f"`{run}`" for run in args.runs)
    sizes = {
        json.dumps(read_record(run).get("studies", {}).get("format", {}).get("size")) for run in args.runs
    }
    text = (
        f"# One protocol, several sizes\n\nFrom {sources} (test split of each report). Format study size: "
        + " / ".join(f"`{s}`" for s in sorted(sizes))
        + ". Format: compliance (strict IFEval); Italian: share of real Italian answers; frontier: clean rate "
        "(on target and not degenerate).\n\n"
    )
    atomic_text(args.out.with_suffix(".md"), text + markdown_table(frame) + "\n", "model sizes page")
    print(markdown_table(frame))


if __name__ == "__main__":
    main()
