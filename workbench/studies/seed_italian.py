"""The seed's table (Scalena, Fersini and Nissim 2024): the gentle push against prompting and residual steering.

On the same held-out English questions (the ``italian`` set's test split): unsteered; the fully Italian prompt;
"answer in Italian"; the residual-stream vector of the last prompt token (English vs Italian prompts) added at
every position, and the same vector on generated tokens only with a linear fade (each recipe chosen on
validation); the gentle push (:func:`workbench.methods.gentle_push`: per-step attention-head vectors added from
the last prompt token on, α fading linearly to 0, as the authors run it); and a self-distilled LoRA adapter
(the fine-tuned model of the paper's comparison) where it fits. Per setting: real Italian
(:func:`~workbench.evaluation.targets.is_real_italian`), langdetect's probability of Italian (the paper's
metric), clean, degeneration; per model-changing setting, multiple choice in English and Italian answered by
generation (the paper's protocol) and by log-likelihood, with the questions gained and lost against the
unmodified model. Every answer is cached in the study folder, so a stopped run resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.behaviours import BEHAVIOURS, build_vectors
from workbench.datasets import load, load_multiple_choice
from workbench.evaluation.language import langdetect_probability
from workbench.evaluation.mc import mc_changes, multiple_choice
from workbench.evaluation.perplexity import perplexity
from workbench.evaluation.scoring import score_answers
from workbench.evaluation.selection import choose_setting
from workbench.files import atomic_text, write_frame
from workbench.finetune import lora_applied
from workbench.gentle_push import gentle_push
from workbench.head_steering import HeadIntervention
from workbench.interventions import AnyIntervention
from workbench.models import Model
from workbench.recipes import Recipe, answer, cached_rows, score, summarize_recipes
from workbench.runner import Job, run_grid, steering_key
from workbench.size import Size
from workbench.studies.competitors import fine_tuned
from workbench.studies.registry import Study
from workbench.studies.result import StudyResult
from workbench.studies.search import spans

__all__ = ["GOAL", "STUDY", "seed_italian_study"]

#: The issue's goal for the gentle push: real and clean Italian on at least this share of the test prompts,
#: at least the instruction's clean rate, multiple choice by generation within ``mc`` of the unmodified model.
GOAL = {"clean": 0.90, "mc": 0.02}
#: ``add`` strengths (diff-norms per layer of the band) tried on validation for the residual vector.
COEFS = (0.25, 0.5, 1.0)
#: Settings that change the model, whose multiple choice is scored (prompt-only ones leave it unchanged).
CHANGED = (
    "unsteered",
    "residual vector, every position",
    "residual vector, generated, fading",
    "gentle push",
)


def _residual(
    model: Model, size: Size, out: Path, progress: bool
) -> tuple[dict[str, Recipe], Any, list[str]]:
    """The residual vector's recipe per position mode, each the best of :data:`COEFS` on validation (clean
    rate, then target rate), the vector, and notes."""
    behaviour = dataclasses.replace(BEHAVIOURS["italian"], max_new_tokens=size.max_new_tokens)
    vectors = build_vectors(
        model, behaviour, size.n_train, sources=("last_prompt",), batch_size=size.batch_size
    )
    band = spans(model.n_layers)["band"]
    modes = {
        "every position": {},
        "generated, fading": {"positions": "generated", "decay_tokens": size.max_new_tokens},
    }
    grid = {
        (mode, c): Recipe("last_prompt", band, "add", c, unit="diff_norm", **knobs)
        for mode, knobs in modes.items()
        for c in COEFS
    }
    recipes = [Recipe(), *grid.values()]
    rows = answer(
        model,
        behaviour,
        vectors,
        recipes,
        "validation",
        size.n_validation,
        batch_size=size.batch_size,
        out_dir=out / "grids" / f"validation-{model.fingerprint[:12]}-{size.max_new_tokens}",
        progress=progress,
    )
    summary = summarize_recipes(score(behaviour, rows), recipes, model.n_layers)
    write_frame(summary, out / "validation_residual.csv", "validation of the residual vector")
    chosen, notes = {}, []
    for mode in modes:
        mine = summary[summary["recipe"].isin([r.name for (m, _), r in grid.items() if m == mode])]
        best = choose_setting(mine)
        chosen[mode] = next(r for r in grid.values() if r.name == best["recipe"])
        notes.append(
            f"residual vector, {mode}: {best['recipe']} chosen on {size.n_validation} validation prompts "
            f"(clean {best['clean_rate']:.2f}, real Italian {best['target_rate']:.2f})"
        )
    return chosen, vectors["last_prompt"], notes


def _push(model: Model, size: Size, out: Path, knobs: dict[str, Any], progress: bool) -> HeadIntervention:
    """The gentle push, built once and kept in ``out/push.safetensors`` (rebuilt when model or knobs change)."""
    path, record = out / "push.safetensors", out / "push.json"
    key = json.dumps({"model": model.fingerprint, "max_steps": size.max_new_tokens, **knobs}, sort_keys=True)
    if path.exists() and record.exists() and record.read_text() == key:
        return HeadIntervention.load(path)
    train = load("italian", "train", variant="it")
    push = gentle_push(
        model,
        train,
        max_steps=size.max_new_tokens,
        batch_size=max(1, size.batch_size // 4),
        progress=progress,
        **knobs,
    )
    push.save(path)
    atomic_text(record, key, "push key")
    return push


def _settings(
    size: Size, residual: dict[str, Recipe], vector: Any, push: HeadIntervention, lora: bool
) -> dict[str, tuple[str, tuple[AnyIntervention, ...], bool]]:
    """Setting -> (prompt kind, interventions, under the LoRA adapter)."""
    settings: dict[str, tuple[str, tuple[AnyIntervention, ...], bool]] = {
        "unsteered": ("english", (), False),
        "Italian prompt": ("italian", (), False),
        "instruction": ("instruction", (), False),
    }
    for mode, recipe in residual.items():
        settings[f"residual vector, {mode}"] = ("english", tuple(recipe.interventions(vector)), False)
    settings["gentle push"] = ("english", (push,), False)
    if lora:
        settings["LoRA"] = ("english", (), True)
    return settings


def _answers(
    model: Model, settings: dict, adapter: Any, size: Size, out: Path, progress: bool
) -> pd.DataFrame:
    """Test answers per setting (run_grid parts under ``out/grids``), scored by the contract with the real
    Italian target, perplexity under the unmodified model, and langdetect's probability of Italian."""
    test = {v: load("italian", "test", variant=v).head(size.n_test) for v in ("it", "en_answer_it")}
    prompts = {
        "english": test["it"].negative,
        "italian": test["it"].positive,
        "instruction": test["en_answer_it"].positive,
    }
    frames = []
    for tuned in (False, True):
        jobs = [
            Job(name, item.id, prompts[kind][i], ivs)
            for name, (kind, ivs, lora) in settings.items()
            if lora == tuned
            for i, item in enumerate(test["it"].items)
        ]
        if not jobs:
            continue
        tag = f"test-{'lora-' + adapter.hash[:12] if tuned else 'model'}-{model.fingerprint[:12]}-{size.max_new_tokens}"
        with lora_applied(model, adapter) if tuned else nullcontext():
            frames.append(
                run_grid(
                    model,
                    jobs,
                    max_new_tokens=size.max_new_tokens,
                    batch_size=size.batch_size,
                    out_dir=out / "grids" / tag,
                    progress=progress,
                )
            )
    rows = pd.concat(frames, ignore_index=True)
    ppl = perplexity(model, rows["prompt"].tolist(), rows["response"].tolist())
    items = {item.id: item for item in test["it"].items}
    scored = score_answers("italian", rows["id"].map(items).tolist(), rows["response"].tolist(), ppl)
    return rows.assign(
        perplexity=ppl,
        langdetect_it=[langdetect_probability(r, "it") for r in rows["response"]],
        **{c: scored[c].to_numpy() for c in ("on_target", "degenerate", "clean")},
    )


