"""Length steering: words and sentences per response against the coefficient of a concise and a verbose vector.

    .venv/bin/python analyses/length_steering.py --out runs/length [--quick] [--coefs -4 -2 0 2 4]

The layer is the one the concise vector's validation sweep chooses; both vectors are added there at every
coefficient (diff-norm units, 0 = unsteered) to test queries without an instruction. "At most 2 sentences"
compliance is measured with and without the instruction and concise steering. Writes ``<out>/length/``:
``table`` and ``rows`` (parquet and CSV), ``sentences_at_most.csv``, ``length_curve.{png,svg}`` and
``sentences_at_most.{png,svg}``.
"""

from __future__ import annotations

from collections.abc import Sequence

from workbench.studies.instructions import length_study
from workbench.studies.script import run_script, script_parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = script_parser(__doc__, "length")
    parser.add_argument(
        "--coefs",
        nargs="+",
        type=float,
        default=[-4.0, -2.0, 0.0, 2.0, 4.0],
        help="Coefficients (diff-norms).",
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="Default: twice the scale's.")
    args = parser.parse_args(argv)
    run_script(
        args,
        lambda model, scale, out: length_study(
            model, scale, out, coefs=args.coefs, max_new_tokens=args.max_new_tokens, progress=True
        ),
    )


if __name__ == "__main__":
    main()
