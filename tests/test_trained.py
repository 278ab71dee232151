"""Trained steering vectors on the tiny random model: the objectives train, batches are exact, the result is an
ordinary vector, the pairs are the LoRA baseline's, and bad input is refused in one line."""

from __future__ import annotations

import pytest
import torch

from workbench.datasets import load
from workbench.errors import InvalidArgumentError
from workbench.evaluation.perplexity import continuation_logprobs
from workbench.finetune import NoPairsError, distill
from workbench.interventions import Intervention
from workbench.training import PreferencePairs, choose_strength, preference_pairs, train_vector
from workbench.training.vector import answer_logps, pad
from workbench.vectors import SteeringVector

LAYER = 1
TRIPLES = [
    ("What is the capital of France?", "Paris is the capital of France.", "Light scatters in the air."),
    ("How do I boil an egg?", "Put the egg in boiling water for eight minutes.", "Cats are independent."),
    ("Tell me about cats.", "Cats are independent; dogs are loyal companions.", "The sky is blue."),
    ("Explain why the sky is blue.", "Light scatters in the air, and blue light scatters most.", "Boil it."),
]
#: Full batches, so that every step's loss is over the same pairs and the epochs' losses compare.
SETTINGS = {"layers": [LAYER], "epochs": 16, "batch_size": len(TRIPLES), "factors": (1.0, 2.0)}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def fluent(tiny):
    """The tiny model, kept from whitespace-only tokens and from repeating a token, so that distillation keeps
    some of its answers (restored for the other test modules), as in test_finetune."""
    config = tiny.hf_model.generation_config
    saved = config.suppress_tokens, config.no_repeat_ngram_size
    vocab = tiny.tokenizer.get_vocab().values()
    config.suppress_tokens = [i for i in vocab if not tiny.tokenizer.decode([i]).strip()]
    config.no_repeat_ngram_size = 1
    yield tiny
    config.suppress_tokens, config.no_repeat_ngram_size = saved


@pytest.fixture(scope="module")
def trained(tiny):
    return {
        method: train_vector(tiny, TRIPLES, method=method, **SETTINGS) for method in ("likelihood", "reps")
    }


def _logp(model, column: int, interventions: list[Intervention]) -> float:
    """Mean summed log-probability of one answer column given its chat-formatted prompt."""
    contexts = [model.format_chat(t[0]) for t in TRIPLES]
    answers = [t[column] for t in TRIPLES]
    scores = continuation_logprobs(model, contexts, answers, formatted=True, interventions=interventions)
    return sum(float(s.sum()) for s in scores) / len(scores)


def _controls(vector: SteeringVector) -> dict[str, list[Intervention]]:
    """No steering, the trained vector, and a random vector of the same norm, at the largest factor."""
    g = torch.Generator().manual_seed(1)
    r = torch.randn(vector.d_model, generator=g)
    random = SteeringVector.from_directions((r / r.norm() * vector.stats[LAYER].diff_norm)[None], [LAYER])
    return {
        "zero": [],
        "trained": [Intervention(vector, LAYER, "add", 2.0)],
        "random": [Intervention(random, LAYER, "add", 2.0)],
    }


def _epoch_means(vector: SteeringVector) -> list[float]:
    losses = vector.provenance["losses"]
    assert len(losses) == SETTINGS["epochs"]  # one full batch per epoch
    return losses


def test_likelihood_raises_the_on_target_answers(tiny, trained):
    vector = trained["likelihood"]
    losses = _epoch_means(vector)
    assert losses[-1] < losses[0]
    scores = {name: _logp(tiny, 1, ivs) for name, ivs in _controls(vector).items()}
    assert scores["trained"] > scores["zero"] + 1.0
    assert scores["trained"] > scores["random"] + 1.0


def test_reps_raises_the_preference_margin(tiny, trained):
    vector = trained["reps"]
    losses = _epoch_means(vector)
    assert losses[-1] < losses[0]
    margins = {name: _logp(tiny, 1, ivs) - _logp(tiny, 2, ivs) for name, ivs in _controls(vector).items()}
    assert margins["trained"] > margins["zero"] + 0.5
    assert margins["trained"] > margins["random"] + 0.5


def test_training_is_deterministic_for_a_seed(tiny, trained):
    again = train_vector(tiny, TRIPLES, method="reps", **SETTINGS)
    assert torch.equal(again.directions, trained["reps"].directions)
    assert again.stats == trained["reps"].stats
    assert again.provenance["losses"] == trained["reps"].provenance["losses"]
    other = train_vector(tiny, TRIPLES, method="reps", seed=1, **SETTINGS)
    assert not torch.equal(other.directions, trained["reps"].directions)


def test_a_batch_is_the_sum_of_its_examples(tiny):
    """Left padding is masked: one padded batch gives each row's log-probability and gradient alone."""
    targets, plains = PreferencePairs.from_triples(TRIPLES).sequences(tiny)
    rows = [targets[0], plains[1], targets[3]]  # three lengths
    assert len({len(ids) for ids, _ in rows}) == 3
    factor, null = torch.tensor([2.0, 5.0, 0.0]), torch.tensor([False, False, True])
    v = torch.nn.Parameter(torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(0)))
    batch = pad(rows, tiny.tokenizer.pad_token_id, tiny.device)
    together = answer_logps(tiny, batch, {LAYER: v}, factor, null)
    (grad,) = torch.autograd.grad(together.sum(), v)
    alone, grads = [], []
    for i, row in enumerate(rows):
        one = answer_logps(
            tiny,
            pad([row], tiny.tokenizer.pad_token_id, tiny.device),
            {LAYER: v},
            factor[i : i + 1],
            null[i : i + 1],
        )
        alone.append(one)
        grads.append(torch.autograd.grad(one.sum(), v)[0])
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad, torch.stack(grads).sum(0), rtol=1e-4, atol=1e-4)


