"""The command line: bad arguments and files end in exit code 2 and one line on stderr, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from tests.synthetic_vectors import directions
from workbench.cli import app
from workbench.vectors import SteeringVector


@pytest.fixture(scope="module")
def vec() -> SteeringVector:
    """A vector that fits the tiny model (4 layers, d_model 64)."""
    return SteeringVector.from_directions(directions(), model_name="tiny-llama", n_layers=4)


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "results"
    path.write_text("I am a file, not a folder")
    return path


def run_cli(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def test_cli_vector_show_missing_file(tmp_path):
    assert "no such file" in run_cli("vector", "show", tmp_path / "missing.safetensors")


def test_cli_vector_show_non_vector(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    assert "not a steering vector" in run_cli("vector", "show", path)


def test_cli_vector_build_unknown_dataset(tmp_path):
    assert "unknown dataset 'nope'" in run_cli("vector", "build", "nope", "--out", tmp_path / "v.safetensors")


def test_cli_vector_build_unknown_split(tmp_path):
    line = run_cli("vector", "build", "json_format", "--split", "dev", "--out", tmp_path / "v.safetensors")
    assert "unknown split 'dev'" in line


def test_cli_vector_build_unknown_method(tmp_path):
    line = run_cli("vector", "build", "json_format", "--method", "lda", "--out", tmp_path / "v.safetensors")
    assert "unknown method 'lda'" in line


def test_cli_vector_build_unknown_position(tmp_path):
    line = run_cli("vector", "build", "json_format", "--position", "first", "-o", tmp_path / "v.safetensors")
    assert "unknown position 'first'" in line


def test_cli_vector_build_out_under_a_file(a_file):
    line = run_cli("vector", "build", "json_format", "--out", a_file / "v.safetensors")
    assert "is a file, not a folder" in line


def test_cli_steer_with_a_tampered_vector(tmp_path, vec):
    path = vec.save(tmp_path / "v.safetensors")
    path.write_bytes(path.read_bytes().replace(b"tiny-llama", b"tiny-llamx"))
    assert "checksum mismatch" in run_cli("steer", "Hello", "--vector", path, "--layer", "1")


def test_cli_steer_with_a_nan_coefficient(tmp_path, vec):
    path = vec.save(tmp_path / "v.safetensors")
    assert "finite" in run_cli("steer", "Hello", "-v", path, "-l", "1", "--coef", "nan")


def test_cli_steer_with_an_unknown_mode(tmp_path, vec):
    path = vec.save(tmp_path / "v.safetensors")
    assert "unknown mode" in run_cli("steer", "Hello", "-v", path, "-l", "1", "--mode", "double")


def test_cli_steer_with_a_layer_the_vector_lacks(tmp_path, vec):
    path = vec.save(tmp_path / "v.safetensors")
    assert "no direction for layer 9" in run_cli("steer", "Hello", "-v", path, "-l", "9")


def test_cli_steer_with_an_unknown_model(tmp_path, vec):
    path = vec.save(tmp_path / "v.safetensors")
    line = run_cli("steer", "Hello", "-v", path, "-l", "1", "--model", "no-such-model-xyz")
    assert "not a known spec" in line


def test_cli_vector_export_under_a_file(tmp_path, a_file):
    path = SteeringVector.from_directions(directions(), layers=(1, 2, 3, 4)).save(tmp_path / "v.safetensors")
    assert "cannot write" in run_cli("vector", "export", path, "--out", a_file / "v.gguf")
