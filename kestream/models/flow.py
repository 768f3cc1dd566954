"""The flow: Kestra's YAML, parsed and validated into frozen pydantic models.

:func:`parse_flow` is the way in. It reads the YAML with line numbers, applies plugin defaults,
checks every task (bottom-up, see :mod:`kestream.models.validation`), inputs, outputs and
triggers, and raises :class:`~kestream.models.validation.FlowValidationError` listing *every*
problem with its line. :func:`check_flow` returns the same problems without raising.

Top-level properties follow Kestra 0.21: ``id``, ``namespace``, ``revision``, ``tenantId``,
``description``, ``labels`` (a map or a list of ``{key, value}``), ``inputs``, ``outputs``,
``variables``, ``tasks``, ``errors``, ``finally``, ``triggers``, ``pluginDefaults`` (and its
older name ``taskDefaults``), ``disabled``, ``deleted``, ``concurrency``, ``retry`` and ``sla``;
``afterExecution`` (Kestra 0.22+) is accepted too. The deprecated ``listeners`` are refused with
a message, since kestream would not run them. Triggers are parsed and validated here; the
scheduler runs them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from datetime import time, timedelta
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    FieldSerializationInfo,
    PlainValidator,
    PrivateAttr,
    SerializationInfo,
    SerializeAsAny,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from kestream.models.conditions import (
    TIME_CONDITIONS,
    TIME_CONDITIONS_BY_TYPE,
    Condition,
    condition_names,
    time_condition_for,
)
from kestream.models.durations import DurationError, parse_duration
from kestream.models.ids import NAMESPACE_PATTERN
from kestream.models.input_resolution import dependency_problems
from kestream.models.inputs import (
    AnyInput,
    FlowOutput,
    Input,
    input_class_for,
    unknown_input_type_message,
)
from kestream.models.state import StateType
from kestream.models.validation import (
    FlowProblem,
    FlowValidationError,
    ProblemSink,
    TaskBuilder,
    describe_error,
    describe_value,
    did_you_mean,
    format_path,
    replace_children,
    resolve_loc,
    task_slots,
)
from kestream.models.yaml_source import Path, SourceMap, YamlDocument, YamlSyntaxError, load_yaml
from kestream.tasks.base import AnyTask, DurationText, LogLevel, Retry, Task
from kestream.tasks.registry import task_class
from kestream.tasks.subflow import Subflow

__all__ = [
    "Concurrency",
    "Flow",
    "FlowOutput",
    "FlowProblem",
    "FlowTrigger",
    "FlowValidationError",
    "PluginDefault",
    "ScheduleTrigger",
    "Sla",
    "Trigger",
    "WebhookTrigger",
    "apply_plugin_defaults",
    "check_flow",
    "merge_defaults",
    "parse_flow",
    "task_to_data",
    "trigger_model_for",
]

#: Unknown properties are errors, as in Kestra; numbers given for text properties become text, as
#: Jackson makes them for Kestra (``id: 123``, ``values: [1, 2]``).
_STRICT_FROZEN = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

FLOW_ID_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$"
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
TRIGGER_ID_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_-]*$"

#: Top-level properties holding task lists, in the order their tasks are indexed.
TASK_LISTS: tuple[str, ...] = ("tasks", "errors", "finally", "afterExecution")
#: Optional containers that YAML may leave empty (``errors:`` alone reads as null).
_OPTIONAL_CONTAINERS = frozenset(
    {"labels", "inputs", "outputs", "variables", "errors", "finally", "afterExecution"}
    | {"triggers", "pluginDefaults", "taskDefaults", "sla"}
)


# ---------------------------------------------------------------------------------------------
# plugin defaults
# ---------------------------------------------------------------------------------------------


class PluginDefault(BaseModel):
    """Default property values for every plugin (task or trigger) whose type starts with ``type``.

    Missing properties are filled in (maps deep-merged, the task's own values win); with
    ``forced: true`` the default values win instead. ``id`` and ``type`` are never changed.
    Several matching defaults apply in order: for a property, the first non-forced default and
    the last forced one win.
    """

    model_config = _STRICT_FROZEN

    type: str = Field(min_length=1)
    forced: bool = False
    values: dict[str, Any] = Field(default_factory=dict)

    def matches(self, type_name: str) -> bool:
        """Kestra matches by prefix; kestream also matches the other names of the same task."""
        if type_name.startswith(self.type):
            return True
        cls = task_class(self.type)
        return cls is not None and cls is task_class(type_name)


def _merge(target: Mapping[str, Any], values: Mapping[str, Any], forced: bool) -> dict[str, Any]:
    result = dict(target)
    for key, value in values.items():
        current = result.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            result[key] = _merge(current, value, forced)
        elif current is None or forced:
            result[key] = copy.deepcopy(value)
    return result


def merge_defaults(raw: dict[str, Any], defaults: Sequence[PluginDefault]) -> dict[str, Any]:
    """One plugin's raw properties with the matching defaults applied (not its children)."""
    type_name = raw.get("type")
    if not defaults or not isinstance(type_name, str):
        return raw
    result = raw
    for default in defaults:
        if default.matches(type_name):
            values = {k: v for k, v in default.values.items() if k not in ("id", "type")}
            result = _merge(result, values, default.forced)
    return result


def apply_plugin_defaults(items: Any, defaults: Sequence[PluginDefault]) -> Any:
    """A raw task list (or a Dag node's one task) with defaults applied to every task at any
    depth (built tasks kept)."""
    if defaults and isinstance(items, Mapping):
        return _apply_one(dict(items), defaults)
    if not defaults or not isinstance(items, list):
        return items
    return [
        _apply_one(dict(item), defaults) if isinstance(item, Mapping) else item for item in items
    ]


def _apply_one(raw: dict[str, Any], defaults: Sequence[PluginDefault]) -> dict[str, Any]:
    filled = merge_defaults(raw, defaults)
    return replace_children(filled, lambda _path, items: apply_plugin_defaults(items, defaults))


def _valid_defaults(raw: Any) -> list[PluginDefault]:
    """The well-formed entries of a raw defaults list (the malformed ones are reported later)."""
    found = []
    for item in raw if isinstance(raw, list) else []:
        try:
            found.append(PluginDefault.model_validate(item))
        except ValidationError:
            continue
    return found


# ---------------------------------------------------------------------------------------------
# triggers
# ---------------------------------------------------------------------------------------------

CRON_NICKNAMES = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)


