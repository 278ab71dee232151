"""Trained steering vectors: one rank-1 vector per layer, trained on answer likelihood or with RePS.

The reference is AxBench (Wu et al. 2025, ``stanfordnlp/axbench``) and RePS ("Reference-free Preference
Steering", Wu et al. 2025, arXiv 2505.20809). The model is frozen; only the vectors train, by autograd through
the model's real forward. What is steered: the residual stream after block ``l``
(``blocks.{l}.hook_resid_post``) at every real token of prompt and answer (their ``positions: all``), by
adding ``factor · v_l``; each row draws its factor uniformly from ``factors``, the same for every layer.

* ``"likelihood"`` (their ``SteeringVector``, the "Lang" objective): the cross-entropy of the on-target
  answer's tokens given the *plain* prompt with the vector added, averaged over the batch's answer tokens.
* ``"reps"`` (their ``PreferenceVector``: ``loss_type: scaled_simpo``, ``preference_pairs: [orig_add,
  orig_sub]``, ``substraction_type: null_it_out``, ``reference_free``, ``beta 1, gemma 0, simpo_scaler 1``).
  *Add* rows prefer the on-target answer ``w`` over the plain answer ``l``, each with the vector added at its
  own factor; *null* rows prefer the plain answer over the on-target one with the vector's positive
  projection removed, ``h − relu(h·v)/|v|² · v``. Per pair the loss is
  ``−log σ(β · log p(w)/|w| − log p(l)/|l|)`` with ``β = max(log p₀(l) − log p₀(w), 1)``, where ``log p`` sums
  the answer tokens' log-probabilities, ``p₀`` is the unsteered model (no reference *ratio*: reference-free)
  and ``|·|`` counts the whole sequence's tokens, prompt included (their attention-mask lengths). The batch
  loss is the mean over both directions.

Both: AdamW (no weight decay), learning rate decaying linearly to 0 without warm-up, gradient norm clipped at
1, each vector initialised ``U(±1/√d)`` as torch's ``Linear``. Defaults follow their
``p_vector_dps_g2-2b_axbench.yaml`` (lr 0.04, batch 6, factors 2, 4, ..., 20) except the epochs.

Where this differs from axbench, and why: the pairs are the model's own self-distilled answers
(:mod:`workbench.training.pairs`), not concept texts written by gpt-4o-mini; ``epochs`` defaults to
:data:`EPOCHS` (3 for likelihood, 1 for RePS, whose step costs about five times as much), not 18, so that a
vector trains on 24 pairs in under a CPU minute on SmolLM2-135M; their learned scalar bias (zero-initialised,
added to the factor) is left out, so that the result is an ordinary additive vector; the first token is
steered too (they skip BOS), as ``Intervention(positions="all")`` steers it at inference; ``likelihood`` also
draws factors (their SteeringVector trains at factor 1, lr 0.01, 3 epochs, weights filled with 0.01; pass
``factors=(1.0,)`` for its objective), so that both methods' strengths live on one scale, and its gradient is
clipped too; the unsteered log-probabilities for β are computed once before training (they do not depend on
the vector); batches are left-padded, with position ids counted from each row's first token.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

import workbench
from workbench.activations import collect
from workbench.errors import InvalidArgumentError
from workbench.fastpath import direct_forward
from workbench.files import utc_now
from workbench.methods import LayerStats
from workbench.models import Model
from workbench.positions import PositionTracker
from workbench.training.pairs import PreferencePairs, TokenRow
from workbench.vectors import SteeringVector

__all__ = ["EPOCHS", "FACTORS", "METHODS", "Batch", "answer_logps", "frozen", "pad", "train_vector"]

METHODS = ("likelihood", "reps")
#: AxBench's training factors for RePS vectors on Gemma-2-2B.
FACTORS = tuple(float(f) for f in range(2, 21, 2))
#: Default epochs per method: each trains on 24 pairs in under a CPU minute on SmolLM2-135M (one thread).
EPOCHS = {"likelihood": 3, "reps": 1}
#: Gradient norm clip, as axbench's preference trainer.
CLIP = 1.0


@dataclass(frozen=True)
class Batch:
    """Left-padded rows: token ``ids``, attention ``mask``, the ``answer`` tokens (scored) and each row's
    token count (prompt plus answer)."""

    ids: Int[Tensor, "row seq"]
    mask: Int[Tensor, "row seq"]
    answer: Bool[Tensor, "row seq"]
    lengths: Float[Tensor, " row"]

    def positions(self, rule: str) -> Bool[Tensor, "row seq"] | None:
        """The positions a :mod:`workbench.positions` rule selects, the answer standing for the generated
        tokens (None: every position)."""
        tracker = PositionTracker()
        with tracker.declared(self.answer.int().argmax(-1)):
            return tracker.mask(rule, self.ids.shape[1], self.ids.device)


def pad(rows: Sequence[TokenRow], pad_id: int, device: torch.device) -> Batch:
    """Left-pad ``(ids, n_prompt)`` rows into one :class:`Batch`."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    answer = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, (row, n_prompt) in enumerate(rows):
        ids[r, width - len(row) :] = torch.tensor(row)
        mask[r, width - len(row) :] = 1
        answer[r, width - len(row) + n_prompt :] = True
    lengths = torch.tensor([float(len(row)) for row, _ in rows])
    return Batch(ids.to(device), mask.to(device), answer.to(device), lengths.to(device))


