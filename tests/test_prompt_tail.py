"""Prompt-only steering (``positions="prompt_tail:K"``, PrOSV's last K prompt tokens) and its trained factor:
the rule masks exactly the last K prompt positions, generation feels it only through the KV cache, the cache
equals recomputation, a batch equals its rows alone, and the factor training raises the answers' likelihood."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import torch

from tests.conftest import PROMPTS, build_tiny_model
from workbench.errors import InvalidArgumentError
from workbench.evaluation.perplexity import continuation_logprobs
from workbench.fastpath import direct_forward
from workbench.generation import generate
from workbench.interventions import Intervention
from workbench.positions import PositionTracker, check_positions, tail_length
from workbench.recipes import Recipe
from workbench.steering import steer, steer_rows, tracking
from workbench.training import PreferencePairs, train_factor
from workbench.training.vector import answer_logps, pad
from workbench.vectors import SteeringVector

LAYER = 1
#: Prompts that share a 13-token opening, so generation runs it once (the shortest keeps 12 tokens after it).
SHARED = [
    "Tell me about cats and dogs and why people like them so much.",
    "Tell me about cats and dogs.",
    "Tell me about cats and dogs and the sky.",
]
TRIPLES = [
    ("What is the capital of France?", "Paris is the capital of France.", "Light scatters in the air."),
    ("How do I boil an egg?", "Put the egg in boiling water for eight minutes.", "Cats are independent."),
    ("Tell me about cats.", "Cats are independent; dogs are loyal companions.", "The sky is blue."),
    ("Explain why the sky is blue.", "Light scatters in the air, and blue light scatters most.", "Boil it."),
]


def _vector(model, seed: int = 0) -> SteeringVector:
    direction = torch.randn(1, model.d_model, generator=torch.Generator().manual_seed(seed))
    return SteeringVector.from_directions(direction, layers=[LAYER])


def _tail(model, k: int, coef: float = 6.0, seed: int = 0) -> Intervention:
    return Intervention(_vector(model, seed), LAYER, coef=coef, unit="absolute", positions=f"prompt_tail:{k}")


def logits(model, rows, prompts, *, cached: bool, tail: str = " Paris is the capital city") -> torch.Tensor:
    """Logits of each prompt plus a fixed continuation (zero at padding), row ``i`` steered by ``rows[i]``:
    one forward (recomputation) or the prompt then the continuation on its KV cache."""
    encoded = model.encode([model.format_chat(p) for p in prompts], formatted=True)
    width = encoded["input_ids"].shape[1]
    extra = model.tokenizer(tail, add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = torch.cat([encoded["input_ids"], extra.expand(len(prompts), -1)], dim=1)
    mask = torch.cat([encoded["attention_mask"], torch.ones_like(extra).expand(len(prompts), -1)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.inference_mode(), ExitStack() as stack:
        tracker = stack.enter_context(tracking(model))
        stack.enter_context(tracker.declared(torch.tensor([width])))
        stack.enter_context(steer_rows(model, rows))
        stack.enter_context(direct_forward(model))
        if not cached:
            out = model.hf_model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        else:
            first = model.hf_model(
                input_ids=ids[:, :width], attention_mask=mask[:, :width], position_ids=positions[:, :width]
            )
            rest = model.hf_model(
                input_ids=ids[:, width:],
                attention_mask=mask,
                position_ids=positions[:, width:],
                use_cache=True,
                **{model.cache_argument: first.past_key_values},
            )
            out = torch.cat([first.logits, rest.logits], dim=1)
    return out.float() * mask[..., None]


def test_the_rule_selects_the_last_k_prompt_positions():
    tracker = PositionTracker()
    with tracker.declared(torch.tensor([6, 4])):
        mask = tracker.mask("prompt_tail:3", 9, torch.device("cpu"))
        assert mask.tolist() == [[i in (3, 4, 5) for i in range(9)], [i in (1, 2, 3) for i in range(9)]]
        tracker.offset = 7  # a decoding step: generated positions only
        assert not tracker.mask("prompt_tail:3", 1, torch.device("cpu")).any()
    assert [tail_length(p) for p in ("prompt_tail:12", "last_prompt", "all", "response")] == [12, 1, 0, 0]
    recipe = Recipe("last_prompt", (LAYER,), "add", 4.0, positions="prompt_tail:5")
    assert Recipe.from_json(recipe.to_json()) == recipe and recipe.name.endswith("prompt_tail:5")
    for bad in (
        "prompt_tail",
        "prompt_tail:0",
        "prompt_tail:-2",
        "prompt_tail:x",
        "prompt_tail:3 ",
        "tail:3",
    ):
        with pytest.raises(InvalidArgumentError, match="prompt_tail:K") as caught:
            check_positions(bad)
        assert "\n" not in str(caught.value)


def test_a_prompt_forward_edits_exactly_the_last_k_positions(tiny):
    """At the steered layer only the last K positions change, by coef·u; the logits before them do not."""
    ids = tiny.encode([tiny.format_chat(PROMPTS[2])], formatted=True)["input_ids"]
    iv = _tail(tiny, 4)
    seen = []

    def record(x, hook):
        seen.append(x.clone())

    with torch.inference_mode():
        with tiny.bridge.hooks(fwd_hooks=[(iv.hook_name, record)]):
            plain = tiny.hf_model(input_ids=ids).logits
        with steer(tiny, iv), tiny.bridge.hooks(fwd_hooks=[(iv.hook_name, record)]):
            steered = tiny.hf_model(input_ids=ids).logits
    edit = (seen[1] - seen[0])[0]
    expected = torch.zeros_like(edit)
    expected[-4:] = 6.0 * iv.direction()
    assert torch.allclose(edit, expected, atol=1e-5)
    assert torch.equal(plain[:, :-4], steered[:, :-4])
    assert not torch.allclose(plain[:, -4:], steered[:, -4:], atol=1e-3)


def test_generation_feels_it_only_through_the_kv_cache(tiny):
    """A decoding step under the rule computes what it computes unsteered on the same (steered) cache, and
    differs from a step on the unsteered cache."""
    ids = tiny.encode([tiny.format_chat(PROMPTS[0])], formatted=True)["input_ids"]
    nxt = ids[:, -1:]
    iv = _tail(tiny, 3, coef=8.0)

    def step(prefill, decode):
        with torch.inference_mode(), ExitStack() as stack:
            tracker = stack.enter_context(tracking(tiny))
            stack.enter_context(tracker.declared(torch.tensor([ids.shape[1]])))
            with steer(tiny, *prefill), direct_forward(tiny):
                cache = tiny.hf_model(input_ids=ids, use_cache=True).past_key_values
            with steer(tiny, *decode), direct_forward(tiny):
                return tiny.hf_model(input_ids=nxt, use_cache=True, **{tiny.cache_argument: cache}).logits

    through_cache = step([iv], [iv])
    assert torch.equal(through_cache, step([iv], []))
    assert not torch.allclose(through_cache, step([], []), atol=1e-3)


def test_kv_cached_steering_equals_recomputation(tiny):
    rows = [[_tail(tiny, 2)], [], [_tail(tiny, 5, seed=1), _tail(tiny, 40, coef=-3.0, seed=2)]]
    prompts = [PROMPTS[4], PROMPTS[1], PROMPTS[0]]
    cached, full = (logits(tiny, rows, prompts, cached=c) for c in (True, False))
    assert (cached - full).abs().max() < 1e-4
    texts = [
        generate(tiny, prompts, max_new_tokens=6, interventions=[_tail(tiny, 5, coef=12.0)], use_cache=c)
        for c in (True, False)
    ]
    assert texts[0] == texts[1]


@pytest.fixture(scope="module")
def fluent():
    """A tiny model kept from whitespace-only tokens and from repeating a token, so that its texts tell
    steering settings apart."""
    model = build_tiny_model()
    config = model.hf_model.generation_config
    vocab = model.tokenizer.get_vocab().values()
    config.suppress_tokens = [i for i in vocab if not model.tokenizer.decode([i]).strip()]
    config.no_repeat_ngram_size = 1
    return model


def test_a_batch_equals_each_row_alone_with_a_shared_prompt_opening(fluent):
    """Rows of different prompt lengths whose tails reach into the opening generation shares (K = 16 on a
    row with 12 tokens after it): the shared opening is shortened so that each row steers its own tail."""
    writer = fluent
    rows = [[_tail(writer, 3, coef=10.0)], [_tail(writer, 16, coef=10.0, seed=3)], []]
    together = generate(writer, SHARED, max_new_tokens=6, row_interventions=rows)
    alone = [
        generate(writer, [p], max_new_tokens=6, interventions=r)[0] for p, r in zip(SHARED, rows, strict=True)
    ]
    assert together == alone
    unshared = generate(writer, SHARED, max_new_tokens=6, row_interventions=rows, share_prefix=False)
    assert together == unshared
    assert together[1] != generate(writer, SHARED[1:2], max_new_tokens=6)[0]


def test_training_steers_the_positions_inference_steers(tiny):
    """The factor's loss (answer_logps on the rule's positions of a left-padded batch) is the answers'
    log-probability that scoring gives under the same Intervention."""
    targets, _ = PreferencePairs.from_triples(TRIPLES).sequences(tiny)
    end = tiny.tokenizer.eos_token_id
    rows = [(ids[:-1] if ids[-1] == end else ids, n) for ids, n in targets]  # scoring has no end-of-turn
    batch = pad(rows, tiny.tokenizer.pad_token_id, tiny.device)
    iv = _tail(tiny, 4, coef=5.0)
    ones = torch.ones(len(rows))
    with torch.no_grad():
        trained = answer_logps(
            tiny, batch, {LAYER: 5.0 * iv.direction()}, ones, ones < 0, batch.positions(iv.positions)
        )
        plain = answer_logps(tiny, batch, {}, ones, ones < 0)
    contexts, answers = [tiny.format_chat(t[0]) for t in TRIPLES], [t[1] for t in TRIPLES]
    scored = continuation_logprobs(tiny, contexts, answers, formatted=True, interventions=[iv])
    expected = torch.tensor([float(s.sum()) for s in scored])
    assert torch.allclose(trained, expected, atol=1e-3)
    assert not torch.allclose(trained, plain, atol=1e-2)


def test_factor_training_raises_the_answers_likelihood(tiny):
    vector = _vector(tiny)
    settings = {"layers": [LAYER], "positions": "prompt_tail:4", "unit": "absolute", "init": 1.0}
    coef = train_factor(tiny, vector, TRIPLES, epochs=4, batch_size=4, **settings)
    assert coef == train_factor(tiny, vector, TRIPLES, epochs=4, batch_size=4, **settings)  # deterministic

    def logp(c: float) -> float:
        iv = Intervention(vector, LAYER, coef=c, unit="absolute", positions="prompt_tail:4")
        contexts = [tiny.format_chat(t[0]) for t in TRIPLES]
        scores = continuation_logprobs(
            tiny, contexts, [t[1] for t in TRIPLES], formatted=True, interventions=[iv]
        )
        return sum(float(s.sum()) for s in scores)

    assert coef != 1.0 and logp(coef) > logp(1.0) + 0.1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layers": [LAYER], "positions": "tail"}, "unknown positions"),
        ({"layers": [2]}, "no layer 2"),
        ({"layers": [9]}, "out of range"),
        ({"layers": [LAYER], "lr": 0}, "lr must be"),
        ({"layers": [LAYER], "init": float("nan")}, "init must be"),
        ({"layers": [LAYER], "epochs": 0}, "epochs must be"),
        ({"layers": [LAYER], "unit": "tokens"}, "unknown unit"),
    ],
)
def test_bad_factor_settings_are_one_line(tiny, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match) as caught:
        train_factor(tiny, _vector(tiny), TRIPLES, **kwargs)
    assert "\n" not in str(caught.value)