def _choices(
    model: Model, items: list, ivs: tuple, adapter: Any, by: str, extra: dict[str, Any], batch_size: int
) -> pd.DataFrame:
    """Multiple-choice rows of ``items`` under ``ivs`` (and ``adapter`` when given), answered ``by``."""
    with lora_applied(model, adapter) if adapter is not None else nullcontext():
        found = multiple_choice(model, items, by=by, interventions=ivs, batch_size=batch_size, **extra)
    return found[[c for c in ("id", "language", "correct", "unparsed", "response", "by") if c in found]]


def _multiple_choice(
    model: Model, settings: dict, adapter: Any, size: Size, out: Path, mc_tokens: int
) -> pd.DataFrame:
    """Per model-changing setting, language and kind (generation, loglik): each question answered, cached in
    ``out/multiple_choice`` keyed by everything that changes the answers."""
    langs = ("en", "it")
    items = {
        lang: load_multiple_choice("bundled", language=lang, split="test")[: size.n_mc] for lang in langs
    }
    frames = []
    for name, (_, ivs, tuned) in settings.items():
        if name not in CHANGED and not tuned:
            continue
        for lang, other in (("en", "it"), ("it", "en")):
            for by in ("generation", "loglik"):
                extra = {"max_new_tokens": mc_tokens, "parallel": items[other]} if by == "generation" else {}
                key = {
                    "model": model.fingerprint,
                    "adapter": adapter.hash if tuned else None,
                    "steering": steering_key(ivs),
                    "by": by,
                    "tokens": extra.get("max_new_tokens"),
                    "items": [
                        dataclasses.asdict(item) for item in (*items[lang], *extra.get("parallel", ()))
                    ],
                    "batch": size.batch_size,
                    "version": 1,
                }
                run = functools.partial(
                    _choices, model, items[lang], ivs, adapter if tuned else None, by, extra, size.batch_size
                )
                path = (
                    out / "multiple_choice" / f"{name.replace(' ', '_').replace(',', '')}-{lang}-{by}.parquet"
                )
                frames.append(cached_rows(path, key, run).assign(setting=name))
    return pd.concat(frames, ignore_index=True)


