"""Length steering: words and sentences per response against the coefficient of a conciseness and a verbosity
vector, and compliance with "at most 2 sentences" with and without conciseness steering."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from workbench.datasets import load
from workbench.files import write_frame
from workbench.interventions import Intervention
from workbench.models import Model
from workbench.size import Size
from workbench.studies.registry import Study
from workbench.studies.result import StudyResult
from workbench.studies.steps import (
    TestJob,
    bars,
    build_vector,
    run_jobs,
    save,
    select,
)
from workbench.vectors import SteeringVector


def _length_jobs(
    vectors: dict[str, SteeringVector],
    layer: int,
    coefs: Sequence[float],
    names: tuple[str, str],
    steering: Intervention,
    size: Size,
    tokens: int,
) -> list[TestJob]:
    """The curve (each vector at each coefficient, queries of ``names[0]``) and the ``names[1]`` settings."""
    concise, at_most = names
    queries = load(concise, "test").head(size.n_test).items
    jobs = []
    for label, vector in vectors.items():
        for c in coefs:
            ivs = () if c == 0 else (Intervention(vector, layer, "add", float(c)),)
            labels = {"part": "curve", "vector": label, "coef": float(c)}
            jobs += [TestJob(labels, item, item.query, ivs, tokens) for item in queries]
    for item in load(at_most, "test").head(size.n_test).items:
        for setting, prompt, ivs in (
            ("no instruction", item.query, ()),
            ("no instruction + concise steering", item.query, (steering,)),
            ("instruction", item.prompt, ()),
            ("instruction + concise steering", item.prompt, (steering,)),
        ):
            jobs.append(TestJob({"part": at_most, "setting": setting}, item, prompt, ivs, tokens))
    return jobs


def _length_tables(rows: pd.DataFrame, layer: int, at_most: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The length curve (per vector and coefficient) and the ``at_most`` compliance table (per setting)."""
    curve = rows[rows["part"] == "curve"]
    table = (
        curve.groupby(["vector", "coef"], sort=False)
        .agg(
            words=("words", "mean"),
            words_sd=("words", "std"),
            sentences=("sentences", "mean"),
            sentences_sd=("sentences", "std"),
            degeneration=("degenerate", "mean"),
            n=("id", "size"),
        )
        .reset_index()
    )
    table.insert(1, "layer", layer)
    at_most_table = (
        rows[rows["part"] == at_most]
        .groupby("setting", sort=False)
        .agg(
            target_rate=("on_target", "mean"),
            degeneration=("degenerate", "mean"),
            words=("words", "mean"),
            sentences=("sentences", "mean"),
            n=("id", "size"),
        )
        .reset_index()
    )
    return table, at_most_table


def _length_figure(table: pd.DataFrame, layer: int, tokens: int) -> Figure:
    """Words and sentences per response against the coefficient, one line per vector (±sd)."""
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    for k, (column, label) in enumerate(
        (("words", "words per response"), ("sentences", "sentences per response"))
    ):
        ax = fig.add_subplot(1, 2, k + 1)
        for vector, group in table.groupby("vector", sort=False):
            ax.errorbar(
                group["coef"], group[column], yerr=group[f"{column}_sd"], marker="o", capsize=3, label=vector
            )
        ax.set_xlabel(f"coefficient (diff-norms, layer {layer})")
        ax.set_ylabel(label)
        ax.axvline(0, color="grey", lw=0.5)
        ax.legend(fontsize="small")
    fig.suptitle(f"Length steering ({tokens} new tokens at most)")
    return fig


def length_study(
    model: Model,
    size: Size,
    out_dir: str | os.PathLike[str],
    *,
    concise: str = "length_extremely_concise",
    verbose: str = "length_verbose",
    at_most: str = "sentences_at_most",
    coefs: Sequence[float] = (-4.0, -2.0, 0.0, 2.0, 4.0),
    max_new_tokens: int | None = None,
    progress: bool = False,
) -> StudyResult:
    """Response length against the steering coefficient, and "at most 2 sentences" with and without steering.

    The layer is the one the validation sweep (with this study's token budget, so that the word limit
    can bind) chooses for the ``concise`` vector (its fallback when no configuration beats no steering);
    the ``verbose`` vector is added at the same layer. Both are added in diff-norm units at every
    coefficient of ``coefs`` (0: no steering) to the test queries without an instruction.
    ``max_new_tokens`` defaults to twice the size's, so that length can grow.

    Table columns: ``vector, layer, coef, words, words_sd, sentences, sentences_sd, degeneration, n``.
    ``sentences_at_most.csv`` in the study folder holds the compliance table (``setting, target_rate,
    degeneration, words, sentences, n``).
    """
    out = Path(out_dir) / "length"
    out.mkdir(parents=True, exist_ok=True)
    tokens = max_new_tokens or 2 * size.max_new_tokens
    picked = select(model, concise, size, out_dir, max_new_tokens=tokens, progress=progress)
    write_frame(picked.summary, out / f"sweep_{concise}.csv", "sweep summary")
    layer = picked.layer
    verbose_vector = build_vector(model, verbose, size)
    vectors = {concise: picked.vector, verbose: verbose_vector}
    steering = picked.or_add(max((c for c in coefs if c > 0), default=2.0))
    jobs = _length_jobs(vectors, layer, coefs, (concise, at_most), steering, size, tokens)
    rows = run_jobs(model, jobs, size, out, progress=progress)
    table, compliance = _length_tables(rows, layer, at_most)
    write_frame(compliance, out / "sentences_at_most.csv", "sentence-limit target rate")
    figures = save(_length_figure(table, layer, tokens), out, "length_curve")
    figures += save(
        bars(
            compliance, "setting", ["target_rate", "degeneration"], f"{at_most} on held-out prompts", "rate"
        ),
        out,
        "sentences_at_most",
    )
    notes = [
        f"layer {layer}: "
        + (
            f"chosen for {concise} on validation ({picked.config})"
            if picked.intervention is not None
            else f"fallback (no configuration of {concise} beat no steering on validation)"
        ),
        f"steering for {at_most}: {steering.mode}@{steering.layer}"
        + ("" if steering.coef is None else f" x{steering.coef:g} diff-norms"),
        f"{at_most}: " + "; ".join(f"{r.setting} {r.target_rate:.2f}" for r in compliance.itertuples()),
        f"at most {tokens} new tokens per response; counts of cut-off responses are lower bounds",
    ]
    return StudyResult(name="length", rows=rows, table=table, figures=figures, notes=notes)


STUDY = Study(
    "length",
    "Length: words and sentences against the coefficient",
    length_study,
    report=("quick", "full"),
    order=20,
)
