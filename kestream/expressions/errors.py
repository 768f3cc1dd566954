"""The two exceptions templates raise, plus the internal "undefined" signal that ``??`` catches.

Kestra reports deploy-time problems (syntax) and run-time problems (a variable that does not exist,
a filter that fails) differently: the first rejects the flow, the second fails one task run with a
log line. Two types let callers make the same distinction; a syntax error is also a RenderError so
that code rendering at run time needs to catch only one type.
"""

from __future__ import annotations


class RenderError(Exception):
    """Rendering failed; ``str(error)`` is the text a task-run log shows."""

    def __init__(self, message: str, line: int | None = None, template: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.template = template


class TemplateSyntaxError(RenderError):
    """The template text cannot be parsed; ``line`` is 1-based within ``template``.

    A RenderError too: a syntax error met while rendering (a text that skipped deploy-time
    validation) must fail the task run like any other render failure, not escape a caller that
    catches RenderError.
    """

    def __init__(self, message: str, line: int, template: str = "") -> None:
        super().__init__(message, line, template)
        self.args = (f"{message} (line {line})",)
        self.line: int = line
        self.template: str = template


class RenderLimitError(RenderError):
    """A render went past its CPU-time budget or its size limit (:mod:`.budget`, :mod:`.limits`).

    Raised deep inside the evaluator with ``message`` reading "render exceeded ..."; every layer
    that rewraps errors with a filter's name or a line lets this type through unchanged, so the
    task run's log line always begins with those words and the template boundary only adds which
    task and which expression.
    """


class UndefinedError(RenderError):
    """A variable, key or index that does not exist (Pebble's strict-variables failure).

    Raised deep inside the evaluator with only the missing ``name`` and ``line``; the template
    boundary turns it into Kestra's exact message. ``??``, ``default`` and ``is defined`` catch
    this type and only this type, so a failing filter is never silently swallowed.
    """

    def __init__(self, name: str, line: int) -> None:
        # Cheap on purpose: ``??`` makes this a control-flow signal on hot paths.
        Exception.__init__(self, name)
        self.message = name
        self.line = line
        self.template = None
        self.name = name


def undefined_message(name: str, template: str, line: int) -> str:
    """Kestra's wording for a missing variable, asserted verbatim by its tests."""
    return f"Unable to find `{name}` used in the expression `{template}` at line {line}"
