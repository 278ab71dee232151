"""The report's pages: ``report.md`` and ``report.html`` from a run's manifest and headline tables."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.errors import InvalidArgumentError
from workbench.files import atomic_text, html_table, markdown_table, write_frame
from workbench.record import read_record
from workbench.studies.registry import all_studies

__all__ = ["extra_tables", "publish", "render"]

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


def _section(
    page: _Page, run: Path, name: str, title: str, info: Mapping[str, Any], table: pd.DataFrame | None
) -> None:
    page.heading(title, 2)
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


def _provenance(record: Mapping[str, Any], study: str | None = None) -> str:
    """Model, weights and size of the run; with ``study``, the model, size and knobs that study ran at."""
    model = record.get("model") or {}
    entry = record.get("studies", {}).get(study, {}) if study is not None else {}
    if entry.get("model"):
        who = f"Model `{entry['model']}` (the study loads it itself)"
    else:
        who = f"Model `{model.get('name')}` (weights sha256 `{str(model.get('weights_hash'))[:16]}…`)"
    executor = record.get("executor") or {}
    where = executor.get("kind", "in process") + (
        f", {len(executor['workers'])} workers" if executor.get("workers") else ""
    )
    arguments = " ".join(f"--{k} {v}" for k, v in record.get("arguments", {}).items())
    run = f"`workbench {record.get('command')}` at size {record.get('size')}" + (
        f" ({arguments})" if arguments else ""
    )
    text = f"{who}, {run}, generated {where}."
    if entry.get("size"):
        size = {k: v for k, v in entry["size"].items() if k != "name"}
        text += f" Study size {entry['size'].get('name')} `{json.dumps(size)}`"
        knobs = {k: v for k, v in (entry.get("options") or {}).items()}
        text += f", options `{json.dumps(knobs, default=str)}`." if knobs else "."
    return text


def _titles() -> dict[str, str]:
    return {name: study.title for name, study in all_studies().items()}


def render(run: Path, record: Mapping[str, Any], tables: Mapping[str, pd.DataFrame]) -> None:
    """Write ``run/report.md`` and ``run/report.html``: a header, then each study the record holds, in the
    registry's order."""
    model = record.get("model") or {}
    title = f"Steering report: {model.get('name', '?')}"
    page = _Page()
    page.heading(title, 1)
    page.paragraph(_provenance(record))
    page.paragraph(
        f"Started {record.get('started')}, last update {record.get('updated')}; "
        f"workbench {record.get('versions', {}).get('steering-workbench')}."
    )
    studies = record.get("studies", {})
    titles = _titles()
    for name in [*titles, *(n for n in studies if n not in titles)]:
        if name in studies:
            _section(page, run, name, titles.get(name, name), studies[name], tables.get(name))
    document = (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n" + "\n".join(page.body) + "\n</body></html>\n"
    )
    atomic_text(run / "report.md", "\n".join(page.md).rstrip() + "\n", "report")
    atomic_text(run / "report.html", document, "report")


def publish(run: Path, target: Path) -> list[Path]:
    """Write each study that finished in ``run`` (and is not stale), in the registry's order, as
    ``target/<study>.md`` (notes and tables) and ``target/<study>.csv`` (its headline table), and
    ``target/index.md`` linking them; a page says which model, size, knobs and run it came from."""
    record = read_record(run)
    if not record:
        raise InvalidArgumentError(f"{run} has no manifest.json: give the --out of a finished run")
    studies = record.get("studies", {})
    titles = _titles()

    def source(study: str | None = None) -> str:
        return f"Generated from `{run}` ({_provenance(record, study)} Last update {record.get('updated')}.)"

    written, entries = [], []
    for name in [*titles, *(n for n in studies if n not in titles)]:
        info = studies.get(name, {})
        table_path = run / str(info.get("dir", name)) / "table.parquet"
        if info.get("status") != "done" or info.get("stale") or not table_path.exists():
            continue
        table = pd.read_parquet(table_path)
        page = _Page()
        page.heading(titles.get(name, name), 1)
        page.paragraph(source(name))
        page.bullets(info.get("notes") or [])
        _tables(page, run, str(info.get("dir", name)), table, links=False)
        written.append(atomic_text(target / f"{name}.md", "\n".join(page.md).rstrip() + "\n", "results page"))
        written.append(write_frame(table, target / f"{name}.csv", "results table"))
        entries.append(f"[{titles.get(name, name)}]({name}.md) ([CSV]({name}.csv))")
    index = _Page()
    index.heading("Results", 1)
    index.paragraph(source())
    index.bullets(entries)
    written.append(atomic_text(target / "index.md", "\n".join(index.md).rstrip() + "\n", "results index"))
    return written
