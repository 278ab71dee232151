"""The same configuration and seed give bit-identical results, run after run and model build after build."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import workbench.vectors as vectors
from tests.conftest import PROMPTS, build_tiny_model
from workbench import datasets
from workbench.activations import collect
from workbench.evaluation.table import evaluate
from workbench.generation import generate
from workbench.interventions import Intervention
from workbench.methods import METHODS
from workbench.vectors import SteeringVector

SUFFIX = " Answer in JSON."


@pytest.fixture(scope="module")
def tiny():
    """This module's own tiny model (it shadows the session one): generating or steering leaves a position
    tracker on the model, and tests of the shared session model that run later must not see it."""
    return build_tiny_model()


@pytest.fixture(scope="module")
def twin():
    """A second, separately built copy of the tiny model: a second run shares nothing with the first."""
    return build_tiny_model()


@pytest.fixture(scope="module")
def vec(tiny):
    rows = torch.randn(tiny.n_layers, tiny.d_model, generator=torch.Generator().manual_seed(11))
    return SteeringVector.from_directions(rows * 3, n_layers=tiny.n_layers, model_name=tiny.name)


def sampled(model, vec, seed):
    steering = [[], [Intervention(vec, 1, coef=6.0, unit="absolute")], [Intervention(vec, 2, "ablate")]]
    return generate(
        model,
        PROMPTS[:3],
        max_new_tokens=8,
        do_sample=True,
        temperature=1.0,
        top_p=0.95,
        seed=seed,
        batch_size=2,
        row_interventions=steering,
    )


def test_sampled_generation_repeats_with_its_seed(tiny, twin, vec):
    first = sampled(tiny, vec, seed=1234)
    assert first == sampled(tiny, vec, seed=1234)
    assert first == sampled(twin, vec, seed=1234)
    assert any(first)
    assert sampled(tiny, vec, seed=1235) != first  # the seed does something


def test_greedy_generation_repeats(tiny, twin, vec):
    run = {
        "max_new_tokens": 10,
        "interventions": [Intervention(vec, 1, coef=4.0, positions="response", unit="absolute")],
    }
    assert generate(tiny, PROMPTS, **run) == generate(twin, PROMPTS, **run) == generate(tiny, PROMPTS, **run)


@pytest.mark.parametrize("position", ["last_prompt", "prompt", 1, -2])
def test_collect_repeats_bit_for_bit(tiny, twin, position):
    first = collect(tiny, PROMPTS, position=position, batch_size=2, cache=False)
    again = collect(tiny, PROMPTS, position=position, batch_size=2, cache=False)
    other = collect(twin, PROMPTS, position=position, batch_size=2, cache=False)
    assert torch.equal(first.tensor, again.tensor)
    assert torch.equal(first.tensor, other.tensor)
    assert first.settings == other.settings and first.prompts_hash == other.prompts_hash


def test_cached_collect_gives_the_same_bits(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    computed = collect(tiny, PROMPTS, layers=[1, 3], position="prompt", cache=True)
    assert list((tmp_path / "activations").iterdir())
    read = collect(tiny, PROMPTS, layers=[1, 3], position="prompt", cache=True)
    assert torch.equal(computed.tensor, read.tensor)
    assert torch.equal(
        computed.tensor, collect(tiny, PROMPTS, layers=[1, 3], position="prompt", cache=False).tensor
    )


def build(model, method):
    pos = collect(model, [p + SUFFIX for p in PROMPTS], cache=False)
    neg = collect(model, PROMPTS, cache=False)
    return SteeringVector.from_activations(pos, neg, method, dataset="json_suffix", dataset_hash="abc")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_vector_build_repeats_bit_for_bit(tiny, twin, method, tmp_path, monkeypatch):
    monkeypatch.setattr(vectors, "utc_now", lambda: "2025-01-01T00:00:00+00:00")
    first, other = build(tiny, method), build(twin, method)
    assert torch.equal(first.directions, other.directions)
    assert first.stats == other.stats
    assert first.provenance == other.provenance
    assert first == other
    # safetensors writes its metadata keys in random order, so compare the parsed header and the data.
    a = split_safetensors(first.save(tmp_path / "a.safetensors"))
    assert a == split_safetensors(other.save(tmp_path / "b.safetensors"))
    gguf_a = first.to_gguf(tmp_path / "a.gguf", [1, 2, 3]).read_bytes()
    assert gguf_a == other.to_gguf(tmp_path / "b.gguf", [1, 2, 3]).read_bytes()


def split_safetensors(path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + size]), raw[8 + size :]


def results_table(model, vec):
    """Sampled, steered generation for a small grid (items x configurations, one batch), then scoring."""
    items = datasets.load("json_format", "validation").items[:3]
    configs = {
        "none": [],
        "add": [Intervention(vec, 2, coef=5.0, unit="absolute")],
        "ablate": [Intervention(vec, 1, "ablate")],
    }
    grid = [(name, item) for name in configs for item in items]
    responses = generate(
        model,
        [item.prompt for _, item in grid],
        max_new_tokens=8,
        do_sample=True,
        seed=7,
        row_interventions=[configs[name] for name, _ in grid],
    )
    frame = evaluate(responses, [item for _, item in grid])
    frame.insert(0, "config", [name for name, _ in grid])
    return frame


def test_results_table_repeats_bit_for_bit(tiny, twin, vec):
    first = results_table(tiny, vec)
    assert len(first) == 9 and first["response"].map(bool).any()
    again = results_table(twin, vec)
    pd.testing.assert_frame_equal(first, again, check_exact=True)
    assert first.to_csv(index=False).encode() == again.to_csv(index=False).encode()


def test_a_grid_resumed_on_another_build_gives_the_fresh_run_bit_for_bit(tiny, twin, vec, tmp_path):
    from workbench.runner import Job, run_grid

    settings = {
        "none": (),
        "add": (Intervention(vec, 2, coef=5.0, unit="absolute"),),
        "ablate": (Intervention(vec, 1, "ablate"),),
    }
    jobs = [Job(name, str(i), p, ivs) for name, ivs in settings.items() for i, p in enumerate(PROMPTS[:4])]
    kw = {"max_new_tokens": 6, "chunk_size": 4, "batch_size": 3}
    fresh = run_grid(tiny, jobs, **kw)

    def stop(part):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_grid(tiny, jobs, out_dir=tmp_path, on_chunk=stop, **kw)
    assert twin.fingerprint == tiny.fingerprint
    resumed = run_grid(twin, jobs, out_dir=tmp_path, **kw)
    pd.testing.assert_frame_equal(resumed, fresh, check_exact=True)
    assert len(list(tmp_path.glob("part-*.parquet"))) == 3
