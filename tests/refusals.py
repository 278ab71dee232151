"""Refusal assertions shared by the tests of every module: a typed WorkbenchError with a one-line message."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from workbench.errors import WorkbenchError


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


def one_line(error: WorkbenchError) -> None:
    assert str(error) and "\n" not in str(error)
