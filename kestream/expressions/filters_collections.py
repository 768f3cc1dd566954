"""Filters on lists and maps (and the numeric ones): length, first, sort, join, keys, chunk...

Inputs coming from JSON or YAML are plain lists/dicts; Pebble-style filters treat a string as a
sequence of characters where that makes sense (``first``, ``last``, ``length``, ``slice``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from .budget import current_budget
from .equality import EqualitySet
from .errors import RenderError
from .operators import check_items, equals, greater, is_number, less, type_name
from .registry import template_filter
from .text import bounded_join, java_text


def _require_list(value: Any, name: str) -> list[Any]:
    if isinstance(value, list | tuple):
        return list(value)
    raise RenderError(f"'{name}' expects a list, got a {type_name(value)}")


@template_filter("length")
def length(value: Any) -> int:
    """Size of a string, list or map; 0 for null or anything else (Pebble)."""
    if value is None:
        return 0
    if isinstance(value, str | Mapping | list | tuple):
        return len(value)
    return 0


@template_filter("first")
def first(value: Any) -> Any:
    """First item of a list, first character of a string, first value of a map."""
    if isinstance(value, Mapping):
        return next(iter(value.values()), None)
    if isinstance(value, str | list | tuple):
        return value[0] if value else None
    return value


@template_filter("last")
def last(value: Any) -> Any:
    """Last item of a list, last character of a string, last value of a map."""
    if isinstance(value, Mapping):
        return list(value.values())[-1] if value else None
    if isinstance(value, str | list | tuple):
        return value[-1] if value else None
    return value


@template_filter("reverse")
def reverse(value: Any) -> Any:
    """Reversed list or string."""
    if value is None:
        return None
    if isinstance(value, str):
        return value[::-1]
    return list(reversed(_require_list(value, "reverse")))


def _compare(a: Any, b: Any) -> int:
    """Natural order: numbers, then strings lexically; mixed kinds are an error."""
    if less(a, b):
        return -1
    return 1 if greater(a, b) else 0


def _sorted(items: list[Any], reverse: bool) -> list[Any]:
    """Natural order; lists of only strings or only numbers sort natively (same order, C speed),
    others compare pair by pair within the render budget."""
    if all(type(item) is str for item in items) or all(is_number(item) for item in items):
        return sorted(items, reverse=reverse)
    budget = current_budget()

    def compare(a: Any, b: Any) -> int:
        budget.spend()
        return _compare(a, b)

    return sorted(items, key=functools.cmp_to_key(compare), reverse=reverse)


@template_filter("sort")
def sort(value: Any) -> Any:
    """Ascending natural order."""
    if value is None:
        return None
    return _sorted(_require_list(value, "sort"), reverse=False)


@template_filter("rsort")
def rsort(value: Any) -> Any:
    """Descending natural order."""
    if value is None:
        return None
    return _sorted(_require_list(value, "rsort"), reverse=True)


@template_filter("join")
def join(value: Any, separator: str = "") -> Any:
    """Items joined by ``separator`` (Java ``toString`` of each item)."""
    if value is None:
        return None
    items = value.values() if isinstance(value, Mapping) else _require_list(value, "join")
    return bounded_join(java_text(separator), map(java_text, items))


@template_filter("keys")
def keys(value: Any) -> Any:
    """Keys of a map (indices of a list)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return list(value.keys())
    return list(range(len(_require_list(value, "keys"))))


