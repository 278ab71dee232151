"""The one grid runner: fixed chunks, raw parts on disk, resume of missing chunks only, scores on read."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from tests.conftest import PROMPTS, build_tiny_model
from workbench.errors import InvalidArgumentError
from workbench.runner import GRID_MANIFEST, Job, LocalExecutor, run_grid, using_executor
from workbench.steering import Intervention
from workbench.vectors import SteeringVector


def _vector(model) -> SteeringVector:
    rows = torch.randn(model.n_layers, model.d_model, generator=torch.Generator().manual_seed(3))
    return SteeringVector.from_directions(rows, n_layers=model.n_layers)


def _jobs(model) -> list[Job]:
    vector = _vector(model)
    settings = {
        "none": (),
        "add@1x4": (Intervention(vector, 1, coef=4.0),),
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

    class Backwards:
        def map(self, chunks):
            local = LocalExecutor(tiny)
            yield from reversed(list(local.map(chunks)))

    kw = {"max_new_tokens": 4, "chunk_size": 3}
    pd.testing.assert_frame_equal(
        run_grid(tiny, jobs, executor=Backwards(), **kw), run_grid(tiny, jobs, **kw)
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
