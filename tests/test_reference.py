"""Reference-model fluency: calibrated on natural answers, it passes them and fails token salad."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from workbench.datasets import load
from workbench.errors import InvalidArgumentError
from workbench.evaluation.reference import Judge, cached_perplexity, calibrate, reference_model
from workbench.generation import generate


@pytest.fixture(scope="module")
def prompts():
    return load("no_comma", "validation").negative[:12]


@pytest.fixture(scope="module")
def natural(writer, prompts):
    """The model's own greedy answers: the most predictable text there is for it."""
    return generate(writer, prompts, max_new_tokens=10)


def test_natural_answers_pass_and_token_salad_fails(writer, prompts, natural):
    rule = calibrate(
        writer, {"unsteered": (prompts[:4], natural[:4]), "italian": (prompts[4:8], natural[4:8])}
    )
    assert set(rule.anchors) == {"unsteered", "italian"} and rule.anchor == max(rule.anchors.values())
    assert rule.reference == writer.name and rule.n_validation == 8
    held_out = rule.score(writer, prompts[8:], natural[8:])
    generator = torch.Generator().manual_seed(0)
    salad = [writer.tokenizer.decode(torch.randint(5, 400, (10,), generator=generator)) for _ in prompts[8:]]
    scored = rule.score(writer, prompts[8:], salad)
    assert held_out["fluent_reference"].mean() >= 0.75 and not scored["fluent_reference"].any()
    assert scored["relative_perplexity"].min() > held_out["relative_perplexity"].median()
    assert set(scored["reference"]) == {writer.name}
    assert not rule.score(writer, prompts[:1], [""])["fluent_reference"].iloc[0]
    in_pairs = Judge(writer, rule, batch_size=1)(prompts[8:], salad)  # batch size changes no verdict
    assert list(in_pairs["fluent_reference"]) == list(scored["fluent_reference"])
    assert in_pairs["reference_perplexity"].tolist() == pytest.approx(scored["reference_perplexity"].tolist())
    assert writer.name in rule.describe() and f"{rule.threshold:.3g}" in rule.describe()


def test_the_rule_names_its_reference_and_refuses_another(writer, prompts, natural):
    rule = calibrate(writer, {"unsteered": (prompts[:4], natural[:4])})
    other = dataclasses.replace(writer, weights_hash="f" * 64)
    with pytest.raises(InvalidArgumentError):
        rule.score(other, prompts[:2], natural[:2])
    assert reference_model(writer, "no-such-reference-model") is writer  # not fetched: the scored model
    with pytest.raises(InvalidArgumentError):
        calibrate(writer, {})
    with pytest.raises(InvalidArgumentError):
        calibrate(writer, {"unsteered": (prompts[:2], ["", ""])})


def test_cached_perplexities_are_read_back_and_only_new_answers_are_scored(
    writer, prompts, natural, tmp_path
):
    rule = calibrate(writer, {"unsteered": (prompts[:4], natural[:4])})
    cache = tmp_path / "ppl.parquet"
    first = Judge(writer, rule, cache=cache)(prompts[4:8], natural[4:8])
    plain = rule.score(writer, prompts[4:8], natural[4:8])
    assert first["reference_perplexity"].tolist() == pytest.approx(plain["reference_perplexity"].tolist())
    scored: list[int] = []

    def counting(model, contexts, continuations, **kwargs):
        scored.append(len(contexts))
        return [1.0] * len(contexts)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("workbench.evaluation.reference.perplexity", counting)
        again = Judge(writer, rule, cache=cache)(prompts[4:8], natural[4:8])
        assert scored == [] and again.equals(first)
        mixed = cached_perplexity(writer, prompts[4:9], natural[4:9], cache)
    assert scored == [1] and mixed[:4] == first["reference_perplexity"].tolist() and mixed[4] == 1.0
    other = dataclasses.replace(writer, weights_hash="f" * 64)  # another model never reads these scores
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("workbench.evaluation.reference.perplexity", counting)
        cached_perplexity(other, prompts[4:6], natural[4:6], cache)
    assert scored == [1, 2]
