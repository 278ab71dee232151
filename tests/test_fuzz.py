"""Fuzzing with hypothesis: arbitrary input never crashes the checks, text metrics or data loaders; they
answer or refuse with a one-line WorkbenchError (the artifact loaders are fuzzed in test_formats.py).

Plain ``st.text()`` over checks and metrics lives in test_checks.py, test_language.py and
test_text_metrics.py; this file adds structured text (markdown, JSON, sections, mixed languages), drawn
kwargs, garbage kwargs, and the loaders of data files.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.errors import (
    InvalidArgumentError,
    WorkbenchError,
)
from workbench.evaluation import (
    LANGUAGES,
    code_switching_rate,
    detect_language,
    is_degenerate,
    longest_repeated_run,
    repeated_ngram_rate,
    sentence_share,
    share_in_language,
)

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def one_line(error: WorkbenchError) -> None:
    assert str(error) and "\n" not in str(error)


# ---- strategies ---------------------------------------------------------------------------------------

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

#: For every instruction id, a strategy of valid kwargs (None where it takes none).

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


# ---- checks -------------------------------------------------------------------------------------------


# ---- language and fluency -----------------------------------------------------------------------------

WORDS = {
    "it": ["il", "gatto", "dorme", "sempre", "sul", "divano", "perché", "la", "casa", "è", "molto", "calda"],
    "en": [
        "the",
        "cat",
        "always",
        "sleeps",
        "on",
        "the",
        "sofa",
        "because",
        "the",
        "house",
        "is",
        "very",
        "warm",
    ],
    "es": [
        "el",
        "gato",
        "siempre",
        "duerme",
        "en",
        "el",
        "sofá",
        "porque",
        "la",
        "casa",
        "es",
        "muy",
        "cálida",
    ],
    "de": [
        "die",
        "Katze",
        "schläft",
        "immer",
        "auf",
        "dem",
        "Sofa",
        "weil",
        "das",
        "Haus",
        "sehr",
        "warm",
        "ist",
    ],
}
sentence = st.sampled_from(sorted(WORDS)).flatmap(
    lambda lang: st.lists(st.sampled_from(WORDS[lang]), min_size=1, max_size=9).map(" ".join)
)
mixed_text = st.lists(
    st.tuples(
        st.one_of(sentence, st.text(max_size=10)), st.sampled_from([". ", "! ", "\n", "\n- ", "? ", ""])
    ),
    max_size=6,
).map(lambda parts: "".join(s + sep for s, sep in parts))


@settings(max_examples=60, deadline=None)
@given(text=mixed_text, lang=st.sampled_from(LANGUAGES))
def test_language_metrics_on_mixed_language_text(text, lang):
    assert detect_language(text) in (*LANGUAGES, "und")
    share = sentence_share(text, lang)
    rate = code_switching_rate(text)
    assert math.isnan(share) or 0.0 <= share <= 1.0
    assert math.isnan(rate) or 0.0 <= rate <= 1.0
    assert 0.0 <= share_in_language([text, text.upper(), ""], lang) <= 1.0


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=30), lang=st.text(max_size=4).filter(lambda s: s not in LANGUAGES))
def test_language_metrics_refuse_unknown_languages(text, lang):
    for fn in (lambda: sentence_share(text, lang), lambda: share_in_language([text], lang)):
        with pytest.raises(InvalidArgumentError) as info:
            fn()
        one_line(info.value)


loop = st.tuples(
    st.lists(st.sampled_from(["the", "cat", "Il", "gatto", "a", "B"]), min_size=1, max_size=4),
    st.integers(1, 12),
    st.sampled_from([" ", ", ", "\n", " 1. "]),
)


@FUZZ
@given(parts=loop, noise=structured_text, n=st.integers(1, 8), ppl=st.floats(allow_nan=False))
def test_fluency_metrics_on_loops_and_noise(parts, noise, n, ppl):
    cycle, times, sep = parts
    text = sep.join(cycle * times)
    assert longest_repeated_run(text) >= (times if len(cycle) <= 4 else 1)
    for sample in (text, noise + text, text + noise):
        assert 0.0 <= repeated_ngram_rate(sample, n) <= 1.0
        assert longest_repeated_run(sample) >= 1
        if ppl > 0:
            assert isinstance(is_degenerate(sample, perplexity=ppl), bool)
        else:
            with pytest.raises(InvalidArgumentError):
                is_degenerate(sample, perplexity=ppl)


# ---- data loaders -------------------------------------------------------------------------------------
