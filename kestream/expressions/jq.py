"""Evaluator for the safe jq subset, and the ``jq`` filter (Kestra returns the list of results).

Programs only see their input value; builtins are pure functions over JSON values. The number of
results, ``range`` sizes and string repetition are capped by the render limits.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from . import jq_builtins, jq_builtins_text  # noqa: F401 - they fill BUILTINS
from .errors import RenderError
from .jq_parser import JqError, Node, parse_jq
from .jq_runtime import (
    BINARY,
    BUILTINS,
    Evaluator,
    Gen,
    index_value,
    iterate,
    jq_number,
    jq_type,
    slice_value,
    truthy,
)
from .registry import template_filter
from .text import parse_json, to_json


def _identity(ev: Evaluator, node: Node, value: Any) -> Gen:
    yield value


def _literal(ev: Evaluator, node: Node, value: Any) -> Gen:
    yield node[1]


def _index(ev: Evaluator, node: Node, value: Any) -> Gen:
    for target in ev.run(node[1], value):
        for key in ev.run(node[2], value):
            yield index_value(target, key)


def _slice(ev: Evaluator, node: Node, value: Any) -> Gen:
    for target in ev.run(node[1], value):
        start = ev.first(node[2], value) if node[2] is not None else None
        end = ev.first(node[3], value) if node[3] is not None else None
        yield slice_value(target, start, end)


def _iterate(ev: Evaluator, node: Node, value: Any) -> Gen:
    for target in ev.run(node[1], value):
        for item in iterate(target):
            ev.count()
            yield item


def _try(ev: Evaluator, node: Node, value: Any) -> Gen:
    results = ev.run(node[1], value)
    while True:
        try:
            result = next(results)
        except StopIteration:
            return
        except JqError as exc:
            if node[2] is not None:
                yield from ev.run(node[2], str(exc))
            return
        yield result


def _pipe(ev: Evaluator, node: Node, value: Any) -> Gen:
    for middle in ev.run(node[1], value):
        yield from ev.run(node[2], middle)


def _comma(ev: Evaluator, node: Node, value: Any) -> Gen:
    yield from ev.run(node[1], value)
    yield from ev.run(node[2], value)


def _alternative(ev: Evaluator, node: Node, value: Any) -> Gen:
    found = False
    try:
        for result in ev.run(node[1], value):
            if truthy(result):
                found = True
                yield result
    except JqError:
        pass
    if not found:
        yield from ev.run(node[2], value)


def _and(ev: Evaluator, node: Node, value: Any) -> Gen:
    for left in ev.run(node[1], value):
        if not truthy(left):
            yield False
            continue
        for right in ev.run(node[2], value):
            yield truthy(right)


def _or(ev: Evaluator, node: Node, value: Any) -> Gen:
    for left in ev.run(node[1], value):
        if truthy(left):
            yield True
            continue
        for right in ev.run(node[2], value):
            yield truthy(right)


def _binop(ev: Evaluator, node: Node, value: Any) -> Gen:
    operation = BINARY[node[1]]
    for right in ev.run(node[3], value):
        for left in ev.run(node[2], value):
            yield operation(left, right)


def _negate(ev: Evaluator, node: Node, value: Any) -> Gen:
    for result in ev.run(node[1], value):
        if jq_type(result) != "number":
            raise JqError(f"{jq_type(result)} cannot be negated")
        yield -result


def _array(ev: Evaluator, node: Node, value: Any) -> Gen:
    yield [] if node[1] is None else list(ev.run(node[1], value))


def _object(ev: Evaluator, node: Node, value: Any) -> Gen:
    partials: list[dict[str, Any]] = [{}]
    for key_node, value_node in node[1]:
        extended = []
        for partial in partials:
            for key in ev.run(key_node, value):
                if not isinstance(key, str):
                    raise JqError(f"Object keys must be strings, not {jq_type(key)}")
                for item in ev.run(value_node, value):
                    extended.append({**partial, key: item})
        partials = extended
    yield from partials


def _if(ev: Evaluator, node: Node, value: Any) -> Gen:
    branches, otherwise = node[1], node[2]
    yield from _if_branch(ev, branches, otherwise, value)


def _if_branch(
    ev: Evaluator, branches: list[tuple[Node, Node]], otherwise: Node, value: Any
) -> Gen:
    if not branches:
        yield from ev.run(otherwise, value)
        return
    condition, then = branches[0]
    for result in ev.run(condition, value):
        if truthy(result):
            yield from ev.run(then, value)
        else:
            yield from _if_branch(ev, branches[1:], otherwise, value)


def _call(ev: Evaluator, node: Node, value: Any) -> Gen:
    name, args = node[1], node[2]
    builtin = BUILTINS.get((name, len(args)))
    if builtin is None:
        raise JqError(f"jq function {name}/{len(args)} is not supported")
    return builtin(ev, args, value)


_NODE_HANDLERS: dict[str, Callable[[Evaluator, Node, Any], Gen]] = {
    "identity": _identity,
    "literal": _literal,
    "index": _index,
    "slice": _slice,
    "iterate": _iterate,
    "try": _try,
    "pipe": _pipe,
    "comma": _comma,
    "alt": _alternative,
    "and": _and,
    "or": _or,
    "binop": _binop,
    "neg": _negate,
    "array": _array,
    "object": _object,
    "if": _if,
    "call": _call,
}


@lru_cache(maxsize=256)
def compile_jq(expression: str) -> Node:
    """Parsed program, cached by text."""
    return parse_jq(expression)


def jq_values(value: Any, expression: str) -> list[Any]:
    """All results of ``expression`` on ``value`` (text is parsed as JSON first)."""
    program = compile_jq(expression)
    data = value if isinstance(value, str) else to_json(value)
    try:
        document = parse_json(data)
    except ValueError as exc:
        raise RenderError(f"Unable to parse jq value '{value}': {exc}") from None
    evaluator = Evaluator(_NODE_HANDLERS)
    out = []
    for result in evaluator.run(program, document):
        evaluator.count()
        out.append(jq_number(result) if isinstance(result, float) else result)
    return out


@template_filter("jq")
def jq_filter(value: Any, expression: Any) -> Any:
    """Kestra's ``jq``: the list of every value the expression produces."""
    if value is None:
        return None
    if not isinstance(expression, str):
        raise RenderError("The 'jq' filter expects an argument 'expression'.")
    try:
        return jq_values(value, expression)
    except JqError as exc:
        raise RenderError(f"Failed to resolve JQ expression '{expression}': {exc}") from None
    except RecursionError:
        raise RenderError(f"JQ expression '{expression}' recursed too deeply") from None
