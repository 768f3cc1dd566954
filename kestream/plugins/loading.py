"""Importing the user's task modules: ``KESTREAM_PLUGINS`` and the ``kestream.tasks`` entry points.

Every process that validates or runs flows calls :func:`load_plugins` before it reads a flow (the
role processes, ``kestream run``, ``validate`` and ``flows deploy``, :mod:`kestream.testing`,
:class:`kestream.Worker`), so a flow is judged by the same task types everywhere. Importing a module
is what registers its tasks (``@kestream.task``, :class:`kestream.PythonTask` subclasses); the
modules imported are remembered, so the call is cheap and idempotent, and the unknown-type message
can name them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from kestream.tasks.registry import note_plugin_module

if TYPE_CHECKING:
    from kestream.settings import Settings

__all__ = ["ENTRY_POINT_GROUP", "PluginError", "load_plugins", "loaded_plugins"]

ENTRY_POINT_GROUP = "kestream.tasks"

#: Modules imported as plugins, in order, with where each was named.
_loaded: dict[str, str] = {}
_entry_points_scanned = False


class PluginError(RuntimeError):
    """A plugin module could not be imported (or its tasks could not be registered)."""


def load_plugins(settings: Settings | None = None, modules: Iterable[str] = ()) -> list[str]:
    """Import the modules of ``settings.plugins`` (``KESTREAM_PLUGINS``), then ``modules``, then
    the ``kestream.tasks`` entry points of the installed packages (scanned once per process).

    Returns every plugin module loaded so far. Raises :class:`PluginError` naming the module and
    the cause when one cannot be imported.
    """
    global _entry_points_scanned
    if settings is None:
        from kestream.settings import get_settings

        settings = get_settings()
    for name in _names(settings.plugins or ""):
        _import(name, "KESTREAM_PLUGINS")
    for name in modules:
        _import(name, "plugins=")
    if not _entry_points_scanned:
        for point in entry_points(group=ENTRY_POINT_GROUP):
            _import_entry_point(point)
        _entry_points_scanned = True
    return loaded_plugins()


def loaded_plugins() -> list[str]:
    """The plugin modules imported so far, in order."""
    return list(_loaded)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _import(name: str, source: str) -> None:
    if name in _loaded:
        return
    try:
        importlib.import_module(name)
    except Exception as exc:
        raise PluginError(
            f"cannot load plugin module '{name}' (from {source}): {type(exc).__name__}: {exc}"
        ) from exc
    _loaded[name] = source
    note_plugin_module(name)


def _import_entry_point(point: Any) -> None:
    module = point.value.split(":", 1)[0].strip()
    if module in _loaded:
        return
    dist = getattr(point.dist, "name", None) or "an installed package"
    source = f"entry point '{point.name}' of {dist}"
    try:
        point.load()
    except Exception as exc:
        raise PluginError(
            f"cannot load plugin module '{module}' ({source}): {type(exc).__name__}: {exc}"
        ) from exc
    _loaded[module] = source
    note_plugin_module(module)
