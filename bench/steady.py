"""CPU per execution in the steady state of an open-loop run.

The whole-run figure (:func:`bench.report.cpu_per_execution`) divides the CPU of the measured
window by what completed. That window begins before the first offer is up to speed and ends
10 s after the last one (the collection window), so it holds the ramp-up and, above all, the
idle tail of every process (fetch polling, heartbeats, the broker's housekeeping) at no
execution's credit: at 6 000/min that tail alone adds milliseconds per execution.

The steady figure is what a rate costs while it is offered: the CPU each process spent between
two readings taken during the offer (after :data:`FIRST_AT` and at :data:`LAST_AT` of its
duration), divided by the executions that ended between them (by the executor's end stamp).
At a rate that is kept up, executions end as fast as they start, so the two counts match.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

#: Where in the offer's duration the first and the last reading are taken: past the start, when
#: every hop has work; and before the offer's end, so nothing of the drain is counted.
FIRST_AT = 0.25
LAST_AT = 0.95


@dataclass(frozen=True, slots=True)
class CpuReading:
    """CPU seconds of each process (by role; ``broker``) at a wall-clock moment."""

    at: float
    cpu_s: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class SteadyCost:
    """CPU milliseconds per execution ended in the steady window, per process and in all."""

    window_s: float
    ended: int
    ms: dict[str, float]

    @property
    def total_ms(self) -> float:
        return round(sum(self.ms.values()), 3)


async def read_during(
    read: Callable[[], Mapping[str, float]], start: float, duration_s: float
) -> tuple[CpuReading, CpuReading]:
    """Take the two readings of an offer that began at ``start`` (wall clock) and lasts
    ``duration_s``."""
    readings = []
    for share in (FIRST_AT, LAST_AT):
        delay = start + share * duration_s - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        readings.append(CpuReading(time.time(), dict(read())))
    return readings[0], readings[1]


def steady_cost(
    first: CpuReading, last: CpuReading, ends: Iterable[float | None]
) -> SteadyCost | None:
    """The CPU per execution between two readings; None when no execution ended between them."""
    ended = sum(1 for end in ends if end is not None and first.at <= end < last.at)
    if not ended:
        return None
    ms = {
        who: round((cpu - first.cpu_s.get(who, cpu)) * 1000 / ended, 3)
        for who, cpu in last.cpu_s.items()
    }
    return SteadyCost(round(last.at - first.at, 2), ended, ms)
