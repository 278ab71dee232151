"""Directional ablation: how far compliance falls, with the instruction in the prompt, without its direction.

    .venv/bin/python analyses/ablation.py --out runs/ablation [--quick] [--instructions bullet_lists] [--seeds 0 1 2]

Per instruction, ``x - (x·u)u`` at the validation-chosen layer and at every layer, against random unit
directions ablated the same two ways (one per seed: mean and spread). Writes ``<out>/ablation/``: ``table``
and ``rows`` (parquet and CSV), the validation sweeps and ``ablation.{png,svg}``.
"""

from __future__ import annotations

from collections.abc import Sequence

from workbench.studies.instructions import ablation_study
from workbench.studies.script import run_script, script_parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = script_parser(__doc__, "ablation")
    parser.add_argument(
        "--instructions", nargs="+", default=["bullet_lists", "one_sentence"], help="Instruction datasets."
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="Random-direction seeds.")
    args = parser.parse_args(argv)
    run_script(
        args,
        lambda model, scale, out: ablation_study(
            model, scale, out, names=args.instructions, seeds=args.seeds, progress=True
        ),
    )


if __name__ == "__main__":
    main()
