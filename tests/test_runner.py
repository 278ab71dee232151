"""The one grid runner: fixed chunks, raw parts on disk, resume of missing chunks only, scores on read;
rows filed under the model that generated them, executors that describe themselves, a directory two runs
create at once, a full disk half-way, and what a row key covers."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from tests.conftest import PROMPTS, build_tiny_hf, build_tiny_model
from workbench import runner
from workbench.errors import InvalidArgumentError, OutputPathError
from workbench.interventions import Intervention
from workbench.models import from_hf
from workbench.runner import (
    GRID_MANIFEST,
    FingerprintMismatchError,
    Job,
    LocalExecutor,
    run_grid,
    using_executor,
)
from workbench.schedules import DynamicStrength
from workbench.vectors import SteeringVector


def _vector(model) -> SteeringVector:
    rows = torch.randn(model.n_layers, model.d_model, generator=torch.Generator().manual_seed(3))
    return SteeringVector.from_directions(rows, n_layers=model.n_layers)


def _jobs(model) -> list[Job]:
    vector = _vector(model)
    settings = {
        "none": (),
        "add@1x4": (Intervention(vector, 1, coef=4.0, unit="absolute"),),
        "ablate@2": (Intervention(vector, 2, "ablate"),),
    }
    return [
        Job(name, f"p{i}", prompt, ivs, {"n_interventions": len(ivs)})
        for name, ivs in settings.items()
        for i, prompt in enumerate(PROMPTS[:4])
    ]


class Counting:
    """The local executor, recording the size of every chunk it is sent; raises after ``stop_after``."""

    def __init__(self, model, stop_after: int | None = None):
        self.local, self.sizes, self.stop_after = LocalExecutor(model), [], stop_after

    def map(self, chunks):
        for index, responses in self.local.map(chunks):
            if self.stop_after is not None and len(self.sizes) == self.stop_after:
                raise KeyboardInterrupt
            self.sizes.append(len(chunks[index].prompts))
            yield index, responses

    def serves(self, model):
        return self.local.serves(model)

    def fingerprint_for(self, model):
        return self.local.fingerprint_for(model)

    def describe(self):
        return self.local.describe()


def _length_scorer(limit: int):
    return lambda rows: rows.assign(long=rows["response"].str.len() > limit)


def test_interrupted_grid_resumes_only_missing_chunks_and_matches_a_fresh_run(tiny, tmp_path):
    jobs = _jobs(tiny)
    kw = {"max_new_tokens": 5, "chunk_size": 5, "batch_size": 4, "score": _length_scorer(3)}
    fresh = run_grid(tiny, jobs, **kw)
    assert len(fresh) == 12 and list(fresh["setting"])[:4] == ["none"] * 4
    assert fresh["interventions"].tolist()[4:9] == ["add@1x4"] * 4 + ["ablate@2"]
    with pytest.raises(KeyboardInterrupt):
        run_grid(tiny, jobs, out_dir=tmp_path, executor=Counting(tiny, stop_after=1), **kw)
    parts = list(tmp_path.glob("part-*.parquet"))
    assert len(parts) == 1 and (tmp_path / GRID_MANIFEST).exists()
    raw = pd.read_parquet(parts[0])
    assert len(raw) == 5 and "long" not in raw and json.loads(raw["knobs"][0]) == {"n_interventions": 0}
    resumed_by = Counting(tiny)
    resumed = run_grid(tiny, jobs, out_dir=tmp_path, executor=resumed_by, **kw)
    assert resumed_by.sizes == [5, 2]  # chunks 2 and 3 of 5 + 5 + 2 rows; chunk 1 was read back
    pd.testing.assert_frame_equal(resumed, fresh, check_exact=True)  # greedy: the same bits
    again = Counting(tiny)
    pd.testing.assert_frame_equal(run_grid(tiny, jobs, out_dir=tmp_path, executor=again, **kw), fresh)
    assert again.sizes == []


def test_a_changed_scorer_rescores_cached_rows(tiny, tmp_path):
    jobs = _jobs(tiny)[:4]
    first = run_grid(tiny, jobs, max_new_tokens=5, out_dir=tmp_path, score=_length_scorer(0))
    assert first["long"].sum() == (first["response"].str.len() > 0).sum()
    idle = Counting(tiny)
    stricter = run_grid(
        tiny, jobs, max_new_tokens=5, out_dir=tmp_path, score=_length_scorer(10**6), executor=idle
    )
    assert idle.sizes == [] and not stricter["long"].any()
    assert stricter["response"].tolist() == first["response"].tolist()


def test_identical_generations_run_once_and_settings_guard_the_directory(tiny, tmp_path):
    job = _jobs(tiny)[5]
    twins = [job, Job("same, renamed", job.id, job.prompt, job.interventions)]
    counting = Counting(tiny)
    rows = run_grid(tiny, twins, max_new_tokens=4, executor=counting, out_dir=tmp_path)
    assert counting.sizes == [1] and rows["response"].nunique() == 1
    assert rows["n_interventions"].tolist()[0] == 1 and pd.isna(rows["n_interventions"].tolist()[1])
    with pytest.raises(InvalidArgumentError, match=r"other settings.*max_new_tokens"):
        run_grid(tiny, twins, max_new_tokens=5, out_dir=tmp_path)
    with pytest.raises(InvalidArgumentError, match=r"other settings.*vector"):
        run_grid(tiny, twins, max_new_tokens=4, out_dir=tmp_path, key={"vector": "abc"})
    with pytest.raises(InvalidArgumentError, match="no jobs"):
        run_grid(tiny, [], max_new_tokens=4)
    with pytest.raises(InvalidArgumentError, match="chunk_size"):
        run_grid(tiny, twins, max_new_tokens=4, chunk_size=0)


def test_an_executor_may_finish_chunks_in_any_order(tiny):
    jobs = _jobs(tiny)

    class Backwards(LocalExecutor):
        def map(self, chunks):
            yield from reversed(list(super().map(chunks)))

    kw = {"max_new_tokens": 4, "chunk_size": 3}
    pd.testing.assert_frame_equal(
        run_grid(tiny, jobs, executor=Backwards(tiny), **kw), run_grid(tiny, jobs, **kw)
    )


def test_using_executor_is_the_default_for_its_own_model_only(tiny):
    jobs, kw = _jobs(tiny)[:6], {"max_new_tokens": 4, "chunk_size": 3}
    local = run_grid(tiny, jobs, **kw)
    other = build_tiny_model(seed=1)
    assert other.fingerprint != tiny.fingerprint
    other_local = run_grid(other, _jobs(other)[:6], **kw)
    default, explicit = Counting(tiny), Counting(tiny)
    with using_executor(default):
        pd.testing.assert_frame_equal(run_grid(tiny, jobs, **kw), local)
        assert default.sizes == [3, 3]
        run_grid(tiny, jobs, executor=explicit, **kw)  # the argument wins over the block's default
        assert explicit.sizes == [3, 3] and default.sizes == [3, 3]
        with using_executor(None):  # None keeps the outer default
            run_grid(tiny, jobs[:1], **kw)
        assert default.sizes == [3, 3, 1]
        # Another model (other weights, so another fingerprint) is not sent to tiny's executor.
        pd.testing.assert_frame_equal(run_grid(other, _jobs(other)[:6], **kw), other_local)
        assert default.sizes == [3, 3, 1]
    run_grid(tiny, jobs, **kw)
    assert default.sizes == [3, 3, 1], "the default ends with its block"
    unbound = SimpleNamespace(map=LocalExecutor(tiny).map)  # an executor that cannot say whose model it runs
    with pytest.raises(InvalidArgumentError, match="serves"), using_executor(unbound):
        pass


# ---- rows filed under the model that produced them; the manifest of a shared directory; a full disk -------


def test_rows_are_filed_under_the_fingerprint_of_the_model_that_generated_them(tiny, tmp_path):
    """An executor of another dtype is refused in one line; asked for, its rows are filed under its own
    fingerprint, read back by that model and refused to the driver's."""
    hf, tokenizer = build_tiny_hf()
    half = from_hf(hf, tokenizer, "tiny-llama", weights_hash=tiny.weights_hash, dtype="bfloat16")
    assert half.weights_hash == tiny.weights_hash and half.fingerprint != tiny.fingerprint
    jobs, kw = _jobs(tiny)[:4], {"max_new_tokens": 4, "out_dir": tmp_path}
    with pytest.raises(FingerprintMismatchError, match=r"bfloat16 on cpu.*float32 on cpu") as caught:
        run_grid(tiny, jobs, executor=LocalExecutor(half), **kw)
    assert "\n" not in str(caught.value) and not list(tmp_path.iterdir()), "nothing was written"
    rows = run_grid(tiny, jobs, executor=LocalExecutor(half, allow_other_fingerprint=True), **kw)
    assert json.loads((tmp_path / GRID_MANIFEST).read_text())["fingerprint"] == half.fingerprint
    idle = Counting(half)
    pd.testing.assert_frame_equal(run_grid(half, jobs, executor=idle, **kw), rows)
    assert idle.sizes == [], "the bfloat16 model reads its own rows back"
    with pytest.raises(InvalidArgumentError, match=r"other settings \(fingerprint differ\)"):
        run_grid(tiny, jobs, **kw)


