"""The report's pages: ``report.md`` and ``report.html`` from a run's manifest and headline tables."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.errors import InvalidArgumentError
from workbench.runs import atomic_text, html_table, markdown_table, read_manifest, write_frame
from workbench.studies.common import size_from_json, study_size

__all__ = ["TITLES", "extra_tables", "publish", "render"]

#: The heading of each study's section.
TITLES = {
    "format": "Format instructions (Stolfo et al.'s table)",
    "length": "Length: words and sentences against the coefficient",
    "composition": "Composition: a format and a length vector together",
    "ablation": "Ablation of instruction directions, with the instruction in the prompt",
    "italian": "Italian answers by steering (Scalena et al.)",
    "base_model": "Italian on the multilingual base model (Gemma 3 270M)",
    "presets": "Presets: the quality frontier's chosen recipes on held-out prompts",
    "frontier": "Quality frontier: steering that lands without breaking the model",
    "baselines": "Baselines: prompting and fine-tuning on the same data as steering",
    "baselines_base_model": "Baselines on a base model: prompting and fine-tuning on the same data as steering",
}
_STYLE = (
    "body{font-family:sans-serif;max-width:70em;margin:auto;padding:1em}"
    "table{border-collapse:collapse;margin:1em 0;font-size:90%}"
    "th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}"
)


def extra_tables(study_dir: Path) -> list[tuple[str, pd.DataFrame]]:
    """A study folder's other CSV tables (not rows, table or validation sweeps), integers kept as integers."""
    extras = []
    for path in sorted(study_dir.glob("*.csv")):
        if path.name in ("rows.csv", "table.csv") or path.name.startswith("sweep_"):
            continue
        try:
            frame = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.EmptyDataError):
            continue
        for column in frame.select_dtypes("float").columns:  # integers with gaps come back as floats
            values = frame[column].dropna()
            if len(values) and (values == values.round()).all():
                frame[column] = frame[column].astype("Int64")
        extras.append((path.name, frame))
    return extras


class _Page:
    """A markdown and an HTML document written side by side."""

    def __init__(self) -> None:
        self.md: list[str] = []
        self.body: list[str] = []

    def heading(self, text: str, level: int) -> None:
        self.md += [f"{'#' * level} {text}", ""]
        self.body.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, md: str, body: str | None = None) -> None:
        self.md += [md, ""]
        self.body.append(f"<p>{html.escape(md) if body is None else body}</p>")

    def bullets(self, items: Sequence[str]) -> None:
        if items:
            self.md += [*(f"- {item}" for item in items), ""]
            self.body.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")

    def table(self, frame: pd.DataFrame, caption: str | None = None) -> None:
        if caption is not None:
            self.md += [f"`{caption}`:", ""]
            self.body.append(f"<p><code>{html.escape(caption)}</code></p>")
        self.md += [markdown_table(frame), ""]
        self.body.append(html_table(frame))


def _tables(page: _Page, run: Path, folder: str, table: pd.DataFrame, links: bool = True) -> None:
    page.table(table)
    study_dir = run / folder
    for file, frame in extra_tables(study_dir):
        page.table(frame, f"{study_dir.name}/{file}")
    sweeps = sorted(p.name for p in study_dir.glob("sweep_*.csv"))
    if sweeps and links:
        links = ", ".join(
            f'<a href="{html.escape(folder)}/{html.escape(s)}">{html.escape(s)}</a>' for s in sweeps
        )
        md = ", ".join(f"[{s}]({folder}/{s})" for s in sweeps)
        page.paragraph(f"Validation sweeps: {md}", f"Validation sweeps: {links}")


def _section(page: _Page, run: Path, name: str, info: Mapping[str, Any], table: pd.DataFrame | None) -> None:
    page.heading(TITLES.get(name, name), 2)
    status = str(info.get("status")) + (
        " (stale: ran with another configuration)" if info.get("stale") else ""
    )
    timing = f", {info['seconds']:.0f} s" if isinstance(info.get("seconds"), int | float) else ""
    page.paragraph(f"Status: {status}{timing}.")
    if info.get("error"):
        error = str(info["error"])
        page.paragraph(f"Error: `{error}`", f"Error: <code>{html.escape(error)}</code>")
    page.bullets(info.get("notes") or [])
    if table is not None:
        _tables(page, run, str(info.get("dir", name)), table)
    for figure in info.get("figures", []):
        if figure.endswith(".png"):
            image = f'<img src="{html.escape(figure)}" alt="{html.escape(name)}" style="max-width:100%">'
            page.paragraph(f"![{name}]({figure})", image)


