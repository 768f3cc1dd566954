"""The explicit tables of filters, functions and tests a template may call.

A template can only ever reach Python code registered here. Each entry records its parameter names
(read once from the signature) so that calls are bound at compile time: ``f(a, name=b)`` becomes
a fixed positional/keyword plan, and a wrong argument name is reported instead of reaching Python.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import RenderError

F = TypeVar("F", bound=Callable[..., Any])

#: Argument names Kestra users write that differ from the canonical ones.
ARGUMENT_ALIASES = {"timezone": "timeZone", "existing_format": "existingFormat"}


@dataclass(frozen=True, slots=True)
class Builtin:
    """One callable: ``kind`` is filter/function/test; ``uses_ctx`` gets the raw context first."""

    kind: str
    name: str
    impl: Callable[..., Any]
    params: tuple[str, ...]
    required: int
    varargs: bool
    uses_ctx: bool

    def plan(self, positional: int, named: list[str]) -> list[str]:
        """Canonical names of the named arguments; RenderError when they do not fit."""
        if positional > len(self.params) and not self.varargs:
            raise RenderError(
                f"{self.title} expects at most {len(self.params)} argument(s), got {positional}"
            )
        names = [ARGUMENT_ALIASES.get(name, name) for name in named]
        for index, name in enumerate(names):
            if name not in self.params:
                raise RenderError(f"{self.title} has no argument named '{named[index]}'")
            if self.params.index(name) < positional or names.count(name) > 1:
                raise RenderError(f"{self.title} got argument '{named[index]}' twice")
        given = set(self.params[:positional]) | set(names)
        missing = [p for p in self.params[: self.required] if p not in given]
        if missing:
            raise RenderError(f"{self.title} expects an argument '{missing[0]}'")
        return names

    @property
    def title(self) -> str:
        """``Filter [name]`` style label used in every message about this callable."""
        return f"{self.kind.capitalize()} [{self.name}]"


FILTERS: dict[str, Builtin] = {}
FUNCTIONS: dict[str, Builtin] = {}
TESTS: dict[str, Builtin] = {}
_TABLES = {"filter": FILTERS, "function": FUNCTIONS, "test": TESTS}


def _register(kind: str, names: tuple[str, ...], uses_ctx: bool) -> Callable[[F], F]:
    """Decorator body shared by ``filter``, ``function`` and ``test``."""

    def decorate(impl: F) -> F:
        parameters = list(inspect.signature(impl).parameters.values())
        skip = (1 if kind != "function" else 0) + (1 if uses_ctx else 0)
        parameters = parameters[skip:]
        varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
        plain = [p for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL]
        required = sum(1 for p in plain if p.default is inspect.Parameter.empty)
        for name in names:
            _TABLES[kind][name] = Builtin(
                kind, name, impl, tuple(p.name for p in plain), required, varargs, uses_ctx
            )
        return impl

    return decorate


def template_filter(*names: str, uses_ctx: bool = False) -> Callable[[F], F]:
    """Register a filter ``impl(input, *args)`` under one or more names."""
    return _register("filter", names, uses_ctx)


def template_function(*names: str, uses_ctx: bool = False) -> Callable[[F], F]:
    """Register a function ``impl(*args)`` (``impl(ctx, *args)`` with ``uses_ctx``)."""
    return _register("function", names, uses_ctx)


def template_test(*names: str) -> Callable[[F], F]:
    """Register an ``is`` test ``impl(input, *args) -> bool``."""
    return _register("test", names, False)
