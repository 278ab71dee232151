"""Batched generation with the KV cache, optional steering, and per-row steering configurations.

A batch whose prompts open with the same tokens (a chat template's system prompt: 24 of SmolLM2's ~40 prompt
tokens) runs that prefix once per distinct steering configuration, not once per row: its KV cache is
repeated for every row of the configuration, the rest of each prompt is left-padded after it, and
position ids count real tokens only, so each row computes what it would alone.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import StoppingCriteriaList, StopStringCriteria

from workbench.batching import format_prompts, length_batches
from workbench.errors import InvalidArgumentError
from workbench.fastpath import direct_forward
from workbench.interventions import AnyIntervention, check_intervention
from workbench.models import Model
from workbench.positions import tail_length
from workbench.schedules import StrengthTrace
from workbench.steering import steer_rows, tracking

RowInterventions = Sequence[Sequence[AnyIntervention]] | None

_STOPS: weakref.WeakKeyDictionary[Any, StopStringCriteria] = weakref.WeakKeyDictionary()
#: Shortest shared prompt prefix (tokens) worth its own forward pass.
MIN_SHARED_PREFIX = 8


def _stopping(model: Model) -> dict[str, Any]:
    """The model's stop strings as a criterion built once per model (building one scans the vocabulary:
    0.7 s per call for Gemma's 262k tokens)."""
    if not model.stop_strings:
        return {}
    criterion = _STOPS.get(model.hf_model)
    if criterion is None:
        criterion = _STOPS[model.hf_model] = StopStringCriteria(model.tokenizer, list(model.stop_strings))
    return {"stopping_criteria": StoppingCriteriaList([criterion])}


def per_row(
    interventions: Sequence[AnyIntervention], row_interventions: RowInterventions, n: int
) -> list[list[AnyIntervention]] | None:
    """Each of the ``n`` prompts' interventions (``interventions`` then its own row), or None when every
    prompt has the same (``interventions`` alone); a one-line error for anything else."""
    if isinstance(interventions, AnyIntervention) or any(
        not isinstance(iv, AnyIntervention) for iv in interventions
    ):
        raise InvalidArgumentError(
            "interventions is one flat list of Intervention/HeadIntervention/GatedIntervention for every "
            "prompt: give a list per prompt as row_interventions"
        )
    if row_interventions is None:
        return None
    rows = [list(row) for row in row_interventions]
    if len(rows) != n:
        raise InvalidArgumentError(
            f"row_interventions has {len(rows)} rows for {n} prompts: give one per prompt"
        )
    for row in rows:
        for iv in row:
            check_intervention(iv)
    return [[*interventions, *row] for row in rows]


@torch.inference_mode()
def generate(
    model: Model,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 128,
    chat: bool = True,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float | None = None,
    seed: int = 0,
    batch_size: int = 16,
    interventions: Sequence[AnyIntervention] | None = (),
    row_interventions: RowInterventions = None,
    use_cache: bool = True,
    min_new_tokens: int = 0,
    share_prefix: bool = True,
    progress: bool = False,
    trace: StrengthTrace | None = None,
    ended: list[bool] | None = None,
) -> list[str]:
    """Generate a response to each prompt; returns only the response text, in the prompts' order.

    ``interventions`` apply to every prompt; ``row_interventions`` gives prompt ``i`` its own list as well
    (each row of a batch carries its own configuration: a grid of settings is one batched call);
    ``None`` is no interventions. ``use_cache=False`` re-runs the whole sequence at every step (the
    reference loop, for checks). ``min_new_tokens`` keeps end-of-turn from stopping a row
    earlier (equal lengths, for timing). ``share_prefix=False`` runs every row's whole prompt (the
    reference, for checks). Greedy output does not depend on ``batch_size``. ``trace`` receives, per
    prompt in order, the per-token strengths of its dynamic interventions (:mod:`workbench.schedules`);
    a batch with one runs a side forward per token and does not share its prompt prefix. ``ended``
    receives, per prompt in order, whether its answer stopped on its own (end of text or a stop string)
    rather than at ``max_new_tokens``.
    """
    _check_settings(max_new_tokens, min_new_tokens, do_sample, temperature, top_p)
    texts = format_prompts(model, prompts, chat=chat)
    interventions = () if interventions is None else interventions
    rows = per_row(interventions, row_interventions, len(texts))
    shared = list(interventions)
    tokenizer = model.tokenizer
    eos = model.hf_model.generation_config.eos_token_id or tokenizer.eos_token_id
    options = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "use_cache": use_cache,
        "min_new_tokens": min_new_tokens or None,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": eos,
        **({"temperature": temperature, "top_p": top_p} if do_sample else {}),
        **_stopping(model),
    }
    responses: list[str] = [""] * len(texts)
    stopped = [False] * len(texts)
    traced: dict[int, tuple[list[str], Tensor, Tensor]] = {}
    batches = list(length_batches(model, texts, batch_size, formatted=chat))
    for batch_no, batch in enumerate(tqdm(batches, desc="generate", disable=not progress)):
        encoded = model.encode([texts[i] for i in batch], formatted=chat)
        row_ivs = [rows[i] if rows is not None else shared for i in batch]
        dynamic = any(iv.schedule for ivs in row_ivs for iv in ivs)
        allowed = share_prefix and use_cache and not dynamic
        prefix, encoded = _split_prefix(model, encoded, max_new_tokens, allowed, row_ivs)
        part = StrengthTrace()
        prompt_len = encoded["input_ids"].shape[1]
        if do_sample:
            torch.manual_seed(seed + batch_no)
        steered = row_ivs if rows is not None or dynamic else [shared]
        output = _generate_batch(model, encoded, prefix, row_ivs, steered, part, options)
        new = output[:, prompt_len:]
        texts_out = tokenizer.batch_decode(new, skip_special_tokens=True)
        traced |= _traced_rows(part, batch, new, eos, tokenizer.pad_token_id)
        for i, tokens, text in zip(batch, new.tolist(), texts_out, strict=True):
            responses[i] = _cut(text, model.stop_strings)
            stopped[i] = _stopped(tokens, text, eos, model.stop_strings)
    if trace is not None:
        for i in range(len(texts)):
            trace.append(*traced.get(i, ([], torch.zeros(0, 0), torch.zeros(0, 0))))
    if ended is not None:
        ended.extend(stopped)
    return responses


