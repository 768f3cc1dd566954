"""Operator semantics copied from Pebble's ``OperatorUtils`` (Java numbers, not Python's).

Integers behave like Java ``long``: ``/`` truncates, ``%`` keeps the dividend's sign, results wrap
at 64 bits (which also keeps ``x * x`` in a loop from growing a huge Python int). Booleans are not
numbers. ``==`` compares numbers by value across int/float and everything else structurally.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from .budget import current_budget
from .equality import EqualitySet
from .errors import RenderError
from .limits import MAX_ITEMS, MAX_TEXT, text_too_long, too_many_items
from .text import java_text
from .values import CONTAINERS, NUMBERS, SEQUENCES

_LONG_MIN = -(2**63)
#: Items compared between two looks at the render budget when comparing long lists.
_CHUNK = 4096
_LONG_SPAN = 2**64


def is_number(value: Any) -> bool:
    """int/float/Decimal but not bool (Java's Boolean is no Number)."""
    return isinstance(value, NUMBERS) and not isinstance(value, bool)


def wrap_long(value: int) -> int:
    """Two's-complement 64-bit wrap-around, as Java's long arithmetic."""
    if _LONG_MIN <= value < -_LONG_MIN:
        return value
    return (value - _LONG_MIN) % _LONG_SPAN + _LONG_MIN


def to_bool(value: Any) -> bool:
    """Truth value of a condition (``if``, ``and``, ``not``, ternary)."""
    if value is True or value is False:
        return bool(value)
    if value is None:
        return False
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "-0")
    if is_number(value):
        return bool(value)
    if isinstance(value, CONTAINERS):
        return len(value) > 0
    return True


def equals(left: Any, right: Any) -> bool:
    """Pebble's ``==``: numbers by value, booleans only equal to booleans, else structural."""
    if is_number(left) and is_number(right):
        return bool(left == right)
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, SEQUENCES) and isinstance(right, SEQUENCES):
        if len(left) != len(right):
            return False
        if len(left) <= _CHUNK:
            return all(map(equals, left, right))
        budget = current_budget()
        for start in range(0, len(left), _CHUNK):  # long lists: counted chunk by chunk
            budget.spend(_CHUNK >> 6)
            if not all(map(equals, left[start : start + _CHUNK], right[start : start + _CHUNK])):
                return False
        return True
    try:
        return bool(left == right)
    except Exception:  # pragma: no cover - exotic values whose __eq__ fails
        return False


def _comparison(name: str, test: Callable[[int], bool]) -> Callable[[Any, Any], bool]:
    """A relational operator: numbers by value, strings lexically (Kestra), null is false."""

    def compare(left: Any, right: Any) -> bool:
        if left is None or right is None:
            return False
        if is_number(left) and is_number(right):
            return test((left > right) - (left < right))
        if isinstance(left, str) and isinstance(right, str):
            return test((left > right) - (left < right))
        try:
            return test((left > right) - (left < right))
        except TypeError:
            raise RenderError(
                f"Could not perform {name} comparison between {type_name(left)} "
                f"and {type_name(right)}"
            ) from None

    return compare


greater = _comparison("greater than", lambda r: r > 0)
greater_equal = _comparison("greater than or equals", lambda r: r >= 0)
less = _comparison("less than", lambda r: r < 0)
less_equal = _comparison("less than or equals", lambda r: r <= 0)


def type_name(value: Any) -> str:
    """A user-facing type name for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if is_number(value):
        return "number"
    if isinstance(value, Mapping):
        return "map"
    if isinstance(value, SEQUENCES):
        return "list"
    return type(value).__name__


def _numbers(left: Any, right: Any, op: str) -> None:
    """Reject non-numeric operands with Pebble's message."""
    if not (is_number(left) and is_number(right)):
        raise RenderError(
            f"invalid operands for mathematical operation [{op}]: "
            f"{type_name(left)} and {type_name(right)}"
        )


def check_text(text: str) -> str:
    """Refuse strings past the render size limit; building big text counts against the budget."""
    size = len(text)
    if size > MAX_TEXT:
        raise text_too_long()
    if size > 4096:
        current_budget().spend(size >> 12)
    return text


def replaced(text: str, old: str, new: str) -> str:
    """``text.replace(old, new)``, refused before it is built when it would pass the size limit.

    Replacing ``""`` inserts ``new`` between every two characters: a 100 kB value replaced into
    itself asks for 10^10 characters, so the length is computed first (``count`` is linear, and
    ``text.count("")`` is ``len(text) + 1``, the number of insertions).
    """
    if len(text) + text.count(old) * (len(new) - len(old)) > MAX_TEXT:
        raise text_too_long()
    return check_text(text.replace(old, new))


