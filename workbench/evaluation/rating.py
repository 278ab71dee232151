"""One rating per answer, AxBench's protocol: concept, relevance and fluency, each 0, 1 or 2, and their score.

:func:`rate` gives, per answer,

* ``concept``: the target, by rule (:func:`~workbench.evaluation.targets.on_target`: the item's IFEval
  checks, strict JSON): 2 on target, 0 not; for Italian (:func:`italian_concept`) 2 where language ID
  finds real Italian, 1 where it finds Italian that is not (a sentence in another language, English
  words mixed in, invented words, or the judge's salad: fluency 0 without a loop) or English with Italian
  words mixed in, else 0;
* ``relevance``: the judge's rating of how related the answer is to its query (topic only, whatever the
  language; :class:`~workbench.evaluation.rating_judge.RatingJudge`), at most 1 for the judge's salad (a
  salad cannot address the question);
* ``fluency``: 0 where a rule finds the answer degenerate (:func:`~workbench.evaluation.is_degenerate`:
  loops, no words), else the judge's rating, on a fixed rubric with fixed worked examples, so a verdict
  means the same for every model and row; a 2 becomes 1 where a rule finds what the rubric's 1 names
  (:mod:`~workbench.evaluation.words`: a word stuttered, English and Italian words mixed);
* ``score``: their harmonic mean, 0 if any rating is 0 (AxBench's); an answer is clean when its score is
  above 0;
* ``judge``: the judge's model, or ``"rules"`` without a judge (then ``relevance`` is unknown and
  ``fluency`` is 0 where a rule rates it and unknown elsewhere; ``score`` is 0 where a rating is 0 and
  unknown elsewhere).

The labelled set (:data:`LABELS`, ``workbench/data/rating_labels.jsonl``) holds answers to bundled queries
(:func:`~workbench.datasets.load`'s ``queries.jsonl``), rated by hand on the rubric below, to measure a judge
(:func:`rating_agreement`). A row: ``id``, ``query_id``, ``query`` (what the model was asked: the English
query, or the Italian one for some ``italian`` rows), ``target`` (``italian``, ``json_format_strict``,
``ifeval`` with ``instruction`` the bundled instruction, ``one_sentence``), ``language`` of the answer
(``en``, ``it``, ``es``, ``fr``, ``pt``, ``mixed``, ``und``), ``kind`` (``fluent``, ``salad``, ``loop``,
``off-topic``, ``wrong language``, ``partially broken``), ``answer``, the gold ``concept``, ``relevance``
and ``fluency``, ``split`` (``dev`` chose how rules and judge combine, ``test`` is reported; the rows of
each target, kind and language alternate between them) and ``source``. 174 are ``hand-written``, modelled
on real steered failures (the SmolLM2 ``italian`` preset's salad ", eccordionilòro, e'volte a dolce,,, al
cambiamento diacce,,,"; RePS's "The pyramids were built by the Egyptians in 2020, which is 2020 in the
end."; loops; fluent Italian about something else; fluent English, Spanish, French and Portuguese where
Italian was asked; valid, cut-off and prose-wrapped JSON); 46 are real answers of the methods study to
validation prompts (``source`` the model that wrote them: SmolLM2-135M-Instruct one sentence,
Qwen2.5-Coder-1.5B-Instruct Italian and JSON, steered and not), long and cut off by the token budget as
generated answers are.

Gold rubric. *Concept*: the target as its rule defines it, read by a person (IFEval's sentence count,
the whole answer valid JSON); for Italian 2 = written in Italian (a loop of Italian words too), 1 =
Italian-looking but not Italian (invented words, salad) or Italian mixed with English, 0 = another
language. *Relevance* (topic only, any language, any format, true or not): 2 = addresses the question,
1 = has words of its topic without addressing it (topical salad, a looped topic word), 0 = about
something else or nothing (greetings, refusals, meaningless words). *Fluency* (in its own language,
relevance and completeness aside): 2 = natural, 1 = understandable with noticeable errors (grammar,
words of another language, a stutter, a statement that repeats itself), 0 = salad, invented words or
loops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.datasets import Item, load
from workbench.errors import InvalidArgumentError
from workbench.evaluation.fluency import is_degenerate
from workbench.evaluation.language import detect_language, sentence_share
from workbench.evaluation.rating_judge import JUDGED, RatingJudge
from workbench.evaluation.targets import MIN_ITALIAN_SHARE, TARGETS, on_target
from workbench.evaluation.words import MIN_INVENTED_SHARE, has_stutter, invented_share, mixes_languages

__all__ = [
    "COLUMNS",
    "KINDS",
    "LABELS",
    "RATINGS",
    "agreement",
    "italian_concept",
    "load_rating_labels",
    "rate",
    "rate_labels",
    "rating_agreement",
    "score",
]

#: The three ratings of an answer, in AxBench's order.
RATINGS = ("concept", *JUDGED)
#: The columns :func:`rate` returns.
COLUMNS = (*RATINGS, "score", "judge")
#: The bundled labelled set.
LABELS = Path(__file__).resolve().parent.parent / "data" / "rating_labels.jsonl"
#: The kinds of answer in the labelled set.
KINDS = ("fluent", "salad", "loop", "off-topic", "wrong language", "partially broken")


def score(concept: float, relevance: float, fluency: float) -> float:
    """AxBench's score of one answer: the harmonic mean of its ratings, 0 if any is 0 (NaN: unknown)."""
    ratings = (concept, relevance, fluency)
    if any(r == 0 for r in ratings):
        return 0.0
    if any(math.isnan(r) for r in ratings):
        return math.nan
    return 3 / sum(1 / r for r in ratings)


