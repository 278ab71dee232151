"""The steering engine: modes, positions under KV caching, composition, per-row batches, hygiene, refusals."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tests.conftest import PROMPTS
from tests.refusals import refuses
from tests.synthetic_vectors import directions
from workbench.activations import collect
from workbench.errors import InvalidArgumentError, ShapeMismatchError
from workbench.generation import generate
from workbench.interventions import Intervention
from workbench.positions import POSITIONS
from workbench.steering import steer
from workbench.vectors import SteeringVector


def random_vector(model, seed=0, layers=None, **provenance):
    layers = list(range(model.n_layers)) if layers is None else layers
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(len(layers), model.d_model, generator=g)
    return SteeringVector.from_directions(directions, layers, n_layers=model.n_layers, **provenance)


def extracted_vector(model):
    pos = collect(model, [p + " Answer in JSON." for p in PROMPTS], cache=False)
    neg = collect(model, PROMPTS, cache=False)
    return SteeringVector.from_activations(pos, neg)


def no_hooks_left(model) -> bool:
    points = model.bridge.hook_dict.values()
    return all(not hp._forward_hooks for hp in points) and not model.hf_model._forward_pre_hooks


@pytest.mark.parametrize("positions", ["all", "prompt", "last_prompt"])
def test_add_moves_the_residual_by_c_u(tiny, positions):
    vec = random_vector(tiny)
    base = collect(tiny, PROMPTS, layers=[2], cache=False).layer(2)
    with steer(tiny, Intervention(vec, 2, "add", 5.0, positions, unit="absolute")):
        steered = collect(tiny, PROMPTS, layers=[2], cache=False).layer(2)
    assert torch.allclose(steered - base, 5.0 * vec.direction(2).expand_as(base), atol=1e-4)


def test_set_projection_and_ablate_fix_the_projection(tiny):
    vec = extracted_vector(tiny)
    u = vec.direction(1)
    with steer(tiny, Intervention(vec, 1, "set_projection")):
        acts = collect(tiny, PROMPTS, layers=[1], position="prompt", cache=False).layer(1)
    # the mean of per-position projections, each set to z, is z
    assert torch.allclose(acts @ u, torch.full((len(PROMPTS),), vec.stats[1].pos_mean_proj), atol=1e-3)
    with steer(tiny, Intervention(vec, 1, "set_projection", coef=-2.5, unit="absolute")):
        acts = collect(tiny, PROMPTS, layers=[1], cache=False).layer(1)
    assert torch.allclose(acts @ u, torch.full((len(PROMPTS),), -2.5), atol=1e-4)
    with steer(tiny, Intervention(vec, 1, "ablate")):
        acts = collect(tiny, PROMPTS, layers=[1], cache=False).layer(1)
    assert (acts @ u).abs().max() < 1e-4


def test_generated_positions_leave_the_first_token_alone(tiny):
    vec = random_vector(tiny)
    plain = generate(tiny, PROMPTS, max_new_tokens=1)
    iv = Intervention(vec, 1, "add", 80.0, "generated", unit="absolute")
    assert generate(tiny, PROMPTS, max_new_tokens=1, interventions=[iv]) == plain
    longer = generate(tiny, PROMPTS, max_new_tokens=8, interventions=[iv])
    assert longer != generate(tiny, PROMPTS, max_new_tokens=8)


@pytest.mark.parametrize(
    ("mode", "positions"), list(itertools.product(["add", "set_projection", "ablate"], POSITIONS))
)
def test_kv_cached_equals_full_recompute(tiny, mode, positions):
    vec = extracted_vector(tiny)
    coef = {"add": 40.0, "set_projection": 30.0, "ablate": None}[mode]
    ivs = [
        Intervention(vec, 1, mode, coef, positions, unit="absolute"),
        Intervention(vec, 2, "add", 20.0, positions, decay_tokens=4, unit="absolute"),
    ]
    cached = generate(tiny, PROMPTS, max_new_tokens=10, interventions=ivs)
    full = generate(tiny, PROMPTS, max_new_tokens=10, interventions=ivs, use_cache=False)
    assert cached == full


SHARED = "Tell me about cats and dogs and why people like them so much. "


@pytest.mark.parametrize(
    ("mode", "positions"), list(itertools.product(["add", "set_projection", "ablate"], POSITIONS))
)
def test_shared_prompt_prefix_runs_once_and_changes_nothing(tiny, mode, positions):
    vec = extracted_vector(tiny)
    coef = {"add": 40.0, "set_projection": 30.0, "ablate": None}[mode]
    configs = [
        [Intervention(vec, 1, mode, coef, positions, unit="absolute")],
        [],
        [Intervention(vec, 2, "add", 20.0, positions, decay_tokens=4, norm_preserving=True, unit="absolute")],
    ]
    prompts = [SHARED + p for p in PROMPTS[:4]] * 3
    rows = [c for c in configs for _ in range(4)]
    shared = generate(tiny, prompts, max_new_tokens=8, row_interventions=rows, chat=False)
    alone = generate(tiny, prompts, max_new_tokens=8, row_interventions=rows, chat=False, share_prefix=False)
    full = generate(tiny, prompts, max_new_tokens=8, row_interventions=rows, chat=False, use_cache=False)
    assert shared == alone == full
    # The first forward is the shared prefix, once per steering configuration. (The hook that sees it sits
    # on a bridge wrapper, which sends forwards through the bridge: a separate call.)
    widths = []
    embed = tiny.hf_model.get_input_embeddings()
    handle = embed.register_forward_hook(lambda _m, args, _out: widths.append(tuple(args[0].shape)))
    try:
        generate(tiny, prompts, max_new_tokens=2, row_interventions=rows, chat=False)
    finally:
        handle.remove()
    prefix = len(tiny.tokenizer(SHARED)["input_ids"])
    assert widths[0] == (len(configs), prefix) and widths[1][0] == len(prompts)
    assert len(set(shared)) >= 3  # the configurations write different text


def test_steering_changes_greedy_text(tiny):
    vec = random_vector(tiny)
    plain = generate(tiny, PROMPTS, max_new_tokens=10)
    steered = generate(
        tiny, PROMPTS, max_new_tokens=10, interventions=[Intervention(vec, 1, "add", 60.0, unit="absolute")]
    )
    assert sum(a != b for a, b in zip(plain, steered, strict=True)) >= 3


def test_hooks_are_removed_on_exit_and_on_exception(tiny):
    vec = random_vector(tiny)
    before = generate(tiny, PROMPTS, max_new_tokens=6)
    with steer(tiny, Intervention(vec, 1, "add", 60.0, unit="absolute")):
        assert not no_hooks_left(tiny)
    assert no_hooks_left(tiny)
    with (
        pytest.raises(RuntimeError, match="boom"),
        steer(tiny, Intervention(vec, 1, "add", 60.0, unit="absolute")),
    ):
        raise RuntimeError("boom")
    assert no_hooks_left(tiny)
    assert generate(tiny, PROMPTS, max_new_tokens=6) == before


def test_composition_at_two_layers(tiny):
    vec = random_vector(tiny)
    a, b = (
        Intervention(vec, 1, "add", 40.0, unit="absolute"),
        Intervention(vec, 3, "add", -40.0, unit="absolute"),
    )
    both = generate(tiny, PROMPTS, max_new_tokens=8, interventions=[a, b])
    with steer(tiny, a), steer(tiny, b):
        nested = generate(tiny, PROMPTS, max_new_tokens=8)
    assert both == nested
    assert both != generate(tiny, PROMPTS, max_new_tokens=8, interventions=[a])
    assert both != generate(tiny, PROMPTS, max_new_tokens=8, interventions=[b])


def test_same_layer_interventions_apply_in_order(tiny):
    vec = random_vector(tiny)
    add = Intervention(vec, 2, "add", 9.0, unit="absolute")
    ablate = Intervention(vec, 2, "ablate")
    with steer(tiny, add, ablate):
        acts = collect(tiny, PROMPTS, layers=[2], cache=False).layer(2)
    assert (acts @ vec.direction(2)).abs().max() < 1e-4


def test_per_row_batch_equals_each_configuration_alone(tiny):
    vec = random_vector(tiny)
    configs = [
        [],
        [Intervention(vec, 1, "add", 40.0, unit="absolute")],
        [Intervention(vec, 2, "set_projection", coef=10.0, positions="generated", unit="absolute")],
        [Intervention(vec, 1, "add", 25.0, "prompt", unit="absolute"), Intervention(vec, 3, "ablate")],
        [Intervention(vec, 0, "add", 30.0, decay_tokens=3, norm_preserving=True, unit="absolute")],
    ]
    prompt = PROMPTS[2]
    batched = generate(tiny, [prompt] * len(configs), max_new_tokens=8, row_interventions=configs)
    alone = [generate(tiny, [prompt], max_new_tokens=8, interventions=c)[0] for c in configs]
    assert batched == alone
    assert len(set(batched)) >= 3


def test_norm_preserving_keeps_the_residual_norm(tiny):
    vec = random_vector(tiny)
    base = collect(tiny, PROMPTS, layers=[2], cache=False).layer(2)
    with steer(tiny, Intervention(vec, 2, "add", 50.0, norm_preserving=True, unit="absolute")):
        steered = collect(tiny, PROMPTS, layers=[2], cache=False).layer(2)
    assert torch.allclose(steered.norm(dim=-1), base.norm(dim=-1), rtol=1e-4)
    assert not torch.allclose(steered, base, atol=1e-2)


def test_refusals_name_both_sides(tiny):
    vec = random_vector(tiny)
    with pytest.raises(InvalidArgumentError, match="mode"):
        Intervention(vec, 1, "multiply", 1.0, unit="absolute")
    with pytest.raises(InvalidArgumentError, match="positions"):
        Intervention(vec, 1, "add", 1.0, "middle", unit="absolute")
    with pytest.raises(InvalidArgumentError, match="finite"):
        Intervention(vec, 1, "add", float("nan"), unit="absolute")
    with pytest.raises(InvalidArgumentError, match="finite"):
        Intervention(vec, 1, "add", float("inf"), unit="absolute")
    with pytest.raises(InvalidArgumentError, match="no direction for layer 9"):
        Intervention(vec, 9, "add", 1.0, unit="absolute")
    wide = SteeringVector.from_directions(torch.randn(4, 32), n_layers=4)
    with pytest.raises(ShapeMismatchError, match=r"d_model 32.*d_model 64"):
        generate(tiny, PROMPTS, interventions=[Intervention(wide, 1, "add", 1.0, unit="absolute")])
    deep = random_vector(tiny, layers=[0, 1, 2, 3, 4, 5])
    with pytest.raises(InvalidArgumentError, match="out of range"):
        generate(tiny, PROMPTS, interventions=[Intervention(deep, 5, "add", 1.0, unit="absolute")])
    other = SteeringVector.from_directions(torch.randn(4, 64), n_layers=12)
    with pytest.raises(ShapeMismatchError, match=r"12 layers.*4"):
        generate(tiny, PROMPTS, interventions=[Intervention(other, 1, "add", 1.0, unit="absolute")])
    with pytest.raises(InvalidArgumentError, match="coef"):
        Intervention(vec, 1, "set_projection").amount()
    assert no_hooks_left(tiny)


def test_transfer_to_a_model_with_the_same_shape(tiny):
    from tests.conftest import build_tiny_model

    other = build_tiny_model(seed=1)
    vec = extracted_vector(tiny)
    iv = Intervention(vec, 1, "add", 40.0, unit="absolute")
    moved = generate(other, PROMPTS, max_new_tokens=6, interventions=[iv])
    assert moved != generate(other, PROMPTS, max_new_tokens=6)
    assert iv.describe(other)["transfer"] is True
    assert iv.describe(tiny)["transfer"] is False


def test_labels_name_mode_layer_and_coefficient(tiny):
    vec = random_vector(tiny)
    assert Intervention(vec, 2, "add", 2.0, unit="absolute").label == "add@2x2"
    assert Intervention(vec, 1, "add", 0.25, unit="absolute").label == "add@1x0.25"
    assert Intervention(vec, 3, "set_projection").label == "set_projection@3"
    assert Intervention(vec, 0, "ablate").label == "ablate@0"


def test_slots_follow_the_device_and_dtype_of_the_activations(tiny):
    """A model split over devices hands each hook activations on its layer's device: every steering tensor
    (directions, amounts, position masks, per-row flags, dynamic strengths) moves there, once per pair."""
    from workbench.positions import PositionTracker
    from workbench.schedules import DynamicStrength
    from workbench.steering import _build_slots, _Edit

    vec = extracted_vector(tiny)
    rows = [
        [_Edit(Intervention(vec, 1, "add", 3.0, "response", norm_preserving=True, unit="absolute"))],
        [_Edit(Intervention(vec, 1, "set_projection", 2.0, "prompt", unit="absolute"))],
        [_Edit(Intervention(vec, 1, "add", 4.0, schedule=DynamicStrength(), unit="absolute"), column=0)],
    ]
    (slot,) = _build_slots(rows)[1]
    history = torch.tensor([[0.5, 1.5], [1.0, 1.0]])
    tracker = PositionTracker()
    x = torch.randn(3, 6, tiny.d_model)
    with tracker.declared(torch.tensor([4])):
        reference = slot.apply(x, tracker, history)
        on_meta = slot.apply(x.to("meta"), tracker, history)
        wide = slot.apply(x.double(), tracker, history)
        tracker.offset = 6  # a KV-cached step: one position, the second generated token
        step = slot.apply(x[:, :1], tracker, history)
    assert on_meta.device.type == "meta" and on_meta.shape == x.shape
    assert wide.dtype == torch.float64 and torch.allclose(wide.float(), reference, atol=1e-5)
    assert set(slot._placed) == {
        (torch.float32, torch.device("cpu")),
        (torch.float32, torch.device("meta")),
        (torch.float64, torch.device("cpu")),
    }
    placed = slot.placed(torch.float32, torch.device("meta"))
    assert placed.u.device.type == placed.column.device.type == placed.rules[0][1].device.type == "meta"
    # row 2 adds 4·α_0 = 2 to the prompt (positions 0-3), 4·α_1 = 6 where token 1 is predicted (4), and
    # the newest strength, α_1, beyond
    u = vec.direction(1)
    moved = (reference - x)[2] @ u
    assert torch.allclose(moved, torch.tensor([2.0, 2.0, 2.0, 2.0, 6.0, 6.0]), atol=1e-4)
    assert torch.allclose((step - x[:, :1])[2] @ u, torch.tensor([6.0]), atol=1e-4)


def test_position_tracking_is_kept_off_the_model(tiny):
    import gc
    import weakref

    from tests.conftest import build_tiny_model
    from workbench.positions import _TRACKERS, tracker_for

    vec = random_vector(tiny)
    before = dict(vars(tiny))
    generate(
        tiny,
        PROMPTS[:2],
        max_new_tokens=3,
        interventions=[Intervention(vec, 1, "add", 9.0, "generated", unit="absolute")],
    )
    assert vars(tiny) == before and not hasattr(tiny, "_position_tracker")
    assert tracker_for(tiny) is tracker_for(tiny)
    other = build_tiny_model(seed=2)
    tracker_for(other)
    gone = weakref.ref(other.hf_model)
    count = len(_TRACKERS)
    del other
    gc.collect()
    assert gone() is None and len(_TRACKERS) <= count - 1  # its entry went (other dead models may go too)


# ---- bad inputs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vec() -> SteeringVector:
    """A vector that fits the tiny model (4 layers, d_model 64)."""
    return SteeringVector.from_directions(directions(), model_name="tiny-llama", n_layers=4)


def forward_under(model, *interventions: Intervention) -> torch.Tensor:
    with steer(model, *interventions):
        return model.hf_model(**model.encode(["hello"], formatted=False)).logits


def test_intervention_layer_missing_from_vector(vec):
    refuses(InvalidArgumentError, lambda: Intervention(vec, 99), "no direction for layer 99")


def test_intervention_layer_out_of_model_range(tiny):
    eight = SteeringVector.from_directions(directions(8))
    refuses(
        InvalidArgumentError,
        lambda: forward_under(tiny, Intervention(eight, 7, coef=1.0, unit="absolute")),
        "out of range",
    )


def test_vector_d_model_mismatch(tiny):
    narrow = SteeringVector.from_directions(directions(4, 32))
    refuses(
        ShapeMismatchError,
        lambda: forward_under(tiny, Intervention(narrow, 1, coef=1.0, unit="absolute")),
        "d_model 32",
    )


def test_vector_layer_count_mismatch(tiny):
    other = SteeringVector.from_directions(directions(8), n_layers=8)
    refuses(
        ShapeMismatchError,
        lambda: forward_under(tiny, Intervention(other, 1, coef=1.0, unit="absolute")),
        "8 layers",
    )


@pytest.mark.parametrize("coef", [math.nan, math.inf, -math.inf])
def test_non_finite_coefficient(vec, coef):
    refuses(InvalidArgumentError, lambda: Intervention(vec, 1, coef=coef, unit="absolute"), "finite")


def test_non_numeric_coefficient(vec):
    refuses(InvalidArgumentError, lambda: Intervention(vec, 1, coef="strong", unit="absolute"), "coef")


def test_unknown_mode(vec):
    refuses(InvalidArgumentError, lambda: Intervention(vec, 1, mode="multiply"), "unknown mode")


def test_unknown_positions(vec):
    refuses(InvalidArgumentError, lambda: Intervention(vec, 1, positions="middle"), "unknown positions")


def test_unknown_scale(vec):
    refuses(InvalidArgumentError, lambda: Intervention(vec, 1, unit="percent"), "unknown unit")


def test_ablate_with_a_coefficient(vec):
    refuses(InvalidArgumentError, lambda: Intervention(vec, 1, mode="ablate", coef=2.0), "takes no coef")


def test_steer_with_a_non_intervention(tiny, vec):
    def run():
        with steer(tiny, vec):
            pass

    refuses(InvalidArgumentError, run, "Intervention objects")


@pytest.mark.parametrize(
    "knobs",
    [
        {"mode": "add", "coef": 1.0, "decay_tokens": 2},
        {"mode": "add", "coef": 1.0, "norm_preserving": True, "positions": "generated"},
        {"mode": "set_projection"},
        {"mode": "ablate", "positions": "prompt"},
        {"mode": "add", "coef": 0.1, "unit": "residual_norm", "positions": "response"},
    ],
    ids=lambda k: "-".join(str(v) for v in k.values()),
)
def test_steering_keeps_a_bfloat16_model_in_bfloat16(knobs):
    """Every knob's arithmetic stays in the residual's dtype (a float32 decay once broke bfloat16 runs)."""
    from tests.conftest import build_tiny_hf
    from workbench.generation import generate
    from workbench.models import from_hf

    hf, tokenizer = build_tiny_hf()
    model = from_hf(hf, tokenizer, "tiny-llama", device="cpu", dtype=torch.bfloat16)
    vector = SteeringVector.from_activations(torch.randn(6, 4, 64), torch.randn(6, 4, 64))
    answers = generate(
        model, ["hi there", "a"], max_new_tokens=3, interventions=[Intervention(vector, 1, **knobs)]
    )
    assert len(answers) == 2
