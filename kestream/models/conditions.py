"""Trigger conditions: the common model, and the ones Schedule and Webhook triggers take.

Kestra names each condition twice (``io.kestra.plugin.core.condition.DayWeek`` and the older
``...DayWeekCondition``, also under ``io.kestra.core.models.conditions.types.``): every spelling is
accepted. The execution conditions of Flow triggers live with the flow model
(:mod:`kestream.models.flow`); the ones here look at a date (the slot of a schedule, by default)
or render an expression, and are evaluated by :mod:`kestream.scheduler.conditions`.
"""

from __future__ import annotations

from datetime import datetime, time
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, model_validator

from kestream.models.calendar import check_country

_CONDITION_PACKAGES = (
    "io.kestra.plugin.core.condition.",
    "io.kestra.core.models.conditions.types.",
)
#: What the date conditions test when the flow does not say: the trigger's date (a schedule's
#: slot, on the schedule's clock).
TRIGGER_DATE = "{{ trigger.date }}"

DayOfWeek = Literal["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY"]


def condition_names(*shorts: str) -> tuple[str, ...]:
    """Kestra's names for one condition: the current ones and their ``...Condition`` aliases."""
    return tuple(
        f"{package}{name}"
        for package in _CONDITION_PACKAGES
        for short in shorts
        for name in (short, short + "Condition")
    )


class Condition(BaseModel):
    """A trigger condition that kestream evaluates."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        coerce_numbers_to_str=True,
        validate_by_name=True,
        validate_by_alias=True,
    )

    type_names: ClassVar[tuple[str, ...]] = ()
    short_name: ClassVar[str] = ""

    type: str


class DateCondition(Condition):
    """A condition on a date: ``date`` is rendered, then read as ISO-8601."""

    date: str = Field(default=TRIGGER_DATE, min_length=1)


class DayWeekCondition(DateCondition):
    """The date falls on ``dayOfWeek``."""

    short_name: ClassVar[str] = "DayWeek"
    type_names: ClassVar[tuple[str, ...]] = condition_names("DayWeek")

    dayOfWeek: DayOfWeek


class DayWeekInMonthCondition(DateCondition):
    """The date is the first (second, third, fourth, last) ``dayOfWeek`` of its month."""

    short_name: ClassVar[str] = "DayWeekInMonth"
    type_names: ClassVar[tuple[str, ...]] = condition_names("DayWeekInMonth")

    dayOfWeek: DayOfWeek
    dayInMonth: Literal["FIRST", "SECOND", "THIRD", "FOURTH", "LAST"]


class WeekendCondition(DateCondition):
    """The date falls on a Saturday or a Sunday."""

    short_name: ClassVar[str] = "Weekend"
    type_names: ClassVar[tuple[str, ...]] = condition_names("Weekend")


class TimeBetweenCondition(DateCondition):
    """The date's time of day is strictly after ``after`` and strictly before ``before``.

    The bounds are ISO-8601 times with an offset (``16:19:12+02:00``), compared as instants on the
    date's day; a bound without an offset is a wall-clock time in the date's own offset.
    """

    short_name: ClassVar[str] = "TimeBetween"
    type_names: ClassVar[tuple[str, ...]] = condition_names("TimeBetween")

    after: time | None = None
    before: time | None = None


class DateTimeBetweenCondition(DateCondition):
    """The date is strictly after ``after`` and strictly before ``before`` (ISO-8601 datetimes;
    one without an offset is read in UTC)."""

    short_name: ClassVar[str] = "DateTimeBetween"
    type_names: ClassVar[tuple[str, ...]] = condition_names("DateTimeBetween")

    after: datetime | None = None
    before: datetime | None = None


class PublicHolidayCondition(DateCondition):
    """The date is a public holiday of ``country`` (ISO 3166-1 alpha-2), or of its
    ``subDivision`` (ISO 3166-2, ``DE-BY`` or ``BY``), by the ``holidays`` calendars.

    ``country`` is required: Kestra falls back to the server's locale, which would make the
    same flow mean different days on different hosts.
    """

    short_name: ClassVar[str] = "PublicHoliday"
    type_names: ClassVar[tuple[str, ...]] = condition_names("PublicHoliday")

    country: str
    subDivision: str | None = None

    @model_validator(mode="after")
    def _known_calendar(self) -> PublicHolidayCondition:
        codes = (self.country, self.subDivision or "")
        if not any("{{" in code or "{%" in code for code in codes):  # else checked when rendered
            check_country(self.country, self.subDivision)
        return self


class ExpressionCondition(Condition):
    """``expression`` renders truthy (``Variable`` is its older name)."""

    short_name: ClassVar[str] = "Expression"
    type_names: ClassVar[tuple[str, ...]] = condition_names("Expression", "Variable")

    expression: str


def _nested(value: Any) -> Condition:
    if isinstance(value, Condition):
        return value
    if not isinstance(value, dict):
        raise ValueError("a condition must be a mapping with a 'type'")
    return time_condition_for(value)


NestedCondition = Annotated[Condition, PlainValidator(_nested)]


class NotCondition(Condition):
    """None of ``conditions`` holds."""

    short_name: ClassVar[str] = "Not"
    type_names: ClassVar[tuple[str, ...]] = condition_names("Not")

    conditions: list[NestedCondition] = Field(min_length=1)


class OrCondition(Condition):
    """At least one of ``conditions`` holds."""

    short_name: ClassVar[str] = "Or"
    type_names: ClassVar[tuple[str, ...]] = condition_names("Or")

    conditions: list[NestedCondition] = Field(min_length=1)


#: The conditions Schedule and Webhook triggers may use.
TIME_CONDITIONS: tuple[type[Condition], ...] = (
    DayWeekCondition,
    DayWeekInMonthCondition,
    WeekendCondition,
    TimeBetweenCondition,
    DateTimeBetweenCondition,
    PublicHolidayCondition,
    ExpressionCondition,
    NotCondition,
    OrCondition,
)
TIME_CONDITIONS_BY_TYPE = {name: cls for cls in TIME_CONDITIONS for name in cls.type_names}


def time_condition_for(data: dict[str, Any]) -> Condition:
    """The typed model of one raw Schedule or Webhook condition (ValueError or
    ValidationError when it is not one)."""
    type_name = data.get("type")
    cls = TIME_CONDITIONS_BY_TYPE.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        known = ", ".join(c.short_name for c in TIME_CONDITIONS)
        raise ValueError(
            f"condition type '{type_name}' does not apply to Schedule and Webhook triggers"
            f" ({known} do)"
        )
    return cls.model_validate(data)