def italian_concept(answer: str, *, salad: bool = False) -> int:
    """The Italian concept rating (see the module): 2 real Italian, 1 Italian-looking or mixed with English,
    0 another language. ``salad``: the judge found no fluent text where no loop rule fired."""
    if detect_language(answer) != "it":
        return 1 if mixes_languages(answer) else 0  # English with Italian words mixed in
    share = sentence_share(answer, "it")
    mixed = (not math.isnan(share) and share < MIN_ITALIAN_SHARE) or mixes_languages(answer)
    invented = invented_share(answer, "it") >= MIN_INVENTED_SHARE
    return 1 if salad or mixed or invented else 2


def _concept(target: str, item: Item | None, answer: str, salad: bool) -> int:
    """The target's rule as a rating: 2 on target, 0 not (Italian: :func:`italian_concept`)."""
    if target == "italian":
        return italian_concept(answer, salad=salad)
    return 2 if on_target(target, item, answer) else 0  # type: ignore[arg-type]  # only ifeval reads it


def rate(
    queries: Sequence[str],
    answers: Sequence[str],
    *,
    target: str,
    items: Sequence[Item] | None = None,
    judge: RatingJudge | None = None,
) -> pd.DataFrame:
    """One row per answer: :data:`COLUMNS` (see the module). ``items`` carry the IFEval checks (needed for
    ``target="ifeval"``); ``judge`` rates relevance and fluency (without one, only rules rate)."""
    if isinstance(answers, str) or isinstance(queries, str):
        raise InvalidArgumentError("rate takes lists of queries and answers; wrap a single text in [...]")
    if target not in TARGETS:
        raise InvalidArgumentError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")
    if len(queries) != len(answers):
        raise InvalidArgumentError(
            f"got {len(queries)} queries but {len(answers)} answers: give one per answer"
        )
    if items is None and target == "ifeval":
        raise InvalidArgumentError("target 'ifeval' needs the items whose instructions the answers follow")
    if items is not None and len(items) != len(answers):
        raise InvalidArgumentError(f"got {len(items)} items but {len(answers)} answers: give one per answer")
    for i, answer in enumerate(answers):
        if not isinstance(answer, str):
            raise InvalidArgumentError(f"answer {i} is not a string ({type(answer).__name__})")
    rows = list(items) if items is not None else [None] * len(answers)
    ruled = np.array([is_degenerate(a) for a in answers], dtype=bool)
    salad = np.zeros(len(answers), dtype=bool)  # the judge's salad: fluency 0 where no loop rule fired
    if judge is None:
        relevance = np.full(len(answers), np.nan)
        fluency = np.where(ruled, 0.0, np.nan)
    else:
        judged = judge(list(queries), list(answers))
        flawed = np.array([has_stutter(a) or mixes_languages(a) for a in answers], dtype=bool)
        fluency = np.where(ruled, 0.0, np.where(flawed, np.minimum(judged["fluency"], 1), judged["fluency"]))
        salad = (fluency == 0) & ~ruled
        relevance = np.where(salad, np.minimum(judged["relevance"], 1), judged["relevance"]).astype(float)
    concept = [_concept(target, item, a, s) for item, a, s in zip(rows, answers, salad, strict=True)]
    frame = pd.DataFrame({"concept": concept, "relevance": relevance, "fluency": fluency})
    frame = frame.astype({name: "Int64" for name in RATINGS})  # NaN: not rated
    scores = [
        score(*(float(v) if v is not pd.NA else math.nan for v in row)) for row in frame.itertuples(False)
    ]
    return frame.assign(score=scores, judge=judge.name if judge is not None else "rules")


