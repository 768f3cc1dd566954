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
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import (
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
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

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
    describe_value,
    did_you_mean,
    replace_children,
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
NAMESPACE_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
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
    """A raw task list with defaults applied to every task at any depth (built tasks kept)."""
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


class Trigger(BaseModel):
    """What every trigger declares. The scheduler evaluates ``conditions``; they stay raw here."""

    model_config = _STRICT_FROZEN

    type_names: ClassVar[tuple[str, ...]] = ()

    id: str = Field(pattern=TRIGGER_ID_PATTERN)
    type: str
    description: str | None = None
    disabled: bool = False
    conditions: list[dict[str, Any]] = Field(default_factory=list)
    stopAfter: list[StateType] | None = None
    workerGroup: dict[str, Any] | None = None
    logLevel: LogLevel | None = None
    minLogLevel: LogLevel | None = None
    logToFile: bool = False


class ScheduleTrigger(Trigger):
    """Start an execution on a cron schedule (``timezone`` None means the server's zone)."""

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


class WebhookTrigger(Trigger):
    """Start an execution when ``/api/v1/executions/webhook/{namespace}/{flowId}/{key}`` is hit."""

    type_names: ClassVar[tuple[str, ...]] = (
        "io.kestra.plugin.core.trigger.Webhook",
        "io.kestra.core.models.triggers.types.Webhook",
    )

    key: str = Field(min_length=1)
    inputs: dict[str, Any] = Field(default_factory=dict)


class FlowTrigger(Trigger):
    """Start an execution when other executions end (``conditions``/``preconditions``)."""

    type_names: ClassVar[tuple[str, ...]] = (
        "io.kestra.plugin.core.trigger.Flow",
        "io.kestra.core.models.triggers.types.Flow",
    )

    inputs: dict[str, Any] = Field(default_factory=dict)
    preconditions: dict[str, Any] | None = None
    states: list[StateType] | None = None


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
    labels: dict[str, Any] | list[dict[str, Any]] | None = None
    duration: DurationText | None = None
    assertion: str | None = Field(default=None, alias="assert")

    @model_validator(mode="after")
    def _needs_its_property(self) -> Sla:
        if self.type == "MAX_DURATION" and self.duration is None:
            raise ValueError("a MAX_DURATION SLA needs a 'duration'")
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
        for key in ("finally", "afterExecution", "concurrency", "sla"):
            if values.get(key):
                # Parsed by the model, but the executor does not enforce these blocks yet:
                # refuse them rather than accept a flow whose cleanup or limits silently vanish.
                message = f"'{key}' is not supported by kestream yet"
                self.sink.add((key,), message)
                values.pop(key)
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
        return [model for model in built if model is not None]

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
