"""The command line: every command's help; bad arguments and files end in exit code 2 and one line on
stderr, no traceback; collect, sweep and layers write run directories."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from tests.synthetic_vectors import directions
from workbench.cli import app
from workbench.size import Size
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


# ---- every command on the tiny model --------------------------------------------------------------------


@pytest.fixture
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "studies_cache"))


COMMANDS = [["report"], ["study"], ["publish"], ["collect"], ["layers"], ["sweep"], ["models"], ["steer"]]
COMMANDS += [["bench"]]
COMMANDS += [["vector", sub] for sub in ("build", "show", "export")]


@pytest.mark.usefixtures("_cache")
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_cli_help(command):
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.mark.usefixtures("_cache")
@pytest.mark.parametrize(
    "args",
    [
        ["study", "nonsense"],
        ["report", "--size", "huge"],
        ["publish", "no-such-run", "--to", "pages"],
        ["study", "format", "--size", "huge", "--dtype", "bfloat16"],
        ["sweep", "json_format", "--layers", "a,b"],
        ["sweep", "json_format", "--layers", "1", "--coefs", ""],
        ["collect", "json_format", "--position", "middle"],
    ],
    ids=lambda a: " ".join(a),
)
def test_cli_refuses_bad_arguments_before_loading(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr


def _manifest_of(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["schema"] == 1 and manifest["model"]["fingerprint"] and manifest["versions"]["torch"]
    assert manifest["started"] <= manifest["finished"] and manifest["timings"]["load_model"] >= 0
    assert manifest["executor"]["kind"] == "in process"
    return manifest


@pytest.mark.usefixtures("_cache")
def test_cli_collect_sweep_and_layers_write_run_directories(tiny_dir, tmp_path):
    from workbench.activations import Activations

    runner = CliRunner()
    acts = tmp_path / "collect"
    args = ["collect", "json_format", "--split", "validation", "--model", tiny_dir, "--out", str(acts)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    pos, neg = (Activations.load(acts / f"{role}.safetensors") for role in ("positive", "negative"))
    assert pos.tensor.shape == neg.tensor.shape and pos.layers == (0, 1, 2, 3)
    assert pos.settings["dataset"] == "json_format"
    assert _manifest_of(acts)["configuration"]["split"] == "validation"

    run = tmp_path / "sweep"
    args = [
        "sweep",
        "json_format",
        "--layers",
        "1,2",
        "--coefs=-1,1",
        "--n-train",
        "4",
        "--n-validation",
        "2",
    ]
    result = runner.invoke(app, [*args, "--max-new-tokens", "3", "--model", tiny_dir, "--out", str(run)])
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(run / "summary.csv")
    assert list(summary["config"]) == ["none", "add@1x-1", "add@1x1", "add@2x-1", "add@2x1"]
    assert (run / "sweep.png").exists() and (run / "vector.safetensors").exists()
    assert json.loads((run / "choice.json").read_text())["config"] in set(summary["config"])
    assert _manifest_of(run)["configuration"]["coefs"] == [-1.0, 1.0]

    run = tmp_path / "layers"
    result = runner.invoke(
        app,
        ["layers", "json_format", "--size", "quick", "--coefs", "2", "--model", tiny_dir, "--out", str(run)],
    )
    assert result.exit_code == 0, result.output
    layers = pd.read_csv(run / "layers.csv")
    quick_layers = len(
        Size.quick().depths
    )  # --size quick sweeps as many layers as a quick study has candidates
    assert list(layers["layer"]) == [0, 1, 2, 3] and layers["swept"].sum() == quick_layers
    assert (run / "layers.png").exists() and (run / "signals.csv").exists()
    assert _manifest_of(run)["configuration"]["top_k"] == quick_layers


@pytest.mark.usefixtures("_cache")
def test_cli_steer_coef_and_sweep_coefs_add_the_same_amount(tiny_dir, tmp_path, monkeypatch):
    """`steer --coef c` and `sweep --coefs c` resolve c in one default unit (diff_norm), named in both
    --help texts, so the same number adds the same residual amount."""
    from workbench import steering

    runner = CliRunner()
    for command in ("steer", "sweep"):
        text = re.sub(r"[│\s]+", " ", runner.invoke(app, [command, "--help"]).output)
        assert "diff_norm" in text and "mean-difference norm" in text, text
    added: list[float] = []
    build = steering._build_slots

    def spy(rows):
        slots = build(rows)
        added.extend(float(a) for layer in slots.values() for slot in layer for a in slot.amount if a)
        return slots

    monkeypatch.setattr(steering, "_build_slots", spy)
    run = tmp_path / "sweep"
    args = ["sweep", "json_format", "--layers", "1", "--coefs", "2", "--n-train", "4", "--n-validation", "1"]
    result = runner.invoke(app, [*args, "--max-new-tokens", "2", "--model", tiny_dir, "--out", str(run)])
    assert result.exit_code == 0, result.output
    swept, added[:] = set(added), []
    args = ["steer", "hi", "--vector", str(run / "vector.safetensors"), "--layer", "1", "--coef", "2"]
    result = runner.invoke(app, [*args, "--max-new-tokens", "2", "--model", tiny_dir])
    assert result.exit_code == 0, result.output
    vector = SteeringVector.load(run / "vector.safetensors")
    (amount,) = swept
    assert set(added) == {amount} and amount == pytest.approx(2 * vector.stats[1].diff_norm)
