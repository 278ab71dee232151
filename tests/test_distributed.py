"""Grids on a local Ray cluster with 2 CPU workers: same rows as in-process (a sweep, a study run under the
cluster as default executor), a killed worker, clean shutdown.

One cluster serves the module (starting workers costs seconds each); the last test shuts it down by error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from pandas.testing import assert_frame_equal
from typer.testing import CliRunner

from tests.conftest import PROMPTS, build_tiny_hf
from workbench.cli import app
from workbench.errors import InvalidArgumentError
from workbench.interventions import Intervention
from workbench.models import load_model
from workbench.runner import (
    GRID_MANIFEST,
    Chunk,
    FingerprintMismatchError,
    Job,
    LocalExecutor,
    run_grid,
    using_executor,
)
from workbench.vectors import SteeringVector

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")
from workbench.distributed import RayExecutor, RayWorkerError  # noqa: E402

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


def grid_jobs(driver) -> list[Job]:
    """The module's grid: three settings × five prompts (also built by the killed driver's process)."""
    rows = torch.randn(driver.n_layers, driver.d_model, generator=torch.Generator().manual_seed(5))
    vector = SteeringVector.from_directions(rows, n_layers=driver.n_layers)
    settings = {
        "none": (),
        "add@1x6": (Intervention(vector, 1, coef=6.0, unit="absolute"),),
        "ablate@2": (Intervention(vector, 2, "ablate"),),
    }
    return [Job(name, f"p{i}", p, ivs) for name, ivs in settings.items() for i, p in enumerate(PROMPTS)]


@pytest.fixture(scope="module")
def jobs(driver):
    return grid_jobs(driver)


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
    facts = executor.describe()  # for the run record: the workers as they reported themselves
    assert facts["kind"] == "ray" and facts["address"] == "local"
    assert sorted(w["pid"] for w in facts["workers"]) == sorted(executor.pids)
    assert {(w["fingerprint"], w["device"], w["dtype"]) for w in facts["workers"]} == {
        (driver.fingerprint, "cpu", "float32")
    }


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
    recorded = {w["pid"] for w in executor.describe()["workers"]}
    assert {*before, *after} <= recorded, "the record names the killed worker and its replacement"


def test_a_driver_of_another_dtype_is_refused_unless_asked_and_then_rows_are_the_workers(
    writer_dir, driver, jobs, local_rows, executor, tmp_path, monkeypatch
):
    """float32 workers, a bfloat16 driver: the mix the fingerprint used to hide."""
    half = load_model(writer_dir, device="cpu", dtype="bfloat16")
    assert executor.serves(half), "same spec and weights: the workers are its model, in another dtype"
    with pytest.raises(FingerprintMismatchError, match=r"float32 on cpu.*bfloat16 on cpu") as caught:
        run_grid(half, jobs, executor=executor, out_dir=tmp_path, **GRID)
    assert "\n" not in str(caught.value) and not list(tmp_path.iterdir())
    with using_executor(executor), pytest.raises(FingerprintMismatchError):
        run_grid(half, jobs, **GRID)  # the default executor refuses too, rather than running in process
    monkeypatch.setattr(executor, "allow_other_fingerprint", True)
    rows = run_grid(half, jobs, executor=executor, out_dir=tmp_path, **GRID)
    assert_frame_equal(rows, local_rows)  # the float32 workers' rows
    manifest = json.loads((tmp_path / GRID_MANIFEST).read_text())
    assert manifest["fingerprint"] == driver.fingerprint, "filed under the model that produced them"

    def nothing_to_run(self, chunks):
        assert not chunks, "the float32 driver reads the workers' rows back"
        yield from ()

    monkeypatch.setattr(LocalExecutor, "map", nothing_to_run)
    assert_frame_equal(run_grid(driver, jobs, out_dir=tmp_path, **GRID), local_rows)
    with pytest.raises(InvalidArgumentError, match="fingerprint differ"):
        run_grid(half, jobs, out_dir=tmp_path, **GRID)  # a bfloat16 run never reads float32 rows


def test_workers_on_another_device_or_of_mixed_models_are_refused_in_one_line(driver, executor, monkeypatch):
    """One GPU, two workers: Ray gave them none and they loaded on the CPU (faked: the facts they report)."""
    cpu = executor._workers()[0]
    gpu = {**cpu, "fingerprint": cpu["fingerprint"].replace("-cpu", "-cuda"), "device": "cuda:0"}
    monkeypatch.setattr(executor, "_workers", lambda: [gpu, gpu])
    with pytest.raises(FingerprintMismatchError, match=r"on cuda:0.*on cpu.*allow_other_fingerprint"):
        executor.fingerprint_for(driver)
    monkeypatch.setattr(executor, "_workers", lambda: [cpu, gpu])
    with pytest.raises(FingerprintMismatchError, match="different models") as caught:
        executor.fingerprint_for(driver)
    assert "\n" not in str(caught.value)


def test_a_study_under_the_ray_default_sends_every_grid_of_its_model_to_ray(
    writer_dir, driver, executor, tmp_path, monkeypatch
):
    from workbench.studies.report import run_report

    assert executor.serves(driver) and not executor.serves(dataclasses.replace(driver, weights_hash="0" * 64))
    assert not executor.serves(dataclasses.replace(driver, source="gemma3-270m"))
    study = {"size": "quick", "studies": ["length"], "progress": False}
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


def test_a_worker_that_comes_back_as_another_model_stops_the_grid_before_its_rows(
    driver, jobs, local_rows, executor, tmp_path, monkeypatch
):
    """A restarted worker reports other facts (another node, another device): its chunk is not filed."""
    real, seen = executor._result, []

    def second_chunk_from_elsewhere(ray, ref):
        value = real(ray, ref)
        if isinstance(value, tuple):
            seen.append(1)
            if len(seen) == 2:
                worker, responses = value
                return {**worker, "fingerprint": worker["fingerprint"] + "-elsewhere"}, responses
        return value

    monkeypatch.setattr(executor, "_result", second_chunk_from_elsewhere)
    with pytest.raises(RayWorkerError, match="came back as") as caught:
        run_grid(driver, jobs, executor=executor, out_dir=tmp_path, **GRID)
    assert "\n" not in str(caught.value)
    assert len(list(tmp_path.glob("part-*.parquet"))) == 1, "only the first chunk was filed"
    monkeypatch.undo()
    assert_frame_equal(run_grid(driver, jobs, out_dir=tmp_path, **GRID), local_rows)


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


KILLED_DRIVER = """
import sys, time
sys.path.insert(0, {root!r})
from tests.test_distributed import GRID, grid_jobs
from workbench.distributed import RayExecutor
from workbench.models import load_model
from workbench.runner import run_grid

