"""The one scoring contract: what the answer columns of every table mean.

Per answer, :func:`score_answers` gives

* ``on_target``: the answer shows the behaviour, by its target (:data:`~workbench.evaluation.targets.TARGETS`:
  the item's IFEval checks, strict JSON, real Italian, ...; :func:`~workbench.evaluation.targets.on_target`);
* ``degenerate``: :func:`~workbench.evaluation.is_degenerate`, given the answer's perplexity under the
  unmodified model where the behaviour's degeneration uses it (``perplexity`` column) and the text rule alone
  where it does not (a sweep's, an instruction study's);
* ``fluent``: a judge's verdict, where one judged the answers (:class:`~workbench.evaluation.reference.Judge`);
* ``clean``: on target, not degenerate and, where judged, fluent.

Aggregated per setting these are ``target_rate``, ``degeneration``, ``fluent_rate`` and ``clean_rate``
(:func:`~workbench.evaluation.table.summarize_scores`). A table that shows a rate names its target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from workbench.datasets import Item
from workbench.errors import ShapeMismatchError
from workbench.evaluation.fluency import is_degenerate
from workbench.evaluation.targets import on_target

__all__ = ["COLUMNS", "score_answers"]

#: The answer columns of every scored table, in this order.
COLUMNS = ("on_target", "degenerate", "fluent", "clean")


def score_answers(
    target: str,
    items: Sequence[Item],
    responses: Sequence[str],
    perplexities: Sequence[float] | None = None,
    fluent: Sequence[bool] | None = None,
) -> pd.DataFrame:
    """One row per answer: ``id, response, on_target, degenerate, clean`` (and ``perplexity`` when given).

    ``fluent``: a reference model's verdict per answer; when given it is a column and ``clean`` needs it.
    """
    for name, values in (("responses", responses), ("perplexities", perplexities), ("fluent", fluent)):
        if values is not None and len(values) != len(items):
            raise ShapeMismatchError(f"got {len(items)} items but {len(values)} {name}: give one per item")
    ppl = list(perplexities) if perplexities is not None else [None] * len(items)
    target_hit = [on_target(target, item, r) for item, r in zip(items, responses, strict=True)]
    known = [p if p is not None and math.isfinite(p) and p > 0 else None for p in ppl]  # NaN: empty answer
    degenerate = [is_degenerate(r, perplexity=p) for r, p in zip(responses, known, strict=True)]
    frame = pd.DataFrame({"id": [item.id for item in items], "response": list(responses)})
    if perplexities is not None:
        frame["perplexity"] = ppl
    if fluent is not None:
        frame["fluent"] = [bool(f) for f in fluent]
    passes = frame["fluent"] if fluent is not None else [True] * len(items)
    return frame.assign(
        on_target=target_hit,
        degenerate=degenerate,
        clean=[t and not d and f for t, d, f in zip(target_hit, degenerate, passes, strict=True)],
    )
