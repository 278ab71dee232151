"""Head-level, step-specific steering (the gentle push's edit): where and how much it adds, KV cache against
recomputation, batches against rows alone, fast path against the bridge, artifacts, grids, multiple choice."""

from __future__ import annotations

import pickle
from contextlib import ExitStack

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import PROMPTS, build_tiny_model, build_tiny_tokenizer, tiny_config
from workbench.datasets import MCItem
from workbench.errors import ArtifactError, InvalidArgumentError, ShapeMismatchError
from workbench.evaluation.mc import multiple_choice
from workbench.fastpath import STRICT_ENV, bridge_only, direct_forward
from workbench.generation import generate
from workbench.head_steering import HeadIntervention
from workbench.interventions import Intervention
from workbench.models import from_hf
from workbench.runner import Job, LocalExecutor, run_grid
from workbench.schedules import DynamicStrength
from workbench.steering import steer, steer_rows, tracking
from workbench.vectors import SteeringVector


def _push(model, layers=None, steps=3, alpha=3.0, fade=0, seed=0, heads=None) -> HeadIntervention:
    layers = tuple(range(model.n_layers)) if layers is None else tuple(layers)
    cfg = model.bridge.cfg
    shape = (len(layers), steps, int(cfg.n_heads), int(cfg.d_head))
    deltas = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return HeadIntervention(deltas, layers, alpha, fade, heads, {"method": "test"})


def _logits(model, rows, prompts, *, cached: bool, tail: str = " Paris is the capital city") -> torch.Tensor:
    """Logits of each prompt plus a fixed continuation (zero at padding), row ``i`` steered by ``rows[i]``."""
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
            logits = model.hf_model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
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
            logits = torch.cat([first.logits, rest.logits], dim=1)
    return logits.float() * mask[..., None]


def test_the_edit_is_alpha_i_times_delta_i_from_the_last_prompt_token(tiny):
    """At layer 0 (whose hook_z no earlier edit reaches): nothing before P-1, then α_i·Δ_min(i, n-1) with
    α_i fading linearly to 0 over ``fade`` steps; the last recorded vector serves every later step."""
    ids = tiny.encode([tiny.format_chat(PROMPTS[0])], formatted=True)["input_ids"]
    width = ids.shape[1]
    ids = torch.cat([ids, ids[:, 1:9]], dim=1)  # eight "generated" tokens: push steps 1..8
    seen = {}

    def record(z, hook):
        seen[len(seen)] = z.clone()

    for push in (None, _push(tiny, [0], steps=3, alpha=2.0, fade=5), _push(tiny, [0], steps=3, alpha=2.0)):
        with torch.inference_mode(), ExitStack() as stack:
            tracker = stack.enter_context(tracking(tiny))
            stack.enter_context(tracker.declared(torch.tensor([width])))
            if push is not None:
                stack.enter_context(steer(tiny, push))
            stack.enter_context(tiny.bridge.hooks(fwd_hooks=[("blocks.0.attn.hook_z", record)]))
            tiny.hf_model(input_ids=ids)
    plain, faded, constant = (seen[i][0] for i in range(3))
    deltas = _push(tiny, [0], steps=3).deltas[0]
    for edited, alphas in ((faded, [2.0, 1.6, 1.2, 0.8, 0.4, 0, 0, 0, 0]), (constant, [2.0] * 9)):
        added = edited - plain
        assert added[: width - 1].abs().max() == 0
        for i, alpha in enumerate(alphas):
            expected = alpha * deltas[min(i, 2)]
            assert torch.allclose(added[width - 1 + i], expected, atol=1e-5), (i, alpha)


def test_a_prompt_forward_changes_only_the_last_prompt_position(tiny):
    ids = tiny.encode([tiny.format_chat(PROMPTS[2])], formatted=True)["input_ids"]
    with torch.inference_mode():
        plain = tiny.hf_model(input_ids=ids).logits
        with steer(tiny, _push(tiny)):
            pushed = tiny.hf_model(input_ids=ids).logits
    assert torch.equal(plain[:, :-1], pushed[:, :-1])
    assert not torch.allclose(plain[:, -1], pushed[:, -1], atol=1e-3)


def test_kv_cached_steering_equals_recomputation(tiny):
    rows = [[_push(tiny, fade=4)], [], [_push(tiny, seed=1), _push(tiny, [1], steps=5, seed=2)]]
    prompts = [PROMPTS[0], PROMPTS[4], PROMPTS[1]]
    cached, full = (_logits(tiny, rows, prompts, cached=c) for c in (True, False))
    assert (cached - full).abs().max() < 1e-4
    pushed = [[_push(tiny, alpha=6.0, fade=6)]]
    texts = [
        generate(tiny, prompts, max_new_tokens=8, interventions=pushed[0], use_cache=c) for c in (True, False)
    ]
    assert texts[0] == texts[1]


def test_a_batch_equals_each_row_alone(writer):
    pushes = [_push(writer, alpha=4.0, fade=6), _push(writer, [2, 3], steps=2, alpha=-3.0, seed=5)]
    rows = [[pushes[0]], [], [pushes[1]], [pushes[0], pushes[1]]]
    prompts = [PROMPTS[4], PROMPTS[1], PROMPTS[0], PROMPTS[3]]
    together = generate(writer, prompts, max_new_tokens=8, row_interventions=rows)
    alone = [
        generate(writer, [p], max_new_tokens=8, interventions=r)[0]
        for p, r in zip(prompts, rows, strict=True)
    ]
    assert together == alone
    assert together[0] != generate(writer, prompts[:1], max_new_tokens=8)[0]


