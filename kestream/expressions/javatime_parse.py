"""Parse date-time text the way Kestra's date filters do (``ZonedDateTime.parse`` and fallbacks).

Without ``existingFormat`` the text is ISO-8601 (an offset or ``[Zone]`` wins, otherwise the text
is a local date-time or date in the requested zone). With a Java pattern, the pattern is turned
into an anchored regular expression built only from fixed fragments: user text is escaped, never
interpreted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta, timezone
from functools import lru_cache

from .errors import RenderError
from .javatime import (
    DAYS,
    ISO_FORMATTERS,
    MONTHS,
    PREDEFINED_PATTERNS,
    Zone,
    compile_pattern,
    resolve_zone,
)

_ZONE_SUFFIX_RE = re.compile(r"\[([^\]]+)\]$")
_OFFSET = r"(?:Z|[+-]\d{2}(?::?\d{2}(?::?\d{2})?)?)"
_NUMERIC = {
    "D": r"\d{1,3}",
    "n": r"\d{1,9}",
    "A": r"\d{1,8}",
}
_TWO_DIGIT = set("MLdHhKkms")
_GROUP = {
    "u": "y",
    "L": "M",
    "k": "H",
    "K": "h",
    "x": "X",
    "Z": "X",
    "O": "X",
    "c": "E",
    "e": "E",
    "z": "V",
}


def _alternatives(names: Sequence[str], count: int) -> str:
    """Regex alternatives for month/day names of the given width."""
    words = [n[:3] for n in names] if count == 3 else names
    return "(?:" + "|".join(words) + ")"


_FIXED = {
    "S": lambda count: rf"\d{{{count}}}",
    "a": lambda count: "(?:AM|PM|am|pm)",
    "X": lambda count: rf"(?:GMT)?{_OFFSET}?|GMT",
    "V": lambda count: r"[A-Za-z][A-Za-z0-9_/+\-]*",
}


def _name_fragment(letter: str, count: int) -> str | None:
    """Regex for month/day names, None when the field is numeric."""
    if letter in "ML" and count >= 3:
        return _alternatives(MONTHS, count)
    if letter == "E" or (letter in "ec" and count >= 3):
        return _alternatives(DAYS, 3 if count <= 3 else 4)
    return None


def _fragment(letter: str, count: int) -> str:
    """Regex for one pattern field (without its group)."""
    if letter in "yu":
        return r"\d{2}" if count == 2 else rf"[+-]?\d{{{max(count, 1)},9}}"
    if letter in _NUMERIC:
        return _NUMERIC[letter]
    names = _name_fragment(letter, count)
    if names is not None:
        return names
    if letter in _TWO_DIGIT:
        return r"\d{1,2}" if count == 1 else r"\d{2}"
    fixed = _FIXED.get(_GROUP.get(letter, letter))
    if fixed is None:
        raise RenderError(f"Pattern letter '{letter}' is not supported for parsing")
    return fixed(count)


@lru_cache(maxsize=256)
def _pattern_regex(pattern: str) -> tuple[re.Pattern[str], tuple[tuple[str, str, int], ...]]:
    """Anchored regex for ``pattern`` and the (group, letter, count) of each field."""
    parts: list[str] = []
    fields: list[tuple[str, str, int]] = []
    for index, piece in enumerate(compile_pattern(pattern)):
        if isinstance(piece, str):
            parts.append(re.escape(piece))
            continue
        letter, count = piece
        group = f"g{index}"
        parts.append(f"(?P<{group}>{_fragment(letter, count)})")
        fields.append((group, _GROUP.get(letter, letter), count))
    return re.compile("".join(parts), re.IGNORECASE), tuple(fields)


def _field_value(letter: str, count: int, text: str) -> int | str:
    """Numeric value of a parsed field (names become numbers)."""
    if letter == "M" and count >= 3:
        names = [m[:3].lower() for m in MONTHS] if count == 3 else [m.lower() for m in MONTHS]
        return names.index(text.lower()) + 1
    if letter in "EaXVz":
        return text
    if letter == "y" and count == 2:
        return 2000 + int(text)
    if letter == "S":
        return int(text.ljust(6, "0")[:6])
    if letter == "n":
        return int(text) // 1000
    return int(text)


def _offset_zone(text: str) -> timezone | None:
    """An offset text (``Z``, ``+02:00``, ``GMT+2``) as a fixed timezone; None when empty."""
    text = text.upper().removeprefix("GMT")
    if text in ("", "Z"):
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    seconds = int(digits[4:6] or 0)
    return timezone(sign * timedelta(hours=hours, minutes=minutes, seconds=seconds))


def parse_pattern(text: str, pattern: str, zone: Zone) -> datetime:
    """Parse ``text`` with a Java pattern; missing time is midnight, missing zone is ``zone``."""
    regex, fields = _pattern_regex(pattern)
    match = regex.fullmatch(text)
    if match is None:
        raise RenderError(f"Text '{text}' could not be parsed with pattern '{pattern}'")
    values: dict[str, int | str] = {}
    for group, letter, count in fields:
        values[letter] = _field_value(letter, count, match.group(group))
    if not all(k in values for k in "yMd"):
        raise RenderError(f"Text '{text}' does not hold a full date (year, month and day)")
    hour = int(values.get("H", 0))
    if "h" in values:
        hour = int(values["h"]) % 12 + (12 if str(values.get("a", "AM")).upper() == "PM" else 0)
    tz = zone.tz
    if "X" in values:
        tz = _offset_zone(str(values["X"])) or tz
    elif "V" in values:
        tz = resolve_zone(str(values["V"])).tz
    micros = int(values.get("S", values.get("n", 0)))
    minute, second = int(values.get("m", 0)), int(values.get("s", 0))
    try:
        day = date(int(values["y"]), int(values["M"]), int(values["d"]))
        return datetime.combine(day, time(hour, minute, second, micros), tzinfo=tz)
    except ValueError as exc:
        raise RenderError(f"Text '{text}' could not be parsed: {exc}") from None


def parse_iso(text: str, zone: Zone) -> datetime:
    """ISO-8601 date-time (offset and/or ``[Zone]``), local date-time, or date (start of day)."""
    stripped = text.strip()
    suffix = _ZONE_SUFFIX_RE.search(stripped)
    if suffix:
        zone = resolve_zone(suffix.group(1))
        stripped = stripped[: suffix.start()]
    try:
        value = datetime.fromisoformat(stripped)
    except ValueError:
        raise RenderError(f"Text '{text}' could not be parsed as an ISO-8601 date") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone.tz)
    return value


def parse_datetime(text: str, existing_format: str | None, zone: Zone) -> datetime:
    """Kestra's string-to-date conversion for the date filters."""
    if existing_format is None or existing_format in ISO_FORMATTERS:
        return parse_iso(text, zone)
    pattern = PREDEFINED_PATTERNS.get(existing_format, existing_format)
    return parse_pattern(text, pattern, zone)
