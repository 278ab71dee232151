"""Batched generation with the KV cache, optional steering, and per-row steering configurations."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteriaList, StopStringCriteria

from workbench.batching import format_prompts, length_batches
from workbench.errors import InvalidArgumentError
from workbench.fastpath import direct_forward
from workbench.models import Model
from workbench.steering import Intervention, steer_rows, tracking

Interventions = Sequence[Intervention] | Sequence[Sequence[Intervention]] | None

_STOPS: weakref.WeakKeyDictionary[Any, StopStringCriteria] = weakref.WeakKeyDictionary()


def _stopping(model: Model) -> dict[str, Any]:
    """The model's stop strings as a criterion built once per model (building one scans the vocabulary:
    0.7 s per call for Gemma's 262k tokens)."""
    if not model.stop_strings:
        return {}
    criterion = _STOPS.get(model.hf_model)
    if criterion is None:
        criterion = _STOPS[model.hf_model] = StopStringCriteria(model.tokenizer, list(model.stop_strings))
    return {"stopping_criteria": StoppingCriteriaList([criterion])}


def per_row(interventions: Interventions, n: int) -> list[list[Intervention]] | None:
    """Normalise ``interventions`` to one list per prompt (None when the same list applies to all rows)."""
    if not interventions:
        return None
    if all(isinstance(iv, Intervention) for iv in interventions):
        return None
    rows = [list(row) for row in interventions]  # type: ignore[arg-type]
    if len(rows) != n:
        raise InvalidArgumentError(
            f"per-row interventions have {len(rows)} rows for {n} prompts: give one per prompt"
        )
    for row in rows:
        for iv in row:
            if not isinstance(iv, Intervention):
                raise InvalidArgumentError(
                    f"interventions must be Intervention objects, got {type(iv).__name__}"
                )
    return rows


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
    interventions: Interventions = None,
    use_cache: bool = True,
    min_new_tokens: int = 0,
    progress: bool = False,
) -> list[str]:
    """Generate a response to each prompt; returns only the response text, in the prompts' order.

    ``interventions`` is a list applied to every prompt, or a list of lists, one per prompt (each row
    of a batch carries its own configuration). ``use_cache=False`` re-runs the whole sequence at every
    step (the reference loop, for checks). ``min_new_tokens`` keeps end-of-turn from stopping a row
    earlier (equal lengths, for timing). Greedy output does not depend on ``batch_size``.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InvalidArgumentError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not isinstance(min_new_tokens, int) or not 0 <= min_new_tokens <= max_new_tokens:
        raise InvalidArgumentError(
            f"min_new_tokens must be an integer from 0 to max_new_tokens ({max_new_tokens}), got {min_new_tokens!r}"
        )
    texts = format_prompts(model, prompts, chat=chat)
    rows = per_row(interventions, len(texts))
    shared = [] if rows is not None or not interventions else list(interventions)
    tokenizer = model.tokenizer
    eos = model.hf_model.generation_config.eos_token_id or tokenizer.eos_token_id
    stop = _stopping(model)
    sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
    responses: list[str] = [""] * len(texts)
    batches = list(length_batches(model, texts, batch_size, formatted=chat))
    for batch_no, batch in enumerate(tqdm(batches, desc="generate", disable=not progress)):
        encoded = model.encode([texts[i] for i in batch], formatted=chat)
        prompt_len = encoded["input_ids"].shape[1]
        with ExitStack() as stack:
            tracker = stack.enter_context(tracking(model))
            stack.enter_context(tracker.declared(torch.tensor([prompt_len])))
            stack.enter_context(steer_rows(model, [shared]))
            if rows is not None:
                stack.enter_context(steer_rows(model, [rows[i] for i in batch]))
            stack.enter_context(direct_forward(model))
            if do_sample:
                torch.manual_seed(seed + batch_no)
            output = model.hf_model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                use_cache=use_cache,
                min_new_tokens=min_new_tokens or None,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos,
                **sampling,
                **stop,
            )
        texts_out = tokenizer.batch_decode(output[:, prompt_len:], skip_special_tokens=True)
        for i, text in zip(batch, texts_out, strict=True):
            responses[i] = _cut(text, model.stop_strings)
    return responses


def _cut(text: str, stops: tuple[str, ...]) -> str:
    for stop in stops:
        text = text.split(stop)[0]
    return text.strip()
