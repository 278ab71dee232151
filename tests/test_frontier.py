"""The frontier search with a rating judge: it chooses by the judge's mean score and records the rating that
decides whether a preset ships (the judge and the answers are stand-ins, so the rules and the judge can
disagree on purpose)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workbench import presets
from workbench.behaviours import BEHAVIOURS
from workbench.recipes import Recipe
from workbench.size import Size
from workbench.studies import frontier, search

SCALE = Size(n_train=6, n_validation=3, n_test=3, max_new_tokens=5, layers=None)


class _Judge:
    """Rates every answer relevant, and fluent (2) except the answers in ``salad`` (0)."""

    name = "stub"

    def __init__(self, salad: set[str]) -> None:
        self.salad = salad

    def __call__(self, queries: list[str], answers: list[str]) -> dict[str, np.ndarray]:
        return {
            "relevance": np.full(len(answers), 2),
            "fluency": np.array([0 if a in self.salad else 2 for a in answers]),
        }


@pytest.fixture
def one_sentence_answers(monkeypatch) -> dict[str, int]:
    """Validation answers without generation: each steered recipe writes its own one clean sentence (lower
    perplexity for recipes listed earlier, so the text rules rank them first), unsteered three sentences."""
    numbers: dict[str, int] = {}

    def answer(model, behaviour, vectors, recipes, split, n, **options):
        items = behaviour.items(split, n).items
        rows = []
        for r in recipes:
            k = numbers.setdefault(r.name, len(numbers))
            text = f"Steering recipe number {k} gives this answer." if r.steered else "Hi. I am here. Ask me."
            prompts = behaviour.prompts(split, n, r.prompt)
            rows += [
                {
                    "recipe": r.name,
                    "split": split,
                    "id": item.id,
                    "prompt": prompt,
                    "response": text,
                    "perplexity": 2.0 + k / 1000,
                }
                for item, prompt in zip(items, prompts, strict=True)
            ]
        return pd.DataFrame(rows)

    monkeypatch.setattr(search, "answer", answer)
    return numbers


def test_with_a_judge_the_frontier_chooses_by_mean_score_and_records_the_rating(
    writer, tmp_path, monkeypatch, one_sentence_answers
):
    """The recipe the text rules choose writes salad by the judge: with the judge another finalist is chosen,
    and the preset ships with the judge's rating."""
    folder = tmp_path / "frontier"

    def run(judge: _Judge | None) -> tuple[Recipe, pd.DataFrame, list[str]]:
        monkeypatch.setattr(frontier, "rating_judge", lambda model, spec, out: judge)
        result = frontier.frontier_study(
            writer, SCALE, tmp_path, behaviours=("one_sentence",), base_model=False, judge="x"
        )
        chosen = Recipe.from_json(json.loads((folder / "chosen.json").read_text())[0]["recipe"])
        return chosen, pd.read_csv(folder / "sweep_validation.csv"), result.notes

    by_rules, validation, notes = run(None)
    assert notes[0].startswith("no judge (x is not fetched")
    confirm = validation[validation["stage"] == "confirm"].set_index("recipe")
    finalists = confirm[confirm["steered"]]
    assert len(finalists) > 1 and (finalists["clean_rate"] == 1).all()  # the rules see no difference
    assert "mean_score" not in validation
    doc = json.loads((folder / "presets.json").read_text())
    assert doc["presets"]["one_sentence"]["recipes"]["tiny-llama"]["rating"] is None
    assert presets.read(folder / "presets.json")["one_sentence"].withdrawn == {"tiny-llama": by_rules}

    salad = f"Steering recipe number {one_sentence_answers[by_rules.name]} gives this answer."
    chosen, validation, notes = run(_Judge({salad}))
    assert notes[0] == "judge: stub rated the round each recipe was chosen on"
    confirm = validation[validation["stage"] == "confirm"].set_index("recipe")
    assert (confirm["judge"] == "stub").all()
    assert validation.loc[validation["stage"] != "confirm", "judge"].isna().all()  # only the final round
    assert confirm.loc[by_rules.name, "mean_score"] == confirm.loc[Recipe().name, "mean_score"] == 0
    ratings = confirm.loc[by_rules.name, ["mean_concept", "mean_relevance", "mean_fluency"]]
    assert ratings.tolist() == [2, 1, 0]  # the judge's salad: relevance at most 1
    assert chosen != by_rules and chosen.name in set(finalists.index)
    assert confirm.loc[chosen.name, "mean_score"] == 2 and confirm.loc[chosen.name, "mean_fluency"] == 2
    shipped = presets.read(folder / "presets.json")["one_sentence"]
    assert shipped.recipes == {"tiny-llama": chosen} and shipped.withdrawn == {}
    rating = shipped.rating["tiny-llama"]
    assert (rating["judge"], rating["n"], rating["mean_fluency"], rating["mean_score"]) == ("stub", 9, 2, 2)
    assert any("stub: mean score 2.00, fluency 2.00" in note for note in notes)


def test_a_quick_search_rates_the_grid_it_chooses_on(writer, tmp_path, one_sentence_answers):
    """The quick grid: unsteered, the instruction, then a recipe per source (numbered 2, 3, ...); the rules
    would choose number 2, the judge finds all but number 3 salad."""
    behaviour = BEHAVIOURS["one_sentence"]
    judge = _Judge(
        {f"Steering recipe number {k} gives this answer." for k in range(9)}
        - {"Steering recipe number 3 gives this answer."}
    )
    _, summary, chosen, _ = search.search(writer, behaviour, Size.quick(), tmp_path, judge=judge)
    assert set(summary["stage"]) == {"baseline", "coarse"} and (summary["judge"] == "stub").all()
    assert (
        one_sentence_answers[chosen.name] == 3
        and summary.set_index("recipe").loc[chosen.name, "mean_score"] == 2
    )


def test_the_frontier_s_judge_is_none_where_not_given_or_not_fetched(writer, tmp_path):
    assert frontier.rating_judge(writer, None, tmp_path) is None
    assert frontier.rating_judge(writer, str(tmp_path / "not-fetched.gguf"), tmp_path) is None
