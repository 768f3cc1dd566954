"""Java ``DateTimeFormatter`` patterns (``yyyy-MM-dd'T'HH:mm:ss.SSSXXX``) and time zones.

Kestra's ``date``/``dateAdd``/``now`` take Java patterns, so flows written for Kestra carry them.
This module formats and parses those patterns (English names, ISO weeks) without ever handing a
user string to ``strftime`` or ``str.format``. Zone names are validated before ``zoneinfo`` sees
them, so a zone can never name an arbitrary file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kestream.models.instants import instant_text

from .errors import RenderError

MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_ZONE_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+){0,3}")
_OFFSET_RE = re.compile(r"(?:(?:UTC|GMT|UT)(?=[+-]))?([+-])(\d{1,2})(?::?(\d{2}))?(?::?(\d{2}))?")
_UTC_NAMES = {"Z": "Z", "UTC": "UTC", "GMT": "GMT", "UT": "UT"}
STYLES = {
    "short": "M/d/yy, h:mm a",
    "medium": "MMM d, y, h:mm:ss a",
    "long": "MMMM d, y 'at' h:mm:ss a z",
    "full": "EEEE, MMMM d, y 'at' h:mm:ss a zzzz",
}


class Zone:
    """A resolved zone: the tzinfo plus the id Java would print for ``VV`` / ``[zone]``."""

    __slots__ = ("is_region", "tz", "zone_id")

    def __init__(self, tz: tzinfo, zone_id: str, is_region: bool) -> None:
        self.tz = tz
        self.zone_id = zone_id
        self.is_region = is_region


UTC_ZONE = Zone(UTC, "Z", False)


@lru_cache(maxsize=256)
def resolve_zone(name: str | None) -> Zone:
    """``ZoneId.of``: None is UTC (the engine's default zone), offsets, ``UTC+2``, region ids."""
    if name is None:
        return UTC_ZONE
    if name in _UTC_NAMES:
        return Zone(UTC, name, name != "Z")
    offset = _OFFSET_RE.fullmatch(name)
    if offset:
        sign, hours, minutes, seconds = offset.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes or 0), seconds=int(seconds or 0))
        if delta > timedelta(hours=18):
            raise RenderError(f"Zone offset not in valid range: {name}")
        return Zone(timezone(-delta if sign == "-" else delta), name, False)
    if not _ZONE_NAME_RE.fullmatch(name):
        raise RenderError(f"Invalid ID for region-based ZoneId: {name}")
    try:
        return Zone(ZoneInfo(name), name, True)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise RenderError(f"Unknown time-zone ID: {name}") from None


# -- offsets -----------------------------------------------------------------------------------
def _offset_parts(value: datetime) -> tuple[str, int, int, int]:
    """Sign, hours, minutes, seconds of the value's UTC offset."""
    offset = value.utcoffset() or timedelta(0)
    total = int(offset.total_seconds())
    sign = "-" if total < 0 else "+"
    total = abs(total)
    return sign, total // 3600, total % 3600 // 60, total % 60


def format_offset(value: datetime, count: int, zero: str | None) -> str:
    """``X``/``x``/``Z`` style offsets; ``zero`` replaces a zero offset (``Z`` for X)."""
    sign, hours, minutes, seconds = _offset_parts(value)
    if zero is not None and hours == minutes == seconds == 0:
        return zero
    colon = ":" if count in (3, 5) else ""
    out = f"{sign}{hours:02d}"
    if count == 1:
        return out + (f"{minutes:02d}" if minutes else "")
    out += f"{colon}{minutes:02d}"
    if count >= 4 and seconds:
        out += f"{colon}{seconds:02d}"
    return out


def _gmt_offset(value: datetime, count: int) -> str:
    """``O`` / ``OOOO`` and ``ZZZZ``: ``GMT``, ``GMT+8`` or ``GMT+08:00``."""
    sign, hours, minutes, seconds = _offset_parts(value)
    if hours == minutes == seconds == 0:
        return "GMT"
    if count == 1:
        return f"GMT{sign}{hours}" + (f":{minutes:02d}" if minutes else "")
    return f"GMT{sign}{hours:02d}:{minutes:02d}" + (f":{seconds:02d}" if seconds else "")


# -- pattern compilation -----------------------------------------------------------------------
Piece = tuple[str, int] | str  # (letter, count) or literal text


