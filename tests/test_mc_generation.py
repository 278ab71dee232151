"""Multiple choice answered by generation: prompts per language, parsing into columns, batching, steering,
and the questions one method gains and loses against another."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from workbench.datasets import MCItem
from workbench.errors import InvalidArgumentError
from workbench.evaluation import mc
from workbench.evaluation.mc import GENERATION_TEMPLATES, format_question, mc_changes, multiple_choice
from workbench.evaluation.mc_parse import parse_answer
from workbench.generation import generate
from workbench.interventions import Intervention
from workbench.vectors import SteeringVector

EN = [
    MCItem("q1", "What is the capital of France?", ("Paris", "Rome", "Berlin"), 0, "en", "test"),
    MCItem("q2", "How many legs does a spider have?", ("Six", "Two", "Eight", "Four"), 2, "en", "test"),
    MCItem("q3", "Name a fruit.", ("Apple", "Stone"), 0, "en", "test"),
]
IT = [
    MCItem("q1", "Qual è la capitale della Francia?", ("Parigi", "Roma", "Berlino"), 0, "it", "test"),
    MCItem("q2", "Quante zampe ha un ragno?", ("Sei", "Due", "Otto", "Quattro"), 2, "it", "test"),
    MCItem("q3", "Nomina un frutto.", ("Mela", "Pietra"), 0, "it", "test"),
]
COLUMNS = [
    "id",
    "language",
    "split",
    "answer",
    "pred",
    "parsed_by",
    "correct",
    "unparsed",
    "response",
    "n_choices",
    "by",
]


def unit_vector(model, seed: int = 0) -> SteeringVector:
    """A random unit direction at every layer (diff norm 1: a coefficient means the same in any unit)."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(model.n_layers, model.d_model, generator=g)
    return SteeringVector.from_directions(directions / directions.norm(dim=-1, keepdim=True))


@pytest.fixture
def answers(monkeypatch):
    """``generate`` replaced by canned answers; the prompts and settings it got are recorded."""
    calls = []

    def fake(model, prompts, **kwargs):
        calls.append((list(prompts), kwargs))
        return [canned.pop(0) for _ in prompts]

    canned: list[str] = []
    monkeypatch.setattr(mc, "generate", fake)
    return canned, calls


def test_generated_answers_are_parsed_into_columns(tiny, answers):
    canned, calls = answers
    canned += ["Answer: A", "The spider ha otto zampe.", "I do not know."]
    rows = multiple_choice(tiny, EN, by="generation", parallel=IT)
    assert list(rows.columns) == COLUMNS
    assert list(rows["pred"]) == [0, 2, -1]
    assert list(rows["parsed_by"]) == ["letter", "text", "none"]
    assert list(rows["correct"]) == [True, True, False]
    assert list(rows["unparsed"]) == [False, False, True]
    assert set(rows["by"]) == {"generation"}
    ((prompts, settings),) = calls
    assert prompts == [format_question(item, GENERATION_TEMPLATES["en"]) for item in EN]
    assert prompts[1].endswith(
        "Question: How many legs does a spider have?\nA. Six\nB. Two\nC. Eight\nD. Four\nAnswer:"
    )
    assert settings["max_new_tokens"] == mc.ANSWER_TOKENS and settings["interventions"] == []
    # without the parallel questions the Italian text of option C is not read
    canned += ["Answer: A", "The spider ha otto zampe.", "I do not know."]
    assert list(multiple_choice(tiny, EN, by="generation")["parsed_by"]) == ["letter", "none", "none"]


def test_italian_items_get_the_italian_prompt(tiny, answers):
    canned, calls = answers
    canned += ["Risposta: A", "La risposta corretta è C", "Mela"]
    rows = multiple_choice(tiny, IT, by="generation", parallel=EN, max_new_tokens=7)
    assert list(rows["pred"]) == [0, 2, 0] and rows["correct"].all()
    prompts, settings = calls[0]
    assert prompts[0].startswith("Rispondi") and prompts[0].endswith("C. Berlino\nRisposta:")
    assert settings["max_new_tokens"] == 7
    canned += ["B"] * 3
    multiple_choice(tiny, IT, by="generation", prompt_template="Q: {question}\n{options}\nA:")
    assert calls[1][0][2] == "Q: Nomina un frutto.\nA. Mela\nB. Pietra\nA:"


