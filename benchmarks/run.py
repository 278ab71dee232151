"""Run the workbench benchmarks: ``python benchmarks/run.py [--size quick] [--model SPEC] [--out table.json]``.

The ``workbench bench`` command itself, options included (see :mod:`workbench.bench` for what each row
measures).
"""

from __future__ import annotations

import typer

from workbench.cli import bench


def main() -> None:
    typer.run(bench)


if __name__ == "__main__":
    main()
