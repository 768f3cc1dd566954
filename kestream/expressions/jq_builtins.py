"""jq builtins over values, arrays and objects, keyed by (name, arity). Pure functions only."""

from __future__ import annotations

import itertools
import math
from typing import Any

from .budget import current_budget
from .jq_parser import JqError, Node
from .jq_runtime import (
    BUILTINS,
    Evaluator,
    Gen,
    builtin,
    iterate,
    jq_add,
    jq_compare,
    jq_tostring,
    jq_type,
    require,
    simple,
    sort_key,
    truthy,
    with_argument,
)
from .limits import MAX_ITEMS
from .text import to_json

# -- constants and types ------------------------------------------------------------------------
BUILTINS[("true", 0)] = lambda ev, args, value: iter((True,))
BUILTINS[("false", 0)] = lambda ev, args, value: iter((False,))
BUILTINS[("null", 0)] = lambda ev, args, value: iter((None,))
BUILTINS[("empty", 0)] = lambda ev, args, value: iter(())
BUILTINS[("not", 0)] = lambda ev, args, value: iter((not truthy(value),))
BUILTINS[("type", 0)] = lambda ev, args, value: iter((jq_type(value),))


@builtin("error", 0)
def _error(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    raise JqError(value if isinstance(value, str) else to_json(value))
    yield  # pragma: no cover


@builtin("error", 1)
def _error_message(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    for message in ev.run(args[0], value):
        raise JqError(message if isinstance(message, str) else to_json(message))
    yield  # pragma: no cover


@simple("length")
def _length(value: Any) -> Any:
    if value is None:
        return 0
    if isinstance(value, bool):
        raise JqError("boolean has no length")
    if isinstance(value, int | float):
        return abs(value)
    return len(value)


@simple("utf8bytelength")
def _utf8_length(value: Any) -> Any:
    require(value, "string", "utf8bytelength")
    return len(value.encode())


@simple("keys")
def _keys(value: Any) -> Any:
    if isinstance(value, dict):
        return sorted(value)
    if isinstance(value, list):
        return list(range(len(value)))
    raise JqError(f"{jq_type(value)} has no keys")


@simple("keys_unsorted")
def _keys_unsorted(value: Any) -> Any:
    return list(value) if isinstance(value, dict) else _keys(value)


@with_argument("has")
def _has(value: Any, key: Any) -> Any:
    if isinstance(value, dict) and isinstance(key, str):
        return key in value
    if isinstance(value, list) and jq_type(key) == "number":
        return 0 <= key < len(value)
    raise JqError(f"Cannot check whether {jq_type(value)} has a {jq_type(key)} key")


def _contains(a: Any, b: Any) -> bool:
    if jq_type(a) != jq_type(b):
        raise JqError(f"{jq_type(a)} and {jq_type(b)} cannot have their containment checked")
    if isinstance(a, dict):
        return all(k in a and _contains(a[k], v) for k, v in b.items())
    if isinstance(a, list):
        return _array_contains(a, b)
    if isinstance(a, str):
        return b in a
    return bool(a == b)


def _array_contains(a: list[Any], b: list[Any]) -> bool:
    """Every item of ``b`` contained in some item of ``a``: containment, not equality (strings
    match as substrings), so pair by pair, each pair counted against the render budget."""
    budget = current_budget()
    for wanted in b:
        for item in a:
            budget.spend()
            if jq_type(item) == jq_type(wanted) and _contains(item, wanted):
                break
        else:
            return False
    return True


with_argument("contains")(_contains)
with_argument("inside")(lambda value, other: _contains(other, value))


# -- iteration and selection --------------------------------------------------------------------
@builtin("map", 1)
def _map(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    yield [result for item in iterate(value) for result in ev.run(args[0], item)]


@builtin("map_values", 1)
def _map_values(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            for result in ev.run(args[0], item):
                out[key] = result
                break
        yield out
    else:
        yield [r for item in iterate(value) for r in itertools.islice(ev.run(args[0], item), 1)]


@builtin("select", 1)
def _select(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    for condition in ev.run(args[0], value):
        if truthy(condition):
            yield value


@builtin("recurse", 0)
def _recurse(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    yield value
    if isinstance(value, list | dict):
        for item in iterate(value):
            ev.count()
            yield from _recurse(ev, args, item)


@builtin("recurse", 1)
def _recurse_with(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    yield value
    for child in ev.run(args[0], value):
        ev.count()
        yield from _recurse_with(ev, args, child)


@builtin("range", 1)
def _range(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    for end in ev.run(args[0], value):
        yield from _bounded_range(ev, 0, end)


@builtin("range", 2)
def _range2(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    for start in ev.run(args[0], value):
        for end in ev.run(args[1], value):
            yield from _bounded_range(ev, start, end)


def _bounded_range(ev: Evaluator, start: Any, end: Any) -> Gen:
    if jq_type(start) != "number" or jq_type(end) != "number":
        raise JqError("Range bounds must be numeric")
    if end - start > MAX_ITEMS:
        raise JqError(f"range larger than {MAX_ITEMS} values")
    budget = ev.budget
    current = start
    while current < end:
        budget.spend()
        yield current
        current += 1


@builtin("first", 1)
def _first_of(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    yield from itertools.islice(ev.run(args[0], value), 1)


@builtin("last", 1)
def _last_of(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    results = list(ev.run(args[0], value))
    if results:
        yield results[-1]


@builtin("limit", 2)
def _limit(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    for count in ev.run(args[0], value):
        yield from itertools.islice(ev.run(args[1], value), max(int(count), 0))


@builtin("any", 0)
def _any(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    yield any(truthy(item) for item in iterate(value))


@builtin("all", 0)
def _all(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    yield all(truthy(item) for item in iterate(value))


@builtin("any", 1)
def _any_with(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    yield any(truthy(r) for item in iterate(value) for r in ev.run(args[0], item))


@builtin("all", 1)
def _all_with(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    yield all(truthy(r) for item in iterate(value) for r in ev.run(args[0], item))


# -- arrays -----------------------------------------------------------------------------------
@simple("first")
def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else None


@simple("last")
def _last(value: Any) -> Any:
    return value[-1] if isinstance(value, list) and value else None


@with_argument("nth")
def _nth(value: Any, index: Any) -> Any:
    require(value, "array", "nth")
    return value[int(index)] if 0 <= int(index) < len(value) else None


@simple("reverse")
def _reverse(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        return value[::-1]
    require(value, "array", "reverse")
    return value[::-1]


@simple("sort")
def _sort(value: Any) -> Any:
    require(value, "array", "sort")
    return sorted(value, key=sort_key)


@simple("unique")
def _unique(value: Any) -> Any:
    require(value, "array", "unique")
    out: list[Any] = []
    for item in sorted(value, key=sort_key):
        if not out or jq_compare(out[-1], item) != 0:
            out.append(item)
    return out


def _keyed(ev: Evaluator, node: Node, value: Any) -> list[tuple[Any, Any]]:
    require(value, "array", "by-function")
    return [(list(ev.run(node, item)), item) for item in value]


@builtin("sort_by", 1)
def _sort_by(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    pairs = _keyed(ev, args[0], value)
    yield [item for _, item in sorted(pairs, key=lambda p: sort_key(p[0]))]


@builtin("group_by", 1)
def _group_by(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    groups: list[tuple[Any, list[Any]]] = []
    for key, item in sorted(_keyed(ev, args[0], value), key=lambda p: sort_key(p[0])):
        if groups and jq_compare(groups[-1][0], key) == 0:
            groups[-1][1].append(item)
        else:
            groups.append((key, [item]))
    yield [items for _, items in groups]


@builtin("unique_by", 1)
def _unique_by(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    for groups in _group_by(ev, args, value):
        yield [items[0] for items in groups]


def _extreme(value: Any, pick_max: bool) -> Any:
    require(value, "array", "min/max")
    if not value:
        return None
    return (max if pick_max else min)(value, key=sort_key)


simple("min")(lambda value: _extreme(value, False))
simple("max")(lambda value: _extreme(value, True))


@builtin("min_by", 1)
def _min_by(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    pairs = _keyed(ev, args[0], value)
    yield min(pairs, key=lambda p: sort_key(p[0]))[1] if pairs else None


@builtin("max_by", 1)
def _max_by(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    pairs = _keyed(ev, args[0], value)
    yield max(pairs, key=lambda p: sort_key(p[0]))[1] if pairs else None


@simple("add")
def _add_all(value: Any) -> Any:
    result = None
    for item in iterate(value):
        result = jq_add(result, item)
    return result


def _flatten(value: Any, depth: float) -> list[Any]:
    out: list[Any] = []
    for item in value:
        if isinstance(item, list) and depth > 0:
            out.extend(_flatten(item, depth - 1))
        else:
            out.append(item)
    return out


simple("flatten")(lambda value: _flatten(value, math.inf) if isinstance(value, list) else [])
with_argument("flatten")(lambda value, depth: _flatten(value, depth))


@with_argument("join")
def _join(value: Any, separator: Any) -> Any:
    require(value, "array", "join")
    parts = []
    for item in value:
        if isinstance(item, dict | list):
            raise JqError(f"Cannot join with {jq_type(item)}")
        parts.append("" if item is None else jq_tostring(item))
    return str(separator).join(parts)


@simple("to_entries")
def _to_entries(value: Any) -> Any:
    require(value, "object", "to_entries")
    return [{"key": k, "value": v} for k, v in value.items()]


@simple("from_entries")
def _from_entries(value: Any) -> Any:
    out = {}
    for entry in iterate(value):
        key = next((entry[k] for k in ("key", "k", "name", "Name", "Key", "K") if k in entry), None)
        value_of = next((entry[k] for k in ("value", "v", "Value", "V") if k in entry), None)
        out[key if isinstance(key, str) else jq_tostring(key)] = value_of
    return out


@builtin("with_entries", 1)
def _with_entries(ev: Evaluator, args: list[Node], value: Any) -> Gen:
    mapped = [r for entry in _to_entries(value) for r in ev.run(args[0], entry)]
    yield _from_entries(mapped)
