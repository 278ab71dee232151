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
scale, ...), on a wrapper module itself, or the bridge's weights were processed (folded layer norms
change what the residual stream holds), the block runs through the bridge unchanged.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.models import Model

_INPUT_NAMES = ("hidden_states", "input", "input_ids", "query_input", "x", "inputs_embeds")


@dataclass
class _Structure:
    """Where the bridge's wrappers sit in the Hugging Face module tree (fixed after boot)."""

    swaps: list[tuple[nn.Module, str, nn.Module, nn.Module]]  # parent, key, wrapper, original
    ends: dict[int, tuple[nn.Module, str]]  # id(hook point) -> (original module, "in" | "out")
    points: list[nn.Module]  # every hook point


_STRUCTURES: weakref.WeakKeyDictionary[nn.Module, _Structure] = weakref.WeakKeyDictionary()
_ACTIVE: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _structure(model: Model) -> _Structure:
    cached = _STRUCTURES.get(model.bridge)
    if cached is not None:
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
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
    )


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


def direct_plan(model: Model) -> list[tuple[nn.Module, str, nn.Module]] | None:
    """The (original module, "in"/"out", hook point) triples to fire, or None if the bridge must run."""
    bridge = model.bridge
    if getattr(bridge, "_weights_processed", False) or getattr(bridge, "compatibility_mode", False):
        return None
    structure = _structure(model)
    plan = []
    for point in structure.points:
        if not _has_hooks(point):
            continue
        end = structure.ends.get(id(point))
        if end is None:
            return None
        plan.append((end[0], end[1], point))
    # Blocks wire their own bookkeeping hooks onto wrappers (split-qkv residual capture, hook_mlp_in);
    # they only act for features whose hook points would already have sent us back to the bridge.
    internal = {
        handle.id
        for _, _, wrapper, _ in structure.swaps
        for handle in getattr(wrapper, "_capture_hook_handles", ())
    }
    for _, _, wrapper, _ in structure.swaps:
        for hooks in (
            wrapper._forward_hooks,
            wrapper._forward_pre_hooks,
            wrapper._backward_hooks,
            wrapper._backward_pre_hooks,
        ):
            if any(key not in internal for key in hooks):
                return None
    return plan


@contextmanager
def direct_forward(model: Model) -> Iterator[bool]:
    """Within the block, forwards of ``model.hf_model`` skip the bridge's wrappers (yields whether they do).

    Hooks must be registered before entering: the plan of which hook points to fire is made on entry.
    """
    if model.bridge in _ACTIVE:
        yield True
        return
    plan = direct_plan(model)
    if plan is None:
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
