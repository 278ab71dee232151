"""The studies' Dynamic Activation Composition: named rules, traced mean strengths and fixed controls."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.conftest import PROMPTS
from tests.test_schedules import sharp  # noqa: F401  (a fixture)
from tests.test_steering import random_vector
from workbench.errors import InvalidArgumentError
from workbench.generation import generate
from workbench.interventions import Intervention
from workbench.schedules import AUTHORS_POSITIONS, DynamicStrength, StrengthTrace, mean_strength
from workbench.studies import dac
from workbench.studies.dac import AUTHORS, SUMMED, at_mean_strength, column_labels, traced_strengths


def _ivs(model, group: str | None = "g") -> list[Intervention]:
    vec = random_vector(model, seed=5)
    fixed = Intervention(vec, 2, "add", 1.0)
    moved = [
        Intervention(vec, 1, "add", 8.0, positions="all"),
        Intervention(vec, 3, "add", 4.0, decay_tokens=3),
    ]
    return [*AUTHORS.schedule(moved, group=group), fixed]


def test_each_rule_is_named_and_steers_where_its_authors_do(sharp):  # noqa: F811
    vec = random_vector(sharp, seed=5)
    iv = Intervention(vec, 1, "add", 2.0, positions="all", decay_tokens=4)
    authors, summed = AUTHORS.schedule([iv], group="x")[0], SUMMED.schedule([iv])[0]
    assert authors.schedule == DynamicStrength.authors("x") and authors.positions == AUTHORS_POSITIONS
    assert summed.schedule == DynamicStrength.summed() and summed.positions == "all"
    assert authors.decay_tokens == summed.decay_tokens == 0
    assert AUTHORS.spec(max_strength=1.0).label == "dyn1m" and SUMMED.spec("y").label == "dyn2[y]"
    assert (AUTHORS.strength, SUMMED.strength) == ("dynamic (authors')", "dynamic (summed)")
    with pytest.raises(InvalidArgumentError, match="scales an 'add'"):
        AUTHORS.schedule([Intervention(vec, 1, "set_projection")])


def test_column_labels_are_the_traces(sharp):  # noqa: F811
    for group in ("g", None):
        ivs = _ivs(sharp, group)
        trace = StrengthTrace()
        generate(sharp, PROMPTS[:1], max_new_tokens=2, interventions=ivs, chat=False, trace=trace)
        labels = column_labels(ivs)
        assert labels[-1] is None and trace.labels[0] == list(dict.fromkeys(labels[:-1]))


def test_traced_strengths_are_a_traced_generation_and_are_cached(sharp, tmp_path, monkeypatch):  # noqa: F811
    ivs = _ivs(sharp, None)
    trace = StrengthTrace()
    responses = generate(sharp, PROMPTS[:3], max_new_tokens=5, batch_size=2, interventions=ivs, trace=trace)
    found = traced_strengths(
        sharp, PROMPTS[:3], ivs, max_new_tokens=5, batch_size=2, path=tmp_path / "s.parquet"
    )
    assert found.mean == pytest.approx(mean_strength(trace)) and found.responses == responses
    for label in found.mean:
        steps = torch.cat([s[ls.index(label)] for ls, s in zip(trace.labels, trace.strengths, strict=True)])
        assert found.at_cap[label] == pytest.approx(float((steps >= 2.0 - 1e-6).double().mean()))

    def refuse(*args, **kwargs):
        raise AssertionError("a rerun reads the trace")

    monkeypatch.setattr(dac, "generate", refuse)
    again = traced_strengths(
        sharp, PROMPTS[:3], ivs, max_new_tokens=5, batch_size=2, path=tmp_path / "s.parquet"
    )
    assert again == found
    with pytest.raises(AssertionError, match="reads the trace"):  # another budget is another run
        traced_strengths(sharp, PROMPTS[:3], ivs, max_new_tokens=4, batch_size=2, path=tmp_path / "s.parquet")
    with pytest.raises(InvalidArgumentError, match="dynamic schedule"):
        traced_strengths(
            sharp, PROMPTS, ivs[-1:], max_new_tokens=4, batch_size=2, path=tmp_path / "t.parquet"
        )


def test_the_fixed_control_scales_each_coef_by_its_columns_mean(sharp):  # noqa: F811
    ivs = _ivs(sharp, "g")
    bare = dataclasses.replace(ivs[0], coef=None, schedule=DynamicStrength(group="h"))
    labels = column_labels([*ivs, bare])
    strengths = dac.Strengths({labels[0]: 0.25, labels[-1]: 0.5}, {}, [])
    control = at_mean_strength([*ivs, bare], strengths)
    assert [iv.coef for iv in control] == [8.0 * 0.25, 4.0 * 0.25, 1.0, 0.5]
    assert all(iv.schedule is None for iv in control) and control[2] is ivs[2]
    assert control[3].amount() == pytest.approx(0.5 * bare.vector.stats[1].diff_norm)
    assert [iv.positions for iv in control[:2]] == [AUTHORS_POSITIONS] * 2
    with pytest.raises(InvalidArgumentError, match="no mean strength"):
        at_mean_strength(ivs, dac.Strengths({}, {}, []))