def _generate_batch(
    model: Model,
    encoded: dict[str, Tensor],
    prefix: int,
    row_ivs: list[list[AnyIntervention]],
    steered: list[list[AnyIntervention]],
    part: StrengthTrace,
    options: dict[str, Any],
) -> Tensor:
    """One batch's ``hf_model.generate`` output, its first ``prefix`` tokens run once (:func:`_prefix_cache`),
    steered by ``steered`` (one list per row, or one for all) with dynamic strengths traced in ``part``."""
    prompt_len = encoded["input_ids"].shape[1]
    with ExitStack() as stack:
        tracker = stack.enter_context(tracking(model))
        stack.enter_context(tracker.declared(torch.tensor([prompt_len])))
        head = encoded["input_ids"][0, :prefix]
        cache = _prefix_cache(model, head, row_ivs) if prefix >= MIN_SHARED_PREFIX else None
        stack.enter_context(steer_rows(model, steered, part))
        stack.enter_context(direct_forward(model))
        return model.hf_model.generate(
            **encoded, **({} if cache is None else {model.cache_argument: cache}), **options
        )


def _check_settings(
    max_new_tokens: int, min_new_tokens: int, do_sample: bool, temperature: float, top_p: float | None
) -> None:
    """A one-line error for a token budget or sampling setting :func:`generate` cannot use."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InvalidArgumentError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not isinstance(min_new_tokens, int) or not 0 <= min_new_tokens <= max_new_tokens:
        raise InvalidArgumentError(
            f"min_new_tokens must be an integer from 0 to max_new_tokens ({max_new_tokens}), got {min_new_tokens!r}"
        )
    if do_sample and not (isinstance(temperature, int | float) and 0 < temperature < float("inf")):
        raise InvalidArgumentError(
            f"temperature must be a finite number > 0 when sampling, got {temperature!r}"
        )
    if do_sample and top_p is not None and not (isinstance(top_p, int | float) and 0 < top_p <= 1):
        raise InvalidArgumentError(f"top_p must be a number in (0, 1] when sampling, got {top_p!r}")


def _split_prefix(
    model: Model,
    encoded: dict[str, Tensor],
    max_new_tokens: int,
    allowed: bool,
    row_ivs: Sequence[Sequence[AnyIntervention]] = (),
) -> tuple[int, dict[str, Tensor]]:
    """How many leading prompt tokens the batch shares and runs once (when ``allowed``; under
    ``MIN_SHARED_PREFIX``: none), and the batch laid out for it (:func:`_after_prefix`). Each row keeps
    out of it the last prompt tokens its interventions steer on their own (``prompt_tail:K``: ``K``).

    Padding after a shared prefix must not enter a sliding attention window (Gemma 2, Mistral)."""
    window = getattr(model.hf_model.config, "sliding_window", None)
    fits = not window or encoded["input_ids"].shape[1] + max_new_tokens <= window
    prefix = _shared_prefix(encoded) if allowed and fits else 0
    tail = max((tail_length(iv.positions) for ivs in row_ivs for iv in ivs), default=0)
    prefix = max(0, min(prefix, int(encoded["attention_mask"].sum(-1).min()) - tail))
    if prefix < MIN_SHARED_PREFIX:
        return prefix, encoded
    return prefix, _after_prefix(encoded, prefix, model.tokenizer.pad_token_id)


def _traced_rows(
    part: StrengthTrace, batch: list[int], generated: Tensor, eos: int | list[int], pad: int
) -> dict[int, tuple[list[str], Tensor, Tensor]]:
    """A batch's strength traces by prompt index, cut to each row's generated tokens (rows without a
    dynamic intervention left out)."""
    traced = {}
    for r, i in enumerate(batch[: len(part.labels)]):
        if part.labels[r]:
            n = _generated(generated[r].tolist(), eos, pad)
            traced[i] = (part.labels[r], part.strengths[r][:, :n], part.kl[r][:, :n])
    return traced


def _generated(tokens: list[int], eos: int | list[int], pad: int) -> int:
    """How many of a row's new tokens it wrote: up to its end of text, before the padding after a stop."""
    ends = set(eos) if isinstance(eos, list) else {eos}
    for n, token in enumerate(tokens):
        if token in ends:
            return n + 1
        if token == pad:
            return n
    return len(tokens)


