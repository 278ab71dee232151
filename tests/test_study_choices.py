"""The studies' multiple choice: a cache key that holds every input, and columns that say which way."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.datasets import load_multiple_choice
from workbench.errors import InvalidArgumentError
from workbench.head_steering import HeadIntervention
from workbench.interventions import Intervention
from workbench.schedules import DynamicStrength
from workbench.studies import choices
from workbench.studies.choices import cached_choice, mc_columns, mc_items, mc_key
from workbench.vectors import SteeringVector

VECTOR = SteeringVector.from_activations(
    torch.randn(6, 3, 8, generator=torch.Generator().manual_seed(0)),
    torch.randn(6, 3, 8, generator=torch.Generator().manual_seed(1)),
)
IV = Intervention(VECTOR, 1, "add", 2.0)
ITEMS, PARALLEL = mc_items("en", 4)
BASE = {
    "by": "generation",
    "interventions": (IV,),
    "parallel": PARALLEL,
    "template": None,
    "chat": True,
    "batch_size": 16,
    "max_new_tokens": None,
}


def _key(fingerprint: str = "model", items=ITEMS, **changes):
    return mc_key(fingerprint, items, **(BASE | changes))


def _steered(**changes):
    return _key(interventions=(dataclasses.replace(IV, **changes),))


def _edited(**changes):
    return [dataclasses.replace(ITEMS[0], **changes), *ITEMS[1:]]


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(lambda: _key("other model"), id="model"),
        pytest.param(lambda: _key(by="loglik"), id="by"),
        pytest.param(lambda: _key(template="Q: {question}\n{options}\nA:"), id="template"),
        pytest.param(lambda: _key(chat=False), id="chat"),
        pytest.param(lambda: _key(batch_size=8), id="batch_size"),
        pytest.param(lambda: _key(max_new_tokens=16), id="max_new_tokens"),
        pytest.param(lambda: _key(parallel=PARALLEL[:3]), id="parallel"),
        pytest.param(lambda: _key(items=ITEMS[:3]), id="n"),
        pytest.param(lambda: _key(items=mc_items("it", 4)[0]), id="language"),
        pytest.param(
            lambda: _key(items=load_multiple_choice("bundled", language="en", split="validation")[:4]),
            id="split",
        ),
        pytest.param(lambda: _key(items=_edited(id="other")), id="item id"),
        pytest.param(lambda: _key(items=_edited(question="Why?")), id="question"),
        pytest.param(lambda: _key(items=_edited(choices=("a", "b", "c", "d"))), id="choices"),
        pytest.param(lambda: _key(items=_edited(answer=(ITEMS[0].answer + 1) % 4)), id="answer"),
        pytest.param(lambda: _key(interventions=()), id="no steering"),
        pytest.param(lambda: _steered(layer=2), id="layer"),
        pytest.param(lambda: _steered(mode="set_projection"), id="mode"),
        pytest.param(lambda: _steered(coef=3.0), id="coef"),
        pytest.param(lambda: _steered(unit="residual_norm"), id="unit"),
        pytest.param(lambda: _steered(positions="generated"), id="positions"),
        pytest.param(lambda: _steered(decay_tokens=4), id="decay_tokens"),
        pytest.param(lambda: _steered(norm_preserving=True), id="norm_preserving"),
        pytest.param(lambda: _steered(schedule=DynamicStrength()), id="schedule"),
        pytest.param(lambda: _steered(schedule=DynamicStrength.authors()), id="schedule rule"),
        pytest.param(lambda: _steered(vector=VECTOR * 2.0), id="vector stats"),
        pytest.param(
            lambda: _key(
                interventions=(
                    Intervention(
                        SteeringVector.from_activations(torch.randn(6, 3, 8), torch.randn(6, 3, 8)),
                        1,
                        "add",
                        2.0,
                    ),
                )
            ),
            id="direction",
        ),
        pytest.param(
            lambda: _key(interventions=(HeadIntervention(torch.ones(1, 2, 4, 16), (0,)),)), id="head push"
        ),
    ],
)
def test_every_input_changes_the_multiple_choice_key(changed):
    assert changed() != _key()


def test_the_key_also_holds_its_version_and_the_scorer(monkeypatch):
    before = _key()
    monkeypatch.setattr(choices, "MC_VERSION", choices.MC_VERSION + 1)
    assert _key() != before
    monkeypatch.setattr(choices, "SCORER_VERSION", -1)
    assert _key() != before
    assert _key(by="loglik", max_new_tokens=16, parallel=()) == _key(by="loglik")  # generation only
    head = (HeadIntervention(torch.ones(1, 2, 4, 16), (0,), alpha=1.0),)
    assert _key(interventions=head) != _key(interventions=(HeadIntervention(torch.ones(1, 2, 4, 16), (0,)),))


def test_a_cached_run_is_read_back_until_an_input_changes(tiny, tmp_path, monkeypatch):
    calls = []
    real = choices.multiple_choice

    def counting(*args, **kwargs):
        calls.append(kwargs["by"])
        return real(*args, **kwargs)

    monkeypatch.setattr(choices, "multiple_choice", counting)
    items, parallel = mc_items("en", 2)
    path = tmp_path / "mc.parquet"
    first = cached_choice(tiny, items, path, by="generation", parallel=parallel, max_new_tokens=3)
    again = cached_choice(tiny, items, path, by="generation", parallel=parallel, max_new_tokens=3)
    pd.testing.assert_frame_equal(first, again)
    assert calls == ["generation"] and set(first["by"]) == {"generation"} and "unparsed" in first
    cached_choice(tiny, items, path, by="generation", parallel=parallel, max_new_tokens=2)
    cached_choice(tiny, items, path, by="loglik")
    assert calls == ["generation", "generation", "loglik"]


def test_columns_name_their_way_and_count_gains_and_losses():
    reference = pd.DataFrame({"id": ["a", "b", "c"], "correct": [True, False, False], "by": "generation"})
    rows = reference.assign(correct=[False, True, True], unparsed=[True, False, False])
    assert mc_columns(reference, rows, "it", "generation") == {
        "mc_generation_accuracy_it": pytest.approx(2 / 3),
        "mc_generation_gained_it": 2,
        "mc_generation_lost_it": 1,
        "mc_generation_unparsed_it": pytest.approx(1 / 3),
    }
    missing = mc_columns(None, rows, "en", "loglik")
    assert list(missing) == ["mc_loglik_accuracy_en", "mc_loglik_gained_en", "mc_loglik_lost_en"]
    assert all(np.isnan(v) for v in missing.values())
    with pytest.raises(InvalidArgumentError, match="by must be"):
        mc_columns(reference, rows, "en", "judge")
