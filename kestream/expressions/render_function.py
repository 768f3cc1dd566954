"""``render()`` and ``renderOnce()``: render text that holds expressions (a flow variable whose
value is itself a template), as Kestra has done since 0.14 instead of rendering everything twice.

``render(x)`` renders ``x`` again and again until the text stops changing or holds no expression
(``recursive=false`` renders once); any value that is not text comes back as it is. The text is
rendered with the same variables, in the same sandbox and within the same render budget as the
template calling it: text that came from anyone (an input, a webhook body) can read the variables a
flow author could, and nothing more. Two bounds stop what a budget would only stop late:
``render()`` inside rendered text nests at most ``MAX_RENDER_DEPTH`` deep (a variable that renders
itself), and one recursive call makes at most ``MAX_RENDER_PASSES`` passes. Each pass compiles at
most ``MAX_RENDER_TEXT`` characters, and the compile itself spends the budget (:mod:`.lexer`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .budget import current_budget
from .errors import RenderLimitError
from .limits import MAX_RENDER_DEPTH, MAX_RENDER_PASSES, MAX_RENDER_TEXT
from .operators import to_bool
from .registry import template_function

#: Longer text given to ``render()`` (a webhook body, say) is compiled for this render only, so
#: the template cache cannot be filled with large texts that anyone may send.
MAX_CACHED_TEXT = 4096

#: Context key holding how many ``render()`` calls enclose the current render (templates cannot
#: name ``@`` keys).
_DEPTH = "@render_depth"


@template_function("render", uses_ctx=True)
def render_function(ctx: Mapping[str, Any], toRender: Any, recursive: Any = True) -> Any:
    """``toRender`` rendered (until it settles, unless ``recursive`` is false)."""
    if not isinstance(toRender, str):
        return toRender
    from .api import compile_template, compile_uncached, is_template  # imports this module

    depth = ctx.get(_DEPTH, 0) + 1
    if depth > MAX_RENDER_DEPTH:
        raise RenderLimitError(
            f"render exceeded its limit of {MAX_RENDER_DEPTH} render() calls inside one another"
        )
    inner = {**ctx, _DEPTH: depth}
    once = not to_bool(recursive)
    text = toRender
    for _ in range(1 if once else MAX_RENDER_PASSES):
        if not is_template(text):
            return text
        if len(text) > MAX_RENDER_TEXT:
            raise RenderLimitError(
                f"render exceeded its size limit of {MAX_RENDER_TEXT} characters of text handed "
                f"to render() (got {len(text)})"
            )
        current_budget().spend(1 + (len(text) >> 8))
        compile_ = compile_template if len(text) <= MAX_CACHED_TEXT else compile_uncached
        rendered = compile_(text).render_nested(inner)
        if rendered == text:
            return text
        text = rendered
    if once or not is_template(text):
        return text
    raise RenderLimitError(
        f"render exceeded its limit of {MAX_RENDER_PASSES} passes of render() (the text still "
        "holds expressions)"
    )


@template_function("renderOnce", uses_ctx=True)
def render_once(ctx: Mapping[str, Any], toRender: Any) -> Any:
    """``render(toRender, recursive=false)``: one pass."""
    return render_function(ctx, toRender, False)
