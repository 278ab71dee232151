"""Speed and memory benchmarks: every row is a ratio of two measurements taken side by side in one run.

Rows (targets from issue 7):

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
7. ``workbench report --quick`` wall time, as its own process — ≤ 10 min (the full report, ≤ 60 min, is
   timed as a command).

Generation runs with ``min_new_tokens = max_new_tokens`` so both sides of a ratio produce the same number
of tokens. Each pair is measured interleaved, ``repeats`` times, and the fastest of each side is kept. On
CPU with one torch thread the clock is the process's CPU time, which other processes on a shared machine
disturb far less than wall time; otherwise it is wall time (CUDA synchronised).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib.resources
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import pandas as pd
import torch

from workbench.activations import collect
from workbench.batching import format_prompts, length_batches
from workbench.errors import InvalidArgumentError
from workbench.generation import generate
from workbench.models import DEFAULT_SPEC, Model
from workbench.runs import atomic_text, utc_now, write_frame
from workbench.steering import Intervention
from workbench.studies.common import SizeName
from workbench.vectors import SteeringVector

#: The rows of the table, by number.
Item = Literal["1", "2", "3", "4", "5", "6", "7"]
ITEMS: tuple[Item, ...] = get_args(Item)
#: What a clock measures: the process's CPU time or wall time.
ClockKind = Literal["cpu", "wall"]


@dataclass(frozen=True)
class Settings:
    """Sizes of every measurement (``FULL`` follows issue 7; ``QUICK`` is for CI and tests)."""

    batch_sizes: tuple[int, ...] = (8, 32)
    new_tokens: int = 128
    collect_prompts: int = 512
    collect_batch: int = 16
    sweep_layers: int = 6
    sweep_coefs: int = 4
    sweep_prompts: int = 32
    sweep_tokens: int = 64
    sweep_batch: int = 128
    sweep_small_prompts: int = 4
    sweep_small_tokens: int = 32
    reference_prompts: int = 1
    reference_tokens: int = 256
    memory_prompts: int = 2000
    repeats: int = 3


FULL = Settings()
#: A smoke test of every row (the targets are not judged at these sizes).
QUICK = Settings(
    batch_sizes=(2, 4),
    new_tokens=6,
    collect_prompts=12,
    collect_batch=4,
    sweep_layers=2,
    sweep_coefs=2,
    sweep_prompts=3,
    sweep_tokens=5,
    sweep_batch=12,
    sweep_small_prompts=2,
    sweep_small_tokens=4,
    reference_prompts=2,
    reference_tokens=10,
    memory_prompts=40,
    repeats=1,
)

#: The benchmark's sizes by the name a study's :class:`~workbench.studies.common.Size` goes by.
SETTINGS: dict[SizeName, Settings] = {"quick": QUICK, "full": FULL}


@dataclass
class Row:
    """One line of the table: ``value`` is the ratio (or None when not measured)."""

    item: str
    name: str
    value: float | None
    target: str
    met: bool | None
    identical: bool | None = None
    detail: str = ""


@dataclass
class Report:
    """The table and how it was measured."""

    rows: list[Row]
    meta: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        header = ("item", "measurement", "ratio", "target", "met", "identical", "detail")
        lines = [
            [
                r.item,
                r.name,
                "-" if r.value is None else f"{r.value:.3f}",
                r.target,
                "-" if r.met is None else ("yes" if r.met else "NO"),
                "-" if r.identical is None else str(r.identical),
                r.detail,
            ]
            for r in self.rows
        ]
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header[:-1])]
        out = [" ".join(f"{k}: {v}" for k, v in self.meta.items())]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
        out.append(fmt.format(*header))
        out.extend(fmt.format(*line) for line in lines)
        return "\n".join(out)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the table as JSON (``.json``) or CSV (any other suffix)."""
        if Path(path).suffix.lower() == ".json":
            payload = {"meta": self.meta, "rows": [asdict(r) for r in self.rows]}
            return atomic_text(path, json.dumps(payload, indent=2) + "\n", "benchmark table")
        frame = pd.DataFrame([{**asdict(row), **self.meta} for row in self.rows])
        return write_frame(frame, path, "benchmark table")


# ---- measuring -------------------------------------------------------------------------------------------


