"""NUL-free text for PostgreSQL, which refuses U+0000 in ``text`` and in ``jsonb`` strings.

A log line, an output or a label may hold NUL (``"a\\u0000b"`` is valid JSON and valid
Python), and the index must keep it. So every string the PostgreSQL store writes, including
the strings (and keys) inside its JSON documents, is escaped, and unescaped when read:

- the escape character is U+FDD0, a Unicode *noncharacter* (reserved for a program's internal
  use, never assigned): ``U+FDD0`` becomes ``U+FDD0 U+FDD0`` and ``U+0000`` becomes
  ``U+FDD0 0``. The mapping is one-to-one, so any string round-trips, including ones that
  hold the escape character itself.
- a string holding neither character is stored as it is, so documents without them cost one
  substring check on their JSON text each way, not a walk.

SQLite stores NUL as it is; its store does not escape (:attr:`Dialect.escapes_nul`).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

__all__ = ["dumps_doc", "escape", "loads_doc", "unescape"]

ESCAPE = "\ufdd0"
_NUL = "\x00"
#: How the two characters appear in orjson's output: NUL escaped, U+FDD0 as itself.
_JSON_MARKERS = ("\\u0000", ESCAPE)
_ESCAPED = re.compile(f"{ESCAPE}(.)", re.DOTALL)
_DECODE = {ESCAPE: ESCAPE, "0": _NUL}


def escape(text: str) -> str:
    """``text`` without NUL, reversibly (:func:`unescape`)."""
    if ESCAPE not in text and _NUL not in text:
        return text
    return text.replace(ESCAPE, ESCAPE + ESCAPE).replace(_NUL, ESCAPE + "0")


def unescape(text: str) -> str:
    """The inverse of :func:`escape`."""
    if ESCAPE not in text:
        return text
    return _ESCAPED.sub(lambda match: _DECODE.get(match[1], match[0]), text)


def _walk(value: Any, change: Any) -> Any:
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {change(k): _walk(v, change) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, change) for v in value]
    return value


def dumps_doc(value: Any, *, escaped: bool) -> str:
    """``value`` as JSON text; with ``escaped``, every string and key in it escaped."""
    text = orjson.dumps(value).decode()
    if escaped and any(marker in text for marker in _JSON_MARKERS):
        text = orjson.dumps(_walk(value, escape)).decode()
    return text


def loads_doc(text: str | bytes, *, escaped: bool) -> Any:
    """The value :func:`dumps_doc` stored (the database may have re-serialised its JSON)."""
    value = orjson.loads(text)
    if escaped and (ESCAPE in text if isinstance(text, str) else ESCAPE.encode() in text):
        value = _walk(value, unescape)
    return value
