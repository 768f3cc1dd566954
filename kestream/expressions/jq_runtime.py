"""jq values and machinery shared by the evaluator and the builtins.

jq's type names and total order, arithmetic on JSON values, indexing, and the builtin registry.
Everything works on plain JSON values (dict, list, str, int/float, bool, None) only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

from .budget import current_budget
from .equality import EqualitySet, json_key
from .jq_parser import JqError, Node
from .limits import MAX_ITEMS, MAX_TEXT
from .text import java_double, to_json

Gen = Iterator[Any]


def jq_type(value: Any) -> str:
    """jq's type name."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


_ORDER = {"null": 0, "boolean": 1, "number": 2, "string": 3, "array": 4, "object": 5}


def jq_compare(a: Any, b: Any) -> int:
    """jq's total order: null < false < true < numbers < strings < arrays < objects."""
    ta, tb = jq_type(a), jq_type(b)
    if ta != tb:
        return (_ORDER[ta] > _ORDER[tb]) - (_ORDER[ta] < _ORDER[tb])
    if ta == "array":
        for x, y in zip(a, b, strict=False):
            result = jq_compare(x, y)
            if result:
                return result
        return (len(a) > len(b)) - (len(a) < len(b))
    if ta == "object":
        keys_a, keys_b = sorted(a), sorted(b)
        if keys_a != keys_b:
            return jq_compare(keys_a, keys_b)
        for key in keys_a:
            result = jq_compare(a[key], b[key])
            if result:
                return result
        return 0
    return (a > b) - (a < b)


def truthy(value: Any) -> bool:
    """jq truthiness: only false and null are false."""
    return value is not None and value is not False


def jq_number(value: float) -> int | float:
    """Integral results as ints (how jackson-jq prints 2 rather than 2.0)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def jq_add(a: Any, b: Any) -> Any:
    """jq's ``+``: null is neutral; numbers, strings, arrays and objects of one kind."""
    if a is None:
        return b
    if b is None:
        return a
    ta, tb = jq_type(a), jq_type(b)
    if ta == tb == "number":
        return a + b
    if ta == tb and ta in ("string", "array"):
        return a + b
    if ta == tb == "object":
        return {**a, **b}
    raise JqError(f"{ta} and {tb} cannot be added")


def _subtract(a: Any, b: Any) -> Any:
    if jq_type(a) == jq_type(b) == "number":
        return a - b
    if isinstance(a, list) and isinstance(b, list):
        removed = EqualitySet(jq_equal, b, key=json_key)
        return [x for x in a if x not in removed]
    raise JqError(f"{jq_type(a)} and {jq_type(b)} cannot be subtracted")


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        both = isinstance(out.get(key), dict) and isinstance(value, dict)
        out[key] = _deep_merge(out[key], value) if both else value
    return out


def _multiply(a: Any, b: Any) -> Any:
    ta, tb = jq_type(a), jq_type(b)
    if ta == tb == "number":
        return a * b
    if {ta, tb} == {"string", "number"}:
        text, count = (a, b) if ta == "string" else (b, a)
        if count <= 0:
            return None
        if len(text) * count > MAX_TEXT:
            raise JqError("string repetition too large")
        return text * math.ceil(count)
    if ta == tb == "object":
        return _deep_merge(a, b)
    raise JqError(f"{ta} and {tb} cannot be multiplied")


def _divide(a: Any, b: Any) -> Any:
    if jq_type(a) == jq_type(b) == "number":
        if b == 0:
            raise JqError(f"{a} and {b} cannot be divided because the divisor is zero")
        return jq_number(a / b)
    if isinstance(a, str) and isinstance(b, str):
        return a.split(b) if b else list(a)
    raise JqError(f"{jq_type(a)} and {jq_type(b)} cannot be divided")


def _modulo(a: Any, b: Any) -> Any:
    if jq_type(a) == jq_type(b) == "number":
        if int(b) == 0:
            raise JqError(f"{a} and {b} cannot be divided because the divisor is zero")
        return int(math.fmod(int(a), int(b)))
    raise JqError(f"{jq_type(a)} and {jq_type(b)} cannot be divided")


BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "+": jq_add,
    "-": _subtract,
    "*": _multiply,
    "/": _divide,
    "%": _modulo,
    "==": lambda a, b: jq_compare(a, b) == 0,
    "!=": lambda a, b: jq_compare(a, b) != 0,
    "<": lambda a, b: jq_compare(a, b) < 0,
    "<=": lambda a, b: jq_compare(a, b) <= 0,
    ">": lambda a, b: jq_compare(a, b) > 0,
    ">=": lambda a, b: jq_compare(a, b) >= 0,
}


def index_value(value: Any, key: Any) -> Any:
    """``.[key]``: object field, array index (negative from the end), null stays null."""
    if value is None:
        return None
    if isinstance(value, dict) and isinstance(key, str):
        return value.get(key)
    if isinstance(value, list) and isinstance(key, int | float) and not isinstance(key, bool):
        position = int(key)
        if position < 0:
            position += len(value)
        return value[position] if 0 <= position < len(value) else None
    raise JqError(f"Cannot index {jq_type(value)} with {jq_type(key)}")


def slice_value(value: Any, start: Any, end: Any) -> Any:
    """``.[a:b]`` on arrays and strings."""
    if value is None:
        return None
    if not isinstance(value, list | str):
        raise JqError(f"Cannot index {jq_type(value)} with object")
    lo = None if start is None else int(start)
    hi = None if end is None else int(end)
    return value[lo:hi]


def iterate(value: Any) -> Gen:
    """``.[]``: array items or object values."""
    if isinstance(value, list):
        yield from value
    elif isinstance(value, dict):
        yield from value.values()
    else:
        raise JqError(f"Cannot iterate over {jq_type(value)}")


def jq_equal(a: Any, b: Any) -> bool:
    """jq's ``==``."""
    return jq_compare(a, b) == 0


def _counted_compare(a: Any, b: Any) -> int:
    """jq_compare counted against the render budget (sorting calls it n log n times)."""
    current_budget().spend()
    return jq_compare(a, b)


def sort_key(value: Any) -> Any:
    """A key function implementing jq's total order."""
    return functools.cmp_to_key(_counted_compare)(value)


def jq_tostring(value: Any) -> str:
    """jq's ``tostring``: strings as is, everything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e17:
        return str(int(value))
    if isinstance(value, float):
        return java_double(value)
    return to_json(value)


Handler = Callable[["Evaluator", Node, Any], Gen]
Builtin = Callable[["Evaluator", list[Node], Any], Gen]

#: jq builtins by (name, arity); filled by ``jq_builtins`` and ``jq_builtins_text``.
BUILTINS: dict[tuple[str, int], Builtin] = {}


class Evaluator:
    """Runs a parsed program against one input, counting produced values and evaluations."""

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers
        self.produced = 0
        self.budget = current_budget()

    def run(self, node: Node, value: Any) -> Gen:
        """All outputs of ``node`` applied to ``value``."""
        self.budget.spend()
        return self.handlers[node[0]](self, node, value)

    def first(self, node: Node, value: Any) -> Any:
        """First output of ``node`` (``empty`` → JqError)."""
        for result in self.run(node, value):
            return result
        raise JqError("expression produced no value")

    def count(self) -> None:
        """Count one produced value against the render limit."""
        self.produced += 1
        self.budget.spend()
        if self.produced > MAX_ITEMS:
            raise JqError(f"jq produced more than {MAX_ITEMS} values")


def builtin(name: str, arity: int = 0) -> Callable[[Builtin], Builtin]:
    """Register a generator builtin ``fn(evaluator, args, input)``."""

    def register(fn: Builtin) -> Builtin:
        BUILTINS[(name, arity)] = fn
        return fn

    return register


def simple(name: str) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Register a zero-argument builtin producing exactly one value."""

    def register(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        BUILTINS[(name, 0)] = lambda ev, args, value: iter((fn(value),))
        return fn

    return register


def with_argument(name: str) -> Callable[[Callable[[Any, Any], Any]], Callable[[Any, Any], Any]]:
    """Register a one-argument builtin applied to each value of its argument."""

    def register(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def run(ev: Evaluator, args: list[Node], value: Any) -> Gen:
            for argument in ev.run(args[0], value):
                yield fn(value, argument)

        BUILTINS[(name, 1)] = run
        return fn

    return register


def require(value: Any, kind: str, name: str) -> None:
    """Fail unless ``value`` has jq type ``kind``."""
    if jq_type(value) != kind:
        raise JqError(f"{name} cannot be applied to {jq_type(value)}")
