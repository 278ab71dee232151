"""A full disk at each write site: one line, nothing half-written under a final name, the next run resumes.

Two injections: ``os.replace`` failing with ENOSPC (the rename after the data is complete), and a real
partial write by the native writers themselves (safetensors' Rust writer, pyarrow), cut off by a file-size
limit (RLIMIT_FSIZE: the kernel refuses the write past the limit with EFBIG, as ENOSPC refuses it on a
full disk). The other sites are tested beside their code: the fetch (test_fetch.py), the dequantized model
cache (test_models.py), the activation cache (test_faults_caches.py), grid parts half-way through a grid
(test_runner.py), the judge's cache (test_reference.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import secrets
import signal

import pandas as pd
import pytest
import torch
from pandas.testing import assert_frame_equal

from tests.conftest import PROMPTS
from workbench.errors import OutputPathError
from workbench.runner import GRID_MANIFEST, Job, run_grid
from workbench.vectors import SteeringVector


@contextlib.contextmanager
def file_size_limit(limit: int):
    """Writes past ``limit`` bytes of any file fail (EFBIG) inside the block, as on a disk that fills up."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the error, not the signal that kills
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def _full(*args):
    raise OSError(errno.ENOSPC, "No space left on device")


def _vector(d_model: int) -> SteeringVector:
    rows = torch.randn(4, d_model, generator=torch.Generator().manual_seed(0))
    return SteeringVector.from_directions(rows, n_layers=4)


def test_a_vector_save_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "v.safetensors"
    old = _vector(64).save(path).read_bytes()
    big = _vector(200_000)  # 3.2 MB of float32: the Rust writer is cut off at 1 MB
    with file_size_limit(1 << 20), pytest.raises(OutputPathError, match="disk is full") as caught:
        big.save(path)
    assert "\n" not in str(caught.value)
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", _full)
        with pytest.raises(OutputPathError, match="disk is full"):
            big.save(path)
    assert path.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors"]
    big.save(path)  # space again: the same call succeeds
    assert torch.equal(SteeringVector.load(path).directions, big.directions)


def test_a_grid_part_cut_off_by_a_full_disk_is_never_read_and_the_rerun_resumes(tiny, tmp_path):
    note = {"note": secrets.token_urlsafe(1_500_000)}  # 2 MB of incompressible text in the second chunk
    jobs = [Job("none", f"p{i}", p, knobs=note if i == 2 else {}) for i, p in enumerate(PROMPTS)]
    kw = {"max_new_tokens": 3, "chunk_size": 2}
    fresh = run_grid(tiny, jobs, **kw)
    with file_size_limit(1 << 20), pytest.raises(OutputPathError, match="disk is full") as caught:
        run_grid(tiny, jobs, out_dir=tmp_path, **kw)
    assert "\n" not in str(caught.value)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == GRID_MANIFEST and len(names) == 2, "the first part whole, the second never named"
    assert len(pd.read_parquet(tmp_path / names[1])) == 2
    assert_frame_equal(run_grid(tiny, jobs, out_dir=tmp_path, **kw), fresh)
