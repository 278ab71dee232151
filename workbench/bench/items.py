"""The benchmark's measurements, one function per row, each a ratio of two measurements taken side by side.

Rows and targets:

1. steered ÷ unsteered generation throughput through the same path (one ``add``; three composed
   interventions), at each batch size — target ≥ 0.95;
2. the workbench's generation ÷ raw Hugging Face ``generate`` on a separate plain model (SDPA, no bridge)
   with a plain torch forward hook doing the same addition — target ≥ 0.90;
3. ``collect`` (all layers, last position) time ÷ a raw Hugging Face forward with ``output_hidden_states``
   over the same batches — target ≤ 1.15;
4. a layer × coefficient sweep as one generate call with per-row configurations vs one configuration at a
   time — speed-up ≥ 4, identical outputs;
5. KV-cached generation vs the reference loop that re-runs the whole sequence every step — speed-up ≥ 5,
   identical greedy text;
6. peak memory of ``collect`` ÷ the size of the activations it returns — ≤ 1.5;
7. ``workbench report --size quick`` wall time, as its own process — ≤ 3 min (the full report, ≤ 60 min, is
   timed as a command);
8. loading the bundled model again from its cache, seconds — ≤ 5 s.

Generation runs with ``min_new_tokens = max_new_tokens`` so both sides of a ratio produce the same number
of tokens.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from workbench.activations import collect
from workbench.batching import format_prompts, length_batches
from workbench.bench.harness import (
    FULL,
    Clock,
    Item,
    Row,
    Settings,
    bench_prompts,
    interleaved,
    peak_rss,
    round_spread,
)
from workbench.generation import generate
from workbench.interventions import Intervention
from workbench.models import DEFAULT_SPEC, Model, hf_folder, load_model
from workbench.vectors import SteeringVector

__all__ = ["MEASURES", "Context", "plain_copy", "random_vector", "spread_layers", "torch_add_hook"]


def spread_layers(n_layers: int, k: int) -> list[int]:
    """``k`` distinct block indices spread over the middle of the model."""
    k = min(k, n_layers)
    return sorted({min(n_layers - 1, round((i + 1) * n_layers / (k + 1))) for i in range(k)})


def random_vector(model: Model, seed: int = 0) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(model.n_layers, model.d_model, generator=generator)
    return SteeringVector.from_directions(
        directions, range(model.n_layers), n_layers=model.n_layers, dataset="random"
    )


def plain_copy(model: Model) -> Any:
    """A separate plain Hugging Face model with the same weights (SDPA attention, no bridge, eval mode).

    Models loaded from a file or a directory load again from the same place (the dequantized safetensors
    cache for GGUF); in-memory models are rebuilt from their config and state dict.
    """
    from transformers import AutoModelForCausalLM

    from workbench.fastpath import direct_forward

    dtype = next(model.hf_model.parameters()).dtype
    directory = hf_folder(model.source) if model.source else None
    if directory is not None and (directory / "config.json").exists():
        raw = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, attn_implementation="sdpa")
    else:
        config = model.hf_model.config
        raw = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
        with direct_forward(model):  # the unwrapped module tree has the plain parameter names
            state = {k: v.detach().clone() for k, v in model.hf_model.state_dict().items()}
        raw.load_state_dict(state, strict=False)
        raw.tie_weights()
    raw.generation_config = model.hf_model.generation_config
    return raw.to(model.device).eval()


def _layers_of(hf_model: Any) -> Any:
    return hf_model.base_model.layers


@contextlib.contextmanager
def torch_add_hook(hf_model: Any, layer: int, vector: torch.Tensor) -> Iterator[None]:
    """A plain torch forward hook adding ``vector`` to block ``layer``'s output (the raw baseline)."""

    def hook(_module: Any, _args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + vector, *output[1:])
        return output + vector

    handle = _layers_of(hf_model)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class Context:
    """What every measurement shares: the model, the sizes, the clock and the steering it applies."""

    model: Model
    settings: Settings
    clock: Clock
    log: Callable[[str], None]
    _plain: Any = None
    vector: SteeringVector = field(init=False)
    coef: float = field(init=False)
    one: list[Intervention] = field(init=False)
    three: list[Intervention] = field(init=False)

    def plain(self) -> Any:
        if self._plain is None:
            self.log("loading a separate plain Hugging Face model")
            self._plain = plain_copy(self.model)
        return self._plain

    def __post_init__(self) -> None:
        self.vector = random_vector(self.model)
        first, second, third = (spread_layers(self.model.n_layers, 3) * 3)[:3]
        self.coef = 8.0
        self.one = [Intervention(self.vector, first, "add", self.coef, unit="absolute")]
        self.three = [
            Intervention(self.vector, first, "add", self.coef, unit="absolute"),
            Intervention(
                self.vector, second, "set_projection", coef=self.coef, positions="response", unit="absolute"
            ),
            Intervention(self.vector, third, "ablate"),
        ]