def test_the_result_is_an_ordinary_vector(tiny, trained, tmp_path):
    vector = trained["reps"]
    assert vector.layers == (LAYER,)
    raw = vector.raw(LAYER)
    assert vector.stats[LAYER].diff_norm == pytest.approx(float(raw.norm()), rel=1e-6)
    assert Intervention(vector, LAYER, "add", 3.0).amount() == pytest.approx(3.0 * float(raw.norm()))
    assert vector.stats[LAYER].resid_norm > 0  # unit="residual_norm" works too
    prov = vector.provenance
    assert prov["method"] == "reps" and prov["layers"] == [LAYER] and prov["seed"] == 0
    assert prov["lr"] == 0.04 and prov["epochs"] == SETTINGS["epochs"]
    assert prov["pairs_hash"] == PreferencePairs.from_triples(TRIPLES).hash
    assert prov["fingerprint"] == tiny.fingerprint and prov["weights_hash"] == tiny.weights_hash
    assert prov["train_cpu_seconds"] > 0
    assert SteeringVector.load(vector.save(tmp_path / "v.safetensors")) == vector
    back = SteeringVector.from_gguf(vector.to_gguf(tmp_path / "v.gguf", magnitude="raw"))
    torch.testing.assert_close(back.raw(LAYER), raw)
    assert back.provenance == vector.provenance


def test_preference_pairs_are_the_lora_baselines(fluent, monkeypatch):
    train = load("no_comma", "train").head(6)
    distilled = distill(fluent, train, max_new_tokens=8)

    def plain_answers(model, prompts, *, ended, **kwargs):  # every other plain answer already has no comma
        ended.extend(i % 4 == 0 for i in range(len(prompts)))  # and every fourth stopped on its own
        return ["one, two" if i % 2 == 0 else "one two" for i in range(len(prompts))]

    monkeypatch.setattr("workbench.training.pairs.generate", plain_answers)
    pairs = preference_pairs(fluent, train, max_new_tokens=8)
    kept = list(range(0, len(distilled), 2))
    assert pairs.prompts == tuple(distilled.prompts[i] for i in kept)
    assert pairs.targets == tuple(distilled.answers[i] for i in kept)
    assert set(pairs.plains) == {"one, two"}
    assert pairs.source["plain_on_target_ids"] == [distilled.ids[i] for i in range(1, len(distilled), 2)]
    assert pairs.max_new_tokens == 8 and pairs.source["dataset"] == "no_comma"
    assert pairs.targets_ended == tuple(distilled.ended[i] for i in kept)
    assert pairs.plains_ended == tuple(i % 4 == 0 for i in kept) and any(pairs.plains_ended)
    eos = fluent.tokenizer.eos_token_id
    for rows, flags in zip(pairs.sequences(fluent), (pairs.targets_ended, pairs.plains_ended), strict=True):
        assert [ids[-1] == eos for ids, _ in rows] == list(flags)  # end-of-turn where generation stopped
    targets, plains = PreferencePairs.from_triples(TRIPLES).sequences(fluent)
    assert all(ids[-1] == eos for ids, _ in targets + plains)  # complete answers all end
    with pytest.raises(InvalidArgumentError, match="one flag per pair"):
        PreferencePairs(pairs.prompts, pairs.targets, pairs.plains, pairs.ids, 8)


def test_pairs_whose_plain_answer_is_on_target_are_refused(fluent):
    with pytest.raises(NoPairsError, match="already on target"):
        preference_pairs(fluent, load("no_comma", "train").head(4), max_new_tokens=6)


def test_choose_strength_scores_each_coef(tiny, trained):
    validation = load("no_comma", "validation").head(3)
    coef, table = choose_strength(tiny, trained["likelihood"], validation, [1.0, 2.0], max_new_tokens=6)
    assert coef in (1.0, 2.0)
    assert list(table["coef"]) == [1.0, 2.0]
    assert set(table.columns) >= {"target_rate", "degeneration", "clean_rate"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pairs": []}, "no training pairs"),
        ({"pairs": [("a", "b")]}, "triples"),
        ({"pairs": [("a", "", "c")]}, "non-empty"),
        ({"layers": [99]}, "out of range"),
        ({"layers": []}, "distinct block"),
        ({"method": "bipo"}, "unknown method"),
        ({"epochs": 0}, "epochs"),
        ({"factors": ()}, "factors"),
        ({"lr": float("nan")}, "lr"),
    ],
)
def test_bad_input_is_one_line(tiny, kwargs, match):
    call = {"pairs": TRIPLES, "layers": [LAYER], **kwargs}
    with pytest.raises(InvalidArgumentError, match=match) as info:
        train_vector(tiny, call.pop("pairs"), **call)
    assert "\n" not in str(info.value)


def test_from_dataset_trains_a_vector_for_a_trained_method(tiny):
    data = load("one_sentence", "train").head(4)
    with pytest.raises(InvalidArgumentError, match="needs layers"):
        SteeringVector.from_dataset(tiny, data, method="reps")
    try:
        vector = SteeringVector.from_dataset(tiny, data, method="likelihood", layers=[1])
    except InvalidArgumentError as e:  # a random tiny model may answer nothing on target: nothing to train on
        assert "on target" in str(e) or "pairs" in str(e)
    else:
        assert vector.layers == (1,) and vector.provenance["method"] == "likelihood"