@contextmanager
def frozen(model: Model) -> Iterator[None]:
    """The model's parameters need no gradient within the block (restored after)."""
    flags = [(p, p.requires_grad) for p in model.hf_model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _edit(
    v: Float[Tensor, " d_model"], factor: Float[Tensor, " row"], null: Bool[Tensor, " row"], mask: Tensor
) -> Any:
    """The hook: add ``factor · v`` on each row's real tokens, or on ``null`` rows remove ``v``'s positive
    projection."""
    nulling = bool(null.any())

    def hook(x: Float[Tensor, "row seq d_model"], hook: Any) -> Float[Tensor, "row seq d_model"]:
        u = v.to(x.dtype)
        coef = factor.to(x.dtype)[:, None].expand(x.shape[:2])
        if nulling:
            coef = torch.where(null[:, None], -torch.relu(x @ u) / (u @ u), coef)
        return x + (coef * mask.to(x.dtype))[..., None] * u

    return hook


def answer_logps(
    model: Model,
    batch: Batch,
    vectors: Mapping[int, Float[Tensor, " d_model"]],
    factor: Float[Tensor, " row"],
    null: Bool[Tensor, " row"],
    where: Bool[Tensor, "row seq"] | None = None,
) -> Float[Tensor, " row"]:
    """Summed log-probability of each row's answer tokens, with ``vectors[l]`` applied after block ``l``
    (per row: added at ``factor``, or its positive projection removed where ``null``) on every real token,
    or on the real tokens ``where`` selects; differentiable in the vectors. Only the positions that predict
    answer tokens get logits."""
    keep = int(batch.answer.sum(-1).max()) + 1
    factor, null = factor.to(batch.ids.device), null.to(batch.ids.device)
    edited = batch.mask if where is None else batch.mask * where.to(batch.mask)
    hooks = [
        (f"blocks.{layer}.hook_resid_post", _edit(v, factor, null, edited)) for layer, v in vectors.items()
    ]
    with model.bridge.hooks(fwd_hooks=hooks), direct_forward(model):
        logits = model.hf_model(
            input_ids=batch.ids,
            attention_mask=batch.mask,
            position_ids=(batch.mask.cumsum(-1) - 1).clamp_min(0),
            use_cache=False,
            **({"logits_to_keep": keep} if model.skips_logits else {}),
        ).logits[:, -keep:-1]
    targets, scored = batch.ids[:, -keep + 1 :], batch.answer[:, -keep + 1 :]
    picked = logits.float().gather(-1, targets[..., None])[..., 0] - logits.float().logsumexp(-1)
    return (picked * scored).sum(-1)


@dataclass(frozen=True)
class _Run:
    """What one training run needs: the tokenized pairs, the settings and the random stream."""

    model: Model
    targets: list[TokenRow]
    plains: list[TokenRow]
    factors: Tensor
    generator: torch.Generator
    reference: tuple[Tensor, Tensor] | None  # unsteered summed log-probs of targets and plains (RePS)

    def draw(self, n: int) -> Float[Tensor, " n"]:
        return self.factors[torch.randint(len(self.factors), (n,), generator=self.generator)]

    def batch(self, rows: Sequence[TokenRow]) -> Batch:
        return pad(rows, self.model.tokenizer.pad_token_id or 0, self.model.device)


def _likelihood_loss(run: _Run, vectors: Mapping[int, Tensor], idx: list[int]) -> Tensor:
    batch = run.batch([run.targets[i] for i in idx])
    logps = answer_logps(
        run.model, batch, vectors, run.draw(len(idx)), torch.zeros(len(idx), dtype=torch.bool)
    )
    return -logps.sum() / batch.answer.sum()


def _reps_loss(run: _Run, vectors: Mapping[int, Tensor], idx: list[int]) -> Tensor:
    n = len(idx)
    targets, plains = [run.targets[i] for i in idx], [run.plains[i] for i in idx]
    batch = run.batch([*targets, *plains, *plains, *targets])
    factor = torch.cat([run.draw(2 * n), torch.zeros(2 * n)])
    null = torch.arange(4 * n) >= 2 * n
    add_w, add_l, null_w, null_l = answer_logps(run.model, batch, vectors, factor, null).split(n)
    len_t, len_p = batch.lengths[:n], batch.lengths[n : 2 * n]
    assert run.reference is not None
    ref_t, ref_p = (r[idx].to(add_w.device) for r in run.reference)
    add = -F.logsigmoid((ref_p - ref_t).clamp_min(1.0) * add_w / len_t - add_l / len_p)
    nulled = -F.logsigmoid((ref_t - ref_p).clamp_min(1.0) * null_w / len_p - null_l / len_t)
    return torch.cat([add, nulled]).mean()


@torch.no_grad()
def _reference(model: Model, rows: Sequence[TokenRow], batch_size: int) -> Float[Tensor, " row"]:
    """Unsteered summed log-probabilities of ``rows``' answers."""
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = pad(chunk, model.tokenizer.pad_token_id or 0, model.device)
        none = torch.zeros(len(chunk))
        out.append(answer_logps(model, batch, {}, none, none.bool()).cpu())
    return torch.cat(out)


def _fit(
    run: _Run, layers: Sequence[int], method: str, lr: float, epochs: int, batch_size: int, progress: bool
) -> tuple[dict[int, Tensor], list[float]]:
    """Train one vector per layer; the vectors and the loss of every step."""
    d = run.model.d_model
    bound = 1.0 / math.sqrt(d)
    vectors = {
        layer: torch.nn.Parameter(
            ((torch.rand(d, generator=run.generator) * 2 - 1) * bound).to(run.model.device)
        )
        for layer in layers
    }
    optimizer = torch.optim.AdamW(list(vectors.values()), lr=lr, weight_decay=0.0)
    n = len(run.targets)
    total = epochs * math.ceil(n / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))
    objective = _reps_loss if method == "reps" else _likelihood_loss
    losses: list[float] = []
    with tqdm(total=total, desc=f"train {method}", disable=not progress) as bar:
        for _ in range(epochs):
            order = torch.randperm(n, generator=run.generator).tolist()
            for start in range(0, n, batch_size):
                loss = objective(run, vectors, order[start : start + batch_size])
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(vectors.values()), CLIP)
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                bar.update(1)
    return {layer: v.detach().float().cpu() for layer, v in vectors.items()}, losses


