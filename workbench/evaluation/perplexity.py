"""Log-likelihood of a continuation given its context, and the perplexity of responses.

A continuation is scored as the model would have written it: context and continuation are tokenized
together and the continuation's tokens are those past the context's own tokens (when the context's tokens
are not a prefix of the joint tokenization, a merge across the boundary, the continuation is tokenized on
its own after the context's tokens). A space joins the two when neither side has whitespace at the
boundary, as after ``"Answer:"`` or a base model's ``"A:"``; chat templates end in a newline and get none.

Contexts are left-padded, sorted by length and run with position ids counted from each row's first real
token, so scores do not depend on the batch size. Each distinct context runs once: its KV cache is repeated
for every continuation that follows it (a question's options), and the continuations run on it together.
The position tracker is told that every context ends where the continuations start: under
:func:`~workbench.steering.steer`, ``positions="prompt"`` steers the context and ``"generated"`` the
continuation, as in generation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import ExitStack

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.batching import format_prompts
from workbench.errors import InvalidArgumentError, ShapeMismatchError
from workbench.fastpath import direct_forward
from workbench.interventions import AnyIntervention, check_intervention
from workbench.models import Model
from workbench.steering import steer_rows, tracking

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
    interventions: Sequence[AnyIntervention] = (),
) -> list[Float[Tensor, " tokens"]]:
    """Log-probability of each continuation token given its context and the tokens before it.

    ``contexts`` are the exact texts the model sees (``formatted`` when they carry the chat template);
    ``interventions`` apply to every row while scoring. ``batch_size`` counts distinct contexts per
    forward. An empty continuation gives an empty tensor.
    """
    if len(contexts) != len(continuations):
        raise ShapeMismatchError(f"got {len(contexts)} contexts but {len(continuations)} continuations")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
    for iv in interventions:
        check_intervention(iv)
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
    # Continuations of the same context (a question's options) share one forward of that context.
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ids, n) in enumerate(sequences):
        if n > 0:
            groups.setdefault(tuple(ids[: len(ids) - n]), []).append(i)
    results: list[Tensor] = [torch.zeros(0) for _ in sequences]
    heads = sorted(groups, key=len, reverse=True)
    for start in range(0, len(heads), batch_size):
        batch = heads[start : start + batch_size]
        tails = [[sequences[i][0][len(head) :] for i in groups[head]] for head in batch]
        logprobs = _forward(model, batch, tails, list(interventions))
        for head, row in zip(batch, logprobs, strict=True):
            for i, scores in zip(groups[head], row, strict=True):
                results[i] = scores
    return results


def _forward(
    model: Model,
    heads: list[tuple[int, ...]],
    tails: list[list[list[int]]],
    interventions: list[AnyIntervention],
) -> list[list[Tensor]]:
    """Log-probs of every tail token: one left-padded forward of the heads (contexts), then one forward of
    all tails (right-padded) on the heads' KV cache, each head's cache repeated once per tail."""
    device, pad = model.device, model.tokenizer.pad_token_id
    width = max(len(h) for h in heads)
    head_ids = torch.full((len(heads), width), pad, dtype=torch.long)
    head_mask = torch.zeros((len(heads), width), dtype=torch.long)
    for r, ids in enumerate(heads):
        head_ids[r, width - len(ids) :] = torch.tensor(ids)
        head_mask[r, width - len(ids) :] = 1
    owner = torch.tensor([r for r, row in enumerate(tails) for _ in row])
    flat = [tail for row in tails for tail in row]
    longest = max(len(t) for t in flat)
    tail_ids = torch.full((len(flat), longest), pad, dtype=torch.long)
    tail_mask = torch.zeros((len(flat), longest), dtype=torch.long)
    for r, ids in enumerate(flat):
        tail_ids[r, : len(ids)] = torch.tensor(ids)
        tail_mask[r, : len(ids)] = 1
    head_ids, head_mask, owner = head_ids.to(device), head_mask.to(device), owner.to(device)
    tail_ids, tail_mask = tail_ids.to(device), tail_mask.to(device)
    with ExitStack() as stack:
        tracker = stack.enter_context(tracking(model))
        stack.enter_context(tracker.declared(torch.tensor([width], device=device)))  # tails are "generated"
        stack.enter_context(steer_rows(model, [interventions]))
        stack.enter_context(direct_forward(model))  # hooks first: the fast path plans on entry
        first = model.hf_model(
            input_ids=head_ids,
            attention_mask=head_mask,
            position_ids=(head_mask.cumsum(-1) - 1).clamp_min(0),
            use_cache=True,
            **({"logits_to_keep": 1} if model.skips_logits else {}),  # only the last position is scored
        )
        logprobs = _token_logprobs(first.logits[:, -1:][owner], tail_ids[:, :1])
        if longest > 1:  # the last tail token predicts nothing that is scored
            cache = first.past_key_values
            cache.reorder_cache(owner)
            rest = model.hf_model(
                input_ids=tail_ids[:, :-1],
                attention_mask=torch.cat([head_mask[owner], tail_mask[:, :-1]], dim=1),
                position_ids=head_mask.sum(-1)[owner, None] + torch.arange(longest - 1, device=device),
                use_cache=True,
                **{model.cache_argument: cache},
            ).logits
            logprobs = torch.cat([logprobs, _token_logprobs(rest, tail_ids[:, 1:])], dim=1)
    picked = [logprobs[r, : len(t)] for r, t in enumerate(flat)]
    out, k = [], 0
    for row in tails:
        out.append(picked[k : k + len(row)])
        k += len(row)
    return out


def _token_logprobs(
    logits: Float[Tensor, "rows seq vocab"], ids: Int[Tensor, "rows seq"]
) -> Float[Tensor, "rows seq"]:
    """``log_softmax(logits)`` at ``ids``, on the CPU, a few rows at a time: a whole batch's log-softmax over
    Gemma's 262k-token vocabulary would be another copy of gigabytes of logits."""
    out = torch.empty(ids.shape, dtype=torch.float32)
    step = max(1, 2**26 // max(1, logits.shape[1] * logits.shape[2]))  # about 256 MB of float32 at a time
    for start in range(0, len(ids), step):
        chunk = logits[start : start + step].float()
        picked = chunk.gather(-1, ids[start : start + step, :, None])[..., 0] - chunk.logsumexp(-1)
        out[start : start + step] = picked.cpu()
    return out


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
