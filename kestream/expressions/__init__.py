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
from .errors import RenderError, TemplateSyntaxError
from .text import to_text

__all__ = [
    "RenderError",
    "Template",
    "TemplateSyntaxError",
    "compile_template",
    "is_template",
    "is_truthy",
    "render",
    "render_value",
    "to_text",
    "validate_template",
]
