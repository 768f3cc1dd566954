"""Which values kestream can carry, and the one check that says so with the place of the culprit.

Every value a user can put in an execution (inputs, webhook bodies, trigger variables, resume
inputs, task and flow outputs, flow properties) travels as JSON through Kafka records, the
executor's changelog, the execution index and the API's answers. JSON as orjson and SQL hold it
has limits that Python values do not: integers beyond 64 bits, infinities and NaN, strings with
unpaired surrogates, and nesting deeper than orjson's 254 levels (less the levels the records add
around a value). A value past those limits must be refused where it comes in, with the path of the
bad part, instead of failing later inside a consumer that would then stop or crash-loop.

``MAX_DEPTH`` leaves room for what wraps a value: the records nest it a few levels down, and the
changelog codec may add one level per nested ``$``-keyed map (see
:mod:`kestream.executor.codec`), so 2 x 100 + the wrapping stays under orjson's limit.
"""

from __future__ import annotations

import json
import math
from datetime import date, time, timedelta
from typing import Any

#: Deepest nesting of maps and lists a value may have.
MAX_DEPTH = 100
#: Java's ``long``: what Kestra's own engine holds, and what SQL and orjson hold exactly.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1

_SCALARS = (str, bool, int, float, type(None), date, time, timedelta)  # datetime is a date


class UnportableValue(ValueError):
    """A value kestream cannot carry; ``path`` names its bad part (``body.items[3]``)."""

    def __init__(self, reason: str, path: str) -> None:
        shown = path if len(path) <= 120 else f"{path[:100]}...{path[-17:]}"
        super().__init__(f"{reason} at {shown}" if path else reason)
        self.reason = reason
        self.path = path

    def under(self, root: str) -> UnportableValue:
        """The same problem, its path seen from ``root`` (an input id, ``body``)."""
        if not root:
            return self
        if not self.path:
            return UnportableValue(self.reason, root)
        if self.path.startswith("["):
            return UnportableValue(self.reason, root + self.path)
        return UnportableValue(self.reason, _join(root, self.path))


def find_unportable(value: Any, root: str = "") -> UnportableValue | None:
    """The first part of ``value`` that cannot be carried, or None when all of it can.

    Iterative, so a deep value cannot exhaust Python's stack while it is being checked.
    """
    stack: list[tuple[Any, str, int]] = [(value, root, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict):
            if depth >= MAX_DEPTH:
                return UnportableValue(f"nested deeper than {MAX_DEPTH} levels", path)
            for key, child in item.items():
                problem = _key_problem(key)
                if problem is not None:
                    return UnportableValue(problem, path)
                stack.append((child, _join(path, str(key)), depth + 1))
        elif isinstance(item, list | tuple):
            if depth >= MAX_DEPTH:
                return UnportableValue(f"nested deeper than {MAX_DEPTH} levels", path)
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
        else:
            problem = _scalar_problem(item)
            if problem is not None:
                return UnportableValue(problem, path)
    return None


def check_portable(value: Any, root: str = "") -> None:
    """Raise :class:`UnportableValue` for a value :func:`find_unportable` refuses."""
    problem = find_unportable(value, root)
    if problem is not None:
        raise problem


def loads_json(text: str | bytes, root: str = "") -> Any:
    """Parse JSON text exactly: what would be lost or could not be carried is refused.

    orjson would read ``123456789012345678901234567890`` as a float (silently changed); the
    standard parser keeps the integer, so it can be refused with its path. Raises
    :class:`ValueError` for text that is not JSON and :class:`UnportableValue` for JSON that is
    but holds a value kestream cannot carry.
    """
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise UnportableValue(f"nested deeper than {MAX_DEPTH} levels", root) from None
    check_portable(value, root)
    return value


def safe_text(text: str) -> str:
    """``text`` with unpaired surrogates escaped, for messages (log lines, errors) that must be
    written whatever a task or a template produced."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _key_problem(key: Any) -> str | None:
    if isinstance(key, str):
        return _text_problem(key)
    if isinstance(key, bool | int | float) or key is None:
        return None  # written as its text, as JSON requires
    return f"a map key of type {type(key).__name__}"


def _scalar_problem(item: Any) -> str | None:
    if isinstance(item, str):
        return _text_problem(item)
    if isinstance(item, bool):
        return None
    if isinstance(item, int):
        if INT_MIN <= item <= INT_MAX:
            return None
        return f"the integer {_short(item)} does not fit in 64 bits"
    if isinstance(item, float):
        return None if math.isfinite(item) else f"the number {item} is not finite"
    if isinstance(item, _SCALARS):
        return None
    return f"a value of type {type(item).__name__}"


def _text_problem(text: str) -> str | None:
    if text.isascii():
        return None
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        return f"text with an unpaired surrogate at character {exc.start}"
    return None


def _short(number: int) -> str:
    # str() of a very long integer is refused by Python itself (and costly): say its size.
    return str(number) if number.bit_length() <= 100 else f"of {number.bit_length()} bits"
