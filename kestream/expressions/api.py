"""Public entry points: compile once (LRU-cached), render many times, validate at deploy time."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

# Importing these modules fills the filter/function/test registries.
from . import (  # noqa: F401  # noqa: F401
    filters_collections,
    filters_data,
    filters_dates,
    filters_text,
    functions,
    jq,
    jq_builtins,
    predicates,
)
from .access import Scope
from .compiler import StmtFn, compile_body
from .errors import RenderError, TemplateSyntaxError, UndefinedError, undefined_message
from .lexer import tokenize
from .parser import parse

CACHE_SIZE = 4096


class Template:
    """A compiled template: ``render(ctx)`` only runs closures."""

    __slots__ = ("_fn", "source")

    def __init__(self, source: str, fn: StmtFn) -> None:
        self.source = source
        self._fn = fn

    def render(self, ctx: Mapping[str, Any]) -> str:
        """Render with ``ctx``; every failure is a RenderError carrying Kestra's message."""
        try:
            return self._fn(Scope(ctx))
        except UndefinedError as exc:
            line = exc.line or 1
            message = undefined_message(exc.name, self.source, line)
            raise RenderError(message, line, self.source) from None
        except RenderError as exc:
            line = exc.line or 1
            message = f"{exc.message} (expression `{self.source}`, line {line})"
            raise RenderError(message, line, self.source) from None
        except RecursionError:
            raise RenderError(
                f"Value nested too deeply in `{self.source}`", 1, self.source
            ) from None
        except Exception as exc:  # a bug or an exotic value must still fail only this render
            message = f"Unable to render `{self.source}`: {type(exc).__name__}: {exc}"
            raise RenderError(message, 1, self.source) from None

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


@lru_cache(maxsize=CACHE_SIZE)
def compile_template(text: str) -> Template:
    """Parse and compile ``text``; raises TemplateSyntaxError."""
    try:
        return Template(text, compile_body(parse(tokenize(text), text)))
    except RecursionError:
        raise TemplateSyntaxError("Template nested too deeply", 1, text) from None


def is_template(text: str) -> bool:
    """Whether ``text`` holds ``{{``, ``{%`` or ``{#`` (otherwise it renders to itself)."""
    return "{" in text and ("{{" in text or "{%" in text or "{#" in text)


def render(text: str, ctx: Mapping[str, Any]) -> str:
    """Render ``text``; plain text comes back unchanged without being compiled."""
    if "{" not in text or not ("{{" in text or "{%" in text or "{#" in text):
        return text
    return compile_template(text).render(ctx)


def render_value(value: Any, ctx: Mapping[str, Any]) -> Any:
    """Render every string inside dicts/lists (keys too); other values are returned as is."""
    if isinstance(value, str):
        return render(value, ctx)
    if isinstance(value, dict):
        return {render_value(k, ctx): render_value(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(item, ctx) for item in value]
    if isinstance(value, tuple):
        return [render_value(item, ctx) for item in value]
    return value


def validate_template(text: str) -> TemplateSyntaxError | None:
    """The deploy-time check: the syntax error, or None when ``text`` compiles."""
    try:
        compile_template(text)
    except TemplateSyntaxError as exc:
        return exc
    return None


def is_truthy(rendered: object) -> bool:
    """Kestra's truthiness of a rendered condition: '', '0', '-0', 'false' (any case) are false."""
    if rendered is None:
        return False
    text = str(rendered).strip() if not isinstance(rendered, bool) else str(rendered).lower()
    return not (text == "" or text.lower() == "false" or text in ("0", "-0"))
