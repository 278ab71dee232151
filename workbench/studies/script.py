"""What the ``analyses/`` study scripts share: their common options and the load-run-write-print sequence."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import torch

from workbench.models import DEFAULT_SPEC, Model, load_model
from workbench.runs import markdown_table, read_manifest, utc_now, write_manifest
from workbench.studies.common import Size, StudyResult

Study = Callable[[Model, Size, Path], StudyResult]


def script_parser(doc: str, study: str) -> argparse.ArgumentParser:
    """A parser with ``--out``, ``--quick``, ``--model``, ``--threads`` and ``--dtype``; the script adds its
    own knobs."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs") / study, help="Run directory.")
    parser.add_argument(
        "--quick", action="store_true", help="A smoke test at tiny sizes instead of the report's full size."
    )
    parser.add_argument(
        "--model", default=DEFAULT_SPEC, help="Model spec: a bundled name, a .gguf file or a local HF folder."
    )
    parser.add_argument("--threads", type=int, default=None, help="Torch CPU threads (default: torch's).")
    parser.add_argument(
        "--dtype", default=None, help="Load the model in this dtype, e.g. bfloat16 (default: the model's)."
    )
    return parser


def run_script(args: argparse.Namespace, study: Study) -> StudyResult:
    """Load ``args.model``, run ``study`` at the chosen size, write its tables and print the headline table."""
    if args.threads:
        torch.set_num_threads(args.threads)
    tick, started = time.perf_counter(), utc_now()
    model = load_model(args.model, dtype=args.dtype)
    kind = "quick" if args.quick else "full"
    result = study(model, Size.named(kind), args.out)
    folder = result.write(args.out)
    _record(args, model, kind, result, started, time.perf_counter() - tick)
    print(markdown_table(result.table))
    print("\n".join(result.notes))
    print(f"{time.perf_counter() - tick:.0f} s; outputs in {folder}")
    return result


def _record(
    args: argparse.Namespace, model: Model, kind: str, result: StudyResult, started: str, seconds: float
) -> None:
    """Record the finished study in ``args.out/manifest.json`` as a report does (its other studies kept),
    so that ``workbench publish`` writes its pages."""
    manifest = read_manifest(args.out)
    studies = {**manifest.get("studies", {})}
    studies[result.name] = {
        "status": "done",
        "dir": result.name,
        "notes": list(result.notes),
        "table": f"{result.name}/table.parquet",
        "rows": len(result.rows),
        "started": started,
        "seconds": round(seconds, 1),
        "size": dataclasses.asdict(result.size or Size.named(kind)),
    }
    write_manifest(
        args.out,
        {
            "command": "analysis script",
            "arguments": {
                k: v if isinstance(v, (int, list)) else str(v)
                for k, v in vars(args).items()
                if v is not None and v is not False
            },
            "configuration": {
                "model": model.name,
                "weights_hash": model.weights_hash,
                "kind": kind,
                "size": dataclasses.asdict(Size.named(kind)),
            },
            "model": {"name": model.name, "weights_hash": model.weights_hash, "dtype": str(model.dtype)},
            "studies": studies,
            "updated": utc_now(),
        },
    )
