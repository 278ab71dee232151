"""The PSR gate (GatedIntervention, training.psr): the edit is ReLU(w·h + b)·u per token, the engine applies it
like every intervention (KV cache against recomputation, batches against rows alone, beside other kinds,
grids, multiple choice), the fit beats a constant strength on its tokens, artifacts round-trip, bad input is
one line."""

from __future__ import annotations

import pickle

import pytest
import torch

from tests.conftest import PROMPTS, build_tiny_model
from tests.test_prompt_tail import logits
from workbench.datasets import MCItem, load
from workbench.errors import ArtifactError, InvalidArgumentError, ShapeMismatchError
from workbench.evaluation.mc import multiple_choice
from workbench.gated_steering import GatedIntervention
from workbench.generation import generate
from workbench.head_steering import HeadIntervention
from workbench.interventions import Intervention
from workbench.runner import Job, LocalExecutor, _Keys, run_grid
from workbench.schedules import DynamicStrength
from workbench.steering import steer
from workbench.training import PreferencePairs, train_gate
from workbench.training.psr import fit_gate, instruction_shift
from workbench.vectors import SteeringVector

LAYER = 1


def _gate(model, layer=LAYER, scale=2.0, positions="all", seed=0, bias=0.3) -> GatedIntervention:
    g = torch.Generator().manual_seed(seed)
    u, w = torch.randn(model.d_model, generator=g), torch.randn(model.d_model, generator=g) * 0.5
    return GatedIntervention(u, w, bias, layer, scale, positions, {"method": "test"})


def test_the_edit_is_relu_of_w_h_plus_b_times_u_per_token(tiny):
    """By hand: the residual after the hook minus before it is scale·ReLU(w·h + b)·u at every token, zero
    where the gate is shut, and ``alphas`` is the same ReLU."""
    ids = tiny.encode([tiny.format_chat(PROMPTS[4])], formatted=True)["input_ids"]
    g = torch.Generator().manual_seed(0)
    u, w = torch.randn(tiny.d_model, generator=g), torch.randn(tiny.d_model, generator=g) * 20
    gate = GatedIntervention(u, w, 0.1, LAYER, 1.5, "all")
    seen = []

    def record(x, hook):
        seen.append(x.clone())

    with torch.inference_mode():
        with tiny.bridge.hooks(fwd_hooks=[(gate.hook_name, record)]):
            tiny.hf_model(input_ids=ids)
        with steer(tiny, gate), tiny.bridge.hooks(fwd_hooks=[(gate.hook_name, record)]):
            tiny.hf_model(input_ids=ids)
    h = seen[0][0]
    by_hand = torch.clamp(h @ gate.gate + gate.bias, min=0)
    assert (by_hand == 0).any() and (by_hand > 0).any()
    assert torch.allclose(gate.alphas(h), by_hand)
    assert torch.allclose(seen[1][0] - h, 1.5 * by_hand[:, None] * gate.direction[None], atol=1e-5)
    assert torch.allclose(gate.direction.norm(), torch.tensor(1.0))


def test_kv_cached_gating_equals_recomputation(tiny):
    vector = SteeringVector.from_directions(torch.randn(1, tiny.d_model), layers=[2])
    tail = Intervention(vector, 2, coef=4.0, unit="absolute", positions="prompt_tail:3")
    rows = [[_gate(tiny)], [], [_gate(tiny, 2, positions="response", seed=1), tail, _gate(tiny, 2, seed=2)]]
    prompts = [PROMPTS[0], PROMPTS[4], PROMPTS[1]]
    cached, full = (logits(tiny, rows, prompts, cached=c) for c in (True, False))
    assert (cached - full).abs().max() < 1e-4
    assert (cached - logits(tiny, [[], [], []], prompts, cached=True))[0].abs().max() > 1e-2
    texts = [
        generate(tiny, prompts, max_new_tokens=6, interventions=[_gate(tiny, scale=4.0)], use_cache=c)
        for c in (True, False)
    ]
    assert texts[0] == texts[1]


