"""How well does the unsteered model follow each bundled instruction, and how well does it answer the
multiple-choice set? The reference point every steering number is compared with.

For every instruction dataset (``workbench.datasets.names("instruction")`` and the rest but ``italian``), the
first ``--n`` test items are answered greedily with and without the instruction in the prompt, in one
batched :func:`workbench.generate` call, and checked with the item's IFEval checks (strict and loose).
The bundled parallel multiple-choice test set is scored in English and in Italian. Writes under ``--out``:
``checks.{parquet,csv}`` (one row per instruction), ``responses.parquet``, ``multiple_choice.csv`` and
``table.md`` and ``manifest.json`` (the run record).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

import workbench as wb
from workbench.datasets import load, load_multiple_choice, names
from workbench.evaluation import check_all
from workbench.evaluation.mc import multiple_choice
from workbench.files import atomic_text, markdown_table, write_frame
from workbench.models import DEFAULT_SPEC
from workbench.record import new_record, write_record


def instruction_rows(model: wb.Model, n: int, max_new_tokens: int, batch_size: int) -> pd.DataFrame:
    """One row per (instruction, item, setting) with strict and loose compliance."""
    sets = [load(name, "test") for name in names() if name != "italian"]
    items = [(data.name, item) for data in sets for item in data.items[:n]]
    prompts = [item.query for _, item in items] + [item.prompt for _, item in items]
    responses = wb.generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    rows = []
    for k, response in enumerate(responses):
        name, item = items[k % len(items)]
        ids, kwargs = item.instruction_id_list, item.kwargs
        rows.append(
            {
                "instruction": name,
                "id": item.id,
                "setting": "with_instruction" if k >= len(items) else "no_instruction",
                "response": response,
                "strict": all(check_all(ids, kwargs, response)),
                "loose": all(check_all(ids, kwargs, response, loose=True)),
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_SPEC)
    parser.add_argument("--out", type=Path, default=Path("runs/unsteered_baseline"))
    parser.add_argument("--n", type=int, default=24, help="test items per instruction")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = wb.load_model(args.model)
    rows = instruction_rows(model, args.n, args.max_new_tokens, args.batch_size)
    write_frame(rows, args.out / "responses.parquet")
    checks = rows.pivot_table(index="instruction", columns="setting", values=["strict", "loose"], sort=False)
    checks.columns = [f"{setting}:{kind}" for kind, setting in checks.columns]
    checks = checks.reset_index()
    for suffix in (".parquet", ".csv"):
        write_frame(checks, args.out / f"checks{suffix}")
    mc = []
    for language in ("en", "it"):
        scored = multiple_choice(model, load_multiple_choice("bundled", language=language, split=None))
        mc.append({"language": language, "accuracy": scored["correct"].mean(), "n": len(scored)})
    mc_table = pd.DataFrame(mc)
    write_frame(mc_table, args.out / "multiple_choice.csv")
    seconds = time.perf_counter() - start
    text = (
        f"# Unsteered {args.model}: {args.n} test items per instruction, {args.max_new_tokens} new tokens, "
        f"greedy ({seconds:.0f} s)\n\n{markdown_table(checks)}\n\n## Multiple choice (all splits)\n\n"
        f"{markdown_table(mc_table)}\n"
    )
    atomic_text(args.out / "table.md", text, "table")
    record = new_record("analysis unsteered_baseline", arguments=vars(args), model=model)
    write_record(args.out, record | {"timings": {"total": round(seconds, 1)}}, finished=True)
    print(text)


if __name__ == "__main__":
    main()
