"""Prompt validation, chat formatting and length-sorted batching shared by collection and generation."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from workbench.errors import InvalidArgumentError
from workbench.models import Model


def format_prompts(model: Model, prompts: Sequence[str], *, chat: bool) -> list[str]:
    """Validate prompts and apply the model's chat format when ``chat``."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Iterable):
        raise InvalidArgumentError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    prompts = list(prompts)
    if len(prompts) == 0:
        raise InvalidArgumentError("no prompts given: pass a non-empty list of strings")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidArgumentError(
                f"prompt {i} is empty or not a string ({prompt!r}): every prompt needs text"
            )
    return [model.format_chat(p) for p in prompts] if chat else list(prompts)


def length_batches(
    model: Model, texts: list[str], batch_size: int, *, formatted: bool
) -> Iterator[list[int]]:
    """Indices of ``texts`` in batches of similar token length (less padding), longest first."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
    add_special = not (formatted and model.is_chat)
    lengths = [len(ids) for ids in model.tokenizer(texts, add_special_tokens=add_special)["input_ids"]]
    too_long = [i for i, n in enumerate(lengths) if n >= model.n_ctx]
    if too_long:
        i = too_long[0]
        raise InvalidArgumentError(
            f"prompt {i} has {lengths[i]} tokens, more than {model.name}'s context of {model.n_ctx}: shorten it"
        )
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
