"""The executions that ended on this executor's partitions, remembered for a while.

An ended execution leaves the state table (state stays bounded by what is in flight), but a
small marker stays: a redelivered creation of it must not run it again, and a restart replayed
from an older attempt's snapshot must not run that attempt again. The marker is a changelog
record (``<id>!``), so it survives restarts and moves with its partition.

Markers are bounded twice: by age (``KESTREAM_EXECUTOR_ENDED_RETENTION_H``) and by count per
processor (``KESTREAM_EXECUTOR_ENDED_MAX``), the oldest going first; each one dropped gets a
tombstone, so the changelog forgets it too. Past either bound a redelivery is no longer
recognised: the count bounds memory at high rates (a marker costs about 200 bytes).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kestream.executor import codec

__all__ = ["Ended", "EndedExecutions"]


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
        self._markers[execution_id] = Ended(at, partition, attempt)
        value = {"state": state, "attempt": attempt, "at": at.isoformat()}
        return codec.header_key(execution_id, codec.ENDED), value

    def put(self, execution_id: str, marker: Ended | None) -> None:
        """Set (or, with None, drop) a marker as it was: an event that failed is rolled back."""
        if marker is None:
            self._markers.pop(execution_id, None)
        else:
            self._markers[execution_id] = marker

    def restore(self, execution_id: str, partition: int, value: Mapping[str, Any]) -> None:
        """Take a marker back from the changelog (recovery)."""
        at = datetime.fromisoformat(value["at"])
        self._markers[execution_id] = Ended(at, partition, int(value.get("attempt", 1)))

    def unmark(self, execution_id: str) -> str | None:
        """Forget a marker (its execution was restarted); returns the key to tombstone."""
        if self._markers.pop(execution_id, None) is None:
            return None
        return codec.header_key(execution_id, codec.ENDED)

    def prune(self, now: datetime) -> list[tuple[str, int]]:
        """Drop the markers past the age or count bound; returns ``(key, partition)`` of each,
        for its tombstone."""
        horizon = now - self.retention
        dropped = [e for e, m in self._markers.items() if m.at < horizon]
        surplus = len(self._markers) - len(dropped) - self.max_count
        if surplus > 0:
            kept = sorted((m.at, e) for e, m in self._markers.items() if m.at >= horizon)
            dropped.extend(e for _, e in kept[:surplus])
        out = []
        for execution_id in dropped:
            marker = self._markers.pop(execution_id)
            out.append((codec.header_key(execution_id, codec.ENDED), marker.partition))
        return out

    def leave(self, partitions: Iterable[int]) -> dict[str, Ended]:
        """Forget the markers of revoked partitions (their next owner restores them); returns
        them (a processor parks them, :mod:`kestream.runtime.parked_partitions`)."""
        gone = set(partitions)
        left = {e: m for e, m in self._markers.items() if m.partition in gone}
        self._markers = {e: m for e, m in self._markers.items() if m.partition not in gone}
        return left
