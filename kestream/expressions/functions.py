"""Template functions: ``range``, ``max``/``min``, ``json``/``fromJson``, ``yaml``,
``currentEachOutput``, ``errorLogs``, ``uuid``, ``randomInt`` (``now`` lives with the date filters).

Context-aware functions read the reserved ``@``-keys of the render context, which templates
themselves cannot name. Nothing here touches files, the environment or the network: ``kv`` asks
the lookup its caller put in ``@kv`` (the executor's: the process's KV store), and ``secret`` the
resolver in ``@secret`` (only the worker has one; :mod:`kestream.secrets`).
"""

from __future__ import annotations

import random
import uuid as uuid_module
from collections.abc import Mapping
from typing import Any

import yaml

from .budget import current_budget
from .errors import RenderError
from .limits import MAX_ITEMS
from .operators import greater, is_number, less, type_name
from .registry import template_function
from .text import parse_json


def _range_size(start: int, end: int, step: int) -> int:
    if (step > 0 and start > end) or (step < 0 and start < end):
        return 0
    return abs(end - start) // abs(step) + 1


@template_function("range")
def range_function(start: Any, end: Any, increment: Any = 1) -> list[Any]:
    """Inclusive range of numbers (or single characters), capped at a million items."""
    if isinstance(start, str) and isinstance(end, str) and len(start) == len(end) == 1:
        return [chr(c) for c in range_function(ord(start), ord(end), increment)]
    if not (is_number(start) and is_number(end) and is_number(increment)):
        raise RenderError("range() expects numbers (or single characters)")
    if increment == 0:
        raise RenderError("The increment of the range function must be different than 0")
    if all(isinstance(x, int) for x in (start, end, increment)):
        size = _range_size(start, end, increment)
        if size > MAX_ITEMS:
            raise RenderError(
                f"The range function cannot produce more than {MAX_ITEMS} elements, "
                f"but this call would produce {size}."
            )
        current_budget().spend(1 + (size >> 8))
        return list(range(start, end + (1 if increment > 0 else -1), increment))
    size = int(abs(end - start) / abs(increment)) + 1
    if size > MAX_ITEMS:
        raise RenderError(f"The range function cannot produce more than {MAX_ITEMS} elements")
    current_budget().spend(1 + (size >> 6))
    return [
        start + i * increment
        for i in range(size)
        if _in_range(start + i * increment, end, increment)
    ]


def _in_range(value: Any, end: Any, increment: Any) -> bool:
    return bool(value <= end) if increment > 0 else bool(value >= end)


def _extreme(values: tuple[Any, ...], better: Any) -> Any:
    items = list(values[0]) if len(values) == 1 and isinstance(values[0], list | tuple) else values
    best = None
    for item in items:
        if best is None or better(item, best):
            best = item
    return best


@template_function("max")
def max_function(*values: Any) -> Any:
    """Largest argument (or largest item of a single list argument)."""
    return _extreme(values, greater)


@template_function("min")
def min_function(*values: Any) -> Any:
    """Smallest argument (or smallest item of a single list argument)."""
    return _extreme(values, less)


@template_function("json", "fromJson", "jsonDecode")
def from_json(json: Any) -> Any:
    """Parse JSON text into a value (null stays null)."""
    if json is None:
        return None
    if not isinstance(json, str):
        raise RenderError(f"expects a JSON string, got a {type_name(json)}")
    try:
        return parse_json(json)
    except ValueError as exc:
        raise RenderError(f"invalid JSON: {exc}") from None


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without anchors/aliases (no "billion laughs" expansion), each node counted
    against the render budget (the pure-Python parser takes about 30 us per node)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        current_budget().spend()
        if self.check_event(yaml.AliasEvent):
            raise RenderError("YAML aliases are not allowed in templates")
        return super().compose_node(parent, index)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        current_budget().spend()
        return super().construct_object(node, deep)


@template_function("yaml", "fromYaml")
def from_yaml(yaml_text: Any) -> Any:
    """Parse YAML text (safe loader, no aliases)."""
    if yaml_text is None:
        return None
    if not isinstance(yaml_text, str):
        raise RenderError(f"expects a YAML string, got a {type_name(yaml_text)}")
    try:
        return yaml.load(yaml_text, Loader=_NoAliasLoader)
    except yaml.YAMLError as exc:
        raise RenderError(f"invalid YAML: {exc}") from None


@template_function("currentEachOutput", uses_ctx=True)
def current_each_output(ctx: Mapping[str, Any], outputs: Any) -> Any:
    """The entry of ``outputs`` for the current loop iteration, walking the loop values down."""
    if not isinstance(outputs, Mapping):
        raise RenderError("expects an argument 'outputs' with type map")
    value: Any = outputs
    for key in ctx.get("@each_path") or ():
        if not (isinstance(value, Mapping) and key in value):
            break
        value = value[key]
    return value


@template_function("errorLogs", uses_ctx=True)
def error_logs(ctx: Mapping[str, Any]) -> list[Any]:
    """The execution's ERROR log entries (``taskId``, ``message``, ...)."""
    return list(ctx.get("@error_logs") or [])


@template_function("uuid")
def uuid() -> str:
    """A random UUID."""
    return str(uuid_module.uuid4())


@template_function("randomInt")
def random_int(lower: Any, upper: Any) -> int:
    """A random integer in ``[lower, upper)``, as Kestra's ``randomInt``."""
    if not (isinstance(lower, int) and isinstance(upper, int)) or lower >= upper:
        raise RenderError("expects integers with lower < upper")
    return random.randrange(lower, upper)


@template_function("kv", uses_ctx=True)
def kv(ctx: Mapping[str, Any], key: Any, namespace: Any = None, errorOnMissing: Any = False) -> Any:
    """A KV entry's value, of the flow's namespace unless ``namespace`` names another.

    A missing key gives ``null``, or fails the render when ``errorOnMissing`` is true (Kestra
    0.21's default is false).
    """
    lookup = ctx.get("@kv")
    if lookup is None:
        raise RenderError("the KV store cannot be read here")
    if namespace is None:
        flow = ctx.get("flow")
        namespace = flow.get("namespace") if isinstance(flow, Mapping) else None
    if not isinstance(key, str) or not isinstance(namespace, str):
        raise RenderError("expects a key and a namespace given as strings")
    found, value = lookup(namespace, key)
    if not found:
        if errorOnMissing is True:
            raise RenderError(f"The key '{key}' does not exist in the namespace '{namespace}'.")
        return None
    return value


@template_function("secret", uses_ctx=True)
def secret(ctx: Mapping[str, Any], key: Any) -> Any:
    """A secret's value: only where a resolver is in ``@secret`` (the worker, at the last moment).

    Elsewhere (the executor) a template that calls ``secret`` is never rendered: its text travels
    to the worker unrendered (:mod:`kestream.secrets.deferred`), so this error means a caller
    rendered it where it must not.
    """
    resolve = ctx.get("@secret")
    if resolve is None:
        raise RenderError("secret() is only resolved on a worker, when the task runs")
    if not isinstance(key, str):
        raise RenderError("expects a secret name given as a string")
    return resolve(key)
