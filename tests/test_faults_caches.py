"""Every cache key names every input that changes the cached content (each input changed once gives a new
entry, the unchanged call reads back), and a damaged entry or a full disk costs only the cache entry.

Caches covered here: the activation cache (``collect``, ``collect_responses``). The others are tested beside
their code: the perplexity cache in test_reference.py, the dequantized model cache in test_models.py, grid
rows in test_runner.py.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil

import pytest
import torch

from tests.conftest import PROMPTS
from workbench.activations import collect, collect_responses
from workbench.models import load_model

ANSWERS = ["Paris.", "An apple.", "Light scatters.", "Boil it.", "They are friendly."]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "activations"


def _entries(folder) -> int:
    return len(list(folder.glob("*.safetensors"))) if folder.exists() else 0


def test_each_input_of_the_activation_cache_key_gives_its_own_entry(tiny_dir, tmp_path, cache):
    model = load_model(tiny_dir, device="cpu")
    retemplated = tmp_path / "retemplated"
    shutil.copytree(tiny_dir, retemplated)
    config = json.loads((retemplated / "tokenizer_config.json").read_text())
    template = retemplated / "chat_template.jinja"
    if template.exists():
        template.write_text(template.read_text().replace("assistant", "bot"))
    else:
        config["chat_template"] = config["chat_template"].replace("assistant", "bot")
        (retemplated / "tokenizer_config.json").write_text(json.dumps(config))
    base = {"prompts": PROMPTS[:4], "layers": [1, 2], "position": "last_prompt", "hook": "resid_post"}
    base |= {"chat": True, "batch_size": 2}
    changes = {
        "prompts": {"prompts": PROMPTS[1:5]},
        "layers": {"layers": [1, 3]},
        "position": {"position": "prompt"},
        "hook": {"hook": "mlp_out"},
        "chat": {"chat": False},
        "batch_size": {"batch_size": 3},
    }
    models = {
        "dtype": load_model(tiny_dir, device="cpu", dtype="bfloat16"),
        "weights": dataclasses.replace(model, weights_hash="e" * 64),
        "chat template": load_model(str(retemplated), device="cpu"),
    }
    first = collect(model, **base).tensor
    assert _entries(cache) == 1
    assert torch.equal(collect(model, **base).tensor, first) and _entries(cache) == 1, "read back"
    for name, change in changes.items():
        collect(model, **(base | change))
        assert _entries(cache) == 2 + list(changes).index(name), name
    for name, other in models.items():
        before = _entries(cache)
        collect(other, **base)
        assert _entries(cache) == before + 1, name
    before = _entries(cache)
    collect_responses(model, PROMPTS[:4], ANSWERS[:4], layers=[1])
    collect_responses(model, PROMPTS[:4], ANSWERS[1:5], layers=[1])  # other responses
    collect_responses(model, PROMPTS[:4], ANSWERS[:4], layers=[1], batch_size=3)
    assert _entries(cache) == before + 3
    collect_responses(model, PROMPTS[:4], ANSWERS[:4], layers=[1])
    assert _entries(cache) == before + 3


def test_a_damaged_cache_entry_is_collected_again(tiny, cache):
    fresh = collect(tiny, PROMPTS, layers=[1]).tensor
    (entry,) = cache.glob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:100])  # a disk that lost the end of the file
    with pytest.warns(UserWarning, match="unreadable"):
        again = collect(tiny, PROMPTS, layers=[1]).tensor
    assert torch.equal(again, fresh) and torch.equal(collect(tiny, PROMPTS, layers=[1]).tensor, fresh)


def test_a_full_disk_during_collect_keeps_the_activations_and_the_next_run_caches_them(
    tiny, cache, monkeypatch
):
    fresh = collect(tiny, PROMPTS, layers=[2], cache=False).tensor

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", full)
        with pytest.warns(UserWarning, match="not cached: the disk is full"):
            assert torch.equal(collect(tiny, PROMPTS, layers=[2]).tensor, fresh)
    assert not list(cache.iterdir()), "nothing half-written"
    assert torch.equal(collect(tiny, PROMPTS, layers=[2]).tensor, fresh) and _entries(cache) == 1
