"""What a recipe aims at: the frontier's behaviours, the model's own contrastive answers, and their vectors.

A :class:`Behaviour` says what "on target" means (:mod:`workbench.evaluation.targets`: an IFEval check,
strict JSON, real Italian) and how many tokens to generate; :data:`BEHAVIOURS` holds the frontier study's.
:func:`complete` gives the unsteered model's greedy answers (cached by :func:`~workbench.runner.run_grid`)
and :func:`build_vectors` one diff-in-means vector per :data:`SOURCES` entry, with one residual-norm
reference for all of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from workbench.activations import Activations, collect, collect_responses
from workbench.datasets import ContrastiveSet, Item, load
from workbench.errors import InvalidArgumentError
from workbench.evaluation import is_degenerate
from workbench.evaluation.targets import on_target
from workbench.files import json_default
from workbench.models import Model
from workbench.paths import cache_dir
from workbench.runner import Job, grid_settings, run_grid
from workbench.vectors import SteeringVector

__all__ = [
    "BEHAVIOURS",
    "MIN_PAIRS",
    "PROMPTS",
    "SOURCES",
    "Behaviour",
    "NoCompletionsError",
    "behaviour",
    "build_vectors",
    "complete",
]

#: Where a vector's activations are read (positions averaged): the last prompt token, the prompt's tokens, or
#: the tokens of the model's own answers (contrastive completions).
SOURCES = ("last_prompt", "prompt", "generated")
#: Which prompt a recipe answers: the plain query, the query with the instruction, or the native prompt
#: (the fully Italian query for ``italian``; the instructed prompt for the others).
PROMPTS = ("plain", "instruction", "native")
#: Fewest filtered completion pairs for a response vector; below it every pair is used.
MIN_PAIRS = 4


@dataclass(frozen=True)
class Behaviour:
    """A behaviour to steer towards: its bundled dataset, its token budget and what counts as on target.

    ``target``: one of :data:`~workbench.evaluation.targets.TARGETS`, scored by
    :func:`~workbench.evaluation.targets.on_target`. ``variant`` is the ``italian`` dataset's positive
    prompt used for the vectors and the native prompt (``it``); ``instruction_variant`` the one used as
    "instruction in the prompt" (``en_answer_it``).
    """

    name: str
    dataset: str
    max_new_tokens: int
    target: str = "ifeval"
    variant: str | None = None
    instruction_variant: str | None = None

    def items(self, split: str, n: int | None = None, *, variant: str | None = None) -> ContrastiveSet:
        """The first ``n`` items of ``split`` (positive prompts of ``variant``, default :attr:`variant`)."""
        return load(self.dataset, split, variant=variant or self.variant).head(n)

    def prompts(self, split: str, n: int | None, kind: str) -> list[str]:
        """The prompts of one :data:`PROMPTS` kind, in item order."""
        if kind not in PROMPTS:
            raise InvalidArgumentError(f"unknown prompt kind {kind!r}: use one of {', '.join(PROMPTS)}")
        if kind == "plain":
            return self.items(split, n).negative
        if kind == "instruction" and self.instruction_variant is not None:
            return self.items(split, n, variant=self.instruction_variant).positive
        return self.items(split, n).positive

    def on_target(self, item: Item, response: str) -> bool:
        """Whether ``response`` shows the behaviour, by :attr:`target`."""
        return on_target(self.target, item, response)


#: The behaviours of the frontier study; bullets get 64 tokens so that three can fit.
BEHAVIOURS: dict[str, Behaviour] = {
    b.name: b
    for b in (
        Behaviour("json", "json_format", 48, target="json_format_strict"),
        Behaviour("bullets", "bullet_lists", 64),
        Behaviour("one_sentence", "one_sentence", 40),
        Behaviour("italian", "italian", 40, "italian", variant="it", instruction_variant="en_answer_it"),
    )
}


def behaviour(name: str) -> Behaviour:
    """The behaviour called ``name``, or a one-line error listing them."""
    if name not in BEHAVIOURS:
        raise InvalidArgumentError(f"unknown behaviour {name!r}: use one of {', '.join(BEHAVIOURS)}")
    return BEHAVIOURS[name]


# ---- contrastive completions and vectors ---------------------------------------------------------------


def complete(
    model: Model, prompts: Sequence[str], max_new_tokens: int, *, batch_size: int = 32, progress: bool = False
) -> list[str]:
    """Unsteered greedy answers to ``prompts``, generated once: cached by :func:`~workbench.runner.run_grid`
    under ``$WORKBENCH_CACHE/completions``, keyed by the model's fingerprint (weights, dtype, device),
    the budget, the chat format and a hash of the grid's whole manifest, so a folder written with other
    settings (an older workbench's) is never this one."""
    manifest = json.dumps(grid_settings(model, max_new_tokens), sort_keys=True, default=json_default)
    digest = hashlib.sha256(manifest.encode()).hexdigest()[:12]
    folder = f"{model.fingerprint}-{max_new_tokens}-{int(model.is_chat)}-{digest}"
    unique = sorted(set(prompts))
    rows = run_grid(
        model,
        [Job("unsteered", "", p) for p in unique],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        out_dir=cache_dir() / "completions" / folder,
        progress=progress,
    )
    answers = dict(zip(unique, rows["response"], strict=True))
    return [answers[p] for p in prompts]


def _with_norms(
    vector: SteeringVector, norms: dict[int, float], source: str, **extra: object
) -> SteeringVector:
    """``vector`` with the reference residual norms, so ``residual_norm`` means the same for every source."""
    stats = {b: dataclasses.replace(s, resid_norm=norms[b]) for b, s in vector.stats.items()}
    provenance = {**vector.provenance, "source": source, "resid_norm_from": "last prompt token", **extra}
    return SteeringVector(vector.directions, vector.layers, stats, provenance)


class NoCompletionsError(InvalidArgumentError):
    """The model's answers give too few contrastive completion pairs for a response-token vector."""


def _mean_norms(*acts: Activations) -> Float[Tensor, " layer"]:
    """Mean residual norm per layer over every row of ``acts``."""
    return torch.linalg.vector_norm(torch.cat([a.tensor for a in acts]).double(), dim=-1).mean(0)


def _response_acts(
    model: Model, data: ContrastiveSet, behaviour: Behaviour, batch_size: int, progress: bool
) -> tuple[Activations, Activations, list[int]]:
    """Mean residual over the response tokens of the model's own answers with and without the behaviour.

    Both answers follow the same plain prompt. The pairs kept are those whose positive answer is on
    target, whose negative answer is not, and where neither is degenerate; with fewer than
    :data:`MIN_PAIRS` such pairs (a model that cannot do the behaviour), every pair with two non-empty
    answers. Also returns the indices kept.
    """
    budget = behaviour.max_new_tokens
    pos_answers = complete(model, data.positive, budget, batch_size=batch_size, progress=progress)
    neg_answers = complete(model, data.negative, budget, batch_size=batch_size, progress=progress)
    pairs = list(zip(data.items, pos_answers, neg_answers, strict=True))
    keep = [
        i
        for i, (item, p, q) in enumerate(pairs)
        if behaviour.on_target(item, p) and not behaviour.on_target(item, q)
        if not is_degenerate(p) and not is_degenerate(q)
    ]
    if len(keep) < MIN_PAIRS:
        keep = [i for i, (_, p, q) in enumerate(pairs) if p.strip() and q.strip()]
    if len(keep) < 2:
        raise NoCompletionsError(
            f"only {len(keep)} of {len(data)} train prompts got a non-empty answer both with and without "
            "the behaviour, too few for a response vector: use more train prompts or another source"
        )
    prompts = [data.negative[i] for i in keep]
    pos = collect_responses(model, prompts, [pos_answers[i] for i in keep], batch_size=batch_size)
    neg = collect_responses(model, prompts, [neg_answers[i] for i in keep], batch_size=batch_size)
    return pos, neg, keep


def build_vectors(
    model: Model,
    behaviour: Behaviour,
    n_train: int,
    *,
    sources: Sequence[str] = SOURCES,
    batch_size: int = 32,
    progress: bool = False,
    cache: bool = True,
) -> dict[str, SteeringVector]:
    """Diff-in-means vectors at every layer from the first ``n_train`` train pairs, one per source
    (``cache`` False: prompt activations computed afresh, not read from the activation cache).

    ``residual_norm`` of every vector is the mean residual norm at the last prompt token of the train
    prompts (both sets), the same reference for every source.
    """
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise InvalidArgumentError(f"unknown or no sources {unknown}: use some of {', '.join(SOURCES)}")
    data = behaviour.items("train", n_train)
    last = (
        collect(model, data.positive, batch_size=batch_size, cache=cache),
        collect(model, data.negative, batch_size=batch_size, cache=cache),
    )
    norms = dict(zip(last[0].layers, _mean_norms(*last).tolist(), strict=True))
    vectors = {}
    for source in sources:
        extra: dict[str, object] = {}
        if source == "generated":
            pos, neg, kept = _response_acts(model, data, behaviour, batch_size, progress)
            extra["completion_pairs"] = len(kept)
            tag = f"{data.name}:{data.variant}" if data.variant else data.name
            vector = SteeringVector.from_activations(pos, neg, dataset=tag, dataset_hash=data.hash)
        else:
            vector = SteeringVector.from_dataset(
                model, data, position=source, batch_size=batch_size, cache=cache
            )
        vectors[source] = _with_norms(vector, norms, source, **extra)
    return vectors