@lru_cache(maxsize=512)
def compile_pattern(pattern: str) -> tuple[Piece, ...]:
    """Split a Java pattern into letter runs and literals (optional ``[ ]`` markers dropped)."""
    pieces: list[Piece] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "'":
            end = index + 1
            literal = []
            while end < len(pattern):
                if pattern[end] == "'":
                    if pattern.startswith("''", end):
                        literal.append("'")
                        end += 2
                        continue
                    break
                literal.append(pattern[end])
                end += 1
            else:
                raise RenderError(f"Pattern ends with an incomplete string literal: {pattern}")
            pieces.append("".join(literal) if end > index + 1 else "'")
            index = end + 1
        elif char.isascii() and char.isalpha():
            end = index
            while end < len(pattern) and pattern[end] == char:
                end += 1
            if char not in _FIELDS:
                raise RenderError(f"Unknown pattern letter: {char}")
            pieces.append((char, end - index))
            index = end
        elif char in "#{}":
            raise RenderError(f"Pattern includes reserved character: '{char}'")
        else:
            if char not in "[]":
                pieces.append(char)
            index += 1
    return tuple(pieces)


def _num(value: int, count: int) -> str:
    """Zero-padded to ``count`` digits (Java's minimum width)."""
    return f"{value:0{count}d}"


def _year(value: int, count: int) -> str:
    return _num(value % 100, 2) if count == 2 else _num(value, count if count > 2 else 1)


def _text_field(names: Sequence[str], index: int, count: int, number: int) -> str:
    """Month/day fields: numeric for 1-2 letters, short name 3, full 4, narrow 5."""
    if count <= 2:
        return _num(number, count)
    name = names[index]
    return name[:3] if count == 3 else name if count == 4 else name[0]


def _fraction(value: datetime, count: int) -> str:
    """``S`` letters: the fraction of second truncated/padded to ``count`` digits."""
    return f"{value.microsecond:06d}000"[:count].ljust(count, "0")


def _zone_name(value: datetime, count: int, zone: Zone) -> str:
    """``z``: the short zone name (UTC, CET); ``zzzz`` spells out UTC."""
    name = value.tzname() or "UTC"
    if count == 4 and name in ("UTC", "Z"):
        return "Coordinated Universal Time"
    return "UTC" if name == "Z" else name


def _quarter(value: datetime, count: int) -> str:
    quarter = (value.month - 1) // 3 + 1
    if count <= 2:
        return _num(quarter, count)
    return (
        f"Q{quarter}"
        if count == 3
        else f"{quarter}{'stndrdth'[2 * quarter - 2 : 2 * quarter]} quarter"
    )


def _hour12(value: datetime, count: int, zero_based: bool) -> str:
    hour = value.hour % 12
    return _num(hour if zero_based or hour else 12, count)


def _offset_z(value: datetime, count: int) -> str:
    """``Z`` letters: ``+0000`` (1-3), ``GMT+08:00`` (4), ``+08:00`` or ``Z`` (5)."""
    if count == 4:
        return _gmt_offset(value, 4)
    return format_offset(value, 5, "Z") if count == 5 else format_offset(value, 2, None)


FieldFn = Callable[[datetime, int, Zone], str]
_FIELDS: dict[str, FieldFn] = {
    "G": lambda v, c, z: "AD" if c <= 3 else "Anno Domini" if c == 4 else "A",
    "y": lambda v, c, z: _year(v.year, c),
    "u": lambda v, c, z: _year(v.year, c),
    "Y": lambda v, c, z: _year(v.isocalendar()[0], c),
    "Q": lambda v, c, z: _quarter(v, c),
    "q": lambda v, c, z: _quarter(v, c),
    "M": lambda v, c, z: _text_field(MONTHS, v.month - 1, c, v.month),
    "L": lambda v, c, z: _text_field(MONTHS, v.month - 1, c, v.month),
    "w": lambda v, c, z: _num(v.isocalendar()[1], c),
    "d": lambda v, c, z: _num(v.day, c),
    "D": lambda v, c, z: _num(v.timetuple().tm_yday, c),
    "E": lambda v, c, z: _text_field(DAYS, v.weekday(), max(c, 3), 0),
    "e": lambda v, c, z: _text_field(DAYS, v.weekday(), c, (v.weekday() + 1) % 7 + 1),
    "c": lambda v, c, z: _text_field(DAYS, v.weekday(), c, (v.weekday() + 1) % 7 + 1),
    "a": lambda v, c, z: "AM" if v.hour < 12 else "PM",
    "h": lambda v, c, z: _hour12(v, c, zero_based=False),
    "K": lambda v, c, z: _hour12(v, c, zero_based=True),
    "k": lambda v, c, z: _num(v.hour or 24, c),
    "H": lambda v, c, z: _num(v.hour, c),
    "m": lambda v, c, z: _num(v.minute, c),
    "s": lambda v, c, z: _num(v.second, c),
    "S": lambda v, c, z: _fraction(v, c),
    "A": lambda v, c, z: _num(
        ((v.hour * 60 + v.minute) * 60 + v.second) * 1000 + v.microsecond // 1000, c
    ),
    "n": lambda v, c, z: _num(v.microsecond * 1000, c),
    "N": lambda v, c, z: _num(
        ((v.hour * 60 + v.minute) * 60 + v.second) * 10**9 + v.microsecond * 1000, c
    ),
    "V": lambda v, c, z: z.zone_id if z.zone_id != "Z" or v.utcoffset() else "Z",
    "z": _zone_name,
    "O": lambda v, c, z: _gmt_offset(v, c),
    "X": lambda v, c, z: format_offset(v, c, "Z"),
    "x": lambda v, c, z: format_offset(v, c, None),
    "Z": lambda v, c, z: (
        _gmt_offset(v, 4)
        if c == 4
        else format_offset(v, 5, "Z")
        if c == 5
        else format_offset(v, 2, None)
    ),
}


