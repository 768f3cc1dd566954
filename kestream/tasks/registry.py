"""Task type names to their classes: kestream's own (``TASK_CLASSES``) and plugin tasks.

kestream's own types (``io.kestra.plugin.core.*`` and the older aliases) are a fixed tuple. Plugin
tasks (:mod:`kestream.plugins`) are added at import time of the user's modules through
:func:`register`; a type name claimed by two different pieces of code is refused, naming both, so
the task a flow runs never depends on import order.
"""

from __future__ import annotations

from functools import cache

from kestream.tasks.base import Task
from kestream.tasks.dag import Dag
from kestream.tasks.execution import Assert, Exit, Labels
from kestream.tasks.flow import AllowFailure, If, Parallel, Sequential, Switch
from kestream.tasks.for_each_item import (
    ForEachItem,
    ForEachItemExecutable,
    ForEachItemMergeOutputs,
    ForEachItemSplit,
)
from kestream.tasks.http import Request
from kestream.tasks.http_download import Download
from kestream.tasks.kv import Delete as KVDelete
from kestream.tasks.kv import Get as KVGet
from kestream.tasks.kv import GetKeys as KVGetKeys
from kestream.tasks.kv import PurgeKV
from kestream.tasks.kv import Set as KVSet
from kestream.tasks.local_files import LocalFiles
from kestream.tasks.loop_until import LoopUntil
from kestream.tasks.loops import EachParallel, EachSequential, ForEach
from kestream.tasks.pause import Pause
from kestream.tasks.purge import PurgeExecutions, PurgeLogs
from kestream.tasks.scripts import PythonCommands, PythonScript, ShellCommands, ShellScript
from kestream.tasks.simple import Echo, Fail, Log, OutputValues, Return
from kestream.tasks.sleep import Sleep
from kestream.tasks.storage import Concat, Split, Write
from kestream.tasks.storage import Delete as StorageDelete
from kestream.tasks.storage import Size as StorageSize
from kestream.tasks.subflow import Subflow
from kestream.tasks.working_directory import WorkingDirectory
from kestream.tasks.working_directory_files import WorkingDirectoryFiles

TASK_CLASSES: tuple[type[Task], ...] = (
    Log, Return, Echo, OutputValues, Fail, Sleep, Pause,
    Sequential, Parallel, If, Switch, AllowFailure, WorkingDirectory,
    ForEach, EachSequential, EachParallel, Subflow, LoopUntil, Dag, ForEachItem,
    Request, Labels, Assert, Exit, PurgeExecutions, PurgeLogs,
    ShellCommands, ShellScript, PythonCommands, PythonScript,
    KVSet, KVGet, KVGetKeys, KVDelete, PurgeKV,
    Write, Concat, Split, StorageSize, StorageDelete, Download, LocalFiles,
    # ForEachItem's internal tasks: a worker runs the split and the merge by their type
    ForEachItemSplit, ForEachItemExecutable, ForEachItemMergeOutputs,
    WorkingDirectoryFiles,  # a WorkingDirectory's cache and outputFiles, on its worker
)  # fmt: skip


@cache
def _by_name() -> dict[str, type[Task]]:
    names: dict[str, type[Task]] = {}
    for cls in TASK_CLASSES:
        for name in (cls.type_name, *cls.aliases):
            names[name] = cls
    return names


class TaskTypeConflict(ValueError):
    """Two different task classes claim the same type name."""


#: Plugin task classes by every name they answer to, in registration order.
_plugins: dict[str, type[Task]] = {}
#: Counts the changes to ``_plugins``: a worker process forked before a change lacks it.
_generation = 0
#: Modules imported as plugins (:mod:`kestream.plugins.loading`), whether or not they had tasks.
_plugin_modules: list[str] = []


def origin(cls: type[Task]) -> str:
    """Where a task class comes from, as ``module.QualName`` (names it in conflict messages)."""
    source = getattr(cls, "origin", None)
    return source if isinstance(source, str) else f"{cls.__module__}.{cls.__qualname__}"


def register(cls: type[Task]) -> None:
    """Make a plugin task class answer to its ``type_name`` and ``aliases``.

    Registering the same code again (a module imported twice, reloaded) replaces the previous
    class; a name that kestream or another plugin already uses raises :class:`TaskTypeConflict`
    naming both, before anything is registered.
    """
    names = (cls.type_name, *cls.aliases)
    if not cls.type_name:
        raise ValueError(f"{origin(cls)} has no type name")
    for name in names:
        taken = _by_name().get(name) or _plugins.get(name)
        if taken is not None and origin(taken) != origin(cls):
            raise TaskTypeConflict(
                f"task type '{name}' of {origin(cls)} is already provided by {origin(taken)}"
            )
    global _generation
    for name in names:
        _plugins[name] = cls
    _generation += 1


def unregister(cls: type[Task]) -> None:
    """Forget a plugin task class (tests that define tasks of their own clean up with it)."""
    for name in (cls.type_name, *cls.aliases):
        if _plugins.get(name) is cls:
            del _plugins[name]
    global _generation
    _generation += 1


def generation() -> int:
    """Changes whenever a plugin task class is registered or forgotten (see ``_generation``)."""
    return _generation


def note_plugin_module(name: str) -> None:
    """Remember that ``name`` was imported as a plugin module (for the unknown-type message)."""
    if name not in _plugin_modules:
        _plugin_modules.append(name)


def plugin_modules() -> list[str]:
    """The plugin modules imported, then the other modules that registered tasks, in order."""
    found = dict.fromkeys(_plugin_modules)
    for cls in plugin_classes():
        found.setdefault(cls.__module__, None)
    return list(found)


def plugin_classes() -> list[type[Task]]:
    """Every registered plugin task class, once each, in registration order."""
    return list(dict.fromkeys(_plugins.values()))


def task_class(type_name: str) -> type[Task] | None:
    """The class for a task ``type``, or None when neither kestream nor a plugin knows it."""
    return _by_name().get(type_name) or _plugins.get(type_name)


def all_task_classes() -> list[type[Task]]:
    """kestream's own task classes, then the plugins'."""
    return [*TASK_CLASSES, *plugin_classes()]


def known_types() -> list[str]:
    """Every accepted type name, current names first (for error messages and docs)."""
    classes = all_task_classes()
    return [cls.type_name for cls in classes] + [a for cls in classes for a in cls.aliases]
