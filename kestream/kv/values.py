"""What a KV entry is: a key of a namespace, a typed value, dates, an optional expiry.

Kestra's seven types (``STRING``, ``NUMBER``, ``BOOLEAN``, ``DATETIME``, ``DATE``, ``DURATION``,
``JSON``). Values are kept as JSON-native data so that an entry reads back the same in every
process: ``DATETIME`` as ISO-8601 UTC text (``2026-01-02T03:04:05Z``), ``DATE`` as ``2026-01-02``,
``DURATION`` as Java's ``Duration`` text (``PT1H``), ``JSON`` as the parsed document.

Two ways to type a value:

- :func:`typed_value`: the Set task with ``kvType``, which parses the rendered text as that type
  and refuses text that is not one;
- :func:`infer_value`: the Set task without ``kvType`` (a YAML map becomes ``JSON``, a number
  ``NUMBER``, text stays ``STRING``) and the API's ``PUT`` (the body is read as JSON when it is
  JSON, then as a date, a date-time or a duration, and is otherwise text), as Kestra does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kestream.models.durations import DurationError, format_duration, parse_duration
from kestream.models.ids import NAMESPACE_PATTERN

__all__ = [
    "KVEntry",
    "KVType",
    "KVValueError",
    "check_key",
    "check_namespace",
    "infer_value",
    "parse_text",
    "typed_value",
]

_KEY = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$")
_NAMESPACE = re.compile(NAMESPACE_PATTERN)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


class KVValueError(ValueError):
    """A value that is not of the asked type, or a key Kestra would refuse."""


class KVType(StrEnum):
    STRING = "STRING"
    NUMBER = "NUMBER"
    BOOLEAN = "BOOLEAN"
    DATETIME = "DATETIME"
    DATE = "DATE"
    DURATION = "DURATION"
    JSON = "JSON"


class KVEntry(BaseModel):
    """One entry as every store keeps it (and as the KV topic carries it)."""

    model_config = ConfigDict(frozen=True)

    namespace: str = Field(pattern=NAMESPACE_PATTERN)  # never a ``/``: the record key splits
    key: str = Field(pattern=_KEY.pattern)
    type: KVType
    value: Any
    description: str | None = None
    creationDate: datetime
    updateDate: datetime
    expirationDate: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.expirationDate is not None and self.expirationDate <= now

    def listing(self) -> dict[str, Any]:
        """The entry as Kestra's key listing shows it (no value)."""
        return {
            "key": self.key,
            "description": self.description,
            "creationDate": _iso(self.creationDate),
            "updateDate": _iso(self.updateDate),
            "expirationDate": _iso(self.expirationDate) if self.expirationDate else None,
        }


def check_key(key: str) -> str:
    """Kestra's key rule: letters, digits, ``.``, ``_`` and ``-``, starting alphanumeric."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise KVValueError(
            f"Key '{key}' is invalid: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or a digit)"
        )
    return key


def check_namespace(namespace: str) -> str:
    """A flow namespace's rule (lower-case letters, digits, ``.``, ``_``, ``-``): a rendered
    ``a/b`` would make the record key ``a/b/c`` ambiguous."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise KVValueError(f"Namespace '{namespace}' is invalid for the KV store")
    return namespace


def _iso(moment: datetime) -> str:
    text = moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return text


def _datetime(text: str) -> str:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise KVValueError(f"'{text[:60]}' is not an ISO-8601 date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _iso(moment)


def _date(text: str) -> str:
    try:
        return date.fromisoformat(text.strip()).isoformat()
    except ValueError:
        raise KVValueError(f"'{text[:60]}' is not an ISO-8601 date") from None


def _duration(text: str) -> str:
    try:
        return format_duration(parse_duration(text))
    except DurationError as exc:
        raise KVValueError(str(exc)) from None


def _string(value: Any) -> Any:
    return value if isinstance(value, str) else json.dumps(value)


def _number(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    try:
        number = float(str(value).strip())
    except ValueError:
        raise KVValueError(f"'{str(value)[:60]}' is not a number") from None
    return int(number) if number.is_integer() and "." not in str(value) else number


def _boolean(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered not in ("true", "false"):
        raise KVValueError(f"'{str(value)[:60]}' is not a boolean")
    return lowered == "true"


def _json(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        raise KVValueError(f"'{value[:60]}' is not JSON") from None


_PARSERS: dict[KVType, Callable[[Any], Any]] = {
    KVType.STRING: _string,
    KVType.NUMBER: _number,
    KVType.BOOLEAN: _boolean,
    KVType.DATETIME: lambda v: _iso(v) if isinstance(v, datetime) else _datetime(str(v)),
    KVType.DATE: lambda v: v.isoformat() if isinstance(v, date) else _date(str(v)),
    KVType.DURATION: lambda v: (
        format_duration(v) if isinstance(v, timedelta) else _duration(str(v))
    ),
    KVType.JSON: _json,
}


def typed_value(kv_type: KVType, value: Any) -> Any:
    """``value`` (rendered text, or a YAML value) as a value of ``kv_type``; KVValueError if not."""
    return _PARSERS[kv_type](value)


def infer_value(value: Any) -> tuple[KVType, Any]:
    """The Set task's typing without ``kvType``: YAML data keeps its type, text is a STRING."""
    if isinstance(value, bool):
        return KVType.BOOLEAN, value
    if isinstance(value, (int, float)):
        return KVType.NUMBER, value
    if isinstance(value, (dict, list)):
        return KVType.JSON, value
    if isinstance(value, datetime):
        return KVType.DATETIME, _iso(value)
    if isinstance(value, date):
        return KVType.DATE, value.isoformat()
    if value is None:
        return KVType.JSON, None
    return KVType.STRING, str(value)


def parse_text(text: str) -> tuple[KVType, Any]:
    """The API's ``PUT`` body typed as Kestra reads it (module docs)."""
    stripped = text.strip()
    try:
        parsed = json.loads(stripped)
    except ValueError:
        parsed = _NOT_JSON
    if parsed is not _NOT_JSON:
        return infer_value(parsed)  # a quoted JSON string stays a STRING
    for kv_type, shape in ((KVType.DATE, _DATE), (KVType.DATETIME, _DATETIME)):
        if shape.match(stripped):
            try:
                return kv_type, typed_value(kv_type, stripped)
            except KVValueError:
                break
    if stripped.upper().startswith(("P", "-P")):
        try:
            return KVType.DURATION, _duration(stripped)
        except KVValueError:
            pass
    return KVType.STRING, text


_NOT_JSON = object()
