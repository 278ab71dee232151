"""Bundled contrastive sets and the IFEval / multiple-choice loaders; bad and arbitrary data files."""

from __future__ import annotations

import dataclasses
import json
import sys
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.refusals import one_line, refuses
from tests.strategies import FUZZ, json_scalars, json_values, jsonl_lines, nonblank, write
from workbench import datasets
from workbench.errors import DataError, InvalidArgumentError
from workbench.evaluation import INSTRUCTION_IDS
from workbench.jsonl import read_jsonl

# IFEval's registry (google-research instruction_following_eval) and the kwargs each id takes.
IFEVAL_KWARGS = {
    "keywords:existence": {"keywords"},
    "keywords:frequency": {"keyword", "frequency", "relation"},
    "keywords:forbidden_words": {"forbidden_words"},
    "keywords:letter_frequency": {"letter", "let_frequency", "let_relation"},
    "language:response_language": {"language"},
    "length_constraints:number_sentences": {"num_sentences", "relation"},
    "length_constraints:number_paragraphs": {"num_paragraphs"},
    "length_constraints:number_words": {"num_words", "relation"},
    "length_constraints:nth_paragraph_first_word": {"num_paragraphs", "nth_paragraph", "first_word"},
    "detectable_content:number_placeholders": {"num_placeholders"},
    "detectable_content:postscript": {"postscript_marker"},
    "detectable_format:number_bullet_lists": {"num_bullets"},
    "detectable_format:constrained_response": set(),
    "detectable_format:number_highlighted_sections": {"num_highlights"},
    "detectable_format:multiple_sections": {"section_spliter", "num_sections"},
    "detectable_format:json_format": set(),
    "detectable_format:title": set(),
    "combination:two_responses": set(),
    "combination:repeat_prompt": {"prompt_to_repeat"},
    "startend:end_checker": {"end_phrase"},
    "change_case:capital_word_frequency": {"capital_frequency", "capital_relation"},
    "change_case:english_capital": set(),
    "change_case:english_lowercase": set(),
    "punctuation:no_comma": set(),
    "startend:quotation": set(),
}
IFEVAL_RELATIONS = ("less than", "at least")

INSTRUCTIONS = read_jsonl(datasets.DATA_DIR / "instructions.jsonl")
QUERIES = read_jsonl(datasets.DATA_DIR / "queries.jsonl")
ALL_SETS = [(name, None) for name in datasets.names() if name != datasets.ITALIAN] + [
    (datasets.ITALIAN, variant) for variant in datasets.ITALIAN_VARIANTS
]


def _ids(rows):
    return [f"{name}-{variant}" if variant else name for name, variant in rows]


# ---- bundled contrastive sets -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "variant"), ALL_SETS, ids=_ids(ALL_SETS))
def test_every_dataset_loads_for_every_split(name, variant):
    for split in datasets.splits:
        dataset = datasets.load(name, split, variant=variant)
        assert len(dataset) >= 20
        assert dataset.name == name and dataset.split == split
        assert {item.split for item in dataset.items} == {split}
        assert len({item.id for item in dataset.items}) == len(dataset)


@pytest.mark.parametrize(("name", "variant"), ALL_SETS, ids=_ids(ALL_SETS))
def test_splits_are_disjoint_and_cover_the_queries(name, variant):
    by_split = {
        s: {item.base_id for item in datasets.load(name, s, variant=variant).items} for s in datasets.splits
    }
    train, validation, test = by_split.values()
    assert not train & validation and not train & test and not validation & test
    expected = {q["id"] for q in QUERIES if name != datasets.ITALIAN or q["it"] is not None}
    assert train | validation | test == expected
    everything = datasets.load(name, "all", variant=variant)
    assert len(everything) == len(expected)
    assert [i for i in everything.items if i.split == "train"] == list(
        datasets.load(name, variant=variant).items
    )


def test_enough_queries_and_italian_translations():
    assert len({q["id"] for q in QUERIES}) == len(QUERIES) >= 300
    assert sum(q["it"] is not None for q in QUERIES) >= 200


