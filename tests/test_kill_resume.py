"""No data loss: a sweep killed with SIGKILL half-way and started again ends with the uninterrupted table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

WORKBENCH = str(Path(sys.executable).with_name("workbench"))
# 4 layers x 6 coefficients + none = 25 configs x 24 prompts = 600 rows: five chunks of 128 rows.
SWEEP = ["sweep", "json_format", "--layers", "0,1,2,3", "--coefs=-4,-2,-1,1,2,4"]
SIZES = ["--n-train", "4", "--n-validation", "24", "--max-new-tokens", "12"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _sweep(model: str, out: Path) -> subprocess.Popen:
    args = [WORKBENCH, *SWEEP, *SIZES, "--model", model, "--out", str(out)]
    return subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-2000:]


def test_sigkill_half_way_then_rerun_gives_the_uninterrupted_rows(tiny_dir, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _finish(_sweep(tiny_dir, whole))
    expected = pd.read_parquet(whole / "rows.parquet")
    assert len(expected) == 600

    process = _sweep(tiny_dir, killed)
    deadline = time.monotonic() + 300
    while not list((killed / "parts").glob("part-*.parquet")):
        assert process.poll() is None, "the sweep ended before its first chunk was saved"
        assert time.monotonic() < deadline, "no chunk was saved within 300 s"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    parts = list((killed / "parts").glob("part-*.parquet"))
    assert 1 <= len(parts) < 5, "the kill should land between the first and the last chunk"
    assert not (killed / "rows.parquet").exists()
    saved = {p: p.stat().st_mtime_ns for p in parts}
    raw = pd.read_parquet(parts[0])
    assert "response" in raw and not {"follows", "degenerate"} & set(raw.columns)  # scores are never stored

    _finish(_sweep(tiny_dir, killed))
    resumed = pd.read_parquet(killed / "rows.parquet")
    pd.testing.assert_frame_equal(resumed, expected)
    # The chunks saved before the kill were read back, not written again, and none is missing.
    assert {p: p.stat().st_mtime_ns for p in parts} == saved
    assert len(list((killed / "parts").glob("part-*.parquet"))) == 5
