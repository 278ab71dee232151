"""Run any declared study with its knobs: the one analyses runner (the same code as ``workbench study``).

    .venv/bin/python analyses/study.py --list                     # every study: sizes, report, knobs
    .venv/bin/python analyses/study.py format --size quick --set names=no_comma,title --out runs/format
    .venv/bin/python analyses/study.py frontier --set behaviours=italian,json --set base_model=false
    .venv/bin/python analyses/study.py baselines --model qwen2.5-coder-1.5b-instruct --dtype bfloat16 \\
        --set lora=false --set presets_file=runs/large-qwen1.5b/frontier/presets.json --out runs/baselines-qwen1.5b

A study writes ``<out>/<folder>/`` (``table`` and ``rows`` as parquet and CSV, its figures as PNG and SVG,
its own extra tables), ``<out>/manifest.json`` and ``<out>/report.md``, and prints its headline table; a
rerun resumes. ``OMP_NUM_THREADS`` sets the torch threads.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence


def describe() -> str:
    """One block per declared study: its title, the size it runs at per run size, and its knobs."""
    from workbench.studies.registry import all_studies

    blocks = []
    for name, study in all_studies().items():
        sizes = ", ".join(f"{run}: {size.name}" for run, size in study.sizes.items())
        knobs = ", ".join(
            f"{k}={'' if p.default is inspect.Parameter.empty else p.default!r}"
            for k, p in study.knobs().items()
        )
        report = ", ".join(study.report) or "on request only"
        blocks.append(f"{name}: {study.title}\n  sizes {sizes}; in the report at {report}\n  --set {knobs}")
    return "\n".join(blocks)


def main(argv: Sequence[str] | None = None) -> None:
    from workbench.cli import app

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--list"]:
        print(describe())
        return
    app(["study", *args], prog_name="analyses/study.py", standalone_mode=argv is None)


if __name__ == "__main__":
    main()