def _stopped(tokens: list[int], text: str, eos: int | list[int], stops: tuple[str, ...]) -> bool:
    """Whether a row's new ``tokens`` (decoded: ``text``) stopped on its own: an end-of-text token or a
    stop string, not the token budget."""
    ends = set(eos) if isinstance(eos, list) else {eos}
    return any(token in ends for token in tokens) or any(stop in text for stop in stops)


def _shared_prefix(encoded: dict[str, Tensor]) -> int:
    """How many tokens every (left-padded) row opens with, leaving each row at least one more token."""
    lengths = encoded["attention_mask"].sum(-1)
    width, shortest = encoded["input_ids"].shape[1], int(lengths.min())
    if shortest < 2:
        return 0
    starts = width - lengths
    index = starts[:, None] + torch.arange(shortest - 1, device=starts.device)
    heads = encoded["input_ids"].gather(1, index)
    same = (heads == heads[:1]).all(0).long()
    return int(same.cumprod(0).sum())


def _after_prefix(encoded: dict[str, Tensor], prefix: int, pad: int) -> dict[str, Tensor]:
    """The batch with the shared prefix first and each row's rest left-padded after it."""
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    lengths = mask.sum(-1)
    rest = int(lengths.max()) - prefix
    out_ids = torch.full((ids.shape[0], prefix + rest), pad, dtype=ids.dtype, device=ids.device)
    out_mask = torch.zeros_like(out_ids, dtype=mask.dtype)
    for r, n in enumerate(lengths.tolist()):
        out_ids[r, :prefix] = ids[r, ids.shape[1] - n : ids.shape[1] - n + prefix]
        out_ids[r, prefix + rest - (n - prefix) :] = ids[r, ids.shape[1] - (n - prefix) :]
        out_mask[r, :prefix] = 1
        out_mask[r, prefix + rest - (n - prefix) :] = 1
    return {"input_ids": out_ids, "attention_mask": out_mask}


def _prefix_cache(model: Model, prefix: Tensor, row_ivs: list[list[AnyIntervention]]) -> Any:
    """The KV cache of ``prefix`` for every row: one forward per distinct steering configuration."""
    groups: dict[tuple[int, ...], int] = {}
    owner = [groups.setdefault(tuple(id(iv) for iv in ivs), len(groups)) for ivs in row_ivs]
    configs = list({tuple(id(iv) for iv in ivs): ivs for ivs in row_ivs}.values())
    with steer_rows(model, configs), direct_forward(model):
        out = model.hf_model(
            input_ids=prefix[None].expand(len(configs), -1),
            use_cache=True,
            **({"logits_to_keep": 1} if model.skips_logits else {}),
        )
    cache = out.past_key_values
    cache.reorder_cache(torch.tensor(owner, device=prefix.device))
    return cache


def _cut(text: str, stops: tuple[str, ...]) -> str:
    for stop in stops:
        text = text.split(stop)[0]
    return text.strip()
