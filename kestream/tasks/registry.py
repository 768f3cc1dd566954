"""Task type names (``io.kestra.plugin.core.*`` and the older aliases) to their classes."""

from __future__ import annotations

from functools import cache

from kestream.tasks.base import Task
from kestream.tasks.execution import Assert, Exit, Labels
from kestream.tasks.flow import AllowFailure, If, Parallel, Sequential, Switch
from kestream.tasks.http import Request
from kestream.tasks.loops import EachParallel, EachSequential, ForEach
from kestream.tasks.pause import Pause
from kestream.tasks.simple import Echo, Fail, Log, OutputValues, Return
from kestream.tasks.sleep import Sleep
from kestream.tasks.subflow import Subflow

TASK_CLASSES: tuple[type[Task], ...] = (
    Log, Return, Echo, OutputValues, Fail, Sleep, Pause,
    Sequential, Parallel, If, Switch, AllowFailure,
    ForEach, EachSequential, EachParallel, Subflow,
    Request, Labels, Assert, Exit,
)  # fmt: skip


@cache
def _by_name() -> dict[str, type[Task]]:
    names: dict[str, type[Task]] = {}
    for cls in TASK_CLASSES:
        for name in (cls.type_name, *cls.aliases):
            names[name] = cls
    return names


def task_class(type_name: str) -> type[Task] | None:
    """The class for a task ``type``, or None when kestream does not know it."""
    return _by_name().get(type_name)


def known_types() -> list[str]:
    """Every accepted type name, current names first (for error messages and docs)."""
    return [cls.type_name for cls in TASK_CLASSES] + [
        a for cls in TASK_CLASSES for a in cls.aliases
    ]
