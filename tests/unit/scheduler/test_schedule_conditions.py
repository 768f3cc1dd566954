"""Schedule and Webhook conditions: each one on fixed dates (time zones, DST), and the schedule
book skipping the slots whose conditions do not hold."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from scheduler_helpers import flow_with, schedule, utc

from kestream.models.clock import ManualClock
from kestream.models.conditions import time_condition_for
from kestream.models.flow import FlowValidationError, check_flow, parse_flow
from kestream.scheduler import ScheduleBook
from kestream.scheduler.conditions import ConditionError, condition_context, conditions_hold

C = "io.kestra.plugin.core.condition."
FLOW = flow_with(schedule("@daily"))


def holds(raw: dict[str, Any], date: str | None = None, **variables: Any) -> bool:
    trigger = {"date": date, **variables} if date is not None else variables
    return conditions_hold([time_condition_for(raw)], condition_context(FLOW, trigger))


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        ("2025-03-03T00:30:00+01:00", True),  # Monday in Paris...
        ("2025-03-02T23:30:00+00:00", False),  # ...the same instant is Sunday in UTC
        ("2025-03-03", True),  # a plain date
    ],
)
def test_day_week_reads_the_date_on_its_own_clock(date: str, expected: bool) -> None:
    assert holds({"type": C + "DayWeek", "dayOfWeek": "MONDAY"}, date) is expected


@pytest.mark.parametrize(
    ("date", "position", "expected"),
    [
        ("2025-06-02T09:00:00Z", "FIRST", True),  # first Monday of June 2025
        ("2025-06-09T09:00:00Z", "FIRST", False),
        ("2025-06-09T09:00:00Z", "SECOND", True),
        ("2025-06-23T09:00:00Z", "FOURTH", True),
        ("2025-06-30T09:00:00Z", "LAST", True),  # a fifth Monday is the last
        ("2025-06-23T09:00:00Z", "LAST", False),
        ("2025-02-24T09:00:00Z", "LAST", True),  # the fourth is the last in February
    ],
)
def test_day_week_in_month(date: str, position: str, expected: bool) -> None:
    raw = {"type": C + "DayWeekInMonthCondition", "dayOfWeek": "MONDAY", "dayInMonth": position}
    assert holds(raw, date) is expected


def test_weekend_and_not_weekend() -> None:
    assert holds({"type": C + "Weekend"}, "2025-03-08T10:00:00+01:00")  # Saturday
    assert not holds({"type": C + "Weekend"}, "2025-03-07T23:59:00+01:00")  # Friday
    workday = {"type": C + "Not", "conditions": [{"type": C + "Weekend"}]}
    assert holds(workday, "2025-03-07T23:59:00+01:00")


def test_time_between_with_offsets_compares_instants() -> None:
    raw = {"type": C + "TimeBetween", "after": "08:00:00+01:00", "before": "18:00:00+01:00"}
    assert holds(raw, "2025-01-15T09:00:00+01:00")
    assert not holds(raw, "2025-01-15T08:00:00+01:00")  # bounds are strict
    assert holds(raw, "2025-01-15T16:59:00Z")  # 17:59 in +01:00
    assert not holds(raw, "2025-01-15T17:00:00Z")


def test_time_between_without_offset_is_the_dates_wall_clock_across_dst() -> None:
    raw = {"type": C + "TimeBetween", "after": "08:00:00", "before": "09:00:00"}
    # 08:30 in Paris, in winter (+01:00) and in summer (+02:00): both pass
    assert holds(raw, "2025-01-15T08:30:00+01:00")
    assert holds(raw, "2025-07-15T08:30:00+02:00")
    assert not holds(raw, "2025-07-15T07:30:00Z")  # 07:30 wall clock in UTC


def test_date_time_between() -> None:
    raw = {
        "type": C + "DateTimeBetween",
        "after": "2025-03-30T00:00:00Z",
        "before": "2025-03-31T00:00:00+02:00",
    }
    assert holds(raw, "2025-03-30T12:00:00+02:00")
    assert holds(raw, "2025-03-30T23:00:00+02:00")  # 21:00 UTC: before 22:00 UTC
    assert not holds(raw, "2025-03-31T00:30:00+02:00")  # the 'before' instant is passed
    assert not holds(raw, "2025-03-29T23:59:59Z")


def test_public_holiday_by_country_and_subdivision() -> None:
    assert holds({"type": C + "PublicHoliday", "country": "FR"}, "2025-07-14T11:00:00+02:00")
    assert not holds({"type": C + "PublicHoliday", "country": "FR"}, "2025-07-15T11:00:00+02:00")
    epiphany = {"type": C + "PublicHoliday", "country": "DE", "subDivision": "DE-BY"}
    assert holds(epiphany, "2025-01-06T09:00:00+01:00")
    assert not holds({"type": C + "PublicHoliday", "country": "DE"}, "2025-01-06T09:00:00+01:00")
    templated = {"type": C + "PublicHoliday", "country": "{{ trigger.country }}"}
    assert holds(templated, "2025-12-25T00:00:00Z", country="GB")
    with pytest.raises(ConditionError, match="ZZ"):
        holds(templated, "2025-12-25T00:00:00Z", country="ZZ")


def test_expression_or_and_variable_alias() -> None:
    assert holds(
        {"type": C + "Expression", "expression": "{{ trigger.body.ok }}"}, body={"ok": True}
    )
    legacy = "io.kestra.core.models.conditions.types.VariableCondition"
    assert not holds({"type": legacy, "expression": "{{ trigger.body.ok }}"}, body={"ok": False})
    either = {
        "type": C + "Or",
        "conditions": [
            {"type": C + "DayWeek", "dayOfWeek": "MONDAY"},
            {"type": C + "Weekend"},
        ],
    }
    assert holds(either, "2025-03-09T10:00:00Z")  # Sunday
    assert not holds(either, "2025-03-11T10:00:00Z")  # Tuesday


def test_a_date_that_is_not_one_is_an_error_not_a_no() -> None:
    with pytest.raises(ConditionError, match="not an ISO-8601 date"):
        holds({"type": C + "Weekend", "date": "{{ trigger.body }}"}, body="soon")
    with pytest.raises(ConditionError, match="Weekend"):
        holds({"type": C + "Weekend"})  # a webhook has no trigger.date


@pytest.mark.parametrize(
    ("block", "needle"),
    [
        (f"      - type: {C}DayWeek\n        dayOfWeek: FUNDAY\n", "dayOfWeek"),
        (f"      - type: {C}PublicHoliday\n        country: ZZ\n", "ZZ"),
        (f"      - type: {C}PublicHoliday\n", "country"),
        (f"      - type: {C}Not\n        conditions: []\n", "conditions"),
        (
            f"      - type: {C}Or\n        conditions:\n          - type: {C}ExecutionStatus\n",
            "ExecutionStatus",
        ),
        (f"      - type: {C}MultipleCondition\n", "MultipleCondition"),
    ],
)
def test_bad_schedule_conditions_are_refused_at_deploy(block: str, needle: str) -> None:
    source = (
        "id: f\nnamespace: company.team\ntasks:\n  - id: t\n"
        "    type: io.kestra.plugin.core.log.Log\n    message: hi\ntriggers:\n  - id: s\n"
        "    type: io.kestra.plugin.core.trigger.Schedule\n"
        "    cron: '@daily'\n    conditions:\n" + block
    )
    problems = check_flow(source)
    assert problems and needle in problems[0].message
    with pytest.raises(FlowValidationError):
        parse_flow(source)


def test_the_book_skips_slots_whose_conditions_fail_and_fires_the_others() -> None:
    # Every day at 09:00 in Paris, weekdays only, not on French public holidays; across the
    # spring DST change (2025-03-30) and Easter Monday (2025-04-21).
    trigger = schedule("0 9 * * *", timezone="Europe/Paris") + (
        "    conditions:\n"
        f"      - type: {C}Not\n"
        "        conditions:\n"
        f"          - type: {C}Weekend\n"
        f"          - type: {C}PublicHoliday\n"
        "            country: FR\n"
    )
    clock = ManualClock(utc(2025, 3, 27, 12))
    book = ScheduleBook(clock)
    book.sync_flow(flow_with(trigger))
    fires = []
    for _ in range(28 * 24):
        clock.advance(timedelta(hours=1))
        fires.extend(book.tick(clock.now))
    days = [f.event.trigger["variables"]["date"][:10] for f in fires]  # type: ignore[index]
    assert days[:3] == ["2025-03-28", "2025-03-31", "2025-04-01"]  # Sat 29, Sun 30 skipped
    assert "2025-04-21" not in days and "2025-04-22" in days
    assert all(f.slot.hour in (7, 8) for f in fires)  # 09:00 Paris: 08:00 UTC, then 07:00
    assert {f.slot.hour for f in fires} == {7, 8}
    assert len(days) == 19  # the 20 weekdays from 28 Mar to 24 Apr, minus Easter Monday
