"""The schedules book: what each tick fires, flow changes, stopAfter, monitoring."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

from croniter import croniter
from scheduler_helpers import flow_with, schedule, utc

from kestream.models.clock import ManualClock
from kestream.models.ids import derived_id
from kestream.models.state import StateType
from kestream.scheduler import ScheduleBook, late_triggers, trigger_key
from kestream.scheduler.schedules import Fire

KEY = trigger_key("company.team", "f", "sched")


def run(book: ScheduleBook, clock: ManualClock, seconds: int, step: float = 1.0) -> list[Fire]:
    """Tick every ``step`` seconds for ``seconds`` of simulated time."""
    fires: list[Fire] = []
    end = clock.now + timedelta(seconds=seconds)
    while clock.now < end:
        clock.advance(timedelta(seconds=step))
        fires.extend(book.tick(clock.now))
    return fires


def test_a_new_trigger_starts_at_its_next_slot_after_now() -> None:
    clock = ManualClock(utc(2025, 1, 1, 10, 30, 15))
    book = ScheduleBook(clock)
    result = book.sync_flow(flow_with(schedule("0 * * * *")))
    assert [s.next_execution_date for s in result.states] == [utc(2025, 1, 1, 11)]
    assert book.tick(clock.now) == []
    assert book.next_due() == utc(2025, 1, 1, 11)


def test_per_second_cron_over_30_minutes_fires_every_slot_exactly_once() -> None:
    start = utc(2025, 1, 1, 10)
    clock = ManualClock(start)
    book = ScheduleBook(clock)
    book.sync_flow(flow_with(schedule("* * * * * *", withSeconds="true")))
    fires = run(book, clock, 30 * 60)
    slots = [f.slot for f in fires]
    assert slots == [start + timedelta(seconds=n) for n in range(1, 30 * 60 + 1)]
    assert len({f.event.execution_id for f in fires}) == len(fires)


def test_uneven_ticks_still_fire_each_slot_once_in_order() -> None:
    start = utc(2025, 1, 1, 10)
    clock = ManualClock(start)
    book = ScheduleBook(clock)
    book.sync_flow(flow_with(schedule("*/5 * * * * *", withSeconds="true")))
    fires = []
    for step in [0.3, 2.9, 7.1, 0.01, 11.0, 4.99, 5.0, 30.0] * 20:
        clock.advance(timedelta(seconds=step))
        fires.extend(book.tick(clock.now))
    slots = [f.slot for f in fires]
    assert slots == sorted(set(slots))
    expected = (clock.now - start).total_seconds() // 5
    assert len(slots) == expected


def test_a_fire_carries_the_execution_and_the_record_to_write() -> None:
    clock = ManualClock(utc(2025, 7, 1, 6, 59, 59))
    book = ScheduleBook(clock)
    flow = flow_with(
        schedule("0 9 * * *", timezone="Europe/Paris", inputs="{who: world}"), revision=4
    )
    book.sync_flow(flow)
    clock.advance(timedelta(seconds=1))
    (fire,) = book.tick(clock.now)
    slot = utc(2025, 7, 1, 7)
    event = fire.event
    assert fire.slot == slot and event.schedule_date == slot
    assert event.execution_id == derived_id(
        "schedule", "company.team", "f", "sched", slot.isoformat()
    )
    assert (event.namespace, event.flow_id, event.revision) == ("company.team", "f", 4)
    assert event.inputs == {"who": "world"} and event.validate_inputs
    assert event.trigger == {
        "id": "sched",
        "type": "io.kestra.plugin.core.trigger.Schedule",
        "variables": {
            "date": "2025-07-01T09:00:00+02:00",
            "next": "2025-07-02T09:00:00+02:00",
            "previous": "2025-06-30T09:00:00+02:00",
        },
    }
    assert fire.state.date == slot
    assert fire.state.next_execution_date == utc(2025, 7, 2, 7)
    assert fire.state.execution_id == event.execution_id
    assert fire.state.flow_revision == 4
    assert book.state(KEY) == fire.state


def test_an_idle_tick_touches_nothing() -> None:
    clock = ManualClock(utc(2025, 1, 1))
    book = ScheduleBook(clock)
    for n in range(50):
        book.sync_flow(flow_with(schedule(f"{n} 3 * * *"), flow_id=f"f{n}"))
    heap = list(book.index._heap)
    assert book.tick(utc(2025, 1, 1, 2)) == []
    assert book.index._heap == heap


def test_a_changed_cron_reschedules_from_now_and_an_unchanged_one_keeps_its_plan() -> None:
    clock = ManualClock(utc(2025, 1, 1, 10, 20))
    book = ScheduleBook(clock)
    book.sync_flow(flow_with(schedule("0 * * * *"), revision=1))
    clock.advance(timedelta(minutes=20))  # 10:40
    same = book.sync_flow(flow_with(schedule("0 * * * *", inputs="{a: 1}"), revision=2))
    assert same.states == [] and book.next_due() == utc(2025, 1, 1, 11)
    changed = book.sync_flow(flow_with(schedule("45 * * * *"), revision=3))
    assert [s.next_execution_date for s in changed.states] == [utc(2025, 1, 1, 10, 45)]
    clock.now = utc(2025, 1, 1, 10, 45)
    (fire,) = book.tick(clock.now)
    assert fire.event.revision == 3


def test_disabled_triggers_and_flows_do_not_fire_and_restart_from_now() -> None:
    clock = ManualClock(utc(2025, 1, 1))
    book = ScheduleBook(clock)
    book.sync_flow(flow_with(schedule("*/10 * * * *", disabled="true")))
    assert book.tick(utc(2025, 1, 1, 5)) == [] and book.next_due() is None
    book.sync_flow(flow_with(schedule("*/10 * * * *"), disabled="true"))
    assert book.tick(utc(2025, 1, 1, 5)) == []
    clock.now = utc(2025, 1, 1, 5, 3)
    book.sync_flow(flow_with(schedule("*/10 * * * *")))
    assert book.next_due() == utc(2025, 1, 1, 5, 10)  # no backfill of the disabled hours


def test_removing_triggers_and_flows() -> None:
    clock = ManualClock(utc(2025, 1, 1))
    book = ScheduleBook(clock)
    book.sync_flow(
        flow_with(schedule("* * * * *", trigger_id="a") + schedule("* * * * *", trigger_id="b"))
    )
    result = book.sync_flow(flow_with(schedule("* * * * *", trigger_id="a")))
    assert result.removed == ["company.team/f/b"]
    assert [f.key for f in book.tick(utc(2025, 1, 1, 0, 1))] == ["company.team/f/a"]
    assert book.remove_flow("company.team", "f").removed == ["company.team/f/a"]
    assert book.tick(utc(2025, 1, 1, 0, 5)) == [] and len(book) == 0
    book.sync_flow(flow_with(schedule("* * * * *")))
    assert book.sync_flow(flow_with(schedule("* * * * *"), deleted="true")).removed == [KEY]


def test_stop_after_disables_the_trigger() -> None:
    clock = ManualClock(utc(2025, 1, 1))
    book = ScheduleBook(clock)
    book.sync_flow(flow_with(schedule("* * * * *", stopAfter="[FAILED]")))
    (fire,) = book.tick(utc(2025, 1, 1, 0, 1))
    assert book.on_execution_end(KEY, fire.event.execution_id, StateType.SUCCESS) is None
    state = book.on_execution_end(KEY, fire.event.execution_id, StateType.FAILED)
    assert state is not None and state.disabled and state.date == fire.slot
    assert book.tick(utc(2025, 1, 1, 1)) == []
    assert book.on_execution_end(KEY, fire.event.execution_id, StateType.FAILED) is None
    # the disabled record survives a flow update, and re-enabling restarts from now
    book.sync_flow(flow_with(schedule("* * * * *", stopAfter="[FAILED]"), revision=2))
    assert book.tick(utc(2025, 1, 1, 2)) == []
    clock.now = utc(2025, 1, 1, 3, 0, 30)
    enabled = book.set_disabled(KEY, False)
    assert enabled is not None and enabled.next_execution_date == utc(2025, 1, 1, 3, 1)


def test_late_maximum_delay_skips_slots_owed_for_too_long() -> None:
    clock = ManualClock(utc(2025, 1, 1))
    book = ScheduleBook(clock)
    book.sync_flow(flow_with(schedule("* * * * *", lateMaximumDelay="PT90S")))
    fires = book.tick(utc(2025, 1, 1, 0, 5))  # owes 00:01 .. 00:05 (a very late tick)
    assert [f.slot for f in fires] == [utc(2025, 1, 1, 0, 4), utc(2025, 1, 1, 0, 5)]
    assert book.next_due() == utc(2025, 1, 1, 0, 6)


def test_monitor_lists_triggers_whose_slot_is_overdue() -> None:
    clock = ManualClock(utc(2025, 1, 1))
    book = ScheduleBook(clock)
    book.sync_flow(
        flow_with(
            schedule("0 * * * *", trigger_id="hourly") + schedule("*/5 * * * *", trigger_id="five")
        )
    )
    now = utc(2025, 1, 1, 0, 6)
    late = late_triggers(book, now, timedelta(seconds=30))
    assert [(t.key, t.late_by) for t in late] == [("company.team/f/five", timedelta(minutes=1))]
    book.tick(now)
    assert late_triggers(book, now, timedelta(seconds=30)) == []


def test_many_triggers_fire_each_due_slot_once() -> None:
    start = utc(2025, 1, 1, 23, 50)
    clock = ManualClock(start)
    book = ScheduleBook(clock)
    crons = {}
    for n in range(120):
        cron = ["* * * * *", "*/2 * * * *", f"{n % 60} * * * *", "0 0 * * *"][n % 4]
        book.sync_flow(flow_with(schedule(cron), flow_id=f"f{n}"))
        crons[trigger_key("company.team", f"f{n}", "sched")] = cron
    fires = run(book, clock, 20 * 60, step=7.0)
    expected = set()
    for key, cron in crons.items():
        it = croniter(cron, start)
        while (slot := it.get_next(datetime)) <= clock.now:
            expected.add((key, slot))
    counts = Counter((f.key, f.slot) for f in fires)
    assert max(counts.values()) == 1
    assert set(counts) == expected


def test_a_daily_schedule_in_a_dst_zone_fires_once_a_day_across_both_changes() -> None:
    for start in (utc(2025, 3, 28, 12), utc(2025, 10, 24, 12)):
        clock = ManualClock(start)
        book = ScheduleBook(clock)
        book.sync_flow(flow_with(schedule("30 2 * * *", timezone="Europe/Paris")))
        fires = run(book, clock, 4 * 24 * 3600, step=60.0)
        dates = [f.event.trigger["variables"]["date"] for f in fires]  # type: ignore[index]
        assert len(dates) == 4 and len({d[:10] for d in dates}) == 4
        assert all(f.state.next_execution_date > f.slot for f in fires)  # type: ignore[operator]
