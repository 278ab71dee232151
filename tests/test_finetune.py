"""The LoRA baseline on the tiny model: distillation, training, the adapter file, applying it, evaluation."""

from __future__ import annotations

import time

import pytest
import torch

from workbench.datasets import load
from workbench.errors import ArtifactError, InvalidArgumentError, ShapeMismatchError
from workbench.evaluation import check_all, is_degenerate
from workbench.evaluation.perplexity import perplexity
from workbench.evaluation.reference import Judge, calibrate
from workbench.evaluation.scoring import score_answers
from workbench.fastpath import bridge_only, direct_forward
from workbench.finetune import (
    LoraAdapter,
    NoPairsError,
    answer_loss,
    choose_lora,
    distill,
    evaluate_lora,
    lora,
    lora_applied,
)
from workbench.finetune.training import answer_sequences
from workbench.generation import generate

TOKENS = 12
#: CPU seconds the slow judge burns before its verdict (distilling the tiny model's 8 answers takes ~0.1).
BURN = 1.0


class SlowJudge(Judge):
    """A judge that burns :data:`BURN` CPU seconds before its verdict."""

    def __call__(self, prompts, responses):
        start = time.process_time()
        while time.process_time() - start < BURN:
            pass
        return super().__call__(prompts, responses)


@pytest.fixture(scope="module")
def fluent(tiny):
    """The tiny model, kept from whitespace-only tokens and from repeating a token, so that its answers are
    not degenerate and the distillation keeps some (restored for the other test modules)."""
    config = tiny.hf_model.generation_config
    saved = config.suppress_tokens, config.no_repeat_ngram_size
    vocab = tiny.tokenizer.get_vocab().values()
    config.suppress_tokens = [i for i in vocab if not tiny.tokenizer.decode([i]).strip()]
    config.no_repeat_ngram_size = 1
    yield tiny
    config.suppress_tokens, config.no_repeat_ngram_size = saved


@pytest.fixture(scope="module")
def train():
    return load("no_comma", "train").head(8)


@pytest.fixture(scope="module")
def pairs(fluent, train):
    return distill(fluent, train, max_new_tokens=TOKENS)


@pytest.fixture(scope="module")
def base_loss(fluent, pairs):
    return answer_loss(fluent, pairs)


@pytest.fixture(scope="module")
def adapter(fluent, train, pairs, base_loss):
    return lora(fluent, train, pairs=pairs, rank=4, alpha=8, steps=10, lr=1e-2)


@pytest.fixture(scope="module")
def judge(writer, train, pairs):
    """A reference judge calibrated on the kept answers at their median, so that it rejects some of them."""
    positive = dict(zip([item.id for item in train.items], train.positive, strict=True))
    rule = calibrate(writer, {"kept": ([positive[i] for i in pairs.ids], list(pairs.answers))}, quantile=0.5)
    return Judge(writer, rule, batch_size=3)


def _logits(model, prompts):
    with torch.no_grad():
        return model.hf_model(**model.encode(prompts, formatted=False)).logits


def test_distill_keeps_the_on_target_fluent_answers_to_the_positive_prompts(fluent, train, pairs):
    items = {item.query: item for item in train.items}
    assert 0 < len(pairs) <= len(train) and pairs.n_generated == len(train)
    for prompt, answer in zip(pairs.prompts, pairs.answers, strict=True):
        item = items[prompt]  # the input is the negative prompt
        assert all(check_all(list(item.instruction_id_list), list(item.kwargs), answer))
        assert not is_degenerate(answer)
    assert pairs.dataset_hash == train.hash and pairs.target == "ifeval"
    with pytest.raises(NoPairsError):  # the tiny model writes no JSON
        distill(fluent, load("json_format", "train").head(4), max_new_tokens=TOKENS)


def test_end_of_turn_follows_only_the_answers_generation_stopped_on_their_own(fluent, train, monkeypatch):
    """Generation's flag decides, not the answer's re-tokenised length: an answer cut at the budget learns
    no end-of-turn though it re-tokenises shorter than the budget."""
    answers = ["Paris is the capital of France.", "Put the egg in boiling water."] * 4
    stopped = [True, False] * 4  # every other one cut at the budget

    def generated(model, prompts, *, ended, **kwargs):
        ended.extend(stopped)
        return answers

    monkeypatch.setattr("workbench.finetune.training.generate", generated)
    pairs = distill(fluent, train, max_new_tokens=TOKENS)
    assert pairs.answers == tuple(answers) and pairs.ended == tuple(stopped)
    eos = fluent.hf_model.generation_config.eos_token_id
    sequences = answer_sequences(fluent, pairs.prompts, pairs.answers, pairs.ended)
    for (ids, n_prompt), ended in zip(sequences, stopped, strict=True):
        answer = ids[n_prompt : len(ids) - ended]
        assert eos not in answer and len(answer) < TOKENS  # the old rule gave every one an end-of-turn
        assert (ids[-1] == eos) == ended


