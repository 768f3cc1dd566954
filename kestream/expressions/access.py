"""Variable scopes and the one way templates read inside values: map keys and list indices.

This is the sandbox boundary. ``get_item`` never calls ``getattr``: ``x.__class__`` on a dict is the
key ``"__class__"`` (absent, so an error), and on anything that is not a map, list or loop entry it
is simply "not found". Strict like Kestra's Pebble: absence raises ``UndefinedError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .budget import RenderBudget
from .errors import UndefinedError
from .limits import MAX_TEXT, text_too_long
from .text import to_text
from .values import SEQUENCES, Entry


class Scope:
    """The render-time state: the caller's context, local frames (``set``/``for``), the budget.

    Frames are plain dicts, innermost last; most templates never push one, so lookups go straight
    to the context.
    """

    __slots__ = ("budget", "ctx", "frames", "output_size")

    def __init__(self, ctx: Mapping[str, Any], budget: RenderBudget) -> None:
        self.ctx = ctx
        self.budget = budget
        self.frames: list[dict[str, Any]] = []
        self.output_size = 0

    def add_output(self, size: int) -> None:
        """Count a long output against the render's text limit."""
        self.output_size += size
        if self.output_size > MAX_TEXT:
            raise text_too_long()

    def lookup(self, name: str, line: int) -> Any:
        """A root variable: innermost frame first, then the context; strict."""
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        try:
            return self.ctx[name]
        except KeyError:
            raise UndefinedError(name, line) from None

    def is_defined(self, name: str) -> bool:
        """Whether ``name`` resolves (used for map-literal keys written as bare names)."""
        return any(name in frame for frame in self.frames) or name in self.ctx

    def assign(self, name: str, value: Any) -> None:
        """``set``: update the innermost frame already holding ``name``, else the innermost one."""
        for frame in reversed(self.frames):
            if name in frame:
                frame[name] = value
                return
        if not self.frames:
            self.frames.append({})
        self.frames[-1][name] = value


def get_item(obj: Any, key: Any, line: int) -> Any:
    """``obj.key`` / ``obj[key]``: map key, list index or loop-entry field; anything else fails."""
    if type(obj) is dict and type(key) is str and key in obj:
        return obj[key]
    if isinstance(obj, Mapping):
        try:
            return obj[key]
        except (KeyError, TypeError):
            pass
        if isinstance(key, int) and not isinstance(key, bool) and str(key) in obj:
            return obj[str(key)]
        raise UndefinedError(_key_name(key), line)
    if isinstance(obj, SEQUENCES):
        index = _as_index(key)
        if index is not None and 0 <= index < len(obj):
            return obj[index]
        raise UndefinedError(_key_name(key), line)
    if isinstance(obj, Entry) and key in ("key", "value"):
        return obj.key if key == "key" else obj.value
    raise UndefinedError(_key_name(key), line)


def _as_index(key: Any) -> int | None:
    """A list index from an int or a string of digits (Pebble accepts ``list['0']``)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and key.isascii() and key.isdigit():
        return int(key)
    return None


def _key_name(key: Any) -> str:
    """The key as named in an error message."""
    return to_text(key)