def _check(
    model: Model,
    method: str,
    layers: int | Sequence[int],
    lr: float,
    epochs: int,
    batch_size: int,
    factors: Sequence[float],
) -> tuple[int, ...]:
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    chosen = (layers,) if isinstance(layers, numbers.Integral) else tuple(layers)
    if not chosen or len(set(chosen)) != len(chosen):
        raise InvalidArgumentError(f"layers must be one or more distinct block indices, got {layers!r}")
    for layer in chosen:
        model.layer_check(layer)
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
        raise InvalidArgumentError(f"lr must be a positive number, got {lr!r}")
    if (
        isinstance(factors, str)
        or not factors
        or not all(isinstance(f, numbers.Real) and math.isfinite(f) and f > 0 for f in factors)
    ):
        raise InvalidArgumentError(f"factors must be one or more positive numbers, got {factors!r}")
    return tuple(int(b) for b in chosen)


def _pairs(pairs: PreferencePairs | Sequence[Sequence[str]]) -> PreferencePairs:
    return pairs if isinstance(pairs, PreferencePairs) else PreferencePairs.from_triples(pairs)


def train_vector(
    model: Model,
    pairs: PreferencePairs | Sequence[Sequence[str]],
    *,
    method: str = "likelihood",
    layers: int | Sequence[int],
    lr: float = 0.04,
    epochs: int | None = None,
    batch_size: int = 6,
    factors: Sequence[float] = FACTORS,
    seed: int = 0,
    progress: bool = False,
) -> SteeringVector:
    """A rank-1 vector per layer of ``layers`` trained with ``method`` (:data:`METHODS`) on ``pairs``.

    ``pairs``: :class:`PreferencePairs` (:func:`~workbench.training.preference_pairs`) or ``(prompt,
    on-target answer, plain answer)`` triples of complete answers. ``epochs`` defaults to :data:`EPOCHS`. The result is an ordinary
    :class:`~workbench.vectors.SteeringVector`: its ``diff_norm`` is the trained vector's norm, so
    ``Intervention(v, layer, "add", coef)`` adds ``coef`` times the trained vector (``coef`` is on the scale
    of ``factors``), and ``resid_norm`` is the mean residual norm at the train prompts' last token. The
    provenance records the method, settings, pairs hash, model fingerprint, losses and CPU seconds.
    Deterministic for a ``seed`` (on one machine and thread count).
    """
    epochs = EPOCHS.get(method, 1) if epochs is None else epochs
    chosen = _check(model, method, layers, lr, epochs, batch_size, factors)
    pairs = _pairs(pairs)
    cpu, wall = time.process_time(), time.perf_counter()
    targets, plains = pairs.sequences(model)
    with frozen(model), torch.enable_grad():
        reference = None
        if method == "reps":
            reference = (
                _reference(model, targets, 2 * batch_size),
                _reference(model, plains, 2 * batch_size),
            )
        generator = torch.Generator().manual_seed(seed)
        run = _Run(model, targets, plains, torch.tensor([float(f) for f in factors]), generator, reference)
        vectors, losses = _fit(run, chosen, method, float(lr), epochs, batch_size, progress)
    acts = collect(model, list(pairs.prompts), layers=list(chosen), position="last_prompt")
    norms = torch.linalg.vector_norm(acts.tensor.double(), dim=-1).mean(0).tolist()
    settings = {
        "lr": float(lr),
        "epochs": epochs,
        "batch_size": batch_size,
        "factors": list(map(float, factors)),
    }
    provenance = _provenance(model, pairs, method, chosen, seed, settings, losses)
    provenance.update(
        train_cpu_seconds=time.process_time() - cpu, train_wall_seconds=time.perf_counter() - wall
    )
    raw = torch.stack([vectors[b] for b in chosen]).double()
    lengths = torch.linalg.vector_norm(raw, dim=-1)
    stats = {
        b: LayerStats(diff_norm=float(length), resid_norm=float(norm))
        for b, length, norm in zip(chosen, lengths.tolist(), norms, strict=True)
    }
    return SteeringVector((raw / lengths[:, None]).float(), chosen, stats, provenance)


