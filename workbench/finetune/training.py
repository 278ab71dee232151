"""Self-distilled LoRA fine-tuning on exactly the data a steering vector uses: the fine-tuning baseline.

:func:`distill` makes the training pairs without outside data. The input is each item's *negative* prompt
(no instruction, English); the target is the model's own greedy answer to the *positive* prompt (with the
instruction, or the Italian query), kept when it is on target
(:func:`~workbench.finetune.evaluate.target_for`), not degenerate
(:func:`~workbench.evaluation.is_degenerate`) and, given a reference model's
:class:`~workbench.evaluation.reference.Judge`, fluent by it. :func:`lora` trains a peft LoRA adapter on them: the loss is
the cross-entropy of the answer tokens only (and the end-of-turn token where generation stopped on its
own, not at the token budget), after the prompt chat-formatted exactly as generation formats it.
:func:`choose_lora` picks rank, steps and learning rate on the validation split by clean rate.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

import workbench
from workbench.datasets import ContrastiveSet
from workbench.errors import InvalidArgumentError
from workbench.evaluation import is_degenerate
from workbench.evaluation.perplexity import join, perplexity
from workbench.evaluation.reference import Judge
from workbench.evaluation.scoring import score_answers
from workbench.evaluation.selection import choose_setting
from workbench.evaluation.targets import on_target
from workbench.fastpath import direct_forward
from workbench.files import utc_now
from workbench.finetune.adapter import (
    ADAPTER_NAME,
    LoraAdapter,
    inject,
    linear_targets,
    lora_applied,
    remove,
)
from workbench.finetune.evaluate import target_for
from workbench.generation import generate
from workbench.models import Model

__all__ = ["NoPairsError", "Pairs", "answer_loss", "answer_sequences", "choose_lora", "distill", "lora"]

_IGNORE = -100  # the label Hugging Face's loss skips


class NoPairsError(InvalidArgumentError):
    """None of the model's answers to the positive prompts is on target and fluent: nothing to train on."""


@dataclass(frozen=True)
class Pairs:
    """Training pairs: ``prompts`` (negative) and the model's ``answers`` to the positive prompts, per kept
    item; ``ended``: whether each answer stopped on its own rather than at ``max_new_tokens``.
    ``cpu_seconds`` and ``wall_seconds`` time distilling without the judge's pass, which ``judge_cpu_seconds``
    and ``judge_wall_seconds`` time."""

    prompts: tuple[str, ...]
    answers: tuple[str, ...]
    ended: tuple[bool, ...]
    ids: tuple[str, ...]
    n_generated: int
    dataset: str
    dataset_hash: str
    split: str
    target: str
    max_new_tokens: int
    cpu_seconds: float
    wall_seconds: float
    judge_cpu_seconds: float = 0.0
    judge_wall_seconds: float = 0.0
    fluency: dict[str, Any] | None = None  # the judge's rule and the ids it rejected, when one judged

    def __len__(self) -> int:
        return len(self.prompts)


