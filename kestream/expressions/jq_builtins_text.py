"""jq builtins over strings and numbers, keyed by (name, arity). Pure functions only."""

from __future__ import annotations

import json
import math
from typing import Any

from . import patterns
from .jq_parser import JqError, Node
from .jq_runtime import (
    Evaluator,
    Gen,
    builtin,
    jq_tostring,
    jq_type,
    require,
    simple,
    with_argument,
)
from .text import to_json

# -- strings and numbers ----------------------------------------------------------------------
simple("tostring")(jq_tostring)


@simple("tonumber")
def _tonumber(value: Any) -> Any:
    if jq_type(value) == "number":
        return value
    require(value, "string", "tonumber")
    try:
        number = float(value)
    except ValueError:
        raise JqError(f"Cannot parse '{value}' as a number") from None
    return (
        int(number)
        if number.is_integer() and "." not in value and "e" not in value.lower()
        else number
    )


@simple("tojson")
def _tojson(value: Any) -> Any:
    return to_json(value)


@simple("fromjson")
def _fromjson(value: Any) -> Any:
    require(value, "string", "fromjson")
    try:
        return json.loads(value)
    except ValueError as exc:
        raise JqError(f"{value} cannot be parsed as JSON: {exc}") from None


@simple("ascii_downcase")
def _downcase(value: Any) -> Any:
    require(value, "string", "ascii_downcase")
    return "".join(c.lower() if c.isascii() else c for c in value)


@simple("ascii_upcase")
def _upcase(value: Any) -> Any:
    require(value, "string", "ascii_upcase")
    return "".join(c.upper() if c.isascii() else c for c in value)


with_argument("startswith")(lambda v, p: _strings(v, p, "startswith") and v.startswith(p))
with_argument("endswith")(lambda v, p: _strings(v, p, "endswith") and v.endswith(p))
with_argument("ltrimstr")(
    lambda v, p: v[len(p) :] if isinstance(v, str) and isinstance(p, str) and v.startswith(p) else v
)
with_argument("rtrimstr")(
    lambda v, p: (
        v[: -len(p)] if isinstance(v, str) and isinstance(p, str) and p and v.endswith(p) else v
    )
)


def _strings(value: Any, other: Any, name: str) -> bool:
    if not (isinstance(value, str) and isinstance(other, str)):
        raise JqError(f"{name}() requires string inputs")
    return True


@with_argument("split")
def _split(value: Any, separator: Any) -> Any:
    _strings(value, separator, "split")
    return value.split(separator) if separator else list(value)


@with_argument("test")
def _test(value: Any, pattern: Any) -> Any:
    _strings(value, pattern, "test")
    return patterns.search(pattern, value) is not None


@builtin("sub", 2)
def _sub(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    yield from _substitute(ev, args, value, count=1)


@builtin("gsub", 2)
def _gsub(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    yield from _substitute(ev, args, value, count=0)


def _substitute(ev: Evaluator, args: list[Node], value: Any, count: int) -> Gen:
    pattern = ev.first(args[0], value)
    replacement = ev.first(args[1], value)
    _strings(value, pattern, "sub")
    _strings(value, replacement, "sub")
    yield patterns.sub(pattern, lambda match: replacement, value, count)


@with_argument("index")
def _index(value: Any, needle: Any) -> Any:
    if value is None:
        return None
    _strings(value, needle, "index")
    position = value.find(needle)
    return None if position < 0 else position


@with_argument("rindex")
def _rindex(value: Any, needle: Any) -> Any:
    if value is None:
        return None
    _strings(value, needle, "rindex")
    position = value.rfind(needle)
    return None if position < 0 else position


simple("floor")(lambda value: math.floor(_numeric(value)))
simple("ceil")(lambda value: math.ceil(_numeric(value)))
simple("round")(lambda value: round(_numeric(value)))
simple("fabs")(lambda value: abs(_numeric(value)))
simple("sqrt")(lambda value: math.sqrt(_numeric(value)))


def _numeric(value: Any) -> Any:
    require(value, "number", "math function")
    return value


@simple("tostream")
def _unsupported_stream(value: Any) -> Any:
    raise JqError("jq 'tostream' is not supported")
