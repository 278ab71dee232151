"""Contrastive prompt sets for steering, and loaders for outside evaluation data.

A contrastive set pairs each base query with a *positive* prompt that carries the behaviour and a
*negative* prompt that does not: ``load("json_format")`` pairs ``"How do I boil an egg? Format your entire
answer as JSON."`` with ``"How do I boil an egg?"`` (Stolfo et al., 2025). The ``italian`` set pairs the fully
Italian query (``variant="it"``, Scalena et al., 2024) or the English query plus "Answer in Italian."
(``variant="en_answer_it"``) with the English query.

Bundled data (``workbench/data``):

* ``queries.jsonl``: ``{"id", "split", "topic", "en", "it"}``, one base query per line; ``split`` is one of
  ``splits``, ``it`` is the Italian translation or null. Splits are fixed per query, so every dataset built on
  the queries shares them.
* ``instructions.jsonl``: ``{"name", "group", "instruction_id", "kwargs", "phrasings", "note"?}``; one dataset
  per line. ``instruction_id`` and ``kwargs`` follow IFEval (google-research ``instruction_following_eval``)
  and say how a response is checked; ``phrasings`` are interchangeable wordings of the instruction. Each query
  of a split gets one phrasing, round-robin over the queries sorted by id from an offset fixed by the name, so
  every split uses every phrasing and a query keeps its phrasing whatever split is asked for.
* ``multiple_choice.jsonl``: ``{"id", "split", "topic", "en": {"question", "choices"}, "it": {...},
  "answer"}``.

An ``Item`` records everything needed to check a response: ``instruction_id_list`` and ``kwargs`` (one dict
per id, IFEval's layout) and ``language``, the language of the positive prompt.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import DataError, InvalidArgumentError
from workbench.jsonl import read_jsonl_numbered

if TYPE_CHECKING:
    import pandas as pd

splits: tuple[str, ...] = ("train", "validation", "test")
ITALIAN = "italian"
ITALIAN_VARIANTS: tuple[str, ...] = ("it", "en_answer_it")
DATA_DIR = Path(__file__).parent / "data"
_ANSWER_ITALIAN = "answer_italian"


@dataclass(frozen=True)
class Item:
    """One contrastive pair: ``prompt`` carries the behaviour, ``query`` does not."""

    id: str
    base_id: str
    split: str
    group: str
    behaviour: str
    query: str
    instruction: str
    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]
    language: str
    query_it: str | None = None


@dataclass(frozen=True)
class ContrastiveSet:
    """The items of one dataset and split; ``variant`` is set for ``italian`` only."""

    name: str
    split: str
    items: tuple[Item, ...]
    variant: str | None = None

    def __len__(self) -> int:
        return len(self.items)

    def head(self, n: int | None) -> ContrastiveSet:
        """The same set with only its first ``n`` items (all of them for None)."""
        return dataclasses.replace(self, items=self.items[:n])

    @property
    def positive(self) -> list[str]:
        """The prompts that carry the behaviour (instruction appended, or the Italian query)."""
        return [item.prompt for item in self.items]

    @property
    def negative(self) -> list[str]:
        """The plain English queries."""
        return [item.query for item in self.items]

    @property
    def hash(self) -> str:
        """sha256 hex digest of the items as canonical JSON; any change to any item changes it."""
        rows = [dataclasses.asdict(item) for item in self.items]
        text = json.dumps(rows, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def to_frame(self) -> pd.DataFrame:
        """One row per item; ``instruction_id_list`` as a list, ``kwargs`` as a JSON string (parquet-safe)."""
        import pandas as pd

        rows = []
        for item in self.items:
            row = dataclasses.asdict(item)
            row["instruction_id_list"] = list(item.instruction_id_list)
            row["kwargs"] = json.dumps(row["kwargs"], sort_keys=True, ensure_ascii=False)
            rows.append(row)
        return pd.DataFrame(rows, columns=[f.name for f in dataclasses.fields(Item)])


@dataclass(frozen=True)
class MCItem:
    """A multiple-choice question; ``answer`` is the 0-based index of the correct choice."""

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    language: str
    split: str


@dataclass(frozen=True)
class _Instruction:
    name: str
    group: str
    instruction_id: str
    kwargs: dict[str, Any]
    phrasings: tuple[str, ...]


@dataclass(frozen=True)
class _Query:
    id: str
    split: str
    en: str
    it: str | None


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


@functools.cache
def _instructions() -> dict[str, _Instruction]:
    path = DATA_DIR / "instructions.jsonl"
    specs: dict[str, _Instruction] = {}
    for number, row in read_jsonl_numbered(path):
        where = f"{path}, line {number}"
        for key in ("name", "group", "instruction_id"):
            if not _nonempty_str(row.get(key)):
                raise DataError(f"{where}: {key!r} must be a nonempty string")
        phrasings = row.get("phrasings")
        if not isinstance(phrasings, list) or not phrasings or not all(map(_nonempty_str, phrasings)):
            raise DataError(f"{where}: 'phrasings' must be a nonempty list of nonempty strings")
        if not isinstance(row.get("kwargs"), dict):
            raise DataError(f"{where}: 'kwargs' must be an object")
        if row["name"] in specs or row["name"] == ITALIAN:
            raise DataError(f"{where}: dataset name {row['name']!r} is already taken")
        specs[row["name"]] = _Instruction(
            row["name"], row["group"], row["instruction_id"], row["kwargs"], tuple(phrasings)
        )
    if _ANSWER_ITALIAN not in specs:
        raise DataError(f"{path}: no {_ANSWER_ITALIAN!r} entry, which the {ITALIAN!r} dataset needs")
    return specs


@functools.cache
def _queries() -> tuple[_Query, ...]:
    path = DATA_DIR / "queries.jsonl"
    queries: dict[str, _Query] = {}
    for number, row in read_jsonl_numbered(path):
        where = f"{path}, line {number}"
        if not _nonempty_str(row.get("id")) or not _nonempty_str(row.get("en")):
            raise DataError(f"{where}: 'id' and 'en' must be nonempty strings")
        if row.get("split") not in splits:
            raise DataError(f"{where}: 'split' is {row.get('split')!r}; expected one of {', '.join(splits)}")
        if row.get("it") is not None and not _nonempty_str(row["it"]):
            raise DataError(f"{where}: 'it' must be a nonempty string or null")
        if row["id"] in queries:
            raise DataError(f"{where}: duplicate query id {row['id']!r}")
        italian = row["it"].strip() if row.get("it") is not None else None
        queries[row["id"]] = _Query(row["id"], row["split"], row["en"].strip(), italian)
    return tuple(sorted(queries.values(), key=lambda q: q.id))


def names(group: str | None = None) -> list[str]:
    """Dataset names that ``load`` accepts, optionally only those of one group (format, length, ...)."""
    specs = _instructions()
    groups = {name: spec.group for name, spec in specs.items()} | {ITALIAN: specs[_ANSWER_ITALIAN].group}
    if group is not None and group not in groups.values():
        raise InvalidArgumentError(
            f"unknown group {group!r}; choose from {', '.join(sorted(set(groups.values())))}"
        )
    return [name for name, g in groups.items() if group is None or g == group]


def _phrasing(name: str, phrasings: tuple[str, ...], index: int) -> str:
    offset = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")
    return phrasings[(offset + index) % len(phrasings)]


def _item(name: str, query: _Query, index: int, variant: str | None) -> Item:
    spec = _instructions()[_ANSWER_ITALIAN if name == ITALIAN else name]
    if variant == "it":
        assert query.it is not None
        instruction, prompt, language = "", query.it, "it"
    else:
        instruction = _phrasing(name, spec.phrasings, index)
        prompt, language = f"{query.en} {instruction}", "en"
    return Item(
        id=f"{name}/{query.id}",
        base_id=query.id,
        split=query.split,
        group=spec.group,
        behaviour=name,
        query=query.en,
        instruction=instruction,
        prompt=prompt,
        instruction_id_list=(spec.instruction_id,),
        kwargs=(copy.deepcopy(spec.kwargs),),
        language=language,
        query_it=query.it,
    )


def load(name: str, split: str = "train", *, variant: str | None = None) -> ContrastiveSet:
    """The contrastive set ``name`` for one split, or for all of them with ``split="all"``.

    ``variant`` applies to ``italian`` only: ``"it"`` (default, positive = the Italian query) or
    ``"en_answer_it"`` (positive = the English query plus an "answer in Italian" phrasing).
    """
    valid = names()
    if name not in valid:
        raise InvalidArgumentError(f"unknown dataset {name!r}; choose from {', '.join(valid)}")
    if split not in (*splits, "all"):
        raise InvalidArgumentError(f"unknown split {split!r}; choose from {', '.join(splits)}, all")
    if name == ITALIAN:
        variant = variant or ITALIAN_VARIANTS[0]
        if variant not in ITALIAN_VARIANTS:
            raise InvalidArgumentError(
                f"unknown variant {variant!r}; choose from {', '.join(ITALIAN_VARIANTS)}"
            )
    elif variant is not None:
        raise InvalidArgumentError(f"variant applies only to the {ITALIAN!r} dataset, not {name!r}; drop it")
    items: list[Item] = []
    for part in splits if split == "all" else (split,):
        queries = [q for q in _queries() if q.split == part and (name != ITALIAN or q.it is not None)]
        items += [_item(name, query, index, variant) for index, query in enumerate(queries)]
    return ContrastiveSet(name=name, split=split, items=tuple(items), variant=variant)


def load_ifeval(path: str | os.PathLike[str]) -> ContrastiveSet:
    """IFEval's ``input_data.jsonl`` (key, prompt, instruction_id_list, kwargs) as a test-split set.

    Items have ``query == prompt`` and no separate instruction; null kwargs values are dropped, as IFEval's
    own evaluation does.
    """
    items: list[Item] = []
    seen: set[str] = set()
    for number, row in read_jsonl_numbered(path):
        where = f"{path}, line {number}"
        prompt, ids, kwargs = row.get("prompt"), row.get("instruction_id_list"), row.get("kwargs")
        if not _nonempty_str(prompt):
            raise DataError(f"{where}: 'prompt' must be a nonempty string")
        if not isinstance(ids, list) or not ids or not all(map(_nonempty_str, ids)):
            raise DataError(f"{where}: 'instruction_id_list' must be a nonempty list of strings")
        if not isinstance(kwargs, list) or len(kwargs) != len(ids):
            raise DataError(f"{where}: 'kwargs' must be a list with one entry per instruction id")
        if not all(k is None or isinstance(k, dict) for k in kwargs):
            raise DataError(f"{where}: each 'kwargs' entry must be an object or null")
        key = str(row.get("key", number))
        if key in seen:
            raise DataError(f"{where}: duplicate key {key!r}")
        seen.add(key)
        items.append(
            Item(
                id=f"ifeval/{key}",
                base_id=key,
                split="test",
                group="ifeval",
                behaviour="ifeval",
                query=prompt,
                instruction="",
                prompt=prompt,
                instruction_id_list=tuple(ids),
                kwargs=tuple({k: v for k, v in (kw or {}).items() if v is not None} for kw in kwargs),
                language="en",
            )
        )
    if not items:
        raise DataError(f"{path}: no IFEval rows")
    return ContrastiveSet(name="ifeval", split="test", items=tuple(items))


def _mc_item(row: dict[str, Any], where: str, default_id: str, language: str, split: str) -> MCItem:
    question, choices, labels = row.get("question"), row.get("choices"), None
    if isinstance(question, dict):  # ARC's own layout: {"stem", "choices": [{"text", "label"}]}
        choices = question.get("choices", choices)
        question = question.get("stem")
    if isinstance(choices, dict):  # ARC on the hub: {"text": [...], "label": [...]}
        choices, labels = choices.get("text"), choices.get("label")
    elif isinstance(choices, list) and all(isinstance(c, dict) for c in choices):
        choices, labels = [c.get("text") for c in choices], [c.get("label") for c in choices]
    if not _nonempty_str(question):
        raise DataError(f"{where}: the question is missing or empty")
    if not isinstance(choices, list) or len(choices) < 2 or not all(map(_nonempty_str, choices)):
        raise DataError(f"{where}: need at least 2 nonempty choices")
    if "answerKey" in row:
        if labels is None or labels == []:
            labels = [chr(65 + i) for i in range(len(choices))]
        elif not isinstance(labels, list) or len(labels) != len(choices):
            raise DataError(f"{where}: the choice labels must be a list with one label per choice")
        labels = [str(label) for label in labels]
        key = str(row["answerKey"]).strip()
        if key not in labels:
            raise DataError(f"{where}: answerKey {key!r} is not one of the labels {', '.join(labels)}")
        answer = labels.index(key)
    else:
        answer = row.get("answer")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise DataError(
                f"{where}: 'answer' must be a choice index from 0 to {len(choices) - 1}, got {answer!r}"
            )
    return MCItem(
        id=str(row.get("id", default_id)),
        question=question.strip(),
        choices=tuple(c.strip() for c in choices),
        answer=answer,
        language=language,
        split=str(row.get("split", split)),
    )


def _bundled_mc(language: str) -> list[MCItem]:
    if language not in ("en", "it"):
        raise InvalidArgumentError(f"the bundled questions come in en and it, not {language!r}")
    path = DATA_DIR / "multiple_choice.jsonl"
    items = []
    for number, row in read_jsonl_numbered(path):
        where = f"{path}, line {number}"
        text = row.get(language)
        if not isinstance(text, dict):
            raise DataError(f"{where}: no {language!r} object with question and choices")
        if row.get("split") not in splits:
            raise DataError(f"{where}: 'split' is {row.get('split')!r}; expected one of {', '.join(splits)}")
        flat = {"id": row.get("id", str(number)), "split": row["split"], "answer": row.get("answer"), **text}
        items.append(_mc_item(flat, where, str(number), language, row["split"]))
    return items


_FILE_SUFFIXES = (
    ".jsonl",
    ".json",
    ".csv",
    ".tsv",
    ".parquet",
    ".arrow",
    ".txt",
    ".gguf",
    ".safetensors",
    ".bin",
)
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?")


def looks_like_path(spec: str) -> bool:
    """Whether ``spec`` names a local file or folder rather than a hub id (``name`` or ``org/name``).

    It does when it is no valid hub id (it starts with ``.``, ``/`` or ``~``, has a backslash, a space or
    two ``/``) or ends in a file suffix (``.jsonl``, ``.gguf``, ...). Such a string is never sent to a hub.
    """
    return _HUB_ID.fullmatch(spec) is None or spec.lower().endswith(_FILE_SUFFIXES)


def _hub_mc(source: str, language: str, split: str) -> list[MCItem]:
    name, _, config = source.partition(":")
    try:
        from datasets import load_dataset

        rows = load_dataset(name, config or None, split=split)
    except Exception as e:
        raise DataError(
            f"could not load {source!r} from the Hugging Face hub ({type(e).__name__}: {str(e)[:200]}); "
            "download it first or pass the path of a local JSONL file"
        ) from None
    return [
        _mc_item(dict(row), f"{source} ({split}), row {index}", f"{name}/{index}", language, split)
        for index, row in enumerate(rows)
    ]


def load_multiple_choice(
    source: str | os.PathLike[str], *, language: str = "en", split: str | None = None
) -> list[MCItem]:
    """Multiple-choice questions from ``"bundled"``, a local JSONL file, or a Hugging Face dataset.

    A JSONL file may use ARC's layout (``question`` as a string or ``{"stem"}``, ``choices`` as
    ``{"text": [...], "label": [...]}``, ``answerKey`` a label) or a plain one (``question``, ``choices``
    list, ``answer`` index). A hub dataset is ``"name"`` or ``"name:config"``
    (``"allenai/ai2_arc:ARC-Challenge"``), read in ``split`` (default ``test``); a source that looks like a
    path (:func:`looks_like_path`) is only ever read from disk. For the bundled file
    ``language`` picks en or it; elsewhere it labels the items. ``split=None`` keeps every split; rows of a
    local file without a split count as ``split``, or ``test``.
    """
    if not isinstance(source, str | os.PathLike):
        raise InvalidArgumentError(
            f"source must be 'bundled', a file path or a hub dataset name, got {type(source).__name__}"
        )
    if source == "bundled":
        if split is not None and split not in splits:
            raise InvalidArgumentError(f"unknown split {split!r}; choose from {', '.join(splits)}")
        items = _bundled_mc(language)
    elif (
        isinstance(source, os.PathLike) or Path(source).exists() or looks_like_path(source.partition(":")[0])
    ):
        path = Path(source)
        rows = read_jsonl_numbered(path)
        if not rows:
            raise DataError(f"{path}: no multiple-choice rows; the file is empty")
        items = [
            _mc_item(row, f"{path}, line {number}", f"{path.stem}/{number}", language, split or "test")
            for number, row in rows
        ]
    else:
        return _hub_mc(source, language, split or "test")
    return [item for item in items if split is None or item.split == split]
