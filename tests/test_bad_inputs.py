"""Bad inputs across the public API and the command line.

Each is refused with a typed exception from ``workbench.errors`` whose message is one line saying what was
wrong (and, where there is something to do, what to do): never a raw TypeError/KeyError, a torch traceback
or a silently wrong result. No case is left as an xfail.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from tests.conftest import build_tiny_model
from workbench.errors import (
    WorkbenchError,
)
from workbench.vectors import SteeringVector


def refuses(kind: type[WorkbenchError], fn: Callable[[], object], match: str) -> str:
    """``fn()`` raises exactly a ``kind`` (a WorkbenchError) whose one-line message contains ``match``."""
    assert issubclass(kind, WorkbenchError)
    with pytest.raises(WorkbenchError) as info:
        fn()
    error = info.value
    assert isinstance(error, kind), f"{type(error).__name__} is not a {kind.__name__}: {error}"
    message = str(error)
    assert message and "\n" not in message and "\r" not in message, repr(message)
    assert "Traceback" not in message
    assert match.lower() in message.lower(), f"{match!r} not in {message!r}"
    return message


def directions(n_layers: int = 4, d_model: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n_layers, d_model, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny():
    """This module's own tiny model (it shadows the session one): generating or steering leaves a position
    tracker on the model, and tests of the shared session model that run later must not see it."""
    return build_tiny_model()


@pytest.fixture(scope="module")
def vec() -> SteeringVector:
    """A vector that fits the tiny model (4 layers, d_model 64)."""
    return SteeringVector.from_directions(directions(), model_name="tiny-llama", n_layers=4)


# ---- layers, shapes, directions, coefficients ---------------------------------------------------------


# ---- prompts ------------------------------------------------------------------------------------------


# ---- data files ---------------------------------------------------------------------------------------


# ---- instruction checks -------------------------------------------------------------------------------


# ---- output locations ---------------------------------------------------------------------------------


# ---- knobs --------------------------------------------------------------------------------------------


# ---- command line -------------------------------------------------------------------------------------
