"""Language steering (Scalena et al. 2024): steer English prompts to Italian answers, keep MC accuracy.

Two vectors, both diff-in-means at the last prompt token: English vs fully Italian prompts (``it``) and
English vs "English question, answer in Italian" prompts (``en_answer_it``). The layer and strength are
chosen on the validation split by the share of Italian answers among non-degenerate configurations
(Stolfo et al.'s rule, :func:`workbench.sweeps.choose`); the test split then compares the prompt baselines
with each steering that won (and the quality frontier's ``italian`` preset), and the bundled parallel
multiple-choice set shows which questions steering gains or loses.
"""

from __future__ import annotations

import os
from itertools import product
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from workbench import presets
from workbench.activations import collect
from workbench.datasets import load, load_multiple_choice
from workbench.errors import ModelLoadError
from workbench.evaluation import code_switching_rate, detect_language, is_degenerate, sentence_share
from workbench.evaluation.multiple_choice import multiple_choice
from workbench.evaluation.perplexity import perplexity
from workbench.evaluation.targets import is_real_italian
from workbench.generation import generate
from workbench.models import Model, load_model
from workbench.plots import save_figure
from workbench.runs import write_frame
from workbench.steering import Intervention
from workbench.studies.common import Scale, StudyResult
from workbench.studies.instructions import candidate_layers
from workbench.sweeps import Config, choose, summarize, sweep
from workbench.vectors import SteeringVector

VARIANTS = ("it", "en_answer_it")


def build_vector(model: Model, variant: str, n: int) -> SteeringVector:
    """English → Italian direction at every layer from ``n`` train pairs of one prompt variant."""
    train = load("italian", "train", variant=variant).head(n)
    pos = collect(model, train.positive)
    neg = collect(model, train.negative)
    return SteeringVector.from_activations(pos, neg, dataset=f"italian:{variant}", dataset_hash=train.hash)


def choose_config(
    model: Model, vector: SteeringVector, scale: Scale, out_dir: Path
) -> tuple[Intervention | None, pd.DataFrame]:
    """Sweep layers (set_projection, and add at 2 and 4 diff-norms) on validation English prompts."""
    validation = load("italian", "validation", variant="it").head(scale.n_validation)
    configs = [Config()]
    for layer in candidate_layers(model, scale):
        configs += [Config(layer, "set_projection"), Config(layer, "add", 2.0), Config(layer, "add", 4.0)]
    rows = sweep(
        model,
        vector,
        validation,
        configs,
        scale="diff_norm",
        max_new_tokens=scale.max_new_tokens,
        batch_size=scale.batch_size,
        out_dir=out_dir,
    )
    summary = summarize(rows)
    picked = choose(summary)
    if picked.layer is None:
        return None, summary
    mode = "set_projection" if picked.config.startswith("set_projection") else "add"
    return Intervention(vector, picked.layer, mode, picked.coef, scale="diff_norm"), summary


def _language_rows(model: Model, prompts: list[str], responses: list[str]) -> pd.DataFrame:
    """One row per answer: ``language`` (langdetect, whole answer), ``sentence_share_it``,
    ``real_italian`` (:func:`~workbench.evaluation.targets.is_real_italian`), ``code_switching``,
    ``perplexity`` under the unsteered model and ``degenerate`` (:func:`~workbench.evaluation.is_degenerate`
    with that perplexity)."""
    ppl = perplexity(model, prompts, responses)
    return pd.DataFrame(
        {
            "prompt": prompts,
            "response": responses,
            "language": [detect_language(r) for r in responses],
            "sentence_share_it": [sentence_share(r, "it") for r in responses],
            "code_switching": [code_switching_rate(r) for r in responses],
            "real_italian": [is_real_italian(r) for r in responses],
            "perplexity": ppl,
            "degenerate": [is_degenerate(r, perplexity=p) for r, p in zip(responses, ppl, strict=True)],
        }
    )


def _upset(correct: pd.DataFrame, path: Path) -> list[Path]:
    """UpSet-style figure: how many questions each combination of configurations answers correctly."""
    configs = list(correct.columns)
    patterns = correct.value_counts().reset_index(name="count")
    patterns = patterns[patterns[configs].any(axis=1)].sort_values("count", ascending=False)
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(max(6, 0.5 * len(patterns) + 2), 5), height_ratios=[3, 2], sharex=True
    )
    x = np.arange(len(patterns))
    top.bar(x, patterns["count"], color="#4c72b0")
    top.set_ylabel("questions answered correctly")
    for i, (_, row) in enumerate(patterns.iterrows()):
        on = [j for j, c in enumerate(configs) if row[c]]
        bottom.scatter([i] * len(configs), range(len(configs)), color="#dddddd", s=40)
        bottom.scatter([i] * len(on), on, color="#222222", s=40)
        if len(on) > 1:
            bottom.plot([i, i], [min(on), max(on)], color="#222222")
    bottom.set_yticks(range(len(configs)), configs)
    bottom.set_xticks([])
    fig.suptitle("Which multiple-choice questions each configuration gets right")
    fig.tight_layout()
    paths = save_figure(fig, path)
    plt.close(fig)
    return paths


