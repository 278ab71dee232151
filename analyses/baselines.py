"""Baselines: steering against prompting, dynamic steering and LoRA fine-tuning on the same held-out prompts.

    OMP_NUM_THREADS=2 .venv/bin/python analyses/baselines.py --out runs/baselines [--quick] [--behaviours ...]
    .venv/bin/python analyses/baselines.py --model gemma3-270m --behaviours italian --out runs/baselines
    .venv/bin/python analyses/baselines.py --model qwen2.5-coder-1.5b-instruct --dtype bfloat16 --no-lora \
        --presets runs/large-qwen1.5b/frontier/presets.json --behaviours italian --out runs/baselines-qwen1.5b

Per behaviour (JSON, one sentence, no comma, Italian): unsteered, the instruction in the prompt, the fully
Italian prompt (Italian), the fixed steering recipe (the preset at gentler strengths, else a coarse grid;
chosen on validation), the same vector with a dynamic strength (Scalena et al. 2024), steering + instruction,
a self-distilled LoRA adapter chosen on validation, and LoRA + instruction; on-target, clean and degeneration
rates, median perplexity, off-target damage, multiple-choice accuracy gained and lost, and cost, all on the
test split (32 prompts, 64 new tokens at full size). Writes ``<out>/baselines/``
(``<out>/baselines_base_model/`` for a base model): ``table`` and ``rows`` (parquet and CSV), per behaviour
the validation tables, the adapter and the cached generations, and ``baselines.{png,svg}``.
"""

from __future__ import annotations

from collections.abc import Sequence

from workbench.studies.baselines import BEHAVIOURS, baselines_study
from workbench.studies.common import study_size
from workbench.studies.script import run_script, script_parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = script_parser(__doc__, "baselines")
    parser.add_argument("--behaviours", nargs="+", default=list(BEHAVIOURS), help="Behaviours to compare.")
    parser.add_argument(
        "--no-lora",
        action="store_true",
        help="Leave the LoRA methods out (a model too large to fine-tune here).",
    )
    parser.add_argument(
        "--presets", default=None, help="A recorded search's presets.json to start the fixed steering from."
    )
    args = parser.parse_args(argv)
    run_script(
        args,
        lambda model, size, out: baselines_study(
            model,
            study_size("baselines", size),
            out,
            behaviours=args.behaviours,
            name="baselines" if model.is_chat else "baselines_base_model",
            lora=not args.no_lora,
            presets_file=args.presets,
        ),
    )


if __name__ == "__main__":
    main()
