"""Flow concurrency: the slot table of the admission stream (pure; no I/O).

Executions are keyed by execution id, so a per-flow count cannot live in their state. Admission
is its own stream, keyed by flow (``namespace/flowId``): an execution of a flow with a
``concurrency`` limit asks for a slot (:class:`Ask`) instead of starting, and gets an answer
event (:class:`~kestream.executor.events.Admission`): RUNNING (a slot is its own), QUEUED (it
waits in line), or, with ``behavior`` CANCEL or FAIL, CANCELLED or FAILED. When the execution
reaches an end state it gives the slot back (:class:`Release`), and the head of the line gets
it. A flow without a limit never asks: it costs nothing.

Exact under replay: every request names the execution and its attempt (a restart is a new
attempt), and applying a request twice changes nothing the first did not (an ask of a holder
or of a queued execution only repeats its answer; a release of what is not held is a no-op).
Decisions depend only on the table and the order of the requests, which one stream partition
fixes, so a processor that replays a batch from the last committed state makes the same
decisions again, and the answers it repeats are ignored by the executions they reach.

Each (flow, execution) entry is one changelog record (:meth:`SlotTable.record`): writing a change
costs O(entries changed), never O(queue).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from kestream.executor.events import Admission
from kestream.models.state import StateType

__all__ = ["Applied", "Ask", "Release", "SlotRequest", "SlotTable", "flow_key"]

Behavior = Literal["QUEUE", "CANCEL", "FAIL"]
_REFUSED: dict[str, StateType] = {"CANCEL": StateType.CANCELLED, "FAIL": StateType.FAILED}
#: Answers of one table never share a date (dates show milliseconds, as Kestra's): their order
#: is the order of the decisions. A burst of more than one decision per millisecond dates the
#: later ones a little ahead of the clock, never behind it.
_TICK = timedelta(milliseconds=1)


def flow_key(namespace: str, flow_id: str) -> str:
    """The admission stream's key (and the prefix of its changelog keys) for a flow."""
    return f"{namespace}/{flow_id}"


@dataclass(frozen=True, slots=True)
class Ask:
    """An execution asks for a slot. ``limit`` and ``behavior`` are its flow revision's;
    ``queue``: wait in line whatever the behavior (a restart: refusing it would drop it)."""

    namespace: str
    flow_id: str
    execution_id: str
    attempt: int
    limit: int
    behavior: Behavior = "QUEUE"
    queue: bool = False


@dataclass(frozen=True, slots=True)
class Release:
    """An execution ended (or was killed while it waited): its slot, or its place in line,
    is given back. ``limit``: its flow revision's, for the executions promoted."""

    namespace: str
    flow_id: str
    execution_id: str
    attempt: int
    limit: int


SlotRequest = Ask | Release


@dataclass(slots=True)
class _Entry:
    attempt: int
    running: bool
    seq: int


@dataclass(slots=True)
class _Flow:
    """One flow's holders and line. ``entries`` keeps insertion order; the line is the
    entries not running, in ``seq`` order (kept sorted by construction and on restore)."""

    limit: int = 1
    entries: dict[str, _Entry] = field(default_factory=dict)
    running: int = 0
    next_seq: int = 0

    def line(self) -> Iterable[tuple[str, _Entry]]:
        return ((eid, e) for eid, e in self.entries.items() if not e.running)


@dataclass(slots=True)
class Applied:
    """What one request did: the answers to send, and the entries whose records changed."""

    answers: list[Admission] = field(default_factory=list)
    changed: list[tuple[str, str]] = field(default_factory=list)


