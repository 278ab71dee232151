"""Hypothesis strategies shared by the fuzz tests: structured text, JSON values and JSON Lines files."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


FRAGMENTS = [
    "\n", "\n\n", "\r\n", "\t", "  ", "* ", "- ", "*", "**", "***", "******", "# ", "## Title\n", "<<Title>>",
    "P.S. ", "P.P.S ", "Section 1\n", "SECTION 2\n", "{", "}", '{"a": 1}', "[", "]", "```json\n", "```",
    '"', "'", ",", ".", "?", "!", "...", "1. ", "a) ", "My answer is yes.", "Any other questions?",
    "THE END", "perché ", "così. ", "Hello world. ", "the the the ", "*highlight*", "[name]", "é", "，",
]  # fmt: skip


structured_text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=12)), max_size=30).map(
    "".join
)


nonblank = st.one_of(
    st.from_regex(r"[A-Za-zàé0-9?][A-Za-zàé0-9? ]{0,10}", fullmatch=True),
    st.text(min_size=1, max_size=15).filter(str.strip),
)


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12)
)


json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def jsonl_lines(rows: st.SearchStrategy) -> st.SearchStrategy:
    """Rows, and in some files one junk line: blank, a JSON value that is not an object, or broken JSON."""
    junk = st.one_of(json_values.map(json.dumps), st.sampled_from(["", "  ", "{", "nul", '{"a": 1,}']))
    return st.tuples(
        st.lists(rows.map(json.dumps), max_size=4),
        st.one_of(st.none(), st.none(), junk),
        st.integers(0, 4),
    ).map(lambda t: "\n".join(t[0] if t[1] is None else [*t[0][: t[2]], t[1], *t[0][t[2] :]]))


def write(data: bytes | str) -> Path:
    with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as handle:
        handle.write(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return Path(handle.name)
