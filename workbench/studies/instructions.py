"""Instruction-following studies (Stolfo et al. 2025): format, length, composition and ablation.

Every study has the signature ``(model, scale, out_dir) -> StudyResult`` and calls only the public API:

* :func:`format_study`: one diff-in-means vector per format instruction (train split, last prompt token); the
  layer and the mode (``set_projection``, or ``add`` in ``diff_norm`` units) chosen on the validation split
  with :func:`~workbench.sweeps.sweep` and :func:`~workbench.sweeps.choose`; on the test split, compliance
  and degeneration in four settings: no instruction, no instruction + steering, instruction, instruction +
  steering (Stolfo et al.'s table), per instruction and averaged.
* :func:`length_study`: words and sentences per response against the coefficient of a conciseness and a
  verbosity vector, and compliance with "at most 2 sentences" with and without conciseness steering.
* :func:`composition_study`: a format vector and a length vector at once, as two interventions at their own
  layers and as their sum at one layer, against each alone and against both instructions in the prompt.
* :func:`ablation_study`: directional ablation of an instruction's direction (at the chosen layer and at
  every layer) with the instruction in the prompt, against random directions (several seeds, mean ± std).

Validation sweeps are cached under ``out_dir/sweeps`` (keyed by dataset, model and scale), so the studies of
one run directory share them: the composition and ablation studies reuse the format study's sweeps.
All test-split generations of a study run as one batched :func:`~workbench.generation.generate` call with
per-row interventions.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from workbench.activations import collect
from workbench.datasets import Item, load
from workbench.datasets import names as dataset_names
from workbench.errors import InvalidArgumentError
from workbench.evaluation import evaluate
from workbench.generation import generate
from workbench.models import Model
from workbench.plots import save_figure
from workbench.steering import Intervention
from workbench.studies.common import Scale, StudyResult
from workbench.sweeps import Config, choose, per_layer, summarize, sweep
from workbench.vectors import SteeringVector

__all__ = [
    "FORMATS",
    "SETTINGS",
    "Selected",
    "ablation_study",
    "build_vector",
    "candidate_layers",
    "composition_study",
    "format_study",
    "length_study",
    "select",
]

#: The format instructions of :func:`format_study` (IFEval-verifiable, bundled datasets). ``uppercase`` is
#: left out: SmolLM2 ignores both case instructions, and ``lowercase`` already shows it.
FORMATS = (
    "json_format",
    "bullet_lists",
    "lowercase",
    "no_comma",
    "title",
    "highlighted_sections",
)
#: The four test settings of :func:`format_study`, in table order.
SETTINGS = ("no_instruction", "no_instruction+steering", "with_instruction", "with_instruction+steering")
#: Strict JSON needs the object closed: ``json_format`` gets at least this many tokens at full scale.
JSON_TOKENS = 96


# ---- shared steps -------------------------------------------------------------------------------------


def candidate_layers(model: Model, scale: Scale) -> list[int]:
    """The scale's candidate layers for ``model`` (:meth:`Scale.candidate_layers`), each checked."""
    return [model.layer_check(int(b)) for b in scale.candidate_layers(model.n_layers)]


def _budget(name: str, scale: Scale, json_tokens: int | None = None) -> int:
    """Tokens to generate for ``name``: the scale's, but at least :data:`JSON_TOKENS` for JSON at full scale."""
    if name != "json_format":
        return scale.max_new_tokens
    if json_tokens is None:
        json_tokens = JSON_TOKENS if scale.max_new_tokens >= Scale.full().max_new_tokens else 0
    return max(scale.max_new_tokens, json_tokens)


def build_vector(model: Model, name: str, scale: Scale) -> SteeringVector:
    """Diff-in-means at the last prompt token, every layer, from the first ``scale.n_train`` train pairs."""
    train = load(name, "train").head(scale.n_train)
    pos = collect(model, train.positive, batch_size=scale.batch_size)
    neg = collect(model, train.negative, batch_size=scale.batch_size)
    return SteeringVector.from_activations(pos, neg, dataset=name, dataset_hash=train.hash)


