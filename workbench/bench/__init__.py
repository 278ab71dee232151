"""Speed and memory benchmarks of the workbench (``workbench bench``, ``benchmarks/run.py``).

:func:`run` measures an already-loaded model and returns a :class:`~workbench.bench.harness.Report`;
:func:`main` loads, runs, prints and writes the table. The harness (sizes, clocks, timing, memory) is in
:mod:`workbench.bench.harness`, the measurements of the seven rows in :mod:`workbench.bench.items`.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import cast

import torch

from workbench.bench import harness
from workbench.bench.harness import *  # noqa: F403 (re-exports harness.__all__)
from workbench.bench.harness import (
    FULL,
    ITEMS,
    SETTINGS,
    Clock,
    ClockKind,
    Item,
    Report,
    Row,
    Settings,
    bench_prompts,
)
from workbench.bench.items import MEASURES, Context, plain_copy
from workbench.errors import InvalidArgumentError
from workbench.files import utc_now
from workbench.generation import generate
from workbench.models import DEFAULT_SPEC, Model

__all__ = [*harness.__all__, "main", "plain_copy", "random_llama_1b", "run"]


def _checked(items: Sequence[str] | None) -> list[Item]:
    """``items`` (default all) as row numbers, or a one-line error naming the unknown ones."""
    wanted = list(ITEMS) if items is None else [str(i).strip() for i in items]
    unknown = [i for i in wanted if i not in MEASURES]
    if unknown:
        raise InvalidArgumentError(f"unknown benchmark item(s) {unknown}: use some of {', '.join(ITEMS)}")
    return cast(list[Item], wanted)


def run(
    model: Model,
    *,
    size: str = "full",
    settings: Settings | None = None,
    items: Sequence[str] | None = None,
    clock: ClockKind | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Run the benchmarks on an already-loaded ``model`` at ``size`` (``full`` or ``quick``, a smoke test of
    the harness) and return the table."""
    if size not in SETTINGS:
        raise InvalidArgumentError(f"unknown benchmark size {size!r}: use one of {', '.join(SETTINGS)}")
    settings = settings or SETTINGS[size]
    items = _checked(items)
    if clock is None:
        clock = "cpu" if model.device.type == "cpu" and torch.get_num_threads() == 1 else "wall"
    ctx = Context(model, settings, Clock(clock, model.device), log or (lambda _m: None))
    generate(model, bench_prompts(2), max_new_tokens=2, interventions=ctx.three)  # warm-up
    rows: list[Row] = []
    for item in items:
        ctx.log(f"item {item}")
        start = time.perf_counter()
        new = MEASURES[item](ctx)
        ctx.log(f"item {item} done in {time.perf_counter() - start:.0f} s")
        for row in new:  # as soon as measured: long runs show their numbers before the table
            value = "-" if row.value is None else f"{row.value:.3f}"
            ctx.log(f"  {row.name}: {value} (target {row.target}) {row.detail}")
        rows += new
    if settings != FULL:  # targets are for the full sizes; small runs check the harness, not the speed
        rows = [replace(row, met=None) for row in rows]
    meta = {
        "date": utc_now(),
        "model": model.name,
        "device": str(model.device),
        "machine": f"{platform.machine()} {os.cpu_count()}-core {platform.system()}",
        "torch_threads": torch.get_num_threads(),
        "clock": clock,
        "settings": next((name for name, known in SETTINGS.items() if known == settings), "custom"),
    }
    return Report(rows, meta)


def random_llama_1b(
    device: str | torch.device | None = None, dtype: torch.dtype | str = torch.float32
) -> Model:
    """A randomly initialised ~1.1B-parameter Llama (hidden 2048, 16 layers) with the SmolLM2 tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from workbench.models import from_hf, hf_folder, load_model

    directory = hf_folder(DEFAULT_SPEC)
    if directory is None or not (directory / "tokenizer_config.json").exists():
        load_model(DEFAULT_SPEC)  # writes the dequantized cache, tokenizer included
        directory = hf_folder(DEFAULT_SPEC)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with target:
        hf = LlamaForCausalLM(config)
    return from_hf(hf, tokenizer, "random-llama-1b", device=target, dtype=dtype, is_chat=True)


def main(
    *,
    model: str = DEFAULT_SPEC,
    size: str = "full",
    out: str | os.PathLike[str] | None = None,
    device: str | None = None,
    dtype: str = "float32",
    random_1b: bool = False,
    threads: int | None = None,
    items: Sequence[str] | None = None,
    echo: Callable[[str], None] = print,
) -> Report:
    """What ``workbench bench`` and ``benchmarks/run.py`` do: load, run, print the table, write ``out``."""
    from workbench.models import load_model

    if threads is not None:
        if threads < 1:
            raise InvalidArgumentError(f"threads must be a positive integer, got {threads}")
        torch.set_num_threads(threads)
    _checked(items)  # before the (slow) model load
    if size not in SETTINGS:
        raise InvalidArgumentError(f"unknown benchmark size {size!r}: use one of {', '.join(SETTINGS)}")
    loaded = random_llama_1b(device, dtype) if random_1b else load_model(model, device=device, dtype=dtype)
    report = run(loaded, size=size, items=items, log=lambda m: echo(f"[bench] {m}"))
    echo(report.table())
    if out is not None:
        echo(f"wrote {report.write(out)}")
    return report
