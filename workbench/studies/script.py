"""What the ``analyses/`` study scripts share: their common options and the load-run-write-print sequence."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from workbench.models import DEFAULT_SPEC, Model, load_model
from workbench.runs import markdown_table
from workbench.studies.common import Size, StudyResult

Study = Callable[[Model, Size, Path], StudyResult]


def script_parser(doc: str, study: str) -> argparse.ArgumentParser:
    """A parser with ``--out``, ``--quick``, ``--model`` and ``--threads``; the script adds its own knobs."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs") / study, help="Run directory.")
    parser.add_argument(
        "--quick", action="store_true", help="A smoke test at tiny sizes instead of the report's full size."
    )
    parser.add_argument(
        "--model", default=DEFAULT_SPEC, help="Model spec: a bundled name, a .gguf file or a local HF folder."
    )
    parser.add_argument("--threads", type=int, default=None, help="Torch CPU threads (default: torch's).")
    return parser


def run_script(args: argparse.Namespace, study: Study) -> StudyResult:
    """Load ``args.model``, run ``study`` at the chosen size, write its tables and print the headline table."""
    if args.threads:
        torch.set_num_threads(args.threads)
    tick = time.perf_counter()
    model = load_model(args.model)
    result = study(model, Size.named("quick" if args.quick else "full"), args.out)
    folder = result.write(args.out)
    print(markdown_table(result.table))
    print("\n".join(result.notes))
    print(f"{time.perf_counter() - tick:.0f} s; outputs in {folder}")
    return result
