"""Composition: a format and a length vector together, each at its own layer and summed at one layer.

    .venv/bin/python analyses/composition.py --out runs/composition [--quick] [--format no_comma --length one_sentence]

Each vector is used as its validation sweep chose. Rates of format-only, length-only and both satisfied
(and degeneration) on test for: no instruction, both instructions, each vector alone, both vectors at their
own layers, their sum at the format layer, and both instructions plus both vectors. Writes
``<out>/composition/``: ``table`` and ``rows`` (parquet and CSV), the validation sweeps and ``composition.{png,svg}``.
"""

from __future__ import annotations

from collections.abc import Sequence

from workbench.studies.instructions import composition_study
from workbench.studies.script import run_script, script_parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = script_parser(__doc__, "composition")
    parser.add_argument("--format", default="no_comma", help="The format instruction dataset.")
    parser.add_argument("--length", default="one_sentence", help="The length instruction dataset.")
    args = parser.parse_args(argv)
    run_script(
        args,
        lambda model, scale, out: composition_study(
            model, scale, out, format_name=args.format, length_name=args.length, progress=True
        ),
    )


if __name__ == "__main__":
    main()
