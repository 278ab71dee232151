"""The methods study (issue 26): which steering methods reach the instruction, judged as AxBench judges.

Per behaviour, every method of :data:`~workbench.studies.contenders.METHODS` (diff-in-means, last-token, the
likelihood-trained and RePS vectors, prompt-only steering, the PSR gate, dynamic strength, LoRA) is built on
the train split and chosen on validation by the one selection rule (mean score, then target rate;
:mod:`workbench.studies.contenders`); then on the test prompts, once each: unsteered, the instruction in
the prompt, (Italian) the fully Italian prompt, each method alone and each method with the instruction.

Every test answer is rated (:func:`~workbench.evaluation.rating.rate`): ``concept`` by the behaviour's rule,
``relevance`` and ``fluency`` by the judge (:class:`~workbench.evaluation.rating_judge.RatingJudge`,
Qwen2.5-Coder-1.5B-Instruct once fetched; its agreement with the labelled set is the judge study's), and
AxBench's ``score`` (harmonic mean, 0 if any is 0). Columns per setting: ``mean_score``, ``clean_rate``
(score above 0), ``target_rate``, the three ratings' means, ``mc_change_{en,it}`` (multiple-choice accuracy
by generation under the method minus unmodified, bundled questions; for Italian both languages),
``train_cpu_seconds`` (building the method on the train split; validation excluded) and the validation
numbers it was chosen with. The judge's CPU seconds are a note, apart from the methods' costs.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from workbench.behaviours import BEHAVIOURS as FRONTIER_BEHAVIOURS
from workbench.behaviours import Behaviour
from workbench.errors import InvalidArgumentError
from workbench.evaluation.rating_judge import RatingJudge
from workbench.evaluation.reference import REFERENCE_SPEC, reference_model
from workbench.files import write_frame
from workbench.finetune import lora_applied
from workbench.interventions import AnyIntervention
from workbench.models import Model
from workbench.runner import Job, run_grid
from workbench.size import Size
from workbench.studies.choices import LANGUAGES, cached_choice, mc_items
from workbench.studies.compare import budgeted
from workbench.studies.contenders import Contender, Rater, choose_contenders, rated_means
from workbench.studies.registry import Study
from workbench.studies.result import StudyResult
from workbench.studies.steps import bars, budget, save

__all__ = ["BEHAVIOURS", "STUDY", "methods_study", "study_behaviour"]

#: The behaviours the study knows, by name (the frontier's and ``no_comma``).
BEHAVIOURS: dict[str, Behaviour] = {**FRONTIER_BEHAVIOURS, "no_comma": Behaviour("no_comma", "no_comma", 64)}
#: What runs by default.
DEFAULT = ("one_sentence", "no_comma", "json", "italian")


def _prompts(behaviour: Behaviour, size: Size) -> dict[str, list[str]]:
    """The test prompts of each prompt kind the table uses."""
    kinds = {"plain": "plain", "instruction": "instruction"}
    if behaviour.instruction_variant:
        kinds["Italian prompt"] = "native"
    return {name: behaviour.prompts("test", size.n_test, kind) for name, kind in kinds.items()}


def _test_rows(
    model: Model, behaviour: Behaviour, size: Size, out: Path, contenders: Sequence[Contender]
) -> pd.DataFrame:
    """Every test setting's answers: ``setting, method, instruction, id, prompt, query, response``."""
    items = behaviour.items("test", size.n_test).items
    prompts = _prompts(behaviour, size)
    plain = prompts["plain"]
    frames = []

    def answer(method: str, ivs: tuple[AnyIntervention, ...], kinds: Sequence[str]) -> None:
        jobs = [
            Job(_setting(method, kind), item.id, prompt, ivs, {"kind": kind})
            for kind in kinds
            for item, prompt in zip(items, prompts[kind], strict=True)
        ]
        where = out / "grids" / f"test-{model.fingerprint[:12]}-{behaviour.name}"  # LoRA: its own fingerprint
        rows = run_grid(
            model, jobs, max_new_tokens=behaviour.max_new_tokens, batch_size=size.batch_size, out_dir=where
        )
        frames.append(
            rows.assign(method=method, instruction=rows["kind"] == "instruction", query=plain * len(kinds))
        )

    answer("unsteered", (), list(prompts))
    for c in contenders:
        if c.adapter is not None:
            with lora_applied(model, c.adapter):
                answer(c.method, (), ["plain", "instruction"])
        else:
            answer(c.method, c.interventions, ["plain", "instruction"])
    return pd.concat(frames, ignore_index=True)


