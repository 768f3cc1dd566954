"""What the scheduler remembers about one trigger, and its JSON form for the triggers topic.

The record is keyed ``namespace/flowId/triggerId`` (:func:`trigger_key`) in a compacted topic, so
the latest record per trigger is the scheduler's whole memory across restarts: the last slot it
fired (``date``) keeps a restarted scheduler from firing that slot again, ``nextExecutionDate``
says what it owes next, and ``disabled`` survives a ``stopAfter``. The JSON field names follow
Kestra's trigger context, so a reader that knows Kestra's shape recognises them. ``backfill`` is
the trigger's backfill in progress (:mod:`kestream.scheduler.backfill`); ``commandOffset`` the
offset of the last trigger command (:mod:`kestream.scheduler.commands`) applied to the record,
so a command read again after a crash is not applied twice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from kestream.scheduler.backfill import Backfill, BackfillError

__all__ = ["TriggerState", "split_trigger_key", "trigger_key"]

_SEPARATOR = "/"


def trigger_key(namespace: str, flow_id: str, trigger_id: str) -> str:
    """``namespace/flowId/triggerId``: the record's key (none of the three may contain ``/``)."""
    return f"{namespace}{_SEPARATOR}{flow_id}{_SEPARATOR}{trigger_id}"


def split_trigger_key(key: str) -> tuple[str, str, str]:
    """The inverse of :func:`trigger_key`; raises ValueError for a malformed key."""
    parts = key.split(_SEPARATOR)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"a trigger key is 'namespace/flowId/triggerId', got {key!r}")
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True, slots=True)
class TriggerState:
    """One trigger's record. Frozen: every change is a new record, written as it is made.

    Attributes:
        namespace, flow_id, trigger_id: whose record it is.
        date: the last slot fired, or None before the first fire.
        next_execution_date: the next slot owed, or None when nothing is (disabled, or a cron
            with no future slot).
        disabled: set when an execution ended in one of the trigger's ``stopAfter`` states.
        flow_revision: the flow revision the last record was made with.
        execution_id: the execution the last fire created.
        schedule: what the slots were computed from (cron, zone, seconds flag); a loaded record
            whose schedule differs from the flow's is rescheduled from now, not recovered.
        backfill: the backfill in progress, if any.
        command_offset: the offset of the last trigger command applied to this record.
    """

    namespace: str
    flow_id: str
    trigger_id: str
    date: datetime | None = None
    next_execution_date: datetime | None = None
    disabled: bool = False
    flow_revision: int | None = None
    execution_id: str | None = None
    schedule: str | None = None
    backfill: Backfill | None = None
    command_offset: int | None = None

    @property
    def key(self) -> str:
        return trigger_key(self.namespace, self.flow_id, self.trigger_id)

    def evolve(self, **changes: Any) -> TriggerState:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "flowId": self.flow_id,
            "triggerId": self.trigger_id,
            "date": _iso(self.date),
            "nextExecutionDate": _iso(self.next_execution_date),
            "disabled": self.disabled,
            "flowRevision": self.flow_revision,
            "executionId": self.execution_id,
            "schedule": self.schedule,
            "backfill": None if self.backfill is None else self.backfill.to_dict(),
            "commandOffset": self.command_offset,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> TriggerState:
        """Build from :meth:`to_dict`'s shape; raises ValueError naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"a trigger state must be a JSON object, got {type(data).__name__}")
        try:
            state = cls(
                namespace=_text(data, "namespace"),
                flow_id=_text(data, "flowId"),
                trigger_id=_text(data, "triggerId"),
                date=_date(data, "date"),
                next_execution_date=_date(data, "nextExecutionDate"),
                disabled=bool(data.get("disabled", False)),
                flow_revision=_int(data, "flowRevision"),
                execution_id=_optional_text(data, "executionId"),
                schedule=_optional_text(data, "schedule"),
                backfill=_backfill(data.get("backfill")),
                command_offset=_int(data, "commandOffset"),
            )
        except KeyError as exc:
            raise ValueError(f"a trigger state needs '{exc.args[0]}'") from None
        return state

    @classmethod
    def from_json(cls, raw: bytes | str) -> TriggerState:
        """Decode a record from the triggers topic; raises ValueError for bad JSON or shape."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"a trigger state is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _text(data: dict[str, Any], name: str) -> str:
    value = data[name]
    if not isinstance(value, str) or not value:
        raise ValueError(f"trigger state '{name}' must be non-empty text, got {value!r}")
    return value


def _optional_text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"trigger state '{name}' must be text, got {value!r}")
    return value


def _int(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"trigger state '{name}' must be an integer, got {value!r}")
    return value


def _backfill(value: Any) -> Backfill | None:
    if value is None:
        return None
    try:
        return Backfill.from_dict(value)
    except BackfillError as exc:
        raise ValueError(f"trigger state 'backfill': {exc}") from None


def _date(data: dict[str, Any], name: str) -> datetime | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"trigger state '{name}' must be an ISO-8601 date, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"trigger state '{name}' is not an ISO-8601 date: {value!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"trigger state '{name}' needs a UTC offset: {value!r}")
    return parsed.astimezone(UTC)