driver = load_model({model!r}, device="cpu")

def stop(part):
    print("PART", flush=True)
    time.sleep(600)

with RayExecutor({model!r}, workers=2, threads_per_worker=1, load_kwargs={{"device": "cpu"}}) as executor:
    run_grid(driver, grid_jobs(driver), executor=executor, out_dir={out!r}, on_chunk=stop, **GRID)
"""


@pytest.mark.slow  # about 30 s: a fresh process starts its own cluster and two workers
def test_a_driver_killed_half_way_through_a_ray_grid_loses_nothing_and_the_rerun_resumes(
    writer_dir, driver, jobs, local_rows, tmp_path
):
    """SIGKILL of the driver after its first part: the part is whole, no temporary file is left, its
    cluster (GCS, raylet, workers) ends with it, and the rerun generates only the missing chunks and gives
    the rows of one process. Ray's dashboard and runtime-env agents outlive a killed driver (measured: over
    60 s, orphaned); the test ends them."""
    out = tmp_path / "grid"
    script = KILLED_DRIVER.format(root=str(Path(__file__).parents[1]), model=writer_dir, out=str(out))
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout.readline().strip() == "PART"
        session = {p: p.name() for p in psutil.process_iter() if _in_session(p, process.pid)}
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        cluster = {p: name for p, name in session.items() if p.pid != process.pid and "Agent" not in name}
        assert "raylet" in cluster.values() and any("_Worker" in name for name in cluster.values())
        _assert_gone(list(cluster))
    finally:
        for left in (p for p in psutil.process_iter() if _in_session(p, process.pid)):
            left.kill()  # only this test's processes: its driver's session
    assert sorted(p.name for p in out.iterdir())[0] == GRID_MANIFEST and len(list(out.iterdir())) == 2
    sizes = []

    class Counting(LocalExecutor):
        def map(self, chunks):
            sizes.extend(len(c.prompts) for c in chunks)
            yield from super().map(chunks)

    assert_frame_equal(run_grid(driver, jobs, out_dir=out, executor=Counting(driver), **GRID), local_rows)
    assert sizes == [3, 3, 3, 3], "four of the five chunks were missing"


def _in_session(process, session: int) -> bool:
    try:
        return os.getsid(process.pid) == session
    except (ProcessLookupError, PermissionError):
        return False
