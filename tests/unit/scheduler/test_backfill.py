"""Backfills in the schedules book: which slots fire, how fast, and across a restart."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from scheduler_helpers import flow_with, schedule, utc

from kestream.models.clock import ManualClock
from kestream.scheduler import ScheduleBook, TriggerState, trigger_key
from kestream.scheduler.backfill import Backfill, BackfillError
from kestream.scheduler.commands import CommandError, TriggerCommand, apply_to_state
from kestream.scheduler.schedules import Fire

KEY = trigger_key("company.team", "f", "sched")
NOW = utc(2025, 1, 1, 12, 0, 30)


def _book(clock: ManualClock, cron: str = "* * * * *", **props: str) -> ScheduleBook:
    book = ScheduleBook(clock, backfill_slots=3, backfill_interval=timedelta(seconds=1))
    book.sync_flow(flow_with(schedule(cron, inputs="{day: regular, kind: schedule}", **props)))
    return book


def _backfill(start: str, end: str | None, **extra: object) -> Backfill:
    return Backfill.requested(
        {"start": start, "end": end, **extra}, backfill_id="b1", now=NOW, next_execution_date=None
    )


def _drain(book: ScheduleBook, clock: ManualClock, ticks: int = 20) -> list[Fire]:
    fires: list[Fire] = []
    for _ in range(ticks):
        fires.extend(book.tick(clock.now))
        clock.advance(timedelta(seconds=1))
    return fires


def test_every_slot_between_start_and_end_fires_once_in_batches() -> None:
    clock = ManualClock(NOW)
    book = _book(clock)
    offset = 0
    command = TriggerCommand(
        KEY, "set-backfill", _backfill("2025-01-01T10:00:00Z", "2025-01-01T10:09:00Z")
    )
    assert book.apply_command(command, offset) is not None
    first = book.tick(clock.now)
    assert [f.slot for f in first] == [utc(2025, 1, 1, 10, m) for m in range(3)]  # a batch of 3
    assert book.tick(clock.now) == []  # the next batch waits backfill_interval
    fires = first + _drain(book, clock)
    backfilled = [f.slot for f in fires if f.backfill]
    assert backfilled == [utc(2025, 1, 1, 10, m) for m in range(10)]  # end is inclusive
    assert len({f.event.execution_id for f in fires}) == len(fires)
    state = book.state(KEY)
    assert state is not None and state.backfill is None  # done: cleared


def test_backfill_executions_carry_inputs_labels_and_the_slot_variables() -> None:
    clock = ManualClock(NOW)
    book = _book(clock)
    backfill = _backfill(
        "2025-01-01T11:00:00Z", "2025-01-01T11:00:00Z",
        inputs={"day": "backfilled"}, labels=[{"key": "reason", "value": "outage"}],
    )  # fmt: skip
    book.apply_command(TriggerCommand(KEY, "set-backfill", backfill), 0)
    (fire,) = book.tick(clock.now)
    event = fire.event
    assert event.inputs == {"day": "backfilled", "kind": "schedule"}  # merged over the trigger's
    assert event.labels == {"reason": "outage"}
    assert event.trigger is not None
    assert event.trigger["variables"]["date"] == "2025-01-01T11:00:00+00:00"
    assert event.trigger["variables"]["previous"] == "2025-01-01T10:59:00+00:00"
    assert event.schedule_date == utc(2025, 1, 1, 11)


def test_a_backfilled_slot_has_an_id_of_its_own_per_backfill() -> None:
    clock = ManualClock(utc(2025, 1, 1, 10, 0, 30))
    book = _book(clock)
    clock.advance(timedelta(minutes=1))
    (regular,) = book.tick(clock.now)  # 10:01 on schedule
    ids = {regular.event.execution_id}
    for n, backfill_id in enumerate(["b1", "b2"]):
        backfill = Backfill.requested(
            {"start": "2025-01-01T10:01:00Z", "end": "2025-01-01T10:01:00Z"},
            backfill_id=backfill_id, now=clock.now, next_execution_date=None,
        )  # fmt: skip
        book.apply_command(TriggerCommand(KEY, "set-backfill", backfill), n)
        (fire,) = book.tick(clock.now)
        assert fire.slot == regular.slot
        ids.add(fire.event.execution_id)
    assert len(ids) == 3  # the slot runs again for each backfill (Kestra replays it too)


def test_the_schedule_keeps_firing_on_time_during_a_backfill() -> None:
    clock = ManualClock(utc(2025, 1, 1, 12, 0, 30))
    book = _book(clock)
    book.apply_command(
        TriggerCommand(
            KEY, "set-backfill", _backfill("2025-01-01T00:00:00Z", "2025-01-01T01:00:00Z")
        ),
        0,
    )
    fires = _drain(book, clock, ticks=120)
    regular = [f.slot for f in fires if not f.backfill]
    assert regular == [utc(2025, 1, 1, 12, 1), utc(2025, 1, 1, 12, 2)]
    assert len([f for f in fires if f.backfill]) == 61


def test_pause_holds_the_backfill_and_unpause_goes_on_where_it_stopped() -> None:
    clock = ManualClock(NOW)
    book = _book(clock)
    book.apply_command(
        TriggerCommand(
            KEY, "set-backfill", _backfill("2025-01-01T10:00:00Z", "2025-01-01T10:05:00Z")
        ),
        0,
    )
    first = book.tick(clock.now)
    book.apply_command(TriggerCommand(KEY, "pause-backfill"), 1)
    assert _drain(book, clock) == []
    state = book.state(KEY)
    assert state is not None and state.backfill is not None and state.backfill.paused
    book.apply_command(TriggerCommand(KEY, "unpause-backfill"), 2)
    rest = _drain(book, clock)
    slots = [f.slot for f in first + rest if f.backfill]
    assert slots == [utc(2025, 1, 1, 10, m) for m in range(6)]


def test_disabled_trigger_fires_no_backfill_until_enabled() -> None:
    clock = ManualClock(NOW)
    book = _book(clock)
    book.apply_command(TriggerCommand(KEY, "disable"), 0)
    book.apply_command(
        TriggerCommand(
            KEY, "set-backfill", _backfill("2025-01-01T10:00:00Z", "2025-01-01T10:04:00Z")
        ),
        1,
    )
    assert _drain(book, clock, ticks=90) == []  # neither the backfill nor the schedule
    book.apply_command(TriggerCommand(KEY, "enable"), 2)
    fires = _drain(book, clock, ticks=5)
    assert [f.slot for f in fires if f.backfill] == [utc(2025, 1, 1, 10, m) for m in range(5)]
    state = book.state(KEY)
    assert state is not None and not state.disabled
    assert state.next_execution_date is not None and state.next_execution_date > clock.now


def test_delete_stops_the_backfill() -> None:
    clock = ManualClock(NOW)
    book = _book(clock)
    book.apply_command(
        TriggerCommand(
            KEY, "set-backfill", _backfill("2025-01-01T10:00:00Z", "2025-01-01T10:09:00Z")
        ),
        0,
    )
    assert len(book.tick(clock.now)) == 3
    book.apply_command(TriggerCommand(KEY, "delete-backfill"), 1)
    assert [f for f in _drain(book, clock) if f.backfill] == []


def test_a_command_read_again_after_a_restart_is_not_applied_twice() -> None:
    clock = ManualClock(NOW)
    book = _book(clock)
    command = TriggerCommand(
        KEY, "set-backfill", _backfill("2025-01-01T10:00:00Z", "2025-01-01T10:02:00Z")
    )
    book.apply_command(command, 7)
    fires = _drain(book, clock)
    assert len([f for f in fires if f.backfill]) == 3
    assert book.apply_command(command, 7) is None  # the same offset: already in the record
    refused = book.apply_command(TriggerCommand(KEY, "pause-backfill"), 8)  # none to pause
    assert refused is not None and refused.command_offset == 8 and refused.backfill is None
    assert [f for f in _drain(book, clock) if f.backfill] == []


def test_a_crash_between_the_executions_and_the_record_refires_the_same_ids_only() -> None:
    """Replay of the record written before the last batch: the batch fires again with the same
    execution ids (the executor drops them), and no other slot is missed or repeated."""
    clock = ManualClock(NOW)
    book = _book(clock)
    book.apply_command(
        TriggerCommand(
            KEY, "set-backfill", _backfill("2025-01-01T10:00:00Z", "2025-01-01T10:07:00Z")
        ),
        0,
    )
    first = book.tick(clock.now)
    written = book.state(KEY)  # the record the runtime wrote after the first batch's acks
    assert written is not None
    clock.advance(timedelta(seconds=1))
    lost = book.tick(clock.now)  # produced, then the scheduler died before writing the record
    restarted = _book(clock)
    restarted.load_state(TriggerState.from_json(written.to_json()))
    replayed = _drain(restarted, clock)
    backfilled = [f for f in first + lost + replayed if f.backfill]
    ids = Counter(f.event.execution_id for f in backfilled)
    assert {f.slot for f in backfilled} == {utc(2025, 1, 1, 10, m) for m in range(8)}
    assert [eid for eid, n in ids.items() if n > 1] == [f.event.execution_id for f in lost]
    assert len(ids) == 8  # one execution per slot


def test_conditions_skip_backfilled_slots_too() -> None:
    clock = ManualClock(NOW)
    book = _book(
        clock, "0 10 * * *",
        conditions="\n      - type: io.kestra.plugin.core.condition.Weekend",
    )  # fmt: skip
    book.apply_command(
        TriggerCommand(
            KEY, "set-backfill", _backfill("2024-12-01T00:00:00Z", "2024-12-08T23:00:00Z")
        ),
        0,
    )
    fires = _drain(book, clock)
    assert [f.slot.day for f in fires if f.backfill] == [1, 7, 8]  # Sunday, Saturday, Sunday


def test_backfill_requests_are_checked() -> None:
    with pytest.raises(BackfillError, match="needs a 'start'"):
        Backfill.requested({}, backfill_id="b", now=NOW, next_execution_date=None)
    with pytest.raises(BackfillError, match="before its start"):
        _backfill("2025-01-01T10:00:00Z", "2025-01-01T09:00:00Z")
    with pytest.raises(BackfillError, match="reserved"):
        _backfill("2025-01-01T10:00:00Z", None, labels={"system.x": "1"})
    with pytest.raises(BackfillError, match="UTC offset"):
        _backfill("2025-01-01T10:00:00", None)
    assert _backfill("2025-01-01T10:00:00Z", None).end == NOW  # no end: now


def test_commands_that_do_not_apply_say_so() -> None:
    state = TriggerState("company.team", "f", "sched")
    with pytest.raises(CommandError, match="No backfill found"):
        apply_to_state(state, TriggerCommand(KEY, "pause-backfill"))
    with pytest.raises(CommandError, match="not locked"):
        apply_to_state(state, TriggerCommand(KEY, "unlock"))
    locked = state.evolve(execution_id="e1")
    assert apply_to_state(locked, TriggerCommand(KEY, "unlock")).execution_id is None


def test_records_and_commands_round_trip() -> None:
    backfill = _backfill("2025-01-01T10:00:00Z", None, inputs={"a": 1}, labels={"k": "v"})
    state = TriggerState("company.team", "f", "sched", backfill=backfill, command_offset=4)
    assert TriggerState.from_json(state.to_json()) == state
    command = TriggerCommand(KEY, "set-backfill", backfill)
    assert TriggerCommand.from_json(command.to_json()) == command
    with pytest.raises(ValueError, match="unknown trigger command"):
        TriggerCommand.from_json(b'{"key": "a/b/c", "action": "explode"}')