class SlotTable:
    """The slots of the flows of one admission partition (see the module docstring)."""

    def __init__(self) -> None:
        self._flows: dict[str, _Flow] = {}
        self._last: datetime | None = None

    # -- requests ----------------------------------------------------------------------------

    def apply(self, request: SlotRequest, now: datetime) -> Applied:
        """Apply one request at ``now``; see the module docstring for the rules."""
        key = flow_key(request.namespace, request.flow_id)
        flow = self._flows.get(key)
        if flow is None:
            flow = self._flows[key] = _Flow()
        flow.limit = request.limit  # the newest revision that spoke sets it
        done = Applied()
        self._promote(key, flow, request, now, done)  # a raised limit: the line goes first
        if isinstance(request, Ask):
            self._ask(key, flow, request, now, done)
        else:
            self._release(key, flow, request, done)
        self._promote(key, flow, request, now, done)
        if not flow.entries:
            del self._flows[key]
        return done

    def _ask(self, key: str, flow: _Flow, ask: Ask, now: datetime, done: Applied) -> None:
        entry = flow.entries.get(ask.execution_id)
        if entry is not None and entry.attempt > ask.attempt:
            return  # an older attempt's ask, replayed: the newer one stands
        if entry is not None:
            if entry.attempt < ask.attempt:  # a restart keeps its place (or its slot)
                entry.attempt = ask.attempt
                done.changed.append((key, ask.execution_id))
            state = StateType.RUNNING if entry.running else StateType.QUEUED
            done.answers.append(self._answer(ask, ask.execution_id, ask.attempt, state, now))
            return
        if flow.running < flow.limit and not any(True for _ in flow.line()):
            flow.entries[ask.execution_id] = _Entry(ask.attempt, True, flow.next_seq)
            flow.running += 1
        elif ask.queue or ask.behavior == "QUEUE":
            flow.entries[ask.execution_id] = _Entry(ask.attempt, False, flow.next_seq)
        else:
            refused = _REFUSED[ask.behavior]
            done.answers.append(self._answer(ask, ask.execution_id, ask.attempt, refused, now))
            return
        flow.next_seq += 1
        entry = flow.entries[ask.execution_id]
        state = StateType.RUNNING if entry.running else StateType.QUEUED
        done.answers.append(self._answer(ask, ask.execution_id, ask.attempt, state, now))
        done.changed.append((key, ask.execution_id))

    def _release(self, key: str, flow: _Flow, release: Release, done: Applied) -> None:
        entry = flow.entries.get(release.execution_id)
        if entry is None or entry.attempt > release.attempt:
            return  # not held, or held by a newer attempt: an old release changes nothing
        del flow.entries[release.execution_id]
        if entry.running:
            flow.running -= 1
        done.changed.append((key, release.execution_id))

    def _promote(
        self, key: str, flow: _Flow, request: SlotRequest, now: datetime, done: Applied
    ) -> None:
        """Give the free slots to the head of the line, in order."""
        if flow.running >= flow.limit:
            return
        for execution_id, entry in list(flow.line()):
            if flow.running >= flow.limit:
                return
            entry.running = True
            flow.running += 1
            done.changed.append((key, execution_id))
            done.answers.append(
                self._answer(request, execution_id, entry.attempt, StateType.RUNNING, now)
            )

    def _answer(
        self,
        request: SlotRequest,
        execution_id: str,
        attempt: int,
        state: StateType,
        now: datetime,
    ) -> Admission:
        at = now if self._last is None else max(now, self._last + _TICK)
        self._last = at
        return Admission(execution_id, request.namespace, request.flow_id, attempt, state, at)

    # -- reading ---------------------------------------------------------------------------

    def holders(self, namespace: str, flow_id: str) -> list[str]:
        flow = self._flows.get(flow_key(namespace, flow_id))
        return [eid for eid, e in flow.entries.items() if e.running] if flow else []

    def queued(self, namespace: str, flow_id: str) -> list[str]:
        """The line, head first."""
        flow = self._flows.get(flow_key(namespace, flow_id))
        return [eid for eid, _ in flow.line()] if flow else []

    # -- the changelog ---------------------------------------------------------------------

    def record(self, key: str, execution_id: str) -> tuple[str, dict[str, Any] | None]:
        """The changelog record of one entry: ``(key, value)``; None: a tombstone."""
        record_key = f"{key}/{execution_id}"
        flow = self._flows.get(key)
        entry = flow.entries.get(execution_id) if flow is not None else None
        if entry is None:
            return record_key, None
        return record_key, {"a": entry.attempt, "r": entry.running, "s": entry.seq}

    @classmethod
    def restore(cls, records: Mapping[str, Mapping[str, Any]]) -> SlotTable:
        """The table from the latest changelog record of each key (tombstones dropped)."""
        table = cls()
        ordered = sorted(records.items(), key=lambda item: int(item[1]["s"]))
        for record_key, value in ordered:
            key, execution_id = record_key.rsplit("/", 1)
            flow = table._flows.get(key)
            if flow is None:
                flow = table._flows[key] = _Flow()
            running = bool(value["r"])
            seq = int(value["s"])
            flow.entries[execution_id] = _Entry(int(value["a"]), running, seq)
            flow.running += running
            flow.next_seq = max(flow.next_seq, seq + 1)
        return table