def _ratio_row(
    item: str, name: str, value: float, target: str, *, identical: bool | None = None, detail: str = ""
) -> Row:
    op, bound = target.split()
    met = value >= float(bound) if op == "≥" else value <= float(bound)
    return Row(item, name, value, target, met, identical, detail)


def _steering_overhead(ctx: Context) -> list[Row]:
    rows = []
    tokens = ctx.settings.new_tokens
    for batch in ctx.settings.batch_sizes:
        prompts = bench_prompts(batch)

        def run(ivs: list[Intervention], prompts: list[str] = prompts, batch: int = batch) -> list[str]:
            return generate(
                ctx.model,
                prompts,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                batch_size=batch,
                interventions=ivs,
            )

        timed = interleaved(
            ctx.clock,
            {
                "plain": lambda run=run: run([]),
                "one": lambda run=run: run(ctx.one),
                "three": lambda run=run: run(ctx.three),
            },
            ctx.settings.repeats,
        )
        plain = timed["plain"][0]
        per_token = batch * tokens
        for key, label in (("one", "one add"), ("three", "three composed")):
            rows.append(
                _ratio_row(
                    "1",
                    f"steered ÷ unsteered tokens/s, batch {batch}, {label}",
                    plain / timed[key][0],
                    "≥ 0.95",
                    detail=f"{per_token / timed[key][0]:.1f} vs {per_token / plain:.1f} tok/s, {tokens} new tokens"
                    + round_spread(timed, "plain", key),
                )
            )
    return rows


def _versus_raw_generate(ctx: Context) -> list[Row]:
    model, tokens = ctx.model, ctx.settings.new_tokens
    batch = ctx.settings.batch_sizes[0]
    prompts = bench_prompts(batch)
    (iv,) = ctx.one
    raw = ctx.plain()
    vector = (iv.amount() * iv.direction()).to(model.device, next(raw.parameters()).dtype)
    eos = model.hf_model.generation_config.eos_token_id or model.tokenizer.eos_token_id

    def workbench_run() -> list[str]:
        return generate(
            model, prompts, max_new_tokens=tokens, min_new_tokens=tokens, batch_size=batch, interventions=[iv]
        )

    def raw_run() -> list[str]:
        texts = [model.format_chat(p) for p in prompts]
        tok = model.tokenizer
        encoded = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not model.is_chat)
        encoded = encoded.to(model.device)
        with torch.inference_mode(), torch_add_hook(raw, iv.layer, vector):
            out = raw.generate(
                **encoded,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=eos,
            )
        width = encoded["input_ids"].shape[1]
        return [t.strip() for t in tok.batch_decode(out[:, width:], skip_special_tokens=True)]

    timed = interleaved(ctx.clock, {"raw": raw_run, "workbench": workbench_run}, ctx.settings.repeats)
    same = timed["raw"][1] == timed["workbench"][1]
    per_token = batch * tokens
    return [
        _ratio_row(
            "2",
            f"workbench ÷ raw HF generate tokens/s, batch {batch}, one add",
            timed["raw"][0] / timed["workbench"][0],
            "≥ 0.90",
            identical=same,
            detail=f"{per_token / timed['workbench'][0]:.1f} vs {per_token / timed['raw'][0]:.1f} tok/s; "
            "raw = separate HF model, SDPA, torch forward hook" + round_spread(timed, "raw", "workbench"),
        )
    ]


