"""Model-based scoring: response perplexity, multiple-choice log-likelihoods, the evaluation table."""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest
import torch

from tests.conftest import PROMPTS
from workbench.datasets import Item, MCItem, load_multiple_choice
from workbench.errors import InvalidArgumentError, ShapeMismatchError
from workbench.evaluation.multiple_choice import LETTERED_TEMPLATE, format_question, multiple_choice
from workbench.evaluation.perplexity import continuation_logprobs, join, perplexity
from workbench.evaluation.table import evaluate
from workbench.generation import generate
from workbench.steering import Intervention, steer
from workbench.vectors import SteeringVector

RESPONSES = [
    "The capital of France is Paris.",
    "An apple.",
    "",
    "Put the egg in boiling water for eight minutes, then cool it.",
    "Cats are independent; dogs are loyal companions.",
]

MC_ITEMS = [
    MCItem("q1", "What is the capital of France?", ("Paris", "Rome", "The city of Berlin"), 0, "en", "test"),
    MCItem(
        "q2", "Why is the sky blue?", ("Light scatters", "Cats", "Dogs are loyal", "Eggs"), 0, "en", "test"
    ),
    MCItem("q3", "Name a fruit.", ("apple", "a very long answer about cats and dogs"), 0, "en", "test"),
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


# ---- perplexity -----------------------------------------------------------------------------------------


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
    generated = [Intervention(vector, 1, coef=8.0, positions="generated")]
    steered = continuation_logprobs(tiny, contexts, continuations, formatted=True, interventions=generated)
    for before, after in zip(plain, steered, strict=True):
        # The first continuation token is predicted from the last prompt position, which "generated" spares.
        assert abs(before[0] - after[0]) <= 1e-5
        assert (before[1:] - after[1:]).abs().max() > 1e-3
    last = [Intervention(vector, 1, coef=8.0, positions="last_prompt")]
    moved = continuation_logprobs(tiny, contexts, continuations, formatted=True, interventions=last)
    assert all(abs(b[0] - a[0]) > 1e-4 for b, a in zip(plain, moved, strict=True))


def test_perplexity_is_steered_inside_steer_only(tiny):
    before = perplexity(tiny, PROMPTS[:2], RESPONSES[:2])
    with steer(tiny, Intervention(random_vector(tiny, layer=2), 2, coef=8.0)):
        steered = perplexity(tiny, PROMPTS[:2], RESPONSES[:2])
    after = perplexity(tiny, PROMPTS[:2], RESPONSES[:2])
    assert all(abs(a - b) > 1e-3 for a, b in zip(before, steered, strict=True))
    assert after == before


# ---- multiple choice ------------------------------------------------------------------------------------


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
    steered = multiple_choice(tiny, MC_ITEMS, interventions=[Intervention(random_vector(tiny), 1, coef=8.0)])
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


# ---- evaluation table -----------------------------------------------------------------------------------


def make_item(item_id: str, behaviour: str, ids: tuple[str, ...], kwargs: tuple[dict, ...]) -> Item:
    return Item(
        item_id,
        item_id,
        "test",
        "format",
        behaviour,
        "Describe a cat.",
        "",
        "Describe a cat.",
        ids,
        kwargs,
        "en",
    )


JSON_ITEM = make_item("json/1", "json_format", ("detectable_format:json_format",), ({},))
ITALIAN_ITEM = make_item("it/1", "italian", ("language:response_language",), ({"language": "it"},))
ITALIAN_TEXT = (
    "Il gatto è un animale domestico molto amato. Dorme molte ore al giorno e ama giocare con i bambini."
)


def test_evaluate_columns_and_values():
    responses = ['{"animal": "cat", "legs": 4}', "A cat is a small furry animal that purrs.", ITALIAN_TEXT]
    frame = evaluate(responses, [JSON_ITEM, JSON_ITEM, ITALIAN_ITEM])
    expected = ["id", "behaviour", "response", "words", "sentences", "follows", "follows_loose"]
    assert list(frame.columns[:7]) == expected
    assert {"check:detectable_format:json_format", "check:language:response_language"} <= set(frame.columns)
    assert {"language", "in_target_language", "sentence_share_it", "code_switching"} <= set(frame.columns)
    assert {"repeated_ngram_rate", "longest_repeated_run", "degenerate"} <= set(frame.columns)
    assert "perplexity" not in frame.columns
    assert list(frame["follows"]) == [True, False, True]
    assert list(frame["check:detectable_format:json_format"][:2]) == [True, False]
    assert frame["check:detectable_format:json_format"][2] is pd.NA
    assert list(frame["language"][1:]) == ["en", "it"]
    assert list(frame["in_target_language"]) == [False, False, True]
    assert frame["sentence_share_it"][2] == 1.0
    assert frame["words"][1] == 9 and frame["sentences"][2] == 2
    assert not frame["degenerate"].any()


def test_evaluate_flags_loops_and_adds_loose_and_perplexity(tiny):
    loop = "the cat the cat the cat the cat the cat the cat the cat"
    responses = ['```json\n{"a": 1}\n```', loop]
    frame = evaluate(
        responses, [JSON_ITEM, JSON_ITEM], model=tiny, prompts=["Describe a cat."] * 2, loose=True
    )
    assert "check_loose:detectable_format:json_format" in frame.columns
    assert list(frame["degenerate"]) == [False, True]
    assert frame["longest_repeated_run"][1] >= 7
    assert all(math.isfinite(p) for p in frame["perplexity"])
    expected = perplexity(tiny, ["Describe a cat."] * 2, responses)
    assert list(frame["perplexity"]) == pytest.approx(expected, rel=1e-6)


def test_evaluate_refusals(tiny):
    with pytest.raises(ShapeMismatchError):
        evaluate(["one"], [JSON_ITEM, JSON_ITEM])
    with pytest.raises(InvalidArgumentError):
        evaluate(["one"], [JSON_ITEM], model=tiny)
    with pytest.raises(InvalidArgumentError):
        evaluate(["one"], [JSON_ITEM], language="xx")


# ---- SmolLM2 ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smol_multiple_choice_beats_chance(smol):
    items = load_multiple_choice("bundled", language="en", split="test")[:24]
    start = time.perf_counter()
    frame = multiple_choice(smol, items, batch_size=32)
    elapsed = time.perf_counter() - start
    assert frame["correct"].mean() > 0.4, (frame["correct"].mean(), elapsed)


@pytest.mark.slow
def test_smol_perplexity_of_its_own_greedy_answers(smol):
    prompts = PROMPTS[:3]
    answers = generate(smol, prompts, max_new_tokens=32)
    values = perplexity(smol, prompts, answers)
    assert all(math.isfinite(v) and 1 <= v < 20 for v in values), values


def test_evaluate_is_public_and_the_checks_load_without_torch():
    import subprocess
    import sys

    code = (
        "import sys; from workbench.evaluation import check; assert 'torch' not in sys.modules; "
        "import workbench as wb; from workbench.evaluation import evaluate; "
        "assert wb.evaluate is evaluate and evaluate.__module__ == 'workbench.evaluation.table'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_new_scorer_version_makes_finished_report_studies_stale(tmp_path, monkeypatch):
    """A reused report table holds scores: it is reused only under the scorer version that wrote it."""
    from workbench import evaluation
    from workbench.studies import report

    configuration = {"model": "m", "size": {"n_test": 3}}
    folder = tmp_path / "italian"
    folder.mkdir()
    pd.DataFrame({"setting": ["a"], "degenerate": [0.5]}).to_parquet(folder / "table.parquet")
    studies = {"italian": {"key": report._study_key("italian", configuration), "status": "done"}}
    assert list(report._reusable_tables(tmp_path, studies, configuration)) == ["italian"]
    monkeypatch.setattr(evaluation, "SCORER_VERSION", evaluation.SCORER_VERSION + 1)
    assert report._reusable_tables(tmp_path, studies, configuration) == {}
    assert studies["italian"]["stale"] is True
