"""Kestra's date filters and the ``now()`` function: ``date``, ``dateAdd``, ``timestamp*``.

Inputs may be datetimes, dates, epoch seconds or text (ISO, or ``existingFormat``); output is text
in ``format`` (default Kestra's ``iso``: microseconds and an offset) in ``timeZone`` (default UTC,
the engine's zone).
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from .errors import RenderError
from .javatime import Zone, format_named, resolve_zone
from .javatime_parse import parse_datetime
from .operators import is_number, type_name
from .registry import template_filter, template_function

_TIME_UNITS = {
    "NANOS": timedelta(microseconds=0.001),
    "MICROS": timedelta(microseconds=1),
    "MILLIS": timedelta(milliseconds=1),
    "SECONDS": timedelta(seconds=1),
    "MINUTES": timedelta(minutes=1),
    "HOURS": timedelta(hours=1),
    "HALF_DAYS": timedelta(hours=12),
}
_DATE_UNITS = {"DAYS": 1, "WEEKS": 7}
_MONTH_UNITS = {"MONTHS": 1, "YEARS": 12, "DECADES": 120, "CENTURIES": 1200, "MILLENNIA": 12000}


def to_datetime(value: Any, zone: Zone, existing_format: str | None) -> datetime:
    """Kestra's ``AbstractDate.convert``: an aware datetime for any supported input."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=zone.tz)
    if isinstance(value, date):
        return datetime.combine(value, time(12), tzinfo=zone.tz)
    if is_number(value):
        return datetime.fromtimestamp(float(value), tz=UTC).astimezone(zone.tz)
    if isinstance(value, str):
        return parse_datetime(value, existing_format, zone)
    raise RenderError(f"cannot convert a {type_name(value)} to a date")


def _text_arg(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise RenderError(f"argument '{name}' must be a string")


@template_filter("date")
def date_filter(
    value: Any,
    format: Any = "iso",
    timeZone: Any = None,
    existingFormat: Any = None,
    locale: Any = None,
) -> Any:
    """Format a date; ``locale`` is accepted but only English names exist."""
    if value is None:
        return None
    zone = resolve_zone(_text_arg(timeZone, "timeZone"))
    moment = to_datetime(value, zone, _text_arg(existingFormat, "existingFormat"))
    return format_named(moment, _text_arg(format, "format") or "iso", zone)


def add_months(moment: datetime, months: int) -> datetime:
    """Calendar months added, the day clamped to the month's length (Java ``plusMonths``)."""
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    if not 1 <= year <= 9999:
        raise RenderError("date out of range")
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def plus(moment: datetime, amount: int, unit: str) -> datetime:
    """``ZonedDateTime.plus(amount, ChronoUnit.valueOf(unit))``."""
    if unit in _TIME_UNITS:
        utc = moment.astimezone(UTC) + _TIME_UNITS[unit] * amount
        return utc.astimezone(moment.tzinfo)
    if unit in _DATE_UNITS:
        local = moment.replace(tzinfo=None) + timedelta(days=_DATE_UNITS[unit] * amount)
        return local.replace(tzinfo=moment.tzinfo)
    if unit in _MONTH_UNITS:
        return add_months(moment, _MONTH_UNITS[unit] * amount)
    raise RenderError(f"No enum constant java.time.temporal.ChronoUnit.{unit}")


@template_filter("dateAdd")
def date_add(
    value: Any,
    amount: Any,
    unit: Any,
    format: Any = "iso",
    timeZone: Any = None,
    existingFormat: Any = None,
    locale: Any = None,
) -> Any:
    """Add ``amount`` ``unit`` (DAYS, HOURS, MONTHS...) and format the result."""
    if value is None:
        return None
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise RenderError("argument 'amount' must be an integer")
    zone = resolve_zone(_text_arg(timeZone, "timeZone"))
    moment = to_datetime(value, zone, _text_arg(existingFormat, "existingFormat"))
    try:
        moved = plus(moment.astimezone(zone.tz), amount, str(unit))
    except OverflowError:
        raise RenderError("date out of range") from None
    return format_named(moved, _text_arg(format, "format") or "iso", zone)


def _epoch(value: Any, timeZone: Any, existingFormat: Any) -> datetime:
    zone = resolve_zone(_text_arg(timeZone, "timeZone"))
    return to_datetime(value, zone, _text_arg(existingFormat, "existingFormat"))


def _delta_units(moment: datetime, per_second: int) -> int:
    """Whole units since the epoch, exactly (no float rounding)."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return micros * per_second // 1_000_000


@template_filter("timestamp")
def timestamp(value: Any, timeZone: Any = None, existingFormat: Any = None) -> Any:
    """Epoch seconds."""
    return None if value is None else _delta_units(_epoch(value, timeZone, existingFormat), 1)


@template_filter("timestampMilli")
def timestamp_milli(value: Any, timeZone: Any = None, existingFormat: Any = None) -> Any:
    """Epoch milliseconds."""
    return None if value is None else _delta_units(_epoch(value, timeZone, existingFormat), 1000)


@template_filter("timestampMicro")
def timestamp_micro(value: Any, timeZone: Any = None, existingFormat: Any = None) -> Any:
    """Epoch microseconds."""
    if value is None:
        return None
    return _delta_units(_epoch(value, timeZone, existingFormat), 1_000_000)


@template_filter("timestampNano")
def timestamp_nano(value: Any, timeZone: Any = None, existingFormat: Any = None) -> Any:
    """Epoch nanoseconds."""
    if value is None:
        return None
    return _delta_units(_epoch(value, timeZone, existingFormat), 1_000_000_000)


def engine_now(ctx: Mapping[str, Any]) -> datetime:
    """The engine's clock (``ctx['@now']``), or the real UTC time when none is given."""
    clock = ctx.get("@now")
    if callable(clock):
        moment = clock()
        if isinstance(moment, datetime):
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return datetime.now(UTC)


@template_function("now", uses_ctx=True)
def now(
    ctx: Mapping[str, Any],
    format: Any = "iso",
    timeZone: Any = None,
    locale: Any = None,
) -> str:
    """The current time formatted like the ``date`` filter (Kestra returns text)."""
    zone = resolve_zone(_text_arg(timeZone, "timeZone"))
    return format_named(engine_now(ctx), _text_arg(format, "format") or "iso", zone)
