"""The gentle push's builder: the authors' few-shot conditions from our data, and per-step head-output means
that equal a hand computation (one prompt at a time, full recomputation, TransformerLens' own cache)."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from tests.conftest import build_tiny_model
from workbench.datasets import load
from workbench.errors import InvalidArgumentError
from workbench.gentle_push import INSTRUCTIONS, few_shot_prompts, gentle_push, shot_pool


@pytest.fixture(scope="module")
def data():
    return load("italian", "train")


def hand_means(model, prompts: list[str], max_steps: int) -> list[torch.Tensor]:
    """Per step, the mean hook_z ``[layer, head, d_head]`` at the last position over the greedy generations
    (stopping after the end-of-text token) that reached it, as the authors' ``get_mean_activations``."""
    eos, pad = model.hf_model.generation_config.eos_token_id, model.tokenizer.pad_token_id
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.n_layers)]
    per_step: list[list[torch.Tensor]] = [[] for _ in range(max_steps)]
    for prompt in prompts:
        ids = model.tokenizer(model.format_chat(prompt), add_special_tokens=False, return_tensors="pt")
        ids = ids["input_ids"]
        for step in range(max_steps):
            with torch.inference_mode():
                logits, cache = model.bridge.run_with_cache(ids, names_filter=lambda name: name in names)
            per_step[step].append(torch.stack([cache[name][0, -1] for name in names]))
            token = int(logits[0, -1].argmax())
            assert token != pad, "the hand loop wrote the pad token: pick another seed"
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            if token == eos:
                break
    return [torch.stack(found).mean(0) for found in per_step if found]


def test_the_vectors_equal_a_hand_computation(data):
    model = build_tiny_model(n_layers=2)
    prompts = few_shot_prompts(data, k=4, shots=2, seed=3)
    unstopped = hand_means(model, prompts["ENG"][:1], 4)
    assert len(unstopped) == 4
    # End of text is a token the first ENG generation writes at step 2: generations end at different steps.
    encoded = model.tokenizer(model.format_chat(prompts["ENG"][0]), add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        out = model.hf_model.generate(torch.tensor([encoded]), max_new_tokens=3, do_sample=False)
    model.hf_model.generation_config.eos_token_id = int(out[0, -1])
    push = gentle_push(model, data, k=4, shots=2, seed=3, max_steps=4, batch_size=3, chat=True)
    base, target = (hand_means(model, prompts[c], 4) for c in ("ENG", "ITA"))
    n = min(len(base), len(target))
    expected = torch.stack([target[i] - base[i] for i in range(n)], dim=1)  # [layer, step, head, d_head]
    assert push.deltas.shape == expected.shape
    assert torch.allclose(push.deltas, expected, atol=1e-5)
    counts = push.provenance["counts"]
    assert counts["ENG"][0] == 4 and min(counts["ENG"]) < 4, (
        counts
    )  # the means are over those that reached it
    assert (push.alpha, push.fade, push.layers, push.heads) == (1.5, 4, (0, 1), None)


def test_the_conditions_are_the_authors(data):
    prompts = few_shot_prompts(data, k=3, shots=2, conditions=("ENG", "ITA-full"), seed=1)
    again = few_shot_prompts(data, k=3, shots=2, conditions=("ITA", "ITA-full"), seed=1)
    assert prompts["ITA-full"] == again["ITA-full"]
    pool = shot_pool()
    assert len(pool) >= 20 and all(s.answer["en"] != s.answer["it"] for s in pool)
    english, italian = prompts["ENG"][0], prompts["ITA-full"][0]
    mixed = again["ITA"][0]
    assert english.startswith(INSTRUCTIONS["en"] + "\nQ: ") and english.count("\nA: ") == 2
    assert mixed.startswith(INSTRUCTIONS["it"] + "\n") and italian.startswith(INSTRUCTIONS["it"] + "\n")
    shot = next(s for s in pool if f"Q: {s.question['en']}\nA: {s.answer['en']}\n\n" in english)
    assert f"Q: {shot.question['en']}\nA: {shot.answer['it']}\n\n" in mixed
    assert f"Q: {shot.question['it']}\nA: {shot.answer['it']}\n\n" in italian
    item = next(i for i in data.items if english.endswith(f"Q: {i.query}\nA:"))
    assert mixed.endswith(f"Q: {item.query}\nA:") and italian.endswith(f"Q: {item.query_it}\nA:")


def test_it_is_a_method_with_knobs_and_provenance(data, tmp_path):
    model = build_tiny_model(n_layers=3)
    push = wb.methods.gentle_push(
        model, data, k=2, shots=1, layers=[2, 0], heads=[1], alpha=2.0, fade=0, max_steps=2
    )
    assert push.layers == (2, 0) and push.heads == (1,) and push.fade == 0 and push.alpha == 2.0
    facts = push.provenance
    assert facts["method"] == "gentle_push" and facts["weights_hash"] == model.weights_hash
    assert facts["dataset"] == "italian:it/train" and facts["dataset_hash"] == data.hash
    assert (facts["k"], facts["shots"], facts["conditions"], facts["steps"]) == (2, 1, ["ENG", "ITA"], 2)
    assert facts["build_seconds"] >= 0 and facts["workbench_version"] == wb.__version__
    back = type(push).load(push.save(tmp_path / "push.safetensors"))
    assert back.provenance == facts and torch.equal(back.deltas, push.deltas)


def test_bad_settings_are_refused_in_one_line(data):
    model = build_tiny_model(n_layers=2)
    for kwargs, text in (
        ({"k": 10_000}, "k must be an integer from 1"),
        ({"conditions": ("ENG", "FRA")}, "unknown condition 'FRA'"),
        ({"conditions": ("ENG", "ENG")}, "two different names"),
        ({"shots": 500}, "usable shots"),
        ({"layers": [5]}, "layer 5 is out of range"),
        ({"max_steps": 0}, "max_steps must be a positive integer"),
    ):
        with pytest.raises(InvalidArgumentError, match=text) as caught:
            gentle_push(model, data, **kwargs)
        assert "\n" not in str(caught.value)
