"""Hook hygiene: after an exception inside ``steer``, ``collect`` or ``generate`` the model carries no hooks
and computes exactly what a freshly built identical model computes."""

from __future__ import annotations

import pytest
import torch

import workbench.activations as activations
from tests.conftest import PROMPTS, build_tiny_model
from workbench.activations import collect
from workbench.errors import InvalidArgumentError, ShapeMismatchError
from workbench.generation import generate
from workbench.interventions import Intervention
from workbench.models import Model
from workbench.steering import steer, steer_rows
from workbench.vectors import SteeringVector

FIXED = ["What is the capital of France?", "Name a fruit."]


class Injected(RuntimeError):
    """An error raised on purpose from inside a forward pass."""


@pytest.fixture(scope="module")
def fresh() -> Model:
    """The reference: never steered, never hooked."""
    return build_tiny_model()


@pytest.fixture(scope="module")
def reference(fresh) -> dict[str, object]:
    return outputs(fresh)


@pytest.fixture(scope="module")
def victim() -> Model:
    """An identical model that every test here breaks something inside of."""
    return build_tiny_model()


@pytest.fixture(scope="module")
def vec(victim) -> SteeringVector:
    rows = torch.randn(victim.n_layers, victim.d_model, generator=torch.Generator().manual_seed(3))
    return SteeringVector.from_directions(rows * 5, model_name=victim.name, n_layers=victim.n_layers)


def our_hooks(model: Model) -> int:
    """TransformerLens hook functions on hook points, and forward hooks on the HF model itself."""
    count = sum(len(point.fwd_hooks) + len(point.bwd_hooks) for point in model.bridge.hook_dict.values())
    count += sum(len(point._forward_hooks) for point in model.bridge.hook_dict.values())
    return count + len(model.hf_model._forward_pre_hooks) + len(model.hf_model._forward_hooks)


def torch_hooks(model: Model) -> dict[tuple[str, str], int]:
    """Every torch hook on every module. The bridge wires a few capture pre-hooks of its own on first use;
    a model that has run must carry exactly the ones a fresh model that has run carries."""
    found = {}
    for prefix, root in (("bridge", model.bridge), ("hf", model.hf_model)):
        for name, module in root.named_modules():
            for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
                if getattr(module, attr):
                    found[(f"{prefix}:{name}", attr)] = len(getattr(module, attr))
    return found