def test_training_lowers_the_answer_loss_and_leaves_the_model_as_it_was(
    fluent, train, pairs, base_loss, adapter
):
    assert answer_loss(fluent, pairs) == base_loss
    assert all(p.requires_grad for p in fluent.hf_model.parameters())
    with lora_applied(fluent, adapter):
        trained = answer_loss(fluent, pairs)
    assert trained < base_loss - 0.3  # nats per answer token (5.85 -> 5.20 measured)
    prov = adapter.provenance
    assert prov["kept_pairs"] == len(pairs) and prov["dataset_hash"] == train.hash
    assert prov["trainable_parameters"] == adapter.n_parameters > 0
    assert len(adapter.targets) == 7 * fluent.n_layers  # q, k, v, o, gate, up, down; not the output head
    assert not any("lm_head" in name for name in adapter.targets)
    assert len(prov["losses"]) == 10 and prov["losses"][-1] < prov["losses"][0]
    assert prov["train_cpu_seconds"] > 0 and prov["base_weights_hash"] == fluent.weights_hash
    with pytest.raises(InvalidArgumentError):
        lora(fluent, train, pairs=pairs, steps=0)


def test_the_workbench_runs_the_adapter_on_both_paths_and_leaving_restores(fluent, train, adapter):
    prompts = train.negative[:4]
    base_logits, plain = _logits(fluent, prompts[:1]), generate(fluent, prompts, max_new_tokens=TOKENS)
    base_ppl, fingerprint = perplexity(fluent, prompts, plain), fluent.fingerprint
    with lora_applied(fluent, adapter) as model:
        assert model.fingerprint != fingerprint  # output caches key on it
        adapted = generate(model, prompts, max_new_tokens=TOKENS)
        assert perplexity(model, prompts, plain) != base_ppl
        with direct_forward(model) as fast:
            fast_logits = _logits(model, prompts[:1])  # one prompt: no padding, which the paths treat apart
        with bridge_only(model):
            bridge_logits = _logits(model, prompts[:1])
        with pytest.raises(InvalidArgumentError), lora_applied(model, adapter):
            pass  # one adapter at a time
    assert fast and adapted != plain
    torch.testing.assert_close(fast_logits, bridge_logits, atol=1e-4, rtol=0)
    assert (fast_logits - base_logits).abs().max() > 1e-2
    assert fluent.fingerprint == fingerprint and torch.equal(_logits(fluent, prompts[:1]), base_logits)
    assert generate(fluent, prompts, max_new_tokens=TOKENS) == plain
    with pytest.raises(RuntimeError), lora_applied(fluent, adapter):
        raise RuntimeError("boom")
    assert torch.equal(_logits(fluent, prompts[:1]), base_logits)


def test_the_adapter_round_trips_through_its_file(fluent, train, adapter, tmp_path):
    path = adapter.save(tmp_path / "adapter.safetensors")
    loaded = LoraAdapter.load(path)
    assert loaded.hash == adapter.hash and loaded.provenance == adapter.provenance
    prompts = train.negative[:3]
    with lora_applied(fluent, adapter):
        first = generate(fluent, prompts, max_new_tokens=TOKENS)
    with lora_applied(fluent, loaded):
        assert generate(fluent, prompts, max_new_tokens=TOKENS) == first


def test_a_damaged_or_half_written_adapter_is_refused(adapter, tmp_path, monkeypatch):
    data = adapter.save(tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "half.safetensors").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF  # a byte of the last tensor
    (tmp_path / "edited.safetensors").write_bytes(bytes(flipped))
    for name in ("half", "edited", "missing"):
        with pytest.raises(ArtifactError):
            LoraAdapter.load(tmp_path / f"{name}.safetensors")

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\x00" * 64)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(OSError):
        adapter.save(tmp_path / "crashed.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "edited.safetensors",
        "good.safetensors",
        "half.safetensors",
    ]


def test_an_adapter_is_refused_by_a_model_it_does_not_fit(fluent, adapter):
    alien = LoraAdapter(adapter.rank, adapter.alpha, adapter.A, adapter.B, {"base_weights_hash": "0" * 64})
    with pytest.raises(InvalidArgumentError), lora_applied(fluent, alien):
        pass
    name = adapter.targets[-1]
    deeper = {n.replace(".layers.0.", ".layers.9."): a for n, a in adapter.A.items()}
    missing = LoraAdapter(
        adapter.rank, adapter.alpha, deeper, dict(zip(deeper, adapter.B.values(), strict=True))
    )
    wider = LoraAdapter(
        adapter.rank, adapter.alpha, {**adapter.A, name: torch.zeros(adapter.rank, 65)}, adapter.B
    )
    before = _logits(fluent, ["Name a fruit."])
    for wrong in (missing, wider):
        with pytest.raises(ShapeMismatchError), lora_applied(fluent, wrong):
            pass
    assert torch.equal(_logits(fluent, ["Name a fruit."]), before)


