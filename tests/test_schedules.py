"""Dynamic strength (Dynamic Activation Composition): the formula, KV cache vs recomputation, per-row
batches, composition, bounds, and the cost of one extra forward per token."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import PROMPTS, build_tiny_model
from tests.test_steering import random_vector
from workbench.errors import InvalidArgumentError, ShapeMismatchError
from workbench.generation import generate
from workbench.interventions import Intervention
from workbench.schedules import DynamicStrength, StrengthTrace, dynamic_strengths, nucleus
from workbench.steering import steer, steer_rows


@pytest.fixture(scope="module")
def sharp():
    """The tiny model with logits 3x larger: next-token distributions neither flat nor one-hot, so KL
    divergences land inside [0, max_strength] and strengths vary from step to step."""
    model = build_tiny_model()
    with torch.no_grad():
        model.hf_model.lm_head.weight.mul_(3.0)
    return model


def dyn(vec, layer, coef, max_strength=0.5, positions="response", top_p=0.9):
    return Intervention(
        vec, layer, "add", coef, positions, schedule=DynamicStrength(max_strength, top_p), unit="absolute"
    )


def traced(model, prompts, **kwargs):
    trace = StrengthTrace()
    texts = generate(model, prompts, max_new_tokens=10, trace=trace, **kwargs)
    return texts, trace


def authors_alpha(reference, probe, top_p, max_strength):
    """The authors' step (src/delta.py, generate_dynamic_edited_model) on one row, written out as they do."""

    def top_p_keep(logits):
        ordered, order = torch.sort(logits, descending=True)
        remove = torch.cumsum(F.softmax(ordered, dim=-1), dim=-1) > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = 0
        return ~remove.scatter(0, order, remove)

    keep = top_p_keep(reference) | top_p_keep(probe)
    log_p = F.log_softmax(reference.masked_select(keep), dim=-1)
    log_q = F.log_softmax(probe.masked_select(keep), dim=-1)
    kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True).item()
    return max(min(kl, max_strength), 0), kl


def test_formula_matches_the_authors_code():
    g = torch.Generator().manual_seed(0)
    reference, probe = torch.randn(6, 50, generator=g) * 3, torch.randn(6, 50, generator=g) * 3
    for top_p, top in [(0.95, 2.0), (0.5, 0.2), (1.0, 10.0)]:
        mean = DynamicStrength(top, top_p, mean_over_tokens=True)
        alpha, kl = dynamic_strengths(reference, probe, [mean] * 6)
        expected = [authors_alpha(r, p, top_p, top) for r, p in zip(reference, probe, strict=True)]
        assert torch.allclose(alpha, torch.tensor([a for a, _ in expected]), atol=1e-6)
        assert torch.allclose(kl, torch.tensor([k for _, k in expected]), atol=1e-6)
        # The default is the KL divergence itself: the sum the authors' 'batchmean' divides by |S|.
        _, total = dynamic_strengths(reference, probe, [DynamicStrength(top, top_p)] * 6)
        size = (nucleus(reference, torch.tensor([[top_p]])) | nucleus(probe, torch.tensor([[top_p]]))).sum(-1)
        assert torch.allclose(total / size, kl, atol=1e-6)
    same, _ = dynamic_strengths(reference, reference.clone(), [DynamicStrength()] * 6)
    assert torch.equal(same, torch.zeros(6))


def test_cached_generation_equals_full_recomputation(sharp):
    vec = random_vector(sharp)
    ivs = [
        dyn(vec, 1, 8.0),
        dyn(vec, 2, -6.0, max_strength=0.3, positions="all"),
        Intervention(vec, 3, "add", 2.0, unit="absolute"),
    ]
    cached, fast = traced(sharp, PROMPTS, interventions=ivs)
    full, slow = traced(sharp, PROMPTS, interventions=ivs, use_cache=False)
    assert cached == full
    assert [len(s) for s in fast.strengths] == [2] * len(PROMPTS)
    for a, b, ka, kb in zip(fast.strengths, slow.strengths, fast.kl, slow.kl, strict=True):
        assert a.shape == b.shape and a.shape[1] >= 1
        assert torch.allclose(a, b, atol=1e-5) and torch.allclose(ka, kb, atol=1e-5)
    every = torch.cat([s.flatten() for s in fast.strengths])
    assert len(set(every.round(decimals=4).tolist())) > 10  # it adapts per token, vector and row
    assert fast.labels[0] == ["add@1x8+dyn0.5p0.9", "add@2x-6+dyn0.3p0.9"]


