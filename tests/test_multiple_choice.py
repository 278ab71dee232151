"""Multiple-choice log-likelihood scoring: equal to by-hand log-probs, batch-invariant, steerable."""

from __future__ import annotations

import pytest

from tests.test_perplexity import by_hand, random_vector
from workbench.datasets import MCItem
from workbench.errors import InvalidArgumentError
from workbench.evaluation.mc import LETTERED_TEMPLATE, format_question, multiple_choice
from workbench.evaluation.perplexity import continuation_logprobs
from workbench.interventions import Intervention

MC_ITEMS = [
    MCItem("q1", "What is the capital of France?", ("Paris", "Rome", "The city of Berlin"), 0, "en", "test"),
    MCItem(
        "q2", "Why is the sky blue?", ("Light scatters", "Cats", "Dogs are loyal", "Eggs"), 0, "en", "test"
    ),
    MCItem("q3", "Name a fruit.", ("apple", "a very long answer about cats and dogs"), 0, "en", "test"),
]


def test_multiple_choice_matches_by_hand_log_likelihoods(tiny):
    frame = multiple_choice(tiny, MC_ITEMS)
    assert list(frame["id"]) == ["q1", "q2", "q3"]
    assert list(frame["n_choices"]) == [3, 4, 2]
    for item, row in zip(MC_ITEMS, frame.itertuples(), strict=True):
        context = tiny.format_chat(format_question(item))
        hand = [by_hand(tiny, context, choice) for choice in item.choices]
        assert row.ll == pytest.approx([float(h.sum()) for h in hand], abs=1e-4)
        assert row.n_tokens == [h.numel() for h in hand]
        per_token = [float(h.mean()) for h in hand]
        assert row.ll_per_token == pytest.approx(per_token, abs=1e-4)
        assert row.ll_per_byte == pytest.approx(
            [float(h.sum()) / len(c.encode()) for h, c in zip(hand, item.choices, strict=True)], abs=1e-4
        )
        assert row.pred == max(range(len(per_token)), key=per_token.__getitem__)
        assert row.pred_raw == max(range(len(hand)), key=lambda k: float(hand[k].sum()))
        assert row.correct == (row.pred == item.answer)


def test_multiple_choice_runs_each_question_once_for_all_its_options(tiny):
    shapes = []
    embed = tiny.hf_model.get_input_embeddings()
    handle = embed.register_forward_hook(lambda _m, args, _out: shapes.append(tuple(args[0].shape)))
    try:
        multiple_choice(tiny, MC_ITEMS)
    finally:
        handle.remove()
    # One forward of the 3 questions, then one of the 3 + 4 + 2 options on their repeated KV cache.
    assert [rows for rows, _ in shapes] == [3, 9]
    longest_option = max(len(tiny.tokenizer(" " + c)["input_ids"]) for i in MC_ITEMS for c in i.choices)
    assert shapes[1][1] <= longest_option + 1


def test_multiple_choice_is_batch_size_invariant(tiny):
    one = multiple_choice(tiny, MC_ITEMS, batch_size=1, chat=False)
    many = multiple_choice(tiny, MC_ITEMS, batch_size=16, chat=False)
    for a, b in zip(one["ll"], many["ll"], strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-4)
    assert list(one["pred"]) == list(many["pred"])


def test_multiple_choice_prompt_templates(tiny):
    item = MC_ITEMS[0]
    assert format_question(item) == "Question: What is the capital of France?\nAnswer:"
    lettered = format_question(item, LETTERED_TEMPLATE)
    assert lettered.endswith("\nA. Paris\nB. Rome\nC. The city of Berlin\nAnswer:")
    frame = multiple_choice(tiny, MC_ITEMS[:1], prompt_template=LETTERED_TEMPLATE, chat=False)
    (scores,) = continuation_logprobs(tiny, [lettered], [" Paris"], formatted=False)
    assert frame["ll"][0][0] == pytest.approx(float(scores.sum()), abs=1e-4)


def test_multiple_choice_steering_changes_scores_and_leaves_no_hooks(tiny):
    before = multiple_choice(tiny, MC_ITEMS)
    steered = multiple_choice(
        tiny, MC_ITEMS, interventions=[Intervention(random_vector(tiny), 1, coef=8.0, unit="absolute")]
    )
    after = multiple_choice(tiny, MC_ITEMS)
    moved = max(
        abs(x - y)
        for a, b in zip(before["ll"], steered["ll"], strict=True)
        for x, y in zip(a, b, strict=True)
    )
    assert moved > 1e-2
    assert list(after["ll"]) == list(before["ll"])


def test_multiple_choice_refusals(tiny):
    with pytest.raises(InvalidArgumentError):
        multiple_choice(tiny, [])
    with pytest.raises(InvalidArgumentError):
        multiple_choice(tiny, [MCItem("x", "Q?", ("only",), 0, "en", "test")])
    with pytest.raises(InvalidArgumentError):
        multiple_choice(tiny, [MCItem("x", "Q?", ("a", "b"), 2, "en", "test")])
    with pytest.raises(InvalidArgumentError):
        multiple_choice(tiny, MC_ITEMS, prompt_template="no placeholder")
    with pytest.raises(InvalidArgumentError):
        multiple_choice(tiny, MC_ITEMS, prompt_template="{question} {unknown}")
    with pytest.raises(InvalidArgumentError):
        multiple_choice(tiny, MC_ITEMS, interventions=["not an intervention"])
