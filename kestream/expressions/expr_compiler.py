"""Compile expression nodes into closures ``scope -> value``, once per template text.

No tree walking by type at render time and no ``eval``: each node becomes a Python closure over its
children's closures. Attribute chains with constant keys (``outputs.t1.value``) become one loop over
dict lookups, the hot path of real flows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import nodes as n
from .access import Scope, get_item
from .errors import RenderError, RenderLimitError, UndefinedError
from .functions import range_function
from .methods import call_method
from .operators import (
    add,
    concat,
    contains,
    divide,
    equals,
    greater,
    greater_equal,
    less,
    less_equal,
    modulo,
    multiply,
    negate,
    subtract,
    to_bool,
    type_name,
)
from .registry import FILTERS, FUNCTIONS, TESTS, Builtin

ExprFn = Callable[[Scope], Any]

BINARY_FUNCTIONS: dict[str, Callable[[Any, Any], Any]] = {
    "==": equals,
    "equals": equals,
    "!=": lambda a, b: not equals(a, b),
    ">": greater,
    ">=": greater_equal,
    "<": less,
    "<=": less_equal,
    "+": add,
    "-": subtract,
    "*": multiply,
    "/": divide,
    "%": modulo,
    "~": concat,
    "contains": contains,
    "in": lambda a, b: contains(b, a),
    "not in": lambda a, b: not contains(b, a),
}


def raiser(message: str, line: int) -> ExprFn:
    """A closure failing at render time (unknown filter/function, bad arguments)."""

    def fail(scope: Scope) -> Any:
        raise RenderError(message, line)

    return fail


def _rescued(fn: ExprFn) -> ExprFn:
    """Evaluate ``fn``; a missing variable/key yields None (for ``default`` and ``is defined``)."""

    def rescue(scope: Scope) -> Any:
        try:
            return fn(scope)
        except UndefinedError:
            return None

    return rescue


def compile_expr(node: n.Expr) -> ExprFn:
    """The closure computing ``node``."""
    return _EXPR_COMPILERS[type(node)](node)


def _literal(node: n.Literal) -> ExprFn:
    value = node.value
    return lambda scope: value


def _list(node: n.ListLit) -> ExprFn:
    fns = [compile_expr(item) for item in node.items]
    return lambda scope: [fn(scope) for fn in fns]


def _map_key(node: n.Expr) -> ExprFn:
    """A map-literal key; a bare name that is not a variable stands for itself (``{a: 1}``)."""
    if isinstance(node, n.Var):
        name, line = node.name, node.line
        return lambda scope: scope.lookup(name, line) if scope.is_defined(name) else name
    return compile_expr(node)


def _map(node: n.MapLit) -> ExprFn:
    pairs = [(_map_key(k), compile_expr(v)) for k, v in node.pairs]
    line = node.line

    def build(scope: Scope) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key_fn, value_fn in pairs:
            key = key_fn(scope)
            if isinstance(key, list | dict):
                raise RenderError(f"A map key cannot be a {type_name(key)}", line)
            out[key] = value_fn(scope)
        return out

    return build


def _var(node: n.Var) -> ExprFn:
    """A root variable; strict: an absent name raises UndefinedError."""
    name, line = node.name, node.line

    def var(scope: Scope) -> Any:
        if scope.frames:
            return scope.lookup(name, line)
        try:
            return scope.ctx[name]
        except KeyError:
            raise UndefinedError(name, line) from None

    return var


def _constant_path(node: n.GetItem) -> tuple[n.Expr, list[tuple[Any, int]]] | None:
    """``root.a['b'].c`` with constant keys, as (root, [(key, line)...]); None otherwise."""
    steps: list[tuple[Any, int]] = []
    current: n.Expr = node
    while isinstance(current, n.GetItem):
        if not isinstance(current.key, n.Literal):
            return None
        steps.append((current.key.value, current.line))
        current = current.obj
    steps.reverse()
    return current, steps


def _get_item(node: n.GetItem) -> ExprFn:
    """``a.b`` / ``a[k]``; constant chains are walked in one loop."""
    path = _constant_path(node)
    if path is not None:
        root_fn = compile_expr(path[0])
        steps = path[1]

        def walk(scope: Scope) -> Any:
            obj = root_fn(scope)
            for key, line in steps:
                obj = obj[key] if type(obj) is dict and key in obj else get_item(obj, key, line)
            return obj

        return walk
    obj_fn, key_fn, line = compile_expr(node.obj), compile_expr(node.key), node.line
    return lambda scope: get_item(obj_fn(scope), key_fn(scope), line)


def _method(node: n.MethodCall) -> ExprFn:
    """``obj.name(args)`` through the explicit safe-method tables only."""
    obj_fn = compile_expr(node.obj)
    arg_fns = [compile_expr(a) for a in node.args.positional]
    name, line = node.name, node.line

    def call(scope: Scope) -> Any:
        obj = obj_fn(scope)
        args = [fn(scope) for fn in arg_fns]
        scope.budget.spend(_weight(obj))
        try:
            return call_method(obj, name, args)
        except (UndefinedError, RenderLimitError):
            raise
        except RenderError as exc:
            raise RenderError(exc.message, line) from None

    return call


_SIZED = frozenset((str, list, dict))


def _weight(value: Any) -> int:
    """Budget steps for one call on ``value``: one, plus one per 256 items or characters."""
    return 1 + (len(value) >> 8 if type(value) in _SIZED else 0)


def _failure(title: str, exc: Exception, line: int) -> RenderError:
    """The RenderError reported when a registered callable raises (limits pass unchanged)."""
    if isinstance(exc, RenderLimitError):
        return exc
    if isinstance(exc, RenderError):
        return RenderError(f"{title}: {exc.message}", line)
    if isinstance(exc, RecursionError):
        return RenderError(f"{title}: value nested too deeply", line)
    return RenderError(f"{title} failed: {exc}", line)


def _invoke(builtin: Builtin, args: n.Args, line: int, first: ExprFn | None = None) -> ExprFn:
    """Bind a registered callable to its argument closures (``first`` is a filter/test input).

    Arguments are evaluated outside the ``try`` so that an error inside an argument keeps its own
    message instead of being attributed to this callable.
    """
    try:
        names = builtin.plan(len(args.positional), [name for name, _ in args.named])
    except RenderError as exc:
        return raiser(exc.message, line)
    positional = ([first] if first is not None else []) + [compile_expr(a) for a in args.positional]
    if len(positional) == 1 and not args.named and not builtin.uses_ctx:
        return _invoke_one(builtin, positional[0], line)
    named = list(zip(names, [compile_expr(v) for _, v in args.named], strict=True))
    impl, uses_ctx, title = builtin.impl, builtin.uses_ctx, builtin.title

    def call(scope: Scope) -> Any:
        values = [fn(scope) for fn in positional]
        scope.budget.spend(_weight(values[0]) if values else 1)
        if uses_ctx:
            values.insert(0, scope.ctx)
        kwargs = {name: fn(scope) for name, fn in named}
        try:
            return impl(*values, **kwargs)
        except UndefinedError:
            raise
        except Exception as exc:
            raise _failure(title, exc, line) from None

    return call


def _invoke_one(builtin: Builtin, argument: ExprFn, line: int) -> ExprFn:
    """Fast path for the common single-input call (``x | upper``, ``x is defined``)."""
    impl, title = builtin.impl, builtin.title

    def call(scope: Scope) -> Any:
        value = argument(scope)
        budget = scope.budget  # budget.spend(_weight(value)) inlined: the hottest call path
        budget.left -= 1 + (len(value) >> 8 if type(value) in _SIZED else 0)
        if budget.left <= 0:
            budget.check()
        try:
            return impl(value)
        except UndefinedError:
            raise
        except Exception as exc:
            raise _failure(title, exc, line) from None

    return call


def _call(node: n.Call) -> ExprFn:
    builtin = FUNCTIONS.get(node.name)
    if builtin is None:
        return raiser(f"Function or Macro [{node.name}] does not exist", node.line)
    return _invoke(builtin, node.args, node.line)


def _filter(node: n.FilterCall) -> ExprFn:
    builtin = FILTERS.get(node.name)
    if builtin is None:
        return raiser(f"Filter [{node.name}] does not exist", node.line)
    input_fn = compile_expr(node.input)
    if node.name == "default":
        input_fn = _rescued(input_fn)
    return _invoke(builtin, node.args, node.line, input_fn)


def _test(node: n.TestExpr) -> ExprFn:
    builtin = TESTS.get(node.name)
    if builtin is None:
        return raiser(f"Test [{node.name}] does not exist", node.line)
    input_fn = compile_expr(node.input)
    if node.name == "defined":
        input_fn = _rescued(input_fn)
    test = _invoke(builtin, node.args, node.line, input_fn)
    if node.negate:
        return lambda scope: not test(scope)
    return lambda scope: bool(test(scope))


def _unary(node: n.Unary) -> ExprFn:
    fn = compile_expr(node.operand)
    if node.op == "not":
        return lambda scope: not to_bool(fn(scope))
    if node.op == "-":
        return lambda scope: negate(fn(scope))
    return lambda scope: negate(negate(fn(scope)))


def _coalesce(left: ExprFn, right: ExprFn, rescue_null: bool) -> ExprFn:
    """``??`` (undefined or null) and ``???`` (undefined only), Kestra's operators."""

    def coalesce(scope: Scope) -> Any:
        try:
            value = left(scope)
        except UndefinedError:
            return right(scope)
        if value is None and rescue_null:
            return right(scope)
        return value

    return coalesce