def test_a_batch_equals_each_row_alone_beside_other_kinds(writer):
    """Gates share a batch with a head push, a dynamic strength and unsteered rows."""
    cfg = writer.bridge.cfg
    push = HeadIntervention(torch.randn(1, 2, int(cfg.n_heads), int(cfg.d_head)), (2,), 3.0)
    vector = SteeringVector.from_directions(torch.randn(1, writer.d_model), layers=[1])
    dynamic = Intervention(vector, 1, coef=6.0, unit="absolute", schedule=DynamicStrength())
    gate = _gate(writer, scale=4.0, positions="response")
    rows = [[gate], [], [gate, push], [dynamic, _gate(writer, 2, seed=3)]]
    prompts = [PROMPTS[4], PROMPTS[1], PROMPTS[0], PROMPTS[3]]
    together = generate(writer, prompts, max_new_tokens=6, row_interventions=rows)
    alone = [
        generate(writer, [p], max_new_tokens=6, interventions=r)[0]
        for p, r in zip(prompts, rows, strict=True)
    ]
    assert together == alone
    assert together[0] != generate(writer, prompts[:1], max_new_tokens=6)[0]


def test_fit_gate_recovers_a_relu_gate_and_beats_a_constant():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(400, 16, generator=g) * 3 + 1
    w, u = torch.randn(16, generator=g), torch.zeros(16)
    u[0] = 1.0
    strength = torch.relu(h @ w + 0.5)
    delta = strength[:, None] * u + 0.01 * torch.randn(400, 16, generator=g)
    direction, gate, bias, stats = fit_gate(h, delta, l2=1e-4, steps=300)
    assert torch.allclose(direction, u, atol=1e-2)
    assert stats["r2"] > 0.95 and stats["mse_gate"] < 0.05 * stats["mse_constant"]
    assert torch.allclose(torch.relu(h @ gate + bias), strength, atol=0.3 * float(strength.std()))


def _pairs(dataset) -> PreferencePairs:
    answers = [
        "Paris is the capital of France.",
        "Put the egg in boiling water for eight minutes.",
        "Cats are independent; dogs are loyal companions.",
        "Light scatters in the air, and blue light scatters most.",
    ]
    items = dataset.items[:4]
    return PreferencePairs(
        tuple(i.query for i in items),
        tuple(answers),
        ("The sky is blue.",) * 4,
        tuple(i.id for i in items),
        None,
    )


def test_train_gate_fits_the_instructions_shift_better_than_a_constant(tiny):
    dataset = load("one_sentence", "train").head(4)
    pairs = _pairs(dataset)
    h, delta = instruction_shift(tiny, pairs, dataset.positive, layer=LAYER)
    targets, _ = pairs.sequences(tiny)
    assert h.shape == (sum(len(ids) - n + 1 for ids, n in targets), tiny.d_model)
    gate = train_gate(tiny, dataset, layer=LAYER, pairs=pairs)
    fit = gate.provenance["fit"]
    assert fit["mse_gate"] < 0.5 * fit["mse_constant"] and fit["tokens"] == h.shape[0]
    c = delta.double() @ gate.direction.double()
    assert float(((gate.alphas(h.float()).double() - c) ** 2).mean()) == pytest.approx(
        fit["mse_gate"], rel=1e-3
    )
    assert gate.positions == "response" and gate.provenance["pair_ids"] == list(pairs.ids)
    with pytest.raises(InvalidArgumentError, match="not an item"):
        train_gate(tiny, load("one_sentence", "test").head(4), layer=LAYER, pairs=pairs)