def test_strength_is_bounded_and_is_the_kl_below_the_bound(sharp):
    vec = random_vector(sharp, seed=3)
    for top in (0.05, 0.4, 5.0):
        _, trace = traced(sharp, PROMPTS, interventions=[dyn(vec, 1, 8.0, max_strength=top)])
        alpha, kl = torch.cat(trace.strengths, 1), torch.cat(trace.kl, 1)
        assert alpha.min() >= 0 and alpha.max() <= top
        assert torch.allclose(alpha, kl.clamp(0, top))
    assert (alpha < 5.0).all()  # an unreachable bound never binds: the strength is the KL itself


def test_first_strength_comes_from_reference_and_probe_runs(sharp):
    """α_0 = clip(KL(reference ‖ probe at α_max)) at the last prompt token; the fixed edit is in both."""
    vec = random_vector(sharp, seed=5)
    fixed, dynamic = Intervention(vec, 3, "add", 3.0, unit="absolute"), dyn(vec, 1, 8.0, positions="all")
    _, trace = traced(sharp, PROMPTS[:2], interventions=[fixed, dynamic], chat=False)
    encoded = sharp.encode(PROMPTS[:2], formatted=False)
    with torch.no_grad(), steer(sharp, fixed):
        reference = sharp.hf_model(**encoded).logits[:, -1]
    probe_iv = Intervention(vec, 1, "add", 8.0 * dynamic.schedule.max_strength, unit="absolute")
    with torch.no_grad(), steer(sharp, fixed, probe_iv):
        probe = sharp.hf_model(**encoded).logits[:, -1]
    expected, _ = dynamic_strengths(reference, probe, [dynamic.schedule] * 2)
    assert torch.allclose(torch.stack([s[0, 0] for s in trace.strengths]), expected, atol=1e-5)


def test_each_row_its_own_strength(sharp):
    vec = random_vector(sharp, seed=1)
    configs = [
        [dyn(vec, 1, 8.0)],
        [Intervention(vec, 2, "add", 3.0, unit="absolute"), dyn(vec, 1, -8.0, max_strength=0.2, top_p=0.8)],
        [],
        [dyn(vec, 0, 6.0, positions="generated"), dyn(vec, 2, 5.0)],
    ]
    prompts = [PROMPTS[1], PROMPTS[1], PROMPTS[3], PROMPTS[3]]
    batched, trace = traced(sharp, prompts, row_interventions=configs)
    for i, config in enumerate(configs):
        alone, mine = traced(sharp, [prompts[i]], interventions=config)
        assert batched[i] == alone[0]
        assert mine.labels[0] == trace.labels[i]
        assert torch.allclose(trace.strengths[i], mine.strengths[0], atol=1e-5)
    assert trace.strengths[2].shape[0] == 0 and trace.labels[2] == []
    assert not torch.allclose(trace.strengths[0][0, :3], trace.strengths[1][0, :3])


def test_one_extra_forward_per_token_for_all_vectors(sharp):
    vec = random_vector(sharp, seed=2)
    rows = [[dyn(vec, 1, 8.0), dyn(vec, 2, 4.0)], [dyn(vec, 3, 5.0)], []]
    batches: list[int] = []

    def count(_module, args, kwargs):
        batches.append(kwargs.get("input_ids", args[0] if args else None).shape[0])

    handle = sharp.hf_model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        trace = StrengthTrace()
        generate(
            sharp,
            PROMPTS[:3],
            max_new_tokens=4,
            min_new_tokens=4,
            row_interventions=rows,
            chat=False,
            trace=trace,
        )
    finally:
        handle.remove()
    assert [tuple(s.shape) for s in trace.strengths] == [(2, 4), (1, 4), (0, 0)]
    # per token: the main forward (3 rows) and, before it runs, one side forward (2 reference rows, 3 probes)
    assert batches == [3, 5] * 4


def test_refusals():
    vec = random_vector(build_tiny_model())
    assert Intervention(vec, 1, "add", 2.0, schedule="dynamic", unit="absolute").schedule == DynamicStrength()
    assert Intervention(vec, 1, "add", 2.0, schedule="dynamic", unit="absolute").label == "add@1x2+dyn2"
    assert DynamicStrength(1.5, 0.8, mean_over_tokens=True, group="it").label == "dyn1.5p0.8m[it]"
    with pytest.raises(InvalidArgumentError, match="'add'"):
        Intervention(vec, 1, "set_projection", 2.0, schedule="dynamic", unit="absolute")
    with pytest.raises(InvalidArgumentError, match="'add'"):
        Intervention(vec, 1, "add", 2.0, decay_tokens=3, schedule="dynamic", unit="absolute")
    with pytest.raises(InvalidArgumentError, match="schedule"):
        Intervention(vec, 1, "add", 2.0, schedule="fast", unit="absolute")
    for bad in (dict(max_strength=0), dict(max_strength=float("nan")), dict(top_p=0), dict(top_p=1.5)):
        with pytest.raises(InvalidArgumentError):
            DynamicStrength(**bad)


