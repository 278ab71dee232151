"""Italian steering (Scalena et al.): Italian answers to English prompts, fluency, multiple choice gained/lost.

    .venv/bin/python analyses/italian_steering.py --out runs/italian [--quick]
    .venv/bin/python analyses/italian_steering.py --model gemma3-270m --out runs/italian   # the base model

Vectors from English vs Italian prompts (``it``) and English vs "English question, Italian answer" prompts
(``en_answer_it``), each at the configuration its validation sweep chose when it beat no steering, and the
model's ``italian`` preset when it has one; against the English prompt, "answer in Italian" and the Italian
prompt. Writes ``<out>/italian`` (``<out>/italian_base_model`` for a base model): ``table`` and ``rows``
(parquet and CSV), ``multiple_choice.csv`` and ``mc_upset.{png,svg}`` (which questions each configuration
answers correctly).
"""

from __future__ import annotations

from collections.abc import Sequence

from workbench.studies.italian import italian_study
from workbench.studies.script import run_script, script_parser


def main(argv: Sequence[str] | None = None) -> None:
    args = script_parser(__doc__, "italian").parse_args(argv)
    run_script(
        args,
        lambda model, scale, out: italian_study(
            model, scale, out, name="italian" if model.is_chat else "italian_base_model"
        ),
    )


if __name__ == "__main__":
    main()
