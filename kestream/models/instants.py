"""Instants as text, one definition of each direction.

- :func:`instant_text`: Java's ``Instant.toString``, what Kestra prints for a value it keeps as an
  ``Instant`` (a DATETIME input, ``{{ now() | date('iso_instant') }}``);
- :func:`parse_instant`: ISO-8601 date-time text as an aware UTC datetime, what every date a user
  gives kestream goes through (purge filters, search parameters, backfill bounds).
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["NoOffset", "instant_text", "parse_instant"]


class NoOffset(ValueError):
    """A date-time without the UTC offset it needs (:func:`parse_instant`)."""


def instant_text(moment: datetime) -> str:
    """Java's ``Instant.toString`` of an aware datetime: UTC, ``Z``, and a fraction only when it is
    not zero, in groups of three digits (``2024-02-29T12:00:00Z``, ``...12:00:00.500Z``)."""
    utc = moment.astimezone(UTC)
    text = utc.replace(tzinfo=None, microsecond=0).isoformat()
    if utc.microsecond:
        fraction = f"{utc.microsecond:06d}"
        text += "." + (fraction[:3] if fraction.endswith("000") else fraction)
    return text + "Z"


def parse_instant(text: str, *, assume_utc: bool = True) -> datetime:
    """ISO-8601 date-time text (``Z`` or an offset) as an aware UTC datetime.

    Text without an offset is UTC when ``assume_utc``, refused otherwise (:class:`NoOffset`);
    :class:`ValueError` for anything that is not such a date (callers put it in their words).
    """
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        if not assume_utc:
            raise NoOffset(f"{text!r} has no UTC offset")
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
