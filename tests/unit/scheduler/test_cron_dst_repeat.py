"""Seconds and minutes crons across both DST changes, asked from every instant around them,
the second pass of the repeated autumn hour included (Europe/Paris, America/New_York).

What a repeated wall time means (cron.py): it fires once, on its first pass. So from an instant
inside the second pass the next slot is the first wall time past the repeat, and the slot before
is the first pass's last. Asked from there, a seconds cron used to have no next slot at all (its
trigger then stopped until its flow was deployed again).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from scheduler_helpers import flow_with, schedule, utc

from kestream.models.clock import ManualClock
from kestream.scheduler import ScheduleBook
from kestream.scheduler.cron import Cron

#: (zone, the UTC instant its clocks go forward, the UTC instant they fall back), 2025.
ZONES = {
    "Europe/Paris": (utc(2025, 3, 30, 1), utc(2025, 10, 26, 1)),
    "America/New_York": (utc(2025, 3, 9, 7), utc(2025, 11, 2, 6)),
}
HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
STEPS = {"seconds": SECOND, "minutes": MINUTE}


def cron_of(every: str, zone: str) -> Cron:
    if every == "seconds":
        return Cron("* * * * * *", timezone=zone, with_seconds=True)
    return Cron("* * * * *", timezone=zone)


def expected_slots(zone: str, start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    """Every ``step`` boundary in ``(start, end]`` whose wall time is not a second pass: what
    a cron firing every ``step`` owes, each repeated wall time on its first pass only."""
    tz = ZoneInfo(zone)
    slots, at = [], start + step
    while at <= end:
        if not at.astimezone(tz).fold:
            slots.append(at)
        at += step
    return slots


@pytest.mark.parametrize("every", list(STEPS))
@pytest.mark.parametrize("zone", list(ZONES))
@pytest.mark.parametrize("change", ["spring", "autumn"])
def test_every_slot_once_across_the_change(zone: str, every: str, change: str) -> None:
    spring, autumn = ZONES[zone]
    moment = spring if change == "spring" else autumn
    cron, step = cron_of(every, zone), STEPS[every]
    start, end = moment - HOUR - step, moment + 2 * HOUR
    walked, at = [], start
    while True:
        found = cron.next_after(at)
        assert found is not None, f"no slot after {at.isoformat()}"
        if found > end:
            break
        walked.append(found)
        at = found
    assert walked == expected_slots(zone, start, end, step)
    assert [cron.previous_before(s) for s in walked[1:]] == walked[:-1]


@pytest.mark.parametrize("every", list(STEPS))
@pytest.mark.parametrize("zone", list(ZONES))
def test_asked_from_inside_the_second_pass_the_neighbours_lie_outside_the_repeat(
    zone: str, every: str
) -> None:
    _, autumn = ZONES[zone]
    tz = ZoneInfo(zone)
    cron, step = cron_of(every, zone), STEPS[every]
    first_after = autumn + HOUR  # the repeat's end: its wall time is the clock before the change
    last_before = autumn - step  # the first pass's last slot
    for offset in (0, 1, 59, 60 * 30 + 17, 3599):
        inside = autumn + timedelta(seconds=offset)
        assert inside.astimezone(tz).fold == 1
        assert cron.next_after(inside) == first_after, inside.isoformat()
        assert cron.previous_before(inside) == last_before, inside.isoformat()
        assert cron.latest_at_or_before(inside) == last_before
    assert cron.local(first_after).replace(tzinfo=None) == (
        cron.local(autumn - SECOND).replace(tzinfo=None) + SECOND
    )


@pytest.mark.parametrize("zone", list(ZONES))
def test_from_the_first_pass_the_next_slots_run_to_the_change_then_past_the_repeat(
    zone: str,
) -> None:
    _, autumn = ZONES[zone]
    cron = cron_of("seconds", zone)
    assert cron.next_after(autumn - 2 * SECOND) == autumn - SECOND
    assert cron.next_after(autumn - SECOND) == autumn + HOUR
    assert cron.previous_before(autumn + HOUR) == autumn - SECOND


@pytest.mark.parametrize("every", list(STEPS))
@pytest.mark.parametrize("zone", list(ZONES))
def test_a_trigger_deployed_inside_the_second_pass_fires_from_the_repeats_end(
    zone: str, every: str
) -> None:
    """The scheduler's own path: a trigger planned (deployed, or the scheduler started) in the
    second pass has its next slot at the repeat's end and keeps firing every slot after it."""
    _, autumn = ZONES[zone]
    step = STEPS[every]
    clock = ManualClock(autumn + timedelta(minutes=20, seconds=30))
    book = ScheduleBook(clock)
    props = {"withSeconds": "true"} if every == "seconds" else {}
    cron = "* * * * * *" if every == "seconds" else "* * * * *"
    result = book.sync_flow(flow_with(schedule(cron, timezone=zone, **props)))
    assert [s.next_execution_date for s in result.states] == [autumn + HOUR]
    fires = []
    end = autumn + HOUR + 10 * step
    while clock.now < end:
        clock.advance(step)
        fires.extend(book.tick(clock.now))
    assert [f.slot for f in fires] == [autumn + HOUR + n * step for n in range(11)]
    assert all(b.slot > a.slot for a, b in itertools.pairwise(fires))
    assert fires[0].slot.tzinfo is UTC
