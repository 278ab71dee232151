"""Parity of the fast path with TransformerLens, per supported architecture.

Each architecture in :data:`workbench.fastpath.ARCHITECTURES` gets a tiny random model built from its config
(2 layers, d_model 64, the shared tiny tokenizer), saved as a local directory and loaded with ``load_model``,
the way a user brings one. Checks, on a left-padded batch:

- ``collect`` equals ``bridge.run_with_cache`` at every layer (last token and mean over real tokens);
- batch composition does not change activations or continuation log-probs (batch 4 against batch 1);
- steered greedy generation through the fast path equals the same steering through the bridge's own
  modules (:func:`~workbench.fastpath.bridge_only`), for every mode and positions rule, one configuration
  per row, with and without the KV cache; and the steered logits of a fixed continuation agree.

The bundled SmolLM2 and Gemma 3 270M (the report's models) get the first and last checks at full size
(slow). The fast-path runs are strict (``WORKBENCH_STRICT_FASTPATH=1``): a silent fallback would fail
them. The largest difference per architecture and check is printed as a matrix at the end of the module.
"""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import PROMPTS, build_tiny_tokenizer, tiny_config
from workbench.activations import collect
from workbench.evaluation.perplexity import continuation_logprobs
from workbench.fastpath import ARCHITECTURES, STRICT_ENV, bridge_only, direct_forward
from workbench.generation import generate
from workbench.interventions import MODES, Intervention
from workbench.models import Model, load_model
from workbench.positions import POSITIONS
from workbench.steering import steer_rows, tracking
from workbench.vectors import SteeringVector

MATRIX: dict[str, dict[str, float]] = {}
CHECKS = (
    "collect vs run_with_cache",
    "collect batch 4 vs 1",
    "log-probs batch 4 vs 1",
    "steered logits",
    "steered logits, KV cache",
    "greedy rows differing",
)
_MODELS: dict[str, Model] = {}


@pytest.fixture
def model(request, tmp_path_factory) -> Model:
    kind = request.param
    if kind not in _MODELS:
        tokenizer = build_tiny_tokenizer()
        torch.manual_seed(0)
        hf = AutoModelForCausalLM.from_config(tiny_config(kind, tokenizer))
        folder = tmp_path_factory.mktemp(f"tiny_{kind}")
        hf.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        _MODELS[kind] = load_model(str(folder), device="cpu")
        assert _MODELS[kind].hf_model.config.model_type == kind
    return _MODELS[kind]


@pytest.fixture(scope="module", autouse=True)
def print_matrix(request):
    yield
    if not MATRIX:
        return
    lines = ["", "fast path vs TransformerLens bridge: max |difference| (float32, CPU)"]
    lines.append(f"{'architecture':<22}" + "".join(f"{c:>26}" for c in CHECKS))
    for kind, row in MATRIX.items():
        lines.append(f"{kind:<22}" + "".join(f"{row.get(c, float('nan')):>26.1e}" for c in CHECKS))
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print("\n".join(lines))


def record(kind: str, check: str, diff: float) -> float:
    MATRIX.setdefault(kind, {})[check] = diff
    return diff


@pytest.fixture
def strict(monkeypatch):
    monkeypatch.setenv(STRICT_ENV, "1")


parametrized = pytest.mark.parametrize("model", ARCHITECTURES, indirect=True)


@parametrized
def test_collect_matches_run_with_cache(model, strict):
    texts = [model.format_chat(p) for p in PROMPTS[:4]]
    encoded = model.encode(texts, formatted=True)
    assert (encoded["attention_mask"] == 0).any()  # left padding is exercised
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(model.n_layers)]
    with torch.inference_mode():
        _, cache = model.bridge.run_with_cache(
            encoded["input_ids"], attention_mask=encoded["attention_mask"], names_filter=lambda n: n in names
        )
    last = collect(model, PROMPTS[:4], cache=False).tensor
    mean = collect(model, PROMPTS[:4], position="prompt", cache=False).tensor
    weights = encoded["attention_mask"][..., None].float()
    diff = 0.0
    for layer, name in enumerate(names):
        reference = cache[name].float()
        diff = max(diff, (last[:, layer] - reference[:, -1]).abs().max().item())
        expected_mean = (reference * weights).sum(1) / weights.sum(1)
        diff = max(diff, (mean[:, layer] - expected_mean).abs().max().item())
    scale = last.abs().max().item()
    assert record(model.hf_model.config.model_type, CHECKS[0], diff) <= 1e-5 * max(1.0, scale)


@parametrized
def test_batch_composition_changes_no_activation_or_log_prob(model, strict):
    kind = model.hf_model.config.model_type
    together = collect(model, PROMPTS[:4], batch_size=4, cache=False).tensor
    alone = collect(model, PROMPTS[:4], batch_size=1, cache=False).tensor
    scale = max(1.0, together.abs().max().item())
    assert record(kind, CHECKS[1], (together - alone).abs().max().item()) <= 1e-5 * scale
    texts = [model.format_chat(p) for p in PROMPTS[:4]]
    answers = ["Paris.", "An apple, or a pear.", "Light scatters.", "Cats are independent."]
    scored = [continuation_logprobs(model, texts, answers, formatted=True, batch_size=b) for b in (4, 1)]
    diff = max((a - b).abs().max().item() for a, b in zip(*scored, strict=True))
    assert record(kind, CHECKS[2], diff) <= 1e-4


