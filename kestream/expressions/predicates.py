"""``is`` tests: Pebble's ``defined``, ``null``, ``empty``, ``even``, ``odd``, ``iterable``,
``map`` and Kestra's ``json``.

``defined`` is special-cased by the compiler: its input is evaluated so that a missing variable
or key gives null instead of an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import RenderError
from .operators import is_number, type_name
from .registry import template_test
from .text import parse_json


@template_test("defined")
def is_defined(value: Any) -> bool:
    """Exists and is not null (Pebble: the inverse of ``null``)."""
    return value is not None


@template_test("null")
def is_null(value: Any) -> bool:
    return value is None


@template_test("empty")
def is_empty(value: Any) -> bool:
    """Null, blank text, or an empty list/map."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, Mapping | list | tuple):
        return not value
    return False


def _integer(value: Any, name: str) -> int:
    if not is_number(value) or (isinstance(value, float) and not value.is_integer()):
        raise RenderError(f"Test [{name}] expects an integer, got a {type_name(value)}")
    return int(value)


@template_test("even")
def is_even(value: Any) -> bool:
    return _integer(value, "even") % 2 == 0


@template_test("odd")
def is_odd(value: Any) -> bool:
    return _integer(value, "odd") % 2 == 1


@template_test("iterable")
def is_iterable(value: Any) -> bool:
    """A list or a map (what ``for`` accepts)."""
    return isinstance(value, list | tuple | Mapping)


@template_test("map")
def is_map(value: Any) -> bool:
    return isinstance(value, Mapping)


@template_test("json")
def is_json(value: Any) -> bool:
    """A list/map, or text that parses as a JSON document (Jackson's ``readTree``)."""
    if isinstance(value, list | tuple | Mapping):
        return True
    if not isinstance(value, str) or not value.strip():
        return False
    try:
        parse_json(value)
    except ValueError:
        return False
    return True
