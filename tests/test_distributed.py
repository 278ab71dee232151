"""Grids on a local Ray cluster with 2 CPU workers: same rows as in-process (a sweep, a study run under the
cluster as default executor), a killed worker, clean shutdown.

One cluster serves the module (starting workers costs seconds each); the last test shuts it down by error.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import pandas as pd
import pytest
import torch
from pandas.testing import assert_frame_equal
from typer.testing import CliRunner

from tests.conftest import PROMPTS, build_tiny_hf
from workbench.cli import app
from workbench.errors import InvalidArgumentError
from workbench.models import load_model
from workbench.runner import Chunk, Job, LocalExecutor, run_grid, using_executor
from workbench.steering import Intervention
from workbench.vectors import SteeringVector

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")
from workbench.distributed import RayExecutor  # noqa: E402

GRID = {"max_new_tokens": 10, "chunk_size": 3, "batch_size": 3}


@pytest.fixture(scope="module")
def writer_dir(tmp_path_factory):
    """The tiny model as a directory, kept from writing only whitespace so rows differ between settings."""
    hf, tokenizer = build_tiny_hf()
    ids = tokenizer.get_vocab().values()
    hf.generation_config.suppress_tokens = [i for i in ids if not tokenizer.decode([i]).strip()]
    folder = tmp_path_factory.mktemp("writer_hf")
    hf.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def driver(writer_dir):
    return load_model(writer_dir, device="cpu")


@pytest.fixture(scope="module")
def jobs(driver):
    rows = torch.randn(driver.n_layers, driver.d_model, generator=torch.Generator().manual_seed(5))
    vector = SteeringVector.from_directions(rows, n_layers=driver.n_layers)
    settings = {
        "none": (),
        "add@1x6": (Intervention(vector, 1, coef=6.0),),
        "ablate@2": (Intervention(vector, 2, "ablate"),),
    }
    return [Job(name, f"p{i}", p, ivs) for name, ivs in settings.items() for i, p in enumerate(PROMPTS)]


@pytest.fixture(scope="module")
def local_rows(driver, jobs):
    return run_grid(driver, jobs, **GRID)


@pytest.fixture(scope="module")
def executor(writer_dir):
    with RayExecutor(writer_dir, workers=2, threads_per_worker=1, load_kwargs={"device": "cpu"}) as ex:
        yield ex


def test_two_ray_workers_give_the_rows_of_one_process(driver, jobs, local_rows, executor):
    rows = run_grid(driver, jobs, executor=executor, **GRID)
    assert_frame_equal(rows, local_rows)
    assert len(set(rows["response"])) > 3, "steering changed some answers (the grid is not trivial)"
    assert len(set(executor.pids)) == 2 and os.getpid() not in executor.pids


def test_a_killed_worker_is_restarted_by_ray_and_rows_are_unchanged(driver, jobs, local_rows, executor):
    before = executor.pids
    killed: list[int] = []

    def kill_once(part):
        if not killed:
            os.kill(before[0], signal.SIGKILL)
            killed.append(before[0])

    rows = run_grid(driver, jobs, executor=executor, on_chunk=kill_once, **GRID)
    assert killed and not psutil.pid_exists(before[0])
    assert_frame_equal(rows, local_rows)
    after = executor.pids
    assert after[0] != before[0] and after[1] == before[1], "Ray restarted exactly the killed actor"


def test_a_study_under_the_ray_default_sends_every_grid_of_its_model_to_ray(
    writer_dir, driver, executor, tmp_path, monkeypatch
):
    from workbench.studies.report import run_report

    assert executor.serves(driver) and not executor.serves(dataclasses.replace(driver, weights_hash="0" * 64))
    assert not executor.serves(dataclasses.replace(driver, source="gemma3-270m"))
    study = {"quick": True, "studies": ["length"], "progress": False}
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "local-cache"))
    run_report(writer_dir, out_dir=tmp_path / "local", **study)
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "ray-cache"))  # nothing cached: all generated anew

    def refuse(self, chunks):
        raise AssertionError("a grid of the executor's model ran in process")

    sent, ray_map = [], executor.map
    monkeypatch.setattr(LocalExecutor, "map", refuse)
    monkeypatch.setattr(executor, "map", lambda chunks: sent.append(len(chunks)) or ray_map(chunks))
    with using_executor(executor):
        run_report(writer_dir, out_dir=tmp_path / "ray", **study)
    assert sent and sum(sent) >= 2, "the study's grids went to the workers"
    rows = [pd.read_parquet(tmp_path / run / "length" / "rows.parquet") for run in ("local", "ray")]
    assert_frame_equal(*rows)
    assert rows[0]["response"].nunique() > 1


def test_an_error_in_a_worker_is_raised_and_leaves_no_ray_process(executor):
    assert len(executor.pids) == 2  # the cluster and its workers are up
    started = psutil.Process().children(recursive=True)
    assert any("raylet" in " ".join(p.cmdline()) for p in started if _alive(p))
    with pytest.raises(InvalidArgumentError, match="max_new_tokens"):
        list(executor.map([Chunk(["Name a fruit."], [[]], max_new_tokens=0)]))
    assert not ray.is_initialized()
    _assert_gone(started)


def test_sweep_command_with_ray_writes_the_local_rows_and_stops_its_cluster(writer_dir, tmp_path):
    assert not ray.is_initialized(), "the module's cluster is down (--ray local starts its own)"
    args = ["sweep", "json_format", "--layers", "1", "--coefs", "4", "--n-train", "4", "--n-validation", "3"]
    args += ["--max-new-tokens", "6", "--model", writer_dir]
    runner = CliRunner()
    local = runner.invoke(app, [*args, "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    before = set(psutil.Process().children(recursive=True))
    on_ray = runner.invoke(app, [*args, "--out", str(tmp_path / "ray"), "--ray", "local", "--workers", "2"])
    assert on_ray.exit_code == 0, on_ray.output
    rows = [pd.read_parquet(tmp_path / run / "rows.parquet") for run in ("local", "ray")]
    assert_frame_equal(*rows)
    assert not ray.is_initialized()
    _assert_gone(set(psutil.Process().children(recursive=True)) - before)


def _alive(process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _assert_gone(processes, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while (alive := [p for p in processes if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive, f"processes left behind: {[p.name() for p in alive]}"


def test_bad_worker_settings_are_refused_before_anything_starts():
    for kwargs in ({"workers": 0}, {"threads_per_worker": 0}, {"workers": True}):
        with pytest.raises(InvalidArgumentError, match="positive integer"):
            RayExecutor("x", **kwargs)
    for args in (["sweep", "json_format", "--layers", "1"], ["study", "length"], ["report"]):
        result = CliRunner().invoke(app, [*args, "--workers", "2"])
        assert result.exit_code == 2 and "--workers needs --ray" in result.output, args
    assert not ray.is_initialized()
