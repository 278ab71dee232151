"""Format instructions: Stolfo et al.'s compliance table (JSON, bullets, lowercase, no comma, title, highlights).

    .venv/bin/python analyses/format_instructions.py --out runs/format [--quick] [--instructions json_format no_comma]

Per instruction: a diff-in-means vector from train pairs with vs without the instruction (last prompt
token); the layer and mode chosen on validation (the best compliance that degenerates no more than no
steering); strict IFEval compliance and degeneration on test in four settings (no instruction, + steering,
with instruction, + steering), and their average. Writes ``<out>/format/``: ``table`` and ``rows`` (parquet
and CSV), ``choices.csv``, the validation sweeps and ``compliance.{png,svg}``.
"""

from __future__ import annotations

from collections.abc import Sequence

from workbench.studies.instructions import FORMATS, format_study
from workbench.studies.script import run_script, script_parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = script_parser(__doc__, "format")
    parser.add_argument(
        "--instructions", nargs="+", default=list(FORMATS), help="Bundled instruction datasets."
    )
    parser.add_argument(
        "--coefs", nargs="+", type=float, default=[1.0, 2.0], help="add strengths to sweep, in diff-norms."
    )
    args = parser.parse_args(argv)
    run_script(
        args,
        lambda model, scale, out: format_study(
            model, scale, out, names=args.instructions, coefs=args.coefs, progress=True
        ),
    )


if __name__ == "__main__":
    main()