def test_evaluate_lora_scores_like_steering_and_counts_questions_gained_and_lost(fluent, adapter):
    test = load("no_comma", "test").head(4)
    result = evaluate_lora(fluent, test, adapter, max_new_tokens=TOKENS, mc_languages=("en",), n_mc=6)
    assert list(result.summary["config"]) == ["unmodified", "lora"] and set(result.summary["n"]) == {4}
    rows = result.answers
    assert (rows["clean"] == (rows["on_target"] & ~rows["degenerate"])).all()
    assert rows["perplexity"].gt(0).all()
    assert len(result.mc_rows) == 12 and set(result.mc_rows["config"]) == {"unmodified", "lora"}
    base, adapted = result.mc.iloc[0], result.mc.iloc[1]
    assert adapted["accuracy"] - base["accuracy"] == pytest.approx((adapted["gained"] - adapted["lost"]) / 6)


def test_choose_lora_picks_the_best_validation_clean_rate_from_one_run_per_rank_and_rate(
    fluent, train, pairs
):
    validation = load("no_comma", "validation").head(4)
    chosen, grid = choose_lora(
        fluent, train, validation, ranks=(2,), steps=(2, 4), lrs=(1e-2,), max_new_tokens=TOKENS, pairs=pairs
    )
    assert list(grid["steps"]) == [2, 4] and grid["clean_rate"].between(0, 1).all()
    best = grid.sort_values(["clean_rate", "target_rate"], ascending=False, kind="stable").iloc[0]
    assert chosen.provenance["recipe"]["steps"] == best["steps"] and chosen.rank == 2
    assert len(chosen.provenance["selection"]["grid"]) == 2
    assert grid["train_cpu_seconds"].iloc[1] > grid["train_cpu_seconds"].iloc[0]  # one run, two snapshots
    with pytest.raises(InvalidArgumentError):
        choose_lora(fluent, train, train, pairs=pairs)


def test_clean_needs_the_judges_verdict_where_one_is_given(writer):
    """Token salad without a comma passes the text rule for "no comma"; the reference judge rejects it."""
    data = load("no_comma", "validation").head(12)
    natural = generate(writer, data.negative, max_new_tokens=10)
    judge = Judge(writer, calibrate(writer, {"unsteered": (data.negative[:8], natural[:8])}), batch_size=3)
    generator = torch.Generator().manual_seed(0)
    salad = [writer.tokenizer.decode(torch.randint(5, 400, (10,), generator=generator)) for _ in range(4)]
    salad = [text.replace(",", "") for text in salad]
    items = data.items[8:]
    text_rule = score_answers("ifeval", items, salad)
    verdict = judge(data.negative[8:], salad)["fluent_reference"]
    judged = score_answers("ifeval", items, salad, fluent=verdict)
    assert text_rule["clean"].all() and not verdict.any() and not judged["clean"].any()
    held_out = judge(data.negative[8:], natural[8:])["fluent_reference"]
    scored = score_answers("ifeval", items, natural[8:], fluent=held_out)
    assert (scored["clean"] == (scored["on_target"] & ~scored["degenerate"] & held_out)).all()
    assert list(scored["fluent"]) == list(held_out)
    with pytest.raises(ShapeMismatchError):
        score_answers("ifeval", items, salad, fluent=[True])


def test_distill_drops_the_answers_the_judge_rejects_and_says_so(fluent, train, pairs, judge):
    """The judge's pass is timed apart from distilling: a slow judge adds nothing to distilling's CPU seconds."""
    positive = dict(zip([item.id for item in train.items], train.positive, strict=True))
    verdict = judge([positive[i] for i in pairs.ids], list(pairs.answers))["fluent_reference"]
    rejected = [i for i, ok in zip(pairs.ids, verdict, strict=True) if not ok]
    slow = SlowJudge(judge.model, judge.rule, judge.batch_size)
    judged = distill(fluent, train, max_new_tokens=TOKENS, judge=slow)
    assert rejected and len(judged) == len(pairs) - len(rejected)
    assert judged.ids == tuple(i for i in pairs.ids if i not in rejected)
    assert judged.fluency["rejected_ids"] == rejected and judged.fluency["threshold"] == judge.rule.threshold
    assert pairs.fluency is None and pairs.judge_cpu_seconds == 0.0
    assert judged.cpu_seconds < BURN <= judged.judge_cpu_seconds
    adapter = lora(fluent, train, pairs=judged, rank=2, steps=1)
    prov = adapter.provenance
    assert prov["fluency_judge"]["reference"] == judge.rule.reference
    assert prov["fluency_judge"]["rejected_ids"] == rejected
    assert prov["distill_cpu_seconds"] == judged.cpu_seconds
    assert prov["judge_cpu_seconds"] == judged.judge_cpu_seconds
