"""Due times of the step's timers, in time order: what the executor and the broker-free driver
fire when the clock passes them.

The step commands timers (``SetTimer`` / ``CancelTimer``); whoever runs it keeps them here and
steps a ``TimerFired`` when one falls due. A timer is named by ``(execution id, timer id)``; set
again, it moves (the old due time is forgotten), so a heap entry counts only while it still
matches the timer's current due time. Stale entries are skipped when they reach the top, which
keeps every operation O(log n) without searching the heap.

A timer cancelled long before its due time (an SLA or a pause timeout of an execution that
ended) would leave its stale entry in the heap for that whole horizon, so the heap is rebuilt
from the live timers once stale entries outnumber them (:data:`COMPACT_SLACK` aside): memory
stays within about twice the live timers, at an amortised O(1) per cancel.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator
from datetime import datetime

__all__ = ["COMPACT_SLACK", "TimerQueue"]

#: Stale heap entries always tolerated: below this, rebuilding costs more than it saves.
COMPACT_SLACK = 1024

TimerKey = tuple[str, str]
"""``(execution id, timer id)``."""


class TimerQueue:
    """Pending timers by due time (see the module docstring)."""

    def __init__(self) -> None:
        self._heap: list[tuple[datetime, int, str, str]] = []
        self._due: dict[str, dict[str, datetime]] = {}  # execution id -> timer id -> due
        self._seq = itertools.count()  # ties keep insertion order, never compare ids
        self._live = 0  # timers in _due

    def set(self, execution_id: str, timer_id: str, due: datetime) -> None:
        """Arm (or move) a timer."""
        timers = self._due.setdefault(execution_id, {})
        moved = timer_id in timers
        timers[timer_id] = due
        if not moved:
            self._live += 1
        heapq.heappush(self._heap, (due, next(self._seq), execution_id, timer_id))
        if moved:
            self._compact_if_stale()

    def cancel(self, execution_id: str, timer_id: str) -> None:
        self._drop(execution_id, timer_id)
        self._compact_if_stale()

    def _drop(self, execution_id: str, timer_id: str) -> None:
        timers = self._due.get(execution_id)
        if timers is not None and timers.pop(timer_id, None) is not None:
            self._live -= 1
            if not timers:
                del self._due[execution_id]

    def forget(self, execution_ids: Iterable[str]) -> None:
        """Drop every timer of these executions (they ended, or left with their partition)."""
        for execution_id in execution_ids:
            self._live -= len(self._due.pop(execution_id, ()))
        self._compact_if_stale()

    def _compact_if_stale(self) -> None:
        """Rebuild the heap from its live entries once stale ones outnumber them."""
        if len(self._heap) <= 2 * self._live + COMPACT_SLACK:
            return
        seen: set[TimerKey] = set()
        kept = []
        for entry in self._heap:
            due, _, execution_id, timer_id = entry
            key = (execution_id, timer_id)
            if key not in seen and self.due_at(execution_id, timer_id) == due:
                seen.add(key)  # a timer set twice to one due time: one entry is enough
                kept.append(entry)
        heapq.heapify(kept)
        self._heap = kept

    def due_at(self, execution_id: str, timer_id: str) -> datetime | None:
        return self._due.get(execution_id, {}).get(timer_id)

    def next_due(self) -> datetime | None:
        """The earliest pending due time (stale heap entries are dropped on the way)."""
        heap = self._heap
        while heap:
            due, _, execution_id, timer_id = heap[0]
            if self.due_at(execution_id, timer_id) == due:
                return due
            heapq.heappop(heap)
        return None

    def pop_due(self, now: datetime) -> list[tuple[str, str, datetime]]:
        """Remove and return the timers due at ``now`` or before, earliest first, as
        ``(execution id, timer id, due)``."""
        fired: list[tuple[str, str, datetime]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, execution_id, timer_id = heapq.heappop(heap)
            if self.due_at(execution_id, timer_id) == due:
                self._drop(execution_id, timer_id)
                fired.append((execution_id, timer_id, due))
        return fired

    def pending(self) -> Iterator[TimerKey]:
        """Every armed timer, in no particular order."""
        for execution_id, timers in self._due.items():
            for timer_id in timers:
                yield execution_id, timer_id

    def __len__(self) -> int:
        return self._live

    def __bool__(self) -> bool:
        return bool(self._due)