def _versus_raw_forward(ctx: Context) -> list[Row]:
    model, n, batch = ctx.model, ctx.settings.collect_prompts, ctx.settings.collect_batch
    prompts = bench_prompts(n)
    raw = ctx.plain()

    def workbench_run() -> torch.Tensor:
        return collect(model, prompts, batch_size=batch, cache=False).tensor

    def raw_run() -> torch.Tensor:
        texts = format_prompts(model, prompts, chat=True)
        out = torch.empty(len(texts), model.n_layers, model.d_model)
        with torch.inference_mode():
            for index in length_batches(model, texts, batch, formatted=True):
                encoded = model.encode([texts[i] for i in index], formatted=True)
                hidden = raw.base_model(**encoded, output_hidden_states=True).hidden_states
                out[torch.tensor(index)] = torch.stack(hidden[1:], 1)[:, :, -1].float().cpu()
        return out

    repeats = max(1, ctx.settings.repeats - 1)  # the longest pair of the timed rows
    timed = interleaved(ctx.clock, {"raw": raw_run, "collect": workbench_run}, repeats)
    ours, theirs = timed["collect"][1], timed["raw"][1]
    # the raw model's last hidden state is after the final norm; compare the blocks before it
    diff = float((ours[:, :-1] - theirs[:, :-1]).abs().max()) if model.n_layers > 1 else 0.0
    return [
        _ratio_row(
            "3",
            f"collect ÷ raw HF forward time, {n} prompts, all layers, last position",
            timed["collect"][0] / timed["raw"][0],
            "≤ 1.15",
            detail=f"{timed['collect'][0]:.2f} s vs {timed['raw'][0]:.2f} s; raw = base model with "
            f"output_hidden_states, same batches; max |diff| {diff:.1e}"
            + round_spread(timed, "collect", "raw"),
        )
    ]


def _sweep_pair(ctx: Context, n_prompts: int, tokens: int, batch: int) -> tuple[dict[str, Any], str]:
    s, model = ctx.settings, ctx.model
    prompts = bench_prompts(n_prompts)
    layers = spread_layers(model.n_layers, s.sweep_layers)
    coefs = [ctx.coef * m for m in (-2.0, -1.0, 1.0, 2.0, 3.0, 4.0)][: s.sweep_coefs]
    configs = [
        [Intervention(ctx.vector, layer, "add", c, unit="absolute")] for layer in layers for c in coefs
    ]
    options = {"max_new_tokens": tokens, "min_new_tokens": tokens}

    def batched() -> list[str]:
        rows = [config for config in configs for _ in prompts]
        return generate(model, prompts * len(configs), row_interventions=rows, batch_size=batch, **options)

    def one_at_a_time() -> list[str]:
        out: list[str] = []
        for config in configs:
            out += generate(model, prompts, interventions=config, batch_size=len(prompts), **options)
        return out

    timed = interleaved(ctx.clock, {"alone": one_at_a_time, "batched": batched}, 1)
    ours, theirs = timed["batched"][1], timed["alone"][1]
    same_rows = sum(a == b for a, b in zip(ours, theirs, strict=True))
    result = {
        "speedup": timed["alone"][0] / timed["batched"][0],
        "identical": ours == theirs,
        "detail": f"{timed['batched'][0]:.1f} s (batch {batch}) vs {timed['alone'][0]:.1f} s "
        f"(batch {len(prompts)}); {same_rows}/{len(ours)} rows identical",
    }
    shape = f"{len(layers)} layers × {len(coefs)} coefs × {len(prompts)} prompts × {tokens} tokens"
    return result, shape


def _sweep(ctx: Context) -> list[Row]:
    s = ctx.settings
    main, shape = _sweep_pair(ctx, s.sweep_prompts, s.sweep_tokens, s.sweep_batch)
    rows = [
        _ratio_row(
            "4",
            f"sweep speed-up: per-row batched vs one configuration at a time, {shape}",
            main["speedup"],
            "≥ 4",
            identical=main["identical"],
            detail=main["detail"],
        )
    ]
    # Where per-row batching pays on a CPU: configurations too small to fill a batch on their own.
    small, shape = _sweep_pair(ctx, s.sweep_small_prompts, s.sweep_small_tokens, s.sweep_batch)
    rows.append(
        Row(
            "4",
            f"(informative) the same with few prompts per configuration, {shape}",
            small["speedup"],
            "info",
            None,
            small["identical"],
            small["detail"],
        )
    )
    return rows


