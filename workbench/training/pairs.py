"""Training triples for trained steering vectors: (plain prompt, on-target answer, plain answer).

The on-target answers are self-distilled exactly as the LoRA baseline's are
(:func:`workbench.finetune.distill`): the model's own greedy answers to the *positive* prompts, kept when on
target, not degenerate and, given a judge, fluent. Each is paired with the *negative* (plain) prompt and with
the model's own greedy answer to that plain prompt, generated with the same budget; a pair whose plain
answer is empty or already on target is dropped (it prefers nothing). Both answers are tokenized after the
chat-formatted plain prompt as the LoRA baseline tokenizes its answers, end-of-turn included where
generation stopped on its own rather than at the token budget.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from workbench.datasets import ContrastiveSet
from workbench.errors import InvalidArgumentError
from workbench.evaluation.reference import Judge
from workbench.evaluation.targets import on_target
from workbench.finetune.training import NoPairsError, answer_sequences, distill
from workbench.generation import generate
from workbench.models import Model

__all__ = ["PreferencePairs", "preference_pairs"]

#: A token sequence and how many of its tokens are the prompt's.
TokenRow = tuple[list[int], int]


@dataclass(frozen=True)
class PreferencePairs:
    """Per pair: the plain ``prompt``, the ``target`` (on-target) answer and the ``plain`` answer.

    ``max_new_tokens`` is the budget the answers were generated with, and ``targets_ended`` and
    ``plains_ended`` say which answers stopped on their own (trained with their end-of-turn token); all three
    are None for complete answers written elsewhere (:meth:`from_triples`), which all end. ``source``
    records where the pairs came from.
    """

    prompts: tuple[str, ...]
    targets: tuple[str, ...]
    plains: tuple[str, ...]
    ids: tuple[str, ...]
    max_new_tokens: int | None = None
    source: dict[str, Any] = field(default_factory=dict)
    targets_ended: tuple[bool, ...] | None = None
    plains_ended: tuple[bool, ...] | None = None

    def __post_init__(self) -> None:
        sizes = {len(self.prompts), len(self.targets), len(self.plains), len(self.ids)}
        if len(sizes) != 1:
            raise InvalidArgumentError(
                f"prompts, targets, plains and ids must have one entry per pair, got lengths {sorted(sizes)}"
            )
        if not self.prompts:
            raise InvalidArgumentError("no training pairs: give at least one (prompt, target, plain) triple")
        texts = (*self.prompts, *self.targets, *self.plains)
        if not all(isinstance(t, str) and t.strip() for t in texts):
            raise InvalidArgumentError("every prompt and answer of a training pair must be non-empty text")
        budget = self.max_new_tokens
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
            raise InvalidArgumentError(f"max_new_tokens must be a positive integer or None, got {budget!r}")
        for flags in (self.targets_ended, self.plains_ended):
            if (flags is None) != (budget is None) or (flags is not None and len(flags) != len(self)):
                raise InvalidArgumentError(
                    "targets_ended and plains_ended give one flag per pair with max_new_tokens, and none without"
                )

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def hash(self) -> str:
        """sha256 of the triples, the budget and which answers ended: any change to any pair changes it."""
        rows = [
            self.prompts,
            self.targets,
            self.plains,
            self.max_new_tokens,
            self.targets_ended,
            self.plains_ended,
        ]
        return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()

    @classmethod
    def from_triples(cls, triples: Sequence[Sequence[str]], **source: Any) -> PreferencePairs:
        """Pairs from ``(prompt, on-target answer, plain answer)`` triples of complete answers."""
        if isinstance(triples, str | bytes) or not all(
            not isinstance(t, str) and len(t) == 3 for t in triples
        ):
            raise InvalidArgumentError("pairs must be (prompt, on-target answer, plain answer) triples")
        rows = [tuple(t) for t in triples]
        if not rows:
            raise InvalidArgumentError("no training pairs: give at least one (prompt, target, plain) triple")
        prompts, targets, plains = (tuple(column) for column in zip(*rows, strict=True))
        ids = tuple(f"pair-{i}" for i in range(len(rows)))
        return cls(prompts, targets, plains, ids, None, {"dataset": "triples", **source})

    def sequences(self, model: Model) -> tuple[list[TokenRow], list[TokenRow]]:
        """Token ids of each formatted prompt plus its target answer, and plus its plain answer, each with
        the prompt's token count, as the LoRA baseline tokenizes (:func:`workbench.finetune.training`)."""
        every = (True,) * len(self)
        targets = answer_sequences(model, self.prompts, self.targets, self.targets_ended or every)
        plains = answer_sequences(model, self.prompts, self.plains, self.plains_ended or every)
        return targets, plains


def preference_pairs(
    model: Model,
    dataset: ContrastiveSet,
    *,
    target: str | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    judge: Judge | None = None,
) -> PreferencePairs:
    """Self-distilled training pairs from ``dataset`` (a train split), as the LoRA baseline makes them.

    ``target`` names the on-target rule (default: the dataset's own, :func:`workbench.finetune.target_for`);
    ``judge`` also requires the distilled answers to be fluent by a reference model. Raises
    :class:`~workbench.finetune.NoPairsError` when no pair is left.
    """
    distilled = distill(
        model, dataset, max_new_tokens=max_new_tokens, target=target, batch_size=batch_size, judge=judge
    )
    ended: list[bool] = []
    plains = generate(
        model, distilled.prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, ended=ended
    )
    items = {item.id: item for item in dataset.items}
    keep, dropped = [], []
    for i, (pid, plain) in enumerate(zip(distilled.ids, plains, strict=True)):
        usable = plain.strip() and not on_target(distilled.target, items[pid], plain)
        (keep if usable else dropped).append(i)
    if not keep:
        raise NoPairsError(
            f"all {len(distilled)} of {model.name}'s plain answers kept for {dataset.name!r} are empty or already "
            f"on target ({distilled.target}): nothing to prefer; use more prompts"
        )
    source = {
        "dataset": distilled.dataset,
        "dataset_hash": distilled.dataset_hash,
        "split": distilled.split,
        "target": distilled.target,
        "generated_pairs": distilled.n_generated,
        "distilled_pairs": len(distilled),
        "plain_on_target_ids": [distilled.ids[i] for i in dropped],
        "fluency_judge": distilled.fluency,
        "distill_cpu_seconds": distilled.cpu_seconds,
        "judge_cpu_seconds": distilled.judge_cpu_seconds,
    }
    return PreferencePairs(
        prompts=tuple(distilled.prompts[i] for i in keep),
        targets=tuple(distilled.answers[i] for i in keep),
        plains=tuple(plains[i] for i in keep),
        ids=tuple(distilled.ids[i] for i in keep),
        max_new_tokens=max_new_tokens,
        source=source,
        targets_ended=tuple(distilled.ended[i] for i in keep),
        plains_ended=tuple(ended[i] for i in keep),
    )
