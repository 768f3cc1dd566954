"""Public entry points: compile once (LRU-cached), render many times, validate at deploy time."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

# Importing these modules fills the filter/function/test registries.
from . import (  # noqa: F401
    file_functions,
    filters_collections,
    filters_data,
    filters_dates,
    filters_text,
    functions,
    jq,
    jq_builtins,
    predicates,
    render_function,
)
from .access import Scope
from .budget import UNBOUNDED, close_budget, current_budget, open_budget
from .compiler import StmtFn, compile_body, is_metered
from .errors import (
    RenderError,
    RenderLimitError,
    TemplateSyntaxError,
    UndefinedError,
    undefined_message,
)
from .lexer import tokenize
from .parser import parse

CACHE_SIZE = 4096


class Template:
    """A compiled template: ``render(ctx)`` only runs closures."""

    __slots__ = ("_fn", "_metered", "source")

    def __init__(self, source: str, fn: StmtFn, metered: bool = True) -> None:
        self.source = source
        self._fn = fn
        self._metered = metered

    def render(self, ctx: Mapping[str, Any]) -> str:
        """Render with ``ctx`` within one budget (the caller's, when it opened one).

        Every failure is a RenderError carrying Kestra's message; past the budget or a size
        limit, a RenderLimitError whose message begins "render exceeded" and names the task.
        """
        # A template that neither loops nor calls anything needs no budget (see is_metered).
        budget, opened = open_budget() if self._metered else (UNBOUNDED, False)
        try:
            return self._fn(Scope(ctx, budget))
        except RenderLimitError as exc:
            where = f" in task '{_task_id(ctx)}'" if _task_id(ctx) is not None else ""
            message = f"{exc.message}{where} (expression `{_excerpt(self.source)}`)"
            raise RenderLimitError(message, exc.line, self.source) from None
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
        finally:
            if opened:
                close_budget()

    def render_nested(self, ctx: Mapping[str, Any]) -> str:
        """Render inside a render in progress (``render()``): its budget, and its error handling,
        so limit errors reach the outer template unchanged; only a missing variable is named
        here, with this template's own text."""
        try:
            return self._fn(Scope(ctx, current_budget()))
        except UndefinedError as exc:
            line = exc.line or 1
            raise RenderError(undefined_message(exc.name, self.source, line), line) from None

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def _task_id(ctx: Mapping[str, Any]) -> str | None:
    """The id of the task whose property is rendered (the executor puts ``task`` in the context)."""
    task = ctx.get("task")
    return task.get("id") if isinstance(task, Mapping) else None


def _excerpt(source: str, limit: int = 200) -> str:
    """The start of a template for an error message (a bomb may be a long text)."""
    return source if len(source) <= limit else source[:limit] + "..."


def compile_uncached(text: str) -> Template:
    """Parse and compile ``text`` without keeping it (text that anyone may send, which a cache
    of thousands of entries would otherwise keep in memory); raises TemplateSyntaxError.

    The lexer, parser and compiler charge the render budget in progress: text compiled while
    rendering (``render()``) spends the caller's budget, and a compile outside any render gets a
    budget of its own, so no text is compiled for longer than one render may run
    (RenderLimitError "render exceeded ... while compiling").
    """
    _, opened = open_budget()
    try:
        stmts = parse(tokenize(text), text)
        return Template(text, compile_body(stmts), is_metered(stmts))
    except RecursionError:
        raise TemplateSyntaxError("Template nested too deeply", 1, text) from None
    except RenderLimitError as exc:
        message = f"{exc.message} while compiling a template of {len(text)} characters"
        raise RenderLimitError(message, 1, text) from None
    finally:
        if opened:
            close_budget()


@lru_cache(maxsize=CACHE_SIZE)
def compile_template(text: str) -> Template:
    """Parse and compile ``text``, kept for the next render of the same text."""
    return compile_uncached(text)


def is_template(text: str) -> bool:
    """Whether ``text`` holds ``{{``, ``{%`` or ``{#`` (otherwise it renders to itself)."""
    return "{" in text and ("{{" in text or "{%" in text or "{#" in text)


def render(text: str, ctx: Mapping[str, Any]) -> str:
    """Render ``text``; plain text comes back unchanged without being compiled."""
    if "{" not in text or not ("{{" in text or "{%" in text or "{#" in text):
        return text
    return compile_template(text).render(ctx)


def render_value(value: Any, ctx: Mapping[str, Any]) -> Any:
    """Render every string inside dicts/lists (keys too); other values are returned as is.

    The whole value (one property, one output) shares one render budget.
    """
    if isinstance(value, str):
        return render(value, ctx)
    _, opened = open_budget()
    try:
        return _render_nested(value, ctx)
    finally:
        if opened:
            close_budget()


def _render_nested(value: Any, ctx: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        return render(value, ctx)
    if isinstance(value, dict):
        return {_render_nested(k, ctx): _render_nested(v, ctx) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_render_nested(item, ctx) for item in value]
    return value


def validate_template(text: str) -> TemplateSyntaxError | None:
    """The deploy-time check: the syntax error, or None when ``text`` compiles (a text too long
    to compile within a render's budget is refused here too, as every render of it would be)."""
    try:
        compile_template(text)
    except TemplateSyntaxError as exc:
        return exc
    except RenderLimitError as exc:
        return TemplateSyntaxError(exc.message, 1, text)
    return None


def is_truthy(rendered: object) -> bool:
    """Kestra's truthiness of a rendered condition: '', '0', '-0', 'false' (any case) are false."""
    if rendered is None:
        return False
    text = str(rendered).strip() if not isinstance(rendered, bool) else str(rendered).lower()
    return not (text == "" or text.lower() == "false" or text in ("0", "-0"))
