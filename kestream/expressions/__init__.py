"""Pebble-compatible ``{{ }}`` / ``{% %}`` templates as Kestra configures them, sandboxed.

Strict variables, Kestra's ``??`` operator, its filters and functions; templates can only read map
keys and list items and call the functions registered in this package.
"""

from .api import (
    Template,
    compile_template,
    is_template,
    is_truthy,
    render,
    render_value,
    validate_template,
)
from .budget import (
    render_timeout_ms,
    set_render_timeout_ms,
    set_step_render_budget_ms,
    step_render_budget_ms,
)
from .errors import RenderError, RenderLimitError, TemplateSyntaxError
from .text import to_text

__all__ = [
    "RenderError",
    "RenderLimitError",
    "Template",
    "TemplateSyntaxError",
    "compile_template",
    "is_template",
    "is_truthy",
    "render",
    "render_timeout_ms",
    "render_value",
    "set_render_timeout_ms",
    "set_step_render_budget_ms",
    "step_render_budget_ms",
    "to_text",
    "validate_template",
]
