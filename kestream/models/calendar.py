"""Calendar facts the date conditions need: weekdays in a month, and public holidays.

Public holidays come from the maintained ``holidays`` package (country and subdivision
calendars, updated with each release); one calendar per (country, subdivision) is built lazily
and kept, as it extends itself year by year on lookup.
"""

from __future__ import annotations

import calendar
from datetime import date
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the package is imported on the first holiday lookup: ~9 MB in every process
    import holidays

WEEKDAYS = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")
_NTH = {"FIRST": 0, "SECOND": 1, "THIRD": 2, "FOURTH": 3}


def weekday_name(day: date) -> str:
    return WEEKDAYS[day.weekday()]


def is_weekday_in_month(day: date, weekday: str, position: str) -> bool:
    """Whether ``day`` is the FIRST, SECOND, THIRD, FOURTH or LAST ``weekday`` of its month."""
    if weekday_name(day) != weekday:
        return False
    if position == "LAST":
        return day.day + 7 > calendar.monthrange(day.year, day.month)[1]
    return (day.day - 1) // 7 == _NTH[position]


def _subdivision(country: str, subdivision: str | None) -> str | None:
    """``DE-BY`` (ISO 3166-2) or ``BY``, as the calendars name it."""
    if subdivision is None:
        return None
    prefix = country.upper() + "-"
    upper = subdivision.upper()
    return upper[len(prefix) :] if upper.startswith(prefix) else upper


@cache
def _calendar(country: str, subdivision: str | None) -> holidays.HolidayBase:
    import holidays

    try:
        return holidays.country_holidays(country.upper(), subdiv=subdivision)
    except NotImplementedError as exc:  # the package's way of saying "no such calendar"
        raise ValueError(str(exc)) from None


def check_country(country: str, subdivision: str | None = None) -> None:
    """Raise ValueError naming the problem when no calendar exists for these codes."""
    _calendar(country, _subdivision(country, subdivision))


def is_public_holiday(day: date, country: str, subdivision: str | None = None) -> bool:
    return day in _calendar(country, _subdivision(country, subdivision))
