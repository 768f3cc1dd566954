"""The few Java-style methods Kestra flows call on values (``list.size()``, ``s.trim()``...).

Pebble lets templates call public Java methods; here a method call is looked up in these explicit
tables by the value's kind and name, and nothing else is callable. ``x.__class__()`` or
``x.getClass()`` simply is not in a table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .errors import RenderError
from .operators import equals, replaced, type_name
from .text import java_text

Method = Callable[..., Any]


def _substring(value: str, start: int, end: int | None = None) -> str:
    """Java ``substring``: bounds must be valid."""
    stop = len(value) if end is None else end
    if not 0 <= start <= stop <= len(value):
        raise RenderError(f"substring({start}, {stop}) out of range for length {len(value)}")
    return value[start:stop]


STRING_METHODS: dict[str, Method] = {
    "length": lambda s: len(s),
    "size": lambda s: len(s),
    "isEmpty": lambda s: not s,
    "isBlank": lambda s: not s.strip(),
    "toUpperCase": lambda s: s.upper(),
    "toLowerCase": lambda s: s.lower(),
    "trim": lambda s: s.strip(),
    "strip": lambda s: s.strip(),
    "contains": lambda s, x: java_text(x) in s,
    "startsWith": lambda s, x: s.startswith(java_text(x)),
    "endsWith": lambda s, x: s.endswith(java_text(x)),
    "substring": _substring,
    "indexOf": lambda s, x: s.find(java_text(x)),
    "lastIndexOf": lambda s, x: s.rfind(java_text(x)),
    "replace": lambda s, a, b: replaced(s, java_text(a), java_text(b)),
    "equals": lambda s, x: s == x,
    "equalsIgnoreCase": lambda s, x: isinstance(x, str) and s.lower() == x.lower(),
    "toString": lambda s: s,
}

LIST_METHODS: dict[str, Method] = {
    "size": lambda items: len(items),
    "isEmpty": lambda items: not items,
    "contains": lambda items, x: any(equals(i, x) for i in items),
    "get": lambda items, i: items[i] if isinstance(i, int) and 0 <= i < len(items) else None,
    "indexOf": lambda items, x: next((n for n, i in enumerate(items) if equals(i, x)), -1),
}

MAP_METHODS: dict[str, Method] = {
    "size": lambda m: len(m),
    "isEmpty": lambda m: not m,
    "containsKey": lambda m, k: k in m,
    "containsValue": lambda m, v: any(equals(x, v) for x in m.values()),
    "get": lambda m, k: m.get(k),
    "keySet": lambda m: list(m.keys()),
    "values": lambda m: list(m.values()),
}


def call_method(obj: Any, name: str, args: list[Any]) -> Any:
    """Run an allowed method on ``obj``; every other name is a RenderError."""
    if isinstance(obj, str):
        table = STRING_METHODS
    elif isinstance(obj, Mapping):
        table = MAP_METHODS
    elif isinstance(obj, list | tuple):
        table = LIST_METHODS
    else:
        table = {}
    method = table.get(name)
    if method is None:
        raise RenderError(f"Method [{name}] cannot be called on a {type_name(obj)}")
    try:
        return method(obj, *args)
    except TypeError:
        raise RenderError(f"Method [{name}] was called with wrong arguments") from None
