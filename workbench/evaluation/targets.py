"""What "on target" means for a steered answer: IFEval's strict checks, strict JSON, a JSON start, real Italian.

Each target is a pure function of the text (and, for IFEval, the item's instructions); :func:`on_target`
picks one by name (:data:`TARGETS`). Strict JSON compliance is IFEval's ``detectable_format:json_format``
(:func:`json_format_strict`); :func:`starts_json` is a weaker, separately named measure (a JSON object or
array cut off by the token budget still counts) and is never reported as "JSON compliance".
"""

from __future__ import annotations

import json
import math
import re

from workbench.datasets import Item
from workbench.errors import InvalidArgumentError
from workbench.evaluation.checks import check, check_all
from workbench.evaluation.language import detect_language, sentence_share

__all__ = [
    "MIN_ITALIAN_SHARE",
    "TARGETS",
    "follows",
    "is_real_italian",
    "json_format_strict",
    "on_target",
    "starts_json",
]

#: Real Italian: at least this share of the identifiable sentences is Italian (and so is the whole text).
MIN_ITALIAN_SHARE = 0.8
#: The targets :func:`on_target` knows: the item's IFEval checks, strict JSON, a JSON start, real Italian.
TARGETS = ("ifeval", "json_format_strict", "starts_json", "italian")

_FENCES = ("```json", "```Json", "```JSON", "```")
_PARTIAL = re.compile(r"[\w.+\-]+$")  # a number or literal cut off by the token budget


def follows(item: Item, response: str) -> bool:
    """IFEval's strict check of every instruction of ``item``."""
    return all(check_all(list(item.instruction_id_list), list(item.kwargs), response))


def json_format_strict(text: str) -> bool:
    """IFEval's strict ``detectable_format:json_format``: the whole text (fences aside) parses as JSON."""
    return check("detectable_format:json_format", text)


def _open_brackets(body: str) -> tuple[str, bool] | None:
    """The closing brackets of the containers still open at the end of ``body``, and whether it ends
    inside a string; None when brackets mismatch or text follows the closed top-level value."""
    stack: list[str] = []
    in_string = escaped = False
    for i, ch in enumerate(body):
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            matched = bool(stack) and stack.pop() == ch
            if not matched or (not stack and body[i + 1 :].strip()):
                return None
    return "".join(reversed(stack)), in_string


def starts_json(text: str) -> bool:
    """The answer starts a JSON object or array (after an optional ``` fence), truncation allowed: it
    parses, or it was cut off by the token budget and parses once its last partial token is completed and
    its brackets closed.

    Prose before or after the JSON fails. Not JSON compliance (that is :func:`json_format_strict`): a loop
    of nested keys cut off mid-way passes here.
    """
    body = text.strip()
    for fence in _FENCES:
        body = body.removeprefix(fence)
    body = body.removesuffix("```").strip()
    if not body.startswith(("{", "[")):
        return False
    state = _open_brackets(body)
    if state is None:
        return False
    closers, in_string = state
    cut = _PARTIAL.sub("", body).rstrip()  # drop a cut-off value, but only where a value may stand
    heads = [body + '"'] if in_string else [body, *([cut] if cut.endswith((":", ",", "[")) else [])]
    for head in (h.rstrip() for h in heads):
        for candidate in (head, head.removesuffix(","), f"{head} null", f"{head}: null"):
            try:
                json.loads(candidate + closers)
            except ValueError:
                continue
            return True
    return False


def is_real_italian(text: str) -> bool:
    """Italian by language ID of the whole text and of at least :data:`MIN_ITALIAN_SHARE` of its sentences."""
    if detect_language(text) != "it":
        return False
    share = sentence_share(text, "it")
    return not math.isnan(share) and share >= MIN_ITALIAN_SHARE


def on_target(target: str, item: Item, response: str) -> bool:
    """Whether ``response`` hits ``target`` (one of :data:`TARGETS`); ``item`` carries the IFEval checks."""
    if target == "ifeval":
        return follows(item, response)
    if target == "json_format_strict":
        return json_format_strict(response)
    if target == "starts_json":
        return starts_json(response)
    if target == "italian":
        return is_real_italian(response)
    raise InvalidArgumentError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")
