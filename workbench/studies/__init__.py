"""The studies: each module declares one :class:`~workbench.studies.registry.Study`; :func:`names` lists
them and :func:`get` finds one (:mod:`workbench.studies.registry`)."""

from workbench.studies.registry import Study, get, names

__all__ = ["Study", "get", "names"]
