"""Restarts: records loaded from the triggers topic, missed slots (ALL, LAST, NONE), the cap."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from scheduler_helpers import flow_with, schedule, utc

from kestream.models.clock import ManualClock
from kestream.models.flow import Flow
from kestream.scheduler import ScheduleBook, TriggerState, trigger_key
from kestream.scheduler.schedules import Fire

KEY = trigger_key("company.team", "f", "sched")


def flows() -> list[Flow]:
    return [
        flow_with(schedule("* * * * * *", withSeconds="true"), flow_id="every-second"),
        flow_with(schedule("*/7 * * * * *", withSeconds="true"), flow_id="every-7s"),
        flow_with(schedule("* * * * *"), flow_id="every-minute"),
    ]


def tick_for(book: ScheduleBook, clock: ManualClock, seconds: int) -> list[Fire]:
    fires: list[Fire] = []
    for _ in range(seconds):
        clock.advance(timedelta(seconds=1))
        fires.extend(book.tick(clock.now))
    return fires


def topic_after(fires: list[Fire], initial: list[TriggerState]) -> list[TriggerState]:
    """The compacted topic: the latest record per key."""
    latest = {s.key: s for s in initial}
    latest.update({f.key: f.state for f in fires})
    return list(latest.values())


@pytest.mark.parametrize("states_first", [True, False])
def test_a_restart_from_the_records_fires_nothing_twice_and_misses_nothing(
    states_first: bool,
) -> None:
    start = utc(2025, 1, 1, 10)
    clock = ManualClock(start)
    first = ScheduleBook(clock)
    initial = [s for f in flows() for s in first.sync_flow(f).states]
    before = tick_for(first, clock, 300)
    records = topic_after(before, initial)

    clock.advance(timedelta(seconds=1))  # a short outage, within the recovery policy (ALL)
    second = ScheduleBook(clock)
    if states_first:
        for state in records:
            second.load_state(state)
    for flow in flows():
        second.sync_flow(flow)
    if not states_first:
        for state in records:
            second.load_state(state)
    after = tick_for(second, clock, 300)

    counts = Counter((f.key, f.slot) for f in before + after)
    assert max(counts.values()) == 1
    per_second = sorted(slot for key, slot in counts if key.endswith("every-second/sched"))
    assert per_second == [start + timedelta(seconds=n) for n in range(1, 602)]


def test_a_crash_before_the_record_is_written_refires_the_slot_with_the_same_id() -> None:
    clock = ManualClock(utc(2025, 1, 1, 10))
    first = ScheduleBook(clock)
    initial = first.sync_flow(flow_with(schedule("* * * * *"))).states
    fires = tick_for(first, clock, 180)  # 10:01, 10:02, 10:03
    records = topic_after(fires[:-1], initial)  # the last record never reached the topic

    second = ScheduleBook(clock)
    second.sync_flow(flow_with(schedule("* * * * *")))
    for state in records:
        second.load_state(state)
    (refire,) = second.tick(clock.now)
    assert refire.slot == fires[-1].slot
    assert refire.event.execution_id == fires[-1].event.execution_id


def test_a_loaded_slot_is_never_fired_again_even_from_a_bad_record() -> None:
    clock = ManualClock(utc(2025, 1, 1, 10, 5))
    book = ScheduleBook(clock)
    slot = utc(2025, 1, 1, 10, 5)
    book.load_state(
        TriggerState(
            "company.team",
            "f",
            "sched",
            date=slot,
            next_execution_date=slot,  # inconsistent: owes the slot it already fired
            schedule="* * * * *|UTC|m",
        )
    )
    book.sync_flow(flow_with(schedule("* * * * *")))
    assert book.tick(clock.now) == []
    assert [f.slot for f in book.tick(utc(2025, 1, 1, 10, 6))] == [utc(2025, 1, 1, 10, 6)]


def down_since_ten(policy: str | None, cron: str = "0 * * * *", **book_options):  # type: ignore[no-untyped-def]
    """A trigger whose last fire was 10:00, a scheduler back at 15:30."""
    extra = {} if policy is None else {"recoverMissedSchedules": policy}
    clock = ManualClock(utc(2025, 1, 1, 15, 30))
    book = ScheduleBook(clock, **book_options)
    book.load_state(
        TriggerState(
            "company.team",
            "f",
            "sched",
            date=utc(2025, 1, 1, 10),
            next_execution_date=utc(2025, 1, 1, 11),
            schedule=f"{cron}|UTC|m",
        )
    )
    book.sync_flow(flow_with(schedule(cron, **extra)))
    return book, clock


def test_recover_all_is_the_default_and_fires_every_missed_slot() -> None:
    for policy in (None, "ALL"):
        book, clock = down_since_ten(policy)
        fires = book.tick(clock.now)
        assert [f.slot.hour for f in fires] == [11, 12, 13, 14, 15]
        assert all(f.warning is None for f in fires)
        assert book.next_due() == utc(2025, 1, 1, 16)


def test_recover_last_fires_only_the_most_recent_missed_slot() -> None:
    book, clock = down_since_ten("LAST")
    assert [f.slot for f in book.tick(clock.now)] == [utc(2025, 1, 1, 15)]
    assert book.next_due() == utc(2025, 1, 1, 16)


def test_recover_none_skips_to_the_next_future_slot() -> None:
    book, clock = down_since_ten("NONE")
    assert book.tick(clock.now) == []
    assert book.next_due() == utc(2025, 1, 1, 16)
    (fire,) = book.tick(utc(2025, 1, 1, 16))
    assert fire.state.date == utc(2025, 1, 1, 16)


def test_the_book_default_policy_applies_when_the_trigger_sets_none() -> None:
    book, clock = down_since_ten(None, default_recovery="NONE")
    assert book.tick(clock.now) == []


def test_recover_all_is_capped_to_the_latest_slots_with_a_warning() -> None:
    book, clock = down_since_ten(None, cron="* * * * *", recovery_cap=100)
    fires = book.tick(clock.now)
    assert len(fires) == 100
    assert fires[-1].slot == utc(2025, 1, 1, 15, 30)
    assert fires[0].slot == utc(2025, 1, 1, 13, 51)
    assert fires[0].warning is not None and "only the latest 100" in fires[0].warning
    assert all(f.warning is None for f in fires[1:])
    assert book.tick(clock.now) == []


def test_a_cron_changed_while_down_restarts_from_now_without_recovery() -> None:
    clock = ManualClock(utc(2025, 1, 1, 15, 30))
    book = ScheduleBook(clock)
    book.load_state(
        TriggerState(
            "company.team",
            "f",
            "sched",
            date=utc(2025, 1, 1, 10),
            next_execution_date=utc(2025, 1, 1, 11),
            schedule="0 * * * *|UTC|m",
        )
    )
    book.sync_flow(flow_with(schedule("45 * * * *")))
    assert book.tick(clock.now) == []
    assert book.next_due() == utc(2025, 1, 1, 15, 45)
    assert book.state(KEY).date == utc(2025, 1, 1, 10)  # type: ignore[union-attr]


def test_a_disabled_record_stays_disabled_after_restart() -> None:
    clock = ManualClock(utc(2025, 1, 1, 15, 30))
    book = ScheduleBook(clock)
    book.load_state(TriggerState("company.team", "f", "sched", disabled=True))
    book.sync_flow(flow_with(schedule("* * * * *")))
    assert book.tick(utc(2025, 1, 2)) == [] and book.next_due() is None


def test_records_of_flows_that_never_came_back_are_orphans() -> None:
    book = ScheduleBook(ManualClock(utc(2025, 1, 1)))
    book.load_state(TriggerState("company.team", "gone", "sched"))
    book.sync_flow(flow_with(schedule("* * * * *")))
    assert book.orphan_keys() == ["company.team/gone/sched"]


def test_a_stale_record_loaded_late_does_not_move_the_book_back() -> None:
    clock = ManualClock(utc(2025, 1, 1, 10, 0, 30))
    book = ScheduleBook(clock)
    book.sync_flow(flow_with(schedule("* * * * *")))
    (fire,) = book.tick(utc(2025, 1, 1, 10, 1))
    book.load_state(
        TriggerState(
            "company.team",
            "f",
            "sched",
            date=utc(2025, 1, 1, 9, 59),
            next_execution_date=utc(2025, 1, 1, 10),
            schedule="* * * * *|UTC|m",
        )
    )
    assert book.state(KEY) == fire.state
    assert [f.slot for f in book.tick(utc(2025, 1, 1, 10, 2))] == [utc(2025, 1, 1, 10, 2)]


@pytest.mark.parametrize(
    ("policy", "hours"),
    [("NONE", [14, 15]), ("LAST", [13, 14, 15]), ("ALL", [11, 12, 13, 14, 15])],
)
def test_slots_owed_within_the_handover_are_delayed_not_missed(
    policy: str, hours: list[int]
) -> None:
    """Back at 15:30 with a 2 h handover: the slots after 13:30 fire whatever the policy (the
    lease was moving), the policy decides only for the older ones."""
    book, clock = down_since_ten(policy, handover=timedelta(hours=2))
    assert [f.slot.hour for f in book.tick(clock.now)] == hours
    assert book.next_due() == utc(2025, 1, 1, 16)


def test_a_handover_longer_than_the_outage_fires_every_slot_owed() -> None:
    book, clock = down_since_ten("NONE", handover=timedelta(hours=6))
    assert [f.slot.hour for f in book.tick(clock.now)] == [11, 12, 13, 14, 15]
