"""How values become text: inside ``{{ }}`` (Kestra's JSON writer), in ``~`` (Java ``toString``)
and in ``toJson`` (Jackson).

Kestra prints maps and lists as compact JSON, numbers the way Java does (``1.0``, ``1.0E10``) and
instants as ISO-8601 with milliseconds; other modules format values the same way so a value read
back from a rendered string compares equal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from kestream.models.durations import format_duration

from .budget import RenderBudget, current_budget
from .limits import MAX_TEXT, text_too_long
from .values import CONTAINERS, NUMBERS, SEQUENCES, Entry

_encode_str = json.encoder.encode_basestring  # C-accelerated, does not escape non-ASCII
JAVA_PLAIN_MIN = 1e-3
JAVA_PLAIN_MAX = 1e7


def java_double(value: float) -> str:
    """Java's ``Double.toString``: shortest digits, ``1.0`` not ``1``, ``1.0E10`` past 10^7."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    digits_tuple = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(str(d) for d in digits_tuple.digits)
    exponent = int(digits_tuple.exponent) + len(digits) - 1  # scientific exponent
    if JAVA_PLAIN_MIN <= abs(value) < JAVA_PLAIN_MAX:
        if exponent >= 0:
            whole = digits[: exponent + 1].ljust(exponent + 1, "0")
            frac = digits[exponent + 1 :] or "0"
        else:
            whole = "0"
            frac = "0" * (-exponent - 1) + digits
        return f"{sign}{whole}.{frac}"
    return f"{sign}{digits[0]}.{digits[1:] or '0'}E{exponent}"


@lru_cache(maxsize=4096)
def format_instant(value: datetime) -> str:
    """An aware datetime as ``2024-01-02T03:04:05.678Z`` (UTC, exactly milliseconds).

    Cached: the same start dates are printed again and again within an execution.
    """
    if value.tzinfo is None:
        return value.isoformat(timespec="milliseconds")
    if value.tzinfo is not UTC and value.utcoffset():
        value = value.astimezone(UTC)
    return value.isoformat(timespec="milliseconds")[:23] + "Z"


def format_local_time(value: time) -> str:
    """Java's ``LocalTime.toString``: ``HH:mm``, then seconds and fraction only when needed."""
    out = f"{value.hour:02d}:{value.minute:02d}"
    if value.second or value.microsecond:
        out += f":{value.second:02d}"
    if value.microsecond:
        micros = f"{value.microsecond:06d}"
        out += "." + (micros[:3] if micros.endswith("000") else micros)
    return out


#: Scalar formatting, first match wins (bool before int, datetime before date).
_SCALAR_FORMATTERS: tuple[tuple[type, Callable[[Any], str]], ...] = (
    (bool, lambda v: "true" if v else "false"),
    (int, int.__repr__),
    (float, java_double),
    (datetime, format_instant),
    (date, date.isoformat),
    (time, format_local_time),
    (timedelta, format_duration),
    (Decimal, str),
)
#: Exact-type dispatch for ``to_text``, the hot path (subclasses take the slow path).
_EXACT_TEXT: dict[type, Callable[[Any], str]] = {
    **dict(_SCALAR_FORMATTERS),
    dict: lambda v: to_json(v),
    list: lambda v: to_json(v),
    tuple: lambda v: to_json(v),
}


def _scalar_text(value: Any) -> str | None:
    """Text shared by ``{{ }}`` and ``~`` for scalar values, None when not a scalar."""
    for kind, formatter in _SCALAR_FORMATTERS:
        if isinstance(value, kind):
            return formatter(value)
    return None


def to_text(value: Any) -> str:
    """How a value prints inside ``{{ }}``: strings as is, null as nothing, containers as JSON."""
    kind = type(value)
    if kind is str:
        return value
    if value is None:
        return ""
    formatter = _EXACT_TEXT.get(kind)
    if formatter is not None:
        return formatter(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, CONTAINERS):
        return to_json(value)
    if isinstance(value, Entry):
        return f"{java_text(value.key)}={java_text(value.value)}"
    scalar = _scalar_text(value)
    return scalar if scalar is not None else str(value)


def java_text(value: Any) -> str:
    """Java's ``toString`` as used by ``~`` and string ``+``: ``[a, b]``, ``{k=v}``, ``null``."""
    if isinstance(value, str):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        items = (f"{java_text(k)}={java_text(v)}" for k, v in value.items())
        return "{" + bounded_join(", ", items) + "}"
    if isinstance(value, SEQUENCES):
        return "[" + bounded_join(", ", map(java_text, value)) + "]"
    return to_text(value)


def bounded_join(separator: str, texts: Iterator[str]) -> str:
    """``separator.join(texts)``, refused as soon as it would pass the render's text limit."""
    budget = current_budget()
    parts: list[str] = []
    size = 0
    for text in texts:
        size += len(text) + len(separator)
        if size > MAX_TEXT:
            raise text_too_long()
        parts.append(text)
        budget.left -= 1  # budget.spend() inlined: once per item
        if budget.left <= 0:
            budget.check()
    return separator.join(parts)


def to_json(value: Any) -> str:
    """Compact JSON like Kestra's Jackson mapper (Java number formats, ISO dates).

    Bounded by the render's text limit while it is written: a list holding the same long string
    a million times is refused before it is built.
    """
    writer = _JsonWriter(current_budget())
    writer.write(value)
    return writer.text()


class _JsonWriter:
    """Appends JSON tokens to ``out``, counting strings' sizes and containers' items."""

    __slots__ = ("budget", "out", "size")

    def __init__(self, budget: RenderBudget) -> None:
        self.budget = budget
        self.out: list[str] = []
        self.size = 0

    def text(self) -> str:
        if sum(map(len, self.out)) > MAX_TEXT:
            raise text_too_long()
        return "".join(self.out)

    def string(self, text: str) -> None:
        encoded = _encode_str(text)
        self.size += len(encoded)
        if self.size > MAX_TEXT:
            raise text_too_long()
        self.out.append(encoded)

    def write(self, value: Any) -> None:
        """Append the JSON of ``value`` (iterative joins keep big lists fast)."""
        if isinstance(value, str):
            self.string(value)
        elif value is None:
            self.out.append("null")
        elif isinstance(value, Mapping):
            self.mapping(value)
        elif isinstance(value, (*SEQUENCES, set, frozenset)):
            self.sequence(value)
        elif isinstance(value, Entry):  # Jackson writes a Map.Entry as a one-key object
            self.mapping({value.key: value.value})
        elif isinstance(value, float) and not math.isfinite(value):
            self.out.append(_encode_str(java_double(value)))
        elif isinstance(value, NUMBERS):
            self.out.append(to_text(value))
        else:
            self.string(to_text(value))

    def mapping(self, value: Mapping[Any, Any]) -> None:
        out, budget = self.out, self.budget
        out.append("{")
        first = True
        for key, item in value.items():
            if not first:
                out.append(",")
            first = False
            self.string(key if isinstance(key, str) else to_text(key))
            out.append(":")
            self.write(item)
            budget.left -= 1  # budget.spend() inlined: once per item
            if budget.left <= 0:
                budget.check()
        out.append("}")

    def sequence(self, value: Iterable[Any]) -> None:
        out, budget = self.out, self.budget
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            self.write(item)
            budget.left -= 1
            if budget.left <= 0:
                budget.check()
        out.append("]")


def parse_json(text: str) -> Any:
    """Parse a JSON document (any value, like Jackson's ``readTree``); ValueError when invalid."""
    return json.loads(text)