def test_every_executor_describes_itself_and_an_executor_that_cannot_is_refused(tiny):
    facts = LocalExecutor(tiny).describe()
    assert facts["kind"] == "in process" and facts["address"] is None
    assert facts["workers"] == [
        {
            "pid": os.getpid(),
            "fingerprint": tiny.fingerprint,
            "weights_hash": tiny.weights_hash,
            "device": "cpu",
            "dtype": "float32",
        }
    ]
    json.dumps(facts)

    class MapOnly:
        def map(self, chunks):
            yield from LocalExecutor(tiny).map(chunks)

    with pytest.raises(InvalidArgumentError, match="fingerprint_for"):
        run_grid(tiny, _jobs(tiny)[:1], max_new_tokens=2, executor=MapOnly())


def test_of_two_runs_creating_one_directory_with_other_settings_the_second_is_refused(
    tiny, tmp_path, monkeypatch
):
    jobs = _jobs(tiny)[:2]
    real = runner.create_once

    def another_run_first(path, write, what):  # the other process links its manifest in just before
        real(path, lambda tmp: tmp.write_text(json.dumps({"fingerprint": "theirs"})), what)
        return real(path, write, what)

    monkeypatch.setattr(runner, "create_once", another_run_first)
    with pytest.raises(InvalidArgumentError, match=r"other settings \(.*fingerprint"):
        run_grid(tiny, jobs, max_new_tokens=3, out_dir=tmp_path)
    assert json.loads((tmp_path / GRID_MANIFEST).read_text()) == {"fingerprint": "theirs"}
    assert not list(tmp_path.glob("part-*"))


