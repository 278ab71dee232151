"""Dynamic Activation Composition as its authors run it (mean KL over the nucleus, steering from the last
prompt token on) against the summed rule, and the mean strength of a run for a fixed control."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.conftest import PROMPTS
from tests.test_schedules import authors_alpha, dyn, sharp  # noqa: F401  (sharp is a fixture)
from tests.test_steering import random_vector
from workbench.errors import InvalidArgumentError
from workbench.generation import generate
from workbench.schedules import (
    AUTHORS_POSITIONS,
    DynamicStrength,
    StrengthTrace,
    dynamic_strengths,
    mean_strength,
    nucleus,
)
from workbench.steering import steer


def scheduled(iv, spec: DynamicStrength, **changes):
    """``iv`` with the dynamic strength ``spec`` in place of its own."""
    field = next(name for name, value in vars(iv).items() if isinstance(value, DynamicStrength))
    return dataclasses.replace(iv, **{field: spec}, **changes)


def test_the_authors_rule_and_the_summed_rule_are_named_and_labelled_apart():
    authors, summed = DynamicStrength.authors(), DynamicStrength.summed()
    assert (authors.max_strength, authors.top_p, authors.mean_over_tokens) == (2.0, 0.95, True)
    assert summed == DynamicStrength() and not summed.mean_over_tokens
    assert (authors.label, summed.label) == ("dyn2m", "dyn2")
    assert DynamicStrength.authors(group="it").label == "dyn2m[it]"
    assert AUTHORS_POSITIONS == "response"


def test_the_authors_rule_is_their_code_and_the_summed_rule_is_it_times_the_nucleus():
    g = torch.Generator().manual_seed(1)
    reference, probe = torch.randn(8, 60, generator=g) * 3, torch.randn(8, 60, generator=g) * 3
    alpha, kl = dynamic_strengths(reference, probe, [DynamicStrength.authors()] * 8)
    expected = [authors_alpha(r, p, 0.95, 2.0) for r, p in zip(reference, probe, strict=True)]
    assert torch.allclose(alpha, torch.tensor([a for a, _ in expected]), atol=1e-6)
    _, total = dynamic_strengths(reference, probe, [DynamicStrength.summed()] * 8)
    size = (nucleus(reference, torch.tensor([[0.95]])) | nucleus(probe, torch.tensor([[0.95]]))).sum(-1)
    assert torch.allclose(total, kl * size, atol=1e-5)


def test_the_authors_first_strength_probes_the_last_prompt_token_only(sharp):  # noqa: F811
    """α_0 compares the unsteered prefill with one that adds α_max · c at the last prompt token alone."""
    vec = random_vector(sharp, seed=5)
    iv = scheduled(dyn(vec, 1, 8.0), DynamicStrength.authors(), positions=AUTHORS_POSITIONS)
    trace = StrengthTrace()
    generate(sharp, PROMPTS[:2], max_new_tokens=3, interventions=[iv], chat=False, trace=trace)
    encoded = sharp.encode(PROMPTS[:2], formatted=False)
    probe_iv = scheduled(iv, None, coef=iv.coef * 2.0, positions="last_prompt")
    with torch.no_grad():
        reference = sharp.hf_model(**encoded).logits[:, -1]
        with steer(sharp, probe_iv):
            probe = sharp.hf_model(**encoded).logits[:, -1]
    expected, _ = dynamic_strengths(reference, probe, [DynamicStrength.authors()] * 2)
    assert torch.allclose(torch.stack([s[0, 0] for s in trace.strengths]), expected, atol=1e-5)


def test_mean_strength_pools_every_generated_token_per_intervention():
    trace = StrengthTrace()
    trace.append(["a", "b"], torch.tensor([[2.0, 0.0, 1.0], [0.5, 0.5, 0.5]]), torch.zeros(2, 3))
    trace.append([], torch.zeros(0, 0), torch.zeros(0, 0))
    trace.append(["a"], torch.tensor([[1.0]]), torch.zeros(1, 1))
    assert mean_strength(trace) == {"a": 1.0, "b": 0.5}
    assert mean_strength(StrengthTrace()) == {}
    with pytest.raises(InvalidArgumentError, match="StrengthTrace"):
        mean_strength([torch.ones(1, 2)])


def test_mean_strength_of_a_generation(sharp):  # noqa: F811
    vec = random_vector(sharp, seed=3)
    ivs = [dyn(vec, 1, 8.0), scheduled(dyn(vec, 2, 4.0), DynamicStrength.authors(), positions="response")]
    trace = StrengthTrace()
    generate(sharp, PROMPTS, max_new_tokens=6, interventions=ivs, trace=trace)
    means = mean_strength(trace)
    assert list(means) == [iv.label for iv in ivs]
    for k, iv in enumerate(ivs):
        every = torch.cat([s[k] for s in trace.strengths])
        assert means[iv.label] == pytest.approx(float(every.mean()))
        assert 0 <= means[iv.label] <= 2.0