def distill(
    model: Model,
    dataset: ContrastiveSet,
    *,
    max_new_tokens: int = 64,
    target: str | None = None,
    batch_size: int = 16,
    judge: Judge | None = None,
) -> Pairs:
    """The model's greedy answers to ``dataset.positive``, kept when on target and not degenerate (and,
    given a ``judge``, fluent by it, each answer given its positive prompt), paired with
    ``dataset.negative``. Raises :class:`NoPairsError` when none is kept."""
    rule = target_for(dataset, target)
    cpu, wall = time.process_time(), time.perf_counter()
    ended: list[bool] = []
    answers = generate(
        model, dataset.positive, max_new_tokens=max_new_tokens, batch_size=batch_size, ended=ended
    )
    keep = [
        i
        for i, (item, answer) in enumerate(zip(dataset.items, answers, strict=True))
        if on_target(rule, item, answer) and not is_degenerate(answer)
    ]
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    fluency, judge_cpu, judge_wall = None, 0.0, 0.0
    if judge is not None:
        judge_cpu, judge_wall = time.process_time(), time.perf_counter()
        verdict = judge([dataset.positive[i] for i in keep], [answers[i] for i in keep])
        judge_cpu, judge_wall = time.process_time() - judge_cpu, time.perf_counter() - judge_wall
        rejected = [i for i, ok in zip(keep, verdict["fluent_reference"], strict=True) if not ok]
        keep = [i for i in keep if i not in rejected]
        fluency = {**dataclasses.asdict(judge.rule), "rejected_ids": [dataset.items[i].id for i in rejected]}
    if not keep:
        fluent = f" and fluent by {judge.rule.reference}" if judge is not None else ""
        raise NoPairsError(
            f"none of {model.name}'s {len(answers)} answers to the positive prompts of {dataset.name!r} is on "
            f"target ({rule}), not degenerate{fluent}: use more prompts or a model that can show the behaviour"
        )
    return Pairs(
        prompts=tuple(dataset.negative[i] for i in keep),
        answers=tuple(answers[i] for i in keep),
        ended=tuple(ended[i] for i in keep),
        ids=tuple(dataset.items[i].id for i in keep),
        n_generated=len(answers),
        dataset=dataset.name if dataset.variant is None else f"{dataset.name}:{dataset.variant}",
        dataset_hash=dataset.hash,
        split=dataset.split,
        target=rule,
        max_new_tokens=max_new_tokens,
        cpu_seconds=cpu,
        wall_seconds=wall,
        judge_cpu_seconds=judge_cpu,
        judge_wall_seconds=judge_wall,
        fluency=fluency,
    )


def answer_sequences(
    model: Model, prompts: Sequence[str], answers: Sequence[str], ended: Sequence[bool]
) -> list[tuple[list[int], int]]:
    """Token ids of each formatted prompt plus answer, and how many of them are the prompt's (the answer
    follows the prompt as :func:`~workbench.evaluation.perplexity.perplexity` scores it); a chat model's
    end-of-turn token follows each answer that ``ended`` on its own, so that the model learns to stop."""
    tokenizer = model.tokenizer
    eos = model.hf_model.generation_config.eos_token_id or tokenizer.eos_token_id
    end = [eos[0] if isinstance(eos, list) else eos] if model.is_chat else []
    out = []
    for prompt, answer, stopped in zip(prompts, answers, ended, strict=True):
        context = model.format_chat(prompt)
        head = tokenizer(context, add_special_tokens=not model.is_chat)["input_ids"]
        tail = tokenizer(join(context, answer)[len(context) :], add_special_tokens=False)["input_ids"]
        out.append(([*head, *tail, *(end if stopped else [])], len(head)))
    return out


def _batch(
    sequences: Sequence[tuple[list[int], int]], pad: int, device: torch.device
) -> dict[str, Int[Tensor, "batch seq"]]:
    """Right-padded ids, mask and labels (the prompt's tokens and padding ignored by the loss)."""
    width = max(len(ids) for ids, _ in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, _IGNORE)
    for r, (row, n_prompt) in enumerate(sequences):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
        labels[r, n_prompt : len(row)] = ids[r, n_prompt : len(row)]
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _loss(model: Model, batch: dict[str, Tensor]) -> Tensor:
    """Mean cross-entropy of the batch's answer tokens."""
    with direct_forward(model):
        return model.hf_model(**batch).loss


@torch.no_grad()
def answer_loss(model: Model, pairs: Pairs, *, batch_size: int = 8) -> float:
    """Mean cross-entropy per answer token of ``pairs`` under ``model`` as it runs now (the training loss)."""
    sequences = answer_sequences(model, pairs.prompts, pairs.answers, pairs.ended)
    total = count = 0.0
    for start in range(0, len(sequences), batch_size):
        batch = _batch(sequences[start : start + batch_size], model.tokenizer.pad_token_id, model.device)
        n = int((batch["labels"][:, 1:] != _IGNORE).sum())
        total += float(_loss(model, batch)) * n
        count += n
    return total / count


