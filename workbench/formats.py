"""Artifact files: checksummed safetensors and GGUF control vectors, over plain tensors and JSON metadata.

Nothing here knows what a steering vector is; :mod:`workbench.vectors` and :mod:`workbench.activations`
say which tensors and which metadata they store.

- **safetensors** (:func:`save_safetensors` / :func:`load_safetensors`): named float32 tensors plus string
  metadata ``workbench_artifact`` (the artifact type), ``format_version``, one canonical-JSON entry per
  payload key and ``checksum``, the SHA-256 of the tensors' float32 bytes followed by the canonical JSON of
  the payload. Loading verifies type, presence, dtype, rank and checksum; never a pickle.
- **GGUF control vectors** (:func:`write_control_vector` / :func:`read_control_vector`): the layout that
  llama.cpp's ``--control-vector`` and repeng's ``ControlVector.export_gguf``/``import_gguf`` use, with an
  optional checksummed ``workbench.*`` payload that llama.cpp ignores.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from workbench.errors import ArtifactError, InvalidArgumentError
from workbench.files import atomic_write

__all__ = [
    "FORMAT_VERSION",
    "canonical_json",
    "checksum",
    "control_vector_layers",
    "load_safetensors",
    "read_control_vector",
    "save_safetensors",
    "write_control_vector",
]

FORMAT_VERSION = "1"


def canonical_json(obj: Any) -> str:
    """Sorted keys, no spaces, ASCII, no NaN: the same object always gives the same text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def checksum(tensors: Sequence[Tensor], payload: Mapping[str, Any]) -> str:
    """SHA-256 of each tensor's little-endian float32 bytes, in order, then the payload's canonical JSON."""
    h = hashlib.sha256()
    for tensor in tensors:
        h.update(tensor.detach().cpu().contiguous().numpy().astype("<f4", copy=False).tobytes())
    h.update(canonical_json(payload).encode("ascii"))
    return h.hexdigest()


# ---- safetensors ------------------------------------------------------------------------------------------


def save_safetensors(
    path: str | os.PathLike[str],
    kind: str,
    tensors: Mapping[str, Float[Tensor, ...]],
    payload: Mapping[str, Any],
    what: str,
) -> Path:
    """Write float32 ``tensors`` and the JSON ``payload`` (with checksum) to ``path`` atomically.

    ``kind`` is stored as ``workbench_artifact``; ``what`` names the artifact in errors. Returns the path.
    """
    from safetensors.torch import save_file

    metadata = {
        "workbench_artifact": kind,
        "format_version": FORMAT_VERSION,
        **{key: canonical_json(value) for key, value in payload.items()},
        "checksum": checksum(list(tensors.values()), payload),
    }
    plain = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(plain, str(tmp), metadata=metadata), what)


