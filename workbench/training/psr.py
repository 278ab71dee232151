"""Distilling an instruction into a per-token gate: a Prompt Steering Replacement (PSR) model.

"Steer like the LLM" (Nokia Bell Labs, ICML 2026, arXiv 2605.03907, ``Nokia-Bell-Labs/steer-like-the-llm``)
treats prompting as steering the model applies to itself: the activation change ``Δh`` an instruction
causes varies by orders of magnitude from token to token, so they fit ``h + α(h)·z`` with a token-specific
``α(h) = ReLU(w·h + b)`` read from the unsteered activation, trained to imitate the prompted activations.

:func:`train_gate` does that at one layer. Per pair it runs the model's own on-target answer (as
:func:`~workbench.training.preference_pairs` distils it) after the prompt *with* the instruction and after the
plain prompt, and takes at layer ``l``'s ``hook_resid_post`` the change ``Δh = h_with − h_without`` on the
same tokens: the last prompt position and the answer's (the ``response`` positions, which the gate then
steers by default). :func:`fit_gate` sets ``z``'s direction ``u`` to the mean of ``Δh`` and fits ``w, b``
so that ``ReLU(w·h_without + b)`` matches each token's projection ``Δh·u``: ridge regression on standardised
activations, refined under the ReLU by full-batch Adam on the squared error (minimising
``‖Δh − α·u‖²`` over ``α`` is that same fit, as ``u`` is fixed). Where this differs from the authors', whose
code was not available here (the method is taken from the paper's summaries): ``z`` is the mean shift's
direction, not learned; one layer, not their all-layer variant; the answers are the model's own
self-distilled ones; the loss is on the residual stream of that layer, not on the downstream behaviour.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

import workbench
from workbench.datasets import ContrastiveSet
from workbench.errors import InvalidArgumentError
from workbench.fastpath import direct_forward
from workbench.files import utc_now
from workbench.gated_steering import GatedIntervention
from workbench.models import Model
from workbench.positions import check_positions
from workbench.training.pairs import PreferencePairs, TokenRow, preference_pairs
from workbench.training.vector import pad

__all__ = ["L2", "STEPS", "fit_gate", "instruction_shift", "train_gate"]

#: Ridge penalty on the standardised gate weights (mean squared error + ``l2·‖w‖²``): the best held-out fit
#: of 0.001..10 on SmolLM2's layer 10, one_sentence (14 pairs fitted, 6 held out: R² 0.58; 0.46 at 0.1).
L2 = 1.0
#: Full-batch Adam steps that refine the ridge solution under the ReLU.
STEPS = 200


def _common_tail(a: list[int], b: list[int], cap: int) -> int:
    n = 0
    while n < min(cap, len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


@torch.no_grad()
def _residuals(
    model: Model, rows: Sequence[TokenRow], spans: Sequence[int], layer: int, batch_size: int
) -> list[Float[Tensor, "span d_model"]]:
    """Each row's residual stream after block ``layer`` at its last ``spans[i]`` positions."""
    out: list[Tensor] = []
    seen: dict[str, Tensor] = {}

    def capture(x: Tensor, hook: Any) -> Tensor:
        seen["x"] = x.detach()
        return x

    for start in range(0, len(rows), batch_size):
        batch = pad(rows[start : start + batch_size], model.tokenizer.pad_token_id or 0, model.device)
        with (
            model.bridge.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_post", capture)]),
            direct_forward(model),
        ):
            model.hf_model(
                input_ids=batch.ids,
                attention_mask=batch.mask,
                position_ids=(batch.mask.cumsum(-1) - 1).clamp_min(0),
                use_cache=False,
                **({"logits_to_keep": 1} if model.skips_logits else {}),
            )
        for r, span in enumerate(spans[start : start + batch_size]):
            out.append(seen["x"][r, seen["x"].shape[1] - span :].double().cpu())
    return out


def instruction_shift(
    model: Model, pairs: PreferencePairs, instructed: Sequence[str], *, layer: int, batch_size: int = 16
) -> tuple[Float[Tensor, "token d_model"], Float[Tensor, "token d_model"]]:
    """``(h_without, Δh)`` at layer ``layer`` on every pair's response positions (its last prompt position
    and its answer tokens), where the on-target answer follows the plain prompt or ``instructed[i]``."""
    model.layer_check(layer)
    if len(instructed) != len(pairs):
        raise InvalidArgumentError(
            f"{len(instructed)} instructed prompts for {len(pairs)} pairs: give one per pair"
        )
    plain, _ = pairs.sequences(model)
    prompted, _ = dataclasses.replace(pairs, prompts=tuple(instructed)).sequences(model)
    spans = [_common_tail(a, b, len(a) - n + 1) for (a, n), (b, _) in zip(plain, prompted, strict=True)]
    without = _residuals(model, plain, spans, layer, batch_size)
    with_ = _residuals(model, prompted, spans, layer, batch_size)
    h = torch.cat(without)
    return h, torch.cat(with_) - h