def test_save_and_load_round_trip_with_provenance(tiny, tmp_path):
    gate = _gate(tiny, 2, scale=1.25, positions="prompt_tail:4")
    path = gate.save(tmp_path / "gate.safetensors")
    back = GatedIntervention.load(path)
    assert torch.equal(back.direction, gate.direction) and torch.equal(back.gate, gate.gate)
    assert (back.bias, back.layer, back.scale, back.positions) == (gate.bias, 2, 1.25, "prompt_tail:4")
    assert back.provenance == gate.provenance and back.digest == gate.digest and back.label == gate.label
    assert gate.label == "gate@2x1.25/prompt_tail:4" and _gate(tiny, positions="response").label == "gate@1x2"
    shipped = pickle.loads(pickle.dumps(gate))  # as a Ray chunk carries it to a worker
    assert shipped.digest == gate.digest
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    (tmp_path / "bad.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="checksum"):
        GatedIntervention.load(tmp_path / "bad.safetensors")


def test_run_grid_keys_caches_and_resumes_rows_with_a_gate(tmp_path):
    model = build_tiny_model(n_layers=2)
    gate = _gate(model)
    jobs = [
        Job(s, f"p{i}", p, ivs)
        for s, ivs in (("none", ()), ("gate", (gate,)))
        for i, p in enumerate(PROMPTS[:3])
    ]
    first = run_grid(model, jobs, max_new_tokens=4, out_dir=tmp_path)
    assert set(first["interventions"]) == {"", gate.label}

    class Refusing(LocalExecutor):
        def map(self, chunks):
            assert not chunks, "a cached row was generated again"
            return iter(())

    again = run_grid(model, jobs, max_new_tokens=4, out_dir=tmp_path, executor=Refusing(model))
    assert again["response"].tolist() == first["response"].tolist()
    keys = _Keys()
    rows = [
        _gate(model),
        _gate(model, scale=3.0),
        _gate(model, seed=1),
        _gate(model, positions="response"),
        gate,
    ]
    found = [keys.row(Job("s", "p", PROMPTS[0], (g,))) for g in rows]
    assert len(set(found[:4])) == 4 and found[0] == found[4]


def test_multiple_choice_takes_a_gate(tiny):
    items = [MCItem("q1", "What colour is the sky?", ("Blue", "Green", "Red"), 0, "en", "test")]
    gate = _gate(tiny, scale=5.0)
    assert (
        multiple_choice(tiny, items)["ll"][0] != multiple_choice(tiny, items, interventions=[gate])["ll"][0]
    )
    generated = multiple_choice(tiny, items, by="generation", interventions=[gate], max_new_tokens=4)
    assert generated["by"].tolist() == ["generation"]


def test_bad_input_is_one_line(tiny):
    d = tiny.d_model
    bad = [
        (lambda: GatedIntervention(torch.ones(d), torch.ones(d + 1), 0.0, 1), ShapeMismatchError, "entries"),
        (lambda: GatedIntervention(torch.zeros(d), torch.ones(d), 0.0, 1), InvalidArgumentError, "zero"),
        (lambda: GatedIntervention(torch.ones(2, d), torch.ones(d), 0.0, 1), ShapeMismatchError, "d_model"),
        (
            lambda: GatedIntervention(torch.ones(d), torch.ones(d), float("nan"), 1),
            InvalidArgumentError,
            "bias",
        ),
        (lambda: GatedIntervention(torch.ones(d), torch.ones(d), 0.0, -1), InvalidArgumentError, "layer"),
        (
            lambda: GatedIntervention(torch.ones(d), torch.ones(d), 0.0, 1, positions="x"),
            InvalidArgumentError,
            "positions",
        ),
        (lambda: fit_gate(torch.ones(3, d), torch.ones(3, 2)), InvalidArgumentError, "same shape"),
        (lambda: fit_gate(torch.ones(3, d), torch.zeros(3, d)), InvalidArgumentError, "does not change"),
        (lambda: GatedIntervention.load(__file__), ArtifactError, "safetensors"),
    ]
    for make, error, text in bad:
        with pytest.raises(error, match=text) as caught:
            make()
        assert "\n" not in str(caught.value)
    for gate, error, text in (
        (GatedIntervention(torch.ones(8), torch.ones(8), 0.0, 1), ShapeMismatchError, "d_model 8"),
        (_gate(tiny, layer=7), InvalidArgumentError, "out of range"),
    ):
        with pytest.raises(error, match=text), steer(tiny, gate):
            pass
    with pytest.raises(InvalidArgumentError, match="GatedIntervention"):
        generate(tiny, PROMPTS[:1], max_new_tokens=2, row_interventions=[["not one"]])