@pytest.mark.parametrize("entry", INSTRUCTIONS, ids=[e["name"] for e in INSTRUCTIONS])
def test_each_instruction_has_five_phrasings_and_all_are_used(entry):
    phrasings = entry["phrasings"]
    assert len(phrasings) >= 5 and len(set(phrasings)) == len(phrasings)
    used = {item.instruction for item in datasets.load(entry["name"], "all").items}
    assert used == set(phrasings)


def test_italian_instruction_variant_uses_every_answer_italian_phrasing():
    (entry,) = [e for e in INSTRUCTIONS if e["name"] == "answer_italian"]
    items = datasets.load(datasets.ITALIAN, "all", variant="en_answer_it").items
    assert {item.instruction for item in items} == set(entry["phrasings"])


@pytest.mark.parametrize("entry", INSTRUCTIONS, ids=[e["name"] for e in INSTRUCTIONS])
def test_parameter_values_appear_in_every_phrasing(entry):
    kwargs = entry["kwargs"]
    values = [v for key, v in kwargs.items() if key not in ("relation", "language", "num_sentences")]
    if "num_sentences" in kwargs and kwargs["relation"] != "less than":
        values.append(kwargs["num_sentences"])
    flat = [str(v) for value in values for v in (value if isinstance(value, list) else [value])]
    for phrasing in entry["phrasings"]:
        for value in flat:
            assert value in phrasing, (value, phrasing)


@pytest.mark.parametrize("entry", INSTRUCTIONS, ids=[e["name"] for e in INSTRUCTIONS])
def test_instructions_use_ifeval_ids_and_kwargs(entry):
    assert entry["instruction_id"] in IFEVAL_KWARGS
    assert set(entry["kwargs"]) == IFEVAL_KWARGS[entry["instruction_id"]]
    relation = entry["kwargs"].get("relation")
    if relation is not None and relation not in IFEVAL_RELATIONS:
        assert relation == "exactly" and "extension" in entry["note"]


@pytest.mark.parametrize(("name", "variant"), ALL_SETS, ids=_ids(ALL_SETS))
def test_items_are_consistent(name, variant):
    dataset = datasets.load(name, "all", variant=variant)
    (entry,) = [
        e for e in INSTRUCTIONS if e["name"] == (name if name != datasets.ITALIAN else "answer_italian")
    ]
    for item, positive, negative in zip(dataset.items, dataset.positive, dataset.negative, strict=True):
        assert positive != negative and negative == item.query
        assert item.instruction_id_list == (entry["instruction_id"],)
        assert item.kwargs == (entry["kwargs"],)
        assert item.behaviour == name and item.group == entry["group"]
        if variant == "it":
            assert positive == item.query_it and item.language == "it" and item.instruction == ""
        else:
            assert positive == f"{item.query} {item.instruction}" and item.language == "en"


def test_phrasings_are_spread_evenly():
    for entry in INSTRUCTIONS:
        items = datasets.load(entry["name"], "train").items
        counts = [sum(item.instruction == p for item in items) for p in entry["phrasings"]]
        assert max(counts) - min(counts) <= 1


def test_names_by_group():
    assert set(datasets.names(group="language")) == {"answer_italian", datasets.ITALIAN}
    assert len(datasets.names(group="length")) == 9
    assert "json_format" in datasets.names(group="format")
    with pytest.raises(InvalidArgumentError, match="format"):
        datasets.names(group="nope")


def test_unknown_arguments_list_the_choices():
    with pytest.raises(InvalidArgumentError, match="json_format"):
        datasets.load("nope")
    with pytest.raises(InvalidArgumentError, match="validation"):
        datasets.load("json_format", "dev")
    with pytest.raises(InvalidArgumentError, match="en_answer_it"):
        datasets.load(datasets.ITALIAN, variant="fr")
    with pytest.raises(InvalidArgumentError, match="italian"):
        datasets.load("json_format", variant="it")


def test_hash_is_stable_and_changes_with_any_item():
    first, second = datasets.load("json_format"), datasets.load("json_format")
    assert first.hash == second.hash and len(first.hash) == 64
    items = list(first.items)
    items[3] = dataclasses.replace(items[3], prompt=items[3].prompt + " ")
    assert dataclasses.replace(first, items=tuple(items)).hash != first.hash
    assert dataclasses.replace(first, items=first.items[::-1]).hash != first.hash
    assert datasets.load("json_format", "test").hash != first.hash
    assert datasets.load("italian").hash != datasets.load("italian", variant="en_answer_it").hash


