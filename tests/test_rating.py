"""AxBench's ratings: concept by rule, relevance and fluency by a judge, the harmonic mean, the labelled set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from workbench.datasets import load
from workbench.errors import InvalidArgumentError
from workbench.evaluation import rate, rating_agreement
from workbench.evaluation.rating import COLUMNS, KINDS, italian_concept, load_rating_labels, score
from workbench.evaluation.rating_judge import RUBRICS, RatingJudge

QUERIES = Path(__file__).resolve().parent.parent / "workbench" / "data" / "queries.jsonl"


class FixedJudge:
    """A judge that gives the same relevance and fluency to every answer."""

    name = "fixed"

    def __init__(self, relevance: int, fluency: int) -> None:
        self.ratings = relevance, fluency

    def __call__(self, queries, answers):
        n = len(answers)
        return {"relevance": np.full(n, self.ratings[0]), "fluency": np.full(n, self.ratings[1])}


@pytest.fixture
def long_tiny(tiny, monkeypatch):
    """The tiny Llama with room for the judge's rubric (its tokenizer spends many tokens on it; rotary
    positions have no limit)."""
    monkeypatch.setattr(tiny.bridge.cfg, "n_ctx", 4096)
    return tiny


def test_score_is_the_harmonic_mean_and_zero_when_any_rating_is():
    assert score(2, 2, 2) == 2 and score(1, 2, 2) == pytest.approx(1.5)
    assert score(0, 2, 2) == 0 and score(2, math.nan, 0) == 0
    assert math.isnan(score(2, math.nan, 2))


def test_rate_gives_the_columns_and_the_score():
    answers = ["Il cielo è blu perché la luce del sole viene diffusa dall'aria.", "The sky is blue."]
    rated = rate(["Why is the sky blue?"] * 2, answers, target="italian", judge=FixedJudge(1, 2))
    assert tuple(rated.columns) == COLUMNS
    assert rated["concept"].tolist() == [2, 0] and rated["judge"].eq("fixed").all()
    assert rated["score"].tolist() == [pytest.approx(3 / (1 / 2 + 1 + 1 / 2)), 0.0]


def test_concept_is_the_target_rule_and_a_loop_is_not_fluent():
    items = load("one_sentence", "all").items[:3]
    answers = [
        "The sky is blue.",
        "The sky is blue. It is.",
        "the cat the cat the cat the cat the cat the cat",
    ]
    rated = rate([i.query for i in items], answers, target="ifeval", items=items, judge=FixedJudge(2, 2))
    assert rated["concept"].tolist() == [2, 0, 2] and rated["fluency"].tolist() == [2, 2, 0]
    json_rated = rate(["q", "q"], ['{"a": 1}', 'Here: {"a": 1}'], target="json_format_strict")
    assert json_rated["concept"].tolist() == [2, 0] and json_rated["judge"].eq("rules").all()
    assert json_rated["relevance"].isna().all() and json_rated["fluency"].isna().all()  # no judge: unknown
    assert math.isnan(json_rated["score"][0]) and json_rated["score"][1] == 0  # ... unless a rating is 0


def test_italian_concept_gives_1_to_mixed_invented_and_salad_italian():
    fluent = "Il cielo è blu perché la luce del sole viene diffusa dall'aria."
    mixed = "Il cielo è blu because of the way la luce del sole is scattered, e il blu si diffonde di più."
    invented = "Il cielo blurante è sfolgorizzo perché la lucetta sfarfanza nell'ariosità celestrina."
    english = "The sky is blue because air scatters blue light more than red light."
    assert [italian_concept(a) for a in (fluent, mixed, invented, english)] == [2, 1, 1, 0]
    assert italian_concept(fluent, salad=True) == 1  # the judge found no fluent text: Italian-looking
    rated = rate(["Why is the sky blue?"] * 2, [fluent, fluent], target="italian", judge=FixedJudge(2, 0))
    assert rated["concept"].tolist() == [1, 1] and rated["score"].tolist() == [0.0, 0.0]
    assert rated["relevance"].tolist() == [1, 1]  # a salad cannot address the question
    loop = rate(
        ["q"], ["Il mare è calmo perché il vento è debole. " * 5], target="italian", judge=FixedJudge(2, 0)
    )
    assert loop["concept"].tolist() == [
        2
    ]  # a loop of Italian words is Italian; the loop rule rates fluency 0


def test_a_stutter_or_mixed_languages_caps_the_judges_fluency_at_1():
    answers = [
        "Walking every day is good for the, the heart and the mind.",
        "Boil the pasta in acqua salata and stir it spesso so it does not stick.",
        "Walking every day is good for the heart and the mind.",
    ]
    rated = rate(["q"] * 3, answers, target="json_format_strict", judge=FixedJudge(2, 2))
    assert rated["fluency"].tolist() == [1, 1, 2]
    assert rate(["q"], answers[:1], target="json_format_strict", judge=FixedJudge(2, 0))["fluency"][0] == 0


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(InvalidArgumentError, match="2 queries but 1 answers"):
        rate(["a", "b"], ["x"], target="italian")
    with pytest.raises(InvalidArgumentError, match="unknown target 'french'"):
        rate(["a"], ["x"], target="french")
    with pytest.raises(InvalidArgumentError, match="needs the items"):
        rate(["a"], ["x"], target="ifeval")
    with pytest.raises(InvalidArgumentError, match="lists of queries and answers"):
        rate("a", "x", target="italian")


def test_the_judge_gives_ratings_and_a_batch_equals_its_rows(long_tiny):
    judge = RatingJudge(long_tiny, batch_size=2)
    queries = ["Why is the sky blue?", "How do I boil an egg?"]
    answers = ["Light scatters.", "Put the egg in boiling water for eight minutes, then cool it."]  # padded
    batch = judge.probabilities("fluency", queries, answers)
    rows = np.concatenate(
        [judge.probabilities("fluency", [q], [a]) for q, a in zip(queries, answers, strict=True)]
    )
    assert batch.shape == (2, 3) and np.allclose(batch.sum(1), 1) and np.allclose(batch, rows, atol=1e-5)
    rated = rate(queries, answers, target="italian", judge=judge)
    assert set(rated["relevance"]) <= {0, 1, 2} and set(rated["fluency"]) <= {0, 1, 2}
    assert rated["judge"].eq("tiny-llama").all()
    with pytest.raises(InvalidArgumentError, match="unknown rating"):
        judge.probabilities("style", queries, answers)


def test_the_labelled_set_covers_both_languages_every_kind_both_splits_and_real_answers():
    labels = load_rating_labels()
    assert 120 <= len(labels) <= 300 and labels["id"].is_unique
    assert set(labels["source"]) >= {"hand-written", "smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct"}
    assert {"en", "it"} <= set(labels["language"]) and set(labels["kind"]) == set(KINDS)
    assert set(labels["split"]) == {"dev", "test"}
    for split in ("dev", "test"):
        part = load_rating_labels(split)
        assert set(part["kind"]) == set(KINDS) and {"en", "it"} <= set(part["language"])
    for rating in ("concept", "relevance", "fluency"):
        assert set(labels[rating]) == {0, 1, 2}
    queries = {row["id"]: row for row in map(json.loads, QUERIES.read_text().splitlines())}
    pairs = zip(labels["query_id"], labels["query"], strict=True)
    assert all(q in (queries[i]["en"], queries[i]["it"]) for i, q in pairs)
    shown = {answer for rubric in RUBRICS.values() for _, answer, _ in rubric.examples}
    assert not shown & set(labels["answer"])  # the judge's worked examples are not in the set


def test_agreement_is_reported_per_rating():
    table = rating_agreement(None, split="dev")
    assert table["rating"].tolist() == ["concept", "relevance", "fluency"]
    concept = table.set_index("rating").loc["concept"]
    assert concept["n"] == len(load_rating_labels("dev")) and 0.5 < concept["agreement"] <= 1
    assert table.set_index("rating").loc["relevance", "n"] == 0  # no judge: not rated


def test_the_judge_study_rates_the_labelled_set_per_split(long_tiny, tmp_path):
    from workbench.size import Size
    from workbench.studies.judge import judge_study

    result = judge_study(long_tiny, Size.named("quick"), tmp_path, batch_size=16)
    assert len(result.rows) == len(load_rating_labels())
    table = result.table.set_index(["split", "answers", "rating"])
    assert sorted(table.index) == sorted(
        (s, a, r)
        for s in ("dev", "test")
        for a in ("all", "hand-written", "generated")
        for r in ("concept", "relevance", "fluency")
    )
    assert (table["n"] > 0).all() and table["agreement_nonzero"].between(0, 1).all()
    n = table["n"].unstack("answers")
    assert (n["all"] == n["hand-written"] + n["generated"]).all()
    assert result.notes[0].startswith(f"Judge tiny-llama: {len(load_rating_labels())} labelled answers")


def test_a_cached_judge_rates_each_answer_once_and_as_the_uncached_one(long_tiny, tmp_path, monkeypatch):
    queries = ["Why is the sky blue?", "How do I boil an egg?", "Why is the sky blue?"]
    answers = ["Light scatters.", "Boil it for eight minutes.", "Light scatters."]
    plain = RatingJudge(long_tiny, batch_size=2)(queries, answers)
    cached = RatingJudge(long_tiny, batch_size=2, cache=tmp_path / "ratings.parquet")
    calls = []
    original = RatingJudge.probabilities

    def counted(self, rating, q, a):
        calls.append(len(a))
        return original(self, rating, q, a)

    monkeypatch.setattr(RatingJudge, "probabilities", counted)
    first = cached(queries, answers)
    assert calls == [2, 2]  # the repeated answer is rated once, per rating
    assert all(np.array_equal(first[r], plain[r]) for r in plain)
    again = cached([*queries[:2], "Why is grass green?"], [*answers[:2], "Chlorophyll."])
    assert calls == [2, 2, 1, 1] and again["fluency"][:2].tolist() == first["fluency"][:2].tolist()