def _multiple_choice(
    model: Model, steerings: dict[str, list[Intervention]], n: int, out: Path
) -> tuple[pd.DataFrame, pd.DataFrame, list[Path]]:
    """Accuracy per language, unsteered and under each steering, and the questions each one gains or loses."""
    frames = []
    for language in ("en", "it"):
        items = load_multiple_choice("bundled", language=language, split="test")[:n]
        frames.append(multiple_choice(model, items).assign(config=language))
        for label, interventions in steerings.items():
            scored = multiple_choice(model, items, interventions=interventions)
            frames.append(scored.assign(config=f"{language} + steering ({label})"))
    rows = pd.concat(frames, ignore_index=True)
    accuracy = rows.groupby("config", sort=False)["correct"].mean().rename("accuracy").reset_index()
    wide = rows.pivot(index="id", columns="config", values="correct").astype(bool)[list(accuracy["config"])]
    changes = []
    for language, label in product(("en", "it"), steerings):
        steered = f"{language} + steering ({label})"
        gained = int((wide[steered] & ~wide[language]).sum())
        lost = int((~wide[steered] & wide[language]).sum())
        changes.append({"config": steered, "gained": gained, "lost": lost})
    table = accuracy.merge(
        pd.DataFrame(changes, columns=["config", "gained", "lost"]), on="config", how="left"
    )
    return rows, table, _upset(wide, out / "mc_upset")


def italian_study(
    model: Model, scale: Scale, out_dir: str | os.PathLike[str], *, name: str = "italian"
) -> StudyResult:
    """Italian answers on English prompts by steering; fluency; multiple-choice accuracy gained and lost.

    Steering configurations: each paper vector (``it``, ``en_answer_it``) where its validation sweep beat
    no steering, and the ``italian`` preset (the quality frontier's recipe) where one exists for ``model``
    (a quick ``scale`` builds it from ``scale.n_train`` pairs, cached apart from the preset's own vector).
    """
    out = Path(out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    vectors = {variant: build_vector(model, variant, scale.n_train) for variant in VARIANTS}
    chosen: dict[str, Intervention | None] = {}
    notes = []
    for variant, vector in vectors.items():
        chosen[variant], summary = choose_config(model, vector, scale, out / f"sweep_{variant}")
        write_frame(summary, out / f"sweep_{variant}.csv", "sweep summary")
        iv = chosen[variant]
        notes.append(
            f"vector {variant}: "
            + ("no steering beats the unsteered model" if iv is None else f"chose {iv.label}")
        )
    test = {variant: load("italian", "test", variant=variant).head(scale.n_test) for variant in VARIANTS}
    english, italian, asked = test["it"].negative, test["it"].positive, test["en_answer_it"].positive
    settings: list[tuple[str, list[str], list[Intervention]]] = [
        ("English prompt", english, []),
        ("English prompt, 'answer in Italian'", asked, []),
        ("Italian prompt", italian, []),
    ]
    steerings = {variant: [iv] for variant, iv in chosen.items() if iv is not None}
    if "italian" in presets.available(model):  # the quality frontier's recipe, for comparison
        pairs = presets.train_pairs("italian", scale.n_train if scale.is_quick else None)  # smoke: its few
        steerings["preset"] = presets.load(model, "italian", n_train=pairs)
        notes.append(f"preset italian: `{presets.get('italian').recipe(model).name}` ({pairs} train pairs)")
    for label, ivs in steerings.items():
        settings.append((f"English prompt + steering ({label})", english, ivs))
        settings.append((f"Italian prompt + steering ({label})", italian, ivs))
    prompts = [p for _, ps, _ in settings for p in ps]
    rows_ivs = [ivs for _, ps, ivs in settings for _ in ps]
    responses = generate(
        model,
        prompts,
        max_new_tokens=scale.max_new_tokens,
        batch_size=scale.batch_size,
        interventions=rows_ivs,
    )
    rows = _language_rows(model, prompts, responses)
    rows.insert(0, "setting", [s for s, ps, _ in settings for _ in ps])
    table = (
        rows.assign(in_italian=rows["language"] == "it")
        .groupby("setting", sort=False)
        .agg(
            answers_in_italian=("in_italian", "mean"),
            sentences_in_italian=("sentence_share_it", "mean"),
            real_italian=("real_italian", "mean"),
            code_switching=("code_switching", "mean"),
            degenerate=("degenerate", "mean"),
            median_perplexity=("perplexity", "median"),
            n=("response", "size"),
        )
        .reset_index()
    )
    figures = []
    # Multiple choice under the better-placed paper vector (``it`` first) and the preset.
    best = next((label for label in VARIANTS if label in steerings), None)
    mc_steerings = {label: steerings[label] for label in (best, "preset") if label in steerings}
    mc_rows, mc_table, upset = _multiple_choice(model, mc_steerings, scale.n_mc, out)
    figures += upset
    write_frame(mc_table, out / "multiple_choice.csv", "multiple-choice table")
    write_frame(mc_rows, out / "multiple_choice.parquet", "multiple-choice rows")
    notes.append(
        "multiple choice: " + "; ".join(f"{r.config} {r.accuracy:.3f}" for r in mc_table.itertuples())
    )
    return StudyResult(name=name, rows=rows, table=table, figures=figures, notes=notes)


def base_model_study(scale: Scale, out_dir: str | os.PathLike[str]) -> StudyResult | None:
    """The same study on the multilingual Gemma 3 270M base model, with its own vectors (None if absent)."""
    try:
        model = load_model("gemma3-270m")
    except ModelLoadError:
        return None
    return italian_study(model, scale, out_dir, name="italian_base_model")
