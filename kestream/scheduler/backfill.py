"""A Schedule trigger's backfill: the slots between ``start`` and ``end`` fired again, on demand.

Kestra's shape (``PUT /api/v1/{tenant}/triggers`` with a ``backfill`` object): ``start``,
``end`` (None: "now" when the backfill is set), ``inputs`` and ``labels`` for the executions it
starts, ``paused``, ``currentDate`` (the first slot at or after it is the next to fire) and
``previousNextExecutionDate`` (the trigger's next slot when the backfill was set).

A backfill runs beside the trigger's own schedule: the regular slots keep firing on time while
it catches up, ``lateMaximumDelay`` does not apply to it, the trigger's ``conditions`` do. Its
executions have their own ids, derived from the backfill's ``id`` and the slot
(:func:`backfill_execution_id`), so a slot that already ran on schedule runs again (Kestra's
"backfill replays successful executions too"), and the same slot fired twice by one backfill (a
crash between producing the execution and writing the trigger's record) is the same execution,
which the executor drops as a repeat. ``id`` is kestream's own field, set by whoever creates the
backfill; it never leaves the triggers topic through the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from kestream.expressions import validate_template
from kestream.models import instants
from kestream.models.ids import derived_id
from kestream.scheduler.cron import Cron

__all__ = ["Backfill", "BackfillError", "backfill_execution_id"]

_SECOND = timedelta(seconds=1)


class BackfillError(ValueError):
    """A backfill that cannot be set (no start, end before start, a reserved label, ...)."""


@dataclass(frozen=True, slots=True)
class Backfill:
    """One backfill of one trigger (module docs). Frozen: progress makes a new one."""

    id: str
    start: datetime
    end: datetime
    current_date: datetime
    paused: bool = False
    inputs: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    previous_next_execution_date: datetime | None = None

    def next_slot(self, cron: Cron) -> datetime | None:
        """The next slot this backfill owes, or None once it has fired every one up to ``end``."""
        slot = cron.next_after(self.current_date - _SECOND)
        return slot if slot is not None and slot <= self.end else None

    def after(self, slot: datetime) -> Backfill:
        """The backfill once ``slot`` has fired: it goes on from the second after."""
        return replace(self, current_date=slot + _SECOND)

    def with_paused(self, paused: bool) -> Backfill:
        return replace(self, paused=paused)

    # -- JSON (the trigger record's ``backfill``; Kestra's names) ------------------------------

    def to_dict(self, *, with_id: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "start": _iso(self.start),
            "end": _iso(self.end),
            "currentDate": _iso(self.current_date),
            "paused": self.paused,
            "inputs": dict(self.inputs) or None,
            "labels": [{"key": k, "value": v} for k, v in self.labels.items()] or None,
            "previousNextExecutionDate": _iso(self.previous_next_execution_date),
        }
        if with_id:
            body["id"] = self.id
        return body

    @classmethod
    def from_dict(cls, data: Any) -> Backfill:
        """Read a stored backfill; raises :class:`BackfillError` naming what is wrong."""
        if not isinstance(data, dict):
            raise BackfillError(f"a backfill must be a JSON object, got {type(data).__name__}")
        backfill_id = data.get("id")
        if not isinstance(backfill_id, str) or not backfill_id:
            raise BackfillError("a stored backfill needs its 'id'")
        start = parse_instant(data.get("start"), "start")
        end = parse_instant(data.get("end"), "end")
        if start is None or end is None:
            raise BackfillError("a stored backfill needs 'start' and 'end'")
        current = parse_instant(data.get("currentDate"), "currentDate") or start
        return cls(
            id=backfill_id,
            start=start,
            end=end,
            current_date=current,
            paused=bool(data.get("paused", False)),
            inputs=_inputs(data.get("inputs")),
            labels=parse_backfill_labels(data.get("labels")),
            previous_next_execution_date=parse_instant(
                data.get("previousNextExecutionDate"), "previousNextExecutionDate"
            ),
        )

    @classmethod
    def requested(
        cls,
        data: Any,
        *,
        backfill_id: str,
        now: datetime,
        next_execution_date: datetime | None,
    ) -> Backfill:
        """A new backfill from a request's ``backfill`` object: ``end`` defaults to ``now``;
        ``start`` must come before ``end``; labels may not start with ``system.``, and their
        values must be valid templates (rendered for each slot, a syntax error would only show
        as a label kept as written, one warning per slot)."""
        if not isinstance(data, dict):
            raise BackfillError("'backfill' must be an object with at least a 'start'")
        start = parse_instant(data.get("start"), "start")
        if start is None:
            raise BackfillError("a backfill needs a 'start' date")
        end = parse_instant(data.get("end"), "end") or now
        if end < start:
            raise BackfillError(
                f"the backfill's end ({_iso(end)}) is before its start ({_iso(start)})"
            )
        labels = parse_backfill_labels(data.get("labels"))
        reserved = sorted(k for k in labels if k.startswith("system."))
        if reserved:
            raise BackfillError(f"labels starting with 'system.' are reserved: {reserved}")
        for key, value in labels.items():
            if (problem := validate_template(value)) is not None:
                raise BackfillError(f"backfill label '{key}' is not a valid template: {problem}")
        return cls(
            id=backfill_id,
            start=start,
            end=end,
            current_date=start,
            paused=bool(data.get("paused") or False),
            inputs=_inputs(data.get("inputs")),
            labels=labels,
            previous_next_execution_date=next_execution_date,
        )


def backfill_execution_id(
    namespace: str, flow_id: str, trigger_id: str, backfill_id: str, slot_utc: str
) -> str:
    """The execution a backfill starts for a slot: the same for the same backfill and slot,
    never one of the trigger's own (``schedule`` ids) nor another backfill's."""
    return derived_id("backfill", namespace, flow_id, trigger_id, backfill_id, slot_utc)


def parse_instant(value: Any, name: str) -> datetime | None:
    """An ISO-8601 date with an offset (``Z`` too), in UTC; None for None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BackfillError(f"backfill '{name}' must be an ISO-8601 date, got {value!r}")
    try:
        return instants.parse_instant(value, assume_utc=False)
    except instants.NoOffset:
        raise BackfillError(f"backfill '{name}' needs a UTC offset: {value!r}") from None
    except ValueError:
        raise BackfillError(f"backfill '{name}' is not an ISO-8601 date: {value!r}") from None


def parse_backfill_labels(value: Any) -> dict[str, str]:
    """Kestra's labels, a list of ``{key, value}`` or a map; values become text."""
    if value is None:
        return {}
    pairs: list[tuple[Any, Any]]
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list) and all(isinstance(item, dict) for item in value):
        pairs = [(item.get("key"), item.get("value")) for item in value]
    else:
        raise BackfillError("backfill 'labels' must be a list of {key, value} or a map")
    labels: dict[str, str] = {}
    for key, label_value in pairs:
        if not isinstance(key, str) or not key or label_value is None:
            raise BackfillError(f"backfill label {key!r} needs a key and a value")
        labels[key] = label_value if isinstance(label_value, str) else str(label_value)
    return labels


def _inputs(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BackfillError("backfill 'inputs' must be a map of input ids to values")
    return dict(value)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")
