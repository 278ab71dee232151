"""The README's sixty-second example runs as written and shows the effect the README says it prints (slow)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[2] / "README.md"


def _sixty_seconds() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Sixty seconds", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_lines_stay_few():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 150


def test_sixty_second_example_steers_to_one_sentence_without_degenerating():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_sixty_seconds(), "README.md", "exec"), {})
    rates = dict(re.findall(r"(unsteered|steered)\s+one sentence (\d\.\d\d)", out.getvalue()))
    degenerate = [float(x) for x in re.findall(r"degenerate (\d\.\d\d)", out.getvalue())]
    assert set(rates) == {"unsteered", "steered"}, out.getvalue()
    assert float(rates["steered"]) >= float(rates["unsteered"]) + 0.5, out.getvalue()
    assert max(degenerate) <= 0.25, out.getvalue()
