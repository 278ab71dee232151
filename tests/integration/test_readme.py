"""The README's sixty-second example runs as written and shows the effect the README says it prints (slow)."""

from __future__ import annotations

import contextlib
import io
import math
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


def test_sixty_second_example_steers_to_one_sentence_without_degenerating_and_says_who_rated():
    from workbench.fetch import is_fetched

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_sixty_seconds(), "README.md", "exec"), {})
    printed = out.getvalue()
    number = r"(\d\.\d\d|nan)"
    lines = re.findall(
        rf"(unsteered|steered)\s+one sentence {number}\s+degenerate {number}\s+concept {number} relevance {number} "
        rf"fluency {number} score {number}\s+\(rated by (\S+)\)",
        printed,
    )
    rows = {name: [float(x) for x in values[:-1]] + [values[-1]] for name, *values in lines}
    assert set(rows) == {"unsteered", "steered"}, printed
    judge = "qwen2.5-coder-1.5b-instruct" if is_fetched("qwen2.5-coder-1.5b-instruct") else "rules"
    for on_target, degenerate, concept, relevance, fluency, score, rated_by in rows.values():
        assert rated_by == judge, printed
        assert concept == pytest.approx(2 * on_target, abs=0.01), printed  # the concept is the same rule
        assert degenerate <= 0.25, printed
        if concept == 0:  # AxBench's score is 0 where any rating is
            assert score == 0, printed
        if judge == "rules":  # nothing but the degeneration rule rates fluency: unknown here
            assert math.isnan(relevance) and math.isnan(fluency), printed
        else:
            assert all(0 <= x <= 2 for x in (relevance, fluency, score)), printed
    assert rows["steered"][0] >= rows["unsteered"][0] + 0.5, printed
