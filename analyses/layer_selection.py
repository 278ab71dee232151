"""Layer selection on SmolLM2: do the cheap signals (probe accuracy, projection AUROC) pick the layer that a
behavioural sweep picks, and what does choosing with them cost in compliance?

For each behaviour, :func:`workbench.layers.find_layers` (train split: probes and the diff-in-means vector;
validation split: held-out projections and the greedy sweep of prompts without their instruction), then its
top-k mode read from the same sweep (``LayerReport.top_k``, nothing regenerated). Writes under ``--out``:

- ``layers.{parquet,csv}``: one row per (behaviour, layer): probe, projection and sweep scores;
- ``signals.{parquet,csv}``: one row per (behaviour, signal): its layer, the compliance the sweep's rule gets
  there, the loss against the sweep's own pick, Spearman's rho with per-layer compliance; plus ``top_k``;
- ``configs.{parquet,csv}`` (one row per steering configuration), ``responses.parquet`` (every response);
- ``cosines.{parquet,csv}`` (methods per layer), ``layer_cosines.{parquet,csv}`` (diff-in-means, layer × layer);
- ``figures/``: signals vs layer, held-out projection histograms, layer × coefficient heatmaps (PNG + SVG);
- ``table.md`` and ``manifest.json`` (the run record, with timings). Sweeps are saved under ``sweeps/`` and a rerun resumes them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from workbench.activations import collect
from workbench.datasets import load
from workbench.files import atomic_text, write_frame
from workbench.layers import LayerReport, find_layers
from workbench.models import load_model
from workbench.plots import plot_projection_histograms, plot_sweep_heatmaps, save_figure
from workbench.projection import direction_cosines
from workbench.record import new_record, write_record

BEHAVIOURS = ("json_format", "italian:it", "bullet_lists", "one_sentence", "lowercase")


def write(frame: pd.DataFrame, path: Path, csv: bool = True) -> None:
    write_frame(frame, path.with_suffix(".parquet"))
    if csv:
        write_frame(frame, path.with_suffix(".csv"))


def fmt_layer(layer: int | None, coef: float | None = None) -> str:
    if layer is None:
        return "none"
    return f"{layer}" + ("" if coef is None else f" (×{coef:g})")


def table_row(report: LayerReport, top: LayerReport) -> str:
    signals = report.signals().set_index("signal")
    c = report.choice

    def cheap(name: str) -> str:
        s = signals.loc[name]
        return (
            f"{int(s['layer'])} / {s['target_rate']:.2f} / {s['target_rate_loss']:+.2f} / {s['spearman']:.2f} / "
            f"{s['spearman_max']:.2f}"
        )

    return (
        f"| {report.dataset} | {c.baseline_target_rate:.2f} ({c.baseline_degeneration:.2f}) "
        f"| {fmt_layer(c.layer, c.coef)} | {c.target_rate:.2f} ({c.degeneration:.2f}) "
        f"| {cheap('probe_accuracy')} | {cheap('projection_auroc')} | {cheap('cohens_d')} "
        f"| {','.join(map(str, top.swept_layers))} → {fmt_layer(top.choice.layer, top.choice.coef)} "
        f"| {top.cost:.2f} | {c.target_rate - top.choice.target_rate:+.2f} |"
    )


HEADER = (
    "| behaviour | no steering: compliance (degeneration) | sweep pick (layer, coef) | its compliance "
    "(degeneration) | probe-accuracy pick | projection-AUROC pick | Cohen's-d pick "
    "| top-k layers → pick | top-k cost | top-k loss |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/layer_selection"))
    parser.add_argument("--behaviours", nargs="+", default=list(BEHAVIOURS), help="name or name:variant")
    parser.add_argument("--layers", default="0:30:3", help="start:stop:step of candidate blocks")
    parser.add_argument("--coefs", nargs="+", type=float, default=[2.0, 4.0], help="in diff_norm units")
    parser.add_argument("--n-validation", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    out, figures = args.out, args.out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    layers = list(range(*map(int, args.layers.split(":"))))

    start = time.perf_counter()
    model = load_model()
    timings: dict[str, float] = {"load_model": time.perf_counter() - start}
    frames: dict[str, list[pd.DataFrame]] = {k: [] for k in ("layers", "signals", "configs", "responses")}
    cosine_frames: list[pd.DataFrame] = []
    layer_cosine_frames: list[pd.DataFrame] = []
    rows = []
    for behaviour in args.behaviours:
        name, _, variant = behaviour.partition(":")
        t0 = time.perf_counter()
        report = find_layers(
            model,
            name,
            variant=variant or None,
            layers=layers,
            coefs=args.coefs,
            scale="diff_norm",
            n_validation=args.n_validation,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            out_dir=out / "sweeps" / behaviour.replace(":", "-"),
        )
        timings[behaviour] = time.perf_counter() - t0
        top = report.top_k(args.top_k)
        tag = report.dataset

        train = load(name, "train", variant=variant or None)
        pos = collect(model, train.positive, layers=layers, batch_size=args.batch_size)
        neg = collect(model, train.negative, layers=layers, batch_size=args.batch_size)
        cosines = direction_cosines(pos, neg)
        cosine_frames.append(cosines.across_methods.assign(dataset=tag))
        layer_cosine_frames.append(
            cosines.across_layers.reset_index()
            .melt(id_vars="layer", var_name="layer_b", value_name="cosine")
            .rename(columns={"layer": "layer_a"})
            .assign(dataset=tag)
        )

        frames["layers"].append(report.to_frame())
        signals = report.signals()
        top_row = {
            "dataset": tag,
            "signal": f"top_{args.top_k}",
            "layer": top.choice.layer,
            "target_rate": top.choice.target_rate,
            "target_rate_loss": report.choice.target_rate - top.choice.target_rate,
            "spearman": float("nan"),
            "spearman_max": float("nan"),
            "cost": top.cost,
        }
        frames["signals"].append(
            pd.concat([signals.assign(cost=1.0), pd.DataFrame([top_row])], ignore_index=True)
        )
        frames["configs"].append(report.summary.assign(dataset=tag))
        frames["responses"].append(report.results.assign(dataset=tag))
        rows.append(table_row(report, top))

        stem = behaviour.replace(":", "-")
        save_figure(report.plot(), figures / f"signals_{stem}")
        shown = report.choice.layer if report.choice.layer is not None else report.picks["projection_auroc"]
        save_figure(plot_projection_histograms(report.projections, shown), figures / f"projections_{stem}")
        save_figure(plot_sweep_heatmaps(report.summary), figures / f"sweep_{stem}")

        for key, parts in frames.items():
            write(pd.concat(parts, ignore_index=True), out / key, csv=key != "responses")
        write(pd.concat(cosine_frames, ignore_index=True), out / "cosines")
        write(pd.concat(layer_cosine_frames, ignore_index=True), out / "layer_cosines")
        timings["total"] = time.perf_counter() - start
        record = new_record("analysis layer_selection", arguments=vars(args), model=model)
        write_record(out, record | {"timings": {k: round(v, 1) for k, v in timings.items()}})
        settings = (
            f"SmolLM2-135M-Instruct, layers {layers}, add at coefs {args.coefs} × diff_norm (all positions), "
            f"{args.n_validation} validation prompts without their instruction, {args.max_new_tokens} new tokens, "
            f"greedy; compliance = strict IFEval check; top-k = {args.top_k} by projection AUROC "
            "(ties: probe accuracy, Cohen's d). Cheap-pick columns: layer / sweep-rule compliance at that layer / "
            "loss vs the sweep pick / Spearman across swept layers with the rule's per-layer compliance / with "
            "the layer's best compliance ignoring degeneration (nan: a constant side)."
        )
        atomic_text(out / "table.md", f"{settings}\n\n{HEADER}\n" + "\n".join(rows) + "\n", "table")
        print(f"{tag}: {timings[behaviour]:.0f} s", rows[-1], flush=True)


if __name__ == "__main__":
    main()