def _provenance(manifest: Mapping[str, Any], study: str | None = None) -> str:
    """Model, weights and size; with ``study``, the size that study ran at (:func:`study_size`)."""
    config = manifest.get("configuration", {})
    model = manifest.get("model", {})
    kind = config.get("kind") or ("quick" if config.get("quick") else "full")
    size = config.get("size")
    recorded = manifest.get("studies", {}).get(study, {}).get("size") if study is not None else None
    if recorded:  # the study recorded the size it ran at
        size = recorded
    elif study is not None and size:
        size = asdict(study_size(study, size_from_json(size)))
    if study == "base_model":  # the study loads its own model
        who = "Model `gemma3-270m` (the base-model study loads it itself)"
    else:
        who = f"Model `{model.get('name')}` (weights sha256 `{str(model.get('weights_hash'))[:16]}…`)"
    options = " ".join(f"--{k} {v}" for k, v in manifest.get("arguments", {}).items())
    run = (
        f"{kind} report"
        if manifest.get("command", "report") == "report"
        else f"{kind} analysis run ({options})"
    )
    return f"{who}, {run}, {'study' if study else 'report'} size `{json.dumps(size)}`."


def render(
    run: Path, manifest: Mapping[str, Any], tables: Mapping[str, pd.DataFrame], order: Sequence[str]
) -> None:
    """Write ``run/report.md`` and ``run/report.html``: a header, then each study of ``order`` in the manifest."""
    config = manifest.get("configuration", {})
    model = manifest.get("model", {})
    title = f"Steering report: {model.get('name', config.get('model', '?'))}"
    page = _Page()
    page.heading(title, 1)
    page.paragraph(_provenance(manifest))
    page.paragraph(
        f"Started {manifest.get('started')}, last update {manifest.get('updated')}; "
        f"workbench {manifest.get('versions', {}).get('steering-workbench')}."
    )
    studies = manifest.get("studies", {})
    for name in order:
        if name in studies:
            _section(page, run, name, studies[name], tables.get(name))
    document = (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n" + "\n".join(page.body) + "\n</body></html>\n"
    )
    atomic_text(run / "report.md", "\n".join(page.md).rstrip() + "\n", "report")
    atomic_text(run / "report.html", document, "report")


def publish(run: Path, target: Path, order: Sequence[str]) -> list[Path]:
    """Write each study of ``order``, then any other, that finished in ``run`` (with the run's configuration) as
    ``target/<study>.md`` (notes and tables) and ``target/<study>.csv`` (its headline table), and
    ``target/index.md`` linking them; a page says which model, size and run it came from."""
    manifest = read_manifest(run)
    if not manifest:
        raise InvalidArgumentError(f"{run} has no manifest.json: give the --out of a finished report run")
    studies = manifest.get("studies", {})

    def source(study: str | None = None) -> str:
        return (
            f"Generated from `{run}` ({_provenance(manifest, study)} Last update {manifest.get('updated')}.)"
        )

    written, entries = [], []
    for name in [*order, *(n for n in studies if n not in order)]:  # then any other study the run recorded
        info = studies.get(name, {})
        table_path = run / str(info.get("dir", name)) / "table.parquet"
        if info.get("status") != "done" or info.get("stale") or not table_path.exists():
            continue
        table = pd.read_parquet(table_path)
        page = _Page()
        page.heading(TITLES.get(name, name), 1)
        page.paragraph(source(name))
        page.bullets(info.get("notes") or [])
        _tables(page, run, str(info.get("dir", name)), table, links=False)
        written.append(atomic_text(target / f"{name}.md", "\n".join(page.md).rstrip() + "\n", "results page"))
        written.append(write_frame(table, target / f"{name}.csv", "results table"))
        entries.append(f"[{TITLES.get(name, name)}]({name}.md) ([CSV]({name}.csv))")
    index = _Page()
    index.heading("Results", 1)
    index.paragraph(source())
    index.bullets(entries)
    written.append(atomic_text(target / "index.md", "\n".join(index.md).rstrip() + "\n", "results index"))
    return written