def _fit(model: Model, pairs: Pairs, recipe: dict[str, Any], checkpoints: Sequence[int]) -> list[LoraAdapter]:
    """Train one adapter (AdamW, shuffled batches); a copy of it after each of ``checkpoints`` steps."""
    sequences = answer_sequences(model, pairs.prompts, pairs.answers, pairs.ended)
    flags = [(p, p.requires_grad) for p in model.hf_model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    targets = sorted(linear_targets(model, recipe["modules"]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])
        layers = inject(model, recipe["rank"], recipe["alpha"], targets)
    snapshots = []
    try:
        a = {n: layer.lora_A[ADAPTER_NAME].weight for n, layer in layers.items()}
        b = {n: layer.lora_B[ADAPTER_NAME].weight for n, layer in layers.items()}
        optimizer = torch.optim.AdamW([*a.values(), *b.values()], lr=recipe["lr"], weight_decay=0.0)
        shuffle = torch.Generator().manual_seed(recipe["seed"])
        size, order, losses = recipe["batch_size"], [], []
        cpu, wall = time.process_time(), time.perf_counter()
        for step in range(1, max(checkpoints) + 1):
            while len(order) < size:
                order += torch.randperm(len(sequences), generator=shuffle).tolist()
            rows, order = order[:size], order[size:]
            batch = _batch([sequences[i] for i in rows], model.tokenizer.pad_token_id, model.device)
            loss = _loss(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if step in checkpoints:
                stats = {
                    "trainable_parameters": sum(w.numel() for w in (*a.values(), *b.values())),
                    "train_cpu_seconds": time.process_time() - cpu,
                    "train_wall_seconds": time.perf_counter() - wall,
                    "losses": list(losses),
                }
                A = {n: w.detach().clone() for n, w in a.items()}
                B = {n: w.detach().clone() for n, w in b.items()}
                provenance = _provenance(model, pairs, {**recipe, "steps": step}, stats)
                snapshots.append(LoraAdapter(recipe["rank"], recipe["alpha"], A, B, provenance))
    finally:
        remove(model, layers)
        for p, flag in flags:
            p.requires_grad_(flag)
    return snapshots


def _provenance(model: Model, pairs: Pairs, recipe: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "self-distilled LoRA",
        "base_model": model.name,
        "base_weights_hash": model.weights_hash,
        "base_fingerprint": model.fingerprint,
        "dataset": pairs.dataset,
        "dataset_hash": pairs.dataset_hash,
        "split": pairs.split,
        "target": pairs.target,
        "kept_pairs": len(pairs),
        "generated_pairs": pairs.n_generated,
        "kept_ids": list(pairs.ids),
        "fluency_judge": pairs.fluency,
        "recipe": {**recipe, "max_new_tokens": pairs.max_new_tokens},
        **stats,
        "distill_cpu_seconds": pairs.cpu_seconds,
        "distill_wall_seconds": pairs.wall_seconds,
        "judge_cpu_seconds": pairs.judge_cpu_seconds,
        "judge_wall_seconds": pairs.judge_wall_seconds,
        "created": utc_now(),
        "workbench_version": workbench.__version__,
        "peft_version": importlib.metadata.version("peft"),
        "torch_version": torch.__version__,
    }


def _recipe(
    rank: int, alpha: float, lr: float, batch_size: int, seed: int, modules: Sequence[str] | None
) -> dict:
    for name, value in (("rank", rank), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    if not lr > 0 or not alpha > 0:
        raise InvalidArgumentError(f"lr and alpha must be positive, got lr={lr!r}, alpha={alpha!r}")
    return {
        "rank": rank,
        "alpha": alpha,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "modules": None if modules is None else sorted(modules),
    }


def lora(
    model: Model,
    dataset: ContrastiveSet,
    *,
    rank: int = 8,
    alpha: float = 16,
    steps: int = 60,
    lr: float = 1e-3,
    batch_size: int = 4,
    max_new_tokens: int = 64,
    seed: int = 0,
    modules: Sequence[str] | None = None,
    target: str | None = None,
    pairs: Pairs | None = None,
    judge: Judge | None = None,
) -> LoraAdapter:
    """A LoRA adapter trained on ``dataset`` (the train split a steering vector uses) by self-distillation.

    Every linear layer but the output head is adapted, or those named in ``modules`` (``("q_proj",)``).
    ``pairs`` reuses :func:`distill`'s output; else ``judge`` filters the distilled answers. The provenance records the recipe, the kept pairs, the
    trainable parameters, the per-step losses and the CPU and wall seconds of distilling (without the judge's
    pass, timed apart) and training.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise InvalidArgumentError(f"steps must be a positive integer, got {steps!r}")
    recipe = _recipe(rank, alpha, lr, batch_size, seed, modules)
    if pairs is None:
        pairs = distill(model, dataset, max_new_tokens=max_new_tokens, target=target, judge=judge)
    return _fit(model, pairs, recipe, [steps])[0]


def choose_lora(
    model: Model,
    train: ContrastiveSet,
    validation: ContrastiveSet,
    *,
    ranks: Sequence[int] = (4, 8),
    steps: Sequence[int] = (30, 60),
    lrs: Sequence[float] = (5e-4, 2e-3),
    batch_size: int = 4,
    max_new_tokens: int = 64,
    seed: int = 0,
    modules: Sequence[str] | None = None,
    target: str | None = None,
    pairs: Pairs | None = None,
    judge: Judge | None = None,
    score: Callable[[list[str]], Sequence[float]] | None = None,
) -> tuple[LoraAdapter, pd.DataFrame]:
    """The adapter of the grid ``ranks × steps × lrs`` (alpha = 2 × rank) with the best clean rate on the
    validation prompts (ties: higher target rate, then grid order), and one row per grid point.

    Each (rank, lr) trains once, with a snapshot at every ``steps`` value. ``judge`` filters the distilled
    answers (:func:`distill`) and the validation clean rate needs its verdict too. ``score`` rates the
    validation answers (AxBench's score per answer, :func:`~workbench.evaluation.rating.rate`): the grid
    then has ``mean_score`` and ``clean_rate`` is the share scored above 0, as the selection rule reads them.
    """
    overlap = {i.base_id for i in train.items} & {i.base_id for i in validation.items}
    if overlap:
        raise InvalidArgumentError(
            f"{len(overlap)} validation queries are also train queries (e.g. {sorted(overlap)[0]}): "
            "choose on a disjoint split"
        )
    rule = target_for(train, target)
    if pairs is None:
        pairs = distill(model, train, max_new_tokens=max_new_tokens, target=rule, judge=judge)
    candidates, rows = [], []
    for rank in ranks:
        for lr in lrs:
            recipe = _recipe(rank, 2 * rank, lr, batch_size, seed, modules)
            for adapter in _fit(model, pairs, recipe, sorted(set(steps))):
                with lora_applied(model, adapter):
                    answers = generate(model, validation.negative, max_new_tokens=max_new_tokens)
                ppl = perplexity(model, validation.negative, answers)
                fluent = None if judge is None else judge(validation.negative, answers)["fluent_reference"]
                scored = score_answers(rule, validation.items, answers, ppl, fluent)
                candidates.append(adapter)
                rows.append(
                    {
                        **{k: adapter.provenance["recipe"][k] for k in ("rank", "alpha", "lr", "steps")},
                        "clean_rate": scored["clean"].mean(),
                        "target_rate": scored["on_target"].mean(),
                        "degeneration": scored["degenerate"].mean(),
                        "train_cpu_seconds": adapter.provenance["train_cpu_seconds"],
                        **({} if score is None else _rated(score(answers))),
                    }
                )
    grid = pd.DataFrame(rows)
    best = int(choose_setting(grid).name)  # type: ignore[arg-type]
    chosen = candidates[best]
    selection = {
        "validation_hash": validation.hash,
        "n_validation": len(validation),
        "grid": rows,
        "fluency_judge": None if judge is None else dataclasses.asdict(judge.rule),
    }
    return LoraAdapter(
        chosen.rank, chosen.alpha, chosen.A, chosen.B, {**chosen.provenance, "selection": selection}
    ), grid


def _rated(scores: Sequence[float]) -> dict[str, float | None]:
    """``mean_score`` (None where a score is unknown: no judge rated) and ``clean_rate`` (share above 0) of
    per-answer scores; no rating at all where every score is unknown."""
    values = [float(v) for v in scores]
    if all(math.isnan(v) for v in values):
        return {}
    mean = None if any(math.isnan(v) for v in values) else sum(values) / len(values)
    return {"mean_score": mean, "clean_rate": sum(v > 0 for v in values) / len(values)}