def load_rating_labels(split: str | None = None) -> pd.DataFrame:
    """The labelled set (see the module), all of it or one ``split`` (``dev`` or ``test``)."""
    labels = pd.read_json(LABELS, lines=True, dtype={"instruction": str})
    if split is None:
        return labels
    if split not in ("dev", "test"):
        raise InvalidArgumentError(f"unknown split {split!r}: use 'dev', 'test' or None for both")
    return labels[labels["split"] == split].reset_index(drop=True)


def _items(labels: pd.DataFrame) -> list[Item | None]:
    """Each labelled row's bundled item (its IFEval checks) where its target is ``ifeval``, else None."""
    found: dict[str, dict[str, Item]] = {}
    out: list[Item | None] = []
    for row in labels.itertuples():
        if row.target != "ifeval":
            out.append(None)
            continue
        if row.instruction not in found:
            found[row.instruction] = {it.base_id: it for it in load(row.instruction, "all").items}
        out.append(found[row.instruction][row.query_id])
    return out


def rate_labels(judge: RatingJudge | None, split: str | None = None) -> pd.DataFrame:
    """The labelled set (or one ``split``) with :func:`rate`'s columns prefixed ``rated_``, one target at a
    time."""
    labels = load_rating_labels(split)
    items = _items(labels)
    parts = []
    for target, rows in labels.groupby("target", sort=False):
        rated = rate(
            rows["query"].tolist(),
            rows["answer"].tolist(),
            target=str(target),
            items=[items[i] for i in rows.index] if target == "ifeval" else None,  # type: ignore[misc]
            judge=judge,
        )
        parts.append(rated.set_axis(rows.index).add_prefix("rated_"))
    return labels.join(pd.concat(parts))


def agreement(rated: pd.DataFrame) -> pd.DataFrame:
    """Per rating of :data:`RATINGS`: ``n``, ``agreement`` (exact matches of ``rated_<rating>`` with the gold
    rating, as a share), Cohen's ``kappa`` and ``agreement_nonzero`` (on 0 against 1 or 2: the decision
    behind a score above 0, "clean"), from :func:`rate_labels`'s rows; unrated rows are left out."""
    out = []
    for rating in RATINGS:
        both = rated[["rated_" + rating, rating]].dropna()
        got, gold = both["rated_" + rating].astype(int), both[rating].astype(int)
        observed = float((got == gold).mean()) if len(both) else math.nan
        chance = (
            sum(float((got == k).mean() * (gold == k).mean()) for k in range(3)) if len(both) else math.nan
        )
        kappa = (observed - chance) / (1 - chance) if chance < 1 else math.nan
        nonzero = float(((got > 0) == (gold > 0)).mean()) if len(both) else math.nan
        out.append(
            {
                "rating": rating,
                "n": len(both),
                "agreement": observed,
                "kappa": kappa,
                "agreement_nonzero": nonzero,
            }
        )
    return pd.DataFrame(out)


def rating_agreement(judge: RatingJudge | None, split: str = "test") -> pd.DataFrame:
    """:func:`agreement` of :func:`rate` (with ``judge``) with the labelled set's ``split``, per rating, with
    the judge's name."""
    rated = rate_labels(judge, split)
    name = judge.name if judge is not None else "rules"
    return agreement(rated).assign(split=split, judge=name)