def test_to_frame_has_one_row_per_item():
    dataset = datasets.load("bullet_lists", "validation")
    frame = dataset.to_frame()
    assert len(frame) == len(dataset)
    assert list(frame["prompt"]) == dataset.positive
    assert json.loads(frame["kwargs"].iloc[0]) == [{"num_bullets": 3}]


# ---- outside data ------------------------------------------------------------------------------------


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_load_ifeval(tmp_path):
    rows = [
        {
            "key": 1000,
            "prompt": "Write a haiku. Do not use commas.",
            "instruction_id_list": ["punctuation:no_comma"],
            "kwargs": [{}],
        },
        {
            "key": 1001,
            "prompt": "Describe Rome in fewer than 40 words, with a title.",
            "instruction_id_list": ["length_constraints:number_words", "detectable_format:title"],
            "kwargs": [{"num_words": 40, "relation": "less than", "keywords": None}, None],
        },
    ]
    dataset = datasets.load_ifeval(_write(tmp_path / "ifeval.jsonl", rows))
    assert (dataset.name, dataset.split, len(dataset)) == ("ifeval", "test", 2)
    second = dataset.items[1]
    assert second.id == "ifeval/1001" and second.query == second.prompt == rows[1]["prompt"]
    assert second.kwargs == ({"num_words": 40, "relation": "less than"}, {})
    assert second.instruction_id_list == ("length_constraints:number_words", "detectable_format:title")


def test_load_ifeval_refuses_mismatched_kwargs(tmp_path):
    good = {"key": 1, "prompt": "Hi.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    bad = {"key": 2, "prompt": "Hi.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []}
    with pytest.raises(DataError, match="line 2: 'kwargs'"):
        datasets.load_ifeval(_write(tmp_path / "ifeval.jsonl", [good, bad]))


def test_multiple_choice_arc_and_plain_layouts(tmp_path):
    rows = [
        {
            "id": "Mercury_1",
            "question": "Which is a planet?",
            "choices": {"text": ["Moon", "Mars", "Sun"], "label": ["A", "B", "C"]},
            "answerKey": "B",
        },
        {
            "id": "Mercury_2",
            "question": {
                "stem": "Which is a gas?",
                "choices": [{"text": "Iron", "label": "1"}, {"text": "Air", "label": "2"}],
            },
            "answerKey": "2",
        },
        {"question": "2 + 2 = ?", "choices": ["3", "4", "5"], "answer": 1, "split": "validation"},
    ]
    items = datasets.load_multiple_choice(_write(tmp_path / "arc.jsonl", rows))
    assert [(i.id, i.answer, i.split) for i in items] == [
        ("Mercury_1", 1, "test"),
        ("Mercury_2", 1, "test"),
        ("arc/3", 1, "validation"),
    ]
    assert items[1].question == "Which is a gas?" and items[1].choices == ("Iron", "Air")
    # rows without a split count as the split asked for
    validation = datasets.load_multiple_choice(str(tmp_path / "arc.jsonl"), language="it", split="validation")
    assert [(i.split, i.language) for i in validation] == [("validation", "it")] * 3
    unsplit = datasets.load_multiple_choice(tmp_path / "arc.jsonl", split="train")
    assert [(i.id, i.split) for i in unsplit] == [("Mercury_1", "train"), ("Mercury_2", "train")]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"question": "Q?", "choices": ["a", "b"], "answer": 2}, "'answer' must be a choice index"),
        ({"question": "Q?", "choices": ["a", "b"], "answer": True}, "'answer' must be a choice index"),
        ({"question": "Q?", "choices": ["a", "b"]}, "'answer' must be a choice index"),
        ({"question": "Q?", "choices": ["only"], "answer": 0}, "at least 2 nonempty choices"),
        ({"question": "Q?", "choices": ["a", ""], "answer": 0}, "at least 2 nonempty choices"),
        ({"question": " ", "choices": ["a", "b"], "answer": 0}, "question is missing or empty"),
        (
            {"question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "E"},
            "answerKey 'E'",
        ),
    ],
)
def test_bad_multiple_choice_rows_are_refused(tmp_path, row, message):
    good = {"question": "Fine?", "choices": ["yes", "no"], "answer": 0}
    path = _write(tmp_path / "mc.jsonl", [good, good, row])
    with pytest.raises(DataError, match=rf"mc\.jsonl, line 3: .*{message}"):
        datasets.load_multiple_choice(path)