def _table(answers: pd.DataFrame, mc: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """One row per setting: the rates on the test prompts and the multiple-choice columns (NaN for
    prompt-only settings: they leave the model unchanged)."""
    out = []
    for name, (kind, ivs, tuned) in settings.items():
        mine = answers[answers["setting"] == name]
        row: dict[str, Any] = {
            "setting": name,
            "prompt": kind,
            "steering": "; ".join(iv.label for iv in ivs) or ("LoRA" if tuned else "none"),
        }
        row |= {
            "target_rate": mine["on_target"].mean(),
            "langdetect_it": mine["langdetect_it"].mean(),
            "clean_rate": mine["clean"].mean(),
            "degeneration": mine["degenerate"].mean(),
            "median_perplexity": mine["perplexity"].median(),
            "distinct_answers": mine["response"].nunique() / max(len(mine), 1),  # 1/n: one answer to all
            "n": len(mine),
        }
        for by in ("generation", "loglik"):
            for lang in ("en", "it"):
                base = mc[(mc["setting"] == "unsteered") & (mc["by"] == by) & (mc["language"] == lang)]
                theirs = mc[(mc["setting"] == name) & (mc["by"] == by) & (mc["language"] == lang)]
                moved = (
                    mc_changes(base, theirs)
                    if len(theirs)
                    else dict.fromkeys(("accuracy", "gained", "lost", "unparsed"), np.nan)
                )
                row |= {
                    f"mc_{by}_{k}_{lang}": v
                    for k, v in moved.items()
                    if by == "generation" or k != "unparsed"
                }
        out.append(row)
    return pd.DataFrame(out)


def _goal(table: pd.DataFrame) -> str:
    """Whether the gentle push meets the issue's goal, and by how much it misses."""
    rows = table.set_index("setting")
    push, instruction = rows.loc["gentle push"], rows.loc["instruction"]
    needed = max(GOAL["clean"], float(instruction["clean_rate"]))
    changes = [
        float(
            push[f"mc_generation_accuracy_{lang}"] - rows.loc["unsteered", f"mc_generation_accuracy_{lang}"]
        )
        for lang in ("en", "it")
    ]
    met = (
        push["clean_rate"] >= needed
        and push["target_rate"] >= GOAL["clean"]
        and all(c >= -GOAL["mc"] - 1e-9 for c in changes)  # 87/100 against 89/100 is within 0.02
    )
    return (
        f"goal {'met' if met else 'missed'}: gentle push real Italian {push['target_rate']:.2f}, clean "
        f"{push['clean_rate']:.2f} against {needed:.2f} needed ({push['clean_rate'] - needed:+.2f}); multiple choice "
        f"by generation {changes[0]:+.2f} (en), {changes[1]:+.2f} (it) against the unmodified model; degenerate "
        f"{push['degeneration']:.2f}, langdetect P(it) {push['langdetect_it']:.2f}"
    )


def seed_italian_study(
    model: Model,
    size: Size,
    out_dir: str | os.PathLike[str],
    *,
    k: int = 30,
    shots: int = 5,
    alpha: float = 1.5,
    lora: bool = True,
    mc_tokens: int = 32,
    progress: bool = False,
) -> StudyResult:
    """The seed's table on ``model`` (see the module docstring); ``k``, ``shots``, ``alpha``: the gentle
    push's knobs (the authors': 30 generations per condition, 5 shots, α 1.5 fading linearly over the answer
    budget); ``lora``: add the fine-tuned comparison; ``mc_tokens``: the answer budget of multiple choice by
    generation. Table: one row per setting (see :func:`_table`); ``answers.parquet`` holds every answer."""
    out = Path(out_dir) / "seed_italian"
    out.mkdir(parents=True, exist_ok=True)
    residual, vector, notes = _residual(model, size, out, progress)
    push = _push(model, size, out, {"k": k, "shots": shots, "alpha": alpha, "chat": False}, progress)
    notes.append(
        f"gentle push: {push.label}, {push.provenance.get('build_seconds', float('nan')):.0f} s to build"
    )
    adapter = None
    if lora:
        behaviour = dataclasses.replace(BEHAVIOURS["italian"], max_new_tokens=size.max_new_tokens)
        adapter, lora_note = fine_tuned(model, behaviour, size, out)
        notes.append(lora_note)
    settings = _settings(size, residual, vector, push, adapter is not None)
    answers = _answers(model, settings, adapter, size, out, progress)
    mc = _multiple_choice(model, settings, adapter, size, out, mc_tokens)
    write_frame(mc, out / "multiple_choice.parquet", "multiple-choice rows")
    table = _table(answers, mc, settings)
    notes.append(_goal(table))
    notes.append(
        f"{model.name}: {size.n_test} English test questions, {size.max_new_tokens} new tokens, greedy; real Italian "
        f"and clean by the workbench's rules (clean: real Italian and not degenerate, perplexity under the "
        f"unmodified model); multiple choice on {size.n_mc} bundled questions per language, by generation "
        f"({mc_tokens} tokens, letter or option text parsed in either language) and by log-likelihood"
    )
    if not lora:
        notes.append(
            "LoRA not run (lora=false, the large size's default): its validation grid trains four adapters, "
            "60-120 CPU s each on SmolLM2-135M, so about 11 times that at 1.5B on a 2-core CPU"
        )
    return StudyResult("seed_italian", answers, table, notes=notes)


STUDY = Study(
    "seed_italian",
    "The seed's table: Scalena et al.'s gentle push against prompting and residual steering",
    seed_italian_study,
    sizes={"quick": Size.quick(), "full": Size.baselines(), "large": Size.baselines()},
    report=(),
    order=95,
    options={"quick": {"k": 2, "shots": 2}, "large": {"lora": False}},
    inputs=lambda: {"push_prompts": "raw"},  # the push's few-shot text; chat turns before c266f81
)
