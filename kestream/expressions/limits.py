"""Resource ceilings for one render, so a template cannot exhaust memory or CPU.

Kestra caps ``range()`` at one million elements; the same ceiling applies here to every list a
template builds, and a separate one to the length of produced text. Time is bounded by the render
budget (:mod:`.budget`), whose defaults are here: every process sets the configured values at start.
"""

from __future__ import annotations

from .errors import RenderLimitError

MAX_ITEMS = 1_000_000
MAX_TEXT = 10_000_000
#: Default CPU-time budget of one render (one property, one condition, one output).
RENDER_TIMEOUT_MS = 1000
#: Default wall time that all the renders of one executor step share (see :mod:`.budget`).
STEP_RENDER_BUDGET_MS = 5000
#: Largest regular expression, counted once its counted repetitions are expanded: the matcher
#: expands ``x{n}`` while compiling, which no timeout interrupts (a million units is about 0.5 s).
MAX_PATTERN_UNITS = 100_000
#: ``render()`` inside text that ``render()`` renders, at most this deep (a variable that renders
#: itself would otherwise recurse until the interpreter's stack runs out).
MAX_RENDER_DEPTH = 10
#: Passes of one recursive ``render()``: text that keeps producing new expressions is refused
#: past this many instead of being rendered for as long as the budget lasts.
MAX_RENDER_PASSES = 100
#: Longest text one pass of ``render()`` compiles (what it is handed, and what each pass
#: produces): text anyone may send is refused by its size, before the compile would spend the
#: budget on it, and a text that doubles at every pass stops here.
MAX_RENDER_TEXT = 256 * 1024


def text_too_long() -> RenderLimitError:
    """The error for text past :data:`MAX_TEXT`."""
    return RenderLimitError(f"render exceeded its size limit of {MAX_TEXT} characters of text")


def too_many_items() -> RenderLimitError:
    """The error for a list past :data:`MAX_ITEMS`."""
    return RenderLimitError(f"render exceeded its size limit of {MAX_ITEMS} list items")
