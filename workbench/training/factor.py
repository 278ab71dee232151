"""Training the strength of a fixed steering vector at chosen positions: PrOSV's trained factor.

PrOSV ("Towards Steering without Sacrifice: Principled Training of Steering Vectors for Prompt-only
Interventions", Bao et al. 2026, arXiv 2605.05983, code ``colored-dye/prosv``) steers only a few prompt
tokens (their ``lK``: the last ``K`` tokens of the chat-formatted prompt, generation prompt included; ``fK+lK``
adds the first ``K``), so the effect reaches the answer through the prompt's KV cache, and trains the factor
with the vector instead of choosing it afterwards: their ``AdditionFreeIntervention`` adds ``factor · v``,
trained with Adam on the mean cross-entropy of the answer tokens ("lang"), the factor with its own large
learning rate (10) and initialisation (4·√d), the learning rate decaying linearly to 0, the vector's
gradient clipped at 1.

Here the vector is fixed (any :class:`~workbench.vectors.SteeringVector`: diff-in-means, a trained one) and
only the factor trains: ``h + c · a_l · u_l`` after each block ``l`` of ``layers`` at ``positions``
(default ``prompt_tail:5``), ``a_l`` being one ``unit`` of the vector at ``l`` (:func:`resolve_amount`), one
``c`` for all layers, so ``c`` is an ordinary ``coef``: ``Intervention(vector, l, "add", c, positions,
unit)`` steers as trained. The loss is the likelihood vector's (:mod:`workbench.training.vector`): the
on-target answers' cross-entropy given the plain prompt, through the same
:func:`~workbench.training.vector.answer_logps`, on the self-distilled pairs. Where this differs from theirs:
the direction is not trained; ``c`` starts at ``init`` units (not √d-scaled) with Adam at ``lr`` (their
factor's learning rate is on the √d scale); one factor for all layers (theirs is per intervention); the last
``K`` prompt tokens only (no first ``K``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from workbench.errors import InvalidArgumentError, ShapeMismatchError
from workbench.interventions import UNITS, resolve_amount
from workbench.models import Model
from workbench.positions import check_positions
from workbench.training.pairs import PreferencePairs
from workbench.training.vector import answer_logps, frozen, pad
from workbench.vectors import SteeringVector

__all__ = ["train_factor"]


def _real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check(
    model: Model, vector: SteeringVector, layers: int | Sequence[int], settings: dict[str, object]
) -> tuple[int, ...]:
    """The chosen layers, or a one-line error for anything :func:`train_factor` cannot use."""
    if not isinstance(vector, SteeringVector):
        raise InvalidArgumentError(f"train_factor needs a SteeringVector, got {type(vector).__name__}")
    if vector.d_model != model.d_model:
        raise ShapeMismatchError(
            f"the vector has d_model {vector.d_model} but {model.name} has {model.d_model}"
        )
    chosen = (layers,) if isinstance(layers, numbers.Integral) else tuple(layers)
    if not chosen or len(set(chosen)) != len(chosen):
        raise InvalidArgumentError(f"layers must be one or more distinct block indices, got {layers!r}")
    for layer in chosen:
        model.layer_check(layer)
        if layer not in vector.layers:
            raise InvalidArgumentError(f"the vector has no layer {layer}; it covers {list(vector.layers)}")
    check_positions(settings["positions"])  # type: ignore[arg-type]
    if settings["unit"] not in UNITS:
        raise InvalidArgumentError(f"unknown unit {settings['unit']!r}: use one of {', '.join(UNITS)}")
    if not _real(settings["init"]):
        raise InvalidArgumentError(f"init must be a finite number, got {settings['init']!r}")
    if not (_real(settings["lr"]) and settings["lr"] > 0):  # type: ignore[operator]
        raise InvalidArgumentError(f"lr must be a positive number, got {settings['lr']!r}")
    for name in ("epochs", "batch_size"):
        value = settings[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    return tuple(int(b) for b in chosen)


def train_factor(
    model: Model,
    vector: SteeringVector,
    pairs: PreferencePairs | Sequence[Sequence[str]],
    *,
    layers: int | Sequence[int],
    positions: str = "prompt_tail:5",
    unit: str = "diff_norm",
    init: float = 1.0,
    lr: float = 4.0,
    epochs: int = 3,
    batch_size: int = 6,
    seed: int = 0,
    progress: bool = False,
) -> float:
    """The ``coef`` (in ``unit``) of ``vector`` at ``positions`` of ``layers`` that maximises the likelihood
    of ``pairs``' on-target answers given their plain prompts, the vector fixed (PrOSV's trained factor).

    ``pairs``: :class:`PreferencePairs` (:func:`~workbench.training.preference_pairs`) or ``(prompt,
    on-target answer, plain answer)`` triples. Adam from ``init`` at ``lr``, decaying linearly to 0 over
    ``epochs`` passes in batches of ``batch_size``; deterministic for a ``seed``. The defaults reach the
    loss's minimum on SmolLM2's layer 10 (20 one_sentence pairs, 12 steps, 22 CPU s: 7.2 for the
    diff-in-means vector, 26 for the likelihood-trained one, from 1).
    """
    settings = {"positions": positions, "unit": unit, "init": init, "lr": lr, "epochs": epochs}
    chosen = _check(model, vector, layers, {**settings, "batch_size": batch_size})
    pairs = pairs if isinstance(pairs, PreferencePairs) else PreferencePairs.from_triples(pairs)
    targets, _ = pairs.sequences(model)
    steps = {
        layer: (
            resolve_amount(vector.stats[layer], "add", 1.0, unit, layer) * vector.direction(layer).double()
        )
        .float()
        .to(model.device)
        for layer in chosen
    }
    coef = torch.nn.Parameter(torch.tensor(float(init), device=model.device))
    optimizer = torch.optim.Adam([coef], lr=float(lr))
    total = epochs * math.ceil(len(targets) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))
    generator = torch.Generator().manual_seed(seed)
    with (
        frozen(model),
        torch.enable_grad(),
        tqdm(total=total, desc="train factor", disable=not progress) as bar,
    ):
        for _ in range(epochs):
            order = torch.randperm(len(targets), generator=generator).tolist()
            for start in range(0, len(targets), batch_size):
                batch = pad(
                    [targets[i] for i in order[start : start + batch_size]],
                    model.tokenizer.pad_token_id or 0,
                    model.device,
                )
                ones = torch.ones(batch.ids.shape[0])
                vectors = {layer: coef * step for layer, step in steps.items()}
                logps = answer_logps(model, batch, vectors, ones, ones < 0, batch.positions(positions))
                loss = -logps.sum() / batch.answer.sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update(1)
    return float(coef.detach())
