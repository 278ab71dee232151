"""The frontier search with a rating judge: it chooses by the judge's mean score (the judge and the answers
are stand-ins, so the rules and the judge can disagree on purpose)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.behaviours import BEHAVIOURS
from workbench.size import Size
from workbench.studies import search


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