@template_filter("values")
def values(value: Any) -> Any:
    """Values of a map."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return list(value.values())
    return _require_list(value, "values")


@template_filter("merge")
def merge(value: Any, items: Any) -> Any:
    """Two maps merged (right wins) or two lists concatenated."""
    if isinstance(value, Mapping) and isinstance(items, Mapping):
        return {**value, **items}
    if isinstance(value, list | tuple):
        extra = list(items.items()) if isinstance(items, Mapping) else items
        extra = list(extra) if isinstance(extra, list | tuple) else [extra]
        return check_items([*value, *extra])
    raise RenderError(f"cannot merge a {type_name(value)} with a {type_name(items)}")


@template_filter("chunk")
def chunk(value: Any, size: int) -> Any:
    """The list cut into sub-lists of ``size`` items."""
    if value is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise RenderError("expects a positive integer as argument 'size'")
    items = _require_list(value, "chunk")
    return [items[i : i + size] for i in range(0, len(items), size)]


@template_filter("distinct", "unique", "uniq")
def distinct(value: Any) -> Any:
    """Items without duplicates (Pebble's ``==``: 1 and 1.0 are one), first occurrence kept."""
    if value is None:
        return None
    seen = EqualitySet(equals)
    return [item for item in _require_list(value, "distinct") if seen.add(item)]


@template_filter("flatten")
def flatten(value: Any) -> Any:
    """One level of nested lists flattened."""
    if value is None:
        return None
    out: list[Any] = []
    for item in _require_list(value, "flatten"):
        out.extend(item if isinstance(item, list | tuple) else [item])
    return check_items(out)


@template_filter("slice")
def slice_(value: Any, fromIndex: int = 0, toIndex: int | None = None) -> Any:
    """``value[from:to]`` for strings and lists, with Pebble's bound checks."""
    if value is None:
        return None
    if not isinstance(value, str | list | tuple):
        raise RenderError(
            f"can only be applied to String and List inputs, got a {type_name(value)}"
        )
    start = 0 if fromIndex is None else fromIndex
    stop = len(value) if toIndex is None else toIndex
    if not (is_number(start) and is_number(stop)):
        raise RenderError("fromIndex and toIndex must be numbers")
    start, stop = int(start), int(stop)
    if start < 0:
        raise RenderError("fromIndex must be greater than 0")
    if stop > len(value):
        raise RenderError(f"toIndex must be smaller than input size: {len(value)}")
    if start >= stop and toIndex is not None:
        raise RenderError("toIndex must be greater than fromIndex")
    return value[start:stop] if isinstance(value, str) else list(value[start:stop])


@template_filter("default")
def default(value: Any, default: Any) -> Any:
    """``default`` when the input is missing, null, blank text or an empty list/map."""
    if value is None:
        return default
    if isinstance(value, str) and not value.strip():
        return default
    if isinstance(value, Mapping | list | tuple) and not value:
        return default
    return value


@template_filter("abs")
def abs_(value: Any) -> Any:
    """Absolute value of a number."""
    if value is None:
        return None
    if not is_number(value):
        raise RenderError(f"expects a number, got a {type_name(value)}")
    return abs(value)


_NUMBER_TYPES = ("INT", "LONG", "BIGINTEGER", "FLOAT", "DOUBLE", "BIGDECIMAL", "")


def _parse_number(text: str) -> Any:
    """Commons-lang ``createNumber``: ints (also hex ``0x``), else floats."""
    stripped = text.strip()
    try:
        if stripped.lower().startswith(("0x", "-0x")):
            return int(stripped, 16)
        if stripped.lower().endswith("l"):
            return int(stripped[:-1])
        return int(stripped)
    except ValueError:
        pass
    try:
        return float(stripped.rstrip("dDfF"))
    except ValueError:
        raise RenderError(f"'{text}' is not a valid number") from None


@template_filter("number")
def number(value: Any, type: str = "") -> Any:
    """Parse text into a number; ``type`` forces INT/LONG/FLOAT/DOUBLE/BIGDECIMAL/BIGINTEGER."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise RenderError(f"can only be applied to String. Actual type was: {type_name(value)}")
    kind = str(type).upper()
    if kind not in _NUMBER_TYPES:
        raise RenderError(f"unknown number type '{type}'")
    parsed = _parse_number(value)
    if kind in ("INT", "LONG", "BIGINTEGER"):
        if not isinstance(parsed, int):
            raise RenderError(f"'{value}' is not an integer")
        return parsed
    if kind in ("FLOAT", "DOUBLE"):
        return float(parsed)
    if kind == "BIGDECIMAL":
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            raise RenderError(f"'{value}' is not a valid number") from None
    return parsed


@template_filter("numberformat")
def numberformat(value: Any, format: str) -> Any:
    """Java ``DecimalFormat`` subset: ``#,##0.00``, ``0.#``, ``#%`` (half-even rounding)."""
    if value is None:
        return None
    if not is_number(value):
        raise RenderError(f"expects a number, got a {type_name(value)}")
    return format_decimal(value, format)


def format_decimal(value: Any, pattern: str) -> str:
    """Apply a simple DecimalFormat pattern (grouping, min/max fraction, percent)."""
    prefix_len = len(pattern) - len(pattern.lstrip("'\"$€£ "))
    prefix, body = pattern[:prefix_len], pattern[prefix_len:]
    percent = body.endswith("%")
    core = body.rstrip("%")
    integer_part, _, fraction_part = core.partition(".")
    min_fraction = fraction_part.count("0")
    max_fraction = len(fraction_part)
    number_value = Decimal(str(value)) * (100 if percent else 1)
    quantum = Decimal(1).scaleb(-max_fraction)
    rounded = number_value.quantize(quantum, rounding="ROUND_HALF_EVEN")
    text = (
        f"{abs(rounded):,.{max_fraction}f}"
        if "," in integer_part
        else f"{abs(rounded):.{max_fraction}f}"
    )
    if max_fraction > min_fraction and "." in text:
        whole, frac = text.split(".")
        frac = frac.rstrip("0").ljust(min_fraction, "0")
        text = f"{whole}.{frac}" if frac else whole
    min_integer = integer_part.replace(",", "").count("0")
    whole, dot, frac = text.partition(".")
    if min_integer == 0 and whole.replace(",", "") == "0" and frac:
        whole = ""
    sign = "-" if rounded < 0 else ""
    return f"{prefix}{sign}{whole}{dot}{frac}{'%' if percent else ''}"
