"""ISO-8601 durations as Kestra writes them (Java's ``Duration``: ``PT1S``, ``P1DT2H``).

Kept here, dependency-free, because flows, inputs, retries, pauses and the scheduler all need
the same parse and the same canonical text: a duration rendered into an expression must read back
unchanged.
"""

from __future__ import annotations

import re
from datetime import timedelta

_PATTERN = re.compile(
    r"^(?P<sign>[-+]?)P(?:(?P<days>[-+]?\d+(?:[.,]\d+)?)D)?"
    r"(?:T(?:(?P<hours>[-+]?\d+(?:[.,]\d+)?)H)?(?:(?P<minutes>[-+]?\d+(?:[.,]\d+)?)M)?"
    r"(?:(?P<seconds>[-+]?\d+(?:[.,]\d+)?)S)?)?$",
    re.IGNORECASE,
)


class DurationError(ValueError):
    """A text that is not an ISO-8601 duration."""


def parse_duration(text: str) -> timedelta:
    """Parse ``PnDTnHnMn.nS`` (case-insensitive, as Java's ``Duration.parse``) into a timedelta."""
    match = _PATTERN.match(text.strip())
    if match is None or text.strip().upper() in {"P", "PT"} or text.strip().upper().endswith("T"):
        raise DurationError(f"'{text}' is not an ISO-8601 duration (for example PT30S, PT1H, P1D)")
    parts = {
        k: float(v.replace(",", ".")) for k, v in match.groupdict().items() if v and k != "sign"
    }
    delta = timedelta(
        days=parts.get("days", 0.0),
        hours=parts.get("hours", 0.0),
        minutes=parts.get("minutes", 0.0),
        seconds=parts.get("seconds", 0.0),
    )
    return -delta if match.group("sign") == "-" else delta


def format_duration(delta: timedelta) -> str:
    """Format as Java's ``Duration.toString``: hours, minutes, seconds; days folded into hours."""
    total_us = delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds
    if total_us == 0:
        return "PT0S"
    sign = "-" if total_us < 0 else ""
    total_us = abs(total_us)
    hours, rest = divmod(total_us, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    seconds, micros = divmod(rest, 1_000_000)
    out = "PT"
    if hours:
        out += f"{sign}{hours}H"
    if minutes:
        out += f"{sign}{minutes}M"
    if seconds or micros:
        frac = f".{micros:06d}".rstrip("0") if micros else ""
        out += f"{sign}{seconds}{frac}S"
    return out


def is_duration(text: str) -> bool:
    """True when ``text`` parses as an ISO-8601 duration."""
    try:
        parse_duration(text)
    except DurationError:
        return False
    return True