def check_cron(expression: str, *, with_seconds: bool = False) -> str:
    """Validate a cron expression as Kestra's Schedule reads it; return it unchanged.

    Five fields (minute to day of week), six with a leading seconds field when ``withSeconds``
    is set, or a nickname such as ``@hourly``.
    """
    text = expression.strip()
    if text.startswith("@"):
        if text.lower() not in CRON_NICKNAMES:
            known = ", ".join(sorted(CRON_NICKNAMES))
            raise ValueError(f"unknown cron nickname '{text}' (known: {known})")
        return expression
    fields = text.split()
    expected = 6 if with_seconds else 5
    if len(fields) != expected:
        hint = " (set 'withSeconds: true' for a leading seconds field)" if len(fields) == 6 else ""
        raise ValueError(
            f"a cron expression has {expected} fields, '{expression}' has {len(fields)}{hint}"
        )
    if not croniter.is_valid(text, second_at_beginning=with_seconds):
        raise ValueError(f"invalid cron expression '{expression}'")
    return expression


# -- conditions ---------------------------------------------------------------------------------
#
# A trigger keeps its ``conditions`` (and a Flow trigger its ``preconditions``) as the raw
# mappings the YAML gave, so a dump reads back unchanged; each one is checked here against the
# typed model below when the flow is validated, and the scheduler reads the typed form
# (``Trigger.condition_models``, ``FlowTrigger.precondition_model``). What kestream does not
# evaluate is refused at validation, never skipped at run time.


class ExecutionFlowCondition(Condition):
    """The ended execution belongs to this flow (``namespace`` and ``flowId`` both match)."""

    short_name: ClassVar[str] = "ExecutionFlow"
    type_names: ClassVar[tuple[str, ...]] = condition_names("ExecutionFlow")

    namespace: str
    flowId: str


class ExecutionNamespaceCondition(Condition):
    """The ended execution's namespace matches: ``comparison`` EQUALS (default), PREFIX or SUFFIX.

    ``prefix: true`` is the older spelling of ``comparison: PREFIX``, read only when
    ``comparison`` is not given (as in Kestra).
    """

    short_name: ClassVar[str] = "ExecutionNamespace"
    type_names: ClassVar[tuple[str, ...]] = condition_names("ExecutionNamespace")

    namespace: str
    comparison: Literal["EQUALS", "PREFIX", "SUFFIX"] | None = None
    prefix: bool = False

    @property
    def effective_comparison(self) -> str:
        if self.comparison is not None:
            return self.comparison
        return "PREFIX" if self.prefix else "EQUALS"


class ExecutionStatusCondition(Condition):
    """The ended execution's state is in ``in`` and not in ``notIn`` (an empty list is ignored)."""

    short_name: ClassVar[str] = "ExecutionStatus"
    type_names: ClassVar[tuple[str, ...]] = condition_names("ExecutionStatus")

    in_: list[StateType] = Field(default_factory=list, alias="in")
    notIn: list[StateType] = Field(default_factory=list)


class ExecutionLabelsCondition(Condition):
    """The ended execution carries every one of these labels (a map or a list of key/value)."""

    short_name: ClassVar[str] = "ExecutionLabels"
    type_names: ClassVar[tuple[str, ...]] = condition_names("ExecutionLabels")

    labels: dict[str, str]

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> dict[str, str]:
        return normalize_labels(value)


#: The conditions a Flow trigger may use; they all look at the execution that ended.
EXECUTION_CONDITIONS: tuple[type[Condition], ...] = (
    ExecutionFlowCondition,
    ExecutionNamespaceCondition,
    ExecutionStatusCondition,
    ExecutionLabelsCondition,
)
_CONDITIONS_BY_TYPE = {name: cls for cls in EXECUTION_CONDITIONS for name in cls.type_names}
#: Kestra conditions kestream knows by name but does not evaluate (yet) on Flow triggers: refused
#: with that reason. (The date and expression conditions are for Schedule and Webhook triggers.)
_UNSUPPORTED_CONDITIONS = frozenset(
    name
    for short in (
        "ExecutionOutputs",
        "Flow",
        "FlowNamespace",
        "HasRetryAttempt",
        *(cls.short_name for cls in TIME_CONDITIONS),
        "Variable",
    )
    for name in condition_names(short)
)


def condition_model_for(data: Mapping[str, Any], *, on_time: bool = False) -> Condition:
    """The typed model of one raw condition (raises ValueError or ValidationError).

    ``on_time``: the condition belongs to a Schedule or Webhook trigger (date and expression
    conditions), else to a Flow trigger (execution conditions).
    """
    if on_time:
        return time_condition_for(dict(data))
    type_name = data.get("type")
    cls = _CONDITIONS_BY_TYPE.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise ValueError(unknown_condition_message(type_name))
    return cls.model_validate(data)


def unknown_condition_message(type_name: Any) -> str:
    if type_name is None:
        return "a condition needs a 'type'"
    if type_name in TIME_CONDITIONS_BY_TYPE:
        return f"condition type '{type_name}' applies to Schedule and Webhook triggers only"
    if type_name in _UNSUPPORTED_CONDITIONS:
        known = ", ".join(cls.short_name for cls in EXECUTION_CONDITIONS)
        return f"condition type '{type_name}' is not supported by kestream yet ({known} are)"
    hint = did_you_mean(str(type_name), list(_CONDITIONS_BY_TYPE))
    return f"unknown condition type {describe_value(type_name)}{hint}"