def outputs(model: Model) -> dict[str, object]:
    """Logits on a fixed input, greedy KV-cached decoding (its per-step logits), ``generate``'s texts, and
    the hooks and module tree left afterwards."""
    encoded = model.encode(FIXED, formatted=False)
    with torch.inference_mode():
        logits = model.hf_model(**encoded).logits
        greedy = model.hf_model.generate(
            **encoded,
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=model.tokenizer.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
    return {
        "logits": logits,
        "tokens": greedy.sequences,
        "step_logits": torch.stack(greedy.logits),
        "texts": generate(model, FIXED, max_new_tokens=8),
        "hooks": torch_hooks(model),
        "modules": [(name, type(module).__name__) for name, module in model.hf_model.named_modules()],
    }


def assert_clean(model: Model, reference: dict[str, object]) -> None:
    assert our_hooks(model) == 0
    got = outputs(model)
    for key in ("logits", "tokens", "step_logits"):
        assert torch.equal(got[key], reference[key]), key
    assert got["texts"] == reference["texts"]
    assert got["hooks"] == reference["hooks"]
    assert got["modules"] == reference["modules"]  # every module the bridge wraps is wrapped again
    assert our_hooks(model) == 0


def test_fresh_models_agree_and_carry_no_hooks(victim, fresh, reference):
    assert our_hooks(fresh) == 0
    assert_clean(victim, reference)


def test_steering_changes_the_output_while_on(victim, vec, reference):
    """The checks below would be empty if steering did nothing."""
    with steer(victim, Intervention(vec, 1, coef=8.0, unit="absolute")):
        assert our_hooks(victim) > 0
        steered = outputs(victim)
    assert not torch.equal(steered["logits"], reference["logits"])
    assert not torch.equal(steered["step_logits"], reference["step_logits"])
    assert_clean(victim, reference)


def test_exception_in_the_steer_block(victim, vec, reference):
    with (
        pytest.raises(Injected),
        steer(victim, Intervention(vec, 1, coef=8.0, unit="absolute"), Intervention(vec, 2)),
    ):
        victim.hf_model(**victim.encode(FIXED, formatted=False))
        raise Injected("user code failed")
    assert_clean(victim, reference)


def test_exception_from_a_steering_hook(victim, vec, reference):
    """Per-row interventions for 2 rows, a batch of 3: the hook itself raises mid-forward."""
    rows = [[Intervention(vec, 1, coef=4.0, unit="absolute")], [Intervention(vec, 3, mode="ablate")]]
    with pytest.raises(ShapeMismatchError), steer_rows(victim, rows):
        victim.hf_model(**victim.encode(PROMPTS[:3], formatted=False))
    assert_clean(victim, reference)


def test_nested_steer_whose_inner_block_is_refused(victim, vec, reference):
    narrow = SteeringVector.from_directions(torch.ones(1, 8), layers=(1,))
    with (
        pytest.raises(ShapeMismatchError),
        steer(victim, Intervention(vec, 1, coef=2.0, unit="absolute")),
        steer(victim, Intervention(narrow, 1, coef=1.0, unit="absolute")),
    ):
        pass
    assert_clean(victim, reference)


def test_collect_fails_in_the_second_batch(victim, reference):
    """Batches run longest first; an int position too far for the short prompt fails in batch 2."""
    prompts = ["Tell me about cats and dogs and why people like them so much.", "Hi"]
    with pytest.raises(InvalidArgumentError, match="outside a prompt"):
        collect(victim, prompts, position=6, chat=False, batch_size=1, cache=False)
    assert_clean(victim, reference)


def test_collect_with_an_error_injected_into_its_hook(victim, reference, monkeypatch):
    calls = []
    select = activations._select

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise Injected("torch blew up inside the hook")
        return select(*args, **kwargs)

    monkeypatch.setattr(activations, "_select", failing)
    with pytest.raises(Injected):
        collect(victim, PROMPTS, layers=[0, 2], batch_size=2, cache=False)
    monkeypatch.undo()
    assert len(calls) == 3
    assert_clean(victim, reference)


def test_generate_fails_midway_through_decoding(victim, vec, reference):
    """The HF forward raises at the 4th call (3 tokens into KV-cached decoding) while steering is on."""
    hf = victim.hf_model
    forward = hf.forward
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise Injected("decoding failed")
        return forward(*args, **kwargs)

    hf.forward = failing
    try:
        with pytest.raises(Injected):
            generate(
                victim,
                FIXED,
                max_new_tokens=10,
                row_interventions=[
                    [Intervention(vec, 1, coef=4.0, positions="generated", unit="absolute")],
                    [],
                ],
            )
    finally:
        del hf.forward
    assert len(calls) == 4
    assert_clean(victim, reference)


def test_generate_with_a_per_row_shape_error(victim, vec, reference):
    """Outer per-row steering for 2 rows around a generate whose batch has 3 rows."""
    rows = [[Intervention(vec, 2, coef=3.0, unit="absolute")], []]
    with pytest.raises(ShapeMismatchError), steer_rows(victim, rows):
        generate(victim, PROMPTS[:3], max_new_tokens=4, batch_size=3)
    assert_clean(victim, reference)


def test_generate_refusing_a_vector_partway_through_its_rows(victim, vec, reference):
    narrow = SteeringVector.from_directions(torch.ones(1, 8), layers=(1,))
    rows = [
        [Intervention(vec, 1, coef=2.0, unit="absolute")],
        [Intervention(narrow, 1, coef=1.0, unit="absolute")],
    ]
    with pytest.raises(ShapeMismatchError):
        generate(victim, FIXED, max_new_tokens=4, row_interventions=rows)
    assert_clean(victim, reference)
