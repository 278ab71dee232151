"""Reproduce the quality frontier (issue #9): every behaviour on SmolLM2, Italian on Gemma 3 270M.

    .venv/bin/python analyses/quality_frontier.py --out runs/quality_frontier
    .venv/bin/python analyses/quality_frontier.py --behaviours italian json --no-base-model   # a part
    .venv/bin/python analyses/quality_frontier.py --model gemma3-270m --behaviours italian --no-base-model

Writes ``<out>/frontier/`` (table, rows, sweep_validation.csv, methods.csv, chosen.json, one frontier figure
per behaviour as PNG + SVG) and ``<out>/frontier/timings.json``, and prints the test table. Validation
and test rows are cached in that folder, so a rerun (or a run with more behaviours) resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from workbench.frontier import BEHAVIOURS
from workbench.models import DEFAULT_SPEC, load_model
from workbench.runs import atomic_text, markdown_table
from workbench.studies.common import Size
from workbench.studies.frontier import frontier_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/quality_frontier"))
    parser.add_argument("--behaviours", nargs="+", default=list(BEHAVIOURS), choices=list(BEHAVIOURS))
    parser.add_argument("--model", default=DEFAULT_SPEC, help="Model spec of the main model.")
    parser.add_argument("--no-base-model", action="store_true", help="Skip Italian on Gemma 3 270M.")
    parser.add_argument("--threads", type=int, default=None, help="Torch CPU threads.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tick = time.perf_counter()
    model = load_model(args.model)
    result = frontier_study(
        model,
        Size.frontier(),
        args.out,
        behaviours=args.behaviours,
        base_model=not args.no_base_model,
        progress=True,
    )
    seconds = time.perf_counter() - tick
    folder = result.write(args.out)
    timing = {
        "seconds": round(seconds, 1),
        "model": args.model,
        "behaviours": args.behaviours,
        "base_model": not args.no_base_model,
    }
    atomic_text(folder / "timings.json", json.dumps(timing, indent=1) + "\n", "timings")
    print(markdown_table(result.table))
    print("\n".join(result.notes))
    print(f"{seconds:.0f} s; outputs in {folder}")


if __name__ == "__main__":
    main()