def _range_operator(left: ExprFn, right: ExprFn, line: int) -> ExprFn:
    def make_range(scope: Scope) -> list[Any]:
        try:
            return range_function(left(scope), right(scope))
        except (UndefinedError, RenderLimitError):
            raise
        except RenderError as exc:
            raise RenderError(exc.message, line) from None

    return make_range


def _binary(node: n.Binary) -> ExprFn:
    """Binary operators; ``and``/``or``/``??`` short-circuit, the rest evaluate both sides."""
    left, right, op, line = compile_expr(node.left), compile_expr(node.right), node.op, node.line
    if op == "and":
        return lambda scope: to_bool(left(scope)) and to_bool(right(scope))
    if op == "or":
        return lambda scope: to_bool(left(scope)) or to_bool(right(scope))
    if op in ("??", "???"):
        return _coalesce(left, right, op == "??")
    if op == "..":
        return _range_operator(left, right, line)
    function = BINARY_FUNCTIONS[op]

    def apply(scope: Scope) -> Any:
        a = left(scope)
        b = right(scope)
        try:
            return function(a, b)
        except RenderLimitError:
            raise
        except RenderError as exc:
            raise RenderError(exc.message, line) from None

    return apply


def _ternary(node: n.Ternary) -> ExprFn:
    cond, then, otherwise = (compile_expr(x) for x in (node.condition, node.then, node.otherwise))
    return lambda scope: then(scope) if to_bool(cond(scope)) else otherwise(scope)


_EXPR_COMPILERS: dict[type, Callable[[Any], ExprFn]] = {
    n.Literal: _literal,
    n.ListLit: _list,
    n.MapLit: _map,
    n.Var: _var,
    n.GetItem: _get_item,
    n.MethodCall: _method,
    n.Call: _call,
    n.FilterCall: _filter,
    n.TestExpr: _test,
    n.Unary: _unary,
    n.Binary: _binary,
    n.Ternary: _ternary,
}
