"""Log-likelihood of a continuation given its context, and the perplexity of responses.

A continuation is scored as the model would have written it: context and continuation are tokenized
together and the continuation's tokens are those past the context's own tokens (when the context's tokens
are not a prefix of the joint tokenization, a merge across the boundary, the continuation is tokenized on
its own after the context's tokens). A space joins the two when neither side has whitespace at the
boundary, as after ``"Answer:"`` or a base model's ``"A:"``; chat templates end in a newline and get none.

Sequences are left-padded, sorted by length and run with position ids counted from each row's first real
token, so scores do not depend on the batch size. Each forward declares where every row's context ends
to the position tracker: under :func:`~workbench.steering.steer`, ``positions="prompt"`` steers the
context and ``"generated"`` the continuation, as in generation.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from contextlib import ExitStack

import torch
from jaxtyping import Float
from torch import Tensor

from workbench.batching import format_prompts
from workbench.errors import InvalidArgumentError, ShapeMismatchError
from workbench.fastpath import direct_forward
from workbench.models import Model
from workbench.steering import Intervention, steer_rows, tracking

__all__ = ["continuation_logprobs", "join", "perplexity"]


def join(context: str, continuation: str) -> str:
    """``context + continuation``, with a space between them when neither has whitespace at the boundary."""
    if context and continuation and not context[-1].isspace() and not continuation[0].isspace():
        return f"{context} {continuation}"
    return context + continuation


def _token_ids(model: Model, context: str, continuation: str, *, formatted: bool) -> tuple[list[int], int]:
    """Ids of the joined text and how many of them (at the end) belong to the continuation."""
    special = not (formatted and model.is_chat)
    head = model.tokenizer(context, add_special_tokens=special)["input_ids"]
    if not continuation:
        return list(head), 0
    whole = model.tokenizer(join(context, continuation), add_special_tokens=special)["input_ids"]
    if whole[: len(head)] != head:
        tail = join(context, continuation)[len(context) :]
        whole = [*head, *model.tokenizer(tail, add_special_tokens=False)["input_ids"]]
    return list(whole), len(whole) - len(head)


@torch.inference_mode()
def continuation_logprobs(
    model: Model,
    contexts: Sequence[str],
    continuations: Sequence[str],
    *,
    formatted: bool,
    batch_size: int = 16,
    interventions: Sequence[Intervention] = (),
) -> list[Float[Tensor, " tokens"]]:
    """Log-probability of each continuation token given its context and the tokens before it.

    ``contexts`` are the exact texts the model sees (``formatted`` when they carry the chat template);
    ``interventions`` apply to every row while scoring. An empty continuation gives an empty tensor.
    """
    if len(contexts) != len(continuations):
        raise ShapeMismatchError(f"got {len(contexts)} contexts but {len(continuations)} continuations")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise InvalidArgumentError(f"interventions must be Intervention objects, got {type(iv).__name__}")
    sequences = [
        _token_ids(model, c, t, formatted=formatted) for c, t in zip(contexts, continuations, strict=True)
    ]
    for i, (ids, n) in enumerate(sequences):
        if len(ids) > model.n_ctx:
            raise InvalidArgumentError(
                f"sequence {i} has {len(ids)} tokens, more than {model.name}'s context of {model.n_ctx}: shorten it"
            )
        if len(ids) == n:
            raise InvalidArgumentError(f"context {i} has no tokens: a continuation needs a context to follow")
    scored = [i for i, (_, n) in enumerate(sequences) if n > 0]
    results: list[Tensor] = [torch.zeros(0) for _ in sequences]
    order = sorted(scored, key=lambda i: -len(sequences[i][0]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        logprobs = _forward(model, [sequences[i] for i in batch], list(interventions))
        for i, row in zip(batch, logprobs, strict=True):
            results[i] = row
    return results


def _forward(
    model: Model, sequences: list[tuple[list[int], int]], interventions: list[Intervention]
) -> list[Tensor]:
    """One left-padded forward; the log-probs of each row's last ``n`` tokens."""
    width = max(len(ids) for ids, _ in sequences)
    pad = model.tokenizer.pad_token_id
    input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for r, (ids, _) in enumerate(sequences):
        input_ids[r, width - len(ids) :] = torch.tensor(ids)
        mask[r, width - len(ids) :] = 1
    input_ids, mask = input_ids.to(model.device), mask.to(model.device)
    lengths = torch.tensor([n for _, n in sequences], device=model.device)
    k = int(lengths.max())
    # Only the last k + 1 positions need logits; most Hugging Face models can skip the rest.
    supported = "logits_to_keep" in inspect.signature(model.hf_model.forward).parameters
    keep = {"logits_to_keep": k + 1} if supported else {}
    with ExitStack() as stack:
        tracker = stack.enter_context(tracking(model))
        stack.enter_context(tracker.declared(width - lengths))
        stack.enter_context(steer_rows(model, [interventions]))
        stack.enter_context(direct_forward(model))  # hooks first: the fast path plans on entry
        logits = model.hf_model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
            use_cache=False,
            **keep,
        ).logits
    logprobs = logits[:, -k - 1 : -1].float().log_softmax(-1)
    picked = logprobs.gather(-1, input_ids[:, -k:, None])[..., 0].cpu()
    return [picked[r, k - n :] for r, (_, n) in enumerate(sequences)]


def perplexity(
    model: Model, prompts: Sequence[str], responses: Sequence[str], *, chat: bool = True, batch_size: int = 16
) -> list[float]:
    """Perplexity of each response given its prompt: ``exp`` of the mean NLL of the response tokens.

    Prompts get the chat format when ``chat``. The model runs as it is: unsteered unless the call sits
    inside :func:`~workbench.steering.steer`. An empty response gives NaN.
    """
    if isinstance(responses, str):
        raise InvalidArgumentError("perplexity takes a list of responses; wrap a single text in [...]")
    texts = format_prompts(model, prompts, chat=chat)
    if len(texts) != len(responses):
        raise ShapeMismatchError(
            f"got {len(texts)} prompts but {len(responses)} responses: give one per prompt"
        )
    for i, response in enumerate(responses):
        if not isinstance(response, str):
            raise InvalidArgumentError(f"response {i} is not a string ({type(response).__name__})")
    logprobs = continuation_logprobs(model, texts, responses, formatted=chat, batch_size=batch_size)
    return [math.exp(-row.double().mean().item()) if row.numel() else math.nan for row in logprobs]
