"""Partitions this executor processor gave up, kept warm for a while: their checkpoint.

A rebalance revokes partitions and, often, gives most of them straight back (an eager
rebalance revokes every partition of every member). Reading each changelog partition again
from its beginning costs time proportional to the partition, on every member, at every
rebalance. Instead, a revoked partition's executions, their changelog records, its ended
markers and the changelog offset they reflect (the checkpoint) are parked. When the partition
comes back within :data:`PARK_MAX_S`, recovery reads only what the changelog got after the
checkpoint (another member may have owned it meanwhile), applies it to the parked records, and
rebuilds just the executions it touched.

The bound on age matters: the broker removes a tombstone some time after writing it
(``delete.retention.ms``, a day by default), so a checkpoint older than that could miss a
deletion; parked state also holds memory until it is taken back or expires.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kestream.executor.state import ExecutionState
from kestream.runtime.changelog_fold import ExecutionRecords
from kestream.runtime.ended_executions import Ended

__all__ = ["PARK_MAX_S", "Parked", "ParkedPartitions"]

#: How long a revoked partition stays parked.
PARK_MAX_S = 300.0


@dataclass(slots=True)
class Parked:
    """One revoked partition as it was when it left."""

    checkpoint: int  # the changelog offset the records reflect (next one to read)
    at: float  # when it was parked (monotonic seconds)
    states: dict[str, ExecutionState] = field(default_factory=dict)
    records: dict[str, ExecutionRecords] = field(default_factory=dict)
    ended: dict[str, Ended] = field(default_factory=dict)


class ParkedPartitions:
    """Parked partitions by number (see the module docstring)."""

    def __init__(self, max_age_s: float = PARK_MAX_S) -> None:
        self.max_age_s = max_age_s
        self._parked: dict[int, Parked] = {}

    def __len__(self) -> int:
        return len(self._parked)

    def park(self, partition: int, parked: Parked) -> None:
        self._parked[partition] = parked

    def take(self, partition: int, now: float) -> Parked | None:
        """The partition's parked state if it is fresh enough to start from; it leaves here."""
        parked = self._parked.pop(partition, None)
        if parked is None or now - parked.at > self.max_age_s:
            return None
        return parked

    def expire(self, now: float) -> None:
        """Let go of what is too old to be taken back."""
        for partition in [p for p, k in self._parked.items() if now - k.at > self.max_age_s]:
            del self._parked[partition]