def _nested_problems(exc: ValidationError, raw: Any, model: type[BaseModel]) -> str:
    """A nested model's errors as one line (``flows[0]: missing required property ...; ...``).

    The messages name their property already, so only the path above it is added; a failed
    check of a whole block (a value error) gets the block's full path instead.
    """
    parts: list[str] = []
    for error in exc.errors(include_url=False):
        path = resolve_loc(raw, error["loc"], missing_last=error["type"] == "missing")
        if error["type"] == "value_error":
            message = str(error["msg"]).removeprefix("Value error, ")
            where = format_path(path)
        else:
            message = describe_error(error, path, model if len(path) <= 1 else None)
            last = max((i for i, key in enumerate(path) if isinstance(key, str)), default=0)
            where = format_path(path[:last])
        line = f"{where}: {message}" if where else message
        if line not in parts:
            parts.append(line)
    return "; ".join(parts)


def _trigger_name(info: ValidationInfo) -> str:
    return f"trigger '{info.data.get('id', '?')}'"


def _check_condition(raw: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    """Refuse, with the trigger's name, a condition that kestream would not evaluate as written."""
    who = _trigger_name(info)
    on_time = info.data.get("type") not in FlowTrigger.type_names
    try:
        condition_model_for(raw, on_time=on_time)
    except ValidationError as exc:
        table = TIME_CONDITIONS_BY_TYPE if on_time else _CONDITIONS_BY_TYPE
        detail = _nested_problems(exc, raw, table[raw["type"]])
        raise ValueError(f"{who}: condition {describe_value(raw.get('type'))}: {detail}") from None
    except ValueError as exc:
        raise ValueError(f"{who}: {exc}") from None
    return raw


RawCondition = Annotated[dict[str, Any], AfterValidator(_check_condition)]


# -- Flow trigger preconditions -----------------------------------------------------------------


def _duration(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be an ISO-8601 duration such as PT1H")
    try:
        if parse_duration(value) <= timedelta(0):
            raise ValueError(f"'{value}' must be a positive duration")
    except DurationError as exc:
        raise ValueError(str(exc)) from None
    return value


def _time_of_day(value: Any) -> Any:
    if value is None:
        return None
    try:
        time.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{describe_value(value)} is not a time of day such as 09:00:00") from None
    return str(value)


PositiveDuration = Annotated[str, PlainValidator(_duration)]
TimeOfDay = Annotated[str, PlainValidator(_time_of_day)]


class TimeWindow(BaseModel):
    """When the preconditions must be met together (Kestra's ``timeWindow``, times in UTC).

    ``DURATION_WINDOW`` (default): consecutive windows of ``window`` (default one day) starting
    at midnight plus ``windowAdvance``. ``SLIDING_WINDOW``: the last ``window`` before now.
    ``DAILY_TIME_DEADLINE``: from midnight to ``deadline`` each day. ``DAILY_TIME_WINDOW``: from
    ``startTime`` to ``endTime`` each day.
    """

    model_config = _STRICT_FROZEN

    type: Literal[
        "DURATION_WINDOW", "SLIDING_WINDOW", "DAILY_TIME_DEADLINE", "DAILY_TIME_WINDOW"
    ] = "DURATION_WINDOW"
    window: PositiveDuration | None = None
    windowAdvance: PositiveDuration | None = None
    deadline: TimeOfDay | None = None
    startTime: TimeOfDay | None = None
    endTime: TimeOfDay | None = None

    @model_validator(mode="after")
    def _fits_its_type(self) -> TimeWindow:
        allowed = {
            "DURATION_WINDOW": {"window", "windowAdvance"},
            "SLIDING_WINDOW": {"window"},
            "DAILY_TIME_DEADLINE": {"deadline"},
            "DAILY_TIME_WINDOW": {"startTime", "endTime"},
        }[self.type]
        given = {
            name
            for name in ("window", "windowAdvance", "deadline", "startTime", "endTime")
            if getattr(self, name) is not None
        }
        extra = sorted(given - allowed)
        if extra:
            raise ValueError(f"'{extra[0]}' does not apply to a {self.type} time window")
        if self.type == "DAILY_TIME_DEADLINE" and self.deadline is None:
            raise ValueError("a DAILY_TIME_DEADLINE time window needs a 'deadline'")
        if self.type == "DAILY_TIME_WINDOW" and (self.startTime is None or self.endTime is None):
            raise ValueError("a DAILY_TIME_WINDOW time window needs 'startTime' and 'endTime'")
        return self


class UpstreamFlow(BaseModel):
    """One upstream flow whose execution must end (in one of ``states``, with ``labels``)."""

    model_config = _STRICT_FROZEN

    namespace: str
    flowId: str | None = None
    states: list[StateType] | None = None
    labels: dict[str, Any] | None = None


class PreconditionFilter(BaseModel):
    """One test on the ended execution: its ``field`` compared by ``type`` to ``value(s)``."""

    model_config = _STRICT_FROZEN

    field: Literal["FLOW_ID", "NAMESPACE", "STATE", "EXPRESSION"]
    type: Literal[
        "EQUAL_TO",
        "NOT_EQUAL_TO",
        "IN",
        "NOT_IN",
        "IS_TRUE",
        "IS_FALSE",
        "IS_NULL",
        "IS_NOT_NULL",
        "STARTS_WITH",
        "ENDS_WITH",
        "REGEX",
        "CONTAINS",
    ]
    value: str | None = None
    values: list[str] | None = None

    @model_validator(mode="after")
    def _has_its_operand(self) -> PreconditionFilter:
        if self.field == "EXPRESSION":
            # An EXPRESSION filter renders a Pebble template against the upstream execution;
            # the scheduler does not render templates, so refuse it rather than guess.
            raise ValueError("EXPRESSION filters are not supported by kestream yet")
        if self.type in ("IN", "NOT_IN") and self.values is None:
            raise ValueError(f"a {self.type} filter needs 'values'")
        no_operand = ("IS_TRUE", "IS_FALSE", "IS_NULL", "IS_NOT_NULL", "IN", "NOT_IN")
        if self.type not in no_operand and self.value is None:
            raise ValueError(f"a {self.type} filter needs a 'value'")
        if self.type == "REGEX":
            from kestream.expressions.errors import RenderError
            from kestream.expressions.patterns import compile_pattern

            try:
                compile_pattern(str(self.value))  # the engine that matches it later
            except RenderError as exc:
                raise ValueError(f"invalid REGEX {describe_value(self.value)}: {exc}") from None
        return self


class ExecutionFilter(BaseModel):
    """A named group of filters joined by ``operand`` (AND by default)."""

    model_config = _STRICT_FROZEN

    id: str = Field(min_length=1)
    operand: Literal["AND", "OR"] = "AND"
    filters: list[PreconditionFilter] = Field(min_length=1)


class Preconditions(BaseModel):
    """A Flow trigger's ``preconditions``: every listed flow and filter met within the window.

    Each entry of ``flows`` and of ``where`` is one precondition; the trigger fires when every
    one of them has been met by some ended execution inside the same ``timeWindow``. With
    ``resetOnSuccess`` (default) the record starts over after a fire.
    """

    model_config = _STRICT_FROZEN

    id: str = Field(pattern=TRIGGER_ID_PATTERN)
    flows: list[UpstreamFlow] = Field(default_factory=list)
    where: list[ExecutionFilter] = Field(default_factory=list)
    timeWindow: TimeWindow = Field(default_factory=TimeWindow)
    resetOnSuccess: bool = True

    @field_validator("flows", "where", mode="before")
    @classmethod
    def _empty_list(cls, value: Any) -> Any:
        return [] if value is None else value

    @model_validator(mode="after")
    def _not_empty(self) -> Preconditions:
        if not self.flows and not self.where:
            raise ValueError("preconditions need 'flows' or 'where'")
        return self

    def condition_ids(self) -> list[str]:
        """Stable names for each precondition, in order (Kestra's ``condition_N[_id]``)."""
        ids = [f"condition_{n}" for n in range(1, len(self.flows) + 1)]
        offset = len(self.flows)
        ids += [f"condition_{offset + n}_{w.id}" for n, w in enumerate(self.where, start=1)]
        return ids


class MultipleCondition(Condition):
    """Kestra's deprecated ``MultipleCondition`` on a Flow trigger: every one of ``conditions``
    (a map: its keys name them) held for some ended execution within one time window.

    It is the older form of ``preconditions``, and kestream evaluates it with the same window
    machinery (:mod:`kestream.scheduler.preconditions`): the window is ``timeWindow`` (or its
    older name ``sla``), else a ``DURATION_WINDOW`` of ``window`` (default one day) shifted by
    ``windowAdvance``, as Kestra maps the two deprecated properties. The inner conditions are
    the execution conditions a Flow trigger takes.
    """

    short_name: ClassVar[str] = "MultipleCondition"
    type_names: ClassVar[tuple[str, ...]] = (
        "io.kestra.plugin.core.condition.MultipleCondition",
        "io.kestra.core.models.conditions.types.MultipleCondition",
    )

    id: str = Field(pattern=TRIGGER_ID_PATTERN)
    conditions: dict[str, dict[str, Any]] = Field(min_length=1)
    window: PositiveDuration | None = None
    windowAdvance: str | None = None
    timeWindow: TimeWindow | None = Field(
        default=None, validation_alias=AliasChoices("timeWindow", "sla")
    )
    resetOnSuccess: bool = True

    _typed: dict[str, Condition] = PrivateAttr(default_factory=dict)

    @field_validator("windowAdvance")
    @classmethod
    def _advance(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            advance = parse_duration(value)
        except DurationError as exc:
            raise ValueError(str(exc)) from None
        if advance < timedelta(0):
            raise ValueError(f"'{value}' must not be negative")
        return value if advance else None  # P0D, Kestra's example, is no advance

    @model_validator(mode="after")
    def _one_window_and_known_conditions(self) -> MultipleCondition:
        if self.timeWindow is not None and (self.window or self.windowAdvance):
            raise ValueError("give 'timeWindow' or the older 'window'/'windowAdvance', not both")
        typed: dict[str, Condition] = {}
        for key, raw in self.conditions.items():
            if raw.get("type") in self.type_names:
                raise ValueError(f"conditions.{key}: a MultipleCondition cannot nest another")
            try:
                typed[key] = condition_model_for(raw)
            except ValidationError as exc:
                cls = _CONDITIONS_BY_TYPE[raw["type"]]
                raise ValueError(f"conditions.{key}: {_nested_problems(exc, raw, cls)}") from None
            except ValueError as exc:
                raise ValueError(f"conditions.{key}: {exc}") from None
        self._typed = typed
        return self

    @property
    def typed_conditions(self) -> dict[str, Condition]:
        """The inner conditions, typed, by their key."""
        return self._typed

    @property
    def time_window(self) -> TimeWindow:
        """The window the conditions must all hold within (class docs)."""
        if self.timeWindow is not None:
            return self.timeWindow
        return TimeWindow(window=self.window or "P1D", windowAdvance=self.windowAdvance)


# A Flow trigger condition too, windowed: the scheduler keeps its state (``window_specs``).
_CONDITIONS_BY_TYPE.update(dict.fromkeys(MultipleCondition.type_names, MultipleCondition))


def _check_preconditions(raw: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        Preconditions.model_validate(raw)
    except ValidationError as exc:
        detail = _nested_problems(exc, raw, Preconditions)
        raise ValueError(f"{_trigger_name(info)}: preconditions: {detail}") from None
    return raw


# -- the triggers -------------------------------------------------------------------------------


class Trigger(BaseModel):
    """What every trigger declares. ``conditions`` stay raw, checked by :func:`_check_condition`."""

    model_config = _STRICT_FROZEN

    type_names: ClassVar[tuple[str, ...]] = ()

    id: str = Field(pattern=TRIGGER_ID_PATTERN)
    type: str
    description: str | None = None
    disabled: bool = False
    conditions: list[RawCondition] = Field(default_factory=list)
    stopAfter: list[StateType] | None = None
    workerGroup: dict[str, Any] | None = None
    logLevel: LogLevel | None = None
    minLogLevel: LogLevel | None = None
    logToFile: bool = False

    _condition_models: tuple[Condition, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _type_conditions(self) -> Trigger:
        # Built with the trigger (not on first use) so that equal triggers stay equal.
        on_time = not isinstance(self, FlowTrigger)
        self._condition_models = tuple(
            condition_model_for(c, on_time=on_time) for c in self.conditions
        )
        return self

    @property
    def condition_models(self) -> tuple[Condition, ...]:
        """The typed form of ``conditions``, in order."""
        return self._condition_models


_BACKFILL_HINT = (
    " (deprecated in Kestra): set a backfill through the triggers API instead, "
    "PUT /api/v1/{tenant}/triggers with the trigger and a 'backfill' "
    "(start, end, inputs, labels)"
)


class ScheduleTrigger(Trigger):
    """Start an execution on a cron schedule.

    ``timezone`` None means UTC in kestream (Kestra uses the server's zone; UTC makes a schedule
    mean the same on every host). ``backfill`` and ``scheduleConditions`` (both deprecated in
    Kestra) are refused: the scheduler does not run them. Kestra 1.x sets a backfill through the
    triggers API (or its UI), which kestream serves; the refusal names that route.
    """

    type_names: ClassVar[tuple[str, ...]] = (
        "io.kestra.plugin.core.trigger.Schedule",
        "io.kestra.core.models.triggers.types.Schedule",
    )

    withSeconds: bool = False
    cron: str
    timezone: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    backfill: dict[str, Any] | None = None
    lateMaximumDelay: DurationText | None = None
    recoverMissedSchedules: Literal["ALL", "LAST", "NONE"] | None = None
    scheduleConditions: list[dict[str, Any]] | None = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str, info: Any) -> str:
        return check_cron(value, with_seconds=bool(info.data.get("withSeconds")))

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            hint = "use an IANA name such as Europe/Paris"
            raise ValueError(f"unknown time zone '{value}' ({hint})") from None
        return value

    @field_validator("backfill", "scheduleConditions")
    @classmethod
    def _not_run(cls, value: Any, info: ValidationInfo) -> Any:
        if value:
            name = info.field_name
            hint = _BACKFILL_HINT if name == "backfill" else ""
            raise ValueError(f"{_trigger_name(info)}: '{name}' is not supported by kestream{hint}")
        return value


class WebhookTrigger(Trigger):
    """Start an execution when ``/api/v1/executions/webhook/{namespace}/{flowId}/{key}`` is hit."""

    type_names: ClassVar[tuple[str, ...]] = (
        "io.kestra.plugin.core.trigger.Webhook",
        "io.kestra.core.models.triggers.types.Webhook",
    )

    key: str = Field(min_length=1)
    inputs: dict[str, Any] = Field(default_factory=dict)
    #: Answer once the execution ends (or pauses), capped by ``KESTREAM_API_WAIT_MAX_S``.
    wait: bool = False
    #: With ``wait``: answer with the flow's outputs only, as ``responseContentType``.
    returnOutputs: bool = False
    responseContentType: str = "application/json"


class FlowTrigger(Trigger):
    """Start an execution when other executions end (``states``, ``conditions``, ``preconditions``).

    ``states`` None means Kestra's default: every terminal state and PAUSED.
    """

    type_names: ClassVar[tuple[str, ...]] = (
        "io.kestra.plugin.core.trigger.Flow",
        "io.kestra.core.models.triggers.types.Flow",
    )

    inputs: dict[str, Any] = Field(default_factory=dict)
    preconditions: Annotated[dict[str, Any] | None, AfterValidator(_check_preconditions)] = None
    states: list[StateType] | None = None

    _precondition_model: Preconditions | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _type_preconditions(self) -> FlowTrigger:
        if self.preconditions is not None:
            self._precondition_model = Preconditions.model_validate(self.preconditions)
        return self

    @property
    def precondition_model(self) -> Preconditions | None:
        """The typed form of ``preconditions`` (None when the trigger has none)."""
        return self._precondition_model

    @property
    def multiple_conditions(self) -> tuple[MultipleCondition, ...]:
        """The MultipleCondition entries of ``conditions``: windowed, like ``preconditions``."""
        return tuple(c for c in self.condition_models if isinstance(c, MultipleCondition))

    @model_validator(mode="after")
    def _distinct_window_ids(self) -> FlowTrigger:
        # Each window is kept under its id: two of one trigger must not share one.
        ids = [c.id for c in self.multiple_conditions]
        if self.preconditions is not None:
            ids.append(str(self.preconditions.get("id")))
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(
                f"trigger '{self.id}': id '{twice[0]}' names two windows (preconditions and "
                "each MultipleCondition need ids of their own)"
            )
        return self


TRIGGER_CLASSES: tuple[type[Trigger], ...] = (ScheduleTrigger, WebhookTrigger, FlowTrigger)
_TRIGGERS_BY_TYPE = {name: cls for cls in TRIGGER_CLASSES for name in cls.type_names}


def trigger_class_for(type_name: Any) -> type[Trigger] | None:
    """The trigger model for a ``type``, or None when kestream does not know it."""
    return _TRIGGERS_BY_TYPE.get(type_name) if isinstance(type_name, str) else None


def unknown_trigger_message(type_name: Any) -> str:
    hint = did_you_mean(str(type_name), list(_TRIGGERS_BY_TYPE))
    if not hint:
        hint = " (kestream knows Schedule, Webhook and Flow)"
    return f"unknown trigger type {describe_value(type_name)}{hint}"


def trigger_model_for(data: Any) -> Trigger:
    """Build the trigger model named by ``data['type']`` (a pydantic validator for Flow)."""
    if isinstance(data, Trigger):
        return data
    if not isinstance(data, Mapping):
        raise ValueError(_not_a_mapping("a trigger", data))
    cls = trigger_class_for(data.get("type"))
    if cls is None:
        raise ValueError(unknown_trigger_message(data.get("type")))
    return cls.model_validate(data)


AnyTrigger = Annotated[SerializeAsAny[Trigger], PlainValidator(trigger_model_for)]


# ---------------------------------------------------------------------------------------------
# other flow-level blocks
# ---------------------------------------------------------------------------------------------


class Concurrency(BaseModel):
    """At most ``limit`` running executions of the flow; ``behavior`` for the next one."""

    model_config = _STRICT_FROZEN

    limit: int = Field(ge=1)
    behavior: Literal["QUEUE", "CANCEL", "FAIL"] = "QUEUE"


class Sla(BaseModel):
    """One service-level agreement (Kestra 0.20+, beta): a maximum duration or an assertion."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        coerce_numbers_to_str=True,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    id: str = Field(pattern=TRIGGER_ID_PATTERN)
    type: Literal["MAX_DURATION", "EXECUTION_ASSERTION"]
    behavior: Literal["FAIL", "CANCEL", "NONE"] = "FAIL"
    #: Added to the execution when the SLA is violated (a map, or a list of ``{key, value}``).
    labels: dict[str, str] = Field(default_factory=dict)
    duration: DurationText | None = None
    assertion: str | None = Field(default=None, alias="assert")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> dict[str, str]:
        return normalize_labels(value)

    @field_validator("assertion")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        from kestream.expressions import validate_template

        if value is not None and (problem := validate_template(value)) is not None:
            raise ValueError(f"'assert' is not a valid expression: {problem}")
        return value

    @model_validator(mode="after")
    def _needs_its_property(self) -> Sla:
        if self.type == "MAX_DURATION":
            if self.duration is None:
                raise ValueError("a MAX_DURATION SLA needs a 'duration'")
            parse_duration(self.duration)  # a literal: the timer is set before anything renders
        if self.type == "EXECUTION_ASSERTION" and self.assertion is None:
            raise ValueError("an EXECUTION_ASSERTION SLA needs an 'assert' expression")
        return self


def _not_a_mapping(what: str, value: Any) -> str:
    return f"{what} must be a mapping with 'id' and 'type', got {describe_value(value)}"


def _label_text(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise ValueError(f"label '{key}' must have a text value, got {describe_value(value)}")


def normalize_labels(value: Any) -> dict[str, str]:
    """Kestra takes labels as a map or as a list of ``{key, value}``; both become a map of text."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): _label_text(str(k), v) for k, v in value.items()}
    if not isinstance(value, list):
        shape = "labels must be a map or a list of {key, value}"
        raise ValueError(f"{shape}, got {describe_value(value)}")
    labels: dict[str, str] = {}
    for item in value:
        if not isinstance(item, Mapping) or set(item) != {"key", "value"}:
            shape = "each label of the list must be {key, value}"
            raise ValueError(f"{shape}, got {describe_value(item)}")
        labels[str(item["key"])] = _label_text(str(item["key"]), item["value"])
    return labels


def task_to_data(task: Task, **options: Any) -> dict[str, Any]:
    """A task as plain data that validates back to an equal task (nested tasks included).

    Nested task lists are typed with the base :class:`Task`, so they are dumped here slot by
    slot through each task's own class. ``options`` are ``model_dump`` options (``mode``,
    ``exclude_none``, ``exclude_defaults``, ``exclude_unset``).
    """
    slots = task_slots(type(task))
    data = task.model_dump(by_alias=True, exclude={s.field_name for s in slots}, **options)
    for slot in slots:
        value = getattr(task, slot.field_name)
        if _excluded(task, slot.field_name, value, options):
            continue
        if value is None:
            data[slot.key] = None
        elif slot.kind == "list":
            data[slot.key] = [task_to_data(child, **options) for child in value]
        elif slot.kind == "nodes":
            data[slot.key] = [
                {
                    **node.model_dump(by_alias=True, exclude={"task"}, **options),
                    "task": task_to_data(node.task, **options),
                }
                for node in value
            ]
        else:
            data[slot.key] = {
                case: [task_to_data(child, **options) for child in branch]
                for case, branch in value.items()
            }
    return data


def _excluded(task: Task, name: str, value: Any, options: Mapping[str, Any]) -> bool:
    if options.get("exclude_unset") and name not in task.model_fields_set:
        return True
    if options.get("exclude_none") and value is None:
        return True
    default = type(task).model_fields[name].get_default(call_default_factory=True)
    return bool(options.get("exclude_defaults")) and value == default


# ---------------------------------------------------------------------------------------------
# the flow
# ---------------------------------------------------------------------------------------------


class Flow(BaseModel):
    """A validated flow. Frozen: executors share one instance per revision.

    ``source`` is the YAML text the flow came from; it is not part of equality or of
    ``model_dump`` (a dump validates back to an equal flow).
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        coerce_numbers_to_str=True,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    id: str = Field(pattern=FLOW_ID_PATTERN, max_length=100)
    namespace: str = Field(pattern=NAMESPACE_PATTERN, max_length=150)
    revision: int | None = Field(default=None, ge=1)
    tenantId: str | None = Field(default=None, pattern=TENANT_PATTERN)
    description: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    inputs: list[AnyInput] = Field(default_factory=list)
    outputs: list[FlowOutput] = Field(default_factory=list)
    variables: dict[str, Any] = Field(default_factory=dict)
    tasks: list[AnyTask] = Field(min_length=1)
    errors: list[AnyTask] = Field(default_factory=list)
    finally_: list[AnyTask] = Field(default_factory=list, alias="finally")
    afterExecution: list[AnyTask] = Field(default_factory=list)
    triggers: list[AnyTrigger] = Field(default_factory=list)
    pluginDefaults: list[PluginDefault] = Field(default_factory=list)
    disabled: bool = False
    deleted: bool = False
    concurrency: Concurrency | None = None
    retry: Retry | None = None
    sla: list[Sla] = Field(default_factory=list)
    source: str = Field(default="", exclude=True, repr=False)

    _task_index: dict[str, Task] | None = PrivateAttr(default=None)
    _warnings: tuple[FlowProblem, ...] = PrivateAttr(default=())

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        """Drop empty optional blocks, fold ``taskDefaults`` in, apply plugin defaults."""
        if not isinstance(data, Mapping):
            return data
        values = {k: v for k, v in data.items() if not (v is None and k in _OPTIONAL_CONTAINERS)}
        if "tasks" in values and values["tasks"] is None:
            values["tasks"] = []  # `tasks:` with nothing under it: reported as empty
        older = values.pop("taskDefaults", None)
        if isinstance(older, list):
            current = values.get("pluginDefaults")
            values["pluginDefaults"] = [*(current if isinstance(current, list) else []), *older]
        defaults = _valid_defaults(values.get("pluginDefaults"))
        for key in ("tasks", "errors", "finally", "finally_", "afterExecution"):
            if key in values:
                values[key] = apply_plugin_defaults(values[key], defaults)
        if isinstance(values.get("triggers"), list):
            values["triggers"] = [
                merge_defaults(dict(t), defaults) if isinstance(t, Mapping) else t
                for t in values["triggers"]
            ]
        return values

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> dict[str, str]:
        return normalize_labels(value)

    @field_serializer("tasks", "errors", "finally_", "afterExecution")
    def _dump_tasks(self, tasks: list[Task], info: FieldSerializationInfo) -> list[dict[str, Any]]:
        options = {
            "mode": info.mode,
            "exclude_none": info.exclude_none,
            "exclude_defaults": info.exclude_defaults,
            "exclude_unset": info.exclude_unset,
        }
        return [task_to_data(task, **options) for task in tasks]

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        # A field serializer hides the field's default from pydantic: honour the exclusions here.
        data = handler(self)
        task_lists = {"errors": "errors", "finally_": "finally", "afterExecution": "afterExecution"}
        for name, key in task_lists.items():
            unset = info.exclude_unset and name not in self.model_fields_set
            if key in data and (unset or (info.exclude_defaults and not getattr(self, name))):
                del data[key]
        return data

    @property
    def uid(self) -> str:
        """``namespace/id``: the flow's key in the flows table."""
        return f"{self.namespace}/{self.id}"

    @property
    def warnings(self) -> tuple[FlowProblem, ...]:
        """Problems found by :func:`parse_flow` that do not stop the flow (expression syntax)."""
        return self._warnings

    def iter_tasks(self) -> Iterator[Task]:
        """Every task at any depth, depth-first: tasks, errors, finally, then afterExecution."""
        stack = list(reversed([*self.tasks, *self.errors, *self.finally_, *self.afterExecution]))
        while stack:
            task = stack.pop()
            yield task
            stack.extend(reversed(task.children()))

    def task_index(self) -> dict[str, Task]:
        """Every task at any depth (``errors`` branches included) by id; built once, shared.

        The returned dict is the cached one: read it, do not change it.
        """
        if self._task_index is None:
            index: dict[str, Task] = {}
            for task in self.iter_tasks():
                index.setdefault(task.id, task)
            self._task_index = index
        return self._task_index

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Flow:
        """A copy; the task index is rebuilt on demand when ``update`` changes anything."""
        copied = super().model_copy(update=update, deep=deep)
        if update:
            copied._task_index = None
        return copied

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Flow):
            return NotImplemented
        mine = {k: v for k, v in self.__dict__.items() if k != "source"}
        theirs = {k: v for k, v in other.__dict__.items() if k != "source"}
        return mine == theirs

    def __hash__(self) -> int:
        return hash((self.namespace, self.id, self.revision))


# ---------------------------------------------------------------------------------------------
# parse_flow / check_flow
# ---------------------------------------------------------------------------------------------


def parse_flow(
    yaml_text: str, *, source_name: str = "<flow>", strict_expressions: bool = True
) -> Flow:
    """Parse and validate a flow's YAML; raise FlowValidationError listing every error.

    With ``strict_expressions=False``, expression syntax problems are warnings (kept on
    ``Flow.warnings``) rather than errors, as in Kestra 0.21, which accepts such flows and fails
    the task at run time.
    """
    flow, sink = _check(yaml_text, source_name, strict_expressions)
    if flow is None or sink.errors:
        raise FlowValidationError(_ordered(sink.errors), flow=sink.flow, warnings=sink.warnings)
    flow._warnings = tuple(_ordered(sink.warnings))
    return flow


def check_flow(
    yaml_text: str, *, source_name: str = "<flow>", strict_expressions: bool = True
) -> list[FlowProblem]:
    """Every problem of a flow's YAML (errors and warnings), in line order; empty when valid."""
    return _ordered(_check(yaml_text, source_name, strict_expressions)[1].problems)


def _ordered(problems: Sequence[FlowProblem]) -> list[FlowProblem]:
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0))


def _check(yaml_text: str, source_name: str, strict: bool) -> tuple[Flow | None, ProblemSink]:
    try:
        document = load_yaml(yaml_text)
    except YamlSyntaxError as exc:
        sink = ProblemSink(source_name, SourceMap(), strict)
        sink.add((), exc.message, line=exc.line)
        return None, sink
    return _FlowChecker(document, source_name, strict).run(yaml_text)


def _flow_name(data: Any, source_name: str) -> str:
    if isinstance(data, Mapping):
        namespace, flow_id = data.get("namespace"), data.get("id")
        if isinstance(namespace, str) and isinstance(flow_id, str):
            return f"{namespace}.{flow_id}"
    return source_name


class _FlowChecker:
    """One run of the flow checks over a loaded YAML document."""

    def __init__(self, document: YamlDocument, source_name: str, strict: bool) -> None:
        self.data = document.data
        self.sink = ProblemSink(_flow_name(self.data, source_name), document.source_map, strict)
        for duplicate in document.duplicate_keys:
            message = (
                f"duplicate key '{duplicate.path[-1]}' (first given at line"
                f" {duplicate.first_line}); only the last value is used"
            )
            self.sink.add(duplicate.path, message, line=duplicate.line)

    def run(self, yaml_text: str) -> tuple[Flow | None, ProblemSink]:
        if not isinstance(self.data, dict):
            shape = "a flow must be a mapping with 'id', 'namespace' and 'tasks'"
            self.sink.add((), f"{shape}, got {describe_value(self.data)}")
            return None, self.sink
        values = self._reserved(dict(self.data))
        defaults = self._plugin_defaults(values)
        builder = TaskBuilder(self.sink, lambda raw: merge_defaults(raw, defaults))
        for key in TASK_LISTS:
            if key in values:
                values[key] = builder.build_list(values[key], (key,))
        builder.check_duplicate_ids()
        values["inputs"] = self._inputs(values.get("inputs"))
        values["outputs"] = self._outputs(values.get("outputs"))
        values["triggers"] = self._triggers(values.get("triggers"), defaults)
        values["source"] = yaml_text
        flow = self._validate(values)
        if flow is not None:
            self._check_recursion(flow, builder)
        return flow, self.sink

    def _reserved(self, values: dict[str, Any]) -> dict[str, Any]:
        """Refuse the keys the model has but a flow may not set, and the unsupported ones."""
        for key in ("source", "finally_"):
            if key in values:
                self.sink.add((key,), f"unknown property '{key}'")
                values.pop(key)
        if "listeners" in values:
            message = (
                "'listeners' (deprecated in Kestra) are not supported by kestream;"
                " use 'errors' or a Flow trigger instead"
            )
            self.sink.add(("listeners",), message)
            values.pop("listeners")
        return values

    def _plugin_defaults(self, values: dict[str, Any]) -> list[PluginDefault]:
        defaults: list[PluginDefault] = []
        for key in ("pluginDefaults", "taskDefaults"):
            raw = values.pop(key, None)
            if raw is None:
                continue
            if not isinstance(raw, list):
                self.sink.add((key,), f"'{key}' must be a list, got {describe_value(raw)}")
                continue
            for index, item in enumerate(raw):
                try:
                    defaults.append(PluginDefault.model_validate(item))
                except ValidationError as exc:
                    self.sink.add_validation_error(exc, (key, index), item, model=PluginDefault)
        values["pluginDefaults"] = defaults
        return defaults

    def _inputs(self, raw: Any) -> Any:
        if not isinstance(raw, list):
            return raw
        built = [self._input(item, ("inputs", index)) for index, item in enumerate(raw)]
        self._unique_ids("input", raw, ("inputs",))
        models = [model for model in built if model is not None]
        if len(models) == len(built):  # names are checked once every input is understood
            for index, message in dependency_problems(models):
                self.sink.add(("inputs", index, "dependsOn"), message)
        return models

    def _input(self, raw: Any, loc: Path) -> Input | None:
        if not isinstance(raw, Mapping):
            self.sink.add(loc, _not_a_mapping("an input", raw))
            return None
        if raw.get("type") is None:
            self.sink.add((*loc, "type"), "missing required property 'type'")
            return None
        cls = input_class_for(raw["type"])
        if cls is None:
            self.sink.add((*loc, "type"), unknown_input_type_message(raw["type"]))
            return None
        try:
            model = cls.model_validate(raw)
        except ValidationError as exc:
            self.sink.add_validation_error(exc, loc, raw, model=cls)
            return None
        problems = model.definition_problems()
        for name, message in problems:
            self.sink.add((*loc, name), f"input '{model.id}': {message}")
        return None if problems else model

    def _outputs(self, raw: Any) -> Any:
        if not isinstance(raw, list):
            return raw
        built = []
        for index, item in enumerate(raw):
            loc: Path = ("outputs", index)
            try:
                built.append(FlowOutput.model_validate(item))
            except ValidationError as exc:
                self.sink.add_validation_error(exc, loc, item, model=FlowOutput)
            if isinstance(item, Mapping):
                self.sink.check_templates(item.get("value"), (*loc, "value"))
        self._unique_ids("output", raw, ("outputs",))
        return built

    def _triggers(self, raw: Any, defaults: Sequence[PluginDefault]) -> Any:
        if not isinstance(raw, list):
            return raw
        built = []
        for index, item in enumerate(raw):
            trigger = self._trigger(item, ("triggers", index), defaults)
            if trigger is not None:
                built.append(trigger)
        self._unique_ids("trigger", raw, ("triggers",))
        return built

    def _trigger(self, raw: Any, loc: Path, defaults: Sequence[PluginDefault]) -> Trigger | None:
        if not isinstance(raw, Mapping):
            self.sink.add(loc, _not_a_mapping("a trigger", raw))
            return None
        data = merge_defaults(dict(raw), defaults)
        cls = trigger_class_for(data.get("type"))
        if cls is None:
            message = "missing required property 'type'"
            if data.get("type") is not None:
                message = unknown_trigger_message(data.get("type"))
            self.sink.add((*loc, "type"), message)
            return None
        self.sink.check_templates(data.get("inputs"), (*loc, "inputs"))
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            self.sink.add_validation_error(exc, loc, data, model=cls)
            return None

    def _unique_ids(self, what: str, raw: list[Any], base: Path) -> None:
        first: dict[str, int] = {}
        for index, item in enumerate(raw):
            item_id = item.get("id") if isinstance(item, Mapping) else None
            if item_id is None and isinstance(item, Mapping):
                item_id = item.get("name")
            if not isinstance(item_id, str):
                continue
            if item_id in first:
                where = self.sink.source_map.line((*base, first[item_id]))
                message = f"duplicate {what} id '{item_id}' (first at line {where})"
                self.sink.add((*base, index), message)
            else:
                first[item_id] = index

    def _validate(self, values: dict[str, Any]) -> Flow | None:
        try:
            return Flow.model_validate(values)
        except ValidationError as exc:
            self.sink.add_validation_error(exc, (), values, model=Flow)
            return None

    def _check_recursion(self, flow: Flow, builder: TaskBuilder) -> None:
        """A Subflow that starts its own flow would never end (Kestra refuses it too)."""
        for task in flow.iter_tasks():
            if not isinstance(task, Subflow):
                continue
            if (task.namespace, task.flowId) == (flow.namespace, flow.id):
                uses = builder.seen_ids.get(task.id)
                loc = uses[0].loc if uses else ("tasks",)
                message = f"recursive call: Subflow task '{task.id}' starts its own flow {flow.uid}"
                self.sink.add(loc, message, task_id=task.id)
