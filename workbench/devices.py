"""Where a model's weights live: one device and a dtype, or a device map over several devices."""

from __future__ import annotations

from typing import Any

import torch

from workbench.errors import InvalidArgumentError

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """A floating-point torch dtype from a dtype, its name (``"bfloat16"``) or None (float32)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None) if dtype.strip() else None
    else:
        resolved = dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise InvalidArgumentError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16")
    return resolved


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A usable torch device (None: cuda when available, else cpu)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidArgumentError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"device {device!r} was asked for but CUDA is not available: use 'cpu'")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise InvalidArgumentError(
            f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidArgumentError(f"device {device!r} was asked for but MPS is not available: use 'cpu'")
    return resolved


def placement_kwargs(device: str | torch.device | None, device_map: Any, max_memory: Any) -> dict[str, Any]:
    """The ``device_map``/``max_memory`` keywords for ``from_pretrained`` (empty: one device)."""
    if device_map is None:
        if max_memory is not None:
            raise InvalidArgumentError("max_memory needs a device_map: pass device_map='auto' with it")
        return {}
    if device is not None:
        raise InvalidArgumentError(
            "pass either device or device_map, not both: device_map places every module"
        )
    if not (isinstance(device_map, dict) and device_map) and device_map not in DEVICE_MAPS:
        raise InvalidArgumentError(
            f"device_map must be one of {', '.join(DEVICE_MAPS)} or a dict of module name to device, "
            f"got {device_map!r}"
        )
    if max_memory is not None and not isinstance(max_memory, dict):
        raise InvalidArgumentError(f"max_memory must be a dict of device to size, got {max_memory!r}")
    return {"device_map": device_map, **({"max_memory": max_memory} if max_memory else {})}
