"""The study registry: every study is one file that declares itself with a :class:`Study`.

A study module sets ``STUDY = Study(...)`` (name, title, the size it runs at for each run size, whether the
report runs it, a model it loads itself, what else its reuse key covers, the folders it writes, per-size
knobs). :func:`names` and :func:`get` find them in this package (every module with a ``STUDY``), in the
modules named by the ``WORKBENCH_STUDIES`` environment variable (comma-separated, e.g. ``mylab.studies.tone``)
and in the ``workbench.studies`` entry-point group of installed packages, as lm-eval-harness finds its tasks.
The report (:mod:`workbench.studies.report`), ``workbench study``, ``workbench publish`` and the pages read
nothing else: adding a study is adding one file.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from workbench.errors import InvalidArgumentError
from workbench.size import RUN_SIZES, Size

__all__ = ["ENV", "Study", "all_studies", "get", "names", "parse_option"]

#: Extra study modules to load, comma-separated.
ENV = "WORKBENCH_STUDIES"
#: The entry-point group of study modules in installed packages.
GROUP = "workbench.studies"


def _standard_sizes() -> dict[str, Size]:
    return {name: Size.named(name) for name in RUN_SIZES}


@dataclass(frozen=True)
class Study:
    """A study's declaration.

    ``run(model, size, out_dir, *, progress, **options)`` returns a
    :class:`~workbench.studies.result.StudyResult`, or a line saying why it did not run. ``sizes`` maps each
    run size it supports (:data:`~workbench.size.RUN_SIZES`) to the :class:`~workbench.size.Size` it runs
    at; ``report``: the run sizes whose report includes it (none: it runs on request), in ``order``.
    ``model``: the spec of a model it loads itself instead of the run's (its reuse key then leaves the run's
    model out; a model that does not load offline makes it "unavailable"). ``inputs()``: what else its
    results depend on (e.g. a data file's hash), for its reuse key. ``folders``: the folders it writes under
    the run directory (default: its name); only these are ever removed. ``options``: per run size, the
    keyword knobs it runs with; any keyword-only parameter of ``run`` can be set by the user.
    """

    name: str
    title: str
    run: Callable[..., Any]
    sizes: Mapping[str, Size] = field(default_factory=_standard_sizes)
    report: tuple[str, ...] = ()
    order: int = 100
    model: str | None = None
    inputs: Callable[[], Mapping[str, Any]] | None = None
    folders: tuple[str, ...] = ()
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise InvalidArgumentError(f"a study name is an identifier, got {self.name!r}")
        unknown = [s for s in (*self.sizes, *self.report, *self.options) if s not in RUN_SIZES]
        if unknown:
            raise InvalidArgumentError(
                f"study {self.name!r} names unknown run sizes {unknown}: use {RUN_SIZES}"
            )
        if not self.folders:
            object.__setattr__(self, "folders", (self.name,))

    def size(self, run_size: str) -> Size:
        """The size this study runs at in a run of ``run_size``."""
        if run_size not in self.sizes:
            raise InvalidArgumentError(
                f"study {self.name!r} has no {run_size!r} size: use one of {', '.join(self.sizes)}"
            )
        return self.sizes[run_size]

    def knobs(self) -> dict[str, inspect.Parameter]:
        """The keyword-only parameters of :attr:`run` a user can set (``progress`` aside)."""
        parameters = inspect.signature(self.run).parameters.values()
        return {p.name: p for p in parameters if p.kind is p.KEYWORD_ONLY and p.name != "progress"}

    def options_for(self, run_size: str, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The knobs of a run: the declared ones for ``run_size``, then ``given`` (checked against :meth:`knobs`)."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.knobs()))
        if unknown:
            raise InvalidArgumentError(
                f"study {self.name!r} has no option {unknown[0]!r}: use one of {', '.join(self.knobs()) or 'none'}"
            )
        return {**self.options.get(run_size, {}), **given}


def parse_option(study: Study, text: str) -> tuple[str, Any]:
    """``"names=json_format,no_comma"`` as ``("names", ("json_format", "no_comma"))``, typed by the knob's
    annotation (a sequence: comma-separated; a bool: true/false; a number; ``none`` for None)."""
    key, sep, value = text.partition("=")
    knobs = study.knobs()
    if not sep or key not in knobs:
        raise InvalidArgumentError(
            f"option {text!r} is not KEY=VALUE with KEY one of {', '.join(knobs) or 'none'} (study {study.name})"
        )
    given = knobs[key].annotation
    annotation = given.__name__ if isinstance(given, type) else str(given).replace("typing.", "")
    if value.lower() == "none" and "None" in annotation:
        return key, None
    sequence = any(annotation.startswith(s) for s in ("Sequence[", "tuple[", "list["))
    kinds = {"bool": _boolean, "int": int, "float": float, "str": str}
    inner = annotation.split("[", 1)[1].rstrip("]") if sequence else annotation
    union = [part.strip().split(",")[0].strip() for part in inner.split("|")]
    kind = next((kinds[part] for part in union if part in kinds), None)
    if kind is None:
        raise InvalidArgumentError(
            f"option {key} of study {study.name} ({annotation}) cannot be set from text"
        )
    try:
        return key, tuple(kind(part) for part in value.split(",") if part) if sequence else kind(value)
    except ValueError:
        raise InvalidArgumentError(
            f"option {key} of study {study.name} takes {annotation}, not {value!r}"
        ) from None


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(text)
    return text.lower() == "true"


def _modules() -> list[ModuleType]:
    """This package's modules, then those of :data:`ENV` and the :data:`GROUP` entry points."""
    package = importlib.import_module("workbench.studies")
    found = [
        importlib.import_module(f"workbench.studies.{info.name}")
        for info in pkgutil.iter_modules(package.__path__)
    ]
    extra = [name.strip() for name in os.environ.get(ENV, "").split(",") if name.strip()]
    extra += [ep.value for ep in importlib.metadata.entry_points(group=GROUP)]
    for name in extra:
        try:
            found.append(importlib.import_module(name))
        except ImportError as e:
            raise InvalidArgumentError(f"cannot import study module {name!r} ({e}): check {ENV}") from None
    return found


def all_studies() -> dict[str, Study]:
    """Every declared study by name, in report order (then by name)."""
    studies: dict[str, Study] = {}
    for module in _modules():
        study = getattr(module, "STUDY", None)
        if not isinstance(study, Study):
            continue
        if study.name in studies and studies[study.name] is not study:
            raise InvalidArgumentError(f"two modules declare the study {study.name!r}: rename one")
        studies[study.name] = study
    return dict(sorted(studies.items(), key=lambda item: (item[1].order, item[0])))


def names() -> list[str]:
    """The declared studies' names, in report order."""
    return list(all_studies())


def get(name: str) -> Study:
    """The study called ``name``, or a one-line error listing them."""
    studies = all_studies()
    if name not in studies:
        raise InvalidArgumentError(f"unknown study {name!r}: use one of {', '.join(studies)}")
    return studies[name]