def check_items(items: list[Any]) -> list[Any]:
    """Refuse lists past the render size limit; building big lists counts against the budget."""
    size = len(items)
    if size > MAX_ITEMS:
        raise too_many_items()
    if size > 512:
        current_budget().spend(size >> 9)
    return items


def _promote(left: Any, right: Any) -> tuple[Any, Any]:
    """A Decimal meeting a float turns the float into a Decimal (Java's BigDecimal wins)."""
    if isinstance(left, Decimal) and isinstance(right, float):
        return left, Decimal(repr(right))
    if isinstance(right, Decimal) and isinstance(left, float):
        return Decimal(repr(left)), right
    return left, right


def add(left: Any, right: Any) -> Any:
    """``+``: string concatenation if either side is a string, list append, else numeric."""
    if isinstance(left, str) or isinstance(right, str):
        return check_text(java_text(left) + java_text(right))
    if isinstance(left, SEQUENCES):
        extra = list(right) if isinstance(right, SEQUENCES) else [right]
        return check_items([*left, *extra])
    _numbers(left, right, "ADD")
    left, right = _promote(left, right)
    result = left + right
    return wrap_long(result) if isinstance(result, int) else result


def subtract(left: Any, right: Any) -> Any:
    """``-``: list removal or numeric subtraction."""
    if isinstance(left, SEQUENCES):
        if isinstance(right, SEQUENCES):
            removed = EqualitySet(equals, right)
            return [item for item in left if item not in removed]
        out = list(left)
        for index, item in enumerate(out):
            if equals(item, right):
                del out[index]
                break
        return out
    _numbers(left, right, "SUBTRACT")
    left, right = _promote(left, right)
    result = left - right
    return wrap_long(result) if isinstance(result, int) else result


def multiply(left: Any, right: Any) -> Any:
    """``*`` on numbers only."""
    _numbers(left, right, "MULTIPLICATION")
    left, right = _promote(left, right)
    result = left * right
    return wrap_long(result) if isinstance(result, int) else result


def divide(left: Any, right: Any) -> Any:
    """``/``: Java semantics, integer division truncates toward zero, x/0.0 is infinite."""
    _numbers(left, right, "DIVISION")
    left, right = _promote(left, right)
    if not (isinstance(left, float) or isinstance(right, float)) and right == 0:
        raise RenderError("/ by zero")
    if isinstance(left, int) and isinstance(right, int):
        quotient = abs(left) // abs(right)
        return wrap_long(quotient if (left >= 0) == (right >= 0) else -quotient)
    if right == 0:
        if left == 0 or math.isnan(float(left)):
            return math.nan
        return math.copysign(math.inf, float(left)) * math.copysign(1.0, float(right))
    return left / right


def modulo(left: Any, right: Any) -> Any:
    """``%``: Java remainder (sign of the dividend)."""
    _numbers(left, right, "MODULUS")
    left, right = _promote(left, right)
    if not (isinstance(left, float) or isinstance(right, float)) and right == 0:
        raise RenderError("/ by zero")
    if isinstance(left, int) and isinstance(right, int):
        quotient = abs(left) // abs(right)
        if (left >= 0) != (right >= 0):
            quotient = -quotient
        return left - right * quotient
    if isinstance(left, Decimal) or isinstance(right, Decimal):
        return left % right  # Decimal's % keeps the dividend's sign, like Java
    if right == 0:
        return math.nan
    return math.fmod(left, right)


def negate(value: Any) -> Any:
    """Unary minus."""
    if not is_number(value):
        raise RenderError(f"invalid operand for unary minus: {type_name(value)}")
    return wrap_long(-value) if isinstance(value, int) else -value


def contains(container: Any, item: Any) -> bool:
    """Pebble's ``contains``: list membership (all of a list), map key, or substring."""
    if container is None:
        return False
    if isinstance(container, str):
        return java_text(item) in container if item is not None else False
    if isinstance(container, Mapping):
        if isinstance(item, SEQUENCES):
            return all(k in container for k in item)
        return item in container
    if isinstance(container, SEQUENCES):
        if isinstance(item, SEQUENCES):
            if not item:
                return True
            present = EqualitySet(equals, container)
            return all(i in present for i in item)
        current_budget().spend(1 + (len(container) >> 6))
        return any(equals(c, item) for c in container)
    raise RenderError(f"contains cannot be applied to a {type_name(container)}")


def concat(left: Any, right: Any) -> str:
    """``~``: string concatenation where null contributes nothing."""
    out = ("" if left is None else java_text(left)) + ("" if right is None else java_text(right))
    return check_text(out)
