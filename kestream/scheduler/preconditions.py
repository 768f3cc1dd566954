"""A Flow trigger's preconditions: which were met, by whom, within which time window.

Kestra fires a Flow trigger with ``preconditions`` when *every* listed upstream flow (``flows``)
and execution filter (``where``) has been met by some ended execution inside the same time
window. One execution usually meets one precondition, so the scheduler keeps, per trigger, a
:class:`PreconditionWindow`: the window's bounds, the preconditions met so far (with when) and the
outputs of the executions that met them. The record is plain JSON so the runtime can keep it in
a compacted topic, like the trigger records.

Windows are computed in UTC (Kestra's documentation states its daily times in UTC):

- ``DURATION_WINDOW`` (default): back-to-back windows of ``window`` (default one day), aligned on
  the Unix epoch plus ``windowAdvance``, so a one-day window runs from midnight to midnight;
- ``SLIDING_WINDOW``: the last ``window`` (default one day) before now; a precondition met
  earlier no longer counts;
- ``DAILY_TIME_DEADLINE``: from midnight to ``deadline``; after the deadline, ended executions are
  not evaluated until the next day;
- ``DAILY_TIME_WINDOW``: from ``startTime`` to ``endTime`` (it may span midnight).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import orjson

from kestream.expressions.errors import RenderError
from kestream.expressions.patterns import fullmatch_within_budget
from kestream.models.durations import parse_duration
from kestream.models.flow import PreconditionFilter, Preconditions, TimeWindow, UpstreamFlow
from kestream.models.state import StateType

__all__ = [
    "MAX_COUNTED",
    "EndedExecution",
    "PreconditionWindow",
    "WindowSpec",
    "deep_merge",
    "met_preconditions",
    "window_bounds",
]

_DAY = timedelta(days=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FALSE_TEXT = frozenset({"", "false", "0", "-0"})


@dataclass(frozen=True, slots=True)
class EndedExecution:
    """What the scheduler needs to know about an execution that changed state (usually ended).

    ``end_date`` is when it ended; preconditions' time windows use it (the scheduler's clock when
    it is None), so evaluating the same event again gives the same answer.
    """

    execution_id: str
    namespace: str
    flow_id: str
    state: StateType
    labels: Mapping[str, str] = field(default_factory=dict)
    outputs: Mapping[str, Any] | None = None
    attempt: int = 1
    flow_revision: int | None = None
    end_date: datetime | None = None


# -- matching ---------------------------------------------------------------------------------


def _upstream_met(upstream: UpstreamFlow, ended: EndedExecution) -> bool:
    if ended.namespace != upstream.namespace:
        return False
    if upstream.flowId is not None and ended.flow_id != upstream.flowId:
        return False
    if upstream.states is not None and ended.state not in upstream.states:
        return False
    labels = upstream.labels or {}
    return all(ended.labels.get(k) == _label_text(v) for k, v in labels.items())


def _label_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _field_value(name: str, ended: EndedExecution) -> str | None:
    if name == "FLOW_ID":
        return ended.flow_id
    if name == "NAMESPACE":
        return ended.namespace
    if name == "STATE":
        return str(ended.state)
    return None  # EXPRESSION is refused when the flow is validated


def _filter_met(check: PreconditionFilter, ended: EndedExecution) -> bool:  # noqa: PLR0911
    value = _field_value(check.field, ended)
    operand = check.value or ""
    kind = check.type
    if kind in ("IN", "NOT_IN"):
        return (value in (check.values or [])) == (kind == "IN")
    if kind in ("IS_NULL", "IS_NOT_NULL"):
        return (value is None) == (kind == "IS_NULL")
    if kind in ("IS_TRUE", "IS_FALSE"):
        truthy = value is not None and value.strip().lower() not in _FALSE_TEXT
        return truthy == (kind == "IS_TRUE")
    if kind in ("EQUAL_TO", "NOT_EQUAL_TO"):
        return (value == operand) == (kind == "EQUAL_TO")
    if value is None:
        return False
    if kind == "STARTS_WITH":
        return value.startswith(operand)
    if kind == "ENDS_WITH":
        return value.endswith(operand)
    if kind == "CONTAINS":
        return operand in value
    # REGEX: Java's String.matches, whole text, with a time budget: the text is anyone's.
    try:
        return fullmatch_within_budget(operand, value)
    except RenderError:  # past the budget: the filter does not match
        return False


def met_preconditions(preconditions: Preconditions, ended: EndedExecution) -> list[str]:
    """The ids (:meth:`Preconditions.condition_ids`) of the preconditions ``ended`` meets."""
    ids = preconditions.condition_ids()
    met = [ids[n] for n, up in enumerate(preconditions.flows) if _upstream_met(up, ended)]
    offset = len(preconditions.flows)
    for n, where in enumerate(preconditions.where):
        results = (_filter_met(check, ended) for check in where.filters)
        if all(results) if where.operand == "AND" else any(results):
            met.append(ids[offset + n])
    return met


# -- windows ----------------------------------------------------------------------------------


def _on_day(day: date, text: str) -> datetime:
    moment = time.fromisoformat(text)
    zone = moment.tzinfo or UTC
    return datetime.combine(day, moment.replace(tzinfo=None), tzinfo=zone).astimezone(UTC)


def window_bounds(window: TimeWindow, now: datetime) -> tuple[datetime | None, datetime] | None:
    """The window containing ``now`` as ``(start, end)``; None when ``now`` is outside any.

    A sliding window has no fixed start (None): its end is ``now`` and each precondition counts
    only if it was met within ``window`` before.
    """
    now = now.astimezone(UTC)
    if window.type == "SLIDING_WINDOW":
        return None, now
    if window.type == "DURATION_WINDOW":
        length = parse_duration(window.window) if window.window else _DAY
        anchor = _EPOCH + (
            parse_duration(window.windowAdvance) if window.windowAdvance else _DAY * 0
        )
        start = anchor + ((now - anchor) // length) * length
        return start, start + length
    today = now.date()
    if window.type == "DAILY_TIME_DEADLINE":
        start, end = (
            datetime.combine(today, time(), tzinfo=UTC),
            _on_day(today, str(window.deadline)),
        )
        return (start, end) if start <= now < end else None
    start, end = _on_day(today, str(window.startTime)), _on_day(today, str(window.endTime))
    if end <= start:  # spans midnight
        if now >= start:
            end += _DAY
        else:
            start -= _DAY
    return (start, end) if start <= now < end else None


def sliding_length(window: TimeWindow) -> timedelta:
    return parse_duration(window.window) if window.window else _DAY


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """One windowed condition of a Flow trigger, whatever its form: ``preconditions`` or a
    ``MultipleCondition``. Its window is kept under ``id``; the trigger's part is complete once
    every one of ``condition_ids`` was met (``met`` says which an ended execution meets)
    within ``time_window``."""

    id: str
    time_window: TimeWindow
    reset_on_success: bool
    condition_ids: tuple[str, ...]
    met: Callable[[EndedExecution], list[str]]


@dataclass(slots=True)
class PreconditionWindow:
    """One trigger's progress towards its preconditions, within one time window.

    Attributes:
        key: the trigger's key (``namespace/flowId/triggerId``).
        preconditions_id: the preconditions' ``id``.
        start, end: the window (start None for a sliding window).
        met: precondition id -> when it was met (the latest time).
        outputs: the outputs of the executions that met them, merged (the latest wins).
        counted: the (execution id, attempt) of each ended execution counted in this window,
            oldest first, so one replayed after a crash (its window record written, its
            offset not yet committed) changes nothing and fires nothing twice.
        recent: what the window counted before its ``resetOnSuccess`` resets, every one of
            them, so a replay of the executions that completed it is not counted into the next
            completion: a replayed batch may span several resets (it completed the window
            more than once), and remembering the last one only counted the earlier ones again.

    Both sets live only as long as the window (a closed window's new one starts empty) and
    keep at most :data:`MAX_COUNTED` ids, the newest: a replay only covers the batch in flight.
    """

    key: str
    preconditions_id: str
    start: datetime | None
    end: datetime | None
    met: dict[str, datetime] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    counted: dict[tuple[str, int], None] = field(default_factory=dict)
    recent: dict[tuple[str, int], None] = field(default_factory=dict)

    @property
    def record_key(self) -> str:
        """The record's key in the topic: the trigger key and the preconditions id."""
        return f"{self.key}/{self.preconditions_id}"

    def has_counted(self, ended: EndedExecution) -> bool:
        """Whether ``ended`` (this attempt of it) was already counted, here or before a reset."""
        identity = (ended.execution_id, ended.attempt)
        return identity in self.counted or identity in self.recent

    def count(self, ended: EndedExecution) -> None:
        """Remember ``ended`` as counted, forgetting the oldest beyond :data:`MAX_COUNTED`."""
        self.counted[(ended.execution_id, ended.attempt)] = None
        _trim(self.counted)

    def reset(self) -> None:
        """Start over after firing (``resetOnSuccess``), adding what was counted to recent."""
        self.met, self.outputs = {}, {}
        self.recent.update(self.counted)
        _trim(self.recent)
        self.counted = {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "preconditionsId": self.preconditions_id,
            "start": None if self.start is None else self.start.isoformat(),
            "end": None if self.end is None else self.end.isoformat(),
            "met": {k: v.isoformat() for k, v in self.met.items()},
            "outputs": self.outputs,
            "counted": [list(identity) for identity in self.counted],
            "recent": [list(identity) for identity in self.recent],
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: bytes | str) -> PreconditionWindow:
        """Decode a record; raises ValueError for bad JSON or a bad shape."""
        try:
            data = orjson.loads(raw)
            return cls(
                key=str(data["key"]),
                preconditions_id=str(data["preconditionsId"]),
                start=_parse(data.get("start")),
                end=_parse(data.get("end")),
                met={str(k): _required(_parse(v)) for k, v in dict(data.get("met") or {}).items()},
                outputs=dict(data.get("outputs") or {}),
                counted=_identities(data.get("counted")),
                recent=_identities(data.get("recent")),
            )
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"a precondition window is not valid JSON: {exc}") from None
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"a precondition window has a bad shape: {exc!r}") from None


#: The most execution ids a window remembers in ``counted`` (and so in ``recent``).
MAX_COUNTED = 1024


def _trim(identities: dict[tuple[str, int], None]) -> None:
    while len(identities) > MAX_COUNTED:
        del identities[next(iter(identities))]


def _identities(value: Any) -> dict[tuple[str, int], None]:
    """Decode ``[[execution id, attempt], ...]``; a record written before these existed has none."""
    return {(str(execution_id), int(attempt)): None for execution_id, attempt in value or ()}


def _parse(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value)).astimezone(UTC)


def _required(value: datetime | None) -> datetime:
    if value is None:
        raise ValueError("a met precondition needs a date")
    return value


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, maps merged recursively, ``extra`` winning."""
    merged = dict(base)
    for key, value in extra.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged
