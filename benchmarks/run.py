"""Run the workbench benchmarks: ``python benchmarks/run.py [--quick] [--model SPEC] [--out table.json]``.

A thin wrapper over :func:`workbench.bench.main` (the same as ``workbench bench``); see that module for
what each row measures.
"""

from __future__ import annotations

import argparse
import sys

from workbench.bench import ITEMS, main
from workbench.errors import WorkbenchError


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings for CI (no timing targets)")
    parser.add_argument(
        "--model", default="smollm2-135m-instruct", help="model spec (default: bundled SmolLM2)"
    )
    parser.add_argument("--out", help="write the table as JSON (.json) or CSV (other suffixes)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument(
        "--random-llama-1b", action="store_true", help="a random ~1.1B Llama with the SmolLM2 tokenizer"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 gives the steadiest ratios)")
    parser.add_argument("--only", help=f"comma-separated items to run, of {','.join(ITEMS)}")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        main(
            model=args.model,
            quick=args.quick,
            out=args.out,
            device=args.device,
            dtype=args.dtype,
            random_1b=args.random_llama_1b,
            threads=args.threads,
            items=args.only.split(",") if args.only else None,
        )
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
