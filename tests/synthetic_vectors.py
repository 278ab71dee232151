"""Synthetic activations, directions and vectors and a GGUF writer, shared by the tests."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch

from workbench.activations import Activations
from workbench.vectors import SteeringVector

SETTINGS = {
    "model_name": "tiny-model",
    "weights_hash": "abc123",
    "hook": "resid_post",
    "position": "last_prompt",
}


def planted(
    n: int = 64, d: int = 32, layers: tuple[int, ...] = (1, 2, 3), seed: int = 0, varying: bool = True
) -> tuple[Activations, Activations, torch.Tensor]:
    """Paired sets: pos_i = base_i + s_i·u + noise, neg_i = base_i + noise, with ``s_i`` around 3.

    ``varying`` draws ``s_i`` from [1.5, 4.5] (so the paired differences vary along ``u``); otherwise s_i = 3.
    """
    torch.manual_seed(seed)
    u = torch.randn(d)
    u /= u.norm()
    base = torch.randn(n, len(layers), d)
    strength = 3 * (0.5 + torch.rand(n, 1, 1)) if varying else torch.full((n, 1, 1), 3.0)
    pos = base + strength * u + 0.1 * torch.randn(n, len(layers), d)
    neg = base + 0.1 * torch.randn(n, len(layers), d)
    return (
        Activations(pos, layers, "pos-hash", dict(SETTINGS)),
        Activations(neg, layers, "neg-hash", dict(SETTINGS)),
        u,
    )


def directions(n_layers: int = 4, d_model: int = 64, seed: int = 0) -> torch.Tensor:
    """Seeded random directions, by default one per layer of the tiny model (4 layers, d_model 64)."""
    return torch.randn(n_layers, d_model, generator=torch.Generator().manual_seed(seed))


def other_vector(layers=(1, 2, 3), d=32, seed=1) -> SteeringVector:
    torch.manual_seed(seed)
    return SteeringVector.from_directions(torch.randn(len(layers), d), layers, model_name="tiny-model")


def planted_vector() -> SteeringVector:
    """The diff-in-means vector of :func:`planted`'s default sets."""
    pos, neg, _ = planted()
    return SteeringVector.from_activations(pos, neg, dataset="synthetic", dataset_hash="ds-hash")


def write_gguf(path: Path, tensors: dict[str, np.ndarray], arch: str = "controlvector") -> Path:
    """A GGUF file as repeng's export_gguf writes a control vector (no workbench metadata)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string(f"{arch}.model_hint", "llama")
    writer.add_uint32(f"{arch}.layer_count", len(tensors))
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