def test_a_push_shares_a_batch_with_a_dynamic_strength(writer):
    vector = SteeringVector.from_directions(torch.randn(1, writer.d_model), layers=[1])
    dynamic = Intervention(vector, 1, coef=6.0, unit="absolute", schedule=DynamicStrength())
    push = _push(writer, alpha=4.0, fade=6)
    rows = [[push, dynamic], [dynamic], [push]]
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[3]]
    together = generate(writer, prompts, max_new_tokens=6, row_interventions=rows)
    alone = [
        generate(writer, [p], max_new_tokens=6, interventions=r)[0]
        for p, r in zip(prompts, rows, strict=True)
    ]
    assert together == alone


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_the_fast_path_equals_the_bridge(kind, monkeypatch):
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = from_hf(AutoModelForCausalLM.from_config(tiny_config(kind, tokenizer)), tokenizer, f"tiny-{kind}")
    rows = [[_push(model, fade=3)], [], [_push(model, [1], steps=4, seed=3, heads=[0, 2])]]
    prompts = [PROMPTS[4], PROMPTS[1], PROMPTS[2]]
    monkeypatch.setenv(STRICT_ENV, "1")  # a silent fallback to the bridge would fail
    for cached in (True, False):
        fast = _logits(model, rows, prompts, cached=cached)
        with bridge_only(model):
            bridge = _logits(model, rows, prompts, cached=cached)
        assert (fast - bridge).abs().max() < 1e-4 * max(1.0, bridge.abs().max().item())
    plain = _logits(model, [[] for _ in rows], prompts, cached=False)
    assert (fast - plain)[0].abs().max() > 1e-2 and (fast - plain)[1].abs().max() == 0


def test_bad_vectors_are_refused_in_one_line(tiny):
    cfg = tiny.bridge.cfg
    wrong = HeadIntervention(torch.ones(1, 2, int(cfg.n_heads), 8), (0,))
    lacking = _push(tiny, [7])
    for iv, error, text in (
        (wrong, ShapeMismatchError, "heads of 8"),
        (lacking, InvalidArgumentError, "layer 7 is out of range"),
    ):
        with pytest.raises(error, match=text) as caught, steer(tiny, iv):
            pass
        assert "\n" not in str(caught.value)
    bad = [
        lambda: HeadIntervention(torch.ones(2, 3), (0,)),
        lambda: HeadIntervention(torch.ones(1, 2, 4, 16), (0, 1)),
        lambda: HeadIntervention(torch.ones(1, 2, 4, 16), (0,), fade=-1),
        lambda: HeadIntervention(torch.ones(1, 2, 4, 16), (0,), alpha=float("nan")),
        lambda: HeadIntervention(torch.ones(1, 2, 4, 16), (0,), heads=(4,)),
        lambda: HeadIntervention(torch.full((1, 2, 4, 16), float("inf")), (0,)),
    ]
    for make in bad:
        with pytest.raises((InvalidArgumentError, ShapeMismatchError)):
            make()
    with pytest.raises(InvalidArgumentError, match="Intervention or HeadIntervention"):
        generate(tiny, PROMPTS[:1], max_new_tokens=2, row_interventions=[["not one"]])


def test_save_and_load_round_trip_with_provenance(tiny, tmp_path):
    push = _push(tiny, [1, 3], steps=4, alpha=1.5, fade=30, heads=[1, 3])
    path = push.save(tmp_path / "push.safetensors")
    back = HeadIntervention.load(path)
    assert torch.equal(back.deltas, push.deltas)
    assert (back.layers, back.alpha, back.fade, back.heads) == (
        push.layers,
        push.alpha,
        push.fade,
        push.heads,
    )
    assert back.provenance == push.provenance and back.digest == push.digest and back.label == push.label
    shipped = pickle.loads(pickle.dumps(push))  # as a Ray chunk carries it to a worker
    assert torch.equal(shipped.deltas, push.deltas) and shipped.digest == push.digest
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # a flipped bit in the tensor data
    (tmp_path / "bad.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="checksum"):
        HeadIntervention.load(tmp_path / "bad.safetensors")


def test_run_grid_keys_caches_and_resumes_rows_with_a_push(tmp_path):
    model = build_tiny_model(n_layers=2)
    push = _push(model, fade=4)
    jobs = [
        Job(s, f"p{i}", p, ivs)
        for s, ivs in (("none", ()), ("push", (push,)))
        for i, p in enumerate(PROMPTS[:3])
    ]
    first = run_grid(model, jobs, max_new_tokens=4, out_dir=tmp_path)
    assert set(first["interventions"]) == {"", push.label}

    class Refusing(LocalExecutor):
        def map(self, chunks):
            assert not chunks, "a cached row was generated again"
            return iter(())

    again = run_grid(model, jobs, max_new_tokens=4, out_dir=tmp_path, executor=Refusing(model))
    assert again["response"].tolist() == first["response"].tolist()
    keys = runner_keys([push, _push(model, fade=5), _push(model, fade=4, seed=1), _push(model, fade=4)])
    assert keys[0] != keys[1] and keys[0] != keys[2] and keys[0] == keys[3]


def runner_keys(pushes) -> list[str]:
    from workbench.runner import _Keys

    keys = _Keys()
    return [keys.row(Job("s", "p", PROMPTS[0], (push,))) for push in pushes]


def test_multiple_choice_takes_a_push(tiny):
    items = [MCItem("q1", "What colour is the sky?", ("Blue", "Green", "Red"), 0, "en", "test")]
    push = _push(tiny, alpha=5.0)
    plain = multiple_choice(tiny, items)
    pushed = multiple_choice(tiny, items, interventions=[push])
    assert plain["ll"][0] != pushed["ll"][0]
    generated = multiple_choice(tiny, items, by="generation", interventions=[push], max_new_tokens=4)
    assert generated["by"].tolist() == ["generation"]