class Clock:
    """Process CPU time (``"cpu"``) or wall time (``"wall"``, CUDA synchronised)."""

    def __init__(self, kind: ClockKind, device: torch.device) -> None:
        if kind not in ("cpu", "wall"):
            raise InvalidArgumentError(f"unknown clock {kind!r}: use 'cpu' or 'wall'")
        self.kind = kind
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.process_time() if self.kind == "cpu" else time.perf_counter()

    def measure(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        start = self.now()
        result = fn()
        return self.now() - start, result


class Timed(NamedTuple):
    """One side of an interleaved measurement: its fastest time, its last result, and every round's time."""

    seconds: float
    result: Any
    rounds: tuple[float, ...]


def interleaved(clock: Clock, fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, Timed]:
    """Run each function in turn, ``repeats`` rounds: the fastest time of each, its last result, every time."""
    rounds: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, Any] = {}
    names = list(fns)
    for round_no in range(max(1, repeats)):
        for name in names if round_no % 2 == 0 else names[::-1]:  # alternate the order between rounds
            seconds, results[name] = clock.measure(fns[name])
            rounds[name].append(seconds)
    return {name: Timed(min(rounds[name]), results[name], tuple(rounds[name])) for name in fns}


def round_spread(timed: dict[str, Timed], numerator: str, denominator: str) -> str:
    """The range of the ratio taken round by round (each round's pair ran back to back): how steady it was."""
    ratios = [a / b for a, b in zip(timed[numerator].rounds, timed[denominator].rounds, strict=True) if b > 0]
    if len(ratios) < 2:
        return ""
    return f"; per round {min(ratios):.3f}–{max(ratios):.3f}"


def _status_kb(field_name: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc), so earlier work does not hide growth in the baseline."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def peak_rss() -> Iterator[dict[str, Any]]:
    """Measure the peak resident-set growth of the block, in bytes (``result["bytes"]``).

    Resets the kernel's high-water mark (``/proc/self/clear_refs``) so the peak belongs to the block; where
    that is not possible, falls back to the process's lifetime peak (an upper bound).
    """
    gc.collect()
    _release_free_memory()
    result: dict[str, Any] = {"method": "VmHWM after clear_refs"}
    before = _status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        result["method"] = "ru_maxrss (lifetime peak, an upper bound)"
    try:
        yield result
    finally:
        if result["method"].startswith("VmHWM") and before is not None:
            peak = _status_kb("VmHWM") or 0
            result["bytes"] = max(0, peak - before) * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            result["bytes"] = max(0, peak - (before or 0)) * 1024


# ---- the workload ----------------------------------------------------------------------------------------


def bench_prompts(n: int) -> list[str]:
    """``n`` English queries from the bundled data, cycled when ``n`` exceeds them."""
    text = importlib.resources.files("workbench").joinpath("data/queries.jsonl").read_text()
    queries = [json.loads(line)["en"] for line in text.splitlines() if line.strip()]
    return [queries[i % len(queries)] for i in range(n)]


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
    from workbench.models import KNOWN_MODELS, _bundled_gguf, _dequantized_dir

    dtype = next(model.hf_model.parameters()).dtype
    source = model.source
    directory: Path | None = None
    if source in KNOWN_MODELS:
        directory = _dequantized_dir(_bundled_gguf(source))
    elif source.endswith(".gguf") or Path(source).is_file():
        directory = _dequantized_dir(Path(source).expanduser())
    elif source and Path(source).is_dir():
        directory = Path(source)
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
class _Context:
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
        self.one = [Intervention(self.vector, first, "add", self.coef)]
        self.three = [
            Intervention(self.vector, first, "add", self.coef),
            Intervention(self.vector, second, "set_projection", coef=self.coef, positions="response"),
            Intervention(self.vector, third, "ablate"),
        ]


def _ratio_row(
    item: str, name: str, value: float, target: str, *, identical: bool | None = None, detail: str = ""
) -> Row:
    op, bound = target.split()
    met = value >= float(bound) if op == "≥" else value <= float(bound)
    return Row(item, name, value, target, met, identical, detail)


def _steering_overhead(ctx: _Context) -> list[Row]:
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


def _versus_raw_generate(ctx: _Context) -> list[Row]:
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


def _versus_raw_forward(ctx: _Context) -> list[Row]:
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


