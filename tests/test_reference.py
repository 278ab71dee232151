"""Reference-model fluency: calibrated on natural answers, it passes them and fails token salad; its
perplexity cache keys every input, is shared by concurrent runs and survives a full disk."""

from __future__ import annotations

import dataclasses
import errno
import os

import pandas as pd
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


def test_the_perplexity_cache_key_names_every_input(writer, prompts, natural, tmp_path, monkeypatch):
    """Each input changed once scores again; the unchanged call reads back. The prompt is keyed as the
    reference sees it, so a base-format reference (or another chat template) never reads chat-format scores."""
    cache = tmp_path / "ppl.parquet"
    scored: list[str] = []

    def counting(model, contexts, continuations, **kwargs):
        scored.extend(contexts)
        return [1.0] * len(contexts)

    monkeypatch.setattr("workbench.evaluation.reference.perplexity", counting)
    base = (writer, prompts[:1], natural[:1])
    changes = {
        "nothing": base,
        "prompt": (writer, prompts[1:2], natural[:1]),
        "response": (writer, prompts[:1], natural[1:2]),
        "weights": (dataclasses.replace(writer, weights_hash="e" * 64), prompts[:1], natural[:1]),
        "prompt format": (dataclasses.replace(writer, is_chat=False), prompts[:1], natural[:1]),
    }
    cached_perplexity(*base, cache)
    counts = {}
    for name, args in changes.items():
        before = len(scored)
        cached_perplexity(*args, cache)
        counts[name] = len(scored) - before
    assert counts == {"nothing": 0, "prompt": 1, "response": 1, "weights": 1, "prompt format": 1}


def test_runs_sharing_a_perplexity_cache_keep_each_others_scores(
    writer, prompts, natural, tmp_path, monkeypatch
):
    """Run A scores while run B writes the file: A merges under the lock instead of overwriting B."""
    cache = tmp_path / "ppl.parquet"
    other = []

    def meanwhile(model, contexts, continuations, **kwargs):
        if not other:  # run B finishes while A is scoring
            other.append(1)
            cached_perplexity(writer, prompts[4:6], natural[4:6], cache)
        return [2.0] * len(contexts)

    monkeypatch.setattr("workbench.evaluation.reference.perplexity", meanwhile)
    cached_perplexity(writer, prompts[:2], natural[:2], cache)
    stored = pd.read_parquet(cache)
    assert len(stored) == 4 and stored["key"].is_unique


def test_a_full_disk_keeps_the_scores_and_warns(writer, prompts, natural, tmp_path, monkeypatch):
    cache = tmp_path / "ppl.parquet"
    monkeypatch.setattr("workbench.evaluation.reference.perplexity", lambda m, c, r, **k: [3.0] * len(c))

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.warns(UserWarning, match="disk is full"):
        assert cached_perplexity(writer, prompts[:2], natural[:2], cache) == [3.0, 3.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ppl.parquet.lock"], "nothing half-written"