def format_pattern(value: datetime, pattern: str, zone: Zone) -> str:
    """Format an aware datetime (already in ``zone``) with a Java pattern."""
    out = []
    for piece in compile_pattern(pattern):
        if isinstance(piece, str):
            out.append(piece)
        else:
            out.append(_FIELDS[piece[0]](value, piece[1], zone))
    return "".join(out)


# -- predefined ISO formatters ----------------------------------------------------------------
def _iso_local_time(value: datetime) -> str:
    """``HH:mm:ss`` plus the fraction with trailing zeros removed (ISO_LOCAL_TIME)."""
    out = value.strftime("%H:%M:%S")
    if value.microsecond:
        out += "." + f"{value.microsecond:06d}".rstrip("0")
    return out


def _iso_offset(value: datetime) -> str:
    return format_offset(value, 5, "Z")


def _iso_zone_suffix(value: datetime, zone: Zone) -> str:
    return f"[{zone.zone_id}]" if zone.is_region else ""


def _rfc_1123(value: datetime, zone: Zone) -> str:
    offset = format_offset(value, 2, "GMT")
    return format_pattern(value, "EEE, d MMM yyyy HH:mm:ss ", zone) + offset


IsoFn = Callable[[datetime, Zone], str]
PREDEFINED_PATTERNS = {
    "iso": "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX",
    "iso_sec": "yyyy-MM-dd'T'HH:mm:ssXXX",
    "sql": "yyyy-MM-dd HH:mm:ss.SSSSSS",
    "sql_seq": "yyyy-MM-dd HH:mm:ss",
}
ISO_FORMATTERS: dict[str, IsoFn] = {
    "iso_date_time": lambda v, z: (
        f"{v.date().isoformat()}T{_iso_local_time(v)}{_iso_offset(v)}{_iso_zone_suffix(v, z)}"
    ),
    "iso_zoned_date_time": lambda v, z: (
        f"{v.date().isoformat()}T{_iso_local_time(v)}{_iso_offset(v)}{_iso_zone_suffix(v, z)}"
    ),
    "iso_offset_date_time": lambda v, z: (
        f"{v.date().isoformat()}T{_iso_local_time(v)}{_iso_offset(v)}"
    ),
    "iso_date": lambda v, z: v.date().isoformat() + _iso_offset(v),
    "iso_time": lambda v, z: _iso_local_time(v) + _iso_offset(v),
    "iso_local_date": lambda v, z: v.date().isoformat(),
    "iso_instant": lambda v, z: instant_text(v),
    "iso_local_date_time": lambda v, z: f"{v.date().isoformat()}T{_iso_local_time(v)}",
    "iso_local_time": lambda v, z: _iso_local_time(v),
    "iso_offset_time": lambda v, z: _iso_local_time(v) + _iso_offset(v),
    "iso_ordinal_date": lambda v, z: format_pattern(v, "yyyy-DDD", z) + _iso_offset(v),
    "iso_week_date": lambda v, z: (
        f"{v.isocalendar()[0]:04d}-W{v.isocalendar()[1]:02d}-{v.isoweekday()}{_iso_offset(v)}"
    ),
    "rfc_1123_date_time": _rfc_1123,
}


def format_named(value: datetime, fmt: str, zone: Zone) -> str:
    """Format with Kestra's format argument: a predefined name, a style, or a Java pattern."""
    localized = value.astimezone(zone.tz)
    iso = ISO_FORMATTERS.get(fmt)
    if iso is not None:
        return iso(localized, zone)
    pattern = PREDEFINED_PATTERNS.get(fmt) or STYLES.get(fmt) or fmt
    return format_pattern(localized, pattern, zone)


__all__ = ["Zone", "compile_pattern", "format_named", "format_pattern", "resolve_zone"]
