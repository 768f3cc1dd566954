"""Whether a Schedule slot or a Webhook call passes its trigger's ``conditions`` (pure).

The conditions see the variables of the execution the trigger would start: ``trigger.*`` (a
schedule's ``date``, ``next``, ``previous``; a webhook's ``body``, ``headers``, ``parameters``)
and ``flow.*``. A date is rendered (``{{ trigger.date }}`` by default) and read as ISO-8601; a
date with an offset is tested on its own clock (a schedule's slot on the schedule's time zone),
one without is taken in UTC.

A condition that cannot be evaluated (its date does not render or is not a date, an unknown
holiday calendar) raises :class:`ConditionError`: the scheduler skips that slot with a warning,
the webhook route answers 422; neither fires on a condition it could not check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time
from typing import Any

from kestream.expressions import RenderError, is_truthy, render
from kestream.models.calendar import is_public_holiday, is_weekday_in_month, weekday_name
from kestream.models.conditions import (
    Condition,
    DateCondition,
    DateTimeBetweenCondition,
    DayWeekCondition,
    DayWeekInMonthCondition,
    ExpressionCondition,
    NotCondition,
    OrCondition,
    PublicHolidayCondition,
    TimeBetweenCondition,
    WeekendCondition,
)
from kestream.models.flow import Flow

__all__ = ["ConditionError", "condition_context", "conditions_hold"]


class ConditionError(ValueError):
    """A condition that could not be evaluated (the message names it and why)."""


def condition_context(flow: Flow, variables: Mapping[str, Any]) -> dict[str, Any]:
    """The variables a trigger's conditions render with."""
    return {
        "flow": {"id": flow.id, "namespace": flow.namespace, "revision": flow.revision},
        "trigger": dict(variables),
    }


def conditions_hold(conditions: Iterable[Condition], ctx: Mapping[str, Any]) -> bool:
    """Whether every condition holds (Kestra: all of a trigger's conditions must)."""
    return all(_holds(condition, ctx) for condition in conditions)


def _holds(condition: Condition, ctx: Mapping[str, Any]) -> bool:
    if isinstance(condition, NotCondition):
        return not any(_holds(inner, ctx) for inner in condition.conditions)
    if isinstance(condition, OrCondition):
        return any(_holds(inner, ctx) for inner in condition.conditions)
    if isinstance(condition, ExpressionCondition):
        return is_truthy(_render(condition, condition.expression, ctx))
    if isinstance(condition, DateCondition):
        return _date_holds(condition, _moment(condition, ctx), ctx)
    raise ConditionError(f"condition {condition.short_name} cannot be evaluated on this trigger")


def _date_holds(condition: DateCondition, moment: datetime, ctx: Mapping[str, Any]) -> bool:
    day = moment.date()
    if isinstance(condition, DayWeekCondition):
        return weekday_name(day) == condition.dayOfWeek
    if isinstance(condition, DayWeekInMonthCondition):
        return is_weekday_in_month(day, condition.dayOfWeek, condition.dayInMonth)
    if isinstance(condition, WeekendCondition):
        return day.weekday() >= 5
    if isinstance(condition, TimeBetweenCondition):
        return _strictly_between(
            moment,
            _on_day(condition.after, moment),
            _on_day(condition.before, moment),
        )
    if isinstance(condition, DateTimeBetweenCondition):
        return _strictly_between(
            moment, _aware_or_none(condition.after), _aware_or_none(condition.before)
        )
    if isinstance(condition, PublicHolidayCondition):
        country = str(_render(condition, condition.country, ctx))
        sub = condition.subDivision
        subdivision = None if sub is None else str(_render(condition, sub, ctx))
        try:
            return is_public_holiday(day, country, subdivision)
        except ValueError as exc:
            raise ConditionError(f"condition PublicHoliday: {exc}") from None
    raise ConditionError(f"condition {condition.short_name} cannot be evaluated")


def _render(condition: Condition, text: str, ctx: Mapping[str, Any]) -> Any:
    try:
        return render(text, ctx)
    except RenderError as exc:
        raise ConditionError(f"condition {condition.short_name}: {exc}") from None


def _moment(condition: DateCondition, ctx: Mapping[str, Any]) -> datetime:
    """The condition's ``date``, rendered and read as an aware datetime."""
    value = _render(condition, condition.date, ctx)
    if isinstance(value, datetime):
        return _aware(value)
    if isinstance(value, date):
        return datetime.combine(value, time(), UTC)
    text = str(value).strip()
    try:
        return _aware(datetime.fromisoformat(text))
    except ValueError:
        raise ConditionError(
            f"condition {condition.short_name}: '{text[:60]}' is not an ISO-8601 date"
        ) from None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _aware_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _aware(value)


def _on_day(bound: time | None, moment: datetime) -> datetime | None:
    """A time-of-day bound as an instant on ``moment``'s day (in ``moment``'s offset when the
    bound has none)."""
    if bound is None:
        return None
    offset = bound.utcoffset()
    if offset is None:
        return datetime.combine(moment.date(), bound, moment.tzinfo)
    local = moment.astimezone(bound.tzinfo)
    instant = datetime.combine(local.date(), bound.replace(tzinfo=None)) - offset
    return instant.replace(tzinfo=UTC)


def _strictly_between(moment: datetime, after: datetime | None, before: datetime | None) -> bool:
    return (after is None or moment > after) and (before is None or moment < before)
