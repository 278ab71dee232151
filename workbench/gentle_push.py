"""The gentle push (Scalena, Fersini and Nissim, CLiC-it 2024): per-step head-output differences.

The authors' protocol, as their code does it (github.com/DanielSc4/Dynamic-Activation-Composition at
d5431bc: ``src/extraction.py`` ``extract_activations``/``get_mean_activations``, ``src/delta.py``
``generate_edited_model``, ``src/utils/prompt_helper.py`` ``build_prompt_txt``, ``diff_main.py``):

- **Prompts.** Few-shot prompts per condition, the same questions in every condition: an instruction line
  (``Answer the following questions`` / ``Rispondi alle seguenti domande``), the shots as
  ``Q: ...\\nA: ...\\n\\n``, then ``Q: {query}\\nA:``. ENG: English questions and answers; ITA: English
  questions, Italian answers, Italian instruction; ITA-full: all Italian.
- **Recording.** K greedy generations per condition, ending at end of text (the step that predicts it
  included) or after ``max_steps``; at generation step ``i`` the input of every layer's attention output
  projection (``o_proj``; TransformerLens ``hook_z``, every head) at the position that predicts generated
  token ``i``: position ``P − 1 + i``. Per step, the mean over the generations that reached it.
- **Vectors.** ``Δ_i = mean(ITA)_i − mean(ENG)_i``, no normalisation, every layer and head.
- **Steering.** ``α_i · Δ_i`` added at position ``P − 1 + i``, ``α_i = α − (α / N) · i`` with ``N`` the
  generation budget (``diminishing_alpha``), ``α = 1.5`` (:class:`~workbench.head_steering.HeadIntervention`).

Where this differs, and why: the shots are the bundled parallel multiple-choice questions (validation
split, so the test questions the studies score stay unseen) whose English and Italian answers differ,
with their correct option as the answer (one word or a few: our data has no longer Italian answers);
the final queries are ``dataset``'s (English, or Italian for ITA-full); the few-shot text is raw, as
the authors prompt (``chat=False``, default), though the prompts the push later steers are chat turns:
with ``chat=True`` (one user turn of the chat template) Qwen2.5-Coder-1.5B-Instruct answers the ITA
prompts by repeating the shots, not in Italian, so Δ pushes towards echoing a question list (α 1.5: 0 of
32 test answers Italian, 0.66 degenerate), where the raw text's Δ makes all 32 Italian, 0.09 degenerate
(``docs/results/seed_italian/qwen1.5b``); queries are drawn without replacement (theirs with);
the K generations run batched with the KV cache (theirs one by one, recomputing the sequence every step);
``n_steps`` is the last step both conditions reached (beyond it the engine repeats the last vector); the
fade ``N`` defaults to ``max_steps``, as their recording and generation budgets were one number. Their
prompt builder shows one shot fewer than asked and tokenizes each piece with its own BOS token; this
shows ``shots`` shots as one text.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from workbench.batching import format_prompts, length_batches
from workbench.datasets import ContrastiveSet, load_multiple_choice
from workbench.errors import InvalidArgumentError
from workbench.fastpath import direct_forward
from workbench.files import utc_now
from workbench.generation import _generated
from workbench.head_steering import HOOK, HeadIntervention
from workbench.models import Model

__all__ = [
    "CONDITIONS",
    "INSTRUCTIONS",
    "Shot",
    "few_shot_prompts",
    "gentle_push",
    "record_steps",
    "shot_pool",
]

#: The authors' conditions: (language of the shots' questions, of their answers and instruction).
CONDITIONS = {"ENG": ("en", "en"), "ITA": ("en", "it"), "ITA-full": ("it", "it")}
#: The authors' instruction lines (``data/dataset/{ENG,ITA}/*_instr.txt``).
INSTRUCTIONS = {"en": "Answer the following questions", "it": "Rispondi alle seguenti domande"}


@dataclass(frozen=True)
class Shot:
    """One question with its correct answer in English and Italian."""

    question: dict[str, str]
    answer: dict[str, str]


def shot_pool(split: str = "validation") -> list[Shot]:
    """The bundled parallel multiple-choice questions of ``split`` whose two answers differ."""
    english = load_multiple_choice("bundled", language="en", split=split)
    italian = {item.id: item for item in load_multiple_choice("bundled", language="it", split=split)}
    pool = []
    for en in english:
        it = italian[en.id]
        answers = {"en": en.choices[en.answer], "it": it.choices[it.answer]}
        if answers["en"].strip().lower() != answers["it"].strip().lower():
            pool.append(Shot({"en": en.question, "it": it.question}, answers))
    return pool


def few_shot_prompts(
    dataset: ContrastiveSet,
    *,
    k: int = 30,
    shots: int = 5,
    conditions: Sequence[str] = ("ENG", "ITA"),
    seed: int = 0,
    shot_split: str = "validation",
) -> dict[str, list[str]]:
    """``k`` few-shot prompts per condition, built as the authors do (module docstring): the same ``k``
    queries of ``dataset`` and the same ``shots`` shots per prompt in every condition."""
    _check_counts(dataset, k, shots, conditions)
    pool = shot_pool(shot_split)
    if shots > len(pool):
        raise InvalidArgumentError(f"shots={shots} but the {shot_split} split has {len(pool)} usable shots")
    rng = random.Random(seed)
    items = [dataset.items[i] for i in rng.sample(range(len(dataset)), k)]
    picked = [rng.sample(pool, shots) for _ in items]
    prompts: dict[str, list[str]] = {}
    for name in conditions:
        asked, answered = CONDITIONS[name]
        texts = []
        for item, group in zip(items, picked, strict=True):
            query = item.query_it if asked == "it" else item.query
            if not query:
                raise InvalidArgumentError(f"{name} needs the Italian query, which item {item.id} lacks")
            lines = "".join(f"Q: {s.question[asked]}\nA: {s.answer[answered]}\n\n" for s in group)
            texts.append(f"{INSTRUCTIONS[answered]}\n{lines}Q: {query}\nA:")
        prompts[name] = texts
    return prompts


def _check_counts(dataset: ContrastiveSet, k: int, shots: int, conditions: Sequence[str]) -> None:
    if not isinstance(dataset, ContrastiveSet):
        raise InvalidArgumentError(f"dataset must be a ContrastiveSet, got {type(dataset).__name__}")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(dataset):
        raise InvalidArgumentError(
            f"k must be an integer from 1 to the dataset's {len(dataset)} items, got {k!r}"
        )
    if not isinstance(shots, int) or isinstance(shots, bool) or shots < 0:
        raise InvalidArgumentError(f"shots must be an integer >= 0, got {shots!r}")
    if isinstance(conditions, str) or len(conditions) != 2 or len(set(conditions)) != 2:
        raise InvalidArgumentError(
            f"conditions must be two different names (base, target), got {conditions!r}"
        )
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise InvalidArgumentError(f"unknown condition {unknown[0]!r}: use {', '.join(CONDITIONS)}")


@torch.inference_mode()
def record_steps(
    model: Model,
    prompts: Sequence[str],
    *,
    layers: Sequence[int],
    max_steps: int,
    batch_size: int = 8,
    chat: bool = False,
    progress: bool = False,
) -> tuple[Float[Tensor, "layer step head d_head"], Int[Tensor, " step"]]:
    """Per generation step, the mean ``hook_z`` at the position that predicts the step's token over the
    greedy generations of ``prompts`` that reached it, and how many did (batched, KV-cached)."""
    texts = format_prompts(model, prompts, chat=chat)
    eos = model.hf_model.generation_config.eos_token_id or model.tokenizer.eos_token_id
    pad = model.tokenizer.pad_token_id
    shape = (len(layers), max_steps, int(model.bridge.cfg.n_heads), int(model.bridge.cfg.d_head))
    sums = torch.zeros(shape, dtype=torch.float64)
    counts = torch.zeros(max_steps, dtype=torch.long)
    batches = list(length_batches(model, texts, batch_size, formatted=chat))
    for batch in tqdm(batches, desc="gentle push", disable=not progress):
        encoded = model.encode([texts[i] for i in batch], formatted=chat)
        seen: list[list[Tensor]] = [[] for _ in layers]

        def keeper(slot: list[Tensor]) -> Callable[..., None]:
            return lambda z, hook: slot.append(z[:, -1].float())

        hooks = [(HOOK.format(layer=layer), keeper(seen[j])) for j, layer in enumerate(layers)]
        with model.bridge.hooks(fwd_hooks=hooks), direct_forward(model):
            output = model.hf_model.generate(
                **encoded,
                max_new_tokens=max_steps,
                do_sample=False,
                use_cache=True,
                pad_token_id=pad,
                eos_token_id=eos,
            )
        steps = (
            torch.stack([torch.stack(s, dim=1) for s in seen], dim=1).double().cpu()
        )  # [b, layer, step, h, d]
        width = encoded["input_ids"].shape[1]
        reached = torch.tensor([_generated(row.tolist(), eos, pad) for row in output[:, width:]])
        valid = torch.arange(steps.shape[2])[None, :] < reached[:, None]  # [b, step]
        sums[:, : steps.shape[2]] += (steps * valid[:, None, :, None, None]).sum(0)
        counts[: steps.shape[2]] += valid.sum(0)
    means = sums / counts.clamp_min(1)[None, :, None, None]
    return means.float(), counts


def gentle_push(
    model: Model,
    dataset: ContrastiveSet,
    *,
    k: int = 30,
    shots: int = 5,
    alpha: float = 1.5,
    fade: int | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    conditions: Sequence[str] = ("ENG", "ITA"),
    max_steps: int = 30,
    batch_size: int = 8,
    chat: bool = False,
    seed: int = 0,
    shot_split: str = "validation",
    progress: bool = False,
) -> HeadIntervention:
    """Build the gentle push on ``model`` from ``dataset``'s queries (e.g. ``datasets.load("italian",
    "train")``): ``Δ_i = mean(target)_i − mean(base)_i`` for ``conditions=(base, target)`` over ``k``
    ``shots``-shot generations of ``max_steps`` tokens, at ``layers`` (default all), added to ``heads``
    (default all) with strength ``alpha`` fading linearly to 0 over ``fade`` steps (None: ``max_steps``;
    0: constant). Returns a :class:`~workbench.head_steering.HeadIntervention` for ``generate``,
    ``steer``, multiple choice and grids; ``.save``/``.load`` keep its provenance."""
    started = time.perf_counter()
    layers = list(range(model.n_layers)) if layers is None else [model.layer_check(x) for x in layers]
    if not layers:
        raise InvalidArgumentError("layers is empty: give at least one block, or None for all")
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
        raise InvalidArgumentError(f"max_steps must be a positive integer, got {max_steps!r}")
    prompts = few_shot_prompts(
        dataset, k=k, shots=shots, conditions=conditions, seed=seed, shot_split=shot_split
    )
    kw = {
        "layers": layers,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "chat": chat,
        "progress": progress,
    }
    (base, base_counts), (target, target_counts) = (record_steps(model, prompts[c], **kw) for c in conditions)
    n_steps = int(min((base_counts > 0).sum(), (target_counts > 0).sum()))
    if n_steps == 0:
        raise InvalidArgumentError("no generation wrote a token in both conditions: nothing to average")
    provenance = _provenance(model, dataset, k, shots, conditions, max_steps, chat, seed, shot_split)
    provenance.update(
        steps=n_steps,
        counts={c: n.tolist() for c, n in zip(conditions, (base_counts, target_counts), strict=True)},
        build_seconds=round(time.perf_counter() - started, 2),
    )
    deltas = target[:, :n_steps] - base[:, :n_steps]
    return HeadIntervention(
        deltas,
        tuple(layers),
        alpha,
        max_steps if fade is None else fade,
        None if heads is None else tuple(heads),
        provenance,
    )


def _provenance(
    model: Model,
    dataset: ContrastiveSet,
    k: int,
    shots: int,
    conditions: Sequence[str],
    max_steps: int,
    chat: bool,
    seed: int,
    shot_split: str,
) -> dict[str, object]:
    from workbench.vectors import workbench_version

    name = f"{dataset.name}:{dataset.variant}" if dataset.variant else dataset.name
    return {
        "method": "gentle_push",
        "model_name": model.name,
        "weights_hash": model.weights_hash,
        "fingerprint": model.fingerprint,
        "n_layers": model.n_layers,
        "d_model": model.d_model,
        "hook": HOOK,
        "position": "last prompt token + step",
        "dataset": f"{name}/{dataset.split}",
        "dataset_hash": dataset.hash,
        "shots_source": f"bundled multiple_choice/{shot_split}",
        "k": k,
        "shots": shots,
        "conditions": list(conditions),
        "max_steps": max_steps,
        "chat": chat,
        "seed": seed,
        "workbench_version": workbench_version(),
        "created": utc_now(),
    }