def configurations(model: Model) -> list[list[Intervention]]:
    """One intervention per (mode, positions), strong enough to change greedy tokens of a random model."""
    direction = torch.randn(1, model.d_model, generator=torch.Generator().manual_seed(1))
    vector = SteeringVector.from_directions(direction, layers=[0])
    scale = collect(model, PROMPTS[:2], layers=[0], cache=False).tensor.abs().max().item()
    coef = {"add": 4.0 * scale, "set_projection": 2.0 * scale, "ablate": None}
    return [
        [Intervention(vector, 0, mode=mode, coef=coef[mode], positions=positions, unit="absolute")]
        for mode in MODES
        for positions in POSITIONS
    ]


def steered_logits(model: Model, rows, prompts: list[str], cached: bool, reference: bool) -> torch.Tensor:
    """Logits of prompt + a fixed continuation (zero at padding), row ``i`` steered by ``rows[i]``; with
    ``cached`` the continuation runs on the prompt's KV cache."""
    encoded = model.encode([model.format_chat(p) for p in prompts], formatted=True)
    width = encoded["input_ids"].shape[1]
    tail = model.tokenizer(" Paris is the capital", add_special_tokens=False, return_tensors="pt")[
        "input_ids"
    ]
    ids = torch.cat([encoded["input_ids"], tail.expand(len(prompts), -1)], dim=1)
    mask = torch.cat([encoded["attention_mask"], torch.ones_like(tail).expand(len(prompts), -1)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.inference_mode(), ExitStack() as stack:
        tracker = stack.enter_context(tracking(model))
        stack.enter_context(tracker.declared(torch.tensor([width])))
        if reference:
            stack.enter_context(bridge_only(model))
        stack.enter_context(steer_rows(model, rows))
        assert stack.enter_context(direct_forward(model)) is not reference
        if not cached:
            logits = model.hf_model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        else:
            first = model.hf_model(
                input_ids=ids[:, :width],
                attention_mask=mask[:, :width],
                position_ids=positions[:, :width],
                use_cache=True,
            )
            rest = model.hf_model(
                input_ids=ids[:, width:],
                attention_mask=mask,
                position_ids=positions[:, width:],
                use_cache=True,
                **{model.cache_argument: first.past_key_values},
            )
            logits = torch.cat([first.logits, rest.logits], dim=1)
    return logits.float() * mask[..., None]  # padding positions hold no comparable values


@parametrized
def test_steered_generation_matches_the_bridge(model, strict):
    kind = model.hf_model.config.model_type
    rows = configurations(model)
    # Two lengths (left padding) opening with the same 16 tokens: cached generation runs that prefix once.
    pair = [PROMPTS[4], "Tell me about cats and dogs and why they fight."]
    prompts = [pair[i % 2] for i in range(len(rows))]
    for cached, check in ((False, CHECKS[3]), (True, CHECKS[4])):
        fast = steered_logits(model, rows, prompts, cached, reference=False)
        bridge = steered_logits(model, rows, prompts, cached, reference=True)
        assert record(kind, check, (fast - bridge).abs().max().item()) <= 1e-4 * max(
            1.0, bridge.abs().max().item()
        )
    out = {}
    for use_cache in (True, False):
        settings = {"row_interventions": rows, "max_new_tokens": 4, "use_cache": use_cache, "batch_size": 32}
        out["fast", use_cache] = generate(model, prompts, **settings)
        with bridge_only(model):
            out["bridge", use_cache] = generate(model, prompts, **settings)
    differing = sum(len(set(texts)) > 1 for texts in zip(*out.values(), strict=True))
    assert record(kind, CHECKS[5], differing) == 0, out
    unsteered = steered_logits(model, [[] for _ in rows], prompts, False, reference=False)
    moved = (fast - unsteered).abs().amax(dim=(1, 2))
    assert (moved > 1e-2).all(), f"a configuration barely changed the logits: {moved.tolist()}"
    assert any(text != generate(model, pair, max_new_tokens=4)[0] for text in out["fast", True][::2])


@pytest.fixture(scope="module")
def gemma():
    return load_model("gemma3-270m", device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("bundled", ["smol", "gemma"])
def test_bundled_models_match_the_bridge(bundled, request, strict):
    """The two bundled models (SmolLM2, Gemma 3 270M: the report's) against the bridge, at full size."""
    model = request.getfixturevalue(bundled)
    texts = [model.format_chat(p) for p in PROMPTS[:3]]
    encoded = model.encode(texts, formatted=True)
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(model.n_layers)]
    with torch.inference_mode():
        _, cache = model.bridge.run_with_cache(
            encoded["input_ids"], attention_mask=encoded["attention_mask"], names_filter=lambda n: n in names
        )
    last = collect(model, PROMPTS[:3], cache=False).tensor
    diff = max(
        (last[:, layer] - cache[name][:, -1].float()).abs().max().item() for layer, name in enumerate(names)
    )
    assert record(model.name, CHECKS[0], diff) <= 1e-5 * last.abs().max().item()
    layer = model.n_layers // 2
    direction = torch.randn(1, model.d_model, generator=torch.Generator().manual_seed(0))
    vector = SteeringVector.from_directions(direction, layers=[layer])
    norm = last[:, layer].norm(dim=-1).mean().item()
    rows = [
        [Intervention(vector, layer, "add", 0.5 * norm, "all", unit="absolute")],
        [Intervention(vector, layer, "set_projection", 0.3 * norm, "response", unit="absolute")],
        [Intervention(vector, layer, "ablate", None, "prompt")],
    ]
    fast = generate(model, PROMPTS[:3], row_interventions=rows, max_new_tokens=8)
    with bridge_only(model):
        reference = generate(model, PROMPTS[:3], row_interventions=rows, max_new_tokens=8)
    assert record(model.name, CHECKS[5], sum(a != b for a, b in zip(fast, reference, strict=True))) == 0
