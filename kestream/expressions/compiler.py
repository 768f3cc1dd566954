"""Compile template statements (text, ``{{ }}``, ``if``, ``for``, ``set``) into closures.

Each statement becomes a closure ``scope -> str``; a template body is the join of its parts, with
specialised joins for the shapes that dominate real flows (text followed by one expression).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from . import nodes as n
from .access import Scope
from .budget import current_budget
from .errors import RenderError
from .expr_compiler import ExprFn, compile_expr, raiser
from .limits import MAX_TEXT, text_too_long
from .operators import check_text, to_bool, type_name
from .text import to_text
from .values import SEQUENCES, Entry

StmtFn = Callable[[Scope], str]

#: Outputs longer than this count towards the render's text limit as they are produced, so that
#: ``{{ s }}{{ s }}...`` with a long ``s`` is refused before the parts are joined; the rest is
#: bounded by the template's own length or by the loop that repeats it (which counts everything).
_BIG_OUTPUT = 4096


def compile_body(stmts: list[n.Stmt]) -> StmtFn:
    """One closure producing the concatenated output of ``stmts``; each statement compiled is
    charged to the render budget in progress (see :mod:`.lexer`)."""
    parts: list[str | StmtFn] = []
    budget = current_budget()
    for stmt in stmts:
        budget.spend(1)
        part = _compile_stmt(stmt)
        if isinstance(part, str) and parts and isinstance(parts[-1], str):
            parts[-1] += part
        elif part != "":
            parts.append(part)
    return _join(parts)


def _join(parts: list[str | StmtFn]) -> StmtFn:
    """Specialised joins for the shapes that dominate real flows (text + one expression)."""
    if not parts:
        return lambda scope: ""
    if len(parts) == 1:
        only = parts[0]
        return (lambda scope: only) if isinstance(only, str) else only
    if len(parts) == 2 and isinstance(parts[0], str) and not isinstance(parts[1], str):
        prefix, tail = parts[0], parts[1]
        return lambda scope: prefix + tail(scope)
    fns = [(lambda scope, p=p: p) if isinstance(p, str) else p for p in parts]
    return lambda scope: "".join([fn(scope) for fn in fns])


def is_metered(node: object) -> bool:
    """Whether a template needs a time budget: it loops, or calls filters or functions.

    Anything else evaluates each node once, at a cost linear in the template and its inputs
    (reading variables, operators, methods, tests), so such renders skip the budget entirely:
    ``Hello {{ inputs.name }}`` pays nothing for it.
    """
    if isinstance(node, n.For | n.FilterCall | n.Call):
        return True
    if isinstance(node, n.Binary) and node.op == "..":
        return True
    if isinstance(node, list | tuple):
        return any(is_metered(item) for item in node)
    if isinstance(node, n.Literal | n.Text) or not is_dataclass(node):
        return False
    return any(is_metered(getattr(node, f.name)) for f in fields(node))


def _compile_stmt(stmt: n.Stmt) -> str | StmtFn:
    """A statement as constant text or a closure."""
    if isinstance(stmt, n.Text):
        return stmt.value
    if isinstance(stmt, n.Output):
        return _output(compile_expr(stmt.expr))
    if isinstance(stmt, n.NestedTag):
        return _nested_tag(stmt)
    if isinstance(stmt, n.If):
        return _if(stmt)
    if isinstance(stmt, n.For):
        return _for(stmt)
    if isinstance(stmt, n.Set):
        return _set(stmt)
    raise TypeError(f"unknown statement {stmt!r}")  # pragma: no cover


def _output(fn: ExprFn) -> StmtFn:
    """``{{ expr }}``: the value as ``to_text`` prints it."""
    big = _BIG_OUTPUT  # a closure variable: this runs for every output

    def output(scope: Scope) -> str:
        value = fn(scope)
        text = value if type(value) is str else to_text(value)
        if len(text) > big:
            scope.add_output(len(text))
        return text

    return output


def _nested_tag(stmt: n.NestedTag) -> StmtFn:
    """Kestra deploys such expressions but fails the task run that renders them."""
    message = "Tags cannot be nested inside an expression"
    return raiser(message, stmt.line)


def _if(stmt: n.If) -> StmtFn:
    """First branch whose condition holds (Kestra-style truthiness), else the else body."""
    branches = [(compile_expr(cond), compile_body(body)) for cond, body in stmt.branches]
    otherwise = compile_body(stmt.otherwise) if stmt.otherwise is not None else None

    def choose(scope: Scope) -> str:
        for cond, body in branches:
            if to_bool(cond(scope)):
                return body(scope)
        return otherwise(scope) if otherwise is not None else ""

    return choose


def _iterable(value: Any, line: int) -> list[Any]:
    """What a ``for`` walks: list items, or map entries (``.key`` / ``.value``)."""
    if isinstance(value, Mapping):
        return [Entry(k, v) for k, v in value.items()]
    if isinstance(value, SEQUENCES):
        return list(value)
    raise RenderError(f"Not an iterable object: a {type_name(value)}", line)


def _for(stmt: n.For) -> StmtFn:
    """Pebble's for: null renders nothing, empty renders ``else``, ``loop`` is 0-based."""
    iterable_fn, body = compile_expr(stmt.iterable), compile_body(stmt.body)
    otherwise = compile_body(stmt.otherwise) if stmt.otherwise is not None else None
    var, line = stmt.var, stmt.line

    def loop(scope: Scope) -> str:
        value = iterable_fn(scope)
        if value is None:
            return ""
        items = _iterable(value, line)
        if not items:
            return otherwise(scope) if otherwise is not None else ""
        length = len(items)
        state = {"index": 0, "revindex": 0, "first": True, "last": False, "length": length}
        frame: dict[str, Any] = {"loop": state}
        scope.frames.append(frame)
        spend, limit = scope.budget.spend, MAX_TEXT
        out: list[str] = []
        size = 0
        try:
            for index, item in enumerate(items):
                # One loop map updated in place, as Pebble does.
                state["index"], state["revindex"] = index, length - index - 1
                state["first"], state["last"] = index == 0, index == length - 1
                frame[var] = item
                text = body(scope)
                size += len(text)
                if size > limit:
                    raise text_too_long()
                out.append(text)
                if not index & 63:  # iterations counted 64 at a time: the hottest loop
                    spend(64)
        finally:
            scope.frames.pop()
        return check_text("".join(out))

    return loop


def _set(stmt: n.Set) -> StmtFn:
    """``set`` assigns in the innermost scope already holding the name (Pebble)."""
    fn, name = compile_expr(stmt.expr), stmt.name

    def assign(scope: Scope) -> str:
        scope.assign(name, fn(scope))
        return ""

    return assign
