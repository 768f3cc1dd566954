"""Monitoring the schedules: which triggers are late.

Kept out of the tick on purpose. Kestra's scheduler ran its monitoring checks inside the
evaluation loop until, under load, one loop took a minute; moved to a loop of their own, the
evaluation loop went to 40 ms (BENCHMARKS.md, W5). The runtime calls :func:`late_triggers` from
its own, slower loop (every few seconds), never from the tick.

A trigger is late when its next slot is more than ``threshold`` in the past and the tick has not
fired it yet: the tick takes due triggers out of the index as it fires them, so whatever is still
in the index before ``now - threshold`` is late. Only that part of the index is walked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from kestream.scheduler.schedules import ScheduleBook

__all__ = ["LateTrigger", "late_triggers"]


@dataclass(frozen=True, slots=True)
class LateTrigger:
    """A trigger whose slot is overdue: its key, the slot, and by how much it is late."""

    key: str
    due: datetime
    late_by: timedelta


def late_triggers(
    book: ScheduleBook, now: datetime, threshold: timedelta = timedelta(seconds=60)
) -> list[LateTrigger]:
    """The triggers whose next slot is more than ``threshold`` before ``now``, most late first.

    Costs O(k) for k late triggers (plus the heap entries in front of them), not O(n).
    """
    cutoff = now - threshold
    found = [
        LateTrigger(key, due, now - due)
        for key, due in book.index.iter_due(cutoff)
        if now - due > threshold
    ]
    found.sort(key=lambda late: (late.due, late.key))
    return found