def _setting(method: str, kind: str) -> str:
    if method == "unsteered":
        return {"plain": "unsteered", "instruction": "instruction"}.get(kind, kind)
    return method if kind == "plain" else f"{method} + instruction"


def _mc(
    model: Model, behaviour: Behaviour, size: Size, out: Path, contenders: Sequence[Contender]
) -> dict[str, dict[str, float]]:
    """Per method, per language: multiple-choice accuracy by generation minus the unmodified model's."""
    languages = LANGUAGES if behaviour.target == "italian" else ("en",)
    changes: dict[str, dict[str, float]] = {}
    for language in languages:
        items, parallel = mc_items(language, size.n_mc)
        base = cached_choice(
            model, items, out / "mc" / f"unmodified-{language}.parquet", by="generation", parallel=parallel
        )
        for c in contenders:
            path = out / "mc" / f"{behaviour.name}-{c.method.replace(' ', '_')}-{language}.parquet"
            if c.adapter is not None:
                with lora_applied(model, c.adapter):
                    rows = cached_choice(model, items, path, by="generation", parallel=parallel)
            else:
                rows = cached_choice(
                    model, items, path, by="generation", interventions=c.interventions, parallel=parallel
                )
            change = float(rows["correct"].mean() - base["correct"].mean())
            changes.setdefault(c.method, {})[f"mc_change_{language}"] = change
    return changes


def budgeted_for(behaviour: Behaviour, size: Size) -> Behaviour:
    """``behaviour`` with its own token budget, at most the size's; strict JSON with the format study's
    (:func:`~workbench.studies.steps.budget`: room for the object to close)."""
    if behaviour.target == "json_format_strict":
        return dataclasses.replace(behaviour, max_new_tokens=budget(behaviour.dataset, size))
    return budgeted(behaviour, size)