def test_a_dynamic_steer_needs_one_row_per_batch_row(sharp):
    vec = random_vector(sharp)
    encoded = sharp.encode(PROMPTS[:2], formatted=False)
    with (
        pytest.raises(ShapeMismatchError, match="one list of interventions per row"),
        steer_rows(sharp, [[dyn(vec, 1, 8.0)]]),
    ):
        sharp.hf_model(**encoded)
    assert not sharp.hf_model._forward_pre_hooks


def test_a_dynamic_strength_refuses_text_it_did_not_generate(sharp):
    """Scoring a given continuation in one forward would steer it all with α_0: refused."""
    from workbench.fastpath import direct_forward

    vec = random_vector(sharp)
    ids = sharp.encode(PROMPTS[:1], formatted=False)["input_ids"]
    with torch.no_grad(), steer_rows(sharp, [[dyn(vec, 1, 8.0)]]), direct_forward(sharp):
        first = sharp.hf_model(input_ids=ids, use_cache=True)
        assert first.past_key_values.get_seq_length() == ids.shape[1]
        with pytest.raises(InvalidArgumentError, match="one generated token at a time"):
            sharp.hf_model(
                input_ids=ids[:, :3], use_cache=True, **{sharp.cache_argument: first.past_key_values}
            )
    assert not sharp.hf_model._forward_pre_hooks


@pytest.mark.parametrize("kind", ["gemma3_text", "gpt2"])
def test_other_caches_and_positions(kind, tmp_path):
    """Gemma 3's sliding-window layers (window 6, shorter than the prompts) and GPT-2's absolute positions."""
    from transformers import AutoModelForCausalLM

    from tests.conftest import build_tiny_tokenizer, tiny_config
    from workbench.models import load_model

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(tiny_config(kind, tokenizer))
    with torch.no_grad():
        hf.lm_head.weight.mul_(3.0)
    hf.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = load_model(str(tmp_path), device="cpu")
    vec = random_vector(model)
    ivs = [dyn(vec, 0, 8.0), dyn(vec, 1, 4.0, positions="all")]
    cached, fast = traced(model, PROMPTS, interventions=ivs, chat=False)
    full, slow = traced(model, PROMPTS, interventions=ivs, chat=False, use_cache=False)
    assert cached == full
    for a, b in zip(fast.strengths, slow.strengths, strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    assert torch.cat(fast.strengths, 1).max() > 0


def test_a_group_shares_one_strength_probed_together(sharp):
    """One property at two layers, one α_t (the paper's setting): its probe steers both at α_max."""
    vec = random_vector(sharp, seed=7)
    spec = DynamicStrength(0.5, 0.9, group="style")
    ivs = [
        Intervention(vec, 1, "add", 5.0, schedule=spec, unit="absolute"),
        Intervention(vec, 2, "add", 4.0, schedule=spec, unit="absolute"),
    ]
    _, trace = traced(sharp, PROMPTS[:2], interventions=ivs, chat=False)
    assert [len(s) for s in trace.strengths] == [1, 1]
    assert trace.labels[0] == ["add@1x5+dyn0.5p0.9[style] & add@2x4+dyn0.5p0.9[style]"]
    encoded = sharp.encode(PROMPTS[:2], formatted=False)
    with torch.no_grad():
        reference = sharp.hf_model(**encoded).logits[:, -1]
        with steer(
            sharp,
            Intervention(vec, 1, "add", 2.5, unit="absolute"),
            Intervention(vec, 2, "add", 2.0, unit="absolute"),
        ):
            probe = sharp.hf_model(**encoded).logits[:, -1]
    expected, _ = dynamic_strengths(reference, probe, [spec] * 2)
    assert torch.allclose(torch.stack([s[0, 0] for s in trace.strengths]), expected, atol=1e-5)
    other = Intervention(vec, 3, "add", 1.0, schedule=DynamicStrength(0.9, group="style"), unit="absolute")
    with pytest.raises(InvalidArgumentError, match="mixes"):
        generate(sharp, PROMPTS[:1], max_new_tokens=2, interventions=[ivs[0], other])
