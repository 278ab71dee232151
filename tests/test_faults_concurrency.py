"""Two studies at once on one ``WORKBENCH_CACHE``: the same study twice and another study over the same
model, started together in three processes. Every shared cache is exercised (the dequantized model, the
activation cache, the completions grid, the judge's perplexity cache); each process's rows equal those of
the same study run alone (perplexities to rounding: a cached score was computed in another study's batch),
and the shared cache holds no torn, temporary or duplicated file, and lost no entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from pandas.testing import assert_frame_equal

from tests.tiny_gguf import write_tiny_gguf

ROOT = Path(__file__).parents[1]

#: A small study touching every shared cache; ``study`` picks its prompts and grid (``a``: five prompts,
#: layer 1; ``b``: four prompts, two of them ``a``'s, layer 2).
STUDY = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
from workbench import behaviours, models
from workbench.datasets import load
from workbench.evaluation.reference import cached_perplexity
from workbench.models import load_model
from workbench.paths import cache_dir
from workbench.runner import Job, run_grid
from workbench.interventions import Intervention
from workbench.vectors import SteeringVector

def study(gguf, out, name):
    model = load_model(gguf, device="cpu")
    vocab = model.tokenizer.get_vocab().values()  # random weights: keep it from writing only whitespace
    model.hf_model.generation_config.suppress_tokens = [
        i for i in vocab if not model.tokenizer.decode([i]).strip()
    ]
    data = load("no_comma", "train").head(6)
    vector = SteeringVector.from_dataset(model, data, layers=[1, 2], batch_size=4)
    prompts = load("no_comma", "validation").negative[:5] if name == "a" else load("no_comma", "validation").negative[3:7]
    answers = behaviours.complete(model, prompts, 6)
    ppl = cached_perplexity(model, prompts, answers, cache_dir() / "judge.parquet", batch_size=2)
    layer = 1 if name == "a" else 2
    jobs = [Job("none", str(i), p) for i, p in enumerate(prompts)] + [
        Job(f"x{{coef}}", str(i), p, (Intervention(vector, layer, coef=coef, unit="absolute"),))
        for coef in (0.05, 0.3) for i, p in enumerate(prompts)
    ]
    rows = run_grid(model, jobs, max_new_tokens=6, chunk_size=4, out_dir=Path(out) / "grid")
    rows = rows.assign(answer=[answers[int(i)] for i in rows["id"]], ppl=[ppl[int(i)] for i in rows["id"]])
    rows.to_parquet(Path(out) / "rows.parquet")
    torch.save(vector.directions, Path(out) / "directions.pt")

if __name__ == "__main__":
    gguf, out, name, go = sys.argv[1:]
    real = models._dequantize
    def counting(*args):
        print("DEQUANTIZED", flush=True)
        real(*args)
    models._dequantize = counting
    while not Path(go).exists():  # start together, imports done
        time.sleep(0.05)
    study(gguf, out, name)
"""


def _solo(script: Path, gguf: Path, out: Path, name: str, cache: Path, monkeypatch) -> None:
    """The study alone, in this process, on its own cache (one thread, as in the study processes)."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(cache))
    namespace: dict[str, object] = {"__name__": "solo"}
    exec(compile(script.read_text(), str(script), "exec"), namespace)
    threads = torch.get_num_threads()
    try:
        namespace["study"](str(gguf), str(out), name)  # type: ignore[operator]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow  # about 40 s on 2 cores: three fresh processes import torch and transformers
def test_two_studies_at_once_on_one_cache_give_the_rows_of_each_alone(tmp_path, monkeypatch):
    gguf = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf)
    script = tmp_path / "study.py"
    script.write_text(STUDY.format(root=str(ROOT)))
    shared, go = tmp_path / "shared-cache", tmp_path / "go"
    runs = {"a1": "a", "a2": "a", "b": "b"}
    env = {"WORKBENCH_CACHE": str(shared), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    processes = {
        run: subprocess.Popen(
            [sys.executable, str(script), str(gguf), str(tmp_path / run), study, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        for run, study in runs.items()
    }
    time.sleep(1)
    go.touch()
    for name in ("a", "b"):  # meanwhile: each study alone, on its own cache
        _solo(script, gguf, tmp_path / f"solo-{name}", name, tmp_path / f"cache-{name}", monkeypatch)
    outputs = {run: p.communicate(timeout=300) for run, p in processes.items()}
    for run, p in processes.items():
        assert p.returncode == 0, outputs[run][1][-2000:]
    assert sum(out.count("DEQUANTIZED") for out, _ in outputs.values()) == 1, "one process dequantized"
    assert pd.read_parquet(tmp_path / "solo-a" / "rows.parquet")["response"].str.strip().nunique() > 3
    for run, study in runs.items():
        alone = pd.read_parquet(tmp_path / f"solo-{study}" / "rows.parquet")
        shared_rows = pd.read_parquet(tmp_path / run / "rows.parquet")
        assert_frame_equal(shared_rows.drop(columns="ppl"), alone.drop(columns="ppl"), check_exact=True)
        # A perplexity is computed in whichever batch first needed it (b reads two of a's): rounding only.
        assert_frame_equal(shared_rows[["ppl"]], alone[["ppl"]], check_exact=False, rtol=1e-6)
        assert torch.equal(
            torch.load(tmp_path / run / "directions.pt"),
            torch.load(tmp_path / f"solo-{study}" / "directions.pt"),
        )
    files = [p for p in shared.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp")] and not [p for p in shared.rglob("*.tmp")]
    assert len(list((shared / "models").iterdir())) == 1, "one dequantized folder"
    judge = pd.read_parquet(shared / "judge.parquet")
    alone = [pd.read_parquet(tmp_path / f"cache-{name}" / "judge.parquet") for name in ("a", "b")]
    assert judge["key"].is_unique and set(judge["key"]) == set(pd.concat(alone)["key"]), "no score lost"
    (completions,) = (shared / "completions").iterdir()
    parts = [pd.read_parquet(p) for p in completions.glob("part-*.parquet")]
    assert pd.concat(parts)["key"].is_unique, "no row filed twice"
    assert json.loads((completions / "grid.json").read_text())["fingerprint"].endswith("-float32-cpu")
    from safetensors.torch import load_file

    for entry in (shared / "activations").glob("*.safetensors"):
        load_file(entry)  # whole files only