def load_safetensors(
    path: str | os.PathLike[str],
    kind: str,
    shapes: Mapping[str, str],
    keys: Sequence[str],
    what: str,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read what :func:`save_safetensors` wrote: ``(tensors, payload)``, verified.

    ``shapes`` maps each expected tensor to its shape in words (``"[layer, d_model]"``; the rank is the
    number of axes named); ``keys`` are the payload entries. Refuses (ArtifactError) a missing or unreadable
    file, another ``kind``, a missing tensor or entry, a tensor of the wrong dtype or rank, metadata that is
    not JSON and a checksum mismatch (the file was modified after it was saved).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file; check the path")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as e:
        raise ArtifactError(
            f"{path} is not a readable safetensors file ({e}); write {what} with .save()"
        ) from None
    a = "" if what.endswith("s") else "a "  # "a steering vector", "activations"
    found = metadata.get("workbench_artifact")
    if found is None:
        raise ArtifactError(f"{path} has no workbench metadata, so it is not {a}{what} saved by .save()")
    if found != kind:
        raise ArtifactError(f"{path} is a {found!r} artifact, not {a}{what}; load it with its own loader")
    gone = [k for k in (*keys, "checksum") if k not in metadata]
    gone += [f"tensor {name!r}" for name in shapes if name not in tensors]
    if gone:
        raise ArtifactError(f"{path} holds damaged {what}: it lacks {', '.join(gone)}; save it again")
    for name, shape in shapes.items():
        tensor = tensors[name]
        if tensor.dtype != torch.float32 or tensor.ndim != shape.count(",") + 1:
            raise ArtifactError(
                f"{path}: {name!r} is {tensor.dtype} {tuple(tensor.shape)}, expected float32 {shape}; "
                "the file is damaged"
            )
    try:
        payload = {key: json.loads(metadata[key]) for key in keys}
        expected = checksum([tensors[name] for name in shapes], payload)
    except (TypeError, ValueError):
        raise ArtifactError(
            f"{path}: its metadata is not valid JSON, so it was modified or damaged"
        ) from None
    if expected != metadata["checksum"]:
        raise ArtifactError(
            f"{path} was modified after it was saved (checksum mismatch); re-create or restore it"
        )
    return {name: tensors[name] for name in shapes}, payload


# ---- GGUF control vectors ---------------------------------------------------------------------------------


def control_vector_layers(available: Sequence[int], chosen: int | Iterable[int] | None) -> list[int]:
    """The blocks to write to a control vector, ascending: ``chosen``, or with None all of ``available``.

    llama.cpp cannot steer block 0 (see :func:`write_control_vector`): with ``chosen=None`` block 0 is
    left out with a warning; asking for it is an error, as are an empty choice, repeated blocks and blocks
    not in ``available``.
    """
    if chosen is None:
        export = [b for b in available if b != 0]
        if len(export) < len(available):
            warnings.warn(
                "block 0 is not written to the GGUF file: llama.cpp cannot steer block 0 and refuses "
                "direction.0; pass layers=... to choose layers explicitly",
                UserWarning,
                stacklevel=3,
            )
        if not export:
            raise InvalidArgumentError("this vector only has block 0, which llama.cpp cannot steer")
        return sorted(export)
    export = [chosen] if isinstance(chosen, numbers.Integral) else list(chosen)
    missing = [b for b in export if b not in available]
    if missing:
        shown = ", ".join(map(str, available))
        raise InvalidArgumentError(f"this vector has no layer {missing[0]}; it has layers ({shown})")
    if 0 in export:
        raise InvalidArgumentError(
            "llama.cpp cannot steer block 0 and refuses a file with direction.0; leave block 0 out"
        )
    if not export:
        raise InvalidArgumentError("to_gguf() needs at least one layer")
    if len(set(export)) != len(export):
        raise InvalidArgumentError(f"to_gguf() got repeated layers {export}")
    return sorted(export)


def write_control_vector(
    path: str | os.PathLike[str],
    rows: Mapping[int, Float[Tensor, " d_model"]],
    *,
    model_hint: str,
    kind: str | None = None,
    payload: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``rows`` (block index → the tensor llama.cpp adds there) as a GGUF control vector, atomically.

    Layout (as repeng's ``ControlVector.export_gguf`` and llama.cpp's ``cvector-generator`` write it):
    ``general.architecture = "controlvector"``, ``controlvector.model_hint``, ``controlvector.layer_count``
    (number of tensors, as repeng writes it) and one 1-D float32 tensor ``direction.{N}`` per layer, in
    ascending order. With ``kind``, the string keys ``workbench.artifact``, ``workbench.format_version``,
    ``workbench.{key}`` (canonical JSON of each ``payload`` entry) and ``workbench.checksum`` are added.

    **Layer numbering: tensor ``direction.N`` holds block ``N``** (the 0-based block index, the output of
    ``blocks.N``, TransformerLens ``blocks.N.hook_resid_post``, HF ``hidden_states[N + 1]``). Checked against:

    - llama.cpp ``common/common.cpp`` ``common_control_vector_load_one``: parses ``N`` from
      ``direction.N``, refuses ``N == 0`` ("invalid (zero) direction tensor layer index") and stores the
      tensor at ``data + n_embd * (layer_idx - 1)`` ("layer 1 at [0]"), scaled by the user's strength.
    - llama.cpp ``src/llama-adapter.cpp`` ``llama_adapter_cvec::apply``: copies row ``il - 1`` of that
      buffer into ``tensors[il]`` for ``il = 1 .. n_layer - 1`` ("there's never a tensor for layer 0");
      ``apply_to`` adds ``tensors[il]`` to ``cur``.
    - every model graph in llama.cpp ends layer ``il`` (0-based) with ``cur = build_cvec(cur, il);
      cb(cur, "l_out", il)``: the vector is added to the *output* of block ``il``, after the FFN residual.
    - repeng: ``extract.py`` ``batched_get_hiddens`` reads ``hidden_states[layer + 1]`` (the output of
      ``model.layers[layer]``), ``control.py`` ``ControlModule.forward`` adds the control to the output of
      ``model.layers[layer]``, and ``export_gguf`` writes ``direction.{layer}``: the same ``N = block``
      mapping (its default layers ``range(-1, -num_hidden_layers, -1)`` never include block 0).

    So block 0 cannot be steered from llama.cpp, and its loader refuses a file holding ``direction.0``:
    this writer refuses block 0 too (InvalidArgumentError). (llama.cpp's own ``cvector-generator`` names the
    vector read at ``l_out`` of block ``il`` as ``direction.{il+1}``, one block later than it was read; its
    files load here with llama.cpp's meaning.)
    """
    import gguf

    if not rows:
        raise InvalidArgumentError("a control vector needs at least one layer")
    if 0 in rows:
        raise InvalidArgumentError(
            "llama.cpp cannot steer block 0 and refuses a file with direction.0; leave block 0 out"
        )
    layers = sorted(rows)
    tensors = [rows[b].detach().cpu().to(torch.float32) for b in layers]

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), "controlvector")
        writer.add_string("controlvector.model_hint", str(model_hint))
        writer.add_uint32("controlvector.layer_count", len(layers))
        if kind is not None:
            writer.add_string("workbench.artifact", kind)
            writer.add_string("workbench.format_version", FORMAT_VERSION)
            for key, value in (payload or {}).items():
                writer.add_string(f"workbench.{key}", canonical_json(value))
            writer.add_string("workbench.checksum", checksum([torch.stack(tensors)], payload or {}))
        for b, t in zip(layers, tensors, strict=True):
            writer.add_tensor(f"direction.{b}", t.numpy().astype(np.float32, copy=False))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return atomic_write(path, write, "GGUF control vector")


def _direction_tensors(path: Path, reader: Any) -> dict[int, Tensor]:
    import gguf

    found: dict[int, Tensor] = {}
    for t in reader.tensors:
        if not t.name.startswith("direction."):
            continue
        suffix = t.name.removeprefix("direction.")
        if not suffix.isdigit():
            raise ArtifactError(f"{path}: tensor {t.name!r} has no layer number; the file is malformed")
        if t.tensor_type != gguf.GGMLQuantizationType.F32 or len(t.shape) != 1:
            raise ArtifactError(
                f"{path}: tensor {t.name!r} is not a 1-D float32 vector; the file is malformed"
            )
        found[int(suffix)] = torch.from_numpy(np.array(t.data, dtype=np.float32, copy=True).reshape(-1))
    if not found:
        raise ArtifactError(f"{path} has no direction.N tensors, so it holds no control vector")
    sizes = {v.shape[0] for v in found.values()}
    if len(sizes) != 1:
        raise ArtifactError(
            f"{path}: direction tensors have different sizes {sorted(sizes)}; the file is malformed"
        )
    return dict(sorted(found.items()))


def read_control_vector(
    path: str | os.PathLike[str], kind: str, keys: Sequence[str]
) -> tuple[dict[int, Float[Tensor, " d_model"]], str | None, dict[str, Any] | None]:
    """Read a GGUF control vector (ours, repeng's or llama.cpp's): ``(rows, model_hint, payload)``.

    ``rows`` maps block ``N`` to tensor ``direction.N`` (see :func:`write_control_vector`), ascending.
    ``payload`` holds the ``workbench.{key}`` entries, checksum verified, when the file's
    ``workbench.artifact`` is ``kind``; else None (a foreign file). Refuses (ArtifactError) a missing or
    non-GGUF file, another architecture, a file without ``direction.N`` tensors, malformed direction tensors,
    damaged fields and a checksum mismatch.
    """
    import gguf

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file; check the path")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:
        raise ArtifactError(f"{path} is not a readable GGUF file ({e})") from None

    def text(key: str) -> str | None:
        f = reader.get_field(key)
        if f is None:
            return None
        try:
            value = f.contents()
        except (UnicodeDecodeError, ValueError, TypeError, IndexError):
            raise ArtifactError(f"{path}: its {key!r} field is damaged; re-export the file") from None
        return value if isinstance(value, str) else None

    arch = text("general.architecture")
    if arch != "controlvector":
        raise ArtifactError(f"{path} is a GGUF file of architecture {arch!r}, not a control vector")
    rows = _direction_tensors(path, reader)
    if text("workbench.artifact") != kind:
        return rows, text("controlvector.model_hint"), None
    try:
        payload = {key: json.loads(text(f"workbench.{key}") or "null") for key in keys}
        expected = checksum([torch.stack(list(rows.values()))], payload)
    except (TypeError, ValueError):
        raise ArtifactError(
            f"{path}: its workbench metadata is not valid JSON; the file is damaged"
        ) from None
    if expected != text("workbench.checksum"):
        raise ArtifactError(
            f"{path} was modified after it was saved (checksum mismatch); re-export it with to_gguf()"
        )
    return rows, text("controlvector.model_hint"), payload
