"""Values in records with their types: dates, times and durations tagged in JSON, and back.

Every record that carries user values (the changelog's state, the events' inputs and outputs,
the worker's results) holds them in this form. It needs nothing of the engine, so the record
sizes (:mod:`kestream.executor.sizes`), and the record limit every process learns at connect,
come without the executor's state and the flow models that the changelog codec
(:mod:`kestream.executor.codec`) needs: standalone's supervisor connects, and runs no flow.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any


class CodecError(ValueError):
    """A record that cannot be turned back into what was written: a malformed tag here, a
    changelog record that is not state in :mod:`kestream.executor.codec`."""


#: Wraps a user's map whose only key starts with ``$``, so that it can never be read as a tag.
ESCAPE = "$esc"


#: Types :func:`encode_value` returns as they are (exactly these: a subclass takes the long way).
_PLAIN = frozenset({str, int, float, bool, type(None)})


def encode_value(value: Any) -> Any:
    """JSON-ready copy of ``value`` with datetimes, dates, times and durations tagged.

    A tag is a map with one ``$``-key. A user's map of that shape (a webhook body
    ``{"$td": 1e300}``) is wrapped in ``{"$esc": ...}``, so data always comes back as the data
    it was, never as a tag.
    """
    if type(value) in _PLAIN:  # most values: returned before six isinstance checks
        return value
    if isinstance(value, dict):
        encoded = {str(k): encode_value(v) for k, v in value.items()}
        if len(encoded) == 1 and next(iter(encoded)).startswith("$"):
            return {ESCAPE: encoded}
        return encoded
    if isinstance(value, list | tuple):
        return [encode_value(v) for v in value]
    if isinstance(value, date | time):  # (a datetime is a date)
        tag = "$dt" if isinstance(value, datetime) else "$d" if isinstance(value, date) else "$t"
        return {tag: value.isoformat()}
    if isinstance(value, timedelta):
        return {"$td": value.total_seconds()}
    return value


_TAGS: dict[str, Any] = {
    "$dt": datetime.fromisoformat,
    "$d": date.fromisoformat,
    "$t": time.fromisoformat,
    "$td": lambda seconds: timedelta(seconds=seconds),
}


def decode_value(value: Any) -> Any:
    """Inverse of :func:`encode_value`; a malformed tag raises :class:`CodecError`."""
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((tag, raw),) = value.items()
        if tag == ESCAPE:
            if not isinstance(raw, dict):
                raise CodecError(f"{ESCAPE} must wrap a map, not {type(raw).__name__}")
            return {k: decode_value(v) for k, v in raw.items()}
        decode = _TAGS.get(tag)
        if decode is not None:
            try:
                return decode(raw)
            except (TypeError, ValueError, OverflowError) as exc:
                raise CodecError(f"bad {tag} value {str(raw)[:40]!r}: {exc}") from None
    return {k: decode_value(v) for k, v in value.items()}
