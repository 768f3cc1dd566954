"""Tasks written in Python: ``@kestream.task`` on a function, or a :class:`PythonTask` subclass.

Both forms become the same thing for the engine: a :class:`PluginTask` class (a runnable task)
registered under the type name, whose properties are the function's parameters or the class's
fields. At deploy time every property is accepted as written, and a value with no template in it is
already checked against its type hint, so a typo fails the flow with the task id and the line as for
kestream's own tasks; every property is dynamic, so the executor renders it; after rendering, the
worker validates and coerces the values with the type hints (a rendered ``"20"`` becomes ``20``) and
only then calls the user's code. The user's code is called in one place, :meth:`TaskSpec.call`.
Blocking code runs in one of the worker's processes (:mod:`kestream.worker.pool`), where a kill can
stop it; the task instance travels there pickled, rebuilt from its type name (its class is made at
run time, so it has no importable name).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PydanticUserError,
    TypeAdapter,
    ValidationError,
)
from pydantic import create_model as pydantic_model
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, PydanticSerializationError, to_jsonable_python

from kestream.expressions import is_template
from kestream.models.state import StateType
from kestream.models.validation import describe_error, format_path, resolve_loc
from kestream.plugins.context import RunContext
from kestream.tasks.base import RunInfo, RunnableTask, Task, TaskError, TaskOutcome
from kestream.tasks.registry import register, task_class

__all__ = ["PluginTask", "PythonTask", "TaskSpec", "task"]

F = TypeVar("F", bound=Callable[..., Any])

#: Properties every task has (``id``, ``retry``, ``timeout``...): a Python task cannot reuse them.
_COMMON = frozenset(info.alias or name for name, info in Task.model_fields.items())


class PythonTask(BaseModel):
    """Base of the class form: pydantic fields are the properties, :meth:`execute` the body.

    A subclass that sets ``type_name`` is registered when it is defined::

        class Greet(kestream.PythonTask):
            type_name = "acme.tasks.Greet"
            aliases = ("acme.Greet",)

            name: str
            times: int = 1

            def execute(self, run: kestream.RunContext) -> dict[str, Any]:
                run.logger.info("greeting %s", self.name)
                return {"text": " ".join([f"Hello {self.name}"] * self.times)}

    ``execute`` may be ``async``; it returns a mapping, a pydantic model or None (no outputs).
    Field aliases are the YAML keys (``Field(alias="messageText")``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    type_name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    #: ``"thread"`` runs a blocking ``execute`` in a thread of the worker, sharing its memory;
    #: a kill cannot stop it there. The default, ``"process"``, runs it in a worker process.
    isolation: ClassVar[Literal["process", "thread"]] = "process"

    def execute(self, run: RunContext) -> Mapping[str, Any] | BaseModel | None:
        raise NotImplementedError(f"{type(self).__name__} has no execute()")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "type_name" in cls.__dict__:  # an intermediate base without a type is not a task
            register(build_task_class(TaskSpec.for_class(cls)))


@dataclass(frozen=True, slots=True)
class Property:
    """One property of a Python task: where the task holds its raw value, its YAML key, whether
    it is required, and its type check."""

    field: str  # ``p0``, ``p1``...: never clashes with a name of Task or of pydantic
    key: str
    required: bool
    check: TypeAdapter[Any]


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """Everything kestream needs to know about one Python task, whichever form declared it.

    ``model`` validates and coerces the rendered properties (keyed by YAML key); ``invoke`` calls
    the user's code with the validated model and the run context.
    """

    type_name: str
    aliases: tuple[str, ...]
    module: str
    origin: str
    description: str | None
    model: type[BaseModel]
    properties: tuple[Property, ...]
    is_async: bool
    invoke: Callable[[BaseModel, RunContext], Any]
    isolation: Literal["process", "thread"] = "process"

    @classmethod
    def for_function(
        cls,
        fn: Callable[..., Any],
        type_name: str,
        aliases: tuple[str, ...],
        isolation: Literal["process", "thread"] = "process",
    ) -> TaskSpec:
        fields, context_param = _signature_fields(fn, type_name)
        model = pydantic_model(
            f"{fn.__name__}_properties",
            __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
            **fields,
        )
        names = {field: info.alias or field for field, info in model.model_fields.items()}

        def invoke(values: BaseModel, run: RunContext) -> Any:
            kwargs = {names[field]: getattr(values, field) for field in names}
            if context_param is not None:
                kwargs[context_param] = run
            return fn(**kwargs)

        return cls(
            type_name, aliases, fn.__module__, _origin(fn), inspect.getdoc(fn), model,
            _properties(model, type_name), inspect.iscoroutinefunction(fn), invoke, isolation,
        )  # fmt: skip

    @classmethod
    def for_class(cls, model: type[PythonTask]) -> TaskSpec:
        def invoke(values: BaseModel, run: RunContext) -> Any:
            assert isinstance(values, PythonTask)
            return values.execute(run)

        is_async = inspect.iscoroutinefunction(model.execute)
        return cls(
            model.type_name, tuple(model.aliases), model.__module__, _origin(model),
            inspect.getdoc(model), model,
            _properties(model, model.type_name), is_async, invoke, model.isolation,
        )  # fmt: skip

    def values(self, task_id: str, props: Mapping[str, Any]) -> BaseModel:
        """The rendered properties, validated and coerced by the type hints."""
        data = {prop.key: props[prop.field] for prop in self.properties if prop.field in props}
        try:
            return self.model.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(_messages(exc, data, self.model))
            raise TaskError(f"Task '{task_id}' ({self.type_name}): {problems}") from None

    def call(self, values: BaseModel, run: RunContext) -> Any:
        """The one place the user's code is called (a coroutine for async tasks)."""
        return self.invoke(values, run)


class PluginTask(RunnableTask):
    """The engine's side of a Python task; one subclass per registered type (see ``spec``).

    Its fields hold the properties as written in the flow (templates unrendered); every one of
    them is dynamic.
    """

    spec: ClassVar[TaskSpec]
    origin: ClassVar[str]

    def execute(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        values = self.spec.values(self.id, props)
        with _attempt(run) as context:
            return self._outcome(self.spec.call(values, context))

    async def arun(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        if not self.spec.is_async:
            return self.execute(props, run)
        values = self.spec.values(self.id, props)
        with _attempt(run) as context:
            result: Awaitable[Any] = self.spec.call(values, context)
            return self._outcome(await result)

    def _outcome(self, result: Any) -> TaskOutcome:
        return TaskOutcome(StateType.SUCCESS, outputs=task_outputs(self.id, result))

    def __reduce__(self) -> tuple[Callable[[str, dict[str, Any]], PluginTask], tuple[Any, ...]]:
        """Pickled as its type name and properties: a worker process rebuilds it from the
        registry it inherited."""
        return _rebuild, (self.type_name, self.model_dump(by_alias=True, exclude_unset=True))


def _rebuild(type_name: str, data: dict[str, Any]) -> PluginTask:
    cls = task_class(type_name)
    if cls is None or not issubclass(cls, PluginTask):
        raise TaskError(f"task type '{type_name}' is not known in this process")
    return cls.model_validate(data)


@contextmanager
def _attempt(run: RunInfo) -> Iterator[RunContext]:
    """The run context of one attempt; the working directory goes with the attempt, also when it
    is cancelled. (The runner logs an unexpected error's traceback: kestream.worker.blocking.)"""
    context = RunContext(run)
    try:
        yield context
    finally:
        context.close()


def task_outputs(task_id: str, result: Any) -> dict[str, Any] | None:
    """What a Python task returned, as task-run outputs (JSON values); None or empty: none."""
    if result is None:
        return None
    try:
        if isinstance(result, BaseModel):
            outputs = result.model_dump(mode="json", by_alias=True)
        elif isinstance(result, Mapping):
            outputs = to_jsonable_python(dict(result))
        else:
            raise TaskError(
                f"Task '{task_id}' returned {type(result).__name__}: a Python task returns a "
                "mapping, a pydantic model or None"
            )
    except PydanticSerializationError as exc:
        raise TaskError(f"Task '{task_id}' outputs cannot be stored: {exc}") from None
    return outputs or None


def build_task_class(spec: TaskSpec) -> type[PluginTask]:
    """The runnable task class of ``spec``: one raw-value field per property, all dynamic."""
    if spec.isolation not in ("process", "thread"):
        raise TypeError(
            f"task {spec.type_name}: isolation is 'process' or 'thread', not {spec.isolation!r}"
        )
    fields: dict[str, Any] = {}
    for prop in spec.properties:
        checked = Annotated[Any, AfterValidator(_literal_check(prop.check))]
        default = Field(alias=prop.key) if prop.required else Field(None, alias=prop.key)
        fields[prop.field] = (checked, default)
    name = spec.type_name.rsplit(".", 1)[-1] or "PluginTask"
    cls = pydantic_model(name, __base__=PluginTask, __module__=spec.module, **fields)
    cls.type_name = spec.type_name
    cls.aliases = spec.aliases
    cls.dynamic = tuple(prop.field for prop in spec.properties)
    cls.is_async = spec.is_async
    cls.isolation = spec.isolation
    cls.spec = spec
    cls.origin = spec.origin
    cls.__doc__ = spec.description
    return cls


def task(
    type_name: str,
    *,
    aliases: Sequence[str] = (),
    isolation: Literal["process", "thread"] = "process",
) -> Callable[[F], F]:
    """Register a function as the task type ``type_name``.

    The parameters are the task's properties (type hints and defaults apply after rendering);
    a keyword-only parameter annotated :class:`RunContext` receives the run. The function returns
    a mapping, a pydantic model or None: the task run's outputs. ``async def`` functions are
    awaited on the worker's event loop; others run in one of its worker processes, where a kill
    or a timeout stops them, or with ``isolation="thread"`` in a thread of the worker (sharing its
    memory; a kill only sets ``run.killed`` there). The function itself is returned unchanged, so
    it can still be called and tested directly.
    """
    if not isinstance(type_name, str) or not type_name:
        raise TypeError('kestream.task needs the task type name: @kestream.task("acme.tasks.Add")')

    def decorate(fn: F) -> F:
        if not inspect.isfunction(fn):
            raise TypeError(
                f"@kestream.task decorates functions (def or async def), not {fn!r}; "
                "subclass kestream.PythonTask for a class"
            )
        names = (aliases,) if isinstance(aliases, str) else tuple(aliases)
        register(build_task_class(TaskSpec.for_function(fn, type_name, names, isolation)))
        return fn

    return decorate


# -- building the properties ------------------------------------------------------------------


def _origin(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _signature_fields(fn: Callable[..., Any], type_name: str) -> tuple[dict[str, Any], str | None]:
    """pydantic field definitions from ``fn``'s parameters, and the run-context parameter."""
    hints = typing.get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    context_param = None
    for index, param in enumerate(inspect.signature(fn).parameters.values()):
        hint = hints.get(param.name, Any)
        where = f"task {type_name} ({_origin(fn)}), parameter '{param.name}'"
        if hint is RunContext:
            if param.kind is not param.KEYWORD_ONLY:
                raise TypeError(f"{where}: the RunContext parameter must be keyword-only (*, run)")
            context_param = param.name
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"{where}: *args and **kwargs cannot be task properties")
        default = ... if param.default is param.empty else param.default
        fields[f"p{index}"] = (hint, Field(default, alias=param.name))
    return fields, context_param


def _properties(model: type[BaseModel], type_name: str) -> tuple[Property, ...]:
    found = []
    for index, (name, info) in enumerate(model.model_fields.items()):
        key = info.alias or name
        if key in _COMMON:
            raise TypeError(
                f"task {type_name}: property '{key}' is one every task has "
                f"({', '.join(sorted(_COMMON))}); give it another name"
            )
        found.append(Property(f"p{index}", key, info.is_required(), _type_check(info)))
    return tuple(found)


def _type_check(info: FieldInfo) -> TypeAdapter[Any]:
    """A validator for one property's type and constraints (``Field(ge=0)``), on its own."""
    target: Any = info.annotation
    if info.metadata:
        target = Annotated[(target, *info.metadata)]
    try:
        return TypeAdapter(target, config=ConfigDict(arbitrary_types_allowed=True))
    except PydanticUserError:  # models and dataclasses carry their own config
        return TypeAdapter(target)


def _literal_check(check: TypeAdapter[Any]) -> Callable[[Any], Any]:
    """At deploy time: a value without templates must already fit its type; it is kept as
    written (the worker coerces the rendered value)."""

    def validate(value: Any) -> Any:
        if _has_template(value):
            return value
        try:
            check.validate_python(value)
        except ValidationError as exc:
            # Re-raised with the first error's own type, so the flow's problem reads as any
            # other property's ("'a' should be a valid integer, ..., got 'abc'").
            first = exc.errors(include_url=False)[0]
            inner = format_path(resolve_loc(value, first["loc"], missing_last=True))
            detail = f"{inner}: {first['msg']}" if inner else str(first["msg"])
            raise PydanticCustomError(first["type"], "{detail}", {"detail": detail}) from None
        return value

    return validate


def _messages(exc: ValidationError, data: Mapping[str, Any], model: type[BaseModel]) -> list[str]:
    """Each error as a flow author reads it; a rule of the whole task (a model validator) has
    no property to name."""
    found = []
    for error in exc.errors(include_url=False):
        path = resolve_loc(data, error["loc"], missing_last=error["type"] == "missing")
        if path:
            found.append(describe_error(error, path, model if len(path) == 1 else None))
        else:
            found.append(str(error["msg"]).removeprefix("Value error, "))
    return list(dict.fromkeys(found))


def _has_template(value: Any) -> bool:
    if isinstance(value, str):
        return is_template(value)
    if isinstance(value, Mapping):
        return any(_has_template(k) or _has_template(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_template(item) for item in value)
    return False
