"""Due times of the step's timers, in time order: what the executor and the broker-free driver
fire when the clock passes them.

The step commands timers (``SetTimer`` / ``CancelTimer``); whoever runs it keeps them here and
steps a ``TimerFired`` when one falls due. A timer is named by ``(execution id, timer id)``; set
again, it moves (the old due time is forgotten), so a heap entry counts only while it still
matches the timer's current due time. Stale entries are skipped when they reach the top, which
keeps every operation O(log n) without searching the heap.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator
from datetime import datetime

__all__ = ["TimerQueue"]

TimerKey = tuple[str, str]
"""``(execution id, timer id)``."""


class TimerQueue:
    """Pending timers by due time (see the module docstring)."""

    def __init__(self) -> None:
        self._heap: list[tuple[datetime, int, str, str]] = []
        self._due: dict[str, dict[str, datetime]] = {}  # execution id -> timer id -> due
        self._seq = itertools.count()  # ties keep insertion order, never compare ids

    def set(self, execution_id: str, timer_id: str, due: datetime) -> None:
        """Arm (or move) a timer."""
        self._due.setdefault(execution_id, {})[timer_id] = due
        heapq.heappush(self._heap, (due, next(self._seq), execution_id, timer_id))

    def cancel(self, execution_id: str, timer_id: str) -> None:
        timers = self._due.get(execution_id)
        if timers is not None:
            timers.pop(timer_id, None)
            if not timers:
                del self._due[execution_id]

    def forget(self, execution_ids: Iterable[str]) -> None:
        """Drop every timer of these executions (they ended, or left with their partition)."""
        for execution_id in execution_ids:
            self._due.pop(execution_id, None)

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
                self.cancel(execution_id, timer_id)
                fired.append((execution_id, timer_id, due))
        return fired

    def pending(self) -> Iterator[TimerKey]:
        """Every armed timer, in no particular order."""
        for execution_id, timers in self._due.items():
            for timer_id in timers:
                yield execution_id, timer_id

    def __len__(self) -> int:
        return sum(len(timers) for timers in self._due.values())

    def __bool__(self) -> bool:
        return bool(self._due)
