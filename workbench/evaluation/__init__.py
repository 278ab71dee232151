"""Score responses: IFEval's verifiable checks, language identification, fluency signals, text counts.

``evaluate`` (one results row per response, :mod:`workbench.evaluation.table`) and the reference-model
fluency calibration (``calibrate``, ``ReferenceFluency``, ``reference_model``:
:mod:`workbench.evaluation.reference`) and AxBench's ratings (``rate``, ``rating_agreement``,
``RatingJudge``: :mod:`workbench.evaluation.rating`) are imported on first use, so the text-only checks
load without torch; model-based scoring lives in :mod:`workbench.evaluation.perplexity` and
:mod:`workbench.evaluation.mc`.

Every metric has one definition here: degeneration is :func:`is_degenerate` (:mod:`.fluency`), on-target
checks (strict JSON, a JSON start, real Italian, IFEval items) are in :mod:`.targets`. Caches hold raw
model outputs and are rescored on read; anything that keeps a score (a reused report table, a recorded
preset's validation numbers) carries :data:`SCORER_VERSION`.
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

#: Bumped by every change that can change a score (a threshold, a check, a target's meaning): stored
#: scores with another version are recomputed or marked as such. 1: the single degeneration rule and
#: strict JSON of issue 16 (earlier scores carry no version).
SCORER_VERSION = 1

#: The names imported on first use, by module.
_LAZY = {
    "evaluate": "workbench.evaluation.table",
    "summarize_scores": "workbench.evaluation.table",
    "score_answers": "workbench.evaluation.scoring",
    "multiple_choice": "workbench.evaluation.mc",
    "mc_changes": "workbench.evaluation.mc",
    "ReferenceFluency": "workbench.evaluation.reference",
    "calibrate": "workbench.evaluation.reference",
    "reference_model": "workbench.evaluation.reference",
    "rate": "workbench.evaluation.rating",
    "rating_agreement": "workbench.evaluation.rating",
    "RatingJudge": "workbench.evaluation.rating_judge",
}

__all__ = [
    "INSTRUCTION_IDS",
    "LANGUAGES",
    "SCORER_VERSION",
    "RatingJudge",
    "ReferenceFluency",
    "calibrate",
    "check",
    "check_all",
    "code_switching_rate",
    "count_sentences",
    "count_words",
    "detect_language",
    "evaluate",
    "is_degenerate",
    "longest_repeated_run",
    "mc_changes",
    "multiple_choice",
    "rate",
    "rating_agreement",
    "reference_model",
    "repeated_ngram_rate",
    "score_answers",
    "sentence_share",
    "share_in_language",
    "split_sentences",
    "summarize_scores",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'workbench.evaluation' has no attribute {name!r}")