def _sweep_pair(ctx: _Context, n_prompts: int, tokens: int, batch: int) -> tuple[dict[str, Any], str]:
    s, model = ctx.settings, ctx.model
    prompts = bench_prompts(n_prompts)
    layers = spread_layers(model.n_layers, s.sweep_layers)
    coefs = [ctx.coef * m for m in (-2.0, -1.0, 1.0, 2.0, 3.0, 4.0)][: s.sweep_coefs]
    configs = [[Intervention(ctx.vector, layer, "add", c)] for layer in layers for c in coefs]
    options = {"max_new_tokens": tokens, "min_new_tokens": tokens}

    def batched() -> list[str]:
        rows = [config for config in configs for _ in prompts]
        return generate(model, prompts * len(configs), interventions=rows, batch_size=batch, **options)

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


def _sweep(ctx: _Context) -> list[Row]:
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


def _reference(ctx: _Context) -> list[Row]:
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


def _memory(ctx: _Context) -> list[Row]:
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


def _report_time(ctx: _Context) -> list[Row]:
    """Wall time of ``workbench report --quick`` as its own process (full settings, bundled model only)."""
    name = "workbench report --quick wall time, minutes (the full report: time the command, see the README)"
    if ctx.settings != FULL or ctx.model.name != DEFAULT_SPEC:
        why = "not run: only at full settings on the bundled model (CI runs the command as a test)"
        return [Row("7", name, None, "≤ 10 min", None, None, why)]
    command = [sys.executable, "-c", "from workbench.cli import app; app()", "report", "--quick", "--out"]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        done = subprocess.run([*command, out], capture_output=True, text=True)
        minutes = (time.perf_counter() - start) / 60
    if done.returncode != 0:
        failure = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return [Row("7", name, None, "≤ 10 min", False, None, f"failed after {minutes:.1f} min: {failure}")]
    detail = f"{os.cpu_count()} cores, torch's default threads, model cache as found"
    return [Row("7", name, minutes, "≤ 10 min", minutes <= 10, None, detail)]


RUNNERS: dict[str, Callable[[_Context], list[Row]]] = {
    "1": _steering_overhead,
    "2": _versus_raw_generate,
    "3": _versus_raw_forward,
    "4": _sweep,
    "5": _reference,
    "6": _memory,
    "7": _report_time,
}


def run(
    model: Model,
    *,
    quick: bool = False,
    settings: Settings | None = None,
    items: Sequence[str] | None = None,
    clock: ClockKind | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Run the benchmarks on an already-loaded ``model`` and return the table."""
    settings = settings or SETTINGS["quick" if quick else "full"]
    items = list(ITEMS) if items is None else [str(i) for i in items]
    unknown = [i for i in items if i not in RUNNERS]
    if unknown:
        raise InvalidArgumentError(f"unknown benchmark item(s) {unknown}: use some of {', '.join(ITEMS)}")
    if clock is None:
        clock = "cpu" if model.device.type == "cpu" and torch.get_num_threads() == 1 else "wall"
    ctx = _Context(model, settings, Clock(clock, model.device), log or (lambda _m: None))
    generate(model, bench_prompts(2), max_new_tokens=2, interventions=ctx.three)  # warm-up
    rows: list[Row] = []
    for item in items:
        ctx.log(f"item {item}")
        start = time.perf_counter()
        new = RUNNERS[item](ctx)
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

    from workbench.models import _bundled_gguf, _dequantized_dir, from_hf, load_model

    directory = _dequantized_dir(_bundled_gguf(DEFAULT_SPEC))
    if not (directory / "tokenizer_config.json").exists():
        load_model(DEFAULT_SPEC)  # writes the dequantized cache, tokenizer included
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
    quick: bool = False,
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
    loaded = random_llama_1b(device, dtype) if random_1b else load_model(model, device=device, dtype=dtype)
    report = run(loaded, quick=quick, items=items, log=lambda m: echo(f"[bench] {m}"))
    echo(report.table())
    if out is not None:
        echo(f"wrote {report.write(out)}")
    return report


__all__ = [
    "FULL",
    "ITEMS",
    "QUICK",
    "Clock",
    "Report",
    "Row",
    "Settings",
    "Timed",
    "bench_prompts",
    "interleaved",
    "main",
    "peak_rss",
    "plain_copy",
    "random_llama_1b",
    "round_spread",
    "run",
]