def test_bundled_multiple_choice_in_both_languages():
    english, italian = (datasets.load_multiple_choice("bundled", language=lang) for lang in ("en", "it"))
    assert len(english) == len(italian) >= 100
    assert [(e.id, e.answer, e.split) for e in english] == [(i.id, i.answer, i.split) for i in italian]
    assert {e.split for e in english} <= set(datasets.splits)
    assert all(e.question != i.question for e, i in zip(english, italian, strict=True))
    test = datasets.load_multiple_choice("bundled", split="test")
    assert test and all(item.split == "test" for item in test)
    with pytest.raises(InvalidArgumentError):
        datasets.load_multiple_choice("bundled", language="fr")


def _fake_hub(monkeypatch, load_dataset):
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_hub_dataset_rows_are_converted(monkeypatch):
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return [
            {
                "id": "x1",
                "question": "Pick B.",
                "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                "answerKey": "B",
            }
        ]

    _fake_hub(monkeypatch, load_dataset)
    (item,) = datasets.load_multiple_choice("allenai/ai2_arc:ARC-Challenge")
    assert calls == [("allenai/ai2_arc", "ARC-Challenge", "test")]
    assert (item.id, item.answer, item.split) == ("x1", 1, "test")


def test_unreachable_hub_says_what_to_do(monkeypatch):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'allenai/ai2_arc' on the Hub")

    _fake_hub(monkeypatch, load_dataset)
    with pytest.raises(DataError, match="download it first or pass the path of a local JSONL file"):
        datasets.load_multiple_choice("allenai/ai2_arc:ARC-Easy", split="validation")


def test_head_keeps_the_first_items_and_the_set_identity():
    from workbench.datasets import load

    data = load("italian", "validation", variant="it")
    head = data.head(3)
    assert head.items == data.items[:3]
    assert (head.name, head.split, head.variant) == (data.name, data.split, "it")
    assert head.hash != data.hash and data.head(None) == data


@pytest.mark.parametrize("source", ["data/typo.jsonl", "./arc", "runs/mc/arc", "arc.json", "~/arc.parquet"])
def test_a_path_is_never_sent_to_the_hub(monkeypatch, tmp_path, source):
    monkeypatch.chdir(tmp_path)
    _fake_hub(monkeypatch, lambda *args, **kwargs: pytest.fail(f"{source} was sent to the hub"))
    with pytest.raises(DataError, match="no such file"):
        datasets.load_multiple_choice(source)


def test_an_offline_hub_id_is_a_one_line_error_naming_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="'nobody-here/no-such-dataset'") as caught:
        datasets.load_multiple_choice("nobody-here/no-such-dataset")
    assert "\n" not in str(caught.value)


# ---- bad inputs ---------------------------------------------------------------------------------------


def test_missing_data_file(tmp_path):
    refuses(DataError, lambda: datasets.load_ifeval(tmp_path / "nope.jsonl"), "no such file")


