"""Score responses: IFEval's verifiable checks, language identification, fluency signals, text counts.

``evaluate`` (one results row per response, :mod:`workbench.evaluation.table`) is imported on first use,
so the text-only checks load without torch; model-based scoring lives in
:mod:`workbench.evaluation.perplexity` and :mod:`workbench.evaluation.multiple_choice`.
"""

import importlib
from typing import Any

from workbench.evaluation.checks import INSTRUCTION_IDS, check, check_all
from workbench.evaluation.fluency import is_degenerate, longest_repeated_run, repeated_ngram_rate
from workbench.evaluation.language import (
    LANGUAGES,
    code_switching_rate,
    detect_language,
    sentence_share,
    share_in_language,
)
from workbench.evaluation.text import count_sentences, count_words, split_sentences

__all__ = [
    "INSTRUCTION_IDS",
    "LANGUAGES",
    "check",
    "check_all",
    "code_switching_rate",
    "count_sentences",
    "count_words",
    "detect_language",
    "evaluate",
    "is_degenerate",
    "longest_repeated_run",
    "repeated_ngram_rate",
    "sentence_share",
    "share_in_language",
    "split_sentences",
]


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        return importlib.import_module("workbench.evaluation.table").evaluate
    raise AttributeError(f"module 'workbench.evaluation' has no attribute {name!r}")