def test_generation_runs_the_model_with_its_interventions(tiny):
    steer = [Intervention(unit_vector(tiny), 1, "add", 6.0)]
    rows = multiple_choice(tiny, EN, by="generation", max_new_tokens=12, chat=False, interventions=steer)
    prompts = [format_question(item, GENERATION_TEMPLATES["en"]) for item in EN]
    assert list(rows["response"]) == generate(
        tiny, prompts, max_new_tokens=12, chat=False, interventions=steer
    )
    for item, row in zip(EN, rows.itertuples(), strict=True):
        assert (row.pred, row.parsed_by) == parse_answer(row.response, item.choices, question=item.question)
        assert row.unparsed == (row.pred == -1) == (row.parsed_by == "none")
        assert row.correct == (row.pred == item.answer)


def test_a_batch_equals_each_row_alone_and_rows_carry_their_own_steering(tiny):
    steer = [Intervention(unit_vector(tiny), 1, "add", 6.0)]
    per_row = [steer, [], steer]
    batch = multiple_choice(tiny, EN, by="generation", max_new_tokens=12, row_interventions=per_row)
    for item, ivs, response in zip(EN, per_row, batch["response"], strict=True):
        alone = multiple_choice(tiny, [item], by="generation", max_new_tokens=12, interventions=ivs)
        assert alone["response"][0] == response
    unsteered = multiple_choice(tiny, EN, by="generation", max_new_tokens=12)
    steered = multiple_choice(tiny, EN, by="generation", max_new_tokens=12, interventions=steer)
    assert unsteered["response"][1] == batch["response"][1]
    assert list(steered["response"][[0, 2]]) == list(batch["response"][[0, 2]])
    assert (steered["response"] != unsteered["response"]).all()  # steering changes the answers


def test_loglik_rows_say_how_they_were_scored(tiny):
    rows = multiple_choice(tiny, EN[:1])
    assert rows["by"].tolist() == ["loglik"]
    assert "parsed_by" not in rows and "response" not in rows


def table(correct, unparsed=None, by="generation", language="en"):
    frame = pd.DataFrame({"id": [f"q{i}" for i in range(len(correct))], "correct": correct, "by": by})
    frame["language"] = language
    if unparsed is not None:
        frame["unparsed"] = unparsed
    return frame


def test_changes_counts_questions_gained_and_lost():
    reference = table([True, True, False, False])
    steered = table([True, False, True, False], unparsed=[False, True, False, True])
    assert mc_changes(reference, steered) == {"accuracy": 0.5, "gained": 1, "lost": 1, "unparsed": 0.5}
    assert mc_changes(reference, reference.iloc[::-1]) == {
        "accuracy": 0.5,
        "gained": 0,
        "lost": 0,
        "unparsed": 0.0,
    }
    loglik = table([False, True, True, True], by="loglik")
    assert mc_changes(loglik.assign(correct=True), loglik) == {
        "accuracy": 0.75,
        "gained": 0,
        "lost": 1,
        "unparsed": 0.0,
    }
    both = pd.concat([reference, table([True, True, True, True], language="it")])
    assert mc_changes(both, both.assign(correct=False))["lost"] == 6


def test_refusals(tiny):
    with pytest.raises(InvalidArgumentError, match="by must be"):
        multiple_choice(tiny, EN, by="sampling")
    with pytest.raises(InvalidArgumentError, match="generation"):
        multiple_choice(tiny, EN, max_new_tokens=8)
    with pytest.raises(InvalidArgumentError, match="generation"):
        multiple_choice(tiny, EN, parallel=IT)
    with pytest.raises(InvalidArgumentError, match="same question"):
        multiple_choice(
            tiny, EN, by="generation", parallel=[MCItem("q1", "?", ("a", "b", "c"), 1, "it", "t")]
        )
    with pytest.raises(InvalidArgumentError, match="MCItem"):
        multiple_choice(tiny, EN, by="generation", parallel=["q1"])
    with pytest.raises(InvalidArgumentError):
        multiple_choice(tiny, [], by="generation")
    reference = table([True, False])
    with pytest.raises(InvalidArgumentError, match="one kind"):
        mc_changes(reference, reference.assign(by="loglik"))
    with pytest.raises(InvalidArgumentError, match="same questions"):
        mc_changes(reference, reference.iloc[:1])
    with pytest.raises(InvalidArgumentError, match="same questions"):
        mc_changes(reference, pd.concat([reference, reference]))
    with pytest.raises(InvalidArgumentError, match="table"):
        mc_changes(reference, pd.DataFrame())