def _provenance(
    model: Model,
    pairs: PreferencePairs,
    method: str,
    layers: tuple[int, ...],
    seed: int,
    settings: dict[str, Any],
    losses: list[float],
) -> dict[str, Any]:
    return {
        "method": method,
        "trained": True,
        "model_name": model.name,
        "weights_hash": model.weights_hash,
        "fingerprint": model.fingerprint,
        "n_layers": model.n_layers,
        "d_model": model.d_model,
        "hook": "resid_post",
        "position": None,
        "steered_positions": "all",
        "chat": True,
        "layers": list(layers),
        **settings,
        "seed": seed,
        "optimizer": "AdamW, weight decay 0, linear decay to 0, no warm-up, gradient norm clipped at 1",
        "init": "uniform(-1/sqrt(d), 1/sqrt(d))",
        "reference": "stanfordnlp/axbench (SteeringVector; PreferenceVector scaled_simpo, orig_add + orig_sub)",
        "pairs_hash": pairs.hash,
        "n_pairs": len(pairs),
        "pair_ids": list(pairs.ids),
        "max_new_tokens": pairs.max_new_tokens,
        **{k: v for k, v in pairs.source.items() if k in ("dataset", "dataset_hash", "split", "target")},
        "pairs_source": pairs.source,
        "losses": losses,
        "torch_version": torch.__version__,
        "workbench_version": workbench.__version__,
        "created": utc_now(),
    }
