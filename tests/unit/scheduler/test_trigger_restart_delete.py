"""The ``restart`` and ``delete`` trigger commands in the schedule book, backfill labels
rendered for their slot, and the YAML ``backfill`` refusal that names the API route."""

from __future__ import annotations

from datetime import timedelta

import pytest
from scheduler_helpers import flow_with, schedule, utc

from kestream.models.clock import ManualClock
from kestream.models.validation import FlowValidationError
from kestream.scheduler import ScheduleBook, trigger_key
from kestream.scheduler.backfill import Backfill, BackfillError
from kestream.scheduler.commands import TriggerCommand, apply_to_state

KEY = trigger_key("company.team", "f", "sched")
NOW = utc(2025, 1, 1, 12, 0, 30)


def _book(clock: ManualClock) -> ScheduleBook:
    book = ScheduleBook(clock, backfill_slots=3, backfill_interval=timedelta(seconds=1))
    book.sync_flow(flow_with(schedule("0 * * * *")))
    return book


def _fire_once(book: ScheduleBook, clock: ManualClock) -> None:
    clock.advance(timedelta(hours=1))
    assert book.tick(clock.now)


def test_restart_clears_the_lock_and_never_refuses() -> None:
    clock = ManualClock(NOW)
    book = _book(clock)
    _fire_once(book, clock)
    locked = book.state(KEY)
    assert locked is not None and locked.execution_id is not None
    restarted = book.apply_command(TriggerCommand(KEY, "restart"), 0)
    assert restarted is not None and restarted.execution_id is None
    assert restarted.date == locked.date and restarted.command_offset == 0
    assert restarted.next_execution_date == locked.next_execution_date
    again = apply_to_state(restarted, TriggerCommand(KEY, "restart"))
    assert again.execution_id is None


def test_delete_recreates_the_trigger_from_the_flow_from_now() -> None:
    clock = ManualClock(NOW)
    book = _book(clock)
    _fire_once(book, clock)
    backfill = Backfill.requested(
        {"start": "2024-12-31T00:00:00Z"}, backfill_id="b1", now=clock.now,
        next_execution_date=None,
    )  # fmt: skip
    book.apply_command(TriggerCommand(KEY, "set-backfill", backfill), 0)
    book.apply_command(TriggerCommand(KEY, "disable"), 1)
    clock.advance(timedelta(minutes=10))
    fresh = book.apply_command(TriggerCommand(KEY, "delete"), 2)
    assert fresh is not None
    assert (fresh.date, fresh.execution_id, fresh.backfill, fresh.disabled) == (
        None, None, None, False,
    )  # fmt: skip
    assert fresh.next_execution_date == utc(2025, 1, 1, 14)  # the next slot after now
    assert fresh.command_offset == 2 and fresh.schedule is not None  # planned again
    clock.advance(timedelta(hours=1))
    fires = book.tick(clock.now)
    assert [(f.slot, f.backfill) for f in fires] == [(utc(2025, 1, 1, 14), False)]


@pytest.mark.parametrize(
    ("recover", "policy", "hours"),
    [
        (False, None, []),  # Kestra's default for the API: from the next slot, none missed
        (True, None, [14, 15, 16]),  # the global default, ALL
        (True, "LAST", [16]),
        (True, "NONE", []),
    ],
)
def test_enabled_again_the_missed_slots_fire_only_when_asked(
    recover: bool, policy: str | None, hours: list[int]
) -> None:
    clock = ManualClock(NOW)
    book = ScheduleBook(clock)
    props = {} if policy is None else {"recoverMissedSchedules": policy}
    book.sync_flow(flow_with(schedule("0 * * * *", **props)))
    _fire_once(book, clock)  # 13:00 fired
    book.apply_command(TriggerCommand(KEY, "disable"), 0)
    clock.advance(timedelta(hours=3, minutes=10))  # 14:00, 15:00 and 16:00 missed
    assert book.tick(clock.now) == []
    enabled = book.apply_command(TriggerCommand(KEY, "enable", recover=recover), 1)
    assert enabled is not None and not enabled.disabled
    fires = book.tick(clock.now)
    assert [f.slot for f in fires] == [utc(2025, 1, 1, h) for h in hours]
    state = book.state(KEY)
    assert state is not None and state.next_execution_date == utc(2025, 1, 1, 17)


def test_a_recovering_enable_travels_in_the_command_record() -> None:
    command = TriggerCommand(KEY, "enable", recover=True)
    assert TriggerCommand.from_json(command.to_json()) == command
    plain = TriggerCommand(KEY, "enable")
    assert b"recoverMissedSchedules" not in plain.to_json()
    assert TriggerCommand.from_json(plain.to_json()) == plain


def test_backfill_labels_are_rendered_for_their_slot() -> None:
    clock = ManualClock(NOW)
    book = _book(clock)
    backfill = Backfill.requested(
        {
            "start": "2025-01-01T10:00:00Z", "end": "2025-01-01T10:00:00Z",
            "labels": [
                {"key": "slot", "value": "{{ trigger.date }}"},
                {"key": "flow", "value": "{{ flow.id }}-rerun"},
                {"key": "broken", "value": "{{ trigger.date | nosuchfilter }}"},
            ],
        },
        backfill_id="b1", now=clock.now, next_execution_date=None,
    )  # fmt: skip
    book.apply_command(TriggerCommand(KEY, "set-backfill", backfill), 0)
    (fire,) = book.tick(clock.now)
    assert fire.event.labels["slot"] == "2025-01-01T10:00:00+00:00"
    assert fire.event.labels["flow"] == "f-rerun"
    assert fire.event.labels["broken"] == "{{ trigger.date | nosuchfilter }}"  # kept as written


def test_a_backfill_label_is_rendered_within_the_render_limits() -> None:
    """A label's template renders as every expression does: over the size limit it fails
    fast, is kept as written, and the slot still fires."""
    clock = ManualClock(NOW)
    book = _book(clock)
    runaway = "{% for i in range(0, 999999) %}" + "x" * 4096 + "{% endfor %}"
    backfill = Backfill.requested(
        {"start": "2025-01-01T10:00:00Z", "labels": {"runaway": runaway}},
        backfill_id="b1", now=clock.now, next_execution_date=None,
    )  # fmt: skip
    book.apply_command(TriggerCommand(KEY, "set-backfill", backfill), 0)
    fires = book.tick(clock.now)
    assert [(f.slot.hour, f.backfill) for f in fires] == [(10, True), (11, True), (12, True)]
    assert all(f.event.labels["runaway"] == runaway for f in fires)


def test_a_backfill_label_that_is_not_a_template_is_refused_when_set() -> None:
    with pytest.raises(BackfillError, match="backfill label 'slot' is not a valid template"):
        Backfill.requested(
            {"start": "2025-01-01T10:00:00Z", "labels": {"slot": "{{ trigger.date "}},
            backfill_id="b1", now=NOW, next_execution_date=None,
        )  # fmt: skip


def test_a_yaml_backfill_is_refused_with_the_api_route_to_use() -> None:
    with pytest.raises(FlowValidationError) as refused:
        flow_with(schedule("0 * * * *", backfill="{start: '2024-01-01T00:00:00Z'}"))
    message = str(refused.value)
    assert "'backfill' is not supported by kestream" in message
    assert "PUT /api/v1/{tenant}/triggers" in message
