"""What the command line's commands share: the ``--model``, ``--ray`` and ``--workers`` options, and the
one-line refusals."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Annotated, Any

import typer

from workbench.errors import WorkbenchError

__all__ = [
    "ModelSpec",
    "RayAddress",
    "RayAllowOther",
    "RayWorkers",
    "one_line_errors",
    "parse_numbers",
    "parse_position",
]


def _default_model() -> str:
    from workbench.models import DEFAULT_SPEC

    return DEFAULT_SPEC


#: The ``--model`` option of every command; its default, ``workbench.models.DEFAULT_SPEC``, is read when a
#: command runs, so that ``workbench --help`` does not import torch.
ModelSpec = Annotated[
    str,
    typer.Option(
        "--model",
        default_factory=_default_model,
        help="Model spec: a bundled name (`workbench models`), a .gguf file or a local HF folder.",
        show_default="the bundled SmolLM2",
    ),
]


#: ``--ray`` and ``--workers`` of the commands that run grids (sweep, study, report).
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray", metavar="local|ADDRESS", help="Run the grids on Ray: local, auto or ray://HOST:PORT."
    ),
]
RayWorkers = Annotated[
    int | None, typer.Option("--workers", help="Ray workers (default: one per GPU, else 2).")
]
RayAllowOther = Annotated[
    bool,
    typer.Option(
        "--allow-other-fingerprint",
        help="Accept Ray workers whose model differs from this process's (dtype, device): their rows are "
        "filed under their own fingerprint.",
    ),
]


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn workbench errors into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except WorkbenchError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def parse_numbers(text: str, kind: type, what: str) -> list[Any]:
    """``"6,10,14"`` → ``[6, 10, 14]``; a one-line error for anything else."""
    from workbench.errors import InvalidArgumentError

    try:
        values = [kind(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise InvalidArgumentError(
            f"{what} must be comma-separated numbers like 1,2,4, got {text!r}"
        ) from None
    if not values:
        raise InvalidArgumentError(f"{what} is empty: give comma-separated numbers like 1,2,4")
    return values


def parse_position(text: str) -> str | int:
    """``last_prompt``, ``prompt`` or an int token index; a one-line error for anything else."""
    from workbench.errors import InvalidArgumentError

    where: str | int = int(text) if re.fullmatch(r"-?[0-9]+", text) else text
    if where not in ("last_prompt", "prompt") and not isinstance(where, int):
        raise InvalidArgumentError(
            f"unknown position {text!r}: use 'last_prompt', 'prompt' (their mean) or an int token index"
        )
    return where