def study_behaviour(
    model: Model, behaviour: Behaviour, size: Size, out: Path, rater: Rater, lora: bool
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """One behaviour's table (one row per test setting), its rated answers and notes."""
    behaviour = budgeted_for(behaviour, size)
    contenders, notes = choose_contenders(model, behaviour, size, out, rater, lora)
    rows = _test_rows(model, behaviour, size, out, contenders)
    items = {item.id: item for item in behaviour.items("test", size.n_test).items}
    rated = []
    for _, part in rows.groupby("setting", sort=False):
        ratings = rater(
            behaviour.target,
            [items[i] for i in part["id"]],
            part["query"].tolist(),
            part["response"].tolist(),
        )
        rated.append(pd.concat([part.reset_index(drop=True), ratings], axis=1))
    answers = pd.concat(rated, ignore_index=True).assign(behaviour=behaviour.name, target=behaviour.target)
    by_method = {c.method: c for c in contenders}
    mc = _mc(model, behaviour, size, out, contenders)
    table = []
    for setting, part in answers.groupby("setting", sort=False):
        method = str(part["method"].iloc[0])
        c = by_method.get(method)
        table.append(
            {
                "behaviour": behaviour.name,
                "target": behaviour.target,
                **rated_means(str(setting), part),
                "method": method,
                "instruction": bool(part["instruction"].iloc[0]),
                "distinct_rate": part["response"].nunique() / len(part),
                **(mc.get(method, {}) if not part["instruction"].iloc[0] else {}),
                "train_cpu_seconds": c.cpu_seconds if c else 0.0,
                "validation_mean_score": c.validation["mean_score"] if c else float("nan"),
                "n": len(part),
            }
        )
    return pd.DataFrame(table), answers, notes


def verdicts(table: pd.DataFrame) -> list[str]:
    """Per behaviour: which steering methods alone reach the instruction's mean score (the best one's
    weakest rating: what its answers fail on), whether each method with the instruction beats the
    instruction alone, and where LoRA (fine-tuning, not steering) stands."""
    out = []
    for name, part in table.groupby("behaviour", sort=False):
        bar = float(part.set_index("setting").loc["instruction", "mean_score"])
        methods = part[part["method"].ne("unsteered")]
        alone = methods[~methods["instruction"] & methods["method"].ne("LoRA")]
        best = alone.loc[alone["mean_score"].idxmax()]
        ratings = {r: float(best[f"mean_{r}"]) for r in ("concept", "relevance", "fluency")}
        weakest = min(ratings, key=lambda r: ratings[r])
        reached = alone[alone["mean_score"] >= bar]["method"].tolist()
        said = (
            f"{name}: instruction mean score {bar:.2f}; best steering alone {best['method']} "
            f"{best['mean_score']:.2f} ({best['mean_score'] - bar:+.2f}; its weakest rating {weakest} "
            f"{ratings[weakest]:.2f} of 2); reaching it: {', '.join(reached) or 'none'}"
        )
        both = methods[methods["instruction"]]
        beats = both[both["mean_score"] > bar]
        said += f"; with the instruction, beats it: {len(beats)}/{len(both)}"
        if len(both):
            top = both.loc[both["mean_score"].idxmax()]
            said += f" (best {top['setting']} {top['mean_score']:.2f})"
        lora = methods[methods["setting"].eq("LoRA")]
        if len(lora):
            said += f"; LoRA alone {float(lora['mean_score'].iloc[0]):.2f}"
        out.append(said)
    return out


def _judge(model: Model, judge: str | RatingJudge | None) -> tuple[RatingJudge | None, str]:
    """The rating judge and a note saying which model it is."""
    if isinstance(judge, RatingJudge):
        return judge, f"judge: {judge.name} (given)"
    if judge is None:
        return (
            None,
            "no judge: concept by rule only, relevance and fluency unknown, score 0 only where a rule rates 0",
        )
    loaded = model if judge == model.name else reference_model(model, judge, dtype="bfloat16")
    if not loaded.is_chat:
        return (
            None,
            f"no judge: {loaded.name} is a base model and {judge!r} did not load (`workbench models fetch {judge}`)",
        )
    same = loaded.fingerprint == model.fingerprint
    why = "no stronger model is installed: the scored model judges itself" if same else "a stronger model"
    return RatingJudge(loaded), f"judge: {loaded.name} ({why})"


def methods_study(
    model: Model,
    size: Size,
    out_dir: str | os.PathLike[str],
    *,
    behaviours: Sequence[str] = DEFAULT,
    judge: str | RatingJudge | None = REFERENCE_SPEC,
    lora: bool = True,
    progress: bool = False,
) -> StudyResult:
    """Each of ``behaviours``' table (see the module), rated by ``judge`` (a model spec, loaded in bfloat16
    when it loads offline, else the scored model where it is a chat model; a judge; None: rules only);
    ``lora`` False leaves LoRA out (a model too large to fine-tune here)."""
    unknown = [b for b in behaviours if b not in BEHAVIOURS]
    if unknown:
        raise InvalidArgumentError(f"unknown behaviour {unknown[0]!r}: use some of {', '.join(BEHAVIOURS)}")
    out = Path(out_dir) / "methods"
    out.mkdir(parents=True, exist_ok=True)
    rating_judge, judge_note = _judge(model, judge)
    if rating_judge is not None and rating_judge.cache is None:
        cache = out / f"ratings-{rating_judge.model.fingerprint[:12]}.parquet"
        rating_judge = dataclasses.replace(rating_judge, cache=cache)
    rater = Rater(rating_judge)
    tables, answers, notes = [], [], [judge_note]
    wall = time.perf_counter()
    for name in behaviours:
        table, rated, said = study_behaviour(model, BEHAVIOURS[name], size, out, rater, lora)
        tables.append(table)
        answers.append(rated)
        notes += said
    table = pd.concat(tables, ignore_index=True)
    notes = verdicts(table) + notes
    notes.append(
        f"{model.name}: {size.n_train} train, {size.n_validation} validation and {size.n_test} test prompts per "
        f"behaviour, greedy, at most "
        + ", ".join(
            f"{budgeted_for(BEHAVIOURS[n], size).max_new_tokens} new tokens for {n}" for n in behaviours
        )
        + "; multiple choice by generation, "
        f"{size.n_mc} bundled questions per language; the judge rated for {rater.seconds[0]:.0f} CPU s of this "
        f"run's {time.perf_counter() - wall:.0f} s wall (answers rated before are read from its cache)"
    )
    write_frame(table, out / "methods.csv", "methods table")
    figures = save(
        bars(
            table.assign(label=table["behaviour"] + ": " + table["setting"]),
            "label",
            ["mean_score", "clean_rate", "target_rate"],
            "Methods on the test split",
            "mean score (0-2) and rates",
        ),
        out,
        "methods",
    )
    return StudyResult("methods", pd.concat(answers, ignore_index=True), table, figures, notes)


STUDY = Study(
    "methods",
    "Steering methods against the instruction, rated as AxBench rates",
    methods_study,
    sizes={"quick": Size.quick(), "full": Size.baselines(), "large": Size.large()},
    order=95,
)
