"""Run the Hugging Face modules directly, firing only the TransformerLens hook points that carry hooks.

The ``TransformerBridge`` replaces every submodule of the Hugging Face model with a wrapper that fires
``hook_in``/``hook_out`` around it; attention is re-implemented step by step (eager softmax) so its
inner hook points exist. Per decoding step that is hundreds of Python wrapper calls, and the eager
attention ignores the SDPA kernel. The workbench's own forwards (:func:`workbench.generation.generate`,
:func:`workbench.activations.collect`) hook only residual-stream points, which are a component's input
or output. Inside :func:`direct_forward` the original modules are put back in place of their wrappers
and each hooked ``hook_in``/``hook_out`` is fired from a plain torch hook on the original module, so
every hook registered through the bridge (``model.bridge.hooks``, ``steer``, user hooks) still runs,
with the same tensors, and hook points nobody hooked cost nothing.

When a hook sits on a point that is not a component's input or output (attention pattern, norm
scale, ...), on a wrapper module itself, the bridge's weights were processed (folded layer norms
change what the residual stream holds), or the architecture is not one of :data:`ARCHITECTURES` (those
whose parity with the bridge is tested), the block runs through the bridge unchanged. That is never
silent: it warns once per model and reason, and with ``strict=True`` or ``WORKBENCH_STRICT_FASTPATH=1``
it raises :class:`FastPathError` instead. :func:`bridge_only` turns the fast path off (the reference).
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.models import Model

#: Hugging Face ``model_type`` values whose fast path is tested against the bridge (tests/test_parity.py).
ARCHITECTURES = (
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo2",
    "granite",
    "gpt2",
    "gpt_neox",
)
STRICT_ENV = "WORKBENCH_STRICT_FASTPATH"
_INPUT_NAMES = ("hidden_states", "input", "input_ids", "query_input", "x", "inputs_embeds")


@dataclass
class _Structure:
    """Where the bridge's wrappers sit in the Hugging Face module tree (fixed after boot)."""

    swaps: list[tuple[nn.Module, str, nn.Module, nn.Module]]  # parent, key, wrapper, original
    ends: dict[int, tuple[nn.Module, str]]  # id(hook point) -> (original module, "in" | "out")
    points: list[nn.Module]  # every hook point


_STRUCTURES: weakref.WeakKeyDictionary[nn.Module, _Structure] = weakref.WeakKeyDictionary()
_ACTIVE: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_BRIDGE_ONLY: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_WARNED: weakref.WeakKeyDictionary[nn.Module, set[str]] = weakref.WeakKeyDictionary()
_ALIASES: set[int] = set()  # ids of the KV-cache alias hooks :func:`_bridge_cache` puts on attention wrappers


class FastPathError(WorkbenchError):
    """A forward would leave the fast path while it is strict."""


def _structure(model: Model) -> _Structure:
    cached = _STRUCTURES.get(model.bridge)
    # A wrapper's inner module may be replaced after boot (peft's LoRA layers): then map the tree again.
    if cached is not None and all(w._modules.get("_original_component") is o for _, _, w, o in cached.swaps):
        return cached
    from transformer_lens.hook_points import HookPoint
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    swaps: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []
    ends: dict[int, tuple[nn.Module, str]] = {}

    def visit(module: nn.Module) -> None:
        for key, child in list(module._modules.items()):
            if child is None:
                continue
            original = child._modules.get("_original_component")
            if isinstance(child, GeneralizedComponent) and original is not None:
                swaps.append((module, key, child, original))
                ends[id(child._modules["hook_in"])] = (original, "in")
                ends[id(child._modules["hook_out"])] = (original, "out")
                visit(original)
            elif not isinstance(child, HookPoint):
                visit(child)

    visit(model.hf_model)
    seen: dict[int, nn.Module] = {}
    for root in (model.hf_model, model.bridge):
        for module in root.modules():
            if isinstance(module, HookPoint):
                seen.setdefault(id(module), module)
    built = _Structure(swaps=swaps, ends=ends, points=list(seen.values()))
    _STRUCTURES[model.bridge] = built
    return built


def _has_hooks(module: nn.Module) -> bool:
    return any(_hook_dicts(module))


