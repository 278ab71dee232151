"""Behaviours' shared completion cache: keyed by the grid's whole manifest, never refused."""

from __future__ import annotations

import json

import pytest

from workbench import behaviours, runner
from workbench.errors import InvalidArgumentError
from workbench.paths import cache_dir


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))


def test_a_completions_folder_with_an_old_manifest_is_not_an_error(tiny):
    old = cache_dir() / "completions" / f"{tiny.fingerprint}-3-{int(tiny.is_chat)}"
    old.mkdir(parents=True)
    stale = {"fingerprint": tiny.fingerprint, "max_new_tokens": 3, "weights_hash": "from an older workbench"}
    (old / runner.GRID_MANIFEST).write_text(json.dumps(stale))
    first = behaviours.complete(tiny, ["Hello", "Hi", "Hello"], 3)
    assert first[0] == first[2] and json.loads((old / runner.GRID_MANIFEST).read_text()) == stale
    (folder,) = [f for f in (cache_dir() / "completions").iterdir() if f != old]
    assert folder.name.startswith(old.name + "-")
    other = behaviours.complete(tiny, ["Hello"], 2)  # another budget: another folder
    assert len(list((cache_dir() / "completions").iterdir())) == 3 and len(other) == 1
    assert behaviours.complete(tiny, ["Hi", "Hello"], 3) == first[1::-1]  # read back
    with pytest.raises(InvalidArgumentError, match="holds a grid with other settings"):  # a user's out_dir
        runner.run_grid(tiny, [runner.Job("unsteered", "", "Hello")], max_new_tokens=3, out_dir=old)
