"""The command line's runs: studies, reports and the pipeline's steps (collect, layers, sweep), each under
one run directory with a manifest. Registered on :data:`workbench.cli.app`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli_options import (
    ModelSpec,
    RayAddress,
    RayAllowOther,
    RayWorkers,
    one_line_errors,
    parse_numbers,
    parse_position,
)

app = typer.Typer()

#: ``--size`` and ``--dtype`` of the commands that run studies (study, report).
RunSizeOption = Annotated[
    str | None,
    typer.Option(
        "--size",
        metavar="quick|full|large",
        help="How big a run is: quick (a smoke test of every step), full, or large (default: large for a "
        "model of 1B+ parameters, else full); each study runs at the size it declares for it.",
    ),
]
Dtype = Annotated[
    str | None, typer.Option("--dtype", help="float32, bfloat16 or float16 (default: float32 on CPU).")
]


@app.command()
@one_line_errors
def report(
    out: Path = typer.Option(Path("runs/report"), "--out", "-o", help="Run directory."),
    model: ModelSpec = ...,
    publish: Path = typer.Option(
        None,
        "--publish",
        help="Also write each study's tables as DIR/<study>.md and .csv (e.g. docs/results).",
    ),
    ray: RayAddress = None,
    workers: RayWorkers = None,
    allow_other_fingerprint: RayAllowOther = False,
    size: RunSizeOption = None,
    dtype: Dtype = None,
) -> None:
    """Run every study the run size's report includes (`workbench.studies.names()` lists the studies);
    write report.md/.html. A model of 1B+ parameters (or --size large) gets the large report: JSON, no
    comma and one sentence, Italian, and a reduced frontier search for JSON and Italian.

    A rerun with the same --out reuses the studies that finished with the same configuration, so
    `--publish` on a finished run only writes the pages. With --ray every grid of the model runs on Ray.
    """
    from workbench.distributed import ray_executor
    from workbench.studies.render import publish as publish_pages
    from workbench.studies.report import run_report

    arguments = {"model": model, "size": size, "dtype": dtype, "ray": ray, "workers": workers}
    with ray_executor(ray, workers, model, dtype, allow_other_fingerprint) as executor:
        path = run_report(model, out_dir=out, size=size, dtype=dtype, executor=executor, arguments=arguments)
    typer.echo(str(path))
    if publish is not None:
        typer.echo("\n".join(str(p) for p in publish_pages(out, publish)))


@app.command()
@one_line_errors
def study(
    name: str = typer.Argument(..., help="A study: `workbench.studies.names()` lists them."),
    options: list[str] = typer.Option(
        [],
        "--set",
        metavar="KEY=VALUE",
        help="A knob of the study (repeatable), e.g. names=json_format,no_comma.",
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default runs/study-NAME)."),
    model: ModelSpec = ...,
    ray: RayAddress = None,
    workers: RayWorkers = None,
    allow_other_fingerprint: RayAllowOther = False,
    size: RunSizeOption = None,
    dtype: Dtype = None,
) -> None:
    """Run one study; writes its tables, figures, manifest.json and report.md under the run directory and
    prints its headline table and notes.

    With --ray every grid of the model runs on Ray (a model the study loads itself runs in process)."""
    from workbench.distributed import ray_executor
    from workbench.studies.registry import get, parse_option
    from workbench.studies.report import run_report

    declared = get(name)
    knobs = dict(parse_option(declared, text) for text in options)
    run = out or Path("runs") / f"study-{name}"
    arguments = {"model": model, "size": size, "dtype": dtype, "ray": ray, "workers": workers}
    arguments |= {f"set {k}": v for k, v in knobs.items()}
    with ray_executor(ray, workers, model, dtype, allow_other_fingerprint) as executor:
        path = run_report(
            model,
            out_dir=run,
            size=size,
            studies=[name],
            options={name: knobs},
            dtype=dtype,
            executor=executor,
            command="study",
            arguments=arguments,
        )
    _print_study(run, name)
    typer.echo(str(path))


def _print_study(run: Path, name: str) -> None:
    """The headline table and notes of study ``name`` in ``run``."""
    import pandas as pd

    from workbench.files import markdown_table
    from workbench.record import read_record

    entry = read_record(run).get("studies", {}).get(name, {})
    table = run / str(entry.get("dir", name)) / "table.parquet"
    if entry.get("status") == "done" and table.exists():
        typer.echo(markdown_table(pd.read_parquet(table)))
    typer.echo("\n".join(entry.get("notes") or []))


@app.command("publish")
@one_line_errors
def publish_command(
    run: Path = typer.Argument(..., help="A report or study run directory (its --out)."),
    to: Path = typer.Option(..., "--to", help="Where the pages go, e.g. docs/results/report."),
) -> None:
    """Write a finished run's tables as pages: TO/<study>.md and .csv, and TO/index.md linking them."""
    from workbench.studies.render import publish

    typer.echo("\n".join(str(p) for p in publish(run, to)))