def test_ifeval_row_without_prompt(tmp_path):
    path = tmp_path / "ifeval.jsonl"
    path.write_text(json.dumps({"key": 1, "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}))
    refuses(DataError, lambda: datasets.load_ifeval(path), "line 1: 'prompt'")


def test_empty_multiple_choice_file(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    refuses(DataError, lambda: datasets.load_multiple_choice(path), "no multiple-choice rows")


def test_multiple_choice_labels_that_are_not_a_list(tmp_path):
    path = tmp_path / "mc.jsonl"
    row = {"question": "Which?", "choices": {"text": ["a", "b"], "label": 5}, "answerKey": "A"}
    path.write_text(json.dumps(row), encoding="utf-8")
    refuses(DataError, lambda: datasets.load_multiple_choice(path), "one label per choice")


def test_unknown_dataset_name():
    refuses(InvalidArgumentError, lambda: datasets.load("json_formatt"), "unknown dataset 'json_formatt'")


def test_unknown_split():
    refuses(InvalidArgumentError, lambda: datasets.load("json_format", "dev"), "unknown split 'dev'")


def test_unknown_variant():
    refuses(InvalidArgumentError, lambda: datasets.load("italian", variant="fr"), "unknown variant 'fr'")


def test_variant_on_a_dataset_without_variants():
    refuses(InvalidArgumentError, lambda: datasets.load("json_format", variant="it"), "variant applies only")


# ---- fuzz ---------------------------------------------------------------------------------------------


def mutated(plausible: st.SearchStrategy, keys: list[str]) -> st.SearchStrategy:
    """Plausible rows, and now and then one with a key dropped or a value replaced by arbitrary JSON."""
    broken = st.tuples(
        plausible,
        st.sets(st.sampled_from(keys), max_size=1),
        st.dictionaries(st.sampled_from([*keys, "stray"]), json_values, max_size=1),
    ).map(lambda t: {**{k: v for k, v in t[0].items() if k not in t[1]}, **t[2]})
    return st.one_of(plausible, plausible, broken)


IFEVAL_ROW = mutated(
    st.integers(1, 3).flatmap(
        lambda n: st.fixed_dictionaries(
            {
                "key": st.one_of(st.integers(0, 10**6), st.text(max_size=3)),
                "prompt": nonblank,
                "instruction_id_list": st.lists(st.sampled_from(INSTRUCTION_IDS), min_size=n, max_size=n),
                "kwargs": st.lists(
                    st.one_of(st.none(), st.dictionaries(st.text(max_size=6), json_scalars, max_size=3)),
                    min_size=n,
                    max_size=n,
                ),
            }
        )
    ),
    ["key", "prompt", "instruction_id_list", "kwargs"],
)


@FUZZ
@given(content=jsonl_lines(IFEVAL_ROW))
def test_load_ifeval_on_arbitrary_objects(content):
    path = write(content)
    try:
        loaded = datasets.load_ifeval(path)
    except (DataError, InvalidArgumentError) as e:
        one_line(e)
    else:
        assert loaded.items and all(item.prompt.strip() for item in loaded.items)
        assert all(len(item.kwargs) == len(item.instruction_id_list) for item in loaded.items)
    finally:
        path.unlink()


LABELS = ["A", "B", "C", "D", "E", "1", "2", "3"]


def mc_row(n: int) -> st.SearchStrategy:
    """A plausible multiple-choice row with ``n`` choices, in the plain or one of ARC's layouts."""
    texts = st.lists(nonblank, min_size=n, max_size=n)
    labels = st.lists(st.sampled_from(LABELS), min_size=n, max_size=n, unique=True)
    choices = st.one_of(
        texts,
        st.fixed_dictionaries({"text": texts, "label": labels}),
        st.fixed_dictionaries({"text": texts, "label": st.one_of(st.integers(), st.floats(), json_values)}),
        st.tuples(texts, labels).map(lambda t: [{"text": a, "label": b} for a, b in zip(*t, strict=True)]),
    )
    return st.fixed_dictionaries(
        {
            "question": st.one_of(nonblank, st.fixed_dictionaries({"stem": nonblank})),
            "choices": choices,
            "answer": st.one_of(st.integers(0, n - 1), st.integers(-1, 6)),
        },
        optional={
            "id": st.one_of(st.text(max_size=4), st.integers()),
            "split": st.sampled_from(["train", "test", "validation", "dev"]),
            "answerKey": st.sampled_from([*LABELS, " A ", ""]),
        },
    )


MC_ROW = mutated(
    st.integers(2, 5).flatmap(mc_row), ["id", "split", "question", "choices", "answer", "answerKey"]
)


@settings(FUZZ, max_examples=200)
@given(content=jsonl_lines(MC_ROW), split=st.sampled_from([None, "test", "train"]))
def test_load_multiple_choice_on_arbitrary_objects(content, split):
    path = write(content)
    try:
        items = datasets.load_multiple_choice(path, split=split)
    except (DataError, InvalidArgumentError) as e:
        one_line(e)
    else:
        for item in items:
            assert len(item.choices) >= 2 and 0 <= item.answer < len(item.choices)
            assert item.question.strip() and all(c.strip() for c in item.choices)
    finally:
        path.unlink()
