"""The behavioural sweep: resume after an interruption (in process, and after SIGKILL of the command), the
selection rule, grids and config names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.datasets import ContrastiveSet, load
from workbench.errors import InvalidArgumentError
from workbench.sweeps import NONE, Config, choose_stolfo, grid, per_layer, summarize_sweep, sweep
from workbench.vectors import SteeringVector


def summary_frame(rows: list[tuple[str, float, float]]) -> pd.DataFrame:
    """(config, target rate, degeneration) rows; config 'add@L xC' is parsed into layer and coef."""
    out = []
    for config, rate, degeneration in rows:
        layer, coef = (None, np.nan) if config == NONE else map(float, config[4:].split("x"))
        out.append(
            {
                "config": config,
                "layer": None if layer is None else int(layer),
                "mode": NONE if layer is None else "add",
                "coef": coef,
                "target_rate": rate,
                "degeneration": degeneration,
                "n": 10,
            }
        )
    return pd.DataFrame(out).astype({"layer": "Int64"})


def test_choose_takes_the_best_config_that_degenerates_no_more_than_no_steering():
    summary = summary_frame(
        [
            (NONE, 0.2, 0.1),
            ("add@2x1", 0.5, 0.1),
            ("add@2x4", 0.9, 0.6),  # best target rate, but degenerates more: not eligible
            ("add@4x1", 0.6, 0.0),
            ("add@4x2", 0.6, 0.0),  # tie: the smaller coefficient wins
        ]
    )
    choice = choose_stolfo(summary)
    assert (choice.config, choice.layer, choice.coef) == ("add@4x1", 4, 1.0)
    assert choice.target_rate == 0.6 and choice.baseline_target_rate == 0.2
    layers = per_layer(summary).set_index("layer")
    assert layers.loc[2, "target_rate"] == 0.5 and layers.loc[2, "max_target_rate"] == 0.9
    assert layers.loc[4, "coef"] == 1.0 and layers["steers"].all()


@pytest.mark.parametrize(
    "rows",
    [
        [(NONE, 0.3, 0.0), ("add@2x1", 0.8, 0.1), ("add@4x1", 0.9, 0.5)],  # all degenerate more
        [(NONE, 0.3, 0.2), ("add@2x1", 0.3, 0.0), ("add@4x1", 0.1, 0.1)],  # none beats no steering
    ],
)
def test_choose_can_pick_no_steering(rows):
    choice = choose_stolfo(summary_frame(rows))
    assert choice.config == NONE and choice.layer is None and choice.coef is None
    assert choice.target_rate == 0.3
    assert not per_layer(summary_frame(rows))["steers"].any()


def test_choose_needs_the_unsteered_reference():
    with pytest.raises(InvalidArgumentError):
        choose_stolfo(summary_frame([("add@2x1", 0.5, 0.0)]))


def random_vector(model):
    directions = torch.randn(model.n_layers, model.d_model, generator=torch.Generator().manual_seed(0))
    return SteeringVector.from_directions(directions, n_layers=model.n_layers)


def small_set() -> ContrastiveSet:
    validation = load("json_format", "validation")
    return ContrastiveSet(validation.name, validation.split, validation.items[:3])


def test_sweep_resumes_after_an_interruption_without_redoing_rows(tiny, tmp_path):
    vector, items = random_vector(tiny), small_set()
    configs = grid([1, 2], coefs=(1.0, 4.0))
    assert [c.name for c in configs] == [NONE, "add@1x1", "add@1x4", "add@2x1", "add@2x4"]
    kw = {"max_new_tokens": 4, "batch_size": 8, "chunk_size": 4}
    whole = sweep(tiny, vector, items, configs, out_dir=tmp_path / "whole", **kw)
    assert len(whole) == 15 and list(whole["config"].unique()) == [c.name for c in configs]
    assert whole["on_target"].dtype == bool and whole["degenerate"].dtype == bool
    assert whole.loc[whole["config"] == NONE, "layer"].isna().all()

    def interrupt(chunk):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep(tiny, vector, items, configs, out_dir=tmp_path / "resumed", on_chunk=interrupt, **kw)
    assert len(list((tmp_path / "resumed").glob("part-*.parquet"))) == 1
    redone: list[int] = []
    resumed = sweep(
        tiny,
        vector,
        items,
        configs,
        out_dir=tmp_path / "resumed",
        on_chunk=lambda c: redone.append(len(c)),
        **kw,
    )
    assert sum(redone) == 15 - 4  # the first chunk was not generated again
    pd.testing.assert_frame_equal(resumed, whole)
    pd.testing.assert_frame_equal(sweep(tiny, vector, items, configs, **kw), whole)

    rerun: list[int] = []
    again = sweep(
        tiny, vector, items, configs, out_dir=tmp_path / "whole", on_chunk=lambda c: rerun.append(1), **kw
    )
    assert rerun == [] and again.equals(whole)
    summary = summarize_sweep(whole)
    assert list(summary["config"]) == [c.name for c in configs] and summary["n"].eq(3).all()
    with pytest.raises(InvalidArgumentError, match="other settings"):
        sweep(tiny, vector, items, configs, out_dir=tmp_path / "whole", **{**kw, "max_new_tokens": 5})
    with pytest.raises(InvalidArgumentError, match="unsteered"):
        sweep(tiny, vector, items, configs[1:], **kw)


def test_grid_and_config_names():
    assert [c.name for c in grid([3], mode="set_projection")] == [NONE, "set_projection@3"]
    assert Config().name == NONE
    with pytest.raises(InvalidArgumentError):
        grid([1], mode="add", coefs=())


# ---- killed with SIGKILL half-way and started again: no data loss ----------------------------------------

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
    assert "response" in raw and not {"on_target", "degenerate"} & set(raw.columns)  # scores are never stored

    _finish(_sweep(tiny_dir, killed))
    resumed = pd.read_parquet(killed / "rows.parquet")
    pd.testing.assert_frame_equal(resumed, expected)
    # The chunks saved before the kill were read back, not written again, and none is missing.
    assert {p: p.stat().st_mtime_ns for p in parts} == saved
    assert len(list((killed / "parts").glob("part-*.parquet"))) == 5


def test_stolfos_gate_keeps_configs_with_more_low_perplexity_answers_from_winning(tiny):
    """Stolfo et al.'s gate: an answer whose perplexity alone under the reference is below 2.5 is
    repetitive; a config with more of them than no steering cannot win, whatever its target rate."""
    rows = [("none", 0.2, 0.0), ("add@1x2", 0.9, 0.0), ("add@2x2", 0.6, 0.0)]
    summary = summary_frame(rows).assign(low_perplexity=[0.0, 0.5, 0.0])
    assert choose_stolfo(summary).config == "add@1x2"  # the text rule alone lets the looping config win
    assert choose_stolfo(summary, "perplexity").config == "add@2x2"
    assert choose_stolfo(summary.assign(degeneration=[0.0, 0.0, 0.5]), "both").config == "none"
    with pytest.raises(InvalidArgumentError, match="unknown gate"):
        choose_stolfo(summary, "loudness")
    with pytest.raises(InvalidArgumentError, match="reference model"):
        choose_stolfo(summary.drop(columns="low_perplexity"), "perplexity")
    vector = SteeringVector.from_directions(torch.randn(4, 64), range(4))
    data = load("json_format", "validation").head(2)
    swept = sweep(tiny, vector, data, [Config(), Config(1, "add", 3.0)], max_new_tokens=4, reference=tiny)
    assert swept["reference_perplexity"].gt(0).all() or swept["response"].eq("").any()
    assert {"low_perplexity", "median_reference_perplexity"} <= set(summarize_sweep(swept))