def fit_gate(
    h: Float[Tensor, "token d_model"],
    delta: Float[Tensor, "token d_model"],
    *,
    l2: float = L2,
    steps: int = STEPS,
    lr: float = 0.01,
) -> tuple[Float[Tensor, " d_model"], Float[Tensor, " d_model"], float, dict[str, float]]:
    """``(u, w, b, stats)``: ``u`` the unit mean of ``delta``, and ``w, b`` such that ``ReLU(w·h + b)``
    fits each token's ``delta·u`` (ridge on standardised ``h``, refined under the ReLU by ``steps`` of
    full-batch Adam). ``stats``: tokens, the mean squared error of the gate and of the best constant
    strength (the mean projection), ``r2`` (1 − their ratio), the mean projection, and the share of
    ``‖Δh‖²`` along ``u``."""
    if h.ndim != 2 or h.shape != delta.shape or h.shape[0] < 2:
        raise InvalidArgumentError(
            f"h and delta must be two [token, d_model] tensors of the same shape with at least 2 tokens, got "
            f"{tuple(h.shape)} and {tuple(delta.shape)}"
        )
    if not (isinstance(l2, int | float) and math.isfinite(l2) and l2 >= 0):
        raise InvalidArgumentError(f"l2 must be a number >= 0, got {l2!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise InvalidArgumentError(f"steps must be an integer >= 0, got {steps!r}")
    h, delta = h.double(), delta.double()
    mean = delta.mean(0)
    if not float(torch.linalg.vector_norm(mean)) > 0:
        raise InvalidArgumentError(
            "the instruction does not change this layer's residual stream on these tokens"
        )
    u = mean / torch.linalg.vector_norm(mean)
    c = delta @ u
    spread = float(c.std()) or 1.0
    mu, sigma = h.mean(0), h.std(0).clamp_min(1e-6)
    x, y = (h - mu) / sigma, c / spread
    n, d = x.shape
    w = torch.linalg.solve(x.T @ x / n + l2 * torch.eye(d, dtype=x.dtype), x.T @ (y - y.mean()) / n)
    w, b = _refine(x, y, w, y.mean(), l2, steps, lr)
    gate = w / sigma * spread
    bias = float((b - (w / sigma) @ mu) * spread)
    alpha = torch.relu(h @ gate + bias)
    mse, constant = float(((alpha - c) ** 2).mean()), float(c.var(unbiased=False))
    stats = {
        "tokens": float(n),
        "mse_gate": mse,
        "mse_constant": constant,
        "r2": 1.0 - mse / constant if constant > 0 else 0.0,
        "mean_projection": float(c.mean()),
        "share_along_direction": float((c**2).sum() / (delta**2).sum()),
    }
    return u.float(), gate.float(), bias, stats


def _refine(
    x: Tensor, y: Tensor, w: Tensor, b: Tensor, l2: float, steps: int, lr: float
) -> tuple[Tensor, Tensor]:
    """``w, b`` after ``steps`` of Adam on ``mean((ReLU(x·w + b) − y)²) + l2·‖w‖²``, the best seen."""
    w, b = torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone().reshape(()))
    optimizer = torch.optim.Adam([w, b], lr=lr)
    best = (math.inf, w.detach().clone(), b.detach().clone())
    with torch.enable_grad():
        for step in range(steps + 1):
            loss = ((torch.relu(x @ w + b) - y) ** 2).mean() + l2 * (w @ w)
            if loss.item() < best[0]:
                best = (loss.item(), w.detach().clone(), b.detach().clone())
            if step == steps:
                break
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return best[1], best[2]


def train_gate(
    model: Model,
    dataset: ContrastiveSet,
    *,
    layer: int,
    pairs: PreferencePairs | None = None,
    positions: str = "response",
    scale: float = 1.0,
    l2: float = L2,
    steps: int = STEPS,
    batch_size: int = 16,
) -> GatedIntervention:
    """A PSR gate at ``layer`` distilled from ``dataset`` (a train split): the instruction's own activation
    change on the model's on-target answers (``pairs``, default :func:`preference_pairs` of ``dataset``;
    each pair's instructed prompt is its item's positive prompt), fitted by :func:`fit_gate`. Applied at
    ``positions`` with ``scale`` (1: as fitted); the provenance records the fit's statistics and CPU time."""
    model.layer_check(layer)
    check_positions(positions)
    cpu, wall = time.process_time(), time.perf_counter()
    pairs = preference_pairs(model, dataset, batch_size=batch_size) if pairs is None else pairs
    instructed = {item.id: item.prompt for item in dataset.items}
    missing = [pid for pid in pairs.ids if pid not in instructed]
    if missing:
        raise InvalidArgumentError(
            f"pair {missing[0]!r} is not an item of {dataset.name!r}: give that dataset's pairs"
        )
    fit_cpu = time.process_time()
    h, delta = instruction_shift(
        model, pairs, [instructed[pid] for pid in pairs.ids], layer=layer, batch_size=batch_size
    )
    u, gate, bias, stats = fit_gate(h, delta, l2=l2, steps=steps)
    provenance = {
        "method": "psr",
        "reference": "Nokia-Bell-Labs/steer-like-the-llm (PSR: h + ReLU(w.h + b) z)",
        "model_name": model.name,
        "weights_hash": model.weights_hash,
        "fingerprint": model.fingerprint,
        "n_layers": model.n_layers,
        "d_model": model.d_model,
        "hook": "resid_post",
        "fitted_positions": "response",
        "dataset": dataset.name,
        "dataset_hash": dataset.hash,
        "split": dataset.split,
        "pairs_hash": pairs.hash,
        "n_pairs": len(pairs),
        "pair_ids": list(pairs.ids),
        "max_new_tokens": pairs.max_new_tokens,
        "l2": float(l2),
        "steps": steps,
        "fit": stats,
        "fit_cpu_seconds": time.process_time() - fit_cpu,
        "train_cpu_seconds": time.process_time() - cpu,
        "train_wall_seconds": time.perf_counter() - wall,
        "torch_version": torch.__version__,
        "workbench_version": workbench.__version__,
        "created": utc_now(),
    }
    return GatedIntervention(u, gate, bias, layer, scale, positions, provenance)