@dataclass(frozen=True)
class Selected:
    """What the validation sweep chose for one instruction.

    ``intervention`` is None when no steered configuration beats no steering without degenerating more
    (Stolfo et al.'s rule); ``layer`` is then a fallback (the layer with the best raw compliance) for the
    studies that need one. ``summary`` is :func:`~workbench.sweeps.summarize`'s table.
    """

    name: str
    vector: SteeringVector
    intervention: Intervention | None
    layer: int
    summary: pd.DataFrame
    config: str
    validation_compliance: float
    baseline_compliance: float

    def or_add(self, coef: float = 2.0) -> Intervention:
        """The chosen intervention, or ``add`` at the fallback layer with ``coef`` diff-norms when none."""
        if self.intervention is not None:
            return self.intervention
        return Intervention(self.vector, self.layer, "add", coef, scale="diff_norm")

    @property
    def add_coef(self) -> float:
        """The chosen ``add`` coefficient in diff-norm units (1.0 for ``set_projection`` or no steering)."""
        iv = self.intervention
        return float(iv.coef) if iv is not None and iv.mode == "add" and iv.coef is not None else 1.0

    def describe(self) -> dict[str, object]:
        iv = self.intervention
        return {
            "instruction": self.name,
            "config": self.config,
            "layer": self.layer if iv is not None else pd.NA,
            "mode": iv.mode if iv is not None else "none",
            "coef": np.nan if iv is None or iv.coef is None else float(iv.coef),
            "validation_compliance": self.validation_compliance,
            "validation_baseline": self.baseline_compliance,
        }