@app.command("collect")
@one_line_errors
def collect_command(
    dataset: str = typer.Argument(..., help="A bundled dataset name (see workbench.datasets.names())."),
    split: str = typer.Option("train", help="train, validation, test or all."),
    position: str = typer.Option(
        "last_prompt", help="Where to read: last_prompt, prompt (the mean over its tokens) or a token index."
    ),
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

    import pandas as pd

    from workbench.activations import collect
    from workbench.datasets import load
    from workbench.models import load_model
    from workbench.paths import check_writable
    from workbench.pipeline import Step, record_step
    from workbench.record import new_record

    started = new_record("collect")["started"]
    where = parse_position(position)
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
    configuration = {
        "dataset": dataset,
        "variant": variant,
        "split": split,
        "position": where,
        "n": len(data),
    }
    step = Step(pd.DataFrame(), configuration, {"collect": time.perf_counter() - tick})
    record_step(run, "collect", step, loaded, started)
    typer.echo("\n".join(str(target) for target in targets))


@app.command("layers")
@one_line_errors
def layers_command(
    dataset: str = typer.Argument(..., help="A bundled dataset name (see workbench.datasets.names())."),
    size: str = typer.Option(
        None,
        "--size",
        metavar="quick",
        help="quick: a smoke test at the quick size's prompts and tokens, sweeping few layers "
        "(default: find_layers' own counts).",
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default runs/layers-DATASET)."),
    model: ModelSpec = ...,
    variant: str = typer.Option(None, help="italian only: it or en_answer_it."),
    coefs: str = typer.Option(
        "1,2,4",
        help="Comma-separated add coefficients in diff_norm units (multiples of the layer's "
        "mean-difference norm).",
    ),
    top_k: int = typer.Option(None, help="Sweep only the k best layers of the cheap ranking."),
) -> None:
    """Score every layer for steering a dataset's behaviour: probes, projections and a steering sweep.

    Writes layers.{csv,parquet} (one row per layer), signals.csv (each signal's pick), summary.csv (the
    sweep), the figure layers.{png,svg} and manifest.json.
    """
    from workbench.errors import InvalidArgumentError
    from workbench.files import markdown_table
    from workbench.models import load_model
    from workbench.pipeline import layers_step, record_step
    from workbench.record import new_record

    if size not in (None, "quick"):
        raise InvalidArgumentError(f"--size of layers is quick or left out, got {size!r}")
    started = new_record("layers")["started"]
    run = out or Path("runs") / f"layers-{dataset}"
    strengths = parse_numbers(coefs, float, "--coefs")
    loaded = load_model(model)
    step = layers_step(loaded, dataset, run, variant=variant, coefs=strengths, size=size, top_k=top_k)
    record_step(run, "layers", step, loaded, started)
    typer.echo(markdown_table(step.table))
    typer.echo(str(run))


@app.command("sweep")
@one_line_errors
def sweep_command(
    dataset: str = typer.Argument(..., help="A bundled dataset name (see workbench.datasets.names())."),
    layers: str = typer.Option(..., "--layers", help="Comma-separated block indices, e.g. 6,10,14."),
    coefs: str = typer.Option(
        "1,2,4",
        "--coefs",
        help="Comma-separated coefficients in --unit (default diff_norm: multiples of the layer's "
        "mean-difference norm), e.g. -2,2 or =-2,2.",
    ),
    mode: str = typer.Option("add", help="add, set_projection or ablate (the last two take no coefs)."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default runs/sweep-DATASET)."),
    model: ModelSpec = ...,
    variant: str = typer.Option(None, help="italian only: it or en_answer_it."),
    n_train: int = typer.Option(96, help="Train pairs for the diff-in-means vector."),
    n_validation: int = typer.Option(24, help="Validation prompts to steer."),
    max_new_tokens: int = typer.Option(40, help="Tokens to generate per response."),
    unit: str = typer.Option(
        "diff_norm", help="Unit of --coefs: diff_norm (default), residual_norm or absolute (residual units)."
    ),
    ray: RayAddress = None,
    workers: RayWorkers = None,
    allow_other_fingerprint: RayAllowOther = False,
) -> None:
    """Steer a dataset's validation prompts over layers × coefficients; score the target rate (IFEval, strict) and degeneration.

    Writes rows.{csv,parquet}, summary.csv, choice.json (Stolfo et al.'s rule), vector.safetensors, the
    heatmap sweep.{png,svg} and manifest.json; the sweep's rows are cached under parts/ and a rerun
    resumes.
    """
    from workbench.datasets import load
    from workbench.distributed import ray_executor
    from workbench.errors import InvalidArgumentError
    from workbench.files import markdown_table
    from workbench.models import load_model
    from workbench.pipeline import record_step, sweep_step
    from workbench.record import new_record

    started = new_record("sweep")["started"]
    ray_context = ray_executor(ray, workers, model, None, allow_other_fingerprint)
    blocks = parse_numbers(layers, int, "--layers")
    strengths = parse_numbers(coefs, float, "--coefs")
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
            unit=unit,
            max_new_tokens=max_new_tokens,
            executor=executor,
        )
        record_step(run, "sweep", step, loaded, started, executor)
    typer.echo(markdown_table(step.table))
    typer.echo(
        f"choice: {choice.config} (target rate {choice.target_rate:.2f}, unsteered {choice.baseline_target_rate:.2f})"
    )
    typer.echo(str(run))
