"""Response perplexity and continuation log-probs: batch-invariant, equal to a plain forward, steerable."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import PROMPTS
from workbench.errors import InvalidArgumentError, ShapeMismatchError
from workbench.evaluation.perplexity import continuation_logprobs, join, perplexity
from workbench.interventions import Intervention
from workbench.steering import steer
from workbench.vectors import SteeringVector

RESPONSES = [
    "The capital of France is Paris.",
    "An apple.",
    "",
    "Put the egg in boiling water for eight minutes, then cool it.",
    "Cats are independent; dogs are loyal companions.",
]


def by_hand(model, context: str, continuation: str) -> torch.Tensor:
    """Log-probs of the continuation's tokens from one unpadded forward of the joined text."""
    head = model.tokenizer(context, add_special_tokens=False)["input_ids"]
    ids = model.tokenizer(join(context, continuation), add_special_tokens=False)["input_ids"]
    assert ids[: len(head)] == head
    x = torch.tensor([ids])
    with torch.no_grad():
        logprobs = model.hf_model(x).logits[0].float().log_softmax(-1)
    return logprobs[len(head) - 1 : -1].gather(-1, x[0, len(head) :, None])[:, 0]


def random_vector(model, layer: int = 1, seed: int = 0) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    return SteeringVector.from_directions(torch.randn(1, model.d_model, generator=generator), (layer,))


def test_join_adds_a_space_only_between_non_whitespace():
    assert join("Answer:", "Paris") == "Answer: Paris"
    assert join("assistant\n", "Paris") == "assistant\nParis"
    assert join("Answer: ", "Paris") == "Answer: Paris"
    assert join("Answer:", "") == "Answer:"


def test_perplexity_is_batch_size_invariant(tiny):
    one = perplexity(tiny, PROMPTS, RESPONSES, batch_size=1)
    for batch_size in (2, 16):
        other = perplexity(tiny, PROMPTS, RESPONSES, batch_size=batch_size)
        for a, b in zip(one, other, strict=True):
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-4 * a
    assert math.isnan(one[2])
    assert all(math.isfinite(p) and p > 1 for i, p in enumerate(one) if i != 2)


def test_perplexity_equals_exp_nll_of_an_unbatched_forward(tiny):
    batched = perplexity(tiny, PROMPTS, RESPONSES, batch_size=16)
    for prompt, response, value in zip(PROMPTS, RESPONSES, batched, strict=True):
        if response:
            expected = math.exp(-by_hand(tiny, tiny.format_chat(prompt), response).double().mean().item())
            assert abs(value - expected) <= 1e-4 * expected


def test_continuation_tokenized_alone_when_the_context_merges_with_it(tiny):
    # "Hello " + "world" tokenizes as "Hello", " world": the context's trailing " " is not a prefix token.
    head = tiny.tokenizer("Hello ")["input_ids"]
    assert tiny.tokenizer("Hello world")["input_ids"][: len(head)] != head
    (scores,) = continuation_logprobs(tiny, ["Hello "], ["world"], formatted=False)
    assert scores.numel() == len(tiny.tokenizer("world", add_special_tokens=False)["input_ids"])


def test_perplexity_refusals(tiny):
    with pytest.raises(ShapeMismatchError):
        perplexity(tiny, PROMPTS, RESPONSES[:2])
    with pytest.raises(InvalidArgumentError):
        perplexity(tiny, PROMPTS[:1], "a single string")
    with pytest.raises(InvalidArgumentError):
        perplexity(tiny, PROMPTS, RESPONSES, batch_size=0)
    with pytest.raises(InvalidArgumentError):
        continuation_logprobs(tiny, [""], ["Paris"], formatted=False)


def test_steering_positions_follow_the_declared_prompt_end(tiny):
    contexts = [tiny.format_chat(p) for p in PROMPTS[:4]]
    continuations = [r or "Yes." for r in RESPONSES[:4]]
    plain = continuation_logprobs(tiny, contexts, continuations, formatted=True)
    vector = random_vector(tiny)
    generated = [Intervention(vector, 1, coef=8.0, positions="generated", unit="absolute")]
    steered = continuation_logprobs(tiny, contexts, continuations, formatted=True, interventions=generated)
    for before, after in zip(plain, steered, strict=True):
        # The first continuation token is predicted from the last prompt position, which "generated" spares.
        assert abs(before[0] - after[0]) <= 1e-5
        assert (before[1:] - after[1:]).abs().max() > 1e-3
    last = [Intervention(vector, 1, coef=8.0, positions="last_prompt", unit="absolute")]
    moved = continuation_logprobs(tiny, contexts, continuations, formatted=True, interventions=last)
    assert all(abs(b[0] - a[0]) > 1e-4 for b, a in zip(plain, moved, strict=True))


def test_perplexity_is_steered_inside_steer_only(tiny):
    before = perplexity(tiny, PROMPTS[:2], RESPONSES[:2])
    with steer(tiny, Intervention(random_vector(tiny, layer=2), 2, coef=8.0, unit="absolute")):
        steered = perplexity(tiny, PROMPTS[:2], RESPONSES[:2])
    after = perplexity(tiny, PROMPTS[:2], RESPONSES[:2])
    assert all(abs(a - b) > 1e-3 for a, b in zip(before, steered, strict=True))
    assert after == before