def _sweep_dir(run: Path, model: Model, name: str, scale: Scale, tokens: int) -> Path:
    key = json.dumps([model.weights_hash, name, scale.n_train, scale.batch_size, tokens])
    return run / "sweeps" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def select(
    model: Model,
    name: str,
    scale: Scale,
    out_dir: str | os.PathLike[str],
    *,
    coefs: Sequence[float] = (1.0, 2.0),
    json_tokens: int | None = None,
    max_new_tokens: int | None = None,
    progress: bool = False,
) -> Selected:
    """Build ``name``'s vector and sweep the candidate layers on its validation split.

    Per layer: ``set_projection`` (to the positive set's mean projection) and ``add`` at each of ``coefs``
    (diff-norm units), all positions; ``choose`` picks. Responses get ``max_new_tokens`` (default: the
    scale's, :data:`JSON_TOKENS` for JSON at full scale). Rows are cached under ``out_dir/sweeps``.
    """
    vector = build_vector(model, name, scale)
    layers = candidate_layers(model, scale)
    configs = [Config()]
    for layer in layers:
        configs += [Config(layer, "set_projection"), *(Config(layer, "add", float(c)) for c in coefs)]
    tokens = max_new_tokens or _budget(name, scale, json_tokens)
    rows = sweep(
        model,
        vector,
        load(name, "validation").head(scale.n_validation),
        configs,
        scale="diff_norm",
        max_new_tokens=tokens,
        batch_size=scale.batch_size,
        out_dir=_sweep_dir(Path(out_dir), model, name, scale, tokens),
        progress=progress,
    )
    summary = summarize(rows)
    picked = choose(summary)
    if picked.layer is not None:
        row = summary[summary["config"] == picked.config].iloc[0]
        iv: Intervention | None = Intervention(
            vector, picked.layer, str(row["mode"]), picked.coef, scale="diff_norm"
        )
        layer = picked.layer
    else:
        iv = None
        layers_table = per_layer(summary)
        middle = layers[len(layers) // 2]
        order = layers_table.assign(_d=(layers_table["layer"] - middle).abs())
        order = order.sort_values(["max_compliance", "_d"], ascending=[False, True], kind="stable")
        layer = int(order.iloc[0]["layer"]) if len(order) else middle
    return Selected(
        name=name,
        vector=vector,
        intervention=iv,
        layer=layer,
        summary=summary,
        config=picked.config,
        validation_compliance=picked.compliance,
        baseline_compliance=picked.baseline_compliance,
    )


def _score(responses: Sequence[str], items: Sequence[Item]) -> pd.DataFrame:
    """:func:`workbench.evaluation.evaluate`'s columns (checks, counts, language, degeneration) per response."""
    return evaluate(list(responses), list(items)).drop(columns=["id", "response"])


@dataclass(frozen=True)
class _Job:
    """One test generation: a prompt, its item (for checking), the interventions, labels for the table."""

    labels: dict[str, object]
    item: Item
    prompt: str
    interventions: tuple[Intervention, ...]
    max_new_tokens: int


def _truncate(model: Model, text: str, n_tokens: int) -> str:
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= n_tokens:
        return text
    return model.tokenizer.decode(ids[:n_tokens], skip_special_tokens=True).strip()


def _run(model: Model, jobs: Sequence[_Job], scale: Scale, *, progress: bool = False) -> pd.DataFrame:
    """Generate every job in ONE batched per-row call and score it; one row per job.

    Identical (prompt, interventions) pairs are generated once. The call generates the largest budget of
    all jobs; a job with a smaller budget is scored on its response cut to that many tokens (greedy
    decoding makes that the response it would have got).
    """
    unique: dict[tuple[str, tuple[int, ...]], int] = {}
    prompts, rows_ivs = [], []
    slots = []
    for job in jobs:
        key = (job.prompt, tuple(id(iv) for iv in job.interventions))
        if key not in unique:
            unique[key] = len(prompts)
            prompts.append(job.prompt)
            rows_ivs.append(list(job.interventions))
        slots.append(unique[key])
    longest = max(job.max_new_tokens for job in jobs)
    generated = generate(
        model,
        prompts,
        max_new_tokens=longest,
        batch_size=scale.batch_size,
        interventions=rows_ivs,
        progress=progress,
    )
    responses = [
        generated[s] if job.max_new_tokens >= longest else _truncate(model, generated[s], job.max_new_tokens)
        for job, s in zip(jobs, slots, strict=True)
    ]
    scores = _score(responses, [job.item for job in jobs])
    labels = pd.DataFrame([job.labels for job in jobs])
    base = pd.DataFrame(
        {
            "id": [job.item.id for job in jobs],
            "prompt": [job.prompt for job in jobs],
            "interventions": ["; ".join(iv.label for iv in job.interventions) for job in jobs],
            "max_new_tokens": [job.max_new_tokens for job in jobs],
            "response": responses,
        }
    )
    return pd.concat([labels, base, scores], axis=1)


def _save(fig: Figure, out: Path, stem: str) -> list[Path]:
    return save_figure(fig, out / stem)


def _bars(table: pd.DataFrame, groups: str, columns: Sequence[str], title: str, ylabel: str) -> Figure:
    """Grouped bars: one group per row of ``table`` (labelled by ``groups``), one bar per column."""
    fig = Figure(figsize=(max(6.0, 1.2 * len(table) + 2), 4), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(columns)
    x = np.arange(len(table))
    for k, column in enumerate(columns):
        ax.bar(x + (k - (len(columns) - 1) / 2) * width, table[column].astype(float), width, label=column)
    ax.set_xticks(x, [str(v) for v in table[groups]], rotation=30, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small", ncols=2)
    return fig


# ---- 1. format ----------------------------------------------------------------------------------------


def format_study(
    model: Model,
    scale: Scale,
    out_dir: str | os.PathLike[str],
    *,
    names: Sequence[str] = FORMATS,
    coefs: Sequence[float] = (1.0, 2.0),
    json_tokens: int | None = None,
    progress: bool = False,
) -> StudyResult:
    """Stolfo et al.'s format table: compliance in the four :data:`SETTINGS` per instruction and averaged.

    Table columns: ``instruction, config, layer, mode, coef`` (the validation choice; ``mode`` "none" when
    steering did not beat the unsteered model, whose steered settings then equal the unsteered ones), one
    compliance column per setting, ``degeneration:<setting>`` per setting, and ``n``; the last row,
    ``average``, is the mean over instructions. ``json_tokens`` (default: :data:`JSON_TOKENS` at full scale)
    is the token budget of ``json_format``.
    """
    run = Path(out_dir)
    out = run / "format"
    out.mkdir(parents=True, exist_ok=True)
    unknown = [n for n in names if n not in dataset_names()]
    if unknown or not names:
        raise InvalidArgumentError(f"unknown or no format datasets {unknown}; see workbench.datasets.names()")
    chosen = {}
    for name in names:
        chosen[name] = select(
            model, name, scale, run, coefs=coefs, json_tokens=json_tokens, progress=progress
        )
        chosen[name].summary.to_csv(out / f"sweep_{name}.csv", index=False)
    jobs = []
    for name in names:
        iv = chosen[name].intervention
        tokens = _budget(name, scale, json_tokens)
        for item in load(name, "test").head(scale.n_test).items:
            for setting in SETTINGS:
                steered = setting.endswith("+steering") and iv is not None
                jobs.append(
                    _Job(
                        {"instruction": name, "setting": setting, "steered": steered},
                        item,
                        item.query if setting.startswith("no_instruction") else item.prompt,
                        (iv,) if steered and iv is not None else (),
                        tokens,
                    )
                )
    rows = _run(model, jobs, scale, progress=progress)
    records = []
    for name in names:
        mine = rows[rows["instruction"] == name]
        described = chosen[name].describe()
        record = {"instruction": name, **{k: described[k] for k in ("config", "layer", "mode", "coef")}}
        by_setting = mine.groupby("setting", sort=False)
        record |= {s: float(by_setting["follows"].mean()[s]) for s in SETTINGS}
        record |= {f"degeneration:{s}": float(by_setting["degenerate"].mean()[s]) for s in SETTINGS}
        records.append(record | {"n": int(mine["id"].nunique())})
    table = pd.DataFrame(records)
    numeric = [*SETTINGS, *(f"degeneration:{s}" for s in SETTINGS)]
    average = {"instruction": "average", "config": "", "layer": pd.NA, "mode": "", "coef": np.nan}
    average |= {c: float(table[c].mean()) for c in numeric} | {"n": int(table["n"].sum())}
    table = pd.concat([table, pd.DataFrame([average])], ignore_index=True)
    table["layer"] = table["layer"].astype("Int64")
    choices = pd.DataFrame([chosen[n].describe() for n in names])
    choices.astype({"layer": "Int64"}).to_csv(out / "choices.csv", index=False)
    figures = _save(
        _bars(table, "instruction", SETTINGS, "Format compliance on held-out prompts", "compliance (strict)"),
        out,
        "compliance",
    )
    notes = [
        f"{n}: "
        + (
            "no steered configuration beat no steering on validation"
            if chosen[n].intervention is None
            else f"{chosen[n].config} (validation {chosen[n].validation_compliance:.2f} vs "
            f"{chosen[n].baseline_compliance:.2f} unsteered)"
        )
        for n in names
    ]
    notes.append(
        f"candidate layers {candidate_layers(model, scale)}; {scale.n_train} train, {scale.n_validation} "
        f"validation, {scale.n_test} test prompts per instruction; json_format budget "
        f"{_budget('json_format', scale, json_tokens)} tokens, others {scale.max_new_tokens}"
    )
    return StudyResult(name="format", rows=rows, table=table, figures=figures, notes=notes)


# ---- 2. length ----------------------------------------------------------------------------------------


def length_study(
    model: Model,
    scale: Scale,
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
    ``max_new_tokens`` defaults to twice the scale's, so that length can grow.

    Table columns: ``vector, layer, coef, words, words_sd, sentences, sentences_sd, degeneration, n``.
    ``sentences_at_most.csv`` in the study folder holds the compliance table (``setting, compliance,
    degeneration, words, sentences, n``).
    """
    out = Path(out_dir) / "length"
    out.mkdir(parents=True, exist_ok=True)
    tokens = max_new_tokens or 2 * scale.max_new_tokens
    picked = select(model, concise, scale, out_dir, max_new_tokens=tokens, progress=progress)
    picked.summary.to_csv(out / f"sweep_{concise}.csv", index=False)
    layer = picked.layer
    verbose_vector = build_vector(model, verbose, scale)
    vectors = {concise: picked.vector, verbose: verbose_vector}
    queries = load(concise, "test").head(scale.n_test).items
    jobs = []
    for label, vector in vectors.items():
        for c in coefs:
            ivs = () if c == 0 else (Intervention(vector, layer, "add", float(c), scale="diff_norm"),)
            for item in queries:
                jobs.append(
                    _Job({"part": "curve", "vector": label, "coef": float(c)}, item, item.query, ivs, tokens)
                )
    steering = picked.or_add(max((c for c in coefs if c > 0), default=2.0))
    for item in load(at_most, "test").head(scale.n_test).items:
        for setting, prompt, ivs in (
            ("no instruction", item.query, ()),
            ("no instruction + concise steering", item.query, (steering,)),
            ("instruction", item.prompt, ()),
            ("instruction + concise steering", item.prompt, (steering,)),
        ):
            jobs.append(_Job({"part": at_most, "setting": setting}, item, prompt, ivs, tokens))
    rows = _run(model, jobs, scale, progress=progress)
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
    compliance = (
        rows[rows["part"] == at_most]
        .groupby("setting", sort=False)
        .agg(
            compliance=("follows", "mean"),
            degeneration=("degenerate", "mean"),
            words=("words", "mean"),
            sentences=("sentences", "mean"),
            n=("id", "size"),
        )
        .reset_index()
    )
    compliance.to_csv(out / "sentences_at_most.csv", index=False)
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
    figures = _save(fig, out, "length_curve")
    figures += _save(
        _bars(
            compliance, "setting", ["compliance", "degeneration"], f"{at_most} on held-out prompts", "rate"
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
        f"{at_most}: " + "; ".join(f"{r.setting} {r.compliance:.2f}" for r in compliance.itertuples()),
        f"at most {tokens} new tokens per response; counts of cut-off responses are lower bounds",
    ]
    return StudyResult(name="length", rows=rows, table=table, figures=figures, notes=notes)


# ---- 3. composition -----------------------------------------------------------------------------------


def _combined(format_item: Item, length_item: Item) -> Item:
    if format_item.base_id != length_item.base_id:
        raise InvalidArgumentError(f"items {format_item.id} and {length_item.id} are on different queries")
    return replace(
        format_item,
        id=f"{format_item.id}+{length_item.behaviour}",
        behaviour=f"{format_item.behaviour}+{length_item.behaviour}",
        instruction=f"{format_item.instruction} {length_item.instruction}",
        prompt=f"{format_item.query} {format_item.instruction} {length_item.instruction}",
        instruction_id_list=(*format_item.instruction_id_list, *length_item.instruction_id_list),
        kwargs=(*format_item.kwargs, *length_item.kwargs),
    )


def composition_study(
    model: Model,
    scale: Scale,
    out_dir: str | os.PathLike[str],
    *,
    format_name: str = "no_comma",
    length_name: str = "one_sentence",
    progress: bool = False,
) -> StudyResult:
    """A format and a length vector together: at their own layers, and summed at the format vector's layer.

    Each vector is used as its validation sweep chose (``add`` at 2 diff-norms at the fallback layer when
    steering did not beat no steering). The sum is ``c_f·v_f + c_l·v_l`` (raw vectors, each with its chosen
    ``add`` coefficient, 1 for ``set_projection``) added at the format layer. Table columns: ``setting,
    format, length, both, degeneration, n`` (``format``/``length``: rate of responses that satisfy that
    instruction; ``both``: both).
    """
    out = Path(out_dir) / "composition"
    out.mkdir(parents=True, exist_ok=True)
    f_sel = select(model, format_name, scale, out_dir, progress=progress)
    l_sel = select(model, length_name, scale, out_dir, progress=progress)
    for sel in (f_sel, l_sel):
        sel.summary.to_csv(out / f"sweep_{sel.name}.csv", index=False)
    f_iv, l_iv = f_sel.or_add(), l_sel.or_add()
    layer = f_iv.layer
    summed = f_sel.vector.select(layer) * f_sel.add_coef + l_sel.vector.select(layer) * l_sel.add_coef
    sum_iv = Intervention(summed, layer, "add", 1.0, scale="diff_norm")
    f_items = load(format_name, "test").head(scale.n_test).items
    l_items = load(length_name, "test").head(scale.n_test).items
    settings: list[tuple[str, bool, tuple[Intervention, ...]]] = [
        ("no instruction", False, ()),
        ("both instructions in the prompt", True, ()),
        (f"{format_name} vector", False, (f_iv,)),
        (f"{length_name} vector", False, (l_iv,)),
        ("both vectors (own layers)", False, (f_iv, l_iv)),
        (f"sum of vectors (layer {layer})", False, (sum_iv,)),
        ("both instructions + both vectors", True, (f_iv, l_iv)),
    ]
    tokens = max(_budget(format_name, scale), _budget(length_name, scale))
    jobs = []
    for f_item, l_item in zip(f_items, l_items, strict=True):
        item = _combined(f_item, l_item)
        for setting, instructed, ivs in settings:
            prompt = item.prompt if instructed else item.query
            jobs.append(_Job({"setting": setting}, item, prompt, ivs, tokens))
    rows = _run(model, jobs, scale, progress=progress)
    f_id, l_id = f_items[0].instruction_id_list[0], l_items[0].instruction_id_list[0]
    rows = rows.assign(format=rows[f"check:{f_id}"].astype(bool), length=rows[f"check:{l_id}"].astype(bool))
    table = (
        rows.groupby("setting", sort=False)
        .agg(
            format=("format", "mean"),
            length=("length", "mean"),
            both=("follows", "mean"),
            degeneration=("degenerate", "mean"),
            n=("id", "size"),
        )
        .reset_index()
    )
    figures = _save(
        _bars(
            table, "setting", ["format", "length", "both"], f"{format_name} + {length_name}", "rate satisfied"
        ),
        out,
        "composition",
    )

    def how(sel: Selected, iv: Intervention) -> str:
        chosen = "chosen on validation" if sel.intervention is not None else "fallback, steering did not win"
        return f"{sel.name}: {iv.label} ({chosen})"

    notes = [
        how(f_sel, f_iv),
        how(l_sel, l_iv),
        f"sum at layer {layer}: {f_sel.add_coef:g}·{format_name} + {l_sel.add_coef:g}·{length_name} (raw vectors)",
        f"cosine of the two directions at layer {layer}: {f_sel.vector.cosine(l_sel.vector)[layer]:.3f}",
    ]
    return StudyResult(name="composition", rows=rows, table=table, figures=figures, notes=notes)


# ---- 4. ablation --------------------------------------------------------------------------------------


def _random_vector(model: Model, seed: int) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(model.n_layers, model.d_model, generator=generator)
    return SteeringVector.from_directions(
        directions, range(model.n_layers), method="random", seed=seed, model_name=model.name
    )


def ablation_study(
    model: Model,
    scale: Scale,
    out_dir: str | os.PathLike[str],
    *,
    names: Sequence[str] = ("bullet_lists", "one_sentence"),
    seeds: Sequence[int] = (0, 1, 2),
    progress: bool = False,
) -> StudyResult:
    """How far compliance falls, with the instruction in the prompt, when its direction is ablated.

    Per instruction: the direction is ablated (``x - (x·u)u``, all positions) at the validation-chosen
    layer (the fallback layer when steering did not win) and at every layer; the control ablates a random
    unit direction per layer (one per seed) in the same two ways. Table columns: ``instruction, layer,
    no_instruction, with_instruction, ablated_layer, ablated_all, random_layer_mean, random_layer_std,
    random_all_mean, random_all_std, degeneration_ablated_layer, degeneration_ablated_all, n``.
    """
    out = Path(out_dir) / "ablation"
    out.mkdir(parents=True, exist_ok=True)
    if not seeds:
        raise InvalidArgumentError("ablation needs at least one seed for the random-direction control")
    randoms = {s: _random_vector(model, s) for s in seeds}
    every = range(model.n_layers)
    jobs = []
    selections = {}
    for name in names:
        sel = selections[name] = select(model, name, scale, out_dir, progress=progress)
        sel.summary.to_csv(out / f"sweep_{name}.csv", index=False)
        layer = sel.layer
        settings: list[tuple[str, int | None, bool, tuple[Intervention, ...]]] = [
            ("no_instruction", None, False, ()),
            ("with_instruction", None, True, ()),
            ("ablated_layer", None, True, (Intervention(sel.vector, layer, "ablate"),)),
            ("ablated_all", None, True, tuple(Intervention(sel.vector, b, "ablate") for b in every)),
        ]
        for s, rnd in randoms.items():
            settings.append(("random_layer", s, True, (Intervention(rnd, layer, "ablate"),)))
            settings.append(("random_all", s, True, tuple(Intervention(rnd, b, "ablate") for b in every)))
        tokens = _budget(name, scale)
        for item in load(name, "test").head(scale.n_test).items:
            for setting, seed, instructed, ivs in settings:
                labels = {"instruction": name, "layer": layer, "setting": setting, "seed": seed}
                jobs.append(_Job(labels, item, item.prompt if instructed else item.query, ivs, tokens))
    rows = _run(model, jobs, scale, progress=progress)
    rows["seed"] = rows["seed"].astype("Int64")
    records = []
    for name in names:
        mine = rows[rows["instruction"] == name]
        rate = mine.groupby("setting", sort=False)["follows"].mean()
        degenerate = mine.groupby("setting", sort=False)["degenerate"].mean()
        record: dict[str, object] = {"instruction": name, "layer": selections[name].layer}
        for setting in ("no_instruction", "with_instruction", "ablated_layer", "ablated_all"):
            record[setting] = float(rate[setting])
        for setting in ("random_layer", "random_all"):
            per_seed = mine[mine["setting"] == setting].groupby("seed")["follows"].mean()
            record[f"{setting}_mean"] = float(per_seed.mean())
            record[f"{setting}_std"] = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else math.nan
        record["degeneration_ablated_layer"] = float(degenerate["ablated_layer"])
        record["degeneration_ablated_all"] = float(degenerate["ablated_all"])
        record["n"] = int(mine["id"].nunique())
        records.append(record)
    table = pd.DataFrame(records)
    fig = Figure(figsize=(max(6.0, 2.5 * len(table) + 2), 4), layout="constrained")
    ax = fig.add_subplot()
    bars = [
        ("with_instruction", None),
        ("ablated_layer", None),
        ("random_layer_mean", "random_layer_std"),
        ("ablated_all", None),
        ("random_all_mean", "random_all_std"),
    ]
    width = 0.8 / len(bars)
    x = np.arange(len(table))
    for k, (column, err) in enumerate(bars):
        yerr = None if err is None else table[err].fillna(0).to_numpy()
        ax.bar(
            x + (k - (len(bars) - 1) / 2) * width, table[column], width, yerr=yerr, capsize=3, label=column
        )
    ax.set_xticks(x, [f"{r.instruction} (layer {r.layer})" for r in table.itertuples()])
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("compliance with the instruction in the prompt")
    ax.set_title(f"Directional ablation vs random directions ({len(seeds)} seeds)")
    ax.legend(fontsize="small", ncols=2)
    figures = _save(fig, out, "ablation")
    notes = [
        f"{n}: layer {s.layer} "
        + ("(chosen on validation)" if s.intervention is not None else "(fallback: steering did not win)")
        for n, s in selections.items()
    ]
    notes.append(f"random controls: seeds {list(seeds)}, one Gaussian direction per layer, normalised")
    return StudyResult(name="ablation", rows=rows, table=table, figures=figures, notes=notes)