def test_a_full_disk_half_way_through_a_grid_is_one_line_and_the_rerun_resumes(tiny, tmp_path, monkeypatch):
    jobs = _jobs(tiny)
    kw = {"max_new_tokens": 4, "chunk_size": 5}
    fresh = run_grid(tiny, jobs, **kw)
    real, writes = os.replace, []

    def full_on_the_second_part(src, dst):
        if "part-" in str(dst):
            writes.append(dst)
            if len(writes) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", full_on_the_second_part)
    with pytest.raises(OutputPathError, match="disk is full") as caught:
        run_grid(tiny, jobs, out_dir=tmp_path, **kw)
    monkeypatch.undo()
    assert "\n" not in str(caught.value)
    assert (
        sorted(p.name for p in tmp_path.iterdir())[0] == GRID_MANIFEST and len(list(tmp_path.iterdir())) == 2
    )
    resumed_by = Counting(tiny)
    pd.testing.assert_frame_equal(run_grid(tiny, jobs, out_dir=tmp_path, executor=resumed_by, **kw), fresh)
    assert resumed_by.sizes == [5, 2], "only the chunks not on disk were generated"


def test_each_steering_knob_and_the_prompt_change_the_row_key(tiny):
    vector = _vector(tiny)
    base = Intervention(vector, 1, coef=4.0, unit="absolute")
    variants = {
        "layer": dataclasses.replace(base, layer=2),
        "mode": dataclasses.replace(base, mode="set_projection"),
        "coef": dataclasses.replace(base, coef=5.0),
        "unit": dataclasses.replace(base, unit="diff_norm"),
        "positions": dataclasses.replace(base, positions="prompt"),
        "decay_tokens": dataclasses.replace(base, decay_tokens=3),
        "norm_preserving": dataclasses.replace(base, norm_preserving=True),
        "schedule": dataclasses.replace(base, schedule=DynamicStrength()),
        "schedule setting": dataclasses.replace(base, schedule=DynamicStrength(top_p=0.5)),
        "direction": Intervention(_vector(tiny) * -1.0, 1, coef=4.0, unit="absolute"),
    }
    keys = runner._Keys()
    job = Job("s", "p0", PROMPTS[0], (base,))
    found = {name: keys.row(dataclasses.replace(job, interventions=(iv,))) for name, iv in variants.items()}
    found["prompt"] = keys.row(dataclasses.replace(job, prompt=PROMPTS[1]))
    found["base"] = keys.row(job)
    assert len(set(found.values())) == len(found), found
    assert keys.row(Job("renamed", "other id", PROMPTS[0], (base,), {"knob": 1})) == found["base"]