def _input_hook(point: nn.Module) -> Any:
    def pre(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args and isinstance(args[0], torch.Tensor):
            return (point(args[0]), *args[1:]), kwargs
        for name in _INPUT_NAMES:
            if isinstance(kwargs.get(name), torch.Tensor):
                kwargs[name] = point(kwargs[name])
                break
        return args, kwargs

    return pre


def _output_hook(point: nn.Module) -> Any:
    def post(_module: nn.Module, _args: tuple, output: Any) -> Any:
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            return (point(output[0]), *output[1:])
        if isinstance(output, torch.Tensor):
            return point(output)
        return output

    return post


def _internal_handles(structure: _Structure) -> set[int]:
    """Ids of the hooks blocks wire onto their own wrappers (split-qkv residual capture, hook_mlp_in); they
    only act for features whose hook points would already send a forward back to the bridge."""
    return _ALIASES | {
        handle.id
        for _, _, wrapper, _ in structure.swaps
        for handle in getattr(wrapper, "_capture_hook_handles", ())
    }


def _hook_dicts(module: nn.Module) -> tuple[dict, ...]:
    return (
        module._forward_hooks,
        module._forward_pre_hooks,
        module._backward_hooks,
        module._backward_pre_hooks,
    )


def hooked(model: Model) -> list[str]:
    """Names of the hook points and modules that carry hooks now (steering, user hooks), empty when the model
    runs as loaded. The bridge's bookkeeping and transformers' own output recorders (inert unless
    ``output_hidden_states``) do not count."""
    structure = _structure(model)
    internal = _internal_handles(structure)

    def foreign(module: nn.Module) -> bool:
        return any(
            key not in internal and not getattr(fn, "__module__", "").startswith("transformers.")
            for hooks in _hook_dicts(module)
            for key, fn in hooks.items()
        )

    names: dict[int, str] = {}
    for root, prefix in ((model.bridge, ""), (model.hf_model, "hf_model.")):
        for name, module in root.named_modules():
            if id(module) not in names and foreign(module):
                names[id(module)] = getattr(module, "name", None) or prefix + name or type(module).__name__
    return list(names.values())


def direct_plan(model: Model) -> list[tuple[nn.Module, str, nn.Module]] | str:
    """The (original module, "in"/"out", hook point) triples to fire, or why the bridge must run."""
    bridge = model.bridge
    if getattr(bridge, "_weights_processed", False) or getattr(bridge, "compatibility_mode", False):
        return "the bridge's weights were processed (folded layer norms change the residual stream)"
    kind = getattr(model.hf_model.config, "model_type", None)
    if kind not in ARCHITECTURES:
        return f"architecture {kind!r} has no tested fast path (tested: {', '.join(ARCHITECTURES)})"
    structure = _structure(model)
    if not structure.swaps:
        return "no TransformerLens component wrappers were found in the Hugging Face modules"
    plan = []
    for point in structure.points:
        if not _has_hooks(point):
            continue
        end = structure.ends.get(id(point))
        if end is None:
            return f"a hook on {getattr(point, 'name', point)} is not at a component's input or output"
        plan.append((end[0], end[1], point))
    internal = _internal_handles(structure)
    for _, _, wrapper, _ in structure.swaps:
        if any(k not in internal for hooks in _hook_dicts(wrapper) for k in hooks):
            path = next(n for n, m in model.hf_model.named_modules() if m is wrapper)
            return f"a torch hook sits on the bridge's wrapper module {path!r} itself"
    return plan


def _strict(strict: bool | None) -> bool:
    if strict is not None:
        return strict
    return os.environ.get(STRICT_ENV, "0").strip().lower() not in ("", "0", "false", "no")


def _leave(model: Model, reason: str, strict: bool | None) -> None:
    """Raise (strict) or warn once per model and reason that a forward runs through the bridge."""
    if _strict(strict):
        raise FastPathError(
            f"{model.name} would run through the TransformerLens bridge, not the fast path: {reason} "
            f"(strict: unset {STRICT_ENV} or pass strict=False to allow it)"
        )
    seen = _WARNED.setdefault(model.bridge, set())
    if reason not in seen:
        seen.add(reason)
        warnings.warn(
            f"{model.name} runs through the TransformerLens bridge (slower): {reason}", stacklevel=4
        )


def _cache_alias(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
        kwargs["past_key_values"] = kwargs["cache"]
    return args, kwargs


@contextmanager
def _bridge_cache(model: Model) -> Iterator[None]:
    """While the bridge runs, hand its attention the KV cache under the name it reads.

    TransformerLens 4.3's attention takes the cache from ``past_key_values``; transformers 5.24 passes it as
    ``cache``, so without this every cached decoding step through the bridge attends to its own token alone.
    """
    handles = [
        wrapper.register_forward_pre_hook(_cache_alias, with_kwargs=True)
        for _, _, wrapper, _ in _structure(model).swaps
        if hasattr(wrapper, "_update_kv_cache")
    ]
    _ALIASES.update(handle.id for handle in handles)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
            _ALIASES.discard(handle.id)


@contextmanager
def bridge_only(model: Model) -> Iterator[Model]:
    """Within the block, every forward of ``model`` runs through the bridge's own modules (the reference)."""
    if model.bridge in _ACTIVE:
        raise FastPathError("bridge_only() cannot be entered inside a direct_forward() block")
    _BRIDGE_ONLY.add(model.bridge)
    try:
        yield model
    finally:
        _BRIDGE_ONLY.discard(model.bridge)


@contextmanager
def direct_forward(model: Model, *, strict: bool | None = None) -> Iterator[bool]:
    """Within the block, forwards of ``model.hf_model`` skip the bridge's wrappers (yields whether they do).

    Hooks must be registered before entering: the plan of which hook points to fire is made on entry.
    When the bridge must run, this warns once per model and reason, or raises :class:`FastPathError`
    when ``strict`` (default: the ``WORKBENCH_STRICT_FASTPATH`` environment variable).
    """
    if model.bridge in _ACTIVE:
        yield True
        return
    plan = "bridge_only" if model.bridge in _BRIDGE_ONLY else direct_plan(model)
    if isinstance(plan, str):
        if plan != "bridge_only":
            _leave(model, plan, strict)
        with _bridge_cache(model):
            yield False
        return
    structure = _structure(model)
    handles = []
    _ACTIVE.add(model.bridge)
    for parent, key, _wrapper, original in structure.swaps:
        parent._modules[key] = original
    try:
        for module, end, point in plan:
            if end == "in":
                handles.append(module.register_forward_pre_hook(_input_hook(point), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(_output_hook(point)))
        yield True
    finally:
        for handle in handles:
            handle.remove()
        for parent, key, wrapper, _original in structure.swaps:
            parent._modules[key] = wrapper
        _ACTIVE.discard(model.bridge)
