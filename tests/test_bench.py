"""The benchmark harness on the tiny model: every row present, identical outputs, files written (no timings)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import build_tiny_model
from workbench.bench import ITEMS, QUICK, Timed, interleaved, peak_rss, round_spread, run
from workbench.cli import app


@pytest.fixture(scope="module")
def report():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield run(build_tiny_model(seed=3), size="quick")
    finally:
        torch.set_num_threads(threads)


def test_every_row_is_there(report):
    items = [row.item for row in report.rows]
    assert set(items) == set(ITEMS)
    assert items.count("1") == 2 * len(QUICK.batch_sizes)
    assert items.count("4") == 2  # the sweep as specified, and an informative small one
    assert all(items.count(i) == 1 for i in ITEMS if i not in ("1", "4"))
    for row in report.rows:
        if row.item in ("7", "8"):
            assert row.value is None and row.detail.startswith("not run: only at full settings")
        else:
            assert row.value is not None and math.isfinite(row.value) and row.value > 0, row
            assert row.met is None  # quick settings judge no timing
    assert report.meta["settings"] == "quick"


def test_identical_output_columns_hold(report):
    checked = [(row.item, row.identical) for row in report.rows if row.identical is not None]
    assert [item for item, _ in checked] == ["2", "4", "4", "5"]
    assert all(same for _, same in checked), checked


def test_table_and_files(report, tmp_path):
    text = report.table()
    assert all(f"\n{item} " in text for item in ITEMS)
    data = json.loads(report.write(tmp_path / "bench.json").read_text())
    assert len(data["rows"]) == len(report.rows) and data["meta"]["model"] == "tiny-llama"
    with open(report.write(tmp_path / "bench.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["item"] for r in rows] == [r.item for r in report.rows]


def test_measuring_helpers():
    calls = []
    timed = interleaved(
        type("C", (), {"measure": lambda self, fn: (1.0, fn())})(),
        {"a": lambda: calls.append("a") or 1, "b": lambda: calls.append("b") or 2},
        2,
    )
    assert calls == ["a", "b", "b", "a"]
    assert timed == {"a": (1.0, 1, (1.0, 1.0)), "b": (1.0, 2, (1.0, 1.0))}
    assert round_spread(timed, "a", "b") == "; per round 1.000–1.000"
    steady = {"x": Timed(2.0, None, (2.0, 3.0)), "y": Timed(2.0, None, (2.0, 2.0))}
    assert round_spread(steady, "x", "y") == "; per round 1.000–1.500"
    assert round_spread({"x": Timed(1.0, None, (1.0,)), "y": Timed(1.0, None, (1.0,))}, "x", "y") == ""
    with peak_rss() as peak:
        block = torch.ones(64 * 2**20 // 4)
        del block
    assert peak["bytes"] >= 48 * 2**20


def test_cli_has_a_bench_command():
    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code == 0
    assert "--size" in result.output and "--random-llama-1b" in result.output


def test_plain_copy_of_a_folder_model_loads_the_same_weights_from_disk(tiny_dir):
    from pathlib import Path

    from workbench.bench import plain_copy
    from workbench.models import hf_folder, load_model

    model = load_model(tiny_dir)
    assert hf_folder(model.source) == Path(tiny_dir) and hf_folder("no/such-model") is None
    raw = plain_copy(model)
    ids = model.tokenizer(["The cat sat on the mat"], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        expected = raw.__class__.from_pretrained(tiny_dir)(ids).logits
        torch.testing.assert_close(raw(ids).logits, expected)
    assert raw is not model.hf_model and raw.config._attn_implementation == "sdpa"


def test_benchmarks_script_has_the_command_s_options_and_refuses_before_loading():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
    shown = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "--random-llama-1b" in shown.stdout and "--only" in shown.stdout
    refused = subprocess.run([sys.executable, str(script), "--only", "1,12"], capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "error: unknown benchmark item(s) ['12']: use some of 1, 2, 3, 4, 5, 6, 7, 8"
    ]
