"""The executions that ended on this executor's partitions, remembered for a while.

An ended execution leaves the state table (state stays bounded by what is in flight), but a
small marker stays: a redelivered creation of it must not run it again, and a restart replayed
from an older attempt's snapshot must not run that attempt again. The marker is a changelog
record (``<id>!``), so it survives restarts and moves with its partition.

Markers are bounded twice: by age (``KESTREAM_EXECUTOR_ENDED_RETENTION_H``) and by count per
processor (``KESTREAM_EXECUTOR_ENDED_MAX``), the oldest going first; each one dropped gets a
tombstone, so the changelog forgets it too. Past either bound a redelivery is no longer
recognised: the count bounds memory at high rates (a marker costs about 200 bytes), and then
it, not the age, sets the dedup window: the default million markers hold about 2.8 hours of
ends at 6 000 per minute on one processor, 5.6 hours with two. :meth:`window` says what the
window is; the processor logs it when the count cuts it below the retention.

Pruning runs on the processor's loop, so it must not sort a million markers: the markers are
also kept in a heap by end time (entries of markers that were dropped or replaced are skipped
when they reach the top, and the heap is rebuilt once they outnumber the live ones), and a
prune pops only what it drops.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kestream.executor import codec

__all__ = ["Ended", "EndedExecutions"]

#: Stale heap entries always tolerated (below this, a rebuild costs more than it saves).
_SLACK = 1024


@dataclass(slots=True, frozen=True)
class Ended:
    at: datetime
    partition: int
    attempt: int


class EndedExecutions:
    """Ended-execution markers (see the module docstring)."""

    def __init__(self, retention: timedelta, max_count: int) -> None:
        self.retention = retention
        self.max_count = max_count
        self._markers: dict[str, Ended] = {}
        #: ``(at, execution id)`` of every marker, oldest first; an entry counts only while
        #: its marker is there with that ``at``.
        self._by_time: list[tuple[datetime, str]] = []

    def __contains__(self, execution_id: object) -> bool:
        return execution_id in self._markers

    def __iter__(self) -> Iterator[str]:
        return iter(self._markers)

    def __len__(self) -> int:
        return len(self._markers)

    def get(self, execution_id: str) -> Ended | None:
        return self._markers.get(execution_id)

    def mark(
        self, execution_id: str, partition: int, state: str, attempt: int, at: datetime
    ) -> tuple[str, dict[str, Any]]:
        """Remember an end; returns the marker's changelog ``(key, value)``."""
        self._set(execution_id, Ended(at, partition, attempt))
        value = {"state": state, "attempt": attempt, "at": at.isoformat()}
        return codec.header_key(execution_id, codec.ENDED), value

    def put(self, execution_id: str, marker: Ended | None) -> None:
        """Set (or, with None, drop) a marker as it was: an event that failed is rolled back."""
        if marker is None:
            self._markers.pop(execution_id, None)
            self._compact_if_stale()
        else:
            self._set(execution_id, marker)

    def restore(self, execution_id: str, partition: int, value: Mapping[str, Any]) -> None:
        """Take a marker back from the changelog (recovery)."""
        at = datetime.fromisoformat(value["at"])
        self._set(execution_id, Ended(at, partition, int(value.get("attempt", 1))))

    def unmark(self, execution_id: str) -> str | None:
        """Forget a marker (its execution was restarted); returns the key to tombstone."""
        if self._markers.pop(execution_id, None) is None:
            return None
        self._compact_if_stale()
        return codec.header_key(execution_id, codec.ENDED)

    def prune(self, now: datetime) -> list[tuple[str, int]]:
        """Drop the markers past the age or count bound, oldest first; returns ``(key,
        partition)`` of each, for its tombstone. Costs O(log n) per marker dropped."""
        horizon = now - self.retention
        markers = self._markers
        out = []
        while (oldest := self._oldest()) is not None:
            at, execution_id = oldest
            if at >= horizon and len(markers) <= self.max_count:
                break
            heapq.heappop(self._by_time)
            marker = markers.pop(execution_id)
            out.append((codec.header_key(execution_id, codec.ENDED), marker.partition))
        return out

    def window(self, now: datetime) -> timedelta:
        """How far back ends are remembered now: the retention, or less once the count bound
        is reached (the age of the oldest marker kept)."""
        oldest = self._oldest()
        if oldest is None or len(self._markers) < self.max_count:
            return self.retention
        return min(self.retention, now - oldest[0])

    def _oldest(self) -> tuple[datetime, str] | None:
        """The heap's live top, stale entries above it dropped."""
        heap, markers = self._by_time, self._markers
        while heap:
            at, execution_id = heap[0]
            marker = markers.get(execution_id)
            if marker is not None and marker.at == at:
                return heap[0]
            heapq.heappop(heap)
        return None

    def leave(self, partitions: Iterable[int]) -> dict[str, Ended]:
        """Forget the markers of revoked partitions (their next owner restores them); returns
        them (a processor parks them, :mod:`kestream.runtime.parked_partitions`)."""
        gone = set(partitions)
        left = {e: m for e, m in self._markers.items() if m.partition in gone}
        self._markers = {e: m for e, m in self._markers.items() if m.partition not in gone}
        self._compact_if_stale()
        return left

    def _set(self, execution_id: str, marker: Ended) -> None:
        replaced = self._markers.get(execution_id)
        self._markers[execution_id] = marker
        heapq.heappush(self._by_time, (marker.at, execution_id))
        if replaced is not None:
            self._compact_if_stale()

    def _compact_if_stale(self) -> None:
        """Rebuild the heap from the markers once stale entries outnumber them."""
        if len(self._by_time) > 2 * len(self._markers) + _SLACK:
            self._by_time = [(m.at, e) for e, m in self._markers.items()]
            heapq.heapify(self._by_time)
