"""The syntax tree the parser builds and the compiler turns into closures.

Plain data only: no node knows how to evaluate itself, so the tree can be inspected (validation,
tests) without any risk of running template code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class Expr:
    """Base class of expression nodes (every one records the line it starts on)."""

    __slots__ = ()
    line: int


@dataclass(slots=True)
class Args:
    """Call arguments: positional first, then ``name=value`` pairs (Pebble forbids the reverse)."""

    positional: list[Expr] = field(default_factory=list)
    named: list[tuple[str, Expr]] = field(default_factory=list)


@dataclass(slots=True)
class Literal(Expr):
    value: Any
    line: int


@dataclass(slots=True)
class ListLit(Expr):
    items: list[Expr]
    line: int


@dataclass(slots=True)
class MapLit(Expr):
    pairs: list[tuple[Expr, Expr]]
    line: int


@dataclass(slots=True)
class Var(Expr):
    name: str
    line: int


@dataclass(slots=True)
class GetItem(Expr):
    """``obj.key`` or ``obj[key]``: reads a map key or a list index, nothing else."""

    obj: Expr
    key: Expr
    line: int


@dataclass(slots=True)
class MethodCall(Expr):
    """``obj.name(args)``: only resolved against the explicit safe-method table."""

    obj: Expr
    name: str
    args: Args
    line: int


@dataclass(slots=True)
class Call(Expr):
    name: str
    args: Args
    line: int


@dataclass(slots=True)
class FilterCall(Expr):
    input: Expr
    name: str
    args: Args
    line: int


@dataclass(slots=True)
class TestExpr(Expr):
    input: Expr
    name: str
    args: Args
    negate: bool
    line: int


@dataclass(slots=True)
class Unary(Expr):
    op: str
    operand: Expr
    line: int


@dataclass(slots=True)
class Binary(Expr):
    op: str
    left: Expr
    right: Expr
    line: int


@dataclass(slots=True)
class Ternary(Expr):
    condition: Expr
    then: Expr
    otherwise: Expr
    line: int


class Stmt:
    """Base class of template-level nodes."""

    __slots__ = ()


@dataclass(slots=True)
class Text(Stmt):
    value: str


@dataclass(slots=True)
class Output(Stmt):
    expr: Expr
    line: int


@dataclass(slots=True)
class NestedTag(Stmt):
    """A ``{{ }}`` holding ``{% %}`` or ``{{ }}``: valid at deploy time, fails when rendered."""

    source: str
    line: int


@dataclass(slots=True)
class If(Stmt):
    branches: list[tuple[Expr, list[Stmt]]]
    otherwise: list[Stmt] | None


@dataclass(slots=True)
class For(Stmt):
    var: str
    iterable: Expr
    body: list[Stmt]
    otherwise: list[Stmt] | None
    line: int


@dataclass(slots=True)
class Set(Stmt):
    name: str
    expr: Expr
