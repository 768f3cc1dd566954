"""Regular expressions supplied by templates, matched within the render's time budget.

The ``regex`` package backtracks like Java's engine (and reads Java's ``(?<name>...)`` groups,
possessive quantifiers and atomic groups as they are) and takes a timeout: every match here gets
what is left of the render budget, so ``(a|aa)+$`` against a long text ends the render with
"render exceeded ..." instead of holding the executor. What no timeout covers is compiling:
the matcher expands counted repetitions (``x{1000}``) while compiling, so a pattern whose
expansion passes ``MAX_PATTERN_UNITS`` is refused before it reaches the compiler.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import lru_cache

import regex

from .budget import RenderBudget, close_budget, current_budget, open_budget
from .errors import RenderError
from .limits import MAX_PATTERN_UNITS

Pattern = regex.Pattern[str]
Match = regex.Match[str]


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> Pattern:
    """Compile a template-supplied pattern (cached by text); RenderError when invalid or huge."""
    if expanded_units(pattern) > MAX_PATTERN_UNITS:
        raise RenderError(
            f"Regular expression too large once its counted repetitions are expanded "
            f"(more than {MAX_PATTERN_UNITS} units): {pattern[:200]}"
        )
    try:
        return regex.compile(pattern)
    except (regex.error, OverflowError, RecursionError) as exc:
        raise RenderError(f"Invalid regular expression '{pattern}': {exc}") from None


def search(pattern: str, text: str) -> Match | None:
    """First match of ``pattern`` anywhere in ``text``."""
    compiled = compile_pattern(pattern)
    budget = current_budget()
    try:
        return compiled.search(text, timeout=_timeout(budget))
    except TimeoutError:
        raise budget.exceeded() from None


def sub(pattern: str, replacement: str | Callable[[Match], str], text: str, count: int = 0) -> str:
    """``text`` with the first ``count`` matches (0: all) replaced."""
    compiled = compile_pattern(pattern)
    budget = current_budget()
    try:
        return compiled.sub(replacement, text, count=count, timeout=_timeout(budget))
    except TimeoutError:
        raise budget.exceeded() from None


def finditer(pattern: str, text: str) -> Iterator[Match]:
    """Every non-overlapping match, in order."""
    compiled = compile_pattern(pattern)
    budget = current_budget()
    matches = compiled.finditer(text, timeout=_timeout(budget))
    while True:
        try:
            match = next(matches)
        except StopIteration:
            return
        except TimeoutError:
            raise budget.exceeded() from None
        budget.spend()
        yield match


def fullmatch_within_budget(pattern: str, text: str) -> bool:
    """Whether all of ``text`` matches (Java's ``String.matches``), within the render budget.

    For patterns checked outside a render too (an input's ``validator`` on a value anyone may
    send): there a budget of its own bounds the match. RenderError when the pattern is invalid,
    RenderLimitError past the budget.
    """
    budget, opened = open_budget()
    try:
        compiled = compile_pattern(pattern)
        try:
            return compiled.fullmatch(text, timeout=_timeout(budget)) is not None
        except TimeoutError:
            raise budget.exceeded() from None
    finally:
        if opened:
            close_budget()


def _timeout(budget: RenderBudget) -> float | None:
    """The matcher's timeout: what is left of the budget (none outside a render)."""
    remaining = budget.remaining_s()
    return None if math.isinf(remaining) else remaining


def expanded_units(pattern: str) -> int:
    """How big ``pattern`` grows once counted repetitions are expanded (an upper estimate).

    Atoms (a character, an escape, a class) count one; a group counts the sum of its parts;
    ``{n}`` / ``{n,m}`` multiply what precedes them by ``n``, as the compiler does.
    """
    stack: list[list[int]] = [[0, 0]]  # per open group: [finished parts, last part]
    index, size = 0, len(pattern)
    while index < size:
        char = pattern[index]
        frame = stack[-1]
        if char == "{":
            count, end = _counted(pattern, index)
            if end:
                frame[1] *= count
                index = end
                continue
        if char == "(":
            stack.append([0, 0])
            index += 1
            continue
        if char == ")" and len(stack) > 1:
            inner = stack.pop()
            stack[-1][0] += stack[-1][1]
            stack[-1][1] = inner[0] + inner[1]
            index += 1
            continue
        frame[0] += frame[1]
        frame[1] = 1
        index = _atom_end(pattern, index)
    total = 0
    for finished, last in stack:
        total += finished + last
    return total


def _counted(pattern: str, index: int) -> tuple[int, int]:
    """``{n}`` / ``{n,}`` / ``{n,m}`` at ``index``: (n, index after it), or (0, 0) if not one."""
    close = pattern.find("}", index)
    if close < 0:
        return 0, 0
    low, _, high = pattern[index + 1 : close].partition(",")
    if not low.isdigit() or not (high == "" or high.isdigit()):
        return 0, 0
    if len(low) > 9:  # past any limit (and int() refuses thousands of digits)
        return 10**9, close + 1
    return int(low), close + 1


def _atom_end(pattern: str, index: int) -> int:
    """Index after the atom starting at ``index`` (escape, character class or one character)."""
    char = pattern[index]
    if char == "\\":
        end = index + 2
        if pattern[index + 1 : index + 2] in ("p", "P", "x", "N") and pattern[end : end + 1] == "{":
            close = pattern.find("}", end)
            return close + 1 if close >= 0 else len(pattern)
        return end
    if char == "[":
        end = index + 1
        if pattern[end : end + 1] == "^":
            end += 1
        if pattern[end : end + 1] == "]":
            end += 1
        while end < len(pattern) and pattern[end] != "]":
            end += 2 if pattern[end] == "\\" else 1
        return end + 1
    return index + 1