def _reference(ctx: Context) -> list[Row]:
    s, model = ctx.settings, ctx.model
    prompts = bench_prompts(s.reference_prompts)
    ivs = ctx.three
    options = {"max_new_tokens": s.reference_tokens, "min_new_tokens": s.reference_tokens}

    def cached() -> list[str]:
        return generate(model, prompts, interventions=ivs, **options)

    def full() -> list[str]:
        return generate(model, prompts, interventions=ivs, use_cache=False, **options)

    timed = interleaved(ctx.clock, {"full": full, "cached": cached}, 1)
    return [
        _ratio_row(
            "5",
            f"KV cache vs full re-run each step, {len(prompts)} prompt(s) × {s.reference_tokens} tokens, "
            "three composed",
            timed["full"][0] / timed["cached"][0],
            "≥ 5",
            identical=timed["full"][1] == timed["cached"][1],
            detail=f"{timed['cached'][0]:.1f} s vs {timed['full'][0]:.1f} s (generate use_cache=False)",
        )
    ]


def _memory(ctx: Context) -> list[Row]:
    s, model = ctx.settings, ctx.model
    prompts = bench_prompts(s.memory_prompts)
    collect(model, prompts[: s.collect_batch], chat=False, batch_size=s.collect_batch, cache=False)
    previous = os.environ.get("WORKBENCH_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["WORKBENCH_CACHE"] = tmp
        try:
            with peak_rss() as peak:
                acts = collect(model, prompts, chat=False, batch_size=s.collect_batch)
        finally:
            if previous is None:
                os.environ.pop("WORKBENCH_CACHE", None)
            else:
                os.environ["WORKBENCH_CACHE"] = previous
    stored = acts.tensor.numel() * acts.tensor.element_size()
    del acts
    return [
        _ratio_row(
            "6",
            f"collect peak memory ÷ stored activations, {len(prompts)} prompts × all layers",
            peak["bytes"] / stored,
            "≤ 1.5",
            detail=f"peak +{peak['bytes'] / 2**20:.0f} MiB vs {stored / 2**20:.0f} MiB stored "
            f"(disk cache written; unformatted prompts); {peak['method']}",
        )
    ]


def _report_time(ctx: Context) -> list[Row]:
    """Wall time of ``workbench report --size quick`` as its own process (full settings, bundled model only)."""
    name = (
        "workbench report --size quick wall time, minutes (the full report: time the command, see the README)"
    )
    if ctx.settings != FULL or ctx.model.name != DEFAULT_SPEC:
        why = "not run: only at full settings on the bundled model (CI runs the command as a test)"
        return [Row("7", name, None, "≤ 3 min", None, None, why)]
    command = [
        sys.executable,
        "-c",
        "from workbench.cli import app; app()",
        "report",
        "--size",
        "quick",
        "--out",
    ]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        done = subprocess.run([*command, out], capture_output=True, text=True)
        minutes = (time.perf_counter() - start) / 60
    if done.returncode != 0:
        failure = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return [Row("7", name, None, "≤ 3 min", False, None, f"failed after {minutes:.1f} min: {failure}")]
    detail = f"{os.cpu_count()} cores, torch's default threads, model cache as found"
    return [Row("7", name, minutes, "≤ 3 min", minutes <= 3, None, detail)]


def _cached_load(ctx: Context) -> list[Row]:
    """Seconds to load the bundled model again from the workbench's cache, which loading ``ctx.model`` wrote
    (full settings, bundled model only)."""
    name = "loading the bundled model again from its cache, seconds"
    if ctx.settings != FULL or ctx.model.name != DEFAULT_SPEC:
        why = "not run: only at full settings on the bundled model"
        return [Row("8", name, None, "≤ 5 s", None, None, why)]
    start = time.perf_counter()
    same = load_model(DEFAULT_SPEC).weights_hash == ctx.model.weights_hash
    seconds = time.perf_counter() - start
    detail = "wall time; same weights hash as the model measured"
    return [Row("8", name, seconds, "≤ 5 s", seconds <= 5, same, detail)]


#: The measurement of each row.
MEASURES: dict[Item, Callable[[Context], list[Row]]] = {
    "1": _steering_overhead,
    "2": _versus_raw_generate,
    "3": _versus_raw_forward,
    "4": _sweep,
    "5": _reference,
    "6": _memory,
    "7": _report_time,
    "8": _cached_load,
}
